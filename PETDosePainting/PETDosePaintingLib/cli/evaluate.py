"""``petdp evaluate``: agreement of segmentation masks with a truth mask (TG-211 metrics).

Prints, per mask, the volumes, volume error, Dice, Jaccard, sensitivity, PPV, HD, HD95 and mean
surface distance as an aligned table, and optionally writes them to CSV and/or JSON. Definitions,
units and the handling of masks on different grids are those of
:mod:`PETDosePaintingLib.comparison.metrics`.

Masks must be binary (0/1); a mask holding other values is refused with a message naming the file,
unless ``--nonzero`` is given, which takes every non-zero voxel as inside (e.g. a label map exported
with value 255). An empty truth mask is refused; an empty segmentation is refused unless
``--allow-empty`` is given, which reports it (Dice 0, distances blank).

The CSV columns (:data:`CSV_COLUMNS`) are a contract other tools rely on: keep them stable.
"""

from __future__ import annotations

import argparse

#: Columns of the CSV written by ``--csv``, in order (a stable contract). Volumes in mL (each on its own
#: grid), distances in mm, volume error in %, ratios dimensionless, numbers to 6 significant digits;
#: empty cells for undefined values. ``reference_grid`` is ``shared`` (same grid), ``finest`` or
#: ``reference`` (the truth's lattice, ``--grid truth``); ``grid_spacing_mm`` reads like ``1x1x2`` (i, j, k).
CSV_COLUMNS = (
    "mask", "truth", "volume_ml", "truth_volume_ml", "dice", "jaccard", "sensitivity", "ppv",
    "volume_error_pct", "hd_mm", "hd95_mm", "msd_mm", "reference_grid", "grid_spacing_mm", "centroid_shift_mm",
)

#: CSV column -> field of :class:`~PETDosePaintingLib.comparison.metrics.OverlapMetrics`.
_FIELDS = {"truth": "reference", "truth_volume_ml": "reference_volume_ml"}

#: Columns of the printed table: (header, field, format).
_TABLE = (
    ("volume_mL", "volume_ml", "{:.3f}"),
    ("truth_mL", "reference_volume_ml", "{:.3f}"),
    ("vol_err_%", "volume_error_pct", "{:+.1f}"),
    ("Dice", "dice", "{:.3f}"),
    ("Jaccard", "jaccard", "{:.3f}"),
    ("Sens", "sensitivity", "{:.3f}"),
    ("PPV", "ppv", "{:.3f}"),
    ("HD_mm", "hd_mm", "{:.2f}"),
    ("HD95_mm", "hd95_mm", "{:.2f}"),
    ("MSD_mm", "msd_mm", "{:.2f}"),
)


def register(subparsers) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="compare segmentation masks with a truth mask (Dice, Jaccard, Se, PPV, HD95, MSD...)",
        description="Compare each MASK with the truth mask and print Dice, Jaccard, sensitivity, PPV, "
                    "volume error, Hausdorff distance, HD95 and mean surface distance (surface-element "
                    "definition of DeepMind's surface-distance; distances in mm). Masks on different grids "
                    "are compared in physical space on a common grid (nearest neighbour).",
        epilog="Inputs: NRRD, NIfTI or MHA binary masks (0/1). Outputs are written atomically and never "
               "overwrite an input. Exit codes: 0 success, 1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("masks", nargs="+", metavar="MASK", help="segmentation mask file(s) to evaluate")
    parser.add_argument("--truth", required=True, metavar="T", help="truth (reference) mask file")
    parser.add_argument("--csv", metavar="OUT.csv", help="write the results as CSV (stable column names)")
    parser.add_argument("--json", metavar="OUT.json", help="write the full results as JSON")
    parser.add_argument("--grid", choices=("finest", "truth"), default="finest",
                        help="common grid for masks on different grids: the finer spacing of the pair on the "
                             "axes of the truth (default), or the truth's own grid")
    parser.add_argument("--nonzero", action="store_true",
                        help="take every non-zero voxel as inside (default: refuse masks that are not 0/1)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="report an empty segmentation (Dice 0, distances blank) instead of refusing it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the masks, print the table, write the requested files."""
    from pathlib import Path

    import SimpleITK as sitk

    from ..comparison.metrics import compare_masks
    from ..errors import InputError, OutputError
    from ..imaging.io import ensure_not_input, read_mask, write_json, write_text

    inputs = [args.truth, *args.masks]
    outputs = [p for p in (args.csv, args.json) if p]
    for out in outputs:
        ensure_not_input(out, inputs)
    if args.csv and args.json and Path(args.csv).resolve() == Path(args.json).resolve():
        raise OutputError("--csv and --json name the same file", args.csv)

    truth = read_mask(args.truth, "truth mask", nonzero=args.nonzero)
    masks = [(path, read_mask(path, nonzero=args.nonzero)) for path in args.masks]
    if not sitk.GetArrayViewFromImage(truth).any():
        raise InputError("the truth mask is empty (no voxel set)", args.truth)
    for path, mask in masks:
        if not args.allow_empty and not sitk.GetArrayViewFromImage(mask).any():
            raise InputError("is empty (no voxel set); pass --allow-empty to report it (Dice 0, distances blank)",
                             path)

    grid = "reference" if args.grid == "truth" else "finest"
    results = [compare_masks(mask, truth, mask_name=str(path), reference_name=str(args.truth), grid=grid,
                             allow_empty=args.allow_empty) for path, mask in masks]

    print(format_table(results))
    if args.csv:
        write_text(csv_text(results), args.csv)
        print(f"[evaluate] wrote {args.csv}")
    if args.json:
        from dataclasses import asdict

        write_json({"truth": str(args.truth), "grid": args.grid, "results": [asdict(r) for r in results]},
                   args.json)
        print(f"[evaluate] wrote {args.json}")
    return 0


def _value(result, column: str):
    if column == "grid_spacing_mm":
        return "x".join(f"{s:g}" for s in result.grid_spacing_mm)
    return getattr(result, _FIELDS.get(column, column))


def csv_text(results) -> str:
    """CSV text (header :data:`CSV_COLUMNS`) for a list of ``OverlapMetrics``; ``None`` -> empty cell."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        row = []
        for column in CSV_COLUMNS:
            value = _value(result, column)
            row.append("" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value))
        writer.writerow(row)
    return buffer.getvalue()


def format_table(results) -> str:
    """The aligned text table printed by ``petdp evaluate``; undefined values show as ``-``."""
    if not results:
        return ""
    first = results[0]
    lines = [f"truth: {first.reference} ({first.reference_volume_ml:.3f} mL); volumes in mL, distances in mm"]
    headers = ["mask", *(h for h, _, _ in _TABLE), "grid"]
    rows = [[r.mask, *(("-" if getattr(r, f) is None else fmt.format(getattr(r, f))) for _, f, fmt in _TABLE),
             f"{r.reference_grid} {_value(r, 'grid_spacing_mm')}"] for r in results]
    widths = [max(len(row[c]) for row in [headers, *rows]) for c in range(len(headers))]
    for row in [headers, *rows]:
        cells = ([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:-1], widths[1:-1], strict=True)]
                 + [row[-1].ljust(widths[-1])])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
