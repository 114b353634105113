"""Learning curves of crop-recipe training runs, read from their checkpoints.

Usage::

    python scripts/plot_learning_curves.py OUTPUT.png NAME=CHECKPOINT [NAME=CHECKPOINT ...]

Each CHECKPOINT is a ``last.pt`` or an export of ``wsicl.training.episode_training``; its
history holds, every 50 steps, the mean training loss (BCE + soft Dice) of the last 50
steps, and every 200 steps and at the end the loss and mean Dice on fixed engine draws
of a separate seed. Draws training loss (left) and that validation Dice (right) against
the step, one line per run, and prints the same numbers as a table.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from wsicl.checkpoints import CheckpointError, read_training_state


def histories(runs: List[str]) -> Dict[str, List[dict]]:
    """``NAME=PATH`` arguments -> each run's history records, in step order."""
    found = {}
    for run in runs:
        name, _, path = run.partition("=")
        if not path:
            raise ValueError(f"{run!r}: give NAME=CHECKPOINT")
        history = read_training_state(Path(path)).get("history") or []
        if not history:
            raise ValueError(f"{path}: holds no training history (not a crop-recipe run?)")
        found[name] = sorted(history, key=lambda record: record["step"])
    return found


def series(history: List[dict], key: str) -> Tuple[List[int], List[float]]:
    records = [record for record in history if key in record]
    return [r["step"] for r in records], [float(r[key]) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="picture to write (.png)")
    parser.add_argument("runs", nargs="+", help="NAME=CHECKPOINT")
    args = parser.parse_args()
    try:
        found = histories(args.runs)
    except (ValueError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    for name, history in found.items():
        for record in history:
            validation = (f"  val loss {record['val_loss']:.3f}  val Dice {record['val_dice']:.3f}"
                          if "val_dice" in record else "")
            print(f"{name:24s} step {record['step']:6d}  loss {record['loss']:.3f}{validation}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, history in found.items():
        left.plot(*series(history, "loss"), marker="o", label=name)
        right.plot(*series(history, "val_dice"), marker="o", label=name)
    left.set(xlabel="step", ylabel="training loss (BCE + soft Dice)", title="training loss")
    right.set(xlabel="step", ylabel="Dice", title="validation Dice (engine draws)")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
