"""The ``wsicl`` command line: segment, demo, train, evaluate, serve."""
import argparse
import functools
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .options import DEVICE_CHOICES, OUTPUT_FORMATS, OUTPUT_TYPES, PRECISIONS


DEVICE_HELP = "auto: CUDA, then MPS, then the CPU"
PRECISION_HELP = ("auto: bfloat16 where the hardware computes it natively (CUDA, CPUs with "
                  "AMX or AVX512-BF16), fp32 elsewhere; fp32 or bf16 force one")
QUIET_HELP = "print nothing but errors"


class HelpWithDefaults(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" not in text and action.option_strings and action.default not in (
                None, False, argparse.SUPPRESS, []):
            text += " (default: %(default)s)"
        return text


def int_list(text: str) -> List[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (positive integers)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def channels_argument(text: str) -> List[int]:
    """``"4,8,16"`` -> ``[4, 8, 16]``: at least two positive channel counts."""
    channels = int_list(text)
    if len(channels) < 2:
        raise argparse.ArgumentTypeError(f"need at least two positive channel counts, got {text!r}")
    return channels


def positive_int(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def kinds_argument(text: str) -> List[str]:
    """``"box,mask"`` -> ``["box", "mask"]`` (known prompt kinds; argparse type)."""
    from .context import check_kinds
    try:
        return check_kinds([part.strip() for part in text.split(",") if part.strip()],
                           "--context-kind")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", formatter_class=HelpWithDefaults,
        help="run the bundled model on the bundled sample data",
        description="Segment the liver of the sample MR from boxes on the sample CT (in "
                    "context) and from boxes on the MR itself (interactive); write the masks "
                    "and an overview PNG and print Dice against the sample labels.")
    parser.add_argument("--output-dir", type=Path, default=Path("wsicl-demo-output"),
                        help="folder for the results (default: %(default)s)")
    parser.add_argument("--model", default="box",
                        help="box or a box-prompt weights file (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier demo in the folder")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import check_demo_outputs, run_demo as demo
    from .files import check_writable_folder
    check_demo_outputs(args.output_dir, args.overwrite)
    check_writable_folder(args.output_dir)        # before the model loads
    demo(args.output_dir, make_predictor(args), say=(lambda line: None) if args.quiet else print)
    return 0


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", formatter_class=HelpWithDefaults, help="train or fine-tune with simulated prompts",
        description="Train a WS-ICL network on synthetic tasks and/or nnU-Net-layout datasets "
                    "with simulated box or point prompts. Resumes from OUTPUT/last.pt. "
                    "--recipe whole (default): whole views, as the authors' released "
                    "weights; --recipe crop: the bundled models' recipe (crops around the "
                    "prompts and whole views, label-driven synthesis, random shapes; the "
                    "model then refines at the structure's scale by default).")
    parser.add_argument("--recipe", choices=("whole", "crop"), default="whole",
                        help="whole: whole views, as the authors' weights; crop: the bundled "
                             "models' recipe")
    parser.add_argument("--sources", type=Path, metavar="BUNDLE",
                        help="crop recipe: a sources bundle (scripts/make_sources_bundle.py) "
                             "besides or instead of --dataset")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="crop recipe: stop after this many minutes (0: --steps decides)")
    parser.add_argument("--batch", type=positive_int, default=4,
                        help="crop recipe: episodes per step")
    parser.add_argument("--output", required=True, help="folder for last.pt and the log")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    parser.add_argument("--synthetic", action="store_true", help="train on synthetic tasks")
    parser.add_argument("--dataset", action="append", default=[], metavar="DIR",
                        help="nnU-Net-layout dataset; every label is a task (repeatable)")
    parser.add_argument("--val-dataset", action="append", default=[], metavar="DIR",
                        help="dataset kept out of training, for validation (repeatable)")
    parser.add_argument("--init", help="start from these weights (any file wsicl loads)")
    parser.add_argument("--prompt", choices=("box", "point"), default="box",
                        help="prompt kind the model learns to read")
    parser.add_argument("--channels", type=channels_argument, default=[16, 32, 64, 128],
                        help="channels per stage of a new network (comma-separated)")
    parser.add_argument("--convs-per-stage", type=int, default=2,
                        help="convolutions per residual unit of a new network")
    parser.add_argument("--size", type=int, default=64, help="model grid edge in voxels")
    parser.add_argument("--lr", type=float, default=2e-4,
                        help="Adam learning rate (the paper fine-tunes at 1e-6)")
    parser.add_argument("--max-context", type=int, default=4,
                        help="largest number of context images in an episode")
    parser.add_argument("--max-slices", type=int, default=3,
                        help="whole recipe: most prompted slices per image")
    parser.add_argument("--interactive-fraction", type=float, default=0.3,
                        help="whole recipe: share of interactive episodes")
    parser.add_argument("--synthetic-fraction", type=float, default=0.5,
                        help="whole recipe: share of synthetic tasks beside --dataset")
    parser.add_argument("--val-every", type=int, default=100,
                        help="whole recipe: steps between validations")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="whole recipe: steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help=DEVICE_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help=PRECISION_HELP)
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.recipe == "crop":
        return run_crop_training(args)
    if args.sources or args.minutes:
        raise ValueError("--sources and --minutes belong to the crop recipe; add --recipe crop")
    from .training.train import TrainConfig, train
    config = TrainConfig(
        output=args.output, steps=args.steps, channels=args.channels,
        convs_per_stage=args.convs_per_stage, size=args.size, prompt=args.prompt,
        datasets=args.dataset, val_datasets=args.val_dataset, synthetic=args.synthetic,
        synthetic_fraction=args.synthetic_fraction, init=args.init, lr=args.lr,
        max_context=args.max_context, max_slices=args.max_slices,
        interactive_fraction=args.interactive_fraction, seed=args.seed, device=args.device,
        val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        precision=args.precision)
    result = train(config, show_progress=not args.quiet)
    print(f"trained to step {result['step']}: {result['checkpoint']}")
    return 0


