"""``petdp compare``: the CSV contract, Table 2, matrix, JSON and plots, and refusals (exit 2, nothing written)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import COMMAND_MODULES, build_parser, main
from PETDosePaintingLib.comparison.reports import MATRIX_METRICS, PAIR_COLUMNS, TABLE2_COLUMNS
from PETDosePaintingLib.imaging.image import image_from_array, make_grid

#: The columns of the issue's contract, in order, at the start of every pair row.
CONTRACT = ["a", "b", "volume_a_ml", "volume_b_ml", "dice", "jaccard", "sensitivity", "ppv", "hd_mm", "hd95_mm",
            "msd_mm"]

GRID = make_grid((24, 24, 24), (1.0, 1.0, 1.0), origin=(-6.0, -6.0, -6.0))  # centres -6..17 mm
COARSE = make_grid((12, 12, 12), (2.0, 2.0, 2.0), origin=(-5.5, -5.5, -5.5))  # voxel faces at -6.5, -4.5, ...


def _box(grid, lo, hi):
    shape = sitk.GetArrayViewFromImage(grid).shape
    k, j, i = np.indices(shape)
    o, s = grid.GetOrigin(), grid.GetSpacing()
    inside = np.ones(shape, dtype=bool)
    for idx, a, lo_a, hi_a in zip((i, j, k), range(3), lo, hi, strict=True):
        c = o[a] + s[a] * idx
        inside &= (c >= lo_a) & (c <= hi_a)
    return image_from_array(inside, reference=grid)


@pytest.fixture
def files(tmp_path):
    """ct (12^3, 1.728 mL) around the pathology (10^3, 1 mL); mri = the pathology's region on a 2 mm grid;
    pet = the lower half of the pathology (0.5 mL)."""
    masks = {
        "ct.nrrd": _box(GRID, (-1, -1, -1), (10, 10, 10)),
        "mri.nii.gz": _box(COARSE, (0, 0, 0), (9, 9, 9)),
        "pet.mha": _box(GRID, (0, 0, 0), (9, 9, 4)),
        "pathology.nrrd": _box(GRID, (0, 0, 0), (9, 9, 9)),
    }
    out = {}
    for name, image in masks.items():
        sitk.WriteImage(image, str(tmp_path / name))
        out[name.split(".")[0]] = str(tmp_path / name)
    return out


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def test_compare_is_registered_and_states_the_surface_distance_definition():
    assert "compare" in COMMAND_MODULES
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["compare"]
    assert "surface-distance" in sub.description and "surface-element" in sub.description


def test_against_a_reference_writes_every_report(files, tmp_path, capsys):
    out = {k: tmp_path / "out" / f"{k}.{ext}" for k, ext in (("pairs", "csv"), ("table2", "csv"),
                                                            ("matrix", "csv"), ("all", "json"))}
    plots = tmp_path / "out" / "plots"
    code = main(["compare", files["ct"], files["mri"], files["pet"], "--names", "GTV_CT", "GTV_MRI", "GTV_PET",
                 "--reference", files["pathology"], "--reference-name", "pathology", "--csv", str(out["pairs"]),
                 "--table2", str(out["table2"]), "--matrix", str(out["matrix"]), "--json", str(out["all"]),
                 "--plots", str(plots), "--times", "0", "7", "17"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "intersection of GTV_CT, GTV_MRI, GTV_PET: 0.500 mL; union: 1.728 mL" in printed
    header, rows = _csv(out["pairs"])
    assert header == list(PAIR_COLUMNS) and header[: len(CONTRACT)] == CONTRACT
    assert [(r["a"], r["b"]) for r in rows] == [("GTV_CT", "pathology"), ("GTV_MRI", "pathology"),
                                                ("GTV_PET", "pathology")]
    ct, mri, pet = rows
    assert float(ct["volume_a_ml"]) == pytest.approx(1.728) and float(ct["volume_b_ml"]) == pytest.approx(1.0)
    assert float(ct["dice"]) == pytest.approx(2000 / 2728, rel=1e-5)
    assert float(ct["sensitivity"]) == 1.0 and float(ct["ppv"]) == pytest.approx(1000 / 1728, rel=1e-5)
    assert float(mri["dice"]) == 1.0 and float(mri["hd_mm"]) == 0.0 and float(mri["msd_mm"]) == 0.0
    assert float(pet["jaccard"]) == pytest.approx(0.5) and float(pet["sensitivity"]) == pytest.approx(0.5)
    assert float(pet["hd95_mm"]) > 0 and float(pet["hd_mm"]) >= float(pet["hd95_mm"])
    t_header, t_rows = _csv(out["table2"])
    assert t_header == list(TABLE2_COLUMNS)
    assert [r["structure"] for r in t_rows] == ["GTV_CT", "GTV_MRI", "GTV_PET", "pathology",
                                                "intersection(GTV_CT, GTV_MRI, GTV_PET)",
                                                "union(GTV_CT, GTV_MRI, GTV_PET)"]
    assert float(t_rows[2]["uncovered_reference_ml"]) == pytest.approx(0.5)
    m_header, m_rows = _csv(out["matrix"])
    assert m_header == ["metric", "mask", "GTV_CT", "GTV_MRI", "GTV_PET", "pathology"]
    assert len(m_rows) == 4 * len(MATRIX_METRICS)
    assert float(m_rows[1]["pathology"]) == 1.0  # Dice of GTV_MRI and the pathology
    data = json.loads(out["all"].read_text())
    assert data["reference"] == "pathology" and len(data["pairs"]) == 3
    assert data["combination"]["intersection_ml"] == pytest.approx(0.5)
    assert data["table2"]["rows"][0]["structure"] == "GTV_CT" and data["matrix"]["names"][3] == "pathology"
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["dice_matrix.png", "volume_over_time.png"]
    assert all((plots / p).stat().st_size > 5000 for p in pngs)


def test_pairwise_without_reference(files, tmp_path):
    out = tmp_path / "pairs.csv"
    assert main(["compare", files["ct"], files["pet"], files["pathology"], "--csv", str(out)]) == 0
    header, rows = _csv(out)
    assert header[: len(CONTRACT)] == CONTRACT
    # every pair once, a listed before b, names from the file names; b is the pair's reference
    assert [(r["a"], r["b"]) for r in rows] == [("ct", "pet"), ("ct", "pathology"), ("pet", "pathology")]
    assert float(rows[0]["sensitivity"]) == 1.0 and float(rows[0]["ppv"]) == pytest.approx(500 / 1728, rel=1e-5)
    assert rows[0]["reference_grid"] == "shared" and rows[0]["grid_spacing_mm"] == "1x1x1"


def _outputs(tmp_path):
    return {"csv": tmp_path / "o" / "p.csv", "table2": tmp_path / "o" / "t.csv", "json": tmp_path / "o" / "a.json",
            "plots": tmp_path / "o" / "plots"}


def _args(out):
    return ["--csv", str(out["csv"]), "--table2", str(out["table2"]), "--json", str(out["json"]),
            "--plots", str(out["plots"])]


def test_bad_input_exits_2_and_writes_nothing(files, tmp_path, capsys):
    ct = sitk.ReadImage(files["ct"])
    other_frame = sitk.Image(ct)
    other_frame.SetMetaData("0020|0052", "1.2.826.0.1.3680043.8.498.1")
    sitk.WriteImage(other_frame, str(tmp_path / "ct_frame_a.nrrd"))
    other_frame.SetMetaData("0020|0052", "1.2.826.0.1.3680043.8.498.2")
    sitk.WriteImage(other_frame, str(tmp_path / "ct_frame_b.nrrd"))
    sitk.WriteImage(image_from_array(np.zeros((24, 24, 24), dtype=bool), reference=GRID), str(tmp_path / "empty.nrrd"))
    far = make_grid((8, 8, 8), (1.0, 1.0, 1.0), origin=(500.0, 500.0, 500.0))
    sitk.WriteImage(_box(far, (501, 501, 501), (505, 505, 505)), str(tmp_path / "far.nrrd"))
    sitk.WriteImage(image_from_array(np.full((24, 24, 24), 2, np.uint8), reference=GRID), str(tmp_path / "two.nrrd"))
    out = _outputs(tmp_path)
    cases = [
        ([str(tmp_path / "ct_frame_a.nrrd"), str(tmp_path / "ct_frame_b.nrrd")], "frames of reference"),
        ([files["ct"], str(tmp_path / "empty.nrrd")], "empty"),
        ([files["ct"], str(tmp_path / "far.nrrd")], "do not overlap"),
        ([files["ct"], str(tmp_path / "two.nrrd")], "not a binary"),
        ([files["ct"]], "at least two masks"),
        ([files["ct"], files["pet"], "--names", "A"], "one per mask"),
        ([files["ct"], files["pet"], "--names", "A", "A"], "unique"),
        ([files["ct"], files["pet"], "--times", "0"], "one per mask"),
        ([files["ct"], files["pet"], "--reference", files["pathology"], "--reference-name", "ct"], "unique"),
        ([files["ct"], files["pet"], "--csv", files["pet"]], "overwrite the input"),
    ]
    for args, message in cases:
        code = main(["compare", *args, *_args(out)] if "--csv" not in args else ["compare", *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert not (tmp_path / "o").exists(), args
    assert sitk.ReadImage(files["pet"]).GetSize() == (24, 24, 24)  # the input is intact
