"""Is a dose-painting prescription deliverable, and at what cost to the organs at risk? Fluence-map
optimisation with pyRadPlan, scored with the project's plan evaluation.

The question (issue 9): before a prescription map goes to the treatment planning system, optimise an IMRT
fluence for it on the patient's CT and organs at risk, and compare it with a uniform-dose plan with the same
beams and the same organ-at-risk limits ("dose escalation without increasing OAR dose").

Engine
------
pyRadPlan (DKFZ; the Python port of matRad, Wieser HP et al., Med Phys 2017;44:2556 [M]), an optional extra
loaded by :func:`~.planning_objectives.load_pyradplan` (``pip install -e ".[planning]"``; tested with
0.3.5, reference note ``dose_painting.md`` §6.1). Its photon pencil-beam engine (singular-value-decomposed
kernels, matRad's ``SVDPB`` with the ``Generic`` 6 MV machine shipped in the wheel) computes the dose influence
matrix D_ij of coplanar beams (gantry angles configurable, couch 0) on a dose grid of at most ``dose_grid_mm``
(:func:`_dose_grid`: from the first to the last CT voxel centre on every axis), with beamlets ("bixels") of
``bixel_width_mm`` in the isocentre plane; the isocentre is the target's centre (pyRadPlan's default).
The fluence weights w >= 0 minimise a weighted sum of objectives with SciPy's
L-BFGS-B from w = 0 (matRad/pyRadPlan fluence optimisation; IPOPT is not used). The planned dose is
``D_ij w`` on the dose grid, trilinearly interpolated onto the CT grid (pyRadPlan's
``compute_result_ct_grid``), in Gy: the objectives' references are total doses in Gy, and pyRadPlan
applies no fractionation scaling, so the weights (arbitrary units) carry the whole course.

**Limits** (§6.1): fluence-map optimisation only (no leaf sequencing, no VMAT, no MU calibration); a water
pencil beam with a generic machine, so heterogeneity and penumbra are approximate. The result says whether
the map is *achievable in principle* with these beams and what it costs the organs at risk; it is not a
clinical dose. The deliverable plan comes from the TPS (nested levels or the inverted map, §1.3-1.4).

Structures and objectives
-------------------------
All images share the CT grid (checked, never resampled). VOIs given to pyRadPlan:

* **Target**: the PTV (``target``, e.g. :func:`ptv_from_gtv`: GTV + margin) together with every voxel of the
  prescription > 0 (the painted "PTV_PET"); its reference is the map, and ``base_dose_gy`` (default the
  lowest positive prescription, e.g. 70 Gy) on PTV voxels outside the map. One objective (``objective``):

  - ``squared``: pyRadPlan's ``Squared Mimicking``, mean((d - p)^2), voxel-wise (the DPBN objective of §6.1);
  - ``relative``: mean(((d - p)/p)^2) = mean((Q - 1)^2), a smooth QF surrogate (:mod:`.planning_objectives`);
  - ``band``: one-sided penalties below ``band[0]`` x p and above ``band[1]`` x p (0.95/1.05: the Q95/Q105 band
    of the QVH; :mod:`.planning_objectives`).

  The map is handed to pyRadPlan **on the dose grid**: extended outside its support by nearest-neighbour
  filling, then linearly interpolated at the dose-grid voxel centres. pyRadPlan's own resampling of image
  references (cubic B-spline from the CT grid) rings at the target edge (tested: 61-95 Gy for a 70-86 Gy
  map), which made the optimiser chase values that are not in the prescription. The objective acts on the
  target's interpolation stencil (:func:`_stencil`): its dose-grid voxels and those just outside whose values
  reach target CT voxels by interpolation, so the interpolated CT-grid dose at the target edge is what is
  optimised (the ``band`` objective reached Q95 0.76 without this and 0.97 with it on the test phantom); the
  price is a high-dose region up to one dose-grid spacing wider, for both plans alike.
* **Organs at risk**: every mask in ``oars`` (DVH and dose statistics for all of them). Limits
  (:class:`OarConstraint`) by default: mean dose of each parotid <= ``parotid_mean_gy`` (26 Gy, the RTOG
  0522/QUANTEC parotid sparing goal [M]) and maximum dose of the spinal cord <= ``cord_max_gy`` (45 Gy, RTOG
  0522 [M]; QUANTEC: 50 Gy for a 0.2 % myelopathy risk), matched by name (``parotid``; ``cord``/``spinal``).
* **External** (``body``, an OAR named External/Body, or :func:`body_from_ct`): body voxels outside the target
  get a normal-tissue ``Squared Overdosing`` above ``body_max_fraction`` x the base dose (default 0.8, i.e.
  56 Gy for 70 Gy, priority 100). On the digital patient a weaker normal-tissue term (priority 10) let the
  painted plan put 14 mL of normal tissue above 75 Gy (hot spots of 91 Gy 11 mm from the target) for a QF
  only 0.0007 better. pyRadPlan ignores densities outside the union of VOIs, so the body is always given.

How a "constraint" is enforced
------------------------------
pyRadPlan's SciPy solver handles no constraints (its ``constraints`` argument is not passed to
``scipy.optimize.minimize`` in 0.3.x), so each limit is a **penalty** that is zero when the limit is met:
``PETDP Mean Dose Limit`` (one-sided quadratic on the mean) or ``Squared Overdosing`` for a maximum, aimed at
``limit - constraint_margin_gy``. A penalty method only approaches feasibility as its weight grows, so the
planner **verifies** every limit on the final dose, on the CT grid and the full organ mask (the numbers a
physicist would read), and if one fails it multiplies that penalty's weight by ``escalation`` and re-optimises
from the current fluence, up to ``constraint_rounds`` times. The result reports, per limit, the value reached,
whether it holds and the final weight; a limit still failed is reported, not hidden
(:attr:`OptimisedPlan.constraints_met`). Both penalties act on the dose-grid voxels of the trilinear
interpolation stencils of the organ's CT voxels, so that they control exactly the verified numbers: every
stencil voxel below the limit bounds the interpolated maximum, and the mean penalty weights the stencil
voxels with their summed trilinear weights, which makes it the CT-grid mean itself. pyRadPlan's overlap
priorities are switched off (every objective acts on its whole VOI): where a stencil reaches into the target,
the penalty and the target objective compete and the weights decide (noted with the shared volume).

Scoring
-------
:func:`~.plan_evaluation.evaluate_plan` on the CT grid: Q, QF, QVH, Q95, Q105 over the prescription > 0
(Vanderstraeten 2006), DVHs of the target, the evaluation volume and every OAR, TCP and EUD with the same
clonogen model for both plans. The uniform plan (``uniform_dose_gy``, e.g. 70 Gy) uses the same beams, D_ij,
OAR penalties and objective type with a constant reference over the same target, and is scored against the
same painted map.

Nothing is random (deterministic pencil-beam engine; L-BFGS-B from w = 0): the same inputs give the same
dose, so no seed is needed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import GeometryError, InputError, ProcessingError, UnitsError
from ..imaging.image import (
    Units,
    check_same_geometry,
    get_frame_of_reference,
    get_units,
    image_from_array,
    require_binary_mask,
    require_finite,
    set_frame_of_reference,
    set_units,
    voxel_volume_ml,
)
from ..imaging.resample import resample_to_reference
from .plan_evaluation import PlanEvaluation, dvh_csv, evaluate_plan
from .planning_objectives import INSTALL_HINT, TESTED_PYRADPLAN, PlanningExtraMissing, load_pyradplan
from .prescription import dilate_mask_mm

#: Parotid mean-dose limit (Gy): RTOG 0522 / QUANTEC (Deasy JO et al., IJROBP 2010;76:S58) sparing goal, a
#: mean < 25-26 Gy to at least one parotid [M: from memory, check against the protocol in use].
DEFAULT_PAROTID_MEAN_GY = 26.0
#: Spinal cord maximum dose (Gy): RTOG 0522 cord Dmax 45 Gy [M]; QUANTEC (Kirkpatrick 2010) 50 Gy ~ 0.2 %
#: myelopathy.
DEFAULT_CORD_MAX_GY = 45.0
#: Beam setup defaults: 7 equispaced coplanar beams (a common H&N IMRT class solution [M]), 5 mm bixels and a
#: 4 mm dose grid (pyRadPlan/matRad use 5 mm bixels and a 5 mm dose grid by default).
DEFAULT_N_BEAMS = 7
DEFAULT_BIXEL_MM = 5.0
DEFAULT_DOSE_GRID_MM = 4.0
#: Target objectives (see the module docstring).
OBJECTIVES = ("squared", "relative", "band")
#: Columns of the comparison table (CSV and JSON), a stable contract.
COMPARISON_COLUMNS = ("quantity", "structure", "unit", "prescribed", "uniform", "painted", "painted_minus_uniform",
                      "limit_gy")
#: Name of the evaluation volume (prescription > 0) in DVHs and tables, as ``petdp prescribe`` names it.
EVALUATION_NAME = "PTV_PET"
TARGET_NAME = "PTV"
BODY_NAMES = ("external", "body", "skin")


class PlanningCancelled(ProcessingError):
    """The caller's ``cancel`` callback asked to stop."""


