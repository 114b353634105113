"""The processes of one ``torchrun`` launch, seen from one of them.

``torchrun`` starts ``WORLD_SIZE`` copies of a command and gives each its ``RANK`` and the
address of a key-value store (``MASTER_ADDR`` / ``MASTER_PORT``; the launcher's own store
when ``TORCHELASTIC_USE_AGENT_STORE`` is set). The ranks of ``wsicl segment`` and ``wsicl
evaluate`` share counters and results through that store only: no process group, no
collective that a rank with less work would have to wait in. Keys live under the launch's
restart count, so a rank restarted by ``--max-restarts`` does not count twice.
"""
import json
import os
import time
from datetime import timedelta
from typing import Any, Callable, List, Optional, Tuple

CONNECT_TIMEOUT = timedelta(minutes=5)
"""How long a rank waits to reach the launch's store before giving up."""


def environment_shard() -> Optional[Tuple[int, int]]:
    """``(RANK, WORLD_SIZE)`` when started by ``torchrun`` (or a scheduler that sets them)
    with more than one process."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 and 0 <= rank < world else None


class Launch:
    """One rank's view of a ``torchrun`` launch: its ``rank`` (0 to ``world - 1``), shared
    counters, and results published by every rank and gathered on rank 0."""

    def __init__(self, store: Any, rank: int, world: int) -> None:
        self.store, self.rank, self.world = store, rank, world

    @classmethod
    def join(cls, name: str) -> Optional["Launch"]:
        """The launch this process belongs to, with its keys under ``name``; None unless
        started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` > 1, ``MASTER_ADDR``,
        ``MASTER_PORT``). A RuntimeError if the store cannot be reached."""
        if environment_shard() is None or not os.environ.get("MASTER_ADDR") or \
                not os.environ.get("MASTER_PORT", "").isdigit():
            return None
        import torch.distributed as dist
        try:
            store, rank, world = next(dist.rendezvous("env://", timeout=CONNECT_TIMEOUT))
        except (RuntimeError, ValueError) as error:
            raise RuntimeError(f"cannot reach the torchrun launch's store at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                               f"({error})") from None
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return cls(dist.PrefixStore(f"wsicl/{name}/{restart}/", store), rank, world)

    def add(self, key: str, amount: int = 1) -> int:
        """Adds ``amount`` to the shared counter ``key`` (0 if new); returns its value."""
        return int(self.store.add(key, amount))

    def count(self, key: str) -> int:
        """The shared counter ``key``'s value (0 if never added to)."""
        return self.add(key, 0)

    def finish(self, result: Any = None) -> None:
        """Publishes this rank's ``result`` (JSON-serialisable) and counts it finished."""
        self.store.set(f"result/{self.rank}", json.dumps(result))
        self.add("finished")

    def wait_for_all(self, every_s: float = 10.0,
                     meanwhile: Optional[Callable[[], None]] = None) -> List[Any]:
        """Rank 0: waits until every rank has finished, calling ``meanwhile`` about every
        ``every_s`` seconds; returns the results by rank. (If a rank dies, ``torchrun``
        stops the others, this one included.)"""
        last = time.monotonic()
        while self.count("finished") < self.world:
            time.sleep(0.2)
            if meanwhile is not None and time.monotonic() - last >= every_s:
                meanwhile()
                last = time.monotonic()
        return [json.loads(self.store.get(f"result/{rank}")) for rank in range(self.world)]
