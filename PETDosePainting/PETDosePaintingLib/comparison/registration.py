"""Image registration (rigid across modalities, B-spline deformable between CT timepoints) and its QA.

Conventions (``dose_painting.md`` §5.2; the same everywhere in the library)
---------------------------------------------------------------------------
* **fixed** = the reference (the baseline CT of a course, or the CT an MR is registered to); **moving** =
  the other image (a later timepoint, the MR, a PET/CT of another session).
* Every transform returned or accepted here is an ITK/SimpleITK transform ``T`` that maps **fixed-space
  points to moving-space points** (LPS millimetres): ``T(x_fixed) = x_moving``. That is what resampling
  needs: ``Resample(moving, fixed_grid, T)`` evaluates ``moving(T(x))`` and *pulls* the moving image onto
  the fixed grid (:func:`~PETDosePaintingLib.imaging.resample.resample_to_reference`). In Slicer it is a
  transform node's ``TransformFromParent``: placing the moving image under the node shows it aligned with
  the fixed image (:mod:`PETDosePaintingLib.mrml.registration_logic`). Transform files written by
  :func:`write_transform` hold exactly this ``T`` (ITK's resampling direction, as Slicer reads and writes them).
* Chains: ``T_{0->17}(x0) = T_{7->17}(T_{0->7}(x0))``. :func:`compose_transforms` takes the chain from the
  fixed side outwards, ``[T_{0->7}, T_{7->17}]``, and builds ``sitk.CompositeTransform([T_{7->17},
  T_{0->7}])``, since a SimpleITK composite applies its **last-added transform first**. Resample once
  through the composite (one interpolation).
* Pushing a fixed-space object (a baseline contour, a dose goal) into moving space needs ``T^-1``
  (:func:`invert_transform`: exact for linear transforms, a fixed-point inversion of the displacement field
  otherwise, with its round-trip error reported).

Methods
-------
* **Rigid** (:func:`register_rigid`): 6-parameter Euler transform, Mattes mutual information (Mattes et
  al., IEEE TMI 2003;22:120-128; SimpleITK's ITKv4 implementation with a fixed random sample set),
  centred initialisation (rotation about the fixed image centre, translation aligning the image centres),
  multi-resolution pyramid (shrink factors with Gaussian smoothing in mm), regular-step gradient descent
  with parameter scales from the physical shift. Works across modalities (CT/MR/PET).
* **B-spline** (:func:`register_bspline`): cubic B-spline free-form deformation on the fixed domain
  (Rueckert et al., IEEE TMI 1999;18:712-721), on top of an optional initial (rigid) transform, for CT to
  CT between timepoints. Deviation from Rueckert: no bending-energy penalty (SimpleITK's registration has
  none); the control-point spacing is the regulariser, so it must stay coarse (default 25 mm), and the
  Jacobian QA below is mandatory. The default metric is mean squares (same modality, HU); Mattes MI is
  available.
* **Jacobian QA** (:func:`jacobian_qa`, AAPM TG-132, Brock et al., Med Phys 2017;44:e43-e76): the
  determinant J of the transform's spatial Jacobian on a grid (the local volume ratio, moving over fixed).
  ``J <= 0`` is folding (the map is not invertible there: the result is invalid); ``J`` outside
  ``[0.5, 2]`` in soft tissue is suspicious (the range of ``dose_painting.md`` §5.4). Verdict: ``"fail"``
  with any folding voxel in the evaluated region, ``"review"`` when more than ``max_outside_fraction`` of
  it lies outside the range, else ``"pass"``. J is computed here with central differences *in physical
  space* (direction cosines honoured); SimpleITK's ``DisplacementFieldJacobianDeterminant`` differentiates
  along the index axes only and is wrong on oblique grids.
* **Mask propagation** (:func:`propagate_mask`): nearest neighbour, or (default) through the signed
  distance map: the symmetric signed Euclidean distance (mm; negative inside, zero on the voxel faces
  between inside and outside) is interpolated linearly through ``T`` and thresholded at 0, which gives
  smoother propagated contours than nearest neighbour, and identical ones under the identity.
* **Landmark QA** (:func:`target_registration_error`): TRE = ``|T(p_fixed) - p_moving|`` per landmark
  (TG-132: mean TRE at most about the voxel size, <= 2 mm).

Reproducibility: the metric samples are drawn with a seed (default 1; ``None`` = from the wall clock).
SimpleITK treats seed 0 as "wall clock", so 0 is refused. The multi-threaded metric sums can still differ
in the last digits between runs on different thread counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import GeometryError, InputError, ProcessingError
from ..imaging.filters import gaussian_blur
from ..imaging.image import (
    Units,
    get_frame_of_reference,
    get_units,
    image_from_array,
    require_binary_mask,
    sampling_grid,
    set_frame_of_reference,
)
from ..imaging.io import atomic_path

#: Registration modes (the ``petdp register --mode`` choices).
MODES = ("rigid", "bspline")
#: Similarity metrics. ``mattes``: Mattes mutual information (any modalities); ``mean_squares``: mean squared
#: intensity difference (same modality and calibration, e.g. CT HU); ``correlation``: normalised correlation.
METRICS = ("mattes", "mean_squares", "correlation")
#: Initialisations of the rigid registration.
INITIALISATIONS = ("geometry", "moments", "none")
#: Transform file suffixes :func:`write_transform` and :func:`read_transform` accept (HDF5 or ITK text).
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")
#: The Jacobian-determinant range outside which soft tissue is suspicious (``dose_painting.md`` §5.4).
JACOBIAN_RANGE = (0.5, 2.0)
#: Mask propagation methods.
PROPAGATION_METHODS = ("distance", "nearest")

_DEFAULT_SEED = 1

#: ``callback(level, iteration, metric_value)`` of :func:`register_rigid` / :func:`register_bspline`, called after
#: every optimiser iteration; returning ``False`` stops the registration (:class:`RegistrationCancelled`).
IterationCallback = Callable[[int, int, float], "bool | None"]


class RegistrationCancelled(ProcessingError):
    """The caller's ``iteration_callback`` asked to stop; no result is returned."""


# --------------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JacobianQA:
    """Jacobian-determinant QA of a transform (see :func:`jacobian_qa`).

    Attributes
    ----------
    minimum, maximum, mean : of J over the evaluated voxels (dimensionless; J = local volume ratio
        moving / fixed).
    folding_fraction : fraction of the evaluated voxels with J <= 0 (folding; invalid).
    outside_range_fraction : fraction with J < ``lower`` or J > ``upper`` (folding included).
    lower, upper : the range (default 0.5 and 2).
    n_voxels : number of evaluated voxels.
    region : what was evaluated (e.g. ``"body mask"``, ``"whole grid"``).
    grid_spacing_mm : spacing (i, j, k) of the grid J was computed on.
    verdict : ``"pass"``, ``"review"`` or ``"fail"``.
    message : one sentence explaining the verdict.
    """

    minimum: float
    maximum: float
    mean: float
    folding_fraction: float
    outside_range_fraction: float
    lower: float
    upper: float
    n_voxels: int
    region: str
    grid_spacing_mm: tuple[float, float, float]
    verdict: str
    message: str


