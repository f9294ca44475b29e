"""The petdp command line: sub-commands, exit codes, and the demo."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys

import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import COMMAND_MODULES, main


def test_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "PETDosePaintingLib.cli.main", "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0
    for module in COMMAND_MODULES:
        name = module.replace("_", "-")  # e.g. evaluate_plan.py registers "evaluate-plan"
        assert f"    {name} " in proc.stdout or f"    {name}\n" in proc.stdout


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--no-such-option"])
    assert exc.value.code == 2
    assert main([]) == 2


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo run shared by the tests below (it takes about half a minute): its folder and its log."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("quick_demo") / "demo"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = main(["demo", "--quick", "--out", str(out)])
    assert code == 0
    return out, log.getvalue()


def test_quick_demo_writes_scene_summary_and_accuracy(quick_demo):
    out, printed = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "demo.mrb").stat().st_size > 1000
    for rel in summary["files"].values():
        assert (out / rel).is_file()
    pet = sitk.ReadImage(str(out / summary["files"]["pet"]))
    assert pet.GetMetaData("PETDP_Units") == "SUVbw"
    # The PET imported from the patient's own DICOM is the simulated SUV (to 1e-4 relative).
    assert summary["dicom_import"]["max_relative_difference_vs_simulated"] < 1e-4
    # The flagship's GTV against the known truth volume of the simulated tumour.
    gtv = summary["gtv"]
    assert gtv["method"] == "gradient"
    assert abs(gtv["volume_ml"] / gtv["truth_volume_ml"] - 1.0) < 0.05
    assert gtv["dice_vs_truth_mask"] > 0.85
    with (out / "accuracy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    from PETDosePaintingLib.segmentation.registry import method_names

    assert [r["method"] for r in rows] == method_names()  # every method ran (answered or said why not)
    assert all(r["status"] == "ok" or r["note"] for r in rows)
    assert "demo.mrb" in printed


def test_demo_reruns_into_its_own_output(quick_demo, tmp_path):
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(quick_demo[0], out)
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["gtv"]["method"] == "gradient"


def test_demo_scene_holds_images_truth_and_method_masks(quick_demo):
    from PETDosePaintingLib.mrml.scene import load_scene_mrb, node_by_name, nodes_by_class
    from PETDosePaintingLib.mrml.segmentations import segment_names

    out = quick_demo[0]
    scene = load_scene_mrb(out / "demo.mrb")
    volumes = {n.GetName() for n in nodes_by_class(scene, "vtkMRMLScalarVolumeNode")}
    for tp in ("baseline", "fx7", "fx17"):
        assert {f"{tp}_CT", f"{tp}_PET_FDG_SUVbw", f"{tp}_PET_FMISO_SUVbw"} <= volumes
    assert {"MR_T1w", "MR_T2w"} <= volumes
    truth = segment_names(node_by_name(scene, "baseline_Truth", "vtkMRMLSegmentationNode"))
    assert {"GTV_truth", "Hypoxic_truth", "Parotid_L", "SpinalCord"} <= set(truth)
    methods = segment_names(node_by_name(scene, "baseline_GTV_methods", "vtkMRMLSegmentationNode"))
    assert "GTV_gradient" in methods and "GTV_truth" in methods and len(methods) >= 10
    # Dose painting: prescriptions tagged as dose for SlicerRT, DICOM-RT next to the CT series, nested levels.
    for name in ("RX_FDG_DPBN_Gy", "RX_FDG_BOOST_Gy", "RX_FDG_LEVELS_Gy", "RX_FMISO_BOOST_Gy"):
        node = node_by_name(scene, name, "vtkMRMLScalarVolumeNode")
        assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"
    summary = json.loads((out / "summary.json").read_text())
    dp = summary["dose_painting"]
    assert dp["dpbn"]["dose_max_gy"] == pytest.approx(86.0) and dp["dpbn"]["dose_min_gy"] >= 70.0
    levels = dp["levels"]["levels"]
    assert len(levels) == 5 and all(a["roi_volume_ml"] >= b["roi_volume_ml"] for a, b in itertools.pairwise(levels))
    assert sum(lv["shell_volume_ml"] for lv in levels) == pytest.approx(levels[0]["roi_volume_ml"], rel=1e-6)
    from PETDosePaintingLib.imaging.dicom_series import read_dicom_series
    from PETDosePaintingLib.imaging.rtdose import read_rtdose
    from PETDosePaintingLib.imaging.rtstruct import read_rtstruct

    rt = out / "patient" / "baseline" / "dicom" / "RT"
    dose = read_rtdose(rt / "RD_FDG_DPBN.dcm")
    assert float(sitk.GetArrayFromImage(dose).max()) == pytest.approx(86.0, abs=0.01)
    ct = read_dicom_series(out / "patient" / "baseline" / "dicom" / "CT").image
    rois = read_rtstruct(rt / "RS_DOSE_PAINTING.dcm", ct)
    assert {lv["name"] for lv in levels} <= set(rois) and "BTV_HYPOXIC" in rois


def test_demo_compares_modalities_tracks_timepoints_and_accumulates(quick_demo):
    """Issue 6 in the demo: GTV_CT / GTV_MRI / GTV_PET against the truth and each other, the three sessions,
    and the phase prescriptions summed on the baseline; checked against the digital patient's construction."""
    out = quick_demo[0]
    summary = json.loads((out / "summary.json").read_text())["comparison"]
    modalities = summary["modalities"]
    # The MR was placed 3 deg / 5 mm off the CT; the rigid registration recovers it near the tumour.
    assert modalities["mr_registration"]["error_vs_truth_mm"]["max"] < 1.0
    vs_truth = modalities["vs_truth"]
    assert set(vs_truth) == {"GTV_CT", "GTV_MRI", "GTV_PET"}
    assert vs_truth["GTV_PET"]["dice"] > 0.85 and min(v["dice"] for v in vs_truth.values()) > 0.7
    with (out / "comparison" / "gtv_volumes.csv").open() as handle:
        table = {r["structure"]: r for r in csv.DictReader(handle)}
    assert {"GTV_CT", "GTV_MRI", "GTV_PET", "GTV_truth"} <= set(table)
    inter = next(v for k, v in table.items() if k.startswith("intersection("))
    union = next(v for k, v in table.items() if k.startswith("union("))
    volumes = [float(table[n]["volume_ml"]) for n in ("GTV_CT", "GTV_MRI", "GTV_PET")]
    assert float(inter["volume_ml"]) <= min(volumes) + 0.5 and float(union["volume_ml"]) >= max(volumes) - 0.5
    # Three sessions; each step's registration chain lands within a PET voxel (4 mm here) of the simulated field.
    course = summary["timepoints"]["course"]
    assert [r["fraction"] for r in course] == [0, 7, 17]
    for step in summary["timepoints"]["registrations"].values():
        assert step["chain_from_baseline_error_mm"]["mean"] < 4.0 and step["jacobian"]["verdict"] != "fail"
    for name, change in summary["timepoints"]["changes"].items():
        current = next(r for r in course if r["timepoint"] == name)["gtv_pet_ml"]
        assert change["persistent_ml"] + change["newborn_ml"] + change["tolerated_current_ml"] == pytest.approx(
            current, abs=1e-6)
    # Accumulated: 7 + 10 + 18 fractions of maps within 70-86 Gy; EQD2 (a/b 10) exceeds physical at > 2 Gy/fx.
    dose = summary["accumulation"]
    assert [p["fractions"] for p in dose["phases"]] == [7, 10, 18]
    goal = dose["vs_baseline_goal"]
    assert goal["mean_in_truth_gtv_gy"] == pytest.approx(goal["goal_mean_in_truth_gtv_gy"], rel=0.08)
    assert dose["physical"]["max_gy"] <= 86.0 + 1e-3
    assert dose["eqd2"]["mean_gy_in_coverage"] > dose["physical"]["mean_gy_in_coverage"]
    for name in ("dice_matrix.png", "gtv_course.png", "overlap_matrix.csv", "gtv_course.csv",
                 "accumulated_physical_Gy.nrrd", "remaining_fx18-35_Gy.nrrd", "T_baseline_to_fx7_bspline.h5"):
        assert (out / "comparison" / name).is_file()
    from PETDosePaintingLib.mrml.scene import load_scene_mrb, node_by_name, nodes_by_class
    from PETDosePaintingLib.mrml.segmentations import segment_names

    scene = load_scene_mrb(out / "demo.mrb")
    tables = {n.GetName() for n in nodes_by_class(scene, "vtkMRMLTableNode")}
    assert {"GTV volumes (Table 2)", "GTV overlap (Dice)", "GTV course", "Dose accumulation"} <= tables
    transforms = {n.GetName() for n in nodes_by_class(scene, "vtkMRMLTransformNode")}
    assert {"T_CT_to_MR_rigid", "T_baseline_to_fx7_bspline", "T_fx7_to_fx17_bspline"} <= transforms
    segments = segment_names(node_by_name(scene, "baseline_GTV_modalities", "vtkMRMLSegmentationNode"))
    assert {"GTV_CT", "GTV_MRI", "GTV_PET", "GTV_truth"} <= set(segments)
    assert {"persistent", "newborn", "resolved"} <= set(
        segment_names(node_by_name(scene, "fx17_GTV_changes", "vtkMRMLSegmentationNode")))
    node = node_by_name(scene, "DOSE_accumulated_physical_Gy", "vtkMRMLScalarVolumeNode")
    assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"


def test_demo_refuses_an_unrelated_non_empty_folder(tmp_path, capsys):
    precious = tmp_path / "patient_data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"
