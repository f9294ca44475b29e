"""Agreement between binary masks: volume, overlap, surface distances, centroid shift, set operations.

One implementation for the segmentation suite (``petdp evaluate``: a segmentation against a truth
mask) and for the GTV comparison across modalities and timepoints (any number of masks, any grids).
The metrics are those recommended by AAPM TG-211 for PET auto-segmentation (Hatt et al., Med Phys
2017;44(6):e1-e42): overlap (Dice or Jaccard) *with* sensitivity and PPV reported separately, a
surface distance (HD, HD95, mean surface distance) and the volume error. Taha & Hanbury (BMC Med
Imaging 2015;15:29) is the reference for the definitions and their pitfalls.

Definitions (A = the evaluated mask, B = the reference; |X| = voxel count on the common grid)
---------------------------------------------------------------------------------------------
* **Volume** (mL): non-zero voxel count times voxel volume, on the mask's *own* grid
  (:func:`~PETDosePaintingLib.imaging.image.mask_volume_ml`, the project's one volume definition).
  Volume error (%) = 100 (V_A - V_B) / V_B with these own-grid volumes.
* **Dice** (Dice, Ecology 1945;26:297-302) = 2|A∩B| / (|A|+|B|); **Jaccard** (Jaccard, New Phytol
  1912;11:37-50) = |A∩B| / |A∪B|; **sensitivity** = TP/(TP+FN) = |A∩B|/|B|; **PPV** = TP/(TP+FP) =
  |A∩B|/|A|. Dimensionless, in [0, 1], counted on the common grid.
* **Surface distances** (mm) follow the surface-element ("surfel") definition of DeepMind's
  ``surface-distance`` package (Nikolov et al., J Med Internet Res 2021;23(7):e26151;
  github.com/google-deepmind/surface-distance): the surface of a mask is the set of points of the
  voxel-*corner* grid whose 2x2x2 neighbourhood holds both inside and outside voxels; each such point
  carries the area (mm2) of the marching-cubes surface (Lorensen & Cline, SIGGRAPH 1987) through its
  2x2x2 cell, computed with the true anisotropic spacing; the distance from a surfel of A to the
  surface of B is the Euclidean distance (mm) to the nearest surfel point of B, from an exact
  distance transform with the true spacing. Then

  - **HD** (Hausdorff distance; Huttenlocher et al., IEEE TPAMI 1993;15:850-863) = the largest of
    the two directed maxima;
  - **HD95** = DeepMind's "robust Hausdorff" at 95%: the largest of the two directed 95th
    percentiles of the *area-weighted* distance distributions;
  - **MSD** (mean surface distance) = the mean of the two directed area-weighted average distances.

  Deviations from other tools, all within about one voxel diagonal: MedPy measures between
  voxel *centres* of the boundary voxels, counts voxels rather than surface area, and pools both
  directions for its ``hd95``; Taha & Hanbury's "average Hausdorff distance" is the *maximum* of the
  two directed averages, whereas MSD here is their mean (MedPy ``assd``, DeepMind's pair averaged).

  Resolution caveat (inherent to the definition, not a bug): the surfel points of a curved surface
  form a staircase band up to about one voxel thick, and distances go to the *nearest* point of the
  other band. On voxelised spheres MSD therefore comes out smaller than the analytic distance between
  the smooth surfaces by a fraction of a voxel (of the order of 0.1 to 0.5 voxel in our checks), and HD
  can exceed it by up to about half a voxel diagonal. Compare surface distances between methods only
  at similar voxel sizes, and never read sub-voxel differences as real.
* **Centroid shift** (mm): distance between the centres of mass of the two masks, each computed on
  its own grid in LPS millimetres.

Masks on different grids
------------------------
Everything counted voxel-wise (overlap, surface distances) is computed on one *common grid* on which
both masks are resampled by nearest neighbour (:func:`to_common_grid`). The grid always covers the
union of the masks' foregrounds plus a background margin, so nothing is cropped; its lattice is

* ``"finest"`` (default): the reference's axes, with on each axis the finer of the masks' spacings
  and that mask's voxel-centre lattice, so the finer mask is sampled exactly at its own voxel centres
  and the coarser one is represented by the cubes of its voxels;
* ``"reference"``: the reference mask's own lattice (spacing, axes, voxel centres);
* an image: that image's lattice.

The result reports it (``reference_grid``: ``"shared"`` when all masks already share one grid, else
``"finest"``, ``"reference"`` or ``"custom"``, and ``grid_spacing_mm``). Masks whose DICOM frames of
reference are recorded and differ, or whose grids do not overlap in physical space at all (almost
always a coordinate mistake), are refused with :class:`~PETDosePaintingLib.errors.GeometryError`.
Disjoint masks on overlapping grids are a legitimate result (Dice 0).

Empty masks: volume 0, Dice 0 against a non-empty mask, and ``None`` (JSON ``null``) for every ratio
whose denominator is 0. Surface distances of an empty mask are undefined: :func:`compare_masks`
raises :class:`~PETDosePaintingLib.errors.InputError` unless ``allow_empty=True``, which returns
``None`` for them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.measure import marching_cubes

from ..errors import GeometryError, InputError
from ..imaging.image import (
    FRAME_OF_REFERENCE_KEY,
    check_same_geometry,
    image_from_array,
    mask_volume_ml,
    require_binary_mask,
    same_geometry,
)
from ..imaging.resample import resample_mask

#: Metadata keys holding a DICOM Frame of Reference UID (``0020|0052`` is how SimpleITK/GDCM expose
#: the tag when reading DICOM). Masks whose recorded UIDs differ are not comparable voxel-wise.
FRAME_OF_REFERENCE_KEYS = (FRAME_OF_REFERENCE_KEY,)

#: Names of the common-grid choices (an image may be given instead).
GRID_CHOICES = ("finest", "reference")

#: Largest common grid (voxels) built by default; beyond it the distance transforms need gigabytes.
DEFAULT_MAX_GRID_VOXELS = 32_000_000

#: The percentile of the robust Hausdorff distance reported as ``hd95_mm``.
HD_PERCENTILE = 95.0

_DIRECTION_TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverlapMetrics:
    """Agreement of one mask with a reference mask (see the module docstring for the definitions).

    JSON-friendly: ``dataclasses.asdict`` gives plain floats, strings, tuples and ``None``.

    Attributes
    ----------
    mask, reference : names of the evaluated mask and of the reference.
    reference_grid : the common grid the voxel-wise numbers were computed on: ``"shared"``,
        ``"finest"``, ``"reference"`` or ``"custom"``.
    grid_spacing_mm : its voxel spacing (i, j, k) in mm.
    volume_ml, reference_volume_ml : volumes on each mask's own grid (mL).
    volume_error_pct : 100 (V_mask - V_ref) / V_ref (%); ``None`` if the reference is empty.
    intersection_ml, union_ml : |A∩B| and |A∪B| on the common grid (mL).
    dice, jaccard, sensitivity, ppv : dimensionless; ``None`` when the denominator is 0.
    hd_mm, hd95_mm, msd_mm : Hausdorff distance, robust 95% Hausdorff distance, mean surface
        distance (mm); ``None`` if a mask is empty (only with ``allow_empty=True``).
    msd_mask_to_reference_mm, msd_reference_to_mask_mm : the two directed area-weighted average
        surface distances (mm) whose mean is ``msd_mm``.
    centroid_shift_mm : distance between the centres of mass (mm), ``None`` if a mask is empty.
    centroid_mm, reference_centroid_mm : the centres of mass, LPS (mm).
    """

    mask: str
    reference: str
    reference_grid: str
    grid_spacing_mm: tuple[float, float, float]
    volume_ml: float
    reference_volume_ml: float
    volume_error_pct: float | None
    intersection_ml: float
    union_ml: float
    dice: float | None
    jaccard: float | None
    sensitivity: float | None
    ppv: float | None
    hd_mm: float | None
    hd95_mm: float | None
    msd_mm: float | None
    msd_mask_to_reference_mm: float | None
    msd_reference_to_mask_mm: float | None
    centroid_shift_mm: float | None
    centroid_mm: tuple[float, float, float] | None
    reference_centroid_mm: tuple[float, float, float] | None


@dataclass(frozen=True, eq=False)
class SurfaceDistances:
    """Directed surfel distances between two masks on one grid, with the surfel areas.

    ``distances_mask_to_reference_mm[n]`` is the distance (mm) from the n-th surfel of the mask to
    the reference's surface and ``areas_mask_mm2[n]`` that surfel's area (mm2); likewise the other way.
    Definitions as in DeepMind's ``surface-distance`` (see the module docstring).
    """

    distances_mask_to_reference_mm: np.ndarray
    areas_mask_mm2: np.ndarray
    distances_reference_to_mask_mm: np.ndarray
    areas_reference_mm2: np.ndarray

    def hausdorff_mm(self) -> float:
        """Hausdorff distance (mm): the largest of the two directed maximum distances."""
        return float(max(self.distances_mask_to_reference_mm.max(), self.distances_reference_to_mask_mm.max()))

    def robust_hausdorff_mm(self, percent: float = HD_PERCENTILE) -> float:
        """Robust Hausdorff distance (mm): the larger of the two directed area-weighted percentiles.

        The directed percentile is the smallest distance d such that surfels at distance <= d hold at
        least ``percent`` % of the surface area (DeepMind's ``compute_robust_hausdorff``).
        """
        if not 0.0 < float(percent) <= 100.0:
            raise InputError(f"percent must be in (0, 100], got {percent!r}")
        return float(max(_weighted_percentile(self.distances_mask_to_reference_mm, self.areas_mask_mm2, percent),
                         _weighted_percentile(self.distances_reference_to_mask_mm, self.areas_reference_mm2,
                                              percent)))

    def average_mm(self) -> tuple[float, float]:
        """The two directed area-weighted average distances (mask to reference, reference to mask), mm."""
        return (float(np.average(self.distances_mask_to_reference_mm, weights=self.areas_mask_mm2)),
                float(np.average(self.distances_reference_to_mask_mm, weights=self.areas_reference_mm2)))

    def mean_surface_distance_mm(self) -> float:
        """Mean surface distance (mm): the mean of the two directed average distances."""
        a, b = self.average_mm()
        return 0.5 * (a + b)


@dataclass(frozen=True, eq=False)
class CommonGridMasks:
    """Masks resampled (nearest neighbour) onto one common grid; see :func:`to_common_grid`.

    Attributes
    ----------
    grid : an all-zero uint8 image carrying the common geometry.
    reference_grid : ``"shared"``, ``"finest"``, ``"reference"`` or ``"custom"``.
    arrays : boolean ``[k, j, i]`` arrays on ``grid``, by mask name, in the order given.
    """

    grid: sitk.Image
    reference_grid: str
    arrays: dict[str, np.ndarray]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing (i, j, k) of the common grid in mm."""
        return tuple(float(s) for s in self.grid.GetSpacing())  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel of the common grid in mL."""
        return float(np.prod(self.grid.GetSpacing())) / 1000.0

    def volume_ml(self, name: str) -> float:
        """Volume (mL) of a mask *as resampled on the common grid* (not the project's own-grid volume)."""
        return float(np.count_nonzero(self.arrays[name])) * self.voxel_volume_ml

    def image(self, name: str) -> sitk.Image:
        """A resampled mask as a uint8 0/1 label image on the common grid."""
        return image_from_array(self.arrays[name], reference=self.grid)


@dataclass(frozen=True, eq=False)
class MaskCombination:
    """Intersection and union of several masks on a common grid (see :func:`combine_masks`)."""

    names: tuple[str, ...]
    reference_grid: str
    grid_spacing_mm: tuple[float, float, float]
    intersection: sitk.Image  #: uint8 0/1 label image on the common grid
    union: sitk.Image  #: uint8 0/1 label image on the common grid
    intersection_ml: float  #: volume of the intersection on the common grid (mL)
    union_ml: float  #: volume of the union on the common grid (mL)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (everything but the images)."""
        return {"names": list(self.names), "reference_grid": self.reference_grid,
                "grid_spacing_mm": list(self.grid_spacing_mm), "intersection_ml": self.intersection_ml,
                "union_ml": self.union_ml}


@dataclass(frozen=True)
class CoverageResult:
    """The part of a reference (e.g. pathology) that a mask does not cover (see :func:`uncovered_reference`).

    Attributes
    ----------
    mask, reference : names.
    reference_grid, grid_spacing_mm : the common grid (as in :class:`OverlapMetrics`).
    reference_volume_ml : the reference's volume on its own grid (mL).
    uncovered_ml : volume of reference \\ mask on the common grid (mL).
    uncovered_fraction : |reference \\ mask| / |reference|, voxel counts on the common grid (0..1);
        equals 1 - sensitivity of the mask against the reference.
    """

    mask: str
    reference: str
    reference_grid: str
    grid_spacing_mm: tuple[float, float, float]
    reference_volume_ml: float
    uncovered_ml: float
    uncovered_fraction: float


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def compare_masks(
    mask: sitk.Image,
    reference: sitk.Image,
    *,
    mask_name: str = "mask",
    reference_name: str = "reference",
    grid: str | sitk.Image = "finest",
    allow_empty: bool = False,
    max_grid_voxels: int = DEFAULT_MAX_GRID_VOXELS,
) -> OverlapMetrics:
    """Every agreement metric of ``mask`` against ``reference`` (definitions in the module docstring).

    Parameters
    ----------
    mask, reference : binary (0/1) 3D label images, on any grids in the same frame of reference.
    mask_name, reference_name : names used in the result and in error messages (e.g. file names).
    grid : the common grid for voxel-wise metrics: ``"finest"`` (default), ``"reference"`` or an
        image whose lattice is used; see :func:`to_common_grid`.
    allow_empty : if False (default) an empty mask raises :class:`InputError` (its surface distances
        are undefined); if True the result holds ``None`` for every undefined number.
    max_grid_voxels : refuse a common grid larger than this (memory guard).

    Raises
    ------
    InputError : a mask is not a binary 3D image, or is empty (unless ``allow_empty``).
    GeometryError : frames of reference differ, or the two grids do not overlap in space.
    """
    names = [reference_name, mask_name]
    images = [reference, mask]
    own = [_validated_array(img, name) for name, img in zip(names, images, strict=True)]
    common_grid, label, (ref, seg) = _common_grid(names, images, own, grid, max_grid_voxels)
    common = CommonGridMasks(grid=common_grid, reference_grid=label, arrays={"reference": ref, "mask": seg})
    n_ref, n_seg = int(np.count_nonzero(ref)), int(np.count_nonzero(seg))
    if not allow_empty:
        for name, count in ((mask_name, n_seg), (reference_name, n_ref)):
            if count == 0:
                raise InputError(f"{name} is empty (no voxel set): its surface distances are undefined "
                                 "(pass allow_empty=True to get the overlap metrics alone)")
    n_tp = int(np.count_nonzero(seg & ref))
    n_union = n_ref + n_seg - n_tp
    vox_ml = common.voxel_volume_ml
    volume, ref_volume = mask_volume_ml(mask), mask_volume_ml(reference)
    ref_centroid = _centroid_lps(own[0], reference) if n_ref else None
    centroid = _centroid_lps(own[1], mask) if n_seg else None

    hd = hd95 = msd = msd_ab = msd_ba = None
    if n_ref and n_seg:
        distances = _surface_distances_arrays(seg, ref, _spacing_kji(common.grid))
        hd = distances.hausdorff_mm()
        hd95 = distances.robust_hausdorff_mm(HD_PERCENTILE)
        msd_ab, msd_ba = distances.average_mm()
        msd = 0.5 * (msd_ab + msd_ba)

    return OverlapMetrics(
        mask=mask_name,
        reference=reference_name,
        reference_grid=common.reference_grid,
        grid_spacing_mm=common.spacing_mm,
        volume_ml=volume,
        reference_volume_ml=ref_volume,
        volume_error_pct=100.0 * (volume - ref_volume) / ref_volume if ref_volume > 0 else None,
        intersection_ml=n_tp * vox_ml,
        union_ml=n_union * vox_ml,
        dice=_ratio(2 * n_tp, n_ref + n_seg),
        jaccard=_ratio(n_tp, n_union),
        sensitivity=_ratio(n_tp, n_ref),
        ppv=_ratio(n_tp, n_seg),
        hd_mm=hd,
        hd95_mm=hd95,
        msd_mm=msd,
        msd_mask_to_reference_mm=msd_ab,
        msd_reference_to_mask_mm=msd_ba,
        centroid_shift_mm=(float(np.linalg.norm(np.subtract(centroid, ref_centroid)))
                           if centroid is not None and ref_centroid is not None else None),
        centroid_mm=centroid,
        reference_centroid_mm=ref_centroid,
    )


def pairwise_metrics(
    masks: Mapping[str, sitk.Image],
    *,
    reference: str | None = None,
    grid: str | sitk.Image = "finest",
    allow_empty: bool = False,
    max_grid_voxels: int = DEFAULT_MAX_GRID_VOXELS,
) -> list[OverlapMetrics]:
    """A table of :func:`compare_masks` results for N named masks.

    With ``reference`` (the name of one of ``masks``), every other mask is compared against it, in
    the order given. Without it, every pair is compared once; in each pair the mask listed *first* is
    the reference (this matters only for sensitivity, PPV, volume error and the directed distances).
    Each pair gets its own common grid (``grid`` as in :func:`compare_masks`).
    """
    names = list(masks)
    if reference is not None and reference not in masks:
        raise InputError(f"reference {reference!r} is not one of the masks ({', '.join(map(repr, names))})")
    if len(names) < 2:
        raise InputError(f"need at least two masks to compare, got {len(names)}")
    if reference is not None:
        pairs = [(name, reference) for name in names if name != reference]
    else:
        pairs = [(b, a) for a, b in itertools.combinations(names, 2)]
    return [compare_masks(masks[m], masks[r], mask_name=m, reference_name=r, grid=grid, allow_empty=allow_empty,
                          max_grid_voxels=max_grid_voxels) for m, r in pairs]


def surface_distances(mask: sitk.Image, reference: sitk.Image, *, mask_name: str = "mask",
                      reference_name: str = "reference") -> SurfaceDistances:
    """Directed surfel distances and areas between two non-empty binary masks on the *same* grid.

    For masks on different grids use :func:`to_common_grid` first (or :func:`compare_masks`).
    Raises :class:`GeometryError` if the grids differ and :class:`InputError` if a mask is empty.
    """
    seg = _validated_array(mask, mask_name)
    ref = _validated_array(reference, reference_name)
    check_same_geometry(mask, reference, mask_name, reference_name)
    for name, array in ((mask_name, seg), (reference_name, ref)):
        if not array.any():
            raise InputError(f"{name} is empty (no voxel set): its surface distances are undefined")
    return _surface_distances_arrays(seg, ref, _spacing_kji(mask))


def centroid_lps(mask: sitk.Image, what: str = "mask") -> tuple[float, float, float]:
    """Centre of mass (LPS mm) of a non-empty binary mask, from its voxel centres on its own grid."""
    return _centroid_lps(_validated_array(mask, what, allow_empty=False), mask)


def to_common_grid(
    masks: Mapping[str, sitk.Image],
    *,
    grid: str | sitk.Image = "finest",
    max_grid_voxels: int = DEFAULT_MAX_GRID_VOXELS,
) -> CommonGridMasks:
    """Resample named binary masks by nearest neighbour onto one common grid in physical space.

    The first mask is the reference: its axes orient the grid (``"finest"`` and ``"reference"``).
    The grid covers the union of all foregrounds plus two background voxels on every side (so no
    mask is cropped, and surfaces at the border are closed). Lattice choices:

    * ``"finest"`` (default): on each axis the smallest spacing among the masks sharing the
      reference's axes (a mask with other axes contributes its smallest spacing), on the voxel-centre
      lattice of the mask that has it (the reference's on ties);
    * ``"reference"``: the reference's spacing and voxel-centre lattice;
    * an image: its axes, spacing and voxel-centre lattice.

    Raises :class:`GeometryError` if recorded frames of reference differ, if a grid does not overlap
    the reference's grid at all, or if a grid's axes are not orthogonal; :class:`InputError` if a mask
    is not binary, if the grid would exceed ``max_grid_voxels``, or if a non-empty mask has no voxel
    centre of the common grid inside it (the grid is too coarse for it).
    """
    if not masks:
        raise InputError("no masks given")
    names = list(masks)
    images = [masks[n] for n in names]
    arrays = [_validated_array(img, name) for name, img in zip(names, images, strict=True)]
    common, label, resampled = _common_grid(names, images, arrays, grid, max_grid_voxels)
    return CommonGridMasks(grid=common, reference_grid=label, arrays=dict(zip(names, resampled, strict=True)))


def _common_grid(names: Sequence[str], images: Sequence[sitk.Image], arrays: Sequence[np.ndarray],
                 grid: str | sitk.Image, max_grid_voxels: int) -> tuple[sitk.Image, str, list[np.ndarray]]:
    """:func:`to_common_grid` for validated masks (``arrays``: their own-grid boolean arrays).

    Returns the grid image, its label and the resampled arrays in the order of ``names``.
    """
    for name, img in zip(names, images, strict=True):
        _require_orthonormal(img, name)
    _check_frames_of_reference(images, names)
    for name, img in zip(names[1:], images[1:], strict=True):
        _check_grids_overlap(images[0], img, names[0], name)

    if isinstance(grid, sitk.Image):
        if grid.GetDimension() != 3:
            raise InputError(f"the grid image must be 3D, got {grid.GetDimension()}D")
        _require_orthonormal(grid, "the grid image")
        direction, spacing, phase = _lattice_of(grid)
        label = "custom"
    elif isinstance(grid, str) and grid in GRID_CHOICES:
        direction, spacing, phase = _lattice_of(images[0])
        if grid == "finest":
            for img in images[1:]:
                d_i, s_i, p_i = _lattice_of(img, direction)
                if np.allclose(d_i, direction, atol=_DIRECTION_TOLERANCE, rtol=0):
                    finer = s_i < spacing * (1 - 1e-9)
                    spacing[finer], phase[finer] = s_i[finer], p_i[finer]
                else:  # other axes: its lattice does not map onto ours, only its finest spacing is used
                    finer = s_i.min() < spacing * (1 - 1e-9)
                    spacing[finer] = s_i.min()
        shared = all(same_geometry(images[0], img) for img in images[1:])
        label = "shared" if shared else grid
    else:
        raise InputError(f"grid must be one of {', '.join(GRID_CHOICES)} or an image, got {grid!r}")

    corners = [_foreground_corners(a, img) for a, img in zip(arrays, images, strict=True)]
    corners = [c for c in corners if c is not None]
    if corners:
        u = np.concatenate(corners) @ direction  # coordinates along the grid axes (mm)
        lo = np.ceil((u.min(axis=0) - phase) / spacing) - 2
        hi = np.floor((u.max(axis=0) - phase) / spacing) + 2
    else:  # every mask empty: a small grid around the reference's origin
        lo = np.round((np.asarray(images[0].GetOrigin()) @ direction - phase) / spacing) - 1
        hi = lo + 2
    size = (hi - lo + 1).astype(int)
    n_voxels = int(np.prod(size))
    if n_voxels > max_grid_voxels:
        raise InputError(
            f"the common grid for {', '.join(names)} would hold {n_voxels:,} voxels "
            f"({_fmt(size)} at {_fmt(spacing)} mm), above max_grid_voxels={max_grid_voxels:,}; "
            "the masks are far apart or the grid is very fine: use a coarser grid"
        )
    common = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    common.SetSpacing([float(s) for s in spacing])
    common.SetDirection([float(d) for d in direction.ravel()])
    common.SetOrigin([float(o) for o in direction @ (phase + lo * spacing)])

    out = []
    for name, img, array in zip(names, images, arrays, strict=True):
        resampled = sitk.GetArrayFromImage(resample_mask(img, common)).astype(bool)
        if array.any() and not resampled.any():
            raise InputError(f"{name} has no voxel centre of the common grid ({_fmt(spacing)} mm) inside it; "
                             "use a finer grid")
        out.append(resampled)
    return common, label, out


def combine_masks(
    masks: Mapping[str, sitk.Image],
    *,
    grid: str | sitk.Image = "finest",
    max_grid_voxels: int = DEFAULT_MAX_GRID_VOXELS,
) -> MaskCombination:
    """Intersection and union of several masks (e.g. GTV_CT ∩ GTV_MRI ∩ GTV_PET) on a common grid.

    All masks go onto one grid (:func:`to_common_grid`; the first mask is the reference); volumes are
    voxel counts times the common voxel volume (mL).
    """
    if len(masks) < 2:
        raise InputError(f"need at least two masks to combine, got {len(masks)}")
    common = to_common_grid(masks, grid=grid, max_grid_voxels=max_grid_voxels)
    arrays = list(common.arrays.values())
    inter = np.logical_and.reduce(arrays)
    union = np.logical_or.reduce(arrays)
    return MaskCombination(
        names=tuple(common.arrays),
        reference_grid=common.reference_grid,
        grid_spacing_mm=common.spacing_mm,
        intersection=image_from_array(inter, reference=common.grid),
        union=image_from_array(union, reference=common.grid),
        intersection_ml=float(np.count_nonzero(inter)) * common.voxel_volume_ml,
        union_ml=float(np.count_nonzero(union)) * common.voxel_volume_ml,
    )


def uncovered_reference(
    reference: sitk.Image,
    masks: Mapping[str, sitk.Image],
    *,
    reference_name: str = "reference",
    grid: str | sitk.Image = "finest",
    max_grid_voxels: int = DEFAULT_MAX_GRID_VOXELS,
) -> list[CoverageResult]:
    """The part of ``reference`` (e.g. the pathology specimen) not covered by each mask, in mL and as a fraction.

    The reference and all masks go onto one common grid (:func:`to_common_grid`, the reference first).
    To ask about a combination (e.g. the union of CT, MRI and PET GTVs) pass
    :func:`combine_masks`' ``union`` image as one of the masks. Raises :class:`InputError` if the
    reference is empty.
    """
    if reference_name in masks:
        raise InputError(f"reference name {reference_name!r} is also the name of a mask; rename one")
    if not masks:
        raise InputError("no masks given")
    common = to_common_grid({reference_name: reference, **masks}, grid=grid, max_grid_voxels=max_grid_voxels)
    ref = common.arrays[reference_name]
    n_ref = int(np.count_nonzero(ref))
    if n_ref == 0:
        raise InputError(f"{reference_name} is empty (no voxel set): nothing to cover")
    ref_volume = mask_volume_ml(reference)
    results = []
    for name in masks:
        n_unc = int(np.count_nonzero(ref & ~common.arrays[name]))
        results.append(CoverageResult(
            mask=name, reference=reference_name, reference_grid=common.reference_grid,
            grid_spacing_mm=common.spacing_mm, reference_volume_ml=ref_volume,
            uncovered_ml=n_unc * common.voxel_volume_ml, uncovered_fraction=n_unc / n_ref,
        ))
    return results


# --------------------------------------------------------------------------------------------------
# Surface elements
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _surfel_area_table(spacing_kji: tuple[float, float, float]) -> np.ndarray:
    """Area (mm2) of the marching-cubes surface in a 2x2x2 cell, for each of the 256 configurations.

    Configuration code: bit ``4*dk + 2*dj + di`` is set when the voxel at offset (dk, dj, di) of the
    cell is inside. The triangles are those of the classic Lorensen & Cline (1987) table as
    implemented by scikit-image (``method="lorensen"``, vertices at edge midpoints), scaled by the
    spacing; a cell with more than four inside voxels is triangulated as its complement (the classic
    table's symmetry), which reproduces DeepMind's ``surface-distance`` table exactly (checked for all
    256 codes in the tests). Built once per spacing (a loop over 256 cell configurations, not voxels).
    """
    spacing = np.asarray(spacing_kji, dtype=np.float64)
    table = np.zeros(256, dtype=np.float64)
    bits = np.arange(8)
    for code in range(1, 255):
        cell_code = code if bin(code).count("1") <= 4 else 255 - code
        cell = ((cell_code >> bits) & 1).reshape(2, 2, 2).astype(np.float32)
        verts, faces, _, _ = marching_cubes(cell, level=0.5, method="lorensen")
        tri = verts.astype(np.float64)[faces] * spacing  # (n, 3 vertices, 3 axes) in mm
        table[code] = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    table.setflags(write=False)
    return table


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The 2x2x2 configuration code of every cell of the voxel-corner grid (shape minus one per axis)."""
    m = mask.astype(np.uint8)
    shape = tuple(n - 1 for n in m.shape)
    codes = np.zeros(shape, dtype=np.uint8)
    for dk, dj, di in itertools.product((0, 1), repeat=3):  # the 8 cell corners, not voxels
        codes |= m[dk:dk + shape[0], dj:dj + shape[1], di:di + shape[2]] << np.uint8(4 * dk + 2 * dj + di)
    return codes


def _surface_distances_arrays(seg: np.ndarray, ref: np.ndarray, spacing_kji: tuple[float, float, float]
                              ) -> SurfaceDistances:
    """Surfel distances between two non-empty boolean ``[k, j, i]`` arrays on one grid."""
    seg, ref = _crop_pad(seg, ref)
    table = _surfel_area_table(tuple(round(float(s), 9) for s in spacing_kji))
    codes_seg, codes_ref = _neighbour_codes(seg), _neighbour_codes(ref)
    border_seg = (codes_seg != 0) & (codes_seg != 255)
    border_ref = (codes_ref != 0) & (codes_ref != 255)
    dist_to_ref = ndimage.distance_transform_edt(~border_ref, sampling=spacing_kji)
    dist_to_seg = ndimage.distance_transform_edt(~border_seg, sampling=spacing_kji)
    return SurfaceDistances(
        distances_mask_to_reference_mm=dist_to_ref[border_seg],
        areas_mask_mm2=table[codes_seg[border_seg]],
        distances_reference_to_mask_mm=dist_to_seg[border_ref],
        areas_reference_mm2=table[codes_ref[border_ref]],
    )


def _crop_pad(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Crop arrays to the bounding box of their union, with one background voxel added on every side."""
    union = np.logical_or.reduce(arrays)
    slices = []
    for axis in range(union.ndim):
        occupied = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        slices.append(slice(occupied[0], occupied[-1] + 1))
    return tuple(np.pad(a[tuple(slices)], 1) for a in arrays)


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, percent: float) -> float:
    """Smallest value whose cumulative weight fraction reaches ``percent`` % (DeepMind's convention)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order]) / np.sum(weights)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(values[order][min(index, len(values) - 1)])


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def _validated_array(image: sitk.Image, name: str, allow_empty: bool = True) -> np.ndarray:
    if not isinstance(image, sitk.Image):
        raise InputError(f"{name} must be a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} must be a 3D scalar mask, got a {image.GetDimension()}D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    return require_binary_mask(image, name, allow_empty=allow_empty)


def _spacing_kji(image: sitk.Image) -> tuple[float, float, float]:
    return tuple(float(s) for s in image.GetSpacing()[::-1])  # type: ignore[return-value]


def _direction(image: sitk.Image) -> np.ndarray:
    return np.reshape(np.asarray(image.GetDirection(), dtype=np.float64), (3, 3))


def _require_orthonormal(image: sitk.Image, name: str) -> None:
    d = _direction(image)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4, rtol=0):
        raise GeometryError(f"{name} has non-orthogonal voxel axes (direction {_fmt(d.ravel())}); resample it "
                            "onto an orthogonal grid first")


def _lattice_of(image: sitk.Image, direction: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(direction, spacing, phase): phase is the first voxel centre along the axes of ``direction``."""
    d = _direction(image)
    axes = d if direction is None else direction
    return d, np.asarray(image.GetSpacing(), dtype=np.float64).copy(), np.asarray(image.GetOrigin()) @ axes


def _index_to_lps(image: sitk.Image, index_ijk: np.ndarray) -> np.ndarray:
    """LPS points (n, 3) of continuous indices (n, 3) in (i, j, k) order."""
    return np.asarray(image.GetOrigin()) + (index_ijk * np.asarray(image.GetSpacing())) @ _direction(image).T


def _box_corners(lo_ijk: Sequence[float], hi_ijk: Sequence[float]) -> np.ndarray:
    return np.array(list(itertools.product(*zip(lo_ijk, hi_ijk, strict=True))), dtype=np.float64)


def _foreground_corners(array: np.ndarray, image: sitk.Image) -> np.ndarray | None:
    """LPS corners (8, 3) of the index bounding box of the foreground voxels (voxel faces, not centres)."""
    if not array.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        occupied = np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(occupied[0] - 0.5)
        hi.append(occupied[-1] + 0.5)
    return _index_to_lps(image, _box_corners(lo[::-1], hi[::-1]))


def _grid_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounds (mm) of the region covered by the image's voxels."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    corners = _index_to_lps(image, _box_corners(np.full(3, -0.5), size - 0.5))
    return corners.min(axis=0), corners.max(axis=0)


def _check_grids_overlap(a: sitk.Image, b: sitk.Image, a_name: str, b_name: str) -> None:
    """Raise :class:`GeometryError` if the regions covered by the two grids do not overlap at all.

    Uses the axis-aligned LPS bounding boxes of the grids, so for oblique grids it can only miss a
    non-overlap, never invent one.
    """
    a_lo, a_hi = _grid_bounds(a)
    b_lo, b_hi = _grid_bounds(b)
    if np.any(np.maximum(a_lo, b_lo) >= np.minimum(a_hi, b_hi)):
        raise GeometryError(
            f"{a_name} (LPS {_fmt(a_lo)} to {_fmt(a_hi)} mm) and {b_name} (LPS {_fmt(b_lo)} to {_fmt(b_hi)} mm) "
            "do not overlap in space at all; they are probably in different coordinate systems"
        )


def _check_frames_of_reference(images: Sequence[sitk.Image], names: Sequence[str]) -> None:
    for key in FRAME_OF_REFERENCE_KEYS:
        recorded = [(n, img.GetMetaData(key).strip()) for n, img in zip(names, images, strict=True)
                    if img.HasMetaDataKey(key) and img.GetMetaData(key).strip()]
        if len({uid for _, uid in recorded}) > 1:
            listing = "; ".join(f"{n}: {uid}" for n, uid in recorded)
            raise GeometryError(f"the masks are in different DICOM frames of reference ({listing}); register "
                                "them and resample into one frame first")


def _centroid_lps(array: np.ndarray, image: sitk.Image) -> tuple[float, float, float]:
    """Centre of mass (LPS mm) of a non-empty boolean ``[k, j, i]`` array on the image's grid."""
    total = float(np.count_nonzero(array))
    mean_kji = [
        float(np.dot(array.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64),
                     np.arange(array.shape[axis])) / total)
        for axis in range(3)
    ]
    return tuple(float(v) for v in _index_to_lps(image, np.array([mean_kji[::-1]]))[0])  # type: ignore[return-value]


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _fmt(values: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
