"""The Slicer panel used as a user would: the real ``WSICLSegmentWidget`` on PySide6
(offscreen) and a real MRML scene, through :mod:`panel_harness`. Runs go through the
panel's worker thread with the bundled box model on the CPU in fp32."""
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

pytest.importorskip("PySide6")
slicer = pytest.importorskip("slicer")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402

from panel_harness import MODULE_FOLDER, STAND_INS, Panel, shaped  # noqa: E402
from served import TOKEN, ServerProcess, blob, write_served_model, write_token  # noqa: E402
from WSICLSegmentLib import context_sets as sets  # noqa: E402
from WSICLSegmentLib.segments import segment_array  # noqa: E402
from WSICLSegmentLib.settings import RunSettings, load_settings, save_settings  # noqa: E402
from WSICLSegmentLib.volumes import image_to_volume  # noqa: E402

UI_FILE = MODULE_FOLDER / "Resources" / "UI" / "WSICLSegment.ui"


@pytest.fixture
def panel(tmp_path):
    opened = Panel(tmp_path / "settings")
    opened.ui.deviceSelector.setCurrentText("cpu")
    opened.ui.precisionSelector.setCurrentIndex(1)                  # fp32
    yield opened
    opened.close()


def add_volume(panel, seed: int, name: str):
    node = panel.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.CreateDefaultDisplayNodes()
    image_to_volume(blob(seed), node)
    return node


def ras_of_voxel(volume, ijk):
    import vtk
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return [sum(matrix.GetElement(r, c) * v for c, v in enumerate([*ijk, 1.0]))
            for r in range(3)]


def new_set_with_volume(panel, volume, name: str = "core"):
    """Clicks New, names the set, picks ``volume`` and clicks Add; selects its row."""
    panel.ui.newSetButton.click()
    panel.ui.setNameLineEdit.text = name
    panel.ui.setNameLineEdit.editingFinished.emit()
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.addVolumeButton.click()
    table = panel.ui.contextVolumesTable
    table.selectRow(table.rowCount - 1)
    return panel.widget.sets.currentSet()


def draw_box(panel, volume, ijk=(20, 18, 12), size_mm=(16.0, 14.0)):
    """Place box, then what the slice view does: the ROI gets its centre and size (some
    thickness, as dragged) and says its position is defined."""
    panel.ui.placeBoxButton.click()
    selection = panel.logics.application.GetSelectionNode()
    roi = panel.scene.GetNodeByID(selection.GetActivePlaceNodeID())
    roi.SetCenter(*ras_of_voxel(volume, ijk))
    roi.SetSize(size_mm[0], size_mm[1], 3.0)
    roi.InvokeEvent(roi.PointPositionDefinedEvent)
    return roi


def segmentation_nodes(panel) -> list:
    collection = panel.scene.GetNodesByClass("vtkMRMLSegmentationNode")
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def finished(panel) -> bool:
    return not panel.widget.run.segmentRunning and not panel.widget.run.worker.busy


# The harness stands for the facts ---------------------------------------------------


def test_every_widget_class_and_connection_of_the_ui_has_its_stand_in():
    tree = ElementTree.parse(UI_FILE)
    classes = {w.get("class") for w in tree.iter("widget")}
    assert classes - set(STAND_INS) and all(
        name in STAND_INS or shaped(name) is not None for name in classes)
    for connection in tree.iter("connection"):
        receiver = next(w.get("class") for w in tree.iter("widget")
                        if w.get("name") == connection.findtext("receiver"))
        slot = connection.findtext("slot").split("(")[0]
        assert hasattr(STAND_INS.get(receiver) or shaped(receiver), slot), (receiver, slot)


def test_widgets_read_and_assign_properties_as_pythonqt_does(panel):
    line = panel.ui.setNameLineEdit
    line.text = "liver"
    assert line.text == "liver" and QtWidgets.QLineEdit.text(line) == "liver"
    assert panel.ui.setNameLineEdit.name == "setNameLineEdit"
    panel.ui.miniContextSpinBox.value = 3
    assert QtWidgets.QSpinBox.value(panel.ui.miniContextSpinBox) == 3
    assert panel.ui.contextVolumesTable.currentRow() == -1        # a method, not a property
    assert [b.title for b in panel.widget.parent.findChildren(STAND_INS[
        "ctkCollapsibleButton"])][:1] == ["Model"]


