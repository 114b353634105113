"""Simulated weak prompts, as in the WS-ICL paper.

On a binary mask in model-grid array order ``[D, H, W]`` (axis 0 axial):

1. choose ``slices`` axial slices at random, each with probability proportional to the
   structure's area in it (without replacement while enough slices have structure);
2. on each chosen slice, one prompt per 2D connected component: a tight box whose corners
   each move by ``round(N(0, 1))`` voxels, or a point drawn uniformly inside the component.

Boxes come as half-open array ranges with a width-1 range on axis 0 (a 2D box on that
slice); points as array indices. Both feed :func:`wsicl.prompts.render_boxes` /
:func:`wsicl.prompts.render_points` directly.
"""
from typing import List, Tuple, Union

import numpy as np
from scipy import ndimage

from ..prompts import IndexBox, IndexPoint, render_boxes, render_points

Prompt = Union[IndexBox, IndexPoint]


def choose_slices(mask: np.ndarray, slices: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of axial slices drawn with probability proportional to structure area."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1).astype(float)
    candidates = np.flatnonzero(areas)
    if candidates.size == 0:
        return np.array([], dtype=int)
    count = min(int(slices), candidates.size)
    return rng.choice(candidates, size=count, replace=False,
                      p=areas[candidates] / areas[candidates].sum())


def _components(plane: np.ndarray) -> List[np.ndarray]:
    """Voxel coordinates ``[N, 2]`` of each 8-connected component of a 2D mask."""
    labels, count = ndimage.label(plane, structure=np.ones((3, 3), dtype=bool))
    return [np.argwhere(labels == value) for value in range(1, count + 1)]


def jittered_box(axial: int, pixels: np.ndarray, shape, rng: np.random.Generator) -> IndexBox:
    """The tight box of a component's ``[N, 2]`` pixels on slice ``axial``, each corner
    moved by round(N(0, 1)) voxels and kept inside the grid and non-empty."""
    low = pixels.min(axis=0) + np.rint(rng.standard_normal(2)).astype(int)
    high = pixels.max(axis=0) + 1 + np.rint(rng.standard_normal(2)).astype(int)
    ranges = [(axial, axial + 1)]
    for axis in range(2):
        size = shape[axis + 1]
        start = int(np.clip(low[axis], 0, size - 1))
        stop = int(np.clip(high[axis], start + 1, size))
        ranges.append((start, stop))
    return tuple(ranges)


def simulate_prompts(mask: np.ndarray, kind: str, slices: int, rng: np.random.Generator
                     ) -> List[Prompt]:
    """Simulated boxes or points (``kind``) on ``slices`` area-weighted axial slices."""
    if kind not in ("box", "point"):
        raise ValueError(f"unknown prompt kind {kind!r}; use 'box' or 'point'")
    mask = np.asarray(mask) > 0
    prompts: List[Prompt] = []
    for axial in choose_slices(mask, slices, rng):
        for pixels in _components(mask[axial]):
            if kind == "box":
                prompts.append(jittered_box(int(axial), pixels, mask.shape, rng))
            else:
                b, c = pixels[rng.integers(len(pixels))]
                prompts.append((int(axial), int(b), int(c)))
    return prompts


def simulated_channel(mask: np.ndarray, kind: str, slices: int, rng: np.random.Generator,
                      radius: int = 6) -> Tuple[np.ndarray, List[Prompt]]:
    """A float32 prompt channel of simulated prompts on ``mask``, and the prompts; for
    ``kind == "mask"`` the dense mask itself (one prompt)."""
    if kind == "mask":
        return (np.asarray(mask) > 0).astype(np.float32), [mask]
    prompts = simulate_prompts(mask, kind, slices, rng)
    if kind == "box":
        return render_boxes(prompts, mask.shape).astype(np.float32), prompts
    return render_points(prompts, mask.shape, radius), prompts
