"""Speed of the gradient segmentation and of full-volume restoration (issue 4, items 1 and 6).

Run:  python Testing/benchmarks/bench_gradient_speed.py [--repeat 3] [--sitk]

Prints two tables:

1. ``segment_gradient`` on one lesion (a 15 mm sphere, contrast 5, 6 mm FWHM blur, Poisson noise) for
   several working-sphere radii (the ROI around the seed: 40 mm is the default, 50 mm a 100 mm wide ROI,
   100 mm an extreme) and PET voxel sizes, with the time of each stage (median of ``--repeat`` runs).
   Target: well under a second for ROIs up to 100 mm around the seed on 2-4 mm voxels.
2. Full-volume restoration of a 200 x 200 x 150 PET (4 mm voxels): bilateral denoising, each deblurring
   method with 10 iterations, and ``restore`` (bilateral + Landweber). Target: a few seconds on 2 cores.
   With ``--sitk`` also SimpleITK's Bilateral / ProjectedLandweber / RichardsonLucy filters for comparison
   (these take 10-20 s each, which is why the library uses its own vectorised versions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETDosePainting"))

from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction
from PETDosePaintingLib.segmentation.gradient import segment_gradient
from PETDosePaintingLib.segmentation.restoration import (
    deblur,
    denoise,
    estimate_count_scale,
    restore,
)

FWHM = 6.0


def lesion_phantom(voxel: float, fov: float = 232.0) -> tuple[sitk.Image, tuple[float, float, float]]:
    n = round(fov / voxel)
    grid = make_grid((n, n, n), (voxel,) * 3, origin=(-fov / 2 + voxel / 2,) * 3)
    centre = (0.7, -0.4, 0.2)
    activity = 1.0 + 4.0 * sphere_fraction(grid, centre, 15.0)
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), grid), FWHM))
    noisy = np.random.default_rng(0).poisson(np.clip(blurred, 0, None) * 100.0) / 100.0
    return image_from_array(noisy.astype(np.float32), grid, units=Units.SUV_BW), centre


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_segmentation(repeat: int) -> None:
    print("\n== segment_gradient, one lesion (15 mm sphere), default parameters (2 mm working grid) ==")
    header = (f"{'PET voxel':>9} {'ROI radius':>10} {'work vox':>8} {'basins':>6} {'restore':>8} {'gradient':>8} "
              f"{'watershed':>9} {'hierarchy':>9} {'choice+mask':>11} {'TOTAL s':>8}")
    print(header)
    print("-" * len(header))
    for voxel in (4.0, 3.0, 2.0):
        pet, centre = lesion_phantom(voxel)
        for radius in (40.0, 50.0, 100.0):
            total, result = timed(lambda pet=pet, centre=centre, radius=radius: segment_gradient(
                pet, centre, roi_radius_mm=radius, max_roi_radius_mm=radius), repeat)
            s = result.details["seconds"]
            work = result.details["working_spacing_mm"][0]
            print(f"{voxel:7.1f}mm {radius:8.0f}mm {work:6.2f}mm {result.details['n_basins']:6d} "
                  f"{s['restoration']:8.3f} {s['gradient']:8.3f} {s['watershed']:9.3f} {s['hierarchy']:9.3f} "
                  f"{s['level_choice_and_mask']:11.3f} {total:8.3f}")


def bench_restoration(repeat: int, with_sitk: bool) -> None:
    print("\n== full-volume restoration, 200 x 200 x 150 voxels of 4 mm ==")
    grid = make_grid((200, 200, 150), (4.0, 4.0, 4.0), origin=(-398.0, -398.0, -298.0))
    activity = 1.0 + 4.0 * sphere_fraction(grid, (10.0, 0.0, 0.0), 20.0)
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), grid), FWHM))
    noisy = np.random.default_rng(1).poisson(blurred * 100.0) / 100.0
    pet = image_from_array(noisy.astype(np.float32), grid, units=Units.SUV_BW)
    k = estimate_count_scale(pet)
    rows = [
        ("count scale estimate (automatic)", lambda: estimate_count_scale(pet)),
        ("denoise: Anscombe + bilateral (4 mm, 2 SD)", lambda: denoise(pet, count_scale=k)),
        ("denoise: Anscombe + curvature diffusion", lambda: denoise(pet, method="diffusion", count_scale=k)),
        ("deblur: projected Landweber, 10 it", lambda: deblur(pet, FWHM)),
        ("deblur: Richardson-Lucy, 10 it", lambda: deblur(pet, FWHM, method="richardson_lucy")),
        ("deblur: Van Cittert, 10 it", lambda: deblur(pet, FWHM, method="van_cittert")),
        ("restore (bilateral + Landweber, k estimated)", lambda: restore(pet, FWHM)),
    ]
    if with_sitk:
        rows += [
            ("[sitk] Bilateral (domain 4 mm)", lambda: sitk.Bilateral(pet, 4.0, 0.2)),
            ("[sitk] ProjectedLandweber, 10 it", lambda: deblur(pet, FWHM, backend="sitk")),
            ("[sitk] RichardsonLucy, 10 it", lambda: deblur(pet, FWHM, method="richardson_lucy", backend="sitk")),
        ]
    print(f"{'step':<46} {'seconds':>8}")
    print("-" * 55)
    for name, fn in rows:
        seconds, _ = timed(fn, repeat if not name.startswith("[sitk]") else 1)
        print(f"{name:<46} {seconds:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median reported), default 3")
    parser.add_argument("--sitk", action="store_true", help="also time SimpleITK's own filters (slow)")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, SimpleITK threads: {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    bench_segmentation(args.repeat)
    bench_restoration(args.repeat, args.sitk)


if __name__ == "__main__":
    main()
