"""Adaptive thresholds (Nestle, Schaefer, Daisne, Black) on analytic blurred spheres.

Expected volumes come from the blurred-sphere profile of test_thresholds (first principles): each
method's threshold is written with the analytic SUVmax = BG + C u(0), SUV70 / I_mean70 = BG + C x (mean
of u over the ball where u is above the 70 % level), and, for Black, the fixed point of its iteration.
BG = 1, C = 7 (SBR 8), FWHM 6 mm on 2 mm voxels, 2 % Poisson-like noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import optimize
from test_thresholds import (
    CENTRE,
    GRID,
    assert_volume,
    ball_mean,
    box_mask,
    iso_radius,
    level_volume_ml,
    mask_array,
    necrotic_case,
    neighbour_case,
    sphere_pet,
    unit_profile,
)

from PETDosePaintingLib.errors import InputError, ProcessingError, UnitsError
from PETDosePaintingLib.imaging.image import Units, set_units
from PETDosePaintingLib.phantom.shapes import sphere_volume_ml
from PETDosePaintingLib.segmentation.adaptive import (
    threshold_black,
    threshold_daisne,
    threshold_nestle,
    threshold_schaefer,
)
from PETDosePaintingLib.segmentation.registry import METHODS, run_method
from PETDosePaintingLib.segmentation.thresholds import threshold_background_subtracted

C = 7.0


def core_mean(radius: float, core_fraction: float = 0.7) -> float:
    """Analytic mean of the voxels at or above ``core_fraction`` x SUVmax (BG 1, contrast C)."""
    u0 = unit_profile(0.0, radius)
    r_core = iso_radius((core_fraction * (1.0 + C * u0) - 1.0) / C, radius)
    return 1.0 + C * ball_mean(r_core, radius)


@pytest.mark.parametrize("radius", [12.0, 24.0])
def test_nestle_matches_its_formula_and_overestimates_with_the_published_beta(radius):
    result = threshold_nestle(sphere_pet(radius), CENTRE)
    mean70 = core_mean(radius)
    assert result.reference_value == pytest.approx(mean70, rel=0.02)
    expected = level_volume_ml(0.15 * mean70 / C, radius)  # T - BG = 0.15 I_mean70
    assert_volume(result.volume_ml, expected, radius)
    # 0.15 x I_mean70 is about 0.15 of the contrast here, far below the half-contrast edge.
    assert result.volume_ml > 1.25 * sphere_volume_ml(radius)


@pytest.mark.parametrize("radius", [12.0, 24.0])
def test_schaefer_placeholders_put_the_contour_at_half_the_core_contrast(radius):
    result = threshold_schaefer(sphere_pet(radius), CENTRE)
    suv70 = core_mean(radius)
    expected = level_volume_ml((0.5 * suv70 + 0.5 - 1.0) / C, radius)
    assert_volume(result.volume_ml, expected, radius)
    assert result.threshold == pytest.approx(0.5 * result.reference_value + 0.5 * result.background)
    # For a well-resolved sphere, SUV70 is close to the uptake, so a = b = 0.5 lands near the true edge.
    assert result.volume_ml == pytest.approx(sphere_volume_ml(radius), rel=0.06)


def test_daisne_default_curve_is_the_half_contrast_rule_and_custom_curves_follow_their_formula():
    pet = sphere_pet(16.0)
    # a = b = 0.5: T = SUVmax (0.5 + 0.5 BG/SUVmax) = BG + 0.5 (SUVmax - BG), an identity.
    daisne = threshold_daisne(pet, CENTRE)
    half = threshold_background_subtracted(pet, CENTRE)
    assert daisne.threshold == pytest.approx(half.threshold)
    assert np.array_equal(mask_array(daisne), mask_array(half))
    assert daisne.details["sbr"] == pytest.approx(daisne.reference_value / daisne.background)
    # The note's recollection of the published shape (about 65 % at SBR 2, 41 % at SBR 10): a = 0.35, b = 0.6.
    curve = threshold_daisne(pet, CENTRE, daisne_a=0.35, daisne_b=0.6)
    suv_max = 1.0 + C * unit_profile(0.0, 16.0)
    expected = level_volume_ml(((0.35 + 0.6 / suv_max) * suv_max - 1.0) / C, 16.0)
    assert_volume(curve.volume_ml, expected, 16.0)
    assert curve.volume_ml > half.volume_ml


@pytest.mark.parametrize("radius", [12.0, 24.0])
def test_black_converges_to_its_fixed_point(radius):
    result = threshold_black(sphere_pet(radius), CENTRE)

    def fixed_point(level: float) -> float:  # T(level) - (0.307 SUV_mean(level) + 0.588), SUV
        return 1.0 + C * level - (0.307 * (1.0 + C * ball_mean(iso_radius(level, radius), radius)) + 0.588)

    level = optimize.brentq(fixed_point, 0.01, 0.99 * unit_profile(0.0, radius))
    assert_volume(result.volume_ml, level_volume_ml(level, radius), radius)
    assert result.details["converged"] and 1 <= result.details["iterations"] <= 10
    assert result.background is None
    history = result.details["history"]
    assert abs(history[-1] - history[-2]) <= 0.01 * history[-1]


ADAPTIVE = {
    "nestle": threshold_nestle,
    "schaefer": threshold_schaefer,
    "daisne": threshold_daisne,
    "black": threshold_black,
}


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_hot_neighbour_is_never_included(name):
    pet, neighbour = neighbour_case()
    result = ADAPTIVE[name](pet, CENTRE)
    assert not mask_array(result)[neighbour].any()
    assert result.details["suv_max"] < 6.5  # the lesion's own SUVmax (about 5.9), not the node's 12
    if result.background is not None:
        assert result.background < 1.05


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_necrotic_core_is_filled(name):
    pet, core = necrotic_case()
    assert mask_array(ADAPTIVE[name](pet, CENTRE))[core].all()


def test_reference_voi_drives_the_background():
    pet = sphere_pet(12.0)
    voi = box_mask((CENTRE[0], CENTRE[1] - 30.0, CENTRE[2]), 6.0)
    result = threshold_nestle(pet, CENTRE, background=voi)
    values = sitk.GetArrayFromImage(pet)[sitk.GetArrayFromImage(voi) > 0]
    assert result.background == pytest.approx(float(np.median(values)))
    assert result.threshold == pytest.approx(0.15 * result.reference_value + result.background)
    assert result.details["background"]["definition"].startswith("median of a reference VOI")


def test_a_background_voi_drawn_on_the_lesion_is_refused():
    pet = sphere_pet(12.0)
    on_lesion = box_mask(CENTRE, 4.0)
    for method in (threshold_nestle, threshold_daisne, threshold_schaefer):
        with pytest.raises(InputError, match="overlaps the lesion"):
            method(pet, CENTRE, background=on_lesion)


def test_a_background_voi_hotter_than_the_lesion_is_refused():
    # A VOI on a hotter structure elsewhere (e.g. the brain): BG 3 against a lesion of SUVmax 2.6.
    pet = sphere_pet(12.0, sbr=2.6)
    array = sitk.GetArrayFromImage(pet)
    voi = box_mask((CENTRE[0], CENTRE[1] - 30.0, CENTRE[2]), 6.0)
    array[sitk.GetArrayFromImage(voi) > 0] = 3.0
    from PETDosePaintingLib.imaging.image import image_from_array

    hot = image_from_array(array, GRID, units=Units.SUV_BW)
    with pytest.raises(ProcessingError, match="SUVmax"):
        threshold_nestle(hot, CENTRE, background=voi)
    with pytest.raises(ProcessingError, match="not above the background"):
        threshold_daisne(hot, CENTRE, background=voi)


def test_black_needs_suv_units_and_refuses_non_convergence():
    pet = sitk.Image(sphere_pet(12.0))
    set_units(pet, Units.BQML)
    with pytest.raises(UnitsError):
        threshold_black(pet, CENTRE)
    assert METHODS["black"].needs_suv
    assert not any(METHODS[name].needs_suv for name in ("nestle", "schaefer", "daisne"))
    with pytest.raises(ProcessingError, match="did not converge"):
        threshold_black(sphere_pet(12.0), CENTRE, max_iterations=1)


def test_black_refuses_a_lesion_its_formula_floods():
    # With SUV_mean near 1.7 the formula gives T = 0.307 x 1.7 + 0.588 = 1.11, barely above BG 1: the
    # constants were fitted on hotter lesions; a contour at the background level is refused.
    pet = sphere_pet(12.0, sbr=1.8)
    with pytest.raises(ProcessingError, match="background"):
        threshold_black(pet, CENTRE)


def test_seed_in_background_is_refused():
    for method in ADAPTIVE.values():
        with pytest.raises(InputError, match="lesion"):
            method(sphere_pet(10.0), (CENTRE[0] + 30.0, CENTRE[1], CENTRE[2]))


@pytest.mark.parametrize(("method", "kwargs", "message"), [
    (threshold_nestle, {"beta": -0.15}, "beta"),
    (threshold_nestle, {"core_fraction": 1.2}, "core_fraction"),
    (threshold_schaefer, {"schaefer_a": "x"}, "schaefer_a"),
    (threshold_schaefer, {"schaefer_b": float("nan")}, "schaefer_b"),
    (threshold_daisne, {"daisne_a": None}, "daisne_a"),
    (threshold_black, {"black_slope": 0.0}, "black_slope"),
    (threshold_black, {"rel_tol": 0.0}, "rel_tol"),
    (threshold_black, {"max_iterations": 2.5}, "max_iterations"),
    (threshold_nestle, {"bg_statistic": "max"}, "bg_statistic"),
])
def test_invalid_parameters(method, kwargs, message):
    with pytest.raises(InputError, match=message):
        method(sphere_pet(12.0), CENTRE, **kwargs)


def test_daisne_curve_outside_0_100_percent_is_refused():
    with pytest.raises(ProcessingError, match="Daisne curve"):
        threshold_daisne(sphere_pet(12.0), CENTRE, daisne_a=1.1, daisne_b=0.1)


def test_nan_and_empty_roi():
    array = sitk.GetArrayFromImage(sphere_pet(12.0))
    array[3, 4, 5] = np.nan
    from PETDosePaintingLib.imaging.image import image_from_array

    with pytest.raises(InputError, match="NaN"):
        threshold_schaefer(image_from_array(array, GRID, units=Units.SUV_BW), CENTRE)
    empty = image_from_array(np.zeros(GRID.GetSize()[::-1], bool), GRID)
    with pytest.raises(InputError, match="ROI is empty"):
        threshold_daisne(sphere_pet(12.0), CENTRE, empty)


def test_registry_names_and_parameters():
    pet = sphere_pet(12.0)
    for name in ADAPTIVE:
        assert run_method(name, pet, CENTRE).method == name
    assert run_method("nestle", pet, CENTRE, beta=0.3).parameters["beta"] == 0.3
    with pytest.raises(InputError, match="does not take"):
        run_method("schaefer", pet, CENTRE, fraction=0.4)
