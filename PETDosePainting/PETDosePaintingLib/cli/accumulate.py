"""``petdp accumulate``: sum phase doses on the baseline grid through their transform chains (physical or EQD2).

``--dose`` is repeated once per phase, in order; the first dose is in the baseline's frame of reference
and every later one has a ``--transform`` chain to the baseline, listed from the baseline outwards
(``--transform T_0to7.h5 T_7to17.h5`` for the third phase), each transform mapping the earlier scan's points
to the later scan's points (registration fixed = earlier, moving = later; ITK / Slicer FromParent). Method:
:mod:`PETDosePaintingLib.comparison.accumulation` (direct dose mapping, one interpolation per phase through
the composed transform, dose not multiplied by the Jacobian, EQD2 per phase before warping).
"""

from __future__ import annotations

import argparse
from pathlib import Path

_DESCRIPTION = (
    "Accumulate phase doses onto the baseline grid. Give --dose once per phase (in Gy: a DICOM RT Dose file or an "
    "image recording units Gy) and, for every dose after the first, one --transform with its chain of transform "
    "files to the baseline, from the baseline outwards (each maps the earlier scan's points to the later scan's "
    "points, as a registration with fixed = earlier, moving = later writes them). Each dose is interpolated once "
    "(linear) through its composed chain. With --alpha-beta the sum is EQD2, each phase converted voxel by voxel "
    "with its own --fractions before mapping. Outside a dose grid the phase dose counts as 0 Gy and the voxel is "
    "left out of the coverage mask."
)


def register(subparsers) -> None:
    """Add the ``accumulate`` sub-command."""
    parser = subparsers.add_parser(
        "accumulate", help="sum phase doses on the baseline grid through transform chains (physical or EQD2)",
        description=_DESCRIPTION,
        epilog="Example: petdp accumulate --baseline CT0.nrrd --dose D0.nrrd --dose D7.nrrd --transform T07.h5 "
               "--dose D17.nrrd --transform T07.h5 T717.h5 --out SUM.nrrd. Exit codes: 0 success, 1 processing "
               "failed, 2 invalid usage or input (a dose without Gy units, a transform count that does not match, "
               "grids without overlap, a missing or invalid transform file).",
    )
    parser.add_argument("--baseline", required=True, help="baseline image defining the output grid (e.g. CT0: file "
                                                          "or DICOM series folder)")
    parser.add_argument("--dose", action="append", required=True, metavar="DOSE",
                        help="a phase dose (repeat once per phase, in order): RT Dose .dcm or image in Gy")
    parser.add_argument("--transform", action="append", nargs="+", default=[], metavar="T",
                        help="the chain of transform files of the next dose after the first (repeat once per such "
                             "dose), listed from the baseline outwards")
    parser.add_argument("--out", required=True, metavar="SUM.nrrd", help="accumulated dose (Gy) on the baseline grid")
    parser.add_argument("--fractions", type=int, nargs="+", metavar="N",
                        help="number of fractions of each phase (one per --dose; required with --alpha-beta)")
    parser.add_argument("--alpha-beta", type=float, metavar="GY",
                        help="sum EQD2 with this alpha/beta in Gy (e.g. 10 tumour, 3 late-responding tissue)")
    parser.add_argument("--dose-units", choices=("Gy", "cGy"),
                        help="declare the units of dose images that record none (cGy is converted to Gy)")
    parser.add_argument("--coverage", metavar="MASK.nrrd",
                        help="write the mask of baseline voxels covered by every phase dose")
    parser.add_argument("--qa-mask", metavar="MASK", help="region of the Jacobian QA on the baseline grid (e.g. the "
                                                          "body); default: the dose coverage")
    parser.add_argument("--json", metavar="OUT.json", help="write the per-phase coverage, doses and Jacobian QA")
    parser.set_defaults(func=run)


