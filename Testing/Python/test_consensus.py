"""Consensus: majority vote (k of N) and STAPLE, mask level and method level."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, physical_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction
from PETDosePaintingLib.segmentation.consensus import (
    DEFAULT_METHODS,
    combine_masks,
    consensus_segmentation,
    majority_vote,
    staple,
)
from PETDosePaintingLib.segmentation.registry import METHODS, run_method

GRID = make_grid((40, 40, 40), (2.0, 2.0, 2.0), origin=(-39.0, -39.0, -39.0))


def _mask(array: np.ndarray, grid: sitk.Image = GRID) -> sitk.Image:
    return image_from_array(np.asarray(array, dtype=bool), grid)


def _ball(radius_mm: float, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``centre`` (exact, no partial volume)."""
    x, y, z = physical_grid(GRID)
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius_mm**2


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image) > 0


# ---------------------------------------------------------------------------------- majority vote


def test_majority_vote_of_three_masks_is_the_voxelwise_rule():
    rng = np.random.default_rng(5)
    a, b, c = (rng.random(GRID.GetSize()[::-1]) < p for p in (0.3, 0.5, 0.7))
    masks = [_mask(a), _mask(b), _mask(c)]
    votes = a.astype(int) + b + c
    assert np.array_equal(_array(majority_vote(masks)), votes >= 2)  # default k = ceil(3/2) = 2
    assert np.array_equal(_array(majority_vote(masks, k=1)), a | b | c)
    assert np.array_equal(_array(majority_vote(masks, k=3)), a & b & c)
    out, info = combine_masks(masks, "mv3")
    assert np.array_equal(_array(out), a & b & c) and info["k"] == 3
    out, info = combine_masks(masks, "mv2")
    assert np.array_equal(_array(out), votes >= 2) and info["k"] == 2
    result = majority_vote(masks)
    assert result.GetPixelID() == sitk.sitkUInt8 and result.GetSpacing() == GRID.GetSpacing()


def test_default_majority_is_strict_so_a_tie_is_not_tumour():
    balls = [_ball(r) for r in (6.0, 8.0, 10.0, 12.0)]  # nested: a voxel of ball r is in every larger ball
    assert np.array_equal(_array(majority_vote([_mask(m) for m in balls])), balls[1])  # in >= 3 of 4
    # Two methods: a majority needs both (their intersection), not either (their union).
    assert np.array_equal(_array(majority_vote([_mask(balls[0]), _mask(balls[3])])), balls[0])


# ----------------------------------------------------------------------------------------- STAPLE


def test_staple_of_identical_masks_returns_the_mask_with_perfect_raters():
    truth = _ball(10.0)
    result = staple([_mask(truth)] * 3)
    assert np.array_equal(_array(result.mask), truth)
    assert result.sensitivity == pytest.approx([1.0] * 3)
    assert result.specificity == pytest.approx([1.0] * 3)


def test_staple_with_an_eroded_and_a_dilated_rater_recovers_their_known_performance():
    """Raters T (truth), E (eroded, E in T) and D (dilated, T in D).

    STAPLE starts from near-perfect raters, so its first estimate is the majority vote, which is T; at
    T, rater T is perfect and the E-step keeps T (a voxel of T \\ E is backed by the perfect rater, one of
    D \\ T is contradicted by it). Hence: sensitivity (|E|/|T|, 1, 1), specificity
    (1, 1, 1 - |D \\ T| / (voxels of the STAPLE box outside T)).
    """
    t, e, d = _ball(10.0), _ball(7.0), _ball(13.0)
    margin = 10.0
    result = staple([_mask(t), _mask(e), _mask(d)], margin_mm=margin)
    assert np.array_equal(_array(result.mask), t)
    # The box: D's bounding box (the union) grown by 10 mm = 5 voxels a side, clipped to the image.
    nz = np.nonzero(d)
    box_voxels = int(np.prod([min(n, a.max() + 6) - max(0, a.min() - 5) for a, n in zip(nz, d.shape, strict=True)]))
    assert result.region_voxels == box_voxels
    expected_sens = [1.0, e.sum() / t.sum(), 1.0]
    expected_spec = [1.0, 1.0, 1.0 - (d & ~t).sum() / (box_voxels - t.sum())]
    assert result.sensitivity == pytest.approx(expected_sens, abs=1e-4)
    assert result.specificity == pytest.approx(expected_spec, abs=1e-4)
    # The ordering a reader derives at once: the eroded rater misses, the dilated one over-calls.
    assert result.sensitivity[1] < result.sensitivity[0] == pytest.approx(result.sensitivity[2])
    assert result.specificity[2] < result.specificity[0] == pytest.approx(result.specificity[1])


def test_staple_specificity_is_computed_near_the_union_not_over_the_whole_image():
    t, d = _ball(6.0), _ball(8.0)
    near = staple([_mask(t), _mask(t), _mask(d)], margin_mm=4.0)
    far = staple([_mask(t), _mask(t), _mask(d)], margin_mm=100.0)  # whole image
    assert far.region_voxels == t.size
    assert near.specificity[2] < far.specificity[2]  # trivially-background voxels inflate specificity


