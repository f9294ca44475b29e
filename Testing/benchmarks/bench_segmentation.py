"""Segmentation benchmark (issue 4): every registered method on a cohort of simulated H&N lesions.

Run:  python Testing/benchmarks/bench_segmentation.py [--quick] [--n 30] [--seed 0] [--methods gradient ...]
                                                      [--indices 0 5 ...] [--no-perf] [--out DIR]

1. **Cohort** (:func:`PETDosePaintingLib.phantom.cohort.benchmark_cases`): ``--n`` lesions of
   :func:`~PETDosePaintingLib.phantom.tumour.benchmark_cohort` (0.5-60 mL, TBR 2-10, heterogeneity,
   necrosis, inflammation rims, adjacent avid structures; sampled by the generator, never hand-picked),
   each rendered alone into the 1 mm digital-patient anatomy and imaged by the PET simulator (default
   ``ScannerConfig``, 2 mm voxels) with a CT on the PET grid (trilinear). ``--quick``: 2 mm anatomy, 4 mm
   PET voxels, quick scanner (smoke runs only; its numbers are not the benchmark's).
2. **Methods**: every registered method (``segmentation.registry``) from the same click (the hottest PET
   voxel of the GTV's inner part), with its defaults, plus the absolute threshold SUV 2.5 as its own row.
   Methods that need the scanner resolution (``gradient``, ``iterative``) get ``fwhm_mm`` = the scanner
   configuration's nominal effective resolution ``ScannerConfig.effective_fwhm_mm`` = sqrt(4.5² + 6²) =
   7.5 mm (system PSF and 3D Gaussian post-filter; ``bench_pet_physics.py`` measured 7.3-7.9 mm on edge
   fits). ``randomwalker`` (and ``consensus``, which passes it on) gets the CT on the PET grid.
3. **Outcomes**: a method that raises one of the library's errors (``PETDPError``: it says why) *refused*
   the case; any other exception is a *crash*. Both count as failures with Dice 0 (and sensitivity 0,
   volume error -100 %) in the "all cases" statistics; "answered" statistics use only the cases with a
   mask. Refusals and crashes are also counted separately.
4. **Metrics** (``comparison.metrics.compare_masks``, TG-211 set): Dice, sensitivity, PPV, volume error
   (%, signed, and absolute), HD95 (mm) against the binary truth (GTV fraction >= 0.5) on the PET grid,
   and wall time per lesion (2 shared cores).
5. **Tables**: overall per method; per stratum (volume, TBR, heterogeneity, necrosis, rim, adjacent) for
   Dice and absolute volume error; gradient vs the fixed thresholds (41 % SUVmax, SUV 2.5, 50 % SUVpeak,
   bgsub, A50P) on lesions with an inflammation rim or heterogeneous uptake, with the fixed thresholds
   also re-run in a 90 mm working sphere (the gradient method's own maximum) so that their refusals of
   large lesions in the default 40 mm sphere do not decide the comparison; the gradient method per lesion.
6. **Performance** (unless ``--no-perf``): ``segment_gradient`` per lesion on the first ``--perf-lesions``
   cohort lesions re-simulated at 2, 3 and 4 mm voxels, in a working sphere of radius 50 mm (a 100 mm
   wide ROI) and of radius 100 mm; full-volume restoration (``segmentation.restoration.restore``) of a
   200 x 200 x 150 PET.

7. **Sphere calibration** (only with ``--spheres``): the gradient method with and without its
   sub-resolution step (``subresolution_radius_mm`` 0 vs the default) on homogeneous spheres of radius 4-8
   mm, contrast 3 and 6, in a water cylinder imaged by the same scanner model at 2, 3 and 4 mm voxels (2
   noise realisations x 4 spheres per cell). These are the runs the step's defaults were read from
   (``segmentation/gradient.py``, step 10); about 4 minutes, written to ``segmentation_spheres.md``.

Writes ``segmentation.md`` and ``segmentation.json`` to ``--out`` (default ``Testing/benchmarks/results``).
The full run (n = 30 with performance) takes about 10 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETDosePainting"))

from PETDosePaintingLib.comparison.metrics import compare_masks
from PETDosePaintingLib.errors import PETDPError
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.imaging.io import read_json, write_json, write_text
from PETDosePaintingLib.phantom.cohort import LesionCase, benchmark_cases, cohort_anatomy
from PETDosePaintingLib.phantom.tumour import json_ready
from PETDosePaintingLib.segmentation.registry import method_names, run_method
from PETDosePaintingLib.segmentation.restoration import restore, restore_with_report

RESULTS = Path(__file__).resolve().parent / "results"

#: The fixed thresholds of the issue (row labels of the runs below).
FIXED_THRESHOLDS = ("threshold", "suv2.5", "peak", "bgsub", "a50p")
#: Working-sphere radius (mm) of the fixed-threshold re-run (the gradient method's max_roi_radius_mm).
WIDE_ROI_MM = 90.0


@dataclass(frozen=True)
class Run:
    """One row of the benchmark: a registered method with fixed parameters."""

    label: str
    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    needs_fwhm: bool = False
    needs_ct: bool = False
    description: str = ""

    def kwargs(self, case: LesionCase) -> dict[str, Any]:
        out = dict(self.parameters)
        if self.needs_fwhm:
            out["fwhm_mm"] = case.fwhm_mm
        if self.needs_ct:
            out["ct"] = case.ct
        return out


def default_runs() -> list[Run]:
    """Every registered method with its defaults, plus SUV 2.5 (same order as the registry)."""
    runs = []
    for name in method_names():
        if name == "threshold":
            runs.append(Run("threshold", "threshold", description="41 % SUVmax"))
            runs.append(Run("suv2.5", "threshold", {"absolute": 2.5}, description="SUV 2.5"))
        elif name in ("gradient", "iterative"):
            runs.append(Run(name, name, needs_fwhm=True))
        elif name in ("randomwalker", "consensus"):
            runs.append(Run(name, name, needs_ct=True))
        else:
            runs.append(Run(name, name))
    return runs


def wide_runs() -> list[Run]:
    """The fixed thresholds again in a 90 mm working sphere."""
    base = {r.label: r for r in default_runs()}
    return [Run(f"{label} r{WIDE_ROI_MM:g}", base[label].method,
                {**base[label].parameters, "roi_radius_mm": WIDE_ROI_MM}) for label in FIXED_THRESHOLDS]


# ---------------------------------------------------------------------------------------------- running


def evaluate(run: Run, case: LesionCase) -> dict[str, Any]:
    """Run one method on one case; the outcome and the metrics as a JSON-ready row."""
    row: dict[str, Any] = {"run": run.label, "lesion": case.index}
    t0 = time.perf_counter()
    try:
        result = run_method(run.method, case.pet, case.seed_lps, **run.kwargs(case))
    except PETDPError as exc:
        row.update(outcome="refused", reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a crash is a result of the benchmark, not a reason to stop it
        row.update(outcome="crashed", reason=f"{type(exc).__name__}: {exc}")
    else:
        row["outcome"] = "answered"
        m = compare_masks(result.mask, case.truth, mask_name=run.label, reference_name="truth", allow_empty=True)
        row.update(dice=m.dice or 0.0, sensitivity=m.sensitivity or 0.0, ppv=m.ppv, volume_ml=m.volume_ml,
                   volume_error_pct=m.volume_error_pct, hd95_mm=m.hd95_mm)
        if run.method == "gradient":
            d = result.details
            row["gradient"] = {"chosen_level": d["chosen_level"], "n_levels": d["n_levels"],
                               "n_basins": d["n_basins"], "seed_relocated": d["seed_relocated"],
                               "roi_radius_mm_used": d["roi_radius_mm_used"],
                               "count_scale": d["restoration"].get("count_scale"),
                               "background": result.background, "background_sd": d["background_sd"],
                               "subresolution": d["subresolution"], "seconds": d["seconds"]}
    row["seconds"] = time.perf_counter() - t0
    if row["outcome"] != "answered":
        row.update(dice=0.0, sensitivity=0.0, ppv=None, volume_ml=0.0, volume_error_pct=-100.0, hd95_mm=None)
    return row


# ------------------------------------------------------------------------------------------- statistics


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _median(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of one method over a set of lesions (all cases, and where it answered)."""
    answered = [r for r in rows if r["outcome"] == "answered"]
    abs_ve = [abs(r["volume_error_pct"]) for r in rows if r["volume_error_pct"] is not None]
    return {
        "n": len(rows),
        "refused": sum(r["outcome"] == "refused" for r in rows),
        "crashed": sum(r["outcome"] == "crashed" for r in rows),
        "dice_mean": _mean([r["dice"] for r in rows]),
        "dice_median": _median([r["dice"] for r in rows]),
        "dice_min": min((r["dice"] for r in rows), default=None),
        "sensitivity_mean": _mean([r["sensitivity"] for r in rows]),
        "ppv_mean": _mean([r["ppv"] for r in answered]),
        "volume_error_mean": _mean([r["volume_error_pct"] for r in rows]),
        "abs_volume_error_mean": _mean(abs_ve),
        "abs_volume_error_median": _median(abs_ve),
        "hd95_mean": _mean([r["hd95_mm"] for r in answered]),
        "answered_dice_mean": _mean([r["dice"] for r in answered]),
        "answered_abs_volume_error_mean": _mean([abs(r["volume_error_pct"]) for r in answered
                                                if r["volume_error_pct"] is not None]),
        "seconds_mean": _mean([r["seconds"] for r in rows]),
        "seconds_median": _median([r["seconds"] for r in rows]),
        "seconds_max": max((r["seconds"] for r in rows), default=None),
    }


