"""GradientSegment: PET GTV segmentation (gradient method and the classical methods) in 3D Slicer.

Thin module file: metadata, the "PET Gradient" Segment Editor effect registration, parameter node, widget
and a Logic that calls the PETDosePainting library (``PETDosePaintingLib``, owned by the PETDosePainting
module, which this module depends on). Everything testable lives in ``PETDosePaintingLib.mrml.gtv_logic``
and ``PETDosePaintingLib.mrml.segment_editor_logic`` (tested headless).

Python console::

    import GradientSegment
    logic = GradientSegment.GradientSegmentLogic()
    out = logic.segment(petNode, seedRAS, method="gradient", fwhmMm=6.0)   # seedRAS: [R, A, S] or a point list
    out.segmentation_node, out.table_node, out.result.volume_ml, out.quantification.suv_peak
    comparison = logic.compareMethods(petNode, seedRAS, ["threshold", "fcm", "gradient"], rule="staple")
"""

import json
import logging
import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
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

#: The Segment Editor effect registered by this module (also PETDosePaintingLib.mrml.segment_editor_logic.EFFECT_NAME).
EFFECT_NAME = "PET Gradient"
EFFECT_SOURCE = os.path.join(os.path.dirname(__file__), "SegmentEditorPETGradientLib", "SegmentEditorEffect.py")


class GradientSegment(ScriptedLoadableModule):
    """Module metadata; registers the "PET Gradient" Segment Editor effect once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GradientSegment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = ["PETDosePainting"]
        self.parent.contributors = ["PETDosePainting developers"]
        self.parent.helpText = _(
            "Segment a PET-avid GTV from one click: the gradient method (edge-preserving denoising, "
            "deblurring with the scanner resolution, gradient, watershed, hierarchical cluster analysis) "
            "and the classical threshold, adaptive, iterative and clustering methods, side by side, with a "
            "consensus. Also adds the 'PET Gradient' effect to the Segment Editor."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Gradient method after Geets X, Lee JA, Bol A, Lonneux M, Grégoire V, EJNMMI 2007;34:1427."
        )
        slicer.app.connect("startupCompleted()", registerPETGradientEffect)


def registerPETGradientEffect():
    """Register the "PET Gradient" effect with the Segment Editor (once; returns True if it registered it)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

    factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
    if any(effect.name == EFFECT_NAME for effect in factory.registeredEffects()):
        return False
    instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(EFFECT_SOURCE.replace("\\", "/"))
    instance.self().register()
    return True


@parameterNodeWrapper
class GradientSegmentParameterNode:
    """Panel state, saved with the scene.

    ``methodParameters`` holds the text typed into each method's form, as JSON ``{method: {parameter: text}}``
    (empty text = the method's default). ``compareMethods`` is a comma-separated list (empty = the library's
    default consensus members). ``roiSegment`` is a segment *name* of ``roiSegmentation``.
    """

    petVolume: vtkMRMLScalarVolumeNode
    ctVolume: vtkMRMLScalarVolumeNode
    mrVolume: vtkMRMLScalarVolumeNode
    seedPoints: vtkMRMLMarkupsFiducialNode
    roiBox: vtkMRMLMarkupsROINode
    roiSegmentation: vtkMRMLSegmentationNode
    roiSegment: str = ""
    method: str = "gradient"
    methodParameters: str = "{}"
    fwhmMm: Annotated[float, WithinRange(1.0, 20.0)] = 6.0
    outputSegmentation: vtkMRMLSegmentationNode
    segmentName: str = ""
    resultsTable: vtkMRMLTableNode
    compareMethods: str = ""
    consensusRule: str = "majority"
    comparisonTable: vtkMRMLTableNode


class GradientSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. The method list and each method's parameter form are built from the library's registry."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._formMethod = None
        self._parameterEditors = {}

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GradientSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GradientSegmentLogic()

        # Widgets filled from the library (never hand-listed) and synchronised with the parameter node by hand.
        self._parameterFormLayout = qt.QFormLayout(self.ui.methodParametersFrame)
        self._parameterFormLayout.setContentsMargins(0, 0, 0, 0)
        for name in self.logic.methodNames():
            self.ui.methodComboBox.addItem(name)
        for name in self.logic.methodNames():
            if name == "consensus":
                continue
            item = qt.QListWidgetItem(name, self.ui.compareMethodsListWidget)
            item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            item.setCheckState(qt.Qt.Unchecked)
            item.setToolTip(self.logic.methodDescription(name))
        for rule in self.logic.consensusRules():
            self.ui.consensusRuleComboBox.addItem(rule)
        self.ui.seedPlaceWidget.buttonsVisible = True
        self.ui.seedPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.resetParametersButton.connect("clicked(bool)", self.onResetParameters)
        self.ui.compareMethodsListWidget.connect("itemChanged(QListWidgetItem*)", self.onCompareMethodsChanged)
        self.ui.consensusRuleComboBox.connect("currentIndexChanged(int)", self.onConsensusRuleChanged)
        self.ui.roiSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRoiSegmentChanged)
        self.ui.roiSegmentSelector.connect("currentSegmentChanged(QString)", self.onRoiSegmentChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
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
        if not self._parameterNode.petVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.petVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        self._formMethod = None
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
            index = self.ui.methodComboBox.findText(p.method)
            if index >= 0:
                self.ui.methodComboBox.currentIndex = index
            self.ui.methodDescriptionLabel.text = self.logic.methodDescription(p.method)
            if self._formMethod != p.method:
                self._buildParameterForm(p.method)
            self._writeParameterForm(self._parameterTexts().get(p.method, {}))
            checked = set(self._compareMethodList())
            for row in range(self.ui.compareMethodsListWidget.count):
                item = self.ui.compareMethodsListWidget.item(row)
                item.setCheckState(qt.Qt.Checked if item.text() in checked else qt.Qt.Unchecked)
            index = self.ui.consensusRuleComboBox.findText(p.consensusRule)
            if index >= 0:
                self.ui.consensusRuleComboBox.currentIndex = index
            if self.ui.roiSegmentSelector.currentNode() != p.roiSegmentation:
                self.ui.roiSegmentSelector.setCurrentNode(p.roiSegmentation)
            if p.roiSegmentation and p.roiSegment:
                segmentId = p.roiSegmentation.GetSegmentation().GetSegmentIdBySegmentName(p.roiSegment)
                if segmentId and self.ui.roiSegmentSelector.currentSegmentID() != segmentId:
                    self.ui.roiSegmentSelector.setCurrentSegmentID(segmentId)
            self.ui.seedPlaceWidget.setCurrentNode(p.seedPoints)
            ready = bool(p.petVolume and (p.seedPoints or p.roiBox or p.roiSegmentation))
            self.ui.applyButton.enabled = ready
            self.ui.compareButton.enabled = ready
            self.ui.applyButton.toolTip = _("Segment the GTV") if ready else _("Select a PET volume and a seed point")
        finally:
            self._updatingGUI = False

    def _parameterTexts(self):
        try:
            texts = json.loads(self._parameterNode.methodParameters or "{}")
        except ValueError:
            texts = {}
        return texts if isinstance(texts, dict) else {}

    def _compareMethodList(self):
        text = self._parameterNode.compareMethods
        if not text:
            return self.logic.defaultCompareMethods()
        return [name.strip() for name in text.split(",") if name.strip()]

    def _buildParameterForm(self, method) -> None:
        """One row per parameter of ``method`` (from the registry): a line edit, or a choice for booleans."""
        while self._parameterFormLayout.count() > 0:
            item = self._parameterFormLayout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._parameterEditors = {}
        self._formMethod = method
        try:
            specs = self.logic.parameterSpecs(method)
        except Exception:  # an unknown method name restored from an old scene
            logging.warning(f"GradientSegment: unknown method {method!r}")
            return
        for spec in specs:
            if spec.kind == "bool":
                editor = qt.QComboBox()
                editor.addItems([_("default ({value})").format(value=spec.default_text), "true", "false"])
                editor.connect("currentIndexChanged(int)", lambda _index, name=spec.name: self.onParameterEdited(name))
            else:
                editor = qt.QLineEdit()
                editor.placeholderText = spec.default_text
                editor.connect("editingFinished()", lambda name=spec.name: self.onParameterEdited(name))
            editor.toolTip = spec.description
            label = qt.QLabel(spec.name + ":")
            label.toolTip = spec.description
            self._parameterFormLayout.addRow(label, editor)
            self._parameterEditors[spec.name] = (spec, editor)

    def _writeParameterForm(self, texts) -> None:
        for name, (spec, editor) in self._parameterEditors.items():
            text = texts.get(name, "")
            if spec.kind == "bool":
                index = {"": 0, "true": 1, "false": 2}.get(str(text).strip().lower(), 0)
                wasBlocked = editor.blockSignals(True)
                editor.currentIndex = index
                editor.blockSignals(wasBlocked)
            elif editor.text != text:
                editor.text = text
            self._markParameterValidity(spec, editor, text)

    def _editorText(self, spec, editor):
        if spec.kind == "bool":
            return ["", "true", "false"][max(0, editor.currentIndex)]
        return editor.text.strip()

    def _markParameterValidity(self, spec, editor, text) -> None:
        try:
            self.logic.parseParameter(spec, text)
            editor.styleSheet = ""
            editor.toolTip = spec.description
        except ValueError as error:
            editor.styleSheet = "background-color: #ffd0d0"
            editor.toolTip = str(error)

    def onParameterEdited(self, name) -> None:
        if self._updatingGUI or self._parameterNode is None or name not in self._parameterEditors:
            return
        spec, editor = self._parameterEditors[name]
        text = self._editorText(spec, editor)
        self._markParameterValidity(spec, editor, text)
        texts = self._parameterTexts()
        methodTexts = dict(texts.get(self._formMethod, {}))
        if text:
            methodTexts[name] = text
        else:
            methodTexts.pop(name, None)
        texts[self._formMethod] = methodTexts
        self._parameterNode.methodParameters = json.dumps(texts, sort_keys=True)

    def onResetParameters(self) -> None:
        if self._parameterNode is None:
            return
        texts = self._parameterTexts()
        texts.pop(self._parameterNode.method, None)
        self._parameterNode.methodParameters = json.dumps(texts, sort_keys=True)

    def onMethodChanged(self, index) -> None:
        if self._updatingGUI or self._parameterNode is None or index < 0:
            return
        self._parameterNode.method = self.ui.methodComboBox.itemText(index)

    def onCompareMethodsChanged(self, item=None) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        names = []
        for row in range(self.ui.compareMethodsListWidget.count):
            listItem = self.ui.compareMethodsListWidget.item(row)
            if listItem.checkState() == qt.Qt.Checked:
                names.append(listItem.text())
        self._parameterNode.compareMethods = ",".join(names)

    def onConsensusRuleChanged(self, index) -> None:
        if self._updatingGUI or self._parameterNode is None or index < 0:
            return
        self._parameterNode.consensusRule = self.ui.consensusRuleComboBox.itemText(index)

    def onRoiSegmentChanged(self, *args) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        node = self.ui.roiSegmentSelector.currentNode()
        segmentId = self.ui.roiSegmentSelector.currentSegmentID()
        segment = node.GetSegmentation().GetSegment(segmentId) if node and segmentId else None
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.roiSegmentation = node
            self._parameterNode.roiSegment = segment.GetName() if segment else ""

    # ------------------------------------------------------------------------------------------- actions

    def _methodParameters(self, method):
        """Parsed form values of ``method`` (raises with the parameter's name on a bad entry)."""
        return self.logic.parameterValues(method, self._parameterTexts().get(method, {}))

    def _roi(self):
        p = self._parameterNode
        if p.roiBox and p.roiSegmentation and p.roiSegment:
            raise ValueError(_("Choose either an ROI box or an ROI segment, not both."))
        if p.roiBox:
            return p.roiBox
        if p.roiSegmentation and p.roiSegment:
            return (p.roiSegmentation, p.roiSegment)
        return None

    def _seed(self):
        p = self._parameterNode
        if p.seedPoints is None or p.seedPoints.GetNumberOfControlPoints() == 0:
            if self._roi() is None:
                raise ValueError(_("Place a seed point in the lesion (or give an ROI)."))
            return None
        return self.logic.seedFromMarkups(p.seedPoints)

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            p = self._parameterNode
            out = self.logic.segment(
                p.petVolume, self._seed(), method=p.method, segmentationNode=p.outputSegmentation,
                segmentName=p.segmentName or None, roi=self._roi(), ctNode=p.ctVolume, mrNode=p.mrVolume,
                fwhmMm=p.fwhmMm, tableNode=p.resultsTable, **self._methodParameters(p.method))
            with slicer.util.NodeModify(p):
                p.outputSegmentation = out.segmentation_node
                p.resultsTable = out.table_node
            self.logic.showTable(out.table_node)
            result = out.result
            threshold = "" if result.threshold is None else _(", threshold {value:.3g}").format(value=result.threshold)
            notes = "".join(f"\n{note}" for note in out.notes)
            self.ui.statusLabel.text = (f"{out.segment_name}: {result.volume_ml:.2f} mL, "
                                        f"SUVmax {out.quantification.suv_max:.3g}{threshold}{notes}")

    def onCompareButton(self) -> None:
        from PETDosePaintingLib.mrml.gtv_logic import OperationCancelled

        p = self._parameterNode
        methods = self._compareMethodList()
        dialog = qt.QProgressDialog(_("Comparing methods..."), _("Cancel"), 0, len(methods) + 1,
                                    slicer.util.mainWindow())
        dialog.setWindowTitle(_("Compare methods"))
        dialog.setWindowModality(qt.Qt.WindowModal)
        dialog.minimumDuration = 0
        dialog.show()

        def progress(done, total, label):
            dialog.maximum = total
            dialog.value = done
            dialog.labelText = _("Running {label} ({done} of {total})...").format(label=label, done=done + 1,
                                                                                  total=total)
            slicer.app.processEvents()
            return not dialog.wasCanceled

        try:
            with slicer.util.tryWithErrorDisplay(_("Method comparison failed.")):
                try:
                    comparison = self.logic.compareMethods(
                        p.petVolume, self._seed(), methods, rule=p.consensusRule,
                        segmentationNode=p.outputSegmentation, roi=self._roi(), ctNode=p.ctVolume,
                        mrNode=p.mrVolume, fwhmMm=p.fwhmMm,
                        methodParameters={m: self._methodParameters(m) for m in methods},
                        tableNode=p.comparisonTable, progress=progress)
                except OperationCancelled:
                    self.ui.statusLabel.text = _("Comparison cancelled; the scene was not changed.")
                    return
                with slicer.util.NodeModify(p):
                    p.outputSegmentation = comparison.segmentation_node
                    p.comparisonTable = comparison.table_node
                self.logic.showTable(comparison.table_node)
                failed = "".join(f"\n{name} failed: {message}" for name, message in comparison.failures.items())
                self.ui.statusLabel.text = _("{segment}: {volume:.2f} mL from {n} methods").format(
                    segment=comparison.consensus_segment, volume=comparison.consensus_quantification.mtv_ml,
                    n=len(comparison.results)) + failed
        finally:
            dialog.close()


class GradientSegmentLogic(ScriptedLoadableModuleLogic):
    """Console and panel API over the library (node-level logic in ``PETDosePaintingLib.mrml.gtv_logic``).

    Seeds are world RAS millimetres (``[R, A, S]``) or a markups point list (its first point). Method
    parameters use the library's names (``fraction=0.41``, ``roi_radius_mm=30``...; see
    ``parameterSpecs(method)`` and Docs/GradientSegment.md).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return GradientSegmentParameterNode(super().getParameterNode())

    # -------------------------------------------------------------------------------- the registry
    @staticmethod
    def methodNames():
        """Registered segmentation methods, in registration order."""
        from PETDosePaintingLib.segmentation.registry import method_names

        return method_names()

    @staticmethod
    def methodDescription(method):
        """One-line description of a method from the registry ("" for an unknown name)."""
        from PETDosePaintingLib.segmentation.registry import METHODS

        info = METHODS.get(method)
        return info.description if info else ""

    @staticmethod
    def parameterSpecs(method):
        """The parameters of ``method`` the panel's form offers (name, kind, default, description)."""
        from PETDosePaintingLib.mrml.gtv_logic import method_parameter_specs

        return method_parameter_specs(method)

    @staticmethod
    def parseParameter(spec, text):
        """Value of one form entry (``None`` for empty text); raises ``InputError`` on a bad entry."""
        from PETDosePaintingLib.mrml.gtv_logic import parse_parameter_text

        return parse_parameter_text(spec, text)

    @staticmethod
    def parameterValues(method, texts):
        """Parsed ``{parameter: value}`` of a method's form texts (empty entries dropped)."""
        from PETDosePaintingLib.mrml.gtv_logic import method_parameter_values

        return method_parameter_values(method, texts)

    @staticmethod
    def consensusRules():
        """Consensus rules: majority, mv2, mv3, staple."""
        from PETDosePaintingLib.segmentation.consensus import RULES

        return list(RULES)

    @staticmethod
    def defaultCompareMethods():
        """The methods compared by default (the library's consensus defaults that need no CT)."""
        from PETDosePaintingLib.segmentation.consensus import DEFAULT_METHODS
        from PETDosePaintingLib.segmentation.registry import METHODS

        return [m for m in DEFAULT_METHODS if m in METHODS and not METHODS[m].needs_ct]

    # ------------------------------------------------------------------------------------- inputs
    @staticmethod
    def seedFromMarkups(markupsNode, index=0):
        """World RAS position of point ``index`` of a point list."""
        from PETDosePaintingLib.mrml.gtv_logic import seed_ras_from_markups

        return seed_ras_from_markups(markupsNode, index)

    def _seedRAS(self, seed):
        if seed is not None and hasattr(seed, "IsA") and seed.IsA("vtkMRMLMarkupsNode"):
            return self.seedFromMarkups(seed)
        return None if seed is None else [float(c) for c in seed]

    # ------------------------------------------------------------------------------------- running
    def segment(self, petNode, seedRAS, method="gradient", *, segmentationNode=None, segmentName=None, roi=None,
                ctNode=None, mrNode=None, fwhmMm=None, tableNode=None, **parameters):
        """Segment the lesion under ``seedRAS`` with ``method`` into a segment by name, and quantify it.

        :param petNode: PET scalar volume node.
        :param seedRAS: the click, world RAS mm, or a markups point list (its first point); ``None`` with an ROI.
        :param method: a registry name (``logic.methodNames()``); default ``"gradient"``.
        :param segmentationNode: segmentation to write into (a new "GTV" node if ``None``); other segments are kept.
        :param segmentName: segment to create or replace (default ``GTV_<method>``).
        :param roi: optional search ROI: a markups ROI node, ``(segmentationNode, segmentName)``, or a labelmap
            node on the PET grid.
        :param ctNode: optional CT (HU) and ``mrNode`` optional MR, resampled onto the PET grid for the methods that
            use them.
        :param fwhmMm: scanner resolution (mm) for the methods that model it (gradient, iterative).
        :param tableNode: results table to add a row to (a new "GTV results" table if ``None``).
        :param parameters: the method's own parameters, library names (e.g. ``fraction=0.41``).
        :return: ``NodeSegmentation`` with ``segmentation_node``, ``segment_name``, ``segment_id``, ``result``
            (library ``SegmentationResult``: ``mask``, ``volume_ml``, ``threshold``, ``background``, ``details``),
            ``quantification`` (``suv_max``, ``suv_peak``, ``suv_mean``, ``mtv_ml``, ``tlg``, ...), ``table_node``
            and ``notes``; it unpacks as ``(segmentationNode, result)``.
        """
        from PETDosePaintingLib.mrml.gtv_logic import segment_and_quantify

        logging.info(f"GradientSegment: {method} with {parameters}")
        return segment_and_quantify(petNode, self._seedRAS(seedRAS), method, segmentation_node=segmentationNode,
                                    segment_name=segmentName, roi=roi, ct_node=ctNode, mr_node=mrNode,
                                    fwhm_mm=fwhmMm, table_node=tableNode, **parameters)

    def compareMethods(self, petNode, seedRAS, methods=None, *, rule="majority", k=None, segmentationNode=None,
                       prefix="GTV_", roi=None, ctNode=None, mrNode=None, fwhmMm=None, methodParameters=None,
                       tableNode=None, progress=None):
        """Run several methods on one seed, add their consensus segment and a comparison table.

        :param methods: registry names (default: ``defaultCompareMethods()``).
        :param rule: ``"majority"`` (k of N, default ceil(N/2)), ``"mv2"``, ``"mv3"`` or ``"staple"``;
            ``k`` for the majority rule.
        :param prefix: segments are named ``<prefix><method>`` and ``<prefix>consensus_<rule>``.
        :param methodParameters: ``{method: {parameter: value}}``.
        :param progress: ``progress(done, total, label)`` called before each method and the consensus; return
            ``False`` to cancel (raises ``OperationCancelled``; nothing is written then).
        :return: ``MethodComparison`` with ``segmentation_node``, ``segment_names``, ``consensus_segment``,
            ``results`` and ``quantifications`` per method, ``failures``, ``consensus`` (mask),
            ``consensus_details`` and ``table_node``.

        Other arguments as in :meth:`segment`.
        """
        from PETDosePaintingLib.mrml.gtv_logic import compare_methods_on_node

        return compare_methods_on_node(petNode, self._seedRAS(seedRAS), methods, rule=rule, k=k,
                                       segmentation_node=segmentationNode, prefix=prefix, roi=roi, ct_node=ctNode,
                                       mr_node=mrNode, fwhm_mm=fwhmMm, method_parameters=methodParameters,
                                       table_node=tableNode, progress=progress)

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


class GradientSegmentTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a synthetic sphere segmented by the panel logic and by the Segment Editor effect."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GradientSegment_sphere()
        self.setUp()
        self.test_GradientSegment_compare()
        self.setUp()
        self.test_GradientSegment_effect()
        self.setUp()
        self.test_GradientSegment_widget()

    def _sphere(self):
        from PETDosePaintingLib.mrml.volumes import lps_to_ras_point, volume_node_from_image
        from PETDosePaintingLib.phantom.sphere_pair import sphere_pet_ct

        pair = sphere_pet_ct()
        pet = volume_node_from_image(pair.pet, "PET", slicer.mrmlScene)
        return pair, pet, lps_to_ras_point(pair.tumour_centre_lps).tolist()

    def test_GradientSegment_sphere(self):
        """Gradient and threshold on a 20 mm sphere (6 mm PSF, 4 mm voxels): volumes within 15 % of 4/3 pi r^3."""
        self.delayDisplay("Segmenting a synthetic sphere with the gradient and threshold methods")
        pair, pet, seed = self._sphere()
        logic = GradientSegmentLogic()
        gradient = logic.segment(pet, seed, method="gradient", fwhmMm=6.0)
        threshold = logic.segment(pet, seed, method="threshold", segmentationNode=gradient.segmentation_node,
                                  tableNode=gradient.table_node, fraction=0.41)
        segmentation = gradient.segmentation_node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("GTV_gradient"))
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("GTV_threshold"))
        for out in (gradient, threshold):
            self.assertAlmostEqual(out.result.volume_ml / pair.tumour_volume_ml, 1.0, delta=0.15)
        self.assertEqual(gradient.table_node.GetNumberOfRows(), 2)
        self.delayDisplay("Test passed")

    def test_GradientSegment_compare(self):
        """Three methods plus their majority vote: a consensus segment and one table row per method."""
        self.delayDisplay("Comparing methods")
        pair, pet, seed = self._sphere()
        steps = []
        comparison = GradientSegmentLogic().compareMethods(
            pet, seed, ["threshold", "fcm", "gradient"], rule="majority",
            progress=lambda done, total, label: steps.append(label))
        self.assertEqual(steps, ["threshold", "fcm", "gradient", "consensus (majority)"])
        self.assertEqual(comparison.failures, {})
        self.assertEqual(comparison.table_node.GetNumberOfRows(), 4)
        self.assertAlmostEqual(comparison.consensus_quantification.mtv_ml / pair.tumour_volume_ml, 1.0, delta=0.15)
        self.delayDisplay("Test passed")

    def test_GradientSegment_effect(self):
        """The PET Gradient effect instantiates, previews at a seed and applies into the selected segment."""
        import numpy as np
        import SimpleITK as sitk

        from PETDosePaintingLib.mrml.segmentations import mask_from_segment
        from PETDosePaintingLib.segmentation.gradient import segment_gradient

        self.delayDisplay("PET Gradient effect")
        registerPETGradientEffect()
        pair, pet, seed = self._sphere()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(pet)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("GTV_effect")
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget = slicer.qMRMLSegmentEditorWidget()
        try:
            editorWidget.setMRMLScene(slicer.mrmlScene)
            editorWidget.setMRMLSegmentEditorNode(editorNode)
            editorWidget.setSegmentationNode(segmentationNode)
            editorWidget.setSourceVolumeNode(pet)
            editorWidget.setCurrentSegmentID(segmentId)
            editorWidget.show()
            editorWidget.setActiveEffectByName(EFFECT_NAME)
            effect = editorWidget.activeEffect()
            self.assertIsNotNone(effect, "the PET Gradient effect is not registered")
            effect.setParameter("FwhmMm", 6.0)
            effect.self().previewAt(seed)
            self.assertIsNotNone(effect.self().cluster)
            self.assertIsNotNone(effect.self().previewNode)
            effect.self().onApply()
            self.assertIsNone(effect.self().previewNode)
            mask = sitk.GetArrayFromImage(mask_from_segment(segmentationNode, "GTV_effect", pet)) > 0
            expected = sitk.GetArrayFromImage(segment_gradient(pair.pet, pair.tumour_centre_lps, fwhm_mm=6.0).mask) > 0
            self.assertTrue(np.array_equal(mask, expected))
            volume = mask.sum() * np.prod(pair.pet.GetSpacing()) / 1000.0
            self.assertAlmostEqual(volume / pair.tumour_volume_ml, 1.0, delta=0.15)
            editorWidget.setActiveEffect(None)
        finally:
            editorWidget.close()
            editorWidget.deleteLater()
            slicer.mrmlScene.RemoveNode(editorNode)
        self.delayDisplay("Test passed")

    def test_GradientSegment_widget(self):
        """The panel builds a parameter form for every registered method."""
        self.delayDisplay("Panel parameter forms")
        widget = slicer.modules.gradientsegment.widgetRepresentation().self()
        widget.initializeParameterNode()
        for name in GradientSegmentLogic.methodNames():
            widget._parameterNode.method = name
            self.assertEqual(widget._formMethod, name)
            self.assertEqual(set(widget._parameterEditors),
                             {spec.name for spec in GradientSegmentLogic.parameterSpecs(name)})
        widget._parameterNode.method = "gradient"
        self.delayDisplay("Test passed")
