"""Training on the episode engine (the crop recipe), within a wall-clock budget.

Each step draws a batch of episodes (:mod:`wsicl.episodes`) and minimises BCE + soft Dice
of the network's output read as a logit, with Adam, a linear warm-up and cosine decay over
the planned steps, gradient clipping, and the precision of inference (``auto``: bfloat16
autocast on CUDA and on CPUs with AMX or AVX512-BF16, which compute it natively, fp32 on
other CPUs, where bfloat16 is emulated and slower). The run stops at ``steps`` or after
``minutes``, whichever comes first, writing ``last.pt`` (weights, metadata, optimiser,
step, history) every ``checkpoint_seconds`` and at the end; a run started on a folder
holding ``last.pt`` resumes from it. The first
Ctrl-C (or SIGTERM) ends the run after the current step with that final checkpoint; a
second one interrupts at once.

Usage (a bundle from ``scripts/make_sources_bundle.py``)::

    python -m wsicl.episode_training --sources sources.pt --output runs/box \\
        --init box --prompt box --batch 32 --minutes 10
"""
import argparse
import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..checkpoints import ModelInfo, build_model, load_model, restore_training, save_model
from ..device import autocast, pick_device, resolve_precision
from .episodes import Batch, EngineConfig, EpisodeEngine, Source
from .loader import EpisodeLoader
from .losses import descend, segmentation_loss
from .sources import load_bundle

CHECKPOINT_NAME = "last.pt"


@dataclasses.dataclass
class RunConfig:
    """A training run: data engine settings plus optimisation."""

    output: str
    sources: str
    prompt: str = "box"
    init: Optional[str] = None
    channels: List[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128])
    size: int = 64
    batch: int = 4
    steps: int = 100000
    minutes: float = 0.0
    lr: float = 1e-3
    warmup: int = 50
    clip: float = 1.0
    loss: str = "bce_dice"               # losses.LOSSES: "balanced" for point models
    max_context: int = 4
    point_side_min: float = 0.7          # EngineConfig.point_side = (point_side_min, 1.4)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint_seconds: float = 120.0
    export: Optional[str] = None
    validation_batches: int = 4
    profile: int = 0                       # > 0: measure this many steps of each part, then stop
    workers: int = 0                       # episode worker processes (0: in this process)
    engine_device: str = ""                # where workers make episodes ("": the run's device)


def batch_dice(logits: torch.Tensor, mask: torch.Tensor) -> List[float]:
    """Dice of ``logits >= 0`` against the mask, per episode."""
    predicted = (logits >= 0).flatten(1).float()
    target = mask.flatten(1)
    total = predicted.sum(1) + target.sum(1)
    return (2 * (predicted * target).sum(1) / total.clamp_min(1)).tolist()


def learning_rate(step: int, config: RunConfig, planned: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, planned - config.warmup))
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _network(config: RunConfig):
    if config.init:
        network = load_model(config.init)
        info = network.metadata
    else:
        info = ModelInfo(channels=list(config.channels), input_size=config.size)
        network = build_model(info)
    info = dataclasses.replace(info, input_size=config.size, prompt_kinds=[config.prompt],
                               normalisation="robust", input_policy="crop", output="logit")
    network.metadata = info
    return network.train(), info


