"""Resuming a ``wsicl segment`` run keyed on the work, not on file names.

A target's outputs come in *units*, each with a *record* in ``OUT/.wsicl-records/``
named after its first output: one structure's file (per-structure outputs), or the one
file that holds all of a target's structures (multilabel, DICOM SEG). A record keeps the
unit's *work* (what decides its voxels apart from the target: the model file's SHA-256,
the structure's name and context-set digest, every option that changes a voxel), a
digest of the target itself (and of its prompts, interactively), each output's SHA-256
and the structures' voxel counts and volumes; also the target's name in the run, the
run's own key and how many units the target has in that run, for the run report.

A rerun skips a unit only when its record holds this unit's work and target and every
output still has its recorded SHA-256. Outputs that other work made (another context set,
model or option, another version of the target, an edit since, or no record at all) are
never kept as if they were this run's: without ``--overwrite`` the run refuses before the
model loads, naming what differs. So a structure added to a run is segmented beside the
ones done before, which are kept.

A record is written as *pending* before a unit's outputs and completed after them, so
the outputs of an interrupted unit are known to be this work's and are redone without
``--overwrite``.
"""
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .files import write_text

RECORDS_FOLDER = ".wsicl-records"
"""The folder inside a run's output folder that holds one record per target."""


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_digest(path: Path) -> str:
    """SHA-256 of a target's content: a file's bytes, or a DICOM series folder's files
    (names and bytes, in name order)."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(item.name.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(bytes.fromhex(file_digest(item)))
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Work:
    """What decides a run's voxels apart from the target, as named parts (text), e.g.
    ``{"model": SHA-256, "structures": "liver=DIGEST", "precision": "bf16", ...}``."""

    parts: Dict[str, str]

    @property
    def key(self) -> str:
        """SHA-256 of the parts (hex)."""
        return hashlib.sha256(json.dumps(self.parts, sort_keys=True).encode()).hexdigest()

    def differences(self, other: Dict[str, str]) -> List[str]:
        """The names of the parts in which ``other`` (a record's) differs from this."""
        names = sorted(set(self.parts) | set(other))
        return [name for name in names if self.parts.get(name) != other.get(name)]


def record_path(folder: Path, unit: str) -> Path:
    """Where the record of the unit named ``unit`` (its first output's file name) lives."""
    return Path(folder) / RECORDS_FOLDER / f"{unit}.json"


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    """The record at ``path``, or None (none, or not readable)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(folder: Path, unit: str, work: Work, target_digest: str,
                 about: Dict[str, Any], outputs: Optional[Sequence[Path]] = None,
                 structures: Optional[Dict[str, Dict[str, float]]] = None) -> Path:
    """Writes the record of ``unit``: pending (``outputs`` None) before its outputs are
    written, complete with each output's SHA-256 and the structures' measures after.
    ``about``: what the run report needs (``target``: the target's name, ``run``: the
    run's key, ``units``: the target's number of units in the run)."""
    record = {**about, "work": work.parts, "input": target_digest,
              "outputs": None if outputs is None else
              {Path(p).name: file_digest(Path(p)) for p in outputs},
              "structures": structures or {}}
    path = record_path(folder, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(record, indent=1) + "\n")


def run_records(folder: Path, run: str) -> Dict[str, List[Dict[str, Any]]]:
    """The records in ``folder`` of the run with key ``run``, by target name."""
    found: Dict[str, List[Dict[str, Any]]] = {}
    for path in sorted((Path(folder) / RECORDS_FOLDER).glob("[!.]*.json")):
        record = read_record(path)
        if record is not None and record.get("run") == run and "target" in record:
            found.setdefault(str(record["target"]), []).append(record)
    return found


@dataclasses.dataclass
class Decision:
    """What a rerun does with one target: ``"run"`` (nothing of it kept, or only this
    work's own outputs, which are redone), ``"skip"`` (``record`` holds this work's
    complete outputs) or ``"conflict"`` (``reason``: its existing outputs come from other
    work; only ``--overwrite`` replaces them)."""

    action: str
    record: Optional[Dict[str, Any]] = None
    reason: str = ""


def decide(folder: Path, unit: str, work: Work, outputs: Sequence[Path],
           digest: Callable[[], str]) -> Decision:
    """Whether the unit ``unit`` must be segmented, may be skipped, or conflicts with
    outputs of other work (see the module notes); ``digest()`` gives the target's digest
    (called only when some output exists)."""
    existing = [Path(p) for p in outputs if Path(p).exists()]
    if not existing:
        return Decision("run")
    record = read_record(record_path(folder, unit))
    if record is None:
        return Decision("conflict", reason="no record says which run made it")
    differs = work.differences(record.get("work") or {})
    if differs:
        return Decision("conflict", reason="it was made with another " + ", ".join(differs))
    if record.get("input") != digest():
        return Decision("conflict", reason="it was made from another version of the target "
                                           "or its prompts")
    recorded = record.get("outputs")
    if recorded is None:               # pending: interrupted while writing this work
        return Decision("run")
    changed = [p.name for p in existing if recorded.get(p.name) != file_digest(p)]
    if changed:
        return Decision("conflict", reason="it was changed after the run that made it")
    complete = len(existing) == len(outputs) and set(recorded) == {p.name for p in existing}
    return Decision("skip", record) if complete else Decision("run")
