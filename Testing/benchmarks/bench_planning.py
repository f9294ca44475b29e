"""Planning benchmark (issue 9): run time and peak memory of ``plan_dose_painting`` on the digital patient.

Run:  python Testing/benchmarks/bench_planning.py [--quick] [--configs coarse fine] [--out DIR]

Needs the planning extra (``pip install -e ".[planning]"``). For each configuration, in a fresh child process
(so that its peak resident memory, ``ru_maxrss``, is its own):

1. the digital head-and-neck patient (``PatientConfig``: 1 mm anatomy, CT 200 x 200 x 75 voxels of
   1 x 1 x 2 mm; ``--quick``: 2 mm anatomy, CT 180 x 180 x 40), baseline session only;
2. the FDG DPBN prescription (70-86 Gy, linear, Vanderstraeten anchors, 2.5 mm grey dilation) computed on the
   CT grid from the simulated FDG PET inside the **truth** GTV (PET grid); the PTV is the truth GTV on the CT
   grid + 5 mm; organs at risk: the patient's OAR truth on the CT grid (parotid mean <= 26 Gy, cord max <= 45 Gy);
3. :func:`~PETDosePaintingLib.dosepainting.planning.plan_dose_painting` with the painted map and a uniform 70 Gy
   plan (squared objective), timed per stage (setup, dose influence, painted, uniform), with the result table.

Configurations: ``coarse`` (the demo's: 5 beams, 8 mm bixels, 5 mm dose grid, 200 iterations) and ``fine``
(9 beams, 5 mm bixels, 3 mm dose grid, 400 iterations). Writes ``planning.md`` and ``planning.json`` to ``--out``
(default ``Testing/benchmarks/results``); ``--markdown-only`` rewrites the table from the JSON. Times are
wall-clock on whatever machine runs it (here 2 shared cores).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETDosePainting"))

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS: dict[str, dict[str, Any]] = {
    "coarse": {"n_beams": 5, "bixel_width_mm": 8.0, "dose_grid_mm": 5.0, "max_iterations": 200},
    "fine": {"n_beams": 9, "bixel_width_mm": 5.0, "dose_grid_mm": 3.0, "max_iterations": 400},
}


def run_one(config: str, quick: bool) -> dict[str, Any]:
    """One configuration, in this process (the child)."""
    from PETDosePaintingLib.dosepainting.planning import PlanningSettings, plan_dose_painting, ptv_from_gtv
    from PETDosePaintingLib.dosepainting.planning_objectives import load_pyradplan
    from PETDosePaintingLib.dosepainting.prescription import dose_painting_by_numbers
    from PETDosePaintingLib.phantom.patient import PatientConfig, build_patient

    t0 = time.perf_counter()
    prp = load_pyradplan()
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    patient = build_patient(PatientConfig(quick=quick, with_timepoints=False, with_mr=False))
    baseline = patient.timepoints[0]
    patient_s = time.perf_counter() - t0
    rx = dose_painting_by_numbers(baseline.fdg_pet, baseline.truth.gtv_pet, grid=baseline.ct, assume_same_frame=True)
    ptv = ptv_from_gtv(baseline.truth.gtv_ct, 5.0)
    settings = PlanningSettings(**CONFIGS[config])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    result = plan_dose_painting(baseline.ct, rx.dose, ptv, dict(baseline.truth.oars_ct), settings=settings,
                                uniform_dose_gy=70.0)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "config": config, "settings": CONFIGS[config], "quick": quick, "pyradplan": prp.version,
        "import_s": import_s, "patient_s": patient_s, "plan_wall_s": wall, "timings_s": result.timings_s,
        "peak_rss_mb": peak, "rss_before_planning_mb": rss_before, "geometry": result.geometry,
        "ct_voxels": int(baseline.ct.GetNumberOfPixels()), "prescription_volume_ml": rx.evaluation_volume_ml,
        "iterations": {p.label: p.iterations for p in result.plans()},
        "constraints": {p.label: [c.summary() for c in p.constraints] for p in result.plans()},
        "comparison": result.summary()["comparison"], "notes": result.notes,
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _markdown(runs: list[dict[str, Any]], quick: bool, generated: str) -> str:
    lines = ["# Planning benchmark (issue 9)", "",
             f"Generated {generated} by "
             f"`Testing/benchmarks/bench_planning.py{' --quick' if quick else ''}` on {platform.machine()} "
             f"({os.cpu_count()} logical CPUs, shared), Python {platform.python_version()}, pyRadPlan "
             f"{runs[0]['pyradplan'] if runs else '?'}.", "",
             "Digital patient (baseline; CT "
             + ("180 x 180 x 40 voxels of 1 x 1 x 2 mm, `--quick`" if quick else
                "200 x 200 x 75 voxels of 1 x 1 x 2 mm")
             + "), FDG DPBN 70-86 Gy on the CT grid in the truth GTV, PTV = GTV + 5 mm, OAR truth masks, parotid mean "
             "<= 26 Gy, cord max <= 45 Gy; painted plan and uniform 70 Gy plan (squared objective), one child process "
             "per configuration. Peak memory is the child's peak resident set size (building the patient "
             "included; `before planning` is the peak before the planner started).", "",
             "## Run time and memory", "",
             "| config | beams | bixel mm | dose grid mm (actual) | dose-grid voxels | bixels | D_ij non-zeros | "
             "setup s | dose influence s | painted s (iterations) | uniform s (iterations) | planning total s | "
             "peak RSS MB (before planning) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        g, t, s = r["geometry"], r["timings_s"], r["settings"]
        n_vox = g["dose_grid_size"][0] * g["dose_grid_size"][1] * g["dose_grid_size"][2]
        lines.append(
            f"| {r['config']} | {s['n_beams']} | {s['bixel_width_mm']:g} | {s['dose_grid_mm']:g} "
            f"({', '.join(f'{v:.3g}' for v in g['dose_grid_mm'])}) | {n_vox:,} | {g['n_bixels']} | "
            f"{_fmt(g['dij_nonzeros'])} | {t['setup']:.1f} | {t['dose_influence']:.1f} | "
            f"{t['painted']:.1f} ({'+'.join(map(str, r['iterations']['painted']))}) | "
            f"{t['uniform']:.1f} ({'+'.join(map(str, r['iterations']['uniform']))}) | {t['total']:.1f} | "
            f"{r['peak_rss_mb']:.0f} ({r['rss_before_planning_mb']:.0f}) |")
    lines += ["", "pyRadPlan import: " + ", ".join(f"{r['config']} {r['import_s']:.1f} s" for r in runs)
              + "; building the patient: " + ", ".join(f"{r['config']} {r['patient_s']:.1f} s" for r in runs) + ".",
              "", "How to read it:", "",
              "* wall-clock times on 2 cores shared with other jobs (other benchmarks may have run at the same time): "
              "compare orders of magnitude, not seconds;",
              "* the dose influence (D_ij) grows with dose-grid voxels x bixels, the optimisation with the D_ij "
              "non-zeros x iterations; escalation rounds (limits not met) add optimisation runs;",
              "* peak memory includes building the digital patient (the `before planning` figure, dominated by the "
              "1 mm anatomy); the planner's own share is the difference (D_ij about 12 bytes per non-zero, plus "
              "pyRadPlan's copies of the CT and structures);",
              "* QF and OAR numbers are those of a pencil-beam fluence optimisation on this phantom (no leaf "
              "sequencing): trends, not clinical values. The parotid limits bind in the coarse configuration "
              "(both plans at 25 Gy, the limit minus the 1 Gy aim margin); the OARs without a limit show what "
              "the painting costs.", ""]
    for r in runs:
        lines += [f"## Uniform 70 Gy vs painted 70-86 Gy: {r['config']}", "",
                  "| quantity | structure | unit | prescribed | uniform | painted | painted - uniform | limit Gy |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["comparison"]:
            lines.append("| " + " | ".join(_fmt(row[k]) for k in ("quantity", "structure", "unit", "prescribed",
                                                                    "uniform", "painted", "painted_minus_uniform",
                                                                    "limit_gy")) + " |")
        lines.append("")
        for label, checks in r["constraints"].items():
            for c in checks:
                lines.append(f"* {label}: {c['structure']} {c['kind']} {c['achieved_gy']:.2f} Gy (limit "
                             f"{c['limit_gy']:g} Gy, {'met' if c['satisfied'] else 'NOT MET'}, final penalty weight "
                             f"{c['final_weight']:g})")
        for note in r["notes"]:
            lines.append(f"* note: {note}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick digital patient (smoke runs)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["coarse", "fine"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite planning.md from an existing planning.json (no planning)")
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child, args.quick)))
        return 0
    suffix = "_quick" if args.quick else ""
    if args.markdown_only:
        from PETDosePaintingLib.imaging.io import read_json, write_text

        data = read_json(args.out / f"planning{suffix}.json")
        generated = data.get("generated") or _dt.datetime.fromtimestamp(
            (args.out / f"planning{suffix}.json").stat().st_mtime, _dt.UTC).isoformat(timespec="seconds")
        write_text(_markdown(data["runs"], args.quick, generated) + "\n", args.out / f"planning{suffix}.md")
        return 0
    runs = []
    for config in args.configs:
        print(f"[bench] {config}: {CONFIGS[config]}", flush=True)
        cmd = [sys.executable, __file__, "--child", config, *(["--quick"] if args.quick else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        run = json.loads(line[len("RESULT "):])
        print(f"[bench] {config}: planning {run['timings_s']['total']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB",
              flush=True)
        runs.append(run)
    from PETDosePaintingLib.imaging.io import write_json, write_text

    args.out.mkdir(parents=True, exist_ok=True)
    generated = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json({"quick": args.quick, "generated": generated, "runs": runs}, args.out / f"planning{suffix}.json")
    write_text(_markdown(runs, args.quick, generated) + "\n", args.out / f"planning{suffix}.md")
    print(f"[bench] wrote {args.out / f'planning{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
