"""DICOM RT Structure Set: write masks as planar contours a TPS imports, and rasterise any structure set.

Writing (:func:`write_rtstruct`), RT Structure Set IOD (PS3.3 A.19; reference notes ``dose_painting.md``
§7.2):

* Patient and General Study copied from the planning CT, RT Series (C.8.8.1), General Equipment
  (C.7.5.1), Frame of Reference (C.7.4.1, the CT's UID), Structure Set (C.8.8.5) with Referenced Frame of
  Reference Sequence -> RT Referenced Study Sequence -> RT Referenced Series Sequence -> Contour Image
  Sequence listing **every** CT SOP Instance UID, Structure Set ROI Sequence (ROI Number, Referenced Frame
  of Reference UID, ROI Name, ROI Generation Algorithm), ROI Contour (C.8.8.6) with ROI Display Color and
  CLOSED_PLANAR contours, RT ROI Observations (C.8.8.8) with RT ROI Interpreted Type, SOP Common.
* Contours lie **on the CT slices** (at each slice's own position) and each carries a Contour Image
  Sequence referencing its CT slice (Eclipse and Monaco are strict here, §7.2).
* Contours are traced at voxel-boundary precision: marching squares (:func:`skimage.measure.find_contours`,
  level 0.5) on the slice up-sampled ``upsample`` times by nearest neighbour. The vertices lie on the
  voxel edges except at corners, which are cut by 1/(2 x upsample) voxel; rasterising the polygons back
  by voxel centres (the rule of :func:`read_rtstruct`, plastimatch and dicompyler-core) returns the mask
  exactly, and the polygon area differs from the voxel-count area by at most 1/(8 upsample^2) voxel per
  corner. Vertices on a straight line between their neighbours are removed (exactly; no simplification).
* **Holes and islands**: every boundary is written as its own CLOSED_PLANAR contour: an island is one
  contour, a hole inside it another contour (the inner boundary), an island inside the hole a third, and
  so on; outer boundaries run counter-clockwise and holes clockwise in the (i, j) voxel index frame. The
  contours of a plane are meant to be combined by the even-odd (XOR) rule, as dicompyler-core reads them
  (``dvhcalc.calculate_plane_histogram``) and as planning systems are reported to (not verified here
  against a TPS). PS3.3 C.8.8.6.3 (2024) names two encodings of an excluded inner
  part: the "keyhole" (one contour with a zero-width channel) and the XOR technique with the newer type
  CLOSEDPLANAR_XOR, which older readers do not know; separate CLOSED_PLANAR contours combined by XOR is
  the common practice between them. A reader that ORs the contours instead fills the holes (plastimatch
  does by default; ``plastimatch convert --xor-contours`` reads them as meant).
* ROI names: TG-263 style (e.g. ``PTV_DP_7000``); at most ``max_name_length`` (16) characters, the TG-263
  limit chosen because some planning systems do not accept longer structure names (a truncated name could
  make two levels collide); unique ignoring case. RT ROI Interpreted Type
  defaults from the name (PTV*, CTV*, GTV*, External/Body -> EXTERNAL, otherwise ORGAN).
* Deterministic UIDs from the study UID and a SHA-256 of the content (as :mod:`.rtdose`).
* Explicit VR Little Endian, unless a contour's Contour Data exceeds the 65534-byte limit of a DS value
  in explicit VR (PS3.5 7.1.2); the file is then written Implicit VR Little Endian (the DICOM default
  transfer syntax) so no contour is simplified.

Reading (:func:`load_rtstruct`, :func:`read_rtstruct`) is robust to real-world files:

* only CLOSED_PLANAR (and CLOSEDPLANAR_XOR) contours are used; POINT, OPEN_PLANAR and OPEN_NONPLANAR
  contours are ignored with a note, as are contours with fewer than 3 points;
* the Contour Image Sequence is not needed (references to instances that are not present are fine):
  the contour coordinates alone place the polygons;
* **planes**: contours of an ROI are grouped into planes by their position along the target grid's slice
  normal (contours within ``plane_tolerance_mm`` are one plane); a contour not parallel to the grid's
  slices (spread along the normal above the tolerance) is ignored with a note;
* **even-odd rule**: within one plane, a point is inside the ROI when it lies inside an odd number of
  that plane's contours (XOR of the polygon fills), which handles holes written as separate contours,
  several islands per slice, and keyhole contours alike;
* **slab (end-cap) convention**: each contour plane stands for a slab of thickness ``t`` centred on it,
  ``t`` = the smallest distance between consecutive planes of the ROI (as dicompyler-core), or the target
  grid's slice spacing for a single-plane ROI. Each slice of the target grid takes the contours of the
  plane whose half-open slab ``[z - t/2, z + t/2)`` contains the slice centre: a nearest-plane assignment
  with tolerance ``t/2`` that works when contours do not fall exactly on the target's slices, and on
  target grids finer or coarser than the contour spacing. The same convention gives the ROI volume
  (sum of plane areas x ``t``) used by :mod:`PETDosePaintingLib.dosepainting.dvh`;
* in-plane, a voxel is inside when its centre is (``subsample=1``, default), or, with ``subsample=s``,
  when at least half of its s x s sub-voxel centres are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, ImplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds
from skimage.measure import find_contours

from ..errors import DicomError, GeometryError, InputError, OutputError
from .dicom_series import DicomSeries
from .image import (
    DESCRIPTION_KEY,
    FRAME_OF_REFERENCE_KEY,
    Units,
    get_frame_of_reference,
    require_binary_mask,
    same_geometry,
    set_units,
)
from .io import atomic_path
from .resample import resample_mask
from .rtdose import (
    RT_STRUCTURE_SET_STORAGE,
    check_text,
    creation_datetime,
    digest,
    ensure_not_reference,
    read_rt_dataset,
    reference_frame_of_reference,
    rt_base_dataset,
)

#: RT ROI Interpreted Type defined terms (PS3.3 C.8.8.8, Table C.8-43).
INTERPRETED_TYPES = (
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "OAR", "BOLUS", "AVOIDANCE", "ORGAN",
    "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY",
    "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
)
#: Contour Geometric Types read as closed polygons combined by the even-odd (XOR) rule (PS3.3 C.8.8.6.1;
#: CLOSEDPLANAR_XOR is the explicit XOR type of recent editions, C.8.8.6.3).
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")
#: ROI Generation Algorithm defined terms (PS3.3 C.8.8.5).
GENERATION_ALGORITHMS = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
#: Referenced SOP Class of the RT Referenced Study Sequence item (PS3.3 C.8.8.5): the (retired) Detached
#: Study Management SOP Class, as the standard's attribute description still names it.
DETACHED_STUDY_MANAGEMENT = UID("1.2.840.10008.3.1.2.3.1")
RTSTRUCT_SERIES_NUMBER = 72
#: Largest value length of a short-VR (DS) element in Explicit VR (PS3.5 7.1.2).
_SHORT_VR_MAX = 0xFFFE
_CONTOUR_DATA = Tag(0x3006, 0x0050)
_PALETTE = ((255, 0, 0), (0, 128, 255), (255, 160, 0), (160, 0, 255), (0, 200, 120), (255, 0, 160),
            (128, 128, 0), (0, 200, 200), (200, 100, 50), (100, 100, 255))
_TYPE_COLOURS = {"EXTERNAL": (0, 255, 0)}


# --------------------------------------------------------------------------------------------------------------
# Data read from a structure set
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class RoiContours:
    """One ROI of a structure set: its closed planar contours in LPS mm."""

    number: int  #: ROI Number
    name: str  #: ROI Name (made unique with `` (ROI n)`` when the file repeats a name)
    frame_of_reference_uid: str  #: Referenced Frame of Reference UID of the ROI ("" if absent)
    interpreted_type: str  #: RT ROI Interpreted Type ("" if absent)
    colour: tuple[int, int, int] | None  #: ROI Display Color
    contours: tuple[np.ndarray, ...]  #: CLOSED_PLANAR contours, each ``(n, 3)`` LPS mm, n >= 3
    notes: tuple[str, ...] = ()  #: contours ignored and why


@dataclass(frozen=True, eq=False)
class StructureSet:
    """The ROIs of an RT Structure Set file (:func:`load_rtstruct`)."""

    path: Path
    label: str
    frame_of_reference_uids: tuple[str, ...]  #: from the Referenced Frame of Reference Sequence
    referenced_series_uids: tuple[str, ...]
    referenced_sop_instance_uids: tuple[str, ...]  #: every Contour Image Sequence entry of that sequence
    rois: tuple[RoiContours, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rois)

    def select(self, names: Sequence[str] | None = None) -> list[RoiContours]:
        """The ROIs with these names (all when ``None``); an unknown name raises, listing the ROIs."""
        if names is None:
            return list(self.rois)
        by_name = {r.name: r for r in self.rois}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputError(f"unknown ROI name(s) {', '.join(repr(n) for n in unknown)}; the structure set "
                             f"holds: {', '.join(repr(n) for n in self.names) or 'no ROIs'}", self.path)
        return [by_name[n] for n in dict.fromkeys(names)]


@dataclass(frozen=True, eq=False)
class ContourPlane:
    """The contours of one ROI that lie in one slice plane of a grid, in that grid's index frame."""

    position_mm: float  #: position along the grid's k axis (continuous k x slice spacing)
    k: float  #: continuous k index of the plane
    polygons: tuple[np.ndarray, ...]  #: each ``(n, 2)`` continuous (i, j) indices


