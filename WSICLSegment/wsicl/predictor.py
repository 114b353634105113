"""Segmenting images with a context set: the engine's main entry point.

>>> predictor = Predictor("box")
>>> context = ContextSet().add(image_a, boxes=[Box((10, 20, 5), (60, 70, 5))])
>>> result = predictor.segment(image_b, context)      # on image_b's grid
>>> result.mask                                       # uint8 0/1 SimpleITK image
"""
import dataclasses
import hashlib
import os
import warnings
from collections import OrderedDict
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from .checkpoints import BUNDLED_NOTES, load_model
from .confidence import Evidence, box_side_mm, boxes_from_mask, evidence, prompt_fit
from .context import (Box, ContextEntry, ContextError, ContextSet, Point, check_kinds,
                      note_clipped_boxes)
from .crops import CROP_MARGIN, MIN_SIDE_MM, POINT_SIDE_MM, Region, crop_region, whole_region
from .device import (autocast, is_out_of_memory, out_of_memory_error, pick_device,
                     resolve_precision)
from .geometry import (Grid, PreparedImage, box_corners, box_corners_lps, box_to_model,
                       canonical_grid, mask_on_grid, mask_to_model, nonzero_faces,
                       point_to_model, prepare, require_image, threshold, to_lps,
                       to_source_grid)
from .masks import mask_corners
from .network import EncodedTarget, WSICLNet
from .prompts import render_boxes, render_points

ProgressCallback = Callable[[float, str], None]
ModelInputs = Tuple[np.ndarray, np.ndarray]
"""A context image and its prompt channel on the model grid, ``[S, S, S]`` each."""
CONTEXT_CACHE_BYTES = 256 * 1024 * 1024
"""Model inputs of recent context entries a predictor remembers, in bytes (an entry holds
about 3 MB at 64^3 and 24 MB at 128^3, whole view and crop)."""
CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """Raised when the caller's cancel check returned True."""


@dataclasses.dataclass
class Guide:
    """Where the context's prompts lie, as a location prior for the target: the union of
    their bounding boxes over all context images, each as fractions ``[0, 1]`` of its own
    canonically oriented image's extent (axis order of the oriented grid's index), and the
    crop rule's smallest side for the prompt kind (mm)."""

    low: np.ndarray
    high: np.ndarray
    min_side_mm: float

    def region(self, oriented: Grid) -> Optional[Region]:
        """The first-pass crop on a target's oriented grid: the fractions mapped into its
        extent, then the crop rule (:data:`CROP_MARGIN`); None where that crop would be
        nearly the whole view anyway (at least 90 % of every axis)."""
        size = np.asarray(oriented.size, dtype=float)
        region = crop_region(self.low * size - 0.5, self.high * size - 0.5, oriented.spacing,
                             oriented.size, CROP_MARGIN, self.min_side_mm)
        return None if np.all(region[1] - region[0] >= 0.9 * size) else region


class ModelNote(UserWarning):
    """What a user must know about the chosen model (said, not raised)."""


class RefineNote(UserWarning):
    """Refining at the structure's scale could not help this time (said, not raised)."""


@dataclasses.dataclass
class PreparedContext:
    """A context set on the model grid: ``images`` and ``prompts`` ``[1, L, 1, S, S, S]``
    (whole views); for models trained on crops, ``crops`` holds the same context with each
    image cropped around its own prompts (the second pass); ``side_mm``, the prompt boxes'
    scale (:func:`wsicl.confidence.box_side_mm`; None without boxes); ``check_entry``, the
    context entry with the most boxes, which the cycle check segments back."""

    images: torch.Tensor
    prompts: torch.Tensor
    name: str
    crops: Optional["PreparedContext"] = None
    guide: Optional["Guide"] = None
    side_mm: Optional[float] = None
    check_entry: Optional[ContextEntry] = None

    @classmethod
    def of(cls, images: Sequence[np.ndarray], prompts: Sequence[np.ndarray], name: str
           ) -> "PreparedContext":
        """From per-image ``[S, S, S]`` arrays."""
        return cls(torch.from_numpy(np.stack(images))[None, :, None],
                   torch.from_numpy(np.stack(prompts).astype(np.float32))[None, :, None],
                   name)


