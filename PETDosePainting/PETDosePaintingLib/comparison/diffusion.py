"""Apparent diffusion coefficient (ADC) maps from diffusion-weighted MR images (mono-exponential model).

Model and fits (``dose_painting.md`` §4.1; Le Bihan et al., Radiology 1986;161:401-407 for the
mono-exponential ADC): ``S(b) = S0 exp(-b ADC)``, b in s/mm2, ADC in mm2/s (:attr:`Units.ADC`).
Every fit is closed-form per voxel and vectorised over voxels (loops run over b-values only).

* ``"two-point"``: ``ADC = ln(S(b1)/S(b2)) / (b2 - b1)`` with b1, b2 the lowest and highest selected
  b-values (intermediate ones are ignored and the result says so); ``S0 = S(b1) exp(ADC b1)``.
* ``"ols"``: ordinary least squares of ``ln S`` on ``b`` (slope = -ADC, intercept = ln S0).
* ``"wls"`` (default): weighted least squares of ``ln S`` on ``b`` with weights ``S(b)^2``, because the
  log transform inflates the noise of low signals: var(ln S) ~ sigma^2 / S^2 (first-order error
  propagation; Salvador et al., Hum Brain Mapp 2005;24:144-155). By default the weights use the
  signal *predicted* by a first OLS fit rather than the measured one (``wls_weights="predicted"``),
  as recommended by Veraart et al., NeuroImage 2013;81:335-346, since measured-signal weights
  correlate with the noise and bias the estimate; ``wls_weights="measured"`` gives the textbook
  variant. One reweighting step, no iteration (a deviation from fully iterated WLS, negligible at the
  SNR where the noise-floor mask keeps a voxel).

With one image per b-value and two b-values, the three fits agree exactly. Repeated acquisitions at
the same b-value are all used by the least-squares fits; the two-point fit averages them.

b-value selection: ``b_min``/``b_max`` (s/mm2) or an explicit ``select`` list. The default uses every
b-value, as scanner ADC maps do; with b < 150-200 s/mm2 included the ADC carries perfusion
(IVIM, ``dose_painting.md`` §4.1) and is biased upwards by the perfusion fraction; pass ``b_min=150``
(``petdp adc --bmin 150``) for a perfusion-free ADC. The result's notes say when low b-values were used.

Quality (``dose_painting.md`` §4.1):

* **Noise-floor mask**: a voxel is valid only if its signal at the highest selected b-value (the
  mean of repeated images there) is at least ``noise_factor`` x the noise SD (default 3: at 3 SD the
  Rician bias of the magnitude is about +5 %, so the ADC bias stays about 5 % or less; the reference
  gives 2-3 SD). The noise SD (per channel, same units as the signal) is given, or estimated from
  background air in the (first) lowest-b image (:func:`estimate_noise_sd`). Pure background (Rayleigh
  noise) still passes the test with probability ``exp(-k^2/2)`` (1.1 % at k = 3): the mask is a
  noise floor, not a body outline.
* Voxels with a non-positive or non-finite signal at any selected b-value are invalid (ln undefined).
* The ADC is clamped to ``adc_range`` (default [0, 3.5e-3] mm2/s; free water at 37 °C is about
  3.0e-3); clamped voxels stay valid and are counted.
* Invalid voxels hold ``fill_value`` (default 0) in the ADC and S0 images; the valid mask says which.

Not done here (see ``dose_painting.md`` §4.1): EPI distortion correction, registration of the DWI to
CT, IVIM or kurtosis fits, Rician bias correction.

Inputs: a list of :class:`DiffusionImage` (image + b-value), from :func:`diffusion_images` (images
with b-values given or in the ``PETDP_BValue`` metadata key), :func:`read_dwi` (NRRD/NIfTI/MHA files
and DICOM folders) or :func:`read_dwi_dicom`. DICOM b-values come from DiffusionBValue (0018,9087)
(also inside MR Diffusion Sequence (0018,9117)) or, failing that, from the vendor private tags:
Siemens (0019,xx0C) of private creator ``SIEMENS MR HEADER``; GE (0043,xx39) of ``GEMS_PARM_01``,
first value, less the 10^9 bias GE adds on scans with several b-values (GE Orchestra SDK, EPI recon);
Philips (2001,xx03) of ``Philips Imaging DD 001``. The usual offsets are (0019,100C), (0043,1039) and
(2001,1003); the private creator is checked, so a block reserved by another creator is never misread.
All images must share one grid exactly (:func:`~PETDosePaintingLib.imaging.image.check_same_geometry`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..errors import DicomError, GeometryError, InputError
from ..imaging.image import (
    Units,
    check_same_geometry,
    get_units,
    image_from_array,
    set_units,
)
from .metrics import FRAME_OF_REFERENCE_KEYS

#: Metadata key holding the b-value (s/mm2) of a DWI image file (written by the digital patient).
BVALUE_KEY = "PETDP_BValue"

#: Fit methods of :func:`compute_adc`.
METHODS = ("wls", "ols", "two-point")

#: Default ADC clamp (mm2/s), ``dose_painting.md`` §4.1.
DEFAULT_ADC_RANGE = (0.0, 3.5e-3)

#: Default noise-floor factor k (signal at the highest b must be >= k x noise SD).
DEFAULT_NOISE_FACTOR = 3.0

#: b-values below this (s/mm2) carry perfusion (IVIM); ``dose_painting.md`` §4.1 says 150-200.
PERFUSION_B_LIMIT = 150.0

#: Private b-value tags: (private creator, group, element offset, label, expected VR).
VENDOR_BVALUE_TAGS = (
    ("SIEMENS MR HEADER", 0x0019, 0x0C, "Siemens (0019,100C)", "IS"),
    ("GEMS_PARM_01", 0x0043, 0x39, "GE (0043,1039)", "IS"),
    ("Philips Imaging DD 001", 0x2001, 0x03, "Philips (2001,1003)", "FL"),
)

#: GE adds this to the b-value in (0043,1039) for scans with several b-values.
GE_BVALUE_BIAS = 1_000_000_000

#: ImageType values of derived maps that are not diffusion-weighted images (skipped in DICOM folders).
DERIVED_MAP_TYPES = frozenset({"ADC", "EADC", "FA", "EXP", "CALC_BVALUE"})

_B_DECIMALS = 3  # b-values equal to 1e-3 s/mm2 are the same b-value
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))  # median of a Rayleigh(sigma) variable / sigma
_RAYLEIGH_Q999 = float(np.sqrt(-2.0 * np.log(1e-3)))  # 99.9 % quantile of a Rayleigh(sigma) variable / sigma
_REFINE_ITERATIONS = 10


# --------------------------------------------------------------------------------------------------
# Result and input types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DiffusionImage:
    """One diffusion-weighted image and its b-value.

    Attributes
    ----------
    b_value : s/mm2, >= 0.
    image : 3D scalar SimpleITK image (magnitude signal, arbitrary units).
    source : where it came from (file, or DICOM folder and series), for messages.
    b_value_source : where the b-value came from (``"given"``, ``"metadata PETDP_BValue"``, a DICOM tag).
    """

    b_value: float
    image: sitk.Image
    source: str = "image"
    b_value_source: str = "given"


@dataclass(frozen=True, eq=False)
class ADCResult:
    """An ADC map and how it was made (see the module docstring for the definitions).

    Attributes
    ----------
    adc : float32 image in mm2/s (units :attr:`Units.ADC`), clamped to ``adc_range``; ``fill_value``
        in invalid voxels.
    s0 : float32 image of the fitted signal at b = 0 (same arbitrary units as the input).
    mask : uint8 0/1 label image of the valid voxels.
    b_values : the distinct b-values used by the fit (s/mm2), ascending.
    method : ``"wls"``, ``"ols"`` or ``"two-point"``.
    wls_weights : ``"predicted"`` or ``"measured"`` (meaningful for ``"wls"``).
    noise_sd : noise SD used by the noise-floor mask (signal units), ``None`` if the mask was off.
    noise_sd_source : how ``noise_sd`` was obtained.
    noise_factor : k of the noise-floor mask (0: off).
    adc_range : the clamp (mm2/s), ``None`` if not clamped.
    n_voxels, n_valid : grid voxels, valid voxels.
    n_nonpositive : voxels invalid because a selected signal is <= 0 or not finite.
    n_below_noise_floor : voxels (with positive signals) invalid because of the noise-floor mask.
    n_clamped_low, n_clamped_high : valid voxels whose ADC was raised / lowered by the clamp.
    sources : the inputs used, as ``"b=<b>: <source> (<b-value source>)"``.
    notes : anything a reader of the map should know (perfusion-weighted b-values, ignored b-values...).
    """

    adc: sitk.Image
    s0: sitk.Image
    mask: sitk.Image
    b_values: tuple[float, ...]
    method: str
    wls_weights: str
    noise_sd: float | None
    noise_sd_source: str
    noise_factor: float
    adc_range: tuple[float, float] | None
    n_voxels: int
    n_valid: int
    n_nonpositive: int
    n_below_noise_floor: int
    n_clamped_low: int
    n_clamped_high: int
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description of the fit (everything but the images)."""
        return {
            "units": Units.ADC, "method": self.method,
            "wls_weights": self.wls_weights if self.method == "wls" else None,
            "b_values_s_per_mm2": list(self.b_values), "noise_sd": self.noise_sd,
            "noise_sd_source": self.noise_sd_source, "noise_factor": self.noise_factor,
            "adc_range_mm2_per_s": None if self.adc_range is None else list(self.adc_range),
            "n_voxels": self.n_voxels, "n_valid": self.n_valid, "n_nonpositive": self.n_nonpositive,
            "n_below_noise_floor": self.n_below_noise_floor, "n_clamped_low": self.n_clamped_low,
            "n_clamped_high": self.n_clamped_high, "sources": list(self.sources), "notes": list(self.notes),
        }


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise SD estimated from background voxels (see :func:`estimate_noise_sd`)."""

    sd: float  #: per-channel noise SD, signal units
    n_voxels: int  #: background voxels used
    method: str  #: how the background was chosen and the estimator


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def compute_adc(
    dwi: Sequence[DiffusionImage],
    *,
    method: str = "wls",
    b_min: float | None = None,
    b_max: float | None = None,
    select: Sequence[float] | None = None,
    noise_sd: float | None = None,
    background_mask: sitk.Image | None = None,
    noise_factor: float = DEFAULT_NOISE_FACTOR,
    adc_range: tuple[float, float] | None = DEFAULT_ADC_RANGE,
    wls_weights: str = "predicted",
    fill_value: float = 0.0,
) -> ADCResult:
    """Fit the mono-exponential model voxel by voxel and return the ADC map (mm2/s).

    Parameters
    ----------
    dwi : the diffusion-weighted images with their b-values (s/mm2); all on one grid, at least two
        distinct b-values among those selected.
    method : ``"wls"`` (default), ``"ols"`` or ``"two-point"`` (module docstring).
    b_min, b_max : keep only b-values in [b_min, b_max] (s/mm2); default: no limit. ``b_min=150``
        drops the perfusion-weighted b-values.
    select : explicit b-values to use (s/mm2, each must be present); default: all (within the limits).
    noise_sd : noise SD per channel (signal units) for the noise-floor mask; default ``None``:
        estimated from background air in the lowest-b image (:func:`estimate_noise_sd`).
    background_mask : optional label image (on the DWI grid) of background voxels for that estimate.
    noise_factor : k of the noise-floor mask (default 3; 0 switches the mask off).
    adc_range : (low, high) clamp in mm2/s (default (0, 3.5e-3), ``dose_painting.md`` §4.1); ``None``: no clamp.
    wls_weights : ``"predicted"`` (default, Veraart et al. 2013) or ``"measured"`` signals for the WLS weights.
    fill_value : ADC and S0 value of invalid voxels (default 0).

    Raises
    ------
    InputError : fewer than two distinct b-values, negative b-values, unknown method, bad parameters,
        an input with physical units other than MR signal (e.g. an ADC map given as a DWI).
    GeometryError : the images are not on one grid.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if wls_weights not in ("predicted", "measured"):
        raise InputError(f"wls_weights must be 'predicted' or 'measured', got {wls_weights!r}")
    if noise_factor is None or not np.isfinite(noise_factor) or noise_factor < 0:
        raise InputError(f"noise_factor must be a finite number >= 0, got {noise_factor!r}")
    if noise_sd is not None and (not np.isfinite(noise_sd) or noise_sd <= 0):
        raise InputError(f"noise_sd must be a positive number (signal units), got {noise_sd!r}")
    if adc_range is not None:
        low, high = (float(v) for v in adc_range)
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise InputError(f"adc_range must be two finite numbers low < high (mm2/s), got {adc_range!r}")
        adc_range = (low, high)
    chosen = _select(_validated(dwi), b_min, b_max, select)
    b_all = np.array([d.b_value for d in chosen], dtype=np.float64)
    distinct = np.unique(np.round(b_all, _B_DECIMALS))
    reference = chosen[0].image
    notes: list[str] = []

    # signals (n_images, n_voxels) in float64
    signals = np.stack([sitk.GetArrayViewFromImage(d.image).astype(np.float64).ravel() for d in chosen])
    n_vox = signals.shape[1]
    positive = np.all(np.isfinite(signals) & (signals > 0), axis=0)

    # noise-floor mask on the mean signal at the highest selected b-value
    high_b = np.isclose(b_all, distinct[-1], atol=10.0 ** -_B_DECIMALS, rtol=0)
    top = signals[high_b].mean(axis=0)
    if noise_factor > 0:
        if noise_sd is not None:
            sd, sd_source = float(noise_sd), "given"
        else:
            # one acquisition (not a mean of repeats) so the background is exactly Rayleigh
            lowest = next(d.image for d in chosen if abs(d.b_value - distinct[0]) <= 10.0 ** -_B_DECIMALS)
            estimate = estimate_noise_sd(lowest, background_mask=background_mask)
            sd, sd_source = estimate.sd, estimate.method
        above = np.isfinite(top) & (top >= noise_factor * sd)
    else:
        sd, sd_source = None, "noise-floor mask off (noise_factor 0)"
        above = np.ones(n_vox, dtype=bool)
    valid = positive & above

    b_used: tuple[float, ...]
    if method == "two-point":
        lo = np.abs(b_all - distinct[0]) <= 10.0 ** -_B_DECIMALS
        b1, b2 = float(distinct[0]), float(distinct[-1])
        s1, s2 = signals[lo][:, valid].mean(axis=0), signals[high_b][:, valid].mean(axis=0)
        adc_v = np.log(s1 / s2) / (b2 - b1)
        s0_v = s1 * np.exp(adc_v * b1)
        b_used = (b1, b2)
        if distinct.size > 2:
            notes.append("two-point fit: used the lowest and highest selected b-values "
                         f"({b1:g}, {b2:g} s/mm2); ignored {', '.join(f'{b:g}' for b in distinct[1:-1])}")
    else:
        log_s = np.log(signals[:, valid])
        slope, intercept = _linear_fit(b_all, log_s, np.ones_like(log_s))
        if method == "wls":
            if wls_weights == "predicted":
                weights = np.exp(2.0 * (intercept[None, :] + slope[None, :] * b_all[:, None]))
            else:
                weights = np.exp(2.0 * log_s)
            slope, intercept = _linear_fit(b_all, log_s, weights)
        adc_v, s0_v = -slope, np.exp(intercept)
        b_used = tuple(float(b) for b in distinct)
    if min(b_used) < PERFUSION_B_LIMIT:
        low_used = [b for b in b_used if b < PERFUSION_B_LIMIT]
        notes.append(f"b-values below {PERFUSION_B_LIMIT:g} s/mm2 were used ({', '.join(f'{b:g}' for b in low_used)}):"
                     " the ADC includes perfusion (IVIM) and is biased upwards; use b_min=150 for a "
                     "perfusion-free ADC")

    n_low = n_high = 0
    if adc_range is not None:
        n_low = int(np.count_nonzero(adc_v < adc_range[0]))
        n_high = int(np.count_nonzero(adc_v > adc_range[1]))
        adc_v = np.clip(adc_v, adc_range[0], adc_range[1])

    adc = np.full(n_vox, float(fill_value), dtype=np.float64)
    s0 = np.full(n_vox, float(fill_value), dtype=np.float64)
    adc[valid], s0[valid] = adc_v, s0_v
    shape = sitk.GetArrayViewFromImage(reference).shape
    adc_image = image_from_array(adc.reshape(shape).astype(np.float32), reference, units=Units.ADC)
    s0_image = image_from_array(s0.reshape(shape).astype(np.float32), reference, units=Units.ARBITRARY)
    mask_image = image_from_array(valid.reshape(shape), reference)
    for key in FRAME_OF_REFERENCE_KEYS:  # keep the DICOM frame of reference, so later comparisons can check it
        if reference.HasMetaDataKey(key):
            for image in (adc_image, s0_image, mask_image):
                image.SetMetaData(key, reference.GetMetaData(key))
    return ADCResult(
        adc=adc_image, s0=s0_image, mask=mask_image, b_values=b_used, method=method, wls_weights=wls_weights,
        noise_sd=sd, noise_sd_source=sd_source, noise_factor=float(noise_factor), adc_range=adc_range,
        n_voxels=int(n_vox), n_valid=int(np.count_nonzero(valid)),
        n_nonpositive=int(np.count_nonzero(~positive)),
        n_below_noise_floor=int(np.count_nonzero(positive & ~above)),
        n_clamped_low=n_low, n_clamped_high=n_high,
        sources=tuple(f"b={d.b_value:g}: {d.source} ({d.b_value_source})" for d in chosen),
        notes=tuple(notes),
    )


