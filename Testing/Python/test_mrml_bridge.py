"""The MRML bridge against the real slicer-core: exact round trips and RAS<->LPS geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, get_units, image_from_array, make_grid, physical_grid
from PETDosePaintingLib.mrml.scene import load_scene_mrb, node_by_name, nodes_by_class, save_scene_mrb
from PETDosePaintingLib.mrml.segmentations import (
    mask_from_segment,
    new_segmentation_node,
    segment_names,
    set_segment_from_mask,
)
from PETDosePaintingLib.mrml.transforms import harden_transform, sitk_transform_from_node, transform_node_from_sitk
from PETDosePaintingLib.mrml.volumes import image_from_volume_node, volume_node_from_image
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml

FLIP = np.array([-1.0, -1.0, 1.0])


def _oblique_image() -> sitk.Image:
    """A small volume with a non-identity direction (rotation about two axes) and a non-zero origin."""
    rng = np.random.default_rng(1)
    image = image_from_array(rng.random((7, 9, 11)).astype(np.float32), spacing=(1.5, 2.0, 3.25),
                             origin=(-12.5, 33.0, 101.75), units=Units.SUV_BW)
    rot = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.7).GetMatrix()
    image.SetDirection(rot)
    return image


def test_volume_geometry_survives_ras_lps_conversion(core_scene):
    image = _oblique_image()
    node = volume_node_from_image(image, "PET", core_scene)
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = slicer.util.arrayFromVTKMatrix(ijk_to_ras)
    x, y, z = physical_grid(image)
    k, j, i = np.meshgrid(*(np.arange(n) for n in image.GetSize()[::-1]), indexing="ij")
    ras = matrix[:3, :3] @ np.stack([i.ravel(), j.ravel(), k.ravel()]) + matrix[:3, 3:4]
    lps = np.stack([x.ravel(), y.ravel(), z.ravel()])
    assert np.max(np.abs(ras - FLIP[:, None] * lps)) < 1e-6  # every voxel centre agrees
    back = image_from_volume_node(node)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert get_units(back) == "SUVbw"


def test_linear_parent_transform_is_folded_into_geometry(core_scene):
    image = _oblique_image()
    node = volume_node_from_image(image, "PET", core_scene)
    shift = sitk.TranslationTransform(3, (5.0, -3.0, 2.0))  # fixed -> moving, LPS
    tnode = transform_node_from_sitk(shift, "shift", core_scene)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    moved = image_from_volume_node(node)
    # The moving image shown in the fixed frame: each voxel sits at T^-1(p).
    assert np.allclose(np.asarray(moved.GetOrigin()), np.asarray(image.GetOrigin()) - (5.0, -3.0, 2.0), atol=1e-9)


def test_sphere_mask_round_trips_exactly_through_a_segment(core_scene):
    grid = make_grid((48, 40, 36), (2.0, 2.0, 2.5), origin=(-47, -39, -44))
    sphere = sphere_fraction(grid, (3.0, -2.0, 1.0), 14.0) >= 0.5
    mask = image_from_array(sphere, grid)
    other = image_from_array(np.roll(sphere, 5, axis=2), grid)
    pet = volume_node_from_image(image_from_array(np.zeros(sphere.shape, np.float32), grid), "PET", core_scene)
    seg = new_segmentation_node("GTVs", core_scene, reference=pet)
    set_segment_from_mask(seg, other, "GTV_CT")
    sid = set_segment_from_mask(seg, mask, "GTV_PET", (1, 0, 0))
    colours_before = len(nodes_by_class(core_scene, "vtkMRMLColorNode"))
    back = mask_from_segment(seg, "GTV_PET", pet)
    assert len(nodes_by_class(core_scene, "vtkMRMLColorNode")) == colours_before  # no colour-table leak
    assert np.array_equal(sitk.GetArrayFromImage(back) > 0, sphere)
    assert back.GetSize() == grid.GetSize() and np.allclose(back.GetOrigin(), grid.GetOrigin())
    volume = np.count_nonzero(sphere) * 2 * 2 * 2.5 / 1000
    assert volume == pytest.approx(sphere_volume_ml(14.0), rel=0.03)
    # Rewriting a segment by name keeps its ID and leaves the other segment intact.
    assert set_segment_from_mask(seg, image_from_array(np.zeros_like(sphere), grid), "GTV_PET") == sid
    assert segment_names(seg) == ["GTV_CT", "GTV_PET"]
    assert not np.any(sitk.GetArrayFromImage(mask_from_segment(seg, "GTV_PET", grid)))
    assert np.array_equal(sitk.GetArrayFromImage(mask_from_segment(seg, "GTV_CT", grid)) > 0,
                          np.roll(sphere, 5, axis=2))


def test_missing_segment_name_lists_available(core_scene):
    seg = new_segmentation_node("S", core_scene)
    set_segment_from_mask(seg, image_from_array(np.ones((3, 3, 3), bool)), "body")
    with pytest.raises(InputError, match=r"no segment named .GTV.*body"):
        mask_from_segment(seg, "GTV", image_from_array(np.ones((3, 3, 3), np.float32)))


def test_rigid_transform_moves_points_where_simpleitk_says(core_scene):
    rigid = sitk.Euler3DTransform((10.0, -20.0, 5.0), 0.2, -0.1, 0.35, (4.0, -7.5, 12.0))
    node = transform_node_from_sitk(rigid, "rigid", core_scene)
    points = np.array([[0.0, 0.0, 0.0], [30.0, -12.0, 44.0], [-55.5, 80.0, -20.0]])
    from_parent = node.GetTransformFromParent()
    for p in points:
        expected = np.asarray(rigid.TransformPoint(p.tolist()))
        got = FLIP * np.asarray(from_parent.TransformPoint((FLIP * p).tolist()))
        assert np.linalg.norm(got - expected) < 0.1
    # A markup under the node, hardened, lands at T^-1(p): the moving point shown in the fixed frame.
    markup = core_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
    markup.AddControlPoint(*(FLIP * points[1]))
    markup.SetAndObserveTransformNodeID(node.GetID())
    harden_transform(markup)
    pos = np.zeros(3)
    markup.GetNthControlPointPosition(0, pos)
    assert np.linalg.norm(FLIP * pos - np.asarray(rigid.GetInverse().TransformPoint(points[1].tolist()))) < 0.1
    back = sitk_transform_from_node(node)
    for p in points:
        assert np.allclose(back.TransformPoint(p.tolist()), rigid.TransformPoint(p.tolist()), atol=1e-6)


def test_displacement_field_transform_round_trip_with_oblique_grid(core_scene):
    grid = make_grid((12, 10, 8), (4.0, 5.0, 6.0), origin=(-20, -25, -20))
    grid.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.1, 0.25, -0.4).GetMatrix())
    x, y, z = physical_grid(grid)
    vectors = np.stack([2 * np.sin(y / 15), 1.5 * np.cos(x / 20), 0.01 * z * x / 10], axis=-1)
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.CopyInformation(grid)
    tx = sitk.DisplacementFieldTransform(sitk.Image(field))
    node = transform_node_from_sitk(tx, "dvf", core_scene)
    rng = np.random.default_rng(3)
    inner = [grid.TransformContinuousIndexToPhysicalPoint(rng.uniform(1, np.array(grid.GetSize()) - 2).tolist())
             for _ in range(20)]
    from_parent = node.GetTransformFromParent()
    for p in inner:
        expected = np.asarray(tx.TransformPoint(p))
        got = FLIP * np.asarray(from_parent.TransformPoint((FLIP * np.asarray(p)).tolist()))
        assert np.linalg.norm(got - expected) < 0.1
    back = sitk_transform_from_node(node)
    for p in inner:
        assert np.allclose(back.TransformPoint(p), tx.TransformPoint(p), atol=1e-6)
    sampled = sitk_transform_from_node(node, reference=grid)  # the sampling path agrees too
    for p in inner:
        assert np.allclose(sampled.TransformPoint(p), tx.TransformPoint(p), atol=0.05)


def test_hardening_a_grid_transform_resamples_like_simpleitk(core_scene):
    grid = make_grid((30, 30, 20), (2.0, 2.0, 2.0), origin=(-29, -29, -19))
    blob = np.exp(-sum(c**2 for c in physical_grid(grid)) / (2 * 8.0**2)).astype(np.float32)
    moving = image_from_array(blob, grid)
    shift = np.zeros((20, 30, 30, 3))
    shift[..., 0] = 4.0  # fixed -> moving: +4 mm in L
    field = sitk.GetImageFromArray(shift, isVector=True)
    field.CopyInformation(grid)
    tx = sitk.DisplacementFieldTransform(field)
    expected = sitk.GetArrayFromImage(sitk.Resample(moving, grid, tx, sitk.sitkLinear, 0.0))
    node = volume_node_from_image(moving, "moving", core_scene)
    node.SetAndObserveTransformNodeID(transform_node_from_sitk(tx, "dvf", core_scene).GetID())
    harden_transform(node)
    resampled = image_from_volume_node(node)
    got = sitk.GetArrayFromImage(sitk.Resample(resampled, grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    core = (slice(3, -3),) * 3
    assert np.max(np.abs(got[core] - expected[core])) < 0.02


def test_mrb_save_and_load_keep_nodes_and_voxels(core_scene, tmp_path):
    image = _oblique_image()
    volume_node_from_image(image, "PET", core_scene)
    dose = image_from_array(np.full((7, 9, 11), 70.0, np.float32), image, units=Units.GY)
    volume_node_from_image(dose, "Prescription", core_scene)
    seg = new_segmentation_node("GTV", core_scene, reference=image)
    sphere = sphere_fraction(image, image.TransformContinuousIndexToPhysicalPoint((5, 4, 3)), 5.0) >= 0.5
    set_segment_from_mask(seg, image_from_array(sphere, image), "GTV_PET")
    path = save_scene_mrb(core_scene, tmp_path / "scene.mrb")
    loaded = load_scene_mrb(path)
    pet = image_from_volume_node(node_by_name(loaded, "PET", "vtkMRMLScalarVolumeNode"))
    assert np.array_equal(sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(image))
    assert np.allclose(pet.GetDirection(), image.GetDirection(), atol=1e-6)
    assert np.allclose(pet.GetOrigin(), image.GetOrigin(), atol=1e-4)
    presc = node_by_name(loaded, "Prescription")
    assert presc.GetAttribute("DicomRtImport.DoseVolume") == "1"
    assert get_units(image_from_volume_node(presc)) == "Gy"
    seg_back = node_by_name(loaded, "GTV", "vtkMRMLSegmentationNode")
    assert segment_names(seg_back) == ["GTV_PET"]
    assert np.array_equal(sitk.GetArrayFromImage(mask_from_segment(seg_back, "GTV_PET", image)) > 0, sphere)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.mrb"]  # nothing temporary left


def test_segment_import_and_export_leave_no_nodes_behind(core_scene):
    grid = make_grid((20, 20, 12), (2.0, 2.0, 3.0))
    mask = image_from_array(sphere_fraction(grid, grid.TransformContinuousIndexToPhysicalPoint((10, 10, 6)), 8.0)
                            >= 0.5, grid)
    seg = new_segmentation_node("S", core_scene, reference=grid)
    set_segment_from_mask(seg, mask, "GTV")
    before = core_scene.GetNumberOfNodes()
    for _ in range(3):  # temporary labelmaps, their display nodes and colour tables are all removed
        set_segment_from_mask(seg, mask, "GTV")
        mask_from_segment(seg, "GTV", grid)
    assert core_scene.GetNumberOfNodes() == before


def test_a_node_holding_a_grid_is_updated_with_a_linear_transform(core_scene):
    """Updating a grid transform node with a linear result must replace its content (VTK refuses a matrix on a
    non-linear node and only logs it, which used to leave the old field in place)."""
    grid = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64)
    grid.SetSpacing((4.0, 4.0, 4.0))
    grid.SetOrigin((-14.0, -14.0, -14.0))
    field = sitk.GetArrayFromImage(grid)
    field[..., 0] = 2.0  # a 2 mm shift in L
    vectors = sitk.GetImageFromArray(field, isVector=True)
    vectors.CopyInformation(grid)
    node = transform_node_from_sitk(sitk.DisplacementFieldTransform(vectors), "T", core_scene)
    shift = sitk.TranslationTransform(3, (0.0, 5.0, 0.0))
    assert transform_node_from_sitk(shift, scene=core_scene, node=node) is node
    back = sitk_transform_from_node(node)
    assert back.IsLinear()
    assert np.allclose(back.TransformPoint((1.0, 2.0, 3.0)), (1.0, 7.0, 3.0))
