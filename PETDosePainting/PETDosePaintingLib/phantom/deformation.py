"""Known smooth deformations between the baseline and later timepoints (ground-truth registration).

Convention (``dose_painting.md`` §5.2, ITK's fixed -> moving): the ground-truth transform ``T_k`` of
timepoint k is what a registration with **fixed = baseline, moving = timepoint k** should recover. It
maps baseline points to timepoint-k points, ``T_k(x0) = x0 + u_k(x0)``, so
``sitk.Resample(image_k, baseline_grid, T_k)`` pulls a timepoint image onto the baseline
(:func:`pull_to_baseline`). Making the timepoint-k anatomy from the baseline needs the inverse
``T_k^-1(y) = y + v_k(y)`` (timepoint points -> baseline points): ``Resample(baseline_image, grid, T_k^-1)``
(:func:`warp_to_timepoint`). Both are SimpleITK displacement fields on a grid covering the anatomy's
field of view plus a margin, linearly interpolated by ``sitk.DisplacementFieldTransform``; the fields
themselves are the truth.

The displacement is a sum of components (each a design model with design-default magnitudes):

* **setup translation** ``t`` (mm);
* **neck flexion**: rotation about the left-right (x) axis through a pivot at the vertebral body of the
  lowest slice, ``u = (R_x(θ(z)) − I)(x − pivot)``; positive θ is flexion (chin down: points above the
  pivot move anterior, anterior points move inferior). θ ramps smoothly (``3t² − 2t³``) from 0 to
  ``flexion_deg`` over ``flexion_ramp_mm`` (z range), so the lower neck moves little and the head most;
  with no ramp it is a rigid rotation;
* **weight loss**: in-plane contraction towards the body axis that acts mostly near the skin,
  ``u_xy = −k · 2ρ⁴/(1 + ρ⁴) · (x − c)_xy`` with ``ρ`` the elliptical radius of the body outline at that
  height (1 on the skin) and ``k = s/√(a b)``, so the skin moves inwards by about ``weight_loss_mm``
  (``s``) and the spine barely moves. Its in-plane Jacobian is at least ``1 − 4k`` > 0;
* **smooth random field**: three independent unit-variance Gaussian random fields of correlation length
  ``random_correlation_mm`` times ``random_amplitude_mm``.

The inverse is computed by fixed-point iteration ``v ← −u(y + v)`` with the same trilinear interpolation
SimpleITK applies (it converges because ``|∇u| << 1``); the result reports the node residual, the
round-trip error ``|T_k(T_k^-1(y)) − y|`` measured through the SimpleITK transforms at points between
the nodes inside the body, and the Jacobian determinant range of the forward map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.interpolate import CubicSpline

from ..errors import InputError, ProcessingError
from ..imaging.image import Units, set_units
from ..imaging.resample import resample_to_reference
from .anatomy import Anatomy
from .tumour import RngLike, gaussian_random_field, json_ready, seed_sequence, stream


@dataclass(frozen=True)
class DeformationConfig:
    """Components of the baseline -> timepoint deformation (mm and degrees; all design defaults).

    ``flexion_pivot_lps``: ``None`` = the vertebral body centre at the lowest slice of the anatomy.
    ``flexion_ramp_mm``: (z0, z1) over which the flexion angle rises from 0 to ``flexion_deg``; ``None``
    = rigid rotation of everything. ``field_spacing_mm``: displacement-field grid (2 mm: fine enough for
    fields that vary over centimetres); ``field_margin_mm``: extra extent around the field of view.
    ``inverse_tolerance_mm``: stop the fixed-point inversion when the update is smaller than this.
    """

    name: str = "timepoint"
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flexion_deg: float = 0.0
    flexion_pivot_lps: tuple[float, float, float] | None = None
    flexion_ramp_mm: tuple[float, float] | None = None
    weight_loss_mm: float = 0.0
    random_amplitude_mm: float = 0.0
    random_correlation_mm: float = 25.0
    field_spacing_mm: float = 2.0
    field_margin_mm: float = 15.0
    inverse_tolerance_mm: float = 1e-4
    max_inverse_iterations: int = 60


def timepoint_deformation_config(anatomy: Anatomy, fraction: int) -> DeformationConfig:
    """Design-default deformations for fraction <= 10 and later (magnitudes a few mm, at most about 5-8 mm
    inside the body): setup shifts of 1.5-1.8 mm, flexion of 1 and −1.5 degrees ramped over the whole
    field of view (pivot at the lowest vertebra), weight loss of 1.5 and 2.5 mm at the skin, random fields of
    0.7 and 0.8 mm (correlation 25 mm). Field spacing: 1.5 voxels, between 2 and 3 mm."""
    z = anatomy.axes()[2]
    ramp = (float(z[0]), float(z[-1]))
    spacing = float(np.clip(1.5 * min(anatomy.spacing), 2.0, 3.0))
    if fraction <= 10:
        return DeformationConfig(name=f"fx{fraction}", translation_mm=(1.0, -0.8, 1.2), flexion_deg=1.0,
                                 flexion_ramp_mm=ramp, weight_loss_mm=1.5, random_amplitude_mm=0.7,
                                 field_spacing_mm=spacing)
    return DeformationConfig(name=f"fx{fraction}", translation_mm=(-1.2, 1.0, -0.8), flexion_deg=-1.5,
                             flexion_ramp_mm=ramp, weight_loss_mm=2.5, random_amplitude_mm=0.8,
                             field_spacing_mm=spacing)


@dataclass
class Deformation:
    """The ground-truth deformation of one timepoint (fields in mm, LPS, vector float64 images)."""

    config: DeformationConfig
    forward_field: sitk.Image  #: u(x0) = T(x0) − x0 on the baseline field grid (baseline -> timepoint)
    inverse_field: sitk.Image  #: v(y) = T^-1(y) − y (timepoint -> baseline)
    jacobian_min: float  #: of the forward map over the field grid (interior nodes)
    jacobian_max: float
    max_displacement_mm: float  #: inside the body
    inverse_iterations: int
    inverse_residual_mm: float  #: max |v + u(y + v)| on the nodes
    round_trip_max_mm: float  #: max |T(T^-1(y)) − y| between nodes inside the body, via SimpleITK
    round_trip_p99_mm: float

    def forward_transform(self) -> sitk.DisplacementFieldTransform:
        """T_k (baseline -> timepoint k): resample a timepoint image onto the baseline with it."""
        return sitk.DisplacementFieldTransform(sitk.Image(self.forward_field))

    def inverse_transform(self) -> sitk.DisplacementFieldTransform:
        """T_k^-1 (timepoint k -> baseline): resample a baseline image into timepoint k with it."""
        return sitk.DisplacementFieldTransform(sitk.Image(self.inverse_field))

    def jacobian_image(self) -> sitk.Image:
        """Jacobian determinant of the forward map on the field grid (local volume ratio, > 0)."""
        return set_units(sitk.DisplacementFieldJacobianDeterminant(self.forward_field), Units.RATIO)

    def parameters(self) -> dict[str, object]:
        out = dict(asdict(self.config))
        out.update({"jacobian_min": self.jacobian_min, "jacobian_max": self.jacobian_max,
                    "max_displacement_mm": self.max_displacement_mm, "inverse_iterations": self.inverse_iterations,
                    "inverse_residual_mm": self.inverse_residual_mm, "round_trip_max_mm": self.round_trip_max_mm,
                    "round_trip_p99_mm": self.round_trip_p99_mm,
                    "convention": "forward maps baseline (fixed) points to timepoint (moving) points; "
                                  "Resample(timepoint_image, baseline_grid, forward) pulls onto baseline"})
        return json_ready(out)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def analytic_displacement(anatomy: Anatomy, config: DeformationConfig, x: np.ndarray, y: np.ndarray,
                          z: np.ndarray) -> np.ndarray:
    """Deterministic part of u(x) (translation, flexion, weight loss) at LPS points given as broadcastable
    arrays (e.g. shapes (nz, 1, 1), (1, ny, 1), (1, 1, nx) for a grid); returns an array of shape
    ``broadcast(x, y, z).shape + (3,)`` in mm. The random component is not included."""
    x, y, z = (np.asarray(a, dtype=float) for a in (x, y, z))
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    u = np.zeros((*shape, 3))
    u += np.asarray(config.translation_mm, dtype=float)
    if config.flexion_deg:
        if config.flexion_pivot_lps is None:
            z0 = float(anatomy.axes()[2][0])
            pivot = (0.0, float(anatomy.vertebral_body_centre(z0)[1]), z0)
        else:
            pivot = config.flexion_pivot_lps
        theta = np.full(z.shape, np.radians(config.flexion_deg))
        if config.flexion_ramp_mm is not None:
            za, zb = config.flexion_ramp_mm
            theta = theta * _smoothstep((z - za) / (zb - za))
        dy, dz = y - pivot[1], z - pivot[2]
        c, s = np.cos(theta), np.sin(theta)
        u[..., 1] += c * dy - s * dz - dy
        u[..., 2] += s * dy + c * dz - dz
    if config.weight_loss_mm:
        yc, a, b = anatomy.body_ellipse(z)
        rho4 = ((x / a) ** 2 + ((y - yc) / b) ** 2) ** 2
        factor = config.weight_loss_mm / np.sqrt(a * b) * 2.0 * rho4 / (1.0 + rho4)
        u[..., 0] -= factor * x
        u[..., 1] -= factor * (y - yc)
    return u


def _field_grid(anatomy: Anatomy, cfg: DeformationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo = np.array([a[0] for a in anatomy.axes()]) - np.asarray(anatomy.spacing) / 2 - cfg.field_margin_mm
    hi = np.array([a[-1] for a in anatomy.axes()]) + np.asarray(anatomy.spacing) / 2 + cfg.field_margin_mm
    n = np.ceil((hi - lo) / cfg.field_spacing_mm).astype(int) + 1
    centre = (lo + hi) / 2
    origin = centre - (n - 1) * cfg.field_spacing_mm / 2
    return tuple(origin[d] + cfg.field_spacing_mm * np.arange(n[d]) for d in range(3))


def _vector_image(u: np.ndarray, axes: Sequence[np.ndarray], spacing: float) -> sitk.Image:
    image = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    image.SetOrigin([float(a[0]) for a in axes])
    image.SetSpacing([spacing] * 3)
    return set_units(image, Units.MM)


def _interp(u: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of the (nz, ny, nx, 3) field at continuous indices idx (3, ...) [k, j, i]."""
    return np.stack([ndimage.map_coordinates(u[..., c], idx, order=1, mode="nearest") for c in range(3)], axis=-1)


