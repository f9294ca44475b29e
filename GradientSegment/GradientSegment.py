"""GradientSegment: PET GTV segmentation (gradient method and the classical methods) in 3D Slicer.

Thin module file: metadata, parameter node, widget and a Logic that calls the PETDosePainting library
(``PETDosePaintingLib``, owned by the PETDosePainting module, which this module depends on).
"""

import logging
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class GradientSegment(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GradientSegment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = ["PETDosePainting"]
        self.parent.contributors = ["PETDosePainting developers"]
        self.parent.helpText = _(
            "Segment a PET-avid GTV from one click: the gradient method (edge-preserving denoising, "
            "deblurring with the scanner resolution, gradient, watershed, hierarchical cluster analysis) "
            "and the classical threshold, adaptive, iterative and clustering methods, side by side."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Gradient method after Geets X, Lee JA, Bol A, Lonneux M, Grégoire V, EJNMMI 2007;34:1427."
        )


@parameterNodeWrapper
class GradientSegmentParameterNode:
    """Panel state, saved with the scene."""

    petVolume: vtkMRMLScalarVolumeNode
    seedPoints: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode
    method: str = "threshold"
    fraction: Annotated[float, WithinRange(0.05, 0.95)] = 0.41
    fwhmMm: Annotated[float, WithinRange(1.0, 20.0)] = 6.0
    segmentName: str = ""


class GradientSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GradientSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GradientSegmentLogic()
        for name in self.logic.methodNames():
            self.ui.methodComboBox.addItem(name)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload the shared library too, then this module (developer Reload button)."""
        from PETDosePaintingLib.reloading import reload_library

        reload_library()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.petVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.petVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.petVolume and self._parameterNode.seedPoints
                     and self._parameterNode.seedPoints.GetNumberOfControlPoints() > 0)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Segment the GTV") if ready else _("Select a PET volume and place a seed")

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            p = self._parameterNode
            seed = [0.0, 0.0, 0.0]
            p.seedPoints.GetNthControlPointPositionWorld(0, seed)
            segmentation, result = self.logic.segment(
                p.petVolume, seed, method=p.method, segmentationNode=p.outputSegmentation,
                segmentName=p.segmentName or None, fraction=p.fraction, fwhmMm=p.fwhmMm)
            p.outputSegmentation = segmentation
            threshold = "" if result.threshold is None else f", threshold {result.threshold:.2f}"
            self.ui.resultLabel.text = f"{result.method}: {result.volume_ml:.2f} mL{threshold}"


class GradientSegmentLogic(ScriptedLoadableModuleLogic):
    """Thin logic: turns panel values into library calls (usable from the Python console)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return GradientSegmentParameterNode(super().getParameterNode())

    @staticmethod
    def methodNames():
        from PETDosePaintingLib.segmentation.registry import method_names

        return method_names()

    def segment(self, petNode, seedRAS, method="threshold", *, segmentationNode=None, segmentName=None,
                fraction=None, fwhmMm=None, **parameters):
        """Segment ``petNode`` from a seed in RAS; returns ``(segmentationNode, SegmentationResult)``.

        Parameters the chosen method does not take are dropped (the panel always offers all of them).
        """
        from PETDosePaintingLib.mrml.gtv_logic import segment_pet_node
        from PETDosePaintingLib.segmentation.registry import get_method

        accepted = get_method(method).parameters
        options = {"fraction": fraction, "fwhm_mm": fwhmMm, **parameters}
        options = {k: v for k, v in options.items() if k in accepted and v is not None}
        logging.info(f"GradientSegment: {method} with {options}")
        return segment_pet_node(petNode, seedRAS, method, segmentation_node=segmentationNode,
                                segment_name=segmentName, **options)


class GradientSegmentTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a synthetic sphere is segmented and its volume checked."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GradientSegment_sphere()

    def test_GradientSegment_sphere(self):
        from PETDosePaintingLib.mrml.volumes import lps_to_ras_point, volume_node_from_image
        from PETDosePaintingLib.phantom.sphere_pair import sphere_pet_ct

        self.delayDisplay("Segmenting a synthetic sphere")
        pair = sphere_pet_ct()
        pet = volume_node_from_image(pair.pet, "PET", slicer.mrmlScene)
        seg, result = GradientSegmentLogic().segment(pet, lps_to_ras_point(pair.tumour_centre_lps).tolist())
        self.assertEqual(seg.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertAlmostEqual(result.volume_ml / pair.tumour_volume_ml, 1.0, delta=0.15)
        self.delayDisplay("Test passed")