@dataclasses.dataclass
class Segmentation:
    """A result on the target's own grid: ``mask`` (uint8 0/1) and ``probability``
    (float32, the network output on the scale where 0.5 is the threshold, linearly
    resampled; outside a crop 0; None from a server, which sends the mask only), and what
    the output says about its own reliability (:mod:`wsicl.confidence`; None from a
    server)."""

    mask: sitk.Image
    probability: Optional[sitk.Image]
    evidence: Optional[Evidence] = None


class Predictor:
    """Runs a WS-ICL network on SimpleITK images.

    Args:
        model: a loaded :class:`WSICLNet`, a bundled name (``"box"``, ``"point"``) or a
            weights file.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
        mini_context: context images processed at once; lower it if memory runs out.
        precision: ``"auto"`` (bfloat16 autocast on CUDA and on CPUs with bfloat16
            instructions, several times faster there; fp32 elsewhere, where bfloat16 is
            emulated and slower), ``"fp32"`` or ``"bf16"``. ``self.precision`` says which
            runs.
        refine: work at the structure's own scale (:mod:`wsicl.crops`): interactive mode
            on a crop around the prompts; in-context mode with each context image cropped
            around its prompts and the target first on a crop where the context's prompts
            lie (:class:`Guide`), then, only if that finds nothing, in two passes (whole
            view, then a crop around the first answer). ``None`` follows the model
            (``metadata.input_policy == "crop"``).
        prompt_kinds: the context kinds the model reads (``"box"``, ``"point"``,
            ``"mask"``), when its file does not say or says it wrongly; ``None`` takes
            ``metadata.prompt_kinds``.
        probability: results carry the probability image (float32: 4 bytes per target
            voxel beside the mask's 1); False gives the mask only, resampled onto the
            target slab by slab (a server's results: memory a small multiple of the
            target's voxels, cancel checked between slabs).
        cycle_check: in context, segment the context image with the most boxes back from
            each result (the target as its only context image, boxes drawn from the
            result) and score how well that answers its boxes: the strongest evidence of a
            result's reliability (:mod:`wsicl.confidence`), at the cost of one more
            segmentation with one context image per target.
    """

    def __init__(self, model: Union[str, os.PathLike, WSICLNet] = "box", device: str = "auto",
                 mini_context: int = 1, precision: str = "auto",
                 refine: Optional[bool] = None,
                 prompt_kinds: Optional[Sequence[str]] = None, probability: bool = True,
                 cycle_check: bool = False) -> None:
        if mini_context < 1:
            raise ValueError(f"mini_context must be at least 1, got {mini_context}")
        self.device = pick_device(device)
        self.network = model if isinstance(model, WSICLNet) else load_model(model)
        self.network = self.network.to(self.device).eval()
        if self.device.type == "cpu":
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.metadata = self.network.metadata
        self.mini_context = int(mini_context)
        self.precision = resolve_precision(self.device, precision)
        self.refine = self.metadata.input_policy == "crop" if refine is None else bool(refine)
        self.probability = bool(probability)
        self.cycle_check = bool(cycle_check)
        self._encoded: Tuple[bytes, Optional[EncodedTarget]] = (b"", None)
        self._context_cache: "OrderedDict[bytes, Tuple[ModelInputs, Optional[ModelInputs]]]" = \
            OrderedDict()
        self.kinds = list(self.metadata.prompt_kinds) if prompt_kinds is None else \
            check_kinds(prompt_kinds, "prompt_kinds")
        if isinstance(model, str) and model in BUNDLED_NOTES:
            warnings.warn(BUNDLED_NOTES[model], ModelNote, stacklevel=2)

    def describe(self) -> str:
        """One line: the model, what it reads, its grid, device and precision."""
        return (f"model {self.metadata.source} ({', '.join(self.kinds)} prompts, "
                f"{self.size}^3 grid) on {self.device.type}, {self.precision}")

    @property
    def size(self) -> int:
        """Edge of the cubic model grid in voxels."""
        return int(self.metadata.input_size)

    def prepare_context(self, context_set: ContextSet, cancel: Optional[CancelCheck] = None
                        ) -> PreparedContext:
        """Resamples every context image and renders its prompts on the model grid (and,
        when refining, once more on a crop around its prompts)."""
        self.require_kinds(context_set.kinds(), context_set.name)
        whole: List[ModelInputs] = []
        cropped: List[ModelInputs] = []
        for entry in context_set.entries:
            check_cancel(cancel)
            entry_whole, entry_crop = self._prepared_entry(entry)
            whole.append(entry_whole)
            if self.refine:
                cropped.append(entry_crop)
        result = PreparedContext.of(*zip(*whole), context_set.name)
        if self.refine:
            result.crops = PreparedContext.of(*zip(*cropped), context_set.name)
            result.guide = self._guide(context_set.entries)
        result.side_mm = box_side_mm([corners for entry in context_set.entries
                                      for corners in self._box_corners(entry)])
        boxed = [entry for entry in context_set.entries if entry.boxes]
        result.check_entry = max(boxed, key=lambda entry: len(entry.boxes)) if boxed else None
        if result.crops is not None:
            result.crops.side_mm = result.side_mm
        return result

    def _guide(self, entries: Sequence[ContextEntry]) -> Guide:
        """The context-guided first-pass prior of ``entries`` (see :class:`Guide`)."""
        lows, highs = [], []
        for entry in entries:
            oriented = canonical_grid(entry.image)
            low, high = self._prompt_extent(entry, oriented)
            size = np.asarray(oriented.size, dtype=float)
            lows.append((low + 0.5) / size)
            highs.append((high + 0.5) / size)
        points_only = all(entry.points and not entry.boxes and entry.mask is None
                          for entry in entries)
        return Guide(np.clip(np.min(lows, 0), 0, 1), np.clip(np.max(highs, 0), 0, 1),
                     POINT_SIDE_MM if points_only else MIN_SIDE_MM)

    def _prepared_entry(self, entry: ContextEntry
                        ) -> Tuple[ModelInputs, Optional[ModelInputs]]:
        """One context image and its prompt channel on the model grid, whole view and (when
        refining) crop; recent entries are remembered (:data:`CONTEXT_CACHE_BYTES`), keyed
        by the image's voxels and geometry, the prompts and the mask, so a context set
        used again (another run, another target list) is not resampled again."""
        key = entry.digest() + bytes([self.refine])   # refining adds the crop
        if key in self._context_cache:
            self._context_cache.move_to_end(key)
            return self._context_cache[key]
        prepared = self._prepare(entry.image, entry.name)
        whole = (prepared.array, self._prompt_channel(entry, prepared))
        crop = None
        if self.refine:
            cropped = self._prepare(entry.image, entry.name,
                                    self._prompt_region(entry, prepared.oriented))
            crop = (cropped.array, self._prompt_channel(entry, cropped))
        self._context_cache[key] = (whole, crop)
        while len(self._context_cache) > 1 and sum(
                array.nbytes for inputs in self._context_cache.values()
                for pair in inputs if pair is not None for array in pair) > CONTEXT_CACHE_BYTES:
            self._context_cache.popitem(last=False)
        return whole, crop

    def _prepare(self, image: sitk.Image, name: str, region: Optional[Region] = None,
                 cancel: Optional[CancelCheck] = None) -> PreparedImage:
        return prepare(image, self.size, name, region, self.metadata.normalisation,
                       lambda: check_cancel(cancel))

    @staticmethod
    def _box_corners(entry: ContextEntry) -> List[np.ndarray]:
        """The 8 LPS corners (mm) of each of an entry's boxes."""
        return [box_corners_lps(b.min, b.max, b.space, Grid.of(entry.image))
                for b in entry.boxes]

    @classmethod
    def _prompt_extent(cls, entry: ContextEntry, oriented: Grid) -> Region:
        """The bounding box of an entry's prompts (boxes, points, mask), in index
        coordinates of the reoriented image."""
        corners = cls._box_corners(entry)
        corners += [to_lps(p.position, p.space, Grid.of(entry.image)) for p in entry.points]
        corners += [mask_corners(entry.mask)] if entry.mask is not None else []
        index = oriented.lps_to_index(np.concatenate(corners))
        return index.min(0), index.max(0)

    def _prompt_region(self, entry: ContextEntry, oriented: Grid) -> Region:
        """The crop around an entry's prompts, in index coordinates of the reoriented
        image."""
        min_side = POINT_SIDE_MM if entry.points else MIN_SIDE_MM
        return crop_region(*self._prompt_extent(entry, oriented), oriented.spacing,
                           oriented.size, CROP_MARGIN, min_side)

    def _mask_region(self, mask: np.ndarray, prepared: PreparedImage) -> Region:
        """The crop around a model-grid mask's bounding box, in index coordinates of the
        reoriented image."""
        index = prepared.oriented.lps_to_index(prepared.grid.index_to_lps(
            box_corners(*nonzero_faces(mask))))
        return crop_region(index.min(0), index.max(0), prepared.oriented.spacing,
                           prepared.oriented.size, CROP_MARGIN, MIN_SIDE_MM)

    def require_kinds(self, kinds: Sequence[str], name: str) -> None:
        """An error naming the model and the remedy if it was not trained for ``kinds``
        (a model that does not say what it reads takes any kind)."""
        foreign = [kind for kind in kinds if self.kinds and kind not in self.kinds]
        if foreign:
            reads = " or ".join(self.kinds)
            raise ContextError(
                f"context set '{name}' has {' and '.join(foreign)} prompts but the model "
                f"{self.metadata.source} was trained for {reads} prompts; give {reads} "
                f"prompts, use a model trained for {foreign[0]} prompts, or, if the model "
                "file is misnamed, state its kind (--context-kind on the command line, "
                "'Model reads' in the Slicer panel)")

    def _prompt_channel(self, entry: ContextEntry, prepared: PreparedImage) -> np.ndarray:
        shape = prepared.array.shape
        if entry.mask is not None:
            return mask_to_model(entry.mask, prepared)
        if entry.boxes:
            return render_boxes([box_to_model(b.min, b.max, b.space, prepared)
                                 for b in entry.boxes], shape)
        radius = int(self.metadata.point_radius)
        return render_points([point_to_model(p.position, p.space, prepared, radius)
                              for p in entry.points], shape, radius)

    def segment(self, target: sitk.Image, context: Union[ContextSet, PreparedContext],
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelCheck] = None, name: str = "target") -> Segmentation:
        """Segments ``target`` with ``context``; the mask and probability on the target's
        exact grid.

        ``progress(fraction, message)`` is called as mini-contexts complete; ``cancel()``
        returning True stops the work between the steps of preparing the target, between
        mini-contexts and between slabs of the result with :class:`Cancelled`;
        ``name`` (e.g. the file) names the target in error messages.
        """
        require_image(target, name)
        if isinstance(context, ContextSet):
            context = self.prepare_context(context, cancel)
        result = self._segment(target, context, progress, cancel, name)
        if self.cycle_check and context.check_entry is not None and not result.evidence.empty:
            result.evidence = dataclasses.replace(
                result.evidence, fit=self._cycle_fit(target, result.mask, context.check_entry,
                                                     cancel))
        return result

    def _cycle_fit(self, target: sitk.Image, mask: sitk.Image, entry: ContextEntry,
                   cancel: Optional[CancelCheck]) -> Optional[float]:
        """The cycle check (see the class notes): how well ``entry.image`` segmented from
        ``target`` with boxes drawn from ``mask`` answers ``entry``'s own prompts."""
        back = ContextSet(name="cycle check").add(target, boxes=boxes_from_mask(mask))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RefineNote)
            returned = self._segment(entry.image, self.prepare_context(back, cancel), None,
                                     cancel, entry.name)
        return prompt_fit(returned.mask, entry)

    def _segment(self, target: sitk.Image, context: PreparedContext,
                 progress: Optional[ProgressCallback], cancel: Optional[CancelCheck],
                 name: str) -> Segmentation:
        """:meth:`segment` on a prepared context, without the cycle check."""
        if not (self.refine and context.crops is not None):
            return self.segment_prepared(target, self._prepare(target, name, None, cancel),
                                         context, progress, cancel)

        def part(start: float, share: float, label: str) -> ProgressCallback:
            def report(fraction: float, message: str) -> None:
                if progress is not None:
                    progress(start + share * fraction, f"{label}: {message}")
            return report

        region = context.guide.region(canonical_grid(target, name)) if context.guide else None
        if region is not None:     # first, where the context's prompts say the structure is
            guided = self._prepare(target, name, region, cancel)
            output = self._run(guided.array, context.crops,
                               part(0.0, 0.5, "where the context points"), cancel)
            if (output >= 0.5).any():
                return self._on_target(output, guided, target, cancel, context.side_mm)
        start, share = (0.5, 0.25) if region is not None else (0.0, 0.5)
        prepared = self._prepare(target, name, None, cancel)   # the whole view, if needed
        first = self._run(prepared.array, context, part(start, share, "whole view"), cancel)
        if not (first >= 0.5).any():
            warnings.warn(f"{name}: the whole-view pass found nothing, so there is no region "
                          "to refine and the result is empty; check that the context marks "
                          "this structure, or add context images", RefineNote, stacklevel=2)
            return self._on_target(first, prepared, target, cancel, context.side_mm)
        cropped = self._prepare(target, name, self._mask_region(first >= 0.5, prepared),
                                cancel)
        return self.segment_prepared(target, cropped, context.crops,
                                     part(start + share, 1.0 - start - share, "refined"),
                                     cancel)

    def segment_prepared(self, target: sitk.Image, prepared: PreparedImage,
                          context: PreparedContext, progress: Optional[ProgressCallback] = None,
                          cancel: Optional[CancelCheck] = None) -> Segmentation:
        """Segments an already prepared target (``prepare(target, size)``) with a prepared
        context; the result is on ``target``'s grid."""
        output = self._run(prepared.array, context, progress, cancel)
        return self._on_target(output, prepared, target, cancel, context.side_mm)

    def segment_many(self, targets: Sequence[sitk.Image], context_set: ContextSet,
                     progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelCheck] = None
                     ) -> Iterator[Tuple[int, Segmentation]]:
        """Yields ``(index, segmentation)`` for each target; the context set is prepared
        once.

        ``progress(fraction, message)`` covers the whole batch; ``cancel`` is checked
        between and inside targets.
        """
        context = self.prepare_context(context_set, cancel)
        count = len(targets)
        for index, target in enumerate(targets):
            def report(fraction: float, message: str, index: int = index) -> None:
                if progress is not None:
                    progress((index + fraction) / count, f"target {index + 1}/{count}: {message}")
            yield index, self.segment(target, context, progress=report, cancel=cancel)

    def segment_interactive(self, image: sitk.Image, boxes: Sequence[Box] = (),
                            points: Sequence[Point] = (), cancel: Optional[CancelCheck] = None,
                            name: str = "the image") -> Segmentation:
        """Segments ``image`` from prompts on itself (the image is its own context).

        When refining, the crop around the prompts grows (x1.5, moved towards the faces the
        answer touches) and the network runs again while the answer runs into a face of the
        crop that is not the image's, at most :data:`ZOOM_STEPS` times.
        """
        entry = ContextEntry(require_image(image, name), list(boxes), list(points), name)
        note_clipped_boxes(entry)
        if entry.prompt_kind not in ("box", "point"):
            raise ContextError("interactive mode needs boxes or points on the image, of one "
                               "kind")
        self.require_kinds([entry.prompt_kind], "interactive")
        oriented = canonical_grid(image) if self.refine else None
        region = self._prompt_region(entry, oriented) if self.refine else None
        if region is not None and np.allclose(np.concatenate(region), np.concatenate(
                whole_region(oriented.size))):
            warnings.warn(f"{name}: the prompts span the whole image, so refining at the "
                          "structure's scale changes nothing; the whole view is segmented",
                          RefineNote, stacklevel=2)
        for step in range(ZOOM_STEPS + 1):
            prepared = self._prepare(image, name, region, cancel)
            channel = self._prompt_channel(entry, prepared)
            context = PreparedContext.of([prepared.array], [channel], "interactive")
            output = self._run(prepared.array, context, None, cancel)
            grown = _grown(region, output >= 0.5, oriented) if self.refine else None
            if grown is None or step == ZOOM_STEPS:
                break
            region = grown
        result = self._on_target(output, prepared, image, cancel,
                                 box_side_mm(self._box_corners(entry)))
        result.evidence = dataclasses.replace(result.evidence,
                                              fit=prompt_fit(result.mask, entry))
        return result

    def _on_target(self, output: np.ndarray, prepared: PreparedImage, target: sitk.Image,
                   cancel: Optional[CancelCheck], prompt_side_mm: Optional[float]
                   ) -> Segmentation:
        """A model-grid output (0.5 = threshold) as the mask on ``target``'s grid, the
        probability unless ``self.probability`` is False (see the class notes), and the
        output's evidence about itself given the prompts' scale ``prompt_side_mm``."""
        found = evidence(output, prepared.grid.spacing, prompt_side_mm)
        if not self.probability:
            return Segmentation(mask_on_grid(output, prepared.grid, target,
                                             check=lambda: check_cancel(cancel)), None, found)
        probability = to_source_grid(output, prepared.grid, target)
        return Segmentation(threshold(probability), probability, found)

    def _encode(self, target: np.ndarray, target_tensor: torch.Tensor) -> EncodedTarget:
        """The target's encoder features, reused while the model-grid target is the same
        (further context sets on one volume, prompt updates at an unchanged crop); the last
        target's features stay in memory (on the device) until another target comes."""
        key = hashlib.blake2b(np.ascontiguousarray(target).data, digest_size=16).digest()
        if self._encoded[0] != key:
            self._encoded = (b"", None)        # free the old features before computing
            self._encoded = (key, self.network.encode_target(target_tensor))
        return self._encoded[1]

    def _run(self, target: np.ndarray, context: PreparedContext,
             progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]) -> np.ndarray:
        """Network output ``[S, S, S]`` for a prepared target array, on the scale where
        0.5 is the threshold (raw output, or the sigmoid of a logit)."""
        total = context.images.shape[1]

        def after_chunk(done: int) -> None:
            check_cancel(cancel)
            if progress is not None:
                progress(done / total, f"{done}/{total} context images")

        check_cancel(cancel)
        target_tensor = torch.from_numpy(target)[None, None].to(self.device)
        try:
            with torch.inference_mode(), autocast(self.device, self.precision):
                raw = self.network(target_tensor, context.images, context.prompts,
                                   self.mini_context, after_chunk=after_chunk,
                                   encoded=self._encode(target, target_tensor))
        except Exception as error:
            if is_out_of_memory(error):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise out_of_memory_error(self.device, self.mini_context) from None
            raise
        output = raw[0, 0].float()
        if self.metadata.output == "logit":
            output = torch.sigmoid(output)
        return output.cpu().numpy()


