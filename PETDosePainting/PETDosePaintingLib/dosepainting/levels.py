"""Nested dose levels: a continuous dose-painting map quantised to K contour levels (``dose_painting.md`` §1.3).

For a TPS that cannot take a voxel prescription, the continuous map ``D_i`` (after clipping and margin) is
quantised to K levels and turned into nested ROIs ``ROI_1 ⊇ ROI_2 ⊇ ... ⊇ ROI_K`` (Korreman S et al., Acta
Oncol 2010;49:964 tested 3-11 levels [V abstract]; 5 is this project's default, as in the reference note).

Levels (``method``):

* ``"equal"`` (default): K levels from ``D_low`` to ``D_high`` in equal steps, both ends included
  (70, 74, 78, 82, 86 Gy for 70-86 Gy and K = 5; §0 of the note);
* ``"midpoint"``: mid-interval levels ``L_k = D_low + (k - 0.5) (D_high - D_low) / K`` (§1.3 step 2);
* ``"lloyd-max"``: 1-D k-means (Lloyd 1982 / Max 1960) on the voxel doses, minimising
  ``sum (D_i - L(i))^2``; started from the mid-interval levels, iterated to convergence.

Level doses are rounded to 0.01 Gy (1 cGy) so that names and doses agree. Assignment (``assignment``):
``"nearest"`` level (default; ROI_k = ``{D >= (L_(k-1) + L_k) / 2}``, the midpoint between consecutive levels,
which is §1.3's ``L_k - ΔD/2`` for equal steps) or ``"floor"`` (ROI_k = ``{D >= L_k}``: no voxel gets more than
its continuous prescription, except voxels below ``L_1``). ROI_1 is the whole evaluation volume.

Clean-up, from ROI_2 upwards: each raw ROI is intersected with the previous (cleaned) ROI and the envelope,
its enclosed holes are filled, and 26-connected islands below ``min_island_ml`` (default 0.5 mL, design
default after "about 0.3-0.5 cm3, below PET resolution") are dropped. ROI_1 is not cleaned (it is the
target). Nesting is therefore exact, and each voxel's level is the highest ROI containing it, so the shell
volumes ``S_k = ROI_k \\ ROI_(k+1)`` add up to ROI_1. The quantised map is then scored against the continuous
map with QF/QVH (§1.3 step 6, :func:`~.plan_evaluation.quality_metrics`). Names are TG-263 style
``PTV_DP_7000`` (dose in cGy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ProcessingError
from ..imaging.image import (
    Units,
    check_same_geometry,
    get_frame_of_reference,
    get_units,
    image_from_array,
    require_binary_mask,
    set_frame_of_reference,
    voxel_volume_ml,
)
from .plan_evaluation import QualityResult, quality_metrics
from .prescription import (
    DEFAULT_MIN_ISLAND_ML,
    clean_mask,
    tg263_level_name,
)

#: Default number of levels.
DEFAULT_N_LEVELS = 5
#: Level placement methods.
LEVEL_METHODS = ("equal", "midpoint", "lloyd-max")
#: Voxel-to-level assignment rules.
ASSIGNMENTS = ("nearest", "floor")


@dataclass
class DoseLevel:
    """One nested level: ROI_k = voxels with a continuous dose >= ``threshold_gy`` (after clean-up)."""

    name: str  #: TG-263-style name, e.g. PTV_DP_7400
    dose_gy: float  #: the level's prescription
    threshold_gy: float  #: lower bound of the continuous dose for ROI_k (before clean-up)
    roi_volume_ml: float  #: volume of ROI_k (nested: includes the higher levels)
    shell_volume_ml: float  #: volume of ROI_k minus ROI_(k+1): the voxels prescribed this level
    n_shell_voxels: int


@dataclass
class LevelsResult:
    """Quantised prescription, nested ROIs and the agreement with the continuous map."""

    level_map: sitk.Image  #: each voxel its level dose (Gy), 0 outside ROI_1
    rois: dict[str, sitk.Image]  #: nested ROI masks by name, from the lowest level (ROI_1) up
    levels: list[DoseLevel]
    method: str
    assignment: str
    n_levels: int
    dose_low_gy: float
    dose_high_gy: float
    min_island_ml: float
    fill_holes: bool
    evaluation: QualityResult  #: the level map scored against the continuous map
    rms_error_gy: float  #: sqrt(mean (L(i) - D_i)^2) over ROI_1
    max_abs_error_gy: float
    relabelled_ml: float  #: volume whose level the clean-up changed (islands lowered, filled holes raised)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method, "assignment": self.assignment, "n_levels": self.n_levels,
            "dose_low_gy": self.dose_low_gy, "dose_high_gy": self.dose_high_gy, "min_island_ml": self.min_island_ml,
            "fill_holes": self.fill_holes, "levels": [dict(level.__dict__) for level in self.levels],
            "against_continuous_map": self.evaluation.summary(), "rms_error_gy": self.rms_error_gy,
            "max_abs_error_gy": self.max_abs_error_gy, "relabelled_ml": self.relabelled_ml, "notes": self.notes,
        }


def level_doses(n_levels: int, dose_low: float, dose_high: float, method: str = "equal",
                values: np.ndarray | None = None, *, max_iterations: int = 500) -> np.ndarray:
    """The K level doses (Gy, increasing, not rounded) for ``method`` (see the module docstring).

    ``values`` (the voxel doses) are needed for ``lloyd-max`` only.
    """
    if method not in LEVEL_METHODS:
        raise InputError(f"level method must be one of {', '.join(LEVEL_METHODS)}, got {method!r}")
    k = int(n_levels)
    if k < 2 or k != n_levels:
        raise InputError(f"the number of levels must be an integer of at least 2, got {n_levels!r}")
    if not dose_high > dose_low:
        raise InputError(f"the level range needs dose_low < dose_high, got {dose_low:g} and {dose_high:g} Gy")
    if method == "equal":
        return dose_low + np.arange(k) * (dose_high - dose_low) / (k - 1)
    mid = dose_low + (np.arange(k) + 0.5) * (dose_high - dose_low) / k
    if method == "midpoint":
        return mid
    if values is None or np.size(values) == 0:
        raise InputError("the lloyd-max levels need the voxel doses")
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    levels = mid.copy()
    for _ in range(max_iterations):
        edges = 0.5 * (levels[1:] + levels[:-1])
        cell = np.searchsorted(edges, x, side="right")
        sums = np.bincount(cell, weights=x, minlength=k)
        counts = np.bincount(cell, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
        if np.max(np.abs(new - levels)) < 1e-9:
            return new
        levels = new
    raise ProcessingError(f"the Lloyd-Max levels did not converge in {max_iterations} iterations")


def quantise_levels(
    dose: sitk.Image,
    mask: sitk.Image | None = None,
    *,
    n_levels: int = DEFAULT_N_LEVELS,
    method: str = "equal",
    dose_low: float | None = None,
    dose_high: float | None = None,
    assignment: str = "nearest",
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
    fill_holes: bool = True,
    envelope: sitk.Image | None = None,
    name_prefix: str = "PTV_DP_",
) -> LevelsResult:
    """Quantise a continuous dose map (Gy) to nested levels (module docstring; §1.3).

    Parameters
    ----------
    dose : the continuous prescription (Gy), e.g. ``PrescriptionResult.dose``.
    mask : the evaluation volume (ROI_1); default the voxels with ``dose > 0``.
    n_levels : K >= 2 (default 5). method : ``equal`` (default), ``midpoint`` or ``lloyd-max``.
    dose_low, dose_high : range of the levels in Gy; default the minimum and maximum of the map in ``mask``.
    assignment : ``nearest`` (default) or ``floor``.
    min_island_ml : islands of ROI_2..ROI_K below this volume are dropped (default 0.5 mL).
    fill_holes : fill enclosed holes of ROI_2..ROI_K (default True).
    envelope : binary mask the ROIs must stay inside (e.g. the PTV70), same grid; default no extra limit.
    name_prefix : default ``PTV_DP_`` (TG-263 style, dose in cGy appended).
    """
    if assignment not in ASSIGNMENTS:
        raise InputError(f"assignment must be one of {', '.join(ASSIGNMENTS)}, got {assignment!r}")
    units = get_units(dose)
    if units is not None and units != Units.GY:
        raise InputError(f"the dose map has units {units!r}; levels need a dose in Gy")
    values = sitk.GetArrayViewFromImage(dose)
    if mask is None:
        roi1 = np.isfinite(values) & (values > 0)
        if not roi1.any():
            raise InputError("the dose map has no positive voxel to quantise")
    else:
        check_same_geometry(dose, mask, "dose map", "evaluation mask")
        roi1 = require_binary_mask(mask, "evaluation mask")
    notes: list[str] = []
    if envelope is not None:
        check_same_geometry(dose, envelope, "dose map", "envelope")
        env = require_binary_mask(envelope, "envelope")
        dropped = int(np.count_nonzero(roi1 & ~env))
        roi1 = roi1 & env
        if dropped:
            notes.append(f"{dropped} voxel(s) of the evaluation volume outside the envelope were left out")
        if not roi1.any():
            raise InputError("the evaluation volume does not overlap the envelope")
    d = values[roi1].astype(np.float64)
    if not np.all(np.isfinite(d)):
        raise InputError("the dose map holds NaN or infinite values inside the evaluation volume")
    low = float(d.min()) if dose_low is None else float(dose_low)
    high = float(d.max()) if dose_high is None else float(dose_high)
    if low > high:
        raise InputError(f"dose_low ({low:g} Gy) is above dose_high ({high:g} Gy)")
    min_island_ml = float(min_island_ml)
    if not (np.isfinite(min_island_ml) and min_island_ml >= 0):
        raise InputError(f"min_island_ml must be a non-negative volume in mL, got {min_island_ml!r}")
    levels = np.round(level_doses(n_levels, low, high, method, d), 2)
    if np.any(np.diff(levels) <= 0):
        raise InputError(f"the levels {levels.tolist()} Gy are not distinct at 0.01 Gy; use fewer levels")
    names = [tg263_level_name(level, name_prefix) for level in levels]
    thresholds = 0.5 * (levels[1:] + levels[:-1]) if assignment == "nearest" else levels[1:]
    thresholds = np.concatenate([[-np.inf], thresholds])

    spacing_kji = np.asarray(dose.GetSpacing())[::-1]
    # Work in the bounding box of ROI_1 plus one voxel (enough for hole filling and connectivity): a
    # planning-CT grid is large, the target small.
    nz = np.nonzero(roi1)
    box = tuple(slice(max(0, int(a.min()) - 1), min(n, int(a.max()) + 2)) for a, n in zip(nz, roi1.shape, strict=True))
    roi1_box, values_box = roi1[box], values[box]
    rois_box = [roi1_box]
    for k in range(1, levels.size):
        raw = roi1_box & (values_box >= thresholds[k])
        rois_box.append(clean_mask(raw, spacing_kji, min_island_ml=min_island_ml, fill_holes=fill_holes,
                                   within=rois_box[-1]))
    count = np.sum(rois_box, axis=0)  # nested: the number of ROIs containing a voxel is its level index + 1
    level_box = np.zeros(values_box.shape, dtype=np.float64)
    level_box[roi1_box] = levels[count[roi1_box] - 1]
    raw_index = np.searchsorted(thresholds[1:], values_box[roi1_box], side="right")
    relabelled = int(np.count_nonzero(raw_index != count[roi1_box] - 1))

    def full(box_values: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(values.shape, dtype=dtype)
        out[box] = box_values
        return out

    voxel_ml = voxel_volume_ml(dose)
    out_levels = []
    for k in range(levels.size):
        shell = int(np.count_nonzero(count == k + 1))
        out_levels.append(DoseLevel(names[k], float(levels[k]), float(thresholds[k]) if k else float(low),
                                    float(rois_box[k].sum()) * voxel_ml, shell * voxel_ml, shell))
        if not rois_box[k].any():
            notes.append(f"{names[k]} is empty after clean-up")
    uid = get_frame_of_reference(dose)
    level_image = set_frame_of_reference(image_from_array(full(level_box, np.float32), dose, units=Units.GY), uid)
    roi_images = {name: set_frame_of_reference(image_from_array(full(roi, np.uint8), dose, units=Units.LABEL), uid)
                  for name, roi in zip(names, rois_box, strict=True)}
    continuous = set_frame_of_reference(image_from_array(full(np.where(roi1_box, values_box, 0.0), np.float32),
                                                         dose, units=Units.GY), uid)
    evaluation = quality_metrics(level_image, continuous, image_from_array(roi1, dose))
    error = level_box[roi1_box] - values_box[roi1_box]
    return LevelsResult(
        level_map=level_image, rois=roi_images, levels=out_levels, method=method, assignment=assignment,
        n_levels=int(levels.size), dose_low_gy=low, dose_high_gy=high, min_island_ml=min_island_ml,
        fill_holes=bool(fill_holes), evaluation=evaluation, rms_error_gy=float(np.sqrt(np.mean(error**2))),
        max_abs_error_gy=float(np.max(np.abs(error))), relabelled_ml=relabelled * voxel_ml, notes=notes,
    )
