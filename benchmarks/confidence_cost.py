"""What a result's confidence costs: the evidence read off every result (always on) and
the cycle check (``--cycle-check``), against the segmentation itself.

Usage: ``python benchmarks/confidence_cost.py [--repeats 3] [--device cpu]``

On the demo's data (context: the sample CT with five boxes on the liver; target: the
sample MR), with the bundled box model: times ``Predictor.segment`` with and without the
cycle check (median of ``--repeats`` after one warm-up), and the evidence alone
(:func:`wsicl.confidence.evidence` on a 64^3 output and :func:`prompt_fit` on the result),
and prints each as seconds and as a share of the plain segmentation.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from wsicl import ContextSet, Predictor
from wsicl.confidence import evidence, prompt_fit
from wsicl.context import ContextEntry
from wsicl.demo import LIVER, boxes_on_slices, sample, to_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import timed as median_seconds  # noqa: E402  (median after a warm-up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    ct = sitk.ReadImage(str(sample("example_ct_sm.nii.gz")))
    mr = sitk.ReadImage(str(sample("example_mr_sm.nii.gz")))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg.nii.gz")))) == LIVER
    boxes = to_boxes(boxes_on_slices(liver, 5))
    context = ContextSet(name="liver").add(ct, boxes=boxes)
    plain = Predictor("box", device=args.device)
    checked = Predictor("box", device=args.device, cycle_check=True)
    prepared = plain.prepare_context(context)
    segment = median_seconds(lambda: plain.segment(mr, prepared), args.repeats)
    cycle = median_seconds(lambda: checked.segment(mr, prepared), args.repeats)
    output = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32) ** 3
    result = plain.segment(mr, prepared).mask
    mr_liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz")))) \
        == LIVER
    entry = ContextEntry(mr, to_boxes(boxes_on_slices(mr_liver, 3)), [], "mr")
    found = median_seconds(lambda: (evidence(output, (2.0, 2.0, 2.0), 40.0),
                                    prompt_fit(result, entry)), args.repeats)
    print(f"{plain.describe()}; the demo's MR in context of the CT liver")
    print(f"segmentation:               {segment:7.3f} s")
    print(f"evidence (always on):       {found:7.3f} s = {100 * found / segment:5.1f} % of it")
    print(f"with the cycle check:       {cycle:7.3f} s = +{100 * (cycle / segment - 1):5.1f} %")


if __name__ == "__main__":
    main()
