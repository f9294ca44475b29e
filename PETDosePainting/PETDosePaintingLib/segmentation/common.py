"""Types and helpers shared by every PET segmentation method.

Every method has the same shape::

    result = method(suv, seed_lps, roi=None, background=None, **parameters) -> SegmentationResult

* ``suv`` is a SimpleITK SUV image (units one of :data:`~PETDosePaintingLib.imaging.image.SUV_UNITS`;
  methods that only need relative values accept any units).
* ``seed_lps`` is the user's click in LPS millimetres.
* ``roi`` is an optional binary mask on the PET grid restricting the search; without it the method
  works in a sphere of ``roi_radius_mm`` around the seed.
* ``background`` is an optional binary mask of a background reference region.
* The result's mask is a uint8 0/1 image with exactly the PET geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imaging.image import (
    Units,
    image_from_array,
    index_to_point,
    mask_volume_ml,
    point_to_index,
    require_finite,
    set_units,
)

#: Default radius (mm) of the working region around a seed when no ROI is given (it grows when the lesion
#: needs more room, see :func:`lesion_region`).
DEFAULT_ROI_RADIUS_MM = 40.0
#: Largest radius (mm) the one-click working sphere grows to (a 90 mm radius holds any H&N primary).
MAX_ROI_RADIUS_MM = 90.0


@dataclass
class SegmentationResult:
    """What a segmentation method returns: the mask plus what it computed.

    Attributes
    ----------
    method : registry name of the method (e.g. ``"threshold"``).
    mask : uint8 0/1 image on the PET grid.
    parameters : the parameters used (after defaults were applied), JSON-friendly.
    threshold : the intensity threshold applied, in the input's units, if the method has one.
    background : the background value used, in the input's units, if any.
    reference_value : the lesion reference intensity (SUVmax, SUVpeak, SUV70...) the threshold was derived from.
    details : anything else the method measured (iterations, convergence, chosen level...).
    """

    method: str
    mask: sitk.Image
    parameters: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    background: float | None = None
    reference_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def volume_ml(self) -> float:
        """Volume of the mask in mL (voxel count times voxel volume)."""
        return mask_volume_ml(self.mask)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (everything but the mask)."""
        return {
            "method": self.method,
            "volume_ml": self.volume_ml,
            "threshold": self.threshold,
            "background": self.background,
            "reference_value": self.reference_value,
            "parameters": self.parameters,
            "details": self.details,
        }


