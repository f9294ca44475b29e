"""Evaluating a planned dose against a dose-painting prescription: Q, QF, QVH, DVH, TCP and EUD.

Quality factor and Q-volume histogram (Vanderstraeten B et al., Radiother Oncol 2006;79:249; definitions
via the Ghent group's public code comments and Differding S et al., Radiat Oncol 2017;12:59 [V];
``dose_painting.md`` §1.5). Over the n voxels of the evaluation volume with a positive prescription::

    Q_i   = D_planned,i / D_prescribed,i
    QF    = (1/n) sum_i |Q_i - 1|                   (0 = perfect)
    QVH(q) = (1/n) #{i : Q_i >= q}                  (cumulative, like a DVH; "volume with Q >= q")
    Q95   = QVH(0.95),  Q105 = QVH(1.05),  Q(0.95-1.05) = QVH(0.95) - QVH(1.05)   (Korreman 2010)

The direction is the paper's (``Q >= q``); the Ghent preclinical script counts ``Q <= q``, the opposite.
Voxels with ``D_prescribed <= 0`` are excluded (and counted). The QF map is ``Q_i - 1`` in the evaluation
volume and 0 outside it (Brighi's public code exports such a map [V]); 0 outside means "not evaluated".
Q95, Q105 and QF are computed from the voxel values directly, not read off the sampled QVH curve.

DVH: per structure with the project's DVH module (:func:`~PETDosePaintingLib.dosepainting.dvh.dvh_from_masks`,
voxel masks on the dose grid, each voxel counted in full); :func:`dvh_csv` writes the cumulative curves.

TCP/EUD of the planned dose use the same clonogen map as the prescription
(:mod:`~PETDosePaintingLib.dosepainting.radiobiology`; ``dose_painting.md`` §3.3, last point).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, UnitsError
from ..imaging.image import (
    Units,
    check_same_geometry,
    get_frame_of_reference,
    get_units,
    image_from_array,
    require_binary_mask,
    same_geometry,
    set_frame_of_reference,
    set_units,
    voxel_volume_ml,
)
from ..imaging.resample import resample_to_reference
from .dvh import DvhResult, dvh_from_masks
from .prescription import (
    count_outside,
    mask_points_lps,
    require_shared_frame,
)
from .radiobiology import (
    DEFAULT_ALPHA,
    DEFAULT_ALPHA_BETA,
    DEFAULT_CLONOGEN_DENSITY,
    DEFAULT_N_FRACTIONS,
    DEFAULT_SIGMA_ALPHA,
    TCPResult,
    eud_niemierko,
    tcp_poisson,
)

#: Default QVH sampling step (dimensionless Q).
DEFAULT_Q_STEP = 0.005
#: Default dose step of the DVH curves written as CSV (Gy).
DEFAULT_DVH_STEP_GY = 0.1
#: Columns of the QVH CSV written by ``petdp evaluate-plan --qvh`` (a stable contract).
QVH_COLUMNS = ("q", "volume_fraction", "volume_ml")
#: Columns of the DVH CSV written by ``petdp evaluate-plan --dvh`` (a stable contract).
DVH_COLUMNS = ("structure", "dose_gy", "volume_fraction", "volume_ml")


def _require_dose_units(image: sitk.Image, what: str, notes: list[str]) -> None:
    units = get_units(image)
    if units is None:
        notes.append(f"{what} records no units; taken as Gy")
    elif units != Units.GY:
        raise UnitsError(f"{what} has units {units!r}; a dose in Gy is needed")


@dataclass
class QualityResult:
    """Voxel-wise agreement of a planned dose with a prescription (Vanderstraeten 2006; see the module)."""

    qf: float
    q95: float  #: fraction of the evaluation volume with Q >= 0.95
    q105: float  #: fraction with Q >= 1.05
    q95_105: float  #: Q(0.95-1.05) = Q95 - Q105
    q_mean: float
    q_min: float
    q_max: float
    n_voxels: int  #: evaluated voxels (prescription > 0)
    n_excluded: int  #: voxels of the given mask excluded because the prescription is <= 0
    volume_ml: float
    qvh_q: np.ndarray  #: sampled q values
    qvh_fraction: np.ndarray  #: QVH(q) = fraction with Q >= q
    qf_map: sitk.Image  #: Q - 1 in the evaluation volume, 0 outside (units "ratio")
    evaluation_mask: sitk.Image
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers (no images, no curve)."""
        return {k: getattr(self, k) for k in ("qf", "q95", "q105", "q95_105", "q_mean", "q_min", "q_max",
                                              "n_voxels", "n_excluded", "volume_ml", "notes")}

    def qvh_csv(self) -> str:
        """The QVH as CSV text (columns :data:`QVH_COLUMNS`)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(QVH_COLUMNS)
        for q, frac in zip(self.qvh_q, self.qvh_fraction, strict=True):
            writer.writerow([f"{q:.6g}", f"{frac:.6g}", f"{frac * self.volume_ml:.6g}"])
        return buffer.getvalue()


def quality_metrics(planned: sitk.Image, prescribed: sitk.Image, mask: sitk.Image | None = None, *,
                    q_step: float = DEFAULT_Q_STEP, q_max: float | None = None) -> QualityResult:
    """Q, QF, QVH, Q95, Q105 and Q(0.95-1.05) of ``planned`` against ``prescribed`` (both Gy, one grid).

    Parameters
    ----------
    planned, prescribed : dose images in Gy on the same grid (resample explicitly first if needed, e.g.
        :func:`resample_dose_to_prescription`). Unrecorded units are taken as Gy (noted).
    mask : evaluation volume (e.g. PTV_PET); default every voxel with ``prescribed > 0``. Voxels of the mask
        with ``prescribed <= 0`` are excluded and counted in ``n_excluded``.
    q_step : QVH sampling step (default 0.005). q_max : last sampled q (default max(1.5, max Q) rounded up
        to the step).
    """
    notes: list[str] = []
    check_same_geometry(planned, prescribed, "planned dose", "prescription")
    _require_dose_units(planned, "the planned dose", notes)
    _require_dose_units(prescribed, "the prescription", notes)
    plan = sitk.GetArrayViewFromImage(planned)
    presc = sitk.GetArrayViewFromImage(prescribed)
    if mask is None:
        chosen = np.isfinite(presc) & (presc > 0)
    else:
        check_same_geometry(mask, prescribed, "evaluation mask", "prescription")
        chosen = require_binary_mask(mask, "evaluation mask")
    valid = chosen & np.isfinite(presc) & (presc > 0)
    n_excluded = int(np.count_nonzero(chosen & ~valid))
    if n_excluded:
        notes.append(f"{n_excluded} voxel(s) of the evaluation volume have a prescription <= 0 and were excluded")
    if not valid.any():
        raise InputError("no voxel of the evaluation volume has a positive prescription")
    plan_values = plan[valid].astype(np.float64)
    if not np.all(np.isfinite(plan_values)):
        raise InputError("the planned dose holds NaN or infinite values inside the evaluation volume")
    q = plan_values / presc[valid].astype(np.float64)
    step = float(q_step)
    if not (np.isfinite(step) and step > 0):
        raise InputError(f"q_step must be positive, got {q_step!r}")
    top = max(1.5, float(q.max())) if q_max is None else float(q_max)
    grid_q = np.arange(0.0, np.ceil(top / step - 1e-9) * step + step / 2, step)
    q_sorted = np.sort(q)
    n = q.size
    fraction = (n - np.searchsorted(q_sorted, grid_q, side="left")) / n  # fraction with Q >= q
    q95 = float(np.count_nonzero(q >= 0.95)) / n
    q105 = float(np.count_nonzero(q >= 1.05)) / n
    qf_values = np.zeros(presc.shape, dtype=np.float32)
    qf_values[valid] = q - 1.0
    qf_map = image_from_array(qf_values, prescribed, units=Units.RATIO)
    set_frame_of_reference(qf_map, get_frame_of_reference(prescribed))
    return QualityResult(
        qf=float(np.mean(np.abs(q - 1.0))), q95=q95, q105=q105, q95_105=q95 - q105, q_mean=float(q.mean()),
        q_min=float(q.min()), q_max=float(q.max()), n_voxels=int(n), n_excluded=n_excluded,
        volume_ml=float(n) * voxel_volume_ml(prescribed), qvh_q=grid_q, qvh_fraction=fraction, qf_map=qf_map,
        evaluation_mask=image_from_array(valid, prescribed), notes=notes,
    )


def resample_dose_to_prescription(dose: sitk.Image, prescription: sitk.Image, *, assume_same_frame: bool = False,
                                  mask: sitk.Image | None = None) -> tuple[sitk.Image, str | None]:
    """The planned dose on the prescription grid, and a sentence on what was done (``None`` if nothing).

    Dose grids differing from the prescription grid are resampled with **linear interpolation**, only if a
    shared frame of reference is established (:func:`~.prescription.require_shared_frame`). Every voxel of
    ``mask`` (default: prescription > 0) must lie inside the dose grid, else :class:`InputError`.
    """
    if same_geometry(dose, prescription):
        return dose, None
    basis = require_shared_frame(dose, prescription, "planned dose", "prescription",
                                 assume_same_frame=assume_same_frame)
    if mask is None:
        inside = sitk.GetArrayViewFromImage(prescription) > 0
    else:
        check_same_geometry(mask, prescription, "evaluation mask", "prescription")
        inside = require_binary_mask(mask, "evaluation mask")
    n_out = count_outside(mask_points_lps(inside, prescription), dose)
    if n_out:
        raise InputError(f"{n_out} of the {int(inside.sum())} evaluated voxels lie outside the planned dose grid; "
                         "the dose does not cover the target")
    out = resample_to_reference(dose, prescription, interpolation="linear", default_value=0.0,
                                output_pixel_type=sitk.sitkFloat32)
    return out, f"planned dose resampled onto the prescription grid with linear interpolation ({basis})"


# --------------------------------------------------------------------------------------------------------
# DVH curves as CSV
# --------------------------------------------------------------------------------------------------------

def dvh_csv(dvhs: dict[str, DvhResult], step_gy: float = DEFAULT_DVH_STEP_GY) -> str:
    """CSV text (columns :data:`DVH_COLUMNS`) of cumulative DVH curves sampled every ``step_gy`` (Gy).

    ``volume_fraction`` is the fraction of the structure's volume (inside the dose grid) receiving at least
    ``dose_gy``; ``volume_ml`` the same in mL.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DVH_COLUMNS)
    for name, result in dvhs.items():
        axis, volume_cc = result.curve(step_gy)
        total = result.volume_cc
        for d, vol in zip(axis, volume_cc, strict=True):
            writer.writerow([name, f"{d:.6g}", f"{vol / total:.6g}" if total > 0 else "", f"{vol:.6g}"])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# Whole evaluation
