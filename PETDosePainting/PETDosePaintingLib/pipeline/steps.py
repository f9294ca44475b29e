"""The per-row pipeline of ``petdp batch``: one patient/study, from its inputs to its outputs folder.

:func:`run_row` is what a Dask worker (or the driver itself with ``--workers 0``) runs for one manifest
row (:class:`RowSpec`). It never raises for a problem of the row: it returns a :class:`RowResult` with
``status="failed"`` and the error (naming the row, the file or the parameter), so one bad row never stops
the others.

Steps (in this order; a row runs those listed in its ``steps`` column):

``segment``
    every method of ``methods`` from the click (``seed``), with the scanner ``fwhm_mm`` for the methods
    that model it, the CT on the PET grid for co-segmentation, and ``method_params``; a method that
    refuses the case is recorded with its reason (as in the demo), not a row failure. Each method is
    scored against the reference GTV when there is one (Dice, sensitivity, PPV, HD95, MSD, volume error).
``quantify``
    SUVmax, SUVpeak, SUVmean, MTV, TLG of the target GTV (:func:`~..segmentation.quantify.quantify_gtv`).
``compare``
    the overlap matrix (Dice, Jaccard, HD, HD95, MSD, centroid shift) of every method's GTV and the
    reference, and the Table-2-style volume table against the reference.
``prescribe``
    a dose-painting prescription inside the target on the PET grid: ``dpbn`` (default), ``boost`` or
    ``levels`` (:mod:`~..dosepainting.prescription`, :mod:`~..dosepainting.levels`), ``dose_min`` to
    ``dose_max`` Gy; the DVH of the prescription in the target and the evaluation volume; in ``levels`` mode
    the QVH of the levels against the continuous map.
``evaluate``
    the planned dose ``planned_dose`` against the prescription: QF, Q95, Q105, QVH, DVH, TCP, EUD
    (:func:`~..dosepainting.plan_evaluation.evaluate_plan`).
``hypoxia``
    the hypoxia PET ``fmiso`` divided by the mean uptake of the ``muscle`` reference region (or by
    ``blood_value``): ratio map, hypoxic volume HV, fraction HF, TMRmax, TMRpeak inside the target.
``timepoints``
    digital patients only: the target method at every simulated timepoint (baseline, fraction 7,
    fraction 17) from each timepoint's own click, against each timepoint's truth.
``report``
    the HTML report of the row folder (:mod:`.report`).

A digital-patient row (``phantom_seed``) is simulated on the worker: the baseline FDG and FMISO PET, the
CT resampled onto the PET grid, the truth GTV as reference, its click as seed, its scanner FWHM, and a
muscle reference region (muscle voxels of the PET grid, >= 95 % muscle, at least 20 mm from the GTV).

Everything is written into a fresh folder next to the row's final folder and renamed onto it at the end
(a row folder is always the complete result of one attempt); a finished row also gets its completion
marker ``.petdp-row.json`` holding the hash of its inputs and parameters.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError, PETDPError, ProcessingError

#: Steps a row may run, in execution order (the ``steps`` column; a stable contract).
STEPS = ("segment", "quantify", "compare", "prescribe", "evaluate", "hypoxia", "timepoints", "report")
#: Steps run when the ``steps`` column is empty.
DEFAULT_STEPS = ("segment", "quantify", "prescribe", "report")
#: Prescription modes (the ``prescription`` column).
PRESCRIPTION_MODES = ("dpbn", "boost", "levels")
#: Name of a finished row's completion marker (inside the row folder).
MARKER_NAME = ".petdp-row.json"
#: Name of every row's result record (inside the row folder); the cohort summary is built from these.
RECORD_NAME = "row_summary.json"
#: Distance (mm) between the GTV and the digital patient's muscle reference region.
PHANTOM_MUSCLE_MARGIN_MM = 20.0
#: Minimum muscle fraction of a PET voxel of the digital patient's muscle reference region.
PHANTOM_MUSCLE_FRACTION = 0.95


@dataclass(frozen=True)
class RowSpec:
    """One manifest row, checked and normalised (paths absolute, numbers parsed, defaults applied)."""

    id: str
    line: int  #: line of the manifest (1 = the header)
    pet: str | None = None
    ct: str | None = None
    target: str | None = None
    reference: str | None = None
    seed_lps: tuple[float, float, float] | None = None
    methods: tuple[str, ...] = ("gradient",)
    target_method: str = "gradient"
    steps: tuple[str, ...] = DEFAULT_STEPS
    fwhm_mm: float | None = None
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prescription: str = "dpbn"
    dose_min: float = 70.0
    dose_max: float = 86.0
    levels: int = 5
    margin_mm: float | None = None
    planned_dose: str | None = None
    fmiso: str | None = None
    hypoxia_tracer: str = "fmiso"
    muscle: str | None = None
    blood_value: float | None = None
    phantom_seed: int | None = None
    phantom_quick: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)

    def canonical(self) -> dict[str, Any]:
        """Everything that determines the row's results (not ``line`` nor ``meta``), JSON-ready."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("line", "meta")}
        out["seed_lps"] = None if self.seed_lps is None else list(self.seed_lps)
        out["methods"], out["steps"] = list(self.methods), list(self.steps)
        out["method_params"] = json.loads(json.dumps(self.method_params, sort_keys=True))
        return out

    def input_paths(self) -> dict[str, str]:
        """The row's input files and folders, by column."""
        return {k: getattr(self, k) for k in ("pet", "ct", "target", "reference", "planned_dose", "fmiso", "muscle")
                if getattr(self, k)}


