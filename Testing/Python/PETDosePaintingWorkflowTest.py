"""Cross-module workflow test inside 3D Slicer: the digital patient through GradientSegment, HypoxiaMapping and
PETDosePainting, the way a user chains the three panels (their Logic classes, as the Python console does).

Needs the Slicer application (the module Logic classes import Qt), so pytest does not collect it
(``collect_ignore`` in conftest.py); it is registered for Slicer's ctest in CMakeLists.txt and can be run from the
Python console with ``import slicer.testing; slicer.testing.runUnitTest([folder], "PETDosePaintingWorkflowTest")``.
Every node-level function it calls is tested headless with slicer-core (test_gradientsegment_logic.py,
test_hypoxiamapping_logic.py, test_comparison_node_logic.py, test_registration.py, test_accumulation.py).

Steps: build the quick digital patient (baseline and fraction 7) and put its PET and CT volumes and the true GTV
into the scene -> GTV_PET at both timepoints with the gradient method (GradientSegment) -> a 5-level dose-painting
prescription on the baseline GTV (HypoxiaMapping) -> the baseline GTV against the truth, the volume course and a
rigid registration of the fraction-7 CT onto the baseline CT, the persistent/newborn/resolved sub-volumes through
it, and the prescription accumulated over two phases (PETDosePainting) -> the scene saved as .mrb and loaded again.
"""

