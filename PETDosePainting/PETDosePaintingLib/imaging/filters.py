"""Small image filters with physical (mm) parameters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548...


def fwhm_to_sigma(fwhm_mm: float | Sequence[float]) -> np.ndarray:
    """Gaussian standard deviation (mm) for a full width at half maximum (mm)."""
    return np.asarray(fwhm_mm, dtype=float) / FWHM_PER_SIGMA


def gaussian_blur(image: sitk.Image, fwhm_mm: float | Sequence[float]) -> sitk.Image:
    """Blur with a Gaussian of the given FWHM in mm (scalar, or one value per axis x, y, z).

    Uses SimpleITK's ``DiscreteGaussian`` (sampled kernel, variance in mm^2, physical spacing honoured),
    which keeps the image's total sum; a zero FWHM leaves that axis untouched. Units metadata is kept.
    """
    sigma = np.broadcast_to(fwhm_to_sigma(fwhm_mm), (3,))
    if not np.any(sigma > 0):
        return sitk.Image(image)
    as_float = sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image
    out = sitk.DiscreteGaussian(as_float, variance=[float(s) ** 2 for s in sigma], maximumKernelWidth=256,
                                maximumError=0.001, useImageSpacing=True)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out