def strata_of(cases: Sequence[LesionCase]) -> dict[str, list[int]]:
    """Stratum name -> lesion indices (volume and TBR bins, then the yes-groups of each feature)."""
    out: dict[str, list[int]] = {}
    for key in ("volume_bin", "tbr_bin"):
        values = sorted({getattr(c.strata, key) for c in cases}, key=_bin_order)
        for v in values:
            out[v] = [c.index for c in cases if getattr(c.strata, key) == v]
    for key, name in (("heterogeneous", "heterogeneous"), ("necrotic", "necrotic"), ("rim", "rim"),
                      ("adjacent", "adjacent avid")):
        out[name] = [c.index for c in cases if getattr(c.strata, key)]
        out[f"no {name}"] = [c.index for c in cases if not getattr(c.strata, key)]
    out["rim or heterogeneous"] = [c.index for c in cases if c.strata.rim or c.strata.heterogeneous]
    return out


def _rounded(obj: Any, digits: int = 4) -> Any:
    """A JSON-ready copy with floats rounded to ``digits`` significant digits (keeps the committed file small)."""
    obj = json_ready(obj)
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def _bin_order(label: str) -> tuple[int, str]:
    return (0 if "<" in label else 2 if ">" in label else 1, label)


# ----------------------------------------------------------------------------------------- performance


