"""The registry of PET segmentation methods: one name per method, used by the CLI, panels and batch.

Each entry wraps a library function with the common signature of
:mod:`PETDosePaintingLib.segmentation.common` and says what the method needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

from ..errors import InputError
from .common import SegmentationResult
from .thresholds import threshold_absolute, threshold_fraction_of_max


@dataclass(frozen=True)
class MethodInfo:
    """A registered segmentation method."""

    name: str
    function: Callable[..., SegmentationResult]
    description: str
    needs_suv: bool = False  #: the image must be in SUV units (absolute thresholds)
    needs_ct: bool = False  #: a CT on the PET grid is required (co-segmentation)
    parameters: tuple[str, ...] = ()  #: keyword parameters the method accepts


def _threshold(suv: sitk.Image, seed_lps, roi=None, background=None, *, fraction: float | None = None,
               absolute: float | None = None, **kwargs: Any) -> SegmentationResult:
    """``threshold``: an absolute SUV if ``absolute`` is given, else ``fraction`` of SUVmax (default 0.41)."""
    if fraction is not None and absolute is not None:
        raise InputError("give either a fraction of SUVmax or an absolute SUV threshold, not both")
    if absolute is not None:
        return threshold_absolute(suv, seed_lps, roi, background, absolute=absolute, **kwargs)
    return threshold_fraction_of_max(suv, seed_lps, roi, background,
                                     fraction=0.41 if fraction is None else fraction, **kwargs)


METHODS: dict[str, MethodInfo] = {
    "threshold": MethodInfo(
        "threshold", _threshold,
        "fixed threshold: a fraction of SUVmax (default 41 %, EANM) or an absolute SUV (e.g. 2.5)",
        parameters=("fraction", "absolute", "roi_radius_mm", "saddle_fraction"),
    ),
}


def register_method(info: MethodInfo) -> None:
    """Add (or replace) a method in the registry."""
    METHODS[info.name] = info


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def get_method(name: str) -> MethodInfo:
    """The method called ``name``; :class:`InputError` listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown segmentation method {name!r}; choose one of {', '.join(METHODS)}") from None


def run_method(name: str, suv: sitk.Image, seed_lps: Sequence[float] | None, roi: sitk.Image | None = None,
               background: sitk.Image | None = None, **parameters: Any) -> SegmentationResult:
    """Run the method ``name``; parameters it does not accept are refused with a clear message."""
    info = get_method(name)
    unknown = sorted(k for k, v in parameters.items() if v is not None and k not in info.parameters)
    if unknown:
        raise InputError(f"method {name!r} does not take {', '.join(unknown)} "
                         f"(it takes {', '.join(info.parameters) or 'no parameters'})")
    given = {k: v for k, v in parameters.items() if v is not None}
    return info.function(suv, seed_lps, roi, background, **given)
