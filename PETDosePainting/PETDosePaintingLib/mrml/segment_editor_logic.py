"""Node-level helpers behind the "PET Gradient" Segment Editor effect (tier 2: ``slicer`` and ``vtk`` only).

The effect (``GradientSegment/SegmentEditorPETGradientLib``) is Qt glue; everything it computes goes
through here, and the tests drive the same functions headless with Slicer's C++ segment editor logic
(``vtkSlicerSegmentEditorLogic``), which the Qt effect also uses underneath.

Geometry. The editor hands an effect the source volume resampled onto the segmentation's reference
geometry (``scriptedEffect.sourceVolumeImageData()``, a ``vtkOrientedImageData`` whose image-to-world
matrix is in the *segmentation node's* coordinate frame, i.e. before the segmentation's parent
transform). A click gives a world RAS point. :func:`gradient_cluster_in_editor` therefore:

1. maps the click into the segmentation's frame (inverse of its parent transform, if any);
2. crops the source image around the click (enough for the gradient method's largest working sphere
   plus its restoration margin, so the result equals a run on the whole image) and converts it to a
   SimpleITK image in LPS (:func:`image_from_oriented_image_data`);
3. runs :func:`~PETDosePaintingLib.segmentation.gradient.segment_gradient`, which returns the seed's
   branch of the dendrogram (:class:`~PETDosePaintingLib.segmentation.gradient.GradientDendrogram`);
4. returns an :class:`EditorGradientCluster` that gives the mask of any dendrogram level, in the
   editor's geometry, as ``vtkOrientedImageData`` (:meth:`EditorGradientCluster.oriented_mask`): the
   level slider needs no recomputation.

The preview is a separate segmentation node (:func:`show_preview`, :func:`remove_preview`) under the
same parent transform; it is not saved with the scene. Applying goes through
``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` (:func:`modify_segment_by_mask`; in the effect,
``scriptedEffect.modifySelectedSegmentByLabelmap``), which honours the editor's editable area (mask
mode and mask segment), editable intensity range and overwrite mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..imaging.image import set_units, voxel_volume_ml
from ..segmentation.common import SegmentationResult
from ..segmentation.gradient import DEFAULT_FWHM_MM, GradientDendrogram, segment_gradient
from .volumes import LPS_TO_RAS, UNITS_ATTRIBUTE

#: Name of the effect in the Segment Editor (modules and tests find effects by this name).
EFFECT_NAME = "PET Gradient"
#: ID of the single segment of the preview segmentation node.
PREVIEW_SEGMENT_ID = "PETGradientPreview"
#: Default opacity of the preview (fill and outline in 2D, surface in 3D).
PREVIEW_OPACITY = 0.6

_MAX_ROI_RADIUS_MM = float(inspect.signature(segment_gradient).parameters["max_roi_radius_mm"].default)


# ------------------------------------------------------------------------------ geometry conversion


def oriented_ijk_to_ras(image_data) -> np.ndarray:
    """4x4 matrix from absolute voxel index (i, j, k) to RAS of a ``vtkOrientedImageData``."""
    matrix = vtk.vtkMatrix4x4()
    image_data.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _extent(image_data) -> tuple[int, int, int, int, int, int]:
    extent = tuple(int(e) for e in image_data.GetExtent())
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        raise InputError("the segment editor's source image is empty (select a source volume)")
    return extent  # type: ignore[return-value]


def _array_view(image_data) -> np.ndarray:
    """The scalars of an image data as a ``[k, j, i]`` numpy view (first component)."""
    extent = _extent(image_data)
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None:
        raise InputError("the segment editor's source image holds no voxel values")
    flat = numpy_support.vtk_to_numpy(scalars)
    if flat.ndim == 2:
        flat = flat[:, 0]
    return flat.reshape(dims)


def image_from_oriented_image_data(image_data, units: str | None = None,
                                   box: tuple[slice, slice, slice] | None = None) -> sitk.Image:
    """A SimpleITK image (LPS mm) with the voxels and geometry of a ``vtkOrientedImageData``.

    The geometry is the image data's own frame (for the editor's images: the segmentation node's frame).
    ``box`` (``[k, j, i]`` slices relative to the extent's first voxel) crops before copying. ``units``
    are recorded in the metadata.
    """
    extent = _extent(image_data)
    array = _array_view(image_data)
    box = box or (slice(0, array.shape[0]), slice(0, array.shape[1]), slice(0, array.shape[2]))
    crop = np.array(array[box], copy=True)
    ijk_to_ras = oriented_ijk_to_ras(image_data)
    first = np.array([extent[0] + box[2].start, extent[2] + box[1].start, extent[4] + box[0].start, 1.0])
    ijk_to_lps = ijk_to_ras.copy()
    ijk_to_lps[:3, :] = LPS_TO_RAS @ ijk_to_ras[:3, :]
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(crop)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((ijk_to_lps @ first)[:3].tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing[None, :]).ravel().tolist())
    if units:
        set_units(image, units)
    return image


def geometry_copy(image_data):
    """A ``vtkOrientedImageData`` with the extent and geometry of ``image_data`` and no voxels allocated."""
    out = slicer.vtkOrientedImageData()
    out.SetExtent(image_data.GetExtent())
    out.SetSpacing(image_data.GetSpacing())
    out.SetOrigin(image_data.GetOrigin())
    out.CopyDirections(image_data)
    return out


def oriented_image_data_from_array(mask_kji: np.ndarray, reference):
    """A binary uint8 ``vtkOrientedImageData`` holding ``mask_kji`` on the extent and geometry of ``reference``.

    ``mask_kji`` is indexed ``[k, j, i]`` over the reference's extent (as :func:`_array_view` reads it);
    this is the modifier labelmap the Segment Editor expects.
    """
    extent = _extent(reference)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    mask_kji = np.asarray(mask_kji)
    if mask_kji.shape != shape:
        raise InputError(f"mask of shape {mask_kji.shape} does not match the editor geometry {shape} (k, j, i)")
    out = geometry_copy(reference)
    out.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    view = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(shape)
    view[...] = mask_kji != 0
    out.Modified()
    return out


def array_from_oriented_image_data(image_data, reference=None) -> np.ndarray:
    """Voxels of an image data as a ``[k, j, i]`` array, optionally placed on ``reference``'s extent.

    With ``reference`` (same spacing, origin and directions, e.g. a segment's labelmap whose extent is
    only its bounding box), the values are copied into an array of the reference's extent (0 elsewhere).
    """
    array = np.array(_array_view(image_data), copy=True)
    if reference is None:
        return array
    ext, ref = _extent(image_data), _extent(reference)
    out = np.zeros((ref[5] - ref[4] + 1, ref[3] - ref[2] + 1, ref[1] - ref[0] + 1), dtype=array.dtype)
    lo = [max(ext[2 * a], ref[2 * a]) for a in range(3)]
    hi = [min(ext[2 * a + 1], ref[2 * a + 1]) for a in range(3)]
    if all(h >= low for low, h in zip(lo, hi, strict=True)):
        src = tuple(slice(lo[a] - ext[2 * a], hi[a] - ext[2 * a] + 1) for a in (2, 1, 0))
        dst = tuple(slice(lo[a] - ref[2 * a], hi[a] - ref[2 * a] + 1) for a in (2, 1, 0))
        out[dst] = array[src]
    return out


def world_to_node_ras(node, point_ras: Sequence[float]) -> tuple[float, float, float]:
    """A world RAS point expressed in ``node``'s own frame (through the inverse of its parent transforms)."""
    point = tuple(float(c) for c in point_ras)
    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return point  # type: ignore[return-value]
    world_to_node = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, world_to_node)
    return tuple(float(c) for c in world_to_node.TransformPoint(point))  # type: ignore[return-value]


