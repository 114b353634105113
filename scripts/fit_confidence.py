"""Fits the confidence calibration (``wsicl/models/confidence.json``) on development
benchmark results, and says how well it ranks failures.

Usage::

    python scripts/dev_benchmark.py SHARED_DATA runs/conf --model box=box --draws 6
    python scripts/fit_confidence.py runs/conf/dev_benchmark.json [--write]

A result is a failure when its Dice is under 0.5. The INIA19 macaque tasks are never fitted
on (their atlas's licence keeps it out of what the project ships); they are scored as a
held-out family instead. The calibration is a logistic regression
from the standardised evidence (``wsicl.confidence.FEATURES``) to "not a failure", with a
small ridge penalty; empty results are left out of the fit (their confidence is 0 by rule)
but counted in every figure. Printed: each feature's own AUROC, the AUROC of the fitted
confidence in sample and cross-validated by leaving out one task at a time (all draws of a
task, so that a task's draws never help rank themselves), and the review threshold: the
highest confidence below which at least 80 % of the failures fall, or 0.5 if that flags
fewer. ``--write`` stores the calibration with these figures.
"""
import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from wsicl.confidence import CALIBRATION_FILE, FEATURES, Calibration, Evidence

FAILURE_BELOW = 0.5
NOT_FITTED = ("INIA19",)
CATCH = 0.8
RIDGE = 1.0


def auroc(scores: Sequence[float], good: Sequence[bool]) -> float:
    """Chance that a random good result scores above a random failure (ties count half)."""
    scores, good = np.asarray(scores, dtype=float), np.asarray(good, dtype=bool)
    ups, downs = scores[good], scores[~good]
    if not len(ups) or not len(downs):
        return float("nan")
    above = (ups[:, None] > downs[None, :]).mean()
    tied = (ups[:, None] == downs[None, :]).mean()
    return float(above + tied / 2)


def spearman(first: Sequence[float], second: Sequence[float]) -> float:
    """Rank correlation (average ranks for ties), defined where AUROC is not: a family
    whose results all fail can still be ranked by how badly."""
    from scipy.stats import spearmanr
    return float(spearmanr(first, second).correlation) if len(first) > 2 else float("nan")


