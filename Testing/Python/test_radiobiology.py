"""Radiobiology: Poisson-LQ TCP (closed form, population average, repopulation), EUD, gEUD, EQD2, clonogen maps,
Brahme-Ågren redistribution."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import integrate, stats

from PETDosePaintingLib.dosepainting.radiobiology import (
    CLONOGEN_UNITS,
    brahme_agren_dose,
    clonogen_density_from_adc,
    clonogen_density_from_suv,
    eqd2,
    eud_lq,
    eud_niemierko,
    geud,
    tcp_poisson,
)
from PETDosePaintingLib.errors import InputError, UnitsError
from PETDosePaintingLib.imaging.image import Units, image_from_array

SHAPE = (4, 5, 6)  # 120 voxels
SPACING = (2.0, 2.0, 2.0)  # 8 mm3 = 0.008 cm3
V_CM3 = 120 * 0.008


def _image(values, units=Units.GY):
    return image_from_array(np.broadcast_to(np.asarray(values, dtype=np.float64), SHAPE).copy(), spacing=SPACING,
                            units=units)


def _rho(value=1e7):
    return _image(value, CLONOGEN_UNITS)


def test_tcp_of_a_uniform_dose_is_the_closed_form():
    d, n, alpha, ab, rho = 50.0, 35, 0.3, 10.0, 1e7  # about 1 cm3 of tumour: TCP near 0.7 at 50 Gy
    beta = alpha / ab
    expected = np.exp(-rho * V_CM3 * np.exp(-alpha * d - beta * d * d / n))
    res = tcp_poisson(_image(d), _rho(rho), sigma_alpha=0.0)
    assert res.tcp == pytest.approx(expected, rel=1e-10) and res.tcp_mean_alpha == res.tcp
    assert res.total_clonogens == pytest.approx(rho * V_CM3)
    assert 0.01 < res.tcp < 0.99  # a meaningful operating point for the check


def test_population_tcp_equals_the_gaussian_average():
    d, n, alpha, sigma, ab, rho = 50.0, 35, 0.3, 0.07, 10.0, 1e7
    beta = alpha / ab  # beta fixed, alpha varies

    def tcp(a):
        return np.exp(-rho * V_CM3 * np.exp(-a * d - beta * d * d / n))

    expected, _ = integrate.quad(lambda a: tcp(a) * stats.norm.pdf(a, alpha, sigma), alpha - 10 * sigma,
                                 alpha + 10 * sigma, points=[alpha], limit=200)
    res = tcp_poisson(_image(d), _rho(rho), alpha=alpha, sigma_alpha=sigma)
    assert res.tcp == pytest.approx(expected, abs=1e-9)
    assert res.tcp != pytest.approx(res.tcp_mean_alpha, abs=1e-3)  # heterogeneity flattens the curve
    # Gauss-Hermite (kept for comparison) converges slowly on this steep integrand: close, not exact.
    gh = tcp_poisson(_image(d), _rho(rho), alpha=alpha, sigma_alpha=sigma, quadrature="gauss-hermite")
    assert gh.tcp == pytest.approx(expected, abs=1e-3) and gh.n_quadrature == 20


def test_repopulation_multiplies_the_survivors():
    d, t_k, t_pot = 70.0, 21.0, 3.0
    base = tcp_poisson(_image(d), _rho(), sigma_alpha=0.0)
    slow = tcp_poisson(_image(d), _rho(), sigma_alpha=0.0, treatment_days=t_k + 3 * t_pot, t_kickoff_days=t_k,
                       t_pot_days=t_pot)
    assert slow.expected_survivors == pytest.approx(8.0 * base.expected_survivors, rel=1e-10)  # 3 doublings
    assert slow.tcp == pytest.approx(np.exp(-8.0 * base.expected_survivors), rel=1e-10)
    early = tcp_poisson(_image(d), _rho(), sigma_alpha=0.0, treatment_days=t_k - 1)
    assert early.tcp == pytest.approx(base.tcp)


def test_eud_of_a_uniform_dose_is_that_dose():
    for dose in (0.0, 60.0, 70.0, 86.0):
        assert eud_niemierko(_image(dose)) == pytest.approx(dose, abs=1e-10)
        assert eud_niemierko(_image(dose), clonogens=_rho()) == pytest.approx(dose, abs=1e-10)
        assert eud_lq(_image(dose)) == pytest.approx(dose, abs=1e-9)
        if dose > 0:
            assert geud(_image(dose), a=-10) == pytest.approx(dose)
            assert geud(_image(dose), a=4) == pytest.approx(dose)


def test_eud_of_two_dose_levels_closed_form():
    values = np.zeros(SHAPE)
    values[:2] = 60.0
    values[2:] = 80.0  # half the voxels each
    dose = image_from_array(values, spacing=SPACING, units=Units.GY)
    sf2, d_ref = 0.5, 2.0
    expected = d_ref * np.log(0.5 * sf2 ** (60 / d_ref) + 0.5 * sf2 ** (80 / d_ref)) / np.log(sf2)
    assert eud_niemierko(dose, sf2=sf2) == pytest.approx(expected)
    assert geud(dose, a=1) == pytest.approx(70.0)
    assert geud(dose, a=-10) == pytest.approx((0.5 * 60.0**-10 + 0.5 * 80.0**-10) ** (-1 / 10))
    # Clonogen weights: all clonogens in the 80 Gy half -> EUD 80.
    rho = np.zeros(SHAPE)
    rho[2:] = 1e7
    assert eud_niemierko(dose, clonogens=image_from_array(rho, dose, units=CLONOGEN_UNITS)) == pytest.approx(80.0)
    with_zero = values.copy()
    with_zero[0, 0, 0] = 0.0
    assert geud(image_from_array(with_zero, dose, units=Units.GY), a=-10) == 0.0


def test_eqd2():
    assert eqd2(70.0, 10.0, n_fractions=35) == pytest.approx(70.0)
    assert eqd2(66.0, 10.0, n_fractions=30) == pytest.approx(66.0 * (2.2 + 10) / 12)
    assert eqd2(60.0, 3.0, dose_per_fraction=3.0) == pytest.approx(60.0 * 6 / 5)
    out = eqd2(_image(70.0), 3.0, n_fractions=28)
    assert sitk.GetArrayFromImage(out)[0, 0, 0] == pytest.approx(70 * (2.5 + 3) / 5, rel=1e-6)
    with pytest.raises(InputError, match="exactly one"):
        eqd2(70.0, 10.0)


def test_clonogen_maps():
    suv = np.full(SHAPE, 4.0)
    suv[0] = 8.0
    mask = np.ones(SHAPE, dtype=bool)
    res = clonogen_density_from_suv(image_from_array(suv, spacing=SPACING), image_from_array(mask, spacing=SPACING),
                                    rho0=1e7)
    rho = sitk.GetArrayFromImage(res.density)
    assert res.parameters["suv_reference"] == 4.0  # the median
    assert np.all(rho[0] == 2e7) and np.all(rho[1:] == 1e7)
    adc = np.full(SHAPE, 1.0e-3)
    adc[0] = 3.0e-3  # free water -> no cells
    adc[1] = 2.0e-3
    res_adc = clonogen_density_from_adc(image_from_array(adc, spacing=SPACING, units=Units.ADC),
                                        image_from_array(mask, spacing=SPACING))
    rho_adc = sitk.GetArrayFromImage(res_adc.density)
    top = 1e9 * 0.01
    assert np.all(rho_adc[2:] == pytest.approx(top)) and np.all(rho_adc[0] == 0.0)
    assert np.all(rho_adc[1] == pytest.approx(top * (3.0e-3 - 2.0e-3) / (3.0e-3 - 1.0e-3)))
    with pytest.raises(UnitsError):
        clonogen_density_from_adc(image_from_array(adc, spacing=SPACING, units=Units.GY),
                                  image_from_array(mask, spacing=SPACING))


def _heterogeneous_rho():
    rng = np.random.default_rng(7)
    return image_from_array(10 ** rng.uniform(6, 8, SHAPE), spacing=SPACING, units=CLONOGEN_UNITS)


def test_brahme_agren_pure_alpha_keeps_the_mean_and_equalises_survivors():
    rho_img = _heterogeneous_rho()
    rho = sitk.GetArrayFromImage(rho_img)
    mask = image_from_array(np.ones(SHAPE, dtype=bool), rho_img)
    alpha, mean = 0.3, 75.0
    res = brahme_agren_dose(rho_img, mask, mean_dose=mean, alpha=alpha)
    d = sitk.GetArrayFromImage(res.dose)
    assert d.mean() == pytest.approx(mean, abs=1e-9)
    survivors_per_cm3 = rho * np.exp(-alpha * d)
    assert np.std(survivors_per_cm3) / np.mean(survivors_per_cm3) < 1e-9  # equal everywhere
    # Closed form: D_i - D_j = ln(rho_i / rho_j) / alpha.
    assert d[0, 0, 0] - d[1, 1, 1] == pytest.approx(np.log(rho[0, 0, 0] / rho[1, 1, 1]) / alpha)
    assert res.expected_survivors < res.expected_survivors_uniform


def test_brahme_agren_lq_satisfies_the_lagrange_condition_and_beats_alternatives():
    rho_img = _heterogeneous_rho()
    rho = sitk.GetArrayFromImage(rho_img)
    mask = image_from_array(np.ones(SHAPE, dtype=bool), rho_img)
    alpha, ab, n, mean = 0.3, 10.0, 35, 75.0
    b = alpha / ab / n
    res = brahme_agren_dose(rho_img, mask, mean_dose=mean, alpha=alpha, alpha_beta=ab, n_fractions=n)
    d = sitk.GetArrayFromImage(res.dose)
    assert res.model == "LQ" and d.mean() == pytest.approx(mean, abs=1e-9)
    lagrange = rho * (alpha + 2 * b * d) * np.exp(-alpha * d - b * d * d)
    assert np.std(lagrange) / np.mean(lagrange) < 1e-8

    def survivors(dose):
        return float(np.sum(rho * 0.008 * np.exp(-alpha * dose - b * dose * dose)))

    pure = sitk.GetArrayFromImage(brahme_agren_dose(rho_img, mask, mean_dose=mean, alpha=alpha).dose)
    assert survivors(d) <= survivors(pure) and survivors(d) < survivors(np.full(SHAPE, mean))
    # Any small mean-preserving perturbation does worse (first-order optimality, second-order minimum).
    rng = np.random.default_rng(1)
    for _ in range(5):
        delta = rng.normal(size=SHAPE)
        delta -= delta.mean()
        assert survivors(d + 0.5 * delta) > survivors(d)


def test_brahme_agren_refuses_zero_density():
    rho = np.full(SHAPE, 1e7)
    rho[0, 0, 0] = 0.0
    img = image_from_array(rho, spacing=SPACING, units=CLONOGEN_UNITS)
    with pytest.raises(InputError, match="positive everywhere"):
        brahme_agren_dose(img, image_from_array(np.ones(SHAPE, dtype=bool), img), mean_dose=70)
