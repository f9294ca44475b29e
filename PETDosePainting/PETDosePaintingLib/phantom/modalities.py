"""CT, 511 keV attenuation map, T1/T2-weighted MRI and diffusion-weighted MRI from a fine-grid label map.

Every image is made the same way: a per-tissue physical property (:mod:`.tissues`) is looked up on the
fine grid (1 mm), converted to a noise-free signal there, **box-averaged exactly** into the scanner's
voxels (:func:`area_average`, the tissue-fraction rule of ``pet_segmentation.md`` §10.2 A.4, which gives
realistic partial-volume mixing of signals), optionally blurred, then given the modality's noise. The
label map may be the plain anatomy or one with lesions painted (:func:`.tumour.paint_lesion_labels`) or
warped to a later timepoint (:func:`.deformation.warp_to_timepoint`). Tissues are uniform within a label
here (the lesions' uptake heterogeneity is a PET property only; a design simplification).

* **CT** (HU, int16): table HU (with or without venous-phase contrast), Gaussian resolution blur,
  Gaussian noise of a given SD (design default 15 HU, the 10-20 HU of a clinical neck CT) with a short
  correlation length (noise texture), on a 1 x 1 x 2 mm grid by default.
* **mu map** (1/cm, fine grid): from the labels (the table's 511 keV coefficients, ``pet_segmentation.md``
  §10.2 A.1), which is what :func:`mu_map` returns. :func:`hu_to_mu511` gives the bilinear HU -> mu
  conversion instead (Carney et al., Med Phys 2006;33:976, 120 kVp coefficients from memory [M]).
* **MRI** (a.u.): spin-echo signal ``S = PD (1 − e^(−TR/T1)) e^(−TE/T2)`` with table PD, T1, T2 at 1.5 or
  3 T; T1-weighted (TR/TE 500/15 ms) and T2-weighted (4000/100 ms) design defaults; Rician noise (the
  magnitude of a complex signal with Gaussian noise in both channels); 1 x 1 x 3 mm grid.
* **DWI** (a.u.): ``S(b) = S0 exp(−b ADC)`` per tissue (``dose_painting.md`` §4.1), S0 a T2-weighted
  spin-echo EPI signal (TR/TE 5000/80 ms) with fat suppression, b = 0, 50, 500, 800, 1000 s/mm2,
  Rician noise, EPI-like 2 x 2 x 4 mm grid. No perfusion (IVIM) term and no EPI distortion (design
  simplifications). The ADC truth comes per tissue on the fine grid and box-averaged on the DWI grid,
  with a mask of DWI voxels that hold a single ADC (there the noise-free signal is exactly
  mono-exponential; elsewhere it is a mixture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import sparse

from ..errors import GeometryError, InputError
from ..imaging.filters import gaussian_blur
from ..imaging.image import Units, image_from_array, require_units, set_units
from .tissues import Tissue, property_lut, relaxation_columns
from .tumour import RngLike, gaussian_random_field, seed_sequence, stream

#: Units string of linear attenuation coefficients (not among :class:`Units`).
MU_UNITS = Units.MU  #: units of 511 keV attenuation maps (shared with the PET simulator)
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# ==================================================================================================
# Grids and exact box averaging
# ==================================================================================================


def modality_grid(reference: sitk.Image, spacing_mm: Sequence[float]) -> sitk.Image:
    """An empty (uint8) grid with ``spacing_mm`` covering the same field of view as ``reference``, centred
    on it (the voxel count per axis is the extent divided by the spacing, rounded)."""
    _require_identity(reference, "reference grid")
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise InputError(f"spacing_mm must be three positive lengths, got {spacing_mm!r}")
    size_in = np.asarray(reference.GetSize())
    sp_in = np.asarray(reference.GetSpacing())
    lo = np.asarray(reference.GetOrigin()) - sp_in / 2
    extent = size_in * sp_in
    size = np.maximum(np.round(extent / spacing).astype(int), 1)
    origin = lo + extent / 2 - size * spacing / 2 + spacing / 2
    image = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    return image


def _require_identity(image: sitk.Image, what: str) -> None:
    if not np.allclose(image.GetDirection(), _IDENTITY):
        raise GeometryError(f"{what} must have an identity direction (axis-aligned LPS) for exact box averaging")


def _overlap_matrix(fine: sitk.Image, coarse: sitk.Image, axis: int) -> np.ndarray:
    """W[c, f] = length of fine voxel f inside coarse voxel c along ``axis``, over the coarse voxel length."""
    fine_spacing, coarse_spacing = fine.GetSpacing()[axis], coarse.GetSpacing()[axis]
    fe = fine.GetOrigin()[axis] - fine_spacing / 2 + fine_spacing * np.arange(fine.GetSize()[axis] + 1)
    ce = coarse.GetOrigin()[axis] - coarse_spacing / 2 + coarse_spacing * np.arange(coarse.GetSize()[axis] + 1)
    lo = np.maximum(ce[:-1, None], fe[None, :-1])
    hi = np.minimum(ce[1:, None], fe[None, 1:])
    return np.clip(hi - lo, 0.0, None) / coarse_spacing


def area_average(values: np.ndarray, fine: sitk.Image, target: sitk.Image, fill_value: float = 0.0) -> np.ndarray:
    """Exact box average of a fine-grid ``[k, j, i]`` array into the voxels of ``target``.

    Each target voxel gets the volume-weighted mean of the fine voxels it overlaps (separable 1D overlap
    matrices; exact for any spacings and offsets of axis-aligned grids). The part of a target voxel
    outside the fine grid counts as ``fill_value``. Use it for tissue-fraction truth at PET resolution
    (``pet_segmentation.md`` §10.2 A.4) and for partial-volume signal mixing. Returns float64.
    """
    _require_identity(fine, "fine grid")
    _require_identity(target, "target grid")
    values = np.asarray(values)
    if values.shape != tuple(fine.GetSize())[::-1]:
        raise GeometryError(f"array of shape {values.shape} does not match the fine grid size "
                            f"{fine.GetSize()} (i, j, k)")
    w = [_overlap_matrix(fine, target, d) for d in range(3)]
    out = values.astype(np.float64)
    # Banded overlap matrices as sparse products along k, j, then i (no multithreaded BLAS: predictable
    # on shared machines, and O(number of voxels)).
    for axis, mat in ((0, w[2]), (1, w[1]), (2, w[0])):
        moved = np.moveaxis(out, axis, 0)
        res = sparse.csr_matrix(mat) @ moved.reshape(moved.shape[0], -1)
        out = np.moveaxis(np.asarray(res).reshape((mat.shape[0], *moved.shape[1:])), 0, axis)
    out = np.ascontiguousarray(out)
    coverage = w[2].sum(1)[:, None, None] * w[1].sum(1)[None, :, None] * w[0].sum(1)[None, None, :]
    if fill_value != 0.0:
        out += fill_value * (1.0 - coverage)
    return out


def tissue_property(labels: sitk.Image, column: str, overrides: dict[Tissue, float] | None = None) -> np.ndarray:
    """A ``[k, j, i]`` float64 map of one :mod:`.tissues` column from a label image."""
    return _gather(labels, property_lut(column, overrides))


def _gather(labels: sitk.Image, lut: np.ndarray) -> np.ndarray:
    """``lut[labels]`` (a per-label value table of length 256), refusing labels the table does not know."""
    array = sitk.GetArrayViewFromImage(labels)
    if array.dtype != np.uint8:
        array = array.astype(np.uint8)
    present = np.bincount(array.ravel(), minlength=256) > 0
    unknown = np.flatnonzero(present & np.isnan(lut))
    if unknown.size:
        raise InputError(f"label map holds label(s) {unknown.tolist()} that are not in the tissue table")
    return lut[array]


def _labels(labels: sitk.Image) -> sitk.Image:
    require_units(labels, {Units.LABEL}, "label map")
    _require_identity(labels, "label map")
    return labels


# ==================================================================================================
# Attenuation
# ==================================================================================================


def mu_map(labels: sitk.Image) -> sitk.Image:
    """511 keV linear attenuation coefficient (1/cm, float32) on the label map's grid, from the tissue table
    (soft tissue 0.096, bone 0.145-0.165, air 0; ``pet_segmentation.md`` §10.2 A.1)."""
    values = tissue_property(_labels(labels), "mu_511_per_cm").astype(np.float32)
    return image_from_array(values, labels, units=MU_UNITS)


def hu_to_mu511(hu: np.ndarray, slope_below: float = 9.6e-5, slope_above: float = 5.10e-5,
                intercept_above: float = 4.71e-2, breakpoint_hu: float = 47.0) -> np.ndarray:
    """Bilinear CT -> 511 keV conversion (1/cm): ``slope_below (HU + 1000)`` up to ``breakpoint_hu``, then
    ``slope_above (HU + 1000) + intercept_above`` (Carney et al., Med Phys 2006;33:976; the defaults are
    the 120 kVp coefficients as remembered [M], to verify before clinical use -- the branches meet at the
    breakpoint to 1.5e-5 /cm, the rounding of the coefficients). Water gives 0.096 /cm, as the table.
    Negative results are clipped to 0."""
    h = np.asarray(hu, dtype=float) + 1000.0
    mu = np.where(h <= breakpoint_hu + 1000.0, slope_below * h, slope_above * h + intercept_above)
    return np.clip(mu, 0.0, None)


# ==================================================================================================
# CT
# ==================================================================================================


@dataclass(frozen=True)
class CTConfig:
    """CT simulation (mm, HU). ``contrast``: venous-phase contrast enhancement (table column
    ``ct_hu_contrast``); ``resolution_fwhm_mm``: Gaussian blur after box averaging (design default 0.8 mm
    in-plane, none along z: the slice thickness is the box); ``noise_sd_hu`` (10-20 HU is clinical; 0 =
    noise-free) with ``noise_correlation_mm`` (texture, design default 0.8 mm)."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 2.0)
    contrast: bool = True
    resolution_fwhm_mm: tuple[float, float, float] = (0.8, 0.8, 0.0)
    noise_sd_hu: float = 15.0
    noise_correlation_mm: float = 0.8
    hu_range: tuple[float, float] = (-1024.0, 3071.0)


