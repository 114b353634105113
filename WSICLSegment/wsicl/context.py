"""Prompts on images and the context sets they form.

Box and point coordinates are in one of three spaces: ``voxel`` (integer indices
``(i, j, k)`` of the image as SimpleITK reads it, ``i`` fastest), ``LPS`` or ``RAS``
(physical millimetres).
"""
import dataclasses
from typing import List, Optional, Sequence, Tuple

import SimpleITK as sitk

from .geometry import SPACES

PROMPT_KINDS = ("box", "point")


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
    """An axis-aligned box with inclusive corners ``min`` <= ``max`` in ``space``.

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
            raise ValueError(f"box min {list(self.min)} exceeds max {list(self.max)}")


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
    """One context image with its prompts (boxes or points, not both); ``name`` for
    messages, ``source`` the file it was read from, if any."""

    image: sitk.Image
    boxes: List[Box] = dataclasses.field(default_factory=list)
    points: List[Point] = dataclasses.field(default_factory=list)
    name: str = ""
    source: str = ""

    @property
    def prompt_kind(self) -> Optional[str]:
        """``"box"``, ``"point"``, or None if the entry has no prompt."""
        if self.boxes and not self.points:
            return "box"
        if self.points and not self.boxes:
            return "point"
        return None


@dataclasses.dataclass
class ContextSet:
    """Context images with prompts that define one structure to segment."""

    entries: List[ContextEntry] = dataclasses.field(default_factory=list)
    name: str = "structure"

    def add(self, image: sitk.Image, boxes: Sequence[Box] = (), points: Sequence[Point] = (),
            name: str = "") -> "ContextSet":
        self.entries.append(ContextEntry(image, list(boxes), list(points),
                                         name or f"context {len(self.entries) + 1}"))
        return self

    def __len__(self) -> int:
        return len(self.entries)

    def prompt_kind(self) -> str:
        """The single prompt kind of all entries; :class:`ContextError` otherwise."""
        if not self.entries:
            raise ContextError(f"context set '{self.name}' is empty: add at least one image "
                               "with a box or point on the structure")
        kinds = set()
        for entry in self.entries:
            if not entry.boxes and not entry.points:
                raise ContextError(f"context set '{self.name}', {entry.name}: has no prompt; "
                                   "place a box or point on the structure or remove the image")
            if entry.boxes and entry.points:
                raise ContextError(f"context set '{self.name}', {entry.name}: mixes boxes and "
                                   "points; a model reads one prompt kind, keep one")
            kinds.add(entry.prompt_kind)
        if len(kinds) > 1:
            raise ContextError(f"context set '{self.name}': some images have boxes, others "
                               "points; use one prompt kind for the whole set")
        return kinds.pop()
