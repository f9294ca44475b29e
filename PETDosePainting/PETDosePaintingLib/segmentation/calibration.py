"""Calibration of the adaptive and iterative threshold constants for one scanner protocol (note §3, generic).

Procedure (research note §3, "generic calibration"):

1. image homogeneous spheres of known volume (default 0.5-100 mL) at known sphere-to-background ratios
   (default SBR 2-16) with the clinical protocol: an *imager* turns a fine-grid activity map into the
   reconstructed PET (:data:`Imager`);
2. for each sphere find the threshold ``T*`` that reproduces its true volume (the seed's connected
   component, cavities filled, exactly as the methods segment), by bisection on the voxel count;
3. measure on the same image what each method uses (SUVmax, SUV70 / I_mean70, the shell background, the
   mean inside the contour) and regress ``T*`` against each method's predictor:

   ============  ==========================================  ===========================================
   method        model fitted                                 constants (method keyword parameters)
   ============  ==========================================  ===========================================
   ``nestle``    ``T* - BG = beta * I_mean70``                ``beta``
   ``schaefer``  ``T* = a * SUV70 + b * BG``                  ``schaefer_a``, ``schaefer_b``
   ``daisne``    ``T*/SUVmax = a + b / SBR``, SBR = max/BG    ``daisne_a``, ``daisne_b``
   ``black``     ``T* = slope * SUV_mean(T*) + intercept``    ``black_slope``, ``black_intercept`` (SUV)
   ``vandalen``  ``T* - BG = f * (SUV_mean(T*) - BG)``        ``fraction``
   ``iterative`` measured ``t*(V) = (T* - BG)/(max - BG)``,   ``lut_volumes_ml``, ``lut_fractions``
                 averaged per volume (Jentzen's original       (and, optionally, the effective FWHM that
                 threshold-volume curve)                       best fits the model LUT: ``fwhm_mm``)
   ============  ==========================================  ===========================================

   All fits are ordinary least squares over every sphere; ``SUV_mean(T*)`` is the mean of the uptake
   voxels at ``T*`` (the fixed point the iterative methods converge to).
4. check: each method is run with its fitted constants on every calibration sphere and the volume error
   is recorded (``MethodCalibration.volume_errors_percent``), so the fit's quality is visible in
   volume terms, not only as threshold residuals.

The result (:class:`CalibrationResult`) is a dataclass that writes to and reads from JSON
(:meth:`CalibrationResult.write`, :func:`load_calibration`); ``parameters_for(method)`` returns the
keyword parameters to pass to the method (``run_method(name, ..., **cal.parameters_for(name))``).

Imaging model. The default imager (:class:`GaussianImager`) is a **stand-in**: a Gaussian blur of a given
FWHM on the fine grid, averaging into the PET voxels, and Gaussian noise whose variance is proportional to
the local value (Poisson-like, white). It has no reconstruction artefacts (no Gibbs overshoot, no
non-linear OSEM convergence, no correlated noise), so constants fitted with it describe an idealised
scanner; plug in the project's PET simulation (:func:`scanner_imager`, which wraps
:func:`PETDosePaintingLib.phantom.pet_scanner.simulate_pet`) or real phantom scans for clinical use.
Constants fitted on spheres are only as good as the lesions resemble homogeneous spheres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import optimize

from ..errors import InputError, PETDPError
from ..imaging.filters import gaussian_blur
from ..imaging.image import Units, image_from_array, make_grid, same_geometry, set_units
from ..imaging.io import read_json, write_json
from ..phantom.shapes import sphere_fraction
from .iterative import sphere_threshold_fraction
from .thresholds import LesionContext, locate_lesion

#: ``imager(activity, pet_grid, rng) -> pet``: ``activity`` is the fine-grid activity (SimpleITK, SUV
#: units), ``pet_grid`` the output geometry (an empty image; its voxels nest ``factor`` x ``factor`` x
#: ``factor`` fine voxels exactly, identity direction) and the returned image must have exactly that
#: geometry.
Imager = Callable[[sitk.Image, sitk.Image, np.random.Generator], sitk.Image]

SCHEMA = "petdp-threshold-calibration/1"
CALIBRATED_METHODS = ("nestle", "schaefer", "daisne", "black", "vandalen", "iterative")


# --------------------------------------------------------------------------------------------------
# Imagers


def block_average(activity: sitk.Image, pet_grid: sitk.Image) -> np.ndarray:
    """Average fine voxels into the PET voxels that contain them (grids must nest exactly); ``[k, j, i]``."""
    fine = np.asarray(activity.GetSpacing(), float)
    coarse = np.asarray(pet_grid.GetSpacing(), float)
    factor = np.rint(coarse / fine).astype(int)
    lo_f = np.asarray(activity.GetOrigin()) - fine / 2
    lo_p = np.asarray(pet_grid.GetOrigin()) - coarse / 2
    start = np.rint((lo_p - lo_f) / fine).astype(int)
    if (np.any(factor < 1) or not np.allclose(factor * fine, coarse, atol=1e-4)
            or not np.allclose(start * fine, lo_p - lo_f, atol=1e-4) or np.any(start < 0)):
        raise InputError("the PET grid does not nest the activity grid (whole fine voxels per PET voxel)")
    size = np.asarray(pet_grid.GetSize())
    if np.any(start + size * factor > np.asarray(activity.GetSize())):
        raise InputError("the PET grid extends beyond the activity grid")
    values = sitk.GetArrayFromImage(activity).astype(np.float64)
    fk, fj, fi = factor[::-1]
    sk, sj, si = start[::-1]
    nk, nj, ni = size[::-1]
    block = values[sk:sk + nk * fk, sj:sj + nj * fj, si:si + ni * fi]
    return block.reshape(nk, fk, nj, fj, ni, fi).mean(axis=(1, 3, 5))


@dataclass(frozen=True)
class GaussianImager:
    """Stand-in imaging model: Gaussian blur (``fwhm_mm``), voxel averaging, Poisson-like Gaussian noise.

    ``noise_cov`` is the noise standard deviation relative to the value at ``reference_level`` (default
    0.10 at SUV 1, a typical 10-15 % background COV, note §10.2); elsewhere the variance scales with the
    value (``sd = noise_cov * sqrt(value * reference_level)``). White noise (real PET noise is spatially
    correlated). ``noise_cov = 0``: noiseless.
    """

    fwhm_mm: float = 6.0
    noise_cov: float = 0.10
    reference_level: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fwhm_mm) and self.fwhm_mm > 0):
            raise InputError(f"fwhm_mm must be a positive length in mm, got {self.fwhm_mm!r}")
        if not (np.isfinite(self.noise_cov) and self.noise_cov >= 0):
            raise InputError(f"noise_cov must be >= 0, got {self.noise_cov!r}")
        if not (np.isfinite(self.reference_level) and self.reference_level > 0):
            raise InputError(f"reference_level must be positive, got {self.reference_level!r}")

    @property
    def description(self) -> str:
        """How the spheres were imaged, for the calibration record."""
        return (f"stand-in: Gaussian blur FWHM {self.fwhm_mm:g} mm, voxel averaging, white Poisson-like noise "
                f"(COV {self.noise_cov:g} at {self.reference_level:g})")

    def __call__(self, activity: sitk.Image, pet_grid: sitk.Image, rng: np.random.Generator) -> sitk.Image:
        blurred = gaussian_blur(sitk.Cast(activity, sitk.sitkFloat32), self.fwhm_mm)
        values = block_average(blurred, pet_grid)
        if self.noise_cov > 0:
            sd = self.noise_cov * np.sqrt(np.maximum(values, 0.0) * self.reference_level)
            values = values + sd * rng.standard_normal(values.shape)
        out = image_from_array(values.astype(np.float32), pet_grid)
        for key in activity.GetMetaDataKeys():
            out.SetMetaData(key, activity.GetMetaData(key))
        return out


def scanner_imager(config: Any = None, mu_per_cm: float = 0.096) -> Imager:
    """An imager using the project's PET simulation (``phantom.pet_scanner.simulate_pet``).

    The sphere phantom's box is taken as uniform water (``mu_per_cm`` 0.096 /cm at 511 keV). ``config`` is a
    ``ScannerConfig`` (default: the simulator's defaults). Import is lazy; the calibration's grids already
    satisfy the simulator's nesting rules (identity direction, whole fine voxels per PET voxel).
    """
    from ..phantom.pet_scanner import MU_UNITS, simulate_pet

    def imager(activity: sitk.Image, pet_grid: sitk.Image, rng: np.random.Generator) -> sitk.Image:
        mu = image_from_array(np.full(sitk.GetArrayViewFromImage(activity).shape, mu_per_cm, np.float32), activity,
                              units=MU_UNITS)
        return simulate_pet(activity, mu, pet_grid, config, rng).image

    imager.description = f"phantom.pet_scanner.simulate_pet, water box mu {mu_per_cm:g}/cm, config {config!r}"  # type: ignore[attr-defined]
    return imager


# --------------------------------------------------------------------------------------------------
# Result types


@dataclass
class SphereMeasurement:
    """What was measured on one imaged calibration sphere (values in SUV)."""

    volume_ml: float  #: true volume
    radius_mm: float
    sbr: float  #: true sphere-to-background activity ratio
    repetition: int
    suv_max: float
    suv70: float  #: mean of the connected voxels >= 70 % of SUVmax
    background: float  #: shell background (median), as the methods measure it
    optimal_threshold: float  #: T* reproducing the true volume
    optimal_volume_ml: float  #: the volume at T* (one voxel of quantisation)
    mean_at_optimum: float  #: mean of the uptake voxels at T*

    @property
    def optimal_fraction_of_max(self) -> float:
        """``T* / SUVmax``."""
        return self.optimal_threshold / self.suv_max

    @property
    def optimal_contrast_fraction(self) -> float:
        """``(T* - BG) / (SUVmax - BG)``."""
        return (self.optimal_threshold - self.background) / (self.suv_max - self.background)


@dataclass
class MethodCalibration:
    """Fitted constants of one method and how well they fit.

    ``threshold_residuals`` are predicted minus optimal thresholds (SUV), one per sphere in the order of
    ``CalibrationResult.spheres`` (for ``iterative``: measured minus tabulated contrast fractions).
    ``volume_errors_percent`` are the volume errors of the method run with the fitted constants on each
    sphere (``None`` where it failed, with the reason in ``failures``).
    """

    method: str
    constants: dict[str, Any]
    model: str
    threshold_residuals: list[float]
    residual_rms: float
    residual_max: float
    volume_errors_percent: list[float | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def volume_error_rms_percent(self) -> float | None:
        """RMS of the volume errors of the successful runs (``None`` if none ran)."""
        errors = [e for e in self.volume_errors_percent if e is not None]
        return float(np.sqrt(np.mean(np.square(errors)))) if errors else None


@dataclass
class CalibrationResult:
    """Constants of the adaptive and iterative thresholds for one protocol, with the measurements behind them."""

    protocol: dict[str, Any]
    spheres: list[SphereMeasurement]
    methods: dict[str, MethodCalibration]
    fitted_fwhm_mm: float | None = None
    fwhm_residual_rms: float | None = None
    schema: str = SCHEMA

    def parameters_for(self, method: str, form: str = "table") -> dict[str, Any]:
        """Keyword parameters to pass to the method ``method`` (registry name).

        For ``iterative``, ``form="table"`` (default) gives the measured t(V) table, ``form="model"`` the
        fitted effective FWHM for the model LUT.
        """
        if method == "iterative" and form == "model":
            if self.fitted_fwhm_mm is None:
                raise InputError("this calibration has no fitted FWHM (it was run with fit_fwhm=False)")
            return {"fwhm_mm": self.fitted_fwhm_mm}
        if method not in self.methods:
            raise InputError(f"no calibrated constants for method {method!r} (calibrated: {', '.join(self.methods)})")
        return dict(self.methods[method].constants)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (derived figures included for readers; ignored when loading)."""
        out = asdict(self)
        for sphere, record in zip(self.spheres, out["spheres"], strict=True):
            record["optimal_fraction_of_max"] = sphere.optimal_fraction_of_max
            record["optimal_contrast_fraction"] = sphere.optimal_contrast_fraction
        for name, record in out["methods"].items():
            record["volume_error_rms_percent"] = self.methods[name].volume_error_rms_percent
        return out

    def write(self, path: str | Path) -> Path:
        """Write as JSON (atomically)."""
        return write_json(self.to_dict(), path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationResult:
        """Inverse of :meth:`to_dict`; :class:`InputError` if the data is not a calibration of this schema."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise InputError(f"not a threshold calibration (expected schema {SCHEMA!r})")
        try:
            sphere_keys = set(SphereMeasurement.__dataclass_fields__)
            method_keys = set(MethodCalibration.__dataclass_fields__)
            spheres = [SphereMeasurement(**{k: v for k, v in s.items() if k in sphere_keys}) for s in data["spheres"]]
            methods = {name: MethodCalibration(**{k: v for k, v in m.items() if k in method_keys})
                       for name, m in data["methods"].items()}
            return cls(protocol=data["protocol"], spheres=spheres, methods=methods,
                       fitted_fwhm_mm=data.get("fitted_fwhm_mm"), fwhm_residual_rms=data.get("fwhm_residual_rms"))
        except (KeyError, TypeError) as exc:
            raise InputError(f"calibration data is incomplete or malformed ({exc})") from None


def load_calibration(path: str | Path) -> CalibrationResult:
    """Read a calibration written by :meth:`CalibrationResult.write`."""
    try:
        return CalibrationResult.from_dict(read_json(path))
    except InputError as exc:
        if exc.path is not None:
            raise
        raise InputError(str(exc), path) from None


# --------------------------------------------------------------------------------------------------
# Phantoms and measurements


@dataclass
class _Sphere:
    pet: sitk.Image
    centre: tuple[float, float, float]
    radius_mm: float
    sbr: float
    repetition: int
    work_radius_mm: float


def _sphere_phantom(radius_mm: float, sbr: float, *, pet_voxel_mm: np.ndarray, fine_factor: int, fwhm_mm: float,
                    background_suv: float, bg_outer_mm: float, offset: np.ndarray
                    ) -> tuple[sitk.Image, sitk.Image, float]:
    """Fine activity (SUV), the PET grid nesting it, and the working radius for the methods."""
    work = radius_mm + 2.0 * fwhm_mm + bg_outer_mm + 2.0 * float(pet_voxel_mm.max()) + 5.0
    half = np.ceil(work / pet_voxel_mm).astype(int) + 1
    size = 2 * half + 1
    pet_grid = make_grid(size, pet_voxel_mm, origin=-half * pet_voxel_mm)
    fine_spacing = pet_voxel_mm / fine_factor
    fine_origin = -half * pet_voxel_mm - pet_voxel_mm / 2 + fine_spacing / 2
    fine = make_grid(size * fine_factor, fine_spacing, origin=fine_origin)
    fraction = sphere_fraction(fine, offset, radius_mm)
    activity = image_from_array((background_suv * (1.0 + (sbr - 1.0) * fraction)).astype(np.float32), fine,
                                units=Units.SUV_BW)
    return activity, pet_grid, work


def _volume_ml(ctx: LesionContext, threshold: float) -> float:
    try:
        component = ctx.segment(threshold, True)
    except PETDPError:  # nothing near the sphere's centre is above the threshold
        return 0.0
    return float(component.sum()) * float(np.prod(ctx.spacing_kji)) / 1000.0


def _optimal_threshold(ctx: LesionContext, volume_ml: float) -> tuple[float, float]:
    """The threshold at which the seed's filled component crosses ``volume_ml`` (bisection), and its volume."""
    lo = float(ctx.sub[ctx.region.inside].min())
    hi = ctx.suv_max
    if _volume_ml(ctx, lo) < volume_ml:
        raise PETDPError("the whole uptake hill is smaller than the sphere: enlarge the phantom")
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if _volume_ml(ctx, mid) >= volume_ml:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-7 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi), _volume_ml(ctx, lo)


def _measure(sphere: _Sphere, volume_ml: float) -> SphereMeasurement:
    ctx = locate_lesion(sphere.pet, sphere.centre, roi_radius_mm=sphere.work_radius_mm)
    bg = ctx.background(None, statistic="median", inner_mm=10.0, outer_mm=20.0)
    suv70, _ = ctx.core_mean(0.7)
    t_opt, v_opt = _optimal_threshold(ctx, volume_ml)
    uptake = ctx.segment(t_opt, holes=False)
    return SphereMeasurement(volume_ml=volume_ml, radius_mm=sphere.radius_mm, sbr=sphere.sbr,
                             repetition=sphere.repetition, suv_max=ctx.suv_max, suv70=suv70, background=bg.value,
                             optimal_threshold=t_opt, optimal_volume_ml=v_opt,
                             mean_at_optimum=float(ctx.sub[uptake].mean()))


# --------------------------------------------------------------------------------------------------
# Fits


def _lstsq(design: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coef, design @ coef - target


def _method_fit(name: str, constants: dict[str, Any], model: str, residuals: np.ndarray) -> MethodCalibration:
    return MethodCalibration(name, constants, model, [float(r) for r in residuals],
                             float(np.sqrt(np.mean(residuals**2))), float(np.max(np.abs(residuals))))


def _fit_methods(spheres: list[SphereMeasurement], methods: Sequence[str]) -> dict[str, MethodCalibration]:
    t = np.array([s.optimal_threshold for s in spheres])
    bg = np.array([s.background for s in spheres])
    vmax = np.array([s.suv_max for s in spheres])
    s70 = np.array([s.suv70 for s in spheres])
    mean = np.array([s.mean_at_optimum for s in spheres])
    out: dict[str, MethodCalibration] = {}
    if "nestle" in methods:
        (beta,), res = _lstsq(s70[:, None], t - bg)
        out["nestle"] = _method_fit("nestle", {"beta": float(beta)}, "T* - BG = beta * I_mean70", res)
    if "schaefer" in methods:
        (a, b), res = _lstsq(np.column_stack([s70, bg]), t)
        out["schaefer"] = _method_fit("schaefer", {"schaefer_a": float(a), "schaefer_b": float(b)},
                                      "T* = a * SUV70 + b * BG", res)
    if "daisne" in methods:
        (a, b), res = _lstsq(np.column_stack([np.ones_like(t), bg / vmax]), t / vmax)
        out["daisne"] = _method_fit("daisne", {"daisne_a": float(a), "daisne_b": float(b)},
                                    "T*/SUVmax = a + b / SBR, SBR = SUVmax / BG", res * vmax)
    if "black" in methods:
        (slope, intercept), res = _lstsq(np.column_stack([mean, np.ones_like(t)]), t)
        out["black"] = _method_fit("black", {"black_slope": float(slope), "black_intercept": float(intercept)},
                                   "T* = slope * SUV_mean(T*) + intercept", res)
    if "vandalen" in methods:
        (f,), res = _lstsq((mean - bg)[:, None], t - bg)
        out["vandalen"] = _method_fit("vandalen", {"fraction": float(f)}, "T* - BG = f * (SUV_mean(T*) - BG)", res)
    if "iterative" in methods:
        volumes = np.array([s.volume_ml for s in spheres])
        measured = np.array([s.optimal_contrast_fraction for s in spheres])
        table_v = np.unique(volumes)
        if table_v.size < 2:
            raise InputError("the ITM table needs spheres of at least two different volumes")
        table_t = np.array([measured[volumes == v].mean() for v in table_v])
        if not np.all((table_t > 0) & (table_t < 1)):
            raise PETDPError("a measured ITM fraction is outside 0-1; the calibration images are not usable")
        res = measured - np.interp(np.log(volumes), np.log(table_v), table_t)
        out["iterative"] = _method_fit(
            "iterative", {"lut_volumes_ml": [float(v) for v in table_v], "lut_fractions": [float(x) for x in table_t]},
            "measured t*(V) = (T* - BG)/(SUVmax - BG), mean over SBR and repetitions per volume", res)
    return out


def _fit_fwhm(spheres: list[SphereMeasurement], offsets: list[tuple[float, float, float]],
              spacing_xyz: Sequence[float], bounds: tuple[float, float]) -> tuple[float, float]:
    """Effective FWHM whose model fractions best match the measured ones (least squares over the spheres).

    Each sphere is modelled at its own sub-voxel position, so the grid quantisation of the measured
    fractions is reproduced rather than averaged away (it would otherwise dominate: large spheres' fractions
    depend only weakly on the FWHM).
    """
    measured = np.array([s.optimal_contrast_fraction for s in spheres])

    def cost(fwhm: float) -> float:
        model = np.array([sphere_threshold_fraction(s.radius_mm, fwhm, spacing_xyz, offset)
                          for s, offset in zip(spheres, offsets, strict=True)])
        return float(np.sum((measured - model) ** 2))

    best = optimize.minimize_scalar(cost, bounds=bounds, method="bounded", options={"xatol": 0.05})
    return float(best.x), float(np.sqrt(best.fun / measured.size))


# --------------------------------------------------------------------------------------------------
# The calibration


_RUNNERS = {
    "nestle": ("adaptive", "threshold_nestle"),
    "schaefer": ("adaptive", "threshold_schaefer"),
    "daisne": ("adaptive", "threshold_daisne"),
    "black": ("adaptive", "threshold_black"),
    "vandalen": ("iterative", "threshold_van_dalen"),
    "iterative": ("iterative", "threshold_itm"),
}


def _runner(method: str) -> Callable[..., Any]:
    from . import adaptive, iterative

    module = {"adaptive": adaptive, "iterative": iterative}[_RUNNERS[method][0]]
    return getattr(module, _RUNNERS[method][1])


def calibrate(
    imager: Imager | None = None,
    *,
    fwhm_mm: float = 6.0,
    noise_cov: float = 0.10,
    pet_voxel_mm: float | Sequence[float] = 4.0,
    fine_factor: int = 2,
    volumes_ml: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0),
    sbrs: Sequence[float] = (2.0, 4.0, 8.0, 16.0),
    repetitions: int = 1,
    background_suv: float = 1.0,
    methods: Sequence[str] = CALIBRATED_METHODS,
    fit_fwhm: bool = True,
    fwhm_bounds_mm: tuple[float, float] = (2.0, 15.0),
    validate: bool = True,
    random_positions: bool = True,
    rng: np.random.Generator | int | None = 0,
    description: str = "",
) -> CalibrationResult:
    """Fit the constants of the adaptive and iterative thresholds on imaged spheres (module docstring).

    Parameters
    ----------
    imager : the imaging of the protocol (:data:`Imager`); default :class:`GaussianImager` with ``fwhm_mm``
        (default 6 mm) and ``noise_cov`` (default 0.10 at SUV 1), a documented stand-in.
    pet_voxel_mm : PET voxel size (one value or x, y, z; default 4 mm); the fine activity grid has
        ``fine_factor`` (default 2) fine voxels per PET voxel along each axis (partial volumes exact).
    volumes_ml : sphere volumes (default 0.5-100 mL); sbrs : sphere-to-background ratios (default 2-16);
        repetitions : noise realisations per sphere.
    random_positions : place each sphere at its own random sub-voxel position (default, as lesions fall
        anywhere on the grid), or every sphere at one common random position (removes the spread between
        spheres due to the grid position, e.g. to compare with analytic values; a position on a voxel
        centre is avoided because its symmetric voxel shells make the volume jump in large steps).
    background_suv : background activity (SUV, default 1), so Black's absolute intercept is in SUV.
    methods : which constants to fit (default all of :data:`CALIBRATED_METHODS`).
    fit_fwhm : also fit the effective FWHM of the ITM model LUT (bounded search within ``fwhm_bounds_mm``).
    validate : run each method with its fitted constants on every sphere and record the volume errors.
    rng : seed or generator (the result is deterministic for a given seed).
    description : free text stored in ``protocol`` (scanner, reconstruction, date...).
    """
    spacing = np.broadcast_to(np.asarray(pet_voxel_mm, dtype=float), (3,)).copy()
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise InputError(f"pet_voxel_mm must be positive lengths in mm, got {pet_voxel_mm!r}")
    if int(fine_factor) != fine_factor or fine_factor < 1:
        raise InputError(f"fine_factor must be a positive integer, got {fine_factor!r}")
    if int(repetitions) != repetitions or repetitions < 1:
        raise InputError(f"repetitions must be a positive integer, got {repetitions!r}")
    volumes = [float(v) for v in volumes_ml]
    ratios = [float(s) for s in sbrs]
    if not volumes or not all(np.isfinite(v) and v > 0 for v in volumes):
        raise InputError(f"volumes_ml must be positive volumes in mL, got {volumes_ml!r}")
    if not ratios or not all(np.isfinite(s) and s > 1 for s in ratios):
        raise InputError(f"sbrs must be sphere-to-background ratios above 1, got {sbrs!r}")
    if not (np.isfinite(background_suv) and background_suv > 0):
        raise InputError(f"background_suv must be positive, got {background_suv!r}")
    two_constant = sorted(set(methods) & {"schaefer", "daisne", "black"})
    if two_constant and len(set(ratios)) < 2:
        raise InputError(f"{', '.join(two_constant)} fit two constants and need spheres at two or more different "
                         "SBRs (sbrs)")
    unknown = sorted(set(methods) - set(CALIBRATED_METHODS))
    if unknown or not methods:
        raise InputError(f"cannot calibrate {', '.join(unknown) or 'no method'}; choose from "
                         f"{', '.join(CALIBRATED_METHODS)}")
    imager = imager if imager is not None else GaussianImager(fwhm_mm, noise_cov, background_suv)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    common_offset = (generator.random(3) - 0.5) * spacing
    images: list[_Sphere] = []
    measurements: list[SphereMeasurement] = []
    for volume in volumes:
        radius = float(np.cbrt(volume * 1000.0 * 3.0 / (4.0 * np.pi)))
        for sbr in ratios:
            for rep in range(int(repetitions)):
                offset = (generator.random(3) - 0.5) * spacing if random_positions else common_offset
                activity, pet_grid, work = _sphere_phantom(
                    radius, sbr, pet_voxel_mm=spacing, fine_factor=int(fine_factor), fwhm_mm=fwhm_mm,
                    background_suv=background_suv, bg_outer_mm=20.0, offset=offset)
                pet = imager(activity, pet_grid, generator)
                if not same_geometry(pet, pet_grid):
                    raise InputError("the imager returned an image that is not on the PET grid it was given")
                set_units(pet, Units.SUV_BW)
                sphere = _Sphere(pet, tuple(float(o) for o in offset), radius, sbr, rep, work)  # type: ignore[arg-type]
                images.append(sphere)
                measurements.append(_measure(sphere, volume))

    fitted = _fit_methods(measurements, methods)
    fwhm_fit = fwhm_rms = None
    if fit_fwhm and "iterative" in methods:
        fwhm_fit, fwhm_rms = _fit_fwhm(measurements, [s.centre for s in images], spacing, fwhm_bounds_mm)
    if validate:
        for name, calibration in fitted.items():
            run = _runner(name)
            for sphere, measurement in zip(images, measurements, strict=True):
                try:
                    result = run(sphere.pet, sphere.centre, roi_radius_mm=sphere.work_radius_mm,
                                 **calibration.constants)
                except PETDPError as exc:
                    calibration.volume_errors_percent.append(None)
                    calibration.failures.append(f"{measurement.volume_ml:g} mL, SBR {measurement.sbr:g}: {exc}")
                    continue
                calibration.volume_errors_percent.append(100.0 * (result.volume_ml / measurement.volume_ml - 1.0))
    protocol = {
        "description": description,
        "imager": getattr(imager, "description", getattr(imager, "__name__", type(imager).__name__)),
        "pet_voxel_mm": [float(s) for s in spacing],
        "fine_factor": int(fine_factor),
        "volumes_ml": volumes,
        "sbrs": ratios,
        "repetitions": int(repetitions),
        "random_positions": bool(random_positions),
        "background_suv": float(background_suv),
        "background_definition": "median of the 10-20 mm shell (segmentation.background)",
        "rng": rng if isinstance(rng, int) else None,
    }
    return CalibrationResult(protocol, measurements, fitted, fwhm_fit, fwhm_rms)
