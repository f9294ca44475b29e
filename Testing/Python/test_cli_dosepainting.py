"""``petdp prescribe``, ``petdp hypoxia``, ``petdp evaluate-plan``: end to end on small synthetic images, the
DICOM-RT export round trip, and refusals (exit 2, one line, nothing written)."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import COMMAND_MODULES, main
from PETDosePaintingLib.dosepainting.prescription import set_frame_of_reference
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, physical_grid

SHAPE = (10, 16, 20)  # k, j, i at 2 mm


@pytest.fixture
def files(tmp_path):
    """pet.nrrd: SUV = i (0..19) along x; gtv.nrrd: a block; muscle.nrrd: away from it; overlap.nrrd: a muscle
    ROI reaching into the GTV; empty.nrrd; far.nrrd: a target on a grid 500 mm away."""
    _, _, i = np.indices(SHAPE)
    pet = image_from_array(i.astype(np.float32), spacing=(2.0, 2.0, 2.0), units=Units.SUV_BW)
    gtv = np.zeros(SHAPE, dtype=bool)
    gtv[2:8, 3:13, 2:18] = True
    muscle = np.zeros(SHAPE, dtype=bool)
    muscle[0:2, 0:2, 0:4] = True
    overlap = muscle.copy()
    overlap[2:4, 3:5, 2:4] = True
    far = make_grid((4, 4, 4), (2.0, 2.0, 2.0), origin=(500.0, 0.0, 0.0))
    paths = {name: tmp_path / f"{name}.nrrd" for name in ("pet", "gtv", "muscle", "overlap", "empty", "far")}
    sitk.WriteImage(pet, str(paths["pet"]))
    for name, mask in (("gtv", gtv), ("muscle", muscle), ("overlap", overlap), ("empty", np.zeros(SHAPE, bool))):
        sitk.WriteImage(image_from_array(mask, pet), str(paths[name]))
    sitk.WriteImage(image_from_array(np.ones((4, 4, 4), dtype=bool), far), str(paths["far"]))
    return {"paths": paths, "i": i, "gtv": gtv, "out": tmp_path / "out"}


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _refused(args, capsys, out_dir, *words):
    """The command exits 2 with one error line naming ``words`` and writes nothing into ``out_dir``."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("petdp "), err
    for word in words:
        assert word in err, err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return err


