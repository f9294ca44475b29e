"""Adaptive (contrast- and background-aware) PET thresholds: Nestle, Schaefer, Daisne, Black (note §3).

All four have the common signature ``method(suv, seed_lps, roi=None, background=None, **params)`` and work
in the seed's own uptake hill like the fixed thresholds (see :mod:`.thresholds`: one click, a neighbour
never enters SUVmax, the background or the mask; cavities filled by default).

Their constants are **calibration outputs**: published values were derived on specific scanners and
reconstructions (and the primary full texts were not re-checked for this implementation, note §13 [M]).
Calibrate them for your protocol with :mod:`.calibration` and pass the fitted values as keyword
parameters (``CalibrationResult.parameters_for(name)``).

Background (Nestle, Schaefer, Daisne): the shell of :mod:`.background` by default, or the reference VOI
given as ``background``; the definition is recorded in ``details["background"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ProcessingError
from ..imaging.image import SUV_UNITS, require_units
from .common import DEFAULT_ROI_RADIUS_MM, SegmentationResult
from .thresholds import (
    background_parameters,
    check_above_background,
    check_below_max,
    check_contrast,
    check_fraction,
    locate_lesion,
    region_parameters,
)


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number) or (positive and number <= 0):
        raise InputError(f"{name} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return number


def threshold_nestle(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    beta: float = 0.15,
    core_fraction: float = 0.7,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """Nestle et al. 2005 background-adapted threshold ``T = beta * I_mean70 + I_BG`` (registry ``nestle``).

    Nestle U, Kremp S, Schaefer-Schuler A, et al. Comparison of different methods for delineation of
    18F-FDG PET-positive tissue for target volume definition in radiotherapy of patients with non-small
    cell lung cancer. J Nucl Med 2005;46:1342-1348.

    Parameters
    ----------
    beta : dimensionless, default 0.15: the phantom-derived value quoted for the paper (note §3.2, [M],
        not re-checked against the full text). **It is scanner- and reconstruction-specific: calibrate it**
        (:mod:`.calibration`). Under a pure Gaussian blur 0.15 puts the contour well outside the
        half-contrast level, i.e. it overestimates volumes of well-resolved lesions.
    core_fraction : ``I_mean70`` is the mean of the connected voxels at or above ``core_fraction`` x SUVmax
        around SUVmax, default 0.7 (the paper's 70 %).
    bg_statistic, bg_inner_mm, bg_outer_mm : background (median, 10-20 mm shell), or the ``background``
        reference VOI. The paper used the mean of a background region; the median is this project's
        default (robust to residual hot voxels), pass ``bg_statistic="mean"`` for the paper's form.
    roi_radius_mm, saddle_fraction, fill_holes : the one-click region rules (:mod:`.thresholds`).

    Works on any intensity units (all terms scale together). ``reference_value`` is ``I_mean70``.
    """
    beta = _number("beta", beta, positive=True)
    core_fraction = check_fraction("core_fraction", core_fraction)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    bg = ctx.background(background, statistic=bg_statistic, inner_mm=bg_inner_mm, outer_mm=bg_outer_mm)
    check_contrast(ctx, bg, "the Nestle threshold")
    mean70, n70 = ctx.core_mean(core_fraction)
    threshold = beta * mean70 + bg.value
    check_below_max(ctx, threshold, "Nestle")
    check_above_background(threshold, bg.value, "Nestle")
    component = ctx.segment(threshold, fill_holes)
    parameters = {"beta": beta, "core_fraction": core_fraction,
                  **background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm, background),
                  **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    return ctx.result("nestle", component, parameters, threshold, reference_value=mean70, background=bg,
                      details={"i_mean70": mean70, "core_voxels": n70})


def threshold_schaefer(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    schaefer_a: float = 0.5,
    schaefer_b: float = 0.5,
    core_fraction: float = 0.7,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """Schaefer et al. 2008 contrast-oriented threshold ``T = a * SUV70 + b * BG`` (registry ``schaefer``).

    Schaefer A, Kremp S, Hellwig D, Rübe C, Kirsch CM, Nestle U. A contrast-oriented algorithm for
    FDG-PET-based delineation of tumour volumes for the radiotherapy of lung cancer: derivation from
    phantom measurements and validation in patient data. EJNMMI 2008;35:1989-1999.

    Parameters
    ----------
    schaefer_a, schaefer_b : dimensionless regression constants. **The published values were not
        retrieved (note §3.4/§13); the defaults a = b = 0.5 are placeholders to calibrate**
        (:mod:`.calibration`). They are defensible: with ``a + b = 1`` the threshold is
        ``BG + a (SUV70 - BG)``, a uniform image gives ``T = BG``, and with a = 0.5 the contour of a large
        homogeneous lesion (SUV70 tending to its uptake) sits at half its contrast, i.e. on its edge under a
        linear shift-invariant blur. Smaller lesions: SUV70 falls with the partial-volume effect and the
        volume is overestimated unless recalibrated.
    core_fraction : SUV70 is the mean of the connected voxels at or above ``core_fraction`` x SUVmax,
        default 0.7 (the paper's 70 %).
    bg_statistic, bg_inner_mm, bg_outer_mm, background : see :func:`threshold_nestle`.
    roi_radius_mm, saddle_fraction, fill_holes : the one-click region rules (:mod:`.thresholds`).

    Deviation: the paper (and its 2012 multi-centre follow-up) calibrated a and b on phantoms and
    applied them to lung tumours; no scanner-specific constants are built in here. Any intensity units.
    """
    schaefer_a = _number("schaefer_a", schaefer_a, positive=True)
    schaefer_b = _number("schaefer_b", schaefer_b)
    core_fraction = check_fraction("core_fraction", core_fraction)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    bg = ctx.background(background, statistic=bg_statistic, inner_mm=bg_inner_mm, outer_mm=bg_outer_mm)
    check_contrast(ctx, bg, "the Schaefer threshold")
    suv70, n70 = ctx.core_mean(core_fraction)
    threshold = schaefer_a * suv70 + schaefer_b * bg.value
    check_below_max(ctx, threshold, "Schaefer")
    check_above_background(threshold, bg.value, "Schaefer")
    component = ctx.segment(threshold, fill_holes)
    parameters = {"schaefer_a": schaefer_a, "schaefer_b": schaefer_b, "core_fraction": core_fraction,
                  **background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm, background),
                  **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    return ctx.result("schaefer", component, parameters, threshold, reference_value=suv70, background=bg,
                      details={"suv70": suv70, "core_voxels": n70})


def daisne_fraction(sbr: float, daisne_a: float = 0.5, daisne_b: float = 0.5) -> float:
    """The Daisne calibration curve: threshold as a fraction of SUVmax, ``a + b / SBR``."""
    return daisne_a + daisne_b / sbr


def threshold_daisne(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    daisne_a: float = 0.5,
    daisne_b: float = 0.5,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """Daisne et al. 2003 SBR-calibrated threshold ``T = SUVmax * (a + b / SBR)``, SBR = SUVmax / BG (``daisne``).

    Daisne JF, Sibomana M, Bol A, Doumont T, Lonneux M, Grégoire V. Tri-dimensional automatic segmentation
    of PET volumes based on measured source-to-background ratios: influence of reconstruction algorithms.
    Radiother Oncol 2003;69:247-250.

    Parameters
    ----------
    daisne_a, daisne_b : the curve ``T/SUVmax = a + b / SBR`` (dimensionless). **The published curve was
        not retrieved (note §3.1/§13); the default a = b = 0.5 is an assumption to calibrate**
        (:mod:`.calibration`): it is the curve of a large homogeneous lesion under a linear,
        shift-invariant blur, whose edge lies at half its contrast, ``T = BG + 0.5 (SUVmax - BG)``,
        i.e. ``T/SUVmax = 0.5 + 0.5/SBR`` (75 % at SBR 2, 55 % at SBR 10). The note recalls the paper's
        curve as 60-70 % at SBR 2 falling to about 40 % at SBR >= 10 [M] (a = 0.35, b = 0.6 would mimic
        it); that shape reflects their scanner and reconstruction, not a general law.
    bg_statistic, bg_inner_mm, bg_outer_mm, background : see :func:`threshold_nestle`.
    roi_radius_mm, saddle_fraction, fill_holes : the one-click region rules (:mod:`.thresholds`).

    Deviations: SBR is measured as SUVmax / BG (the paper measured source activity in the hottest voxels
    over background); the curve form ``a + b/SBR`` is one of the note's suggested fits (the paper's form
    may differ). Known weakness: assumes a homogeneous sphere-like lesion; Geets et al. 2007 found this
    method overestimated 7 laryngeal specimens by 68 %. Any intensity units.
    """
    daisne_a = _number("daisne_a", daisne_a)
    daisne_b = _number("daisne_b", daisne_b)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    bg = ctx.background(background, statistic=bg_statistic, inner_mm=bg_inner_mm, outer_mm=bg_outer_mm)
    check_contrast(ctx, bg, "the Daisne threshold")
    if not bg.value > 0:
        raise ProcessingError(f"the background {bg.value:.4g} is not positive, so the source-to-background ratio "
                              f"is undefined ({bg.definition})")
    sbr = ctx.suv_max / bg.value
    fraction = daisne_fraction(sbr, daisne_a, daisne_b)
    if not 0.0 < fraction < 1.0:
        raise ProcessingError(f"the Daisne curve gives {100 * fraction:.1f} % of SUVmax at SBR {sbr:.3g}, outside "
                              "0-100 %: check daisne_a and daisne_b")
    threshold = fraction * ctx.suv_max
    check_above_background(threshold, bg.value, "Daisne")
    component = ctx.segment(threshold, fill_holes)
    parameters = {"daisne_a": daisne_a, "daisne_b": daisne_b,
                  **background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm, background),
                  **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    return ctx.result("daisne", component, parameters, threshold, reference_value=ctx.suv_max, background=bg,
                      details={"sbr": sbr, "fraction_of_max": fraction})


def threshold_black(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    black_slope: float = 0.307,
    black_intercept: float = 0.588,
    start_fraction: float = 0.4,
    rel_tol: float = 0.01,
    max_iterations: int = 50,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """Black et al. 2004 ``SUV_thr = 0.307 * SUV_mean + 0.588``, iterated to convergence (registry ``black``).

    Black QC, Grills IS, Kestin LL, et al. Defining a radiotherapy target with positron emission
    tomography. IJROBP 2004;60:1272-1282.

    Iteration (the mean depends on the contour, note §3.3): start from ``CC_seed(I >= start_fraction x
    SUVmax)`` (default 40 %), take ``SUV_mean`` of the voxels of the current contour (before cavity
    filling: the uptake voxels), set ``T = slope * SUV_mean + intercept``, re-segment; stop when
    ``|T_k - T_{k-1}| <= rel_tol * T_k`` (default 1 %). No convergence within ``max_iterations``
    (default 50) raises :class:`ProcessingError`; the threshold history is in ``details["history"]``.

    Parameters
    ----------
    black_slope : dimensionless, default 0.307; black_intercept : SUV, default 0.588. Both from the
        paper's phantom regression as quoted in the note (§3.3, [M], not re-checked). **They are specific
        to that scanner and reconstruction era: calibrate them** (:mod:`.calibration`).
    start_fraction, rel_tol, max_iterations : see above.
    roi_radius_mm, saddle_fraction, fill_holes : the one-click region rules (:mod:`.thresholds`).

    Needs an SUV image (the intercept is in SUV). No background term (the paper has none); the result's
    ``background`` is ``None`` and a threshold at or below the rough level around the lesion raises
    :class:`ProcessingError` (low-contrast lesions make the formula flood).
    """
    require_units(suv, SUV_UNITS, "PET image")
    black_slope = _number("black_slope", black_slope, positive=True)
    black_intercept = _number("black_intercept", black_intercept)
    start_fraction = check_fraction("start_fraction", start_fraction)
    rel_tol = check_fraction("rel_tol", rel_tol, 0.0, 0.5)
    if int(max_iterations) != max_iterations or max_iterations < 1:
        raise InputError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    rough_bg = float(ctx.region.background)
    threshold = start_fraction * ctx.suv_max
    history = [threshold]
    converged = False
    for _ in range(int(max_iterations)):
        component = ctx.segment(threshold, holes=False)
        suv_mean = float(ctx.sub[component].mean())
        new = black_slope * suv_mean + black_intercept
        check_below_max(ctx, new, "Black")
        check_above_background(new, rough_bg, "Black")
        history.append(new)
        step = abs(new - threshold)
        threshold = new
        if step <= rel_tol * new:
            converged = True
            break
    if not converged:
        raise ProcessingError(f"the Black iteration did not converge within {max_iterations} iterations "
                              f"(thresholds {', '.join(f'{t:.4g}' for t in history[-4:])})")
    component = ctx.segment(threshold, fill_holes)
    suv_mean = float(ctx.sub[ctx.segment(threshold, holes=False)].mean())
    parameters = {"black_slope": black_slope, "black_intercept": black_intercept, "start_fraction": start_fraction,
                  "rel_tol": rel_tol, "max_iterations": int(max_iterations),
                  **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    return ctx.result("black", component, parameters, threshold, reference_value=suv_mean,
                      details={"suv_mean": suv_mean, "iterations": len(history) - 1, "converged": True,
                               "history": history, "rough_background": rough_bg})
