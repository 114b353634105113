"""Segmenting images with a context set: the engine's main entry point.

>>> predictor = Predictor("box")
>>> context = ContextSet().add(image_a, boxes=[Box((10, 20, 5), (60, 70, 5))])
>>> mask = predictor.segment(image_b, context)        # uint8 SimpleITK image on image_b's grid
"""
import dataclasses
import os
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from .checkpoints import load_model
from .context import Box, ContextEntry, ContextError, ContextSet, Point
from .device import PRECISIONS, autocast, is_out_of_memory, out_of_memory_error, pick_device
from .geometry import (PreparedImage, box_to_model, point_to_model, prepare, threshold,
                       to_source_grid)
from .network import WSICLNet
from .prompts import render_boxes, render_points

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """Raised when the caller's cancel check returned True."""


@dataclasses.dataclass
class PreparedContext:
    """A context set on the model grid: ``images`` and ``prompts`` ``[1, L, 1, S, S, S]``."""

    images: torch.Tensor
    prompts: torch.Tensor
    kind: str
    name: str

    @classmethod
    def of(cls, images: Sequence[np.ndarray], prompts: Sequence[np.ndarray], kind: str,
           name: str) -> "PreparedContext":
        """From per-image ``[S, S, S]`` arrays."""
        return cls(torch.from_numpy(np.stack(images))[None, :, None],
                   torch.from_numpy(np.stack(prompts).astype(np.float32))[None, :, None],
                   kind, name)


@dataclasses.dataclass
class Segmentation:
    """A result on the target's own grid: ``mask`` (uint8 0/1) and, on request, the
    ``probability`` (float32 raw network output, linearly resampled)."""

    mask: sitk.Image
    probability: Optional[sitk.Image] = None


class Predictor:
    """Runs a WS-ICL network on SimpleITK images.

    Args:
        model: a loaded :class:`WSICLNet`, a bundled name (``"box"``, ``"point"``) or a
            weights file.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
        mini_context: context images processed at once; lower it if memory runs out.
        precision: ``"fp32"`` or ``"bf16"``. CUDA always uses bfloat16 autocast; on the
            CPU ``"bf16"`` is an opt-in that is several times faster on processors with
            bfloat16 instructions (raw outputs within 1e-2 of fp32).
    """

    def __init__(self, model: Union[str, os.PathLike, WSICLNet] = "box", device: str = "auto",
                 mini_context: int = 1, precision: str = "fp32") -> None:
        if mini_context < 1:
            raise ValueError(f"mini_context must be at least 1, got {mini_context}")
        self.device = pick_device(device)
        self.network = model if isinstance(model, WSICLNet) else load_model(model)
        self.network = self.network.to(self.device).eval()
        if self.device.type == "cpu":
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.metadata = self.network.metadata
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.mini_context = int(mini_context)
        self.precision = precision

    @property
    def size(self) -> int:
        """Edge of the cubic model grid in voxels."""
        return int(self.metadata.input_size)

    def prepare_context(self, context_set: ContextSet, cancel: Optional[CancelCheck] = None
                        ) -> PreparedContext:
        """Resamples every context image and renders its prompts on the model grid."""
        kind = self._check_kind(context_set)
        images, prompts = [], []
        for entry in context_set.entries:
            _check_cancel(cancel)
            prepared = prepare(entry.image, self.size, entry.name)
            images.append(prepared.array)
            prompts.append(self._prompt_channel(entry, prepared))
        return PreparedContext.of(images, prompts, kind, context_set.name)

    def _check_kind(self, context_set: ContextSet) -> str:
        """The set's prompt kind; an error if the model reads the other kind."""
        kind = context_set.prompt_kind()
        expected = self.metadata.prompt
        if expected is not None and kind != expected:
            raise ContextError(f"context set '{context_set.name}' has {kind} prompts but the "
                               f"model {self.metadata.source} reads {expected} prompts; "
                               f"use the {expected} model or {expected} prompts")
        return kind

    def _prompt_channel(self, entry: ContextEntry, prepared: PreparedImage) -> np.ndarray:
        shape = prepared.array.shape
        if entry.boxes:
            return render_boxes([box_to_model(b.min, b.max, b.space, prepared)
                                 for b in entry.boxes], shape)
        radius = int(self.metadata.point_radius)
        return render_points([point_to_model(p.position, p.space, prepared, radius)
                              for p in entry.points], shape, radius)

    def segment(self, target: sitk.Image, context: Union[ContextSet, PreparedContext],
                return_probability: bool = False, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelCheck] = None) -> Union[sitk.Image, Segmentation]:
        """Segments ``target`` with ``context``; a uint8 mask on the target's exact grid.

        With ``return_probability`` a :class:`Segmentation` with the probability map too.
        ``progress(fraction, message)`` is called as mini-contexts complete; ``cancel()``
        returning True stops the work between mini-contexts with :class:`Cancelled`.
        """
        if isinstance(context, ContextSet):
            context = self.prepare_context(context, cancel)
        prepared = prepare(target, self.size, "target")
        return self.segment_prepared(target, prepared, context, return_probability, progress,
                                      cancel)

    def segment_prepared(self, target: sitk.Image, prepared: PreparedImage,
                          context: PreparedContext, return_probability: bool,
                          progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]
                          ) -> Union[sitk.Image, Segmentation]:
        """Segments an already prepared target (``prepare(target, size)``) with a prepared
        context; the result is on ``target``'s grid."""
        raw = self._run(prepared.array, context, progress, cancel)
        probability = to_source_grid(raw, prepared.grid, target)
        mask = threshold(probability)
        return Segmentation(mask, probability) if return_probability else mask

    def segment_many(self, targets: Sequence[sitk.Image], context_set: ContextSet,
                     progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelCheck] = None) -> Iterator[Tuple[int, sitk.Image]]:
        """Yields ``(index, mask)`` for each target; the context set is prepared once.

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
                            points: Sequence[Point] = (), return_probability: bool = False,
                            cancel: Optional[CancelCheck] = None
                            ) -> Union[sitk.Image, Segmentation]:
        """Segments ``image`` from prompts on itself (the image is its own context)."""
        context_set = ContextSet(name="interactive").add(image, boxes, points, "the image")
        kind = self._check_kind(context_set)
        prepared = prepare(image, self.size, "the image")
        channel = self._prompt_channel(context_set.entries[0], prepared)
        context = PreparedContext.of([prepared.array], [channel], kind, context_set.name)
        return self.segment_prepared(image, prepared, context, return_probability, None, cancel)

    def _run(self, target: np.ndarray, context: PreparedContext,
             progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]) -> np.ndarray:
        """Raw network output ``[S, S, S]`` for a prepared target array."""
        total = context.images.shape[1]

        def after_chunk(done: int) -> None:
            _check_cancel(cancel)
            if progress is not None:
                progress(done / total, f"{done}/{total} context images")

        _check_cancel(cancel)
        target_tensor = torch.from_numpy(target)[None, None].to(self.device)
        try:
            with torch.inference_mode(), autocast(self.device, self.precision):
                raw = self.network(target_tensor, context.images, context.prompts,
                                   self.mini_context, after_chunk=after_chunk)
        except Exception as error:
            if is_out_of_memory(error):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise out_of_memory_error(self.device, self.mini_context) from None
            raise
        return raw[0, 0].float().cpu().numpy()


def _check_cancel(cancel: Optional[CancelCheck]) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")

