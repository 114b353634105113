"""What the server adds: interactive updates over loopback against in-process, and in-context
throughput with 1 and 4 clients.

Usage: ``PYTHONPATH=WSICLSegment python benchmarks/server_latency.py [--model box]
[--device cpu] [--updates 5]``

A `wsicl serve` process on a free loopback port serves ``--model``; the same model runs
in this process for comparison (same device, fp32 on the CPU so both paths do the same
work). Interactive: the demo MR volume, a box moved by one voxel per update (the image is
uploaded once, before timing); medians over ``--updates``. Throughput: each client segments
the demo MR three times with the demo CT as context. Prints seconds and the difference.
"""
import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Tuple

import SimpleITK as sitk

import wsicl
from wsicl.server.client import RemotePredictor

DATA = Path(wsicl.__file__).parent / "data"


def start_server(model: str, device: str) -> Tuple[subprocess.Popen, str]:
    """`wsicl serve` on a free loopback port, and its URL."""
    process = subprocess.Popen([sys.executable, "-m", "wsicl.cli", "serve", "--port", "0",
                                "--model", model, "--device", device, "--precision", "fp32",
                                "--queue", "16"], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"server did not start: {line}")
    return process, line.split()[-1]


def median_seconds(call, boxes) -> float:
    times = []
    for box in boxes:
        started = time.perf_counter()
        call(box)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="box")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()
    mr = sitk.ReadImage(str(DATA / "example_mr_sm.nii.gz"))
    ct = sitk.ReadImage(str(DATA / "example_ct_sm.nii.gz"))
    size = mr.GetSize()
    centre = [n // 2 for n in size]
    boxes = [wsicl.Box((centre[0] - 20 + d, centre[1] - 15, centre[2]),
                       (centre[0] + 20 + d, centre[1] + 15, centre[2]))
             for d in range(args.updates + 1)]
    ct_centre = [n // 2 for n in ct.GetSize()]
    context = wsicl.ContextSet(name="structure").add(
        ct, [wsicl.Box((ct_centre[0] - 20, ct_centre[1] - 15, ct_centre[2]),
                       (ct_centre[0] + 20, ct_centre[1] + 15, ct_centre[2]))])
    local = wsicl.Predictor(args.model, args.device, precision="fp32")
    process, url = start_server(args.model, args.device)
    try:
        remote = RemotePredictor(url, None, args.model)
        for predictor in (local, remote):            # warm-up; uploads the image
            predictor.segment_interactive(mr, [boxes[0]])
        here = median_seconds(lambda b: local.segment_interactive(mr, [b]), boxes[1:])
        overheads = []

        def remote_update(box) -> None:
            started = time.perf_counter()
            remote.segment_interactive(mr, [box])
            overheads.append(time.perf_counter() - started - remote.last_server_seconds)

        there = median_seconds(remote_update, boxes[1:])
        print(f"interactive update ({args.model}, {args.device}, median of {args.updates}): "
              f"in-process {here:.3f} s, over loopback {there:.3f} s; client wall time minus "
              f"the server's compute time: {1000 * statistics.median(overheads):.0f} ms")
        for clients in (1, 4):
            def work() -> None:
                client = RemotePredictor(url, None, args.model)
                for _ in range(3):
                    client.segment(mr, context)
            threads = [threading.Thread(target=work) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            print(f"in context, {clients} client(s) x 3 targets: {seconds:.1f} s, "
                  f"{3 * clients / seconds * 60:.1f} targets/min")
    finally:
        process.terminate()
        process.wait(20)


if __name__ == "__main__":
    main()
