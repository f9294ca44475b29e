"""``petdp prescribe``: a dose-painting prescription from PET (by numbers, by contours, or nested levels).

Modes (``--mode``):

* ``dpbn``: voxel prescription, PET mapped to [--dose-min, --dose-max] Gy inside the target (linear clipped by
  default; ``I_high`` = 95th percentile in the target, ``I_low`` = 25 % of it), grey-level dilation by
  ``--margin-mm`` (default 2.5 mm). ``--out`` is the continuous map.
* ``boost``: --dose-min to the target, --dose-max to a boost sub-volume (``--boost-fraction`` of the PET
  maximum in the target, default 0.5, or ``--boost-volume``), with ``--margin-mm`` (default 0) around it.
* ``levels``: the dpbn map quantised to ``--levels`` nested levels (default 5, equal steps; ``--level-method
  lloyd-max`` for 1-D k-means). ``--out`` is the level map; ``--continuous`` writes the continuous map.

Methods, references and defaults: :mod:`PETDosePaintingLib.dosepainting.prescription` and
:mod:`PETDosePaintingLib.dosepainting.levels`. The map lives on ``--grid`` (an image), else the ``--ct``
series grid, else the target's grid; the PET is resampled onto it with linear interpolation, which needs a
shared frame of reference (recorded Frame of Reference UIDs, or ``--assume-same-frame``).

Every input is read and checked, and everything is computed, before anything is written; if writing fails
half-way, the files written by this run are removed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODES = ("dpbn", "boost", "levels")


def register(subparsers) -> None:
    """Add the ``prescribe`` sub-command."""
    from ..dosepainting.levels import ASSIGNMENTS, LEVEL_METHODS
    from ..dosepainting.prescription import MAPPINGS

    parser = subparsers.add_parser(
        "prescribe",
        help="dose-painting prescription from PET (dpbn voxel map, boost sub-volume, or nested levels)",
        description="Make a dose-painting prescription (Gy) from a PET inside a target. dpbn: linear clipped "
                    "mapping (Vanderstraeten 2006 anchors: I_high = 95th percentile in the target, I_low = 25 %% "
                    "of it) with a 2.5 mm grey-level dilation (Differding 2017). boost: base dose to the target "
                    "and boost dose to the 50 %%-of-maximum sub-volume (or a given volume). levels: the dpbn map "
                    "quantised to nested levels PTV_DP_7000 ... (5 equal steps by default). The PET is resampled "
                    "onto the dose grid with linear interpolation.",
        epilog="Inputs: PET as an image file or a DICOM series folder; masks as binary 0/1 images. Outputs are "
               "written atomically, never over an input, and only after every check passed. Exit codes: 0 "
               "success, 1 processing failed, 2 invalid usage or input.",
    )
    parser.add_argument("--pet", required=True, help="PET image (SUV or Bq/mL) or DICOM PET folder")
    parser.add_argument("--target", required=True, help="target mask (GTV_PET or PTV), binary")
    parser.add_argument("--mode", choices=MODES, default="dpbn", help="prescription type (default: dpbn)")
    parser.add_argument("--dose-min", type=float, default=70.0, metavar="GY",
                        help="D_low (dpbn/levels) or base dose (boost), Gy (default 70)")
    parser.add_argument("--dose-max", type=float, default=86.0, metavar="GY",
                        help="D_high (dpbn/levels) or boost dose (boost), Gy (default 86)")
    parser.add_argument("--out", required=True, help="prescription image (.nrrd, .nii.gz, .mha), Gy")
    parser.add_argument("--mapping", choices=MAPPINGS, default="linear",
                        help="image-to-dose mapping (default linear; log = Brahme/log shape)")
    parser.add_argument("--margin-mm", type=float, default=None, metavar="MM",
                        help="dpbn/levels: grey-level dilation radius (default 2.5); boost: margin around the "
                             "boost volume (default 0)")
    parser.add_argument("--i-high-percentile", type=float, default=95.0, metavar="P",
                        help="I_high = this percentile of the PET in the target (default 95)")
    parser.add_argument("--i-low-fraction", type=float, default=0.25, metavar="F",
                        help="I_low = F x I_high (default 0.25)")
    parser.add_argument("--i-high", type=float, metavar="I", help="explicit I_high (PET units)")
    parser.add_argument("--i-low", type=float, metavar="I", help="explicit I_low (PET units)")
    parser.add_argument("--mean-dose", type=float, metavar="GY",
                        help="mean-dose-preserving mode: rescale D - D_low so the target mean is this (Bowen 2009)")
    parser.add_argument("--levels", type=int, default=5, metavar="K", help="levels mode: number of levels (default 5)")
    parser.add_argument("--level-method", choices=LEVEL_METHODS, default="equal",
                        help="levels mode: equal steps incl. both ends (default), midpoint, or lloyd-max")
    parser.add_argument("--assign", choices=ASSIGNMENTS, default="nearest",
                        help="levels mode: nearest level (default) or floor (never above the continuous map)")
    parser.add_argument("--min-island-ml", type=float, default=0.5, metavar="ML",
                        help="boost/levels: drop contour islands smaller than this (default 0.5 mL)")
    parser.add_argument("--envelope", help="boost/levels: mask the boost or level ROIs must stay inside (e.g. PTV70)")
    parser.add_argument("--boost-fraction", type=float, default=0.5, metavar="F",
                        help="boost mode: boost volume = PET >= F x maximum in the target (default 0.5)")
    parser.add_argument("--boost-volume", help="boost mode: boost volume mask (e.g. a hypoxic volume)")
    parser.add_argument("--grid", help="image whose grid the prescription is computed on (e.g. the planning CT)")
    parser.add_argument("--ct", metavar="CT_DICOM_DIR",
                        help="planning CT DICOM folder: the dose grid (unless --grid) and the reference of "
                             "--rtdose/--rtstruct")
    parser.add_argument("--assume-same-frame", action="store_true",
                        help="images on different grids share a frame of reference even though no Frame of "
                             "Reference UID is recorded (same PET/CT session, or registered)")
    parser.add_argument("--continuous", metavar="OUT", help="levels mode: also write the continuous map")
    parser.add_argument("--evaluation-mask", metavar="OUT",
                        help="write the evaluation volume (target plus margin, 'PTV_PET') as a mask")
    parser.add_argument("--roi-dir", metavar="DIR", help="write each nested ROI as NAME.nrrd in DIR")
    parser.add_argument("--inverted", metavar="OUT",
                        help="also write the inverted map (ceiling - D) for a base-dose TPS workflow (Arnesen 2015)")
    parser.add_argument("--ceiling", type=float, metavar="GY",
                        help="ceiling of the inverted map (default: the prescription maximum)")
    parser.add_argument("--ring", metavar="MASK",
                        help="inverted map: PTV ring mask whose voxels get ceiling - mean(D) (Brighi)")
    parser.add_argument("--rtdose", metavar="RX.dcm", help="also export the prescription as DICOM RT Dose (needs --ct)")
    parser.add_argument("--inverted-rtdose", metavar="INV.dcm",
                        help="also export the inverted map as DICOM RT Dose (needs --ct)")
    parser.add_argument("--rtstruct", metavar="LEVELS.dcm",
                        help="also export the nested ROIs as a DICOM RT Structure Set (needs --ct)")
    parser.add_argument("--json", metavar="OUT.json", help="write every parameter and result as JSON")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Compute the prescription, then write every requested output."""
    import numpy as np

    from ..dosepainting.levels import quantise_levels
    from ..dosepainting.prescription import (
        DEFAULT_MARGIN_MM,
        boost_prescription,
        check_dose_range,
        dose_painting_by_numbers,
        inverted_prescription,
        require_shared_frame,
        tg263_level_name,
    )
    from ..errors import InputError, OutputError
    from ..imaging.image import get_frame_of_reference, same_geometry, set_frame_of_reference
    from ..imaging.io import read_mask, write_image, write_json
    from ..imaging.resample import resample_mask
    from .common import Transaction, check_outputs, read_image_with_frame, require_image_suffix

    # --- arguments -------------------------------------------------------------------------------------
    low_name, high_name = ("--dose-min (base dose)", "--dose-max (boost dose)") if args.mode == "boost" else \
        ("--dose-min", "--dose-max")
    check_dose_range(args.dose_min, args.dose_max, low_name, high_name)
    if args.mode != "levels" and args.continuous:
        raise InputError("--continuous is for --mode levels")
    if args.mode != "boost" and args.boost_volume:
        raise InputError("--boost-volume is for --mode boost")
    if args.mode == "boost" and args.mean_dose is not None:
        raise InputError("--mean-dose is for --mode dpbn or levels")
    if (args.ceiling is not None or args.ring) and not (args.inverted or args.inverted_rtdose):
        raise InputError("--ceiling and --ring need --inverted or --inverted-rtdose")
    dicom_outputs = [opt for opt, value in (("--rtdose", args.rtdose), ("--inverted-rtdose", args.inverted_rtdose),
                                            ("--rtstruct", args.rtstruct)) if value]
    if dicom_outputs and not args.ct:
        raise InputError(f"{' and '.join(dicom_outputs)} need{'s' if len(dicom_outputs) == 1 else ''} --ct (the "
                         "planning CT series the DICOM-RT objects reference)")
    for path, option in ((args.out, "--out"), (args.continuous, "--continuous"), (args.inverted, "--inverted"),
                         (args.evaluation_mask, "--evaluation-mask")):
        require_image_suffix(path, option)
    for path, option in ((args.rtdose, "--rtdose"), (args.inverted_rtdose, "--inverted-rtdose"),
                         (args.rtstruct, "--rtstruct")):
        if path and Path(path).suffix.lower() != ".dcm":
            raise OutputError(f"{option} needs a DICOM file name ending in .dcm", path)
    inputs = [args.pet, args.target, args.grid, args.ct, args.envelope, args.boost_volume, args.ring]
    check_outputs([args.out, args.continuous, args.inverted, args.evaluation_mask, args.roi_dir, args.rtdose,
                   args.inverted_rtdose, args.rtstruct, args.json, *_plan_paths(args)], inputs)
    if args.roi_dir and Path(args.roi_dir).exists() and (not Path(args.roi_dir).is_dir()
                                                          or any(Path(args.roi_dir).iterdir())):
        raise InputError("--roi-dir exists and is not an empty folder; give a new or empty folder", args.roi_dir)
    from ..imaging.rtdose import write_rtdose
    from ..imaging.rtstruct import write_rtstruct

    writers = {"rtdose": write_rtdose, "rtstruct": write_rtstruct}

    # --- inputs ----------------------------------------------------------------------------------------
    pet, _ = read_image_with_frame(args.pet, "PET", modality="PT")
    target = read_mask(args.target, "target mask", allow_empty=False)
    ct_image = ct_series = None
    if args.ct:
        if not Path(args.ct).is_dir():
            raise InputError("--ct must be the planning CT's DICOM folder (the DICOM-RT objects reference its "
                             "slices); use --grid for an image file", args.ct)
        ct_image, ct_series = read_image_with_frame(args.ct, "CT", modality="CT")
    grid = None
    if args.grid:
        grid, _ = read_image_with_frame(args.grid, "grid image")
        if ct_image is not None and not same_geometry(grid, ct_image):
            require_shared_frame(grid, ct_image, "grid image", "CT", assume_same_frame=args.assume_same_frame)
    elif ct_image is not None:
        grid = ct_image
    if ct_image is not None and not same_geometry(pet, ct_image):
        require_shared_frame(pet, ct_image, "PET", "CT", assume_same_frame=args.assume_same_frame)
    envelope = read_mask(args.envelope, "envelope", allow_empty=False) if args.envelope else None
    ring = read_mask(args.ring, "ring mask") if args.ring else None

    # --- computation -----------------------------------------------------------------------------------
    levels = None
    if args.mode == "boost":
        boost_volume = (read_mask(args.boost_volume, "boost volume", allow_empty=False) if args.boost_volume
                        else None)
        result = boost_prescription(
            pet, target, grid=grid, base_dose=args.dose_min, boost_dose=args.dose_max, boost_volume=boost_volume,
            boost_fraction=args.boost_fraction, boost_margin_mm=0.0 if args.margin_mm is None else args.margin_mm,
            envelope=envelope, min_island_ml=args.min_island_ml, assume_same_frame=args.assume_same_frame)
        rois = {tg263_level_name(args.dose_min): result.evaluation_mask,
                tg263_level_name(args.dose_max): result.boost_mask}
        prescription = result.dose
    else:
        result = dose_painting_by_numbers(
            pet, target, grid=grid, dose_low=args.dose_min, dose_high=args.dose_max, mapping=args.mapping,
            i_low=args.i_low, i_high=args.i_high, i_high_percentile=args.i_high_percentile,
            i_low_fraction=args.i_low_fraction,
            margin_mm=DEFAULT_MARGIN_MM if args.margin_mm is None else args.margin_mm, mean_dose=args.mean_dose,
            assume_same_frame=args.assume_same_frame)
        if args.mode == "levels":
            envelope_on_grid = None
            if envelope is not None:
                envelope_on_grid = envelope if same_geometry(envelope, result.dose) else \
                    resample_mask(envelope, result.dose)
            # Levels span --dose-min..--dose-max (70, 74, ..., 86 Gy by default); with --mean-dose the map's
            # maximum replaces --dose-max.
            levels = quantise_levels(result.dose, result.evaluation_mask, n_levels=args.levels,
                                     method=args.level_method, assignment=args.assign, dose_low=args.dose_min,
                                     dose_high=None if args.mean_dose is not None else args.dose_max,
                                     min_island_ml=args.min_island_ml, envelope=envelope_on_grid)
            rois = levels.rois
            prescription = levels.level_map
        else:
            rois = {"PTV_PET": result.evaluation_mask}
            prescription = result.dose
    if grid is not None and grid is ct_image and result.grid == "reference grid":
        result.grid = "planning CT grid"
    if ct_series is not None and get_frame_of_reference(prescription) is None:
        # The dose grid is in the CT's frame (checked above): record it on everything written, so the RT
        # export and petdp evaluate-plan can rely on it.
        ct_uid = ct_series.identity.frame_of_reference_uid
        for image in {id(i): i for i in (prescription, result.dose, result.evaluation_mask, result.target_mask,
                                          result.boost_mask, *rois.values()) if i is not None}.values():
            set_frame_of_reference(image, ct_uid)
    inverted = None
    if args.inverted or args.inverted_rtdose:
        ring_on_grid = None
        if ring is not None:
            ring_on_grid = ring if same_geometry(ring, prescription) else resample_mask(ring, prescription)
        inverted = inverted_prescription(prescription, rois[next(iter(rois))], ceiling=args.ceiling,
                                         ring=ring_on_grid)

    # --- outputs ---------------------------------------------------------------------------------------
    tx = Transaction()
    tx.add(args.out, lambda: write_image(prescription, args.out))
    if args.continuous:
        tx.add(args.continuous, lambda: write_image(result.dose, args.continuous))
    if args.evaluation_mask:
        tx.add(args.evaluation_mask, lambda: write_image(result.evaluation_mask, args.evaluation_mask))
    if args.inverted:
        tx.add(args.inverted, lambda: write_image(inverted.dose, args.inverted))
    if args.roi_dir:
        roi_dir = Path(args.roi_dir)
        for name, mask in rois.items():
            path = roi_dir / f"{name}.nrrd"
            tx.add(path, lambda mask=mask, path=path: write_image(mask, path))
    description = _description(args, result)
    exports: list[str] = []
    if args.rtdose:
        tx.add(args.rtdose, lambda: exports.append(_export_note(writers["rtdose"](
            prescription, args.rtdose, ct_series, description=description))), also=_plan_paths(args)[:1])
    if args.inverted_rtdose:
        tx.add(args.inverted_rtdose, lambda: exports.append(_export_note(writers["rtdose"](
            inverted.dose, args.inverted_rtdose, ct_series, description=f"{description[:50]}_inverted"))),
            also=_plan_paths(args)[-1:])
    if args.rtstruct:
        # Non-empty ROIs only (a level emptied by the clean-up has no contour); the writer resamples masks that
        # are not on the CT grid by nearest neighbour.
        ct_masks = {name: mask for name, mask in rois.items() if _array(mask).any()}
        skipped = [name for name in rois if name not in ct_masks]
        if skipped:
            exports.append(f"empty ROI(s) not exported: {', '.join(skipped)}")
        tx.add(args.rtstruct, lambda: writers["rtstruct"](ct_masks, ct_series, args.rtstruct,
                                                          interpreted_types=dict.fromkeys(ct_masks, "PTV"),
                                                          description=description))
    summary = {
        "command": "prescribe", "mode": args.mode,
        "inputs": {"pet": str(args.pet), "target": str(args.target), "grid": args.grid, "ct": args.ct,
                   "envelope": args.envelope, "boost_volume": args.boost_volume},
        "prescription": result.summary(),
        "levels": None if levels is None else levels.summary(),
        "inverted": None if inverted is None else {"ceiling_gy": inverted.ceiling_gy,
                                                    "ring_value_gy": inverted.ring_value_gy,
                                                    "ring_volume_ml": inverted.ring_volume_ml},
        "rois": {name: float(np.count_nonzero(_array(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0
                 for name, mask in rois.items()},
        "outputs": {"out": args.out, "continuous": args.continuous, "evaluation_mask": args.evaluation_mask,
                    "inverted": args.inverted, "roi_dir": args.roi_dir, "rtdose": args.rtdose,
                    "inverted_rtdose": args.inverted_rtdose, "rtstruct": args.rtstruct},
    }
    if args.json:
        tx.add(args.json, lambda: write_json(summary, args.json))
    tx.commit()
    _print_summary(args, result, levels, inverted)
    for line in exports:
        print(f"[prescribe] {line}")
    return 0


def _plan_paths(args) -> list[Path]:
    """The RT Plan files the RT Dose writer puts next to each RT Dose (``<stem>_plan.dcm``)."""
    return [Path(p).with_name(f"{Path(p).stem}_plan.dcm") for p in (args.rtdose, args.inverted_rtdose) if p]


def _export_note(export) -> str:
    plan = f" with the RT Plan {export.plan_path}" if export.plan_path else ""
    return (f"RT Dose {export.path}{plan}: frame of reference {export.frame_of_reference_uid}, max "
            f"{export.max_gy:.2f} Gy, quantisation error {export.quantisation_error_gy:.2g} Gy")


def _array(image):
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(image)


def _description(args, result) -> str:
    """SeriesDescription of the exported RT Dose, with the mapping parameters (reference note §7.1)."""
    if args.mode == "boost":
        return f"DPBC_boost_{args.dose_min:g}-{args.dose_max:g}Gy"
    text = f"DPBN_presc_{args.dose_min:g}-{args.dose_max:g}Gy_{result.mapping}_m{result.margin_mm:g}mm"
    return text if args.mode == "dpbn" else f"{text}_{args.levels}levels"


def _print_summary(args, result, levels, inverted) -> None:
    print(f"[prescribe] {args.mode}: target {result.target_volume_ml:.2f} mL, evaluation volume "
          f"{result.evaluation_volume_ml:.2f} mL on the {result.grid}"
          f"{' (PET resampled, linear interpolation)' if result.pet_resampled else ''}")
    if result.mode == "dpbn":
        print(f"[prescribe] mapping {result.mapping}: I_low {result.i_low:.4g}, I_high {result.i_high:.4g} "
              f"({result.intensity_units or 'PET units'}) -> {result.dose_low_gy:g}-{result.dose_high_gy:g} Gy, "
              f"margin {result.margin_mm:g} mm")
    else:
        source = f"{result.boost_fraction:g} x max (threshold {result.boost_threshold:.4g})" \
            if result.boost_source == "threshold" else "given volume"
        print(f"[prescribe] boost volume {result.boost_volume_ml:.2f} mL ({source}), {result.dose_low_gy:g} Gy "
              f"base / {result.dose_high_gy:g} Gy boost")
    print(f"[prescribe] dose in the evaluation volume: min {result.dose_min_gy:.2f}, mean {result.dose_mean_gy:.2f}, "
          f"max {result.dose_max_gy:.2f} Gy")
    if levels is not None:
        for level in levels.levels:
            print(f"[prescribe] {level.name}: {level.dose_gy:.2f} Gy, ROI {level.roi_volume_ml:.2f} mL, "
                  f"shell {level.shell_volume_ml:.2f} mL")
        ev = levels.evaluation
        print(f"[prescribe] levels vs continuous map: QF {ev.qf:.4f}, Q95 {ev.q95:.3f}, Q105 {ev.q105:.3f}")
    if inverted is not None:
        print(f"[prescribe] inverted map: ceiling {inverted.ceiling_gy:.2f} Gy")
    for note in (result.notes + (levels.notes if levels is not None else [])):
        print(f"[prescribe] note: {note}")
    if result.frame_of_reference:
        print(f"[prescribe] frame of reference: {result.frame_of_reference}")
    print(f"[prescribe] wrote {args.out}")