def simulate_ct(labels: sitk.Image, config: CTConfig | None = None, rng: RngLike = 0) -> sitk.Image:
    """A CT image (int16, units HU) of the label map on a ``config.spacing_mm`` grid over the same field of
    view. Deterministic for a given ``rng`` seed."""
    cfg = config or CTConfig()
    labels = _labels(labels)
    grid = modality_grid(labels, cfg.spacing_mm)
    hu = tissue_property(labels, "ct_hu_contrast" if cfg.contrast else "ct_hu")
    ct = area_average(hu, labels, grid, fill_value=-1000.0)
    image = image_from_array(ct.astype(np.float32), grid, units=Units.HU)
    if any(f > 0 for f in cfg.resolution_fwhm_mm):
        image = gaussian_blur(image, cfg.resolution_fwhm_mm)
    ct = sitk.GetArrayFromImage(image).astype(np.float64)
    if cfg.noise_sd_hu > 0:
        gen = stream(seed_sequence(rng), "ct")
        ct += cfg.noise_sd_hu * gaussian_random_field(ct.shape, cfg.spacing_mm, cfg.noise_correlation_mm, gen)
    ct = np.clip(np.rint(ct), *cfg.hu_range).astype(np.int16)
    return image_from_array(ct, grid, units=Units.HU)


