"""Node-level logic behind the HypoxiaMapping panel (tested headless)."""

from __future__ import annotations

from ..dosepainting.hypoxia import RatioMap, uptake_ratio_map
from .segmentations import mask_from_segment
from .volumes import image_from_volume_node, volume_node_from_image


def ratio_map_node(pet_node, reference_segmentation, reference_segment: str, reference_kind: str = "muscle",
                   output_node=None) -> tuple[object, RatioMap]:
    """Tumour-to-reference ratio volume node from a PET node and a reference segment (by name)."""
    pet = image_from_volume_node(pet_node)
    reference = mask_from_segment(reference_segmentation, reference_segment, pet)
    result = uptake_ratio_map(pet, reference, reference_kind)
    name = f"{pet_node.GetName()}_{'TMR' if reference_kind == 'muscle' else 'TBR'}"
    node = volume_node_from_image(result.ratio, name, pet_node.GetScene(), node=output_node)
    node.SetAttribute("PETDosePainting.ReferenceMean", f"{result.reference_mean:.6g}")
    return node, result
