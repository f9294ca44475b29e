"""Registration of two volume nodes in stages, with progress and cancel, and placing nodes under a transform
(tier 2; the panel's registration section and its console API).

Each stage is one call of :func:`~.registration_logic.register_volume_nodes` (the library's rigid
Mattes-MI or B-spline registration, :mod:`PETDosePaintingLib.comparison.registration`). ``progress`` is
asked before each stage and after every optimiser iteration (the library's ``iteration_callback``), so a
cancel stops a running registration at once. A cancel (or a failure) leaves the scene as it
was: every stage writes into a new node, intermediate nodes are removed, the output node is only filled
(copied into) at the end, and nodes taken out from under the output transform are put back.

Convention (as everywhere in the project): fixed = the reference (baseline CT, or the CT an MR is registered
to), moving = the other scan; the output transform node's ``TransformFromParent`` is the ITK transform
fixed -> moving, so the moving volume placed under it is shown aligned with the fixed one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..comparison.registration import JacobianQA, RegistrationCancelled, RegistrationResult
from ..errors import InputError
from .comparison_logic import ProgressCallback, check_progress
from .gtv_logic import OperationCancelled
from .registration_logic import register_volume_nodes

#: Registration modes of :func:`register_nodes_stepwise`: a rigid (Mattes MI) registration, a B-spline one,
#: or a rigid one followed by a B-spline one started from it (CT timepoints in different set-ups).
REGISTRATION_MODES = ("rigid", "bspline", "rigid+bspline")


@dataclass(eq=False)
class NodeRegistration:
    """What :func:`register_nodes_stepwise` produced.

    ``transform_node`` (``FromParent`` = fixed -> moving), ``result`` (the last stage's
    :class:`~.registration.RegistrationResult`), ``stages`` (every stage's result), ``jacobian`` (the
    B-spline stage's Jacobian QA, ``None`` for a rigid registration), ``applied_to`` (names of the nodes
    placed under the transform) and ``notes``.
    """

    transform_node: Any
    result: RegistrationResult
    stages: list[RegistrationResult]
    jacobian: JacobianQA | None
    applied_to: list[str]
    notes: list[str] = field(default_factory=list)


def register_nodes_stepwise(
    fixed_node,
    moving_node,
    mode: str = "rigid",
    *,
    output_node=None,
    name: str | None = None,
    fixed_mask_node=None,
    initial_transform_node=None,
    apply_to: Sequence[Any] = (),
    rigid_options: Mapping[str, Any] | None = None,
    bspline_options: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> NodeRegistration:
    """Register ``moving_node`` onto ``fixed_node`` (scalar volume nodes) and optionally apply the result.

    Parameters
    ----------
    fixed_node, moving_node : the volumes (taken in world coordinates; linear parents folded in).
    mode : one of :data:`REGISTRATION_MODES` (default ``"rigid"``).
    output_node : transform node to fill (a new one if ``None``); nodes found under it are taken out during
        the registration (their world position would otherwise feed back into it) and put back afterwards.
    name : name of a new output node (default ``<moving>_to_<fixed>_<mode>``).
    fixed_mask_node : optional labelmap restricting the metric samples (e.g. the body).
    initial_transform_node : a transform node (fixed -> moving) to start from.
    apply_to : nodes to place under the output transform afterwards (typically the moving volume and its
        segmentation); each must have no other parent transform.
    rigid_options, bspline_options : options of :func:`~.registration.register_rigid` and
        :func:`~.registration.register_bspline` (e.g. ``{"grid_spacing_mm": 25.0}``; lengths in mm).
    progress : ``progress(done, total, label)`` before each stage (``done`` stages of ``total``) and after every
        optimiser iteration (the label names the stage, level and iteration); returning ``False`` cancels
        (:class:`~.gtv_logic.OperationCancelled`); the scene is then as before the call.
    """
    if mode not in REGISTRATION_MODES:
        raise InputError(f"unknown registration mode {mode!r}; use one of {', '.join(REGISTRATION_MODES)}")
    for node, what in ((fixed_node, "fixed"), (moving_node, "moving")):
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"the {what} input must be a scalar volume node")
    if fixed_node is moving_node:
        raise InputError(f"volume {fixed_node.GetName()!r} is both the fixed and the moving volume")
    targets = list(apply_to)
    for node in targets:
        parent = node.GetParentTransformNode()
        if node is fixed_node:
            raise InputError(f"the fixed volume {node.GetName()!r} cannot be placed under its own registration")
        if parent is not None and (output_node is None or parent is not output_node):
            raise InputError(f"{node.GetName()!r} is already under transform {parent.GetName()!r}; harden or remove "
                             "that transform first, or place the node yourself")
    if output_node is not None and _depends_on(fixed_node, output_node):
        raise InputError(f"the fixed volume {fixed_node.GetName()!r} is under the output transform "
                         f"{output_node.GetName()!r}")
    stages_modes = ["rigid", "bspline"] if mode == "rigid+bspline" else [mode]
    name = name or f"{moving_node.GetName()}_to_{fixed_node.GetName()}_{mode.replace('+', '_')}"
    scene = fixed_node.GetScene()
    detached = _detach(scene, output_node)
    created: list[Any] = []
    stages: list[RegistrationResult] = []
    try:
        for index, stage in enumerate(stages_modes):
            check_progress(progress, index, len(stages_modes), f"{stage} registration")
            options = dict((rigid_options if stage == "rigid" else bspline_options) or {})
            if progress is not None:
                options.setdefault("iteration_callback", _iteration_reporter(progress, index, len(stages_modes),
                                                                             stage))
            node, result = register_volume_nodes(
                fixed_node, moving_node, stage, fixed_mask_node=fixed_mask_node,
                initial_transform_node=created[-1] if created else initial_transform_node,
                name=name if stage == stages_modes[-1] else f"{name}_rigid_stage", **options)
            created.append(node)
            stages.append(result)
    except BaseException as exc:
        for node in created:
            scene.RemoveNode(node)
        _reattach(detached, output_node)
        if isinstance(exc, RegistrationCancelled):
            raise OperationCancelled(str(exc)) from exc
        raise
    for intermediate in created[:-1]:
        scene.RemoveNode(intermediate)
    node = created[-1]
    if output_node is not None:
        # Copy rather than write into the output node: a node holding a non-linear transform refuses a matrix.
        output_node.CopyContent(node)
        for key in node.GetAttributeNames() or ():
            output_node.SetAttribute(key, node.GetAttribute(key))
        scene.RemoveNode(node)
        node = output_node
    _reattach([n for n in detached if n not in targets], node)
    for target in targets:
        target.SetAndObserveTransformNodeID(node.GetID())
    notes = []
    if len(stages) > 1:
        notes.append("B-spline stage started from the rigid stage; the transform holds both (one composite)")
    final = stages[-1]
    return NodeRegistration(node, final, stages, final.jacobian, [t.GetName() for t in targets], notes)


def place_under_transform(nodes: Sequence[Any], transform_node) -> list[str]:
    """Place transformable nodes (volumes, segmentations...) under ``transform_node`` (e.g. a transform from
    Slicer's General Registration or Elastix, ``FromParent`` = fixed -> moving), so that moving-side nodes are
    shown aligned with the fixed side. Refuses a node that already has another parent transform, and a node
    the transform itself depends on (a cycle). Returns the names of the nodes placed."""
    if transform_node is None or not transform_node.IsA("vtkMRMLTransformNode"):
        raise InputError("expected a transform node")
    for node in nodes:
        if node is None or not node.IsA("vtkMRMLTransformableNode"):
            raise InputError("only transformable nodes (volumes, segmentations, markups...) can be transformed")
        parent = node.GetParentTransformNode()
        if parent is not None and parent is not transform_node:
            raise InputError(f"{node.GetName()!r} is already under transform {parent.GetName()!r}; harden or remove "
                             "that transform first")
        if node is transform_node or _depends_on(transform_node, node):
            raise InputError(f"placing {node.GetName()!r} under {transform_node.GetName()!r} would make a cycle")
    for node in nodes:
        node.SetAndObserveTransformNodeID(transform_node.GetID())
    return [node.GetName() for node in nodes]


def _depends_on(node, transform_node) -> bool:
    """True if ``transform_node`` is among ``node``'s parent transforms."""
    parent = node.GetParentTransformNode()
    while parent is not None:
        if parent is transform_node:
            return True
        parent = parent.GetParentTransformNode()
    return False


def _detach(scene, transform_node) -> list[Any]:
    """Take the direct children of ``transform_node`` out from under it; returns them."""
    if transform_node is None:
        return []
    children = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.IsA("vtkMRMLTransformableNode") and node.GetParentTransformNode() is transform_node:
            children.append(node)
    for node in children:
        node.SetAndObserveTransformNodeID(None)
    return children


def _reattach(nodes: Sequence[Any], transform_node) -> None:
    for node in nodes:
        node.SetAndObserveTransformNodeID(transform_node.GetID())


__all__ = ["REGISTRATION_MODES", "NodeRegistration", "place_under_transform", "register_nodes_stepwise"]


def _iteration_reporter(progress: ProgressCallback, done: int, total: int, stage: str):
    """The library's iteration callback, reporting to ``progress``; ``False`` from it stops the registration."""

    def report(level: int, iteration: int, metric_value: float) -> bool:
        label = f"{stage} registration: level {level + 1}, iteration {iteration} (metric {metric_value:.4g})"
        return progress(done, total, label) is not False

    return report
