"""PETDosePainting: compare GTVs across modalities and timepoints; owner of the shared library.

This module folder holds ``PETDosePaintingLib``, the headless library used by all modules of the
extension (GradientSegment and HypoxiaMapping declare a dependency on this module so that it is loaded,
and its folder on ``sys.path``, first). The module file itself stays thin.
"""

import os
import tempfile

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class PETDosePainting(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PETDosePainting")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = []
        self.parent.contributors = ["PETDosePainting developers"]
        self.parent.helpText = _(
            "Compare GTV_CT, GTV_MRI and GTV_PET (volumes, overlap, accuracy against a reference), follow "
            "them over treatment timepoints with registration, and accumulate doses. Also loads the built-in "
            "digital head-and-neck patient."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _("Part of the PETDosePainting extension.")


@parameterNodeWrapper
class PETDosePaintingParameterNode:
    """Panel state, saved with the scene."""

    segmentation: vtkMRMLSegmentationNode
    referenceVolume: vtkMRMLScalarVolumeNode
    volumeTable: vtkMRMLTableNode


class PETDosePaintingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETDosePainting.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PETDosePaintingLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)
        self.ui.volumesButton.connect("clicked(bool)", self.onVolumesButton)
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
        self.ui.volumesButton.enabled = bool(p and p.segmentation and p.referenceVolume)

    def onLoadDemoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not build the demo patient."), waitCursor=True):
            self.logic.loadDemo(quick=self.ui.quickDemoCheckBox.checked)

    def onVolumesButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Volume table failed."), waitCursor=True):
            p = self._parameterNode
            p.volumeTable = self.logic.volumeTable(p.segmentation, p.referenceVolume, p.volumeTable)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(p.volumeTable.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


class PETDosePaintingLogic(ScriptedLoadableModuleLogic):
    """Thin logic over the library (usable from the Python console)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PETDosePaintingParameterNode(super().getParameterNode())

    def loadDemo(self, outDir=None, quick=True):
        """Run ``petdp demo`` into ``outDir`` (a new temporary folder by default) and load its scene."""
        from PETDosePaintingLib.pipeline.demo import run_demo

        outDir = outDir or tempfile.mkdtemp(prefix="PETDosePaintingDemo-")
        result = run_demo(outDir, quick=quick, log=lambda msg: slicer.util.showStatusMessage(msg, 2000))
        slicer.util.loadScene(str(result.files["scene"]))
        return result

    def volumeTable(self, segmentationNode, referenceVolumeNode, tableNode=None):
        """Table node of segment volumes (mL) as binary labelmaps on the reference volume's grid."""
        from PETDosePaintingLib.mrml.gtv_logic import segment_volume_table

        return segment_volume_table(segmentationNode, referenceVolumeNode, tableNode)


class PETDosePaintingTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: the library imports from the module folder and the demo scene loads."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PETDosePainting_library_path()
        self.setUp()
        self.test_PETDosePainting_demo()

    def test_PETDosePainting_library_path(self):
        import PETDosePaintingLib

        here = os.path.dirname(os.path.abspath(__file__))
        self.assertTrue(os.path.abspath(PETDosePaintingLib.__file__).startswith(here))

    def test_PETDosePainting_demo(self):
        self.delayDisplay("Running the quick demo")
        result = PETDosePaintingLogic().loadDemo(quick=True)
        self.assertTrue(os.path.isfile(result.files["scene"]))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("GTV"))
        self.delayDisplay("Test passed")
