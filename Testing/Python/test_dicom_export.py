"""DICOM writers: PET/CT/MR attributes, quantisation, geometry, reproducible UIDs, atomic folder writing."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import InputError, OutputError, UnitsError
from PETDosePaintingLib.imaging import dicom_export
from PETDosePaintingLib.imaging.dicom_export import (
    DicomIdentity,
    PetAcquisition,
    write_ct_series,
    write_mr_series,
    write_pet_series,
)
from PETDosePaintingLib.imaging.image import image_from_array

# Rotation about z by 30 degrees then about x by 10 degrees: an oblique, right-handed direction.
_C, _S = np.cos(np.radians(30)), np.sin(np.radians(30))
_CX, _SX = np.cos(np.radians(10)), np.sin(np.radians(10))
OBLIQUE = (np.array([[_C, -_S, 0], [_S, _C, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, _CX, -_SX], [0, _SX, _CX]]))

F18 = 6586.2
#: injection 09:00:00, scan exactly one F-18 half-life later: the decayed dose is half the injected dose.
ONE_HALF_LIFE = PetAcquisition(injected_dose_bq=400e6, injection_datetime=dt.datetime(2024, 3, 5, 9, 0, 0),
                               scan_datetime=dt.datetime(2024, 3, 5, 9, 0, 0) + dt.timedelta(seconds=F18))


def identity(seed=7, **changes):
    fields = {"patient_weight_kg": 80.0, "patient_size_m": 1.8, "patient_sex": "M", **changes}
    return DicomIdentity.synthetic(seed, **fields)


def suv_phantom(shape=(4, 6, 5)):
    k, j, i = np.indices(shape)
    suv = 1.0 + 0.5 * i + 0.25 * j + 2.0 * k  # slice k has its own maximum, so slopes differ per slice
    return image_from_array(suv, spacing=(2.0, 2.5, 3.0), origin=(-120.5, 33.25, -410.0),
                            direction=OBLIQUE.ravel(), units="SUVbw")


def test_pet_series_carries_the_pet_modules(tmp_path):
    result = write_pet_series(suv_phantom(), tmp_path / "pet", identity(), ONE_HALF_LIFE)
    assert [p.name for p in result.paths] == ["PT0001.dcm", "PT0002.dcm", "PT0003.dcm", "PT0004.dcm"]
    ds = pydicom.dcmread(result.paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.128" and ds.Modality == "PT"
    assert ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert {"ATTN", "DECY"} <= set(ds.CorrectedImage)
    assert float(ds.RescaleIntercept) == 0.0
    assert ds.SeriesDate == ds.AcquisitionDate == "20240305"
    assert ds.SeriesTime == ds.AcquisitionTime == "104946.200000"  # 09:00:00 + 6586.2 s
    assert float(ds.PatientWeight) == 80.0 and float(ds.PatientSize) == 1.8 and ds.PatientSex == "M"
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(item.RadionuclideTotalDose) == 400e6 and float(item.RadionuclideHalfLife) == F18
    assert item.RadiopharmaceuticalStartDateTime.startswith("20240305090000")
    assert item.RadiopharmaceuticalStartTime.startswith("090000")
    assert item.RadionuclideCodeSequence[0].CodeValue == "77004003"
    assert item.RadionuclideCodeSequence[0].CodeMeaning == "^18^Fluorine"
    assert item.Radiopharmaceutical == "Fluorodeoxyglucose F^18^"
    assert ds.FrameOfReferenceUID == identity().frame_of_reference_uid
    assert [pydicom.dcmread(p).ImageIndex for p in result.paths] == [1, 2, 3, 4]


def test_pet_values_from_suv_follow_the_hand_factor_and_use_the_full_range(tmp_path):
    phantom = suv_phantom()
    result = write_pet_series(phantom, tmp_path / "pet", identity(), ONE_HALF_LIFE)
    # SUVbw factor = 80 000 g / (400 MBq / 2) = 4e-4 g/Bq, so 1 SUV = 2500 Bq/mL
    assert result.suv_factor == pytest.approx(4e-4, rel=1e-12)
    assert result.decay_time_s == pytest.approx(F18, abs=1e-6)
    suv = sitk.GetArrayFromImage(phantom)
    for k, path in enumerate(result.paths):
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        assert ds.PixelRepresentation == 0 and stored.max() == 65535  # unsigned, full range per slice
        bqml = stored * float(ds.RescaleSlope)
        # quantisation: half a step of max/65535, relative to the slice maximum
        assert np.abs(bqml - 2500 * suv[k]).max() <= 0.5 / 65535 * 2500 * suv[k].max() * (1 + 1e-9)
    assert 0 < result.quantisation_error_rel <= 0.5 / 65535 * (1 + 1e-9)
    assert len(set(result.rescale_slopes)) == 4
    back = sitk.GetArrayFromImage(result.suv_image)
    assert np.abs(back - suv).max() <= 0.5 / 65535 * suv.max() * 1.001


def test_negative_pet_values_use_signed_pixels(tmp_path):
    values = np.full((2, 3, 3), 1000.0)
    values[0, 0, 0] = -50.0
    result = write_pet_series(image_from_array(values, units="Bq/mL"), tmp_path / "pet", identity())
    ds = pydicom.dcmread(result.paths[0])
    assert ds.PixelRepresentation == 1 and ds.pixel_array.max() == 32767
    assert ds.pixel_array[0, 0] * float(ds.RescaleSlope) == pytest.approx(-50.0, abs=1000 / 32767)


def test_written_geometry_is_the_image_geometry_in_lps(tmp_path):
    phantom = suv_phantom()
    result = write_pet_series(phantom, tmp_path / "pet", identity(), ONE_HALF_LIFE)
    for k, path in enumerate(result.paths):
        ds = pydicom.dcmread(path)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   phantom.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-9)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                                   np.concatenate([OBLIQUE[:, 0], OBLIQUE[:, 1]]), atol=1e-12)
        assert [float(v) for v in ds.PixelSpacing] == [2.5, 2.0]  # row spacing (j), column spacing (i)
        assert float(ds.SliceThickness) == 3.0 and (ds.Rows, ds.Columns) == (6, 5)


def test_left_handed_grid_is_written_as_the_same_voxels_on_a_right_handed_grid(tmp_path):
    values = np.arange(3 * 4 * 5, dtype=float).reshape(3, 4, 5)
    image = image_from_array(values, spacing=(1, 1, 2), origin=(10, 20, 30), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1),
                             units="HU")
    result = write_ct_series(image, tmp_path / "ct", identity())
    out = result.image
    assert np.linalg.det(np.reshape(out.GetDirection(), (3, 3))) > 0
    for index in [(0, 0, 0), (4, 3, 2), (2, 1, 1)]:
        point = image.TransformIndexToPhysicalPoint(index)
        assert out[out.TransformPhysicalPointToIndex(point)] == image[index]
    assert float(pydicom.dcmread(result.paths[0]).ImagePositionPatient[2]) == 30 - 2 * 2


def test_ct_is_integer_hu_with_unit_rescale(tmp_path):
    values = np.array([[[-1024.4, 0.6], [3071.0, 12.5]]] * 2)
    result = write_ct_series(image_from_array(values, units="HU"), tmp_path / "ct", identity())
    ds = pydicom.dcmread(result.paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.RescaleType == "HU"
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    assert ds.pixel_array.tolist() == [[-1024, 1], [3071, 12]]  # round half to even for 12.5
    with pytest.raises(InputError, match="do not fit 16-bit"):
        write_ct_series(image_from_array(np.full((1, 2, 2), 40000.0), units="HU"), tmp_path / "ct2", identity())
    with pytest.raises(UnitsError):
        write_ct_series(image_from_array(np.zeros((1, 2, 2)), units="Bq/mL"), tmp_path / "ct3", identity())


def test_mr_uses_one_slope_for_the_series(tmp_path):
    values = np.stack([np.full((3, 3), 10.0), np.full((3, 3), 0.25)])
    result = write_mr_series(image_from_array(values), tmp_path / "mr", identity(), echo_time_ms=90)
    slopes = {float(pydicom.dcmread(p).RescaleSlope) for p in result.paths}
    assert len(slopes) == 1 and slopes.pop() == pytest.approx(10.0 / 65535, rel=1e-12)
    ds = pydicom.dcmread(result.paths[1])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and float(ds.EchoTime) == 90.0
    assert ds.pixel_array[0, 0] == round(0.25 / (10 / 65535))  # relative intensities kept across slices
    exact = write_mr_series(image_from_array(np.arange(8.0).reshape(2, 2, 2)), tmp_path / "mr2", identity())
    assert exact.quantisation_error_rel == 0.0 and exact.rescale_slopes == (1.0, 1.0)


def test_uids_are_deterministic_from_the_seed_and_valid(tmp_path):
    a = write_ct_series(image_from_array(np.zeros((2, 2, 2)), units="HU"), tmp_path / "a", identity(seed=3))
    b = write_ct_series(image_from_array(np.zeros((2, 2, 2)), units="HU"), tmp_path / "b", identity(seed=3))
    c = write_ct_series(image_from_array(np.zeros((2, 2, 2)), units="HU"), tmp_path / "c", identity(seed=4))
    assert a.series_instance_uid == b.series_instance_uid != c.series_instance_uid
    assert a.sop_instance_uids == b.sop_instance_uids and len(set(a.sop_instance_uids + c.sop_instance_uids)) == 4
    assert all(pydicom.uid.UID(u).is_valid for u in (*a.sop_instance_uids, a.series_instance_uid))
    assert [p.read_bytes() for p in a.paths] == [p.read_bytes() for p in b.paths]  # reproducible files


def test_output_folder_must_be_new_or_empty_and_is_written_atomically(tmp_path, monkeypatch):
    image = image_from_array(np.zeros((3, 2, 2)), units="HU")
    (tmp_path / "empty").mkdir()
    write_ct_series(image, tmp_path / "empty", identity())
    assert len(list((tmp_path / "empty").iterdir())) == 3
    with pytest.raises(OutputError, match="new or empty folder"):
        write_ct_series(image, tmp_path / "empty", identity())

    calls = []

    def failing_write(path, ds, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return pydicom.dcmwrite(path, ds, **kwargs)

    monkeypatch.setattr(dicom_export.pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_ct_series(image, tmp_path / "fails", identity())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no partial series, no temporary folder


def test_identity_is_required_and_validated(tmp_path):
    with pytest.raises(InputError, match="patient_weight_kg is needed"):
        write_pet_series(suv_phantom(), tmp_path / "p", DicomIdentity.synthetic(1))
    with pytest.raises(InputError, match="not a valid DICOM UID"):
        write_ct_series(image_from_array(np.zeros((1, 2, 2)), units="HU"), tmp_path / "c", DicomIdentity())
    with pytest.raises(UnitsError):
        write_pet_series(image_from_array(np.ones((1, 2, 2)), units="HU"), tmp_path / "q", identity())
    late = PetAcquisition(injection_datetime=dt.datetime(2024, 1, 1, 11), scan_datetime=dt.datetime(2024, 1, 1, 10))
    with pytest.raises(InputError, match="before injection"):
        write_pet_series(suv_phantom(), tmp_path / "r", identity(), late)


def test_identity_round_trips_through_a_dataset(tmp_path):
    ident = identity(patient_name="Doe^Jane", patient_birth_date="19600102", patient_sex="F")
    result = write_ct_series(image_from_array(np.zeros((1, 2, 2)), units="HU"), tmp_path / "ct", ident)
    assert DicomIdentity.from_dataset(pydicom.dcmread(result.paths[0])) == ident
