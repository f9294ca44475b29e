"""``petdp suv``: read a PET DICOM series and write its SUV image (QIBA vendor-neutral SUV rules)."""

from __future__ import annotations

import argparse

KINDS = ("bw", "lbm", "lbm-janma", "bsa")


def register(subparsers) -> None:
    """Add the ``suv`` sub-command."""
    parser = subparsers.add_parser(
        "suv",
        help="convert a PET DICOM series to an SUV image",
        description="Read the PET series in DICOM_DIR (a folder, searched recursively, or one file), compute the "
                    "SUV scale factor from its header by the QIBA vendor-neutral pseudo-code (decay correction "
                    "from the radiopharmaceutical start to the scan time; BQML, Philips CNTS and GML units) and "
                    "write the SUV image. Prints the factor and every value it used. Missing or contradictory "
                    "header values are errors naming the tag and the file; the overrides below fill or replace "
                    "them explicitly.",
        epilog="lbm = lean body mass by James with the QIBA coefficients; lbm-janma = Janmahasatian 2005; "
               "bsa = body surface area (DuBois), SUVbsa in cm2/mL.",
    )
    parser.add_argument("dicom_dir", metavar="DICOM_DIR", help="folder (or file) holding the PET series")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output image (.nrrd, .nii.gz, .mha); never inside DICOM_DIR")
    parser.add_argument("--kind", choices=KINDS, default="bw", help="SUV normalisation (default: bw)")
    parser.add_argument("--series-uid", metavar="UID",
                        help="Series Instance UID to use when the folder holds several PET series")
    parser.add_argument("--weight", type=float, metavar="KG", help="patient weight in kg (overrides the header)")
    parser.add_argument("--dose", type=float, metavar="MBQ",
                        help="injected activity in MBq at the radiopharmaceutical start time (overrides the header)")
    parser.add_argument("--height", type=float, metavar="M", help="patient height in metres (overrides the header)")
    parser.add_argument("--sex", choices=("M", "F"), help="patient sex for the lean-body-mass formulas")
    parser.add_argument("--allow-uncorrected", action="store_true",
                        help="accept images without attenuation or decay correction (SUV then not quantitative)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and write the SUV image; print what was used."""
    import numpy as np
    import SimpleITK as sitk

    from ..errors import OutputError
    from ..imaging.dicom_series import read_dicom_series, series_summary, suv_from_series
    from ..imaging.image import DESCRIPTION_KEY
    from ..imaging.io import ensure_not_input, image_suffix, write_image

    if not image_suffix(args.out):
        raise OutputError("unknown image format; use .nrrd, .nii.gz or .mha", args.out)
    ensure_not_input(args.out, [args.dicom_dir])
    series = read_dicom_series(args.dicom_dir, args.series_uid, modality=None if args.series_uid else "PT")
    image, result = suv_from_series(
        series, args.kind, weight_kg=args.weight, dose_bq=None if args.dose is None else args.dose * 1e6,
        height_m=args.height, sex=args.sex, allow_uncorrected=args.allow_uncorrected)
    for line in series_summary(series):
        print(f"[suv] {line}")
    factor = result.factor
    print(f"[suv] factor: {factor:.10g}" if factor is not None else
          f"[suv] factor: per slice, {min(result.factors):.10g} .. {max(result.factors):.10g}")
    for line in result.describe():
        print(f"[suv] {line}")
    shown = f"{factor:.10g}" if factor is not None else "per slice"
    image.SetMetaData(DESCRIPTION_KEY, f"{result.units} from DICOM series {series.series_instance_uid}; "
                                       f"factor {shown}; {result.method}")
    values = sitk.GetArrayViewFromImage(image)
    written = write_image(image, args.out)
    print(f"[suv] {result.units} max {float(np.max(values)):.6g}, mean {float(np.mean(values)):.6g}; "
          f"wrote {written}")
    return 0
