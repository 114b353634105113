"""Paper-style evaluation: Dice over random context draws, context-size and cost curves.

For every structure of an nnU-Net-layout dataset and every subject that contains it (the
target), contexts are drawn at random from the *other* subjects (in ``icl`` mode) or the
target is its own context (``interactive`` mode); in ``mask`` mode the other subjects'
dense masks are the context (kind ``"mask"``, the upper bound for weak prompts). Prompts
are simulated on the context masks on the model grid (``prompts_per_image`` axial slices
per image, one prompt per component); the prediction is mapped back to the target's
original grid and scored there against the original label. With box prompts in ``icl``
mode a baseline that ignores the target image is scored too: the average, over the context
images, of the bounding box of each image's prompts in coordinates normalised to the
image's extent, filled in the target.
"""
import dataclasses
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..files import write_png
from ..context import Box, ContextSet, Point
from ..geometry import PreparedImage, box_corners, prepare, threshold, to_source_grid
from ..metrics import dice
from ..predictor import PreparedContext, Predictor
from .simulate import simulated_channel
from .tasks import label_on_grid, nnunet_cases

SECONDS_PER_PROMPT = {"point": 5.0, "box": 10.0, "mask": 1600.0}   # a mask: a whole 3D mask
SECONDS_PER_MASK = {"2D mask": 80.0, "3D mask": 1600.0}


@dataclasses.dataclass
class EvalSubject:
    name: str
    image: sitk.Image
    prepared: PreparedImage
    labels: sitk.Image
    labels_on_grid: np.ndarray


def load_subjects(folder: Path, size: int) -> (List[EvalSubject], Dict[int, str]):
    """The subjects of an nnU-Net-layout dataset and its label names."""
    names, cases = nnunet_cases(folder)
    subjects = []
    for case, image_path, label_path in cases:
        image = sitk.ReadImage(str(image_path))
        prepared = prepare(image, size, case)
        label = sitk.ReadImage(str(label_path))
        subjects.append(EvalSubject(case, image, prepared, label, label_on_grid(label, prepared)))
    return subjects, names


def baseline_mask(boxes_per_context: Sequence[list], shape: Sequence[int]) -> np.ndarray:
    """The mean normalised bounding box of each context image's boxes, filled."""
    extents = []
    for boxes in boxes_per_context:
        low = np.min([[r[0] for r in box] for box in boxes], axis=0)
        high = np.max([[r[1] for r in box] for box in boxes], axis=0)
        extents.append(np.concatenate([low, high]) / np.tile(shape, 2))
    mean = np.mean(extents, axis=0) * np.tile(shape, 2)
    low, high = np.rint(mean[:3]).astype(int), np.maximum(np.rint(mean[3:]).astype(int),
                                                        np.rint(mean[:3]).astype(int) + 1)
    mask = np.zeros(shape, dtype=np.float32)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = 1.0
    return mask


