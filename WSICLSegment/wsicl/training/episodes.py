"""The training data engine: unlimited episodes made on the fly, in torch (CPU or GPU).

An *episode* is a target and ``L`` context images of one structure, each a crop (see
:mod:`wsicl.crops`) resampled to the ``S^3`` model grid, with the prompt channels of the
context images and the target's mask. Everything is in array order ``[D, H, W]`` of the
canonical (LPS-oriented) image, axis 0 axial.

Where the tasks come from (each drawn per episode):

- *labelled sources*: every structure of a real label map (or a union of two);
- *random shapes*: label maps made as the argmax of smooth noise channels (SynthMorph
  style), for structures no source has;
- *intensity pseudo-labels*: a real image cut into smoothed-intensity bins times a random
  partition, so real anatomy and contrast give unlimited pseudo-structures.

How images are drawn: half of the time the real image; otherwise label-to-image synthesis
(SynthSeg style: a random Gaussian intensity per label and per intensity tercile of the
unlabelled tissue, shared by the episode's subjects with a small jitter). Then per subject
a random rotation, scaling and smooth deformation about the crop centre, bias field,
gamma, blur, noise, and the robust per-crop normalisation of inference.

Episodes come in two kinds: *interactive* (the target is its own single context; the
crop is centred on its prompts) and *in context* (``L`` other subjects of the same task:
deformed copies of the source, or the same structure in another source; each context
crop centred on its own prompts, the target crop on its mask's bounding box moved and
resized at random, as a first pass would give; sometimes whole views for that first pass).
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..crops import MIN_SIDE_MM, POINT_SIDE_MM, crop_region, robust_unit_range, whole_region
from ..prompts import ball_slices, ball_template


@dataclasses.dataclass
class Source:
    """A labelled volume: ``image`` float32 and ``labels`` int64 ``[D, H, W]`` (array
    order, canonical orientation) on one device, ``spacing`` mm per array axis;
    ``structures`` maps label values usable as tasks to their names."""

    name: str
    image: torch.Tensor
    labels: torch.Tensor
    spacing: Tuple[float, float, float]
    structures: Dict[int, str]

    def to(self, device: Union[str, torch.device]) -> "Source":
        """The same source on ``device`` (itself where it already is)."""
        return dataclasses.replace(self, image=self.image.to(device),
                                   labels=self.labels.to(device))


Table = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Label-to-image synthesis of one source: class map, mean and noise level per class."""


@dataclasses.dataclass
class Batch:
    """``B`` episodes with ``L`` context images each (tensors on the engine's device):
    ``target`` ``[B, 1, S, S, S]``, ``target_mask`` ``[B, 1, S, S, S]`` (0/1),
    ``context`` and ``prompts`` ``[B, L, 1, S, S, S]``; ``tasks`` names the structures."""

    target: torch.Tensor
    target_mask: torch.Tensor
    context: torch.Tensor
    prompts: torch.Tensor
    tasks: List[str]

    def to(self, device: torch.device) -> "Batch":
        """The same batch on ``device`` (itself where it already is)."""
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.target, self.target_mask, self.context, self.prompts)), self.tasks)


