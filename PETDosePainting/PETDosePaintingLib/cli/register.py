"""``petdp register``: rigid (any modalities) or B-spline (CT to CT) registration, with QA.

The transform written (``--out``, ``.h5`` or ``.tfm``) maps **fixed points to moving points** (ITK; what
Slicer stores as a transform node's "FromParent"): load it in Slicer and put the *moving* image under it
to see it aligned with the fixed image, or resample the moving image onto the fixed grid with it
(``--resampled``). Methods and conventions: :mod:`PETDosePaintingLib.comparison.registration`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_DESCRIPTION = (
    "Register MOVING onto FIXED. rigid: Euler transform (rotation + translation), Mattes mutual information, "
    "centred initialisation, multi-resolution; for CT/MR/PET across modalities. bspline: cubic B-spline free-form "
    "deformation (control-point spacing --grid-spacing-mm, no bending penalty) on top of an optional --initial "
    "rigid transform, mean squares by default; for CT to CT between timepoints (fixed = baseline, moving = later "
    "scan). The output transform maps fixed-space points to moving-space points (ITK convention, Slicer's "
    "FromParent). For bspline the Jacobian determinant QA (folding, volume change outside [0.5, 2]) is printed "
    "with a verdict; a 'fail' verdict (folding) exits with code 1 after writing the outputs for inspection."
)


def register(subparsers) -> None:
    """Add the ``register`` sub-command."""
    parser = subparsers.add_parser(
        "register", help="rigid or B-spline registration (transform .h5/.tfm, resampled image, Jacobian QA)",
        description=_DESCRIPTION,
        epilog="Inputs: NRRD, NIfTI, MHA images or DICOM series folders; transforms as ITK .h5/.tfm (e.g. saved by "
               "Slicer). Outputs are written atomically and never overwrite an input. Exit codes: 0 success, "
               "1 processing failed (or the Jacobian QA failed), 2 invalid usage or input.",
    )
    parser.add_argument("--fixed", required=True, help="fixed (reference) image: file or DICOM series folder")
    parser.add_argument("--moving", required=True, help="moving image: file or DICOM series folder")
    parser.add_argument("--mode", required=True, choices=("rigid", "bspline"), help="registration type")
    parser.add_argument("--out", required=True, metavar="T.h5",
                        help="output transform (.h5 or .tfm; fixed -> moving, ITK / Slicer FromParent)")
    parser.add_argument("--resampled", metavar="OUT.nrrd",
                        help="also write the moving image resampled onto the fixed grid (linear interpolation)")
    parser.add_argument("--json", metavar="OUT.json", help="write the metric, iterations, time, parameters and QA")
    parser.add_argument("--mask", metavar="MASK", help="binary mask in the fixed image's space restricting the "
                                                       "metric samples (e.g. the body or a region around the "
                                                       "tumour); also the Jacobian QA region for bspline")
    parser.add_argument("--moving-mask", metavar="MASK", help="binary mask in the moving image's space restricting "
                                                              "the metric samples")
    parser.add_argument("--initial", metavar="T.h5", help="initial transform fixed -> moving (e.g. a rigid result "
                                                          "before bspline)")
    parser.add_argument("--init", choices=("geometry", "moments", "none"), default="geometry",
                        help="rigid initialisation without --initial: image centres (default), intensity centres of "
                             "mass, or the identity (scans in one scanner frame)")
    parser.add_argument("--metric", choices=("mattes", "mean_squares", "correlation"),
                        help="similarity metric (default: mattes for rigid, mean_squares for bspline)")
    parser.add_argument("--grid-spacing-mm", type=float, default=25.0,
                        help="bspline control-point spacing at the finest level in mm (default 25)")
    parser.add_argument("--iterations", type=int, help="maximum optimizer iterations per resolution level "
                                                       "(default 200 rigid, 50 bspline)")
    parser.add_argument("--sampling", type=float, help="fraction of the fixed voxels sampled by the metric (default "
                                                       "0.1)")
    parser.add_argument("--max-samples", type=int, default=20000,
                        help="bspline: at most this many metric samples per level (default 20000)")
    parser.add_argument("--working-spacing-mm", type=float,
                        help="resample both images to this isotropic spacing first (anti-aliased), for speed")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the random metric sampling, >= 1 (default 1: reproducible runs)")
    parser.add_argument("--qa-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("LOW", "HIGH"),
                        help="bspline: plausible Jacobian range (default 0.5 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Register, write the transform (and resampled image, JSON), print the metric, time and QA."""
    from ..comparison.registration import (
        TRANSFORM_SUFFIXES,
        read_transform,
        register_bspline,
        register_rigid,
        rigid_motion,
        write_transform,
    )
    from ..errors import InputError, OutputError
    from ..imaging.image import Units, get_units
    from ..imaging.io import read_mask, write_image, write_json
    from ..imaging.resample import resample_to_reference
    from .common import Transaction, check_outputs, read_image_with_frame, require_image_suffix

    inputs = [args.fixed, args.moving, args.mask, args.moving_mask, args.initial]
    check_outputs([args.out, args.resampled, args.json], inputs)
    require_image_suffix(args.resampled, "--resampled")
    if Path(args.out).suffix.lower() not in TRANSFORM_SUFFIXES:
        raise OutputError(f"--out needs a transform file name ({', '.join(TRANSFORM_SUFFIXES)})", args.out)
    if args.iterations is not None and args.iterations < 1:
        raise InputError(f"--iterations must be at least 1, got {args.iterations}")
    fixed, _ = read_image_with_frame(args.fixed, "fixed image")
    moving, _ = read_image_with_frame(args.moving, "moving image")
    fixed_mask = read_mask(args.mask, "fixed mask", allow_empty=False) if args.mask else None
    moving_mask = read_mask(args.moving_mask, "moving mask", allow_empty=False) if args.moving_mask else None
    initial = read_transform(args.initial) if args.initial else None
    options = {"fixed_mask": fixed_mask, "moving_mask": moving_mask, "initial_transform": initial,
               "working_spacing_mm": args.working_spacing_mm, "seed": args.seed}
    if args.metric:
        options["metric"] = args.metric
    if args.iterations is not None:
        options["iterations"] = args.iterations
    if args.sampling is not None:
        options["sampling_fraction"] = args.sampling
    if args.mode == "rigid":
        result = register_rigid(fixed, moving, initialization=args.init, **options)
    else:
        result = register_bspline(fixed, moving, grid_spacing_mm=args.grid_spacing_mm, max_samples=args.max_samples,
                                  qa_range=tuple(args.qa_range), **options)

    transaction = Transaction()
    transaction.add(args.out, lambda: write_transform(result.transform, args.out))
    if args.resampled:
        low = -1000.0 if get_units(moving) == Units.HU else 0.0
        resampled = resample_to_reference(moving, fixed, result.transform, interpolation="linear", default_value=low)
        transaction.add(args.resampled, lambda: write_image(resampled, args.resampled))
    if args.json:
        summary = {"fixed": str(args.fixed), "moving": str(args.moving), "transform": str(args.out),
                   **result.summary()}
        transaction.add(args.json, lambda: write_json(summary, args.json))
    transaction.commit()

    iterations = "+".join(str(i) for i in result.iterations) or "0"
    print(f"{args.mode}: metric {result.metric} {result.initial_metric_value:.6g} -> {result.metric_value:.6g}, "
          f"iterations {iterations}, {result.elapsed_s:.1f} s -> {args.out}")
    if args.mode == "rigid":
        motion = rigid_motion(result.transform)
        t = ", ".join(f"{v:.2f}" for v in motion["translation_mm"])
        print(f"rigid: rotation {motion['rotation_deg']:.2f} deg, translation ({t}) mm at the fixed image centre")
    qa = result.jacobian
    if qa is not None:
        print(f"Jacobian QA ({qa.region}): min {qa.minimum:.3f}, max {qa.maximum:.3f}, folding "
              f"{100 * qa.folding_fraction:.3g}%, outside [{qa.lower:g}, {qa.upper:g}] "
              f"{100 * qa.outside_range_fraction:.3g}% -> {qa.verdict.upper()}: {qa.message}")
        if qa.verdict == "fail":
            return 1
    return 0
