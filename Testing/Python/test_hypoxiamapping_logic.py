"""Node-level logic of the HypoxiaMapping panel and its console API, headless (slicer-core).

A synthetic FMISO PET with known regions: muscle and background at 1.0 SUV, a spherical tumour (GTV) at 1.1 SUV
and a hypoxic core inside it rising from 1.3 to 2.5 SUV towards its centre, all on voxel centres. Expected
values come from first principles (voxel counts of the spheres, the mapping formulas written out with numpy)
or, where the brief asks that nodes carry "what the library computes", from the library called directly on
the same images, never from the node-level code under test.
"""

from __future__ import annotations

import ast
import itertools
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO_ROOT

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from PETDosePaintingLib.dosepainting import hypoxia as hypoxia_lib  # noqa: E402
from PETDosePaintingLib.dosepainting import levels as levels_lib  # noqa: E402
from PETDosePaintingLib.dosepainting import plan_evaluation as evaluation_lib  # noqa: E402
from PETDosePaintingLib.dosepainting import prescription as prescription_lib  # noqa: E402
from PETDosePaintingLib.errors import GeometryError, InputError, OutputError  # noqa: E402
from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series  # noqa: E402
from PETDosePaintingLib.imaging.dicom_series import read_dicom_series  # noqa: E402
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid  # noqa: E402
from PETDosePaintingLib.imaging.rtdose import read_rtdose  # noqa: E402
from PETDosePaintingLib.imaging.rtstruct import load_rtstruct, read_rtstruct  # noqa: E402
from PETDosePaintingLib.mrml.gtv_logic import OperationCancelled  # noqa: E402
from PETDosePaintingLib.mrml.hypoxia_logic import (  # noqa: E402
    EVALUATION_COLUMNS,
    HYPOXIA_COLUMNS,
    MODES,
    PRESCRIPTION_COLUMNS,
    QVH_COLUMNS,
    evaluate_plan_node,
    export_dicom_rt,
    hypoxic_volume_node,
    level_segment_names,
    planning_ct_series,
    prescribe_node,
    ratio_map_node,
)
from PETDosePaintingLib.mrml.segmentations import (  # noqa: E402
    mask_from_segment,
    new_segmentation_node,
    segment_names,
    set_segment_from_mask,
)
from PETDosePaintingLib.mrml.tables import table_to_columns  # noqa: E402
from PETDosePaintingLib.mrml.volumes import image_from_volume_node, volume_node_from_image  # noqa: E402

SPACING = 3.0
VOXEL_ML = SPACING**3 / 1000.0
TUMOUR_CENTRE = (0.0, 0.0, 0.0)  # LPS mm, a voxel centre
TUMOUR_RADIUS = 18.0
CORE_CENTRE = (3.0, -3.0, 0.0)
CORE_RADIUS = 9.0


def _grid(shape_ijk=(25, 23, 19), spacing=SPACING):
    size = np.asarray(shape_ijk)
    origin = -(size - 1) / 2.0 * spacing  # centred on LPS (0, 0, 0), a voxel centre for odd sizes
    return make_grid(tuple(int(s) for s in size), (spacing,) * 3, origin=tuple(float(o) for o in origin))


def _distance(grid, centre):
    k, j, i = np.indices(sitk.GetArrayViewFromImage(grid).shape)
    origin, spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    x, y, z = (origin[0] + i * spacing[0], origin[1] + j * spacing[1], origin[2] + k * spacing[2])
    return np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)


class Phantom:
    """The FMISO phantom as numpy arrays and a PET node with a segmentation GTV / Muscle in a scene."""

    def __init__(self, scene, grid=None):
        self.grid = grid if grid is not None else _grid()
        r_tumour = _distance(self.grid, TUMOUR_CENTRE)
        r_core = _distance(self.grid, CORE_CENTRE)
        self.tumour = r_tumour <= TUMOUR_RADIUS + 1e-6
        self.core = (r_core <= CORE_RADIUS + 1e-6) & self.tumour
        values = np.ones(self.tumour.shape)
        values[self.tumour] = 1.1
        values[self.core] = 1.3 + 1.2 * (1.0 - r_core[self.core] / CORE_RADIUS)
        self.values = values
        self.muscle = np.zeros(self.tumour.shape, bool)
        self.muscle[2:6, 2:6, 2:8] = True  # a corner box, far from the tumour
        assert not (self.muscle & self.tumour).any()
        self.pet = image_from_array(values.astype(np.float32), self.grid, units=Units.SUV_BW)
        self.scene = scene
        self.pet_node = volume_node_from_image(self.pet, "FMISO", scene)
        self.seg = new_segmentation_node("Structures", scene, reference=self.pet_node)
        set_segment_from_mask(self.seg, image_from_array(self.tumour, self.pet), "GTV")
        set_segment_from_mask(self.seg, image_from_array(self.muscle, self.pet), "Muscle")

    def mask(self, array) -> sitk.Image:
        return image_from_array(array, self.pet)