def run_crop_training(args: argparse.Namespace) -> int:
    from .training.episode_training import RunConfig, train
    from .training.sources import dataset_sources
    if args.synthetic or args.val_dataset:
        raise ValueError("the crop recipe synthesises images itself and validates on draws "
                         "of its own; drop --synthetic and --val-dataset")
    if not args.dataset and not args.sources:
        raise ValueError("the crop recipe needs labelled volumes: --dataset DIR and/or "
                         "--sources BUNDLE")
    sources = [source for folder in args.dataset for source in dataset_sources(folder)]
    config = RunConfig(output=args.output, sources=str(args.sources or ""),
                       prompt=args.prompt, init=args.init, channels=args.channels,
                       size=args.size, batch=args.batch, steps=args.steps,
                       minutes=args.minutes, lr=args.lr, max_context=args.max_context,
                       seed=args.seed, device=args.device, precision=args.precision)
    result = train(config, (lambda line: None) if args.quiet else print, sources)
    print(f"trained to step {result['step']}: {result['checkpoint']}")
    return 0


def add_segment(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", formatter_class=HelpWithDefaults, help="segment targets with a context set",
        description="Segment every TARGET (image files, DICOM series folders or folders of "
                    "images) with the structure defined by the context-set file. Results are "
                    "uint8 0/1 masks on each target's exact grid.")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="image files (NIfTI, NRRD, MHA), DICOM series folders, or folders "
                             "of them (label maps and the context images inside are skipped; "
                             "a label map named here is refused)")
    parser.add_argument("--context-set", type=Path, metavar="CTX.json", action="append",
                        help="context-set file defining one structure (named by its 'name' or "
                             "the file's stem); repeat for several structures in one run")
    parser.add_argument("--output-dir", type=Path, metavar="OUT",
                        help="folder for the results (created if needed; required)")
    parser.add_argument("--model", default="box",
                        help="box, point or a weights file (default: %(default)s)")
    parser.add_argument("--interactive", action="store_true",
                        help="segment each context image from its own prompts (with several "
                             "--context-set: each structure from its own set's prompts)")
    parser.add_argument("--format", default="nii.gz", choices=OUTPUT_FORMATS,
                        help="file format of the results; dicom-seg: one DICOM SEG per "
                             "DICOM series target with every structure as a segment, "
                             "TARGET.seg.dcm (needs pip install '.[dicom]') (default: "
                             "%(default)s)")
    parser.add_argument("--output-type", choices=OUTPUT_TYPES, default=None,
                        help="one file per target and structure, TARGET_STRUCTURE.FORMAT "
                             "(per-structure, the default), or one label image per target, "
                             "TARGET.FORMAT, labels 1, 2, ... in the order of --context-set, "
                             "an overlap going to the more probable structure, with the names "
                             "in TARGET.labels.json or as named segments of a .seg.nrrd "
                             "(multilabel)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that another run made (other context sets, "
                             "model or options; without it the run refuses). Targets done "
                             "before by the same work are always skipped, so a stopped run "
                             "finishes when run again")
    parser.add_argument("--allow-label-targets", action="store_true",
                        help="segment a TARGET file even though it looks like a label map")
    parser.add_argument("--report-only", type=Path, metavar="OUT",
                        help="merge the run reports in OUT (shards, reruns) into "
                             "OUT/wsicl-run.json and .csv, print the counts and stop")
    parser.add_argument("--cycle-check", action="store_true",
                        help="score each in-context result also by segmenting the context "
                             "back from it (one more segmentation per target; see "
                             "Resources/MODEL_CARD.md for what it adds to the confidence)")
    parser.add_argument("--review-sheet", action="store_true",
                        help="also write OUT/wsicl-review.html: one picture per result "
                             "flagged for review (a slice through its centre, outlined), "
                             "least confident first")
    parser.add_argument("--shard", metavar="I/N",
                        help="segment only shard I of N of the targets (balanced by file "
                             "size; under torchrun: RANK and WORLD_SIZE decide)")
    parser.add_argument("--server", metavar="URL",
                        help="run the network on a `wsicl serve` server (http://HOST:PORT); "
                             "its device, precision and mini-context apply")
    parser.add_argument("--token-file", type=Path, metavar="PATH",
                        help="file holding the server's bearer token")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from .checkpoints import resolve_source
    from .contextfile import read_context_file
    from .files import check_writable_folder
    from .dicomseg import check_dicom_seg
    from .imageio import check_target_header, dicom_series, label_map_reason, list_targets
    from .launch import Launch, environment_shard
    from .resume import decide, input_digest
    from .runs import (RunReport, closing_line, merge_reports, parse_shard, shard_jobs,
                       status_counts)
    from .segment_run import (Target, common_work, failure_line, interactive_targets,
                              stops_as_interrupts, structures_work, unit_digest, units_of)
    if args.report_only:
        path, counts = merge_reports(args.report_only)
        print(closing_line(counts) + f"; wrote {path}")
        _review(args, path, args.report_only)
        return 0 if counts["failed"] == 0 else 1
    if args.cycle_check and args.server:
        raise ValueError("--cycle-check runs here, not on a server; drop one of --cycle-check "
                         "and --server")
    if not args.context_set or args.output_dir is None:
        raise ValueError("segment needs --context-set and --output-dir (or --report-only OUT)")
    context_sets = [read_context_file(path) for path in args.context_set]
    structures = [context_set.name for context_set in context_sets]
    if len(set(structures)) != len(structures):
        raise ValueError(f"context sets {structures} share a name; give each a distinct "
                         "'name' (or file name)")
    if args.interactive and args.targets:
        raise ValueError("--interactive segments the context images themselves, each from "
                         "its own prompts; drop the TARGET arguments")
    shard = None if args.interactive else \
        parse_shard(args.shard) if args.shard else environment_shard()
    launch = Launch.join("segment") if shard is not None and not args.shard else None
    if launch is not None and launch.rank != 0:
        args.quiet = True            # rank 0 speaks for the whole run, the others for errors
    if args.interactive:
        targets = interactive_targets(context_sets)
    elif not args.targets:
        raise ValueError("no TARGET given; name image files or folders to segment, or use "
                         "--interactive")
    else:
        context_images = [Path(entry.source) for context_set in context_sets
                          for entry in context_set.entries if entry.source]
        targets = [Target(name, path) for name, path in
                   list_targets(args.targets, context_images, lambda line: _say(args, line))]
    cohort = [(target.name, target.source) for target in targets]
    if shard is not None:
        kept = {name for name, _ in shard_jobs(cohort, *shard)}
        targets = [target for target in targets if target.name in kept]
        _say(args, f"{len(cohort)} targets on {shard[1]} ranks" if launch is not None else
             f"shard {shard[0] + 1} of {shard[1]}: {len(targets)} target(s)")
    per_target = not args.quiet and launch is None     # a line per target, a progress bar
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise ValueError(f"{args.output_dir}: exists and is not a folder; choose another "
                         "--output-dir")
    model_file = None if args.server else resolve_source(args.model)
    common = common_work(args, model_file)
    run_key = structures_work(common, context_sets, range(len(context_sets)),
                              args.interactive).key
    explicit = {Path(path) for path in args.targets}
    plans, failures, conflicts = {}, {}, []
    for target in targets:                             # before the model loads
        try:
            if args.format == "dicom-seg" and (args.interactive or not target.source.is_dir()):
                raise ValueError("DICOM SEG output needs a DICOM series folder as target; "
                                 "choose another --format for image files")
            if args.format == "dicom-seg":                  # its tags, before the network
                check_dicom_seg(dicom_series(target.source), structures,
                                args.output_dir / f"{target.name}.seg.dcm")
            if not args.interactive:
                check_target_header(target.source)
                reason = label_map_reason(target.source) if target.source in explicit and \
                    target.source.is_file() and not args.allow_label_targets else None
                if reason:
                    raise ValueError(f"{target.source}: looks like a label map, not a scan "
                                     f"({reason}); segment the scan it belongs to, or pass "
                                     "--allow-label-targets")
            content = functools.lru_cache(None)(functools.partial(input_digest, target.source))
            units = units_of(target, args.output_dir, context_sets, common, args)
            decisions = [decide(args.output_dir, unit.name, unit.work, unit.outputs,
                                functools.partial(unit_digest, target, unit, content))
                         for unit in units]
            conflicts += [(unit, d.reason) for unit, d in zip(units, decisions)
                          if d.action == "conflict"]
            plans[target.name] = (units, decisions, content)
        except (ValueError, OSError) as error:
            failures[target.name] = error
    if conflicts and not args.overwrite:
        unit, reason = conflicts[0]
        existing = next(path for path in unit.outputs if path.exists())
        more = f" (so do {len(conflicts) - 1} more output(s) there)" if len(conflicts) > 1 \
            else ""
        raise ValueError(f"{existing}: exists, and {reason}{more}; pass --overwrite to "
                         "replace it, or choose another --output-dir")
    model_sha256 = common["model"] if model_file is not None and model_file.is_file() \
        else None                                   # hashed once, by common_work
    report = RunReport(model_sha256, args.model, args.context_set, shard, args.output_dir,
                       launch, len(cohort), lambda line: _say(args, line),
                       [(t.name, t.source) for t in targets], run_key,
                       cohort if shard is not None else (), args.interactive)
    usable = []
    for index, target in enumerate(targets):
        label = f"[{index + 1}/{len(targets)}] {target.name}"
        if target.name in failures:
            error = failures[target.name]
            print(failure_line(label, target.name, target.source, error), file=sys.stderr)
            report.add(target.name, target.source, "failed", error=str(error))
            continue
        units, decisions, content = plans[target.name]
        kept = {name: measure for unit, decision in zip(units, decisions)
                if decision.action == "skip"
                for name, measure in decision.record.get("structures", {}).items()}
        todo = [unit for unit, decision in zip(units, decisions) if decision.action != "skip"]
        if todo:
            usable.append((label, target, units, todo, kept, content))
            continue
        if per_target:
            print(f"{label}: done before with the same model, context and options, skipped")
        report.add(target.name, target.source, "skipped",
                   outputs=[p for unit in units for p in unit.outputs], structures=kept)
    current = None
    try:
        with stops_as_interrupts():
            if usable:
                check_writable_folder(args.output_dir)  # before the model loads
                predictor = make_predictor(args) if not args.server else remote_predictor(args)
                _say(args, f"model {args.model} on the server at {args.server}" if args.server
                     else predictor.describe())
                needed = sorted({index for *_, todo, _, _ in usable for unit in todo
                                 for index, _ in unit.structures})   # not the kept ones
                contexts = {} if args.interactive else \
                    {index: predictor.prepare_context(context_sets[index]) for index in needed}
                report.write()          # every target listed before the first is segmented
            for label, target, units, todo, kept, content in usable:
                current = target.name
                _segment_target(args, predictor, contexts, target, label, units, todo, kept,
                                content,
                                {"target": target.name, "run": run_key, "units": len(units)},
                                report, per_target)
            current = None
            written_report, counts = report.close()   # rank 0 waits here: still stoppable
    except KeyboardInterrupt:              # Ctrl-C, SIGTERM, SIGHUP: say what became of all
        path = report.interrupt(current)
        print(f"wsicl: {closing_line(status_counts(report.targets))}"
              + (f"; report {path}" if path else ""), file=sys.stderr)
        raise
    _say(args, "done: " + closing_line(counts)
         + (f"; report {written_report}" if written_report else ""))
    if written_report is not None and (launch is None or launch.rank == 0):
        _review(args, written_report, args.output_dir)
    return 0 if counts["failed"] == 0 else 1