def evaluate(predictor: Predictor, subjects: List[EvalSubject], names: Dict[int, str],
             kind: str, mode: str, context_sizes: Sequence[int], prompts_per_image: Sequence[int],
             draws: int, seed: int, progress: Optional[Callable[[str], None]] = None,
             shard: Tuple[int, int] = (0, 1)) -> dict:
    """Runs every (structure, target, context size, prompts per image, draw); returns the
    per-run records (numbered by ``case`` in that order) and per-structure summaries.

    ``shard = (i, n)`` runs only the cases whose number is ``i`` modulo ``n`` (the ranks of
    a launch); the draws of every case are made all the same, so the union of the shards'
    records is the one-process result."""
    if mode not in ("icl", "interactive", "mask"):
        raise ValueError(f"mode must be 'icl', 'interactive' or 'mask', got {mode!r}")
    rng = np.random.default_rng(seed)
    sizes = [1] if mode == "interactive" else list(context_sizes)
    radius = int(predictor.metadata.point_radius)
    records, case = [], -1
    for value, name in sorted(names.items()):
        holders = [s for s in subjects if (s.labels_on_grid == value).any()]
        if mode != "interactive" and len(holders) < 2:
            continue
        for target in holders:
            truth = sitk.GetArrayFromImage(target.labels) == value
            others = [target] if mode == "interactive" else [
                s for s in holders if s is not target]
            for size in sizes:
                for slices in prompts_per_image:
                    for draw in range(draws):
                        picks = [others[i] for i in rng.choice(
                            len(others), size, replace=size > len(others))]
                        channels, prompt_lists = zip(*[simulated_channel(
                            s.labels_on_grid == value, kind, slices, rng, radius) for s in picks])
                        case += 1
                        if case % shard[1] != shard[0]:
                            continue
                        if predictor.refine:
                            mask = full_path(predictor, target, picks, prompt_lists, kind,
                                             mode, value, name)
                        else:
                            context = PreparedContext.of([s.prepared.array for s in picks],
                                                         list(channels), name)
                            mask = predictor.segment_prepared(target.image, target.prepared,
                                                              context).mask
                        record = {"case": case, "structure": name, "target": target.name,
                                  "context_size": size, "prompts_per_image": slices, "draw": draw,
                                  "prompts": int(sum(len(p) for p in prompt_lists)),
                                  "dice": dice(sitk.GetArrayFromImage(mask), truth)}
                        if kind == "box" and mode == "icl":
                            base = baseline_mask(prompt_lists, target.prepared.array.shape)
                            base_mask = threshold(to_source_grid(base, target.prepared.grid,
                                                                 target.image))
                            record["baseline_dice"] = dice(sitk.GetArrayFromImage(base_mask),
                                                           truth)
                        records.append(record)
                        if progress is not None:
                            progress(f"{name} {target.name} L={size} k={slices} draw {draw}: "
                                     f"Dice {record['dice']:.3f}")
    return result_of(kind, mode, records)


def result_of(kind: str, mode: str, records: List[dict]) -> dict:
    """An evaluation's result: its records in case order and their summaries."""
    records = sorted(records, key=lambda record: record["case"])
    return {"kind": kind, "mode": mode, "records": records, "summary": summarise(records)}


def full_path(predictor: Predictor, target: EvalSubject, picks: Sequence[EvalSubject],
              prompt_lists: Sequence[list], kind: str, mode: str, value: int, name: str
              ) -> sitk.Image:
    """The mask through the predictor's whole path (crops, two passes) from the simulated
    prompts, given as prompts on each subject's own image, as a user would place them."""
    if mode == "interactive":
        boxes, points = on_subject_image(prompt_lists[0], kind, target)
        return predictor.segment_interactive(target.image, boxes, points).mask
    context = ContextSet(name=name)
    for subject, prompts in zip(picks, prompt_lists):
        if kind == "mask":
            context.add(subject.image, mask=subject.labels, label=value, name=subject.name)
        else:
            context.add(subject.image, *on_subject_image(prompts, kind, subject),
                        name=subject.name)
    return predictor.segment(target.image, context).mask


def on_subject_image(prompts: list, kind: str, subject: EvalSubject
                     ) -> (List[Box], List[Point]):
    """Model-grid prompts (array-order index ranges / indices, :mod:`wsicl.training.simulate`)
    as boxes or points in voxel indices of the subject's own image. The model grid's axes
    are the image's axes permuted and flipped, so a 2D box stays 2D (on the nearest slice)."""
    grid, source = subject.prepared.grid, subject.prepared.source

    def to_voxel(array_points) -> np.ndarray:
        lps = grid.index_to_lps(np.asarray(array_points, dtype=float)[:, ::-1])
        return source.lps_to_index(lps)

    if kind == "box":
        boxes = []
        for ranges in prompts:
            corners = to_voxel(box_corners([r[0] for r in ranges], [r[1] - 1 for r in ranges]))
            boxes.append(Box(tuple(np.rint(corners.min(0))), tuple(np.rint(corners.max(0)))))
        return boxes, []
    return [], [Point(tuple(np.rint(to_voxel([p])[0]))) for p in prompts]


