"""Node-level logic of the GradientSegment panel and its "PET Gradient" Segment Editor effect, headless.

slicer-core provides the real MRML scene, segmentations, markups and the C++ segment editor logic
(``vtkSlicerSegmentEditorLogic``, which the Qt effect uses underneath). Expected values come from first
principles: voxel positions from Slicer's own IJK-to-RAS matrices, volumes as voxel counts of analytic
spheres, SUV statistics computed directly from the arrays, votes counted with numpy.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO_ROOT
from scipy import ndimage

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from PETDosePaintingLib.errors import InputError  # noqa: E402
from PETDosePaintingLib.imaging.filters import gaussian_blur  # noqa: E402
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid, same_geometry  # noqa: E402
from PETDosePaintingLib.mrml import segment_editor_logic as sel  # noqa: E402
from PETDosePaintingLib.mrml.gtv_logic import (  # noqa: E402
    COMPARISON_COLUMNS,
    PANEL_MANAGED_PARAMETERS,
    RESULT_COLUMNS,
    OperationCancelled,
    compare_methods_on_node,
    method_parameter_specs,
    method_parameter_values,
    parse_parameter_text,
    roi_mask_on_pet,
    seed_index_from_ras,
    seed_ras_from_markups,
    segment_and_quantify,
    table_to_columns,
)
from PETDosePaintingLib.mrml.segmentations import (  # noqa: E402
    mask_from_segment,
    new_segmentation_node,
    segment_names,
    set_segment_from_mask,
)
from PETDosePaintingLib.mrml.volumes import lps_to_ras_point, volume_node_from_image  # noqa: E402
from PETDosePaintingLib.phantom.shapes import sphere_fraction  # noqa: E402
from PETDosePaintingLib.segmentation.gradient import DEFAULT_FWHM_MM, segment_gradient  # noqa: E402
from PETDosePaintingLib.segmentation.registry import METHODS  # noqa: E402

# An oblique PET direction: 30 degrees about the S axis, then 10 degrees about the (rotated) R axis.
_A, _B = math.radians(30.0), math.radians(10.0)
_RZ = np.array([[math.cos(_A), -math.sin(_A), 0], [math.sin(_A), math.cos(_A), 0], [0, 0, 1]])
_RX = np.array([[1, 0, 0], [0, math.cos(_B), -math.sin(_B)], [0, math.sin(_B), math.cos(_B)]])
OBLIQUE = tuple((_RZ @ _RX).ravel())


def _ijk_to_ras(node) -> np.ndarray:
    """Slicer's own IJK -> RAS matrix of a volume node (independent of the code under test)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _voxel_ras(node, ijk) -> list[float]:
    return (_ijk_to_ras(node) @ np.array([*ijk, 1.0]))[:3].tolist()


def _two_lesions(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """Background 1 SUV, two spheres of radius 10 mm (10 and 6 SUV, centred on voxels), 3 mm voxels.

    Returns the PET and, for each sphere, its 50 %-of-SUVmax contour from first principles: with tissue
    fraction f, a voxel is ``1 + 9 f`` (a) or ``1 + 5 f`` (b), so ``>= 5`` means f >= 4/9 and ``>= 3``
    means f >= 0.4.
    """
    grid = make_grid((36, 30, 24), (3.0, 3.0, 3.0), origin=(-50.0, -40.0, -30.0), direction=direction)
    centre_a = grid.TransformContinuousIndexToPhysicalPoint((10.0, 14.0, 11.0))
    centre_b = grid.TransformContinuousIndexToPhysicalPoint((25.0, 14.0, 11.0))
    fa, fb = sphere_fraction(grid, centre_a, 10.0), sphere_fraction(grid, centre_b, 10.0)
    activity = image_from_array((1.0 + 9.0 * fa + 5.0 * fb).astype(np.float32), grid, units=Units.SUV_BW)
    return activity, fa >= 4.0 / 9.0 - 1e-6, fb >= 0.4 - 1e-6, centre_a, centre_b


def _blurred_sphere(*, radius=12.0, contrast=6.0, voxel=4.0, fov=160.0, noise=0.0):
    n = round(fov / voxel)
    grid = make_grid((n, n, n), (voxel,) * 3, origin=(-fov / 2 + voxel / 2,) * 3)
    centre = (1.3, -0.7, 0.4)
    fraction = sphere_fraction(grid, centre, radius)
    pet = gaussian_blur(image_from_array((1.0 + (contrast - 1.0) * fraction).astype(np.float32), grid), 6.0)
    if noise:
        rng = np.random.default_rng(1)
        values = sitk.GetArrayFromImage(pet)
        pet = image_from_array((rng.poisson(values * noise) / noise).astype(np.float32), grid)
    pet.SetMetaData("PETDP_Units", Units.SUV_BW)
    return pet, centre


def _array(mask: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(mask) > 0


def _nodes_by_class(scene) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(i).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def _colour_tables(scene) -> list[str]:
    return [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())
            if scene.GetNthNode(i).GetName() and scene.GetNthNode(i).GetName().endswith("_ColorTable")]


# ------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE], ids=["axial", "oblique"])
def test_seed_in_ras_lands_on_the_voxel_slicer_places_there(core_scene, direction):
    pet, *_ = _two_lesions(direction)
    node = volume_node_from_image(pet, "PET", core_scene)
    for ijk in [(0, 0, 0), (10, 14, 11), (35, 29, 23), (7, 21, 3)]:
        assert seed_index_from_ras(node, _voxel_ras(node, ijk)) == ijk
        # 0.4 voxel off the centre along every axis still rounds to that voxel.
        assert seed_index_from_ras(node, _voxel_ras(node, np.add(ijk, 0.4))) == ijk
    with pytest.raises(InputError, match="outside"):
        seed_index_from_ras(node, _voxel_ras(node, (-1, 0, 0)))


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE], ids=["axial", "oblique"])
def test_a_click_selects_the_lesion_under_it(core_scene, direction):
    pet, _, b, *_ = _two_lesions(direction)
    node = volume_node_from_image(pet, "PET", core_scene)
    # Click voxel (25, 14, 11), the centre of lesion b (6 SUV), in RAS from Slicer's own geometry.
    out = segment_and_quantify(node, _voxel_ras(node, (25, 14, 11)), "threshold", fraction=0.5)
    mask = _array(mask_from_segment(out.segmentation_node, "GTV_threshold", node))
    assert np.array_equal(mask, b)  # 50 % of 6 SUV = 3 SUV: the voxels at least 40 % inside sphere b
    assert out.result.threshold == pytest.approx(3.0)


