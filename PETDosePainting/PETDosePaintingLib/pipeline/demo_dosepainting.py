"""The demo's dose-painting stage: prescriptions from FDG and FMISO PET, exported as DICOM-RT.

On the digital patient's baseline session:

* FDG dose painting by numbers (70 -> 86 Gy, linear, Differding 2017), a sub-volume boost (50 % SUVmax
  inside the GTV to 82 Gy, base 70 Gy; Rasmussen 2015) and the DPBN map quantised to 5 nested levels;
* FMISO tumour-to-muscle map against a muscle reference region, hypoxic volume at T/M > 1.2 (Lee 2016),
  a hypoxic boost to 77 Gy (base 70 Gy; Welz 2017), scored against the simulated hypoxic truth;
* every map on the planning CT grid, exported as RT Dose (with a minimal RT Plan) and the levels, boost
  and hypoxic volumes as one RT Structure Set, next to the patient's CT series.

The muscle reference stands in for the ROI a user would draw: the anatomy's muscle at least
``REFERENCE_DISTANCE_MM`` from any lesion, eroded by one PET voxel (away from partial volume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..comparison.metrics import compare_masks
from ..dosepainting.hypoxia import hypoxia_metrics, hypoxic_boost_volume, uptake_ratio_map
from ..dosepainting.levels import quantise_levels
from ..dosepainting.prescription import boost_prescription, dose_painting_by_numbers
from ..imaging.dicom_series import read_dicom_series
from ..imaging.image import get_frame_of_reference, image_from_array, set_frame_of_reference
from ..imaging.resample import resample_mask
from ..imaging.rtdose import write_rtdose
from ..imaging.rtstruct import write_rtstruct
from ..phantom.patient import DigitalPatient
from ..phantom.tissues import Tissue
from ..phantom.tumour import paint_lesion_labels

#: Minimum distance (mm) between the muscle reference region and any lesion.
REFERENCE_DISTANCE_MM = 30.0


@dataclass
class DosePaintingStage:
    """What the stage made: dose maps and masks for the scene, files written, and a JSON summary."""

    volumes: dict[str, sitk.Image] = field(default_factory=dict)  #: node name -> image (Gy maps tagged dose)
    segmentations: dict[str, tuple[sitk.Image, dict[str, sitk.Image]]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def muscle_reference(patient: DigitalPatient, grid: sitk.Image) -> sitk.Image:
    """Muscle at least :data:`REFERENCE_DISTANCE_MM` from the baseline lesions, on ``grid``, eroded one voxel."""
    anatomy = patient.anatomy
    painted = paint_lesion_labels(anatomy.labels, patient.series.timepoints[0])
    lesion = painted >= Tissue.TUMOUR
    far = ndimage.distance_transform_edt(~lesion, sampling=anatomy.spacing[::-1]) > REFERENCE_DISTANCE_MM
    muscle = image_from_array((painted == Tissue.MUSCLE) & far, anatomy.label_image)
    on_grid = sitk.GetArrayFromImage(resample_mask(muscle, grid)) > 0
    return image_from_array(ndimage.binary_erosion(on_grid), grid)


def run_dose_painting(patient: DigitalPatient, dicom: dict[str, Path], pet: sitk.Image, gtv: sitk.Image, *,
                      out: Path, log: Callable[[str], None] = print) -> DosePaintingStage:
    """Run the stage on the baseline session (``dicom``: the patient's DICOM folders by "<timepoint>/<series>").

    ``pet`` is the FDG SUV read back from DICOM and ``gtv`` the GTV segmented on it (PET grid).
    """
    stage = DosePaintingStage()
    ct_series = read_dicom_series(dicom["baseline/CT"])
    ct = ct_series.image
    fmiso, _ = _read_suv(dicom["baseline/PT_FMISO"])
    target = set_frame_of_reference(sitk.Image(gtv), get_frame_of_reference(pet))

    log("  FDG dose painting by numbers (70-86 Gy), 50 % SUVmax boost (82 Gy), 5 nested levels")
    dpbn = dose_painting_by_numbers(pet, target, grid=ct, dose_low=70.0, dose_high=86.0)
    boost = boost_prescription(pet, target, grid=ct, base_dose=70.0, boost_dose=82.0, boost_fraction=0.5)
    levels = quantise_levels(dpbn.dose, dpbn.evaluation_mask, n_levels=5)

    log("  FMISO: tumour-to-muscle map, hypoxic volume (T/M > 1.2), hypoxic boost (77 Gy)")
    reference = set_frame_of_reference(muscle_reference(patient, fmiso), get_frame_of_reference(fmiso))
    ratio = uptake_ratio_map(fmiso, reference, "muscle", target=target)
    hypoxia = hypoxia_metrics(ratio.ratio, target, tracer="fmiso", reference_kind="muscle")
    boost_volume = hypoxic_boost_volume(hypoxia.hypoxic_mask, envelope=target)
    hypoxic_boost = boost_prescription(fmiso, target, grid=ct, base_dose=70.0, boost_dose=77.0,
                                       boost_volume=set_frame_of_reference(boost_volume,
                                                                           get_frame_of_reference(fmiso)))
    truth_hypoxic = patient.timepoints[0].truth.hypoxic_pet
    hypoxia_vs_truth = compare_masks(hypoxia.hypoxic_mask, truth_hypoxic, mask_name="hypoxic (T/M > 1.2)",
                                     reference_name="truth", allow_empty=True)

    log("  exporting DICOM-RT (RT Dose + RT Plan per map, one RT Structure Set) next to the CT series")
    rt_dir = Path(dicom["baseline/CT"]).parent / "RT"
    maps = {"FDG_DPBN": dpbn.dose, "FDG_BOOST": boost.dose, "FDG_LEVELS": levels.level_map,
            "FMISO_BOOST": hypoxic_boost.dose}
    for name, dose in maps.items():
        export = write_rtdose(dose, rt_dir / f"RD_{name}.dcm", ct_series, description=f"prescription {name}",
                              plan_label=name[:16])
        stage.files[f"rtdose_{name}"] = export.path
        if export.plan_path is not None:
            stage.files[f"rtplan_{name}"] = export.plan_path
    rois = {**levels.rois, "BTV_FDG50": _on(ct, boost.boost_mask), "BTV_HYPOXIC": _on(ct, boost_volume),
            "GTV_PET": _on(ct, target)}
    interpreted = {name: ("PTV" if name.startswith("PTV") else "GTV") for name in rois}
    stage.files["rtstruct"] = write_rtstruct(rois, ct_series, rt_dir / "RS_DOSE_PAINTING.dcm",
                                             interpreted_types=interpreted, label="DOSEPAINT")

    stage.volumes = {"RX_FDG_DPBN_Gy": dpbn.dose, "RX_FDG_BOOST_Gy": boost.dose, "RX_FDG_LEVELS_Gy": levels.level_map,
                     "RX_FMISO_BOOST_Gy": hypoxic_boost.dose, "FMISO_TMR": ratio.ratio}
    stage.segmentations = {
        "Prescription_levels": (ct, dict(levels.rois)),
        "Hypoxia": (fmiso, {"Hypoxic_TM_1.2": hypoxia.hypoxic_mask, "Hypoxic_boost": boost_volume,
                            "Hypoxic_truth": truth_hypoxic, "Muscle_reference": reference}),
    }
    stage.summary = {
        "dpbn": _dose_summary(dpbn),
        "boost": _dose_summary(boost),
        "levels": {"n_levels": levels.n_levels,
                   "levels": [{"name": lv.name, "dose_gy": lv.dose_gy, "roi_volume_ml": lv.roi_volume_ml,
                               "shell_volume_ml": lv.shell_volume_ml} for lv in levels.levels],
                   "qf_vs_continuous": levels.evaluation.qf, "rms_error_gy": levels.rms_error_gy},
        "hypoxia": {**hypoxia.summary(), "reference_mean_suv": ratio.reference_mean,
                    "reference_volume_ml": ratio.reference_volume_ml,
                    "truth_hypoxic_ml": float(patient.timepoints[0].truth.hypoxic_volume_ml),
                    "dice_vs_truth": hypoxia_vs_truth.dice, "sensitivity_vs_truth": hypoxia_vs_truth.sensitivity,
                    "ppv_vs_truth": hypoxia_vs_truth.ppv},
        "hypoxic_boost": _dose_summary(hypoxic_boost),
        "dicom_rt": {k: str(v.relative_to(out)) for k, v in stage.files.items()},
    }
    return stage


def _read_suv(directory: Path) -> tuple[sitk.Image, Any]:
    from ..imaging.dicom_series import read_pet_suv

    return read_pet_suv(directory, kind="bw")


def _on(grid: sitk.Image, mask: sitk.Image | None) -> sitk.Image:
    """A mask on ``grid`` (nearest neighbour), empty if ``mask`` is ``None``."""
    if mask is None:
        return image_from_array(np.zeros(grid.GetSize()[::-1], bool), grid)
    return resample_mask(mask, grid) if mask.GetSize() != grid.GetSize() else mask


def _dose_summary(result) -> dict[str, Any]:
    return {"mode": result.mode, "dose_low_gy": result.dose_low_gy, "dose_high_gy": result.dose_high_gy,
            "dose_min_gy": result.dose_min_gy, "dose_mean_gy": result.dose_mean_gy,
            "dose_max_gy": result.dose_max_gy, "target_volume_ml": result.target_volume_ml,
            "evaluation_volume_ml": result.evaluation_volume_ml, "grid": result.grid,
            "interpolation": result.interpolation}


__all__ = ["DosePaintingStage", "muscle_reference", "run_dose_painting"]
