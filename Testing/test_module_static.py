"""Checks on the Slicer module that need no Slicer: syntax, the .ui, self.ui names, packaging."""
import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "WSICLSegment"
UI_FILE = MODULE / "Resources" / "UI" / "WSICLSegment.ui"
PYTHON_FILES = sorted(MODULE.rglob("*.py"))
PANEL_FILES = [MODULE / "WSICLSegment.py", *sorted((MODULE / "WSICLSegmentPanel").glob("*.py"))]
"""The module and its panel sections: the code that touches the .ui's widgets."""

# Which widget classes offer the attributes the module uses (signals, properties, methods).
CLASSES_WITH = {
    "clicked": {"QPushButton", "ctkColorPickerButton", "QCheckBox"},
    "toggled": {"QPushButton", "QCheckBox"},
    "checked": {"QPushButton", "QCheckBox"},
    "setText": {"QPushButton", "QLabel", "QLineEdit"},
    "text": {"QLineEdit", "QLabel", "QPushButton"},
    "editingFinished": {"QLineEdit", "QSpinBox"},
    "currentIndex": {"QComboBox"},
    "currentIndexChanged": {"QComboBox"},
    "currentText": {"QComboBox"},
    "setCurrentText": {"QComboBox"},
    "setCurrentIndex": {"QComboBox"},
    "addItem": {"QComboBox", "QListWidget"},
    "addItems": {"QComboBox"},
    "currentRow": {"QListWidget", "QTableWidget"},
    "currentRowChanged": {"QListWidget"},
    "setCurrentRow": {"QListWidget"},
    "count": {"QListWidget", "QComboBox"},
    "item": {"QListWidget", "QTableWidget"},
    "clear": {"QListWidget", "QComboBox", "QLineEdit"},
    "currentPath": {"ctkPathLineEdit"},
    "currentPathChanged": {"ctkPathLineEdit"},
    "value": {"QSpinBox", "QProgressBar"},
    "valueChanged": {"QSpinBox"},
    "setValue": {"QSpinBox", "QProgressBar"},
    "color": {"ctkColorPickerButton"},
    "colorChanged": {"ctkColorPickerButton"},
    "currentNode": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "setCurrentNode": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "currentSegmentID": {"qMRMLSegmentSelectorWidget"},
    "setRowCount": {"QTableWidget"},
    "setItem": {"QTableWidget"},
    "itemSelectionChanged": {"QTableWidget", "QListWidget"},
    "horizontalHeader": {"QTableWidget"},
    "selectRow": {"QTableWidget"},
}


def ui_widgets():
    tree = ElementTree.parse(UI_FILE)
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(MODULE)))
def test_every_module_file_parses_as_python_3_9(path):
    ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_engine_imports_no_slicer_qt_or_vtk():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk)\b", re.MULTILINE)
    offenders = [p.name for p in (MODULE / "wsicl").rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_ui_parses_and_has_the_sections():
    widgets = ui_widgets()
    for section in ("modelCollapsibleButton", "contextCollapsibleButton",
                    "applyCollapsibleButton", "interactiveCollapsibleButton"):
        assert widgets[section] == "ctkCollapsibleButton"


def test_every_self_ui_name_exists_with_a_compatible_class():
    widgets = ui_widgets()
    source = "".join(path.read_text(encoding="utf-8") for path in PANEL_FILES)
    uses = re.findall(r"\bui\.(\w+)(?:\.(\w+))?", source)
    assert uses, "the widget uses no self.ui names"
    for name, attribute in uses:
        assert name in widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        if attribute in CLASSES_WITH:
            assert widgets[name] in CLASSES_WITH[attribute], \
                f"self.ui.{name} is a {widgets[name]}, which has no '{attribute}'"
        elif attribute not in ("setEnabled", "setVisible", "setMRMLScene", "blockSignals", ""):
            pytest.fail(f"self.ui.{name}.{attribute}: attribute not in the compatibility table")


NOT_SHIPPED_IN_SLICER = ("wsicl/cli.py", "wsicl/demo.py", "wsicl/metrics.py", "wsicl/training/",
                         "wsicl/server/app.py", "wsicl/server/service.py", "wsicl/dicomseg.py",
                         "wsicl/runs.py", "wsicl/launch.py", "wsicl/server/page.py",
                         "wsicl/__main__.py", "wsicl/segment_run.py", "wsicl/resume.py")
"""What only ``pip install`` brings: the command line (``python -m wsicl``, its
``segment`` runs with their resume records, DICOM SEG writer, run reports and torchrun
launches), the demo, the training layer and the server with its
browser page (Slicer ships its client, ``wsicl/server/client.py``, and the wire format)."""


def slicer_scripts() -> set:
    return {str(p.relative_to(MODULE)) for p in PYTHON_FILES
            if not str(p.relative_to(MODULE)).startswith(NOT_SHIPPED_IN_SLICER)}


def test_module_cmake_lists_exactly_what_slicer_runs():
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").replace(
        "${MODULE_NAME}", "WSICLSegment")
    listed = set(re.findall(r"^\s+(\S+\.py)$", cmake, re.MULTILINE))
    assert slicer_scripts() == listed
    for resource in re.findall(r"^\s+(\S+\.(?:png|ui|gz|md|pt|json))$", cmake, re.MULTILINE):
        assert (MODULE / resource).is_file(), resource


def test_what_slicer_ships_imports_only_what_slicer_ships():
    shipped = slicer_scripts()
    for script in sorted(shipped):
        package = Path(script).parent
        for node in ast.walk(ast.parse((MODULE / script).read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.parent
                names = [str(base / (node.module or "").replace(".", "/"))]
                names += [f"{names[0]}/{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    ("wsicl", "WSICLSegmentLib")):
                names = [node.module.replace(".", "/")]
            elif isinstance(node, ast.Import):
                names = [a.name.replace(".", "/") for a in node.names
                         if a.name.startswith(("wsicl", "WSICLSegmentLib"))]
            for name in names:
                as_module, as_package = f"{name}.py", f"{name}/__init__.py"
                exists = (MODULE / as_module).is_file() or (MODULE / as_package).is_file()
                assert not exists or as_module in shipped or as_package in shipped, \
                    f"{script} imports {name}, which the Slicer extension does not ship"


def test_extension_metadata():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY \"Segmentation\"",
                  "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                  "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS \"PyTorch\""):
        assert field in cmake
    assert (ROOT / "WSICL.png").read_bytes()[:4] == b"\x89PNG"


def test_inference_and_file_formats_import_no_training_code():
    import subprocess
    import sys
    code = ("import sys, wsicl.predictor, wsicl.contextfile, wsicl.imageio, wsicl.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('wsicl.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert "'wsicl.training" not in loaded, loaded
