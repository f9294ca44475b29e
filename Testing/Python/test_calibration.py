"""Calibration of the adaptive and iterative constants on imaged spheres.

First principles: with a noiseless linear imager (Gaussian blur), the image of a sphere of radius R and
contrast C on background BG is ``BG + C u(r)``, and the threshold reproducing its volume is
``T* = BG + C u(R)`` (up to the grid's contour quantisation). For one sphere size imaged at several SBRs:

* Daisne ``T*/SUVmax = a + b BG/SUVmax`` holds exactly with ``a = u(R)/u(0)`` and ``a + b = 1``;
* Black ``T* = slope SUV_mean + intercept`` holds with ``slope + intercept/BG = 1`` (every term scales with
  BG and C together, SUV_mean being the mean inside the true contour);
* Nestle and Schaefer use SUV70, the mean above 70 % of SUVmax, whose share of the profile depends on the
  contrast, so their constants are least-squares compromises, computed here from the analytic profile;
* van Dalen ``T* - BG = f (SUV_mean - BG)`` with ``f = u(R) / mean of u over the ball of radius R``;
* the ITM's measured table is ``u(R)/u(0)`` per volume, and the fitted effective FWHM is the imager's.

The grid is 3 mm, so the allowance is the contour quantisation of a 3 mm grid (about 0.03 in the fractions);
for the single-size fits every sphere sits at the same grid position, so the identities (a + b = 1) are exact
up to the bisection and are checked to 0.005.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import optimize

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.segmentation.calibration import (
    CalibrationResult,
    GaussianImager,
    calibrate,
    load_calibration,
)
from PETDosePaintingLib.segmentation.registry import run_method

FWHM = 6.0
VOXEL = 3.0
SIGMA = float(np.sqrt((FWHM / 2.3548200450309493) ** 2 + VOXEL**2 / 12.0))
TOL = 0.03


def u(r: float, radius: float) -> float:
    from test_thresholds import unit_profile

    return unit_profile(r, radius, SIGMA)


def ball_mean(rho: float, radius: float) -> float:
    from test_thresholds import ball_mean as mean

    return mean(rho, radius, SIGMA)


@lru_cache(maxsize=1)
def single_volume() -> CalibrationResult:
    return calibrate(GaussianImager(FWHM, noise_cov=0.0), pet_voxel_mm=VOXEL, fine_factor=1, volumes_ml=(20.0,),
                     sbrs=(3.0, 6.0, 12.0), methods=("nestle", "schaefer", "daisne", "black", "vandalen"),
                     fit_fwhm=False, random_positions=False)


@lru_cache(maxsize=1)
def two_volumes() -> CalibrationResult:
    return calibrate(GaussianImager(FWHM, noise_cov=0.0), pet_voxel_mm=VOXEL, fine_factor=1, volumes_ml=(3.0, 20.0),
                     sbrs=(4.0, 8.0), methods=("iterative",), fit_fwhm=True, rng=2)


def analytic_suv70(radius: float, c: float) -> float:
    """Mean of the voxels at or above 70 % of SUVmax for BG 1 and contrast c."""
    r70 = optimize.brentq(lambda r: 1 + c * u(r, radius) - 0.7 * (1 + c * u(0.0, radius)), 1e-6, radius + 20)
    return 1.0 + c * ball_mean(r70, radius)


def test_one_size_at_several_contrasts_gives_the_analytic_constants():
    cal = single_volume()
    radius = cal.spheres[0].radius_mm
    t_true = u(radius, radius) / u(0.0, radius)
    daisne = cal.methods["daisne"].constants
    assert daisne["daisne_a"] == pytest.approx(t_true, abs=TOL)
    assert daisne["daisne_a"] + daisne["daisne_b"] == pytest.approx(1.0, abs=0.005)
    black = cal.methods["black"].constants
    assert black["black_slope"] + black["black_intercept"] == pytest.approx(1.0, abs=0.005)  # BG = 1 SUV
    assert cal.methods["vandalen"].constants["fraction"] == pytest.approx(
        u(radius, radius) / ball_mean(radius, radius), abs=TOL)
    # SUV70 (voxels >= 70 % of SUVmax) covers a contrast-dependent part of the profile, so Nestle's and
    # Schaefer's constants are least-squares compromises over the SBRs: compare with the analytic fit.
    contrasts = np.array([2.0, 5.0, 11.0])
    suv70 = np.array([analytic_suv70(radius, c) for c in contrasts])
    optimal = 1.0 + contrasts * u(radius, radius)
    beta = float(np.dot(suv70, optimal - 1.0) / np.dot(suv70, suv70))
    assert cal.methods["nestle"].constants["beta"] == pytest.approx(beta, rel=0.06)
    (a, b), *_ = np.linalg.lstsq(np.column_stack([suv70, np.ones(3)]), optimal, rcond=None)
    schaefer = cal.methods["schaefer"].constants
    assert schaefer["schaefer_a"] == pytest.approx(a, abs=TOL)
    assert schaefer["schaefer_b"] == pytest.approx(b, abs=2 * TOL)
    assert cal.methods["nestle"].residual_rms > cal.methods["schaefer"].residual_rms  # one constant fits worse


def test_methods_with_fitted_constants_reproduce_the_calibration_spheres():
    cal = single_volume()
    radius = cal.spheres[0].radius_mm
    allowance = 100 * 3 * (VOXEL / 8) / radius  # an eighth of a voxel in radius
    for name in ("schaefer", "daisne", "black", "vandalen"):
        errors = cal.methods[name].volume_errors_percent
        assert len(errors) == 3 and not cal.methods[name].failures
        assert max(abs(e) for e in errors) < allowance, (name, errors)
    for sphere in cal.spheres:
        # T* lies where the voxel count crosses the true volume: within a few voxels (ties at equal values).
        assert sphere.optimal_volume_ml == pytest.approx(sphere.volume_ml, abs=3 * 0.027)
        assert sphere.background == pytest.approx(1.0, abs=1e-4)


def test_itm_table_and_effective_fwhm_are_recovered():
    cal = two_volumes()
    table = cal.methods["iterative"].constants
    assert table["lut_volumes_ml"] == [3.0, 20.0]
    for volume, fraction in zip(table["lut_volumes_ml"], table["lut_fractions"], strict=True):
        radius = float(np.cbrt(volume * 3000.0 / (4.0 * np.pi)))
        assert fraction == pytest.approx(u(radius, radius) / u(0.0, radius), abs=TOL)
    assert cal.fitted_fwhm_mm == pytest.approx(FWHM, abs=0.5)
    assert cal.parameters_for("iterative", form="model") == {"fwhm_mm": cal.fitted_fwhm_mm}
    assert max(abs(e) for e in cal.methods["iterative"].volume_errors_percent) < 10.0


def test_calibration_round_trips_through_json_and_feeds_the_methods(tmp_path):
    cal = single_volume()
    path = cal.write(tmp_path / "cal.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "petdp-threshold-calibration/1"
    assert "volume_error_rms_percent" in data["methods"]["daisne"]
    loaded = load_calibration(path)
    for name, method in cal.methods.items():
        assert loaded.methods[name].constants == method.constants
        assert loaded.methods[name].residual_rms == method.residual_rms
    assert loaded.protocol == cal.protocol and len(loaded.spheres) == len(cal.spheres)
    assert loaded.spheres[0].optimal_fraction_of_max == cal.spheres[0].optimal_fraction_of_max
    # The constants are keyword parameters of the registered methods.
    from test_thresholds import CENTRE, sphere_pet

    pet = sphere_pet(12.0)
    for name in ("nestle", "schaefer", "daisne", "black", "vandalen"):
        params = loaded.parameters_for(name)
        result = run_method(name, pet, CENTRE, **params)
        assert all(result.parameters[k] == pytest.approx(v) for k, v in params.items())
    with pytest.raises(InputError, match="no calibrated constants"):
        loaded.parameters_for("iterative")


def test_loading_something_else_is_refused(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"schema": "something/1"}))
    with pytest.raises(InputError, match="other.json"):
        load_calibration(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        load_calibration(broken)


def test_the_imager_is_injectable_and_checked():
    calls = []
    stand_in = GaussianImager(FWHM, noise_cov=0.05)

    def recording(activity: sitk.Image, pet_grid: sitk.Image, rng: np.random.Generator) -> sitk.Image:
        calls.append((activity.GetSpacing(), pet_grid.GetSpacing(), activity.GetMetaData("PETDP_Units")))
        return stand_in(activity, pet_grid, rng)

    cal = calibrate(recording, pet_voxel_mm=(4.0, 4.0, 3.0), fine_factor=2, volumes_ml=(4.0, 12.0), sbrs=(5.0,),
                    methods=("nestle", "iterative"), fit_fwhm=False, validate=False)
    assert len(calls) == 2
    assert all(fine == pytest.approx((2.0, 2.0, 1.5)) and pet == pytest.approx((4.0, 4.0, 3.0)) and units == "SUVbw"
               for fine, pet, units in calls)
    assert cal.protocol["imager"] == "recording" and cal.methods["nestle"].volume_errors_percent == []

    def wrong_grid(activity, pet_grid, rng):
        return activity

    with pytest.raises(InputError, match="not on the PET grid"):
        calibrate(wrong_grid, volumes_ml=(4.0,), sbrs=(5.0,), methods=("nestle",), fit_fwhm=False)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sbrs": (1.0, 4.0)}, "sbrs"),
    ({"volumes_ml": (-1.0,)}, "volumes_ml"),
    ({"methods": ("gradient",)}, "cannot calibrate"),
    ({"pet_voxel_mm": 0.0}, "pet_voxel_mm"),
    ({"fine_factor": 1.5}, "fine_factor"),
    ({"repetitions": 0}, "repetitions"),
    ({"volumes_ml": (5.0,), "methods": ("iterative",)}, "two different volumes"),
    ({"sbrs": (4.0,), "methods": ("daisne",)}, "two or more different SBRs"),
])
def test_invalid_calibration_requests(kwargs, message):
    params = {"volumes_ml": (5.0,), "sbrs": (4.0, 8.0), "fit_fwhm": False, "validate": False, **kwargs}
    with pytest.raises(InputError, match=message):
        calibrate(GaussianImager(FWHM, 0.0), **params)
    with pytest.raises(InputError, match="noise_cov"):
        GaussianImager(FWHM, noise_cov=-0.1)


def test_the_project_pet_simulation_plugs_in():
    # The lead's `petdp calibrate` uses phantom.pet_scanner.simulate_pet; a quick configuration here.
    from PETDosePaintingLib.phantom.pet_scanner import ScannerConfig
    from PETDosePaintingLib.segmentation.calibration import scanner_imager

    cal = calibrate(scanner_imager(ScannerConfig.quick()), pet_voxel_mm=4.0, fine_factor=2, volumes_ml=(5.0, 20.0),
                    sbrs=(6.0,), methods=("iterative",), fit_fwhm=False)
    assert "simulate_pet" in cal.protocol["imager"]
    for sphere in cal.spheres:
        assert sphere.background == pytest.approx(1.0, abs=0.1)  # the simulation keeps the SUV scale
        assert 0.2 < sphere.optimal_contrast_fraction < 0.6
    assert all(abs(e) < 15.0 for e in cal.methods["iterative"].volume_errors_percent)
