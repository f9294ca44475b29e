"""``petdp hypoxia``: tumour-to-reference ratio map of a hypoxia PET, hypoxic volume and fraction, TMRmax/TMRpeak.

The ratio is the PET divided by the mean uptake in a reference region (muscle, blood pool or background ROI on
the PET grid) or by a venous blood-sample value in the PET's units. HV and HF are counted inside the target
at the tracer's default threshold (the explicit table of
:data:`PETDosePaintingLib.dosepainting.hypoxia.HYPOXIA_THRESHOLDS`) or at ``--threshold``, without island
filtering; ``--boost-mask`` writes a boost contour with islands below ``--min-island-ml`` dropped.
Methods and references: :mod:`PETDosePaintingLib.dosepainting.hypoxia`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``hypoxia`` sub-command."""
    from ..dosepainting.hypoxia import HYPOXIA_THRESHOLDS, REFERENCE_KINDS, TRACERS

    table = "; ".join(f"{t} vs {k}: {e.metric} {'>' if e.strict else '>='} {e.threshold:g} ({e.source})"
                      for (t, k), e in HYPOXIA_THRESHOLDS.items())
    parser = subparsers.add_parser(
        "hypoxia",
        help="hypoxia PET (FMISO/FAZA): ratio map, hypoxic volume and fraction, TMRmax, TMRpeak",
        description="Divide a hypoxia PET by the mean uptake of a reference region (or a blood-sample value), "
                    "and report inside the target the hypoxic volume HV (mL), the hypoxic fraction HF, TMRmax "
                    "and TMRpeak (1 cm3 sphere). Default thresholds: " + table.replace("%", "%%") + ".",
        epilog="Masks must be binary 0/1 on the PET grid. The reference region must not overlap the target. "
               "Exit codes: 0 success, 1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("--pet", required=True, help="hypoxia PET image (SUV or Bq/mL) or DICOM PET folder")
    parser.add_argument("--target", required=True, help="tumour target mask (GTV) on the PET grid")
    parser.add_argument("--tracer", required=True, choices=TRACERS, help="hypoxia tracer (selects the threshold)")
    parser.add_argument("--reference", help="reference-region mask on the PET grid (muscle, blood pool, background)")
    parser.add_argument("--blood-value", type=float, metavar="U",
                        help="venous blood-sample activity in the PET's units (instead of --reference)")
    parser.add_argument("--reference-kind", choices=REFERENCE_KINDS,
                        help="what the reference is (default: muscle for --reference, blood for --blood-value)")
    parser.add_argument("--threshold", type=float, metavar="R",
                        help="ratio threshold (default: the tracer/reference table); hypoxic if ratio >= R")
    parser.add_argument("--out", required=True, help="ratio map image (.nrrd, .nii.gz, .mha)")
    parser.add_argument("--hypoxic-mask", metavar="OUT", help="write the hypoxic voxels of the target as a mask")
    parser.add_argument("--boost-mask", metavar="OUT",
                        help="write a boost contour: hypoxic mask with holes filled and small islands dropped")
    parser.add_argument("--min-island-ml", type=float, default=0.5, metavar="ML",
                        help="--boost-mask: drop islands smaller than this (default 0.5 mL)")
    parser.add_argument("--peak-diameter-mm", type=float, metavar="MM",
                        help="TMRpeak sphere diameter (default 12.41 mm, a 1 cm3 sphere)")
    parser.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute the ratio map and the metrics, then write the outputs."""
    from ..dosepainting.hypoxia import (
        PEAK_DIAMETER_1CM3_MM,
        hypoxia_metrics,
        hypoxic_boost_volume,
        uptake_ratio_map,
    )
    from ..errors import InputError
    from ..imaging.image import check_same_geometry, get_units, mask_volume_ml
    from ..imaging.io import read_mask, write_image, write_json
    from .common import Transaction, check_outputs, read_image_with_frame, require_image_suffix

    if (args.reference is None) == (args.blood_value is None):
        raise InputError("give either --reference (a mask) or --blood-value (a number), not both or neither")
    kind = args.reference_kind or ("blood" if args.blood_value is not None else "muscle")
    if args.blood_value is not None and kind != "blood":
        raise InputError(f"--blood-value needs --reference-kind blood, not {kind}")
    if args.boost_mask is None and args.min_island_ml != 0.5:
        raise InputError("--min-island-ml applies to --boost-mask only (HF is never island-filtered)")
    for path, option in ((args.out, "--out"), (args.hypoxic_mask, "--hypoxic-mask"),
                         (args.boost_mask, "--boost-mask")):
        require_image_suffix(path, option)
    check_outputs([args.out, args.hypoxic_mask, args.boost_mask, args.json],
                  [args.pet, args.target, args.reference])

    pet, _ = read_image_with_frame(args.pet, "PET", modality="PT")
    target = read_mask(args.target, "target mask", allow_empty=False)
    check_same_geometry(pet, target, f"PET {args.pet}", f"target mask {args.target}")
    reference = None
    if args.reference:
        reference = read_mask(args.reference, "reference region", allow_empty=False)
        check_same_geometry(pet, reference, f"PET {args.pet}", f"reference region {args.reference}")
    ratio = uptake_ratio_map(pet, reference, kind, blood_value=args.blood_value, target=target,
                             reference_name=f"the reference region {args.reference}",
                             target_name=f"the tumour target {args.target}")
    metrics = hypoxia_metrics(ratio.ratio, target, tracer=args.tracer, reference_kind=kind,
                              threshold=args.threshold,
                              peak_diameter_mm=args.peak_diameter_mm or PEAK_DIAMETER_1CM3_MM)
    boost = None
    if args.boost_mask:
        boost = hypoxic_boost_volume(metrics.hypoxic_mask, min_island_ml=args.min_island_ml, envelope=target)

    tx = Transaction()
    tx.add(args.out, lambda: write_image(ratio.ratio, args.out))
    if args.hypoxic_mask:
        tx.add(args.hypoxic_mask, lambda: write_image(metrics.hypoxic_mask, args.hypoxic_mask))
    if boost is not None:
        tx.add(args.boost_mask, lambda: write_image(boost, args.boost_mask))
    summary = {
        "command": "hypoxia", "tracer": args.tracer, "pet": str(args.pet), "pet_units": get_units(pet),
        "target": str(args.target),
        "reference": {"kind": kind, "source": ratio.reference_source, "mask": args.reference,
                      "mean": ratio.reference_mean, "sd": ratio.reference_sd, "volume_ml": ratio.reference_volume_ml},
        **metrics.summary(),
        "boost_volume_ml": None if boost is None else mask_volume_ml(boost),
        "min_island_ml": args.min_island_ml if boost is not None else None,
        "outputs": {"ratio": args.out, "hypoxic_mask": args.hypoxic_mask, "boost_mask": args.boost_mask},
    }
    if args.json:
        tx.add(args.json, lambda: write_json(summary, args.json))
    tx.commit()
    metric = {"muscle": "T/M", "blood": "T/B", "background": "T/Bg"}[kind]
    print(f"[hypoxia] reference ({kind}, {ratio.reference_source}): mean {ratio.reference_mean:.4g} "
          f"{get_units(pet) or 'PET units'}")
    print(f"[hypoxia] threshold {metric} {metrics.comparison} {metrics.threshold:g} ({metrics.threshold_source})")
    print(f"[hypoxia] HV {metrics.hv_ml:.2f} mL, HF {metrics.hf:.3f} of {metrics.target_volume_ml:.2f} mL, "
          f"TMRmax {metrics.tmr_max:.3f}, TMRpeak {metrics.tmr_peak:.3f}")
    if summary["boost_volume_ml"] is not None:
        print(f"[hypoxia] boost contour {summary['boost_volume_ml']:.2f} mL (islands < {args.min_island_ml:g} mL "
              "dropped)")
    for note in metrics.notes:
        print(f"[hypoxia] note: {note}")
    print(f"[hypoxia] wrote {args.out}")
    return 0