ZOOM_STEPS = 2
"""How many times interactive refinement may grow its crop (nnInteractive's auto-zoom)."""


def _grown(region: Region, mask: np.ndarray, oriented: Grid) -> Optional[Region]:
    """A crop 1.5 x larger, moved by a quarter of its side towards each face of ``region``
    that ``mask`` (model-grid array order) touches, where that face is not the image's (a
    mask running into both faces of an axis grows on both sides); ``None`` when the mask
    touches no such face."""
    low, high = region
    bound_low, bound_high = whole_region(oriented.size)
    shift = np.zeros(3)
    touched = False
    for array_axis in range(3):
        axis = 2 - array_axis                      # array order (k, j, i) -> index (i, j, k)
        first, last = np.take(mask, 0, array_axis), np.take(mask, -1, array_axis)
        if first.any() and low[axis] > bound_low[axis] + 1e-6:
            shift[axis] -= 0.25 * (high[axis] - low[axis])
            touched = True
        if last.any() and high[axis] < bound_high[axis] - 1e-6:
            shift[axis] += 0.25 * (high[axis] - low[axis])
            touched = True
    if not touched:
        return None
    centre, half = (low + high) / 2 + shift, 0.75 * (high - low)
    return crop_region(centre - half, centre + half, oriented.spacing, oriented.size,
                       margin=1.0, min_side_mm=0.0)


def check_cancel(cancel: Optional[CancelCheck]) -> None:
    """:class:`Cancelled` if the caller's ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled")

