"""Targets across timepoints: volume course, and persistent / newborn / resolved sub-volumes (§5.3).

Semantics (``dose_painting.md`` §5.3), computed in the **current timepoint's space, on the current mask's
grid** (the space of the phase-k CT or PET, where a phase-k plan boosts the newborn voxels):

* ``H_k`` = the current mask (e.g. FDG-avid or hypoxic) in its own space;
* ``P = H_{<k}->k`` = the union of the previous masks, each carried into the current space through its
  transform (:func:`~PETDosePaintingLib.comparison.registration.propagate_mask`, signed-distance
  interpolation by default);
* ``persistent = H_k ∩ P`` (strict);
* ``newborn = H_k \\ dilate(P, t)`` and ``resolved = P \\ dilate(H_k, t)``, where ``dilate(X, t)`` holds every
  voxel whose centre lies within ``t`` mm (Euclidean, true spacing) of a voxel centre of X: the tolerance
  margin, so that a contour that merely moved or grew by up to ``t`` mm (PET noise, partial volume,
  registration error) produces no newborn or resolved voxels;
* then connected components (26-connectivity by default) of ``newborn`` and ``resolved`` smaller than
  ``min_island_ml`` are dropped (speckle).

With ``t = 0`` and no minimum island these are exactly the set operations ``H_k ∩ P``, ``H_k \\ P``,
``P \\ H_k``. Otherwise ``H_k`` splits into persistent, newborn and *tolerated* voxels (within the margin of
``P`` but outside it, or in dropped islands), reported as ``tolerated_current_ml`` (and likewise
``tolerated_previous_ml`` for ``P``).

Transform direction: a registration with fixed = previous scan, moving = current scan (the project's
convention, fixed = baseline) returns ``T: previous -> current`` points. Carrying a previous mask into the
current space needs the opposite map, so by default (``transforms_map="previous_to_current"``) each
transform is inverted on the current grid (:func:`~PETDosePaintingLib.comparison.registration.invert_transform`,
exact for linear transforms); give ``"current_to_previous"`` when you already hold the pull transforms
(e.g. from a registration with fixed = current, moving = previous).

Defaults: tolerance 1.5 voxels of the current grid (its largest spacing) and islands of 0.3 mL are design
defaults inside §5.3's ranges (1-2 voxels; 0.3-0.5 cm³); they are not validated values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imaging.image import image_from_array, mask_volume_ml, require_binary_mask, voxel_volume_ml
from .metrics import OverlapMetrics, compare_masks
from .registration import check_frames_of_reference, invert_transform, propagate_mask

#: Transform directions accepted by :func:`longitudinal_changes`.
TRANSFORM_DIRECTIONS = ("previous_to_current", "current_to_previous")
#: Default minimum island volume (mL) of newborn and resolved components (§5.3: 0.3-0.5 cm³).
DEFAULT_MIN_ISLAND_ML = 0.3
#: Default tolerance margin in voxels of the current grid (largest spacing), §5.3: 1-2 voxels.
DEFAULT_TOLERANCE_VOXELS = 1.5


@dataclass(frozen=True)
class TimepointVolume:
    """Volume of one timepoint's mask and its change (mL on the mask's own grid; % of the earlier volume)."""

    name: str
    volume_ml: float
    change_ml: float | None  #: vs the previous timepoint (``None`` for the first)
    change_pct: float | None  #: 100 change / previous volume (``None`` if that volume is 0)
    change_from_first_ml: float | None
    change_from_first_pct: float | None


@dataclass(eq=False)
class LongitudinalChange:
    """Persistent / newborn / resolved sub-volumes of a current mask against earlier ones (see the module
    docstring). Images are uint8 0/1 on the current mask's grid; volumes in mL on that grid.

    Attributes
    ----------
    current_name, previous_names : names used in reports.
    space : where everything was computed (the current mask's grid).
    previous : ``P``, the union of the propagated previous masks.
    persistent, newborn, resolved : the sub-volumes.
    current_ml, previous_ml, persistent_ml, newborn_ml, resolved_ml : volumes (mL).
    tolerated_current_ml : voxels of ``H_k`` neither persistent nor newborn (within the margin, or in
        dropped islands).
    tolerated_previous_ml : voxels of ``P`` neither persistent nor resolved.
    newborn_islands, resolved_islands : components kept; ``*_dropped`` : components below ``min_island_ml``.
    tolerance_mm, min_island_ml, propagation : the settings.
    inverse_round_trip_max_mm : worst round-trip error of the transform inversions (0 if none was needed).
    overlap : agreement of ``H_k`` with ``P`` (Dice, HD95, ...; :func:`~.metrics.compare_masks`), ``None``
        when a mask is empty.
    """

    current_name: str
    previous_names: tuple[str, ...]
    space: str
    previous: sitk.Image
    persistent: sitk.Image
    newborn: sitk.Image
    resolved: sitk.Image
    current_ml: float
    previous_ml: float
    persistent_ml: float
    newborn_ml: float
    resolved_ml: float
    tolerated_current_ml: float
    tolerated_previous_ml: float
    newborn_islands: int
    newborn_islands_dropped: int
    resolved_islands: int
    resolved_islands_dropped: int
    tolerance_mm: float
    min_island_ml: float
    propagation: str
    inverse_round_trip_max_mm: float
    overlap: OverlapMetrics | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no images)."""
        keys = ("current_name", "space", "current_ml", "previous_ml", "persistent_ml", "newborn_ml", "resolved_ml",
                "tolerated_current_ml", "tolerated_previous_ml", "newborn_islands", "newborn_islands_dropped",
                "resolved_islands", "resolved_islands_dropped", "tolerance_mm", "min_island_ml", "propagation",
                "inverse_round_trip_max_mm")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        out["previous_names"] = list(self.previous_names)
        out["overlap"] = None if self.overlap is None else self.overlap.__dict__.copy()
        return out


def volume_course(masks: Mapping[str, sitk.Image] | Sequence[tuple[str, sitk.Image]]) -> list[TimepointVolume]:
    """Per-timepoint volume (mL, each mask on its own grid: the project's volume definition) and its change
    from the previous and from the first timepoint, in the order given.

    Volumes are those of the masks as segmented in each timepoint's own space; they are not corrected for
    the deformation's volume change (the Jacobian), which is anatomy, not response.
    """
    items = list(masks.items()) if isinstance(masks, Mapping) else list(masks)
    if not items:
        raise InputError("give at least one mask")
    out: list[TimepointVolume] = []
    first = previous = None
    for name, mask in items:
        require_binary_mask(mask, f"mask {name!r}", allow_empty=True)
        volume = mask_volume_ml(mask)
        change = None if previous is None else volume - previous
        change_first = None if first is None else volume - first
        out.append(TimepointVolume(
            name=str(name), volume_ml=volume, change_ml=change,
            change_pct=None if previous is None or previous == 0 else 100.0 * change / previous,
            change_from_first_ml=change_first,
            change_from_first_pct=None if first is None or first == 0 else 100.0 * change_first / first))
        if first is None:
            first = volume
        previous = volume
    return out


def longitudinal_changes(
    current: sitk.Image,
    previous: sitk.Image | Mapping[str, sitk.Image],
    transforms: sitk.Transform | Mapping[str, sitk.Transform | None] | None = None,
    *,
    transforms_map: str = "previous_to_current",
    tolerance_mm: float | None = None,
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
    propagation: str = "distance",
    fully_connected: bool = True,
    current_name: str = "current",
    allow_empty: bool = False,
) -> LongitudinalChange:
    """Persistent, newborn and resolved sub-volumes of ``current`` against earlier masks (§5.3).

    Parameters
    ----------
    current : binary mask of the current timepoint (its grid defines the output space).
    previous : one earlier mask, or several by name (their union is used).
    transforms : one transform per previous mask (a single one for a single mask, or a mapping by name);
        ``None`` for a mask in the current frame of reference (refused if the masks record different DICOM
        frames of reference).
    transforms_map : ``"previous_to_current"`` (default: ``T`` maps previous-space points to current-space
        points, what a registration with fixed = previous, moving = current returns; it is inverted on the
        current grid) or ``"current_to_previous"`` (already the pull map; used as is).
    tolerance_mm : the margin ``t`` (mm, >= 0); default 1.5 x the largest spacing of the current grid.
    min_island_ml : newborn/resolved components below this volume (mL) are dropped (default 0.3; 0 keeps all).
    propagation : ``"distance"`` (default) or ``"nearest"`` (see ``propagate_mask``).
    fully_connected : 26-connectivity for the islands (default), else 6.
    current_name : name for reports.
    allow_empty : accept empty masks (a complete response, say); otherwise :class:`InputError`.
    """
    if transforms_map not in TRANSFORM_DIRECTIONS:
        raise InputError(f"unknown transforms_map {transforms_map!r}; use one of {', '.join(TRANSFORM_DIRECTIONS)}")
    cur = require_binary_mask(current, f"{current_name} mask", allow_empty=allow_empty)
    prev_masks = {"previous": previous} if isinstance(previous, sitk.Image) else dict(previous)
    if not prev_masks:
        raise InputError("give at least one previous mask")
    if isinstance(transforms, Mapping):
        unknown = sorted(set(transforms) - set(prev_masks))
        if unknown:
            raise InputError(f"transforms given for unknown previous masks: {', '.join(map(repr, unknown))}")
        tx_map = {name: transforms.get(name) for name in prev_masks}
    elif transforms is None:
        tx_map = dict.fromkeys(prev_masks)
    else:
        if len(prev_masks) != 1:
            raise InputError(f"one transform given for {len(prev_masks)} previous masks; give a mapping by name")
        tx_map = {next(iter(prev_masks)): transforms}
    spacing = np.asarray(current.GetSpacing(), dtype=float)
    if tolerance_mm is None:
        tolerance_mm = DEFAULT_TOLERANCE_VOXELS * float(spacing.max())
    tolerance_mm = float(tolerance_mm)
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise InputError(f"tolerance_mm must be >= 0, got {tolerance_mm!r}")
    min_island_ml = float(min_island_ml)
    if not np.isfinite(min_island_ml) or min_island_ml < 0:
        raise InputError(f"min_island_ml must be >= 0, got {min_island_ml!r}")

    union = np.zeros(cur.shape, dtype=bool)
    worst_round_trip = 0.0
    for name, mask in prev_masks.items():
        transform = tx_map[name]
        label = f"previous mask {name!r}"
        require_binary_mask(mask, label, allow_empty=allow_empty)
        if transform is None:
            check_frames_of_reference(mask, current, label, f"{current_name} mask")
        elif transforms_map == "previous_to_current":
            inverse = invert_transform(transform, current)
            worst_round_trip = max(worst_round_trip, inverse.round_trip_max_mm)
            transform = inverse.transform
        propagated = propagate_mask(mask, current, transform, method=propagation, allow_empty=allow_empty,
                                    mask_name=label)
        union |= sitk.GetArrayViewFromImage(propagated) > 0

    structure = ndimage.generate_binary_structure(3, 3 if fully_connected else 1)
    vox_ml = voxel_volume_ml(current)
    persistent = cur & union
    newborn_raw = cur & ~_dilate_mm(union, spacing, tolerance_mm)
    resolved_raw = union & ~_dilate_mm(cur, spacing, tolerance_mm)
    newborn, nb_kept, nb_dropped = _drop_islands(newborn_raw, structure, min_island_ml, vox_ml)
    resolved, rs_kept, rs_dropped = _drop_islands(resolved_raw, structure, min_island_ml, vox_ml)

    def image(array: np.ndarray) -> sitk.Image:
        return image_from_array(array, current)

    overlap = None
    if cur.any() and union.any():
        overlap = compare_masks(image(cur), image(union), mask_name=current_name,
                                reference_name="+".join(prev_masks), grid="reference")

    def ml(array: np.ndarray) -> float:
        return float(np.count_nonzero(array)) * vox_ml

    return LongitudinalChange(
        current_name=current_name, previous_names=tuple(prev_masks),
        space=f"{current_name} grid (size {tuple(current.GetSize())}, spacing "
              f"{tuple(round(float(s), 4) for s in spacing)} mm)",
        previous=image(union), persistent=image(persistent), newborn=image(newborn), resolved=image(resolved),
        current_ml=ml(cur), previous_ml=ml(union), persistent_ml=ml(persistent), newborn_ml=ml(newborn),
        resolved_ml=ml(resolved), tolerated_current_ml=ml(cur & ~persistent & ~newborn),
        tolerated_previous_ml=ml(union & ~persistent & ~resolved), newborn_islands=nb_kept,
        newborn_islands_dropped=nb_dropped, resolved_islands=rs_kept, resolved_islands_dropped=rs_dropped,
        tolerance_mm=tolerance_mm, min_island_ml=min_island_ml, propagation=propagation,
        inverse_round_trip_max_mm=worst_round_trip, overlap=overlap,
        parameters={"transforms_map": transforms_map, "fully_connected": fully_connected},
    )


def dilate_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Euclidean dilation of a binary mask by ``radius_mm``: every voxel whose centre lies within the radius
    of an inside voxel centre (exact EDT with the true spacing). Same grid, uint8 0/1."""
    inside = require_binary_mask(mask, "mask", allow_empty=True)
    if not np.isfinite(radius_mm) or radius_mm < 0:
        raise InputError(f"radius_mm must be >= 0, got {radius_mm!r}")
    return image_from_array(_dilate_mm(inside, np.asarray(mask.GetSpacing(), float), float(radius_mm)), mask)


def _dilate_mm(array: np.ndarray, spacing_ijk: np.ndarray, radius_mm: float) -> np.ndarray:
    if radius_mm <= 0 or not array.any():
        return array.copy()
    if array.all():
        return array.copy()
    distance = ndimage.distance_transform_edt(~array, sampling=tuple(float(s) for s in spacing_ijk[::-1]))
    return distance <= radius_mm + 1e-9


def _drop_islands(array: np.ndarray, structure: np.ndarray, min_ml: float, vox_ml: float
                  ) -> tuple[np.ndarray, int, int]:
    labels, n = ndimage.label(array, structure=structure)
    if n == 0:
        return array.copy(), 0, 0
    sizes = np.bincount(labels.ravel())[1:] * vox_ml
    keep = np.concatenate([[False], sizes >= min_ml - 1e-12])
    return keep[labels], int(np.count_nonzero(keep)), int(n - np.count_nonzero(keep))


__all__ = ["DEFAULT_MIN_ISLAND_ML", "DEFAULT_TOLERANCE_VOXELS", "TRANSFORM_DIRECTIONS", "LongitudinalChange",
           "TimepointVolume", "dilate_mm", "longitudinal_changes", "volume_course"]