def ras_to_ijk(image_data, point_ras: Sequence[float]) -> tuple[int, int, int]:
    """Absolute voxel index (i, j, k) nearest to a RAS point (in the image data's frame); may lie outside."""
    ijk = np.linalg.solve(oriented_ijk_to_ras(image_data), np.array([*map(float, point_ras), 1.0]))[:3]
    return tuple(int(np.floor(c + 0.5)) for c in ijk)  # type: ignore[return-value]


# ------------------------------------------------------------------------------ the gradient cluster


@dataclass(eq=False)
class EditorGradientCluster:
    """The gradient method's result for one click, with a mask for every dendrogram level in editor geometry.

    Attributes
    ----------
    result : the library result on the cropped grid (``details["dendrogram"]``, threshold-free, background...).
    reference : geometry (extent, spacing, origin, directions; no voxels) of the editor's source image.
    box : ``[k, j, i]`` slices of the crop within the reference extent.
    seed_ras : the click in the segmentation's frame (RAS mm).
    """

    result: SegmentationResult
    reference: Any
    box: tuple[slice, slice, slice]
    seed_ras: tuple[float, float, float]
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def dendrogram(self) -> GradientDendrogram:
        """The seed's branch of the Ward dendrogram."""
        return self.result.details["dendrogram"]

    @property
    def level_count(self) -> int:
        """Number of levels (slider positions 0 .. level_count - 1)."""
        return len(self.dendrogram.levels)

    @property
    def chosen(self) -> int:
        """The level the method chose automatically."""
        return int(self.dendrogram.chosen)

    def _crop_mask(self, level: int | None) -> np.ndarray:
        level = self.chosen if level is None else int(level)
        if not 0 <= level < self.level_count:
            raise InputError(f"dendrogram level must lie between 0 and {self.level_count - 1}, got {level}")
        if level not in self._cache:
            self._cache[level] = self.dendrogram.mask_array(level)
        return self._cache[level]

    def volume_ml(self, level: int | None = None) -> float:
        """Volume (mL) of the post-processed mask of ``level`` (default: the chosen one) on the editor grid."""
        return float(np.count_nonzero(self._crop_mask(level))) * voxel_volume_ml(self.result.mask)

    def mask_array(self, level: int | None = None) -> np.ndarray:
        """The mask of ``level`` (default: the chosen one) as a ``[k, j, i]`` bool array over the editor extent."""
        extent = _extent(self.reference)
        full = np.zeros((extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1), bool)
        full[self.box] = self._crop_mask(level)
        return full

    def oriented_mask(self, level: int | None = None):
        """The mask of ``level`` as a binary ``vtkOrientedImageData`` in the editor geometry (a modifier labelmap)."""
        return oriented_image_data_from_array(self.mask_array(level), self.reference)

    def level_summary(self, level: int | None = None) -> str:
        """One line for the effect's panel: level, automatic level, volume."""
        level = self.chosen if level is None else int(level)
        auto = " (automatic)" if level == self.chosen else f" (automatic: {self.chosen})"
        return f"level {level} of 0-{self.level_count - 1}{auto}: {self.volume_ml(level):.2f} mL"