def test_node_selectors_list_the_scene_nodes_of_their_types(panel):
    volume = add_volume(panel, 1, "MR 1")
    panel.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "not a volume")
    selector = panel.ui.volumeSelector
    assert [selector.itemText(i) for i in range(selector.count)] == ["None", "MR 1"]
    selector.setCurrentNode(volume)
    assert selector.currentNode() is volume
    panel.scene.RemoveNode(volume)
    assert selector.count == 1 and selector.currentNode() is None


# The module --------------------------------------------------------------------------


def test_the_module_sets_up_and_its_shortcuts_live_only_while_it_is_shown(panel):
    assert panel.ui.modelSelector.count == 3 and panel.ui.deviceSelector.currentText == "cpu"
    assert not panel.ui.installButton.visible and panel.dialogs.shown == []
    assert "detected: cpu" in panel.ui.detectedDeviceLabel.text
    panel.widget.enter()
    keys = sorted(s.key().toString() for s in panel.main_window.findChildren(QtGui.QShortcut))
    assert keys == ["Shift+B", "Shift+P"]
    panel.widget.enter()                                        # entering twice: still two
    assert len(panel.main_window.findChildren(QtGui.QShortcut)) == 2
    panel.widget.exit()
    assert panel.main_window.findChildren(QtGui.QShortcut) == []


def test_a_context_set_is_created_renamed_recoloured_and_deleted(panel):
    panel.ui.newSetButton.click()
    assert panel.ui.contextSetList.count == 1
    node = sets.context_sets(panel.scene)[0]
    assert panel.ui.contextSetList.item(0).text() == f"{node.GetName()} (box)"
    panel.ui.setNameLineEdit.text = "liver"
    panel.ui.setNameLineEdit.editingFinished.emit()
    assert node.GetName() == "liver" and panel.ui.contextSetList.item(0).text() == "liver (box)"
    panel.ui.setColorPickerButton.color = QtGui.QColor.fromRgbF(1.0, 0.5, 0.0)
    assert np.allclose(sets.colour(node), (1.0, 0.5, 0.0), atol=1e-2)
    panel.ui.promptKindSelector.setCurrentText("point")
    assert sets.prompt_kind(node) == "point"
    panel.dialogs.button = QtWidgets.QMessageBox.StandardButton.No
    panel.ui.deleteSetButton.click()
    assert "Delete context set 'liver'" in panel.dialogs.shown[-1]["text"]
    assert sets.context_sets(panel.scene) == [node]                 # answered No: kept
    panel.dialogs.button = QtWidgets.QMessageBox.StandardButton.Yes
    panel.ui.deleteSetButton.click()
    assert sets.context_sets(panel.scene) == [] and panel.ui.contextSetList.count == 0
    assert not panel.ui.deleteSetButton.enabled


def test_boxes_and_points_are_placed_as_the_slice_view_places_them(panel):
    volume = add_volume(panel, 1, "MR 1")
    node = new_set_with_volume(panel, volume)
    assert panel.ui.contextVolumesTable.rowCount == 1
    roi = draw_box(panel, volume)
    interaction = panel.logics.application.GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    size = list(roi.GetSize())
    assert min(size) == 0.0 and max(size) > 0                       # flattened to 2D
    assert panel.ui.contextVolumesTable.item(0, 1).text() == "1"
    assert not panel.ui.promptKindSelector.enabled                  # kind fixed by prompts
    panel.ui.removePromptButton.click()
    assert panel.ui.contextVolumesTable.item(0, 1).text() == "0"
    panel.ui.promptKindSelector.setCurrentText("point")
    panel.ui.contextVolumesTable.selectRow(0)
    panel.ui.placePointButton.click()
    points = panel.scene.GetNodeByID(
        panel.logics.application.GetSelectionNode().GetActivePlaceNodeID())
    points.AddControlPoint(*ras_of_voxel(volume, (20, 18, 12)))
    assert sets.context_volumes(node)[0].prompt_count == 1
    panel.ui.removeVolumeButton.click()
    assert panel.ui.contextVolumesTable.rowCount == 0


