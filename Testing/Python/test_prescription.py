"""Dose painting by numbers and by contours: closed-form mappings, clipping, margin, mean dose, grids, refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.dosepainting.prescription import (
    boost_prescription,
    dose_painting_by_numbers,
    inverted_prescription,
    map_intensity_to_dose,
    set_frame_of_reference,
    tg263_level_name,
)
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import Units, get_units, image_from_array, make_grid, physical_grid


def _ramp(shape=(6, 8, 20), spacing=(2.0, 2.0, 2.0)):
    """PET equal to the i index (0..19) along x; target = everything but a 1-voxel border."""
    _k, _j, i = np.indices(shape)
    pet = image_from_array(i.astype(np.float32), spacing=spacing, units=Units.SUV_BW)
    target = np.zeros(shape, dtype=bool)
    target[1:-1, 1:-1, 1:-1] = True
    return pet, image_from_array(target, pet), i, target


def test_linear_ramp_maps_to_the_closed_form_with_clipping():
    pet, target, i, inside = _ramp()
    res = dose_painting_by_numbers(pet, target, i_low=4.0, i_high=12.0, dose_low=70.0, dose_high=86.0, margin_mm=0)
    dose = sitk.GetArrayFromImage(res.dose)
    expected = np.clip(70.0 + (i - 4.0) / (12.0 - 4.0) * 16.0, 70.0, 86.0)
    np.testing.assert_allclose(dose[inside], expected[inside], atol=1e-5)
    assert np.all(dose[~inside] == 0)
    assert np.all(dose[inside & (i <= 4)] == 70.0) and np.all(dose[inside & (i >= 12)] == 86.0)
    assert np.allclose(dose[inside & (i == 8)], 78.0)  # half way
    assert get_units(res.dose) == Units.GY and res.mode == "dpbn" and res.mapping == "linear"
    assert res.i_low == 4.0 and res.i_high == 12.0 and res.i_high_percentile is None
    assert res.dose_min_gy == 70.0 and res.dose_max_gy == 86.0
    assert res.grid == "PET grid" and not res.pet_resampled


def test_default_anchors_are_p95_and_a_quarter_of_it():
    pet, target, _i, _inside = _ramp()
    res = dose_painting_by_numbers(pet, target, margin_mm=0)
    # Inside the target (4 x 6 x 18 voxels) i runs over 1..18, each value 24 times. The linear-interpolation
    # 95th percentile sits at sorted position 0.95 * (432 - 1) = 409.45, between positions 409 and 410, both
    # in the block of value 1 + 409 // 24 = 18.
    assert res.i_high == pytest.approx(18.0)
    assert res.i_low == pytest.approx(0.25 * res.i_high)
    assert res.i_high_percentile == 95.0 and res.i_low_fraction == 0.25


@pytest.mark.parametrize(("mapping", "t", "f"), [
    ("linear", 0.25, 0.25), ("sqrt", 0.25, 0.5), ("quadratic", 0.5, 0.25), ("sigmoid", 0.5, 0.5),
    ("linear", -1.0, 0.0), ("sqrt", 2.0, 1.0),
])
def test_mappings_closed_form(mapping, t, f):
    i_low, i_high = 2.0, 10.0
    dose = map_intensity_to_dose(np.array([i_low + t * (i_high - i_low)]), i_low=i_low, i_high=i_high,
                                 dose_low=70, dose_high=86, mapping=mapping)
    assert dose[0] == pytest.approx(70 + 16 * f)


def test_log_mapping_is_half_way_at_the_geometric_mean_and_sigmoid_is_monotone():
    dose = map_intensity_to_dose(np.array([np.sqrt(2.0 * 8.0), 2.0, 8.0, 1.0, 100.0]), i_low=2.0, i_high=8.0,
                                 mapping="log")
    np.testing.assert_allclose(dose, [78.0, 70.0, 86.0, 70.0, 86.0])
    x = np.linspace(0, 12, 200)
    sig = map_intensity_to_dose(x, i_low=2.0, i_high=10.0, mapping="sigmoid", sigmoid_steepness=8)
    assert np.all(np.diff(sig) >= 0) and sig[0] == 70.0 and sig[-1] == pytest.approx(86.0)
    with pytest.raises(InputError, match="I_low > 0"):
        map_intensity_to_dose(x, i_low=0.0, i_high=10.0, mapping="log")


def test_grey_dilation_margin_is_a_ball_maximum_filter():
    shape = (21, 21, 21)
    pet = np.ones(shape, dtype=np.float32)
    pet[10, 10, 10] = 10.0
    target = np.zeros(shape, dtype=bool)
    target[8:13, 8:13, 8:13] = True  # 5x5x5 cube around the hot voxel
    pet_img = image_from_array(pet, spacing=(1.0, 1.0, 1.0))
    res = dose_painting_by_numbers(pet_img, image_from_array(target, pet_img), i_low=1.0, i_high=10.0,
                                   margin_mm=2.5)
    dose = sitk.GetArrayFromImage(res.dose)
    # Lattice points within 2.5 mm of the hot voxel receive its 86 Gy.
    ball = sum(1 for a, b, c in itertools.product(range(-3, 4), repeat=3) if a * a + b * b + c * c <= 6.25)
    assert np.count_nonzero(dose == 86.0) == ball
    # The prescription extends exactly to the voxels within 2.5 mm of the cube (brute force), at 70 Gy.
    kk, jj, ii = np.indices(shape)
    cube = np.argwhere(target)
    pts = np.stack([kk.ravel(), jj.ravel(), ii.ravel()], axis=1)
    dist2 = ((pts[:, None, :] - cube[None, :, :]) ** 2).sum(axis=2).min(axis=1).reshape(shape)
    within = dist2 <= 6.25
    assert np.array_equal(sitk.GetArrayFromImage(res.evaluation_mask).astype(bool), within)
    assert np.all(dose[within & (dose != 86.0)] == 70.0) and np.all(dose[~within] == 0)
    assert res.evaluation_volume_ml == pytest.approx(within.sum() / 1000.0)


def test_mean_dose_preserving_mode():
    pet, target, i, inside = _ramp()
    res = dose_painting_by_numbers(pet, target, i_low=4.0, i_high=12.0, margin_mm=0, mean_dose=80.0)
    dose = sitk.GetArrayFromImage(res.dose).astype(np.float64)
    assert dose[inside].mean() == pytest.approx(80.0, abs=1e-4)
    base = np.clip(70.0 + (i - 4.0) / 8.0 * 16.0, 70.0, 86.0)
    scale = (80.0 - 70.0) / (base[inside] - 70.0).mean()
    np.testing.assert_allclose(dose[inside], 70.0 + scale * (base[inside] - 70.0), atol=1e-4)
    assert res.scale == pytest.approx(scale)
    with pytest.raises(InputError, match="mean_dose"):
        dose_painting_by_numbers(pet, target, mean_dose=65.0)


def test_pet_resampled_linearly_onto_a_finer_grid_in_the_same_frame():
    # PET: a linear ramp in x on a 4 mm grid; dose grid: 2 mm. Linear interpolation of a linear ramp is exact.
    pet_grid = make_grid((12, 6, 6), (4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0))
    x, _, _ = physical_grid(pet_grid)
    pet = image_from_array((0.5 * x).astype(np.float32), pet_grid)
    ct = make_grid((20, 8, 8), (2.0, 2.0, 2.0), origin=(4.0, 4.0, 4.0))
    xc, _, _ = physical_grid(ct)
    target = image_from_array(np.ones(xc.shape, dtype=bool), ct)
    for image in (pet, ct, target):
        set_frame_of_reference(image, "1.2.3.4")
    res = dose_painting_by_numbers(pet, target, grid=ct, i_low=5.0, i_high=15.0, margin_mm=0)
    expected = np.clip(70 + (0.5 * xc - 5.0) / 10.0 * 16.0, 70, 86)
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.dose), expected, atol=1e-4)
    assert res.pet_resampled and res.interpolation == "linear" and res.grid == "reference grid"
    assert res.frame_of_reference_uid == "1.2.3.4"
    # Different frames: refused; unknown frames: refused unless assumed.
    set_frame_of_reference(pet, "9.9.9")
    with pytest.raises(GeometryError, match="frame of reference"):
        dose_painting_by_numbers(pet, target, grid=ct)
    bare_pet = image_from_array((0.5 * x).astype(np.float32), pet_grid)
    with pytest.raises(GeometryError, match="assume_same_frame"):
        dose_painting_by_numbers(bare_pet, target, grid=ct)
    assert dose_painting_by_numbers(bare_pet, target, grid=ct, assume_same_frame=True).pet_resampled


def test_bad_inputs_are_refused():
    pet, target, _, inside = _ramp()
    with pytest.raises(InputError, match="above"):
        dose_painting_by_numbers(pet, target, dose_low=86, dose_high=70)
    with pytest.raises(InputError, match="empty"):
        dose_painting_by_numbers(pet, image_from_array(np.zeros_like(inside), pet))
    # A target on a grid that lies beyond the PET: refused, naming the PET field of view.
    far = make_grid((4, 4, 4), (2.0, 2.0, 2.0), origin=(500.0, 0.0, 0.0))
    far_target = image_from_array(np.ones((4, 4, 4), dtype=bool), far)
    with pytest.raises(InputError, match="outside the PET"):
        dose_painting_by_numbers(pet, far_target, assume_same_frame=True)
    zero = image_from_array(np.zeros(inside.shape, dtype=np.float32), pet)  # I_high = I_low = 0
    with pytest.raises(InputError, match="degenerate"):
        dose_painting_by_numbers(zero, target)
    with pytest.raises(InputError, match="I_low < I_high"):
        dose_painting_by_numbers(pet, target, i_low=5.0, i_high=5.0)


def _sphere_case(spacing=1.0):
    grid = make_grid((31, 31, 31), (spacing,) * 3, origin=(-15 * spacing,) * 3)
    x, y, z = physical_grid(grid)
    r = np.sqrt(x**2 + y**2 + z**2)
    pet = np.where(r <= 6.0, 10.0, 2.0).astype(np.float32)
    return grid, r, image_from_array(pet, grid, units=Units.SUV_BW), image_from_array(r <= 12.0, grid)


def test_boost_at_half_max_is_the_hot_sphere():
    _grid, r, pet, target = _sphere_case()
    res = boost_prescription(pet, target, base_dose=70, boost_dose=82, min_island_ml=0)
    boost = sitk.GetArrayFromImage(res.boost_mask).astype(bool)
    assert np.array_equal(boost, r <= 6.0)
    dose = sitk.GetArrayFromImage(res.dose)
    assert np.all(dose[r <= 6.0] == 82) and np.all(dose[(r > 6.0) & (r <= 12.0)] == 70) and np.all(dose[r > 12] == 0)
    assert res.boost_threshold == pytest.approx(5.0) and res.boost_volume_ml == pytest.approx((r <= 6).sum() / 1000)
    # With a 3 mm margin: every voxel within 3 mm of the hot sphere (still inside the target).
    res3 = boost_prescription(pet, target, base_dose=70, boost_dose=82, boost_margin_mm=3.0, min_island_ml=0)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~(r <= 6.0))
    assert np.array_equal(sitk.GetArrayFromImage(res3.boost_mask).astype(bool), (dist <= 3.0) & (r <= 12.0))


def test_boost_islands_and_given_volume():
    grid, r, pet, target = _sphere_case()
    values = sitk.GetArrayFromImage(pet)
    values[15, 15, 25] = 10.0  # an isolated hot voxel (0.001 mL) inside the target
    pet2 = image_from_array(values, grid)
    res = boost_prescription(pet2, target, min_island_ml=0.5)
    assert np.array_equal(sitk.GetArrayFromImage(res.boost_mask).astype(bool), r <= 6.0)
    kept = boost_prescription(pet2, target, min_island_ml=0.0)
    assert sitk.GetArrayFromImage(kept.boost_mask)[15, 15, 25] == 1
    given = image_from_array((r <= 4.0), grid)
    res_given = boost_prescription(pet, target, boost_volume=given, boost_dose=77, min_island_ml=0)
    assert res_given.boost_source == "given"
    assert np.array_equal(sitk.GetArrayFromImage(res_given.boost_mask).astype(bool), r <= 4.0)
    with pytest.raises(InputError, match="empty"):
        boost_prescription(pet, target, boost_volume=image_from_array(np.zeros(r.shape, bool), grid))
    with pytest.raises(InputError, match="above"):
        boost_prescription(pet, target, base_dose=80, boost_dose=70)
    with pytest.raises(InputError, match="must exceed"):
        boost_prescription(pet, target, base_dose=70, boost_dose=70)


def test_inverted_prescription():
    pet, target, _i, inside = _ramp()
    res = dose_painting_by_numbers(pet, target, i_low=4.0, i_high=12.0, margin_mm=0)
    dose = sitk.GetArrayFromImage(res.dose)
    inv = inverted_prescription(res.dose, res.evaluation_mask)
    out = sitk.GetArrayFromImage(inv.dose)
    assert inv.ceiling_gy == 86.0
    np.testing.assert_allclose(out[inside], 86.0 - dose[inside], atol=1e-5)
    assert np.all(out[~inside] == 0)
    ring = image_from_array(np.ones(inside.shape, dtype=bool), res.dose)
    inv2 = inverted_prescription(res.dose, res.evaluation_mask, ceiling=90.0, ring=ring)
    out2 = sitk.GetArrayFromImage(inv2.dose)
    assert inv2.ring_value_gy == pytest.approx(90.0 - dose[inside].mean(), abs=1e-4)
    assert np.allclose(out2[~inside], inv2.ring_value_gy)
    with pytest.raises(InputError, match="ceiling"):
        inverted_prescription(res.dose, res.evaluation_mask, ceiling=80.0)


def test_tg263_names():
    assert tg263_level_name(70) == "PTV_DP_7000" and tg263_level_name(86.0) == "PTV_DP_8600"
    assert tg263_level_name(71.63) == "PTV_DP_7163"
