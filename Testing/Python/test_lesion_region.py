"""One-click working region: the seed's uptake hill, cut from neighbouring hot structures."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction
from PETDosePaintingLib.segmentation.common import lesion_region
from PETDosePaintingLib.segmentation.thresholds import threshold_fraction_of_max

GRID = make_grid((50, 50, 40), (2.0, 2.0, 2.0), origin=(-49, -49, -39))


def _pet(activity: np.ndarray, fwhm: float = 6.0, noise: float = 0.0) -> sitk.Image:
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array(activity.astype(np.float32), GRID), fwhm))
    if noise:
        blurred = blurred * (1 + noise * np.random.default_rng(7).standard_normal(blurred.shape))
    return image_from_array(blurred.astype(np.float32), GRID, units=Units.SUV_BW)


def test_touching_hotter_neighbour_is_cut_off_and_not_used_for_suvmax():
    lesion = sphere_fraction(GRID, (-12.0, 0.0, 0.0), 10.0)
    neighbour = sphere_fraction(GRID, (13.0, 0.0, 0.0), 10.0)  # 5 mm gap, twice as hot
    pet = _pet(1.0 + 5.0 * lesion + 11.0 * neighbour, noise=0.03)
    region = lesion_region(pet, (-12.0, 0.0, 0.0))
    hill = region.paste(region.inside, lesion.shape)
    assert hill[lesion >= 0.5].all()  # the whole lesion is in its hill
    assert not hill[neighbour >= 0.5].any()  # the neighbour is not
    # A low threshold would join the two through the blurred gap; the hill keeps them apart,
    # and SUVmax is the lesion's own (about 6), not the neighbour's (about 12).
    result = threshold_fraction_of_max(pet, (-12.0, 0.0, 0.0), fraction=0.25)
    mask = sitk.GetArrayFromImage(result.mask) > 0
    assert not mask[neighbour >= 0.5].any()
    assert result.reference_value < 7.5


def test_heterogeneous_uptake_and_necrotic_ring_stay_one_hill():
    r = sphere_fraction(GRID, (0.0, 0.0, 0.0), 16.0)
    hot_spot_a = sphere_fraction(GRID, (-7.0, 0.0, 0.0), 5.0)
    hot_spot_b = sphere_fraction(GRID, (7.0, 2.0, 0.0), 5.0)
    core = sphere_fraction(GRID, (0.0, 0.0, 0.0), 7.0)
    activity = 1.0 + 7.0 * r + 2.0 * (hot_spot_a + hot_spot_b) - 6.5 * core
    pet = _pet(activity)
    region = lesion_region(pet, (-8.0, 0.0, 0.0))
    hill = region.paste(region.inside, r.shape)
    assert hill[r >= 0.5].all()


def test_click_in_flat_background_is_refused():
    pet = _pet(np.ones(GRID.GetSize()[::-1]), noise=0.0)
    with pytest.raises(InputError, match="not on an uptake hill"):
        lesion_region(pet, (0.0, 0.0, 0.0))


def test_working_sphere_grows_around_a_large_lesion_and_is_click_invariant():
    grid = make_grid((70, 70, 60), (2.0, 2.0, 2.0), origin=(-69, -69, -59))
    fraction = sphere_fraction(grid, (0.0, 0.0, 0.0), 28.0)  # 92 mL primary
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array((1 + 6 * fraction).astype(np.float32), grid),
                                                   6.0))
    pet = image_from_array(blurred.astype(np.float32), grid, units=Units.SUV_BW)
    centre = lesion_region(pet, (0.0, 0.0, 0.0), roi_radius_mm=20.0)
    edge = lesion_region(pet, (18.0, 6.0, -4.0), roi_radius_mm=20.0)
    assert centre.radius_mm > 20.0  # grown: the lesion does not fit a 20 mm sphere with background around it
    hill = centre.paste(centre.inside, fraction.shape)
    assert hill[fraction >= 0.5].all()
    # A click off-centre climbs to the same peak and gets the same (peak-centred) working region.
    assert edge.radius_mm == centre.radius_mm and edge.slices == centre.slices
    assert np.array_equal(edge.inside, centre.inside)
