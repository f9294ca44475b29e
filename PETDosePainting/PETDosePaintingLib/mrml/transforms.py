"""Transform nodes <-> SimpleITK transforms (linear and displacement-field).

Conventions (get them right once):

* An ITK/SimpleITK transform ``T`` maps points of the *fixed* space to the *moving* space, in LPS. It is
  what resampling a moving image onto a fixed grid needs.
* In Slicer that is a transform node's ``TransformFromParent`` (in RAS): placing the moving image under
  the node shows it aligned with the fixed image. We therefore store ``T`` as ``FromParent`` after
  conjugating with the LPS<->RAS flip ``F = diag(-1, -1, 1)``: ``M_RAS = F M_LPS F`` for matrices, and
  displacement vectors and grid geometry flipped likewise for displacement fields.
* Non-linear transforms other than displacement fields (B-spline, composites) are converted to a
  displacement field sampled on a reference grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..imaging.image import physical_grid, sampling_grid
from .scene import get_scene
from .volumes import LPS_TO_RAS

_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_matrix_lps(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix of a linear SimpleITK transform (LPS, fixed -> moving)."""
    if not transform.IsLinear():
        raise InputError(f"{transform.GetName()} is not a linear transform")
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.asarray(transform.TransformPoint(unit)) - origin
    matrix[:3, 3] = origin
    return matrix


def transform_node_from_sitk(
    transform: sitk.Transform,
    name: str = "Transform",
    scene: slicer.vtkMRMLScene | None = None,
    reference: sitk.Image | None = None,
    node=None,
):
    """Create (or update ``node``) a transform node equivalent to a SimpleITK transform.

    Linear transforms give a linear transform node; displacement fields give a grid transform node
    with the same grid. Other non-linear transforms need ``reference`` (the fixed image) and are
    sampled on its grid as a displacement field.
    """
    if transform.IsLinear():
        matrix_ras = slicer.util.vtkMatrixFromArray(_FLIP4 @ affine_matrix_lps(transform) @ _FLIP4)
        if node is None:
            node = get_scene(scene).AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        if node.IsA("vtkMRMLLinearTransformNode") and node.IsLinear():
            node.SetMatrixTransformFromParent(matrix_ras)
        else:  # a grid node, or one holding a non-linear transform: VTK would refuse the matrix (only logging it)
            linear = vtk.vtkTransform()
            linear.SetMatrix(matrix_ras)
            node.SetAndObserveTransformFromParent(linear)
        return node
    field = _as_displacement_field(transform, reference)
    if node is None:
        node = get_scene(scene).AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(_vtk_grid_transform(field))
    return node


def _as_displacement_field(transform: sitk.Transform, reference: sitk.Image | None) -> sitk.Image:
    if transform.GetName() == "DisplacementFieldTransform":
        return sitk.DisplacementFieldTransform(transform).GetDisplacementField()
    if reference is None:
        raise InputError(f"a {transform.GetName()} is converted to a displacement field on a reference grid; "
                         "give the fixed image as reference")
    return sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
        reference.GetSpacing(), reference.GetDirection(),
    )


def _vtk_grid_transform(field: sitk.Image):
    vectors = sitk.GetArrayFromImage(field).astype(np.float64) @ LPS_TO_RAS  # [k,j,i,3], RAS components
    grid = vtk.vtkImageData()
    grid.SetOrigin(*(LPS_TO_RAS @ np.asarray(field.GetOrigin())))
    grid.SetSpacing(*field.GetSpacing())
    size = field.GetSize()
    grid.SetExtent(0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    data = numpy_support.numpy_to_vtk(np.ascontiguousarray(vectors.reshape(-1, 3)), deep=True,
                                      array_type=vtk.VTK_DOUBLE)
    data.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(data)
    direction = np.eye(4)
    direction[:3, :3] = LPS_TO_RAS @ np.reshape(field.GetDirection(), (3, 3))
    grid_transform = slicer.vtkOrientedGridTransform()
    grid_transform.SetDisplacementGridData(grid)
    grid_transform.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(direction))
    grid_transform.SetInterpolationModeToLinear()  # as ITK's DisplacementFieldTransform
    return grid_transform


