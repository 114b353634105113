"""Development benchmark of the bundled models on real data kept out of their training.

Usage::

    python scripts/dev_benchmark.py SHARED_DATA_DIR OUTPUT_DIR [--model NAME=PATH ...]
        [--prompt box|point] [--draws 3] [--seed 0] [--refine | --no-refine]
        [--modes interactive,context]

Tasks (none of these structures or images is trained on; see Resources/MODEL_CARD.md):

- interactive, one 2D prompt on one axial slice (drawn in proportion to the structure's
  area): the brain1 / brain2 tumours (MR), the lung1 / lung2 tumours (CT), the lungs of
  lung1 / lung2 (reference made by thresholding air inside the body at -400 HU), and six
  regions of the INIA19 macaque brain atlas (evaluation only: its licence forbids training
  the bundled weights on it);
- in context, ``L = 1``, 5 prompted slices on the context image, both directions of the
  brain-tumour, lung-tumour and lung pairs.

Prompts are tight boxes (or points at the centre of the slice's largest component) in
voxel coordinates of the image as read, given to the public API (``Predictor.segment`` and
``segment_interactive``), so the whole path a user takes is measured. Dice is computed on
the target's own grid. Beside each model, location-only floors that never look at the
target image: interactive, the box extruded over as many millimetres above and below the
prompted slice as half its mean in-plane side; in context, the context's prompt bounding
box in coordinates normalised to the image extent, pasted into the target.

Writes ``OUTPUT_DIR/dev_benchmark.json`` (every score, and each result's evidence about
itself for ``scripts/fit_confidence.py``), prints a table of means +/- sd and
draws ``OUTPUT_DIR/dev_benchmark.png`` (one case per task family).
"""
import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from wsicl import Box, ContextSet, Point, Predictor
from wsicl.metrics import dice


