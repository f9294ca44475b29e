"""Mask agreement metrics (comparison.metrics) against independent implementations and first principles.

Independent implementations (test dependencies): DeepMind's ``surface-distance`` (the definition the
library follows, so agreement must be exact) and MedPy's ``medpy.metric.binary`` (voxel-centre
boundary distances, so HD/HD95/MSD agree within one voxel diagonal; Dice/Jaccard/Se/PPV exactly).
First principles: exact lattice translations (HD = the shift), concentric spheres (HD ~ MSD ~ r2 - r1),
boxes whose intersections are known voxel counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PETDosePaintingLib.comparison.metrics import (
    CommonGridMasks,
    OverlapMetrics,
    centroid_lps,
    combine_masks,
    compare_masks,
    pairwise_metrics,
    surface_distances,
    to_common_grid,
    uncovered_reference,
)
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid

surface_distance = pytest.importorskip("surface_distance", reason="DeepMind surface-distance (test extra)")
medpy_binary = pytest.importorskip("medpy.metric.binary", reason="MedPy (test extra)")

# Both reference packages use scipy/numpy names deprecated upstream; that is not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPACINGS = [(1.0, 1.0, 1.0), (0.8, 1.2, 3.0)]  # (i, j, k) in mm, as SimpleITK spacing


def _sphere(size, spacing, centre, radius, *, origin=None, direction=None) -> sitk.Image:
    """Voxels whose centre lies within ``radius`` mm of ``centre`` (LPS), on a grid centred on 0."""
    size, spacing = np.asarray(size), np.asarray(spacing, dtype=float)
    if origin is None:
        origin = -(size - 1) * spacing / 2
    kwargs = {} if direction is None else {"direction": np.ravel(direction)}
    grid = make_grid(size, spacing, origin=origin, **kwargs)
    x, y, z = physical_grid(grid)
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
    return image_from_array(inside, reference=grid)


def _blob(shape, seed, level=0.5) -> np.ndarray:
    """A random smooth blob (thresholded smoothed noise) that does not touch the array border."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3.0)
    blob = noise > level * noise.std()
    blob[[0, -1]] = False
    blob[:, [0, -1]] = False
    blob[:, :, [0, -1]] = False
    return blob


def _pair(kind: str, spacing) -> tuple[np.ndarray, np.ndarray]:
    shape = (30, 40, 36)
    if kind == "independent":
        return _blob(shape, 1), _blob(shape, 2)
    reference = _blob(shape, 3)
    mask = np.roll(reference, (1, -2, 1), axis=(0, 1, 2)) | _blob(shape, 4, level=1.5)
    mask[[0, -1]] = False
    mask[:, [0, -1]] = False
    mask[:, :, [0, -1]] = False
    return mask, reference


def _images(mask: np.ndarray, reference: np.ndarray, spacing):
    return image_from_array(mask, spacing=spacing), image_from_array(reference, spacing=spacing)


def _diagonal(spacing) -> float:
    return float(np.linalg.norm(spacing))


# --------------------------------------------------------------------------------------------------
# Independent implementations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 0.5), (2.0, 0.7, 1.3)])
def test_surfel_areas_equal_deepmind_table_for_all_256_configurations(spacing):
    from surface_distance import lookup_tables

    from PETDosePaintingLib.comparison.metrics import _surfel_area_table

    ours = _surfel_area_table(spacing)  # (k, j, i) array-axis spacing
    theirs = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    for code in range(256):
        cell = ((code >> np.arange(8)) & 1).reshape(2, 2, 2)  # cell[dk, dj, di] = bit 4dk + 2dj + di
        assert ours[code] == pytest.approx(theirs[int((kernel * cell).sum())], rel=1e-12, abs=1e-12), code
    # A single corner cut off a unit cell: triangle with legs 1/2, area sqrt(3)/8 (isotropic case).
    if spacing == (1.0, 1.0, 1.0):
        assert ours[1] == pytest.approx(math.sqrt(3) / 8)


