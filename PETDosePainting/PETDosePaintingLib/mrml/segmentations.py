"""Segmentation nodes <-> binary masks, addressed by segment *name* (segment IDs are random in Slicer).

Writing a mask into a segment replaces that segment's content only; other segments are untouched.
Temporary labelmap nodes, and the colour table Slicer creates on every export, are removed again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InputError
from ..imaging.image import Units, set_units
from .scene import get_scene
from .volumes import image_from_volume_node, set_node_geometry, volume_node_from_image


def new_segmentation_node(name: str, scene: slicer.vtkMRMLScene | None = None, reference=None):
    """Add an empty segmentation node; ``reference`` (volume node or SimpleITK image) sets its geometry."""
    scene = get_scene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if reference is not None:
        _set_reference_geometry(node, reference)
    return node


def _set_reference_geometry(seg_node, reference) -> None:
    if isinstance(reference, sitk.Image):
        with _temporary_volume(reference, seg_node.GetScene()) as ref_node:
            seg_node.SetReferenceImageGeometryParameterFromVolumeNode(ref_node)
    else:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)


class _temporary_volume:
    """Context manager: a volume node for ``image`` that is removed (with its colour table) afterwards."""

    def __init__(self, image: sitk.Image, scene, labelmap: bool = False):
        self.image, self.scene, self.labelmap = image, scene, labelmap
        self.node = None

    def __enter__(self):
        self.node = volume_node_from_image(self.image, "petdp_temporary", self.scene, labelmap=self.labelmap)
        return self.node

    def __exit__(self, *exc):
        _remove_volume_and_colors(self.scene, self.node)


def _remove_volume_and_colors(scene, node) -> None:
    """Remove a temporary volume node with its display nodes and the colour table Slicer made for it.

    ``RemoveNode`` leaves a volume's display nodes behind, and every labelmap export creates a new
    ``*_ColorTable`` node: both are removed here so that repeated calls do not grow the scene.
    """
    if node is None:
        return
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    colours = [d.GetColorNode() for d in displays if d is not None and d.GetColorNode() is not None]
    scene.RemoveNode(node)
    for display in displays:
        if display is not None and scene.IsNodePresent(display):
            scene.RemoveNode(display)
    for colour in colours:
        # "<segmentation>_ColorTable", then "..._ColorTable_1", "_2"...; never a shared default colour table.
        if re.search(r"_ColorTable(_\d+)?$", colour.GetName() or "") and scene.IsNodePresent(colour):
            scene.RemoveNode(colour)


def segment_names(seg_node) -> list[str]:
    """Names of the segments, in segmentation order."""
    seg = seg_node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def segment_id(seg_node, name: str, required: bool = True) -> str | None:
    """ID of the segment called ``name``; :class:`InputError` (listing the names) or ``None`` if absent."""
    sid = seg_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    if sid:
        return sid
    if required:
        names = ", ".join(segment_names(seg_node)) or "none"
        raise InputError(f"segmentation {seg_node.GetName()!r} has no segment named {name!r} (segments: {names})")
    return None


def set_segment_from_mask(
    seg_node,
    mask: sitk.Image,
    name: str,
    color: Sequence[float] | None = None,
) -> str:
    """Write a binary mask into the segment called ``name`` (created if absent); returns its ID.

    Only that segment changes. If the segmentation has no reference geometry yet, the mask's grid
    becomes it, so the labelmap is stored exactly at the mask's resolution.
    """
    scene = seg_node.GetScene()
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    binary.CopyInformation(mask)
    segmentation = seg_node.GetSegmentation()
    if not segmentation.GetNumberOfSegments() and not _has_reference_geometry(seg_node):
        _set_reference_geometry(seg_node, binary)
    existing = segment_id(seg_node, name, required=False)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        if existing:
            segmentation.RemoveSegment(existing)
        sid = segmentation.AddEmptySegment(existing or "", name)
    else:
        with _temporary_volume(binary, scene, labelmap=True) as labelmap:
            before = set(_segment_ids(seg_node))
            if existing:
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(existing)
                ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node, ids)
                sid = existing
            else:
                ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node)
                new = [s for s in _segment_ids(seg_node) if s not in before]
                sid = new[0] if new else ""
            if not ok or not sid:
                raise InputError(f"Slicer could not import the mask for segment {name!r}")
    segment = segmentation.GetSegment(sid)
    segment.SetName(name)
    if color is not None:
        segment.SetColor(*[float(c) for c in color[:3]])
    return sid


def _segment_ids(seg_node) -> list[str]:
    seg = seg_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def _has_reference_geometry(seg_node) -> bool:
    key = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    return bool(seg_node.GetSegmentation().GetConversionParameter(key))


def mask_from_segment(seg_node, name: str, reference) -> sitk.Image:
    """The segment called ``name`` as a uint8 0/1 mask on the grid of ``reference``.

    ``reference`` is a volume node or a SimpleITK image; the mask has exactly its geometry.
    """
    sid = segment_id(seg_node, name)
    scene = seg_node.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(sid)
    owned_ref = None
    if isinstance(reference, sitk.Image):
        owned_ref = volume_node_from_image(sitk.Image(reference.GetSize(), sitk.sitkUInt8), "petdp_reference", scene)
        set_node_geometry(owned_ref, reference)
        ref_node = owned_ref
    else:
        ref_node = reference
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "petdp_export")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, ref_node)
        if not ok:
            raise InputError(f"Slicer could not export segment {name!r} of {seg_node.GetName()!r}")
        image = image_from_volume_node(labelmap)
        out = sitk.Cast(image != 0, sitk.sitkUInt8)
        out.CopyInformation(image)
        return set_units(out, Units.LABEL)
    finally:
        _remove_volume_and_colors(scene, labelmap)
        if owned_ref is not None:
            _remove_volume_and_colors(scene, owned_ref)