def test_segment_one_target_then_all_then_undo(panel):
    context = [add_volume(panel, seed, f"context {seed}") for seed in (1, 2)]
    target = add_volume(panel, 3, "target")
    other = add_volume(panel, 4, "other")
    new_set_with_volume(panel, context[0])
    draw_box(panel, context[0])
    panel.ui.volumeSelector.setCurrentNode(context[1])
    panel.ui.addVolumeButton.click()
    panel.ui.contextVolumesTable.selectRow(1)
    draw_box(panel, context[1])
    panel.ui.targetSelector.setCurrentNode(target)
    progress = []
    panel.ui.progressBar.valueChanged.connect(progress.append)
    panel.ui.segmentButton.click()
    assert panel.ui.segmentButton.text == "Cancel" and not panel.ui.segmentAllButton.enabled
    panel.pump(lambda: finished(panel))
    assert panel.ui.segmentButton.text == "Segment" and panel.ui.segmentAllButton.enabled
    assert panel.ui.statusLabel.text == "Done: 1 segment(s) written."
    assert max(progress) == 100 and panel.dialogs.errors() == []
    assert panel.ui.progressBar.value == 100                        # full once done
    (segmentation,) = segmentation_nodes(panel)
    mask = segment_array(segmentation, "WSICL_core", target)
    assert 0 < mask.sum() < mask.size
    panel.ui.segmentAllButton.click()                               # target and other
    panel.pump(lambda: finished(panel))
    assert panel.ui.statusLabel.text == "Done: 2 segment(s) written."
    assert len(segmentation_nodes(panel)) == 2
    panel.ui.undoButton.click()
    assert panel.ui.statusLabel.text == "Last run undone." and len(segmentation_nodes(panel)) == 1
    node = panel.widget.sets.currentSet()
    panel.ui.useResultButton.click()                 # the (corrected) result as context
    assert [e.volume for e in sets.context_volumes(node)] == [*context, target]
    assert sets.context_volumes(node)[2].prompt_count > 0 and panel.dialogs.errors() == []
    panel.ui.addSegmentButton.click()                               # nothing picked yet
    assert panel.dialogs.errors()[-1].startswith("Could not add the segment as context.")
    panel.ui.contextSegmentSelector.setCurrentNode(segmentation)    # a segment by hand,
    panel.ui.contextSegmentSelector.setCurrentSegmentID("WSICL_core")  # for "other"
    panel.ui.volumeSelector.setCurrentNode(other)
    panel.ui.addSegmentButton.click()
    assert sets.context_volumes(node)[-1].volume is other and len(panel.dialogs.errors()) == 1
    panel.ui.undoButton.click()
    assert panel.ui.statusLabel.text == "Last run undone." and segmentation_nodes(panel) == []
    panel.ui.undoButton.click()
    assert panel.ui.statusLabel.text == "Nothing to undo."


def test_after_segment_all_the_flagged_are_marked_stepped_through_and_one_annotated(
        panel, monkeypatch):
    """Review marks after Segment all with a calibration that flags every result: the
    marks list each volume with its confidence, Next to review steps through them least
    confident first and shows each, Annotate next adds the least confident volume to the
    set with boxes from its result; Undo clears the marks."""
    from wsicl import confidence
    flag_all = confidence.Calibration([0.0] * 5, 0.0, [0.0] * 5, [1.0] * 5, 0.0, 0.5, 0.75,
                                      "test")
    monkeypatch.setattr(confidence, "calibration", lambda: flag_all)
    context = add_volume(panel, 1, "context 1")
    targets = [add_volume(panel, seed, f"target {seed}") for seed in (3, 4)]
    node = new_set_with_volume(panel, context)
    draw_box(panel, context)
    assert not panel.ui.reviewButton.enabled and not panel.ui.annotateNextButton.enabled
    panel.ui.segmentAllButton.click()
    panel.pump(lambda: finished(panel))
    lines = panel.ui.reviewLabel.text.splitlines()
    assert lines[0] == "2 of 2 results to review, least confident first:"
    assert sorted(line.split(":")[0] for line in lines[1:]) == \
        ["to review", "to review"] and all("confidence" in line for line in lines[1:])
    assert panel.ui.reviewButton.enabled and panel.ui.annotateNextButton.enabled
    seen = []
    for _ in range(3):                                   # round and round
        panel.ui.reviewButton.click()
        seen.append(panel.ui.targetSelector.currentNode())
        assert panel.ui.statusLabel.text.startswith(f"To review {(len(seen) - 1) % 2 + 1} of 2")
    review = panel.widget.logic.lib.review
    assert [v.GetID() for v in seen] == [review.flagged[i].volume_id for i in (0, 1, 0)]
    least = review.annotate_next()["core"]
    panel.ui.annotateNextButton.click()
    assert panel.dialogs.errors() == []
    added = sets.context_volumes(node)[-1]
    assert added.volume.GetID() == least.volume_id and added.prompt_count > 0
    assert panel.ui.statusLabel.text.startswith(f"Added {least.volume_name} to 'core'")
    assert not panel.ui.annotateNextButton.enabled
    panel.ui.undoButton.click()
    assert panel.ui.reviewLabel.text == "" and not panel.ui.reviewButton.enabled


