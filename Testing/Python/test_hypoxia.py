"""Hypoxia PET: ratio maps, HV/HF, the threshold table, TMRmax/TMRpeak, pO2/OER/DMF, cell-kill dose, Patlak."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.dosepainting.hypoxia import (
    HYPOXIA_THRESHOLDS,
    PEAK_DIAMETER_1CM3_MM,
    default_threshold,
    dose_for_cell_kill,
    dose_modifying_factor,
    hypoxia_dose_map,
    hypoxia_metrics,
    hypoxic_boost_volume,
    oxygen_enhancement_ratio,
    patlak_fit,
    po2_from_uptake,
    uptake_ratio_map,
)
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import Units, get_units, image_from_array


def _case(shape=(20, 24, 24)):
    """PET 2.0 everywhere; target = a 10x10x10 block; muscle = a 4x4x4 block away from it (2 mm voxels)."""
    pet = np.full(shape, 2.0, dtype=np.float32)
    target = np.zeros(shape, dtype=bool)
    target[5:15, 7:17, 7:17] = True
    muscle = np.zeros(shape, dtype=bool)
    muscle[1:5, 1:5, 1:5] = True
    img = image_from_array(pet, spacing=(2.0, 2.0, 2.0), units=Units.SUV_BW)
    return pet, target, muscle, img


def test_uniform_ratio_one_gives_no_hypoxia():
    _pet, target, muscle, img = _case()
    ratio = uptake_ratio_map(img, image_from_array(muscle, img), "muscle", target=image_from_array(target, img))
    assert np.all(sitk.GetArrayFromImage(ratio.ratio) == 1.0) and get_units(ratio.ratio) == Units.RATIO
    assert ratio.reference_mean == 2.0 and ratio.reference_volume_ml == pytest.approx(64 * 8e-3)
    for tracer, kind in HYPOXIA_THRESHOLDS:
        m = hypoxia_metrics(ratio.ratio, image_from_array(target, img), tracer=tracer, reference_kind=kind)
        assert m.hv_ml == 0.0 and m.hf == 0.0 and m.n_hypoxic_voxels == 0
        assert m.tmr_max == 1.0 and m.tmr_peak == pytest.approx(1.0)


def test_hypoxic_block_volume_fraction_and_peaks():
    pet, target, muscle, img = _case()
    values = pet.copy()
    values[6:11, 8:13, 8:13] = 3.0  # a 5x5x5 block at ratio 1.5 inside the target (1 mL at 2 mm)
    values[13, 15, 15] = 4.0  # one voxel at ratio 2.0
    pet_img = image_from_array(values, img)
    ratio = uptake_ratio_map(pet_img, image_from_array(muscle, img))
    m = hypoxia_metrics(ratio.ratio, image_from_array(target, img), tracer="fmiso", reference_kind="muscle")
    assert m.threshold == 1.2 and m.comparison == ">"
    assert m.n_hypoxic_voxels == 126 and m.hv_ml == pytest.approx(126 * 8e-3)
    assert m.hf == pytest.approx(126 / 1000) and m.target_volume_ml == pytest.approx(8.0)
    assert m.tmr_max == 2.0
    # The 1 cm3 sphere centred in the 1 mL block (10 mm wide) is not fully inside it: its mean lies between 1
    # and 1.5. With a sphere well inside the block (6 mm diameter) the peak is exactly 1.5.
    assert 1.0 < m.tmr_peak < 1.5
    small = hypoxia_metrics(ratio.ratio, image_from_array(target, img), tracer="fmiso", peak_diameter_mm=6.0)
    assert small.tmr_peak == pytest.approx(1.5)
    assert pytest.approx(2 * (3 / (4 * np.pi)) ** (1 / 3) * 10) == PEAK_DIAMETER_1CM3_MM
    assert np.count_nonzero(sitk.GetArrayFromImage(m.hypoxic_mask)) == 126


def test_threshold_table_and_comparison():
    assert default_threshold("fmiso", "muscle").threshold == 1.2
    assert default_threshold("fmiso", "blood").threshold == 1.4
    assert default_threshold("faza", "background").threshold == 1.4
    assert default_threshold("faza", "muscle").threshold == 1.5
    with pytest.raises(InputError, match="no default"):
        default_threshold("faza", "blood")
    pet, target, muscle, img = _case()
    values = pet.copy()
    values[target] = 3.0  # ratio exactly 1.5 (exact in float32)
    ratio = uptake_ratio_map(image_from_array(values, img), image_from_array(muscle, img))
    t_img = image_from_array(target, img)
    assert hypoxia_metrics(ratio.ratio, t_img, tracer="faza", reference_kind="muscle").hf == 1.0  # >= 1.5
    assert hypoxia_metrics(ratio.ratio, t_img, threshold=1.5, strict=True, tracer=None).hf == 0.0
    assert hypoxia_metrics(ratio.ratio, t_img, threshold=1.25, tracer=None).threshold_source == "given"


def test_blood_value_and_refusals():
    _pet, target, muscle, img = _case()
    ratio = uptake_ratio_map(img, None, "blood", blood_value=4.0)
    assert np.all(sitk.GetArrayFromImage(ratio.ratio) == 0.5) and ratio.reference_source == "blood sample"
    with pytest.raises(InputError, match="either"):
        uptake_ratio_map(img, image_from_array(muscle, img), "blood", blood_value=4.0)
    with pytest.raises(InputError, match="'blood'"):
        uptake_ratio_map(img, None, "muscle", blood_value=4.0)
    overlapping = muscle.copy()
    overlapping[5:7, 7:9, 7:9] = True  # 8 voxels inside the target
    with pytest.raises(InputError, match=r"reference region overlaps the tumour target in 8 voxel"):
        uptake_ratio_map(img, image_from_array(overlapping, img), target=image_from_array(target, img))
    with pytest.raises(GeometryError):
        uptake_ratio_map(img, image_from_array(muscle[:, :, :10], spacing=(2.0, 2.0, 2.0)))


def test_boost_volume_drops_islands_but_hf_does_not():
    pet, target, muscle, img = _case()
    values = pet.copy()
    values[6:11, 8:13, 8:13] = 3.0  # 1 mL block
    values[13, 15, 15] = 3.0  # isolated voxel 0.008 mL
    ratio = uptake_ratio_map(image_from_array(values, img), image_from_array(muscle, img))
    m = hypoxia_metrics(ratio.ratio, image_from_array(target, img), tracer="fmiso")
    assert m.n_hypoxic_voxels == 126
    boost = sitk.GetArrayFromImage(hypoxic_boost_volume(m.hypoxic_mask, min_island_ml=0.5))
    assert boost.sum() == 125 and boost[13, 15, 15] == 0


def test_oer_and_dmf_closed_forms():
    m, k = 3.0, 3.0
    assert dose_modifying_factor(0.0) == pytest.approx(m)
    assert dose_modifying_factor(k) == pytest.approx(2 * m / (m + 1))  # 1.5
    assert dose_modifying_factor(10.0) == pytest.approx(m * (10 + k) / (m * 10 + k))  # 39/33
    assert dose_modifying_factor(10.0) == pytest.approx(1.1818, abs=1e-4)
    assert oxygen_enhancement_ratio(0.0) == pytest.approx(1.0)
    assert oxygen_enhancement_ratio(k) == pytest.approx((m + 1) / 2)
    assert oxygen_enhancement_ratio(10.0) == pytest.approx((m * 10 + k) / (10 + k))
    assert dose_modifying_factor(1e9) == pytest.approx(1.0, abs=1e-8)
    assert dose_modifying_factor(2.5, m=2.5, k_mmhg=2.5) == pytest.approx(2 * 2.5 / 3.5)


def test_po2_inverts_the_binding_model():
    r_min, r_max, ku = 1.0, 3.0, 1.4
    p = np.array([0.5, 1.4, 5.0, 20.0])
    r = r_min + (r_max - r_min) * ku / (ku + p)
    np.testing.assert_allclose(po2_from_uptake(r, r_min=r_min, r_max=r_max, k_u_mmhg=ku), p)
    np.testing.assert_allclose(po2_from_uptake([3.0, 4.0, 1.0, 0.5]), [0.0, 0.0, 100.0, 100.0])
    # r just above r_min maps above 100 mmHg: clamped.
    assert po2_from_uptake(1.001) == 100.0


def test_dose_for_cell_kill_is_the_lq_root_and_scales_with_dmf():
    alpha, ab, n = 0.3, 10.0, 35
    beta = alpha / ab
    n_clon, s_star = 8e4, 4e-5
    d1 = float(dose_for_cell_kill(1.0, clonogens_per_voxel=n_clon, surviving_per_voxel=s_star))
    # The surviving clonogens at that dose equal s*.
    assert n_clon * np.exp(-alpha * d1 - beta * d1**2 / n) == pytest.approx(s_star, rel=1e-10)
    d_hyp = float(dose_for_cell_kill(1.5, clonogens_per_voxel=n_clon, surviving_per_voxel=s_star))
    assert d_hyp == pytest.approx(1.5 * d1, rel=1e-12)  # isoeffect: exactly DMF x the oxic dose
    assert float(dose_for_cell_kill(1.0, clonogens_per_voxel=1e-5, surviving_per_voxel=s_star)) == 0.0


def test_hypoxia_dose_map_floor_and_cap():
    pet, target, muscle, img = _case()
    values = pet.copy()
    values[6:11, 8:13, 8:13] = 6.0  # ratio 3 = r_max -> 0 mmHg -> DMF 3 -> far above the cap
    ratio = uptake_ratio_map(image_from_array(values, img), image_from_array(muscle, img))
    res = hypoxia_dose_map(ratio.ratio, image_from_array(target, img))
    dose = sitk.GetArrayFromImage(res.dose)
    assert np.all(dose[6:11, 8:13, 8:13] == 86.0) and res.n_capped == 125
    # Ratio 1 = r_min -> 100 mmHg -> DMF 3*103/303; the oxic dose is about 61 Gy -> floored at 70.
    assert res.oxic_dose_gy < 70 and np.all(dose[target & (values == 2.0)] == 70.0)
    dmf = sitk.GetArrayFromImage(res.dmf)
    assert dmf[6, 8, 8] == pytest.approx(3.0) and dmf[14, 16, 16] == pytest.approx(3 * 103 / 303, rel=1e-6)
    free = hypoxia_dose_map(ratio.ratio, image_from_array(target, img), dose_floor=None, dose_cap=None)
    assert sitk.GetArrayFromImage(free.dose)[6, 8, 8] == pytest.approx(3.0 * free.oxic_dose_gy, rel=1e-5)


def test_patlak_recovers_ki_and_v0():
    # Input function Cp(t) = 10 exp(-0.1 t) + 1, integral 100 (1 - exp(-0.1 t)) + t (analytic).
    def cp(t):
        return 10 * np.exp(-0.1 * t) + 1.0

    def integral(t):
        return 100 * (1 - np.exp(-0.1 * t)) + t

    frame_times = np.array([2.0, 5.0, 10.0, 20.0, 30.0, 40.0])
    ki = np.array([0.0, 0.002, 0.01]).reshape(3, 1, 1)
    v0 = np.array([0.3, 0.5, 0.8]).reshape(3, 1, 1)
    frames = [image_from_array((ki * integral(t) + v0 * cp(t)) * np.ones((3, 2, 2)), spacing=(2.0, 2.0, 2.0))
              for t in frame_times]
    fine_t = np.linspace(0.0, 45.0, 45001)
    res = patlak_fit(frames, frame_times, fine_t, cp(fine_t), t_star_min=15.0)
    assert res.frames_used == 3 and get_units(res.ki) == "1/min"
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.ki)[:, 0, 0], ki.ravel(), atol=2e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.v0)[:, 0, 0], v0.ravel(), atol=2e-4)
    with pytest.raises(InputError, match="needs 2"):
        patlak_fit(frames, frame_times, fine_t, cp(fine_t), t_star_min=35.0)
