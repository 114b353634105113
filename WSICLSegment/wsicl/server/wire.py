"""What crosses the wire between ``wsicl serve`` and its clients: JSON for prompts, context
sets and job states; compressed raw voxels for result masks; image files (MetaImage from
our client; NIfTI and NRRD accepted) for volumes. No pickle, ever.

Coordinates travel as they are given (``voxel``, ``LPS`` or ``RAS``, see
:mod:`wsicl.context`); voxel arrays in SimpleITK's array order ``(k, j, i)``.
"""
import json
import math
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..confidence import Evidence
from ..context import Box, Point
from ..contextfile import read_coordinates

API = "/v1"
UPLOAD_FORMATS = ("mha", "nrrd", "nii", "nii.gz")
"""Single-file image formats a volume may be uploaded as (SimpleITK picks the reader by
extension; formats with a detached data file cannot be one upload)."""
SIZE_HEADER = "X-WSICL-Size"
"""Result masks carry the image size ``i,j,k`` in this header."""
NOTES_HEADER = "X-WSICL-Notes"
"""...and the engine's notes (warnings) as a JSON list of strings (ASCII) in this one..."""
SECONDS_HEADER = "X-WSICL-Seconds"
"""...and the seconds the server computed for the job (queue wait and transfers excluded)..."""
EVIDENCE_HEADER = "X-WSICL-Evidence"
"""...and what the network's output says about itself (:class:`wsicl.confidence.Evidence`
as a JSON object), from which the client reckons the result's confidence."""


def boxes_to_json(boxes: Sequence[Box]) -> List[Dict[str, Any]]:
    return [{"min": list(b.min), "max": list(b.max), "space": b.space} for b in boxes]


def points_to_json(points: Sequence[Point]) -> List[Dict[str, Any]]:
    return [{"position": list(p.position), "space": p.space} for p in points]


def boxes_from_json(raw: Any) -> List[Box]:
    """Boxes from request JSON; a ValueError says what is wrong."""
    return [Box(_field(b, "min"), _field(b, "max"), str(b.get("space", "voxel")))
            for b in _list(raw, "boxes")]


def points_from_json(raw: Any) -> List[Point]:
    """Points from request JSON; a ValueError says what is wrong."""
    return [Point(_field(p, "position"), str(p.get("space", "voxel")))
            for p in _list(raw, "points")]


def _list(raw: Any, what: str) -> List[Dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError(f"'{what}' must be a list of objects")
    return raw


def _field(item: Dict[str, Any], key: str) -> Sequence[float]:
    return read_coordinates(item.get(key), f"'{key}'")


def mask_to_bytes(mask: sitk.Image) -> Tuple[bytes, str]:
    """A uint8 mask as zlib-compressed voxels (array order) and its ``i,j,k`` size."""
    array = sitk.GetArrayViewFromImage(mask)
    return (zlib.compress(np.ascontiguousarray(array, dtype=np.uint8).data, 1),
            ",".join(str(n) for n in mask.GetSize()))


def evidence_from_json(text: str) -> Optional[Evidence]:
    """The evidence a server sent with a mask (``null``: none); a ValueError if it is not
    evidence."""
    try:
        raw = json.loads(text)
        if raw is None:
            return None
        found = Evidence(**raw)
        numbers = [found.sharpness, found.inside, found.cut] + \
            [value for value in (found.size, found.fit) if value is not None]
        if not all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers) or \
                not isinstance(found.empty, bool):
            raise TypeError("not finite numbers")
        return found
    except (ValueError, TypeError) as error:
        raise ValueError(f"the server's {EVIDENCE_HEADER} header is not evidence ({error})"
                         ) from None


def mask_from_bytes(payload: bytes, size_header: str, like: sitk.Image) -> sitk.Image:
    """The mask :func:`mask_to_bytes` sent, on the grid of ``like`` (the target the client
    holds); a ValueError if the size or the voxel count does not match."""
    size = tuple(like.GetSize())
    if size_header != ",".join(str(n) for n in size):
        raise ValueError(f"the server answered a mask of size {size_header}, but the target "
                         f"is {','.join(str(n) for n in size)}")
    expected = int(np.prod(size))
    inflater = zlib.decompressobj()
    try:
        voxels = inflater.decompress(payload, expected + 1)
    except zlib.error as error:
        raise ValueError(f"the server's mask is corrupt ({error})") from None
    if len(voxels) != expected or not inflater.eof:
        raise ValueError(f"the server's mask holds {len(voxels)} voxels, expected {expected}")
    array = np.frombuffer(voxels, dtype=np.uint8).reshape(size[::-1])
    mask = sitk.GetImageFromArray(array.copy())
    mask.CopyInformation(like)
    return mask
