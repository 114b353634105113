"""Prompts on images and the context sets they form.

Box and point coordinates are in one of three spaces: ``voxel`` (integer indices
``(i, j, k)`` of the image as SimpleITK reads it, ``i`` fastest), ``LPS`` or ``RAS``
(physical millimetres). A dense mask is a uint8 0/1 image on the context image's own grid
(:mod:`wsicl.masks`).
"""
import dataclasses
import hashlib
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from .geometry import SPACES, Grid, box_corners_lps, image_digest, require_image
from .masks import Label, context_mask

PROMPT_KINDS = ("box", "point", "mask")
"""Context kinds: 2D/3D boxes, points, dense masks. Interactive mode takes boxes or points."""


def check_kinds(kinds: Sequence[str], where: str) -> List[str]:
    """``kinds`` as a list of known prompt kinds, or a ValueError naming ``where``."""
    unknown = [k for k in kinds if k not in PROMPT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"{where}: unknown prompt kind(s) {unknown or list(kinds)}; use "
                         f"{', '.join(PROMPT_KINDS)}")
    return list(dict.fromkeys(kinds))


class ContextError(ValueError):
    """A context set that cannot be used, naming the entry at fault."""


def _vector(values: Sequence[float], what: str) -> Tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{what} must have 3 coordinates, got {list(values)}")
    return values


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"unknown coordinate space {space!r}; use one of {', '.join(SPACES)}")


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box with inclusive corners ``min`` <= ``max`` in ``space`` (corners
    given the other way round along an axis are swapped there, with a
    :class:`PromptNote`).

    Equal ``min`` and ``max`` along one axis make a 2D box on that slice.
    """

    min: Tuple[float, float, float]
    max: Tuple[float, float, float]
    space: str = "voxel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "min", _vector(self.min, "box min"))
        object.__setattr__(self, "max", _vector(self.max, "box max"))
        _check_space(self.space)
        if any(high < low for low, high in zip(self.min, self.max)):
            low = tuple(map(min, self.min, self.max))
            high = tuple(map(max, self.min, self.max))
            warnings.warn(f"box min {list(self.min)} max {list(self.max)} ({self.space}) has "
                          f"min above max; used as min {list(low)} max {list(high)}",
                          PromptNote, stacklevel=3)
            object.__setattr__(self, "min", low)
            object.__setattr__(self, "max", high)


@dataclasses.dataclass(frozen=True)
class Point:
    """A point at ``position`` in ``space``."""

    position: Tuple[float, float, float]
    space: str = "voxel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", _vector(self.position, "point"))
        _check_space(self.space)


@dataclasses.dataclass
class ContextEntry:
    """One context image with its prompts of one kind: boxes, points or a dense ``mask``
    (uint8 0/1 on the image's grid); ``name`` for messages, ``source`` the file it was
    read from, if any."""

    image: sitk.Image
    boxes: List[Box] = dataclasses.field(default_factory=list)
    points: List[Point] = dataclasses.field(default_factory=list)
    name: str = ""
    source: str = ""
    mask: Optional[sitk.Image] = None

    @property
    def prompt_kind(self) -> Optional[str]:
        """``"box"``, ``"point"``, ``"mask"``, or None if the entry has no prompt or
        several kinds."""
        present = [kind for kind, given in zip(PROMPT_KINDS, (self.boxes, self.points,
                                                              self.mask is not None)) if given]
        return present[0] if len(present) == 1 else None

    def digest(self) -> bytes:
        """A 20-byte digest of everything that decides the entry's model inputs: the
        image's (and the mask's) voxels, type and geometry, and the prompts (its name only
        labels messages)."""
        digest = hashlib.blake2b(digest_size=20)
        for image in (self.image, self.mask):
            digest.update(b"none" if image is None else image_digest(image))
        digest.update(repr((self.boxes, self.points)).encode())
        return digest.digest()


class PromptNote(UserWarning):
    """A prompt was used, but not wholly as given (said, not raised)."""


def note_clipped_boxes(entry: ContextEntry) -> None:
    """Warns (:class:`PromptNote`) for each box of ``entry`` that reaches beyond its image:
    only the part inside is used. A box wholly outside is an error later, where it is
    rendered."""
    grid = Grid.of(entry.image)
    limit = np.asarray(entry.image.GetSize(), dtype=float) - 0.5
    for box in entry.boxes:
        index = grid.lps_to_index(box_corners_lps(box.min, box.max, box.space, grid))
        meets = np.all(index.max(0) >= -0.5) and np.all(index.min(0) <= limit)
        if meets and (np.any(index < -0.5 - 1e-6) or np.any(index > limit + 1e-6)):
            warnings.warn(f"{entry.name}: box min {list(box.min)} max {list(box.max)} "
                          f"({box.space}) reaches beyond the image (size "
                          f"{list(entry.image.GetSize())}); only the part inside is used",
                          PromptNote, stacklevel=3)


@dataclasses.dataclass
class ContextSet:
    """Context images with prompts that define one structure to segment."""

    entries: List[ContextEntry] = dataclasses.field(default_factory=list)
    name: str = "structure"

    def add(self, image: sitk.Image, boxes: Sequence[Box] = (), points: Sequence[Point] = (),
            name: str = "", mask: Optional[sitk.Image] = None, label: Label = None
            ) -> "ContextSet":
        """Adds a context image with boxes, points or a dense ``mask`` (a label image on
        the image's grid or covering its extent; ``label``: the value or ``.seg.nrrd``
        segment name of the structure, any non-zero voxel when None)."""
        name = name or f"context {len(self.entries) + 1}"
        require_image(image, f"context set '{self.name}', {name}")
        if mask is not None:
            require_image(mask, f"context set '{self.name}', {name}: mask")
            mask = context_mask(mask, image, label, f"context set '{self.name}', {name}")
        self.entries.append(ContextEntry(image, list(boxes), list(points), name, mask=mask))
        note_clipped_boxes(self.entries[-1])
        return self

    def __len__(self) -> int:
        return len(self.entries)

    def digest(self) -> str:
        """SHA-256 (hex) of the entries' digests in order: equal for context sets that give
        the network the same inputs, whatever their files are called."""
        return hashlib.sha256(b"".join(entry.digest() for entry in self.entries)).hexdigest()

    def kinds(self) -> List[str]:
        """The prompt kinds of the entries (in :data:`PROMPT_KINDS` order); each entry must
        have prompts of exactly one kind, else :class:`ContextError`."""
        if not self.entries:
            raise ContextError(f"context set '{self.name}' is empty: add at least one image "
                               "with a box, point or mask on the structure")
        for entry in self.entries:
            if not entry.boxes and not entry.points and entry.mask is None:
                raise ContextError(f"context set '{self.name}', {entry.name}: has no prompt; "
                                   "place a box or point on the structure or remove the image")
            if entry.prompt_kind is None:
                raise ContextError(f"context set '{self.name}', {entry.name}: mixes prompt "
                                   "kinds (boxes, points, a mask); give one kind per image")
        present = {entry.prompt_kind for entry in self.entries}
        return [kind for kind in PROMPT_KINDS if kind in present]


def prompts_from_mask(mask: sitk.Image, kind: str, slices: int = 3
                      ) -> Tuple[List[Box], List[Point]]:
    """Boxes or points (``kind``) that mark a dense 0/1 ``mask`` as a user would, in voxel
    indices of the mask's grid: on up to ``slices`` slices spread evenly over the
    structure's extent along the image's third index axis ``k``, one 2D box around the
    structure's pixels, or one point at its deepest pixel (farthest from its border)."""
    if kind not in ("box", "point"):
        raise ValueError(f"prompts can be derived as boxes or points, not {kind!r}")
    array = sitk.GetArrayViewFromImage(mask) != 0                    # (k, j, i)
    present = np.flatnonzero(array.any(axis=(1, 2)))
    if present.size == 0:
        raise ContextError("the mask is empty; nothing to mark")
    picks = np.unique(present[np.round(np.linspace(0, present.size - 1, slices + 2)[1:-1])
                              .astype(int)]) if present.size > 2 else present[:1]
    boxes, points = [], []
    for k in picks.tolist():
        plane = array[k]
        if kind == "box":
            j, i = np.nonzero(plane)
            boxes.append(Box((i.min(), j.min(), k), (i.max(), j.max(), k)))
        else:
            j, i = np.unravel_index(np.argmax(distance_transform_edt(plane)), plane.shape)
            points.append(Point((i, j, k)))
    return boxes, points
