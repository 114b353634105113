"""Cohorts: ``wsicl segment`` split into shards (``--shard I/N``, or the ranks of a
``torchrun`` launch), resumed after a stop, with its run report; and the ranks' shared
counters. CPU only, fp32 (masks are compared); ``torchrun --standalone`` rendezvous on
loopback; every child process runs under a timeout."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, results
from served import blob, write_served_model
from wsicl.cli import main
from wsicl.imageio import check_complete, list_targets
from wsicl.runs import shard_jobs

CORE_BOX = {"min": [12, 10, 12], "max": [28, 26, 12]}
"""A box around the core of the blob of :func:`served.blob` (voxel index, inclusive)."""


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """A folder with a tiny served model (``m.pt``), the context set ``core.json`` (one
    box on one blob) and eight blobs to segment in ``scans/``."""
    write_served_model(tmp_path / "m.pt")
    sitk.WriteImage(blob(0), str(tmp_path / "context.nii.gz"))
    (tmp_path / "scans").mkdir()
    for seed in range(1, 9):
        sitk.WriteImage(blob(seed), str(tmp_path / "scans" / f"case{seed}.nii.gz"))
    (tmp_path / "core.json").write_text(json.dumps({"name": "core", "context": [
        {"image": "context.nii.gz", "boxes": [CORE_BOX]}]}), encoding="utf-8")
    return tmp_path


def segment_arguments(folder: Path, output: Path, *extra: str) -> list:
    """``wsicl segment`` of the cohort's scans into ``output``, on the CPU in fp32."""
    return ["segment", str(folder / "scans"), "--context-set", str(folder / "core.json"),
            "--output-dir", str(output), "--model", str(folder / "m.pt"), *CPU_FP32, *extra]


def torchrun(folder: Path, output: Path, *extra: str) -> list:
    """The command line of the same run as two CPU ranks under ``torchrun``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "wsicl.cli", *segment_arguments(folder, output, *extra)]


def masks(folder: Path) -> dict:
    """Every result image in ``folder`` by file name, as arrays."""
    return {name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
            for name in results(folder) if name.endswith(".nii.gz")}


def assert_same_masks(first: Path, second: Path) -> None:
    one, two = masks(first), masks(second)
    assert sorted(one) == sorted(two) and one
    for name in one:
        assert np.array_equal(one[name], two[name]), name


def test_shards_take_every_target_once_and_a_rerun_finishes_what_was_left(cohort,
                                                                         monkeypatch):
    """Three shards (--shard, or RANK / WORLD_SIZE without a torchrun store) split the
    targets, each exactly once, and write their own reports; a rerun skips what is done,
    redoes a missing output, and the report gives each structure's voxels and mL."""
    out = cohort / "out"
    assert main(segment_arguments(cohort, out, "--quiet", "--shard", "1/3")) == 0
    assert main(segment_arguments(cohort, out, "--quiet", "--shard", "2/3")) == 0
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(segment_arguments(cohort, out, "--quiet")) == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    shards = [json.loads((out / f"wsicl-run-{i}-of-3.json").read_text()) for i in (1, 2, 3)]
    done = [t["target"] for shard in shards for t in shard["targets"]]
    assert sorted(done) == [f"case{i}" for i in range(1, 9)]          # each exactly once
    assert all(2 <= len(shard["targets"]) <= 3 for shard in shards)   # balanced
    assert results(out) == [f"case{i}_core.nii.gz" for i in range(1, 9)]
    (out / "case4_core.nii.gz").unlink()                    # lost since
    assert main(segment_arguments(cohort, out, "--quiet")) == 0
    report = json.loads((out / "wsicl-run.json").read_text())
    status = {t["target"]: t["status"] for t in report["targets"]}
    assert status.pop("case4") == "done" and set(status.values()) == {"skipped"}
    case4 = next(t for t in report["targets"] if t["target"] == "case4")
    mask = sitk.ReadImage(str(out / "case4_core.nii.gz"))
    voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    assert case4["structures"]["core"]["voxels"] == voxels > 0
    assert case4["structures"]["core"]["ml"] == pytest.approx(
        voxels * np.prod(mask.GetSpacing()) / 1000, abs=1e-3)
    assert report["counts"] == {"done": 1, "skipped": 7, "failed": 0, "not started": 0,
                                "interrupted": 0}
    skipped = next(t for t in report["targets"] if t["target"] == "case5")
    assert skipped["structures"]["core"]["voxels"] > 0      # kept from the target's record
    assert report["model_sha256"] and list(report["context_sets"].values())[0]
    rows = (out / "wsicl-run.csv").read_text().splitlines()
    assert rows[0].startswith("target,input,status") and len(rows) == 9