def _linear_fit(b: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form weighted least squares of ``y[n, v]`` on ``b[n]`` per voxel v: (slope, intercept)."""
    bb = b[:, None]
    sw = w.sum(axis=0)
    sx = (w * bb).sum(axis=0)
    sy = (w * y).sum(axis=0)
    sxx = (w * bb * bb).sum(axis=0)
    sxy = (w * bb * y).sum(axis=0)
    slope = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
    return slope, (sy - slope * sx) / sw


def _validated(dwi: Sequence[DiffusionImage]) -> list[DiffusionImage]:
    items = list(dwi)
    if not items:
        raise InputError("no diffusion-weighted images given")
    for d in items:
        if not isinstance(d, DiffusionImage):
            raise InputError(f"expected DiffusionImage items (use diffusion_images()), got {type(d).__name__}")
        if not np.isfinite(d.b_value) or d.b_value < 0:
            raise InputError(f"{d.source}: b-value {d.b_value!r} is not a finite number >= 0 (s/mm2)")
        image = d.image
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{d.source}: a DWI must be a 3D scalar image, got {image.GetDimension()}D with "
                             f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel (split 4D DWI "
                             "into one 3D image per b-value)")
        units = get_units(image)
        if units not in (None, Units.ARBITRARY):
            raise InputError(f"{d.source}: has units {units!r}; a diffusion-weighted image holds MR signal "
                             f"({Units.ARBITRARY}) — is this an ADC or other derived map?")
    for d in items[1:]:
        try:
            check_same_geometry(items[0].image, d.image, items[0].source, d.source)
        except GeometryError as exc:
            raise GeometryError(f"diffusion-weighted images must share one grid exactly: {exc}") from None
    return items


def _select(items: list[DiffusionImage], b_min: float | None, b_max: float | None,
            select: Sequence[float] | None) -> list[DiffusionImage]:
    available = sorted({round(d.b_value, _B_DECIMALS) for d in items})
    for name, value in (("b_min", b_min), ("b_max", b_max)):
        if value is not None and (not np.isfinite(value) or value < 0):
            raise InputError(f"{name} must be a finite number >= 0 (s/mm2), got {value!r}")
    chosen = [d for d in items if (b_min is None or d.b_value >= b_min - 1e-9)
              and (b_max is None or d.b_value <= b_max + 1e-9)]
    if select is not None:
        wanted = sorted({round(float(b), _B_DECIMALS) for b in select})
        missing = [b for b in wanted if b not in available]
        if missing:
            raise InputError(f"selected b-value(s) {', '.join(f'{b:g}' for b in missing)} s/mm2 are not among "
                             f"the images' b-values ({', '.join(f'{b:g}' for b in available)})")
        chosen = [d for d in chosen if round(d.b_value, _B_DECIMALS) in wanted]
    distinct = sorted({round(d.b_value, _B_DECIMALS) for d in chosen})
    if len(distinct) < 2:
        limits = []
        if b_min is not None:
            limits.append(f"b_min={b_min:g}")
        if b_max is not None:
            limits.append(f"b_max={b_max:g}")
        if select is not None:
            limits.append("select=" + ",".join(f"{float(b):g}" for b in select))
        have = ", ".join(f"{b:g}" for b in available)
        if not limits:
            raise InputError(f"an ADC needs at least two distinct b-values; the images have only {have} s/mm2")
        raise InputError(f"an ADC needs at least two distinct b-values; the images have {have} s/mm2, and "
                         f"{', '.join(limits)} leaves {', '.join(f'{b:g}' for b in distinct) or 'none'}")
    return chosen


def estimate_noise_sd(
    image: sitk.Image,
    *,
    background_mask: sitk.Image | None = None,
    min_voxels: int = 100,
) -> NoiseEstimate:
    """Per-channel noise SD of a magnitude MR image from background voxels (Rayleigh statistics).

    In air the magnitude of a signal with complex Gaussian noise of SD sigma per channel is Rayleigh
    distributed (Gudbjartsson & Patz, Magn Reson Med 1995;34:910-914), with median sigma sqrt(2 ln 2).
    The estimate is ``median(background) / sqrt(2 ln 2)``: the median keeps it robust to a few tissue
    voxels in the background (Sijbers et al., Magn Reson Imaging 1998;16:87-90 discuss background
    estimators; this one is our choice).

    Background: ``background_mask`` (label image on the image's grid) if given; otherwise the voxels
    below Otsu's threshold (Otsu, IEEE Trans SMC 1979;9:62-66) that are connected (6-connectivity) to
    the image border — the air around the patient, excluding low-signal tissue inside — then, since
    Otsu's threshold also takes in dark tissue at the body surface (fat-suppressed fat, partial
    volume), the voxels connected to the border below the 99.9 % quantile of the Rayleigh distribution
    of the current estimate (3.72 sigma), re-estimated until it changes by less than 0.1 % (at most 10
    times). Truncating at the 99.9 % quantile moves the median by less than 0.1 %. Dark tissue that
    remains in the background (signal of the order of the noise) can only raise the median, so the
    estimate tends to err high and the noise-floor mask on the strict side.

    Assumes single-channel (or SENSE-combined) magnitude data; a multi-coil sum-of-squares
    reconstruction has non-central chi noise and this estimate is then biased (give the SD instead).

    Raises :class:`InputError` when fewer than ``min_voxels`` background voxels are found or all are
    zero (a scanner that masks the background): give the noise SD explicitly then.
    """
    values = sitk.GetArrayViewFromImage(image).astype(np.float64)
    if background_mask is not None:
        check_same_geometry(image, background_mask, "the DWI", "the background mask")
        background = sitk.GetArrayViewFromImage(background_mask) != 0
        how = "given background mask"
    else:
        finite = values[np.isfinite(values)]
        if finite.size == 0 or np.ptp(finite) == 0:
            raise InputError("the lowest-b DWI is constant: no background to estimate the noise SD from; "
                             "give the noise SD (--noise-sd)")
        background = _border_connected(np.isfinite(values) & (values < threshold_otsu(finite)))
        for _ in range(_REFINE_ITERATIONS):  # tighten to the Rayleigh 99.9 % quantile of the current estimate
            samples = values[background]
            if samples.size < min_voxels or np.median(samples) <= 0:
                break
            sd = float(np.median(samples)) / _RAYLEIGH_MEDIAN
            refined = _border_connected(np.isfinite(values) & (values < _RAYLEIGH_Q999 * sd))
            if np.count_nonzero(refined) < min_voxels:
                break
            new_sd = float(np.median(values[refined])) / _RAYLEIGH_MEDIAN
            background = refined
            if abs(new_sd - sd) <= 1e-3 * sd:
                break
        how = ("background air of the lowest-b image (voxels connected to the image border below Otsu's threshold, "
               "then below the Rayleigh 99.9 % quantile of the estimate, iterated)")
    samples = values[background & np.isfinite(values)]
    if samples.size < min_voxels:
        raise InputError(f"only {samples.size} background voxel(s) found to estimate the noise SD (need "
                         f"{min_voxels}); give the noise SD (--noise-sd) or a background mask")
    median = float(np.median(samples))
    if median <= 0:
        raise InputError("the background voxels are zero (the scanner masked the background?), so the noise SD "
                         "cannot be estimated from them; give the noise SD (--noise-sd)")
    return NoiseEstimate(sd=median / _RAYLEIGH_MEDIAN, n_voxels=int(samples.size),
                         method=f"estimated from {samples.size} voxels of {how}, Rayleigh median / sqrt(2 ln 2)")


# --------------------------------------------------------------------------------------------------
# Inputs: images with b-values, files, DICOM
# --------------------------------------------------------------------------------------------------


def _border_connected(candidates: np.ndarray) -> np.ndarray:
    """The voxels of ``candidates`` connected (6-connectivity) to the array border."""
    labels, _ = ndimage.label(candidates)
    border = np.zeros(candidates.shape, dtype=bool)
    for axis in range(candidates.ndim):
        index: list[Any] = [slice(None)] * candidates.ndim
        for end in (0, -1):
            index[axis] = end
            border[tuple(index)] = True
    touching = np.unique(labels[border & candidates])
    return np.isin(labels, touching[touching > 0])


def b_value_from_metadata(image: sitk.Image, what: str = "image") -> float | None:
    """The b-value (s/mm2) recorded in the image's ``PETDP_BValue`` metadata, or ``None``."""
    if not image.HasMetaDataKey(BVALUE_KEY):
        return None
    raw = image.GetMetaData(BVALUE_KEY).strip()
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"{what}: metadata {BVALUE_KEY} = {raw!r} is not a number") from None
    return value


