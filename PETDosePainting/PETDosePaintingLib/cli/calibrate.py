"""``petdp calibrate``: fit the adaptive and iterative threshold constants for a scanner protocol."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``calibrate`` sub-command."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit adaptive/iterative threshold constants (Nestle, Schaefer, Daisne, Black, ITM, van Dalen) "
             "on simulated sphere phantoms",
        description="Image homogeneous spheres (0.5-100 mL, sphere-to-background 2-16) with the protocol, find "
                    "for each the threshold that reproduces its true volume, and regress each method's "
                    "predictor to get scanner-specific constants (pet_segmentation.md §3). By default the "
                    "spheres are imaged with the digital patient's PET scanner simulation; --gaussian-fwhm "
                    "uses a Gaussian-blur-and-noise stand-in instead. Use the result with "
                    "'petdp segment --calibration CAL.json'.",
    )
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--scanner", choices=["default", "quick"], default="default",
                        help="scanner simulation configuration (default: the digital patient's)")
    parser.add_argument("--count-level", default=None, help="scanner count level: low, typical, high or a number")
    parser.add_argument("--gaussian-fwhm", type=float, help="use a Gaussian imager of this FWHM (mm) instead")
    parser.add_argument("--noise-cov", type=float, default=0.10, help="Gaussian imager noise COV at SUV 1")
    parser.add_argument("--voxel", type=float, default=4.0, help="PET voxel size in mm (default 4)")
    parser.add_argument("--volumes", type=float, nargs="+", help="sphere volumes in mL (default 0.5 ... 100)")
    parser.add_argument("--sbrs", type=float, nargs="+", help="sphere-to-background ratios (default 2 4 8 16)")
    parser.add_argument("--repetitions", type=int, default=1, help="noise realisations per sphere")
    parser.add_argument("--methods", nargs="+", help="methods to calibrate (default all calibratable)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (deterministic output)")
    parser.add_argument("--description", default="", help="protocol description stored in the file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate and write the constants."""
    from ..imaging.io import ensure_not_input
    from ..phantom.pet_scanner import ScannerConfig
    from ..segmentation.calibration import GaussianImager, calibrate, scanner_imager

    ensure_not_input(args.out, [])
    options = {}
    if args.volumes:
        options["volumes_ml"] = args.volumes
    if args.sbrs:
        options["sbrs"] = args.sbrs
    if args.methods:
        options["methods"] = args.methods
    if args.gaussian_fwhm is not None:
        imager = GaussianImager(fwhm_mm=args.gaussian_fwhm, noise_cov=args.noise_cov)
        description = args.description or f"Gaussian imager, FWHM {args.gaussian_fwhm:g} mm, COV {args.noise_cov:g}"
    else:
        config = ScannerConfig.quick() if args.scanner == "quick" else ScannerConfig()
        if args.count_level is not None:
            level = args.count_level
            config = config.with_count_level(float(level) if level.replace(".", "", 1).isdigit() else level)
        imager = scanner_imager(config)
        description = args.description or f"digital patient PET scanner simulation ({args.scanner})"
    result = calibrate(imager, pet_voxel_mm=args.voxel, repetitions=args.repetitions, rng=args.seed,
                       description=description, **options)
    path = result.write(args.out)
    print(f"calibrated on {len(result.spheres)} imaged spheres ({description})")
    for name, method in result.methods.items():
        constants = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}=[table]"
                              for k, v in method.constants.items())
        rms = method.volume_error_rms_percent
        print(f"  {name:<10} {constants}" + ("" if rms is None else f"   (volume error RMS {rms:.1f} %)"))
    if result.fitted_fwhm_mm is not None:
        print(f"  effective FWHM fitted for the ITM model: {result.fitted_fwhm_mm:.2f} mm")
    print(f"wrote {path}")
    return 0