def test_torchrun_splits_a_cohort_and_rank_0_reports_the_whole_run(cohort, capsys):
    """`torchrun --standalone --nproc-per-node 2 -m wsicl.cli segment ...`: every target
    segmented once, masks equal to a one-process run; a corrupt target is a failed row
    with its message while the others finish; rank 0 alone prints, and writes the merged
    report; --report-only gives the same summary again."""
    good = (cohort / "scans" / "case1.nii.gz").read_bytes()
    (cohort / "scans" / "case9.nii.gz").write_bytes(good[:len(good) // 2])   # truncated
    (cohort / "scans" / "case1_label.nii.gz").write_bytes(good)       # not a target
    assert main(segment_arguments(cohort, cohort / "one", "--quiet")) == 1
    finished = subprocess.run(torchrun(cohort, cohort / "two"), capture_output=True,
                              text=True, timeout=240)
    assert finished.returncode != 0                     # rank 0 says a target failed
    assert_same_masks(cohort / "one", cohort / "two")
    lines = finished.stdout.splitlines()
    assert lines.count("9 targets on 2 ranks") == 1, finished.stdout
    assert sum("skipping" in line and "case1_label" in line for line in lines) == 1
    closing = [line for line in lines if line.startswith("done: ")]
    assert closing == [f"done: 8 segmented now, 0 done before, 1 failed of 9; report "
                       f"{cohort / 'two' / 'wsicl-run.json'}"], finished.stdout
    assert not any(line.startswith("[") for line in lines)         # no per-target lines
    assert finished.stderr.count("case9.nii.gz:") == 1
    merged = json.loads((cohort / "two" / "wsicl-run.json").read_text())
    assert [t["target"] for t in merged["targets"]] == [f"case{i}" for i in range(1, 10)]
    assert merged["merged_from"] == ["wsicl-run-1-of-2.json", "wsicl-run-2-of-2.json"]
    failed = [t for t in merged["targets"] if t["status"] == "failed"]
    assert [t["target"] for t in failed] == ["case9"] and "case9.nii.gz" in failed[0]["error"]
    capsys.readouterr()
    assert main(["segment", "--report-only", str(cohort / "two")]) == 1
    assert capsys.readouterr().out.startswith(
        "8 segmented now, 0 done before, 1 failed of 9; wrote ")


def rank_process(rank: int, output: Path, timeout_s: float = 60.0) -> int:
    """The process id of rank ``rank`` of the torchrun launch writing into ``output`` (found
    by its environment and command line in /proc)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
                environment = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if str(output).encode() in command and f"RANK={rank}".encode() in environment:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} of the launch did not start")


def rank_report_finished(output: Path, rank: int) -> bool:
    """Whether rank ``rank`` of a two-rank launch into ``output`` has written its final
    report (no target of its share left ``not started``)."""
    try:
        report = json.loads((output / f"wsicl-run-{rank + 1}-of-2.json").read_text())
    except (OSError, ValueError):
        return False
    return all(target["status"] != "not started" for target in report["targets"])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks in /proc")
@pytest.mark.parametrize("rank_0", ["segmenting", "waiting for rank 1"])
def test_a_rank_killed_midway_loses_only_its_current_target(cohort, rank_0):
    """SIGKILL of one rank after its first result, while rank 0 still segments or already
    waits for it: torchrun stops the launch and rank 0 merges the run's report; running
    the same command again skips every finished target, does the rest, and the run's
    report lists every target once."""
    out = cohort / "out"
    targets = list_targets([cohort / "scans"], [], None)
    share = [name for name, _ in shard_jobs(targets, 1, 2)]
    assert len(share) >= 3
    launch = subprocess.Popen(torchrun(cohort, out, "--quiet"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        victim = rank_process(1, out)
        deadline = time.monotonic() + 120
        while not any((out / f"{name}_core.nii.gz").exists() for name in share):
            assert time.monotonic() < deadline and launch.poll() is None
            time.sleep(0.005)
        os.kill(victim, signal.SIGSTOP)                 # frozen after its first result
        finished_before = [name for name in share if (out / f"{name}_core.nii.gz").exists()]
        while rank_0 != "segmenting" and not rank_report_finished(out, 0):
            assert time.monotonic() < deadline and launch.poll() is None
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        launch.wait(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode != 0
    assert 1 <= len(finished_before) < len(share)       # killed midway through its share
    stopped = json.loads((out / "wsicl-run.json").read_text())   # merged by the stopped rank
    stopped_status = {t["target"]: t["status"] for t in stopped["targets"]}
    assert sorted(stopped_status) == [f"case{i}" for i in range(1, 9)]   # the killed rank's
    assert all(stopped_status[name] in ("done", "interrupted") for name in finished_before)
    assert all((out / f"{name}_core.nii.gz").exists() for name in stopped_status
               if stopped_status[name] == "done")
    assert "not started" in stopped_status.values()
    again = subprocess.run(torchrun(cohort, out, "--quiet"), capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((out / "wsicl-run.json").read_text())
    status = {t["target"]: t["status"] for t in report["targets"]}
    assert sorted(status) == [f"case{i}" for i in range(1, 9)]
    assert all(status[name] in ("done", "skipped") for name in status)
    assert all(status[name] == ("skipped" if stopped_status[name] == "done" else "done")
               for name in finished_before)          # an interrupted write is redone
    assert any(status[name] == "done" for name in share)
    for name in status:
        check_complete(out / f"{name}_core.nii.gz")
    assert main(segment_arguments(cohort, cohort / "one", "--quiet")) == 0
    assert_same_masks(cohort / "one", out)


def test_rank_0_prints_the_whole_run_until_every_rank_finished(tmp_path, monkeypatch):
    """Counts in a real store shared by two ranks (threads here): rank 0 says the whole
    run's progress while it waits for rank 1, then returns the merged counts."""
    import torch.distributed as dist
    from wsicl import runs
    from wsicl.launch import Launch
    monkeypatch.setattr(runs, "PROGRESS_EVERY_S", 0.05)
    store = dist.HashStore()
    said: list = []
    first = runs.RunReport(None, "m", [], (0, 2), tmp_path, Launch(store, 0, 2), 3, said.append)
    second = runs.RunReport(None, "m", [], (1, 2), tmp_path, Launch(store, 1, 2), 3, None)
    first.add("a", "a.nii.gz", "done", 1.0)

    def rank_1() -> None:
        time.sleep(0.3)
        second.add("b", "b.nii.gz", "done", 1.0)
        second.add("c", "c.nii.gz", "failed", 0.1, error="broken")
        second.close()

    worker = threading.Thread(target=rank_1)
    worker.start()
    path, counts = first.close()
    worker.join(10)
    assert counts == {"done": 2, "skipped": 0, "failed": 1, "not started": 0,
                      "interrupted": 0} and path.name == "wsicl-run.json"
    assert said and all(line.startswith("run: ") for line in said)
    assert said[0].startswith("run: 1 done, 0 skipped, 0 failed, 2 left of 3; ")


def test_the_progress_line_gives_the_rate_and_the_time_left():
    from wsicl.runs import progress_line
    counts = {"done": 30, "skipped": 10, "failed": 2}
    assert progress_line(counts, 100, 960.0) == (
        "run: 30 done, 10 skipped, 2 failed, 58 left of 100; 2.0 targets/min; about 29 min "
        "left")
    assert progress_line({"done": 0, "skipped": 4, "failed": 0}, 4, 5.0) == (
        "run: 0 done, 4 skipped, 0 failed, 0 left of 4")
    assert progress_line({"done": 1, "skipped": 0, "failed": 0}, 10_000, 60.0).endswith(
        "; 1.0 targets/min; about 166.7 h left")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks in /proc")
def test_ctrl_c_of_a_torchrun_cohort_leaves_a_report_of_every_target(cohort):
    """Ctrl-C in the terminal (SIGINT to torchrun and its ranks) after the first result:
    every rank writes its report, and the merged one lists every target of the cohort as
    done, interrupted or not started, done exactly where the outputs are; --report-only
    and a rerun say what this run did and what was done before."""
    out = cohort / "out"
    launch = subprocess.Popen(torchrun(cohort, out, "--quiet"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        rank_process(1, out)
        deadline = time.monotonic() + 120
        while not list(out.glob("case*_core.nii.gz")):
            assert time.monotonic() < deadline and launch.poll() is None
            time.sleep(0.005)
        os.killpg(launch.pid, signal.SIGINT)
        launch.wait(timeout=120)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    assert launch.returncode != 0
    report = json.loads((out / "wsicl-run.json").read_text())
    status = {t["target"]: t["status"] for t in report["targets"]}
    assert sorted(status) == [f"case{i}" for i in range(1, 9)]
    assert set(status.values()) <= {"done", "interrupted", "not started"}
    assert {"interrupted", "not started"} & set(status.values())    # it did not finish
    for name, state in status.items():          # an interrupted one may have its file
        written = (out / f"{name}_core.nii.gz").exists()
        assert written if state == "done" else not written or state == "interrupted", name
    done = sum(state == "done" for state in status.values())
    again = subprocess.run(torchrun(cohort, out), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"done: {8 - done} segmented now, {done} done before, 0 failed of 8" in again.stdout
