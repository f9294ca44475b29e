"""Comparison of GTVs across segmentation nodes, and comparison reports as Slicer table and chart nodes.

Tested headless with slicer-core. The numbers come from :mod:`PETDosePaintingLib.comparison.reports`,
:mod:`~PETDosePaintingLib.comparison.metrics`, :mod:`~PETDosePaintingLib.comparison.correlation` and
:mod:`~PETDosePaintingLib.comparison.accumulation`; this module

* takes GTVs from segments of several segmentation nodes (modalities, timepoints), each addressed as
  ``(segmentation node, segment name)`` (:data:`SegmentRef`), as masks in world coordinates on their own
  grids (:func:`segment_world_mask`, :func:`masks_from_segments`): the project's volume definition (voxel
  count x voxel volume on the grid the GTV was drawn on) holds for every GTV, whatever its modality;
* runs the comparison (:func:`compare_segment_nodes`: the Table-2 volume table, the pairwise overlap matrix,
  the pair rows, a bar chart of the matrix);
* lays results out as ``vtkMRMLTableNode`` columns (numbers as double columns with NaN where undefined, text
  as string columns), recording the units (``SetColumnUnitLabel``) and, for volumes, the volume definition
  (``SetColumnDescription``).

Frames. Nodes of one scene share Slicer's world coordinates. A segmentation node under a parent transform
(e.g. the MR GTV under the MR -> CT registration result, or a later timepoint under its deformable
registration) is taken where Slicer shows it: a rigid parent chain is folded into the mask's geometry
(exact: no resampling, the voxel count is unchanged); a non-rigid linear or non-linear chain resamples the
segment by nearest neighbour through Slicer's own transform evaluation onto its own lattice, which is then
read as a world grid (stated in the ``notes``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..comparison.accumulation import AccumulationResult
from ..comparison.correlation import CorrelationResult
from ..comparison.metrics import GRID_CHOICES, OverlapMetrics
from ..comparison.reports import (
    MATRIX_METRICS,
    PAIR_COLUMNS,
    OverlapMatrix,
    VolumeTable,
    overlap_matrix,
    pair_rows,
    volume_table,
)
from ..errors import InputError
from .gtv_logic import OperationCancelled
from .plots import matrix_bar_chart
from .segment_editor_logic import image_from_oriented_image_data
from .segmentations import mask_from_segment, segment_id
from .tables import table_from_columns
from .volumes import image_from_volume_node

#: A segment addressed the Slicer way: ``(segmentation node, segment name)`` (segment IDs are random).
SegmentRef = tuple[Any, str]
#: ``progress(done, total, label)``, called before each step; returning ``False`` cancels.
ProgressCallback = Callable[[int, int, str], "bool | None"]

#: Columns holding text; every other column is numeric (``None`` becomes NaN).
TEXT_COLUMNS = frozenset({"structure", "kind", "reference", "grid_spacing_mm", "volume_definition", "a", "b",
                          "reference_grid", "mask", "x", "y", "region", "x_units", "y_units", "grid",
                          "interpolation", "resampling", "segmentation", "segment", "phase", "transform",
                          "jacobian_verdict", "jacobian_region", "quantity", "timepoint"})

#: Unit labels of numeric columns.
COLUMN_UNITS = {
    "volume_ml": "mL", "reference_volume_ml": "mL", "volume_a_ml": "mL", "volume_b_ml": "mL",
    "intersection_ml": "mL", "union_ml": "mL", "uncovered_reference_ml": "mL", "volume_error_pct": "%",
    "hd_mm": "mm", "hd95_mm": "mm", "msd_mm": "mm", "msd_a_to_b_mm": "mm", "msd_b_to_a_mm": "mm",
    "centroid_shift_mm": "mm", "max_gy": "Gy", "mean_gy": "Gy", "alpha_beta_gy": "Gy",
}


def volume_table_node(table: VolumeTable, table_node=None, scene=None, name: str = "GTV volumes"):
    """A table node holding the Table-2-style volume table (columns :data:`~.reports.TABLE2_COLUMNS`)."""
    columns = table.columns()
    node = report_table_node(columns, name, table_node, scene)
    node.SetColumnDescription("volume_ml", "volume; see the volume_definition column of each row")
    return node


def pair_table_node(pairs: Sequence[OverlapMetrics], masks: Mapping[str, Any] | None = None, table_node=None,
                    scene=None, name: str = "Pairwise agreement"):
    """A table node with one row per compared pair (columns :data:`~.reports.PAIR_COLUMNS`)."""
    rows = pair_rows(pairs, masks)
    return report_table_node({c: [r[c] for r in rows] for c in PAIR_COLUMNS}, name, table_node, scene)


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
    return report_table_node(columns, name, table_node, scene)


def report_table_node(columns: Mapping[str, Sequence[Any]], name: str, table_node=None, scene=None):
    """A table node (``table_node`` refilled, or a new one called ``name`` in ``scene``) from report columns.

    Columns in :data:`TEXT_COLUMNS` become text (``None`` -> empty), all others numbers (``None`` -> NaN);
    columns in :data:`COLUMN_UNITS` get their unit label.
    """
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


# ------------------------------------------------------------------------------------------ accumulation

#: Columns of the accumulation table (:func:`accumulation_table_node`), one row per phase dose.
ACCUMULATION_COLUMNS = ("phase", "fractions", "transform", "quantity", "alpha_beta_gy", "coverage_fraction",
                        "max_gy", "mean_gy", "linear_jacobian", "jacobian_min", "jacobian_max",
                        "jacobian_folding_fraction", "jacobian_verdict", "jacobian_region")


def accumulation_table_node(result: AccumulationResult, table_node=None, scene=None,
                            name: str = "Dose accumulation"):
    """A table node with one row per phase of a dose accumulation (columns :data:`ACCUMULATION_COLUMNS`).

    ``max_gy`` and ``mean_gy`` (Gy; EQD2 when ``quantity`` is EQD2) are over the baseline voxels the phase
    dose covers; ``coverage_fraction`` is the fraction of the baseline grid it covers; the Jacobian columns
    come from the QA of a non-linear transform (AAPM TG-132), ``linear_jacobian`` is the constant determinant
    of a linear one.
    """
    rows = []
    for c in result.contributions:
        qa = c.jacobian
        rows.append({"phase": c.name, "fractions": c.fractions, "transform": c.transform, "quantity": result.quantity,
                     "alpha_beta_gy": result.alpha_beta_gy, "coverage_fraction": c.coverage_fraction,
                     "max_gy": c.max_gy, "mean_gy": c.mean_gy, "linear_jacobian": c.linear_jacobian,
                     "jacobian_min": None if qa is None else qa.minimum,
                     "jacobian_max": None if qa is None else qa.maximum,
                     "jacobian_folding_fraction": None if qa is None else qa.folding_fraction,
                     "jacobian_verdict": "" if qa is None else qa.verdict,
                     "jacobian_region": "" if qa is None else qa.region})
    return report_table_node({c: [r[c] for r in rows] for c in ACCUMULATION_COLUMNS}, name, table_node, scene)


def parse_fraction_counts(text: str, n_phases: int) -> list[int] | None:
    """Fraction counts typed as text (``"10, 15, 8"``; commas, semicolons or spaces) for ``n_phases`` phase doses.

    Empty text gives ``None`` (no counts: physical dose only). Raises :class:`InputError` for a count that is not
    a positive whole number, or for a number of counts other than ``n_phases``.
    """
    items = [item for item in text.replace(",", " ").replace(";", " ").split() if item]
    if not items:
        return None
    counts = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise InputError(f"fraction count {item!r} is not a number") from None
        if not value.is_integer() or value < 1:
            raise InputError(f"fraction count {item!r} must be a whole number >= 1")
        counts.append(int(value))
    if len(counts) != n_phases:
        raise InputError(f"{len(counts)} fraction count(s) for {n_phases} phase dose(s); give one per dose, in order")
    return counts


# ------------------------------------------------------------------------------------------ GTVs from segments


def segmentation_grid(segmentation_node) -> tuple[Any, np.ndarray]:
    """The reference geometry of a segmentation (the grid its binary labelmaps are stored on).

    Returns ``(oriented image data, IJK -> RAS matrix)`` in the segmentation node's own coordinates (before
    any parent transform). Raises :class:`InputError` naming the node when it has no reference geometry.
    """
    key = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    text = segmentation_node.GetSegmentation().GetConversionParameter(key)
    grid = slicer.vtkOrientedImageData()
    converter = slicer.vtkSegmentationConverter
    ok = bool(text) and converter.DeserializeImageGeometry(text, grid, True, vtk.VTK_UNSIGNED_CHAR, 1)
    extent = grid.GetExtent()
    if not ok or extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no reference geometry (the grid its "
                         "segments are stored on); set its source geometry in the Segment Editor")
    matrix = vtk.vtkMatrix4x4()
    grid.GetImageToWorldMatrix(matrix)
    return grid, slicer.util.arrayFromVTKMatrix(matrix)


def segment_world_mask(segmentation_node, segment_name: str, *, notes: list[str] | None = None) -> sitk.Image:
    """A segment as a uint8 0/1 mask (LPS mm, units label) in world coordinates, on its segmentation's grid.

    Parameters
    ----------
    segmentation_node : the segmentation (its reference geometry is the mask's grid).
    segment_name : the segment, by name (:class:`InputError` listing the names if absent).
    notes : a list to which a sentence is appended when the segment had to be resampled (non-rigid or
        non-linear parent transform).

    Without a parent transform the mask is the stored labelmap (no resampling). Under a rigid parent chain
    the chain is folded into the grid's geometry (still no resampling: same voxels, same volume). Under any
    other chain Slicer resamples the segment by nearest neighbour through the transform onto the same
    lattice, read as a world grid.
    """
    segment_id(segmentation_node, segment_name)
    grid, ijk_to_ras = segmentation_grid(segmentation_node)
    parent = segmentation_node.GetParentTransformNode()
    if parent is not None:
        rigid = False
        if parent.IsTransformToWorldLinear():
            to_world = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToWorld(to_world)
            matrix = slicer.util.arrayFromVTKMatrix(to_world)
            rigid = bool(np.allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3), atol=1e-6))
            if rigid:
                grid.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix @ ijk_to_ras))
        if not rigid and notes is not None:
            notes.append(f"{segmentation_node.GetName()}/{segment_name}: resampled by nearest neighbour through the "
                         f"non-rigid transform {parent.GetName()!r} onto its own grid")
    return mask_from_segment(segmentation_node, segment_name, image_from_oriented_image_data(grid))


def segment_labels(segments: Sequence[SegmentRef], names: Sequence[str] | None = None) -> list[str]:
    """Report names for segments: ``names`` if given, else each segment's name, or ``<segmentation>/<segment>``
    where two segments share a name (then `` (2)``, `` (3)``... where segmentations share names too). Raises
    :class:`InputError` for duplicate or empty given names, or a count mismatch."""
    refs = [_checked_ref(ref) for ref in segments]
    if names is not None:
        labels = [str(n) for n in names]
        if len(labels) != len(refs):
            raise InputError(f"{len(refs)} segment(s) but {len(labels)} names")
    else:
        plain = [name for _, name in refs]
        labels = []
        for node, name in refs:
            label = name if plain.count(name) == 1 else f"{node.GetName()}/{name}"
            count = 1 + sum(existing == label or existing.startswith(f"{label} (") for existing in labels)
            labels.append(label if count == 1 else f"{label} ({count})")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise InputError(f"the same name is given to several segments: {', '.join(map(repr, duplicates))}; give "
                         "distinct names")
    if any(not label.strip() for label in labels):
        raise InputError("segment names must not be empty")
    return labels


def _checked_ref(ref: Any) -> SegmentRef:
    if not isinstance(ref, tuple | list) or len(ref) != 2:
        raise InputError(f"expected (segmentation node, segment name), got {ref!r}")
    node, name = ref
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"expected a segmentation node for segment {name!r}, got {node!r}")
    if not isinstance(name, str) or not name:
        raise InputError(f"expected a segment name in segmentation {node.GetName()!r}, got {name!r}")
    return node, name


def masks_from_segments(segments: Sequence[SegmentRef], names: Sequence[str] | None = None, *,
                        notes: list[str] | None = None,
                        progress: ProgressCallback | None = None) -> dict[str, sitk.Image]:
    """World masks (:func:`segment_world_mask`) of several segments, by report name (:func:`segment_labels`).

    ``progress(done, total, label)`` is called before each segment; returning ``False`` raises
    :class:`~.gtv_logic.OperationCancelled`.
    """
    labels = segment_labels(segments, names)
    masks: dict[str, sitk.Image] = {}
    for index, ((node, name), label) in enumerate(zip(segments, labels, strict=True)):
        check_progress(progress, index, len(labels), f"reading {label}")
        masks[label] = segment_world_mask(node, name, notes=notes)
    return masks


def check_progress(progress: ProgressCallback | None, done: int, total: int, label: str) -> None:
    """Call ``progress(done, total, label)`` (if given); raise :class:`~.gtv_logic.OperationCancelled` when it
    returns ``False``."""
    if progress is not None and progress(done, total, label) is False:
        raise OperationCancelled(f"cancelled before {label}")


# ------------------------------------------------------------------------------------------ comparison


@dataclass(eq=False)
class NodeComparison:
    """What :func:`compare_segment_nodes` produced.

    ``names`` (structures, in order), ``reference`` (its name, or ``None``), ``masks`` (world masks by name,
    reference included), the library's ``volume_table`` (:class:`~.reports.VolumeTable`) and ``matrix``
    (:class:`~.reports.OverlapMatrix`), ``pairs`` (each structure against the reference, or every pair), the
    table nodes (``volume_table_node``: Table-2 columns; ``matrix_table_node``: one metric of the matrix;
    ``pair_table_node``: :data:`~.reports.PAIR_COLUMNS`), the bar chart of the matrix (``chart_node``,
    ``series_nodes``), and ``notes``.
    """

    names: list[str]
    reference: str | None
    masks: dict[str, sitk.Image]
    volume_table: VolumeTable
    matrix: OverlapMatrix
    pairs: list[OverlapMetrics]
    volume_table_node: Any
    matrix_table_node: Any
    pair_table_node: Any
    chart_node: Any
    series_nodes: list[Any]
    notes: list[str] = field(default_factory=list)


def compare_segment_nodes(
    segments: Sequence[SegmentRef],
    reference: SegmentRef | None = None,
    *,
    names: Sequence[str] | None = None,
    reference_name: str | None = None,
    grid: Any = "finest",
    metric: str = "dice",
    combinations: bool = True,
    volume_node=None,
    matrix_node=None,
    pair_node=None,
    chart=None,
    progress: ProgressCallback | None = None,
) -> NodeComparison:
    """Compare GTV segments of several segmentation nodes: volumes, overlap, distances, as tables and a chart.

    Parameters
    ----------
    segments : the structures, ``(segmentation node, segment name)`` each (e.g. GTV_CT, GTV_MRI, GTV_PET, or
        one GTV per timepoint), taken in world coordinates on their own grids (:func:`segment_world_mask`).
    reference : optional reference segment (e.g. the pathology specimen, or the truth).
    names, reference_name : report names (default: the segment names, see :func:`segment_labels`).
    grid : where voxel-wise numbers (Dice, Jaccard, sensitivity, PPV, intersection, union) and surface
        distances are computed for each pair: ``"finest"`` (default; the finer of the two grids, nearest-
        neighbour resampling), ``"reference"`` (the grid of the pair's second mask, the reference when there
        is one), or a volume node / SimpleITK image whose grid is used for every pair. Volumes are always on
        each mask's own grid (voxel count x voxel volume, mL). The pair table states the grid of each pair.
    metric : the matrix metric shown in ``matrix_table_node`` and the chart (one of
        :data:`~.reports.MATRIX_METRICS`; default Dice). All metrics are in ``matrix``.
    combinations : add the intersection and union of the structures to the volume table (default True).
    volume_node, matrix_node, pair_node, chart : table and chart nodes to refill (new ones if ``None``).
    progress : ``progress(done, total, label)`` before each step; returning ``False`` cancels
        (:class:`~.gtv_logic.OperationCancelled`; nothing is written to the scene then).

    Raises :class:`InputError` for fewer than two masks in all, an unknown metric, empty structures when a
    reference is given, or masks without common extent.
    """
    if metric not in MATRIX_METRICS:
        raise InputError(f"unknown matrix metric {metric!r}; use one of {', '.join(MATRIX_METRICS)}")
    refs = list(segments)
    if reference is not None:
        refs.append(reference)
    if len(refs) < 2:
        raise InputError(f"need at least two segments to compare, got {len(refs)}")
    if names is None and reference_name is None:
        labels = segment_labels(refs)
    else:
        given = [str(n) for n in names] if names is not None else segment_labels(segments)
        if reference is not None:
            given.append(reference_name or reference[1])
        labels = segment_labels(refs, given)
    structures = labels[:-1] if reference is not None else labels
    reference_label = labels[-1] if reference is not None else None
    if isinstance(grid, str):
        if grid not in GRID_CHOICES:
            raise InputError(f"unknown grid {grid!r}; use one of {', '.join(GRID_CHOICES)} or a volume node")
        common = grid
    elif isinstance(grid, sitk.Image):
        common = grid
    else:
        common = image_from_volume_node(grid)
    total = len(refs) + 2
    notes: list[str] = []
    masks = masks_from_segments(refs, labels, notes=notes,
                                progress=None if progress is None else lambda d, _t, label: progress(d, total, label))
    check_progress(progress, len(refs), total, "overlap and surface distances")
    # The reference goes last, so every matrix pair (earlier name first) is (structure, reference): the volume
    # table reuses those pairs instead of computing them again.
    matrix = overlap_matrix(masks, grid=common, allow_empty=reference is None)
    pairs = [p for p in matrix.pairs if p.reference == reference_label] if reference is not None else list(
        matrix.pairs)
    table = volume_table(masks, reference=reference_label, combinations=combinations, grid=common, pairs=pairs)
    check_progress(progress, len(refs) + 1, total, "writing the tables")
    scene = refs[0][0].GetScene()
    volume_node = volume_table_node(table, volume_node, scene)
    matrix_node = overlap_matrix_node(matrix, metric, matrix_node, scene)
    pair_node = pair_table_node(pairs, masks, pair_node, scene)
    chart, series = matrix_bar_chart(matrix_node, chart, metric=metric, title=f"Pairwise {metric}")
    return NodeComparison(structures, reference_label, masks, table, matrix, pairs, volume_node, matrix_node, pair_node,
                          chart, series, notes)



__all__ = [
    "ACCUMULATION_COLUMNS",
    "COLUMN_UNITS",
    "TEXT_COLUMNS",
    "NodeComparison",
    "ProgressCallback",
    "SegmentRef",
    "accumulation_table_node",
    "check_progress",
    "compare_segment_nodes",
    "correlation_table_node",
    "masks_from_segments",
    "overlap_matrix_node",
    "pair_table_node",
    "parse_fraction_counts",
    "report_table_node",
    "segment_labels",
    "segment_world_mask",
    "segmentation_grid",
    "volume_table_node",
]
