"""Training and evaluation tasks: one binary structure over several subjects.

All arrays are on the cubic model grid in array order ``[D, H, W]`` (axis 0 axial), images
min-max normalised to [0, 1], masks boolean.

- Real tasks come from datasets in the nnU-Net layout (``imagesTr/``, ``labelsTr/``,
  ``dataset.json``): every label value is a task over the subjects that contain it.
- Synthetic tasks are generated without limit: a random label map (thresholded smoothed
  noise and ellipsoid blobs) with per-label intensities, of which one label is the
  structure.

Episodes draw "subjects" of a task with per-subject random deformations (small affine and a
smooth displacement field), bias field, blur and noise; a flip is shared by the whole
episode so left and right stay consistent within a task.
"""
import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..geometry import PreparedImage, canonical, prepare
from ..imageio import case_name, image_files


@dataclasses.dataclass
class Subject:
    """One image and the structure's mask on the model grid."""

    image: np.ndarray
    mask: np.ndarray
    name: str


@dataclasses.dataclass
class Task:
    """One structure over one or more subjects."""

    name: str
    subjects: List[Subject]


@dataclasses.dataclass
class Episode:
    """A target and ``L`` context subjects: ``[1, S, S, S]`` / ``[L, 1, S, S, S]`` tensors."""

    target_image: torch.Tensor
    target_mask: torch.Tensor
    context_images: torch.Tensor
    context_masks: torch.Tensor
    task: str


def label_on_grid(label: sitk.Image, prepared: PreparedImage) -> np.ndarray:
    """An integer label image resampled to a prepared image's model grid (nearest label)."""
    oriented = canonical(label)
    resampled = sitk.Resample(oriented, prepared.grid.empty_image(sitk.sitkUInt16),
                              sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    return sitk.GetArrayFromImage(resampled)


def nnunet_cases(folder: Path) -> (Dict[int, str], List[Tuple[str, Path, Path]]):
    """An nnU-Net-layout dataset's structure names by label value (``dataset.json``'s
    ``labels``, background left out) and its ``(case, image file, label file)`` triples."""
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no dataset.json; expected the nnU-Net layout "
                                "(imagesTr/, labelsTr/, dataset.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    names = {int(v): k for k, v in meta.get("labels", {}).items() if int(v) != 0}
    label_files = {case_name(p): p for p in image_files(folder / "labelsTr")}
    cases = []
    for image_path in image_files(folder / "imagesTr"):
        case = case_name(image_path)
        if case not in label_files:
            raise FileNotFoundError(f"{image_path}: no label file for case '{case}' in "
                                    f"{folder / 'labelsTr'}")
        cases.append((case, image_path, label_files[case]))
    return names, cases


def load_nnunet_dataset(folder: Path, size: int, min_voxels: int = 20,
                        exclude: Sequence[str] = ()) -> List[Task]:
    """Every labelled structure of an nnU-Net-layout dataset as a :class:`Task`.

    ``exclude`` lists structure names (from ``dataset.json``'s ``labels``) to leave out.
    Structures with fewer than ``min_voxels`` voxels on the model grid are skipped.
    """
    folder = Path(folder)
    names, cases = nnunet_cases(folder)
    subjects: Dict[str, List[Subject]] = {}
    for case, image_path, label_path in cases:
        prepared = prepare(sitk.ReadImage(str(image_path)), size, case)
        labels = label_on_grid(sitk.ReadImage(str(label_path)), prepared)
        for value, name in names.items():
            mask = labels == value
            if name in exclude or mask.sum() < min_voxels:
                continue
            subjects.setdefault(name, []).append(Subject(prepared.array, mask, case))
    return [Task(f"{folder.name}/{name}", items) for name, items in sorted(subjects.items())]


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size,) * 3), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def synthetic_task(rng: np.random.Generator, size: int) -> Task:
    """A random label map with per-label intensities; one label is the structure.

    Returns a task with a single base subject; episodes deform it into many subjects.
    """
    labels = np.zeros((size,) * 3, dtype=np.int16)
    levels = int(rng.integers(2, 5))
    noise = _smooth_noise(rng, size, size * rng.uniform(0.06, 0.15))
    edges = np.quantile(noise, np.sort(rng.uniform(0.2, 0.8, levels - 1)))
    labels[...] = np.digitize(noise, edges)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1)
    blobs = int(rng.integers(2, 6))
    for blob in range(blobs):
        centre = rng.uniform(0.2, 0.8, 3) * size
        radii = rng.uniform(0.04, 0.22, 3) * size
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        local = (grid - centre) @ rotation
        wobble = 1 + 0.25 * _smooth_noise(rng, size, size * 0.1)
        labels[((local / radii) ** 2).sum(-1) <= wobble] = levels + blob
    values = np.unique(labels)
    intensities = rng.uniform(0, 1, values.max() + 1)
    image = intensities[labels] + 0.05 * _smooth_noise(rng, size, 1.0)
    candidates = [v for v in values if 30 < (labels == v).sum() < 0.35 * labels.size]
    structure = int(rng.choice(candidates)) if candidates else int(values[-1])
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.0))
    return Task("synthetic", [Subject(_minmax(image), labels == structure, "synthetic")])