def diffusion_images(
    images: Sequence[sitk.Image],
    b_values: Sequence[float] | None = None,
    *,
    sources: Sequence[str] | None = None,
) -> list[DiffusionImage]:
    """Pair images with b-values (s/mm2): given (one per image) or from each image's ``PETDP_BValue`` metadata.

    A given b-value that contradicts the image's metadata is refused (:class:`InputError`).
    """
    images = list(images)
    sources = list(sources) if sources is not None else [f"image {n + 1}" for n in range(len(images))]
    if len(sources) != len(images):
        raise InputError(f"{len(sources)} source names for {len(images)} images")
    if b_values is not None and len(b_values) != len(images):
        raise InputError(f"{len(b_values)} b-value(s) given for {len(images)} image(s); give one per image")
    out = []
    for n, (image, source) in enumerate(zip(images, sources, strict=True)):
        recorded = b_value_from_metadata(image, source)
        if b_values is not None:
            b = float(b_values[n])
            if not np.isfinite(b) or b < 0:
                raise InputError(f"{source}: b-value {b_values[n]!r} is not a finite number >= 0 (s/mm2)")
            if recorded is not None and abs(recorded - b) > 1e-3:
                raise InputError(f"{source}: b-value {b:g} given but the file records {BVALUE_KEY} = {recorded:g}")
            out.append(DiffusionImage(b, image, source, "given"))
        elif recorded is None:
            raise InputError(f"{source}: no b-value recorded ({BVALUE_KEY} metadata); give the b-values "
                             "explicitly (--bvalues)")
        else:
            out.append(DiffusionImage(recorded, image, source, f"metadata {BVALUE_KEY}"))
    for d in out:
        if not np.isfinite(d.b_value) or d.b_value < 0:
            raise InputError(f"{d.source}: b-value {d.b_value!r} is not a finite number >= 0 (s/mm2)")
    return out


