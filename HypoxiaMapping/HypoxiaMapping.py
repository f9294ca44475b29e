"""HypoxiaMapping: hypoxia PET ratio maps, hypoxic volumes, dose-painting prescriptions, DICOM-RT export and plan
evaluation in 3D Slicer.

Thin module file: metadata, parameter node, widget and a Logic that calls the PETDosePainting library
(``PETDosePaintingLib``, owned by the PETDosePainting module, which this module depends on). Everything
testable lives in ``PETDosePaintingLib.mrml.hypoxia_logic`` (tested headless); see Docs/HypoxiaMapping.md.

Python console::

    import HypoxiaMapping
    logic = HypoxiaMapping.HypoxiaMappingLogic()
    ratio, ratioMap = logic.ratioMap(petNode, segmentation, "Muscle")
    hv = logic.hypoxicVolume(ratio, segmentation, "GTV", tracer="fmiso")
    rx = logic.prescribe(petNode, segmentation, "GTV", mode="levels", doseMin=70, doseMax=86)
    logic.exportDicomRT(rx.prescription_node, rx.level_segmentation, "/data/planningCT", "/data/rt_out")
    ev = logic.evaluatePlan(rx.prescription_node, planDoseNode, segmentation, "GTV")
    ev.qf, ev.q95, ev.q105, ev.qvh_table_node, ev.plot_chart_node
"""

import logging
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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
            "Hypoxia PET (FMISO, FAZA): tumour-to-muscle / tumour-to-blood ratio maps and hypoxic volumes; "
            "dose-painting prescriptions (by numbers, boost, nested levels) as dose volumes with level segments; "
            "export to DICOM RT Dose and RT Structure Set on the planning CT; evaluation of a planned dose against "
            "the prescription (QF, Q95, Q105, QVH)."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Dose painting by numbers after Vanderstraeten B et al., Radiother Oncol 2006;79:249; hypoxia "
            "thresholds after Lee N et al. (IJROBP 2016), Rasey JS et al. (IJROBP 1996), Bollineni VR et al. "
            "(Radiother Oncol 2014) and Souvatzoglou M et al. (IJROBP 2007). Part of the PETDosePainting extension."
        )


#: Segment selectors of the panel synchronised by hand: widget name -> (segmentation parameter, segment parameter).
SEGMENT_SELECTORS = {
    "targetSegmentSelector": ("targetSegmentation", "targetSegment"),
    "referenceSegmentSelector": ("referenceSegmentation", "referenceSegment"),
    "boostSegmentSelector": ("boostSegmentation", "boostSegment"),
    "envelopeSegmentSelector": ("envelopeSegmentation", "envelopeSegment"),
    "evaluationSegmentSelector": ("evaluationSegmentation", "evaluationSegment"),
    "planningTargetSegmentSelector": ("planningSegmentation", "planningTargetSegment"),
}
#: First item of the body selector: no External segment, the body is thresholded from the CT.
BODY_FROM_CT = "(from the CT)"


@parameterNodeWrapper
class HypoxiaMappingParameterNode:
    """Panel state, saved with the scene.

    Segments are stored as a segmentation node and a segment *name* (segment IDs are random). Numbers use the
    library's units (Gy, mm, mL); ``bloodValue``, ``hypoxiaThreshold`` and ``meanDose`` at 0 mean "not used"
    (segment reference, the tracer's default threshold, no mean-dose rescaling). Folders at their default
    (``.``) mean "not chosen".
    """

    # Inputs
    petVolume: vtkMRMLScalarVolumeNode
    targetSegmentation: vtkMRMLSegmentationNode
    targetSegment: str = ""
    # Hypoxia map
    tracer: Annotated[str, Choice(["fmiso", "faza"])] = "fmiso"
    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegment: str = ""
    referenceKind: Annotated[str, Choice(["muscle", "blood", "background"])] = "muscle"
    bloodValue: Annotated[float, WithinRange(0.0, 1.0e9)] = 0.0
    hypoxiaThreshold: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    hypoxicSegment: str = ""
    makeBoostContour: bool = False
    ratioVolume: vtkMRMLScalarVolumeNode
    hypoxiaTable: vtkMRMLTableNode
    # Prescription
    paintVolume: vtkMRMLScalarVolumeNode
    gridVolume: vtkMRMLScalarVolumeNode
    mode: Annotated[str, Choice(["dpbn", "boost", "levels"])] = "dpbn"
    doseMin: Annotated[float, WithinRange(0.0, 200.0)] = 70.0
    doseMax: Annotated[float, WithinRange(0.0, 200.0)] = 86.0
    mapping: Annotated[str, Choice(["linear", "sqrt", "quadratic", "sigmoid", "log"])] = "linear"
    dpbnMarginMm: Annotated[float, WithinRange(0.0, 20.0)] = 2.5
    iHighPercentile: Annotated[float, WithinRange(1.0, 100.0)] = 95.0
    iLowFraction: Annotated[float, WithinRange(0.0, 0.99)] = 0.25
    meanDose: Annotated[float, WithinRange(0.0, 200.0)] = 0.0
    nLevels: Annotated[int, WithinRange(2, 11)] = 5
    levelMethod: Annotated[str, Choice(["equal", "midpoint", "lloyd-max"])] = "equal"
    assignment: Annotated[str, Choice(["nearest", "floor"])] = "nearest"
    boostSegmentation: vtkMRMLSegmentationNode
    boostSegment: str = ""
    boostFraction: Annotated[float, WithinRange(0.01, 1.0)] = 0.5
    boostMarginMm: Annotated[float, WithinRange(0.0, 30.0)] = 0.0
    minIslandMl: Annotated[float, WithinRange(0.0, 10.0)] = 0.5
    envelopeSegmentation: vtkMRMLSegmentationNode
    envelopeSegment: str = ""
    prescriptionVolume: vtkMRMLScalarVolumeNode
    levelSegmentation: vtkMRMLSegmentationNode
    prescriptionTable: vtkMRMLTableNode
    # Export to DICOM-RT
    ctSeriesDirectory: pathlib.Path
    ctVolume: vtkMRMLScalarVolumeNode
    assumeSameFrame: bool = False
    exportDirectory: pathlib.Path
    # Plan evaluation
    planDoseVolume: vtkMRMLScalarVolumeNode
    evaluationSegmentation: vtkMRMLSegmentationNode
    evaluationSegment: str = ""
    evaluationTable: vtkMRMLTableNode
    qvhChart: vtkMRMLPlotChartNode
    # Inverse planning (pyRadPlan); defaults as the library's PlanningSettings (a test checks they agree)
    planningCtVolume: vtkMRMLScalarVolumeNode
    planningSegmentation: vtkMRMLSegmentationNode
    planningTargetSegment: str = ""
    planningMarginMm: Annotated[float, WithinRange(0.0, 30.0)] = 0.0
    planningOars: str = ""  # checked organ-at-risk segment names, comma-separated
    planningBodySegment: str = ""  # empty: the body from the CT
    planningUniformDoseGy: Annotated[float, WithinRange(0.0, 200.0)] = 70.0
    planningBeams: Annotated[int, WithinRange(1, 72)] = 7
    planningBixelMm: Annotated[float, WithinRange(1.0, 30.0)] = 5.0
    planningDoseGridMm: Annotated[float, WithinRange(1.0, 15.0)] = 4.0
    planningObjective: Annotated[str, Choice(["squared", "relative", "band"])] = "squared"
    planningParotidMeanGy: Annotated[float, WithinRange(0.0, 100.0)] = 26.0
    planningCordMaxGy: Annotated[float, WithinRange(0.0, 100.0)] = 45.0
    planningIterations: Annotated[int, WithinRange(10, 5000)] = 400
    planningTable: vtkMRMLTableNode
    paintedPlanDoseVolume: vtkMRMLScalarVolumeNode
    uniformPlanDoseVolume: vtkMRMLScalarVolumeNode
    planningDvhTable: vtkMRMLTableNode
    planningDvhChart: vtkMRMLPlotChartNode


