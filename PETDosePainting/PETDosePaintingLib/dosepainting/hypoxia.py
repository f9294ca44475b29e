"""Hypoxia PET (FMISO, FAZA): uptake ratio maps, hypoxic volume and fraction, TMRmax/TMRpeak, uptake -> pO2 ->
dose-modifying factor -> dose, and the Patlak analysis of dynamic FMISO (``dose_painting.md`` §2).

Ratio maps (§2.1-2.2)
---------------------
``r_i = U_i / U_ref`` with ``U_ref`` the mean uptake in a reference region: neck muscle (tumour-to-muscle,
T/M; Lee N et al., IJROBP 2016;96:9), a blood-pool ROI or a venous blood-sample value in the PET's units
(tumour-to-blood, T/B; Rasey JS et al., IJROBP 1996;36:417), or another background ROI (T/Bg; Bollineni VR et
al., Radiother Oncol 2014;113:198). Ratios cancel the SUV normalisation, so any activity units work (a blood
sample must be in the PET's units). A reference region overlapping the tumour target is refused.

Hypoxic volume ``HV = v_voxel * #{i in target : r_i >= r_th}`` (mL), hypoxic fraction ``HF = HV / V_target``;
``TMRmax`` the highest voxel ratio in the target; ``TMRpeak`` the highest mean ratio in a sphere of 1 cm3
(diameter 12.41 mm) centred in the target (PERCIST-like peak, the moving sphere of
:func:`PETDosePaintingLib.segmentation.quantify.suv_peak`). HF is reported **without** island filtering (§2.2);
islands are dropped only when a boost contour is made (:func:`hypoxic_boost_volume`).

Default thresholds by tracer and reference kind (:data:`HYPOXIA_THRESHOLDS`, the explicit table):

=======  ==========  =========  ====================================================================
tracer   reference   threshold  source (status in the reference note)
=======  ==========  =========  ====================================================================
fmiso    muscle      T/M > 1.2  Lee N et al., IJROBP 2016;96:9 [V abstract]
fmiso    blood       T/B >= 1.4 Rasey JS et al., IJROBP 1996;36:417 [M] (at >= 2 h p.i.)
faza     background  T/Bg >= 1.4 Bollineni VR et al., Radiother Oncol 2014;113:198 [V abstract]
faza     muscle      T/M >= 1.5 Souvatzoglou M et al., IJROBP 2007;69:541 [V abstract]
=======  ==========  =========  ====================================================================

Other combinations (e.g. FAZA against a blood sample, FMISO against a generic background) have no default:
give the threshold. At 2-4 h p.i. FMISO blood and muscle levels are close (T/B ≈ T/M, §2.1).

Uptake -> pO2 -> dose (§2.4; structure after Toma-Dasu I et al., Acta Oncol 2012;51:222 [M], this project's
parameterisation)
--------------------------------------------------------------------------------------------------------
* Binding model ``r(p) = r_min + (r_max - r_min) K_u / (K_u + p)``, inverted:
  ``p = K_u [(r_max - r_min) / (r - r_min) - 1]`` for ``r_min < r < r_max``, clamped to [0, p_max] (r >= r_max
  -> 0 mmHg; r <= r_min -> p_max). ``K_u`` default 1.4 mmHg (Warren DR & Partridge M, PMB 2016;61:8596
  [V abstract]); ``r_min`` = 1.0 and ``r_max`` = 3.0 are **design defaults, unverified** (Toma-Dasu calibrated
  them differently; take theirs from the paper); ``p_max`` 100 mmHg. The note warns that the true voxel
  relation is not monotonic (uptake falls again in necrotic/avascular tissue): low-FDG or unperfused voxels
  may be necrotic rather than "very hypoxic".
* Alper-Howard-Flanders oxygen effect: ``OER(p) = (m p + K) / (p + K)`` (sensitivity relative to anoxia) and
  the dose-modifying factor relative to well-oxygenated tissue ``DMF(p) = m (p + K) / (m p + K)``;
  ``m`` = 3 and ``K`` = 3 mmHg (textbook [M]). DMF(0) = m, DMF(K) = 2m/(m+1), DMF -> 1 for p >> K.
* LQ with ``alpha / DMF`` and ``beta / DMF^2``; the dose leaving ``s*`` surviving clonogens of ``N_i`` in
  ``n`` fractions is the positive root ``D_i = [-a_i + sqrt(a_i^2 + 4 (b_i / n) ln(N_i / s*))] / (2 b_i / n)``,
  i.e. exactly ``DMF_i`` times the oxic dose. ``s* = -ln(TCP_target) / N_voxels`` (an equal share of the
  Poisson budget). Doses are then clipped to [``dose_floor``, ``dose_cap``] (default 70 and 86 Gy: severe
  hypoxia yields > 100 Gy, which is why clinical translations cap, §2.4).

Dynamic FMISO: Patlak plot (§2.3, standard PET kinetics; Patlak CS et al., J Cereb Blood Flow Metab 1983;3:1)
---------------------------------------------------------------------------------------------------------
For frames with mid-time ``t >= t*``: ``C_T(t)/C_p(t) = Ki * [int_0^t C_p] / C_p(t) + V0``. Ordinary least
squares per voxel (vectorised, closed form: the abscissa is shared by all voxels). The input-function
integral is the trapezoidal rule over the given samples with ``C_p(0) = 0`` assumed at injection when the
first sample is later; ``C_p`` at the frame times by linear interpolation. Ki in 1/min, V0 in mL/mL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imaging.image import (
    Units,
    check_same_geometry,
    image_from_array,
    index_to_point,
    require_binary_mask,
    require_finite,
    voxel_volume_ml,
)
from ..segmentation.quantify import suv_peak
from .prescription import DEFAULT_MIN_ISLAND_ML, clean_mask

#: Reference-region kinds.
REFERENCE_KINDS = ("muscle", "blood", "background")
#: Tracers with a default threshold table.
TRACERS = ("fmiso", "faza")
#: Diameter (mm) of a 1 cm3 sphere: 2 (3 / (4 pi))^(1/3) * 10 mm = 12.407 mm (TMRpeak, §2.2).
PEAK_DIAMETER_1CM3_MM = 20.0 * (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


@dataclass(frozen=True)
class HypoxiaThreshold:
    """One row of the default threshold table."""

    tracer: str
    reference_kind: str
    threshold: float
    strict: bool  #: True: hypoxic if r > threshold; False: r >= threshold
    metric: str  #: "T/M", "T/B", "T/Bg"
    source: str
    status: str  #: how sure the value is ([V] abstract seen / [M] from memory)


#: The explicit default table (tracer, reference kind) -> threshold. See the module docstring.
HYPOXIA_THRESHOLDS: dict[tuple[str, str], HypoxiaThreshold] = {
    ("fmiso", "muscle"): HypoxiaThreshold("fmiso", "muscle", 1.2, True, "T/M",
                                          "Lee N et al., IJROBP 2016;96:9", "[V abstract]"),
    ("fmiso", "blood"): HypoxiaThreshold("fmiso", "blood", 1.4, False, "T/B",
                                         "Rasey JS et al., IJROBP 1996;36:417 (>= 2 h p.i.)", "[M]"),
    ("faza", "background"): HypoxiaThreshold("faza", "background", 1.4, False, "T/Bg",
                                             "Bollineni VR et al., Radiother Oncol 2014;113:198", "[V abstract]"),
    ("faza", "muscle"): HypoxiaThreshold("faza", "muscle", 1.5, False, "T/M",
                                         "Souvatzoglou M et al., IJROBP 2007;69:541", "[V abstract]"),
}


def default_threshold(tracer: str, reference_kind: str) -> HypoxiaThreshold:
    """The table entry for ``(tracer, reference_kind)``; :class:`InputError` listing the table if none."""
    tracer = str(tracer).lower()
    if tracer not in TRACERS:
        raise InputError(f"tracer must be one of {', '.join(TRACERS)}, got {tracer!r}")
    if reference_kind not in REFERENCE_KINDS:
        raise InputError(f"reference kind must be one of {', '.join(REFERENCE_KINDS)}, got {reference_kind!r}")
    entry = HYPOXIA_THRESHOLDS.get((tracer, reference_kind))
    if entry is None:
        table = "; ".join(f"{t}/{k}: {e.metric} {'>' if e.strict else '>='} {e.threshold:g}"
                          for (t, k), e in HYPOXIA_THRESHOLDS.items())
        raise InputError(f"no default hypoxia threshold for {tracer} against a {reference_kind} reference "
                         f"(defaults: {table}); give the threshold explicitly")
    return entry


# --------------------------------------------------------------------------------------------------------
# Ratio map
# --------------------------------------------------------------------------------------------------------

@dataclass
class RatioMap:
    """A tumour-to-reference ratio map and the reference it was normalised to."""

    ratio: sitk.Image  #: dimensionless ratio on the PET grid (units "ratio")
    reference_mean: float  #: mean uptake in the reference region (or the blood-sample value), PET units
    reference_sd: float  #: standard deviation in the reference region, PET units (0 for a sample value)
    reference_volume_ml: float  #: volume of the reference region (0 for a sample value)
    reference_kind: str  #: "muscle" (T/M), "blood" (T/B) or "background" (T/Bg)
    reference_source: str = "roi"  #: "roi" or "blood sample"


def uptake_ratio_map(pet: sitk.Image, reference: sitk.Image | None = None, reference_kind: str = "muscle", *,
                     blood_value: float | None = None, target: sitk.Image | None = None,
                     reference_name: str = "the reference region", target_name: str = "the tumour target"
                     ) -> RatioMap:
    """Divide the PET by the mean uptake in ``reference`` (a binary mask on the PET grid) or by ``blood_value``.

    Parameters
    ----------
    pet : hypoxia PET (SUV or Bq/mL).
    reference : binary mask of the reference region (muscle, blood pool or background), same grid as ``pet``.
    reference_kind : ``"muscle"`` (T/M), ``"blood"`` (T/B) or ``"background"`` (T/Bg); selects the default
        threshold of :func:`hypoxia_metrics`.
    blood_value : instead of ``reference``, a venous blood-sample activity in the PET's units (needs
        ``reference_kind="blood"``).
    target : the tumour target (binary, PET grid); if given, a reference region overlapping it is refused.
    reference_name, target_name : how error messages name the two masks (e.g. their files).
    """
    if reference_kind not in REFERENCE_KINDS:
        raise InputError(f"reference_kind must be one of {', '.join(REFERENCE_KINDS)}, got {reference_kind!r}")
    if (reference is None) == (blood_value is None):
        raise InputError("give either a reference region or a blood-sample value, not both or neither")
    require_finite(pet, "hypoxia PET")
    values = sitk.GetArrayFromImage(pet).astype(np.float64)
    if blood_value is not None:
        if reference_kind != "blood":
            raise InputError(f"a blood-sample value needs reference kind 'blood', not {reference_kind!r}")
        mean = float(blood_value)
        if not (np.isfinite(mean) and mean > 0):
            raise InputError(f"the blood-sample value must be a positive number in the PET's units, got "
                             f"{blood_value!r}")
        sd, volume, source = 0.0, 0.0, "blood sample"
    else:
        check_same_geometry(pet, reference, "hypoxia PET", "reference region")
        ref = require_binary_mask(reference, "reference region")
        if target is not None:
            check_same_geometry(pet, target, "hypoxia PET", "tumour target")
            tumour = require_binary_mask(target, "tumour target")
            overlap = int(np.count_nonzero(ref & tumour))
            if overlap:
                raise InputError(f"{reference_name} overlaps {target_name} in {overlap} voxel(s) "
                                 f"({overlap * voxel_volume_ml(pet):.3g} mL); draw the {reference_kind} reference "
                                 "away from the tumour")
        ref_values = values[ref]
        mean = float(ref_values.mean())
        if not mean > 0:
            raise InputError(f"the mean uptake in the reference region is {mean:.3g}; it must be positive")
        sd = float(ref_values.std(ddof=1)) if ref_values.size > 1 else 0.0
        volume = float(ref.sum()) * voxel_volume_ml(pet)
        source = "roi"
    ratio = image_from_array((values / mean).astype(np.float32), pet, units=Units.RATIO)
    return RatioMap(ratio, mean, sd, volume, reference_kind, source)


# --------------------------------------------------------------------------------------------------------
# Hypoxic volume, fraction, TMRmax, TMRpeak
# --------------------------------------------------------------------------------------------------------

@dataclass
class HypoxiaMetrics:
    """Hypoxic volume/fraction and peak ratios inside a target (see the module docstring)."""

    tracer: str | None
    reference_kind: str
    threshold: float
    comparison: str  #: ">" or ">="
    threshold_source: str  #: the table entry's source, or "given"
    hv_ml: float  #: hypoxic volume (no island filtering)
    hf: float  #: hypoxic fraction HV / V_target
    n_hypoxic_voxels: int
    target_volume_ml: float
    tmr_max: float
    tmr_max_lps: tuple[float, float, float]
    tmr_peak: float
    tmr_peak_lps: tuple[float, float, float]
    peak_diameter_mm: float
    tmr_mean: float
    hypoxic_mask: sitk.Image  #: voxels of the target at or above the threshold (PET grid)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, sitk.Image)}


def hypoxia_metrics(ratio: sitk.Image, target: sitk.Image, *, tracer: str | None = "fmiso",
                    reference_kind: str = "muscle", threshold: float | None = None,
                    strict: bool | None = None, peak_diameter_mm: float = PEAK_DIAMETER_1CM3_MM) -> HypoxiaMetrics:
    """HV, HF, TMRmax, TMRpeak and the hypoxic mask of a ratio map inside ``target`` (same grid).

    Parameters
    ----------
    ratio : uptake ratio map (:attr:`RatioMap.ratio`).
    target : binary tumour target (GTV), non-empty.
    tracer, reference_kind : select the default threshold in :data:`HYPOXIA_THRESHOLDS`.
    threshold : explicit ratio threshold (overrides the table; then ``tracer`` may be ``None``).
    strict : ``r > threshold`` (True) or ``r >= threshold`` (False); default the table's (``>=`` when given).
    peak_diameter_mm : TMRpeak sphere diameter (default 12.41 mm, a 1 cm3 sphere).
    """
    if threshold is None:
        if tracer is None:
            raise InputError("give a tracer (for the default threshold) or an explicit threshold")
        entry = default_threshold(tracer, reference_kind)
        value, is_strict, source = entry.threshold, entry.strict, f"{entry.source} {entry.status}"
    else:
        value = float(threshold)
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"the hypoxia threshold must be a positive ratio, got {threshold!r}")
        is_strict, source = False, "given"
    if strict is not None:
        is_strict = bool(strict)
    check_same_geometry(ratio, target, "ratio map", "tumour target")
    require_finite(ratio, "ratio map")
    inside = require_binary_mask(target, "tumour target")
    r = sitk.GetArrayFromImage(ratio).astype(np.float64)
    hypoxic = inside & ((r > value) if is_strict else (r >= value))
    voxel_ml = voxel_volume_ml(ratio)
    n_target = int(inside.sum())
    n_hyp = int(hypoxic.sum())
    max_index = np.unravel_index(int(np.argmax(np.where(inside, r, -np.inf))), r.shape)
    spacing_kji = np.asarray(ratio.GetSpacing())[::-1]
    peak, peak_index = suv_peak(r, spacing_kji, inside, peak_diameter_mm)
    notes = []
    if n_target * voxel_ml < 1.0:
        notes.append(f"the target ({n_target * voxel_ml:.3g} mL) is smaller than the 1 cm3 peak sphere: TMRpeak "
                     "is diluted by its surroundings")
    return HypoxiaMetrics(
        tracer=None if tracer is None else str(tracer).lower(), reference_kind=reference_kind, threshold=value,
        comparison=">" if is_strict else ">=", threshold_source=source, hv_ml=n_hyp * voxel_ml,
        hf=n_hyp / n_target, n_hypoxic_voxels=n_hyp, target_volume_ml=n_target * voxel_ml,
        tmr_max=float(r[max_index]), tmr_max_lps=index_to_point(ratio, max_index[::-1]), tmr_peak=float(peak),
        tmr_peak_lps=index_to_point(ratio, peak_index[::-1]), peak_diameter_mm=float(peak_diameter_mm),
        tmr_mean=float(r[inside].mean()), hypoxic_mask=image_from_array(hypoxic, ratio), notes=notes,
    )


def hypoxic_boost_volume(hypoxic_mask: sitk.Image, *, min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
                         fill_holes: bool = True, envelope: sitk.Image | None = None) -> sitk.Image:
    """A boost contour from a hypoxic mask: holes filled, islands below ``min_island_ml`` (default 0.5 mL,
    §2.2 "about 0.5 cm3 (3-4 PET voxels)") dropped, kept inside ``envelope``. Not for reporting HF."""
    hyp = require_binary_mask(hypoxic_mask, "hypoxic mask", allow_empty=True)
    within = None
    if envelope is not None:
        check_same_geometry(hypoxic_mask, envelope, "hypoxic mask", "envelope")
        within = require_binary_mask(envelope, "envelope")
    spacing_kji = np.asarray(hypoxic_mask.GetSpacing())[::-1]
    cleaned = clean_mask(hyp, spacing_kji, min_island_ml=float(min_island_ml), fill_holes=fill_holes, within=within)
    return image_from_array(cleaned, hypoxic_mask)


# --------------------------------------------------------------------------------------------------------
# Uptake -> pO2 -> OER / DMF -> dose
# --------------------------------------------------------------------------------------------------------

#: Half-maximal-binding pO2 (mmHg), Warren & Partridge 2016 [V abstract] (95 % CI 0.3-2.6).
DEFAULT_K_U_MMHG = 1.4
#: Ratio at full oxygenation / at anoxia of the binding model: design defaults, unverified.
DEFAULT_R_MIN = 1.0
DEFAULT_R_MAX = 3.0
#: pO2 clamp (mmHg).
DEFAULT_P_MAX_MMHG = 100.0
#: Maximum OER m and the AHF constant K (mmHg): textbook [M].
DEFAULT_OER_MAX = 3.0
DEFAULT_K_MMHG = 3.0


def po2_from_uptake(ratio: Any, *, r_min: float = DEFAULT_R_MIN, r_max: float = DEFAULT_R_MAX,
                    k_u_mmhg: float = DEFAULT_K_U_MMHG, p_max_mmhg: float = DEFAULT_P_MAX_MMHG) -> np.ndarray:
    """pO2 (mmHg) from uptake ratios by inverting ``r(p) = r_min + (r_max - r_min) K_u / (K_u + p)``.

    ``r >= r_max`` -> 0 mmHg, ``r <= r_min`` -> ``p_max``; the result is clamped to [0, p_max]. Defaults:
    ``K_u`` 1.4 mmHg (Warren & Partridge 2016 [V abstract]); ``r_min`` 1.0, ``r_max`` 3.0 (design defaults,
    unverified); ``p_max`` 100 mmHg.
    """
    r = np.asarray(ratio, dtype=np.float64)
    if not r_max > r_min:
        raise InputError(f"r_max ({r_max:g}) must be above r_min ({r_min:g})")
    if not (k_u_mmhg > 0 and p_max_mmhg > 0):
        raise InputError("k_u_mmhg and p_max_mmhg must be positive")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_u_mmhg * ((r_max - r_min) / (r - r_min) - 1.0)
    p = np.where(r >= r_max, 0.0, np.where(r <= r_min, p_max_mmhg, p))
    return np.clip(p, 0.0, p_max_mmhg)


def oxygen_enhancement_ratio(po2_mmhg: Any, *, m: float = DEFAULT_OER_MAX, k_mmhg: float = DEFAULT_K_MMHG) -> Any:
    """Alper-Howard-Flanders ``OER(p) = (m p + K) / (p + K)``: sensitivity relative to anoxia (1 at 0 mmHg,
    -> m when well oxygenated). ``m`` = 3 and ``K`` = 3 mmHg by default (textbook [M])."""
    p = np.asarray(po2_mmhg, dtype=np.float64)
    return (m * p + k_mmhg) / (p + k_mmhg)


def dose_modifying_factor(po2_mmhg: Any, *, m: float = DEFAULT_OER_MAX, k_mmhg: float = DEFAULT_K_MMHG) -> Any:
    """``DMF(p) = m (p + K) / (m p + K)``: dose multiplier relative to well-oxygenated tissue (m at 0 mmHg,
    2m/(m+1) at K, -> 1 for p >> K). Defaults m = 3, K = 3 mmHg [M]."""
    p = np.asarray(po2_mmhg, dtype=np.float64)
    return m * (p + k_mmhg) / (m * p + k_mmhg)


def dose_for_cell_kill(dmf: Any, *, clonogens_per_voxel: Any, surviving_per_voxel: float,
                       alpha: float = 0.3, alpha_beta: float = 10.0, n_fractions: int = 35) -> np.ndarray:
    """Dose (Gy) leaving ``surviving_per_voxel`` of ``clonogens_per_voxel`` with LQ ``alpha/DMF``, ``beta/DMF^2``.

    Closed form ``D = [-a + sqrt(a^2 + 4 (b/n) L)] / (2 b / n)``, ``a = alpha/DMF``, ``b = beta/DMF^2``,
    ``L = ln(N / s*)`` (``D = L / a`` when beta = 0; 0 where ``N <= s*``). Defaults alpha 0.3 /Gy,
    alpha/beta 10 Gy, 35 fractions [M].
    """
    f = np.asarray(dmf, dtype=np.float64)
    n_clon = np.asarray(clonogens_per_voxel, dtype=np.float64)
    if not surviving_per_voxel > 0:
        raise InputError(f"the surviving clonogens per voxel must be positive, got {surviving_per_voxel!r}")
    if not (alpha > 0 and alpha_beta > 0 and n_fractions >= 1):
        raise InputError("alpha, alpha_beta and n_fractions must be positive")
    with np.errstate(divide="ignore"):
        big_l = np.maximum(np.log(n_clon / surviving_per_voxel), 0.0)
    a = alpha / f
    b = alpha / alpha_beta / (f * f) / n_fractions
    # Rationalised root 2L / (a + sqrt(a^2 + 4 b L)): no cancellation for small b L.
    return 2.0 * big_l / (a + np.sqrt(a * a + 4.0 * b * big_l))


@dataclass
class HypoxiaDoseResult:
    """Dose from hypoxia PET through pO2 and the oxygen effect (module docstring)."""

    dose: sitk.Image  #: Gy in the target (clipped to [floor, cap]), 0 outside
    po2: sitk.Image  #: mmHg in the target, 0 outside
    dmf: sitk.Image  #: dose-modifying factor in the target, 0 outside
    parameters: dict[str, Any]
    oxic_dose_gy: float  #: the dose for DMF = 1 (before clipping)
    n_capped: int
    n_floored: int

    def summary(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "oxic_dose_gy": self.oxic_dose_gy, "n_capped": self.n_capped,
                "n_floored": self.n_floored}


def hypoxia_dose_map(ratio: sitk.Image, target: sitk.Image, *, r_min: float = DEFAULT_R_MIN,
                     r_max: float = DEFAULT_R_MAX, k_u_mmhg: float = DEFAULT_K_U_MMHG,
                     p_max_mmhg: float = DEFAULT_P_MAX_MMHG, m: float = DEFAULT_OER_MAX,
                     k_mmhg: float = DEFAULT_K_MMHG, clonogen_density: float = 1e7, tcp_target: float = 0.9,
                     alpha: float = 0.3, alpha_beta: float = 10.0, n_fractions: int = 35,
                     dose_floor: float | None = 70.0, dose_cap: float | None = 86.0) -> HypoxiaDoseResult:
    """Uptake ratio -> pO2 -> DMF -> dose for a target cell kill, clipped to [``dose_floor``, ``dose_cap``].

    ``clonogen_density`` cm^-3 (default 1e7 [M]); ``tcp_target`` the TCP aimed at (default 0.9, design
    default): ``s* = -ln(TCP) / N_voxels``. Other parameters as :func:`po2_from_uptake`,
    :func:`dose_modifying_factor` and :func:`dose_for_cell_kill`. ``dose_floor`` / ``dose_cap`` Gy (default 70
    and 86, the project's dose range; ``None`` for no bound).
    """
    check_same_geometry(ratio, target, "ratio map", "tumour target")
    require_finite(ratio, "ratio map")
    inside = require_binary_mask(target, "tumour target")
    if not 0 < tcp_target < 1:
        raise InputError(f"tcp_target must be in (0, 1), got {tcp_target!r}")
    if dose_floor is not None and dose_cap is not None and dose_floor > dose_cap:
        raise InputError(f"dose_floor ({dose_floor:g} Gy) is above dose_cap ({dose_cap:g} Gy)")
    r = sitk.GetArrayFromImage(ratio).astype(np.float64)[inside]
    p = po2_from_uptake(r, r_min=r_min, r_max=r_max, k_u_mmhg=k_u_mmhg, p_max_mmhg=p_max_mmhg)
    f = dose_modifying_factor(p, m=m, k_mmhg=k_mmhg)
    n_clon = clonogen_density * voxel_volume_ml(ratio)
    s_star = -np.log(tcp_target) / inside.sum()
    raw = dose_for_cell_kill(f, clonogens_per_voxel=n_clon, surviving_per_voxel=s_star, alpha=alpha,
                             alpha_beta=alpha_beta, n_fractions=n_fractions)
    oxic = float(dose_for_cell_kill(1.0, clonogens_per_voxel=n_clon, surviving_per_voxel=s_star, alpha=alpha,
                                    alpha_beta=alpha_beta, n_fractions=n_fractions))
    dose = raw.copy()
    n_cap = n_floor = 0
    if dose_cap is not None:
        n_cap = int(np.count_nonzero(dose > dose_cap))
        dose = np.minimum(dose, dose_cap)
    if dose_floor is not None:
        n_floor = int(np.count_nonzero(dose < dose_floor))
        dose = np.maximum(dose, dose_floor)

    def full(values: np.ndarray, units: str) -> sitk.Image:
        out = np.zeros(inside.shape, dtype=np.float32)
        out[inside] = values
        return image_from_array(out, ratio, units=units)

    parameters = {"r_min": r_min, "r_max": r_max, "k_u_mmhg": k_u_mmhg, "p_max_mmhg": p_max_mmhg, "m": m,
                  "k_mmhg": k_mmhg, "clonogen_density_per_cm3": clonogen_density, "tcp_target": tcp_target,
                  "surviving_per_voxel": float(s_star), "alpha": alpha, "alpha_beta": alpha_beta,
                  "n_fractions": n_fractions, "dose_floor_gy": dose_floor, "dose_cap_gy": dose_cap}
    return HypoxiaDoseResult(full(dose, Units.GY), full(p, Units.MMHG), full(f, Units.RATIO), parameters, oxic,
                             n_cap, n_floor)


# --------------------------------------------------------------------------------------------------------
# Patlak
# --------------------------------------------------------------------------------------------------------

#: Default start of the Patlak linear phase (min) [M: ~15-20 min].
DEFAULT_T_STAR_MIN = 15.0


@dataclass
class PatlakResult:
    """Voxel Patlak fit: slope Ki (1/min) and intercept V0 (mL/mL)."""

    ki: sitk.Image  #: units "1/min", 0 outside the mask
    v0: sitk.Image  #: units "mL/mL", 0 outside the mask
    t_star_min: float
    frames_used: int
    frame_times_min: tuple[float, ...]
    patlak_x_min: tuple[float, ...]  #: the shared abscissa int_0^t Cp / Cp(t) of the frames used (min)


def patlak_fit(frames: Sequence[sitk.Image], frame_times_min: Sequence[float], input_times_min: Sequence[float],
               input_values: Sequence[float], *, t_star_min: float = DEFAULT_T_STAR_MIN,
               mask: sitk.Image | None = None) -> PatlakResult:
    """Patlak Ki and V0 per voxel from dynamic frames (see the module docstring).

    Parameters
    ----------
    frames : activity images on one grid, in the same units as ``input_values``.
    frame_times_min : mid-frame times (min after injection), increasing.
    input_times_min, input_values : the plasma input function C_p samples (min; activity units), increasing
        times; C_p(0) = 0 is assumed if the first sample is after 0.
    t_star_min : frames with mid-time >= t* are fitted (default 15 min [M]); at least 2 are needed.
    mask : voxels to fit (default all).
    """
    times = np.asarray(frame_times_min, dtype=np.float64)
    if len(frames) != times.size or times.size == 0:
        raise InputError(f"{len(frames)} frame(s) but {times.size} frame time(s)")
    if np.any(np.diff(times) <= 0):
        raise InputError("the frame times must be strictly increasing")
    tin = np.asarray(input_times_min, dtype=np.float64)
    cin = np.asarray(input_values, dtype=np.float64)
    if tin.size != cin.size or tin.size < 2 or np.any(np.diff(tin) <= 0) or tin[0] < 0:
        raise InputError("the input function needs at least 2 samples at increasing, non-negative times")
    if times[-1] > tin[-1] + 1e-9:
        raise InputError(f"the input function ends at {tin[-1]:g} min, before the last frame ({times[-1]:g} min)")
    if tin[0] > 0:
        tin, cin = np.concatenate([[0.0], tin]), np.concatenate([[0.0], cin])
    cumulative = np.concatenate([[0.0], np.cumsum(np.diff(tin) * 0.5 * (cin[1:] + cin[:-1]))])
    use = times >= float(t_star_min)
    if int(use.sum()) < 2:
        raise InputError(f"only {int(use.sum())} frame(s) at or after t* = {t_star_min:g} min; the Patlak fit needs 2")
    cp = np.interp(times[use], tin, cin)
    if np.any(cp <= 0):
        raise InputError("the input function is not positive at the fitted frame times")
    x = np.interp(times[use], tin, cumulative) / cp
    reference = frames[0]
    for index, frame in enumerate(frames):
        check_same_geometry(reference, frame, "frame 0", f"frame {index}")
        require_finite(frame, f"frame {index}")
    inside = np.ones(sitk.GetArrayViewFromImage(reference).shape, dtype=bool) if mask is None else \
        require_binary_mask(mask, "mask")
    if mask is not None:
        check_same_geometry(reference, mask, "frames", "mask")
    chosen = [i for i, flag in enumerate(use) if flag]
    y = np.stack([sitk.GetArrayViewFromImage(frames[i])[inside].astype(np.float64) for i in chosen]) / cp[:, None]
    xc = x - x.mean()
    sxx = float(np.dot(xc, xc))
    if not sxx > 0:
        raise InputError("the Patlak abscissa does not vary over the fitted frames")
    slope = xc @ (y - y.mean(axis=0)) / sxx
    intercept = y.mean(axis=0) - slope * x.mean()

    def full(values: np.ndarray, units: str) -> sitk.Image:
        out = np.zeros(inside.shape, dtype=np.float32)
        out[inside] = values
        return image_from_array(out, reference, units=units)

    return PatlakResult(full(slope, "1/min"), full(intercept, "mL/mL"), float(t_star_min), int(use.sum()),
                        tuple(float(t) for t in times[use]), tuple(float(v) for v in x))
