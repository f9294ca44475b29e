"""The batch example script (Testing/Python/batch_gradient_cohort.py) under plain Python with slicer-core.

It runs in a subprocess, as a user runs it, on the quick digital patient written as a cohort of studies (NRRD
PET with an LPS seed, DICOM PET with a RAS seed, and a broken study). The GTV volume it reports must be the
library's own (``segmentation.registry.run_method("gradient", ...)`` on the same PET, seed and FWHM).
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytest.importorskip("slicer")

from PETDosePaintingLib.imaging.io import write_json
from PETDosePaintingLib.phantom.patient import PatientConfig, build_patient
from PETDosePaintingLib.phantom.patient_io import write_patient
from PETDosePaintingLib.pipeline.steps import load_pet
from PETDosePaintingLib.segmentation.registry import run_method

SCRIPT = REPO_ROOT / "Testing" / "Python" / "batch_gradient_cohort.py"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, check=False)


@pytest.mark.slow  # about 6 s: the digital patient, a subprocess with slicer-core, three studies
def test_batch_script_gives_the_library_gtv_volume_and_slicer_exit_codes(tmp_path):
    config = PatientConfig(quick=True, with_timepoints=False, with_mr=False)
    patient = build_patient(config)
    files = write_patient(patient, tmp_path / "patient")
    seed = list(patient.timepoints[0].truth.seed_lps)
    fwhm = config.scanner_config().effective_fwhm_mm
    studies = tmp_path / "studies"
    (studies / "P1_nrrd").mkdir(parents=True)
    shutil.copy(files.images["baseline/pet_fdg_suv"], studies / "P1_nrrd" / "pet.nrrd")
    write_json({"seed_lps_mm": seed, "fwhm_mm": fwhm}, studies / "P1_nrrd" / "seed.json")
    shutil.copytree(files.dicom["baseline/PT_FDG"], studies / "P2_dicom" / "pet")
    write_json({"seed_ras_mm": [-seed[0], -seed[1], seed[2]]}, studies / "P2_dicom" / "seed.json")
    (studies / "P3_broken").mkdir()
    write_json({"seed_lps_mm": seed}, studies / "P3_broken" / "seed.json")

    out = tmp_path / "out"
    proc = _run(studies, "--out", out, "--fwhm-mm", fwhm, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one study failed, the others ran
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = {row["study"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["P1_nrrd", "P2_dicom", "P3_broken"]
    assert rows["P3_broken"]["status"] == "failed" and "no PET found" in rows["P3_broken"]["error"]
    for study, pet_path in (("P1_nrrd", studies / "P1_nrrd" / "pet.nrrd"), ("P2_dicom", studies / "P2_dicom" / "pet")):
        row = rows[study]
        assert row["status"] == "ok" and row["runtime"] == "Python + slicer-core"
        expected = run_method("gradient", load_pet(pet_path, "pet"), seed, fwhm_mm=fwhm).volume_ml
        assert float(row["volume_ml"]) == pytest.approx(expected, rel=1e-5)  # CSV keeps 6 significant digits
        assert float(row["fwhm_mm"]) == pytest.approx(fwhm)
        assert (out / study / "gtv.nrrd").is_file() and (out / study / f"{study}.mrb").is_file()

    # The other exit codes, in this process (the script is also an importable module): only good studies 0,
    # unusable arguments 2, an output folder that is not this script's 2.
    spec = importlib.util.spec_from_file_location("batch_gradient_cohort", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shutil.rmtree(studies / "P3_broken")
    assert script.main(["--", str(studies), "--out", str(out), "--no-scene", "--fwhm-mm", str(fwhm)]) == 0
    assert script.main([str(studies)]) == 2
    assert script.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert script.main([str(studies), "--out", str(tmp_path / "patient")]) == 2
    doc = (REPO_ROOT / "Docs" / "PETDosePainting.md").read_text()
    assert all(f"`{column}`" in doc for column in script.SUMMARY_COLUMNS)
