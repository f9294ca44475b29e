"""Analytic objects on a voxel grid with exact partial-volume fractions: spheres and ellipsoids.

Used to build test objects of known volume (a sphere of radius r has volume 4/3 pi r^3) and as
building blocks of the digital patient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..imaging.image import physical_grid


def ellipsoid_fraction(
    reference: sitk.Image,
    centre_lps: Sequence[float],
    semi_axes_mm: Sequence[float],
    supersample: int = 5,
) -> np.ndarray:
    """Fraction (0..1) of each voxel of ``reference`` inside an axis-aligned ellipsoid (LPS axes).

    Each voxel is sampled on a ``supersample``^3 sub-grid; only voxels near the surface are sampled,
    so the cost is proportional to the surface, not the volume. Returns a ``[k, j, i]`` float32 array.
    """
    x, y, z = physical_grid(reference)
    a = np.asarray(semi_axes_mm, dtype=float)
    c = np.asarray(centre_lps, dtype=float)
    rho = np.sqrt(((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2)
    half_diag = 0.5 * np.linalg.norm(np.reshape(reference.GetDirection(), (3, 3)) * reference.GetSpacing(), axis=0)
    margin = float(np.linalg.norm(half_diag)) / float(a.min())
    fraction = (rho <= 1.0).astype(np.float32)
    edge = np.abs(rho - 1.0) <= margin
    if supersample > 1 and edge.any():
        offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
        oi, oj, ok = np.meshgrid(offsets, offsets, offsets, indexing="ij")
        steps = np.reshape(reference.GetDirection(), (3, 3)) * np.asarray(reference.GetSpacing())[None, :]
        sub = (oi.ravel()[:, None] * steps[:, 0] + oj.ravel()[:, None] * steps[:, 1]
               + ok.ravel()[:, None] * steps[:, 2])  # (S, 3) offsets in mm
        px = x[edge][:, None] + sub[None, :, 0] - c[0]
        py = y[edge][:, None] + sub[None, :, 1] - c[1]
        pz = z[edge][:, None] + sub[None, :, 2] - c[2]
        inside = (px / a[0]) ** 2 + (py / a[1]) ** 2 + (pz / a[2]) ** 2 <= 1.0
        fraction[edge] = inside.mean(axis=1)
    return fraction


def sphere_fraction(reference: sitk.Image, centre_lps: Sequence[float], radius_mm: float,
                    supersample: int = 5) -> np.ndarray:
    """Fraction of each voxel inside a sphere; see :func:`ellipsoid_fraction`."""
    return ellipsoid_fraction(reference, centre_lps, (radius_mm,) * 3, supersample)


def sphere_volume_ml(radius_mm: float) -> float:
    """Analytic volume of a sphere in mL."""
    return 4.0 / 3.0 * np.pi * radius_mm**3 / 1000.0
