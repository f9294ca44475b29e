"""Quantification of a PET GTV: SUVmax, SUVpeak, SUVmean, MTV and TLG, with the background used.

Definitions
-----------
* **SUVmax**: the highest voxel value inside the GTV mask.
* **SUVpeak**: the highest mean SUV in a sphere of ``peak_diameter_mm`` (default 12 mm) whose centre lies
  inside the GTV (the PERCIST "moving sphere"). Lodge MA et al., J Nucl Med 2012;53:1041 define it as a
  1.2 cm diameter sphere; PERCIST 1.0 (Wahl RL et al., J Nucl Med 2009;50:122S [M]) speaks of a 1 cm3
  sphere, whose diameter is 12.4 mm. Implementation (as in the MUST-segmenter): the image is convolved with
  a normalised sphere kernel built on the voxel grid with exact partial-voxel weights
  (:func:`~PETDosePaintingLib.phantom.shapes.sphere_fraction`, 5x5x5 supersampling), and the maximum of the
  convolved image over the GTV voxels is taken. The sphere averages the image itself, also where it
  extends beyond the GTV (a GTV smaller than the sphere gets a SUVpeak diluted by its surroundings, as
  in PERCIST). Near the image border the average is taken over the part of the sphere inside the image.
  Deviation: the sphere centre is restricted to voxel centres (no sub-voxel search), as in every
  voxel-based implementation.
* **SUVmean**: mean SUV over the GTV voxels. **MTV**: voxel count times voxel volume, in mL (the project's
  one volume definition, :func:`~PETDosePaintingLib.imaging.image.mask_volume_ml`).
* **TLG** (total lesion glycolysis, Larson SM et al., Clin Positron Imaging 1999;2:159):
  SUVmean x MTV, in SUV·mL (g when SUVbw is in g/mL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import signal

from ..errors import InputError
from ..imaging.image import (
    SUV_UNITS,
    check_same_geometry,
    get_units,
    index_to_point,
    make_grid,
    require_binary_mask,
    require_units,
    voxel_volume_ml,
)
from ..phantom.shapes import sphere_fraction
from .common import SegmentationResult, check_pet

#: SUVpeak sphere diameter (mm): 1.2 cm, Lodge et al. 2012 (a 1 cm3 sphere would be 12.4 mm).
PEAK_DIAMETER_MM = 12.0

_KERNELS: dict[tuple[float, float, float, float], np.ndarray] = {}


def peak_kernel(spacing_kji: Sequence[float], diameter_mm: float = PEAK_DIAMETER_MM) -> np.ndarray:
    """Normalised sphere kernel (``[k, j, i]``, odd size, sum 1) of ``diameter_mm`` on a voxel grid.

    Each weight is the fraction of the voxel inside the sphere (5x5x5 supersampling), so partial voxels
    at the surface count in proportion. Kernels are cached per (spacing, diameter).
    """
    spacing = np.asarray(spacing_kji, dtype=float)
    if not (np.isfinite(diameter_mm) and diameter_mm > 0):
        raise InputError(f"peak_diameter_mm must be a positive length in mm, got {diameter_mm!r}")
    key = (*np.round(spacing, 6), round(float(diameter_mm), 6))
    if key not in _KERNELS:
        radius = 0.5 * float(diameter_mm)
        half = np.ceil(radius / spacing + 0.5).astype(int)  # k, j, i
        size_ijk = [int(2 * h + 1) for h in half[::-1]]
        spacing_ijk = spacing[::-1]
        grid = make_grid(size_ijk, spacing_ijk, origin=[-h * s for h, s in zip(half[::-1], spacing_ijk, strict=True)])
        kernel = sphere_fraction(grid, (0.0, 0.0, 0.0), radius).astype(np.float64)
        kernel /= kernel.sum()
        _KERNELS[key] = kernel
    return _KERNELS[key]


def moving_sphere_mean(values: np.ndarray, spacing_kji: Sequence[float], diameter_mm: float = PEAK_DIAMETER_MM,
                       support: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``values`` in a sphere of ``diameter_mm`` centred on every voxel (same shape as ``values``).

    Outside the array, or outside ``support`` (a boolean mask) if one is given, voxels do not count: the
    mean is taken over the part of the sphere that is inside (normalised convolution). FFT convolution.
    """
    kernel = peak_kernel(spacing_kji, diameter_mm)
    weight = np.ones(values.shape) if support is None else support.astype(np.float64)
    numerator = signal.fftconvolve(values * weight, kernel, mode="same")
    denominator = signal.fftconvolve(weight, kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denominator > 1e-6, numerator / np.maximum(denominator, 1e-12), -np.inf)
    return out


def suv_peak(values: np.ndarray, spacing_kji: Sequence[float], centres: np.ndarray,
             diameter_mm: float = PEAK_DIAMETER_MM, support: np.ndarray | None = None
             ) -> tuple[float, tuple[int, int, int]]:
    """SUVpeak and its sphere centre (``[k, j, i]`` index) with the centre restricted to ``centres``.

    ``values`` and ``centres`` (boolean) have the same shape; only a box around the centres (plus the sphere
    radius) is convolved. ``support`` restricts which voxels the sphere averages (see
    :func:`moving_sphere_mean`).
    """
    if not centres.any():
        raise InputError("SUVpeak needs at least one voxel where the sphere may be centred")
    kernel = peak_kernel(spacing_kji, diameter_mm)
    half = np.array(kernel.shape) // 2
    nz = np.nonzero(centres)
    box = tuple(slice(max(0, int(a.min()) - h), min(n, int(a.max()) + h + 1))
                for a, h, n in zip(nz, half, values.shape, strict=True))
    sub_support = None if support is None else support[box]
    means = moving_sphere_mean(values[box], spacing_kji, diameter_mm, sub_support)
    means = np.where(centres[box], means, -np.inf)
    flat = int(np.argmax(means))
    local = np.unravel_index(flat, means.shape)
    index = tuple(int(loc + b.start) for loc, b in zip(local, box, strict=True))
    return float(means[local]), index  # type: ignore[return-value]


