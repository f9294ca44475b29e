"""``petdp batch``: the per-patient pipeline over a cohort manifest, in parallel with Dask, resumable.

Manifest
--------
A CSV file, one row per patient/study, with a header naming the columns below (order free; every column
but ``id`` optional; ``meta_*`` columns are free text copied into the cohort summary; any other column is
refused, so a misspelt column is never silently ignored). Relative paths are relative to the manifest's
folder. Lists (``methods``, ``steps``) are separated by spaces, ``;`` or ``|``. Empty cells take the
default. A row whose ``id`` starts with ``#`` is a comment. See :data:`MANIFEST_COLUMNS` and
``Docs/Batch.md`` (the column names are a stable contract).

Execution
---------
Every row runs :func:`~.steps.run_row` (one process per row at a time): on a Dask ``LocalCluster`` with
``workers`` worker processes (default: the number of CPU cores, at most the number of rows to run), or on
any running ``dask.distributed`` scheduler (``scheduler``: an address ``tcp://host:8786`` or a scheduler
file; this is how SLURM/PBS/SGE clusters are used through ``dask-jobqueue``), or one after the other in this
process without Dask (``workers=0``). Rows write into ``OUT/rows/<id>/`` (the folder must be visible to
the workers at the same path: a shared file system on a cluster).

Resumability
------------
A finished row holds the completion marker ``rows/<id>/.petdp-row.json`` with the SHA-256 hash of its
normalised parameters, the sizes and modification times of every file of its inputs, and the petdp version.
A row whose marker hash matches and whose outputs all exist is not redone (``reused``); a changed input or
parameter, a failed or interrupted row, or ``force`` runs it again (its folder is replaced as a whole). A
failed row is recorded with its error (``rows/<id>/error.json``, and the summary) and never stops the others.

Cohort summary
--------------
``cohort_summary.csv`` (one row per manifest row; the columns of :data:`SUMMARY_COLUMNS`, then
``gtv_ml_<method>`` and ``dice_<method>`` for the methods run, then the ``meta_*`` columns) and
``cohort_summary.json`` (the same plus every row's full record), rebuilt from the row folders at the end of
every run, and the cohort report ``report.html``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import __version__
from ..errors import InputError, OutputError
from .progress import Progress
from .steps import (
    DEFAULT_STEPS,
    MARKER_NAME,
    PRESCRIPTION_MODES,
    RECORD_NAME,
    STEPS,
    RowResult,
    RowSpec,
    describe_error,
    install_row_folder,
    json_ready,
    run_row,
)

#: Manifest columns (a stable contract) and what they hold; the order of ``Docs/Batch.md`` and ``--help``.
MANIFEST_COLUMNS: dict[str, str] = {
    "id": "row identifier, unique; letters, digits, '.', '_', '-' (the row's folder name) [required]",
    "pet": "FDG PET: DICOM PET folder (converted to SUVbw) or SUV image file (.nrrd, .nii.gz, .mha)",
    "ct": "CT (DICOM folder or image, HU) for co-segmentation; resampled onto the PET grid (linear)",
    "seed_x": "click x, LPS mm (seed_x, seed_y, seed_z: all three or none)",
    "seed_y": "click y, LPS mm",
    "seed_z": "click z, LPS mm",
    "methods": "segmentation methods (see petdp segment --list-methods), or 'all' (default: gradient)",
    "target_method": "method whose GTV is the target of later steps (default: gradient if run, else the first)",
    "target": "target GTV mask instead of a segmented one (binary, PET grid or resampled nearest)",
    "reference": "reference GTV mask (truth, pathology, manual) each method is scored against",
    "steps": f"steps to run among {' '.join(STEPS)} (default: {' '.join(DEFAULT_STEPS)})",
    "fwhm_mm": "scanner effective resolution (image FWHM, mm) for the methods that model it",
    "method_params": "JSON object of per-method parameters, e.g. {\"threshold\": {\"fraction\": 0.5}}",
    "prescription": f"prescription mode: {', '.join(PRESCRIPTION_MODES)} (default: dpbn)",
    "dose_min": "D_low (dpbn, levels) or base dose (boost), Gy (default 70)",
    "dose_max": "D_high (dpbn, levels) or boost dose (boost), Gy (default 86)",
    "levels": "number of nested levels in 'levels' mode (default 5)",
    "margin_mm": "grey-level dilation (dpbn, levels; default 2.5) or boost margin (boost; default 0), mm",
    "planned_dose": "planned dose (RT Dose .dcm or image, Gy) for the 'evaluate' step",
    "fmiso": "hypoxia PET (DICOM PET folder or SUV image) for the 'hypoxia' step",
    "hypoxia_tracer": "fmiso or faza: selects the default hypoxia threshold (default: fmiso)",
    "muscle": "reference-region mask (muscle) for the hypoxia ratio map",
    "blood_value": "venous blood-sample activity in the hypoxia PET's units, instead of 'muscle'",
    "phantom_seed": "integer: the row is a digital patient simulated on the worker with this seed (no 'pet')",
    "phantom_quick": "yes: the small, fast digital patient (2 mm anatomy, 4 mm PET); default no",
}
#: Leading columns of ``cohort_summary.csv`` (a stable contract); per-method and ``meta_*`` columns follow.
SUMMARY_COLUMNS = (
    "id", "line", "status", "reused", "error", "seconds", "cpu_seconds", "steps", "data_kind", "phantom_seed",
    "target_method", "target_source", "target_volume_ml", "reference_volume_ml", "methods_ok", "methods_refused",
    "suv_max", "suv_peak", "suv_mean", "mtv_ml", "tlg",
    "prescription_mode", "dose_min_gy", "dose_mean_gy", "dose_max_gy", "target_mean_dose_gy", "evaluation_volume_ml",
    "boost_volume_ml", "qf", "q95", "q105", "hv_ml", "hf", "tmr_max", "tmr_peak",
    *(f"seconds_{step}" for step in ("load", *STEPS)),
)
#: Files the batch writes at the top of its output folder.
SUMMARY_FILES = ("cohort_summary.csv", "cohort_summary.json", "manifest_used.csv", "report.html")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LIST_SPLIT = re.compile(r"[\s;|,]+")
_TRUE, _FALSE = {"yes", "y", "true", "1", "on"}, {"no", "n", "false", "0", "off", ""}


@dataclass
class Manifest:
    """A parsed manifest: valid rows as :class:`RowSpec`, unusable rows as ``invalid`` results."""

    path: Path
    columns: list[str]
    rows: list[RowSpec] = field(default_factory=list)
    invalid: list[RowResult] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  #: every row id in manifest order

    @property
    def meta_columns(self) -> list[str]:
        return [c for c in self.columns if c.startswith("meta_")]


@dataclass
class BatchPlan:
    """What a run will do: rows to run (with their hashes), rows reused from a previous run."""

    manifest: Manifest
    hashes: dict[str, str]
    to_run: list[RowSpec]
    reused: list[RowSpec]


@dataclass
class BatchResult:
    """The outcome of :func:`run_batch`: every row's result (manifest order), counts, files and time."""

    out_dir: Path
    rows: list[RowResult]
    counts: dict[str, int]
    files: dict[str, Path]
    seconds: float
    workers: str  #: how the rows were run ("in-process", "LocalCluster with 2 workers", "scheduler ...")

    @property
    def ok(self) -> bool:
        return self.counts.get("failed", 0) == 0 and self.counts.get("invalid", 0) == 0