# --------------------------------------------------------------------------------------------------------
# Settings and results
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OarConstraint:
    """A dose limit on an organ at risk: ``kind`` "mean" (mean dose <= limit) or "max" (maximum dose <=
    limit), in Gy, checked on the CT grid over the whole organ mask."""

    structure: str
    kind: str
    limit_gy: float

    def describe(self) -> str:
        return f"{self.structure} {self.kind} <= {self.limit_gy:g} Gy"


@dataclass(frozen=True)
class PlanningSettings:
    """Beam setup, objective and optimiser settings of :func:`plan_dose_painting` (lengths mm, doses Gy).

    ``gantry_angles_deg`` overrides ``n_beams`` equispaced beams starting at 0 deg (IEC gantry angles as
    pyRadPlan/matRad use them; couch 0). ``dose_grid_mm`` is the isotropic dose-grid spacing.
    Priorities are pyRadPlan objective weights: the target objective's, the initial weight of every OAR
    limit (escalated by ``escalation`` per failed round, at most ``constraint_rounds`` re-optimisations) and
    the normal-tissue objective's. ``max_iterations`` caps each L-BFGS-B run; ``ftol``/``gtol`` are its
    relative-reduction and projected-gradient tolerances. Defaults are design choices tested on the digital
    patient (Testing/benchmarks/results/planning.md), not clinical values.
    """

    gantry_angles_deg: tuple[float, ...] | None = None
    n_beams: int = DEFAULT_N_BEAMS
    bixel_width_mm: float = DEFAULT_BIXEL_MM
    dose_grid_mm: float = DEFAULT_DOSE_GRID_MM
    objective: str = "squared"
    band: tuple[float, float] = (0.95, 1.05)
    parotid_mean_gy: float | None = DEFAULT_PAROTID_MEAN_GY
    cord_max_gy: float | None = DEFAULT_CORD_MAX_GY
    target_priority: float = 1000.0
    constraint_priority: float = 300.0
    body_priority: float = 100.0
    body_max_fraction: float = 0.8
    constraint_margin_gy: float = 1.0
    constraint_rounds: int = 3
    escalation: float = 10.0
    max_iterations: int = 400
    ftol: float = 1e-7
    gtol: float = 1e-6
    machine: str = "Generic"

    def angles(self) -> tuple[float, ...]:
        """The gantry angles (deg) used."""
        if self.gantry_angles_deg is not None:
            return tuple(float(a) % 360.0 for a in self.gantry_angles_deg)
        return tuple(360.0 * i / self.n_beams for i in range(self.n_beams))

    def validated(self) -> PlanningSettings:
        """The settings, checked (:class:`InputError` naming the bad parameter)."""
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.gantry_angles_deg is not None:
            angles = self.angles()
            if not angles or not all(math.isfinite(a) for a in angles):
                raise InputError("gantry angles must be finite numbers (degrees)")
            if len(set(angles)) != len(angles):
                raise InputError(f"gantry angles repeat: {', '.join(f'{a:g}' for a in angles)}")
        elif int(self.n_beams) != self.n_beams or not 1 <= self.n_beams <= 72:
            raise InputError(f"the number of beams must be an integer from 1 to 72, got {self.n_beams!r}")
        for name in ("bixel_width_mm", "dose_grid_mm", "target_priority", "constraint_priority", "escalation",
                     "ftol", "gtol", "body_max_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        if not 1.0 <= self.bixel_width_mm <= 30.0:
            raise InputError(f"bixel_width_mm must be within 1-30 mm, got {self.bixel_width_mm:g}")
        if not 1.0 <= self.dose_grid_mm <= 15.0:
            raise InputError(f"dose_grid_mm must be within 1-15 mm, got {self.dose_grid_mm:g}")
        if self.escalation <= 1:
            raise InputError(f"escalation must exceed 1, got {self.escalation:g}")
        lo, hi = (float(b) for b in self.band)
        if not 0 < lo < 1 < hi:
            raise InputError(f"band must satisfy 0 < lower < 1 < upper, got {self.band!r}")
        for name in ("body_priority", "constraint_margin_gy"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("parotid_mean_gy", "cord_max_gy"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive dose in Gy (or None for no limit), got {value!r}")
        for name in ("constraint_rounds", "max_iterations"):
            value = getattr(self, name)
            if int(value) != value or value < (0 if name == "constraint_rounds" else 1):
                raise InputError(f"{name} must be a {'non-negative' if name == 'constraint_rounds' else 'positive'} "
                                 f"integer, got {value!r}")
        return self

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["gantry_angles_deg"] = list(self.angles())
        return out


@dataclass
class PlanningProgress:
    """What :func:`plan_dose_painting` reports to its ``progress`` callback."""

    stage: str  #: "setup", "dose influence", "optimisation", "evaluation", "done"
    message: str
    fraction: float  #: overall progress estimate in [0, 1]
    plan: str | None = None  #: "painted" or "uniform" during optimisation
    iteration: int | None = None
    objective: float | None = None


@dataclass
class ConstraintCheck:
    """One OAR limit, verified on the final dose (CT grid, whole organ mask)."""

    structure: str
    kind: str  #: "mean" or "max"
    limit_gy: float
    achieved_gy: float
    satisfied: bool
    final_weight: float  #: the penalty's priority in the last optimisation round
    penalised_on: str  #: which dose-grid voxels the penalty acted on

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class OptimisedPlan:
    """One optimised plan: its dose on the CT grid and its evaluation against the painted prescription."""

    label: str  #: "painted" or "uniform"
    reference: str  #: what the target objective aimed at
    dose: sitk.Image  #: Gy, CT grid
    weights: np.ndarray  #: bixel weights (arbitrary units)
    evaluation: PlanEvaluation
    constraints: list[ConstraintCheck]
    iterations: list[int]  #: L-BFGS-B iterations per round
    solver_messages: list[str]
    objective_value: float
    seconds: float

    @property
    def constraints_met(self) -> bool:
        return all(c.satisfied for c in self.constraints)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label, "reference": self.reference, "constraints_met": self.constraints_met,
            "constraints": [c.summary() for c in self.constraints], "iterations": self.iterations,
            "rounds": len(self.iterations), "solver_messages": self.solver_messages,
            "objective_value": self.objective_value, "seconds": round(self.seconds, 2),
            "weights": {"n": int(self.weights.size), "sum": float(self.weights.sum()),
                        "nonzero": int(np.count_nonzero(self.weights))},
            "evaluation": self.evaluation.summary(),
        }


@dataclass
class PlanningResult:
    """Everything :func:`plan_dose_painting` computes (doses in Gy on the CT grid)."""

    painted: OptimisedPlan
    uniform: OptimisedPlan | None
    prescription: sitk.Image
    structures: dict[str, sitk.Image]  #: the DVH structures (target, evaluation volume, OARs, External)
    settings: PlanningSettings
    constraints: list[OarConstraint]
    base_dose_gy: float
    uniform_dose_gy: float | None
    geometry: dict[str, Any]  #: beams, bixels, dose grid, D_ij size
    timings_s: dict[str, float]
    pyradplan_version: str
    notes: list[str] = field(default_factory=list)

    def plans(self) -> list[OptimisedPlan]:
        return [p for p in (self.uniform, self.painted) if p is not None]

    def comparison_rows(self) -> list[dict[str, Any]]:
        """The uniform-vs-painted table (columns :data:`COMPARISON_COLUMNS`); numbers, ``None`` where n/a."""
        rows: list[dict[str, Any]] = []
        uniform, painted = self.uniform, self.painted
        limits = {(c.structure, c.kind): c.limit_gy for c in self.constraints}

        def add(quantity: str, structure: str, unit: str, getter: Callable[[OptimisedPlan], Any], *,
                prescribed: Any = None, limit: float | None = None) -> None:
            u = getter(uniform) if uniform is not None else None
            p = getter(painted)
            diff = p - u if isinstance(p, int | float) and isinstance(u, int | float) and not isinstance(p, bool) \
                else None
            rows.append({"quantity": quantity, "structure": structure, "unit": unit, "prescribed": prescribed,
                         "uniform": u, "painted": p, "painted_minus_uniform": diff, "limit_gy": limit})

        ev = painted.evaluation
        add("QF", EVALUATION_NAME, "", lambda p: p.evaluation.quality.qf, prescribed=0.0)
        add("Q95", EVALUATION_NAME, "fraction", lambda p: p.evaluation.quality.q95, prescribed=1.0)
        add("Q105", EVALUATION_NAME, "fraction", lambda p: p.evaluation.quality.q105, prescribed=0.0)
        add("Q95-105", EVALUATION_NAME, "fraction", lambda p: p.evaluation.quality.q95_105, prescribed=1.0)
        presc_dvh = _dvh_of(self.prescription, self.structures[EVALUATION_NAME])
        add("mean dose", EVALUATION_NAME, "Gy", lambda p: p.evaluation.dvhs[EVALUATION_NAME].mean_gy,
            prescribed=presc_dvh.mean_gy)
        add("EUD", EVALUATION_NAME, "Gy", lambda p: p.evaluation.eud_planned_gy, prescribed=ev.eud_prescribed_gy)
        add("TCP", EVALUATION_NAME, "", lambda p: p.evaluation.tcp_planned.tcp, prescribed=ev.tcp_prescribed.tcp)
        for stat, label in (("d95_gy", "D95"), ("mean_gy", "mean dose"), ("d2", "D2")):
            add(label, TARGET_NAME, "Gy", lambda p, s=stat: _stat(p.evaluation.dvhs[TARGET_NAME], s))
        for name in self.structures:
            if name in (TARGET_NAME, EVALUATION_NAME):
                continue
            add("mean dose", name, "Gy", lambda p, n=name: p.evaluation.dvhs[n].mean_gy,
                limit=limits.get((name, "mean")))
            add("max dose", name, "Gy", lambda p, n=name: p.evaluation.dvhs[n].max_gy,
                limit=limits.get((name, "max")))
        add("all limits met", "", "", lambda p: p.constraints_met)
        return rows

    def comparison_csv(self) -> str:
        """The comparison table as CSV text (numbers with 6 significant digits, empty where n/a)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COMPARISON_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.comparison_rows():
            writer.writerow({k: _cell(row[k]) for k in COMPARISON_COLUMNS})
        return buffer.getvalue()

    def dvh_csv(self, plan: OptimisedPlan) -> str:
        """DVH curves of ``plan`` (columns of :data:`~.plan_evaluation.DVH_COLUMNS`)."""
        return dvh_csv(plan.evaluation.dvhs)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers (no images)."""
        return {
            "engine": f"pyRadPlan {self.pyradplan_version} (photon pencil beam SVDPB, machine "
                      f"{self.settings.machine}; SciPy L-BFGS-B fluence optimisation)",
            "settings": self.settings.summary(),
            "constraints": [asdict(c) for c in self.constraints],
            "base_dose_gy": self.base_dose_gy,
            "uniform_dose_gy": self.uniform_dose_gy,
            "geometry": self.geometry,
            "painted": self.painted.summary(),
            "uniform": None if self.uniform is None else self.uniform.summary(),
            "comparison": [{k: _json_number(v) for k, v in row.items()} for row in self.comparison_rows()],
            "timings_s": {k: round(v, 2) for k, v in self.timings_s.items()},
            "notes": self.notes,
            "limits_of_the_method": "fluence-map optimisation on a pencil-beam dose (no leaf sequencing, "
                                    "generic machine): achievability and OAR cost in principle, not a clinical "
                                    "dose",
        }


def _stat(dvh, name: str) -> float:
    if name == "d2":
        return dvh.dose_at_volume_pct(2.0)
    return getattr(dvh, name)


def _dvh_of(dose: sitk.Image, mask: sitk.Image):
    from .dvh import dvh_from_mask

    return dvh_from_mask(dose, mask, "prescription")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------------------

def ptv_from_gtv(gtv: sitk.Image, margin_mm: float = 5.0) -> sitk.Image:
    """A PTV: the GTV (binary mask) dilated by a ball of ``margin_mm`` (exact Euclidean distance on its grid).

    A geometric expansion only (no anatomical editing, no CTV step). The default 5 mm is a design default
    for the demo (H&N GTV-to-PTV expansions are typically 3-5 mm for the setup part alone [M]).
    """
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise InputError(f"the PTV margin must be a non-negative length in mm, got {margin_mm!r}")
    inside = require_binary_mask(gtv, "GTV")
    ptv = dilate_mask_mm(inside, float(margin_mm), np.asarray(gtv.GetSpacing())[::-1])
    out = image_from_array(ptv, gtv)
    return set_frame_of_reference(out, get_frame_of_reference(gtv))


def body_from_ct(ct: sitk.Image, threshold_hu: float = -400.0) -> sitk.Image:
    """The External contour from a CT: HU > ``threshold_hu`` (default -400, between air and fat), the
    largest connected component, with holes (airways, sinuses) filled slice by slice."""
    values = sitk.GetArrayViewFromImage(ct)
    labels, n = ndimage.label(values > threshold_hu)
    if n == 0:
        raise InputError(f"no CT voxel exceeds {threshold_hu:g} HU: cannot find the body")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in body])  # one call per axial slice
    out = image_from_array(filled, ct)
    return set_frame_of_reference(out, get_frame_of_reference(ct))


