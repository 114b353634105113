"""Training with simulated weak prompts (the WS-ICL recipe), from scratch or fine-tuning.

Each step draws a task (synthetic, or a real structure from the datasets), a context size
``L``, a target and ``L`` context subjects, simulated prompts on the context subjects, and
minimises the weighted smooth-L1 loss of the raw output against the target mask with
Adam. A step's random draws depend only on ``(seed, step, rank)``, so a run resumed from
its checkpoint continues bit-exactly. Multi-GPU: launch with ``torchrun``; each process
trains on its own draws through DistributedDataParallel.
"""
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..checkpoints import ModelInfo, build_model, load_model, restore_training, save_model
from ..device import autocast, pick_device
from ..metrics import dice
from ..network import WSICLNet
from .losses import descend, weighted_smooth_l1
from .simulate import simulated_channel
from .tasks import Episode, Task, load_nnunet_dataset, sample_episode, synthetic_task

CHECKPOINT_NAME = "last.pt"


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints).

    ``size`` is the model-grid edge in voxels; ``channels`` and ``convs_per_stage`` the
    architecture (ignored with ``init``, which brings its own); ``max_context`` the largest
    context size drawn per step; ``max_slices`` the most prompted slices per context image;
    ``interactive_fraction`` the share of steps where the target is its own first context;
    ``synthetic_fraction`` the share of steps on synthetic tasks when datasets are given;
    ``val_datasets`` hold the structures kept out of training for validation (synthetic
    tasks of a separate seed without them); ``precision`` as for inference
    (:data:`wsicl.options.PRECISIONS`; ``auto``: bfloat16 autocast where native).
    """

    output: str
    steps: int = 1000
    channels: List[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128])
    convs_per_stage: int = 2
    size: int = 64
    prompt: str = "box"
    datasets: List[str] = dataclasses.field(default_factory=list)
    val_datasets: List[str] = dataclasses.field(default_factory=list)
    synthetic: bool = False
    synthetic_fraction: float = 0.5
    init: Optional[str] = None
    lr: float = 2e-4
    clip: float = 2.5
    max_context: int = 4
    max_slices: int = 3
    interactive_fraction: float = 0.3
    seed: int = 0
    device: str = "auto"
    val_every: int = 100
    val_episodes: int = 8
    checkpoint_every: int = 50
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.prompt not in ("box", "point"):
            raise ValueError(f"prompt must be 'box' or 'point', got {self.prompt!r}")
        if not self.synthetic and not self.datasets:
            raise ValueError("no training data: give --synthetic and/or --dataset DIR")
        if self.size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"size {self.size} must be a multiple of "
                             f"{2 ** (len(self.channels) - 1)} for {len(self.channels)} stages")


def prompt_channels(masks: torch.Tensor, kind: str, max_slices: int,
                    rng: np.random.Generator, radius: int = 6) -> torch.Tensor:
    """Simulated prompt channels ``[L, 1, S, S, S]`` for context masks ``[L, 1, S, S, S]``."""
    channels = []
    for mask in masks[:, 0].numpy() > 0.5:
        slices = int(rng.integers(1, max_slices + 1))
        channels.append(simulated_channel(mask, kind, slices, rng, radius)[0])
    return torch.from_numpy(np.stack(channels))[:, None]


class TaskSampler:
    """Draws the episodes of a run; step ``n``'s draw depends only on (seed, n, rank)."""

    def __init__(self, config: TrainConfig, tasks: Sequence[Task], rank: int = 0) -> None:
        self.config = config
        self.tasks = list(tasks)
        self.rank = rank

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, step, self.rank])

    def episode(self, step: int) -> (Episode, torch.Tensor):
        """The episode of ``step`` and its context prompt channels."""
        config = self.config
        rng = self.rng(step)
        use_synthetic = config.synthetic and (
            not self.tasks or rng.random() < config.synthetic_fraction)
        task = synthetic_task(rng, config.size) if use_synthetic else \
            self.tasks[int(rng.integers(len(self.tasks)))]
        context_size = int(rng.integers(1, config.max_context + 1))
        interactive = rng.random() < config.interactive_fraction
        episode = sample_episode(task, context_size, rng, interactive)
        prompts = prompt_channels(episode.context_masks, config.prompt, config.max_slices, rng)
        return episode, prompts