@pytest.mark.parametrize("kind", ["independent", "perturbed"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_surface_distances_equal_deepmind(kind, spacing):
    mask, reference = _pair(kind, spacing)
    result = compare_masks(*_images(mask, reference, spacing))
    spacing_kji = spacing[::-1]
    theirs = surface_distance.compute_surface_distances(reference, mask, spacing_kji)
    ref_to_mask, mask_to_ref = surface_distance.compute_average_surface_distance(theirs)
    assert result.hd_mm == pytest.approx(surface_distance.compute_robust_hausdorff(theirs, 100), rel=1e-9)
    assert result.hd95_mm == pytest.approx(surface_distance.compute_robust_hausdorff(theirs, 95), rel=1e-9)
    assert result.msd_reference_to_mask_mm == pytest.approx(ref_to_mask, rel=1e-9)
    assert result.msd_mask_to_reference_mm == pytest.approx(mask_to_ref, rel=1e-9)
    assert result.msd_mm == pytest.approx(0.5 * (ref_to_mask + mask_to_ref), rel=1e-9)
    assert result.dice == pytest.approx(surface_distance.compute_dice_coefficient(reference, mask), rel=1e-12)


@pytest.mark.parametrize("kind", ["independent", "perturbed"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_agrees_with_medpy(kind, spacing):
    mask, reference = _pair(kind, spacing)
    result = compare_masks(*_images(mask, reference, spacing))
    spacing_kji = spacing[::-1]
    assert result.dice == pytest.approx(medpy_binary.dc(mask, reference), rel=1e-12)
    assert result.jaccard == pytest.approx(medpy_binary.jc(mask, reference), rel=1e-12)
    assert result.sensitivity == pytest.approx(medpy_binary.sensitivity(mask, reference), rel=1e-12)
    assert result.ppv == pytest.approx(medpy_binary.precision(mask, reference), rel=1e-12)
    # MedPy measures between boundary-voxel centres, DeepMind/we between voxel-corner surfels:
    # the two agree within one voxel diagonal.
    tol = _diagonal(spacing)
    assert result.hd_mm == pytest.approx(medpy_binary.hd(mask, reference, spacing_kji), abs=tol)
    assert result.hd95_mm == pytest.approx(medpy_binary.hd95(mask, reference, spacing_kji), abs=tol)
    assert result.msd_mm == pytest.approx(medpy_binary.assd(mask, reference, spacing_kji), abs=tol)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_overlap_counts_and_volumes_from_numpy(spacing):
    mask, reference = _pair("perturbed", spacing)
    result = compare_masks(*_images(mask, reference, spacing))
    vox_ml = float(np.prod(spacing)) / 1000
    tp, a, b = np.sum(mask & reference), np.sum(mask), np.sum(reference)
    assert result.volume_ml == pytest.approx(a * vox_ml, rel=1e-12)
    assert result.reference_volume_ml == pytest.approx(b * vox_ml, rel=1e-12)
    assert result.volume_error_pct == pytest.approx(100 * (a - b) / b, rel=1e-12)
    assert result.intersection_ml == pytest.approx(tp * vox_ml, rel=1e-12)
    assert result.union_ml == pytest.approx(np.sum(mask | reference) * vox_ml, rel=1e-12)
    assert result.reference_grid == "shared"
    assert result.grid_spacing_mm == pytest.approx(spacing)
    # Centroid: mean voxel-centre position, here with origin 0 and identity direction.
    kji = np.argwhere(mask).mean(axis=0)
    assert result.centroid_mm == pytest.approx(kji[::-1] * np.asarray(spacing), abs=1e-9)


# --------------------------------------------------------------------------------------------------
# First principles
# --------------------------------------------------------------------------------------------------


def test_identical_masks_give_zero_distances_and_unit_overlap():
    sphere = _sphere((40, 40, 20), (1.0, 1.0, 2.5), (0.5, -1.0, 0.3), 12.0)
    result = compare_masks(sphere, sphere)
    assert (result.dice, result.jaccard, result.sensitivity, result.ppv) == (1.0, 1.0, 1.0, 1.0)
    assert (result.hd_mm, result.hd95_mm, result.msd_mm, result.centroid_shift_mm) == (0.0, 0.0, 0.0, 0.0)
    assert result.volume_error_pct == 0.0


def _msd_shifted_spheres(radius: float, shift: float) -> float:
    """Mean distance from a sphere's surface to the same sphere shifted by ``shift`` (both directions equal).

    A surface point at polar angle theta (u = cos theta, uniform on [-1, 1] for uniform area) lies at
    |p - c'| = sqrt(r^2 + d^2 - 2 r d u) from the other centre, hence at | |p - c'| - r | from its surface.
    """
    u = np.linspace(-1.0, 1.0, 200_001)
    return float(np.mean(np.abs(np.sqrt(radius**2 + shift**2 - 2 * radius * shift * u) - radius)))


@pytest.mark.parametrize(("spacing", "axis", "steps"), [((1.0, 1.0, 1.0), 0, 3), ((0.8, 0.8, 2.5), 2, 2)])
def test_sphere_shifted_by_whole_voxels(spacing, axis, steps):
    radius = 12.0
    size = [round(44 / s) for s in spacing]
    shift = np.zeros(3)
    shift[axis] = steps * spacing[axis]
    reference = _sphere(size, spacing, (0.3, -0.2, 0.1), radius)
    mask = _sphere(size, spacing, np.array((0.3, -0.2, 0.1)) + shift, radius)
    d = float(np.linalg.norm(shift))
    result = compare_masks(mask, reference)
    # The mask is an exact lattice translate of the reference: every point moves by d (so HD <= d) and
    # the trailing extreme point is at least d from everything shifted (so HD >= d).
    assert result.hd_mm == pytest.approx(d, abs=1e-9)
    assert result.hd95_mm <= d + 1e-9
    assert result.centroid_shift_mm == pytest.approx(d, abs=1e-9)
    assert result.volume_ml == pytest.approx(result.reference_volume_ml, rel=1e-12)
    assert result.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.03)
    for value in (result.msd_mm, result.msd_mask_to_reference_mm, result.msd_reference_to_mask_mm):
        assert value == pytest.approx(_msd_shifted_spheres(radius, d), abs=_diagonal(spacing))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 0.9, 2.0)])