def _forward(network: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return network(batch.target, batch.context, batch.prompts, batch.context.shape[1]).float()


class StepCost:
    """FLOPs of one training step (forward and backward) of ``B`` episodes with ``L``
    context images, ``B * (target + L * context)``, the two per-episode terms counted once
    by :class:`torch.utils.flop_counter.FlopCounterMode` on one episode with one and with
    two context images of the real size."""

    def __init__(self, network: torch.nn.Module, size: int, device: torch.device,
                 precision: str) -> None:
        from torch.utils.flop_counter import FlopCounterMode
        counts = []
        for context_size in (1, 2):
            cube = torch.zeros((1, 1, size, size, size), device=device)
            images = torch.zeros((1, context_size, 1, size, size, size), device=device)
            counter = FlopCounterMode(display=False)
            with counter, autocast(device, precision):
                output = network(cube, images, images, context_size).float()
            with counter:
                output.mean().backward()
            counts.append(counter.get_total_flops())
        network.zero_grad(set_to_none=True)
        self.context = float(counts[1] - counts[0])
        self.target = float(counts[0]) - self.context

    def flops(self, batch_size: int, context_size: int) -> float:
        return batch_size * (self.target + context_size * self.context)

    def l1_episodes(self, batch_size: int, context_size: int) -> float:
        """The step as a number of ``L = 1`` episodes of equal cost."""
        return self.flops(batch_size, context_size) / (self.target + self.context)


class Throughput:
    """Episodes, FLOPs and time waiting for data since the last report; ``report()``
    gives episodes/s, L = 1-equivalent episodes/s, the share of wall time spent making
    data, and achieved TFLOP/s, then starts again."""

    def __init__(self, cost: StepCost) -> None:
        self.cost = cost
        self._reset()

    def _reset(self) -> None:
        self.started = time.perf_counter()
        self.episodes = self.equivalents = self.flops = self.waiting = 0.0

    def add(self, batch: Batch, waited: float) -> None:
        size, context = batch.target.shape[0], batch.context.shape[1]
        self.episodes += size
        self.equivalents += self.cost.l1_episodes(size, context)
        self.flops += self.cost.flops(size, context)
        self.waiting += waited

    def report(self) -> Dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        figures = {"episodes_per_s": self.episodes / seconds,
                   "l1_episodes_per_s": self.equivalents / seconds,
                   "data_wait": self.waiting / seconds, "tflops": self.flops / seconds / 1e12}
        self._reset()
        return {key: round(value, 4) for key, value in figures.items()}


def peak_tflops(device: torch.device, precision: str, size: int = 2048, runs: int = 5
                ) -> float:
    """This machine's practical peak in ``precision`` (resolved as autocast does): TFLOP/s
    of the fastest of ``runs`` products of two ``size`` x ``size`` matrices on ``device``
    (after one warm-up), 2 FLOPs per multiply-add."""
    dtype = torch.bfloat16 if resolve_precision(device, precision) == "bf16" else torch.float32
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    best = math.inf
    for run in range(runs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if run:
            best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e12


def profile(network: torch.nn.Module, optimiser: torch.optim.Optimizer, engine: EpisodeEngine,
            config: RunConfig, device: torch.device, cost: StepCost,
            log: Callable[[str], None]) -> Dict[str, float]:
    """Measures the parts of a step apart, ``config.profile`` steps each: the episode
    engine alone (episodes/s in this process), the network alone on one batch made once
    (forward, backward, update: steps/s, episodes/s, TFLOP/s), then whole steps as the run
    makes them (the share of time waiting for data); each TFLOP/s also as a share of this
    machine's peak in the same precision (:func:`peak_tflops`). Prints and returns the
    figures."""
    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    batches = [engine.batch(step, config.batch) for step in range(config.profile)]
    engine_seconds = time.perf_counter() - started
    figures = {"engine_episodes_per_s": round(config.profile * config.batch / engine_seconds, 3),
               "engine_threads": torch.get_num_threads()}
    batch = batches[-1]
    train_step(network, optimiser, batch, config, device)          # warm-up
    synchronise()
    started = time.perf_counter()
    for _ in range(config.profile):
        train_step(network, optimiser, batch, config, device)
    synchronise()
    seconds = (time.perf_counter() - started) / config.profile
    size, context = batch.target.shape[0], batch.context.shape[1]
    figures.update(network_steps_per_s=round(1 / seconds, 4),
                   network_episodes_per_s=round(size / seconds, 3),
                   network_tflops=round(cost.flops(size, context) / seconds / 1e12, 4),
                   step_gflop=round(cost.flops(size, context) / 1e9, 1), context_size=context)
    throughput = Throughput(cost)
    for step in range(config.profile):
        waited = time.perf_counter()
        batch = engine.batch(10 ** 6 + step, config.batch)
        waited = time.perf_counter() - waited
        train_step(network, optimiser, batch, config, device)
        throughput.add(batch, waited)
    synchronise()
    figures.update({f"run_{key}": value for key, value in throughput.report().items()})
    peak = peak_tflops(device, config.precision)
    figures.update(precision=resolve_precision(device, config.precision),
                   peak_tflops=round(peak, 4),
                   network_share_of_peak=round(figures["network_tflops"] / peak, 4),
                   run_share_of_peak=round(figures["run_tflops"] / peak, 4))
    log(json.dumps({"profile": figures}))
    return figures


def train_step(network: torch.nn.Module, optimiser: torch.optim.Optimizer, batch: Batch,
               config: RunConfig, device: torch.device) -> torch.Tensor:
    """One optimiser step on ``batch`` at the run's precision; the loss, not read back (no
    host synchronisation)."""
    with autocast(device, config.precision):
        logits = _forward(network, batch)
    loss = segmentation_loss(logits, batch.target_mask, config.loss)
    descend(loss, network, optimiser, config.clip)
    return loss


def validate(network: torch.nn.Module, engine: EpisodeEngine, config: RunConfig,
             device: torch.device) -> Dict[str, float]:
    """Loss and mean Dice on fixed draws of a separate seed (interactive and in context)."""
    network.eval()
    losses, scores = [], []
    with torch.no_grad(), autocast(device, config.precision):
        for index in range(config.validation_batches):
            batch = engine.batch(index, config.batch)
            logits = _forward(network, batch)
            losses.append(float(segmentation_loss(logits, batch.target_mask, config.loss)))
            scores.extend(batch_dice(logits, batch.target_mask))
    network.train()
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(scores))}