def load_rtstruct(path: str | Path) -> StructureSet:
    """Read the ROIs and their closed planar contours from an RT Structure Set file (no rasterisation)."""
    path = Path(path)
    ds = read_rt_dataset(path)
    modality = str(ds.get("Modality", "")).upper()
    if modality != "RTSTRUCT" and ds.get("SOPClassUID") != RT_STRUCTURE_SET_STORAGE:
        raise DicomError(f"is not an RT Structure Set (Modality {modality or 'missing'})", path)
    notes: list[str] = []
    fors, series, sops = [], [], []
    for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        uid = str(item.get("FrameOfReferenceUID", "") or "").strip()
        if uid:
            fors.append(uid)
        for study in item.get("RTReferencedStudySequence", []) or []:
            for ser in study.get("RTReferencedSeriesSequence", []) or []:
                series.append(str(ser.get("SeriesInstanceUID", "") or "").strip())
                sops += [str(c.get("ReferencedSOPInstanceUID", "")).strip()
                         for c in ser.get("ContourImageSequence", []) or []]
    top_for = str(ds.get("FrameOfReferenceUID", "") or "").strip()
    if top_for and top_for not in fors:
        fors.append(top_for)

    info: dict[int, dict] = {}
    for item in ds.get("StructureSetROISequence", []) or []:
        number = int(item.ROINumber)
        info[number] = {"name": str(item.get("ROIName", "") or "").strip() or f"ROI {number}",
                        "for": str(item.get("ReferencedFrameOfReferenceUID", "") or "").strip(),
                        "type": "", "colour": None, "contours": [], "notes": []}
    for obs in ds.get("RTROIObservationsSequence", []) or []:
        number = int(obs.get("ReferencedROINumber", -1))
        if number in info:
            info[number]["type"] = str(obs.get("RTROIInterpretedType", "") or "").strip()
    skipped: dict[str, int] = {}
    for item in ds.get("ROIContourSequence", []) or []:
        number = int(item.get("ReferencedROINumber", -1))
        if number not in info:
            notes.append(f"ROI Contour Sequence item for ROI number {number}, which the Structure Set ROI Sequence "
                         "does not define: ignored")
            continue
        entry = info[number]
        colour = item.get("ROIDisplayColor")
        if colour is not None and len(colour) == 3:
            entry["colour"] = tuple(int(c) for c in colour)
        for contour in item.get("ContourSequence", []) or []:
            kind = str(contour.get("ContourGeometricType", "") or "").strip().upper()
            if kind not in CLOSED_TYPES:
                skipped[kind or "untyped"] = skipped.get(kind or "untyped", 0) + 1
                entry["notes"].append(f"{kind or 'untyped'} contour ignored (only CLOSED_PLANAR contours enclose "
                                      "a volume)")
                continue
            try:
                points = _contour_values(contour)
            except (TypeError, ValueError) as exc:
                raise DicomError(f"ROI {entry['name']!r} has malformed Contour Data", path) from exc
            if points.size % 3 or not np.all(np.isfinite(points)):
                raise DicomError(f"ROI {entry['name']!r} has Contour Data whose length {points.size} is not a "
                                 "multiple of 3, or non-finite values", path)
            points = points.reshape(-1, 3)
            if len(points) >= 2 and np.array_equal(points[0], points[-1]):
                points = points[:-1]  # some writers repeat the first point
            if len(points) < 3:
                entry["notes"].append(f"closed contour with {len(points)} point(s) ignored")
                continue
            entry["contours"].append(points)
    for kind, count in skipped.items():
        notes.append(f"{count} {kind} contour(s) ignored (only CLOSED_PLANAR contours enclose a volume)")

    rois = []
    seen: dict[str, int] = {}
    for name in (e["name"] for e in info.values()):
        seen[name] = seen.get(name, 0) + 1
    for number, e in info.items():
        name = e["name"]
        if seen[name] > 1:
            notes.append(f"ROI name {name!r} is used by several ROIs; this one is called '{name} (ROI {number})'")
            name = f"{name} (ROI {number})"
        rois.append(RoiContours(number=number, name=name, frame_of_reference_uid=e["for"] or (fors[0] if
                                len(fors) == 1 else ""), interpreted_type=e["type"], colour=e["colour"],
                                contours=tuple(e["contours"]), notes=tuple(dict.fromkeys(e["notes"]))))
    return StructureSet(path=path, label=str(ds.get("StructureSetLabel", "") or ""),
                        frame_of_reference_uids=tuple(dict.fromkeys(fors)), referenced_series_uids=tuple(series),
                        referenced_sop_instance_uids=tuple(sops), rois=tuple(rois), notes=tuple(notes))


