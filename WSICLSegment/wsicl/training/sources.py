"""Labelled training volumes: read from image files, or from one portable bundle file.

A bundle (``torch.save`` of plain containers and tensors, read back with
``weights_only=True``) carries every source of a training run to a machine without
SimpleITK or the original files, e.g. a GPU machine that only has torch.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .episodes import Source

BUNDLE_FORMAT = "wsicl-sources"


def read_source(image_path: Union[str, Path], label_path: Union[str, Path], name: str,
                names: Optional[Dict[int, str]] = None, min_voxels: int = 27,
                exclude: Sequence[str] = ()) -> Source:
    """A labelled volume from an image and a label file on the same grid, canonically
    (LPS) oriented, on the CPU.

    ``names`` maps label values to structure names (every non-zero value, named
    ``label N``, when ``None``); structures smaller than ``min_voxels`` or named in
    ``exclude`` are not tasks (their voxels stay labelled for synthesis).
    """
    import SimpleITK as sitk

    from ..geometry import canonical

    image = canonical(sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkFloat32))
    labels = canonical(sitk.ReadImage(str(label_path)))
    array = sitk.GetArrayFromImage(labels).astype(np.int64)
    values, counts = np.unique(array, return_counts=True)
    structures = {}
    for value, count in zip(values.tolist(), counts.tolist()):
        label_name = (names or {}).get(value, f"label {value}")
        if value and count >= min_voxels and label_name not in exclude and (
                names is None or value in names):
            structures[value] = label_name
    return Source(name, torch.from_numpy(sitk.GetArrayFromImage(image)),
                  torch.from_numpy(array), tuple(float(s) for s in image.GetSpacing()[::-1]),
                  structures)


def dataset_sources(folder: Union[str, Path]) -> List[Source]:
    """Every case of an nnU-Net-layout dataset as a source whose structures are the labels
    ``dataset.json`` names."""
    from .tasks import nnunet_cases
    names, cases = nnunet_cases(Path(folder))
    return [read_source(image, labels, f"{Path(folder).name}/{case}", names)
            for case, image, labels in cases]


def save_bundle(sources: Sequence[Source], path: Union[str, Path],
                provenance: Sequence[str]) -> Path:
    """Writes ``sources`` (images as float16, labels as int16) with their provenance."""
    content = {"format": BUNDLE_FORMAT, "provenance": list(provenance), "sources": [
        {"name": s.name, "image": s.image.half(), "labels": s.labels.short(),
         "spacing": list(s.spacing), "structures": {str(k): v for k, v in s.structures.items()}}
        for s in sources]}
    path = Path(path)
    torch.save(content, str(path))
    return path


def load_bundle(path: Union[str, Path], device: Union[str, torch.device] = "cpu"
                ) -> List[Source]:
    """The sources of a bundle, on ``device``."""
    content = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not a WSICL sources bundle")
    return [Source(item["name"], item["image"].float().to(device),
                   item["labels"].long().to(device), tuple(item["spacing"]),
                   {int(k): v for k, v in item["structures"].items()})
            for item in content["sources"]]


def development_sources(data: Union[str, Path], mni_folder: Optional[Union[str, Path]] = None
                        ) -> (List[Source], List[str]):
    """The permissively licensed labelled volumes in ``data`` (the folder the model card
    lists: TotalSegmentator examples, pyradiomics cases, in their published layout) used to
    train the bundled models, and their provenance lines.

    Kept out (the development benchmark): the brain1/brain2 and lung1/lung2 tumour pairs
    and the INIA19 atlas (non-commercial licence, never trained on). ``mni_folder`` holds
    nilearn's copy of the ICBM 2009a T1 template with its grey and white matter maps.
    """
    data = Path(data)
    ts = data / "totalsegmentator_examples"
    class_map = json.loads((ts / "class_map_total_and_total_mr.json").read_text(
        encoding="utf-8"))
    sources = [
        read_source(ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz", "abdominal CT",
                    {int(k): v for k, v in class_map["total"].items()}),
        read_source(ts / "example_mr_sm.nii.gz", ts / "example_seg_mr.nii.gz", "abdominal MR",
                    {int(k): v for k, v in class_map["total_mr"].items()}),
        read_source(data / "pyradiomics_cases" / "breast1_image.nrrd",
                    data / "pyradiomics_cases" / "breast1_label.nrrd", "breast MR",
                    {1: "tumour"}),
    ]
    sources += ct_intensity_sources(sources[0])
    provenance = [
        "abdominal CT and MR with TotalSegmentator labels: TotalSegmentator repository, "
        "tests/reference_files (Apache-2.0); body, air inside it and bone of the CT by "
        "Hounsfield thresholds",
        "breast MR with tumour label: pyradiomics 3.0.1 data/breast1 (BSD-3-Clause)",
    ]
    if mni_folder is not None:
        sources.append(_mni_source(Path(mni_folder)))
        provenance.append("ICBM 2009a nonlinear symmetric T1 template with grey / white "
                          "matter maps at 2 mm, thresholded at 0.5: McConnell Brain Imaging "
                          "Centre, copy shipped in nilearn 0.14.1 (ICBM licence: use, copy, "
                          "modify and distribute with its copyright notice)")
    return sources, provenance


BODY_HU, AIR_HU, BONE_HU = -500.0, -400.0, 250.0
"""Hounsfield thresholds: tissue of the body, air inside it, bone."""
MIN_PART_ML = 1.0
"""Smallest air or bone component kept (smaller ones are noise or vessels with contrast)."""


def ct_intensity_sources(source: Source) -> List[Source]:
    """Large filled structures of a CT made from its Hounsfield units, each a source of its
    own sharing the CT's image: the body (above :data:`BODY_HU`, its largest component,
    holes filled slice by slice along axis 0), the air inside it (below :data:`AIR_HU`:
    lungs, airways, bowel gas) and bone (above :data:`BONE_HU`), both within the body and
    as components of at least :data:`MIN_PART_ML`. Points inside the body or the lungs are
    the large structures the point models had too few of."""
    from scipy import ndimage
    image = source.image.cpu().numpy()
    components, count = ndimage.label(image > BODY_HU)
    if count == 0:
        return []
    sizes = ndimage.sum(np.ones_like(image), components, range(1, count + 1))
    body = components == int(np.argmax(sizes)) + 1
    body = np.stack([ndimage.binary_fill_holes(plane) for plane in body])
    voxel_ml = float(np.prod(source.spacing)) / 1000.0
    made = [("body", body)]
    for name, inside in (("air inside the body", body & (image < AIR_HU)),
                         ("bone", body & (image > BONE_HU))):
        parts, count = ndimage.label(inside)
        sizes = ndimage.sum(inside, parts, range(1, count + 1)) * voxel_ml
        kept = np.isin(parts, 1 + np.flatnonzero(sizes >= MIN_PART_ML))
        if kept.any():
            made.append((name, kept))
    return [Source(f"{source.name} {name}", source.image,
                   torch.from_numpy(mask.astype(np.int64)), source.spacing, {1: name})
            for name, mask in made]


def _mni_source(folder: Path) -> Source:
    import SimpleITK as sitk

    from ..geometry import canonical

    def read(kind: str):
        return canonical(sitk.ReadImage(
            str(folder / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")))

    def halved(image) -> np.ndarray:  # 2x2x2 block means: 1 mm -> 2 mm keeps the bundle small
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        array = array[: array.shape[0] // 2 * 2, : array.shape[1] // 2 * 2,
                      : array.shape[2] // 2 * 2]
        return array.reshape(array.shape[0] // 2, 2, array.shape[1] // 2, 2,
                             array.shape[2] // 2, 2).mean(axis=(1, 3, 5))

    t1 = read("t1")
    grey, white = halved(read("gm")), halved(read("wm"))
    labels = np.zeros(grey.shape, dtype=np.int64)
    labels[(grey >= 128) & (grey >= white)] = 1
    labels[(white >= 128) & (white > grey)] = 2
    spacing = tuple(2 * float(s) for s in t1.GetSpacing()[::-1])
    return Source("brain MR template", torch.from_numpy(halved(t1)), torch.from_numpy(labels),
                  spacing, {1: "grey matter", 2: "white matter"})
