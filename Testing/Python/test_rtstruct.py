"""DICOM RT Structure Set: masks -> contours -> masks exactly; attributes TPS check; real-world files.

Independent checks: hand-made structure sets written with pydicom alone (holes, keyholes, islands, missing
referenced instances, contours between slices, POINT/OPEN contours), ``dciodvfy`` (dicom3tools) and
``plastimatch convert``. Expected voxel counts come from the polygons' geometry (voxel centres inside).
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
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from PETDosePaintingLib.errors import GeometryError, InputError, OutputError
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
from PETDosePaintingLib.imaging.dicom_series import read_dicom_series
from PETDosePaintingLib.imaging.image import FRAME_OF_REFERENCE_KEY, image_from_array, make_grid, set_frame_of_reference
from PETDosePaintingLib.imaging.resample import resample_mask
from PETDosePaintingLib.imaging.rtstruct import (
    NOTES_KEY,
    load_rtstruct,
    read_rtstruct,
    write_rtstruct,
)

RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FOR_UID = "1.2.826.0.1.3680043.8.498.4242"
C = "CLOSED_PLANAR"


def require_tool(name: str) -> str:
    """The tool's path; skip (or fail when PETDP_REQUIRE_DICOM_TOOLS=1, as in CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian packages dicom3tools / plastimatch; .ci/run installs them)"
        if os.environ.get("PETDP_REQUIRE_DICOM_TOOLS") == "1":
            pytest.fail(message + " and PETDP_REQUIRE_DICOM_TOOLS=1")
        pytest.skip(message)
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def planning_ct(tmp_path, shape=(9, 30, 28), spacing=(1.5, 1.25, 2.5), origin=(-20.0, -18.0, 30.0), seed=21):
    ct = image_from_array(np.full(shape, -1000, dtype=np.int16), spacing=spacing, origin=origin, units="HU")
    write_ct_series(ct, tmp_path / "ct", DicomIdentity.synthetic(seed))
    return read_dicom_series(tmp_path / "ct")


def sample_masks(shape=(9, 30, 28)):
    """Shapes with holes, islands, diagonal contacts, single voxels, and a mask touching the image border."""
    k, j, i = np.indices(shape)
    r2 = (i - 13.0) ** 2 + (j - 14.0) ** 2
    ring = (r2 <= 64) & (r2 > 9) & (k >= 1) & (k <= 6)  # a hole on every slice
    ring[4, 14, 13] = True  # an island inside the hole on one slice
    islands = np.zeros(shape, bool)
    islands[2:5, 2:5, 2:5] = True
    islands[2:5, 20:24, 20:23] = True
    islands[3, 10, 10] = islands[3, 11, 11] = True  # touching diagonally
    islands[6, 25, 3] = True  # a single voxel
    border = np.zeros(shape, bool)
    border[0:3, 0:6, 20:28] = True  # touches the first slice and two image edges
    return {"PTV_DP_7000": ring, "GTV_nodes": islands, "External": border}


# --------------------------------------------------------------------------------------------------------------
# Round trip and attributes
# --------------------------------------------------------------------------------------------------------------

def test_round_trip_is_exact(tmp_path):
    ct = planning_ct(tmp_path)
    arrays = sample_masks()
    masks = {name: image_from_array(a, ct.image) for name, a in arrays.items()}
    path = write_rtstruct(masks, ct, tmp_path / "rs.dcm")
    for subsample in (1, 3):
        back = read_rtstruct(path, ct, subsample=subsample)
        assert list(back) == list(arrays)
        for name, array in arrays.items():
            got = sitk.GetArrayFromImage(back[name]).astype(bool)
            assert np.array_equal(got, array), (name, subsample, np.count_nonzero(got != array))
            assert dice(got, array) >= 0.98
            assert back[name].GetMetaData(FRAME_OF_REFERENCE_KEY) == ct.identity.frame_of_reference_uid
    # reading onto the CT image tagged with its frame of reference is the same
    image = set_frame_of_reference(sitk.Image(ct.image), ct.identity.frame_of_reference_uid)
    assert np.array_equal(sitk.GetArrayFromImage(read_rtstruct(path, image, ["GTV_nodes"])["GTV_nodes"]),
                          arrays["GTV_nodes"])


