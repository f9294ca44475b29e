"""A fast analytic PET scanner simulator: PETSTEP-style forward model and attenuation-weighted OSEM.

Method (Berthon, Häggström, Apte, ..., Schmidtlein, "PETSTEP: Generation of synthetic PET lesions for
fast evaluation of segmentation methods", Phys Med 2015;31:969-980; OSEM: Hudson & Larkin, IEEE TMI
1994;13:601-609):

1. **System PSF**: the fine-grid activity is blurred by a 3D Gaussian (``psf_fwhm_mm``), standing for
   detector resolution, positron range and photon non-collinearity together.
2. **Axial sampling**: the fine slices inside each PET slice are averaged (a PET slice is a slab).
3. **Projection**: each slab is projected from the *fine* in-plane grid (:mod:`.projector`, exact
   strip integrals); the reconstruction uses its own projector for the coarser PET grid, so the
   simulation does not commit the "inverse crime" of reconstructing with the model that made the data.
4. **Attenuation**: factors ``exp(-integral of mu)`` from the slab-averaged 511 keV mu map.
5. **Trues** ``T = k * acf * P(activity)``, with ``k`` fixed by the count level: the expected number of
   true coincidences per kBq in a slab before attenuation (scanner sensitivity x frame time), so the
   counts of every slice follow its attenuated activity (a physically consistent count level, as
   PETSTEP's dwell time x concentration x sensitivity).
6. **Scatter**: the activity blurred by a very wide Gaussian (FWHM 200 mm, PETSTEP), projected and
   attenuated, scaled to ``SF / (1 - SF)`` of the trues (scatter fraction ``SF = S / (T + S)``).
   Because the projection of an image blurred by an isotropic 2D Gaussian is the projection blurred
   along the detector axis by the same 1D Gaussian, the in-plane blur is applied to the sinogram (FFT
   along the bins, zero outside the field of view); it is also applied along the slices (DCT, the
   body continuing beyond the axial field of view), unlike 2D PETSTEP.
7. **Randoms**: uniform over the sinogram bins that cover the object (attenuating or active), scaled to
   ``RF / (1 - RF)`` of the trues plus scatter (``RF = R / (T + S + R)``).
8. **Noise**: independent Poisson counts in every bin (prompts ``= T + S + R``).
9. **Reconstruction**: OSEM with interleaved angle subsets (visited in a fixed, well-spread order
   where PETSTEP randomises it, so results depend only on the noise seed), the attenuation x
   normalisation factors in the system model and the *expected* scatter + randoms as the additive
   term (ideal scatter and randoms estimates), optional PSF modelling (an in-plane Gaussian of the
   system PSF in forward and back projection), a field-of-view disk mask and NaN/Inf clamping; then
   an in-plane Gaussian post-filter and an axial 3-point filter ([1 4 1]/6 "standard", [1 2 1]/4
   "heavy", [1 8 1]/10 "light", as PETSTEP/GE).

Because the system model of the reconstruction carries the same count scale ``k`` and attenuation
factors as the simulation, the reconstructed image is in the units of the input activity
(quantitatively calibrated, attenuation corrected).

Known limits (PETSTEP's, see the research note §10.2 D): 2D per slice (no oblique lines of
response, no 3D scatter structure), no time of flight, positron range and non-collinearity only through
the Gaussian PSF, idealised scatter and randoms corrections, no dead time, no decay within the frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft
import scipy.ndimage as ndi
import scipy.signal
import SimpleITK as sitk

from ..errors import InputError, UnitsError
from ..imaging.filters import FWHM_PER_SIGMA, gaussian_blur
from ..imaging.image import Units, check_same_geometry, get_units, make_grid
from .projector import ParallelProjector, PlaneGrid, SinogramGeometry, get_projector

__all__ = [
    "AXIAL_FILTERS",
    "COUNT_LEVELS",
    "DEFAULT_KBQ_PER_ML_PER_SUV",
    "MU_UNITS",
    "PetSimulation",
    "ScannerConfig",
    "compatible_pet_grid",
    "osem_reconstruct",
    "simulate_pet",
]

MU_UNITS = Units.MU  #: units of 511 keV linear attenuation maps (recorded in ``PETDP_Units``)
_MU_UNIT_ALIASES = frozenset({MU_UNITS, "cm-1", "cm^-1", "/cm"})

#: Expected true coincidences per kBq of activity in a slab (before attenuation), i.e. the product
#: sensitivity x frame duration of a 2D slice model. Calibrated (not measured on a scanner) on the
#: NEMA/IEC body phantom of :mod:`.nema` (4:1, background 1 SUV = 2.5 kBq/mL, lung insert, 2 mm voxels,
#: default :class:`ScannerConfig` with its 3D Gaussian post-filter): the background voxel COV is 12 % at
#: "typical" (clinical 10-15 %), 22 % at "low" (clinical 20-30 %) and 6 % at "high"
#: (``Testing/benchmarks/bench_pet_physics.py``). As a physical sensitivity x time the levels are high
#: (a 3D scanner of about 10 cps/kBq over 180 s gives about 2e3 trues per kBq before time-of-flight
#: gain): read the presets as noise levels, not as a model of a given scanner. Smaller bodies (the neck)
#: are less attenuated and so less noisy at the same level.
COUNT_LEVELS: dict[str, float] = {"low": 1750.0, "typical": 7000.0, "high": 28000.0}

#: kBq/mL at scan time per SUVbw unit used to turn SUV-like activity into counts: about 3.5 MBq/kg
#: FDG injected (EANM 2015 guideline range) decayed over a 60 min uptake gives 2.4 kBq/mL per SUV.
#: An order of magnitude only [M].
DEFAULT_KBQ_PER_ML_PER_SUV = 2.5

#: Axial post-filters: 3-point kernels (PETSTEP / GE naming), or "gaussian": the in-plane Gaussian
#: post-filter applied along z too (a 3D Gaussian, as fully-3D reconstructions filter), which gives a
#: nearly isotropic image resolution.
AXIAL_FILTERS: dict[str, tuple[float, float, float] | None] = {
    "standard": (1 / 6, 4 / 6, 1 / 6),
    "heavy": (1 / 4, 2 / 4, 1 / 4),
    "light": (1 / 10, 8 / 10, 1 / 10),
    "gaussian": None,
    "none": None,
}


@dataclass(frozen=True)
class ScannerConfig:
    """Scanner, acquisition and reconstruction parameters of :func:`simulate_pet` (lengths in mm).

    Defaults: a modern non-TOF-modelled whole-body scanner in a clinical reconstruction, chosen so that
    the NEMA/IEC phantom lands in the clinical range (measured by ``bench_pet_physics.py``):

    * ``psf_fwhm_mm`` 4.5: system resolution (PETSTEP example presets use 4.0-4.8 mm; NEMA NU 2
      transaxial resolution of current LSO/LYSO systems is about 4-4.5 mm near the centre [M]).
    * ``n_angles`` 168, ``bin_width_mm`` 2.0, OSEM 3 iterations x 21 subsets: Siemens Biograph mCT
      sinogram and clinical setting (as in autoPET [V, research note §10.2 C]).
    * ``axial_filter`` "gaussian": the post-filter is a 3D Gaussian, as in fully-3D clinical
      reconstructions; the 2D per-slice model with a 3-point axial filter ("standard") had an axial
      FWHM of about 5 mm against 8 mm in-plane, an anisotropy clinical images do not have.
    * ``psf_modelling`` off, ``post_filter_fwhm_mm`` 6.0: calibration choices
      (a 6 mm Gaussian is at the upper end of the clinical 2-6 mm range; with it the 10:1 IEC
      recoveries sit at the upper edge of the EARL 1 bands, inside or within 0.01 of them: RCmax 0.57
      (10 mm) to 1.10 (37 mm), RCmean 0.43 to 0.88; ``psf_modelling`` on with a 5 mm filter puts RCmax
      and RCmean of all six spheres inside the EARL 2 bands).
    * ``scatter_fraction`` 0.35 (3D whole body 0.30-0.40), ``randoms_fraction`` 0.2 (0.05-0.3).
    * ``count_level`` "typical": see :data:`COUNT_LEVELS`; a number is taken as trues per kBq.
    * ``scatter_fwhm_mm`` 200: PETSTEP's scatter kernel.
    * ``n_bins`` ``None``: enough bins to cover the diagonal of the simulated field of view.
    """

    psf_fwhm_mm: float = 4.5
    n_angles: int = 168
    bin_width_mm: float = 2.0
    n_bins: int | None = None
    iterations: int = 3
    subsets: int = 21
    psf_modelling: bool = False
    post_filter_fwhm_mm: float = 6.0
    axial_filter: str = "gaussian"
    scatter_fraction: float = 0.35
    randoms_fraction: float = 0.2
    count_level: str | float = "typical"
    scatter_fwhm_mm: float = 200.0

    def __post_init__(self) -> None:
        for name in ("psf_fwhm_mm", "post_filter_fwhm_mm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a length >= 0 mm, got {value!r}")
        if not (np.isfinite(self.scatter_fwhm_mm) and self.scatter_fwhm_mm > 0):
            raise InputError(f"scatter_fwhm_mm must be a positive length in mm, got {self.scatter_fwhm_mm!r}")
        if not (np.isfinite(self.bin_width_mm) and self.bin_width_mm > 0):
            raise InputError(f"bin_width_mm must be a positive length in mm, got {self.bin_width_mm!r}")
        for name in ("n_angles", "iterations", "subsets"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.n_bins is not None and (int(self.n_bins) != self.n_bins or self.n_bins < 1):
            raise InputError(f"n_bins must be a positive integer or None, got {self.n_bins!r}")
        if self.n_angles % self.subsets:
            raise InputError(f"n_angles ({self.n_angles}) must be divisible by subsets ({self.subsets}) "
                             "so that every OSEM subset holds the same number of views")
        if self.axial_filter not in AXIAL_FILTERS:
            raise InputError(f"axial_filter {self.axial_filter!r} is unknown; use one of {', '.join(AXIAL_FILTERS)}")
        for name in ("scatter_fraction", "randoms_fraction"):
            value = getattr(self, name)
            if not (0.0 <= value < 1.0):
                raise InputError(f"{name} must be in [0, 1), got {value!r}")
        _ = self.counts_per_kbq  # validates count_level

    @property
    def counts_per_kbq(self) -> float:
        """Expected trues per kBq in a slab before attenuation (resolves a named ``count_level``)."""
        level = self.count_level
        if isinstance(level, str):
            if level not in COUNT_LEVELS:
                raise InputError(f"count_level {level!r} is unknown; use one of {', '.join(COUNT_LEVELS)} "
                                 "or a number of trues per kBq")
            return COUNT_LEVELS[level]
        if not (np.isfinite(level) and level > 0):
            raise InputError(f"count_level must be positive (trues per kBq), got {level!r}")
        return float(level)

    @classmethod
    def quick(cls, **overrides) -> ScannerConfig:
        """A preview configuration: 96 views of 3 mm bins, OSEM 3 x 12 (about half the cost of the defaults).

        Meant for 3-4 mm PET voxels (with a 2 mm fine grid a 200 x 200 x 150 mm field of view takes well
        under a second). The coarser sampling smooths a little more: on the head-sized 180 mm cylinder at
        3 mm voxels RCmax of the 10 mm sphere is about 0.5 (defaults 0.65) and the background COV about
        7 % (defaults 8 %) (``bench_pet_physics.py``).
        """
        params = {"n_angles": 96, "bin_width_mm": 3.0, "iterations": 3, "subsets": 12}
        params.update(overrides)
        return cls(**params)

    def with_count_level(self, level: str | float) -> ScannerConfig:
        """A copy at another count level ("low", "typical", "high" or trues per kBq)."""
        return replace(self, count_level=level)

    @property
    def effective_fwhm_mm(self) -> float:
        """Nominal effective image resolution, sqrt(FWHM_sys^2 + FWHM_filter^2) (pet_segmentation.md §4.1).

        The value to give methods that need the scanner resolution (gradient, ITM). It ignores the
        resolution loss of early-stopped OSEM and voxelisation, so the measured edge FWHM is about 0.5-1 mm
        larger (``bench_pet_physics.py``: 7.9 mm in-plane, 7.3 mm axially for the defaults, nominal 7.5).
        """
        return float(np.hypot(self.psf_fwhm_mm, self.post_filter_fwhm_mm))

    def sinogram_geometry(self, width_mm: float, height_mm: float) -> SinogramGeometry:
        """The sinogram for a ``width_mm`` x ``height_mm`` in-plane field of view."""
        if self.n_bins is not None:
            return SinogramGeometry(self.n_angles, int(self.n_bins), self.bin_width_mm)
        return SinogramGeometry.covering(width_mm, height_mm, n_angles=self.n_angles, bin_width_mm=self.bin_width_mm)


@dataclass
class PetSimulation:
    """Result of :func:`simulate_pet`: the reconstructed image and what the acquisition measured.

    Count totals are expected values over all slices (``prompts`` is the realised Poisson total).
    ``nec = T^2 / (T + S + R)`` (noise-equivalent counts, NEMA NU 2 form with a noiseless randoms
    estimate).
    """

    image: sitk.Image  #: reconstruction on ``pet_grid``, in the units of the input activity
    config: ScannerConfig
    geometry: SinogramGeometry
    trues: float
    scatter: float
    randoms: float
    prompts: float
    nec: float
    trues_per_slice: float  #: mean expected trues per PET slice
    counts_per_kbq: float  #: the count scale used (trues per kBq in a slab, before attenuation)
    kbq_per_ml_per_unit: float  #: activity-unit conversion used for the count scale
    iterations: int
    subsets: int
    noise: bool
    timings_s: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Input checks


def _identity(image: sitk.Image) -> bool:
    return bool(np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6))


def _slab_layout(activity: sitk.Image, pet_grid: sitk.Image) -> tuple[int, int]:
    """``(first fine slice, fine slices per PET slice)``; raises :class:`InputError` if the grids do not nest."""
    dz_f, dz_p = activity.GetSpacing()[2], pet_grid.GetSpacing()[2]
    ratio = dz_p / dz_f
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-3:
        raise InputError(f"pet_grid slice thickness {dz_p:g} mm must be an integer multiple of the activity "
                         f"slice spacing {dz_f:g} mm")
    lo_f = activity.GetOrigin()[2] - dz_f / 2
    lo_p = pet_grid.GetOrigin()[2] - dz_p / 2
    start_f = (lo_p - lo_f) / dz_f
    start = round(start_f)
    if abs(start_f - start) > 1e-3:
        raise InputError("pet_grid slices must start on a boundary between activity slices "
                         f"(pet_grid starts {lo_p - lo_f:g} mm above the activity grid, spacing {dz_f:g} mm)")
    n_needed = start + pet_grid.GetSize()[2] * factor
    if start < 0 or n_needed > activity.GetSize()[2]:
        raise InputError(f"pet_grid's axial extent ({lo_p:g} to {lo_p + dz_p * pet_grid.GetSize()[2]:g} mm) "
                         f"is not inside the activity grid ({lo_f:g} to {lo_f + dz_f * activity.GetSize()[2]:g} mm)")
    return start, factor


def _check_inputs(activity: sitk.Image, mu: sitk.Image, pet_grid: sitk.Image) -> tuple[int, int]:
    for name, image in (("activity", activity), ("mu", mu), ("pet_grid", pet_grid)):
        if image.GetDimension() != 3:
            raise InputError(f"{name} must be a 3D image, got {image.GetDimension()}D")
        if not _identity(image):
            raise InputError(f"{name} must have an identity direction (axial slices along LPS axes); "
                             "resample it first")
    check_same_geometry(activity, mu, "activity", "mu")
    mu_units = get_units(mu)
    if mu_units is not None and mu_units not in _MU_UNIT_ALIASES:
        raise UnitsError(f"mu has units {mu_units!r}; the simulator needs the 511 keV attenuation map in {MU_UNITS}")
    for axis, name in ((0, "x"), (1, "y")):
        lo_f = activity.GetOrigin()[axis] - activity.GetSpacing()[axis] / 2
        hi_f = lo_f + activity.GetSpacing()[axis] * activity.GetSize()[axis]
        lo_p = pet_grid.GetOrigin()[axis] - pet_grid.GetSpacing()[axis] / 2
        hi_p = lo_p + pet_grid.GetSpacing()[axis] * pet_grid.GetSize()[axis]
        tol = 0.5 * pet_grid.GetSpacing()[axis] + 1e-3
        if abs(lo_p - lo_f) > tol or abs(hi_p - hi_f) > tol:
            raise InputError(f"pet_grid must cover the same in-plane field of view as the activity: along {name} "
                             f"it spans {lo_p:g} to {hi_p:g} mm, the activity {lo_f:g} to {hi_f:g} mm")
    return _slab_layout(activity, pet_grid)


def _checked_arrays(activity: sitk.Image, mu: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    act = sitk.GetArrayViewFromImage(activity)
    mu_arr = sitk.GetArrayViewFromImage(mu)
    if not np.all(np.isfinite(act)):
        raise InputError("activity holds NaN or infinite values")
    if not np.all(np.isfinite(mu_arr)):
        raise InputError("mu holds NaN or infinite values")
    if act.min() < 0:
        raise InputError(f"activity must be >= 0 everywhere (minimum {float(act.min()):g})")
    if mu_arr.min() < 0 or mu_arr.max() > 2.0:
        raise InputError(f"mu values span {float(mu_arr.min()):g} to {float(mu_arr.max()):g}; expected a 511 keV "
                         f"attenuation map in {MU_UNITS} (water 0.096, bone up to about 0.2), not HU or 1/mm")
    return act, mu_arr


def compatible_pet_grid(activity: sitk.Image, voxel_mm: float = 2.0, slice_mm: float | None = None) -> sitk.Image:
    """A PET output grid for :func:`simulate_pet` on the field of view of the fine ``activity`` grid.

    In-plane: ``round(extent / voxel_mm)`` pixels of ``voxel_mm``, centred on the activity's field of view
    (edges within a quarter pixel). Axially: slices of ``slice_mm`` (default ``voxel_mm``) rounded to a
    whole number of activity slices, as many as fit, centred. Returns an empty float32 image.
    """
    if not _identity(activity):
        raise InputError("activity must have an identity direction")
    if not (np.isfinite(voxel_mm) and voxel_mm > 0):
        raise InputError(f"voxel_mm must be a positive length in mm, got {voxel_mm!r}")
    size = np.asarray(activity.GetSize())
    spacing = np.asarray(activity.GetSpacing(), dtype=float)
    lo = np.asarray(activity.GetOrigin(), dtype=float) - spacing / 2
    extent = size * spacing
    n_xy = np.maximum(np.round(extent[:2] / voxel_mm).astype(int), 1)
    factor = max(1, round((voxel_mm if slice_mm is None else slice_mm) / spacing[2]))
    n_z = int(size[2] // factor)
    if n_z < 1:
        raise InputError(f"the activity grid is thinner than one PET slice of {factor * spacing[2]:g} mm")
    first = (int(size[2]) - n_z * factor) // 2
    out_spacing = np.array([voxel_mm, voxel_mm, factor * spacing[2]])
    centre_xy = lo[:2] + extent[:2] / 2
    origin = np.concatenate([centre_xy - (n_xy - 1) / 2 * voxel_mm, [lo[2] + (first + factor / 2) * spacing[2]]])
    return make_grid([*n_xy.tolist(), n_z], out_spacing, origin)


def _kbq_per_unit(activity: sitk.Image, value: float | None) -> float:
    if value is not None:
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"kbq_per_ml_per_unit must be positive, got {value!r}")
        return float(value)
    return 1e-3 if get_units(activity) == Units.BQML else DEFAULT_KBQ_PER_ML_PER_SUV


# --------------------------------------------------------------------------------------------------
# Reconstruction


def _subset_order(n_subsets: int) -> list[int]:
    """Subsets visited with a stride close to the golden section of ``n_subsets``, co-prime with it."""
    if n_subsets <= 2:
        return list(range(n_subsets))
    target = 0.382 * n_subsets
    strides = [s for s in range(1, n_subsets) if np.gcd(s, n_subsets) == 1]
    stride = min(strides, key=lambda s: abs(s - target))
    return [(k * stride) % n_subsets for k in range(n_subsets)]


def _fov_mask(projector: ParallelProjector) -> np.ndarray:
    x, y = projector.grid.pixel_centres_mm()
    return (np.hypot(x, y) <= projector.geometry.fov_radius_mm).ravel()


def _osem_columns(data: np.ndarray, projector: ParallelProjector, weights: np.ndarray, additive: np.ndarray, *,
                  iterations: int, subsets: int, psf_fwhm_mm: float) -> np.ndarray:
    """OSEM on the column layout (sinograms ``(n_rows, n_slices)``, image ``(n_pixels, n_slices)``)."""
    grid = projector.grid
    n_slices = data.shape[1]
    sigma_px = (0.0, 0.0) if psf_fwhm_mm <= 0 else (psf_fwhm_mm / FWHM_PER_SIGMA / grid.dy_mm,
                                                    psf_fwhm_mm / FWHM_PER_SIGMA / grid.dx_mm)

    def blur(x: np.ndarray) -> np.ndarray:  # H = H^T: symmetric Gaussian, zero outside the grid
        if psf_fwhm_mm <= 0:
            return x
        cube = x.reshape(grid.ny, grid.nx, n_slices)
        return ndi.gaussian_filter(cube, (*sigma_px, 0.0), mode="constant").reshape(x.shape)

    mask = _fov_mask(projector)[:, None]
    blocks = projector.subsets(subsets)
    parts = []
    for rows, fwd, bwd in blocks:
        w_b = np.ascontiguousarray(weights[rows])
        sens = blur(np.asarray(bwd @ w_b))
        inv_sens = np.zeros_like(sens)
        np.divide(1.0, sens, out=inv_sens, where=(sens > 1e-12 * max(float(sens.max()), 1e-30)) & mask)
        parts.append((fwd, bwd, w_b, np.ascontiguousarray(data[rows]), np.ascontiguousarray(additive[rows]),
                      inv_sens))
    # Start from the per-slice uniform image that explains the net counts.
    net = np.clip(data.sum(axis=0) - additive.sum(axis=0), 0.0, None)
    sens_total = np.zeros(n_slices, np.float64)
    for _, bwd, w_b, *_ in parts:
        sens_total += (np.asarray(bwd @ w_b) * mask).sum(axis=0)
    start = np.divide(net, sens_total, out=np.zeros_like(sens_total), where=sens_total > 0)
    x = np.where(mask, start[None, :], 0.0).astype(np.float32)
    order = _subset_order(subsets)
    for _ in range(iterations):
        for b in order:
            fwd, bwd, w_b, y_b, a_b, inv_sens = parts[b]
            expected = w_b * np.asarray(fwd @ blur(x)) + a_b
            ratio = np.divide(y_b, expected, out=np.zeros_like(expected), where=expected > 0)
            x = x * blur(np.asarray(bwd @ (w_b * ratio))) * inv_sens
            x[~np.isfinite(x)] = 0.0
    return x


def osem_reconstruct(sinograms: np.ndarray, projector: ParallelProjector, *, weights: np.ndarray | None = None,
                     additive: np.ndarray | None = None, iterations: int = 3, subsets: int = 21,
                     psf_fwhm_mm: float = 0.0) -> np.ndarray:
    """Reconstruct a sinogram stack with OSEM (Hudson & Larkin, IEEE TMI 1994;13:601-609).

    Model of the expected data: ``E[y] = weights * A(H x) + additive``, with ``A`` the projector, ``H``
    an in-plane Gaussian of ``psf_fwhm_mm`` (PSF modelling; identity if 0) and ``weights`` the
    multiplicative factors (attenuation x count scale; 1 if ``None``). Subsets are interleaved views,
    visited in a fixed well-spread order. The update for subset ``b``::

        x <- x / (H^T A_b^T w_b) * H^T A_b^T (w_b * y_b / E_b[y])

    Pixels outside the field-of-view disk are zero; NaN/Inf are set to 0.

    Parameters
    ----------
    sinograms : ``(n_angles, n_bins)`` or ``(n_slices, n_angles, n_bins)`` measured counts.
    projector : the projector of the reconstruction grid (:func:`.projector.get_projector`).
    weights, additive : arrays shaped like ``sinograms`` (or ``None``).
    iterations, subsets : OSEM iterations and subsets (``n_angles`` divisible by ``subsets``).
    psf_fwhm_mm : FWHM (mm) of the in-plane resolution model; 0 switches PSF modelling off.

    Returns the image ``(ny, nx)`` or ``(n_slices, ny, nx)`` (float32).
    """
    sino = np.asarray(sinograms, dtype=np.float32)
    single = sino.ndim == 2
    stack = sino[None] if single else sino
    geometry = projector.geometry
    if stack.shape[1:] != (geometry.n_angles, geometry.n_bins):
        raise InputError(f"sinograms of shape {stack.shape[1:]} do not match the projector geometry "
                         f"({geometry.n_angles} angles, {geometry.n_bins} bins)")

    def columns(arr: np.ndarray | None, fill: float) -> np.ndarray:
        if arr is None:
            return np.full((geometry.n_rows, stack.shape[0]), fill, np.float32)
        arr = np.asarray(arr, dtype=np.float32)
        if arr.shape != sino.shape:
            raise InputError(f"weights/additive of shape {arr.shape} must match the sinograms {sino.shape}")
        arr = arr[None] if single else arr
        return np.ascontiguousarray(arr.reshape(arr.shape[0], -1).T)

    x = _osem_columns(columns(sino, 0.0), projector, columns(weights, 1.0), columns(additive, 0.0),
                      iterations=int(iterations), subsets=int(subsets), psf_fwhm_mm=float(psf_fwhm_mm))
    images = x.T.reshape(stack.shape[0], *projector.grid.shape)
    return images[0] if single else images


# --------------------------------------------------------------------------------------------------
# Simulation


def _gaussian_dct(values: np.ndarray, sigma_samples: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along ``axis`` with mirror boundaries (DCT-II diagonalises it)."""
    n = values.shape[axis]
    if sigma_samples <= 0 or n < 2:
        return values
    freq = np.pi * np.arange(n) / n
    shape = [1] * values.ndim
    shape[axis] = n
    gain = np.exp(-0.5 * (sigma_samples * freq) ** 2).reshape(shape)
    return scipy.fft.idct(scipy.fft.dct(values, type=2, axis=axis, norm="ortho") * gain, type=2, axis=axis,
                          norm="ortho")


