"""``petdp compare``: agreement of N masks (e.g. GTV_CT, GTV_MRI, GTV_PET), pairwise or against a reference.

Writes one CSV row per pair of masks, or per mask against ``--reference`` (columns
:data:`~PETDosePaintingLib.comparison.reports.PAIR_COLUMNS`, a stable contract beginning ``a, b,
volume_a_ml, volume_b_ml, dice, jaccard, sensitivity, ppv, hd_mm, hd95_mm, msd_mm``), and optionally
the Table-2-style volume table (``--table2``), the overlap matrix (``--matrix``), everything as JSON
(``--json``) and PNG plots (``--plots``: Dice heatmap; volume over time with ``--times``).

In each row ``b`` is the reference of the pair: sensitivity = |A∩B|/|B|, PPV = |A∩B|/|A|. Definitions,
units and the handling of masks on different grids are those of
:mod:`PETDosePaintingLib.comparison.metrics`; the tables are built by
:mod:`PETDosePaintingLib.comparison.reports`.

Every input is read and checked, and every number computed, before anything is written: bad input
(a mask that is not 0/1, an empty mask, masks in different DICOM frames of reference or that do not
overlap in space, inconsistent options) exits with code 2 and writes nothing.
"""

from __future__ import annotations

import argparse

_DESCRIPTION = (
    "Compare masks pairwise (or each against --reference) and report volume (mL, voxel count x voxel volume on "
    "each mask's own grid), Dice, Jaccard, sensitivity, PPV, Hausdorff distance, HD95 and mean surface distance "
    "(mm). In each row b is the reference of the pair: sensitivity = |A∩B|/|B|, PPV = |A∩B|/|A|. Surface distances "
    "follow the surface-element definition of DeepMind's surface-distance package (surfels on the voxel-corner "
    "grid weighted by their marching-cubes area; HD95 = the larger of the two directed area-weighted 95th "
    "percentiles; MSD = the mean of the two directed average distances). Masks on different grids are compared in "
    "physical space on a common grid (nearest neighbour); masks with different DICOM frames of reference are refused."
)


def register(subparsers) -> None:
    """Add the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        "compare",
        help="compare N masks pairwise or against a reference (Dice, Jaccard, Se, PPV, HD95, MSD; Table 2; matrix)",
        description=_DESCRIPTION,
        epilog="Inputs: NRRD, NIfTI or MHA binary masks (0/1). Outputs are written atomically, only after every "
               "input was checked, and never overwrite an input. Exit codes: 0 success, 1 processing failed, "
               "2 invalid usage or input.",
    )
    parser.add_argument("masks", nargs="+", metavar="MASK", help="mask files (at least two without --reference)")
    parser.add_argument("--names", nargs="+", metavar="NAME",
                        help="one name per MASK (default: the file names without extension), e.g. GTV_CT GTV_PET")
    parser.add_argument("--reference", metavar="REF", help="reference mask (e.g. pathology): compare each MASK "
                                                           "against it instead of pairwise")
    parser.add_argument("--reference-name", metavar="NAME", help="name of the reference (default: its file name)")
    parser.add_argument("--csv", metavar="OUT.csv", help="write the pair rows as CSV (stable columns)")
    parser.add_argument("--json", metavar="OUT.json", help="write everything computed as JSON")
    parser.add_argument("--table2", metavar="OUT.csv",
                        help="write the Table-2-style volume table (structure x volume and agreement with the "
                             "reference; intersection and union of the masks) as CSV")
    parser.add_argument("--matrix", metavar="OUT.csv", help="write the pairwise overlap matrix of all masks (and the "
                                                            "reference) as CSV: Dice, Jaccard, HD, HD95, MSD, "
                                                            "centroid shift")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR (Dice heatmap; volume over time "
                                                       "with --times)")
    parser.add_argument("--times", nargs="+", type=float, metavar="T",
                        help="one time per MASK (fraction number or day) for the volume-over-time plot")
    parser.add_argument("--groups", nargs="+", metavar="G",
                        help="one structure name per MASK grouping the points of the volume-over-time plot into "
                             "curves (default: one curve)")
    parser.add_argument("--time-label", default="fraction", help="x-axis label of the volume-over-time plot "
                                                                 "(default: fraction)")
    parser.add_argument("--grid", choices=("finest", "reference"), default="finest",
                        help="common grid of a pair on different grids: the finer spacing on the axes of b (default), "
                             "or b's own grid")
    parser.add_argument("--nonzero", action="store_true",
                        help="take every non-zero voxel as inside (default: refuse masks that are not 0/1)")
    parser.set_defaults(func=run)


def _default_name(path: str) -> str:
    """A mask's default name: its file name without the image suffix (``gtv_ct.nii.gz`` -> ``gtv_ct``)."""
    from pathlib import Path

    from ..imaging.io import image_suffix

    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(path).stem