# ------------------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------------------

def read_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest. Problems of the file as a whole (unreadable, no ``id`` column, unknown
    columns, duplicate ids, no row) raise :class:`InputError`; a row with an unusable value becomes an
    ``invalid`` :class:`RowResult` whose error names the line, the column and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("no such manifest file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as a UTF-8 CSV manifest ({exc})", path) from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("the manifest is empty (no header line)", path) from None
    except csv.Error as exc:
        raise InputError(f"is not a valid CSV file ({exc})", path) from exc
    columns = [c.strip() for c in header]
    if "id" not in columns:
        raise InputError(f"the manifest has no 'id' column (header: {', '.join(columns)})", path)
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS and not c.startswith("meta_")]
    if unknown:
        raise InputError(f"unknown manifest column(s) {', '.join(map(repr, unknown))}; the columns are "
                         f"{', '.join(MANIFEST_COLUMNS)} (free-text columns must start with 'meta_')", path)
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise InputError(f"repeated manifest column(s) {', '.join(repeated)}", path)
    manifest = Manifest(path=path.resolve(), columns=columns)
    seen: dict[str, int] = {}
    base = path.resolve().parent
    try:
        for number, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(columns):
                manifest.invalid.append(RowResult(_id_or_line(cells, columns, number), number, "invalid",
                                                  f"line {number}: {len(cells)} cells for {len(columns)} columns "
                                                  "(quote cells holding commas)"))
                manifest.order.append(manifest.invalid[-1].id)
                continue
            values = {c: v.strip() for c, v in zip(columns, cells, strict=False)}
            row_id = values.get("id", "")
            if row_id.startswith("#"):
                continue
            if row_id in seen:
                raise InputError(f"line {number}: id {row_id!r} repeats line {seen[row_id]}; ids must be unique",
                                 path)
            if row_id:
                seen[row_id] = number
            try:
                spec = parse_row(values, number, base)
            except InputError as exc:
                manifest.invalid.append(RowResult(row_id or f"line{number}", number, "invalid", str(exc)))
                manifest.order.append(manifest.invalid[-1].id)
                continue
            manifest.rows.append(spec)
            manifest.order.append(spec.id)
    except csv.Error as exc:
        raise InputError(f"is not a valid CSV file ({exc})", path) from exc
    if not manifest.order:
        raise InputError("the manifest has a header but no row", path)
    return manifest