@dataclass(eq=False)
class RegistrationResult:
    """The outcome of :func:`register_rigid` or :func:`register_bspline`.

    Attributes
    ----------
    transform : the SimpleITK transform, **fixed -> moving** (ITK convention, LPS mm): resample the moving
        image onto the fixed grid with it. Rigid: an ``Euler3DTransform`` centred on the fixed image centre.
        B-spline: the ``BSplineTransform`` alone, or ``CompositeTransform([initial, bspline])`` when an initial
        transform was given (the B-spline, defined on the fixed domain, is applied first).
    mode : ``"rigid"`` or ``"bspline"``.
    metric : the similarity metric name (:data:`METRICS`).
    metric_value : the metric at the result, evaluated on the full-resolution images with the finest level's
        random sample set (Mattes MI and correlation: negative, lower is better; mean squares: >= 0, in squared
        intensity units).
    initial_metric_value : the same at the starting transform.
    iterations : optimizer iterations per resolution level, coarse to fine.
    elapsed_s : wall-clock time of the optimisation (s).
    stop_condition : the optimizer's stop message at the finest level.
    parameters : the settings used (JSON-ready).
    jacobian : Jacobian QA on the fixed grid (B-spline only), else ``None``.
    """

    transform: sitk.Transform
    mode: str
    metric: str
    metric_value: float
    initial_metric_value: float
    iterations: tuple[int, ...]
    elapsed_s: float
    stop_condition: str
    parameters: dict[str, Any] = field(default_factory=dict)
    jacobian: JacobianQA | None = None

    @property
    def total_iterations(self) -> int:
        """Iterations summed over the levels."""
        return int(sum(self.iterations))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (everything but the transform object)."""
        out: dict[str, Any] = {
            "mode": self.mode, "convention": "fixed -> moving (ITK; resample moving onto fixed with it)",
            "transform_type": self.transform.GetName(), "metric": self.metric, "metric_value": self.metric_value,
            "initial_metric_value": self.initial_metric_value, "iterations": list(self.iterations),
            "elapsed_s": round(self.elapsed_s, 3), "stop_condition": self.stop_condition,
            "parameters": self.parameters,
        }
        if self.mode == "rigid":
            out["rigid"] = rigid_motion(self.transform)
        if self.jacobian is not None:
            out["jacobian"] = self.jacobian.__dict__.copy()
        return out


@dataclass(eq=False)
class InverseTransform:
    """The inverse of a transform (see :func:`invert_transform`).

    ``transform`` maps moving-space points back to fixed-space points (ITK convention with the roles
    swapped: resample a fixed-space image onto a moving-space grid with it). ``method`` says how it was
    obtained; ``round_trip_max_mm`` and ``round_trip_mean_mm`` are ``|T(T^-1(y)) - y|`` over the grid points
    ``y`` (0 for exact linear inverses).
    """

    transform: sitk.Transform
    method: str
    round_trip_max_mm: float
    round_trip_mean_mm: float
    grid_spacing_mm: tuple[float, float, float] | None = None


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    initial_transform: sitk.Transform | None = None,
    initialization: str = "geometry",
    metric: str = "mattes",
    histogram_bins: int = 50,
    sampling_fraction: float = 0.1,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas_mm: Sequence[float] = (2.0, 1.0, 0.0),
    iterations: int = 200,
    max_step_mm: float = 1.0,
    min_step_mm: float = 1e-4,
    working_spacing_mm: float | None = None,
    seed: int | None = _DEFAULT_SEED,
    iteration_callback: IterationCallback | None = None,
) -> RegistrationResult:
    """Rigid registration (rotation + translation) of ``moving`` onto ``fixed``, any modalities.

    Parameters
    ----------
    fixed, moving : 3D scalar images (any units; cast to float32). Fixed = the reference.
    fixed_mask, moving_mask : optional binary masks (in their image's space, any grid) restricting the metric
        samples, e.g. the body or a region around the tumour.
    initial_transform : a rigid (or translation) transform fixed -> moving to start from; it replaces
        ``initialization``. A non-rigid linear transform is refused.
    initialization : ``"geometry"`` (default: rotation about the fixed image centre, translation aligning the
        image centres; ITK's ``CenteredTransformInitializer`` GEOMETRY mode), ``"moments"`` (aligning the
        intensity centres of mass; meaningless for CT with negative HU), or ``"none"`` (identity, for images
        already in one scanner frame, e.g. two CTs of one course).
    metric : ``"mattes"`` (default; Mattes et al. 2003), ``"mean_squares"`` or ``"correlation"``.
    histogram_bins : Mattes joint-histogram bins (default 50, ITK's usual value).
    sampling_fraction : fraction of the fixed voxels (random, reproducible with ``seed``) used by the metric
        at each level (default 0.1).
    shrink_factors, smoothing_sigmas_mm : the pyramid, coarse to fine: integer shrink factors (voxels) and
        Gaussian smoothing sigmas (mm) per level (defaults (4, 2, 1) and (2, 1, 0) mm).
    iterations : maximum optimizer iterations per level (default 200).
    max_step_mm, min_step_mm : regular-step gradient descent: the initial step and the step at which it stops
        (in the physical-shift scaling, about mm of voxel motion; defaults 1 and 1e-4). The step is halved
        whenever the gradient direction reverses.
    working_spacing_mm : if given, both images (and masks) are first resampled onto isotropic grids of this
        spacing over their own extents, with Gaussian anti-aliasing (FWHM = the new spacing), which speeds up
        registrations of fine images; the transform is in physical space and applies to the originals.
    seed : seed of the random metric samples (int >= 1, default 1); ``None`` = from the wall clock.
    iteration_callback : ``callback(level, iteration, metric_value)`` after every optimiser iteration (level 0 =
        the coarsest; for progress bars); returning ``False`` stops the registration at once with
        :class:`RegistrationCancelled`.

    Returns
    -------
    RegistrationResult with an ``Euler3DTransform`` (fixed -> moving).

    Deviations: the metric samples are drawn once per level (ITKv4), not at every iteration.
    """
    _check_choice("initialization", initialization, INITIALISATIONS)
    _check_choice("metric", metric, METRICS)
    fixed_f, moving_f, fmask, mmask = _prepare(fixed, moving, fixed_mask, moving_mask, working_spacing_mm)
    if initial_transform is not None:
        euler = _as_euler(initial_transform, _centre(fixed_f))
    elif initialization == "none":
        euler = sitk.Euler3DTransform()
        euler.SetCenter(_centre(fixed_f))
    else:
        mode = (sitk.CenteredTransformInitializerFilter.GEOMETRY if initialization == "geometry"
                else sitk.CenteredTransformInitializerFilter.MOMENTS)
        euler = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed_f, moving_f, sitk.Euler3DTransform(),
                                                                         mode))
    levels = _levels(shrink_factors, smoothing_sigmas_mm)
    if iterations < 1:
        raise InputError(f"iterations must be at least 1, got {iterations}")
    if not max_step_mm > 0 or not 0 < min_step_mm < max_step_mm:
        raise InputError(f"need 0 < min_step_mm < max_step_mm, got {min_step_mm} and {max_step_mm}")
    samples = [_check_fraction(sampling_fraction)] * len(levels[0])
    seed_value = _seed(seed)

    def configure(reg: sitk.ImageRegistrationMethod, finest_only: bool = False) -> None:
        _set_metric(reg, metric, histogram_bins, samples[-1:] if finest_only else samples, seed_value, fmask=fmask,
                    mmask=mmask)

    start = sitk.Euler3DTransform(euler)
    reg = sitk.ImageRegistrationMethod()
    configure(reg)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=float(max_step_mm), minStep=float(min_step_mm),
                                                 numberOfIterations=int(iterations), relaxationFactor=0.5,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels[0]))
    reg.SetSmoothingSigmasPerLevel(list(levels[1]))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(euler, inPlace=True)
    counts, stopped = _count_iterations(reg, iteration_callback)
    t0 = time.perf_counter()
    try:
        reg.Execute(fixed_f, moving_f)
    except RuntimeError as exc:
        raise ProcessingError(f"rigid registration failed: {_itk_message(exc)}") from exc
    if stopped:
        raise RegistrationCancelled("rigid registration cancelled")
    elapsed = time.perf_counter() - t0
    result = sitk.Euler3DTransform(euler)
    initial_value = _metric_at(fixed_f, moving_f, start, configure)
    final_value = _metric_at(fixed_f, moving_f, result, configure)
    params = {"initialization": "initial_transform" if initial_transform is not None else initialization,
              "histogram_bins": histogram_bins, "sampling_fraction": sampling_fraction,
              "shrink_factors": list(levels[0]), "smoothing_sigmas_mm": list(levels[1]), "iterations": iterations,
              "max_step_mm": max_step_mm, "min_step_mm": min_step_mm, "working_spacing_mm": working_spacing_mm,
              "seed": seed, "fixed_mask": fixed_mask is not None, "moving_mask": moving_mask is not None,
              "optimizer": "regular-step gradient descent, scales from physical shift"}
    return RegistrationResult(result, "rigid", metric, final_value, initial_value, tuple(counts),
                              elapsed, reg.GetOptimizerStopConditionDescription(), params)


def register_bspline(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    initial_transform: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    grid_spacing_mm: float = 25.0,
    metric: str = "mean_squares",
    histogram_bins: int = 50,
    sampling_fraction: float = 0.1,
    max_samples: int | None = 20000,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas_mm: Sequence[float] = (4.0, 2.0, 1.0),
    iterations: int = 50,
    max_step_mm: float = 2.0,
    min_step_mm: float = 1e-3,
    working_spacing_mm: float | None = None,
    seed: int | None = _DEFAULT_SEED,
    qa_mask: sitk.Image | None = None,
    qa_range: tuple[float, float] = JACOBIAN_RANGE,
    qa_max_outside_fraction: float = 0.0,
    multigrid: bool = True,
    iteration_callback: IterationCallback | None = None,
) -> RegistrationResult:
    """Deformable (cubic B-spline FFD) registration of ``moving`` onto ``fixed`` (CT to CT timepoints).

    Parameters
    ----------
    fixed, moving : 3D scalar images of the same modality and calibration (e.g. CT in HU) with ``metric``
        ``"mean_squares"`` (default); use ``"mattes"`` for differently calibrated images.
    initial_transform : fixed -> moving transform applied after the B-spline (e.g. the result of
        :func:`register_rigid` with ``initialization="none"``); the result is then
        ``CompositeTransform([initial, bspline])``. Without it the B-spline starts from the identity, which is
        right for two CTs of one course in one scanner frame with a few mm of motion.
    fixed_mask, moving_mask : optional binary masks restricting the metric samples.
    grid_spacing_mm : control-point spacing of the B-spline grid at the finest level over the fixed image's
        extent (default 25 mm: deformations of head-and-neck courses vary over centimetres; with no
        bending-energy penalty a finer grid fits noise and real tumour change). With ``multigrid`` the
        coarsest level has ``2^(levels-1)`` times fewer intervals per axis (at least one), so the final
        spacing is close to, not exactly, this value; ``parameters["final_grid_spacing_mm"]`` reports it.
    metric, histogram_bins : as in :func:`register_rigid`.
    sampling_fraction, max_samples : metric samples per level: this fraction of the level's voxels, at most
        ``max_samples`` (default 0.1 and 20000). The cost of one iteration grows with samples x control points
        (ITKv4 evaluates the dense parameter Jacobian), hence the cap. Keep many more samples than control
        points, or the deformation fits the noise of the sample set.
    shrink_factors, smoothing_sigmas_mm : the image pyramid (defaults (4, 2, 1) and (4, 2, 1) mm; the 1 mm
        smoothing at the finest level damps CT noise, which a B-spline without penalty would otherwise fit).
    iterations : maximum iterations per level (default 50; more iterations keep lowering the metric while
        the deformation starts fitting noise, as measured on the digital patient).
    multigrid : refine the control-point grid with the image pyramid (default True: doubles the number of
        intervals per axis at each level, as in SimpleITK's FFD examples); coarse-to-fine grids avoid the
        local minima and the noise fitting of a fine grid started from the identity.
    max_step_mm, min_step_mm : regular-step gradient descent on the control-point displacements (mm): initial
        step (Euclidean norm over all coefficients) and stopping step (defaults 2 and 1e-3).
    working_spacing_mm, seed, iteration_callback : as in :func:`register_rigid`.
    qa_mask : where the Jacobian QA is evaluated (e.g. the body). Default: ``fixed_mask``; else the body from
        the fixed CT (:func:`body_mask_from_ct`) when it records units HU; else the whole fixed grid.
    qa_range, qa_max_outside_fraction : see :func:`jacobian_qa`.

    Returns
    -------
    RegistrationResult with the transform (fixed -> moving) and its Jacobian QA on the fixed grid.
    """
    _check_choice("metric", metric, METRICS)
    if not np.isfinite(grid_spacing_mm) or grid_spacing_mm <= 0:
        raise InputError(f"grid_spacing_mm must be positive, got {grid_spacing_mm!r}")
    if iterations < 1:
        raise InputError(f"iterations must be at least 1, got {iterations}")
    if not max_step_mm > 0 or not 0 < min_step_mm < max_step_mm:
        raise InputError(f"need 0 < min_step_mm < max_step_mm, got {min_step_mm} and {max_step_mm}")
    if initial_transform is not None and not isinstance(initial_transform, sitk.Transform):
        raise InputError("initial_transform must be a SimpleITK transform")
    fixed_f, moving_f, fmask, mmask = _prepare(fixed, moving, fixed_mask, moving_mask, working_spacing_mm)
    levels = _levels(shrink_factors, smoothing_sigmas_mm)
    fraction = _check_fraction(sampling_fraction)
    n_voxels = float(np.prod(fixed_f.GetSize()))
    if fmask is not None:
        n_voxels = float(np.count_nonzero(sitk.GetArrayViewFromImage(fmask)))
    samples = []
    for shrink in levels[0]:
        level_voxels = n_voxels / float(shrink) ** 3
        wanted = fraction * level_voxels
        if max_samples is not None:
            wanted = min(wanted, float(max_samples))
        samples.append(float(min(1.0, max(wanted, 1.0) / level_voxels)))
    seed_value = _seed(seed)
    extent = np.asarray(fixed_f.GetSize()) * np.asarray(fixed_f.GetSpacing())
    refinements = 2 ** (len(levels[0]) - 1) if multigrid else 1
    mesh = [max(1, int(np.rint(e / grid_spacing_mm / refinements))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed_f, mesh, 3)

    def configure(reg: sitk.ImageRegistrationMethod, finest_only: bool = False) -> None:
        _set_metric(reg, metric, histogram_bins, samples[-1:] if finest_only else samples, seed_value, fmask=fmask,
                    mmask=mmask)
        if initial_transform is not None:
            reg.SetMovingInitialTransform(initial_transform)

    reg = sitk.ImageRegistrationMethod()
    configure(reg)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=float(max_step_mm), minStep=float(min_step_mm),
                                                 numberOfIterations=int(iterations), relaxationFactor=0.5,
                                                 gradientMagnitudeTolerance=1e-10)
    reg.SetShrinkFactorsPerLevel(list(levels[0]))
    reg.SetSmoothingSigmasPerLevel(list(levels[1]))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    identity = sitk.BSplineTransform(bspline)
    if multigrid:
        reg.SetInitialTransformAsBSpline(bspline, inPlace=True,
                                         scaleFactors=[2 ** i for i in range(len(levels[0]))])
    else:
        reg.SetInitialTransform(bspline, inPlace=True)
    counts, stopped = _count_iterations(reg, iteration_callback)
    t0 = time.perf_counter()
    try:
        reg.Execute(fixed_f, moving_f)
    except RuntimeError as exc:
        raise ProcessingError(f"B-spline registration failed: {_itk_message(exc)}") from exc
    if stopped:
        raise RegistrationCancelled("B-spline registration cancelled")
    elapsed = time.perf_counter() - t0
    result_bspline = sitk.BSplineTransform(bspline)
    initial_value = _metric_at(fixed_f, moving_f, identity, configure)
    final_value = _metric_at(fixed_f, moving_f, result_bspline, configure)
    if initial_transform is not None:
        transform: sitk.Transform = sitk.CompositeTransform([initial_transform, result_bspline])
    else:
        transform = result_bspline
    region_mask, region = _qa_region(fixed, fixed_mask, qa_mask)
    qa = jacobian_qa(transform, fixed, region_mask, lower=qa_range[0], upper=qa_range[1],
                     max_outside_fraction=qa_max_outside_fraction, region=region)
    final_mesh = [m * refinements for m in mesh]
    params = {"grid_spacing_mm": grid_spacing_mm, "mesh_size": final_mesh, "multigrid": multigrid,
              "final_grid_spacing_mm": [float(e / m) for e, m in zip(extent, final_mesh, strict=True)],
              "control_points": int(len(result_bspline.GetParameters()) // 3),
              "histogram_bins": histogram_bins, "sampling_fraction": sampling_fraction, "max_samples": max_samples,
              "shrink_factors": list(levels[0]), "smoothing_sigmas_mm": list(levels[1]), "iterations": iterations,
              "max_step_mm": max_step_mm, "min_step_mm": min_step_mm, "working_spacing_mm": working_spacing_mm,
              "seed": seed, "initial_transform": None if initial_transform is None else initial_transform.GetName(),
              "fixed_mask": fixed_mask is not None, "moving_mask": moving_mask is not None,
              "optimizer": "regular-step gradient descent on control-point displacements (mm)",
              "regularisation": "none besides the control-point spacing (no bending energy)"}
    return RegistrationResult(transform, "bspline", metric, final_value, initial_value, tuple(counts), elapsed,
                              reg.GetOptimizerStopConditionDescription(), params, qa)


def register(fixed: sitk.Image, moving: sitk.Image, mode: str = "rigid", **options: Any) -> RegistrationResult:
    """Dispatch to :func:`register_rigid` (``mode="rigid"``) or :func:`register_bspline` (``"bspline"``)."""
    _check_choice("mode", mode, MODES)
    return register_rigid(fixed, moving, **options) if mode == "rigid" else register_bspline(fixed, moving,
                                                                                            **options)


def rigid_motion(transform: sitk.Transform, centre: Sequence[float] | None = None) -> dict[str, Any]:
    """Rotation angle (degrees, about the rotation axis) and translation (mm) of a linear transform.

    The translation is the displacement of ``centre`` (default: the transform's own centre, else the
    origin): ``T(c) - c``. For a rigid transform the rotation angle is ``arccos((trace R - 1) / 2)``.
    """
    if not transform.IsLinear():
        raise InputError(f"{transform.GetName()} is not linear; it has no single rotation and translation")
    matrix, offset = _affine(transform)
    if centre is None:
        centre = transform.GetFixedParameters()[:3] if len(transform.GetFixedParameters()) >= 3 else (0, 0, 0)
    c = np.asarray(centre, dtype=float)
    moved = matrix @ c + offset
    angle = float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    return {"rotation_deg": angle, "translation_mm": (moved - c).tolist(), "centre_mm": c.tolist(),
            "matrix": matrix.tolist(), "determinant": float(np.linalg.det(matrix))}


# --------------------------------------------------------------------------------------------------
# Transforms: composition, inversion, files, points
# --------------------------------------------------------------------------------------------------


def compose_transforms(chain: Sequence[sitk.Transform | None] | sitk.Transform | None) -> sitk.Transform:
    """One transform for a chain listed **from the fixed side outwards**.

    ``[T_{0->7}, T_{7->17}]`` gives ``x0 -> T_{7->17}(T_{0->7}(x0))``, built as
    ``sitk.CompositeTransform([T_{7->17}, T_{0->7}])`` (SimpleITK applies the last-added transform first).
    ``None`` entries and an empty chain mean the identity; a single transform is returned as a copy.
    """
    if chain is None:
        return sitk.Transform(3, sitk.sitkIdentity)
    if isinstance(chain, sitk.Transform):
        return _copy_transform(chain)
    items = [t for t in chain if t is not None]
    for t in items:
        if not isinstance(t, sitk.Transform):
            raise InputError(f"a transform chain holds a {type(t).__name__}, not a SimpleITK transform")
        if t.GetDimension() != 3:
            raise InputError(f"a transform of the chain is {t.GetDimension()}D; 3D transforms are needed")
    if not items:
        return sitk.Transform(3, sitk.sitkIdentity)
    if len(items) == 1:
        return _copy_transform(items[0])
    return sitk.CompositeTransform([_copy_transform(t) for t in reversed(items)])


def invert_transform(
    transform: sitk.Transform,
    reference: sitk.Image,
    *,
    spacing_mm: float | None = None,
    max_iterations: int = 50,
    tolerance_mm: float = 0.01,
) -> InverseTransform:
    """The inverse ``T^-1`` (moving -> fixed points) of a fixed -> moving transform.

    * Linear transforms: the exact matrix inverse.
    * Anything else: ``T`` is sampled as a displacement field ``u`` on ``reference`` (a grid in *moving* space,
      e.g. the phase-k CT; optionally coarsened to ``spacing_mm``) and inverted there by ITK's
      ``InvertDisplacementFieldImageFilter`` (fixed-point iteration ``v <- -u(y + v)``, the scheme of Christensen
      & Johnson and of ANTs), with no boundary constraint, then wrapped as a ``DisplacementFieldTransform``. The
      round-trip error ``|T(T^-1(y)) - y|`` is measured at the grid points whose image ``T^-1(y)`` falls
      inside the grid, away from the grid's faces by the largest displacement plus one voxel (there the
      unconstrained inversion has no data beyond the face and extrapolates: a CT whose body reaches the
      field-of-view edge, as every head-and-neck CT does, gave round-trip errors of several mm on the
      boundary slices only, 0.01 mm median), and reported; :class:`ProcessingError` if its maximum exceeds
      1 mm.

    ``reference`` must cover the region where the inverse is needed, and ``T`` must be defined at
    ``T^-1(y)`` (its fixed domain); both are true when the fixed and moving scans cover the same anatomy.
    """
    if transform.IsLinear():
        try:
            inverse = transform.GetInverse()
        except RuntimeError as exc:
            raise InputError(f"the {transform.GetName()} is not invertible ({_itk_message(exc)})") from exc
        return InverseTransform(inverse, "exact inverse of a linear transform", 0.0, 0.0, None)
    grid = sampling_grid(reference, spacing_mm)
    forward = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                                grid.GetSpacing(), grid.GetDirection())
    inverter = sitk.InvertDisplacementFieldImageFilter()
    inverter.SetMaximumNumberOfIterations(int(max_iterations))
    inverter.SetMaxErrorToleranceThreshold(float(tolerance_mm))
    inverter.SetMeanErrorToleranceThreshold(float(tolerance_mm) / 10.0)
    inverter.SetEnforceBoundaryCondition(False)
    field_image = inverter.Execute(forward)
    inverse = sitk.DisplacementFieldTransform(sitk.Image(field_image))
    # Round trip T(T^-1(y)) - y on the grid, where T^-1(y) stays inside the grid (the field's domain).
    round_trip = sitk.TransformToDisplacementField(sitk.CompositeTransform([transform, inverse]),
                                                   sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                                   grid.GetSpacing(), grid.GetDirection())
    error = np.linalg.norm(sitk.GetArrayViewFromImage(round_trip), axis=-1)
    inside = _inside_after(inverse, grid) & _interior(grid, float(np.linalg.norm(
        sitk.GetArrayViewFromImage(forward), axis=-1).max()))
    if not inside.any():
        raise GeometryError("the inverse maps every point of the reference grid outside it; the reference does "
                            "not cover the transform's region")
    err = error[inside]
    result = InverseTransform(inverse, "fixed-point inversion of the displacement field "
                              "(ITK InvertDisplacementFieldImageFilter)", float(err.max()), float(err.mean()),
                              tuple(float(s) for s in grid.GetSpacing()))
    if result.round_trip_max_mm > 1.0:
        raise ProcessingError(f"the inverse transform is inaccurate (round-trip error up to "
                              f"{result.round_trip_max_mm:.2f} mm); the transform may fold, check its Jacobian QA")
    return result


def transform_points(transform: sitk.Transform, points: Iterable[Sequence[float]]) -> np.ndarray:
    """``T(p)`` for each LPS point (mm); returns an (N, 3) array."""
    pts = np.asarray(list(points), dtype=float).reshape(-1, 3)
    return np.array([transform.TransformPoint(p.tolist()) for p in pts]).reshape(-1, 3)


def target_registration_error(transform: sitk.Transform, fixed_points: Iterable[Sequence[float]],
                              moving_points: Iterable[Sequence[float]]) -> np.ndarray:
    """Per-landmark TRE (mm): ``|T(p_fixed) - p_moving|`` for corresponding LPS landmarks (AAPM TG-132)."""
    fixed_pts = np.asarray(list(fixed_points), dtype=float).reshape(-1, 3)
    moving_pts = np.asarray(list(moving_points), dtype=float).reshape(-1, 3)
    if fixed_pts.shape != moving_pts.shape or not len(fixed_pts):
        raise InputError(f"need the same non-zero number of fixed and moving landmarks, got {len(fixed_pts)} and "
                         f"{len(moving_pts)}")
    return np.linalg.norm(transform_points(transform, fixed_pts) - moving_pts, axis=1)


def write_transform(transform: sitk.Transform, path: str | Path) -> Path:
    """Write a transform (fixed -> moving, ITK convention) atomically to ``.h5``/``.hdf5`` or ITK text
    ``.tfm``/``.txt``; Slicer loads either as a transform node (its ``TransformFromParent``).

    Displacement-field transforms need HDF5 (``.h5``): their text form is not portable.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(f"unknown transform format {suffix or '(none)'}; use one of {', '.join(TRANSFORM_SUFFIXES)}",
                         path)
    if suffix in (".tfm", ".txt") and _has_displacement_field(transform):
        raise InputError("a displacement-field transform must be written as HDF5 (.h5)", path)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteTransform(transform, str(tmp))
        except RuntimeError as exc:
            raise ProcessingError(f"{path}: could not write the transform ({_itk_message(exc)})") from exc
    return path


def read_transform(path: str | Path) -> sitk.Transform:
    """Read an ITK transform file (``.h5``, ``.hdf5``, ``.tfm``, ``.txt``), e.g. one saved by Slicer or BRAINSFit.

    The file is taken as ITK/Slicer store it: the resampling direction, fixed -> moving. A composite of one
    transform is unwrapped. Errors name the file (missing, not a transform, not 3D).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such transform file", path)
    if path.is_dir():
        raise InputError("is a folder, not a transform file", path)
    if path.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise InputError(f"is not a transform file (expected {', '.join(TRANSFORM_SUFFIXES)})", path)
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot be read as an ITK transform ({_itk_message(exc)})", path) from exc
    if transform.GetDimension() != 3:
        raise InputError(f"holds a {transform.GetDimension()}D transform; a 3D transform is needed", path)
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() == 0:
            raise InputError("holds an empty composite transform", path)
        if composite.GetNumberOfTransforms() == 1:
            return composite.GetNthTransform(0)
    return transform


def describe_transform(transform: sitk.Transform) -> str:
    """A short description: the transform type (and members of a composite)."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        members = [composite.GetNthTransform(i).GetName() for i in range(composite.GetNumberOfTransforms())]
        return f"CompositeTransform[{', '.join(members)}] (last applied first)"
    return transform.GetName()


# --------------------------------------------------------------------------------------------------
# Jacobian QA
# --------------------------------------------------------------------------------------------------


def jacobian_determinant(transform: sitk.Transform, reference: sitk.Image, *, spacing_mm: float | None = None,
                         max_slab_voxels: int = 2_000_000) -> sitk.Image:
    """Determinant of the spatial Jacobian of ``T`` (fixed -> moving) on the grid of ``reference`` (float32,
    units ``ratio``).

    ``J(x) = det(I + du/dx)`` with ``u = T(x) - x`` sampled on the grid (optionally coarsened to an isotropic
    ``spacing_mm``), derivatives by second-order central differences (one-sided at the grid faces) in
    physical space: index-axis differences divided by the spacing, then mapped through the direction cosines.
    Computed in slabs of at most ``max_slab_voxels`` voxels (about 100 bytes each) to bound memory.
    """
    grid = sampling_grid(reference, spacing_mm)
    size = grid.GetSize()
    # d index_a / d x_m for a displacement sampled at x = origin + D diag(spacing) index.
    inv_ds = np.linalg.inv(np.reshape(grid.GetDirection(), (3, 3)) * np.asarray(grid.GetSpacing(), float)[None, :])
    out = np.empty((size[2], size[1], size[0]), dtype=np.float32)
    nz = size[2]
    slab = max(1, int(max_slab_voxels) // max(1, size[0] * size[1]))
    for start in range(0, nz, slab):
        stop = min(nz, start + slab)
        lo, hi = max(0, start - 1), min(nz, stop + 1)  # one extra slice each side: central differences
        origin = grid.TransformIndexToPhysicalPoint((0, 0, lo))
        u = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, (size[0], size[1], hi - lo), origin, grid.GetSpacing(),
            grid.GetDirection()))  # [k, j, i, component]
        jac = np.zeros((3, 3, *u.shape[:3]), dtype=np.float64)  # jac[c, m] = d T_c / d x_m
        for c in range(3):
            jac[c, c] += 1.0
            for a, axis in enumerate((2, 1, 0)):  # index axes i, j, k are array axes 2, 1, 0
                if u.shape[axis] < 2:
                    continue
                d = np.gradient(u[..., c], axis=axis)
                for m in range(3):
                    if inv_ds[a, m] != 0:
                        jac[c, m] += d * inv_ds[a, m]
        det = (jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
               - jac[0, 1] * (jac[1, 0] * jac[2, 2] - jac[1, 2] * jac[2, 0])
               + jac[0, 2] * (jac[1, 0] * jac[2, 1] - jac[1, 1] * jac[2, 0]))
        out[start:stop] = det[start - lo: start - lo + (stop - start)]
    return image_from_array(out, grid, units=Units.RATIO)


def jacobian_qa(
    transform: sitk.Transform,
    reference: sitk.Image,
    mask: sitk.Image | None = None,
    *,
    lower: float = JACOBIAN_RANGE[0],
    upper: float = JACOBIAN_RANGE[1],
    max_outside_fraction: float = 0.0,
    spacing_mm: float | None = None,
    region: str | None = None,
) -> JacobianQA:
    """Jacobian-determinant QA of ``T`` on ``reference``'s grid, inside ``mask`` (e.g. the body).

    Parameters
    ----------
    transform : fixed -> moving; ``reference`` is a fixed-space grid (the fixed image).
    mask : binary mask (any grid, resampled by nearest neighbour) of the region to evaluate; ``None`` = the
        whole grid.
    lower, upper : the plausible range of J in soft tissue (default 0.5 and 2, ``dose_painting.md`` §5.4 and
        TG-132's advice to inspect large volume changes; a design default, not a validated threshold).
    max_outside_fraction : the largest fraction of evaluated voxels outside the range still reported as
        ``"pass"`` (default 0: any such voxel asks for review).
    spacing_mm : coarsen the QA grid (isotropic) for large images.
    region : the name of the region for the report (default ``"mask"`` or ``"whole grid"``).

    Verdict: ``"fail"`` if any evaluated voxel folds (J <= 0); ``"review"`` if the fraction outside the range
    exceeds ``max_outside_fraction``; else ``"pass"``.
    """
    if not (0 < lower < 1 < upper):
        raise InputError(f"the Jacobian range must satisfy 0 < lower < 1 < upper, got [{lower}, {upper}]")
    if not 0 <= max_outside_fraction < 1:
        raise InputError(f"max_outside_fraction must be in [0, 1), got {max_outside_fraction}")
    jac_image = jacobian_determinant(transform, reference, spacing_mm=spacing_mm)
    jac = sitk.GetArrayViewFromImage(jac_image)
    if mask is not None:
        inside = sitk.GetArrayFromImage(_mask_on(mask, jac_image)) > 0  # a copy: the resampled mask is temporary
        if not inside.any():
            raise InputError("the Jacobian QA mask does not overlap the reference grid")
        name = region or "mask"
    else:
        inside = np.ones(jac.shape, dtype=bool)
        name = region or "whole grid"
    values = jac[inside].astype(np.float64)
    n = int(values.size)
    folding = float(np.count_nonzero(values <= 0)) / n
    outside = float(np.count_nonzero((values < lower) | (values > upper))) / n
    if folding > 0:
        verdict = "fail"
        message = (f"the transform folds (J <= 0) in {100 * folding:.3g}% of the {name}: it is not invertible there "
                   "and must not be used")
    elif outside > max_outside_fraction:
        verdict = "review"
        message = (f"{100 * outside:.3g}% of the {name} has J outside [{lower:g}, {upper:g}] (local volume change "
                   "beyond a factor of 2); inspect those regions before using the result")
    else:
        verdict = "pass"
        message = f"no folding and J within [{lower:g}, {upper:g}] in the {name}"
    return JacobianQA(float(values.min()), float(values.max()), float(values.mean()), folding, outside, float(lower),
                      float(upper), n, name, tuple(float(s) for s in jac_image.GetSpacing()), verdict, message)


def body_mask_from_ct(ct: sitk.Image, threshold_hu: float = -300.0) -> sitk.Image:
    """The patient's body on a CT (uint8 0/1 on the CT grid): the largest connected component above
    ``threshold_hu`` (default -300 HU: between air and fat), with internal air (airway, sinuses) filled slice by
    slice. A heuristic for QA regions, not a contour for planning; the couch may be included if it touches."""
    units = get_units(ct)
    if units not in (None, Units.HU):
        raise InputError(f"body_mask_from_ct needs a CT in HU, got units {units!r}")
    values = sitk.GetArrayViewFromImage(ct)
    above = values > threshold_hu
    labels, n = ndimage.label(above)
    if n == 0:
        raise InputError(f"the CT has no voxel above {threshold_hu:g} HU; is it in HU?")
    sizes = ndimage.sum_labels(np.ones_like(labels, dtype=np.int64), labels, index=np.arange(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    body = ndimage.binary_fill_holes(body)
    for k in range(body.shape[0]):  # per-slice hole filling closes the airway, which opens to the outside in 3D
        body[k] = ndimage.binary_fill_holes(body[k])
    return image_from_array(body, ct)


# --------------------------------------------------------------------------------------------------
# Masks through transforms
# --------------------------------------------------------------------------------------------------


def signed_distance_mm(mask: sitk.Image) -> sitk.Image:
    """Symmetric signed Euclidean distance (mm, float32, units ``mm``) of a binary mask on its own grid.

    Inside voxels hold minus the distance to the nearest outside voxel centre, outside voxels plus the
    distance to the nearest inside voxel centre (exact EDT with the true spacing,
    ``scipy.ndimage.distance_transform_edt``). Between an inside and an outside neighbour the linear
    interpolant crosses zero midway, on the voxel face, so thresholding at ``< 0`` reproduces the mask
    exactly on its own grid.
    """
    inside = require_binary_mask(mask, "mask")
    spacing = tuple(float(s) for s in mask.GetSpacing()[::-1])
    outside_dist = ndimage.distance_transform_edt(~inside, sampling=spacing)
    inside_dist = ndimage.distance_transform_edt(inside, sampling=spacing)
    sdf = np.where(inside, -inside_dist, outside_dist).astype(np.float32)
    return image_from_array(sdf, mask, units=Units.MM)


def propagate_mask(
    mask: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    method: str = "distance",
    allow_empty: bool = False,
    mask_name: str = "mask",
) -> sitk.Image:
    """Carry a binary mask onto ``reference``'s grid through ``transform`` (``reference`` -> mask space).

    ``transform`` follows the resampling convention: it maps points of the reference (output) space into the
    mask's space, so the output is ``mask(T(x))``. With a registration fixed = reference, moving = the mask's
    image, that is the registration's result; to push a *fixed*-space mask into moving space, pass the
    inverse (:func:`invert_transform`). ``None`` = identity, allowed only when the two images do not record
    different DICOM frames of reference.

    ``method``: ``"distance"`` (default) interpolates :func:`signed_distance_mm` linearly and keeps ``< 0``
    (smooth contours, exact under the identity); ``"nearest"`` resamples the labels by nearest neighbour.

    Raises :class:`InputError` for an empty input mask (unless ``allow_empty``) and :class:`GeometryError`
    for different frames of reference without a transform, or when nothing of the mask lands on the grid.
    """
    _check_choice("method", method, PROPAGATION_METHODS)
    inside = require_binary_mask(mask, mask_name, allow_empty=allow_empty)
    if transform is None:
        check_frames_of_reference(mask, reference, mask_name, "reference")
        transform = sitk.Transform(3, sitk.sitkIdentity)
    if not inside.any():
        return image_from_array(np.zeros(sitk.GetArrayViewFromImage(reference).shape[:3], bool), reference)
    if method == "nearest":
        binary = image_from_array(inside, mask)
        out = sitk.Resample(binary, reference, transform, sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
        result = sitk.GetArrayViewFromImage(out) > 0
    else:
        cropped = _crop_to_mask(image_from_array(inside, mask), margin_voxels=3)
        sdf = signed_distance_mm(cropped)
        far = float(np.max(np.asarray(cropped.GetSize()) * np.asarray(cropped.GetSpacing())))
        out = sitk.Resample(sdf, reference, transform, sitk.sitkLinear, far, sitk.sitkFloat32)
        result = sitk.GetArrayViewFromImage(out) < 0
    if not result.any():
        raise GeometryError(f"no voxel of the {mask_name} lands on the reference grid through the transform; "
                            "check the transform direction (reference -> mask space) and the grids")
    propagated = image_from_array(result.copy(), reference)
    return set_frame_of_reference(propagated, get_frame_of_reference(reference))


def check_frames_of_reference(a: sitk.Image, b: sitk.Image, a_name: str = "first image",
                              b_name: str = "second image") -> None:
    """Raise :class:`GeometryError` if both images record DICOM frames of reference and they differ (they can
    then only be combined through a registration transform)."""
    fa, fb = get_frame_of_reference(a), get_frame_of_reference(b)
    if fa and fb and fa != fb:
        raise GeometryError(f"{a_name} and {b_name} are in different DICOM frames of reference ({fa} vs {fb}); "
                            "give the registration transform between them")


def grids_overlap(reference: sitk.Image, image: sitk.Image, transform: sitk.Transform | None = None) -> float:
    """Fraction of ``reference``'s voxels whose image ``T(x)`` lies inside ``image``'s grid (0..1)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.Resample(ones, reference, transform if transform is not None else sitk.Transform(3,
                           sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(inside))) / float(np.prod(reference.GetSize()))


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")


def _check_fraction(value: float) -> float:
    value = float(value)
    if not 0 < value <= 1:
        raise InputError(f"sampling_fraction must be in (0, 1], got {value}")
    return value


def _seed(seed: int | None) -> int:
    if seed is None:
        return int(sitk.sitkWallClock)
    if int(seed) != seed or int(seed) < 1:
        raise InputError(f"seed must be an integer >= 1 (SimpleITK reads 0 as 'seed from the clock'), got {seed!r}")
    return int(seed)


def _levels(shrink_factors: Sequence[int], sigmas: Sequence[float]) -> tuple[list[int], list[float]]:
    shrink = [int(s) for s in shrink_factors]
    sig = [float(s) for s in smoothing_sigmas_mm_checked(sigmas)]
    if not shrink or len(shrink) != len(sig):
        raise InputError(f"give one smoothing sigma per shrink factor (got {len(shrink)} and {len(sig)})")
    if any(s < 1 for s in shrink):
        raise InputError(f"shrink factors must be integers >= 1, got {list(shrink_factors)}")
    return shrink, sig


def smoothing_sigmas_mm_checked(sigmas: Sequence[float]) -> list[float]:
    values = [float(s) for s in sigmas]
    if any(not np.isfinite(s) or s < 0 for s in values):
        raise InputError(f"smoothing sigmas must be >= 0 mm, got {list(sigmas)}")
    return values


def _as_float(image: sitk.Image, what: str) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise InputError(f"the {what} image must be a SimpleITK image")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {what} image must be a 3D scalar image")
    if min(image.GetSize()) < 4:
        raise InputError(f"the {what} image is too small to register (size {image.GetSize()})")
    out = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(out)
    if not np.all(np.isfinite(values)):
        raise InputError(f"the {what} image holds NaN or infinite values")
    if float(values.max()) == float(values.min()):
        raise InputError(f"the {what} image is constant; there is nothing to register")
    return out


def _prepare(fixed, moving, fixed_mask, moving_mask, working_spacing_mm):
    fixed_f = _as_float(fixed, "fixed")
    moving_f = _as_float(moving, "moving")
    fmask = _metric_mask(fixed_mask, "fixed mask")
    mmask = _metric_mask(moving_mask, "moving mask")
    if working_spacing_mm is not None:
        spacing = float(working_spacing_mm)
        if not np.isfinite(spacing) or spacing <= 0:
            raise InputError(f"working_spacing_mm must be positive, got {working_spacing_mm!r}")
        fixed_f = _to_working_grid(fixed_f, spacing)
        moving_f = _to_working_grid(moving_f, spacing)
        if fmask is not None:
            fmask = _mask_on(fmask, fixed_f)
        if mmask is not None:
            mmask = _mask_on(mmask, moving_f)
    if fmask is not None and not np.any(sitk.GetArrayFromImage(_mask_on(fmask, fixed_f))):
        raise InputError("the fixed mask does not overlap the fixed image")
    return fixed_f, moving_f, fmask, mmask


def _metric_mask(mask: sitk.Image | None, what: str) -> sitk.Image | None:
    if mask is None:
        return None
    inside = require_binary_mask(mask, what)
    return image_from_array(inside, mask)


def _to_working_grid(image: sitk.Image, spacing: float) -> sitk.Image:
    old = np.asarray(image.GetSpacing(), dtype=float)
    extent = old * np.asarray(image.GetSize())
    size = [max(4, int(np.rint(e / spacing))) for e in extent]
    # Keep the grid centred on the original one.
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    direction = np.reshape(image.GetDirection(), (3, 3))
    origin = centre - direction @ (np.asarray([(s - 1) / 2 for s in size]) * spacing)
    # Anti-aliasing: a Gaussian whose FWHM^2 adds to the old spacing^2 to give the new spacing^2 (per axis).
    fwhm = [max(0.0, spacing ** 2 - o ** 2) ** 0.5 for o in old]
    smoothed = gaussian_blur(image, fwhm)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(image.GetDirection())
    low = float(np.min(sitk.GetArrayViewFromImage(image)))
    return sitk.Resample(smoothed, grid, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, low, sitk.sitkFloat32)


def _mask_on(mask: sitk.Image, grid: sitk.Image) -> sitk.Image:
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    return sitk.Resample(binary, grid, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0.0,
                         sitk.sitkUInt8)


def _set_metric(reg, metric, bins, samples, seed, *, fmask, mmask) -> None:
    if metric == "mattes":
        if int(bins) < 4:
            raise InputError(f"histogram_bins must be at least 4, got {bins}")
        reg.SetMetricAsMattesMutualInformation(int(bins))
    elif metric == "mean_squares":
        reg.SetMetricAsMeanSquares()
    else:
        reg.SetMetricAsCorrelation()
    if all(s >= 1.0 for s in samples):
        reg.SetMetricSamplingStrategy(reg.NONE)
    else:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentagePerLevel([float(s) for s in samples], seed)
    if fmask is not None:
        reg.SetMetricFixedMask(fmask)
    if mmask is not None:
        reg.SetMetricMovingMask(mmask)


def _metric_at(fixed, moving, transform, configure) -> float:
    """The metric at ``transform`` on the full-resolution images with the finest level's sample set."""
    reg = sitk.ImageRegistrationMethod()
    configure(reg, finest_only=True)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(_copy_transform(transform), inPlace=False)
    try:
        return float(reg.MetricEvaluate(fixed, moving))
    except RuntimeError as exc:
        raise ProcessingError(f"the metric cannot be evaluated ({_itk_message(exc)}); do the images overlap?") from exc


def _count_iterations(reg: sitk.ImageRegistrationMethod, callback: IterationCallback | None = None
                      ) -> tuple[list[int], list[bool]]:
    """Iterations per level (filled while ``reg`` runs) and a flag set when ``callback`` asked to stop."""
    counts: list[int] = []
    stopped: list[bool] = []
    reg.AddCommand(sitk.sitkMultiResolutionIterationEvent, lambda: counts.append(0))

    def step() -> None:
        if not counts:
            counts.append(0)
        counts[-1] += 1
        if callback is not None and not stopped and callback(len(counts) - 1, counts[-1],
                                                             float(reg.GetMetricValue())) is False:
            stopped.append(True)
            reg.StopRegistration()

    reg.AddCommand(sitk.sitkIterationEvent, step)
    return counts, stopped


def _centre(image: sitk.Image) -> tuple[float, float, float]:
    return image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()])


def _affine(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.empty((3, 3))
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:, axis] = np.asarray(transform.TransformPoint(unit)) - origin
    return matrix, origin


def _as_euler(transform: sitk.Transform, centre: Sequence[float]) -> sitk.Euler3DTransform:
    if not isinstance(transform, sitk.Transform) or not transform.IsLinear():
        raise InputError("the initial transform of a rigid registration must be linear (rigid)")
    matrix, offset = _affine(transform)
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-5) or np.linalg.det(matrix) <= 0:
        raise InputError("the initial transform of a rigid registration must be a rotation plus translation "
                         "(its matrix is not orthonormal)")
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(float(c) for c in centre))
    euler.SetMatrix(matrix.ravel().tolist(), 1e-5)
    c = np.asarray(centre, dtype=float)
    euler.SetTranslation((matrix @ c + offset - c).tolist())
    return euler


