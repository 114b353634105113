"""The Slicer panel (``WSICLSegment.py``) run headless in tests, on PySide6 (offscreen)
shaped as PythonQt, the real MRML scene of ``slicer-core`` and Slicer's own ``slicer.util``.

What is real: the module file, its ``.ui``, Qt's widgets, signals, timers and settings, the
MRML scene with its module logics (:mod:`slicer_scene`), ``slicer.util`` (``loadUI``,
``childWidgetVariables``, ``VTKObservationMixin``, ``tryWithErrorDisplay``, ``errorDisplay``,
``confirmYesNoDisplay``, ...), the inference worker thread and the engine.

What stands in, kept small and checked against the facts it stands for
(``test_panel.py``):

- ``qt``: PySide6's QtCore, QtGui, QtWidgets and QtUiTools as one module. Widgets made by
  the ``.ui`` loader are shaped as PythonQt shows them: every Qt property is an attribute
  (``lineEdit.text``, ``spinBox.value = 3``; its getter then is the value, as in PythonQt)
  and ``name`` is the object name. ``QFileDialog`` answers from :class:`Dialogs`.
- The CTK and MRML widgets of the ``.ui``: collapsible buttons, a colour picker, a path
  line edit, node selectors that list the real MRML nodes of their ``nodeTypes`` (with
  "None" first when ``noneEnabled``), a segment selector; ``qMRMLWidget`` signals
  ``mrmlSceneChanged`` to the selectors the ``.ui``'s connections name.
- ``slicer.app`` (events, the application logic with its selection and interaction nodes,
  no layout manager), ``slicer.mrmlScene``, ``slicer.modules.segmentations`` and the
  ``ScriptedLoadableModule`` base classes. Message boxes are recorded by :class:`Dialogs`
  (``slicer.util.messageBox`` is replaced; every ``errorDisplay`` / confirmation of
  ``slicer.util`` reaches it), and answered as a test says.
"""
import importlib
import os
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Dict, List, Optional

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402

import slicer  # noqa: E402  (slicer-core: the real MRML and slicer.util)
import slicer.util  # noqa: E402
from slicer_scene import SceneLogics, new_scene  # noqa: E402

MODULE_FOLDER = Path(__file__).resolve().parents[1] / "WSICLSegment"


def pythonqt_class(base: type, name: Optional[str] = None) -> type:
    """``base`` as PythonQt shows it: each Qt property of the class an attribute that reads
    and assigns the property (shadowing a getter of the same name, as PythonQt does), and
    ``name`` the object name."""
    meta = base.staticMetaObject
    attributes: Dict[str, object] = {}
    for index in range(meta.propertyCount()):
        prop = meta.property(index).name()
        attributes[prop] = property(lambda self, p=prop: QtCore.QObject.property(self, p),
                                    lambda self, value, p=prop: self.setProperty(p, value))
    attributes["name"] = property(lambda self: QtCore.QObject.objectName(self),
                                  lambda self, value: self.setObjectName(value))
    return type(name or base.__name__, (base,), attributes)


_SHAPED: Dict[str, type] = {}


def shaped(class_name: str) -> Optional[type]:
    """The PythonQt-shaped class for a Qt widget class name, or None if Qt has none."""
    if class_name not in _SHAPED:
        base = getattr(QtWidgets, class_name, None)
        if base is None:
            return None
        _SHAPED[class_name] = pythonqt_class(base)
    return _SHAPED[class_name]


# CTK and MRML widgets ------------------------------------------------------------------


class ctkCollapsibleButton(pythonqt_class(QtWidgets.QGroupBox, "ctkCollapsibleButtonBase")):
    """A titled section; ``text`` (from the ``.ui``) is its title."""

    text = property(lambda self: self.title, lambda self, value: self.setTitle(value))


class ctkColorPickerButton(shaped("QPushButton")):
    """A button holding a colour: ``color`` (a QColor), ``colorChanged`` when it changes."""

    colorChanged = QtCore.Signal(QtGui.QColor)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._color = QtGui.QColor(0, 0, 0)

    @property
    def color(self) -> QtGui.QColor:
        return QtGui.QColor(self._color)

    @color.setter
    def color(self, value: QtGui.QColor) -> None:
        if QtGui.QColor(value) != self._color:
            self._color = QtGui.QColor(value)
            swatch = QtGui.QPixmap(32, 16)
            swatch.fill(self._color)
            self.setIcon(QtGui.QIcon(swatch))
            self.colorChanged.emit(self.color)


