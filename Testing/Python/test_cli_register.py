"""``petdp register`` and ``petdp accumulate``: outputs, conventions, and refusals with exit code 2.

Small analytic CT-like volumes moved by known translations keep these tests fast; the registration accuracy
on the digital patient is tested in ``test_registration.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import COMMAND_MODULES, main
from PETDosePaintingLib.comparison.registration import read_transform, transform_points
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid

SHIFT = (3.0, -2.0, 2.5)  # fixed -> moving, LPS mm


def _ct(shift=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An analytic CT-like phantom with soft edges evaluated at ``y - shift`` (anatomy moved by ``shift``)."""
    size, spacing = (40, 36, 20), (2.0, 2.0, 2.5)
    grid = make_grid(size, spacing, origin=[-(n - 1) * s / 2 for n, s in zip(size, spacing, strict=True)])
    x, y, z = (c - t for c, t in zip(physical_grid(grid), shift, strict=True))

    def inside(q, a):
        return 1.0 / (1.0 + np.exp(np.clip((np.sqrt(q) - 1.0) * a / 0.5, -50, 50)))

    hu = -1000.0 + 1040.0 * inside((x / 34) ** 2 + (y / 28) ** 2, 28)
    hu += 660.0 * inside((x / 6) ** 2 + ((y - 12) / 6) ** 2, 6)
    hu -= 1040.0 * inside(((x + 3 + 0.25 * z) / 4) ** 2 + ((y + 15) / 4) ** 2, 4)
    hu += 800.0 * inside(((x - 16) / 5) ** 2 + ((y - 4) / 5) ** 2 + ((z - 10) / 6) ** 2, 5)
    hu += 30.0 * inside(((x + 12) / 7) ** 2 + ((y + 4) / 6) ** 2 + ((z + 6) / 9) ** 2, 6)
    return image_from_array(hu.astype(np.float32), grid, units="HU")


@pytest.fixture
def files(tmp_path):
    paths = {"fixed": tmp_path / "ct0.nrrd", "moving": tmp_path / "ct7.nrrd"}
    sitk.WriteImage(_ct(), str(paths["fixed"]))
    sitk.WriteImage(_ct(SHIFT), str(paths["moving"]))
    return {k: str(v) for k, v in paths.items()}


def test_commands_are_registered():
    assert "register" in COMMAND_MODULES and "accumulate" in COMMAND_MODULES