def test_pet_under_a_linear_transform_is_seeded_in_world_coordinates(core_scene):
    pet, a, *_ = _two_lesions()
    node = volume_node_from_image(pet, "PET", core_scene)
    transform = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 30.0)
    shift.SetElement(2, 3, -12.0)
    transform.SetMatrixTransformToParent(shift)
    before = _voxel_ras(node, (10, 14, 11))
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = [before[0] + 30.0, before[1], before[2] - 12.0]
    assert seed_index_from_ras(node, world) == (10, 14, 11)
    out = segment_and_quantify(node, world, "threshold", fraction=0.5)
    assert out.quantification.mtv_ml == pytest.approx(a.sum() * 0.027)


def test_seed_from_a_point_list_is_its_world_position(core_scene):
    points = core_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seed")
    with pytest.raises(InputError, match="no point"):
        seed_ras_from_markups(points)
    points.AddControlPoint(vtk.vtkVector3d(10.0, -20.0, 5.0))
    transform = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(1, 3, 7.0)
    transform.SetMatrixTransformToParent(shift)
    points.SetAndObserveTransformNodeID(transform.GetID())
    assert seed_ras_from_markups(points) == pytest.approx((10.0, -13.0, 5.0))
    with pytest.raises(InputError, match="no point 2"):
        seed_ras_from_markups(points, 1)


# ---------------------------------------------------------------------------- segments by name, ROI


def test_results_go_into_the_named_segment_and_other_segments_stay(core_scene):
    pet, a, b, _, _ = _two_lesions()
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("GTVs", core_scene, reference=node)
    set_segment_from_mask(seg, image_from_array(a, pet), "GTV_CT")
    seed_b = _voxel_ras(node, (25, 14, 11))
    out = segment_and_quantify(node, seed_b, "threshold", segmentation_node=seg, segment_name="GTV_PET",
                               fraction=0.5)
    assert out.segmentation_node is seg and segment_names(seg) == ["GTV_CT", "GTV_PET"]
    assert seg.GetSegmentation().GetSegmentIdBySegmentName("GTV_PET") == out.segment_id
    assert np.array_equal(_array(mask_from_segment(seg, "GTV_CT", node)), a)
    assert np.array_equal(_array(mask_from_segment(seg, "GTV_PET", node)), b)
    # Running again into the same name replaces that segment only.
    segment_and_quantify(node, _voxel_ras(node, (10, 14, 11)), "threshold", segmentation_node=seg,
                         segment_name="GTV_PET", fraction=0.5)
    assert segment_names(seg) == ["GTV_CT", "GTV_PET"]
    assert np.array_equal(_array(mask_from_segment(seg, "GTV_PET", node)), a)
    assert np.array_equal(_array(mask_from_segment(seg, "GTV_CT", node)), a)