def test_structure_set_attributes(tmp_path):
    ct = planning_ct(tmp_path)
    arrays = sample_masks()
    masks = {name: image_from_array(a, ct.image) for name, a in arrays.items()}
    path = write_rtstruct(masks, ct, tmp_path / "rs.dcm", colours={"GTV_nodes": (10, 20, 30)}, label="LEVELS",
                          interpreted_types={"GTV_nodes": "GTV"})
    ds = pydicom.dcmread(path)
    ct_headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct.files]
    assert ds.SOPClassUID == RT_STRUCT_STORAGE and ds.Modality == "RTSTRUCT"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.StructureSetLabel == "LEVELS"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert ds.get(keyword) == ct_headers[0].get(keyword)
    (for_item,) = ds.ReferencedFrameOfReferenceSequence
    assert for_item.FrameOfReferenceUID == ct_headers[0].FrameOfReferenceUID
    (study,) = for_item.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == ct_headers[0].StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct_headers[0].SeriesInstanceUID
    listed = [c.ReferencedSOPInstanceUID for c in series.ContourImageSequence]
    assert sorted(listed) == sorted(h.SOPInstanceUID for h in ct_headers)  # every CT slice
    by_uid = {h.SOPInstanceUID: h for h in ct_headers}
    numbers = [r.ROINumber for r in ds.StructureSetROISequence]
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(arrays)
    assert [r.ReferencedROINumber for r in ds.ROIContourSequence] == numbers
    assert [o.ReferencedROINumber for o in ds.RTROIObservationsSequence] == numbers
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["PTV", "GTV", "EXTERNAL"]
    assert all(r.ReferencedFrameOfReferenceUID == ds.FrameOfReferenceUID for r in ds.StructureSetROISequence)
    assert [int(c) for c in ds.ROIContourSequence[1].ROIDisplayColor] == [10, 20, 30]
    for item in ds.ROIContourSequence:
        for contour in item.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            data = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert contour.NumberOfContourPoints == len(data) >= 3
            (ref,) = contour.ContourImageSequence
            assert ref.ReferencedSOPClassUID == CT_STORAGE
            slice_z = float(by_uid[ref.ReferencedSOPInstanceUID].ImagePositionPatient[2])
            assert np.all(data[:, 2] == slice_z)  # on the referenced CT slice, exactly
            assert not np.array_equal(data[0], data[-1])  # the first point is not repeated