def default_constraints(oar_names: Sequence[str], *, parotid_mean_gy: float | None = DEFAULT_PAROTID_MEAN_GY,
                        cord_max_gy: float | None = DEFAULT_CORD_MAX_GY) -> list[OarConstraint]:
    """Limits for the OARs recognised by name (case-insensitive): ``parotid`` -> mean <= ``parotid_mean_gy``;
    ``cord`` or ``spinal`` -> max <= ``cord_max_gy`` (``None`` switches a limit off)."""
    out = []
    for name in oar_names:
        low = name.lower()
        if parotid_mean_gy is not None and "parotid" in low:
            out.append(OarConstraint(name, "mean", float(parotid_mean_gy)))
        elif cord_max_gy is not None and ("cord" in low or "spinal" in low) and "prv" not in low:
            out.append(OarConstraint(name, "max", float(cord_max_gy)))
    return out


def _dose_grid(prp, ct: sitk.Image, spacing_mm: float):
    """The dose grid: per axis, nodes from the first to the last CT voxel centre, spaced at most ``spacing_mm``.

    pyRadPlan's default (``Grid.resample``: ``ceil(n s / g)`` nodes from the CT origin) can end before the last
    CT voxel centres, which then lie outside the dose grid and read 0 Gy after interpolation (seen on the digital
    patient: 2 % of the PTV at 0 Gy in the top slice). Here the first and last nodes sit on the first and last CT
    voxel centres, so every CT voxel is interpolated between computed nodes; the spacing is the extent divided by
    a whole number of steps (e.g. 4.875 mm instead of 5 mm), reported in the result's geometry.
    """
    size = np.asarray(ct.GetSize(), dtype=np.int64)
    extent = (size - 1) * np.asarray(ct.GetSpacing(), dtype=np.float64)
    steps = np.maximum(np.ceil(extent / spacing_mm - 1e-9), 1).astype(np.int64)
    resolution = np.where(extent > 0, extent / steps, spacing_mm)
    dimensions = np.where(extent > 0, steps + 1, 1)
    return prp.core.Grid(resolution={"x": float(resolution[0]), "y": float(resolution[1]), "z": float(resolution[2])},
                         dimensions=tuple(int(d) for d in dimensions),
                         origin=np.asarray(ct.GetOrigin(), dtype=np.float64), direction=np.eye(3))