@dataclass(frozen=True)
class Region:
    """A rectangular crop of the PET grid (``[k, j, i]`` slices) with a boolean working mask inside it."""

    slices: tuple[slice, slice, slice]
    inside: np.ndarray  # bool, shape of the crop
    seed: tuple[int, int, int]  # seed index (k, j, i) relative to the crop

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The part of a full ``[k, j, i]`` array inside the crop box."""
        return array[self.slices]

    def paste(self, sub: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """A full-size boolean array holding ``sub`` at the crop position."""
        full = np.zeros(tuple(shape), dtype=bool)
        full[self.slices] = sub
        return full


def check_pet(suv: sitk.Image, what: str = "PET image") -> np.ndarray:
    """Validate a PET image (3D, scalar, finite) and return its ``[k, j, i]`` float array."""
    if suv.GetDimension() != 3 or suv.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a 3D scalar image")
    require_finite(suv, what)
    return sitk.GetArrayFromImage(suv).astype(np.float64)


def working_region(
    image: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
) -> Region:
    """The region a method works in: the ROI mask if given, else a sphere of ``roi_radius_mm`` at the seed.

    With an ROI and no seed, the seed is the ROI voxel of highest value. Raises :class:`InputError` if
    the seed lies outside the image or outside the ROI, or if the ROI is empty.
    """
    shape = image.GetSize()[::-1]
    if roi is not None:
        roi_arr = sitk.GetArrayViewFromImage(roi) != 0
        if roi_arr.shape != tuple(shape):
            raise InputError(f"ROI grid {roi_arr.shape[::-1]} differs from the PET grid {tuple(shape)[::-1]}")
        if not roi_arr.any():
            raise InputError("the ROI is empty")
        nz = np.nonzero(roi_arr)
        slices = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
        inside = roi_arr[slices]
        if seed_lps is None:
            values = sitk.GetArrayViewFromImage(image)[slices]
            flat = np.where(inside, values, -np.inf).argmax()
            seed = tuple(int(s) for s in np.unravel_index(flat, inside.shape))
        else:
            i, j, k = point_to_index(image, seed_lps, "seed")
            if not roi_arr[k, j, i]:
                raise InputError(f"seed {tuple(seed_lps)} mm (LPS) lies outside the ROI")
            seed = (k - slices[0].start, j - slices[1].start, i - slices[2].start)
        return Region(slices, inside, seed)  # type: ignore[arg-type]
    if seed_lps is None:
        raise InputError("a seed point (or an ROI) is required")
    if roi_radius_mm <= 0:
        raise InputError(f"roi_radius_mm must be positive, got {roi_radius_mm}")
    i, j, k = point_to_index(image, seed_lps, "seed")
    spacing = np.asarray(image.GetSpacing())[::-1]  # k, j, i
    half = np.ceil(roi_radius_mm / spacing).astype(int)
    centre = (k, j, i)
    slices = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape, strict=True))
    grids = np.ogrid[tuple(slice(s.start - c, s.stop - c) for s, c in zip(slices, centre, strict=True))]
    dist2 = sum((g * sp) ** 2 for g, sp in zip(grids, spacing, strict=True))
    inside = dist2 <= roi_radius_mm**2
    seed = tuple(c - s.start for c, s in zip(centre, slices, strict=True))
    return Region(slices, inside, seed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LesionRegion(Region):
    """A :class:`Region` restricted to the seed's own uptake hill (see :func:`lesion_region`)."""

    peak: tuple[int, int, int] = (0, 0, 0)  #: index (k, j, i) in the crop of the hill's maximum (smoothed image)
    seed_peak: tuple[int, int, int] = (0, 0, 0)  #: the local maximum reached by steepest ascent from the seed
    working: np.ndarray | None = None  #: the working region (ROI, or the sphere actually used) in the crop
    radius_mm: float | None = None  #: radius of the working sphere actually used (``None`` with an ROI)
    background: float = 0.0  #: median of the working sphere outside the hill's upper half, input units
    peak_value: float = 0.0  #: smoothed value at the peak, input units


def climb_to_peak(values: np.ndarray, start: Sequence[int], inside: np.ndarray, max_steps: int = 500
                  ) -> tuple[int, int, int]:
    """Steepest ascent from ``start`` over the 26-neighbourhood, staying ``inside``; returns the local maximum."""
    current = tuple(int(s) for s in start)
    offsets = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    upper = np.array(values.shape) - 1
    for _ in range(max_steps):
        neighbours = np.clip(np.asarray(current) + offsets, 0, upper)
        candidates = [tuple(n) for n in neighbours if inside[tuple(n)]]
        best = max(candidates, key=lambda n: values[n])
        if values[best] <= values[current]:
            return current  # type: ignore[return-value]
        current = best
    return current  # type: ignore[return-value]


