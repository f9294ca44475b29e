"""Resampling images and masks onto another grid (optionally through a transform).

Transforms follow ITK's convention: ``transform`` maps points of the *reference* (fixed) grid into the
space of the image being resampled (moving), i.e. the output is ``image(transform(x))``.
"""

from __future__ import annotations

import SimpleITK as sitk

from ..errors import InputError
from .image import UNITS_KEY, Units, get_units, set_units

_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "label_gaussian": sitk.sitkLabelGaussian,
}


def resample_to_reference(
    image: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    interpolation: str = "linear",
    default_value: float = 0.0,
    output_pixel_type: int | None = None,
) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference``.

    Parameters
    ----------
    image, reference : SimpleITK images (LPS); only the reference's geometry is used.
    transform : maps reference points to image points (ITK fixed -> moving); identity if ``None``.
    interpolation : ``"linear"`` (default, for intensities and dose), ``"nearest"`` (labels),
        ``"bspline"``, or ``"label_gaussian"``.
    default_value : value outside the image, in the image's units.
    output_pixel_type : SimpleITK pixel type; defaults to the input's.

    The units recorded in the input's metadata are carried over.
    """
    if interpolation not in _INTERPOLATORS:
        raise InputError(f"unknown interpolation {interpolation!r}; use one of {', '.join(_INTERPOLATORS)}")
    out = sitk.Resample(
        image,
        reference,
        transform if transform is not None else sitk.Transform(),
        _INTERPOLATORS[interpolation],
        float(default_value),
        image.GetPixelID() if output_pixel_type is None else output_pixel_type,
    )
    if image.HasMetaDataKey(UNITS_KEY):
        set_units(out, image.GetMetaData(UNITS_KEY))
    return out


def resample_mask(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None) -> sitk.Image:
    """Resample a binary mask by nearest neighbour onto ``reference``; the result is a uint8 0/1 label image."""
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    out = resample_to_reference(binary, reference, transform, interpolation="nearest",
                                output_pixel_type=sitk.sitkUInt8)
    return set_units(out, get_units(mask) or Units.LABEL)