# --------------------------------------------------------------------------------------------------------

@dataclass
class PlanEvaluation:
    """Everything :func:`evaluate_plan` computes."""

    quality: QualityResult
    tcp_planned: TCPResult
    tcp_prescribed: TCPResult
    eud_planned_gy: float  #: Niemierko EUD of the planned dose, clonogen-weighted
    eud_prescribed_gy: float
    clonogen_model: str
    dvhs: dict[str, DvhResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "quality": self.quality.summary(),
            "tcp_planned": self.tcp_planned.summary(), "tcp_prescribed": self.tcp_prescribed.summary(),
            "eud_planned_gy": self.eud_planned_gy, "eud_prescribed_gy": self.eud_prescribed_gy,
            "clonogen_model": self.clonogen_model,
            "dvh": {name: {k: (None if isinstance(v, float) and np.isnan(v) else v)  # NaN: undefined (D2cc < 2 cm3)
                           for k, v in result.statistics().items()} for name, result in self.dvhs.items()},
            "notes": self.notes,
        }


def evaluate_plan(
    planned: sitk.Image,
    prescribed: sitk.Image,
    mask: sitk.Image | None = None,
    *,
    structures: dict[str, sitk.Image] | None = None,
    clonogens: sitk.Image | None = None,
    clonogen_density: float = DEFAULT_CLONOGEN_DENSITY,
    alpha: float = DEFAULT_ALPHA,
    alpha_beta: float = DEFAULT_ALPHA_BETA,
    n_fractions: int = DEFAULT_N_FRACTIONS,
    sigma_alpha: float = DEFAULT_SIGMA_ALPHA,
    sf2: float = 0.5,
    q_step: float = DEFAULT_Q_STEP,
) -> PlanEvaluation:
    """Quality (QF/QVH), DVHs of ``structures`` and TCP/EUD of a planned dose against its prescription.

    ``planned`` and ``prescribed`` must share a grid (see :func:`resample_dose_to_prescription`).
    ``structures`` (name -> binary mask on the same grid) get a DVH of the planned dose
    (:func:`~.dvh.dvh_from_masks`). ``clonogens`` is the clonogen-density image (cm^-3, same grid) used for the
    prescription; without it a uniform ``clonogen_density`` (default 1e7 cm^-3 [M]) is used over the
    evaluation volume. TCP parameters
    as :func:`~.radiobiology.tcp_poisson` (defaults alpha 0.3 /Gy, alpha/beta 10 Gy, 35 fractions,
    sigma_alpha 0.07 /Gy, all [M]); EUD by Niemierko 1997 with ``sf2`` (default 0.5 [M]).
    """
    quality = quality_metrics(planned, prescribed, mask, q_step=q_step)
    notes = list(quality.notes)
    if clonogens is None:
        rho = image_from_array(np.full(sitk.GetArrayViewFromImage(prescribed).shape, float(clonogen_density)),
                               prescribed, units="1/cm3")
        model = f"uniform {float(clonogen_density):.3g} clonogens/cm3 over the evaluation volume"
    else:
        check_same_geometry(clonogens, prescribed, "clonogen map", "prescription")
        rho = clonogens
        model = "clonogen map given"
    kwargs = {"alpha": alpha, "alpha_beta": alpha_beta, "n_fractions": n_fractions, "sigma_alpha": sigma_alpha}
    evaluation = quality.evaluation_mask
    tcp_plan = tcp_poisson(planned, rho, evaluation, **kwargs)
    tcp_presc = tcp_poisson(prescribed, rho, evaluation, **kwargs)
    eud_plan = eud_niemierko(planned, evaluation, sf2=sf2, clonogens=rho)
    eud_presc = eud_niemierko(prescribed, evaluation, sf2=sf2, clonogens=rho)
    dvhs: dict[str, DvhResult] = {}
    if structures:
        planned_gy = planned
        if get_units(planned) is None:
            planned_gy = sitk.Image(planned)
            set_units(planned_gy, Units.GY)
        dvhs = dvh_from_masks(planned_gy, structures)
    return PlanEvaluation(quality, tcp_plan, tcp_presc, eud_plan, eud_presc, model, dvhs, notes)
