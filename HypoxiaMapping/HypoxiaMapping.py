"""HypoxiaMapping: hypoxia PET ratio maps and dose-painting prescriptions in 3D Slicer.

Thin module file: metadata, parameter node, widget and a Logic that calls the PETDosePainting library.
"""

from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class HypoxiaMapping(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HypoxiaMapping")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = ["PETDosePainting"]
        self.parent.contributors = ["PETDosePainting developers"]
        self.parent.helpText = _(
            "Hypoxia PET (FMISO, FAZA) tumour-to-muscle and tumour-to-blood ratio maps, hypoxic volumes and "
            "dose-painting prescriptions for export to a treatment planning system."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _("Part of the PETDosePainting extension.")


@parameterNodeWrapper
class HypoxiaMappingParameterNode:
    """Panel state, saved with the scene."""

    petVolume: vtkMRMLScalarVolumeNode
    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegment: str = "Muscle"
    referenceKind: Annotated[str, Choice(["muscle", "blood"])] = "muscle"
    ratioVolume: vtkMRMLScalarVolumeNode


class HypoxiaMappingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HypoxiaMapping.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HypoxiaMappingLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.ratioButton.connect("clicked(bool)", self.onRatioButton)
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
        p = self._parameterNode
        self.ui.ratioButton.enabled = bool(p and p.petVolume and p.referenceSegmentation and p.referenceSegment)

    def onRatioButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Ratio map failed."), waitCursor=True):
            p = self._parameterNode
            node, result = self.logic.ratioMap(p.petVolume, p.referenceSegmentation, p.referenceSegment,
                                               p.referenceKind, p.ratioVolume)
            p.ratioVolume = node
            self.ui.resultLabel.text = (f"reference mean {result.reference_mean:.3g} "
                                        f"over {result.reference_volume_ml:.1f} mL")


class HypoxiaMappingLogic(ScriptedLoadableModuleLogic):
    """Thin logic over the library (usable from the Python console)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return HypoxiaMappingParameterNode(super().getParameterNode())

    def ratioMap(self, petNode, referenceSegmentation, referenceSegment, referenceKind="muscle", outputNode=None):
        """Tumour-to-reference ratio volume; returns ``(volumeNode, RatioMap)``."""
        from PETDosePaintingLib.mrml.hypoxia_logic import ratio_map_node

        return ratio_map_node(petNode, referenceSegmentation, referenceSegment, referenceKind, outputNode)


class HypoxiaMappingTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a uniform PET over a muscle segment gives a ratio of 1."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_HypoxiaMapping_uniform_ratio()

    def test_HypoxiaMapping_uniform_ratio(self):
        import numpy as np

        from PETDosePaintingLib.imaging.image import Units, image_from_array
        from PETDosePaintingLib.mrml.segmentations import new_segmentation_node, set_segment_from_mask
        from PETDosePaintingLib.mrml.volumes import volume_node_from_image

        pet = image_from_array(np.full((10, 10, 10), 1.7, np.float32), spacing=(2, 2, 2), units=Units.SUV_BW)
        node = volume_node_from_image(pet, "FMISO", slicer.mrmlScene)
        seg = new_segmentation_node("Reference", slicer.mrmlScene, reference=node)
        muscle = np.zeros((10, 10, 10), bool)
        muscle[2:5, 2:5, 2:5] = True
        set_segment_from_mask(seg, image_from_array(muscle, pet), "Muscle")
        ratio, result = HypoxiaMappingLogic().ratioMap(node, seg, "Muscle")
        self.assertAlmostEqual(result.reference_mean, 1.7, places=5)
        self.assertAlmostEqual(float(slicer.util.arrayFromVolume(ratio).mean()), 1.0, places=5)
        self.delayDisplay("Test passed")
