"""Plan evaluation: Q, QF, QVH direction, Q95/Q105, QF map, exclusions, DVH, resampling rules, TCP/EUD of a plan."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.dosepainting.plan_evaluation import (
    QVH_COLUMNS,
    dvh_csv,
    evaluate_plan,
    quality_metrics,
    resample_dose_to_prescription,
)
from PETDosePaintingLib.dosepainting.prescription import set_frame_of_reference
from PETDosePaintingLib.errors import GeometryError, InputError, UnitsError
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, physical_grid

SHAPE = (4, 10, 10)


def _presc():
    _, _, i = np.indices(SHAPE)
    values = 70.0 + 1.6 * i  # 70 .. 84.4 Gy
    return image_from_array(values.astype(np.float32), spacing=(2.0, 2.0, 2.0), units=Units.GY), values


def test_plan_equal_to_prescription_is_perfect():
    presc, _ = _presc()
    q = quality_metrics(presc, presc)
    assert q.qf == 0.0 and q.q95 == 1.0 and q.q105 == 0.0 and q.q95_105 == 1.0
    assert q.n_voxels == 400 and q.volume_ml == pytest.approx(400 * 8e-3)
    # The QVH is a step at q = 1: 1 up to q = 1, 0 beyond (fraction with Q >= q).
    assert np.all(q.qvh_fraction[q.qvh_q <= 1.0 + 1e-12] == 1.0)
    assert np.all(q.qvh_fraction[q.qvh_q > 1.0 + 1e-9] == 0.0)
    assert np.all(sitk.GetArrayFromImage(q.qf_map) == 0.0)
    assert q.qvh_csv().splitlines()[0] == ",".join(QVH_COLUMNS)


def test_known_deviations():
    presc, values = _presc()
    factor = np.ones(SHAPE)
    factor[:2] = 1.10  # half the voxels 10 % hot
    plan = image_from_array((values * factor).astype(np.float32), presc, units=Units.GY)
    q = quality_metrics(plan, presc)
    assert q.qf == pytest.approx(0.05, abs=1e-6)
    assert q.q95 == 1.0 and q.q105 == 0.5 and q.q95_105 == 0.5
    qvh = dict(zip(np.round(q.qvh_q, 6), q.qvh_fraction, strict=True))
    # QVH counts Q >= q: all voxels at q = 0.95 and 1.0, the hot half at 1.05, none at 1.2 (Q = 1.10 itself
    # is not sampled: float32 storage puts some of those Q a hair below 1.10).
    assert qvh[0.95] == 1.0 and qvh[1.0] == 1.0 and qvh[1.05] == 0.5 and qvh[1.2] == 0.0
    cold = image_from_array((values * 0.9).astype(np.float32), presc, units=Units.GY)
    qc = quality_metrics(cold, presc)
    assert qc.qf == pytest.approx(0.1, abs=1e-6) and qc.q95 == 0.0 and qc.q105 == 0.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(qc.qf_map), -0.1, atol=1e-6)


def test_voxels_without_prescription_are_excluded():
    presc, values = _presc()
    zeroed = values.copy()
    zeroed[0, 0, :5] = 0.0
    presc0 = image_from_array(zeroed.astype(np.float32), presc, units=Units.GY)
    mask = image_from_array(np.ones(SHAPE, dtype=bool), presc)
    q = quality_metrics(presc0, presc0, mask)
    assert q.n_voxels == 395 and q.n_excluded == 5 and q.qf == 0.0
    with pytest.raises(UnitsError):
        quality_metrics(image_from_array(values, presc, units=Units.HU), presc)
    with pytest.raises(GeometryError):
        quality_metrics(image_from_array(values[:, :, :5], spacing=(2.0, 2.0, 2.0)), presc)


def test_dvh_of_the_plan_closed_form():
    presc, values = _presc()  # each of the ten doses 70 + 1.6 k on 10 % of the voxels
    mask = image_from_array(np.ones(SHAPE, dtype=bool), presc)
    dvh = evaluate_plan(presc, presc, structures={"PTV": mask}).dvhs["PTV"]
    # The coldest 10 % get 70 Gy, so the hottest 95 % include some of them: D95 = 70 Gy; the hottest 90 % all
    # get >= 71.6 Gy: D90 = 71.6 Gy; the hottest 2 % get 84.4 Gy.
    assert dvh.d95_gy == pytest.approx(70.0) and dvh.dose_at_volume_pct(90) == pytest.approx(71.6)
    assert dvh.dose_at_volume_pct(2) == pytest.approx(84.4) and dvh.mean_gy == pytest.approx(np.mean(values))
    rows = [line.split(",") for line in dvh_csv({"PTV": dvh}, step_gy=0.1).splitlines()]
    assert rows[0] == ["structure", "dose_gy", "volume_fraction", "volume_ml"]
    curve = {round(float(r[1]), 6): float(r[2]) for r in rows[1:]}
    assert curve[0.0] == 1.0 and curve[70.0] == 1.0 and curve[70.1] == pytest.approx(0.9)
    assert curve[84.4] == pytest.approx(0.1)


def test_dose_resampling_needs_a_shared_frame_and_coverage():
    presc_grid = make_grid((10, 10, 4), (2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    x, _, _ = physical_grid(presc_grid)
    presc = image_from_array((70 + 0.5 * x).astype(np.float32), presc_grid, units=Units.GY)
    dose_grid = make_grid((12, 12, 6), (2.5, 2.5, 2.5), origin=(-3.0, -3.0, -3.0))
    xd, _, _ = physical_grid(dose_grid)
    dose = image_from_array((70 + 0.5 * xd).astype(np.float32), dose_grid, units=Units.GY)
    with pytest.raises(GeometryError, match="frame of reference"):
        resample_dose_to_prescription(dose, presc)
    set_frame_of_reference(presc, "1.2.3")
    set_frame_of_reference(dose, "1.2.3")
    out, note = resample_dose_to_prescription(dose, presc)
    assert "linear interpolation" in note
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), 70 + 0.5 * x, atol=1e-4)  # linear ramp: exact
    assert quality_metrics(out, presc).qf == pytest.approx(0.0, abs=1e-6)
    set_frame_of_reference(dose, "4.5.6")
    with pytest.raises(GeometryError, match="not in the same DICOM frame"):
        resample_dose_to_prescription(dose, presc)
    small = make_grid((3, 3, 3), (2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    small_dose = set_frame_of_reference(image_from_array(np.full((3, 3, 3), 70.0), small, units=Units.GY), "1.2.3")
    with pytest.raises(InputError, match="does not cover"):
        resample_dose_to_prescription(small_dose, presc)


def test_evaluate_plan_tcp_and_eud_of_uniform_plan():
    presc = image_from_array(np.full(SHAPE, 70.0, dtype=np.float32), spacing=(2.0, 2.0, 2.0), units=Units.GY)
    result = evaluate_plan(presc, presc, sigma_alpha=0.0, clonogen_density=1e7,
                           structures={"PTV": image_from_array(np.ones(SHAPE, dtype=bool), presc)})
    v = 400 * 8e-3
    expected = np.exp(-1e7 * v * np.exp(-0.3 * 70 - 0.03 * 70**2 / 35))
    assert result.tcp_planned.tcp == pytest.approx(expected, rel=1e-9)
    assert result.eud_planned_gy == pytest.approx(70.0) and result.eud_prescribed_gy == pytest.approx(70.0)
    assert result.quality.qf == 0.0 and result.dvhs["PTV"].d95_gy == pytest.approx(70.0)
    assert set(result.summary()) >= {"quality", "tcp_planned", "eud_planned_gy", "dvh"}
