"""Node-level logic behind the GradientSegment and PETDosePainting panels (tested headless).

These functions take and return MRML nodes; the science is in the tier-1 library they call. Sections:

* one click -> a segment by name: :func:`segment_pet_node` (mask only) and :func:`segment_and_quantify`
  (mask, SUVmax/SUVpeak/SUVmean/MTV/TLG, a results table row);
* inputs from nodes: the seed of a markups point list (:func:`seed_ras_from_markups`), the voxel a seed
  lands on (:func:`seed_index_from_ras`), an ROI from a markups ROI, a segment or a labelmap
  (:func:`roi_mask_on_pet`), a CT or MR brought onto the PET grid (:func:`companion_on_pet_grid`);
* the panel's parameter form, built from the registry: :func:`method_parameter_specs`,
  :func:`parse_parameter_text`, :func:`method_parameter_values`;
* several methods on one click plus their consensus (majority vote or STAPLE), with a progress callback
  that can cancel between methods: :func:`compare_methods_on_node`;
* tables: :func:`segment_volume_table`, :func:`table_from_columns`, :func:`table_to_columns`.

Coordinates: seeds are world RAS millimetres (what a markups point or a click gives); a PET under a
linear transform is handled by folding the transform into its geometry (:func:`.volumes.image_from_volume_node`);
Slicer's labelmap import/export places segments correctly under the segmentation's own transform.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from ..comparison.metrics import compare_masks
from ..errors import InputError, PETDPError, ProcessingError
from ..imaging.image import (
    SUV_UNITS,
    Units,
    check_same_geometry,
    get_units,
    image_from_array,
    mask_volume_ml,
    physical_grid,
    point_to_index,
    same_geometry,
    set_units,
)
from ..imaging.resample import resample_to_reference
from ..segmentation.common import SegmentationResult
from ..segmentation.consensus import RULES, combine_masks, consensus_seed_component
from ..segmentation.quantify import GTVQuantification, quantify_result
from ..segmentation.registry import METHODS, get_method, run_method
from .segmentations import mask_from_segment, new_segmentation_node, segment_names, set_segment_from_mask
from .tables import columns_from_rows, table_from_columns, table_to_columns, upsert_table_rows
from .volumes import UNITS_ATTRIBUTE, image_from_volume_node, node_ijk_to_world_ras, ras_to_lps_point

#: Colours given to method results, cycled in order (RGB 0..1).
RESULT_COLOURS = ((0.90, 0.25, 0.20), (0.20, 0.70, 0.30), (0.25, 0.45, 0.90), (0.95, 0.75, 0.10),
                  (0.70, 0.30, 0.80), (0.10, 0.75, 0.80), (0.90, 0.50, 0.70), (0.55, 0.55, 0.55))
#: Colour of consensus segments (white-ish, so it stands out over the coloured method results).
CONSENSUS_COLOUR = (0.95, 0.95, 0.95)

#: Parameters the panel sets from its own widgets (scanner FWHM slider, CT/MR selectors), not from the form.
#: ``ct_interpolation`` too: the CT is always brought onto the PET grid first (:func:`companion_on_pet_grid`).
PANEL_MANAGED_PARAMETERS = frozenset({"fwhm_mm", "ct", "mr", "ct_interpolation"})

#: Columns of the results table written by :func:`segment_and_quantify` (a contract: keep them stable).
#: Uptake columns are in the PET's units (SUV for SUV images; the ``units`` column says which).
RESULT_COLUMNS = ("segmentation", "segment", "method", "units", "SUVmax", "SUVpeak", "SUVmean", "MTV_ml", "TLG",
                  "threshold", "background", "background_definition", "seed_RAS")
#: Columns of the comparison table written by :func:`compare_methods_on_node` (a contract: keep them stable).
COMPARISON_COLUMNS = ("method", "segment", "status", "MTV_ml", "SUVmax", "SUVpeak", "SUVmean", "TLG", "threshold",
                      "background", "dice_vs_consensus", "hd95_mm_vs_consensus", "volume_error_pct_vs_consensus",
                      "staple_sensitivity", "staple_specificity")
_COLUMN_UNITS = {"MTV_ml": "mL", "hd95_mm_vs_consensus": "mm", "volume_error_pct_vs_consensus": "%"}
_COLUMN_DESCRIPTIONS = {
    "SUVmax": "highest voxel value in the GTV (PET units)",
    "SUVpeak": "highest mean in a 12 mm sphere centred in the GTV (PERCIST moving sphere; PET units)",
    "SUVmean": "mean over the GTV voxels (PET units)",
    "MTV_ml": "metabolic tumour volume: voxel count x voxel volume on the PET grid",
    "TLG": "total lesion glycolysis = SUVmean x MTV (PET units x mL)",
    "threshold": "intensity threshold the method applied (PET units; empty for methods without one)",
    "background": "background level the method used (PET units)",
    "dice_vs_consensus": "Dice coefficient with the consensus segment",
    "hd95_mm_vs_consensus": "95th-percentile Hausdorff distance to the consensus (surfel definition)",
    "volume_error_pct_vs_consensus": "100 (V - V_consensus) / V_consensus",
    "staple_sensitivity": "STAPLE's estimated sensitivity of the method (STAPLE rule only)",
    "staple_specificity": "STAPLE's estimated specificity within the box around the union (STAPLE rule only)",
}


class OperationCancelled(Exception):
    """The user cancelled a long operation through the progress callback; the scene was not modified."""


# --------------------------------------------------------------------------------- one click -> segment


def segment_pet_node(
    pet_node,
    seed_ras: Sequence[float] | None,
    method: str = "threshold",
    *,
    segmentation_node=None,
    segment_name: str | None = None,
    roi_node=None,
    **parameters: Any,
) -> tuple[Any, SegmentationResult]:
    """Segment a PET volume node from a seed in RAS and write the result into a segment by name.

    Parameters
    ----------
    pet_node : scalar volume node of the PET (SUV for methods that need SUV).
    seed_ras : the click in RAS millimetres (world coordinates).
    method : a name of :mod:`PETDosePaintingLib.segmentation.registry`.
    segmentation_node : where to write; a new node "GTV" referencing the PET grid if ``None``.
    segment_name : segment to create or replace (others are untouched); default ``"GTV_<method>"``.
    roi_node : optional ROI restricting the search: a labelmap volume node on the PET grid, a markups ROI
        node, or a ``(segmentation node, segment name)`` pair (see :func:`roi_mask_on_pet`).
    parameters : method parameters (see the registry).

    Returns the segmentation node and the library's result (mask, threshold, ...).
    """
    scene = pet_node.GetScene()
    image = image_from_volume_node(pet_node)
    roi = roi_mask_on_pet(roi_node, image, scene)
    seed_lps = None if seed_ras is None else ras_to_lps_point(seed_ras).tolist()
    result = run_method(method, image, seed_lps, roi, **parameters)
    segmentation_node, _, _ = _write_result_segment(pet_node, result, segmentation_node,
                                                    segment_name or f"GTV_{method}")
    return segmentation_node, result


@dataclass(eq=False)
class NodeSegmentation:
    """What :func:`segment_and_quantify` produced.

    Attributes
    ----------
    segmentation_node : the segmentation written into (created if none was given).
    segment_name, segment_id : the segment holding the result (IDs are random in Slicer; use the name).
    result : the library's :class:`~PETDosePaintingLib.segmentation.common.SegmentationResult` (mask on
        the PET grid, threshold, background, details such as the gradient method's dendrogram).
    quantification : :class:`~PETDosePaintingLib.segmentation.quantify.GTVQuantification` of the mask.
    table_node : the results table (one row per segmentation and segment; see :data:`RESULT_COLUMNS`).
    notes : remarks for the user (e.g. the scanner FWHM was not used by this method).

    Unpacks as ``(segmentation_node, result)``, like :func:`segment_pet_node`.
    """

    segmentation_node: Any
    segment_name: str
    segment_id: str
    result: SegmentationResult
    quantification: GTVQuantification
    table_node: Any
    notes: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter((self.segmentation_node, self.result))


def segment_and_quantify(
    pet_node,
    seed_ras: Sequence[float] | None,
    method: str = "gradient",
    *,
    segmentation_node=None,
    segment_name: str | None = None,
    roi=None,
    ct_node=None,
    mr_node=None,
    fwhm_mm: float | None = None,
    table_node=None,
    **parameters: Any,
) -> NodeSegmentation:
    """One click -> a segment by name, its quantification and a row of the results table.

    Parameters
    ----------
    pet_node : PET scalar volume node. Its units come from the ``PETDosePainting.Units`` attribute; without
        it the uptake columns are in the image's own units (methods needing SUV then refuse).
    seed_ras : the click, world RAS mm (``None`` only with an ROI: the seed is then the ROI's hottest voxel).
    method : registry name (default ``"gradient"``).
    segmentation_node, segment_name : where to write (default: a new node "GTV", segment ``GTV_<method>``);
        only that segment is replaced, the others are untouched.
    roi : optional ROI, see :func:`roi_mask_on_pet`.
    ct_node, mr_node : optional CT (HU) and MR volume nodes, given on the PET grid to methods that take
        ``ct`` / ``mr`` (:func:`companion_on_pet_grid`); a method that needs a CT refuses to run without.
    fwhm_mm : scanner resolution (effective image FWHM, mm), passed to the methods that model it
        (``gradient``, ``iterative``); others ignore it (recorded in ``notes``).
    table_node : results table to add the row to (a new "GTV results" table if ``None``); an existing row
        for the same segmentation and segment is replaced.
    parameters : the method's own parameters (library names, e.g. ``fraction=0.41``); parameters the
        method does not take are refused.
    """
    scene = pet_node.GetScene()
    image = image_from_volume_node(pet_node)
    roi_mask = roi_mask_on_pet(roi, image, scene)
    info = get_method(method)
    given, notes = _shared_inputs(info, image, ct_node=ct_node, mr_node=mr_node, fwhm_mm=fwhm_mm)
    clash = sorted(set(given) & set(parameters))
    if clash:
        raise InputError(f"give {', '.join(clash)} through the dedicated argument, not as a method parameter")
    seed_lps = None if seed_ras is None else ras_to_lps_point(seed_ras).tolist()
    result = run_method(method, image, seed_lps, roi_mask, **parameters, **given)
    quantification = _quantify(image, result)
    segmentation_node, name, sid = _write_result_segment(pet_node, result, segmentation_node,
                                                         segment_name or f"GTV_{method}")
    row = _result_row(segmentation_node.GetName(), name, method, image=image, result=result, q=quantification,
                      seed_ras=seed_ras)
    table_node = _upsert_rows(table_node, [row], RESULT_COLUMNS, key=("segmentation", "segment"),
                              name="GTV results", scene=scene)
    return NodeSegmentation(segmentation_node, name, sid, result, quantification, table_node, notes)


def _shared_inputs(info, image: sitk.Image, *, ct_node, mr_node, fwhm_mm) -> tuple[dict[str, Any], list[str]]:
    """The panel-managed inputs (FWHM, CT, MR) this method takes, and notes about those it ignores."""
    given: dict[str, Any] = {}
    notes: list[str] = []
    if fwhm_mm is not None:
        if "fwhm_mm" in info.parameters:
            given["fwhm_mm"] = float(fwhm_mm)
        else:
            notes.append(f"method {info.name!r} does not model the scanner resolution; FWHM not used")
    if ct_node is not None:
        if "ct" in info.parameters:
            given["ct"] = companion_on_pet_grid(ct_node, image, Units.HU)
        else:
            notes.append(f"method {info.name!r} does not use a CT; CT not used")
    elif info.needs_ct:
        raise InputError(f"method {info.name!r} needs a CT volume: select one")
    if mr_node is not None:
        if "mr" in info.parameters:
            given["mr"] = companion_on_pet_grid(mr_node, image, None)
        else:
            notes.append(f"method {info.name!r} does not use an MR; MR not used")
    return given, notes


def _write_result_segment(pet_node, result: SegmentationResult, segmentation_node, name: str,
                          colour: Sequence[float] | None = None) -> tuple[Any, str, str]:
    if segmentation_node is None:
        segmentation_node = new_segmentation_node("GTV", pet_node.GetScene(), reference=pet_node)
    if colour is None:
        existing = segment_names(segmentation_node)
        colour = RESULT_COLOURS[(existing.index(name) if name in existing else len(existing)) % len(RESULT_COLOURS)]
    sid = set_segment_from_mask(segmentation_node, result.mask, name, colour)
    return segmentation_node, name, sid


def _quantify(image: sitk.Image, result: SegmentationResult) -> GTVQuantification:
    """Quantify a result's mask; SUV units are checked when the PET declares them, else the image units are used."""
    units = get_units(image)
    return quantify_result(image, result, require_suv=units in SUV_UNITS)


def _number(value: Any) -> float:
    """A table number: ``None`` becomes NaN (an empty numeric cell)."""
    return math.nan if value is None else float(value)


def _result_row(segmentation: str, segment: str, method: str, *, image: sitk.Image, result: SegmentationResult,
                q: GTVQuantification, seed_ras: Sequence[float] | None) -> dict[str, Any]:
    units = get_units(image)
    seed = "" if seed_ras is None else ", ".join(f"{float(c):.2f}" for c in seed_ras)
    return {"segmentation": segmentation, "segment": segment, "method": method,
            "units": units or "image units (no PETDosePainting.Units attribute)",
            "SUVmax": q.suv_max, "SUVpeak": q.suv_peak, "SUVmean": q.suv_mean, "MTV_ml": q.mtv_ml, "TLG": q.tlg,
            "threshold": _number(result.threshold), "background": _number(result.background),
            "background_definition": q.background_definition or "", "seed_RAS": seed}


# ------------------------------------------------------------------------------------------ inputs


def seed_ras_from_markups(markups_node, index: int = 0) -> tuple[float, float, float]:
    """World RAS position (mm) of control point ``index`` of a markups node (the seed of a panel run)."""
    if markups_node is None:
        raise InputError("no seed point list: place a point in the lesion with the Markups toolbar")
    count = markups_node.GetNumberOfControlPoints()
    if count == 0:
        raise InputError(f"point list {markups_node.GetName()!r} has no point: place the seed in the lesion")
    if not 0 <= index < count:
        raise InputError(f"point list {markups_node.GetName()!r} has {count} point(s); there is no point {index + 1}")
    position = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(index, position)
    return (float(position[0]), float(position[1]), float(position[2]))


def seed_index_from_ras(volume_node, seed_ras: Sequence[float]) -> tuple[int, int, int]:
    """Voxel index (i, j, k) of ``volume_node`` that contains the world RAS point (as the methods see it).

    Uses the same rounding as the library (:func:`~PETDosePaintingLib.imaging.image.point_to_index`);
    :class:`InputError` if the point lies outside the volume.
    """
    matrix = node_ijk_to_world_ras(volume_node)
    matrix[:3, :] = np.diag([-1.0, -1.0, 1.0]) @ matrix[:3, :]  # IJK -> LPS
    dims = volume_node.GetImageData().GetDimensions()
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    geometry = sitk.Image([int(d) for d in dims], sitk.sitkUInt8)
    geometry.SetSpacing(spacing.tolist())
    geometry.SetOrigin(matrix[:3, 3].tolist())
    geometry.SetDirection((matrix[:3, :3] / spacing[None, :]).ravel().tolist())
    return point_to_index(geometry, ras_to_lps_point(seed_ras).tolist(), "seed")


def roi_mask_on_pet(roi, pet_image: sitk.Image, scene=None) -> sitk.Image | None:
    """The search ROI as a uint8 mask on the PET grid, from any of the ROIs the panel offers.

    ``roi`` may be ``None`` (no ROI), a SimpleITK mask on the PET grid, a labelmap volume node on the PET
    grid, a markups ROI node (PET voxels whose centre lies inside the box, honouring the ROI's orientation,
    parent transforms and *inside-out* flag), or a ``(segmentation node, segment name)`` pair (the segment
    exported onto the PET grid by Slicer, i.e. nearest neighbour on its binary labelmap). An empty ROI is
    refused (:class:`InputError`); a labelmap on another grid gives :class:`GeometryError`.
    """
    if roi is None:
        return None
    if isinstance(roi, tuple):
        seg_node, name = roi
        if seg_node is None or not name:
            return None
        mask = mask_from_segment(seg_node, name, pet_image)
        what = f"ROI segment {name!r}"
    elif isinstance(roi, sitk.Image):
        check_same_geometry(pet_image, roi, "PET image", "ROI mask")
        mask = roi
        what = "ROI mask"
    elif roi.IsA("vtkMRMLMarkupsROINode"):
        mask = _markups_roi_mask(roi, pet_image)
        what = f"markups ROI {roi.GetName()!r}"
    elif roi.IsA("vtkMRMLVolumeNode"):
        mask = image_from_volume_node(roi)
        check_same_geometry(pet_image, mask, "PET image", f"ROI labelmap {roi.GetName()!r}")
        what = f"ROI labelmap {roi.GetName()!r}"
    else:
        raise InputError(f"unsupported ROI node {roi.GetClassName()}: use a markups ROI, a segment or a labelmap")
    array = sitk.GetArrayViewFromImage(mask) != 0
    if not array.any():
        raise InputError(f"the {what} contains no PET voxel")
    out = image_from_array(array, pet_image)
    return set_units(out, Units.LABEL)


def _markups_roi_mask(roi_node, pet_image: sitk.Image) -> sitk.Image:
    """PET voxels whose centre lies in a markups ROI box (vectorised over the box's bounding index range)."""
    o2w = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToWorldMatrix())  # box axes, centre, parent transforms
    half = 0.5 * np.asarray(roi_node.GetSize(), dtype=float)
    # Bounding index range of the 8 box corners (RAS -> LPS -> continuous index), then exact test per voxel.
    corners_obj = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0]
                            for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners_lps = (o2w @ corners_obj.T).T[:, :3] * np.array([-1.0, -1.0, 1.0])
    cont = np.array([pet_image.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners_lps])
    size = np.asarray(pet_image.GetSize())
    lo = np.clip(np.floor(cont.min(axis=0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(cont.max(axis=0)).astype(int) + 2, 0, size)
    inside = np.zeros(tuple(size[::-1]), dtype=bool)
    if np.all(hi > lo):
        x, y, z = physical_grid(_grid_box(pet_image, lo, hi))
        ras = np.stack([-x.ravel(), -y.ravel(), z.ravel(), np.ones(x.size)])
        obj = np.linalg.solve(o2w, ras)[:3]
        in_box = np.all(np.abs(obj) <= half[:, None] + 1e-9, axis=0).reshape(x.shape)
        inside[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = in_box
    if roi_node.GetInsideOut():
        inside = ~inside
    return image_from_array(inside, pet_image)


def _grid_box(image: sitk.Image, lo: np.ndarray, hi: np.ndarray) -> sitk.Image:
    """An empty image with the geometry of the index box [lo, hi) of ``image`` (i, j, k)."""
    box = sitk.Image([int(v) for v in (hi - lo)], sitk.sitkUInt8)
    box.SetSpacing(image.GetSpacing())
    box.SetDirection(image.GetDirection())
    box.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return box


def companion_on_pet_grid(node, pet_image: sitk.Image, units: str | None) -> sitk.Image:
    """A CT or MR volume node as an image on the PET grid (explicit linear resampling when grids differ).

    PET and CT/MR are assumed to share the frame of reference (the node's parent transforms are folded
    in). Outside the companion image the value is -1000 HU for a CT, 0 otherwise. ``units`` (e.g. ``HU``)
    is recorded when the node has no ``PETDosePainting.Units`` attribute; a different declared unit is
    refused. Same resampling as ``petdp segment --ct``.
    """
    image = image_from_volume_node(node)
    declared = node.GetAttribute(UNITS_ATTRIBUTE)
    if units is not None:
        if declared and declared != units:
            raise InputError(f"volume {node.GetName()!r} is declared in {declared!r}; this input must be in {units}")
        set_units(image, units)
    if same_geometry(image, pet_image):
        out = sitk.Cast(image, sitk.sitkFloat32)
        out.CopyInformation(pet_image)
    else:
        out = resample_to_reference(sitk.Cast(image, sitk.sitkFloat32), pet_image, interpolation="linear",
                                    default_value=-1000.0 if units == Units.HU else 0.0)
    if units is not None:
        set_units(out, units)
    return out


# ----------------------------------------------------------------------------- the parameter form


@dataclass(frozen=True)
class ParameterSpec:
    """One method parameter as the panel's form shows it (built from the registry, never hand-listed).

    Attributes
    ----------
    name : library keyword (e.g. ``roi_radius_mm``; the suffix gives the unit).
    kind : ``"float"``, ``"int"``, ``"bool"``, ``"str"``, ``"list"`` (comma-separated values) or ``"value"``
        (a number or a word).
    default : the function's default; ``None`` means the method chooses (see the description).
    known_default : False when the function forwards the parameter (``**kwargs``) and the default lives
        in the function it calls.
    description : the parameter's entry in the method's docstring (reST markup removed), or else the
        docstring paragraph that mentions it.
    """

    name: str
    kind: str
    default: Any
    known_default: bool
    description: str

    @property
    def default_text(self) -> str:
        """How the default reads in the form: the value, or ``method default`` (the method decides)."""
        if not self.known_default or self.default is None:
            return "method default"
        if isinstance(self.default, (tuple, list)):
            return ", ".join(str(v) for v in self.default)
        return str(self.default)


def _annotation_kind(annotation: Any) -> str | None:
    """Form kind of a parameter annotation (a string under ``from __future__ import annotations``).

    ``None`` for what cannot be typed into a form (images, mappings, callables).
    """
    if annotation is inspect.Parameter.empty:
        return "value"
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if any(word in text for word in ("Image", "dict", "Callable")):
        return None
    if text.startswith("bool"):
        kind = "bool"
    elif any(word in text for word in ("Sequence", "tuple", "list")):
        kind = "list"
    else:
        parts = frozenset(p.strip() for p in text.split("|")) - {"None"}
        kind = {frozenset({"float"}): "float", frozenset({"int"}): "int", frozenset({"str"}): "str"}.get(parts, "value")
    return kind


_DOC_ENTRY = re.compile(r"^(\s*)([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s+:\s+(.*)$")


def _parameter_docs(function: Callable[..., Any]) -> dict[str, str]:
    """``{name: description}`` from the numpydoc ``Parameters`` section of ``function``'s docstring."""
    doc = inspect.getdoc(function) or ""
    lines = doc.splitlines()
    try:
        start = next(n for n, line in enumerate(lines) if line.strip() == "Parameters") + 2
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    for line in lines[start:]:
        if not line.strip() or line.strip().startswith("---"):
            break
        match = _DOC_ENTRY.match(line)
        if match and not match.group(1):
            names = [n.strip() for n in match.group(2).split(",")]
            for name in names:
                out[name] = match.group(3).strip()
        elif names:
            for name in names:
                out[name] += " " + line.strip()
    return {k: _plain(v) for k, v in out.items()}


def _mention(function: Callable[..., Any], name: str) -> str:
    """The docstring paragraph or bullet that mentions ``name`` (for methods documenting parameters in prose)."""
    doc = inspect.getdoc(function) or ""
    chunks = re.split(r"\n\s*\n|\n(?=\s*[*-] )", doc)
    pattern = re.compile(rf"``{re.escape(name)}(=[^`]*)?``")
    for chunk in chunks:
        if pattern.search(chunk):
            return _plain(re.sub(r"\s+", " ", chunk.strip().lstrip("*- ")))
    return ""


def _plain(text: str) -> str:
    """Docstring text without reST roles and literals."""
    text = re.sub(r":\w+:`~?\.?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def method_parameter_specs(method: str, exclude: Sequence[str] = tuple(PANEL_MANAGED_PARAMETERS)
                           ) -> list[ParameterSpec]:
    """The form rows of ``method``: every registry parameter that can be typed in, in registry order.

    Kinds and defaults come from the method function's signature, descriptions from its docstring (its
    ``Parameters`` entry, else the paragraph that mentions the parameter). A parameter the function only
    forwards (``**kwargs``) takes its kind from another registered method that declares it and shows
    ``method default``; a parameter its own docstring does not describe borrows the description of
    another method (prefixed "as in <method>"). Images (``ct``, ``mr``, ...) and mappings are left out,
    and so are ``exclude`` (default: :data:`PANEL_MANAGED_PARAMETERS`).
    """
    info = get_method(method)
    signature = inspect.signature(info.function)
    docs = _parameter_docs(info.function)
    specs = []
    for name in info.parameters:
        if name in exclude:
            continue
        parameter = signature.parameters.get(name)
        if parameter is not None:
            kind = _annotation_kind(parameter.annotation)
            default = None if parameter.default is inspect.Parameter.empty else parameter.default
            known = parameter.default is not inspect.Parameter.empty
        else:
            kind, default, known = _borrowed_kind(name), None, False
        description = docs.get(name) or _mention(info.function, name) or _borrowed_description(name, method)
        if kind is not None:
            specs.append(ParameterSpec(name, kind, default, known, description))
    return specs


def _borrowed_kind(name: str) -> str | None:
    """Form kind of ``name`` in the first registered method whose function declares it."""
    for info in METHODS.values():
        parameter = inspect.signature(info.function).parameters.get(name)
        if parameter is not None:
            return _annotation_kind(parameter.annotation)
    return "value"


def _borrowed_description(name: str, method: str) -> str:
    """``as in <other>: <its description of name>`` from the first other method documenting ``name``."""
    for other, info in METHODS.items():
        text = _parameter_docs(info.function).get(name) if other != method else None
        if text:
            return f"as in {other}: {text}"
    return ""


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _scalar(text: str) -> Any:
    """A number if the text reads as one, else the text (for ``value`` parameters and list items)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _read_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("expected true or false")


def _read_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return value


def _read_list(text: str) -> tuple:
    if text.startswith(("[", "(")):
        return tuple(json.loads("[" + text[1:-1] + "]"))
    return tuple(_scalar(part.strip()) for part in text.split(",") if part.strip())


_READERS: dict[str, Callable[[str], Any]] = {"bool": _read_bool, "int": int, "float": _read_float, "list": _read_list,
                                             "value": _scalar, "str": str}


def parse_parameter_text(spec: ParameterSpec, text: str | None) -> Any:
    """The value typed into the form for ``spec``; ``None`` (use the method's default) for empty text.

    Numbers must be finite; booleans read true/false, yes/no, on/off, 1/0; lists are comma-separated
    (or JSON). :class:`InputError` names the parameter and the problem.
    """
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    try:
        return _READERS[spec.kind](text)
    except ValueError as error:
        raise InputError(f"parameter {spec.name}: cannot read {text!r} as {spec.kind} ({error})") from None


def method_parameter_values(method: str, texts: Mapping[str, str]) -> dict[str, Any]:
    """The values typed into ``method``'s form (``{name: text}``), parsed; empty and stale entries are dropped."""
    specs = {s.name: s for s in method_parameter_specs(method)}
    values = {}
    for name, text in texts.items():
        if name in specs:
            value = parse_parameter_text(specs[name], text)
            if value is not None:
                values[name] = value
    return values


# ------------------------------------------------------------------------------ comparing methods


@dataclass(eq=False)
class MethodComparison:
    """What :func:`compare_methods_on_node` produced.

    ``results`` and ``quantifications`` hold the methods that ran (in order), ``failures`` the methods that
    refused this lesion (``{name: message}``). ``consensus`` is the consensus mask on the PET grid and
    ``consensus_details`` what the rule computed (k, STAPLE sensitivities and specificities...).
    """

    segmentation_node: Any
    segment_names: dict[str, str]
    consensus_segment: str
    results: dict[str, SegmentationResult]
    quantifications: dict[str, GTVQuantification]
    failures: dict[str, str]
    consensus: sitk.Image
    consensus_quantification: GTVQuantification
    consensus_details: dict[str, Any]
    table_node: Any
    notes: list[str] = field(default_factory=list)


ProgressCallback = Callable[[int, int, str], "bool | None"]


def compare_methods_on_node(
    pet_node,
    seed_ras: Sequence[float] | None,
    methods: Sequence[str] | None = None,
    *,
    rule: str = "majority",
    k: int | None = None,
    margin_mm: float = 10.0,
    segmentation_node=None,
    prefix: str = "GTV_",
    roi=None,
    ct_node=None,
    mr_node=None,
    fwhm_mm: float | None = None,
    method_parameters: Mapping[str, Mapping[str, Any]] | None = None,
    table_node=None,
    progress: ProgressCallback | None = None,
) -> MethodComparison:
    """Run several methods on one click, add their consensus, write segments and a comparison table.

    Parameters
    ----------
    methods : registry names (default: the consensus defaults of
        :data:`~PETDosePaintingLib.segmentation.consensus.DEFAULT_METHODS` that are registered and need no
        CT unless one is given); ``consensus`` itself is not allowed.
    rule, k, margin_mm : the consensus (:func:`~PETDosePaintingLib.segmentation.consensus.combine_masks`):
        ``"majority"`` (k of N, default ceil(N/2)), ``"mv2"``, ``"mv3"`` or ``"staple"``. The consensus is
        then restricted to the component at the seed with holes filled, exactly as the registry's
        ``consensus`` method does.
    segmentation_node, prefix : segments ``<prefix><method>`` and ``<prefix>consensus_<rule>`` are created
        or replaced; every other segment is untouched. A method that fails leaves its segment as it was.
    roi, ct_node, mr_node, fwhm_mm : as in :func:`segment_and_quantify`, for every method that takes them.
    method_parameters : ``{method: {parameter: value}}`` for individual methods.
    table_node : comparison table to refill (a new "GTV method comparison" table if ``None``), one row per
        method and one for the consensus (:data:`COMPARISON_COLUMNS`).
    progress : ``progress(done, total, label)`` is called before each method and before the consensus;
        returning ``False`` cancels (:class:`OperationCancelled`) and nothing is written to the scene.

    A method that refuses the lesion (library error) is reported in ``failures`` and in the table; at
    least two must succeed.
    """
    from ..segmentation.consensus import DEFAULT_METHODS

    if rule not in RULES:
        raise InputError(f"unknown consensus rule {rule!r}; use one of {', '.join(RULES)}")
    if methods is None:
        methods = [m for m in DEFAULT_METHODS if m in METHODS and (ct_node is not None or not METHODS[m].needs_ct)]
    names = list(dict.fromkeys(methods))
    for name in names:
        get_method(name)
    if "consensus" in names:
        raise InputError("'consensus' is computed from the compared methods; do not list it among them")
    if len(names) < 2:
        raise InputError(f"comparing needs at least two methods, got {len(names)}")
    method_parameters = {m: dict(p) for m, p in (method_parameters or {}).items()}
    stray = sorted(set(method_parameters) - set(names))
    if stray:
        raise InputError(f"parameters given for {', '.join(stray)}, which is not among the compared methods")
    scene = pet_node.GetScene()
    total = len(names) + 1
    image = image_from_volume_node(pet_node)
    roi_mask = roi_mask_on_pet(roi, image, scene)
    seed_lps = None if seed_ras is None else ras_to_lps_point(seed_ras).tolist()
    if seed_lps is not None:
        point_to_index(image, seed_lps, "seed")  # a click outside the PET fails once, not per method
    companions = {"ct": None if ct_node is None else companion_on_pet_grid(ct_node, image, Units.HU),
                  "mr": None if mr_node is None else companion_on_pet_grid(mr_node, image, None)}
    results: dict[str, SegmentationResult] = {}
    failures: dict[str, str] = {}
    notes: list[str] = []
    for done, name in enumerate(names):
        _report(progress, done, total, name)
        info = METHODS[name]
        given = dict(method_parameters.get(name, {}))
        if fwhm_mm is not None and "fwhm_mm" in info.parameters:
            given["fwhm_mm"] = float(fwhm_mm)
        for key, value in companions.items():
            if value is not None and key in info.parameters:
                given[key] = value
        if info.needs_ct and companions["ct"] is None:
            failures[name] = "needs a CT volume"
            continue
        try:
            result = run_method(name, image, seed_lps, roi_mask, **given)
        except PETDPError as error:
            failures[name] = str(error)
            continue
        if np.any(sitk.GetArrayViewFromImage(result.mask)):
            results[name] = result
        else:
            failures[name] = "empty segmentation"
    _report(progress, len(names), total, f"consensus ({rule})")
    if fwhm_mm is not None:
        unused = [n for n in names if "fwhm_mm" not in METHODS[n].parameters]
        if unused:
            notes.append(f"scanner FWHM not used by {', '.join(unused)}")
    if len(results) < 2:
        detail = "; ".join(f"{n}: {m}" for n, m in failures.items())
        raise InputError(f"a consensus needs at least two methods that succeed; got {len(results)} ({detail})")
    done_names = list(results)
    masks = [results[n].mask for n in done_names]
    combined, consensus_info = combine_masks(masks, rule, k=k, margin_mm=margin_mm)
    votes = np.sum([sitk.GetArrayViewFromImage(m) > 0 for m in masks], axis=0)
    consensus_array = sitk.GetArrayFromImage(combined) > 0
    if not consensus_array.any():
        raise ProcessingError(f"the {rule} consensus of {', '.join(done_names)} is empty")
    consensus_array = consensus_seed_component(consensus_array, votes, image, seed_lps)
    consensus = image_from_array(consensus_array, image)
    consensus_result = SegmentationResult(method="consensus", mask=consensus,
                                          parameters={"methods": done_names, "rule": rule, "k": k},
                                          details=consensus_info)
    quantifications = {n: _quantify(image, results[n]) for n in done_names}
    consensus_q = _quantify(image, consensus_result)
    # Only now, with everything computed, is the scene modified.
    segment_of = {}
    for name in done_names:
        colour = RESULT_COLOURS[names.index(name) % len(RESULT_COLOURS)]
        segmentation_node, segment_of[name], _ = _write_result_segment(
            pet_node, results[name], segmentation_node, f"{prefix}{name}", colour)
    consensus_name = f"{prefix}consensus_{rule}"
    segmentation_node, _, _ = _write_result_segment(pet_node, consensus_result, segmentation_node,
                                                    consensus_name, CONSENSUS_COLOUR)
    rows = _comparison_rows(names, results, quantifications=quantifications, failures=failures,
                            segment_of=segment_of, consensus=consensus, consensus_name=consensus_name,
                            consensus_q=consensus_q, consensus_info=consensus_info, rule=rule)
    table_node = _replace_table(table_node, rows, COMPARISON_COLUMNS, "GTV method comparison", scene)
    return MethodComparison(segmentation_node, segment_of, consensus_name, results, quantifications, failures,
                            consensus, consensus_q, consensus_info, table_node, notes)


def _report(progress: ProgressCallback | None, done: int, total: int, label: str) -> None:
    if progress is not None and progress(done, total, label) is False:
        raise OperationCancelled(f"cancelled before {label}")


def _comparison_rows(names, results, *, quantifications, failures, segment_of, consensus, consensus_name,
                     consensus_q, consensus_info, rule) -> list[dict[str, Any]]:
    sensitivity = dict(zip(list(results), consensus_info.get("sensitivity", []), strict=False))
    specificity = dict(zip(list(results), consensus_info.get("specificity", []), strict=False))
    rows = []
    for name in names:
        row: dict[str, Any] = {"method": name, "segment": segment_of.get(name, "")}
        if name in results:
            q = quantifications[name]
            metrics = compare_masks(results[name].mask, consensus, mask_name=name, reference_name="consensus",
                                    grid="reference", allow_empty=True)
            row.update(status="ok", MTV_ml=q.mtv_ml, SUVmax=q.suv_max, SUVpeak=q.suv_peak, SUVmean=q.suv_mean,
                       TLG=q.tlg, threshold=_number(results[name].threshold),
                       background=_number(results[name].background), dice_vs_consensus=_number(metrics.dice),
                       hd95_mm_vs_consensus=_number(metrics.hd95_mm),
                       volume_error_pct_vs_consensus=_number(metrics.volume_error_pct),
                       staple_sensitivity=_number(sensitivity.get(name)),
                       staple_specificity=_number(specificity.get(name)))
        else:
            row["status"] = f"failed: {failures[name]}"
        rows.append(row)
    rows.append({"method": f"consensus ({rule})", "segment": consensus_name, "status": "ok",
                 "MTV_ml": consensus_q.mtv_ml, "SUVmax": consensus_q.suv_max, "SUVpeak": consensus_q.suv_peak,
                 "SUVmean": consensus_q.suv_mean, "TLG": consensus_q.tlg, "dice_vs_consensus": 1.0,
                 "hd95_mm_vs_consensus": 0.0, "volume_error_pct_vs_consensus": 0.0})
    return rows


# ------------------------------------------------------------------------------------------ tables


def segment_volume_table(segmentation_node, reference, table_node=None, scene=None):
    """A table node with one row per segment: name and volume (mL) as a binary labelmap on ``reference``.

    ``reference`` is a volume node or a SimpleITK image; its grid is the stated volume definition
    (voxel count x voxel volume), written into the table's ``definition`` column.
    """
    scene = scene or segmentation_node.GetScene()
    ref_image = reference if isinstance(reference, sitk.Image) else image_from_volume_node(reference)
    names = segment_names(segmentation_node)
    volumes = [mask_volume_ml(mask_from_segment(segmentation_node, n, ref_image)) for n in names]
    spacing = "x".join(f"{s:.3g}" for s in ref_image.GetSpacing())
    return table_from_columns(
        {"segment": names, "volume_ml": volumes,
         "definition": [f"binary labelmap on a {spacing} mm grid"] * len(names)},
        "Segment volumes", table_node, scene)


def _replace_table(table_node, rows, columns, name, scene):
    return table_from_columns(columns_from_rows(rows, columns), name, table_node, scene, units=_COLUMN_UNITS,
                              descriptions=_COLUMN_DESCRIPTIONS)


def _upsert_rows(table_node, rows, columns, *, key, name, scene):
    """Add ``rows`` to a table with ``columns``, replacing rows with the same ``key`` values."""
    return upsert_table_rows(table_node, rows, columns, key=key, name=name, scene=scene, units=_COLUMN_UNITS,
                             descriptions=_COLUMN_DESCRIPTIONS)


# ------------------------------------------------------------------------------------------ hygiene


__all__ = [
    "COMPARISON_COLUMNS",
    "PANEL_MANAGED_PARAMETERS",
    "RESULT_COLUMNS",
    "MethodComparison",
    "NodeSegmentation",
    "OperationCancelled",
    "ParameterSpec",
    "companion_on_pet_grid",
    "compare_methods_on_node",
    "method_parameter_specs",
    "method_parameter_values",
    "parse_parameter_text",
    "roi_mask_on_pet",
    "seed_index_from_ras",
    "seed_ras_from_markups",
    "segment_and_quantify",
    "segment_pet_node",
    "segment_volume_table",
    "table_from_columns",
    "table_to_columns",
]
