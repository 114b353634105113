"""Reading images (files and DICOM series) and writing masks atomically."""
import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .files import WriteError, atomic_write
from .geometry import INTEGER_TYPES, Grid, check_geometry, check_shape

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


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


def read_image(path: Union[str, Path], untrusted: bool = False,
               max_bytes: Optional[int] = None) -> sitk.Image:
    """An image file (NIfTI, NRRD, MHA/MHD) or a DICOM series folder, checked first by
    :func:`check_complete`.

    Args:
        untrusted: the file came from someone else (a server upload): it must be a single
            file holding its own voxels and unpack to exactly what its header declares,
            and only the reader its suffix names may open it (:func:`check_self_contained`).
        max_bytes: the most memory its voxels may take; a header declaring more is refused
            with :class:`TooLarge` before any voxel is read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            if untrusted:
                raise ValueError(f"{path}: is a folder; a single image file is expected")
            files = dicom_series(path)
            if not files:
                raise ValueError(f"{path}: folder holds no DICOM series")
            return sitk.ReadImage(files)
        return check_complete(path, untrusted, max_bytes).Execute()
    except RuntimeError as error:
        raise _unreadable(path, error) from None


MAX_VOXELS = 1_000_000_000
"""Largest image read (4 GB as float32): a header claiming more is refused unread."""


class TooLarge(ValueError):
    """An image whose header declares more voxel memory than the caller allows."""


def check_complete(path: Path, untrusted: bool = False, max_bytes: Optional[int] = None
                   ) -> sitk.ImageFileReader:
    """A reader for ``path`` with its header read, after refusing (:class:`ValueError`) a
    header that claims more than :data:`MAX_VOXELS` voxels or ``max_bytes`` bytes of
    voxels (:class:`TooLarge`; a corrupt or hostile header, refused before allocating), and
    a file shorter than its header promises (SimpleITK reads such files without complaint,
    the missing part as zeros, or fails with a misleading message): a ``.gz`` file must
    reach its gzip end marker and inflate to every voxel; an uncompressed NIfTI, NRRD or
    MHA must hold every voxel; a gzip-encoded NRRD or compressed MHA stream must end and
    inflate to every voxel. ``untrusted`` (see :func:`read_image`) adds
    :func:`check_self_contained` and refuses compressed data that inflates to more than
    declared (a decompression bomb), stopping as soon as it does."""
    name = path.name.lower()
    remedy = "copy or download it again"
    reader = _header_reader(path, check_self_contained(path) if untrusted else "")
    voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    if voxels > MAX_VOXELS:
        raise ValueError(f"{path}: its header claims {voxels:,} voxels (size "
                         f"{list(reader.GetSize())}), more than WSICL reads ({MAX_VOXELS:,}); "
                         "the header is corrupt or the image must be cropped first")
    needed = voxels * sitk.GetArrayFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
    if max_bytes is not None and needed > max_bytes:
        kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        raise TooLarge(f"{path}: its header declares {needed / 2 ** 20:,.0f} MB of voxels (size "
                       f"{list(reader.GetSize())}, {kind}), more than the "
                       f"{max_bytes / 2 ** 20:,.0f} MB allowed")
    if name.endswith(".gz"):
        offset = _nifti_data_offset(_gunzip_head(path)) if name.endswith(".nii.gz") else 0
        declared = None if offset is None else offset + needed
        inflated = _gunzipped_size(path, declared if untrusted else None)
        if inflated is None:
            raise ValueError(f"{path}: truncated or corrupt compressed file; {remedy}")
        _check_inflated(path, inflated, declared, untrusted)
        return reader
    if not name.endswith((".nii", ".nrrd", ".mha")):
        return reader
    header = _header(path)
    offset, wbits = _inline_payload(name, header)
    if offset is None:
        return reader   # data in a separate file, or an encoding its reader checks
    if wbits is None:
        if path.stat().st_size - offset < needed:
            raise ValueError(f"{path}: truncated: {path.stat().st_size} bytes for {voxels} "
                             f"voxels that need {needed}; {remedy}")
        return reader
    inflated = _inflated_size(path, offset, wbits, needed if untrusted else None)
    if inflated is None:
        raise ValueError(f"{path}: truncated or corrupt compressed data (the stream ends "
                         f"early); {remedy}")
    _check_inflated(path, inflated, needed, untrusted)
    return reader


def _check_inflated(path: Path, inflated: int, declared: Optional[int],
                    untrusted: bool) -> None:
    """Refuses compressed data that inflates to fewer bytes than its header declares (or,
    ``untrusted``, to more)."""
    if declared is None:
        return
    if inflated < declared:
        raise ValueError(f"{path}: truncated or corrupt compressed data ({inflated} of "
                         f"{declared} bytes); copy or download it again")
    if untrusted and inflated > declared:
        raise ValueError(f"{path}: its compressed data unpacks to more than the "
                         f"{declared} bytes its header declares; refused unread")


UPLOAD_READERS = {".mha": "MetaImageIO", ".nrrd": "NrrdImageIO", ".nii": "NiftiImageIO",
                  ".nii.gz": "NiftiImageIO"}
"""The one ITK reader each single-file format an untrusted file may have is opened with
(ITK would otherwise pick a reader by probing the content)."""


def check_self_contained(path: Path) -> str:
    """The ITK reader for an untrusted image file, after refusing (:class:`ValueError`)
    any file whose voxels would be read from another file: MetaImage only with
    ``ElementDataFile = LOCAL``, NRRD only with attached data (no ``data file``), NIfTI only
    single-file (magic ``n+1`` / ``n+2``, not a ``.hdr``/``.img`` pair or ANALYZE)."""
    name = path.name.lower()
    suffix = next((s for s in (".nii.gz", ".nii", ".nrrd", ".mha") if name.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{path}: only single-file .mha, .nrrd, .nii and .nii.gz images are "
                         "accepted here")
    fix = f"send a single {suffix} file that holds its own voxels"
    if suffix == ".mha":
        if _mha_voxels_start(_header(path)) is None:
            raise ValueError(f"{path}: its header does not say that the voxels follow it "
                             f"(ElementDataFile = LOCAL); {fix}")
    elif suffix == ".nrrd":
        header = _header(path)
        end = _nrrd_header_end(header)
        if not header.startswith(b"NRRD") or end is None:
            raise ValueError(f"{path}: not an NRRD file with its header and voxels in one "
                             f"file; {fix}")
        if _nrrd_detached(header, end):
            raise ValueError(f"{path}: a detached NRRD header (its voxels are in another "
                             f"file); {fix}")
    else:
        head = _gunzip_head(path) if suffix == ".nii.gz" else _header(path, 544)
        if _nifti_data_offset(head) is None:
            raise ValueError(f"{path}: not a single-file NIfTI image (a .hdr/.img pair, "
                             f"ANALYZE or another kind of file); {fix}")
    return UPLOAD_READERS[suffix]


def _header_reader(path: Path, image_io: str = "") -> sitk.ImageFileReader:
    """A reader for ``path`` with its header read (by ``image_io`` only, when given), or the
    :func:`_unreadable` error."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if image_io:
        reader.SetImageIO(image_io)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise _unreadable(path, error) from None
    return reader


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


