"""Voxel-wise correlation between two images inside a region (e.g. FDG SUV against ADC in the GTV).

What is computed
----------------
Both images are brought onto one grid (below); the paired values of the grid voxels that lie in the
region, inside both images' fields of view, are finite, and are valid in the optional validity masks
(e.g. the ADC fit's mask of valid voxels) are correlated:

* **Pearson** r (linear association), two-sided p-value for r = 0 (exact, from the t distribution,
  assuming bivariate normality) and a confidence interval from Fisher's z transform (Fisher,
  Biometrika 1915;10:507-521), all from :func:`scipy.stats.pearsonr`;
* **Spearman** rho (monotone association: Pearson r of the ranks; Spearman, Am J Psychol
  1904;15:72-101), two-sided p-value from :func:`scipy.stats.spearmanr` (t approximation) and a
  confidence interval from Fisher's z with the standard error ``sqrt((1 + rho^2/2) / (n - 3))`` of
  Bonett & Wright (Psychometrika 2000;65:23-28);
* ``n_voxels``: the number of voxel pairs.

Caveat (stated in every result's notes): neighbouring voxels are not independent (scanner PSF,
reconstruction, interpolation), so the effective sample size is far smaller than ``n_voxels``; the
p-values and confidence intervals assume independent pairs and are therefore too optimistic. Report
them as descriptive, or use lesion-level statistics for inference.

Resampling (stated in every result)
-----------------------------------
``grid="coarser"`` (default): the image with the *finer* grid (smaller voxel volume) is resampled onto
the grid of the *coarser* one (on a tie, ``x`` goes onto the grid of ``y``), with linear interpolation
(``interpolation``), so no image is up-sampled into values it never measured. Other choices:
``"finer"``, ``"x"``, ``"y"`` or an image whose grid is used (both images resampled). Images already
on the chosen grid are used as they are. The region and the validity masks are resampled by nearest
neighbour. Voxels of the chosen grid whose centres fall outside an image's field of view are excluded
(never filled with a default value). Resampling uses
:func:`~PETDosePaintingLib.imaging.resample.resample_to_reference` (identity transform: the images
must already be registered, in one frame of reference).

Refused (:class:`~PETDosePaintingLib.errors.InputError` / :class:`GeometryError`): images whose recorded
DICOM frames of reference differ, images that do not overlap in space, an empty region or one with no
voxel in the overlap, fewer than 4 voxel pairs, and a constant image in the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import stats

from ..errors import GeometryError, InputError
from ..imaging.image import get_units, same_geometry
from ..imaging.resample import resample_mask, resample_to_reference
from .metrics import FRAME_OF_REFERENCE_KEYS

#: Grid choices of :func:`voxel_correlation` (an image may be given instead).
GRID_CHOICES = ("coarser", "finer", "x", "y")

#: Fewest voxel pairs accepted (Fisher's z interval needs n > 3).
MIN_VOXELS = 4

_INDEPENDENCE_NOTE = ("voxels are spatially correlated (PSF, reconstruction, interpolation): p-values and "
                      "confidence intervals assume independent pairs and are too optimistic")


@dataclass(frozen=True, eq=False)
class CorrelationResult:
    """Voxel-wise correlation of two images in a region (definitions in the module docstring).

    Attributes
    ----------
    x_name, y_name, region_name : names used in messages and reports.
    x_units, y_units : the units recorded in the images (``None`` if none).
    n_voxels : voxel pairs used.
    pearson_r, pearson_p, pearson_ci : Pearson r, two-sided p-value, confidence interval (low, high).
    spearman_rho, spearman_p, spearman_ci : the same for Spearman's rho.
    confidence_level : of both intervals (default 0.95).
    grid : whose grid the values were compared on: ``"shared"`` (both already on one grid), ``"x"``,
        ``"y"`` or ``"custom"``.
    grid_spacing_mm : its voxel spacing (i, j, k) in mm.
    interpolation : interpolation used for the image(s) resampled (``None`` if none was).
    resampling : one sentence saying what was resampled onto what, and how.
    x_values, y_values : the paired values (1D arrays, in the images' units).
    notes : caveats (spatial correlation of voxels, excluded voxels...).
    """

    x_name: str
    y_name: str
    region_name: str
    x_units: str | None
    y_units: str | None
    n_voxels: int
    pearson_r: float
    pearson_p: float
    pearson_ci: tuple[float, float]
    spearman_rho: float
    spearman_p: float
    spearman_ci: tuple[float, float]
    confidence_level: float
    grid: str
    grid_spacing_mm: tuple[float, float, float]
    interpolation: str | None
    resampling: str
    x_values: np.ndarray = field(repr=False)
    y_values: np.ndarray = field(repr=False)
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (everything but the value arrays)."""
        return {
            "x": self.x_name, "y": self.y_name, "region": self.region_name, "x_units": self.x_units,
            "y_units": self.y_units, "n_voxels": self.n_voxels, "pearson_r": self.pearson_r,
            "pearson_p": self.pearson_p, "pearson_ci": list(self.pearson_ci), "spearman_rho": self.spearman_rho,
            "spearman_p": self.spearman_p, "spearman_ci": list(self.spearman_ci),
            "confidence_level": self.confidence_level, "grid": self.grid,
            "grid_spacing_mm": list(self.grid_spacing_mm), "interpolation": self.interpolation,
            "resampling": self.resampling, "notes": list(self.notes),
        }


def voxel_correlation(
    x: sitk.Image,
    y: sitk.Image,
    region: sitk.Image,
    *,
    x_name: str = "x",
    y_name: str = "y",
    region_name: str = "region",
    grid: str | sitk.Image = "coarser",
    interpolation: str = "linear",
    x_valid: sitk.Image | None = None,
    y_valid: sitk.Image | None = None,
    confidence_level: float = 0.95,
) -> CorrelationResult:
    """Pearson and Spearman correlation of ``x`` and ``y`` voxel by voxel inside ``region``.

    Parameters
    ----------
    x, y : 3D scalar images (any units, any grids in one frame of reference), e.g. SUV and ADC.
    region : binary (0/1) label image on any grid, e.g. the GTV.
    x_name, y_name, region_name : names for messages and the result.
    grid : ``"coarser"`` (default: the finer image is resampled onto the coarser grid), ``"finer"``,
        ``"x"``, ``"y"``, or an image whose grid is used.
    interpolation : for the images: ``"linear"`` (default), ``"nearest"`` or ``"bspline"``; masks
        always use nearest neighbour.
    x_valid, y_valid : optional 0/1 masks of the voxels where each image is valid (e.g.
        :attr:`~.diffusion.ADCResult.mask`), on any grid; voxels outside them are excluded.
    confidence_level : of the confidence intervals (default 0.95).
    """
    if not 0.0 < float(confidence_level) < 1.0:
        raise InputError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    if interpolation not in ("linear", "nearest", "bspline"):
        raise InputError(f"interpolation must be 'linear', 'nearest' or 'bspline', got {interpolation!r}")
    named = [(x, x_name), (y, y_name), (region, region_name)]
    named += [(m, f"validity mask of {n}") for m, n in ((x_valid, x_name), (y_valid, y_name)) if m is not None]
    for image, name in named:
        _check_scalar_3d(image, name)
    _check_frames(named)
    _check_overlap(x, y, x_name, y_name)
    region_array = _binary(region, region_name)
    if not region_array.any():
        raise InputError(f"{region_name} is empty (no voxel set): nothing to correlate")

    target, label = _target_grid(x, y, grid)
    resampled: list[str] = []
    values, inside = [], []
    for image, name in ((x, x_name), (y, y_name)):
        if same_geometry(image, target):
            values.append(sitk.GetArrayViewFromImage(image).astype(np.float64))
            inside.append(np.ones(values[-1].shape, dtype=bool))
        else:
            moved = resample_to_reference(sitk.Cast(image, sitk.sitkFloat64), target, interpolation=interpolation)
            values.append(sitk.GetArrayViewFromImage(moved).astype(np.float64))
            inside.append(_field_of_view(image, target))
            resampled.append(f"{name} ({_fmt(image.GetSpacing())} mm) was resampled onto the grid of "
                             f"{_grid_owner(label, x_name, y_name)} ({_fmt(target.GetSpacing())} mm) by "
                             f"{interpolation} interpolation")
    sample = _on_grid(region, target) & inside[0] & inside[1]
    region_count = int(np.count_nonzero(_on_grid(region, target)))
    if region_count == 0:
        raise InputError(f"{region_name} holds no voxel centre of the comparison grid "
                         f"({_fmt(target.GetSpacing())} mm); it is smaller than one voxel of that grid")
    notes = [_INDEPENDENCE_NOTE]
    outside = region_count - int(np.count_nonzero(sample))
    if outside:
        notes.append(f"{outside} region voxel(s) lie outside a field of view and were excluded")
    for mask, name in ((x_valid, x_name), (y_valid, y_name)):
        if mask is not None:
            before = int(np.count_nonzero(sample))
            sample &= _on_grid(mask, target)
            if before - int(np.count_nonzero(sample)):
                notes.append(f"{before - int(np.count_nonzero(sample))} voxel(s) outside the validity mask of "
                             f"{name} were excluded")
    finite = np.isfinite(values[0]) & np.isfinite(values[1])
    if np.count_nonzero(sample & ~finite):
        notes.append(f"{int(np.count_nonzero(sample & ~finite))} voxel(s) with non-finite values were excluded")
    sample &= finite
    xs, ys = values[0][sample], values[1][sample]
    n = int(xs.size)
    if n < MIN_VOXELS:
        raise InputError(f"only {n} voxel pair(s) of {x_name} and {y_name} in {region_name} (need {MIN_VOXELS}): "
                         "the region does not overlap both images enough")
    for vals, name in ((xs, x_name), (ys, y_name)):
        if np.ptp(vals) == 0:
            raise InputError(f"{name} is constant ({vals[0]:g}) in {region_name}: its correlation is undefined")

    pearson = stats.pearsonr(xs, ys)
    ci = pearson.confidence_interval(confidence_level=float(confidence_level))
    spearman = stats.spearmanr(xs, ys)
    rho = float(spearman.statistic)
    if not resampled:
        resampling = f"{x_name} and {y_name} share one grid ({_fmt(target.GetSpacing())} mm): no image was resampled"
    else:
        resampling = "; ".join(resampled)
    region_resampled = not same_geometry(region, target)
    resampling += (f"; {region_name} was resampled by nearest neighbour" if region_resampled
                   else f"; {region_name} is on that grid")
    return CorrelationResult(
        x_name=x_name, y_name=y_name, region_name=region_name, x_units=get_units(x), y_units=get_units(y),
        n_voxels=n, pearson_r=_clip(pearson.statistic), pearson_p=float(pearson.pvalue),
        pearson_ci=(_clip(ci.low), _clip(ci.high)), spearman_rho=_clip(rho), spearman_p=float(spearman.pvalue),
        spearman_ci=_spearman_ci(rho, n, float(confidence_level)), confidence_level=float(confidence_level),
        grid=label, grid_spacing_mm=tuple(float(s) for s in target.GetSpacing()),  # type: ignore[arg-type]
        interpolation=interpolation if resampled else None, resampling=resampling,
        x_values=xs, y_values=ys, notes=tuple(notes),
    )


def _spearman_ci(rho: float, n: int, level: float) -> tuple[float, float]:
    """Fisher-z interval for Spearman's rho with the Bonett & Wright (2000) standard error."""
    if abs(rho) >= 1.0:
        return (_clip(rho), _clip(rho))
    z = np.arctanh(rho)
    half = stats.norm.ppf(0.5 + level / 2.0) * np.sqrt((1.0 + rho * rho / 2.0) / (n - 3))
    return (_clip(np.tanh(z - half)), _clip(np.tanh(z + half)))


def _clip(value: float) -> float:
    """A correlation coefficient as a float in [-1, 1] (rounding can put it a hair outside)."""
    return float(min(1.0, max(-1.0, float(value))))


def _check_scalar_3d(image: sitk.Image, name: str) -> None:
    if not isinstance(image, sitk.Image):
        raise InputError(f"{name} must be a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} must be a 3D scalar image, got a {image.GetDimension()}D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")


def _binary(mask: sitk.Image, name: str) -> np.ndarray:
    values = sitk.GetArrayViewFromImage(mask)
    unique = np.unique(values)
    if not np.all(np.isin(unique, (0, 1))):
        raise InputError(f"{name} is not a binary 0/1 mask (values {unique[:6].tolist()}...)")
    return values.astype(bool)


def _check_frames(named: list[tuple[sitk.Image, str]]) -> None:
    for key in FRAME_OF_REFERENCE_KEYS:
        recorded = [(n, img.GetMetaData(key).strip()) for img, n in named
                    if img.HasMetaDataKey(key) and img.GetMetaData(key).strip()]
        if len({uid for _, uid in recorded}) > 1:
            listing = "; ".join(f"{n}: {uid}" for n, uid in recorded)
            raise GeometryError(f"the images are in different DICOM frames of reference ({listing}); register "
                                "them and resample into one frame first")


def _bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.asarray(image.GetSize(), dtype=np.float64)
    corners = np.array([[a, b, c] for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5)
                        for c in (-0.5, size[2] - 0.5)])
    direction = np.reshape(image.GetDirection(), (3, 3))
    points = np.asarray(image.GetOrigin()) + (corners * np.asarray(image.GetSpacing())) @ direction.T
    return points.min(axis=0), points.max(axis=0)