def _gaussian_fft_zero(values: np.ndarray, sigma_samples: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along ``axis`` with zeros outside (linear convolution by FFT)."""
    if sigma_samples <= 0:
        return values
    half = int(np.ceil(4 * sigma_samples))
    t = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (t / sigma_samples) ** 2)
    kernel /= kernel.sum()
    shape = [1] * values.ndim
    shape[axis] = kernel.size
    return scipy.signal.fftconvolve(values, kernel.reshape(shape), mode="same", axes=axis)


def simulate_pet(activity: sitk.Image, mu: sitk.Image, pet_grid: sitk.Image, config: ScannerConfig | None = None,
                 rng: np.random.Generator | int | None = 0, *, noise: bool = True,
                 kbq_per_ml_per_unit: float | None = None) -> PetSimulation:
    """Simulate a PET acquisition of ``activity`` and reconstruct it on ``pet_grid`` (see the module notes).

    Parameters
    ----------
    activity : fine-grid activity (e.g. 1 mm; any activity unit, e.g. SUVbw or Bq/mL), identity
        direction, values >= 0.
    mu : 511 keV linear attenuation coefficients in 1/cm (:data:`MU_UNITS`) on the same grid.
    pet_grid : the output geometry (identity direction; pixel type ignored). It must cover the same
        in-plane field of view (edges within half a PET pixel) and its slices must be whole stacks of
        activity slices (slice thickness an integer multiple of the activity's).
    config : scanner and reconstruction parameters (:class:`ScannerConfig`, defaults if ``None``).
    rng : a numpy Generator or a seed; the result is deterministic for a given seed.
    noise : Poisson noise on the sinograms (``False``: reconstruct the expected data).
    kbq_per_ml_per_unit : kBq/mL per activity unit, for the count scale. ``None``: 0.001 for Bq/mL
        images, otherwise :data:`DEFAULT_KBQ_PER_ML_PER_SUV` (SUV-like units).

    Returns a :class:`PetSimulation` whose image has the units metadata of ``activity``.

    Raises :class:`InputError` (or its :class:`GeometryError` / :class:`UnitsError` subclasses) for
    incompatible grids, bad units or values.
    """
    cfg = config or ScannerConfig()
    timings: dict[str, float] = {}
    t_start = t = time.perf_counter()
    k_start, factor = _check_inputs(activity, mu, pet_grid)
    act_arr, mu_arr = _checked_arrays(activity, mu)
    kbq_unit = _kbq_per_unit(activity, kbq_per_ml_per_unit)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    nz = pet_grid.GetSize()[2]
    dz_pet = pet_grid.GetSpacing()[2]

    # 1-2. System PSF on the fine grid, then slab averaging.
    as_float = activity if activity.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(activity, sitk.sitkFloat32)
    blurred = sitk.GetArrayFromImage(gaussian_blur(as_float, cfg.psf_fwhm_mm)) if cfg.psf_fwhm_mm > 0 \
        else act_arr
    sl = slice(k_start, k_start + nz * factor)
    ny, nx = act_arr.shape[1:]
    act_slab = np.asarray(blurred[sl], np.float32).reshape(nz, factor, ny, nx).mean(axis=1)
    mu_slab = np.asarray(mu_arr[sl], np.float32).reshape(nz, factor, ny, nx).mean(axis=1) * 0.1  # 1/mm
    timings["psf"] = time.perf_counter() - t

    # 3-4. Projection from the fine grid; attenuation factors.
    t = time.perf_counter()
    size, spacing, origin = activity.GetSize(), activity.GetSpacing(), activity.GetOrigin()
    axis_xy = tuple(origin[a] + (size[a] - 1) / 2.0 * spacing[a] for a in (0, 1))
    geometry = cfg.sinogram_geometry(size[0] * spacing[0], size[1] * spacing[1])
    fine = get_projector(PlaneGrid.from_image(activity, axis_xy), geometry)
    timings["system_matrix_fine"] = time.perf_counter() - t
    t = time.perf_counter()
    stacked = np.concatenate([act_slab.reshape(nz, -1), mu_slab.reshape(nz, -1)], axis=0).T
    projected = fine.forward_columns(stacked)
    proj_act, mu_line = projected[:, :nz], projected[:, nz:]
    acf = np.exp(-mu_line).astype(np.float32)
    timings["projection"] = time.perf_counter() - t

    # 5-8. Trues, scatter, randoms, Poisson noise.
    t = time.perf_counter()
    scale = cfg.counts_per_kbq * kbq_unit * (dz_pet / 1000.0) * geometry.bin_width_mm / geometry.n_angles
    weights = (scale * acf).astype(np.float32)
    trues = weights * np.clip(proj_act, 0.0, None)
    t_total = float(trues.sum(dtype=np.float64))
    if t_total <= 0:
        raise InputError("the activity inside pet_grid's field of view is zero; nothing to simulate")
    sigma_scatter = cfg.scatter_fwhm_mm / FWHM_PER_SIGMA
    cube = np.clip(proj_act, 0.0, None).reshape(geometry.n_angles, geometry.n_bins, nz)
    spread = _gaussian_fft_zero(cube, sigma_scatter / geometry.bin_width_mm, axis=1)
    spread = _gaussian_dct(spread, sigma_scatter / dz_pet, axis=2)
    scatter = np.clip(spread.reshape(geometry.n_rows, nz), 0.0, None) * acf
    s_target = cfg.scatter_fraction / (1.0 - cfg.scatter_fraction) * t_total
    s_sum = float(scatter.sum(dtype=np.float64))
    scatter = (scatter * (s_target / s_sum if s_sum > 0 else 0.0)).astype(np.float32)
    covering = (mu_line > 1e-3) | (proj_act > 1e-6 * float(proj_act.max()))
    r_target = cfg.randoms_fraction / (1.0 - cfg.randoms_fraction) * (t_total + s_target)
    randoms = (covering * np.float32(r_target / max(int(covering.sum()), 1))).astype(np.float32)
    additive = scatter + randoms
    expected = trues + additive
    data = generator.poisson(expected).astype(np.float32) if noise else expected.astype(np.float32)
    timings["counts"] = time.perf_counter() - t

    # 9. Reconstruction on the PET grid, then post-filters.
    t = time.perf_counter()
    recon = get_projector(PlaneGrid.from_image(pet_grid, axis_xy), geometry)
    timings["system_matrix_pet"] = time.perf_counter() - t
    t = time.perf_counter()
    x = _osem_columns(data, recon, weights, additive, iterations=cfg.iterations, subsets=cfg.subsets,
                      psf_fwhm_mm=cfg.psf_fwhm_mm if cfg.psf_modelling else 0.0)
    timings["osem"] = time.perf_counter() - t
    t = time.perf_counter()
    volume = np.ascontiguousarray(x.T.reshape(nz, *recon.grid.shape))
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.CopyInformation(pet_grid)
    if cfg.post_filter_fwhm_mm > 0:
        axial_fwhm = cfg.post_filter_fwhm_mm if cfg.axial_filter == "gaussian" else 0.0
        image = gaussian_blur(image, (cfg.post_filter_fwhm_mm, cfg.post_filter_fwhm_mm, axial_fwhm))
    taps = AXIAL_FILTERS[cfg.axial_filter]
    if taps is not None and nz > 1:
        filtered = ndi.convolve1d(sitk.GetArrayViewFromImage(image), np.asarray(taps, np.float32), axis=0,
                                  mode="nearest")
        image = sitk.GetImageFromArray(filtered.astype(np.float32))
        image.CopyInformation(pet_grid)
    for key in activity.GetMetaDataKeys():
        image.SetMetaData(key, activity.GetMetaData(key))
    timings["post_filter"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    r_total = float(randoms.sum(dtype=np.float64))
    s_total = float(scatter.sum(dtype=np.float64))
    prompts = float(data.sum(dtype=np.float64))
    return PetSimulation(
        image=image, config=cfg, geometry=geometry, trues=t_total, scatter=s_total, randoms=r_total,
        prompts=prompts, nec=t_total**2 / (t_total + s_total + r_total), trues_per_slice=t_total / nz,
        counts_per_kbq=cfg.counts_per_kbq, kbq_per_ml_per_unit=kbq_unit, iterations=cfg.iterations,
        subsets=cfg.subsets, noise=bool(noise), timings_s=timings,
    )
