"""DICOM RT Dose export and import: attributes TPS check, exact values, geometry, refusals, independent readers.

Independent checks: pydicom (raw attributes and pixel data), ``dciodvfy`` and ``dcentvfy`` (Debian dicom3tools),
``plastimatch convert``. Expected values come from the dose given (a linear function of position), never
from the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from PETDosePaintingLib.errors import DicomError, GeometryError, InputError, OutputError, UnitsError
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
from PETDosePaintingLib.imaging.dicom_series import read_dicom_series
from PETDosePaintingLib.imaging.image import (
    FRAME_OF_REFERENCE_KEY,
    get_units,
    image_from_array,
    physical_grid,
    set_frame_of_reference,
)
from PETDosePaintingLib.imaging.io import read_image
from PETDosePaintingLib.imaging.rtdose import read_rtdose, write_rtdose

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
SHAPE = (7, 12, 10)  # k, j, i
SPACING = (2.0, 2.5, 3.0)
ORIGIN = (-12.0, -20.0, 40.0)


def require_tool(name: str) -> str:
    """The tool's path; skip (or fail when PETDP_REQUIRE_DICOM_TOOLS=1, as in CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian packages dicom3tools / plastimatch; .ci/run installs them)"
        if os.environ.get("PETDP_REQUIRE_DICOM_TOOLS") == "1":
            pytest.fail(message + " and PETDP_REQUIRE_DICOM_TOOLS=1")
        pytest.skip(message)
    return path


def dciodvfy(path) -> tuple[list[str], list[str], str]:
    """(error lines, warning lines, full output) of dciodvfy on one file."""
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    text = proc.stdout + proc.stderr
    lines = text.splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")], text


def as_16_bit_copy(path, out):
    """A copy of an RT Dose with its pixels re-encoded in 16 bits (Bits Allocated 16 is also legal for RT Dose,
    PS3.3 C.8.8.3.4.1). dicom3tools 1.00~20220618 aborts on any 32-bit pixel data (assertion
    ``bitsallocated <= bytesinword*8u`` in attrothr.cc), so the 32-bit file's other attributes are validated on
    this copy; the 32-bit pixel attributes are checked with pydicom."""
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = np.rint(stored / max(stored.max(), 1) * 65535).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(out, enforce_file_format=True)
    return out


def planning_ct(tmp_path, seed=11, shape=SHAPE, spacing=SPACING, origin=ORIGIN):
    values = np.full(shape, -1000, dtype=np.int16)
    values[:, 2:-2, 2:-2] = 40
    ct = image_from_array(values, spacing=spacing, origin=origin, units="HU")
    write_ct_series(ct, tmp_path / f"ct{seed}", DicomIdentity.synthetic(seed, patient_name="Dose^Test"))
    return read_dicom_series(tmp_path / f"ct{seed}")


def linear_dose(reference: sitk.Image, a=2.0, bx=0.05, by=-0.03, bz=0.1) -> sitk.Image:
    """D = a + bx x + by y + bz (z - 40) Gy on the reference grid (positive everywhere on it)."""
    x, y, z = physical_grid(reference)
    dose = a + bx * (x + 12.0) + by * (y - 10.0) + bz * (z - 40.0) + 60.0
    return image_from_array(dose.astype(np.float64), reference, units="Gy")


