"""Longitudinal target analysis: volume course, persistent / newborn / resolved (§5.3) on constructed masks.

Expected values are set operations on the constructed arrays, known speckle widths and island volumes,
and known whole-voxel shifts.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PETDosePaintingLib.comparison.longitudinal import dilate_mm, longitudinal_changes, volume_course
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid, set_frame_of_reference

GRID = make_grid((40, 40, 30), (2.0, 2.0, 2.0), origin=(-39.0, -39.0, -29.0))


def _mask(array):
    return image_from_array(np.asarray(array, bool), GRID)


def _ball(centre, radius):
    x, y, z = physical_grid(GRID)
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def _array(image):
    return sitk.GetArrayFromImage(image) > 0


def test_without_margin_and_islands_the_sub_volumes_are_the_set_operations():
    rng = np.random.default_rng(0)
    current = ndimage.binary_opening(rng.random((30, 40, 40)) > 0.55)
    previous = ndimage.binary_opening(rng.random((30, 40, 40)) > 0.55)
    result = longitudinal_changes(_mask(current), _mask(previous), tolerance_mm=0.0, min_island_ml=0.0)
    assert np.array_equal(_array(result.persistent), current & previous)
    assert np.array_equal(_array(result.newborn), current & ~previous)
    assert np.array_equal(_array(result.resolved), previous & ~current)
    assert np.array_equal(_array(result.previous), previous)
    voxel_ml = 8.0 / 1000.0
    assert result.newborn_ml == pytest.approx(np.count_nonzero(current & ~previous) * voxel_ml)
    assert result.persistent_ml + result.newborn_ml == pytest.approx(result.current_ml)
    assert result.tolerated_current_ml == 0 and result.tolerated_previous_ml == 0
    assert result.overlap is not None and result.overlap.dice == pytest.approx(
        2 * np.count_nonzero(current & previous) / (np.count_nonzero(current) + np.count_nonzero(previous)))


def test_the_tolerance_margin_removes_boundary_speckle_of_a_known_width():
    previous = _ball((0.0, 0.0, 0.0), 12.0)
    # Current = previous grown by exactly one voxel layer (2 mm, face neighbours) plus a real new lesion.
    grown = ndimage.binary_dilation(previous)
    new_lesion = _ball((26.0, 0.0, 0.0), 5.0)
    current = grown | new_lesion
    assert not np.any(new_lesion & ndimage.binary_dilation(previous, iterations=3))  # far from the old mask
    wide = longitudinal_changes(_mask(current), _mask(previous), tolerance_mm=2.0, min_island_ml=0.0)
    assert np.array_equal(_array(wide.newborn), new_lesion)  # the 2 mm rim is tolerated, the lesion is not
    assert wide.tolerated_current_ml == pytest.approx(np.count_nonzero(grown & ~previous) * 0.008)
    narrow = longitudinal_changes(_mask(current), _mask(previous), tolerance_mm=1.9, min_island_ml=0.0)
    assert np.array_equal(_array(narrow.newborn), current & ~previous)  # below one voxel: the rim is newborn
    # Symmetrically, a previous mask that lost its 2 mm rim has no resolved voxels with a 2 mm margin.
    shrunk = longitudinal_changes(_mask(previous), _mask(grown), tolerance_mm=2.0, min_island_ml=0.0)
    assert shrunk.resolved_ml == 0 and shrunk.newborn_ml == 0
    assert np.array_equal(_array(shrunk.persistent), previous)
    # The default margin is 1.5 voxels (3 mm here): it also tolerates the rim.
    assert longitudinal_changes(_mask(current), _mask(previous), min_island_ml=0.0).tolerance_mm == 3.0


def test_islands_below_the_minimum_volume_are_dropped():
    previous = _ball((-15.0, 0.0, 0.0), 8.0)
    small = np.zeros(GRID.GetSize()[::-1], bool)
    small[5:7, 5:7, 30:32] = True  # 8 voxels = 0.064 mL
    big = np.zeros_like(small)
    big[15:21, 25:31, 25:31] = True  # 216 voxels = 1.728 mL
    current = previous | small | big
    result = longitudinal_changes(_mask(current), _mask(previous), tolerance_mm=0.0, min_island_ml=0.3)
    assert np.array_equal(_array(result.newborn), big)
    assert result.newborn_islands == 1 and result.newborn_islands_dropped == 1
    assert result.newborn_ml == pytest.approx(1.728) and result.tolerated_current_ml == pytest.approx(0.064)
    kept = longitudinal_changes(_mask(current), _mask(previous), tolerance_mm=0.0, min_island_ml=0.05)
    assert kept.newborn_islands == 2
    # Resolved islands follow the same rule.
    gone = longitudinal_changes(_mask(previous), _mask(current), tolerance_mm=0.0, min_island_ml=0.3)
    assert np.array_equal(_array(gone.resolved), big) and gone.resolved_islands_dropped == 1


def test_previous_masks_are_carried_into_the_current_space_through_their_transforms():
    # The tumour moved by t = (4, -6, 2) mm (whole voxels) between the scans: x_current = x_previous + t.
    t = (4.0, -6.0, 2.0)
    previous = _ball((0.0, 0.0, 0.0), 10.0)
    current = _ball(t, 10.0)
    prev_img = set_frame_of_reference(_mask(previous), "1.2.3.1")
    cur_img = set_frame_of_reference(_mask(current), "1.2.3.2")
    moved = sitk.TranslationTransform(3, t)  # registration fixed = previous, moving = current
    result = longitudinal_changes(cur_img, prev_img, moved, tolerance_mm=0.0, min_island_ml=0.0)
    assert result.newborn_ml == 0 and result.resolved_ml == 0
    assert np.array_equal(_array(result.persistent), current)
    assert result.inverse_round_trip_max_mm == 0  # a translation is inverted exactly
    pull = longitudinal_changes(cur_img, prev_img, sitk.TranslationTransform(3, tuple(-v for v in t)),
                                transforms_map="current_to_previous", tolerance_mm=0.0, min_island_ml=0.0)
    assert np.array_equal(_array(pull.persistent), current)
    # Without the transform the masks do not even share a frame of reference: refused.
    with pytest.raises(GeometryError, match="frames of reference"):
        longitudinal_changes(cur_img, prev_img)
    # Several previous masks: their propagated union is the reference.
    other = set_frame_of_reference(_mask(_ball((20.0, 20.0, 0.0), 5.0)), "1.2.3.2")
    union = longitudinal_changes(cur_img, {"fx0": prev_img, "fx7": other}, {"fx0": moved, "fx7": None},
                                 tolerance_mm=0.0, min_island_ml=0.0)
    assert np.array_equal(_array(union.previous), current | _ball((20.0, 20.0, 0.0), 5.0))
    assert union.previous_names == ("fx0", "fx7")


def test_volume_course_reports_changes_from_previous_and_first():
    masks = {"baseline": _mask(_ball((0, 0, 0), 12.0)), "fx7": _mask(_ball((0, 0, 0), 10.0)),
             "fx17": _mask(_ball((0, 0, 0), 8.0))}
    counts = [np.count_nonzero(_array(m)) * 0.008 for m in masks.values()]
    course = volume_course(masks)
    assert [c.name for c in course] == ["baseline", "fx7", "fx17"]
    assert course[0].change_ml is None and course[0].change_from_first_pct is None
    assert course[1].volume_ml == pytest.approx(counts[1])
    assert course[2].change_ml == pytest.approx(counts[2] - counts[1])
    assert course[2].change_from_first_pct == pytest.approx(100 * (counts[2] - counts[0]) / counts[0])


def test_dilate_mm_is_euclidean_in_millimetres():
    point = np.zeros(GRID.GetSize()[::-1], bool)
    point[15, 20, 20] = True
    dilated = _array(dilate_mm(_mask(point), 4.0))
    # Voxel centres within 4 mm of the point on a 2 mm grid: offsets (in voxels) with |d| <= 2.
    k, j, i = np.nonzero(dilated)
    assert np.all((k - 15) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 <= 4)
    assert dilated.sum() == 33  # 1 + 6 + 12 + 8 + 6: the lattice points of a ball of radius 2


def test_bad_inputs_are_refused():
    mask = _mask(_ball((0, 0, 0), 8.0))
    empty = _mask(np.zeros(GRID.GetSize()[::-1], bool))
    with pytest.raises(InputError, match="empty"):
        longitudinal_changes(empty, mask)
    with pytest.raises(InputError, match="empty"):
        longitudinal_changes(mask, empty)
    allowed = longitudinal_changes(empty, mask, allow_empty=True, min_island_ml=0.0)
    assert allowed.resolved_ml == pytest.approx(allowed.previous_ml) and allowed.overlap is None
    with pytest.raises(InputError, match="tolerance"):
        longitudinal_changes(mask, mask, tolerance_mm=-1.0)
    with pytest.raises(InputError, match="unknown previous"):
        longitudinal_changes(mask, {"fx0": mask}, {"fx7": None})
    with pytest.raises(InputError, match="transforms_map"):
        longitudinal_changes(mask, mask, transforms_map="forward")
    with pytest.raises(InputError, match="binary"):
        longitudinal_changes(image_from_array(np.full(GRID.GetSize()[::-1], 2, np.uint8), GRID), mask)