@dataclass
class RowResult:
    """What one row produced: its status, error, time and result record (``row_summary.json``)."""

    id: str
    line: int
    status: str  #: "ok", "failed" (the row ran and failed) or "invalid" (the manifest row is unusable)
    error: str | None = None
    seconds: float = 0.0
    reused: bool = False  #: finished by a previous run with the same hash (not redone)
    record: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------
# Running a row
# ------------------------------------------------------------------------------------------------------------

def run_row(spec: RowSpec, rows_dir: str | Path, row_hash: str, *, threads: int | None = None,
            echo: Callable[[str], None] | None = None) -> RowResult:
    """Run every step of ``spec`` into ``rows_dir/<id>`` (replaced as a whole at the end); never raises for a
    problem of the row.

    ``threads``: SimpleITK threads for this process (``None``: leave the default). ``echo`` also receives the
    row's log lines (they always go to ``log.txt`` in the row folder).
    """
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    rows_dir = Path(rows_dir)
    rows_dir.mkdir(parents=True, exist_ok=True)
    work = rows_dir / f".{spec.id}.partial-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    started, cpu_started = time.perf_counter(), time.process_time()
    record: dict[str, Any] = {
        "id": spec.id, "line": spec.line, "status": "running", "error": None, "hash": row_hash,
        "petdp_version": __version__, "started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
        "spec": spec.canonical(), "meta": dict(spec.meta), "steps": list(spec.steps), "timings_s": {},
        "notes": [], "files": {},
    }
    with (work / "log.txt").open("w", encoding="utf-8") as log_file:
        def say(message: str) -> None:
            line = f"{_now()} {message}"
            log_file.write(line + "\n")
            log_file.flush()
            if echo is not None:
                echo(f"{spec.id}: {message}")

        row = _Row(spec, work, record, say, log_file)
        try:
            say(f"row {spec.id} (manifest line {spec.line}), steps: {' '.join(spec.steps)}")
            row.run()
            record["status"] = "ok"
        except Exception as exc:  # the row fails alone; the error names the step, the file or the parameter
            record["status"] = "failed"
            record["error"] = f"step {row.current_step}: {describe_error(exc)}"
            record["error_step"] = row.current_step
            say(f"FAILED: {record['error']}")
            error = {"id": spec.id, "line": spec.line, "error": record["error"], "type": type(exc).__name__,
                     "traceback": traceback.format_exc()}
            _safe_write_json(error, work / "error.json")
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["cpu_seconds"] = round(time.process_time() - cpu_started, 3)  # this process, all its threads
        record["finished"] = _now()
        say(f"{record['status']} in {record['seconds']:.1f} s")
    _safe_write_json(record, work / RECORD_NAME)
    if record["status"] == "ok":
        _safe_write_json({"id": spec.id, "hash": row_hash, "finished": record["finished"],
                          "petdp_version": __version__}, work / MARKER_NAME)
    install_row_folder(work, rows_dir / spec.id)
    return RowResult(spec.id, spec.line, record["status"], record["error"], record["seconds"], record=record)