def test_cancel_stops_a_run_and_leaves_the_scene_unchanged(panel):
    context = add_volume(panel, 1, "context")
    for seed in range(2, 6):
        add_volume(panel, seed, f"target {seed}")
    new_set_with_volume(panel, context)
    draw_box(panel, context)
    nodes_before = panel.scene.GetNumberOfNodes()
    panel.ui.segmentAllButton.click()
    panel.ui.segmentButton.click()                                  # the button says Cancel
    assert panel.ui.statusLabel.text == "Cancelling..."
    panel.pump(lambda: finished(panel))
    assert panel.ui.statusLabel.text == "Cancelled; the scene is unchanged."
    assert panel.ui.progressBar.value == 0
    assert panel.scene.GetNumberOfNodes() == nodes_before and panel.dialogs.errors() == []


def test_interactive_mode_follows_a_moved_box_once_it_rests(panel):
    volume = add_volume(panel, 1, "MR 1")
    new_set_with_volume(panel, volume, "tumour")
    roi = draw_box(panel, volume)
    history = lambda: len(panel.widget.logic.lib.history)  # noqa: E731
    panel.ui.interactiveButton.checked = True
    panel.pump(lambda: history() == 1 and not panel.widget.run.worker.busy)
    assert panel.ui.segmentButton.text == "Segment"                 # Segment left alone
    centre = list(roi.GetCenter())
    for step in range(5):                                           # a drag: five moves
        roi.SetCenter(centre[0] + step, centre[1], centre[2])
    panel.pump(lambda: history() == 2 and not panel.widget.run.worker.busy)
    panel.run_events(1.0)
    assert history() == 2                                           # one run for the drag
    panel.ui.interactiveButton.checked = False
    roi.SetCenter(*centre)
    panel.qapp.processEvents()
    assert not panel.widget.run.interactiveTimer.isActive()


def test_settings_are_saved_with_the_scene_and_in_qsettings(panel, tmp_path):
    panel.ui.modelSelector.setCurrentIndex(1)                       # bundled point model
    panel.ui.miniContextSpinBox.value = 2
    panel.ui.refineSelector.setCurrentIndex(2)                      # whole view
    saved = load_settings(panel.scene)
    assert (saved.model, saved.device, saved.precision, saved.mini_context, saved.refine) == (
        "point", "cpu", "fp32", 2, False)
    settings = QtCore.QSettings()
    assert int(settings.value("WSICLSegment/model")) == 1
    assert settings.value("WSICLSegment/device") == "cpu"
    again = Panel(tmp_path / "settings")                            # Slicer restarted
    try:
        assert again.ui.modelSelector.currentIndex == 1 and again.ui.miniContextSpinBox.value == 2
        assert again.ui.refineSelector.currentIndex == 2
        save_settings(again.scene, RunSettings(model="box", device="cpu", precision="bf16"))
        again.scene.InvokeEvent(again.scene.EndImportEvent)         # a scene was loaded
        assert again.ui.modelSelector.currentIndex == 0
        assert again.ui.precisionSelector.currentIndex == 2
    finally:
        again.close()


def test_run_on_a_server_tests_the_connection_and_segments_there(panel, tmp_path):
    model = write_served_model(tmp_path / "tiny.pt")
    server = ServerProcess("--port", "0", "--model", str(model), "--token-file",
                           str(write_token(tmp_path)))
    try:
        assert panel.ui.serverUrlLineEdit.isHidden()
        panel.ui.runOnSelector.setCurrentIndex(1)
        assert not panel.ui.serverUrlLineEdit.isHidden()            # server fields shown
        assert not panel.ui.deviceSelector.enabled                  # the server's apply
        panel.ui.serverUrlLineEdit.text = server.url
        panel.ui.serverUrlLineEdit.editingFinished.emit()
        panel.ui.testConnectionButton.click()
        assert panel.ui.connectionStatusLabel.text.startswith("Failed")  # no token yet
        panel.ui.serverTokenLineEdit.text = TOKEN
        panel.ui.serverTokenLineEdit.editingFinished.emit()
        panel.ui.testConnectionButton.click()
        assert not panel.ui.connectionStatusLabel.text.startswith("Failed")
        assert panel.ui.connectionStatusLabel.text.endswith("models: tiny")
        panel.ui.modelSelector.setCurrentIndex(2)
        panel.ui.weightsPathLineEdit.currentPath = str(model)
        context, target = add_volume(panel, 1, "context"), add_volume(panel, 3, "target")
        new_set_with_volume(panel, context)
        draw_box(panel, context)
        panel.ui.targetSelector.setCurrentNode(target)
        panel.ui.segmentButton.click()
        panel.pump(lambda: finished(panel))
        assert panel.ui.statusLabel.text == "Done: 1 segment(s) written.", panel.dialogs.shown
        assert load_settings(panel.scene).server == server.url
        assert TOKEN not in str(load_settings(panel.scene))          # never in the scene
    finally:
        server.stop()