class ctkPathLineEdit(shaped("QWidget")):
    """A path field (a line edit): ``currentPath``, ``currentPathChanged`` when it
    changes."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._field = QtWidgets.QLineEdit(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._field)
        self._field.textChanged.connect(self.currentPathChanged.emit)

    @property
    def currentPath(self) -> str:
        return self._field.text()

    @currentPath.setter
    def currentPath(self, value: str) -> None:
        self._field.setText(value)


class qMRMLWidget(shaped("QWidget")):
    """A widget with an MRML scene; ``setMRMLScene`` signals ``mrmlSceneChanged``."""

    mrmlSceneChanged = QtCore.Signal(object)

    def setMRMLScene(self, scene) -> None:
        self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(shaped("QComboBox")):
    """Lists the scene's nodes of ``nodeTypes`` (the .ui's property) by name, "None" first
    when ``noneEnabled``; follows nodes added to and removed from the scene."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._observations = None, []

    def setMRMLScene(self, scene) -> None:
        for tag in self._observations:
            self._scene.RemoveObserver(tag)
        self._scene, self._observations = scene, []
        if scene is not None:
            self._observations = [scene.AddObserver(event, lambda *_: self._refresh())
                                  for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent)]
            self._refresh()

    def _refresh(self) -> None:
        chosen = QtWidgets.QComboBox.currentData(self)
        self.blockSignals(True)
        self.clear()
        if self.property("noneEnabled"):
            self.addItem("None", None)
        for class_name in self.property("nodeTypes") or []:
            for index in range(self._scene.GetNumberOfNodesByClass(class_name)):
                node = self._scene.GetNthNodeByClass(index, class_name)
                if not node.GetHideFromEditors():
                    self.addItem(node.GetName(), node.GetID())
        found = self.findData(chosen)
        self.setCurrentIndex(found if found >= 0 else 0)
        self.blockSignals(False)

    def currentNode(self):
        node_id = QtWidgets.QComboBox.currentData(self)
        return self._scene.GetNodeByID(node_id) if node_id else None

    def setCurrentNode(self, node) -> None:
        self.setCurrentIndex(self.findData(node.GetID() if node is not None else None))


class qMRMLSegmentSelectorWidget(qMRMLWidget):
    """A segmentation node and one of its segments."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node, self._segment_id = None, ""

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        self._node = node

    def currentSegmentID(self) -> str:
        return self._segment_id

    def setCurrentSegmentID(self, segment_id: str) -> None:
        self._segment_id = segment_id


STAND_INS = {cls.__name__: cls for cls in (ctkCollapsibleButton, ctkColorPickerButton,
                                           ctkPathLineEdit, qMRMLWidget, qMRMLNodeComboBox,
                                           qMRMLSegmentSelectorWidget)}
"""The widget classes of the ``.ui`` that Qt does not have, by class name."""


class UiLoader(QtUiTools.QUiLoader):
    """Qt's .ui loader making PythonQt-shaped widgets and the stand-ins, and making the
    ``.ui``'s signal-slot connections in Python (their C++ signatures name MRML types)."""

    def createWidget(self, class_name, parent=None, name=""):
        cls = STAND_INS.get(class_name) or shaped(class_name)
        if cls is None:
            raise RuntimeError(f"no widget class {class_name} in the panel harness")
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def load(self, device, parent=None):
        if hasattr(device, "isOpen") and not device.isOpen():
            device.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
        root = ElementTree.fromstring(bytes(device.readAll()))
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(QtCore.QByteArray(ElementTree.tostring(root)))
        buffer.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
        widget = super().load(buffer, parent)
        for section in widget.findChildren(ctkCollapsibleButton):  # .ui "text": a dynamic
            section.setTitle(QtCore.QObject.property(section, "text"))  # property here
        for connection in (connections if connections is not None else []):
            sender, receiver = (self._named(widget, connection.findtext(part))
                                for part in ("sender", "receiver"))
            signal = connection.findtext("signal").split("(")[0]
            slot = connection.findtext("slot").split("(")[0]
            getattr(sender, signal).connect(getattr(receiver, slot))
        return widget

    @staticmethod
    def _named(root, name: str):
        found = root if QtCore.QObject.objectName(root) == name else \
            root.findChild(QtCore.QObject, name)
        if found is None:
            raise RuntimeError(f"the .ui connects {name}, which it does not have")
        return found


class Dialogs:
    """Message boxes and file dialogs, recorded instead of shown and answered from
    ``answers`` (file dialogs: queued paths; message boxes: the button, Yes / Ok by
    default)."""

    def __init__(self) -> None:
        self.shown: List[dict] = []
        self.answers: List[object] = []
        self.button = QtWidgets.QMessageBox.StandardButton.Yes

    def message_box(self, text, parent=None, **options):
        self.shown.append({"text": text, **options})
        standard = options.get("standardButtons")
        if standard is not None and not (standard & self.button):
            return QtWidgets.QMessageBox.StandardButton.Ok
        return self.button

    def file(self, *_args, **_options) -> str:
        self.shown.append({"file dialog": _args[1] if len(_args) > 1 else ""})
        return self.answers.pop(0) if self.answers else ""

    def errors(self) -> List[str]:
        """The texts of the error boxes shown so far."""
        return [d["text"] for d in self.shown if "text" in d and
                d.get("icon") == QtWidgets.QMessageBox.Icon.Critical]


