"""Hypoxia PET (FMISO, FAZA): uptake ratio maps against a reference region.

``r_i = U_i / U_ref`` with ``U_ref`` the mean uptake in a reference region: neck muscle (tumour-to-muscle,
T/M; Lee N et al., IJROBP 2016;96:9) or a blood-pool ROI / venous sample (tumour-to-blood, T/B; Rasey
et al., IJROBP 1996;36:417). Ratios cancel the SUV normalisation, so any activity units work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imaging.image import Units, check_same_geometry, image_from_array, require_binary_mask, require_finite


@dataclass
class RatioMap:
    """A tumour-to-reference ratio map and the reference it was normalised to."""

    ratio: sitk.Image  #: dimensionless ratio on the PET grid (units "ratio")
    reference_mean: float  #: mean uptake in the reference region, in the PET's units
    reference_sd: float  #: standard deviation in the reference region, in the PET's units
    reference_volume_ml: float  #: volume of the reference region
    reference_kind: str  #: "muscle" (T/M) or "blood" (T/B)


def uptake_ratio_map(pet: sitk.Image, reference: sitk.Image, reference_kind: str = "muscle") -> RatioMap:
    """Divide the PET by the mean uptake in ``reference`` (a binary mask on the PET grid).

    Parameters
    ----------
    pet : hypoxia PET (SUV or Bq/mL).
    reference : binary mask of the reference region (muscle or blood pool), same grid as ``pet``.
    reference_kind : ``"muscle"`` (tumour-to-muscle) or ``"blood"`` (tumour-to-blood); recorded only.
    """
    if reference_kind not in ("muscle", "blood"):
        raise InputError(f"reference_kind must be 'muscle' or 'blood', got {reference_kind!r}")
    check_same_geometry(pet, reference, "hypoxia PET", "reference region")
    require_finite(pet, "hypoxia PET")
    ref = require_binary_mask(reference, "reference region")
    values = sitk.GetArrayFromImage(pet).astype(np.float64)
    ref_values = values[ref]
    mean = float(ref_values.mean())
    if not mean > 0:
        raise InputError(f"the mean uptake in the reference region is {mean:.3g}; it must be positive")
    ratio = image_from_array((values / mean).astype(np.float32), pet, units=Units.RATIO)
    return RatioMap(ratio, mean, float(ref_values.std(ddof=1)) if ref_values.size > 1 else 0.0,
                    float(ref.sum() * np.prod(pet.GetSpacing()) / 1000.0), reference_kind)
