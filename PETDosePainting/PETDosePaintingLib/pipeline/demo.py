"""``petdp demo``: the end-to-end walk on the built-in digital patient, written to one folder.

1. build the digital head-and-neck patient and write it as DICOM (and NRRD, and its ground truth);
2. import it back through the clinical path: DICOM PET -> SUVbw (QIBA), DICOM CT -> HU;
3. segment the baseline GTV from one click with every registered method;
4. measure each method against the truth (Dice, sensitivity, PPV, volume error, HD95, MSD) and
   quantify the flagship's GTV (SUVmax, SUVpeak, SUVmean, MTV, TLG);
5. write ``accuracy.csv``, ``summary.json`` and the Slicer scene ``demo.mrb`` holding every image, the
   truth segmentations and all method masks;
6. write the HTML report ``report.html`` of the folder (:mod:`.report`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..comparison.metrics import compare_masks
from ..errors import PETDPError
from ..imaging.dicom_series import read_dicom_series, read_pet_suv
from ..imaging.io import write_image, write_json, write_text
from ..imaging.resample import resample_to_reference
from ..phantom.patient import DigitalPatient, PatientConfig, build_patient
from ..phantom.patient_io import write_patient
from ..segmentation.common import SegmentationResult
from ..segmentation.quantify import quantify_gtv
from ..segmentation.registry import get_method, method_names, run_method
from .demo_comparison import ComparisonStage, run_comparison
from .demo_dosepainting import DosePaintingStage, run_dose_painting
from .outputs import prepare_output_dir
from .report import write_report

#: The method whose GTV the summary reports as "the" GTV (the project's flagship).
HEADLINE_METHOD = "gradient"
#: Columns of ``accuracy.csv`` (stable: other tools read them).
ACCURACY_COLUMNS = ("method", "status", "volume_ml", "truth_volume_ml", "volume_error_pct", "dice", "jaccard",
                    "sensitivity", "ppv", "hd95_mm", "msd_mm", "threshold", "seconds", "note")


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and its summary (also in ``summary.json``)."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    accuracy: list[dict[str, Any]] = field(default_factory=list)


def run_demo(out_dir: str | Path, quick: bool = False, log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out_dir`` (new, empty, or a previous demo output).

    ``quick`` uses the small digital patient (2 mm anatomy, 4 mm PET); the analysis is the same.
    """
    started = time.perf_counter()
    out = prepare_output_dir(out_dir, "demo")
    result = DemoResult(out_dir=out)

    log("building the digital patient (anatomy, lesions, three timepoints, PET/CT/MR physics)")
    patient = build_patient(PatientConfig(quick=quick), log=lambda m: log(f"  {m}"))
    log("writing it as DICOM, NRRD and ground truth")
    patient_files = write_patient(patient, out / "patient", dicom=True)

    log("importing the baseline through the clinical path: DICOM PET -> SUVbw, DICOM CT -> HU")
    baseline = patient.timepoints[0]
    pet, suv = read_pet_suv(patient_files.dicom["baseline/PT_FDG"], kind="bw")
    ct = read_dicom_series(patient_files.dicom["baseline/CT"]).image
    reference = sitk.GetArrayFromImage(baseline.fdg_pet)
    dicom_error = float(np.max(np.abs(sitk.GetArrayFromImage(pet) - reference)) / np.max(np.abs(reference)))

    truth = baseline.truth.gtv_pet
    seed = baseline.truth.seed_lps
    fwhm = patient.config.scanner_config().effective_fwhm_mm
    log(f"segmenting the baseline GTV from one click at {tuple(round(c, 1) for c in seed)} mm (LPS) "
        f"with every method (scanner FWHM {fwhm:.1f} mm)")
    ct_on_pet = resample_to_reference(ct, pet, interpolation="linear", default_value=-1000.0)
    results: dict[str, SegmentationResult] = {}
    rows = []
    for name in method_names():
        row, seg = _run_and_score(name, pet, seed=seed, truth=truth, truth_volume_ml=baseline.truth.gtv_volume_ml,
                                  fwhm=fwhm, ct_on_pet=ct_on_pet)
        rows.append(row)
        if seg is not None:
            results[name] = seg
        log(f"  {name:<13} {row['status']:<8} " + (f"{row['volume_ml']:7.2f} mL  Dice {row['dice']:.3f}"
                                                     if seg is not None else row["note"][:80]))
    result.accuracy = rows

    files: dict[str, Path] = {"patient_parameters": patient_files.parameters}
    files["pet"] = write_image(pet, out / "pet_fdg_suv_from_dicom.nrrd")
    for name, seg in results.items():
        files[f"gtv_{name}"] = write_image(seg.mask, out / "gtv" / f"gtv_{name}.nrrd")
    files["accuracy"] = write_text(_csv(rows), out / "accuracy.csv")
    headline = results.get(HEADLINE_METHOD) or next(iter(results.values()), None)
    quantification = None if headline is None else quantify_gtv(pet, headline.mask)

    dose_painting = None
    if headline is not None:
        log(f"dose painting on the {headline.method} GTV: FDG and FMISO prescriptions, DICOM-RT export")
        dose_painting = run_dose_painting(patient, patient_files.dicom, pet, headline.mask, out=out,
                                          log=lambda m: log(f"  {m.strip()}"))
        files.update(dose_painting.files)

    comparison = None  # issue 6: GTV_CT / GTV_MRI / GTV_PET, three timepoints, accumulated phase prescriptions
    if dose_painting is not None and "RX_FDG_DPBN_Gy" in dose_painting.volumes:
        log("comparing GTVs across modalities and timepoints; accumulating the phase prescriptions")
        comparison = run_comparison(patient, ct, headline.mask, dose_painting.volumes["RX_FDG_DPBN_Gy"], out=out,
                                    quick=quick, log=log)
        files.update(comparison.files)

    planning = None  # issue 9: uniform 70 Gy vs painted 70-86 Gy with pyRadPlan (the optional [planning] extra)
    if dose_painting is not None and "RX_FDG_DPBN_Gy" in dose_painting.volumes:
        from .demo_planning import run_demo_planning

        planning = run_demo_planning(patient, ct, dose_painting.volumes["RX_FDG_DPBN_Gy"], headline.mask, out=out,
                                     quick=quick, log=log)
        files.update(planning.files)

    log("writing the Slicer scene (every image, truth segmentations, method masks, prescriptions)")
    files["scene"] = _write_scene(out / "demo.mrb", patient, pet, results, rows,
                                  extras=[s for s in (dose_painting, comparison) if s is not None])
    summary = _summary(patient, quick=quick, suv=suv, dicom_error=dicom_error, fwhm=fwhm, headline=headline,
                       quantification=quantification, rows=rows, files=files, out=out, started=started)
    if dose_painting is not None:
        summary["dose_painting"] = dose_painting.summary
    if comparison is not None:
        summary["comparison"] = comparison.summary
    if planning is not None:
        summary["planning"] = planning.summary
    files["summary"] = write_json(summary, out / "summary.json")
    log("writing the HTML report (report.html, next to summary.json)")
    files["report"] = write_report(out, title="PETDosePainting demo").html
    result.files, result.summary = files, summary
    return result


