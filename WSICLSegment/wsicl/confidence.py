"""How far to trust one result: evidence read off the network's own output, and a
confidence in [0, 1] that the result overlaps the structure well (Dice >= 0.5).

The evidence costs no extra network pass; it is read on the model grid (array order
``[k, j, i]`` of the prepared image, spacing in mm), where the output's scale puts the
threshold at 0.5:

- ``sharpness``: mean ``|2p - 1|`` over the band of voxels within 2 of the predicted
  boundary (a network that hesitates at the edge of its answer gives a blurred band);
- ``inside``: mean output inside the predicted mask (how sure it is of what it marked);
- ``size``: log of the cube root of the predicted volume over the prompts' scale (the
  geometric mean in-plane side of the prompt boxes, mm): a 5 mL liver marked with boxes
  of 15 cm sides is suspect; 0 where the prompts carry no scale (points, masks), the
  calibration's typical value is used instead;
- ``cut``: share of the mask's voxels on the faces of the model grid (a structure that runs
  out of the view it was segmented in);
- ``fit``: how well a mask answers prompts (:func:`prompt_fit`): interactively, the
  result against the target's own prompts (free); in context, with the cycle check on,
  the context image segmented back from the result (the target as the only context image,
  boxes drawn from the result) against the context image's prompts (one more network
  pass); None otherwise, and then the calibration's typical value is used.

:func:`calibration` (``models/confidence.json``, written by ``scripts/fit_confidence.py``
from the development benchmark only) combines them by logistic regression; an empty result
has confidence 0. Results under its ``review_below`` are flagged for review.
"""
import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .context import Box, ContextEntry
from .geometry import Grid, box_corners_lps, to_lps

CALIBRATION_FILE = Path(__file__).resolve().parent / "models" / "confidence.json"
FEATURES = ("sharpness", "inside", "size", "cut", "fit")
BAND_VOXELS = 2


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What the network's output says about its own answer (see the module notes)."""

    sharpness: float
    inside: float
    size: Optional[float]
    cut: float
    empty: bool
    fit: Optional[float] = None

    def features(self, typical_size: float, typical_fit: float) -> np.ndarray:
        """The regression's inputs in :data:`FEATURES` order (unknowns as typical)."""
        size = typical_size if self.size is None else self.size
        fit = typical_fit if self.fit is None else self.fit
        return np.array([self.sharpness, self.inside, size, self.cut, fit])

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def evidence(output: np.ndarray, spacing_mm: Sequence[float],
             prompt_side_mm: Optional[float]) -> Evidence:
    """The evidence of a model-grid output ``[S, S, S]`` (threshold 0.5) whose voxels are
    ``spacing_mm`` (index order i, j, k) apart; ``prompt_side_mm`` as in the module notes
    (None if unknown)."""
    probability = np.clip(np.asarray(output, dtype=np.float32), 0.0, 1.0)
    mask = probability >= 0.5
    if not mask.any():
        return Evidence(0.0, 0.0, None, 0.0, True)
    grown = ndimage.binary_dilation(mask, iterations=BAND_VOXELS)
    shrunk = ndimage.binary_erosion(mask, iterations=BAND_VOXELS)
    band = grown & ~shrunk
    sharpness = float(np.abs(2 * probability[band] - 1).mean())
    inside = float(probability[mask].mean())
    faces = np.zeros_like(mask)
    faces[[0, -1]] = faces[:, [0, -1]] = faces[:, :, [0, -1]] = True
    cut = float((mask & faces).sum() / mask.sum())
    size = None
    if prompt_side_mm:
        volume_mm3 = float(mask.sum()) * float(np.prod(spacing_mm))
        size = math.log(volume_mm3 ** (1 / 3) / prompt_side_mm)
    return Evidence(sharpness, inside, size, cut, False)