def _copy_transform(transform: sitk.Transform) -> sitk.Transform:
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        return sitk.CompositeTransform([_copy_transform(composite.GetNthTransform(i))
                                        for i in range(composite.GetNumberOfTransforms())])
    return transform.__class__(transform) if type(transform) is not sitk.Transform else sitk.Transform(transform)


def _has_displacement_field(transform: sitk.Transform) -> bool:
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        return any(_has_displacement_field(composite.GetNthTransform(i))
                   for i in range(composite.GetNumberOfTransforms()))
    return transform.GetName() == "DisplacementFieldTransform"


def _interior(grid: sitk.Image, margin_mm: float) -> np.ndarray:
    """Voxels of ``grid`` at least ``margin_mm`` plus one voxel from its faces (all of them if none would be)."""
    shape = grid.GetSize()[::-1]
    widths = [int(np.ceil(margin_mm / s)) + 1 for s in grid.GetSpacing()[::-1]]
    interior = np.zeros(shape, dtype=bool)
    if all(2 * w < n for w, n in zip(widths, shape, strict=True)):
        interior[tuple(slice(w, n - w) for w, n in zip(widths, shape, strict=True))] = True
        return interior
    return ~interior


def _inside_after(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    ones = sitk.Image(grid.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(grid)
    mapped = sitk.Resample(ones, grid, transform, sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(mapped) > 0


def _crop_to_mask(mask: sitk.Image, margin_voxels: int) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(array)
    lo = [max(0, int(a.min()) - margin_voxels) for a in nz]  # k, j, i
    hi = [min(n, int(a.max()) + margin_voxels + 1) for a, n in zip(nz, array.shape, strict=True)]
    if all(lo_ == 0 for lo_ in lo) and all(h == n for h, n in zip(hi, array.shape, strict=True)):
        # The mask touches the grid border: pad so the distance map sees outside around it.
        padded = sitk.ConstantPad(mask, [margin_voxels] * 3, [margin_voxels] * 3, 0)
        return padded
    cropped = sitk.RegionOfInterest(mask, [h - lo_ for lo_, h in zip(lo[::-1], hi[::-1], strict=True)], lo[::-1])
    return sitk.ConstantPad(cropped, [margin_voxels] * 3, [margin_voxels] * 3, 0)


def _qa_region(fixed: sitk.Image, fixed_mask: sitk.Image | None, qa_mask: sitk.Image | None):
    if qa_mask is not None:
        return qa_mask, "QA mask"
    if fixed_mask is not None:
        return fixed_mask, "fixed mask"
    if get_units(fixed) == Units.HU:
        try:
            return body_mask_from_ct(fixed), "body (CT > -300 HU)"
        except InputError:
            pass
    return None, "whole fixed grid"


def _itk_message(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ITK ERROR" in ln or "Description" in ln]
    return (useful or lines or [type(exc).__name__])[-1][:300]


__all__ = [
    "INITIALISATIONS", "JACOBIAN_RANGE", "METRICS", "MODES", "PROPAGATION_METHODS", "TRANSFORM_SUFFIXES",
    "InverseTransform", "JacobianQA", "RegistrationResult", "body_mask_from_ct", "check_frames_of_reference",
    "compose_transforms", "describe_transform", "grids_overlap", "invert_transform", "jacobian_determinant",
    "jacobian_qa", "propagate_mask", "read_transform", "register", "register_bspline", "register_rigid",
    "rigid_motion", "signed_distance_mm", "target_registration_error", "transform_points",
    "write_transform",
]