def _id_or_line(cells: list[str], columns: list[str], number: int) -> str:
    value = cells[columns.index("id")].strip() if columns.index("id") < len(cells) else ""
    return value if _ID_PATTERN.match(value) else f"line{number}"


def parse_row(values: dict[str, str], line: int, base: Path) -> RowSpec:
    """One manifest row as a :class:`RowSpec` (paths resolved against ``base``); :class:`InputError` naming
    the line and column otherwise."""
    from ..dosepainting.hypoxia import TRACERS
    from ..segmentation.registry import get_method, method_names

    row_id = values.get("id", "")

    def fail(column: str, problem: str) -> InputError:
        return InputError(f"line {line} ({row_id or 'no id'}), column {column}: {problem}")

    if not _ID_PATTERN.match(row_id):
        raise fail("id", f"{row_id!r} is not a usable id (letters, digits, '.', '_', '-'; it names the row's folder)")

    def text(column: str) -> str:
        return values.get(column, "")

    def number(column: str, default: float | None = None, *, positive: bool = False,
               nonnegative: bool = False) -> float | None:
        raw = text(column)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise fail(column, f"{raw!r} is not a number") from None
        if not math.isfinite(value):
            raise fail(column, f"{raw!r} is not a finite number")
        if positive and value <= 0:
            raise fail(column, f"must be positive, got {raw}")
        if nonnegative and value < 0:
            raise fail(column, f"must be >= 0, got {raw}")
        return value

    def integer(column: str, default: int | None = None, minimum: int = 0) -> int | None:
        value = number(column)
        if value is None:
            return default
        if value != int(value) or value < minimum:
            raise fail(column, f"must be an integer >= {minimum}, got {text(column)!r}")
        return int(value)

    def path(column: str) -> str | None:
        raw = text(column)
        if not raw:
            return None
        p = Path(os.path.expanduser(raw))
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise fail(column, f"{p}: no such file or directory")
        return str(p.resolve())

    def choice(column: str, options: Sequence[str], default: str) -> str:
        raw = text(column).lower() or default
        if raw not in options:
            raise fail(column, f"{raw!r} is not one of {', '.join(options)}")
        return raw

    # inputs
    phantom_seed = integer("phantom_seed")
    pet = path("pet")
    if phantom_seed is None and pet is None:
        raise fail("pet", "give a PET (DICOM folder or SUV image) or a phantom_seed")
    if phantom_seed is not None and pet is not None:
        raise fail("pet", "give either a PET or a phantom_seed, not both")
    quick_raw = text("phantom_quick").lower()
    if quick_raw not in _TRUE | _FALSE:
        raise fail("phantom_quick", f"{text('phantom_quick')!r} is not yes/no")
    seed_cells = [text(c) for c in ("seed_x", "seed_y", "seed_z")]
    seed = None
    if any(seed_cells):
        if not all(seed_cells):
            raise fail("seed_x/seed_y/seed_z", "give all three coordinates or none")
        seed = tuple(number(c) for c in ("seed_x", "seed_y", "seed_z"))
    # methods and steps
    raw_methods = [m for m in _LIST_SPLIT.split(text("methods")) if m]
    methods = tuple(method_names()) if [m.lower() for m in raw_methods] == ["all"] else tuple(raw_methods or
                                                                                              ["gradient"])
    for m in methods:
        try:
            get_method(m)
        except InputError as exc:
            raise fail("methods", str(exc)) from None
    if len(set(methods)) != len(methods):
        raise fail("methods", "a method is listed twice")
    raw_steps = [s.lower() for s in _LIST_SPLIT.split(text("steps")) if s]
    bad = [s for s in raw_steps if s not in STEPS]
    if bad:
        raise fail("steps", f"unknown step(s) {', '.join(bad)}; the steps are {', '.join(STEPS)}")
    steps = tuple(s for s in STEPS if s in raw_steps) if raw_steps else DEFAULT_STEPS
    target_method = text("target_method") or ("gradient" if "gradient" in methods else methods[0])
    target = path("target")
    if "segment" in steps and not target and target_method not in methods:
        raise fail("target_method", f"{target_method!r} is not among the methods run ({' '.join(methods)})")
    try:
        raw_params = json.loads(text("method_params") or "{}")
    except json.JSONDecodeError as exc:
        raise fail("method_params", f"is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(raw_params, dict) or not all(isinstance(v, dict) for v in raw_params.values()):
        raise fail("method_params", "must be a JSON object of objects, e.g. {\"threshold\": {\"fraction\": 0.5}}")
    for name in raw_params:
        if name not in methods:
            raise fail("method_params", f"parameters for {name!r}, which is not among the methods run")
    # dose painting
    dose_min = number("dose_min", 70.0)
    dose_max = number("dose_max", 86.0)
    if not 0 <= dose_min < dose_max:
        raise fail("dose_min/dose_max", f"need 0 <= dose_min < dose_max, got {dose_min:g} and {dose_max:g} Gy")
    spec = RowSpec(
        id=row_id, line=line, pet=pet, ct=path("ct"), target=target, reference=path("reference"), seed_lps=seed,
        methods=methods, target_method=target_method, steps=steps, fwhm_mm=number("fwhm_mm", positive=True),
        method_params=raw_params, prescription=choice("prescription", PRESCRIPTION_MODES, "dpbn"),
        dose_min=dose_min, dose_max=dose_max, levels=integer("levels", 5, minimum=2),
        margin_mm=number("margin_mm", nonnegative=True), planned_dose=path("planned_dose"), fmiso=path("fmiso"),
        hypoxia_tracer=choice("hypoxia_tracer", TRACERS, "fmiso"), muscle=path("muscle"),
        blood_value=number("blood_value", positive=True), phantom_seed=phantom_seed,
        phantom_quick=quick_raw in _TRUE, meta={k: v for k, v in values.items() if k.startswith("meta_")},
    )
    _check_step_needs(spec, fail)
    return spec


def _check_step_needs(spec: RowSpec, fail: Callable[[str, str], InputError]) -> None:
    phantom = spec.phantom_seed is not None
    has_target = spec.target is not None or "segment" in spec.steps
    if "segment" in spec.steps and spec.seed_lps is None and not phantom:
        raise fail("seed_x/seed_y/seed_z", "step 'segment' needs a click (seed_x, seed_y, seed_z in LPS mm)")
    for step in ("quantify", "prescribe", "hypoxia"):
        if step in spec.steps and not has_target:
            raise fail("steps", f"step {step!r} needs a target GTV: add 'segment' to the steps or give 'target'")
    if "compare" in spec.steps and "segment" not in spec.steps:
        raise fail("steps", "step 'compare' needs the step 'segment'")
    if "evaluate" in spec.steps:
        if "prescribe" not in spec.steps:
            raise fail("steps", "step 'evaluate' needs the step 'prescribe'")
        if not spec.planned_dose:
            raise fail("planned_dose", "step 'evaluate' needs a planned dose")
    if "hypoxia" in spec.steps and not phantom:
        if not spec.fmiso:
            raise fail("fmiso", "step 'hypoxia' needs a hypoxia PET")
        if not spec.muscle and spec.blood_value is None:
            raise fail("muscle", "step 'hypoxia' needs a reference region ('muscle') or a 'blood_value'")
    if spec.muscle and spec.blood_value is not None:
        raise fail("blood_value", "give either a muscle reference region or a blood value, not both")
    if "timepoints" in spec.steps and not phantom:
        raise fail("steps", "step 'timepoints' is for digital-patient rows (phantom_seed)")


# ------------------------------------------------------------------------------------------------------------
# Hashes and the plan
# ------------------------------------------------------------------------------------------------------------

def fingerprint(path: str | Path) -> list[list[Any]]:
    """``[relative path, size, modification time (ns)]`` of a file, or of every file under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    entries = []
    for folder, _dirs, files in os.walk(path):
        for name in files:
            p = Path(folder) / name
            st = p.stat()
            entries.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return sorted(entries)


def row_hash(spec: RowSpec) -> str:
    """SHA-256 of the row's parameters, its input files (names, sizes, modification times) and the petdp
    version: what the completion marker records."""
    payload = {"spec": spec.canonical(), "inputs": {k: fingerprint(v) for k, v in spec.input_paths().items()},
               "petdp_version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def is_finished(row_dir: Path, expected_hash: str) -> bool:
    """Whether ``row_dir`` holds a finished row with this hash and all the outputs it lists."""
    from ..imaging.io import read_json

    marker, record_path = row_dir / MARKER_NAME, row_dir / RECORD_NAME
    if not marker.is_file() or not record_path.is_file():
        return False
    try:
        if read_json(marker).get("hash") != expected_hash:
            return False
        record = read_json(record_path)
    except (InputError, AttributeError):
        return False
    if record.get("status") != "ok" or record.get("hash") != expected_hash:
        return False
    return all((row_dir / rel).exists() for rel in record.get("files", {}).values())


def plan_batch(manifest: Manifest, out_dir: str | Path, *, force: bool = False) -> BatchPlan:
    """Hash every valid row and split them into rows to run and rows already finished with the same hash."""
    rows_dir = Path(out_dir) / "rows"
    hashes = {spec.id: row_hash(spec) for spec in manifest.rows}
    reused = [] if force else [s for s in manifest.rows if is_finished(rows_dir / s.id, hashes[s.id])]
    done = {s.id for s in reused}
    return BatchPlan(manifest, hashes, [s for s in manifest.rows if s.id not in done], reused)


# ------------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------------

def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_batch(
    manifest: str | Path | Manifest,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    threads_per_row: int | None = None,
    memory_limit: str = "auto",
    force: bool = False,
    progress: str = "auto",
    stream: TextIO | None = None,
    echo: Callable[[str], None] | None = None,
) -> BatchResult:
    """Run every row of ``manifest`` into ``out_dir`` (new, empty, or a previous batch output) and write the
    cohort summary and report.

    Parameters
    ----------
    workers : worker processes of the local Dask cluster (default: the CPU cores, at most the rows to run);
        ``0`` runs the rows one after the other in this process, without Dask.
    scheduler : address (``tcp://host:8786``) or scheduler-file path of a running ``dask.distributed``
        scheduler (e.g. started by ``dask-jobqueue`` on SLURM/PBS) to use instead of a local cluster.
    client : an existing ``distributed.Client`` to use (Python API; overrides ``workers`` and ``scheduler``).
    threads_per_row : SimpleITK threads of each row (default: cores / workers on a local cluster, the
        library default otherwise).
    memory_limit : memory limit per local worker (Dask syntax, e.g. ``"4GB"``; ``"auto"`` shares the RAM).
    force : run every row even if it finished before with the same hash.
    progress : progress-bar mode (:mod:`.progress`); ``stream`` where it goes (default stderr).
    echo : receives the rows' log lines when they run in this process (``workers=0``).
    """
    started = time.perf_counter()
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")
    if scheduler and workers is not None:
        raise InputError("give either --workers (a local cluster) or --scheduler (a running cluster), not both")
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    out = _prepare_out(manifest, out_dir)
    rows_dir = out / "rows"
    with _Lock(out / ".petdp-batch.lock"):
        _remove_leftovers(rows_dir)
        plan = plan_batch(manifest, out, force=force)
        results: dict[str, RowResult] = {r.id: r for r in manifest.invalid}
        for spec in plan.reused:
            results[spec.id] = RowResult(spec.id, spec.line, "ok", reused=True)
        n_total = len(manifest.order)
        bar = Progress(total=n_total, desc="batch", unit="rows", initial=len(plan.reused) + len(manifest.invalid),
                       mode=progress, stream=stream, min_interval_s=0.0)
        counts = {"done": len(plan.reused), "failed": len(manifest.invalid), "remaining": len(plan.to_run)}
        how = "nothing to run"

        def finished(result: RowResult) -> None:
            results[result.id] = result
            counts["done" if result.status == "ok" else "failed"] += 1
            counts["remaining"] -= 1
            tail = "ok" if result.status == "ok" else f"FAILED: {result.error}"
            bar.update(1, label=f"{result.id} {tail[:120]}", **counts)

        with bar:
            bar.update(0, label="starting", **counts)
            for invalid in manifest.invalid:
                bar.write(f"[batch] {invalid.id}: invalid row: {invalid.error}")
            if plan.to_run:
                if client is not None or scheduler or (workers if workers is not None else 1) > 0:
                    how = _run_dask(plan, rows_dir, workers=workers, scheduler=scheduler, client=client,
                                    threads_per_row=threads_per_row, memory_limit=memory_limit, on_result=finished)
                else:
                    how = "in-process"
                    for spec in plan.to_run:
                        bar.update(0, label=f"{spec.id} running")
                        try:
                            result = run_row(spec, rows_dir, plan.hashes[spec.id], threads=threads_per_row,
                                             echo=echo)
                        except Exception as exc:  # outside the row's own error handling (e.g. a full disk)
                            result = _driver_failure(spec, rows_dir, plan.hashes[spec.id], exc)
                        finished(result)
        rows = [_with_record(results[row_id], rows_dir) for row_id in manifest.order]
        files = write_summary(out, manifest, rows, run_info={
            "workers": how, "started_s": round(time.perf_counter() - started, 2), "host": socket.gethostname(),
            "force": force})
        try:
            from .report import write_report

            files["report"] = write_report(out, title="PETDosePainting cohort").html
        except Exception as exc:  # the summary is the result; a report problem must not hide it
            bar.write(f"[batch] note: the cohort report could not be written ({describe_error(exc)})")
    final_counts = {"rows": n_total, "ok": sum(r.status == "ok" for r in rows),
                    "reused": sum(r.reused for r in rows), "failed": sum(r.status == "failed" for r in rows),
                    "invalid": sum(r.status == "invalid" for r in rows)}
    return BatchResult(out, rows, final_counts, files, round(time.perf_counter() - started, 2), how)


def _prepare_out(manifest: Manifest, out_dir: str | Path) -> Path:
    from ..imaging.io import ensure_not_input
    from .outputs import prepare_output_dir

    out = Path(out_dir)
    inputs = [manifest.path, *(p for spec in manifest.rows for p in spec.input_paths().values())]
    ensure_not_input(out, inputs)
    for name in SUMMARY_FILES:
        ensure_not_input(out / name, inputs)
    rows = (out / "rows").resolve()
    for candidate in inputs:
        if rows == Path(candidate).resolve() or rows in Path(candidate).resolve().parents:
            raise OutputError(f"the input {candidate} lies inside the batch's row folders, which are replaced; "
                              "move the inputs out of the output folder", out)
    return prepare_output_dir(out, "batch")


def _remove_leftovers(rows_dir: Path) -> None:
    """Remove the half-written attempts of an interrupted run (``.<id>.partial-*``, ``.<id>.old-*``)."""
    if not rows_dir.is_dir():
        return
    for entry in rows_dir.iterdir():
        if entry.is_dir() and entry.name.startswith(".") and (".partial-" in entry.name or ".old-" in entry.name):
            shutil.rmtree(entry, ignore_errors=True)


class _Lock:
    """An exclusive lock file for one batch output folder (a second concurrent run is refused)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        for _attempt in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                os.write(self.fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                return self
            except FileExistsError:
                if not self._stale():
                    raise OutputError(f"another petdp batch is running into this folder ({self.path.name}: "
                                      f"{self._owner()}); wait for it, or delete {self.path} if it is not running",
                                      self.path.parent) from None
                self.path.unlink(missing_ok=True)
        raise OutputError(f"cannot create the lock file {self.path}", self.path.parent)

    def _owner(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return "unknown"

    def _stale(self) -> bool:
        host, _, pid = self._owner().partition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _run_dask(plan: BatchPlan, rows_dir: Path, *, workers: int | None, scheduler: str | None, client: Any,
              threads_per_row: int | None, memory_limit: str, on_result: Callable[[RowResult], None]) -> str:
    """Submit every row to Dask and report each result as it completes; returns how the rows ran."""
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise InputError("running rows in parallel needs Dask: pip install 'dask[distributed]' (or run with "
                         "--workers 0)") from exc
    import logging

    cluster = own_client = None
    try:
        if client is not None:
            how = f"Dask client {getattr(client, 'scheduler', None) and client.scheduler.address}"
        elif scheduler:
            own_client = client = _connect(Client, scheduler)
            how = f"Dask scheduler {scheduler}"
        else:
            n = min(workers or default_workers(), len(plan.to_run))
            threads_per_row = threads_per_row or max(1, default_workers() // n)
            # One thread per worker (one row at a time); no retry of a row whose worker died (it fails alone);
            # the scheduler's HTTP endpoint on a free port (several batches may run on one machine). Dask's nanny
            # sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which switches off glibc's dynamic mmap threshold:
            # every large numpy/ITK array is then a fresh mmap, and a row spends ~10x the system time in page
            # faults (measured: +60 % wall time per row). None removes it (glibc defaults, as in this process).
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       memory_limit=memory_limit, silence_logs=logging.ERROR)
            own_client = client = Client(cluster)
            how = f"Dask LocalCluster with {n} worker process{'es' if n > 1 else ''}"
        specs, submitted = {}, []
        for spec in plan.to_run:
            future = client.submit(run_row, spec, str(rows_dir), plan.hashes[spec.id], threads=threads_per_row,
                                   key=f"petdp-row-{spec.id}-{plan.hashes[spec.id][:12]}", pure=False)
            specs[future.key] = spec
            submitted.append(future)
        try:
            for future in as_completed(submitted):
                spec = specs[future.key]
                try:
                    result = future.result()
                except Exception as exc:  # the worker died or the task could not run: the row fails alone
                    result = _driver_failure(spec, rows_dir, plan.hashes[spec.id], exc)
                on_result(result)
        except BaseException:  # interrupted: do not leave rows running on a shared cluster
            client.cancel(submitted)
            raise
        return how
    finally:
        if own_client is not None:
            own_client.close()
        if cluster is not None:
            cluster.close()


def _connect(client_class: Any, scheduler: str) -> Any:
    path = Path(scheduler)
    try:
        if path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise InputError("no such scheduler file", path)
            return client_class(scheduler_file=str(path), timeout="30s")
        return client_class(scheduler, timeout="30s")
    except OSError as exc:
        raise InputError(f"cannot connect to the Dask scheduler {scheduler} ({exc})") from exc


def _driver_failure(spec: RowSpec, rows_dir: Path, row_hash_: str, exc: BaseException) -> RowResult:
    """Record a row whose task failed outside :func:`run_row` (e.g. its worker was killed)."""
    import uuid

    from ..imaging.io import write_json

    kind = type(exc).__name__
    error = (f"{kind}: the worker running the row died (out of memory, or killed); {exc}"
             if kind == "KilledWorker" else describe_error(exc))
    record = {"id": spec.id, "line": spec.line, "status": "failed", "error": error, "hash": row_hash_,
              "petdp_version": __version__, "spec": spec.canonical(), "meta": dict(spec.meta),
              "steps": list(spec.steps), "timings_s": {}, "notes": [], "files": {}}
    work = rows_dir / f".{spec.id}.partial-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True)
    write_json(json_ready({"id": spec.id, "line": spec.line, "error": error, "type": kind}), work / "error.json")
    write_json(json_ready(record), work / RECORD_NAME)
    install_row_folder(work, rows_dir / spec.id)
    return RowResult(spec.id, spec.line, "failed", error, record=record)


def _with_record(result: RowResult, rows_dir: Path) -> RowResult:
    """``result`` with its record read from the row folder (reused rows, and the same source for all)."""
    from ..imaging.io import read_json

    path = rows_dir / result.id / RECORD_NAME
    if result.status != "invalid" and path.is_file():
        try:
            result.record = read_json(path)
        except InputError as exc:
            result.record = {}
            result.status, result.error = "failed", f"the row's record cannot be read ({exc})"
        result.seconds = float(result.record.get("seconds") or result.seconds or 0.0)
        if result.reused:
            result.error = None
    return result


# ------------------------------------------------------------------------------------------------------------
# Cohort summary
# ------------------------------------------------------------------------------------------------------------

def summary_row(result: RowResult, meta_columns: Sequence[str] = ()) -> dict[str, Any]:
    """The flat cohort-summary row of one result (:data:`SUMMARY_COLUMNS`, ``gtv_ml_<m>``, ``dice_<m>``)."""
    rec = result.record or {}
    data = rec.get("data") or {}
    spec = rec.get("spec") or {}
    quant = rec.get("quantification") or {}
    presc = rec.get("prescription") or {}
    quality = (rec.get("evaluation") or {}).get("quality") or {}
    hyp = rec.get("hypoxia") or {}
    methods = rec.get("methods") or []
    row: dict[str, Any] = {
        "id": result.id, "line": result.line, "status": result.status, "reused": "yes" if result.reused else "no",
        "error": result.error or rec.get("error"), "seconds": rec.get("seconds", result.seconds or None),
        "cpu_seconds": rec.get("cpu_seconds"),
        "steps": " ".join(rec.get("steps") or spec.get("steps") or []), "data_kind": data.get("kind"),
        "phantom_seed": spec.get("phantom_seed"), "target_method": spec.get("target_method"),
        "target_source": (rec.get("target") or {}).get("source"),
        "target_volume_ml": (rec.get("target") or {}).get("volume_ml"),
        "reference_volume_ml": (rec.get("reference") or {}).get("volume_ml"),
        "methods_ok": " ".join(m["method"] for m in methods if m.get("status") == "ok"),
        "methods_refused": " ".join(m["method"] for m in methods if m.get("status") != "ok"),
        "suv_max": quant.get("suv_max"), "suv_peak": quant.get("suv_peak"), "suv_mean": quant.get("suv_mean"),
        "mtv_ml": quant.get("mtv_ml"), "tlg": quant.get("tlg"),
        "prescription_mode": presc.get("mode"), "dose_min_gy": presc.get("dose_min_gy"),
        "dose_mean_gy": presc.get("dose_mean_gy"), "dose_max_gy": presc.get("dose_max_gy"),
        "target_mean_dose_gy": presc.get("target_mean_dose_gy"),
        "evaluation_volume_ml": presc.get("evaluation_volume_ml"), "boost_volume_ml": presc.get("boost_volume_ml"),
        "qf": quality.get("qf"), "q95": quality.get("q95"), "q105": quality.get("q105"),
        "hv_ml": hyp.get("hv_ml"), "hf": hyp.get("hf"), "tmr_max": hyp.get("tmr_max"), "tmr_peak": hyp.get("tmr_peak"),
    }
    timings = rec.get("timings_s") or {}
    for step in ("load", *STEPS):
        row[f"seconds_{step}"] = timings.get(step)
    for m in methods:
        row[f"gtv_ml_{m['method']}"] = m.get("volume_ml")
        if m.get("dice") is not None:
            row[f"dice_{m['method']}"] = m.get("dice")
    meta = rec.get("meta") or {}
    for column in meta_columns:
        row[column] = meta.get(column)
    return row


def summary_columns(rows: Sequence[dict[str, Any]], meta_columns: Sequence[str] = ()) -> list[str]:
    """:data:`SUMMARY_COLUMNS`, then ``gtv_ml_<m>`` and ``dice_<m>`` (registry order), then ``meta_*``."""
    from ..segmentation.registry import method_names

    order = {name: i for i, name in enumerate(method_names())}
    present = {k for row in rows for k in row}
    extra = []
    for prefix in ("gtv_ml_", "dice_"):
        names = sorted((k[len(prefix):] for k in present if k.startswith(prefix)),
                       key=lambda n: (order.get(n, len(order)), n))
        extra += [prefix + n for n in names]
    return [*SUMMARY_COLUMNS, *extra, *meta_columns]


def write_summary(out: Path, manifest: Manifest, rows: Sequence[RowResult], *,
                  run_info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``cohort_summary.csv`` and ``cohort_summary.json`` and the manifest as used; returns the paths."""
    from ..comparison.reports import csv_text
    from ..imaging.io import write_json, write_text

    flat = [summary_row(r, manifest.meta_columns) for r in rows]
    columns = summary_columns(flat, manifest.meta_columns)
    counts = {"rows": len(rows), "ok": sum(r.status == "ok" for r in rows), "reused": sum(r.reused for r in rows),
              "failed": sum(r.status == "failed" for r in rows), "invalid": sum(r.status == "invalid" for r in rows)}
    files = {"summary_csv": write_text(csv_text(columns, flat), out / "cohort_summary.csv")}
    payload = {
        "petdp_version": __version__, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "manifest": str(manifest.path), "out": str(out.resolve()), "counts": counts, "run": run_info or {},
        "columns": columns, "summary": flat,
        "rows": [{"id": r.id, "line": r.line, "status": r.status, "reused": r.reused, "error": r.error,
                  "folder": f"rows/{r.id}" if r.status != "invalid" else None, "record": r.record} for r in rows],
    }
    files["summary_json"] = write_json(json_ready(payload), out / "cohort_summary.json")
    files["manifest"] = write_text(manifest.path.read_text(encoding="utf-8-sig"), out / "manifest_used.csv")
    return files


__all__ = ["MANIFEST_COLUMNS", "SUMMARY_COLUMNS", "BatchPlan", "BatchResult", "Manifest", "default_workers",
           "fingerprint", "is_finished", "parse_row", "plan_batch", "read_manifest", "row_hash", "run_batch",
           "summary_columns", "summary_row", "write_summary"]
