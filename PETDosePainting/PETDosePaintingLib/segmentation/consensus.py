"""Consensus of several segmentations: majority vote (k of N, MV2, MV3) and STAPLE.

Two levels:

* mask level — :func:`majority_vote`, :func:`staple` and :func:`combine_masks` take binary masks on one
  grid (any masks: methods, observers, timepoints) and return the consensus;
* method level — :func:`consensus_segmentation` (registry name ``consensus``) runs a list of registered
  segmentation methods on the same seed and combines their masks.

References
----------
* Majority vote over PET methods (MV2/MV3): the MUST-segmenter (Slicer extension, UMCG), reference note
  §2.3 and §8.1; Schaefer A, Vermandel M, et al., EJNMMI 2015 (doi 10.1007/s00259-015-3239-7).
* STAPLE: Warfield SK, Zou KH, Wells WM. *Simultaneous truth and performance level estimation (STAPLE):
  an algorithm for the validation of image segmentation.* IEEE TMI 2004;23:903-921. Implemented by
  SimpleITK's ``STAPLEImageFilter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, PETDPError, ProcessingError
from ..imaging.image import check_same_geometry, point_to_index, require_binary_mask
from .common import DEFAULT_ROI_RADIUS_MM, SegmentationResult, component_at, fill_holes, mask_image

MAJORITY, STAPLE = "majority", "staple"
#: Rule names accepted by :func:`combine_masks`: ``mv2`` / ``mv3`` are majority votes with k = 2 / 3.
RULES = (MAJORITY, "mv2", "mv3", STAPLE)

#: Registered methods the ``consensus`` entry uses by default, when present in the registry at call time
#: and not needing a CT. A design choice: the EANM 41 % threshold plus the statistical methods; methods
#: added to this tuple later (gradient, adaptive thresholds) join the default automatically.
DEFAULT_METHODS = ("threshold", "fcm", "gmm", "gradient")


def _mask_arrays(masks: Sequence[sitk.Image], minimum: int = 2) -> list[np.ndarray]:
    """Validate masks (enough of them, one grid, binary) and return them as boolean arrays."""
    masks = list(masks)
    if len(masks) < minimum:
        raise InputError(f"a consensus needs at least {minimum} masks, got {len(masks)}")
    arrays = []
    for n, mask in enumerate(masks):
        if not isinstance(mask, sitk.Image):
            raise InputError(f"mask {n + 1} is not a SimpleITK image")
        if n:
            check_same_geometry(masks[0], mask, "mask 1", f"mask {n + 1}")
        arrays.append(require_binary_mask(mask, f"mask {n + 1}", allow_empty=True))
    return arrays


def _resolve_k(rule: str, k: int | None, n: int) -> int:
    if rule == "mv2":
        k_eff = 2 if k is None else k
    elif rule == "mv3":
        k_eff = 3 if k is None else k
    else:
        k_eff = n // 2 + 1 if k is None else k  # a strict majority: more than half of the votes
    if rule in ("mv2", "mv3") and k is not None and k != {"mv2": 2, "mv3": 3}[rule]:
        raise InputError(f"rule {rule!r} fixes k = {rule[-1]}; do not also give k = {k}")
    if not 1 <= int(k_eff) <= n:
        raise InputError(f"k must be between 1 and the number of masks ({n}), got {k_eff}")
    return int(k_eff)


def vote_count(masks: Sequence[sitk.Image]) -> np.ndarray:
    """Number of masks that include each voxel, as a ``[k, j, i]`` integer array (masks validated)."""
    return np.sum(_mask_arrays(masks, minimum=1), axis=0, dtype=np.int32)


def majority_vote(masks: Sequence[sitk.Image], k: int | None = None) -> sitk.Image:
    """Voxels included by at least ``k`` of the ``N`` masks; ``k`` defaults to a strict majority, floor(N/2) + 1.

    With ``N`` even a tie is not a majority (3 of 4 are needed; with 2 masks, both): a default that counted ties
    as tumour would turn the vote of two methods into their union. MV2 / MV3 of the MUST-segmenter are
    ``k=2`` / ``k=3``. Masks must be binary and on one grid (:class:`GeometryError` otherwise); at least two.
    Written with numpy rather than ``sitk.LabelVoting``, whose rule is a plurality over labels (for two
    labels, a strict majority) and has no k-of-N.
    """
    arrays = _mask_arrays(masks)
    k_eff = _resolve_k(MAJORITY, k, len(arrays))
    votes = np.sum(arrays, axis=0, dtype=np.int32)
    return mask_image(votes >= k_eff, masks[0])


@dataclass
class StapleResult:
    """What :func:`staple` estimated."""

    mask: sitk.Image  #: consensus (probability >= threshold) on the input grid
    probability: sitk.Image  #: STAPLE's posterior probability of tumour (float32; 0 outside the region)
    sensitivity: list[float]  #: per rater, in input order
    specificity: list[float]  #: per rater, within the region only
    iterations: int
    region_voxels: int  #: voxels in the box STAPLE was computed in
    region_index: tuple[int, int, int]  #: (i, j, k) of the box's first voxel
    region_size: tuple[int, int, int]  #: (i, j, k) size of the box
    details: dict[str, Any] = field(default_factory=dict)


def union_box(arrays: Sequence[np.ndarray], spacing_xyz: Sequence[float], margin_mm: float
              ) -> tuple[slice, slice, slice]:
    """``[k, j, i]`` slices of the bounding box of the masks' union grown by ``margin_mm`` on each side."""
    union = np.any(np.stack(arrays), axis=0)
    if not union.any():
        raise InputError("all masks are empty: there is nothing to combine")
    pad = np.ceil(float(margin_mm) / np.asarray(spacing_xyz, dtype=float)[::-1]).astype(int)
    nz = np.nonzero(union)
    return tuple(slice(max(0, int(a.min()) - p), min(n, int(a.max()) + p + 1))  # type: ignore[return-value]
                 for a, p, n in zip(nz, pad, union.shape, strict=True))