def read_dose(path: str | Path, declared_units: str | None = None):
    """A phase dose in Gy: a DICOM RT Dose file, or an image recording units Gy (or declared)."""
    from ..errors import InputError
    from ..imaging.io import image_suffix
    from ..imaging.rtdose import read_rtdose
    from .dvh import load_dose

    path = Path(path)
    if not path.exists():
        raise InputError("no such dose file", path)
    if path.is_dir():
        raise InputError("is a folder; give an RT Dose file (.dcm) or a dose image file", path)
    if image_suffix(path):
        return load_dose(path, declared_units)
    return read_rtdose(path)


def run(args: argparse.Namespace) -> int:
    """Read, check, accumulate, write."""
    from ..comparison.accumulation import accumulate_doses
    from ..comparison.registration import read_transform
    from ..errors import InputError
    from ..imaging.io import read_mask, write_image, write_json
    from .common import Transaction, check_outputs, read_image_with_frame, require_image_suffix

    doses_paths = list(args.dose)
    chains_paths = list(args.transform)
    if len(chains_paths) != len(doses_paths) - 1:
        raise InputError(f"{len(doses_paths)} --dose but {len(chains_paths)} --transform: every dose after the first "
                         f"needs one --transform with its chain to the baseline ({len(doses_paths) - 1} expected)")
    if args.fractions is not None and len(args.fractions) != len(doses_paths):
        raise InputError(f"--fractions needs one number per --dose ({len(doses_paths)}), got {len(args.fractions)}")
    if args.alpha_beta is not None and args.fractions is None:
        raise InputError("--alpha-beta (EQD2) needs --fractions, one per --dose")
    transform_files = [t for chain in chains_paths for t in chain]
    inputs = [args.baseline, *doses_paths, *transform_files, args.qa_mask]
    check_outputs([args.out, args.coverage, args.json], inputs)
    require_image_suffix(args.out, "--out")
    require_image_suffix(args.coverage, "--coverage")

    baseline, _ = read_image_with_frame(args.baseline, "baseline image")
    doses = [read_dose(p, args.dose_units) for p in doses_paths]
    cache: dict[str, object] = {}
    chains: list = [None]
    for chain in chains_paths:
        transforms = []
        for item in chain:
            key = str(Path(item).resolve())
            if key not in cache:
                cache[key] = read_transform(item)
            transforms.append(cache[key])
        chains.append(transforms)
    qa_mask = read_mask(args.qa_mask, "QA mask", allow_empty=False) if args.qa_mask else None
    names = [Path(p).name for p in doses_paths]
    result = accumulate_doses(baseline, doses, chains, fractions=args.fractions, alpha_beta_gy=args.alpha_beta,
                              names=names, qa_mask=qa_mask)

    transaction = Transaction()
    transaction.add(args.out, lambda: write_image(result.total, args.out))
    if args.coverage:
        transaction.add(args.coverage, lambda: write_image(result.coverage, args.coverage))
    if args.json:
        summary = {"baseline": str(args.baseline), "doses": doses_paths, "transforms": chains_paths,
                   "out": str(args.out), **result.summary()}
        transaction.add(args.json, lambda: write_json(summary, args.json))
    transaction.commit()

    quantity = result.quantity if result.alpha_beta_gy is None else f"EQD2 (alpha/beta {result.alpha_beta_gy:g} Gy)"
    for phase in result.contributions:
        qa = phase.jacobian
        qa_text = (f", Jacobian {qa.minimum:.3f}..{qa.maximum:.3f} {qa.verdict.upper()}" if qa is not None else
                   f", linear (J = {phase.linear_jacobian:.4f})" if phase.linear_jacobian is not None else "")
        print(f"{phase.name}: {phase.transform}, coverage {100 * phase.coverage_fraction:.1f}%, max "
              f"{phase.max_gy:.2f} Gy{qa_text}")
    summary = result.summary()
    max_text = "n/a" if summary["max_gy"] is None else f"{summary['max_gy']:.2f} Gy"
    print(f"accumulated {quantity}: max {max_text} over the voxels covered by every dose "
          f"({100 * result.coverage_fraction:.1f}% of the baseline grid) -> {args.out}")
    if any(p.jacobian is not None and p.jacobian.verdict == "fail" for p in result.contributions):
        print("warning: a transform folds (Jacobian <= 0); the accumulated dose is invalid there")
        return 1
    return 0
