"""GTVs over treatment timepoints in the scene (tier 2): the volume course, and persistent / newborn / resolved
sub-volumes written as segments.

The numbers come from :mod:`PETDosePaintingLib.comparison.longitudinal` (:func:`~.longitudinal.volume_course`,
:func:`~.longitudinal.longitudinal_changes`, whose docstring holds the definitions); segments are taken as
world masks on their own grids (:func:`~.comparison_logic.segment_world_mask`).

Transforms. A transform node given here maps the *previous* timepoint to the *current* one in the ITK sense
(``TransformFromParent``, fixed = previous, moving = current: what a registration of the current scan onto the
previous one returns, e.g. :func:`~.registration_workflow.register_nodes_stepwise` or Slicer's General
Registration with fixed = previous). Either give it here or put the current segmentation under it, not both:
a transform that is already a parent of one of the segmentations is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..comparison.longitudinal import (
    DEFAULT_MIN_ISLAND_ML,
    LongitudinalChange,
    TimepointVolume,
    longitudinal_changes,
    volume_course,
)
from ..errors import InputError
from .comparison_logic import (
    ProgressCallback,
    SegmentRef,
    check_progress,
    masks_from_segments,
    report_table_node,
    segment_labels,
)
from .plots import chart_node, table_series
from .segmentations import new_segmentation_node, set_segment_from_mask
from .tables import upsert_table_rows
from .transforms import sitk_transform_from_node

#: Columns of the volume-course table (:func:`volume_course_node`), one row per timepoint, in order.
COURSE_COLUMNS = ("timepoint", "segmentation", "segment", "time", "volume_ml", "change_ml", "change_pct",
                  "change_from_first_ml", "change_from_first_pct", "volume_definition")
#: Columns of the change table (:func:`longitudinal_change_node`), one row per (current, previous) analysis.
CHANGE_COLUMNS = ("current", "previous", "transform", "current_ml", "previous_ml", "persistent_ml", "newborn_ml",
                  "resolved_ml", "tolerated_current_ml", "tolerated_previous_ml", "newborn_islands",
                  "newborn_islands_dropped", "resolved_islands", "resolved_islands_dropped", "tolerance_mm",
                  "min_island_ml", "propagation", "inverse_round_trip_max_mm", "dice_current_vs_previous",
                  "hd95_mm_current_vs_previous", "space")
#: The columns copied from :class:`~.longitudinal.LongitudinalChange` attributes of the same name.
_CHANGE_FIELDS = ("current_ml", "previous_ml", "persistent_ml", "newborn_ml", "resolved_ml", "tolerated_current_ml",
                  "tolerated_previous_ml", "newborn_islands", "newborn_islands_dropped", "resolved_islands",
                  "resolved_islands_dropped", "tolerance_mm", "min_island_ml", "propagation",
                  "inverse_round_trip_max_mm")
#: The sub-volumes written as segments ``<prefix><kind>``, and their colours (RGB 0..1).
CHANGE_KINDS = ("persistent", "newborn", "resolved")
CHANGE_COLOURS = {"persistent": (0.95, 0.80, 0.10), "newborn": (0.90, 0.15, 0.15), "resolved": (0.20, 0.45, 0.95)}
_UNITS = {"volume_ml": "mL", "change_ml": "mL", "change_pct": "%", "change_from_first_ml": "mL",
          "change_from_first_pct": "%", "current_ml": "mL", "previous_ml": "mL", "persistent_ml": "mL",
          "newborn_ml": "mL", "resolved_ml": "mL", "tolerated_current_ml": "mL", "tolerated_previous_ml": "mL",
          "tolerance_mm": "mm", "min_island_ml": "mL", "inverse_round_trip_max_mm": "mm",
          "hd95_mm_current_vs_previous": "mm"}


# ------------------------------------------------------------------------------------------ volume course


@dataclass(eq=False)
class NodeVolumeCourse:
    """What :func:`volume_course_node` produced: the library's ``course`` (one
    :class:`~.longitudinal.TimepointVolume` per timepoint), the ``table_node`` (:data:`COURSE_COLUMNS`), and the
    line ``series_node`` of ``volume_ml`` against ``time`` in ``chart_node``."""

    course: list[TimepointVolume]
    times: list[float]
    table_node: Any
    chart_node: Any
    series_node: Any


def volume_course_node(segments: Sequence[SegmentRef], *, names: Sequence[str] | None = None,
                       times: Sequence[float] | None = None, time_label: str = "timepoint",
                       series_name: str = "GTV volume", table_node=None, chart=None) -> NodeVolumeCourse:
    """Volume (mL) of one GTV per timepoint, in the order given, with its change, as a table and a line plot.

    Parameters
    ----------
    segments : ``(segmentation node, segment name)`` per timepoint, earliest first.
    names : timepoint names (default: the segment names, see :func:`~.comparison_logic.segment_labels`).
    times : the x value of each timepoint (fraction number, day...; default 0, 1, 2...), finite.
    time_label : the x-axis title (e.g. ``"fraction"``).
    series_name : the series' name in the chart (a series of that name is replaced; others stay).
    table_node, chart : nodes to refill (new ones if ``None``).

    Volumes are each mask on its own grid (voxel count x voxel volume), not corrected for the deformation's
    volume change (see :func:`~.longitudinal.volume_course`).
    """
    refs = list(segments)
    if not refs:
        raise InputError("give at least one segment (one per timepoint)")
    labels = segment_labels(refs, names)
    if times is None:
        times = list(range(len(refs)))
    values = [float(t) for t in times]
    if len(values) != len(refs):
        raise InputError(f"{len(refs)} timepoint(s) but {len(values)} times")
    if not all(math.isfinite(v) for v in values):
        raise InputError("times must be finite numbers")
    masks = masks_from_segments(refs, labels)
    course = volume_course(list(masks.items()))
    rows = [{"timepoint": c.name, "segmentation": node.GetName(), "segment": segment, "time": t,
             "volume_ml": c.volume_ml, "change_ml": c.change_ml, "change_pct": c.change_pct,
             "change_from_first_ml": c.change_from_first_ml, "change_from_first_pct": c.change_from_first_pct,
             "volume_definition": "binary mask on its own grid ({} mm): voxel count x voxel volume".format(
                 "x".join(f"{s:g}" for s in masks[c.name].GetSpacing()))}
            for c, (node, segment), t in zip(course, refs, values, strict=True)]
    scene = refs[0][0].GetScene()
    table = report_table_node({c: [r[c] for r in rows] for c in COURSE_COLUMNS}, "GTV volume course", table_node,
                              scene)
    _set_units(table)
    chart = chart_node(chart, name="GTV volume course chart", scene=scene, title="GTV volume over time",
                       x_title=time_label, y_title="volume (mL)")
    series = table_series(chart, table, name=series_name, x_column="time", y_column="volume_ml",
                          label_column="timepoint", kind="line")
    return NodeVolumeCourse(course, values, table, chart, series)


# ------------------------------------------------------------------------------------------ changes


@dataclass(eq=False)
class NodeLongitudinalChange:
    """What :func:`longitudinal_change_node` produced: the library's ``change``
    (:class:`~.longitudinal.LongitudinalChange`), the ``segmentation_node`` holding the sub-volumes, their
    segment names by kind (``segment_names["newborn"]``...), the ``table_node`` (:data:`CHANGE_COLUMNS`) and
    ``notes``."""

    change: LongitudinalChange
    segmentation_node: Any
    segment_names: dict[str, str]
    table_node: Any
    notes: list[str] = field(default_factory=list)


def longitudinal_change_node(
    current: SegmentRef,
    previous: SegmentRef | Sequence[SegmentRef],
    transforms: Any = None,
    *,
    current_name: str | None = None,
    previous_names: Sequence[str] | None = None,
    tolerance_mm: float | None = None,
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
    propagation: str = "distance",
    segmentation_node=None,
    prefix: str | None = None,
    table_node=None,
    progress: ProgressCallback | None = None,
) -> NodeLongitudinalChange:
    """Persistent / newborn / resolved sub-volumes of the current GTV against earlier ones, written as segments.

    Parameters
    ----------
    current : ``(segmentation node, segment name)`` of the current timepoint; its grid (in world coordinates)
        is where everything is computed.
    previous : one earlier segment, or several (their union is used).
    transforms : ``None`` (all in one frame), one transform node (previous -> current, see the module
        docstring) for a single previous segment, or one node (or ``None``) per previous segment.
    current_name, previous_names : report names (default: the segment names).
    tolerance_mm : margin ``t`` (mm); default 1.5 x the largest spacing of the current grid.
    min_island_ml : newborn/resolved components below this volume (mL) are dropped (default 0.3).
    propagation : ``"distance"`` (default) or ``"nearest"``: how previous masks are carried over.
    segmentation_node : where to write the segments ``<prefix>persistent``, ``<prefix>newborn`` and
        ``<prefix>resolved`` (other segments untouched); default a new segmentation ``<current> changes`` on the
        current grid. A segmentation under a non-linear transform is refused.
    prefix : segment name prefix (default ``<current name>_``).
    table_node : change table to add the row to (replacing a row of the same current and previous names).
    progress : ``progress(done, total, label)`` before each step; ``False`` cancels before anything is written.
    """
    prev_refs = [previous] if _is_ref(previous) else list(previous)
    if not prev_refs:
        raise InputError("give at least one previous segment")
    if transforms is None or hasattr(transforms, "IsA"):
        if transforms is not None and len(prev_refs) != 1:
            raise InputError(f"one transform given for {len(prev_refs)} previous segments; give one per segment")
        transform_nodes = [transforms] * len(prev_refs)
    else:
        transform_nodes = list(transforms)
        if len(transform_nodes) != len(prev_refs):
            raise InputError(f"{len(prev_refs)} previous segment(s) but {len(transform_nodes)} transforms")
    refs = [current, *prev_refs]
    names = None
    if current_name is not None or previous_names is not None:
        names = [current_name or current[1], *(previous_names or [name for _, name in prev_refs])]
    labels = segment_labels(refs, names)
    for node in transform_nodes:
        if node is not None:
            _refuse_parent_transform(node, [ref[0] for ref in refs])
    if segmentation_node is not None and segmentation_node.GetParentTransformNode() is not None and \
            not segmentation_node.GetParentTransformNode().IsTransformToWorldLinear():
        raise InputError(f"segmentation {segmentation_node.GetName()!r} is under a non-linear transform; write the "
                         "changes into a segmentation without one")
    total = 3
    notes: list[str] = []
    check_progress(progress, 0, total, "reading the segments")
    masks = masks_from_segments(refs, labels, notes=notes)
    current_mask = masks[labels[0]]
    previous_masks = {label: masks[label] for label in labels[1:]}
    sitk_transforms = {label: None if node is None else sitk_transform_from_node(node, previous_masks[label])
                       for label, node in zip(labels[1:], transform_nodes, strict=True)}
    check_progress(progress, 1, total, "persistent, newborn and resolved sub-volumes")
    change = longitudinal_changes(current_mask, previous_masks, sitk_transforms, tolerance_mm=tolerance_mm,
                                  min_island_ml=min_island_ml, propagation=propagation, current_name=labels[0])
    check_progress(progress, 2, total, "writing the segments")
    prefix = f"{labels[0]}_" if prefix is None else prefix
    out = segmentation_node or new_segmentation_node(f"{labels[0]} changes", current[0].GetScene(),
                                                     reference=current_mask)
    written = {}
    for kind in CHANGE_KINDS:
        written[kind] = f"{prefix}{kind}"
        set_segment_from_mask(out, getattr(change, kind), written[kind], CHANGE_COLOURS[kind])
    overlap = change.overlap
    row = {"current": labels[0], "previous": "+".join(labels[1:]),
           "transform": " + ".join("identity" if n is None else n.GetName() for n in transform_nodes),
           **{k: getattr(change, k) for k in _CHANGE_FIELDS},
           "dice_current_vs_previous": None if overlap is None else overlap.dice,
           "hd95_mm_current_vs_previous": None if overlap is None else overlap.hd95_mm, "space": change.space}
    table = upsert_table_rows(table_node, [row], CHANGE_COLUMNS, key=("current", "previous"),
                              name="GTV longitudinal changes", scene=out.GetScene())
    _set_units(table)
    return NodeLongitudinalChange(change, out, written, table, notes)


def _is_ref(value: Any) -> bool:
    return isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[1], str)


def _refuse_parent_transform(transform_node, segmentation_nodes: Sequence[Any]) -> None:
    for node in segmentation_nodes:
        parent = node.GetParentTransformNode()
        while parent is not None:
            if parent is transform_node:
                raise InputError(f"segmentation {node.GetName()!r} is already under transform "
                                 f"{transform_node.GetName()!r}; give the transform here or place the segmentation "
                                 "under it, not both")
            parent = parent.GetParentTransformNode()


def _set_units(table_node) -> None:
    table = table_node.GetTable()
    for c in range(table.GetNumberOfColumns()):
        name = table.GetColumn(c).GetName()
        if name in _UNITS:
            table_node.SetColumnUnitLabel(name, _UNITS[name])


__all__ = ["CHANGE_COLOURS", "CHANGE_COLUMNS", "CHANGE_KINDS", "COURSE_COLUMNS", "NodeLongitudinalChange",
           "NodeVolumeCourse", "longitudinal_change_node", "volume_course_node"]
