"""Batch example: segment the GTV of every study in a folder with the gradient method, in Slicer or plain Python.

The same script runs inside 3D Slicer (batch mode, no window) and under plain Python with the ``slicer-core``
wheel; both go through the same node-level functions the GradientSegment panel uses
(``PETDosePaintingLib.mrml.gtv_logic.segment_and_quantify``), so a study gives the same GTV either way::

    Slicer --no-main-window --python-script Testing/Python/batch_gradient_cohort.py -- STUDIES --out OUT
    python Testing/Python/batch_gradient_cohort.py STUDIES --out OUT

Input: one sub-folder per study in ``STUDIES``, holding

* the FDG PET: ``pet.nrrd`` (or ``pet.nii.gz``, ``pet.mha``; values in SUV, or no recorded units), or a folder
  ``pet/`` with a DICOM PET series (converted to SUVbw);
* ``seed.json``: the click inside the lesion, ``{"seed_lps_mm": [x, y, z]}`` (as ``petdp segment --seed``) or
  ``{"seed_ras_mm": [R, A, S]}`` (as Slicer shows it); optional ``"fwhm_mm"`` (scanner resolution).

Output in ``OUT`` (a new or empty folder, or a previous output of this script):

* ``<study>/gtv.nrrd``: the GTV mask on the PET grid; ``<study>/<study>.mrb``: a Slicer scene with the PET, the
  GTV segment (``GTV_gradient``) and the results table (``--no-scene`` skips it);
* ``summary.csv``: one row per study (columns :data:`SUMMARY_COLUMNS`; volumes in mL, uptake in SUV).

Exit codes, the same in both runtimes: 0 every study was segmented, 1 at least one study failed (the others
still ran; see the ``error`` column), 2 unusable arguments. Inside Slicer the script ends the application
with ``slicer.util.exit(code)`` (``--python-script`` alone would keep Slicer running); outside it calls
``sys.exit(code)``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

try:
    import PETDosePaintingLib  # noqa: F401  (on sys.path inside Slicer, or installed in the environment)
except ImportError:  # a plain checkout: the library sits next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PETDosePainting"))

#: Columns of ``summary.csv`` (a stable contract for scripts reading it).
SUMMARY_COLUMNS = ("study", "status", "method", "volume_ml", "suv_max", "suv_peak", "suv_mean", "tlg", "threshold",
                   "fwhm_mm", "seed_lps_mm", "runtime", "error")
#: Names of the PET input inside a study folder, in the order they are looked for.
PET_NAMES = ("pet.nrrd", "pet.nii.gz", "pet.mha", "pet")
METHOD = "gradient"


def find_studies(studies_dir: Path) -> list[Path]:
    """Study folders of ``studies_dir`` (sub-folders holding a ``seed.json``), sorted by name."""
    return sorted(p for p in studies_dir.iterdir() if p.is_dir() and (p / "seed.json").is_file())


def read_seed(study: Path) -> tuple[list[float], float | None]:
    """The click (LPS mm) and the optional scanner FWHM (mm) of a study's ``seed.json``."""
    from PETDosePaintingLib.errors import InputError
    from PETDosePaintingLib.imaging.io import read_json
    from PETDosePaintingLib.mrml.volumes import ras_to_lps_point

    info = read_json(study / "seed.json")
    if "seed_lps_mm" in info:
        seed = [float(v) for v in info["seed_lps_mm"]]
    elif "seed_ras_mm" in info:
        seed = ras_to_lps_point([float(v) for v in info["seed_ras_mm"]]).tolist()
    else:
        raise InputError("has neither seed_lps_mm nor seed_ras_mm", study / "seed.json")
    if len(seed) != 3:
        raise InputError("the seed needs three coordinates (mm)", study / "seed.json")
    fwhm = info.get("fwhm_mm")
    return seed, None if fwhm is None else float(fwhm)


