"""Node-level logic behind the panels, headless with slicer-core: seeds in RAS, segments by name, tables."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.mrml.gtv_logic import segment_pet_node, segment_volume_table
from PETDosePaintingLib.mrml.hypoxia_logic import ratio_map_node
from PETDosePaintingLib.mrml.segmentations import (
    mask_from_segment,
    new_segmentation_node,
    segment_names,
    set_segment_from_mask,
)
from PETDosePaintingLib.mrml.tables import table_to_columns
from PETDosePaintingLib.mrml.volumes import volume_node_from_image
from PETDosePaintingLib.phantom.shapes import sphere_fraction


def _two_spheres():
    grid = make_grid((40, 40, 30), (3.0, 3.0, 3.0), origin=(-58.5, -58.5, -43.5))
    a = sphere_fraction(grid, (-25.0, 0.0, 0.0), 12.0)
    b = sphere_fraction(grid, (25.0, 0.0, 0.0), 12.0)
    pet = image_from_array((1.0 + 9.0 * a + 5.0 * b).astype(np.float32), grid, units=Units.SUV_BW)
    return pet, a >= 0.5, b >= 0.5


def test_seed_in_ras_selects_the_lesion_under_it(core_scene):
    pet, left_sphere, right_sphere = _two_spheres()
    node = volume_node_from_image(pet, "PET", core_scene)
    # LPS x = +25 (patient left) is RAS x = -25.
    seg, result = segment_pet_node(node, (-25.0, 0.0, 0.0), "threshold", fraction=0.5)
    mask = sitk.GetArrayFromImage(mask_from_segment(seg, "GTV_threshold", node)) > 0
    assert np.array_equal(mask, right_sphere)
    assert result.threshold == pytest.approx(0.5 * 6.0)
    # A second method result goes into its own segment; the first one is untouched.
    segment_pet_node(node, (25.0, 0.0, 0.0), "threshold", segmentation_node=seg, segment_name="GTV_left",
                     fraction=0.5)
    assert segment_names(seg) == ["GTV_threshold", "GTV_left"]
    assert np.array_equal(sitk.GetArrayFromImage(mask_from_segment(seg, "GTV_threshold", node)) > 0,
                          right_sphere)
    assert np.array_equal(sitk.GetArrayFromImage(mask_from_segment(seg, "GTV_left", node)) > 0, left_sphere)


def test_seed_outside_the_image_is_refused(core_scene):
    pet, _, _ = _two_spheres()
    node = volume_node_from_image(pet, "PET", core_scene)
    with pytest.raises(InputError, match="outside the image"):
        segment_pet_node(node, (500.0, 0.0, 0.0), "threshold")


def test_volume_table_has_the_expected_columns_and_values(core_scene):
    pet, left_sphere, right_sphere = _two_spheres()
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("GTVs", core_scene, reference=node)
    set_segment_from_mask(seg, image_from_array(left_sphere, pet), "GTV_CT")
    set_segment_from_mask(seg, image_from_array(left_sphere | right_sphere, pet), "GTV_PET")
    table = segment_volume_table(seg, node)
    columns = table_to_columns(table)
    assert columns["segment"] == ["GTV_CT", "GTV_PET"]
    voxel_ml = 27.0 / 1000.0
    assert columns["volume_ml"] == pytest.approx([left_sphere.sum() * voxel_ml,
                                                  (left_sphere | right_sphere).sum() * voxel_ml])
    assert "3x3x3 mm" in columns["definition"][0]


def test_ratio_map_node_divides_by_the_reference_mean(core_scene):
    values = np.full((10, 12, 14), 2.0, np.float32)
    values[:, :, 7:] = 3.0  # tumour side at 1.5x muscle
    pet = image_from_array(values, spacing=(2.0, 2.0, 2.0), units=Units.SUV_BW)
    node = volume_node_from_image(pet, "FMISO", core_scene)
    muscle = np.zeros(values.shape, bool)
    muscle[2:6, 2:6, 1:5] = True
    seg = new_segmentation_node("Reference", core_scene, reference=node)
    set_segment_from_mask(seg, image_from_array(muscle, pet), "Muscle")
    ratio_node, result = ratio_map_node(node, seg, "Muscle")
    assert result.reference_mean == pytest.approx(2.0)
    import slicer

    ratio = slicer.util.arrayFromVolume(ratio_node)
    assert ratio[..., 0] == pytest.approx(1.0) and ratio[..., -1] == pytest.approx(1.5)
    assert ratio_node.GetAttribute("PETDosePainting.Units") == "ratio"