def _run_and_score(name: str, pet: sitk.Image, *, seed, truth: sitk.Image, truth_volume_ml: float, fwhm: float,
                   ct_on_pet: sitk.Image) -> tuple[dict[str, Any], SegmentationResult | None]:
    info = get_method(name)
    params: dict[str, Any] = {}
    if "fwhm_mm" in info.parameters:
        params["fwhm_mm"] = fwhm
    if info.needs_ct:  # co-segmentation; the gradient method stays PET-only (it needs only the FWHM)
        params["ct"] = ct_on_pet
    t0 = time.perf_counter()
    row: dict[str, Any] = dict.fromkeys(ACCURACY_COLUMNS)
    row.update(method=name, truth_volume_ml=truth_volume_ml)
    try:
        seg = run_method(name, pet, seed, **params)
    except PETDPError as exc:  # a method may legitimately refuse a case; say why
        row.update(status="refused", seconds=round(time.perf_counter() - t0, 3), note=str(exc))
        return row, None
    seconds = time.perf_counter() - t0
    metrics = compare_masks(seg.mask, truth, mask_name=name, reference_name="truth", allow_empty=True)
    row.update(status="ok", volume_ml=seg.volume_ml,
               volume_error_pct=100.0 * (seg.volume_ml / truth_volume_ml - 1.0), dice=metrics.dice,
               jaccard=metrics.jaccard, sensitivity=metrics.sensitivity, ppv=metrics.ppv, hd95_mm=metrics.hd95_mm,
               msd_mm=metrics.msd_mm, threshold=seg.threshold, seconds=round(seconds, 3),
               note="; ".join(seg.details.get("warnings", []) or []))
    return row, seg


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ACCURACY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]))
                         for k in ACCURACY_COLUMNS})
    return buffer.getvalue()