def axial_axis(image: sitk.Image) -> int:
    """The index axis (0 = i) most aligned with the superior direction."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2])))


def lungs_reference(image: sitk.Image) -> np.ndarray:
    """Lungs of a chest CT (array order, axis 0 axial): air below -400 HU that touches no
    in-plane edge of the volume (air outside the body does), the two largest components
    (the airways, leaving through the top slice, stay connected to them)."""
    array = sitk.GetArrayFromImage(image)
    air = array < -400
    labels, count = ndimage.label(air)
    border = set(np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                           labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])))
    sizes = ndimage.sum(air, labels, range(1, count + 1))
    order = [v for v in np.argsort(sizes)[::-1] + 1 if v not in border][:2]
    return np.isin(labels, order)


def prompts_on(mask: np.ndarray, axis_array: int, slices: List[int], kind: str):
    """Boxes / points (voxel coordinates i, j, k) on the given array-axis slices."""
    prompts = []
    for s in slices:
        plane = np.take(mask, s, axis=axis_array)
        others = [a for a in range(3) if a != axis_array]
        if kind == "box":
            rows = np.flatnonzero(plane.any(1))
            cols = np.flatnonzero(plane.any(0))
            low = [0, 0, 0]
            high = [0, 0, 0]
            low[axis_array] = high[axis_array] = s
            low[others[0]], high[others[0]] = rows[0], rows[-1]
            low[others[1]], high[others[1]] = cols[0], cols[-1]
            prompts.append(Box(tuple(low[::-1]), tuple(high[::-1])))
        else:
            labels, count = ndimage.label(plane)
            largest = 1 + int(np.argmax(ndimage.sum(plane, labels, range(1, count + 1))))
            component = np.argwhere(labels == largest)
            centre = component[np.argmin(((component - component.mean(0)) ** 2).sum(1))]
            position = [0, 0, 0]
            position[axis_array] = s
            position[others[0]], position[others[1]] = centre
            prompts.append(Point(tuple(position[::-1])))
    return prompts


def draw_slices(mask: np.ndarray, axis_array: int, count: int, rng) -> List[int]:
    areas = mask.sum(axis=tuple(a for a in range(3) if a != axis_array)).astype(float)
    candidates = np.flatnonzero(areas)
    count = min(count, candidates.size)
    return sorted(rng.choice(candidates, size=count, replace=False,
                             p=areas[candidates] / areas[candidates].sum()).tolist())


def extruded_floor(image: sitk.Image, mask: np.ndarray, axis_array: int, slice_index: int
                   ) -> np.ndarray:
    plane = np.take(mask, slice_index, axis=axis_array)
    rows, cols = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
    spacing = np.array(image.GetSpacing())[::-1]
    others = [a for a in range(3) if a != axis_array]
    side_mm = ((rows[-1] - rows[0] + 1) * spacing[others[0]]
               + (cols[-1] - cols[0] + 1) * spacing[others[1]]) / 2
    half = int(round(side_mm / 2 / spacing[axis_array]))
    floor = np.zeros_like(mask)
    index = [slice(None)] * 3
    index[axis_array] = slice(max(0, slice_index - half), slice_index + half + 1)
    index[others[0]] = slice(rows[0], rows[-1] + 1)
    index[others[1]] = slice(cols[0], cols[-1] + 1)
    floor[tuple(index)] = True
    return floor


def pasted_floor(context_mask: np.ndarray, slices: List[int], axis_array: int,
                 target_shape: Tuple[int, ...]) -> np.ndarray:
    """The context's prompt bounding box in normalised coordinates, pasted."""
    prompt = np.zeros_like(context_mask)
    for s in slices:
        index = [slice(None)] * 3
        index[axis_array] = s
        prompt[tuple(index)] = np.take(context_mask, s, axis=axis_array)
    present = np.argwhere(prompt)
    low = present.min(0) / np.array(context_mask.shape)
    high = (present.max(0) + 1) / np.array(context_mask.shape)
    floor = np.zeros(target_shape, dtype=bool)
    start = np.floor(low * target_shape).astype(int)
    stop = np.ceil(high * target_shape).astype(int)
    floor[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    return floor


def load_cases(data: Path) -> Dict[str, Tuple[sitk.Image, np.ndarray]]:
    cases = {}
    radiomics = data / "pyradiomics_cases"
    for name in ("brain1", "brain2", "lung1", "lung2"):
        image = sitk.ReadImage(str(radiomics / f"{name}_image.nrrd"))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(radiomics / f"{name}_label.nrrd")))
        cases[f"{name} tumour"] = (image, label > 0)
        if name.startswith("lung"):
            cases[f"{name} lungs"] = (image, lungs_reference(image))
    atlas = data / "inia19_macaque"
    image = sitk.ReadImage(str(atlas / "inia19-t1-brain.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(atlas / "inia19-NeuroMaps.nii.gz")))
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    order = np.argsort(counts)
    # Six regions spread over sizes: the 50th to 95th size percentiles.
    for quantile in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        value = int(values[order[int(quantile * (len(order) - 1))]])
        cases[f"INIA19 region {value}"] = (image, labels == value)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=PATH (or NAME=box / NAME=point for the bundled ones)")
    parser.add_argument("--prompt", default="box", choices=("box", "point"))
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="interactive,context",
                        help="which task families to run: interactive, context or both")
    parser.add_argument("--cycle-check", action="store_true",
                        help="in context, score each result by segmenting the context back "
                             "(evidence for scripts/fit_confidence.py; one more pass)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                        help="crop / two-pass inference on or off (default: each model's own)")
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in (args.model or [f"bundled={args.prompt}"]))
    args.output.mkdir(parents=True, exist_ok=True)
    cases = load_cases(args.data)
    pairs = [("brain1 tumour", "brain2 tumour"), ("lung1 tumour", "lung2 tumour"),
             ("lung1 lungs", "lung2 lungs")]
    pairs += [(b, a) for a, b in pairs]
    results: Dict[str, Dict[str, List[float]]] = {}
    cases_seen: List[Dict] = []
    pictures = {}

    def score(method: str, task: str, value: float) -> None:
        results.setdefault(method, {}).setdefault(task, []).append(float(value))

    def record(method: str, task: str, result) -> np.ndarray:
        """The result's mask (array order); its score and evidence noted for
        ``scripts/fit_confidence.py``."""
        predicted = sitk.GetArrayFromImage(result.mask)
        reference = cases[task.split(": ", 1)[1].split(" -> ")[-1]][1]
        score(method, task, dice(predicted, reference))
        cases_seen.append({"model": method, "task": task, "dice": results[method][task][-1],
                           "evidence": result.evidence.as_dict()})
        return predicted

    for name, source in models.items():
        predictor = Predictor(source, device="cpu", refine=args.refine,
                              cycle_check=args.cycle_check)
        started = time.perf_counter()
        for task, (image, mask) in cases.items() if "interactive" in args.modes else ():
            axis = 2 - axial_axis(image)
            for draw in range(args.draws):
                rng = np.random.default_rng([args.seed, draw, len(task)])
                slices = draw_slices(mask, axis, 1, rng)
                prompts = prompts_on(mask, axis, slices, args.prompt)
                kwargs = {"boxes": prompts} if args.prompt == "box" else {"points": prompts}
                predicted = record(name, f"interactive: {task}",
                                   predictor.segment_interactive(image, **kwargs))
                if name == next(iter(models)):
                    score("floor", f"interactive: {task}",
                          dice(extruded_floor(image, mask, axis, slices[0]), mask))
                if draw == 0:
                    pictures[(name, task)] = (sitk.GetArrayFromImage(image), mask, predicted,
                                              axis, slices[0])
        for context_task, target_task in pairs if "context" in args.modes else ():
            context_image, context_mask = cases[context_task]
            target_image, target_mask = cases[target_task]
            axis = 2 - axial_axis(context_image)
            for draw in range(args.draws):
                rng = np.random.default_rng([args.seed, draw, len(context_task), 7])
                slices = draw_slices(context_mask, axis, 5, rng)
                prompts = prompts_on(context_mask, axis, slices, args.prompt)
                context = ContextSet(name=context_task)
                context.add(context_image, **({"boxes": prompts} if args.prompt == "box"
                                              else {"points": prompts}))
                task = f"in context: {context_task} -> {target_task}"
                record(name, task, predictor.segment(target_image, context))
                if name == next(iter(models)):
                    score("floor", task, dice(pasted_floor(context_mask, slices, axis,
                                                           target_mask.shape), target_mask))
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = {method: {task: [float(np.mean(v)), float(np.std(v))]
                        for task, v in tasks.items()} for method, tasks in results.items()}
    for method, tasks in results.items():
        for mode in ("interactive", "in context"):
            means = [np.mean(v) for t, v in tasks.items() if t.startswith(mode)]
            if means:
                summary[method][f"{mode}: average"] = [float(np.mean(means)),
                                                       float(np.std(means))]
    (args.output / "dev_benchmark.json").write_text(json.dumps(
        {"prompt": args.prompt, "draws": args.draws, "seed": args.seed, "models": models,
         "scores": results, "summary": summary, "cases": cases_seen}, indent=1), encoding="utf-8")
    methods = list(results)
    tasks = list(results[methods[0]])
    tasks = sorted(set(tasks), key=lambda t: (not t.startswith("interactive"), t))
    print(f"{'task':58s}" + "".join(f"{m[:14]:>16s}" for m in methods))
    for task in tasks + ["interactive: average", "in context: average"]:
        print(f"{task[:58]:58s}" + "".join(
            f"{summary[m][task][0]:9.3f}+-{summary[m][task][1]:.2f}" if task in summary[m]
            else f"{'':>16s}" for m in methods))
    if pictures:
        draw_picture(pictures, list(models), args.output / "dev_benchmark.png")


def draw_picture(pictures, models: List[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = sorted({task for _, task in pictures})
    figure, axes = plt.subplots(len(models), len(tasks),
                                figsize=(2.2 * len(tasks), 2.4 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for column, task in enumerate(tasks):
            image, mask, predicted, axis, index = pictures[(model, task)]
            ax = axes[row, column]
            ax.imshow(np.take(image, index, axis=axis), cmap="gray")
            ax.contour(np.take(mask, index, axis=axis), levels=[0.5], colors="lime",
                       linewidths=0.8)
            if np.take(predicted, index, axis=axis).any():
                ax.contour(np.take(predicted, index, axis=axis), levels=[0.5], colors="red",
                           linewidths=0.8)
            ax.set_title(f"{model}: {task}", fontsize=6)
            ax.axis("off")
    figure.suptitle("green: reference, red: prediction (interactive, prompted slice)",
                    fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