def _signed_area(points_xy: np.ndarray) -> float:
    x, y = points_xy[:, 0], points_xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_contour_area_and_hole_orientation(tmp_path):
    ct = planning_ct(tmp_path)
    shape = ct.image.GetSize()[::-1]
    rect = np.zeros(shape, bool)
    rect[4, 10:12, 5:8] = True  # 3 voxels along x, 2 along y
    ring = np.zeros(shape, bool)
    ring[4, 5:12, 14:21] = True
    ring[4, 7:10, 16:19] = False  # a 3 x 3 hole
    path = write_rtstruct({"Rect": image_from_array(rect, ct.image), "Ring": image_from_array(ring, ct.image)}, ct,
                          tmp_path / "rs.dcm", upsample=4)
    ds = pydicom.dcmread(path)
    pixel = 1.5 * 1.25
    (rect_contour,) = ds.ROIContourSequence[0].ContourSequence
    area = _signed_area(np.array([float(v) for v in rect_contour.ContourData]).reshape(-1, 3)[:, :2])
    # Voxel boundary with each of the 4 corners cut by a right triangle of legs 1/8 voxel (upsample 4).
    # counter-clockwise (positive) outer boundary; coordinates are written to 0.1 micrometre
    assert area == pytest.approx((6 - 4 * (1 / 8) ** 2 / 2) * pixel, abs=1e-3)
    ring_contours = ds.ROIContourSequence[1].ContourSequence
    assert len(ring_contours) == 2  # the hole is its own contour
    areas = sorted((_signed_area(np.array([float(v) for v in c.ContourData]).reshape(-1, 3)[:, :2])
                    for c in ring_contours), key=abs)
    assert areas[0] < 0 < areas[1]  # the hole runs clockwise, the outer boundary counter-clockwise
    # the marching-squares cut at each of the hole's 4 corners also takes 1/128 voxel from the hole polygon,
    # so the ring's even-odd area is exactly 49 - 9 = 40 voxels
    assert abs(areas[0]) == pytest.approx((9 - 4 * (1 / 8) ** 2 / 2) * pixel, abs=1e-3)
    assert abs(areas[1]) == pytest.approx((49 - 4 * (1 / 8) ** 2 / 2) * pixel, abs=1e-3)


def test_round_trip_on_a_ct_rotated_in_plane(tmp_path):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    values = np.full((5, 16, 18), -1000, dtype=np.int16)
    ct_image = image_from_array(values, spacing=(1.5, 2.0, 3.0), origin=(-10.0, 4.0, 30.0),
                                direction=(c, -s, 0, s, c, 0, 0, 0, 1), units="HU")
    write_ct_series(ct_image, tmp_path / "ct", DicomIdentity.synthetic(8))
    ct = read_dicom_series(tmp_path / "ct")
    array = np.zeros((5, 16, 18), bool)
    array[1:4, 3:12, 4:15] = True
    array[2, 6:9, 7:10] = False
    path = write_rtstruct({"GTV": image_from_array(array, ct.image)}, ct, tmp_path / "rs.dcm")
    assert np.array_equal(sitk.GetArrayFromImage(read_rtstruct(path, ct)["GTV"]).astype(bool), array)


def test_mask_on_another_grid_is_resampled_by_nearest(tmp_path):
    ct = planning_ct(tmp_path)
    coarse = make_grid((10, 12, 4), (3.0, 2.5, 5.0), origin=(-19.25, -17.375, 31.25))
    array = np.zeros((4, 12, 10), bool)
    array[1:3, 3:8, 2:6] = True
    mask = image_from_array(array, coarse)
    expected = sitk.GetArrayFromImage(resample_mask(mask, ct.image)).astype(bool)
    path = write_rtstruct({"CTV_low": mask}, ct, tmp_path / "rs.dcm")
    got = sitk.GetArrayFromImage(read_rtstruct(path, ct)["CTV_low"]).astype(bool)
    assert np.array_equal(got, expected)
    # The CT's voxels span z 28.75..51.25 mm; a mask slice at z = 56.25 mm lies outside it: refused.
    outside = make_grid((10, 12, 4), (3.0, 2.5, 5.0), origin=(-19.25, -17.375, 41.25))
    array_out = np.zeros((4, 12, 10), bool)
    array_out[3, 3:5, 3:5] = True
    with pytest.raises(GeometryError, match="outside the planning CT"):
        write_rtstruct({"CTV_out": image_from_array(array_out, outside)}, ct, tmp_path / "rs2.dcm")


