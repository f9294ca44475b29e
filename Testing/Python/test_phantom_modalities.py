"""CT, mu map, MRI and DWI of the digital patient: exact box averaging, tissue values, noise, ADC truth."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import get_units, image_from_array, make_grid
from PETDosePaintingLib.phantom.anatomy import AnatomyConfig, build_anatomy
from PETDosePaintingLib.phantom.modalities import (
    CTConfig,
    DWIConfig,
    MRConfig,
    area_average,
    hu_to_mu511,
    modality_grid,
    mu_map,
    simulate_ct,
    simulate_dwi,
    simulate_mr,
    spin_echo_signal,
)
from PETDosePaintingLib.phantom.shapes import sphere_fraction
from PETDosePaintingLib.phantom.tissues import Tissue, properties
from PETDosePaintingLib.phantom.tumour import LesionConfig, TumourConfig, build_tumour, paint_lesion_labels


@pytest.fixture(scope="module")
def anatomy():
    return build_anatomy(AnatomyConfig.quick())


@pytest.fixture(scope="module")
def labels(anatomy):
    """Quick anatomy with a necrotic primary painted in."""
    cfg = TumourConfig(primary=LesionConfig(volume_ml=15.0, necrosis_radius_fraction=0.5, necrosis_irregularity=0.0))
    truth = build_tumour(anatomy, cfg, 0)
    return image_from_array(paint_lesion_labels(anatomy.labels, truth), anatomy.label_image, units="label")


def _pure(labels: sitk.Image, grid: sitk.Image, tissue: Tissue, erode: int = 0) -> np.ndarray:
    """Target voxels made only of ``tissue`` (box average of its indicator is 1), optionally eroded."""
    inside = area_average(sitk.GetArrayViewFromImage(labels) == tissue, labels, grid) > 1 - 1e-9
    return ndimage.binary_erosion(inside, iterations=erode) if erode else inside


def test_area_average_is_exact_for_known_fractions():
    fine = make_grid((8, 8, 8), (1.0, 1.0, 1.0), origin=(0.5, 0.5, 0.5))  # covers [0, 8] mm on each axis
    coarse = make_grid((2, 4, 1), (4.0, 2.0, 8.0), origin=(2.0, 1.0, 4.0))
    values = np.zeros((8, 8, 8))
    values[:, :, :3] = 1.0  # x in [0, 3] mm
    out = area_average(values, fine, coarse)
    assert out.shape == (1, 4, 2)
    assert np.allclose(out[..., 0], 3 / 4) and np.allclose(out[..., 1], 0.0)
    # Mass conservation for a sphere on grids of unrelated spacings and offsets.
    fine = make_grid((60, 60, 60), (1.0, 1.0, 1.0), origin=(-29.5, -29.5, -29.5))
    frac = sphere_fraction(fine, (1.3, -2.1, 0.7), 12.0)
    target = make_grid((24, 21, 17), (2.5, 2.9, 3.6), origin=(-28.75, -27.5, -28.6))
    out = area_average(frac, fine, target)
    assert out.sum() * 2.5 * 2.9 * 3.6 == pytest.approx(frac.sum(dtype=np.float64), rel=1e-9)
    with pytest.raises(GeometryError):
        area_average(frac[:-1], fine, target)


def test_modality_grid_covers_the_same_field_of_view(anatomy):
    grid = modality_grid(anatomy.label_image, (2.0, 2.0, 4.0))
    for d in range(3):
        lo_in = anatomy.label_image.GetOrigin()[d] - anatomy.spacing[d] / 2
        lo = grid.GetOrigin()[d] - grid.GetSpacing()[d] / 2
        assert lo == pytest.approx(lo_in)
        assert grid.GetSize()[d] * grid.GetSpacing()[d] == pytest.approx(
            anatomy.label_image.GetSize()[d] * anatomy.spacing[d])


def test_ct_hu_per_tissue_within_noise_of_the_table(labels):
    cfg = CTConfig(spacing_mm=(2.0, 2.0, 2.0), noise_sd_hu=15.0, contrast=True)
    ct = simulate_ct(labels, cfg, rng=1)
    assert get_units(ct) == "HU" and ct.GetPixelID() == sitk.sitkInt16
    hu = sitk.GetArrayFromImage(ct).astype(float)
    for tissue in (Tissue.MUSCLE, Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.VERTEBRA, Tissue.TUMOUR):
        region = _pure(labels, ct, tissue, erode=1)
        assert region.sum() > 30, tissue.name
        # Mean within 4 standard errors (+0.5 HU rounding); SD close to the requested noise.
        assert hu[region].mean() == pytest.approx(properties(tissue).ct_hu_contrast,
                                                  abs=4 * 15.0 / np.sqrt(region.sum()) + 0.5), tissue.name
    muscle = _pure(labels, ct, Tissue.MUSCLE, erode=1)
    assert hu[muscle].std() == pytest.approx(15.0, rel=0.15)
    assert np.median(hu[_pure(labels, ct, Tissue.AIRWAY, erode=1)]) < -950
    # Noise-free and unblurred: pure voxels carry exactly the table value, without contrast too.
    clean = sitk.GetArrayFromImage(simulate_ct(labels, CTConfig(spacing_mm=(2, 2, 2), noise_sd_hu=0,
                                                                resolution_fwhm_mm=(0, 0, 0), contrast=False)))
    assert np.all(clean[_pure(labels, ct, Tissue.MANDIBLE)] == properties(Tissue.MANDIBLE).ct_hu)
    assert np.array_equal(sitk.GetArrayFromImage(simulate_ct(labels, cfg, rng=1)), hu.astype(np.int16))


def test_mu_map_from_labels_and_bilinear_hu_conversion(labels):
    mu = mu_map(labels)
    assert get_units(mu) == "1/cm"
    values = sitk.GetArrayFromImage(mu)
    lab = sitk.GetArrayFromImage(labels)
    assert np.allclose(values[lab == Tissue.SOFT_TISSUE], 0.096)
    assert np.all(values[lab == Tissue.AIRWAY] == 0)
    # Water (0 HU) has mu 0.096/cm at 511 keV, air (-1000 HU) 0; the two branches meet at the breakpoint
    # (to the rounding of the published coefficients).
    assert hu_to_mu511(0.0) == pytest.approx(0.096)
    assert hu_to_mu511(-1000.0) == 0.0
    assert hu_to_mu511(47.0 - 1e-9) == pytest.approx(hu_to_mu511(47.0 + 1e-9), abs=5e-5)
    assert 0.13 <= hu_to_mu511(1000.0) <= 0.17  # dense bone


def test_mr_spin_echo_contrast_and_rician_noise(labels):
    clean = simulate_mr(labels, MRConfig(snr=None))
    t1w, t2w = (sitk.GetArrayFromImage(im) for im in (clean.t1w, clean.t2w))
    assert get_units(clean.t1w) == "a.u." and clean.t1w.GetSpacing() == (1.0, 1.0, 3.0)
    m = properties(Tissue.MUSCLE)
    muscle = _pure(labels, clean.t1w, Tissue.MUSCLE)
    expected = 1000.0 * m.proton_density * (1 - np.exp(-500 / m.t1_ms_1p5t)) * np.exp(-15 / m.t2_ms_1p5t)
    assert np.allclose(t1w[muscle], expected, rtol=1e-5)
    fat, csf = _pure(labels, clean.t1w, Tissue.FAT), _pure(labels, clean.t1w, Tissue.CSF)
    assert t1w[fat].mean() > t1w[muscle].mean()  # fat bright on T1w
    assert t2w[csf].mean() > 3 * t2w[muscle].mean()  # fluid bright on T2w
    assert spin_echo_signal(1.0, 1000.0, 100.0, 1e9, 0.0) == pytest.approx(1.0)
    # Rician noise: in air (no signal) the magnitude has mean sigma sqrt(pi / 2).
    noisy = simulate_mr(labels, MRConfig(snr=20.0), rng=2)
    sigma = noisy.noise_sd_t1w
    assert sigma == pytest.approx(expected / 20.0)
    air = _pure(labels, noisy.t1w, Tissue.OUTSIDE)
    assert sitk.GetArrayFromImage(noisy.t1w)[air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)


def test_dwi_noise_free_signal_gives_the_adc_truth_exactly(labels):
    res = simulate_dwi(labels, DWIConfig(snr_b0=None))
    assert set(res.images) == {0.0, 50.0, 500.0, 800.0, 1000.0}
    assert get_units(res.adc_truth) == "mm2/s" and get_units(res.images[800.0]) == "a.u."
    s0 = sitk.GetArrayFromImage(res.images[0.0]).astype(float)
    adc = sitk.GetArrayFromImage(res.adc_truth).astype(float)
    pure = sitk.GetArrayFromImage(res.homogeneous).astype(bool) & (s0 > 1.0)
    for b in (50.0, 500.0, 800.0, 1000.0):
        sb = sitk.GetArrayFromImage(res.images[b]).astype(float)
        # Mono-exponential S(b) = S0 exp(-b ADC): ADC = ln(S0 / S(b)) / b.
        assert np.allclose(np.log(s0[pure] / sb[pure]) / b, adc[pure], rtol=1e-5)
    lab = sitk.GetArrayViewFromImage(labels)
    tumour = _pure(labels, res.images[0.0], Tissue.TUMOUR)
    necrosis = _pure(labels, res.images[0.0], Tissue.NECROSIS)
    assert tumour.any() and necrosis.any()
    assert np.allclose(adc[tumour], properties(Tissue.TUMOUR).adc_mm2_s, rtol=1e-6)
    assert adc[necrosis].mean() > 1.5 * adc[tumour].mean()
    fine = sitk.GetArrayFromImage(res.adc_truth_fine)
    assert np.allclose(fine[lab == Tissue.MUSCLE], properties(Tissue.MUSCLE).adc_mm2_s)
    # A per-tissue override changes the truth and the signal.
    other = simulate_dwi(labels, DWIConfig(snr_b0=None, adc_overrides={Tissue.TUMOUR: 1.3e-3}))
    assert np.allclose(sitk.GetArrayFromImage(other.adc_truth)[tumour], 1.3e-3, rtol=1e-6)


def test_dwi_noise_is_rician_with_the_requested_snr(labels):
    res = simulate_dwi(labels, DWIConfig(snr_b0=25.0), rng=3)
    m = properties(Tissue.MUSCLE)
    s0_muscle = 1000.0 * m.proton_density * (1 - np.exp(-5000 / m.t1_ms_1p5t)) * np.exp(-80 / m.t2_ms_1p5t)
    assert res.noise_sd == pytest.approx(s0_muscle / 25.0)
    air = _pure(labels, res.images[1000.0], Tissue.OUTSIDE)
    assert sitk.GetArrayFromImage(res.images[1000.0])[air].mean() == pytest.approx(
        res.noise_sd * np.sqrt(np.pi / 2), rel=0.05)
    with pytest.raises(InputError, match="b_values"):
        simulate_dwi(labels, DWIConfig(b_values=(0.0,)))
