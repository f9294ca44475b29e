"""The optional planning engine (pyRadPlan) and the objectives this project adds to it.

pyRadPlan (DKFZ, the Python port of matRad: Wieser HP et al., Med Phys 2017;44:2556 for matRad; PyPI
``pyRadPlan``, https://github.com/e0404/pyRadPlan) is an **optional extra** (``pip install -e ".[planning]"`` or
``pip install petdosepainting[planning]``). Nothing here imports it at module level: :func:`load_pyradplan`
imports it on first use (with :func:`importlib.import_module`, so the rest of the library, which must work
without the extra, never touches it) and raises :class:`PlanningExtraMissing` (CLI exit code 2) with the
install command when it is absent or too old.

Objectives added to pyRadPlan's registry (subclasses of its ``Objective``, registered with
``register_objective``, reference note ``dose_painting.md`` §6.1 and Appendix A). ``d`` is the dose at the
VOI's voxels on the dose grid, ``p`` the voxel prescription there, ``n`` the number of voxels:

* ``PETDP Relative Squared Mimicking``: ``s * mean(((d - p) / p)^2) = s * mean((Q - 1)^2)``, a smooth
  surrogate of the quality factor QF = mean(|Q - 1|) (Vanderstraeten B et al., Radiother Oncol
  2006;79:249). ``s`` (Gy^2, default the squared mean prescription) only rescales it so that the same
  priorities weigh it like pyRadPlan's ``Squared Mimicking`` (mean((d - p)^2), in Gy^2).
* ``PETDP QVH Band``: ``s * mean(max(0, lo - Q)^2 + max(0, Q - hi)^2)`` with ``lo = 0.95``, ``hi = 1.05``:
  a one-sided under/over penalty relative to the map, zero inside the band Q95..Q105 of the QVH
  (Vanderstraeten 2006; Korreman 2010's Q(0.95-1.05)). Same scale ``s``.
* ``PETDP Mean Dose Limit``: ``max(0, sum(w d) / sum(w) - L)^2``, a one-sided penalty on a weighted mean
  dose (zero when it is at or below ``L``; weights ``w`` from an image, default all 1: the plain mean). The
  planner passes the trilinear-interpolation weights that make ``sum(w d)`` exactly the mean of the dose
  interpolated onto the organ's CT voxels, the number it verifies. pyRadPlan's ``Mean Dose`` objective is
  two-sided (it pulls a mean below its reference *up*), which is wrong for a limit such as a parotid mean.
* ``PETDP Max Dose Limit``: pyRadPlan's ``Squared Overdosing`` (``mean(max(0, d - L)^2)``, matRad's
  ``SquaredOverdosing``) with a ``tag`` so the planner can find and re-weight it.

Each objective carries a ``tag`` (a plain string field) naming the constraint or target it serves, so the
planner can find its instances inside a pyRadPlan problem (pyRadPlan copies objectives when it applies
overlap priorities) and change their priority between optimisation rounds.

Image-valued parameters (``p``) are given on the dose grid (see :mod:`.planning`), so pyRadPlan's own
resampling of them (cubic B-spline, which rings at the target edge when the map is resampled between grids)
is the identity.
"""

import importlib
import re
import warnings
from types import SimpleNamespace
from typing import Any

from ..errors import PETDPError

#: The pyRadPlan release the extra pins and the tests use; the planning code needs at least 0.3.2
#: (``Squared Mimicking``, the voxel-wise reference objective, first appears there).
TESTED_PYRADPLAN = "0.3.5"
MINIMUM_PYRADPLAN = (0, 3, 2)
#: One line telling the user how to get the planning engine.
INSTALL_HINT = ('install the planning extra: pip install -e ".[planning]" (from a source checkout) or '
                "pip install petdosepainting[planning]")

#: Registered names of the objectives added here.
RELATIVE_NAME = "PETDP Relative Squared Mimicking"
BAND_NAME = "PETDP QVH Band"
MEAN_LIMIT_NAME = "PETDP Mean Dose Limit"
MAX_LIMIT_NAME = "PETDP Max Dose Limit"


