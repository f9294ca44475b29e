"""Plot series and chart nodes over table nodes (tier 2): what Slicer's plot view shows.

A plot series (``vtkMRMLPlotSeriesNode``) draws two columns of a table node (x, y; for bar series only
y, the bars standing at the row index with the ``label_column`` shown on hover); a chart
(``vtkMRMLPlotChartNode``) holds several series with a title and axis titles. Series are found again by
name in a chart, so running an analysis twice replaces its series instead of adding a copy, and series of
other analyses in the same chart stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import slicer

from ..errors import InputError
from .gtv_logic import RESULT_COLOURS
from .scene import get_scene

#: Series kinds: ``"line"`` (points joined in table order, with markers), ``"scatter"`` (markers only),
#: ``"bar"`` (bars at the row index).
SERIES_KINDS = ("line", "scatter", "bar")


def chart_node(chart=None, *, name: str = "Chart", scene=None, title: str = "", x_title: str = "",
               y_title: str = ""):
    """A plot chart node (``chart`` if given, else a new one called ``name``) with its titles set."""
    if chart is None:
        chart = get_scene(scene).AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    return chart


def chart_series(chart) -> list[Any]:
    """The plot series nodes of a chart, in chart order."""
    series = (chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes()))
    return [s for s in series if s is not None]


def table_series(chart, table_node, *, name: str, y_column: str, x_column: str | None = None,
                 label_column: str | None = None, kind: str = "line", colour: Sequence[float] | None = None):
    """A series of ``chart`` called ``name`` drawing ``y_column`` (against ``x_column``) of ``table_node``.

    A series of that name already in the chart is reused (re-pointed at the table); otherwise one is created
    and added. ``kind`` is one of :data:`SERIES_KINDS`; ``colour`` (RGB 0..1) defaults to the next colour of
    :data:`~.gtv_logic.RESULT_COLOURS`. Raises :class:`InputError` for a column the table does not have.
    """
    if kind not in SERIES_KINDS:
        raise InputError(f"unknown series kind {kind!r}; use one of {', '.join(SERIES_KINDS)}")
    table = table_node.GetTable()
    for column in (y_column, x_column, label_column):
        if column is not None and table.GetColumnByName(column) is None:
            raise InputError(f"table {table_node.GetName()!r} has no column {column!r}")
    series = next((s for s in chart_series(chart) if s.GetName() == name), None)
    if series is None:
        series = chart.GetScene().AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        if colour is None:
            colour = RESULT_COLOURS[(chart.GetNumberOfPlotSeriesNodes() - 1) % len(RESULT_COLOURS)]
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetYColumnName(y_column)
    series.SetXColumnName(x_column or "")
    series.SetLabelColumnName(label_column or "")
    plot = slicer.vtkMRMLPlotSeriesNode
    if kind == "bar":
        series.SetPlotType(plot.PlotTypeBar)
    else:
        series.SetPlotType(plot.PlotTypeScatter)
        series.SetMarkerStyle(plot.MarkerStyleCircle)
        series.SetLineStyle(plot.LineStyleSolid if kind == "line" else plot.LineStyleNone)
    if colour is not None:
        series.SetColor(*[float(c) for c in colour[:3]])
    return series


def drop_other_series(chart, table_node, keep: Sequence[Any]) -> None:
    """Remove from ``chart`` (and the scene) the series drawing ``table_node`` that are not in ``keep``.

    Used when a table is refilled with other columns (e.g. an overlap matrix of other masks), so that no
    series points at a column that no longer exists.
    """
    kept = {s.GetID() for s in keep}
    table_id = table_node.GetID()
    for series in chart_series(chart):
        if series.GetTableNodeID() == table_id and series.GetID() not in kept:
            chart.RemovePlotSeriesNodeID(series.GetID())
            chart.GetScene().RemoveNode(series)


def matrix_bar_chart(matrix_table_node, chart=None, *, metric: str = "dice", title: str | None = None):
    """A grouped bar chart of an overlap-matrix table node (:func:`~.comparison_logic.overlap_matrix_node`).

    The table's first column (``mask``) names the rows; every other column is one mask. One bar series per
    mask column (``<metric> vs <mask>``), so the bars at row ``i`` show row mask ``i`` against every mask.
    Returns ``(chart, [series])``; series of the same table for masks no longer in it are removed.
    """
    table = matrix_table_node.GetTable()
    if table.GetNumberOfColumns() < 2 or table.GetColumn(0).GetName() != "mask":
        raise InputError(f"table {matrix_table_node.GetName()!r} is not an overlap matrix (first column 'mask')")
    names = [table.GetColumn(c).GetName() for c in range(1, table.GetNumberOfColumns())]
    chart = chart_node(chart, name=f"{matrix_table_node.GetName()} chart", scene=matrix_table_node.GetScene(),
                       title=title or matrix_table_node.GetName(), x_title="mask (row of the matrix)",
                       y_title=metric)
    series = [table_series(chart, matrix_table_node, name=f"{metric} vs {name}", y_column=name,
                           label_column="mask", kind="bar", colour=RESULT_COLOURS[index % len(RESULT_COLOURS)])
              for index, name in enumerate(names)]
    drop_other_series(chart, matrix_table_node, series)
    return chart, series


__all__ = ["SERIES_KINDS", "chart_node", "chart_series", "drop_other_series", "matrix_bar_chart", "table_series"]
