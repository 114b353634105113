"""Context sets on target volumes: gather on the main thread, compute anywhere, apply on the
main thread, all or nothing.

The split lets the widget run :meth:`SegmentationLogic.compute` in the inference worker
thread while every MRML read and write stays on the main thread. Nothing is written into
the scene until every target and structure has been computed, so a failure or a cancel
leaves the scene as it was.
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

import wsicl
from wsicl.checkpoints import BUNDLED_NOTES
from wsicl.confidence import calibration
from wsicl.server.client import RemotePredictor, served_name

from . import context_sets as sets
from .review import Judged, ReviewQueue
from .segments import SegmentWrite, undo, write_structure
from .settings import RunSettings
from .volumes import volume_to_image

Progress = Callable[[float, str], None]
Engine = Union[wsicl.Predictor, RemotePredictor]
"""Runs the network here or on a ``wsicl serve`` server; the same methods."""


@dataclasses.dataclass
class Structure:
    """One context set, copied out of the scene for the engine."""

    name: str
    colour: Tuple[float, float, float]
    context: wsicl.ContextSet


@dataclasses.dataclass
class Target:
    """One target volume, copied out of the scene: its node ID (to write the result back),
    its name (for progress) and its voxels."""

    node_id: str
    name: str
    image: sitk.Image

    @classmethod
    def of(cls, volume_node) -> "Target":
        image = volume_to_image(volume_node)
        if min(image.GetSize()) < 2:
            raise ValueError(f"'{volume_node.GetName()}' has a single slice (size "
                             f"{list(image.GetSize())}); WSICL segments 3D volumes")
        return cls(volume_node.GetID(), volume_node.GetName(), image)


@dataclasses.dataclass
class Job:
    """Everything the engine needs, with no reference into MRML data. In an interactive
    job the one target is the one context image, segmented from its own prompts."""

    structures: List[Structure]
    targets: List[Target]
    interactive: bool = False


@dataclasses.dataclass
class Result:
    """One structure on one target: the mask and what the engine says of its reliability
    (``confidence`` in [0, 1], None without evidence; ``review``: flagged)."""

    target_id: str
    structure: Structure
    mask: sitk.Image
    confidence: Optional[float] = None
    review: bool = False

    @classmethod
    def of(cls, target_id: str, structure: Structure, segmentation) -> "Result":
        if segmentation.evidence is None:
            return cls(target_id, structure, segmentation.mask)
        confidence = calibration().confidence(segmentation.evidence)
        return cls(target_id, structure, segmentation.mask, confidence,
                   calibration().review(confidence))


class SegmentationLogic:
    """Runs context sets on target volume nodes of ``scene``.

    Args:
        scene: the MRML scene.
        segmentations_logic: the Segmentations module logic (vtkSlicerSegmentationsModuleLogic).
    """

    def __init__(self, scene, segmentations_logic) -> None:
        self.scene = scene
        self.segmentations_logic = segmentations_logic
        self.history: List[List[SegmentWrite]] = []
        self.review = ReviewQueue()
        self._predictor: Optional[Engine] = None
        self._predictor_key: Optional[tuple] = None

    def predictor(self, settings: RunSettings, progress: Optional[Progress] = None,
                  token: Optional[str] = None) -> Engine:
        """A predictor for ``settings``, reused while they stay the same (loading takes
        seconds: call it in the worker); ``progress`` hears "loading weights" when they
        load. With ``settings.server``, a client of that server (``token``: its bearer
        token, kept out of the scene)."""
        key = (settings.key(), token)
        if self._predictor is None or key != self._predictor_key:
            if settings.server:
                if progress is not None:
                    progress(0.0, f"connecting to {settings.server}...")
                self._predictor = RemotePredictor(settings.server, token,
                                                  served_name(settings.model),
                                                  settings.refine, settings.prompt_kinds)
            else:
                if progress is not None:
                    progress(0.0, f"loading weights ({settings.model})...")
                self._predictor = wsicl.Predictor(
                    settings.model, settings.device, settings.mini_context,
                    settings.precision, settings.refine, settings.prompt_kinds)
                if self._predictor.device.type == "cpu":
                    wsicl.keep_freed_memory()  # Slicer keeps the peak reserved: ~2x faster
            if progress is not None and settings.model in BUNDLED_NOTES:
                progress(0.0, f"note: {BUNDLED_NOTES[settings.model]}")
            self._predictor_key = key
        return self._predictor

    def gather(self, set_nodes: Sequence, target_volumes: Sequence) -> Job:
        """Copies the context sets and targets out of the scene (main thread)."""
        if not set_nodes:
            raise ValueError("no context set: create one, add a volume and place a box or point")
        if not target_volumes:
            raise ValueError("no target volume: select one, or load volumes that are not in a "
                             "context set")
        structures = []
        for node in set_nodes:
            context = sets.to_engine(node)
            context.kinds()                  # an incomplete set fails here, before any work
            structures.append(Structure(node.GetName(), sets.colour(node), context))
        return Job(structures, [Target.of(v) for v in target_volumes])

    def gather_interactive(self, set_node, volume_node) -> Job:
        """A job that segments ``volume_node`` from its own prompts in ``set_node``."""
        entry = next((e for e in sets.context_volumes(set_node) if e.volume is volume_node),
                     None)
        if sets.prompt_kind(set_node) == "mask":
            raise ValueError(f"context set '{set_node.GetName()}' holds masks; interactive "
                             "mode needs box or point prompts: use a box or point set")
        if entry is None or entry.prompt_count == 0:
            raise ValueError(f"'{volume_node.GetName()}' has no prompt in context set "
                             f"'{set_node.GetName()}'; place a box or point on it")
        boxes, points = sets.engine_prompts(entry)
        target = Target.of(volume_node)
        context = wsicl.ContextSet(name=set_node.GetName()).add(target.image, boxes, points,
                                                               target.name)
        return Job([Structure(set_node.GetName(), sets.colour(set_node), context)], [target],
                   interactive=True)

    @staticmethod
    def compute(job: Job, predictor: Engine, progress: Optional[Progress] = None,
                cancel: Optional[Callable[[], bool]] = None) -> List[Result]:
        """Runs the engine on a job; touches no MRML node (safe in a worker thread)."""
        results = []
        steps = len(job.structures) * len(job.targets)
        for s_index, structure in enumerate(job.structures):
            context = None if job.interactive else predictor.prepare_context(
                structure.context, cancel)
            for t_index, target in enumerate(job.targets):
                done = s_index * len(job.targets) + t_index

                def report(fraction: float, message: str, done: int = done,
                           name: str = target.name) -> None:
                    if progress is not None:
                        progress((done + fraction) / steps,
                                 f"{structure.name} in {name}: {message}")

                if job.interactive:
                    [prompts] = structure.context.entries
                    result = predictor.segment_interactive(target.image, prompts.boxes,
                                                           prompts.points, cancel=cancel,
                                                           name=target.name)
                else:
                    result = predictor.segment(target.image, context, progress=report,
                                               cancel=cancel, name=target.name)
                results.append(Result.of(target.node_id, structure, result))
                report(1.0, "done")
        return results

    def apply(self, results: Sequence[Result], interactive: bool = False
              ) -> List[SegmentWrite]:
        """Writes results into the scene (main thread); undone entirely on any failure.
        Each segment carries its confidence as the tag ``WSICL.confidence``, and
        :attr:`review` becomes the run's review queue."""
        writes: List[SegmentWrite] = []
        try:
            for result in results:
                volume = self.scene.GetNodeByID(result.target_id)
                if volume is None:
                    raise ValueError("a target volume was removed from the scene while it was "
                                     "being segmented")
                writes.append(write_structure(self.scene, self.segmentations_logic, volume,
                                              result.mask, result.structure.name,
                                              result.structure.colour))
        except Exception:
            for write in reversed(writes):
                undo(self.scene, self.segmentations_logic, write)
            raise
        self.history.append(writes)
        judged = []
        for result, write in zip(results, writes):
            volume = self.scene.GetNodeByID(result.target_id)
            if result.confidence is not None:
                write.segmentation_node.GetSegmentation().GetSegment(write.segment_id).SetTag(
                    "WSICL.confidence", f"{result.confidence:.3f}")
            judged.append(Judged(result.target_id, volume.GetName(), result.structure.name,
                                 result.confidence, result.review))
        self.review = ReviewQueue(judged, interactive)
        return writes

    def undo_last(self) -> bool:
        """Reverts the last applied run (its review queue goes with it); False when there
        is nothing to undo."""
        if not self.history:
            return False
        self.review = ReviewQueue()
        for write in reversed(self.history.pop()):
            undo(self.scene, self.segmentations_logic, write)
        return True

    def process(self, set_nodes: Sequence, target_volumes: Sequence,
                settings: Optional[RunSettings] = None, progress: Optional[Progress] = None,
                token: Optional[str] = None) -> Dict[str, object]:
        """Segments every target with every context set, synchronously (``settings``:
        the defaults when None; ``token``: the server's, when they name one). Returns
        ``{target volume name: segmentation node}``.
        """
        job = self.gather(set_nodes, target_volumes)
        predictor = self.predictor(settings or RunSettings(), progress, token)
        results = self.compute(job, predictor, progress)
        writes = self.apply(results)
        return {self.scene.GetNodeByID(r.target_id).GetName(): w.segmentation_node
                for r, w in zip(results, writes)}


def non_context_volumes(scene) -> List[object]:
    """Scalar volumes of the scene that are in no context set (the "Segment all" targets)."""
    in_sets = {entry.volume.GetID() for node in sets.context_sets(scene)
               for entry in sets.context_volumes(node)}
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    volumes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return [v for v in volumes
            if v.GetID() not in in_sets and not v.IsA("vtkMRMLLabelMapVolumeNode")]
