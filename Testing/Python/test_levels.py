"""Nested dose levels: level placement, nesting, volumes adding up, clean-up, names, scoring vs the continuous map."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.dosepainting.levels import level_doses, quantise_levels
from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, image_from_array


def _ramp_map(shape=(6, 10, 33), low=70.0, high=86.0):
    """Continuous map rising linearly along i from 70 to 86 Gy (0.5 Gy per voxel), everywhere positive."""
    _, _, i = np.indices(shape)
    dose = low + (high - low) * i / (shape[2] - 1)
    return image_from_array(dose.astype(np.float32), spacing=(2.0, 2.0, 2.0), units=Units.GY), dose


def test_equal_levels_are_nested_and_add_up():
    image, dose = _ramp_map()
    res = quantise_levels(image, n_levels=5, min_island_ml=0)
    assert [lv.dose_gy for lv in res.levels] == [70.0, 74.0, 78.0, 82.0, 86.0]
    assert list(res.rois) == ["PTV_DP_7000", "PTV_DP_7400", "PTV_DP_7800", "PTV_DP_8200", "PTV_DP_8600"]
    rois = [sitk.GetArrayFromImage(m).astype(bool) for m in res.rois.values()]
    for outer, inner in itertools.pairwise(rois):
        assert np.all(inner <= outer) and inner.sum() < outer.sum()  # ROI_k ⊇ ROI_(k+1), strictly here
    total = rois[0].sum() * 8e-3
    assert sum(lv.shell_volume_ml for lv in res.levels) == pytest.approx(total)
    assert res.levels[0].roi_volume_ml == pytest.approx(total)
    # Nearest level: each voxel's level is within half a step (2 Gy) of its continuous dose, and it is the
    # closest of the five (ties at the midpoints go up).
    level_map = sitk.GetArrayFromImage(res.level_map)
    levels = np.array([70, 74, 78, 82, 86.0])
    nearest = levels[np.argmin(np.abs(dose[..., None] - levels) - 1e-9 * levels, axis=-1)]
    assert np.array_equal(level_map, nearest)
    assert np.all(np.abs(level_map - dose) <= 2.0 + 1e-6)
    # ROI_k = {D >= midpoint between L_(k-1) and L_k}.
    for k, roi in enumerate(rois[1:], start=1):
        assert np.array_equal(roi, dose >= (levels[k - 1] + levels[k]) / 2)


def test_floor_assignment_never_exceeds_the_continuous_map():
    image, dose = _ramp_map()
    res = quantise_levels(image, n_levels=5, assignment="floor", min_island_ml=0)
    level_map = sitk.GetArrayFromImage(res.level_map)
    assert np.all(level_map <= dose + 1e-6)
    assert np.all(dose - level_map < 4.0 + 1e-6)


def test_level_quality_matches_a_direct_computation():
    image, dose = _ramp_map()
    res = quantise_levels(image, n_levels=5, min_island_ml=0)
    level_map = sitk.GetArrayFromImage(res.level_map).astype(np.float64)
    q = level_map / dose
    assert res.evaluation.qf == pytest.approx(np.mean(np.abs(q - 1)), rel=1e-5)
    assert res.evaluation.q95 == pytest.approx(np.mean(q >= 0.95))
    assert res.evaluation.q105 == pytest.approx(np.mean(q >= 1.05))
    assert res.rms_error_gy == pytest.approx(np.sqrt(np.mean((level_map - dose) ** 2)), rel=1e-5)


def test_lloyd_max_on_two_clusters_and_on_a_uniform_distribution():
    values = np.concatenate([np.full(50, 71.0), np.full(30, 72.0), np.full(40, 85.0), np.full(20, 84.0)])
    levels = level_doses(2, 70.0, 86.0, "lloyd-max", values)
    # The two cluster means: (50*71 + 30*72)/80 and (40*85 + 20*84)/60.
    np.testing.assert_allclose(levels, [(50 * 71 + 30 * 72) / 80, (40 * 85 + 20 * 84) / 60])
    # For a uniform distribution the optimal (Lloyd-Max) quantiser is the uniform mid-interval one.
    uniform = np.linspace(70.0, 86.0, 160001)
    np.testing.assert_allclose(level_doses(4, 70, 86, "lloyd-max", uniform), [72, 76, 80, 84], atol=1e-3)
    np.testing.assert_allclose(level_doses(4, 70, 86, "midpoint"), [72, 76, 80, 84])


def test_clean_up_drops_islands_fills_holes_and_keeps_nesting_and_envelope():
    shape = (20, 20, 20)
    dose = np.full(shape, 70.0)
    dose[5:15, 5:15, 5:15] = 86.0  # a 10x10x10 high block (1 mL at 1 mm)
    dose[10, 10, 10] = 70.0  # a one-voxel hole in it
    dose[1, 1, 1] = 86.0  # an isolated one-voxel island
    image = image_from_array(dose.astype(np.float32), spacing=(1.0, 1.0, 1.0), units=Units.GY)
    res = quantise_levels(image, n_levels=2, min_island_ml=0.5)
    top = sitk.GetArrayFromImage(res.rois["PTV_DP_8600"]).astype(bool)
    block = np.zeros(shape, dtype=bool)
    block[5:15, 5:15, 5:15] = True
    assert np.array_equal(top, block)  # hole filled, island dropped
    level_map = sitk.GetArrayFromImage(res.level_map)
    assert level_map[1, 1, 1] == 70.0 and level_map[10, 10, 10] == 86.0
    assert res.relabelled_ml == pytest.approx(2e-3)
    # An envelope cuts every ROI, the base included.
    envelope = np.zeros(shape, dtype=bool)
    envelope[:, :, :12] = True
    res_env = quantise_levels(image, n_levels=2, min_island_ml=0.5, envelope=image_from_array(envelope, image))
    for mask in res_env.rois.values():
        assert not np.any(sitk.GetArrayFromImage(mask).astype(bool) & ~envelope)


def test_refusals():
    image, _ = _ramp_map()
    with pytest.raises(InputError, match="at least 2"):
        quantise_levels(image, n_levels=1)
    with pytest.raises(InputError, match="level method"):
        quantise_levels(image, method="quantile")
    with pytest.raises(InputError, match="above"):
        quantise_levels(image, dose_low=86, dose_high=70)
    with pytest.raises(InputError, match="not distinct"):
        quantise_levels(image, n_levels=5, dose_low=70, dose_high=70.02)
