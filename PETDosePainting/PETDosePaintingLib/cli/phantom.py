"""``petdp phantom``: build and write the digital head-and-neck patient."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``phantom`` sub-command."""
    parser = subparsers.add_parser(
        "phantom",
        help="build the digital head-and-neck patient (DICOM PET/CT/MR, NRRD, ground truth)",
        description="Simulate the digital patient: anatomy, an irregular heterogeneous primary tumour with "
                    "necrosis and an inflammation rim, an involved node, FDG and FMISO PET through a "
                    "scanner model (projection, attenuation, scatter, randoms, Poisson noise, OSEM), CT, "
                    "T1w/T2w and diffusion MRI, three timepoints with a known deformation; writes DICOM "
                    "series, NRRD images, the ground truth and parameters.json.",
    )
    parser.add_argument("--out", required=True, help="output folder: new, empty, or a previous phantom output")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the output is deterministic (default 0)")
    parser.add_argument("--quick", action="store_true", help="coarse, small patient for tests (2 mm anatomy, 4 mm PET)")
    parser.add_argument("--no-dicom", action="store_true", help="write NRRD only (no DICOM series)")
    parser.add_argument("--no-timepoints", action="store_true", help="baseline only (no fraction 7 and 17)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, write, and print a summary."""
    import time

    from ..phantom.patient import PatientConfig, build_patient
    from ..phantom.patient_io import write_patient
    from ..pipeline.outputs import prepare_output_dir

    started = time.perf_counter()
    out = prepare_output_dir(args.out, "phantom")

    def log(msg: str) -> None:
        print(f"[phantom {time.perf_counter() - started:5.1f} s] {msg}", flush=True)

    config = PatientConfig(seed=args.seed, quick=args.quick, with_timepoints=not args.no_timepoints)
    patient = build_patient(config, log=log)
    files = write_patient(patient, out, dicom=not args.no_dicom, log=log)
    for tp in patient.timepoints:
        print(f"  {tp.name:<9} GTV {tp.truth.gtv_volume_ml:6.2f} mL, hypoxic {tp.truth.hypoxic_volume_ml:5.2f} mL, "
              f"seed (LPS mm) {tuple(round(c, 1) for c in tp.truth.seed_lps)}")
    print(f"[phantom] done in {time.perf_counter() - started:.1f} s: {len(files.images)} images, "
          f"{len(files.dicom)} DICOM series in {out.resolve()}; parameters in {files.parameters}")
    return 0
