"""Speed-up of ``petdp batch`` with N Dask workers over 1 worker on this machine (issue 8).

Run:  python Testing/benchmarks/bench_batch.py [--rows 4] [--workers 2] [--full] [--steps "..."] [--out DIR]

A manifest of ``--rows`` digital patients (quick ones unless ``--full``; seeds 1..rows) is run three times
into fresh folders: in this process without Dask (``--workers 0``, the reference), on a LocalCluster with 1
worker process, and on a LocalCluster with ``--workers`` processes. For each it prints the wall time
(cluster start included) and the sum of the rows' own times; the speed-up is wall(1 worker) / wall(N
workers), and the parallel efficiency speed-up / N. The sum of the rows' CPU times (each row's process, all
its threads) shows whether a slow run did more work or only waited for the CPU. It also checks that the
three runs give the same numbers (the cohort summaries without the timing columns).

The machine's other load matters (``os.getloadavg`` is printed before and after): on a shared 2-core
machine the speed-up of 2 workers is bounded by 2 and lowered by anything else running. With
``--out`` the results are also written as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETDosePainting"))

from PETDosePaintingLib.pipeline.batch import default_workers, run_batch
from PETDosePaintingLib.pipeline.progress import Progress

DEFAULT_STEPS = "segment quantify prescribe hypoxia"


def write_manifest(path: Path, rows: int, quick: bool, steps: str, methods: str) -> Path:
    lines = ["id,phantom_seed,phantom_quick,methods,steps"]
    lines += [f"B{seed:03d},{seed},{'yes' if quick else 'no'},{methods},{steps}" for seed in range(1, rows + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def comparable(out: Path) -> list[dict]:
    data = json.loads((out / "cohort_summary.json").read_text())
    return [{k: v for k, v in row.items() if not k.startswith(("seconds", "cpu_seconds")) and k != "reused"}
            for row in data["summary"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4, help="digital patients in the manifest (default 4)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"workers of the parallel run (default: the cores, {default_workers()})")
    parser.add_argument("--full", action="store_true", help="full-size digital patients (slow) instead of quick")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"row steps (default: {DEFAULT_STEPS!r})")
    parser.add_argument("--methods", default="gradient threshold fcm", help="segmentation methods of each row")
    parser.add_argument("--out", help="write bench_batch.json and bench_batch.md into this folder")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="petdp-bench-batch-") as tmp:
        manifest = write_manifest(Path(tmp) / "manifest.csv", args.rows, not args.full, args.steps, args.methods)
        runs = [("in-process (no Dask)", 0), ("LocalCluster, 1 worker", 1),
                (f"LocalCluster, {args.workers} workers", args.workers)]
        with Progress(total=len(runs), desc="bench_batch", unit="runs", min_interval_s=0.0) as bar:
            for label, workers in runs:
                bar.update(0, label=label)
                t0 = time.perf_counter()
                result = run_batch(manifest, Path(tmp) / f"out{workers}", workers=workers, progress="off")
                wall = time.perf_counter() - t0
                if not result.ok:
                    print(f"{label}: rows failed: {[r.error for r in result.rows if r.status != 'ok']}")
                    return 1
                row_seconds = sum(r.seconds for r in result.rows)
                cpu_seconds = sum(float(r.record.get("cpu_seconds") or 0.0) for r in result.rows)
                results.append({"run": label, "workers": workers, "wall_s": round(wall, 2),
                                "row_seconds_sum": round(row_seconds, 2), "row_cpu_seconds_sum": round(cpu_seconds, 2),
                                "summary": comparable(result.out_dir)})
                bar.update(1, label=f"{label}: {wall:.1f} s")
    load_after = os.getloadavg()
    same = all(r["summary"] == results[0]["summary"] for r in results[1:])
    one, many = results[1]["wall_s"], results[2]["wall_s"]
    speedup = one / many if many > 0 else float("nan")
    lines = [
        f"## petdp batch: {args.rows} {'full' if args.full else 'quick'} digital patients, steps '{args.steps}', "
        f"methods '{args.methods}'",
        "",
        f"Machine: {default_workers()} usable cores; load average before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f}.",
        "",
        "| run | wall time (s) | sum of row wall times (s) | sum of row CPU times (s) |",
        "|---|---|---|---|",
        *(f"| {r['run']} | {r['wall_s']:.1f} | {r['row_seconds_sum']:.1f} | {r['row_cpu_seconds_sum']:.1f} |"
          for r in results),
        "",
        f"Speed-up of {args.workers} workers over 1: **{speedup:.2f}x** (parallel efficiency "
        f"{speedup / args.workers:.0%}); in-process run {results[0]['wall_s']:.1f} s.",
        f"Same numbers in the three runs: {'yes' if same else 'NO'}.",
    ]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"rows": args.rows, "full": args.full, "steps": args.steps, "methods": args.methods,
                   "cores": default_workers(), "load_before": load_before, "load_after": load_after,
                   "runs": [{k: v for k, v in r.items() if k != "summary"} for r in results],
                   "speedup": speedup, "same_numbers": same}
        (out / "bench_batch.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        (out / "bench_batch.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