def test_markups_roi_mask_is_the_voxel_centres_inside_the_box(core_scene):
    pet, _, _, _, _ = _two_lesions(OBLIQUE)
    node = volume_node_from_image(pet, "PET", core_scene)
    roi = core_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Box")
    centre, size = np.array(_voxel_ras(node, (20, 12, 10))) + 0.3, np.array([25.0, 16.0, 12.0])
    roi.SetCenter(*centre)
    roi.SetSize(*size)
    mask = _array(roi_mask_on_pet(roi, pet))
    k, j, i = np.meshgrid(*(np.arange(n) for n in pet.GetSize()[::-1]), indexing="ij")
    ras = _ijk_to_ras(node) @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    expected = np.all(np.abs(ras[:3] - centre[:, None]) <= size[:, None] / 2, axis=0).reshape(i.shape)
    assert expected.sum() > 50 and np.array_equal(mask, expected)
    roi.SetInsideOut(True)
    assert np.array_equal(_array(roi_mask_on_pet(roi, pet)), ~expected)


def test_an_roi_box_or_segment_restricts_the_search(core_scene):
    pet, a, b, _, _ = _two_lesions()
    node = volume_node_from_image(pet, "PET", core_scene)
    roi = core_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Box")
    roi.SetCenter(*_voxel_ras(node, (25, 14, 11)))
    roi.SetSize(40.0, 40.0, 40.0)
    # No seed: the ROI's hottest voxel seeds the method, so lesion b (not the hotter a) is found.
    out = segment_and_quantify(node, None, "threshold", roi=roi, fraction=0.5)
    assert np.array_equal(_array(out.result.mask), b)
    holder = new_segmentation_node("ROIs", core_scene, reference=node)
    set_segment_from_mask(holder, image_from_array(ndimage.binary_dilation(b, iterations=3), pet), "Search")
    out = segment_and_quantify(node, None, "peak", roi=(holder, "Search"))
    assert out.result.mask is not None and _array(out.result.mask)[b].all()
    assert not _array(out.result.mask)[a].any()
    empty = core_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Far")
    empty.SetCenter(900.0, 0.0, 0.0)
    empty.SetSize(5.0, 5.0, 5.0)
    with pytest.raises(InputError, match="contains no PET voxel"):
        roi_mask_on_pet(empty, pet)


def test_ct_on_another_grid_is_resampled_for_the_methods_that_use_it(core_scene):
    pet, _, b, *_ = _two_lesions()
    node = volume_node_from_image(pet, "PET", core_scene)
    ct_grid = make_grid((108, 90, 36), (1.0, 1.0, 2.0), origin=(-51.0, -41.0, -31.0))
    ct = volume_node_from_image(image_from_array(np.full((36, 90, 108), 40.0, np.float32), ct_grid), "CT",
                                core_scene)  # soft tissue, no units attribute: taken as HU
    out = segment_and_quantify(node, _voxel_ras(node, (25, 14, 11)), "randomwalker", ct_node=ct, fwhm_mm=6.0)
    assert _array(out.result.mask)[b].mean() > 0.9
    assert any("FWHM not used" in note for note in out.notes)
    with pytest.raises(InputError, match="needs a CT"):
        segment_and_quantify(node, _voxel_ras(node, (25, 14, 11)), "randomwalker")


# ----------------------------------------------------------------------------- parameter form


def test_every_registered_method_gets_a_form_from_the_registry():
    for name, info in METHODS.items():
        specs = {s.name: s for s in method_parameter_specs(name)}
        assert set(specs) <= set(info.parameters)
        # Whatever is not in the form is panel-managed (FWHM, CT, MR) or cannot be typed (images, mappings).
        for left_out in set(info.parameters) - set(specs):
            assert left_out in PANEL_MANAGED_PARAMETERS or left_out in ("method_parameters", "background"), \
                (name, left_out)
        assert all(s.kind in ("float", "int", "bool", "str", "list", "value") for s in specs.values())
    gradient = {s.name: s for s in method_parameter_specs("gradient")}
    assert "fwhm_mm" not in gradient and "ct" not in gradient
    assert gradient["roi_radius_mm"].default == 40.0 and gradient["roi_radius_mm"].kind == "float"
    assert gradient["refine_edges"].kind == "bool" and gradient["refine_edges"].default is True
    assert gradient["sigma_spatial_mm"].default_text == "method default"  # None: chosen by the method
    assert "ct_interpolation" not in gradient  # the panel resamples the CT onto the PET grid itself
    assert "working sphere" in gradient["roi_radius_mm"].description
    # ``threshold`` forwards roi_radius_mm through **kwargs: kind borrowed, default left to the method.
    threshold = {s.name: s for s in method_parameter_specs("threshold")}
    assert "0.41" in threshold["fraction"].description  # no Parameters section: the summary line
    assert threshold["roi_radius_mm"].kind == "float" and threshold["roi_radius_mm"].default_text == "method default"
    gmm = {s.name: s for s in method_parameter_specs("gmm")}
    assert gmm["classes_range"].kind == "list" and gmm["classes_range"].default_text == "2, 3, 4"


