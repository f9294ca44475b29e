"""``petdp demo``: the end-to-end walk on built-in synthetic data, written to one folder.

Writes NRRD images, ``summary.json`` and a Slicer scene ``demo.mrb`` (PET, CT and the GTV
segmentation), and returns what it wrote.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..imaging.io import write_image, write_json
from ..phantom.sphere_pair import SpherePairConfig, sphere_pet_ct
from ..segmentation.thresholds import threshold_fraction_of_max
from .outputs import prepare_output_dir


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and its summary (also in ``summary.json``)."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def run_demo(out_dir: str | Path, quick: bool = False, log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out_dir`` (new, empty, or a previous demo output).

    ``quick`` uses a smaller field of view; the analysis is the same.
    """
    started = time.perf_counter()
    out = prepare_output_dir(out_dir, "demo")
    result = DemoResult(out_dir=out)

    config = SpherePairConfig(field_of_view_mm=(128.0, 128.0, 64.0)) if quick else SpherePairConfig()
    log("building the synthetic PET/CT pair (spherical tumour of known volume)")
    pair = sphere_pet_ct(config)

    log("segmenting the GTV: 41% of SUVmax, seed at the tumour centre")
    gtv = threshold_fraction_of_max(pair.pet, pair.tumour_centre_lps, fraction=0.41)

    files = {
        "pet": write_image(pair.pet, out / "pet_suv.nrrd"),
        "ct": write_image(pair.ct, out / "ct.nrrd"),
        "truth_gtv": write_image(pair.truth_mask, out / "truth_gtv.nrrd"),
        "gtv_threshold41": write_image(gtv.mask, out / "gtv_threshold41.nrrd"),
    }
    log("writing the Slicer scene")
    files["scene"] = _write_scene(out / "demo.mrb", pair.pet, pair.ct, {"GTV_PET_41pct": gtv.mask,
                                                                        "GTV_truth": pair.truth_mask})
    truth = sitk.GetArrayViewFromImage(pair.truth_mask) > 0
    seg = sitk.GetArrayViewFromImage(gtv.mask) > 0
    summary = {
        "petdp_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "data": {
            "kind": "sphere PET/CT pair",
            "tumour_radius_mm": config.tumour_radius_mm,
            "tumour_suv": config.tumour_suv,
            "background_suv": config.background_suv,
            "psf_fwhm_mm": config.psf_fwhm_mm,
            "pet_voxel_mm": config.pet_voxel_mm,
        },
        "gtv": {
            "method": "threshold 41% SUVmax",
            "volume_ml": gtv.volume_ml,
            "truth_volume_ml": pair.tumour_volume_ml,
            "truth_definition": "analytic sphere volume 4/3 pi r^3",
            "volume_error_pct": 100.0 * (gtv.volume_ml / pair.tumour_volume_ml - 1.0),
            "dice_vs_truth_mask": float(2 * np.count_nonzero(truth & seg) / (truth.sum() + seg.sum())),
            "suv_max": gtv.reference_value,
            "threshold_suv": gtv.threshold,
        },
        "files": {k: str(v.relative_to(out)) for k, v in files.items()},
        "runtime_s": round(time.perf_counter() - started, 2),
    }
    files["summary"] = write_json(summary, out / "summary.json")
    result.files, result.summary = files, summary
    return result


def _write_scene(path: Path, pet: sitk.Image, ct: sitk.Image, segments: dict[str, sitk.Image]) -> Path:
    from ..mrml.scene import create_core_scene, save_scene_mrb
    from ..mrml.segmentations import new_segmentation_node, set_segment_from_mask
    from ..mrml.volumes import volume_node_from_image

    scene = create_core_scene()
    pet_node = volume_node_from_image(pet, "PET_SUVbw", scene)
    volume_node_from_image(ct, "CT", scene)
    seg_node = new_segmentation_node("GTV", scene, reference=pet_node)
    colours = [(0.9, 0.2, 0.2), (0.2, 0.8, 0.2), (0.2, 0.4, 0.9), (0.9, 0.7, 0.1)]
    for (name, mask), colour in zip(segments.items(), colours * 10, strict=False):
        set_segment_from_mask(seg_node, mask, name, colour)
    return save_scene_mrb(scene, path)
