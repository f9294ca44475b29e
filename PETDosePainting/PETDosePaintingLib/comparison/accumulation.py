"""Dose accumulation across treatment phases onto the baseline, and the remaining-dose prescription.

Method (``dose_painting.md`` §5.2-§5.4)
--------------------------------------
* **Direct dose mapping.** ``D_acc(x0) = sum_k D_k(T_k(x0))`` on the baseline grid, where ``T_k`` maps
  baseline points to phase-k points (fixed = baseline, moving = phase k; ITK convention). A chain
  ``[T_{0->7}, T_{7->17}]`` is composed into one ``CompositeTransform`` (last added applied first) and each
  phase dose is interpolated **once** (trilinear) through it
  (:func:`~PETDosePaintingLib.comparison.registration.compose_transforms`). Summing the phase doses pulled
  directly to the baseline through composed transforms is the same map as SlicerRT's nested-transform
  accumulation and as §5.1's anti-chronological warping, minus its repeated interpolation.
* Dose is an intensive quantity (energy per mass): it is **not** multiplied by the Jacobian determinant.
  Direct mapping is exact when mass is conserved locally; where tissue mass changes (a shrinking tumour,
  weight loss) accumulated dose is ill-posed, and energy-mass congruent mapping (Zhong & Siebers, Med Phys
  2009;36:1427-1437) differs. That method is not offered here; the Jacobian QA of each phase's transform is
  reported instead (AAPM TG-132, Brock et al. 2017) so the user sees where volume changed.
* **Biological summation.** With ``alpha_beta_gy`` each phase dose is converted to EQD2 voxel by voxel
  *before* warping, on its own grid, with its own number of fractions:
  ``EQD2_k = D_k (d_k + a/b) / (2 + a/b)``, ``d_k = D_k / n_k``
  (:func:`PETDosePaintingLib.dosepainting.radiobiology.eqd2`). A dose given in 2 Gy fractions is unchanged.
* **Outside a dose grid** the phase dose is taken as 0 Gy and the voxel is flagged: the result carries a
  coverage mask of the baseline voxels that every phase dose covers; a phase whose grid does not overlap
  the baseline at all is refused.
* **Remaining dose** (:func:`remaining_dose`, §5.3): the phase-k prescription
  ``P_k(y) = max(0, D_goal(T_k^-1(y)) - D_acc(T_k^-1(y)))`` on the phase-k grid. The signed deficit
  ``D_goal - D_acc`` is computed on the baseline grid, pulled to phase k once (linear interpolation) through
  ``T_k^-1``, then clipped at 0, so a voxel whose neighbourhood met the goal gets exactly 0. ``T_k^-1`` is
  the exact inverse for linear transforms, otherwise the fixed-point inversion of ``T_k``'s displacement
  field on the phase-k grid (:func:`~PETDosePaintingLib.comparison.registration.invert_transform`, round-trip
  error reported), unless an explicit inverse is given (e.g. from a registration fixed = phase k,
  moving = baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..dosepainting.radiobiology import eqd2
from ..errors import GeometryError, InputError
from ..imaging.image import (
    DESCRIPTION_KEY,
    Units,
    check_same_geometry,
    get_frame_of_reference,
    image_from_array,
    require_finite,
    require_units,
    sampling_grid,
    set_frame_of_reference,
)
from .registration import (
    JACOBIAN_RANGE,
    JacobianQA,
    check_frames_of_reference,
    compose_transforms,
    describe_transform,
    invert_transform,
    jacobian_qa,
)

#: Interpolators for dose (linear is the standard for direct dose mapping).
DOSE_INTERPOLATIONS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}

TransformChain = sitk.Transform | Sequence[sitk.Transform | None] | None


@dataclass(frozen=True)
class PhaseContribution:
    """How one phase dose entered the sum.

    ``coverage_fraction``: fraction of the baseline voxels whose image under the phase's transform lies in
    the phase dose grid. ``max_gy``/``mean_gy``: of the mapped (EQD2 if requested) dose over the covered
    voxels. ``jacobian``: QA of a non-linear transform (``None`` for linear ones, whose J is constant and
    reported in ``linear_jacobian``).
    """

    name: str
    fractions: int | None
    transform: str
    coverage_fraction: float
    max_gy: float
    mean_gy: float
    jacobian: JacobianQA | None
    linear_jacobian: float | None


@dataclass(eq=False)
class AccumulationResult:
    """Accumulated dose on the baseline grid (see :func:`accumulate_doses`).

    ``total`` (float32, units Gy; physical or EQD2 per ``quantity``), ``phases`` (each mapped phase dose),
    ``coverage`` (uint8: 1 where every phase dose was defined), ``coverage_fraction`` (of the grid).
    """

    total: sitk.Image
    phases: list[sitk.Image]
    coverage: sitk.Image
    coverage_fraction: float
    quantity: str
    alpha_beta_gy: float | None
    contributions: list[PhaseContribution]
    parameters: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no images)."""
        total = sitk.GetArrayViewFromImage(self.total)
        covered = sitk.GetArrayViewFromImage(self.coverage) > 0
        return {
            "quantity": self.quantity, "alpha_beta_gy": self.alpha_beta_gy,
            "coverage_fraction": self.coverage_fraction,
            "max_gy": float(total[covered].max()) if covered.any() else None,
            "mean_gy_in_coverage": float(total[covered].mean()) if covered.any() else None,
            "phases": [{**c.__dict__, "jacobian": None if c.jacobian is None else c.jacobian.__dict__.copy()}
                       for c in self.contributions],
            "parameters": self.parameters,
            "method": "direct dose mapping, one interpolation per phase through the composed transform; "
                      "dose not multiplied by the Jacobian",
        }


