"""Fixed and background-subtracted thresholds, and the background shell, on analytic blurred spheres.

Expected volumes come from first principles, not from the code: a homogeneous sphere of radius R and
contrast C on a background BG, blurred by a Gaussian of standard deviation s, has the radial profile
``BG + C u(r)`` with (Gaussian convolution of a ball)

    u(r) = 1/2 [erf((R - r)/(s sqrt2)) + erf((R + r)/(s sqrt2))]
           + s / (r sqrt(2 pi)) [exp(-(R + r)^2 / 2s^2) - exp(-(R - r)^2 / 2s^2)].

A threshold T therefore contours the sphere of radius ``r_T`` where ``BG + C u(r_T) = T``. Voxelising with
exact partial-volume fractions adds the voxel's box blur (variance d^2/12 per axis), so
``s^2 = (FWHM/2.3548)^2 + d^2/12``. The allowance on volumes is a quarter of a millimetre in radius
(an eighth of a 2 mm voxel: contour quantisation on the grid plus the small upward bias of the hottest
voxel under the 2 % noise), i.e. a relative volume tolerance of ``3 x 0.25 mm / R``.

Helpers here are imported by the other threshold-family tests (test_adaptive, test_iterative,
test_calibration).
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import integrate, optimize, special

from PETDosePaintingLib.errors import GeometryError, InputError, ProcessingError, UnitsError
from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, set_units
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml
from PETDosePaintingLib.segmentation.background import estimate_background
from PETDosePaintingLib.segmentation.common import lesion_region
from PETDosePaintingLib.segmentation.registry import run_method
from PETDosePaintingLib.segmentation.thresholds import (
    threshold_a50p,
    threshold_absolute,
    threshold_background_subtracted,
    threshold_fraction_of_max,
    threshold_fraction_of_peak,
)

VOXEL_MM = 2.0
FWHM_MM = 6.0
GRID = make_grid((48, 48, 48), (VOXEL_MM,) * 3, origin=(-47.0, -47.0, -47.0))
CENTRE = (0.6, -0.4, 0.3)  # off every grid symmetry plane
SIGMA = float(np.sqrt((FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))) ** 2 + VOXEL_MM**2 / 12.0))
NOISE_COV = 0.02  # noise SD at SUV 1; variance proportional to the value (Poisson-like)
RADIUS_TOLERANCE_MM = 0.25


# ------------------------------------------------------------------------------------------------
# Analytic model (first principles)


def unit_profile(r: float, radius: float, s: float = SIGMA) -> float:
    """u(r): the Gaussian-blurred unit ball of ``radius`` at distance r from its centre."""
    if r < 1e-6 * s:
        return float(special.erf(radius / (s * np.sqrt(2))) - np.sqrt(2 / np.pi) * radius / s
                     * np.exp(-(radius**2) / (2 * s**2)))
    a, b = (radius - r) / (s * np.sqrt(2)), (radius + r) / (s * np.sqrt(2))
    return float(0.5 * (special.erf(a) + special.erf(b))
                 + s / (r * np.sqrt(2 * np.pi)) * (np.exp(-(b**2)) - np.exp(-(a**2))))


def iso_radius(level: float, radius: float, s: float = SIGMA) -> float:
    """The radius where u falls to ``level`` (u decreases monotonically with r)."""
    return float(optimize.brentq(lambda r: unit_profile(r, radius, s) - level, 1e-9, radius + 12 * s))


def ball_mean(rho: float, radius: float, s: float = SIGMA) -> float:
    """Mean of u over the ball of radius ``rho`` centred on the sphere."""
    value, _ = integrate.quad(lambda r: unit_profile(r, radius, s) * r * r, 0.0, rho, limit=200)
    return 3.0 * value / rho**3


def level_volume_ml(level: float, radius: float) -> float:
    """Volume (mL) inside the iso-contour u = ``level`` of the blurred sphere."""
    return sphere_volume_ml(iso_radius(level, radius))


def threshold_volume_ml(threshold: float, radius: float, contrast: float, background: float = 1.0) -> float:
    """Volume (mL) the threshold ``T`` (same units as the image) encloses around the blurred sphere."""
    return level_volume_ml((threshold - background) / contrast, radius)


def volume_tolerance(radius: float) -> float:
    """Relative volume allowance for a radius error of RADIUS_TOLERANCE_MM."""
    return 3.0 * RADIUS_TOLERANCE_MM / radius


def assert_volume(measured: float, expected: float, radius: float) -> None:
    assert measured == pytest.approx(expected, rel=volume_tolerance(radius)), (measured, expected)


# ------------------------------------------------------------------------------------------------
# Images


def blurred_pet(activity: np.ndarray, *, noise: float = NOISE_COV, seed: int = 3, units: str = Units.SUV_BW,
                fwhm: float = FWHM_MM, grid: sitk.Image = GRID) -> sitk.Image:
    """Blur an activity array (SUV) and add Poisson-like noise (SD = noise x sqrt(value))."""
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), grid), fwhm))
    blurred = blurred.astype(np.float64)
    if noise:
        rng = np.random.default_rng(seed)
        blurred = blurred + noise * np.sqrt(np.maximum(blurred, 0.0)) * rng.standard_normal(blurred.shape)
    return image_from_array(blurred.astype(np.float32), grid, units=units)


@lru_cache(maxsize=16)
def sphere_pet(radius: float, sbr: float = 8.0, noise: float = NOISE_COV) -> sitk.Image:
    """A sphere of ``radius`` (mm) at activity ``sbr`` on background 1 (SUV), centred at CENTRE."""
    return blurred_pet(1.0 + (sbr - 1.0) * sphere_fraction(GRID, CENTRE, radius), noise=noise)


@lru_cache(maxsize=4)
def neighbour_case() -> tuple[sitk.Image, np.ndarray]:
    """A lesion (R 10 mm, SBR 6) and a twice as hot node (R 8 mm) 5 mm away, edge to edge."""
    neighbour = sphere_fraction(GRID, (CENTRE[0] + 23.0, CENTRE[1], CENTRE[2]), 8.0)
    activity = 1.0 + 5.0 * sphere_fraction(GRID, CENTRE, 10.0) + 11.0 * neighbour
    return blurred_pet(activity), neighbour >= 0.5


@lru_cache(maxsize=4)
def necrotic_case() -> tuple[sitk.Image, np.ndarray]:
    """A sphere of R 16 mm (SBR 8) whose central 8 mm core is at background level."""
    outer = sphere_fraction(GRID, CENTRE, 16.0)
    core = sphere_fraction(GRID, CENTRE, 8.0)
    return blurred_pet(1.0 + 7.0 * (outer - core)), core >= 0.5


def necrotic_outer_radius(level_fraction: float) -> float:
    """Outer radius where the necrotic profile C (u16 - u8) falls to ``level_fraction`` of its maximum."""
    rs = np.linspace(0.0, 30.0, 3001)
    profile = np.array([unit_profile(r, 16.0) - unit_profile(r, 8.0) for r in rs])
    peak = int(np.argmax(profile))
    target = level_fraction * profile[peak]
    return float(optimize.brentq(lambda r: unit_profile(r, 16.0) - unit_profile(r, 8.0) - target, rs[peak], 30.0))


def mask_array(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.mask) > 0


def box_mask(centre, half_mm: float) -> sitk.Image:
    """A cubic ROI/VOI of half-width ``half_mm`` around an LPS point."""
    x = np.arange(GRID.GetSize()[0]) * VOXEL_MM - 47.0
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    inside = ((np.abs(xx - centre[0]) <= half_mm) & (np.abs(y - centre[1]) <= half_mm)
              & (np.abs(z - centre[2]) <= half_mm))
    return image_from_array(inside, GRID)


# ------------------------------------------------------------------------------------------------
# Volumes against the analytic model


@pytest.mark.parametrize("radius", [12.0, 24.0])
def test_half_contrast_above_background_recovers_a_large_sphere(radius):
    # T = BG + 0.5 (SUVmax - BG): the contour u = u(0)/2. For R >> s it lies on the edge (u(R) -> 1/2);
    # the sphere's curvature pulls it in by about s/(R sqrt(2 pi)) in u, i.e. -4 % in volume at R = 24 mm.
    result = threshold_background_subtracted(sphere_pet(radius), CENTRE)
    expected = level_volume_ml(0.5 * unit_profile(0.0, radius), radius)
    assert_volume(result.volume_ml, expected, radius)
    assert result.background == pytest.approx(1.0, abs=0.01)
    if radius == 24.0:
        assert result.volume_ml == pytest.approx(sphere_volume_ml(radius), rel=0.06)
    assert result.details["background"]["source"] == "shell"
    assert result.details["warnings"] == []


@pytest.mark.parametrize("radius", [12.0, 24.0])
def test_fixed_41_percent_overestimates_on_a_background(radius):
    # T = 0.41 (BG + C u0): with BG = 1 and C = 7 the level is (0.41 x 8 - 1)/7 = 0.33 of the contrast,
    # below the half-contrast edge, so the volume exceeds the true one (+12 to +16 %).
    result = threshold_fraction_of_max(sphere_pet(radius), CENTRE)
    suv_max = 1.0 + 7.0 * unit_profile(0.0, radius)
    expected = threshold_volume_ml(0.41 * suv_max, radius, 7.0)
    assert_volume(result.volume_ml, expected, radius)
    assert result.volume_ml > 1.08 * sphere_volume_ml(radius)


def test_fraction_of_peak_and_a50p_follow_the_12mm_sphere_mean():
    # SUVpeak of a centred 12 mm sphere = BG + C x (mean of u over a 6 mm ball).
    radius = 16.0
    pet = sphere_pet(radius)
    u_peak = ball_mean(6.0, radius)
    peak = threshold_fraction_of_peak(pet, CENTRE)
    assert peak.reference_value == pytest.approx(1.0 + 7.0 * u_peak, rel=0.01)
    assert_volume(peak.volume_ml, threshold_volume_ml(0.5 * (1.0 + 7.0 * u_peak), radius, 7.0), radius)
    a50p = threshold_a50p(pet, CENTRE)
    assert a50p.threshold == pytest.approx(0.5 * (a50p.reference_value + a50p.background))
    assert_volume(a50p.volume_ml, level_volume_ml(0.5 * u_peak, radius), radius)
    assert a50p.method == "a50p" and peak.method == "peak"


def test_absolute_threshold_contours_the_iso_suv_surface():
    radius = 16.0
    result = threshold_absolute(sphere_pet(radius), CENTRE, absolute=2.5)
    assert_volume(result.volume_ml, threshold_volume_ml(2.5, radius, 7.0), radius)


def test_click_on_the_lesion_rim_segments_the_lesion():
    radius = 16.0
    pet = sphere_pet(radius)
    rim = (CENTRE[0] + radius + 3.0, CENTRE[1], CENTRE[2])
    at_centre = threshold_background_subtracted(pet, CENTRE)
    at_rim = threshold_background_subtracted(pet, rim)
    assert at_rim.volume_ml == pytest.approx(at_centre.volume_ml, rel=0.02)


# ------------------------------------------------------------------------------------------------
# Neighbour, necrosis


FIXED = {
    "threshold 41 %": threshold_fraction_of_max,
    "threshold 25 %": partial(threshold_fraction_of_max, fraction=0.25),
    "absolute 1.5": partial(threshold_absolute, absolute=1.5),
    "peak": threshold_fraction_of_peak,
    "a50p": threshold_a50p,
    "bgsub 20 %": partial(threshold_background_subtracted, fraction=0.2),
}


@pytest.mark.parametrize("name", list(FIXED))
def test_hot_neighbour_5mm_away_is_never_included(name):
    pet, neighbour = neighbour_case()
    result = FIXED[name](pet, CENTRE)
    assert not mask_array(result)[neighbour].any()
    # SUVmax (or SUVpeak) is the lesion's own: about 1 + 5 u0(10 mm) = 5.9, never the node's 12.
    assert result.reference_value < 6.5
    if result.background is not None:
        assert result.background < 1.05  # the node's flank never enters the background shell


@pytest.mark.parametrize("name", ["threshold 41 %", "a50p", "bgsub 20 %"])
def test_necrotic_core_is_filled_and_the_outer_edge_follows_the_model(name):
    pet, core = necrotic_case()
    result = FIXED[name](pet, CENTRE)
    mask = mask_array(result)
    assert mask[core].all()  # the cold core is enclosed, so it is filled
    hollow = FIXED[name](pet, CENTRE, fill_holes=False)
    i, j, k = GRID.TransformPhysicalPointToIndex(CENTRE)
    assert not mask_array(hollow)[k, j, i]  # u16(0) - u8(0) is about 0.02 of the contrast: below any threshold
    assert hollow.volume_ml < result.volume_ml
    if name == "a50p":
        return  # SUVpeak of a hollow sphere has no simple closed form
    # Outer contour: where C (u16 - u8) falls to the threshold's share of the rim maximum.
    suv_max = result.reference_value
    level = (result.threshold - 1.0) / (suv_max - 1.0)
    assert_volume(result.volume_ml, sphere_volume_ml(necrotic_outer_radius(level)), 16.0)


# ------------------------------------------------------------------------------------------------
# Background


def test_shell_background_of_a_uniform_background_is_its_level():
    estimate = estimate_background(sphere_pet(12.0), CENTRE)
    assert estimate.value == pytest.approx(1.0, abs=0.005)
    assert estimate.source == "shell" and estimate.n_voxels > 500
    assert estimate.sd == pytest.approx(NOISE_COV, rel=0.2)
    assert "shell 10-20 mm" in estimate.definition


def test_shell_background_excludes_air_next_to_the_lesion():
    # Air (activity 0) fills everything 16 mm or more on one side of the lesion: a third of the shell.
    x = np.arange(GRID.GetSize()[0]) * VOXEL_MM - 47.0
    air = np.broadcast_to(x[None, None, :] > CENTRE[0] + 16.0, sphere_fraction(GRID, CENTRE, 1.0).shape)
    activity = np.where(air, 0.0, 1.0) + 7.0 * sphere_fraction(GRID, CENTRE, 10.0)
    pet = blurred_pet(activity)
    estimate = estimate_background(pet, CENTRE)
    assert estimate.value == pytest.approx(1.0, abs=0.02)
    # Air never reaches the shell: the lesion's region leaves it out (tissue floor), the shell rule drops the rest.
    region = lesion_region(pet, CENTRE)
    values = region.crop(sitk.GetArrayFromImage(pet))
    deep_air = region.crop(np.asarray(air)) & (values < 0.05)
    assert deep_air.sum() > 1000
    assert not np.any(region.inside & deep_air)
    # The mean keeps the partial-volume voxels of the blurred air boundary (between 0.3 and 1), so it is lower.
    assert estimate_background(pet, CENTRE, statistic="mean").value < estimate.value


def test_reference_voi_background_is_used_as_given():
    pet = sphere_pet(12.0)
    voi = box_mask((CENTRE[0], CENTRE[1] + 30.0, CENTRE[2]), 6.0)
    result = threshold_a50p(pet, CENTRE, background=voi)
    values = sitk.GetArrayFromImage(pet)[sitk.GetArrayFromImage(voi) > 0]
    assert result.background == pytest.approx(float(np.median(values)))
    assert result.details["background"]["source"] == "reference VOI"
    assert result.parameters["background"] == "reference VOI"


def test_too_tight_roi_leaves_no_background_shell():
    # The provisional contour of a 12 mm sphere lies near r = 12.7 mm; the box's corners are 22.5 mm away.
    roi = box_mask(CENTRE, 13.0)
    with pytest.raises(InputError, match="background shell"):
        threshold_a50p(sphere_pet(12.0), CENTRE, roi)


def test_tight_roi_truncating_the_contour_is_flagged():
    roi = box_mask(CENTRE, 8.0)
    result = threshold_fraction_of_max(sphere_pet(12.0), CENTRE, roi)
    assert any("edge of the ROI" in w for w in result.details["warnings"])


# ------------------------------------------------------------------------------------------------
# Safety rules: no flooded or truncated contour is returned


def test_a_threshold_inside_the_background_noise_is_refused():
    # SBR 2: SUVmax = 1 + u0 = 1.95, so 41 % of it (0.80) lies below the background level 1: the contour
    # would flood the surroundings. The background-subtracted 50 % (1.48) is fine.
    pet = blurred_pet(1.0 + 1.0 * sphere_fraction(GRID, CENTRE, 10.0))
    with pytest.raises(ProcessingError, match="within the background"):
        threshold_fraction_of_max(pet, CENTRE)
    assert threshold_background_subtracted(pet, CENTRE).volume_ml > 0


def test_one_click_working_sphere_grows_until_the_contour_fits():
    # 25 % of SUVmax contours a 24 mm sphere out to about 27 mm: beyond a 26 mm starting sphere, which
    # therefore grows (common.lesion_region) and returns the same contour as a roomy start.
    grown = threshold_fraction_of_max(sphere_pet(24.0), CENTRE, fraction=0.25, roi_radius_mm=26.0)
    roomy = threshold_fraction_of_max(sphere_pet(24.0), CENTRE, fraction=0.25, roi_radius_mm=60.0)
    assert grown.volume_ml > sphere_volume_ml(24.0)
    assert grown.volume_ml == pytest.approx(roomy.volume_ml, rel=0.01)


def test_one_click_contour_leaking_into_the_surroundings_is_refused():
    # 2 % of SUVmax lies in the background: the contour would flood the neighbourhood, not follow the edge.
    with pytest.raises(ProcessingError):
        threshold_fraction_of_max(sphere_pet(12.0), CENTRE, fraction=0.02)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_seed_outside_the_image():
    with pytest.raises(InputError, match="outside the image"):
        threshold_a50p(sphere_pet(12.0), (200.0, 0.0, 0.0))


@pytest.mark.parametrize("noise", [0.0, NOISE_COV])
def test_seed_in_the_background_is_refused(noise):
    pet = sphere_pet(10.0, noise=noise)
    for seed in [(CENTRE[0] + 30.0, CENTRE[1], CENTRE[2]), (CENTRE[0], CENTRE[1] - 30.0, CENTRE[2] + 10.0)]:
        for method in (threshold_a50p, threshold_fraction_of_max, threshold_fraction_of_peak):
            with pytest.raises(InputError, match="lesion"):
                method(pet, seed)


def test_empty_roi():
    empty = image_from_array(np.zeros(GRID.GetSize()[::-1], bool), GRID)
    with pytest.raises(InputError, match="ROI is empty"):
        threshold_fraction_of_peak(sphere_pet(12.0), CENTRE, empty)


def test_absolute_threshold_above_the_lesion():
    with pytest.raises(InputError, match="above the lesion's SUVmax"):
        threshold_absolute(sphere_pet(12.0), CENTRE, absolute=20.0)


def test_absolute_threshold_needs_suv_units():
    pet = sitk.Image(sphere_pet(12.0))
    set_units(pet, Units.BQML)
    with pytest.raises(UnitsError, match="SUV"):
        threshold_absolute(pet, CENTRE)
    with pytest.raises(UnitsError):
        run_method("threshold", pet, CENTRE, absolute=2.5)
    threshold_a50p(pet, CENTRE)  # ratio-based methods work on any units


def test_nan_voxels_are_refused():
    array = sitk.GetArrayFromImage(sphere_pet(12.0))
    array[0, 0, 0] = np.nan
    pet = image_from_array(array, GRID, units=Units.SUV_BW)
    for method in (threshold_a50p, threshold_fraction_of_peak, threshold_background_subtracted):
        with pytest.raises(InputError, match="NaN"):
            method(pet, CENTRE)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fraction": 1.5}, "fraction"),
    ({"fraction": 0.0}, "fraction"),
    ({"fraction": "half"}, "fraction"),
    ({"reference": "mean"}, "reference"),
    ({"bg_statistic": "mode"}, "bg_statistic"),
    ({"bg_inner_mm": 20.0, "bg_outer_mm": 10.0}, "bg_outer_mm"),
    ({"peak_diameter_mm": -12.0, "reference": "peak"}, "peak_diameter_mm"),
])
def test_invalid_parameters(kwargs, message):
    with pytest.raises(InputError, match=message):
        threshold_background_subtracted(sphere_pet(12.0), CENTRE, **kwargs)


def test_background_voi_on_another_grid_or_empty():
    pet = sphere_pet(12.0)
    other = make_grid((10, 10, 10), (2.0, 2.0, 2.0))
    with pytest.raises(GeometryError):
        threshold_a50p(pet, CENTRE, background=image_from_array(np.ones((10, 10, 10), bool), other))
    with pytest.raises(InputError, match="empty"):
        threshold_a50p(pet, CENTRE, background=image_from_array(np.zeros(GRID.GetSize()[::-1], bool), GRID))


def test_registry_runs_the_new_fixed_methods_with_their_cli_names():
    pet = sphere_pet(12.0)
    assert run_method("peak", pet, CENTRE, fraction=0.5).method == "peak"
    assert run_method("a50p", pet, CENTRE).method == "a50p"
    with pytest.raises(InputError, match="does not take"):
        run_method("peak", pet, CENTRE, fwhm_mm=6.0)
