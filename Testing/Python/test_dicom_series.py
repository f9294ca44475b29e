"""Reading DICOM series: sorting, rescaling, geometry (cross-checked with SimpleITK/GDCM), identity, refusals."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import DicomError
from PETDosePaintingLib.imaging.dicom_export import (
    DicomIdentity,
    PetAcquisition,
    write_ct_series,
    write_mr_series,
    write_pet_series,
)
from PETDosePaintingLib.imaging.dicom_series import read_dicom_series, read_pet_suv
from PETDosePaintingLib.imaging.image import get_units, image_from_array
from PETDosePaintingLib.imaging.io import read_image

_C, _S = np.cos(np.radians(25)), np.sin(np.radians(25))
_CY, _SY = np.cos(np.radians(15)), np.sin(np.radians(15))
OBLIQUE = np.array([[_C, -_S, 0], [_S, _C, 0], [0, 0, 1]]) @ np.array([[_CY, 0, _SY], [0, 1, 0], [-_SY, 0, _CY]])
IDENTITY = DicomIdentity.synthetic("series-tests", patient_weight_kg=70.0, patient_size_m=1.7, patient_sex="F")


def ct_image(shape=(5, 7, 6)):
    k, j, i = np.indices(shape)
    hu = -1000 + 37 * i + 101 * j + 523 * k  # distinct integers, negative and positive
    return image_from_array(hu.astype(float), spacing=(0.9, 1.1, 2.5), origin=(-250.3, -180.7, 1022.2),
                            direction=OBLIQUE.ravel(), units="HU")


def pet_image(shape=(4, 5, 6)):
    k, j, i = np.indices(shape)
    return image_from_array(1.0 + i + 0.5 * j + 3.0 * k, spacing=(4.0, 4.0, 3.27), origin=(-300, -310, -500),
                            units="SUVbw")


def rewrite(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def assert_same_geometry(a, b, atol=1e-6):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


def test_ct_round_trip_is_exact_with_geometry_and_identity(tmp_path):
    image = ct_image()
    written = write_ct_series(image, tmp_path / "ct", IDENTITY)
    series = read_dicom_series(tmp_path / "ct")
    assert series.modality == "CT" and series.units == "HU" and get_units(series.image) == "HU"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(image))
    assert_same_geometry(series.image, image)
    assert series.identity == IDENTITY
    assert series.series_instance_uid == written.series_instance_uid
    assert series.sop_instance_uids == written.sop_instance_uids  # in slice order, for RT structure sets
    assert len(series.datasets) == 5 and "PixelData" not in series.datasets[0]


def test_slices_are_sorted_by_position_not_by_file_name(tmp_path):
    image = ct_image()
    written = write_ct_series(image, tmp_path / "ct", IDENTITY)
    for n, path in enumerate(written.paths):  # reverse the name order, and hide one file in a sub-folder
        path.rename(path.with_name(f"z{9 - n}.dcm"))
    (tmp_path / "ct" / "sub").mkdir()
    (tmp_path / "ct" / "z7.dcm").rename(tmp_path / "ct" / "sub" / "z7.dcm")
    series = read_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(image))
    assert series.sop_instance_uids == written.sop_instance_uids


def test_geometry_and_pet_values_agree_with_simpleitk_gdcm(tmp_path):
    written = write_pet_series(pet_image(), tmp_path / "pet", IDENTITY)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "pet")))
    gdcm = reader.Execute()  # independent reader: applies each slice's own Rescale Slope
    series = read_dicom_series(tmp_path / "pet")
    assert_same_geometry(series.image, gdcm, atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(gdcm), rtol=1e-6)
    assert series.units == "Bq/mL"
    np.testing.assert_allclose(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(written.image), rtol=1e-6)


def test_read_image_delegates_dicom_folders(tmp_path):
    write_pet_series(pet_image(), tmp_path / "pet", IDENTITY)
    assert get_units(read_image(tmp_path / "pet")) == "Bq/mL"


def test_mr_round_trip_keeps_the_written_values(tmp_path):
    values = np.random.default_rng(1).uniform(0, 800, (3, 4, 5))
    written = write_mr_series(image_from_array(values, spacing=(1, 1, 4)), tmp_path / "mr", IDENTITY)
    series = read_dicom_series(tmp_path / "mr")
    assert series.units == "a.u." and series.modality == "MR"
    np.testing.assert_allclose(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(written.image), rtol=1e-6)
    # one series-wide slope of 800/65535 at most: values within half a step of the original
    np.testing.assert_allclose(sitk.GetArrayFromImage(series.image), values, atol=0.5 * 800 / 65535 * 1.001)


def test_single_file_folder_and_single_file_path(tmp_path):
    write_pet_series(pet_image((1, 5, 6)), tmp_path / "one", IDENTITY)
    series = read_dicom_series(tmp_path / "one")
    assert series.image.GetSize() == (6, 5, 1)
    assert series.image.GetSpacing()[2] == pytest.approx(3.27)  # from SliceThickness, said in a note
    assert any("SliceThickness" in n for n in series.notes)
    assert read_dicom_series(tmp_path / "one" / "PT0001.dcm").image.GetSize() == (6, 5, 1)


def test_several_series_are_listed_and_one_can_be_chosen(tmp_path):
    ct = write_ct_series(ct_image(), tmp_path / "study" / "ct", IDENTITY)
    pet = write_pet_series(pet_image(), tmp_path / "study" / "pet", IDENTITY)
    with pytest.raises(DicomError, match="holds 2 image series") as info:
        read_dicom_series(tmp_path / "study")
    assert ct.series_instance_uid in str(info.value) and pet.series_instance_uid in str(info.value)
    assert "(CT, 5 file(s)" in str(info.value) and "--series-uid" in str(info.value)
    assert read_dicom_series(tmp_path / "study", ct.series_instance_uid).modality == "CT"
    chosen = read_dicom_series(tmp_path / "study", modality="PT")
    assert chosen.series_instance_uid == pet.series_instance_uid and any("only PT" in n for n in chosen.notes)
    with pytest.raises(DicomError, match="is not here"):
        read_dicom_series(tmp_path / "study", "1.2.3")


def test_mixed_modalities_in_one_series_are_refused(tmp_path):
    written = write_pet_series(pet_image(), tmp_path / "pet", IDENTITY)
    rewrite(written.paths[2], lambda ds: setattr(ds, "Modality", "CT"))
    with pytest.raises(DicomError, match=r"mixed modalities in series .*PT .*CT \(e\.g\. .*PT0003\.dcm\)"):
        read_dicom_series(tmp_path / "pet")


def test_corrupt_files_are_named(tmp_path):
    written = write_ct_series(ct_image(), tmp_path / "ct", IDENTITY)
    data = written.paths[1].read_bytes()
    written.paths[1].write_bytes(data[: len(data) - 20])  # truncated pixel data
    with pytest.raises(DicomError, match=r"CT0002\.dcm: has unreadable or truncated pixel data"):
        read_dicom_series(tmp_path / "ct")
    written.paths[1].write_bytes(data[:200])  # truncated header
    with pytest.raises(DicomError, match=r"CT0002\.dcm: is corrupt"):
        read_dicom_series(tmp_path / "ct")
    written.paths[1].write_bytes(b"not dicom at all" * 20)  # garbage with a DICOM suffix
    with pytest.raises(DicomError, match=r"CT0002\.dcm: is corrupt or not a valid DICOM file"):
        read_dicom_series(tmp_path / "ct")


def test_non_image_objects_and_other_files_are_skipped(tmp_path):
    written = write_ct_series(ct_image(), tmp_path / "ct", IDENTITY)
    (tmp_path / "ct" / "README.txt").write_text("exported by a PACS")
    rt = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    rt.Modality, rt.SOPClassUID = "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3"
    rt.file_meta.MediaStorageSOPClassUID = rt.SOPClassUID
    rt.SeriesInstanceUID = rt.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    rt.save_as(tmp_path / "ct" / "RS.dcm")
    series = read_dicom_series(tmp_path / "ct")
    assert series.image.GetSize()[2] == 5
    assert sorted(s.split(": ", 1)[1] for s in series.skipped) == ["RTSTRUCT object, not an image series",
                                                                    "not a DICOM file"]
    for path in written.paths:
        path.unlink()
    with pytest.raises(DicomError, match=r"no PET, CT or MR image files found .*RTSTRUCT x1"):
        read_dicom_series(tmp_path / "ct")


def test_missing_slice_gives_non_uniform_spacing(tmp_path):
    written = write_ct_series(ct_image(), tmp_path / "ct", IDENTITY)
    written.paths[2].unlink()
    with pytest.raises(DicomError, match=r"non-uniform slice spacing: the gap between CT0002\.dcm and CT0004\.dcm "
                                         r"is 5 mm while the series averages 3\.333 mm"):
        read_dicom_series(tmp_path / "ct")


def test_duplicate_positions_and_instances_are_refused(tmp_path):
    written = write_ct_series(ct_image(), tmp_path / "ct", IDENTITY)
    shutil.copy(written.paths[1], tmp_path / "ct" / "copy.dcm")
    with pytest.raises(DicomError, match="duplicate instance"):
        read_dicom_series(tmp_path / "ct")
    rewrite(tmp_path / "ct" / "copy.dcm", lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3.4"))
    with pytest.raises(DicomError, match="two slices at the same position"):
        read_dicom_series(tmp_path / "ct")


def test_inconsistent_or_missing_geometry_is_refused(tmp_path):
    written = write_ct_series(ct_image(), tmp_path / "ct", IDENTITY)
    rewrite(written.paths[3], lambda ds: setattr(ds, "PixelSpacing", [1.2, 0.9]))
    with pytest.raises(DicomError, match=r"CT0004\.dcm: PixelSpacing \(0028,0030\) differs"):
        read_dicom_series(tmp_path / "ct")
    original_spacing = pydicom.dcmread(written.paths[0]).PixelSpacing

    def drop_position(ds):
        ds.PixelSpacing = original_spacing
        del ds.ImagePositionPatient

    rewrite(written.paths[3], drop_position)
    with pytest.raises(DicomError, match=r"CT0004\.dcm: ImagePositionPatient \(0020,0032\) is missing"):
        read_dicom_series(tmp_path / "ct")


def test_sheared_stack_is_refused(tmp_path):
    written = write_ct_series(image_from_array(np.zeros((3, 4, 4)), units="HU"), tmp_path / "ct", IDENTITY)

    def shift(ds):  # move the last slice 2 mm within its own plane (a gantry-tilt-like stack)
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 2.0, *ds.ImagePositionPatient[1:]]

    rewrite(written.paths[2], shift)
    with pytest.raises(DicomError, match="not stacked along the slice normal"):
        read_dicom_series(tmp_path / "ct")


def test_missing_rescale_slope_on_pet_is_refused(tmp_path):
    written = write_pet_series(pet_image(), tmp_path / "pet", IDENTITY)
    rewrite(written.paths[0], lambda ds: delattr(ds, "RescaleSlope"))
    with pytest.raises(DicomError, match=r"PT0001\.dcm: RescaleSlope \(0028,1053\) is missing"):
        read_dicom_series(tmp_path / "pet")


def test_compressed_files_fall_back_to_gdcm_when_pydicom_cannot_decode(tmp_path, monkeypatch):
    image = ct_image((2, 8, 10))
    written = write_ct_series(image, tmp_path / "ct", IDENTITY)
    for path in written.paths:
        rewrite(path, lambda ds: ds.compress(pydicom.uid.RLELossless))

    def no_decoder(self):
        raise RuntimeError("no pixel data handler available for this transfer syntax")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    series = read_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(image))


def test_read_pet_suv_picks_the_pet_series_and_refuses_ct(tmp_path):
    acquisition = PetAcquisition(injected_dose_bq=300e6, injection_datetime=dt.datetime(2024, 1, 15, 8, 0),
                                 scan_datetime=dt.datetime(2024, 1, 15, 9, 0))
    pet = write_pet_series(pet_image(), tmp_path / "study" / "pet", IDENTITY, acquisition)
    write_ct_series(ct_image(), tmp_path / "study" / "ct", IDENTITY)
    suv, result = read_pet_suv(tmp_path / "study")
    # 70 kg / (300 MBq x 2^(-3600/6586.2))
    assert result.factor == pytest.approx(70_000 / (300e6 * 2 ** (-3600 / 6586.2)), rel=1e-12)
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), sitk.GetArrayFromImage(pet.suv_image), rtol=1e-5)
    assert get_units(suv) == "SUVbw"
    with pytest.raises(DicomError, match=r"no PT series here; image series found: .*\(CT, 5 file"):
        read_pet_suv(tmp_path / "study" / "ct")