def staple(
    masks: Sequence[sitk.Image],
    *,
    margin_mm: float = 10.0,
    threshold: float = 0.5,
    max_iterations: int = 1000,
) -> StapleResult:
    """STAPLE (Warfield, Zou & Wells, IEEE TMI 2004) consensus with per-rater sensitivity and specificity.

    STAPLE estimates the hidden true segmentation and each rater's sensitivity ``p_j`` and specificity
    ``q_j`` by EM. Specificity counts true-negative voxels, so it depends on how much obvious background
    is included: here STAPLE runs only in the bounding box of the masks' union grown by ``margin_mm``
    (default 10 mm, about 1.5 PET FWHM: a design choice) on every side, so distant trivially-background
    voxels do not push every specificity to 1. Report that box with the numbers (``region_voxels``).

    Uses SimpleITK's ``STAPLEImageFilter`` (foreground value 1, global prior = mean foreground fraction of
    the raters in the box, EM started from sensitivities and specificities near 1, so the first estimate
    is the majority vote), at most ``max_iterations`` EM iterations (default 1000). The consensus is
    ``probability >= threshold`` (default 0.5). At least two binary masks on one grid.
    """
    arrays = _mask_arrays(masks)
    if margin_mm < 0:
        raise InputError(f"margin_mm must be non-negative, got {margin_mm}")
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {threshold}")
    box = union_box(arrays, masks[0].GetSpacing(), margin_mm)
    filt = sitk.STAPLEImageFilter()
    filt.SetForegroundValue(1.0)
    filt.SetMaximumIterations(int(max_iterations))
    crops = [sitk.GetImageFromArray(a[box].astype(np.uint8)) for a in arrays]
    prob_crop = sitk.GetArrayFromImage(filt.Execute(crops)).astype(np.float32)
    if not np.all(np.isfinite(prob_crop)):
        raise ProcessingError("STAPLE returned non-finite probabilities")
    prob = np.zeros(arrays[0].shape, dtype=np.float32)
    prob[box] = prob_crop
    reference = masks[0]
    probability = sitk.GetImageFromArray(prob)
    probability.CopyInformation(reference)
    return StapleResult(
        mask=mask_image(prob >= threshold, reference),
        probability=probability,
        sensitivity=[float(v) for v in filt.GetSensitivity()],
        specificity=[float(v) for v in filt.GetSpecificity()],
        iterations=int(filt.GetElapsedIterations()),
        region_voxels=int(prob_crop.size),
        region_index=(box[2].start, box[1].start, box[0].start),
        region_size=(box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start),
        details={"margin_mm": float(margin_mm), "threshold": float(threshold)},
    )