def step_loss(network: torch.nn.Module, episode: Episode, prompts: torch.Tensor,
              device: torch.device) -> torch.Tensor:
    """Loss of one episode (all context images in one mini-context, with gradients)."""
    target = episode.target_image[None].to(device)
    images = episode.context_images[None].to(device)
    raw = network(target, images, prompts[None].to(device), images.shape[1])
    return weighted_smooth_l1(raw.float(), episode.target_mask[None].to(device))


def validate(network: WSICLNet, sampler: TaskSampler, device: torch.device,
             episodes: int) -> float:
    """Mean Dice of the thresholded output over fixed held-out episodes."""
    scores = []
    network.eval()
    with torch.inference_mode(), autocast(device, "fp32"):
        for index in range(episodes):
            episode, prompts = sampler.episode(index)
            raw = network(episode.target_image[None].to(device),
                          episode.context_images[None].to(device), prompts[None].to(device), 1)
            scores.append(dice(raw[0].float().cpu().numpy() >= 0.5,
                               episode.target_mask.numpy() > 0.5))
    network.train()
    return float(np.mean(scores))


def _initial_network(config: TrainConfig) -> (WSICLNet, ModelInfo):
    if config.init:
        network = load_model(config.init)
        info = dataclasses.replace(network.metadata, input_size=config.size,
                                   prompt_kinds=[config.prompt])
    else:
        info = ModelInfo(channels=list(config.channels), convs_per_stage=config.convs_per_stage,
                         input_size=config.size, prompt_kinds=[config.prompt])
        network = build_model(info)
    info.provenance = (f"trained with wsicl train ({config.prompt} prompts, size {config.size}"
                       f", datasets {config.datasets or 'none'}, synthetic {config.synthetic}"
                       f", init {config.init or 'random'})")
    return network.train(), info


def load_tasks(folders: Sequence[str], size: int) -> List[Task]:
    """Every structure of every nnU-Net-layout dataset in ``folders``."""
    return [task for folder in folders for task in load_nnunet_dataset(Path(folder), size)]


def train(config: TrainConfig, log: Callable[[str], None] = print,
          show_progress: bool = True) -> Dict[str, Any]:
    """Runs (or resumes) training; returns the final checkpoint's summary.

    Writes ``<output>/last.pt`` every ``checkpoint_every`` steps and at the end (project
    format: weights, metadata, optimiser state, step, config and history). If that file
    exists the run resumes from it.
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(config.device)
    if distributed:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(config.seed)
    output = Path(config.output)
    checkpoint_path = output / CHECKPOINT_NAME
    network, info = _initial_network(config)
    network.to(device)
    if device.type == "cpu":
        network.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    history: List[Dict[str, float]] = []
    step = 0
    if checkpoint_path.is_file():
        step, history = restore_training(checkpoint_path, network, optimiser)
        log(f"resuming from {checkpoint_path} at step {step}")
    train_tasks = load_tasks(config.datasets, config.size)
    held_tasks = load_tasks(config.val_datasets, config.size)
    sampler = TaskSampler(config, train_tasks, rank)
    validation = TaskSampler(dataclasses.replace(config, synthetic=True,
                                                 synthetic_fraction=0.0 if held_tasks else 1.0,
                                                 seed=config.seed + 1), held_tasks)
    model = DistributedDataParallel(network) if distributed else network
    bar = _progress(step, config.steps, show_progress and rank == 0)
    started, recent, volumes = time.perf_counter(), [], 0

    def save() -> None:
        if rank == 0:
            save_model(network, checkpoint_path, info,
                       {"optimizer": optimiser.state_dict(), "step": step,
                        "config": dataclasses.asdict(config), "history": history})

    while step < config.steps:
        episode, prompts = sampler.episode(step)
        with autocast(device, config.precision):
            loss = step_loss(model, episode, prompts, device)
        descend(loss, network, optimiser, config.clip)
        step += 1
        recent = (recent + [float(loss.detach())])[-50:]
        volumes += episode.context_images.shape[0] + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent):.4f}",
                            vol_s=f"{volumes / (time.perf_counter() - started):.1f}")
        record: Dict[str, float] = {"step": step, "loss": float(np.mean(recent))}
        if rank == 0 and (step % config.val_every == 0 or step == config.steps):
            record["val_dice"] = validate(network, validation, device, config.val_episodes)
            log(f"step {step}: loss {record['loss']:.4f}, validation Dice "
                f"{record['val_dice']:.3f}")
        if "val_dice" in record or step % 10 == 0:
            history.append(record)
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
    if bar is not None:
        bar.close()
    if distributed:
        dist.destroy_process_group()
    return {"step": step, "checkpoint": str(checkpoint_path), "history": history}


def _progress(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

