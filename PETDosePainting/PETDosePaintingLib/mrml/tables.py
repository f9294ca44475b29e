"""Table nodes <-> columns of values (tier 2): the one place the panels' tables are written and read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import vtk


def table_from_columns(columns: dict[str, Sequence[Any]], name: str, table_node=None, scene=None, *,
                       units: Mapping[str, str] | None = None, descriptions: Mapping[str, str] | None = None):
    """Create (or refill) a table node from named columns (strings or numbers, equal lengths).

    A column whose values are all numbers becomes a numeric column (NaN for missing values); ``units`` and
    ``descriptions`` (``{column: text}``) are shown by Slicer's table view as column unit and tooltip.
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = table_node.GetTable()
    table.Initialize()
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    for col_name, values in columns.items():
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float(v))
        else:
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue(str(v))
        array.SetName(col_name)
        table.AddColumn(array)
    for col_name, text in (units or {}).items():
        if col_name in columns:
            table_node.SetColumnUnitLabel(col_name, text)
    for col_name, text in (descriptions or {}).items():
        if col_name in columns:
            table_node.SetColumnDescription(col_name, text)
    table_node.Modified()
    return table_node


def table_to_columns(table_node) -> dict[str, list[Any]]:
    """The content of a table node as ``{column: values}`` (numbers as float, others as str)."""
    table = table_node.GetTable()
    out: dict[str, list[Any]] = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        values = [column.GetValue(r) for r in range(table.GetNumberOfRows())]
        out[column.GetName()] = [float(v) if column.IsNumeric() else str(v) for v in values]
    return out


def columns_from_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Rows -> columns; a missing numeric cell is NaN, a missing text cell is empty."""
    out: dict[str, list[Any]] = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        numeric = all(v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
                      for v in values) and any(v is not None for v in values)
        out[column] = [(math.nan if v is None else v) if numeric else ("" if v is None else v) for v in values]
    return out


def upsert_table_rows(table_node, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                      key: Sequence[str], name: str, scene=None, units: Mapping[str, str] | None = None,
                      descriptions: Mapping[str, str] | None = None):
    """Add ``rows`` to a table with ``columns`` (a new table ``name`` if ``table_node`` is ``None``), replacing
    the rows whose ``key`` columns hold the same values (compared as text).

    A table whose columns differ (e.g. another kind of table chosen by mistake) is refilled from scratch.
    ``units`` and ``descriptions`` as in :func:`table_from_columns`.
    """
    existing: list[dict[str, Any]] = []
    if table_node is not None and table_node.GetTable().GetNumberOfColumns():
        old = table_to_columns(table_node)
        if list(old) == list(columns):
            existing = [dict(zip(columns, values, strict=True)) for values in zip(*old.values(), strict=True)]
    keys = {tuple(str(row[c]) for c in key) for row in rows}
    kept = [row for row in existing if tuple(str(row[c]) for c in key) not in keys]
    return table_from_columns(columns_from_rows(kept + list(rows), columns), name, table_node, scene,
                              units=units, descriptions=descriptions)