def install_row_folder(work: Path, final: Path) -> None:
    """Put the finished attempt ``work`` in place of ``final`` (two renames; the old folder is then removed)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def describe_error(exc: BaseException) -> str:
    """One line for the summary: the library's own message for its errors, else the type and message."""
    if isinstance(exc, PETDPError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500] if text else 'no message'}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def json_ready(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, tuples and paths made plain, and NaN/inf as ``None`` (JSON has none)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        obj = None
    elif isinstance(obj, Path):
        obj = str(obj)
    elif isinstance(obj, sitk.Image):
        obj = None
    return obj


def _safe_write_json(obj: Any, path: Path) -> None:
    from ..imaging.io import write_json

    write_json(json_ready(obj), path)


class _Row:
    """The state of one row while its steps run (images in memory, the record being filled)."""

    def __init__(self, spec: RowSpec, work: Path, record: dict[str, Any], say: Callable[[str], None],
                 log_file) -> None:
        self.spec, self.work, self.record, self.say, self.log_file = spec, work, record, say, log_file
        self.pet: sitk.Image | None = None
        self.ct_on_pet: sitk.Image | None = None
        self.reference: sitk.Image | None = None
        self.reference_volume_ml: float | None = None
        self.seed: tuple[float, float, float] | None = spec.seed_lps
        self.fwhm: float | None = spec.fwhm_mm
        self.fmiso: sitk.Image | None = None
        self.muscle: sitk.Image | None = None
        self.patient = None
        self.gtvs: dict[str, sitk.Image] = {}
        self.target: sitk.Image | None = None
        self.prescription = None  # PrescriptionResult
        self.prescribed: sitk.Image | None = None  # the map evaluated (levels map in levels mode)
        self.current_step = "start"

    # -- bookkeeping -----------------------------------------------------------------------------------

    def file(self, key: str, path: Path) -> Path:
        self.record["files"][key] = str(path.relative_to(self.work))
        return path

    def image(self, key: str, image: sitk.Image, relative: str) -> Path:
        from ..imaging.io import write_image

        return self.file(key, write_image(image, self.work / relative))

    def text(self, key: str, text: str, relative: str) -> Path:
        from ..imaging.io import write_text

        return self.file(key, write_text(text, self.work / relative))

    def run(self) -> None:
        stages = [("load", self.load), *((s, getattr(self, f"step_{s}")) for s in STEPS if s in self.spec.steps)]
        for name, action in stages:
            self.current_step = name
            t0 = time.perf_counter()
            self.say(f"step {name}")
            action()
            self.record["timings_s"][name] = round(time.perf_counter() - t0, 3)

    # -- inputs ----------------------------------------------------------------------------------------

    def load(self) -> None:
        spec = self.spec
        if spec.phantom_seed is not None:
            self._load_phantom()
        else:
            self.pet = load_pet(spec.pet, "pet")
            self.record["data"] = {"kind": "files", "pet": spec.pet}
        pet = self.pet
        assert pet is not None
        from ..imaging.image import get_units

        self.record["data"].update(pet_units=get_units(pet), pet_size=list(pet.GetSize()),
                                   pet_spacing_mm=list(pet.GetSpacing()), fwhm_mm=self.fwhm)
        self.image("pet", pet, "pet_suv.nrrd")
        if spec.ct:
            self.ct_on_pet = self._on_pet_grid(load_image(spec.ct, "ct"), "ct", interpolation="linear",
                                               default=-1000.0)
        if spec.reference:
            self.reference = self._mask(spec.reference, "reference")
            from ..imaging.image import mask_volume_ml

            self.reference_volume_ml = mask_volume_ml(self.reference)
        if self.reference is not None:
            self.image("reference", self.reference, "reference.nrrd")
            self.record["reference"] = {"source": spec.reference or "digital patient truth (GTV, PET grid)",
                                        "volume_ml": self.reference_volume_ml}
        if spec.target:
            self.target = self._mask(spec.target, "target", allow_empty=False)
        if spec.fmiso:
            self.fmiso = self._on_pet_grid(load_pet(spec.fmiso, "fmiso"), "fmiso", interpolation="linear")
        if spec.muscle:
            self.muscle = self._mask(spec.muscle, "muscle", allow_empty=False)
        self.record["data"]["seed_lps"] = None if self.seed is None else list(self.seed)

    def _load_phantom(self) -> None:
        from ..phantom.patient import PatientConfig
        from ..pipeline.progress import build_patient_with_progress

        spec = self.spec
        config = PatientConfig(seed=int(spec.phantom_seed), quick=spec.phantom_quick,
                               with_timepoints="timepoints" in spec.steps, with_mr=False)
        self.say(f"simulating digital patient {spec.phantom_seed} ({'quick' if spec.phantom_quick else 'full'})")
        patient = build_patient_with_progress(config, desc=f"{spec.id} phantom", stream=self.log_file, mode="plain")
        self.patient = patient
        baseline = patient.timepoints[0]
        self.pet = baseline.fdg_pet
        self.fwhm = self.fwhm if self.fwhm is not None else config.scanner_config().effective_fwhm_mm
        self.seed = self.seed if self.seed is not None else tuple(baseline.truth.seed_lps)
        from ..imaging.resample import resample_to_reference

        self.ct_on_pet = resample_to_reference(baseline.ct, self.pet, interpolation="linear", default_value=-1000.0)
        if not spec.reference:
            self.reference = baseline.truth.gtv_pet
            self.reference_volume_ml = float(baseline.truth.gtv_volume_ml)
        if not spec.fmiso:
            self.fmiso = baseline.fmiso_pet
        if not spec.muscle and spec.blood_value is None and "hypoxia" in spec.steps:
            self.muscle = phantom_muscle_region(patient)
        self.record["data"] = {
            "kind": "digital head-and-neck patient", "phantom_seed": int(spec.phantom_seed),
            "quick": spec.phantom_quick, "truth_gtv_ml": float(baseline.truth.gtv_volume_ml),
            "truth_hypoxic_ml": float(baseline.truth.hypoxic_volume_ml),
            "timepoints": [tp.name for tp in patient.timepoints],
        }
        self.image("fmiso_pet", baseline.fmiso_pet, "fmiso_suv.nrrd")

    def _on_pet_grid(self, image: sitk.Image, column: str, *, interpolation: str,
                     default: float = 0.0) -> sitk.Image:
        from ..imaging.image import same_geometry
        from ..imaging.resample import resample_to_reference

        if same_geometry(image, self.pet):
            return image
        self.record["notes"].append(f"{column} resampled onto the PET grid ({interpolation} interpolation)")
        return resample_to_reference(image, self.pet, interpolation=interpolation, default_value=default)

    def _mask(self, path: str, column: str, allow_empty: bool = True) -> sitk.Image:
        from ..imaging.image import same_geometry
        from ..imaging.io import read_mask
        from ..imaging.resample import resample_mask

        with column_context(column):
            mask = read_mask(path, f"{column} mask", allow_empty=allow_empty)
            if not same_geometry(mask, self.pet):
                self.record["notes"].append(f"{column} mask resampled onto the PET grid (nearest neighbour)")
                mask = resample_mask(mask, self.pet)
                if not allow_empty and not sitk.GetArrayViewFromImage(mask).any():
                    raise InputError(f"the {column} mask is empty once put on the PET grid", path)
        return mask

    def require_target(self, step: str) -> sitk.Image:
        if self.target is not None:
            return self.target
        raise InputError(f"step {step!r} needs a target GTV: give the column 'target' or run 'segment' with "
                         f"target_method {self.spec.target_method!r}")

    # -- steps -----------------------------------------------------------------------------------------

    def step_segment(self) -> None:
        from ..comparison.metrics import compare_masks
        from ..comparison.reports import csv_text
        from ..segmentation.registry import get_method, run_method
        from .demo import ACCURACY_COLUMNS

        spec = self.spec
        if self.seed is None:
            raise InputError("step 'segment' needs a click: give seed_x, seed_y, seed_z (LPS mm)")
        rows = []
        for name in spec.methods:
            info = get_method(name)
            params: dict[str, Any] = {}
            if "fwhm_mm" in info.parameters and self.fwhm is not None:
                params["fwhm_mm"] = self.fwhm
            row: dict[str, Any] = dict.fromkeys(ACCURACY_COLUMNS)
            row.update(method=name, truth_volume_ml=self.reference_volume_ml)
            t0 = time.perf_counter()
            if info.needs_ct:
                if self.ct_on_pet is None:
                    row.update(status="refused", seconds=0.0, note="needs a CT (column ct)")
                    rows.append(row)
                    self.say(f"  {name}: refused (no CT)")
                    continue
                params["ct"] = self.ct_on_pet
            params.update(spec.method_params.get(name, {}))
            try:
                seg = run_method(name, self.pet, self.seed, **params)
            except PETDPError as exc:  # a method may refuse a case; say why, go on
                row.update(status="refused", seconds=round(time.perf_counter() - t0, 3), note=str(exc))
                rows.append(row)
                self.say(f"  {name}: refused: {exc}")
                continue
            row.update(status="ok", volume_ml=seg.volume_ml, threshold=seg.threshold,
                       seconds=round(time.perf_counter() - t0, 3),
                       note="; ".join(seg.details.get("warnings", []) or []))
            if self.reference is not None:
                m = compare_masks(seg.mask, self.reference, mask_name=name, reference_name="reference",
                                  allow_empty=True)
                row.update(dice=m.dice, jaccard=m.jaccard, sensitivity=m.sensitivity, ppv=m.ppv,
                           hd95_mm=m.hd95_mm, msd_mm=m.msd_mm,
                           volume_error_pct=100.0 * (seg.volume_ml / self.reference_volume_ml - 1.0)
                           if self.reference_volume_ml else None)
            self.gtvs[name] = seg.mask
            self.image(f"gtv_{name}", seg.mask, f"gtv/gtv_{name}.nrrd")
            rows.append(row)
            self.say(f"  {name}: {seg.volume_ml:.2f} mL")
        self.text("accuracy", csv_text(ACCURACY_COLUMNS, rows), "accuracy.csv")
        self.record["methods"] = json_ready(rows)
        if self.target is None:
            if spec.target_method not in self.gtvs:
                refusal = next((r["note"] for r in rows if r["method"] == spec.target_method), "not run")
                needs = [s for s in spec.steps if s in ("quantify", "prescribe", "evaluate", "hypoxia", "timepoints")]
                if needs:
                    raise ProcessingError(f"the target method {spec.target_method!r} gave no GTV ({refusal}); "
                                          f"steps {', '.join(needs)} need one: choose another target_method or "
                                          "give a target mask")
                return
            self.target = self.gtvs[spec.target_method]
            self.record["target"] = {"source": f"method {spec.target_method}"}
        else:
            self.record["target"] = {"source": f"file {spec.target}"}

    def _target_record(self) -> None:
        from ..imaging.image import mask_volume_ml

        target = self.target
        if target is None:
            return
        self.record.setdefault("target", {"source": f"file {self.spec.target}"})
        self.record["target"]["volume_ml"] = mask_volume_ml(target)
        if "target" not in self.record["files"]:
            self.image("target", target, "target.nrrd")

    def step_quantify(self) -> None:
        from ..segmentation.quantify import quantify_gtv

        target = self.require_target("quantify")
        self._target_record()
        q = quantify_gtv(self.pet, target)
        self.record["quantification"] = json_ready(q.as_dict())
        self.say(f"  SUVmax {q.suv_max:.2f}, SUVpeak {q.suv_peak:.2f}, SUVmean {q.suv_mean:.2f}, "
                 f"MTV {q.mtv_ml:.2f} mL, TLG {q.tlg:.1f}")

    def step_compare(self) -> None:
        from ..comparison.reports import overlap_matrix, volume_table

        masks = {name: m for name, m in self.gtvs.items() if sitk.GetArrayViewFromImage(m).any()}
        if self.reference is not None and sitk.GetArrayViewFromImage(self.reference).any():
            masks["reference"] = self.reference
        if len(masks) < 2:
            raise InputError("step 'compare' needs at least two non-empty GTVs (methods or the reference)")
        matrix = overlap_matrix(masks)
        self.text("matrix", matrix.csv_text(), "compare/matrix.csv")
        matrices = matrix.to_dict()
        out: dict[str, Any] = {"matrix": json_ready({"names": matrices["names"], "matrices": matrices["matrices"]})}
        if "reference" in masks:
            table = volume_table(masks, reference="reference", combinations=False)
            self.text("table2", table.csv_text(), "compare/table2.csv")
            out["table2"] = json_ready(table.to_dict())
        self.record["compare"] = out

    def step_prescribe(self) -> None:
        from ..dosepainting.dvh import dvh_from_masks
        from ..dosepainting.levels import quantise_levels
        from ..dosepainting.plan_evaluation import dvh_csv
        from ..dosepainting.prescription import (
            DEFAULT_MARGIN_MM,
            boost_prescription,
            dose_painting_by_numbers,
        )

        spec = self.spec
        target = self.require_target("prescribe")
        self._target_record()
        levels = None
        if spec.prescription == "boost":
            result = boost_prescription(self.pet, target, base_dose=spec.dose_min, boost_dose=spec.dose_max,
                                        boost_margin_mm=spec.margin_mm or 0.0)
            prescribed = result.dose
        else:
            result = dose_painting_by_numbers(
                self.pet, target, dose_low=spec.dose_min, dose_high=spec.dose_max,
                margin_mm=DEFAULT_MARGIN_MM if spec.margin_mm is None else spec.margin_mm)
            prescribed = result.dose
            if spec.prescription == "levels":
                levels = quantise_levels(result.dose, result.evaluation_mask, n_levels=spec.levels,
                                         dose_low=spec.dose_min, dose_high=spec.dose_max)
                prescribed = levels.level_map
        self.prescription, self.prescribed = result, prescribed
        self.image("dose", result.dose, "prescription/dose.nrrd")
        self.image("evaluation_mask", result.evaluation_mask, "prescription/evaluation_mask.nrrd")
        if result.boost_mask is not None:
            self.image("boost_mask", result.boost_mask, "prescription/boost_mask.nrrd")
        structures = {"GTV": target, "PTV_PET": result.evaluation_mask}
        if result.boost_mask is not None and sitk.GetArrayViewFromImage(result.boost_mask).any():
            structures["BTV"] = result.boost_mask
        dose_gy = prescribed
        self.text("dvh", dvh_csv(dvh_from_masks(dose_gy, structures)), "prescription/dvh.csv")
        summary: dict[str, Any] = {"mode": spec.prescription, **result.summary()}
        if levels is not None:
            self.image("levels", levels.level_map, "prescription/levels.nrrd")
            self.text("qvh", levels.evaluation.qvh_csv(), "prescription/qvh.csv")
            summary["levels"] = levels.summary()
        self.record["prescription"] = json_ready(summary)
        self.say(f"  {spec.prescription}: dose {result.dose_min_gy:.1f}-{result.dose_max_gy:.1f} Gy, mean "
                 f"{result.dose_mean_gy:.1f} Gy over {result.evaluation_volume_ml:.2f} mL")

    def step_evaluate(self) -> None:
        from ..dosepainting.plan_evaluation import dvh_csv, evaluate_plan, resample_dose_to_prescription

        spec = self.spec
        if self.prescribed is None:
            raise InputError("step 'evaluate' needs the step 'prescribe'")
        if not spec.planned_dose:
            raise InputError("step 'evaluate' needs a planned dose (column planned_dose)")
        planned = load_image(spec.planned_dose, "planned_dose")
        planned, note = resample_dose_to_prescription(planned, self.prescribed,
                                                      mask=self.prescription.evaluation_mask)
        if note:
            self.record["notes"].append(note)
        structures = {"GTV": self.target, "PTV_PET": self.prescription.evaluation_mask}
        ev = evaluate_plan(planned, self.prescribed, self.prescription.evaluation_mask, structures=structures)
        self.text("plan_qvh", ev.quality.qvh_csv(), "evaluation/qvh.csv")
        self.text("plan_dvh", dvh_csv(ev.dvhs), "evaluation/dvh.csv")
        self.image("qf_map", ev.quality.qf_map, "evaluation/qf_map.nrrd")
        self.record["evaluation"] = json_ready(ev.summary())
        self.say(f"  QF {ev.quality.qf:.4f}, Q95 {ev.quality.q95:.3f}, Q105 {ev.quality.q105:.3f}")

    def step_hypoxia(self) -> None:
        from ..dosepainting.hypoxia import hypoxia_metrics, uptake_ratio_map

        spec = self.spec
        target = self.require_target("hypoxia")
        self._target_record()
        if self.fmiso is None:
            raise InputError("step 'hypoxia' needs a hypoxia PET (column fmiso)")
        kind = "blood" if spec.blood_value is not None else "muscle"
        if kind == "muscle" and self.muscle is None:
            raise InputError("step 'hypoxia' needs a reference region (column muscle) or a blood-sample value "
                             "(column blood_value)")
        ratio = uptake_ratio_map(self.fmiso, self.muscle if kind == "muscle" else None, kind,
                                 blood_value=spec.blood_value, target=target,
                                 reference_name="the muscle reference region", target_name="the target GTV")
        metrics = hypoxia_metrics(ratio.ratio, target, tracer=spec.hypoxia_tracer, reference_kind=kind)
        if "fmiso_pet" not in self.record["files"]:
            self.image("fmiso_pet", self.fmiso, "hypoxia/fmiso_suv.nrrd")
        self.image("ratio", ratio.ratio, "hypoxia/ratio.nrrd")
        self.image("hypoxic_mask", metrics.hypoxic_mask, "hypoxia/hypoxic_mask.nrrd")
        if self.muscle is not None and kind == "muscle":
            self.image("reference_region", self.muscle, "hypoxia/reference_region.nrrd")
        self.record["hypoxia"] = json_ready({
            "reference": {"kind": kind, "source": ratio.reference_source, "mean": ratio.reference_mean,
                          "sd": ratio.reference_sd, "volume_ml": ratio.reference_volume_ml},
            **metrics.summary()})
        self.say(f"  HV {metrics.hv_ml:.2f} mL, HF {metrics.hf:.3f}, TMRmax {metrics.tmr_max:.2f}, "
                 f"TMRpeak {metrics.tmr_peak:.2f}")

    def step_timepoints(self) -> None:
        from ..comparison.metrics import compare_masks
        from ..comparison.reports import csv_text
        from ..segmentation.registry import get_method, run_method

        if self.patient is None:
            raise InputError("step 'timepoints' is for digital-patient rows (column phantom_seed)")
        method = self.spec.target_method
        info = get_method(method)
        rows = []
        for tp in self.patient.timepoints:
            params: dict[str, Any] = {}
            if "fwhm_mm" in info.parameters and self.fwhm is not None:
                params["fwhm_mm"] = self.fwhm
            if info.needs_ct:
                from ..imaging.resample import resample_to_reference

                params["ct"] = resample_to_reference(tp.ct, tp.fdg_pet, interpolation="linear", default_value=-1000.0)
            params.update(self.spec.method_params.get(method, {}))
            row: dict[str, Any] = {"timepoint": tp.name, "fraction": tp.fraction, "method": method,
                                   "truth_volume_ml": float(tp.truth.gtv_volume_ml)}
            try:
                seg = run_method(method, tp.fdg_pet, tp.truth.seed_lps, **params)
            except PETDPError as exc:
                row.update(status="refused", note=str(exc))
                rows.append(row)
                continue
            m = compare_masks(seg.mask, tp.truth.gtv_pet, mask_name=method, reference_name="truth",
                              allow_empty=True)
            row.update(status="ok", volume_ml=seg.volume_ml, dice=m.dice,
                       volume_error_pct=100.0 * (seg.volume_ml / tp.truth.gtv_volume_ml - 1.0))
            self.image(f"gtv_{tp.name}", seg.mask, f"timepoints/gtv_{tp.name}.nrrd")
            rows.append(row)
        columns = ("timepoint", "fraction", "method", "status", "volume_ml", "truth_volume_ml", "volume_error_pct",
                   "dice", "note")
        self.text("timepoints", csv_text(columns, rows), "timepoints/timepoints.csv")
        self.record["timepoints"] = json_ready(rows)

    def step_report(self) -> None:
        from .report import write_report

        # The record as it stands (the report reads the folder; the final record is written after it).
        _safe_write_json({**self.record, "status": "ok"}, self.work / RECORD_NAME)
        result = write_report(self.work, title=f"PETDosePainting batch row {self.spec.id}",
                              location=f"rows/{self.spec.id}")
        self.file("report", result.html)


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def column_context(column: str) -> Iterator[None]:
    """Prefix the message of an :class:`InputError` raised inside with ``column <column>:`` (same type)."""
    try:
        yield
    except InputError as exc:
        if str(exc).startswith("column "):
            raise
        try:
            wrapped = type(exc)(f"column {column}: {exc}")
        except TypeError:  # a subclass with another constructor
            wrapped = InputError(f"column {column}: {exc}")
        raise wrapped from exc


def load_image(path: str | Path, column: str) -> sitk.Image:
    """An image file, a DICOM series folder or an RT Dose file (column ``column`` of the manifest)."""
    from ..imaging.io import read_image

    with column_context(column):
        try:
            return read_image(path)
        except InputError:
            raise
        except Exception as exc:  # e.g. a reader crashing on a damaged file: still name it
            raise InputError(f"cannot be read as an image ({type(exc).__name__}: {exc})", path) from exc


def load_pet(path: str | Path, column: str) -> sitk.Image:
    """A PET in SUV: a DICOM PET folder (converted to SUVbw, QIBA) or an image file recording SUV units or none."""
    from ..errors import UnitsError
    from ..imaging.image import SUV_UNITS, get_units

    path = Path(path)
    if path.is_dir():
        from ..imaging.dicom_series import read_pet_suv

        with column_context(column):
            image, _ = read_pet_suv(path, kind="bw")
        return image
    image = load_image(path, column)
    with column_context(column):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError("is not a 3D scalar image", path)
        units = get_units(image)
        if units is not None and units not in SUV_UNITS:
            raise UnitsError(f"holds {units!r} values; an SUV image or a DICOM PET folder is needed", path)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def phantom_muscle_region(patient, *, margin_mm: float = PHANTOM_MUSCLE_MARGIN_MM,
                          min_fraction: float = PHANTOM_MUSCLE_FRACTION) -> sitk.Image:
    """The digital patient's muscle reference region on the baseline PET grid: voxels at least
    ``min_fraction`` muscle (lesions painted, so no tumour voxel counts) and at least ``margin_mm`` from the
    primary GTV and the node (design choice: away from partial volume with the lesions)."""
    from ..dosepainting.prescription import dilate_mask_mm
    from ..imaging.image import image_from_array
    from ..phantom.modalities import area_average
    from ..phantom.tissues import Tissue
    from ..phantom.tumour import paint_lesion_labels

    baseline = patient.timepoints[0]
    pet = baseline.fdg_pet
    labels = paint_lesion_labels(patient.anatomy.labels, patient.series.timepoints[0])
    fraction = area_average((labels == Tissue.MUSCLE).astype(np.float32), patient.anatomy.label_image, pet)
    lesions = sitk.GetArrayViewFromImage(baseline.truth.gtv_pet).astype(bool) | \
        sitk.GetArrayViewFromImage(baseline.truth.node_pet).astype(bool)
    near = dilate_mask_mm(lesions, margin_mm, np.asarray(pet.GetSpacing())[::-1])
    region = (fraction >= min_fraction) & ~near
    if not region.any():
        raise ProcessingError("the digital patient has no muscle voxel for the FMISO reference region")
    return image_from_array(region, pet)


__all__ = ["DEFAULT_STEPS", "MARKER_NAME", "PRESCRIPTION_MODES", "RECORD_NAME", "STEPS", "RowResult", "RowSpec",
           "describe_error", "install_row_folder", "json_ready", "load_image", "load_pet", "phantom_muscle_region",
           "run_row"]