def test_commands_are_registered():
    for name in ("prescribe", "hypoxia", "evaluate_plan"):
        assert name in COMMAND_MODULES
    for command in ("prescribe", "hypoxia", "evaluate-plan"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0


def test_prescribe_dpbn_then_evaluate_the_identical_plan(files, capsys):
    p, out = files["paths"], files["out"]
    rx, js, ev = out / "rx.nrrd", out / "rx.json", out / "ptv_pet.nrrd"
    assert main(["prescribe", "--pet", str(p["pet"]), "--target", str(p["gtv"]), "--mode", "dpbn",
                 "--dose-min", "70", "--dose-max", "86", "--i-low", "4", "--i-high", "12", "--margin-mm", "0",
                 "--out", str(rx), "--json", str(js), "--evaluation-mask", str(ev)]) == 0
    dose = _array(rx)
    i, gtv = files["i"], files["gtv"]
    np.testing.assert_allclose(dose[gtv], np.clip(70 + (i[gtv] - 4) / 8 * 16, 70, 86), atol=1e-5)
    assert np.all(dose[~gtv] == 0)
    data = json.loads(js.read_text())
    assert data["prescription"]["i_low"] == 4 and data["prescription"]["mapping"] == "linear"
    assert data["prescription"]["dose_units"] == "Gy"
    assert sitk.ReadImage(str(rx)).GetMetaData("PETDP_Units") == "Gy"
    capsys.readouterr()

    qvh = out / "qvh.csv"
    assert main(["evaluate-plan", "--prescription", str(rx), "--dose", str(rx), "--target", str(ev),
                 "--qvh", str(qvh), "--json", str(out / "eval.json")]) == 0
    stdout = capsys.readouterr().out
    assert "QF 0.0000" in stdout and "Q95 1.0000" in stdout and "Q105 0.0000" in stdout
    with open(qvh, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["q", "volume_fraction", "volume_ml"]
    table = {round(float(r[0]), 6): float(r[1]) for r in rows[1:]}
    assert table[0.95] == 1.0 and table[1.0] == 1.0 and table[1.05] == 0.0
    report = json.loads((out / "eval.json").read_text())
    assert report["quality"]["qf"] == 0.0 and report["quality"]["q95"] == 1.0

    # Clonogens proportional to the PET: the Niemierko EUD is weighted by SUV_i / sum SUV (SF2 0.5, 2 Gy).
    assert main(["evaluate-plan", "--prescription", str(rx), "--dose", str(rx), "--target", str(ev),
                 "--clonogens-pet", str(p["pet"]), "--json", str(out / "eval_rho.json")]) == 0
    rho_report = json.loads((out / "eval_rho.json").read_text())
    inside = _array(ev).astype(bool)
    w = i[inside] / i[inside].sum()
    eud = 2.0 * np.log(np.sum(w * 0.5 ** (dose[inside].astype(np.float64) / 2.0))) / np.log(0.5)
    assert rho_report["eud_planned_gy"] == pytest.approx(eud, rel=1e-6)
    assert rho_report["tcp_planned"]["tcp"] == rho_report["tcp_prescribed"]["tcp"]


def test_prescribe_levels_writes_nested_rois(files, capsys):
    p, out = files["paths"], files["out"]
    assert main(["prescribe", "--pet", str(p["pet"]), "--target", str(p["gtv"]), "--mode", "levels",
                 "--i-low", "2", "--i-high", "17", "--margin-mm", "0", "--min-island-ml", "0",
                 "--out", str(out / "levels.nrrd"), "--continuous", str(out / "cont.nrrd"),
                 "--roi-dir", str(out / "rois"), "--json", str(out / "levels.json")]) == 0
    names = ["PTV_DP_7000", "PTV_DP_7400", "PTV_DP_7800", "PTV_DP_8200", "PTV_DP_8600"]
    assert sorted(f.stem for f in (out / "rois").iterdir()) == names
    rois = [_array(out / "rois" / f"{n}.nrrd").astype(bool) for n in names]
    for outer, inner in itertools.pairwise(rois):
        assert np.all(inner <= outer)
    assert np.array_equal(rois[0], files["gtv"])
    levels = _array(out / "levels.nrrd")
    assert set(np.unique(levels[files["gtv"]])) <= {70, 74, 78, 82, 86}
    data = json.loads((out / "levels.json").read_text())
    shells = sum(level["shell_volume_ml"] for level in data["levels"]["levels"])
    assert shells == pytest.approx(files["gtv"].sum() * 8e-3)
    assert "PTV_DP_7000" in capsys.readouterr().out


def test_prescribe_boost_and_inverted(files):
    p, out = files["paths"], files["out"]
    assert main(["prescribe", "--pet", str(p["pet"]), "--target", str(p["gtv"]), "--mode", "boost",
                 "--dose-min", "70", "--dose-max", "77", "--min-island-ml", "0", "--out", str(out / "b.nrrd"),
                 "--inverted", str(out / "inv.nrrd")]) == 0
    dose = _array(out / "b.nrrd")
    i, gtv = files["i"], files["gtv"]
    # Boost = GTV voxels with SUV >= 0.5 x 17 (the maximum i in the GTV) = 8.5, i.e. i >= 9.
    assert np.all(dose[gtv & (i >= 9)] == 77) and np.all(dose[gtv & (i < 9)] == 70)
    inv = _array(out / "inv.nrrd")
    np.testing.assert_allclose(inv[gtv], 77 - dose[gtv])
    assert np.all(inv[~gtv] == 0)


def test_hypoxia_end_to_end(files, tmp_path, capsys):
    p, out = files["paths"], files["out"]
    values = np.full(SHAPE, 1.0, dtype=np.float32)
    values[3:6, 5:10, 5:10] = 1.5  # 75 voxels at ratio 1.5 inside the GTV
    fmiso = tmp_path / "fmiso.nrrd"
    sitk.WriteImage(image_from_array(values, spacing=(2.0, 2.0, 2.0), units=Units.SUV_BW), str(fmiso))
    assert main(["hypoxia", "--pet", str(fmiso), "--reference", str(p["muscle"]), "--tracer", "fmiso",
                 "--target", str(p["gtv"]), "--out", str(out / "tmr.nrrd"), "--hypoxic-mask", str(out / "hv.nrrd"),
                 "--json", str(out / "hyp.json")]) == 0
    data = json.loads((out / "hyp.json").read_text())
    assert data["threshold"] == 1.2 and data["comparison"] == ">"
    assert data["hv_ml"] == pytest.approx(75 * 8e-3) and data["hf"] == pytest.approx(75 / files["gtv"].sum())
    assert data["tmr_max"] == 1.5 and data["reference"]["mean"] == 1.0
    assert _array(out / "hv.nrrd").sum() == 75
    assert "HV 0.60 mL" in capsys.readouterr().out
    # A uniform ratio of 1: no hypoxia.
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(image_from_array(np.ones(SHAPE, dtype=np.float32), spacing=(2.0, 2.0, 2.0)), str(flat))
    assert main(["hypoxia", "--pet", str(flat), "--blood-value", "1.0", "--tracer", "fmiso", "--target",
                 str(p["gtv"]), "--out", str(out / "tbr.nrrd"), "--json", str(out / "flat.json")]) == 0
    flat_data = json.loads((out / "flat.json").read_text())
    assert flat_data["hv_ml"] == 0.0 and flat_data["threshold"] == 1.4 and flat_data["reference_kind"] == "blood"


def test_bad_inputs_exit_2_and_write_nothing(files, capsys, tmp_path):
    p, out = files["paths"], files["out"]
    base = ["prescribe", "--pet", str(p["pet"]), "--out", str(out / "rx.nrrd"), "--json", str(out / "rx.json")]
    _refused([*base, "--target", str(p["far"])], capsys, out, "outside the PET")
    _refused([*base, "--target", str(p["empty"])], capsys, out, "empty.nrrd", "empty")
    _refused([*base, "--target", str(p["gtv"]), "--dose-min", "86", "--dose-max", "70"], capsys, out,
             "--dose-min", "above")
    _refused([*base, "--target", str(p["gtv"]), "--rtdose", str(out / "rx.dcm")], capsys, out, "--ct")
    _refused(["hypoxia", "--pet", str(p["pet"]), "--reference", str(p["overlap"]), "--tracer", "fmiso",
              "--target", str(p["gtv"]), "--out", str(out / "tmr.nrrd")], capsys, out,
             "overlap.nrrd", "gtv.nrrd", "overlaps")
    # PET and CT in different recorded frames of reference; then a CT grid without any recorded frame.
    pet = sitk.ReadImage(str(p["pet"]))
    set_frame_of_reference(pet, "1.2.826.0.1.1")
    pet_for = tmp_path / "pet_for.nrrd"
    sitk.WriteImage(pet, str(pet_for))
    ct = image_from_array(np.zeros((20, 32, 40), dtype=np.int16), spacing=(1.0, 1.0, 1.0), origin=(-0.5,) * 3,
                          units=Units.HU)
    set_frame_of_reference(ct, "1.2.826.0.1.2")
    ct_path = tmp_path / "ct.nrrd"
    sitk.WriteImage(ct, str(ct_path))
    _refused(["prescribe", "--pet", str(pet_for), "--target", str(p["gtv"]), "--grid", str(ct_path), "--out",
              str(out / "rx.nrrd")], capsys, out, "frame of reference")
    bare_ct = tmp_path / "ct_bare.nrrd"
    sitk.WriteImage(image_from_array(np.zeros((20, 32, 40), dtype=np.int16), ct, units=Units.HU), str(bare_ct))
    _refused(["prescribe", "--pet", str(pet_for), "--target", str(p["gtv"]), "--grid", str(bare_ct), "--out",
              str(out / "rx.nrrd")], capsys, out, "--assume-same-frame")
    assert main(["prescribe", "--pet", str(pet_for), "--target", str(p["gtv"]), "--grid", str(bare_ct),
                 "--assume-same-frame", "--out", str(out / "rx.nrrd")]) == 0


def test_evaluate_plan_grids_need_a_shared_frame(files, capsys, tmp_path):
    p, out = files["paths"], files["out"]
    rx = tmp_path / "rx.nrrd"
    assert main(["prescribe", "--pet", str(p["pet"]), "--target", str(p["gtv"]), "--margin-mm", "0",
                 "--out", str(rx)]) == 0
    # The same dose on a 1 mm grid (nearest-neighbour upsampling of a piecewise-constant map is not exact, so
    # use a plan that is uniform 78 Gy everywhere: its resampling is exact).
    plan_grid = make_grid((40, 32, 20), (1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5))
    plan = image_from_array(np.full((20, 32, 40), 78.0, dtype=np.float32), plan_grid, units=Units.GY)
    plan_path = tmp_path / "plan.nrrd"
    sitk.WriteImage(plan, str(plan_path))
    capsys.readouterr()
    _refused(["evaluate-plan", "--prescription", str(rx), "--dose", str(plan_path), "--qvh", str(out / "q.csv")],
             capsys, out, "--assume-same-frame")
    assert main(["evaluate-plan", "--prescription", str(rx), "--dose", str(plan_path), "--assume-same-frame",
                 "--qvh", str(out / "q.csv")]) == 0
    stdout = capsys.readouterr().out
    assert "linear interpolation" in stdout
    presc = _array(rx)[files["gtv"]].astype(np.float64)
    qf = np.mean(np.abs(78.0 / presc - 1))
    assert f"QF {qf:.4f}" in stdout


def test_rt_export_round_trip(files, tmp_path, capsys):
    """PET on 4 mm and a DICOM CT on 2 mm in one frame of reference: the prescription on the CT grid goes out as
    RT Dose + RT Structure Set and comes back through petdp evaluate-plan."""
    from PETDosePaintingLib.imaging.rtdose import read_rtdose
    from PETDosePaintingLib.imaging.rtstruct import read_rtstruct

    identity = DicomIdentity.synthetic("cli-dosepainting")
    ct_grid = make_grid((20, 16, 10), (2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    write_ct_series(image_from_array(np.zeros((10, 16, 20), dtype=np.int16), ct_grid, units=Units.HU),
                    tmp_path / "ct", identity)
    pet_grid = make_grid((10, 8, 5), (4.0, 4.0, 4.0), origin=(1.0, 1.0, 1.0))
    x, _, _ = physical_grid(pet_grid)
    pet = image_from_array((x / 2.0).astype(np.float32), pet_grid, units=Units.SUV_BW)
    set_frame_of_reference(pet, identity.frame_of_reference_uid)
    pet_path = tmp_path / "pet4.nrrd"
    sitk.WriteImage(pet, str(pet_path))
    xc, yc, zc = physical_grid(ct_grid)
    gtv = (np.abs(xc - 19) <= 12) & (np.abs(yc - 15) <= 8) & (np.abs(zc - 9) <= 5)
    gtv_path = tmp_path / "gtv_ct.nrrd"
    sitk.WriteImage(image_from_array(gtv, ct_grid), str(gtv_path))
    out = files["out"]
    assert main(["prescribe", "--pet", str(pet_path), "--target", str(gtv_path), "--ct", str(tmp_path / "ct"),
                 "--mode", "levels", "--min-island-ml", "0", "--out", str(out / "rx.nrrd"),
                 "--rtdose", str(out / "rx.dcm"), "--rtstruct", str(out / "levels.dcm"),
                 "--inverted-rtdose", str(out / "inv.dcm")]) == 0
    stdout = capsys.readouterr().out
    assert "PET resampled, linear interpolation" in stdout and "RT Dose" in stdout
    assert (out / "rx_plan.dcm").exists() and (out / "inv_plan.dcm").exists()
    written = read_rtdose(out / "rx.dcm")
    assert written.GetMetaData("0020|0052") == identity.frame_of_reference_uid
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), _array(out / "rx.nrrd"), atol=1e-6)
    from PETDosePaintingLib.imaging.dicom_series import read_dicom_series

    rois = read_rtstruct(out / "levels.dcm", read_dicom_series(tmp_path / "ct"))
    assert "PTV_DP_7000" in rois
    # ROI_1 is the evaluation volume: the GTV grown by the default 2.5 mm grey-level margin, i.e. where the
    # prescription is positive (contoured on the CT slices and rasterised back exactly).
    support = _array(out / "rx.nrrd") > 0
    assert support.sum() > gtv.sum() and np.all(support[gtv])
    assert np.array_equal(sitk.GetArrayFromImage(rois["PTV_DP_7000"]).astype(bool), support)
    inverted = sitk.GetArrayFromImage(read_rtdose(out / "inv.dcm"))
    np.testing.assert_allclose(inverted[gtv], 86.0 - _array(out / "rx.nrrd")[gtv], atol=1e-5)
    # The RT Dose as the "plan": identical to the prescription up to the 32-bit quantisation.
    assert main(["evaluate-plan", "--prescription", str(out / "rx.nrrd"), "--dose", str(out / "rx.dcm"),
                 "--rtstruct", str(out / "levels.dcm"), "--roi", "PTV_DP_7000", "--dvh", str(tmp_path / "dvh.csv"),
                 ]) == 0
    stdout = capsys.readouterr().out
    assert "QF 0.0000" in stdout and "Q95 1.0000" in stdout and "DVH PTV_DP_7000" in stdout
    assert (tmp_path / "dvh.csv").read_text().splitlines()[0] == "structure,dose_gy,volume_fraction,volume_ml"
