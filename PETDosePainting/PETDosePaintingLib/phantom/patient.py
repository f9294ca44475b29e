"""The digital head-and-neck patient: every image of the workflow with exact ground truth.

Assembly of the phantom building blocks (deterministic for a given seed):

1. anatomy on a fine grid (1 mm; 2 mm with ``quick``), :mod:`.anatomy`;
2. lesions at baseline, fraction 7 and fraction 17 (shrinkage, falling FDG uptake, changing hypoxia),
   in baseline coordinates, :mod:`.tumour`;
3. a known smooth deformation baseline -> each later timepoint, :mod:`.deformation`; the anatomy,
   activity and truth of a timepoint are the baseline ones warped once through its inverse;
4. FDG and FMISO activity (normal-tissue table of :mod:`.tissues` plus the lesions) imaged by the PET
   scanner simulation, :mod:`.pet_scanner` (FMISO at low counts: its images are noisier);
5. CT at every timepoint; T1w, T2w MRI and diffusion-weighted MRI at baseline, acquired in a position
   that differs from the CT by a known rigid motion (a ground truth for cross-modality registration),
   :mod:`.modalities`;
6. the truth on the PET grid (tissue fraction by exact area averaging, binary at fraction >= 0.5) and on
   the CT grid (planning grid): GTV, involved node, necrosis, hypoxic sub-volume, organs at risk.

Simplification (stated in the parameters): the FMISO PET of a timepoint shares the CT and frame of
reference of that timepoint's session (in the clinic it is a separate session registered to the CT).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..imaging.image import Units, image_from_array, index_to_point
from ..imaging.resample import resample_to_reference
from .anatomy import Anatomy, AnatomyConfig, build_anatomy
from .deformation import Deformation, build_deformation, timepoint_deformation_config, warp_to_timepoint
from .modalities import (
    CTConfig,
    DWIConfig,
    DWIResult,
    MRConfig,
    MRImages,
    area_average,
    mu_map,
    simulate_ct,
    simulate_dwi,
    simulate_mr,
    tissue_property,
)
from .pet_scanner import ScannerConfig, compatible_pet_grid, simulate_pet
from .tumour import (
    DEFAULT_TIMEPOINTS,
    RimConfig,
    TumourConfig,
    TumourSeries,
    TumourTruth,
    apply_lesion_uptake,
    evolve_tumour,
    json_ready,
    paint_lesion_labels,
    seed_sequence,
    stream,
)

#: Organs at risk written with the truth (names of :attr:`Anatomy.structures`, TG-263-like output names).
OAR_NAMES: dict[str, str] = {
    "parotid_l": "Parotid_L", "parotid_r": "Parotid_R", "submandibular_l": "Glnd_Submand_L",
    "submandibular_r": "Glnd_Submand_R", "spinal_cord": "SpinalCord", "mandible": "Bone_Mandible",
    "larynx": "Larynx", "body": "External",
}


def default_tumour() -> TumourConfig:
    """The demonstration patient's lesions: a 20 mL oropharyngeal primary (tumour-to-background 7, typical
    H&N SUVmax about 10) with an eccentric necrotic core and a mild inflammation rim, plus a 3 mL level II
    node (design choices covering the hard cases)."""
    example = TumourConfig.example()
    return replace(example, primary=replace(example.primary, tbr=7.0),
                   inflammation=RimConfig(thickness_mm=3.0, peak_ratio=1.4))


@dataclass(frozen=True)
class PatientConfig:
    """Parameters of :func:`build_patient` (lengths mm, activities Bq, weights kg).

    ``quick`` uses the 2 mm anatomy over 180 x 180 x 80 mm, 4 mm PET voxels and the quick scanner, for
    tests. Defaults not from the reference notes are design choices: FDG 300 MBq with 60 min uptake,
    FMISO 370 MBq with 150 min uptake (static late frame, as clinical FMISO protocols at 2-4 h), muscle
    FMISO SUV 1.2, a 75 kg patient losing 1.5 and 3 kg by fractions 7 and 17, MR offset by a 3-degree
    rotation and 5 mm translation.
    """

    seed: int = 0
    quick: bool = False
    tumour: TumourConfig | None = None
    pet_voxel_mm: float | None = None  #: default 2 mm (H&N protocol), 4 mm with ``quick``
    scanner: ScannerConfig | None = None  #: default: ScannerConfig() (ScannerConfig.quick() with ``quick``)
    fmiso_count_level: str | float = "low"
    fmiso_muscle_suv: float = 1.2
    with_timepoints: bool = True
    with_mr: bool = True
    ct: CTConfig = field(default_factory=CTConfig)
    mr: MRConfig = field(default_factory=MRConfig)
    dwi: DWIConfig = field(default_factory=DWIConfig)
    mr_rotation_deg: tuple[float, float, float] = (2.0, -1.0, 2.0)
    mr_translation_mm: tuple[float, float, float] = (3.0, -2.5, 3.0)
    weights_kg: tuple[float, float, float] = (75.0, 73.5, 72.0)
    height_m: float = 1.78
    sex: str = "M"
    fdg_dose_bq: float = 300e6
    fdg_uptake_min: float = 60.0
    fmiso_dose_bq: float = 370e6
    fmiso_uptake_min: float = 150.0
    baseline_date: _dt.date = _dt.date(2024, 1, 15)
    days_after_baseline: tuple[int, int] = (10, 24)  #: fraction 7 and 17 (5 fractions per week)

    def anatomy_config(self) -> AnatomyConfig:
        return AnatomyConfig.quick(seed=self.seed) if self.quick else AnatomyConfig(seed=self.seed)

    def scanner_config(self) -> ScannerConfig:
        if self.scanner is not None:
            return self.scanner
        return ScannerConfig.quick() if self.quick else ScannerConfig()

    def pet_voxel(self) -> float:
        return self.pet_voxel_mm or (4.0 if self.quick else 2.0)


@dataclass
class TimepointTruth:
    """Truth of one timepoint in its own (deformed) space, on the PET and CT grids."""

    gtv_fraction_pet: sitk.Image  #: primary GTV tissue fraction (necrosis included), PET grid
    gtv_pet: sitk.Image  #: fraction >= 0.5, PET grid
    node_pet: sitk.Image
    hypoxic_pet: sitk.Image  #: hypoxic sub-volume, PET grid
    necrosis_pet: sitk.Image
    inflammation_pet: sitk.Image  #: peritumoral inflammation rim (not tumour), PET grid
    gtv_ct: sitk.Image  #: primary GTV on the CT grid
    node_ct: sitk.Image
    hypoxic_ct: sitk.Image
    oars_ct: dict[str, sitk.Image]  #: OAR masks on the CT grid, by output name (:data:`OAR_NAMES`)
    gtv_volume_ml: float  #: exact fine-grid tissue-fraction volume of the primary GTV
    hypoxic_volume_ml: float  #: fine-grid hypoxic volume
    seed_lps: tuple[float, float, float]  #: a click inside the GTV: its hottest FDG voxel (PET grid)


@dataclass
class PatientTimepoint:
    """The images and truth of one imaging session."""

    name: str  #: "baseline", "fx7", "fx17"
    fraction: int  #: fractions delivered before the session
    date: _dt.date
    weight_kg: float
    fdg_pet: sitk.Image  #: SUVbw, PET grid
    fmiso_pet: sitk.Image  #: SUVbw, PET grid
    ct: sitk.Image  #: HU, CT grid
    truth: TimepointTruth
    deformation: Deformation | None  #: baseline -> this timepoint (``None`` at baseline)
    tumour: TumourTruth  #: fine-grid lesion truth in baseline coordinates
    pet_stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class MRSession:
    """Baseline MRI acquired in a position offset from the CT by a known rigid motion."""

    t1w: sitk.Image
    t2w: sitk.Image
    dwi: DWIResult
    ct_to_mr: sitk.Euler3DTransform  #: maps CT (fixed) points to MR (moving) points: what registration recovers
    gtv_mr: sitk.Image  #: primary GTV truth on the T1w grid, in MR space


@dataclass
class DigitalPatient:
    """The whole digital patient."""

    config: PatientConfig
    anatomy: Anatomy
    series: TumourSeries
    timepoints: list[PatientTimepoint]
    mr: MRSession | None

    def timepoint(self, name: str) -> PatientTimepoint:
        for tp in self.timepoints:
            if tp.name == name:
                return tp
        raise KeyError(f"no timepoint {name!r}; have {', '.join(t.name for t in self.timepoints)}")

    def parameters(self) -> dict[str, Any]:
        """Every parameter and truth scalar, JSON-ready."""
        cfg = self.config
        return json_ready({
            "seed": cfg.seed,
            "quick": cfg.quick,
            "patient": {"weights_kg": list(cfg.weights_kg), "height_m": cfg.height_m, "sex": cfg.sex},
            "anatomy": self.anatomy.parameters(),
            "lesions": self.series.parameters(),
            "scanner": asdict(cfg.scanner_config()),
            "pet_voxel_mm": cfg.pet_voxel(),
            "tracers": {
                "FDG": {"dose_bq": cfg.fdg_dose_bq, "uptake_min": cfg.fdg_uptake_min},
                "FMISO": {"dose_bq": cfg.fmiso_dose_bq, "uptake_min": cfg.fmiso_uptake_min,
                          "muscle_suv": cfg.fmiso_muscle_suv, "count_level": cfg.fmiso_count_level},
            },
            "simplifications": [
                "FMISO PET shares the CT and frame of reference of its timepoint session",
                "2D per-slice PET simulation (PETSTEP-like), no time-of-flight",
                "tumour shrinkage is concentric; surrounding tissue does not collapse into it",
            ],
            "timepoints": [
                {"name": tp.name, "fraction": tp.fraction, "date": tp.date.isoformat(), "weight_kg": tp.weight_kg,
                 "gtv_volume_ml": tp.truth.gtv_volume_ml,
                 "gtv_pet_binary_ml": _volume_ml(tp.truth.gtv_pet),
                 "gtv_ct_binary_ml": _volume_ml(tp.truth.gtv_ct),
                 "hypoxic_volume_ml": tp.truth.hypoxic_volume_ml,
                 "seed_lps_mm": list(tp.truth.seed_lps),
                 "deformation": None if tp.deformation is None else tp.deformation.parameters(),
                 "pet": tp.pet_stats}
                for tp in self.timepoints
            ],
            "hypoxia_changes": [{"name": c.name, "persistent_ml": c.persistent_ml, "resolved_ml": c.resolved_ml,
                                 "newborn_ml": c.newborn_ml} for c in self.series.hypoxia_changes],
            "mr": None if self.mr is None else {
                "rotation_deg": list(cfg.mr_rotation_deg), "translation_mm": list(cfg.mr_translation_mm),
                "ct_to_mr_convention": "maps CT (fixed) points to MR (moving) points, ITK convention",
                "b_values": list(cfg.dwi.b_values),
            },
        })


def _volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def build_patient(config: PatientConfig | None = None, log: Callable[[str], None] | None = None) -> DigitalPatient:
    """Build the digital patient (all images in memory; write them with :mod:`.patient_io`)."""
    cfg = config or PatientConfig()
    say = log or (lambda _msg: None)
    seq = seed_sequence(cfg.seed)
    say("anatomy")
    anatomy = build_anatomy(cfg.anatomy_config())
    specs = DEFAULT_TIMEPOINTS if cfg.with_timepoints else ()
    say("lesions at every timepoint")
    series = evolve_tumour(anatomy, cfg.tumour or default_tumour(), rng=int(cfg.seed), timepoints=specs)
    fine = anatomy.label_image
    pet_grid = compatible_pet_grid(fine, cfg.pet_voxel())
    scanner = cfg.scanner_config()
    base_fdg = tissue_property(fine, "fdg_suv")
    base_fmiso = tissue_property(fine, "fmiso_tmr")

    timepoints = []
    names = ["baseline", *[s.name for s in specs]]
    fractions = [0, *[s.fraction for s in specs]]
    days = [0, *cfg.days_after_baseline[: len(specs)]]
    for index, (name, fraction, truth) in enumerate(zip(names, fractions, series.timepoints, strict=True)):
        say(f"{name}: deformation, CT, FDG and FMISO PET")
        deformation = None
        if index > 0:
            deformation = build_deformation(anatomy, timepoint_deformation_config(anatomy, fraction),
                                            rng=stream(seq, "deformation", index))

        def warp(array: np.ndarray, interpolation: str = "linear", units: str | None = None,
                 default: float = 0.0, deformation: Deformation | None = deformation) -> sitk.Image:
            image = image_from_array(array, fine, units=units)
            return image if deformation is None else warp_to_timepoint(image, deformation, interpolation,
                                                                       default_value=default)

        labels = warp(paint_lesion_labels(anatomy.labels, truth), "nearest", Units.LABEL)
        fdg = warp(apply_lesion_uptake(base_fdg, truth, "FDG"), units=Units.SUV_BW)
        fmiso = warp(cfg.fmiso_muscle_suv * apply_lesion_uptake(base_fmiso, truth, "FMISO"), units=Units.SUV_BW)
        mu = mu_map(labels)
        fdg_sim = simulate_pet(fdg, mu, pet_grid, scanner, rng=stream(seq, "pet-fdg", index))
        fmiso_sim = simulate_pet(fmiso, mu, pet_grid, scanner.with_count_level(cfg.fmiso_count_level),
                                 rng=stream(seq, "pet-fmiso", index))
        ct = simulate_ct(labels, cfg.ct, rng=stream(seq, "ct", index))
        tp_truth = _timepoint_truth(anatomy, truth, warp, pet_grid, ct=ct, fdg_pet=fdg_sim.image)
        timepoints.append(PatientTimepoint(
            name=name, fraction=fraction, date=cfg.baseline_date + _dt.timedelta(days=days[index]),
            weight_kg=cfg.weights_kg[min(index, len(cfg.weights_kg) - 1)], fdg_pet=fdg_sim.image,
            fmiso_pet=fmiso_sim.image, ct=ct, truth=tp_truth, deformation=deformation, tumour=truth,
            pet_stats={"FDG": _pet_stats(fdg_sim), "FMISO": _pet_stats(fmiso_sim)},
        ))

    mr = None
    if cfg.with_mr:
        say("baseline MRI (T1w, T2w, DWI) with a known rigid offset")
        mr = _mr_session(anatomy, series.timepoints[0], cfg, seq)
    return DigitalPatient(cfg, anatomy, series, timepoints, mr)


def _pet_stats(sim) -> dict[str, Any]:
    return {"trues": sim.trues, "scatter": sim.scatter, "randoms": sim.randoms, "nec": sim.nec,
            "trues_per_slice": sim.trues_per_slice, "iterations": sim.iterations, "subsets": sim.subsets,
            "seconds": round(sim.timings_s.get("total", 0.0), 2)}


def _binary(fraction: np.ndarray, grid: sitk.Image) -> sitk.Image:
    return image_from_array(fraction >= 0.5, grid)


def _timepoint_truth(anatomy: Anatomy, truth: TumourTruth, warp, pet_grid: sitk.Image, *, ct: sitk.Image,
                     fdg_pet: sitk.Image) -> TimepointTruth:
    fine = anatomy.label_image
    fractions = {
        "gtv": truth.gtv_fraction, "node": truth.node_fraction,
        "hypoxic": truth.hypoxic_mask.astype(np.float32), "necrosis": truth.necrosis_fraction,
        "inflammation": truth.inflammation_mask.astype(np.float32),
    }
    warped = {k: sitk.GetArrayFromImage(warp(v.astype(np.float32))) for k, v in fractions.items()}
    on_pet = {k: area_average(v, fine, pet_grid) for k, v in warped.items()}
    on_ct = {k: area_average(warped[k], fine, ct) for k in ("gtv", "node", "hypoxic")}
    oars = {}
    for key, out_name in OAR_NAMES.items():
        structure = sitk.GetArrayFromImage(warp(anatomy.structures[key].astype(np.float32)))
        oars[out_name] = _binary(area_average(structure, fine, ct), ct)
    gtv_pet = _binary(on_pet["gtv"], pet_grid)
    # The click a user would make: the hottest FDG voxel of the GTV's inner part (never a necrotic core).
    values = sitk.GetArrayFromImage(fdg_pet)
    inner = on_pet["gtv"] >= 0.9
    inner = inner if inner.any() else on_pet["gtv"] >= 0.5
    k, j, i = np.unravel_index(int(np.argmax(np.where(inner, values, -np.inf))), values.shape)
    vv = anatomy.voxel_volume_ml
    return TimepointTruth(
        gtv_fraction_pet=image_from_array(on_pet["gtv"].astype(np.float32), pet_grid, units=Units.FRACTION),
        gtv_pet=gtv_pet, node_pet=_binary(on_pet["node"], pet_grid), hypoxic_pet=_binary(on_pet["hypoxic"], pet_grid),
        necrosis_pet=_binary(on_pet["necrosis"], pet_grid),
        inflammation_pet=_binary(on_pet["inflammation"], pet_grid),
        gtv_ct=_binary(on_ct["gtv"], ct), node_ct=_binary(on_ct["node"], ct), hypoxic_ct=_binary(on_ct["hypoxic"], ct),
        oars_ct=oars,
        gtv_volume_ml=float(warped["gtv"].sum()) * vv,
        hypoxic_volume_ml=float(warped["hypoxic"].sum()) * vv,
        seed_lps=index_to_point(pet_grid, (i, j, k)),
    )


def _mr_session(anatomy: Anatomy, baseline: TumourTruth, cfg: PatientConfig, seq) -> MRSession:
    fine = anatomy.label_image
    centre = fine.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fine.GetSize()])
    ct_to_mr = sitk.Euler3DTransform(centre, *np.deg2rad(cfg.mr_rotation_deg), cfg.mr_translation_mm)
    mr_to_ct = ct_to_mr.GetInverse()  # MR(y) = anatomy(T^-1(y)): resample the CT-space labels through it
    labels_ct = image_from_array(paint_lesion_labels(anatomy.labels, baseline), fine, units=Units.LABEL)
    labels_mr = resample_to_reference(labels_ct, fine, mr_to_ct, interpolation="nearest")
    mr: MRImages = simulate_mr(labels_mr, cfg.mr, rng=stream(seq, "mr"))
    dwi = simulate_dwi(labels_mr, cfg.dwi, rng=stream(seq, "dwi"))
    gtv_fine = resample_to_reference(image_from_array(baseline.gtv_fraction.astype(np.float32), fine), fine,
                                     mr_to_ct, interpolation="linear")
    gtv_mr = _binary(area_average(sitk.GetArrayFromImage(gtv_fine), fine, mr.t1w), mr.t1w)
    return MRSession(t1w=mr.t1w, t2w=mr.t2w, dwi=dwi, ct_to_mr=ct_to_mr, gtv_mr=gtv_mr)


__all__ = ["OAR_NAMES", "DigitalPatient", "MRSession", "PatientConfig", "PatientTimepoint",
           "TimepointTruth", "build_patient", "default_tumour"]
