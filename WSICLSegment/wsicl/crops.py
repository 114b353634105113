"""The crop rule: the region of an image the network sees around a structure.

Models trained with crops (``ModelInfo.input_policy == "crop"``) see a roughly cubic box
around the prompts (interactive mode, context images) or around a first-pass mask (the
target in in-context mode), not the whole field of view, so that a small structure fills
a useful part of the model grid. Training (``wsicl.training.episodes``) and inference
(``wsicl.predictor``) call the same function, so both see structures at the same scale.

Regions are axis-aligned boxes in *continuous voxel coordinates* of one image (voxel ``n``
covers ``[n - 0.5, n + 0.5]``), in whichever axis order the caller uses consistently;
``spacing`` gives millimetres per voxel in that order.
"""
from typing import Sequence, Tuple

import numpy as np
import torch

CROP_MARGIN = 1.6
"""Side of the crop over the largest extent of what it is centred on (inference)."""

MIN_SIDE_MM = 40.0
"""Smallest crop side (mm) for box prompts and masks: a 5 mm lesion still sees context."""

POINT_SIDE_MM = 96.0
"""Smallest crop side (mm) for point prompts, which carry no extent of their own."""

Region = Tuple[np.ndarray, np.ndarray]


def crop_region(low: Sequence[float], high: Sequence[float], spacing: Sequence[float],
                shape: Sequence[int], margin: float = CROP_MARGIN,
                min_side_mm: float = MIN_SIDE_MM, shift: Sequence[float] = (0, 0, 0)
                ) -> Region:
    """The crop around the box ``[low, high]`` (continuous voxel coordinates).

    The crop is a cube in millimetres centred on the box (moved by ``shift`` times its
    side, per axis) with side
    ``max(min_side_mm, margin * largest extent of the box in mm)``, then clipped to the
    image ``[-0.5, shape - 0.5]``. A structure large relative to the image therefore gets
    the whole image along that axis. Returns ``(low, high)`` voxel coordinates of the crop.
    """
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    spacing = np.asarray(spacing, dtype=float)
    extent_mm = (high - low) * spacing
    side_mm = max(float(min_side_mm), float(margin) * float(extent_mm.max()))
    centre = (low + high) / 2 + np.asarray(shift, dtype=float) * side_mm / spacing
    half = side_mm / 2 / spacing
    bound_low, bound_high = whole_region(shape)
    crop_low = np.clip(centre - half, bound_low, bound_high)
    crop_high = np.clip(centre + half, bound_low, bound_high)
    # A crop pushed against a face keeps its size by extending to the other side.
    short = (2 * half) - (crop_high - crop_low)
    crop_low = np.where(crop_high >= bound_high, np.maximum(crop_low - short, bound_low), crop_low)
    crop_high = np.where(crop_low <= bound_low, np.minimum(crop_high + short, bound_high),
                         crop_high)
    return crop_low, crop_high


def whole_region(shape: Sequence[int]) -> Region:
    """The region of the whole image."""
    return np.full(3, -0.5), np.asarray(shape, dtype=float) - 0.5


def robust_unit_range(volume: torch.Tensor, low: float = 0.005, high: float = 0.995
                      ) -> torch.Tensor:
    """Per-volume intensity normalisation: the ``low`` / ``high`` quantiles map to 0 / 1,
    values beyond are clipped. ``volume`` is ``[..., D, H, W]``; each leading index is one
    volume. A constant volume maps to zeros."""
    flat = volume.reshape(-1, volume.shape[-3] * volume.shape[-2] * volume.shape[-1]).float()
    if flat.shape[1] > 2 ** 24:
        flat_sample = flat[:, :: flat.shape[1] // 2 ** 22 + 1]
    else:
        flat_sample = flat
    bounds = torch.quantile(flat_sample, torch.tensor([low, high], device=flat.device), dim=1)
    scale = (bounds[1] - bounds[0]).clamp_min(1e-6)
    out = ((flat - bounds[0][:, None]) / scale[:, None]).clamp_(0, 1)
    return out.reshape(volume.shape)