def _chosenFolder(path):
    """A folder parameter as a string, or ``None`` while it is at its default (``.``) or empty."""
    text = str(path) if path is not None else ""
    return None if text.strip() in ("", ".") else text


class HypoxiaMappingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, hypoxia map, prescription, DICOM-RT export, plan evaluation."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._observedSegmentation = None  # the planning segmentation whose segment list the panel follows

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HypoxiaMapping.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HypoxiaMappingLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for widgetName in SEGMENT_SELECTORS:
            selector = getattr(self.ui, widgetName)
            selector.connect("currentNodeChanged(vtkMRMLNode*)",
                             lambda _node, name=widgetName: self.onSegmentSelectorChanged(name))
            selector.connect("currentSegmentChanged(QString)",
                             lambda _segment, name=widgetName: self.onSegmentSelectorChanged(name))
        self.ui.hypoxiaButton.connect("clicked(bool)", self.onHypoxiaButton)
        self.ui.prescribeButton.connect("clicked(bool)", self.onPrescribeButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.planButton.connect("clicked(bool)", self.onPlanButton)
        self.ui.planningOarList.connect("itemChanged(QListWidgetItem*)", self.onPlanningOarsChanged)
        self.ui.planningBodyComboBox.connect("currentIndexChanged(int)", self.onPlanningBodyChanged)
        self._planningAvailable, planningText = self.logic.planningStatus()
        self.ui.planningStatusLabel.text = planningText
        self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload the shared library too, then this module (developer Reload button)."""
        from PETDosePaintingLib.reloading import reload_library

        reload_library()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self.removeObservers()
        self._observedSegmentation = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self._followSegments(None)
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    # ------------------------------------------------------------------ parameter node <-> hand-made widgets

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            for widgetName, (nodeParameter, segmentParameter) in SEGMENT_SELECTORS.items():
                self._showSegment(getattr(self.ui, widgetName), getattr(p, nodeParameter),
                                  getattr(p, segmentParameter))
            self.ui.dpbnGroupBox.visible = p.mode in ("dpbn", "levels")
            self.ui.levelsGroupBox.visible = p.mode == "levels"
            self.ui.boostGroupBox.visible = p.mode == "boost"
            self.ui.contourGroupBox.visible = p.mode in ("boost", "levels")
            self.ui.thresholdDefaultLabel.text = self._thresholdText(p)
            self.ui.hypoxicSegmentLineEdit.placeholderText = f"HV_{p.tracer.upper()}"
            self._showPlanningSegments(p)
            self._updateButtons(p)
        finally:
            self._updatingGUI = False

    @staticmethod
    def _showSegment(selector, segmentationNode, segmentName) -> None:
        if selector.currentNode() != segmentationNode:
            selector.setCurrentNode(segmentationNode)
        if segmentationNode and segmentName:
            segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
            if segmentId and selector.currentSegmentID() != segmentId:
                selector.setCurrentSegmentID(segmentId)

    def onSegmentSelectorChanged(self, widgetName) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        selector = getattr(self.ui, widgetName)
        nodeParameter, segmentParameter = SEGMENT_SELECTORS[widgetName]
        node = selector.currentNode()
        segmentId = selector.currentSegmentID()
        segment = node.GetSegmentation().GetSegment(segmentId) if node and segmentId else None
        with slicer.util.NodeModify(self._parameterNode):
            setattr(self._parameterNode, nodeParameter, node)
            setattr(self._parameterNode, segmentParameter, segment.GetName() if segment else "")

    def _thresholdText(self, p) -> str:
        if p.hypoxiaThreshold > 0:
            return _("Hypoxic if ratio >= {value:g} (given).").format(value=p.hypoxiaThreshold)
        entry = self.logic.defaultThreshold(p.tracer, p.referenceKind)
        if entry is None:
            return _("No default threshold for {tracer} against a {kind} reference: give one.").format(
                tracer=p.tracer.upper(), kind=p.referenceKind)
        comparison = ">" if entry.strict else ">="
        return _("Default: {metric} {comparison} {value:g} ({source} {status}).").format(
            metric=entry.metric, comparison=comparison, value=entry.threshold, source=entry.source,
            status=entry.status)

    def _updateButtons(self, p) -> None:
        hasTarget = bool(p.targetSegmentation and p.targetSegment)
        hasReference = bool(p.referenceSegmentation and p.referenceSegment) or \
            (p.referenceKind == "blood" and p.bloodValue > 0)
        self.ui.hypoxiaButton.enabled = bool(p.petVolume and hasReference)
        self.ui.hypoxiaButton.toolTip = (
            _("Compute the ratio map, and the hypoxic volume inside the target segment if one is selected")
            if self.ui.hypoxiaButton.enabled else _("Select a PET and a reference segment (or a blood value)"))
        self.ui.prescribeButton.enabled = bool((p.paintVolume or p.petVolume) and hasTarget)
        self.ui.prescribeButton.toolTip = (_("Create the prescription volume and its level segments")
                                           if self.ui.prescribeButton.enabled
                                           else _("Select a PET (or an image to paint) and a target segment"))
        hasCT = bool(_chosenFolder(p.ctSeriesDirectory) or (p.ctVolume and self.logic.hasDicomFiles(p.ctVolume)))
        self.ui.exportButton.enabled = bool(p.prescriptionVolume and hasCT and _chosenFolder(p.exportDirectory))
        self.ui.exportButton.toolTip = (_("Write the RT Dose, its RT Plan and the RT Structure Set")
                                        if self.ui.exportButton.enabled else
                                        _("Create a prescription, choose the planning CT series (folder, or a CT "
                                          "volume loaded from the DICOM database) and an output folder"))
        self.ui.planButton.enabled = bool(self._planningAvailable and p.prescriptionVolume and p.planningCtVolume
                                          and p.planningSegmentation and p.planningTargetSegment)
        self.ui.planButton.toolTip = (
            _("Optimise an IMRT fluence for the prescription (and the uniform plan), add the doses, the comparison "
              "table and the DVH/QVH charts") if self.ui.planButton.enabled
            else _("Install pyRadPlan (see above)") if not self._planningAvailable
            else _("Create or select a prescription, select the planning CT and the target segment"))
        self.ui.evaluateButton.enabled = bool(p.prescriptionVolume and p.planDoseVolume)
        self.ui.evaluateButton.toolTip = (_("Compute QF, Q95, Q105 and the QVH") if self.ui.evaluateButton.enabled
                                          else _("Create or select a prescription and select a planned dose"))

    def _showPlanningSegments(self, p) -> None:
        """Fill the organ-at-risk list (every segment but the target, checked as ``planningOars``) and the body
        selector from the planning segmentation."""
        self._followSegments(p.planningSegmentation.GetSegmentation() if p.planningSegmentation else None)
        names = []
        if p.planningSegmentation:
            segmentation = p.planningSegmentation.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        checked = {n for n in p.planningOars.split(",") if n}
        oarList = self.ui.planningOarList
        wanted = [n for n in names if n != p.planningTargetSegment]
        shown = [oarList.item(i).text() for i in range(oarList.count)]
        oarList.blockSignals(True)
        try:
            if shown != wanted:
                oarList.clear()
                for name in wanted:
                    item = qt.QListWidgetItem(name)
                    item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
                    oarList.addItem(item)
            for i in range(oarList.count):
                item = oarList.item(i)
                item.setCheckState(qt.Qt.Checked if item.text() in checked else qt.Qt.Unchecked)
        finally:
            oarList.blockSignals(False)
        body = self.ui.planningBodyComboBox
        items = [BODY_FROM_CT, *wanted]
        body.blockSignals(True)
        try:
            if [body.itemText(i) for i in range(body.count)] != items:
                body.clear()
                body.addItems(items)
            body.currentIndex = items.index(p.planningBodySegment) if p.planningBodySegment in items else 0
        finally:
            body.blockSignals(False)

    def _followSegments(self, segmentation) -> None:
        """Refresh the organ-at-risk list when segments of the planning segmentation are added, removed or
        renamed (the parameter node does not change then)."""
        if segmentation is self._observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self.onPlanningSegmentsChanged)
        self._observedSegmentation = segmentation
        if segmentation is not None:
            for event in events:
                self.addObserver(segmentation, event, self.onPlanningSegmentsChanged)

    def onPlanningSegmentsChanged(self, caller=None, event=None) -> None:
        if self._parameterNode is not None and not self._updatingGUI:
            self.updateGUIFromParameterNode()

    def onPlanningOarsChanged(self, _item=None) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        oarList = self.ui.planningOarList
        self._parameterNode.planningOars = ",".join(
            oarList.item(i).text() for i in range(oarList.count) if oarList.item(i).checkState() == qt.Qt.Checked)

    def onPlanningBodyChanged(self, index) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        text = self.ui.planningBodyComboBox.itemText(index) if index > 0 else ""
        self._parameterNode.planningBodySegment = text

    # ------------------------------------------------------------------------------------------- actions

    def _runWithProgress(self, title, work):
        """Run ``work(progress)`` with a cancellable progress dialog; ``None`` if the user cancelled."""
        from PETDosePaintingLib.mrml.hypoxia_logic import OperationCancelled

        dialog = qt.QProgressDialog(title, _("Cancel"), 0, 1, slicer.util.mainWindow())
        dialog.setWindowTitle(title)
        dialog.setWindowModality(qt.Qt.WindowModal)
        dialog.minimumDuration = 0
        dialog.show()
        slicer.app.processEvents()

        def progress(done, total, label):
            dialog.maximum = total
            dialog.value = done
            if total >= 100:  # a fraction of the whole (planning)
                dialog.labelText = _("{label} ({percent:.0f} %)").format(label=label[:1].upper() + label[1:],
                                                                        percent=100.0 * done / total)
            else:
                dialog.labelText = _("{label}... ({step} of {total})").format(label=label.capitalize(),
                                                                             step=done + 1, total=total)
            slicer.app.processEvents()
            return not dialog.wasCanceled

        try:
            with slicer.util.WaitCursor():
                return work(progress)
        except OperationCancelled:
            self.ui.statusLabel.text = _("{title}: cancelled; nothing was changed.").format(title=title)
            return None
        finally:
            dialog.close()

    def onHypoxiaButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Hypoxia map failed."), waitCursor=True):
            p = self._parameterNode
            useBlood = p.referenceKind == "blood" and p.bloodValue > 0
            ratio, ratioMap = self.logic.ratioMap(
                p.petVolume, None if useBlood else p.referenceSegmentation, "" if useBlood else p.referenceSegment,
                p.referenceKind, p.ratioVolume, bloodValue=p.bloodValue if useBlood else None,
                targetSegmentation=p.targetSegmentation, targetSegment=p.targetSegment or None)
            p.ratioVolume = ratio
            text = _("Reference ({kind}, {source}): mean {mean:.4g}").format(
                kind=p.referenceKind, source=ratioMap.reference_source, mean=ratioMap.reference_mean)
            if p.targetSegmentation and p.targetSegment:
                name = p.hypoxicSegment or f"HV_{p.tracer.upper()}"
                out = self.logic.hypoxicVolume(
                    ratio, p.targetSegmentation, p.targetSegment, tracer=p.tracer, referenceKind=p.referenceKind,
                    threshold=p.hypoxiaThreshold or None, segmentName=name,
                    boostSegmentName=f"{name}_boost" if p.makeBoostContour else None, minIslandMl=p.minIslandMl,
                    tableNode=p.hypoxiaTable)
                p.hypoxiaTable = out.table_node
                m = out.metrics
                text += _("\n{segment}: HV {hv:.2f} mL, HF {hf:.3f} of {target:.2f} mL; TMRmax {tmax:.3f}, TMRpeak "
                          "{tpeak:.3f} (threshold {comparison} {threshold:g})").format(
                    segment=out.segment_name, hv=m.hv_ml, hf=m.hf, target=m.target_volume_ml, tmax=m.tmr_max,
                    tpeak=m.tmr_peak, comparison=m.comparison, threshold=m.threshold)
                text += "".join(f"\n{note}" for note in out.notes)
                self.logic.showTable(out.table_node)
            slicer.util.setSliceViewerLayers(background=p.petVolume, foreground=ratio, foregroundOpacity=0.5)
            self.ui.hypoxiaResultLabel.text = text

    def onPrescribeButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Prescription failed.")):
            image = p.paintVolume or p.petVolume
            out = self._runWithProgress(_("Prescription"), lambda progress: self.logic.prescribe(
                image, p.targetSegmentation, p.targetSegment, mode=p.mode, doseMin=p.doseMin, doseMax=p.doseMax,
                mapping=p.mapping, marginMm=p.boostMarginMm if p.mode == "boost" else p.dpbnMarginMm,
                iHighPercentile=p.iHighPercentile, iLowFraction=p.iLowFraction,
                meanDose=(p.meanDose or None) if p.mode != "boost" else None, nLevels=p.nLevels,
                levelMethod=p.levelMethod, assignment=p.assignment, minIslandMl=p.minIslandMl,
                boostFraction=p.boostFraction,
                boostVolume=(p.boostSegmentation, p.boostSegment) if p.mode == "boost" and p.boostSegment else None,
                envelope=(p.envelopeSegmentation, p.envelopeSegment) if p.envelopeSegment else None,
                gridNode=p.gridVolume, prescriptionNode=p.prescriptionVolume, levelSegmentation=p.levelSegmentation,
                tableNode=p.prescriptionTable, progress=progress))
            if out is None:
                return
            with slicer.util.NodeModify(p):
                p.prescriptionVolume = out.prescription_node
                p.levelSegmentation = out.level_segmentation
                p.prescriptionTable = out.table_node
            r = out.result
            text = _("{name}: {mode}, {low:g}-{high:g} Gy; target {target:.2f} mL, evaluation volume {evaluation:.2f} "
                     "mL; mean dose {mean:.2f} Gy\nLevel segments: {segments}").format(
                name=out.prescription_node.GetName(), mode=out.mode, low=r.dose_low_gy, high=r.dose_high_gy,
                target=r.target_volume_ml, evaluation=r.evaluation_volume_ml, mean=r.dose_mean_gy,
                segments=", ".join(out.level_segments))
            if out.levels is not None:
                text += _("\nLevels against the continuous map: QF {qf:.4f}, RMS error {rms:.2f} Gy").format(
                    qf=out.levels.evaluation.qf, rms=out.levels.rms_error_gy)
            text += "".join(f"\n{note}" for note in out.notes)
            self.ui.prescriptionResultLabel.text = text
            slicer.util.setSliceViewerLayers(foreground=out.prescription_node, foregroundOpacity=0.5)
            self.logic.showTable(out.table_node)

    def onExportButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("DICOM-RT export failed.")):
            folder = _chosenFolder(p.ctSeriesDirectory)
            useNode = folder is None
            out = self._runWithProgress(_("DICOM-RT export"), lambda progress: self.logic.exportDicomRT(
                p.prescriptionVolume, p.levelSegmentation, p.ctVolume if useNode else folder,
                _chosenFolder(p.exportDirectory), ctNode=p.ctVolume, assumeSameFrame=p.assumeSameFrame,
                progress=progress))
            if out is None:
                return
            written = [str(path) for path in (out.rtdose_path, out.rtplan_path, out.rtstruct_path) if path]
            self.ui.exportResultLabel.text = _("Wrote {files}\nStructures: {structures}\n{notes}").format(
                files="\n".join(written), structures=", ".join(out.structures) or _("none"),
                notes="\n".join(out.notes))

    def onPlanButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Inverse planning failed.")):
            oars = [n for n in p.planningOars.split(",") if n and n != p.planningTargetSegment]
            out = self._runWithProgress(_("Inverse planning"), lambda progress: self.logic.planPrescription(
                p.prescriptionVolume, p.planningCtVolume, p.planningSegmentation, p.planningTargetSegment, oars,
                bodySegment=p.planningBodySegment or None, targetMarginMm=p.planningMarginMm,
                uniformDose=p.planningUniformDoseGy or None, beams=p.planningBeams, bixelMm=p.planningBixelMm,
                doseGridMm=p.planningDoseGridMm, objective=p.planningObjective,
                parotidMeanGy=p.planningParotidMeanGy or None, cordMaxGy=p.planningCordMaxGy or None,
                iterations=p.planningIterations, paintedDoseNode=p.paintedPlanDoseVolume,
                uniformDoseNode=p.uniformPlanDoseVolume, tableNode=p.planningTable, dvhTableNode=p.planningDvhTable,
                dvhChartNode=p.planningDvhChart, qvhChartNode=p.qvhChart, progress=progress))
            if out is None:
                return
            with slicer.util.NodeModify(p):
                p.paintedPlanDoseVolume = out.painted_dose_node
                p.uniformPlanDoseVolume = out.uniform_dose_node
                p.planningTable = out.table_node
                p.planningDvhTable = out.dvh_table_node
                p.planningDvhChart = out.dvh_chart_node
                p.qvhChart = out.qvh_chart_node
                p.planDoseVolume = out.painted_dose_node  # ready for "Plan evaluation" below
            self.ui.planningResultLabel.text = "\n".join(self.logic.planningSummary(out))
            slicer.util.setSliceViewerLayers(background=p.planningCtVolume, foreground=out.painted_dose_node,
                                             foregroundOpacity=0.5)
            self.logic.showTable(out.table_node)
            self.logic.showChart(out.dvh_chart_node)

    def onEvaluateButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Plan evaluation failed.")):
            out = self._runWithProgress(_("Plan evaluation"), lambda progress: self.logic.evaluatePlan(
                p.prescriptionVolume, p.planDoseVolume, p.evaluationSegmentation, p.evaluationSegment or None,
                tableNode=p.evaluationTable, chartNode=p.qvhChart, progress=progress))
            if out is None:
                return
            with slicer.util.NodeModify(p):
                p.evaluationTable = out.table_node
                p.qvhChart = out.plot_chart_node
            q = out.evaluation.quality
            self.ui.evaluationResultLabel.text = _(
                "{plan}: QF {qf:.4f}, Q95 {q95:.3f}, Q105 {q105:.3f}, Q(0.95-1.05) {q95105:.3f} over {n} voxels "
                "({volume:.2f} mL)\nTCP planned {tcp:.3f} vs prescribed {tcpRx:.3f}{notes}").format(
                plan=p.planDoseVolume.GetName(), qf=q.qf, q95=q.q95, q105=q.q105, q95105=q.q95_105, n=q.n_voxels,
                volume=q.volume_ml, tcp=out.evaluation.tcp_planned.tcp, tcpRx=out.evaluation.tcp_prescribed.tcp,
                notes="".join(f"\n{note}" for note in out.notes))
            self.logic.showChart(out.plot_chart_node)


class HypoxiaMappingLogic(ScriptedLoadableModuleLogic):
    """Console and panel API over the library (node-level logic in ``PETDosePaintingLib.mrml.hypoxia_logic``).

    Segments are given as a segmentation node and a segment name. Doses in Gy, lengths in mm, volumes in mL.
    Long operations accept ``progress(done, total, label)``; returning ``False`` cancels (``OperationCancelled``,
    nothing written). See Docs/HypoxiaMapping.md.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return HypoxiaMappingParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------------------------- hypoxia
    @staticmethod
    def defaultThreshold(tracer, referenceKind):
        """The library's default threshold entry for a tracer and reference kind, or ``None``."""
        from PETDosePaintingLib.dosepainting.hypoxia import HYPOXIA_THRESHOLDS

        return HYPOXIA_THRESHOLDS.get((str(tracer).lower(), referenceKind))

    def ratioMap(self, petNode, referenceSegmentation, referenceSegment, referenceKind="muscle", outputNode=None, *,
                 bloodValue=None, targetSegmentation=None, targetSegment=None):
        """Tumour-to-reference ratio volume; returns ``(volumeNode, RatioMap)``.

        :param referenceKind: ``"muscle"`` (T/M), ``"blood"`` (T/B) or ``"background"`` (T/Bg).
        :param bloodValue: a venous blood-sample value in the PET's units instead of the reference segment
            (``referenceKind="blood"``).
        :param targetSegmentation, targetSegment: the tumour; a reference overlapping it is refused.
        """
        from PETDosePaintingLib.mrml.hypoxia_logic import ratio_map_node

        target = (targetSegmentation, targetSegment) if targetSegmentation is not None and targetSegment else None
        return ratio_map_node(petNode, referenceSegmentation, referenceSegment, referenceKind, outputNode,
                              blood_value=bloodValue, target=target)

    def hypoxicVolume(self, ratioNode, targetSegmentation, targetSegment, *, tracer="fmiso", referenceKind=None,
                      threshold=None, segmentationNode=None, segmentName=None, boostSegmentName=None,
                      minIslandMl=0.5, tableNode=None):
        """Hypoxic sub-volume of the target as a segment (default ``HV_<TRACER>`` in the target's segmentation),
        with HV, HF, TMRmax, TMRpeak in a table; returns ``NodeHypoxicVolume`` (``segmentation_node``,
        ``segment_name``, ``metrics``, ``boost_segment``, ``table_node``, ``notes``).

        :param threshold: ratio threshold (default: the tracer/reference table, e.g. FMISO T/M > 1.2).
        :param boostSegmentName: also write a boost contour (islands below ``minIslandMl`` dropped) into this segment.
        """
        from PETDosePaintingLib.mrml.hypoxia_logic import hypoxic_volume_node

        return hypoxic_volume_node(ratioNode, targetSegmentation, targetSegment, tracer=tracer,
                                   reference_kind=referenceKind, threshold=threshold,
                                   segmentation_node=segmentationNode, segment_name=segmentName,
                                   boost_segment_name=boostSegmentName, min_island_ml=minIslandMl,
                                   table_node=tableNode)

    # ------------------------------------------------------------------------------------- prescription
    def prescribe(self, petNode, targetSegmentation, targetSegment, *, mode="dpbn", doseMin=70.0, doseMax=86.0,
                  mapping="linear", marginMm=None, iLow=None, iHigh=None, iHighPercentile=95.0, iLowFraction=0.25,
                  meanDose=None, nLevels=5, levelMethod="equal", assignment="nearest", minIslandMl=0.5,
                  boostFraction=0.5, boostVolume=None, envelope=None, gridNode=None, prescriptionNode=None,
                  name=None, levelSegmentation=None, keepContinuous=False, tableNode=None, progress=None):
        """A dose-painting prescription volume (Gy, tagged as dose for SlicerRT) and its level segments.

        :param mode: ``"dpbn"`` (by numbers), ``"boost"`` or ``"levels"`` (as ``petdp prescribe --mode``).
        :param doseMin, doseMax: Gy; D_low/D_high (dpbn, levels) or base/boost dose (boost). Default 70/86 Gy.
        :param marginMm: dpbn/levels grey-level dilation (default 2.5 mm); boost margin (default 0 mm).
        :param boostVolume, envelope: ``(segmentationNode, segmentName)`` or ``None``.
        :param gridNode: dose grid (e.g. the planning CT); default the PET's grid.
        :return: ``NodePrescription`` (``prescription_node``, ``result``, ``levels``, ``level_segmentation``,
            ``level_segments``, ``continuous_node``, ``table_node``, ``notes``).
        """
        from PETDosePaintingLib.mrml.hypoxia_logic import prescribe_node

        logging.info(f"HypoxiaMapping: {mode} prescription {doseMin}-{doseMax} Gy")
        return prescribe_node(
            petNode, targetSegmentation, targetSegment, mode=mode, dose_min=doseMin, dose_max=doseMax,
            mapping=mapping, margin_mm=marginMm, i_low=iLow, i_high=iHigh, i_high_percentile=iHighPercentile,
            i_low_fraction=iLowFraction, mean_dose=meanDose, n_levels=nLevels, level_method=levelMethod,
            assignment=assignment, min_island_ml=minIslandMl, boost_fraction=boostFraction, boost_volume=boostVolume,
            envelope=envelope, grid_node=gridNode, prescription_node=prescriptionNode, name=name,
            level_segmentation=levelSegmentation, keep_continuous=keepContinuous, table_node=tableNode,
            progress=progress)

    # ------------------------------------------------------------------------------------- DICOM-RT
    @staticmethod
    def dicomFileForInstance():
        """``slicer.dicomDatabase.fileForInstance`` when a DICOM database is open, else ``None``."""
        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            return None
        return database.fileForInstance

    @staticmethod
    def hasDicomFiles(volumeNode):
        """True if the volume was loaded from DICOM (``DICOM.instanceUIDs``) and a DICOM database is open."""
        return bool(volumeNode and volumeNode.GetAttribute("DICOM.instanceUIDs")
                    and HypoxiaMappingLogic.dicomFileForInstance() is not None)

    def planningCTSeries(self, source):
        """The planning CT series (``DicomSeries``) from a DICOM folder or a CT volume loaded from DICOM."""
        from PETDosePaintingLib.mrml.hypoxia_logic import planning_ct_series

        return planning_ct_series(source, file_for_instance=self.dicomFileForInstance())

    def exportDicomRT(self, prescriptionNode, levelSegmentation, ct, outDir, *, segmentNames=None, ctNode=None,
                      assumeSameFrame=False, description=None, progress=None):
        """Write the prescription as RT Dose (with a minimal RT Plan) and the level segments as an RT Structure Set
        on the planning CT.

        :param ct: the planning CT: its DICOM folder, or the CT volume loaded from Slicer's DICOM database.
        :param ctNode: the planning CT volume in the scene, when ``ct`` is a folder (checks the frame).
        :param assumeSameFrame: declare the scene's coordinates to be the CT's frame of reference (needed only when
            the prescription is not on the CT grid and no CT volume from that series is given).
        :return: ``RtExport`` (``rtdose_path``, ``rtplan_path``, ``rtstruct_path``, ``structures``,
            ``frame_of_reference_uid``, ``frame_basis``, ``notes``).
        """
        from PETDosePaintingLib.mrml.hypoxia_logic import export_dicom_rt

        return export_dicom_rt(prescriptionNode, levelSegmentation, ct, outDir, segment_names_to_export=segmentNames,
                               ct_node=ctNode, assume_same_frame=assumeSameFrame,
                               file_for_instance=self.dicomFileForInstance(), description=description,
                               progress=progress)

    # ------------------------------------------------------------------------------------- evaluation
    def evaluatePlan(self, prescriptionNode, planDoseNode, targetSegmentation=None, targetSegment=None, *,
                     qStep=0.005, qvhTableNode=None, chartNode=None, tableNode=None, createQfMap=False,
                     progress=None):
        """QF, Q95, Q105, QVH (table and plot), TCP and EUD of a planned dose against the prescription.

        :return: ``NodePlanEvaluation`` (``qf``, ``q95``, ``q105``, ``evaluation``, ``qvh_table_node``,
            ``plot_series_node``, ``plot_chart_node``, ``table_node``, ``qf_map_node``, ``notes``).
        """
        from PETDosePaintingLib.mrml.hypoxia_logic import evaluate_plan_node

        target = (targetSegmentation, targetSegment) if targetSegmentation is not None and targetSegment else None
        return evaluate_plan_node(prescriptionNode, planDoseNode, target, q_step=qStep, qvh_table_node=qvhTableNode,
                                  plot_chart_node=chartNode, table_node=tableNode, create_qf_map=createQfMap,
                                  progress=progress)

    # ------------------------------------------------------------------------------------- inverse planning
    @staticmethod
    def planningStatus(importEngine=False):
        """``(available, sentence)``: is the planning engine (pyRadPlan, the ``[planning]`` extra) installed here?
        Without ``importEngine`` only its presence is checked (importing it takes seconds)."""
        from PETDosePaintingLib.mrml.planning_logic import planning_status

        return planning_status(import_engine=importEngine)

    def planPrescription(self, prescriptionNode, ctNode, segmentationNode, targetSegment, oarSegments=(), *,
                         bodySegment=None, targetMarginMm=0.0, uniformDose=70.0, beams=7, gantryAngles=None,
                         bixelMm=5.0, doseGridMm=4.0, objective="squared", parotidMeanGy=26.0, cordMaxGy=45.0,
                         iterations=400, paintedDoseNode=None, uniformDoseNode=None, tableNode=None,
                         dvhTableNode=None, dvhChartNode=None, qvhChartNode=None, progress=None):
        """Is the prescription deliverable? IMRT inverse planning with pyRadPlan (and a uniform plan to compare).

        :param ctNode: planning CT (HU); every result is on its grid.
        :param targetSegment: the PTV (or the GTV with ``targetMarginMm``) in ``segmentationNode``.
        :param oarSegments: organ-at-risk segment names; parotids get ``parotidMeanGy`` (mean), the cord
            ``cordMaxGy`` (max); ``None`` switches a limit off.
        :param uniformDose: Gy of the uniform comparison plan (``None``: the map only).
        :return: ``NodePlan`` (``result``, ``dose_nodes``, ``painted_dose_node``, ``uniform_dose_node``,
            ``table_node``, ``dvh_table_node``, ``dvh_chart_node``, ``qvh_table_nodes``, ``qvh_chart_node``,
            ``notes``). See Docs/HypoxiaMapping.md and ``PETDosePaintingLib.dosepainting.planning``.
        """
        from PETDosePaintingLib.dosepainting.planning import PlanningSettings
        from PETDosePaintingLib.mrml.planning_logic import plan_prescription_node

        settings = PlanningSettings(
            gantry_angles_deg=tuple(gantryAngles) if gantryAngles else None, n_beams=int(beams),
            bixel_width_mm=float(bixelMm), dose_grid_mm=float(doseGridMm), objective=objective,
            parotid_mean_gy=parotidMeanGy, cord_max_gy=cordMaxGy, max_iterations=int(iterations))
        logging.info(f"HypoxiaMapping: inverse planning of {prescriptionNode.GetName()} ({settings.n_beams} beams)")
        return plan_prescription_node(
            prescriptionNode, ctNode, segmentationNode, targetSegment, list(oarSegments), body_segment=bodySegment,
            target_margin_mm=float(targetMarginMm), uniform_dose_gy=uniformDose, settings=settings,
            dose_nodes={"painted": paintedDoseNode, "uniform": uniformDoseNode}, table_node=tableNode,
            dvh_table_node=dvhTableNode, dvh_chart_node=dvhChartNode, qvh_chart_node=qvhChartNode,
            progress=progress)

    @staticmethod
    def planningSummary(nodePlan):
        """Lines for the panel: QF, QVH, EUD/TCP and limits of each plan, then the notes."""
        from PETDosePaintingLib.dosepainting.planning import plan_summary_lines

        return [*plan_summary_lines(nodePlan.result), *nodePlan.notes]

    # ------------------------------------------------------------------------------------- display
    @staticmethod
    def showTable(tableNode):
        """Switch to a layout with a table view and show ``tableNode`` (does nothing without a main window)."""
        layoutManager = slicer.app.layoutManager()
        if tableNode is None or layoutManager is None:
            return
        layoutWithTable = slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout)
        layoutManager.setLayout(layoutWithTable)
        applicationLogic = slicer.app.applicationLogic()
        applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        applicationLogic.PropagateTableSelection()

    @staticmethod
    def showChart(chartNode):
        """Show ``chartNode`` in a plot view of the layout (does nothing without a main window)."""
        if chartNode is None or slicer.app.layoutManager() is None:
            return
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)


class HypoxiaMappingTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer on a synthetic FMISO PET: hypoxia map, prescriptions, export, plan evaluation, panel."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_HypoxiaMapping_uniform_ratio()
        self.setUp()
        self.test_HypoxiaMapping_workflow()
        self.setUp()
        self.test_HypoxiaMapping_widget()

    def _phantom(self):
        """FMISO phantom: 1.0 SUV muscle/background, a 18 mm GTV at 1.1 SUV, a 9 mm hypoxic core at 1.3-2.5 SUV."""
        import numpy as np

        from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
        from PETDosePaintingLib.mrml.segmentations import new_segmentation_node, set_segment_from_mask
        from PETDosePaintingLib.mrml.volumes import volume_node_from_image

        grid = make_grid((25, 23, 19), (3.0, 3.0, 3.0), origin=(-36.0, -33.0, -27.0))
        k, j, i = np.indices((19, 23, 25))
        x, y, z = -36.0 + 3.0 * i, -33.0 + 3.0 * j, -27.0 + 3.0 * k
        gtv = x**2 + y**2 + z**2 <= 18.0**2 + 1e-6
        coreDistance = np.sqrt((x - 3.0) ** 2 + (y + 3.0) ** 2 + z**2)
        core = gtv & (coreDistance <= 9.0 + 1e-6)
        values = np.ones(gtv.shape)
        values[gtv] = 1.1
        values[core] = 1.3 + 1.2 * (1.0 - coreDistance[core] / 9.0)
        muscle = np.zeros(gtv.shape, bool)
        muscle[2:6, 2:6, 2:8] = True
        pet = image_from_array(values.astype(np.float32), grid, units=Units.SUV_BW)
        petNode = volume_node_from_image(pet, "FMISO", slicer.mrmlScene)
        segmentation = new_segmentation_node("Structures", slicer.mrmlScene, reference=petNode)
        set_segment_from_mask(segmentation, image_from_array(gtv, pet), "GTV")
        set_segment_from_mask(segmentation, image_from_array(muscle, pet), "Muscle")
        return petNode, segmentation, gtv, core, values

    def test_HypoxiaMapping_uniform_ratio(self):
        """A uniform PET over a muscle segment gives a ratio of 1."""
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

    def test_HypoxiaMapping_workflow(self):
        """Ratio map, hypoxic volume, levels and boost prescriptions, DICOM-RT export and plan evaluation."""
        import itertools
        import os
        import tempfile

        import numpy as np
        import SimpleITK as sitk

        from PETDosePaintingLib.imaging.dicom_export import DicomIdentity, write_ct_series
        from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
        from PETDosePaintingLib.imaging.rtdose import read_rtdose
        from PETDosePaintingLib.imaging.rtstruct import read_rtstruct
        from PETDosePaintingLib.mrml.segmentations import mask_from_segment
        from PETDosePaintingLib.mrml.volumes import volume_node_from_image

        self.delayDisplay("Hypoxia map")
        logic = HypoxiaMappingLogic()
        petNode, segmentation, gtv, core, _values = self._phantom()
        ratio, _ratioMap = logic.ratioMap(petNode, segmentation, "Muscle", targetSegmentation=segmentation,
                                          targetSegment="GTV")
        hv = logic.hypoxicVolume(ratio, segmentation, "GTV", tracer="fmiso")
        hvMask = sitk.GetArrayFromImage(mask_from_segment(segmentation, "HV_FMISO", petNode)) > 0
        self.assertTrue(np.array_equal(hvMask, core))
        self.assertAlmostEqual(hv.metrics.hv_ml, core.sum() * 0.027, places=6)

        self.delayDisplay("Prescriptions")
        levels = logic.prescribe(petNode, segmentation, "GTV", mode="levels", marginMm=0.0, minIslandMl=0.0)
        self.assertEqual(levels.prescription_node.GetAttribute("DicomRtImport.DoseVolume"), "1")
        self.assertEqual(levels.level_segments, ["PTV_DP_7000", "PTV_DP_7400", "PTV_DP_7800", "PTV_DP_8200",
                                                 "PTV_DP_8600"])
        rois = [sitk.GetArrayFromImage(mask_from_segment(levels.level_segmentation, name, petNode)) > 0
                for name in levels.level_segments]
        for lower, upper in itertools.pairwise(rois):
            self.assertTrue(np.all(upper <= lower))
        boost = logic.prescribe(petNode, segmentation, "GTV", mode="boost", doseMin=70.0, doseMax=77.0,
                                boostVolume=(segmentation, "HV_FMISO"))
        dose = slicer.util.arrayFromVolume(boost.prescription_node)
        self.assertTrue(np.all(dose[core] == 77.0) and np.all(dose[gtv & ~core] == 70.0))

        self.delayDisplay("Plan evaluation")
        plan = volume_node_from_image(image_from_array(slicer.util.arrayFromVolume(levels.prescription_node).copy(),
                                                       spacing=(3.0, 3.0, 3.0), origin=(-36.0, -33.0, -27.0),
                                                       units=Units.GY), "Plan", slicer.mrmlScene)
        evaluation = logic.evaluatePlan(levels.prescription_node, plan)
        self.assertEqual(evaluation.qf, 0.0)
        self.assertEqual(evaluation.q95, 1.0)
        self.assertEqual(evaluation.plot_series_node.GetYColumnName(), "volume_fraction")

        self.delayDisplay("DICOM-RT export")
        with tempfile.TemporaryDirectory() as folder:
            grid = make_grid((30, 28, 20), (2.0, 2.0, 3.0), origin=(-29.0, -27.0, -28.5))
            ct = image_from_array(np.zeros((20, 28, 30), np.int16), grid, units=Units.HU)
            write_ct_series(ct, os.path.join(folder, "ct"), DicomIdentity.synthetic("selftest"))
            out = logic.exportDicomRT(levels.prescription_node, levels.level_segmentation, os.path.join(folder, "ct"),
                                      os.path.join(folder, "rt"), assumeSameFrame=True)
            written = read_rtdose(out.rtdose_path)
            self.assertTrue(np.allclose(sitk.GetArrayFromImage(written),
                                        slicer.util.arrayFromVolume(levels.prescription_node), atol=1e-6))
            self.assertEqual(set(read_rtstruct(out.rtstruct_path, logic.planningCTSeries(os.path.join(folder, "ct")))),
                             set(levels.level_segments))
        self.delayDisplay("Test passed")

    def test_HypoxiaMapping_widget(self):
        """The panel binds its widgets to the parameter node and shows the mode's options only."""
        self.delayDisplay("Panel")
        petNode, segmentation, _gtv, _core, _values = self._phantom()
        widget = slicer.modules.hypoxiamapping.widgetRepresentation().self()
        widget.initializeParameterNode()
        p = widget._parameterNode
        p.petVolume = petNode
        with slicer.util.NodeModify(p):
            p.targetSegmentation = segmentation
            p.targetSegment = "GTV"
        self.assertEqual(widget.ui.targetSegmentSelector.currentNode(), segmentation)
        self.assertEqual(widget.ui.targetSegmentSelector.currentSegmentID(),
                         segmentation.GetSegmentation().GetSegmentIdBySegmentName("GTV"))
        for mode in ("dpbn", "boost", "levels"):
            p.mode = mode
            self.assertEqual(widget.ui.modeComboBox.currentText, mode)
            self.assertEqual(not widget.ui.boostGroupBox.isHidden(), mode == "boost")
            self.assertEqual(not widget.ui.levelsGroupBox.isHidden(), mode == "levels")
        self.assertTrue(widget.ui.prescribeButton.enabled)
        widget.ui.doseMaxSpinBox.value = 84.0
        self.assertEqual(p.doseMax, 84.0)
        p.mode = "dpbn"

        self.delayDisplay("Planning section")
        self.assertEqual(widget.ui.planningBeamsSpinBox.value, p.planningBeams)
        with slicer.util.NodeModify(p):
            p.planningSegmentation = segmentation
            p.planningTargetSegment = "GTV"
        oarList = widget.ui.planningOarList
        self.assertEqual([oarList.item(i).text() for i in range(oarList.count)], ["Muscle"])  # the target is not listed
        oarList.item(0).setCheckState(qt.Qt.Checked)
        self.assertEqual(p.planningOars, "Muscle")
        segmentation.GetSegmentation().AddEmptySegment("SpinalCord", "SpinalCord")
        self.assertEqual([oarList.item(i).text() for i in range(oarList.count)], ["Muscle", "SpinalCord"])
        self.assertEqual(p.planningOars, "Muscle")  # the new segment is listed, unchecked
        widget.ui.planningBodyComboBox.currentIndex = 1
        self.assertEqual(p.planningBodySegment, "Muscle")
        widget.ui.planningBodyComboBox.currentIndex = 0
        self.assertEqual(p.planningBodySegment, "")
        self.assertFalse(widget.ui.planButton.enabled)  # no prescription and no planning CT yet
        self.delayDisplay("Test passed")