def build_deformation(anatomy: Anatomy, config: DeformationConfig | None = None, rng: RngLike = 0) -> Deformation:
    """Build the forward and inverse displacement fields of ``config`` for ``anatomy``.

    Raises :class:`ProcessingError` if the forward map folds (Jacobian determinant <= 0) or the inversion
    does not converge. ``rng`` seeds the random component only.
    """
    cfg = config or DeformationConfig()
    if cfg.field_spacing_mm <= 0 or cfg.random_correlation_mm <= 0 or cfg.field_margin_mm < 0:
        raise InputError("DeformationConfig.field_spacing_mm and random_correlation_mm must be positive")
    axes = _field_grid(anatomy, cfg)
    h = cfg.field_spacing_mm
    shape = (axes[2].size, axes[1].size, axes[0].size)
    u = analytic_displacement(anatomy, cfg, axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None])
    if cfg.random_amplitude_mm > 0:
        u += cfg.random_amplitude_mm * _random_field(axes, cfg, stream(seed_sequence(rng), "deformation", cfg.name))
    forward = _vector_image(u, axes, h)
    # ITK's finite differences are one-sided (inexact) on the outermost node layer, which lies
    # field_margin_mm outside the field of view: report the interior nodes.
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(forward))[1:-1, 1:-1, 1:-1]
    jmin, jmax = float(jac.min()), float(jac.max())
    if jmin <= 0:
        raise ProcessingError(f"deformation {cfg.name!r} folds (minimum Jacobian determinant {jmin:.3f}); "
                              "reduce its magnitudes")
    # Fixed-point inversion on the nodes: v(y) = −u(y + v(y)).
    grid_idx = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij"))
    v = -u.copy()
    iterations, step = 0, np.inf
    for iterations in range(1, cfg.max_inverse_iterations + 1):  # noqa: B007 (reported)
        idx = grid_idx + np.moveaxis(v[..., ::-1], -1, 0) / h
        v_new = -_interp(u, idx)
        step = float(np.max(np.abs(v_new - v)))
        v = v_new
        if step < cfg.inverse_tolerance_mm:
            break
    if step >= cfg.inverse_tolerance_mm:
        raise ProcessingError(f"inverse of deformation {cfg.name!r} did not converge in {iterations} iterations "
                              f"(last update {step:.2e} mm)")
    residual = float(np.max(np.linalg.norm(v + _interp(u, grid_idx + np.moveaxis(v[..., ::-1], -1, 0) / h),
                                           axis=-1)))
    inverse = _vector_image(v, axes, h)
    result = Deformation(config=cfg, forward_field=forward, inverse_field=inverse, jacobian_min=jmin,
                         jacobian_max=jmax, max_displacement_mm=float("nan"), inverse_iterations=iterations,
                         inverse_residual_mm=residual, round_trip_max_mm=float("nan"),
                         round_trip_p99_mm=float("nan"))
    _measure(result, anatomy)
    return result


