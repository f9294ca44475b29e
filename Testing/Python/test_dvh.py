"""DVH and dose statistics: hand-computed samples, a sphere in a linear dose gradient (analytic answers), and
agreement with an independent calculator (dicompyler-core) on public example data and on our own exports."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from scipy.optimize import brentq

from PETDosePaintingLib.dosepainting.dvh import (
    dose_at_volume,
    dvh_from_contours,
    dvh_from_mask,
    dvh_from_rtstruct,
    dvh_from_samples,
    volume_at_dose,
)
from PETDosePaintingLib.errors import GeometryError, UnitsError
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
from PETDosePaintingLib.imaging.dicom_series import read_dicom_series
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid, set_frame_of_reference
from PETDosePaintingLib.imaging.rtdose import read_rtdose, write_rtdose
from PETDosePaintingLib.imaging.rtstruct import load_rtstruct, write_rtstruct

FOR_UID = "1.2.826.0.1.3680043.8.498.777"
RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMPYLER_VERSION = "0.5.6"

# Sphere in a linear dose field D = D0 + g . p (Gy, p in mm).
CENTRE = np.array([1.3, -2.1, 0.4])
RADIUS = 20.0
D0 = 50.0
GRAD = np.array([0.5, 0.2, 0.3])


def dose_at(points):
    return D0 + np.asarray(points) @ GRAD


def dose_grid(for_uid=FOR_UID):
    """2 mm voxels, centres at -39..39 mm in x and y, -29..29 mm in z; D = D0 + g . p (linear)."""
    grid = make_grid((40, 40, 30), (2.0, 2.0, 2.0), origin=(-39.0, -39.0, -29.0))
    x, y, z = physical_grid(grid)
    dose = image_from_array(D0 + GRAD[0] * x + GRAD[1] * y + GRAD[2] * z, grid, units="Gy")
    return set_frame_of_reference(dose, for_uid) if for_uid else dose


def cap_height(fraction):
    """Height h of the spherical cap holding ``fraction`` of the sphere: h^2 (3R - h) / (4 R^3) = fraction."""
    return brentq(lambda h: h * h * (3 * RADIUS - h) / (4 * RADIUS**3) - fraction, 0.0, 2 * RADIUS)


def dose_of_hottest(fraction):
    """Minimum dose of the hottest ``fraction`` of the sphere: the dose on the plane cutting that cap off."""
    g = np.linalg.norm(GRAD)
    return float(dose_at(CENTRE)) + g * (RADIUS - cap_height(fraction))


def circle_rtstruct(path, planes_z, n_vertices=720, for_uid=FOR_UID, name="Sphere"):
    """An RT Structure Set (pydicom only) with one circle per plane: the sphere's cross-sections."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RT_STRUCT_STORAGE, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    ds.StructureSetLabel = "SPHERE"
    item = Dataset()
    item.FrameOfReferenceUID = for_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([item])
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 1, name, for_uid
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    angles = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    for z in planes_z:
        r = math.sqrt(RADIUS**2 - (z - CENTRE[2]) ** 2)
        pts = np.column_stack([CENTRE[0] + r * np.cos(angles), CENTRE[1] + r * np.sin(angles), np.full(n_vertices, z)])
        c = Dataset()
        c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", n_vertices
        c.ContourData = [f"{v:.6f}" for v in pts.ravel()]
        contours.append(c)
    rc = Dataset()
    rc.ReferencedROINumber = 1
    rc.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([rc])
    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber, obs.RTROIInterpretedType = 1, 1, "PTV"
    ds.RTROIObservationsSequence = Sequence([obs])
    ds.save_as(path, enforce_file_format=True)
    return path


# 20 planes 2 mm apart, symmetric about the centre: z_c +- 1, +- 3, ..., +- 19 (between the dose slices).
PLANES = CENTRE[2] + np.arange(-19.0, 20.0, 2.0)


# --------------------------------------------------------------------------------------------------------------
# Statistics from hand-computed samples
# --------------------------------------------------------------------------------------------------------------

