"""The panel's "Context sets" section: sets (name, colour, prompt kind), their volumes and
prompts (boxes and points placed in the slice views, segments, earlier results), import
and export as the command line's JSON."""
from typing import Callable, List

import qt
import slicer
from slicer.util import VTKObservationMixin

from .settings_section import missing_packages


class ContextSetsSection(VTKObservationMixin):
    """Wires the context-set widgets of ``ui`` to the scene. ``prompt_listeners`` are
    called when the prompts shown may have changed (a volume selected, a prompt placed)."""

    def __init__(self, ui) -> None:
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.prompt_listeners: List[Callable[[], None]] = []
        ui.promptKindSelector.addItems(["box", "point", "mask"])
        ui.contextVolumesTable.horizontalHeader().setStretchLastSection(True)
        ui.newSetButton.clicked.connect(self.onNewSet)
        ui.deleteSetButton.clicked.connect(self.onDeleteSet)
        ui.importSetButton.clicked.connect(self.onImportSet)
        ui.exportSetButton.clicked.connect(self.onExportSet)
        ui.contextSetList.currentRowChanged.connect(self.updatePanel)
        ui.setNameLineEdit.editingFinished.connect(self.onPropertiesChanged)
        ui.setColorPickerButton.colorChanged.connect(self.onPropertiesChanged)
        ui.promptKindSelector.currentIndexChanged.connect(self.onPropertiesChanged)
        ui.addVolumeButton.clicked.connect(self.onAddVolume)
        ui.placeBoxButton.clicked.connect(lambda: self.place("box"))
        ui.placePointButton.clicked.connect(lambda: self.place("point"))
        ui.removePromptButton.clicked.connect(self.onRemovePrompt)
        ui.removeVolumeButton.clicked.connect(self.onRemoveVolume)
        ui.addSegmentButton.clicked.connect(self.onAddSegment)
        ui.useResultButton.clicked.connect(self.onUseResult)
        ui.contextVolumesTable.itemSelectionChanged.connect(self.onVolumeSelected)
        self.refresh()

    @staticmethod
    def sets():
        from WSICLSegmentLib import context_sets
        return context_sets

    def promptsChanged(self) -> None:
        for listener in self.prompt_listeners:
            listener()

    def currentSet(self):
        if missing_packages():
            return None
        nodes = self.sets().context_sets(slicer.mrmlScene)
        row = self.ui.contextSetList.currentRow
        return nodes[row] if 0 <= row < len(nodes) else None

    def requireSet(self):
        node = self.currentSet()
        if node is None:
            raise ValueError("Select a context set first (or create one).")
        return node

    def selectedVolume(self):
        """The selected context volume of the current set (its prompts), or None."""
        node = self.currentSet()
        row = self.ui.contextVolumesTable.currentRow()
        entries = self.sets().context_volumes(node) if node is not None else []
        return entries[row] if 0 <= row < len(entries) else None

    def refresh(self, *_) -> None:
        self.ui.contextSetList.clear()
        if missing_packages():
            return
        for node in self.sets().context_sets(slicer.mrmlScene):
            self.ui.contextSetList.addItem(f"{node.GetName()} ({self.sets().prompt_kind(node)})")
        if self.ui.contextSetList.count:
            self.ui.contextSetList.setCurrentRow(self.ui.contextSetList.count - 1)
        self.updatePanel()

    def updatePanel(self, *_) -> None:
        """Shows the current set; the selected context volume stays selected (placing or
        removing a prompt rebuilds the table, and the next prompt goes to that volume)."""
        node, ui = self.currentSet(), self.ui
        for widget in (ui.setNameLineEdit, ui.setColorPickerButton, ui.promptKindSelector,
                       ui.addVolumeButton, ui.contextVolumesTable, ui.exportSetButton,
                       ui.deleteSetButton):
            widget.setEnabled(node is not None)
        selected = self.selectedVolume()
        ui.contextVolumesTable.setRowCount(0)
        if node is None:
            return
        sets = self.sets()
        ui.setNameLineEdit.text = node.GetName()
        ui.setColorPickerButton.color = qt.QColor.fromRgbF(*sets.colour(node))
        ui.promptKindSelector.setCurrentText(sets.prompt_kind(node))
        entries = sets.context_volumes(node)
        ui.promptKindSelector.setEnabled(not any(e.prompt_count for e in entries))
        ui.contextVolumesTable.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for column, text in enumerate((entry.volume.GetName(), str(entry.prompt_count))):
                ui.contextVolumesTable.setItem(row, column, qt.QTableWidgetItem(text))
        rows = [row for row, entry in enumerate(entries)
                if selected is not None and entry.volume is selected.volume]
        if rows:                                # quietly: the slice views keep their zoom
            ui.contextVolumesTable.blockSignals(True)
            ui.contextVolumesTable.selectRow(rows[0])
            ui.contextVolumesTable.blockSignals(False)

    def onNewSet(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not create the context set."):
            count = len(self.sets().context_sets(slicer.mrmlScene)) + 1
            self.sets().create_context_set(slicer.mrmlScene, f"structure {count}",
                                           self.ui.promptKindSelector.currentText or "box")
            self.refresh()

    def onDeleteSet(self) -> None:
        node = self.currentSet()
        if node is None or not slicer.util.confirmYesNoDisplay(
                f"Delete context set '{node.GetName()}' and its prompts? Volumes and "
                "segmentations are kept."):
            return
        self.sets().delete_context_set(slicer.mrmlScene, node)
        self.refresh()

    def onPropertiesChanged(self, *_) -> None:
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
        self.ui.contextSetList.item(self.ui.contextSetList.currentRow).setText(
            f"{node.GetName()} ({self.sets().prompt_kind(node)})")

    def onImportSet(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, "Import context set", "", "JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not import the context set.",
                                                 waitCursor=True):
                self.sets().import_json(slicer.mrmlScene, path)
                self.refresh()

    def onExportSet(self) -> None:
        node = self.currentSet()
        folder = qt.QFileDialog.getExistingDirectory(
            None, "Export context set into an empty folder")
        if node is not None and folder:
            with slicer.util.tryWithErrorDisplay("Could not export the context set.",
                                                 waitCursor=True):
                path = self.sets().export_json(node, folder)
                self.ui.statusLabel.setText(f"Exported to {path}")

    def onAddVolume(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the volume."):
            self.sets().add_context_volume(self.currentSet(), self.ui.volumeSelector.currentNode())
            self.updatePanel()

    def onVolumeSelected(self) -> None:
        entry = self.selectedVolume()
        if entry is not None:
            slicer.util.setSliceViewerLayers(background=entry.volume, fit=True)
            self.promptsChanged()

    def place(self, kind: str) -> None:
        """Starts placing a box or a point on the selected context volume (the slice
        views' place mode)."""
        node, entry = self.currentSet(), self.selectedVolume()
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
            self.promptsChanged()
            self.updatePanel()

    def onBoxPlaced(self, roi, _event) -> None:
        """Makes a freshly drawn ROI 2D: zero thickness along its thinnest axis, the normal
        of the slice it was drawn on."""
        self.removeObserver(roi, roi.PointPositionDefinedEvent, self.onBoxPlaced)
        from WSICLSegmentLib.prompts import flatten_roi
        flatten_roi(roi)
        self.updatePanel()

    def onRemovePrompt(self) -> None:
        node, entry = self.currentSet(), self.selectedVolume()
        if entry is not None:
            self.sets().remove_last_prompt(slicer.mrmlScene, node, entry.volume)
            self.updatePanel()

    def onRemoveVolume(self) -> None:
        node, entry = self.currentSet(), self.selectedVolume()
        if entry is not None:
            self.sets().remove_context_volume(slicer.mrmlScene, node, entry.volume)
            self.updatePanel()

    def onAddSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the segment as context."):
            self.sets().add_segment(slicer.mrmlScene, self.requireSet(),
                                    self.ui.volumeSelector.currentNode(),
                                    self.ui.contextSegmentSelector.currentNode(),
                                    self.ui.contextSegmentSelector.currentSegmentID())
            self.updatePanel()

    def onUseResult(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not use the result as context."):
            self.sets().use_result_as_context(slicer.mrmlScene, self.requireSet(),
                                              self.ui.targetSelector.currentNode())
            self.updatePanel()

    def cleanup(self) -> None:
        self.removeObservers()
