"""WSICLSegment: weakly supervised in-context segmentation in 3D Slicer.

The module as an index: the module, its widget (the panel's sections live in
``WSICLSegmentPanel``), the logic facade (``process()`` for scripts) and the self-test. The
work lives in ``WSICLSegmentLib`` (MRML side) and ``wsicl`` (engine); both are imported only
once PyTorch is available, so the module loads, and offers to install it, on a Slicer
without PyTorch.
"""
from typing import Callable, Optional, Sequence

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from WSICLSegmentPanel.run_section import RunSection
from WSICLSegmentPanel.sets_section import ContextSetsSection
from WSICLSegmentPanel.settings_section import SettingsSection, missing_packages


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
    """The panel: loads the .ui and hands each section its widgets (``settings``, ``sets``,
    ``run``); the scene's import and close refresh them."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.shortcuts = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WSICLSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = WSICLSegmentLogic()
        self.settings = SettingsSection(self.ui, self.logic)
        self.sets = ContextSetsSection(self.ui)
        self.run = RunSection(self.ui, self.logic, self.settings, self.sets)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.sets.refresh)

    def onSceneImported(self, *_):
        self.settings.showSceneSettings()
        self.sets.refresh()

    def enter(self):
        """Shortcuts live only while the panel is shown; Shift+B / Shift+P are free in
        Slicer's slice views (b / f step through slices) and in the Segment Editor."""
        self.exit()
        for key, kind in (("Shift+B", "box"), ("Shift+P", "point")):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.activated.connect(lambda kind=kind: self.sets.place(kind))
            self.shortcuts.append(shortcut)

    def exit(self):
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    def cleanup(self):
        self.removeObservers()
        self.exit()
        self.sets.cleanup()
        self.run.cleanup()


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
        ``"auto"`` (bfloat16 where native), ``"fp32"`` or ``"bf16"``; ``refine``: work at the
        structure's scale (None: as the model was trained); ``contextKinds``: what the
        model reads (box, point, mask) when its file does not say; ``server``: a ``wsicl
        serve`` URL to run on (``token``: its bearer token; ``model`` names one of its
        models). Weights stay loaded between calls with the same settings."""
        from WSICLSegmentLib.settings import RunSettings
        settings = RunSettings(model, device, miniContext, precision, refine, contextKinds,
                               server)
        return self.lib.process(contextSetNodes, targetVolumeNodes, settings, progress, token)

    def testConnection(self, url: str, token: Optional[str] = None) -> str:
        """One line saying what the server at ``url`` runs; raises with the reason if it
        cannot be used."""
        from wsicl.server.client import check_server
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