# ==================================================================================================
# MRI
# ==================================================================================================


def spin_echo_signal(pd: np.ndarray, t1_ms: np.ndarray, t2_ms: np.ndarray, tr_ms: float, te_ms: float) -> np.ndarray:
    """Spin-echo magnitude ``PD (1 − exp(−TR/T1)) exp(−TE/T2)`` (no inversion, perfect refocusing)."""
    return np.asarray(pd) * (1.0 - np.exp(-tr_ms / np.asarray(t1_ms))) * np.exp(-te_ms / np.asarray(t2_ms))


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of SD ``sigma`` per channel (Rician)."""
    if sigma <= 0:
        return np.asarray(signal, dtype=float)
    real = signal + sigma * rng.standard_normal(signal.shape)
    imag = sigma * rng.standard_normal(signal.shape)
    return np.hypot(real, imag)


@dataclass(frozen=True)
class MRConfig:
    """T1w/T2w spin-echo simulation (ms, mm). ``snr``: muscle signal / noise SD per channel in each image
    (design default 30; ``None`` or 0 = noise-free); ``scale``: signal of PD 1, fully relaxed, TE 0 (a.u.)."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 3.0)
    field_strength_t: float = 1.5
    t1w_tr_ms: float = 500.0
    t1w_te_ms: float = 15.0
    t2w_tr_ms: float = 4000.0
    t2w_te_ms: float = 100.0
    snr: float | None = 30.0
    scale: float = 1000.0


@dataclass
class MRImages:
    """T1- and T2-weighted images (float32, units a.u.) and their noise SD per channel."""

    t1w: sitk.Image
    t2w: sitk.Image
    noise_sd_t1w: float
    noise_sd_t2w: float
    config: MRConfig


def simulate_mr(labels: sitk.Image, config: MRConfig | None = None, rng: RngLike = 0) -> MRImages:
    """T1- and T2-weighted spin-echo images of the label map (deterministic for a given seed)."""
    cfg = config or MRConfig()
    labels = _labels(labels)
    grid = modality_grid(labels, cfg.spacing_mm)
    t1_col, t2_col = relaxation_columns(cfg.field_strength_t)
    pd, t1, t2 = (property_lut(c) for c in ("proton_density", t1_col, t2_col))  # per-label tables
    seq = seed_sequence(rng)
    out, sds = [], []
    for name, tr, te in (("t1w", cfg.t1w_tr_ms, cfg.t1w_te_ms), ("t2w", cfg.t2w_tr_ms, cfg.t2w_te_ms)):
        lut = cfg.scale * spin_echo_signal(pd, t1, t2, tr, te)
        signal = area_average(_gather(labels, lut), labels, grid)
        sd = float(lut[int(Tissue.MUSCLE)]) / cfg.snr if cfg.snr else 0.0
        signal = rician(signal, sd, stream(seq, "mr", name))
        out.append(image_from_array(signal.astype(np.float32), grid, units=Units.ARBITRARY))
        sds.append(sd)
    return MRImages(t1w=out[0], t2w=out[1], noise_sd_t1w=sds[0], noise_sd_t2w=sds[1], config=cfg)


