"""Shared fixtures: tiny networks and small synthetic volumes (nothing read from outside
the repository)."""
import sys
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from wsicl import Predictor
from wsicl.checkpoints import ModelInfo, build_model

DATA = Path(__file__).resolve().parent / "Data"
MODULE_DIR = Path(__file__).resolve().parent.parent / "WSICLSegment"
sys.path.insert(0, str(MODULE_DIR))


def make_image(array_kji: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               origin: Sequence[float] = (0.0, 0.0, 0.0),
               direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """A SimpleITK image from an array in (k, j, i) order with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


CPU_FP32 = ["--device", "cpu", "--precision", "fp32"]
"""The command-line options of :func:`cpu_fp32`."""


def results(folder: Path) -> list:
    """The names of the files a run wrote into ``folder``, without its run report
    (``wsicl-run*.json`` / ``.csv``) and its records (``.wsicl-records/``), sorted."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if not p.name.startswith(("wsicl-run", ".wsicl-records")))


def cpu_fp32(model, **options) -> Predictor:
    """A predictor on the CPU in fp32. Tests that compare numbers state their precision:
    ``auto`` is bfloat16 on CPUs with AMX or AVX512-BF16 and fp32 elsewhere, and CI's
    machines are of either kind (see Testing/README.md)."""
    return Predictor(model, device="cpu", precision="fp32", **options)


def rotation_direction(angle_degrees: float, axis: int = 2) -> Tuple[float, ...]:
    """A 3x3 rotation about LPS ``axis`` as a flat direction matrix."""
    angle = np.deg2rad(angle_degrees)
    c, s = np.cos(angle), np.sin(angle)
    plane = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[plane[0], plane[0]] = c
    matrix[plane[0], plane[1]] = -s
    matrix[plane[1], plane[0]] = s
    matrix[plane[1], plane[1]] = c
    return tuple(matrix.ravel())


def sphere_volume(shape_kji: Sequence[int], centre_kji: Sequence[float], radius: float,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A boolean ball of ``radius`` mm at ``centre_kji`` (voxel indices, array order)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    spacing_kji = list(reversed(list(spacing)))
    squared = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_kji, spacing_kji))
    return squared <= radius ** 2


@pytest.fixture
def tiny_network():
    """A random 4-8-16 network on a 32^3 grid reading box prompts."""
    torch.manual_seed(0)
    return build_model(ModelInfo(channels=[4, 8, 16], input_size=32, prompt_kinds=["box"],
                                 source="tiny test network"))


@pytest.fixture
def blob_image() -> sitk.Image:
    """A 40x36x24 (i, j, k) anisotropic image with a bright ellipsoid and mild noise."""
    rng = np.random.default_rng(0)
    ball = sphere_volume((24, 36, 40), (12, 18, 20), 9.0, (0.9, 0.9, 1.5))
    array = (ball * 100.0 + rng.normal(0, 5, ball.shape)).astype(np.float32)
    return make_image(array, spacing=(0.9, 0.9, 1.5), origin=(-10.0, 20.0, 5.0))