def test_concentric_spheres(spacing):
    r1, r2 = 8.0, 12.0
    size = [round(32 / s) for s in spacing]
    inner = _sphere(size, spacing, (0.3, 0.2, 0.1), r1)
    outer = _sphere(size, spacing, (0.3, 0.2, 0.1), r2)
    result = compare_masks(inner, outer)
    tol = _diagonal(spacing)
    for value in (result.hd_mm, result.hd95_mm, result.msd_mm, result.msd_mask_to_reference_mm,
                  result.msd_reference_to_mask_mm):
        assert value == pytest.approx(r2 - r1, abs=tol)
    assert result.ppv == 1.0  # the digital inner sphere lies inside the digital outer one
    assert result.sensitivity == pytest.approx((r1 / r2) ** 3, abs=0.03)
    assert result.dice == pytest.approx(2 * r1**3 / (r1**3 + r2**3), abs=0.03)
    assert result.centroid_shift_mm == pytest.approx(0.0, abs=0.1)


def test_disjoint_boxes_on_one_grid_give_zero_overlap_and_the_offset_as_hd():
    a = np.zeros((12, 14, 40), bool)
    a[3:9, 4:10, 2:10] = True
    b = np.roll(a, 20, axis=2)  # the same box 20 voxels further along i
    spacing = (1.5, 1.0, 2.0)
    result = compare_masks(*_images(b, a, spacing))
    assert (result.dice, result.jaccard, result.sensitivity, result.ppv) == (0.0, 0.0, 0.0, 0.0)
    assert result.intersection_ml == 0.0
    assert result.hd_mm == pytest.approx(20 * 1.5, abs=1e-9)
    assert result.centroid_shift_mm == pytest.approx(20 * 1.5, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# Different grids
# --------------------------------------------------------------------------------------------------


def test_same_sphere_on_1mm_and_3mm_grids():
    radius, centre = 15.0, (1.1, -0.7, 0.4)
    fine = _sphere((48, 48, 48), (1.0, 1.0, 1.0), centre, radius)
    coarse = _sphere((17, 17, 17), (3.0, 3.0, 3.0), centre, radius, origin=(-23.5, -23.5, -23.5))
    analytic_ml = 4 / 3 * math.pi * radius**3 / 1000
    for mask, reference in ((coarse, fine), (fine, coarse)):
        result = compare_masks(mask, reference)
        assert result.reference_grid == "finest"
        assert result.grid_spacing_mm == (1.0, 1.0, 1.0)
        assert result.dice > 0.9
        for value in (result.hd_mm, result.hd95_mm, result.msd_mm):
            assert value < 3.0  # below the coarse voxel size
        assert result.volume_ml == pytest.approx(analytic_ml, rel=0.06)
        assert result.reference_volume_ml == pytest.approx(analytic_ml, rel=0.06)
        assert result.centroid_shift_mm < 0.5
    forward, backward = compare_masks(coarse, fine), compare_masks(fine, coarse)
    assert forward.dice == pytest.approx(backward.dice, rel=1e-12)
    assert forward.hd_mm == pytest.approx(backward.hd_mm, rel=1e-12)
    assert forward.sensitivity == pytest.approx(backward.ppv, rel=1e-12)
    # On the coarse reference's own lattice instead:
    on_coarse = compare_masks(fine, coarse, grid="reference")
    assert on_coarse.reference_grid == "reference"
    assert on_coarse.grid_spacing_mm == (3.0, 3.0, 3.0)
    assert on_coarse.dice > 0.9


def test_the_finer_mask_is_sampled_at_its_own_voxel_centres():
    fine = _sphere((40, 40, 30), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), 10.0, origin=(-19.7, -19.2, -21.9))
    coarse = _sphere((14, 14, 10), (3.0, 3.0, 4.0), (0.0, 0.0, 0.0), 10.0)
    common = to_common_grid({"coarse": coarse, "fine": fine})
    assert isinstance(common, CommonGridMasks)
    assert common.spacing_mm == (1.0, 1.0, 1.5)
    assert np.count_nonzero(common.arrays["fine"]) == np.count_nonzero(sitk.GetArrayViewFromImage(fine))
    # The coarse mask becomes the union of its voxel cubes: its volume is kept within the fine
    # voxels cut by the cube faces.
    assert common.volume_ml("coarse") == pytest.approx(
        np.count_nonzero(sitk.GetArrayViewFromImage(coarse)) * 0.036, rel=0.1)
    assert common.image("fine").GetSpacing() == (1.0, 1.0, 1.5)


