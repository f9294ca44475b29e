"""PETDosePainting: compare GTVs across modalities and timepoints; owner of the shared library.

This module folder holds ``PETDosePaintingLib``, the headless library used by all modules of the
extension (GradientSegment and HypoxiaMapping declare a dependency on this module so that it is loaded,
and its folder on ``sys.path``, first). The module file itself stays thin: the node-level logic lives in
``PETDosePaintingLib.mrml.comparison_logic``, ``.longitudinal_logic``, ``.registration_workflow`` and
``.registration_logic`` (tested headless); see Docs/PETDosePainting.md.

Python console::

    import PETDosePainting
    logic = PETDosePainting.PETDosePaintingLogic()
    gtvs = [(ctSeg, "GTV"), (mrSeg, "GTV"), (petSeg, "GTV")]            # (segmentation node, segment name)
    cmp = logic.compare(gtvs, (pathSeg, "pathology"), names=["GTV_CT", "GTV_MRI", "GTV_PET"])
    cmp.volume_table_node, cmp.matrix_table_node, cmp.chart_node, cmp.matrix.matrix("dice")
    reg = logic.register(ct0Node, ct7Node, "rigid+bspline", applyTo=[ct7Node, seg7])   # fixed, moving
    course = logic.volumeCourse([(seg0, "GTV"), (seg7, "GTV"), (seg17, "GTV")], times=[0, 7, 17])
    change = logic.longitudinalChanges((seg7, "GTV"), (seg0, "GTV"), reg.transform_node)
    total, result, table = logic.accumulateDoses(ct0Node, [dose0, dose7], fractions=[7, 10])
"""

import logging
import os
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
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


class PETDosePainting(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PETDosePainting")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = []
        self.parent.contributors = ["PETDosePainting developers"]
        self.parent.helpText = _(
            "Compare GTV_CT, GTV_MRI and GTV_PET (volumes, overlap, distances, accuracy against a reference), "
            "register scans (rigid, B-spline, or a transform from another registration module), follow the GTV "
            "over treatment timepoints (volume course; persistent, newborn and resolved sub-volumes) and "
            "accumulate phase doses. Also loads the built-in digital head-and-neck patient."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Table-2 volume comparison after Daisne JF et al., Radiology 2004;233:93. Part of the PETDosePainting "
            "extension."
        )


# ---------------------------------------------------------------------------------------------- panel helpers
# Qt-side helpers shared by the panels of the extension (the other modules depend on this one).


def showSegmentInSelector(selector, segmentationNode, segmentName) -> None:
    """Show ``segmentName`` of ``segmentationNode`` in a qMRMLSegmentSelectorWidget (segments are stored by name)."""
    if selector.currentNode() != segmentationNode:
        selector.setCurrentNode(segmentationNode)
    if segmentationNode and segmentName:
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
        if segmentId and selector.currentSegmentID() != segmentId:
            selector.setCurrentSegmentID(segmentId)


def selectedSegment(selector):
    """``(segmentation node, segment name)`` chosen in a qMRMLSegmentSelectorWidget (``(node, "")`` if none)."""
    node = selector.currentNode()
    segmentId = selector.currentSegmentID()
    segment = node.GetSegmentation().GetSegment(segmentId) if node and segmentId else None
    return node, segment.GetName() if segment else ""


def runWithProgress(title, work, statusLabel=None):
    """Run ``work(progress)`` with a cancellable progress dialog; ``None`` if the user cancelled.

    ``progress(done, total, label)`` updates the dialog and returns ``False`` once Cancel was pressed; the
    library then raises ``OperationCancelled`` before its next step and writes nothing.
    """
    from PETDosePaintingLib.mrml.gtv_logic import OperationCancelled

    dialog = qt.QProgressDialog(title, _("Cancel"), 0, 1, slicer.util.mainWindow())
    dialog.setWindowTitle(title)
    dialog.setWindowModality(qt.Qt.WindowModal)
    dialog.minimumDuration = 0
    dialog.show()
    slicer.app.processEvents()

    def progress(done, total, label):
        dialog.maximum = total
        dialog.value = done
        dialog.labelText = _("{label}... ({step} of {total})").format(label=label[:1].upper() + label[1:],
                                                                     step=done + 1, total=total)
        slicer.app.processEvents()
        return not dialog.wasCanceled

    try:
        with slicer.util.WaitCursor():
            return work(progress)
    except OperationCancelled:
        if statusLabel is not None:
            statusLabel.text = _("{title}: cancelled; nothing was changed.").format(title=title)
        return None
    finally:
        dialog.close()


def showTable(tableNode) -> None:
    """Switch to a layout with a table view and show ``tableNode`` (does nothing without a main window)."""
    layoutManager = slicer.app.layoutManager()
    if tableNode is None or layoutManager is None:
        return
    layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
    applicationLogic = slicer.app.applicationLogic()
    applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
    applicationLogic.PropagateTableSelection()


def showChart(chartNode) -> None:
    """Show ``chartNode`` in a plot view of the layout (does nothing without a main window)."""
    if chartNode is not None and slicer.app.layoutManager() is not None:
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)