def _minmax(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return ((array - low) / max(high - low, 1e-8)).astype(np.float32)


def _random_warp(rng: np.random.Generator, size: int, strength: float) -> torch.Tensor:
    """A ``[1, S, S, S, 3]`` sampling grid: small affine plus a smooth displacement."""
    affine = np.eye(3) + strength * rng.uniform(-0.12, 0.12, (3, 3))
    shift = strength * rng.uniform(-0.08, 0.08, 3)
    theta = torch.tensor(np.concatenate([affine, shift[:, None]], axis=1)[None],
                         dtype=torch.float32)
    base = F.affine_grid(theta, [1, 1, size, size, size], align_corners=False)
    coarse = torch.from_numpy(rng.standard_normal((1, 3, 4, 4, 4)).astype(np.float32))
    displacement = F.interpolate(coarse, size=(size,) * 3, mode="trilinear",
                                 align_corners=False) * (0.04 * strength)
    return base + displacement.permute(0, 2, 3, 4, 1)


def _intensity(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gamma, bias field, blur and noise; renormalised to [0, 1]."""
    size = image.shape[-1]
    image = image.clamp(0, 1) ** float(np.exp(rng.uniform(-0.4, 0.4)))
    bias = torch.from_numpy(rng.standard_normal((1, 1, 3, 3, 3)).astype(np.float32))
    image = image * torch.exp(0.15 * F.interpolate(bias, size=(size,) * 3, mode="trilinear",
                                                   align_corners=False))
    if rng.random() < 0.3:
        image = F.avg_pool3d(F.pad(image, (1,) * 6, mode="replicate"), 3, stride=1)
    image = image + float(rng.uniform(0, 0.05)) * torch.randn(
        image.shape, generator=torch.Generator().manual_seed(int(rng.integers(2 ** 31))))
    low, high = image.amin(), image.amax()
    return (image - low) / (high - low).clamp_min(1e-8)


def make_subject(subject: Subject, rng: np.random.Generator, flips: Sequence[int],
                 strength: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A deformed, intensity-augmented copy: image and mask ``[1, S, S, S]``."""
    size = subject.image.shape[-1]
    stacked = torch.from_numpy(np.stack([subject.image, subject.mask.astype(np.float32)]))[None]
    if flips:
        stacked = torch.flip(stacked, [2 + axis for axis in flips])
    warped = F.grid_sample(stacked, _random_warp(rng, size, strength), mode="bilinear",
                           padding_mode="border", align_corners=False)[0]
    return _intensity(warped[:1][None], rng)[0], (warped[1:] >= 0.5).float()


def sample_episode(task: Task, context_size: int, rng: np.random.Generator,
                   interactive: bool = False) -> Episode:
    """A target and ``context_size`` context subjects of ``task``.

    Distinct real subjects are used where the task has enough; the rest are deformed
    copies. With ``interactive`` the first context subject is the target itself.
    """
    flips = [axis for axis in range(3) if rng.random() < 0.5]
    order = rng.permutation(len(task.subjects))
    picks = [task.subjects[order[i % len(order)]] for i in range(context_size + 1)]
    made = [make_subject(s, rng, flips, strength=float(rng.uniform(0.3, 1.0))) for s in picks]
    if interactive:
        made[1] = made[0]
    images = torch.stack([m[0] for m in made[1:]])
    masks = torch.stack([m[1] for m in made[1:]])
    return Episode(made[0][0], made[0][1], images, masks, task.name)
