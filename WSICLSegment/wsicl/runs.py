"""A ``wsicl segment`` run over many targets: splitting it into shards, resuming it, and
the run report.

- A shard ``I/N`` (from ``--shard``, or from ``torchrun``'s ``RANK`` / ``WORLD_SIZE``) takes
  its share of the targets: sorted by path, then dealt largest file first to the shard
  with the fewest bytes so far, so every shard computes the same split and the shards'
  work is balanced; each target is in exactly one shard.
- Which targets a rerun keeps is decided by :mod:`wsicl.resume` (the records of the work
  that made their outputs), so an interrupted run finishes by running the same command
  again.
- The report (``wsicl-run.json`` and ``.csv`` in the output folder, ``wsicl-run-I-of-N.*``
  for a shard) lists every target of the run from the start with its status
  (:data:`STATUSES`), seconds, outputs, and per structure the voxel count and volume in mL,
  the confidence and whether to review it (or the error); its ``review`` section lists the
  flagged results and the volume to annotate next (:mod:`wsicl.review`); with the
  command, the model file's and the context sets' SHA-256
  digests, the run's work key and the versions.
"""
import csv
import io
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from . import __version__
from .files import write_text
from .resume import file_digest, run_records
from .review import review_summary

Job = TypeVar("Job")


def parse_shard(text: str) -> Tuple[int, int]:
    """``"I/N"`` (1-based ``I``) as ``(index, count)`` with ``index`` from 0; ValueError
    otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N")
    return index - 1, count


def shard_jobs(jobs: Sequence[Tuple[str, Job]], index: int, count: int
               ) -> List[Tuple[str, Job]]:
    """The jobs ``(name, path)`` of shard ``index`` of ``count`` (see the module notes), in
    their original order."""
    def size(path: Any) -> int:
        path = Path(path)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size if path.exists() else 0

    order = sorted(range(len(jobs)), key=lambda i: str(jobs[i][1]))
    load, owner = [0] * count, {}
    for i in sorted(order, key=lambda i: -size(jobs[i][1])):   # stable: ties by path
        shard = min(range(count), key=lambda s: (load[s], s))
        owner[i] = shard
        load[shard] += size(jobs[i][1])
    return [job for i, job in enumerate(jobs) if owner[i] == index]


STATUSES = ("done", "skipped", "failed", "not started", "interrupted")
"""What became of a target in a run: segmented now, done before (kept from an earlier run
of the same work), failed, never reached, or stopped while being segmented."""


def status_counts(targets: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """How many report entries have each status."""
    return {status: sum(t["status"] == status for t in targets) for status in STATUSES}


def write_report(folder: Path, stem: str, header: Dict[str, Any],
                 targets: Sequence[Dict[str, Any]]) -> Path:
    """Writes a run report, ``STEM.json`` (``header``, the time of writing, the counts by
    status, what to review, the targets) and ``STEM.csv`` (a row per target and
    structure) into ``folder``; returns the JSON's path."""
    document = {**header, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "counts": status_counts(targets),
                "review": review_summary(targets, bool(header.get("interactive"))),
                "targets": list(targets)}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["target", "input", "status", "seconds", "structure", "voxels", "ml",
                     "confidence", "review", "outputs", "error"])
    for target in targets:
        for structure, measure in (target["structures"] or {"": {}}).items():
            review = measure.get("review")
            writer.writerow([target["target"], target["input"], target["status"],
                             target["seconds"], structure, measure.get("voxels", ""),
                             measure.get("ml", ""), measure.get("confidence", ""),
                             "" if review is None else str(bool(review)).lower(),
                             " ".join(target["outputs"]), target["error"]])
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{stem}.csv", text.getvalue())
    return write_text(folder / f"{stem}.json", json.dumps(document, indent=1) + "\n")


def target_row(name: str, source: Any, status: str, seconds: float = 0.0,
               outputs: Sequence[Any] = (), structures: Optional[Dict[str, Any]] = None,
               error: str = "") -> Dict[str, Any]:
    """One target's entry in a report: ``structures`` maps each structure to
    ``{"voxels": N, "ml": V}``."""
    return {"target": name, "input": str(source), "status": status,
            "seconds": round(seconds, 3), "outputs": [str(p) for p in outputs],
            "structures": dict(structures or {}), "error": error}


REPORT_EVERY_S = 30.0
"""How often a run's report is rewritten while it runs (a rank killed midway loses at most
this much of it; its outputs are on disk either way and a rerun skips them)."""

