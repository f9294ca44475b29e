"""``petdp suv`` end to end: phantom -> our PET DICOM -> petdp suv, published cases, and one-line errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import main
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, PetAcquisition, write_ct_series, write_pet_series
from PETDosePaintingLib.imaging.image import get_units, image_from_array

F18 = 6586.2
# 80 kg, 400 MBq at 09:00:00, scan one F-18 half-life later: SUVbw factor = 80 000 g / 200 MBq = 4e-4 g/Bq.
IDENTITY = DicomIdentity.synthetic("cli-suv", patient_weight_kg=80.0, patient_size_m=1.8, patient_sex="M")
ONE_HALF_LIFE = PetAcquisition(injected_dose_bq=400e6, injection_datetime=dt.datetime(2024, 5, 2, 9, 0, 0),
                               scan_datetime=dt.datetime(2024, 5, 2, 9, 0, 0) + dt.timedelta(seconds=F18))

_A = np.radians(20)
OBLIQUE = np.array([[1, 0, 0], [0, np.cos(_A), -np.sin(_A)], [0, np.sin(_A), np.cos(_A)]])  # tilted about L-R


def phantom(shape=(6, 9, 8)):
    """SUVbw: background 1 with a hot 'tumour' of SUV 12 and a gradient, on an oblique grid away from 0."""
    k, j, i = np.indices(shape)
    suv = 1.0 + 0.1 * i + 0.05 * j + 0.2 * k
    suv[2:4, 3:6, 3:5] = 12.0
    return image_from_array(suv, spacing=(3.5, 4.0, 2.78), origin=(-211.3, 148.9, -733.25),
                            direction=OBLIQUE.ravel(), units="SUVbw")


def run_suv(capsys, *args):
    code = main(["suv", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def rewrite_all(folder, change):
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def assert_one_error_line(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("petdp suv: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_phantom_to_dicom_to_petdp_suv_round_trip(tmp_path, capsys):
    truth = phantom()
    written = write_pet_series(truth, tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    code, out, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd")
    assert code == 0, err
    back = sitk.ReadImage(str(tmp_path / "suv.nrrd"))
    assert get_units(back) == "SUVbw"
    # acceptance: equals the SUV the DICOM represents to 1e-4 relative
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(written.suv_image), rtol=1e-4)
    # ... which is the phantom up to 16-bit quantisation (half a step of slice max / 65535)
    diff = np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(truth))
    assert diff.max() <= 0.5 / 65535 * 12.0 * 1.001
    # geometry preserved: oblique direction, anisotropic spacing, origin away from zero
    assert back.GetSize() == truth.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), truth.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), truth.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), truth.GetDirection(), atol=1e-9)
    # the printed factor and values: 80 kg, 400 MBq, one half-life
    assert "[suv] factor: 0.0004\n" in out
    assert "weight: 80 kg" in out and "injected dose: 400 MBq" in out and "decayed dose: 200 MBq" in out
    assert "decay time: 6586.200 s with half-life 6586.2 s" in out


@pytest.mark.parametrize(("kind", "normaliser_g"), [
    ("lbm", (1.10 * 80 - 120 * (80 / 180) ** 2) * 1000),  # James, QIBA coefficients, male
    ("lbm-janma", 9270 * 80 / (6680 + 216 * 80 / 1.8**2) * 1000),  # Janmahasatian, male
    ("bsa", 71.84 * 80**0.425 * 180**0.725),  # DuBois, cm2
])
def test_other_kinds_scale_with_the_normaliser(tmp_path, capsys, kind, normaliser_g):
    written = write_pet_series(phantom(), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    code, out, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd", "--kind", kind)
    assert code == 0, err
    back = sitk.ReadImage(str(tmp_path / "suv.nrrd"))
    assert get_units(back) == {"lbm": "SUVlbm", "lbm-janma": "SUVlbmJanma", "bsa": "SUVbsa"}[kind]
    expected = sitk.GetArrayFromImage(written.suv_image) * normaliser_g / 80_000
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), expected, rtol=1e-4)
    assert f"[suv] factor: {normaliser_g / 200e6:.10g}\n" in out


def test_single_pet_file_folder(tmp_path, capsys):
    truth = phantom((1, 9, 8))
    written = write_pet_series(truth, tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    code, _, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nii.gz")
    assert code == 0, err
    back = sitk.ReadImage(str(tmp_path / "suv.nii.gz"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(written.suv_image), rtol=1e-4)


def test_qin_headneck_published_maximum_suv(tmp_path, capsys):
    """TCIA QIN-HEADNECK-01-0139 header values (Slicer PET DICOM self-test): SUVbw max 89.8588."""
    write_pet_series(phantom((1, 4, 4)), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    stored = np.array([[0, 100, 2000, 32766]] * 4, dtype=np.int16)

    def qin(ds):
        ds.PatientWeight = "123.6"
        ds.SeriesTime, ds.AcquisitionTime = "102731.687", "103339.953"
        item = ds.RadiopharmaceuticalInformationSequence[0]
        item.RadionuclideTotalDose = "587929992.67578"
        item.RadionuclideHalfLife = "6586.2"
        item.RadiopharmaceuticalStartTime = "084500"
        del item.RadiopharmaceuticalStartDateTime
        ds.RescaleSlope = "6.8276948928833"
        ds.PixelRepresentation = 1
        ds.PixelData = stored.tobytes()

    rewrite_all(tmp_path / "pet", qin)
    code, out, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd")
    assert code == 0, err
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "suv.nrrd")))
    assert back.max() == pytest.approx(89.8588, abs=0.5e-4)
    assert "[suv] factor: 0.0004016" in out


def test_output_inside_the_input_is_refused(tmp_path, capsys):
    write_pet_series(phantom((2, 3, 3)), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    code, _, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "pet" / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, "would overwrite the input")
    assert sorted(p.name for p in (tmp_path / "pet").iterdir()) == ["PT0001.dcm", "PT0002.dcm"]


def _drop_weight(ds):
    del ds.PatientWeight


def _drop_dose(ds):
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose


def _drop_half_life(ds):
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife


def _no_attenuation(ds):
    ds.CorrectedImage = ["DECY", "SCAT"]


def _units(ds):
    ds.Units = "PROPCNTS"


def _no_position(ds):
    if ds.InstanceNumber == 2:
        del ds.ImagePositionPatient


@pytest.mark.parametrize(("change", "fragments", "fix"), [
    (_drop_weight, ["PatientWeight (0010,1030) is missing", "PT0001.dcm"], ["--weight", "80"]),
    (_drop_dose, ["RadionuclideTotalDose (0018,1074) is missing", "PT0001.dcm"], ["--dose", "400"]),
    (_drop_half_life, ["RadionuclideHalfLife (0018,1075) is missing", "PT0001.dcm"], None),
    (_no_attenuation, ["CorrectedImage (0028,0051) (DECY\\SCAT) lacks ATTN", "PT0001.dcm"], ["--allow-uncorrected"]),
    (_units, ["Units (0054,1001) is 'PROPCNTS'", "PT0001.dcm"], None),
    (_no_position, ["ImagePositionPatient (0020,0032) is missing", "PT0002.dcm"], None),
])
def test_bad_headers_give_one_error_line_and_overrides_fix_them(tmp_path, capsys, change, fragments, fix):
    write_pet_series(phantom((3, 4, 4)), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    rewrite_all(tmp_path / "pet", change)
    code, _, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, *fragments)
    assert not (tmp_path / "suv.nrrd").exists()
    if fix is not None:
        code, out, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd", *fix)
        assert code == 0, err
        assert "[suv] factor: 0.0004\n" in out  # the override restores the hand-computed factor
        if fix[0] == "--allow-uncorrected":
            assert "NOT quantitative" in out
        else:
            assert "override:" in out


def test_ct_given_to_suv_is_refused(tmp_path, capsys):
    write_ct_series(image_from_array(np.zeros((2, 3, 3)), units="HU"), tmp_path / "ct", IDENTITY)
    code, _, err = run_suv(capsys, tmp_path / "ct", "--out", tmp_path / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, "no PT series here", "(CT, 2 file(s)")
    code, _, err = run_suv(capsys, tmp_path / "ct", "--out", tmp_path / "suv.nrrd", "--series-uid",
                           pydicom.dcmread(next((tmp_path / "ct").glob("*.dcm"))).SeriesInstanceUID)
    assert code == 2
    assert_one_error_line(err, "is a CT series", "not PET")


def test_mixed_modalities_corrupt_file_and_missing_slice(tmp_path, capsys):
    written = write_pet_series(phantom((4, 4, 4)), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)
    ds = pydicom.dcmread(written.paths[1])
    ds.Modality = "CT"
    ds.save_as(written.paths[1])
    code, _, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, "mixed modalities in series", "PT0002.dcm")

    written = write_pet_series(phantom((4, 4, 4)), tmp_path / "pet2", IDENTITY, ONE_HALF_LIFE)
    written.paths[2].write_bytes(written.paths[2].read_bytes()[:300])
    code, _, err = run_suv(capsys, tmp_path / "pet2", "--out", tmp_path / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, "PT0003.dcm: is corrupt")

    written = write_pet_series(phantom((4, 4, 4)), tmp_path / "pet3", IDENTITY, ONE_HALF_LIFE)
    written.paths[1].unlink()
    code, _, err = run_suv(capsys, tmp_path / "pet3", "--out", tmp_path / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, "non-uniform slice spacing", "PT0001.dcm and PT0003.dcm")


def test_several_pet_series_need_a_series_uid(tmp_path, capsys):
    a = write_pet_series(phantom((2, 3, 3)), tmp_path / "study" / "a", IDENTITY, ONE_HALF_LIFE, series_number=5)
    b = write_pet_series(phantom((2, 3, 3)), tmp_path / "study" / "b", IDENTITY, ONE_HALF_LIFE, series_number=6)
    code, _, err = run_suv(capsys, tmp_path / "study", "--out", tmp_path / "suv.nrrd")
    assert code == 2
    assert_one_error_line(err, "holds 2 PT image series", a.series_instance_uid, b.series_instance_uid)
    code, out, err = run_suv(capsys, tmp_path / "study", "--out", tmp_path / "suv.nrrd", "--series-uid",
                             b.series_instance_uid)
    assert code == 0, err
    assert b.series_instance_uid in out


@pytest.mark.parametrize(("units", "private", "factor_line"), [
    ("CNTS", {0x00: "0.000728"}, "[suv] factor: 0.000728\n"),  # Philips SUVScaleFactor used as such
    ("CNTS", {0x09: "2.0"}, "[suv] factor: 0.0008\n"),  # ActivityConcentrationScaleFactor 2 x 4e-4
    ("GML", {}, "[suv] factor: 1\n"),  # already SUVbw
    ("BQML", {0x00: "0.5"}, "[suv] factor: 0.0004\n"),  # Philips private tags ignored for BQML
])
def test_vendor_units_through_real_files(tmp_path, capsys, units, private, factor_line):
    write_pet_series(phantom((2, 3, 3)), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)

    def vendor(ds):
        ds.Units = units
        if private:
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            for element, value in private.items():
                block.add_new(element, "DS", value)

    rewrite_all(tmp_path / "pet", vendor)
    code, out, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd")
    assert code == 0, err
    assert factor_line in out


def test_lean_body_mass_needs_sex_and_height_which_overrides_give(tmp_path, capsys):
    write_pet_series(phantom((2, 3, 3)), tmp_path / "pet", IDENTITY, ONE_HALF_LIFE)

    def anonymise(ds):
        ds.PatientSex = ""
        del ds.PatientSize

    rewrite_all(tmp_path / "pet", anonymise)
    code, _, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd", "--kind", "lbm")
    assert code == 2
    assert_one_error_line(err, "PatientSize (0010,1020) is missing", "PT0001.dcm")
    code, _, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd", "--kind", "lbm",
                           "--height", "1.8")
    assert code == 2
    assert_one_error_line(err, "PatientSex (0010,0040)", "--sex")
    code, out, err = run_suv(capsys, tmp_path / "pet", "--out", tmp_path / "suv.nrrd", "--kind", "lbm",
                             "--height", "1.8", "--sex", "F")
    assert code == 0, err
    # female James: 1.07 x 80 - 148 x (80 / 180)^2 kg, over 200 MBq
    assert f"[suv] factor: {(1.07 * 80 - 148 * (80 / 180) ** 2) * 1000 / 200e6:.10g}\n" in out
