"""A cohort run in one process against the same run spread over ranks by ``torchrun``.

Usage: ``python benchmarks/cohort.py [--copies 16] [--ranks 2] [--device cpu]``

Makes the demo's folder (sample CT and MR, the CT liver context set), copies the sample MR
``--copies`` times as the cohort, then times two whole commands (wall clock, each its own
process tree): ``wsicl segment`` in one process, and ``torchrun --standalone
--nproc-per-node RANKS -m wsicl.cli segment`` (torchrun gives each rank one CPU thread).
Prints both times, the mean seconds per target each rank's report records, and whether the
masks are identical.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def seconds_per_target(folder: Path) -> float:
    """Mean seconds per segmented target over the run's shard reports (or its report)."""
    reports = sorted(folder.glob("wsicl-run-*-of-*.json")) or [folder / "wsicl-run.json"]
    seconds = [t["seconds"] for path in reports
               for t in json.loads(path.read_text())["targets"] if t["status"] == "done"]
    return sum(seconds) / len(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=16, help="targets in the cohort")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes")
    parser.add_argument("--device", default="cpu", help="--device of both runs")
    args = parser.parse_args()
    import numpy as np
    import SimpleITK as sitk
    work = Path(tempfile.mkdtemp(prefix="wsicl-cohort-"))
    try:
        subprocess.run([sys.executable, "-m", "wsicl.cli", "demo", "--output-dir",
                        str(work / "demo"), "--quiet", "--device", args.device], check=True)
        (work / "scans").mkdir()
        for copy in range(args.copies):
            shutil.copy(work / "demo" / "example_mr_sm.nii.gz",
                        work / "scans" / f"mr{copy:03d}.nii.gz")
        segment = ["-m", "wsicl.cli", "segment", str(work / "scans"), "--context-set",
                   str(work / "demo" / "context_liver.json"), "--device", args.device,
                   "--quiet", "--output-dir"]
        one = timed([sys.executable, *segment, str(work / "one")])
        spread = timed([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", str(args.ranks), *segment, str(work / "spread")])
        same = all(np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(work / run / p.name)))
                                    for run in ("one", "spread")))
                   for p in (work / "one").glob("*.nii.gz"))
        print(f"{args.copies} targets, device {args.device}")
        print(f"one process:  {one:6.1f} s, {seconds_per_target(work / 'one'):.2f} s per target")
        print(f"{args.ranks} ranks:      {spread:6.1f} s, "
              f"{seconds_per_target(work / 'spread'):.2f} s per target in each rank")
        print(f"masks identical: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
