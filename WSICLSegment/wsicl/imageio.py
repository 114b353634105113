"""Reading images (files and DICOM series) and writing masks atomically."""
import gzip
import re
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .files import WriteError, atomic_write
from .geometry import Grid

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
OUTPUT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd")


def image_files(folder: Path) -> List[Path]:
    """Image files in ``folder`` (NIfTI, NRRD, MHA/MHD), sorted."""
    return sorted(p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))


def case_name(path: Path) -> str:
    """The file name without image extensions (and without nnU-Net's ``_0000``)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES + (".seg",):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name[:-5] if name.endswith("_0000") else name


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def dicom_series(folder: Path) -> List[str]:
    """The files of the first DICOM series in ``folder`` (empty if there is none)."""
    reader = sitk.ImageSeriesReader()
    showing = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's "No Series were found"
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(showing)
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0])) if series else []


def read_image(path: Union[str, Path]) -> sitk.Image:
    """An image file (NIfTI, NRRD, MHA/MHD) or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = dicom_series(path)
            if not files:
                raise ValueError(f"{path}: folder holds no DICOM series")
            return sitk.ReadImage(files)
        check_complete(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise _unreadable(path, error) from None


MAX_VOXELS = 1_000_000_000
"""Largest image read (4 GB as float32): a header claiming more is refused unread."""


def check_complete(path: Path) -> None:
    """:class:`ValueError` for an image file whose header claims more than
    :data:`MAX_VOXELS` voxels (a corrupt or hostile header, refused before allocating), or
    that is shorter than its header promises (SimpleITK reads such files without complaint,
    the missing part as zeros, or fails with a misleading message): a ``.gz`` file must
    reach its gzip end marker; an uncompressed NIfTI, NRRD or MHA must hold every voxel; a
    gzip-encoded NRRD or compressed MHA stream must end and inflate to every voxel."""
    name = path.name.lower()
    remedy = "copy or download it again"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise _unreadable(path, error) from None
    voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    if voxels > MAX_VOXELS:
        raise ValueError(f"{path}: its header claims {voxels:,} voxels (size "
                         f"{list(reader.GetSize())}), more than WSICL reads ({MAX_VOXELS:,}); "
                         "the header is corrupt or the image must be cropped first")
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 24):
                    pass
        except (EOFError, OSError, zlib.error) as error:
            raise ValueError(f"{path}: truncated or corrupt compressed file ({error}); "
                             f"{remedy}") from None
        return
    if not name.endswith((".nii", ".nrrd", ".mha")):
        return
    needed = voxels * sitk.GetArrayFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
    header = _header(path)
    offset, wbits = _inline_payload(name, header)
    if offset is None:
        return   # data in a separate file, or an encoding its reader checks
    if wbits is None:
        if path.stat().st_size < needed:
            raise ValueError(f"{path}: truncated: {path.stat().st_size} bytes for {voxels} "
                             f"voxels that need {needed}; {remedy}")
        return
    inflated = _inflated_size(path, offset, wbits)
    if inflated is None or inflated < needed:
        found = "the stream ends early" if inflated is None else f"{inflated} of {needed} bytes"
        raise ValueError(f"{path}: truncated or corrupt compressed data ({found}); {remedy}")


def _unreadable(path: Path, error: Exception) -> ValueError:
    """The error for an image file SimpleITK cannot read, with what to do about it."""
    if path.is_file() and path.stat().st_size == 0:
        return ValueError(f"{path}: is empty (0 bytes); copy or export it again")
    reason = _last_line(error)
    if "Unable to determine ImageIO reader" in reason:
        return ValueError(f"{path}: not a readable image (expected NIfTI, NRRD, MHA/MHD or a "
                          "DICOM series): the file is corrupt or of another kind; copy or "
                          "export it again")
    return ValueError(f"{path}: cannot read image: {reason}")


def _header(path: Path, limit: int = 65536) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(limit)


