"""Inference time and peak memory per target.

Usage: ``python benchmarks/inference.py [--quick] [--skip-released] [--repeats N]
[--precisions fp32,bf16] [--cuda | --cli]``

Each configuration runs in its own process (so peak RSS is its own) and prints one row:

- ``released``: the released-size architecture (channels 32-64-128-256-512, random
  weights) on a 128^3 target with L = 1 and L = 8 context images, mini-context 1, in three
  modes: ``plain`` (fp32, channels-first, glibc's default allocator behaviour: the stock
  way of running the network), ``fp32`` (the predictor's path: channels-last and freed
  memory kept) and ``bf16`` (the opt-in reduced-precision CPU path);
- ``bundled``: the bundled box model through the full predictor (reorientation,
  resampling, prompts, network, mapping back) on the bundled sample MR, with L = 8
  context images (in context) and L = 1 (interactive, the image as its own context),
  with crops (the model's own way: two passes in context) and on whole views.

- ``cli``: a whole ``wsicl segment`` process (Python start, model load, reading and
  resampling the images, the network, writing the mask) with the released-size
  architecture (random weights saved to a temporary file) on the sample MR as target and
  as each of L = 1 or 8 context images; wall time of one process, peak RSS of the child.

With ``--cuda`` only the released size runs, on the GPU (precision ``auto``: bfloat16
autocast), for L = 1, 8 and 32 (PYTHONPATH=WSICLSegment is enough: no SimpleITK needed).

Wall time is the median over ``--repeats`` runs after one warm-up run (L = 8 rows of the
released size: one run, no warm-up).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RELEASED = [32, 64, 128, 256, 512]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def timed(function, repeats: int) -> float:
    """Median seconds over ``repeats`` runs, after a warm-up run when ``repeats > 1``."""
    if repeats > 1:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_released(mode: str, context_size: int, repeats: int, device_name: str = "cpu"
                 ) -> dict:
    import torch
    from wsicl.device import autocast, keep_freed_memory
    from wsicl.network import WSICLNet
    torch.manual_seed(0)
    device = torch.device(device_name)
    network = WSICLNet(RELEASED).eval().to(device)
    if mode != "plain" and device.type == "cpu":
        keep_freed_memory()
        network = network.to(memory_format=torch.channels_last_3d)
    size = 128
    target = torch.rand(1, 1, size, size, size, device=device)
    images = torch.rand(1, context_size, 1, size, size, size, device=device)
    prompts = (torch.rand(1, context_size, 1, size, size, size, device=device) > 0.9).float()

    def once():
        precision = "auto" if device.type == "cuda" else ("bf16" if mode == "bf16" else "fp32")
        with torch.inference_mode(), autocast(device, precision):
            network(target, images, prompts, 1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = timed(once, repeats)
    if device.type == "cuda":
        mode = f"{mode} cuda (bf16 autocast)"
    return {"model": "released-size", "mode": mode, "L": context_size, "seconds": seconds,
            "peak_rss_gb": peak_rss_gb()}


def run_bundled(kind: str, precision: str, refine: bool, repeats: int) -> dict:
    import SimpleITK as sitk
    import wsicl
    from wsicl.demo import boxes_on_slices, sample, to_boxes
    wsicl.keep_freed_memory()
    predictor = wsicl.Predictor("box", device="cpu", precision=precision, refine=refine)
    image = sitk.ReadImage(str(sample("example_mr_sm.nii.gz")))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz")))) == 5
    boxes = to_boxes(boxes_on_slices(liver, 3))
    if kind == "interactive":
        seconds = timed(lambda: predictor.segment_interactive(image, boxes), repeats)
        context_size = 1
    else:
        context = wsicl.ContextSet(name="liver")
        for _ in range(8):
            context.add(image, boxes)
        seconds = timed(lambda: predictor.segment(image, context), repeats)
        context_size = 8
    view = "crops" if refine else "whole"
    return {"model": f"bundled box ({predictor.size}^3)",
            "mode": f"{kind} {precision} {view}",
            "L": context_size, "seconds": seconds, "peak_rss_gb": peak_rss_gb()}


def run_cli(context_size: int, precision: str) -> dict:
    import tempfile
    import torch
    from wsicl.checkpoints import ModelInfo, build_model, save_model
    from wsicl.demo import boxes_on_slices, sample, to_boxes
    import SimpleITK as sitk
    with tempfile.TemporaryDirectory(prefix="wsicl-bench-") as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        network = build_model(ModelInfo(channels=RELEASED, input_size=128,
                                        prompt_kinds=["box"], source="random released-size"))
        save_model(network, folder / "released.pt", network.metadata)
        image = sample("example_mr_sm.nii.gz")
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz")))) == 5
        boxes = [{"min": list(b.min), "max": list(b.max)}
                 for b in to_boxes(boxes_on_slices(liver, 3))]
        (folder / "context.json").write_text(json.dumps({"context": [
            {"image": str(image), "boxes": boxes}] * context_size}))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wsicl.cli", "segment", str(image),
                        "--context-set", str(folder / "context.json"), "--output-dir",
                        str(folder / "out"), "--model", str(folder / "released.pt"),
                        "--device", "cpu", "--precision", precision, "--quiet"], check=True)
        seconds = time.perf_counter() - started
    return {"model": "released-size (128^3)", "mode": f"whole CLI run {precision}",
            "L": context_size, "seconds": seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6}


def run_one(spec: dict) -> dict:
    if spec["what"] == "cli":
        return run_cli(spec["L"], spec["precision"])
    if spec["what"] == "released":
        return run_released(spec["mode"], spec["L"], spec["repeats"], spec.get("device", "cpu"))
    return run_bundled(spec["kind"], spec["precision"], spec["refine"], spec["repeats"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="L = 1 only for the released size")
    parser.add_argument("--skip-released", action="store_true")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated; bf16 only helps on CPUs with bfloat16 "
                             "instructions")
    parser.add_argument("--cuda", action="store_true",
                        help="time the released-size network on the GPU only (peak RSS is "
                             "then host memory)")
    parser.add_argument("--cli", action="store_true",
                        help="only the whole-CLI rows (L = 1, and 8 unless --quick)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    specs = []
    if args.cli:
        specs = [{"what": "cli", "L": context_size, "precision": precision}
                 for context_size in ([1] if args.quick else [1, 8])
                 for precision in ["auto"] + args.precisions.split(",")]
    elif args.cuda:
        specs = [{"what": "released", "mode": "fp32", "L": context_size, "repeats": 5,
                  "device": "cuda"} for context_size in (1, 8, 32)]
    elif not args.skip_released:
        for context_size in ([1] if args.quick else [1, 8]):
            for mode in ["plain"] + args.precisions.split(","):
                specs.append({"what": "released", "mode": mode, "L": context_size,
                              "repeats": 1 if context_size == 8 else args.repeats})
    for kind in ("in-context", "interactive") if not (args.cuda or args.cli) else ():
        for precision in args.precisions.split(","):
            for refine in (True, False):
                specs.append({"what": "bundled", "kind": kind, "precision": precision,
                              "refine": refine, "repeats": args.repeats})
    print(f"CPU threads: {os.cpu_count()}; python {sys.version.split()[0]}")
    print(f"{'model':<24} {'mode':<26} {'L':>3} {'s/target':>9} {'peak RSS GB':>12}")
    root = Path(__file__).resolve().parent.parent
    for spec in specs:
        completed = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                   capture_output=True, text=True, cwd=root)
        if completed.returncode != 0:
            print(f"{spec}: failed: {completed.stderr.strip().splitlines()[-1]}")
            continue
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"{row['model']:<24} {row['mode']:<26} {row['L']:>3} {row['seconds']:>9.2f} "
              f"{row['peak_rss_gb']:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