def test_very_long_contour_switches_to_implicit_vr(tmp_path):
    # A comb 1200 voxels wide: ~4 vertices per tooth, far over the 65534-byte limit of a DS value in explicit VR.
    shape = (1, 6, 1200)
    ct_image = image_from_array(np.full(shape, -1000, np.int16), spacing=(0.5, 0.5, 2.0), origin=(-300.0, 0, 0),
                                units="HU")
    write_ct_series(ct_image, tmp_path / "ct", DicomIdentity.synthetic(5))
    ct = read_dicom_series(tmp_path / "ct")
    comb = np.zeros(shape, bool)
    comb[0, 1:3, :] = True
    comb[0, 3, ::2] = True
    path = write_rtstruct({"Comb": image_from_array(comb, ct.image)}, ct, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert len(ds.ROIContourSequence[0].ContourSequence[0].ContourData) > 65534 // 8
    assert np.array_equal(sitk.GetArrayFromImage(read_rtstruct(path, ct)["Comb"]).astype(bool), comb)


@pytest.mark.parametrize("case", ["long_name", "case_duplicate", "bad_type", "other_frame", "empty", "colour",
                                  "unknown_type_name", "suffix", "label"])
def test_write_refusals(tmp_path, case):
    ct = planning_ct(tmp_path)
    arrays = sample_masks()
    masks = {"PTV_DP_7000": image_from_array(arrays["PTV_DP_7000"], ct.image)}
    kwargs = {}
    out = tmp_path / "out" / "rs.dcm"
    expected = InputError
    if case == "long_name":
        masks = {"PTV_dose_painting_level_1": masks["PTV_DP_7000"]}
    elif case == "case_duplicate":
        masks["ptv_dp_7000"] = masks["PTV_DP_7000"]
    elif case == "bad_type":
        kwargs = {"interpreted_types": {"PTV_DP_7000": "TARGET"}}
    elif case == "other_frame":
        set_frame_of_reference(masks["PTV_DP_7000"], FOR_UID)
        expected = GeometryError
    elif case == "empty":
        masks["Empty"] = image_from_array(np.zeros_like(arrays["PTV_DP_7000"]), ct.image)
    elif case == "colour":
        kwargs = {"colours": {"PTV_DP_7000": (300, 0, 0)}}
    elif case == "unknown_type_name":
        kwargs = {"interpreted_types": {"NotAMask": "PTV"}}
    elif case == "suffix":
        out = tmp_path / "out" / "rs.nrrd"
        expected = OutputError
    elif case == "label":
        kwargs = {"label": "a label longer than sixteen"}
    with pytest.raises(expected):
        write_rtstruct(masks, ct, out, **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------------------------
# Real-world-like structure sets, hand-made with pydicom
# --------------------------------------------------------------------------------------------------------------

def square(x0, x1, y0, y1, z):
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=float)


def handmade_rtstruct(path, rois, *, for_uid=FOR_UID, preamble=True):
    """``rois``: list of (name, [(geometric type, (n, 3) points), ...]). Contour Image Sequences reference CT
    instances that do not exist anywhere."""
    ds = Dataset()
    if preamble:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = RT_STRUCT_STORAGE
        meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.11"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RT_STRUCT_STORAGE, "1.2.826.0.1.3680043.8.498.11", "RTSTRUCT"
    ds.StructureSetLabel = "HANDMADE"
    for_item = Dataset()
    for_item.FrameOfReferenceUID = for_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([for_item])
    roi_items, contour_items, obs_items = [], [], []
    for number, (name, contours) in enumerate(rois, start=1):
        item = Dataset()
        item.ROINumber, item.ROIName, item.ReferencedFrameOfReferenceUID = number, name, for_uid
        roi_items.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = number
        seq = []
        for n, (kind, points) in enumerate(contours):
            c = Dataset()
            ref = Dataset()
            ref.ReferencedSOPClassUID = CT_STORAGE
            ref.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.999.{number}.{n}"  # not present anywhere
            c.ContourImageSequence = Sequence([ref])
            c.ContourGeometricType = kind
            c.NumberOfContourPoints = len(points)
            c.ContourData = [f"{v:.6g}" for v in np.asarray(points).ravel()]
            seq.append(c)
        rc.ContourSequence = Sequence(seq)
        contour_items.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber, obs.RTROIInterpretedType = number, number, "ORGAN"
        obs_items.append(obs)
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(obs_items)
    if preamble:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # a bare dataset, Implicit VR Little Endian, as some old exports are
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    return path


def target_grid(for_uid=FOR_UID):
    """20 x 20 voxels of 1 mm (centres at integer x, y = 0..19), 8 slices 2.5 mm apart (z = 0, 2.5, ..., 17.5)."""
    grid = make_grid((20, 20, 8), (1.0, 1.0, 2.5))
    return set_frame_of_reference(grid, for_uid) if for_uid else grid


def test_holes_islands_and_keyholes(tmp_path):
    z = 5.0  # slice k = 2
    keyhole = np.array([[1.5, 1.5], [11.5, 1.5], [11.5, 11.5], [6.5, 11.5], [6.5, 8.5], [8.5, 8.5], [8.5, 4.5],
                        [4.5, 4.5], [4.5, 8.5], [6.5, 8.5], [6.5, 11.5], [1.5, 11.5]])
    path = handmade_rtstruct(tmp_path / "rs.dcm", [
        ("Hole", [(C, square(1.5, 11.5, 1.5, 11.5, z)), (C, square(4.5, 8.5, 4.5, 8.5, z))]),
        ("Islands", [(C, square(1.5, 3.5, 1.5, 3.5, z)), (C, square(10.5, 12.5, 10.5, 12.5, z)),
                     (C, square(13.5, 16.5, 13.5, 16.5, z + 5))]),
        ("Keyhole", [(C, np.column_stack([keyhole, np.full(len(keyhole), z)]))]),
        ("XorType", [("CLOSEDPLANAR_XOR", square(1.5, 11.5, 1.5, 11.5, z)),
                     ("CLOSEDPLANAR_XOR", square(4.5, 8.5, 4.5, 8.5, z))]),
        ("IslandInHole", [(C, square(1.5, 11.5, 1.5, 11.5, z)),
                          (C, square(3.5, 9.5, 3.5, 9.5, z)),
                          (C, square(5.5, 7.5, 5.5, 7.5, z))]),
    ])
    masks = read_rtstruct(path, target_grid())
    arrays = {n: sitk.GetArrayFromImage(m).astype(bool) for n, m in masks.items()}
    # centres 2..11 inside the outer square (10 x 10), 5..8 inside the hole (4 x 4)
    assert np.count_nonzero(arrays["Hole"][2]) == 100 - 16 and not arrays["Hole"][2, 6, 6]
    assert np.count_nonzero(arrays["Keyhole"]) == 100 - 16
    assert np.array_equal(arrays["Keyhole"], arrays["Hole"]) and np.array_equal(arrays["XorType"], arrays["Hole"])
    assert np.count_nonzero(arrays["Islands"][2]) == 4 + 4 and np.count_nonzero(arrays["Islands"][4]) == 9
    # outer 10 x 10, minus 6 x 6 (centres 4..9), plus 2 x 2 (centres 6..7)
    assert np.count_nonzero(arrays["IslandInHole"]) == 100 - 36 + 4 and arrays["IslandInHole"][2, 6, 6]
    # each plane alone: the only slice filled is the contour's
    assert np.count_nonzero(arrays["Hole"].reshape(8, -1).any(axis=1)) == 1


def test_contours_between_slices_and_on_some_slices_only(tmp_path):
    # Planes 5 mm apart at z = 1.2 and 6.2: slabs [-1.3, 3.7) and [3.7, 8.7) hold the slices z = 0, 2.5 and 5, 7.5.
    path = handmade_rtstruct(tmp_path / "rs.dcm", [
        ("Offgrid", [(C, square(1.5, 5.5, 1.5, 5.5, 1.2)), (C, square(1.5, 5.5, 1.5, 5.5, 6.2))]),
        ("Sparse", [(C, square(1.5, 3.5, 1.5, 3.5, 0.0)), (C, square(1.5, 3.5, 1.5, 3.5, 10.0)),
                    (C, square(1.5, 3.5, 1.5, 3.5, 15.0))]),
        ("Single", [(C, square(1.5, 3.5, 1.5, 3.5, 12.4))]),
    ])
    arrays = {n: sitk.GetArrayFromImage(m).astype(bool) for n, m in read_rtstruct(path, target_grid()).items()}
    assert arrays["Offgrid"].reshape(8, -1).sum(axis=1).tolist() == [16, 16, 16, 16, 0, 0, 0, 0]
    # Planes at 0, 10, 15 mm: thickness 5 mm (smallest gap); slabs [-2.5, 2.5), [7.5, 12.5), [12.5, 17.5):
    # the gap between 2.5 and 7.5 mm stays empty (no contour there), as drawn.
    assert arrays["Sparse"].reshape(8, -1).any(axis=1).tolist() == [True, False, False, True, True, True, True,
                                                                    False]
    # one plane: its slab is the grid's slice spacing, so it lands on the nearest slice (z = 12.5)
    assert arrays["Single"].reshape(8, -1).any(axis=1).tolist() == [False] * 5 + [True] + [False] * 2


def test_point_open_and_tilted_contours_are_ignored_with_notes(tmp_path):
    tilted = np.array([[1.5, 1.5, 0.0], [5.5, 1.5, 2.0], [5.5, 5.5, 2.0], [1.5, 5.5, 0.0]])
    path = handmade_rtstruct(tmp_path / "rs.dcm", [
        ("Mixed", [("CLOSED_PLANAR", square(1.5, 5.5, 1.5, 5.5, 5.0)), ("POINT", np.array([[3.0, 3.0, 5.0]])),
                   ("OPEN_PLANAR", square(10.5, 15.5, 10.5, 15.5, 5.0)), ("CLOSED_PLANAR", tilted)]),
        ("OnlyPoints", [("POINT", np.array([[3.0, 3.0, 5.0]]))]),
    ], preamble=False)
    masks = read_rtstruct(path, target_grid())
    mixed = sitk.GetArrayFromImage(masks["Mixed"]).astype(bool)
    assert np.count_nonzero(mixed) == 16 and np.count_nonzero(mixed[2]) == 16  # the OPEN square is not filled
    notes = masks["Mixed"].GetMetaData(NOTES_KEY)
    assert "POINT" in notes and "OPEN_PLANAR" in notes and "not parallel" in notes
    assert not sitk.GetArrayFromImage(masks["OnlyPoints"]).any()
    assert "empty" in masks["OnlyPoints"].GetMetaData(NOTES_KEY)


def test_unknown_roi_names_are_listed(tmp_path):
    path = handmade_rtstruct(tmp_path / "rs.dcm", [("Body", [("CLOSED_PLANAR", square(0.5, 9.5, 0.5, 9.5, 0))]),
                                                   ("Cord", [("CLOSED_PLANAR", square(2.5, 3.5, 2.5, 3.5, 0))])])
    with pytest.raises(InputError, match=r"'Brainstem'.*'Body', 'Cord'"):
        read_rtstruct(path, target_grid(), ["Body", "Brainstem"])


def test_frame_of_reference_mismatch_is_refused(tmp_path):
    path = handmade_rtstruct(tmp_path / "rs.dcm", [("Body", [("CLOSED_PLANAR", square(0.5, 9.5, 0.5, 9.5, 0))])])
    with pytest.raises(GeometryError, match="frame of reference"):
        read_rtstruct(path, target_grid("1.2.826.0.1.3680043.8.498.5"))
    unchecked = read_rtstruct(path, target_grid(for_uid=None))["Body"]  # no frame recorded: a note, not an error
    assert "could not be checked" in unchecked.GetMetaData(NOTES_KEY)


def test_duplicate_names_are_told_apart(tmp_path):
    path = handmade_rtstruct(tmp_path / "rs.dcm", [("PTV", [("CLOSED_PLANAR", square(0.5, 2.5, 0.5, 2.5, 0))]),
                                                   ("PTV", [("CLOSED_PLANAR", square(5.5, 9.5, 5.5, 9.5, 0))])])
    structure = load_rtstruct(path)
    assert structure.names == ("PTV (ROI 1)", "PTV (ROI 2)") and structure.notes
    masks = read_rtstruct(path, target_grid())
    assert np.count_nonzero(sitk.GetArrayFromImage(masks["PTV (ROI 2)"])) == 16


# --------------------------------------------------------------------------------------------------------------
# Independent validators and readers
# --------------------------------------------------------------------------------------------------------------

def test_dciodvfy_accepts_the_structure_set(tmp_path):
    tool = require_tool("dciodvfy")
    ct = planning_ct(tmp_path)
    masks = {name: image_from_array(a, ct.image) for name, a in sample_masks().items()}
    path = write_rtstruct(masks, ct, tmp_path / "rs.dcm")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120, check=False)
    text = proc.stdout + proc.stderr
    assert "RTStructureSet" in text
    assert not [ln for ln in text.splitlines() if ln.startswith("Error")], text


