"""Dose-painting prescriptions from PET: by numbers (a voxel dose map) and by contours (a boost sub-volume).

Dose painting by numbers (DPBN)
-------------------------------
Linear, clipped mapping of the PET intensity ``I`` to dose (Vanderstraeten B et al., Radiother Oncol
2006;79:249; the anchors as in the Ghent group's public code ``sdonche/DosePainting``, reference note
``dose_painting.md`` §1.1)::

    t = clip((I - I_low) / (I_high - I_low), 0, 1)
    D = D_low + f(t) * (D_high - D_low)

with ``f(t) = t`` (linear, the default). Anchors: ``I_high`` = the 95th percentile of the PET inside the
target and ``I_low = 0.25 * I_high`` (Vanderstraeten 2006 via the Ghent code [V]); either can be given
explicitly (the reference note §1.1 found that ``I_low`` often falls below the tumour background, so the
lowest prescription inside the target may exceed ``D_low``: this is reported, not corrected). The Ghent
preclinical script does not clip; this implementation clips explicitly (voxels below ``I_low`` get
``D_low``, above ``I_high`` get ``D_high``).

Other mappings (Bowen SR et al., PMB 2009;54:2163, PMC2858011, tested linear, square-root, quadratic and
sigmoid image-to-dose functions; the exact parameterisations below are this project's):

* ``sqrt``: ``f(t) = sqrt(t)``; ``quadratic``: ``f(t) = t**2``;
* ``sigmoid``: a logistic in ``t`` with centre ``sigmoid_centre`` (default 0.5) and steepness
  ``sigmoid_steepness`` (default 10), rescaled so that ``f(0) = 0`` and ``f(1) = 1`` (design defaults; Bowen's
  sigmoid parameters were not verified);
* ``log`` (Brahme/log): ``f = ln(I / I_low) / ln(I_high / I_low)`` clipped to [0, 1]. This is the shape of the
  Brahme & Ågren optimum for a clonogen density proportional to the PET intensity (``dose_painting.md``
  §3.2), with the slope set by the anchors instead of ``1/alpha``; for the radiobiological optimum itself
  use :func:`~PETDosePaintingLib.dosepainting.radiobiology.brahme_agren_dose`. Needs ``I_low > 0``.

Mean-dose-preserving mode (Bowen 2009: fixing the integral dose made the result less sensitive to the
mapping): ``D - D_low`` is rescaled by one factor so that the mean dose over the target equals
``mean_dose``. ``D_low`` is kept; ``D_high`` then only shapes the map and the maximum becomes
``D_low + scale * (D_high - D_low)`` (reported). The rescaling is applied after the margin dilation, which
commutes with it (a maximum filter commutes with increasing affine maps), so the final map has exactly the
requested target mean.

Margin: grey-level dilation of the dose map (a maximum filter whose footprint is a ball of radius
``margin_mm``, in mm on the voxel grid), default 2.5 mm ("PTV_PET", Differding S et al., Radiat Oncol
2017;12:59 [V abstract]). It extends the map ``margin_mm`` beyond the target and raises each voxel to the
highest prescription within ``margin_mm``. A radius below the smallest voxel spacing has no effect
(reported in the notes).

Grid: the map is computed on ``grid`` (e.g. the planning CT), by default the target mask's own grid. The PET
is resampled onto it with **linear interpolation** (reference note §1.6; no partial-volume correction);
anchors and thresholds are taken from the resampled values on that grid. A target mask on another grid is
resampled by nearest neighbour. Resampling between grids needs a shared frame of reference: both images
recording the same DICOM Frame of Reference UID (metadata key ``0020|0052``), or ``assume_same_frame``.
Every target voxel centre must lie inside the PET field of view.

Dose painting by contours (DPBC)
--------------------------------
A boost sub-volume (BTV) gets ``boost_dose``, the rest of the target ``base_dose``. The BTV is either given
(e.g. a hypoxic volume) or the voxels of the target with ``I >= boost_fraction * max(I in target)``, default
0.5 (the 50 %-SUVmax sub-volume; ``dose_painting.md`` §1.2, patterns-of-failure study PMC5600500). An
optional margin (binary dilation by a ball in mm, Euclidean distance on the voxel grid) is added, the result
is kept inside an envelope (default: the target), holes are filled and islands below ``min_island_ml``
(default 0.5 mL, design default after §1.3/§2.2: "about 0.3-0.5 cm3, below PET resolution") are dropped.

Inverted map (Arnesen MR et al., Acta Oncol 2015 [M]; C. Brighi's public ``Inverse_DosePrescriptions.py``
[V code]): ``D_inv = ceiling - D`` inside the prescription volume, 0 outside, optionally
``ceiling - mean(D)`` in a PTV ring; exported as a base/background dose for a standard TPS (§1.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import GeometryError, InputError
from ..imaging.image import (
    Units,
    array_from_image,
    get_frame_of_reference,
    get_units,
    image_from_array,
    make_grid,
    require_binary_mask,
    require_finite,
    same_geometry,
    set_frame_of_reference,
    voxel_volume_ml,
)
from ..imaging.resample import resample_mask, resample_to_reference

#: Default dose range (Gy) inside the target: 70 -> 86 Gy in 35 fractions (Differding 2017 [V abstract]).
DEFAULT_DOSE_LOW = 70.0
DEFAULT_DOSE_HIGH = 86.0
#: ``I_high`` = this percentile of the PET inside the target (Vanderstraeten 2006 via the Ghent code [V]).
DEFAULT_I_HIGH_PERCENTILE = 95.0
#: ``I_low`` = this fraction of ``I_high`` (same source [V]).
DEFAULT_I_LOW_FRACTION = 0.25
#: Grey-level dilation radius of the dose map, mm (Differding 2017 [V abstract]).
DEFAULT_MARGIN_MM = 2.5
#: Boost sub-volume threshold as a fraction of the maximum PET intensity in the target (§1.2).
DEFAULT_BOOST_FRACTION = 0.5
#: Islands of boost/level contours smaller than this (mL) are dropped (design default; §1.3 "about 0.3-0.5 cm3",
#: §2.2 "about 0.5 cm3").
DEFAULT_MIN_ISLAND_ML = 0.5
#: Image-to-dose mappings of :func:`map_intensity_to_dose`.
MAPPINGS = ("linear", "sqrt", "quadratic", "sigmoid", "log")


# --------------------------------------------------------------------------------------------------------
# Frames of reference, grids and masks
# --------------------------------------------------------------------------------------------------------

def require_shared_frame(moving: sitk.Image, reference: sitk.Image, moving_name: str, reference_name: str, *,
                         assume_same_frame: bool = False) -> str:
    """Check that ``moving`` may be resampled onto ``reference``'s grid without a registration.

    Returns a sentence saying on what basis. Raises :class:`GeometryError` if both images record different
    Frame of Reference UIDs, or if either records none and ``assume_same_frame`` is False.
    """
    a, b = get_frame_of_reference(moving), get_frame_of_reference(reference)
    if a and b:
        if a != b:
            raise GeometryError(f"{moving_name} (frame of reference {a}) and {reference_name} (frame of reference "
                                f"{b}) are not in the same DICOM frame of reference; register them first")
        return f"{moving_name} and {reference_name} share the frame of reference {a}"
    if not assume_same_frame:
        missing = " and ".join(n for n, uid in ((moving_name, a), (reference_name, b)) if not uid)
        raise GeometryError(f"{moving_name} and {reference_name} are on different grids and no frame of reference "
                            f"is recorded for {missing}, so a shared frame cannot be established; confirm they come "
                            "from one PET/CT session (or were registered) with assume_same_frame / "
                            "--assume-same-frame")
    return (f"{moving_name} and {reference_name} assumed to share a frame of reference (not recorded; "
            "assume_same_frame)")


def _index_to_lps_matrix(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())[None, :]
    return matrix, np.asarray(image.GetOrigin(), dtype=np.float64)


def mask_points_lps(mask: np.ndarray, image: sitk.Image) -> np.ndarray:
    """LPS coordinates (n, 3) of the voxel centres set in the boolean ``[k, j, i]`` array ``mask``."""
    k, j, i = np.nonzero(mask)
    matrix, origin = _index_to_lps_matrix(image)
    return origin[None, :] + np.stack([i, j, k], axis=1).astype(np.float64) @ matrix.T


def count_outside(points_lps: np.ndarray, image: sitk.Image) -> int:
    """How many LPS points lie outside the region covered by ``image``'s voxels (half a voxel past the centres)."""
    matrix, origin = _index_to_lps_matrix(image)
    cont = (points_lps - origin[None, :]) @ np.linalg.inv(matrix).T
    size = np.asarray(image.GetSize(), dtype=np.float64)
    tol = 1e-6
    outside = np.any((cont < -0.5 - tol) | (cont > size[None, :] - 0.5 + tol), axis=1)
    return int(np.count_nonzero(outside))