def test_form_text_is_parsed_by_kind_and_errors_name_the_parameter():
    specs = {s.name: s for s in method_parameter_specs("gradient") + method_parameter_specs("gmm")}
    assert parse_parameter_text(specs["roi_radius_mm"], " 30 ") == 30.0
    assert parse_parameter_text(specs["roi_radius_mm"], "") is None
    assert parse_parameter_text(specs["iterations"], "12") == 12
    assert parse_parameter_text(specs["refine_edges"], "False") is False
    assert parse_parameter_text(specs["level_score"], "gradient") == "gradient"
    assert parse_parameter_text(specs["classes_range"], "2, 3") == (2, 3)
    assert parse_parameter_text(specs["classes_range"], "[2, 4]") == (2, 4)
    assert parse_parameter_text(specs["n_classes"], "auto") == "auto"
    assert parse_parameter_text(specs["n_classes"], "3") == 3
    with pytest.raises(InputError, match="roi_radius_mm"):
        parse_parameter_text(specs["roi_radius_mm"], "forty")
    with pytest.raises(InputError, match="iterations"):
        parse_parameter_text(specs["iterations"], "2.5")
    with pytest.raises(InputError, match="refine_edges"):
        parse_parameter_text(specs["refine_edges"], "maybe")
    with pytest.raises(InputError, match="must be finite"):
        parse_parameter_text(specs["roi_radius_mm"], "inf")
    assert method_parameter_values("gradient", {"roi_radius_mm": "30", "iterations": "", "gone": "1"}) == \
        {"roi_radius_mm": 30.0}


def test_panel_defaults_match_the_library():
    module = (REPO_ROOT / "GradientSegment" / "GradientSegment.py").read_text()
    fwhm = re.search(r"fwhmMm: Annotated\[float, WithinRange\(([\d.]+), ([\d.]+)\)\] = ([\d.]+)", module)
    assert fwhm and float(fwhm.group(3)) == DEFAULT_FWHM_MM
    assert float(fwhm.group(1)) <= DEFAULT_FWHM_MM <= float(fwhm.group(2))
    method = re.search(r'    method: str = "(\w+)"', module)
    assert method and method.group(1) in METHODS


# ------------------------------------------------------------------------------------- tables


def test_results_table_has_the_expected_columns_and_values(core_scene):
    pet, a, b, _, _ = _two_lesions()
    node = volume_node_from_image(pet, "PET", core_scene)
    out = segment_and_quantify(node, _voxel_ras(node, (10, 14, 11)), "threshold", fraction=0.5)
    columns = table_to_columns(out.table_node)
    assert tuple(columns) == RESULT_COLUMNS
    values = sitk.GetArrayFromImage(pet)
    voxel_ml = 0.027
    assert columns["segment"] == ["GTV_threshold"] and columns["method"] == ["threshold"]
    assert columns["units"] == ["SUVbw"]
    assert columns["SUVmax"][0] == pytest.approx(values[a].max())
    assert columns["SUVmean"][0] == pytest.approx(values[a].mean(), rel=1e-6)
    assert columns["MTV_ml"][0] == pytest.approx(a.sum() * voxel_ml)
    assert columns["TLG"][0] == pytest.approx(values[a].mean() * a.sum() * voxel_ml, rel=1e-6)
    assert columns["threshold"][0] == pytest.approx(5.0)
    assert math.isnan(columns["background"][0])  # a fraction of SUVmax uses no background
    assert values[a].mean() <= columns["SUVpeak"][0] <= values[a].max()
    assert out.table_node.GetColumnUnitLabel("MTV_ml") == "mL"
    # A second segment adds a row, the same segment again replaces its row.
    segment_and_quantify(node, _voxel_ras(node, (25, 14, 11)), "bgsub", segmentation_node=out.segmentation_node,
                         table_node=out.table_node)
    segment_and_quantify(node, _voxel_ras(node, (25, 14, 11)), "threshold", segmentation_node=out.segmentation_node,
                         table_node=out.table_node, fraction=0.5)
    columns = table_to_columns(out.table_node)
    assert columns["segment"] == ["GTV_bgsub", "GTV_threshold"]
    assert columns["MTV_ml"][1] == pytest.approx(b.sum() * voxel_ml)
    assert columns["background"][0] == pytest.approx(1.0)  # the bgsub background shell is uniform 1 SUV


def test_a_pet_without_units_is_quantified_in_its_own_units(core_scene):
    pet, a, _, _, _ = _two_lesions()
    pet.EraseMetaData("PETDP_Units")
    node = volume_node_from_image(pet, "PET", core_scene)
    out = segment_and_quantify(node, _voxel_ras(node, (10, 14, 11)), "threshold", fraction=0.5)
    assert "no PETDosePainting.Units" in table_to_columns(out.table_node)["units"][0]
    assert out.quantification.mtv_ml == pytest.approx(a.sum() * 0.027)


