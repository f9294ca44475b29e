"""``petdp segment``: segment a PET lesion from a seed with any registered method."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``segment`` sub-command."""
    parser = subparsers.add_parser(
        "segment",
        help="segment a PET lesion from a seed point (gradient, thresholds, adaptive, clustering, ...)",
        description="Segment the lesion under a seed point. The output mask has exactly the PET geometry. "
                    "With only a seed, every method works in the seed's own uptake hill (a watershed region "
                    "cut from neighbouring hot structures at saddles deeper than half their contrast).",
    )
    parser.add_argument("pet", nargs="?", help="PET image in SUV (NRRD/NIfTI/MHA) or a DICOM PET series directory "
                                    "(converted to SUVbw)")
    parser.add_argument("--method", help="segmentation method (required; see --list-methods)")
    parser.add_argument("--seed", nargs=3, type=float, metavar=("X", "Y", "Z"), help="seed point, LPS mm")
    parser.add_argument("--out", help="output mask (.nrrd, .nii.gz, .mha; required)")
    parser.add_argument("--json", help="write the method's result (threshold, background, ...) as JSON")
    parser.add_argument("--fwhm", type=float, help="scanner resolution: effective image FWHM in mm")
    parser.add_argument("--fraction", type=float, help="threshold as a fraction (e.g. of SUVmax, default 0.41)")
    parser.add_argument("--absolute", type=float, help="absolute SUV threshold (e.g. 2.5)")
    parser.add_argument("--roi", help="binary mask on the PET grid restricting the search")
    parser.add_argument("--background", help="binary mask on the PET grid of a background reference region")
    parser.add_argument("--ct", help="CT (file or DICOM directory) for co-segmentation; resampled onto the PET "
                                     "grid with linear interpolation (PET/CT share a frame of reference)")
    parser.add_argument("--methods", nargs="+", help="for 'consensus': the methods to combine")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other method parameter (repeatable; VALUE as JSON when it parses), "
                             "e.g. --param roi_radius_mm=50 --param 'classes_range=[2,4]'")
    parser.add_argument("--units", choices=["SUVbw", "SUVlbm", "SUVlbmJanma", "SUVbsa"],
                        help="declare the SUV kind of a PET file that records no units (files written by petdp "
                             "record them); methods with absolute SUV thresholds refuse unit-less images")
    parser.add_argument("--calibration", help="constants fitted by 'petdp calibrate' (JSON) for this method")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    parser.set_defaults(func=run)


def _parse_params(items: list[str]) -> dict:
    """``NAME=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, true/false, lists, objects)."""
    import json

    from ..errors import InputError

    params = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        name, value = (part.strip() for part in item.split("=", 1))
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = {"True": True, "False": False}.get(value, value)
    return params


def load_pet_suv(path: str | Path, declared_units: str | None = None):
    """The PET for segmentation: a DICOM PET directory (converted to SUVbw) or an image file.

    A file's recorded units must be an SUV kind; a file recording none keeps none unless the user
    declares them (``declared_units``): scale-invariant methods (fractions of SUVmax, gradient,
    clustering) work either way, and methods with absolute SUV thresholds refuse unit-less images.
    """
    from ..errors import InputError, UnitsError
    from ..imaging.image import SUV_UNITS, get_units, set_units
    from ..imaging.io import read_image

    path = Path(path)
    if path.is_dir():
        from ..imaging.dicom_series import read_pet_suv

        image, _ = read_pet_suv(path, kind="bw")
        return image
    image = read_image(path)
    units = get_units(image)
    if declared_units is not None:
        if units is not None and units != declared_units:
            raise InputError(f"records units {units!r}, which contradicts --units {declared_units}", path)
        set_units(image, declared_units)
    elif units is not None and units not in SUV_UNITS:
        raise UnitsError(f"holds {units!r} values; give an SUV image (petdp suv converts DICOM PET)", path)
    return image


def run(args: argparse.Namespace) -> int:
    """Run the method and write the mask (and JSON)."""
    from ..errors import InputError
    from ..imaging.io import ensure_not_input, read_image, write_image, write_json
    from ..imaging.resample import resample_to_reference
    from ..segmentation.registry import METHODS, get_method, run_method

    if args.list_methods:
        for name, info in METHODS.items():
            print(f"{name:<14} {info.description}")
        return 0
    missing = [name for name, value in (("PET", args.pet), ("--method", args.method), ("--out", args.out))
               if not value]
    if missing:
        raise InputError(f"missing {', '.join(missing)} (see petdp segment --help)")
    info = get_method(args.method)
    inputs = [args.pet, args.roi, args.background, args.ct, args.calibration]
    ensure_not_input(args.out, inputs)
    if args.json:
        ensure_not_input(args.json, inputs)
    pet = load_pet_suv(args.pet, args.units)
    params = {}
    if args.calibration:
        from ..segmentation.calibration import load_calibration

        params.update(load_calibration(args.calibration).parameters_for(args.method))
    params.update(_parse_params(args.param))
    params.update({"fraction": args.fraction, "absolute": args.absolute, "methods": args.methods})
    if args.fwhm is not None:
        # The scanner resolution describes the image, not a method: methods that do not model it ignore it.
        if "fwhm_mm" in info.parameters:
            params["fwhm_mm"] = args.fwhm
        else:
            print(f"petdp segment: note: method {args.method!r} does not use the scanner FWHM; --fwhm ignored")
    if args.ct:
        params["ct"] = resample_to_reference(read_image(args.ct), pet, interpolation="linear", default_value=-1000)
    elif info.needs_ct:
        raise InputError(f"method {args.method!r} needs a CT (--ct)")
    roi = read_image(args.roi) if args.roi else None
    background = read_image(args.background) if args.background else None
    if args.seed is None and roi is None:
        raise InputError("give a seed (--seed X Y Z, LPS mm) or an ROI (--roi)")
    result = run_method(args.method, pet, args.seed, roi, background, **params)
    write_image(result.mask, args.out)
    summary = result.summary()
    if args.json:
        write_json({"pet": str(args.pet), "seed_lps_mm": args.seed, "mask": str(args.out), **summary}, args.json)
    threshold = "" if result.threshold is None else f", threshold {result.threshold:.3g}"
    background_txt = "" if result.background is None else f", background {result.background:.3g}"
    print(f"{args.method}: {result.volume_ml:.2f} mL{threshold}{background_txt} -> {args.out}")
    return 0
