"""Treatment planning of a dose-painting prescription (issue 9): ``dosepainting.planning`` and ``petdp plan``.

Tests that need the optional planning engine (pyRadPlan, the ``[planning]`` extra) are skipped without it
(``pytest.importorskip``); ``.ci/run`` installs the extra so they run in CI. The missing-extra behaviour is
tested in every environment by hiding pyRadPlan from the import system (``sys.modules["pyRadPlan"] = None``).

The phantom is small (40 x 40 x 20 voxels of 4 mm, a 5 mm dose grid, 5 beams of 8 mm bixels) so that a plan
takes seconds. Expectations come from the definitions (QF = mean |Q - 1|, a limit holds when the dose read
on the CT grid is at or below it, trilinear interpolation by SimpleITK), not from the planner's own numbers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.dosepainting import planning_objectives
from PETDosePaintingLib.dosepainting.planning import (
    COMPARISON_COLUMNS,
    OarConstraint,
    PlanningCancelled,
    PlanningSettings,
    _stencil,
    body_from_ct,
    default_constraints,
    plan_dose_painting,
    ptv_from_gtv,
)
from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import Units, image_from_array, physical_grid

pytestmark = pytest.mark.filterwarnings("ignore:String shape expressions:DeprecationWarning")  # numpydantic/pyRadPlan

REPO = Path(__file__).resolve().parents[2]
SPACING = 4.0
SHAPE = (20, 40, 40)  # k, j, i: 32 000 voxels
CORD_LIMIT_GY = 30.0  # binding on this phantom (about 38 Gy without the limit)


# --------------------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------------------

def _phantom() -> dict:
    """Water ellipse in air, a 40 mm spherical target with a 70-86 Gy map, cord behind it, a parotid beside."""
    ref = image_from_array(np.zeros(SHAPE, np.float32), spacing=(SPACING,) * 3,
                           origin=(-78.0, -78.0, -38.0))
    x, y, z = physical_grid(ref)
    body = x**2 / 70.0**2 + y**2 / 55.0**2 <= 1.0
    gtv = x**2 + y**2 + z**2 <= 20.0**2
    cord = ((x**2 + (y - 38.0) ** 2) <= 7.0**2) & body
    parotid = ((x - 42.0) ** 2 + (y + 8.0) ** 2 + z**2) <= 14.0**2
    suv = 3.0 + 9.0 * np.exp(-((x - 6.0) ** 2 + (y + 5.0) ** 2 + z**2) / (2 * 64.0))
    i_high = np.percentile(suv[gtv], 95)
    i_low = 0.25 * i_high
    presc = np.clip(70.0 + (suv - i_low) / (i_high - i_low) * 16.0, 70.0, 86.0) * gtv
    return {
        "ct": image_from_array(np.where(body, 0.0, -1000.0).astype(np.float32), ref, units=Units.HU),
        "rx": image_from_array(presc.astype(np.float32), ref, units=Units.GY),
        "ptv": image_from_array(gtv, ref),
        "oars": {"SpinalCord": image_from_array(cord, ref), "Parotid_L": image_from_array(parotid, ref),
                 "External": image_from_array(body, ref)},
        "arrays": {"presc": presc, "gtv": gtv, "cord": cord, "parotid": parotid, "body": body},
    }


def _settings(**kwargs) -> PlanningSettings:
    base = {"n_beams": 5, "bixel_width_mm": 8.0, "dose_grid_mm": 5.0, "max_iterations": 200,
            "cord_max_gy": CORD_LIMIT_GY, "parotid_mean_gy": 20.0}
    base.update(kwargs)
    return PlanningSettings(**base)


# --------------------------------------------------------------------------------------------------------
# Without the extra (every environment)
# --------------------------------------------------------------------------------------------------------

HIDE = "import sys; sys.modules['pyRadPlan'] = None\n"


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO / "PETDosePainting", check=False)


def test_petdp_plan_without_the_extra_says_how_to_install_it_in_one_line(tmp_path):
    code = HIDE + ("from PETDosePaintingLib.cli.main import main\n"
                   f"sys.exit(main(['plan', '--ct', 'ct.nrrd', '--prescription', 'rx.nrrd', '--target', 'ptv.nrrd', "
                   f"'--out', {str(tmp_path / 'out')!r}]))\n")
    proc = _run_python(code)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("petdp plan: error:")
    assert 'pip install -e ".[planning]"' in lines[0] and "pip install petdosepainting[planning]" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_help_and_the_rest_of_the_cli_work_without_the_extra():
    proc = _run_python(HIDE + "from PETDosePaintingLib.cli.main import main\n"
                              "try:\n    main(['plan', '--help'])\nexcept SystemExit as e:\n    sys.exit(e.code)\n")
    assert proc.returncode == 0, proc.stderr
    assert "--compare-uniform" in proc.stdout and "--rtdose" in proc.stdout


def test_library_raises_the_install_error_with_exit_code_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyRadPlan", None)
    monkeypatch.setattr(planning_objectives, "_CACHE", {})
    assert not planning_objectives.pyradplan_available()
    p = _phantom()
    with pytest.raises(planning_objectives.PlanningExtraMissing, match=r"pip install -e \"\.\[planning\]\"") as info:
        plan_dose_painting(p["ct"], p["rx"], p["ptv"], p["oars"], settings=_settings())
    assert info.value.exit_code == 2


def test_demo_says_plainly_that_planning_was_skipped(monkeypatch, tmp_path):
    from PETDosePaintingLib.pipeline.demo_planning import run_demo_planning

    monkeypatch.setitem(sys.modules, "pyRadPlan", None)
    monkeypatch.setattr(planning_objectives, "_CACHE", {})
    lines = []
    stage = run_demo_planning(None, None, None, None, out=tmp_path, log=lines.append)
    assert stage.files == {} and stage.summary["status"] == "skipped"
    assert len(lines) == 1 and "skipped" in lines[0] and 'pip install -e ".[planning]"' in lines[0]
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------------
# Helpers (no engine needed)
# --------------------------------------------------------------------------------------------------------

def test_stencil_weights_give_the_interpolated_mean_and_bound_the_maximum():
    """sum(w d) equals the mean of the dose interpolated (by SimpleITK, trilinear) onto the organ's CT voxels, and
    the organ's CT-grid maximum never exceeds the maximum over the stencil's dose-grid voxels."""
    rng = np.random.default_rng(3)
    ct = image_from_array(np.zeros((18, 30, 26), np.float32), spacing=(1.5, 1.5, 2.0), origin=(-20.0, -22.0, -17.0))
    x, y, z = physical_grid(ct)
    organ = (x - 2.0) ** 2 / 9.0**2 + (y + 1.0) ** 2 / 6.0**2 + (z - 1.0) ** 2 / 8.0**2 <= 1.0
    grid = image_from_array(rng.uniform(0.0, 60.0, (9, 12, 11)).astype(np.float32), spacing=(5.0, 5.0, 5.0),
                            origin=(-21.0, -24.0, -19.0))
    mask, weights = _stencil(organ, ct, grid.GetOrigin(), grid.GetSpacing(), grid.GetSize())
    interpolated = sitk.GetArrayFromImage(sitk.Resample(grid, ct, sitk.Transform(), sitk.sitkLinear, 0.0))
    dose_grid = sitk.GetArrayFromImage(grid)
    assert np.sum(weights * dose_grid) == pytest.approx(interpolated[organ].mean(), rel=1e-5)
    assert weights.sum() == pytest.approx(1.0)
    # pyRadPlan puts VOIs on the dose grid by nearest neighbour: the stencil mask must select every weighted voxel
    on_grid = sitk.GetArrayFromImage(sitk.Resample(image_from_array(mask, ct), grid, sitk.Transform(),
                                                   sitk.sitkNearestNeighbor, 0)) > 0
    assert np.all(on_grid[weights > 0])
    assert interpolated[organ].max() <= dose_grid[on_grid].max() + 1e-4


def test_ptv_margin_and_body_from_ct():
    ref = image_from_array(np.zeros((40, 40, 40), np.float32), spacing=(1.0, 1.0, 1.0), origin=(-20.0, -20.0, -20.0))
    x, y, z = physical_grid(ref)
    gtv = image_from_array(x**2 + y**2 + z**2 <= 8.0**2, ref)
    ptv = sitk.GetArrayFromImage(ptv_from_gtv(gtv, 5.0)) > 0
    # independent: voxel centres within 5 mm of a GTV voxel centre (k-d tree), the sphere of 13 mm about it
    from scipy.spatial import cKDTree

    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    inside = sitk.GetArrayViewFromImage(gtv).ravel() > 0
    distance, _ = cKDTree(points[inside]).query(points)
    assert np.array_equal(ptv.ravel(), distance <= 5.0 + 1e-9)
    assert np.all(ptv[(x**2 + y**2 + z**2) <= 12.0**2]) and not np.any(ptv[(x**2 + y**2 + z**2) > 13.0**2])
    with pytest.raises(InputError):
        ptv_from_gtv(gtv, -1.0)
    hu = np.where(x**2 / 15**2 + y**2 / 12**2 <= 1, 40.0, -1000.0)
    hu[(x**2 + y**2 <= 3.0**2)] = -1000.0  # an airway inside the body
    body = sitk.GetArrayFromImage(body_from_ct(image_from_array(hu.astype(np.float32), ref, units=Units.HU)))
    assert body[20, 20, 20] == 1 and body[20, 20, 0] == 0
    assert body.sum() == np.count_nonzero(x**2 / 15**2 + y**2 / 12**2 <= 1)


def test_default_constraints_by_name_and_settings_checks():
    limits = default_constraints(["Parotid_L", "parotid_r", "SpinalCord", "SpinalCord_PRV05", "Larynx"],
                                 parotid_mean_gy=26.0, cord_max_gy=45.0)
    assert limits == [OarConstraint("Parotid_L", "mean", 26.0), OarConstraint("parotid_r", "mean", 26.0),
                      OarConstraint("SpinalCord", "max", 45.0)]
    assert default_constraints(["Parotid_L"], parotid_mean_gy=None) == []
    assert PlanningSettings(n_beams=4).angles() == (0.0, 90.0, 180.0, 270.0)
    assert PlanningSettings(gantry_angles_deg=(-40.0, 400.0)).angles() == (320.0, 40.0)
    for bad in ({"objective": "l1"}, {"n_beams": 0}, {"bixel_width_mm": 0.5}, {"dose_grid_mm": 30.0},
                {"band": (1.0, 1.05)}, {"gantry_angles_deg": (10.0, 370.0)}, {"escalation": 1.0},
                {"cord_max_gy": -5.0}, {"max_iterations": 0}):
        with pytest.raises(InputError):
            PlanningSettings(**bad).validated()


def test_inputs_are_checked_before_planning():
    p = _phantom()
    other = image_from_array(np.zeros((20, 40, 41), np.uint8), spacing=(SPACING,) * 3)
    with pytest.raises(InputError, match="organ at risk"):
        plan_dose_painting(p["ct"], p["rx"], p["ptv"], {"Bad": other}, settings=_settings())
    negative = image_from_array(-sitk.GetArrayFromImage(p["rx"]), p["rx"], units=Units.GY)
    with pytest.raises(InputError, match="negative"):
        plan_dose_painting(p["ct"], negative, p["ptv"], p["oars"], settings=_settings())
    with pytest.raises(InputError, match="no such"):
        plan_dose_painting(p["ct"], p["rx"], p["ptv"], p["oars"], settings=_settings(),
                           constraints=[OarConstraint("Brainstem", "max", 54.0)])


# --------------------------------------------------------------------------------------------------------
# With pyRadPlan
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prp():
    pytest.importorskip("pyRadPlan")
    return planning_objectives.load_pyradplan()


def test_custom_objective_gradients_match_finite_differences(prp):
    """The registered objectives' gradients against central differences of their values."""
    rng = np.random.default_rng(7)
    n = 60
    grid = prp.core.Grid(resolution={"x": 5.0, "y": 5.0, "z": 5.0}, dimensions=(n, 1, 1), origin=np.zeros(3))
    reference = rng.uniform(70.0, 86.0, (1, 1, n))
    dose = reference * rng.uniform(0.85, 1.15, reference.shape)
    index = np.arange(n)
    classes = prp.objective_classes
    objectives = [classes.relative(d_ref=(reference, grid), scale=5000.0),
                  classes.band(d_ref=(reference, grid), scale=5000.0),
                  classes.mean_limit(weights=(np.linspace(1.0, 2.0, n).reshape(1, 1, n), grid), d_max=70.0)]
    values = dose.ravel().astype(np.float64)
    for objective in objectives:
        objective.preprocess_image_reference_parameters(target_grid=grid, index_list=index)
        gradient = objective.compute_gradient(values)
        h = 1e-4
        numeric = np.array([(objective.compute_objective(values + h * e) - objective.compute_objective(values - h * e))
                            / (2 * h) for e in np.eye(n)])
        assert np.allclose(gradient, numeric, rtol=1e-4, atol=1e-7), objective.name
    # one-sidedness: zero inside the band and below the mean limit
    band = classes.band(d_ref=(reference, grid), scale=1.0)
    band.preprocess_image_reference_parameters(target_grid=grid, index_list=index)
    assert band.compute_objective(reference.ravel() * 1.02) == 0.0
    mean_limit = classes.mean_limit(d_max=100.0)
    mean_limit.preprocess_image_reference_parameters(target_grid=grid, index_list=index)
    assert mean_limit.compute_objective(values) == 0.0