def _array(mask) -> np.ndarray:
    return sitk.GetArrayFromImage(mask) > 0


def _segment(seg, name, reference) -> np.ndarray:
    return _array(mask_from_segment(seg, name, reference))


def _nodes_by_class(scene) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(i).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def _colour_tables(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())
                  if scene.GetNthNode(i).IsA("vtkMRMLColorNode") and scene.GetNthNode(i).GetName())


# ------------------------------------------------------------------------------------ ratio and hypoxia


def test_ratio_map_divides_by_the_muscle_mean_and_records_the_reference(core_scene):
    ph = Phantom(core_scene)
    node, result = ratio_map_node(ph.pet_node, ph.seg, "Muscle", "muscle", target=(ph.seg, "GTV"))
    assert result.reference_mean == pytest.approx(1.0)
    assert result.reference_volume_ml == pytest.approx(ph.muscle.sum() * VOXEL_ML)
    assert slicer.util.arrayFromVolume(node) == pytest.approx(ph.values, abs=1e-6)
    assert node.GetName() == "FMISO_TMR"
    assert node.GetAttribute("PETDosePainting.Units") == "ratio"
    assert node.GetAttribute("PETDosePainting.ReferenceKind") == "muscle"
    assert float(node.GetAttribute("PETDosePainting.ReferenceMean")) == pytest.approx(1.0)
    # A blood-sample value instead of a segment: T/B = PET / value.
    blood, result = ratio_map_node(ph.pet_node, None, "", "blood", blood_value=2.0)
    assert blood.GetName() == "FMISO_TBR" and result.reference_source == "blood sample"
    assert slicer.util.arrayFromVolume(blood) == pytest.approx(ph.values / 2.0, abs=1e-6)


def test_an_input_is_never_overwritten(core_scene):
    ph = Phantom(core_scene)
    before = slicer.util.arrayFromVolume(ph.pet_node).copy()
    with pytest.raises(InputError, match="also the PET"):
        ratio_map_node(ph.pet_node, ph.seg, "Muscle", "muscle", ph.pet_node)
    with pytest.raises(InputError, match="also the image to paint"):
        prescribe_node(ph.pet_node, ph.seg, "GTV", prescription_node=ph.pet_node)
    assert np.array_equal(slicer.util.arrayFromVolume(ph.pet_node), before)


def test_a_reference_overlapping_the_target_is_refused(core_scene):
    ph = Phantom(core_scene)
    overlap = ph.muscle.copy()
    overlap[ph.core] = True
    set_segment_from_mask(ph.seg, ph.mask(overlap), "BadMuscle")
    with pytest.raises(InputError, match="overlaps"):
        ratio_map_node(ph.pet_node, ph.seg, "BadMuscle", "muscle", target=(ph.seg, "GTV"))