def require_inside(mask: np.ndarray, mask_image: sitk.Image, image: sitk.Image, mask_name: str,
                   image_name: str) -> None:
    """Raise :class:`InputError` unless every voxel centre of ``mask`` lies inside ``image``'s field of view."""
    n_out = count_outside(mask_points_lps(mask, mask_image), image)
    if n_out:
        total = int(np.count_nonzero(mask))
        raise InputError(f"{n_out} of the {total} voxels of the {mask_name} lie outside the {image_name} "
                         "(field of view); the two images do not cover the same region")


def ball_footprint(radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """Boolean ``[k, j, i]`` ball of ``radius_mm`` on a voxel grid: offsets whose centre distance is <= radius."""
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    half = np.floor(radius_mm / spacing + 1e-9).astype(int)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    dk, dj, di = np.meshgrid(*axes, indexing="ij")
    return dk**2 + dj**2 + di**2 <= radius_mm**2 * (1 + 1e-9)


def dilate_mask_mm(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """Binary dilation of ``mask`` by a ball of ``radius_mm`` (Euclidean distance on the voxel grid, exact)."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    distance = ndimage.distance_transform_edt(~mask, sampling=np.asarray(spacing_kji, dtype=np.float64))
    return distance <= radius_mm * (1 + 1e-9)


def grey_dilate_mm(values: np.ndarray, radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """Grey-level dilation (maximum filter) of ``values`` with a ball of ``radius_mm`` as footprint."""
    if radius_mm <= 0:
        return values.copy()
    return ndimage.maximum_filter(values, footprint=ball_footprint(radius_mm, spacing_kji), mode="nearest")


def clean_mask(mask: np.ndarray, spacing_kji: Sequence[float], *, min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
               fill_holes: bool = True, within: np.ndarray | None = None) -> np.ndarray:
    """Contour clean-up: fill enclosed holes, drop 26-connected islands below ``min_island_ml``, stay ``within``.

    Holes are filled in 3D (``scipy.ndimage.binary_fill_holes``); the result is intersected with ``within``
    (if given) before and after filling, so it never leaves the envelope.
    """
    out = mask.copy() if within is None else mask & within
    if fill_holes and out.any():
        out = ndimage.binary_fill_holes(out)
        if within is not None:
            out &= within
    if min_island_ml > 0 and out.any():
        labels, n = ndimage.label(out, structure=np.ones((3, 3, 3), dtype=bool))
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        voxel_ml = float(np.prod(spacing_kji)) / 1000.0
        keep = counts * voxel_ml >= min_island_ml
        keep[0] = False
        out = keep[labels]
    return out


def _number(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise InputError(f"{name} must be finite, got {value!r}")
    if positive and number <= 0:
        raise InputError(f"{name} must be positive, got {number:g}")
    if nonnegative and number < 0:
        raise InputError(f"{name} must not be negative, got {number:g}")
    return number


def check_dose_range(dose_low: float, dose_high: float, low_name: str = "dose_low",
                     high_name: str = "dose_high") -> tuple[float, float]:
    """Validate a dose range in Gy (both finite, non-negative, low <= high)."""
    low = _number(low_name, dose_low, nonnegative=True)
    high = _number(high_name, dose_high, nonnegative=True)
    if low > high:
        raise InputError(f"{low_name} ({low:g} Gy) is above {high_name} ({high:g} Gy)")
    return low, high


# --------------------------------------------------------------------------------------------------------
# The mapping
# --------------------------------------------------------------------------------------------------------

def map_intensity_to_dose(values: np.ndarray, *, i_low: float, i_high: float,
                          dose_low: float = DEFAULT_DOSE_LOW, dose_high: float = DEFAULT_DOSE_HIGH,
                          mapping: str = "linear", sigmoid_centre: float = 0.5,
                          sigmoid_steepness: float = 10.0) -> np.ndarray:
    """Clipped image-to-dose mapping ``D = D_low + f(t) (D_high - D_low)`` (see the module docstring).

    Parameters
    ----------
    values : intensities (any units; the anchors are in the same units).
    i_low, i_high : intensity anchors, ``i_low < i_high`` (``i_low > 0`` for ``log``).
    dose_low, dose_high : doses in Gy at and below ``i_low`` / at and above ``i_high`` (default 70 / 86 Gy).
    mapping : one of :data:`MAPPINGS` (default ``"linear"``).
    sigmoid_centre, sigmoid_steepness : for ``sigmoid`` only (design defaults 0.5 and 10, in units of ``t``).

    Returns float64 doses in Gy, same shape as ``values``.
    """
    if mapping not in MAPPINGS:
        raise InputError(f"mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    i_low = _number("i_low", i_low)
    i_high = _number("i_high", i_high)
    if not i_low < i_high:
        raise InputError(f"the intensity anchors must satisfy I_low < I_high, got I_low {i_low:.6g} and "
                         f"I_high {i_high:.6g}")
    dose_low, dose_high = check_dose_range(dose_low, dose_high)
    values = np.asarray(values, dtype=np.float64)
    if mapping == "log":
        if i_low <= 0:
            raise InputError(f"the log mapping needs I_low > 0, got {i_low:.6g}")
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.log(np.maximum(values, 1e-300) / i_low) / np.log(i_high / i_low)
        f = np.clip(np.where(values > i_low, f, 0.0), 0.0, 1.0)
    else:
        t = np.clip((values - i_low) / (i_high - i_low), 0.0, 1.0)
        if mapping == "linear":
            f = t
        elif mapping == "sqrt":
            f = np.sqrt(t)
        elif mapping == "quadratic":
            f = t * t
        else:
            centre = _number("sigmoid_centre", sigmoid_centre)
            steep = _number("sigmoid_steepness", sigmoid_steepness, positive=True)

            def logistic(x):
                return 1.0 / (1.0 + np.exp(-steep * (x - centre)))

            lo, hi = logistic(0.0), logistic(1.0)
            f = (logistic(t) - lo) / (hi - lo)
    return dose_low + f * (dose_high - dose_low)


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------

@dataclass
class PrescriptionResult:
    """A prescription (dose image in Gy) and everything used to make it.

    ``dose`` is 0 Gy outside ``evaluation_mask`` (no voxel prescription there: the ordinary SIB levels apply).
    ``evaluation_mask`` is the target plus the margin ring (where QF/QVH are evaluated, "PTV_PET").
    Intensities are in ``intensity_units`` (the PET's units). Doses in Gy, volumes in mL.
    """

    dose: sitk.Image
    target_mask: sitk.Image
    evaluation_mask: sitk.Image
    mode: str  #: "dpbn" or "boost"
    dose_low_gy: float
    dose_high_gy: float
    margin_mm: float
    grid: str  #: which grid the map lives on
    pet_resampled: bool
    interpolation: str | None  #: "linear" when the PET was resampled
    intensity_units: str | None
    target_volume_ml: float
    evaluation_volume_ml: float
    dose_min_gy: float  #: over the evaluation volume
    dose_mean_gy: float
    dose_max_gy: float
    target_mean_dose_gy: float
    mapping: str | None = None
    i_low: float | None = None
    i_high: float | None = None
    i_high_percentile: float | None = None  #: None when I_high was given
    i_low_fraction: float | None = None  #: None when I_low was given
    mean_dose_gy: float | None = None  #: requested target mean (mean-dose-preserving mode)
    scale: float = 1.0  #: factor applied to D - D_low (1 unless mean-dose-preserving)
    sigmoid_centre: float | None = None
    sigmoid_steepness: float | None = None
    boost_mask: sitk.Image | None = None
    boost_source: str | None = None  #: "threshold" or "given"
    boost_fraction: float | None = None
    boost_threshold: float | None = None  #: intensity threshold used (PET units)
    boost_volume_ml: float | None = None
    min_island_ml: float | None = None
    frame_of_reference: str | None = None  #: sentence on how the PET/grid frame was established
    frame_of_reference_uid: str | None = None  #: UID recorded on the grid, if any
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly dictionary of every number and choice (no images)."""
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, sitk.Image)}
        out["dose_units"] = "Gy"
        return out


@dataclass
class InvertedPrescription:
    """The "inverted" prescription for a base/background-dose TPS workflow (Arnesen 2015 [M], §1.4)."""

    dose: sitk.Image  #: ceiling - D inside the prescription volume, ring value in the ring, 0 elsewhere (Gy)
    ceiling_gy: float
    ring_value_gy: float | None
    ring_volume_ml: float


# --------------------------------------------------------------------------------------------------------
# Grid preparation shared by both modes
# --------------------------------------------------------------------------------------------------------

@dataclass
class _Grid:
    grid: sitk.Image  #: the full dose grid (geometry only)
    target: np.ndarray  #: boolean target on the full grid
    box: tuple[slice, slice, slice]  #: working box (target plus margin) on the full grid
    sub: sitk.Image  #: geometry of the working box
    pet: np.ndarray  #: PET values in the working box (float64)
    description: str
    resampled: bool
    frame_note: str | None
    notes: list[str]


def _prepare(pet: sitk.Image, target: sitk.Image, grid: sitk.Image | None, assume_same_frame: bool) -> _Grid:
    """Target on the dose grid, checks; the working box and PET values come from :func:`_load_box`."""
    if pet.GetDimension() != 3 or target.GetDimension() != 3:
        raise InputError("the PET and the target must be 3D images")
    require_finite(pet, "PET")
    require_binary_mask(target, "target mask")
    notes: list[str] = []
    frame_note = None
    if grid is None:
        grid, description = target, "target grid"
    else:
        description = "reference grid"
    if same_geometry(grid, pet):
        description = "PET grid"
    if not same_geometry(target, grid):
        frame_note = require_shared_frame(target, grid, "target mask", "dose grid",
                                          assume_same_frame=assume_same_frame)
        target_on_grid = resample_mask(target, grid)
        notes.append("target mask resampled onto the dose grid by nearest neighbour")
    else:
        target_on_grid = target
    inside = sitk.GetArrayFromImage(target_on_grid).astype(bool)
    if not inside.any():
        raise InputError("the target mask is empty on the dose grid (no voxel set)")
    require_inside(inside, grid, pet, "target", "PET")
    resampled = not same_geometry(pet, grid)
    if resampled:
        note = require_shared_frame(pet, grid, "PET", "dose grid", assume_same_frame=assume_same_frame)
        frame_note = note if frame_note is None else f"{frame_note}; {note}"
    return _Grid(grid, inside, (slice(None),) * 3, grid, np.empty(0), description, resampled, frame_note, notes)


def _load_box(g: _Grid, pet: sitk.Image, pad_mm: float, extra: Sequence[np.ndarray] = ()) -> None:
    """Set the working box (target and ``extra`` masks plus ``pad_mm``) and the PET values inside it."""
    spacing_kji = np.asarray(g.grid.GetSpacing())[::-1]
    pad = np.ceil(pad_mm / spacing_kji).astype(int) + 1
    union = g.target.copy()
    for mask in extra:
        union |= mask
    nz = np.nonzero(union)
    box = tuple(slice(max(0, int(a.min()) - p), min(n, int(a.max()) + p + 1))
                for a, p, n in zip(nz, pad, union.shape, strict=True))
    start_ijk = [int(b.start) for b in box][::-1]
    size_ijk = [int(b.stop - b.start) for b in box][::-1]
    sub = make_grid(size_ijk, g.grid.GetSpacing(), g.grid.TransformIndexToPhysicalPoint(start_ijk),
                    g.grid.GetDirection())
    if g.resampled:
        pet_sub = resample_to_reference(pet, sub, interpolation="linear", default_value=0.0,
                                        output_pixel_type=sitk.sitkFloat64)
        g.pet = sitk.GetArrayFromImage(pet_sub)
        g.notes.append("PET resampled onto the dose grid with linear interpolation")
    else:
        g.pet = sitk.GetArrayFromImage(pet).astype(np.float64)[box]
    g.box = box  # type: ignore[assignment]
    g.sub = sub


def _full_image(values_box: np.ndarray, g: _Grid, units: str, dtype=np.float32) -> sitk.Image:
    full = np.zeros(g.target.shape, dtype=dtype)
    full[g.box] = values_box
    image = image_from_array(full, g.grid, units=units)
    set_frame_of_reference(image, get_frame_of_reference(g.grid))
    return image


def _mask_image(mask: np.ndarray, g: _Grid) -> sitk.Image:
    return _full_image(mask.astype(np.uint8), g, Units.LABEL, np.uint8)


# --------------------------------------------------------------------------------------------------------
# Dose painting by numbers
# --------------------------------------------------------------------------------------------------------

def dose_painting_by_numbers(
    pet: sitk.Image,
    target: sitk.Image,
    *,
    grid: sitk.Image | None = None,
    dose_low: float = DEFAULT_DOSE_LOW,
    dose_high: float = DEFAULT_DOSE_HIGH,
    mapping: str = "linear",
    i_low: float | None = None,
    i_high: float | None = None,
    i_high_percentile: float = DEFAULT_I_HIGH_PERCENTILE,
    i_low_fraction: float = DEFAULT_I_LOW_FRACTION,
    margin_mm: float = DEFAULT_MARGIN_MM,
    mean_dose: float | None = None,
    sigmoid_centre: float = 0.5,
    sigmoid_steepness: float = 10.0,
    assume_same_frame: bool = False,
) -> PrescriptionResult:
    """Voxel dose prescription (Gy) from a PET inside a target (see the module docstring for the method).

    Parameters
    ----------
    pet : PET image (SUV or activity concentration: the map is self-normalised by its anchors).
    target : binary target mask (GTV_PET or PTV); its grid is the dose grid unless ``grid`` is given.
    grid : image whose geometry is the dose grid (e.g. the planning CT); the PET is resampled onto it with
        linear interpolation and the target by nearest neighbour.
    dose_low, dose_high : Gy, default 70 and 86 (Differding 2017).
    mapping : ``linear`` (default), ``sqrt``, ``quadratic``, ``sigmoid``, ``log``.
    i_low, i_high : explicit intensity anchors in the PET's units; default from the percentile rules below.
    i_high_percentile : percentile of the PET inside the target giving ``I_high`` (default 95,
        Vanderstraeten 2006 via the Ghent code [V]).
    i_low_fraction : ``I_low = i_low_fraction * I_high`` (default 0.25, same source [V]).
    margin_mm : grey-level dilation radius in mm (default 2.5, Differding 2017); 0 for none.
    mean_dose : Gy; if given, ``D - D_low`` is rescaled so that the target mean equals it (Bowen 2009); it
        must exceed ``dose_low``.
    sigmoid_centre, sigmoid_steepness : parameters of the ``sigmoid`` mapping (design defaults).
    assume_same_frame : allow resampling between grids whose shared frame of reference is not recorded.
    """
    dose_low, dose_high = check_dose_range(dose_low, dose_high)
    margin_mm = _number("margin_mm", margin_mm, nonnegative=True)
    if mapping not in MAPPINGS:
        raise InputError(f"mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    g = _prepare(pet, target, grid, assume_same_frame)
    _load_box(g, pet, margin_mm)
    spacing_kji = np.asarray(g.grid.GetSpacing())[::-1]
    inside = g.target[g.box]
    values = g.pet[inside]
    notes = list(g.notes)

    percentile = fraction = None
    if i_high is None:
        percentile = _number("i_high_percentile", i_high_percentile)
        if not 0 < percentile <= 100:
            raise InputError(f"i_high_percentile must be in (0, 100], got {percentile:g}")
        i_high = float(np.percentile(values, percentile))
    else:
        i_high = _number("i_high", i_high)
    if i_low is None:
        fraction = _number("i_low_fraction", i_low_fraction)
        if not 0 <= fraction < 1:
            raise InputError(f"i_low_fraction must be in [0, 1), got {fraction:g}")
        i_low = fraction * i_high
    else:
        i_low = _number("i_low", i_low)
    if not i_high > i_low:
        if percentile is None and fraction is None:
            raise InputError(f"the intensity anchors must satisfy I_low < I_high, got I_low {i_low:.6g} and "
                             f"I_high {i_high:.6g}")
        raise InputError(f"the PET anchors are degenerate: I_low {i_low:.6g} is not below I_high {i_high:.6g} "
                         "(is the PET non-positive inside the target, or the anchor fraction 1?)")

    dose_box = np.zeros(inside.shape, dtype=np.float64)
    dose_box[inside] = map_intensity_to_dose(values, i_low=i_low, i_high=i_high, dose_low=dose_low,
                                             dose_high=dose_high, mapping=mapping, sigmoid_centre=sigmoid_centre,
                                             sigmoid_steepness=sigmoid_steepness)
    evaluation = inside.copy()
    if margin_mm > 0:
        if not ball_footprint(margin_mm, spacing_kji).sum() > 1:
            notes.append(f"margin {margin_mm:g} mm is below the voxel spacing: the dilation has no effect")
        dose_box = grey_dilate_mm(dose_box, margin_mm, spacing_kji)
        evaluation = dilate_mask_mm(inside, margin_mm, spacing_kji)
        dose_box[~evaluation] = 0.0
    scale = 1.0
    if mean_dose is not None:
        mean_dose = _number("mean_dose", mean_dose)
        if not mean_dose > dose_low:
            raise InputError(f"mean_dose ({mean_dose:g} Gy) must be above dose_low ({dose_low:g} Gy)")
        excess = float(np.mean(dose_box[inside] - dose_low))
        if not excess > 0:
            raise InputError("the map is uniform at dose_low inside the target, so it cannot be rescaled to a "
                             "mean dose")
        scale = (mean_dose - dose_low) / excess
        dose_box[evaluation] = dose_low + scale * (dose_box[evaluation] - dose_low)
        notes.append(f"mean-dose-preserving: D - D_low scaled by {scale:.6g}; maximum "
                     f"{dose_low + scale * (dose_high - dose_low):.4g} Gy")
    d_eval = dose_box[evaluation]
    if d_eval.min() > dose_low + 1e-9 and mean_dose is None:
        notes.append(f"the lowest prescription in the target is {d_eval.min():.4g} Gy, above dose_low: the PET "
                     "inside the target never falls to I_low")
    voxel_ml = voxel_volume_ml(g.grid)
    return PrescriptionResult(
        dose=_full_image(dose_box.astype(np.float32), g, Units.GY),
        target_mask=_mask_image(inside, g),
        evaluation_mask=_mask_image(evaluation, g),
        mode="dpbn", dose_low_gy=dose_low, dose_high_gy=dose_high, margin_mm=margin_mm, grid=g.description,
        pet_resampled=g.resampled, interpolation="linear" if g.resampled else None, intensity_units=get_units(pet),
        target_volume_ml=float(inside.sum()) * voxel_ml, evaluation_volume_ml=float(evaluation.sum()) * voxel_ml,
        dose_min_gy=float(d_eval.min()), dose_mean_gy=float(d_eval.mean()), dose_max_gy=float(d_eval.max()),
        target_mean_dose_gy=float(dose_box[inside].mean()), mapping=mapping, i_low=float(i_low),
        i_high=float(i_high), i_high_percentile=percentile, i_low_fraction=fraction, mean_dose_gy=mean_dose,
        scale=float(scale), sigmoid_centre=sigmoid_centre if mapping == "sigmoid" else None,
        sigmoid_steepness=sigmoid_steepness if mapping == "sigmoid" else None, frame_of_reference=g.frame_note,
        frame_of_reference_uid=get_frame_of_reference(g.grid), notes=notes,
    )


# --------------------------------------------------------------------------------------------------------
# Dose painting by contours
# --------------------------------------------------------------------------------------------------------

def boost_prescription(
    pet: sitk.Image,
    target: sitk.Image,
    *,
    grid: sitk.Image | None = None,
    base_dose: float = DEFAULT_DOSE_LOW,
    boost_dose: float = DEFAULT_DOSE_HIGH,
    boost_volume: sitk.Image | None = None,
    boost_fraction: float = DEFAULT_BOOST_FRACTION,
    boost_margin_mm: float = 0.0,
    envelope: sitk.Image | None = None,
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
    fill_holes: bool = True,
    assume_same_frame: bool = False,
) -> PrescriptionResult:
    """Dose painting by contours: ``base_dose`` in the target, ``boost_dose`` in a boost sub-volume (Gy).

    Parameters
    ----------
    pet, target, grid, assume_same_frame : as in :func:`dose_painting_by_numbers`.
    base_dose, boost_dose : Gy, default 70 and 86 (typical boosts: 77 Gy hypoxic volume, Welz 2017; 82 Gy
        GTV_PET, Rasmussen 2015; 84 Gy MSKCC; ``dose_painting.md`` §1.2).
    boost_volume : binary mask of the boost sub-volume (e.g. the hypoxic volume); resampled by nearest
        neighbour if on another grid. Default: the threshold rule below.
    boost_fraction : BTV = target voxels with PET >= fraction * max(PET in target), max taken on the dose grid
        after resampling (default 0.5).
    boost_margin_mm : margin added to the BTV in mm (default 0; 10 mm covered 92 % of recurrences in
        PMC5600500).
    envelope : binary mask the boost must stay inside (e.g. the PTV); default the target.
    min_island_ml : islands smaller than this are dropped (default 0.5 mL); ``fill_holes`` fills enclosed holes.
    """
    base_dose, boost_dose = check_dose_range(base_dose, boost_dose, "base dose", "boost dose")
    if round(boost_dose * 100) <= round(base_dose * 100):
        raise InputError(f"the boost dose ({boost_dose:g} Gy) must exceed the base dose ({base_dose:g} Gy) by at "
                         "least 0.01 Gy")
    boost_margin_mm = _number("boost_margin_mm", boost_margin_mm, nonnegative=True)
    min_island_ml = _number("min_island_ml", min_island_ml, nonnegative=True)
    g = _prepare(pet, target, grid, assume_same_frame)
    notes = g.notes

    def on_grid(mask: sitk.Image, name: str) -> np.ndarray:
        require_binary_mask(mask, name, allow_empty=True)
        if not same_geometry(mask, g.grid):
            require_shared_frame(mask, g.grid, name, "dose grid", assume_same_frame=assume_same_frame)
            mask = resample_mask(mask, g.grid)
            notes.append(f"{name} resampled onto the dose grid by nearest neighbour")
        return sitk.GetArrayFromImage(mask).astype(bool)

    envelope_full = g.target | on_grid(envelope, "envelope") if envelope is not None else g.target
    given_full = on_grid(boost_volume, "boost volume") if boost_volume is not None else None
    _load_box(g, pet, boost_margin_mm, [envelope_full] + ([given_full] if given_full is not None else []))
    spacing_kji = np.asarray(g.grid.GetSpacing())[::-1]
    inside = g.target[g.box]
    envelope_box = envelope_full[g.box]
    threshold = fraction = None
    if given_full is not None:
        source = "given"
        raw = given_full[g.box]
        n_out = int(np.count_nonzero(raw & ~envelope_box))
        if n_out:
            notes.append(f"{n_out} voxel(s) of the boost volume outside the envelope were dropped")
    else:
        fraction = _number("boost_fraction", boost_fraction)
        if not 0 < fraction <= 1:
            raise InputError(f"boost_fraction must be in (0, 1], got {fraction:g}")
        peak = float(g.pet[inside].max())
        if not peak > 0:
            raise InputError(f"the PET maximum inside the target is {peak:.4g}; a fraction of it cannot define a "
                             "boost volume")
        threshold = fraction * peak
        raw = inside & (g.pet >= threshold)
        source = "threshold"
    if not raw.any():
        raise InputError("the boost volume is empty (no voxel set)")
    btv = dilate_mask_mm(raw, boost_margin_mm, spacing_kji)
    btv = clean_mask(btv, spacing_kji, min_island_ml=min_island_ml, fill_holes=fill_holes, within=envelope_box)
    if not btv.any():
        raise InputError(f"the boost volume is empty after keeping it inside the envelope and dropping islands "
                         f"below {min_island_ml:g} mL")
    dose_box = np.where(inside, base_dose, 0.0)
    dose_box[btv] = boost_dose
    evaluation = inside | btv
    voxel_ml = voxel_volume_ml(g.grid)
    d_eval = dose_box[evaluation]
    return PrescriptionResult(
        dose=_full_image(dose_box.astype(np.float32), g, Units.GY),
        target_mask=_mask_image(inside, g),
        evaluation_mask=_mask_image(evaluation, g),
        mode="boost", dose_low_gy=base_dose, dose_high_gy=boost_dose, margin_mm=boost_margin_mm,
        grid=g.description, pet_resampled=g.resampled, interpolation="linear" if g.resampled else None,
        intensity_units=get_units(pet), target_volume_ml=float(inside.sum()) * voxel_ml,
        evaluation_volume_ml=float(evaluation.sum()) * voxel_ml, dose_min_gy=float(d_eval.min()),
        dose_mean_gy=float(d_eval.mean()), dose_max_gy=float(d_eval.max()),
        target_mean_dose_gy=float(dose_box[inside].mean()), boost_mask=_mask_image(btv, g), boost_source=source,
        boost_fraction=fraction, boost_threshold=threshold, boost_volume_ml=float(btv.sum()) * voxel_ml,
        min_island_ml=min_island_ml, frame_of_reference=g.frame_note,
        frame_of_reference_uid=get_frame_of_reference(g.grid), notes=notes,
    )


# --------------------------------------------------------------------------------------------------------
# Inverted map
# --------------------------------------------------------------------------------------------------------

def inverted_prescription(prescription: sitk.Image, mask: sitk.Image | None = None, *,
                          ceiling: float | None = None, ring: sitk.Image | None = None) -> InvertedPrescription:
    """``D_inv = ceiling - D`` inside the prescription volume, 0 outside (Arnesen 2015 [M]; §1.4).

    Parameters
    ----------
    prescription : dose image in Gy.
    mask : the prescription volume; default the voxels with ``D > 0``.
    ceiling : Gy, default the maximum of the prescription in the mask; must not be below it.
    ring : optional binary mask (e.g. PTV ring outside the CTV); its voxels outside ``mask`` get
        ``ceiling - mean(D in mask)`` (C. Brighi's ``Inverse_DosePrescriptions.py`` [V code]).

    The TPS then optimises a uniform ``ceiling`` on the target for base + new plan; the new plan alone
    approximates ``D = ceiling - D_inv``. Evaluate it without the base dose.
    """
    values = array_from_image(prescription).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError("the prescription holds NaN or infinite values")
    if mask is None:
        inside = values > 0
    else:
        if not same_geometry(mask, prescription):
            raise GeometryError("the mask of the inverted prescription is not on the prescription grid")
        inside = require_binary_mask(mask, "prescription volume")
    if not inside.any():
        raise InputError("the prescription volume is empty")
    top = float(values[inside].max())
    ceiling = top if ceiling is None else _number("ceiling", ceiling)
    if ceiling < top - 1e-6:
        raise InputError(f"the ceiling ({ceiling:g} Gy) is below the prescription maximum ({top:.4g} Gy); the "
                         "inverted map would be negative")
    out = np.where(inside, ceiling - values, 0.0)
    ring_value = None
    ring_ml = 0.0
    if ring is not None:
        if not same_geometry(ring, prescription):
            raise GeometryError("the ring mask of the inverted prescription is not on the prescription grid")
        ring_only = require_binary_mask(ring, "ring mask", allow_empty=True) & ~inside
        ring_value = ceiling - float(values[inside].mean())
        out[ring_only] = ring_value
        ring_ml = float(ring_only.sum()) * voxel_volume_ml(prescription)
    image = image_from_array(out.astype(np.float32), prescription, units=Units.GY)
    set_frame_of_reference(image, get_frame_of_reference(prescription))
    return InvertedPrescription(image, float(ceiling), ring_value, ring_ml)


def tg263_level_name(dose_gy: float, prefix: str = "PTV_DP_") -> str:
    """TG-263-style name of a dose level: the dose in cGy, zero-padded to 4 digits (70 Gy -> ``PTV_DP_7000``)."""
    return f"{prefix}{round(float(dose_gy) * 100):04d}"
