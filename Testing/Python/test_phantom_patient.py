"""The assembled digital patient (quick configuration): truth, timepoints, DICOM round trip, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PETDosePaintingLib.cli.main import main
from PETDosePaintingLib.imaging.image import image_from_array
from PETDosePaintingLib.phantom.patient import PatientConfig, build_patient
from PETDosePaintingLib.phantom.tissues import Tissue
from PETDosePaintingLib.phantom.tumour import paint_lesion_labels


@pytest.fixture(scope="module")
def patient():
    return build_patient(PatientConfig(quick=True, seed=3))


def _centroid_lps(mask: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(mask) > 0
    k, j, i = np.nonzero(arr)
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint([float(i.mean()), float(j.mean()),
                                                                    float(k.mean())]))


def _fine_centroid_lps(fraction: np.ndarray, reference: sitk.Image) -> np.ndarray:
    k, j, i = np.indices(fraction.shape)
    w = fraction / fraction.sum()
    return np.asarray(reference.TransformContinuousIndexToPhysicalPoint(
        [float((i * w).sum()), float((j * w).sum()), float((k * w).sum())]))


def test_truth_volumes_follow_the_requested_tumour(patient):
    baseline, fx7, fx17 = patient.timepoints
    requested = patient.series.timepoints[0].lesions["primary"].requested_volume_ml
    assert baseline.truth.gtv_volume_ml == pytest.approx(requested, rel=0.02)
    vv = patient.anatomy.voxel_volume_ml
    for tp, factor in ((fx7, 0.75), (fx17, 0.45)):
        # Shrinkage to 75 % and 45 % of the baseline volume, in baseline coordinates (the timepoint design).
        fraction = patient.series.timepoints[patient.timepoints.index(tp)].gtv_fraction
        assert fraction.sum() * vv / baseline.truth.gtv_volume_ml == pytest.approx(factor, rel=0.02)
        # Warped into the timepoint's space the volume becomes the integral of fraction x Jacobian of the
        # known deformation (volume change of weight loss and flexion): change of variables y = T(x).
        jacobian = sitk.GetArrayFromImage(sitk.Resample(tp.deformation.jacobian_image(), patient.anatomy.label_image,
                                                        sitk.Transform(), sitk.sitkLinear, 1.0))
        assert tp.truth.gtv_volume_ml == pytest.approx(float((fraction * jacobian).sum()) * vv, rel=0.01)
    # The binary truth on the 4 mm PET grid keeps the volume to within the partial-volume error of a
    # ~20 mL object (surface x half a voxel, about +-15 %).
    binary_ml = np.count_nonzero(sitk.GetArrayFromImage(baseline.truth.gtv_pet)) * 64 / 1000
    assert binary_ml == pytest.approx(baseline.truth.gtv_volume_ml, rel=0.15)


def test_known_deformation_moves_the_truth_where_the_transform_says(patient):
    for index in (1, 2):
        tp = patient.timepoints[index]
        tumour_baseline_coords = patient.series.timepoints[index].gtv_fraction
        c0 = _fine_centroid_lps(tumour_baseline_coords, patient.anatomy.label_image)
        expected = np.asarray(tp.deformation.forward_transform().TransformPoint(c0.tolist()))
        assert np.linalg.norm(_centroid_lps(tp.truth.gtv_ct) - expected) < 1.5  # CT voxels 1 x 1 x 2 mm
        assert tp.deformation.jacobian_min > 0


def test_mr_is_offset_by_the_known_rigid_motion(patient):
    c_ct = _centroid_lps(patient.timepoints[0].truth.gtv_ct)
    c_mr = _centroid_lps(patient.mr.gtv_mr)
    expected = np.asarray(patient.mr.ct_to_mr.TransformPoint(c_ct.tolist()))
    assert np.linalg.norm(c_mr - expected) < 1.5
    assert np.linalg.norm(c_mr - c_ct) > 3.0  # the offset is real


def test_pet_is_quantitative_and_fmiso_shows_the_hypoxic_subvolume(patient):
    baseline = patient.timepoints[0]
    pet = sitk.GetArrayFromImage(baseline.fdg_pet)
    fine = patient.anatomy.label_image
    painted = image_from_array(paint_lesion_labels(patient.anatomy.labels, patient.series.timepoints[0]), fine)
    labels = sitk.GetArrayFromImage(sitk.Resample(painted, baseline.fdg_pet, sitk.Transform(),
                                                  sitk.sitkNearestNeighbor))
    far_from_lesions = ndimage.distance_transform_edt(labels < Tissue.TUMOUR, sampling=4.0) > 15.0
    muscle = ndimage.binary_erosion(labels == Tissue.MUSCLE) & far_from_lesions
    # Reconstruction is quantitative: muscle (SUV 1.0 in the tissue table) reads 1.0 within partial volume
    # from its neighbours (fat 0.4, glands 2) and noise.
    assert muscle.sum() > 100
    assert pet[muscle].mean() == pytest.approx(1.0, rel=0.10)
    fmiso = sitk.GetArrayFromImage(baseline.fmiso_pet)
    hypoxic = sitk.GetArrayFromImage(baseline.truth.hypoxic_pet) > 0
    normoxic = (sitk.GetArrayFromImage(baseline.truth.gtv_pet) > 0) & ~hypoxic
    assert hypoxic.any()
    assert fmiso[hypoxic].mean() / fmiso[muscle].mean() > 1.25  # hypoxic T/M 1.4-2.2 before blur
    assert fmiso[hypoxic].mean() > fmiso[normoxic].mean()


def test_build_is_deterministic():
    a = build_patient(PatientConfig(quick=True, seed=5, with_timepoints=False, with_mr=False))
    b = build_patient(PatientConfig(quick=True, seed=5, with_timepoints=False, with_mr=False))
    c = build_patient(PatientConfig(quick=True, seed=6, with_timepoints=False, with_mr=False))
    pa, pb, pc = (sitk.GetArrayFromImage(x.timepoints[0].fdg_pet) for x in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


def test_phantom_cli_writes_dicom_that_reads_back_as_the_same_suv(tmp_path, capsys):
    out = tmp_path / "patient"
    assert main(["phantom", "--quick", "--seed", "2", "--out", str(out)]) == 0
    params = json.loads((out / "parameters.json").read_text())
    assert [t["name"] for t in params["timepoints"]] == ["baseline", "fx7", "fx17"]
    for tracer in ("FDG", "FMISO"):
        suv = tmp_path / f"suv_{tracer}.nrrd"
        assert main(["suv", str(out / "baseline" / "dicom" / f"PT_{tracer}"), "--out", str(suv)]) == 0
        back = sitk.ReadImage(str(suv))
        written = sitk.ReadImage(str(out / "baseline" / f"pet_{tracer.lower()}_suv.nrrd"))
        a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(written)
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))
        assert np.allclose(back.GetOrigin(), written.GetOrigin(), atol=1e-4)
        assert np.allclose(back.GetSpacing(), written.GetSpacing(), atol=1e-6)
    ct = main(["suv", str(out / "fx7" / "dicom" / "CT"), "--out", str(tmp_path / "x.nrrd")])
    assert ct == 2  # a CT series is not a PET: one clear error
    assert "PT" in capsys.readouterr().err
    # A second run into its own previous output replaces it; an unrelated folder is refused.
    assert main(["phantom", "--quick", "--seed", "2", "--no-timepoints", "--out", str(out)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["phantom", "--quick", "--out", str(other)]) == 2
