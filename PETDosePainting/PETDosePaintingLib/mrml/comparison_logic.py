"""Comparison reports as Slicer table nodes (tested headless with slicer-core).

The numbers come from :mod:`PETDosePaintingLib.comparison.reports` and
:mod:`PETDosePaintingLib.comparison.correlation`; this module only lays them out as ``vtkMRMLTableNode``
columns (numbers as double columns with NaN where undefined, text as string columns) and records the
units (``SetColumnUnitLabel``) and, for volumes, the volume definition (``SetColumnDescription``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..comparison.correlation import CorrelationResult
from ..comparison.metrics import OverlapMetrics
from ..comparison.reports import PAIR_COLUMNS, OverlapMatrix, VolumeTable, pair_rows
from ..errors import InputError
from .tables import table_from_columns

#: Columns holding text; every other column is numeric (``None`` becomes NaN).
TEXT_COLUMNS = frozenset({"structure", "kind", "reference", "grid_spacing_mm", "volume_definition", "a", "b",
                          "reference_grid", "mask", "x", "y", "region", "x_units", "y_units", "grid",
                          "interpolation", "resampling"})

#: Unit labels of numeric columns.
COLUMN_UNITS = {
    "volume_ml": "mL", "reference_volume_ml": "mL", "volume_a_ml": "mL", "volume_b_ml": "mL",
    "intersection_ml": "mL", "union_ml": "mL", "uncovered_reference_ml": "mL", "volume_error_pct": "%",
    "hd_mm": "mm", "hd95_mm": "mm", "msd_mm": "mm", "msd_a_to_b_mm": "mm", "msd_b_to_a_mm": "mm",
    "centroid_shift_mm": "mm",
}


def volume_table_node(table: VolumeTable, table_node=None, scene=None, name: str = "GTV volumes"):
    """A table node holding the Table-2-style volume table (columns :data:`~.reports.TABLE2_COLUMNS`)."""
    columns = table.columns()
    node = _table(columns, name, table_node, scene)
    node.SetColumnDescription("volume_ml", "volume; see the volume_definition column of each row")
    return node


def pair_table_node(pairs: Sequence[OverlapMetrics], masks: Mapping[str, Any] | None = None, table_node=None,
                    scene=None, name: str = "Pairwise agreement"):
    """A table node with one row per compared pair (columns :data:`~.reports.PAIR_COLUMNS`)."""
    rows = pair_rows(pairs, masks)
    return _table({c: [r[c] for r in rows] for c in PAIR_COLUMNS}, name, table_node, scene)


def overlap_matrix_node(matrix: OverlapMatrix, metric: str = "dice", table_node=None, scene=None,
                        name: str | None = None):
    """A table node holding one metric of an overlap matrix: a ``mask`` column, then one column per mask."""
    values = matrix.matrix(metric)
    if "mask" in matrix.names:
        raise InputError("a mask named 'mask' clashes with the first column of the matrix table; rename it")
    columns: dict[str, list[Any]] = {"mask": list(matrix.names)}
    for j, other in enumerate(matrix.names):
        columns[other] = [float(v) for v in values[:, j]]
    node = table_from_columns(columns, name or f"Pairwise {metric}", table_node, scene)
    unit = COLUMN_UNITS.get(metric)
    if unit:
        for other in matrix.names:
            node.SetColumnUnitLabel(other, unit)
    return node


def correlation_table_node(results: Sequence[CorrelationResult], table_node=None, scene=None,
                           name: str = "Voxel-wise correlation"):
    """A table node with one row per :class:`~.correlation.CorrelationResult` (CI bounds as separate columns)."""
    columns: dict[str, list[Any]] = {k: [] for k in (
        "x", "y", "region", "x_units", "y_units", "n_voxels", "pearson_r", "pearson_p", "pearson_ci_low",
        "pearson_ci_high", "spearman_rho", "spearman_p", "spearman_ci_low", "spearman_ci_high",
        "confidence_level", "grid", "resampling")}
    for r in results:
        for key, value in (("x", r.x_name), ("y", r.y_name), ("region", r.region_name), ("x_units", r.x_units or ""),
                           ("y_units", r.y_units or ""), ("n_voxels", r.n_voxels), ("pearson_r", r.pearson_r),
                           ("pearson_p", r.pearson_p), ("pearson_ci_low", r.pearson_ci[0]),
                           ("pearson_ci_high", r.pearson_ci[1]), ("spearman_rho", r.spearman_rho),
                           ("spearman_p", r.spearman_p), ("spearman_ci_low", r.spearman_ci[0]),
                           ("spearman_ci_high", r.spearman_ci[1]), ("confidence_level", r.confidence_level),
                           ("grid", r.grid), ("resampling", r.resampling)):
            columns[key].append(value)
    return _table(columns, name, table_node, scene)


def _table(columns: dict[str, list[Any]], name: str, table_node, scene):
    prepared = {}
    for key, values in columns.items():
        if key in TEXT_COLUMNS:
            prepared[key] = ["" if v is None else str(v) for v in values]
        else:
            prepared[key] = [np.nan if v is None else float(v) for v in values]
    node = table_from_columns(prepared, name, table_node, scene)
    for key in prepared:
        if key in COLUMN_UNITS:
            node.SetColumnUnitLabel(key, COLUMN_UNITS[key])
    return node


__all__ = ["correlation_table_node", "overlap_matrix_node", "pair_table_node", "volume_table_node"]
