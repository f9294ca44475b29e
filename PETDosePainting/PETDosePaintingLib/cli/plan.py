"""``petdp plan``: is a dose-painting prescription deliverable, and at what cost to the organs at risk?

Optimises an IMRT fluence for the prescription map with pyRadPlan (the optional ``[planning]`` extra), and
with ``--compare-uniform DOSE`` a uniform plan with the same beams and organ-at-risk limits, then scores both
against the map (QF, Q95, Q105, QVH, DVH, mean/max OAR doses, TCP, EUD). Method, objectives, how the limits
are enforced and verified, and the limits of the method: :mod:`PETDosePaintingLib.dosepainting.planning`.

Outputs in ``--out`` (a new or empty folder, or a previous ``petdp plan`` output):

* ``dose_painted.nrrd`` (and ``dose_uniform.nrrd``): the optimised dose in Gy on the CT grid;
* ``comparison.csv`` / ``comparison.json``: the table, columns
  :data:`~PETDosePaintingLib.dosepainting.planning.COMPARISON_COLUMNS` (``quantity``, ``structure``, ``unit``,
  ``prescribed``, ``uniform``, ``painted``, ``painted_minus_uniform``, ``limit_gy``), a stable contract;
* ``qvh_<plan>.csv`` (``q``, ``volume_fraction``, ``volume_ml``) and ``dvh_<plan>.csv`` (``structure``,
  ``dose_gy``, ``volume_fraction``, ``volume_ml``): the columns of ``petdp evaluate-plan``;
* ``qvh.png`` and ``dvh.png``: both plans in one figure each;
* ``plan.json``: every setting, number, limit check and note;
* with ``--rtdose``: ``dose_<plan>.dcm`` DICOM RT Dose files (and the RT Plan each references) in the planning
  CT's frame of reference (``--ct-dicom``, or ``--ct`` when it is a DICOM folder).

Without pyRadPlan the command stops at once with one line saying how to install the extra (exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline.planning_outputs import write_planning_outputs


def _dose_or_none(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "no"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a dose in Gy or 'none', got {text!r}") from None
    return value


def _angles(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated gantry angles in degrees, got {text!r}") from None


def register(subparsers) -> None:
    """Add the ``plan`` sub-command."""
    from ..dosepainting.planning import (
        DEFAULT_BIXEL_MM,
        DEFAULT_CORD_MAX_GY,
        DEFAULT_DOSE_GRID_MM,
        DEFAULT_N_BEAMS,
        DEFAULT_PAROTID_MEAN_GY,
        OBJECTIVES,
        PlanningSettings,
    )

    defaults = PlanningSettings()
    parser = subparsers.add_parser(
        "plan",
        help="optimise an IMRT fluence for a prescription map (pyRadPlan) and compare it with a uniform plan",
        description="Is this prescription deliverable for this patient, and at what cost to the organs at risk? "
                    "Optimises a coplanar IMRT fluence (pyRadPlan photon pencil beam, L-BFGS-B) for the voxel "
                    "prescription, optionally also a uniform plan with the same beams and organ-at-risk limits, and "
                    "scores both against the map: QF, Q95, Q105, QVH (Vanderstraeten 2006), DVHs, mean/max OAR "
                    "doses, TCP and EUD. Parotid mean and cord max limits are penalties verified on the result "
                    "(escalated until met or reported as not met). Fluence optimisation on a pencil-beam dose: "
                    "achievability in principle, not a clinical dose.",
        epilog="Needs the planning extra: pip install -e \".[planning]\" (or pip install petdosepainting[planning]). "
               "Every image must share the CT grid. Exit codes: 0 success, 1 processing failed, 2 invalid usage or "
               "input (or the planning extra is missing).",
    )
    parser.add_argument("--ct", required=True, help="planning CT in HU: image file or DICOM CT folder")
    parser.add_argument("--prescription", required=True, help="prescription map (Gy) on the CT grid, e.g. from "
                                                              "petdp prescribe --grid CT")
    parser.add_argument("--target", required=True, help="PTV mask on the CT grid (planned with the map's support)")
    parser.add_argument("--oar", action="append", default=[], metavar="NAME=MASK",
                        help="organ at risk (repeatable); parotids (name contains 'parotid') get the mean limit, "
                             "the cord ('cord'/'spinal') the max limit; External/Body is the body contour")
    parser.add_argument("--body", metavar="MASK", help="External contour (default: an --oar named External/Body, "
                                                       "else thresholded from the CT)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    beams = parser.add_mutually_exclusive_group()
    beams.add_argument("--beams", type=int, default=DEFAULT_N_BEAMS, metavar="N",
                       help=f"N equispaced coplanar beams from gantry 0 (default {DEFAULT_N_BEAMS})")
    beams.add_argument("--gantry-angles", type=_angles, metavar="A,B,...", help="explicit gantry angles (degrees)")
    parser.add_argument("--bixel-mm", type=float, default=DEFAULT_BIXEL_MM, metavar="MM",
                        help=f"bixel width at the isocentre (default {DEFAULT_BIXEL_MM:g})")
    parser.add_argument("--dose-grid-mm", type=float, default=DEFAULT_DOSE_GRID_MM, metavar="MM",
                        help=f"dose grid spacing (default {DEFAULT_DOSE_GRID_MM:g})")
    parser.add_argument("--objective", choices=OBJECTIVES, default="squared",
                        help="target objective: squared (Squared Mimicking, mean (d-p)^2; default), relative "
                             "(mean ((d-p)/p)^2, a smooth QF surrogate), band (penalties below 0.95 p / above 1.05 p)")
    parser.add_argument("--parotid-mean-gy", type=_dose_or_none, default=DEFAULT_PAROTID_MEAN_GY, metavar="GY",
                        help=f"mean-dose limit of each parotid (default {DEFAULT_PAROTID_MEAN_GY:g} [unverified "
                             "protocol value]; 'none' for no limit)")
    parser.add_argument("--cord-max-gy", type=_dose_or_none, default=DEFAULT_CORD_MAX_GY, metavar="GY",
                        help=f"maximum-dose limit of the spinal cord (default {DEFAULT_CORD_MAX_GY:g}; 'none')")
    parser.add_argument("--mean-limit", action="append", default=[], metavar="NAME=GY",
                        help="mean-dose limit for another organ at risk (repeatable)")
    parser.add_argument("--max-limit", action="append", default=[], metavar="NAME=GY",
                        help="maximum-dose limit for another organ at risk (repeatable)")
    parser.add_argument("--compare-uniform", type=float, metavar="GY",
                        help="also optimise a uniform plan to this dose (e.g. 70) over the same target and compare")
    parser.add_argument("--base-dose-gy", type=float, metavar="GY",
                        help="dose for PTV voxels outside the map (default: the lowest positive prescription)")
    parser.add_argument("--iterations", type=int, default=defaults.max_iterations, metavar="N",
                        help=f"maximum L-BFGS-B iterations per optimisation round (default {defaults.max_iterations})")
    parser.add_argument("--constraint-rounds", type=int, default=defaults.constraint_rounds, metavar="N",
                        help="re-optimisations with escalated penalties while a limit is not met (default "
                             f"{defaults.constraint_rounds})")
    parser.add_argument("--rtdose", action="store_true",
                        help="also export each optimised dose as DICOM RT Dose (needs --ct-dicom or a DICOM --ct)")
    parser.add_argument("--ct-dicom", metavar="DIR", help="planning CT DICOM folder the RT Dose references")
    parser.set_defaults(func=run)


def _pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    from ..errors import InputError

    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"{option} expects NAME=VALUE, got {item!r}")
        out.append((name.strip(), value.strip()))
    return out


def run(args: argparse.Namespace) -> int:
    """Check the extra, read and check the inputs, plan, and write every output."""
    from ..dosepainting.planning import (
        OarConstraint,
        PlanningSettings,
        default_constraints,
        plan_dose_painting,
        plan_summary_lines,
    )
    from ..dosepainting.planning_objectives import load_pyradplan
    from ..errors import InputError
    from ..imaging.io import read_image, read_mask
    from ..pipeline.outputs import prepare_output_dir
    from .common import check_outputs, read_image_with_frame

    load_pyradplan()  # first: without the extra, one line saying how to install it (exit 2)

    oar_paths = _pairs(args.oar, "--oar")
    names = [n for n, _ in oar_paths]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise InputError(f"--oar names {', '.join(sorted(duplicates))} more than once")
    extra_limits = []
    for option, kind in (("--mean-limit", "mean"), ("--max-limit", "max")):
        for name, value in _pairs(getattr(args, option[2:].replace("-", "_")), option):
            try:
                limit = float(value)
            except ValueError:
                raise InputError(f"{option} {name}: expected a dose in Gy, got {value!r}") from None
            if name not in names:
                raise InputError(f"{option} names {name!r}, which is not an --oar")
            extra_limits.append(OarConstraint(name, kind, limit))
    settings = PlanningSettings(
        gantry_angles_deg=args.gantry_angles, n_beams=args.beams, bixel_width_mm=args.bixel_mm,
        dose_grid_mm=args.dose_grid_mm, objective=args.objective, parotid_mean_gy=args.parotid_mean_gy,
        cord_max_gy=args.cord_max_gy, max_iterations=args.iterations, constraint_rounds=args.constraint_rounds,
    ).validated()
    ct_dicom = args.ct_dicom or (args.ct if Path(args.ct).is_dir() else None)
    if args.rtdose and not ct_dicom:
        raise InputError("--rtdose needs the planning CT's DICOM folder (--ct-dicom, or --ct as a DICOM folder)")
    if args.ct_dicom and not args.rtdose:
        raise InputError("--ct-dicom is only used with --rtdose")
    inputs = [args.ct, args.prescription, args.target, args.body, args.ct_dicom, *(p for _, p in oar_paths)]
    check_outputs([args.out], inputs)

    ct, ct_series = read_image_with_frame(args.ct, "CT", modality="CT")
    prescription = read_image(args.prescription)
    target = read_mask(args.target, "target (PTV)", allow_empty=False)
    oars = {name: read_mask(path, f"organ at risk {name}") for name, path in oar_paths}
    body = read_mask(args.body, "body (External)", allow_empty=False) if args.body else None
    if args.rtdose and ct_series is None:
        from ..imaging.dicom_series import read_dicom_series
        from ..imaging.image import check_same_geometry

        ct_series = read_dicom_series(ct_dicom, modality="CT")
        check_same_geometry(ct, ct_series.image, f"CT {args.ct}", f"--ct-dicom {ct_dicom}")
    constraints = None
    if extra_limits:
        constraints = default_constraints([n for n in names if n.lower() not in ("external", "body", "skin")],
                                          parotid_mean_gy=settings.parotid_mean_gy, cord_max_gy=settings.cord_max_gy)
        replaced = {(c.structure, c.kind) for c in extra_limits}
        constraints = [c for c in constraints if (c.structure, c.kind) not in replaced] + extra_limits

    out = prepare_output_dir(args.out, "plan")
    state = {"stage": None}

    def progress(p) -> None:
        if p.iteration is not None:
            if p.iteration % 50 == 0:
                print(f"[plan] {p.message}", flush=True)
            return
        if p.message != state["stage"]:
            print(f"[plan] {p.message}", flush=True)
        state["stage"] = p.message

    result = plan_dose_painting(ct, prescription, target, oars, body=body, settings=settings,
                                constraints=constraints, uniform_dose_gy=args.compare_uniform,
                                base_dose_gy=args.base_dose_gy, progress=progress)
    files = write_planning_outputs(result, out, inputs={"ct": args.ct, "prescription": args.prescription,
                                                        "target": args.target, "body": args.body,
                                                        "oars": dict(oar_paths)})
    if args.rtdose:
        files.update(_write_rtdose(result, out, ct_series))
    for line in plan_summary_lines(result):
        print(line)
    for note in result.notes:
        print(f"[plan] note: {note}")
    print(f"[plan] wrote {len(files)} files to {out} (runtime {result.timings_s['total']:.1f} s)")
    return 0


def _write_rtdose(result, out: Path, ct_series) -> dict[str, Path]:
    from ..imaging.rtdose import write_rtdose

    files = {}
    for plan in result.plans():
        path = out / f"dose_{plan.label}.dcm"
        description = f"PETDP_pyRadPlan_{plan.label}_{result.settings.objective}"[:64]
        export = write_rtdose(plan.dose, path, ct_series, description=description,
                              plan_label=f"PETDP_{plan.label}"[:16])
        files[f"rtdose_{plan.label}"] = export.path
        if export.plan_path:
            files[f"rtplan_{plan.label}"] = Path(export.plan_path)
    return files