def combine_masks(masks: Sequence[sitk.Image], rule: str = MAJORITY, *, k: int | None = None,
                  margin_mm: float = 10.0) -> tuple[sitk.Image, dict[str, Any]]:
    """Consensus of ``masks`` by ``rule``: ``"majority"`` (k of N, default a strict majority floor(N/2) + 1),
    ``"mv2"``, ``"mv3"`` or ``"staple"`` (then ``margin_mm``, see :func:`staple`). Returns the mask and what was
    computed."""
    if rule not in RULES:
        raise InputError(f"unknown consensus rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == STAPLE:
        if k is not None:
            raise InputError("k applies to majority votes, not to STAPLE")
        result = staple(masks, margin_mm=margin_mm)
        return result.mask, {"rule": rule, "sensitivity": result.sensitivity, "specificity": result.specificity,
                             "iterations": result.iterations, "region_voxels": result.region_voxels,
                             "margin_mm": float(margin_mm)}
    arrays = _mask_arrays(masks)
    k_eff = _resolve_k(rule, k, len(arrays))
    return majority_vote(masks, k_eff), {"rule": rule, "k": k_eff, "n": len(arrays)}


# ------------------------------------------------------------------------------------- method level


def _method_list(methods: Sequence[str] | str | None, ct: sitk.Image | None) -> tuple[list[str], bool]:
    from .registry import METHODS

    if methods is None:
        chosen = [m for m in DEFAULT_METHODS if m in METHODS and (ct is not None or not METHODS[m].needs_ct)]
        return chosen, True
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    chosen = list(dict.fromkeys(methods))  # keep order, drop repeats
    if "consensus" in chosen:
        raise InputError("the consensus cannot include itself")
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise InputError(f"unknown segmentation method(s) {', '.join(unknown)} for the consensus; "
                         f"choose among {', '.join(n for n in METHODS if n != 'consensus')}")
    return chosen, False


def consensus_segmentation(
    suv: sitk.Image,
    seed_lps: Sequence[float] | None,
    roi: sitk.Image | None = None,
    background: sitk.Image | None = None,
    *,
    methods: Sequence[str] | str | None = None,
    rule: str = MAJORITY,
    k: int | None = None,
    margin_mm: float = 10.0,
    method_parameters: dict[str, dict[str, Any]] | None = None,
    ct: sitk.Image | None = None,
    roi_radius_mm: float = DEFAULT_ROI_RADIUS_MM,
    saddle_fraction: float = 0.5,
) -> SegmentationResult:
    """Run several registered methods on the same click and combine their masks (:func:`combine_masks`).

    Parameters
    ----------
    methods : registry names (a list, or a comma-separated string). Default: those of
        :data:`DEFAULT_METHODS` present in the registry when called (today ``threshold`` at 41 % SUVmax,
        ``fcm`` and ``gmm``), each with its own defaults. With the default list a method that fails on
        this lesion is skipped and reported in ``details["skipped"]``; with an explicit list any failure
        is an error (so a requested member is never silently missing).
    rule : ``"majority"`` (default; ``k`` of N, default floor(N/2) + 1), ``"mv2"``, ``"mv3"`` or ``"staple"``.
    k : votes needed for the majority rule.
    margin_mm : STAPLE's box margin around the union (default 10 mm).
    method_parameters : ``{name: {parameter: value}}`` passed to individual methods.
    ct : CT on the PET grid, passed to members that need it (``randomwalker``).
    roi_radius_mm, saddle_fraction : passed to every member that takes them (default 40 mm, 0.5), so all
        members work in the same region.

    The consensus is then restricted to its connected component at the seed (or, if the seed voxel is
    not in it, the component with the most votes) with holes filled, as for the members. ``details``
    holds each member's volume and threshold, the votes and, with STAPLE, each member's sensitivity and
    specificity (within the box around the union).
    """
    from .registry import METHODS, run_method

    if rule not in RULES:
        raise InputError(f"unknown consensus rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == STAPLE and k is not None:
        raise InputError("k applies to majority votes, not to STAPLE")
    if seed_lps is not None:
        point_to_index(suv, seed_lps, "seed")  # a bad click fails here, not once per member
    method_parameters = dict(method_parameters or {})
    chosen, automatic = _method_list(methods, ct)
    stray = sorted(set(method_parameters) - set(chosen))
    if stray:
        raise InputError(f"method_parameters given for {', '.join(stray)}, which the consensus does not run")
    for name, given in method_parameters.items():
        refused = sorted(set(given) - set(METHODS[name].parameters))
        if refused:
            raise InputError(f"consensus member {name!r} does not take {', '.join(refused)} "
                             f"(it takes {', '.join(METHODS[name].parameters)})")
    members: dict[str, SegmentationResult] = {}
    skipped: dict[str, str] = {}
    for name in chosen:  # loop over methods
        info = METHODS[name]
        if info.needs_ct and ct is None:
            raise InputError(f"consensus member {name!r} needs a CT (ct=...)")
        shared = {"roi_radius_mm": roi_radius_mm if roi is None else None, "saddle_fraction": saddle_fraction,
                  "ct": ct if info.needs_ct else None}
        params = {key: v for key, v in shared.items() if key in info.parameters}
        params.update(method_parameters.get(name, {}))
        try:
            members[name] = run_method(name, suv, seed_lps, roi, background, **params)
        except PETDPError as error:
            if not automatic:
                raise type(error)(f"consensus member {name!r} failed: {error}") from error
            skipped[name] = str(error)
    if len(members) < 2:
        raise InputError(f"a consensus needs at least two segmentations; got {len(members)} "
                         f"({', '.join(members) or 'none'})" + (f", skipped: {skipped}" if skipped else ""))
    names = list(members)
    masks = [members[n].mask for n in names]
    combined, info = combine_masks(masks, rule, k=k, margin_mm=margin_mm)
    votes = np.sum([sitk.GetArrayViewFromImage(m) > 0 for m in masks], axis=0)
    consensus = sitk.GetArrayFromImage(combined) > 0
    if not consensus.any():
        raise ProcessingError(f"the {rule} consensus of {', '.join(names)} is empty")
    consensus = consensus_seed_component(consensus, votes, suv, seed_lps)
    details: dict[str, Any] = {
        "members": {n: {"volume_ml": members[n].volume_ml, "threshold": members[n].threshold}
                    for n in names},
        "skipped": skipped,
        **{key: v for key, v in info.items() if key not in ("sensitivity", "specificity")},
    }
    if rule == STAPLE:
        details["sensitivity"] = dict(zip(names, info["sensitivity"], strict=True))
        details["specificity"] = dict(zip(names, info["specificity"], strict=True))
    details["voxels_by_votes"] = {str(v): int(np.count_nonzero(votes == v)) for v in range(1, len(names) + 1)}
    return SegmentationResult(
        method="consensus",
        mask=mask_image(consensus, suv),
        parameters={"methods": names, "rule": rule, "k": info.get("k"),
                    "margin_mm": margin_mm if rule == STAPLE else None,
                    "method_parameters": method_parameters, "roi_radius_mm": roi_radius_mm if roi is None else None,
                    "saddle_fraction": saddle_fraction},
        details=details,
    )


def consensus_seed_component(consensus: np.ndarray, votes: np.ndarray, suv: sitk.Image,
                             seed_lps: Sequence[float] | None) -> np.ndarray:
    """The part of a consensus mask a one-click user means: holes filled, the component holding the seed.

    Without a seed (or with the seed outside the consensus), the component with the most votes is kept.
    Used by the ``consensus`` method and by the Slicer panel's method comparison, so both agree.
    """
    from scipy import ndimage

    filled = fill_holes(consensus)
    if seed_lps is not None:
        i, j, k = point_to_index(suv, seed_lps, "seed")
        if filled[k, j, i]:
            return fill_holes(component_at(filled, (k, j, i)))
    labels, n = ndimage.label(consensus, structure=np.ones((3, 3, 3)))
    if n == 1:
        return filled
    score = ndimage.sum_labels(votes, labels, index=np.arange(1, n + 1))
    return fill_holes(labels == int(np.argmax(score)) + 1)