def _inline_payload(name: str, header: bytes) -> Tuple[Optional[int], Optional[int]]:
    """Where a NIfTI, NRRD or MHA file's voxels start and their zlib ``wbits`` (None: raw);
    ``(None, None)`` for data kept in another file or an encoding not checked here."""
    if name.endswith(".nii"):
        return 0, None         # the size check covers header + voxels
    if name.endswith(".nrrd"):
        end = header.find(b"\n\n")
        if end < 0 or re.search(rb"^data ?file:", header[:end], re.M | re.I):
            return None, None
        encoding = re.search(rb"^encoding:\s*(\w+)", header[:end], re.M)
        kind = encoding.group(1).lower() if encoding else b"raw"
        return {b"raw": (end + 2, None), b"gzip": (end + 2, 31), b"gz": (end + 2, 31)}.get(
            kind, (None, None))
    found = re.search(rb"^ElementDataFile\s*=\s*(\S+)[^\n]*\n", header, re.M)
    if not found or found.group(1) != b"LOCAL":
        return None, None
    compressed = re.search(rb"^CompressedData\s*=\s*True", header, re.M)
    return found.end(), 15 if compressed else None


def _inflated_size(path: Path, offset: int, wbits: int) -> Optional[int]:
    """Bytes a zlib / gzip stream starting at ``offset`` inflates to; None if it is cut
    short or corrupt."""
    inflater = zlib.decompressobj(wbits)
    size = 0
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            while not inflater.eof:
                chunk = stream.read(1 << 22)
                if not chunk:
                    return None
                size += len(inflater.decompress(chunk))
    except zlib.error:
        return None
    return size


def list_targets(paths: Sequence[Union[str, Path]]) -> List[Tuple[str, Path]]:
    """``(name, path)`` for each target: image files, DICOM series folders, and the image
    files (or DICOM series sub-folders) inside plain folders."""
    targets = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_file():
            targets.append((case_name(path), path))
        elif dicom_series(path):
            targets.append((path.name, path))
        else:
            inside = [(case_name(p), p) for p in sorted(path.iterdir()) if is_image_file(p)]
            inside += [(p.name, p) for p in sorted(path.iterdir())
                       if p.is_dir() and dicom_series(p)]
            if not inside:
                raise FileNotFoundError(f"{path}: folder holds no image files or DICOM series")
            targets.extend(inside)
    names = [name for name, _ in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several targets would be written as {duplicates}; rename or "
                         "segment them separately")
    return targets


def output_path(folder: Path, name: str, output_format: str) -> Path:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; use one of {OUTPUT_FORMATS}")
    return folder / f"{name}.{output_format}"


def segmentation_metadata(mask: sitk.Image, segment_name: str,
                          colour: Tuple[float, float, float]) -> None:
    """Adds the 3D Slicer segmentation fields for one segment (label 1) to ``mask``."""
    size = mask.GetSize()
    fields = {
        "Segment0_ID": "Segment_1", "Segment0_Name": segment_name,
        "Segment0_Color": " ".join(f"{c:g}" for c in colour), "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Extent": " ".join(f"0 {s - 1}" for s in size),
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
    }
    for key, value in fields.items():
        mask.SetMetaData(key, value)


def write_atomic(image: sitk.Image, path: Path) -> None:
    """Writes ``image`` to ``path`` (format from the suffix), verified by reading it back:
    same size, geometry and voxels, else :class:`WriteError` and nothing is written."""
    with atomic_write(path) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), True)
            written = sitk.ReadImage(str(temporary))
        except RuntimeError as error:
            raise WriteError(f"{path}: could not be written ({_last_line(error)}); check the "
                             "free disk space and the folder's permissions") from None
        same = (Grid.of(written).matches(Grid.of(image))
                and np.array_equal(sitk.GetArrayViewFromImage(written),
                                   sitk.GetArrayViewFromImage(image)))
        if not same:
            raise WriteError(f"{path}: the file did not read back as written (disk full?); "
                             "nothing was kept")


def _last_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__