@pytest.fixture(scope="module")
def planned(prp):
    """The painted plan and the uniform 70 Gy plan of the phantom (progress recorded)."""
    p = _phantom()
    events = []
    # a weak initial penalty weight, so the limits can only hold through the escalation rounds
    result = plan_dose_painting(p["ct"], p["rx"], p["ptv"], p["oars"], settings=_settings(constraint_priority=1.0),
                                uniform_dose_gy=70.0, progress=events.append)
    return p, result, events


@pytest.mark.slow
def test_painted_plan_beats_uniform_and_keeps_the_limits(planned):
    p, result, events = planned
    a = p["arrays"]
    presc = a["presc"]
    support = presc > 0

    def qf(plan):  # the definition, from the dose image itself
        dose = sitk.GetArrayFromImage(plan.dose).astype(np.float64)
        return float(np.mean(np.abs(dose[support] / presc[support] - 1.0)))

    painted, uniform = qf(result.painted), qf(result.uniform)
    assert painted == pytest.approx(result.painted.evaluation.quality.qf, rel=1e-6)
    assert 3.0 * painted <= uniform, (painted, uniform)
    for plan in (result.painted, result.uniform):
        dose = sitk.GetArrayFromImage(plan.dose)
        assert dose[a["cord"]].max() <= CORD_LIMIT_GY
        assert dose[a["parotid"]].mean() <= 20.0
        assert plan.constraints_met
        assert plan.dose.GetMetaData("PETDP_Units") == "Gy"
    # the limits bind: with the weak initial weight the planner had to escalate (and then met them)
    escalated = [c for plan in result.plans() for c in plan.constraints if c.final_weight > 1.0]
    assert any(c.structure == "SpinalCord" for c in escalated)
    assert max(len(plan.iterations) for plan in result.plans()) > 1
    # progress: every stage reported, fractions non-decreasing up to 1
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"setup", "dose influence", "optimisation", "evaluation", "done"} <= {e.stage for e in events}
    assert any(e.iteration is not None for e in events)