def test_register_rigid_writes_the_fixed_to_moving_transform(files, tmp_path, capsys):
    out, resampled, summary = tmp_path / "T.h5", tmp_path / "ct7_on_ct0.nrrd", tmp_path / "reg.json"
    code = main(["register", "--fixed", files["fixed"], "--moving", files["moving"], "--mode", "rigid",
                 "--out", str(out), "--resampled", str(resampled), "--json", str(summary), "--init", "none",
                 "--iterations", "100", "--sampling", "0.3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "metric mattes" in printed and "rotation" in printed
    transform = read_transform(out)
    pts = np.random.default_rng(0).uniform(-20, 20, (10, 3))
    assert np.abs(transform_points(transform, pts) - (pts + SHIFT)).max() < 0.3
    # The resampled moving image matches the fixed one (it was pulled onto the fixed grid).
    fixed = sitk.GetArrayFromImage(sitk.ReadImage(files["fixed"]))
    pulled = sitk.ReadImage(str(resampled))
    assert pulled.GetSize() == sitk.ReadImage(files["fixed"]).GetSize()
    body = fixed > -500
    assert np.median(np.abs(sitk.GetArrayFromImage(pulled)[body] - fixed[body])) < 20.0
    data = json.loads(summary.read_text())
    assert data["mode"] == "rigid" and data["convention"].startswith("fixed -> moving")
    assert data["rigid"]["rotation_deg"] < 0.5 and len(data["iterations"]) == 3


def test_register_bspline_after_rigid_prints_the_jacobian_qa(files, tmp_path, capsys):
    rigid = tmp_path / "rigid.tfm"
    assert main(["register", "--fixed", files["fixed"], "--moving", files["moving"], "--mode", "rigid",
                 "--out", str(rigid), "--init", "none", "--iterations", "60", "--sampling", "0.3"]) == 0
    out = tmp_path / "T_bspline.h5"
    code = main(["register", "--fixed", files["fixed"], "--moving", files["moving"], "--mode", "bspline",
                 "--initial", str(rigid), "--out", str(out), "--grid-spacing-mm", "40", "--iterations", "10",
                 "--max-samples", "4000", "--seed", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Jacobian QA" in printed and "PASS" in printed
    transform = read_transform(out)
    assert transform.GetName() == "CompositeTransform"
    pts = np.random.default_rng(1).uniform(-15, 15, (10, 3))
    assert np.abs(transform_points(transform, pts) - (pts + SHIFT)).max() < 1.0


@pytest.mark.parametrize("case", ["missing transform", "not a transform", "bad seed", "mask not binary",
                                  "overwrite input", "bad output"])
def test_register_refuses_bad_input_with_exit_code_2(files, tmp_path, capsys, case):
    junk = tmp_path / "junk.tfm"
    junk.write_text("not a transform\n")
    labels = tmp_path / "labels.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8) + 2, str(labels))
    base = ["register", "--fixed", files["fixed"], "--moving", files["moving"], "--mode", "rigid"]
    args = {
        "missing transform": [*base, "--out", str(tmp_path / "T.h5"), "--initial", str(tmp_path / "none.h5")],
        "not a transform": [*base, "--out", str(tmp_path / "T.h5"), "--initial", str(junk)],
        "bad seed": [*base, "--out", str(tmp_path / "T.h5"), "--seed", "0"],
        "mask not binary": [*base, "--out", str(tmp_path / "T.h5"), "--mask", str(labels)],
        "overwrite input": [*base, "--out", str(tmp_path / "T.h5"), "--resampled", files["moving"]],
        "bad output": [*base, "--out", str(tmp_path / "T.nrrd")],
    }[case]
    assert main(args) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "T.h5").exists()


@pytest.fixture
def doses(tmp_path):
    """D0 on the baseline grid; D7 on a shifted, coarser phase grid; a translation T07 (baseline -> phase 7)."""
    baseline = _ct()
    phase = make_grid((30, 30, 18), (3.0, 3.0, 3.0), origin=(-40.0, -40.0, -24.0))
    paths = {"ct0": tmp_path / "ct0.nrrd", "d0": tmp_path / "d0.nrrd", "d7": tmp_path / "d7.nrrd",
             "d7_unitless": tmp_path / "d7_unitless.nrrd", "t07": tmp_path / "t07.tfm",
             "far": tmp_path / "far.tfm"}
    sitk.WriteImage(baseline, str(paths["ct0"]))
    sitk.WriteImage(image_from_array(np.full(baseline.GetSize()[::-1], 20.0, np.float32), baseline, units="Gy"),
                    str(paths["d0"]))
    sitk.WriteImage(image_from_array(np.full(phase.GetSize()[::-1], 14.0, np.float32), phase, units="Gy"),
                    str(paths["d7"]))
    sitk.WriteImage(image_from_array(np.full(phase.GetSize()[::-1], 14.0, np.float32), phase),
                    str(paths["d7_unitless"]))
    sitk.WriteTransform(sitk.TranslationTransform(3, (4.0, -2.0, 1.0)), str(paths["t07"]))
    sitk.WriteTransform(sitk.TranslationTransform(3, (900.0, 0.0, 0.0)), str(paths["far"]))
    return {k: str(v) for k, v in paths.items()}


def test_accumulate_sums_physical_and_eqd2(doses, tmp_path, capsys):
    out, coverage, summary = tmp_path / "sum.nrrd", tmp_path / "coverage.nrrd", tmp_path / "sum.json"
    code = main(["accumulate", "--baseline", doses["ct0"], "--dose", doses["d0"], "--dose", doses["d7"],
                 "--transform", doses["t07"], "--out", str(out), "--coverage", str(coverage), "--json", str(summary)])
    assert code == 0
    total = sitk.ReadImage(str(out))
    assert total.GetMetaData("PETDP_Units") == "Gy"
    covered = sitk.GetArrayFromImage(sitk.ReadImage(str(coverage))) > 0
    assert covered.any() and np.allclose(sitk.GetArrayFromImage(total)[covered], 34.0, atol=1e-4)
    data = json.loads(summary.read_text())
    assert data["quantity"] == "physical" and len(data["phases"]) == 2
    assert "accumulated physical" in capsys.readouterr().out
    # EQD2 (alpha/beta 10): 20 Gy in 10 x 2 Gy stays 20; 14 Gy in 4 x 3.5 Gy gives 14 (3.5 + 10) / 12 = 15.75.
    eqd2 = tmp_path / "eqd2.nrrd"
    assert main(["accumulate", "--baseline", doses["ct0"], "--dose", doses["d0"], "--dose", doses["d7"],
                 "--transform", doses["t07"], "--out", str(eqd2), "--fractions", "10", "4", "--alpha-beta", "10"]) == 0
    assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(eqd2)))[covered], 35.75, atol=1e-4)
    # A chain of several transform files per dose is accepted (here T07 twice: a 2 x T07 shift, still constant).
    chain = tmp_path / "chain.nrrd"
    assert main(["accumulate", "--baseline", doses["ct0"], "--dose", doses["d0"], "--dose", doses["d7"],
                 "--transform", doses["t07"], doses["t07"], "--out", str(chain)]) == 0


