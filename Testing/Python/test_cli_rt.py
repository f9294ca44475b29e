"""``petdp dvh`` and ``petdp convert-rtstruct``: the CSV contract, RT Structure Set vs mask agreement, refusals."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.dvh import CSV_COLUMNS, CURVE_COLUMNS
from PETDosePaintingLib.cli.main import COMMAND_MODULES, main
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
from PETDosePaintingLib.imaging.dicom_series import read_dicom_series
from PETDosePaintingLib.imaging.image import image_from_array, physical_grid
from PETDosePaintingLib.imaging.rtdose import write_rtdose
from PETDosePaintingLib.imaging.rtstruct import write_rtstruct

#: The columns issue 5 fixes (a contract), in order.
CONTRACT = ["roi", "volume_cc", "mean_gy", "min_gy", "max_gy", "d95_gy", "d2cc_gy"]
GRAD = np.array([0.4, -0.25, 0.3])  # Gy/mm
CENTRE = np.array([0.7, -1.2, 41.0])


def _ct(tmp_path, seed, name):
    shape = (12, 24, 22)
    ct = image_from_array(np.full(shape, -1000, np.int16), spacing=(2.0, 2.0, 2.5), origin=(-21.0, -23.0, 27.0),
                          units="HU")
    write_ct_series(ct, tmp_path / name, DicomIdentity.synthetic(seed))
    return read_dicom_series(tmp_path / name)


@pytest.fixture
def case(tmp_path):
    """A planning CT, a sphere and a shell on it (RT Structure Set + NRRD masks), a linear dose (RT Dose)."""
    ct = _ct(tmp_path, 41, "ct")
    x, y, z = physical_grid(ct.image)
    r2 = (x - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (z - CENTRE[2]) ** 2
    sphere, shell = r2 <= 12.0**2, (r2 <= 14.0**2) & (r2 > 7.0**2)
    masks = {"PTV_Sphere": sphere, "PTV 70/35": shell}
    write_rtstruct({n: image_from_array(a, ct.image) for n, a in masks.items()}, ct, tmp_path / "rs.dcm")
    files = {}
    for n, a in masks.items():
        files[n] = tmp_path / f"{n.replace(' ', '_').replace('/', '_')}.nrrd"
        sitk.WriteImage(image_from_array(a, ct.image), str(files[n]))
    dose = image_from_array(60.0 + GRAD[0] * x + GRAD[1] * y + GRAD[2] * (z - 41.0), ct.image, units="Gy")
    write_rtdose(dose, tmp_path / "rd.dcm", ct)
    return {"dir": tmp_path, "ct": ct, "masks": masks, "mask_files": files, "dose": dose}


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_commands_are_registered():
    assert "dvh" in COMMAND_MODULES and "convert_rtstruct" in COMMAND_MODULES


def test_rtstruct_and_mask_give_the_same_numbers(case, capsys):
    d = case["dir"]
    assert main(["dvh", "--dose", str(d / "rd.dcm"), "--rtstruct", str(d / "rs.dcm"), "--csv", str(d / "a.csv")]) == 0
    masks = [arg for n, p in case["mask_files"].items() for arg in ("--mask", f"{n}={p}")]
    assert main(["dvh", "--dose", str(d / "rd.dcm"), *masks,
                 "--csv", str(d / "b.csv"), "--curves", str(d / "b_curves.csv")]) == 0
    header_a, rows_a = _rows(d / "a.csv")
    header_b, rows_b = _rows(d / "b.csv")
    assert header_a == header_b == list(CSV_COLUMNS) and header_a[:7] == CONTRACT
    assert [r["roi"] for r in rows_a] == [r["roi"] for r in rows_b] == list(case["masks"])
    dose = sitk.GetArrayFromImage(case["dose"])
    for a, b in zip(rows_a, rows_b, strict=True):
        mask = case["masks"][a["roi"]]
        # the mask DVH, from first principles: voxel count x voxel volume, mean of the voxel doses
        assert float(b["volume_cc"]) == pytest.approx(np.count_nonzero(mask) * 2 * 2 * 2.5 / 1000, rel=1e-5)
        assert float(b["mean_gy"]) == pytest.approx(dose[mask].mean(), rel=1e-5)
        assert float(b["min_gy"]) == pytest.approx(dose[mask].min(), rel=1e-5)
        # Contours traced on the voxel boundaries of the same grid: every one of the 4 x 4 sub-voxel centres of a
        # mask voxel is inside (corners are cut by 1/8 voxel only), and the planes are the CT slices, so the
        # volumes agree; the dose is linear, so the sub-voxel mean equals the voxel-centre mean. Sub-sampling
        # only spreads the dose values: the outermost sub-voxel centres lie 3/8 of a 2 mm voxel (0.75 mm) from
        # the voxel centre in x and y, so no dose statistic moves by more than 0.75 (|gx| + |gy|) Gy.
        assert float(a["volume_cc"]) == pytest.approx(float(b["volume_cc"]), rel=1e-5)
        assert float(a["mean_gy"]) == pytest.approx(float(b["mean_gy"]), rel=1e-5)
        spread = 0.75 * (abs(GRAD[0]) + abs(GRAD[1]))
        for column in ("max_gy", "min_gy", "d95_gy", "d2cc_gy", "d98_gy", "d50_gy", "d2_gy"):
            assert abs(float(a[column]) - float(b[column])) <= spread + 1e-3, column
        assert b["method"] == "mask" and a["method"].startswith("contours")
    header_c, curves = _rows(d / "b_curves.csv")
    assert header_c == list(CURVE_COLUMNS)
    sphere = [r for r in curves if r["roi"] == "PTV_Sphere"]
    assert float(sphere[0]["dose_gy"]) == 0 and float(sphere[0]["volume_pct"]) == pytest.approx(100)
    volumes = [float(r["volume_cc"]) for r in sphere]
    assert all(v2 <= v1 for v1, v2 in itertools.pairwise(volumes))
    out = capsys.readouterr().out
    assert "PTV_Sphere" in out and "b.csv" in out


def test_one_roi_selected(case):
    d = case["dir"]
    assert main(["dvh", "--dose", str(d / "rd.dcm"), "--rtstruct", str(d / "rs.dcm"), "--roi", "PTV 70/35",
                 "--csv", str(d / "one.csv"), "--subsample", "2"]) == 0
    _, rows = _rows(d / "one.csv")
    assert [r["roi"] for r in rows] == ["PTV 70/35"]


def _assert_refused(capsys, argv, *outputs, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"petdp {argv[0]}: error:") and match in err[0], err
    for path in outputs:
        assert not path.exists(), path


def test_dvh_refusals(case, capsys):
    d = case["dir"]
    csv_out = d / "out.csv"
    # a dose image without units
    unitless = image_from_array(sitk.GetArrayFromImage(case["dose"]), case["ct"].image)
    sitk.WriteImage(unitless, str(d / "unitless.nrrd"))
    _assert_refused(capsys, ["dvh", "--dose", str(d / "unitless.nrrd"), "--rtstruct", str(d / "rs.dcm"), "--csv",
                      str(csv_out)], csv_out, match="Gy")
    # an RT Structure Set in another frame of reference than the dose
    other = _ct(d, 42, "other_ct")
    write_rtdose(image_from_array(sitk.GetArrayFromImage(case["dose"]), other.image, units="Gy"),
                 d / "other_rd.dcm", other)
    _assert_refused(capsys, ["dvh", "--dose", str(d / "other_rd.dcm"), "--rtstruct", str(d / "rs.dcm"), "--csv",
                      str(csv_out)], csv_out, match="frame of reference")
    # an unknown ROI name: the error lists the ROIs
    _assert_refused(capsys, ["dvh", "--dose", str(d / "rd.dcm"), "--rtstruct", str(d / "rs.dcm"), "--roi", "Brainstem",
                      "--csv", str(csv_out), "--curves", str(d / "curves.csv")], csv_out, d / "curves.csv",
             match="'PTV_Sphere', 'PTV 70/35'")
    # missing files
    _assert_refused(capsys, ["dvh", "--dose", str(d / "missing.dcm"), "--rtstruct", str(d / "rs.dcm"), "--csv",
                      str(csv_out)], csv_out, match="no such file")
    _assert_refused(capsys, ["dvh", "--dose", str(d / "rd.dcm"), "--rtstruct", str(d / "missing_rs.dcm"), "--csv",
                      str(csv_out)], csv_out, match="no such file")
    # a mask on another grid
    coarse = sitk.Shrink(sitk.ReadImage(str(case["mask_files"]["PTV_Sphere"])), (2, 2, 2))
    sitk.WriteImage(coarse, str(d / "coarse.nrrd"))
    _assert_refused(capsys, ["dvh", "--dose", str(d / "rd.dcm"), "--mask", f"X={d / 'coarse.nrrd'}", "--csv",
                             str(csv_out)], csv_out, match="not on the same grid")
    # the output would overwrite an input
    _assert_refused(capsys, ["dvh", "--dose", str(d / "rd.dcm"), "--rtstruct", str(d / "rs.dcm"), "--csv",
                      str(d / "rs.dcm")], match="overwrite")


def test_declared_units(case):
    d = case["dir"]
    in_cgy = image_from_array(sitk.GetArrayFromImage(case["dose"]) * 100.0, case["ct"].image)
    sitk.WriteImage(in_cgy, str(d / "cgy.nrrd"))
    assert main(["dvh", "--dose", str(d / "cgy.nrrd"), "--units", "cGy", "--mask",
                 f"S={case['mask_files']['PTV_Sphere']}", "--csv", str(d / "c.csv")]) == 0
    _, rows = _rows(d / "c.csv")
    mask = case["masks"]["PTV_Sphere"]
    assert float(rows[0]["mean_gy"]) == pytest.approx(sitk.GetArrayFromImage(case["dose"])[mask].mean(), rel=1e-5)


def test_convert_rtstruct_one_and_several(case, capsys):
    d = case["dir"]
    ct_dir = str(case["ct"].directory)
    assert main(["convert-rtstruct", str(d / "rs.dcm"), "--image", ct_dir, "--roi", "PTV_Sphere",
                 "--out", str(d / "sphere.nrrd")]) == 0
    got = sitk.ReadImage(str(d / "sphere.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(got).astype(bool), case["masks"]["PTV_Sphere"])
    assert np.allclose(got.GetOrigin(), case["ct"].image.GetOrigin())
    assert main(["convert-rtstruct", str(d / "rs.dcm"), "--image", ct_dir, "--out", str(d / "all")]) == 0
    assert sorted(p.name for p in (d / "all").glob("*.nrrd")) == ["PTV_70_35.nrrd", "PTV_Sphere.nrrd"]
    shell = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "all" / "PTV_70_35.nrrd"))).astype(bool)
    assert np.array_equal(shell, case["masks"]["PTV 70/35"])
    # onto the dose grid (an RT Dose file as the reference)
    assert main(["convert-rtstruct", str(d / "rs.dcm"), "--image", str(d / "rd.dcm"), "--roi", "PTV_Sphere",
                 "--out", str(d / "on_dose.nii.gz")]) == 0
    capsys.readouterr()
    # several ROIs into one file: refused, nothing written
    _assert_refused(capsys, ["convert-rtstruct", str(d / "rs.dcm"), "--image", ct_dir, "--out", str(d / "two.nrrd")],
             d / "two.nrrd", match="2 ROIs")
    _assert_refused(capsys, ["convert-rtstruct", str(d / "rs.dcm"), "--image", ct_dir, "--roi", "Cord", "--out",
                      str(d / "cord.nrrd")], d / "cord.nrrd", match="unknown ROI")
    other = _ct(d, 43, "other_ct")
    _assert_refused(capsys, ["convert-rtstruct", str(d / "rs.dcm"), "--image", str(other.directory), "--out",
                      str(d / "x")], d / "x", match="frame of reference")