def test_hypoxic_segment_is_the_core_and_matches_the_library(core_scene):
    ph = Phantom(core_scene)
    ratio_node, _ = ratio_map_node(ph.pet_node, ph.seg, "Muscle")
    out = hypoxic_volume_node(ratio_node, ph.seg, "GTV", tracer="fmiso", boost_segment_name="HV_FMISO_boost")
    # FMISO against muscle: T/M > 1.2 (Lee 2016). The core (>= 1.3) is hypoxic, the rest of the GTV (1.1) is not.
    assert out.segmentation_node is ph.seg and out.segment_name == "HV_FMISO"
    assert segment_names(ph.seg) == ["GTV", "Muscle", "HV_FMISO", "HV_FMISO_boost"]
    hv = _segment(ph.seg, "HV_FMISO", ph.pet_node)
    assert np.array_equal(hv, ph.core)
    assert np.array_equal(_segment(ph.seg, "GTV", ph.pet_node), ph.tumour)  # other segments intact
    assert np.array_equal(_segment(ph.seg, "Muscle", ph.pet_node), ph.muscle)
    # The library on the same images gives the same mask and numbers.
    ratio = image_from_volume_node(ratio_node)
    library = hypoxia_lib.hypoxia_metrics(ratio, ph.mask(ph.tumour), tracer="fmiso", reference_kind="muscle")
    assert np.array_equal(hv, _array(library.hypoxic_mask))
    boost = hypoxia_lib.hypoxic_boost_volume(library.hypoxic_mask, envelope=ph.mask(ph.tumour))
    assert np.array_equal(_segment(ph.seg, "HV_FMISO_boost", ph.pet_node), _array(boost))
    m = out.metrics
    assert m.threshold == 1.2 and m.comparison == ">"
    assert m.hv_ml == pytest.approx(ph.core.sum() * VOXEL_ML)
    assert m.hf == pytest.approx(ph.core.sum() / ph.tumour.sum())
    assert m.tmr_max == pytest.approx(2.5, abs=1e-6)  # the core centre is a voxel centre
    columns = table_to_columns(out.table_node)
    assert tuple(columns) == HYPOXIA_COLUMNS
    assert columns["segment"] == ["HV_FMISO"] and columns["tracer"] == ["fmiso"]
    assert columns["HV_ml"][0] == pytest.approx(ph.core.sum() * VOXEL_ML)
    assert columns["HF"][0] == pytest.approx(ph.core.sum() / ph.tumour.sum())
    assert columns["target_volume_ml"][0] == pytest.approx(ph.tumour.sum() * VOXEL_ML)
    assert columns["TMRmax"][0] == pytest.approx(2.5, abs=1e-6)
    assert columns["TMRmean"][0] == pytest.approx(ph.values[ph.tumour].mean(), rel=1e-5)
    assert columns["reference_mean"][0] == pytest.approx(1.0)
    assert columns["boost_volume_ml"][0] == pytest.approx(mask_volume(boost))
    assert out.table_node.GetColumnUnitLabel("HV_ml") == "mL"
    # Again with an explicit threshold: the same row is replaced, not added.
    again = hypoxic_volume_node(ratio_node, ph.seg, "GTV", threshold=2.0, table_node=out.table_node)
    assert np.array_equal(_segment(ph.seg, "HV_FMISO", ph.pet_node), ph.core & (ph.values >= 2.0))
    assert table_to_columns(again.table_node)["threshold"] == [2.0]