def _gunzip_head(path: Path, limit: int = 544) -> bytes:
    """The first ``limit`` inflated bytes of a gzip file (fewer if it is shorter or
    corrupt)."""
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(limit)
    except (EOFError, OSError, zlib.error):
        return b""


def _nifti_data_offset(head: bytes) -> Optional[int]:
    """Where a single-file NIfTI-1 or NIfTI-2 image's voxels start (``vox_offset``, in
    bytes from the start of the inflated file), from its first 544 bytes; None if they
    are not the header of one."""
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        for order in "<>":
            if struct.unpack(f"{order}i", head[:4])[0] == 348:
                offset = struct.unpack(f"{order}f", head[108:112])[0]
                return int(offset) if np.isfinite(offset) and offset >= 348 else None
    if len(head) >= 540 and head[4:12] == b"n+2\x00\r\n\x1a\n":
        for order in "<>":
            if struct.unpack(f"{order}i", head[:4])[0] == 540:
                offset = struct.unpack(f"{order}q", head[168:176])[0]
                return offset if offset >= 540 else None
    return None


def _gunzipped_size(path: Path, cap: Optional[int]) -> Optional[int]:
    """Bytes a gzip file inflates to (all its members; reading stops once past ``cap``);
    None if it is cut short or corrupt."""
    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while cap is None or size <= cap:
                chunk = stream.read(1 << 22)
                if not chunk:
                    break
                size += len(chunk)
    except (EOFError, OSError, zlib.error):
        return None
    return size


