"""Ground-truth deformations: ITK convention, known rigid components, inverse, Jacobian, volume change."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import ProcessingError
from PETDosePaintingLib.imaging.image import get_units, image_from_array, make_grid
from PETDosePaintingLib.phantom.anatomy import AnatomyConfig, build_anatomy
from PETDosePaintingLib.phantom.deformation import (
    DeformationConfig,
    build_deformation,
    pull_to_baseline,
    timepoint_deformation_config,
    warp_to_timepoint,
)
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml
from PETDosePaintingLib.phantom.tissues import Tissue


@pytest.fixture(scope="module")
def anatomy():
    return build_anatomy(AnatomyConfig.quick())


def _centroid(image: sitk.Image) -> np.ndarray:
    a = sitk.GetArrayFromImage(image).astype(float)
    k, j, i = np.nonzero(a)
    w = a[k, j, i]
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint((float(ii), float(jj), float(kk)))
                    for ii, jj, kk in zip(i, j, k, strict=True)])
    return (pts * w[:, None]).sum(axis=0) / w.sum()


def _sphere_image(centre, radius, spacing=1.0, half=25.0):
    grid = make_grid([int(2 * half / spacing)] * 3, [spacing] * 3,
                     origin=np.asarray(centre) - half + spacing / 2)
    return image_from_array(sphere_fraction(grid, centre, radius), grid, units="fraction")


def test_rigid_flexion_is_recovered_exactly(anatomy):
    # A rotation of theta about the x axis through a pivot: x' = pivot + Rx(theta) (x - pivot).
    theta, pivot = 4.0, (0.0, 20.0, -40.0)
    d = build_deformation(anatomy, DeformationConfig(flexion_deg=theta, flexion_pivot_lps=pivot), 0)
    c, s = np.cos(np.radians(theta)), np.sin(np.radians(theta))
    fwd, inv = d.forward_transform(), d.inverse_transform()
    rng = np.random.default_rng(0)
    for p in rng.uniform([-60, -60, -25], [60, 60, 45], size=(20, 3)):
        dy, dz = p[1] - pivot[1], p[2] - pivot[2]
        expected = np.array([p[0], pivot[1] + c * dy - s * dz, pivot[2] + s * dy + c * dz])
        assert np.allclose(fwd.TransformPoint(p.tolist()), expected, atol=1e-6)
        assert np.allclose(inv.TransformPoint(expected.tolist()), p, atol=1e-3)
    # Flexion (theta > 0): a point above the pivot moves anterior (-y); a point anterior moves down (-z).
    above = np.array(fwd.TransformPoint((0.0, pivot[1], pivot[2] + 50.0)))
    front = np.array(fwd.TransformPoint((0.0, pivot[1] - 50.0, pivot[2])))
    assert above[1] < pivot[1] and front[2] < pivot[2]
    # A rotation keeps volumes: Jacobian determinant 1.
    assert d.jacobian_min == pytest.approx(1.0, abs=1e-6) and d.jacobian_max == pytest.approx(1.0, abs=1e-6)
    euler = sitk.Euler3DTransform(pivot, np.radians(theta), 0.0, 0.0)
    assert np.allclose(euler.TransformPoint((5.0, -30.0, 20.0)), fwd.TransformPoint((5.0, -30.0, 20.0)), atol=1e-6)


def test_translation_convention_push_to_timepoint_and_pull_back(anatomy):
    # T_k maps baseline points to timepoint points: a baseline sphere at c appears at c + t at timepoint k.
    t = np.array([3.0, -2.0, 1.5])
    d = build_deformation(anatomy, DeformationConfig(translation_mm=tuple(t)), 0)
    centre = np.array([10.0, -5.0, 12.0])
    sphere = _sphere_image(centre, 8.0)
    later = warp_to_timepoint(sphere, d, "linear")
    assert get_units(later) == "fraction"
    assert _centroid(later) == pytest.approx(centre + t, abs=0.02)
    back = pull_to_baseline(later, d, "linear")  # what registration (fixed = baseline) would do
    assert _centroid(back) == pytest.approx(centre, abs=0.02)
    vv = 0.001
    assert float(sitk.GetArrayFromImage(later).sum()) * vv == pytest.approx(sphere_volume_ml(8.0), rel=0.005)


def test_timepoint_fields_are_fold_free_invertible_and_a_few_mm(anatomy):
    for fraction in (7, 17):
        d = build_deformation(anatomy, timepoint_deformation_config(anatomy, fraction), 3)
        jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(d.forward_field))
        assert jac.min() > 0.3 and d.jacobian_min == pytest.approx(jac[1:-1, 1:-1, 1:-1].min())
        assert d.round_trip_max_mm < 0.1
        assert 2.0 < d.max_displacement_mm < 10.0
        # Independent round trip at random points inside the body, through the SimpleITK transforms.
        fwd, inv = d.forward_transform(), d.inverse_transform()
        x, y, z = anatomy.axes()
        body = np.argwhere(anatomy.structures["body"])
        rng = np.random.default_rng(fraction)
        for k, j, i in body[rng.choice(len(body), 200, replace=False)]:
            p = np.array([x[i], y[j], z[k]]) + rng.uniform(-0.5, 0.5, 3)
            assert np.linalg.norm(np.array(fwd.TransformPoint(inv.TransformPoint(p.tolist()))) - p) < 0.1
        assert d.parameters()["round_trip_max_mm"] == d.round_trip_max_mm


def test_warped_sphere_volume_is_the_integral_of_the_jacobian(anatomy):
    # Strong weight loss only: the volume of T(S) is the integral of det(grad T) over S.
    d = build_deformation(anatomy, DeformationConfig(weight_loss_mm=6.0), 0)
    _, a, _ = anatomy.body_ellipse(10.0)
    centre = (float(a) - 14.0, 0.0, 10.0)  # near the left skin, where the shrink is strongest
    sphere = _sphere_image(centre, 9.0)
    later = warp_to_timepoint(sphere, d, "linear")
    jac = sitk.Resample(d.jacobian_image(), sphere, sitk.Transform(), sitk.sitkLinear, 1.0)
    frac = sitk.GetArrayFromImage(sphere).astype(float)
    expected_ml = float(np.sum(frac * sitk.GetArrayFromImage(jac))) * 0.001
    measured_ml = float(sitk.GetArrayFromImage(later).sum()) * 0.001
    original_ml = sphere_volume_ml(9.0)
    assert expected_ml < 0.95 * original_ml  # a real change ...
    assert measured_ml == pytest.approx(expected_ml, rel=0.01)  # ... predicted by the Jacobian


def test_warping_a_label_map_keeps_labels_and_body_volume_follows_the_jacobian(anatomy):
    d = build_deformation(anatomy, timepoint_deformation_config(anatomy, 17), 1)
    warped = warp_to_timepoint(anatomy.label_image, d, "nearest")
    assert warped.GetPixelID() == anatomy.label_image.GetPixelID() and get_units(warped) == "label"
    labels = sitk.GetArrayFromImage(warped)
    assert set(np.unique(labels)) <= set(np.unique(anatomy.labels))
    body = anatomy.structures["body"].astype(float)
    jac = sitk.GetArrayFromImage(sitk.Resample(d.jacobian_image(), anatomy.label_image, sitk.Transform(),
                                               sitk.sitkLinear, 1.0, sitk.sitkFloat64))
    inside = slice(3, -3)  # away from the top and bottom slices, where tissue enters and leaves the field
    expected = float(np.sum((body * jac)[inside]))
    measured = float(np.sum((labels != Tissue.OUTSIDE)[inside]))
    assert measured == pytest.approx(expected, rel=0.02)


def test_a_folding_deformation_is_refused(anatomy):
    with pytest.raises(ProcessingError, match="folds"):
        build_deformation(anatomy, DeformationConfig(weight_loss_mm=80.0), 0)


def test_deformation_parameters_are_json_ready(anatomy):
    from PETDosePaintingLib.imaging.io import to_json_text

    d = build_deformation(anatomy, timepoint_deformation_config(anatomy, 7), 0)
    text = to_json_text(d.parameters())
    assert "fixed" in text and "NaN" not in text
