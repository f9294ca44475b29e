"""``petdp evaluate-plan``: a planned dose against a dose-painting prescription (QF, Q95, Q105, QVH, DVH, TCP, EUD).

Q = planned / prescribed voxel by voxel over the evaluation volume (``--target``, default every voxel with a
positive prescription; voxels with a prescription <= 0 are excluded), QF = mean |Q - 1|, QVH(q) = fraction
with Q >= q (Vanderstraeten 2006). The planned dose may be an image or a DICOM RT Dose file. A dose on
another grid is resampled onto the prescription grid with linear interpolation, only when both record the
same Frame of Reference UID (or ``--assume-same-frame``). DVHs: ``--structure`` masks on the prescription grid
(voxel DVH of the resampled dose), or ``--rtstruct`` contours on the planned dose's own grid
(:mod:`PETDosePaintingLib.dosepainting.dvh`).
Methods: :mod:`PETDosePaintingLib.dosepainting.plan_evaluation`.

The QVH CSV columns (:data:`~PETDosePaintingLib.dosepainting.plan_evaluation.QVH_COLUMNS`: ``q``,
``volume_fraction``, ``volume_ml``) and the DVH CSV columns (``structure``, ``dose_gy``, ``volume_fraction``,
``volume_ml``) are a contract: keep them stable.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``evaluate-plan`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate-plan",
        help="score a planned dose against a dose-painting prescription (QF, Q95, Q105, QVH, DVH, TCP, EUD)",
        description="Compare a planned dose with the prescription voxel by voxel: Q = planned/prescribed, "
                    "QF = mean |Q - 1|, Q95 = fraction with Q >= 0.95, Q105 = fraction with Q >= 1.05, QVH(q) = "
                    "fraction with Q >= q (Vanderstraeten 2006). Also TCP (Poisson-LQ) and EUD (Niemierko) of "
                    "the planned and prescribed doses with the same clonogen map, and DVHs of given structures.",
        epilog="A dose on another grid is resampled onto the prescription grid (linear interpolation) only if a "
               "shared frame of reference is recorded or --assume-same-frame is given. Exit codes: 0 success, "
               "1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("--prescription", required=True, help="prescription image (Gy), e.g. from petdp prescribe")
    parser.add_argument("--dose", required=True, help="planned dose: image (Gy) or DICOM RT Dose file")
    parser.add_argument("--target", help="evaluation volume mask on the prescription grid (default: prescription > 0)")
    parser.add_argument("--qvh", metavar="OUT.csv", help="write the QVH as CSV (q, volume_fraction, volume_ml)")
    parser.add_argument("--qf-map", metavar="OUT", help="write the map of Q - 1 (0 outside the evaluation volume)")
    parser.add_argument("--structure", action="append", default=[], metavar="NAME=MASK",
                        help="structure for the DVH (repeatable), mask on the prescription grid")
    parser.add_argument("--rtstruct", metavar="RS.dcm",
                        help="DVH structures from an RT Structure Set (contour DVHs on the planned dose's own grid)")
    parser.add_argument("--roi", action="append", default=[], metavar="NAME",
                        help="with --rtstruct: ROI name to read (repeatable; default all)")
    parser.add_argument("--dvh", metavar="OUT.csv", help="write the DVHs as CSV (structure, dose_gy, volume_fraction, "
                                                         "volume_ml)")
    parser.add_argument("--clonogens", metavar="RHO",
                        help="clonogen-density image (1/cm3) on the prescription grid (default: uniform 1e7/cm3)")
    parser.add_argument("--clonogens-pet", metavar="PET",
                        help="clonogen density from this FDG PET instead: rho = 1e7/cm3 x SUV / median SUV in the "
                             "evaluation volume (an assumption, Brahme-type; resampled linearly if needed)")
    parser.add_argument("--alpha", type=float, default=0.3, help="alpha, 1/Gy (default 0.3, unverified [M])")
    parser.add_argument("--alpha-beta", type=float, default=10.0, help="alpha/beta, Gy (default 10 [M])")
    parser.add_argument("--sigma-alpha", type=float, default=0.07, help="SD of alpha, 1/Gy (default 0.07 [M])")
    parser.add_argument("--n-fractions", type=int, default=35, help="number of fractions (default 35)")
    parser.add_argument("--q-step", type=float, default=0.005, help="QVH sampling step (default 0.005)")
    parser.add_argument("--assume-same-frame", action="store_true",
                        help="dose and prescription share a frame of reference although none is recorded")
    parser.add_argument("--json", metavar="OUT.json", help="write every result as JSON")
    parser.set_defaults(func=run)


def read_dose(path: str | Path):
    """A planned dose: an image file, or a DICOM RT Dose file (:func:`~PETDosePaintingLib.imaging.rtdose.read_rtdose`,
    Gy, Frame of Reference UID kept in the metadata)."""
    from ..errors import InputError
    from ..imaging.io import image_suffix, read_image
    from ..imaging.rtdose import read_rtdose

    path = Path(path)
    if not path.exists():
        raise InputError("no such file or directory", path)
    if path.is_dir():
        raise InputError("is a folder; the planned dose must be an image file or one RT Dose file", path)
    return read_image(path) if image_suffix(path) else read_rtdose(path)


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the requested outputs."""
    import SimpleITK as sitk

    from ..dosepainting.plan_evaluation import (
        dvh_csv,
        evaluate_plan,
        resample_dose_to_prescription,
    )
    from ..errors import InputError
    from ..imaging.image import Units, check_same_geometry, get_units, require_finite, set_units
    from ..imaging.io import read_image, read_mask, write_image, write_json, write_text
    from .common import Transaction, check_outputs, require_image_suffix

    structures_args = []
    for item in args.structure:
        if "=" not in item:
            raise InputError(f"--structure expects NAME=MASK, got {item!r}")
        name, path = (part.strip() for part in item.split("=", 1))
        if not name or not path:
            raise InputError(f"--structure expects NAME=MASK, got {item!r}")
        structures_args.append((name, path))
    if args.roi and not args.rtstruct:
        raise InputError("--roi needs --rtstruct")
    if args.dvh and not (structures_args or args.rtstruct):
        raise InputError("--dvh needs structures (--structure NAME=MASK or --rtstruct)")
    require_image_suffix(args.qf_map, "--qf-map")
    inputs = [args.prescription, args.dose, args.target, args.clonogens, args.clonogens_pet, args.rtstruct,
              *(p for _, p in structures_args)]
    check_outputs([args.qvh, args.qf_map, args.dvh, args.json], inputs)
    prescription = read_image(args.prescription)
    require_finite(prescription, f"prescription {args.prescription}")
    units = get_units(prescription)
    if units is not None and units != "Gy":
        raise InputError(f"holds {units!r} values; a prescription in Gy is needed", args.prescription)
    target = read_mask(args.target, "evaluation mask", allow_empty=False) if args.target else None
    if target is not None:
        check_same_geometry(prescription, target, f"prescription {args.prescription}", f"target {args.target}")
    native_dose = read_dose(args.dose)
    dose, resample_note = resample_dose_to_prescription(native_dose, prescription,
                                                        assume_same_frame=args.assume_same_frame, mask=target)
    structures = {}
    for name, path in structures_args:
        mask = read_mask(path, f"structure {name}", allow_empty=False)
        check_same_geometry(prescription, mask, f"prescription {args.prescription}", f"structure {name} ({path})")
        structures[name] = mask
    if args.clonogens and args.clonogens_pet:
        raise InputError("give --clonogens or --clonogens-pet, not both")
    clonogens = None
    if args.clonogens_pet:
        clonogens = _clonogens_from_pet(args.clonogens_pet, prescription, target, args.assume_same_frame)
    if args.clonogens:
        clonogens = read_image(args.clonogens)
        check_same_geometry(prescription, clonogens, f"prescription {args.prescription}",
                            f"clonogen map {args.clonogens}")
    evaluation = evaluate_plan(dose, prescription, target, structures=structures, clonogens=clonogens,
                               alpha=args.alpha, alpha_beta=args.alpha_beta, n_fractions=args.n_fractions,
                               sigma_alpha=args.sigma_alpha, q_step=args.q_step)
    curves = dict(evaluation.dvhs)
    if args.rtstruct:
        # Contour DVHs on the planned dose's own grid (sub-sampled contours, no resampling of the dose).
        from ..dosepainting.dvh import dvh_from_rtstruct

        native_gy = native_dose
        if get_units(native_dose) is None:
            native_gy = sitk.Image(native_dose)
            set_units(native_gy, Units.GY)
        for name, result in dvh_from_rtstruct(native_gy, args.rtstruct, args.roi or None).items():
            if name in curves:
                raise InputError(f"structure {name!r} is given both by --structure and in the RT Structure Set")
            curves[name] = result
    q = evaluation.quality
    notes = ([resample_note] if resample_note else []) + evaluation.notes

    tx = Transaction()
    if args.qvh:
        tx.add(args.qvh, lambda: write_text(q.qvh_csv(), args.qvh))
    if args.qf_map:
        tx.add(args.qf_map, lambda: write_image(q.qf_map, args.qf_map))
    if args.dvh:
        tx.add(args.dvh, lambda: write_text(dvh_csv(curves), args.dvh))
    if args.json:
        summary = {"command": "evaluate-plan", "prescription": str(args.prescription), "dose": str(args.dose),
                   "target": args.target, **evaluation.summary(),
                   "dvh": {name: _finite(c.statistics()) for name, c in curves.items()}, "notes": notes,
                   "qvh": {"q": q.qvh_q, "volume_fraction": q.qvh_fraction}}
        tx.add(args.json, lambda: write_json(summary, args.json))
    tx.commit()
    print(f"[evaluate-plan] {q.n_voxels} voxels ({q.volume_ml:.2f} mL) evaluated"
          f"{f', {q.n_excluded} excluded (prescription <= 0)' if q.n_excluded else ''}")
    print(f"QF {q.qf:.4f}  Q95 {q.q95:.4f}  Q105 {q.q105:.4f}  Q(0.95-1.05) {q.q95_105:.4f}  "
          f"Q mean {q.q_mean:.4f} (min {q.q_min:.4f}, max {q.q_max:.4f})")
    print(f"TCP planned {evaluation.tcp_planned.tcp:.4f} vs prescribed {evaluation.tcp_prescribed.tcp:.4f}; "
          f"EUD planned {evaluation.eud_planned_gy:.2f} Gy vs prescribed {evaluation.eud_prescribed_gy:.2f} Gy "
          f"({evaluation.clonogen_model})")
    for name, c in curves.items():
        print(f"DVH {name}: {c.volume_cc:.2f} mL, Dmean {c.mean_gy:.2f}, D95 {c.d95_gy:.2f}, "
              f"D2 {c.dose_at_volume_pct(2.0):.2f}, Dmax {c.max_gy:.2f} Gy ({c.method})")
    for note in notes:
        print(f"[evaluate-plan] note: {note}")
    for path in (args.qvh, args.qf_map, args.dvh, args.json):
        if path:
            print(f"[evaluate-plan] wrote {path}")
    return 0


