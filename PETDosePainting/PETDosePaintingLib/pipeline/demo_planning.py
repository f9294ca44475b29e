"""The demo's planning stage: uniform 70 Gy vs the painted 70-86 Gy map on the digital patient (issue 9).

Runs only when the optional ``[planning]`` extra (pyRadPlan) is installed; otherwise the demo says so and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .planning_outputs import write_planning_outputs

#: Coarse settings of the demo's plan comparison (the full patient / ``--quick``): few beams, coarse bixels and
#: dose grid, a capped optimiser; about a minute / half a minute on 2 shared cores (benchmarks/results/planning.md).
DEMO_SETTINGS = {"n_beams": 5, "bixel_width_mm": 8.0, "dose_grid_mm": 5.0, "max_iterations": 200}
DEMO_SETTINGS_QUICK = {"n_beams": 5, "bixel_width_mm": 10.0, "dose_grid_mm": 5.0, "max_iterations": 150}
#: GTV-to-PTV margin of the demo (mm), a design default (:func:`~..dosepainting.planning.ptv_from_gtv`).
DEMO_PTV_MARGIN_MM = 5.0
DEMO_UNIFORM_GY = 70.0


class DemoPlanning:
    """What the demo's planning stage wrote (``files``) and its ``summary`` (``summary.json["planning"]``)."""

    def __init__(self, files: dict[str, Path], summary: dict[str, Any]):
        self.files = files
        self.summary = summary


def run_demo_planning(patient, ct, prescription, gtv, *, out: Path, quick: bool = False, log=print) -> DemoPlanning:
    """Uniform 70 Gy vs the painted 70-86 Gy map on the digital patient, if the planning extra is installed.

    ``ct`` is the planning CT read back from DICOM, ``prescription`` the FDG DPBN map on it, ``gtv`` the GTV
    (any grid; put on the CT grid by nearest neighbour). The PTV is the GTV + 5 mm, planned to 70 Gy outside the
    map (the map's D_low); the organs at risk are the patient's OAR truth on the CT grid. Files go next to
    ``summary.json`` as ``planning_*``. Without pyRadPlan, or if planning fails, it says so in the log and in the
    summary and writes nothing.
    """
    from ..dosepainting.planning import PlanningSettings, plan_dose_painting, plan_summary_lines, ptv_from_gtv
    from ..dosepainting.planning_objectives import INSTALL_HINT, PlanningExtraMissing, load_pyradplan
    from ..errors import PETDPError
    from ..imaging.image import get_frame_of_reference, same_geometry, set_frame_of_reference
    from ..imaging.resample import resample_mask

    try:
        load_pyradplan()
    except PlanningExtraMissing as exc:
        log(f"treatment planning (uniform vs painted) skipped: pyRadPlan is not installed; {INSTALL_HINT}")
        return DemoPlanning({}, {"status": "skipped", "reason": str(exc)})
    settings = PlanningSettings(**(DEMO_SETTINGS_QUICK if quick else DEMO_SETTINGS))
    log(f"treatment planning: uniform {DEMO_UNIFORM_GY:g} Gy vs the painted map, {settings.n_beams} beams, "
        f"{settings.bixel_width_mm:g} mm bixels, {settings.dose_grid_mm:g} mm dose grid (pyRadPlan)")
    frame = get_frame_of_reference(ct)
    gtv_ct = gtv if same_geometry(gtv, ct) else resample_mask(gtv, ct)
    ptv = set_frame_of_reference(ptv_from_gtv(gtv_ct, DEMO_PTV_MARGIN_MM), frame)
    oars = dict(patient.timepoints[0].truth.oars_ct)  # on the CT grid (the planner checks it)
    last = {"message": None}

    def progress(p) -> None:
        if p.iteration is None and p.message != last["message"] and p.stage != "dose influence":
            log(f"  {p.message}")
        last["message"] = p.message

    try:
        result = plan_dose_painting(ct, prescription, ptv, oars, settings=settings, uniform_dose_gy=DEMO_UNIFORM_GY,
                                    base_dose_gy=DEMO_UNIFORM_GY, progress=progress)
    except PETDPError as exc:
        log(f"treatment planning failed: {exc}")
        return DemoPlanning({}, {"status": "failed", "reason": str(exc)})
    files = write_planning_outputs(result, out, prefix="planning_", plan_json=False)
    for line in plan_summary_lines(result):
        log(f"  {line}")
    summary = {"status": "done", "ptv": f"GTV + {DEMO_PTV_MARGIN_MM:g} mm", **result.summary(),
               "files": {k: str(v.relative_to(out)) for k, v in files.items()}}
    return DemoPlanning({f"planning_{k}": v for k, v in files.items()}, summary)