def _plastimatch_masks(tool, rs, ct_dir, out, xor):
    args = [tool, "convert", "--input", str(rs), "--referenced-ct", str(ct_dir), "--output-prefix", str(out),
            "--prefix-format", "nrrd"]
    proc = subprocess.run(args + (["--xor-contours"] if xor else []), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {p.stem: sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(bool) for p in out.glob("*.nrrd")}


def test_plastimatch_rasterises_the_same_masks(tmp_path):
    tool = require_tool("plastimatch")
    ct = planning_ct(tmp_path)
    arrays = sample_masks()
    masks = {name: image_from_array(a, ct.image) for name, a in arrays.items()}
    path = write_rtstruct(masks, ct, tmp_path / "rs.dcm")
    theirs = _plastimatch_masks(tool, path, ct.directory, tmp_path / "xor", xor=True)
    for name, array in arrays.items():
        assert dice(theirs[name], array) >= 0.98, name
    # plastimatch's default ORs the contours of a plane: shapes without holes agree, holes are filled.
    ored = _plastimatch_masks(tool, path, ct.directory, tmp_path / "or", xor=False)
    assert dice(ored["GTV_nodes"], arrays["GTV_nodes"]) >= 0.98
    assert dice(ored["External"], arrays["External"]) >= 0.98


def test_pydicom_example_structure_set():
    """A real-world file from pydicom's test data: no preamble, POINT ROIs (isocentres), a referenced series
    without Contour Image Sequence, and an EXTERNAL drawn as 400 x 300 mm rectangles on planes 10 mm apart."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("rtstruct.dcm")
    structure = load_rtstruct(path)
    assert structure.names == ("patient", "Isocenter 1", "Isocenter 2")
    grid = set_frame_of_reference(make_grid((100, 80, 10), (5.0, 5.0, 5.0), origin=(-247.5, -197.5, -212.5)),
                                  structure.frame_of_reference_uids[0])
    masks = read_rtstruct(path, grid)
    body = sitk.GetArrayFromImage(masks["patient"]).astype(bool)
    # centres inside |x| < 200 (80 columns) and |y| < 150 (60 rows); planes -200, -190, -180 with 10 mm slabs
    # hold the slices at z = -202.5 ... -177.5 (6 slices of 5 mm)
    assert np.count_nonzero(body) == 6 * 80 * 60
    assert body.reshape(10, -1).any(axis=1).tolist() == [False] * 2 + [True] * 6 + [False] * 2  # k = 2..7
    for iso in ("Isocenter 1", "Isocenter 2"):
        assert not sitk.GetArrayFromImage(masks[iso]).any() and "POINT" in masks[iso].GetMetaData(NOTES_KEY)