def prompt_fit(mask: sitk.Image, entry: ContextEntry) -> Optional[float]:
    """How well ``mask`` (on ``entry.image``'s grid) answers the entry's prompts, in [0, 1]:
    per 2D box, the overlap (intersection over union, in voxels) of the box with the
    bounding rectangle of the mask on the box's slice; per point, 1 if the mask holds it;
    the mean over prompts. None without boxes or points."""
    array = sitk.GetArrayViewFromImage(mask) > 0
    grid = Grid.of(entry.image)
    size = np.asarray(grid.size)
    scores = []
    for box in entry.boxes:
        index = grid.lps_to_index(box_corners_lps(box.min, box.max, box.space, grid))
        low, high = index.min(0), index.max(0)
        axis = int(np.argmin(high - low))                   # the box's slice axis (i, j, k)
        at = int(np.clip(np.round((low[axis] + high[axis]) / 2), 0, size[axis] - 1))
        first = np.clip(np.floor(low + 0.5), 0, size - 1).astype(int)
        last = np.clip(np.ceil(high - 0.5), 0, size - 1).astype(int)
        plane = np.take(array, at, axis=2 - axis)           # array axes are (k, j, i)
        others = [a for a in range(3) if a != axis]         # plane axes: others[::-1]
        rows, cols = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
        if not rows.size:
            scores.append(0.0)
            continue
        found = [(cols[0], cols[-1]), (rows[0], rows[-1])]  # along others[0], others[1]
        given = [(first[a], last[a]) for a in others]
        overlap = np.prod([max(0, min(f[1], g[1]) - max(f[0], g[0]) + 1)
                           for f, g in zip(found, given)])
        area = lambda r: np.prod([b - a + 1 for a, b in r])  # noqa: E731
        scores.append(float(overlap / (area(found) + area(given) - overlap)))
    for point in entry.points:
        i, j, k = np.clip(np.round(grid.lps_to_index(to_lps(point.position, point.space,
                                                           grid))[0]), 0, size - 1).astype(int)
        scores.append(float(array[k, j, i]))
    return float(np.mean(scores)) if scores else None


def boxes_from_mask(mask: sitk.Image, slices: int = 5) -> List[Box]:
    """Prompts a person might draw on ``mask``: the bounding rectangle of the mask on up to
    ``slices`` evenly spaced k slices through it, in voxel coordinates (i, j, k)."""
    array = sitk.GetArrayViewFromImage(mask) > 0
    present = np.flatnonzero(array.any((1, 2)))
    boxes = []
    for k in np.unique(np.round(np.linspace(present[0], present[-1], slices)).astype(int)):
        plane = array[k]
        rows, cols = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
        if rows.size:
            boxes.append(Box((int(cols[0]), int(rows[0]), int(k)),
                             (int(cols[-1]), int(rows[-1]), int(k))))
    return boxes


def box_side_mm(corners_lps: Sequence[np.ndarray]) -> Optional[float]:
    """The prompts' scale: geometric mean over boxes (each given by its 8 LPS corners, mm)
    of the geometric mean of its two largest sides; None without boxes."""
    sides = []
    for corners in corners_lps:
        extent = np.sort(np.ptp(np.asarray(corners, dtype=float), axis=0))[::-1]
        sides.append(math.sqrt(max(extent[0], 1e-3) * max(extent[1], 1e-3)))
    return float(np.exp(np.mean(np.log(sides)))) if sides else None


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Logistic regression from :data:`FEATURES` (standardised by ``mean`` / ``scale``) to
    the chance that Dice >= 0.5, and the review threshold; ``fitted`` says on what."""

    weights: Sequence[float]
    bias: float
    mean: Sequence[float]
    scale: Sequence[float]
    typical_size: float
    typical_fit: float
    review_below: float
    fitted: str

    @classmethod
    def load(cls, path: Path = CALIBRATION_FILE) -> "Calibration":
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in json.loads(path.read_text()).items()
                      if key in fields})

    def confidence(self, found: Evidence) -> float:
        """The chance, in [0, 1], that the result has Dice >= 0.5 (0 for an empty one)."""
        if found.empty:
            return 0.0
        standard = (found.features(self.typical_size, self.typical_fit) -
                    np.asarray(self.mean)) / \
            np.asarray(self.scale)
        return float(1 / (1 + math.exp(-(float(np.dot(self.weights, standard)) + self.bias))))

    def review(self, confidence: float) -> bool:
        """Whether a result of this confidence should be looked at by a person."""
        return confidence < self.review_below


@functools.lru_cache(maxsize=1)
def calibration() -> Calibration:
    """The bundled calibration (read once)."""
    return Calibration.load()