PROGRESS_EVERY_S = 10.0
"""How often rank 0 of a torchrun launch prints the whole run's progress line."""


class RunReport:
    """What a run does, target by target, written as JSON and CSV into ``folder`` from the
    start (every target of ``jobs`` a ``not started`` row) and as it goes. Under a
    ``torchrun`` launch (``launch``) every rank counts its targets in the launch's store;
    rank 0 prints the whole run's progress through ``say`` and, at the end, merges every
    rank's report into ``wsicl-run.json``. ``cohort``: every target's name in the whole
    run (all shards), so a merged report lists the targets of a rank that never wrote;
    ``interactive``: the targets are the context images themselves (nothing to annotate
    next)."""

    def __init__(self, model_sha256: Optional[str], model: str, context_files: Sequence[Path],
                 shard: Optional[Tuple[int, int]], folder: Path, launch: Any = None,
                 total: int = 0, say: Optional[Callable[[str], None]] = None,
                 jobs: Sequence[Tuple[str, Any]] = (), work: str = "",
                 cohort: Sequence[Tuple[str, Any]] = (), interactive: bool = False) -> None:
        import torch
        self.stem = "wsicl-run" + (f"-{shard[0] + 1}-of-{shard[1]}" if shard else "")
        self.header = {
            "command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": model,
            "model_sha256": model_sha256,
            "context_sets": {str(p): file_digest(Path(p)) for p in context_files},
            "work": work, "interactive": interactive, "shard": f"{shard[0] + 1}/{shard[1]}" if shard else None,
            "cohort": [[name, str(source)] for name, source in cohort],
            "versions": {"wsicl": __version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
        self.rows: Dict[str, Dict[str, Any]] = {
            name: target_row(name, source, "not started") for name, source in jobs}
        self.folder, self.launch, self.total, self.say = Path(folder), launch, total, say
        self.started = self.written = self.said = time.monotonic()

    @property
    def targets(self) -> List[Dict[str, Any]]:
        """The report's rows, in the order of the jobs."""
        return list(self.rows.values())

    def add(self, name: str, source: Any, status: str, seconds: float = 0.0,
            outputs: Sequence[Path] = (), structures: Optional[Dict[str, Any]] = None,
            error: str = "") -> None:
        """What became of one target: ``status`` one of :data:`STATUSES`; ``structures``
        maps each structure to ``{"voxels": N, "ml": V}``."""
        self.rows[name] = target_row(name, source, status, seconds, outputs, structures,
                                     error)
        now = time.monotonic()
        if now - self.written >= REPORT_EVERY_S and self.folder.is_dir():
            self.write()
        if self.launch is not None:
            self.launch.add(status)
            if now - self.said >= PROGRESS_EVERY_S:
                self._say_progress()

    def write(self) -> Path:
        """Writes ``wsicl-run[-I-of-N].json`` and ``.csv`` into the folder; returns the
        JSON's path."""
        self.written = time.monotonic()
        return write_report(self.folder, self.stem, self.header, self.targets)

    def interrupt(self, name: Optional[str]) -> Optional[Path]:
        """The run was stopped (Ctrl-C, SIGTERM) while segmenting ``name`` (None: between
        targets): marks it ``interrupted``, writes this report and, in a folder holding
        several (a launch's ranks, shards), merges them; returns the report's path."""
        if name is not None and name in self.rows:
            row = self.rows[name]
            row.update(status="interrupted", error="stopped while being segmented")
        if not self.folder.is_dir():
            return None
        path = self.write()
        if self.launch is not None:
            path, _ = merge_reports(self.folder)
        return path

    def close(self) -> Tuple[Optional[Path], Dict[str, int]]:
        """Writes the final report (none if the folder was never made) and returns its
        path and the counts by status. Under a launch, rank 0 waits for every rank and
        returns the merged report of the whole run and its counts; other ranks return
        their own."""
        path = self.write() if self.folder.is_dir() else None
        counts = status_counts(self.targets)
        if self.launch is None:
            return path, counts
        self.launch.finish()
        if self.launch.rank != 0:
            return path, counts
        self.launch.wait_for_all(PROGRESS_EVERY_S, self._say_progress)
        if not any(self.folder.glob("wsicl-run*.json")):
            return None, {status: self.launch.count(status) for status in STATUSES}
        return merge_reports(self.folder)

    def _say_progress(self) -> None:
        self.said = time.monotonic()
        if self.say is not None and self.launch.rank == 0:
            counts = {status: self.launch.count(status) for status in STATUSES}
            self.say(progress_line(counts, self.total, self.said - self.started))


def progress_line(counts: Dict[str, int], total: int, seconds: float) -> str:
    """A run of ``total`` targets in one line: how many are done, skipped, failed and
    left, the rate (targets segmented or failed per minute over ``seconds``) and the time
    left at that rate."""
    worked = counts["done"] + counts["failed"]
    left = max(total - worked - counts["skipped"], 0)
    line = (f"run: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} "
            f"failed, {left} left of {total}")
    if worked and seconds > 0:
        rate = worked * 60.0 / seconds
        line += f"; {rate:.1f} targets/min"
        if left:
            line += f"; about {format_minutes(left / rate)} left"
    return line


def closing_line(counts: Dict[str, int]) -> str:
    """A finished or stopped run's counts in words: what was segmented now and what was
    done before, kept apart."""
    parts = [f"{counts['done']} segmented now", f"{counts['skipped']} done before",
             f"{counts['failed']} failed"]
    parts += [f"{counts[status]} {status}" for status in ("interrupted", "not started")
              if counts.get(status)]
    return ", ".join(parts) + f" of {sum(counts.values())}"


def format_minutes(minutes: float) -> str:
    """``minutes`` as ``"40 s"``, ``"12 min"`` or ``"3.5 h"``."""
    if minutes < 1:
        return f"{max(round(minutes * 60), 1)} s"
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


UNSETTLED = ("skipped", "not started")
"""Statuses that say nothing new about a target: a report's row with one of them does not
replace the same target's row from an earlier report."""


def merge_reports(folder: Path) -> Tuple[Path, Dict[str, int]]:
    """Merges the run reports in ``folder`` (shards, ranks, reruns) of the latest report's
    work (same ``work`` key: reports of other context sets, models or options are left
    out) into ``wsicl-run.json`` and ``.csv``: per target, the row of the report written
    last, unless it only says ``skipped`` or ``not started`` and an earlier report says
    more; a target of the run's cohort that no report lists is ``not started``. Returns
    the JSON's path and the counts by status; a ValueError if the folder holds no
    report."""
    reports = []
    for path in sorted(Path(folder).glob("wsicl-run*.json")):
        try:
            reports.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable run report ({error})") from None
    if not reports:
        raise ValueError(f"{folder}: holds no run report (wsicl-run*.json); run wsicl "
                         "segment with --output-dir there first")
    reports.sort(key=lambda item: item[1].get("finished", ""))
    work = reports[-1][1].get("work")
    reports = [(path, document) for path, document in reports
               if path.name != "wsicl-run.json" and document.get("work") == work] or \
        reports[-1:]
    latest: Dict[str, Dict[str, Any]] = {}
    for _, document in reports:
        for name, source in document.get("cohort", []):
            latest.setdefault(name, target_row(name, source, "not started"))
        for target in document.get("targets", []):
            earlier = latest.get(target["target"])
            if earlier is None or target.get("status") not in UNSETTLED or \
                    earlier["status"] == "not started":
                latest[target["target"]] = target
    header = {key: value for key, value in reports[-1][1].items()
              if key not in ("targets", "counts", "finished")}
    header.update(shard=None, merged_from=sorted(path.name for path, _ in reports))
    records = run_records(Path(folder), work) if work else {}
    targets = [recorded(Path(folder), latest[name], records.get(name, []))
               for name in sorted(latest)]
    return write_report(Path(folder), "wsicl-run", header, targets), status_counts(targets)


def recorded(folder: Path, row: Dict[str, Any], records: List[Dict[str, Any]]
             ) -> Dict[str, Any]:
    """``row`` as its target's ``records`` in this run tell it, for a target that a killed
    rank reached after it last wrote its report (``not started`` there): ``done`` when
    every unit of the target is recorded complete with its outputs on disk,
    ``interrupted`` when some unit is recorded but not complete."""
    if row["status"] not in ("not started", "interrupted") or not records:
        return row
    complete = [r for r in records if r.get("outputs") is not None and all(
        (folder / name).is_file() for name in r["outputs"])]
    if len(complete) < max(int(r.get("units", 1)) for r in records):
        return {**row, "status": "interrupted", "error": "stopped while being segmented"}
    return target_row(row["target"], row["input"], "done",
                      outputs=[folder / name for r in complete for name in r["outputs"]],
                      structures={k: v for r in complete for k, v in r["structures"].items()})
