"""How close the network runs to the machine's limit: achieved TFLOP/s of the released-size
network against the measured TFLOP/s of one large 3D convolution, same device and precision.

Usage: ``PYTHONPATH=WSICLSegment python benchmarks/roofline.py [--precision fp32|bf16]
[--device cpu|cuda] [--context 1] [--threads N]``

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions and matrix products, 2 per
multiply-add; element-wise work such as normalisation and GELU is not counted, so the
figure is a lower bound on the work done). The "peak" is a 64 -> 64 channel 3x3x3
convolution on a 64^3 volume in the predictor's memory layout (channels-last on the CPU),
the kind of operation the network spends its time in; the best of 5 runs after a warm-up.
"""
import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from wsicl.device import autocast, keep_freed_memory, pick_device
from wsicl.network import WSICLNet

RELEASED = [32, 64, 128, 256, 512]


def best_seconds(function, device: torch.device, runs: int = 5) -> float:
    """The fastest of ``runs`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--context", type=int, default=1, help="context images L")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=2, help="timed network runs (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = pick_device(args.device)
    layout = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format

    convolution = torch.nn.Conv3d(64, 64, 3, padding=1).to(device).to(memory_format=layout)
    volume = torch.rand(1, 64, 64, 64, 64, device=device).to(memory_format=layout)
    with torch.inference_mode(), autocast(device, args.precision):
        with FlopCounterMode(display=False) as counter:
            convolution(volume)
        conv_flops = counter.get_total_flops()
        conv_seconds = best_seconds(lambda: convolution(volume), device)
    peak = conv_flops / conv_seconds / 1e12

    torch.manual_seed(0)
    network = WSICLNet(RELEASED).eval().to(device).to(memory_format=layout)
    size, count = args.size, args.context
    target = torch.rand(1, 1, size, size, size, device=device)
    images = torch.rand(1, count, 1, size, size, size, device=device)
    prompts = (torch.rand(1, count, 1, size, size, size, device=device) > 0.9).float()
    with torch.inference_mode(), autocast(device, args.precision):
        with FlopCounterMode(display=False) as counter:
            network(target, images, prompts, 1)
        network_flops = counter.get_total_flops()
        network_seconds = best_seconds(lambda: network(target, images, prompts, 1), device,
                                       args.runs)
    achieved = network_flops / network_seconds / 1e12
    print(f"device {device}, {args.precision}, {args.threads} thread(s)")
    print(f"large convolution: {conv_flops / 1e9:.1f} GFLOP in {conv_seconds:.3f} s = "
          f"{peak:.3f} TFLOP/s")
    print(f"released-size network, {size}^3, L = {count}: {network_flops / 1e12:.2f} TFLOP in "
          f"{network_seconds:.2f} s = {achieved:.3f} TFLOP/s ({100 * achieved / peak:.0f} % "
          "of the large convolution)")


if __name__ == "__main__":
    main()
