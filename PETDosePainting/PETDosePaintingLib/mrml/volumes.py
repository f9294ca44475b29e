"""Volume nodes <-> SimpleITK images, with exact RAS (Slicer) <-> LPS (ITK, files) geometry.

A voxel's position is ``p_LPS = origin + D diag(spacing) ijk`` in ITK and ``p_RAS = IJKToRAS ijk`` in
Slicer, with ``p_RAS = F p_LPS`` and ``F = diag(-1, -1, 1)``. Hence ``IJKToRAS = F [D diag(s) | origin]``.
Voxel arrays are shared unchanged (both index them ``[k, j, i]``).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InputError
from ..imaging.image import UNITS_KEY, Units, get_units, set_units
from .scene import get_scene

#: Flip between LPS and RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
UNITS_ATTRIBUTE = "PETDosePainting.Units"
#: SlicerRT treats a volume carrying this attribute as dose (DVH, Isodose modules).
DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k, 1) to LPS millimetres."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())[None, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index to RAS millimetres (Slicer's IJKToRAS) for a SimpleITK image."""
    matrix = ijk_to_lps(image)
    matrix[:3, :] = LPS_TO_RAS @ matrix[:3, :]
    return matrix


def lps_to_ras_point(point) -> np.ndarray:
    """Convert a point (or an ``(N, 3)`` array of points) from LPS to RAS; the same flip goes back."""
    return np.asarray(point, dtype=float) * np.array([-1.0, -1.0, 1.0])


ras_to_lps_point = lps_to_ras_point


def volume_node_from_image(
    image: sitk.Image,
    name: str = "Volume",
    scene: slicer.vtkMRMLScene | None = None,
    labelmap: bool = False,
    node=None,
):
    """Create (or update ``node``) a scalar or labelmap volume node holding ``image``.

    The image's units become the node attribute ``PETDosePainting.Units``; a volume in Gy is also
    tagged as dose for SlicerRT (``DicomRtImport.DoseVolume``).
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"only 3D scalar images can become volume nodes (got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components)")
    if node is None:
        scene = get_scene(scene)
        cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(cls, name)
        node.CreateDefaultDisplayNodes()
    array = sitk.GetArrayFromImage(image)
    if labelmap and array.dtype == bool:
        array = array.astype(np.uint8)
    slicer.util.updateVolumeFromArray(node, array)
    set_node_geometry(node, image)
    units = get_units(image)
    if units is not None:
        node.SetAttribute(UNITS_ATTRIBUTE, units)
        if units == Units.GY:
            node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
            node.SetAttribute(DOSE_UNIT_NAME_ATTRIBUTE, "GY")
    return node


def set_node_geometry(node, image: sitk.Image) -> None:
    """Give a volume node the geometry of a SimpleITK image (converted to RAS)."""
    matrix = ijk_to_ras(image)
    spacing = np.asarray(image.GetSpacing())
    node.SetSpacing(*spacing)
    node.SetOrigin(*matrix[:3, 3])
    directions = vtk.vtkMatrix4x4()
    ras_dir = matrix[:3, :3] / spacing[None, :]
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, ras_dir[r, c])
    node.SetIJKToRASDirectionMatrix(directions)


def node_ijk_to_world_ras(node) -> np.ndarray:
    """4x4 IJK -> world RAS matrix of a volume node, folding in any *linear* parent transforms."""
    ijk_to_ras_vtk = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras_vtk)
    matrix = slicer.util.arrayFromVTKMatrix(ijk_to_ras_vtk)
    parent = node.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, to_world):
            raise InputError(f"volume {node.GetName()!r} is under a non-linear transform; harden it first "
                             "(this would resample its voxels) or resample explicitly")
        matrix = slicer.util.arrayFromVTKMatrix(to_world) @ matrix
    return matrix


def image_from_volume_node(node, *, world: bool = True) -> sitk.Image:
    """A SimpleITK image (LPS) with the voxels and world geometry of a scalar volume node.

    Linear parent transforms are folded into the geometry (no resampling); a non-linear parent
    transform is refused. With ``world=False`` the node's *local* geometry is kept (parent transforms
    ignored, e.g. a dose to be warped through its own hierarchy). The ``PETDosePainting.Units`` attribute
    becomes the image's units (a labelmap: label; a dose volume: Gy).
    """
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("expected a scalar (or labelmap) volume node")
    if node.GetImageData() is None:
        raise InputError(f"volume {node.GetName()!r} holds no image data")
    if world:
        matrix = node_ijk_to_world_ras(node)
    else:
        local = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(local)
        matrix = slicer.util.arrayFromVTKMatrix(local)
    matrix[:3, :] = LPS_TO_RAS @ matrix[:3, :]  # now IJK -> LPS
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction = matrix[:3, :3] / spacing[None, :]
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(node), copy=True))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(matrix[:3, 3].tolist())
    image.SetDirection(direction.ravel().tolist())
    units = node.GetAttribute(UNITS_ATTRIBUTE)
    if units:
        set_units(image, units)
    elif node.IsA("vtkMRMLLabelMapVolumeNode"):
        set_units(image, Units.LABEL)
    elif node.GetAttribute(DOSE_VOLUME_ATTRIBUTE):
        set_units(image, Units.GY)
    return image


__all__ = [
    "DOSE_VOLUME_ATTRIBUTE",
    "LPS_TO_RAS",
    "UNITS_ATTRIBUTE",
    "UNITS_KEY",
    "ijk_to_lps",
    "ijk_to_ras",
    "image_from_volume_node",
    "lps_to_ras_point",
    "ras_to_lps_point",
    "set_node_geometry",
    "volume_node_from_image",
]