def crop_box_around(image_data, seed_ras: Sequence[float], half_size_mm: float) -> tuple[slice, slice, slice]:
    """``[k, j, i]`` slices of the part of the image within ``half_size_mm`` of the seed along each voxel axis."""
    extent = _extent(image_data)
    ijk = ras_to_ijk(image_data, seed_ras)
    lo_ext = np.array(extent[0::2])
    hi_ext = np.array(extent[1::2])
    if np.any(np.array(ijk) < lo_ext) or np.any(np.array(ijk) > hi_ext):
        raise InputError(f"the click at RAS ({', '.join(f'{c:.1f}' for c in seed_ras)}) mm lies outside the "
                         "source volume")
    spacing = np.linalg.norm(oriented_ijk_to_ras(image_data)[:3, :3], axis=0)
    half = np.ceil(float(half_size_mm) / spacing).astype(int) + 1
    lo = np.maximum(np.array(ijk) - half, lo_ext) - lo_ext
    hi = np.minimum(np.array(ijk) + half, hi_ext) - lo_ext + 1
    return (slice(int(lo[2]), int(hi[2])), slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))


def gradient_cluster_in_editor(
    source_image_data,
    seed_world_ras: Sequence[float],
    *,
    segmentation_node=None,
    source_volume_node=None,
    fwhm_mm: float = DEFAULT_FWHM_MM,
    **parameters: Any,
) -> EditorGradientCluster:
    """Run the gradient method at a click on the editor's source image; every dendrogram level stays available.

    Parameters
    ----------
    source_image_data : the editor's source image (``scriptedEffect.sourceVolumeImageData()``, or
        ``vtkSlicerSegmentEditorLogic.GetAlignedSourceVolume()``), in the segmentation's frame and geometry.
    seed_world_ras : the click, world RAS mm.
    segmentation_node : the edited segmentation (its parent transform maps the click into its frame).
    source_volume_node : the source volume node, for its ``PETDosePainting.Units`` attribute (optional:
        the gradient method needs no SUV calibration).
    fwhm_mm : scanner resolution, effective FWHM in mm (default 6 mm, the library's design default).
    parameters : further :func:`~PETDosePaintingLib.segmentation.gradient.segment_gradient` parameters.

    The image is cropped around the click to the gradient method's largest working sphere
    (``max_roi_radius_mm``, default 90 mm) plus three FWHM and a voxel, so the result is the same as on
    the whole image at a fraction of the memory. :class:`InputError` if the click is outside the source
    volume or in background (no hot structure there).
    """
    if "roi" in parameters or "background" in parameters:
        raise InputError("the PET Gradient effect takes no ROI or background mask; use the editor's masking")
    seed_ras = world_to_node_ras(segmentation_node, seed_world_ras)
    radius = float(parameters.get("max_roi_radius_mm", _MAX_ROI_RADIUS_MM))
    radius = max(radius, float(parameters.get("roi_radius_mm", 0.0)))
    box = crop_box_around(source_image_data, seed_ras, radius + 3.0 * float(fwhm_mm))
    units = source_volume_node.GetAttribute(UNITS_ATTRIBUTE) if source_volume_node is not None else None
    image = image_from_oriented_image_data(source_image_data, units, box)
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
        if units:
            set_units(image, units)
    seed_lps = (LPS_TO_RAS @ np.asarray(seed_ras, dtype=float)).tolist()
    result = segment_gradient(image, seed_lps, fwhm_mm=float(fwhm_mm), **parameters)
    return EditorGradientCluster(result, geometry_copy(source_image_data), box, tuple(seed_ras))


