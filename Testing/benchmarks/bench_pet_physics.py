"""Benchmark of the PET scanner simulator: image quality on the NEMA/IEC phantom, and run times.

Usage::

    python Testing/benchmarks/bench_pet_physics.py [--quick] [--out results.json] [--seed 1]

What it measures (the figures for the README):

1. **NEMA/IEC body phantom** (:func:`PETDosePaintingLib.phantom.nema.nema_phantom`, 1 mm fine grid,
   310 x 240 x 102 mm, lung insert) simulated with the default :class:`ScannerConfig` and reconstructed
   on 2 mm voxels: recovery coefficients (RCmax, RCmean = EARL A50, RCpeak, RC in the true VOI) of the
   10-37 mm spheres, background COV (voxel std / mean in the 60 NEMA ROIs), NEMA background
   variability, effective image FWHM (joint fit of the 22-37 mm spheres), counts and run time. Runs:
   4:1 (NEMA) at the low, typical and high count levels and noise-free, 10:1 (EARL protocol) at typical
   counts without and with PSF modelling; RCmax and RCmean are compared with the EARL 1 [V] and
   EARL 2 [M] bands.
2. **Run time on a head-and-neck field of view**: 200 x 200 x 150 mm at 1 mm (a 180 mm cylinder with
   the same spheres), output 2 and 3 mm, default configuration (the first run builds the system
   matrices; later runs reuse them, as the digital patient does for its four PETs), and the quick
   configuration (1 mm -> 3 mm, 2 mm -> 4 mm).

Calibration (documented in :data:`PETDosePaintingLib.phantom.pet_scanner.COUNT_LEVELS`): the count
levels were set so that the 4:1 IEC phantom at 2 mm voxels gives a background COV of about 12 %
("typical"), 23 % ("low") and 6 % ("high"); the 6 mm post-filter without PSF modelling was chosen so
that the 10:1 recoveries sit at the upper edge of the EARL 1 bands (RCmax of the 37 mm sphere about
1.1, of the 10 mm sphere about 0.57); PSF modelling with a 5 mm filter lands inside the EARL 2 bands.
RCmax of the large spheres at 4:1 is inflated by noise (compare the noise-free run). ``--quick``
runs a reduced set (2 mm fine grid, 4 mm voxels, quick configuration) in a few seconds. The full
run takes a minute or two on 2 cores.

Results are printed as markdown and written as JSON next to this script
(``bench_pet_physics.json``) or to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

try:
    import PETDosePaintingLib  # noqa: F401
except ImportError:  # running from a source checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETDosePainting"))

from PETDosePaintingLib.imaging.io import write_json
from PETDosePaintingLib.phantom.nema import (
    EARL1_RC_A50,
    EARL1_RC_MAX,
    EARL2_RC_A50,
    EARL2_RC_MAX,
    measure_nema,
    nema_phantom,
)
from PETDosePaintingLib.phantom.pet_scanner import ScannerConfig, compatible_pet_grid, simulate_pet
from PETDosePaintingLib.phantom.projector import clear_projector_cache


def _band_mark(value: float, bands: dict[float, tuple[float, float]], diameter: float) -> str:
    lo, hi = bands[diameter]
    return "in" if lo <= value <= hi else ("below" if value < lo else "above")


def run_nema(label: str, phantom, config: ScannerConfig, voxel_mm: float, seed: int, *, noise: bool = True) -> dict:
    """Simulate and measure one configuration on the IEC phantom."""
    grid = compatible_pet_grid(phantom.activity, voxel_mm)
    started = time.perf_counter()
    result = simulate_pet(phantom.activity, phantom.mu, grid, config, rng=seed, noise=noise)
    sim_s = time.perf_counter() - started
    measured = measure_nema(result.image, phantom)
    return {
        "label": label,
        "sphere_to_background": phantom.sphere_to_background,
        "voxel_mm": [float(v) for v in grid.GetSpacing()],
        "config": asdict(config),
        "counts": {"trues": result.trues, "scatter": result.scatter, "randoms": result.randoms,
                   "prompts": result.prompts, "nec": result.nec, "trues_per_slice": result.trues_per_slice,
                   "counts_per_kbq": result.counts_per_kbq},
        "simulation_s": sim_s,
        "timings_s": result.timings_s,
        **measured.as_dict(),
    }


def run_timing(label: str, fine_mm: float, voxel_mm: float, config: ScannerConfig, repeats: int = 2) -> dict:
    """Run time of one simulation on a 200 x 200 x 150 mm head-and-neck field of view."""
    phantom = nema_phantom(body="cylinder", voxel_mm=fine_mm, field_of_view_mm=(200.0, 200.0, 150.0))
    grid = compatible_pet_grid(phantom.activity, voxel_mm)
    times, result = [], None
    for k in range(repeats):
        started = time.perf_counter()
        result = simulate_pet(phantom.activity, phantom.mu, grid, config, rng=k)
        times.append(time.perf_counter() - started)
    measured = measure_nema(result.image, phantom)
    return {
        "label": label, "fine_mm": fine_mm, "voxel_mm": [float(v) for v in grid.GetSpacing()],
        "pet_size": list(grid.GetSize()), "fine_size": list(phantom.activity.GetSize()),
        "first_run_s": times[0], "cached_run_s": float(np.min(times[1:])) if repeats > 1 else None,
        "timings_s": result.timings_s, "background_cov": measured.background.cov,
        "fwhm_mm": measured.fwhm.fwhm_mm,
        "rc_max": {r.diameter_mm: r.rc_max for r in measured.recovery},
        "trues_per_slice": result.trues_per_slice,
    }


def _markdown(nema_runs: list[dict], timing_runs: list[dict]) -> str:
    lines = ["## NEMA/IEC body phantom", ""]
    header = "| run | COV % | NEMA BV(10 mm) % | mean | FWHM in-plane / axial (mm) | trues/slice | NEC | sim s |"
    lines += [header, "|" + "---|" * 8]
    for run in nema_runs:
        bg, fw, c = run["background"], run["fwhm"], run["counts"]
        bv = bg["nema_variability"].get(10.0, float("nan")) * 100
        lines.append(f"| {run['label']} | {bg['cov'] * 100:.1f} | {bv:.1f} | {bg['mean']:.3f} | "
                     f"{fw['fwhm_inplane_mm']:.1f} / {fw['fwhm_axial_mm']:.1f} | {c['trues_per_slice']:.3g} | "
                     f"{c['nec']:.3g} | {run['simulation_s']:.1f} |")
    for run in nema_runs:
        lines += ["", f"### {run['label']}", "",
                  "| sphere (mm) | RCmax | EARL1 / EARL2 | RCmean (A50) | EARL1 / EARL2 | RCpeak | RC (true VOI) |",
                  "|---|---|---|---|---|---|---|"]
        for r in run["recovery"]:
            d = r["diameter_mm"]
            lines.append(
                f"| {d:.0f} | {r['rc_max']:.2f} | {_band_mark(r['rc_max'], EARL1_RC_MAX, d)} / "
                f"{_band_mark(r['rc_max'], EARL2_RC_MAX, d)} | {r['rc_a50']:.2f} | "
                f"{_band_mark(r['rc_a50'], EARL1_RC_A50, d)} / {_band_mark(r['rc_a50'], EARL2_RC_A50, d)} | "
                f"{r['rc_peak']:.2f} | {r['rc_voi']:.2f} |")
    lines += ["", "## Run time, 200 x 200 x 150 mm head-and-neck field of view", "",
              "| configuration | fine grid | PET voxels (mm) | PET size | first run s | cached run s | "
              "COV % | FWHM mm | RCmax 10 / 37 mm |", "|" + "---|" * 9]
    for run in timing_runs:
        cached = "-" if run["cached_run_s"] is None else f"{run['cached_run_s']:.1f}"
        lines.append(f"| {run['label']} | {run['fine_mm']:g} mm {tuple(run['fine_size'])} | "
                     f"{' x '.join(f'{v:g}' for v in run['voxel_mm'])} | {tuple(run['pet_size'])} | "
                     f"{run['first_run_s']:.1f} | {cached} | {run['background_cov'] * 100:.1f} | "
                     f"{run['fwhm_mm']:.1f} | {run['rc_max'][10.0]:.2f} / {run['rc_max'][37.0]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced set, a few seconds")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"), help="JSON output path")
    parser.add_argument("--seed", type=int, default=1, help="noise seed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    default = ScannerConfig()
    nema_runs, timing_runs = [], []
    if args.quick:
        quick = ScannerConfig.quick()
        for ratio in (4.0, 10.0):
            phantom = nema_phantom(voxel_mm=2.0, field_of_view_mm=(310.0, 240.0, 80.0), sphere_to_background=ratio)
            nema_runs.append(run_nema(f"{ratio:g}:1 quick config, 2 mm fine, 4 mm voxels", phantom, quick, 4.0,
                                      args.seed))
        timing_runs.append(run_timing("quick", 2.0, 4.0, quick))
    else:
        four = nema_phantom(sphere_to_background=4.0)
        for level in ("typical", "low", "high"):
            nema_runs.append(run_nema(f"4:1 {level} counts", four, default.with_count_level(level), 2.0, args.seed))
        nema_runs.append(run_nema("4:1 noise-free", four, default, 2.0, args.seed, noise=False))
        del four
        ten = nema_phantom(sphere_to_background=10.0)
        nema_runs.append(run_nema("10:1 typical counts", ten, default, 2.0, args.seed))
        nema_runs.append(run_nema("10:1 typical counts, PSF modelling, 5 mm filter", ten,
                                  ScannerConfig(psf_modelling=True, post_filter_fwhm_mm=5.0), 2.0, args.seed))
        del ten
        clear_projector_cache()
        timing_runs.append(run_timing("default", 1.0, 2.0, default))
        timing_runs.append(run_timing("default", 1.0, 3.0, default))
        timing_runs.append(run_timing("quick", 1.0, 3.0, ScannerConfig.quick()))
        timing_runs.append(run_timing("quick", 2.0, 4.0, ScannerConfig.quick()))
    report = _markdown(nema_runs, timing_runs)
    print(report)
    total = time.perf_counter() - started
    print(f"\nTotal benchmark time {total:.0f} s on {platform.machine()} / Python {platform.python_version()}.")
    write_json({"quick": args.quick, "seed": args.seed, "total_s": total, "nema": nema_runs,
                "timing": timing_runs, "markdown": report}, args.out)
    print(f"Results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