def _inline_payload(name: str, header: bytes) -> Tuple[Optional[int], Optional[int]]:
    """Where a NIfTI, NRRD or MHA file's voxels start and their zlib ``wbits`` (None: raw);
    ``(None, None)`` for data kept in another file or an encoding not checked here."""
    if name.endswith(".nii"):
        offset = _nifti_data_offset(header[:544])
        return (0 if offset is None else offset), None
    if name.endswith(".nrrd"):
        end = _nrrd_header_end(header)
        if end is None or _nrrd_detached(header, end):
            return None, None
        encoding = re.search(rb"^encoding:\s*(\w+)", header[:end.start()], re.M)
        kind = encoding.group(1).lower() if encoding else b"raw"
        return {b"raw": (end.end(), None), b"gzip": (end.end(), 31),
                b"gz": (end.end(), 31)}.get(kind, (None, None))
    start = _mha_voxels_start(header)
    if start is None:
        return None, None
    compressed = re.search(rb"^CompressedData\s*=\s*True", header[:start], re.M)
    return start, 15 if compressed else None


def _mha_voxels_start(header: bytes) -> Optional[int]:
    """Where a MetaImage file's voxels start: after the line ``ElementDataFile = LOCAL``
    that ends its header. None when the header's first mention of ``ElementDataFile`` (in
    any case, where MetaIO stops reading the header) names another file, or there is none."""
    found = re.search(rb"elementdatafile", header, re.I)
    if found is None:
        return None
    line_start = header.rfind(b"\n", 0, found.start()) + 1
    line = re.match(rb"ElementDataFile[ \t]*=[ \t]*LOCAL[ \t\r]*\n", header[line_start:],
                    re.I)
    return None if line is None else line_start + line.end()


def _nrrd_header_end(header: bytes) -> Optional["re.Match[bytes]"]:
    """The blank line that ends an NRRD header (LF or CRLF), or None."""
    return re.search(rb"\r?\n\r?\n", header)


def _nrrd_detached(header: bytes, end: "re.Match[bytes]") -> bool:
    """Whether an NRRD header (up to ``end``) keeps its voxels in another file: any
    ``data file`` / ``datafile`` field, in any case."""
    return re.search(rb"data\s*file", header[:end.start()], re.I) is not None


def _inflated_size(path: Path, offset: int, wbits: int, cap: Optional[int] = None
                   ) -> Optional[int]:
    """Bytes a zlib / gzip stream starting at ``offset`` inflates to, inflating at most
    4 MB at a time and stopping once past ``cap``; None if it is cut short or corrupt."""
    inflater = zlib.decompressobj(wbits)
    size = 0
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            pending = b""
            while not inflater.eof and (cap is None or size <= cap):
                if not pending:
                    pending = stream.read(1 << 22)
                if not pending:                   # the file ended: what zlib still holds
                    held = len(inflater.decompress(b"", 1 << 22))
                    if not held:
                        return None
                    size += held
                    continue
                size += len(inflater.decompress(pending, 1 << 22))
                pending = inflater.unconsumed_tail
    except zlib.error:
        return None
    return size


