"""The petdp command line: sub-commands, exit codes, and the demo."""

from __future__ import annotations

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
    for name in COMMAND_MODULES:
        assert f"    {name} " in proc.stdout or f"    {name}\n" in proc.stdout


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--no-such-option"])
    assert exc.value.code == 2
    assert main([]) == 2


def test_quick_demo_writes_scene_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "demo.mrb").stat().st_size > 1000
    for rel in summary["files"].values():
        assert (out / rel).is_file()
    pet = sitk.ReadImage(str(out / summary["files"]["pet"]))
    assert pet.GetMetaData("PETDP_Units") == "SUVbw"
    assert "demo.mrb" in capsys.readouterr().out
    # A second run into its own previous output is allowed.
    assert main(["demo", "--quick", "--out", str(out)]) == 0


def test_demo_refuses_an_unrelated_non_empty_folder(tmp_path, capsys):
    precious = tmp_path / "patient_data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"
