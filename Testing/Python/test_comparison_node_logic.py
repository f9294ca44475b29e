"""Node-level logic of the PETDosePainting panel and its console API, headless (slicer-core).

GTVs are axis-aligned boxes whose faces lie on voxel faces of every grid used (1 mm grids with voxel faces on
integers, 2 mm grids with faces on even integers), so every volume, intersection, Dice and sensitivity is exact
arithmetic on box lengths (mm^3 / 1000 = mL). Transforms are translations and rotations of known size;
registrations recover a known shift of a synthetic image; doses are constants.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from PETDosePaintingLib.comparison.metrics import centroid_lps  # noqa: E402
from PETDosePaintingLib.comparison.registration import transform_points  # noqa: E402
from PETDosePaintingLib.comparison.reports import PAIR_COLUMNS, TABLE2_COLUMNS  # noqa: E402
from PETDosePaintingLib.errors import InputError  # noqa: E402
from PETDosePaintingLib.imaging.image import image_from_array, make_grid, physical_grid  # noqa: E402
from PETDosePaintingLib.mrml.comparison_logic import (  # noqa: E402
    ACCUMULATION_COLUMNS,
    compare_segment_nodes,
    masks_from_segments,
    segment_labels,
    segment_world_mask,
)
from PETDosePaintingLib.mrml.gtv_logic import OperationCancelled  # noqa: E402
from PETDosePaintingLib.mrml.longitudinal_logic import (  # noqa: E402
    CHANGE_COLUMNS,
    COURSE_COLUMNS,
    longitudinal_change_node,
    volume_course_node,
)
from PETDosePaintingLib.mrml.plots import chart_series, table_series  # noqa: E402
from PETDosePaintingLib.mrml.registration_logic import accumulate_dose_nodes  # noqa: E402
from PETDosePaintingLib.mrml.registration_workflow import (  # noqa: E402
    place_under_transform,
    register_nodes_stepwise,
)
from PETDosePaintingLib.mrml.segmentations import (  # noqa: E402
    mask_from_segment,
    new_segmentation_node,
    set_segment_from_mask,
)
from PETDosePaintingLib.mrml.tables import table_to_columns  # noqa: E402
from PETDosePaintingLib.mrml.transforms import sitk_transform_from_node, transform_node_from_sitk  # noqa: E402
from PETDosePaintingLib.mrml.volumes import volume_node_from_image  # noqa: E402

#: A 1 mm grid over LPS [-10, 50) x [-10, 30) x [-10, 30) mm (voxel faces on integers) and a 2 mm one over the
#: same box (faces on even integers).
FINE = make_grid((60, 40, 40), (1.0, 1.0, 1.0), origin=(-9.5, -9.5, -9.5))
COARSE = make_grid((30, 20, 20), (2.0, 2.0, 2.0), origin=(-9.0, -9.0, -9.0))


def _box(grid, x, y=(0.0, 10.0), z=(0.0, 10.0)):
    """The voxels of ``grid`` whose centres lie in the box [x0, x1) x [y0, y1) x [z0, z1) (LPS mm)."""
    px, py, pz = physical_grid(grid)
    inside = (px >= x[0]) & (px < x[1]) & (py >= y[0]) & (py < y[1]) & (pz >= z[0]) & (pz < z[1])
    return image_from_array(inside, grid)


def _segmentation(scene, name, grid, segments):
    node = new_segmentation_node(name, scene, reference=grid)
    for segment, mask in segments.items():
        set_segment_from_mask(node, mask, segment)
    return node


def _voxels(mask):
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def _ras_translation(scene, lps_shift, name="T"):
    """A linear transform node whose ToParent moves points by ``lps_shift`` (LPS mm)."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(lps_shift, float) * (-1.0, -1.0, 1.0)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