class PlanningExtraMissing(PETDPError):
    """The optional planning engine (pyRadPlan) is not installed, or is too old (exit code 2)."""

    exit_code = 2


_CACHE: dict[str, SimpleNamespace] = {}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def pyradplan_available() -> bool:
    """Whether :func:`load_pyradplan` would succeed (imports pyRadPlan if it is installed)."""
    try:
        load_pyradplan()
    except PlanningExtraMissing:
        return False
    return True


def load_pyradplan() -> SimpleNamespace:
    """Import pyRadPlan and register this project's objectives; a namespace of what the planner uses.

    Raises :class:`PlanningExtraMissing` (one sentence with the install command) if pyRadPlan cannot be
    imported or is older than 0.3.2. Other versions than :data:`TESTED_PYRADPLAN` are used but reported
    (``untested_version``).
    """
    if "prp" in _CACHE:
        return _CACHE["prp"]
    # numpydantic warns (DeprecationWarning) about pyRadPlan's string shape annotations at import: not ours to fix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _load()


def _load() -> SimpleNamespace:
    try:
        top = importlib.import_module("pyRadPlan")
    except ImportError as exc:
        raise PlanningExtraMissing(f"treatment planning needs pyRadPlan, which is not installed ({exc}); "
                                   f"{INSTALL_HINT}") from None
    version = str(getattr(top, "__version__", "") or "0")
    if _version_tuple(version) < MINIMUM_PYRADPLAN:
        raise PlanningExtraMissing(f"pyRadPlan {version} is installed but planning needs >= 0.3.2 (the voxel-wise "
                                   f"'Squared Mimicking' objective); {INSTALL_HINT}")
    try:
        ns = SimpleNamespace(
            version=version,
            untested_version=version != TESTED_PYRADPLAN,
            top=top,
            ct=importlib.import_module("pyRadPlan.ct"),
            cst=importlib.import_module("pyRadPlan.cst"),
            core=importlib.import_module("pyRadPlan.core"),
            engines=importlib.import_module("pyRadPlan.dose.engines"),
            stf=importlib.import_module("pyRadPlan.stf"),
            plan=importlib.import_module("pyRadPlan.plan"),
            objectives=importlib.import_module("pyRadPlan.optimization.objectives"),
            objective_base=importlib.import_module("pyRadPlan.optimization.objectives._objective"),
            problems=importlib.import_module("pyRadPlan.optimization.problems"),
            solvers=importlib.import_module("pyRadPlan.optimization.solvers"),
        )
    except ImportError as exc:  # a broken install (e.g. a missing dependency of pyRadPlan)
        raise PlanningExtraMissing(f"pyRadPlan {version} is installed but cannot be imported ({exc}); "
                                   f"{INSTALL_HINT}") from None
    ns.objective_classes = _define_objectives(ns)
    _CACHE["prp"] = ns
    return ns


