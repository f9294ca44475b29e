"""Voxel-wise correlation in a region: known relations, resampling onto the coarser grid, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.comparison.correlation import voxel_correlation
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, physical_grid


def _field(grid, function, units=None):
    x, y, z = physical_grid(grid)
    return image_from_array(function(x, y, z).astype(np.float64), reference=grid, units=units)


def _box(grid, lo, hi):
    """Mask of the voxel centres inside the LPS box [lo, hi] (mm)."""
    x, y, z = physical_grid(grid)
    inside = np.ones(x.shape, dtype=bool)
    for c, a, b in zip((x, y, z), lo, hi, strict=True):
        inside &= (c >= a) & (c <= b)
    return image_from_array(inside, reference=grid)


FINE = make_grid((40, 40, 20), (1.0, 1.0, 2.0), origin=(-19.5, -19.5, -19.0))
COARSE = make_grid((12, 12, 6), (3.0, 3.0, 6.0), origin=(-16.5, -16.5, -15.0))


def _distinct_values(grid, seed=3):
    """Distinct integers 0..n-1 in random voxel order: no ties, exact in floating point."""
    shape = sitk.GetArrayViewFromImage(grid).shape
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape).astype(np.float64)


def test_linear_relation_on_one_grid_gives_pearson_one():
    x = image_from_array(_distinct_values(FINE) / 1000.0, reference=FINE, units=Units.SUV_BW)
    y = image_from_array(2.5 * sitk.GetArrayFromImage(x) + 0.7, reference=FINE, units=Units.ADC)
    region = _box(FINE, (-10, -10, -10), (10, 8, 10))
    result = voxel_correlation(x, y, region, x_name="SUV", y_name="ADC", region_name="GTV")
    assert result.pearson_r == pytest.approx(1.0, abs=1e-12)
    assert result.spearman_rho == pytest.approx(1.0, abs=1e-12)
    assert result.n_voxels == int(sitk.GetArrayViewFromImage(region).sum())
    assert result.grid == "shared" and result.interpolation is None and "no image was resampled" in result.resampling
    assert (result.x_units, result.y_units) == ("SUVbw", "mm2/s")
    assert result.pearson_p < 1e-100 and result.pearson_ci[0] <= 1.0 <= result.pearson_ci[1] + 1e-12
    negative = voxel_correlation(x, image_from_array(-sitk.GetArrayFromImage(x), reference=FINE), region)
    assert negative.pearson_r == pytest.approx(-1.0, abs=1e-12)
    assert negative.spearman_rho == pytest.approx(-1.0, abs=1e-12)


def test_monotone_nonlinear_relation_gives_spearman_one_and_pearson_below_one():
    x = image_from_array(_distinct_values(FINE), reference=FINE)
    y = image_from_array(np.exp(sitk.GetArrayFromImage(x) / 4000.0), reference=FINE)  # strictly increasing
    region = _box(FINE, (-12, -12, -12), (12, 12, 12))
    result = voxel_correlation(x, y, region)
    assert result.spearman_rho == pytest.approx(1.0, abs=1e-12)
    assert result.pearson_r < 0.9
    assert result.spearman_ci == (pytest.approx(1.0), pytest.approx(1.0))


def test_finer_image_is_resampled_onto_the_coarser_grid_by_linear_interpolation():
    # Linear interpolation reproduces a linear field exactly, so the resampled fine image stays an exact
    # linear function of the coarse one: Pearson 1 on the coarse grid, n = region voxels of the coarse grid.
    fine = _field(FINE, lambda a, b, c: 2.0 * a + b - 0.5 * c + 10.0)
    coarse = _field(COARSE, lambda a, b, c: -(2.0 * a + b - 0.5 * c) + 3.0)
    region = _box(FINE, (-9, -9, -9), (9, 9, 9))  # the region on the fine grid: resampled by nearest neighbour
    result = voxel_correlation(fine, coarse, region, x_name="PET", y_name="ADC")
    assert result.grid == "y" and result.grid_spacing_mm == (3.0, 3.0, 6.0)
    assert result.interpolation == "linear"
    assert "PET (1x1x2 mm) was resampled onto the grid of ADC (3x3x6 mm) by linear interpolation" in result.resampling
    assert "nearest neighbour" in result.resampling
    expected = sitk.GetArrayFromImage(sitk.Resample(region, COARSE, sitk.Transform(), sitk.sitkNearestNeighbor))
    assert result.n_voxels == int(np.count_nonzero(expected))
    assert result.pearson_r == pytest.approx(-1.0, abs=1e-9)
    # The same pair the other way round: still the coarse grid (now x's).
    swapped = voxel_correlation(coarse, fine, region)
    assert swapped.grid == "x" and swapped.n_voxels == result.n_voxels
    finer = voxel_correlation(fine, coarse, region, grid="finer")
    assert finer.grid == "x" and finer.n_voxels == int(sitk.GetArrayViewFromImage(region).sum())


def test_known_correlation_of_bivariate_normal_values():
    """rho = 0.6: Pearson estimates rho; Spearman estimates (6/pi) arcsin(rho/2) = 0.5824 (Pearson 1907)."""
    rng = np.random.default_rng(11)
    shape = (20, 40, 40)
    u, v = rng.standard_normal(shape), rng.standard_normal(shape)
    rho = 0.6
    x = image_from_array(u)
    y = image_from_array(rho * u + np.sqrt(1 - rho**2) * v)
    region = image_from_array(np.ones(shape, dtype=bool))
    result = voxel_correlation(x, y, region)
    assert result.n_voxels == 32000
    # SE of r ~ (1 - rho^2)/sqrt(n) = 0.0036: 4 SE = 0.015.
    assert result.pearson_r == pytest.approx(rho, abs=0.015)
    assert result.pearson_ci[0] < rho < result.pearson_ci[1]
    assert result.spearman_rho == pytest.approx(6 / np.pi * np.arcsin(rho / 2), abs=0.015)
    assert result.spearman_ci[0] < 6 / np.pi * np.arcsin(rho / 2) < result.spearman_ci[1]
    assert any("too optimistic" in note for note in result.notes)


def test_validity_masks_and_fields_of_view_exclude_voxels():
    x = _field(FINE, lambda a, b, c: a + 0.1 * b)
    y = _field(FINE, lambda a, b, c: 3 * a + 0.3 * b)
    region = _box(FINE, (-10, -10, -10), (10, 10, 10))
    valid = _box(FINE, (-10, -10, -10), (0, 10, 10))
    full = voxel_correlation(x, y, region)
    half = voxel_correlation(x, y, region, y_valid=valid)
    both = sitk.GetArrayFromImage(region) & sitk.GetArrayFromImage(valid)
    assert half.n_voxels == int(np.count_nonzero(both))
    assert half.n_voxels < full.n_voxels and any("validity mask" in n for n in half.notes)
    # y covers only part of the region: voxels of the region outside y's field of view are excluded.
    small = make_grid((10, 40, 20), (1.0, 1.0, 2.0), origin=(-19.5, -19.5, -19.0))  # x from -19.5 to -10.5
    part = voxel_correlation(x, _field(small, lambda a, b, c: a * a), _box(FINE, (-15, -5, -5), (5, 5, 5)), grid="x")
    # region: x centres -14.5..4.5 (20), y -4.5..4.5 (10), z -5..5 (6); inside y's field of view: x -14.5..-10.5
    assert part.n_voxels == 5 * 10 * 6 and any("900 region voxel(s) lie outside" in n for n in part.notes)


def test_refusals():
    x = _field(FINE, lambda a, b, c: a)
    y = _field(FINE, lambda a, b, c: b + a)
    region = _box(FINE, (-5, -5, -5), (5, 5, 5))
    far = make_grid((10, 10, 10), (1.0, 1.0, 1.0), origin=(500.0, 500.0, 500.0))
    with pytest.raises(GeometryError, match="do not overlap"):
        voxel_correlation(x, _field(far, lambda a, b, c: a), region)
    with pytest.raises(InputError, match="empty"):
        voxel_correlation(x, y, image_from_array(np.zeros((20, 40, 40), dtype=bool), reference=FINE))
    with pytest.raises(InputError, match="constant"):
        voxel_correlation(x, image_from_array(np.ones((20, 40, 40)), reference=FINE), region)
    with pytest.raises(InputError, match="voxel pair"):
        voxel_correlation(x, y, _box(FINE, (0, 0, 0), (1.5, 0.5, 1.0)))  # 2 voxels
    with pytest.raises(InputError, match="binary"):
        voxel_correlation(x, y, x)
    x_for, y_for = sitk.Image(x), sitk.Image(y)
    x_for.SetMetaData("0020|0052", "1.2.3")
    y_for.SetMetaData("0020|0052", "1.2.4")
    with pytest.raises(GeometryError, match="frames of reference"):
        voxel_correlation(x_for, y_for, region)


def test_correlation_table_node(core_scene):
    from PETDosePaintingLib.mrml.comparison_logic import correlation_table_node
    from PETDosePaintingLib.mrml.tables import table_to_columns

    x = image_from_array(_distinct_values(FINE), reference=FINE, units=Units.SUV_BW)
    y = image_from_array(-3.0 * _distinct_values(FINE), reference=FINE, units=Units.ADC)
    result = voxel_correlation(x, y, _box(FINE, (-5, -5, -5), (5, 5, 5)), x_name="SUV", y_name="ADC")
    columns = table_to_columns(correlation_table_node([result], scene=core_scene))
    assert columns["x"] == ["SUV"] and columns["y_units"] == ["mm2/s"]
    assert columns["n_voxels"] == [float(result.n_voxels)]
    assert columns["pearson_r"] == pytest.approx([-1.0]) and columns["spearman_rho"] == pytest.approx([-1.0])
