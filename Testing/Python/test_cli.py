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


def test_quick_demo_writes_scene_summary_and_accuracy(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
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
    assert "demo.mrb" in capsys.readouterr().out
    # A second run into its own previous output is allowed.
    assert main(["demo", "--quick", "--out", str(out)]) == 0


def test_demo_scene_holds_images_truth_and_method_masks(tmp_path):
    from PETDosePaintingLib.mrml.scene import load_scene_mrb, node_by_name, nodes_by_class
    from PETDosePaintingLib.mrml.segmentations import segment_names

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
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


def test_demo_refuses_an_unrelated_non_empty_folder(tmp_path, capsys):
    precious = tmp_path / "patient_data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"