@dataclass(eq=False)
class RemainingDose:
    """The remaining-dose prescription of a phase (see :func:`remaining_dose`).

    ``prescription``: ``P_k`` on the phase grid (Gy, >= 0); ``per_fraction``: ``P_k / n`` if fractions were
    given (physical dose per fraction only if the inputs are physical doses); ``deficit``: ``D_goal - D_acc``
    on the baseline grid (signed, Gy); ``coverage``: phase voxels whose pre-image lies on the baseline grid
    (uint8; ``P_k`` is 0 elsewhere); ``inverse_method`` and ``round_trip_max_mm``: how ``T_k^-1`` was
    obtained and its accuracy; ``goal_met_fraction``: fraction of the covered phase voxels with ``P_k = 0``.
    """

    prescription: sitk.Image
    per_fraction: sitk.Image | None
    deficit: sitk.Image
    coverage: sitk.Image
    inverse_method: str
    round_trip_max_mm: float
    goal_met_fraction: float

    def summary(self) -> dict[str, Any]:
        values = sitk.GetArrayViewFromImage(self.prescription)
        return {"max_gy": float(values.max()), "inverse_method": self.inverse_method,
                "round_trip_max_mm": self.round_trip_max_mm, "goal_met_fraction": self.goal_met_fraction}