def test_errors_are_one_message_and_nothing_is_half_done(panel, tmp_path):
    target = add_volume(panel, 3, "target")
    panel.ui.targetSelector.setCurrentNode(target)
    panel.ui.segmentButton.click()                                  # no context set
    assert len(panel.dialogs.errors()) == 1
    assert panel.dialogs.errors()[0].startswith("Could not start segmenting.")
    assert not panel.widget.run.segmentRunning
    context = add_volume(panel, 1, "context")
    new_set_with_volume(panel, context)                             # a set without prompts
    panel.ui.segmentButton.click()
    assert len(panel.dialogs.errors()) == 2 and "prompt" in panel.dialogs.errors()[1]
    draw_box(panel, context)
    not_weights = tmp_path / "weights.pt"
    not_weights.write_text("https://example.org/box.pt")
    panel.ui.modelSelector.setCurrentIndex(2)
    panel.ui.weightsPathLineEdit.currentPath = str(not_weights)
    panel.ui.segmentButton.click()
    panel.pump(lambda: finished(panel))
    assert len(panel.dialogs.errors()) == 3 and "not weights" in panel.dialogs.errors()[2]
    assert panel.ui.statusLabel.text.startswith("Failed: ")
    assert segmentation_nodes(panel) == [] and panel.ui.segmentButton.text == "Segment"


def test_a_context_set_is_exported_and_imported_through_the_file_dialogs(panel, tmp_path):
    context = add_volume(panel, 1, "context")
    new_set_with_volume(panel, context, "liver")
    draw_box(panel, context)
    folder = tmp_path / "export"
    folder.mkdir()
    panel.dialogs.answers.append(str(folder))
    panel.ui.exportSetButton.click()
    assert re.match(r"Exported to .*\.json$", panel.ui.statusLabel.text)
    exported = panel.ui.statusLabel.text.split("Exported to ")[1]
    panel.dialogs.answers.append(exported)
    panel.ui.importSetButton.click()
    assert panel.ui.contextSetList.count == 2 and panel.dialogs.errors() == []
    imported = sets.context_sets(panel.scene)[1]
    assert sets.context_volumes(imported)[0].prompt_count == 1


def test_without_pytorch_the_panel_offers_the_install_and_nothing_else(tmp_path,
                                                                      monkeypatch):
    """A Slicer without PyTorch: the panel loads, says what is missing, disables the runs,
    and Install asks first, then runs the PyTorch extension's installer (a stand-in that
    installs nothing here), whose failure is one message with the fix."""
    import importlib.util
    import sys
    import types
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None
                        if name == "torch" else real_find_spec(name, *rest))
    calls = []
    installer = types.SimpleNamespace(PyTorchUtilsLogic=lambda: types.SimpleNamespace(
        installTorch=lambda askConfirmation: calls.append(askConfirmation)))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", installer)
    panel = Panel(tmp_path / "settings")
    try:
        assert not panel.ui.installButton.isHidden()
        assert panel.ui.dependencyLabel.text == "Missing: torch"
        assert not any(b.enabled for b in (panel.ui.segmentButton, panel.ui.segmentAllButton,
                                           panel.ui.interactiveButton, panel.ui.newSetButton,
                                           panel.ui.importSetButton))
        panel.dialogs.button = QtWidgets.QMessageBox.StandardButton.Cancel
        panel.ui.installButton.click()
        assert "WSICL needs torch. Install now?" in panel.dialogs.shown[-1]["text"]
        assert calls == []                               # Cancel: nothing installed
        panel.dialogs.button = QtWidgets.QMessageBox.StandardButton.Ok
        panel.ui.installButton.click()
        assert calls == [False]                          # the installer, without asking again
        assert "install the PyTorch extension from the Extensions Manager" in \
            panel.dialogs.errors()[-1]
    finally:
        panel.close()