@dataclass
class GTVQuantification:
    """Uptake and volume figures of one GTV (values in the PET's units, SUV for SUV images).

    ``suv_max_lps`` and ``suv_peak_lps`` are LPS mm positions of the hottest voxel and of the SUVpeak
    sphere centre. ``tlg`` is in SUV·mL. ``background`` is the background value the GTV was segmented
    with (or measured in a reference VOI), ``background_definition`` says how it was obtained, and
    ``suv_max_to_background`` is SUVmax / background when both are known.
    """

    units: str | None
    suv_max: float
    suv_max_lps: tuple[float, float, float]
    suv_peak: float
    suv_peak_lps: tuple[float, float, float]
    suv_peak_diameter_mm: float
    suv_mean: float
    suv_sd: float
    mtv_ml: float
    tlg: float
    n_voxels: int
    background: float | None = None
    background_definition: str | None = None
    suv_max_to_background: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return asdict(self)


def quantify_gtv(
    suv: sitk.Image,
    gtv: sitk.Image,
    *,
    background: float | sitk.Image | None = None,
    background_definition: str | None = None,
    peak_diameter_mm: float = PEAK_DIAMETER_MM,
    require_suv: bool = True,
) -> GTVQuantification:
    """SUVmax, SUVpeak, SUVmean, MTV and TLG of the GTV mask ``gtv`` on the PET image ``suv``.

    Parameters
    ----------
    suv : PET image; SUV units are required unless ``require_suv`` is False (then the figures are in the
        image's own units and ``tlg`` in units·mL).
    gtv : binary mask on the PET grid (non-empty).
    background : the background used for the GTV: a number (input units), or a binary reference-VOI mask
        on the PET grid whose mean is taken. ``None``: not reported.
    background_definition : free text recorded with the number (e.g. how a segmentation method obtained
        it); for a VOI it is filled in automatically.
    peak_diameter_mm : SUVpeak sphere diameter, default 12 mm (Lodge et al. 2012; 12.4 mm for exactly 1 cm3).

    See the module docstring for the definitions.
    """
    units = require_units(suv, SUV_UNITS, "PET image") if require_suv else get_units(suv)
    values = check_pet(suv)
    check_same_geometry(suv, gtv, "PET image", "GTV mask")
    inside = require_binary_mask(gtv, "GTV mask")
    spacing_kji = np.asarray(suv.GetSpacing())[::-1]
    gtv_values = values[inside]
    max_index = np.unravel_index(int(np.argmax(np.where(inside, values, -np.inf))), values.shape)
    peak_value, peak_index = suv_peak(values, spacing_kji, inside, peak_diameter_mm)
    n_voxels = int(inside.sum())
    mtv = n_voxels * voxel_volume_ml(suv)
    suv_mean = float(gtv_values.mean())
    bg_value: float | None = None
    definition = background_definition
    if isinstance(background, sitk.Image):
        check_same_geometry(suv, background, "PET image", "background VOI")
        bg_mask = require_binary_mask(background, "background VOI")
        bg_value = float(values[bg_mask].mean())
        definition = definition or f"mean of a reference VOI of {int(bg_mask.sum())} voxels"
    elif background is not None:
        bg_value = float(background)
        if not np.isfinite(bg_value):
            raise InputError(f"background must be a finite number, got {background!r}")
    suv_max = float(values[max_index])
    return GTVQuantification(
        units=units,
        suv_max=suv_max,
        suv_max_lps=index_to_point(suv, max_index[::-1]),
        suv_peak=peak_value,
        suv_peak_lps=index_to_point(suv, peak_index[::-1]),
        suv_peak_diameter_mm=float(peak_diameter_mm),
        suv_mean=suv_mean,
        suv_sd=float(gtv_values.std(ddof=1)) if n_voxels > 1 else 0.0,
        mtv_ml=mtv,
        tlg=suv_mean * mtv,
        n_voxels=n_voxels,
        background=bg_value,
        background_definition=definition if bg_value is not None else None,
        suv_max_to_background=suv_max / bg_value if bg_value is not None and bg_value > 0 else None,
    )


def quantify_result(suv: sitk.Image, result: SegmentationResult, **kwargs: Any) -> GTVQuantification:
    """:func:`quantify_gtv` of a segmentation result's mask, reporting the background the method used.

    The background definition is taken from ``result.details["background"]["definition"]`` when the
    method recorded one. Keyword arguments are passed on (``peak_diameter_mm``, ``require_suv``).
    """
    definition = None
    bg_details = result.details.get("background") if isinstance(result.details, dict) else None
    if isinstance(bg_details, dict):
        definition = bg_details.get("definition")
    if result.background is not None and definition is None:
        definition = f"background used by the {result.method!r} method"
    return quantify_gtv(suv, result.mask, background=result.background, background_definition=definition,
                        **kwargs)