# ---------------------------------------------------------------------------------------------- parameter node

#: Segment selectors synchronised by hand: widget name -> (segmentation parameter, segment-name parameter).
SEGMENT_SELECTORS = {
    "referenceSegmentSelector": ("referenceSegmentation", "referenceSegment"),
    "previousSegmentSelector": ("previousSegmentation", "previousSegment"),
    "currentSegmentSelector": ("currentSegmentation", "currentSegment"),
}
#: Columns of the GTV list widget.
GTV_COLUMNS = ("Segmentation", "Segment", "Name", "Time")


@parameterNodeWrapper
class PETDosePaintingParameterNode:
    """Panel state, saved with the scene.

    The GTV list is four parallel lists (one entry per GTV: segmentation node, segment *name* since segment IDs
    are random, report name, time). Lengths in mm, volumes in mL, doses in Gy. ``toleranceMm`` < 0 means the
    library's default margin; ``alphaBetaGy`` 0 means physical dose (no EQD2); ``gridVolume`` none means each
    pair is compared on the finer of its two grids.
    """

    # GTVs (modalities, timepoints) and an optional reference
    gtvSegmentations: list[vtkMRMLSegmentationNode]
    gtvSegments: list[str]
    gtvNames: list[str]
    gtvTimes: list[float]
    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegment: str = ""
    # Comparison
    gridVolume: vtkMRMLScalarVolumeNode
    matrixMetric: Annotated[str, Choice(["dice", "jaccard", "hd_mm", "hd95_mm", "msd_mm", "centroid_shift_mm"])] = \
        "dice"
    volumeTable: vtkMRMLTableNode
    matrixTable: vtkMRMLTableNode
    pairTable: vtkMRMLTableNode
    comparisonChart: vtkMRMLPlotChartNode
    # Registration (fixed = reference scan, moving = the other)
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    registrationMode: Annotated[str, Choice(["rigid", "bspline", "rigid+bspline"])] = "rigid"
    gridSpacingMm: Annotated[float, WithinRange(5.0, 200.0)] = 25.0
    fixedMask: vtkMRMLLabelMapVolumeNode
    registrationTransform: vtkMRMLTransformNode
    applyToMoving: bool = True
    movingSegmentation: vtkMRMLSegmentationNode
    # Longitudinal
    courseTimeLabel: str = "fraction"
    courseTable: vtkMRMLTableNode
    courseChart: vtkMRMLPlotChartNode
    previousSegmentation: vtkMRMLSegmentationNode
    previousSegment: str = ""
    currentSegmentation: vtkMRMLSegmentationNode
    currentSegment: str = ""
    changeTransform: vtkMRMLTransformNode
    toleranceMm: Annotated[float, WithinRange(-1.0, 50.0)] = -1.0
    minIslandMl: Annotated[float, WithinRange(0.0, 100.0)] = 0.3
    propagation: Annotated[str, Choice(["distance", "nearest"])] = "distance"
    changeSegmentation: vtkMRMLSegmentationNode
    changeTable: vtkMRMLTableNode
    # Dose accumulation
    accumulationReference: vtkMRMLScalarVolumeNode
    doseVolumes: list[vtkMRMLScalarVolumeNode]
    doseFractions: str = ""
    alphaBetaGy: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    accumulatedDose: vtkMRMLScalarVolumeNode
    accumulationTable: vtkMRMLTableNode


class PETDosePaintingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: digital patient, GTV list, comparison, registration, longitudinal view, dose accumulation."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETDosePainting.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PETDosePaintingLogic()

        self.ui.gtvTableWidget.setColumnCount(len(GTV_COLUMNS))
        self.ui.gtvTableWidget.setHorizontalHeaderLabels([_(c) for c in GTV_COLUMNS])
        self.ui.gtvTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.gtvTableWidget.setSelectionBehavior(qt.QAbstractItemView.SelectRows)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for widgetName in SEGMENT_SELECTORS:
            selector = getattr(self.ui, widgetName)
            selector.connect("currentNodeChanged(vtkMRMLNode*)",
                             lambda _node, name=widgetName: self.onSegmentSelectorChanged(name))
            selector.connect("currentSegmentChanged(QString)",
                             lambda _segment, name=widgetName: self.onSegmentSelectorChanged(name))
        self.ui.gtvTableWidget.connect("itemChanged(QTableWidgetItem*)", self.onGtvItemChanged)
        self.ui.doseVolumesSelector.connect("checkedNodesChanged()", self.onDoseVolumesChanged)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)
        self.ui.addGtvButton.connect("clicked(bool)", self.onAddGtv)
        self.ui.removeGtvButton.connect("clicked(bool)", self.onRemoveGtv)
        self.ui.moveUpGtvButton.connect("clicked(bool)", lambda: self.onMoveGtv(-1))
        self.ui.moveDownGtvButton.connect("clicked(bool)", lambda: self.onMoveGtv(1))
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.applyTransformButton.connect("clicked(bool)", self.onApplyTransformButton)
        self.ui.jacobianButton.connect("clicked(bool)", self.onJacobianButton)
        self.ui.courseButton.connect("clicked(bool)", self.onCourseButton)
        self.ui.changesButton.connect("clicked(bool)", self.onChangesButton)
        self.ui.accumulateButton.connect("clicked(bool)", self.onAccumulateButton)
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

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
                showSegmentInSelector(getattr(self.ui, widgetName), getattr(p, nodeParameter),
                                      getattr(p, segmentParameter))
            self._showGtvTable(self._gtvEntries())
            wanted = {node.GetID() for node in p.doseVolumes if node is not None}
            selector = self.ui.doseVolumesSelector
            for index in range(selector.nodeCount()):
                node = selector.nodeFromIndex(index)
                state = qt.Qt.Checked if node.GetID() in wanted else qt.Qt.Unchecked
                if selector.checkState(node) != state:
                    selector.setCheckState(node, state)
            self._updateButtons(p)
        finally:
            self._updatingGUI = False

    def _updateButtons(self, p) -> None:
        entries = self._gtvEntries()
        hasReference = bool(p.referenceSegmentation and p.referenceSegment)
        self.ui.compareButton.enabled = len(entries) + int(hasReference) >= 2
        self.ui.courseButton.enabled = len(entries) >= 1
        self.ui.registerButton.enabled = bool(p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.applyTransformButton.enabled = bool(p.registrationTransform and (p.movingVolume or
                                                                                 p.movingSegmentation))
        self.ui.jacobianButton.enabled = bool(p.registrationTransform and p.fixedVolume)
        self.ui.changesButton.enabled = bool(p.previousSegmentation and p.previousSegment and p.currentSegmentation
                                             and p.currentSegment)
        self.ui.accumulateButton.enabled = bool(p.accumulationReference and any(p.doseVolumes))
        self.ui.gridSpacingSpinBox.enabled = p.registrationMode != "rigid"

    def onSegmentSelectorChanged(self, widgetName) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        nodeParameter, segmentParameter = SEGMENT_SELECTORS[widgetName]
        node, segment = selectedSegment(getattr(self.ui, widgetName))
        with slicer.util.NodeModify(self._parameterNode):
            setattr(self._parameterNode, nodeParameter, node)
            setattr(self._parameterNode, segmentParameter, segment)

    def onDoseVolumesChanged(self) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        self._parameterNode.doseVolumes = list(self.ui.doseVolumesSelector.checkedNodes())

    # ------------------------------------------------------------------ the GTV list

    def _gtvEntries(self):
        """The GTV list as ``[(segmentation node, segment name, name, time)]`` (entries of deleted nodes dropped)."""
        p = self._parameterNode
        columns = (list(p.gtvSegmentations), list(p.gtvSegments), list(p.gtvNames), list(p.gtvTimes))
        count = min(len(c) for c in columns)
        return [tuple(c[i] for c in columns) for i in range(count) if columns[0][i] is not None]

    def _setGtvEntries(self, entries) -> None:
        p = self._parameterNode
        with slicer.util.NodeModify(p):
            p.gtvSegmentations = [e[0] for e in entries]
            p.gtvSegments = [e[1] for e in entries]
            p.gtvNames = [e[2] for e in entries]
            p.gtvTimes = [float(e[3]) for e in entries]

    def _showGtvTable(self, entries) -> None:
        table = self.ui.gtvTableWidget
        wasBlocked = table.blockSignals(True)
        try:
            table.setRowCount(len(entries))
            for row, (node, segment, name, time) in enumerate(entries):
                for column, (text, editable) in enumerate(((node.GetName(), False), (segment, False),
                                                           (name, True), (f"{time:g}", True))):
                    item = qt.QTableWidgetItem(text)
                    if not editable:
                        item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                    table.setItem(row, column, item)
        finally:
            table.blockSignals(wasBlocked)

    def onAddGtv(self) -> None:
        node, segment = selectedSegment(self.ui.gtvSegmentSelector)
        if node is None or not segment:
            slicer.util.errorDisplay(_("Select a segment to add."))
            return
        entries = self._gtvEntries()
        name = self.ui.gtvNameLineEdit.text.strip() or segment
        entries.append((node, segment, name, float(self.ui.gtvTimeSpinBox.value)))
        self._setGtvEntries(entries)
        self.ui.gtvNameLineEdit.text = ""

    def onRemoveGtv(self) -> None:
        rows = {index.row() for index in self.ui.gtvTableWidget.selectionModel().selectedRows()}
        self._setGtvEntries([e for i, e in enumerate(self._gtvEntries()) if i not in rows])

    def onMoveGtv(self, step) -> None:
        row = self.ui.gtvTableWidget.currentRow()
        entries = self._gtvEntries()
        target = row + step
        if row < 0 or not 0 <= target < len(entries):
            return
        entries[row], entries[target] = entries[target], entries[row]
        self._setGtvEntries(entries)
        self.ui.gtvTableWidget.selectRow(target)

    def onGtvItemChanged(self, item) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        entries = self._gtvEntries()
        row, column = item.row(), item.column()
        if row >= len(entries):
            return
        node, segment, name, time = entries[row]
        if column == GTV_COLUMNS.index("Name"):
            name = item.text().strip() or segment
        elif column == GTV_COLUMNS.index("Time"):
            try:
                time = float(item.text())
            except ValueError:
                slicer.util.errorDisplay(_("The time must be a number (e.g. the fraction number)."))
        entries[row] = (node, segment, name, time)
        self._setGtvEntries(entries)

    def _gtvs(self):
        """``(segments, names, times)`` of the GTV list."""
        entries = self._gtvEntries()
        return [(e[0], e[1]) for e in entries], [e[2] for e in entries], [e[3] for e in entries]

    # ------------------------------------------------------------------ actions

    def onLoadDemoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not build the demo patient."), waitCursor=True):
            self.logic.loadDemo(quick=self.ui.quickDemoCheckBox.checked)

    def onCompareButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Comparison failed.")):
            segments, names, _times = self._gtvs()
            reference = (p.referenceSegmentation, p.referenceSegment) if p.referenceSegmentation and \
                p.referenceSegment else None
            out = runWithProgress(_("Comparison"), lambda progress: self.logic.compare(
                segments, reference, names=names, gridVolume=p.gridVolume, metric=p.matrixMetric,
                volumeTableNode=p.volumeTable, matrixTableNode=p.matrixTable, pairTableNode=p.pairTable,
                chartNode=p.comparisonChart, progress=progress), self.ui.comparisonResultLabel)
            if out is None:
                return
            with slicer.util.NodeModify(p):
                p.volumeTable = out.volume_table_node
                p.matrixTable = out.matrix_table_node
                p.pairTable = out.pair_table_node
                p.comparisonChart = out.chart_node
            lines = [_("{name}: {volume:.2f} mL").format(name=row.structure, volume=row.volume_ml)
                     + ("" if row.dice is None else _(", Dice vs {ref} {dice:.3f}").format(ref=row.reference,
                                                                                          dice=row.dice))
                     for row in out.volume_table.rows]
            self.ui.comparisonResultLabel.text = "\n".join(lines + out.notes)
            showTable(out.volume_table_node)
            showChart(out.chart_node)

    def onRegisterButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Registration failed.")):
            applyTo = [n for n in ((p.movingVolume if p.applyToMoving else None), p.movingSegmentation) if n]
            out = runWithProgress(_("Registration"), lambda progress: self.logic.register(
                p.fixedVolume, p.movingVolume, p.registrationMode, outputTransformNode=p.registrationTransform,
                applyTo=applyTo, fixedMaskNode=p.fixedMask, gridSpacingMm=p.gridSpacingMm, progress=progress),
                self.ui.registrationResultLabel)
            if out is None:
                return
            p.registrationTransform = out.transform_node
            result = out.result
            text = _("{node}: {mode}, metric {before:.4g} -> {after:.4g} in {seconds:.1f} s").format(
                node=out.transform_node.GetName(), mode=p.registrationMode, before=result.initial_metric_value,
                after=result.metric_value, seconds=sum(stage.elapsed_s for stage in out.stages))
            if out.jacobian is not None:
                text += "\n" + self._jacobianText(out.jacobian)
            if out.applied_to:
                text += "\n" + _("Placed under the transform: {nodes}").format(nodes=", ".join(out.applied_to))
            self.ui.registrationResultLabel.text = "\n".join([text, *out.notes])

    def onApplyTransformButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not place the nodes under the transform.")):
            nodes = [n for n in (p.movingVolume, p.movingSegmentation) if n]
            names = self.logic.placeUnderTransform(nodes, p.registrationTransform)
            self.ui.registrationResultLabel.text = _("Placed under {transform}: {nodes}").format(
                transform=p.registrationTransform.GetName(), nodes=", ".join(names))

    def onJacobianButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Jacobian QA failed."), waitCursor=True):
            qa = self.logic.jacobianQA(p.registrationTransform, p.fixedVolume, p.fixedMask)
            self.ui.registrationResultLabel.text = self._jacobianText(qa)

    @staticmethod
    def _jacobianText(qa) -> str:
        return _("Jacobian QA ({region}): {verdict}; J from {low:.3f} to {high:.3f}, folding {folding:.2%}. "
                 "{message}").format(region=qa.region, verdict=qa.verdict, low=qa.minimum, high=qa.maximum,
                                     folding=qa.folding_fraction, message=qa.message)

    def onCourseButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Volume course failed."), waitCursor=True):
            segments, names, times = self._gtvs()
            out = self.logic.volumeCourse(segments, names=names, times=times, timeLabel=p.courseTimeLabel or "time",
                                          tableNode=p.courseTable, chartNode=p.courseChart)
            with slicer.util.NodeModify(p):
                p.courseTable = out.table_node
                p.courseChart = out.chart_node
            self.ui.longitudinalResultLabel.text = "\n".join(
                _("{name} ({time:g}): {volume:.2f} mL").format(name=c.name, time=t, volume=c.volume_ml)
                + ("" if c.change_from_first_pct is None else
                   _(", {change:+.1f} % from the first").format(change=c.change_from_first_pct))
                for c, t in zip(out.course, out.times, strict=True))
            showTable(out.table_node)
            showChart(out.chart_node)

    def onChangesButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Longitudinal changes failed.")):
            out = runWithProgress(_("Longitudinal changes"), lambda progress: self.logic.longitudinalChanges(
                (p.currentSegmentation, p.currentSegment), (p.previousSegmentation, p.previousSegment),
                p.changeTransform, toleranceMm=None if p.toleranceMm < 0 else p.toleranceMm,
                minIslandMl=p.minIslandMl, propagation=p.propagation, segmentationNode=p.changeSegmentation,
                tableNode=p.changeTable, progress=progress), self.ui.longitudinalResultLabel)
            if out is None:
                return
            with slicer.util.NodeModify(p):
                p.changeSegmentation = out.segmentation_node
                p.changeTable = out.table_node
            c = out.change
            self.ui.longitudinalResultLabel.text = "\n".join([_(
                "{current} against {previous} (tolerance {tolerance:g} mm): persistent {persistent:.2f} mL, "
                "newborn {newborn:.2f} mL ({nb} islands), resolved {resolved:.2f} mL ({rs} islands)").format(
                current=c.current_name, previous=", ".join(c.previous_names), tolerance=c.tolerance_mm,
                persistent=c.persistent_ml, newborn=c.newborn_ml, nb=c.newborn_islands, resolved=c.resolved_ml,
                rs=c.resolved_islands), _("Segments: {names}").format(names=", ".join(out.segment_names.values())),
                *out.notes])
            showTable(out.table_node)

    def onAccumulateButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Dose accumulation failed."), waitCursor=True):
            doses = [node for node in p.doseVolumes if node is not None]
            fractions = self.logic.parseFractions(p.doseFractions, len(doses))
            total, result, table = self.logic.accumulateDoses(
                p.accumulationReference, doses, fractions=fractions, alphaBetaGy=p.alphaBetaGy or None,
                outputNode=p.accumulatedDose, tableNode=p.accumulationTable)
            with slicer.util.NodeModify(p):
                p.accumulatedDose = total
                p.accumulationTable = table
            summary = result.summary()
            self.ui.accumulationResultLabel.text = _(
                "{name}: {quantity} dose of {phases}; max {maximum:.2f} Gy, covered by every phase: "
                "{coverage:.1%} of the grid").format(name=total.GetName(), quantity=result.quantity,
                                                     phases=", ".join(n.GetName() for n in doses),
                                                     maximum=summary["max_gy"] or 0.0,
                                                     coverage=result.coverage_fraction)
            slicer.util.setSliceViewerLayers(foreground=total, foregroundOpacity=0.5)
            showTable(table)


class PETDosePaintingLogic(ScriptedLoadableModuleLogic):
    """Console and panel API over the library (node-level logic in ``PETDosePaintingLib.mrml``).

    GTVs are ``(segmentationNode, segmentName)`` pairs, taken in world coordinates on their own grids (under a
    parent transform they count where Slicer shows them). Registration convention: fixed = reference scan,
    moving = the other; a transform node's ``TransformFromParent`` maps fixed -> moving (ITK), so moving-side nodes
    placed under it are shown aligned. Lengths in mm, volumes in mL, doses in Gy. Long operations accept
    ``progress(done, total, label)``; returning ``False`` cancels (``OperationCancelled``, nothing written).
    See Docs/PETDosePainting.md.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PETDosePaintingParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------------------------- demo and volumes
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

    @staticmethod
    def segmentMask(segmentationNode, segmentName):
        """A segment as a SimpleITK mask (LPS) in world coordinates on its segmentation's own grid."""
        from PETDosePaintingLib.mrml.comparison_logic import segment_world_mask

        return segment_world_mask(segmentationNode, segmentName)

    # ------------------------------------------------------------------------------------- comparison
    def compare(self, gtvs, reference=None, *, names=None, referenceName=None, gridVolume=None, metric="dice",
                combinations=True, volumeTableNode=None, matrixTableNode=None, pairTableNode=None, chartNode=None,
                progress=None):
        """Compare GTV segments of several segmentation nodes (modalities, timepoints), optionally against a
        reference (pathology, truth).

        :param gtvs: ``[(segmentationNode, segmentName), ...]``.
        :param reference: ``(segmentationNode, segmentName)`` or ``None``.
        :param names, referenceName: report names (default: the segment names, or ``segmentation/segment``).
        :param gridVolume: a volume whose grid is used for the voxel-wise overlap of every pair (default: the
            finer of each pair's two grids). Volumes are always on each GTV's own grid.
        :param metric: matrix metric of the matrix table and chart: dice, jaccard, hd_mm, hd95_mm, msd_mm,
            centroid_shift_mm.
        :return: ``NodeComparison`` (``volume_table_node`` with the Table-2 columns, ``matrix_table_node``,
            ``pair_table_node``, ``chart_node``, ``volume_table``, ``matrix``, ``pairs``, ``masks``, ``notes``).
        """
        from PETDosePaintingLib.mrml.comparison_logic import compare_segment_nodes

        logging.info(f"PETDosePainting: comparing {len(gtvs)} GTVs")
        return compare_segment_nodes(gtvs, reference, names=names, reference_name=referenceName,
                                     grid=gridVolume if gridVolume is not None else "finest", metric=metric,
                                     combinations=combinations, volume_node=volumeTableNode,
                                     matrix_node=matrixTableNode, pair_node=pairTableNode, chart=chartNode,
                                     progress=progress)

    # ------------------------------------------------------------------------------------- registration
    def register(self, fixedNode, movingNode, mode="rigid", *, outputTransformNode=None, applyTo=(),
                 fixedMaskNode=None, initialTransformNode=None, gridSpacingMm=25.0, rigidOptions=None,
                 bsplineOptions=None, progress=None):
        """Register ``movingNode`` onto ``fixedNode``: ``"rigid"`` (Mattes MI), ``"bspline"`` or ``"rigid+bspline"``.

        :param outputTransformNode: transform node to fill (a new one if ``None``).
        :param applyTo: nodes to place under the result (e.g. the moving volume and its segmentation).
        :param gridSpacingMm: B-spline control-point spacing (mm; default 25).
        :param rigidOptions, bsplineOptions: further options of the library's ``register_rigid`` /
            ``register_bspline``.
        :return: ``NodeRegistration`` (``transform_node``, ``result``, ``stages``, ``jacobian``, ``applied_to``).
        """
        from PETDosePaintingLib.mrml.registration_workflow import register_nodes_stepwise

        bspline = {"grid_spacing_mm": float(gridSpacingMm), **(bsplineOptions or {})}
        return register_nodes_stepwise(fixedNode, movingNode, mode, output_node=outputTransformNode,
                                       fixed_mask_node=fixedMaskNode, initial_transform_node=initialTransformNode,
                                       apply_to=applyTo, rigid_options=rigidOptions, bspline_options=bspline,
                                       progress=progress)

    @staticmethod
    def placeUnderTransform(nodes, transformNode):
        """Place nodes under a transform node (from this module, General Registration, Elastix...)."""
        from PETDosePaintingLib.mrml.registration_workflow import place_under_transform

        return place_under_transform(nodes, transformNode)

    @staticmethod
    def jacobianQA(transformNode, referenceVolumeNode, maskNode=None):
        """Jacobian-determinant QA (folding, J outside [0.5, 2]) of any transform node on a volume's grid."""
        from PETDosePaintingLib.mrml.registration_logic import jacobian_qa_of_node

        return jacobian_qa_of_node(transformNode, referenceVolumeNode, maskNode)

    # ------------------------------------------------------------------------------------- longitudinal
    def volumeCourse(self, gtvs, *, names=None, times=None, timeLabel="timepoint", tableNode=None, chartNode=None):
        """Volume (mL) and change of one GTV per timepoint (earliest first) as a table and a line plot.

        :param times: x value per timepoint (fraction number, day; default 0, 1, 2...).
        :return: ``NodeVolumeCourse`` (``course``, ``times``, ``table_node``, ``chart_node``, ``series_node``).
        """
        from PETDosePaintingLib.mrml.longitudinal_logic import volume_course_node

        return volume_course_node(gtvs, names=names, times=times, time_label=timeLabel, table_node=tableNode,
                                  chart=chartNode)

    def longitudinalChanges(self, current, previous, transformNode=None, *, currentName=None, previousNames=None,
                            toleranceMm=None, minIslandMl=0.3, propagation="distance", segmentationNode=None,
                            prefix=None, tableNode=None, progress=None):
        """Persistent / newborn / resolved sub-volumes of the current GTV, written as segments, with a table row.

        :param current: ``(segmentationNode, segmentName)`` of the current timepoint (its grid is used).
        :param previous: one earlier ``(segmentationNode, segmentName)`` or a list of them.
        :param transformNode: previous -> current transform (registration with fixed = previous, moving =
            current), or ``None`` when the GTVs are already in one frame.
        :param toleranceMm: margin (mm; default 1.5 voxels); ``minIslandMl``: smallest kept island (mL).
        :return: ``NodeLongitudinalChange`` (``change``, ``segmentation_node``, ``segment_names``, ``table_node``).
        """
        from PETDosePaintingLib.mrml.longitudinal_logic import longitudinal_change_node

        return longitudinal_change_node(current, previous, transformNode, current_name=currentName,
                                        previous_names=previousNames, tolerance_mm=toleranceMm,
                                        min_island_ml=minIslandMl, propagation=propagation,
                                        segmentation_node=segmentationNode, prefix=prefix, table_node=tableNode,
                                        progress=progress)

    # ------------------------------------------------------------------------------------- accumulation
    @staticmethod
    def parseFractions(text, count):
        """Fraction counts typed in the panel (``"10, 15"``), one per phase dose; ``None`` for empty text."""
        from PETDosePaintingLib.mrml.comparison_logic import parse_fraction_counts

        return parse_fraction_counts(text, count)

    def accumulateDoses(self, referenceNode, doseNodes, *, fractions=None, alphaBetaGy=None, outputNode=None,
                        tableNode=None, samplingSpacingMm=None):
        """Sum phase doses (Gy) on the reference grid, each through its own transform hierarchy.

        A dose node under a transform (chain) is mapped through it (baseline -> phase, as Slicer's recipe
        nests them); with ``alphaBetaGy`` (and ``fractions`` per dose) the EQD2 is summed.

        :return: ``(outputNode, AccumulationResult, tableNode)``; the output is tagged as dose for SlicerRT.
        """
        from PETDosePaintingLib.mrml.comparison_logic import accumulation_table_node
        from PETDosePaintingLib.mrml.registration_logic import accumulate_dose_nodes

        total, result = accumulate_dose_nodes(referenceNode, doseNodes, fractions=fractions,
                                              alpha_beta_gy=alphaBetaGy, output_node=outputNode,
                                              sampling_spacing_mm=samplingSpacingMm)
        table = accumulation_table_node(result, tableNode, referenceNode.GetScene())
        return total, result, table


class PETDosePaintingTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: library path, comparison, longitudinal view, registration, accumulation, panel,
    and the demo scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_PETDosePainting_library_path, self.test_PETDosePainting_compare,
                     self.test_PETDosePainting_longitudinal, self.test_PETDosePainting_registration,
                     self.test_PETDosePainting_accumulation, self.test_PETDosePainting_widget,
                     self.test_PETDosePainting_demo):
            self.setUp()
            test()

    def _spheres(self, names_and_centres, radius=10.0):
        """One segmentation node per (name, centre LPS): a sphere segment called GTV on a 2 mm grid."""
        from PETDosePaintingLib.imaging.image import image_from_array, make_grid
        from PETDosePaintingLib.mrml.segmentations import new_segmentation_node, set_segment_from_mask
        from PETDosePaintingLib.phantom.shapes import sphere_fraction

        grid = make_grid((32, 32, 32), (2.0, 2.0, 2.0), origin=(-31.0, -31.0, -31.0))
        nodes, masks = [], []
        for name, centre in names_and_centres:
            mask = image_from_array(sphere_fraction(grid, centre, radius) >= 0.5, grid)
            node = new_segmentation_node(name, slicer.mrmlScene, reference=grid)
            set_segment_from_mask(node, mask, "GTV")
            nodes.append(node)
            masks.append(mask)
        return nodes, masks

    def test_PETDosePainting_library_path(self):
        import PETDosePaintingLib

        here = os.path.dirname(os.path.abspath(__file__))
        self.assertTrue(os.path.abspath(PETDosePaintingLib.__file__).startswith(here))

    def test_PETDosePainting_compare(self):
        """Three sphere GTVs: the Dice matrix equals the library's on the same masks; tables and chart exist."""
        from PETDosePaintingLib.comparison.metrics import compare_masks

        self.delayDisplay("Comparing GTVs of three segmentation nodes")
        nodes, masks = self._spheres([("CT", (0, 0, 0)), ("MR", (4, 0, 0)), ("PET", (0, 6, 0))])
        out = PETDosePaintingLogic().compare([(n, "GTV") for n in nodes], names=["GTV_CT", "GTV_MRI", "GTV_PET"])
        self.assertAlmostEqual(out.matrix.matrix("dice")[0, 1], compare_masks(masks[0], masks[1]).dice, places=9)
        self.assertEqual(out.matrix_table_node.GetTable().GetNumberOfColumns(), 4)
        self.assertEqual(out.chart_node.GetNumberOfPlotSeriesNodes(), 3)
        self.delayDisplay("Test passed")

    def test_PETDosePainting_longitudinal(self):
        """Three timepoints: the course table; a GTV moved 4 mm with a tolerance of 4 mm has nothing newborn."""
        self.delayDisplay("Longitudinal view")
        nodes, _masks = self._spheres([("baseline", (0, 0, 0)), ("fx7", (4, 0, 0)), ("fx17", (4, 0, 0))])
        logic = PETDosePaintingLogic()
        course = logic.volumeCourse([(n, "GTV") for n in nodes], times=[0, 7, 17], timeLabel="fraction")
        self.assertEqual(course.table_node.GetNumberOfRows(), 3)
        change = logic.longitudinalChanges((nodes[1], "GTV"), (nodes[0], "GTV"), toleranceMm=4.0, minIslandMl=0.0)
        self.assertEqual(change.change.newborn_ml, 0.0)
        self.assertEqual(change.segmentation_node.GetSegmentation().GetNumberOfSegments(), 3)
        self.delayDisplay("Test passed")

    def test_PETDosePainting_registration(self):
        """A sphere PET moved 4 mm: the rigid registration recovers the shift and places the moving volume."""
        import SimpleITK as sitk

        from PETDosePaintingLib.mrml.transforms import sitk_transform_from_node
        from PETDosePaintingLib.mrml.volumes import volume_node_from_image
        from PETDosePaintingLib.phantom.sphere_pair import sphere_pet_ct

        self.delayDisplay("Rigid registration of a shifted PET")
        pet = sphere_pet_ct().pet
        shifted = sitk.Resample(pet, pet, sitk.TranslationTransform(3, (-4.0, 0.0, 0.0)), sitk.sitkLinear, 0.0)
        fixed = volume_node_from_image(pet, "PET0", slicer.mrmlScene)
        moving = volume_node_from_image(shifted, "PET7", slicer.mrmlScene)
        out = PETDosePaintingLogic().register(fixed, moving, "rigid", applyTo=[moving],
                                               rigidOptions={"initialization": "none", "metric": "mean_squares"})
        shift = sitk_transform_from_node(out.transform_node).TransformPoint((0.0, 0.0, 0.0))
        self.assertAlmostEqual(shift[0], 4.0, delta=0.5)
        self.assertIs(moving.GetParentTransformNode(), out.transform_node)
        self.delayDisplay("Test passed")

    def test_PETDosePainting_accumulation(self):
        """Two constant phase doses of 20 and 10 Gy add up to 30 Gy; the table has one row per phase."""
        import numpy as np

        from PETDosePaintingLib.imaging.image import image_from_array
        from PETDosePaintingLib.mrml.volumes import volume_node_from_image

        self.delayDisplay("Dose accumulation")
        doses = [volume_node_from_image(image_from_array(np.full((8, 10, 12), value, np.float32), spacing=(3, 3, 3),
                                                         units="Gy"), name, slicer.mrmlScene)
                 for name, value in (("Dose0", 20.0), ("Dose7", 10.0))]
        total, _result, table = PETDosePaintingLogic().accumulateDoses(doses[0], doses)
        self.assertAlmostEqual(float(slicer.util.arrayFromVolume(total).mean()), 30.0, places=4)
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.delayDisplay("Test passed")

    def test_PETDosePainting_widget(self):
        """The panel shows the GTV list of the parameter node and enables its buttons."""
        self.delayDisplay("Panel")
        nodes, _masks = self._spheres([("CT", (0, 0, 0)), ("PET", (2, 0, 0))])
        widget = slicer.modules.petdosepainting.widgetRepresentation().self()
        widget.initializeParameterNode()
        widget._setGtvEntries([(nodes[0], "GTV", "GTV_CT", 0.0), (nodes[1], "GTV", "GTV_PET", 0.0)])
        self.assertEqual(widget.ui.gtvTableWidget.rowCount, 2)
        self.assertEqual(widget.ui.gtvTableWidget.item(1, 2).text(), "GTV_PET")
        self.assertTrue(widget.ui.compareButton.enabled)
        widget.ui.registrationModeComboBox.currentText = "bspline"
        self.assertEqual(widget._parameterNode.registrationMode, "bspline")
        widget._setGtvEntries([])
        self.delayDisplay("Test passed")

    def test_PETDosePainting_demo(self):
        self.delayDisplay("Running the quick demo")
        result = PETDosePaintingLogic().loadDemo(quick=True)
        self.assertTrue(os.path.isfile(result.files["scene"]))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("GTV"))
        self.delayDisplay("Test passed")
