"""Peak memory of one server job per target voxel: the figure `wsicl serve` admits jobs by.

Usage: ``PYTHONPATH=WSICLSegment python benchmarks/server_memory.py [--size 500,500,120]
[--model box] [--mode interactive|context]``

A `wsicl serve` process (fp32 on the CPU, a cache large enough for the volume) receives a
uint8 volume of ``--size`` voxels (a ball in noise, gzip NRRD) and runs one job on it: an
interactive box on the ball, or in context with the same image and box as context. The
growth of the server's peak resident memory (VmHWM) from after the upload to after the job,
divided by the target's voxels, is printed with the job's seconds.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from wsicl import Box, ContextSet
from wsicl.server.client import RemotePredictor
from wsicl.server.service import JOB_BYTES_PER_VOXEL


def peak_bytes(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines()
                    if line.startswith("VmHWM:")).split()[1]) * 1024


def volume(size) -> sitk.Image:
    """A uint8 volume of ``size`` (i, j, k) voxels of 1 mm: a ball of radius a quarter of
    the smallest side in noise."""
    k, j, i = np.ogrid[:size[2], :size[1], :size[0]]
    radius = min(size) / 4
    ball = ((i - size[0] / 2) ** 2 + (j - size[1] / 2) ** 2 + (k - size[2] / 2) ** 2) < radius ** 2
    rng = np.random.default_rng(0)
    array = (ball * 120 + rng.integers(0, 40, ball.shape)).astype(np.uint8)
    return sitk.GetImageFromArray(array)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="500,500,120")
    parser.add_argument("--model", default="box")
    parser.add_argument("--mode", choices=("interactive", "context"), default="interactive")
    args = parser.parse_args()
    size = [int(v) for v in args.size.split(",")]
    image = volume(size)
    voxels = image.GetNumberOfPixels()
    radius = min(size) / 4
    box = Box((size[0] / 2 - radius, size[1] / 2 - radius, size[2] // 2),
              (size[0] / 2 + radius, size[1] / 2 + radius, size[2] // 2))
    # the volume, twice over (upload and cache), and the job's admitted working memory
    cache_mb = max(64, (2 + JOB_BYTES_PER_VOXEL) * voxels // 2 ** 20 + 16)
    server = subprocess.Popen(
        [sys.executable, "-m", "wsicl.cli", "serve", "--port", "0", "--model", args.model,
         "--device", "cpu", "--precision", "fp32", "--cache-mb", str(cache_mb),
         "--max-upload-mb", str(max(64, 2 * voxels // 2 ** 20))],
        stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"server did not start: {line}")
        remote = RemotePredictor(line.split()[-1], None, args.model)
        context = remote.prepare_context(ContextSet(name="ball").add(image, [box]))  # uploads
        before = peak_bytes(server.pid)
        started = time.perf_counter()
        if args.mode == "interactive":
            mask = remote.segment_interactive(image, [box]).mask
        else:
            mask = remote.segment(image, context).mask
        seconds = time.perf_counter() - started
        grown = peak_bytes(server.pid) - before
        print(f"{args.mode} job on {size[0]}x{size[1]}x{size[2]} uint8 ({voxels:,} voxels): "
              f"{seconds:.1f} s, server peak +{grown / 2 ** 20:.0f} MB = "
              f"{grown / voxels:.1f} bytes per target voxel; mask "
              f"{int(sitk.GetArrayViewFromImage(mask).sum()):,} voxels")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
