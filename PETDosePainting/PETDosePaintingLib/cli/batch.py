"""``petdp batch``: run the per-patient pipeline over a cohort manifest (CSV) in parallel with Dask."""

from __future__ import annotations

import argparse


def _columns_help() -> str:
    from ..pipeline.batch import MANIFEST_COLUMNS

    lines = ["manifest columns (CSV header; all optional but id; meta_* columns are copied to the summary):"]
    lines += [f"  {name:<15} {text}" for name, text in MANIFEST_COLUMNS.items()]
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``batch`` sub-command."""
    parser = subparsers.add_parser(
        "batch",
        help="run the pipeline over a cohort manifest (CSV) in parallel with Dask; resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run, for every row of MANIFEST (one patient or study), the steps it lists (segment, "
                    "quantify, compare, prescribe, evaluate, hypoxia, timepoints, report) into OUT/rows/<id>/, in "
                    "parallel on a local Dask cluster (--workers N processes, default: the CPU cores) or on a "
                    "running Dask scheduler (--scheduler, e.g. SLURM/PBS through dask-jobqueue; see Docs/Batch.md). "
                    "A finished row (completion marker with the hash of its inputs and parameters) is not redone; "
                    "a failed row is reported with its error and does not stop the others. Writes "
                    "OUT/cohort_summary.csv and .json (one row per patient) and the cohort report OUT/report.html.",
        epilog=_columns_help() + "\n\nExit codes: 0 every row finished, 1 a row failed or was invalid, 2 the "
               "manifest or the options are unusable.",
    )
    parser.add_argument("manifest", metavar="MANIFEST.csv", help="the cohort manifest (CSV, columns below)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: new, empty, or a previous batch output (finished rows are reused)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes of the local Dask cluster (default: the CPU cores, at most the rows "
                             "to run); 0 runs the rows one after the other in this process, without Dask")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="address (tcp://host:8786) or scheduler-file (.json) of a running dask.distributed "
                             "scheduler to use instead of a local cluster; workers must see the same paths")
    parser.add_argument("--threads-per-row", type=int, metavar="T",
                        help="SimpleITK threads per row (default: cores / workers on a local cluster)")
    parser.add_argument("--memory-limit", default="auto", metavar="SIZE",
                        help="memory limit per local worker, e.g. 4GB (default auto: the RAM shared between them)")
    parser.add_argument("--force", action="store_true", help="run every row again, even those already finished")
    parser.add_argument("--check", action="store_true",
                        help="only read the manifest and say which rows would run, be reused or are invalid")
    parser.add_argument("--progress", choices=("auto", "tqdm", "plain", "off"), default="auto",
                        help="progress display on stderr (default auto: tqdm on a terminal, else plain lines)")
    parser.add_argument("--verbose", action="store_true",
                        help="with --workers 0, also print every row's log lines (always in OUT/rows/<id>/log.txt)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the manifest, run the rows, print the cohort summary's counts and the failed rows."""
    import sys
    from pathlib import Path

    from ..pipeline.batch import plan_batch, read_manifest, run_batch

    manifest = read_manifest(args.manifest)
    if args.check:
        out = Path(args.out)
        plan = plan_batch(manifest, out) if out.is_dir() else None
        to_run = plan.to_run if plan else manifest.rows
        reused = plan.reused if plan else []
        print(f"[batch] {manifest.path}: {len(manifest.order)} row(s): {len(to_run)} to run, {len(reused)} finished "
              f"before (reused), {len(manifest.invalid)} invalid")
        for spec in to_run:
            source = spec.pet or f"digital patient {spec.phantom_seed}"
            print(f"  run    {spec.id:<16} {source} | steps {' '.join(spec.steps)} | methods {' '.join(spec.methods)}")
        for spec in reused:
            print(f"  reuse  {spec.id}")
        for bad in manifest.invalid:
            print(f"  INVALID {bad.id}: {bad.error}")
        return 1 if manifest.invalid else 0
    echo = (lambda line: print(f"[batch] {line}", file=sys.stderr)) if args.verbose else None
    result = run_batch(manifest, args.out, workers=args.workers, scheduler=args.scheduler,
                       threads_per_row=args.threads_per_row, memory_limit=args.memory_limit, force=args.force,
                       progress=args.progress, echo=echo)
    c = result.counts
    print(f"[batch] {c['rows']} row(s) in {result.seconds:.1f} s ({result.workers}): {c['ok']} ok "
          f"({c['reused']} reused from a previous run), {c['failed']} failed, {c['invalid']} invalid")
    for row in result.rows:
        if row.status != "ok":
            where = f"{result.out_dir / 'rows' / row.id}" if row.status == "failed" else f"manifest line {row.line}"
            print(f"[batch] {row.status.upper()} {row.id} ({where}): {row.error}")
    for key, path in result.files.items():
        print(f"  {key:<12} {path}")
    return 0 if result.ok else 1
