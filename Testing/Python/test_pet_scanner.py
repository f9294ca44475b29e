"""The PETSTEP-style scanner simulator and the NEMA/IEC phantom measurements.

Expected values come from first principles: a uniform cylinder of known activity, the attenuation
exp(-mu x 2R) of lines through the centre of a water cylinder, counts = sensitivity x activity, Poisson
statistics (COV ~ 1/sqrt(counts)), a Gaussian blur of known FWHM; and, for the one slow test, the
clinical ranges quoted in the issue (background COV 10-15 %, EARL-like recoveries).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import GeometryError, InputError, UnitsError
from PETDosePaintingLib.imaging.filters import FWHM_PER_SIGMA, gaussian_blur
from PETDosePaintingLib.imaging.image import (
    Units,
    get_units,
    image_from_array,
    make_grid,
    physical_grid,
    same_geometry,
    voxel_volume_ml,
)
from PETDosePaintingLib.phantom.nema import (
    background_statistics,
    effective_fwhm,
    measure_nema,
    nema_phantom,
    recovery_coefficients,
)
from PETDosePaintingLib.phantom.pet_scanner import (
    MU_UNITS,
    ScannerConfig,
    compatible_pet_grid,
    osem_reconstruct,
    simulate_pet,
)
from PETDosePaintingLib.phantom.projector import PlaneGrid, SinogramGeometry, get_projector
from PETDosePaintingLib.phantom.shapes import ellipsoid_fraction

MU_WATER = 0.096  # 1/cm at 511 keV


def _fine_grid(n_xy: int = 128, n_z: int = 8, voxel: float = 1.0) -> sitk.Image:
    return make_grid((n_xy, n_xy, n_z), (voxel,) * 3, (-(n_xy - 1) / 2 * voxel, -(n_xy - 1) / 2 * voxel,
                                                        -(n_z - 1) / 2 * voxel))


def _cylinders(grid: sitk.Image, *, body_radius: float | None = 50.0, rod_radius: float = 0.0, body: float = 1.0,
               rod: float = 0.0, mu_body: float = MU_WATER) -> tuple[sitk.Image, sitk.Image]:
    """Activity (SUVbw) and mu (1/cm): a water cylinder along z with an optional central hot rod."""
    shape = sitk.GetArrayViewFromImage(grid).shape
    f_body = (ellipsoid_fraction(grid, (0, 0, 0), (body_radius, body_radius, 1e6), supersample=3)
              if body_radius else np.zeros(shape, np.float32))
    f_rod = (ellipsoid_fraction(grid, (0, 0, 0), (rod_radius, rod_radius, 1e6), supersample=5)
             if rod_radius else np.zeros(shape, np.float32))
    activity = body * (f_body - f_rod) + rod * f_rod
    return (image_from_array(activity.astype(np.float32), grid, units=Units.SUV_BW),
            image_from_array((mu_body * f_body).astype(np.float32), grid, units=MU_UNITS))


def _region(image: sitk.Image, r_min: float, r_max: float) -> np.ndarray:
    x, y, _ = physical_grid(image)
    r = np.hypot(x, y)
    return sitk.GetArrayFromImage(image)[(r >= r_min) & (r < r_max)]


def test_noise_free_uniform_cylinder_is_recovered_at_centre_and_edge_with_attenuation():
    fine = _fine_grid(n_z=6)
    activity, mu = _cylinders(fine, body=1.0)
    result = simulate_pet(activity, mu, compatible_pet_grid(fine, 2.0), noise=False)
    centre = _region(result.image, 0, 10).mean()
    edge = _region(result.image, 30, 37).mean()  # > 1.5 effective FWHM inside the rim
    assert centre == pytest.approx(1.0, abs=0.03)
    assert edge == pytest.approx(1.0, abs=0.03)
    assert centre / edge == pytest.approx(1.0, abs=0.02)  # attenuation (exp(-0.96) at the centre) corrected


def test_counts_follow_sensitivity_times_activity_and_central_lines_are_attenuated_by_exp_mu_2r():
    fine = _fine_grid(n_z=6)
    pet = compatible_pet_grid(fine, 2.0)
    config = ScannerConfig(count_level=10000.0, scatter_fraction=0.3, randoms_fraction=0.15)
    rod_in_air, no_mu = _cylinders(fine, body_radius=None, rod_radius=3.0, rod=10.0, mu_body=0.0)
    _, water = _cylinders(fine, body_radius=50.0)
    in_air = simulate_pet(rod_in_air, no_mu, pet, config, noise=False, kbq_per_ml_per_unit=2.0)
    in_water = simulate_pet(rod_in_air, water, pet, config, noise=False, kbq_per_ml_per_unit=2.0)
    # Without attenuation: trues = (trues per kBq) x (kBq/mL per unit) x (units x mL in the slabs).
    unit_ml = float(sitk.GetArrayViewFromImage(rod_in_air).sum()) * voxel_volume_ml(rod_in_air)
    assert in_air.trues == pytest.approx(10000.0 * 2.0 * unit_ml, rel=1e-3)
    # Every line through a thin central rod crosses 2R = 100 mm of water.
    assert in_water.trues / in_air.trues == pytest.approx(np.exp(-0.0096 * 100.0), rel=0.01)
    # Scatter and randoms fractions as configured; NEC = T^2 / (T + S + R).
    t, s, r = in_water.trues, in_water.scatter, in_water.randoms
    assert s / (t + s) == pytest.approx(0.3, rel=1e-4)
    assert r / (t + s + r) == pytest.approx(0.15, rel=1e-4)
    assert in_water.nec == pytest.approx(t * t / (t + s + r), rel=1e-6)
    assert in_water.prompts == pytest.approx(t + s + r, rel=1e-4)  # noise-free data are the expectation


def test_psf_modelling_sharpens_a_small_hot_rod():
    fine = _fine_grid(n_z=4)
    activity, mu = _cylinders(fine, rod_radius=4.0, rod=8.0)
    pet = compatible_pet_grid(fine, 2.0)
    peaks = {}
    for psf in (False, True):
        image = simulate_pet(activity, mu, pet, ScannerConfig(psf_modelling=psf), noise=False).image
        peaks[psf] = _region(image, 0, 4).max() / 8.0
    assert peaks[False] < 0.9  # partial-volume loss of an 8 mm rod
    assert peaks[True] > peaks[False] + 0.03


def test_poisson_noise_is_unbiased_and_cov_halves_with_four_times_the_counts():
    fine = _fine_grid(n_z=16)
    activity, mu = _cylinders(fine, body=1.0)
    pet = compatible_pet_grid(fine, 2.0)
    cov, mean = {}, {}
    for level in (4000.0, 16000.0):
        image = simulate_pet(activity, mu, pet, ScannerConfig(count_level=level), rng=11).image
        values = _region(image, 0, 32)
        mean[level], cov[level] = values.mean(), values.std() / values.mean()
    assert mean[4000.0] == pytest.approx(1.0, abs=0.03)
    assert mean[16000.0] == pytest.approx(1.0, abs=0.03)
    assert 0.40 < cov[16000.0] / cov[4000.0] < 0.62  # 1 / sqrt(4) = 0.5


def test_simulation_is_deterministic_for_a_seed():
    fine = _fine_grid(n_z=2)
    activity, mu = _cylinders(fine)
    pet = compatible_pet_grid(fine, 2.0)
    config = ScannerConfig.quick()
    a, b, c = (sitk.GetArrayFromImage(simulate_pet(activity, mu, pet, config, rng=seed).image) for seed in (5, 5, 6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_output_is_on_the_pet_grid_in_the_activity_units_with_its_metadata():
    fine = _fine_grid(n_z=6)
    activity, mu = _cylinders(fine)
    activity.SetMetaData("PETDP_Description", "test cylinder")
    pet = compatible_pet_grid(fine, 4.0, slice_mm=3.0)
    assert pet.GetSpacing() == (4.0, 4.0, 3.0)
    assert pet.GetSize() == (32, 32, 2)
    result = simulate_pet(activity, mu, pet, ScannerConfig.quick(), rng=1)
    assert same_geometry(result.image, pet)
    assert result.image.GetPixelID() == sitk.sitkFloat32
    assert get_units(result.image) == Units.SUV_BW
    assert result.image.GetMetaData("PETDP_Description") == "test cylinder"
    assert (result.iterations, result.subsets) == (3, 12)
    assert {"psf", "projection", "osem", "total"} <= set(result.timings_s)


def test_osem_reconstruct_converges_to_a_uniform_disk():
    grid = PlaneGrid.centred(48, 48, 2.0)
    projector = get_projector(grid, SinogramGeometry.covering(96, 96, n_angles=48, bin_width_mm=2.0))
    x, y = grid.pixel_centres_mm()
    disk = (np.hypot(x, y) <= 35).astype(np.float32) * 3.0
    image = osem_reconstruct(projector.forward(disk), projector, iterations=10, subsets=8)
    assert image[np.hypot(x, y) < 20].mean() == pytest.approx(3.0, rel=0.01)
    assert image[np.hypot(x, y) > 42].max() < 0.1


def _shifted(image: sitk.Image, dz: float) -> sitk.Image:
    out = sitk.Image(image)
    origin = list(out.GetOrigin())
    origin[2] += dz
    out.SetOrigin(origin)
    return out


def test_invalid_grids_units_and_values_are_refused():
    fine = _fine_grid(n_z=12)
    activity, mu = _cylinders(fine)
    pet = compatible_pet_grid(fine, 2.0)
    with pytest.raises(InputError, match="integer multiple"):
        simulate_pet(activity, mu, make_grid((64, 64, 8), (2, 2, 1.5), pet.GetOrigin()))
    with pytest.raises(InputError, match="boundary between activity slices"):
        simulate_pet(activity, mu, _shifted(compatible_pet_grid(fine, 2.0), 0.5))
    with pytest.raises(InputError, match="axial extent"):
        simulate_pet(activity, mu, make_grid((64, 64, 7), (2, 2, 2), pet.GetOrigin()))
    with pytest.raises(InputError, match="in-plane field of view"):
        simulate_pet(activity, mu, make_grid((40, 40, 6), (2, 2, 2), (-39, -39, pet.GetOrigin()[2])))
    tilted = sitk.Image(pet)
    tilted.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(InputError, match="identity direction"):
        simulate_pet(activity, mu, tilted)
    with pytest.raises(GeometryError):
        simulate_pet(activity, _shifted(mu, 1.0), pet)
    hu = sitk.Image(mu)
    hu.SetMetaData("PETDP_Units", Units.HU)
    with pytest.raises(UnitsError, match="1/cm"):
        simulate_pet(activity, hu, pet)
    with pytest.raises(InputError, match="not HU"):
        simulate_pet(activity, image_from_array(sitk.GetArrayFromImage(mu) * 1000, mu), pet)
    with pytest.raises(InputError, match=">= 0"):
        simulate_pet(image_from_array(-sitk.GetArrayFromImage(activity), activity), mu, pet)


@pytest.mark.parametrize("kwargs, match", [
    ({"subsets": 20}, "divisible"),
    ({"axial_filter": "medium"}, "axial_filter"),
    ({"count_level": "medium"}, "count_level"),
    ({"count_level": -5.0}, "positive"),
    ({"scatter_fraction": 1.0}, "scatter_fraction"),
    ({"psf_fwhm_mm": -1.0}, "psf_fwhm_mm"),
])
def test_invalid_scanner_configs_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        ScannerConfig(**kwargs)


# --------------------------------------------------------------------------------------------------
# NEMA / IEC phantom


@pytest.fixture(scope="module")
def iec():
    return nema_phantom(field_of_view_mm=(310.0, 240.0, 70.0))


@pytest.fixture(scope="module")
def iec_2mm():
    return nema_phantom(voxel_mm=2.0, field_of_view_mm=(310.0, 240.0, 70.0))


def test_iec_phantom_truth(iec):
    act = sitk.GetArrayViewFromImage(iec.activity)
    mu = sitk.GetArrayViewFromImage(iec.mu)
    x, y, _ = physical_grid(iec.activity)
    centres = np.array([s.centre_lps for s in iec.spheres])
    # Six spheres 10..37 mm on a 114.4 mm circle, 60 degrees apart (neighbours 57.2 mm apart).
    assert [s.diameter_mm for s in iec.spheres] == [10.0, 13.0, 17.0, 22.0, 28.0, 37.0]
    assert np.allclose(np.hypot(centres[:, 0], centres[:, 1]), 57.2)
    for sphere in iec.spheres:
        ml = float(sitk.GetArrayViewFromImage(iec.sphere_masks[sphere.diameter_mm]).sum()) / 1000.0
        assert ml == pytest.approx(sphere.volume_ml, rel=0.04)
        k, j, i = iec.activity.TransformPhysicalPointToIndex(sphere.centre_lps)[::-1]
        assert act[k, j, i] == pytest.approx(4.0)
    k0 = act.shape[0] // 2
    j0, i0 = iec.activity.TransformPhysicalPointToIndex((0.0, 0.0, 0.0))[1::-1]
    assert act[k0, j0, i0] == 0.0  # the lung insert is cold
    assert mu[k0, j0, i0] == pytest.approx(0.029, abs=1e-3)
    bg = (np.hypot(x[k0], y[k0] - 70) < 5)  # posterior background
    assert np.allclose(act[k0][bg], 1.0) and np.allclose(mu[k0][bg], MU_WATER)
    # Interior 294 mm wide at the seam: the background reaches |x| = 147 mm, the PMMA wall 150 mm.
    row = np.argmin(np.abs(y[k0, :, 0] - 35.0))
    assert act[k0, row][np.abs(x[k0, row]) < 146].min() == pytest.approx(1.0)
    assert act[k0, row][np.abs(x[k0, row]) > 148].max() == 0.0
    assert mu[k0, row][(np.abs(x[k0, row]) > 148) & (np.abs(x[k0, row]) < 149.5)].min() > 0.1


def test_background_rois_follow_nema_placement(iec):
    act = sitk.GetArrayViewFromImage(iec.activity)
    x, y, z = physical_grid(iec.activity)
    assert len(iec.background_rois) == 60
    assert sorted({roi[2] for roi in iec.background_rois}) == [-20.0, -10.0, 0.0, 10.0, 20.0]
    for cx, cy, cz in iec.background_rois:
        # The ROI grown by the 15 mm NEMA margin (minus one voxel for partial volumes) holds only background.
        k = int(np.argmin(np.abs(z[:, 0, 0] - cz)))
        near = np.hypot(x[k] - cx, y[k] - cy) <= 18.5 + 14.0
        assert np.allclose(act[k][near], 1.0)


def test_measurements_on_the_truth_give_unit_recovery_and_zero_noise(iec_2mm):
    iec = iec_2mm
    stats = background_statistics(iec.activity, iec)
    assert stats.mean == pytest.approx(1.0)
    assert stats.cov == pytest.approx(0.0, abs=1e-6)
    assert stats.n_rois == 60
    for rc in recovery_coefficients(iec.activity, iec):
        assert rc.rc_max == pytest.approx(1.0)
        if rc.diameter_mm >= 17:  # a 1 mL sphere (r = 6.2 mm) fits inside (up to 2 mm voxel edges)
            assert 0.99 < rc.rc_peak <= 1.0 + 1e-6
            assert 0.9 < rc.rc_a50 <= 1.0
            assert 0.9 < rc.rc_voi <= 1.0


def test_effective_fwhm_recovers_a_known_gaussian_blur(iec_2mm):
    blurred = gaussian_blur(iec_2mm.activity, 8.0)
    # 3 x 3 x 3 block average (6 mm voxels centred on fine voxels): the mean of 3 samples 2 mm apart adds
    # a variance of (2 mm)^2 (3^2 - 1) / 12 per axis to the 8 mm Gaussian.
    pet = sitk.BinShrink(blurred, [3, 3, 3])
    fit = effective_fwhm(pet, iec_2mm)
    expected = np.sqrt(8.0**2 + FWHM_PER_SIGMA**2 * 4.0 * 8.0 / 12.0)
    assert fit.fwhm_inplane_mm == pytest.approx(expected, abs=0.3)
    assert fit.fwhm_axial_mm == pytest.approx(expected, abs=0.3)
    assert fit.scale == pytest.approx(1.0, abs=0.02)
    assert fit.offset == pytest.approx(0.0, abs=0.02)


@pytest.mark.slow
def test_default_scanner_lands_in_the_clinical_range_on_the_iec_phantom():
    phantom = nema_phantom(sphere_to_background=10.0)
    result = simulate_pet(phantom.activity, phantom.mu, compatible_pet_grid(phantom.activity, 2.0), rng=2)
    m = measure_nema(result.image, phantom)
    assert 0.10 <= m.background.cov <= 0.15  # clinical background COV at typical counts
    assert m.background.mean == pytest.approx(1.0, abs=0.03)  # quantitative calibration
    rc_max = {r.diameter_mm: r.rc_max for r in m.recovery}
    assert 0.9 <= rc_max[37.0] <= 1.29  # EARL 1 lower bound to EARL 2 upper bound
    assert 0.3 <= rc_max[10.0] <= 0.88
    assert rc_max[10.0] < rc_max[13.0] < rc_max[22.0]
    assert 5.0 < m.fwhm.fwhm_mm < 9.0
