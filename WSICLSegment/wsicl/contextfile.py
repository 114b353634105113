"""The context-set JSON file and 3D Slicer markups files.

Schema (paths relative to the JSON file's folder)::

    {"name": "liver",                          # optional structure name
     "coordinates": "voxel" | "LPS" | "RAS",    # default "voxel"
     "context": [
        {"image": "case1.nii.gz",
         "boxes": [{"min": [x, y, z], "max": [x, y, z]}],
         "points": [[x, y, z]],
         "markups": "case1.mrk.json"},          # boxes/points/markups: at least one
        {"image": "case2.nii.gz",
         "mask": "case2_seg.nii.gz",            # or a dense mask (instead of prompts)
         "label": 3}]}                          # optional: value or .seg.nrrd segment name

``voxel`` coordinates are integer indices (i, j, k) of the image as SimpleITK reads it
(i fastest), ``min``/``max`` inclusive; ``LPS``/``RAS`` are physical millimetres. A box
whose min equals max along one axis is a 2D box on that slice. A markups file contributes
its ROIs as boxes and its control points as points, in the file's own coordinate system.
A ``mask`` is a label image on the image's grid (or covering the same extent, then
resampled by nearest neighbour); ``label`` picks the structure (any non-zero voxel when
absent), see :mod:`wsicl.masks`.
"""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from .context import Box, ContextEntry, ContextError, ContextSet, Point, note_clipped_boxes
from .geometry import SPACES
from .files import write_text
from .imageio import read_image
from .masks import context_mask

TOP_KEYS = {"name", "coordinates", "context"}
ENTRY_KEYS = {"image", "boxes", "points", "markups", "mask", "label"}
BOX_KEYS = {"min", "max"}


class ContextFileError(ValueError):
    """A context-set or markups file that does not follow the schema."""


def read_coordinates(value: Any, where: str) -> Tuple[float, float, float]:
    """Three finite numbers (a JSON integer too large for a float is refused, shown cut)."""
    def finite(v: Any) -> bool:
        try:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and \
                math.isfinite(float(v))
        except OverflowError:
            return False

    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            finite(v) for v in value):
        shown = repr(value)
        raise ContextFileError(f"{where}: expected 3 finite numbers, got "
                               f"{shown if len(shown) <= 80 else shown[:77] + '...'}")
    return tuple(float(v) for v in value)


MAX_JSON_BYTES = 16 * 1024 * 1024
"""Largest context-set or markups file read (hand-written ones are a few kB)."""


def binary_kind(head: bytes) -> str:
    """What a file that cannot be JSON looks like from its first bytes ("a gzip file (a
    compressed image?)", "an image (NRRD)", ...); "" when it may be text."""
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (a compressed image such as .nii.gz?)"
    if head.startswith(b"NRRD"):
        return "an image (NRRD)"
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "an image (NIfTI)"
    if b"\0" in head:
        return "a binary file"
    return ""


def read_json_object(path: Path, what: str) -> Dict[str, Any]:
    """A JSON file holding one object (UTF-8, with or without a byte-order mark), or
    :class:`ContextFileError` naming the file, the problem and the fix."""
    if path.is_dir():
        raise ContextFileError(f"{path}: is a folder; give the {what} (.json) inside it")
    if not path.is_file():
        raise ContextFileError(f"{path}: no such {what}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ContextFileError(f"{path}: {size:,} bytes, more than a {what} can hold "
                               f"({MAX_JSON_BYTES:,}); is it the right file?")
    with open(path, "rb") as stream:
        head = stream.read(348)
    kind = binary_kind(head)
    if kind:
        raise ContextFileError(f"{path}: is {kind}, not a {what}; give the .json file that "
                               "names the images and their prompts (see the README's "
                               "context-set format)")
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))  # BOM: Windows editors
    except (OSError, ValueError) as error:
        raise ContextFileError(f"{path}: not a valid {what} (JSON): {error}") from None
    if not isinstance(document, dict):
        raise ContextFileError(f"{path}: expected a JSON object, got "
                               f"{type(document).__name__}; see the {what} format in the "
                               "README")
    return document


def read_markups(path: Path) -> (List[Box], List[Point]):
    """ROIs (as boxes) and control points of a Slicer ``.mrk.json`` file.

    An ROI becomes the axis-aligned box around its (possibly rotated) extent; an ROI of
    zero size along one axis is a 2D box.
    """
    document = read_json_object(Path(path), "markups file")
    if not isinstance(document.get("markups", []), list):
        raise ContextFileError(f"{path}: 'markups' must be a list; is this a Slicer "
                               ".mrk.json file?")
    boxes, points = [], []
    for index, markup in enumerate(document.get("markups", [])):
        where = f"{path}: markups[{index}]"
        space = markup.get("coordinateSystem", "LPS")
        if space not in ("LPS", "RAS"):
            raise ContextFileError(f"{where}: coordinateSystem {space!r} is not LPS or RAS")
        if markup.get("type") == "ROI":
            centre = np.array(read_coordinates(markup.get("center"), f"{where}.center"))
            size = np.array(read_coordinates(markup.get("size"), f"{where}.size"))
            axes = np.array(markup.get("orientation", np.eye(3).ravel()), dtype=float)
            half = np.abs(axes.reshape(3, 3)) @ (size / 2)
            boxes.append(Box(tuple(centre - half), tuple(centre + half), space))
        for point_index, control in enumerate(markup.get("controlPoints", [])):
            if markup.get("type") == "ROI":
                continue
            points.append(Point(read_coordinates(control.get("position"),
                                             f"{where}.controlPoints[{point_index}].position"),
                                space))
    return boxes, points


