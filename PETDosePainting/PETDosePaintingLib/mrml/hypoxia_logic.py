"""Node-level logic behind the HypoxiaMapping panel and its Python console API (tested headless).

These functions take and return MRML nodes; the science is in the tier-1 library they call
(:mod:`~PETDosePaintingLib.dosepainting.hypoxia`, :mod:`~PETDosePaintingLib.dosepainting.prescription`,
:mod:`~PETDosePaintingLib.dosepainting.levels`, :mod:`~PETDosePaintingLib.dosepainting.plan_evaluation`,
:mod:`~PETDosePaintingLib.imaging.rtdose`, :mod:`~PETDosePaintingLib.imaging.rtstruct`). Sections:

* hypoxia: the tumour-to-reference ratio volume (:func:`ratio_map_node`) and the hypoxic sub-volume written
  into a segment by name, with HV/HF/TMRmax/TMRpeak in a table (:func:`hypoxic_volume_node`);
* prescription: a dose-painting prescription volume (by numbers, boost, or nested levels) tagged as dose for
  SlicerRT, its level segments written by name into a segmentation, and a prescription table
  (:func:`prescribe_node`);
* DICOM-RT export of a prescription volume and its level segments on the planning CT
  (:func:`planning_ct_series`, :func:`export_dicom_rt`);
* plan evaluation: QF, Q95, Q105 of a planned dose against a prescription, the QVH as a table node and a plot
  chart, TCP/EUD (:func:`evaluate_plan_node`).

Frames of reference. Nodes of one scene share Slicer's world coordinates: their positions are world RAS
(linear parent transforms folded in, non-linear ones refused). When two nodes must share a grid (the PET and
a planning-CT grid, a plan dose and a prescription), this module takes them to be in one frame and resamples
explicitly, with the library's interpolation (linear for intensities and doses, nearest neighbour for masks
through Slicer's segment export), and says so in the result's ``notes``. The DICOM-RT export is stricter: the
scene's world frame must be shown to be the planning CT's DICOM frame (see :func:`export_dicom_rt`).

Long operations take ``progress(done, total, label)``, called before each step; returning ``False`` cancels
(:class:`~.gtv_logic.OperationCancelled`) and nothing has been written to the scene or to disk then.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from ..dosepainting.hypoxia import (
    PEAK_DIAMETER_1CM3_MM,
    REFERENCE_KINDS,
    HypoxiaMetrics,
    RatioMap,
    hypoxia_metrics,
    hypoxic_boost_volume,
    uptake_ratio_map,
)
from ..dosepainting.levels import DEFAULT_N_LEVELS, LevelsResult, quantise_levels
from ..dosepainting.plan_evaluation import (
    DEFAULT_Q_STEP,
    QVH_COLUMNS,
    PlanEvaluation,
    evaluate_plan,
    resample_dose_to_prescription,
)
from ..dosepainting.prescription import (
    DEFAULT_BOOST_FRACTION,
    DEFAULT_DOSE_HIGH,
    DEFAULT_DOSE_LOW,
    DEFAULT_I_HIGH_PERCENTILE,
    DEFAULT_I_LOW_FRACTION,
    DEFAULT_MARGIN_MM,
    DEFAULT_MIN_ISLAND_ML,
    PrescriptionResult,
    boost_prescription,
    check_dose_range,
    dose_painting_by_numbers,
    tg263_level_name,
)
from ..errors import GeometryError, InputError, OutputError
from ..imaging.dicom_series import DicomSeries, read_dicom_series
from ..imaging.image import (
    Units,
    get_units,
    mask_volume_ml,
    same_geometry,
    set_frame_of_reference,
)
from ..imaging.io import write_json
from ..imaging.rtdose import write_rtdose
from ..imaging.rtstruct import safe_file_name, write_rtstruct
from .gtv_logic import OperationCancelled
from .segmentations import mask_from_segment, new_segmentation_node, segment_names, set_segment_from_mask
from .tables import table_from_columns, upsert_table_rows
from .volumes import (
    DOSE_UNIT_NAME_ATTRIBUTE,
    DOSE_VOLUME_ATTRIBUTE,
    LPS_TO_RAS,
    UNITS_ATTRIBUTE,
    image_from_volume_node,
    node_ijk_to_world_ras,
    volume_node_from_image,
)

#: Prescription modes (as ``petdp prescribe --mode``): dose painting by numbers, a boost sub-volume, nested levels.
MODES = ("dpbn", "boost", "levels")
#: Node attributes written by this module (read back by the export and the panel).
ATTRIBUTE_PREFIX = "PETDosePainting."
MODE_ATTRIBUTE = ATTRIBUTE_PREFIX + "PrescriptionMode"
DESCRIPTION_ATTRIBUTE = ATTRIBUTE_PREFIX + "PrescriptionDescription"
LEVEL_SEGMENTS_ATTRIBUTE = ATTRIBUTE_PREFIX + "LevelSegments"
#: Node reference role from a prescription volume to the segmentation holding its level segments.
LEVEL_SEGMENTATION_REFERENCE = "PETDosePainting.levelSegmentation"
#: Volume node attribute set by Slicer's DICOM scalar volume plugin: the SOP Instance UIDs of the slices.
DICOM_INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
#: Marker file of a DICOM-RT export folder (a folder holding it may be written into again).
EXPORT_MARKER = ".petdp-rt-export"
#: Slicer's rainbow colour table, used to display prescription volumes (present in every Slicer scene).
DOSE_COLOUR_NODE_ID = "vtkMRMLColorTableNodeRainbow"

#: Columns of the hypoxia table written by :func:`hypoxic_volume_node` (a contract: keep them stable).
HYPOXIA_COLUMNS = ("ratio_volume", "target", "segment", "tracer", "reference_kind", "reference_mean", "threshold",
                   "comparison", "threshold_source", "HV_ml", "HF", "target_volume_ml", "TMRmax", "TMRpeak",
                   "TMRmean", "boost_segment", "boost_volume_ml")
#: Columns of the prescription table written by :func:`prescribe_node` (a contract: keep them stable).
PRESCRIPTION_COLUMNS = ("prescription", "mode", "image", "target", "grid", "dose_min_Gy", "dose_max_Gy", "mapping",
                        "margin_mm", "I_low", "I_high", "intensity_units", "target_volume_ml",
                        "evaluation_volume_ml", "dose_mean_Gy", "target_mean_dose_Gy", "boost_volume_ml",
                        "n_levels", "level_segments", "rms_level_error_Gy", "QF_levels_vs_continuous")
#: Columns of the plan-evaluation table written by :func:`evaluate_plan_node` (a contract: keep them stable).
EVALUATION_COLUMNS = ("prescription", "plan", "evaluation_volume", "n_voxels", "volume_ml", "QF", "Q95", "Q105",
                      "Q95_105", "Q_mean", "Q_min", "Q_max", "TCP_planned", "TCP_prescribed", "EUD_planned_Gy",
                      "EUD_prescribed_Gy", "resampled")

_COLUMN_UNITS = {"HV_ml": "mL", "target_volume_ml": "mL", "boost_volume_ml": "mL", "dose_min_Gy": "Gy",
                 "dose_max_Gy": "Gy", "margin_mm": "mm", "evaluation_volume_ml": "mL", "dose_mean_Gy": "Gy",
                 "target_mean_dose_Gy": "Gy", "rms_level_error_Gy": "Gy", "volume_ml": "mL", "EUD_planned_Gy": "Gy",
                 "EUD_prescribed_Gy": "Gy", "q": "", "volume_fraction": ""}
_COLUMN_DESCRIPTIONS = {
    "reference_mean": "mean uptake in the reference region (PET units), or the blood-sample value",
    "threshold": "ratio threshold of the hypoxic volume",
    "HV_ml": "hypoxic volume: target voxels at or above the threshold (no island filtering)",
    "HF": "hypoxic fraction HV / target volume",
    "TMRmax": "highest voxel ratio in the target (T/M, T/B or T/Bg as the reference)",
    "TMRpeak": "highest mean ratio in a 1 cm3 sphere centred in the target",
    "TMRmean": "mean ratio over the target",
    "boost_volume_ml": "boost contour or boost sub-volume (holes filled, small islands dropped)",
    "I_low": "intensity mapped to dose_min (PET units)",
    "I_high": "intensity mapped to dose_max (PET units)",
    "evaluation_volume_ml": "target plus margin ('PTV_PET'), where QF/QVH are evaluated",
    "rms_level_error_Gy": "RMS of the level map minus the continuous map over ROI_1",
    "QF_levels_vs_continuous": "quality factor of the level map against the continuous map",
    "QF": "quality factor mean |planned/prescribed - 1| (0 = perfect)",
    "Q95": "fraction of the evaluation volume with planned/prescribed >= 0.95",
    "Q105": "fraction of the evaluation volume with planned/prescribed >= 1.05",
    "Q95_105": "Q95 - Q105",
    "TCP_planned": "Poisson-LQ TCP of the planned dose (library defaults)",
    "TCP_prescribed": "Poisson-LQ TCP of the prescription (same clonogen model)",
    "q": "Q = planned / prescribed",
    "volume_fraction": "fraction of the evaluation volume with Q >= q",
}
#: Segment colours (RGB 0..1): hypoxic volume, its boost contour, and the level ramp (low to high dose).
HYPOXIC_COLOUR = (0.85, 0.20, 0.75)
BOOST_COLOUR = (0.55, 0.10, 0.55)
_LEVEL_COLOURS = ((0.20, 0.40, 0.95), (0.10, 0.75, 0.85), (0.25, 0.80, 0.30), (0.95, 0.85, 0.15),
                  (0.95, 0.50, 0.10), (0.90, 0.15, 0.15))

ProgressCallback = Callable[[int, int, str], "bool | None"]


def _report(progress: ProgressCallback | None, done: int, total: int, label: str) -> None:
    if progress is not None and progress(done, total, label) is False:
        raise OperationCancelled(f"cancelled before {label}")


def _refuse_input_as_output(output, inputs: Mapping[str, Any], what: str) -> None:
    """Never overwrite an input: :class:`InputError` if ``output`` is one of the input nodes."""
    for role, node in inputs.items():
        if output is not None and node is not None and output is node:
            raise InputError(f"the {what} {output.GetName()!r} is also the {role}; choose another output volume "
                             "(or none to create one)")


def _geometry_image(node) -> sitk.Image:
    """An empty uint8 image with the world geometry (LPS) of a volume node, without copying its voxels."""
    if node is None or not node.IsA("vtkMRMLVolumeNode") or node.GetImageData() is None:
        raise InputError("expected a volume node holding image data")
    matrix = node_ijk_to_world_ras(node)
    matrix[:3, :] = LPS_TO_RAS @ matrix[:3, :]  # IJK -> LPS
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.Image([int(d) for d in node.GetImageData().GetDimensions()], sitk.sitkUInt8)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(matrix[:3, 3].tolist())
    image.SetDirection((matrix[:3, :3] / spacing[None, :]).ravel().tolist())
    return image


# ------------------------------------------------------------------------------------------ hypoxia


_RATIO_SUFFIX = {"muscle": "TMR", "blood": "TBR", "background": "TBgR"}


def ratio_map_node(pet_node, reference_segmentation, reference_segment: str, reference_kind: str = "muscle",
                   output_node=None, *, blood_value: float | None = None,
                   target: tuple[Any, str] | None = None) -> tuple[object, RatioMap]:
    """Tumour-to-reference ratio volume node from a PET node and a reference segment (by name).

    Parameters
    ----------
    pet_node : hypoxia PET (FMISO, FAZA) scalar volume node, SUV or Bq/mL (ratios cancel the units).
    reference_segmentation, reference_segment : the reference region (neck muscle, blood pool or background),
        exported onto the PET grid. Ignored (may be ``None``) when ``blood_value`` is given.
    reference_kind : ``"muscle"`` (T/M, default), ``"blood"`` (T/B) or ``"background"`` (T/Bg).
    output_node : volume to write into (a new ``<PET>_TMR`` / ``_TBR`` / ``_TBgR`` volume if ``None``).
    blood_value : a venous blood-sample activity in the PET's units instead of a reference region (needs
        ``reference_kind="blood"``).
    target : optional ``(segmentation, segment name)`` of the tumour: a reference region overlapping it is refused.

    Returns the ratio volume (units ``ratio``; attributes ``PETDosePainting.ReferenceMean``, ``ReferenceKind``,
    ``ReferenceSource``) and the library's :class:`~PETDosePaintingLib.dosepainting.hypoxia.RatioMap`.
    """
    _refuse_input_as_output(output_node, {"PET": pet_node}, "output ratio volume")
    pet = image_from_volume_node(pet_node)
    reference = None
    if blood_value is None:
        if reference_segmentation is None or not reference_segment:
            raise InputError("give a reference segment (muscle, blood pool or background) or a blood-sample value")
        reference = mask_from_segment(reference_segmentation, reference_segment, pet)
    names = {"reference_name": f"the reference segment {reference_segment!r}"}
    target_mask = _segment_mask(target, pet, "target")
    if target_mask is not None:
        names["target_name"] = f"the target segment {target[1]!r}"
    result = uptake_ratio_map(pet, reference, reference_kind, blood_value=blood_value, target=target_mask, **names)
    name = f"{pet_node.GetName()}_{_RATIO_SUFFIX.get(reference_kind, 'ratio')}"
    node = volume_node_from_image(result.ratio, name, pet_node.GetScene(), node=output_node)
    node.SetAttribute(ATTRIBUTE_PREFIX + "ReferenceMean", f"{result.reference_mean:.6g}")
    node.SetAttribute(ATTRIBUTE_PREFIX + "ReferenceKind", reference_kind)
    node.SetAttribute(ATTRIBUTE_PREFIX + "ReferenceSource", result.reference_source)
    return node, result


@dataclass(eq=False)
class NodeHypoxicVolume:
    """What :func:`hypoxic_volume_node` produced.

    ``metrics`` is the library's :class:`~PETDosePaintingLib.dosepainting.hypoxia.HypoxiaMetrics` (HV, HF,
    TMRmax, TMRpeak, threshold and its source, the hypoxic mask on the ratio grid); ``boost_mask`` the boost
    contour when one was asked for. Volumes in mL.
    """

    segmentation_node: Any
    segment_name: str
    segment_id: str
    metrics: HypoxiaMetrics
    boost_segment: str | None
    boost_mask: sitk.Image | None
    boost_volume_ml: float | None
    table_node: Any
    notes: list[str] = field(default_factory=list)


def hypoxic_volume_node(
    ratio_node,
    target_segmentation,
    target_segment: str,
    *,
    tracer: str | None = "fmiso",
    reference_kind: str | None = None,
    threshold: float | None = None,
    strict: bool | None = None,
    peak_diameter_mm: float = PEAK_DIAMETER_1CM3_MM,
    segmentation_node=None,
    segment_name: str | None = None,
    boost_segment_name: str | None = None,
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
    table_node=None,
) -> NodeHypoxicVolume:
    """The hypoxic sub-volume of a target, written into a segment by name, and HV/HF/TMRmax/TMRpeak in a table.

    Parameters
    ----------
    ratio_node : ratio volume (from :func:`ratio_map_node`).
    target_segmentation, target_segment : the tumour target (GTV), exported onto the ratio grid.
    tracer, reference_kind, threshold, strict, peak_diameter_mm : as
        :func:`~PETDosePaintingLib.dosepainting.hypoxia.hypoxia_metrics`: the default threshold comes from the
        tracer/reference table ``HYPOXIA_THRESHOLDS`` (e.g. FMISO T/M > 1.2); ``reference_kind`` defaults to the
        ratio volume's ``PETDosePainting.ReferenceKind`` attribute, else ``"muscle"``.
    segmentation_node : where to write (default: the target's segmentation); other segments are untouched.
    segment_name : default ``HV_<TRACER>`` (``HV`` without a tracer). The segment is the library's hypoxic mask
        (no island filtering, as reported HF).
    boost_segment_name : if given, also write the boost contour (holes filled, islands below ``min_island_ml``,
        default 0.5 mL, dropped, kept inside the target; ``hypoxic_boost_volume``) into this segment.
    table_node : hypoxia table to add the row to (a new "Hypoxia" table if ``None``); a row for the same ratio
        volume, target and segment is replaced.
    """
    scene = ratio_node.GetScene()
    ratio = image_from_volume_node(ratio_node)
    units = get_units(ratio)
    if units is not None and units != Units.RATIO:
        raise InputError(f"volume {ratio_node.GetName()!r} holds {units!r} values, not an uptake ratio; compute "
                         "the ratio map first")
    kind = reference_kind or ratio_node.GetAttribute(ATTRIBUTE_PREFIX + "ReferenceKind") or "muscle"
    if kind not in REFERENCE_KINDS:
        raise InputError(f"reference kind must be one of {', '.join(REFERENCE_KINDS)}, got {kind!r}")
    target = mask_from_segment(target_segmentation, target_segment, ratio)
    metrics = hypoxia_metrics(ratio, target, tracer=tracer, reference_kind=kind, threshold=threshold, strict=strict,
                              peak_diameter_mm=peak_diameter_mm)
    boost = None
    if boost_segment_name:
        boost = hypoxic_boost_volume(metrics.hypoxic_mask, min_island_ml=min_island_ml, envelope=target)
    name = segment_name or (f"HV_{tracer.upper()}" if tracer else "HV")
    segmentation_node = segmentation_node or target_segmentation
    notes = list(metrics.notes)
    if metrics.n_hypoxic_voxels == 0:
        notes.append(f"no voxel of {target_segment!r} reaches the threshold: segment {name!r} is empty")
    sid = set_segment_from_mask(segmentation_node, metrics.hypoxic_mask, name, HYPOXIC_COLOUR)
    boost_ml = None
    if boost is not None:
        set_segment_from_mask(segmentation_node, boost, boost_segment_name, BOOST_COLOUR)
        boost_ml = mask_volume_ml(boost)
    reference_mean = ratio_node.GetAttribute(ATTRIBUTE_PREFIX + "ReferenceMean")
    row = {"ratio_volume": ratio_node.GetName(), "target": target_segment, "segment": name,
           "tracer": metrics.tracer or "", "reference_kind": kind,
           "reference_mean": float(reference_mean) if reference_mean else math.nan, "threshold": metrics.threshold,
           "comparison": metrics.comparison, "threshold_source": metrics.threshold_source, "HV_ml": metrics.hv_ml,
           "HF": metrics.hf, "target_volume_ml": metrics.target_volume_ml, "TMRmax": metrics.tmr_max,
           "TMRpeak": metrics.tmr_peak, "TMRmean": metrics.tmr_mean, "boost_segment": boost_segment_name or "",
           "boost_volume_ml": math.nan if boost_ml is None else boost_ml}
    table_node = _upsert(table_node, [row], HYPOXIA_COLUMNS, key=("ratio_volume", "target", "segment"),
                                   name="Hypoxia", scene=scene)
    return NodeHypoxicVolume(segmentation_node, name, sid, metrics, boost_segment_name or None, boost, boost_ml,
                             table_node, notes)


# ------------------------------------------------------------------------------------------ prescription


@dataclass(eq=False)
class NodePrescription:
    """What :func:`prescribe_node` produced.

    ``prescription_node`` holds the prescription in Gy (the level map in ``levels`` mode), tagged as dose for
    SlicerRT; ``result`` is the library's
    :class:`~PETDosePaintingLib.dosepainting.prescription.PrescriptionResult` (continuous map, target and
    evaluation masks, anchors, volumes) and ``levels`` its
    :class:`~PETDosePaintingLib.dosepainting.levels.LevelsResult` in ``levels`` mode. ``level_segments`` are the
    names written into ``level_segmentation``, lowest dose first. ``continuous_node`` holds the continuous map
    in ``levels`` mode when one was asked for.
    """

    prescription_node: Any
    mode: str
    result: PrescriptionResult
    levels: LevelsResult | None
    level_segmentation: Any
    level_segments: list[str]
    rois: dict[str, sitk.Image]
    continuous_node: Any
    table_node: Any
    notes: list[str] = field(default_factory=list)


def _segment_mask(ref, grid: sitk.Image, what: str) -> sitk.Image | None:
    """A ``(segmentation, segment name)`` pair exported onto ``grid``; ``None`` for no reference."""
    if ref is None:
        return None
    if not isinstance(ref, tuple) or len(ref) != 2:
        raise InputError(f"the {what} must be given as (segmentation node, segment name)")
    seg, name = ref
    if seg is None or not name:
        return None
    return mask_from_segment(seg, name, grid)


def prescription_description(mode: str, dose_min: float, dose_max: float, result: PrescriptionResult,
                             n_levels: int | None = None) -> str:
    """Series Description of the exported RT Dose, with the mapping parameters (as ``petdp prescribe``)."""
    if mode == "boost":
        return f"DPBC_boost_{dose_min:g}-{dose_max:g}Gy"
    text = f"DPBN_presc_{dose_min:g}-{dose_max:g}Gy_{result.mapping}_m{result.margin_mm:g}mm"
    return text if mode == "dpbn" else f"{text}_{n_levels}levels"


def prescribe_node(
    pet_node,
    target_segmentation,
    target_segment: str,
    *,
    mode: str = "dpbn",
    dose_min: float = DEFAULT_DOSE_LOW,
    dose_max: float = DEFAULT_DOSE_HIGH,
    mapping: str = "linear",
    margin_mm: float | None = None,
    i_low: float | None = None,
    i_high: float | None = None,
    i_high_percentile: float = DEFAULT_I_HIGH_PERCENTILE,
    i_low_fraction: float = DEFAULT_I_LOW_FRACTION,
    mean_dose: float | None = None,
    sigmoid_centre: float = 0.5,
    sigmoid_steepness: float = 10.0,
    n_levels: int = DEFAULT_N_LEVELS,
    level_method: str = "equal",
    assignment: str = "nearest",
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
    boost_fraction: float = DEFAULT_BOOST_FRACTION,
    boost_volume: tuple[Any, str] | None = None,
    envelope: tuple[Any, str] | None = None,
    grid_node=None,
    prescription_node=None,
    name: str | None = None,
    level_segmentation=None,
    continuous_node=None,
    keep_continuous: bool = False,
    table_node=None,
    progress: ProgressCallback | None = None,
) -> NodePrescription:
    """A dose-painting prescription volume from a PET (or ratio) volume inside a target segment.

    Same computation as ``petdp prescribe`` (:mod:`PETDosePaintingLib.cli.prescribe`):

    * ``mode="dpbn"``: the image mapped to [``dose_min``, ``dose_max``] Gy inside the target
      (:func:`~PETDosePaintingLib.dosepainting.prescription.dose_painting_by_numbers`; ``mapping``, anchors
      ``I_high`` = ``i_high_percentile`` (95) percentile in the target and ``I_low`` = ``i_low_fraction`` (0.25)
      x ``I_high`` unless given, grey-level dilation by ``margin_mm``, default 2.5 mm, optional ``mean_dose``);
      level segment ``PTV_PET`` (the evaluation volume, target plus margin);
    * ``mode="boost"``: ``dose_min`` to the target and ``dose_max`` to a boost sub-volume
      (:func:`~PETDosePaintingLib.dosepainting.prescription.boost_prescription`): ``boost_volume`` (a segment,
      e.g. the hypoxic volume) or the voxels >= ``boost_fraction`` (0.5) x the maximum in the target, with
      ``margin_mm`` (default 0) around it; level segments ``PTV_DP_<cGy>`` for both doses;
    * ``mode="levels"``: the dpbn map quantised to ``n_levels`` (5) nested levels
      (:func:`~PETDosePaintingLib.dosepainting.levels.quantise_levels`, ``level_method`` equal/midpoint/lloyd-max,
      ``assignment`` nearest/floor, islands below ``min_island_ml`` (0.5 mL) dropped) spanning ``dose_min`` ..
      ``dose_max`` (the map's maximum with ``mean_dose``); the prescription volume is the level map and the
      nested ROIs ``PTV_DP_7000`` ... are the level segments.

    Parameters
    ----------
    pet_node : the image to paint (hypoxia PET, its ratio volume, or an FDG PET; self-normalised by the anchors).
    target_segmentation, target_segment : the target (GTV_PET or PTV), exported onto the dose grid.
    boost_volume, envelope : optional ``(segmentation, segment name)``: the boost sub-volume (boost mode) and the
        mask the boost or level ROIs must stay inside (e.g. the PTV70).
    grid_node : volume whose grid is the dose grid (e.g. the planning CT); default the grid of ``pet_node``. The
        image is resampled onto it with linear interpolation (nodes share Slicer's world frame).
    prescription_node : volume to write into (a new volume called ``name`` if ``None``, default
        ``<image>_Rx_<mode>``). It is tagged as dose (``DicomRtImport.DoseVolume``, units Gy) and placed next to
        the image in the subject hierarchy (whose study gets SlicerRT's dose unit name ``Gy`` if it has none).
    level_segmentation : segmentation receiving the level segments by name (a new "<name>_levels" segmentation
        if ``None``); other segments are untouched.
    continuous_node, keep_continuous : levels mode: write the continuous map too (into ``continuous_node``, or a
        new volume if ``keep_continuous``).
    table_node : prescription table to add the row to (a new "Prescriptions" table if ``None``); the row for the
        same prescription volume is replaced.
    progress : ``progress(done, total, label)`` before each step; ``False`` cancels (nothing is written then).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    low_name, high_name = ("base dose", "boost dose") if mode == "boost" else ("dose_min", "dose_max")
    dose_min, dose_max = check_dose_range(dose_min, dose_max, low_name, high_name)
    if mode == "boost" and mean_dose is not None:
        raise InputError("mean_dose is for the dpbn and levels modes")
    if mode != "boost" and boost_volume is not None and boost_volume[0] is not None and boost_volume[1]:
        raise InputError("a boost volume is for the boost mode")
    for output, what in ((prescription_node, "prescription volume"), (continuous_node, "continuous-map volume")):
        _refuse_input_as_output(output, {"image to paint": pet_node, "dose grid": grid_node}, what)
    scene = pet_node.GetScene()
    steps = ["reading the inputs", "computing the prescription"] + (["quantising the levels"] if mode == "levels"
                                                                    else []) + ["writing the results"]
    total = len(steps)
    _report(progress, 0, total, steps[0])
    pet = image_from_volume_node(pet_node)
    grid = pet if grid_node is None else _geometry_image(grid_node)
    grid_name = pet_node.GetName() if grid_node is None else grid_node.GetName()
    target = _segment_mask((target_segmentation, target_segment), grid, "target")
    if target is None:
        raise InputError("select the target segment (GTV_PET or PTV) of the prescription")
    envelope_mask = _segment_mask(envelope, grid, "envelope")
    boost_mask = _segment_mask(boost_volume, grid, "boost volume")
    notes: list[str] = []
    if not same_geometry(pet, grid):
        notes.append(f"{pet_node.GetName()!r} and the dose grid {grid_name!r} are taken to share Slicer's world "
                     "frame (nodes of one scene)")
    _report(progress, 1, total, steps[1])
    levels = None
    if mode == "boost":
        result = boost_prescription(
            pet, target, base_dose=dose_min, boost_dose=dose_max, boost_volume=boost_mask,
            boost_fraction=boost_fraction, boost_margin_mm=0.0 if margin_mm is None else margin_mm,
            envelope=envelope_mask, min_island_ml=min_island_ml, assume_same_frame=True)
        rois = {tg263_level_name(dose_min): result.evaluation_mask, tg263_level_name(dose_max): result.boost_mask}
        prescription = result.dose
    else:
        result = dose_painting_by_numbers(
            pet, target, dose_low=dose_min, dose_high=dose_max, mapping=mapping, i_low=i_low, i_high=i_high,
            i_high_percentile=i_high_percentile, i_low_fraction=i_low_fraction,
            margin_mm=DEFAULT_MARGIN_MM if margin_mm is None else margin_mm, mean_dose=mean_dose,
            sigmoid_centre=sigmoid_centre, sigmoid_steepness=sigmoid_steepness, assume_same_frame=True)
        if mode == "levels":
            _report(progress, 2, total, steps[2])
            # Levels span dose_min..dose_max (70, 74, ..., 86 Gy by default); with mean_dose the map's maximum
            # replaces dose_max (as petdp prescribe).
            levels = quantise_levels(result.dose, result.evaluation_mask, n_levels=n_levels, method=level_method,
                                     assignment=assignment, dose_low=dose_min,
                                     dose_high=None if mean_dose is not None else dose_max,
                                     min_island_ml=min_island_ml, envelope=envelope_mask)
            rois = dict(levels.rois)
            prescription = levels.level_map
        else:
            rois = {"PTV_PET": result.evaluation_mask}
            prescription = result.dose
    notes += result.notes + ([] if levels is None else levels.notes)
    _report(progress, total - 1, total, steps[-1])

    # Only now, with everything computed, is the scene modified.
    node = volume_node_from_image(prescription, name or f"{pet_node.GetName()}_Rx_{mode}", scene,
                                  node=prescription_node)
    name = node.GetName()
    tag_as_dose(node, pet_node, dose_max)
    description = prescription_description(mode, dose_min, dose_max, result, None if levels is None
                                           else levels.n_levels)
    node.SetAttribute(MODE_ATTRIBUTE, mode)
    node.SetAttribute(DESCRIPTION_ATTRIBUTE, description)
    node.SetAttribute(LEVEL_SEGMENTS_ATTRIBUTE, ",".join(rois))
    continuous = continuous_node
    if mode == "levels" and (keep_continuous or continuous_node is not None):
        continuous = volume_node_from_image(result.dose, f"{name}_continuous", scene, node=continuous_node)
        tag_as_dose(continuous, pet_node, dose_max)
    if level_segmentation is None:
        level_segmentation = new_segmentation_node(f"{name}_levels", scene, reference=grid_node or pet_node)
    for index, (roi_name, mask) in enumerate(rois.items()):
        set_segment_from_mask(level_segmentation, mask, roi_name, _level_colour(index, len(rois)))
    node.SetAndObserveNodeReferenceID(LEVEL_SEGMENTATION_REFERENCE, level_segmentation.GetID())
    row = _prescription_row(name, mode, pet_node.GetName(), target_segment, grid_name, result=result,
                            levels=levels, rois=rois)
    table_node = _upsert(table_node, [row], PRESCRIPTION_COLUMNS, key=("prescription",),
                                   name="Prescriptions", scene=scene)
    return NodePrescription(node, mode, result, levels, level_segmentation, list(rois), rois,
                            continuous if mode == "levels" else None, table_node, notes)


def _level_colour(index: int, count: int) -> tuple[float, float, float]:
    if count <= 1:
        return _LEVEL_COLOURS[0]
    position = index / (count - 1) * (len(_LEVEL_COLOURS) - 1)
    lower = min(int(position), len(_LEVEL_COLOURS) - 2)
    t = position - lower
    a, b = np.asarray(_LEVEL_COLOURS[lower]), np.asarray(_LEVEL_COLOURS[lower + 1])
    return tuple(float(c) for c in (1 - t) * a + t * b)


def tag_as_dose(node, companion, dose_max: float) -> None:
    """Dose attributes for SlicerRT, a dose display, and a place next to ``companion`` in the subject hierarchy.

    SlicerRT treats a scalar volume as dose when it carries ``DicomRtImport.DoseVolume``
    (``vtkSlicerRtCommon::IsDoseVolumeNode``) and reads the dose unit name from the study item of the subject
    hierarchy (``DicomRtImport.DoseUnitName``), which is set to ``Gy`` when the study has none, as SlicerRT's own
    dose engines do.
    """
    node.SetAttribute(UNITS_ATTRIBUTE, Units.GY)
    node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    node.SetAttribute(DOSE_UNIT_NAME_ATTRIBUTE, "GY")
    display = node.GetDisplayNode()
    scene = node.GetScene()
    if display is not None:
        colour = scene.GetNodeByID(DOSE_COLOUR_NODE_ID)
        if colour is not None:
            display.SetAndObserveColorNodeID(colour.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, max(float(dose_max), 1e-3))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None or companion is None:
        return
    companion_item = sh.GetItemByDataNode(companion)
    if not companion_item:
        return
    parent = sh.GetItemParent(companion_item)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(parent, node)
    if sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)
    study = sh.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    if study and not sh.GetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE):
        sh.SetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE, "Gy")


def _prescription_row(name, mode, image_name, target_name, grid_name, *, result: PrescriptionResult,
                      levels: LevelsResult | None, rois: Mapping[str, sitk.Image]) -> dict[str, Any]:
    return {
        "prescription": name, "mode": mode, "image": image_name, "target": target_name, "grid": grid_name,
        "dose_min_Gy": result.dose_low_gy, "dose_max_Gy": result.dose_high_gy, "mapping": result.mapping or "",
        "margin_mm": result.margin_mm, "I_low": _number(result.i_low), "I_high": _number(result.i_high),
        "intensity_units": result.intensity_units or "image units", "target_volume_ml": result.target_volume_ml,
        "evaluation_volume_ml": result.evaluation_volume_ml, "dose_mean_Gy": result.dose_mean_gy,
        "target_mean_dose_Gy": result.target_mean_dose_gy, "boost_volume_ml": _number(result.boost_volume_ml),
        "n_levels": math.nan if levels is None else float(levels.n_levels), "level_segments": ", ".join(rois),
        "rms_level_error_Gy": math.nan if levels is None else levels.rms_error_gy,
        "QF_levels_vs_continuous": math.nan if levels is None else levels.evaluation.qf,
    }


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


# ------------------------------------------------------------------------------------------ DICOM-RT export


def _read_series_files(files: Sequence[str | Path]) -> DicomSeries:
    """Read exactly these files as one image series (through a temporary folder of links or copies)."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} file(s) of the planning CT are missing, e.g. {missing[0]}")
    with tempfile.TemporaryDirectory(prefix="petdp-ct-") as tmp:
        original: dict[Path, Path] = {}
        for n, path in enumerate(paths):
            link = Path(tmp) / f"{n:06d}.dcm"
            try:
                os.symlink(path.resolve(), link)
            except OSError:  # no symbolic links (e.g. Windows without the privilege): copy
                shutil.copyfile(path, link)
            original[link] = path
        series = read_dicom_series(tmp)
        files_back = tuple(original.get(Path(p), Path(p)) for p in series.files)
    directory = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return dataclasses.replace(series, directory=directory, files=files_back, skipped=())


def planning_ct_series(source, *, file_for_instance: Callable[[str], str] | None = None) -> DicomSeries:
    """The planning CT series the DICOM-RT objects refer to (patient, study, frame of reference, slices).

    ``source`` is a folder holding the series (other series and RT objects may be present; the CT series must
    then be the only CT), one of its files, a list of its files, an already read
    :class:`~PETDosePaintingLib.imaging.dicom_series.DicomSeries`, or a CT volume node loaded from DICOM: its
    ``DICOM.instanceUIDs`` attribute (set by Slicer's DICOM scalar volume plugin) lists the slices and
    ``file_for_instance`` maps each SOP Instance UID to its file (inside Slicer:
    ``slicer.dicomDatabase.fileForInstance``).
    """
    if isinstance(source, DicomSeries):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if str(source).strip() in ("", "."):
            raise InputError("choose the planning CT series (its DICOM folder)")
        if not path.exists():
            raise InputError("no such file or directory (planning CT series)", path)
        return read_dicom_series(path, modality="CT") if path.is_dir() else read_dicom_series(path)
    if isinstance(source, (list, tuple)):
        return _read_series_files(source)
    if hasattr(source, "IsA") and source.IsA("vtkMRMLVolumeNode"):
        uids = (source.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE) or "").split()
        if not uids:
            raise InputError(f"volume {source.GetName()!r} was not loaded from DICOM (no "
                             f"{DICOM_INSTANCE_UIDS_ATTRIBUTE} attribute); choose the planning CT's DICOM folder")
        if file_for_instance is None:
            raise InputError(f"volume {source.GetName()!r} lists its DICOM instances, but no DICOM database was given "
                             "to find their files; choose the planning CT's DICOM folder instead")
        files = []
        for uid in uids:
            path = file_for_instance(uid)
            if not path:
                raise InputError(f"the DICOM database has no file for instance {uid} of {source.GetName()!r}; "
                                 "choose the planning CT's DICOM folder instead")
            files.append(path)
        series = _read_series_files(files)
        if set(series.sop_instance_uids) != set(uids):
            raise InputError(f"the files of {source.GetName()!r} do not form one series of its instances")
        return series
    raise InputError(f"unsupported planning CT {source!r}: give a DICOM folder, files, a DicomSeries or a CT "
                     "volume loaded from DICOM")


@dataclass(eq=False)
class RtExport:
    """What :func:`export_dicom_rt` wrote."""

    rtdose_path: Path
    rtplan_path: Path | None
    rtstruct_path: Path | None
    structures: list[str]  #: ROI names written, in order
    frame_of_reference_uid: str  #: the planning CT's, written in every object
    frame_basis: str  #: why the scene's world frame is the CT's DICOM frame
    max_gy: float
    quantisation_error_gy: float
    notes: list[str] = field(default_factory=list)


def _prepare_export_dir(out_dir: Path) -> None:
    """The folder may be new, empty, or a previous export (holding the marker file); anything else is refused."""
    marker = out_dir / EXPORT_MARKER
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError("exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not marker.is_file():
        raise OutputError("is not empty and is not a previous DICOM-RT export of this module (no "
                          f"{EXPORT_MARKER} marker); choose a new or empty folder", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json({"kind": "PETDosePainting DICOM-RT export", "note": "this folder may be overwritten by the next "
                "export"}, marker)


def export_dicom_rt(
    prescription_node,
    level_segmentation,
    ct,
    out_dir: str | Path,
    *,
    segment_names_to_export: Sequence[str] | None = None,
    ct_node=None,
    assume_same_frame: bool = False,
    file_for_instance: Callable[[str], str] | None = None,
    description: str | None = None,
    structure_set_label: str = "PETDP_DP",
    progress: ProgressCallback | None = None,
) -> RtExport:
    """Write a prescription volume as DICOM RT Dose (with its minimal RT Plan) and level segments as an RT
    Structure Set, both in the planning CT's frame of reference (``petdp prescribe --rtdose --rtstruct``).

    Parameters
    ----------
    prescription_node : prescription volume (Gy), e.g. from :func:`prescribe_node`; its grid must be axial
        (the PET or the planning CT grid both are).
    level_segmentation : segmentation with the level segments (``None``: dose only). The segments are exported
        by Slicer onto the planning CT grid (nearest neighbour) and traced on the CT slices.
    ct : the planning CT: a DICOM folder, files, a ``DicomSeries`` or a CT volume loaded from DICOM (with
        ``file_for_instance``); see :func:`planning_ct_series`.
    out_dir : new or empty folder (or a previous export): ``<prescription>_RTDOSE.dcm``,
        ``<prescription>_RTDOSE_plan.dcm`` and ``<segmentation>_RTSTRUCT.dcm``.
    segment_names_to_export : default the level segments recorded on the prescription volume
        (``PETDosePainting.LevelSegments``) that the segmentation holds, else every segment. Empty segments are
        skipped (noted).
    ct_node : the planning CT volume in the scene (implied when ``ct`` is a volume node).
    assume_same_frame : declare that the scene's world coordinates are the planning CT's DICOM frame.
    description : Series Description (default: the one recorded by :func:`prescribe_node`).

    The scene's world frame must be the CT's DICOM frame. That is established when the planning CT volume in
    the scene (``ct_node``, or ``ct`` itself) lies exactly where the series places it, or when the prescription
    lies exactly on the planning CT grid, or by ``assume_same_frame``; otherwise :class:`GeometryError`.
    Everything is computed and checked before anything is written; if writing fails half-way, the files this
    call wrote are removed.
    """
    total = 4
    _report(progress, 0, total, "reading the planning CT")
    if ct_node is None and hasattr(ct, "IsA"):
        ct_node = ct
    series = planning_ct_series(ct, file_for_instance=file_for_instance)
    ct_for = series.identity.frame_of_reference_uid
    _report(progress, 1, total, "preparing the dose")
    dose = image_from_volume_node(prescription_node)
    units = get_units(dose)
    if units != Units.GY:
        raise InputError(f"volume {prescription_node.GetName()!r} is not a dose in Gy (units {units or 'none'}); "
                         "export a prescription volume")
    if ct_node is not None:
        if not same_geometry(_geometry_image(ct_node), series.image, tolerance_mm=1e-3):
            raise GeometryError(f"the planning CT volume {ct_node.GetName()!r} does not lie where the DICOM series "
                                f"{series.series_instance_uid} places it (different grid, or moved by a transform); "
                                "the scene's world frame cannot be taken to be the CT's")
        basis = (f"the planning CT volume {ct_node.GetName()!r} lies exactly where its DICOM series places it, so "
                 "the scene's world coordinates are the CT's frame")
    elif same_geometry(dose, series.image, tolerance_mm=1e-3):
        basis = "the prescription lies exactly on the planning CT grid"
    elif assume_same_frame:
        basis = "the scene's world coordinates are declared to be the planning CT's frame (assume_same_frame)"
    else:
        raise GeometryError(
            "nothing shows that the scene's world coordinates are the planning CT's DICOM frame: compute the "
            "prescription on the planning CT grid, select the planning CT volume loaded from that series, or "
            "declare the frame shared (assume same frame)")
    set_frame_of_reference(dose, ct_for)
    _report(progress, 2, total, "exporting the segments onto the CT grid")
    masks: dict[str, sitk.Image] = {}
    notes: list[str] = [f"frame of reference {ct_for}: {basis}"]
    if level_segmentation is not None:
        available = segment_names(level_segmentation)
        if segment_names_to_export is not None:
            names = list(segment_names_to_export)
        else:
            recorded = (prescription_node.GetAttribute(LEVEL_SEGMENTS_ATTRIBUTE) or "").split(",")
            names = [n for n in recorded if n in available] or available
        for roi in names:
            mask = mask_from_segment(level_segmentation, roi, series.image)
            if not np.any(sitk.GetArrayViewFromImage(mask)):
                notes.append(f"segment {roi!r} is empty on the planning CT grid; not exported")
                continue
            masks[roi] = set_frame_of_reference(mask, ct_for)
        if not masks:
            raise InputError(f"no non-empty segment to export from {level_segmentation.GetName()!r}")
    description = description or prescription_node.GetAttribute(DESCRIPTION_ATTRIBUTE) or \
        prescription_node.GetName()
    description = description[:64]
    _report(progress, 3, total, "writing the DICOM-RT files")
    out_dir = Path(out_dir)
    dose_path = out_dir / f"{safe_file_name(prescription_node.GetName())}_RTDOSE.dcm"
    struct_path = None if not masks else \
        out_dir / f"{safe_file_name(level_segmentation.GetName())}_RTSTRUCT.dcm"
    if any(Path(f).resolve().parent == out_dir.resolve() for f in series.files):
        raise OutputError("is the planning CT's folder; choose another folder for the DICOM-RT objects", out_dir)
    _prepare_export_dir(out_dir)
    written: list[Path] = []
    try:
        exported = write_rtdose(dose, dose_path, series, description=description)
        written += [p for p in (exported.path, exported.plan_path) if p is not None]
        if struct_path is not None:
            write_rtstruct(masks, series, struct_path, interpreted_types=dict.fromkeys(masks, "PTV"),
                           label=structure_set_label, description=description)
            written.append(struct_path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    notes += list(exported.notes)
    return RtExport(exported.path, exported.plan_path, struct_path, list(masks), ct_for, basis, exported.max_gy,
                    exported.quantisation_error_gy, notes)


# ------------------------------------------------------------------------------------------ plan evaluation


@dataclass(eq=False)
class NodePlanEvaluation:
    """What :func:`evaluate_plan_node` produced.

    ``evaluation`` is the library's :class:`~PETDosePaintingLib.dosepainting.plan_evaluation.PlanEvaluation`
    (``quality``: QF, Q95, Q105, Q95_105, Q mean/min/max, the sampled QVH; TCP and EUD of the planned and
    prescribed doses). ``qvh_table_node`` holds the QVH (:data:`QVH_COLUMNS`), plotted by
    ``plot_series_node`` in ``plot_chart_node``; ``table_node`` has one row per evaluation
    (:data:`EVALUATION_COLUMNS`).
    """

    evaluation: PlanEvaluation
    qvh_table_node: Any
    plot_series_node: Any
    plot_chart_node: Any
    table_node: Any
    qf_map_node: Any
    notes: list[str] = field(default_factory=list)

    @property
    def qf(self) -> float:
        return self.evaluation.quality.qf

    @property
    def q95(self) -> float:
        return self.evaluation.quality.q95

    @property
    def q105(self) -> float:
        return self.evaluation.quality.q105


def evaluate_plan_node(
    prescription_node,
    plan_dose_node,
    target: tuple[Any, str] | None = None,
    *,
    q_step: float = DEFAULT_Q_STEP,
    qvh_table_node=None,
    plot_chart_node=None,
    table_node=None,
    qf_map_node=None,
    create_qf_map: bool = False,
    progress: ProgressCallback | None = None,
) -> NodePlanEvaluation:
    """Score a planned dose against a prescription (Vanderstraeten 2006): QF, Q95, Q105, QVH, TCP, EUD.

    Parameters
    ----------
    prescription_node : prescription volume (Gy).
    plan_dose_node : the planned dose (Gy), e.g. an RT Dose loaded by SlicerRT (tagged as dose) or a volume with
        ``PETDosePainting.Units`` = ``Gy``; a volume with other declared units is refused, one without units is
        taken as Gy (noted). A dose on another grid is resampled onto the prescription grid with linear
        interpolation (nodes share Slicer's world frame); every evaluated voxel must lie inside it.
    target : optional ``(segmentation, segment name)``: the evaluation volume (e.g. ``PTV_PET``), exported onto
        the prescription grid; default every voxel with a positive prescription.
    q_step : QVH sampling step (default 0.005).
    qvh_table_node : QVH table to refill (default a new "QVH <plan>" table): columns ``q``, ``volume_fraction``
        (fraction of the evaluation volume with Q >= q), ``volume_ml``.
    plot_chart_node : chart to add the QVH series to (a new "QVH" chart if ``None``); a series of the same
        plan is replaced, others stay (several plans on one chart).
    table_node : evaluation table to add the row to (a new "Plan evaluation" table if ``None``).
    qf_map_node, create_qf_map : write the map of Q - 1 (0 outside the evaluation volume) into this volume, or a
        new one.
    """
    _refuse_input_as_output(qf_map_node, {"prescription": prescription_node, "planned dose": plan_dose_node},
                            "QF map volume")
    total = 3
    _report(progress, 0, total, "reading the doses")
    scene = prescription_node.GetScene()
    prescription = image_from_volume_node(prescription_node)
    units = get_units(prescription)
    if units not in (None, Units.GY):
        raise InputError(f"volume {prescription_node.GetName()!r} holds {units!r} values, not a prescription in Gy")
    planned = image_from_volume_node(plan_dose_node)
    mask = _segment_mask(target, prescription, "evaluation volume")
    notes: list[str] = []
    resampled = not same_geometry(planned, prescription)
    if resampled:
        notes.append(f"{plan_dose_node.GetName()!r} and {prescription_node.GetName()!r} are on different grids and "
                     "taken to share Slicer's world frame (nodes of one scene)")
    dose, note = resample_dose_to_prescription(planned, prescription, assume_same_frame=True, mask=mask)
    if note:
        notes.append("planned dose resampled onto the prescription grid with linear interpolation")
    _report(progress, 1, total, "evaluating")
    evaluation = evaluate_plan(dose, prescription, mask, q_step=q_step)
    notes += evaluation.notes
    _report(progress, 2, total, "writing the results")
    q = evaluation.quality
    plan_name = plan_dose_node.GetName()
    qvh_table_node = qvh_table(q, f"QVH {plan_name}", qvh_table_node, scene)
    series, chart = qvh_plot(qvh_table_node, plan_name, plot_chart_node)
    evaluation_volume = target[1] if target is not None and target[0] is not None and target[1] else \
        "prescription > 0"
    row = {"prescription": prescription_node.GetName(), "plan": plan_name, "evaluation_volume": evaluation_volume,
           "n_voxels": float(q.n_voxels), "volume_ml": q.volume_ml, "QF": q.qf, "Q95": q.q95, "Q105": q.q105,
           "Q95_105": q.q95_105, "Q_mean": q.q_mean, "Q_min": q.q_min, "Q_max": q.q_max,
           "TCP_planned": evaluation.tcp_planned.tcp, "TCP_prescribed": evaluation.tcp_prescribed.tcp,
           "EUD_planned_Gy": evaluation.eud_planned_gy, "EUD_prescribed_Gy": evaluation.eud_prescribed_gy,
           "resampled": "linear" if resampled else "no"}
    table_node = _upsert(table_node, [row], EVALUATION_COLUMNS,
                                   key=("prescription", "plan", "evaluation_volume"), name="Plan evaluation",
                                   scene=scene)
    qf_map = qf_map_node
    if create_qf_map or qf_map_node is not None:
        qf_map = volume_node_from_image(q.qf_map, f"{plan_name}_QF_map", scene, node=qf_map_node)
    return NodePlanEvaluation(evaluation, qvh_table_node, series, chart, table_node, qf_map, notes)


def qvh_table(quality, name: str, table_node=None, scene=None):
    """The QVH of a :class:`~PETDosePaintingLib.dosepainting.plan_evaluation.QualityResult` as a table node
    (columns :data:`QVH_COLUMNS`: ``q``, ``volume_fraction``, ``volume_ml``); refills ``table_node`` if given."""
    fractions = [float(v) for v in quality.qvh_fraction]
    return table_from_columns(
        {"q": [float(v) for v in quality.qvh_q], "volume_fraction": fractions,
         "volume_ml": [v * quality.volume_ml for v in fractions]},
        name, table_node, scene, units={"volume_ml": "mL"}, descriptions=_COLUMN_DESCRIPTIONS)


def qvh_plot(qvh_table_node, series_name: str, chart_node=None, *, colour: Sequence[float] | None = None):
    """A line series of ``volume_fraction`` against ``q`` of a QVH table, in a chart (returns series, chart).

    A series called ``QVH <series_name>`` already in ``chart_node`` is reused (its table is replaced); other
    series of the chart stay, so several plans can be compared on one chart.
    """
    scene = qvh_table_node.GetScene()
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "QVH")
    title = f"QVH {series_name}"
    series = None
    for i in range(chart_node.GetNumberOfPlotSeriesNodes()):
        candidate = chart_node.GetNthPlotSeriesNode(i)
        if candidate is not None and candidate.GetName() == title:
            series = candidate
            break
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", title)
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
        if colour is None:
            colour = _LEVEL_COLOURS[(chart_node.GetNumberOfPlotSeriesNodes() - 1) % len(_LEVEL_COLOURS)]
    series.SetAndObserveTableNodeID(qvh_table_node.GetID())
    series.SetXColumnName("q")
    series.SetYColumnName("volume_fraction")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    if colour is not None:
        series.SetColor(*[float(c) for c in colour[:3]])
    chart_node.SetTitle("Q-volume histogram")
    chart_node.SetXAxisTitle("Q = planned / prescribed dose")
    chart_node.SetYAxisTitle("fraction of the evaluation volume with Q >= q")
    return series, chart_node


# ------------------------------------------------------------------------------------------ tables


def _upsert(table_node, rows, columns, *, key, name, scene):
    return upsert_table_rows(table_node, rows, columns, key=key, name=name, scene=scene,
                             units={c: u for c, u in _COLUMN_UNITS.items() if u}, descriptions=_COLUMN_DESCRIPTIONS)


# ------------------------------------------------------------------------------------------ panel helpers


def level_segment_names(segmentation_node, prefix: str = "PTV_DP_") -> list[str]:
    """Segments named like dose levels (``PTV_DP_7000``...), by increasing dose."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d{{4,}})$")
    found = [(int(m.group(1)), n) for n in segment_names(segmentation_node) if (m := pattern.match(n))]
    return [n for _, n in sorted(found)]


__all__ = [
    "EVALUATION_COLUMNS",
    "HYPOXIA_COLUMNS",
    "MODES",
    "PRESCRIPTION_COLUMNS",
    "QVH_COLUMNS",
    "NodeHypoxicVolume",
    "NodePlanEvaluation",
    "NodePrescription",
    "OperationCancelled",
    "RtExport",
    "evaluate_plan_node",
    "export_dicom_rt",
    "hypoxic_volume_node",
    "level_segment_names",
    "planning_ct_series",
    "prescribe_node",
    "prescription_description",
    "qvh_plot",
    "qvh_table",
    "ratio_map_node",
    "tag_as_dose",
]
