"""``petdp convert-rtstruct``: rasterise RT Structure Set ROIs into binary masks on an image grid."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``convert-rtstruct`` sub-command."""
    parser = subparsers.add_parser(
        "convert-rtstruct",
        help="rasterise RT Structure Set ROIs into masks on the grid of a CT series (or any image)",
        description="Rasterise ROIs of a DICOM RT Structure Set onto the grid of an image: the CT series it was "
                    "drawn on, a dose, or any axial image. Contours of one plane combine by the even-odd (XOR) "
                    "rule (holes, several islands); each slice takes the contour plane whose slab (half a plane "
                    "spacing above and below) holds it; POINT and OPEN contours are ignored. One ROI gives one "
                    "mask file; several give one file per ROI in a folder.",
    )
    parser.add_argument("rtstruct", help="DICOM RT Structure Set file")
    parser.add_argument("--image", required=True,
                        help="reference grid: a DICOM series folder (e.g. the planning CT), an RT Dose file, or an "
                             "image file")
    parser.add_argument("--roi", action="append", metavar="NAME", help="ROI to convert (repeatable; default all)")
    parser.add_argument("--out", required=True,
                        help="output mask file (.nrrd, .nii.gz, .mha) for one ROI, or a folder for several")
    parser.add_argument("--subsample", type=int, default=1,
                        help="1 (default): voxels whose centre is inside; s > 1: voxels at least half inside, "
                             "judged on s x s sub-voxels")
    parser.set_defaults(func=run)


def _reference(path: Path):
    """The reference grid, with its frame of reference recorded when the input says it."""
    from ..errors import InputError
    from ..imaging.image import set_frame_of_reference
    from ..imaging.io import read_image

    if not path.exists():
        raise InputError("no such file or directory", path)
    if path.is_dir():
        from ..imaging.dicom_series import read_dicom_series

        series = read_dicom_series(path)
        image = series.image
        if series.identity.frame_of_reference_uid:
            set_frame_of_reference(image, series.identity.frame_of_reference_uid)
        return image
    return read_image(path)


def output_names(names: list[str], suffix: str = ".nrrd") -> dict[str, str]:
    """Safe, distinct file names for ROI names (``PTV 70/35`` -> ``PTV_70_35.nrrd``)."""
    from ..imaging.rtstruct import safe_file_name

    taken: set[str] = set()
    out = {}
    for name in names:
        stem = safe_file_name(name)
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        out[name] = candidate + suffix
    return out


def run(args: argparse.Namespace) -> int:
    """Rasterise first, then write (nothing is written on error)."""
    import sys

    import numpy as np
    import SimpleITK as sitk

    from ..errors import InputError
    from ..imaging.image import mask_volume_ml
    from ..imaging.io import ensure_not_input, image_suffix, write_image
    from ..imaging.rtstruct import NOTES_KEY, read_rtstruct
    from ..pipeline.outputs import prepare_output_dir

    if args.subsample < 1:
        raise InputError(f"--subsample must be a positive integer, got {args.subsample!r}")
    rtstruct, image_path, out = Path(args.rtstruct), Path(args.image), Path(args.out)
    if not rtstruct.is_file():
        raise InputError("no such file", rtstruct)
    ensure_not_input(out, [rtstruct, image_path])
    single = bool(image_suffix(out))
    reference = _reference(image_path)
    masks = read_rtstruct(rtstruct, reference, args.roi, subsample=args.subsample)
    if not masks:
        raise InputError("holds no ROIs", rtstruct)
    if single and len(masks) > 1:
        raise InputError(f"{len(masks)} ROIs selected ({', '.join(masks)}) but --out is one file; choose one with "
                         "--roi NAME or give a folder", out)
    if single:
        targets = {next(iter(masks)): out}
    else:
        if out.exists() and not out.is_dir():
            raise InputError("exists and is not a folder", out)
        targets = {name: out / fname for name, fname in output_names(list(masks)).items()}
        prepare_output_dir(out, "convert-rtstruct")
    for name, mask in masks.items():
        write_image(mask, targets[name])
        if mask.HasMetaDataKey(NOTES_KEY):
            for note in mask.GetMetaData(NOTES_KEY).split(" | "):
                print(f"petdp convert-rtstruct: note: {note}", file=sys.stderr)
        empty = not np.any(sitk.GetArrayViewFromImage(mask))
        print(f"{name}: {mask_volume_ml(mask):.3f} mL{' (EMPTY)' if empty else ''} -> {targets[name]}")
    return 0
