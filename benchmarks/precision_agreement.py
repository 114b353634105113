"""Do bfloat16 masks agree with fp32? The check behind precision ``auto``.

Usage::

    PYTHONPATH=WSICLSegment python benchmarks/precision_agreement.py [--model box]
        [--model path/to/weak_ICL_bbox.ckpt] [--device cpu|cuda] [--json out.json]

For each model, on the bundled sample data (abdominal MR target; liver, spleen and both
kidneys), segments interactively (one box on the MR itself) and in context (three boxes
on the sample CT), once in fp32 and once in bf16, and prints per case the voxel agreement
of the two masks, their Dice, the largest difference of the probabilities and both times.
The goal for making bf16 the default where it is native: agreement >= 99.9 % and Dice
>= 0.995 on every case. Run it where bfloat16 is native (a GPU, or a CPU with AMX-BF16 /
AVX512-BF16): elsewhere bf16 is emulated and a case can take many minutes.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import wsicl
from wsicl.demo import boxes_on_slices, sample, to_boxes
from wsicl.metrics import dice

ORGANS = {5: "liver", 1: "spleen", 2: "right kidney", 3: "left kidney"}


def cases():
    """(name, run) pairs: ``run(predictor)`` returns a Segmentation."""
    mr = sitk.ReadImage(str(sample("example_mr_sm.nii.gz")))
    ct = sitk.ReadImage(str(sample("example_ct_sm.nii.gz")))
    mr_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz"))))
    ct_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg.nii.gz"))))
    for value, organ in ORGANS.items():
        boxes = to_boxes(boxes_on_slices(mr_labels == value, 1))
        yield f"interactive {organ}", lambda p, b=boxes: p.segment_interactive(mr, boxes=b)
        context = wsicl.ContextSet(name=organ).add(
            ct, to_boxes(boxes_on_slices(ct_labels == value, 3)))
        yield f"in context {organ}", lambda p, c=context: p.segment(mr, c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="box, point or a weights file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    wsicl.keep_freed_memory()
    rows = []
    for model in args.model or ["box"]:
        predictors = {p: wsicl.Predictor(model, device=args.device, precision=p)
                      for p in ("fp32", "bf16")}
        for name, run in cases():
            results, seconds = {}, {}
            for precision, predictor in predictors.items():
                started = time.perf_counter()
                results[precision] = run(predictor)
                seconds[precision] = time.perf_counter() - started
            full, reduced = (sitk.GetArrayFromImage(results[p].mask) for p in ("fp32", "bf16"))
            gap = np.abs(sitk.GetArrayFromImage(results["fp32"].probability)
                         - sitk.GetArrayFromImage(results["bf16"].probability)).max()
            rows.append({"model": str(model), "case": name, "agreement": float((full == reduced)
                                                                               .mean()),
                         "dice": dice(full, reduced) if full.any() or reduced.any() else 1.0,
                         "max_probability_gap": float(gap), "fp32_s": seconds["fp32"],
                         "bf16_s": seconds["bf16"], "device": predictors["fp32"].device.type})
            row = rows[-1]
            print(f"{row['model']:<12} {name:<26} agreement {row['agreement']:.5f}  Dice "
                  f"{row['dice']:.4f}  max gap {gap:.4f}  {row['fp32_s']:.2f} s / "
                  f"{row['bf16_s']:.2f} s", flush=True)
    worst = min(rows, key=lambda r: (r["agreement"], r["dice"]))
    print(f"worst: {worst['case']} ({worst['model']}): agreement {worst['agreement']:.5f}, "
          f"Dice {worst['dice']:.4f}; goal >= 0.999 and >= 0.995")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
