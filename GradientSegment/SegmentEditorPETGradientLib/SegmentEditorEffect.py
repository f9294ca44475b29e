"""The "PET Gradient" Segment Editor effect: click a lesion, walk the gradient method's dendrogram, apply.

Qt glue only. The computation (gradient method in the editor's geometry, the dendrogram level masks,
the preview node) is ``PETDosePaintingLib.mrml.segment_editor_logic``, tested headless; the algorithm is
``PETDosePaintingLib.segmentation.gradient``. This file is loaded by
``qSlicerSegmentEditorScriptedEffect.setPythonSource`` as a stand-alone module, so it uses absolute
imports only.
"""

import logging
import os

import ctk
import qt
import slicer
import vtk
from SegmentEditorEffects.AbstractScriptedSegmentEditorEffect import AbstractScriptedSegmentEditorEffect
from slicer.i18n import tr as _

#: Effect parameters stored in the segment editor node (saved with the scene).
FWHM_PARAMETER = "FwhmMm"
ADD_PARAMETER = "AddToSegment"


def _editorLogic():
    """The tier-2 helpers (imported lazily: the library is on sys.path once PETDosePainting has loaded)."""
    from PETDosePaintingLib.mrml import segment_editor_logic

    return segment_editor_logic


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Gradient-method (Geets 2007) segmentation of the PET lesion under a click, with a dendrogram-level slider."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "PET Gradient"  # not translated: modules and tests find effects by name
        scriptedEffect.title = _("PET Gradient")
        scriptedEffect.perSegment = True  # writes into the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.cluster = None  # EditorGradientCluster of the last click
        self.previewNode = None
        self.lastSeedRAS = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            "Segment the PET lesion under a click with the gradient method (edge-preserving denoising, "
            "deblurring with the scanner resolution, gradient watershed, hierarchical clustering; "
            "Geets et al. 2007).<br>"
            "<ul style='margin: 0'>"
            "<li><b>Left-click</b> inside the lesion in a slice view: the cluster the method chooses is previewed.</li>"
            "<li><b>Dendrogram level</b>: walk the nested clusters around the click (0 = the click's own watershed "
            "basin; each step merges the next neighbour). No recomputation.</li>"
            "<li><b>Scanner FWHM</b>: effective resolution of the PET reconstruction (mm), saved with the scene.</li>"
            "<li><b>Apply</b> writes the previewed cluster into the selected segment, honouring the editable area, "
            "editable intensity range and overwrite settings of the Masking section; <b>Cancel</b> clears the "
            "preview.</li></ul>"
            "The source volume should be the PET. The computation runs in the segmentation's geometry: "
            "for fidelity and speed use the PET grid as the segmentation geometry."
        ) + "</html>"

    # --------------------------------------------------------------------------------------- options

    def setupOptionsFrame(self):
        self.fwhmSlider = ctk.ctkSliderWidget()
        self.fwhmSlider.decimals = 1
        self.fwhmSlider.minimum = 1.0
        self.fwhmSlider.maximum = 20.0
        self.fwhmSlider.singleStep = 0.5
        self.fwhmSlider.pageStep = 1.0
        self.fwhmSlider.suffix = " mm"
        self.fwhmSlider.tracking = False  # recompute on release, not while dragging
        self.fwhmSlider.setToolTip(_(
            "Effective image resolution (FWHM) of the PET reconstruction. 6 mm is a design default: measure "
            "yours (sphere or edge fit). Changing it recomputes the preview."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Scanner FWHM:"), self.fwhmSlider)

        self.levelSlider = ctk.ctkSliderWidget()
        self.levelSlider.decimals = 0
        self.levelSlider.minimum = 0
        self.levelSlider.maximum = 0
        self.levelSlider.singleStep = 1
        self.levelSlider.pageStep = 1
        self.levelSlider.enabled = False
        self.levelSlider.setToolTip(_(
            "Level of the hierarchical clustering around the click: 0 is the click's own watershed basin, each "
            "step merges one more neighbouring cluster. The method's automatic choice is selected first."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Dendrogram level:"), self.levelSlider)

        self.levelLabel = qt.QLabel(_("Left-click inside the lesion in a slice view."))
        self.levelLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.levelLabel)

        self.addCheckBox = qt.QCheckBox(_("Add to segment"))
        self.addCheckBox.setToolTip(_(
            "Checked: add the cluster to the selected segment. Unchecked: replace the segment's content "
            "(within the editable area)."))
        self.scriptedEffect.addOptionsWidget(self.addCheckBox)

        self.cancelButton = qt.QPushButton(_("Cancel"))
        self.cancelButton.objectName = self.__class__.__name__ + "Cancel"
        self.cancelButton.setToolTip(_("Clear the preview"))
        self.applyButton = qt.QPushButton(_("Apply"))
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.setToolTip(_("Write the previewed cluster into the selected segment"))
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.cancelButton)
        buttons.addWidget(self.applyButton)
        self.scriptedEffect.addOptionsWidget(buttons)

        self.fwhmSlider.connect("valueChanged(double)", self.onFwhmChanged)
        self.levelSlider.connect("valueChanged(double)", self.onLevelChanged)
        self.addCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.cancelButton.connect("clicked()", self.onCancel)
        self.applyButton.connect("clicked()", self.onApply)

    def cleanup(self):
        # Disconnect the Qt connections so that the effect can be garbage collected (Slicer issue #7392).
        self.fwhmSlider.disconnect("valueChanged(double)", self.onFwhmChanged)
        self.levelSlider.disconnect("valueChanged(double)", self.onLevelChanged)
        self.addCheckBox.disconnect("toggled(bool)", self.updateMRMLFromGUI)
        self.cancelButton.disconnect("clicked()", self.onCancel)
        self.applyButton.disconnect("clicked()", self.onApply)
        self._removePreview()

    def setMRMLDefaults(self):
        from PETDosePaintingLib.segmentation.gradient import DEFAULT_FWHM_MM

        self.scriptedEffect.setParameterDefault(FWHM_PARAMETER, DEFAULT_FWHM_MM)
        self.scriptedEffect.setParameterDefault(ADD_PARAMETER, 0)

    def updateGUIFromMRML(self):
        if self.scriptedEffect.parameterSetNode() is None:
            return
        wasBlocked = self.fwhmSlider.blockSignals(True)
        self.fwhmSlider.value = self.scriptedEffect.doubleParameter(FWHM_PARAMETER)
        self.fwhmSlider.blockSignals(wasBlocked)
        wasBlocked = self.addCheckBox.blockSignals(True)
        self.addCheckBox.checked = self.scriptedEffect.integerParameter(ADD_PARAMETER) != 0
        self.addCheckBox.blockSignals(wasBlocked)
        hasPreview = self.cluster is not None
        self.applyButton.enabled = hasPreview
        self.cancelButton.enabled = hasPreview
        self.levelSlider.enabled = hasPreview

    def updateMRMLFromGUI(self, *args):
        self.scriptedEffect.setParameter(FWHM_PARAMETER, self.fwhmSlider.value)
        self.scriptedEffect.setParameter(ADD_PARAMETER, 1 if self.addCheckBox.checked else 0)

    # ---------------------------------------------------------------------------------- life cycle

    def deactivate(self):
        self.reset()

    def sourceVolumeNodeChanged(self):
        self.reset()

    def referenceGeometryChanged(self):
        self.reset()

    # --------------------------------------------------------------------------------- interaction

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        """Left click (no modifier key) in a slice view: compute the cluster there and preview it."""
        if eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        seedRAS = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self.previewAt(seedRAS)
        except Exception as error:
            logging.exception("PET Gradient failed")
            slicer.util.errorDisplay(_("PET Gradient: {error}").format(error=error))
        finally:
            qt.QApplication.restoreOverrideCursor()
        return True  # the click is consumed

    def previewAt(self, seedRAS):
        """Compute the gradient cluster at a world RAS point and preview the automatically chosen level.

        Raises the library's error (e.g. a click in background or outside the source volume).
        """
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        sourceImage = self.scriptedEffect.sourceVolumeImageData()
        if segmentationNode is None or sourceImage is None:
            raise ValueError(_("Select a segmentation and a source volume (the PET) first."))
        cluster = _editorLogic().gradient_cluster_in_editor(
            sourceImage, seedRAS, segmentation_node=segmentationNode,
            source_volume_node=parameterSetNode.GetSourceVolumeNode(),
            fwhm_mm=self.scriptedEffect.doubleParameter(FWHM_PARAMETER))
        self.cluster = cluster
        self.lastSeedRAS = [float(c) for c in seedRAS]
        wasBlocked = self.levelSlider.blockSignals(True)
        self.levelSlider.maximum = cluster.level_count - 1
        self.levelSlider.value = cluster.chosen
        self.levelSlider.blockSignals(wasBlocked)
        self.showLevel(cluster.chosen)
        self.updateGUIFromMRML()

    def showLevel(self, level):
        """Preview dendrogram ``level`` of the current cluster (a lookup: no recomputation)."""
        if self.cluster is None:
            return
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        self.previewNode = _editorLogic().show_preview(self.cluster.oriented_mask(level), segmentationNode,
                                                       self.previewNode, color=self._selectedSegmentColor())
        self.levelLabel.text = self.cluster.level_summary(level)

    def _selectedSegmentColor(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        segmentId = parameterSetNode.GetSelectedSegmentID()
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentationNode and segmentId else None
        return segment.GetColor() if segment else (1.0, 1.0, 0.0)

    def onLevelChanged(self, value):
        if self.cluster is None:
            return
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self.showLevel(round(value))
        finally:
            qt.QApplication.restoreOverrideCursor()

    def onFwhmChanged(self, value):
        self.updateMRMLFromGUI()
        if self.lastSeedRAS is None:
            return
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self.previewAt(self.lastSeedRAS)
        except Exception as error:
            logging.exception("PET Gradient failed")
            self.reset()
            slicer.util.errorDisplay(_("PET Gradient: {error}").format(error=error))
        finally:
            qt.QApplication.restoreOverrideCursor()

    def onApply(self):
        """Write the previewed level into the selected segment (undoable; masking and overwrite honoured)."""
        if self.cluster is None:
            return
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        level = round(self.levelSlider.value)
        modifier = self.cluster.oriented_mask(level)
        mode = (slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd
                if self.scriptedEffect.integerParameter(ADD_PARAMETER)
                else slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode)
        finally:
            qt.QApplication.restoreOverrideCursor()
        self.reset()

    def onCancel(self):
        self.reset()

    def reset(self):
        """Clear the preview and the current cluster."""
        self._removePreview()
        self.cluster = None
        self.lastSeedRAS = None
        if hasattr(self, "levelSlider"):
            wasBlocked = self.levelSlider.blockSignals(True)
            self.levelSlider.maximum = 0
            self.levelSlider.value = 0
            self.levelSlider.blockSignals(wasBlocked)
            self.levelLabel.text = _("Left-click inside the lesion in a slice view.")
            self.updateGUIFromMRML()

    def _removePreview(self):
        if self.previewNode is not None:
            _editorLogic().remove_preview(self.previewNode)
        self.previewNode = None