@pytest.mark.slow
def test_comparison_table_and_summary(planned):
    _, result, _ = planned
    rows = result.comparison_rows()
    assert all(set(row) == set(COMPARISON_COLUMNS) for row in rows)
    by_key = {(r["quantity"], r["structure"]): r for r in rows}
    qf = by_key[("QF", "PTV_PET")]
    assert qf["painted"] == result.painted.evaluation.quality.qf
    assert qf["painted_minus_uniform"] == pytest.approx(qf["painted"] - qf["uniform"])
    assert by_key[("max dose", "SpinalCord")]["limit_gy"] == CORD_LIMIT_GY
    assert by_key[("mean dose", "Parotid_L")]["limit_gy"] == 20.0
    assert by_key[("mean dose", "PTV_PET")]["uniform"] == pytest.approx(70.0, abs=1.5)
    header = result.comparison_csv().splitlines()[0].split(",")
    assert tuple(header) == COMPARISON_COLUMNS
    summary = json.loads(json.dumps(result.summary()))  # JSON-ready
    assert summary["painted"]["constraints_met"] and summary["geometry"]["n_beams"] == 5


@pytest.mark.slow
def test_same_inputs_give_the_same_dose(prp):
    p = _phantom()
    settings = _settings(max_iterations=60, constraint_rounds=0)
    doses = [sitk.GetArrayFromImage(plan_dose_painting(p["ct"], p["rx"], p["ptv"], p["oars"],
                                                       settings=settings).painted.dose) for _ in range(2)]
    assert np.array_equal(doses[0], doses[1])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["relative", "band"])
