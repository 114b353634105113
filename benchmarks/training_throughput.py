"""Whole training steps per second on this CPU, by precision and by how the cores are
shared between the network and the episode engine, each as a share of this machine's own
matrix-product peak.

For every precision and every ``THREADS:WORKERS`` layout it builds the training step of
``wsicl.training.episode_training`` (the bundled box model's weights, channels-last 3D,
batches from :class:`wsicl.training.loader.EpisodeLoader`: ``WORKERS`` episode processes
of one thread each, or 0 for episodes made in the training process), runs ``--warmup``
steps, then times ``--steps`` steps and prints one line per layout: episodes/s, L =
1-equivalent episodes/s, the share of time waiting for a batch, TFLOP/s and its share of
the peak (:func:`wsicl.training.episode_training.peak_tflops`, measured in the same
precision with the same thread count). Run it on an otherwise idle machine::

    PYTHONPATH=WSICLSegment python benchmarks/training_throughput.py sources.pt \\
        --precision fp32 bf16 --layout 2:0 2:1 1:1
"""
import argparse
import json
import time

import torch

from wsicl.device import pick_device, resolve_precision
from wsicl.training.episode_training import (RunConfig, StepCost, Throughput, _network,
                                             peak_tflops, train_step)
from wsicl.training.episodes import EngineConfig
from wsicl.training.loader import EpisodeLoader
from wsicl.training.sources import load_bundle


def measure(sources: list, precision: str, threads: int, workers: int, args
            ) -> dict:
    """One layout's figures (see the module's docstring)."""
    torch.set_num_threads(threads)
    device = pick_device("cpu")
    config = RunConfig(output="", sources="", prompt=args.prompt, init=args.prompt,
                       size=args.size, batch=args.batch, precision=precision)
    network, _ = _network(config)
    network.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-5)
    cost = StepCost(network, config.size, device, precision)
    engine = EngineConfig(size=config.size, prompt=config.prompt)
    with EpisodeLoader(sources, engine, 0, config.batch, "cpu", workers) as loader:
        for _ in range(args.warmup):
            train_step(network, optimiser, loader.next(), config, device)
        throughput = Throughput(cost)
        for _ in range(args.steps):
            waited = time.perf_counter()
            batch = loader.next()
            waited = time.perf_counter() - waited
            float(train_step(network, optimiser, batch, config, device).detach())
            throughput.add(batch, waited)
        figures = throughput.report()
    peak = peak_tflops(device, precision)
    return {"precision": resolve_precision(device, precision), "threads": threads,
            "workers": workers, **figures, "peak_tflops": round(peak, 4),
            "share_of_peak": round(figures["tflops"] / peak, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", help="a sources bundle (scripts/make_sources_bundle.py)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--layout", nargs="+", default=["2:0", "2:1", "1:1"],
                        help="THREADS:WORKERS: network threads, episode processes")
    parser.add_argument("--prompt", default="box", choices=["box", "point"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    sources = load_bundle(args.sources, torch.device("cpu"))
    for precision in args.precision:
        for layout in args.layout:
            threads, workers = (int(part) for part in layout.split(":"))
            print(json.dumps(measure(sources, precision, threads, workers, args)), flush=True)


if __name__ == "__main__":
    main()