def _review(args: argparse.Namespace, report: Path, folder: Path) -> None:
    """Says which results of the run ``report`` to review and what to annotate next, and
    writes the review sheet if asked."""
    from .review import review_lines, write_review_sheet
    document = json.loads(report.read_text(encoding="utf-8"))
    for line in review_lines(document["targets"], bool(document.get("interactive"))):
        _say(args, line)
    if args.review_sheet:
        sheet = folder / "wsicl-review.html"
        shown = write_review_sheet(folder, document["targets"], sheet)
        _say(args, f"review sheet: {shown} result(s) in {sheet}")


def _segment_target(args: argparse.Namespace, predictor, contexts, target, label: str,
                    units: list, todo: list, kept: dict, content: Callable[[], str],
                    about: dict, report, per_target: bool) -> None:
    """Segments the units ``todo`` of one target (the others, ``kept``, were done before;
    ``content()``: the target's digest, computed once per run whether or not deciding
    what to redo needed it;
    ``contexts``: the prepared context sets by their index in --context-set),
    writes each unit's outputs between a pending and a complete record, and adds the
    target's row to the report (a failure: a ``failed`` row and a line on stderr)."""
    from .imageio import read_image
    from .resume import write_record
    from .segment_run import ProgressBar, failure_line, unit_digest, write_results
    started = time.perf_counter()
    measures = dict(kept)
    try:
        image = None if target.entries is not None else read_image(target.source)
        for unit in todo:
            digest = unit_digest(target, unit, content)
            write_record(args.output_dir, unit.name, unit.work, digest, about)
            results = []
            for index, name in unit.structures:
                if target.entries is not None:
                    entry = target.entries[index]
                    results.append(predictor.segment_interactive(
                        entry.image, entry.boxes, entry.points, name=entry.source))
                    continue
                part = label if len(unit.structures) == 1 and len(units) == 1 else \
                    f"{label} {name}"
                with ProgressBar(part, not per_target) as progress:
                    results.append(predictor.segment(image, contexts[index],
                                                     progress=progress,
                                                     name=str(target.source)))
            written = write_results(results, unit.outputs, [n for _, n in unit.structures],
                                    args.output_type or "per-structure", args.format,
                                    target.source, [index + 1 for index, _ in unit.structures])
            write_record(args.output_dir, unit.name, unit.work, digest, about, unit.outputs,
                         written)
            measures.update(written)
        outputs = [path for unit in units for path in unit.outputs]
        report.add(target.name, target.source, "done", time.perf_counter() - started,
                   outputs, measures)
        if per_target:
            print(f"{label}: {', '.join(map(measure_words, measures.values()))} -> "
                  f"{', '.join(map(str, outputs))}")
    except (ValueError, RuntimeError) as error:
        print(failure_line(label, target.name, target.source, error), file=sys.stderr)
        report.add(target.name, target.source, "failed", time.perf_counter() - started,
                   error=str(error))