def bench_gradient_roi(cases_by_voxel: dict[float, list[LesionCase]]) -> list[dict[str, Any]]:
    """``segment_gradient`` per lesion in fixed working spheres of radius 50 and 100 mm."""
    from PETDosePaintingLib.segmentation.gradient import segment_gradient

    rows = []
    for voxel, cases in cases_by_voxel.items():
        for radius, label in ((50.0, "100 mm wide (radius 50 mm)"), (100.0, "radius 100 mm")):
            times, dices, work = [], [], []
            for case in cases:
                t0 = time.perf_counter()
                try:
                    result = segment_gradient(case.pet, case.seed_lps, fwhm_mm=case.fwhm_mm, roi_radius_mm=radius,
                                              max_roi_radius_mm=radius)
                except PETDPError:
                    times.append(time.perf_counter() - t0)
                    dices.append(0.0)
                    continue
                times.append(time.perf_counter() - t0)
                dices.append(compare_masks(result.mask, case.truth, allow_empty=True).dice or 0.0)
                work.append(result.details["working_spacing_mm"][0])
            rows.append({"voxel_mm": voxel, "roi": label, "radius_mm": radius, "n": len(cases),
                         "seconds_median": statistics.median(times), "seconds_max": max(times),
                         "dice_mean": float(np.mean(dices)), "working_voxel_mm": sorted(set(work))})
    return rows


def bench_restoration(case: LesionCase) -> list[dict[str, Any]]:
    """Full-volume ``restore`` of a 200 x 200 x 150 PET: the simulated 2 mm PET of ``case`` mirror-tiled
    2 x 2 x 2 (realistic correlated OSEM noise), at 2 mm and at 4 mm voxel spacing."""
    base = sitk.GetArrayFromImage(case.pet)
    big = np.concatenate([base, base[::-1]], axis=0)
    big = np.concatenate([big, big[:, ::-1]], axis=1)
    big = np.concatenate([big, big[:, :, ::-1]], axis=2)
    big = np.ascontiguousarray(big[:150, :200, :200], dtype=np.float32)
    rows = []
    for voxel in (4.0, 2.0):
        grid = make_grid(big.shape[::-1], (voxel,) * 3, origin=(0.0, 0.0, 0.0))
        pet = image_from_array(big, grid, units=Units.SUV_BW)
        restore(pet, case.fwhm_mm)  # warm-up (imports, thread pool)
        best, stages = np.inf, None
        for _ in range(2):
            t0 = time.perf_counter()
            _, report = restore_with_report(pet, case.fwhm_mm)
            seconds = time.perf_counter() - t0
            if seconds < best:
                best, stages = seconds, report.seconds
        rows.append({"size": list(big.shape[::-1]), "voxel_mm": voxel, "seconds": best, "stages": stages})
    return rows