def read_dwi(paths: Sequence[str | Path], b_values: Sequence[float] | None = None) -> list[DiffusionImage]:
    """Read DWI inputs: image files (NRRD, NIfTI, MHA) and/or DICOM folders.

    Without ``b_values``: files must carry ``PETDP_BValue`` and DICOM folders their b-values in the
    headers (a folder may hold one series per b-value or one series with several; see
    :func:`read_dwi_dicom`). With ``b_values`` (one per path): each path must be one image (a file,
    or a folder with one single-b series); header b-values, if present, must agree.
    """
    from ..imaging.io import read_image

    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no DWI inputs given")
    if b_values is not None and len(b_values) != len(paths):
        raise InputError(f"{len(b_values)} b-value(s) given for {len(paths)} DWI input(s); give one per input")
    out: list[DiffusionImage] = []
    for n, path in enumerate(paths):
        if not path.exists():
            raise InputError("no such file or directory", path)
        given = None if b_values is None else float(b_values[n])
        if given is not None and (not np.isfinite(given) or given < 0):
            raise InputError(f"b-value {given!r} is not a finite number >= 0 (s/mm2)", path)
        if path.is_dir():
            if given is None:
                out += read_dwi_dicom(path)
            else:
                out.append(_dicom_with_given_b(path, given))
        else:
            image = read_image(path)
            out += diffusion_images([image], None if given is None else [given], sources=[str(path)])
    return out