def _contour_values(contour: Dataset) -> np.ndarray:
    """Contour Data (3006,0050) as float64, parsed from the raw bytes when pydicom has not decoded them yet
    (decoding each DS value through pydicom is ~10 times slower on large structure sets)."""
    element = contour.get_item(_CONTOUR_DATA) if _CONTOUR_DATA in contour else None
    if element is None:
        return np.zeros(0)
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        tokens = value.decode("ascii").replace("\\", " ").split()
        return np.array(tokens, dtype=np.float64)
    if value is None or value == "":
        return np.zeros(0)
    items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return np.array([float(v) for v in items], dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------
# Geometry: contours -> planes of a grid -> rasterised slices
# --------------------------------------------------------------------------------------------------------------

def physical_to_index(points: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """Continuous (i, j, k) indices of ``(n, 3)`` LPS points on ``grid`` (any orientation)."""
    matrix = np.reshape(grid.GetDirection(), (3, 3)) * np.asarray(grid.GetSpacing())[None, :]
    return np.linalg.solve(matrix, (np.asarray(points, dtype=np.float64) - np.asarray(grid.GetOrigin())).T).T


def contour_planes(roi: RoiContours, grid: sitk.Image, *, plane_tolerance_mm: float = 0.05
                   ) -> tuple[list[ContourPlane], float | None, list[str]]:
    """Group an ROI's contours into planes of ``grid`` (see the module docstring).

    Returns (planes sorted along k, slab thickness in mm = smallest distance between consecutive planes or
    ``None`` for fewer than two planes, notes). Contours not parallel to the grid's slices are dropped with a
    note.
    """
    dz = float(grid.GetSpacing()[2])
    notes: list[str] = []
    entries = []
    tilted = 0
    for points in roi.contours:
        idx = physical_to_index(points, grid)
        spread = (idx[:, 2].max() - idx[:, 2].min()) * dz
        if spread > plane_tolerance_mm:
            tilted += 1
            continue
        k = float(idx[:, 2].mean())
        entries.append((k * dz, k, idx[:, :2]))
    if tilted:
        notes.append(f"ROI {roi.name!r}: {tilted} contour(s) not parallel to the grid's slices (spread along the "
                     f"slice normal > {plane_tolerance_mm:g} mm) ignored")
    entries.sort(key=lambda e: e[0])
    planes: list[ContourPlane] = []
    group: list = []
    for entry in entries:
        if group and entry[0] - group[0][0] > plane_tolerance_mm:
            planes.append(_plane(group))
            group = []
        group.append(entry)
    if group:
        planes.append(_plane(group))
    thickness = float(np.diff([p.position_mm for p in planes]).min()) if len(planes) > 1 else None
    return planes, thickness, notes


def _plane(group: list) -> ContourPlane:
    position = float(np.mean([g[0] for g in group]))
    k = float(np.mean([g[1] for g in group]))
    return ContourPlane(position_mm=position, k=k, polygons=tuple(g[2] for g in group))


def rasterise_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int], subsample: int = 1,
                       offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Even-odd fill of polygons given in continuous (i, j) voxel indices, on a (sub-sampled) lattice.

    The lattice has ``shape`` (rows, columns) points; point (a, b) sits at the voxel index
    ``j = (a + offset[0] + 0.5) / subsample - 0.5``, ``i = (b + offset[1] + 0.5) / subsample - 0.5`` (with
    ``subsample=1`` and no offset: the voxel centres). A point is inside when a ray from it towards -i
    crosses the edges of all the polygons an odd number of times: the even-odd rule over all contours at
    once, which equals the XOR of the individual polygon fills. Vectorised scan-line fill: the crossings of
    every edge with every lattice row are computed at once (an edge counts for the rows ``r`` with
    ``min(y0, y1) <= r < max(y0, y1)``, so a vertex on a row is counted once), then a cumulative XOR
    along each row. :func:`skimage.draw.polygon` gives the same interior but tests every lattice point
    against every edge, which is too slow for body outlines on sub-sampled grids.
    """
    nrows, ncols = (int(n) for n in shape)
    rows_all, toggles_all = [], []
    for poly in polygons:
        y = (np.asarray(poly[:, 1], dtype=np.float64) + 0.5) * subsample - 0.5 - offset[0]
        x = (np.asarray(poly[:, 0], dtype=np.float64) + 0.5) * subsample - 0.5 - offset[1]
        y1, x1 = np.roll(y, -1), np.roll(x, -1)
        first = np.maximum(np.ceil(np.minimum(y, y1)), 0)
        last = np.minimum(np.ceil(np.maximum(y, y1)) - 1, nrows - 1)
        counts = np.maximum(last - first + 1, 0).astype(np.int64)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(y.size), counts)
        row = first[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
        cross = x[edge] + (row - y[edge]) * (x1[edge] - x[edge]) / (y1[edge] - y[edge])
        rows_all.append(row.astype(np.int64))
        toggles_all.append(np.clip(np.floor(cross) + 1, 0, ncols).astype(np.int64))
    if not rows_all:
        return np.zeros((nrows, ncols), dtype=bool)
    flat = np.concatenate(rows_all) * (ncols + 1) + np.concatenate(toggles_all)
    parity = (np.bincount(flat, minlength=nrows * (ncols + 1)) % 2).astype(np.uint8).reshape(nrows, ncols + 1)
    return np.bitwise_xor.accumulate(parity, axis=1)[:, :ncols].astype(bool)


def slab_assignment(plane_positions: np.ndarray, thickness: float, slice_positions: np.ndarray,
                    eps_mm: float = 1e-3) -> np.ndarray:
    """For each slice position, the index of the plane whose half-open slab ``[p - t/2, p + t/2)`` holds it,
    or -1. Positions in mm along the same axis; ``eps_mm`` absorbs the rounding of written coordinates."""
    lower = plane_positions - thickness / 2.0 - eps_mm
    idx = np.searchsorted(lower, slice_positions, side="right") - 1
    ok = idx >= 0
    ok[ok] = slice_positions[ok] < plane_positions[idx[ok]] + thickness / 2.0 - eps_mm
    return np.where(ok, idx, -1)


def _reference_grid(reference: sitk.Image | DicomSeries) -> tuple[sitk.Image, str | None]:
    if isinstance(reference, DicomSeries):
        return reference.image, reference.identity.frame_of_reference_uid or None
    if not isinstance(reference, sitk.Image):
        raise InputError(f"the reference must be a SimpleITK image or a DicomSeries, got {type(reference).__name__}")
    if reference.GetDimension() != 3:
        raise InputError(f"the reference grid must be 3-D, got {reference.GetDimension()}-D")
    return reference, get_frame_of_reference(reference)


def check_frames_of_reference(rois: Sequence[RoiContours], grid_for: str | None, what: str,
                              path: Path) -> list[str]:
    """Raise :class:`GeometryError` if an ROI's frame of reference differs from ``grid_for``."""
    differing = [r for r in rois if r.frame_of_reference_uid and grid_for and r.frame_of_reference_uid != grid_for]
    if differing:
        raise GeometryError(f"ROI(s) {', '.join(repr(r.name) for r in differing)} are in the frame of reference "
                            f"{differing[0].frame_of_reference_uid} but {what} is in {grid_for}; register and "
                            "resample first", path)
    if grid_for is None:
        return [f"{what} records no frame of reference; the structure set's could not be checked against it"]
    return []


def read_rtstruct(
    path: str | Path,
    reference_image: sitk.Image | DicomSeries,
    roi_names: Sequence[str] | None = None,
    *,
    subsample: int = 1,
    plane_tolerance_mm: float = 0.05,
) -> dict[str, sitk.Image]:
    """Rasterise ROIs of an RT Structure Set onto the grid of ``reference_image``.

    Parameters
    ----------
    path:
        The RT Structure Set file.
    reference_image:
        Any 3-D image (the CT the structure set refers to, a dose grid, a PET...) or a
        :class:`~.dicom_series.DicomSeries`; only its grid is used. Its slices must be parallel to the
        contour planes (e.g. axial contours on an axial grid). If it records a frame of reference
        (``"0020|0052"``, or the series identity), ROIs in another frame are refused.
    roi_names:
        ROIs to rasterise (default: all). Unknown names raise :class:`InputError` listing the ROIs.
    subsample:
        1 (default): a voxel is inside when its centre is; s > 1: when at least half of its s x s in-plane
        sub-voxel centres are (area-fraction rule).
    plane_tolerance_mm:
        Contours within this distance along the slice normal form one plane (default 0.05 mm).

    Returns ``{ROI name: uint8 0/1 mask}`` on the reference grid, with units ``label``, the ROI's frame of
    reference under ``"0020|0052"`` and notes (ignored contours, planes outside the grid) under
    ``"PETDP_Notes"``. Slab and even-odd conventions: see the module docstring.
    """
    if int(subsample) != subsample or subsample < 1:
        raise InputError(f"subsample must be a positive integer, got {subsample!r}")
    subsample = int(subsample)
    structure = load_rtstruct(path)
    grid, grid_for = _reference_grid(reference_image)
    rois = structure.select(roi_names)
    general = check_frames_of_reference(rois, grid_for, "the reference image", structure.path)
    size = grid.GetSize()
    dz = float(grid.GetSpacing()[2])
    slice_positions = np.arange(size[2], dtype=np.float64) * dz
    out: dict[str, sitk.Image] = {}
    for roi in rois:
        planes, thickness, notes = contour_planes(roi, grid, plane_tolerance_mm=plane_tolerance_mm)
        notes = [*general, *roi.notes, *notes]
        mask = np.zeros(size[::-1], dtype=np.uint8)
        if planes:
            t = thickness if thickness is not None else dz
            positions = np.array([p.position_mm for p in planes])
            chosen = slab_assignment(positions, t, slice_positions)
            used = set(chosen[chosen >= 0].tolist())
            outside = [p for p in planes if not -0.5 <= p.k <= size[2] - 0.5]
            if outside:
                notes.append(f"ROI {roi.name!r}: {len(outside)} contour plane(s) outside the grid's slices")
            missed = len(planes) - len(used) - len(outside)
            if missed > 0:
                notes.append(f"ROI {roi.name!r}: {missed} contour plane(s) fall between the grid's slices (the grid "
                             f"slices, {dz:g} mm apart, are coarser than the contours, {t:g} mm apart)")
            clipped = False
            for k in np.flatnonzero(chosen >= 0):
                plane = planes[chosen[k]]
                allpts = np.vstack(plane.polygons)
                clipped |= bool(allpts.min(axis=0).min() < -0.5 or allpts[:, 0].max() > size[0] - 0.5
                                or allpts[:, 1].max() > size[1] - 0.5)
                fine = rasterise_polygons(plane.polygons, (size[1] * subsample, size[0] * subsample), subsample)
                if subsample > 1:
                    fraction = fine.reshape(size[1], subsample, size[0], subsample).mean(axis=(1, 3))
                    mask[k] = fraction >= 0.5
                else:
                    mask[k] = fine
            if clipped:
                notes.append(f"ROI {roi.name!r} extends beyond the grid in-plane; the part outside is not in the "
                             "mask")
        else:
            notes.append(f"ROI {roi.name!r} has no closed planar contours usable on this grid: the mask is empty")
        image = sitk.GetImageFromArray(mask)
        image.CopyInformation(grid)
        set_units(image, Units.LABEL)
        if roi.frame_of_reference_uid or grid_for:
            image.SetMetaData(FRAME_OF_REFERENCE_KEY, roi.frame_of_reference_uid or grid_for)
        image.SetMetaData(DESCRIPTION_KEY, roi.name)
        if notes:
            image.SetMetaData(NOTES_KEY, " | ".join(dict.fromkeys(notes)))
        out[roi.name] = image
    return out


#: Metadata key of the notes :func:`read_rtstruct` attaches to each mask.
NOTES_KEY = "PETDP_Notes"


# --------------------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------------------

def default_interpreted_type(name: str) -> str:
    """RT ROI Interpreted Type guessed from a TG-263-style name: PTV*, CTV*, GTV*, External/Body/Skin ->
    EXTERNAL, anything else ORGAN."""
    upper = name.strip().upper()
    for prefix in ("PTV", "CTV", "GTV"):
        if upper.startswith(prefix):
            return prefix
    if upper in ("EXTERNAL", "BODY", "SKIN", "OUTER CONTOUR") or upper.startswith("EXTERNAL"):
        return "EXTERNAL"
    return "ORGAN"


def mask_contours(mask_slice: np.ndarray, upsample: int = 4) -> list[np.ndarray]:
    """Closed contours (each ``(n, 2)`` continuous (i, j) voxel indices, first point not repeated) tracing
    the voxel boundary of a 2-D boolean ``[j, i]`` slice; see the module docstring."""
    rows = np.flatnonzero(mask_slice.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask_slice.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    crop = np.pad(mask_slice[r0:r1 + 1, c0:c1 + 1], 1).astype(np.float32)
    up = np.repeat(np.repeat(crop, upsample, axis=0), upsample, axis=1)
    out = []
    for traced in find_contours(up, 0.5, fully_connected="low", positive_orientation="high"):
        ring = traced[:-1] if np.array_equal(traced[0], traced[-1]) else traced
        # find_contours(positive_orientation="high") runs clockwise around high values in (i, j) (shoelace
        # area < 0); reversed, outer boundaries are counter-clockwise and holes clockwise.
        contour = _drop_collinear(ring[::-1])
        if len(contour) < 3:
            continue
        j = (contour[:, 0] + 0.5) / upsample - 0.5 + (r0 - 1)
        i = (contour[:, 1] + 0.5) / upsample - 0.5 + (c0 - 1)
        out.append(np.column_stack([i, j]))
    return out


def _drop_collinear(poly: np.ndarray) -> np.ndarray:
    """The closed polygon without the vertices that lie on the straight line through their neighbours."""
    before = np.roll(poly, 1, axis=0)
    after = np.roll(poly, -1, axis=0)
    cross = (poly[:, 0] - before[:, 0]) * (after[:, 1] - poly[:, 1]) - \
        (poly[:, 1] - before[:, 1]) * (after[:, 0] - poly[:, 0])
    keep = np.abs(cross) > 1e-9
    return poly[keep] if keep.sum() >= 3 else poly


def _safe_masks(masks: Mapping[str, sitk.Image], reference: DicomSeries, ct_for: str,
                max_name_length: int) -> dict[str, np.ndarray]:
    if not masks:
        raise InputError("no masks given for the RT Structure Set")
    seen: dict[str, str] = {}
    arrays = {}
    for name, given in masks.items():
        mask = given
        check_text(name, "ROI name", max_name_length)
        if not name.strip() or name != name.strip():
            raise InputError(f"ROI name {name!r} is empty or has leading/trailing spaces")
        if name.upper() in seen:
            raise InputError(f"ROI names {seen[name.upper()]!r} and {name!r} differ only in case; TPS treat them as "
                             "the same structure")
        seen[name.upper()] = name
        if not isinstance(mask, sitk.Image) or mask.GetDimension() != 3:
            raise InputError(f"mask {name!r} must be a 3-D SimpleITK image")
        mask_for = get_frame_of_reference(mask)
        if mask_for is not None and mask_for != ct_for:
            raise GeometryError(f"mask {name!r} is in the frame of reference {mask_for} but the planning CT is in "
                                f"{ct_for}; register and resample it into the CT's frame first")
        require_binary_mask(mask, f"mask {name!r}")
        if not same_geometry(mask, reference.image, tolerance_mm=1e-3):
            kji = np.argwhere(sitk.GetArrayViewFromImage(mask))
            matrix = np.reshape(mask.GetDirection(), (3, 3)) * np.asarray(mask.GetSpacing())[None, :]
            centres = np.asarray(mask.GetOrigin()) + kji[:, ::-1] @ matrix.T
            idx = physical_to_index(centres, reference.image)
            outside = np.any((idx < -0.5) | (idx > np.asarray(reference.image.GetSize()) - 0.5), axis=1)
            if outside.any():
                raise GeometryError(f"{int(outside.sum())} voxel(s) of mask {name!r} lie outside the planning CT; "
                                    "a structure must lie within the CT it is drawn on")
            mask = resample_mask(mask, reference.image)
            if not np.any(sitk.GetArrayViewFromImage(mask)):
                raise GeometryError(f"mask {name!r} has no voxel left on the planning CT grid after nearest-"
                                    "neighbour resampling (it is thinner than the CT voxels)")
        arrays[name] = sitk.GetArrayFromImage(mask).astype(bool)
    return arrays


def write_rtstruct(
    masks: Mapping[str, sitk.Image],
    reference_series: DicomSeries,
    out_path: str | Path,
    *,
    interpreted_types: Mapping[str, str] | None = None,
    colours: Mapping[str, Sequence[int]] | None = None,
    label: str = "PETDP",
    generation_algorithm: str = "AUTOMATIC",
    description: str = "",
    upsample: int = 4,
    max_name_length: int = 16,
) -> Path:
    """Write binary masks as an RT Structure Set on the planning CT (see the module docstring).

    Parameters
    ----------
    masks:
        ``{ROI name: binary mask}``, in the order the ROIs are numbered. A mask on another grid is resampled
        onto the CT grid by nearest neighbour (:func:`.resample.resample_mask`); a mask recording another
        frame of reference, an empty mask, or one with voxels outside the CT is refused.
    reference_series:
        The planning CT as read by :func:`.dicom_series.read_dicom_series` (its slices and SOP Instance UIDs).
        Any image series works (PET or MR for research archives), but a TPS needs the structures on the
        planning CT.
    out_path:
        The ``.dcm`` file to write (atomically).
    interpreted_types:
        ``{ROI name: RT ROI Interpreted Type}`` (:data:`INTERPRETED_TYPES`); missing names get
        :func:`default_interpreted_type`.
    colours:
        ``{ROI name: (r, g, b)}`` 0-255 ROI Display Color; missing names get a palette colour.
    label:
        Structure Set Label (SH, at most 16 characters).
    generation_algorithm:
        ROI Generation Algorithm: AUTOMATIC (default), SEMIAUTOMATIC or MANUAL.
    description:
        Series Description and Structure Set Description (LO, at most 64 characters).
    upsample:
        Up-sampling factor of the contour tracing (default 4: corners cut by 1/8 voxel).
    max_name_length:
        Longest ROI name accepted (default 16, the TG-263 limit for TPS compatibility; DICOM allows 64).

    Returns the path written.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".dcm":
        raise OutputError("an RT Structure Set file must end in .dcm", out_path)
    ensure_not_reference(out_path, reference_series)
    label = check_text(label, "label", 16)
    if not label.strip():
        raise InputError("label (Structure Set Label, Type 1) must not be empty")
    description = check_text(description, "description")
    if generation_algorithm not in GENERATION_ALGORITHMS:
        raise InputError(f"generation_algorithm must be one of {', '.join(GENERATION_ALGORITHMS)}, "
                         f"got {generation_algorithm!r}")
    if int(upsample) != upsample or upsample < 1:
        raise InputError(f"upsample must be a positive integer, got {upsample!r}")
    ct_for = reference_frame_of_reference(reference_series)
    interpreted_types = dict(interpreted_types or {})
    colours = dict(colours or {})
    for what, given in (("interpreted_types", interpreted_types), ("colours", colours)):
        unknown = set(given) - set(masks)
        if unknown:
            raise InputError(f"{what} names ROI(s) that are not among the masks: {', '.join(sorted(unknown))}")
    arrays = _safe_masks(masks, reference_series, ct_for, max_name_length)
    types = {}
    for name in arrays:
        kind = interpreted_types.get(name, default_interpreted_type(name))
        if kind not in INTERPRETED_TYPES:
            raise InputError(f"RT ROI Interpreted Type {kind!r} of ROI {name!r} is not a DICOM defined term "
                             f"({', '.join(INTERPRETED_TYPES)})")
        types[name] = kind
    rgb = {}
    for n, name in enumerate(arrays):
        colour = colours.get(name) or _TYPE_COLOURS.get(types[name]) or _PALETTE[n % len(_PALETTE)]
        colour = tuple(int(c) for c in colour)
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise InputError(f"colour of ROI {name!r} must be three integers 0-255, got {colours.get(name)!r}")
        rgb[name] = colour

    grid = reference_series.image
    matrix = np.reshape(grid.GetDirection(), (3, 3)) * np.asarray(grid.GetSpacing())[None, :]
    origin = np.asarray(grid.GetOrigin())
    axial = np.allclose(np.abs(np.reshape(grid.GetDirection(), (3, 3))[:, 2]), [0, 0, 1], atol=1e-6)
    sop_class = reference_series.sop_class_uid
    ct_sops = reference_series.sop_instance_uids

    roi_contours: dict[str, list[tuple[int, np.ndarray]]] = {}
    for name, array in arrays.items():
        items = []
        for k in np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1)):
            slice_z = float(reference_series.datasets[k].ImagePositionPatient[2]) if axial else None
            for poly in mask_contours(array[k], upsample):
                ijk = np.column_stack([poly, np.full(len(poly), float(k))])
                points = origin + ijk @ matrix.T
                if slice_z is not None:
                    points[:, 2] = slice_z  # exactly the CT slice's z as written in its header
                items.append((int(k), points))
        roi_contours[name] = items

    content = digest(ct_for, reference_series.series_instance_uid, label, description, generation_algorithm,
                     upsample, *[(n, types[n], rgb[n], arrays[n].shape, np.packbits(arrays[n]).tobytes())
                                  for n in arrays])
    ident = reference_series.identity
    sop_uid = ident.uid("rtstruct", content)
    when = creation_datetime()
    ds = rt_base_dataset(reference_series, RT_STRUCTURE_SET_STORAGE, sop_uid, modality="RTSTRUCT",
                         series_uid=ident.uid("rtstruct-series", content), series_number=RTSTRUCT_SERIES_NUMBER,
                         series_description=description, when=when)
    # Frame of Reference (C.7.4.1): the CT's
    ds.FrameOfReferenceUID = ct_for
    ds.PositionReferenceIndicator = reference_series.datasets[0].get("PositionReferenceIndicator", "") or ""
    # Structure Set (C.8.8.5)
    ds.StructureSetLabel = label
    ds.StructureSetName = label
    if description:
        ds.StructureSetDescription = description
    ds.InstanceNumber = 1
    ds.StructureSetDate = when.strftime("%Y%m%d")
    ds.StructureSetTime = when.strftime("%H%M%S")
    images = []
    for uid in ct_sops:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        images.append(item)
    series_item = Dataset()
    series_item.SeriesInstanceUID = reference_series.series_instance_uid
    series_item.ContourImageSequence = DicomSequence(images)
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = ident.study_instance_uid
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = ct_for
    for_item.RTReferencedStudySequence = DicomSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_item])

    roi_items, contour_items, observation_items = [], [], []
    too_long = False
    for number, name in enumerate(arrays, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ct_for
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = generation_algorithm
        roi_items.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = list(rgb[name])
        contours = []
        for c_number, (k, points) in enumerate(roi_contours[name], start=1):
            contour = Dataset()
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = ct_sops[k]
            contour.ContourImageSequence = DicomSequence([ref])
            contour.ContourNumber = c_number
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            value = "\\".join(_contour_strings(points)).encode("ascii")
            value += b" " * (len(value) % 2)  # even length, padded with a space (PS3.5 6.2)
            too_long |= len(value) > _SHORT_VR_MAX
            # Written as a raw element: pydicom would otherwise validate each of the many DS values one by one.
            contour[_CONTOUR_DATA] = RawDataElement(_CONTOUR_DATA, "DS", len(value), value, 0, False, True)
            contours.append(contour)
        rc.ContourSequence = DicomSequence(contours)
        rc.ReferencedROINumber = number
        contour_items.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = name
        obs.RTROIInterpretedType = types[name]
        obs.ROIInterpreter = ""
        observation_items.append(obs)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)
    ds.ApprovalStatus = "UNAPPROVED"
    if too_long:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with atomic_path(out_path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return out_path


def _contour_strings(points: np.ndarray) -> list[str]:
    """DS strings of contour coordinates: x and y to 0.1 micrometre, z as the CT slice position."""
    out = []
    for x, y, z in points:
        out += [_short(x), _short(y), format_number_as_ds(float(z))]
    return out


def _short(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def safe_file_name(name: str) -> str:
    """A file-name stem for an ROI name: letters, digits, '.', '_' and '-' kept, anything else '_'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "roi"
    return stem[:100]