@pytest.fixture
def modalities(core_scene):
    """GTV_CT (1 mm, x in [0, 20)), GTV_MRI (2 mm, [10, 30)), GTV_PET (2 mm, [0, 10)), pathology (1 mm,
    [0, 30)); y and z in [0, 10) mm everywhere. Each in its own segmentation node, every segment called GTV
    except the pathology."""
    ct = _segmentation(core_scene, "CT", FINE, {"GTV": _box(FINE, (0, 20)), "Body": _box(FINE, (-5, 45))})
    mr = _segmentation(core_scene, "MR", COARSE, {"GTV": _box(COARSE, (10, 30))})
    pet = _segmentation(core_scene, "PET", COARSE, {"GTV": _box(COARSE, (0, 10))})
    path = _segmentation(core_scene, "Pathology", FINE, {"pathology": _box(FINE, (0, 30))})
    return core_scene, ct, mr, pet, path


# ------------------------------------------------------------------------------------------ masks from segments


def test_world_masks_keep_their_own_grid_and_voxels(modalities):
    _scene, ct, mr, _pet, _path = modalities
    ct_mask = segment_world_mask(ct, "GTV")
    mr_mask = segment_world_mask(mr, "GTV")
    assert ct_mask.GetSpacing() == (1.0, 1.0, 1.0) and mr_mask.GetSpacing() == (2.0, 2.0, 2.0)
    assert _voxels(ct_mask) == 20 * 10 * 10 and _voxels(mr_mask) == 10 * 5 * 5
    assert np.array_equal(sitk.GetArrayFromImage(ct_mask), sitk.GetArrayFromImage(_box(FINE, (0, 20))))
    assert centroid_lps(mr_mask) == pytest.approx((20.0, 5.0, 5.0))


def test_a_rigid_parent_transform_is_folded_into_the_geometry_without_resampling(core_scene):
    """A box drawn in 'MR space' under a 30 degree rotation plus a shift: same voxel count, centroid moved by the
    transform (computed here in RAS from the matrix)."""
    mr = _segmentation(core_scene, "MR", COARSE, {"GTV": _box(COARSE, (10, 30))})
    angle = np.radians(30.0)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = (5.0, -3.0, 2.0)
    transform = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    mr.SetAndObserveTransformNodeID(transform.GetID())
    notes = []
    mask = segment_world_mask(mr, "GTV", notes=notes)
    assert _voxels(mask) == 10 * 5 * 5 and not notes
    local_ras = np.array([-20.0, -5.0, 5.0, 1.0])  # the box centre, LPS (20, 5, 5)
    world_ras = matrix @ local_ras
    assert centroid_lps(mask) == pytest.approx((-world_ras[0], -world_ras[1], world_ras[2]), abs=1e-6)


def test_a_non_rigid_parent_transform_resamples_and_says_so(core_scene):
    mr = _segmentation(core_scene, "MR", FINE, {"GTV": _box(FINE, (10, 30))})
    scaling = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Stretch")
    scaling.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.diag([1.5, 1.0, 1.0, 1.0])))
    mr.SetAndObserveTransformNodeID(scaling.GetID())
    notes = []
    mask = segment_world_mask(mr, "GTV", notes=notes)
    # R is stretched by 1.5: the 20 mm long box becomes 30 mm long (LPS x from -45 to -15 after the flip).
    assert _voxels(mask) == 30 * 10 * 10
    assert centroid_lps(mask)[0] == pytest.approx(30.0)
    assert len(notes) == 1 and "Stretch" in notes[0] and "nearest neighbour" in notes[0]


def test_segments_are_named_and_checked(modalities):
    _scene, ct, mr, pet, path = modalities
    assert segment_labels([(ct, "GTV"), (mr, "GTV"), (path, "pathology")]) == ["CT/GTV", "MR/GTV", "pathology"]
    assert segment_labels([(ct, "GTV"), (pet, "GTV")], ["GTV_CT", "GTV_PET"]) == ["GTV_CT", "GTV_PET"]
    twin = _segmentation(ct.GetScene(), "CT", COARSE, {"GTV": _box(COARSE, (0, 10))})  # a second node called CT
    assert segment_labels([(ct, "GTV"), (twin, "GTV"), (pet, "GTV")]) == ["CT/GTV", "CT/GTV (2)", "PET/GTV"]
    with pytest.raises(InputError, match="same name"):
        segment_labels([(ct, "GTV"), (pet, "GTV")], ["a", "a"])
    with pytest.raises(InputError, match="no segment named 'GTVx'"):
        masks_from_segments([(ct, "GTVx")])
    with pytest.raises(InputError, match="segmentation node"):
        segment_labels([(None, "GTV")])
    empty = new_segmentation_node("Drawn later", ct.GetScene())
    empty.GetSegmentation().AddEmptySegment("", "GTV")
    with pytest.raises(InputError, match="'Drawn later' has no reference geometry"):
        segment_world_mask(empty, "GTV")