def _smooth_noise(shape: Sequence[int], channels: int, coarse: int,
                  generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[channels, *shape]`` smooth random fields (coarse noise, trilinear upsampling)."""
    noise = torch.randn((1, channels, coarse, coarse, coarse), generator=generator,
                        device=device)
    return F.interpolate(noise, size=tuple(shape), mode="trilinear", align_corners=False)[0]


def quantile_bins(volume: torch.Tensor, bins: int) -> torch.Tensor:
    """Each voxel's intensity bin, 0 .. ``bins - 1``, between equal-count quantiles
    (estimated on at most ~200,000 voxels)."""
    sample = volume.flatten()[:: max(1, volume.numel() // 200000)]
    edges = torch.quantile(sample, torch.linspace(0, 1, bins + 1, device=volume.device)[1:-1])
    return torch.bucketize(volume, edges)


LARGE_SHAPES_SHARE = 0.25
"""Share of random-shape maps with 2-4 channels, whose shapes fill up to 70 % of the
volume: organs larger than any crop, which the labelled sources rarely give."""


def random_shapes_source(rng: np.random.Generator, generator: torch.Generator,
                         device: torch.device, size: int = 96) -> Source:
    """A label map as the argmax of 6-14 smooth noise channels on a ``size^3`` grid at
    2 mm (:data:`LARGE_SHAPES_SHARE` of the time 2-4 channels, large shapes); the image is
    empty (only synthesis draws its intensities)."""
    large = rng.random() < LARGE_SHAPES_SHARE
    channels = int(rng.integers(2, 5)) if large else int(rng.integers(6, 15))
    fields = _smooth_noise((size,) * 3, channels, int(rng.integers(4, 9)), generator, device)
    labels = fields.argmax(0) + 1
    largest = 0.7 if large else 0.3
    structures = {value: "random shape" for value in range(1, channels + 1)
                  if 0.002 < float((labels == value).float().mean()) < largest}
    return Source("random shapes", torch.zeros_like(labels, dtype=torch.float32), labels,
                  (2.0, 2.0, 2.0), structures)


def pseudo_label_source(source: Source, rng: np.random.Generator,
                        generator: torch.Generator) -> Source:
    """Pseudo-structures of a real image: smoothed-intensity bins (3-6 quantile bins) times
    a random partition of space into 2-5 smooth regions."""
    image = source.image[None, None]
    blurred = F.avg_pool3d(F.pad(image, (1,) * 6, mode="replicate"), 3, stride=1)[0, 0]
    intensity_bin = quantile_bins(blurred, int(rng.integers(3, 7)))
    parts = int(rng.integers(2, 6))
    partition = _smooth_noise(blurred.shape, parts, int(rng.integers(2, 5)), generator,
                              image.device).argmax(0)
    labels = intensity_bin * parts + partition + 1
    structures = {value: "pseudo-label" for value in torch.unique(labels).tolist()
                  if 0.002 < float((labels == value).float().mean()) < 0.3}
    return Source(f"{source.name} pseudo-labels", source.image, labels, source.spacing,
                  structures)


@dataclasses.dataclass
class EngineConfig:
    """How episodes are drawn.

    ``size``: model-grid edge; ``prompt``: ``"box"`` or ``"point"``; ``max_context``:
    largest ``L``; ``interactive_fraction``: share of batches that are interactive;
    ``synthesis_fraction``: share of subjects drawn by label-to-image synthesis;
    ``shapes_fraction`` / ``pseudo_fraction``: share of episodes on random shapes /
    intensity pseudo-labels (the rest on labelled sources); ``whole_view_fraction``: share
    of in-context episodes seen whole (the first pass); ``margin``: range of crop margins;
    ``point_side``: range of the point crop's side over ``POINT_SIDE_MM`` (drawn
    log-uniformly; below 1 it stands for structures larger than the training sources hold,
    so that points inside organs larger than their crop are common);
    ``guided_fraction``: share of cropped in-context targets drawn as the context-guided
    first pass of inference sees them (the structure's prompt boxes on a few slices, moved
    by a misregistration), the rest around a simulated first pass's mask.
    """

    size: int = 64
    prompt: str = "box"
    max_context: int = 4
    max_slices: int = 5
    interactive_fraction: float = 0.5
    synthesis_fraction: float = 0.5
    shapes_fraction: float = 0.2
    pseudo_fraction: float = 0.2
    whole_view_fraction: float = 0.2
    union_fraction: float = 0.2
    margin: Tuple[float, float] = (1.2, 2.4)
    point_side: Tuple[float, float] = (0.7, 1.4)
    guided_fraction: float = 0.5


class EpisodeEngine:
    """Draws batches of episodes from ``sources``; draws depend only on ``(seed, step)``."""

    def __init__(self, sources: Sequence[Source], config: EngineConfig, seed: int = 0,
                 device: str = "cpu") -> None:
        if not sources and config.shapes_fraction < 1:
            raise ValueError("no labelled sources: give sources or shapes_fraction=1")
        self.device = torch.device(device)
        self.sources = [s.to(self.device) for s in sources if s.structures]
        self.config = config
        self.seed = seed
        radius = 6
        self.ball = torch.from_numpy(ball_template(radius).copy()).to(self.device)
        by_name: Dict[str, List[Tuple[int, int]]] = {}
        for index, source in enumerate(self.sources):
            for value, name in source.structures.items():
                by_name.setdefault(name, []).append((index, value))
        self.shared = {name: where for name, where in by_name.items()
                       if len({i for i, _ in where}) > 1}

    # ---- tasks -------------------------------------------------------------------------
    def _task(self, rng: np.random.Generator, generator: torch.Generator
              ) -> Tuple[List[Tuple[Source, torch.Tensor]], str]:
        """Sources with the structure's mask for the episode's subjects (one or two
        sources; the first is the target's) and the task name."""
        config = self.config
        draw = rng.random()
        if draw < config.shapes_fraction or not self.sources:
            source = random_shapes_source(rng, generator, self.device)
        elif draw < config.shapes_fraction + config.pseudo_fraction:
            real = self.sources[int(rng.integers(len(self.sources)))]
            source = pseudo_label_source(real, rng, generator)
        else:
            source = self.sources[int(rng.integers(len(self.sources)))]
        values = list(source.structures)
        if not values:
            return self._task(rng, generator)
        value = values[int(rng.integers(len(values)))]
        name = source.structures[value]
        mask = source.labels == value
        if rng.random() < config.union_fraction and len(values) > 1:
            other = [v for v in values if v != value][int(rng.integers(len(values) - 1))]
            mask = mask | (source.labels == other)
            name = f"{name} + {source.structures[other]}"
        pairs = [(source, mask)]
        if name in self.shared and rng.random() < 0.5:
            index, other_value = self.shared[name][int(rng.integers(len(self.shared[name])))]
            other_source = self.sources[index]
            if other_source is not source:
                pairs.append((other_source, other_source.labels == other_value))
        return pairs, f"{source.name}: {name}"

    # ---- geometry ----------------------------------------------------------------------
    def _prompt_slices(self, mask: torch.Tensor, count: int, rng: np.random.Generator
                       ) -> List[int]:
        areas = mask.flatten(1).sum(1).float().cpu().numpy()
        candidates = np.flatnonzero(areas)
        count = min(count, candidates.size)
        return sorted(rng.choice(candidates, size=count, replace=False,
                                 p=areas[candidates] / areas[candidates].sum()).tolist())

    @staticmethod
    def _bounds(mask: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """Tight bounding box of a 3D mask in continuous voxel coordinates (edges)."""
        low, high = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            present = torch.nonzero(mask.any(dim=other)).flatten()
            low.append(float(present[0]) - 0.5)
            high.append(float(present[-1]) + 0.5)
        return np.array(low), np.array(high)

    def _anchors(self, mask: torch.Tensor, slices: Sequence[int], rng: np.random.Generator
                 ) -> np.ndarray:
        """Where the prompts on ``slices`` lie in the source, as inference sees them:
        ``[len(slices), 2, 3]``, each prompt's low and high corner in continuous voxel
        coordinates; a 2D box spans the structure's in-plane bounds on its slice, a point
        (both corners) is a random voxel of the structure on its slice."""
        anchors = []
        for axial in slices:
            if self.config.prompt == "box":
                plane_low, plane_high = self._bounds(mask[axial][None].expand(1, -1, -1))
                anchors.append([[axial, *plane_low[1:]], [axial, *plane_high[1:]]])
            else:
                voxels = torch.nonzero(mask[axial])
                point = [axial, *voxels[int(rng.integers(len(voxels)))].tolist()]
                anchors.append([point, point])
        return np.asarray(anchors, dtype=float)

    def _region(self, source: Source, mask: torch.Tensor, rng: np.random.Generator,
                anchors: Optional[np.ndarray], whole: bool) -> Tuple[np.ndarray, np.ndarray]:
        """The crop around prompt ``anchors`` (the inference rule: a point carries no extent,
        so its crop is the point side wherever the structure ends) or, without anchors,
        around a simulated first pass's mask."""
        shape = mask.shape
        if whole:
            return whole_region(shape)
        margin = float(rng.uniform(*self.config.margin))
        guided = False
        if anchors is not None:
            low, high = anchors[:, 0].min(axis=0), anchors[:, 1].max(axis=0)
        elif rng.random() < self.config.guided_fraction:
            # where context prompts would point: boxes on a few prompted slices of the
            # structure, moved by a misregistration of sd 3 % of the image extent per axis
            slices = self._prompt_slices(mask, int(rng.integers(1, self.config.max_slices + 1)),
                                         rng)
            guide = self._anchors(mask, slices, rng)
            moved = rng.normal(0, 0.03, 3) * np.asarray(shape, dtype=float)
            low, high = guide[:, 0].min(axis=0) + moved, guide[:, 1].max(axis=0) + moved
            guided = True
        else:  # a first pass's mask: the true box, each face moved by up to 15 % of its size
            low, high = self._bounds(mask)
            extent = high - low
            low = low + rng.normal(0, 0.08, 3) * extent
            high = np.maximum(high + rng.normal(0, 0.08, 3) * extent, low + 1)
        prompted = anchors is not None or guided       # a crop ruled by prompts' extent
        min_side = MIN_SIDE_MM if self.config.prompt == "box" or not prompted \
            else POINT_SIDE_MM * float(np.exp(rng.uniform(*np.log(self.config.point_side))))
        shift = rng.normal(0, 0.04, 3) * np.array([0.3, 1, 1])  # sd 4 % of the side
        return crop_region(low, high, source.spacing, shape, margin, min_side, shift)

    def _sampling_grid(self, source: Source, region: Tuple[np.ndarray, np.ndarray],
                       rng: np.random.Generator, generator: torch.Generator, strength: float,
                       oversample: int) -> torch.Tensor:
        """``[1, N, N, N, 3]`` grid_sample coordinates of the crop's voxel centres at
        ``oversample`` times the model resolution, rotated, scaled and deformed about
        the crop centre (millimetres).

        The rotation and scaling are one affine map of the output's normalised coordinates
        ``u`` (``affine_grid``, half-pixel centres): a crop voxel lies ``u * half`` mm from
        the crop centre (``half``: the crop's half side per axis, mm), is moved to
        ``M (u * half)`` (``M``: rotation times scaling), then read at that many mm from
        the centre in the source's normalised index coordinates; the smooth deformation is
        added to that grid. Array order ``[D, H, W]`` throughout, reversed to grid_sample's
        ``(x, y, z)`` at the end."""
        size = self.config.size * oversample
        low, high = (np.asarray(v, dtype=float) for v in region)
        spacing = np.asarray(source.spacing, dtype=float)
        shape = np.asarray(source.labels.shape, dtype=float)
        matrix = np.eye(3)
        if strength > 0:
            angles = rng.uniform(-1, 1, 3) * math.radians(12) * strength
            for axis, angle in enumerate(angles):
                a, b = [x for x in range(3) if x != axis]
                turn = np.eye(3)
                turn[a, a] = turn[b, b] = math.cos(angle)
                turn[a, b], turn[b, a] = -math.sin(angle), math.sin(angle)
                matrix = matrix @ turn
            matrix = matrix * np.exp(rng.uniform(-0.15, 0.15, 3) * strength)
        half_mm = (high - low) / 2 * spacing
        linear = (2 / (shape * spacing))[:, None] * matrix * half_mm[None, :]
        offset = (low + high) / shape + 1 / shape - 1
        theta = np.concatenate([linear[::-1, ::-1], offset[::-1, None]], 1)
        grid = F.affine_grid(torch.tensor(theta[None], dtype=torch.float32, device=self.device),
                             [1, 1, size, size, size], align_corners=False)
        if strength > 0:
            extent = float(((high - low) * spacing).max())
            displacement = _smooth_noise((size,) * 3, 3, 5, generator, self.device)
            scale = torch.tensor(0.03 * extent * strength * 2 / (shape * spacing),
                                 dtype=torch.float32, device=self.device)
            grid = grid + (displacement * scale[:, None, None, None]).permute(1, 2, 3, 0) \
                .flip(-1)[None]
        return grid

    # ---- images ------------------------------------------------------------------------
    def _intensity_table(self, source: Source, rng: np.random.Generator) -> Table:
        """The synthesis classes of ``source`` (label values; unlabelled voxels split into
        three intensity terciles, ``max + 1 .. max + 3``) with a random mean and noise level
        per class."""
        top = int(source.labels.max())
        terciles = quantile_bins(source.image, 3) + top + 1
        classes = torch.where(source.labels > 0, source.labels, terciles)
        means = torch.tensor(rng.uniform(0, 1, top + 4), dtype=torch.float32,
                             device=self.device)
        sds = torch.tensor(rng.uniform(0.01, 0.08, top + 4), dtype=torch.float32,
                           device=self.device)
        return classes, means, sds

    def _subject(self, source: Source, mask: torch.Tensor, region, rng, generator,
                 strength: float, table: Optional[Table]) -> Tuple[torch.Tensor, torch.Tensor]:
        """An image ``[S, S, S]`` (normalised) and mask ``[S, S, S]`` (0/1) of one subject."""
        oversample = 2
        grid = self._sampling_grid(source, region, rng, generator, strength, oversample)
        mask_fine = F.grid_sample(mask[None, None].float(), grid, mode="nearest",
                                  padding_mode="zeros", align_corners=False)
        crop_mask = (F.avg_pool3d(mask_fine, oversample) >= 0.5).float()[0, 0]
        if table is not None:
            classes, means, sds = table
            fine_classes = F.grid_sample(classes[None, None].float(), grid, mode="nearest",
                                         padding_mode="border", align_corners=False).long()
            jitter = 1 + 0.05 * torch.randn(means.shape, generator=generator,
                                            device=self.device)
            fine = (means * jitter)[fine_classes] + sds[fine_classes] * torch.randn(
                fine_classes.shape, generator=generator, device=self.device)
        else:
            fine = F.grid_sample(source.image[None, None], grid, mode="bilinear",
                                 padding_mode="border", align_corners=False)
        image = F.avg_pool3d(fine, oversample)
        return self._augment(image, rng, generator)[0, 0], crop_mask

    def _augment(self, image: torch.Tensor, rng: np.random.Generator,
                 generator: torch.Generator) -> torch.Tensor:
        """Bias field, blur, gamma, noise, occasional inversion; robust normalisation."""
        image = robust_unit_range(image)
        size = image.shape[-3:]
        bias = _smooth_noise(size, 1, 3, generator, self.device)[None]
        image = image * torch.exp(float(rng.uniform(0, 0.3)) * bias)
        if rng.random() < 0.3:
            image = F.avg_pool3d(F.pad(image, (1,) * 6, mode="replicate"), 3, stride=1)
        image = robust_unit_range(image) ** float(np.exp(rng.uniform(-0.4, 0.4)))
        if rng.random() < 0.1:
            image = 1 - image
        image = image + float(rng.uniform(0, 0.06)) * torch.randn(
            image.shape, generator=generator, device=self.device)
        return robust_unit_range(image)

    # ---- prompts -----------------------------------------------------------------------
    def _stamp_box(self, channel: torch.Tensor, plane: torch.Tensor, axial: int,
                   rng: np.random.Generator) -> None:
        """A 2D box on crop slice ``axial``: the tight in-plane box of ``plane`` (that
        slice's mask) with each edge jittered by round(N(0, 1)) voxels, as a 3-slice slab."""
        size = channel.shape[0]
        low, high = self._bounds(plane[None].expand(1, -1, -1))
        jitter = np.rint(rng.standard_normal(4)).astype(int)
        b0 = int(np.clip(low[1] + 0.5 + jitter[0], 0, size - 1))
        c0 = int(np.clip(low[2] + 0.5 + jitter[1], 0, size - 1))
        b1 = int(np.clip(high[1] + 0.5 + jitter[2], b0 + 1, size))
        c1 = int(np.clip(high[2] + 0.5 + jitter[3], c0 + 1, size))
        a0 = min(max(axial - 1, 0), size - 3)
        channel[a0:a0 + 3, b0:b1, c0:c1] = 1

    def _stamp_ball(self, channel: torch.Tensor, centre: Sequence[int]) -> None:
        target, source = ball_slices(centre, channel.shape, self.ball.shape[0] // 2)
        view = channel[target]
        torch.maximum(view, self.ball[source], out=view)

    # ---- episodes ----------------------------------------------------------------------
    def _episode(self, rng: np.random.Generator, generator: torch.Generator,
                 context_size: int, interactive: bool):
        config = self.config
        pairs, name = self._task(rng, generator)
        source, mask = pairs[0]
        synthesis = rng.random() < config.synthesis_fraction or not float(source.image.std())
        table = self._intensity_table(source, rng) if synthesis else None
        if interactive:
            slices = self._prompt_slices(mask, 1 if rng.random() < 0.6 else
                                         int(rng.integers(2, 4)), rng)
            anchors = self._anchors(mask, slices, rng)
            region = self._region(source, mask, rng, anchors, whole=False)
            image, crop_mask = self._subject(source, mask, region, rng, generator, 0.5, table)
            if not crop_mask.any():
                return None
            prompts = self._prompt_channel_on(crop_mask, rng, anchors, region)
            return image[None], crop_mask[None], image[None, None], prompts[None, None], name
        whole = rng.random() < config.whole_view_fraction
        region = self._region(source, mask, rng, None, whole)
        target, target_mask = self._subject(source, mask, region, rng, generator, 1.0, table)
        if not target_mask.any():
            return None
        images, channels = [], []
        for index in range(context_size):
            other, other_mask = pairs[index % len(pairs) if len(pairs) > 1 and index else 0]
            other_table = table if other is source else (
                self._intensity_table(other, rng) if synthesis else None)
            slices = self._prompt_slices(other_mask, int(rng.integers(1, config.max_slices + 1)),
                                         rng)
            anchors = self._anchors(other_mask, slices, rng)
            context_region = self._region(other, other_mask, rng, anchors, whole)
            image, context_mask = self._subject(other, other_mask, context_region, rng,
                                                generator, 1.0, other_table)
            if not context_mask.any():
                return None
            images.append(image)
            channels.append(self._prompt_channel_on(context_mask, rng, anchors, context_region))
        return (target[None], target_mask[None], torch.stack(images)[:, None],
                torch.stack(channels)[:, None], name)

    def _prompt_channel_on(self, crop_mask: torch.Tensor, rng: np.random.Generator,
                           anchors: np.ndarray, region: Tuple[np.ndarray, np.ndarray]
                           ) -> torch.Tensor:
        """The prompts of source ``anchors`` on a crop made from ``region``: on the crop
        slice nearest to each anchor's slice that shows the structure, a jittered tight box,
        or a ball at the structure's voxel nearest to the anchor point."""
        size = self.config.size
        low, high = region
        channel = torch.zeros_like(crop_mask)
        present = torch.nonzero(crop_mask.flatten(1).any(1)).flatten()
        for corner, _ in anchors:       # a box's low corner is on its slice; a point's is it
            at = np.clip((corner - low) / (high - low) * size, 0, size - 1)
            nearest = int(present[torch.argmin((present - int(at[0])).abs())])
            if self.config.prompt == "box":
                self._stamp_box(channel, crop_mask[nearest], nearest, rng)
            else:
                voxels = torch.nonzero(crop_mask[nearest]).float()
                distance = (voxels - torch.tensor(at[1:], dtype=torch.float32,
                                                  device=voxels.device)).square().sum(1)
                b, c = voxels[int(torch.argmin(distance))].long().tolist()
                self._stamp_ball(channel, (nearest, b, c))
        return channel

    def batch(self, step: int, batch_size: int) -> Batch:
        """The batch of ``step``: all interactive (``L = 1``) or all in context."""
        rng = np.random.default_rng([self.seed, step])
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(rng.integers(2 ** 62)))
        interactive = rng.random() < self.config.interactive_fraction
        context_size = 1 if interactive else int(rng.integers(1, self.config.max_context + 1))
        episodes = []
        while len(episodes) < batch_size:
            episode = self._episode(rng, generator, context_size, interactive)
            if episode is not None:
                episodes.append(episode)
        target, target_mask, context, prompts, names = zip(*episodes)
        return Batch(torch.stack(target), torch.stack(target_mask), torch.stack(context),
                     torch.stack(prompts), list(names))