def _stencil(organ: np.ndarray, ct: sitk.Image, grid_origin, grid_spacing, grid_size) -> tuple[np.ndarray, np.ndarray]:
    """The dose-grid voxels the CT-grid dose inside ``organ`` depends on, for axis-aligned grids.

    Returns ``(ct_mask, weights)``: ``ct_mask`` is a CT-grid mask whose nearest-neighbour resampling onto the
    dose grid (how pyRadPlan puts VOIs on the dose grid) selects every dose-grid voxel of the trilinear
    interpolation stencils of the organ's CT voxel centres; ``weights`` (dose grid, ``[k, j, i]``) are the
    trilinear weights summed over the organ and divided by its voxel count, so that ``sum(weights * d)`` is
    exactly the mean of the dose interpolated onto the organ's CT voxels (and the maximum over the stencil
    bounds the interpolated maximum, a convex combination).
    """
    k, j, i = np.nonzero(organ)
    ct_origin = np.asarray(ct.GetOrigin(), dtype=np.float64)
    ct_spacing = np.asarray(ct.GetSpacing(), dtype=np.float64)
    origin = np.asarray(grid_origin, dtype=np.float64)
    spacing = np.asarray(grid_spacing, dtype=np.float64)
    size = np.asarray(grid_size, dtype=np.int64)  # (x, y, z)
    points = ct_origin + np.stack([i, j, k], axis=1) * ct_spacing  # LPS (x, y, z), identity direction
    cont = (points - origin) / spacing
    base = np.floor(cont).astype(np.int64)
    frac = cont - base
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    weights = np.zeros(int(np.prod(size)), dtype=np.float64)
    used = []
    for corner in corners:  # 8 stencil corners, vectorised over the organ's voxels
        node = base + corner
        w = np.prod(np.where(corner == 1, frac, 1.0 - frac), axis=1)
        ok = np.all((node >= 0) & (node < size), axis=1)
        linear = (node[ok, 2] * size[1] + node[ok, 1]) * size[0] + node[ok, 0]
        weights += np.bincount(linear, weights=w[ok], minlength=weights.size)
        used.append(node[ok])
    weights /= max(len(k), 1)
    nodes = np.unique(np.concatenate(used), axis=0)
    node_points = origin + nodes * spacing
    # the CT voxel(s) nearest to each node: floor and ceil per axis, so ties at half voxels are covered
    ct_cont = (node_points - ct_origin) / ct_spacing
    lo = np.floor(ct_cont + 1e-6).astype(np.int64)
    hi = np.ceil(ct_cont - 1e-6).astype(np.int64)
    ct_mask = np.zeros(organ.shape, dtype=bool)
    shape_xyz = np.asarray(organ.shape[::-1])
    for pick in corners:
        idx = np.where(pick == 0, lo, hi)
        ok = np.all((idx >= 0) & (idx < shape_xyz), axis=1)
        ct_mask[idx[ok, 2], idx[ok, 1], idx[ok, 0]] = True
    return ct_mask, weights.reshape(tuple(size[::-1]))


# --------------------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------------------

@dataclass
class _Context:
    prp: Any
    settings: PlanningSettings
    progress: Callable[[PlanningProgress], None] | None
    cancel: Callable[[], bool] | None
    notes: list[str]
    span: tuple[float, float] = (0.0, 1.0)

    def report(self, stage: str, message: str, within: float = 0.0, **extra) -> None:
        if self.cancel is not None and self.cancel():
            raise PlanningCancelled("planning cancelled")
        if self.progress is not None:
            a, b = self.span
            self.progress(PlanningProgress(stage, message, a + (b - a) * min(max(within, 0.0), 1.0), **extra))


@contextlib.contextmanager
def _quiet_engine(notes: list[str]):
    """pyRadPlan's progress bars off and its warnings kept as notes, for the duration of a call.

    The beam generator and the pencil-beam engine draw tqdm bars (to stderr, in the Slicer console too):
    the ``tqdm`` name of every loaded pyRadPlan module that has one is swapped for one with ``disable=True``
    and restored afterwards. numpy's divide warnings of the ray tracer (rays parallel to a grid axis, harmless)
    are silenced. pyRadPlan's own warnings become notes, except "Resampling created an empty structure": its
    dose engine applies overlap priorities to the helper structures of this module, which legitimately empties
    the External; empty organs are reported by the planner itself.
    """
    import functools
    import sys

    patched = []
    for name, module in list(sys.modules.items()):
        original = getattr(module, "tqdm", None) if name.startswith("pyRadPlan") else None
        if isinstance(original, type):
            patched.append((module, original))
            module.tqdm = functools.partial(original, disable=True)
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("always")
            yield
        for w in caught:
            if issubclass(w.category, RuntimeWarning | DeprecationWarning | FutureWarning) or \
                    "created an empty structure" in str(w.message):
                continue
            text = f"pyRadPlan: {w.message}"
            if text not in notes:
                notes.append(text)
    finally:
        for module, original in patched:
            module.tqdm = original