def _random_field(axes: Sequence[np.ndarray], cfg: DeformationConfig, rng: np.random.Generator) -> np.ndarray:
    """Three unit-variance GRFs, drawn on a coarse grid (spacing ℓ/4) and interpolated by separable cubic
    splines (C2-smooth; the coarse sampling loses nothing of a field correlated over ℓ)."""
    coarse = max(cfg.field_spacing_mm, cfg.random_correlation_mm / 4.0)
    mats = []
    n_coarse = []
    for d in range(3):
        lo = axes[d][0] - 2 * coarse
        n = int(np.ceil((axes[d][-1] + 2 * coarse - lo) / coarse)) + 1
        n_coarse.append(n)
        mats.append(CubicSpline(lo + coarse * np.arange(n), np.eye(n))(axes[d]))  # (n_fine, n_coarse)
    out = np.empty((axes[2].size, axes[1].size, axes[0].size, 3))
    for c in range(3):
        g = gaussian_random_field(tuple(n_coarse[::-1]), (coarse,) * 3, cfg.random_correlation_mm, rng)
        g = np.einsum("kc,cji->kji", mats[2], g)
        g = np.einsum("jb,kbi->kji", mats[1], g)
        out[..., c] = np.einsum("ia,kja->kji", mats[0], g)
    return out


