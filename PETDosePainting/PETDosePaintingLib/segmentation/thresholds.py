"""Fixed-threshold PET segmentation, and the machinery every threshold-type method shares.

Methods (all with the common signature ``method(suv, seed_lps, roi=None, background=None, **params)``):

* :func:`threshold_absolute`: ``SUV >= 2.5`` (or another absolute SUV);
* :func:`threshold_fraction_of_max`: ``I >= f SUVmax`` (41 % EANM; 40/42/50 % also used);
* :func:`threshold_fraction_of_peak`: ``I >= f SUVpeak`` (50 %);
* :func:`threshold_a50p`: ``I >= BG + 0.5 (SUVpeak - BG)`` (A50P);
* :func:`threshold_background_subtracted`: ``I >= BG + f (SUVmax - BG)`` (or SUVpeak).

How a single click is turned into a region (all methods here and in :mod:`.adaptive` and
:mod:`.iterative`): the method works inside the seed's own uptake hill,
:func:`~PETDosePaintingLib.segmentation.common.lesion_region` (the ROI if one is given, else a sphere of
``roi_radius_mm`` = 40 mm around the seed, split into hills by a watershed and merged by the saddle rule).
SUVmax, SUVpeak, the background shell and the mask are all taken inside that hill, so a neighbouring hot
structure (tonsil, gland, node, brain) beyond a saddle below ``saddle_fraction`` of the contrast never
enters them. The mask is ``CC_seed(I >= T)`` in the hill (grown from the hill's peak when the click is on
the lesion's edge), with enclosed cavities filled (``fill_holes``, default True: a necrotic core belongs to
the GTV; a core open to the surface is not a cavity and is not filled).

Safety rules (all methods of the family, see :class:`LesionContext`): a click that does not point at a
lesion is refused (:func:`locate_lesion`: :class:`~PETDosePaintingLib.errors.InputError`); a threshold
inside the background's noise (below BG + 2 SD of the shell or reference VOI) is refused, because the
contour would flood the surrounding tissue; and in one-click mode (no ROI) a contour that reaches the
edge of the working sphere is refused (:class:`~PETDosePaintingLib.errors.ProcessingError`). Every result
records in ``details``: ``suv_max`` and its LPS position, the hill size, and ``warnings`` (a list of
sentences) when the contour reaches the edge of a user ROI, or when the watershed cut stopped it from
joining a neighbouring structure above the threshold.

References
----------
* Absolute SUV 2.5: Paulino AC et al., IJROBP 2005;61:1385 (H&N use); Nestle U et al., J Nucl Med
  2005;46:1342 (comparator in NSCLC).
* Fraction of SUVmax, 41 %: Boellaard R et al., EANM procedure guidelines for tumour imaging,
  EJNMMI 2010;37:181 and 2015;42:328 (the 41 % MATV recommendation).
* SUVpeak: Lodge MA et al., J Nucl Med 2012;53:1041 (12 mm moving sphere); Wahl RL et al., J Nucl Med
  2009;50:122S (PERCIST 1.0, 1 cm3 sphere) [M].
* A50P and background-subtracted thresholds: Cheebsumon P et al., EJNMMI Res 2011;1:35 and Frings V et
  al., J Nucl Med 2010;51:1870 (A50P) [M]; Yu W et al. 2009 (BG + 20 % / 40 % of SUVmax - BG, as named
  in the research note §3.6; journal and details not verified) [M].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError, ProcessingError
from ..imaging.image import SUV_UNITS, index_to_point, require_units
from .background import BackgroundEstimate, background_from_voi, background_in_region, check_background_parameters
from .common import (
    DEFAULT_ROI_RADIUS_MM,
    LesionRegion,
    SegmentationResult,
    check_pet,
    fill_holes,
    lesion_region,
    mask_image,
    threshold_component,
    working_region,
)
from .quantify import PEAK_DIAMETER_MM, suv_peak

# --------------------------------------------------------------------------------------------------
# Shared machinery of the threshold family

#: Search radius (mm) around the click's local peak for the voxel a computed threshold grows from when
#: the peak itself is below it (PETTumorSegmentation's 7 mm "assist centering", note §1.1).
CENTRING_MM = 7.0


@dataclass
class LesionContext:
    """A lesion located from a click: the PET values, the seed's uptake hill and the hill's SUVmax."""

    suv: sitk.Image
    values: np.ndarray  #: full ``[k, j, i]`` float64 array
    region: LesionRegion  #: the seed's uptake hill (crop box + mask)
    sub: np.ndarray  #: ``values`` cropped to the region's box
    working: np.ndarray  #: the working region (ROI or sphere) in the crop, for edge checks
    spacing_kji: np.ndarray
    suv_max: float
    max_index: tuple[int, int, int]  #: crop index of SUVmax
    roi_given: bool

    def full_index(self, crop_index: Sequence[int]) -> tuple[int, int, int]:
        """Index ``(k, j, i)`` in the full array of a crop index."""
        return tuple(int(c + s.start) for c, s in zip(crop_index, self.region.slices, strict=True))  # type: ignore

    def lps(self, crop_index: Sequence[int]) -> tuple[float, float, float]:
        """LPS position (mm) of a crop index."""
        return index_to_point(self.suv, self.full_index(crop_index)[::-1])

    def segment(self, threshold: float, holes: bool = True) -> np.ndarray:
        """``CC_seed(I >= threshold)`` in the hill (crop-shaped boolean), cavities filled if ``holes``.

        Grown from the click, else from the local peak the click climbs to (``common.threshold_component``),
        else from the hottest voxel within :data:`CENTRING_MM` (7 mm) of that peak, so that voxel noise at
        the smoothed peak does not make a computed threshold miss a faint lesion (the "assist centering"
        range of PETTumorSegmentation, note §1.1). :class:`ProcessingError` if none is above the threshold.
        """
        region = self.region
        if self.sub[region.seed] < threshold and self.sub[region.seed_peak] < threshold:
            near = self._near_seed_peak()
            best = np.unravel_index(int(np.argmax(np.where(near, self.sub, -np.inf))), self.sub.shape)
            if self.sub[best] < threshold:
                raise ProcessingError(
                    f"the threshold {threshold:.4g} is above the clicked part of the lesion (its hottest voxel near "
                    f"the click is {float(self.sub[best]):.4g}, the uptake hill's SUVmax {self.suv_max:.4g}): click on "
                    "the hottest part of the lesion, or use another method")
            region = replace(region, seed_peak=tuple(int(b) for b in best))
        component = threshold_component(self.sub, region, threshold)
        return fill_holes(component) if holes else component

    def _near_seed_peak(self) -> np.ndarray:
        grids = np.ogrid[tuple(slice(0, n) for n in self.sub.shape)]
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, self.region.seed_peak, self.spacing_kji, strict=True))
        return (dist2 <= CENTRING_MM**2) & self.region.inside

    def peak(self, diameter_mm: float = PEAK_DIAMETER_MM) -> tuple[float, tuple[int, int, int]]:
        """SUVpeak in the hill: the sphere centred in the hill, averaging only hill voxels."""
        return suv_peak(self.sub, self.spacing_kji, self.region.inside, diameter_mm, support=self.region.inside)

    def core_mean(self, core_fraction: float) -> tuple[float, int]:
        """Mean and voxel count of ``CC(I >= core_fraction * SUVmax)`` around SUVmax (SUV70 for 0.7)."""
        above = (self.sub >= core_fraction * self.suv_max) & self.region.inside
        labels, _ = ndimage.label(above, structure=np.ones((3, 3, 3)))
        core = labels == labels[self.max_index]
        return float(self.sub[core].mean()), int(core.sum())

    def background(self, voi: sitk.Image | None, *, statistic: str, inner_mm: float, outer_mm: float,
                   provisional_fraction: float = 0.4, body_fraction: float = 0.3, min_voxels: int = 20
                   ) -> BackgroundEstimate:
        """BG from the reference VOI if given, else from the shell around the lesion (:mod:`.background`).

        A VOI that overlaps the lesion's upper half (voxels of the hill above half its contrast) is refused.
        """
        check_background_parameters(statistic, inner_mm, outer_mm, provisional_fraction=provisional_fraction,
                                    body_fraction=body_fraction, min_voxels=min_voxels)
        if voi is not None:
            estimate = background_from_voi(self.values, self.suv, voi, statistic)
            upper = self.region.inside & (self.sub >= self.region.background
                                          + 0.5 * (self.suv_max - self.region.background))
            overlap = int(np.count_nonzero(upper & self.region.crop(sitk.GetArrayViewFromImage(voi) != 0)))
            if overlap:
                raise InputError(f"the background VOI overlaps the lesion ({overlap} voxel(s) above half its "
                                 "contrast); draw it in normal tissue away from the lesion")
            return estimate
        return background_in_region(self.sub, self.region, self.spacing_kji, self.suv_max, statistic=statistic,
                                    inner_mm=inner_mm, outer_mm=outer_mm, provisional_fraction=provisional_fraction,
                                    body_fraction=body_fraction, min_voxels=min_voxels)

    def local_background(self) -> BackgroundEstimate | None:
        """The default shell background around the lesion, or ``None`` when the shell is too small."""
        try:
            return background_in_region(self.sub, self.region, self.spacing_kji, self.suv_max)
        except InputError:
            return None

    def check_not_flooding(self, threshold: float, background: BackgroundEstimate | None, what: str) -> None:
        """:class:`ProcessingError` if ``threshold`` is below BG + :data:`FLOOD_FLOOR_SD` SD of the background.

        ``background`` is the method's own estimate; methods without one are checked against the default
        shell (skipped when no shell fits in the working region).
        """
        bg = background if background is not None else self.local_background()
        if bg is None:
            return
        floor = bg.value + FLOOD_FLOOR_SD * bg.sd
        if threshold < floor:
            raise ProcessingError(
                f"the {what!r} threshold {threshold:.4g} is within the background around the lesion ({bg.value:.3g}, "
                f"SD {bg.sd:.2g}; floor {floor:.3g} = BG + {FLOOD_FLOOR_SD:g} SD): the contour would leak into the "
                "surrounding tissue instead of following the lesion's edge; the lesion's contrast is too low for "
                "this method (try a background-subtracted method, or restrict the region with an ROI)")

    def warnings(self, component: np.ndarray, threshold: float) -> list[str]:
        """Sentences flagging a contour the user should look at (see the module docstring).

        Without an ROI (one click), a contour reaching the edge of the working sphere is not returned:
        :class:`ProcessingError` (it leaks beyond the lesion, or the lesion is larger than the sphere).
        """
        out = []
        padded = np.pad(component, 1)
        ring = ndimage.binary_dilation(padded) & ~padded
        working = np.pad(self.working, 1)
        values = np.pad(self.sub, 1, constant_values=-np.inf)
        hill = np.pad(self.region.inside, 1)
        if (ring & ~working).any():
            if not self.roi_given:
                raise ProcessingError(
                    f"the contour at {threshold:.4g} reaches the edge of the working sphere around the click (or of "
                    "the image): it leaks beyond the lesion, or the lesion is larger than the sphere; increase "
                    "roi_radius_mm or draw an ROI")
            out.append("the contour reaches the edge of the ROI (or of the image): it may be truncated; "
                       "enlarge the ROI")
        if (ring & working & ~hill & (values >= threshold)).any():
            out.append("the contour was cut from a neighbouring uptake hill that is also above the threshold "
                       "(watershed split); check that the neighbour is not part of the tumour")
        return out

    def region_details(self) -> dict[str, Any]:
        """What every method records about the region it worked in."""
        return {
            "suv_max": self.suv_max,
            "suv_max_lps": self.lps(self.max_index),
            "region": "user ROI" if self.roi_given else "sphere around the seed",
            "hill_voxels": int(self.region.inside.sum()),
        }

    def result(self, method: str, component: np.ndarray, parameters: dict[str, Any], threshold: float, *,
               reference_value: float | None, background: BackgroundEstimate | float | None = None,
               details: dict[str, Any] | None = None) -> SegmentationResult:
        """Package a crop-shaped mask into a :class:`SegmentationResult` on the PET grid.

        Refuses (:meth:`check_not_flooding`) a threshold inside the background's noise.
        """
        bg_value = background.value if isinstance(background, BackgroundEstimate) else background
        self.check_not_flooding(threshold, background if isinstance(background, BackgroundEstimate) else None,
                                method)
        info = self.region_details()
        if isinstance(background, BackgroundEstimate):
            info["background"] = background.as_dict()
        info.update(details or {})
        info["warnings"] = self.warnings(component, threshold)
        return SegmentationResult(
            method=method,
            mask=mask_image(self.region.paste(component, self.values.shape), self.suv),
            parameters=parameters,
            threshold=float(threshold),
            background=None if bg_value is None else float(bg_value),
            reference_value=None if reference_value is None else float(reference_value),
            details=info,
        )


#: A threshold must lie at least this many background SDs above the background around the lesion (the
#: shell of :mod:`.background`, or the reference VOI): below, noise and neighbouring tissue connect to the
#: contour and it floods the uptake hill instead of following the lesion's edge. Design choice.
FLOOD_FLOOR_SD = 2.0

#: A click may lie at most this far (mm) from the lesion's upper half (its half-contrast region); farther,
#: the click is taken as a click in the background and refused. Design choice: PETTumorSegmentation's
#: "assist centering" searches 7 mm (note §1.1); 10 mm leaves room for a click on a large lesion's rim.
SEED_TOLERANCE_MM = 10.0

#: The seed's hill must rise at least this many voxel-noise SDs above the background, otherwise it is a
#: noise bump, not a lesion. The voxel noise is measured on the high-pass residual (PET minus its 1-voxel
#: Gaussian smoothing, robust MAD), which reflects noise rather than anatomy (anatomy is smooth at the
#: voxel scale after the scanner's blur). On the smoothed image that ``lesion_region`` climbs, the highest
#: bump of white noise rises about 4 x 0.16 = 0.6 voxel-noise SDs (smoothing by 1 voxel divides the SD by
#: about 6); real lesions of the project's H&N phantom rose 6 or more. Design choice, not a published value.
MIN_CONTRAST_NOISE_SD = 3.0


def locate_lesion(suv: sitk.Image, seed_lps: Sequence[float] | None, roi: sitk.Image | None = None, *,
                  roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM, saddle_fraction: float = 0.5) -> LesionContext:
    """Check the PET and locate the lesion under the click (the common one-click rule, module docstring).

    Besides :func:`~PETDosePaintingLib.segmentation.common.lesion_region`'s own checks, a click without an
    ROI is refused (:class:`InputError`) when it does not point at a lesion (with an ROI, the user has said
    where the lesion is, and the ROI may lie entirely inside it):

    * the hill it leads to is not significantly above the background: its smoothed peak rises less than
      :data:`MIN_CONTRAST_NOISE_SD` (3) voxel-noise SDs above the rough background, i.e. a click in noisy
      background that climbed to a noise bump;
    * the click lies more than :data:`SEED_TOLERANCE_MM` (10 mm) from the hill's upper half (the voxels above
      half its contrast), i.e. a click in the background that merely climbs to a lesion far away.
    """
    values = check_pet(suv)
    region = lesion_region(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    working = region.working if region.working is not None else working_region(suv, seed_lps, roi, roi_radius_mm).inside
    sub = region.crop(values)
    spacing_kji = np.asarray(suv.GetSpacing(), float)[::-1]
    if roi is None:
        _check_click(sub, region, working, spacing_kji)
    masked = np.where(region.inside, sub, -np.inf)
    max_index = tuple(int(i) for i in np.unravel_index(int(np.argmax(masked)), sub.shape))
    return LesionContext(suv, values, region, sub, working, spacing_kji, float(sub[max_index]), max_index,
                         roi is not None)  # type: ignore[arg-type]


def _check_click(sub: np.ndarray, region: LesionRegion, working: np.ndarray, spacing_kji: np.ndarray) -> None:
    """The two click checks of :func:`locate_lesion`, on the PET smoothed by a 1-voxel Gaussian.

    The smoothing is fixed in voxels (not ``lesion_region``'s mm smoothing) because the noise criterion
    (:data:`MIN_CONTRAST_NOISE_SD`) is derived for it.
    """
    smooth = ndimage.gaussian_filter(sub, 1.0)
    background = float(region.background)
    peak = float(smooth[region.inside].max())
    half = background + 0.5 * (peak - background)
    low = working & (smooth < half)
    if low.any():
        residual = (sub - smooth)[low]
        noise_sd = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
        if peak - background < MIN_CONTRAST_NOISE_SD * noise_sd:
            raise InputError(
                f"the click is not on a lesion: the uptake it leads to (peak {peak:.3g}) does not rise above the "
                f"image noise (background {background:.3g}, voxel noise SD {noise_sd:.2g}); click inside the lesion, "
                "or, if the lesion is larger than the working sphere, increase roi_radius_mm or draw an ROI")
    upper = region.inside & (smooth >= half)
    if upper[region.seed]:
        return
    points = np.argwhere(upper)
    if points.size == 0:
        return
    distance = float(np.sqrt((((points - np.asarray(region.seed)) * spacing_kji) ** 2).sum(axis=1)).min())
    if distance > SEED_TOLERANCE_MM:
        raise InputError(
            f"the click is {distance:.0f} mm from the lesion it leads to (more than {SEED_TOLERANCE_MM:g} mm): it is "
            "in the background; click inside the lesion")


def check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` as a float if ``low < value < high``, else :class:`InputError` naming the parameter."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not (np.isfinite(number) and low < number < high):
        raise InputError(f"{name} must be between {low:g} and {high:g} (exclusive), got {value!r}")
    return number


def check_below_max(ctx: LesionContext, threshold: float, what: str) -> None:
    """:class:`ProcessingError` if a computed threshold is not below SUVmax (nothing could be segmented)."""
    if not threshold < ctx.suv_max:
        raise ProcessingError(f"the {what} threshold {threshold:.4g} is not below the lesion's SUVmax "
                              f"{ctx.suv_max:.4g}: check the background definition and the parameters")


def check_contrast(ctx: LesionContext, background: BackgroundEstimate, what: str) -> None:
    """:class:`ProcessingError` if the lesion's SUVmax is not above the background (no contrast to work with)."""
    if not ctx.suv_max > background.value:
        raise ProcessingError(f"the lesion's SUVmax {ctx.suv_max:.4g} is not above the background "
                              f"{background.value:.4g} ({background.definition}); {what} needs contrast")


def check_above_background(threshold: float, background: float, what: str) -> None:
    """:class:`ProcessingError` if a threshold is not above the background (the contour would flood)."""
    if not threshold > background:
        raise ProcessingError(f"the {what} threshold {threshold:.4g} is not above the background {background:.4g}: "
                              "the lesion has no usable contrast for this method")


def region_parameters(roi: sitk.Image | None, roi_radius_mm: float, saddle_fraction: float,
                       holes: bool) -> dict[str, Any]:
    return {"roi_radius_mm": roi_radius_mm if roi is None else None, "saddle_fraction": saddle_fraction,
            "fill_holes": bool(holes)}


def background_parameters(statistic: str, inner_mm: float, outer_mm: float, voi: sitk.Image | None) -> dict[str, Any]:
    if voi is not None:
        return {"bg_statistic": statistic, "background": "reference VOI"}
    return {"bg_statistic": statistic, "bg_inner_mm": inner_mm, "bg_outer_mm": outer_mm, "background": "shell"}


# --------------------------------------------------------------------------------------------------
# Fixed thresholds


def threshold_fraction_of_max(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fraction: float = 0.41,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """``CC_seed(I >= fraction * SUVmax)`` with SUVmax the maximum of the lesion's uptake hill.

    Parameters
    ----------
    fraction : fraction of SUVmax, default 0.41 (EANM). 0.40, 0.42 and 0.50 are also common.
    roi_radius_mm : radius of the working sphere around the seed when no ROI is given (default 40 mm).
    saddle_fraction : a neighbouring hot structure joins the lesion only if the saddle between them is
        above this fraction of the lower peak's contrast (default 0.5); see ``common.lesion_region``.
    fill_holes : fill enclosed cavities (necrotic core), default True.

    ``background`` is accepted for the common signature and ignored. Works on any intensity units.
    Known behaviour: on a background the threshold ignores BG, so with BG > 0 the contour lies below half
    the lesion contrast and a large lesion's volume is overestimated; for small lesions (partial-volume
    effect) it is underestimated less or overestimated more depending on size (note §2.2).
    """
    fraction = check_fraction("fraction", fraction)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    threshold = fraction * ctx.suv_max
    component = ctx.segment(threshold, fill_holes)
    return ctx.result("threshold", component,
                      {"fraction": fraction, **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)},
                      threshold, reference_value=ctx.suv_max)


def threshold_absolute(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    absolute: float = 2.5,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """``CC_seed(SUV >= absolute)``; default 2.5 SUV (classic FDG cut-off). Needs an SUV image.

    The search is limited to the seed's uptake hill (``common.lesion_region``), so a hot neighbour
    beyond a deep saddle is not included even when it exceeds the threshold. ``fill_holes`` (default
    True) fills enclosed cavities. ``background`` is accepted for the common signature and ignored.
    Known behaviour: does not adapt to contrast, resolution or normalisation (note §2.1).
    """
    require_units(suv, SUV_UNITS, "PET image")
    try:
        absolute = float(absolute)
    except (TypeError, ValueError):
        raise InputError(f"absolute threshold must be a number (SUV), got {absolute!r}") from None
    if not (np.isfinite(absolute) and absolute > 0):
        raise InputError(f"absolute threshold must be a positive SUV, got {absolute!r}")
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    if absolute > ctx.suv_max:
        raise InputError(f"the absolute threshold {absolute:g} is above the lesion's SUVmax {ctx.suv_max:.4g}")
    component = ctx.segment(absolute, fill_holes)
    return ctx.result("threshold", component,
                      {"absolute": absolute, **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)},
                      absolute, reference_value=ctx.suv_max)


def threshold_fraction_of_peak(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fraction: float = 0.5,
    peak_diameter_mm: float = PEAK_DIAMETER_MM,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """``CC_seed(I >= fraction * SUVpeak)`` (registry name ``peak``); note §2.3.

    SUVpeak is the highest mean in a sphere of ``peak_diameter_mm`` (default 12 mm, Lodge et al. 2012;
    a 1 cm3 sphere is 12.4 mm) centred in the lesion's uptake hill, averaging only hill voxels (so a
    neighbour never enters it); see :mod:`.quantify` for the kernel. Less noise-sensitive than SUVmax.

    Parameters
    ----------
    fraction : fraction of SUVpeak, default 0.5 (the note's default; not a calibrated constant).
    peak_diameter_mm : SUVpeak sphere diameter in mm, default 12.
    roi_radius_mm, saddle_fraction, fill_holes : see :func:`threshold_fraction_of_max`.

    ``background`` is accepted for the common signature and ignored; any intensity units. Like every
    fraction-of-a-reference threshold it ignores BG (overestimates on a warm background).
    """
    fraction = check_fraction("fraction", fraction)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    peak, peak_index = ctx.peak(peak_diameter_mm)
    threshold = fraction * peak
    component = ctx.segment(threshold, fill_holes)
    return ctx.result("peak", component,
                      {"fraction": fraction, "peak_diameter_mm": peak_diameter_mm,
                       **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)},
                      threshold, reference_value=peak, details={"suv_peak": peak, "suv_peak_lps": ctx.lps(peak_index)})


def threshold_background_subtracted(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fraction: float = 0.5,
    reference: str = "max",
    peak_diameter_mm: float = PEAK_DIAMETER_MM,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """Background-subtracted threshold ``T = BG + fraction * (ref - BG)``, ref = SUVmax or SUVpeak (note §3.6).

    Parameters
    ----------
    fraction : default 0.5. Yu et al. 2009 compared 0.2 and 0.4 against pathology [M]; 0.4-0.5 are common.
        The default 0.5 is the physical one for large lesions: under a linear, shift-invariant blur the
        iso-contour at half the contrast of a homogeneous object lies on its edge (a planar edge blurred
        by a symmetric PSF passes through half height at the edge). Smaller lesions (radius below about
        2 FWHM) have a reduced SUVmax (partial-volume effect), and the half-contrast contour then lies
        slightly inside the true edge for large ones and outside for small ones; calibrate if needed.
    reference : ``"max"`` (default) or ``"peak"`` (SUVpeak, see :func:`threshold_fraction_of_peak`).
    background : optional reference VOI (binary mask on the PET grid); otherwise the shell of
        :mod:`.background` (``bg_inner_mm`` 10 mm to ``bg_outer_mm`` 20 mm outside a provisional contour,
        ``bg_statistic`` median or mean). The definition is recorded in ``details["background"]``.
    roi_radius_mm, saddle_fraction, fill_holes : see :func:`threshold_fraction_of_max`.

    Any intensity units (the formula is ratio-invariant). Raises :class:`ProcessingError` when the
    reference is not above BG. Not registered under its own name yet (the ``a50p`` entry is the SUVpeak
    form); the result's method name is ``"bgsub"``.
    """
    return _background_subtracted(
        "bgsub", suv, seed_lps, roi, background, fraction=fraction, reference=reference,
        peak_diameter_mm=peak_diameter_mm, bg_statistic=bg_statistic, bg_inner_mm=bg_inner_mm,
        bg_outer_mm=bg_outer_mm, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction, fill_holes=fill_holes)


def _background_subtracted(method: str, suv: sitk.Image, seed_lps: Sequence[float] | None, roi: sitk.Image | None,
                           background: sitk.Image | None, *, fraction: float, reference: str, peak_diameter_mm: float,
                           bg_statistic: str, bg_inner_mm: float, bg_outer_mm: float, roi_radius_mm: float,
                           saddle_fraction: float, fill_holes: bool) -> SegmentationResult:
    fraction = check_fraction("fraction", fraction)
    if reference not in ("max", "peak"):
        raise InputError(f"reference must be 'max' or 'peak', got {reference!r}")
    check_background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm)
    ctx = locate_lesion(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    bg = ctx.background(background, statistic=bg_statistic, inner_mm=bg_inner_mm, outer_mm=bg_outer_mm)
    details: dict[str, Any] = {}
    if reference == "peak":
        ref, peak_index = ctx.peak(peak_diameter_mm)
        details.update(suv_peak=ref, suv_peak_lps=ctx.lps(peak_index))
    else:
        ref = ctx.suv_max
    check_contrast(ctx, bg, "a background-subtracted threshold")
    if not ref > bg.value:
        raise ProcessingError(f"the lesion's SUV{reference} {ref:.4g} is not above the background {bg.value:.4g} "
                              f"({bg.definition})")
    threshold = bg.value + fraction * (ref - bg.value)
    component = ctx.segment(threshold, fill_holes)
    parameters = {"fraction": fraction, "reference": reference,
                  **({"peak_diameter_mm": peak_diameter_mm} if reference == "peak" else {}),
                  **background_parameters(bg_statistic, bg_inner_mm, bg_outer_mm, background),
                  **region_parameters(roi, roi_radius_mm, saddle_fraction, fill_holes)}
    return ctx.result(method, component, parameters, threshold, reference_value=ref, background=bg,
                      details=details)


def threshold_a50p(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fraction: float = 0.5,
    peak_diameter_mm: float = PEAK_DIAMETER_MM,
    bg_statistic: str = "median",
    bg_inner_mm: float = 10.0,
    bg_outer_mm: float = 20.0,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    fill_holes: bool = True,
) -> SegmentationResult:
    """A50P: ``T = 0.5 (SUVpeak + BG) = BG + 0.5 (SUVpeak - BG)`` (registry name ``a50p``).

    Cheebsumon et al., EJNMMI Res 2011;1:35; Frings et al., J Nucl Med 2010;51:1870 [M: details]. The
    MUST-segmenter uses BG = mean of liver and lung means (whole-body); for H&N this uses a local
    soft-tissue BG: the shell of :mod:`.background` or a reference VOI (``background``), recorded in
    ``details["background"]``. SUVpeak as in :func:`threshold_fraction_of_peak` (12 mm sphere).

    Parameters: ``fraction`` (default 0.5, the "50" of A50P), ``peak_diameter_mm`` (12 mm),
    ``bg_statistic`` / ``bg_inner_mm`` / ``bg_outer_mm`` (median, 10 mm, 20 mm), ``roi_radius_mm``,
    ``saddle_fraction``, ``fill_holes`` as in :func:`threshold_background_subtracted`.

    Known behaviour: SUVpeak is below SUVmax for a blurred lesion, so for lesions that are not large
    compared with the 12 mm sphere and the resolution the threshold is lower than the half-contrast
    level and the volume is overestimated; for large homogeneous lesions it recovers the edge.
    """
    return _background_subtracted(
        "a50p", suv, seed_lps, roi, background, fraction=fraction, reference="peak", peak_diameter_mm=peak_diameter_mm,
        bg_statistic=bg_statistic, bg_inner_mm=bg_inner_mm, bg_outer_mm=bg_outer_mm, roi_radius_mm=roi_radius_mm,
        saddle_fraction=saddle_fraction, fill_holes=fill_holes)
