"""GTV on an anatomical image (CT, MR) from one click: marker-controlled watershed of the gradient.

The flooding watershed of a gradient image, started from markers instead of from every regional minimum,
puts one boundary between each pair of marker regions, on the crest of the gradient between them (Beucher
& Meyer, "The morphological approach to segmentation: the watershed transformation", in Dougherty (ed.),
Mathematical Morphology in Image Processing, Marcel Dekker 1993, pp. 433-481; flooding algorithm of Vincent
& Soille, IEEE TPAMI 1991;13:583-598, as implemented by ``skimage.segmentation.watershed``). Here the
markers come from the click and from the contrast between the clicked tissue and its surroundings, so the
contour follows the strongest edge between "clearly like the click" and "clearly not", wherever that
edge lies between the two levels: in a heterogeneous tumour that is more robust than a fixed fraction
threshold, and it needs no modality-specific intensity (HU, T1/T2 signal) other than what the image shows.

It is the project's stand-in for a GTV drawn on CT or MRI (GTV_CT, GTV_MRI of the comparison module,
``dose_painting.md`` §4.1), used by the demo to compare modalities. It is not a validated delineation
method: on real CT the tumour is often iso-dense to muscle and on MRI oedema and inflammation show the same
signal as tumour, so a clinician's contour remains the reference. Measured on the digital patient (quick and
full, seed 0): Dice 0.79-0.84 with the CT truth (contrast CT), 0.75 (T2w) and 0.78-0.80 (T1w) with the MR
truth, over-estimating (sensitivity 0.76-1.0, PPV 0.6-0.94), most of the excess in the peritumoral
inflammation rim, which anatomical images show as tumour-like.

Steps (lengths in mm, the image's own units for intensities):

1. working region: a sphere of ``roi_radius_mm`` (default 40) at the click, or the given ROI
   (:func:`~.common.working_region`);
2. smoothing: Gaussian of ``smoothing_mm`` (default 1.0, the sigma; SimpleITK's recursive Gaussian);
3. levels: ``L_t`` = median of the smoothed image within ``core_radius_mm`` (default 4) of the click,
   ``L_s`` = the mode of the smoothed values at least ``surround_inner_mm`` (default 15) from the click (the
   dominant surrounding tissue; histogram of 200 bins smoothed over 2 bins); contrast ``C = L_t - L_s``
   (either sign: the tumour may be brighter or darker). A contrast below ``min_contrast_sd`` (default 3)
   times the robust SD of the core refuses the click (nothing to separate);
4. relative level of each voxel ``q = (I - L_s) / C`` (0 surroundings, 1 tumour);
5. markers: tumour = the core sphere plus the face-connected region at the click with ``q`` in
   ``tumour_range`` (default 0.75-1.5); background = ``q < background_fraction`` (default 0.5),
   ``q > outlier_factor`` (default 2: much further from the surroundings than the tumour, e.g. fat or air
   on the far side), everything outside the working region and, without an ROI, the sphere's outer shell
   two voxels thick (the lesion must fit in the sphere; a user's ROI may cut it on purpose);
6. the watershed of the gradient magnitude (Gaussian derivative, sigma ``smoothing_mm``) from these
   markers; the tumour basin, holes filled (an enclosed necrotic core belongs to the GTV), its connected
   component at the click.

All defaults are design choices checked on the digital patient, not published values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imaging.image import require_finite
from .common import DEFAULT_ROI_RADIUS_MM, SegmentationResult, component_at, fill_holes, mask_image, working_region

#: Name of the method in results and reports.
METHOD_NAME = "anatomical_watershed"

_TUMOUR, _BACKGROUND = 1, 2


def segment_anatomical(
    image: sitk.Image,
    seed_lps: Sequence[float],
    roi: sitk.Image | None = None,
    *,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    smoothing_mm: float = 1.0,
    core_radius_mm: float = 4.0,
    surround_inner_mm: float = 15.0,
    tumour_range: tuple[float, float] = (0.75, 1.5),
    background_fraction: float = 0.5,
    outlier_factor: float = 2.0,
    min_contrast_sd: float = 3.0,
) -> SegmentationResult:
    """The GTV under ``seed_lps`` (LPS mm) on a CT or MR image, by marker-controlled watershed.

    Parameters are those of the module docstring. ``roi``: optional binary mask on the image's grid
    replacing the sphere. Returns a :class:`~.common.SegmentationResult` on the image's grid with
    ``reference_value`` = ``L_t`` and ``background`` = ``L_s`` (image units) and the markers' sizes in
    ``details``. Raises :class:`InputError` for a click outside the image or ROI, invalid parameters, or a
    click whose tissue does not stand out from its surroundings.
    """
    _check_parameters(roi_radius_mm=roi_radius_mm, smoothing_mm=smoothing_mm, core_radius_mm=core_radius_mm,
                      surround_inner_mm=surround_inner_mm, tumour_range=tumour_range,
                      background_fraction=background_fraction, outlier_factor=outlier_factor,
                      min_contrast_sd=min_contrast_sd)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("the anatomical image must be a 3D scalar image")
    require_finite(image, "anatomical image")
    region = working_region(image, seed_lps, roi, roi_radius_mm)
    crop = _crop(image, region.slices)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(crop, float(smoothing_mm))).astype(np.float64)
    distance = _distance_from_seed(smooth.shape, region.seed, np.asarray(image.GetSpacing())[::-1])
    inside = region.inside
    core = inside & (distance <= core_radius_mm)
    tumour_level = float(np.median(smooth[core]))
    surround = inside & (distance >= surround_inner_mm)
    if int(surround.sum()) < 50:
        raise InputError(f"only {int(surround.sum())} voxel(s) of the working region lie {surround_inner_mm:g} mm or "
                         "more from the click: enlarge roi_radius_mm or the ROI")
    surround_level = _mode(smooth[surround])
    contrast = tumour_level - surround_level
    core_sd = 1.4826 * float(np.median(np.abs(smooth[core] - tumour_level)))
    if abs(contrast) <= min_contrast_sd * core_sd or contrast == 0.0:
        raise InputError(f"the clicked tissue ({tumour_level:.4g}) does not stand out from its surroundings "
                         f"({surround_level:.4g}; core SD {core_sd:.3g}): no anatomical edge to follow here")
    q = (smooth - surround_level) / contrast
    likely = inside & (q >= tumour_range[0]) & (q <= tumour_range[1])
    likely[region.seed] = True
    tumour_marker = core | component_at(likely, region.seed, connectivity=6)  # face-connected: no diagonal leaks
    background_marker = inside & ((q < background_fraction) | (q > outlier_factor)) & ~tumour_marker
    if roi is None:  # the sphere's surface is background: the lesion must fit in the sphere (an ROI may cut it)
        background_marker |= inside & (distance > roi_radius_mm - 2.0 * float(max(image.GetSpacing()))) & ~tumour_marker
    markers = np.zeros(smooth.shape, dtype=np.int32)
    markers[background_marker] = _BACKGROUND
    markers[tumour_marker] = _TUMOUR
    markers[~inside] = _BACKGROUND
    gradient = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(crop, float(smoothing_mm)))
    from skimage.segmentation import watershed

    basins = watershed(gradient, markers)
    tumour = component_at(fill_holes(basins == _TUMOUR) & inside, region.seed)
    mask = mask_image(region.paste(tumour, image.GetSize()[::-1]), image)
    return SegmentationResult(
        method=METHOD_NAME,
        mask=mask,
        parameters={"roi_radius_mm": roi_radius_mm if roi is None else None, "smoothing_mm": smoothing_mm,
                    "core_radius_mm": core_radius_mm, "surround_inner_mm": surround_inner_mm,
                    "tumour_range": list(tumour_range), "background_fraction": background_fraction,
                    "outlier_factor": outlier_factor, "min_contrast_sd": min_contrast_sd},
        background=surround_level,
        reference_value=tumour_level,
        details={"contrast": contrast, "core_sd": core_sd, "tumour_marker_voxels": int(tumour_marker.sum()),
                 "background_marker_voxels": int(background_marker.sum()), "voxels_in_region": int(inside.sum())},
    )


def _check_parameters(*, roi_radius_mm: float, smoothing_mm: float, core_radius_mm: float, surround_inner_mm: float,
                      tumour_range: tuple[float, float], background_fraction: float, outlier_factor: float,
                      min_contrast_sd: float) -> None:
    for name, value in (("roi_radius_mm", roi_radius_mm), ("smoothing_mm", smoothing_mm),
                        ("core_radius_mm", core_radius_mm), ("surround_inner_mm", surround_inner_mm)):
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a positive length in mm, got {value!r}")
    if surround_inner_mm >= roi_radius_mm:
        raise InputError(f"surround_inner_mm ({surround_inner_mm:g}) must be smaller than roi_radius_mm "
                         f"({roi_radius_mm:g})")
    low, high = (float(v) for v in tumour_range)
    if not background_fraction < low <= 1.0 <= high < outlier_factor:
        raise InputError("need background_fraction < tumour_range[0] <= 1 <= tumour_range[1] < outlier_factor, got "
                         f"{background_fraction}, {tuple(tumour_range)}, {outlier_factor}")
    if min_contrast_sd < 0:
        raise InputError(f"min_contrast_sd must be >= 0, got {min_contrast_sd}")


def _crop(image: sitk.Image, slices: tuple[slice, slice, slice]) -> sitk.Image:
    start = [int(s.start) for s in slices][::-1]
    size = [int(s.stop - s.start) for s in slices][::-1]
    return sitk.RegionOfInterest(sitk.Cast(image, sitk.sitkFloat32), size, start)


def _distance_from_seed(shape: Sequence[int], seed: Sequence[int], spacing_kji: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-c, n - c) for c, n in zip(seed, shape, strict=True))]
    return np.sqrt(sum((g * s) ** 2 for g, s in zip(grids, spacing_kji, strict=True)))


def _mode(values: np.ndarray, bins: int = 200) -> float:
    """The most frequent value (centre of the highest bin of a histogram smoothed over 2 bins)."""
    counts, edges = np.histogram(values, bins=bins)
    peak = int(np.argmax(ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)))
    return float(0.5 * (edges[peak] + edges[peak + 1]))