# ------------------------------------------------------------------------------ comparing methods


def test_compare_methods_writes_segments_a_consensus_and_a_table(core_scene):
    pet, centre = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("GTVs", core_scene, reference=node)
    keep = np.zeros(pet.GetSize()[::-1], bool)
    keep[2:6, 2:6, 2:6] = True
    set_segment_from_mask(seg, image_from_array(keep, pet), "Body")
    labels = []
    comparison = compare_methods_on_node(node, lps_to_ras_point(centre), ["threshold", "gradient", "fcm"],
                                         segmentation_node=seg, fwhm_mm=6.0,
                                         method_parameters={"threshold": {"fraction": 0.5}},
                                         progress=lambda done, total, label: labels.append((done, total, label)))
    assert labels == [(0, 4, "threshold"), (1, 4, "gradient"), (2, 4, "fcm"), (3, 4, "consensus (majority)")]
    assert segment_names(seg) == ["Body", "GTV_threshold", "GTV_gradient", "GTV_fcm", "GTV_consensus_majority"]
    assert np.array_equal(_array(mask_from_segment(seg, "Body", node)), keep)
    # Majority of three = voxels in at least two of the masks (then the seed's component, holes filled).
    votes = sum(_array(comparison.results[m].mask).astype(int) for m in ("threshold", "gradient", "fcm"))
    expected = ndimage.binary_fill_holes(votes >= 2)
    assert np.array_equal(_array(comparison.consensus), expected)
    assert np.array_equal(_array(mask_from_segment(seg, "GTV_consensus_majority", node)), expected)
    assert comparison.results["threshold"].threshold == pytest.approx(0.5 * sitk.GetArrayFromImage(pet).max(),
                                                                      rel=1e-3)
    columns = table_to_columns(comparison.table_node)
    assert tuple(columns) == COMPARISON_COLUMNS
    assert columns["method"] == ["threshold", "gradient", "fcm", "consensus (majority)"]
    assert columns["status"] == ["ok"] * 4
    for n, name in enumerate(["threshold", "gradient", "fcm"]):
        m, c = _array(comparison.results[name].mask), expected
        assert columns["dice_vs_consensus"][n] == pytest.approx(2 * (m & c).sum() / (m.sum() + c.sum()))
        assert columns["MTV_ml"][n] == pytest.approx(m.sum() * 0.064)
    assert columns["dice_vs_consensus"][3] == 1.0
    assert all(math.isnan(v) for v in columns["staple_sensitivity"])


def test_compare_with_staple_reports_sensitivities_and_failed_methods(core_scene):
    pet, centre = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    comparison = compare_methods_on_node(node, lps_to_ras_point(centre), ["threshold", "peak", "randomwalker", "fcm"],
                                         rule="staple")
    assert comparison.failures == {"randomwalker": "needs a CT volume"}
    assert comparison.consensus_segment == "GTV_consensus_staple"
    assert "GTV_randomwalker" not in segment_names(comparison.segmentation_node)
    columns = table_to_columns(comparison.table_node)
    assert columns["status"][2] == "failed: needs a CT volume" and math.isnan(columns["MTV_ml"][2])
    sensitivities = [columns["staple_sensitivity"][n] for n in (0, 1, 3)]
    assert all(0.5 < s <= 1.0 for s in sensitivities)
    assert sensitivities == pytest.approx(comparison.consensus_details["sensitivity"])
    with pytest.raises(InputError, match="at least two"):
        compare_methods_on_node(node, lps_to_ras_point(centre), ["randomwalker", "threshold"])
    with pytest.raises(InputError, match="consensus"):
        compare_methods_on_node(node, lps_to_ras_point(centre), ["threshold", "consensus"])


def test_cancelling_a_comparison_leaves_the_scene_unchanged(core_scene):
    pet, centre = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("GTVs", core_scene, reference=node)
    before = _nodes_by_class(core_scene)
    with pytest.raises(OperationCancelled):
        compare_methods_on_node(node, lps_to_ras_point(centre), ["threshold", "peak", "fcm"], segmentation_node=seg,
                                progress=lambda done, total, label: done < 2)  # cancel before the third method
    assert _nodes_by_class(core_scene) == before
    assert segment_names(seg) == []


