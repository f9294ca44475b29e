"""Build a Slicer scene from SimpleITK images and masks, and save it as a ``.mrb`` bundle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import SimpleITK as sitk

from .gtv_logic import RESULT_COLOURS
from .scene import create_core_scene, save_scene_mrb
from .segmentations import new_segmentation_node, set_segment_from_mask
from .tables import table_from_columns
from .transforms import transform_node_from_sitk
from .volumes import volume_node_from_image


def scene_from_images(
    volumes: Mapping[str, sitk.Image],
    segmentations: Mapping[str, tuple[sitk.Image, Mapping[str, sitk.Image]]] | None = None,
    tables: Mapping[str, Mapping[str, Sequence]] | None = None,
    scene=None,
    transforms: Mapping[str, tuple[sitk.Transform, sitk.Image | None]] | None = None,
):
    """A scene holding ``volumes`` (by node name), segmentations, tables and transforms.

    ``segmentations`` maps a segmentation node name to ``(reference image, {segment name: mask})``; the
    reference fixes the segmentation's geometry (masks are stored at its resolution). ``tables`` maps a
    table node name to columns. ``transforms`` maps a transform node name to ``(fixed -> moving transform,
    sampling grid or None)`` (:func:`~.transforms.transform_node_from_sitk`: linear transforms and
    displacement fields exactly, others sampled on the grid). Volumes in Gy are tagged as dose for SlicerRT.
    """
    scene = scene if scene is not None else create_core_scene()
    for name, image in volumes.items():
        volume_node_from_image(image, name, scene)
    for seg_name, (reference, masks) in (segmentations or {}).items():
        node = new_segmentation_node(seg_name, scene, reference=reference)
        for index, (segment, mask) in enumerate(masks.items()):
            set_segment_from_mask(node, mask, segment, RESULT_COLOURS[index % len(RESULT_COLOURS)])
    for table_name, columns in (tables or {}).items():
        table_from_columns(dict(columns), table_name, scene=scene)
    for transform_name, (transform, grid) in (transforms or {}).items():
        transform_node_from_sitk(transform, transform_name, scene, reference=grid)
    return scene


def write_scene_bundle(path: str | Path, volumes: Mapping[str, sitk.Image],
                       segmentations: Mapping[str, tuple[sitk.Image, Mapping[str, sitk.Image]]] | None = None,
                       tables: Mapping[str, Mapping[str, Sequence]] | None = None,
                       transforms: Mapping[str, tuple[sitk.Transform, sitk.Image | None]] | None = None) -> Path:
    """Build a scene with :func:`scene_from_images` and save it as a ``.mrb`` bundle (atomically)."""
    return save_scene_mrb(scene_from_images(volumes, segmentations, tables, transforms=transforms), path)