def summarise(records: List[dict]) -> List[dict]:
    """Mean and sd of Dice per (structure, context size, prompts per image), plus the
    average over structures as structure ``"average"``."""
    groups: Dict[tuple, List[dict]] = {}
    for record in records:
        key = (record["structure"], record["context_size"], record["prompts_per_image"])
        groups.setdefault(key, []).append(record)
        groups.setdefault(("average",) + key[1:], []).append(record)
    rows = []
    for (structure, size, slices), items in sorted(groups.items(), key=lambda kv: (
            kv[0][0] == "average", kv[0])):
        scores = np.array([r["dice"] for r in items])
        row = {"structure": structure, "context_size": size, "prompts_per_image": slices,
               "runs": len(items), "dice_mean": float(scores.mean()),
               "dice_sd": float(scores.std()),
               "prompts_mean": float(np.mean([r["prompts"] for r in items]))}
        if "baseline_dice" in items[0]:
            base = np.array([r["baseline_dice"] for r in items])
            row.update(baseline_mean=float(base.mean()), baseline_sd=float(base.std()))
        rows.append(row)
    return rows


def format_table(result: dict) -> str:
    """The summary as a fixed-width text table."""
    has_baseline = any("baseline_mean" in row for row in result["summary"])
    header = f"{'structure':<28} {'L':>3} {'k':>3} {'runs':>5} {'Dice':>15}"
    header += f" {'baseline':>15}" if has_baseline else ""
    lines = [header, "-" * len(header)]
    for row in result["summary"]:
        line = (f"{row['structure'][:28]:<28} {row['context_size']:>3} "
                f"{row['prompts_per_image']:>3} {row['runs']:>5} "
                f"{row['dice_mean']:>7.3f} +/- {row['dice_sd']:.3f}")
        if has_baseline:
            line += f" {row['baseline_mean']:>7.3f} +/- {row['baseline_sd']:.3f}"
        lines.append(line)
    return "\n".join(lines)


def plot(result: dict, output: Path) -> List[Path]:
    """Writes the paper's Fig. 4 (Dice vs context size per prompts-per-image) and Fig. 5
    (Dice vs annotation seconds of the context set) as PNG files."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["summary"] if r["structure"] == "average"]
    kind = result["kind"]
    paths = []
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for slices in sorted({r["prompts_per_image"] for r in rows}):
        line = sorted((r for r in rows if r["prompts_per_image"] == slices),
                      key=lambda r: r["context_size"])
        axis.errorbar([r["context_size"] for r in line], [r["dice_mean"] for r in line],
                      yerr=[r["dice_sd"] for r in line], marker="o", capsize=3,
                      label=f"{slices} slice(s) per image")
    axis.set(xlabel="context size L", ylabel="Dice", ylim=(0, 1),
             title=f"Dice vs context size ({kind} prompts, {result['mode']})")
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(output / "dice_vs_context_size.png")
    write_png(figure, paths[-1], dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 3.6))
    seconds = [r["prompts_mean"] * SECONDS_PER_PROMPT[kind] for r in rows]
    axis.scatter(seconds, [r["dice_mean"] for r in rows], label=f"{kind} prompts (measured)")
    for label, cost in SECONDS_PER_MASK.items():
        axis.axvline(cost, color="grey", linestyle=":", linewidth=1)
        axis.text(cost, 0.02, f"one {label}", rotation=90, fontsize=7, va="bottom")
    axis.set(xscale="log", xlabel="annotation time of the context set (s)", ylabel="Dice",
             ylim=(0, 1), title="Dice vs annotation time")
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(output / "dice_vs_annotation_time.png")
    write_png(figure, paths[-1], dpi=120)
    plt.close(figure)
    return paths