def run(args: argparse.Namespace) -> int:
    """Check the inputs, compute every requested report, then write the files."""
    from pathlib import Path

    import SimpleITK as sitk

    from ..comparison.metrics import combine_masks
    from ..comparison.reports import (
        PAIR_COLUMNS,
        compare_pairs,
        csv_text,
        overlap_matrix,
        pair_rows,
        volume_table,
    )
    from ..errors import InputError, OutputError
    from ..imaging.image import mask_volume_ml
    from ..imaging.io import ensure_not_input, read_mask, to_json_text, write_text

    # --- options ------------------------------------------------------------------------------------
    if args.reference is None and len(args.masks) < 2:
        raise InputError(f"need at least two masks to compare (got {len(args.masks)}), or give --reference")
    names = list(args.names) if args.names else [_default_name(p) for p in args.masks]
    if len(names) != len(args.masks):
        raise InputError(f"--names gives {len(names)} name(s) for {len(args.masks)} mask(s); give one per mask")
    ref_name = None
    if args.reference is not None:
        ref_name = args.reference_name or _default_name(args.reference)
        names_all = [*names, ref_name]
    else:
        if args.reference_name:
            raise InputError("--reference-name needs --reference")
        names_all = names
    duplicates = sorted({n for n in names_all if names_all.count(n) > 1})
    if duplicates:
        raise InputError(f"mask names must be unique; repeated: {', '.join(duplicates)} (use --names / "
                         "--reference-name)")
    if args.times is not None and len(args.times) != len(args.masks):
        raise InputError(f"--times gives {len(args.times)} value(s) for {len(args.masks)} mask(s); give one per mask")
    if args.groups is not None:
        if args.times is None:
            raise InputError("--groups needs --times")
        if len(args.groups) != len(args.masks):
            raise InputError(f"--groups gives {len(args.groups)} name(s) for {len(args.masks)} mask(s)")
    inputs = [*args.masks, *([args.reference] if args.reference else [])]
    files = {k: v for k, v in (("--csv", args.csv), ("--json", args.json), ("--table2", args.table2),
                               ("--matrix", args.matrix)) if v}
    seen: dict[Path, str] = {}
    for option, out in files.items():
        ensure_not_input(out, inputs)
        resolved = Path(out).resolve()
        if resolved in seen:
            raise OutputError(f"{seen[resolved]} and {option} name the same file", out)
        seen[resolved] = option
    if args.plots:
        ensure_not_input(args.plots, inputs)
        for out in files.values():
            if Path(args.plots).resolve() == Path(out).resolve():
                raise OutputError("--plots names the same path as another output", args.plots)
        if Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise OutputError("exists and is not a directory", args.plots)

    # --- inputs -------------------------------------------------------------------------------------
    masks = {}
    for name, path in zip(names_all, inputs, strict=True):
        image = read_mask(path, nonzero=args.nonzero)
        if not sitk.GetArrayViewFromImage(image).any():
            raise InputError("is empty (no voxel set): its agreement and surface distances are undefined", path)
        masks[name] = image
    structures = {n: masks[n] for n in names}

    # --- computation (nothing written yet) -----------------------------------------------------------
    grid = "reference" if args.grid == "reference" else "finest"
    pairs = compare_pairs(masks, reference=ref_name, grid=grid)
    rows = pair_rows(pairs, masks)
    combination = combine_masks(structures, grid=grid) if len(structures) >= 2 else None
    table = volume_table(masks, reference=ref_name, grid=grid, pairs=pairs) if (args.table2 or args.json) else None
    need_matrix = bool(args.matrix or args.plots or args.json)
    matrix = overlap_matrix(masks, grid=grid, pairs=pairs) if need_matrix else None
    pngs: dict[str, bytes] = {}
    if args.plots:
        from ..pipeline.plots import render_matrix_heatmap, render_volume_over_time

        pngs["dice_matrix.png"] = render_matrix_heatmap(matrix.names, matrix.matrix("dice"), metric="dice")
        if args.times is not None:
            groups = args.groups or ["volume"] * len(names)
            curves: dict[str, list[tuple[float, float]]] = {}
            for group, t, name in zip(groups, args.times, names, strict=True):
                curves.setdefault(group, []).append((float(t), mask_volume_ml(structures[name])))
            pngs["volume_over_time.png"] = render_volume_over_time(curves, time_label=args.time_label)

    # --- report and write ------------------------------------------------------------------------------
    print(_format_rows(rows))
    if combination is not None:
        print(f"[compare] intersection of {', '.join(combination.names)}: {combination.intersection_ml:.3f} mL; "
              f"union: {combination.union_ml:.3f} mL (common grid "
              f"{'x'.join(f'{s:g}' for s in combination.grid_spacing_mm)} mm)")
    if args.csv:
        write_text(csv_text(PAIR_COLUMNS, rows), args.csv)
        print(f"[compare] wrote {args.csv}")
    if args.table2:
        write_text(table.csv_text(), args.table2)
        print(f"[compare] wrote {args.table2}")
    if args.matrix:
        write_text(matrix.csv_text(), args.matrix)
        print(f"[compare] wrote {args.matrix}")
    if args.json:
        payload = {
            "inputs": dict(zip(names_all, inputs, strict=True)), "reference": ref_name, "grid": args.grid,
            "pairs": rows, "combination": None if combination is None else combination.summary(),
            "table2": None if table is None else table.to_dict(),
            "matrix": None if matrix is None else matrix.to_dict(),
        }
        write_text(to_json_text(payload), args.json)
        print(f"[compare] wrote {args.json}")
    if pngs:
        from ..pipeline.outputs import prepare_output_dir
        from ..pipeline.plots import write_png

        folder = prepare_output_dir(args.plots, "compare")
        for filename, data in pngs.items():
            write_png(data, folder / filename)
            print(f"[compare] wrote {folder / filename}")
    return 0


_PRINTED = (("dice", "Dice", "{:.3f}"), ("jaccard", "Jaccard", "{:.3f}"), ("sensitivity", "Sens", "{:.3f}"),
            ("ppv", "PPV", "{:.3f}"), ("hd95_mm", "HD95_mm", "{:.2f}"), ("msd_mm", "MSD_mm", "{:.2f}"))


def _format_rows(rows) -> str:
    """Aligned text table of the pair rows (volumes in mL, distances in mm)."""
    headers = ["a", "b", "vol_a_mL", "vol_b_mL", *(h for _, h, _ in _PRINTED)]
    lines = []
    for r in rows:
        cells = [r["a"], r["b"], f"{r['volume_a_ml']:.3f}", f"{r['volume_b_ml']:.3f}"]
        cells += ["-" if r[k] is None else fmt.format(r[k]) for k, _, fmt in _PRINTED]
        lines.append(cells)
    widths = [max(len(row[c]) for row in [headers, *lines]) for c in range(len(headers))]
    out = []
    for row in [headers, *lines]:
        out.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1])]
                             + [cell.rjust(w) for cell, w in zip(row[2:], widths[2:], strict=True)]).rstrip())
    return "\n".join(out)
