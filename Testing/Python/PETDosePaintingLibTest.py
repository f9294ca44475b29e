"""Library tests in unittest style: run by pytest headless and by Slicer's ctest inside the application.

Inside Slicer the scene is ``slicer.mrmlScene``; outside, a slicer-core scene.
"""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk


class PETDosePaintingLibTest(unittest.TestCase):
    """Mask <-> segment round trip and a one-click segmentation on a synthetic sphere."""

    def setUp(self):
        import slicer

        from PETDosePaintingLib.mrml.scene import get_scene

        self.scene = get_scene()
        if getattr(slicer, "mrmlScene", None) is not None:
            self.scene.Clear(0)

    def test_sphere_round_trip_and_threshold(self):
        from PETDosePaintingLib.mrml.gtv_logic import segment_pet_node
        from PETDosePaintingLib.mrml.segmentations import mask_from_segment
        from PETDosePaintingLib.mrml.volumes import lps_to_ras_point, volume_node_from_image
        from PETDosePaintingLib.phantom.sphere_pair import sphere_pet_ct

        pair = sphere_pet_ct()
        pet = volume_node_from_image(pair.pet, "PET", self.scene)
        seg, result = segment_pet_node(pet, lps_to_ras_point(pair.tumour_centre_lps), "threshold")
        back = sitk.GetArrayFromImage(mask_from_segment(seg, "GTV_threshold", pet)) > 0
        self.assertTrue(np.array_equal(back, sitk.GetArrayFromImage(result.mask) > 0))
        # 41 % of SUVmax on a 40 mm sphere blurred by a 6 mm PSF: within 15 % of 4/3 pi r^3.
        self.assertAlmostEqual(result.volume_ml / pair.tumour_volume_ml, 1.0, delta=0.15)


if __name__ == "__main__":
    unittest.main()
