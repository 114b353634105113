"""Which results of a run a person should look at, and which volume to annotate next.

Works on a run report's target rows (:mod:`wsicl.runs`), whose structures carry a
``confidence`` and a ``review`` flag (:mod:`wsicl.confidence`):

- :func:`to_review`: the flagged results, least confident first;
- :func:`annotate_next`: per structure, the target whose result is least confident: the
  volume whose prompts would tell the context set the most it does not yet know, so the
  one to add to the context set next;
- :func:`review_lines`: both in words, for the end of a run;
- :func:`write_review_sheet`: a one-page HTML contact sheet of the flagged results (one
  slice through each mask's centre, the outline in red) to triage without opening each
  volume.
"""
import base64
import html
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .files import write_text

SHOWN = 5
"""Flagged results a closing line names (the report and the sheet list all)."""
TILE_PIXELS = 220


class Flagged(NamedTuple):
    """One result of a run: its target row and structure, with its confidence."""

    target: Dict[str, Any]
    structure: str
    confidence: float


def judged_results(targets: Sequence[Dict[str, Any]]) -> List[Flagged]:
    """Every finished result (``done`` or ``skipped``) that carries a confidence, least
    confident first (ties by target name)."""
    found = [Flagged(row, structure, float(measure["confidence"]))
             for row in targets if row["status"] in ("done", "skipped")
             for structure, measure in row["structures"].items()
             if measure.get("confidence") is not None]
    return sorted(found, key=lambda item: (item.confidence, item.target["target"]))


def to_review(targets: Sequence[Dict[str, Any]]) -> List[Flagged]:
    """The results flagged for review, least confident first."""
    return [item for item in judged_results(targets)
            if item.target["structures"][item.structure].get("review")]


def annotate_next(targets: Sequence[Dict[str, Any]]) -> Dict[str, Flagged]:
    """Per structure, the least confident result (see the module notes)."""
    chosen: Dict[str, Flagged] = {}
    for item in judged_results(targets):
        chosen.setdefault(item.structure, item)
    return chosen


def review_lines(targets: Sequence[Dict[str, Any]], interactive: bool) -> List[str]:
    """What to look at after a run, in words: how many results to review, the least
    confident named, and (in-context runs) the volume to annotate next per structure."""
    judged = judged_results(targets)
    if not judged:
        return []
    flagged = to_review(targets)
    if not flagged:
        lines = [f"review: none of {len(judged)} results flagged (confidence from "
                 f"{judged[0].confidence:.2f} up)"]
    else:
        named = ", ".join(f"{item.target['target']} {item.structure} ({item.confidence:.2f})"
                          for item in flagged[:SHOWN])
        more = f" and {len(flagged) - SHOWN} more" if len(flagged) > SHOWN else ""
        lines = [f"review: {len(flagged)} of {len(judged)} results flagged, least confident "
                 f"first: {named}{more}"]
    if not interactive:
        for structure, item in annotate_next(targets).items():
            lines.append(f"annotate next for {structure}: {item.target['input']} (its result "
                         f"is the least confident, {item.confidence:.2f}); prompts on it "
                         "added to the context set teach the run the most")
    return lines


def review_summary(targets: Sequence[Dict[str, Any]], interactive: bool) -> Dict[str, Any]:
    """The report's ``review`` section: flagged results and the volumes to annotate next."""
    return {"flagged": [{"target": item.target["target"], "structure": item.structure,
                         "confidence": item.confidence} for item in to_review(targets)],
            "annotate_next": {} if interactive else {
                structure: {"target": item.target["target"], "input": item.target["input"],
                            "confidence": item.confidence}
                for structure, item in annotate_next(targets).items()}}


