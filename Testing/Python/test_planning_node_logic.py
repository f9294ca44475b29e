"""Node-level inverse planning (HypoxiaMapping panel, issue 9), headless with slicer-core.

The planning tests need the optional engine (pyRadPlan, the ``[planning]`` extra; ``.ci/run`` installs it) and
are skipped without it; the missing-extra behaviour is tested everywhere by hiding pyRadPlan. The phantom is
small (40 x 40 x 20 voxels of 4 mm, 5 beams of 8 mm bixels, a 5 mm dose grid) so a plan takes seconds.
Expected numbers come from definitions applied to the nodes' voxels (QF = mean |planned / prescribed - 1| over
the map, a maximum-dose limit holds on the dose read on the CT grid), not from the planner's own report.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.dosepainting import planning_objectives
from PETDosePaintingLib.dosepainting.planning import COMPARISON_COLUMNS, PlanningSettings, ptv_from_gtv
from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, image_from_array, physical_grid
from PETDosePaintingLib.mrml.gtv_logic import OperationCancelled
from PETDosePaintingLib.mrml.planning_logic import DVH_DOSE_COLUMN, plan_prescription_node, planning_status
from PETDosePaintingLib.mrml.segmentations import mask_from_segment, new_segmentation_node, set_segment_from_mask
from PETDosePaintingLib.mrml.tables import table_to_columns
from PETDosePaintingLib.mrml.volumes import image_from_volume_node, volume_node_from_image

pytestmark = pytest.mark.filterwarnings("ignore:String shape expressions:DeprecationWarning")  # numpydantic/pyRadPlan

CORD_LIMIT_GY = 30.0
OARS = ["SpinalCord", "Parotid_L"]


def _settings() -> PlanningSettings:
    return PlanningSettings(n_beams=5, bixel_width_mm=8.0, dose_grid_mm=5.0, max_iterations=200,
                            cord_max_gy=CORD_LIMIT_GY, parotid_mean_gy=20.0)


def _scene_phantom(scene, *, prescription_grid_shift_mm: float = 0.0):
    """CT (water ellipse in air), a 20 mm GTV with a 70-86 Gy map, cord behind it, a parotid beside, External."""
    ref = image_from_array(np.zeros((20, 40, 40), np.float32), spacing=(4.0, 4.0, 4.0), origin=(-78.0, -78.0, -38.0))
    x, y, z = physical_grid(ref)
    body = x**2 / 70.0**2 + y**2 / 55.0**2 <= 1.0
    gtv = x**2 + y**2 + z**2 <= 20.0**2
    cord = ((x**2 + (y - 38.0) ** 2) <= 7.0**2) & body
    parotid = ((x - 42.0) ** 2 + (y + 8.0) ** 2 + z**2) <= 14.0**2
    ct_node = volume_node_from_image(image_from_array(np.where(body, 0.0, -1000.0).astype(np.float32), ref,
                                                      units=Units.HU), "CT", scene)
    rx_ref = ref
    if prescription_grid_shift_mm:
        rx_ref = image_from_array(np.zeros((20, 40, 40), np.float32), spacing=(4.0, 4.0, 4.0),
                                  origin=(-78.0 + prescription_grid_shift_mm, -78.0, -38.0))
    rx_x, rx_y, rx_z = physical_grid(rx_ref)
    rx_gtv = rx_x**2 + rx_y**2 + rx_z**2 <= 20.0**2
    uptake = np.exp(-((rx_x - 6.0) ** 2 + (rx_y + 5.0) ** 2 + rx_z**2) / (2 * 64.0))
    presc = np.clip(70.0 + 16.0 * uptake / uptake[rx_gtv].max(), 70.0, 86.0) * rx_gtv
    rx_node = volume_node_from_image(image_from_array(presc.astype(np.float32), rx_ref, units=Units.GY),
                                     "FDG DPBN", scene)
    segmentation = new_segmentation_node("Structures", scene, reference=ct_node)
    for name, mask in (("GTV", gtv), ("SpinalCord", cord), ("Parotid_L", parotid), ("External", body)):
        set_segment_from_mask(segmentation, image_from_array(mask, ref), name)
    return ct_node, rx_node, segmentation, {"gtv": gtv, "cord": cord, "body": body, "presc": presc}


def _count(scene, cls: str) -> int:
    return scene.GetNumberOfNodesByClass(cls)


# ------------------------------------------------------------------------------------------ without the extra


def test_without_the_extra_the_panel_logic_says_how_to_install_it(core_scene, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyRadPlan", None)
    monkeypatch.setattr(planning_objectives, "_CACHE", {})
    available, message = planning_status()
    assert not available
    assert 'pip install -e ".[planning]"' in message
    ct_node, rx_node, segmentation, _ = _scene_phantom(core_scene)
    before = core_scene.GetNumberOfNodes()
    with pytest.raises(planning_objectives.PlanningExtraMissing, match="pyRadPlan"):
        plan_prescription_node(rx_node, ct_node, segmentation, "GTV", OARS)
    assert core_scene.GetNumberOfNodes() == before


# ------------------------------------------------------------------------------------------ with pyRadPlan


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("pyRadPlan", reason="the planning extra (pyRadPlan) is not installed")
    available, message = planning_status()
    assert available, message


def test_plan_node_writes_doses_comparison_dvh_and_qvh(core_scene, engine):
    ct_node, rx_node, segmentation, truth = _scene_phantom(core_scene)
    steps = []
    out = plan_prescription_node(rx_node, ct_node, segmentation, "GTV", OARS, body_segment="External",
                                 target_margin_mm=5.0, uniform_dose_gy=70.0, settings=_settings(),
                                 progress=lambda done, total, label: steps.append((done, total, label)))
    assert steps[0][0] == 0 and steps[-1][0] == steps[-1][1] == 1000
    assert any("iteration" in label for _, _, label in steps)

    # The doses: volumes on the CT grid, in Gy, tagged as dose for SlicerRT, equal to the library's result.
    ct = image_from_volume_node(ct_node)
    doses = {}
    for label in ("painted", "uniform"):
        node = out.dose_nodes[label]
        assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"
        assert node.GetAttribute("PETDosePainting.Units") == Units.GY
        image = image_from_volume_node(node)
        assert image.GetSize() == ct.GetSize()
        assert np.allclose(image.GetOrigin(), ct.GetOrigin()) and np.allclose(image.GetSpacing(), ct.GetSpacing())
        doses[label] = sitk.GetArrayFromImage(image).astype(np.float64)
        expected = getattr(out.result, label).dose
        assert np.allclose(doses[label], sitk.GetArrayFromImage(expected), atol=1e-4)

    # QF from its definition on the nodes' voxels; the painted plan follows the map at least 3x better.
    presc = truth["presc"]
    support = presc > 0
    qf = {label: float(np.mean(np.abs(doses[label][support] / presc[support] - 1.0))) for label in doses}
    assert qf["painted"] < qf["uniform"] / 3.0

    # The comparison table: the contract columns; its QF row is that QF.
    table = table_to_columns(out.table_node)
    assert tuple(table) == COMPARISON_COLUMNS
    rows = [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]
    qf_row = next(r for r in rows if r["quantity"] == "QF")
    assert qf_row["painted"] == pytest.approx(qf["painted"], rel=1e-4)
    assert qf_row["uniform"] == pytest.approx(qf["uniform"], rel=1e-4)
    cord_row = next(r for r in rows if r["quantity"] == "max dose" and r["structure"] == "SpinalCord")
    assert cord_row["limit_gy"] == CORD_LIMIT_GY
    for label in doses:  # the cord limit holds on the dose read on the CT grid
        assert doses[label][truth["cord"]].max() <= CORD_LIMIT_GY + 1e-3
        assert cord_row[label] == pytest.approx(doses[label][truth["cord"]].max(), abs=1e-3)

    # The planned target is GTV + 5 mm (the segment exported onto the CT grid, then grown).
    gtv = mask_from_segment(segmentation, "GTV", ct_node)
    ptv = sitk.GetArrayFromImage(ptv_from_gtv(gtv, 5.0)) > 0
    assert np.array_equal(sitk.GetArrayFromImage(out.result.structures["PTV"]) > 0, ptv | support)

    # DVH table and chart: a dose axis and one column per structure and plan; every curve starts at 1.
    dvh = table_to_columns(out.dvh_table_node)
    structures = list(out.result.painted.evaluation.dvhs)
    assert set(dvh) == {DVH_DOSE_COLUMN} | {f"{s} {p}" for s in structures for p in ("painted", "uniform")}
    assert {"SpinalCord", "Parotid_L", "PTV"} <= set(structures)
    assert dvh[DVH_DOSE_COLUMN][:3] == pytest.approx([0.0, 0.1, 0.2])
    cord_curve = np.asarray(dvh["SpinalCord painted"])
    assert cord_curve[0] == 1.0 and np.all(np.diff(cord_curve) <= 0)
    axis = np.asarray(dvh[DVH_DOSE_COLUMN])
    cord_doses = doses["painted"][truth["cord"]]
    for dose in (5.0, 15.0, 25.0):  # V(D) = fraction of cord voxels at or above D
        assert cord_curve[np.argmin(np.abs(axis - dose))] == pytest.approx(np.mean(cord_doses >= dose), abs=0.02)
    assert out.dvh_chart_node.GetNumberOfPlotSeriesNodes() == 2 * len(structures)
    # QVH chart: one series per plan.
    assert out.qvh_chart_node.GetNumberOfPlotSeriesNodes() == 2
    assert {out.qvh_chart_node.GetNthPlotSeriesNode(i).GetName() for i in range(2)} == {
        f"QVH {out.dose_nodes['painted'].GetName()}", f"QVH {out.dose_nodes['uniform'].GetName()}"}

    # A re-run into the same nodes refills them: no new volumes, tables or DVH series.
    counts = {cls: _count(core_scene, cls) for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLTableNode",
                                                         "vtkMRMLPlotSeriesNode", "vtkMRMLPlotChartNode")}
    again = plan_prescription_node(rx_node, ct_node, segmentation, "GTV", OARS, body_segment="External",
                                   target_margin_mm=5.0, uniform_dose_gy=70.0, settings=_settings(),
                                   dose_nodes=out.dose_nodes, table_node=out.table_node,
                                   dvh_table_node=out.dvh_table_node, dvh_chart_node=out.dvh_chart_node,
                                   qvh_chart_node=out.qvh_chart_node)
    assert again.dose_nodes == out.dose_nodes and again.table_node is out.table_node
    assert {cls: _count(core_scene, cls) for cls in counts} == counts
    # Reproducible: the same inputs and settings give the same dose.
    assert np.allclose(sitk.GetArrayFromImage(image_from_volume_node(again.painted_dose_node)), doses["painted"],
                       atol=1e-4)


def test_cancel_during_optimisation_adds_nothing_and_other_grids_are_resampled(core_scene, engine):
    ct_node, rx_node, segmentation, _ = _scene_phantom(core_scene, prescription_grid_shift_mm=2.0)
    before = core_scene.GetNumberOfNodes()
    labels = []

    def progress(done, total, label):
        labels.append(label)
        return "iteration" not in label  # cancel at the first optimiser iteration

    with pytest.raises(OperationCancelled):
        plan_prescription_node(rx_node, ct_node, segmentation, "GTV", OARS, target_margin_mm=5.0,
                               settings=_settings(), progress=progress)
    assert core_scene.GetNumberOfNodes() == before
    assert any("dose influence" in label.lower() or "beam" in label.lower() for label in labels)


def test_bad_segments_are_refused_by_name(core_scene, engine):
    ct_node, rx_node, segmentation, _ = _scene_phantom(core_scene)
    with pytest.raises(InputError, match="Brainstem"):
        plan_prescription_node(rx_node, ct_node, segmentation, "GTV", ["Brainstem"], settings=_settings())
    with pytest.raises(InputError, match="target and cannot also be an organ at risk"):
        plan_prescription_node(rx_node, ct_node, segmentation, "GTV", ["GTV"], settings=_settings())
    with pytest.raises(InputError, match="not a CT in HU"):
        plan_prescription_node(rx_node, rx_node, segmentation, "GTV", OARS, settings=_settings())


# ------------------------------------------------------------------------------------------ the panel


def test_panel_planning_defaults_are_the_library_defaults():
    """The HypoxiaMapping parameter node (module file, not importable without Slicer) and its .ui start from
    :class:`PlanningSettings`' defaults."""
    import ast
    import xml.etree.ElementTree as ET
    from pathlib import Path

    module = Path(__file__).resolve().parents[2] / "HypoxiaMapping"
    tree = ast.parse((module / "HypoxiaMapping.py").read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HypoxiaMappingParameterNode")
    defaults = {n.target.id: ast.literal_eval(n.value) for n in node_class.body
                if isinstance(n, ast.AnnAssign) and n.value is not None and n.target.id.startswith("planning")}
    s = PlanningSettings()
    expected = {"planningBeams": s.n_beams, "planningBixelMm": s.bixel_width_mm,
                "planningDoseGridMm": s.dose_grid_mm, "planningObjective": s.objective,
                "planningParotidMeanGy": s.parotid_mean_gy, "planningCordMaxGy": s.cord_max_gy,
                "planningIterations": s.max_iterations}
    assert {k: defaults[k] for k in expected} == expected
    ui = ET.parse(module / "Resources" / "UI" / "HypoxiaMapping.ui").getroot()
    for widget in ui.iter("widget"):
        name = widget.findtext("property[@name='SlicerParameterName']/string")
        if name in expected and widget.get("class") in ("QSpinBox", "QDoubleSpinBox"):
            value = widget.find("property[@name='value']/*").text
            assert float(value) == pytest.approx(float(expected[name])), name
