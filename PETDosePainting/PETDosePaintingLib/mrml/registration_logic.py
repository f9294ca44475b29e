"""Node-level logic for registration, dose accumulation and transform QA (tier 2: ``slicer`` and ``vtk`` only).

Transforms from Slicer's own registration modules (General Registration (BRAINS), SlicerElastix, the
Transforms module) arrive as transform nodes; this module turns them into the SimpleITK transforms the
library uses, and puts library results back as transform nodes (:mod:`.transforms` does the RAS<->LPS
conversion).

Convention (``dose_painting.md`` §5.2): a registration module's output node, set as the parent of the
*moving* volume, shows it aligned with the fixed volume. Its world -> local map (``TransformFromParent``:
fixed -> moving) is the ITK transform ``T`` the library uses, whichever direction the node stores
(``ToParent`` nodes are inverted by VTK on the fly). For a node inside a transform hierarchy the whole
chain to the world counts, so a dose node nested as Slicer's recipe puts it (§5.5: ``Dose_17`` under
``T_{7->17}`` under ``T_{0->7}``) carries its composed baseline -> phase transform.

* Linear chains become an exact ``sitk.AffineTransform``.
* A single grid-transform node storing its displacement field as ``FromParent`` becomes an exact
  ``sitk.DisplacementFieldTransform`` of the same field.
* Outside the sampled grid a sampled field has zero displacement: sample on a grid covering the region of
  use (the fixed volume).
* Anything else non-linear (B-spline nodes, ``ToParent`` grids, hierarchies) is sampled as a displacement
  field on a reference grid (the fixed volume, optionally coarsened): ``u(x) = T(x) - x`` through VTK's own
  evaluation of the node, then linearly interpolated by SimpleITK between the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import SimpleITK as sitk

from ..comparison.accumulation import AccumulationResult, accumulate_doses
from ..comparison.registration import (
    JacobianQA,
    RegistrationResult,
    jacobian_qa,
    register_bspline,
    register_rigid,
)
from ..errors import InputError
from .transforms import sitk_transform_from_node, transform_node_from_sitk
from .volumes import (
    image_from_volume_node,
    volume_node_from_image,
)


def transform_node_from_registration(result: RegistrationResult | sitk.Transform, name: str = "Registration",
                                     scene=None, reference: sitk.Image | None = None, node=None):
    """A transform node (``FromParent`` = the fixed -> moving transform) for a library registration result.

    Put the moving volume under it to see it aligned with the fixed one. Linear results give a linear
    transform node; non-linear ones (B-spline, composites) a grid transform node sampled on ``reference``
    (the fixed image; required then). ``node`` is updated instead of creating one.
    """
    transform = result.transform if isinstance(result, RegistrationResult) else result
    if not isinstance(transform, sitk.Transform):
        raise InputError("expected a registration result or a SimpleITK transform")
    if not transform.IsLinear() and transform.GetName() != "DisplacementFieldTransform" and reference is None:
        raise InputError(f"a {transform.GetName()} becomes a grid transform node sampled on the fixed image; give "
                         "it as reference")
    out = transform_node_from_sitk(transform, name, scene, reference=reference, node=node)
    out.SetAttribute("PETDosePainting.TransformConvention", "FromParent = fixed -> moving (ITK)")
    return out


def register_volume_nodes(fixed_node, moving_node, mode: str = "rigid", *, fixed_mask_node=None,
                          initial_transform_node=None, output_node=None, name: str | None = None,
                          **options: Any) -> tuple[Any, RegistrationResult]:
    """Register two volume nodes with the library and return ``(transform node, result)``.

    ``mode`` ``"rigid"`` or ``"bspline"``; ``options`` go to :func:`~..comparison.registration.register_rigid`
    or :func:`~..comparison.registration.register_bspline`. Volumes under linear parent transforms are taken
    in world coordinates; ``initial_transform_node`` (e.g. a rigid result) starts a B-spline registration.
    The moving volume is not re-parented; set ``moving_node.SetAndObserveTransformNodeID(node.GetID())`` to
    show it aligned.
    """
    if mode not in ("rigid", "bspline"):
        raise InputError(f"unknown mode {mode!r}; use rigid or bspline")
    fixed = image_from_volume_node(fixed_node)
    moving = image_from_volume_node(moving_node)
    if fixed_mask_node is not None:
        options["fixed_mask"] = image_from_volume_node(fixed_mask_node)
    if initial_transform_node is not None:
        options["initial_transform"] = sitk_transform_from_node(initial_transform_node, fixed)
    run = register_rigid if mode == "rigid" else register_bspline
    result = run(fixed, moving, **options)
    default_name = f"{moving_node.GetName()}_to_{fixed_node.GetName()}_{mode}"
    node = transform_node_from_registration(result, name or default_name, fixed_node.GetScene(), reference=fixed,
                                            node=output_node)
    return node, result


def jacobian_qa_of_node(transform_node, reference_node, mask_node=None, **options: Any) -> JacobianQA:
    """Jacobian QA (:func:`~..comparison.registration.jacobian_qa`) of a transform node on a volume's grid,
    inside an optional mask volume (e.g. the body labelmap)."""
    reference = image_from_volume_node(reference_node)
    transform = sitk_transform_from_node(transform_node, reference)
    mask = image_from_volume_node(mask_node) if mask_node is not None else None
    return jacobian_qa(transform, reference, mask, **options)


def accumulate_dose_nodes(reference_node, dose_nodes: Sequence[Any], *, fractions: Sequence[int] | None = None,
                          alpha_beta_gy: float | None = None, output_node=None, name: str = "AccumulatedDose",
                          sampling_spacing_mm: float | None = None) -> tuple[Any, AccumulationResult]:
    """Accumulate dose volume nodes on the reference volume's grid, each through its own transform hierarchy.

    Each dose node's parent transforms (world -> dose local, e.g. ``Dose_17`` under ``T_{7->17}`` under
    ``T_{0->7}``, as in Slicer's recipe) give its baseline -> phase map; a dose without parent is in the
    baseline frame. Doses must be in Gy (``PETDosePainting.Units`` = Gy or SlicerRT's dose attribute).
    Non-linear hierarchies are sampled on the reference grid (``sampling_spacing_mm`` coarsens it). Returns
    the output volume node (tagged as dose) and the library result.
    """
    reference = image_from_volume_node(reference_node)
    doses, chains = [], []
    for node in dose_nodes:
        doses.append(image_from_volume_node(node, world=False))
        parent = node.GetParentTransformNode()
        chains.append(None if parent is None else
                      sitk_transform_from_node(parent, reference, spacing_mm=sampling_spacing_mm))
    result = accumulate_doses(reference, doses, chains, fractions=fractions, alpha_beta_gy=alpha_beta_gy,
                              names=[n.GetName() for n in dose_nodes])
    out = volume_node_from_image(result.total, name, reference_node.GetScene(), node=output_node)
    return out, result


__all__ = ["accumulate_dose_nodes", "jacobian_qa_of_node", "register_volume_nodes",
           "transform_node_from_registration"]