def frame_positions(ds) -> np.ndarray:
    """Voxel-centre LPS positions of every frame, from the raw attributes (PS3.3 C.7.6.2.1.1, C.8.8.3.2)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
    offsets = np.array([float(v) for v in ds.GridFrameOffsetVector])
    if offsets[0] != 0:
        offsets = offsets - offsets[0]
    k, j, i = np.meshgrid(np.arange(len(offsets)), np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    pos = ipp + i[..., None] * dc * row + j[..., None] * dr * col + offsets[k][..., None] * normal
    return pos


# --------------------------------------------------------------------------------------------------------------
# Writer: attributes
# --------------------------------------------------------------------------------------------------------------

def test_rtdose_attributes_a_tps_checks(tmp_path):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    result = write_rtdose(dose, tmp_path / "rd.dcm", ct, description="DPBN_presc_70-86Gy")
    ds = pydicom.dcmread(result.path)
    ct0 = pydicom.dcmread(ct.files[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == RT_DOSE_STORAGE and ds.Modality == "RTDOSE"
    for keyword in ("FrameOfReferenceUID", "StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyID"):
        assert ds.get(keyword) == ct0.get(keyword), keyword
    assert ds.SeriesInstanceUID != ct0.SeriesInstanceUID
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (32, 32, 31, 0)
    assert ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL" and ds.DoseSummationType == "PLAN"
    assert ds.NumberOfFrames == SHAPE[0] and (ds.Rows, ds.Columns) == SHAPE[1:]
    assert ds.FrameIncrementPointer == pydicom.tag.Tag(0x3004, 0x000C)
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert offsets == pytest.approx([3.0 * k for k in range(SHAPE[0])]) and offsets[0] == 0
    assert [float(v) for v in ds.PixelSpacing] == [2.5, 2.0]  # row spacing (y), column spacing (x)
    # Dose Grid Scaling = max / (2^32 - 1): the largest stored value uses the full 32-bit range.
    true_max = float(sitk.GetArrayFromImage(dose).max())
    assert float(ds.DoseGridScaling) == pytest.approx(true_max / (2**32 - 1), rel=1e-9)
    assert int(ds.pixel_array.max()) >= 2**32 - 2
    assert ds.SeriesDescription == "DPBN_presc_70-86Gy"
    # Referenced RT Plan: a minimal plan next to the dose, same patient, study and frame of reference.
    (ref,) = ds.ReferencedRTPlanSequence
    assert ref.ReferencedSOPClassUID == RT_PLAN_STORAGE
    plan = pydicom.dcmread(tmp_path / "rd_plan.dcm")
    assert result.plan_path == tmp_path / "rd_plan.dcm"
    assert plan.SOPClassUID == RT_PLAN_STORAGE and plan.Modality == "RTPLAN"
    assert plan.SOPInstanceUID == ref.ReferencedSOPInstanceUID == result.plan_sop_instance_uid
    assert plan.FrameOfReferenceUID == ct0.FrameOfReferenceUID and plan.StudyInstanceUID == ct0.StudyInstanceUID
    assert plan.RTPlanLabel and plan.RTPlanGeometry == "TREATMENT_DEVICE" and plan.ApprovalStatus == "UNAPPROVED"
    assert "BeamSequence" not in plan


def test_rtdose_values_equal_the_dose_given(tmp_path):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    result = write_rtdose(dose, tmp_path / "rd.dcm", ct)
    ds = pydicom.dcmread(result.path)
    # Independent decoding: stored values x Dose Grid Scaling at positions from the raw attributes.
    values = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    pos = frame_positions(ds)
    expected = 2.0 + 0.05 * (pos[..., 0] + 12.0) - 0.03 * (pos[..., 1] - 10.0) + 0.1 * (pos[..., 2] - 40.0) + 60.0
    assert np.abs(values - expected).max() <= 1e-6 * expected.max()
    assert result.quantisation_error_gy <= float(ds.DoseGridScaling)


def test_rtdose_round_trip_and_read_image(tmp_path):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    write_rtdose(dose, tmp_path / "rd.dcm", ct)
    for back in (read_rtdose(tmp_path / "rd.dcm"), read_image(tmp_path / "rd.dcm")):
        assert get_units(back) == "Gy"
        assert back.GetMetaData(FRAME_OF_REFERENCE_KEY) == ct.identity.frame_of_reference_uid
        assert back.GetSize() == dose.GetSize()
        assert np.allclose(back.GetOrigin(), dose.GetOrigin()) and np.allclose(back.GetSpacing(), dose.GetSpacing())
        assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(dose), rtol=1e-6, atol=0)


def test_uids_are_deterministic_and_follow_the_content(tmp_path):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    a = write_rtdose(dose, tmp_path / "a" / "rd.dcm", ct)
    b = write_rtdose(dose, tmp_path / "b" / "rd.dcm", ct)
    c = write_rtdose(linear_dose(ct.image, a=3.0), tmp_path / "c" / "rd.dcm", ct)
    assert a.sop_instance_uid == b.sop_instance_uid and a.plan_sop_instance_uid == b.plan_sop_instance_uid
    assert c.sop_instance_uid != a.sop_instance_uid and c.plan_sop_instance_uid != a.plan_sop_instance_uid
    assert pydicom.uid.UID(a.sop_instance_uid).is_valid


def test_without_plan_the_dose_still_references_one(tmp_path):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    with_plan = write_rtdose(dose, tmp_path / "a" / "rd.dcm", ct)
    without = write_rtdose(dose, tmp_path / "b" / "rd.dcm", ct, write_plan=False)
    assert without.plan_path is None and not (tmp_path / "b" / "rd_plan.dcm").exists()
    ds = pydicom.dcmread(without.path)
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == with_plan.plan_sop_instance_uid
    existing = "1.2.826.0.1.3680043.8.498.1"
    other = write_rtdose(dose, tmp_path / "c" / "rd.dcm", ct, referenced_plan_uid=existing, dose_type="EFFECTIVE",
                         summation_type="MULTI_PLAN")
    ds = pydicom.dcmread(other.path)
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == existing and other.plan_path is None
    assert ds.DoseType == "EFFECTIVE" and ds.DoseSummationType == "MULTI_PLAN"


def test_flipped_axes_are_reordered_exactly(tmp_path):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    array = sitk.GetArrayFromImage(dose)[::-1, :, ::-1]  # reverse k and i
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array))
    flipped.SetSpacing(dose.GetSpacing())
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    flipped.SetOrigin(dose.TransformIndexToPhysicalPoint((SHAPE[2] - 1, 0, SHAPE[0] - 1)))
    flipped.SetMetaData("PETDP_Units", "Gy")
    set_frame_of_reference(flipped, ct.identity.frame_of_reference_uid)
    result = write_rtdose(flipped, tmp_path / "rd.dcm", ct)
    assert any("reversed" in n for n in result.notes)
    back = read_rtdose(result.path)
    assert np.allclose(back.GetOrigin(), dose.GetOrigin())
    assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(dose), rtol=1e-6)


def test_dose_on_another_grid_in_the_same_frame(tmp_path):
    ct = planning_ct(tmp_path)
    grid = image_from_array(np.zeros((5, 6, 8)), spacing=(3.0, 3.0, 3.0), origin=(-10.0, -15.0, 43.0))
    dose = set_frame_of_reference(linear_dose(grid), ct.identity.frame_of_reference_uid)
    back = read_rtdose(write_rtdose(dose, tmp_path / "rd.dcm", ct).path)
    assert np.allclose(back.GetOrigin(), (-10.0, -15.0, 43.0)) and back.GetSize() == (8, 6, 5)


# --------------------------------------------------------------------------------------------------------------
# Writer: refusals (nothing written)
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["units", "negative", "oblique", "other_frame", "unknown_frame", "summation",
                                  "description", "suffix", "overwrite_ct"])
def test_write_refusals(tmp_path, case):
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    out = tmp_path / "out" / "rd.dcm"
    kwargs = {}
    expected = InputError
    if case == "units":
        dose.SetMetaData("PETDP_Units", "SUVbw")
        expected = UnitsError
    elif case == "negative":
        dose = image_from_array(sitk.GetArrayFromImage(dose) - 70.0, ct.image, units="Gy")
    elif case == "oblique":
        c, s = np.cos(0.3), np.sin(0.3)
        dose.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
        set_frame_of_reference(dose, ct.identity.frame_of_reference_uid)
        expected = GeometryError
    elif case == "other_frame":
        set_frame_of_reference(dose, "1.2.826.0.1.3680043.8.498.99")
        expected = GeometryError
    elif case == "unknown_frame":  # no frame recorded and not on the CT grid
        dose = linear_dose(image_from_array(np.zeros((5, 6, 8)), spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 40.0)))
        expected = GeometryError
    elif case == "summation":
        kwargs = {"summation_type": "FRACTION"}
    elif case == "description":
        kwargs = {"description": "x" * 65}
    elif case == "suffix":
        out = tmp_path / "out" / "rd.nrrd"
        expected = OutputError
    elif case == "overwrite_ct":
        out = ct.files[0]
        expected = OutputError
    with pytest.raises(expected):
        write_rtdose(dose, out, ct, **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------------------------
# Reader: forms of the Grid Frame Offset Vector and refusals, on hand-made files
# --------------------------------------------------------------------------------------------------------------

def handmade_rtdose(path, *, offsets, ipp=(10.0, -5.0, 100.0), units="GY", scaling="0.001", iop=(1, 0, 0, 0, 1, 0),
                    frames=3):
    """A minimal RT Dose written with pydicom only: 2 rows x 3 columns, stored value = 1000 x frame + 10 x row +
    column, so the dose in Gy is (1000 f + 10 r + c) x scaling."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_DOSE_STORAGE
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RT_DOSE_STORAGE, meta.MediaStorageSOPInstanceUID, "RTDOSE"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.8"
    ds.ImagePositionPatient = list(ipp)
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [4.0, 2.0]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2, 3, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = units, "PHYSICAL", "PLAN"
    ds.GridFrameOffsetVector = list(offsets)
    if scaling is not None:
        ds.DoseGridScaling = scaling
    f, r, c = np.meshgrid(np.arange(frames), np.arange(2), np.arange(3), indexing="ij")
    ds.PixelData = (1000 * f + 10 * r + c).astype("<u4").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_read_relative_offsets(tmp_path):
    image = read_rtdose(handmade_rtdose(tmp_path / "a.dcm", offsets=[0, 5, 10]))
    assert image.GetOrigin() == pytest.approx((10.0, -5.0, 100.0)) and image.GetSpacing() == pytest.approx((2, 4, 5))
    arr = sitk.GetArrayFromImage(image)
    assert arr[2, 1, 2] == pytest.approx((2000 + 10 + 2) * 0.001)
    assert image.GetMetaData(FRAME_OF_REFERENCE_KEY) == "1.2.826.0.1.3680043.8.498.8"


