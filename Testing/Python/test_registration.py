"""Registration: known rigid motion across modalities, known deformation of the digital patient, Jacobian QA,
mask propagation, composition and inversion, transform files Slicer loads, node-level logic (slicer-core).

Every expected value comes from the construction: the patient's known ct_to_mr rigid motion and known
baseline -> timepoint displacement fields, analytic transforms (rotations, translations, affine
determinants), spheres of known centre.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from scipy import ndimage
from vtk.util import numpy_support

from PETDosePaintingLib.comparison.registration import (
    RegistrationCancelled,
    body_mask_from_ct,
    compose_transforms,
    invert_transform,
    jacobian_determinant,
    jacobian_qa,
    propagate_mask,
    read_transform,
    register_bspline,
    register_rigid,
    rigid_motion,
    signed_distance_mm,
    target_registration_error,
    transform_points,
    write_transform,
)
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import (
    image_from_array,
    make_grid,
    physical_grid,
    set_frame_of_reference,
)
from PETDosePaintingLib.mrml.registration_logic import (
    register_volume_nodes,
    sitk_transform_from_node,
    transform_node_from_registration,
)
from PETDosePaintingLib.mrml.volumes import volume_node_from_image
from PETDosePaintingLib.phantom.patient import PatientConfig, build_patient

FLIP = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def patient():
    return build_patient(PatientConfig(quick=True, seed=3))


def _rotation_error_deg(a: sitk.Transform, b: sitk.Transform) -> float:
    ra, rb = np.array(rigid_motion(a)["matrix"]), np.array(rigid_motion(b)["matrix"])
    return float(np.degrees(np.arccos(np.clip((np.trace(ra @ rb.T) - 1.0) / 2.0, -1.0, 1.0))))


def _points_near(mask: sitk.Image, distance_mm: float, n: int, seed: int) -> np.ndarray:
    """``n`` voxel centres (LPS) within ``distance_mm`` of the mask (the mask included)."""
    inside = sitk.GetArrayFromImage(mask) > 0
    near = ndimage.distance_transform_edt(~inside, sampling=mask.GetSpacing()[::-1]) <= distance_mm
    k, j, i = np.nonzero(near)
    pick = np.random.default_rng(seed).choice(k.size, size=min(n, k.size), replace=False)
    return np.array([mask.TransformIndexToPhysicalPoint((int(i[p]), int(j[p]), int(k[p]))) for p in pick])


def _crop(image: sitk.Image, lo: np.ndarray, hi: np.ndarray) -> sitk.Image:
    i0 = [max(0, v) for v in image.TransformPhysicalPointToIndex(lo.tolist())]
    i1 = [min(s - 1, v) for v, s in zip(image.TransformPhysicalPointToIndex(hi.tolist()), image.GetSize(),
                                        strict=True)]
    return sitk.RegionOfInterest(image, [b - a + 1 for a, b in zip(i0, i1, strict=True)], i0)


def _blob_ct(shift=(0.0, 0.0, 0.0), size=(48, 44, 24), spacing=(2.0, 2.0, 2.5)) -> sitk.Image:
    """A small CT-like volume (HU): an elliptical body with fat, a spine, two glands, a tilted airway and a bony
    knob with soft (about 1 mm) edges, evaluated analytically at ``y - shift``: the anatomy moved by ``shift``
    exactly, without field-of-view edges or resampling."""
    grid = make_grid(size, spacing, origin=[-(n - 1) * s / 2 for n, s in zip(size, spacing, strict=True)])
    x, y, z = (c - t for c, t in zip(physical_grid(grid), shift, strict=True))

    def inside(q, semi_axis_mm):  # soft indicator of the ellipsoid q <= 1 (edge width about 1 mm)
        return 1.0 / (1.0 + np.exp(np.clip((np.sqrt(q) - 1.0) * semi_axis_mm / 0.5, -50, 50)))

    body = inside((x / 40) ** 2 + (y / 34) ** 2, 34)
    hu = -1000.0 + 1040.0 * body
    hu -= 130.0 * body * (1 - inside((x / 36) ** 2 + (y / 30) ** 2, 30))  # subcutaneous fat
    hu += 20.0 * inside(((x - 14) / 8) ** 2 + ((y + 6) / 6) ** 2 + (z / 14) ** 2, 6)
    hu -= 30.0 * inside(((x + 12) / 6) ** 2 + ((y + 10) / 7) ** 2 + ((z - 5) / 10) ** 2, 6)
    hu += 660.0 * inside((x / 7) ** 2 + ((y - 14) / 7) ** 2, 7)
    hu -= 1040.0 * inside(((x + 3 + 0.2 * z) / 4) ** 2 + ((y + 18) / 4) ** 2, 4)  # a tilted airway
    hu += 860.0 * inside(((x - 20) / 6) ** 2 + ((y - 5) / 6) ** 2 + ((z - 12) / 6) ** 2, 6)  # a bony knob
    return image_from_array(hu.astype(np.float32), grid, units="HU")


# --------------------------------------------------------------------------------------------------
# Rigid registration across modalities
# --------------------------------------------------------------------------------------------------


def test_rigid_recovers_the_known_ct_to_mr_motion(patient):
    ct = patient.timepoints[0].ct
    truth = patient.mr.ct_to_mr  # CT (fixed) -> MR (moving) points: what registration recovers
    result = register_rigid(ct, patient.mr.t1w, working_spacing_mm=2.0, shrink_factors=(2, 1),
                            smoothing_sigmas_mm=(2.0, 0.0))
    assert result.transform.GetName() == "Euler3DTransform"
    assert result.metric == "mattes" and result.metric_value < result.initial_metric_value  # MI: lower is better
    assert len(result.iterations) == 2 and result.elapsed_s > 0
    assert _rotation_error_deg(result.transform, truth) < 1.0
    gtv = patient.timepoints[0].truth.gtv_ct
    centroid = np.argwhere(sitk.GetArrayFromImage(gtv) > 0).mean(axis=0)[::-1]
    c = np.array(gtv.TransformContinuousIndexToPhysicalPoint(centroid.tolist()))
    assert np.linalg.norm(transform_points(result.transform, [c]) - transform_points(truth, [c])) < 1.0
    # Over the whole neck within 40 mm of the tumour, as landmarks (TG-132 TRE: p_moving = truth(p_fixed)).
    pts = _points_near(gtv, 40.0, 200, seed=0)
    tre = target_registration_error(result.transform, pts, transform_points(truth, pts))
    assert tre.mean() < 1.0 and tre.max() < 1.5
    # The rigid motion really is several mm and degrees (the test is not trivial).
    assert rigid_motion(truth)["rotation_deg"] > 2.5 and np.linalg.norm(rigid_motion(truth, c)["translation_mm"]) > 4


def test_rigid_recovers_an_exact_motion_of_a_ct(patient):
    """CT vs a rigidly moved copy of itself: the truth is exact (no simulation of a second modality)."""
    ct = patient.timepoints[0].ct
    centre = ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()])
    motion = sitk.Euler3DTransform(centre, *np.radians([-2.0, 1.5, 3.0]), (2.5, -4.0, 1.5))
    moved = sitk.Resample(ct, ct, motion.GetInverse(), sitk.sitkLinear, -1000.0)  # moved(y) = ct(motion^-1 y)
    result = register_rigid(ct, moved, working_spacing_mm=2.0, shrink_factors=(2, 1), smoothing_sigmas_mm=(2, 0),
                            initialization="none")
    assert _rotation_error_deg(result.transform, motion) < 0.2
    body = body_mask_from_ct(ct)
    pts = _points_near(body, 0.0, 200, seed=1)
    err = np.linalg.norm(transform_points(result.transform, pts) - transform_points(motion, pts), axis=1)
    assert err.max() < 0.3


# --------------------------------------------------------------------------------------------------
# B-spline registration against the known deformation
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bspline_recovers_the_known_deformation_around_the_tumour(patient):
    """fixed = baseline CT (cropped to the tumour region +- 30 mm), moving = the fraction-7 CT of the patient,
    which the phantom made from the baseline anatomy through the known deformation T_7 (plus tumour
    shrinkage and new CT noise). Field error vs T_7 at points in and within 10 mm of the GTV."""
    baseline, fx7 = patient.timepoints[0], patient.timepoints[1]
    truth = fx7.deformation.forward_transform()  # baseline -> fx7 points
    gtv = baseline.truth.gtv_ct
    pts = _points_near(gtv, 10.0, 300, seed=2)
    fixed = _crop(baseline.ct, pts.min(axis=0) - 30.0, pts.max(axis=0) + 30.0)
    region = image_from_array(ndimage.distance_transform_edt(
        sitk.GetArrayFromImage(gtv) == 0, sampling=gtv.GetSpacing()[::-1]) <= 20.0, gtv)
    result = register_bspline(fixed, fx7.ct, working_spacing_mm=2.0, max_samples=10000, qa_mask=region)
    expected = transform_points(truth, pts)
    error = np.linalg.norm(transform_points(result.transform, pts) - expected, axis=1)
    before = np.linalg.norm(pts - expected, axis=1)
    # Working voxel 2 mm; CT voxel 1 x 1 x 2 mm: mean below 1 mm, 95th percentile below 2 mm.
    assert error.mean() < 1.0 and np.percentile(error, 95) < 2.0
    assert error.mean() < 0.6 * before.mean()  # a real improvement over the identity (about 1.7 mm)
    # Jacobian QA in the region of interest (GTV + 20 mm): plausible volume changes, no folding.
    qa = result.jacobian
    assert qa is not None and qa.region == "QA mask" and qa.verdict == "pass"
    assert qa.folding_fraction == 0 and 0.5 < qa.minimum <= qa.maximum < 2
    # No folding anywhere on the cropped grid either (near its faces, where the cut goes through the spine, the
    # control points are weakly constrained and J may leave [0.5, 2]: the QA there says "review", not "pass").
    assert jacobian_qa(result.transform, fixed).folding_fraction == 0
    assert result.parameters["multigrid"] and result.total_iterations > 0


def test_bspline_on_top_of_an_initial_rigid_is_a_composite_in_itk_order():
    fixed = _blob_ct()
    shift = sitk.TranslationTransform(3, (3.0, -2.0, 1.0))  # fixed -> moving
    moving = _blob_ct((3.0, -2.0, 1.0))
    result = register_bspline(fixed, moving, initial_transform=shift, grid_spacing_mm=40.0, iterations=20,
                              shrink_factors=(2, 1), smoothing_sigmas_mm=(1, 0), max_samples=3000)
    assert result.transform.GetName() == "CompositeTransform"
    composite = sitk.CompositeTransform(result.transform)
    assert composite.GetNthTransform(0).GetName() == "TranslationTransform"
    assert composite.GetNthTransform(1).GetName() == "BSplineTransform"
    # Started at the truth: it stays there (B-spline displacements well below a voxel).
    pts = _points_near(body_mask_from_ct(fixed), 0.0, 100, seed=3)
    err = np.linalg.norm(transform_points(result.transform, pts) - transform_points(shift, pts), axis=1)
    assert err.max() < 0.5


# --------------------------------------------------------------------------------------------------
# Jacobian QA
# --------------------------------------------------------------------------------------------------


def test_jacobian_is_the_affine_determinant_even_on_an_oblique_grid():
    grid = make_grid((20, 18, 16), (1.0, 2.0, 3.0), origin=(5.0, -3.0, 2.0))
    grid.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.5, 0.3, 0.7).GetMatrix())
    matrix = np.array([[1.2, 0.3, 0.0], [0.1, 1.1, 0.2], [0.0, 0.05, 0.9]])
    affine = sitk.AffineTransform(matrix.ravel().tolist(), (1.0, 2.0, 3.0))
    jac = sitk.GetArrayFromImage(jacobian_determinant(affine, grid, max_slab_voxels=5 * 20 * 18))
    assert np.allclose(jac, np.linalg.det(matrix), atol=1e-5)


def test_jacobian_qa_verdicts():
    grid = make_grid((30, 30, 30), (2.0, 2.0, 2.0), origin=(-29, -29, -29))
    identity = jacobian_qa(sitk.Transform(3, sitk.sitkIdentity), grid)
    assert identity.verdict == "pass" and identity.minimum == pytest.approx(1.0) and identity.maximum == 1.0
    shrink = sitk.ScaleTransform(3, (0.7, 0.7, 0.7))  # J = 0.343 < 0.5 everywhere
    qa = jacobian_qa(shrink, grid)
    assert qa.verdict == "review" and qa.outside_range_fraction == 1.0 and qa.minimum == pytest.approx(0.343)
    # Two neighbouring control points pushed through each other along x fold the space between them.
    bspline = sitk.BSplineTransformInitializer(grid, (3, 3, 3), 3)  # 6 x 6 x 6 control points, 20 mm apart
    params = np.zeros(len(bspline.GetParameters()))  # all x coefficients first, index i + 6 j + 36 k
    params[2 + 6 * 3 + 36 * 3] = 40.0
    params[3 + 6 * 3 + 36 * 3] = -40.0
    bspline.SetParameters(params.tolist())
    qa = jacobian_qa(bspline, grid)
    assert qa.verdict == "fail" and qa.folding_fraction > 0 and qa.minimum <= 0
    # Inside a mask away from the fold the same transform passes or asks for review, never fails.
    corner = np.zeros((30, 30, 30), bool)
    corner[:3, :3, :3] = True
    assert jacobian_qa(bspline, grid, image_from_array(corner, grid)).verdict != "fail"


# --------------------------------------------------------------------------------------------------
# Masks, composition, inversion
# --------------------------------------------------------------------------------------------------


def _sphere(grid, centre, radius):
    x, y, z = physical_grid(grid)
    return image_from_array((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2, grid)


def _centroid(mask):
    k, j, i = np.nonzero(sitk.GetArrayFromImage(mask))
    return np.array(mask.TransformContinuousIndexToPhysicalPoint([i.mean(), j.mean(), k.mean()]))


@pytest.mark.parametrize("method", ["distance", "nearest"])
def test_propagate_mask_follows_the_pull_convention(method):
    grid = make_grid((40, 40, 40), (1.0, 1.0, 1.0), origin=(-19.5, -19.5, -19.5))
    mask = _sphere(grid, (2.0, -1.0, 0.5), 8.0)
    same = propagate_mask(mask, grid, method=method)
    assert np.array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(mask))  # identity is exact
    shift = (3.0, -2.0, 4.0)  # output(x) = mask(x + t): the sphere lands at c - t
    moved = propagate_mask(mask, grid, sitk.TranslationTransform(3, shift), method=method)
    assert np.allclose(_centroid(moved), np.subtract((2.0, -1.0, 0.5), shift), atol=0.05)
    expected = sitk.GetArrayFromImage(_sphere(grid, np.subtract((2.0, -1.0, 0.5), shift), 8.0))
    assert np.array_equal(sitk.GetArrayFromImage(moved), expected)  # whole-voxel shift: exact


def test_distance_propagation_is_smoother_than_nearest_on_a_coarse_to_fine_grid():
    coarse = make_grid((12, 12, 12), (4.0, 4.0, 4.0), origin=(-22, -22, -22))
    fine = make_grid((44, 44, 44), (1.0, 1.0, 1.0), origin=(-21.5, -21.5, -21.5))
    mask = _sphere(coarse, (0.0, 0.0, 0.0), 12.0)
    truth = sitk.GetArrayFromImage(_sphere(fine, (0.0, 0.0, 0.0), 12.0)) > 0
    dice = {}
    for method in ("distance", "nearest"):
        out = sitk.GetArrayFromImage(propagate_mask(mask, fine, method=method)) > 0
        dice[method] = 2 * np.count_nonzero(out & truth) / (np.count_nonzero(out) + np.count_nonzero(truth))
    assert dice["distance"] > dice["nearest"]


def test_signed_distance_is_negative_inside_and_zero_on_voxel_faces():
    grid = make_grid((10, 10, 10), (2.0, 2.0, 2.0))
    array = np.zeros((10, 10, 10), bool)
    array[3:7, 3:7, 3:7] = True
    sdf = sitk.GetArrayFromImage(signed_distance_mm(image_from_array(array, grid)))
    assert sdf[5, 5, 3] == pytest.approx(-2.0) and sdf[5, 5, 2] == pytest.approx(2.0)  # faces halfway
    assert np.all(sdf[array] < 0) and np.all(sdf[~array] > 0)


def test_compose_applies_the_chain_from_the_fixed_side_outwards():
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.pi / 2)  # T_0->7
    translation = sitk.TranslationTransform(3, (10.0, 0.0, 0.0))  # T_7->17
    composed = compose_transforms([rotation, translation])
    p = (1.0, 0.0, 0.0)
    # T_17(p) = T_7->17(T_0->7(p)) = (0, 1, 0) + (10, 0, 0); the other order would give (0, 11, 0).
    assert np.allclose(composed.TransformPoint(p), (10.0, 1.0, 0.0))
    assert compose_transforms(None).TransformPoint(p) == p and compose_transforms([None]).TransformPoint(p) == p


def test_inverse_of_a_bspline_round_trips():
    grid = make_grid((40, 40, 30), (2.0, 2.0, 2.0), origin=(-39, -39, -29))
    bspline = sitk.BSplineTransformInitializer(grid, (3, 3, 2), 3)
    rng = np.random.default_rng(4)
    bspline.SetParameters(rng.normal(0.0, 1.5, len(bspline.GetParameters())).tolist())
    inverse = invert_transform(bspline, grid)
    # The forward map is sampled every 2 mm and interpolated linearly: round trips within 0.1 mm.
    assert inverse.round_trip_max_mm < 0.1 and inverse.round_trip_mean_mm < 0.01
    pts = rng.uniform(-25, 25, (20, 3))
    back = transform_points(bspline, transform_points(inverse.transform, pts))
    assert np.abs(back - pts).max() < 0.1
    rigid = sitk.Euler3DTransform((1, 2, 3), 0.1, 0.2, 0.3, (4, 5, 6))
    exact = invert_transform(rigid, grid)
    assert exact.round_trip_max_mm == 0 and np.allclose(
        transform_points(rigid, transform_points(exact.transform, pts)), pts, atol=1e-9)


def _shifted_spheres(shift=(3.0, 0.0, 0.0)):
    grid = make_grid((40, 40, 30), (2.0, 2.0, 2.0), origin=(-39, -39, -29))
    x, y, z = physical_grid(grid)
    fixed = image_from_array(100.0 * (np.sqrt(x**2 + y**2 + z**2) < 15.0), grid)
    xs, ys, zs = x - shift[0], y - shift[1], z - shift[2]
    moving = image_from_array(100.0 * (np.sqrt(xs**2 + ys**2 + zs**2) < 15.0), grid)
    return sitk.SmoothingRecursiveGaussian(fixed, 2.0), sitk.SmoothingRecursiveGaussian(moving, 2.0)


def test_the_iteration_callback_reports_progress_and_can_cancel():
    fixed, moving = _shifted_spheres()
    calls = []
    result = register_rigid(fixed, moving, initialization="none", metric="mean_squares", iterations=30,
                            iteration_callback=lambda level, i, value: calls.append((level, i, value)))
    assert len(calls) == sum(result.iterations)  # one call per optimiser iteration
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and {c[0] for c in calls} == {0, 1, 2}
    assert calls[-1][2] < calls[0][2]  # the metric went down
    seen = []

    def stop_after_three(level, i, value):
        seen.append(i)
        return len(seen) < 3

    with pytest.raises(RegistrationCancelled):
        register_bspline(fixed, moving, iterations=30, iteration_callback=stop_after_three)
    assert len(seen) == 3  # stopped at the third iteration, not at the end of a level


def test_inverse_of_a_field_reaching_the_grid_faces_is_checked_inside(patient):
    """The digital patient's fx7 deformation moves the body where it meets the bottom slice of the field of view;
    the inversion has no data beyond that face. The round trip is judged away from the faces (a few mm error on
    the boundary slices only used to refuse every head-and-neck inversion)."""
    fx7 = patient.timepoint("fx7")
    truth = fx7.deformation.forward_transform()
    inverse = invert_transform(truth, fx7.fdg_pet)
    assert inverse.round_trip_max_mm < 0.5
    # The exact inverse of the simulation agrees with the computed one around the tumour.
    points = np.asarray(fx7.truth.seed_lps)[None, :] + np.random.default_rng(2).uniform(-20, 20, (50, 3))
    exact = fx7.deformation.inverse_transform()
    assert np.abs(transform_points(inverse.transform, points) - transform_points(exact, points)).max() < 0.5


# --------------------------------------------------------------------------------------------------
# Files: ITK formats that Slicer loads; bad files
# --------------------------------------------------------------------------------------------------


def _slicer_from_parent_points(path, scene, pts_lps):
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    general = vtk.vtkGeneralTransform()
    node.GetTransformFromWorld(general)
    return np.array([general.TransformPoint(p * FLIP) for p in pts_lps]) * FLIP


def test_transform_files_round_trip_and_load_in_slicer_as_from_parent(tmp_path, core_scene):
    grid = make_grid((20, 20, 15), (4.0, 4.0, 4.0), origin=(-38, -38, -28))
    rigid = sitk.Euler3DTransform((1.0, -2.0, 3.0), 0.05, -0.03, 0.1, (3.0, -2.0, 4.0))
    bspline = sitk.BSplineTransformInitializer(grid, (3, 3, 2), 3)
    bspline.SetParameters(np.random.default_rng(5).normal(0, 2, len(bspline.GetParameters())).tolist())
    field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                              grid.GetSpacing(), grid.GetDirection())
    cases = {"rigid.tfm": rigid, "rigid.h5": rigid, "composite.h5": sitk.CompositeTransform([rigid, bspline]),
             "composite.tfm": sitk.CompositeTransform([rigid, bspline]),
             "field.h5": sitk.DisplacementFieldTransform(sitk.Image(field))}
    pts = np.random.default_rng(6).uniform(-25, 25, (15, 3))
    for name, transform in cases.items():
        path = write_transform(transform, tmp_path / name)
        expected = transform_points(transform, pts)
        assert np.abs(transform_points(read_transform(path), pts) - expected).max() < 1e-9
        # Slicer evaluates a displacement field with its own (cubic) grid interpolation: 0.05 mm, else exact.
        tolerance = 0.05 if name == "field.h5" else 1e-4
        assert np.abs(_slicer_from_parent_points(path, core_scene, pts) - expected).max() < tolerance
    with pytest.raises(InputError, match="HDF5"):
        write_transform(cases["field.h5"], tmp_path / "field.tfm")


def test_bad_transform_files_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(InputError, match="no such transform file"):
        read_transform(tmp_path / "missing.h5")
    junk = tmp_path / "junk.tfm"
    junk.write_text("this is not a transform\n")
    with pytest.raises(InputError, match="junk.tfm"):
        read_transform(junk)
    image = tmp_path / "image.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(image))
    with pytest.raises(InputError, match="not a transform file"):
        read_transform(image)
    with pytest.raises(InputError, match="folder"):
        read_transform(tmp_path)


def test_bad_inputs_are_refused():
    grid = make_grid((20, 20, 20), (2.0, 2.0, 2.0), origin=(-19, -19, -19))
    mask = _sphere(grid, (0, 0, 0), 8.0)
    with pytest.raises(InputError, match="empty"):
        propagate_mask(image_from_array(np.zeros((20, 20, 20), bool), grid), grid)
    other = set_frame_of_reference(_sphere(grid, (0, 0, 0), 8.0), "1.2.3.4")
    reference = set_frame_of_reference(make_grid((20, 20, 20), (2.0, 2.0, 2.0), origin=(-19, -19, -19)), "1.2.3.5")
    with pytest.raises(GeometryError, match="frames of reference"):
        propagate_mask(other, reference)
    with pytest.raises(GeometryError, match="no voxel"):
        propagate_mask(mask, grid, sitk.TranslationTransform(3, (500.0, 0.0, 0.0)))
    ct = _blob_ct()
    with pytest.raises(InputError, match="seed"):
        register_rigid(ct, ct, seed=0)
    with pytest.raises(InputError, match="rigid"):
        register_rigid(ct, ct, initial_transform=sitk.ScaleTransform(3, (1.1, 1.0, 1.0)))
    with pytest.raises(InputError, match="constant"):
        register_rigid(ct, sitk.Image(ct.GetSize(), sitk.sitkFloat32))
    with pytest.raises(InputError, match="metric"):
        register_bspline(ct, ct, metric="nmi")


# --------------------------------------------------------------------------------------------------
# Tier 2: transform nodes from Slicer's registration modules (slicer-core, headless)
# --------------------------------------------------------------------------------------------------


def test_linear_node_from_a_registration_module_gives_the_same_mapping(core_scene):
    # A registration module stores moving -> fixed as ToParent (RAS). Build that node from a known LPS T.
    truth = sitk.Euler3DTransform((10.0, -5.0, 20.0), 0.04, -0.02, 0.08, (3.0, -6.0, 2.5))  # fixed -> moving, LPS
    inverse = truth.GetInverse()
    matrix_lps = np.eye(4)
    matrix_lps[:3, :3] = np.reshape(inverse.GetMatrix(), (3, 3))
    matrix_lps[:3, 3] = np.asarray(inverse.TransformPoint((0, 0, 0)))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    node = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "BRAINS result")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(flip @ matrix_lps @ flip))
    transform = sitk_transform_from_node(node)
    pts = np.random.default_rng(7).uniform(-80, 80, (20, 3))
    assert np.abs(transform_points(transform, pts) - transform_points(truth, pts)).max() < 0.1


def _grid_node(scene, field_lps: sitk.Image, to_parent: bool):
    """A grid transform node built by hand (RAS vectors and geometry) from an LPS displacement field."""
    vectors = sitk.GetArrayFromImage(field_lps) * FLIP
    data = vtk.vtkImageData()
    data.SetOrigin(*(np.asarray(field_lps.GetOrigin()) * FLIP))
    data.SetSpacing(*field_lps.GetSpacing())
    size = field_lps.GetSize()
    data.SetExtent(0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(vectors.reshape(-1, 3)), deep=True,
                                       array_type=vtk.VTK_DOUBLE)
    array.SetNumberOfComponents(3)
    data.GetPointData().SetScalars(array)
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(data)
    direction = np.eye(4)
    direction[:3, :3] = np.diag(FLIP) @ np.reshape(field_lps.GetDirection(), (3, 3))
    grid.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(direction))
    grid.SetInterpolationModeToLinear()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    if to_parent:
        node.SetAndObserveTransformToParent(grid)
    else:
        node.SetAndObserveTransformFromParent(grid)
    return node


def _smooth_field() -> sitk.Image:
    grid = make_grid((24, 24, 18), (5.0, 5.0, 5.0), origin=(-57.5, -57.5, -42.5))
    x, y, z = physical_grid(grid)
    u = np.stack([2.0 * np.sin(x / 25.0), 1.5 * np.cos(y / 30.0), np.sin(z / 20.0) + 0.5], axis=-1)
    field = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    field.CopyInformation(grid)
    return field


def test_grid_nodes_give_the_same_mapping_both_ways(core_scene):
    field = _smooth_field()
    truth = sitk.DisplacementFieldTransform(sitk.Image(field))  # fixed -> moving
    pts = np.random.default_rng(8).uniform(-40, 40, (30, 3))
    exact = sitk_transform_from_node(_grid_node(core_scene, field, to_parent=False))
    assert exact.GetName() == "DisplacementFieldTransform"
    assert np.abs(transform_points(exact, pts) - transform_points(truth, pts)).max() < 0.1
    # Stored the other way (ToParent = the field): world -> local is its inverse, evaluated by VTK, sampled on
    # the reference grid; check it undoes the field.
    reference = make_grid((50, 50, 40), (2.0, 2.0, 2.0), origin=(-49, -49, -39))
    inverse_node = _grid_node(core_scene, field, to_parent=True)
    with pytest.raises(InputError, match="reference"):
        sitk_transform_from_node(inverse_node)
    inverse = sitk_transform_from_node(inverse_node, reference)
    assert np.abs(transform_points(truth, transform_points(inverse, pts)) - pts).max() < 0.1


def test_results_become_transform_nodes_with_the_same_mapping(core_scene):
    fixed = _blob_ct()
    bspline = sitk.BSplineTransformInitializer(fixed, (2, 2, 1), 3)
    bspline.SetParameters(np.random.default_rng(9).normal(0, 1.5, len(bspline.GetParameters())).tolist())
    composite = sitk.CompositeTransform([sitk.TranslationTransform(3, (2.0, -1.0, 0.5)), bspline])
    node = transform_node_from_registration(composite, "T", core_scene, reference=fixed)
    back = sitk_transform_from_node(node, fixed)
    x, y, z = physical_grid(fixed)
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)[::97]
    inside = np.all(np.abs(pts) < [35, 35, 20], axis=1)
    assert np.abs(transform_points(back, pts[inside]) - transform_points(composite, pts[inside])).max() < 0.1
    with pytest.raises(InputError, match="reference"):
        transform_node_from_registration(composite, "T", core_scene)


def test_register_volume_nodes_returns_a_node_that_aligns_the_moving_volume(core_scene):
    fixed = _blob_ct()
    shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))  # fixed -> moving
    moving = _blob_ct((4.0, -3.0, 2.0))
    fixed_node = volume_node_from_image(fixed, "CT0", core_scene)
    moving_node = volume_node_from_image(moving, "CT7", core_scene)
    node, result = register_volume_nodes(fixed_node, moving_node, "rigid", initialization="none",
                                         shrink_factors=(2, 1), smoothing_sigmas_mm=(1, 0), sampling_fraction=0.3)
    assert node.IsA("vtkMRMLLinearTransformNode")
    transform = sitk_transform_from_node(node)
    pts = np.random.default_rng(10).uniform(-20, 20, (10, 3))
    assert np.abs(transform_points(transform, pts) - transform_points(shift, pts)).max() < 0.3
    assert result.mode == "rigid"
