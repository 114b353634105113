"""Episodes made ahead by worker processes, so that the training step never waits on the
episode engine's Python.

Each worker holds its own :class:`~wsicl.training.episodes.EpisodeEngine` (same sources,
configuration and seed) on ``device``: the CPU, or the GPU, where a batch reaches the
trainer through CUDA inter-process sharing without a copy. Worker ``w`` of ``W`` makes the
batches of steps ``start + w``, ``start + w + W``, ... into its own bounded queue, and the
trainer reads them back in step order. A batch depends only on ``(seed, step)``, so the
batches are those the engine makes in the training process, whatever the number of
workers. Workers are spawned (CUDA cannot be used in forked children) with one CPU thread
each.
"""
import multiprocessing.queues
import queue
from typing import List, Optional, Sequence

import torch
import torch.multiprocessing as mp

from .episodes import Batch, EngineConfig, EpisodeEngine, Source

READY_SECONDS = 600.0
"""Longest wait for one batch before the loader says a worker is stuck or gone."""


def _work(worker: int, workers: int, sources: Sequence[Source], config: EngineConfig,
          seed: int, batch_size: int, device: str, start: int,
          out: multiprocessing.queues.Queue, stop: "mp.Event") -> None:
    torch.set_num_threads(1)
    engine = EpisodeEngine(sources, config, seed, device)
    step = start + worker
    while not stop.is_set():
        batch = engine.batch(step, batch_size)
        while not stop.is_set():
            try:
                out.put((step, batch), timeout=0.5)
                break
            except queue.Full:
                continue
        step += workers
    out.cancel_join_thread()        # exit without waiting for the trainer to read the rest


class EpisodeLoader:
    """Batches of ``EpisodeEngine(sources, config, seed, device)`` for steps ``start``,
    ``start + 1``, ... made by ``workers`` processes (0: made here, on demand), at most
    ``ahead`` batches waiting per worker. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, sources: Sequence[Source], config: EngineConfig, seed: int,
                 batch_size: int, device: str = "cpu", workers: int = 0, start: int = 0,
                 ahead: int = 2) -> None:
        self.step = self.start = start
        self.batch_size = batch_size
        self.workers = workers
        self._engine: Optional[EpisodeEngine] = None
        self._processes: List = []
        self._queues: List = []
        if workers == 0:
            self._engine = EpisodeEngine(sources, config, seed, device)
            return
        context = mp.get_context("spawn")
        self._stop = context.Event()
        shared = [s.to("cpu") for s in sources]        # each worker moves its own copy
        for worker in range(workers):
            out = context.Queue(maxsize=ahead)
            process = context.Process(
                target=_work, daemon=True, name=f"wsicl-episodes-{worker}",
                args=(worker, workers, shared, config, seed, batch_size, str(device), start,
                      out, self._stop))
            process.start()
            self._queues.append(out)
            self._processes.append(process)

    def next(self) -> Batch:
        """The batch of the next step."""
        step = self.step
        self.step += 1
        if self._engine is not None:
            return self._engine.batch(step, self.batch_size)
        source = self._queues[(step - self.start) % self.workers]
        try:
            made, batch = source.get(timeout=READY_SECONDS)
        except queue.Empty:
            dead = [p.name for p in self._processes if not p.is_alive()]
            raise RuntimeError(f"no training batch within {READY_SECONDS:.0f} s"
                               + (f"; worker(s) {', '.join(dead)} died" if dead else "")
                               ) from None
        if made != step:
            raise RuntimeError(f"episode worker sent step {made} for step {step}")
        return batch

    def close(self) -> None:
        """Stops and joins the workers (a few seconds at most)."""
        if not self._processes:
            return
        self._stop.set()                   # workers see it within half a second
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for out in self._queues:           # what was made ahead is dropped unread
            out.cancel_join_thread()
            out.close()
        self._processes, self._queues = [], []

    def __enter__(self) -> "EpisodeLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
