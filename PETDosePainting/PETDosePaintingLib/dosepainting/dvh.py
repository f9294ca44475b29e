"""Cumulative dose-volume histograms (DVH) and dose statistics per structure.

Two ways to describe a structure on a dose grid:

* **voxel masks** on the dose grid (:func:`dvh_from_mask`): each voxel of the mask counts with its full
  volume and its dose value (no interpolation). This is the project's one volume definition
  (:func:`~PETDosePaintingLib.imaging.image.mask_volume_ml`) and the function other code reuses;
* **planar contours** of an RT Structure Set rasterised on the dose grid (:func:`dvh_from_contours`,
  :func:`dvh_from_rtstruct`), so a DVH needs only the RT Dose and the RT Structure Set, as DVH
  calculators in treatment planning and dicompyler-core (``dvhcalc.get_dvh``) work:

  - in-plane sub-sampling: each dose voxel is split into ``subsample x subsample`` sub-voxels; a
    sub-voxel counts when its centre lies inside the plane's contours by the even-odd (XOR) rule
    (:func:`~PETDosePaintingLib.imaging.rtstruct.rasterise_polygons`); its dose is the dose grid
    interpolated trilinearly at the sub-voxel centre on the contour plane (:func:`scipy.ndimage.map_coordinates`,
    order 1; positions within half a voxel outside the outermost voxel centres take the edge value);
  - **end caps**: each contour plane stands for a slab of thickness ``t`` centred on it, extending
    ``t/2`` above and below, with ``t`` the smallest distance between the ROI's consecutive planes, as
    dicompyler-core (``CalculatePlaneThickness``); a single-plane ROI gets the dose grid's slice spacing
    (dicompyler-core would give it no volume). So an ROI contoured on n planes is n x t long, the first
    and last planes included with half a slice beyond them. The same slab rule assigns contours to voxel
    slices in :func:`~PETDosePaintingLib.imaging.rtstruct.read_rtstruct`;
  - parts of a structure outside the dose grid (in-plane beyond the grid's outer voxel boundaries, or
    planes beyond half a slice past the first or last dose plane) get no dose: they are reported as
    ``outside_dose_grid_cc`` and left out of the DVH, whose volume is the part inside the grid.

Statistics (:class:`DvhResult`): ``volume_cc`` (cm3), ``mean_gy`` (volume-weighted), ``min_gy``,
``max_gy``, ``d95_gy``, ``d2cc_gy`` and the helpers :meth:`DvhResult.dose_at_volume_pct` (D_x%),
:meth:`~DvhResult.dose_at_volume_cc` (D_x cc), :meth:`~DvhResult.volume_at_dose_cc` /
:meth:`~DvhResult.volume_at_dose_pct` (V_x Gy). D_V is the minimum dose of the hottest volume V: with the
samples sorted by decreasing dose, the dose of the first sample at which the cumulative volume reaches V
(no interpolation between samples; ICRU Report 83 defines D_V as the dose received by at least volume V).
D2cc is undefined (NaN) for a structure smaller than 2 cm3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import GeometryError, InputError
from ..imaging.image import (
    Units,
    check_same_geometry,
    get_frame_of_reference,
    require_binary_mask,
    require_finite,
    require_units,
)
from ..imaging.rtstruct import (
    RoiContours,
    StructureSet,
    check_frames_of_reference,
    contour_planes,
    load_rtstruct,
    rasterise_polygons,
)

#: Default in-plane sub-sampling of contour DVHs (4 x 4 sub-voxels per dose voxel).
DEFAULT_SUBSAMPLE = 4
#: Default dose step of DVH curves (Gy), 1 cGy like the bins of dicompyler-core.
DEFAULT_CURVE_STEP_GY = 0.01
_REL_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class DvhResult:
    """Cumulative DVH of one structure: the dose samples, their volume, and the statistics.

    ``volume_cc`` is the volume the DVH describes (inside the dose grid); ``outside_dose_grid_cc`` the part of
    the structure outside it. Doses in Gy. Statistics of an empty structure are NaN.
    """

    roi: str
    volume_cc: float
    mean_gy: float
    min_gy: float
    max_gy: float
    d95_gy: float
    d2cc_gy: float
    outside_dose_grid_cc: float
    method: str  #: how the samples were made (mask; contours with subsample and slab thickness)
    doses_gy: np.ndarray = field(repr=False)  #: sample doses, sorted by decreasing dose
    sample_volume_mm3: float = field(repr=False, default=0.0)  #: volume of each sample
    notes: tuple[str, ...] = ()

    # ---- helpers ---------------------------------------------------------------------------------------
    def dose_at_volume_cc(self, volume_cc: float) -> float:
        """D_V: minimum dose (Gy) of the hottest ``volume_cc`` cm3; NaN if the structure is smaller."""
        return dose_at_volume(self.doses_gy, self.sample_volume_mm3, float(volume_cc) * 1000.0)

    def dose_at_volume_pct(self, percent: float) -> float:
        """D_x%: minimum dose (Gy) of the hottest ``percent`` % of the structure volume."""
        if not 0 <= percent <= 100:
            raise InputError(f"a volume percentage must be within 0-100, got {percent!r}")
        return dose_at_volume(self.doses_gy, self.sample_volume_mm3,
                              percent / 100.0 * self.doses_gy.size * self.sample_volume_mm3)

    def volume_at_dose_cc(self, dose_gy: float) -> float:
        """V_D: volume (cm3) receiving at least ``dose_gy``."""
        return volume_at_dose(self.doses_gy, self.sample_volume_mm3, dose_gy) / 1000.0

    def volume_at_dose_pct(self, dose_gy: float) -> float:
        """V_D in % of the structure volume; NaN for an empty structure."""
        if self.doses_gy.size == 0:
            return math.nan
        return 100.0 * volume_at_dose(self.doses_gy, 1.0, dose_gy) / self.doses_gy.size

    def curve(self, step_gy: float = DEFAULT_CURVE_STEP_GY) -> tuple[np.ndarray, np.ndarray]:
        """The cumulative DVH: dose axis 0, step, ... up to the maximum (Gy), and the volume (cm3) receiving
        at least each dose."""
        if not step_gy > 0:
            raise InputError(f"the DVH curve step must be positive, got {step_gy!r}")
        top = float(self.doses_gy[0]) if self.doses_gy.size else 0.0
        axis = np.arange(0.0, top + step_gy, step_gy)
        ascending = self.doses_gy[::-1]
        counts = ascending.size - np.searchsorted(ascending, axis, side="left")
        return axis, counts * self.sample_volume_mm3 / 1000.0

    def statistics(self) -> dict[str, float | str]:
        """The CSV row of ``petdp dvh`` (contract columns first)."""
        return {
            "roi": self.roi, "volume_cc": self.volume_cc, "mean_gy": self.mean_gy, "min_gy": self.min_gy,
            "max_gy": self.max_gy, "d95_gy": self.d95_gy, "d2cc_gy": self.d2cc_gy,
            "d98_gy": self.dose_at_volume_pct(98.0) if self.doses_gy.size else math.nan,
            "d50_gy": self.dose_at_volume_pct(50.0) if self.doses_gy.size else math.nan,
            "d2_gy": self.dose_at_volume_pct(2.0) if self.doses_gy.size else math.nan,
            "outside_dose_grid_cc": self.outside_dose_grid_cc, "method": self.method,
        }


def dose_at_volume(doses_desc: np.ndarray, sample_volume: float, volume: float) -> float:
    """Minimum dose of the hottest ``volume`` (same units as ``sample_volume``) of equal-volume samples
    sorted by decreasing dose; NaN if ``volume`` exceeds the total."""
    n = doses_desc.size
    if n == 0 or volume > n * sample_volume * (1 + _REL_EPS):
        return math.nan
    if volume <= 0:
        return float(doses_desc[0])
    count = math.ceil(volume / sample_volume * (1 - _REL_EPS))
    return float(doses_desc[min(max(count, 1), n) - 1])


def volume_at_dose(doses_desc: np.ndarray, sample_volume: float, dose: float) -> float:
    """Volume of the samples (sorted by decreasing dose) receiving at least ``dose``."""
    ascending = doses_desc[::-1]
    return float(ascending.size - np.searchsorted(ascending, dose, side="left")) * sample_volume


def dvh_from_samples(roi: str, doses_gy: np.ndarray, sample_volume_mm3: float, *, outside_dose_grid_cc: float = 0.0,
                     method: str = "samples", notes: Sequence[str] = ()) -> DvhResult:
    """A :class:`DvhResult` from equal-volume dose samples (Gy) of ``sample_volume_mm3`` each."""
    doses = np.sort(np.asarray(doses_gy, dtype=np.float64).ravel())[::-1]
    if doses.size and not np.all(np.isfinite(doses)):
        raise InputError(f"the dose samples of {roi!r} hold NaN or infinite values")
    n = doses.size
    volume_mm3 = n * float(sample_volume_mm3)
    if n:
        stats = {"mean": float(doses.mean()), "min": float(doses[-1]), "max": float(doses[0]),
                 "d95": dose_at_volume(doses, sample_volume_mm3, 0.95 * volume_mm3),
                 "d2cc": dose_at_volume(doses, sample_volume_mm3, 2000.0)}
    else:
        stats = dict.fromkeys(("mean", "min", "max", "d95", "d2cc"), math.nan)
        notes = [*notes, f"structure {roi!r} has no volume on the dose grid: its dose statistics are undefined"]
    return DvhResult(roi=roi, volume_cc=volume_mm3 / 1000.0, mean_gy=stats["mean"], min_gy=stats["min"],
                     max_gy=stats["max"], d95_gy=stats["d95"], d2cc_gy=stats["d2cc"],
                     outside_dose_grid_cc=float(outside_dose_grid_cc), method=method, doses_gy=doses,
                     sample_volume_mm3=float(sample_volume_mm3), notes=tuple(notes))


def _dose_array(dose: sitk.Image) -> np.ndarray:
    require_units(dose, {Units.GY}, "dose")
    require_finite(dose, "dose")
    if dose.GetDimension() != 3:
        raise InputError(f"the dose must be a 3-D image, got {dose.GetDimension()}-D")
    return sitk.GetArrayFromImage(dose).astype(np.float64)


def dvh_from_mask(dose: sitk.Image, mask: sitk.Image, roi: str = "mask") -> DvhResult:
    """DVH of a binary mask on the dose grid: each voxel counts with its volume and its dose.

    The mask must be on the dose grid (:func:`~PETDosePaintingLib.imaging.image.check_same_geometry`; resample
    it explicitly with nearest neighbour otherwise) and, when both record one, in the same frame of reference.
    An empty mask gives an empty DVH (volume 0, NaN statistics).
    """
    values = _dose_array(dose)
    check_same_geometry(dose, mask, "the dose", f"mask {roi!r}")
    dose_for, mask_for = get_frame_of_reference(dose), get_frame_of_reference(mask)
    if dose_for and mask_for and dose_for != mask_for:
        raise GeometryError(f"mask {roi!r} is in the frame of reference {mask_for} but the dose is in {dose_for}")
    inside = require_binary_mask(mask, f"mask {roi!r}", allow_empty=True)
    voxel_mm3 = float(np.prod(dose.GetSpacing()))
    return dvh_from_samples(roi, values[inside], voxel_mm3, method="mask")


def dvh_from_contours(dose: sitk.Image, roi: RoiContours, *, subsample: int = DEFAULT_SUBSAMPLE,
                      plane_tolerance_mm: float = 0.05, dose_array: np.ndarray | None = None) -> DvhResult:
    """DVH of an ROI's planar contours rasterised on the dose grid (module docstring: sub-sampling, end caps).

    The dose grid's slices must be parallel to the contour planes (e.g. axial contours, axial dose). The
    frame of reference is not checked here (see :func:`dvh_from_rtstruct`).
    """
    if int(subsample) != subsample or subsample < 1:
        raise InputError(f"subsample must be a positive integer, got {subsample!r}")
    s = int(subsample)
    values = _dose_array(dose) if dose_array is None else dose_array
    nx, ny, nz = dose.GetSize()
    dx, dy, dz = dose.GetSpacing()
    planes, thickness, notes = contour_planes(roi, dose, plane_tolerance_mm=plane_tolerance_mm)
    notes = [*roi.notes, *notes]
    if not roi.contours:
        notes.append(f"ROI {roi.name!r} has no closed planar contours")
    elif not planes:
        raise GeometryError(f"ROI {roi.name!r}: none of its contours is parallel to the dose grid's slices; "
                            "resample the dose onto a grid whose slices contain the contours (e.g. axial)")
    if thickness is None:
        thickness = float(dz)
        if planes:
            notes.append(f"ROI {roi.name!r} is contoured on one plane: its slab thickness is the dose grid's slice "
                         f"spacing, {dz:g} mm")
    sample_mm3 = dx * dy / (s * s) * thickness
    samples = []
    outside = 0
    for plane in planes:
        allpts = np.vstack(plane.polygons)
        rows = (allpts[:, 1] + 0.5) * s - 0.5
        cols = (allpts[:, 0] + 0.5) * s - 0.5
        a0, a1 = math.floor(rows.min()), math.ceil(rows.max())
        b0, b1 = math.floor(cols.min()), math.ceil(cols.max())
        inside = rasterise_polygons(plane.polygons, (a1 - a0 + 1, b1 - b0 + 1), s, offset=(a0, b0))
        a, b = np.nonzero(inside)
        a, b = a + a0, b + b0
        in_grid = (a >= 0) & (a < ny * s) & (b >= 0) & (b < nx * s)
        if not -0.5 <= plane.k <= nz - 0.5:
            in_grid[:] = False
        outside += int(np.count_nonzero(~in_grid))
        if in_grid.any():
            j = (a[in_grid] + 0.5) / s - 0.5
            i = (b[in_grid] + 0.5) / s - 0.5
            k = np.full(i.shape, plane.k)
            samples.append(ndimage.map_coordinates(values, [k, j, i], order=1, mode="nearest"))
    doses = np.concatenate(samples) if samples else np.zeros(0)
    outside_cc = outside * sample_mm3 / 1000.0
    if outside:
        notes.append(f"ROI {roi.name!r}: {outside_cc:.3g} cm3 lie outside the dose grid and are not in its DVH")
    method = f"contours (subsample {s}, slab {thickness:.4g} mm)"
    return dvh_from_samples(roi.name, doses, sample_mm3, outside_dose_grid_cc=outside_cc, method=method, notes=notes)


def dvh_from_rtstruct(dose: sitk.Image, rtstruct: str | Path | StructureSet, roi_names: Sequence[str] | None = None,
                      *, subsample: int = DEFAULT_SUBSAMPLE, plane_tolerance_mm: float = 0.05
                      ) -> dict[str, DvhResult]:
    """DVHs of the ROIs (all, or ``roi_names``) of an RT Structure Set on a dose grid, without the CT.

    The ROIs' frame of reference must equal the dose's when both are recorded (:class:`GeometryError`
    otherwise); when the dose records none, a note says it could not be checked.
    """
    structure = rtstruct if isinstance(rtstruct, StructureSet) else load_rtstruct(rtstruct)
    rois = structure.select(roi_names)
    general = check_frames_of_reference(rois, get_frame_of_reference(dose), "the dose", structure.path)
    values = _dose_array(dose)
    out = {}
    for roi in rois:
        result = dvh_from_contours(dose, roi, subsample=subsample, plane_tolerance_mm=plane_tolerance_mm,
                                   dose_array=values)
        out[roi.name] = replace(result, notes=(*general, *result.notes))
    return out


def dvh_from_masks(dose: sitk.Image, masks: Mapping[str, sitk.Image]) -> dict[str, DvhResult]:
    """:func:`dvh_from_mask` for several named masks."""
    return {name: dvh_from_mask(dose, mask, name) for name, mask in masks.items()}
