"""Writing the digital patient: DICOM series (the real clinical input path), NRRD images, truth, JSON.

Layout of the output folder::

    parameters.json                      every parameter and truth scalar (see DigitalPatient.parameters)
    <timepoint>/dicom/CT, PT_FDG, PT_FMISO   DICOM series (one study per timepoint session)
    <timepoint>/ct.nrrd, pet_fdg_suv.nrrd, pet_fmiso_suv.nrrd
    <timepoint>/truth/gtv_fraction_pet.nrrd, gtv_pet.nrrd, node_pet.nrrd, hypoxic_pet.nrrd,
                      necrosis_pet.nrrd, inflammation_pet.nrrd, gtv_ct.nrrd, node_ct.nrrd, hypoxic_ct.nrrd,
                      oar_<Name>.nrrd (CT grid)
    <timepoint>/truth/baseline_to_<timepoint>.h5 (+ _inverse.h5, _jacobian.nrrd)   later timepoints
    mr/dicom/MR_T1W, MR_T2W; mr/t1w.nrrd, t2w.nrrd, dwi_b<b>.nrrd, adc_truth.nrrd,
    mr/truth/gtv_mr.nrrd, ct_to_mr.h5    baseline MRI and its known rigid offset from the CT

The PET NRRD files hold exactly the SUV the DICOM series represent (16-bit quantisation with a per-slice
rescale slope), so reading the DICOM back with the QIBA SUV code gives the same image (to float32
rounding); the in-memory patient is updated to those values.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..imaging.dicom_export import DicomIdentity, PetAcquisition, write_ct_series, write_mr_series, write_pet_series
from ..imaging.image import Units, set_frame_of_reference, set_units
from ..imaging.io import atomic_path, write_image, write_json
from .patient import DigitalPatient, PatientTimepoint


@dataclass
class PatientFiles:
    """Where :func:`write_patient` put everything (paths relative to nothing: absolute or as given)."""

    out_dir: Path
    images: dict[str, Path] = field(default_factory=dict)  #: "<timepoint>/<name>" -> file
    dicom: dict[str, Path] = field(default_factory=dict)  #: "<timepoint>/<series>" -> folder
    parameters: Path | None = None


def patient_identity(patient: DigitalPatient, tp: PatientTimepoint) -> DicomIdentity:
    """The DICOM identity of one timepoint session (same patient, one study and frame of reference each)."""
    cfg = patient.config
    return DicomIdentity.synthetic(
        f"{cfg.seed}-{tp.name}", patient_id=f"PETDP-{cfg.seed:04d}", patient_name=f"Digital^Patient{cfg.seed}",
        patient_sex=cfg.sex, patient_weight_kg=tp.weight_kg, patient_size_m=cfg.height_m,
        study_date=tp.date.strftime("%Y%m%d"), study_time="080000",
        study_description=f"H&N PET/CT {tp.name} (PETDosePainting digital patient)", study_id=tp.name,
    )


def _acquisitions(patient: DigitalPatient, tp: PatientTimepoint) -> dict[str, PetAcquisition]:
    cfg = patient.config
    day = _dt.datetime.combine(tp.date, _dt.time(0, 0))
    fmiso_inj = day + _dt.timedelta(hours=8)
    fdg_inj = day + _dt.timedelta(hours=11)
    return {
        "FDG": PetAcquisition(injected_dose_bq=cfg.fdg_dose_bq, injection_datetime=fdg_inj,
                              scan_datetime=fdg_inj + _dt.timedelta(minutes=cfg.fdg_uptake_min)),
        "FMISO": PetAcquisition(injected_dose_bq=cfg.fmiso_dose_bq, injection_datetime=fmiso_inj,
                                scan_datetime=fmiso_inj + _dt.timedelta(minutes=cfg.fmiso_uptake_min),
                                radiopharmaceutical="Fluoromisonidazole F^18^"),
    }


def write_patient(patient: DigitalPatient, out_dir: str | Path, dicom: bool = True,
                  log: Callable[[str], None] | None = None) -> PatientFiles:
    """Write the patient into ``out_dir``, which the caller has checked is safe to write (see
    :func:`PETDosePaintingLib.pipeline.outputs.prepare_output_dir`): DICOM series folders left there by a
    previous run of the same command are replaced. Returns the paths."""
    say = log or (lambda _msg: None)
    out = Path(out_dir)
    for old in sorted(set(out.glob("*/dicom"))):
        shutil.rmtree(old)
    files = PatientFiles(out)
    for tp in patient.timepoints:
        say(f"writing {tp.name}" + (" (DICOM and NRRD)" if dicom else " (NRRD)"))
        folder = out / tp.name
        _record_frame(tp, patient_identity(patient, tp).frame_of_reference_uid)
        if dicom:
            _write_timepoint_dicom(patient, tp, folder / "dicom", files)
        images = {"ct": tp.ct, "pet_fdg_suv": tp.fdg_pet, "pet_fmiso_suv": tp.fmiso_pet}
        for name, image in images.items():
            files.images[f"{tp.name}/{name}"] = write_image(image, folder / f"{name}.nrrd")
        truth = tp.truth
        masks = {"gtv_fraction_pet": truth.gtv_fraction_pet, "gtv_pet": truth.gtv_pet, "node_pet": truth.node_pet,
                 "hypoxic_pet": truth.hypoxic_pet, "necrosis_pet": truth.necrosis_pet,
                 "inflammation_pet": truth.inflammation_pet, "gtv_ct": truth.gtv_ct, "node_ct": truth.node_ct,
                 "hypoxic_ct": truth.hypoxic_ct, **{f"oar_{k}": v for k, v in truth.oars_ct.items()}}
        for name, image in masks.items():
            files.images[f"{tp.name}/truth/{name}"] = write_image(image, folder / "truth" / f"{name}.nrrd")
        if tp.deformation is not None:
            stem = folder / "truth" / f"baseline_to_{tp.name}"
            files.images[f"{tp.name}/truth/transform"] = _write_transform(tp.deformation.forward_transform(),
                                                                          stem.with_suffix(".h5"))
            files.images[f"{tp.name}/truth/transform_inverse"] = _write_transform(
                tp.deformation.inverse_transform(), stem.parent / f"{stem.name}_inverse.h5")
            files.images[f"{tp.name}/truth/jacobian"] = write_image(tp.deformation.jacobian_image(),
                                                                    stem.parent / f"{stem.name}_jacobian.nrrd")
    if patient.mr is not None:
        say("writing the baseline MRI")
        _write_mr(patient, out / "mr", dicom, files)
    files.parameters = write_json({**patient.parameters(), "files": _relative(files, out)}, out / "parameters.json")
    return files


def _record_frame(tp: PatientTimepoint, uid: str) -> None:
    """Record the session's DICOM frame of reference on every image of a timepoint (in memory and in files)."""
    truth = tp.truth
    images = [tp.ct, tp.fdg_pet, tp.fmiso_pet, truth.gtv_fraction_pet, truth.gtv_pet, truth.node_pet,
              truth.hypoxic_pet, truth.necrosis_pet, truth.inflammation_pet, truth.gtv_ct, truth.node_ct,
              truth.hypoxic_ct, *truth.oars_ct.values()]
    for image in images:
        set_frame_of_reference(image, uid)