def test_panel_operations_leave_no_temporary_nodes_or_colour_tables(core_scene):
    pet, a, *_ = _two_lesions()
    node = volume_node_from_image(pet, "PET", core_scene)
    holder = new_segmentation_node("ROIs", core_scene, reference=node)
    set_segment_from_mask(holder, image_from_array(ndimage.binary_dilation(a, iterations=2), pet), "Search")
    colour_tables = _colour_tables(core_scene)
    before = _nodes_by_class(core_scene)
    out = segment_and_quantify(node, _voxel_ras(node, (10, 14, 11)), "threshold", roi=(holder, "Search"))
    segment_and_quantify(node, _voxel_ras(node, (25, 14, 11)), "peak", segmentation_node=out.segmentation_node,
                         table_node=out.table_node)
    compare_methods_on_node(node, _voxel_ras(node, (10, 14, 11)), ["threshold", "peak"],
                            segmentation_node=out.segmentation_node)
    added = {k: v - before.get(k, 0) for k, v in _nodes_by_class(core_scene).items() if v != before.get(k, 0)}
    # One segmentation (with its display node) and two tables: nothing else.
    assert added == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1, "vtkMRMLTableNode": 2}
    assert _colour_tables(core_scene) == colour_tables


# ------------------------------------------------------------------------- Segment Editor effect


def _editor(scene, pet_node, segmentation_node):
    """The C++ segment editor logic and its parameter node, as the Qt editor sets them up."""
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation_node)
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(editor_node)
    logic.SetSourceVolumeNode(pet_node)
    assert logic.UpdateAlignedSourceVolume()
    return logic, editor_node


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE], ids=["axial", "oblique"])
def test_editor_source_image_converts_with_its_geometry(core_scene, direction):
    pet, _, _, _, _ = _two_lesions(direction)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, _ = _editor(core_scene, node, seg)
    image = sel.image_from_oriented_image_data(logic.GetAlignedSourceVolume(), Units.SUV_BW)
    assert same_geometry(image, pet) and np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(pet))
    box = (slice(2, 9), slice(3, 5), slice(10, 30))
    crop = sel.image_from_oriented_image_data(logic.GetAlignedSourceVolume(), box=box)
    assert np.array_equal(sitk.GetArrayFromImage(crop), sitk.GetArrayFromImage(pet)[box])
    assert crop.GetOrigin() == pytest.approx(pet.TransformIndexToPhysicalPoint((10, 3, 2)))
    # Back to the editor: a mask on the reference extent.
    mask = np.zeros(sitk.GetArrayViewFromImage(pet).shape, bool)
    mask[box] = True
    oriented = sel.oriented_image_data_from_array(mask, logic.GetAlignedSourceVolume())
    assert np.array_equal(sel.array_from_oriented_image_data(oriented) > 0, mask)
    assert np.allclose(sel.oriented_ijk_to_ras(oriented), _ijk_to_ras(node))


def test_editor_cluster_equals_the_gradient_method_on_the_whole_image(core_scene):
    pet, centre = _blurred_sphere(fov=240.0, noise=200.0)  # 60^3 voxels: the crop is smaller than the image
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, _ = _editor(core_scene, node, seg)
    source = logic.GetAlignedSourceVolume()
    cluster = sel.gradient_cluster_in_editor(source, lps_to_ras_point(centre), segmentation_node=seg,
                                             source_volume_node=node, fwhm_mm=6.0)
    assert any(s.stop - s.start < n for s, n in zip(cluster.box, sitk.GetArrayViewFromImage(pet).shape, strict=True))
    whole = segment_gradient(pet, centre, fwhm_mm=6.0)
    assert np.array_equal(cluster.mask_array(), _array(whole.mask))
    assert cluster.chosen == whole.details["chosen_level"]
    assert cluster.volume_ml() == pytest.approx(whole.volume_ml)
    assert f"level {cluster.chosen} of 0-{cluster.level_count - 1} (automatic)" in cluster.level_summary()


def test_editor_cluster_follows_the_segmentation_transform(core_scene):
    pet, centre = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, _ = _editor(core_scene, node, seg)
    plain = sel.gradient_cluster_in_editor(logic.GetAlignedSourceVolume(), lps_to_ras_point(centre),
                                           segmentation_node=seg)
    # Move the segmentation (and the PET with it) by a translation: the same world click, shifted, gives
    # the same cluster in the segmentation's own frame.
    transform = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 24.0)
    shift.SetElement(1, 3, -8.0)
    transform.SetMatrixTransformToParent(shift)
    for moved in (seg, node):
        moved.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.UpdateAlignedSourceVolume()
    world = lps_to_ras_point(centre) + np.array([24.0, -8.0, 0.0])
    assert sel.world_to_node_ras(seg, world) == pytest.approx(lps_to_ras_point(centre))
    moved_cluster = sel.gradient_cluster_in_editor(logic.GetAlignedSourceVolume(), world, segmentation_node=seg)
    assert np.array_equal(moved_cluster.mask_array(), plain.mask_array())