def _define_objectives(ns: SimpleNamespace) -> SimpleNamespace:
    """Define and register the objectives of the module docstring (once per process)."""
    from typing import Annotated

    pydantic = importlib.import_module("pydantic")
    sitk = importlib.import_module("SimpleITK")
    array_api_compat = importlib.import_module("array_api_compat")
    field = pydantic.Field
    objective_base = ns.objective_base.Objective
    metadata = ns.objective_base.ParameterMetadata
    grid_type = ns.core.Grid
    registry = ns.objectives.get_available_objectives()

    def default_image():
        image = sitk.Image([1, 1, 1], sitk.sitkFloat32)
        image.SetPixel(0, 0, 0, 70.0)
        return image

    def unit_image():
        image = sitk.Image([1, 1, 1], sitk.sitkFloat32)
        image.SetPixel(0, 0, 0, 1.0)
        return image

    def reference(objective, name: str, values):
        # pyRadPlan >= 0.5 has a helper; 0.3.x keeps the resampled reference in this cache.
        getter = getattr(objective, "_image_reference", None)
        if getter is not None:
            return getter(name, values)
        return objective._resampled_image_reference_cache[name]

    class RelativeSquaredMimicking(objective_base):
        """``s * mean(((d - p) / p)^2)``: a smooth surrogate of QF (see the module docstring)."""

        name = RELATIVE_NAME

        d_ref: Annotated[sitk.Image | tuple[Any, grid_type], field(default_factory=default_image),
                         metadata(kind="image_reference")]
        scale: Annotated[float, field(default=1.0, gt=0.0), metadata(kind="numeric")]
        tag: str = ""

        def compute_objective(self, values):
            xp = array_api_compat.array_namespace(values)
            p = xp.maximum(reference(self, "d_ref", values), 1e-6)
            r = (values - p) / p
            return self.scale * (r @ r) / array_api_compat.size(values)

        def compute_gradient(self, values):
            xp = array_api_compat.array_namespace(values)
            p = xp.maximum(reference(self, "d_ref", values), 1e-6)
            return self.scale * 2.0 * (values - p) / (p * p) / array_api_compat.size(values)

    class QvhBand(objective_base):
        """``s * mean(max(0, lo - Q)^2 + max(0, Q - hi)^2)``, Q = d / p (see the module docstring)."""

        name = BAND_NAME

        d_ref: Annotated[sitk.Image | tuple[Any, grid_type], field(default_factory=default_image),
                         metadata(kind="image_reference")]
        lower: Annotated[float, field(default=0.95, gt=0.0), metadata(kind="numeric")]
        upper: Annotated[float, field(default=1.05, gt=0.0), metadata(kind="numeric")]
        scale: Annotated[float, field(default=1.0, gt=0.0), metadata(kind="numeric")]
        tag: str = ""

        def _parts(self, values):
            xp = array_api_compat.array_namespace(values)
            p = xp.maximum(reference(self, "d_ref", values), 1e-6)
            q = values / p
            return p, xp.clip(self.lower - q, min=0.0, max=None), xp.clip(q - self.upper, min=0.0, max=None)

        def compute_objective(self, values):
            _, under, over = self._parts(values)
            return self.scale * (under @ under + over @ over) / array_api_compat.size(values)

        def compute_gradient(self, values):
            p, under, over = self._parts(values)
            return self.scale * 2.0 * (over - under) / p / array_api_compat.size(values)

    class MeanDoseLimit(objective_base):
        """``max(0, sum(w d) / sum(w) - L)^2``: one-sided penalty on a (weighted) mean dose."""

        name = MEAN_LIMIT_NAME

        weights: Annotated[sitk.Image | tuple[Any, grid_type], field(default_factory=unit_image),
                           metadata(kind="image_reference")]
        d_max: Annotated[float, field(default=26.0, ge=0.0), metadata(kind="reference")]
        tag: str = ""

        def _excess(self, values):
            xp = array_api_compat.array_namespace(values)
            w = reference(self, "weights", values)
            total = xp.sum(w)
            return w, total, xp.clip((w @ values) / total - self.d_max, min=0.0, max=None)

        def compute_objective(self, values):
            _, _, excess = self._excess(values)
            return excess * excess

        def compute_gradient(self, values):
            w, total, excess = self._excess(values)
            return 2.0 * excess * w / total

    class MaxDoseLimit(ns.objectives.SquaredOverdosing):
        """pyRadPlan's ``Squared Overdosing`` with a ``tag`` (see the module docstring)."""

        name = MAX_LIMIT_NAME
        tag: str = ""

    classes = SimpleNamespace(relative=RelativeSquaredMimicking, band=QvhBand, mean_limit=MeanDoseLimit,
                              max_limit=MaxDoseLimit)
    for cls in (RelativeSquaredMimicking, QvhBand, MeanDoseLimit, MaxDoseLimit):
        if cls.name in registry:  # registered by an earlier import of this module (e.g. a reload in Slicer)
            registry.pop(cls.name)
        ns.objectives.register_objective(cls)
    return classes


__all__ = ["INSTALL_HINT", "TESTED_PYRADPLAN", "PlanningExtraMissing", "load_pyradplan", "pyradplan_available"]