def test_statistics_of_four_samples():
    # four samples of 1 cm3 each at 1, 2, 3, 4 Gy
    result = dvh_from_samples("s", np.array([3.0, 1.0, 4.0, 2.0]), 1000.0)
    assert result.volume_cc == 4.0 and result.mean_gy == 2.5 and (result.min_gy, result.max_gy) == (1.0, 4.0)
    assert result.d2cc_gy == 3.0  # the hottest 2 cm3 are the 4 and 3 Gy samples: at least 3 Gy
    assert result.dose_at_volume_pct(50) == 3.0 and result.dose_at_volume_pct(100) == 1.0
    assert result.dose_at_volume_pct(95) == 1.0  # 3.8 cm3 needs the fourth sample
    assert result.dose_at_volume_pct(75) == 2.0 and result.dose_at_volume_pct(0) == 4.0
    assert result.volume_at_dose_cc(2.5) == 2.0 and result.volume_at_dose_pct(2.5) == 50.0
    assert result.volume_at_dose_cc(2.0) == 3.0 and result.volume_at_dose_cc(5.0) == 0.0
    assert math.isnan(result.dose_at_volume_cc(4.5))
    axis, volume = result.curve(1.0)
    assert axis.tolist() == [0, 1, 2, 3, 4] and volume.tolist() == [4, 4, 3, 2, 1]
    assert dose_at_volume(np.array([4.0, 3.0]), 1.0, 1.0) == 4.0 and volume_at_dose(np.array([4.0, 3.0]), 2.0, 3.5) == 2


def test_d2cc_is_undefined_below_2_cm3_and_empty_structures_have_no_statistics():
    small = dvh_from_samples("small", np.array([1.0, 2.0]), 500.0)
    assert small.volume_cc == 1.0 and math.isnan(small.d2cc_gy)
    empty = dvh_from_samples("empty", np.zeros(0), 8.0)
    assert empty.volume_cc == 0 and math.isnan(empty.mean_gy) and math.isnan(empty.d95_gy) and empty.notes
    assert empty.curve(0.5)[1].tolist() == [0.0]


# --------------------------------------------------------------------------------------------------------------
# A sphere in a linear dose gradient
# --------------------------------------------------------------------------------------------------------------