def check_object(value: Any, allowed: set, where: str) -> None:
    """``value`` must be a JSON object whose keys are all in ``allowed``."""
    if not isinstance(value, dict):
        raise ContextFileError(f"{where}: expected an object, got {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise ContextFileError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: "
                               f"{sorted(allowed)}")


def _entry(raw: Any, index: int, space: str, folder: Path) -> ContextEntry:
    where = f"context[{index}]"
    check_object(raw, ENTRY_KEYS, where)
    if "image" not in raw:
        raise ContextFileError(f"{where}: missing 'image'")
    image_path = folder / str(raw["image"])
    boxes, points = [], []
    for key in ("boxes", "points"):
        if not isinstance(raw.get(key, []), list):
            raise ContextFileError(f"{where}.{key}: expected a list, got "
                                   f"{type(raw[key]).__name__} {raw[key]!r:.60}")
    for box_index, box in enumerate(raw.get("boxes", [])):
        box_where = f"{where}.boxes[{box_index}]"
        if not isinstance(box, dict) or set(box) != BOX_KEYS:
            raise ContextFileError(f"{box_where}: expected {{\"min\": [x, y, z], \"max\": "
                                   f"[x, y, z]}}, got {box!r}")
        low, high = read_coordinates(box["min"], f"{box_where}.min"), read_coordinates(
            box["max"], f"{box_where}.max")
        try:
            boxes.append(Box(low, high, space))
        except ValueError as error:
            raise ContextFileError(f"{box_where}: {error}") from None
    for point_index, point in enumerate(raw.get("points", [])):
        points.append(Point(read_coordinates(point, f"{where}.points[{point_index}]"), space))
    if "markups" in raw:
        markup_boxes, markup_points = read_markups(folder / str(raw["markups"]))
        boxes += markup_boxes
        points += markup_points
    label = raw.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
        raise ContextFileError(f"{where}.label: expected a label value (whole number) or a "
                               f"segment name, got {label!r}")
    if "label" in raw and "mask" not in raw:
        raise ContextFileError(f"{where}: 'label' without 'mask'; name the mask file")
    if "mask" in raw and (boxes or points):
        raise ContextFileError(f"{where} ({image_path.name}): give a mask or boxes/points, "
                               "not both")
    if not boxes and not points and "mask" not in raw:
        raise ContextFileError(f"{where} ({image_path.name}): no prompts; give boxes, points, "
                               "a markups file or a mask")
    name = f"{where} ({image_path.name})"
    try:
        image = read_image(image_path)
        labels = read_image(folder / str(raw["mask"])) if "mask" in raw else None
    except (FileNotFoundError, ValueError) as error:
        raise ContextFileError(f"{where}: {error}") from None
    mask = context_mask(labels, image, label, name) if labels is not None else None
    entry = ContextEntry(image, boxes, points, name, str(image_path), mask)
    note_clipped_boxes(entry)
    return entry


def read_context_file(path: Union[str, Path]) -> ContextSet:
    """Parses and validates a context-set JSON file; images are read, prompts checked."""
    path = Path(path)
    document = read_json_object(path, "context-set file")
    check_object(document, TOP_KEYS, str(path))
    space = document.get("coordinates", "voxel")
    if space not in SPACES:
        raise ContextFileError(f"{path}: coordinates {space!r} is not one of {list(SPACES)}")
    entries = document.get("context")
    if not isinstance(entries, list) or not entries:
        raise ContextFileError(f"{path}: 'context' must be a non-empty list of images with "
                               "prompts")
    context = ContextSet(name=str(document.get("name", path.stem)))
    try:
        context.entries = [_entry(raw, i, space, path.parent) for i, raw in enumerate(entries)]
        context.kinds()
    except (ContextFileError, ContextError, ValueError) as error:
        raise ContextFileError(f"{path}: {error}") from None
    return context


def write_context_file(path: Union[str, Path], name: str, coordinates: str,
                       entries: Sequence[Dict[str, Any]]) -> Path:
    """Writes a context-set file; ``entries`` follow the schema (image paths relative to
    ``path``'s folder)."""
    if coordinates not in SPACES:
        raise ValueError(f"coordinates {coordinates!r} is not one of {list(SPACES)}")
    path = Path(path)
    document = {"name": name, "coordinates": coordinates, "context": list(entries)}
    return write_text(path, json.dumps(document, indent=1))

