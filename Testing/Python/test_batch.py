"""petdp batch: manifest, hashes, progress, and a small cohort on a local Dask cluster (issue 8).

The cohort: two quick digital patients simulated on the workers, one study given as files (a uniform
sphere of known SUV, volume and hypoxic core, so its numbers come from first principles), and a row whose
PET file is corrupt. It runs once in this process (``--workers 0``, the single-process reference), once on
a 2-worker LocalCluster (same numbers, same images), and again into the Dask run's folder (finished rows
are reused, the corrupt row fails again, alone).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.pipeline.batch import (
    MANIFEST_COLUMNS,
    SUMMARY_COLUMNS,
    plan_batch,
    read_manifest,
    row_hash,
    run_batch,
)
from PETDosePaintingLib.pipeline.progress import Progress, observe_sitk, patient_build_steps, resolve_mode
from PETDosePaintingLib.pipeline.steps import MARKER_NAME, RECORD_NAME

VOXEL_MM = 4.0
VOXEL_ML = VOXEL_MM**3 / 1000.0
SPHERE_SUV, BACKGROUND_SUV = 8.0, 1.0
HYPOXIC_RATIO, MUSCLE_FMISO = 1.5, 1.0
PLANNED_FACTOR = 0.98


# ------------------------------------------------------------------------------------------------------------
# A study given as files, with known numbers
# ------------------------------------------------------------------------------------------------------------

def _sphere_study(folder: Path) -> dict[str, object]:
    """PET: SUV 8 in a 14 mm sphere, 1 elsewhere (no blur); FMISO 1.5 x muscle in a 6 mm core; a muscle box far
    away; a planned dose of 0.98 x 86 Gy. Returns the paths and the expected voxel counts."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = make_grid((32, 32, 24), (VOXEL_MM,) * 3, origin=(-62.0, -62.0, -46.0))
    centre = np.array([2.0, -2.0, 2.0])
    x = -62.0 + VOXEL_MM * np.arange(32)
    y = -62.0 + VOXEL_MM * np.arange(32)
    z = -46.0 + VOXEL_MM * np.arange(24)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    r = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2)
    sphere, core = r <= 14.0, r <= 6.0
    muscle = (xx > 30) & (yy > 30) & (np.abs(zz) < 20)
    pet = np.where(sphere, SPHERE_SUV, BACKGROUND_SUV).astype(np.float32)
    fmiso = np.where(core, HYPOXIC_RATIO * MUSCLE_FMISO, MUSCLE_FMISO).astype(np.float32)
    planned = np.full(pet.shape, PLANNED_FACTOR * 86.0, dtype=np.float32)
    files = {"pet": image_from_array(pet, grid, units=Units.SUV_BW), "reference": image_from_array(sphere, grid),
             "fmiso": image_from_array(fmiso, grid, units=Units.SUV_BW), "muscle": image_from_array(muscle, grid),
             "planned": image_from_array(planned, grid, units=Units.GY)}
    paths = {}
    for name, image in files.items():
        paths[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(image, str(paths[name]))
    return {"paths": paths, "n_sphere": int(sphere.sum()), "n_core": int(core.sum()), "centre": centre}


def _manifest(folder: Path, study: dict, *, p3_dose_max: float = 86.0) -> Path:
    corrupt = folder / "corrupt_pet.nrrd"
    if not corrupt.exists():
        corrupt.write_bytes(b"NRRD0004\nthis is not an image\n")
    paths = study["paths"]
    x, y, z = study["centre"]
    rows = [
        {"id": "P1", "phantom_seed": "1", "phantom_quick": "yes", "methods": "gradient threshold fcm",
         "steps": "segment quantify compare prescribe hypoxia report", "meta_site": "oropharynx"},
        {"id": "P2", "phantom_seed": "2", "phantom_quick": "yes", "methods": "gradient",
         "steps": "segment quantify prescribe", "prescription": "levels", "meta_site": "larynx"},
        {"id": "P3", "pet": "study/pet.nrrd", "reference": str(paths["reference"]), "target": "study/reference.nrrd",
         "seed_x": f"{x}", "seed_y": f"{y}", "seed_z": f"{z}", "methods": "gradient;threshold", "fwhm_mm": "7.5",
         "steps": "segment quantify prescribe evaluate hypoxia report", "dose_max": f"{p3_dose_max}",
         "planned_dose": "study/planned.nrrd", "fmiso": "study/fmiso.nrrd", "muscle": "study/muscle.nrrd",
         "meta_site": "phantom sphere"},
        {"id": "BAD", "pet": "corrupt_pet.nrrd", "seed_x": "0", "seed_y": "0", "seed_z": "0",
         "steps": "segment quantify report", "meta_site": "corrupt"},
    ]
    columns = ["id", "phantom_seed", "phantom_quick", "pet", "reference", "target", "seed_x", "seed_y", "seed_z",
               "methods", "fwhm_mm", "steps", "prescription", "dose_max", "planned_dose", "fmiso", "muscle",
               "meta_site"]
    path = folder / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The three runs: in-process, 2-worker LocalCluster, and the Dask run again (resumed)."""
    base = tmp_path_factory.mktemp("batch")
    study = _sphere_study(base / "study")
    manifest = _manifest(base, study)
    single = run_batch(manifest, base / "single", workers=0, progress="off")
    dask_run = run_batch(manifest, base / "dask", workers=2, progress="plain", stream=io.StringIO())
    markers = {r: (base / "dask" / "rows" / r / MARKER_NAME).stat().st_mtime_ns for r in ("P1", "P2", "P3")}
    again = run_batch(manifest, base / "dask", workers=2, progress="off")
    return {"base": base, "study": study, "manifest": manifest, "single": single, "dask": dask_run,
            "again": again, "markers": markers}


def _summary(out: Path) -> dict[str, dict]:
    data = json.loads((out / "cohort_summary.json").read_text())
    return {row["id"]: row for row in data["summary"]}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    if isinstance(a, str) and isinstance(b, str):  # ITK messages name object addresses (0x...)
        return re.sub(r"0x[0-9a-f]+", "0x", a) == re.sub(r"0x[0-9a-f]+", "0x", b)
    return a == b


# ------------------------------------------------------------------------------------------------------------
# The acceptance tests
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_row_output_exists_and_matches_the_single_process_run(cohort):
    single, dask_run = cohort["single"], cohort["dask"]
    assert dask_run.workers.startswith("Dask LocalCluster with 2 worker")
    assert [r.id for r in dask_run.rows] == ["P1", "P2", "P3", "BAD"]
    for run in (single, dask_run):
        assert run.counts == {"rows": 4, "ok": 3, "reused": 0, "failed": 1, "invalid": 0}
        for row in run.rows[:3]:
            folder = run.out_dir / "rows" / row.id
            assert row.status == "ok", row.error
            assert (folder / MARKER_NAME).is_file()
            assert (folder / "report.html").is_file() == ("report" in row.record["steps"])
            for rel in row.record["files"].values():
                assert (folder / rel).is_file(), rel
    a, b = _summary(single.out_dir), _summary(dask_run.out_dir)
    for row_id in ("P1", "P2", "P3", "BAD"):
        for key, value in a[row_id].items():
            if key in ("seconds", "cpu_seconds", "reused") or key.startswith("seconds_"):  # (resumed since)
                continue
            assert _same(value, b[row_id][key]), (row_id, key, value, b[row_id][key])
    # Same images, voxel for voxel.
    for row_id in ("P1", "P2", "P3"):
        ra, rb = single.out_dir / "rows" / row_id, dask_run.out_dir / "rows" / row_id
        images = sorted(p.relative_to(ra) for p in ra.rglob("*.nrrd"))
        assert images and images == sorted(p.relative_to(rb) for p in rb.rglob("*.nrrd"))
        for rel in images:
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ra / rel))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(rb / rel)))), (row_id, rel)


@pytest.mark.slow
def test_file_row_numbers_from_first_principles(cohort):
    study, row = cohort["study"], _summary(cohort["single"].out_dir)["P3"]
    volume = study["n_sphere"] * VOXEL_ML
    assert row["reference_volume_ml"] == pytest.approx(volume, rel=1e-9)
    assert row["target_volume_ml"] == pytest.approx(volume, rel=1e-9)
    assert row["mtv_ml"] == pytest.approx(volume, rel=1e-9)
    assert row["suv_max"] == pytest.approx(SPHERE_SUV) and row["suv_mean"] == pytest.approx(SPHERE_SUV)
    assert row["tlg"] == pytest.approx(SPHERE_SUV * volume, rel=1e-6)
    # Uniform uptake in the target: every voxel at I_high -> the maximum dose; the plan is 2 % low everywhere.
    assert row["dose_mean_gy"] == pytest.approx(86.0) and row["dose_min_gy"] == pytest.approx(86.0)
    assert row["qf"] == pytest.approx(1.0 - PLANNED_FACTOR, abs=1e-6)
    assert row["q95"] == pytest.approx(1.0) and row["q105"] == pytest.approx(0.0)
    # Hypoxic core at 1.5 x muscle (threshold T/M > 1.2): HV is the core, HF core / sphere.
    assert row["hv_ml"] == pytest.approx(study["n_core"] * VOXEL_ML, rel=1e-9)
    assert row["hf"] == pytest.approx(study["n_core"] / study["n_sphere"], rel=1e-9)
    assert row["tmr_max"] == pytest.approx(HYPOXIC_RATIO, rel=1e-6)
    assert row["meta_site"] == "phantom sphere"
    # Digital patients: scored against their truth, GTV volumes per method in the summary.
    p1 = _summary(cohort["single"].out_dir)["P1"]
    assert p1["data_kind"] == "digital head-and-neck patient" and p1["dice_gradient"] > 0.8
    assert p1["gtv_ml_gradient"] == pytest.approx(p1["target_volume_ml"])
    assert p1["hv_ml"] is not None and 0.0 <= p1["hf"] <= 1.0
    record = json.loads((cohort["single"].out_dir / "rows/P1" / RECORD_NAME).read_text())
    assert record["compare"]["matrix"]["names"][-1] == "reference"
    log = (cohort["single"].out_dir / "rows/P1/log.txt").read_text()
    steps = patient_build_steps(type("Config", (), {"with_timepoints": False, "with_mr": False})())
    assert f"{steps}/{steps} stages (100%)" in log  # the phantom's progress, one step per build stage


@pytest.mark.slow
def test_second_run_skips_finished_rows(cohort):
    again = cohort["again"]
    assert again.counts == {"rows": 4, "ok": 3, "reused": 3, "failed": 1, "invalid": 0}
    assert [r.reused for r in again.rows] == [True, True, True, False]
    for row_id, mtime in cohort["markers"].items():  # finished rows were not touched
        assert (again.out_dir / "rows" / row_id / MARKER_NAME).stat().st_mtime_ns == mtime
    a, b = _summary(cohort["dask"].out_dir), _summary(again.out_dir)
    assert a["P1"]["gtv_ml_gradient"] == b["P1"]["gtv_ml_gradient"] and b["P1"]["reused"] == "yes"


@pytest.mark.slow
def test_corrupt_row_fails_alone_with_its_error(cohort):
    for run in (cohort["single"], cohort["dask"], cohort["again"]):
        row = _summary(run.out_dir)["BAD"]
        assert row["status"] == "failed"
        assert "step load" in row["error"] and "column pet" in row["error"] and "corrupt_pet.nrrd" in row["error"]
        error = json.loads((run.out_dir / "rows/BAD/error.json").read_text())
        assert error["id"] == "BAD" and error["line"] == 5 and "corrupt_pet.nrrd" in error["error"]
        assert not (run.out_dir / "rows/BAD" / MARKER_NAME).exists()
    with (cohort["single"].out_dir / "cohort_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert list(rows[0])[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)
    assert (cohort["single"].out_dir / "report.html").is_file()


@pytest.mark.slow
def test_a_changed_parameter_reruns_only_that_row(cohort, tmp_path):
    manifest = _manifest(cohort["base"], cohort["study"], p3_dose_max=84.0)
    try:
        plan = plan_batch(read_manifest(manifest), cohort["dask"].out_dir)
        assert [s.id for s in plan.to_run] == ["P3", "BAD"] and [s.id for s in plan.reused] == ["P1", "P2"]
    finally:
        _manifest(cohort["base"], cohort["study"])


# ------------------------------------------------------------------------------------------------------------
# Manifest, hashes, CLI (fast)
# ------------------------------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_refuses_unknown_columns_and_duplicate_ids(tmp_path):
    with pytest.raises(InputError, match="unknown manifest column.*'fwhm'.*meta_"):
        read_manifest(_write(tmp_path / "m.csv", "id,phantom_seed,fwhm\nA,1,7\n"))
    with pytest.raises(InputError, match="line 3: id 'A' repeats line 2"):
        read_manifest(_write(tmp_path / "m.csv", "id,phantom_seed\nA,1\nA,2\n"))
    with pytest.raises(InputError, match="no 'id' column"):
        read_manifest(_write(tmp_path / "m.csv", "name,phantom_seed\nA,1\n"))
    with pytest.raises(InputError, match="no such manifest"):
        read_manifest(tmp_path / "missing.csv")


def test_manifest_rows_are_checked_one_by_one(tmp_path):
    (tmp_path / "pet.nrrd").write_bytes(b"x")
    manifest = read_manifest(_write(tmp_path / "m.csv", "\n".join([
        "id,pet,phantom_seed,seed_x,seed_y,seed_z,methods,steps,fwhm_mm,meta_arm",
        "ok1,pet.nrrd,,1,2,3,all,report segment,7.5,A",
        "ok2,,3,,,,gradient,,,B",
        "#comment,,,,,,,,,",
        "bad-fwhm,pet.nrrd,,1,2,3,gradient,segment,abc,",
        "bad-seed,pet.nrrd,,1,2,,gradient,segment,,",
        "bad-method,pet.nrrd,,1,2,3,nosuch,segment,,",
        "bad-step,pet.nrrd,,1,2,3,gradient,segment fly,,",
        "no-pet,,,1,2,3,gradient,segment,,",
        "missing,nothere.nrrd,,1,2,3,gradient,segment,,",
        "hypoxia,pet.nrrd,,1,2,3,gradient,segment hypoxia,,",
    ]) + "\n"))
    assert [s.id for s in manifest.rows] == ["ok1", "ok2"]
    ok1, ok2 = manifest.rows
    assert ok1.pet == str((tmp_path / "pet.nrrd").resolve()) and ok1.seed_lps == (1.0, 2.0, 3.0)
    assert ok1.steps == ("segment", "report") and ok1.fwhm_mm == 7.5 and len(ok1.methods) > 10
    assert ok1.meta == {"meta_arm": "A"} and manifest.meta_columns == ["meta_arm"]
    assert ok2.phantom_seed == 3 and ok2.steps == ("segment", "quantify", "prescribe", "report")
    errors = {r.id: r.error for r in manifest.invalid}
    assert manifest.order == ["ok1", "ok2", "bad-fwhm", "bad-seed", "bad-method", "bad-step", "no-pet", "missing",
                              "hypoxia"]
    assert "line 5 (bad-fwhm), column fwhm_mm: 'abc' is not a number" in errors["bad-fwhm"]
    assert "seed_x/seed_y/seed_z" in errors["bad-seed"]
    assert "column methods: unknown segmentation method 'nosuch'" in errors["bad-method"]
    assert "unknown step(s) fly" in errors["bad-step"]
    assert "column pet" in errors["no-pet"]
    assert "nothere.nrrd: no such file" in errors["missing"]
    assert "column fmiso" in errors["hypoxia"]


def test_row_hash_follows_parameters_and_input_files(tmp_path):
    pet = tmp_path / "pet.nrrd"
    pet.write_bytes(b"first")
    text = "id,pet,seed_x,seed_y,seed_z,dose_max,meta_note\nA,pet.nrrd,0,0,0,{dose},{note}\n"
    first = row_hash(read_manifest(_write(tmp_path / "m.csv", text.format(dose=86, note="x"))).rows[0])
    assert row_hash(read_manifest(_write(tmp_path / "m.csv", text.format(dose=86, note="y"))).rows[0]) == first
    assert row_hash(read_manifest(_write(tmp_path / "m.csv", text.format(dose=84, note="x"))).rows[0]) != first
    pet.write_bytes(b"second, longer")
    assert row_hash(read_manifest(_write(tmp_path / "m.csv", text.format(dose=86, note="x"))).rows[0]) != first


def test_output_folder_must_be_a_batch_output(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep")
    manifest = _write(tmp_path / "m.csv", "id,phantom_seed\nA,1\n")
    with pytest.raises(InputError, match="not a previous 'petdp batch' output"):
        run_batch(manifest, tmp_path / "other", workers=0, progress="off")
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep"
    with pytest.raises(InputError, match="either --workers"):
        run_batch(manifest, tmp_path / "new", workers=2, scheduler="tcp://127.0.0.1:1", progress="off")


def test_cli_check_lists_the_plan_and_help_lists_the_columns(tmp_path, capsys):
    from PETDosePaintingLib.cli.main import main

    manifest = _write(tmp_path / "m.csv", "id,phantom_seed,phantom_quick,steps\nA,1,yes,segment\nB,x,,\n")
    assert main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--check"]) == 1
    out = capsys.readouterr().out
    assert "1 to run" in out and "run    A" in out and "INVALID B" in out and "phantom_seed" in out
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    help_text = capsys.readouterr().out
    for column in MANIFEST_COLUMNS:
        assert f"  {column} " in help_text


# ------------------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------------------

def test_plain_progress_lines_and_callbacks():
    stream = io.StringIO()
    with Progress(total=4, desc="rows", unit="rows", mode="plain", stream=stream, min_interval_s=0.0) as bar:
        bar.update(1, label="A ok", done=1, failed=0, remaining=3)
        bar.update(0, label="B running")  # no count change: no line
        log = bar.log_callback()
        log("stage two")
        bar.callback()(4, 4, "last")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[rows] 1/4 rows (25%) done 1, failed 0, remaining 3 | A ok")
    assert lines[1].startswith("[rows] 2/4 rows (50%)") and "stage two" in lines[1]
    assert lines[-1].startswith("[rows] 4/4 rows (100%)") and "last" in lines[-1]
    assert len(lines) == 3
    silent = io.StringIO()
    with Progress(total=2, mode="off", stream=silent) as bar:
        bar.update(2)
        bar.write("hidden")
    assert silent.getvalue() == ""


def test_progress_modes(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.delenv("PETDP_PROGRESS", raising=False)
    assert resolve_mode("auto", io.StringIO()) == "plain"  # not a terminal: plain lines
    assert resolve_mode("tqdm", io.StringIO()) == "tqdm"
    monkeypatch.setenv("PETDP_PROGRESS", "off")
    assert resolve_mode("auto", io.StringIO()) == "off"
    stream = io.StringIO()
    with Progress(total=3, desc="t", mode="tqdm", stream=stream) as bar:
        bar.update(3, label="done")
    assert "3/3" in stream.getvalue()


def test_progress_follows_a_sitk_registration_and_a_filter():
    grid = make_grid((24, 24, 24), (2.0, 2.0, 2.0))
    z, y, x = np.meshgrid(*(np.arange(24) * 2.0,) * 3, indexing="ij")
    blob = np.exp(-((x - 24) ** 2 + (y - 24) ** 2 + (z - 24) ** 2) / 60.0).astype(np.float32)
    fixed = image_from_array(blob, grid)
    moving = image_from_array(np.roll(blob, 2, axis=2), grid)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    # No gradient tolerance: the fine level iterates too (from the coarse level's exact answer).
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-6, 25, gradientMagnitudeTolerance=1e-30)
    method.SetInitialTransform(sitk.TranslationTransform(3))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    stream = io.StringIO()
    with Progress(desc="registration", mode="plain", stream=stream, min_interval_s=0.0) as bar:
        observe_sitk(method, bar, total_iterations=50)  # 25 iterations at most on each of 2 levels
        transform = method.Execute(fixed, moving)
    lines = stream.getvalue().splitlines()
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert bar.total == 50 and 26 <= bar.n <= 50 and counts == sorted(counts)  # counted on across the levels
    assert "level 0, metric" in lines[0] and "level 1, metric" in lines[-1]
    assert transform.GetParameters()[0] == pytest.approx(4.0, abs=0.3)  # the 2-voxel shift, in mm
    smoother = sitk.SmoothingRecursiveGaussianImageFilter()
    with Progress(mode="plain", stream=io.StringIO(), min_interval_s=0.0) as bar:
        observe_sitk(smoother, bar)
        smoother.Execute(fixed)
    assert bar.total == 100 and bar.n == 100


def test_invalid_rows_are_reported_and_do_not_run(tmp_path):
    manifest = _write(tmp_path / "m.csv", "id,pet,seed_x,seed_y,seed_z\nX,nothere.nrrd,0,0,0\n")
    result = run_batch(manifest, tmp_path / "out", workers=0, progress="off")
    assert result.counts["invalid"] == 1 and not result.ok
    assert not (tmp_path / "out" / "rows" / "X").exists()
    summary = json.loads((tmp_path / "out" / "cohort_summary.json").read_text())
    assert summary["summary"][0]["status"] == "invalid" and "nothere.nrrd" in summary["summary"][0]["error"]
    assert os.path.exists(tmp_path / "out" / "manifest_used.csv")
