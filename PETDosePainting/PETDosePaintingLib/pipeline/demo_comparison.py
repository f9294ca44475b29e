"""The demo's comparison stage (issue 6): GTVs across modalities and timepoints, and dose accumulation.

On the digital patient, with the project's own methods only:

1. **Modalities** (baseline): the MR (T1w) is registered rigidly to the planning CT (Mattes MI); the click
   that gave GTV_PET is carried into MR space through that registration. GTV_CT (contrast CT) and GTV_MRI
   (T2w, the usual sequence for head-and-neck tumour extent) come from
   :func:`~PETDosePaintingLib.segmentation.anatomical.segment_anatomical`, GTV_MRI is propagated to the
   planning CT through the registration; GTV_PET is the demo's gradient GTV. They are compared with the
   simulated truth (standing for the surgical specimen of the seed paper's Table 2) and with each other:
   the Table-2 volume table, the pairwise overlap matrix and each GTV against the truth.
2. **Timepoints**: the fraction-7 and fraction-17 CTs are registered deformably (B-spline, CT to CT) to the
   previous CT; GTV_PET is segmented at each session from its own click; the volume course and the
   persistent / newborn / resolved sub-volumes between consecutive sessions follow (§5.3).
3. **Dose**: the phase prescriptions (the baseline FDG dose-painting map for fractions 1-7, maps re-made on
   the fraction-7 and fraction-17 PET for fractions 8-17 and 18-35, each scaled to its share of the 35
   fractions; a later map covers the session's GTV together with the earlier GTVs carried into it, so the
   treated volume never shrinks below the baseline GTV while the boost follows the current uptake, a design
   choice of the demo) are accumulated on the baseline CT through the composed transforms (physical dose and EQD2,
   alpha/beta 10 Gy), compared with the baseline goal, and the remaining-dose prescription for fractions
   18-35 is computed on the fraction-17 CT (§5.2-§5.4).

Every registration is checked against the simulated truth (the known CT-to-MR motion and deformation
fields) at points within 10 mm of the GTV, and reported next to the result: a real course has no such
check, which is why the Jacobian QA is reported too.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..comparison.accumulation import accumulate_doses, remaining_dose
from ..comparison.longitudinal import longitudinal_changes, volume_course
from ..comparison.metrics import compare_masks
from ..comparison.registration import (
    RegistrationResult,
    compose_transforms,
    propagate_mask,
    register_bspline,
    register_rigid,
    rigid_motion,
    transform_points,
    write_transform,
)
from ..comparison.reports import PAIR_COLUMNS, compare_pairs, csv_text, overlap_matrix, pair_rows, volume_table
from ..dosepainting.plan_evaluation import quality_metrics
from ..dosepainting.prescription import dose_painting_by_numbers
from ..imaging.image import Units, image_from_array, physical_grid, sampling_grid, set_units
from ..imaging.io import write_image, write_json, write_text
from ..imaging.resample import resample_mask
from ..phantom.patient import DigitalPatient
from ..segmentation.anatomical import segment_anatomical
from ..segmentation.registry import run_method
from .plots import plot_matrix_heatmap, plot_volume_over_time

#: Fractions of the course and of each phase (fractions 1-7, 8-17, 18-35: the seed's PET sessions).
COURSE_FRACTIONS = 35
PHASE_FRACTIONS = (7, 10, 18)
#: alpha/beta (Gy) of the EQD2 sum (tumour).
ALPHA_BETA_GY = 10.0
#: Dose-painting-by-numbers range of every phase map (the demo's FDG prescription).
DOSE_LOW_GY, DOSE_HIGH_GY = 70.0, 86.0
#: B-spline working grid (mm): the full patient / ``--quick`` (speed; see benchmarks of registration).
BSPLINE_WORKING_MM, BSPLINE_WORKING_MM_QUICK = 2.0, 3.0
#: Rigid working grid (mm).
RIGID_WORKING_MM = 2.0
#: Registration error is measured at points within this distance (mm) of the truth GTV.
CHECK_MARGIN_MM = 10.0
#: Grid spacing (mm) on which non-linear transforms are stored in the scene (grid transform nodes).
SCENE_TRANSFORM_MM = 4.0


@dataclass
class ComparisonStage:
    """What the stage made: images, segmentations, tables and transforms for the scene, files, summary."""

    volumes: dict[str, sitk.Image] = field(default_factory=dict)
    segmentations: dict[str, tuple[sitk.Image, dict[str, sitk.Image]]] = field(default_factory=dict)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)
    transforms: dict[str, tuple[sitk.Transform, sitk.Image | None]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def run_comparison(patient: DigitalPatient, ct: sitk.Image, gtv_pet: sitk.Image, goal: sitk.Image, *, out: Path,
                   quick: bool = False, log: Callable[[str], None] = print) -> ComparisonStage:
    """Run the stage. ``ct``: the baseline planning CT (read from DICOM); ``gtv_pet``: the demo's baseline GTV
    (PET grid); ``goal``: the baseline FDG dose-painting map on ``ct`` (Gy). Files go to ``out/comparison``."""
    stage = ComparisonStage()
    folder = out / "comparison"
    started = time.perf_counter()
    modalities = _modalities(patient, ct, gtv_pet, stage=stage, folder=folder, log=log)
    course = _timepoints(patient, ct, gtv_pet, stage=stage, folder=folder, quick=quick, log=log)
    dose = _accumulation(patient, ct, goal, course=course, stage=stage, folder=folder, log=log)
    stage.summary = {"modalities": modalities, "timepoints": course["summary"], "accumulation": dose,
                     "seconds": round(time.perf_counter() - started, 1)}
    stage.files["comparison_json"] = write_json(stage.summary, folder / "comparison.json")
    return stage


# ------------------------------------------------------------------------------------------------------------
# 1. GTV_CT, GTV_MRI, GTV_PET against the truth and each other
# ------------------------------------------------------------------------------------------------------------

def _modalities(patient: DigitalPatient, ct: sitk.Image, gtv_pet: sitk.Image, *, stage: ComparisonStage,
                folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    baseline = patient.timepoints[0]
    truth = baseline.truth.gtv_ct
    click = baseline.truth.seed_lps
    check_points = _points_near(truth, CHECK_MARGIN_MM)
    masks = {"GTV_CT": segment_anatomical(ct, click).mask}
    summary: dict[str, Any] = {"click_lps_mm": list(click),
                               "methods": {"GTV_CT": "anatomical watershed on the contrast CT",
                                           "GTV_MRI": "anatomical watershed on the T2w MR, propagated to the CT",
                                           "GTV_PET": "gradient method on the FDG PET (the demo's GTV)"}}
    if patient.mr is not None:
        log("  registering the MR (T1w) to the planning CT: rigid, Mattes mutual information")
        rigid = register_rigid(ct, patient.mr.t1w, working_spacing_mm=RIGID_WORKING_MM)
        summary["mr_registration"] = _registration_summary(rigid, patient.mr.ct_to_mr, check_points)
        stage.transforms["T_CT_to_MR_rigid"] = (rigid.transform, None)
        stage.files["transform_ct_to_mr"] = write_transform(rigid.transform, folder / "T_CT_to_MR_rigid.h5")
        click_mr = rigid.transform.TransformPoint(tuple(float(c) for c in click))
        gtv_mr = segment_anatomical(patient.mr.t2w, click_mr).mask
        masks["GTV_MRI"] = propagate_mask(gtv_mr, ct, rigid.transform, mask_name="GTV_MRI")
        stage.files["gtv_mri_mr_space"] = write_image(gtv_mr, folder / "GTV_MRI_in_MR_space.nrrd")
    masks["GTV_PET"] = gtv_pet
    reference = {**masks, "GTV_truth": truth}
    for name, mask in masks.items():
        stage.files[f"gtv_{name}"] = write_image(mask, folder / f"{name}.nrrd")
    log("  comparing " + ", ".join(masks) + " with the truth and with each other")
    against_truth = compare_pairs(reference, reference="GTV_truth")
    table = volume_table(reference, reference="GTV_truth", pairs=against_truth)
    matrix = overlap_matrix(reference, pairs=against_truth)
    stage.files["gtv_volumes_csv"] = write_text(table.csv_text(), folder / "gtv_volumes.csv")
    stage.files["overlap_matrix_csv"] = write_text(matrix.csv_text(), folder / "overlap_matrix.csv")
    rows = pair_rows(against_truth, reference)
    stage.files["gtv_vs_truth_csv"] = write_text(csv_text(PAIR_COLUMNS, rows), folder / "gtv_vs_truth.csv")
    stage.files["dice_matrix_png"] = plot_matrix_heatmap(matrix.names, matrix.matrix("dice"),
                                                         folder / "dice_matrix.png", metric="dice",
                                                         title="Dice between GTVs and the truth (baseline)")
    stage.tables["GTV volumes (Table 2)"] = table.columns()
    stage.tables["GTV overlap (Dice)"] = {"mask": list(matrix.names),
                                          **{n: [float(v) for v in matrix.matrix("dice")[:, j]]
                                             for j, n in enumerate(matrix.names)}}
    stage.segmentations["baseline_GTV_modalities"] = (ct, {n: _on(m, ct) for n, m in reference.items()})
    for row in rows:
        log(f"    {row['a']:<8} {row['volume_a_ml']:6.1f} mL (truth {row['volume_b_ml']:.1f})  Dice {row['dice']:.3f}  "
            f"HD95 {row['hd95_mm']:.1f} mm")
    summary["vs_truth"] = {r["a"]: {k: r[k] for k in ("volume_a_ml", "volume_b_ml", "dice", "sensitivity", "ppv",
                                                       "hd95_mm", "msd_mm")} for r in rows}
    summary["table2"] = table.to_dict()["rows"]
    return summary


# ------------------------------------------------------------------------------------------------------------
# 2. Baseline, fraction 7, fraction 17
# ------------------------------------------------------------------------------------------------------------

def _timepoints(patient: DigitalPatient, ct: sitk.Image, gtv_pet: sitk.Image, *, stage: ComparisonStage,
                folder: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    timepoints = patient.timepoints
    fwhm = patient.config.scanner_config().effective_fwhm_mm
    working = BSPLINE_WORKING_MM_QUICK if quick else BSPLINE_WORKING_MM
    check_points = _points_near(timepoints[0].truth.gtv_ct, CHECK_MARGIN_MM)
    gtvs = {timepoints[0].name: gtv_pet}
    targets: dict[str, sitk.Image] = {}
    cts = {timepoints[0].name: ct}
    steps: list[sitk.Transform] = []
    registrations: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    segmentation: dict[str, Any] = {}
    for previous, current in itertools.pairwise(timepoints):
        log(f"  {current.name}: B-spline registration of its CT to the {previous.name} CT "
            f"({working:g} mm working grid)")
        fixed = cts[previous.name]
        result = register_bspline(fixed, current.ct, working_spacing_mm=working)
        steps.append(result.transform)
        cts[current.name] = current.ct
        chain = compose_transforms(list(steps))
        truth_chain = current.deformation.forward_transform() if current.deformation is not None else None
        # The step's own error at the baseline check points carried into the previous session's space.
        registrations[f"{previous.name}_to_{current.name}"] = {
            **_registration_summary(result, None, check_points),
            "chain_from_baseline_error_mm": _chain_error(chain, truth_chain, check_points),
        }
        name = f"T_{previous.name}_to_{current.name}_bspline"
        stage.transforms[name] = (result.transform, sampling_grid(fixed, SCENE_TRANSFORM_MM))
        stage.files[f"transform_{previous.name}_{current.name}"] = write_transform(result.transform,
                                                                                  folder / f"{name}.h5")
        seg = run_method("gradient", current.fdg_pet, current.truth.seed_lps, fwhm_mm=fwhm)
        dice = compare_masks(seg.mask, current.truth.gtv_pet).dice
        segmentation[current.name] = {"volume_ml": seg.volume_ml, "truth_volume_ml": current.truth.gtv_volume_ml,
                                      "dice_vs_truth": dice}
        # Against every earlier session (§5.3: P = the union of the earlier masks carried into this session),
        # each through its chain of consecutive registrations.
        earlier = list(gtvs)
        to_current = {name: compose_transforms(steps[i:]) for i, name in enumerate(earlier)}
        change = longitudinal_changes(seg.mask, {n: gtvs[n] for n in earlier}, to_current, current_name=current.name,
                                      allow_empty=True)
        gtvs[current.name] = seg.mask
        targets[current.name] = _union(seg.mask, change.previous)
        changes[current.name] = change.summary()
        stage.segmentations[f"{current.name}_GTV_changes"] = (
            current.fdg_pet, {f"GTV_PET_{current.name}": seg.mask, "GTV_PET_earlier_propagated": change.previous,
                              "persistent": change.persistent, "newborn": change.newborn,
                              "resolved": change.resolved})
        log(f"    GTV_PET {seg.volume_ml:.1f} mL (truth {current.truth.gtv_volume_ml:.1f}, Dice {dice:.3f}); vs "
            f"{', '.join(earlier)}: persistent {change.persistent_ml:.1f}, newborn {change.newborn_ml:.1f}, resolved "
            f"{change.resolved_ml:.1f}, within the {change.tolerance_mm:.0f} mm margin "
            f"{change.tolerated_current_ml + change.tolerated_previous_ml:.1f} mL; chain error "
            f"{registrations[f'{previous.name}_to_{current.name}']['chain_from_baseline_error_mm']['mean']:.2f} mm")
    course = volume_course(gtvs)
    fractions = {tp.name: tp.fraction for tp in timepoints}
    rows = [{"timepoint": v.name, "fraction": fractions[v.name], "gtv_pet_ml": v.volume_ml,
             "truth_ml": tp.truth.gtv_volume_ml, "change_ml": v.change_ml, "change_pct": v.change_pct,
             "change_from_baseline_pct": v.change_from_first_pct,
             "persistent_ml": changes.get(v.name, {}).get("persistent_ml"),
             "newborn_ml": changes.get(v.name, {}).get("newborn_ml"),
             "resolved_ml": changes.get(v.name, {}).get("resolved_ml")}
            for v, tp in zip(course, timepoints, strict=True)]
    columns = tuple(rows[0])
    stage.files["gtv_course_csv"] = write_text(csv_text(columns, rows), folder / "gtv_course.csv")
    stage.tables["GTV course"] = {c: [("" if r[c] is None else r[c]) for r in rows] for c in columns}
    curves = {"GTV_PET (gradient)": [(r["fraction"], r["gtv_pet_ml"]) for r in rows],
              "GTV truth": [(r["fraction"], r["truth_ml"]) for r in rows]}
    stage.files["gtv_course_png"] = plot_volume_over_time(curves, folder / "gtv_course.png",
                                                         title="Primary GTV over the course")
    return {"steps": steps, "cts": cts, "gtvs": gtvs, "targets": targets,
            "summary": {"registrations": registrations, "segmentation": segmentation, "changes": changes,
                        "course": rows, "bspline_working_mm": working}}


# ------------------------------------------------------------------------------------------------------------
# 3. Phase prescriptions accumulated on the baseline
# ------------------------------------------------------------------------------------------------------------

def _accumulation(patient: DigitalPatient, ct: sitk.Image, goal: sitk.Image, *, course: dict[str, Any],
                  stage: ComparisonStage, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    timepoints = patient.timepoints
    log("  accumulating the phase prescriptions (fractions 1-7, 8-17, 18-35) on the baseline CT")
    maps = [goal]
    for tp in timepoints[1:]:
        # The session's PET, its GTV and its CT come from one PET/CT acquisition (one scanner frame).
        maps.append(dose_painting_by_numbers(tp.fdg_pet, course["targets"][tp.name], grid=course["cts"][tp.name],
                                             dose_low=DOSE_LOW_GY, dose_high=DOSE_HIGH_GY,
                                             assume_same_frame=True).dose)
    doses = [_scaled(m, n / COURSE_FRACTIONS) for m, n in zip(maps, PHASE_FRACTIONS, strict=True)]
    steps = course["steps"]
    chains = [None] + [list(steps[: i + 1]) for i in range(len(steps))]
    names = [f"fx{a}-{b}" for a, b in _phase_ranges()]
    physical = accumulate_doses(ct, doses, chains, fractions=PHASE_FRACTIONS, names=names)
    eqd2 = accumulate_doses(ct, doses, chains, fractions=PHASE_FRACTIONS, names=names, alpha_beta_gy=ALPHA_BETA_GY)
    gtv = _on(timepoints[0].truth.gtv_ct, ct)
    quality = quality_metrics(physical.total, goal, _evaluation_mask(goal, physical.coverage))
    delivered = accumulate_doses(ct, doses[:2], chains[:2], fractions=PHASE_FRACTIONS[:2], names=names[:2])
    remaining = remaining_dose(goal, delivered.total, course["cts"][timepoints[-1].name],
                               compose_transforms(list(steps)), n_fractions=PHASE_FRACTIONS[-1],
                               inverse_spacing_mm=SCENE_TRANSFORM_MM)
    stage.files["accumulated_physical"] = write_image(physical.total, folder / "accumulated_physical_Gy.nrrd")
    stage.files["accumulated_eqd2"] = write_image(eqd2.total, folder / "accumulated_EQD2_Gy.nrrd")
    stage.files["remaining_fx18_35"] = write_image(remaining.prescription, folder / "remaining_fx18-35_Gy.nrrd")
    stage.volumes["DOSE_accumulated_physical_Gy"] = physical.total
    stage.volumes["DOSE_accumulated_EQD2_Gy"] = eqd2.total
    stage.volumes["RX_remaining_fx18-35_Gy"] = remaining.prescription
    in_gtv = sitk.GetArrayViewFromImage(gtv) > 0
    total = sitk.GetArrayViewFromImage(physical.total)
    target = sitk.GetArrayViewFromImage(goal)
    summary = {
        "phases": [{"name": n, "fractions": f, "map": "baseline" if i == 0 else timepoints[i].name}
                   for i, (n, f) in enumerate(zip(names, PHASE_FRACTIONS, strict=True))],
        "physical": physical.summary(), "eqd2": eqd2.summary(),
        "vs_baseline_goal": {"qf": quality.qf, "q95": quality.q95, "q105": quality.q105,
                             "mean_in_truth_gtv_gy": float(total[in_gtv].mean()),
                             "goal_mean_in_truth_gtv_gy": float(target[in_gtv].mean())},
        "remaining_fx18_35": remaining.summary(),
    }
    stage.tables["Dose accumulation"] = {
        "quantity": ["physical", "EQD2 (a/b 10 Gy)", "baseline goal"],
        "mean_in_truth_gtv_gy": [float(total[in_gtv].mean()),
                                 float(sitk.GetArrayViewFromImage(eqd2.total)[in_gtv].mean()),
                                 float(target[in_gtv].mean())],
        "max_gy": [summary["physical"]["max_gy"], summary["eqd2"]["max_gy"], float(target.max())],
        "coverage_fraction": [physical.coverage_fraction, eqd2.coverage_fraction, 1.0]}
    log(f"    accumulated mean in the GTV {summary['vs_baseline_goal']['mean_in_truth_gtv_gy']:.1f} Gy (goal "
        f"{summary['vs_baseline_goal']['goal_mean_in_truth_gtv_gy']:.1f}); QF vs the baseline map {quality.qf:.3f}; "
        f"remaining dose for fractions 18-35 up to {remaining.summary()['max_gy']:.1f} Gy")
    return summary


def _union(a: sitk.Image, b: sitk.Image) -> sitk.Image:
    union = (sitk.GetArrayViewFromImage(a) > 0) | (sitk.GetArrayViewFromImage(b) > 0)
    return image_from_array(union.astype(np.uint8), a)


def _phase_ranges() -> list[tuple[int, int]]:
    ends = np.cumsum(PHASE_FRACTIONS)
    return [(int(e - n + 1), int(e)) for e, n in zip(ends, PHASE_FRACTIONS, strict=True)]


def _scaled(dose: sitk.Image, factor: float) -> sitk.Image:
    scaled = image_from_array(sitk.GetArrayFromImage(dose).astype(np.float64) * factor, dose)
    return set_units(scaled, Units.GY)


def _evaluation_mask(goal: sitk.Image, coverage: sitk.Image) -> sitk.Image:
    inside = (sitk.GetArrayViewFromImage(goal) > 0) & (sitk.GetArrayViewFromImage(coverage) > 0)
    return image_from_array(inside.astype(np.uint8), goal)


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------

def _on(mask: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """The mask on ``grid`` (nearest neighbour; the same frame of reference)."""
    same = mask.GetSize() == grid.GetSize() and np.allclose(mask.GetOrigin(), grid.GetOrigin()) and \
        np.allclose(mask.GetSpacing(), grid.GetSpacing())
    return mask if same else resample_mask(mask, grid)


def _points_near(mask: sitk.Image, margin_mm: float, count: int = 400) -> np.ndarray:
    """About ``count`` voxel centres (LPS mm) inside ``mask`` or within ``margin_mm`` of it (evenly subsampled)."""
    inside = sitk.GetArrayFromImage(mask) > 0
    spacing = np.asarray(mask.GetSpacing())[::-1]
    near = ndimage.distance_transform_edt(~inside, sampling=spacing) <= margin_mm
    x, y, z = physical_grid(mask)
    points = np.stack([x[near], y[near], z[near]], axis=1)
    return points[:: max(1, len(points) // count)]


def _errors(transform: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> dict[str, float]:
    error = np.linalg.norm(transform_points(transform, points) - transform_points(truth, points), axis=1)
    return {"mean": float(error.mean()), "p95": float(np.percentile(error, 95)), "max": float(error.max()),
            "points": len(points)}


def _chain_error(chain: sitk.Transform, truth: sitk.Transform | None, points: np.ndarray) -> dict[str, float] | None:
    return None if truth is None else _errors(chain, truth, points)


def _registration_summary(result: RegistrationResult, truth: sitk.Transform | None,
                          points: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": result.mode, "metric": result.metric, "metric_before": result.initial_metric_value,
                           "metric_after": result.metric_value, "seconds": round(result.elapsed_s, 2)}
    if result.mode == "rigid":
        out["motion"] = rigid_motion(result.transform)
    if truth is not None:
        out["error_vs_truth_mm"] = _errors(result.transform, truth, points)
        out["truth_motion"] = rigid_motion(truth) if truth.IsLinear() else None
    if result.jacobian is not None:
        out["jacobian"] = {"verdict": result.jacobian.verdict, "min": result.jacobian.minimum,
                           "max": result.jacobian.maximum}
    return out