def test_sphere_on_an_oblique_grid():
    radius, centre = 15.0, (1.1, -0.7, 0.4)
    c, s = math.cos(0.5), math.sin(0.5)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    direction = rz @ rx
    spacing = np.array([1.2, 1.2, 1.5])
    size = np.array([34, 34, 28])
    origin = np.asarray(centre) - direction @ ((size - 1) * spacing / 2)  # grid centred on the sphere
    oblique = _sphere(size, spacing, centre, radius, origin=origin, direction=direction)
    axial = _sphere((40, 40, 40), (1.0, 1.0, 1.0), centre, radius)
    result = compare_masks(oblique, axial)
    assert result.reference_grid == "finest"
    assert result.dice > 0.93
    assert result.hd_mm < _diagonal(spacing)
    assert result.msd_mm < 1.0
    assert result.centroid_shift_mm < 0.3
    assert centroid_lps(oblique) == pytest.approx(centre, abs=0.3)


def test_grids_that_do_not_overlap_are_refused():
    a = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    b = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (500, 0, 0), 5.0, origin=(490.5, -9.5, -9.5))
    with pytest.raises(GeometryError, match="do not overlap"):
        compare_masks(b, a)


def test_different_frames_of_reference_are_refused():
    a = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    b = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (1, 0, 0), 5.0)
    a.SetMetaData("0020|0052", "1.2.3.4")
    b.SetMetaData("0020|0052", "1.2.3.5")
    with pytest.raises(GeometryError, match="frames of reference"):
        compare_masks(b, a)
    b.SetMetaData("0020|0052", "1.2.3.4")
    assert compare_masks(b, a).dice > 0.5