def process_study(study: Path, out_dir: Path, *, fwhm_mm: float | None, scene_bundle: bool) -> dict:
    """Segment one study through the MRML scene and write its outputs; returns its summary row."""
    from PETDosePaintingLib.errors import InputError
    from PETDosePaintingLib.imaging.image import mask_volume_ml
    from PETDosePaintingLib.imaging.io import write_image
    from PETDosePaintingLib.mrml.gtv_logic import segment_and_quantify
    from PETDosePaintingLib.mrml.scene import create_core_scene, save_scene_mrb
    from PETDosePaintingLib.mrml.segmentations import mask_from_segment
    from PETDosePaintingLib.mrml.volumes import lps_to_ras_point, volume_node_from_image
    from PETDosePaintingLib.pipeline.steps import load_pet

    pet_path = next((study / name for name in PET_NAMES if (study / name).exists()), None)
    if pet_path is None:
        raise InputError(f"no PET found (looked for {', '.join(PET_NAMES)})", study)
    seed_lps, study_fwhm = read_seed(study)
    fwhm = study_fwhm if study_fwhm is not None else fwhm_mm
    pet = load_pet(pet_path, "pet")
    scene = create_core_scene()  # one scene per study, also inside Slicer: studies never see each other's nodes
    pet_node = volume_node_from_image(pet, "PET", scene)
    out = segment_and_quantify(pet_node, lps_to_ras_point(seed_lps).tolist(), METHOD, fwhm_mm=fwhm,
                               segment_name=f"GTV_{METHOD}")
    mask = mask_from_segment(out.segmentation_node, out.segment_name, pet_node)
    folder = out_dir / study.name
    folder.mkdir(parents=True, exist_ok=True)
    write_image(mask, folder / "gtv.nrrd")
    if scene_bundle:
        save_scene_mrb(scene, folder / f"{study.name}.mrb")
    q = out.quantification
    return {"study": study.name, "status": "ok", "method": METHOD, "volume_ml": mask_volume_ml(mask),
            "suv_max": q.suv_max, "suv_peak": q.suv_peak, "suv_mean": q.suv_mean, "tlg": q.tlg,
            "threshold": out.result.threshold, "fwhm_mm": fwhm, "seed_lps_mm": " ".join(f"{v:g}" for v in seed_lps),
            "error": ""}


def run(studies_dir: Path, out_dir: Path, *, fwhm_mm: float | None = None, scene_bundle: bool = True,
        log=print) -> int:
    """Process every study; write ``summary.csv``; return the exit code (0 all ok, 1 some failed)."""
    from PETDosePaintingLib.comparison.reports import csv_text
    from PETDosePaintingLib.imaging.io import write_text
    from PETDosePaintingLib.pipeline.outputs import prepare_output_dir

    runtime = "Slicer" if in_slicer() else "Python + slicer-core"
    out = prepare_output_dir(out_dir, "batch-gradient-cohort")
    studies = find_studies(studies_dir)
    if not studies:
        log(f"no study folders (with a seed.json) in {studies_dir}")
        return 2
    rows = []
    for study in studies:
        try:
            row = process_study(study, out, fwhm_mm=fwhm_mm, scene_bundle=scene_bundle)
            log(f"{study.name}: GTV {row['volume_ml']:.2f} mL, SUVmax {row['suv_max']:.2f}")
        except Exception as exc:  # one failed study must not stop the others; it is reported in the summary
            row = {"study": study.name, "status": "failed", "method": METHOD,
                   "error": f"{type(exc).__name__}: {exc}"}
            log(f"{study.name}: FAILED {row['error']}")
            log(traceback.format_exc())
        rows.append({**row, "runtime": runtime})
    write_text(csv_text(SUMMARY_COLUMNS, rows), out / "summary.csv")
    failed = sum(row["status"] != "ok" for row in rows)
    log(f"{len(rows) - failed} of {len(rows)} studies segmented ({runtime}); summary in {out / 'summary.csv'}")
    return 1 if failed else 0


def in_slicer() -> bool:
    """True inside the Slicer application (``slicer.app`` exists), False under plain Python with slicer-core."""
    import slicer

    return getattr(slicer, "app", None) is not None


def main(argv: list[str]) -> int:
    """Parse the arguments (a leading ``--``, as Slicer passes them, is dropped) and run."""
    parser = argparse.ArgumentParser(prog="batch_gradient_cohort.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", type=Path, help="folder with one sub-folder per study (pet + seed.json)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or a previous output)")
    parser.add_argument("--fwhm-mm", type=float, default=None,
                        help="scanner resolution (image FWHM, mm) for studies whose seed.json gives none")
    parser.add_argument("--no-scene", action="store_true", help="do not write a .mrb scene per study")
    args_list = argv[1:] if argv and argv[0] == "--" else argv
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits with 2 on bad arguments (0 for --help)
        return int(exc.code or 0)
    if not args.studies.is_dir():
        print(f"error: {args.studies} is not a folder", file=sys.stderr)
        return 2
    try:
        return run(args.studies, args.out, fwhm_mm=args.fwhm_mm, scene_bundle=not args.no_scene)
    except Exception as exc:  # e.g. an output folder that must not be overwritten
        print(f"error: {exc}", file=sys.stderr)
        return 2


def finish(code: int) -> None:
    """End with ``code`` by Slicer's rules: ``slicer.util.exit`` inside Slicer, ``sys.exit`` outside."""
    if in_slicer():
        import slicer

        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    finish(main(sys.argv[1:]))
