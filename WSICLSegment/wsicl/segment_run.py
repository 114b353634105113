"""The parts of a ``wsicl segment`` run (the command line drives them): its targets, their
output units and the work that decides their voxels, writing the results, the signals
that stop a run as Ctrl-C does, progress bars and failure lines.

Output files (in OUT): ``TARGET_STRUCTURE.FORMAT`` per target and structure (the
structure named by its context set's ``name`` or the file's stem), or with
``--output-type multilabel`` one label image ``TARGET.FORMAT`` (plus
``TARGET.labels.json`` beside a NIfTI / NRRD), or ``TARGET.seg.dcm`` for DICOM SEG.
Which targets a rerun keeps is decided by :mod:`wsicl.resume`; the report by
:mod:`wsicl.runs`.
"""
import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

COLOURS = ((0.9, 0.3, 0.2), (0.2, 0.6, 0.9), (0.3, 0.8, 0.3), (0.95, 0.8, 0.2),
           (0.7, 0.4, 0.9), (0.2, 0.85, 0.8), (0.95, 0.55, 0.75), (0.6, 0.45, 0.3))
"""Segment colours (RGB in [0, 1]) by structure, in the order of --context-set."""


@dataclasses.dataclass
class Target:
    """One target of a run: its ``name`` in outputs and reports, the file or DICOM series
    folder it is read from, and in interactive mode each structure's context entry on
    this image (in the order of --context-set; None where that set has none)."""

    name: str
    source: Path
    entries: Optional[List[Any]] = None

    def structures(self, names: Sequence[str]) -> List[Tuple[int, str]]:
        """``(index, name)`` of the structures segmented on this target."""
        return [(index, name) for index, name in enumerate(names)
                if self.entries is None or self.entries[index] is not None]


def interactive_targets(context_sets: Sequence[Any]) -> List[Target]:
    """Interactive mode: every context image of every set is a target, once, with each
    set's prompts on it (one structure per set)."""
    from .imageio import case_name
    targets: Dict[Path, Target] = {}
    for index, context_set in enumerate(context_sets):
        for entry in context_set.entries:
            source = Path(entry.source)
            target = targets.setdefault(source.resolve(), Target(
                case_name(source), source, [None] * len(context_sets)))
            if target.entries[index] is not None:
                raise ValueError(f"context set '{context_set.name}' names {source} twice; "
                                 "put all its prompts on that image in one entry")
            target.entries[index] = entry
    names = [target.name for target in targets.values()]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"several context images would be written as {clashes}; rename "
                         "them or segment them separately")
    return list(targets.values())


@dataclasses.dataclass
class Unit:
    """Outputs of one target that one record covers (:mod:`wsicl.resume`): one
    structure's file, or one file for all of the target's structures (multilabel, DICOM
    SEG). ``structures``: ``(index in --context-set order, name)``."""

    structures: List[Tuple[int, str]]
    outputs: List[Path]
    work: Any

    @property
    def name(self) -> str:
        """The unit's record name: its first output's file name."""
        return self.outputs[0].name


def file_part(name: str) -> str:
    """A structure's name as part of a file name (letters, digits, ``-`` and ``_``)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return cleaned or "structure"


def common_work(args: argparse.Namespace, model_file: Optional[Path]) -> Dict[str, str]:
    """The parts of every unit's work that the whole run shares: the model, the mode and
    every option that changes a voxel (:class:`wsicl.resume.Work`)."""
    from .device import pick_device, resolve_precision
    from .resume import file_digest
    parts = {"model": f"{args.model} on the server {args.server}" if model_file is None
             else file_digest(model_file) if model_file.is_file() else str(model_file),
             "mode": "interactive" if args.interactive else "in context",
             "output type": args.output_type or "per-structure", "format": args.format,
             "refine": str(args.refine), "mini-context": str(args.mini_context),
             "prompt kinds": str(args.context_kind)}
    if getattr(args, "cycle_check", False):          # the confidence, not the voxels
        parts["cycle check"] = "on"
    if not args.server:
        device = pick_device(args.device)
        parts.update(device=device.type, precision=resolve_precision(device, args.precision))
    return parts


def structures_work(common: Dict[str, str], context_sets: Sequence[Any],
                    indices: Sequence[int], interactive: bool):
    """The work of the structures ``indices`` of ``context_sets``: ``common`` with their
    names and (in context) their context sets' digests. Interactive prompts belong to
    each target's digest instead."""
    from .resume import Work
    names = [context_sets[i].name for i in indices]
    parts = dict(common)
    if len(indices) == 1:
        parts["structure"] = names[0]
        if not interactive:
            parts["context set"] = context_sets[indices[0]].digest()
    else:
        parts["set of structures"] = json.dumps(names)
        if not interactive:
            parts["context set"] = json.dumps([context_sets[i].digest() for i in indices])
    return Work(parts)


def units_of(target: Target, folder: Path, context_sets: Sequence[Any],
             common: Dict[str, str], args: argparse.Namespace) -> List[Unit]:
    """The units of ``target``'s outputs in ``folder`` (see the module notes for names)."""
    present = target.structures([c.name for c in context_sets])
    indices = [index for index, _ in present]
    interactive = target.entries is not None
    if args.format == "dicom-seg":
        paths = [folder / f"{target.name}.seg.dcm"]
    elif (args.output_type or "per-structure") == "multilabel":
        paths = [folder / f"{target.name}.{args.format}"] + (
            [folder / f"{target.name}.labels.json"] if args.format != "seg.nrrd" else [])
    else:
        return [Unit([(index, name)],
                     [folder / f"{target.name}_{file_part(name)}.{args.format}"],
                     structures_work(common, context_sets, [index], interactive))
                for index, name in present]
    return [Unit(present, paths, structures_work(common, context_sets, indices, interactive))]


