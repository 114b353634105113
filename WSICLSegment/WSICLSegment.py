"""WSICLSegment: weakly supervised in-context segmentation in 3D Slicer.

Module, thin widget, logic facade and self-test. The work lives in ``WSICLSegmentLib``
(MRML side) and ``wsicl`` (engine); both are imported only once PyTorch is available, so
the module loads, and offers to install it, on a Slicer without PyTorch.
"""
import importlib.util
import logging
from typing import Callable, List, Optional, Sequence

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

SETTINGS_PREFIX = "WSICLSegment/"
MODELS = [("Bundled box model (CPU friendly)", "box"),
          ("Bundled point model (CPU friendly)", "point"),
          ("Weights file (.ckpt / .pt)...", "file")]
DEVICES = ["auto", "cuda", "cpu", "mps"]
PRECISION_CHOICES = [("Automatic (bfloat16 where the hardware has it)", "auto"),
                     ("Full precision (fp32)", "fp32"), ("bfloat16", "bf16")]
REFINE_CHOICES = [("As the model was trained", None),
                  ("Refine at the structure's scale", True),
                  ("Whole view", False)]
CONTEXT_KINDS = [("As the file says", None), ("Boxes", ["box"]), ("Points", ["point"]),
                 ("Masks (segments)", ["mask"])]
RUN_ON = ["This computer", "Server"]
INTERACTIVE_DELAY_MS = 400
PROMPT_EVENTS = ("PointAddedEvent", "PointModifiedEvent", "PointRemovedEvent",
                 "PointEndInteractionEvent")


def missing_packages() -> List[str]:
    """Python packages the engine needs that this Slicer lacks."""
    return [name for name in ("torch", "scipy") if importlib.util.find_spec(name) is None]


class WSICLSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "WSICL Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["WSICL developers"]
        self.parent.helpText = (
            "Mark a structure with a few 2D boxes or points on some volumes (a context set); "
            "WSICL segments the same structure in every other volume, or interactively in the "
            "volume you prompt. See the <a href='https://github.com/wsicl/WSICL'>README</a>.")
        self.parent.acknowledgementText = (
            "Method: Hu et al., Efficient universal models for medical image segmentation via "
            "weakly supervised in-context learning; network from Neuroverse3D.")


class WSICLSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: reads settings, forwards clicks to the logic, shows progress."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.worker = None
        self.segmentRunning = False
        self.shortcuts = []
        self.observedPrompts = []
        self.deliveryTimer = qt.QTimer()
        self.interactiveTimer = qt.QTimer()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WSICLSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = WSICLSegmentLogic()
        for label, _ in MODELS:
            self.ui.modelSelector.addItem(label)
        self.ui.deviceSelector.addItems(DEVICES)
        for label, _ in PRECISION_CHOICES:
            self.ui.precisionSelector.addItem(label)
        for label, _ in REFINE_CHOICES:
            self.ui.refineSelector.addItem(label)
        for label, _ in CONTEXT_KINDS:
            self.ui.contextKindSelector.addItem(label)
        self.ui.runOnSelector.addItems(RUN_ON)
        self.ui.promptKindSelector.addItems(["box", "point", "mask"])
        self.ui.contextVolumesTable.horizontalHeader().setStretchLastSection(True)
        self.restoreSettings()

        self.ui.modelSelector.currentIndexChanged.connect(self.onSettingsChanged)
        self.ui.weightsPathLineEdit.currentPathChanged.connect(self.onSettingsChanged)
        self.ui.deviceSelector.currentIndexChanged.connect(self.onSettingsChanged)
        self.ui.miniContextSpinBox.valueChanged.connect(self.onSettingsChanged)
        self.ui.precisionSelector.currentIndexChanged.connect(self.onSettingsChanged)
        self.ui.refineSelector.currentIndexChanged.connect(self.onSettingsChanged)
        self.ui.contextKindSelector.currentIndexChanged.connect(self.onSettingsChanged)
        self.ui.runOnSelector.currentIndexChanged.connect(self.onSettingsChanged)
        self.ui.serverUrlLineEdit.editingFinished.connect(self.onSettingsChanged)
        self.ui.serverTokenLineEdit.editingFinished.connect(self.onSettingsChanged)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.installButton.clicked.connect(self.onInstall)
        self.ui.newSetButton.clicked.connect(self.onNewSet)
        self.ui.deleteSetButton.clicked.connect(self.onDeleteSet)
        self.ui.importSetButton.clicked.connect(self.onImportSet)
        self.ui.exportSetButton.clicked.connect(self.onExportSet)
        self.ui.contextSetList.currentRowChanged.connect(self.updateSetPanel)
        self.ui.setNameLineEdit.editingFinished.connect(self.onSetPropertiesChanged)
        self.ui.setColorPickerButton.colorChanged.connect(self.onSetPropertiesChanged)
        self.ui.promptKindSelector.currentIndexChanged.connect(self.onSetPropertiesChanged)
        self.ui.addVolumeButton.clicked.connect(self.onAddVolume)
        self.ui.placeBoxButton.clicked.connect(lambda: self.onPlace("box"))
        self.ui.placePointButton.clicked.connect(lambda: self.onPlace("point"))
        self.ui.removePromptButton.clicked.connect(self.onRemovePrompt)
        self.ui.removeVolumeButton.clicked.connect(self.onRemoveVolume)
        self.ui.addSegmentButton.clicked.connect(self.onAddSegment)
        self.ui.useResultButton.clicked.connect(self.onUseResult)
        self.ui.contextVolumesTable.itemSelectionChanged.connect(self.onContextVolumeSelected)
        self.ui.segmentButton.clicked.connect(lambda: self.onSegment(all_volumes=False))
        self.ui.segmentAllButton.clicked.connect(lambda: self.onSegment(all_volumes=True))
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.interactiveButton.toggled.connect(self.onInteractiveToggled)

        self.deliveryTimer.setInterval(100)
        self.deliveryTimer.timeout.connect(self.deliver)
        self.interactiveTimer.setSingleShot(True)
        self.interactiveTimer.setInterval(INTERACTIVE_DELAY_MS)
        self.interactiveTimer.timeout.connect(self.runInteractive)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.refreshSets)
        self.updateDependencies()
        self.refreshSets()

    def enter(self):
        """Shortcuts live only while the panel is shown; Shift+B / Shift+P are free in
        Slicer's slice views (b / f step through slices) and in the Segment Editor."""
        self.exit()
        for key, callback in (("Shift+B", lambda: self.onPlace("box")),
                              ("Shift+P", lambda: self.onPlace("point"))):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.activated.connect(callback)
            self.shortcuts.append(shortcut)

    def exit(self):
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    def cleanup(self):
        self.removeObservers()
        self.deliveryTimer.stop()
        self.interactiveTimer.stop()
        self.exit()
        if self.worker is not None:
            self.worker.shutdown()

    # Settings and dependencies -------------------------------------------------------

    def restoreSettings(self):
        settings = qt.QSettings()
        self.ui.modelSelector.setCurrentIndex(int(settings.value(SETTINGS_PREFIX + "model", 0)))
        self.ui.weightsPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "weights", "")
        self.ui.deviceSelector.setCurrentText(settings.value(SETTINGS_PREFIX + "device", "auto"))
        self.ui.miniContextSpinBox.value = int(settings.value(SETTINGS_PREFIX + "miniContext", 1))
        self.ui.precisionSelector.setCurrentIndex(
            int(settings.value(SETTINGS_PREFIX + "precision", 0)))
        self.ui.refineSelector.setCurrentIndex(int(settings.value(SETTINGS_PREFIX + "refine", 0)))
        self.ui.contextKindSelector.setCurrentIndex(
            int(settings.value(SETTINGS_PREFIX + "contextKind", 0)))
        self.ui.runOnSelector.setCurrentIndex(int(settings.value(SETTINGS_PREFIX + "runOn", 0)))
        self.ui.serverUrlLineEdit.text = settings.value(SETTINGS_PREFIX + "serverUrl", "")
        self.ui.serverTokenLineEdit.text = settings.value(SETTINGS_PREFIX + "serverToken", "")
        self.ui.weightsPathLineEdit.setEnabled(self.ui.modelSelector.currentIndex == 2)
        self.updateRunOn()

    def updateRunOn(self):
        """Server fields only when running on a server, whose device and precision apply."""
        remote = self.ui.runOnSelector.currentIndex == 1
        for widget in (self.ui.serverUrlLabel, self.ui.serverUrlLineEdit,
                       self.ui.serverTokenLabel, self.ui.serverTokenLineEdit,
                       self.ui.testConnectionButton, self.ui.connectionStatusLabel):
            widget.setVisible(remote)
        for widget in (self.ui.deviceSelector, self.ui.miniContextSpinBox,
                       self.ui.precisionSelector):
            widget.setEnabled(not remote)

    def onSettingsChanged(self, *_):
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "model", self.ui.modelSelector.currentIndex)
        settings.setValue(SETTINGS_PREFIX + "weights", self.ui.weightsPathLineEdit.currentPath)
        settings.setValue(SETTINGS_PREFIX + "device", self.ui.deviceSelector.currentText)
        settings.setValue(SETTINGS_PREFIX + "miniContext", self.ui.miniContextSpinBox.value)
        settings.setValue(SETTINGS_PREFIX + "precision", self.ui.precisionSelector.currentIndex)
        settings.setValue(SETTINGS_PREFIX + "refine", self.ui.refineSelector.currentIndex)
        settings.setValue(SETTINGS_PREFIX + "contextKind", self.ui.contextKindSelector.currentIndex)
        settings.setValue(SETTINGS_PREFIX + "runOn", self.ui.runOnSelector.currentIndex)
        settings.setValue(SETTINGS_PREFIX + "serverUrl", self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(SETTINGS_PREFIX + "serverToken", self.ui.serverTokenLineEdit.text.strip())
        self.updateRunOn()
        self.ui.weightsPathLineEdit.setEnabled(self.ui.modelSelector.currentIndex == 2)
        self.updateDependencies()
        if not missing_packages():
            from WSICLSegmentLib.settings import save_settings
            with slicer.util.tryWithErrorDisplay("Invalid settings."):
                save_settings(slicer.mrmlScene, self.runSettings())

    def runSettings(self):
        """The panel's settings as the logic's settings object."""
        from WSICLSegmentLib.settings import RunSettings
        return RunSettings(
            model=self.modelSource(), device=self.ui.deviceSelector.currentText,
            mini_context=self.ui.miniContextSpinBox.value,
            precision=PRECISION_CHOICES[self.ui.precisionSelector.currentIndex][1],
            refine=REFINE_CHOICES[self.ui.refineSelector.currentIndex][1],
            prompt_kinds=CONTEXT_KINDS[self.ui.contextKindSelector.currentIndex][1],
            server=self.ui.serverUrlLineEdit.text.strip()
            if self.ui.runOnSelector.currentIndex == 1 else "")

    def serverToken(self) -> Optional[str]:
        """The token typed for the server (Slicer's settings, not the scene), or None."""
        return self.ui.serverTokenLineEdit.text.strip() or None

    def onTestConnection(self):
        self.ui.connectionStatusLabel.setText("Connecting...")
        slicer.app.processEvents()
        try:
            summary = self.logic.testConnection(self.ui.serverUrlLineEdit.text.strip(),
                                                self.serverToken())
        except (ValueError, RuntimeError) as error:
            summary = f"Failed: {error}"
        self.ui.connectionStatusLabel.setText(summary)

    def showSceneSettings(self):
        """Shows the settings a loaded scene was segmented with, if it saved any."""
        if missing_packages():
            return
        from WSICLSegmentLib.settings import load_settings
        settings = load_settings(slicer.mrmlScene)
        if settings is None:
            return
        keys = [key for _, key in MODELS]
        self.ui.modelSelector.setCurrentIndex(
            keys.index(settings.model) if settings.model in keys else keys.index("file"))
        if settings.model not in keys:
            self.ui.weightsPathLineEdit.currentPath = settings.model
        self.ui.deviceSelector.setCurrentText(settings.device)
        self.ui.miniContextSpinBox.value = settings.mini_context
        self.ui.runOnSelector.setCurrentIndex(1 if settings.server else 0)
        if settings.server:
            self.ui.serverUrlLineEdit.text = settings.server
        for selector, choices, value in (
                (self.ui.precisionSelector, PRECISION_CHOICES, settings.precision),
                (self.ui.refineSelector, REFINE_CHOICES, settings.refine),
                (self.ui.contextKindSelector, CONTEXT_KINDS, settings.prompt_kinds)):
            values = [choice for _, choice in choices]   # a script may have saved others
            selector.setCurrentIndex(values.index(value) if value in values else 0)

    def modelSource(self) -> str:
        key = MODELS[self.ui.modelSelector.currentIndex][1]
        return self.ui.weightsPathLineEdit.currentPath if key == "file" else key

    def updateDependencies(self):
        missing = missing_packages()
        self.ui.installButton.setVisible(bool(missing))
        self.ui.dependencyLabel.setText(f"Missing: {', '.join(missing)}" if missing else "")
        for button in (self.ui.segmentButton, self.ui.segmentAllButton,
                       self.ui.interactiveButton):
            button.setEnabled(not missing)
        if missing:
            self.ui.deviceWarningLabel.setVisible(False)
            return
        from wsicl.device import available_devices, native_bf16_cpu
        detected = available_devices()[0]
        bf16 = "native" if native_bf16_cpu() else "emulated (fp32 is faster)"
        self.ui.detectedDeviceLabel.setText(
            f"detected: {', '.join(available_devices())}; CPU bfloat16: {bf16}")
        chosen = self.ui.deviceSelector.currentText
        self.ui.deviceWarningLabel.setVisible(
            (detected if chosen == "auto" else chosen) == "cpu" and
            self.ui.runOnSelector.currentIndex == 0)

    def onInstall(self):
        missing = missing_packages()
        if not slicer.util.confirmOkCancelDisplay(
                f"WSICL needs {', '.join(missing)}. Install now? PyTorch comes through the "
                "PyTorch extension's installer, matched to this computer's GPU; this can take "
                "several minutes and a restart of Slicer.", "Install dependencies"):
            return
        with slicer.util.tryWithErrorDisplay("Installing dependencies failed.", waitCursor=True):
            if "torch" in missing:
                import PyTorchUtils
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    raise RuntimeError("PyTorch was not installed; install the PyTorch "
                                       "extension from the Extensions Manager and retry")
            if "scipy" in missing:
                slicer.util.pip_install("scipy")
        self.updateDependencies()

    # Context sets ---------------------------------------------------------------------

    def lib(self):
        """The MRML-side logic of the module logic, with the inference worker started (both
        need PyTorch, so they start on first use)."""
        if self.worker is None:
            from WSICLSegmentLib.worker import InferenceWorker
            self.worker = InferenceWorker()
            self.deliveryTimer.start()
        return self.logic.lib

    def sets(self):
        from WSICLSegmentLib import context_sets
        return context_sets

    def currentSet(self):
        if missing_packages():
            return None
        nodes = self.sets().context_sets(slicer.mrmlScene)
        row = self.ui.contextSetList.currentRow
        return nodes[row] if 0 <= row < len(nodes) else None

    def onSceneImported(self, *_):
        self.showSceneSettings()
        self.refreshSets()

    def refreshSets(self, *_):
        self.ui.contextSetList.clear()
        if missing_packages():
            return
        for node in self.sets().context_sets(slicer.mrmlScene):
            self.ui.contextSetList.addItem(f"{node.GetName()} ({self.sets().prompt_kind(node)})")
        if self.ui.contextSetList.count:
            self.ui.contextSetList.setCurrentRow(self.ui.contextSetList.count - 1)
        self.updateSetPanel()

    def updateSetPanel(self, *_):
        """Shows the current set; the selected context volume stays selected (placing or
        removing a prompt rebuilds the table, and the next prompt goes to that volume)."""
        node = self.currentSet()
        for widget in (self.ui.setNameLineEdit, self.ui.setColorPickerButton,
                       self.ui.promptKindSelector, self.ui.addVolumeButton,
                       self.ui.contextVolumesTable, self.ui.exportSetButton,
                       self.ui.deleteSetButton):
            widget.setEnabled(node is not None)
        selected = self.selectedContextVolume()
        self.ui.contextVolumesTable.setRowCount(0)
        if node is None:
            return
        sets = self.sets()
        self.ui.setNameLineEdit.text = node.GetName()
        self.ui.setColorPickerButton.color = qt.QColor.fromRgbF(*sets.colour(node))
        self.ui.promptKindSelector.setCurrentText(sets.prompt_kind(node))
        entries = sets.context_volumes(node)
        self.ui.promptKindSelector.setEnabled(not any(e.prompt_count for e in entries))
        self.ui.contextVolumesTable.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for column, text in enumerate((entry.volume.GetName(), str(entry.prompt_count))):
                self.ui.contextVolumesTable.setItem(row, column, qt.QTableWidgetItem(text))
        rows = [row for row, entry in enumerate(entries)
                if selected is not None and entry.volume is selected.volume]
        if rows:                                # quietly: the slice views keep their zoom
            self.ui.contextVolumesTable.blockSignals(True)
            self.ui.contextVolumesTable.selectRow(rows[0])
            self.ui.contextVolumesTable.blockSignals(False)

    def onNewSet(self):
        with slicer.util.tryWithErrorDisplay("Could not create the context set."):
            count = len(self.sets().context_sets(slicer.mrmlScene)) + 1
            self.sets().create_context_set(slicer.mrmlScene, f"structure {count}",
                                           self.ui.promptKindSelector.currentText or "box")
            self.refreshSets()

    def onDeleteSet(self):
        node = self.currentSet()
        if node is None or not slicer.util.confirmYesNoDisplay(
                f"Delete context set '{node.GetName()}' and its prompts? Volumes and "
                "segmentations are kept."):
            return
        self.sets().delete_context_set(slicer.mrmlScene, node)
        self.refreshSets()

    def onSetPropertiesChanged(self, *_):
        node = self.currentSet()
        if node is None:
            return
        name = self.ui.setNameLineEdit.text.strip()
        if name:
            node.SetName(name)
        colour = self.ui.setColorPickerButton.color
        self.sets().set_colour(node, (colour.redF(), colour.greenF(), colour.blueF()))
        with slicer.util.tryWithErrorDisplay("Could not change the prompt kind."):
            self.sets().set_prompt_kind(node, self.ui.promptKindSelector.currentText)
        row = self.ui.contextSetList.currentRow
        self.ui.contextSetList.item(row).setText(
            f"{node.GetName()} ({self.sets().prompt_kind(node)})")

    def onImportSet(self):
        path = qt.QFileDialog.getOpenFileName(None, "Import context set", "", "JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not import the context set.",
                                                 waitCursor=True):
                self.sets().import_json(slicer.mrmlScene, path)
                self.refreshSets()

    def onExportSet(self):
        node = self.currentSet()
        folder = qt.QFileDialog.getExistingDirectory(
            None, "Export context set into an empty folder")
        if node is not None and folder:
            with slicer.util.tryWithErrorDisplay("Could not export the context set.",
                                                 waitCursor=True):
                path = self.sets().export_json(node, folder)
                self.ui.statusLabel.setText(f"Exported to {path}")

    def onAddVolume(self):
        node = self.currentSet()
        with slicer.util.tryWithErrorDisplay("Could not add the volume."):
            self.sets().add_context_volume(node, self.ui.volumeSelector.currentNode())
            self.updateSetPanel()

    def selectedContextVolume(self):
        node = self.currentSet()
        row = self.ui.contextVolumesTable.currentRow()
        entries = self.sets().context_volumes(node) if node is not None else []
        return entries[row] if 0 <= row < len(entries) else None

    def onContextVolumeSelected(self):
        entry = self.selectedContextVolume()
        if entry is not None:
            slicer.util.setSliceViewerLayers(background=entry.volume, fit=True)
            self.observePrompts()

    def onPlace(self, kind: str):
        node = self.currentSet()
        entry = self.selectedContextVolume()
        if node is None or entry is None:
            slicer.util.errorDisplay("Select a context set and one of its volumes first.")
            return
        with slicer.util.tryWithErrorDisplay("Could not start placing the prompt."):
            sets = self.sets()
            if kind == "box":
                prompt = sets.new_box(slicer.mrmlScene, node, entry.volume)
                self.addObserver(prompt, prompt.PointPositionDefinedEvent, self.onBoxPlaced)
            else:
                prompt = sets.point_list(slicer.mrmlScene, node, entry.volume)
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetReferenceActivePlaceNodeClassName(prompt.GetClassName())
            selection.SetActivePlaceNodeID(prompt.GetID())
            slicer.app.applicationLogic().GetInteractionNode().SetCurrentInteractionMode(
                slicer.vtkMRMLInteractionNode.Place)
            self.observePrompts()
            self.updateSetPanel()

    def onBoxPlaced(self, roi, _event):
        """Makes a freshly drawn ROI 2D: zero thickness along its thinnest axis, the normal
        of the slice it was drawn on."""
        self.removeObserver(roi, roi.PointPositionDefinedEvent, self.onBoxPlaced)
        from WSICLSegmentLib.prompts import flatten_roi
        flatten_roi(roi)
        self.updateSetPanel()

    def onRemovePrompt(self):
        node, entry = self.currentSet(), self.selectedContextVolume()
        if entry is not None:
            self.sets().remove_last_prompt(slicer.mrmlScene, node, entry.volume)
            self.updateSetPanel()

    def onRemoveVolume(self):
        node, entry = self.currentSet(), self.selectedContextVolume()
        if entry is not None:
            self.sets().remove_context_volume(slicer.mrmlScene, node, entry.volume)
            self.updateSetPanel()

    def onAddSegment(self):
        with slicer.util.tryWithErrorDisplay("Could not add the segment as context."):
            node = self.requireSet()
            self.sets().add_segment(slicer.mrmlScene, node, self.ui.volumeSelector.currentNode(),
                                    self.ui.contextSegmentSelector.currentNode(),
                                    self.ui.contextSegmentSelector.currentSegmentID())
            self.updateSetPanel()

    def onUseResult(self):
        with slicer.util.tryWithErrorDisplay("Could not use the result as context."):
            node = self.requireSet()
            self.sets().use_result_as_context(slicer.mrmlScene, node,
                                              self.ui.targetSelector.currentNode())
            self.updateSetPanel()

    def requireSet(self):
        node = self.currentSet()
        if node is None:
            raise ValueError("Select a context set first (or create one).")
        return node

    # Segmentation -----------------------------------------------------------------------

    def runInWorker(self, job, interactive: bool = False):
        """Queues ``job``; the weights load in the worker too (seconds, on the first run or
        after a settings change). An interactive run leaves Segment / Cancel alone, and a
        Segment press while one is in flight queues behind it."""
        lib = self.lib()
        settings = self.runSettings()
        token = self.serverToken()

        def work(progress, cancelled):
            predictor = lib.predictor(settings, progress, token)
            return lib.compute(job, predictor, progress, cancelled)

        if not interactive:
            self.segmentRunning = True
            self.setBusy(True)
        self.worker.submit(work, lambda results: self.onResults(results, interactive),
                           lambda error: self.onFailure(error, interactive), self.onProgress)

    def onSegment(self, all_volumes: bool):
        if self.segmentRunning:
            self.worker.cancel()
            self.ui.statusLabel.setText("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay("Could not start segmenting.", waitCursor=True):
            from WSICLSegmentLib.logic import non_context_volumes
            targets = (non_context_volumes(slicer.mrmlScene) if all_volumes
                       else [self.ui.targetSelector.currentNode()] if
                       self.ui.targetSelector.currentNode() else [])
            job = self.lib().gather(self.sets().context_sets(slicer.mrmlScene), targets)
            self.runInWorker(job)

    def setBusy(self, busy: bool):
        self.ui.segmentButton.setText("Cancel" if busy else "Segment")
        self.ui.segmentAllButton.setEnabled(not busy)
        self.ui.progressBar.setValue(0)
        if busy:
            self.ui.statusLabel.setText("Segmenting...")

    def onProgress(self, fraction: float, message: str):
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.setText(message)

    def onResults(self, results, interactive: bool):
        if not interactive:
            self.segmentRunning = False
            self.setBusy(False)
        with slicer.util.tryWithErrorDisplay("Could not write the results.", waitCursor=True):
            writes = self.lib().apply(results)
            self.ui.statusLabel.setText(f"Done: {len(writes)} segment(s) written.")

    def onFailure(self, error: BaseException, interactive: bool):
        if not interactive:
            self.segmentRunning = False
            self.setBusy(False)
        from wsicl import Cancelled
        from WSICLSegmentLib.worker import describe_failure
        if isinstance(error, Cancelled):
            self.ui.statusLabel.setText("Cancelled; the scene is unchanged.")
            return
        sentence, details = describe_failure(error)
        logging.error("WSICL failed:\n%s", details)
        self.ui.statusLabel.setText(f"Failed: {sentence}")
        slicer.util.errorDisplay(sentence, "WSICL", detailedText=details)

    def onUndo(self):
        if missing_packages() or not self.logic.undoLast():
            self.ui.statusLabel.setText("Nothing to undo.")
        else:
            self.ui.statusLabel.setText("Last run undone.")

    def deliver(self):
        if self.worker is not None:
            self.worker.deliver()

    # Interactive mode -------------------------------------------------------------------

    def observePrompts(self):
        for prompt in self.observedPrompts:
            for event in PROMPT_EVENTS:
                self.removeObserver(prompt, getattr(prompt, event), self.onPromptChanged)
        self.observedPrompts = []
        entry = self.selectedContextVolume()
        if entry is None or not self.ui.interactiveButton.checked:
            return
        prompts = entry.rois + ([entry.point_list] if entry.point_list else [])
        for prompt in prompts:
            for event in PROMPT_EVENTS:
                self.addObserver(prompt, getattr(prompt, event), self.onPromptChanged)
        self.observedPrompts = prompts

    def onInteractiveToggled(self, checked: bool):
        self.observePrompts()
        if checked:
            self.onPromptChanged()

    def onPromptChanged(self, *_):
        self.updateSetPanel()
        if self.ui.interactiveButton.checked:
            self.interactiveTimer.start()

    def runInteractive(self):
        node, entry = self.currentSet(), self.selectedContextVolume()
        if node is None or entry is None or entry.prompt_count == 0:
            return
        if self.worker is not None and self.worker.busy:
            self.interactiveTimer.start()
            return
        with slicer.util.tryWithErrorDisplay("Interactive segmentation failed."):
            self.runInWorker(self.lib().gather_interactive(node, entry.volume), interactive=True)


class WSICLSegmentLogic(ScriptedLoadableModuleLogic):
    """Segmenting from scripts and the Python console, without the panel.

    >>> logic = WSICLSegmentLogic()
    >>> logic.process([contextSetNode], [targetVolumeNode], model="box")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._lib = None

    @property
    def lib(self):
        """The MRML-side logic this module logic and its panel share: loaded weights, undo
        history (imported on first use: it needs PyTorch)."""
        if self._lib is None:
            from WSICLSegmentLib.logic import SegmentationLogic
            self._lib = SegmentationLogic(slicer.mrmlScene, slicer.modules.segmentations.logic())
        return self._lib

    def process(self, contextSetNodes: Sequence, targetVolumeNodes: Sequence, model: str = "box",
                device: str = "auto", miniContext: int = 1, precision: str = "auto",
                progress: Optional[Callable[[float, str], None]] = None,
                refine: Optional[bool] = None,
                contextKinds: Optional[Sequence[str]] = None, server: str = "",
                token: Optional[str] = None) -> dict:
        """Segments every target with every context set; returns ``{volume name:
        segmentation node}``. Blocks until done; undone by :meth:`undoLast`. ``precision``:
        ``"auto"`` (bfloat16 where native), ``"fp32"`` or ``"bf16"``; ``refine``: work at the structure's scale (None: as the
        model was trained); ``contextKinds``: what the model reads (box, point, mask) when
        its file does not say; ``server``: a ``wsicl serve`` URL to run on (``token``: its
        bearer token; ``model`` names one of its models). Weights stay loaded between calls
        with the same settings."""
        from WSICLSegmentLib.settings import RunSettings
        settings = RunSettings(model, device, miniContext, precision, refine, contextKinds,
                               server)
        return self.lib.process(contextSetNodes, targetVolumeNodes, settings, progress, token)

    def testConnection(self, url: str, token: Optional[str] = None) -> str:
        """One line saying what the server at ``url`` runs; raises with the reason if it
        cannot be used."""
        from wsicl.remote import check_server
        return check_server(url, token)

    def undoLast(self) -> bool:
        """Reverts the last run (of the panel or of :meth:`process`); False if none."""
        return self.lib.undo_last()

    def createContextSet(self, name: str, promptKind: str = "box"):
        """A new context set of ``promptKind`` ("box", "point" or "mask")."""
        from WSICLSegmentLib import context_sets
        return context_sets.create_context_set(slicer.mrmlScene, name, promptKind)

    def addSegmentAsContext(self, contextSetNode, volumeNode, segmentationNode, segmentId: str):
        """Adds a segment drawn on ``volumeNode`` to the set (a copy in a mask set, boxes or
        points marking it in a box or point set)."""
        from WSICLSegmentLib import context_sets
        context_sets.add_segment(slicer.mrmlScene, contextSetNode, volumeNode, segmentationNode,
                                 segmentId)


class WSICLSegmentTest(ScriptedLoadableModuleTest):
    """Self-test for a Slicer with PyTorch: sample volumes, a two-volume box context set, a
    third volume segmented, and interactive mode."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_context_set_and_interactive()

    def test_context_set_and_interactive(self):
        if missing_packages():
            self.skipTest(f"missing {missing_packages()}")
        import SampleData
        from WSICLSegmentLib.context_sets import new_box_at
        from WSICLSegmentLib.segments import segment_array
        from WSICLSegmentLib.settings import RunSettings
        context = [SampleData.downloadSample(name) for name in ("MRBrainTumor1", "MRBrainTumor2")]
        target = SampleData.downloadSample("MRHead")
        logic = WSICLSegmentLogic()
        setNode = logic.createContextSet("brain")
        for volume in context:
            dims = volume.GetImageData().GetDimensions()
            new_box_at(slicer.mrmlScene, setNode, volume, [d // 2 for d in dims], (100.0, 100.0))
        nodes = logic.process([setNode], [target], model="box")
        mask = segment_array(nodes[target.GetName()], "WSICL_brain", target)
        self.assertGreater(int(mask.sum()), 0)
        interactiveSet = logic.createContextSet("interactive brain")
        dims = target.GetImageData().GetDimensions()
        new_box_at(slicer.mrmlScene, interactiveSet, target, [d // 2 for d in dims],
                   (120.0, 120.0))
        lib = logic.lib                  # the same weights, already loaded by process()
        job = lib.gather_interactive(interactiveSet, target)
        lib.apply(lib.compute(job, lib.predictor(RunSettings())))
        mask = segment_array(nodes[target.GetName()], "WSICL_interactive_brain", target)
        self.assertGreater(int(mask.sum()), 0)
        self.delayDisplay("WSICLSegment self-test passed")
