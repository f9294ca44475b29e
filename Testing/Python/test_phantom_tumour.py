"""Lesion generator: exact volumes, necrosis, rim, adjacency, hypoxia, heterogeneity, timepoints, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.phantom.anatomy import AnatomyConfig, build_anatomy
from PETDosePaintingLib.phantom.tissues import Tissue, property_lut
from PETDosePaintingLib.phantom.tumour import (
    AdjacentConfig,
    LesionConfig,
    RimConfig,
    TimepointSpec,
    TumourConfig,
    apply_lesion_uptake,
    benchmark_cohort,
    build_tumour,
    evolve_tumour,
    gaussian_random_field,
    lognormal_field,
    paint_lesion_labels,
    place_lesion,
)


@pytest.fixture(scope="module")
def anatomy():
    """1 mm grid over the oropharynx and upper neck (z from -35 to +55 mm), template proportions."""
    return build_anatomy(AnatomyConfig(voxel_mm=1.0, field_of_view_mm=(170.0, 170.0, 90.0),
                                       fov_centre_lps=(0.0, -3.0, 10.0), variability=0.0))


def _sphere_ml(r_mm: float) -> float:
    return 4.0 / 3.0 * np.pi * r_mm**3 / 1000.0


@pytest.mark.parametrize("volume_ml", [0.5, 5.0, 60.0])
def test_gtv_volume_matches_the_request(anatomy, volume_ml):
    truth = build_tumour(anatomy, TumourConfig(primary=LesionConfig(volume_ml=volume_ml, irregularity=0.15)), 1)
    primary = truth.lesions["primary"]
    measured = float(truth.gtv_fraction.sum()) * anatomy.voxel_volume_ml
    assert measured == pytest.approx(volume_ml, rel=0.02)
    assert primary.volume_ml == pytest.approx(measured)
    assert truth.gtv_fraction.min() >= 0 and truth.gtv_fraction.max() <= 1
    # Never in air, bone, vessels or the spinal canal.
    forbidden = np.isin(anatomy.labels, (Tissue.OUTSIDE, Tissue.AIRWAY, Tissue.VERTEBRA, Tissue.MANDIBLE,
                                         Tissue.VESSEL, Tissue.SPINAL_CORD, Tissue.CSF))
    assert not np.any(truth.gtv_fraction[forbidden] > 0)


def test_a_regular_lesion_is_a_sphere_of_the_requested_volume(anatomy):
    # irregularity 0 and axis ratios 1: a sphere, r0 = (3 V / 4 pi)^(1/3) from first principles.
    cfg = LesionConfig(site="level_II_l", volume_ml=4.0, irregularity=0.0, axis_ratios=(1.0, 1.0, 1.0))
    truth = build_tumour(anatomy, TumourConfig(primary=cfg), 0)
    primary = truth.lesions["primary"]
    assert primary.clipped_volume_ml == pytest.approx(0.0, abs=0.01)
    assert primary.r0_mm == pytest.approx((3 * 4000.0 / (4 * np.pi)) ** (1 / 3), rel=0.002)
    assert float(truth.gtv_fraction.sum()) * anatomy.voxel_volume_ml == pytest.approx(4.0, rel=0.005)
    # The fraction-weighted centroid is the sphere centre.
    kk, jj, ii = np.nonzero(truth.gtv_fraction)
    w = truth.gtv_fraction[kk, jj, ii]
    x, y, z = anatomy.axes()
    centroid = [np.sum(w * x[ii]) / w.sum(), np.sum(w * y[jj]) / w.sum(), np.sum(w * z[kk]) / w.sum()]
    assert centroid == pytest.approx(primary.centre_lps, abs=0.05)


def test_necrosis_lies_inside_the_gtv_with_the_volume_of_its_radius_fraction(anatomy):
    # A centred, regular core of radius fraction f in the lesion's normalised frame holds f^3 of its volume.
    f = 0.5
    cfg = LesionConfig(site="hypopharynx_l", volume_ml=8.0, necrosis_radius_fraction=f, necrosis_irregularity=0.0,
                       necrosis_offset=0.0)
    truth = build_tumour(anatomy, TumourConfig(primary=cfg), 2)
    assert np.all(truth.necrosis_fraction <= truth.gtv_fraction + 1e-6)
    p = truth.lesions["primary"]
    assert p.clipped_volume_ml < 0.01 * p.volume_ml  # unclipped, so the f^3 rule holds exactly
    assert p.necrosis_volume_ml == pytest.approx(f**3 * p.volume_ml, rel=0.03)
    # Irregular and eccentric necrosis still stays inside.
    cfg = LesionConfig(volume_ml=12.0, necrosis_radius_fraction=0.55, necrosis_irregularity=0.25,
                       necrosis_offset=0.3)
    truth = build_tumour(anatomy, TumourConfig(primary=cfg), 3)
    assert truth.necrosis_fraction.sum() > 0
    assert np.all(truth.necrosis_fraction <= truth.gtv_fraction + 1e-6)
    with pytest.raises(InputError, match="necrosis_radius_fraction"):
        build_tumour(anatomy, TumourConfig(primary=LesionConfig(necrosis_radius_fraction=0.8)), 0)


def test_inflammation_rim_is_outside_the_gtv_and_within_its_thickness(anatomy):
    base = TumourConfig(primary=LesionConfig(volume_ml=8.0))
    with_rim = TumourConfig(primary=LesionConfig(volume_ml=8.0), inflammation=RimConfig(thickness_mm=4.0,
                                                                                        peak_ratio=1.8))
    a, b = build_tumour(anatomy, base, 5), build_tumour(anatomy, with_rim, 5)
    assert np.array_equal(a.gtv_fraction, b.gtv_fraction)  # the rim is not tumour
    gtv = b.gtv_mask()
    rim = b.inflammation_mask
    assert rim.sum() > 0 and not np.any(rim & gtv)
    dist = ndimage.distance_transform_edt(~gtv, sampling=anatomy.spacing[::-1])
    assert dist[rim].max() <= 4.0 + 1.0  # thickness plus half a voxel either side
    assert np.all((b.fdg_background_factor >= 1.0) & (b.fdg_background_factor <= 1.8 + 1e-6))
    assert np.all(b.fdg_background_factor[dist > 5.0] == 1.0)
    # Smooth fall-off: higher next to the GTV than at the outer edge.
    assert b.inflammation[rim & (dist <= 1.5)].mean() > b.inflammation[rim & (dist >= 3.5)].mean() + 0.3
    labels = paint_lesion_labels(anatomy.labels, b)
    assert np.all(labels[gtv] == Tissue.TUMOUR) and np.all(labels[rim] == Tissue.INFLAMMATION)


def test_same_seed_same_truth_and_a_different_seed_a_different_shape(anatomy):
    cfg = TumourConfig(primary=LesionConfig(volume_ml=6.0, necrosis_radius_fraction=0.4))
    a, b, c = build_tumour(anatomy, cfg, 11), build_tumour(anatomy, cfg, 11), build_tumour(anatomy, cfg, 12)
    for name in ("gtv_fraction", "necrosis_fraction", "fdg_lesion", "hypoxia_lesion", "hypoxic_mask"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.gtv_fraction, c.gtv_fraction)
    gen = build_tumour(anatomy, cfg, np.random.default_rng(11))
    assert gen.gtv_fraction.sum() > 0


def test_lognormal_heterogeneity_has_mean_one_and_the_requested_sigma():
    sigma, ell = 0.3, 3.0
    field = lognormal_field((80, 80, 80), (1.0, 1.0, 1.0), sigma, ell, np.random.default_rng(0))
    assert field.mean() == pytest.approx(1.0, abs=0.02)
    assert np.log(field).std() == pytest.approx(sigma, rel=0.05)
    g = gaussian_random_field((80, 80, 80), (1.0, 1.0, 1.0), ell, np.random.default_rng(1))
    assert g.std() == pytest.approx(1.0, rel=0.05)
    # Gaussian correlation exp(-r^2 / (2 l^2)): exp(-1/2) at a lag of l = 3 voxels along x.
    lag = int(ell)
    corr = np.mean(g[:, :, :-lag] * g[:, :, lag:]) / np.mean(g * g)
    assert corr == pytest.approx(np.exp(-0.5), abs=0.05)


def test_tbr_is_the_viable_tumour_mean_and_uptake_composes(anatomy):
    cfg = TumourConfig(primary=LesionConfig(volume_ml=10.0, tbr=6.0, heterogeneity_sigma=0.3,
                                            necrosis_radius_fraction=0.4, necrosis_ratio=0.5))
    truth = build_tumour(anatomy, cfg, 4)
    viable = truth.gtv_fraction - truth.necrosis_fraction
    viable_uptake = truth.fdg_lesion - 0.5 * truth.necrosis_fraction  # SUVbw, background 1.0
    assert viable_uptake.sum() / viable.sum() == pytest.approx(6.0, rel=1e-4)
    base = property_lut("fdg_suv")[anatomy.labels]
    pet = apply_lesion_uptake(base, truth, "FDG")
    full = (truth.gtv_fraction == 1) & (truth.necrosis_fraction == 0)
    assert np.allclose(pet[full], truth.fdg_lesion[full])
    outside = truth.lesion_fraction == 0
    assert np.allclose(pet[outside], base[outside])
    nec = truth.necrosis_fraction == 1
    assert np.allclose(pet[nec], 0.5)
    with pytest.raises(InputError, match="tracer"):
        apply_lesion_uptake(base, truth, "FLT")


def test_hypoxic_subvolume_is_viable_tumour_with_the_requested_fraction_and_ratios(anatomy):
    cfg = TumourConfig(primary=LesionConfig(volume_ml=15.0, hypoxic_fraction=0.3, necrosis_radius_fraction=0.35))
    truth = build_tumour(anatomy, cfg, 6)
    viable_binary = truth.gtv_mask() & (truth.necrosis_fraction < 0.5)
    hyp = truth.hypoxic_mask
    assert hyp.any() and not np.any(hyp & ~viable_binary)
    assert hyp.sum() / viable_binary.sum() == pytest.approx(0.3, abs=0.005)
    # FMISO T/M 1.4-2.2 in hypoxic voxels, 1.0-1.2 in the other viable voxels: any threshold in (1.2, 1.4)
    # recovers the truth.
    full_viable = (truth.gtv_fraction == 1) & (truth.necrosis_fraction == 0)
    assert np.all((truth.tmr[hyp & full_viable] >= 1.4) & (truth.tmr[hyp & full_viable] <= 2.2 + 1e-6))
    normoxic = full_viable & ~hyp
    assert np.all((truth.tmr[normoxic] >= 1.0 - 1e-6) & (truth.tmr[normoxic] <= 1.2 + 1e-6))
    assert np.array_equal(truth.tmr[full_viable] > 1.3, hyp[full_viable])
    fmiso = apply_lesion_uptake(property_lut("fmiso_tmr")[anatomy.labels], truth, "FMISO")
    assert np.allclose(fmiso[full_viable], truth.tmr[full_viable])
    # Hypoxia gathers around the necrotic core.
    dist = ndimage.distance_transform_edt(truth.necrosis_fraction < 0.5, sampling=anatomy.spacing[::-1])
    assert dist[hyp].mean() < dist[viable_binary & ~hyp].mean()


def test_adjacent_avid_structure_at_the_requested_gap(anatomy):
    cfg = TumourConfig(primary=LesionConfig(volume_ml=6.0), adjacent=AdjacentConfig(gap_mm=5.0, volume_ml=2.0,
                                                                                    uptake_ratio=3.5))
    truth = build_tumour(anatomy, cfg, 7)
    avid, gtv = truth.avid_fraction >= 0.5, truth.gtv_mask()
    assert avid.any() and not np.any((truth.avid_fraction > 0) & (truth.gtv_fraction > 0))
    assert float(truth.avid_fraction.sum()) * anatomy.voxel_volume_ml == pytest.approx(2.0, rel=0.03)
    # Gap measured independently: nearest voxel-centre distance minus one voxel, +-1 mm.
    dist = ndimage.distance_transform_edt(~gtv, sampling=anatomy.spacing[::-1])
    assert dist[avid].min() - 1.0 == pytest.approx(5.0, abs=1.0)
    assert truth.lesions["adjacent"].gap_mm == pytest.approx(5.0, abs=1.0)
    assert np.allclose(truth.fdg_lesion[truth.avid_fraction == 1], 3.5)
    assert np.all(paint_lesion_labels(anatomy.labels, truth)[avid] == Tissue.LYMPHOID)


def test_involved_node_is_a_separate_lesion(anatomy):
    truth = build_tumour(anatomy, TumourConfig.example(), 8)
    assert set(truth.lesions) == {"primary", "node"}
    assert float(truth.node_fraction.sum()) * anatomy.voxel_volume_ml == pytest.approx(3.0, rel=0.02)
    assert np.all(truth.gtv_fraction + truth.node_fraction <= 1 + 1e-6)
    labels, _ = ndimage.label(truth.gtv_mask(include_node=True))
    assert labels.max() >= 2
    assert not np.any(truth.gtv_mask() & (truth.node_fraction >= 0.5))


def test_timepoints_shrink_inside_the_baseline_and_hypoxia_changes(anatomy):
    cfg = TumourConfig(primary=LesionConfig(volume_ml=10.0, hypoxic_fraction=0.35, tbr=6.0))
    series = evolve_tumour(anatomy, cfg, 9)
    base, fx7, fx17 = series.timepoints
    assert np.array_equal(base.gtv_fraction, build_tumour(anatomy, cfg, 9).gtv_fraction)
    for truth, factor in ((fx7, 0.75), (fx17, 0.45)):
        assert truth.lesions["primary"].volume_ml == pytest.approx(factor * 10.0, rel=0.02)
        assert np.all(truth.gtv_fraction <= base.gtv_fraction + 1e-6)  # the shrunken GTV lies inside
    assert fx7.lesions["primary"].tbr == pytest.approx(1 + 5 * 0.7)
    assert fx17.lesions["primary"].hypoxic_fraction == pytest.approx(0.35 * 0.25, abs=0.01)
    earlier = base.hypoxic_mask.copy()
    for change, truth in zip(series.hypoxia_changes, (fx7, fx17), strict=True):
        assert np.array_equal(change.persistent | change.newborn, truth.hypoxic_mask)
        assert np.array_equal(change.persistent | change.resolved, earlier)
        assert not np.any(change.newborn & earlier)
        earlier |= truth.hypoxic_mask
    assert sum(c.newborn_ml for c in series.hypoxia_changes) > 0
    assert all(c.resolved_ml > 0 for c in series.hypoxia_changes)
    # Without renewal, hypoxia only recedes: nothing is newborn.
    spec = TimepointSpec("fx7", 7, volume_factor=0.8, fdg_excess_factor=0.8, hypoxic_fraction_factor=0.5,
                         hypoxia_renewal=0.0)
    calm = evolve_tumour(anatomy, cfg, 9, timepoints=(spec,))
    assert calm.hypoxia_changes[0].newborn_ml < 0.05 * calm.hypoxia_changes[0].persistent_ml


def test_placement_and_benchmark_cohort(anatomy):
    x, y, z = anatomy.axes()
    for volume in (0.5, 20.0):
        c = place_lesion(anatomy, volume, 3)
        i, j, k = (int(np.argmin(np.abs(a - v))) for a, v in zip((x, y, z), c, strict=True))
        assert anatomy.structures["body"][k, j, i]
        assert anatomy.labels[k, j, i] not in (Tissue.AIRWAY, Tissue.VERTEBRA, Tissue.MANDIBLE, Tissue.VESSEL)
    cohort = benchmark_cohort(anatomy, n_lesions=6, seed=1)
    volumes = sorted(c.primary.volume_ml for c in cohort)
    assert 0.5 <= volumes[0] < 2.0 and 20.0 < volumes[-1] <= 60.0  # stratified over 0.5-60 mL
    assert all(2.0 <= c.primary.tbr <= 10.0 for c in cohort)
    assert cohort == benchmark_cohort(anatomy, n_lesions=6, seed=1)
    small = min(cohort, key=lambda c: c.primary.volume_ml)
    truth = build_tumour(anatomy, small, 0)
    assert truth.lesions["primary"].volume_ml == pytest.approx(small.primary.volume_ml, rel=0.02)


def test_truth_parameters_are_json_ready(anatomy):
    from PETDosePaintingLib.imaging.io import to_json_text

    cfg = TumourConfig(primary=LesionConfig(volume_ml=3.0, hypoxic_fraction=0.0), inflammation=RimConfig(),
                       adjacent=AdjacentConfig(gap_mm=3.0))
    series = evolve_tumour(anatomy, cfg, 1)
    text = to_json_text({"anatomy": anatomy.parameters(), "tumour": series.parameters()})
    assert "NaN" not in text and "Infinity" not in text
    truth = series.timepoints[0]
    image = truth.image("gtv_fraction")
    assert image.GetSize() == anatomy.label_image.GetSize() and image.GetMetaData("PETDP_Units") == "fraction"
    assert truth.image("hypoxic_mask").GetMetaData("PETDP_Units") == "label"
