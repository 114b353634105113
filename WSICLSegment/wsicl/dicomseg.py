"""Results as DICOM Segmentation objects (SEG) that reference the DICOM series they were
made from, written with highdicom (``pip install ".[dicom]"``).

One SEG per target series holds every structure of the run as a binary segment (overlaps
kept, as the standard allows), labelled with its context set's name, coloured, and coded:
SNOMED CT "Anatomical Structure" / the organ where the name is a common one
(:mod:`wsicl.terminology`), "Tissue" otherwise. Frames follow the series' slices in the
order SimpleITK read them (by position), so the SEG lies on the images' own grid.
"""
import re
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from . import __version__
from .files import WriteError, atomic_write
from .terminology import ANATOMICAL_STRUCTURE, anatomy_code

Colour = Tuple[float, float, float]


def check_dicom_seg(series_files: Sequence[str], structures: Sequence[str], path: Path
                    ) -> None:
    """Whether ``series_files`` (one DICOM series, in the order read) can carry a DICOM SEG
    of ``structures``: builds one with empty masks from the files' headers, so that a
    missing tag is said before the network runs; a ValueError names the problem."""
    import pydicom
    _require_highdicom()
    sources = [pydicom.dcmread(name, stop_before_pixels=True) for name in series_files]
    first = sources[0]
    frames = np.zeros((len(sources), int(first.get("Rows", 1)), int(first.get("Columns", 1)),
                       len(structures)), dtype=bool)
    _segmentation(sources, frames, structures, [(0.5, 0.5, 0.5)] * len(structures), path)


def write_dicom_seg(masks: Sequence[sitk.Image], structures: Sequence[str],
                    colours: Sequence[Colour], series_files: Sequence[str], path: Path) -> Path:
    """Writes ``masks`` (uint8 0/1 on the series' grid, one per structure) as one DICOM SEG
    referencing ``series_files`` (the series' files in the order they were read), verified by
    reading it back before the rename; a ValueError names what is missing."""
    import pydicom
    hd = _require_highdicom()
    sources = [pydicom.dcmread(name) for name in series_files]
    frames = np.stack([sitk.GetArrayFromImage(mask) for mask in masks], axis=-1) > 0
    if frames.shape[0] != len(sources):
        raise ValueError(f"{path}: {frames.shape[0]} mask slices for a series of "
                         f"{len(sources)} images")
    segmentation = _segmentation(sources, frames, structures, colours, path)
    with atomic_write(path) as temporary:
        segmentation.save_as(str(temporary))
        written = hd.seg.segread(str(temporary))
        if written.number_of_segments != len(masks) or \
                int(np.count_nonzero(written.pixel_array)) != int(np.count_nonzero(frames)):
            raise WriteError(f"{path}: the DICOM SEG did not read back as written (disk "
                             "full?); nothing was kept")
    return path


def _require_highdicom():
    try:
        import highdicom                          # brings pydicom
    except ImportError as error:
        raise ValueError(f"DICOM SEG output needs highdicom ({error.name} is missing); "
                         "install it from the checkout with: pip install '.[dicom]'") from None
    return highdicom


def _segmentation(sources: List, frames: np.ndarray, structures: Sequence[str],
                  colours: Sequence[Colour], path: Path):
    """The highdicom Segmentation of ``frames`` (slices x rows x columns x structures,
    bool) over ``sources``; a missing SliceThickness is taken from the slice positions
    first (as the series' own geometry gives it)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    _fill_slice_thickness(sources)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="WSICL", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions: List = []
    for number, (name, colour) in enumerate(zip(structures, colours), start=1):
        found = anatomy_code(name)
        category = hd.sr.CodedConcept(ANATOMICAL_STRUCTURE[0], "SCT",
                                      ANATOMICAL_STRUCTURE[1]) if found else codes.SCT.Tissue
        kind = hd.sr.CodedConcept(found[0], "SCT", found[1]) if found else codes.SCT.Tissue
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor(*_rgb_to_lab(colour))))
    try:
        return hd.seg.Segmentation(
            source_images=sources, pixel_array=frames.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=999,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="WSICL",
            manufacturer_model_name="WSICL", software_versions=__version__,
            device_serial_number="WSICL", series_description="WSICL segmentation",
            omit_empty_frames=False)        # every slice: the SEG mirrors the series grid
    except AttributeError as error:
        missing = re.search(r"has no attribute '(\w+)'", str(error))
        tag = missing.group(1) if missing else str(error)
        raise ValueError(f"{path}: the series lacks the DICOM attribute {tag}, which a DICOM "
                         "SEG needs; write another --format (e.g. nii.gz)") from None
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: the series cannot carry a DICOM SEG ({error}); write "
                         "another --format") from None


def _fill_slice_thickness(sources: List) -> None:
    """Sets SliceThickness (mm) where a dataset lacks it, from the distance between
    consecutive ImagePositionPatient along the slice normal (their median); nothing when
    positions or orientation are missing too (then that is what is said)."""
    if all("SliceThickness" in source for source in sources):
        return
    try:
        orientation = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        depths = sorted(float(np.dot(normal, np.asarray(s.ImagePositionPatient, dtype=float)))
                        for s in sources)
    except (AttributeError, ValueError, TypeError):
        return
    steps = np.diff(depths)
    thickness = float(np.median(steps)) if steps.size else 1.0
    for source in sources:
        if "SliceThickness" not in source:
            source.SliceThickness = f"{thickness:.6g}"


def _rgb_to_lab(colour: Colour) -> Tuple[float, float, float]:
    """sRGB in [0, 1] to CIE L*a*b* (D65), as DICOM's recommended display colour wants."""
    rgb = np.asarray(colour, dtype=float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])