def test_custom_target_objectives_paint_the_map(planned, objective):
    """relative, a QF surrogate, must meet the QF criterion; band only asks for Q within [0.95, 1.05] at the
    dose-grid voxels (it leaves the dose anywhere in the band), so it is held to the band itself."""
    p, reference, _ = planned
    result = plan_dose_painting(p["ct"], p["rx"], p["ptv"], p["oars"], settings=_settings(objective=objective))
    q = result.painted.evaluation.quality
    uniform = reference.uniform.evaluation.quality
    if objective == "relative":
        assert 3.0 * q.qf <= uniform.qf
    else:
        assert q.q95_105 >= 0.75 and q.q95_105 >= 1.5 * uniform.q95_105 and q.qf < uniform.qf
    assert q.q95 >= 0.9 > uniform.q95
    assert result.painted.constraints_met


def test_cancel_stops_the_planner(prp):
    p = _phantom()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # during the dose influence

    with pytest.raises(PlanningCancelled):
        plan_dose_painting(p["ct"], p["rx"], p["ptv"], p["oars"], settings=_settings(), cancel=cancel)


@pytest.mark.slow
def test_petdp_plan_writes_every_output_and_the_rt_dose(prp, tmp_path, capsys):
    from PETDosePaintingLib.cli.main import main
    from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
    from PETDosePaintingLib.imaging.rtdose import read_rtdose

    p = _phantom()
    write_ct_series(p["ct"], tmp_path / "ct", DicomIdentity.synthetic(5))
    files = {}
    for name, image in {"rx": p["rx"], "ptv": p["ptv"], **p["oars"]}.items():
        files[name] = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(image, str(files[name]))
    out = tmp_path / "plan"
    argv = ["plan", "--ct", str(tmp_path / "ct"), "--prescription", str(files["rx"]), "--target", str(files["ptv"]),
            "--oar", f"SpinalCord={files['SpinalCord']}", "--oar", f"Parotid_L={files['Parotid_L']}",
            "--oar", f"External={files['External']}", "--out", str(out), "--beams", "4", "--bixel-mm", "10",
            "--dose-grid-mm", "6", "--iterations", "80", "--objective", "relative", "--cord-max-gy", "40",
            "--parotid-mean-gy", "none", "--compare-uniform", "70", "--rtdose"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "QF" in printed and "SpinalCord" in printed
    for name in ("dose_painted.nrrd", "dose_uniform.nrrd", "comparison.csv", "comparison.json", "qvh_painted.csv",
                 "qvh_uniform.csv", "dvh_painted.csv", "dvh_uniform.csv", "qvh.png", "dvh.png", "plan.json",
                 "dose_painted.dcm", "dose_uniform.dcm"):
        assert (out / name).is_file(), name
    for name in ("qvh.png", "dvh.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with open(out / "comparison.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COMPARISON_COLUMNS
        rows = list(reader)
    assert {r["structure"] for r in rows} >= {"PTV_PET", "PTV", "SpinalCord", "Parotid_L", "External"}
    assert not any(r["limit_gy"] for r in rows if r["structure"] == "Parotid_L")  # --parotid-mean-gy none
    with open(out / "qvh_painted.csv", encoding="utf-8") as handle:
        assert handle.readline().strip() == "q,volume_fraction,volume_ml"
    with open(out / "dvh_uniform.csv", encoding="utf-8") as handle:
        assert handle.readline().strip() == "structure,dose_gy,volume_fraction,volume_ml"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["settings"]["objective"] == "relative" and plan["uniform"] is not None
    # the RT Dose holds the NRRD dose within its quantisation, in the CT's frame of reference
    nrrd = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "dose_painted.nrrd")))
    rt = sitk.GetArrayFromImage(read_rtdose(out / "dose_painted.dcm"))
    assert rt.shape == nrrd.shape and np.max(np.abs(rt - nrrd)) <= 1e-6 * max(float(nrrd.max()), 1.0) + 1e-6
    # a second run into the same folder is allowed (it is a previous petdp plan output)
    assert main([*argv[:-1], "--iterations", "5"]) == 0


def test_petdp_plan_refusals(prp, tmp_path, capsys):
    from PETDosePaintingLib.cli.main import main

    p = _phantom()
    paths = {}
    for name, image in {"ct": p["ct"], "rx": p["rx"], "ptv": p["ptv"]}.items():
        paths[name] = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(image, str(paths[name]))
    base = ["plan", "--ct", str(paths["ct"]), "--prescription", str(paths["rx"]), "--target", str(paths["ptv"]),
            "--out", str(tmp_path / "o")]
    for extra, message in ((["--rtdose"], "--ct-dicom"), (["--oar", "Cord"], "NAME=VALUE"),
                           (["--max-limit", "Brainstem=54"], "not an --oar"), (["--bixel-mm", "0"], "bixel")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