def _dicom_with_given_b(path: Path, b_value: float) -> DiffusionImage:
    from ..imaging.dicom_series import read_dicom_series

    series = read_dicom_series(path, modality="MR")
    recorded = {v for v in (dicom_b_value(ds) for ds in series.datasets) if v is not None}
    for value, tag in recorded:
        if abs(value - b_value) > 1e-3:
            raise InputError(f"b-value {b_value:g} given but the DICOM header {tag} says {value:g}", path)
    return DiffusionImage(b_value, series.image, f"{path} (series {series.series_instance_uid})", "given")


def dicom_b_value(ds: Dataset) -> tuple[float, str] | None:
    """The b-value (s/mm2) of one DICOM image header and the tag it came from, or ``None`` if none is recorded.

    Order: DiffusionBValue (0018,9087) at the top level, then inside MR Diffusion Sequence (0018,9117),
    then the vendor private tags of :data:`VENDOR_BVALUE_TAGS` (private creator checked). GE's 10^9
    multi-b bias is removed. Raises :class:`DicomError` for a present but unreadable value.
    """
    for holder, label in ((ds, "DiffusionBValue (0018,9087)"),
                          (_first_item(ds, "MRDiffusionSequence"), "DiffusionBValue in MRDiffusionSequence")):
        if holder is None:
            continue
        element = holder.get("DiffusionBValue")
        if element is not None and element != "":
            values = _numbers(element, "FD")
            if values:
                return values[0], label
    for creator, group, offset, label, vr in VENDOR_BVALUE_TAGS:
        try:
            element = ds.get_private_item(group, offset, creator)
        except (KeyError, ValueError):
            continue
        values = _numbers(element.value, vr)
        if not values:
            continue
        value = values[0]
        if creator == "GEMS_PARM_01" and value >= GE_BVALUE_BIAS:
            value -= GE_BVALUE_BIAS
        return float(value), label
    return None


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _numbers(value: Any, vr: str) -> list[float]:
    """Numbers of a DICOM value (number, string, multi-value, or raw bytes of an unknown-VR private tag)."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if vr in ("FL", "FD"):
            size = 4 if vr == "FL" else 8
            if len(raw) % size:
                return []
            return [float(v) for v in struct.unpack(f"<{len(raw) // size}{'f' if size == 4 else 'd'}", raw)]
        value = raw.decode("ascii", errors="replace").strip("\x00 ")
    if isinstance(value, str):
        parts = [p.strip() for p in value.split("\\") if p.strip()]
    elif isinstance(value, int | float):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = [value]
    out = []
    for part in parts:
        try:
            number = float(part)
        except (TypeError, ValueError):
            return []
        if not np.isfinite(number):
            return []
        out.append(number)
    return out


def _image_types(ds: Dataset) -> set[str]:
    value = ds.get("ImageType")
    if value is None:
        return set()
    items = [value] if isinstance(value, str) else list(value)
    return {str(v).strip().upper() for v in items}


def read_dwi_dicom(
    directory: str | Path,
    *,
    series_uids: Sequence[str] | None = None,
    slice_tolerance_mm: float = 0.05,
) -> list[DiffusionImage]:
    """Read the diffusion-weighted MR images of a DICOM folder (searched recursively), one image per b-value and series.

    Every single-frame MR image file whose header records a b-value (:func:`dicom_b_value`) is used;
    files are grouped by Series Instance UID and b-value, so a folder may hold one series per b-value,
    one series holding several b-values, or both (repeated acquisitions of a b-value in different
    series give repeated images). Within a group, slices are sorted along the slice normal and
    checked like :func:`~PETDosePaintingLib.imaging.dicom_series.read_dicom_series` (one orientation,
    spacing and matrix; no duplicate positions; uniform slice spacing; no gantry tilt) and rescaled with
    Rescale Slope/Intercept. Derived maps (ImageType ADC, EADC, FA, EXP, CALC_BVALUE) and MR files
    without a b-value are skipped when other files have one. ``series_uids`` restricts the series used.

    Raises :class:`DicomError` naming the file: no b-value anywhere, several images at one position and
    b-value in a series (separate diffusion directions: only trace-weighted images are supported),
    inconsistent geometry, patient or frame of reference, Philips private scale slopes (2005,100E)
    differing between files (the signals would not be comparable).
    """
    from ..imaging.dicom_series import candidate_files, read_header

    directory = Path(directory)
    if not directory.exists():
        raise InputError("no such file or directory", directory)
    groups: dict[tuple[str, float], list[tuple[Path, Dataset, str]]] = {}
    without_b: list[tuple[Path, str]] = []
    derived: list[Path] = []
    mr_files = 0
    for path in candidate_files(directory):
        ds = read_header(path)
        if ds is None or str(ds.get("Modality", "")).strip().upper() != "MR":
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if series_uids is not None and uid not in series_uids:
            continue
        mr_files += 1
        if _image_types(ds) & DERIVED_MAP_TYPES:
            derived.append(path)
            continue
        frames = ds.get("NumberOfFrames")
        if frames not in (None, "") and int(frames) > 1:
            raise DicomError(f"is a multi-frame (enhanced) MR object with {frames} frames; only single-frame "
                             "DWI series are supported (convert it, e.g. with dcm2niix, and give the b-values)", path)
        found = dicom_b_value(ds)
        if found is None:
            without_b.append((path, uid))
            continue
        b, tag = found
        if b < 0:
            raise DicomError(f"{tag} holds the negative b-value {b:g}", path)
        groups.setdefault((uid, round(b, _B_DECIMALS)), []).append((path, ds, tag))
    if not groups:
        if mr_files == 0:
            raise DicomError("no MR image files found" + (" in the selected series" if series_uids else ""), directory)
        raise DicomError(f"none of the {mr_files} MR file(s) records a b-value (DiffusionBValue (0018,9087) or the "
                         "Siemens/GE/Philips private tags); give one folder per b-value with --bvalues", directory)
    series_with_b = {uid for uid, _ in groups}
    for path, uid in without_b:
        if uid in series_with_b:
            raise DicomError("records no b-value while other images of its series do; the series cannot be split "
                             "by b-value", path)
    out = []
    first_ds: tuple[Path, Dataset] | None = None
    for (uid, b), members in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        for path, ds, _ in members:
            if first_ds is None:
                first_ds = (path, ds)
                continue
            for keyword in ("PatientID", "FrameOfReferenceUID"):
                if ds.get(keyword) != first_ds[1].get(keyword):
                    raise DicomError(f"{keyword} is {ds.get(keyword)!r} here but {first_ds[1].get(keyword)!r} in "
                                     f"{first_ds[0]}; all DWI images must come from one patient and frame of "
                                     "reference", path)
        image = _stack_slices([(p, d) for p, d, _ in members], slice_tolerance_mm, b)
        tags = sorted({t for _, _, t in members})
        out.append(DiffusionImage(float(b), image, f"{directory} (series {uid})", ", ".join(tags)))
    _check_philips_scale([(p, d) for members in groups.values() for p, d, _ in members])
    return out


def _check_philips_scale(members: list[tuple[Path, Dataset]]) -> None:
    slopes: dict[float, Path] = {}
    for path, ds in members:
        try:
            element = ds.get_private_item(0x2005, 0x0E, "Philips MR Imaging DD 001")
        except (KeyError, ValueError):
            continue
        values = _numbers(element.value, "FL")
        if values:
            slopes.setdefault(round(values[0], 6), path)
    if len(slopes) > 1:
        (s1, p1), (s2, p2) = list(slopes.items())[:2]
        raise DicomError(f"Philips private scale slope (2005,100E) is {s1:g} in {p1} but {s2:g} in {p2}; signals "
                         "of different b-values would not be comparable (convert with a tool that applies "
                         "Philips floating-point scaling and give the b-values)", p1)


def _stack_slices(members: list[tuple[Path, Dataset]], tolerance_mm: float, b_value: float) -> sitk.Image:
    """One 3D image (float32, a.u.) from single-frame MR slices of one series and b-value."""
    from ..imaging.dicom_series import read_slice_values, stack_slices

    stack = stack_slices(members, tolerance_mm=tolerance_mm, what=f"at b = {b_value:g} s/mm2",
                         duplicate_hint="separate diffusion directions or repeats in one series are not supported; "
                                        "use the trace-weighted images")
    members, positions, dz, n = stack.members, stack.positions, stack.slice_spacing_mm, len(stack.members)
    rows, columns, spacing = stack.rows, stack.columns, stack.pixel_spacing
    row_dir, col_dir, normal = stack.row_dir, stack.col_dir, stack.normal
    first = members[0][1]
    values = np.empty((n, rows, columns), dtype=np.float64)
    for k, (path, _) in enumerate(members):
        values[k] = read_slice_values(path, rows, columns, "MR")[0]
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetSpacing((float(spacing[1]), float(spacing[0]), float(dz)))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    set_units(image, Units.ARBITRARY)
    image.SetMetaData(BVALUE_KEY, f"{b_value:g}")
    frame = first.get("FrameOfReferenceUID")
    if frame:
        image.SetMetaData(FRAME_OF_REFERENCE_KEYS[0], str(frame))
    return image


__all__ = [
    "BVALUE_KEY", "DEFAULT_ADC_RANGE", "DEFAULT_NOISE_FACTOR", "METHODS", "ADCResult", "DiffusionImage",
    "NoiseEstimate", "b_value_from_metadata", "compute_adc", "dicom_b_value", "diffusion_images",
    "estimate_noise_sd", "read_dwi", "read_dwi_dicom",
]