def lesion_region(
    image: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    *,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
    smoothing_mm: float = 2.0,
    max_roi_radius_mm: float = MAX_ROI_RADIUS_MM,
    edge_margin_mm: float = 15.0,
) -> LesionRegion:
    """The region a one-click method works in: the seed's own uptake hill, cut from its neighbours.

    How it is chosen (so that a single click behaves as a user expects):

    1. the working region of :func:`working_region` (the ROI if given, else a sphere of
       ``roi_radius_mm`` around the seed);
    2. the PET is smoothed (Gaussian, standard deviation ``smoothing_mm``, default 2 mm, whatever the voxel
       size) only to find structure and suppress noise maxima, never to measure;
    3. the working region is split into hills: a watershed of the negated smoothed image from its
       local maxima (one catchment basin per maximum);
    4. hills are merged in decreasing order of the saddle between them (the component tree of the
       image): two hills are the same structure when their saddle lies above ``saddle_fraction`` of the
       lower peak's contrast over background, ``saddle >= BG + f (min(peak_a, peak_b) - BG)``. Noise
       bumps on a lesion's flank, hot spots of heterogeneous uptake and the ring around a necrotic core
       therefore join the lesion, while a neighbouring avid structure (tonsil, node, gland, brain) whose
       connection dips below that level stays separate;
    5. the region kept is the merged hill holding the peak reached by steepest ascent from the seed. A
       neighbour's voxels never enter SUVmax, background or the mask; where a low threshold would join
       the two, the cut follows the watershed line (as the "splitting" option of Beichel et al., Med
       Phys 2016;43:2948);
    6. without an ROI the sphere grows until the lesion fits with background around it: while the lesion
       (the connected part of the hill above half its contrast, around its maximum) comes within
       ``edge_margin_mm`` (15 mm, room for a background shell) of the sphere's surface, the radius grows
       by half (up to ``max_roi_radius_mm``, 90 mm). The sphere is centred on the hill's maximum, so any
       click in the lesion gives the same region. An ROI given by the user is never enlarged.

    ``BG`` is the median of the working region's tissue outside the seed hill's upper half (a rough level
    used only for the merging and growing rules; methods estimate their own background). Air (uptake below
    :data:`TISSUE_FLOOR_FRACTION` of the median tissue uptake) belongs to no hill and is not background.
    Default ``saddle_fraction`` 0.5 is a
    design choice: a dip to half the contrast separates structures.
    """
    if not 0.0 < saddle_fraction < 1.0:
        raise InputError(f"saddle_fraction must be between 0 and 1, got {saddle_fraction}")
    if roi is not None:
        return _hill_in(image, seed_lps, roi, roi_radius_mm, saddle_fraction=saddle_fraction, smoothing_mm=smoothing_mm)
    # Find the lesion's hill from the click, then centre the working sphere on the hill's maximum, so that a
    # click at the lesion's centre and one on its edge get the same region (and the same result).
    radius = float(roi_radius_mm)
    region = first = _hill_in(image, seed_lps, None, radius, saddle_fraction=saddle_fraction,
                              smoothing_mm=smoothing_mm)
    centre: tuple[int, ...] | None = None
    for _ in range(32):
        # Re-centre on the hill's maximum at the current radius (a fixed point), and only then grow: growing
        # never shrinks back, so growing around an off-centre click would make the result depend on where in
        # the lesion the user clicked. Radii follow one ladder (r0 x 1.5^n, capped), used both when the lesion
        # needs room and when a peripheral click must stay inside the sphere, so clicks converge alike.
        top = tuple(int(c + s.start) for c, s in zip(region.peak, region.slices, strict=True))
        if top != centre:
            centre = top
        elif radius < max_roi_radius_mm and _near_edge(region, image, edge_margin_mm):
            radius = min(1.5 * radius, float(max_roi_radius_mm))
        else:
            return region
        moved = _hill_in(image, index_to_point(image, centre[::-1]), None, radius, saddle_fraction=saddle_fraction,
                         smoothing_mm=smoothing_mm, click_lps=seed_lps)
        while moved is None and radius < max_roi_radius_mm:  # the click lies outside: next rung of the ladder
            radius = min(1.5 * radius, float(max_roi_radius_mm))
            moved = _hill_in(image, index_to_point(image, centre[::-1]), None, radius,
                             saddle_fraction=saddle_fraction, smoothing_mm=smoothing_mm, click_lps=seed_lps)
        if moved is None:  # even the largest sphere around the peak misses the click: keep the click-centred one
            return first
        region = moved
    return region


