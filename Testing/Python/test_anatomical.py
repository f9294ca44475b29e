"""GTV on CT/MR by marker-controlled watershed: spheres of known volume on noisy backgrounds."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.comparison.metrics import compare_masks
from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml
from PETDosePaintingLib.segmentation.anatomical import segment_anatomical

GRID = make_grid((80, 80, 48), (1.0, 1.0, 2.0), origin=(-40.0, -40.0, -48.0))
CENTRE = (0.0, 0.0, 0.0)
RADIUS = 12.0


def ct_like(levels: dict[str, float], noise_hu: float = 15.0, seed: int = 0, extra=None) -> sitk.Image:
    """Muscle-like background, a sphere of tumour (sub-voxel partial volume), CT-like blur and noise."""
    tumour = sphere_fraction(GRID, CENTRE, RADIUS)
    hu = levels["surround"] + (levels["tumour"] - levels["surround"]) * tumour
    if extra is not None:
        hu = extra(hu)
    blurred = gaussian_blur(image_from_array(hu.astype(np.float64), GRID, units="HU"), [0.8, 0.8, 0.0])
    noisy = sitk.GetArrayFromImage(blurred) + np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape)
    return image_from_array(noisy, GRID, units="HU")


def truth() -> sitk.Image:
    return image_from_array((sphere_fraction(GRID, CENTRE, RADIUS) >= 0.5).astype(np.uint8), GRID)


def test_a_contrast_enhancing_sphere_is_found_at_its_volume():
    # 80 HU tumour in 60 HU muscle with 15 HU noise (the digital patient's contrast CT): contrast 1.3 noise SD.
    result = segment_anatomical(ct_like({"tumour": 80.0, "surround": 60.0}), CENTRE)
    exact = sphere_volume_ml(RADIUS)  # 7.24 mL
    assert result.volume_ml == pytest.approx(exact, rel=0.12)
    assert compare_masks(result.mask, truth()).dice > 0.9
    assert result.reference_value == pytest.approx(80.0, abs=3.0)
    assert result.background == pytest.approx(60.0, abs=3.0)
    assert result.method == "anatomical_watershed"


def test_a_darker_tumour_is_found_too():
    # T1w-like: tumour signal below its surroundings (negative contrast).
    result = segment_anatomical(ct_like({"tumour": 200.0, "surround": 300.0}, noise_hu=10.0), CENTRE)
    assert result.details["contrast"] < 0
    assert compare_masks(result.mask, truth()).dice > 0.9


def test_a_necrotic_core_belongs_to_the_gtv():
    x, y, z = physical_grid(GRID)
    core = np.sqrt(x**2 + y**2 + z**2) < 5.0

    def necrosis(hu):
        return np.where(core, 20.0, hu)  # necrosis darker than both tumour and muscle

    result = segment_anatomical(ct_like({"tumour": 90.0, "surround": 55.0}, extra=necrosis), (7.0, 0.0, 0.0))
    assert np.all(sitk.GetArrayFromImage(result.mask)[core] == 1)
    assert compare_masks(result.mask, truth()).dice > 0.9


def test_a_touching_structure_of_another_tissue_is_left_out():
    # Fat (-100 HU) filling the half-space x > 12 mm: touching the sphere's edge, never part of it.
    x, _, _ = physical_grid(GRID)

    def fat(hu):
        return np.where(x > RADIUS, -100.0, hu)

    result = segment_anatomical(ct_like({"tumour": 80.0, "surround": 60.0}, extra=fat), CENTRE)
    assert not np.any(sitk.GetArrayFromImage(result.mask)[x > RADIUS + 1.0])
    assert compare_masks(result.mask, truth()).dice > 0.88


def test_no_contrast_is_refused():
    with pytest.raises(InputError, match="does not stand out"):
        segment_anatomical(ct_like({"tumour": 60.0, "surround": 60.0}), CENTRE)


def test_an_roi_limits_the_result():
    x, _, _ = physical_grid(GRID)
    roi = image_from_array((x < 0.0).astype(np.uint8), GRID)
    result = segment_anatomical(ct_like({"tumour": 80.0, "surround": 60.0}), (-4.0, 0.0, 0.0), roi)
    mask = sitk.GetArrayFromImage(result.mask) > 0
    assert mask.any() and not np.any(mask[x >= 0.0])
    assert result.volume_ml == pytest.approx(sphere_volume_ml(RADIUS) / 2, rel=0.15)


@pytest.mark.parametrize("kwargs", [{"smoothing_mm": 0.0}, {"surround_inner_mm": 50.0},
                                    {"background_fraction": 0.8}, {"tumour_range": (0.75, 2.5)}])
def test_invalid_parameters_are_refused(kwargs):
    with pytest.raises(InputError):
        segment_anatomical(ct_like({"tumour": 80.0, "surround": 60.0}), CENTRE, **kwargs)


def test_a_click_outside_the_image_is_refused():
    with pytest.raises(InputError):
        segment_anatomical(ct_like({"tumour": 80.0, "surround": 60.0}), (500.0, 0.0, 0.0))