def _write_scene(path: Path, patient: DigitalPatient, pet_from_dicom: sitk.Image,
                 results: dict[str, SegmentationResult], rows: list[dict[str, Any]], *,
                 extras: Sequence[DosePaintingStage | ComparisonStage] = ()) -> Path:
    from ..mrml.bundle import write_scene_bundle

    volumes: dict[str, sitk.Image] = {}
    segmentations: dict[str, tuple[sitk.Image, dict[str, sitk.Image]]] = {}
    for tp in patient.timepoints:
        volumes[f"{tp.name}_CT"] = tp.ct
        volumes[f"{tp.name}_PET_FDG_SUVbw"] = pet_from_dicom if tp.name == "baseline" else tp.fdg_pet
        volumes[f"{tp.name}_PET_FMISO_SUVbw"] = tp.fmiso_pet
        truth = tp.truth
        segmentations[f"{tp.name}_Truth"] = (tp.ct, {"GTV_truth": truth.gtv_ct, "GTVn_truth": truth.node_ct,
                                                     "Hypoxic_truth": truth.hypoxic_ct, **truth.oars_ct})
    if patient.mr is not None:
        volumes["MR_T1w"] = patient.mr.t1w
        volumes["MR_T2w"] = patient.mr.t2w
        volumes["MR_ADC_truth"] = patient.mr.dwi.adc_truth
    baseline = patient.timepoints[0]
    masks = {"GTV_truth": baseline.truth.gtv_pet, **{f"GTV_{k}": v.mask for k, v in results.items()}}
    segmentations["baseline_GTV_methods"] = (pet_from_dicom, masks)
    table = {c: [("" if r.get(c) is None else r[c]) for r in rows] for c in ("method", "status", "volume_ml", "dice",
                                                                             "sensitivity", "ppv", "hd95_mm")}
    tables = {"GTV method accuracy": table}
    transforms: dict[str, tuple[sitk.Transform, sitk.Image | None]] = {}
    for extra in extras:  # prescriptions and doses in Gy are tagged as dose for SlicerRT by the bridge
        volumes.update(extra.volumes)
        segmentations.update(extra.segmentations)
        tables.update(getattr(extra, "tables", {}))
        transforms.update(getattr(extra, "transforms", {}))
    return write_scene_bundle(path, volumes, segmentations, tables, transforms)


def _summary(patient: DigitalPatient, *, quick: bool, suv, dicom_error: float, fwhm: float,
             headline: SegmentationResult | None, quantification, rows: list[dict[str, Any]],
             files: dict[str, Path], out: Path, started: float) -> dict[str, Any]:
    baseline = patient.timepoints[0]
    truth_ml = baseline.truth.gtv_volume_ml
    gtv = None
    if headline is not None:
        row = next(r for r in rows if r["method"] == headline.method)
        gtv = {
            "method": headline.method,
            "volume_ml": headline.volume_ml,
            "truth_volume_ml": truth_ml,
            "truth_definition": "exact tissue-fraction volume of the simulated primary GTV (1 mm model; 2 mm quick)",
            "volume_error_pct": 100.0 * (headline.volume_ml / truth_ml - 1.0),
            "dice_vs_truth_mask": row["dice"],
            "hd95_mm": row["hd95_mm"],
            "quantification": None if quantification is None else quantification.as_dict(),
        }
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "petdp_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "data": {
            "kind": "digital head-and-neck patient",
            "seed": patient.config.seed,
            "pet_voxel_mm": patient.config.pet_voxel(),
            "scanner_effective_fwhm_mm": fwhm,
            "timepoints": [tp.name for tp in patient.timepoints],
            "baseline_gtv_truth_ml": truth_ml,
            "click_lps_mm": list(baseline.truth.seed_lps),
        },
        "dicom_import": {
            "suv_factor": suv.factor,
            "max_relative_difference_vs_simulated": dicom_error,
        },
        "gtv": gtv,
        "methods": {
            "ran": len(rows),
            "answered": len(ok),
            "refused": [r["method"] for r in rows if r["status"] != "ok"],
            "best_dice": max(ok, key=lambda r: r["dice"])["method"] if ok else None,
        },
        "files": {k: str(v.relative_to(out)) for k, v in files.items()},
        "runtime_s": round(time.perf_counter() - started, 2),
    }
