"""``petdp dvh``: cumulative DVH and dose statistics per structure, to CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

#: Columns of the statistics CSV, in order. The first seven are a contract (issue 5): keep them.
CSV_COLUMNS = ("roi", "volume_cc", "mean_gy", "min_gy", "max_gy", "d95_gy", "d2cc_gy", "d98_gy", "d50_gy", "d2_gy",
               "outside_dose_grid_cc", "method")
#: Columns of the optional curves CSV (one row per structure and dose step).
CURVE_COLUMNS = ("roi", "dose_gy", "volume_cc", "volume_pct")


def register(subparsers) -> None:
    """Add the ``dvh`` sub-command."""
    parser = subparsers.add_parser(
        "dvh",
        help="cumulative DVH and dose statistics per structure (RT Structure Set or masks) to CSV",
        description="Cumulative dose-volume histograms and statistics (volume, mean, min, max, D95, D2cc, ...) per "
                    "structure. Structures come from an RT Structure Set, rasterised on the dose grid with in-plane "
                    "sub-sampling (each contour plane is a slab half a plane spacing above and below; no CT "
                    "needed), or from binary masks on the dose grid (each voxel counts whole). The two agree within "
                    "the partial-voxel difference at the structure's surface.",
    )
    parser.add_argument("--dose", required=True, help="dose: a DICOM RT Dose file (.dcm) or an image in Gy "
                                                      "(NRRD/NIfTI/MHA recording units Gy, or see --units)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rtstruct", help="DICOM RT Structure Set file (in the dose's frame of reference)")
    source.add_argument("--mask", action="append", metavar="NAME=MASK",
                        help="a binary mask on the dose grid, named (repeatable)")
    parser.add_argument("--roi", action="append", metavar="NAME",
                        help="with --rtstruct: only these ROIs (repeatable; default all)")
    parser.add_argument("--csv", required=True, help="output CSV: one row per structure")
    parser.add_argument("--curves", help="optional second CSV with the cumulative DVH curves "
                                         "(roi, dose_gy, volume_cc, volume_pct)")
    parser.add_argument("--curve-step", type=float, default=0.01, metavar="GY",
                        help="dose step of the curves in Gy (default 0.01)")
    parser.add_argument("--subsample", type=int, default=4,
                        help="with --rtstruct: in-plane sub-voxels per dose voxel edge (default 4)")
    parser.add_argument("--units", choices=["Gy", "cGy"],
                        help="declare the units of a dose image that records none (cGy is converted to Gy)")
    parser.set_defaults(func=run)


def _parse_masks(items: list[str]) -> dict[str, Path]:
    from ..errors import InputError

    masks: dict[str, Path] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--mask expects NAME=MASK, got {item!r}")
        name, path = (part.strip() for part in item.split("=", 1))
        if not name or not path:
            raise InputError(f"--mask expects NAME=MASK with both parts, got {item!r}")
        if name in masks:
            raise InputError(f"--mask names {name!r} twice")
        masks[name] = Path(path)
    return masks


def load_dose(path: str | Path, declared_units: str | None = None):
    """The dose in Gy: an RT Dose file, or an image recording units Gy (or declared with ``--units``)."""
    import SimpleITK as sitk

    from ..errors import InputError, UnitsError
    from ..imaging.image import Units, get_units, set_units
    from ..imaging.io import read_image

    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; give the RT Dose file (.dcm) or a dose image file", path)
    dose = read_image(path)
    units = get_units(dose)
    if declared_units is not None:
        if units is not None and units != declared_units:
            raise InputError(f"records units {units!r}, which contradicts --units {declared_units}", path)
        if declared_units == "cGy":
            converted = sitk.Cast(dose, sitk.sitkFloat64) * 0.01
            for key in dose.GetMetaDataKeys():
                converted.SetMetaData(key, dose.GetMetaData(key))
            dose = converted
        set_units(dose, Units.GY)
    elif units != Units.GY:
        found = "records no units" if units is None else f"holds {units!r} values"
        raise UnitsError(f"{found}; a dose in Gy is needed (declare a unit-less dose with --units Gy or cGy)", path)
    return dose


def _fmt(value) -> str:
    import math

    if isinstance(value, str):
        return value
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _csv_text(rows: list[dict], columns) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in columns])
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    """Compute every DVH first, then write the CSV file(s): nothing is written on error."""
    import sys

    from ..dosepainting.dvh import dvh_from_mask, dvh_from_rtstruct
    from ..errors import InputError
    from ..imaging.io import ensure_not_input, read_image, write_text

    masks = _parse_masks(args.mask) if args.mask else {}
    if args.roi and not args.rtstruct:
        raise InputError("--roi selects ROIs of --rtstruct; with --mask, name the masks instead")
    if not args.curve_step > 0:
        raise InputError(f"--curve-step must be positive, got {args.curve_step!r}")
    if args.subsample < 1:
        raise InputError(f"--subsample must be a positive integer, got {args.subsample!r}")
    inputs = [args.dose, args.rtstruct, *masks.values()]
    outputs = [p for p in (args.csv, args.curves) if p]
    for out in outputs:
        ensure_not_input(out, inputs)
    if args.curves and Path(args.curves).resolve() == Path(args.csv).resolve():
        raise InputError("--curves and --csv name the same file")
    for path in [args.rtstruct, *masks.values()]:
        if path is not None and not Path(path).exists():
            raise InputError("no such file", path)

    dose = load_dose(args.dose, args.units)
    if args.rtstruct:
        results = dvh_from_rtstruct(dose, args.rtstruct, args.roi, subsample=args.subsample)
    else:
        results = {name: dvh_from_mask(dose, read_image(path), name) for name, path in masks.items()}

    rows = [r.statistics() for r in results.values()]
    curve_rows = []
    if args.curves:
        for r in results.values():
            axis, volume = r.curve(args.curve_step)
            total = r.volume_cc
            curve_rows += [{"roi": r.roi, "dose_gy": float(d), "volume_cc": float(v),
                            "volume_pct": 100.0 * float(v) / total if total > 0 else float("nan")}
                           for d, v in zip(axis, volume, strict=True)]
    csv_text = _csv_text(rows, CSV_COLUMNS)
    curves_text = _csv_text(curve_rows, CURVE_COLUMNS) if args.curves else None
    write_text(csv_text, args.csv)
    if curves_text is not None:
        write_text(curves_text, args.curves)
    for r in results.values():
        for note in r.notes:
            print(f"petdp dvh: note: {note}", file=sys.stderr)
        print(f"{r.roi}: {r.volume_cc:.3f} cm3, mean {_fmt(r.mean_gy) or '-'} Gy, D95 {_fmt(r.d95_gy) or '-'} Gy, "
              f"max {_fmt(r.max_gy) or '-'} Gy")
    print(f"-> {args.csv}" + (f", {args.curves}" if args.curves else ""))
    return 0