def test_surface_distances_need_one_grid():
    a = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    b = _sphere((20, 20, 20), (1.0, 1.0, 2.0), (0, 0, 0), 5.0)
    with pytest.raises(GeometryError):
        surface_distances(a, b)
    distances = surface_distances(a, a)
    assert distances.hausdorff_mm() == 0.0
    assert distances.areas_mask_mm2.sum() > 0
    with pytest.raises(InputError, match="percent"):
        distances.robust_hausdorff_mm(0)


def test_grid_size_guard():
    a = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    with pytest.raises(InputError, match="max_grid_voxels"):
        compare_masks(a, a, max_grid_voxels=1000)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_empty_mask():
    reference = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    empty = image_from_array(np.zeros((20, 20, 20), bool), reference=reference)
    with pytest.raises(InputError, match="empty"):
        compare_masks(empty, reference, mask_name="seg.nrrd")
    result = compare_masks(empty, reference, allow_empty=True)
    assert result.volume_ml == 0.0
    assert (result.dice, result.jaccard, result.sensitivity) == (0.0, 0.0, 0.0)
    assert result.ppv is None  # TP / (TP + FP) with no positive voxel
    assert result.volume_error_pct == -100.0
    assert (result.hd_mm, result.hd95_mm, result.msd_mm, result.centroid_shift_mm) == (None, None, None, None)
    json.dumps(asdict(result), allow_nan=False)
    both = compare_masks(empty, empty, allow_empty=True)
    assert (both.dice, both.jaccard, both.sensitivity, both.ppv, both.volume_error_pct) == (None,) * 5
    with pytest.raises(InputError, match="empty"):
        surface_distances(empty, reference)


def test_non_binary_and_wrong_inputs_are_refused():
    reference = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    labels = sitk.Cast(reference, sitk.sitkUInt8) * 2
    with pytest.raises(InputError, match=r"labels\.nrrd is not a binary mask"):
        compare_masks(labels, reference, mask_name="labels.nrrd")
    with pytest.raises(InputError, match="3D"):
        compare_masks(sitk.Image([10, 10], sitk.sitkUInt8), reference)
    with pytest.raises(InputError, match="grid must be"):
        compare_masks(reference, reference, grid="coarsest")
    float_mask = sitk.Cast(reference, sitk.sitkFloat32)  # 0.0 / 1.0 values are a valid mask
    assert compare_masks(float_mask, reference).dice == 1.0


# --------------------------------------------------------------------------------------------------
# Several masks
# --------------------------------------------------------------------------------------------------