def accumulate_doses(
    reference: sitk.Image,
    doses: Sequence[sitk.Image],
    transforms: Sequence[TransformChain] | None = None,
    *,
    fractions: Sequence[int] | None = None,
    alpha_beta_gy: float | None = None,
    names: Sequence[str] | None = None,
    interpolation: str = "linear",
    qa_mask: sitk.Image | None = None,
    jacobian_range: tuple[float, float] = JACOBIAN_RANGE,
) -> AccumulationResult:
    """Sum phase doses on the baseline grid (direct dose mapping, one interpolation per phase).

    Parameters
    ----------
    reference : the baseline grid (e.g. the baseline CT); only its geometry and frame of reference are used.
    doses : phase doses, each an image in Gy (units metadata ``Gy`` required) on its own grid.
    transforms : one entry per dose: ``None`` (the dose is in the baseline frame of reference, any grid), a
        transform, or a chain listed from the baseline outwards (``[T_{0->7}, T_{7->17}]``), each mapping
        baseline-side points to phase-side points (ITK fixed -> moving, fixed = the earlier scan). ``None``
        for the whole argument = identity for every dose.
    fractions : number of fractions of each phase (required with ``alpha_beta_gy``; recorded otherwise).
    alpha_beta_gy : if given, sum EQD2 with this alpha/beta (Gy; e.g. 10 for tumour, 3 for late effects),
        each phase converted on its own grid before mapping; else sum physical dose.
    names : phase names for the report (default ``phase1``, ``phase2``, ...).
    interpolation : ``"linear"`` (default), ``"bspline"`` or ``"nearest"``.
    qa_mask : region of the Jacobian QA on the baseline grid (e.g. the body); default: the coverage region.
    jacobian_range : the plausible J range of the QA.

    Raises :class:`UnitsError` for a dose not in Gy, :class:`InputError` for inconsistent counts,
    :class:`GeometryError` for a dose without transform in another frame of reference, or one that does
    not overlap the baseline grid.
    """
    doses = list(doses)
    if not doses:
        raise InputError("give at least one phase dose")
    n = len(doses)
    chains: list[TransformChain] = [None] * n if transforms is None else list(transforms)
    if len(chains) != n:
        raise InputError(f"{n} dose(s) but {len(chains)} transform entries; give one entry (None, a transform "
                         "or a chain) per dose")
    names = [f"phase{i + 1}" for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise InputError(f"{n} dose(s) but {len(names)} names")
    if fractions is not None:
        fractions = [_fraction_count(f, name) for f, name in zip(fractions, names, strict=False)]
        if len(fractions) != n:
            raise InputError(f"{n} dose(s) but {len(fractions)} fraction counts; give one per phase")
    if alpha_beta_gy is not None:
        alpha_beta_gy = float(alpha_beta_gy)
        if not np.isfinite(alpha_beta_gy) or alpha_beta_gy <= 0:
            raise InputError(f"alpha/beta must be a positive number of Gy, got {alpha_beta_gy!r}")
        if fractions is None:
            raise InputError("EQD2 needs the number of fractions of every phase")
    if interpolation not in DOSE_INTERPOLATIONS:
        raise InputError(f"unknown interpolation {interpolation!r}; use one of {', '.join(DOSE_INTERPOLATIONS)}")

    grid = sampling_grid(reference)
    total = np.zeros(sitk.GetArrayViewFromImage(grid).shape, dtype=np.float64)
    covered_all = np.ones(total.shape, dtype=bool)
    mapped_images: list[sitk.Image] = []
    contributions: list[PhaseContribution] = []
    qa_region = qa_mask
    for index, (dose, chain, name) in enumerate(zip(doses, chains, names, strict=True)):
        what = f"dose {name!r}"
        _check_dose(dose, what)
        transform = compose_transforms(chain)
        if _is_identity_chain(chain):
            check_frames_of_reference(dose, reference, what, "baseline")
        values = dose
        if alpha_beta_gy is not None:
            values = eqd2(sitk.Cast(dose, sitk.sitkFloat64), alpha_beta_gy, n_fractions=fractions[index])
        mapped = sitk.Resample(sitk.Cast(values, sitk.sitkFloat64), grid, transform,
                               DOSE_INTERPOLATIONS[interpolation], 0.0, sitk.sitkFloat64)
        covered = _covered(dose, grid, transform)
        if not covered.any():
            raise GeometryError(f"{what} does not overlap the baseline grid through its transform; check the "
                                "transform chain (baseline -> phase) and the grids")
        array = sitk.GetArrayFromImage(mapped)
        total += array
        covered_all &= covered
        mapped_images.append(image_from_array(array.astype(np.float32), grid, units=Units.GY))
        jac = None
        linear_j = None
        if transform.IsLinear():
            linear_j = float(np.linalg.det(_linear_matrix(transform)))
        else:
            region = qa_region if qa_region is not None else image_from_array(covered, grid)
            jac = jacobian_qa(transform, grid, region, lower=jacobian_range[0], upper=jacobian_range[1],
                              region="QA mask" if qa_region is not None else "dose coverage")
        contributions.append(PhaseContribution(
            name=name, fractions=None if fractions is None else fractions[index],
            transform="identity" if _is_identity_chain(chain) else describe_transform(transform),
            coverage_fraction=float(np.count_nonzero(covered)) / covered.size,
            max_gy=float(array[covered].max()), mean_gy=float(array[covered].mean()), jacobian=jac,
            linear_jacobian=linear_j))

    quantity = "physical" if alpha_beta_gy is None else "EQD2"
    total_image = image_from_array(total.astype(np.float32), grid, units=Units.GY)
    description = ("accumulated physical dose" if alpha_beta_gy is None
                   else f"accumulated EQD2 (alpha/beta {alpha_beta_gy:g} Gy)")
    total_image.SetMetaData(DESCRIPTION_KEY, description)
    set_frame_of_reference(total_image, get_frame_of_reference(reference))
    coverage = image_from_array(covered_all, grid)
    return AccumulationResult(
        total=total_image, phases=mapped_images, coverage=coverage,
        coverage_fraction=float(np.count_nonzero(covered_all)) / covered_all.size, quantity=quantity,
        alpha_beta_gy=alpha_beta_gy, contributions=contributions,
        parameters={"interpolation": interpolation, "names": names,
                    "fractions": None if fractions is None else list(fractions),
                    "outside_dose_grid": "0 Gy, excluded from the coverage mask"})


def remaining_dose(
    goal: sitk.Image,
    accumulated: sitk.Image,
    phase_reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    inverse: sitk.Transform | None = None,
    n_fractions: int | None = None,
    inverse_spacing_mm: float | None = None,
) -> RemainingDose:
    """The remaining-dose ("dose debt") prescription of phase k on the phase-k grid (§5.3).

    ``P_k(y) = max(0, D_goal(T_k^-1(y)) - D_acc(T_k^-1(y)))``.

    Parameters
    ----------
    goal, accumulated : cumulative goal and delivered dose on the **same baseline grid** (Gy; both physical or
        both EQD2).
    phase_reference : the phase-k grid (e.g. the phase-k CT).
    transform : ``T_k`` baseline -> phase k (registration fixed = baseline, moving = phase k); ``None`` =
        identity (the phase is in the baseline frame of reference).
    inverse : ``T_k^-1`` (phase k -> baseline) if you have it; else it is computed from ``transform``
        (exact for linear transforms, fixed-point displacement-field inversion otherwise).
    n_fractions : fractions left in the phase; gives ``per_fraction = P_k / n`` (meaningful for physical
        doses; for EQD2 convert with :func:`physical_dose_from_eqd2`).
    inverse_spacing_mm : coarser grid for the displacement-field inversion (speed).
    """
    check_same_geometry(goal, accumulated, "dose goal", "accumulated dose")
    _check_dose(goal, "dose goal")
    _check_dose(accumulated, "accumulated dose")
    if inverse is not None:
        pull = inverse
        method, round_trip = "given", float("nan")
    elif transform is None:
        check_frames_of_reference(goal, phase_reference, "dose goal", "phase reference")
        pull = sitk.Transform(3, sitk.sitkIdentity)
        method, round_trip = "identity", 0.0
    else:
        inv = invert_transform(transform, phase_reference, spacing_mm=inverse_spacing_mm)
        pull, method, round_trip = inv.transform, inv.method, inv.round_trip_max_mm
    deficit = (sitk.GetArrayFromImage(sitk.Cast(goal, sitk.sitkFloat64))
               - sitk.GetArrayFromImage(sitk.Cast(accumulated, sitk.sitkFloat64)))
    deficit_image = image_from_array(deficit.astype(np.float32), goal, units=Units.GY)
    grid = sampling_grid(phase_reference)
    pulled = sitk.Resample(image_from_array(deficit, goal), grid, pull, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    covered = _covered(goal, grid, pull)
    if not covered.any():
        raise GeometryError("the phase grid does not overlap the baseline grid through the inverse transform")
    values = np.clip(sitk.GetArrayFromImage(pulled), 0.0, None)
    values[~covered] = 0.0
    prescription = image_from_array(values.astype(np.float32), grid, units=Units.GY)
    prescription.SetMetaData(DESCRIPTION_KEY, "remaining-dose prescription max(0, goal - accumulated)")
    set_frame_of_reference(prescription, get_frame_of_reference(phase_reference))
    per_fraction = None
    if n_fractions is not None:
        n = _fraction_count(n_fractions, "phase")
        per_fraction = image_from_array((values / n).astype(np.float32), grid, units=Units.GY)
    met = float(np.count_nonzero(values[covered] <= 0)) / float(np.count_nonzero(covered))
    return RemainingDose(prescription, per_fraction, deficit_image, image_from_array(covered, grid), method,
                         round_trip, met)


def physical_dose_from_eqd2(eqd2_gy: Any, n_fractions: int, alpha_beta_gy: float) -> Any:
    """Physical total dose ``D`` in ``n`` equal fractions with the given EQD2 (inverse of the LQ EQD2).

    Solves ``EQD2 = D (D/n + a/b) / (2 + a/b)`` for ``D >= 0``:
    ``D = n/2 (-a/b + sqrt((a/b)^2 + 4 EQD2 (2 + a/b) / n))``. Numbers, arrays or images (Gy).
    """
    n = _fraction_count(n_fractions, "phase")
    ab = float(alpha_beta_gy)
    if not np.isfinite(ab) or ab <= 0:
        raise InputError(f"alpha/beta must be a positive number of Gy, got {alpha_beta_gy!r}")
    image = eqd2_gy if isinstance(eqd2_gy, sitk.Image) else None
    values = (sitk.GetArrayFromImage(image).astype(np.float64) if image is not None
              else np.asarray(eqd2_gy, dtype=np.float64))
    if np.any(values < 0):
        raise InputError("EQD2 must be >= 0")
    d = 0.5 * (-ab + np.sqrt(ab * ab + 4.0 * values * (2.0 + ab) / n))
    total = n * d
    if image is not None:
        return image_from_array(total.astype(np.float32), image, units=Units.GY)
    return float(total) if np.ndim(total) == 0 else total


def _check_dose(dose: sitk.Image, what: str) -> None:
    if not isinstance(dose, sitk.Image) or dose.GetDimension() != 3 or dose.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a 3D scalar image")
    require_units(dose, [Units.GY], what)
    require_finite(dose, what)
    if float(np.min(sitk.GetArrayViewFromImage(dose))) < 0:
        raise InputError(f"{what} holds negative values; a dose in Gy is >= 0")


def _fraction_count(value: Any, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"the number of fractions of {name} must be a positive integer, got {value!r}") from None
    if n != value or n < 1:
        raise InputError(f"the number of fractions of {name} must be a positive integer, got {value!r}")
    return n


def _covered(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    mapped = sitk.Resample(ones, grid, transform, sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(mapped) > 0


def _is_identity_chain(chain: TransformChain) -> bool:
    if chain is None:
        return True
    if isinstance(chain, sitk.Transform):
        return False
    return all(t is None for t in chain)


def _linear_matrix(transform: sitk.Transform) -> np.ndarray:
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    return np.column_stack([np.asarray(transform.TransformPoint(tuple(np.eye(3)[a]))) - origin for a in range(3)])


__all__ = ["DOSE_INTERPOLATIONS", "AccumulationResult", "PhaseContribution", "RemainingDose", "accumulate_doses",
           "physical_dose_from_eqd2", "remaining_dose"]