# ------------------------------------------------------------------------------------------ comparison


def test_comparison_tables_hold_the_box_arithmetic(modalities):
    scene, ct, mr, pet, path = modalities
    before = scene.GetNumberOfNodes()
    out = compare_segment_nodes([(ct, "GTV"), (mr, "GTV"), (pet, "GTV")], (path, "pathology"),
                                names=["GTV_CT", "GTV_MRI", "GTV_PET"])
    assert scene.GetNumberOfNodes() == before + 3 + 1 + 4  # three tables, a chart, four series: nothing leaked
    assert out.names == ["GTV_CT", "GTV_MRI", "GTV_PET"] and out.reference == "pathology"
    volumes = table_to_columns(out.volume_table_node)
    assert list(volumes) == list(TABLE2_COLUMNS)
    # CT 20x10x10 mm, MRI 20x10x10, PET 10x10x10, pathology 30x10x10; no voxel in all three; union = pathology.
    assert volumes["structure"][:4] == ["GTV_CT", "GTV_MRI", "GTV_PET", "pathology"]
    assert volumes["volume_ml"] == pytest.approx([2.0, 2.0, 1.0, 3.0, 0.0, 3.0])
    assert volumes["dice"][:3] == pytest.approx([0.8, 0.8, 0.5])
    assert volumes["sensitivity"][:3] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert volumes["uncovered_reference_ml"][:3] == pytest.approx([1.0, 1.0, 2.0])
    assert out.volume_table_node.GetColumnUnitLabel("volume_ml") == "mL"

    matrix = table_to_columns(out.matrix_table_node)
    assert list(matrix) == ["mask", "GTV_CT", "GTV_MRI", "GTV_PET", "pathology"]
    dice = np.array([matrix[name] for name in matrix if name != "mask"]).T
    expected = np.array([[1.0, 0.5, 2 / 3, 0.8], [0.5, 1.0, 0.0, 0.8], [2 / 3, 0.0, 1.0, 0.5], [0.8, 0.8, 0.5, 1.0]])
    assert dice == pytest.approx(expected)
    pairs = table_to_columns(out.pair_table_node)
    assert list(pairs) == list(PAIR_COLUMNS)
    assert pairs["a"] == ["GTV_CT", "GTV_MRI", "GTV_PET"] and set(pairs["b"]) == {"pathology"}
    assert pairs["ppv"] == pytest.approx([1.0, 1.0, 1.0])
    # The chart: one bar series per mask column of the matrix table, labelled by the row masks.
    series = chart_series(out.chart_node)
    assert [s.GetName() for s in series] == [f"dice vs {n}" for n in ("GTV_CT", "GTV_MRI", "GTV_PET", "pathology")]
    assert all(s.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar for s in series)
    assert [s.GetYColumnName() for s in series] == ["GTV_CT", "GTV_MRI", "GTV_PET", "pathology"]
    assert {s.GetLabelColumnName() for s in series} == {"mask"}
    assert {s.GetTableNodeID() for s in series} == {out.matrix_table_node.GetID()}
    assert scene.GetNodeByID(out.chart_node.GetID()) is out.chart_node