def mask_volume(mask) -> float:
    return float(_array(mask).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


# ------------------------------------------------------------------------------------ prescriptions


def _expected_dpbn(values, target, dose_low=70.0, dose_high=86.0):
    """The linear clipped mapping written out: I_high = P95 in the target, I_low = 0.25 I_high."""
    i_high = np.percentile(values[target], 95.0)
    i_low = 0.25 * i_high
    t = np.clip((values - i_low) / (i_high - i_low), 0.0, 1.0)
    return np.where(target, dose_low + t * (dose_high - dose_low), 0.0)


def test_dpbn_prescription_is_a_dose_volume_with_the_library_values(core_scene):
    ph = Phantom(core_scene)
    out = prescribe_node(ph.pet_node, ph.seg, "GTV", mode="dpbn", margin_mm=0.0)
    node = out.prescription_node
    assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"
    assert node.GetAttribute("PETDosePainting.Units") == "Gy"
    assert node.GetAttribute("PETDosePainting.PrescriptionMode") == "dpbn"
    values = slicer.util.arrayFromVolume(node)
    assert values == pytest.approx(_expected_dpbn(ph.values, ph.tumour), abs=1e-4)
    library = prescription_lib.dose_painting_by_numbers(ph.pet, ph.mask(ph.tumour), margin_mm=0.0)
    assert np.array_equal(values, sitk.GetArrayFromImage(library.dose))
    assert out.level_segments == ["PTV_PET"] and out.level_segmentation.GetName() == "FMISO_Rx_dpbn_levels"
    assert np.array_equal(_segment(out.level_segmentation, "PTV_PET", node), ph.tumour)
    # The default 2.5 mm margin is below the 3 mm voxels: the library notes it has no effect.
    default = prescribe_node(ph.pet_node, ph.seg, "GTV", prescription_node=node,
                             level_segmentation=out.level_segmentation, table_node=out.table_node)
    assert default.prescription_node is node and any("margin" in n for n in default.notes)
    columns = table_to_columns(out.table_node)
    assert tuple(columns) == PRESCRIPTION_COLUMNS and columns["prescription"] == ["FMISO_Rx_dpbn"]
    assert columns["margin_mm"] == [2.5]
    assert columns["I_high"][0] == pytest.approx(np.percentile(ph.values[ph.tumour], 95.0), rel=1e-6)
    assert columns["target_volume_ml"][0] == pytest.approx(ph.tumour.sum() * VOXEL_ML)


def test_levels_are_nested_named_tg263_and_written_by_name(core_scene):
    ph = Phantom(core_scene)
    rx = new_segmentation_node("RT structures", core_scene, reference=ph.pet_node)
    set_segment_from_mask(rx, ph.mask(ph.muscle), "Parotid_L")
    out = prescribe_node(ph.pet_node, ph.seg, "GTV", mode="levels", margin_mm=0.0, min_island_ml=0.0,
                         level_segmentation=rx, keep_continuous=True)
    names = ["PTV_DP_7000", "PTV_DP_7400", "PTV_DP_7800", "PTV_DP_8200", "PTV_DP_8600"]
    assert out.level_segments == names
    assert segment_names(rx) == ["Parotid_L", *names]
    assert level_segment_names(rx) == names
    assert np.array_equal(_segment(rx, "Parotid_L", ph.pet_node), ph.muscle)
    rois = [_segment(rx, n, out.prescription_node) for n in names]
    for lower, upper in itertools.pairwise(rois):
        assert np.all(upper <= lower)  # nested
    assert np.array_equal(rois[0], ph.tumour)
    # Nearest-level assignment from first principles: ROI_k = {D >= midpoint between levels k-1 and k}.
    continuous = _expected_dpbn(ph.values, ph.tumour)
    for k, level in enumerate([74.0, 78.0, 82.0, 86.0], start=1):
        assert np.array_equal(rois[k], ph.tumour & (continuous >= level - 2.0 - 1e-4)), names[k]
    library = levels_lib.quantise_levels(
        prescription_lib.dose_painting_by_numbers(ph.pet, ph.mask(ph.tumour), margin_mm=0.0).dose,
        ph.mask(ph.tumour), dose_low=70.0, dose_high=86.0, min_island_ml=0.0)
    for name, roi in zip(names, rois, strict=True):
        assert np.array_equal(roi, _array(library.rois[name]))
    level_map = slicer.util.arrayFromVolume(out.prescription_node)
    assert np.array_equal(level_map, sitk.GetArrayFromImage(library.level_map))
    assert set(np.unique(level_map[ph.tumour])) <= {70.0, 74.0, 78.0, 82.0, 86.0}
    assert out.continuous_node is not None
    assert slicer.util.arrayFromVolume(out.continuous_node) == pytest.approx(continuous, abs=1e-4)
    assert out.continuous_node.GetAttribute("DicomRtImport.DoseVolume") == "1"


def test_boost_on_the_hypoxic_segment(core_scene):
    ph = Phantom(core_scene)
    ratio_node, _ = ratio_map_node(ph.pet_node, ph.seg, "Muscle")
    hypoxic_volume_node(ratio_node, ph.seg, "GTV")
    out = prescribe_node(ph.pet_node, ph.seg, "GTV", mode="boost", dose_min=70.0, dose_max=77.0,
                         boost_volume=(ph.seg, "HV_FMISO"))
    dose = slicer.util.arrayFromVolume(out.prescription_node)
    assert np.all(dose[ph.core] == 77.0)
    assert np.all(dose[ph.tumour & ~ph.core] == 70.0)
    assert np.all(dose[~ph.tumour] == 0.0)
    assert out.level_segments == ["PTV_DP_7000", "PTV_DP_7700"]
    assert np.array_equal(_segment(out.level_segmentation, "PTV_DP_7700", out.prescription_node), ph.core)
    assert np.array_equal(_segment(out.level_segmentation, "PTV_DP_7000", out.prescription_node), ph.tumour)
    assert out.result.boost_source == "given"
    with pytest.raises(InputError, match="boost volume is for the boost mode"):
        prescribe_node(ph.pet_node, ph.seg, "GTV", mode="dpbn", boost_volume=(ph.seg, "HV_FMISO"))
    with pytest.raises(InputError, match="mode must be one of"):
        prescribe_node(ph.pet_node, ph.seg, "GTV", mode="numbers")
    assert MODES == ("dpbn", "boost", "levels")


def test_prescription_on_a_planning_ct_grid_resamples_the_pet(core_scene):
    ph = Phantom(core_scene)
    ct_grid = _grid((30, 28, 22), spacing=2.0)
    ct = volume_node_from_image(image_from_array(np.zeros(sitk.GetArrayViewFromImage(ct_grid).shape, np.int16),
                                                 ct_grid, units=Units.HU), "CT", core_scene)
    out = prescribe_node(ph.pet_node, ph.seg, "GTV", grid_node=ct, margin_mm=0.0)
    image = image_from_volume_node(out.prescription_node)
    assert image.GetSize() == ct_grid.GetSize() and image.GetSpacing() == ct_grid.GetSpacing()
    target = mask_from_segment(ph.seg, "GTV", ct_grid)
    library = prescription_lib.dose_painting_by_numbers(ph.pet, target, grid=ct_grid, margin_mm=0.0,
                                                        assume_same_frame=True)
    assert np.array_equal(slicer.util.arrayFromVolume(out.prescription_node), sitk.GetArrayFromImage(library.dose))
    assert out.result.pet_resampled and any("world frame" in n for n in out.notes)


def test_prescription_sits_in_the_pet_study_with_slicerrt_dose_units(core_scene):
    ph = Phantom(core_scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core_scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "PET/CT")
    sh.SetItemParent(sh.GetItemByDataNode(ph.pet_node) or sh.CreateItem(study, ph.pet_node), study)
    out = prescribe_node(ph.pet_node, ph.seg, "GTV")
    item = sh.GetItemByDataNode(out.prescription_node)
    assert sh.GetItemParent(item) == study
    assert sh.GetItemAttribute(study, "DicomRtImport.DoseUnitName") == "Gy"


def test_cancelling_a_prescription_leaves_the_scene_unchanged(core_scene):
    ph = Phantom(core_scene)
    before = _nodes_by_class(core_scene)
    steps = []

    def progress(done, total, label):
        steps.append(label)
        return done < 2

    with pytest.raises(OperationCancelled):
        prescribe_node(ph.pet_node, ph.seg, "GTV", mode="levels", progress=progress)
    assert steps == ["reading the inputs", "computing the prescription", "quantising the levels"]
    assert _nodes_by_class(core_scene) == before
    assert segment_names(ph.seg) == ["GTV", "Muscle"]


# ------------------------------------------------------------------------------------ plan evaluation


def _dose_node(scene, values, grid, name):
    return volume_node_from_image(image_from_array(values.astype(np.float32), grid, units=Units.GY), name, scene)


def test_a_plan_equal_to_the_prescription_gives_qf_zero_and_a_step_qvh(core_scene):
    ph = Phantom(core_scene)
    rx = prescribe_node(ph.pet_node, ph.seg, "GTV", margin_mm=0.0)
    prescribed = slicer.util.arrayFromVolume(rx.prescription_node)
    plan = _dose_node(core_scene, prescribed, ph.grid, "Plan A")
    out = evaluate_plan_node(rx.prescription_node, plan)
    assert out.qf == 0.0 and out.q95 == 1.0 and out.q105 == 0.0
    n = int(ph.tumour.sum())
    columns = table_to_columns(out.qvh_table_node)
    assert tuple(columns) == QVH_COLUMNS == ("q", "volume_fraction", "volume_ml")
    q = np.asarray(columns["q"])
    fraction = np.asarray(columns["volume_fraction"])
    assert q[0] == 0.0 and q[1] == pytest.approx(0.005) and q[-1] >= 1.5
    assert np.all(fraction[q < 1.0 - 1e-9] == 1.0) and np.all(fraction[q > 1.0 + 1e-9] == 0.0)
    assert np.asarray(columns["volume_ml"]) == pytest.approx(fraction * n * VOXEL_ML)
    series, chart = out.plot_series_node, out.plot_chart_node
    assert series.IsA("vtkMRMLPlotSeriesNode") and chart.IsA("vtkMRMLPlotChartNode")
    assert series.GetTableNode() is out.qvh_table_node
    assert series.GetXColumnName() == "q" and series.GetYColumnName() == "volume_fraction"
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    assert chart.GetNumberOfPlotSeriesNodes() == 1 and chart.GetNthPlotSeriesNode(0) is series
    row = table_to_columns(out.table_node)
    assert tuple(row) == EVALUATION_COLUMNS
    assert row["QF"] == [0.0] and row["Q95"] == [1.0] and row["Q105"] == [0.0] and row["n_voxels"] == [n]
    assert row["TCP_planned"] == pytest.approx(row["TCP_prescribed"])
    assert row["EUD_planned_Gy"] == pytest.approx(row["EUD_prescribed_Gy"])


def test_scaled_and_resampled_plans(core_scene):
    ph = Phantom(core_scene)
    rx = prescribe_node(ph.pet_node, ph.seg, "GTV", margin_mm=0.0)
    prescribed = slicer.util.arrayFromVolume(rx.prescription_node).astype(np.float64)
    hot = _dose_node(core_scene, 1.1 * prescribed, ph.grid, "Plan hot")
    first = evaluate_plan_node(rx.prescription_node, hot, (ph.seg, "GTV"), create_qf_map=True)
    assert first.qf == pytest.approx(0.1, rel=1e-6) and first.q95 == 1.0 and first.q105 == 1.0
    assert first.qf_map_node is not None
    assert slicer.util.arrayFromVolume(first.qf_map_node)[ph.tumour] == pytest.approx(0.1, rel=1e-5)
    # A uniform 75 Gy plan on a finer grid covering the target: resampled linearly (exactly 75 Gy), Q = 75 / D.
    fine = _grid((40, 36, 30), spacing=2.0)
    uniform = _dose_node(core_scene, np.full(sitk.GetArrayViewFromImage(fine).shape, 75.0), fine, "Plan 75")
    second = evaluate_plan_node(rx.prescription_node, uniform, (ph.seg, "GTV"), table_node=first.table_node,
                                plot_chart_node=first.plot_chart_node)
    q = 75.0 / prescribed[ph.tumour]
    assert second.qf == pytest.approx(np.mean(np.abs(q - 1.0)), rel=1e-5)
    assert second.q95 == pytest.approx(np.mean(q >= 0.95)) and second.q105 == pytest.approx(np.mean(q >= 1.05))
    assert any("linear interpolation" in n for n in second.notes)
    rows = table_to_columns(second.table_node)
    assert rows["plan"] == ["Plan hot", "Plan 75"] and rows["resampled"] == ["no", "linear"]
    assert second.plot_chart_node.GetNumberOfPlotSeriesNodes() == 2
    # Evaluating the same plan again replaces its row and its series.
    evaluate_plan_node(rx.prescription_node, uniform, (ph.seg, "GTV"), table_node=first.table_node,
                       plot_chart_node=first.plot_chart_node, qvh_table_node=second.qvh_table_node)
    assert table_to_columns(first.table_node)["plan"] == ["Plan hot", "Plan 75"]
    assert first.plot_chart_node.GetNumberOfPlotSeriesNodes() == 2
    # A dose that does not cover the target is refused.
    small = _grid((4, 4, 4), spacing=2.0)
    with pytest.raises(InputError, match="outside the planned dose grid"):
        evaluate_plan_node(rx.prescription_node, _dose_node(core_scene, np.full((4, 4, 4), 70.0), small, "Tiny"))


# ------------------------------------------------------------------------------------ DICOM-RT export


@pytest.fixture
def planning_ct(tmp_path, core_scene):
    """A CT series (2 mm in-plane, 3 mm slices) around the phantom, read back, and its volume node."""
    grid = _grid((30, 28, 20), spacing=1.0)
    grid.SetSpacing((2.0, 2.0, 3.0))
    grid.SetOrigin((-29.0, -27.0, -28.5))
    values = np.zeros(sitk.GetArrayViewFromImage(grid).shape, np.int16)
    write_ct_series(image_from_array(values, grid, units=Units.HU), tmp_path / "ct",
                    DicomIdentity.synthetic("hm", patient_name="Hypoxia^Test"))
    series = read_dicom_series(tmp_path / "ct")
    node = volume_node_from_image(series.image, "Planning CT", core_scene)
    return series, node


def test_export_writes_rtdose_and_rtstruct_the_readers_read_back(core_scene, planning_ct, tmp_path):
    series, ct_node = planning_ct
    ph = Phantom(core_scene)
    out = prescribe_node(ph.pet_node, ph.seg, "GTV", mode="levels", grid_node=ct_node, margin_mm=0.0,
                         min_island_ml=0.0)
    steps = []
    export = export_dicom_rt(out.prescription_node, out.level_segmentation, series.directory, tmp_path / "rt",
                             progress=lambda done, total, label: steps.append(label))
    assert len(steps) == 4
    assert export.frame_of_reference_uid == series.identity.frame_of_reference_uid
    assert "exactly on the planning CT grid" in export.frame_basis
    dose = read_rtdose(export.rtdose_path)
    expected = sitk.GetArrayFromImage(image_from_volume_node(out.prescription_node))
    assert sitk.GetArrayFromImage(dose) == pytest.approx(expected, abs=1e-6)
    assert export.rtplan_path.is_file()
    assert load_rtstruct(export.rtstruct_path).names == tuple(out.level_segments)
    masks = read_rtstruct(export.rtstruct_path, series)
    for name in out.level_segments:
        assert np.array_equal(_array(masks[name]), _segment(out.level_segmentation, name, series.image)), name
    # Exporting again into the same folder replaces the files; another non-empty folder is refused.
    export_dicom_rt(out.prescription_node, out.level_segmentation, series.directory, tmp_path / "rt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="not empty"):
        export_dicom_rt(out.prescription_node, None, series.directory, tmp_path / "other")


def test_export_from_a_ct_node_loaded_from_dicom_and_the_frame_checks(core_scene, planning_ct, tmp_path):
    series, ct_node = planning_ct
    ph = Phantom(core_scene)
    # Computed on the PET grid: nothing ties the scene to the CT's frame without the CT node or a declaration.
    out = prescribe_node(ph.pet_node, ph.seg, "GTV", mode="boost")
    with pytest.raises(GeometryError, match="world coordinates"):
        export_dicom_rt(out.prescription_node, out.level_segmentation, series.directory, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    # The CT node as Slicer's DICOM plugin leaves it: SOP Instance UIDs in DICOM.instanceUIDs, files in the database.
    ct_node.SetAttribute("DICOM.instanceUIDs", " ".join(series.sop_instance_uids))
    database = dict(zip(series.sop_instance_uids, (str(f) for f in series.files), strict=True))
    read = planning_ct_series(ct_node, file_for_instance=database.get)
    assert read.sop_instance_uids == series.sop_instance_uids and tuple(read.files) == tuple(series.files)
    export = export_dicom_rt(out.prescription_node, out.level_segmentation, ct_node, tmp_path / "b",
                             file_for_instance=database.get)
    assert "lies exactly where its DICOM series places it" in export.frame_basis
    dose = read_rtdose(export.rtdose_path)
    assert dose.GetSize() == ph.grid.GetSize()  # the dose keeps its own (PET) grid
    assert sitk.GetArrayFromImage(dose) == pytest.approx(slicer.util.arrayFromVolume(out.prescription_node), abs=1e-6)
    masks = read_rtstruct(export.rtstruct_path, series)
    assert set(masks) == {"PTV_DP_7000", "PTV_DP_8600"}
    assert np.array_equal(_array(masks["PTV_DP_8600"]), _segment(out.level_segmentation, "PTV_DP_8600", series.image))
    # A CT node moved away from where its series places it no longer establishes the frame.
    transform = core_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)
    transform.SetMatrixTransformToParent(shift)
    ct_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(GeometryError, match="does not lie where"):
        export_dicom_rt(out.prescription_node, None, ct_node, tmp_path / "c", file_for_instance=database.get)
    # Declaring the frame shared is the remaining way.
    export_dicom_rt(out.prescription_node, None, series.directory, tmp_path / "d", assume_same_frame=True)
    with pytest.raises(InputError, match="no DICOM database"):
        planning_ct_series(ct_node)
    with pytest.raises(InputError, match="choose the planning CT"):
        planning_ct_series(".")


# ------------------------------------------------------------------------------------ hygiene and docs


def test_panel_operations_leave_no_temporary_nodes_or_colour_tables(core_scene, planning_ct, tmp_path):
    series, _ = planning_ct
    ph = Phantom(core_scene)
    colour_tables = _colour_tables(core_scene)
    before = _nodes_by_class(core_scene)
    ratio_node, _ = ratio_map_node(ph.pet_node, ph.seg, "Muscle", target=(ph.seg, "GTV"))
    hypoxic_volume_node(ratio_node, ph.seg, "GTV", boost_segment_name="HV_boost")
    rx = prescribe_node(ph.pet_node, ph.seg, "GTV", mode="levels", boost_volume=None)
    evaluate_plan_node(rx.prescription_node, rx.prescription_node, (ph.seg, "GTV"))
    export_dicom_rt(rx.prescription_node, rx.level_segmentation, series.directory, tmp_path / "rt",
                    assume_same_frame=True)
    added = {k: v - before.get(k, 0) for k, v in _nodes_by_class(core_scene).items() if v != before.get(k, 0)}
    # Ratio and prescription volumes (with display nodes), the level segmentation, hypoxia/prescription/
    # evaluation/QVH tables, one chart and one series: nothing else.
    assert added == {"vtkMRMLScalarVolumeNode": 2, "vtkMRMLScalarVolumeDisplayNode": 2,
                     "vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1, "vtkMRMLTableNode": 4,
                     "vtkMRMLPlotChartNode": 1, "vtkMRMLPlotSeriesNode": 1}
    assert _colour_tables(core_scene) == colour_tables


def test_docs_describe_every_column_and_the_library_defaults():
    doc = (REPO_ROOT / "Docs" / "HypoxiaMapping.md").read_text()
    for column in HYPOXIA_COLUMNS + PRESCRIPTION_COLUMNS + EVALUATION_COLUMNS + QVH_COLUMNS:
        assert f"`{column}`" in doc, f"Docs/HypoxiaMapping.md lacks column {column}"
    for (tracer, kind), entry in hypoxia_lib.HYPOXIA_THRESHOLDS.items():
        assert re.search(rf"{tracer.upper()}.*{kind}.*{re.escape(f'{entry.threshold:g}')}", doc, re.I), (tracer, kind)
    for value in (prescription_lib.DEFAULT_DOSE_LOW, prescription_lib.DEFAULT_DOSE_HIGH,
                  prescription_lib.DEFAULT_MARGIN_MM, prescription_lib.DEFAULT_I_HIGH_PERCENTILE,
                  prescription_lib.DEFAULT_I_LOW_FRACTION, prescription_lib.DEFAULT_BOOST_FRACTION,
                  prescription_lib.DEFAULT_MIN_ISLAND_ML, levels_lib.DEFAULT_N_LEVELS, evaluation_lib.DEFAULT_Q_STEP):
        assert f"{value:g}" in doc, value
    for name in ("ratioMap", "hypoxicVolume", "prescribe", "exportDicomRT", "evaluatePlan"):
        assert f"{name}(" in doc


def test_panel_defaults_match_the_library():
    module = (REPO_ROOT / "HypoxiaMapping" / "HypoxiaMapping.py").read_text()
    panel = module.split("class HypoxiaMappingParameterNode")[1].split("\nclass ")[0]

    def default(name):
        found = re.search(rf"^    {name}: .*= (.+)$", panel, re.M)
        assert found, name
        return found.group(1).strip().strip('"')

    assert float(default("doseMin")) == prescription_lib.DEFAULT_DOSE_LOW
    assert float(default("doseMax")) == prescription_lib.DEFAULT_DOSE_HIGH
    assert float(default("dpbnMarginMm")) == prescription_lib.DEFAULT_MARGIN_MM
    assert float(default("boostMarginMm")) == 0.0
    assert float(default("iHighPercentile")) == prescription_lib.DEFAULT_I_HIGH_PERCENTILE
    assert float(default("iLowFraction")) == prescription_lib.DEFAULT_I_LOW_FRACTION
    assert float(default("boostFraction")) == prescription_lib.DEFAULT_BOOST_FRACTION
    assert float(default("minIslandMl")) == prescription_lib.DEFAULT_MIN_ISLAND_ML
    assert int(default("nLevels")) == levels_lib.DEFAULT_N_LEVELS
    assert default("mode") in MODES and default("mapping") == "linear"
    for name, choices in (("mode", MODES), ("mapping", prescription_lib.MAPPINGS),
                          ("levelMethod", levels_lib.LEVEL_METHODS), ("assignment", levels_lib.ASSIGNMENTS),
                          ("tracer", hypoxia_lib.TRACERS), ("referenceKind", hypoxia_lib.REFERENCE_KINDS)):
        found = re.search(rf"^    {name}: Annotated\[str, Choice\((\[.+?\])\)\]", panel, re.M)
        assert found, f"{name} must be a str with a Choice annotation (it is bound to a QComboBox)"
        assert tuple(ast.literal_eval(found.group(1))) == tuple(choices), name
    assert math.isclose(evaluation_lib.DEFAULT_Q_STEP, 0.005)