def measure_words(measure: dict) -> str:
    """A structure's result in a few words: voxels, and its confidence and review flag if
    it has them."""
    words = f"{measure['voxels']} voxels"
    if measure.get("confidence") is not None:
        words += f" (confidence {measure['confidence']:.2f}" + \
            (", to review)" if measure.get("review") else ")")
    return words


def _say(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line)


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", formatter_class=HelpWithDefaults,
        help="paper-style evaluation on an nnU-Net-layout dataset",
        description="Segment every subject of every structure with random context draws and "
                    "simulated prompts; print a Dice table, write JSON and PNG plots.")
    parser.add_argument("--dataset", required=True, type=Path, metavar="DIR",
                        help="nnU-Net-layout dataset (imagesTr/, labelsTr/)")
    parser.add_argument("--model", default="box", help="box, point or a weights file")
    parser.add_argument("--prompt", choices=("box", "point"),
                        help="prompt kind (default: the model's)")
    parser.add_argument("--mode", choices=("icl", "interactive", "mask"), default="icl",
                        help="icl: simulated prompts on other subjects; interactive: on the "
                             "target itself; mask: other subjects' dense masks as context "
                             "(the upper bound weak prompts are compared with)")
    parser.add_argument("--context-sizes", type=int_list, default=[1, 2, 4, 8],
                        help="context sizes L to evaluate (comma-separated)")
    parser.add_argument("--prompts-per-image", type=int_list, default=[1, 2, 5],
                        help="prompted slices per context image to evaluate")
    parser.add_argument("--draws", type=int, default=8,
                        help="random context draws per subject and setting")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    parser.add_argument("--output", type=Path, default=Path("wsicl-evaluation"),
                        help="folder for evaluation.json and the plots")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_evaluate)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help=DEVICE_HELP)
    parser.add_argument("--mini-context", type=positive_int, default=1,
                        help="context images processed at once (lower it if memory runs out)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help=PRECISION_HELP)
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                        help="work at the structure's scale: interactive on a crop around "
                             "the prompts, in context on a crop where the context's prompts "
                             "lie, else in two passes (default: what the model was trained "
                             "for; on for the bundled models)")
    parser.add_argument("--context-kind", type=kinds_argument, metavar="KIND[,KIND]",
                        help="prompt kinds the model was trained for (box, point, mask), when "
                             "its file does not say or its name misleads (default: from the "
                             "file; the authors' Neuroverse3D checkpoint reads masks)")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def make_predictor(args: argparse.Namespace):
    from .predictor import Predictor
    return Predictor(args.model, device=args.device, mini_context=args.mini_context,
                     precision=args.precision, refine=args.refine,
                     prompt_kinds=args.context_kind,
                     cycle_check=getattr(args, "cycle_check", False))


