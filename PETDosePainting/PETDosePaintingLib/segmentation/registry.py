"""The registry of PET segmentation methods: one name per method, used by the CLI, panels and batch.

Each entry wraps a library function with the common signature of
:mod:`PETDosePaintingLib.segmentation.common` and says what the method needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

from ..errors import InputError
from .adaptive import threshold_black, threshold_daisne, threshold_nestle, threshold_schaefer
from .clustering import fcm_s_segmentation, fcm_segmentation, gmm_segmentation
from .common import SegmentationResult
from .consensus import consensus_segmentation
from .cosegmentation import random_walker_cosegmentation
from .gradient import segment_gradient
from .iterative import threshold_itm, threshold_van_dalen
from .thresholds import (
    threshold_a50p,
    threshold_absolute,
    threshold_background_subtracted,
    threshold_fraction_of_max,
    threshold_fraction_of_peak,
)


@dataclass(frozen=True)
class MethodInfo:
    """A registered segmentation method."""

    name: str
    function: Callable[..., SegmentationResult]
    description: str
    needs_suv: bool = False  #: the image must be in SUV units (absolute thresholds)
    needs_ct: bool = False  #: a CT on the PET grid is required (co-segmentation)
    parameters: tuple[str, ...] = ()  #: keyword parameters the method accepts


def _threshold(suv: sitk.Image, seed_lps, roi=None, background=None, *, fraction: float | None = None,
               absolute: float | None = None, **kwargs: Any) -> SegmentationResult:
    """``threshold``: an absolute SUV if ``absolute`` is given, else ``fraction`` of SUVmax (default 0.41)."""
    if fraction is not None and absolute is not None:
        raise InputError("give either a fraction of SUVmax or an absolute SUV threshold, not both")
    if absolute is not None:
        return threshold_absolute(suv, seed_lps, roi, background, absolute=absolute, **kwargs)
    return threshold_fraction_of_max(suv, seed_lps, roi, background,
                                     fraction=0.41 if fraction is None else fraction, **kwargs)


METHODS: dict[str, MethodInfo] = {
    "gradient": MethodInfo(
        "gradient", segment_gradient,
        "gradient method (Geets 2007): denoise + deblur with the scanner FWHM, gradient, watershed, "
        "hierarchical merging, steepest-boundary level; needs only --fwhm",
        parameters=("fwhm_mm", "roi_radius_mm", "max_roi_radius_mm", "working_voxel_mm", "max_working_voxels",
                    "denoise_method", "deblur_method", "iterations", "count_scale", "sigma_spatial_mm", "sigma_range",
                    "gradient_sigma_mm", "watershed_level", "level_score", "safeguard_fraction",
                    "separation_fraction", "min_contrast_sd", "min_volume_ml", "enclosure_search_mm", "refine_edges",
                    "fill", "ct", "ct_interpolation", "ct_air_hu", "ct_bone_hu", "subresolution_radius_mm"),
    ),
    "threshold": MethodInfo(
        "threshold", _threshold,
        "fixed threshold: a fraction of SUVmax (default 41 %, EANM) or an absolute SUV (e.g. 2.5)",
        parameters=("fraction", "absolute", "roi_radius_mm", "saddle_fraction"),
    ),
    # Threshold family (thresholds.py, adaptive.py, iterative.py). Background parameters: bg_statistic,
    # bg_inner_mm, bg_outer_mm (or a reference VOI as ``background``); constants from calibration.py.
    "peak": MethodInfo(
        "peak", threshold_fraction_of_peak,
        "fraction of SUVpeak (default 50 %; SUVpeak = 12 mm moving sphere, Lodge 2012)",
        parameters=("fraction", "peak_diameter_mm", "roi_radius_mm", "saddle_fraction", "fill_holes"),
    ),
    "bgsub": MethodInfo(
        "bgsub", threshold_background_subtracted,
        "background-subtracted: T = BG + f (SUVmax - BG) (f 0.5; or of SUVpeak with reference='peak')",
        parameters=("fraction", "reference", "peak_diameter_mm", "bg_statistic", "bg_inner_mm", "bg_outer_mm",
                    "roi_radius_mm", "saddle_fraction", "fill_holes"),
    ),
    "a50p": MethodInfo(
        "a50p", threshold_a50p,
        "A50P: background-subtracted 50 % of SUVpeak, T = 0.5 (SUVpeak + BG), local soft-tissue BG",
        parameters=("fraction", "peak_diameter_mm", "bg_statistic", "bg_inner_mm", "bg_outer_mm", "roi_radius_mm",
                    "saddle_fraction", "fill_holes"),
    ),
    "nestle": MethodInfo(
        "nestle", threshold_nestle,
        "Nestle 2005: T = beta x mean(>= 70 % SUVmax) + BG (beta 0.15, calibrate)",
        parameters=("beta", "core_fraction", "bg_statistic", "bg_inner_mm", "bg_outer_mm", "roi_radius_mm",
                    "saddle_fraction", "fill_holes"),
    ),
    "schaefer": MethodInfo(
        "schaefer", threshold_schaefer,
        "Schaefer 2008 contrast-oriented: T = a x SUV70 + b x BG (placeholders a = b = 0.5, calibrate)",
        parameters=("schaefer_a", "schaefer_b", "core_fraction", "bg_statistic", "bg_inner_mm", "bg_outer_mm",
                    "roi_radius_mm", "saddle_fraction", "fill_holes"),
    ),
    "daisne": MethodInfo(
        "daisne", threshold_daisne,
        "Daisne 2003 SBR curve: T = SUVmax (a + b / SBR), SBR = SUVmax/BG (assumed a = b = 0.5, calibrate)",
        parameters=("daisne_a", "daisne_b", "bg_statistic", "bg_inner_mm", "bg_outer_mm", "roi_radius_mm",
                    "saddle_fraction", "fill_holes"),
    ),
    "black": MethodInfo(
        "black", threshold_black,
        "Black 2004: SUV_thr = 0.307 SUV_mean + 0.588, iterated from a 40 % contour (calibrate)",
        needs_suv=True,
        parameters=("black_slope", "black_intercept", "start_fraction", "rel_tol", "max_iterations", "roi_radius_mm",
                    "saddle_fraction", "fill_holes"),
    ),
    "iterative": MethodInfo(
        "iterative", threshold_itm,
        "Jentzen 2007 ITM: T = BG + t(V) (SUVmax - BG) iterated with a sphere LUT for the scanner FWHM",
        parameters=("fwhm_mm", "lut_volumes_ml", "lut_fractions", "start_fraction", "rel_tol", "max_iterations",
                    "bg_statistic", "bg_inner_mm", "bg_outer_mm", "roi_radius_mm", "saddle_fraction", "fill_holes"),
    ),
    "vandalen": MethodInfo(
        "vandalen", threshold_van_dalen,
        "van Dalen 2007: T = BG + f (mean inside the contour - BG) iterated (f 0.5, calibrate)",
        parameters=("fraction", "start_fraction", "rel_tol", "max_iterations", "bg_statistic", "bg_inner_mm",
                    "bg_outer_mm", "roi_radius_mm", "saddle_fraction", "fill_holes"),
    ),
    "fcm": MethodInfo(
        "fcm", fcm_segmentation,
        "fuzzy C-means of the uptake (Bezdek 1981), 2 classes by default; boundary at the midpoint of the centroids",
        parameters=("n_clusters", "fuzziness", "decision", "n_sd", "roi_radius_mm", "saddle_fraction", "tol",
                    "max_iter"),
    ),
    "fcm_s": MethodInfo(
        "fcm_s", fcm_s_segmentation,
        "FCM-S: fuzzy C-means on the uptake and its anisotropic-diffusion smoothing (Belhassen & Zaidi 2010)",
        parameters=("n_clusters", "fuzziness", "spatial_weight", "diffusion_iterations", "diffusion_conductance",
                    "decision", "n_sd", "roi_radius_mm", "saddle_fraction", "tol", "max_iter"),
    ),
    "gmm": MethodInfo(
        "gmm", gmm_segmentation,
        "Gaussian mixture with partial-volume components (EM, classes by BIC) and a Potts prior (ICM)",
        parameters=("n_classes", "classes_range", "n_levels", "beta", "icm_sweeps", "connectivity", "decision",
                    "n_sd", "roi_radius_mm", "saddle_fraction"),
    ),
    "randomwalker": MethodInfo(
        "randomwalker", random_walker_cosegmentation,
        "PET/CT(/MR) co-segmentation by a multichannel random walker (Grady 2006; Bagci et al. 2013); "
        "the CT must be on the PET grid",
        needs_ct=True,
        parameters=("ct", "mr", "pet_weight", "ct_weight", "mr_weight", "beta", "foreground_fraction",
                    "background_sd", "ct_window", "air_hu", "bone_hu", "exclude_air", "exclude_bone", "border_voxels",
                    "tol", "modality_extents", "roi_radius_mm", "saddle_fraction"),
    ),
    "consensus": MethodInfo(
        "consensus", consensus_segmentation,
        "consensus of several methods on the same click: majority vote (k of N, MV2, MV3) or STAPLE",
        parameters=("methods", "rule", "k", "margin_mm", "method_parameters", "ct", "roi_radius_mm",
                    "saddle_fraction"),
    ),
}


def register_method(info: MethodInfo) -> None:
    """Add (or replace) a method in the registry."""
    METHODS[info.name] = info


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def get_method(name: str) -> MethodInfo:
    """The method called ``name``; :class:`InputError` listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown segmentation method {name!r}; choose one of {', '.join(METHODS)}") from None


def run_method(name: str, suv: sitk.Image, seed_lps: Sequence[float] | None, roi: sitk.Image | None = None,
               background: sitk.Image | None = None, **parameters: Any) -> SegmentationResult:
    """Run the method ``name``; parameters it does not accept are refused with a clear message."""
    info = get_method(name)
    unknown = sorted(k for k, v in parameters.items() if v is not None and k not in info.parameters)
    if unknown:
        raise InputError(f"method {name!r} does not take {', '.join(unknown)} "
                         f"(it takes {', '.join(info.parameters) or 'no parameters'})")
    given = {k: v for k, v in parameters.items() if v is not None}
    return info.function(suv, seed_lps, roi, background, **given)