def test_comparison_reruns_into_the_same_nodes_and_drops_stale_series(modalities):
    scene, ct, mr, pet, path = modalities
    first = compare_segment_nodes([(ct, "GTV"), (mr, "GTV"), (pet, "GTV")], (path, "pathology"))
    assert first.names == ["CT/GTV", "MR/GTV", "PET/GTV"]
    tables = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    again = compare_segment_nodes([(ct, "GTV"), (pet, "GTV")], metric="hd_mm", volume_node=first.volume_table_node,
                                  matrix_node=first.matrix_table_node, pair_node=first.pair_table_node,
                                  chart=first.chart_node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables
    assert [s.GetName() for s in chart_series(again.chart_node)] == ["hd_mm vs CT/GTV", "hd_mm vs PET/GTV"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2
    # CT x in [0, 20), PET x in [0, 10): the CT face at x = 20 is 10 mm from the PET surface.
    assert table_to_columns(again.matrix_table_node)["PET/GTV"][0] == pytest.approx(10.0, abs=1.0)
    assert again.matrix_table_node.GetColumnUnitLabel("PET/GTV") == "mm"
    assert table_to_columns(again.pair_table_node)["dice"] == pytest.approx([2 / 3])


def test_a_segmentation_under_its_registration_compares_in_world_coordinates(modalities):
    """The MR GTV drawn 10 mm further along LPS x in 'MR space', placed under a transform that moves it back."""
    scene, ct, _mr, _pet, _path = modalities
    mr_space = _segmentation(scene, "MR space", COARSE, {"GTV": _box(COARSE, (20, 40))})
    mr_space.SetAndObserveTransformNodeID(_ras_translation(scene, (-10.0, 0.0, 0.0)).GetID())
    out = compare_segment_nodes([(ct, "GTV"), (mr_space, "GTV")], names=["GTV_CT", "GTV_MRI"])
    assert out.matrix.matrix("dice")[0, 1] == pytest.approx(0.5)
    assert out.notes == []


def test_comparison_on_a_given_grid_and_refusals(modalities):
    scene, ct, mr, _pet, _path = modalities
    grid_node = volume_node_from_image(sitk.Cast(COARSE, sitk.sitkFloat32), "MR volume", scene)
    out = compare_segment_nodes([(ct, "GTV"), (mr, "GTV")], grid=grid_node)
    assert table_to_columns(out.pair_table_node)["reference_grid"] == ["custom"]
    assert out.matrix.matrix("dice")[0, 1] == pytest.approx(0.5)
    with pytest.raises(InputError, match="at least two"):
        compare_segment_nodes([(ct, "GTV")])
    with pytest.raises(InputError, match="unknown matrix metric"):
        compare_segment_nodes([(ct, "GTV"), (mr, "GTV")], metric="volume")
    with pytest.raises(InputError, match="unknown grid"):
        compare_segment_nodes([(ct, "GTV"), (mr, "GTV")], grid="coarsest")


def test_cancelling_a_comparison_writes_nothing(modalities):
    scene, ct, mr, pet, _path = modalities
    before = scene.GetNumberOfNodes()
    labels = []

    def progress(done, total, label):
        labels.append((done, total, label))
        return not label.startswith("overlap")

    with pytest.raises(OperationCancelled):
        compare_segment_nodes([(ct, "GTV"), (mr, "GTV"), (pet, "GTV")], progress=progress)
    assert [label for *_, label in labels] == ["reading CT/GTV", "reading MR/GTV", "reading PET/GTV",
                                              "overlap and surface distances"]
    assert {total for _, total, _ in labels} == {5}
    assert scene.GetNumberOfNodes() == before


# ------------------------------------------------------------------------------------------ plots


def test_table_series_reuses_series_by_name_and_checks_columns(core_scene):
    from PETDosePaintingLib.mrml.plots import chart_node
    from PETDosePaintingLib.mrml.tables import table_from_columns

    table = table_from_columns({"t": [0.0, 1.0], "v": [3.0, 2.0]}, "T", scene=core_scene)
    chart = chart_node(name="C", scene=core_scene, title="title", x_title="x", y_title="y")
    first = table_series(chart, table, name="v(t)", x_column="t", y_column="v")
    again = table_series(chart, table, name="v(t)", x_column="t", y_column="v", kind="scatter")
    assert first is again and chart.GetNumberOfPlotSeriesNodes() == 1
    assert again.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleNone
    assert chart.GetTitle() == "title" and chart.GetXAxisTitle() == "x" and chart.GetYAxisTitle() == "y"
    with pytest.raises(InputError, match="no column 'w'"):
        table_series(chart, table, name="w", y_column="w")
    with pytest.raises(InputError, match="unknown series kind"):
        table_series(chart, table, name="v", y_column="v", kind="pie")


# ------------------------------------------------------------------------------------------ longitudinal


def test_volume_course_table_and_line_series(core_scene):
    timepoints = [_segmentation(core_scene, name, COARSE, {"GTV": _box(COARSE, (0, length))})
                  for name, length in (("baseline", 40), ("fx7", 30), ("fx17", 10))]
    out = volume_course_node([(node, "GTV") for node in timepoints], names=["baseline", "fx7", "fx17"],
                             times=[0, 7, 17], time_label="fraction")
    columns = table_to_columns(out.table_node)
    assert list(columns) == list(COURSE_COLUMNS)
    assert columns["volume_ml"] == pytest.approx([4.0, 3.0, 1.0])
    assert columns["time"] == [0.0, 7.0, 17.0]
    assert columns["change_ml"][1:] == pytest.approx([-1.0, -2.0]) and np.isnan(columns["change_ml"][0])
    assert columns["change_from_first_pct"][2] == pytest.approx(-75.0)
    assert columns["segmentation"] == ["baseline", "fx7", "fx17"]
    assert out.table_node.GetColumnUnitLabel("volume_ml") == "mL"
    series = out.series_node
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("time", "volume_ml")
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    assert series.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert out.chart_node.GetXAxisTitle() == "fraction"
    with pytest.raises(InputError, match="3 timepoint"):
        volume_course_node([(node, "GTV") for node in timepoints], times=[0, 7])


def test_changes_are_written_as_segments_with_others_intact(core_scene):
    previous = _segmentation(core_scene, "baseline", COARSE, {"GTV": _box(COARSE, (0, 20))})
    current = _segmentation(core_scene, "fx7", COARSE, {"GTV": _box(COARSE, (10, 30))})
    output = _segmentation(core_scene, "Review", COARSE, {"Other": _box(COARSE, (-8, -2))})
    out = longitudinal_change_node((current, "GTV"), (previous, "GTV"), tolerance_mm=0.0, min_island_ml=0.0,
                                   current_name="fx7", previous_names=["baseline"], segmentation_node=output)
    assert out.segment_names == {"persistent": "fx7_persistent", "newborn": "fx7_newborn",
                                 "resolved": "fx7_resolved"}
    # Strict set operations with t = 0: persistent [10, 20), newborn [20, 30), resolved [0, 10) along x.
    for kind, x in (("persistent", (10, 20)), ("newborn", (20, 30)), ("resolved", (0, 10))):
        mask = mask_from_segment(output, f"fx7_{kind}", COARSE)
        assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(_box(COARSE, x))), kind
    assert _voxels(mask_from_segment(output, "Other", COARSE)) == 3 * 5 * 5
    row = table_to_columns(out.table_node)
    assert list(row) == list(CHANGE_COLUMNS)
    assert row["current"] == ["fx7"] and row["previous"] == ["baseline"] and row["transform"] == ["identity"]
    assert [row[k][0] for k in ("current_ml", "previous_ml", "persistent_ml", "newborn_ml", "resolved_ml")] == \
        pytest.approx([2.0, 2.0, 1.0, 1.0, 1.0])
    assert row["dice_current_vs_previous"] == pytest.approx([0.5])
    assert out.table_node.GetColumnUnitLabel("newborn_ml") == "mL"
    # Run again with a margin into the same table: the row of (fx7, baseline) is replaced, not added.
    again = longitudinal_change_node((current, "GTV"), (previous, "GTV"), tolerance_mm=10.0, min_island_ml=0.0,
                                     current_name="fx7", previous_names=["baseline"], segmentation_node=output,
                                     table_node=out.table_node)
    rows = table_to_columns(again.table_node)
    assert rows["current"] == ["fx7"] and rows["newborn_ml"] == pytest.approx([0.0])


def test_changes_land_in_world_coordinates_in_a_transformed_output_segmentation(core_scene):
    previous = _segmentation(core_scene, "baseline", COARSE, {"GTV": _box(COARSE, (0, 20))})
    current = _segmentation(core_scene, "fx7", COARSE, {"GTV": _box(COARSE, (10, 30))})
    output = _segmentation(core_scene, "Review", COARSE, {"Other": _box(COARSE, (-8, -2))})
    output.SetAndObserveTransformNodeID(_ras_translation(core_scene, (4.0, 0.0, 0.0)).GetID())
    out = longitudinal_change_node((current, "GTV"), (previous, "GTV"), tolerance_mm=0.0, min_island_ml=0.0,
                                   segmentation_node=output)
    newborn = segment_world_mask(output, out.segment_names["newborn"])
    assert _voxels(newborn) == 5 * 5 * 5 and centroid_lps(newborn) == pytest.approx((25.0, 5.0, 5.0))
    bent = transform_node_from_sitk(sitk.DisplacementFieldTransform(
        sitk.Image([4, 4, 4], sitk.sitkVectorFloat64, 3)), "Bent", core_scene)
    output.SetAndObserveTransformNodeID(bent.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        longitudinal_change_node((current, "GTV"), (previous, "GTV"), segmentation_node=output)


def test_changes_through_a_registration_transform_node(core_scene):
    """The current GTV is the previous one moved 10 mm along LPS x, and the transform says so: nothing is new."""
    previous = _segmentation(core_scene, "baseline", COARSE, {"GTV": _box(COARSE, (0, 20))})
    current = _segmentation(core_scene, "fx7", COARSE, {"GTV": _box(COARSE, (10, 30))})
    moved = transform_node_from_sitk(sitk.TranslationTransform(3, (10.0, 0.0, 0.0)), "T_0->7", core_scene)
    out = longitudinal_change_node((current, "GTV"), (previous, "GTV"), moved, tolerance_mm=0.0,
                                   min_island_ml=0.0)
    # Both segments are called GTV: they are told apart by their segmentation's name.
    assert out.segmentation_node.GetName() == "fx7/GTV changes"
    assert out.segment_names["newborn"] == "fx7/GTV_newborn"
    assert out.segmentation_node.GetSegmentation().GetNumberOfSegments() == 3
    assert (out.change.persistent_ml, out.change.newborn_ml, out.change.resolved_ml) == pytest.approx((2.0, 0, 0))
    assert table_to_columns(out.table_node)["transform"] == ["T_0->7"]
    current.SetAndObserveTransformNodeID(moved.GetID())
    with pytest.raises(InputError, match="already under transform 'T_0->7'"):
        longitudinal_change_node((current, "GTV"), (previous, "GTV"), moved)
    with pytest.raises(InputError, match="one per segment"):
        longitudinal_change_node((previous, "GTV"), [(previous, "GTV"), (previous, "GTV")], moved)


# ------------------------------------------------------------------------------------------ registration


def _blobs(shift=(0.0, 0.0, 0.0)):
    """Three Gaussian blobs of different sizes at asymmetric places, moved by ``shift`` (LPS mm), exactly."""
    grid = make_grid((36, 32, 28), (2.0, 2.0, 2.0), origin=(-35.0, -31.0, -27.0))
    x, y, z = (c - s for c, s in zip(physical_grid(grid), shift, strict=True))
    values = np.zeros(x.shape)
    for (cx, cy, cz), sigma, height in (((-10, 5, 0), 6.0, 100.0), ((12, -8, 6), 4.0, 60.0), ((0, 12, -9), 3.0, 80.0)):
        values += height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return image_from_array(values.astype(np.float32), grid)


RIGID = {"initialization": "none", "shrink_factors": (2, 1), "smoothing_sigmas_mm": (1.0, 0.0),
         "sampling_fraction": 0.5, "metric": "mean_squares"}


def test_rigid_registration_recovers_a_known_shift_and_applies_it(core_scene):
    fixed = volume_node_from_image(_blobs(), "CT0", core_scene)
    moving = volume_node_from_image(_blobs((3.0, -2.0, 1.5)), "CT7", core_scene)
    steps = []
    out = register_nodes_stepwise(fixed, moving, "rigid", apply_to=[moving], rigid_options=RIGID,
                                  progress=lambda d, t, label: steps.append((d, t, label)))
    assert steps[0] == (0, 1, "rigid registration") and len(steps) > 1  # then one report per iteration
    assert all(d == 0 and t == 1 and label.startswith("rigid registration: level") for d, t, label in steps[1:])
    assert out.transform_node.GetName() == "CT7_to_CT0_rigid" and out.jacobian is None
    points = np.random.default_rng(1).uniform(-15, 15, (8, 3))
    recovered = transform_points(sitk_transform_from_node(out.transform_node), points)
    assert np.abs(recovered - points - np.array([3.0, -2.0, 1.5])).max() < 0.3
    assert moving.GetParentTransformNode() is out.transform_node and out.applied_to == ["CT7"]
    assert out.transform_node.GetAttribute("PETDosePainting.TransformConvention").startswith("FromParent")
    # Into an output node of the grid class (it refuses a matrix set directly): the rigid result is copied in.
    grid_node = core_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Output")
    moving.SetAndObserveTransformNodeID(None)
    again = register_nodes_stepwise(fixed, moving, "rigid", output_node=grid_node, rigid_options=RIGID)
    assert again.transform_node is grid_node and grid_node.IsLinear()
    assert np.abs(transform_points(sitk_transform_from_node(grid_node), points) - recovered).max() < 1e-6


def test_two_stage_registration_keeps_one_node_and_cancel_leaves_the_scene_unchanged(core_scene):
    fixed = volume_node_from_image(_blobs(), "CT0", core_scene)
    moving = volume_node_from_image(_blobs((2.0, 0.0, 0.0)), "CT7", core_scene)
    bspline = {"grid_spacing_mm": 40.0, "iterations": 3, "shrink_factors": (2, 1), "smoothing_sigmas_mm": (1.0, 0.0),
               "multigrid": False}
    # An output node holding a grid transform receives the composite (copied in at the end).
    output = transform_node_from_sitk(sitk.TranslationTransform(3, (0.0, 0.0, 0.0)), "T", core_scene)
    moving.SetAndObserveTransformNodeID(output.GetID())
    labels = []
    out = register_nodes_stepwise(fixed, moving, "rigid+bspline", output_node=output, rigid_options=RIGID,
                                  bspline_options=bspline, progress=lambda d, t, label: labels.append(label))
    stage_labels = [label for label in labels if "iteration" not in label]
    assert stage_labels == ["rigid registration", "bspline registration"]
    assert any(label.startswith("rigid registration: level 1, iteration 1") for label in labels)
    assert any(label.startswith("bspline registration: level") for label in labels)
    assert out.transform_node is output and not output.IsLinear() and len(out.stages) == 2
    assert out.jacobian is not None and out.jacobian.verdict in ("pass", "review")
    assert core_scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 1
    assert moving.GetParentTransformNode() is output  # taken out during the registration, put back
    shift = transform_points(sitk_transform_from_node(output, _blobs()), [(0.0, 0.0, 0.0)])[0]
    assert shift == pytest.approx((2.0, 0.0, 0.0), abs=0.5)
    # Cancel before the B-spline stage: no new node, the moving volume back under the output node.
    with pytest.raises(OperationCancelled):
        register_nodes_stepwise(fixed, moving, "rigid+bspline", output_node=output, rigid_options=RIGID,
                                bspline_options=bspline, progress=lambda d, t, label: d == 0)
    assert core_scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 1
    assert moving.GetParentTransformNode() is output and not output.IsLinear()
    # Cancel in the middle of the rigid stage (its third iteration): stopped there, the scene as before.
    seen = []

    def stop_at_third_iteration(done, total, label):
        seen.append(label)
        return "iteration 3 " not in label

    with pytest.raises(OperationCancelled):
        register_nodes_stepwise(fixed, moving, "rigid+bspline", output_node=output, rigid_options=RIGID,
                                bspline_options=bspline, progress=stop_at_third_iteration)
    assert "iteration 3 " in seen[-1] and not any(label.startswith("bspline") for label in seen)
    assert core_scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == 1
    assert moving.GetParentTransformNode() is output and not output.IsLinear()


def test_registration_and_placement_refusals(core_scene):
    fixed = volume_node_from_image(_blobs(), "CT0", core_scene)
    moving = volume_node_from_image(_blobs(), "CT7", core_scene)
    other = _ras_translation(core_scene, (1.0, 0.0, 0.0), "Other")
    with pytest.raises(InputError, match="unknown registration mode"):
        register_nodes_stepwise(fixed, moving, "affine")
    with pytest.raises(InputError, match="both the fixed and the moving"):
        register_nodes_stepwise(fixed, fixed)
    moving.SetAndObserveTransformNodeID(other.GetID())
    with pytest.raises(InputError, match="already under transform 'Other'"):
        register_nodes_stepwise(fixed, moving, apply_to=[moving])
    with pytest.raises(InputError, match="already under transform 'Other'"):
        place_under_transform([moving], _ras_translation(core_scene, (0.0, 1.0, 0.0), "New"))
    with pytest.raises(InputError, match="cycle"):
        place_under_transform([other], other)
    segmentation = _segmentation(core_scene, "MR", COARSE, {"GTV": _box(COARSE, (0, 10))})
    assert place_under_transform([segmentation], other) == ["MR"]
    assert segmentation.GetParentTransformNode() is other


# ------------------------------------------------------------------------------------------ accumulation


def test_accumulation_table_rows(core_scene):
    from PETDosePaintingLib.mrml.comparison_logic import accumulation_table_node

    baseline = make_grid((20, 20, 10), (2.0, 2.0, 3.0), origin=(-19.0, -19.0, -13.5))
    phase = make_grid((30, 30, 16), (2.0, 2.0, 3.0), origin=(-29.0, -29.0, -22.5))
    reference = volume_node_from_image(image_from_array(np.zeros((10, 20, 20), np.float32), baseline), "CT0",
                                       core_scene)
    dose0 = volume_node_from_image(image_from_array(np.full((10, 20, 20), 20.0, np.float32), baseline, units="Gy"),
                                   "Dose0", core_scene)
    dose7 = volume_node_from_image(image_from_array(np.full((16, 30, 30), 10.0, np.float32), phase, units="Gy"),
                                   "Dose7", core_scene)
    dose7.SetAndObserveTransformNodeID(_ras_translation(core_scene, (4.0, 0.0, 0.0)).GetID())
    total, result = accumulate_dose_nodes(reference, [dose0, dose7], fractions=[7, 10])
    table = accumulation_table_node(result, scene=core_scene)
    columns = table_to_columns(table)
    assert list(columns) == list(ACCUMULATION_COLUMNS)
    assert columns["phase"] == ["Dose0", "Dose7"] and columns["fractions"] == [7.0, 10.0]
    assert columns["max_gy"] == pytest.approx([20.0, 10.0]) and columns["mean_gy"] == pytest.approx([20.0, 10.0])
    assert columns["coverage_fraction"] == pytest.approx([1.0, 1.0])
    assert columns["linear_jacobian"] == pytest.approx([1.0, 1.0])
    assert columns["quantity"] == ["physical", "physical"] and np.isnan(columns["jacobian_min"][0])
    assert table.GetColumnUnitLabel("max_gy") == "Gy"
    assert float(slicer.util.arrayFromVolume(total).mean()) == pytest.approx(30.0)


def test_fraction_counts_are_parsed_one_per_phase():
    from PETDosePaintingLib.mrml.comparison_logic import parse_fraction_counts

    assert parse_fraction_counts("10, 15;8", 3) == [10, 15, 8]
    assert parse_fraction_counts("  ", 2) is None
    with pytest.raises(InputError, match="2 fraction count"):
        parse_fraction_counts("10 15", 3)
    with pytest.raises(InputError, match="whole number"):
        parse_fraction_counts("10 1.5", 2)
    with pytest.raises(InputError, match="not a number"):
        parse_fraction_counts("ten", 1)


def test_docs_describe_every_column():
    from conftest import REPO_ROOT

    from PETDosePaintingLib.comparison.reports import MATRIX_METRICS

    doc = (REPO_ROOT / "Docs" / "PETDosePainting.md").read_text()
    for column in (*TABLE2_COLUMNS, *PAIR_COLUMNS, *COURSE_COLUMNS, *CHANGE_COLUMNS, *ACCUMULATION_COLUMNS,
                   *MATRIX_METRICS):
        assert f"`{column}`" in doc, f"Docs/PETDosePainting.md lacks column {column}"