def _near_edge(region: LesionRegion, image: sitk.Image, margin_mm: float) -> bool:
    """Whether the lesion itself comes within ``margin_mm`` of the working sphere's surface.

    "The lesion" is the connected part of the hill above half its contrast that holds its maximum: structures
    merged into the hill at lower levels (a gland, a ridge of tissue) do not make the sphere grow after them.
    """
    values = region.crop(sitk.GetArrayViewFromImage(image)).astype(np.float64)
    upper = region.inside & (values >= region.background + 0.5 * (region.peak_value - region.background))
    upper[region.peak] = True
    lesion = component_at(upper, region.peak)
    spacing = np.asarray(image.GetSpacing())[::-1]
    depth = ndimage.distance_transform_edt(np.pad(region.working, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return bool(np.any(lesion & (depth <= margin_mm)))


def _hill_in(image: sitk.Image, seed_lps: Sequence[float] | None, roi: sitk.Image | None, radius_mm: float, *,
             saddle_fraction: float, smoothing_mm: float, click_lps: Sequence[float] | None = None):
    """Steps 1-5 of :func:`lesion_region` in one working region centred on ``seed_lps``.

    With ``click_lps`` (the user's click, when the region is centred elsewhere), the region's seed is the click;
    ``None`` is returned if the click lies outside the working region.
    """
    base = working_region(image, seed_lps, roi, radius_mm)
    if click_lps is not None:
        i, j, k = point_to_index(image, click_lps, "seed")
        click = (k - base.slices[0].start, j - base.slices[1].start, i - base.slices[2].start)
        if any(c < 0 or c >= n for c, n in zip(click, base.inside.shape, strict=True)) or not base.inside[click]:
            return None
        base = Region(base.slices, base.inside, click)  # type: ignore[arg-type]
    values = base.crop(sitk.GetArrayViewFromImage(image)).astype(np.float64)
    sigma = smoothing_mm / np.asarray(image.GetSpacing())[::-1]
    smooth = ndimage.gaussian_filter(values, sigma) if smoothing_mm > 0 else values
    peak = climb_to_peak(smooth, base.seed, base.inside)
    peak_value = float(smooth[peak])
    # Air (outside the body, airway) is not tissue: it must not lower the background or join the hill.
    tissue = base.inside & (smooth >= _tissue_floor(smooth[base.inside], peak_value))
    tissue[peak] = True
    background = float(np.median(smooth[tissue]))
    if peak_value <= background:
        raise InputError(
            f"the seed is not on an uptake hill (local peak {peak_value:.3g} is not above the surrounding "
            f"median {background:.3g}): click inside the lesion"
        )
    outside = tissue & (smooth < background + 0.5 * (peak_value - background))
    if outside.any():
        background = float(np.median(smooth[outside]))
    hill = _merged_hill(smooth, tissue, peak, background, saddle_fraction)
    top = np.unravel_index(int(np.argmax(np.where(hill, smooth, -np.inf))), hill.shape)
    return LesionRegion(base.slices, hill, base.seed, peak=tuple(int(t) for t in top),  # type: ignore[arg-type]
                        seed_peak=peak, background=background, peak_value=float(smooth[top]),
                        working=base.inside, radius_mm=None if roi is not None else radius_mm)


#: Tissue floor of :func:`lesion_region` as a fraction of the median tissue uptake: fat, the least avid
#: tissue, takes up 0.3-0.5 of muscle FDG; air is about 0. Design choice.
TISSUE_FLOOR_FRACTION = 0.2


def _tissue_floor(values: np.ndarray, peak_value: float) -> float:
    """Uptake below which a voxel is taken as air: a fraction of the median of the clearly non-air voxels."""
    clearly_tissue = values[values > 0.1 * peak_value]
    return TISSUE_FLOOR_FRACTION * float(np.median(clearly_tissue)) if clearly_tissue.size else 0.0


def _merged_hill(smooth: np.ndarray, inside: np.ndarray, peak: tuple[int, int, int], background: float,
                 saddle_fraction: float) -> np.ndarray:
    """Watershed hills of ``smooth`` merged by the saddle rule of :func:`lesion_region`; the peak's hill."""
    from skimage.segmentation import watershed

    floor = smooth[inside].min()
    masked = np.where(inside, smooth, floor)
    maxima = (masked == ndimage.maximum_filter(masked, size=3)) & inside
    maxima[peak] = True
    markers, n = ndimage.label(maxima, structure=np.ones((3, 3, 3)))
    labels = watershed(-masked, markers, mask=inside, connectivity=1)
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, labels[inside], masked[inside])
    # Saddle between two adjacent hills: the highest min(value) over face-neighbour pairs across the line.
    keys, levels = [], []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        cross = (la != lb) & (la > 0) & (lb > 0)
        lo, hi = np.minimum(la[cross], lb[cross]), np.maximum(la[cross], lb[cross])
        keys.append(lo.astype(np.int64) * (n + 1) + hi)
        levels.append(np.minimum(masked[tuple(a)][cross], masked[tuple(b)][cross]))
    keys_all, levels_all = np.concatenate(keys), np.concatenate(levels)
    parent = np.arange(n + 1)
    if keys_all.size:
        order = np.lexsort((levels_all, keys_all))
        keys_sorted, levels_sorted = keys_all[order], levels_all[order]
        last = np.r_[keys_sorted[1:] != keys_sorted[:-1], True]
        pair_keys, saddles = keys_sorted[last], levels_sorted[last]
        top = peaks.copy()

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for idx in np.argsort(-saddles):  # loop over hill pairs (tens to a few thousand), not voxels
            ra, rb = find(int(pair_keys[idx] // (n + 1))), find(int(pair_keys[idx] % (n + 1)))
            if ra != rb and saddles[idx] >= background + saddle_fraction * (min(top[ra], top[rb]) - background):
                parent[rb] = ra
                top[ra] = max(top[ra], top[rb])
        roots = np.array([find(i) for i in range(n + 1)])
    else:
        roots = parent
    return roots[labels] == roots[labels[peak]]


def component_at(mask: np.ndarray, seed: Sequence[int], connectivity: int = 26) -> np.ndarray:
    """The connected component of ``mask`` that contains ``seed`` (empty if the seed is not in the mask)."""
    if not mask[tuple(seed)]:
        return np.zeros_like(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    labels, _ = ndimage.label(mask, structure=structure)
    return labels == labels[tuple(seed)]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed cavities in 3D (e.g. a necrotic core belongs to the GTV)."""
    return ndimage.binary_fill_holes(mask)


def mask_image(full_mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 0/1 SimpleITK mask with the reference's geometry."""
    return set_units(image_from_array(full_mask.astype(np.uint8), reference), Units.LABEL)


def threshold_component(values: np.ndarray, region: Region, threshold: float) -> np.ndarray:
    """``CC_seed(values >= threshold)`` inside the region, as a boolean array of the crop's shape.

    For a :class:`LesionRegion`, a seed just outside the thresholded lesion (a click on its edge) grows
    from the local peak the seed climbs to instead (never from another structure's peak).
    Raises :class:`InputError` if neither is above the threshold.
    """
    above = (values >= threshold) & region.inside
    start = region.seed
    if not above[start] and isinstance(region, LesionRegion) and above[region.seed_peak]:
        start = region.seed_peak  # a click on the lesion's edge: grow from the peak the seed climbs to
    if not above[start]:
        raise InputError(
            f"the seed voxel (value {values[region.seed]:.3g}) is below the threshold {threshold:.3g}: "
            "the seed is not in the lesion"
        )
    return component_at(above, start)