def _measure(deformation: Deformation, anatomy: Anatomy, spacing_mm: float = 3.0) -> None:
    """Round-trip error through the SimpleITK transforms at points between the nodes, inside the body."""
    x, y, z = anatomy.axes()
    h = deformation.config.field_spacing_mm
    offset = np.array([0.37, 0.61, 0.23]) * h
    origin = np.array([x[0], y[0], z[0]]) + offset
    size = [max(1, int((a[-1] - a[0]) // spacing_mm)) for a in (x, y, z)]
    composite = sitk.CompositeTransform([deformation.forward_transform(), deformation.inverse_transform()])
    rt = sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, size, origin.tolist(),
                                           [spacing_mm] * 3, [1, 0, 0, 0, 1, 0, 0, 0, 1])
    fwd = sitk.TransformToDisplacementField(deformation.forward_transform(), sitk.sitkVectorFloat64, size,
                                            origin.tolist(), [spacing_mm] * 3, [1, 0, 0, 0, 1, 0, 0, 0, 1])
    # Body membership of the sample points (nearest fine voxel).
    pts = [origin[d] + spacing_mm * np.arange(size[d]) for d in range(3)]
    idx = [np.clip(np.rint((pts[d] - (x, y, z)[d][0]) / anatomy.spacing[d]).astype(int), 0, (x, y, z)[d].size - 1)
           for d in range(3)]
    body = anatomy.structures["body"][np.ix_(idx[2], idx[1], idx[0])]
    err = np.linalg.norm(sitk.GetArrayViewFromImage(rt), axis=-1)[body]
    disp = np.linalg.norm(sitk.GetArrayViewFromImage(fwd), axis=-1)[body]
    deformation.round_trip_max_mm = float(err.max()) if err.size else float("nan")
    deformation.round_trip_p99_mm = float(np.percentile(err, 99)) if err.size else float("nan")
    deformation.max_displacement_mm = float(disp.max()) if disp.size else float("nan")


def warp_to_timepoint(image: sitk.Image, deformation: Deformation, interpolation: str = "linear",
                      default_value: float = 0.0, reference: sitk.Image | None = None) -> sitk.Image:
    """Baseline image -> timepoint k, one interpolation: ``Resample(image, reference, T_k^-1)``.

    ``interpolation``: ``"nearest"`` for label maps, ``"linear"`` for fractions and activity (see
    :func:`~PETDosePaintingLib.imaging.resample.resample_to_reference`). The timepoint image lives on
    ``reference`` (default: the input's own grid, i.e. the same scanner grid at both timepoints);
    outside the baseline image, ``default_value`` (e.g. −1000 for HU). Units are kept.
    """
    return resample_to_reference(image, reference if reference is not None else image,
                                 deformation.inverse_transform(), interpolation=interpolation,
                                 default_value=default_value)


def pull_to_baseline(image: sitk.Image, deformation: Deformation, interpolation: str = "linear",
                     default_value: float = 0.0, reference: sitk.Image | None = None) -> sitk.Image:
    """Timepoint-k image -> baseline grid: ``Resample(image, reference, T_k)`` (what a registration with
    fixed = baseline, moving = timepoint k does with its result)."""
    return resample_to_reference(image, reference if reference is not None else image,
                                 deformation.forward_transform(), interpolation=interpolation,
                                 default_value=default_value)