def fit_logistic(features: np.ndarray, good: np.ndarray) -> Tuple[np.ndarray, float]:
    """Weights and bias of a ridge-penalised logistic regression (Newton steps)."""
    design = np.hstack([features, np.ones((len(features), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.diag([RIDGE] * features.shape[1] + [0.0])
    for _ in range(50):
        chance = 1 / (1 + np.exp(-design @ theta))
        gradient = design.T @ (chance - good) + penalty @ theta
        hessian = design.T @ (design * (chance * (1 - chance))[:, None]) + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(theta)), gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def calibrate(cases: List[Dict], fitted: str) -> Calibration:
    """The calibration fitted on ``cases`` (dev benchmark records)."""
    found = [Evidence(**case["evidence"]) for case in cases]
    good = np.array([case["dice"] >= FAILURE_BELOW for case in cases])
    size, fit = typical(found)
    used = [i for i, e in enumerate(found) if not e.empty]
    features = np.array([found[i].features(size, fit) for i in used])
    mean, scale = features.mean(0), features.std(0) + 1e-6
    weights, bias = fit_logistic((features - mean) / scale, good[used].astype(float))
    return Calibration(weights.tolist(), bias, mean.tolist(), scale.tolist(), size, fit, 0.5,
                       fitted)


def typical(found: Sequence[Evidence]) -> Tuple[float, float]:
    """The median known size and fit of non-empty results (0 and 0.5 if none is known)."""
    sizes = [e.size for e in found if not e.empty and e.size is not None]
    fits = [e.fit for e in found if not e.empty and e.fit is not None]
    return (float(np.median(sizes)) if sizes else 0.0,
            float(np.median(fits)) if fits else 0.5)


def review_threshold(confidences: np.ndarray, good: np.ndarray) -> float:
    """The highest confidence under which at least :data:`CATCH` of the failures fall, or
    0.5 if that flags fewer results."""
    failures = np.sort(confidences[~good])
    if not len(failures):
        return 0.5
    needed = failures[min(len(failures) - 1, math.ceil(CATCH * len(failures)) - 1)]
    return float(max(0.5, needed + 1e-6))


def by_mode(cases: List[Dict]):
    """``(mode, cycle checked, which cases)`` for each mode and cycle-check state present
    (interactive results are always checked against their own prompts)."""
    for mode in ("interactive", "in context"):
        for cycle in (True, False):
            chosen = np.array([case["task"].startswith(mode) and
                               (case["evidence"].get("fit") is not None) == cycle
                               for case in cases])
            if chosen.any() and (mode == "in context" or cycle):
                yield mode, cycle, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="dev_benchmark.json files")
    parser.add_argument("--write", action="store_true", help=f"write {CALIBRATION_FILE}")
    args = parser.parse_args()
    cases = [case for path in args.results
             for case in json.loads(path.read_text())["cases"]]
    good = np.array([case["dice"] >= FAILURE_BELOW for case in cases])
    found = [Evidence(**case["evidence"]) for case in cases]
    print(f"{len(cases)} results, {int((~good).sum())} failures (Dice < {FAILURE_BELOW}), "
          f"{sum(e.empty for e in found)} empty")
    size, fit = typical(found)
    for index, name in enumerate(FEATURES):
        values = [-1.0 if e.empty else e.features(size, fit)[index] for e in found]
        print(f"  {name:10s} AUROC {auroc(values, good):.3f}")
    fit_cases = [case for case in cases if not any(n in case["task"] for n in NOT_FITTED)]
    fitted = calibrate(fit_cases, "dev benchmark results of " +
                       ", ".join(sorted({case["model"] for case in fit_cases})) +
                       f", INIA19 tasks left out ({len(fit_cases)} results)")
    in_sample = [fitted.confidence(Evidence(**case["evidence"])) for case in fit_cases]
    tasks = sorted({case["task"] for case in cases})
    held_out = np.zeros(len(cases))
    for task in tasks:
        model = calibrate([case for case in fit_cases if case["task"] != task], "")
        for i, case in enumerate(cases):
            if case["task"] == task:
                held_out[i] = model.confidence(found[i])
    threshold = review_threshold(held_out, good)
    flagged = held_out < threshold
    dices = np.array([case["dice"] for case in cases])
    family = np.array([any(n in case["task"] for n in NOT_FITTED) for case in cases])
    figures = {
        "results": len(cases), "failures": int((~good).sum()),
        "auroc_in_sample": auroc(in_sample, [c["dice"] >= FAILURE_BELOW for c in fit_cases]),
        "auroc_leave_one_task_out": auroc(held_out, good),
        "auroc_inia19_never_fitted": auroc(held_out[family], good[family]),
        **{f"{measure}_{mode.replace(' ', '_')}_{'with' if cycle else 'without'}_cycle_check":
           value for mode, cycle, chosen in by_mode(cases)
           for measure, value in (("auroc", auroc(held_out[chosen], good[chosen])),
                                  ("spearman", spearman(held_out[chosen], dices[chosen])))},
        "review_below": threshold,
        "failures_flagged": float(flagged[~good].mean()) if (~good).any() else float("nan"),
        "results_flagged": float(flagged.mean()),
        "successes_flagged": float(flagged[good].mean()) if good.any() else float("nan"),
    }
    for key, value in figures.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    if args.write:
        data = {**{k: getattr(fitted, k) for k in ("weights", "bias", "mean", "scale",
                                                    "typical_size", "typical_fit")},
                "review_below": threshold, "features": list(FEATURES),
                "fitted": fitted.fitted, "figures": figures}
        data["figures"] = {key: None if isinstance(value, float) and math.isnan(value)
                           else value for key, value in figures.items()}   # JSON has no NaN
        CALIBRATION_FILE.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
