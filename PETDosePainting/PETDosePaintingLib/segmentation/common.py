"""Types and helpers shared by every PET segmentation method.

Every method has the same shape::

    result = method(suv, seed_lps, roi=None, background=None, **parameters) -> SegmentationResult

* ``suv`` is a SimpleITK SUV image (units one of :data:`~PETDosePaintingLib.imaging.image.SUV_UNITS`;
  methods that only need relative values accept any units).
* ``seed_lps`` is the user's click in LPS millimetres.
* ``roi`` is an optional binary mask on the PET grid restricting the search; without it the method
  works in a sphere of ``roi_radius_mm`` around the seed.
* ``background`` is an optional binary mask of a background reference region.
* The result's mask is a uint8 0/1 image with exactly the PET geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imaging.image import Units, image_from_array, mask_volume_ml, point_to_index, require_finite, set_units

#: Default radius (mm) of the working region around a seed when no ROI is given.
DEFAULT_ROI_RADIUS_MM = 40.0


@dataclass
class SegmentationResult:
    """What a segmentation method returns: the mask plus what it computed.

    Attributes
    ----------
    method : registry name of the method (e.g. ``"threshold"``).
    mask : uint8 0/1 image on the PET grid.
    parameters : the parameters used (after defaults were applied), JSON-friendly.
    threshold : the intensity threshold applied, in the input's units, if the method has one.
    background : the background value used, in the input's units, if any.
    reference_value : the lesion reference intensity (SUVmax, SUVpeak, SUV70...) the threshold was derived from.
    details : anything else the method measured (iterations, convergence, chosen level...).
    """

    method: str
    mask: sitk.Image
    parameters: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    background: float | None = None
    reference_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def volume_ml(self) -> float:
        """Volume of the mask in mL (voxel count times voxel volume)."""
        return mask_volume_ml(self.mask)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (everything but the mask)."""
        return {
            "method": self.method,
            "volume_ml": self.volume_ml,
            "threshold": self.threshold,
            "background": self.background,
            "reference_value": self.reference_value,
            "parameters": self.parameters,
            "details": self.details,
        }


@dataclass(frozen=True)
class Region:
    """A rectangular crop of the PET grid (``[k, j, i]`` slices) with a boolean working mask inside it."""

    slices: tuple[slice, slice, slice]
    inside: np.ndarray  # bool, shape of the crop
    seed: tuple[int, int, int]  # seed index (k, j, i) relative to the crop

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The part of a full ``[k, j, i]`` array inside the crop box."""
        return array[self.slices]

    def paste(self, sub: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """A full-size boolean array holding ``sub`` at the crop position."""
        full = np.zeros(tuple(shape), dtype=bool)
        full[self.slices] = sub
        return full


def check_pet(suv: sitk.Image, what: str = "PET image") -> np.ndarray:
    """Validate a PET image (3D, scalar, finite) and return its ``[k, j, i]`` float array."""
    if suv.GetDimension() != 3 or suv.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a 3D scalar image")
    require_finite(suv, what)
    return sitk.GetArrayFromImage(suv).astype(np.float64)


def working_region(
    image: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
) -> Region:
    """The region a method works in: the ROI mask if given, else a sphere of ``roi_radius_mm`` at the seed.

    With an ROI and no seed, the seed is the ROI voxel of highest value. Raises :class:`InputError` if
    the seed lies outside the image or outside the ROI, or if the ROI is empty.
    """
    shape = image.GetSize()[::-1]
    if roi is not None:
        roi_arr = sitk.GetArrayViewFromImage(roi) != 0
        if roi_arr.shape != tuple(shape):
            raise InputError(f"ROI grid {roi_arr.shape[::-1]} differs from the PET grid {tuple(shape)[::-1]}")
        if not roi_arr.any():
            raise InputError("the ROI is empty")
        nz = np.nonzero(roi_arr)
        slices = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
        inside = roi_arr[slices]
        if seed_lps is None:
            values = sitk.GetArrayViewFromImage(image)[slices]
            flat = np.where(inside, values, -np.inf).argmax()
            seed = tuple(int(s) for s in np.unravel_index(flat, inside.shape))
        else:
            i, j, k = point_to_index(image, seed_lps, "seed")
            if not roi_arr[k, j, i]:
                raise InputError(f"seed {tuple(seed_lps)} mm (LPS) lies outside the ROI")
            seed = (k - slices[0].start, j - slices[1].start, i - slices[2].start)
        return Region(slices, inside, seed)  # type: ignore[arg-type]
    if seed_lps is None:
        raise InputError("a seed point (or an ROI) is required")
    if roi_radius_mm <= 0:
        raise InputError(f"roi_radius_mm must be positive, got {roi_radius_mm}")
    i, j, k = point_to_index(image, seed_lps, "seed")
    spacing = np.asarray(image.GetSpacing())[::-1]  # k, j, i
    half = np.ceil(roi_radius_mm / spacing).astype(int)
    centre = (k, j, i)
    slices = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape, strict=True))
    grids = np.ogrid[tuple(slice(s.start - c, s.stop - c) for s, c in zip(slices, centre, strict=True))]
    dist2 = sum((g * sp) ** 2 for g, sp in zip(grids, spacing, strict=True))
    inside = dist2 <= roi_radius_mm**2
    seed = tuple(c - s.start for c, s in zip(centre, slices, strict=True))
    return Region(slices, inside, seed)  # type: ignore[arg-type]


def component_at(mask: np.ndarray, seed: Sequence[int], connectivity: int = 26) -> np.ndarray:
    """The connected component of ``mask`` that contains ``seed`` (empty if the seed is not in the mask)."""
    if not mask[tuple(seed)]:
        return np.zeros_like(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    labels, _ = ndimage.label(mask, structure=structure)
    return labels == labels[tuple(seed)]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed cavities in 3D (e.g. a necrotic core belongs to the GTV)."""
    return ndimage.binary_fill_holes(mask)


def mask_image(full_mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 0/1 SimpleITK mask with the reference's geometry."""
    return set_units(image_from_array(full_mask.astype(np.uint8), reference), Units.LABEL)


def threshold_component(values: np.ndarray, region: Region, threshold: float) -> np.ndarray:
    """``CC_seed(values >= threshold)`` inside the region, as a boolean array of the crop's shape.

    Raises :class:`InputError` if the seed voxel itself is below the threshold (a click in background).
    """
    above = (values >= threshold) & region.inside
    if not above[region.seed]:
        raise InputError(
            f"the seed voxel (value {values[region.seed]:.3g}) is below the threshold {threshold:.3g}: "
            "the seed is not in the lesion"
        )
    return component_at(above, region.seed)