def test_dendrogram_levels_are_nested_clusters(core_scene):
    pet, centre = _blurred_sphere(radius=15.0, contrast=5.0, voxel=2.0, fov=100.0, noise=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, _ = _editor(core_scene, node, seg)
    source = logic.GetAlignedSourceVolume()
    raw = sel.gradient_cluster_in_editor(source, lps_to_ras_point(centre), segmentation_node=seg, refine_edges=False)
    masks = [raw.mask_array(level) for level in range(raw.level_count)]
    assert raw.level_count >= 3
    for low, high in pairwise(masks):
        assert np.all(low <= high)  # each level contains the one below: the slider only grows the mask
    # With the default sub-voxel edge refinement the boundary may move by up to one voxel between levels.
    refined = sel.gradient_cluster_in_editor(source, lps_to_ras_point(centre), segmentation_node=seg)
    masks = [refined.mask_array(level) for level in range(refined.level_count)]
    volumes = [refined.volume_ml(level) for level in range(refined.level_count)]
    assert volumes == sorted(volumes)
    for low, high in pairwise(masks):
        assert np.all(low <= ndimage.binary_dilation(high, np.ones((3, 3, 3), bool)))
    with pytest.raises(InputError, match="level"):
        refined.mask_array(refined.level_count)


def test_a_click_in_background_or_outside_is_refused(core_scene):
    pet, _ = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, _ = _editor(core_scene, node, seg)
    with pytest.raises(InputError, match="outside the source volume"):
        sel.gradient_cluster_in_editor(logic.GetAlignedSourceVolume(), (500.0, 0.0, 0.0), segmentation_node=seg)
    with pytest.raises(InputError):
        sel.gradient_cluster_in_editor(logic.GetAlignedSourceVolume(), lps_to_ras_point((40.0, 40.0, 40.0)),
                                       segmentation_node=seg)


def test_preview_node_shows_the_level_and_is_removed_without_leaks(core_scene):
    pet, centre = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, _ = _editor(core_scene, node, seg)
    source = logic.GetAlignedSourceVolume()
    cluster = sel.gradient_cluster_in_editor(source, lps_to_ras_point(centre), segmentation_node=seg)
    before = _nodes_by_class(core_scene)
    preview = sel.show_preview(cluster.oriented_mask(), seg, color=(0.2, 0.4, 0.6))
    shown = sel.segment_mask_in_geometry(preview, sel.PREVIEW_SEGMENT_ID, source)
    assert np.array_equal(shown, cluster.mask_array())
    assert not preview.GetSaveWithScene() and preview.GetHideFromEditors()
    same = sel.show_preview(cluster.oriented_mask(0), seg, preview)  # the slider reuses the node
    assert same is preview and np.array_equal(sel.segment_mask_in_geometry(preview, sel.PREVIEW_SEGMENT_ID, source),
                                              cluster.mask_array(0))
    assert segment_names(seg) == []  # the edited segmentation is untouched by the preview
    sel.remove_preview(preview)
    sel.remove_preview(preview)  # twice is harmless
    assert _nodes_by_class(core_scene) == before


def _editor_case(core_scene):
    """PET sphere; segmentation with 'Body' (left half of the image) and 'Node' overlapping the lesion."""
    pet, centre = _blurred_sphere(fov=100.0)
    node = volume_node_from_image(pet, "PET", core_scene)
    seg = new_segmentation_node("S", core_scene, reference=node)
    logic, editor_node = _editor(core_scene, node, seg)
    source = logic.GetAlignedSourceVolume()
    cluster = sel.gradient_cluster_in_editor(source, lps_to_ras_point(centre), segmentation_node=seg)
    lesion = cluster.mask_array()
    shape = lesion.shape
    body = np.zeros(shape, bool)
    body[:, :, : shape[2] // 2 + 1] = True  # i below the seed column: part of the lesion is outside
    overlap = np.zeros(shape, bool)
    k, j, i = (int(np.mean(a)) for a in np.nonzero(lesion))
    overlap[k - 1:k + 2, j - 1:j + 2, i - 6:i + 6] = True
    ids = {}
    editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)  # Body and Node overlap
    for name, mask in (("Body", body), ("Node", overlap)):
        ids[name] = logic.AddEmptySegment(name)
        sel.modify_segment_by_mask(logic, seg, ids[name], sel.oriented_image_data_from_array(mask, source))
    ids["GTV"] = logic.AddEmptySegment("GTV")
    case = SimpleNamespace(logic=logic, editor_node=editor_node, seg=seg, source=source, cluster=cluster,
                           lesion=lesion, body=body, overlap=overlap, ids=ids)
    assert np.array_equal(case_mask(case, "Body"), body) and np.array_equal(case_mask(case, "Node"), overlap)
    return case


def case_mask(case, name: str) -> np.ndarray:
    return sel.segment_mask_in_geometry(case.seg, case.ids[name], case.source)


def test_apply_honours_the_editable_area_of_a_mask_segment(core_scene):
    c = _editor_case(core_scene)
    assert (c.lesion & ~c.body).any() and (c.lesion & c.body).any()
    c.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    c.editor_node.SetMaskSegmentID(c.ids["Body"])
    c.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    c.editor_node.SetSelectedSegmentID(c.ids["GTV"])
    sel.modify_segment_by_mask(c.logic, c.seg, c.ids["GTV"], c.cluster.oriented_mask())
    assert np.array_equal(case_mask(c, "GTV"), c.lesion & c.body)
    assert np.array_equal(case_mask(c, "Body"), c.body)
    assert np.array_equal(case_mask(c, "Node"), c.overlap)


def test_apply_honours_the_overwrite_mode(core_scene):
    c = _editor_case(core_scene)
    assert (c.lesion & c.overlap).any()
    c.editor_node.SetSelectedSegmentID(c.ids["GTV"])
    c.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    sel.modify_segment_by_mask(c.logic, c.seg, c.ids["GTV"], c.cluster.oriented_mask())
    assert np.array_equal(case_mask(c, "GTV"), c.lesion)
    assert np.array_equal(case_mask(c, "Node"), c.overlap)
    # Slicer's default (overwrite all segments) removes the lesion from the overlapping segments.
    c.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    sel.modify_segment_by_mask(c.logic, c.seg, c.ids["GTV"], c.cluster.oriented_mask())
    assert np.array_equal(case_mask(c, "Node"), c.overlap & ~c.lesion)
    assert np.array_equal(case_mask(c, "Body"), c.body & ~c.lesion)


def test_apply_replaces_or_adds_to_the_selected_segment(core_scene):
    c = _editor_case(core_scene)
    c.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    c.editor_node.SetSelectedSegmentID(c.ids["GTV"])
    earlier = np.zeros(c.lesion.shape, bool)
    earlier[:3, :3, :3] = True
    sel.modify_segment_by_mask(c.logic, c.seg, c.ids["GTV"], sel.oriented_image_data_from_array(earlier, c.source))
    level = max(c.cluster.chosen - 1, 0)
    sel.modify_segment_by_mask(c.logic, c.seg, c.ids["GTV"], c.cluster.oriented_mask(level), add=True)
    assert np.array_equal(case_mask(c, "GTV"), earlier | c.cluster.mask_array(level))
    sel.modify_segment_by_mask(c.logic, c.seg, c.ids["GTV"], c.cluster.oriented_mask())
    assert np.array_equal(case_mask(c, "GTV"), c.lesion)
    with pytest.raises(InputError, match="no segment"):
        sel.modify_segment_by_mask(c.logic, c.seg, "nope", c.cluster.oriented_mask())


# ------------------------------------------------------------------------------------ documentation


def test_the_module_documentation_covers_every_method_parameter_and_column():
    doc = (REPO_ROOT / "Docs" / "GradientSegment.md").read_text()
    for name in METHODS:
        assert f"`{name}`" in doc, f"Docs/GradientSegment.md does not describe method {name}"
        for spec in method_parameter_specs(name):
            assert f"`{spec.name}`" in doc, f"Docs/GradientSegment.md lacks parameter {spec.name} of {name}"
    for column in RESULT_COLUMNS + COMPARISON_COLUMNS:
        assert f"`{column}`" in doc, f"Docs/GradientSegment.md lacks column {column}"
    assert sel.EFFECT_NAME in doc


def test_the_qt_glue_calls_tier2_with_keywords_it_accepts():
    """The module file and the effect cannot run here: check their calls into tier 2 against the signatures."""
    import ast
    import inspect

    from PETDosePaintingLib.mrml import gtv_logic

    registry_parameters = {p for info in METHODS.values() for p in info.parameters}
    gradient_parameters = set(inspect.signature(segment_gradient).parameters)
    targets = {
        "segment_and_quantify": (gtv_logic.segment_and_quantify, registry_parameters),
        "compare_methods_on_node": (gtv_logic.compare_methods_on_node, set()),
        "seed_ras_from_markups": (gtv_logic.seed_ras_from_markups, set()),
        "gradient_cluster_in_editor": (sel.gradient_cluster_in_editor, gradient_parameters),
        "show_preview": (sel.show_preview, set()),
        "remove_preview": (sel.remove_preview, set()),
    }
    calls = 0
    for path in (REPO_ROOT / "GradientSegment" / "GradientSegment.py",
                 REPO_ROOT / "GradientSegment" / "SegmentEditorPETGradientLib" / "SegmentEditorEffect.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in targets:
                continue
            function, forwarded = targets[name]
            accepted = {p for p, v in inspect.signature(function).parameters.items() if v.kind != v.VAR_KEYWORD}
            unknown = {kw.arg for kw in node.keywords if kw.arg is not None} - accepted - forwarded
            assert not unknown, f"{path.name}:{node.lineno} calls {name} with unknown keywords {sorted(unknown)}"
            calls += 1
    assert calls >= 6
