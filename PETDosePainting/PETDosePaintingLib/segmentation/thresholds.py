"""Fixed-threshold PET segmentation: absolute SUV and a fraction of SUVmax.

References
----------
* Absolute SUV 2.5: Paulino AC et al., IJROBP 2005;61:1385 (H&N use); Nestle U et al., J Nucl Med
  2005;46:1342 (comparator in NSCLC).
* Fraction of SUVmax, 41 %: Boellaard R et al., EANM procedure guidelines for tumour imaging,
  EJNMMI 2010;37:181 and 2015;42:328 (the 41 % MATV recommendation).
"""

from __future__ import annotations

from collections.abc import Sequence

import SimpleITK as sitk

from ..errors import InputError
from ..imaging.image import SUV_UNITS, require_units
from .common import (
    DEFAULT_ROI_RADIUS_MM,
    SegmentationResult,
    check_pet,
    lesion_region,
    mask_image,
    threshold_component,
)


def threshold_fraction_of_max(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    fraction: float = 0.41,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
) -> SegmentationResult:
    """``CC_seed(I >= fraction * SUVmax)`` with SUVmax the maximum of the lesion's uptake hill.

    Parameters
    ----------
    fraction : fraction of SUVmax, default 0.41 (EANM). 0.40, 0.42 and 0.50 are also common.
    roi_radius_mm : radius of the working sphere around the seed when no ROI is given (default 40 mm).
    saddle_fraction : a neighbouring hot structure joins the lesion only if the saddle between them is
        above this fraction of the lower peak's contrast (default 0.5); see ``common.lesion_region``.

    ``background`` is accepted for the common signature and ignored. Works on any intensity units.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be between 0 and 1, got {fraction}")
    values = check_pet(suv)
    region = lesion_region(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    sub = region.crop(values)
    suv_max = float(sub[region.inside].max())
    threshold = fraction * suv_max
    component = threshold_component(sub, region, threshold)
    return SegmentationResult(
        method="threshold",
        mask=mask_image(region.paste(component, values.shape), suv),
        parameters={"fraction": fraction, "roi_radius_mm": roi_radius_mm if roi is None else None,
                    "saddle_fraction": saddle_fraction},
        threshold=threshold,
        reference_value=suv_max,
    )


def threshold_absolute(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    absolute: float = 2.5,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
) -> SegmentationResult:
    """``CC_seed(SUV >= absolute)``; default 2.5 (classic FDG cut-off). Needs an SUV image.

    The search is limited to the seed's uptake hill (``common.lesion_region``), so a hot neighbour
    beyond a deep saddle is not included even when it exceeds the threshold.
    """
    require_units(suv, SUV_UNITS, "PET image")
    if absolute <= 0:
        raise InputError(f"absolute threshold must be positive, got {absolute}")
    values = check_pet(suv)
    region = lesion_region(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    sub = region.crop(values)
    component = threshold_component(sub, region, absolute)
    return SegmentationResult(
        method="threshold",
        mask=mask_image(region.paste(component, values.shape), suv),
        parameters={"absolute": absolute, "roi_radius_mm": roi_radius_mm if roi is None else None,
                    "saddle_fraction": saddle_fraction},
        threshold=absolute,
        reference_value=float(sub[region.inside].max()),
    )
