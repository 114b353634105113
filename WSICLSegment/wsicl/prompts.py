"""Prompt channels: boxes and points rendered on a model-grid array.

All coordinates here are array indices ``(a, b, c)`` along array axes 0, 1, 2 of the
``[D, H, W]`` model grid (the conventions of the reference implementation):

- a box is ``((a0, a1), (b0, b1), (c0, c1))``, half-open ranges; a range of width 1 is a 2D
  box on that slice and is widened to 3 slices ``[s-1, s+2)`` (``[0, 3)`` / ``[S-3, S)`` at
  the borders); the box is a filled rectangle of ones; several boxes are a union;
- a point is ``(a, b, c)``; it becomes a ball of radius ``r`` voxels
  (``x^2 + y^2 + z^2 <= r^2``) valued by its Euclidean distance transform divided by the
  maximum (1 at the centre); several balls combine by maximum; balls are clipped at the
  border.

A prompt partly outside the grid is clipped; one wholly outside is an error.
"""
from functools import lru_cache
from typing import Sequence, Tuple

import numpy as np
from scipy.ndimage import distance_transform_edt

IndexBox = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]
IndexPoint = Tuple[int, int, int]
Shape3 = Tuple[int, int, int]


class PromptOutsideError(ValueError):
    """A prompt lies wholly outside the image it was given for."""


def _widened(start: int, stop: int, size: int) -> Tuple[int, int]:
    """A width-1 range becomes 3 slices centred on it, kept inside ``[0, size)``."""
    if stop - start != 1:
        return start, stop
    return min(max(start - 1, 0), max(size - 3, 0)), min(max(start + 2, 3), size)


def _check_shape(shape: Sequence[int]) -> Shape3:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"prompt grid shape must be 3 positive sizes, got {list(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def render_boxes(boxes: Sequence[IndexBox], shape: Sequence[int]) -> np.ndarray:
    """The union of filled boxes as a ``uint8`` array of ``shape`` (array index order)."""
    shape = _check_shape(shape)
    channel = np.zeros(shape, dtype=np.uint8)
    for box in boxes:
        ranges = [tuple(int(v) for v in r) for r in box]
        if len(ranges) != 3 or any(len(r) != 2 or r[1] <= r[0] for r in ranges):
            raise ValueError(f"box {box} is not three non-empty half-open ranges [start, stop)")
        if any(stop <= 0 or start >= size for (start, stop), size in zip(ranges, shape)):
            raise PromptOutsideError(f"box {box} lies wholly outside the grid {list(shape)}")
        slices = []
        for (start, stop), size in zip(ranges, shape):
            start, stop = _widened(start, stop, size)
            slices.append(slice(max(start, 0), min(stop, size)))
        channel[tuple(slices)] = 1
    return channel


@lru_cache(maxsize=8)
def ball_template(radius: int) -> np.ndarray:
    """``[2r+1]^3`` float32 ball valued by its normalised Euclidean distance transform."""
    offsets = np.arange(-radius, radius + 1)
    squared = (offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2
               + offsets[None, None, :] ** 2)
    edt = distance_transform_edt(squared <= radius * radius)
    template = (edt / edt.max()).astype(np.float32)
    template.setflags(write=False)
    return template


def ball_slices(centre: Sequence[int], shape: Sequence[int], radius: int
                ) -> Tuple[Tuple[slice, ...], Tuple[slice, ...]]:
    """Where a ``[2r+1]^3`` ball template centred at ``centre`` lands on a grid of
    ``shape``: the grid's slices and the matching template slices (clipped at borders)."""
    target, source = [], []
    for c, size in zip(centre, shape):
        lo, hi = c - radius, c + radius + 1
        target.append(slice(max(lo, 0), min(hi, size)))
        source.append(slice(max(lo, 0) - lo, min(hi, size) - lo))
    return tuple(target), tuple(source)


def render_points(points: Sequence[IndexPoint], shape: Sequence[int],
                  radius: int = 6) -> np.ndarray:
    """Balls of ``radius`` voxels around ``points``, combined by maximum, as float32."""
    shape = _check_shape(shape)
    if radius < 0:
        raise ValueError(f"point radius must be >= 0, got {radius}")
    channel = np.zeros(shape, dtype=np.float32)
    template = ball_template(int(radius))
    for point in points:
        centre = [int(v) for v in point]
        if len(centre) != 3:
            raise ValueError(f"point {point} does not have 3 coordinates")
        if any(c + radius < 0 or c - radius >= size for c, size in zip(centre, shape)):
            raise PromptOutsideError(f"point {point} lies wholly outside the grid {list(shape)}")
        target, source = ball_slices(centre, shape, radius)
        np.maximum(channel[target], template[source], out=channel[target])
    return channel