def test_mask_dvh_of_a_voxel_sphere():
    dose = dose_grid()
    x, y, z = physical_grid(dose)
    inside = (x - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (z - CENTRE[2]) ** 2 <= RADIUS**2
    result = dvh_from_mask(dose, image_from_array(inside, dose), "Sphere")
    assert result.volume_cc == pytest.approx(np.count_nonzero(inside) * 8.0 / 1000.0)
    # the dose is linear: the mean over the voxels is the dose at their centroid
    centroid = np.array([x[inside].mean(), y[inside].mean(), z[inside].mean()])
    assert result.mean_gy == pytest.approx(float(dose_at(centroid)), rel=1e-9)
    assert result.volume_cc == pytest.approx(4 / 3 * math.pi * RADIUS**3 / 1000, rel=0.02)
    assert result.max_gy == pytest.approx(float(D0 + np.max(GRAD[0] * x + GRAD[1] * y + GRAD[2] * z,
                                                             where=inside, initial=-np.inf)))


def test_contour_dvh_of_an_analytic_sphere(tmp_path):
    path = circle_rtstruct(tmp_path / "rs.dcm", PLANES)
    (roi,) = load_rtstruct(path).rois
    result = dvh_from_contours(dose_grid(), roi, subsample=4)
    assert result.outside_dose_grid_cc == 0
    assert result.volume_cc == pytest.approx(4 / 3 * math.pi * RADIUS**3 / 1000, rel=0.005)
    assert result.mean_gy == pytest.approx(float(dose_at(CENTRE)), rel=0.001)  # mean = dose at the centre
    assert result.d95_gy == pytest.approx(dose_of_hottest(0.95), abs=0.15)
    assert result.d2cc_gy == pytest.approx(
        dose_of_hottest(2000.0 / (4 / 3 * math.pi * RADIUS**3)), abs=0.15)
    top = float(dose_at(CENTRE)) + np.linalg.norm(GRAD) * RADIUS
    assert top - 0.3 <= result.max_gy <= top + 1e-9
    assert "slab 2 mm" in result.method


def square_rtstruct(path, planes_z, half_mm=10.0, x0=0.0, name="Prism"):
    """One square of side 2 x ``half_mm`` centred on (x0, 0) per plane (pydicom only)."""
    circle_rtstruct(path, planes_z, name=name)
    ds = pydicom.dcmread(path)
    for c, z in zip(ds.ROIContourSequence[0].ContourSequence, planes_z, strict=True):
        corners = [(x0 - half_mm, -half_mm), (x0 + half_mm, -half_mm), (x0 + half_mm, half_mm), (x0 - half_mm, half_mm)]
        c.NumberOfContourPoints = 4
        c.ContourData = [f"{v:g}" for x, y in corners for v in (x, y, z)]
    ds.save_as(path)
    return path


def test_end_caps_extend_half_a_plane_spacing(tmp_path):
    # A 20 x 20 mm square on 5 planes 2 mm apart: 5 slabs of 2 mm = 10 mm long (truncated end caps would give
    # 8 mm). The sub-voxel centres (x.25, x.75 mm) put exactly 40 x 40 of them inside each square.
    path = square_rtstruct(tmp_path / "rs.dcm", [-4.6, -2.6, -0.6, 1.4, 3.4])
    result = dvh_from_rtstruct(dose_grid(), path)["Prism"]
    assert result.volume_cc == pytest.approx(20 * 20 * 10 / 1000, rel=1e-12)
    assert result.mean_gy == pytest.approx(float(dose_at([0.0, 0.0, -0.6])), rel=1e-12)


def test_structure_partly_outside_the_dose_grid(tmp_path):
    # A 20 x 20 mm square (one plane) centred on the grid's outer boundary x = 40 mm: half lies outside.
    path = square_rtstruct(tmp_path / "rs.dcm", [0.4], x0=40.0, name="Edge")
    result = dvh_from_rtstruct(dose_grid(), path, subsample=4)["Edge"]
    # one plane: slab = the dose grid's 2 mm; in-grid part 10 x 20 mm
    assert result.volume_cc == pytest.approx(10 * 20 * 2 / 1000, rel=1e-12)
    assert result.outside_dose_grid_cc == pytest.approx(10 * 20 * 2 / 1000, rel=1e-12)
    assert any("outside the dose grid" in n for n in result.notes)


def test_frame_of_reference_and_units_are_checked(tmp_path):
    path = circle_rtstruct(tmp_path / "rs.dcm", PLANES)
    with pytest.raises(GeometryError, match="frame of reference"):
        dvh_from_rtstruct(dose_grid("1.2.826.0.1.3680043.8.498.3"), path)
    unchecked = dvh_from_rtstruct(dose_grid(for_uid=None), path)["Sphere"]
    assert any("could not be checked" in n for n in unchecked.notes)
    suv = dose_grid()
    suv.SetMetaData("PETDP_Units", "SUVbw")
    with pytest.raises(UnitsError):
        dvh_from_rtstruct(suv, path)
    mask = image_from_array(np.ones((30, 40, 40), bool), dose_grid())
    set_frame_of_reference(mask, "1.2.826.0.1.3680043.8.498.3")
    with pytest.raises(GeometryError):
        dvh_from_mask(dose_grid(), mask)


# --------------------------------------------------------------------------------------------------------------
# Independent calculator: dicompyler-core
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dicompyler():
    """dicompyler-core's ``dvhcalc`` and ``dicomparser``.

    dicompyler-core 0.5.6 (the latest release) imports ``pydicom.dicomio.read_file``, which pydicom 3 removed
    (fixed upstream, not yet released: dicompyler/dicompyler-core#380); the alias is restored before import.
    """
    pytest.importorskip("dicompylercore", reason="dicompyler-core (test extra) is not installed")
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread
    with warnings.catch_warnings():  # its import of pydicom.pixel_data_handlers is deprecated in pydicom 3
        warnings.simplefilter("ignore", DeprecationWarning)
        from dicompylercore import dicomparser, dvhcalc

    return dvhcalc, dicomparser


@pytest.fixture(scope="module")
def example_data(request, tmp_path_factory):
    """Public example RT Dose + RT Structure Set (one breast plan) from dicompyler-core's source distribution
    (tests/testdata/example_data): ``PETDP_DICOMPYLER_SDIST`` (a .tar.gz or its extracted folder), else the
    sdist fetched once with ``pip download`` into the pytest cache."""
    given = os.environ.get("PETDP_DICOMPYLER_SDIST")
    cache_plugin = getattr(request.config, "cache", None)  # absent under ``-p no:cacheprovider``
    cache = (Path(cache_plugin.mkdir("dicompyler-core-sdist")) if cache_plugin is not None
             else tmp_path_factory.mktemp("dicompyler-core-sdist"))
    if given:
        source = Path(given)
    else:
        source = cache / f"dicompyler-core-{DICOMPYLER_VERSION}.tar.gz"
        if not source.exists():
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                   "--dest", str(cache), f"dicompyler-core=={DICOMPYLER_VERSION}"],
                                  capture_output=True, text=True, timeout=300, check=False)
            if proc.returncode != 0 or not source.exists():
                pytest.skip("the public example data (dicompyler-core sdist) could not be downloaded; set "
                            "PETDP_DICOMPYLER_SDIST to a local copy")
    if source.is_file():
        target = cache / "extracted"
        if not (target / f"dicompyler-core-{DICOMPYLER_VERSION}").exists():
            with tarfile.open(source) as tar:
                members = [m for m in tar.getmembers() if "tests/testdata/example_data/" in m.name and m.isfile()
                           and not Path(m.name).is_absolute() and ".." not in Path(m.name).parts]
                try:
                    tar.extractall(target, members=members, filter="data")
                except TypeError:  # Python < 3.11.4 has no extraction filters; the members are listed above
                    tar.extractall(target, members=members)
        source = target / f"dicompyler-core-{DICOMPYLER_VERSION}"
    folder = source / "tests" / "testdata" / "example_data"
    rtdose, rtss = folder / "rtdose.dcm", folder / "rtss.dcm"
    if not (rtdose.exists() and rtss.exists()):
        pytest.skip(f"no example RT Dose / RT Structure Set under {folder}")
    return rtdose, rtss