# ==================================================================================================
# Diffusion-weighted MRI
# ==================================================================================================


@dataclass(frozen=True)
class DWIConfig:
    """Diffusion-weighted EPI simulation (s/mm2, ms, mm).

    ``b_values``: 0, 50, 500, 800, 1000 (a typical H&N protocol, ``dose_painting.md`` §4.1).
    ``fat_suppression``: residual fraction of fat signal (design default 0.05). ``snr_b0``: muscle b = 0
    signal / noise SD per channel (design default 25; ``None`` or 0 = noise-free). ``adc_overrides``:
    per-tissue ADC replacing the table (e.g. a different tumour ADC).
    """

    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 4.0)
    b_values: tuple[float, ...] = (0.0, 50.0, 500.0, 800.0, 1000.0)
    field_strength_t: float = 1.5
    tr_ms: float = 5000.0
    te_ms: float = 80.0
    fat_suppression: float = 0.05
    snr_b0: float | None = 25.0
    scale: float = 1000.0
    adc_overrides: dict[Tissue, float] = field(default_factory=dict)


@dataclass
class DWIResult:
    """Diffusion-weighted images and the ADC truth.

    ``images``: b value (s/mm2) -> image (float32, a.u.) on the DWI grid. ``adc_truth``: volume-weighted
    mean ADC of each DWI voxel's tissues (mm2/s); exact (the signal is mono-exponential with that ADC)
    where ``homogeneous`` is 1, a partial-volume mixture elsewhere. ``adc_truth_fine``: per-tissue ADC on
    the label grid. ``noise_sd``: per-channel noise SD (the same for every b).
    """

    images: dict[float, sitk.Image]
    adc_truth: sitk.Image
    adc_truth_fine: sitk.Image
    homogeneous: sitk.Image
    noise_sd: float
    config: DWIConfig


def simulate_dwi(labels: sitk.Image, config: DWIConfig | None = None, rng: RngLike = 0) -> DWIResult:
    """Diffusion-weighted images at ``config.b_values`` (deterministic for a given seed)."""
    cfg = config or DWIConfig()
    labels = _labels(labels)
    if len(cfg.b_values) < 2 or min(cfg.b_values) < 0:
        raise InputError(f"DWIConfig.b_values needs at least two values >= 0, got {cfg.b_values}")
    grid = modality_grid(labels, cfg.spacing_mm)
    t1_col, t2_col = relaxation_columns(cfg.field_strength_t)
    pd, t1, t2 = (property_lut(c) for c in ("proton_density", t1_col, t2_col))  # per-label tables
    adc_lut = property_lut("adc_mm2_s", cfg.adc_overrides)
    s0_lut = cfg.scale * spin_echo_signal(pd, t1, t2, cfg.tr_ms, cfg.te_ms)
    s0_lut[int(Tissue.FAT)] *= cfg.fat_suppression
    sd = float(s0_lut[int(Tissue.MUSCLE)]) / cfg.snr_b0 if cfg.snr_b0 else 0.0
    seq = seed_sequence(rng)
    images = {}
    for b in cfg.b_values:
        signal = area_average(_gather(labels, s0_lut * np.exp(-float(b) * adc_lut)), labels, grid)
        signal = rician(signal, sd, stream(seq, "dwi", round(float(b) * 1000)))
        images[float(b)] = image_from_array(signal.astype(np.float32), grid, units=Units.ARBITRARY)
    adc = _gather(labels, adc_lut)
    mean_adc = area_average(adc, labels, grid)
    mean_sq = area_average(adc**2, labels, grid)
    homogeneous = (mean_sq - mean_adc**2) <= (1e-9 * np.maximum(mean_adc, 1e-6)) ** 2
    return DWIResult(
        images=images,
        adc_truth=image_from_array(mean_adc.astype(np.float32), grid, units=Units.ADC),
        adc_truth_fine=set_units(image_from_array(adc.astype(np.float32), labels), Units.ADC),
        homogeneous=image_from_array(homogeneous, grid),
        noise_sd=sd, config=cfg)