def unit_digest(target: Target, unit: Unit, content: Callable[[], str]) -> str:
    """The digest a unit's record keeps of its target: the target's content
    (``content()``), and in interactive mode the unit's prompts on it too."""
    import hashlib
    if target.entries is None:
        return content()
    prompts = b"".join(target.entries[index].digest() for index, _ in unit.structures)
    return hashlib.sha256(bytes.fromhex(content()) + prompts).hexdigest()


@contextlib.contextmanager
def stops_as_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, ``torchrun`` stopping a launch) and SIGHUP (a closed terminal)
    stop the run as Ctrl-C does, so it writes its report; restored after. Only in the
    main thread (signals cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def interrupt(number: int, frame: Any) -> None:
        raise KeyboardInterrupt
    kept = {number: signal.signal(number, interrupt)
            for number in (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM))}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)


def measure(mask) -> Dict[str, float]:
    """A mask's voxel count and volume in mL."""
    import numpy as np
    import SimpleITK as sitk
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return {"voxels": voxels,
            "ml": round(voxels * float(np.prod(mask.GetSpacing())) / 1000.0, 3)}


def write_results(results: Sequence[Any], paths: List[Path], structures: Sequence[str],
                  kind: str, output_format: str, target: Optional[Path] = None,
                  labels: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, float]]:
    """Writes one target's masks (one per structure, in order) as ``kind`` and
    ``output_format`` say (``target``: the DICOM series folder a DICOM SEG refers to;
    ``labels``: each structure's label value in a multilabel image, 1, 2, ... by
    default); returns each structure's voxels and mL as written (in a multilabel image,
    after overlaps went to the more probable structure), the file and label value that
    hold it, and, where the result carries its evidence, its confidence and whether to
    review it (:mod:`wsicl.confidence`). The output folder is made by the first write."""
    import numpy as np
    import SimpleITK as sitk
    from .files import WriteError, write_text
    from .imageio import segmentation_metadata, write_atomic
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"{paths[0].parent}: cannot create it ({error.strerror or error}); "
                         "choose a writable folder") from None
    labels = list(labels or range(1, len(structures) + 1))
    segments = [(name, COLOURS[(label - 1) % len(COLOURS)])
                for name, label in zip(structures, labels)]
    if output_format == "dicom-seg":
        from .dicomseg import write_dicom_seg
        from .imageio import dicom_series
        write_dicom_seg([r.mask for r in results], list(structures),
                        [colour for _, colour in segments], dicom_series(target), paths[0])
        return judged({name: measure(r.mask) for name, r in zip(structures, results)},
                      results, paths * len(results), labels)
    if kind != "multilabel":
        for result, path, segment in zip(results, paths, segments):
            if output_format == "seg.nrrd":
                segmentation_metadata(result.mask, [segment])
            write_atomic(result.mask, path)
        return judged({name: measure(r.mask) for name, r in zip(structures, results)},
                      results, paths, [1] * len(results))
    masks = np.stack([sitk.GetArrayViewFromImage(r.mask) > 0 for r in results])
    chances = np.stack([sitk.GetArrayViewFromImage(r.probability) if r.probability is not None
                        else mask for r, mask in zip(results, masks)])   # a server's: masks
    winner = np.argmax(np.where(masks, chances, -1.0), 0)
    values = np.where(masks.any(0), np.asarray(labels, dtype=np.uint8)[winner], 0)
    image = sitk.GetImageFromArray(values.astype(np.uint8))
    image.CopyInformation(results[0].mask)
    if output_format == "seg.nrrd":
        segmentation_metadata(image, segments)
    write_atomic(image, paths[0])
    if len(paths) > 1:
        write_text(paths[1], json.dumps({str(label): name for label, name
                                         in zip(labels, structures)}, indent=1) + "\n")
    return judged({name: measure(image == label) for name, label in zip(structures, labels)},
                  results, paths[:1] * len(results), labels)


def judged(measures: Dict[str, Dict[str, Any]], results: Sequence[Any], files: Sequence[Path],
           labels: Sequence[int]) -> Dict[str, Dict[str, Any]]:
    """``measures`` (per structure, in the order of ``results``) with the file and label
    value holding each structure and, for results that carry evidence, ``confidence``
    (3 decimals) and ``review``."""
    from .confidence import calibration
    for (name, measured), result, path, label in zip(measures.items(), results, files, labels):
        measured.update(file=Path(path).name, label=int(label))
        if getattr(result, "evidence", None) is not None:
            confidence = calibration().confidence(result.evidence)
            measured.update(confidence=round(confidence, 3),
                            review=calibration().review(confidence))
    return measures


class ProgressBar:
    """A tqdm bar for one target that the predictor's progress callback drives; none
    when quiet or when stderr is not a terminal (a log file gets no carriage returns)."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.bar = label, None
        self.quiet = quiet or not sys.stderr.isatty()

    def __enter__(self) -> Callable[[float, str], None]:
        if not self.quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=100, desc=self.label, unit="%", leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        return self.report

    def report(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.n = int(round(100 * fraction))
            self.bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def failure_line(label: str, name: str, source: object, error: Exception) -> str:
    """The line that says a target failed, naming it once: ``label`` is ``[i/n] name``,
    whose name is left out when the message starts with the target's path."""
    message = str(error)
    if message.startswith(str(source)):
        return f"wsicl: {label[:-len(name)]}{message}"
    return f"wsicl: {label}: {message}"