def _box(shape, spacing, slices, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    array = np.zeros(shape, bool)
    array[slices] = True
    return image_from_array(array, spacing=spacing, origin=origin)


def test_intersection_union_and_uncovered_reference():
    spacing = (1.0, 1.0, 2.0)
    shape = (6, 8, 30)
    vox_ml = 2.0 / 1000
    column = 4 * 5  # voxels per i position (k 1..4, j 2..6)
    a = _box(shape, spacing, np.s_[1:5, 2:7, 0:10])
    b = _box(shape, spacing, np.s_[1:5, 2:7, 5:15])
    # c on a grid twice as fine whose voxel faces coincide with the coarse ones: c covers i = 8..17
    # of the coarse lattice, i.e. x from 7.5 to 17.5 mm.
    fine_shape = (12, 16, 60)
    c_array = np.zeros(fine_shape, bool)
    c_array[2:10, 4:14, 16:36] = True  # fine voxel centres 7.75 .. 17.25 mm along x
    c = image_from_array(c_array, spacing=(0.5, 0.5, 1.0), origin=(-0.25, -0.25, -0.5))
    combo = combine_masks({"a": a, "b": b})
    assert combo.reference_grid == "shared"
    assert combo.intersection_ml == pytest.approx(5 * column * vox_ml)  # i = 5..9
    assert combo.union_ml == pytest.approx(15 * column * vox_ml)  # i = 0..14
    three = combine_masks({"a": a, "b": b, "c": c})
    assert three.reference_grid == "finest"
    assert three.grid_spacing_mm == (0.5, 0.5, 1.0)
    assert three.intersection_ml == pytest.approx(2 * column * vox_ml)  # i = 8..9
    assert three.union_ml == pytest.approx(18 * column * vox_ml)  # i = 0..17
    assert sitk.GetArrayViewFromImage(three.intersection).sum() * 0.25 / 1000 == pytest.approx(
        three.intersection_ml)
    json.dumps(three.summary(), allow_nan=False)

    pathology = _box(shape, spacing, np.s_[1:5, 2:7, 0:20])  # i = 0..19
    coverage = {r.mask: r for r in uncovered_reference(pathology, {"a": a, "c": c, "union": three.union},
                                                        reference_name="pathology")}
    assert coverage["a"].uncovered_fraction == pytest.approx(10 / 20)
    assert coverage["a"].uncovered_ml == pytest.approx(10 * column * vox_ml)
    assert coverage["c"].uncovered_fraction == pytest.approx(10 / 20)  # i = 0..7 and 18..19
    assert coverage["union"].uncovered_fraction == pytest.approx(2 / 20)
    assert coverage["a"].reference_volume_ml == pytest.approx(20 * column * vox_ml)
    with pytest.raises(InputError, match="also the name"):
        uncovered_reference(pathology, {"pathology": a}, reference_name="pathology")


def test_pairwise_table():
    spacing = (1.0, 1.0, 1.0)
    masks = {name: _box((10, 10, 30), spacing, np.s_[2:8, 2:8, lo:lo + 10])
             for name, lo in (("ct", 2), ("mri", 5), ("pet", 9))}
    rows = pairwise_metrics(masks)
    assert [(r.mask, r.reference) for r in rows] == [("mri", "ct"), ("pet", "ct"), ("pet", "mri")]
    assert all(isinstance(r, OverlapMetrics) for r in rows)
    assert rows[0].dice == pytest.approx(7 / 10)  # boxes of 10 columns overlapping on 7
    assert rows[1].dice == pytest.approx(3 / 10)
    against_pet = pairwise_metrics(masks, reference="pet")
    assert [(r.mask, r.reference) for r in against_pet] == [("ct", "pet"), ("mri", "pet")]
    assert against_pet[0].sensitivity == pytest.approx(rows[1].ppv)
    with pytest.raises(InputError, match="not one of the masks"):
        pairwise_metrics(masks, reference="pathology")


def test_result_is_json_friendly():
    a = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), 5.0)
    b = _sphere((20, 20, 20), (1.0, 1.0, 1.0), (1, 0, 0), 5.0)
    data = json.loads(json.dumps(asdict(compare_masks(b, a, mask_name="b", reference_name="a")), allow_nan=False))
    for key in ("mask", "reference", "volume_ml", "reference_volume_ml", "dice", "jaccard", "sensitivity", "ppv",
                "volume_error_pct", "hd_mm", "hd95_mm", "msd_mm", "centroid_shift_mm", "reference_grid"):
        assert key in data
    assert data["mask"] == "b" and data["reference"] == "a"
