"""Restoration (Anscombe + bilateral denoising, PSF deconvolution): behaviour checked from first principles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import Units, get_units, image_from_array, make_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction
from PETDosePaintingLib.segmentation.restoration import (
    RESTORATION_KEY,
    anscombe,
    bilateral_filter,
    deblur,
    denoise,
    estimate_count_scale,
    inverse_anscombe,
    restore,
    restore_with_report,
)

FWHM = 6.0


def _poisson_image(mean_suv: np.ndarray, k: float, seed: int, spacing=(4.0, 4.0, 4.0), units=Units.SUV_BW):
    """Poisson counts k * SUV, back in SUV: variance = mean / k."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.clip(mean_suv, 0, None) * k)
    return image_from_array((counts / k).astype(np.float32), spacing=spacing, units=units)


def _sphere_phantom(radius=12.0, contrast=5.0, voxel=4.0, n=32):
    grid = make_grid((n, n, n), (voxel,) * 3, origin=(-(n - 1) * voxel / 2,) * 3)
    frac = sphere_fraction(grid, (1.1, -0.7, 0.4), radius)
    truth = (1.0 + (contrast - 1.0) * frac).astype(np.float32)
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(truth, grid), FWHM))
    return grid, truth, blurred


# ----------------------------------------------------------------------------------------- Anscombe


@pytest.mark.parametrize("counts", [3.0, 10.0, 40.0])
def test_unbiased_inverse_anscombe_recovers_the_poisson_mean(counts):
    # Mäkitalo & Foi: the inverse of E[A(X)] is the Poisson mean, also at low counts where the algebraic
    # inverse (A/2)^2 - 3/8 is biased low.
    k = 50.0
    x = np.random.default_rng(1).poisson(counts, 400_000) / k
    mean_a = float(np.mean(anscombe(x, k)))
    assert inverse_anscombe(np.array([mean_a]), k)[0] == pytest.approx(counts / k, rel=0.02)
    algebraic = ((mean_a / 2) ** 2 - 3 / 8) / k
    if counts <= 3:
        assert algebraic < 0.93 * counts / k  # the bias the unbiased inverse removes


def test_anscombe_stabilises_the_variance_to_one():
    for counts in (10.0, 30.0, 100.0):
        x = np.random.default_rng(2).poisson(counts, 200_000) / 4.0
        assert np.var(anscombe(x, 4.0)) == pytest.approx(1.0, abs=0.06)


def test_count_scale_from_a_background_mask_and_automatically():
    k = 80.0
    image = _poisson_image(np.full((20, 20, 20), 1.5), k, seed=3)
    mask = image_from_array(np.ones((20, 20, 20), bool), image)
    assert estimate_count_scale(image, mask) == pytest.approx(k, rel=0.05)
    assert estimate_count_scale(image) == pytest.approx(k, rel=0.15)
    with pytest.raises(InputError, match="at least 10"):
        estimate_count_scale(image, np.zeros((20, 20, 20), bool))


# ------------------------------------------------------------------------------------------ denoise


def test_bilateral_filter_matches_its_definition_on_a_small_array():
    rng = np.random.default_rng(4)
    a = rng.normal(10, 1, (6, 7, 8)).astype(np.float32)
    a[:, :, 4:] += 6.0
    spacing, ss, sr = np.array([3.0, 2.0, 2.0]), 3.0, 1.5
    out = bilateral_filter(a, spacing, ss, sr, truncate=2.0, workers=1)
    # brute force, straight from Tomasi & Manduchi's definition (sphere of 2 sigma, renormalised at borders)
    ref = np.empty_like(a)
    idx = np.argwhere(np.ones(a.shape, bool))
    for p in idx:
        d = (idx - p) * spacing
        d2 = (d**2).sum(axis=1)
        near = d2 <= (2 * ss) ** 2
        q = idx[near]
        vals = a[q[:, 0], q[:, 1], q[:, 2]]
        w = np.exp(-d2[near] / (2 * ss**2)) * np.exp(-((vals - a[tuple(p)]) ** 2) / (2 * sr**2))
        ref[tuple(p)] = (w * vals).sum() / w.sum()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # the two-thread split gives the same result
    big = rng.normal(10, 1, (40, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(bilateral_filter(big, spacing, ss, sr, workers=2),
                               bilateral_filter(big, spacing, ss, sr, workers=1), rtol=1e-6, atol=1e-6)


def test_denoise_reduces_noise_keeps_edges_and_photometry():
    k = 25.0  # 25 counts per SUV unit: background CoV 20 %
    step = np.ones((24, 24, 24), np.float32)
    step[:, :, 12:] = 4.0
    image = _poisson_image(step, k, seed=5)
    out = denoise(image)
    a, b = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(out)
    assert get_units(out) == Units.SUV_BW
    assert b.sum() == pytest.approx(a.sum(), rel=1e-5)  # photometry preserved
    flat = (slice(4, 20), slice(4, 20), slice(2, 8))
    assert b[flat].std() < 0.6 * a[flat].std()  # noise reduced in the flat region
    assert b[flat].mean() == pytest.approx(1.0, abs=0.02)  # and the level unbiased
    # the edge is preserved: the columns next to the step keep their own level (a Gaussian of the same
    # spatial sigma would pull them about halfway to the other side)
    assert b[flat[0], flat[1], 11].mean() == pytest.approx(1.0, abs=0.15)
    assert b[flat[0], flat[1], 12].mean() == pytest.approx(4.0, abs=0.4)
    diffusion = sitk.GetArrayFromImage(denoise(image, method="diffusion"))
    assert diffusion[flat].std() < a[flat].std()


# ------------------------------------------------------------------------------------------- deblur


@pytest.mark.parametrize("method", ["landweber", "richardson_lucy", "van_cittert"])
def test_deblurring_moves_a_blurred_sphere_towards_the_truth(method):
    grid, truth, blurred = _sphere_phantom()
    out = sitk.GetArrayFromImage(deblur(image_from_array(blurred, grid), FWHM, method=method, iterations=10))
    assert out.min() >= 0.0  # positivity
    assert np.abs(out - truth).sum() < 0.75 * np.abs(blurred - truth).sum()
    assert out.sum() == pytest.approx(blurred.sum(), rel=0.02)  # mirror boundaries keep the mass


def test_deconvolution_does_not_wrap_around():
    grid = make_grid((24, 24, 24), (4.0, 4.0, 4.0))
    hot = np.zeros((24, 24, 24), np.float32)
    hot[10:14, 10:14, 0:3] = 10.0  # touches the x = 0 face
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(hot, grid), FWHM))
    for method in ("landweber", "richardson_lucy", "van_cittert"):
        out = sitk.GetArrayFromImage(deblur(image_from_array(blurred, grid), FWHM, method=method))
        assert out[:, :, -4:].max() < 1e-3  # nothing appears at the opposite face