def _check_inputs(ct: sitk.Image, prescription: sitk.Image, target: sitk.Image, oars: Mapping[str, sitk.Image], *,
                  body: sitk.Image | None, notes: list[str]) -> None:
    if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("the CT must be a 3D scalar image")
    units = get_units(ct)
    if units is None:
        notes.append("the CT records no units; taken as HU")
    elif units != Units.HU:
        raise UnitsError(f"the CT has units {units!r}; Hounsfield units (HU) are needed")
    if not np.allclose(np.asarray(ct.GetDirection()), np.eye(3).ravel(), atol=1e-6):
        raise GeometryError("the CT grid is not axis-aligned (direction cosines differ from the identity); "
                            "resample it onto an axial grid first")
    require_finite(ct, "CT")
    check_same_geometry(ct, prescription, "CT", "prescription")
    units = get_units(prescription)
    if units is None:
        notes.append("the prescription records no units; taken as Gy")
    elif units != Units.GY:
        raise UnitsError(f"the prescription has units {units!r}; a dose in Gy is needed")
    require_finite(prescription, "prescription")
    values = sitk.GetArrayViewFromImage(prescription)
    if np.any(values < 0):
        raise InputError("the prescription holds negative doses")
    if not np.any(values > 0):
        raise InputError("the prescription is zero everywhere")
    check_same_geometry(ct, target, "CT", "target")
    require_binary_mask(target, "target")
    for name, mask in oars.items():
        if not name or not name.strip():
            raise InputError("every organ at risk needs a name")
        if name in (TARGET_NAME, EVALUATION_NAME):
            raise InputError(f"{name!r} names the planned target in the results; give the organ at risk another name")
        check_same_geometry(ct, mask, "CT", f"organ at risk {name!r}")
        require_binary_mask(mask, f"organ at risk {name!r}", allow_empty=True)
    if body is not None:
        check_same_geometry(ct, body, "CT", "body (External)")
        require_binary_mask(body, "body (External)")
    frames = {what: get_frame_of_reference(image) for what, image in
              [("CT", ct), ("prescription", prescription), ("target", target), *oars.items()]}
    known = {uid for uid in frames.values() if uid}
    if len(known) > 1:
        listed = "; ".join(f"{what}: {uid}" for what, uid in frames.items() if uid)
        raise GeometryError(f"the inputs record different Frame of Reference UIDs ({listed})")


