"""``petdp adc``: ADC map (mm2/s) from diffusion-weighted images (mono-exponential fit).

Inputs are image files (NRRD, NIfTI, MHA) and/or DICOM folders. b-values come from ``--bvalues`` (one
per input), else from the files (NRRD/MHA metadata key ``PETDP_BValue``) or the DICOM headers
(DiffusionBValue (0018,9087), or the Siemens, GE and Philips private tags; a folder may hold one series
per b-value or one series with several). The fit, the noise-floor mask and the clamp are those of
:func:`PETDosePaintingLib.comparison.diffusion.compute_adc`.

Bad input (one b-value, negative b-values, DWI images on different grids, missing b-values, an output
that would overwrite an input) exits with code 2 and writes nothing.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``adc`` sub-command."""
    parser = subparsers.add_parser(
        "adc",
        help="ADC map (mm2/s) from diffusion-weighted images: WLS, OLS or two-point mono-exponential fit",
        description="Fit S(b) = S0 exp(-b ADC) voxel by voxel and write the ADC map in mm2/s. Methods: wls "
                    "(default; weighted least squares of ln S with weights S^2 from the OLS-predicted signal), "
                    "ols, two-point (lowest and highest b-value). Voxels whose highest-b signal is below "
                    "NOISE_FACTOR x noise SD, or with a non-positive signal, are invalid (value 0, see --mask); "
                    "the ADC is clamped to [0, 3.5e-3] mm2/s. b-values below 150 s/mm2 carry perfusion: use "
                    "--bmin 150 for a perfusion-free ADC.",
        epilog="Outputs are written atomically and never overwrite an input. Exit codes: 0 success, "
               "1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("dwi", nargs="+", metavar="DWI", help="diffusion-weighted image files or DICOM folders")
    parser.add_argument("--bvalues", nargs="+", type=float, metavar="B",
                        help="b-value (s/mm2) of each DWI input, in order (default: from the files' metadata or "
                             "DICOM headers)")
    parser.add_argument("--out", required=True, metavar="ADC.nrrd", help="output ADC map (NRRD, NIfTI or MHA)")
    parser.add_argument("--method", choices=("wls", "ols", "two-point"), default="wls",
                        help="fit method (default: wls)")
    parser.add_argument("--bmin", type=float, metavar="B",
                        help="drop b-values below B s/mm2 (e.g. 150: perfusion-free)")
    parser.add_argument("--bmax", type=float, metavar="B", help="drop b-values above B s/mm2")
    parser.add_argument("--noise-sd", type=float, metavar="SD",
                        help="noise SD per channel in signal units (default: estimated from background air of the "
                             "lowest-b image)")
    parser.add_argument("--noise-factor", type=float, default=3.0, metavar="K",
                        help="noise-floor mask: highest-b signal must be >= K x noise SD (default 3; 0 = off)")
    parser.add_argument("--background-mask", metavar="MASK",
                        help="label image (DWI grid) of background voxels for the noise SD estimate")
    parser.add_argument("--no-clamp", action="store_true", help="do not clamp the ADC to [0, 3.5e-3] mm2/s")
    parser.add_argument("--s0", metavar="OUT", help="also write the fitted S0 image")
    parser.add_argument("--mask", metavar="OUT", help="also write the mask of valid voxels (uint8 0/1)")
    parser.add_argument("--json", metavar="OUT.json", help="write the fit summary (b-values, noise SD, counts) as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the DWI, fit, and write the requested outputs."""
    from pathlib import Path

    from ..comparison.diffusion import compute_adc, read_dwi
    from ..errors import InputError, OutputError
    from ..imaging.io import ensure_not_input, image_suffix, read_image, write_image, write_json

    images = {k: v for k, v in (("--out", args.out), ("--s0", args.s0), ("--mask", args.mask)) if v}
    outputs = {**images, **({"--json": args.json} if args.json else {})}
    inputs = [*args.dwi, *([args.background_mask] if args.background_mask else [])]
    seen: dict[Path, str] = {}
    for option, out in outputs.items():
        ensure_not_input(out, inputs)
        if option in images and not image_suffix(out):
            raise OutputError(f"{option}: unknown image format; use .nrrd, .nii(.gz) or .mha", out)
        resolved = Path(out).resolve()
        if resolved in seen:
            raise OutputError(f"{seen[resolved]} and {option} name the same file", out)
        seen[resolved] = option
    if args.bvalues is not None:
        bad = [b for b in args.bvalues if not b >= 0 or b == float("inf")]
        if bad:
            raise InputError(f"--bvalues must be finite numbers >= 0 (s/mm2); got {', '.join(f'{b:g}' for b in bad)}")

    dwi = read_dwi(args.dwi, args.bvalues)
    background = read_image(args.background_mask) if args.background_mask else None
    result = compute_adc(dwi, method=args.method, b_min=args.bmin, b_max=args.bmax, noise_sd=args.noise_sd,
                         background_mask=background, noise_factor=args.noise_factor,
                         adc_range=None if args.no_clamp else (0.0, 3.5e-3))

    print(f"[adc] {args.method} fit over b = {', '.join(f'{b:g}' for b in result.b_values)} s/mm2 "
          f"(from {len(dwi)} input image(s))")
    if result.noise_sd is not None:
        print(f"[adc] noise SD {result.noise_sd:.4g} ({result.noise_sd_source}); mask: highest-b signal >= "
              f"{result.noise_factor:g} x SD")
    print(f"[adc] valid voxels {result.n_valid} of {result.n_voxels} (below noise floor {result.n_below_noise_floor}, "
          f"non-positive signal {result.n_nonpositive}); clamped low {result.n_clamped_low}, high "
          f"{result.n_clamped_high}")
    for note in result.notes:
        print(f"[adc] note: {note}")
    write_image(result.adc, args.out)
    print(f"[adc] wrote {args.out} (mm2/s)")
    if args.s0:
        write_image(result.s0, args.s0)
        print(f"[adc] wrote {args.s0}")
    if args.mask:
        write_image(result.mask, args.mask)
        print(f"[adc] wrote {args.mask}")
    if args.json:
        write_json({"inputs": [str(p) for p in args.dwi], **result.summary()}, args.json)
        print(f"[adc] wrote {args.json}")
    return 0
