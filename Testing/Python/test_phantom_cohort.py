"""Benchmark lesion cases (phantom.cohort) on the quick grid: determinism, truth, click, strata, CT grid.

Numbers come from first principles: the truth on the PET grid is an exact box average of the fine-grid
tissue fractions, so its sum is the fine-grid volume; the fine-grid volume matches the request to the
tumour model's 0.2 % (plus clipping tolerance); strata are re-derived from the configurations.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, get_units, point_to_index, same_geometry
from PETDosePaintingLib.phantom.cohort import (
    MIN_NECROSIS_ML,
    benchmark_cases,
    cohort_anatomy,
    simulate_lesion_case,
    tbr_bin,
    volume_bin,
)
from PETDosePaintingLib.phantom.pet_scanner import ScannerConfig
from PETDosePaintingLib.phantom.tumour import benchmark_cohort

N = 30
SEED = 4
INDICES = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def anatomy():
    return cohort_anatomy(SEED, quick=True)


@pytest.fixture(scope="module")
def cases(anatomy):
    return benchmark_cases(N, SEED, quick=True, indices=INDICES, anatomy=anatomy)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def test_cases_are_deterministic_and_a_subset_gives_the_same_cases(anatomy, cases):
    again = benchmark_cases(N, SEED, quick=True, indices=(3, 1), anatomy=anatomy)
    for other in again:
        case = cases[INDICES.index(other.index)]
        np.testing.assert_array_equal(_array(other.pet), _array(case.pet))
        np.testing.assert_array_equal(_array(other.ct), _array(case.ct))
        np.testing.assert_array_equal(_array(other.truth_fraction), _array(case.truth_fraction))
        assert other.seed_lps == case.seed_lps and other.config == case.config
    # another cohort seed gives other lesions
    other_seed = benchmark_cases(N, SEED + 1, quick=True, indices=(0,))[0]
    assert other_seed.config != cases[0].config


def test_lesions_are_the_cohort_generators_not_hand_picked(anatomy, cases):
    configs = benchmark_cohort(anatomy, n_lesions=N, seed=SEED)
    for case in cases:
        assert case.config == configs[case.index]
        assert case.name == f"lesion_{case.index:02d}"


def test_truth_on_the_pet_grid_holds_the_requested_volume(cases):
    for case in cases:
        voxel_ml = float(np.prod(case.pet.GetSpacing())) / 1000.0
        fraction = _array(case.truth_fraction)
        # exact box averaging conserves the fine-grid volume (minus any part beyond the PET slices)
        assert fraction.sum() * voxel_ml == pytest.approx(case.lesion.volume_ml, rel=0.01)
        # the fine-grid volume is the request (tumour model: rescaled after clipping to 0.2 %)
        assert case.lesion.volume_ml == pytest.approx(case.config.primary.volume_ml, rel=0.01)
        binary = _array(case.truth).astype(bool)
        np.testing.assert_array_equal(binary, fraction >= 0.5)
        # the binary truth differs from the fractional volume by at most the partial-volume voxels
        partial = np.count_nonzero((fraction > 0) & (fraction < 1)) * voxel_ml
        assert abs(binary.sum() * voxel_ml - case.lesion.volume_ml) <= 0.5 * partial + voxel_ml
        assert get_units(case.truth_fraction) == Units.FRACTION
        assert same_geometry(case.truth, case.pet) and same_geometry(case.truth_fraction, case.pet)


def test_the_click_is_inside_the_gtv_on_its_hottest_inner_voxel(cases):
    for case in cases:
        i, j, k = point_to_index(case.pet, case.seed_lps)
        fraction = _array(case.truth_fraction)
        assert _array(case.truth)[k, j, i] == 1
        inner = fraction >= 0.9 if np.any(fraction >= 0.9) else fraction >= 0.5
        assert inner[k, j, i]
        assert _array(case.pet)[k, j, i] == pytest.approx(float(_array(case.pet)[inner].max()))


def test_strata_follow_the_configurations(cases):
    assert volume_bin(4.99) == "<5 mL" and volume_bin(5.0) == "5-20 mL" and volume_bin(20.0) == "5-20 mL"
    assert volume_bin(20.01) == ">20 mL"
    assert tbr_bin(3.99) == "TBR <4" and tbr_bin(4.0) == "TBR 4-7" and tbr_bin(7.01) == "TBR >7"
    for case in cases:
        s, cfg = case.strata, case.config
        assert s.volume_bin == volume_bin(case.lesion.volume_ml)
        assert s.tbr_bin == tbr_bin(cfg.primary.tbr)
        assert case.lesion.tbr == pytest.approx(cfg.primary.tbr)
        assert s.heterogeneous == (cfg.primary.heterogeneity_sigma > 0)
        assert s.rim == (cfg.inflammation is not None) == bool(_array(case.rim_mask).any())
        assert s.adjacent == (cfg.adjacent is not None) == (case.adjacent is not None)
        assert s.necrotic == (case.lesion.necrosis_volume_ml >= MIN_NECROSIS_ML)
        if cfg.primary.necrosis_radius_fraction == 0:
            assert not s.necrotic
        # the rim and the adjacent structure are not GTV
        assert not np.any(_array(case.rim_mask).astype(bool) & _array(case.truth).astype(bool))
        assert set(case.parameters()["strata"]) == {"volume_bin", "tbr_bin", "heterogeneous", "necrotic", "rim",
                                                   "adjacent"}


def test_pet_and_ct_share_the_pet_grid(cases):
    for case in cases:
        assert get_units(case.pet) == Units.SUV_BW
        assert get_units(case.ct) == Units.HU
        assert same_geometry(case.ct, case.pet)
        assert case.pet_voxel_mm == 4.0 and case.pet.GetSpacing() == (4.0, 4.0, 4.0)  # quick: 4 mm voxels
        ct = _array(case.ct)
        assert ct.min() <= -900  # air around the neck
        gtv = _array(case.truth_fraction) >= 0.99
        if gtv.any():  # the tumour is soft tissue on CT
            assert -150 < float(np.median(ct[gtv])) < 150
        # the lesion is hotter than the tissue around it (FDG, tumour-to-background >= 2)
        pet = _array(case.pet)
        assert pet[_array(case.truth).astype(bool)].mean() > 1.2 * np.median(pet[ct > -300])
    assert cases[0].fwhm_mm == pytest.approx(ScannerConfig.quick().effective_fwhm_mm)


def test_area_averaged_ct_and_bad_input(anatomy, cases):
    case = simulate_lesion_case(anatomy, cases[0].config, scanner=ScannerConfig.quick(), pet_voxel_mm=4.0,
                                ct_interpolation="area", rng=1)
    assert same_geometry(case.ct, case.pet) and case.ct_interpolation == "area"
    with pytest.raises(InputError, match="ct_interpolation"):
        simulate_lesion_case(anatomy, cases[0].config, pet_voxel_mm=4.0, ct_interpolation="cubic")
    with pytest.raises(InputError, match="outside the cohort"):
        benchmark_cases(4, SEED, quick=True, indices=(4,), anatomy=anatomy)