# ------------------------------------------------------------------------------------ bad input


def test_too_few_masks_are_refused():
    with pytest.raises(InputError, match="at least 2 masks"):
        majority_vote([_mask(_ball(5.0))])
    with pytest.raises(InputError, match="at least 2 masks"):
        staple([])


def test_masks_on_different_grids_are_refused():
    other = make_grid((40, 40, 40), (2.0, 2.0, 2.0), origin=(-38.0, -39.0, -39.0))
    with pytest.raises(GeometryError, match="mask 2"):
        majority_vote([_mask(_ball(5.0)), _mask(_ball(5.0), other)])
    with pytest.raises(GeometryError):
        staple([_mask(_ball(5.0)), _mask(_ball(5.0)), _mask(_ball(5.0), other)])


def test_non_binary_masks_bad_k_unknown_rule_and_empty_union_are_refused():
    labels = image_from_array(_ball(5.0).astype(np.uint8) * 2, GRID)
    with pytest.raises(InputError, match="not a binary mask"):
        majority_vote([labels, _mask(_ball(5.0))])
    with pytest.raises(InputError, match="k must be between 1 and"):
        majority_vote([_mask(_ball(5.0))] * 3, k=4)
    with pytest.raises(InputError, match="unknown consensus rule"):
        combine_masks([_mask(_ball(5.0))] * 2, "average")
    empty = _mask(np.zeros(GRID.GetSize()[::-1], dtype=bool))
    with pytest.raises(InputError, match="all masks are empty"):
        staple([empty, empty])


# --------------------------------------------------------------------------------- method level


def _lesion_pet(neighbour: bool = False) -> sitk.Image:
    activity = 1.0 + 7.0 * sphere_fraction(GRID, (0.0, 0.0, 0.0), 10.0)
    if neighbour:
        activity = activity + 11.0 * sphere_fraction(GRID, (25.0, 0.0, 0.0), 10.0)  # 5 mm gap
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), GRID), 6.0))
    noisy = np.random.default_rng(2).poisson(blurred.astype(np.float64) * 50.0) / 50.0
    return image_from_array(noisy.astype(np.float32), GRID, units=Units.SUV_BW)


def test_method_level_majority_equals_the_vote_of_its_members():
    pet = _lesion_pet()
    result = run_method("consensus", pet, (0.0, 0.0, 0.0))
    members = result.parameters["methods"]
    assert members == [m for m in DEFAULT_METHODS if m in METHODS]  # looked up at call time
    assert members[0] == "threshold" and len(members) >= 3
    masks = [run_method(name, pet, (0.0, 0.0, 0.0)).mask for name in members]
    expected = _array(majority_vote(masks))  # one connected, hole-free sphere here
    assert np.array_equal(_array(result.mask), expected)
    for name, mask in zip(members, masks, strict=True):
        assert result.details["members"][name]["volume_ml"] == pytest.approx(
            np.count_nonzero(_array(mask)) * 0.008)


def test_method_level_staple_reports_each_members_performance():
    pet = _lesion_pet()
    result = consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold", "fcm", "gmm"], rule="staple",
                                    method_parameters={"threshold": {"fraction": 0.5}})
    assert set(result.details["sensitivity"]) == {"threshold", "fcm", "gmm"}
    assert all(0.0 <= v <= 1.0 for v in result.details["specificity"].values())
    alone = run_method("threshold", pet, (0.0, 0.0, 0.0), fraction=0.5)  # the member's own parameters were used
    assert result.details["members"]["threshold"]["threshold"] == pytest.approx(alone.threshold)
    assert result.volume_ml > 0


def test_method_level_consensus_keeps_the_neighbour_out():
    pet = _lesion_pet(neighbour=True)
    result = consensus_segmentation(pet, (0.0, 0.0, 0.0), rule="mv2")
    neighbour = sphere_fraction(GRID, (25.0, 0.0, 0.0), 10.0) >= 0.5
    assert not _array(result.mask)[neighbour].any()


def test_method_level_bad_requests_are_refused():
    pet = _lesion_pet()
    with pytest.raises(InputError, match="unknown segmentation method"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold", "magic"])
    with pytest.raises(InputError, match="itself"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold", "consensus"])
    with pytest.raises(InputError, match="at least two"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold"])
    with pytest.raises(InputError, match="does not run"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold", "fcm"],
                               method_parameters={"gmm": {"beta": 1.0}})
    with pytest.raises(InputError, match="does not take"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold", "fcm"],
                               method_parameters={"fcm": {"fraction": 0.5}})
    with pytest.raises(InputError, match="needs a CT"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), methods=["threshold", "randomwalker"])
    with pytest.raises(InputError, match="outside the image"):
        consensus_segmentation(pet, (300.0, 0.0, 0.0))
    with pytest.raises(InputError, match="k applies to majority"):
        consensus_segmentation(pet, (0.0, 0.0, 0.0), rule="staple", k=2)