def qt_module(dialogs: Dialogs) -> types.ModuleType:
    """PySide6 as PythonQt's ``qt`` module, with ``QUiLoader`` the harness's loader and
    ``QFileDialog`` answering from ``dialogs``."""
    module = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets, QtUiTools):
        for name in dir(source):
            if not name.startswith("_"):
                setattr(module, name, getattr(source, name))
    module.QUiLoader = UiLoader
    module.QFileDialog = types.SimpleNamespace(getOpenFileName=dialogs.file,
                                               getExistingDirectory=dialogs.file)
    return module


class App:
    """``slicer.app``: Qt's application with Slicer's application logic; no layout
    manager (there are no views); not in testing mode, so message boxes are raised (and
    recorded)."""

    applicationName = "Slicer"

    def __init__(self, qapp: QtWidgets.QApplication, logics: SceneLogics) -> None:
        self.qapp, self.logics = qapp, logics

    def processEvents(self) -> None:
        self.qapp.processEvents()

    def applicationLogic(self):
        return self.logics.application

    def testingEnabled(self) -> bool:
        return False

    def layoutManager(self):
        return None

    def topLevelWidgets(self):
        return QtWidgets.QApplication.topLevelWidgets()

    def setOverrideCursor(self, cursor) -> None:
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()


def scripted_loadable_module() -> types.ModuleType:
    """``slicer.ScriptedLoadableModule``: the base classes, as much as the module uses."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            if parent is None:
                parent = shaped("QWidget")()
                parent.setLayout(QtWidgets.QVBoxLayout())
            self.parent = parent
            self.layout = parent.layout()

        def setup(self) -> None:
            pass

        def resourcePath(self, filename: str) -> str:
            source = Path(sys.modules[type(self).__module__].__file__)
            return str(source.parent / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            pass

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = unittest.TestCase
    return module


def forget_module() -> None:
    """Drops the imported module and its panel sections (they import ``qt``)."""
    for name in [n for n in sys.modules if n == "WSICLSegment" or
                 n.startswith("WSICLSegmentPanel")]:
        del sys.modules[name]


class Panel:
    """The module's widget, set up on a fresh scene: ``widget``, ``ui`` (its
    ``self.ui``), ``scene``, ``logics``, ``dialogs``; :meth:`close` undoes everything the
    harness changed."""

    def __init__(self, settings_folder: Path) -> None:
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
        QtCore.QCoreApplication.setOrganizationName("WSICL tests")
        QtCore.QCoreApplication.setApplicationName("panel")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.Format.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.Format.IniFormat,
                                 QtCore.QSettings.Scope.UserScope, str(settings_folder))
        self.logics = new_scene()
        self.scene = self.logics.scene
        self.dialogs = Dialogs()
        self.main_window = shaped("QMainWindow")()
        self.main_window.setObjectName("qSlicerMainWindow")
        self._saved = {name: getattr(slicer, name, None)
                       for name in ("app", "mrmlScene", "modules")}
        self._saved_modules = {name: sys.modules.get(name)
                               for name in ("qt", "slicer.ScriptedLoadableModule")}
        self._message_box = slicer.util.messageBox
        sys.modules["qt"] = qt_module(self.dialogs)
        sys.modules["slicer.ScriptedLoadableModule"] = scripted_loadable_module()
        slicer.app = App(self.qapp, self.logics)
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(
            logic=lambda: self.logics.segmentations))
        slicer.util.messageBox = self.dialogs.message_box
        if str(MODULE_FOLDER) not in sys.path:
            sys.path.insert(0, str(MODULE_FOLDER))
        forget_module()                       # imported again: it binds this harness's qt
        self.module = importlib.import_module("WSICLSegment")
        self.widget = self.module.WSICLSegmentWidget()
        self.widget.setup()
        self.ui = self.widget.ui

    def pump(self, until: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Runs Qt's events (timers, the worker's deliveries) until ``until()`` is true;
        an AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout_s} s")
            self.qapp.processEvents()
            time.sleep(0.01)

    def run_events(self, seconds: float) -> None:
        """Runs Qt's events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.qapp.processEvents()
            time.sleep(0.01)

    def close(self) -> None:
        self.widget.cleanup()
        for selector in self.widget.parent.findChildren(qMRMLNodeComboBox):
            selector.setMRMLScene(None)             # no scene observer outlives its widget
        self.main_window.deleteLater()
        self.widget.parent.deleteLater()
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
        slicer.util.messageBox = self._message_box
        for name, value in self._saved.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        forget_module()
