"""Dose accumulation and the remaining-dose prescription: constant doses, known shifts, EQD2 identities,
transform chains in ITK and Slicer order, and refusals.

Every expected number comes from the construction (a constant dose, a dose peak at a known point moved
by a known rigid map, 2 Gy fractions, a goal met in a known region).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from PETDosePaintingLib.comparison.accumulation import (
    accumulate_doses,
    physical_dose_from_eqd2,
    remaining_dose,
)
from PETDosePaintingLib.errors import GeometryError, InputError, UnitsError
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid, set_frame_of_reference
from PETDosePaintingLib.mrml.registration_logic import accumulate_dose_nodes
from PETDosePaintingLib.mrml.transforms import transform_node_from_sitk
from PETDosePaintingLib.mrml.volumes import image_from_volume_node, volume_node_from_image

BASELINE = make_grid((40, 36, 24), (2.5, 2.5, 3.0), origin=(-48.75, -43.75, -34.5))


def _dose(values, grid):
    return image_from_array(np.asarray(values, dtype=np.float32), grid, units="Gy")


def _phase_grid():
    """A phase dose grid larger than the baseline, rotated and with another spacing (a different scanner)."""
    grid = make_grid((44, 44, 34), (3.0, 3.0, 3.0), origin=(-64.5, -64.5, -49.5))
    grid.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, 0.15).GetMatrix())
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([21.5, 21.5, 16.5]))
    grid.SetOrigin((np.array(grid.GetOrigin()) - centre).tolist())
    return grid


def _bspline(grid, sd=2.0, seed=0):
    bspline = sitk.BSplineTransformInitializer(grid, (3, 3, 2), 3)
    bspline.SetParameters(np.random.default_rng(seed).normal(0, sd, len(bspline.GetParameters())).tolist())
    return bspline


def _peak(centre, grid, sigma=6.0, height=10.0):
    x, y, z = physical_grid(grid)
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return _dose(height * np.exp(-r2 / (2 * sigma**2)), grid)


def _centroid(image, threshold):
    a = sitk.GetArrayFromImage(image).astype(float)
    w = np.where(a > threshold, a, 0.0)
    x, y, z = physical_grid(image)
    return np.array([(x * w).sum(), (y * w).sum(), (z * w).sum()]) / w.sum()


@pytest.mark.parametrize("kind", ["identity", "rigid", "bspline", "chain"])
def test_a_constant_dose_stays_constant_through_any_transform(kind):
    phase = _phase_grid()
    dose = _dose(np.full(phase.GetSize()[::-1], 2.0), phase)
    rigid = sitk.Euler3DTransform((0, 0, 0), 0.05, -0.04, 0.1, (4.0, -3.0, 2.0))
    transform = {"identity": None, "rigid": rigid, "bspline": _bspline(BASELINE),
                 "chain": [rigid, _bspline(BASELINE, seed=1)]}[kind]
    result = accumulate_doses(BASELINE, [dose], [transform])
    total = sitk.GetArrayFromImage(result.total)
    covered = sitk.GetArrayFromImage(result.coverage) > 0
    assert covered.mean() > 0.9
    assert np.allclose(total[covered], 2.0, atol=1e-5)
    assert result.quantity == "physical" and result.total.GetMetaData("PETDP_Units") == "Gy"
    if kind in ("bspline", "chain"):
        assert result.contributions[0].jacobian is not None  # non-linear maps get the Jacobian QA
        assert result.contributions[0].jacobian.verdict in ("pass", "review")


def test_two_constant_phases_add_up():
    phase = _phase_grid()
    d0 = _dose(np.full(BASELINE.GetSize()[::-1], 20.0), BASELINE)
    d7 = _dose(np.full(phase.GetSize()[::-1], 14.0), phase)
    result = accumulate_doses(BASELINE, [d0, d7], [None, sitk.TranslationTransform(3, (5.0, 0.0, 0.0))])
    covered = sitk.GetArrayFromImage(result.coverage) > 0
    assert np.allclose(sitk.GetArrayFromImage(result.total)[covered], 34.0, atol=1e-4)
    assert [c.name for c in result.contributions] == ["phase1", "phase2"]


def test_a_dose_moved_by_a_known_rigid_map_lands_where_it_should():
    # T maps baseline points to phase points: x_phase = T(x0). A peak at c_phase appears at T^-1(c_phase).
    phase = _phase_grid()
    motion = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.radians(10.0), (6.0, -4.0, 3.0))
    c_phase = np.array([10.0, -5.0, 4.0])
    result = accumulate_doses(BASELINE, [_peak(c_phase, phase)], [motion])
    expected = np.array(motion.GetInverse().TransformPoint(c_phase.tolist()))
    assert np.linalg.norm(_centroid(result.total, 1.0) - expected) < 0.3


def test_a_chain_is_applied_from_the_baseline_outwards():
    # T_0->7 rotates 90 degrees about z, T_7->17 translates 10 mm along x: x17 = R x0 + (10, 0, 0).
    phase = make_grid((60, 60, 30), (2.0, 2.0, 2.0), origin=(-59.0, -59.0, -29.0))
    t07 = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.pi / 2)
    t717 = sitk.TranslationTransform(3, (10.0, 0.0, 0.0))
    c17 = np.array([10.0, 12.0, 0.0])  # = T(x0) for x0 = (12, 0, 0): R (12, 0, 0) = (0, 12, 0), + (10, 0, 0)
    result = accumulate_doses(BASELINE, [_peak(c17, phase)], [[t07, t717]])
    assert np.linalg.norm(_centroid(result.total, 1.0) - (12.0, 0.0, 0.0)) < 0.3


def test_eqd2_of_2_gy_fractions_is_the_physical_dose_and_other_fractions_follow_lq():
    phase = _phase_grid()
    dose = _dose(np.full(phase.GetSize()[::-1], 60.0), phase)
    two_gy = accumulate_doses(BASELINE, [dose], [None], fractions=[30], alpha_beta_gy=10.0)
    covered = sitk.GetArrayFromImage(two_gy.coverage) > 0
    assert two_gy.quantity == "EQD2"
    assert np.allclose(sitk.GetArrayFromImage(two_gy.total)[covered], 60.0, atol=1e-4)
    # 60 Gy in 20 fractions of 3 Gy, alpha/beta 10: EQD2 = 60 (3 + 10) / (2 + 10) = 65 Gy.
    three_gy = accumulate_doses(BASELINE, [dose], [None], fractions=[20], alpha_beta_gy=10.0)
    assert np.allclose(sitk.GetArrayFromImage(three_gy.total)[covered], 65.0, atol=1e-4)
    # EQD2 is taken voxel by voxel *before* warping: a constant dose stays constant through a B-spline too.
    warped = accumulate_doses(BASELINE, [dose], [_bspline(BASELINE)], fractions=[20], alpha_beta_gy=10.0)
    covered = sitk.GetArrayFromImage(warped.coverage) > 0
    assert np.allclose(sitk.GetArrayFromImage(warped.total)[covered], 65.0, atol=1e-4)
    assert physical_dose_from_eqd2(65.0, 20, 10.0) == pytest.approx(60.0)
    assert physical_dose_from_eqd2(70.0, 35, 3.0) == pytest.approx(70.0)


def test_remaining_dose_is_zero_where_the_goal_is_met():
    x, _, _ = physical_grid(BASELINE)
    goal = _dose(np.full(x.shape, 70.0), BASELINE)
    delivered = _dose(np.where(x < 0.0, 72.0, 50.0), BASELINE)  # goal met (exceeded) for x < 0, 20 Gy short else
    phase = make_grid((40, 36, 24), (2.5, 2.5, 3.0), origin=(-48.75, -43.75, -34.5))
    shift = (7.5, 0.0, 0.0)  # baseline -> phase: x_phase = x0 + 7.5 (three voxels)
    result = remaining_dose(goal, delivered, phase, sitk.TranslationTransform(3, shift), n_fractions=10)
    assert result.inverse_method.startswith("exact")
    p = sitk.GetArrayFromImage(result.prescription)
    xp, _, _ = physical_grid(phase)
    covered = sitk.GetArrayFromImage(result.coverage) > 0
    x0 = xp - shift[0]  # the baseline point of each phase voxel
    met = covered & (x0 < -2.5)
    short = covered & (x0 > 2.5)
    assert np.all(p[met] == 0.0)
    assert np.allclose(p[short], 20.0, atol=1e-5)
    assert np.allclose(sitk.GetArrayFromImage(result.per_fraction)[short], 2.0, atol=1e-6)
    assert np.all(p[~covered] == 0.0) and 0.4 < result.goal_met_fraction < 0.7


def test_remaining_dose_through_a_deformation_uses_a_checked_inverse():
    goal = _dose(np.full(BASELINE.GetSize()[::-1], 70.0), BASELINE)
    delivered = _dose(np.full(BASELINE.GetSize()[::-1], 70.0), BASELINE)
    delivered_short = _dose(np.full(BASELINE.GetSize()[::-1], 66.0), BASELINE)
    bspline = _bspline(BASELINE, sd=1.5, seed=3)
    met = remaining_dose(goal, delivered, BASELINE, bspline)
    assert met.round_trip_max_mm < 0.1 and "fixed-point" in met.inverse_method
    assert np.all(sitk.GetArrayFromImage(met.prescription) == 0.0) and met.goal_met_fraction == 1.0
    short = remaining_dose(goal, delivered_short, BASELINE, bspline)
    covered = sitk.GetArrayFromImage(short.coverage) > 0
    assert np.allclose(sitk.GetArrayFromImage(short.prescription)[covered], 4.0, atol=1e-5)


def test_bad_inputs_are_refused():
    phase = _phase_grid()
    dose = _dose(np.full(phase.GetSize()[::-1], 2.0), phase)
    # (fresh images: a SimpleITK copy shares its metadata dictionary with the original until pixels change)
    unitless = image_from_array(np.full(phase.GetSize()[::-1], 2.0, np.float32), phase)
    with pytest.raises(UnitsError, match="Gy"):
        accumulate_doses(BASELINE, [unitless], [None])
    suv = image_from_array(np.full(phase.GetSize()[::-1], 2.0, np.float32), phase, units="SUVbw")
    with pytest.raises(UnitsError):
        accumulate_doses(BASELINE, [suv], [None])
    with pytest.raises(InputError, match="transform entries"):
        accumulate_doses(BASELINE, [dose, dose], [None])
    with pytest.raises(GeometryError, match="does not overlap"):
        accumulate_doses(BASELINE, [dose], [sitk.TranslationTransform(3, (1000.0, 0.0, 0.0))])
    other_frame = set_frame_of_reference(_dose(np.full(phase.GetSize()[::-1], 2.0), phase), "1.2.840.1")
    baseline = set_frame_of_reference(make_grid(BASELINE.GetSize(), BASELINE.GetSpacing(), BASELINE.GetOrigin()),
                                      "1.2.840.2")
    with pytest.raises(GeometryError, match="frames of reference"):
        accumulate_doses(baseline, [other_frame], [None])
    accumulate_doses(baseline, [other_frame], [sitk.Transform(3, sitk.sitkIdentity)])  # with a transform: fine
    with pytest.raises(InputError, match="fractions"):
        accumulate_doses(BASELINE, [dose], [None], alpha_beta_gy=10.0)
    with pytest.raises(InputError, match="fractions"):
        accumulate_doses(BASELINE, [dose], [None], fractions=[0])
    with pytest.raises(InputError, match="negative"):
        accumulate_doses(BASELINE, [_dose(np.full(phase.GetSize()[::-1], -1.0), phase)], [None])


def test_slicer_nested_transform_hierarchy_gives_the_chain(core_scene):
    """§5.5: Dose_17 under T_7->17 under T_0->7 in Slicer accumulates like the chain [T_0->7, T_7->17]."""
    phase = make_grid((60, 60, 30), (2.0, 2.0, 2.0), origin=(-59.0, -59.0, -29.0))
    t07 = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.pi / 2)
    t717 = sitk.TranslationTransform(3, (10.0, 0.0, 0.0))
    reference = volume_node_from_image(_dose(np.zeros(BASELINE.GetSize()[::-1]), BASELINE), "CT0", core_scene)
    node07 = transform_node_from_sitk(t07, "T07", core_scene)
    node717 = transform_node_from_sitk(t717, "T717", core_scene)
    node717.SetAndObserveTransformNodeID(node07.GetID())
    dose0 = volume_node_from_image(_dose(np.full(BASELINE.GetSize()[::-1], 20.0), BASELINE), "Dose0", core_scene)
    dose17 = volume_node_from_image(_peak((10.0, 12.0, 0.0), phase), "Dose17", core_scene)
    dose17.SetAndObserveTransformNodeID(node717.GetID())
    out, result = accumulate_dose_nodes(reference, [dose0, dose17])
    library = accumulate_doses(BASELINE, [_dose(np.full(BASELINE.GetSize()[::-1], 20.0), BASELINE),
                                          _peak((10.0, 12.0, 0.0), phase)], [None, [t07, t717]])
    assert np.allclose(sitk.GetArrayFromImage(result.total), sitk.GetArrayFromImage(library.total), atol=1e-4)
    assert np.linalg.norm(_centroid(result.phases[1], 1.0) - (12.0, 0.0, 0.0)) < 0.3
    assert out.GetAttribute("DicomRtImport.DoseVolume") == "1"
    assert np.allclose(sitk.GetArrayFromImage(image_from_volume_node(out)), sitk.GetArrayFromImage(result.total))
    assert isinstance(slicer.vtkMRMLScalarVolumeNode, type)