def test_read_absolute_offsets_form_b(tmp_path):
    image = read_rtdose(handmade_rtdose(tmp_path / "b.dcm", offsets=[100, 105, 110]))
    assert image.GetOrigin() == pytest.approx((10.0, -5.0, 100.0)) and image.GetSpacing()[2] == pytest.approx(5)
    # the physical point of frame 1 holds frame 1's values
    index = image.TransformPhysicalPointToIndex((10.0, -5.0, 105.0))
    assert sitk.GetArrayFromImage(image)[index[2], 0, 0] == pytest.approx(1.0)


def test_read_decreasing_offsets_are_reordered(tmp_path):
    image = read_rtdose(handmade_rtdose(tmp_path / "c.dcm", offsets=[0, -5, -10]))
    assert image.GetOrigin() == pytest.approx((10.0, -5.0, 90.0)) and image.GetSpacing()[2] == pytest.approx(5)
    arr = sitk.GetArrayFromImage(image)
    assert arr[0, 0, 0] == pytest.approx(2.0) and arr[2, 0, 0] == pytest.approx(0.0)  # frame 2 is at z = 90


def test_read_rotated_orientation_relative_offsets(tmp_path):
    # Rows along -x, columns along -y (e.g. a prone dose): the offsets run along row x column = +z.
    image = read_rtdose(handmade_rtdose(tmp_path / "d.dcm", offsets=[0, 5, 10], iop=(-1, 0, 0, 0, -1, 0)))
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.diag([-1, -1, 1]))
    assert image.TransformIndexToPhysicalPoint((2, 1, 2)) == pytest.approx((10.0 - 4.0, -5.0 - 4.0, 110.0))


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"units": "RELATIVE"}, UnitsError),
    ({"scaling": None}, DicomError),
    ({"offsets": [0, 5, 12]}, DicomError),  # non-uniform
    ({"offsets": [50, 55, 60]}, DicomError),  # neither relative nor the IPP z
    ({"offsets": [100, 105, 110], "iop": (0, 1, 0, 0, 0, -1)}, DicomError),  # form b with a non-axial orientation
    ({"offsets": [0, 5]}, DicomError),  # one offset per frame
])
def test_read_refusals(tmp_path, kwargs, error):
    args = {"offsets": [0, 5, 10], **kwargs}
    with pytest.raises(error):
        read_rtdose(handmade_rtdose(tmp_path / "x.dcm", **args))


