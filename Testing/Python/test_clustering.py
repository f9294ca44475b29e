"""Clustering / statistical segmentation (FCM, FCM-S, GMM + Potts/ICM) on analytic blurred spheres.

Expected volumes are derived, not measured from the code under test:

* A uniform sphere of radius R blurred by an isotropic Gaussian of SD s has the radial profile (fraction
  of the contrast) ``f(r) = [erf((R-r)/(s sqrt2)) + erf((R+r)/(s sqrt2))]/2
  + s/(r sqrt(2 pi)) [exp(-(R+r)^2/2s^2) - exp(-(R-r)^2/2s^2)]``.
  The phantom's voxelisation (partial-volume fractions over a voxel of side h) adds about h^2/12 to s^2.
  A method whose boundary is the iso-level L (fraction of the contrast) returns about the volume
  ``4/3 pi r_L^3`` with ``f(r_L) = L``.
* FCM with two classes puts the boundary exactly at the midpoint of its two centroids. Where those
  centroids land follows from the FCM equations applied to the noise-free profile over the working
  sphere (weight 4 pi r^2 dr): computed below by quadrature (``_fcm_continuum_level``). The hot centroid
  lies well below the lesion's uptake because the partial-volume voxels outnumber the lesion's own, so
  the boundary sits at 34-46 % of the contrast, not at 50 %.
* The GMM models the partial-volume band explicitly and thresholds the expected tumour fraction at 0.5,
  so its boundary should lie near 50 % of the contrast: the test band is the 40 %-60 % iso-surfaces.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.optimize import brentq
from scipy.special import erf

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.filters import fwhm_to_sigma, gaussian_blur
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, physical_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml
from PETDosePaintingLib.segmentation import clustering
from PETDosePaintingLib.segmentation.registry import METHODS, run_method

BACKGROUND, CONTRAST = 1.0, 7.0  # SUV: tumour-to-background ratio 8


def _grid(voxel_mm: float, extent_mm: float = 100.0) -> sitk.Image:
    n = round(extent_mm / voxel_mm)
    return make_grid((n, n, n), (voxel_mm,) * 3, origin=(-(n - 1) * voxel_mm / 2,) * 3)


def _pet(grid: sitk.Image, activity: np.ndarray, fwhm_mm: float, counts_per_suv: float | None = 50.0,
         seed: int = 1) -> sitk.Image:
    """Blur the activity (SUV) and add Poisson noise: ``counts_per_suv`` counts per SUV in an 8 mL-voxel
    scale (scaled with the voxel volume, i.e. about 14 % background COV at 2 mm), fixed random seed."""
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), grid), fwhm_mm))
    values = blurred.astype(np.float64)
    if counts_per_suv:
        scale = counts_per_suv * float(np.prod(grid.GetSpacing())) / 8.0
        values = np.random.default_rng(seed).poisson(values * scale) / scale
    return image_from_array(values.astype(np.float32), grid, units=Units.SUV_BW)


def _profile(r, radius: float, s: float) -> np.ndarray:
    r = np.maximum(np.asarray(r, dtype=float), 1e-9)
    a, b = (radius - r) / (np.sqrt(2) * s), (radius + r) / (np.sqrt(2) * s)
    return 0.5 * (erf(a) + erf(b)) + s / (r * np.sqrt(2 * np.pi)) * (np.exp(-(b**2)) - np.exp(-(a**2)))


def _sigma_eff(fwhm_mm: float, voxel_mm: float) -> float:
    return float(np.sqrt(fwhm_to_sigma(fwhm_mm) ** 2 + voxel_mm**2 / 12.0))


def _iso_volume_ml(level: float, radius: float, s: float) -> float:
    r = brentq(lambda x: _profile(x, radius, s) - level, 1e-6, radius + 10 * s)
    return sphere_volume_ml(r)


def _fcm_continuum_level(radius: float, s: float, region_mm: float = 40.0, m: float = 2.0) -> float:
    """Midpoint of the two FCM centroids for the noise-free profile over a sphere of ``region_mm``."""
    r = (np.arange(4000) + 0.5) * region_mm / 4000
    w, x = r**2, _profile(r, radius, s)
    v = np.array([0.0, 1.0])
    for _ in range(300):
        inv = np.maximum((x[:, None] - v[None, :]) ** 2, 1e-12) ** (-1.0 / (m - 1.0))
        um = (inv / inv.sum(axis=1, keepdims=True)) ** m * w[:, None]
        v = (um * x[:, None]).sum(axis=0) / um.sum(axis=0)
    return float(v.mean())


def _sphere_pet(voxel_mm: float, radius: float, fwhm_mm: float, seed: int = 1) -> sitk.Image:
    grid = _grid(voxel_mm)
    return _pet(grid, BACKGROUND + CONTRAST * sphere_fraction(grid, (0, 0, 0), radius), fwhm_mm, seed=seed)


# ------------------------------------------------------------------------------ the derivation itself


@pytest.mark.parametrize(("voxel", "radius", "fwhm", "tolerance"), [(2.0, 12.0, 7.0, 0.02), (3.0, 15.0, 6.0, 0.05)])
def test_analytic_profile_describes_the_phantom(voxel, radius, fwhm, tolerance):
    """The formula used for every expected volume below matches the noise-free phantom voxel by voxel."""
    grid = _grid(voxel)
    pet = _pet(grid, BACKGROUND + CONTRAST * sphere_fraction(grid, (0, 0, 0), radius), fwhm, counts_per_suv=None)
    x, y, z = physical_grid(grid)
    measured = (sitk.GetArrayFromImage(pet) - BACKGROUND) / CONTRAST
    predicted = _profile(np.sqrt(x**2 + y**2 + z**2), radius, _sigma_eff(fwhm, voxel))
    assert np.abs(measured - predicted).max() < tolerance


# ----------------------------------------------------------------------------------------- volumes


@pytest.mark.parametrize(("voxel", "radius", "fwhm"), [(2.0, 12.0, 7.0), (4.0, 15.0, 7.0), (2.0, 10.0, 6.0)])
def test_fcm_volume_matches_the_fcm_fixed_point_of_the_blurred_sphere(voxel, radius, fwhm):
    s = _sigma_eff(fwhm, voxel)
    level = _fcm_continuum_level(radius, s)
    assert 0.3 < level < 0.5  # below 50 %: the partial-volume voxels drag the hot centroid down
    expected = _iso_volume_ml(level, radius, s)
    result = clustering.fcm_segmentation(_sphere_pet(voxel, radius, fwhm), (0.0, 0.0, 0.0))
    assert result.volume_ml == pytest.approx(expected, rel=0.10)
    # Two classes: the boundary is exactly the midpoint of the centroids, and the mask is above it.
    centroids = np.asarray(result.details["class_centroids"])[:, 0]
    assert result.threshold == pytest.approx(centroids.mean())
    values = sitk.GetArrayFromImage(_sphere_pet(voxel, radius, fwhm))
    assert values[sitk.GetArrayFromImage(result.mask) > 0].min() >= result.threshold


def test_fcm_s_uses_the_smoothed_channel_and_keeps_the_fcm_volume():
    voxel, radius, fwhm = 2.0, 12.0, 7.0
    s = _sigma_eff(fwhm, voxel)
    expected = _iso_volume_ml(_fcm_continuum_level(radius, s), radius, s)
    result = clustering.fcm_s_segmentation(_sphere_pet(voxel, radius, fwhm), (0.0, 0.0, 0.0))
    assert np.asarray(result.details["class_centroids"]).shape == (2, 2)  # [SUV, SUV after diffusion]
    assert result.volume_ml == pytest.approx(expected, rel=0.10)
    assert result.threshold is None  # two features: no single SUV threshold


@pytest.mark.parametrize(("voxel", "radius", "fwhm"), [(2.0, 12.0, 7.0), (3.0, 15.0, 6.0), (4.0, 15.0, 7.0)])
def test_gmm_boundary_lies_between_the_40_and_60_percent_iso_surfaces(voxel, radius, fwhm):
    s = _sigma_eff(fwhm, voxel)
    result = clustering.gmm_segmentation(_sphere_pet(voxel, radius, fwhm), (0.0, 0.0, 0.0))
    assert _iso_volume_ml(0.6, radius, s) <= result.volume_ml <= _iso_volume_ml(0.4, radius, s)
    # The fitted pure classes are the background and the lesion's uptake (not a partial-volume mixture).
    assert result.background == pytest.approx(BACKGROUND, abs=0.1)
    assert result.reference_value > BACKGROUND + 0.85 * CONTRAST


# -------------------------------------------------------------------------- one-click behaviour


@pytest.mark.parametrize("method", ["fcm", "fcm_s", "gmm"])
def test_necrotic_core_is_filled_even_when_clicked(method):
    grid = _grid(2.0)
    outer = sphere_fraction(grid, (0, 0, 0), 15.0)
    core = sphere_fraction(grid, (0, 0, 0), 8.0)
    pet = _pet(grid, BACKGROUND + CONTRAST * (outer - core), 6.0)  # core at background uptake
    result = run_method(method, pet, (0.0, 0.0, 0.0))  # the click is in the cold core
    mask = sitk.GetArrayFromImage(result.mask) > 0
    assert mask[core > 0].all()
    s = _sigma_eff(6.0, 2.0)
    # Filled, the volume is that of the outer sphere's boundary band (not outer minus core).
    assert _iso_volume_ml(0.6, 15.0, s) <= result.volume_ml <= _iso_volume_ml(0.3, 15.0, s)


@pytest.mark.parametrize("method", ["fcm", "fcm_s", "gmm"])
def test_hotter_neighbour_a_few_mm_away_is_never_returned(method):
    grid = _grid(2.0)
    lesion = sphere_fraction(grid, (-12.0, 0.0, 0.0), 10.0)
    neighbour = sphere_fraction(grid, (13.0, 0.0, 0.0), 10.0)  # 5 mm gap, more than twice the contrast
    pet = _pet(grid, BACKGROUND + 5.0 * lesion + 11.0 * neighbour, 6.0)
    result = run_method(method, pet, (-12.0, 0.0, 0.0))
    mask = sitk.GetArrayFromImage(result.mask) > 0
    assert not mask[neighbour >= 0.5].any()
    assert mask[sphere_fraction(grid, (-12.0, 0.0, 0.0), 6.0) > 0].all()  # the lesion's core (>= 80 % contrast)
    assert result.reference_value < BACKGROUND + 5.0 + 1.0  # the lesion's own uptake, not the neighbour's


@pytest.mark.parametrize(("method", "parameters"), [("fcm", {"n_clusters": 3}), ("gmm", {"n_classes": 3})])
def test_heterogeneous_lesion_needs_the_above_background_decision(method, parameters):
    """A warm lesion (contrast 3, R 15 mm) with a hot core (contrast 9, R 7 mm): three classes.

    ``above_background`` counts the warm class as tumour, so the boundary is that of the warm sphere
    (between its 30 % and 60 % iso-surfaces; the core is 8 mm inside the edge and adds nothing there).
    ``partial_volume`` reads the warm class as a one-third tumour fraction of the hot core and leaves it
    out: the documented trade-off.
    """
    grid = _grid(2.0)
    pet = _pet(grid, BACKGROUND + 3.0 * sphere_fraction(grid, (0, 0, 0), 15.0)
               + 6.0 * sphere_fraction(grid, (0, 0, 0), 7.0), 6.0)
    s = _sigma_eff(6.0, 2.0)
    whole = run_method(method, pet, (0.0, 0.0, 0.0), decision="above_background", **parameters)
    assert _iso_volume_ml(0.6, 15.0, s) <= whole.volume_ml <= _iso_volume_ml(0.3, 15.0, s)
    hot_only = run_method(method, pet, (0.0, 0.0, 0.0), decision="partial_volume", **parameters)
    assert hot_only.volume_ml < 0.5 * whole.volume_ml


def test_click_on_the_lesion_edge_grows_from_the_lesion():
    pet = _sphere_pet(2.0, 12.0, 7.0)
    centre = clustering.fcm_segmentation(pet, (0.0, 0.0, 0.0))
    edge = clustering.fcm_segmentation(pet, (17.0, 0.0, 0.0))  # 5 mm outside the sphere, outside the mask
    assert edge.details["grown_from"] == "seed's local peak"
    assert np.array_equal(sitk.GetArrayFromImage(edge.mask), sitk.GetArrayFromImage(centre.mask))


# ----------------------------------------------------------------------------------- building blocks


def test_fuzzy_c_means_finds_two_separated_groups():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(1.0, 0.1, 5000), rng.normal(6.0, 0.1, 500)])
    fit = clustering.fuzzy_c_means(x, 2)
    assert fit.converged
    assert fit.centroids[:, 0] == pytest.approx([1.0, 6.0], abs=0.02)
    assert np.allclose(fit.memberships.sum(axis=1), 1.0)


def test_partial_volume_mixture_recovers_the_pure_classes():
    rng = np.random.default_rng(4)
    t = rng.uniform(0.0, 1.0, 4000)  # a partial-volume band, uniform in tissue fraction (the model's form)
    band_sd = np.sqrt((1 - t) * 0.15**2 + t * 0.4**2)
    x = np.concatenate([rng.normal(1.0, 0.15, 20000), rng.normal(8.0, 0.4, 3000),
                        (1 - t) * 1.0 + t * 8.0 + band_sd * rng.standard_normal(t.size)])
    fit = clustering.partial_volume_mixture(x, 2)
    assert fit.converged
    # Five discrete levels (t = 1/6 ... 5/6) stand for the continuum: band samples near t = 1 are partly
    # absorbed by the pure lesion class and pull its mean down a little; allow 0.2 SUV (3 % of the contrast).
    assert fit.means == pytest.approx([1.0, 8.0], abs=0.2)
    assert np.sqrt(fit.variances[0]) == pytest.approx(0.15, abs=0.02)
    pure_weight = fit.weights[:2] / fit.weights.sum()
    assert pure_weight == pytest.approx([20000 / 27000, 3000 / 27000], abs=0.03)


@pytest.mark.parametrize(("log_odds", "kept"), [(5.0, False), (7.0, True)])
def test_icm_flips_an_isolated_voxel_only_when_its_evidence_is_weaker_than_the_prior(log_odds, kept):
    # A voxel whose 6 neighbours are all class 0: class 1 wins iff log-odds > 6 beta (beta = 1).
    inside = np.ones((5, 5, 5), dtype=bool)
    log_joint = np.zeros((5, 5, 5, 2))
    log_joint[..., 0] = 10.0  # the neighbours are firmly class 0
    log_joint[2, 2, 2] = (0.0, log_odds)
    labels, post = clustering.potts_icm(log_joint, inside, beta=1.0, connectivity=6)
    assert bool(labels[2, 2, 2] == 1) is kept
    assert (labels[inside] == 0).sum() == 125 - int(kept)
    assert np.allclose(post.sum(axis=-1), 1.0)


# --------------------------------------------------------------------------------------- bad input


def test_seed_outside_the_image_is_refused():
    with pytest.raises(InputError, match="outside the image"):
        clustering.fcm_segmentation(_sphere_pet(2.0, 12.0, 7.0), (500.0, 0.0, 0.0))


def test_nan_in_the_pet_is_refused():
    pet = _sphere_pet(2.0, 12.0, 7.0)
    values = sitk.GetArrayFromImage(pet)
    values[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        clustering.gmm_segmentation(image_from_array(values, pet, units=Units.SUV_BW), (0.0, 0.0, 0.0))


def test_empty_roi_is_refused():
    pet = _sphere_pet(2.0, 12.0, 7.0)
    roi = image_from_array(np.zeros(pet.GetSize()[::-1], dtype=bool), pet)
    with pytest.raises(InputError, match="ROI is empty"):
        clustering.fcm_segmentation(pet, (0.0, 0.0, 0.0), roi)


def test_click_in_flat_background_is_refused():
    grid = _grid(2.0)
    pet = _pet(grid, np.full(grid.GetSize()[::-1], BACKGROUND), 6.0)
    with pytest.raises(InputError):
        clustering.gmm_segmentation(pet, (0.0, 0.0, 0.0))


@pytest.mark.parametrize(("method", "parameters", "message"), [
    ("fcm", {"n_clusters": 5}, "n_clusters"),
    ("fcm", {"decision": "largest"}, "decision"),
    ("fcm_s", {"spatial_weight": -1.0}, "spatial_weight"),
    ("gmm", {"beta": -0.5}, "beta"),
    ("gmm", {"n_classes": 7}, "pure classes"),
    ("gmm", {"connectivity": 18}, "connectivity"),
    ("gmm", {"fraction": 0.4}, "does not take"),
])
def test_bad_parameters_are_refused_with_their_name(method, parameters, message):
    with pytest.raises(InputError, match=message):
        run_method(method, _sphere_pet(2.0, 12.0, 7.0), (0.0, 0.0, 0.0), **parameters)


def test_registry_names_are_the_cli_contract():
    for name in ("fcm", "fcm_s", "gmm"):
        assert METHODS[name].name == name
        assert not METHODS[name].needs_ct
    assert "FLAB" in clustering.FLAB_NOTE  # FLAB is documented as left out, not silently missing
    assert "flab" not in METHODS