def _check_overlap(x: sitk.Image, y: sitk.Image, x_name: str, y_name: str) -> None:
    x_lo, x_hi = _bounds(x)
    y_lo, y_hi = _bounds(y)
    if np.any(np.maximum(x_lo, y_lo) >= np.minimum(x_hi, y_hi)):
        raise GeometryError(f"{x_name} (LPS {_fmt(x_lo)} to {_fmt(x_hi)} mm) and {y_name} (LPS {_fmt(y_lo)} to "
                            f"{_fmt(y_hi)} mm) do not overlap in space; they are probably not registered")


def _target_grid(x: sitk.Image, y: sitk.Image, grid: str | sitk.Image) -> tuple[sitk.Image, str]:
    if isinstance(grid, sitk.Image):
        _check_scalar_3d(grid, "the grid image")
        label = "custom"
        target = grid
    elif grid in GRID_CHOICES:
        vx, vy = (float(np.prod(i.GetSpacing())) for i in (x, y))
        if grid == "x":
            target, label = x, "x"
        elif grid == "y":
            target, label = y, "y"
        elif grid == "coarser":
            target, label = (x, "x") if vx > vy else (y, "y")
        else:
            target, label = (x, "x") if vx < vy else (y, "y")
        if same_geometry(x, y):
            label = "shared"
    else:
        raise InputError(f"grid must be one of {', '.join(GRID_CHOICES)} or an image, got {grid!r}")
    return target, label


def _grid_owner(label: str, x_name: str, y_name: str) -> str:
    return {"x": x_name, "y": y_name}.get(label, "the given grid image")


def _on_grid(mask: sitk.Image, target: sitk.Image) -> np.ndarray:
    """A 0/1 mask as a boolean array on ``target`` (nearest neighbour; outside the mask's grid = 0)."""
    if same_geometry(mask, target):
        return sitk.GetArrayViewFromImage(mask) != 0
    return sitk.GetArrayFromImage(resample_mask(mask, target)).astype(bool)


def _field_of_view(image: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Voxels of ``target`` whose centres fall inside ``image``'s voxels (its field of view)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return sitk.GetArrayFromImage(resample_mask(ones, target)).astype(bool)


def _fmt(values) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)


__all__ = ["GRID_CHOICES", "MIN_VOXELS", "CorrelationResult", "voxel_correlation"]
