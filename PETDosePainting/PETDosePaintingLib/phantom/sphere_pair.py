"""A minimal PET/CT pair with one spherical tumour of known volume (analytic ground truth).

A stand-in test object, far simpler than the digital patient: a soft-tissue cylinder with a
spherical tumour; PET = activity blurred by a Gaussian PSF plus intensity-dependent Gaussian noise
(a Poisson-like variance proportional to the mean), on a clinical 4 mm grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..imaging.filters import gaussian_blur
from ..imaging.image import Units, image_from_array, make_grid, physical_grid
from .shapes import ellipsoid_fraction, sphere_fraction, sphere_volume_ml


@dataclass(frozen=True)
class SpherePairConfig:
    """Parameters of :func:`sphere_pet_ct` (lengths in mm, uptake in SUVbw, CT in HU)."""

    pet_voxel_mm: float = 4.0
    ct_voxel_mm: tuple[float, float, float] = (1.0, 1.0, 2.0)
    field_of_view_mm: tuple[float, float, float] = (160.0, 160.0, 96.0)
    body_semi_axes_mm: tuple[float, float] = (70.0, 60.0)
    tumour_radius_mm: float = 20.0
    tumour_suv: float = 10.0
    background_suv: float = 1.0
    psf_fwhm_mm: float = 6.0
    noise_cov: float = 0.10  #: coefficient of variation of the noise in the background
    seed: int = 0


@dataclass
class SpherePair:
    """The images and truth of :func:`sphere_pet_ct`."""

    pet: sitk.Image  #: SUVbw on the PET grid
    ct: sitk.Image  #: HU on the CT grid
    truth_fraction: sitk.Image  #: tumour tissue fraction on the PET grid
    truth_mask: sitk.Image  #: tumour fraction >= 0.5 on the PET grid
    tumour_centre_lps: tuple[float, float, float]
    tumour_volume_ml: float  #: analytic 4/3 pi r^3
    config: SpherePairConfig


def sphere_pet_ct(config: SpherePairConfig | None = None) -> SpherePair:
    """Build the PET/CT pair; deterministic for a given ``config.seed``."""
    cfg = config or SpherePairConfig()
    fov = np.asarray(cfg.field_of_view_mm)
    centre = (10.0, -5.0, 0.0)

    pet_size = np.round(fov / cfg.pet_voxel_mm).astype(int)
    pet_grid = make_grid(pet_size, [cfg.pet_voxel_mm] * 3, origin=-fov / 2 + cfg.pet_voxel_mm / 2)
    body = _body_fraction(pet_grid, cfg)
    tumour = sphere_fraction(pet_grid, centre, cfg.tumour_radius_mm)
    activity = cfg.background_suv * body * (1 - tumour) + cfg.tumour_suv * tumour
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), pet_grid),
                                                   cfg.psf_fwhm_mm))
    rng = np.random.default_rng(cfg.seed)
    sd = cfg.noise_cov * np.sqrt(cfg.background_suv * np.clip(blurred, 0, None))
    pet = np.clip(blurred + sd * rng.standard_normal(blurred.shape), 0, None).astype(np.float32)

    ct_spacing = np.asarray(cfg.ct_voxel_mm)
    ct_size = np.round(fov / ct_spacing).astype(int)
    ct_grid = make_grid(ct_size, ct_spacing, origin=-fov / 2 + ct_spacing / 2)
    ct_body = _body_fraction(ct_grid, cfg) > 0.5
    x, y, _ = physical_grid(ct_grid)
    spine = (x**2 + (y - 35.0) ** 2) <= 12.0**2
    ct_tumour = sphere_fraction(ct_grid, centre, cfg.tumour_radius_mm, supersample=1) > 0.5
    hu = np.where(ct_body, 40.0, -1000.0)
    hu[ct_tumour] = 55.0
    hu[spine & ct_body] = 700.0

    return SpherePair(
        pet=image_from_array(pet, pet_grid, units=Units.SUV_BW),
        ct=image_from_array(hu.astype(np.int16), ct_grid, units=Units.HU),
        truth_fraction=image_from_array(tumour.astype(np.float32), pet_grid, units=Units.FRACTION),
        truth_mask=image_from_array(tumour >= 0.5, pet_grid),
        tumour_centre_lps=centre,
        tumour_volume_ml=sphere_volume_ml(cfg.tumour_radius_mm),
        config=cfg,
    )


def _body_fraction(grid: sitk.Image, cfg: SpherePairConfig) -> np.ndarray:
    """An elliptic cylinder along z (semi-axes in x, y), as a fraction map."""
    a, b = cfg.body_semi_axes_mm
    return ellipsoid_fraction(grid, (0.0, 0.0, 0.0), (a, b, 1e6), supersample=3)
