"""Node-level logic behind the GradientSegment and PETDosePainting panels (tested headless).

These functions take and return MRML nodes; the science is in the tier-1 library they call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import vtk

from ..imaging.image import mask_volume_ml
from ..segmentation.common import SegmentationResult
from ..segmentation.registry import run_method
from .segmentations import mask_from_segment, new_segmentation_node, segment_names, set_segment_from_mask
from .volumes import image_from_volume_node, ras_to_lps_point

#: Colours given to method results, cycled in order (RGB 0..1).
RESULT_COLOURS = ((0.90, 0.25, 0.20), (0.20, 0.70, 0.30), (0.25, 0.45, 0.90), (0.95, 0.75, 0.10),
                  (0.70, 0.30, 0.80), (0.10, 0.75, 0.80), (0.90, 0.50, 0.70), (0.55, 0.55, 0.55))


def segment_pet_node(
    pet_node,
    seed_ras: Sequence[float] | None,
    method: str = "threshold",
    *,
    segmentation_node=None,
    segment_name: str | None = None,
    roi_node=None,
    **parameters: Any,
) -> tuple[Any, SegmentationResult]:
    """Segment a PET volume node from a seed in RAS and write the result into a segment by name.

    Parameters
    ----------
    pet_node : scalar volume node of the PET (SUV for methods that need SUV).
    seed_ras : the click in RAS millimetres (world coordinates).
    method : a name of :mod:`PETDosePaintingLib.segmentation.registry`.
    segmentation_node : where to write; a new node "GTV" referencing the PET grid if ``None``.
    segment_name : segment to create or replace (others are untouched); default ``"GTV_<method>"``.
    roi_node : optional labelmap volume node on the PET grid restricting the search.
    parameters : method parameters (see the registry).

    Returns the segmentation node and the library's result (mask, threshold, ...).
    """
    image = image_from_volume_node(pet_node)
    roi = image_from_volume_node(roi_node) if roi_node is not None else None
    seed_lps = None if seed_ras is None else ras_to_lps_point(seed_ras).tolist()
    result = run_method(method, image, seed_lps, roi, **parameters)
    if segmentation_node is None:
        segmentation_node = new_segmentation_node("GTV", pet_node.GetScene(), reference=pet_node)
    name = segment_name or f"GTV_{method}"
    existing = segment_names(segmentation_node)
    colour = RESULT_COLOURS[(existing.index(name) if name in existing else len(existing)) % len(RESULT_COLOURS)]
    set_segment_from_mask(segmentation_node, result.mask, name, colour)
    return segmentation_node, result


def segment_volume_table(segmentation_node, reference, table_node=None, scene=None):
    """A table node with one row per segment: name and volume (mL) as a binary labelmap on ``reference``.

    ``reference`` is a volume node or a SimpleITK image; its grid is the stated volume definition
    (voxel count x voxel volume), written into the table's ``definition`` column.
    """
    scene = scene or segmentation_node.GetScene()
    ref_image = reference if isinstance(reference, sitk.Image) else image_from_volume_node(reference)
    names = segment_names(segmentation_node)
    volumes = [mask_volume_ml(mask_from_segment(segmentation_node, n, ref_image)) for n in names]
    spacing = "x".join(f"{s:.3g}" for s in ref_image.GetSpacing())
    return table_from_columns(
        {"segment": names, "volume_ml": volumes,
         "definition": [f"binary labelmap on a {spacing} mm grid"] * len(names)},
        "Segment volumes", table_node, scene)


def table_from_columns(columns: dict[str, Sequence[Any]], name: str, table_node=None, scene=None):
    """Create (or refill) a table node from named columns (strings or numbers, equal lengths)."""
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = table_node.GetTable()
    table.Initialize()
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    for col_name, values in columns.items():
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float(v))
        else:
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue(str(v))
        array.SetName(col_name)
        table.AddColumn(array)
    table_node.Modified()
    return table_node


def table_to_columns(table_node) -> dict[str, list[Any]]:
    """The content of a table node as ``{column: values}`` (numbers as float, others as str)."""
    table = table_node.GetTable()
    out: dict[str, list[Any]] = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        values = [column.GetValue(r) for r in range(table.GetNumberOfRows())]
        out[column.GetName()] = [float(v) if column.IsNumeric() else str(v) for v in values]
    return out


__all__ = ["segment_pet_node", "segment_volume_table", "table_from_columns", "table_to_columns"]