def _write_timepoint_dicom(patient: DigitalPatient, tp: PatientTimepoint, folder: Path, files: PatientFiles) -> None:
    identity = patient_identity(patient, tp)
    ct = write_ct_series(tp.ct, folder / "CT", identity, series_description=f"CT {tp.name} (synthetic)")
    files.dicom[f"{tp.name}/CT"] = ct.out_dir
    acquisitions = _acquisitions(patient, tp)
    for number, (tracer, attr) in enumerate((("FDG", "fdg_pet"), ("FMISO", "fmiso_pet")), start=3):
        result = write_pet_series(getattr(tp, attr), folder / f"PT_{tracer}", identity, acquisitions[tracer],
                                  series_number=number, series_description=f"PET {tracer} AC {tp.name} (synthetic)")
        # From now on the patient's PET is exactly what the DICOM series holds (16-bit quantised).
        suv = set_units(sitk.Image(result.suv_image), Units.SUV_BW)
        setattr(tp, attr, set_frame_of_reference(suv, identity.frame_of_reference_uid))
        files.dicom[f"{tp.name}/PT_{tracer}"] = result.out_dir


def _write_mr(patient: DigitalPatient, folder: Path, dicom: bool, files: PatientFiles) -> None:
    mr = patient.mr
    assert mr is not None
    cfg = patient.config
    baseline = patient.timepoints[0]
    identity = DicomIdentity.synthetic(
        f"{cfg.seed}-mr", patient_id=f"PETDP-{cfg.seed:04d}", patient_name=f"Digital^Patient{cfg.seed}",
        patient_sex=cfg.sex, patient_weight_kg=baseline.weight_kg, patient_size_m=cfg.height_m,
        study_date=(baseline.date - _dt.timedelta(days=2)).strftime("%Y%m%d"), study_time="140000",
        study_description="H&N MRI baseline (PETDosePainting digital patient)", study_id="mr")
    for image in (mr.t1w, mr.t2w, mr.gtv_mr, mr.dwi.adc_truth, *mr.dwi.images.values()):
        set_frame_of_reference(image, identity.frame_of_reference_uid)
    if dicom:
        mr_cfg = cfg.mr
        series = (("T1W", mr.t1w, mr_cfg.t1w_tr_ms, mr_cfg.t1w_te_ms),
                  ("T2W", mr.t2w, mr_cfg.t2w_tr_ms, mr_cfg.t2w_te_ms))
        for number, (name, image, tr, te) in enumerate(series, start=5):
            result = write_mr_series(image, folder / "dicom" / f"MR_{name}", identity, series_number=number,
                                     series_description=f"{name} SE (synthetic)", echo_time_ms=te,
                                     repetition_time_ms=tr, magnetic_field_strength_t=mr_cfg.field_strength_t)
            files.dicom[f"mr/MR_{name}"] = result.out_dir
    files.images["mr/t1w"] = write_image(mr.t1w, folder / "t1w.nrrd")
    files.images["mr/t2w"] = write_image(mr.t2w, folder / "t2w.nrrd")
    for b, image in sorted(mr.dwi.images.items()):
        tagged = sitk.Image(image)
        tagged.SetMetaData("PETDP_BValue", f"{b:g}")
        name = f"dwi_b{round(b):04d}"
        files.images[f"mr/{name}"] = write_image(tagged, folder / f"{name}.nrrd")
    files.images["mr/adc_truth"] = write_image(mr.dwi.adc_truth, folder / "adc_truth.nrrd")
    files.images["mr/truth/gtv_mr"] = write_image(mr.gtv_mr, folder / "truth" / "gtv_mr.nrrd")
    files.images["mr/truth/ct_to_mr"] = _write_transform(mr.ct_to_mr, folder / "truth" / "ct_to_mr.h5")


def _write_transform(transform: sitk.Transform, path: Path) -> Path:
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def _relative(files: PatientFiles, out: Path) -> dict[str, dict[str, str]]:
    return {"images": {k: str(v.relative_to(out)) for k, v in files.images.items()},
            "dicom": {k: str(v.relative_to(out)) for k, v in files.dicom.items()}}
