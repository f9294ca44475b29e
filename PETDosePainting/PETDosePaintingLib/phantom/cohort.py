"""Benchmark lesion cases for PET segmentation: one simulated PET/CT study per lesion, with exact truth.

Design (``pet_segmentation.md`` §10.2 A-E, TG-211 evaluation §8.2): the anatomy of the digital patient is
built once (fine grid, 1 mm; 2 mm for the ``quick`` cohort of the tests); every lesion of
:func:`.tumour.benchmark_cohort` (volumes 0.5-60 mL log-uniform, tumour-to-background 2-10, heterogeneity
σ ∈ {0, 0.2, 0.35}, necrosis, inflammation rims and adjacent avid structures, sampled by the cohort
generator, never hand-picked) is then rendered alone into that anatomy and imaged:

1. **FDG activity** (SUVbw, fine grid): the normal-tissue table of :mod:`.tissues` (muscle 1.0, tonsils,
   glands, brain...) with the lesion composed by :func:`.tumour.apply_lesion_uptake` (tissue fractions,
   heterogeneity, necrosis, rim factor, adjacent avid structure);
2. **PET**: the scanner simulation :func:`.pet_scanner.simulate_pet` (system PSF, attenuation, scatter,
   randoms, Poisson noise, attenuation-weighted OSEM, post-filter) of the whole field of view on a
   clinical grid of ``pet_voxel_mm`` (default **2 mm** isotropic, an H&N-dedicated reconstruction as in
   :mod:`.patient`; 4 mm for ``quick``). The attenuation map comes from the label map with the lesion
   painted (:func:`.modalities.mu_map`);
3. **CT** (HU): :func:`.modalities.simulate_ct` on its own clinical grid (1 x 1 x 2 mm, noise 15 HU), then
   put on the PET grid by **trilinear interpolation** (``ct_interpolation="linear"``, what a viewer or
   ``imaging.resample`` does to co-register a CT with a PET of the same frame of reference) or, with
   ``"area"``, by exact box averaging of the noise-free CT signal plus the CT's own noise (a CT
   reconstructed directly at PET voxels);
4. **truth on the PET grid**: the primary GTV's tissue fraction (necrosis included; the rim and the
   adjacent structure are *not* GTV) box-averaged exactly into the PET voxels
   (:func:`.modalities.area_average`, §10.2 A.4), and the binary truth at fraction >= 0.5;
5. **the click**: the hottest voxel of the *noisy* PET inside the GTV's inner part (PET voxels at least
   90 % GTV, else at least 50 %), what a user clicking the lesion's brightest spot does (the rule of
   :mod:`.patient`); a click in a necrotic core never happens by this rule;
6. **strata**: volume bin (< 5, 5-20, > 20 mL of the fine-grid truth, §8.5), TBR bin (2-4, 4-7, 7-10),
   heterogeneous (σ > 0), necrotic (a necrotic core of at least 0.05 mL was rendered), inflammation rim,
   adjacent avid structure.

Everything is deterministic for a given seed: the lesion, PET noise and CT noise of lesion ``n`` come
from independent named streams of the cohort seed (:func:`.tumour.stream`), so simulating a subset of the
cohort (``indices``) gives exactly the same cases as simulating all of it.

The scanner's effective resolution for methods that need it (gradient deconvolution, ITM) is recorded
per case as ``fwhm_mm``: the nominal ``ScannerConfig.effective_fwhm_mm``, sqrt(system PSF² + post-filter²)
(7.5 mm for the defaults; ``bench_pet_physics.py`` measures 7.3-7.9 mm on edge fits, so the nominal value
is within 0.5 mm of the measured one).

Simplifications: one lesion per study (no involved node), the same anatomy (one patient) for the whole
cohort, and the PET simulator's own limits (2D per-slice model, no time of flight; see
:mod:`.pet_scanner`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imaging.image import Units, image_from_array, index_to_point
from ..imaging.resample import resample_to_reference
from .anatomy import Anatomy, AnatomyConfig, build_anatomy
from .modalities import CTConfig, area_average, mu_map, simulate_ct, tissue_property
from .pet_scanner import ScannerConfig, compatible_pet_grid, simulate_pet
from .tumour import (
    LesionTruth,
    RngLike,
    TumourConfig,
    apply_lesion_uptake,
    benchmark_cohort,
    build_tumour,
    gaussian_random_field,
    json_ready,
    paint_lesion_labels,
    seed_sequence,
    stream,
)

__all__ = [
    "CT_INTERPOLATIONS",
    "TBR_BINS",
    "VOLUME_BINS_ML",
    "LesionCase",
    "LesionStrata",
    "benchmark_cases",
    "cohort_anatomy",
    "simulate_lesion_case",
    "tbr_bin",
    "volume_bin",
]

#: Volume strata (mL) of TG-211-style reports (``pet_segmentation.md`` §8.5): < 5, 5-20, > 20 mL.
VOLUME_BINS_ML = (5.0, 20.0)
#: Tumour-to-background strata over the cohort's 2-10 range (design choice: low, medium, high contrast).
TBR_BINS = (4.0, 7.0)
#: How the CT is put on the PET grid.
CT_INTERPOLATIONS = ("linear", "area")
#: Smallest rendered necrotic volume (mL) for a lesion to count as necrotic (design choice: a core
#: smaller than one 2 mm voxel's worth of tissue cannot be seen).
MIN_NECROSIS_ML = 0.05


def volume_bin(volume_ml: float) -> str:
    """The volume stratum of a lesion: ``"<5 mL"``, ``"5-20 mL"`` or ``">20 mL"``."""
    lo, hi = VOLUME_BINS_ML
    if volume_ml < lo:
        return f"<{lo:g} mL"
    if volume_ml <= hi:
        return f"{lo:g}-{hi:g} mL"
    return f">{hi:g} mL"


def tbr_bin(tbr: float) -> str:
    """The tumour-to-background stratum: ``"TBR <4"``, ``"TBR 4-7"`` or ``"TBR >7"``."""
    lo, hi = TBR_BINS
    if tbr < lo:
        return f"TBR <{lo:g}"
    if tbr <= hi:
        return f"TBR {lo:g}-{hi:g}"
    return f"TBR >{hi:g}"


@dataclass(frozen=True)
class LesionStrata:
    """The strata a lesion belongs to (labels from its configuration and its rendered truth)."""

    volume_bin: str  #: "<5 mL", "5-20 mL", ">20 mL" (fine-grid truth volume)
    tbr_bin: str  #: "TBR <4", "TBR 4-7", "TBR >7" (viable-tumour mean / background)
    heterogeneous: bool  #: heterogeneity σ > 0
    necrotic: bool  #: a necrotic core of at least MIN_NECROSIS_ML was rendered
    rim: bool  #: peritumoral inflammation rim
    adjacent: bool  #: adjacent avid non-tumour structure

    def as_dict(self) -> dict[str, Any]:
        return {"volume_bin": self.volume_bin, "tbr_bin": self.tbr_bin, "heterogeneous": self.heterogeneous,
                "necrotic": self.necrotic, "rim": self.rim, "adjacent": self.adjacent}


@dataclass
class LesionCase:
    """One benchmark case: the images a method sees, the truth it is judged against, and the labels.

    Every image is on the PET grid (``pet``'s geometry): ``ct``, ``truth_fraction``, ``truth``,
    ``adjacent_mask`` and ``rim_mask``.

    Attributes
    ----------
    index : position in the cohort; name : ``"lesion_NN"``.
    pet : reconstructed FDG PET, SUVbw (float32).
    ct : CT on the PET grid, HU (float32), interpolated as ``ct_interpolation`` says.
    truth_fraction : primary GTV tissue fraction per PET voxel (units ``fraction``; necrosis included).
    truth : binary GTV truth, fraction >= 0.5 (uint8 label).
    adjacent_mask, rim_mask : the adjacent avid structure and the inflammation rim on the PET grid
        (fraction >= 0.5, outside the binary truth), for failure analysis; never GTV.
    seed_lps : the click (LPS mm): centre of the hottest PET voxel of the GTV's inner part.
    strata : :class:`LesionStrata`.
    lesion : the primary's :class:`.tumour.LesionTruth` (requested and rendered volumes, TBR, necrosis...).
    adjacent : the adjacent structure's truth (gap, uptake ratio), if any.
    config : the lesion's :class:`.tumour.TumourConfig`.
    scanner : the :class:`.pet_scanner.ScannerConfig` used; fwhm_mm : its nominal effective resolution.
    pet_voxel_mm, ct_interpolation : acquisition grid and CT resampling.
    acquisition : count totals of the PET simulation; seconds : simulation time per stage.
    """

    index: int
    name: str
    pet: sitk.Image
    ct: sitk.Image
    truth_fraction: sitk.Image
    truth: sitk.Image
    adjacent_mask: sitk.Image
    rim_mask: sitk.Image
    seed_lps: tuple[float, float, float]
    strata: LesionStrata
    lesion: LesionTruth
    adjacent: LesionTruth | None
    config: TumourConfig
    scanner: ScannerConfig
    fwhm_mm: float
    pet_voxel_mm: float
    ct_interpolation: str
    acquisition: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def truth_volume_ml(self) -> float:
        """Volume of the binary truth on the PET grid (mL)."""
        count = int(np.count_nonzero(sitk.GetArrayViewFromImage(self.truth)))
        return count * float(np.prod(self.truth.GetSpacing())) / 1000.0

    def parameters(self) -> dict[str, Any]:
        """JSON-ready description (no images): truth scalars, strata, configuration, acquisition."""
        return json_ready({
            "index": self.index, "name": self.name, "seed_lps": list(self.seed_lps),
            "strata": self.strata.as_dict(), "lesion": self.lesion.parameters(),
            "adjacent": None if self.adjacent is None else self.adjacent.parameters(),
            "truth_volume_pet_binary_ml": self.truth_volume_ml,
            "config": asdict(self.config), "scanner": asdict(self.scanner), "fwhm_mm": self.fwhm_mm,
            "pet_voxel_mm": self.pet_voxel_mm, "ct_interpolation": self.ct_interpolation,
            "acquisition": self.acquisition, "seconds": self.seconds,
        })


def cohort_anatomy(seed: int = 0, quick: bool = False) -> Anatomy:
    """The cohort's anatomy: 1 mm over 200 x 200 x 150 mm, or the 2 mm quick grid (:class:`AnatomyConfig`)."""
    return build_anatomy(AnatomyConfig.quick(seed=seed) if quick else AnatomyConfig(seed=seed))


def _ct_on_pet(labels: sitk.Image, pet_grid: sitk.Image, ct_config: CTConfig, interpolation: str,
               rng: np.random.Generator | np.random.SeedSequence) -> sitk.Image:
    if interpolation == "linear":
        ct = simulate_ct(labels, ct_config, rng=rng)
        on_pet = resample_to_reference(ct, pet_grid, interpolation="linear", default_value=-1000.0,
                                       output_pixel_type=sitk.sitkFloat32)
        return image_from_array(sitk.GetArrayFromImage(on_pet), pet_grid, units=Units.HU)
    hu = tissue_property(labels, "ct_hu_contrast" if ct_config.contrast else "ct_hu")
    values = area_average(hu, labels, pet_grid, fill_value=-1000.0)
    if ct_config.noise_sd_hu > 0:
        gen = stream(seed_sequence(rng), "ct")
        values = values + ct_config.noise_sd_hu * gaussian_random_field(
            values.shape, pet_grid.GetSpacing(), ct_config.noise_correlation_mm, gen)
    values = np.clip(np.rint(values), *ct_config.hu_range)
    return image_from_array(values.astype(np.float32), pet_grid, units=Units.HU)


def simulate_lesion_case(
    anatomy: Anatomy,
    tumour_config: TumourConfig,
    *,
    scanner: ScannerConfig | None = None,
    pet_voxel_mm: float = 2.0,
    ct_config: CTConfig | None = None,
    ct_interpolation: str = "linear",
    noise: bool = True,
    rng: RngLike = 0,
    index: int = 0,
    name: str | None = None,
) -> LesionCase:
    """Simulate one benchmark case: PET, CT on the PET grid, truth, click and strata (module docstring).

    Parameters
    ----------
    anatomy : the fine-grid anatomy (:func:`cohort_anatomy`); it is not modified.
    tumour_config : the lesion (its primary; a node, if configured, is rendered but not part of the truth).
    scanner : scanner and reconstruction (default :class:`ScannerConfig`: 4.5 mm system PSF, OSEM 3 x 21,
        6 mm 3D Gaussian post-filter, typical counts; calibrated on the NEMA/IEC phantom).
    pet_voxel_mm : isotropic PET voxel (mm, default 2; it must be a whole number of fine slices axially).
    ct_config : the CT (default :class:`.modalities.CTConfig`: 1 x 1 x 2 mm, 15 HU noise, contrast).
    ct_interpolation : ``"linear"`` (default) or ``"area"`` (module docstring, step 3).
    noise : Poisson noise on the PET data (default True; ``False`` reconstructs the expected data, for
        separating a method's bias from its noise sensitivity).
    rng : seed (int, SeedSequence or Generator); the lesion, the PET noise and the CT noise use independent
        streams of it.
    index, name : identification in a cohort.
    """
    if ct_interpolation not in CT_INTERPOLATIONS:
        raise InputError(f"ct_interpolation must be one of {', '.join(CT_INTERPOLATIONS)}, got {ct_interpolation!r}")
    scanner = scanner or ScannerConfig()
    ct_config = ct_config or CTConfig()
    seq = seed_sequence(rng)
    seconds: dict[str, float] = {}
    fine = anatomy.label_image

    t0 = time.perf_counter()
    truth = build_tumour(anatomy, tumour_config, rng=stream(seq, "tumour"))
    labels = image_from_array(paint_lesion_labels(anatomy.labels, truth), fine, units=Units.LABEL)
    activity = image_from_array(apply_lesion_uptake(tissue_property(fine, "fdg_suv"), truth, "FDG"), fine,
                                units=Units.SUV_BW)
    seconds["lesion"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pet_grid = compatible_pet_grid(fine, pet_voxel_mm)
    sim = simulate_pet(activity, mu_map(labels), pet_grid, scanner, rng=stream(seq, "pet"), noise=noise)
    pet = sim.image
    seconds["pet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ct = _ct_on_pet(labels, pet_grid, ct_config, ct_interpolation, stream(seq, "ct"))
    seconds["ct"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gtv = area_average(truth.gtv_fraction, fine, pet_grid)
    # not GTV by construction: a PET voxel is GTV first (the fine-grid rim also covers partial GTV voxels)
    adjacent = (area_average(truth.avid_fraction, fine, pet_grid) >= 0.5) & (gtv < 0.5)
    rim = (area_average(truth.inflammation_mask.astype(np.float32), fine, pet_grid) >= 0.5) & (gtv < 0.5)
    values = sitk.GetArrayViewFromImage(pet)
    inner = gtv >= 0.9
    if not inner.any():
        inner = gtv >= 0.5
    if not inner.any():
        raise InputError(f"lesion {name or index}: no PET voxel is at least half GTV (volume "
                         f"{truth.lesions['primary'].volume_ml:.3g} mL on {pet_voxel_mm:g} mm voxels)")
    k, j, i = np.unravel_index(int(np.argmax(np.where(inner, values, -np.inf))), values.shape)
    seed_lps = index_to_point(pet_grid, (int(i), int(j), int(k)))
    seconds["truth"] = time.perf_counter() - t0

    primary = truth.lesions["primary"]
    strata = LesionStrata(
        volume_bin=volume_bin(primary.volume_ml), tbr_bin=tbr_bin(primary.tbr),
        heterogeneous=tumour_config.primary.heterogeneity_sigma > 0,
        necrotic=primary.necrosis_volume_ml >= MIN_NECROSIS_ML,
        rim=tumour_config.inflammation is not None, adjacent=tumour_config.adjacent is not None)
    return LesionCase(
        index=int(index), name=name or f"lesion_{index:02d}", pet=pet, ct=ct,
        truth_fraction=image_from_array(gtv.astype(np.float32), pet_grid, units=Units.FRACTION),
        truth=image_from_array(gtv >= 0.5, pet_grid), adjacent_mask=image_from_array(adjacent, pet_grid),
        rim_mask=image_from_array(rim, pet_grid), seed_lps=seed_lps, strata=strata, lesion=primary,
        adjacent=truth.lesions.get("adjacent"), config=tumour_config, scanner=scanner,
        fwhm_mm=scanner.effective_fwhm_mm, pet_voxel_mm=float(pet_voxel_mm), ct_interpolation=ct_interpolation,
        acquisition={"trues": sim.trues, "scatter": sim.scatter, "randoms": sim.randoms, "nec": sim.nec,
                     "trues_per_slice": sim.trues_per_slice},
        seconds=seconds)


def benchmark_cases(
    n_lesions: int = 30,
    seed: int = 0,
    quick: bool = False,
    *,
    indices: Sequence[int] | None = None,
    pet_voxel_mm: float | None = None,
    scanner: ScannerConfig | None = None,
    ct_interpolation: str = "linear",
    noise: bool = True,
    anatomy: Anatomy | None = None,
    log: Callable[[str], None] | None = None,
) -> list[LesionCase]:
    """The segmentation benchmark cohort: :func:`.tumour.benchmark_cohort` lesions, each simulated alone.

    Parameters
    ----------
    n_lesions : cohort size (default 30); the cohort design depends on it (stratified sampling).
    seed : cohort seed (anatomy, lesion draws, noise); deterministic.
    quick : 2 mm anatomy over 180 x 180 x 80 mm, 4 mm PET voxels and ``ScannerConfig.quick()`` (tests).
    indices : simulate only these lesions of the ``n_lesions`` cohort (the same cases as in the full run).
    pet_voxel_mm : PET voxel (default 2 mm, 4 mm with ``quick``).
    scanner : default ``ScannerConfig()`` (``ScannerConfig.quick()`` with ``quick``).
    ct_interpolation, noise : see :func:`simulate_lesion_case`.
    anatomy : reuse an anatomy built by :func:`cohort_anatomy` with the same ``seed`` and ``quick``.
    log : called with a progress line per lesion.
    """
    say = log or (lambda _msg: None)
    anatomy = anatomy or cohort_anatomy(seed, quick)
    configs = benchmark_cohort(anatomy, n_lesions=n_lesions, seed=seed)
    voxel = pet_voxel_mm or (4.0 if quick else 2.0)
    scanner = scanner or (ScannerConfig.quick() if quick else ScannerConfig())
    chosen = range(n_lesions) if indices is None else [int(i) for i in indices]
    for i in chosen:
        if not 0 <= i < n_lesions:
            raise InputError(f"lesion index {i} is outside the cohort of {n_lesions}")
    seq = np.random.SeedSequence(seed)
    cases = []
    for i in chosen:
        t0 = time.perf_counter()
        case = simulate_lesion_case(anatomy, configs[i], scanner=scanner, pet_voxel_mm=voxel,
                                    ct_interpolation=ct_interpolation, noise=noise, rng=stream(seq, "case", i),
                                    index=i)
        cases.append(case)
        s = case.strata
        say(f"{case.name}: {case.lesion.volume_ml:6.2f} mL, TBR {case.lesion.tbr:4.1f}, "
            f"{'het ' if s.heterogeneous else ''}{'nec ' if s.necrotic else ''}{'rim ' if s.rim else ''}"
            f"{'adj ' if s.adjacent else ''}({time.perf_counter() - t0:.1f} s)")
    return cases