def remote_predictor(args: argparse.Namespace):
    from .server.client import RemotePredictor, read_token, served_name
    token = read_token(args.token_file) if args.token_file else None
    return RemotePredictor(args.server, token, served_name(args.model), refine=args.refine,
                           prompt_kinds=args.context_kind)


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", formatter_class=HelpWithDefaults,
        help="serve the network over HTTP (for Slicer and `segment --server`)",
        description="Keep models loaded and segment for clients over HTTP (needs "
                    "`pip install '.[server]'` in the checkout). Listens on loopback unless "
                    "--host says otherwise; any other address needs a token. See the README "
                    "for an SSH tunnel or a TLS proxy.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but loopback needs a token")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", type=Path, metavar="PATH",
                        help="file holding the bearer token clients must send (at least 32 "
                             "characters, readable by its owner only)")
    tokens.add_argument("--new-token", type=Path, metavar="PATH",
                        help="write a new random token to PATH (private to you; never "
                             "overwrites) and serve with it")
    parser.add_argument("--model", nargs="+", default=["box"], metavar="MODEL",
                        help="box, point or weights files; clients name them by the given "
                             "name or the file's stem")
    parser.add_argument("--max-upload-mb", type=positive_int, default=1024,
                        help="largest upload accepted (its file size)")
    parser.add_argument("--queue", type=positive_int, default=8,
                        help="jobs that may wait; more are refused with 503 and Retry-After")
    parser.add_argument("--cache-mb", type=positive_int, default=4096,
                        help="memory for uploaded volumes (least recently used go first)")
    parser.add_argument("--volume-ttl", type=positive_int, default=3600,
                        help="seconds an unused volume is kept")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from .server.app import listening_socket, read_server_token, serve, write_new_token
    except ImportError as error:
        raise ValueError(f"the server needs extra packages ({error.name} is missing); "
                         "install them from the checkout with: pip install '.[server]'"
                         ) from None
    from .predictor import Predictor
    from .server.client import served_name
    from .server.service import Service
    token = read_server_token(args.token_file) if args.token_file else None
    if args.new_token:
        token = write_new_token(args.new_token)
        print(f"wrote a new token to {args.new_token} (give it to the clients)", flush=True)
    names = [served_name(model) for model in args.model]
    if len(set(names)) != len(names):
        raise ValueError(f"models {args.model} share a name; give files with distinct names")
    with listening_socket(args.host, args.port, token) as sock:   # before the models load
        predictors = {name: Predictor(model, args.device, args.mini_context, args.precision,
                                      args.refine, args.context_kind)
                      for name, model in zip(names, args.model)}
        if not args.quiet:                  # one line per finished job
            logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
            logging.getLogger("wsicl.serve").setLevel(logging.INFO)
        service = Service(predictors, args.queue, args.cache_mb * 2 ** 20, args.volume_ttl)
        serve(service, sock, token, args.max_upload_mb * 2 ** 20,
              say=lambda line: print(line, flush=True))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .files import write_text
    from .launch import Launch
    from .training.evaluate import evaluate, format_table, load_subjects, plot, result_of
    launch = Launch.join("evaluate")        # torchrun: the cases spread over the ranks
    predictor = make_predictor(args)
    weak = [k for k in predictor.kinds if k != "mask"]
    kind = "mask" if args.mode == "mask" else args.prompt or (weak[0] if weak else None)
    if kind is None:
        raise ValueError(f"{args.model}: the model does not say which prompts it reads; "
                         "give --prompt box or --prompt point")
    predictor.require_kinds([kind], f"{args.mode} evaluation")
    subjects, names = load_subjects(args.dataset, predictor.size)
    result = evaluate(predictor, subjects, names, kind, args.mode, args.context_sizes,
                      [1] if kind == "mask" else args.prompts_per_image, args.draws, args.seed,
                      None if args.quiet else lambda line: print(line, file=sys.stderr),
                      (launch.rank, launch.world) if launch else (0, 1))
    if launch is not None:                  # rank 0 gathers every rank's records
        launch.finish(result["records"])
        if launch.rank != 0:
            return 0
        result = result_of(result["kind"], result["mode"],
                           [record for records in launch.wait_for_all() for record in records])
    if not result["records"]:
        raise ValueError(f"{args.dataset}: no structure to evaluate (icl needs a structure in "
                         "at least two subjects)")
    result.update(dataset=str(args.dataset), model=str(args.model), seed=args.seed,
                  draws=args.draws)
    args.output.mkdir(parents=True, exist_ok=True)
    write_text(args.output / "evaluation.json", json.dumps(result, indent=1))
    plots = plot(result, args.output)
    print(format_table(result))
    print(f"wrote {args.output / 'evaluation.json'}, " + ", ".join(str(p) for p in plots))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsicl", description="Weakly supervised in-context segmentation of 3D images.")
    parser.add_argument("--version", action="version", version=f"wsicl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo(subparsers)
    add_segment(subparsers)
    add_train(subparsers)
    add_evaluate(subparsers)
    add_serve(subparsers)
    return parser


def _note(message, category, *where) -> None:
    """Warnings (e.g. a context mask resampled onto its image) as one line on stderr."""
    print(f"wsicl: note: {message}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:                       # Ctrl-C while torch loads is an interruption, not a traceback
        from .device import keep_freed_memory
        keep_freed_memory()    # every command runs the network: roughly halves CPU time
        with warnings.catch_warnings():
            warnings.showwarning = _note
            return args.handler(args)
    except KeyboardInterrupt:
        print("wsicl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"wsicl: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