def _finite(stats: dict) -> dict:
    """NaN (undefined statistics, e.g. D2cc of a structure under 2 cm3) -> None for JSON."""
    import math

    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}


def _clonogens_from_pet(path, prescription, target, assume_same_frame: bool):
    """rho = 1e7 /cm3 x SUV / median(SUV) over the evaluation volume (radiobiology.clonogen_density_from_suv),
    with the PET resampled onto the prescription grid by linear interpolation when needed."""
    import SimpleITK as sitk

    from ..dosepainting.prescription import require_shared_frame
    from ..dosepainting.radiobiology import clonogen_density_from_suv
    from ..imaging.image import image_from_array, same_geometry
    from ..imaging.resample import resample_to_reference
    from .common import read_image_with_frame

    pet, _ = read_image_with_frame(path, "PET", modality="PT")
    if not same_geometry(pet, prescription):
        require_shared_frame(pet, prescription, f"PET {path}", "prescription", assume_same_frame=assume_same_frame)
        pet = resample_to_reference(pet, prescription, interpolation="linear", output_pixel_type=sitk.sitkFloat32)
    mask = target if target is not None else image_from_array(sitk.GetArrayViewFromImage(prescription) > 0,
                                                               prescription)
    return clonogen_density_from_suv(pet, mask).density
