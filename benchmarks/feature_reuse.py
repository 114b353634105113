"""What reusing the target's encoder features saves: interactive updates on one volume.

Usage: ``PYTHONPATH=WSICLSegment python benchmarks/feature_reuse.py [--threads N]``

The released-size network (random weights, whole views, fp32) segments a 96x96x64 volume
from a box, then from two moved boxes (the target's features are reused), then once more
with the cache cleared (what every update cost before). Prints seconds per call.
"""
import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch

import wsicl
from wsicl.checkpoints import ModelInfo
from wsicl.network import WSICLNet

RELEASED = [32, 64, 128, 256, 512]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wsicl.keep_freed_memory()
    torch.manual_seed(0)
    network = WSICLNet(RELEASED).eval()
    network.metadata = ModelInfo(channels=RELEASED, prompt_kinds=["box"],
                                 source="random released-size")
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((64, 96, 96))
                                   .astype(np.float32))
    predictor = wsicl.Predictor(network, device="cpu", precision="fp32", refine=False)
    boxes = [wsicl.Box((20, 20, 30), (60, 60, 30)), wsicl.Box((25, 22, 31), (66, 61, 31)),
             wsicl.Box((30, 30, 32), (70, 70, 32))]
    labels = ["first call (encodes the target)", "update (features reused)",
              "update (features reused)"]
    for label, box in zip(labels, boxes):
        started = time.perf_counter()
        predictor.segment_interactive(image, boxes=[box])
        print(f"{label}: {time.perf_counter() - started:.2f} s", flush=True)
    predictor._encoded = (b"", None)
    started = time.perf_counter()
    predictor.segment_interactive(image, boxes=[boxes[-1]])
    print(f"the same update with the cache cleared: {time.perf_counter() - started:.2f} s "
          f"({args.threads} thread(s))")


if __name__ == "__main__":
    main()
