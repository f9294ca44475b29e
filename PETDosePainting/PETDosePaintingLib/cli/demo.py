"""``petdp demo``: run the end-to-end demo on built-in synthetic data."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the end-to-end demo on the built-in synthetic patient",
        description="Build the synthetic patient, run the analysis, and write images (NRRD), summary.json "
                    "and a 3D Slicer scene demo.mrb into the output folder.",
    )
    parser.add_argument("--out", default="demo_out",
                        help="output folder: new, empty, or a previous demo output (default: demo_out)")
    parser.add_argument("--quick", action="store_true", help="smaller data for a fast run (tests)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where everything is."""
    from ..pipeline.demo import run_demo

    result = run_demo(args.out, quick=args.quick, log=lambda msg: print(f"[demo] {msg}"))
    print(f"[demo] done in {result.summary.get('runtime_s', 0):.1f} s; outputs in {result.out_dir.resolve()}:")
    for key, path in result.files.items():
        print(f"  {key:<22} {path}")
    print("[demo] baseline GTV, every method against the truth (accuracy.csv):")
    print(f"  {'method':<13} {'volume mL':>9} {'Dice':>6} {'Se':>6} {'PPV':>6} {'HD95 mm':>8} {'time s':>7}")
    for row in result.accuracy:
        if row["status"] == "ok":
            print(f"  {row['method']:<13} {row['volume_ml']:9.2f} {row['dice']:6.3f} {row['sensitivity']:6.3f} "
                  f"{row['ppv']:6.3f} {row['hd95_mm']:8.2f} {row['seconds']:7.2f}")
        else:
            print(f"  {row['method']:<13} refused: {row['note'][:90]}")
    gtv = result.summary.get("gtv")
    if gtv:
        print(f"[demo] GTV ({gtv['method']}): {gtv['volume_ml']:.2f} mL vs truth {gtv['truth_volume_ml']:.2f} mL "
              f"({gtv['volume_error_pct']:+.1f}%), Dice {gtv['dice_vs_truth_mask']:.3f}")
    print(f"[demo] open {result.files['scene']} in 3D Slicer (File > Add Data, or drag and drop)")
    return 0
