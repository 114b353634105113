"""Renders the panel's .ui to a PNG for the README (no Slicer needed).

Usage: ``QT_QPA_PLATFORM=offscreen python scripts/render_panel.py OUT.png`` with PySide6.

The CTK and MRML widgets are drawn by Qt stand-ins (collapsible buttons as group boxes,
node selectors as combo boxes), filled with example content, so the picture shows the
layout and wording of the real panel, not its exact look.
"""
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QWidget, QComboBox, QLineEdit, QListWidget, QTableWidget, QTableWidgetItem

UI = Path(__file__).resolve().parent.parent / "WSICLSegment" / "Resources" / "UI" / "WSICLSegment.ui"
STAND_INS = {"ctkCollapsibleButton": "QGroupBox", "ctkColorPickerButton": "QPushButton",
             "ctkPathLineEdit": "QLineEdit", "qMRMLNodeComboBox": "QComboBox",
             "qMRMLWidget": "QWidget", "qMRMLSegmentSelectorWidget": "QComboBox"}


def stand_in_ui() -> bytes:
    tree = ElementTree.parse(UI)
    for widget in tree.iter("widget"):
        if widget.get("class") == "ctkCollapsibleButton":
            for prop in widget.findall("property"):
                if prop.get("name") == "text":
                    prop.set("name", "title")
        widget.set("class", STAND_INS.get(widget.get("class"), widget.get("class")))
        for prop in list(widget.findall("property")):
            if prop.get("name") in ("nodeTypes", "addEnabled", "removeEnabled", "noneEnabled"):
                widget.remove(prop)
    root = tree.getroot()
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    return ElementTree.tostring(root)


def main(output: Path) -> None:
    app = QApplication([])
    buffer = QBuffer()
    buffer.setData(QByteArray(stand_in_ui()))
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    panel = loader.load(buffer)
    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QComboBox, "modelSelector").addItems(["Bundled box model (CPU friendly)"])
    find(QComboBox, "deviceSelector").addItems(["auto"])
    find(QComboBox, "refineSelector").addItems(["As the model was trained"])
    find(QComboBox, "precisionSelector").addItems(
        ["Automatic (bfloat16 where the hardware has it)"])
    find(QComboBox, "contextKindSelector").addItems(["As the file says"])
    find(QComboBox, "runOnSelector").addItems(["Server"])       # as the panel shows it then:
    find(QLineEdit, "serverUrlLineEdit").setText("http://127.0.0.1:8000")
    find(QLineEdit, "serverTokenLineEdit").setText("x" * 43)
    for name in ("deviceSelector", "precisionSelector", "miniContextSpinBox"):
        panel.findChild(QWidget, name).setEnabled(False)     # the server's apply
    panel.findChild(QWidget, "deviceWarningLabel").setVisible(False)
    find(QComboBox, "contextSegmentSelector").addItems(["CT case 2 segmentation: liver"])
    find(QComboBox, "promptKindSelector").addItems(["box"])
    find(QComboBox, "volumeSelector").addItems(["CT case 2"])
    find(QComboBox, "targetSelector").addItems(["MR case 7"])
    find(QLineEdit, "setNameLineEdit").setText("liver")
    find(QListWidget, "contextSetList").addItems(["liver (box)", "spleen (box)"])
    table = panel.findChild(QTableWidget, "contextVolumesTable")
    table.setRowCount(2)
    for row, (name, count) in enumerate([("CT case 1", "5"), ("CT case 2", "3")]):
        table.setItem(row, 0, QTableWidgetItem(name))
        table.setItem(row, 1, QTableWidgetItem(count))
    panel.findChild(QWidget, "detectedDeviceLabel").setText(
        "detected: cpu; CPU bfloat16: native")
    panel.findChild(QWidget, "installButton").setVisible(False)
    panel.findChild(QWidget, "progressBar").setValue(40)
    panel.findChild(QWidget, "statusLabel").setText("liver in MR case 7: 3/5 context images")
    panel.findChild(QWidget, "segmentButton").setText("Cancel")
    panel.resize(460, 940)
    panel.show()
    app.processEvents()
    panel.grab().save(str(output))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