# ------------------------------------------------------------------------------------------ preview


def show_preview(oriented_mask, segmentation_node, preview_node=None, *, name: str | None = None,
                 color: Sequence[float] = (1.0, 1.0, 0.0), opacity: float = PREVIEW_OPACITY):
    """Show ``oriented_mask`` in a preview segmentation node (created if ``None``); returns the node.

    The preview node follows the segmentation's parent transform, has one segment
    (:data:`PREVIEW_SEGMENT_ID`) and is not saved with the scene.
    """
    scene = segmentation_node.GetScene()
    if preview_node is None or preview_node.GetScene() is None:
        preview_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                               name or f"{segmentation_node.GetName()} {EFFECT_NAME} preview")
        preview_node.CreateDefaultDisplayNodes()
        preview_node.SetSaveWithScene(False)
        preview_node.SetHideFromEditors(True)  # not offered in node selectors
        display = preview_node.GetDisplayNode()
        display.SetSaveWithScene(False)
        display.SetOpacity(float(opacity))
        display.SetOpacity3D(float(opacity))
    preview_node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    segmentation = preview_node.GetSegmentation()
    segment = segmentation.GetSegment(PREVIEW_SEGMENT_ID)
    if segment is None:
        segment = slicer.vtkSegment()
        segment.SetName(f"{EFFECT_NAME} preview")
        segmentation.AddSegment(segment, PREVIEW_SEGMENT_ID)
    segment.SetColor(*[float(c) for c in color[:3]])
    labelmap = slicer.vtkOrientedImageData()
    labelmap.DeepCopy(oriented_mask)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), labelmap)
    segment.SetLabelValue(1)
    preview_node.Modified()
    return preview_node


def remove_preview(preview_node) -> None:
    """Remove a preview node and its display and storage nodes (nothing if it is already gone)."""
    if preview_node is None:
        return
    scene = preview_node.GetScene()
    if scene is None:
        return
    owned = [preview_node.GetNthDisplayNode(i) for i in range(preview_node.GetNumberOfDisplayNodes())]
    owned.append(preview_node.GetStorageNode())
    scene.RemoveNode(preview_node)
    for node in owned:
        if node is not None and node.GetScene() is not None:
            scene.RemoveNode(node)


# ------------------------------------------------------------------------------------------- apply


def modify_segment_by_mask(editor_logic, segmentation_node, segment_id: str, oriented_mask, *,
                           add: bool = False) -> None:
    """Write a modifier labelmap into a segment the way the Segment Editor does, honouring its settings.

    ``add=False`` replaces the segment's content (``ModificationModeSet``; within an editable area only
    the area is replaced), ``add=True`` adds to it. The editor node of ``editor_logic`` supplies the mask
    mode, mask segment, editable intensity range and overwrite mode. This is the call behind the effect's
    ``scriptedEffect.modifySelectedSegmentByLabelmap`` (per-segment, masking not bypassed).
    """
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no segment with ID {segment_id!r}")
    mode = (slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd if add
            else slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet)
    editor_logic.ModifySegmentByLabelmap(segmentation_node, segment_id, oriented_mask, mode, True, False)


def segment_mask_in_geometry(segmentation_node, segment_id: str, reference) -> np.ndarray:
    """A segment's binary labelmap as a ``[k, j, i]`` bool array over ``reference``'s extent (shared geometry).

    The segment's labelmap must share ``reference``'s spacing, origin and directions (true for segments
    edited in the editor's reference geometry); :class:`InputError` otherwise.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no segment with ID {segment_id!r}")
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = _extent(reference)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    if labelmap is None:
        return np.zeros(shape, bool)
    own = labelmap.GetExtent()
    if own[0] > own[1] or own[2] > own[3] or own[4] > own[5]:
        return np.zeros(shape, bool)
    if not np.allclose(oriented_ijk_to_ras(labelmap), oriented_ijk_to_ras(reference), atol=1e-6):
        raise InputError("the segment's labelmap is not in the editor's reference geometry")
    values = array_from_oriented_image_data(labelmap, reference)
    return values == segment.GetLabelValue()


__all__ = [
    "EFFECT_NAME",
    "PREVIEW_SEGMENT_ID",
    "EditorGradientCluster",
    "array_from_oriented_image_data",
    "crop_box_around",
    "geometry_copy",
    "gradient_cluster_in_editor",
    "image_from_oriented_image_data",
    "modify_segment_by_mask",
    "oriented_ijk_to_ras",
    "oriented_image_data_from_array",
    "ras_to_ijk",
    "remove_preview",
    "segment_mask_in_geometry",
    "show_preview",
    "world_to_node_ras",
]