import os
import tempfile

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class PETDosePaintingWorkflowTest(ScriptedLoadableModuleTest):
    """Digital patient -> GradientSegment -> HypoxiaMapping -> PETDosePainting, in one scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PETDosePaintingWorkflow()

    def _load_patient(self):
        """The quick digital patient's baseline and fraction-7 volumes and the true baseline GTV, in the scene."""
        from PETDosePaintingLib.mrml.segmentations import new_segmentation_node, set_segment_from_mask
        from PETDosePaintingLib.mrml.volumes import lps_to_ras_point, volume_node_from_image
        from PETDosePaintingLib.phantom.patient import PatientConfig, build_patient

        config = PatientConfig(quick=True, with_mr=False)
        patient = build_patient(config)
        baseline, fx7 = patient.timepoints[0], patient.timepoints[1]
        nodes = {
            "PET0": volume_node_from_image(baseline.fdg_pet, "PET_baseline", slicer.mrmlScene),
            "CT0": volume_node_from_image(baseline.ct, "CT_baseline", slicer.mrmlScene),
            "PET7": volume_node_from_image(fx7.fdg_pet, "PET_fx7", slicer.mrmlScene),
            "CT7": volume_node_from_image(fx7.ct, "CT_fx7", slicer.mrmlScene),
        }
        truth = new_segmentation_node("Truth", slicer.mrmlScene, reference=baseline.fdg_pet)
        set_segment_from_mask(truth, baseline.truth.gtv_pet, "GTV_truth")
        seeds = [lps_to_ras_point(tp.truth.seed_lps).tolist() for tp in (baseline, fx7)]
        return patient, config.scanner_config().effective_fwhm_mm, nodes, truth, seeds

    def test_PETDosePaintingWorkflow(self):
        import numpy as np

        import GradientSegment
        import HypoxiaMapping
        import PETDosePainting
        from PETDosePaintingLib.mrml.segmentations import new_segmentation_node
        from PETDosePaintingLib.mrml.volumes import image_from_volume_node, volume_node_from_image

        self.delayDisplay("Building the digital patient")
        patient, fwhm, nodes, truth, seeds = self._load_patient()
        truth_ml = patient.timepoints[0].truth.gtv_volume_ml

        self.delayDisplay("GradientSegment: GTV_PET at baseline and fraction 7")
        segmenter = GradientSegment.GradientSegmentLogic()
        outputs = [new_segmentation_node(name, slicer.mrmlScene) for name in ("GTV baseline", "GTV fx7")]
        gtv0 = segmenter.segment(nodes["PET0"], seeds[0], method="gradient", fwhmMm=fwhm, segmentName="GTV_PET",
                                 segmentationNode=outputs[0])
        gtv7 = segmenter.segment(nodes["PET7"], seeds[1], method="gradient", fwhmMm=fwhm, segmentName="GTV_PET",
                                 segmentationNode=outputs[1], tableNode=gtv0.table_node)
        self.assertAlmostEqual(gtv0.result.volume_ml / truth_ml, 1.0, delta=0.25)
        self.assertEqual(gtv0.table_node.GetNumberOfRows(), 2)

        self.delayDisplay("HypoxiaMapping: 5-level dose-painting prescription on GTV_PET")
        rx = HypoxiaMapping.HypoxiaMappingLogic().prescribe(nodes["PET0"], gtv0.segmentation_node, "GTV_PET",
                                                            mode="levels", doseMin=70.0, doseMax=86.0)
        self.assertEqual(rx.prescription_node.GetAttribute("DicomRtImport.DoseVolume"), "1")
        self.assertEqual(len(rx.level_segments), 5)

        self.delayDisplay("PETDosePainting: GTV_PET against the truth")
        logic = PETDosePainting.PETDosePaintingLogic()
        comparison = logic.compare([(gtv0.segmentation_node, "GTV_PET")], (truth, "GTV_truth"), names=["GTV_PET"])
        self.assertGreater(comparison.volume_table.row("GTV_PET").dice, 0.8)
        self.assertEqual(comparison.volume_table_node.GetNumberOfRows(), 2)  # the GTV and the reference

        self.delayDisplay("PETDosePainting: volume course, registration, longitudinal changes")
        course = logic.volumeCourse([(gtv0.segmentation_node, "GTV_PET"), (gtv7.segmentation_node, "GTV_PET")],
                                    names=["baseline", "fx7"], times=[0, 7], timeLabel="fraction")
        self.assertAlmostEqual(course.course[1].volume_ml, gtv7.result.volume_ml, places=6)
        steps = []
        registration = logic.register(
            nodes["CT0"], nodes["CT7"], "rigid", applyTo=[nodes["CT7"]],
            rigidOptions={"initialization": "none", "working_spacing_mm": 2.0, "shrink_factors": (2, 1),
                          "smoothing_sigmas_mm": (2.0, 0.0)},
            progress=lambda done, total, label: steps.append(label))
        self.assertEqual(steps, ["rigid registration"])
        self.assertIs(nodes["CT7"].GetParentTransformNode(), registration.transform_node)
        change = logic.longitudinalChanges((gtv7.segmentation_node, "GTV_PET"), (gtv0.segmentation_node, "GTV_PET"),
                                           registration.transform_node, currentName="fx7", previousNames=["baseline"])
        c = change.change
        # The current GTV splits into persistent, newborn and tolerated voxels (library definitions).
        self.assertAlmostEqual(c.persistent_ml + c.newborn_ml + c.tolerated_current_ml, c.current_ml, places=6)
        self.assertEqual(sorted(change.segment_names.values()), ["fx7_newborn", "fx7_persistent", "fx7_resolved"])

        self.delayDisplay("PETDosePainting: the prescription accumulated over two phases")
        phase2 = volume_node_from_image(image_from_volume_node(rx.prescription_node), "Rx_fx7", slicer.mrmlScene)
        phase2.SetAndObserveTransformNodeID(registration.transform_node.GetID())
        total, result, table = logic.accumulateDoses(nodes["CT0"], [rx.prescription_node, phase2])
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.assertEqual(total.GetAttribute("DicomRtImport.DoseVolume"), "1")
        self.assertLessEqual(float(np.max(slicer.util.arrayFromVolume(total))), 2 * 86.0 + 1e-3)
        self.assertGreater(result.coverage_fraction, 0.5)

        self.delayDisplay("Saving and loading the scene")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "workflow.mrb")
            self.assertTrue(slicer.util.saveScene(path))
            slicer.mrmlScene.Clear()
            slicer.util.loadScene(path)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("GTV volumes"))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("fx7 changes"))
        self.delayDisplay("Test passed")