def sitk_transform_from_node(node, reference: sitk.Image | None = None, *,
                             spacing_mm: float | None = None) -> sitk.Transform:
    """The SimpleITK transform (LPS, fixed = world -> moving = the node's children) of a transform node.

    Parameters
    ----------
    node : a ``vtkMRMLTransformNode`` from any source (linear, grid, B-spline or composite; its parents
        included), e.g. the output of Slicer's General Registration (BRAINS) or Elastix modules.
    reference : the fixed image (a grid in world space) on which a non-linear transform is sampled as a
        displacement field; not needed for linear chains and for a single grid node stored as ``FromParent``
        (its own field is converted exactly).
    spacing_mm : sample on an isotropic grid of this spacing over the reference's field of view (speed,
        memory; :func:`~..imaging.image.sampling_grid`) instead of the reference's own grid.

    Linear chains give an :class:`sitk.AffineTransform`. Raises :class:`InputError` for a missing node or a
    non-linear transform without a reference.
    """
    if node is None or not node.IsA("vtkMRMLTransformNode"):
        raise InputError("expected a transform node")
    if node.IsTransformToWorldLinear():  # asked first: VTK logs an error when a non-linear node is asked for a matrix
        matrix = vtk.vtkMatrix4x4()
        node.GetMatrixTransformFromWorld(matrix)  # world -> node-local = fixed -> moving, RAS
        lps = _FLIP4 @ slicer.util.arrayFromVTKMatrix(matrix) @ _FLIP4
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(lps[:3, :3].ravel().tolist())
        affine.SetTranslation(lps[:3, 3].tolist())
        return affine
    if spacing_mm is None and _is_plain_from_parent_grid(node):
        return sitk.DisplacementFieldTransform(_field_from_vtk_grid(node.GetTransformFromParent()))
    if reference is None:
        raise InputError(f"transform {node.GetName()!r} is non-linear; give the fixed volume (reference grid) to "
                         "sample it on")
    return sitk.DisplacementFieldTransform(_sample_field(node, sampling_grid(reference, spacing_mm)))


def _is_plain_from_parent_grid(node) -> bool:
    """A single grid node whose displacement grid is its ``FromParent`` (not an inverse of a ``ToParent`` grid)."""
    if node.GetParentTransformNode() is not None:
        return False
    from_parent = node.GetTransformFromParent()
    if from_parent is None or not from_parent.IsA("vtkOrientedGridTransform"):
        return False
    from_parent.Update()
    return not from_parent.GetInverseFlag() and from_parent.GetDisplacementGrid() is not None


def _field_from_vtk_grid(grid_transform) -> sitk.Image:
    grid = grid_transform.GetDisplacementGrid()
    nx, ny, nz = grid.GetDimensions()
    vectors = numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars()).reshape(nz, ny, nx, 3)
    scale, shift = grid_transform.GetDisplacementScale(), grid_transform.GetDisplacementShift()
    vectors = (vectors.astype(np.float64) * scale + shift) @ LPS_TO_RAS
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.SetSpacing(grid.GetSpacing())
    field.SetOrigin((LPS_TO_RAS @ np.asarray(grid.GetOrigin())).tolist())
    direction_matrix = grid_transform.GetGridDirectionMatrix()
    direction = np.eye(3) if direction_matrix is None else slicer.util.arrayFromVTKMatrix(direction_matrix)[:3, :3]
    field.SetDirection((LPS_TO_RAS @ direction).ravel().tolist())
    return field


def _sample_field(node, grid: sitk.Image) -> sitk.Image:
    """Displacement field (LPS, float64 vectors on ``grid``) of the node's world -> local transform."""
    x, y, z = physical_grid(grid)
    points_lps = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    general = vtk.vtkGeneralTransform()
    node.GetTransformFromWorld(general)
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_lps @ LPS_TO_RAS), deep=True))
    target = vtk.vtkPoints()
    general.TransformPoints(source, target)
    moved_lps = numpy_support.vtk_to_numpy(target.GetData()) @ LPS_TO_RAS
    field = sitk.GetImageFromArray((moved_lps - points_lps).reshape(*x.shape, 3), isVector=True)
    field.CopyInformation(grid)
    return field


def harden_transform(node) -> None:
    """Apply a node's parent transform permanently (linear: geometry only; non-linear: resamples voxels)."""
    if node.GetParentTransformNode() is None:
        return
    if not slicer.vtkSlicerTransformLogic.hardenTransform(node):
        raise InputError(f"Slicer could not harden the transform of {node.GetName()!r}")
