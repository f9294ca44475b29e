"""Iterative PET thresholds: Jentzen's ITM (model-based LUT form) and van Dalen's mean-based iteration (note §4).

Both have the common signature ``method(suv, seed_lps, roi=None, background=None, **params)``, work in the
seed's own uptake hill like every threshold method (:mod:`.thresholds`: one click; a neighbour never
enters SUVmax, the background or the mask; cavities filled by default), take the background from the
shell of :mod:`.background` or from the reference VOI ``background``, record every iteration in
``details["history"]`` and raise :class:`~PETDosePaintingLib.errors.ProcessingError` when they do not
converge (they never return an unconverged contour).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ProcessingError
from ..imaging.filters import gaussian_blur
from ..imaging.image import image_from_array, make_grid
from ..phantom.shapes import sphere_fraction
from .background import BackgroundEstimate
from .common import DEFAULT_ROI_RADIUS_MM, SegmentationResult
from .thresholds import (
    LesionContext,
    background_parameters,
    check_contrast,
    check_fraction,
    locate_lesion,
    region_parameters,
)

#: Effective image resolution (FWHM, mm) assumed when none is given: the project's default for the
#: gradient method (2007-era OSEM 6-8 mm, modern PSF/TOF 4-6 mm, note §6.1). Measure yours.
DEFAULT_FWHM_MM = 6.0

#: Sphere radii (mm) of the model look-up table: 2-40 mm, i.e. about 0.03-270 mL.
LUT_RADII_MM = tuple(float(r) for r in np.geomspace(2.0, 40.0, 24))


# --------------------------------------------------------------------------------------------------
# The model look-up table t(V)

#: Sphere-centre positions in voxel units: voxel centre, voxel corner, then six positions of a 3D Halton
#: sequence, so that small spheres are averaged over where they may sit relative to the grid.
_SUBVOXEL_OFFSETS = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 1 / 3, 0.2], [0.25, 2 / 3, 0.4],
                              [0.75, 1 / 9, 0.6], [0.125, 4 / 9, 0.8], [0.625, 7 / 9, 0.04], [0.375, 2 / 9, 0.24]])


def _fwhm_xyz(fwhm_mm: float | Sequence[float]) -> tuple[float, float, float]:
    values = np.broadcast_to(np.asarray(fwhm_mm, dtype=float), (3,))
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"fwhm_mm must be a positive length in mm (one value or x, y, z), got {fwhm_mm!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def sphere_threshold_fraction(radius_mm: float, fwhm_mm: float | Sequence[float], spacing_xyz: Sequence[float],
                              offset_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> float:
    """The fraction ``t = (T - BG) / (max - BG)`` whose iso-contour has the true volume, for one sphere.

    Model (note §4.1, the PMOD form of Jentzen's method): a homogeneous sphere of ``radius_mm`` centred
    ``offset_mm`` away from a voxel centre, on a uniform background, voxelised on a grid of
    ``spacing_xyz`` (mm) with exact partial-voxel fractions
    (:func:`~PETDosePaintingLib.phantom.shapes.sphere_fraction`), blurred by a Gaussian of ``fwhm_mm``
    (:func:`~PETDosePaintingLib.imaging.filters.gaussian_blur`). ``max`` is the hottest voxel, and the
    iso-contour volume is a voxel count, exactly as the segmentation measures them; ``t`` interpolates
    between the two voxel values where the count crosses the true volume.

    The image is ``BG + C u(x)`` with ``u`` the blurred unit sphere, so ``t`` depends on the volume, the
    blur and the grid but **not on the SBR** (it cancels exactly in this linear model).
    """
    fwhm = _fwhm_xyz(fwhm_mm)
    spacing = np.asarray(spacing_xyz, dtype=float)
    offset = np.asarray(offset_mm, dtype=float)
    half = np.ceil((radius_mm + np.abs(offset) + 2.0 * np.asarray(fwhm) + spacing) / spacing).astype(int)
    grid = make_grid([int(2 * h + 1) for h in half], spacing, origin=-half * spacing)
    n_true = 4.0 / 3.0 * np.pi * radius_mm**3 / float(np.prod(spacing))
    frac = sphere_fraction(grid, offset, radius_mm)
    blurred = np.sort(sitk.GetArrayFromImage(gaussian_blur(image_from_array(frac, grid), fwhm)).ravel())[::-1]
    blurred = blurred.astype(np.float64)
    level = np.interp(n_true - 1.0, np.arange(blurred.size), blurred)
    return float(level / blurred[0])


def sphere_threshold_fractions(radii_mm: Sequence[float], fwhm_mm: float | Sequence[float],
                               spacing_xyz: Sequence[float]) -> np.ndarray:
    """:func:`sphere_threshold_fraction` for each radius, averaged over sphere positions relative to the grid.

    Positions (:data:`_SUBVOXEL_OFFSETS`): the voxel centre, the voxel corner and six more of a Halton
    sequence for spheres of radius below six voxels (they depend most on where they sit), the first four
    for larger ones. The model LUT of the ITM is this curve.

    Because SBR cancels in the linear blur model, a t(V, SBR) table would be constant along SBR, so the
    table is one-dimensional. Noise and non-linear reconstruction make t depend weakly on SBR in real
    images (Jentzen 2007); that dependence is what a measured calibration (:mod:`.calibration`) captures.
    """
    fwhm = _fwhm_xyz(fwhm_mm)
    spacing = np.asarray(spacing_xyz, dtype=float)
    out = []
    for radius in radii_mm:
        offsets = _SUBVOXEL_OFFSETS if radius < 6.0 * spacing.max() else _SUBVOXEL_OFFSETS[:4]
        out.append(float(np.mean([sphere_threshold_fraction(radius, fwhm, spacing, offset)
                                  for offset in offsets * spacing])))
    return np.asarray(out)


@lru_cache(maxsize=32)
def _cached_lut(fwhm_key: tuple[float, float, float], spacing_key: tuple[float, float, float]
                ) -> tuple[np.ndarray, np.ndarray]:
    radii = np.asarray(LUT_RADII_MM)
    fractions = sphere_threshold_fractions(radii, fwhm_key, spacing_key)
    volumes = 4.0 / 3.0 * np.pi * radii**3 / 1000.0
    volumes.setflags(write=False)
    fractions.setflags(write=False)
    return volumes, fractions


def model_lut(fwhm_mm: float | Sequence[float], spacing_xyz: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The ITM look-up table ``(volumes_ml, fractions)`` for a resolution and voxel grid, cached per process.

    Cached per (FWHM, voxel size) rounded to 1 µm; see :func:`sphere_threshold_fractions` for the model.
    Radii :data:`LUT_RADII_MM` (2-40 mm); volumes in mL, increasing.
    """
    fwhm = tuple(round(v, 3) for v in _fwhm_xyz(fwhm_mm))
    spacing = tuple(round(float(s), 3) for s in spacing_xyz)
    return _cached_lut(fwhm, spacing)  # type: ignore[arg-type]


def _check_lut(volumes: Sequence[float], fractions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    try:
        v = np.asarray(volumes, dtype=float).ravel()
        t = np.asarray(fractions, dtype=float).ravel()
    except (TypeError, ValueError):
        raise InputError("lut_volumes_ml and lut_fractions must be sequences of numbers") from None
    if v.size != t.size or v.size < 2:
        raise InputError(f"lut_volumes_ml and lut_fractions must have the same length >= 2 (got {v.size} and {t.size})")
    if not (np.all(np.isfinite(v)) and np.all(v > 0) and np.all(np.diff(v) > 0)):
        raise InputError("lut_volumes_ml must be positive and strictly increasing (mL)")
    if not (np.all(np.isfinite(t)) and np.all((t > 0) & (t < 1))):
        raise InputError("lut_fractions must lie strictly between 0 and 1")
    return v, t


# --------------------------------------------------------------------------------------------------
# Iteration helpers


def _background_and_contrast(ctx: LesionContext, background: sitk.Image | None, *, statistic: str, inner_mm: float,
                             outer_mm: float, what: str) -> tuple[BackgroundEstimate, float]:
    bg = ctx.background(background, statistic=statistic, inner_mm=inner_mm, outer_mm=outer_mm)
    check_contrast(ctx, bg, what)
    return bg, ctx.suv_max - bg.value


def _check_iteration_parameters(rel_tol: float, max_iterations: int) -> float:
    rel_tol = check_fraction("rel_tol", rel_tol, 0.0, 0.5)
    if int(max_iterations) != max_iterations or max_iterations < 1:
        raise InputError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    return rel_tol


def _not_converged(what: str, max_iterations: int, history: list[dict[str, float]]) -> ProcessingError:
    tail = "; ".join(f"T={h['threshold']:.4g}, V={h['volume_ml']:.3g} mL" for h in history[-3:])
    return ProcessingError(f"{what} did not converge within {max_iterations} iterations ({tail}); the lesion is "
                           "probably not sphere-like or homogeneous enough for this method")


# --------------------------------------------------------------------------------------------------
# Jentzen ITM


def threshold_itm(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fwhm_mm: float | Sequence[float] = DEFAULT_FWHM_MM,
    lut_volumes_ml: Sequence[float] | None = None,
    lut_fractions: Sequence[float] | None = None,
    start_fraction: float = 0.5,
    rel_tol: float = 0.01,
    max_iterations: int = 30,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """Jentzen's iterative thresholding method (ITM), model-based form (registry name ``iterative``).

    Jentzen W, Freudenberg L, Eising EG, Heinze M, Brandau W, Bockisch A. Segmentation of PET volumes by
    iterative image thresholding. J Nucl Med 2007;48:108-114. Model-based look-up as in PMOD's
    implementation (note §4.1).

    Algorithm: ``t_0 = start_fraction`` (0.5); ``T_k = BG + t_k (SUVmax - BG)``;
    ``V_k = |CC_seed(I >= T_k)|`` (mL, cavities filled); ``t_{k+1} = LUT(V_k)`` (linear in log V); stop
    when ``|V_k - V_{k-1}| <= max(rel_tol V_k, one voxel)`` (default 1 %; the voxel floor stops a
    small lesion flipping one voxel forever). Not converged within ``max_iterations`` (30):
    :class:`ProcessingError`.

    Parameters
    ----------
    fwhm_mm : effective image resolution (FWHM in mm, one value or x, y, z), the key input. Default 6 mm
        (a design default, not a property of your scanner: **measure it**, e.g. from a sphere or edge fit,
        or ``sqrt(FWHM_sys^2 + FWHM_filter^2)``, or fit it with :mod:`.calibration`). The LUT is built for
        this FWHM on the PET's own voxel grid (:func:`model_lut`, cached per FWHM and voxel size).
    lut_volumes_ml, lut_fractions : a measured table t(V) instead of the model (Jentzen's original form,
        threshold-volume curves measured with sphere phantoms), e.g. from :mod:`.calibration`; ``t`` as
        ``(T - BG)/(SUVmax - BG)``. When given, ``fwhm_mm`` is not used.
    start_fraction, rel_tol, max_iterations : see above.
    bg_statistic, bg_inner_mm, bg_outer_mm, background : background (median of the 10-20 mm shell, or the
        reference VOI), recorded in ``details["background"]``.
    roi_radius_mm, saddle_fraction, fill_holes : the one-click region rules (:mod:`.thresholds`).

    Deviations: the lesion reference is SUVmax (the 2007 paper's enclosed maximum); Jentzen 2015 (J Nucl
    Med Technol 43:28) uses the delineation-averaged signal instead, not implemented. The LUT is
    one-dimensional because SBR cancels in the linear blur model (see :func:`sphere_threshold_fractions`).
    Volumes outside the table (0.03-270 mL for the model) use the end value and add a warning; a contour
    that converges below half the table's smallest volume is refused (ProcessingError: the small-volume
    end of the ITM's fixed points is a few voxels, not a lesion).
    Assumes a sphere-like homogeneous lesion: necrotic or irregular H&N primaries are biased.
    Any intensity units.
    """
    rel_tol = _check_iteration_parameters(rel_tol, max_iterations)
    start_fraction = check_fraction("start_fraction", start_fraction)
    if (lut_volumes_ml is None) != (lut_fractions is None):
        raise InputError("give both lut_volumes_ml and lut_fractions, or neither")
    if lut_volumes_ml is not None:
        volumes, fractions = _check_lut(lut_volumes_ml, lut_fractions)  # type: ignore[arg-type]
        lut_source = "measured table (lut_volumes_ml, lut_fractions)"
    else:
        _fwhm_xyz(fwhm_mm)
        volumes, fractions = None, None
        lut_source = f"model: homogeneous spheres blurred with FWHM {fwhm_mm} mm on the PET voxel grid"
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    if volumes is None:
        volumes, fractions = model_lut(fwhm_mm, suv.GetSpacing())
    bg, contrast = _background_and_contrast(ctx, background, statistic=bg_statistic, inner_mm=bg_inner_mm,
                                           outer_mm=bg_outer_mm, what="ITM")
    voxel_ml = float(np.prod(suv.GetSpacing())) / 1000.0
    log_v = np.log(volumes)

    t = start_fraction
    threshold = bg.value + t * contrast
    component = ctx.segment(threshold, fill_holes)
    volume = float(component.sum()) * voxel_ml
    history = [{"fraction": t, "threshold": threshold, "volume_ml": volume}]
    converged = False
    outside = False
    for _ in range(int(max_iterations)):
        outside = outside or not (volumes[0] <= volume <= volumes[-1])
        t = float(np.interp(np.log(volume), log_v, fractions))
        threshold = bg.value + t * contrast
        component = ctx.segment(threshold, fill_holes)
        new_volume = float(component.sum()) * voxel_ml
        history.append({"fraction": t, "threshold": threshold, "volume_ml": new_volume})
        change = abs(new_volume - volume)
        volume = new_volume
        if change <= max(rel_tol * new_volume, voxel_ml * 1.0001):
            converged = True
            break
    if not converged:
        raise _not_converged("the ITM iteration", max_iterations, history)
    if volume < 0.5 * volumes[0]:
        raise ProcessingError(f"the ITM converged to {volume:.3g} mL, less than half the smallest volume of its "
                              f"look-up table ({volumes[0]:.3g} mL): the lesion is too small or too faint for this "
                              "method")
    parameters: dict[str, Any] = {
        "fwhm_mm": None if lut_volumes_ml is not None else fwhm_mm, "start_fraction": start_fraction,
        "rel_tol": rel_tol, "max_iterations": int(max_iterations),
        **background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm, background),
        **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    result = ctx.result("iterative", component, parameters, threshold, reference_value=ctx.suv_max, background=bg,
                        details={"iterations": len(history) - 1, "converged": True, "history": history,
                                 "fraction": t, "sbr": ctx.suv_max / bg.value if bg.value > 0 else None,
                                 "lut": lut_source})
    if outside:
        result.details["warnings"].append(
            f"the volume left the look-up table's range ({volumes[0]:.3g}-{volumes[-1]:.3g} mL) during the "
            "iteration; the table's end value was used there")
    return result


# --------------------------------------------------------------------------------------------------
# van Dalen


def threshold_van_dalen(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fraction: float = 0.5,
    start_fraction: float = 0.5,
    rel_tol: float = 0.01,
    max_iterations: int = 50,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """van Dalen et al. 2007 iterative background-corrected mean-based threshold (registry name ``vandalen``).

    van Dalen JA, Hoffmann AL, Dicken V, Vogel WV, Wiering B, Ruers TJ, Karssemeijer N, Oyen WJG. A novel
    iterative method for lesion delineation and volumetric quantification with FDG PET. Nucl Med Commun
    2007;28:485-493.

    Algorithm (the note's generic form, §4.2): ``M_0 = CC_seed(I >= BG + start_fraction (SUVmax - BG))``;
    ``T_k = BG + fraction (mean(I | M_{k-1}) - BG)`` with the mean over the uptake voxels of the previous
    contour (before cavity filling); stop when ``|T_k - T_{k-1}| <= rel_tol (T_k - BG)`` (default 1 % of
    the threshold's height above background) or the contour no longer changes. Not converged within
    ``max_iterations`` (50): :class:`ProcessingError`.

    Parameters
    ----------
    fraction : dimensionless, default 0.5. **The paper's fraction was not retrieved (note §4.2/§13); 0.5 is
        a placeholder to calibrate** (:mod:`.calibration`). It is the large-lesion limit of the
        half-contrast rule (the mean of a large homogeneous lesion tends to its uptake, whose edge lies at
        half the contrast under a linear blur); for mid-sized lesions the blurred rim lowers the mean and
        the sphere's curvature lowers the edge level by similar amounts, so 0.5 stays close there too.
    start_fraction, rel_tol, max_iterations : see above.
    bg_statistic, bg_inner_mm, bg_outer_mm, background : background (median of the 10-20 mm shell, or the
        reference VOI), recorded in ``details["background"]``.
    roi_radius_mm, saddle_fraction, fill_holes : the one-click region rules (:mod:`.thresholds`).

    Mean-based, so less noise-sensitive than max-based thresholds. Any intensity units.
    """
    fraction = check_fraction("fraction", fraction)
    start_fraction = check_fraction("start_fraction", start_fraction)
    rel_tol = _check_iteration_parameters(rel_tol, max_iterations)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    bg, contrast = _background_and_contrast(ctx, background, statistic=bg_statistic, inner_mm=bg_inner_mm,
                                           outer_mm=bg_outer_mm, what="the van Dalen method")
    voxel_ml = float(np.prod(suv.GetSpacing())) / 1000.0
    threshold = bg.value + start_fraction * contrast
    uptake = ctx.segment(threshold, holes=False)
    history = [{"threshold": threshold, "volume_ml": float(uptake.sum()) * voxel_ml,
                "mean": float(ctx.sub[uptake].mean())}]
    converged = False
    for _ in range(int(max_iterations)):
        mean = history[-1]["mean"]
        new = bg.value + fraction * (mean - bg.value)
        if not new > bg.value:
            raise ProcessingError(f"the van Dalen threshold fell to the background {bg.value:.4g}: the lesion has no "
                                  "usable contrast")
        new_uptake = ctx.segment(new, holes=False)
        history.append({"threshold": new, "volume_ml": float(new_uptake.sum()) * voxel_ml,
                        "mean": float(ctx.sub[new_uptake].mean())})
        step = abs(new - threshold)
        same = np.array_equal(new_uptake, uptake)
        threshold, uptake = new, new_uptake
        if same or step <= rel_tol * (new - bg.value):
            converged = True
            break
    if not converged:
        raise _not_converged("the van Dalen iteration", max_iterations, history)
    component = ctx.segment(threshold, fill_holes)
    mean = float(ctx.sub[uptake].mean())
    parameters = {"fraction": fraction, "start_fraction": start_fraction, "rel_tol": rel_tol,
                  "max_iterations": int(max_iterations),
                  **background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm, background),
                  **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    return ctx.result("vandalen", component, parameters, threshold, reference_value=mean, background=bg,
                      details={"iterations": len(history) - 1, "converged": True, "history": history,
                               "lesion_mean": mean})