def test_numpy_landweber_agrees_with_simpleitk_in_the_interior():
    grid, _truth, blurred = _sphere_phantom()
    image = image_from_array(blurred, grid)
    ours = sitk.GetArrayFromImage(deblur(image, FWHM, iterations=5, alpha=1.0))
    theirs = sitk.GetArrayFromImage(deblur(image, FWHM, iterations=5, alpha=1.0, backend="sitk"))
    inner = (slice(6, -6),) * 3
    assert np.abs(ours[inner] - theirs[inner]).max() < 0.02 * blurred.max()


def test_discrepancy_rule_stops_early_when_the_data_are_already_within_the_noise():
    grid, _truth, blurred = _sphere_phantom()
    image = image_from_array(blurred, grid)
    # a noise level far above the blur residual: stop before the first update (the data as they are)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(deblur(image, FWHM, noise_sd=100.0)), blurred)
    # a tiny noise level: all the iterations run, as without the rule
    np.testing.assert_allclose(sitk.GetArrayFromImage(deblur(image, FWHM, noise_sd=1e-6)),
                               sitk.GetArrayFromImage(deblur(image, FWHM)), rtol=1e-6)


# ------------------------------------------------------------------------------------------ restore


def test_restore_keeps_units_records_parameters_and_works_on_bq_per_ml():
    _grid, _truth, blurred = _sphere_phantom(n=24)
    suv = _poisson_image(blurred, 100.0, seed=6, units=Units.SUV_BW)
    out, report = restore_with_report(suv, FWHM)
    assert get_units(out) == Units.SUV_BW
    recorded = json.loads(out.GetMetaData(RESTORATION_KEY))
    assert recorded["deblur_method"] == "landweber" and recorded["iterations_run"] == 10
    assert report.count_scale == pytest.approx(100.0, rel=0.2)
    assert sitk.GetArrayFromImage(out).sum() == pytest.approx(sitk.GetArrayFromImage(suv).sum(), rel=1e-5)
    # the same data in Bq/mL (x 5000): the restoration is scale-equivariant (count scale / 5000)
    bq = image_from_array(sitk.GetArrayFromImage(suv) * 5000.0, suv, units=Units.BQML)
    out_bq = restore(bq, FWHM)
    assert get_units(out_bq) == Units.BQML
    np.testing.assert_allclose(sitk.GetArrayFromImage(out_bq) / 5000.0, sitk.GetArrayFromImage(out),
                               rtol=1e-3, atol=1e-4)
    _, disc = restore_with_report(suv, FWHM, stopping="discrepancy", iterations=30)
    assert disc.stopped_by in ("discrepancy", "fixed") and disc.iterations_run <= 30


def test_restoration_refuses_bad_input():
    image = image_from_array(np.ones((8, 8, 8), np.float32), spacing=(4, 4, 4))
    with pytest.raises(InputError, match="unknown denoising"):
        denoise(image, method="median")
    with pytest.raises(InputError, match="unknown deblurring"):
        deblur(image, FWHM, method="wiener")
    with pytest.raises(InputError, match="alpha"):
        deblur(image, FWHM, alpha=2.5)
    with pytest.raises(InputError, match="FWHM"):
        deblur(image, 0.0)
    with pytest.raises(InputError, match="Van Cittert"):
        deblur(image, FWHM, method="van_cittert", backend="sitk")
    bad = sitk.GetArrayFromImage(image)
    bad[2, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        restore(image_from_array(bad, image), FWHM)
    with pytest.raises(InputError, match="count_scale"):
        denoise(image, count_scale=-1.0)
