"""Background (BG) estimation for background-adapted PET thresholds (research note §1.2).

Two definitions, and the result always says which one was used (:class:`BackgroundEstimate`,
stored by every method in ``SegmentationResult.details["background"]``):

**Shell (default).** A shell between ``inner_mm`` (default 10 mm) and ``outer_mm`` (default 20 mm)
outside a provisional contour of the lesion. Steps:

1. the provisional contour is ``CC_seed(I >= T0)``, holes filled, inside the lesion's uptake hill
   (:func:`~PETDosePaintingLib.segmentation.common.lesion_region`), with
   ``T0 = BG0 + provisional_fraction (SUVmax - BG0)``; ``BG0`` is the rough level around the hill that
   ``lesion_region`` reports. With ``BG0 = 0`` this is the note's "40 % of SUVmax"; subtracting ``BG0``
   keeps the provisional contour finite when 40 % of SUVmax falls below the background (SBR < 2.5);
2. the shell is the set of voxels whose distance (mm, Euclidean distance transform with the voxel
   spacing) to the provisional contour is in ``(inner_mm, outer_mm]``;
3. excluded: voxels outside the lesion's hill (so a neighbouring hot structure never enters the
   background, the same rule as for SUVmax and the mask), voxels at or above ``T0``, and voxels below
   ``body_fraction`` (default 0.3) of the shell's upper quartile, taken as air (airway, outside the
   body). The 0.3 is a design choice: air reconstructs near 0, soft tissue near its own level;
4. BG is the median (default) or mean of what remains. At least ``min_voxels`` (default 20) must remain,
   otherwise :class:`~PETDosePaintingLib.errors.InputError` asks for a larger working region or a
   reference VOI.

**Reference VOI.** A user-drawn binary mask on the PET grid (e.g. in neck muscle, the argument
``background`` of every method): BG is its median or mean. It is used as given, anywhere in the image.

The provisional 40 % contour and the 1-2 cm shell follow the note's design default; the exclusion
rules are this project's. Adaptive thresholds are sensitive to BG (note §3), so the definition, the
number of voxels and the spread are recorded with the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imaging.image import check_same_geometry, require_binary_mask
from .common import DEFAULT_ROI_RADIUS_MM, LesionRegion, check_pet, fill_holes, lesion_region, threshold_component

STATISTICS = ("median", "mean")


@dataclass
class BackgroundEstimate:
    """A background value and how it was obtained (values in the PET's units)."""

    value: float
    source: str  #: "shell" or "reference VOI"
    statistic: str  #: "median" or "mean"
    n_voxels: int
    sd: float  #: standard deviation of the voxels used
    inner_mm: float | None = None
    outer_mm: float | None = None
    provisional_threshold: float | None = None
    excluded_as_air: int = 0
    excluded_above_provisional: int = 0

    @property
    def definition(self) -> str:
        """One sentence saying how the value was obtained."""
        if self.source == "reference VOI":
            return f"{self.statistic} of a reference VOI of {self.n_voxels} voxels"
        return (f"{self.statistic} of {self.n_voxels} voxels in a shell {self.inner_mm:g}-{self.outer_mm:g} mm outside "
                f"a provisional contour at {self.provisional_threshold:.4g}, inside the lesion's uptake hill, "
                f"excluding voxels above the provisional threshold ({self.excluded_above_provisional}) "
                f"and air ({self.excluded_as_air})")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary including :attr:`definition`."""
        return {**asdict(self), "definition": self.definition}


def check_background_parameters(statistic: str, inner_mm: float, outer_mm: float, *, provisional_fraction: float = 0.4,
                                body_fraction: float = 0.3, min_voxels: int = 20) -> None:
    """Raise :class:`InputError` for invalid background parameters (named as the methods name them)."""
    if statistic not in STATISTICS:
        raise InputError(f"bg_statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if not (np.isfinite(inner_mm) and inner_mm >= 0):
        raise InputError(f"bg_inner_mm must be a distance >= 0 mm, got {inner_mm!r}")
    if not (np.isfinite(outer_mm) and outer_mm > inner_mm):
        raise InputError(f"bg_outer_mm must be larger than bg_inner_mm ({inner_mm} mm), got {outer_mm!r}")
    if not 0.0 < provisional_fraction < 1.0:
        raise InputError(f"bg_provisional_fraction must be between 0 and 1, got {provisional_fraction!r}")
    if not 0.0 <= body_fraction < 1.0:
        raise InputError(f"bg_body_fraction must be in [0, 1), got {body_fraction!r}")
    if int(min_voxels) != min_voxels or min_voxels < 1:
        raise InputError(f"bg_min_voxels must be a positive integer, got {min_voxels!r}")


def _statistic(values: np.ndarray, statistic: str) -> float:
    return float(np.median(values) if statistic == "median" else np.mean(values))


def background_from_voi(values: np.ndarray, suv: sitk.Image, voi: sitk.Image, statistic: str = "median"
                        ) -> BackgroundEstimate:
    """BG as the median or mean of a reference VOI (binary mask on the PET grid, non-empty)."""
    check_same_geometry(suv, voi, "PET image", "background VOI")
    inside = require_binary_mask(voi, "background VOI")
    sample = values[inside]
    return BackgroundEstimate(_statistic(sample, statistic), "reference VOI", statistic, int(sample.size),
                              float(sample.std()))


def background_in_region(
    values: np.ndarray,
    region: LesionRegion,
    spacing_kji: Sequence[float],
    suv_max: float,
    *,
    statistic: str = "median",
    inner_mm: float = 10.0,
    outer_mm: float = 20.0,
    provisional_fraction: float = 0.4,
    body_fraction: float = 0.3,
    min_voxels: int = 20,
) -> BackgroundEstimate:
    """The shell background of the module docstring, for a lesion already located by ``lesion_region``.

    ``values`` is the crop of the PET array (``region.crop``); ``suv_max`` the lesion's SUVmax.
    """
    check_background_parameters(statistic, inner_mm, outer_mm, provisional_fraction=provisional_fraction,
                                body_fraction=body_fraction, min_voxels=min_voxels)
    rough = float(region.background)
    t0 = rough + provisional_fraction * (suv_max - rough)
    provisional = fill_holes(threshold_component(values, region, t0))
    distance = ndimage.distance_transform_edt(~provisional, sampling=np.asarray(spacing_kji, dtype=float))
    shell = (distance > inner_mm) & (distance <= outer_mm) & region.inside
    hot = shell & (values >= t0)
    shell &= ~hot
    air = np.zeros_like(shell)
    if shell.any() and body_fraction > 0:
        level = float(np.percentile(values[shell], 75))
        air = shell & (values < body_fraction * level)
        shell &= ~air
    n = int(shell.sum())
    if n < min_voxels:
        raise InputError(
            f"only {n} voxel(s) remain in the background shell {inner_mm:g}-{outer_mm:g} mm around the lesion "
            f"(at least {min_voxels} needed): enlarge the working region (roi_radius_mm or the ROI) or give a "
            "background reference VOI"
        )
    sample = values[shell]
    return BackgroundEstimate(_statistic(sample, statistic), "shell", statistic, n, float(sample.std()),
                              inner_mm=float(inner_mm), outer_mm=float(outer_mm), provisional_threshold=t0,
                              excluded_as_air=int(air.sum()), excluded_above_provisional=int(hot.sum()))


def estimate_background(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    statistic: str = "median",
    inner_mm: float = 10.0,
    outer_mm: float = 20.0,
    provisional_fraction: float = 0.4,
    body_fraction: float = 0.3,
    min_voxels: int = 20,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
) -> BackgroundEstimate:
    """Background around the lesion under ``seed_lps`` (shell), or in the reference VOI ``background``.

    Same region rules and signature as the segmentation methods; see the module docstring for the
    definitions and defaults.
    """
    check_background_parameters(statistic, inner_mm, outer_mm, provisional_fraction=provisional_fraction,
                                body_fraction=body_fraction, min_voxels=min_voxels)
    values = check_pet(suv)
    if background is not None:
        return background_from_voi(values, suv, background, statistic)
    region = lesion_region(suv, seed_lps, roi, roi_radius_mm=roi_radius_mm, saddle_fraction=saddle_fraction)
    sub = region.crop(values)
    return background_in_region(sub, region, np.asarray(suv.GetSpacing())[::-1], float(sub[region.inside].max()),
                                statistic=statistic, inner_mm=inner_mm, outer_mm=outer_mm,
                                provisional_fraction=provisional_fraction, body_fraction=body_fraction,
                                min_voxels=min_voxels)
