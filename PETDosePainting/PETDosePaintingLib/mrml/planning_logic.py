"""Node-level inverse planning of a dose-painting prescription (HypoxiaMapping panel, Python console; issue 9).

Is a prescription deliverable for this patient, and at what cost to the organs at risk? :func:`plan_prescription_node`
takes the prescription volume, the planning CT volume and a segmentation holding the target and the organs at
risk (by segment *name*), optimises an IMRT fluence for the map with pyRadPlan (the optional ``[planning]``
extra) through :func:`~PETDosePaintingLib.dosepainting.planning.plan_dose_painting` — optionally a uniform
plan with the same beams and limits to compare — and puts the results into the scene:

* the optimised dose of each plan as a volume on the CT grid, in Gy, tagged as dose for SlicerRT;
* the uniform-vs-painted table (columns :data:`~PETDosePaintingLib.dosepainting.planning.COMPARISON_COLUMNS`,
  the contract of ``petdp plan``'s ``comparison.csv``);
* the DVH of every structure for both plans as a table and a chart, and the QVH of both plans on one chart.

Everything is computed on the CT grid. A prescription on another grid is resampled onto it with linear
interpolation (nodes of one scene share Slicer's world frame; noted in ``notes``); segments are exported onto
the CT grid by Slicer. The planning itself, its objectives, how limits are enforced and the limits of the method
(a pencil-beam fluence optimisation, not a clinical dose) are documented in
:mod:`PETDosePaintingLib.dosepainting.planning`.

``progress(done, total, label)`` is called at every stage, beam and optimiser iteration (``total`` = 1000);
returning ``False`` cancels (:class:`~.gtv_logic.OperationCancelled`) and nothing is added to the scene.
Without pyRadPlan :class:`~PETDosePaintingLib.dosepainting.planning_objectives.PlanningExtraMissing` is raised
at once, with the install command (:func:`planning_status` tells the panel beforehand).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from ..dosepainting.plan_evaluation import DEFAULT_DVH_STEP_GY
from ..dosepainting.planning import (
    COMPARISON_COLUMNS,
    OarConstraint,
    PlanningCancelled,
    PlanningProgress,
    PlanningResult,
    PlanningSettings,
    plan_dose_painting,
    ptv_from_gtv,
)
from ..dosepainting.planning_objectives import (
    INSTALL_HINT,
    TESTED_PYRADPLAN,
    PlanningExtraMissing,
    load_pyradplan,
)
from ..errors import InputError
from ..imaging.image import Units, get_units, same_geometry, set_units
from ..imaging.resample import resample_to_reference
from .gtv_logic import OperationCancelled
from .hypoxia_logic import qvh_plot, qvh_table, tag_as_dose
from .segmentations import mask_from_segment, segment_id
from .tables import columns_from_rows, table_from_columns
from .volumes import image_from_volume_node, volume_node_from_image

#: ``total`` passed to the progress callback (the library reports fractions of the whole run).
PROGRESS_STEPS = 1000
#: Columns of the DVH table: the dose axis, then one column per structure and plan (``<structure> <plan>``).
DVH_DOSE_COLUMN = "dose_Gy"

_COMPARISON_DESCRIPTIONS = {
    "quantity": "what is compared (QF, Q95, Q105 and Q95-105 over the evaluation volume PTV_PET; mean/max doses)",
    "structure": "PTV_PET: where the map is positive; PTV: the planned target; OARs by segment name",
    "prescribed": "the value of the prescription itself, where defined",
    "uniform": "the uniform-dose plan (same beams and limits)",
    "painted": "the dose-painting plan",
    "painted_minus_uniform": "painted minus uniform",
    "limit_gy": "the organ-at-risk limit applied (Gy)",
}

ProgressCallback = Callable[[int, int, str], "bool | None"]


def planning_status(*, import_engine: bool = True) -> tuple[bool, str]:
    """Whether the planning engine is usable here, and a sentence for the panel (version, or how to install).

    ``import_engine=False`` only looks for the package (importing pyRadPlan takes seconds; a panel checks its
    presence when it opens and the planning itself reports a broken install).
    """
    if not import_engine:
        if importlib.util.find_spec("pyRadPlan") is None:
            return False, f"treatment planning needs pyRadPlan, which is not installed; {INSTALL_HINT}"
        return True, "pyRadPlan is installed (coplanar IMRT, photon pencil beam; not a clinical dose)"
    try:
        prp = load_pyradplan()
    except PlanningExtraMissing as exc:
        return False, str(exc)
    note = f" (not the tested version {TESTED_PYRADPLAN})" if prp.untested_version else ""
    return True, f"pyRadPlan {prp.version}{note} is installed (coplanar IMRT, photon pencil beam; not a clinical dose)"


@dataclass(eq=False)
class NodePlan:
    """What :func:`plan_prescription_node` produced.

    ``result`` is the library's :class:`~PETDosePaintingLib.dosepainting.planning.PlanningResult` (both plans,
    their evaluations, limit checks, geometry and timings). ``dose_nodes`` maps ``"painted"`` (and
    ``"uniform"``) to the dose volumes (Gy, CT grid); ``table_node`` holds the comparison
    (:data:`COMPARISON_COLUMNS`); ``dvh_table_node``/``dvh_chart_node`` the DVHs of both plans;
    ``qvh_chart_node`` the QVHs, one table per plan in ``qvh_table_nodes``.
    """

    result: PlanningResult
    dose_nodes: dict[str, Any]
    table_node: Any
    dvh_table_node: Any
    dvh_chart_node: Any
    qvh_table_nodes: dict[str, Any]
    qvh_chart_node: Any
    notes: list[str] = field(default_factory=list)

    @property
    def painted_dose_node(self):
        return self.dose_nodes["painted"]

    @property
    def uniform_dose_node(self):
        return self.dose_nodes.get("uniform")


def plan_prescription_node(
    prescription_node,
    ct_node,
    segmentation_node,
    target_segment: str,
    oar_segments: Sequence[str] = (),
    *,
    body_segment: str | None = None,
    target_margin_mm: float = 0.0,
    uniform_dose_gy: float | None = 70.0,
    base_dose_gy: float | None = None,
    settings: PlanningSettings | None = None,
    constraints: Sequence[OarConstraint] | None = None,
    name: str | None = None,
    dose_nodes: Mapping[str, Any] | None = None,
    table_node=None,
    dvh_table_node=None,
    dvh_chart_node=None,
    qvh_chart_node=None,
    progress: ProgressCallback | None = None,
) -> NodePlan:
    """Optimise an IMRT plan for a prescription volume (and a uniform plan to compare) and add the results.

    Parameters
    ----------
    prescription_node : the dose-painting prescription (Gy), e.g. from :func:`~.hypoxia_logic.prescribe_node`
        (best made on the CT grid; otherwise resampled onto it with linear interpolation, noted).
    ct_node : the planning CT (HU) on an axis-aligned grid; every result is on its grid.
    segmentation_node, target_segment : the planned target by segment name (the PTV, or the GTV grown by
        ``target_margin_mm``). It is planned together with the map's support.
    oar_segments : organ-at-risk segment names (every one gets a DVH). A name containing "parotid" gets the
        mean-dose limit and "cord"/"spinal" the max-dose limit of ``settings`` (see
        :func:`~PETDosePaintingLib.dosepainting.planning.default_constraints`), unless ``constraints`` is given.
    body_segment : the External contour by name (default: an OAR named External/Body, else from the CT).
    target_margin_mm : isotropic margin (mm) grown around ``target_segment`` to make the PTV (default 0: the
        segment is the PTV).
    uniform_dose_gy : dose of the uniform comparison plan (default 70 Gy; ``None`` plans the map only).
    base_dose_gy : dose for target voxels outside the map (default the map's lowest positive dose).
    settings : beams, bixels, dose grid, objective, limits, optimiser (default
        :class:`~PETDosePaintingLib.dosepainting.planning.PlanningSettings`).
    constraints : explicit organ-at-risk limits (each names one of ``oar_segments``).
    name : base name of the new nodes (default ``<prescription> plan``).
    dose_nodes : ``{"painted": node, "uniform": node}`` to refill instead of creating volumes.
    table_node, dvh_table_node, dvh_chart_node, qvh_chart_node : nodes to refill (new ones if ``None``).
    progress : ``progress(done, total, label)``; returning ``False`` cancels.

    Raises ``PlanningExtraMissing`` (no pyRadPlan; one sentence with the install command), ``InputError`` (a
    missing segment, a volume in other units, an output that is an input), ``OperationCancelled``.
    """
    load_pyradplan()  # first: without the extra the panel says how to install it, before any work
    if not segmentation_node or not target_segment:
        raise InputError("select the segmentation and the target segment to plan")
    oar_segments = [str(n) for n in oar_segments if str(n)]
    if target_segment in oar_segments:
        raise InputError(f"segment {target_segment!r} is the target and cannot also be an organ at risk")
    repeated = sorted({n for n in oar_segments if oar_segments.count(n) > 1})
    if repeated:
        raise InputError(f"organs at risk named more than once: {', '.join(repeated)}")
    for segment in [target_segment, *oar_segments, *([body_segment] if body_segment else [])]:
        segment_id(segmentation_node, segment)  # InputError listing the segment names
    if not (math.isfinite(target_margin_mm) and 0.0 <= target_margin_mm <= 30.0):
        raise InputError(f"the target margin must be within 0-30 mm, got {target_margin_mm!r}")
    outputs = dict(dose_nodes or {})
    for label, node in outputs.items():
        if node is not None and any(node is other for other in (prescription_node, ct_node)):
            raise InputError(f"the {label} dose volume {node.GetName()!r} is also an input; choose another output "
                             "volume (or none to create one)")

    cancelled = {"flag": False}
    _report(progress, 0, "reading the CT, the prescription and the segments", cancelled)
    ct = image_from_volume_node(ct_node)
    if get_units(ct) not in (None, Units.HU):
        raise InputError(f"volume {ct_node.GetName()!r} holds {get_units(ct)!r} values, not a CT in HU")
    notes: list[str] = []
    prescription = image_from_volume_node(prescription_node)
    if get_units(prescription) not in (None, Units.GY):
        raise InputError(f"volume {prescription_node.GetName()!r} holds {get_units(prescription)!r} values, not a "
                         "prescription in Gy")
    if not same_geometry(prescription, ct):
        prescription = resample_to_reference(prescription, ct, interpolation="linear", default_value=0.0,
                                             output_pixel_type=sitk.sitkFloat32)
        notes.append(f"prescription {prescription_node.GetName()!r} resampled onto the grid of CT "
                     f"{ct_node.GetName()!r} with linear interpolation (nodes of one scene share the world frame); "
                     "make the prescription on the CT grid to plan it exactly")
    set_units(prescription, Units.GY)
    target = mask_from_segment(segmentation_node, target_segment, ct)
    if target_margin_mm > 0:
        target = ptv_from_gtv(target, target_margin_mm)
        notes.append(f"target: {target_segment} + {target_margin_mm:g} mm")
    oars = {segment: mask_from_segment(segmentation_node, segment, ct) for segment in oar_segments}
    body = mask_from_segment(segmentation_node, body_segment, ct) if body_segment else None

    def on_progress(p: PlanningProgress) -> None:
        if progress is not None and progress(round(p.fraction * PROGRESS_STEPS), PROGRESS_STEPS,
                                             p.message) is False:
            cancelled["flag"] = True

    try:
        result = plan_dose_painting(ct, prescription, target, oars, body=body, settings=settings,
                                    constraints=constraints, uniform_dose_gy=uniform_dose_gy,
                                    base_dose_gy=base_dose_gy, progress=on_progress,
                                    cancel=lambda: cancelled["flag"])
    except PlanningCancelled as exc:
        raise OperationCancelled(f"planning cancelled ({exc})") from None
    _report(progress, PROGRESS_STEPS, "adding the doses, tables and charts to the scene", cancelled)

    scene = prescription_node.GetScene()
    base = name or f"{prescription_node.GetName()} plan"
    nodes: dict[str, Any] = {}
    top = max(float(np.max(sitk.GetArrayViewFromImage(plan.dose))) for plan in result.plans())
    for plan in result.plans():
        node = volume_node_from_image(plan.dose, f"{base} {plan.label}", scene, node=outputs.get(plan.label))
        tag_as_dose(node, ct_node, top)
        node.SetAttribute("PETDosePainting.PlanLabel", plan.label)
        node.SetAttribute("PETDosePainting.PlanReference", plan.reference)
        nodes[plan.label] = node
    table = table_from_columns(columns_from_rows(_comparison_rows(result), COMPARISON_COLUMNS),
                               f"{base} comparison", table_node, scene, descriptions=_COMPARISON_DESCRIPTIONS)
    dvh_table, dvh_chart = _dvh_nodes(result, base, scene, dvh_table_node, dvh_chart_node)
    qvh_tables: dict[str, Any] = {}
    qvh_chart = qvh_chart_node
    for plan in result.plans():
        title = nodes[plan.label].GetName()
        qvh_tables[plan.label] = qvh_table(plan.evaluation.quality, f"QVH {title}",
                                           _series_table(qvh_chart, f"QVH {title}"), scene)
        _series, qvh_chart = qvh_plot(qvh_tables[plan.label], nodes[plan.label].GetName(), qvh_chart)
    return NodePlan(result, nodes, table, dvh_table, dvh_chart, qvh_tables, qvh_chart, notes + result.notes)


def _series_table(chart_node, title: str):
    """The table of the series called ``title`` in ``chart_node`` (refilled on a re-run), or ``None``."""
    for i in range(chart_node.GetNumberOfPlotSeriesNodes() if chart_node is not None else 0):
        series = chart_node.GetNthPlotSeriesNode(i)
        if series is not None and series.GetName() == title:
            return series.GetTableNode()
    return None


def _report(progress: ProgressCallback | None, done: int, label: str, cancelled: dict) -> None:
    if progress is not None and progress(done, PROGRESS_STEPS, label) is False:
        cancelled["flag"] = True
        raise OperationCancelled(f"cancelled before {label}")


def _comparison_rows(result: PlanningResult) -> list[dict[str, Any]]:
    """The library's comparison rows with yes/no cells as 1/0, so the value columns stay numeric."""
    rows = []
    for row in result.comparison_rows():
        rows.append({k: (float(v) if isinstance(v, bool) else v) for k, v in row.items()})
    return rows


def _dvh_nodes(result: PlanningResult, base: str, scene, table_node, chart_node) -> tuple[Any, Any]:
    """A table of cumulative DVHs on a common dose axis (columns ``dose_Gy`` and ``<structure> <plan>``: the
    fraction of the structure receiving at least that dose, :meth:`~..dosepainting.dvh.DvhResult.curve`) and a
    chart with one line per column (painted solid, uniform dashed; one colour per structure). A refilled chart's
    previous DVH series are removed from the scene."""
    plans = result.plans()
    curves = {(plan.label, structure): (*dvh.curve(DEFAULT_DVH_STEP_GY), dvh.volume_cc)
              for plan in plans for structure, dvh in plan.evaluation.dvhs.items()}
    length = max(axis.size for axis, _, _ in curves.values())
    columns: dict[str, list[float]] = {DVH_DOSE_COLUMN: [i * DEFAULT_DVH_STEP_GY for i in range(length)]}
    for (label, structure), (_axis, volume_cc, total_cc) in curves.items():
        fraction = np.zeros(length)  # the curves share the axis 0, step, ...; beyond a structure's maximum: 0
        fraction[:volume_cc.size] = volume_cc / total_cc if total_cc > 0 else np.nan
        columns[f"{structure} {label}"] = [float(v) for v in fraction]
    table = table_from_columns(columns, f"{base} DVH", table_node, scene, units={DVH_DOSE_COLUMN: "Gy"})
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{base} DVH")
    old = [chart_node.GetNthPlotSeriesNode(i) for i in range(chart_node.GetNumberOfPlotSeriesNodes())]
    chart_node.RemoveAllPlotSeriesNodeIDs()
    for series in old:
        if series is not None and series.GetName().startswith("DVH "):
            scene.RemoveNode(series)
    structures = list(plans[-1].evaluation.dvhs)
    for plan in plans:
        for index, structure in enumerate(structures):
            column = f"{structure} {plan.label}"
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"DVH {column}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName(DVH_DOSE_COLUMN)
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid if plan.label == "painted"
                                else slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            series.SetColor(*_colour(index, len(structures)))
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    chart_node.SetTitle("Dose-volume histograms (painted solid, uniform dashed)")
    chart_node.SetXAxisTitle("dose (Gy)")
    chart_node.SetYAxisTitle("fraction of the structure receiving at least the dose")
    return table, chart_node


def _colour(index: int, count: int) -> tuple[float, float, float]:
    """Distinct hues around the colour wheel (HSV with full saturation, value 0.85)."""
    import colorsys

    return colorsys.hsv_to_rgb((index / max(count, 1)) % 1.0, 0.9, 0.85)


__all__ = [
    "DVH_DOSE_COLUMN",
    "INSTALL_HINT",
    "NodePlan",
    "plan_prescription_node",
    "planning_status",
]
