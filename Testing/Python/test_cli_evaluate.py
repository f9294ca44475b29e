"""``petdp evaluate``: the table, the CSV contract, the JSON, and refusals with exit code 2."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import COMMAND_MODULES, main
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid

#: The CSV columns other tools rely on (the contract of issue 4), in order.
CONTRACT_COLUMNS = [
    "mask", "truth", "volume_ml", "truth_volume_ml", "dice", "jaccard", "sensitivity", "ppv",
    "volume_error_pct", "hd_mm", "hd95_mm", "msd_mm", "reference_grid", "grid_spacing_mm", "centroid_shift_mm",
]


def _sphere_array(size, spacing, centre, radius, origin):
    grid = make_grid(size, spacing, origin=origin)
    x, y, z = physical_grid(grid)
    return ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2), grid


@pytest.fixture
def cases(tmp_path):
    """truth.nrrd: sphere r = 10 mm on 1 mm; shifted.nii.gz: the same shifted 2 voxels along x;
    coarse.mha: the truth sphere on a 2 mm grid; labels.nrrd: the truth with value 2; empty.nrrd."""
    centre = (0.3, -0.4, 0.2)
    truth, grid = _sphere_array((32, 32, 32), (1.0, 1.0, 1.0), centre, 10.0, (-15.5, -15.5, -15.5))
    shifted, _ = _sphere_array((32, 32, 32), (1.0, 1.0, 1.0), (centre[0] + 2, *centre[1:]), 10.0,
                               (-15.5, -15.5, -15.5))
    coarse, coarse_grid = _sphere_array((16, 16, 16), (2.0, 2.0, 2.0), centre, 10.0, (-15.0, -15.0, -15.0))
    files = {
        "truth": tmp_path / "truth.nrrd",
        "shifted": tmp_path / "shifted.nii.gz",
        "coarse": tmp_path / "coarse.mha",
        "labels": tmp_path / "labels.nrrd",
        "empty": tmp_path / "empty.nrrd",
    }
    sitk.WriteImage(image_from_array(truth, reference=grid), str(files["truth"]))
    sitk.WriteImage(image_from_array(shifted, reference=grid), str(files["shifted"]))
    sitk.WriteImage(image_from_array(coarse, reference=coarse_grid), str(files["coarse"]))
    sitk.WriteImage(image_from_array(truth.astype(np.uint8) * 2, reference=grid), str(files["labels"]))
    sitk.WriteImage(image_from_array(np.zeros_like(truth), reference=grid), str(files["empty"]))
    return {"files": files, "truth": truth, "shifted": shifted}


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def test_evaluate_is_registered():
    assert "evaluate" in COMMAND_MODULES
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0


def test_table_csv_and_json(cases, tmp_path, capsys):
    f = cases["files"]
    out_csv, out_json = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "metrics.json"
    code = main(["evaluate", "--truth", str(f["truth"]), str(f["shifted"]), str(f["coarse"]),
                 "--csv", str(out_csv), "--json", str(out_json)])
    assert code == 0
    stdout = capsys.readouterr().out
    table = [line for line in stdout.splitlines() if line.startswith(("mask ", str(f["shifted"]), str(f["coarse"])))]
    assert len(table) == 3
    for word in ("Dice", "Jaccard", "Sens", "PPV", "vol_err_%", "HD_mm", "HD95_mm", "MSD_mm", "volume_mL"):
        assert word in table[0]
    # Aligned: after the (left-aligned) mask column, every cell ends at the same column as its header.
    ends = [[m.end() for m in re.finditer(r"\S+", line)][1:11] for line in table]
    assert ends[0] == ends[1] == ends[2] and len(ends[0]) == 10

    header, rows = _read_csv(out_csv)
    assert header == CONTRACT_COLUMNS
    assert [r["mask"] for r in rows] == [str(f["shifted"]), str(f["coarse"])]
    assert {r["truth"] for r in rows} == {str(f["truth"])}

    # The shifted sphere, from first principles: an exact 2-voxel translate of the truth.
    truth, shifted = cases["truth"], cases["shifted"]
    row = rows[0]
    overlap = np.count_nonzero(truth & shifted)
    assert float(row["dice"]) == pytest.approx(2 * overlap / (truth.sum() + shifted.sum()), rel=1e-5)
    assert float(row["jaccard"]) == pytest.approx(overlap / np.count_nonzero(truth | shifted), rel=1e-5)
    assert float(row["sensitivity"]) == pytest.approx(overlap / truth.sum(), rel=1e-5)
    assert float(row["volume_ml"]) == pytest.approx(shifted.sum() / 1000, rel=1e-5)
    assert float(row["volume_error_pct"]) == pytest.approx(0.0, abs=1e-9)
    assert float(row["hd_mm"]) == pytest.approx(2.0, rel=1e-5)
    assert float(row["centroid_shift_mm"]) == pytest.approx(2.0, rel=1e-5)
    assert row["reference_grid"] == "shared" and row["grid_spacing_mm"] == "1x1x1"
    # The same sphere on a 2 mm grid: close to the truth, distances below the coarse voxel size.
    coarse = rows[1]
    assert coarse["reference_grid"] == "finest" and coarse["grid_spacing_mm"] == "1x1x1"
    assert float(coarse["dice"]) > 0.9
    assert max(float(coarse[c]) for c in ("hd_mm", "hd95_mm", "msd_mm")) < 2.0

    data = json.loads(out_json.read_text())
    assert data["truth"] == str(f["truth"])
    assert [r["mask"] for r in data["results"]] == [str(f["shifted"]), str(f["coarse"])]
    assert data["results"][0]["dice"] == pytest.approx(float(row["dice"]), rel=1e-5)
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["metrics.csv", "metrics.json"]  # no temp files


def test_non_binary_mask_is_refused_unless_nonzero(cases, tmp_path, capsys):
    f = cases["files"]
    assert main(["evaluate", "--truth", str(f["truth"]), str(f["labels"])]) == 2
    err = capsys.readouterr().err
    assert str(f["labels"]) in err and "--nonzero" in err and err.count("\n") == 1
    out_csv = tmp_path / "m.csv"
    assert main(["evaluate", "--truth", str(f["truth"]), str(f["labels"]), "--nonzero", "--csv", str(out_csv)]) == 0
    _, rows = _read_csv(out_csv)
    assert float(rows[0]["dice"]) == 1.0 and float(rows[0]["hd_mm"]) == 0.0


def test_empty_mask_is_refused_unless_allowed(cases, tmp_path, capsys):
    f = cases["files"]
    assert main(["evaluate", "--truth", str(f["truth"]), str(f["empty"])]) == 2
    err = capsys.readouterr().err
    assert str(f["empty"]) in err and "--allow-empty" in err
    assert main(["evaluate", "--truth", str(f["empty"]), str(f["shifted"])]) == 2
    assert "truth mask is empty" in capsys.readouterr().err
    out_csv = tmp_path / "m.csv"
    assert main(["evaluate", "--truth", str(f["truth"]), str(f["empty"]), "--allow-empty", "--csv", str(out_csv)]) == 0
    _, rows = _read_csv(out_csv)
    assert float(rows[0]["dice"]) == 0.0 and float(rows[0]["volume_ml"]) == 0.0
    assert rows[0]["hd_mm"] == rows[0]["hd95_mm"] == rows[0]["msd_mm"] == rows[0]["ppv"] == ""


def test_missing_file_and_unsafe_outputs(cases, capsys):
    f = cases["files"]
    missing = f["truth"].parent / "nowhere.nrrd"
    assert main(["evaluate", "--truth", str(f["truth"]), str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nowhere.nrrd" in err and "no such file" in err
    before = f["shifted"].read_bytes()
    assert main(["evaluate", "--truth", str(f["truth"]), str(f["shifted"]), "--csv", str(f["shifted"])]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert f["shifted"].read_bytes() == before


def test_grids_that_do_not_overlap_exit_2(cases, tmp_path, capsys):
    f = cases["files"]
    far, grid = _sphere_array((16, 16, 16), (1.0, 1.0, 1.0), (400.0, 0.0, 0.0), 5.0, (392.5, -7.5, -7.5))
    far_path = tmp_path / "far.nrrd"
    sitk.WriteImage(image_from_array(far, reference=grid), str(far_path))
    assert main(["evaluate", "--truth", str(f["truth"]), str(far_path)]) == 2
    assert "do not overlap" in capsys.readouterr().err