def test_read_refuses_other_objects(tmp_path):
    ct = planning_ct(tmp_path)
    with pytest.raises(DicomError, match="not an RT Dose"):
        read_rtdose(ct.files[0])
    with pytest.raises(InputError, match="no such file"):
        read_rtdose(tmp_path / "missing.dcm")


# --------------------------------------------------------------------------------------------------------------
# Independent validators and readers
# --------------------------------------------------------------------------------------------------------------

def test_dciodvfy_and_dcentvfy_accept_the_dose_and_plan(tmp_path):
    ct = planning_ct(tmp_path)
    result = write_rtdose(linear_dose(ct.image), tmp_path / "rd.dcm", ct, description="DPBN test")
    checked = result.path
    errors, _, text = dciodvfy(checked)
    if "bitsallocated" in text and "Assertion" in text:  # dicom3tools cannot parse 32-bit pixels
        checked = as_16_bit_copy(result.path, tmp_path / "rd16.dcm")
        errors, _, text = dciodvfy(checked)
    assert "RTDose" in text and not errors, text
    plan_errors, _, plan_text = dciodvfy(result.plan_path)
    assert "RTPlan" in plan_text and not plan_errors, plan_text
    # dcentvfy: patient/study/series/frame-of-reference attributes consistent across CT, dose and plan.
    files = [*map(str, ct.files), str(checked), str(result.plan_path)]
    proc = subprocess.run([require_tool("dcentvfy"), *files], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")], proc.stdout


def test_plastimatch_reads_the_same_dose(tmp_path):
    tool = require_tool("plastimatch")
    ct = planning_ct(tmp_path)
    dose = linear_dose(ct.image)
    write_rtdose(dose, tmp_path / "rd.dcm", ct)
    proc = subprocess.run([tool, "convert", "--input", str(tmp_path / "rd.dcm"), "--output-dose-img",
                           str(tmp_path / "pl.nrrd")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    theirs = sitk.ReadImage(str(tmp_path / "pl.nrrd"))
    assert theirs.GetSize() == dose.GetSize()
    assert np.allclose(theirs.GetOrigin(), dose.GetOrigin(), atol=1e-3)
    assert np.allclose(theirs.GetSpacing(), dose.GetSpacing(), atol=1e-4)
    given = sitk.GetArrayFromImage(dose)
    assert np.abs(sitk.GetArrayFromImage(theirs) - given).max() <= 1e-3 * given.max()  # 0.1 %


def test_pydicom_example_relative_dose_is_refused():
    """pydicom's test RT Dose has Dose Units RELATIVE: it has no value in Gy."""
    from pydicom.data import get_testdata_file

    with pytest.raises(UnitsError, match="RELATIVE"):
        read_rtdose(get_testdata_file("rtdose.dcm"))