def test_accumulate_reads_dicom_rt_dose_files(tmp_path):
    """Two RT Dose files written next to a DICOM planning CT: a linear field D(x) = 30 + 0.2 x (x in mm, LPS) at
    baseline, and the same field as phase 2 seen through T: x -> x + 4 mm. Interpolating a linear field is exact,
    so the sum is D(x) + D(x + 4) = 60.8 + 0.4 x Gy wherever both doses cover the voxel."""
    from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
    from PETDosePaintingLib.imaging.dicom_series import read_dicom_series
    from PETDosePaintingLib.imaging.rtdose import write_rtdose

    ct = image_from_array(np.full((12, 30, 30), 40, np.int16), spacing=(2.0, 2.0, 3.0), origin=(-29.0, -29.0, 0.0),
                          units="HU")
    write_ct_series(ct, tmp_path / "ct", DicomIdentity.synthetic(5, patient_name="Accumulate^Test"))
    series = read_dicom_series(tmp_path / "ct")
    x, _, _ = physical_grid(series.image)
    dose = image_from_array((30.0 + 0.2 * x).astype(np.float64), series.image, units="Gy")
    d0 = write_rtdose(dose, tmp_path / "d0.dcm", series, write_plan=False).path
    d1 = write_rtdose(dose, tmp_path / "d1.dcm", series, write_plan=False).path
    shift = tmp_path / "t.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(3, (4.0, 0.0, 0.0)), str(shift))
    out, coverage = tmp_path / "sum.nrrd", tmp_path / "coverage.nrrd"
    assert main(["accumulate", "--baseline", str(tmp_path / "ct"), "--dose", str(d0), "--dose", str(d1),
                 "--transform", str(shift), "--out", str(out), "--coverage", str(coverage)]) == 0
    total = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    covered = sitk.GetArrayFromImage(sitk.ReadImage(str(coverage))) > 0
    assert 0.8 * covered.size < covered.sum() < covered.size  # the last 4 mm in +x are outside the phase-2 dose
    # RT Dose stores scaled integers: allow the quantisation step of two doses (< 1e-3 Gy here).
    assert np.allclose(total[covered], (60.8 + 0.4 * x)[covered], atol=2e-3)


@pytest.mark.parametrize("case", ["no Gy units", "count mismatch", "no overlap", "missing transform",
                                  "not a transform", "alpha-beta without fractions", "fractions count"])
def test_accumulate_refuses_bad_input_with_exit_code_2(doses, tmp_path, capsys, case):
    junk = tmp_path / "junk.h5"
    junk.write_text("nonsense")
    out = tmp_path / "sum.nrrd"
    base = ["accumulate", "--baseline", doses["ct0"], "--dose", doses["d0"], "--out", str(out)]
    args = {
        "no Gy units": [*base, "--dose", doses["d7_unitless"], "--transform", doses["t07"]],
        "count mismatch": [*base, "--dose", doses["d7"]],
        "no overlap": [*base, "--dose", doses["d7"], "--transform", doses["far"]],
        "missing transform": [*base, "--dose", doses["d7"], "--transform", str(tmp_path / "missing.h5")],
        "not a transform": [*base, "--dose", doses["d7"], "--transform", str(junk)],
        "alpha-beta without fractions": [*base, "--dose", doses["d7"], "--transform", doses["t07"],
                                         "--alpha-beta", "10"],
        "fractions count": [*base, "--dose", doses["d7"], "--transform", doses["t07"], "--fractions", "10",
                            "--alpha-beta", "10"],
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "petdp accumulate: error:" in err
    assert not out.exists()
    if case == "no Gy units":
        assert "Gy" in err
    if case == "count mismatch":
        assert "--transform" in err