def bench_spheres(voxels: Sequence[float] = (2.0, 3.0, 4.0), contrasts: Sequence[float] = (3.0, 6.0),
                  radii: Sequence[float] = (4.0, 5.0, 6.0, 7.0, 8.0), n_noise: int = 2,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The gradient method with (default) and without (``subresolution_radius_mm=0``) its sub-resolution
    step on simulated spheres: a water cylinder (radius 75 mm, uptake 1) with four spheres 40 mm off axis,
    1 mm fine grid, the default scanner (``ScannerConfig()``) at each PET voxel size. Truth: sphere fraction
    >= 0.5 on the PET grid. A refusal counts as Dice 0, volume error -100 %."""
    from PETDosePaintingLib.phantom.modalities import area_average
    from PETDosePaintingLib.phantom.pet_scanner import ScannerConfig, compatible_pet_grid, simulate_pet
    from PETDosePaintingLib.phantom.shapes import sphere_fraction
    from PETDosePaintingLib.segmentation.gradient import segment_gradient

    fine = make_grid((180, 180, 48), (1.0, 1.0, 1.0), origin=(-89.5, -89.5, -23.5))
    _z, y, x = np.meshgrid(np.arange(48) - 23.5, np.arange(180) - 89.5, np.arange(180) - 89.5, indexing="ij")
    body = (x**2 + y**2) <= 75.0**2
    mu = image_from_array(np.where(body, 0.096, 0.0).astype(np.float32), fine, units=Units.MU)
    scanner = ScannerConfig()
    fwhm = scanner.effective_fwhm_mm
    rows = []
    for voxel in voxels:
        grid = compatible_pet_grid(fine, voxel)
        for contrast in contrasts:
            for radius in radii:
                cell: dict[str, list[tuple[float, float]]] = {"plain": [], "default": []}
                for seed in range(n_noise):
                    rng = np.random.default_rng(1000 * seed + int(10 * radius) + int(100 * contrast))
                    centres = [(40.0 * np.cos(a) + rng.uniform(-1, 1), 40.0 * np.sin(a) + rng.uniform(-1, 1),
                                rng.uniform(-1, 1)) for a in np.linspace(0, 2 * np.pi, 5)[:4]]
                    activity = body.astype(np.float32)
                    for centre in centres:
                        sphere = sphere_fraction(fine, centre, radius).astype(np.float32)
                        activity = activity + np.float32(contrast - 1.0) * sphere
                    pet = simulate_pet(image_from_array(activity, fine, units=Units.SUV_BW), mu, grid, scanner,
                                       rng=seed).image
                    for centre in centres:
                        truth = area_average(sphere_fraction(fine, centre, radius), fine, grid) >= 0.5
                        for label, rsub in (("plain", 0.0), ("default", None)):
                            try:
                                result = segment_gradient(pet, centre, fwhm_mm=fwhm, subresolution_radius_mm=rsub)
                            except PETDPError:
                                cell[label].append((-100.0, 0.0))
                                continue
                            mask = sitk.GetArrayFromImage(result.mask).astype(bool)
                            n_t, n_m = np.count_nonzero(truth), np.count_nonzero(mask)
                            dice = 2.0 * np.count_nonzero(mask & truth) / (n_m + n_t)
                            cell[label].append((100.0 * (n_m - n_t) / n_t, dice))
                row = {"voxel_mm": voxel, "contrast": contrast, "radius_mm": radius, "n": len(cell["plain"])}
                for label, values in cell.items():
                    arr = np.asarray(values)
                    row[label] = {"volume_error_pct": float(arr[:, 0].mean()), "dice": float(arr[:, 1].mean())}
                rows.append(row)
                log(f"spheres {voxel:g} mm, contrast {contrast:g}, radius {radius:g} mm: Dice "
                    f"{row['plain']['dice']:.3f} -> {row['default']['dice']:.3f}, VE "
                    f"{row['plain']['volume_error_pct']:+.0f} -> {row['default']['volume_error_pct']:+.0f} %")
    return rows


def spheres_markdown(rows: list[dict[str, Any]], fwhm_mm: float) -> str:
    lines = ["# Gradient method on simulated spheres: sub-resolution step off / on", "",
             "Generated by `Testing/benchmarks/bench_segmentation.py --spheres`. Water cylinder with four "
             "spheres, default scanner model (effective FWHM "
             f"{fwhm_mm:.2f} mm), 2 noise realisations x 4 spheres per row; truth = sphere fraction >= 0.5 on "
             "the PET grid. `off` = `subresolution_radius_mm=0`, `on` = the default.", "",
             "| PET voxel | contrast | radius mm | volume mL | Dice off | Dice on | VE % off | VE % on |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['voxel_mm']:g} mm | {r['contrast']:g} | {r['radius_mm']:g} "
                     f"| {4 / 3 * np.pi * r['radius_mm']**3 / 1000:.2f} | {r['plain']['dice']:.3f} "
                     f"| {r['default']['dice']:.3f} | {r['plain']['volume_error_pct']:+.0f} "
                     f"| {r['default']['volume_error_pct']:+.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- markdown


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def markdown(report: dict[str, Any]) -> str:
    meta, overall, strata = report["meta"], report["overall"], report["strata"]
    labels = [r["label"] for r in report["runs"]]
    lines = [
        "# Segmentation benchmark",
        "",
        f"Generated by `Testing/benchmarks/bench_segmentation.py` on {meta['date']} ({meta['command']}); "
        f"{meta['n_lesions']} lesions, cohort seed {meta['seed']}, {meta['cores']} cores, "
        f"total {meta['seconds_total'] / 60:.1f} min.",
        "",
        f"Cohort: `phantom.cohort.benchmark_cases` ({meta['cohort']}). Scanner: {meta['scanner']}. "
        f"`fwhm_mm` for gradient and iterative = {meta['fwhm_mm']:.2f} mm "
        "(`ScannerConfig.effective_fwhm_mm`, nominal sqrt(PSF² + post-filter²)). Truth: primary GTV "
        "tissue fraction >= 0.5 on the PET grid (rim and adjacent structure are not GTV). Click: hottest PET "
        "voxel of the GTV's inner part. Every method with its registry defaults; `suv2.5` = threshold at "
        "absolute SUV 2.5; `randomwalker` and `consensus` get the CT on the PET grid.",
        "",
        "Failures: a *refusal* (the method raised a library error saying why) or a *crash* (any other "
        "exception) counts as Dice 0, sensitivity 0, volume error -100 % in the \"all\" columns; "
        "\"answered\" columns use only the lesions where the method returned a mask. |VE| = absolute volume "
        "error (anchor: MIM PET Edge 11 % on 31 Monte Carlo lesions, Werner-Wasik 2012).",
        "",
        "## Overall",
        "",
        "| method | Dice mean | Dice median | Dice min | Se | PPV | VE % | abs VE % mean | abs VE % median "
        "| HD95 mm | refused | crashed | Dice answered | abs VE answered | s/lesion mean | s max |",
        "|---|" + "---|" * 15,
    ]
    for label in labels:
        s = overall[label]
        lines.append(
            f"| {label} | {_f(s['dice_mean'], '.3f')} | {_f(s['dice_median'], '.3f')} | {_f(s['dice_min'], '.3f')} "
            f"| {_f(s['sensitivity_mean'])} | {_f(s['ppv_mean'])} | {_f(s['volume_error_mean'], '+.1f')} "
            f"| {_f(s['abs_volume_error_mean'], '.1f')} | {_f(s['abs_volume_error_median'], '.1f')} "
            f"| {_f(s['hd95_mean'], '.1f')} | {s['refused']} | {s['crashed']} | {_f(s['answered_dice_mean'], '.3f')} "
            f"| {_f(s['answered_abs_volume_error_mean'], '.1f')} | {_f(s['seconds_mean'])} | {_f(s['seconds_max'])} |")
    names = list(report["strata_members"])
    for metric, title, fmt in (("dice_mean", "Mean Dice per stratum (all cases; refusals count 0)", ".2f"),
                               ("abs_volume_error_mean", "Mean absolute volume error (%) per stratum", ".0f"),
                               ("answered_dice_mean", "Mean Dice per stratum where the method answered", ".2f")):
        lines += ["", f"## {title}", "",
                  "| method | " + " | ".join(f"{n} ({len(report['strata_members'][n])})" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(_f(strata[label][n].get(metric), fmt) if strata[label][n]["n"]
                                                       else "–" for n in names) + " |")
    lines += ["", "Refusals per stratum: " + "; ".join(
        f"{label} " + ", ".join(f"{n} {strata[label][n]['refused'] + strata[label][n]['crashed']}"
                                for n in names if strata[label][n]["refused"] + strata[label][n]["crashed"])
        for label in labels if overall[label]["refused"] + overall[label]["crashed"]) or "none."]
    lines += comparison_markdown(report)
    lines += targets_markdown(report)
    lines += lesion_markdown(report)
    if report.get("performance"):
        lines += performance_markdown(report["performance"])
    lines += ["", "## Failure reasons (first per method)", ""]
    for label in labels:
        reasons = report["reasons"].get(label)
        if reasons:
            first = reasons[0]
            lines.append(f"* **{label}** ({len(reasons)}): lesion {first['lesion']}: {first['reason'][:300]}")
    return "\n".join(lines) + "\n"


def comparison_markdown(report: dict[str, Any]) -> list[str]:
    comp = report["comparison"]
    lines = ["", "## Gradient vs the fixed thresholds on lesions with an inflammation rim or heterogeneous uptake",
             "", f"Subset: {comp['n']} lesions (rim or heterogeneity σ > 0). Paired = on the lesions where the "
             "threshold answered. `r90` = the same threshold in a 90 mm working sphere instead of the default 40 mm.",
             "", "| comparator | Dice mean (all) | abs VE % | refused | gradient - comparator, Dice (all) "
             "| paired n | paired Dice comparator | paired Dice gradient | gradient better on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in comp["rows"]:
        lines.append(
            f"| {row['label']} | {_f(row['dice_mean'], '.3f')} | {_f(row['abs_volume_error_mean'], '.1f')} "
            f"| {row['refused']} | {_f(row['gradient_minus'], '+.3f')} | {row['paired_n']} "
            f"| {_f(row['paired_comparator'], '.3f')} | {_f(row['paired_gradient'], '.3f')} "
            f"| {row['gradient_wins']}/{row['paired_n']} |")
    g = comp["gradient"]
    lines += ["", f"Gradient on this subset: Dice mean {_f(g['dice_mean'], '.3f')}, median "
              f"{_f(g['dice_median'], '.3f')}, abs VE {_f(g['abs_volume_error_mean'], '.1f')} %. "
              f"Best fixed threshold (highest mean Dice over all subset lesions, default sphere): "
              f"**{comp['best']}** ({_f(comp['best_dice'], '.3f')}); best including the r90 re-runs: "
              f"**{comp['best_any']}** ({_f(comp['best_any_dice'], '.3f')})."]
    for sub in comp["subsets"]:
        lines.append(f"* {sub['name']} ({sub['n']}): gradient {_f(sub['gradient'], '.3f')}, best fixed threshold "
                     f"{sub['best']} {_f(sub['best_dice'], '.3f')}.")
    return lines


def targets_markdown(report: dict[str, Any]) -> list[str]:
    t = report["targets"]
    return ["", "## Targets (gradient)", "",
            f"* Mean Dice >= 0.85 overall: {_f(t['dice_mean'], '.3f')} -> **{'met' if t['dice_met'] else 'NOT met'}**.",
            "* Better than the best fixed threshold on rim/heterogeneous lesions: gradient "
            f"{_f(t['subset_gradient'], '.3f')} "
            f"vs {t['best_any']} {_f(t['best_any_dice'], '.3f')} -> **{'met' if t['subset_met'] else 'NOT met'}**.",
            f"* Mean absolute volume error: {_f(t['abs_ve'], '.1f')} % (MIM PET Edge anchor ~11 %)."]


def lesion_markdown(report: dict[str, Any]) -> list[str]:
    labels = [r["label"] for r in report["runs"]]
    lines = ["", "## Per lesion", "",
             "| lesion | mL | TBR | het σ | nec | rim | adj | gradient Dice | VE % | level | relocated | "
             + " | ".join(lb for lb in labels if lb != "gradient") + " |",
             "|---|" + "---|" * (11 + len(labels) - 1)]
    by = report["by_lesion"]
    for case in report["cases"]:
        i = case["index"]
        rows = by[str(i)]
        g = rows.get("gradient")
        cfg = case["config"]["primary"]
        s = case["strata"]
        gd = (g or {}).get("gradient") or {}
        lines.append(
            f"| {i} | {case['lesion']['volume_ml']:.2f} | {case['lesion']['tbr']:.1f} | {cfg['heterogeneity_sigma']:g} "
            f"| {'y' if s['necrotic'] else ''} | {'y' if s['rim'] else ''} | {'y' if s['adjacent'] else ''} "
            f"| {_f(g and g['dice'], '.3f')} | {_f(g and g['volume_error_pct'], '+.0f')} "
            f"| {gd.get('chosen_level', '–')}/{gd.get('n_levels', '–')} | {'y' if gd.get('seed_relocated') else ''} | "
            + " | ".join(_lesion_cell(rows.get(lb)) for lb in labels if lb != "gradient") + " |")
    lines += ["", "(other methods: Dice; `R` = refused, `X` = crashed)"]
    return lines


def _lesion_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["outcome"] == "refused":
        return "R"
    if row["outcome"] == "crashed":
        return "X"
    return f"{row['dice']:.2f}"


def performance_markdown(perf: dict[str, Any]) -> list[str]:
    load = perf.get("load_average_1min_before")
    rerun = perf.get("rerun")
    lines = ["", "## Performance", "", *([f"(Section re-run with `{rerun['command']}` on {rerun['date']}.)", ""]
                                          if rerun else []),
             f"`segment_gradient` per lesion (first {perf['n_lesions']} cohort lesions re-simulated at each voxel "
             "size; fixed working sphere, no growth; wall time on 2 shared cores, median and max over the "
             "lesions). Default settings (40 mm sphere growing to 90 mm while the result touches it) are in the "
             "overall table." + ("" if load is None else f" Machine load average before the section: {load:.1f} "
                                 "(other jobs share the 2 cores; above 2 the times are inflated)."), "",
             "| PET voxel | ROI | s median | s max | working voxel mm | Dice mean |", "|---|---|---|---|---|---|"]
    for r in perf["gradient"]:
        lines.append(f"| {r['voxel_mm']:g} mm | {r['roi']} | {r['seconds_median']:.2f} | {r['seconds_max']:.2f} "
                     f"| {', '.join(f'{w:.2f}' for w in r['working_voxel_mm'])} | {r['dice_mean']:.3f} |")
    lines += ["", "Full-volume restoration (`restore`: Anscombe + bilateral, 10 projected-Landweber iterations; "
              "the lesion-0 PET mirror-tiled to 200 x 200 x 150 voxels; best of 2):", "",
              "| size | voxel | s | stages (s) |", "|---|---|---|---|"]
    for r in perf["restoration"]:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in (r["stages"] or {}).items())
        lines.append(f"| {'x'.join(map(str, r['size']))} | {r['voxel_mm']:g} mm | {r['seconds']:.2f} | {stages} |")
    return lines


# ------------------------------------------------------------------------------------------------- main


def comparison(report_rows: dict[str, dict[int, dict[str, Any]]], cases: Sequence[LesionCase],
               runs: Sequence[Run]) -> dict[str, Any]:
    subset = [c.index for c in cases if c.strata.rim or c.strata.heterogeneous]
    grad = report_rows.get("gradient", {})
    g_rows = [grad[i] for i in subset if i in grad]
    out: dict[str, Any] = {"n": len(subset), "gradient": summarise(g_rows) if g_rows else {}, "rows": []}
    comparators = [r.label for r in runs if r.label.split(" ")[0] in FIXED_THRESHOLDS]
    best, best_any = (None, -1.0), (None, -1.0)
    for label in comparators:
        rows = [report_rows[label][i] for i in subset if i in report_rows.get(label, {})]
        if not rows:
            continue
        s = summarise(rows)
        paired = [i for i in subset if report_rows[label][i]["outcome"] == "answered" and i in grad]
        pc = _mean([report_rows[label][i]["dice"] for i in paired])
        pg = _mean([grad[i]["dice"] for i in paired])
        wins = sum(grad[i]["dice"] > report_rows[label][i]["dice"] for i in paired)
        out["rows"].append({"label": label, "dice_mean": s["dice_mean"],
                            "abs_volume_error_mean": s["abs_volume_error_mean"],
                            "refused": s["refused"] + s["crashed"],
                            "gradient_minus": None if not g_rows else out["gradient"]["dice_mean"] - s["dice_mean"],
                            "paired_n": len(paired), "paired_comparator": pc, "paired_gradient": pg,
                            "gradient_wins": wins})
        if " " not in label and s["dice_mean"] > best[1]:
            best = (label, s["dice_mean"])
        if s["dice_mean"] > best_any[1]:
            best_any = (label, s["dice_mean"])
    out.update(best=best[0], best_dice=best[1], best_any=best_any[0], best_any_dice=best_any[1])
    subsets = []
    for name, members in (("rim", [c.index for c in cases if c.strata.rim]),
                          ("heterogeneous", [c.index for c in cases if c.strata.heterogeneous])):
        if not members or not grad:
            continue
        scores = {label: _mean([report_rows[label][i]["dice"] for i in members]) for label in comparators
                  if label in report_rows}
        top = max(scores, key=lambda k: scores[k]) if scores else None
        subsets.append({"name": name, "n": len(members), "gradient": _mean([grad[i]["dice"] for i in members]),
                        "best": top, "best_dice": scores.get(top)})
    out["subsets"] = subsets
    return out


def performance(args: argparse.Namespace, anatomy: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The performance section: gradient per lesion for two ROI sizes at 2, 3, 4 mm; full-volume restore."""
    n_perf = min(args.perf_lesions, args.n)
    log(f"performance: gradient on {n_perf} lesions at 2, 3, 4 mm; full-volume restoration")
    by_voxel = {}
    for voxel in (2.0, 3.0, 4.0):
        if args.quick and voxel < 4.0:
            continue  # the 2 mm quick anatomy only nests 4 mm PET slices
        by_voxel[voxel] = benchmark_cases(args.n, args.seed, args.quick, indices=range(n_perf), anatomy=anatomy,
                                          pet_voxel_mm=voxel)
    first = next(iter(by_voxel.values()))[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"n_lesions": n_perf, "gradient": bench_gradient_roi(by_voxel), "restoration": bench_restoration(first),
            "load_average_1min_before": load}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 mm anatomy, 4 mm PET, quick scanner (smoke runs)")
    parser.add_argument("--n", type=int, default=30, help="cohort size (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--indices", type=int, nargs="*", help="only these lesions of the cohort (iteration)")
    parser.add_argument("--methods", nargs="*", help="registry names to run (default: all)")
    parser.add_argument("--no-perf", action="store_true", help="skip the performance section")
    parser.add_argument("--perf-lesions", type=int, default=6, help="lesions timed per voxel size (default 6)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    parser.add_argument("--spheres", action="store_true",
                        help="only the sphere calibration of the gradient method's sub-resolution step (~4 min)")
    parser.add_argument("--perf-only", action="store_true",
                        help="re-run only the performance section and rewrite it into the existing "
                             "segmentation.json/.md in --out (e.g. when the machine was busy)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    log: Callable[[str], None] = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.spheres:
        from PETDosePaintingLib.phantom.pet_scanner import ScannerConfig

        rows = bench_spheres(log=log)
        text = spheres_markdown(rows, ScannerConfig().effective_fwhm_mm)
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(text, args.out / "segmentation_spheres.md")
        write_json(_rounded({"rows": rows, "seconds": time.perf_counter() - t_start}),
                   args.out / "segmentation_spheres.json")
        return 0

    anatomy = cohort_anatomy(args.seed, args.quick)
    if args.perf_only:
        previous = read_json(args.out / "segmentation.json")
        perf = performance(args, anatomy, log)
        perf["rerun"] = {"date": _dt.datetime.now().isoformat(timespec="seconds"),
                         "command": "bench_segmentation.py " + " ".join(sys.argv[1:] if argv is None else argv)}
        previous["performance"] = perf
        previous["meta"].pop("performance_rerun", None)
        text = markdown(previous)
        print(text)
        write_text(text, args.out / "segmentation.md")
        write_json(_rounded(previous), args.out / "segmentation.json")
        return 0
    log(f"simulating the cohort ({args.n} lesions{', quick' if args.quick else ''})")
    cases = benchmark_cases(args.n, args.seed, args.quick, indices=args.indices, anatomy=anatomy, log=log)
    runs = default_runs()
    if args.methods:
        unknown = set(args.methods) - set(method_names())
        if unknown:
            parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(method_names())}")
        runs = [r for r in runs if r.method in args.methods]
    if any(r.label in FIXED_THRESHOLDS for r in runs):
        runs += [r for r in wide_runs() if r.label.split(" ")[0] in {x.label for x in runs}]

    rows: dict[str, dict[int, dict[str, Any]]] = {r.label: {} for r in runs}
    for case in cases:
        line = []
        for run in runs:
            row = evaluate(run, case)
            rows[run.label][case.index] = row
            flag = "" if row["outcome"] == "answered" else row["outcome"][0].upper()
            line.append(f"{run.label} {row['dice']:.2f}{flag}")
        log(f"{case.name}: " + ", ".join(line))

    overall = {label: summarise(list(r.values())) for label, r in rows.items()}
    members = strata_of(cases)
    strata = {label: {name: summarise([r[i] for i in idx if i in r]) for name, idx in members.items()}
              for label, r in rows.items()}
    comp = comparison(rows, cases, runs)
    g = overall.get("gradient")
    targets = {}
    if g:
        targets = {"dice_mean": g["dice_mean"], "dice_met": g["dice_mean"] >= 0.85,
                   "abs_ve": g["abs_volume_error_mean"],
                   "subset_gradient": comp["gradient"].get("dice_mean"), "best_any": comp["best_any"],
                   "best_any_dice": comp["best_any_dice"],
                   "subset_met": comp["best_any"] is None
                   or (comp["gradient"].get("dice_mean") or 0.0) > comp["best_any_dice"]}

    perf = None
    if not args.no_perf and any(r.method == "gradient" for r in runs):
        perf = performance(args, anatomy, log)

    scanner = cases[0].scanner
    report = {
        "meta": {"date": _dt.datetime.now().isoformat(timespec="seconds"),
                 "command": "bench_segmentation.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "n_lesions": len(cases), "seed": args.seed, "quick": args.quick, "cores": os.cpu_count(),
                 "python": platform.python_version(), "fwhm_mm": cases[0].fwhm_mm,
                 "cohort": f"{'2 mm' if args.quick else '1 mm'} anatomy, {cases[0].pet_voxel_mm:g} mm PET voxels, "
                           f"CT {cases[0].ct_interpolation} on the PET grid",
                 "scanner": f"PSF {scanner.psf_fwhm_mm:g} mm, OSEM {scanner.iterations}x{scanner.subsets}, "
                            f"post-filter {scanner.post_filter_fwhm_mm:g} mm ({scanner.axial_filter}), "
                            f"counts {scanner.count_level}",
                 "seconds_total": time.perf_counter() - t_start},
        "runs": [{"label": r.label, "method": r.method, "parameters": r.parameters, "fwhm": r.needs_fwhm,
                  "ct": r.needs_ct, "description": r.description} for r in runs],
        "cases": [c.parameters() for c in cases],
        "overall": overall, "strata_members": members, "strata": strata, "comparison": comp, "targets": targets,
        "by_lesion": {str(c.index): {label: rows[label][c.index] for label in rows} for c in cases},
        "reasons": {label: [{"lesion": i, "outcome": r["outcome"], "reason": r["reason"]}
                            for i, r in sorted(rr.items()) if r["outcome"] != "answered"]
                    for label, rr in rows.items()},
        "performance": perf,
    }
    report["meta"]["seconds_total"] = time.perf_counter() - t_start
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(text, args.out / "segmentation.md")
    write_json(_rounded(report), args.out / "segmentation.json")
    log(f"written {args.out / 'segmentation.md'} and .json ({report['meta']['seconds_total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