def png_bytes(rgb: np.ndarray) -> bytes:
    """An ``[H, W, 3]`` uint8 image as PNG file bytes (8-bit RGB, no interlace)."""
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + np.ascontiguousarray(row).tobytes() for row in rgb)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def tile(image: Any, mask: Optional[Any]) -> np.ndarray:
    """A ``TILE_PIXELS``-square RGB picture: the axial slice through the mask's centre (the
    middle slice if the mask is empty or missing), grey levels from the 1st to the 99th
    percentile of the volume, the mask's outline in red, pixels scaled to square mm."""
    import SimpleITK as sitk
    from scipy import ndimage
    volume = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(volume).astype(np.float32)
    outline = np.zeros(array.shape, dtype=bool)
    if mask is not None:
        marked = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS")) > 0
        if marked.shape == array.shape and marked.any():
            outline = marked & ~ndimage.binary_erosion(marked)
            array_slice = int(round(np.argwhere(marked)[:, 0].mean()))
        else:
            array_slice = array.shape[0] // 2
    else:
        array_slice = array.shape[0] // 2
    plane = array[array_slice]
    low, high = np.percentile(array, [1, 99])
    grey = np.clip((plane - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb[outline[array_slice]] = (255, 40, 40)
    spacing = volume.GetSpacing()                          # x, y (mm): columns, rows
    height_mm, width_mm = plane.shape[0] * spacing[1], plane.shape[1] * spacing[0]
    scale = TILE_PIXELS / max(height_mm, width_mm)
    rows = np.clip((np.arange(int(height_mm * scale)) / scale / spacing[1]).astype(int), 0,
                   plane.shape[0] - 1)
    cols = np.clip((np.arange(int(width_mm * scale)) / scale / spacing[0]).astype(int), 0,
                   plane.shape[1] - 1)
    picture = np.zeros((TILE_PIXELS, TILE_PIXELS, 3), dtype=np.uint8)
    picture[:len(rows), :len(cols)] = rgb[rows][:, cols]
    return picture


def write_review_sheet(folder: Path, targets: Sequence[Dict[str, Any]], path: Path) -> int:
    """Writes the contact sheet of the flagged results of a run whose outputs are in
    ``folder`` to ``path`` (HTML, pictures inline); returns how many it shows. A result
    whose image or mask cannot be read is listed with the reason instead of a picture."""
    import SimpleITK as sitk
    from .imageio import read_image
    flagged = to_review(targets)
    cells = []
    for item in flagged:
        measure = item.target["structures"][item.structure]
        caption = (f"{html.escape(item.target['target'])} &middot; "
                   f"{html.escape(item.structure)}<br>confidence {item.confidence:.2f}, "
                   f"{measure.get('ml', 0)} mL")
        try:
            image = read_image(Path(item.target["input"]))
            mask = None
            name = measure.get("file")
            if name and not name.endswith(".dcm"):
                mask = sitk.ReadImage(str(folder / name)) == int(measure.get("label", 1))
            data = base64.b64encode(png_bytes(tile(image, mask))).decode("ascii")
            picture = f'<img src="data:image/png;base64,{data}" alt="">'
        except (OSError, RuntimeError, ValueError) as error:
            picture = f'<div class="missing">{html.escape(str(error))}</div>'
        cells.append(f'<figure>{picture}<figcaption>{caption}</figcaption></figure>')
    body = "\n".join(cells) or "<p>No result of this run is flagged for review.</p>"
    write_text(path, f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>WSICL: results to review</title>
<style>body{{font:14px sans-serif;margin:16px;background:#111;color:#eee}}
figure{{display:inline-block;margin:6px;width:{TILE_PIXELS}px;vertical-align:top}}
img{{width:{TILE_PIXELS}px;height:{TILE_PIXELS}px;image-rendering:pixelated}}
.missing{{width:{TILE_PIXELS}px;height:{TILE_PIXELS}px;background:#333}}</style></head>
<body><h1>{len(flagged)} results to review, least confident first</h1>
<p>One axial slice through each mask's centre; the outline in red. Folder:
{html.escape(str(folder))}</p>
{body}
</body></html>
""")
    return len(flagged)