def plan_dose_painting(
    ct: sitk.Image,
    prescription: sitk.Image,
    target: sitk.Image,
    oars: Mapping[str, sitk.Image],
    *,
    body: sitk.Image | None = None,
    settings: PlanningSettings | None = None,
    constraints: Sequence[OarConstraint] | None = None,
    uniform_dose_gy: float | None = None,
    base_dose_gy: float | None = None,
    clonogens: sitk.Image | None = None,
    progress: Callable[[PlanningProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> PlanningResult:
    """Optimise a fluence for a dose-painting prescription (and a uniform plan to compare) and score both.

    The tier-1 entry point of issue 9 for the command line (``petdp plan``), the demo and the HypoxiaMapping
    panel. Method, objectives, limits, how limits are enforced and verified, and the limits of the method: see
    the module docstring.

    Parameters
    ----------
    ct : planning CT in HU on an axis-aligned grid; every other image must share its grid (checked).
    prescription : the dose-painting map in Gy (e.g. ``petdp prescribe --grid CT``); 0 outside its support.
    target : the PTV mask (e.g. :func:`ptv_from_gtv`); optimised together with the map's support.
    oars : organ-at-risk masks by name (all get DVHs; limits by :func:`default_constraints` unless
        ``constraints`` is given). A mask named External/Body is used as ``body``. Empty masks are skipped.
    body : External contour; default an OAR named External/Body, else :func:`body_from_ct`.
    settings : :class:`PlanningSettings` (beams, bixels, dose grid, objective, limits, optimiser).
    constraints : explicit limits (each must name a mask of ``oars``), replacing the name-based defaults.
    uniform_dose_gy : also optimise a uniform plan to this dose (e.g. 70 Gy) over the same target, for the
        comparison table; ``None`` skips it.
    base_dose_gy : reference dose on PTV voxels outside the map (default the lowest positive prescription).
    clonogens : clonogen density (1/cm3) for TCP/EUD (default uniform 1e7/cm3, see ``evaluate_plan``).
    progress : called with a :class:`PlanningProgress` at every stage, beam and optimiser iteration.
    cancel : called at the same points; returning True stops with :class:`PlanningCancelled`.

    Returns a :class:`PlanningResult`. Raises :class:`~.planning_objectives.PlanningExtraMissing` (exit 2)
    when pyRadPlan is not installed, :class:`InputError` for bad inputs.
    """
    started = time.perf_counter()
    settings = (settings or PlanningSettings()).validated()
    notes: list[str] = []
    oars = dict(oars)
    body_name = next((n for n in oars if n.strip().lower() in BODY_NAMES), None)
    if body is None and body_name is not None:
        body = oars[body_name]
    _check_inputs(ct, prescription, target, oars, body=body, notes=notes)
    presc = sitk.GetArrayFromImage(prescription).astype(np.float64)
    support = presc > 0
    ptv = sitk.GetArrayViewFromImage(target) > 0
    if not ptv.any():
        raise InputError("the target (PTV) mask is empty")
    target_region = ptv | support
    if base_dose_gy is None:
        base_dose_gy = float(presc[support].min())
    elif not (math.isfinite(base_dose_gy) and base_dose_gy > 0):
        raise InputError(f"base_dose_gy must be a positive dose in Gy, got {base_dose_gy!r}")
    if uniform_dose_gy is not None and not (math.isfinite(uniform_dose_gy) and uniform_dose_gy > 0):
        raise InputError(f"the uniform comparison dose must be a positive dose in Gy, got {uniform_dose_gy!r}")
    outside_map = ptv & ~support
    if outside_map.any():
        notes.append(f"{outside_map.sum() * voxel_volume_ml(ct):.2f} mL of the PTV lie outside the prescription "
                     f"map; they are planned to the base dose {base_dose_gy:g} Gy")
    frame = get_frame_of_reference(prescription) or get_frame_of_reference(ct)

    if body_name is not None:
        oars.pop(body_name)
    if body is None:
        body = body_from_ct(ct)
        notes.append("no External contour given: the body was taken from the CT (HU > -400, largest component, "
                     "holes filled per slice)")
    body_arr = sitk.GetArrayViewFromImage(body) > 0
    if np.any(target_region & ~body_arr):
        notes.append(f"{np.count_nonzero(target_region & ~body_arr) * voxel_volume_ml(ct):.2f} mL of the target "
                     "lie outside the body contour")
    oar_arrays = {}
    for name, mask in oars.items():
        arr = sitk.GetArrayFromImage(mask) > 0
        if not arr.any():
            notes.append(f"organ at risk {name!r} is empty and was skipped")
            continue
        oar_arrays[name] = arr
    if constraints is None:
        constraints = default_constraints(list(oar_arrays), parotid_mean_gy=settings.parotid_mean_gy,
                                          cord_max_gy=settings.cord_max_gy)
    constraints = list(constraints)
    for c in constraints:
        if c.kind not in ("mean", "max"):
            raise InputError(f"constraint on {c.structure!r}: kind must be 'mean' or 'max', got {c.kind!r}")
        if c.structure not in oar_arrays:
            raise InputError(f"constraint on {c.structure!r}: no such (non-empty) organ at risk; have "
                             f"{', '.join(oar_arrays) or 'none'}")
        if not (math.isfinite(c.limit_gy) and c.limit_gy > 0):
            raise InputError(f"constraint on {c.structure!r}: the limit must be a positive dose, got {c.limit_gy!r}")
    if not constraints:
        notes.append("no organ-at-risk limit applies (no parotid or cord among the OARs, or limits switched off)")

    prp = load_pyradplan()  # after every input check: the one-line install hint if it is missing
    if prp.untested_version:
        notes.append(f"pyRadPlan {prp.version} is not the tested version {TESTED_PYRADPLAN}")
    ctx = _Context(prp, settings, progress, cancel, notes, (0.0, 0.05))
    ctx.report("setup", "building the pyRadPlan CT, structures and objectives")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with _quiet_engine(notes):
        model = _Model.build(ctx, ct, presc=presc, support=support, target_region=target_region,
                             base_dose_gy=base_dose_gy, body=body_arr, oar_arrays=oar_arrays, constraints=constraints)
    timings["setup"] = time.perf_counter() - t

    ctx.span = (0.05, 0.5)
    t = time.perf_counter()
    with _quiet_engine(notes):
        model.dose_influence(ctx)
    timings["dose_influence"] = time.perf_counter() - t

    evaluation_mask = image_from_array(support, prescription)
    target_image = image_from_array(target_region, prescription)
    structures = {TARGET_NAME: target_image, EVALUATION_NAME: evaluation_mask}
    for name, arr in oar_arrays.items():
        structures[name] = image_from_array(arr, prescription)
    structures["External"] = image_from_array(body_arr, prescription)
    for image in structures.values():
        set_frame_of_reference(image, frame)
    presc_gy = sitk.Image(prescription)
    set_units(presc_gy, Units.GY)

    def run(label: str, reference: str, ref_values, span) -> OptimisedPlan:
        ctx.span = span
        t0 = time.perf_counter()
        with _quiet_engine(notes):
            weights, iterations, messages, value, checks = model.optimise(ctx, label, ref_values)
            dose = model.dose_on_ct(weights, ct, frame)
        ctx.report("evaluation", f"{label} plan: QF, QVH, DVH, TCP/EUD", 1.0, plan=label)
        evaluation = evaluate_plan(dose, presc_gy, evaluation_mask, structures=structures, clonogens=clonogens)
        return OptimisedPlan(label, reference, dose, weights, evaluation, checks, iterations, messages, value,
                             time.perf_counter() - t0)

    ref_painted = model.painted_reference
    painted_span = (0.5, 0.75) if uniform_dose_gy is not None else (0.5, 0.97)
    painted = run("painted", "the prescription map (base dose on PTV voxels outside it)", ref_painted, painted_span)
    timings["painted"] = painted.seconds
    uniform = None
    if uniform_dose_gy is not None:
        uniform = run("uniform", f"a uniform {uniform_dose_gy:g} Gy over the same target",
                      np.full_like(ref_painted, float(uniform_dose_gy)), (0.75, 0.97))
        timings["uniform"] = uniform.seconds
    timings["total"] = time.perf_counter() - started
    ctx.span = (0.97, 1.0)
    ctx.report("done", "planning finished", 1.0)
    return PlanningResult(
        painted=painted, uniform=uniform, prescription=presc_gy, structures=structures, settings=settings,
        constraints=constraints, base_dose_gy=float(base_dose_gy),
        uniform_dose_gy=None if uniform_dose_gy is None else float(uniform_dose_gy), geometry=model.geometry,
        timings_s=timings, pyradplan_version=prp.version, notes=notes + model.notes,
    )


@dataclass
class _Model:
    """The pyRadPlan objects of one planning run (CT, VOIs, beams, D_ij) and how to optimise on them."""

    prp: Any
    settings: PlanningSettings
    ct: Any
    dose_grid: Any
    vois: list  #: (name, voi_type, CT-grid mask, role: "target" | "body" | OarConstraint | None, mean weights)
    painted_reference: np.ndarray  #: reference dose on the dose grid (numpy [k, j, i]), painted plan
    grid_image: sitk.Image
    reference_scale: float
    constraints: list[OarConstraint]
    oar_arrays: dict[str, np.ndarray]
    ct_image: sitk.Image | None = None  #: the CT as float32 without metadata (what pyRadPlan got)
    base_dose: float = 0.0
    pln: Any = None
    stf: Any = None
    dij: Any = None
    cst_painted: Any = None
    geometry: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, ctx: _Context, ct: sitk.Image, *, presc: np.ndarray, support: np.ndarray,
              target_region: np.ndarray, base_dose_gy: float, body: np.ndarray, oar_arrays: dict[str, np.ndarray],
              constraints: list[OarConstraint]) -> _Model:
        prp, s = ctx.prp, ctx.settings
        ct_hu = sitk.Cast(ct, sitk.sitkFloat32)
        for key in ct_hu.GetMetaDataKeys():
            ct_hu.EraseMetaData(key)
        ct_obj = prp.ct.create_ct(cube_hu=ct_hu)
        g = float(s.dose_grid_mm)
        dose_grid = _dose_grid(prp, ct, g)
        grid_image = sitk.Image([int(d) for d in dose_grid.dimensions], sitk.sitkFloat32)
        grid_image.SetOrigin(tuple(float(v) for v in dose_grid.origin))
        grid_image.SetSpacing(tuple(float(v) for v in dose_grid.resolution_vector))
        grid_image.SetDirection(tuple(float(v) for v in np.asarray(dose_grid.direction).ravel()))

        # Reference on the dose grid: map (base dose on PTV voxels outside it), extended by nearest-neighbour
        # filling in a box around the target so that interpolation at target-edge voxels never sees 0.
        reference = np.where(support, presc, 0.0)
        reference[target_region & ~support] = base_dose_gy
        ct_spacing_kji = np.asarray(ct.GetSpacing())[::-1]
        pad = np.ceil(2.0 * g / ct_spacing_kji).astype(int) + 2
        idx = np.nonzero(target_region)
        box = tuple(slice(max(int(a.min()) - p, 0), min(int(a.max()) + p + 1, n))
                    for a, p, n in zip(idx, pad, target_region.shape, strict=True))
        inside = target_region[box]
        _, nearest = ndimage.distance_transform_edt(~inside, sampling=ct_spacing_kji, return_indices=True)
        filled = np.zeros(reference.shape, dtype=np.float32)
        filled[box] = reference[box][tuple(nearest)]
        ref_image = resample_to_reference(image_from_array(filled, ct), grid_image, interpolation="linear",
                                          default_value=0.0, output_pixel_type=sitk.sitkFloat32)
        painted_reference = sitk.GetArrayFromImage(ref_image).astype(np.float64)
        scale = float(np.mean(presc[support])) ** 2

        # The target objective acts on the target's interpolation stencil too (its dose-grid voxels and those
        # just outside whose values reach target CT voxels by interpolation), with the filled reference there.
        target_voi = target_region | _stencil(target_region, ct, dose_grid.origin, dose_grid.resolution_vector,
                                              dose_grid.dimensions)[0]
        vois: list[tuple] = [("Target", "TARGET", target_voi, "target", None)]
        notes: list[str] = []
        vv = voxel_volume_ml(ct)
        for c in constraints:
            stencil, weights = _stencil(oar_arrays[c.structure], ct, dose_grid.origin, dose_grid.resolution_vector,
                                        dose_grid.dimensions)
            shared = np.count_nonzero(stencil & target_region)
            if shared:
                notes.append(f"the {c.describe()} penalty and the target objective act on shared dose-grid voxels "
                             f"(about {shared * vv:.2f} mL of CT voxels): the weights decide, and the limit is "
                             "checked on the result")
            vois.append((f"{c.structure}__limit", "HELPER", stencil, c, weights if c.kind == "mean" else None))
        for name, organ in oar_arrays.items():
            on_grid = resample_to_reference(image_from_array(organ, ct), grid_image, interpolation="nearest")
            if not sitk.GetArrayViewFromImage(on_grid).any():
                notes.append(f"{name} has no voxel centre on the {g:g} mm dose grid; its dose comes from "
                             "interpolation (its limit, if any, is still enforced through its stencil)")
            vois.append((name, "OAR", organ, None, None))
        vois.append(("External", "EXTERNAL", body | target_region, None, None))
        vois.append(("NormalTissue", "HELPER", body & ~target_voi, "body", None))
        model = cls(prp=prp, settings=s, ct=ct_obj, dose_grid=dose_grid, vois=vois,
                    painted_reference=painted_reference, grid_image=grid_image, reference_scale=scale,
                    constraints=constraints, oar_arrays=oar_arrays, ct_image=ct_hu, base_dose=base_dose_gy,
                    notes=notes)
        return model

    def _cst(self, reference: np.ndarray, weights: dict[str, float]):
        """pyRadPlan StructureSet with the objectives for a plan whose target reference is ``reference``."""
        prp, s, classes = self.prp, self.settings, self.prp.objective_classes
        ref_image = sitk.GetImageFromArray(reference.astype(np.float32))
        ref_image.CopyInformation(self.grid_image)
        vois = []
        for name, voi_type, mask, role, extra in self.vois:
            objectives = []
            if role == "target":
                if s.objective == "squared":
                    objectives.append(prp.objectives.SquaredMimicking(d_ref=ref_image, priority=s.target_priority))
                elif s.objective == "relative":
                    objectives.append(classes.relative(d_ref=ref_image, scale=self.reference_scale,
                                                       priority=s.target_priority, tag="target"))
                else:
                    objectives.append(classes.band(d_ref=ref_image, lower=float(s.band[0]), upper=float(s.band[1]),
                                                   scale=self.reference_scale, priority=s.target_priority,
                                                   tag="target"))
            elif role == "body":
                if s.body_priority > 0:
                    objectives.append(prp.objectives.SquaredOverdosing(
                        d_max=s.body_max_fraction * self.base_dose, priority=s.body_priority))
            elif isinstance(role, OarConstraint):
                tag = role.describe()
                aim = max(role.limit_gy - s.constraint_margin_gy, 0.0)
                if role.kind == "max":
                    objectives.append(classes.max_limit(d_max=aim, priority=weights[tag], tag=tag))
                else:
                    weight_image = sitk.GetImageFromArray(extra.astype(np.float32))
                    weight_image.CopyInformation(self.grid_image)
                    objectives.append(classes.mean_limit(weights=weight_image, d_max=aim, priority=weights[tag],
                                                         tag=tag))
            if role is not None and not objectives:
                continue  # the normal-tissue helper without its objective
            mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
            mask_image.CopyInformation(self.ct_image)
            vois.append(prp.cst.create_voi(name=name, voi_type=voi_type, mask=mask_image, ct_image=self.ct,
                                           objectives=objectives))
        return prp.cst.create_cst(vois, ct=self.ct)

    # ---- dose influence ----------------------------------------------------------------------------------
    def dose_influence(self, ctx: _Context) -> None:
        prp, s = self.prp, self.settings
        angles = list(s.angles())
        cst = self._cst(self.painted_reference, {c.describe(): s.constraint_priority for c in self.constraints})
        pln = prp.top.PhotonPlan(machine=s.machine)
        pln.prop_stf = {"gantry_angles": angles, "couch_angles": [0.0] * len(angles),
                        "bixel_width": float(s.bixel_width_mm)}
        pln.prop_dose_calc = {"dose_grid": self.dose_grid}
        pln.prop_opt = {"solver": "scipy"}
        ctx.report("dose influence", f"beam geometry: {len(angles)} beams, {s.bixel_width_mm:g} mm bixels")
        stf = prp.top.generate_stf(self.ct, cst, pln)
        n_bixels = int(sum(b.total_number_of_bixels for b in stf.beams))
        engine = prp.engines.get_engine(pln)
        n_beams = len(stf.beams)
        counter = {"beam": 0}
        original = getattr(engine, "_init_beam", None)
        if callable(original):  # per-beam progress and cancellation (a private hook of the pencil-beam engine)
            def init_beam(*args, **kwargs):
                ctx.report("dose influence", f"dose influence: beam {counter['beam'] + 1} of {n_beams}",
                           counter["beam"] / n_beams)
                counter["beam"] += 1
                return original(*args, **kwargs)

            engine._init_beam = init_beam
        else:
            ctx.report("dose influence", f"dose influence of {n_beams} beams ({n_bixels} bixels)")
        ct_v = prp.top.validate_ct(self.ct)
        dij = engine.calc_dose_influence(ct_v, prp.top.validate_cst(cst, ct=ct_v), prp.top.validate_stf(stf))
        ctx.report("dose influence", "dose influence done", 1.0)
        self.pln, self.stf, self.dij, self.cst_painted = pln, stf, dij, cst
        matrix = getattr(dij, "physical_dose", None)
        nnz = None
        with contextlib.suppress(Exception):
            nnz = int(np.asarray(matrix).ravel()[0].nnz)
        self.geometry = {
            "gantry_angles_deg": angles, "couch_angles_deg": [0.0] * len(angles), "n_beams": n_beams,
            "n_bixels": n_bixels, "bixel_width_mm": float(s.bixel_width_mm),
            "isocentre_lps_mm": [float(v) for v in np.asarray(stf.beams[0].iso_center).ravel()],
            "dose_grid_mm": [float(v) for v in self.dose_grid.resolution_vector],
            "dose_grid_size": [int(v) for v in self.dose_grid.dimensions],
            "dose_grid_origin_lps_mm": [float(v) for v in self.dose_grid.origin],
            "ct_size": list(self.ct_image.GetSize()), "ct_spacing_mm": list(self.ct_image.GetSpacing()),
            "dij_nonzeros": nnz,
        }

    # ---- optimisation ------------------------------------------------------------------------------------
    def optimise(self, ctx: _Context, label: str, reference: np.ndarray):
        """Penalty escalation loop (module docstring); returns weights, iterations, messages, objective, checks."""
        prp, s = self.prp, self.settings
        weights = {c.describe(): float(s.constraint_priority) for c in self.constraints}
        cst = self.cst_painted if reference is self.painted_reference else self._cst(reference, weights)
        on_iteration = {"round": 0}

        def callback(iteration: int, value: float) -> None:
            ctx.report("optimisation", f"{label} plan, round {on_iteration['round'] + 1}: iteration {iteration}, "
                       f"objective {value:.6g}", (on_iteration["round"] + iteration / s.max_iterations)
                       / (s.constraint_rounds + 1), plan=label, iteration=iteration, objective=value)

        problem = _make_problem(prp, self.pln, s, callback)
        ctx.report("optimisation", f"{label} plan: optimising the fluence", 0.0, plan=label)
        x, info = problem.solve(self.ct, cst, self.stf, self.dij)
        iterations, messages = [int(info.get("nit", 0))], [str(info.get("message", ""))]
        checks = self._check(x, weights)
        for round_ in range(1, s.constraint_rounds + 1):
            failed = [c for c in checks if not c.satisfied]
            if not failed:
                break
            for c in failed:
                weights[OarConstraint(c.structure, c.kind, c.limit_gy).describe()] *= s.escalation
            _set_priorities(problem, weights)
            on_iteration["round"] = round_
            ctx.report("optimisation", f"{label} plan: limit(s) not met ({'; '.join(c.structure for c in failed)}): "
                       f"penalty x{s.escalation:g}, round {round_ + 1}", round_ / (s.constraint_rounds + 1),
                       plan=label)
            problem.solver.reset_iterations()
            x, info = problem.solver.solve(np.asarray(x, dtype=np.float64))
            x = np.asarray(x)
            iterations.append(int(info.get("nit", 0)))
            messages.append(str(info.get("message", "")))
            checks = self._check(x, weights)
        value = float(info.get("fun", float("nan")))
        return np.asarray(x, dtype=np.float64), iterations, messages, value, checks

    def _dose_ct_array(self, x) -> np.ndarray:
        image = self.dij.compute_result_ct_grid(np.asarray(x, dtype=np.float64))["physical_dose"]
        return sitk.GetArrayFromImage(image)

    def _check(self, x, weights: dict[str, float]) -> list[ConstraintCheck]:
        if not self.constraints:
            return []
        dose = self._dose_ct_array(x)
        checks = []
        for c in self.constraints:
            values = dose[self.oar_arrays[c.structure]]
            achieved = float(values.mean() if c.kind == "mean" else values.max())
            where = ("every dose-grid voxel of the organ's interpolation stencils" if c.kind == "max" else
                     "the trilinear-weighted mean over the organ's interpolation stencils (= the CT-grid mean)")
            checks.append(ConstraintCheck(c.structure, c.kind, c.limit_gy, achieved, achieved <= c.limit_gy,
                                          weights[c.describe()], where))
        return checks

    def dose_on_ct(self, x, ct: sitk.Image, frame: str | None) -> sitk.Image:
        image = self.dij.compute_result_ct_grid(np.asarray(x, dtype=np.float64))["physical_dose"]
        if tuple(image.GetSize()) != tuple(ct.GetSize()) or not np.allclose(image.GetOrigin(), ct.GetOrigin(),
                                                                            atol=1e-3) \
                or not np.allclose(image.GetSpacing(), ct.GetSpacing(), atol=1e-6):
            raise ProcessingError("pyRadPlan returned the dose on a grid that differs from the CT's")
        dose = image_from_array(np.clip(sitk.GetArrayFromImage(image), 0.0, None).astype(np.float32), ct,
                                units=Units.GY)
        return set_frame_of_reference(dose, frame)


def _set_priorities(problem, weights: dict[str, float]) -> None:
    """Set the priority of every tagged limit objective inside an initialised pyRadPlan problem.

    pyRadPlan 0.3.x caches the chain-rule gradient of each quantity keyed on the fluence only (not on the
    objective weights), so the first gradient of a re-weighted problem at the previous optimum would be the
    stale one and L-BFGS-B would stop at once; the caches are dropped here.
    """
    for quantity in getattr(problem, "_quantities", []):
        for cache in ("_w_cache", "_w_grad_cache"):
            if hasattr(quantity, cache):
                setattr(quantity, cache, None)
    found = set()
    for _, objectives in problem._objective_list:
        for objective in objectives:
            tag = getattr(objective, "tag", "")
            if tag in weights:
                objective.priority = float(weights[tag])
                found.add(tag)
    missing = set(weights) - found
    if missing:
        raise ProcessingError(f"could not find the penalty of {', '.join(sorted(missing))} in the pyRadPlan problem "
                              "(an incompatible pyRadPlan version?)")


def _make_problem(prp, pln, settings: PlanningSettings, callback: Callable[[int, float], None]):
    """pyRadPlan's non-linear fluence problem with the SciPy L-BFGS-B solver, our iteration callback and no
    keyboard listener (pyRadPlan's solver reads the terminal for a cancel key; not in a library call)."""

    class Solver(prp.solvers.OptimizerSciPy):
        allow_keyboard_cancel = False

        def __init__(self):
            super().__init__()
            self.options.update({"disp": False, "ftol": float(settings.ftol), "gtol": float(settings.gtol)})
            self.reset_iterations()

        def reset_iterations(self) -> None:
            self._iteration = 0

        def _callback(self, intermediate_result):  # SciPy >= 1.11 passes an OptimizeResult under this name
            self._iteration += 1
            callback(self._iteration, float(intermediate_result.fun))

        def solve(self, x0):
            self.max_iter = int(settings.max_iterations)
            return super().solve(x0)

    class Problem(prp.problems.NonLinearFluencePlanningProblem):
        def _initialize(self):
            super()._initialize()
            self.solver.max_iter = int(settings.max_iterations)

    problem = Problem(pln)
    problem.apply_overlap = False  # every objective acts on its whole VOI (the masks are built for that)
    problem.solver = Solver()
    return problem


def plan_summary_lines(result: PlanningResult) -> list[str]:
    """Human-readable lines: the comparison table and the limits (used by ``petdp plan`` and the demo)."""
    lines = []
    rows = result.comparison_rows()
    has_uniform = result.uniform is not None
    header = f"{'quantity':<14}{'structure':<16}{'prescribed':>11}" + (f"{'uniform':>10}" if has_uniform else "") + \
        f"{'painted':>10}" + (f"{'diff':>9}" if has_uniform else "") + f"{'limit':>8}"
    lines.append(header)
    for row in rows:
        def fmt(v, width):
            if v is None:
                return " " * width
            if isinstance(v, bool):
                return f"{'yes' if v else 'no':>{width}}"
            return f"{v:>{width}.4g}" if isinstance(v, float) else f"{v!s:>{width}}"

        line = f"{row['quantity']:<14}{row['structure'][:15]:<16}{fmt(row['prescribed'], 11)}"
        if has_uniform:
            line += fmt(row["uniform"], 10)
        line += fmt(row["painted"], 10)
        if has_uniform:
            line += fmt(row["painted_minus_uniform"], 9)
        line += fmt(row["limit_gy"], 8)
        lines.append(line.rstrip())
    for plan in result.plans():
        for c in plan.constraints:
            lines.append(f"{plan.label} plan: {c.structure} {c.kind} {c.achieved_gy:.2f} Gy "
                         f"{'<=' if c.satisfied else '>'} limit {c.limit_gy:g} Gy "
                         f"({'met' if c.satisfied else 'NOT MET'}; penalty weight {c.final_weight:g})")
    return lines


__all__ = [
    "COMPARISON_COLUMNS", "DEFAULT_BIXEL_MM", "DEFAULT_CORD_MAX_GY", "DEFAULT_DOSE_GRID_MM", "DEFAULT_N_BEAMS",
    "DEFAULT_PAROTID_MEAN_GY", "EVALUATION_NAME", "INSTALL_HINT", "OBJECTIVES", "TARGET_NAME", "ConstraintCheck",
    "OarConstraint", "OptimisedPlan", "PlanningCancelled", "PlanningExtraMissing", "PlanningProgress",
    "PlanningResult", "PlanningSettings", "body_from_ct", "default_constraints", "plan_dose_painting",
    "plan_summary_lines", "ptv_from_gtv",
]