@contextlib.contextmanager
def stop_requests(log: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """Turns the first Ctrl-C or SIGTERM into a request to stop at the next step boundary
    (the handlers before are back after it, so a second one interrupts at once); yields a
    function saying whether a stop was requested. Outside the main thread signals cannot
    be caught, and no stop is ever requested."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def request(number: int, frame: object) -> None:
        requested.set()
        restore()
        log("stopping after this step, with a checkpoint; interrupt again to stop at once")

    for number in previous:
        signal.signal(number, request)
    try:
        yield requested.is_set
    finally:
        restore()


def train(config: RunConfig, log: Callable[[str], None] = print,
          sources: Sequence[Source] = ()) -> Dict:
    """Runs or resumes ``config`` on the bundle ``config.sources`` names and/or
    ``sources``; returns a summary (steps, seconds, last validation)."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / CHECKPOINT_NAME
    network, info = _network(config)
    network.to(device)
    if device.type == "cpu":  # oneDNN's fast 3D convolutions want channels-last
        network.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    step, history = 0, []
    if checkpoint.is_file():
        step, history = restore_training(checkpoint, network, optimiser)
        log(f"resuming from {checkpoint} at step {step}")
    sources = [source.to(device) for source in sources]
    sources += load_bundle(config.sources, device) if config.sources else []
    if not sources:
        raise ValueError("no training sources: give a sources bundle or datasets")
    engine_config = EngineConfig(size=config.size, prompt=config.prompt,
                                 max_context=config.max_context,
                                 point_side=(config.point_side_min, 1.4))
    held_out = EpisodeEngine(sources, engine_config, config.seed + 10 ** 6, device)
    cost = StepCost(network, config.size, device, config.precision)
    if config.profile:
        engine = EpisodeEngine(sources, engine_config, config.seed, device)
        return {"step": step, "checkpoint": None, "history": history,
                "profile": profile(network, optimiser, engine, config, device, cost, log)}
    throughput = Throughput(cost)
    loader = EpisodeLoader(sources, engine_config, config.seed, config.batch,
                           config.engine_device or str(device), config.workers, step)
    last_report = time.perf_counter()
    started = time.perf_counter()
    last_save = started
    deadline = started + config.minutes * 60 if config.minutes > 0 else math.inf
    planned = config.steps
    recent: List[torch.Tensor] = []

    def save() -> None:
        info.provenance = (f"wsicl.episode_training: crop recipe, {config.prompt} prompts, "
                           f"{step} steps of {config.batch} episodes, init {config.init}")
        save_model(network, checkpoint, info, {"optimizer": optimiser.state_dict(),
                                               "step": step, "history": history,
                                               "config": dataclasses.asdict(config)})
        if config.export:
            save_model(network, config.export, info, {"step": step, "history": history},
                       dtype=torch.float16)

    first = step
    with stop_requests(log) as stopping, loader:
        while step < config.steps and time.perf_counter() < deadline and not stopping():
            if config.minutes > 0 and step - first == 20:
                rate = (time.perf_counter() - started) / 20
                planned = min(config.steps, step + int((deadline - time.perf_counter()) / rate))
                log(f"{rate:.3f} s/step: planning {planned} steps")
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(step, config, planned)
            waited = time.perf_counter()
            batch = loader.next().to(device)
            waited = time.perf_counter() - waited
            loss = train_step(network, optimiser, batch, config, device)
            step += 1
            throughput.add(batch, waited)
            if time.perf_counter() - last_report > 60:
                log(json.dumps({"step": step, **throughput.report()}))
                last_report = time.perf_counter()
            recent = (recent + [loss.detach()])[-50:]     # read every 50 steps: no sync
            if step % 50 == 0:
                record = {"step": step, "loss": float(torch.stack(recent).mean()),
                          "seconds": time.perf_counter() - started}
                if step % 200 == 0:
                    record.update(validate(network, held_out, config, device))
                history.append(record)
                log(json.dumps(record))
            if time.perf_counter() - last_save > config.checkpoint_seconds:
                save()
                last_save = time.perf_counter()
    log(json.dumps({"step": step, **throughput.report()}))
    history.append({"step": step,
                    "loss": float(torch.stack(recent).mean()) if recent else float("nan"),
                    "seconds": time.perf_counter() - started,
                    **validate(network, held_out, config, device)})
    log(json.dumps(history[-1]))
    save()
    return {"step": step, "checkpoint": str(checkpoint), "history": history}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(RunConfig):
        name = "--" + field.name.replace("_", "-")
        if field.type == "bool" or field.type is bool:
            parser.add_argument(name, type=lambda v: v.lower() in ("1", "true", "yes"),
                                default=field.default)
        elif field.name == "channels":
            parser.add_argument(name, type=lambda v: [int(c) for c in v.split(",")],
                                default=[16, 32, 64, 128])
        elif field.name == "init" or field.name == "export":
            parser.add_argument(name, default=None)
        elif field.name in ("output", "sources"):
            parser.add_argument(name, required=True)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), None)
            kind = kind or (field.type if field.type in (int, float) else str)
            parser.add_argument(name, type=kind, default=field.default)
    arguments = vars(parser.parse_args(argv))
    summary = train(RunConfig(**arguments))
    if "profile" not in summary:
        print(f"done: {summary['step']} steps, {summary['checkpoint']}")


if __name__ == "__main__":
    main()