LABEL_NAME_ENDINGS = ("_label", "_labels", "_seg", "_mask")
"""File-name endings (before the extension) of label maps kept beside their images."""
LABEL_MAP_MAX_VALUES = 64
"""An integer image with at most this many distinct values is taken for a label map."""


def label_map_reason(path: Path) -> Optional[str]:
    """Why an image file looks like a label map rather than a scan (its name, or an
    integer type with few distinct values); None if it does not."""
    if case_name(path).lower().endswith(LABEL_NAME_ENDINGS) or \
            path.name.lower().endswith(".seg.nrrd"):
        return "its name marks a label map"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = list(reader.GetSize())
        if reader.GetPixelID() not in INTEGER_TYPES or len(size) != 3:
            return None
        reader.SetExtractIndex([0, 0, size[2] // 2])   # the middle slice first: a scan
        reader.SetExtractSize(size[:2] + [1])          # shows many values there already
        for whole in (False, True):
            if whole:
                reader.SetExtractIndex([])
                reader.SetExtractSize([])
            image = reader.Execute()        # kept alive while its voxels are viewed
            values = len(np.unique(sitk.GetArrayViewFromImage(image)))
            if values > LABEL_MAP_MAX_VALUES:
                return None
    except RuntimeError:
        return None                       # unreadable: the run reports it as a target
    return f"integer voxels with only {values} distinct values (a label map)"


def list_targets(paths: Sequence[Union[str, Path]], exclude: Sequence[Path] = (),
                 say: Optional[Callable[[str], None]] = None) -> List[Tuple[str, Path]]:
    """``(name, path)`` for each target: image files, DICOM series folders, and the image
    files (or DICOM series sub-folders) inside plain folders. Inside folders, files in
    ``exclude`` (the context images) and files that look like label maps
    (:func:`label_map_reason`) are skipped, each named once through ``say``."""
    excluded = {Path(p).resolve() for p in exclude}
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
            inside = []
            for item in sorted(path.iterdir()):
                if is_image_file(item):
                    reason = "a context image" if item.resolve() in excluded else \
                        label_map_reason(item)
                    if reason is None:
                        inside.append((case_name(item), item))
                    elif say is not None:
                        say(f"skipping {item}: {reason}")
            inside += [(p.name, p) for p in sorted(path.iterdir())
                       if p.is_dir() and dicom_series(p)]
            if not inside:
                raise FileNotFoundError(f"{path}: folder holds no image files or DICOM series "
                                        "to segment")
            targets.extend(inside)
    names = [name for name, _ in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several targets would be written as {duplicates}; rename or "
                         "segment them separately")
    return targets


def check_target_header(path: Path) -> None:
    """A ValueError if an image file's header alone shows it cannot be segmented (not a
    readable image, not a 3D scalar volume), so a run can say so before the model loads;
    DICOM folders and everything else are checked when read."""
    if path.is_dir():
        return
    reader = _header_reader(path)
    check_shape(reader.GetSize(), reader.GetNumberOfComponents(), str(path))
    check_geometry(reader.GetSpacing(), reader.GetOrigin(), str(path))


def segmentation_metadata(mask: sitk.Image,
                          segments: Sequence[Tuple[str, Tuple[float, float, float]]]) -> None:
    """Adds the 3D Slicer segmentation fields to ``mask``: segment ``n`` (from 0) is label
    value ``n + 1`` with its name and colour (RGB in [0, 1]), all in one layer."""
    size = mask.GetSize()
    fields = {"Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ContainedRepresentationNames": "Binary labelmap|"}
    for index, (name, colour) in enumerate(segments):
        fields.update({
            f"Segment{index}_ID": f"Segment_{index + 1}", f"Segment{index}_Name": name,
            f"Segment{index}_Color": " ".join(f"{c:g}" for c in colour),
            f"Segment{index}_LabelValue": str(index + 1), f"Segment{index}_Layer": "0",
            f"Segment{index}_Extent": " ".join(f"0 {s - 1}" for s in size)})
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