def test_example_data_share_a_frame_of_reference(example_data):
    rtdose, rtss = example_data
    dose_for = pydicom.dcmread(rtdose, stop_before_pixels=True).FrameOfReferenceUID
    ss = pydicom.dcmread(rtss, force=True)
    assert [i.FrameOfReferenceUID for i in ss.ReferencedFrameOfReferenceSequence] == [dose_for]
    assert read_rtdose(rtdose).GetMetaData("0020|0052") == dose_for


def test_agreement_with_dicompyler_core_on_public_example_data(example_data, dicompyler):
    """Mean dose within 1 %, volume within 2 % of dicompyler-core (its default: dose-grid points inside the
    contours, each plane a slab of the smallest plane spacing). With ``subsample=1`` ours samples the same
    points; with the default sub-sampling (4) the structures of 10 cm3 or more are compared (below that,
    sub-sampling legitimately changes the volume by more than 2 %)."""
    dvhcalc, dicomparser = dicompyler
    rtdose, rtss = example_data
    dose = read_rtdose(rtdose)
    structures = dicomparser.DicomParser(str(rtss)).GetStructures()
    numbers = {s["name"]: number for number, s in structures.items()}
    names = ["Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed", "Tumor Bed Block"]
    rtss_ds, rtdose_ds = pydicom.dcmread(rtss, force=True), pydicom.dcmread(rtdose)  # parsed once
    theirs = {name: dvhcalc.get_dvh(rtss_ds, rtdose_ds, numbers[name]) for name in names}
    structure_set = load_rtstruct(rtss)
    ours_1 = dvh_from_rtstruct(dose, structure_set, names, subsample=1)
    large = [n for n in names if theirs[n].volume >= 10 and n != "Lt Lung"]  # (the lung: time)
    ours_4 = dvh_from_rtstruct(dose, structure_set, large)
    for name in names:
        assert ours_1[name].volume_cc == pytest.approx(theirs[name].volume, rel=0.02), name
        assert ours_1[name].mean_gy == pytest.approx(theirs[name].mean, rel=0.01), name
    assert set(large) == {"Breast", "Heart", "Tumor Bed", "Tumor Bed Block"}
    for name in large:
        assert ours_4[name].volume_cc == pytest.approx(theirs[name].volume, rel=0.02), name
        assert ours_4[name].mean_gy == pytest.approx(theirs[name].mean, rel=0.01), name


def test_dicompyler_core_reads_our_exports(tmp_path, dicompyler):
    """Our RT Dose + RT Structure Set, read by dicompyler-core: the same DVH, and the analytic one."""
    dvhcalc, _ = dicompyler
    ct_grid = make_grid((40, 40, 21), (2.0, 2.0, 2.0), origin=(-39.0, -39.0, -19.6))  # slices at z_c +- 2m
    ct_image = image_from_array(np.full((21, 40, 40), -1000, np.int16), ct_grid, units="HU")
    write_ct_series(ct_image, tmp_path / "ct", DicomIdentity.synthetic(31))
    ct = read_dicom_series(tmp_path / "ct")
    x, y, z = physical_grid(ct.image)
    sphere = (x - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (z - CENTRE[2]) ** 2 <= RADIUS**2
    write_rtstruct({"PTV_Sphere": image_from_array(sphere, ct.image)}, ct, tmp_path / "rs.dcm")
    dose = dose_grid(ct.identity.frame_of_reference_uid)
    write_rtdose(dose, tmp_path / "rd.dcm", ct)
    theirs = dvhcalc.get_dvh(str(tmp_path / "rs.dcm"), str(tmp_path / "rd.dcm"), 1)
    ours = dvh_from_rtstruct(read_rtdose(tmp_path / "rd.dcm"), tmp_path / "rs.dcm", subsample=1)["PTV_Sphere"]
    assert ours.volume_cc == pytest.approx(theirs.volume, rel=0.02)
    assert ours.mean_gy == pytest.approx(theirs.mean, rel=0.01)
    # and both near the analytic sphere (voxelised on the 2 mm CT, so within a few per cent)
    assert theirs.mean == pytest.approx(float(dose_at(CENTRE)), rel=0.01)
    assert theirs.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3 / 1000, rel=0.03)


def test_sitk_dose_is_not_modified(tmp_path):
    dose = dose_grid()
    before = sitk.GetArrayFromImage(dose).copy()
    dvh_from_rtstruct(dose, circle_rtstruct(tmp_path / "rs.dcm", PLANES))
    assert np.array_equal(sitk.GetArrayFromImage(dose), before)
