"""The panel's "Segment" section: Segment / Segment all (Cancel while running), progress,
results and undo, what to review (each result's confidence, "Next to review" through the
flagged ones, "Annotate next": the least confident volume added to the context set), and
interactive mode (the selected volume segmented from its own
prompts again whenever they rest after a change). Work runs in one background thread
(weights load there too); results reach the scene on the main thread."""
import logging

import qt
import slicer
from slicer.util import VTKObservationMixin

from .settings_section import SettingsSection, missing_packages
from .sets_section import ContextSetsSection

INTERACTIVE_DELAY_MS = 400
"""How long prompts must rest before interactive mode segments again."""
PROMPT_EVENTS = ("PointAddedEvent", "PointModifiedEvent", "PointRemovedEvent",
                 "PointEndInteractionEvent")


class RunSection(VTKObservationMixin):
    """Wires the run widgets of ``ui`` to ``logic`` through the inference worker."""

    def __init__(self, ui, logic, settings: SettingsSection, sets: ContextSetsSection) -> None:
        VTKObservationMixin.__init__(self)
        self.ui, self.logic, self.settings, self.sets = ui, logic, settings, sets
        self.worker = None
        self.segmentRunning = False
        self.observedPrompts = []
        self.deliveryTimer = qt.QTimer()
        self.deliveryTimer.setInterval(100)
        self.deliveryTimer.timeout.connect(self.deliver)
        self.interactiveTimer = qt.QTimer()
        self.interactiveTimer.setSingleShot(True)
        self.interactiveTimer.setInterval(INTERACTIVE_DELAY_MS)
        self.interactiveTimer.timeout.connect(self.runInteractive)
        ui.segmentButton.clicked.connect(lambda: self.onSegment(all_volumes=False))
        ui.segmentAllButton.clicked.connect(lambda: self.onSegment(all_volumes=True))
        ui.undoButton.clicked.connect(self.onUndo)
        ui.reviewButton.clicked.connect(self.onNextToReview)
        ui.annotateNextButton.clicked.connect(self.onAnnotateNext)
        ui.interactiveButton.toggled.connect(self.onInteractiveToggled)
        sets.prompt_listeners.append(self.observePrompts)

    def lib(self):
        """The MRML-side logic, with the inference worker started (both need PyTorch, so
        they start on first use)."""
        if self.worker is None:
            from WSICLSegmentLib.worker import InferenceWorker
            self.worker = InferenceWorker()
            self.deliveryTimer.start()
        return self.logic.lib

    def runInWorker(self, job, interactive: bool = False) -> None:
        """Queues ``job``; the weights load in the worker too (seconds, on the first run or
        after a settings change). An interactive run leaves Segment / Cancel alone, and a
        Segment press while one is in flight queues behind it."""
        lib = self.lib()
        settings, token = self.settings.runSettings(), self.settings.serverToken()

        def work(progress, cancelled):
            predictor = lib.predictor(settings, progress, token)
            return lib.compute(job, predictor, progress, cancelled)

        if not interactive:
            self.segmentRunning = True
            self.setBusy(True)
        self.worker.submit(work, lambda results: self.onResults(results, interactive),
                           lambda error: self.onFailure(error, interactive), self.onProgress)

    def onSegment(self, all_volumes: bool) -> None:
        if self.segmentRunning:
            self.worker.cancel()
            self.ui.statusLabel.setText("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay("Could not start segmenting.", waitCursor=True):
            from WSICLSegmentLib.logic import non_context_volumes
            chosen = self.ui.targetSelector.currentNode()
            targets = (non_context_volumes(slicer.mrmlScene) if all_volumes
                       else [chosen] if chosen else [])
            job = self.lib().gather(self.sets.sets().context_sets(slicer.mrmlScene), targets)
            self.runInWorker(job)

    def setBusy(self, busy: bool) -> None:
        """Segment becomes Cancel while a run is busy; the bar starts from zero."""
        self.ui.segmentButton.setText("Cancel" if busy else "Segment")
        self.ui.segmentAllButton.setEnabled(not busy)
        if busy:
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.setText("Segmenting...")

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.setText(message)

    def onResults(self, results, interactive: bool) -> None:
        if not interactive:
            self.segmentRunning = False
            self.setBusy(False)
        with slicer.util.tryWithErrorDisplay("Could not write the results.", waitCursor=True):
            writes = self.lib().apply(results, interactive)
            self.ui.progressBar.setValue(100)
            self.ui.statusLabel.setText(f"Done: {len(writes)} segment(s) written.")
            self.showReview()

    def showReview(self) -> None:
        """The last run's results with their confidence and marks; the review buttons."""
        review = self.logic.lib.review
        self.ui.reviewLabel.setText("\n".join([review.summary()] + review.marks())
                                    if review.ordered else "")
        self.ui.reviewButton.setEnabled(bool(review.flagged))
        self.ui.annotateNextButton.setEnabled(bool(review.annotate_next()))

    def onNextToReview(self) -> None:
        """Shows the next flagged result's volume, selected as the target."""
        item = self.logic.lib.review.next()
        volume = slicer.mrmlScene.GetNodeByID(item.volume_id) if item else None
        if volume is None:
            self.ui.statusLabel.setText("Nothing to review.")
            return
        self.ui.targetSelector.setCurrentNode(volume)
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        review = self.logic.lib.review
        self.ui.statusLabel.setText(f"To review {review.position + 1} of "
                                    f"{len(review.flagged)}: {item.words()}")

    def onAnnotateNext(self) -> None:
        """Adds the least confident volume of the current set's structure to that set,
        with boxes from its result, and shows it for correction."""
        with slicer.util.tryWithErrorDisplay("Could not add the volume to annotate next."):
            node = self.sets.requireSet()
            suggestions = self.logic.lib.review.annotate_next()
            item = suggestions.get(node.GetName())
            if item is None:
                raise ValueError(f"the last run has no result for context set "
                                 f"'{node.GetName()}'; select the set it segmented")
            volume = slicer.mrmlScene.GetNodeByID(item.volume_id)
            self.ui.targetSelector.setCurrentNode(volume)
            self.sets.onUseResult()
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            self.ui.annotateNextButton.setEnabled(False)
            self.ui.statusLabel.setText(
                f"Added {item.volume_name} to '{node.GetName()}' with boxes from its result "
                f"({item.words()}): correct them, then Segment all again.")

    def onFailure(self, error: BaseException, interactive: bool) -> None:
        if not interactive:
            self.segmentRunning = False
            self.setBusy(False)
            self.ui.progressBar.setValue(0)
        from wsicl import Cancelled
        from WSICLSegmentLib.worker import describe_failure
        if isinstance(error, Cancelled):
            self.ui.statusLabel.setText("Cancelled; the scene is unchanged.")
            return
        sentence, details = describe_failure(error)
        logging.error("WSICL failed:\n%s", details)
        self.ui.statusLabel.setText(f"Failed: {sentence}")
        slicer.util.errorDisplay(sentence, "WSICL", detailedText=details)

    def onUndo(self) -> None:
        if missing_packages() or not self.logic.undoLast():
            self.ui.statusLabel.setText("Nothing to undo.")
        else:
            self.ui.statusLabel.setText("Last run undone.")
            self.showReview()

    def deliver(self) -> None:
        if self.worker is not None:
            self.worker.deliver()

    def observePrompts(self) -> None:
        """In interactive mode, watches the prompts of the selected context volume."""
        for prompt in self.observedPrompts:
            for event in PROMPT_EVENTS:
                self.removeObserver(prompt, getattr(prompt, event), self.onPromptChanged)
        self.observedPrompts = []
        entry = self.sets.selectedVolume()
        if entry is None or not self.ui.interactiveButton.checked:
            return
        prompts = entry.rois + ([entry.point_list] if entry.point_list else [])
        for prompt in prompts:
            for event in PROMPT_EVENTS:
                self.addObserver(prompt, getattr(prompt, event), self.onPromptChanged)
        self.observedPrompts = prompts

    def onInteractiveToggled(self, checked: bool) -> None:
        self.observePrompts()
        if checked:
            self.onPromptChanged()

    def onPromptChanged(self, *_) -> None:
        self.sets.updatePanel()
        if self.ui.interactiveButton.checked:
            self.interactiveTimer.start()

    def runInteractive(self) -> None:
        node, entry = self.sets.currentSet(), self.sets.selectedVolume()
        if node is None or entry is None or entry.prompt_count == 0:
            return
        if self.worker is not None and self.worker.busy:        # one lane: after this run
            self.interactiveTimer.start()
            return
        with slicer.util.tryWithErrorDisplay("Interactive segmentation failed."):
            self.runInWorker(self.lib().gather_interactive(node, entry.volume), interactive=True)

    def cleanup(self) -> None:
        self.removeObservers()
        self.deliveryTimer.stop()
        self.interactiveTimer.stop()
        if self.worker is not None:
            self.worker.shutdown()
