"""Reruns into one folder: a target is skipped only when a record of the same work made
its outputs (model, context set content, every option that changes a voxel, the target
itself, the outputs' own bytes); anything else is refused without --overwrite, and with it
the folder ends up as a fresh run of the last command would leave it. CPU, fp32 unless an
option under test says otherwise; masks are compared exactly (the same process and
threads compute them)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, results
from served import blob, write_served_model
from wsicl.cli import main

CORE = {"min": [12, 10, 12], "max": [28, 26, 12]}
RIM = {"min": [6, 6, 12], "max": [34, 30, 12]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two tiny models (``m.pt``, ``other.pt``: different weights), two context images, the
    context sets ``liver.json`` and ``liver2.json`` (both named ``liver``, different boxes)
    and two targets in ``scans/``."""
    write_served_model(tmp_path / "m.pt")
    import torch
    from wsicl import load_model, save_model
    other = load_model(tmp_path / "m.pt")
    with torch.no_grad():
        other.target_decoder.output_block.block[1].bias += 0.3
    save_model(other, tmp_path / "other.pt", other.metadata)
    for seed in (0, 5):
        sitk.WriteImage(blob(seed), str(tmp_path / f"context{seed}.nii.gz"))
    (tmp_path / "scans").mkdir()
    for seed in (1, 2):
        sitk.WriteImage(blob(seed), str(tmp_path / "scans" / f"case{seed}.nii.gz"))
    for name, box in (("liver", CORE), ("liver2", RIM)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": "liver", "context": [
            {"image": f"context{seed}.nii.gz", "boxes": [box]} for seed in (0, 5)]}))
    return tmp_path


def segment(folder: Path, output: str, *extra: str, context: str = "liver.json",
            precision: str = "fp32") -> int:
    return main(["segment", str(folder / "scans"), "--context-set", str(folder / context),
                 "--output-dir", str(folder / output), "--model", str(folder / "m.pt"),
                 "--device", "cpu", "--precision", precision, "--quiet", *extra])


def files(folder: Path) -> dict:
    """Every result file's bytes, by name."""
    return {name: (folder / name).read_bytes() for name in results(folder)}


def masks(folder: Path) -> dict:
    return {name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
            for name in results(folder) if name.endswith((".nii.gz", ".nrrd"))}


def assert_same_masks(first: Path, second: Path) -> None:
    one, two = masks(first), masks(second)
    assert sorted(one) == sorted(two) and one
    for name in one:
        assert np.array_equal(one[name], two[name]), name


def statuses(output: Path) -> dict:
    report = json.loads((output / "wsicl-run.json").read_text())
    return {row["target"]: row["status"] for row in report["targets"]}


VARIANTS = [   # (what the record names, the changed command's options)
    ("context set", {"context": "liver2.json"}),
    ("model", {"extra": ("--model", "{folder}/other.pt")}),
    ("refine", {"extra": ("--refine",)}),
    ("precision", {"precision": "bf16"}),
    ("mini-context", {"extra": ("--mini-context", "2")}),
    ("prompt kinds", {"extra": ("--context-kind", "box,mask")}),
]


@pytest.mark.parametrize("part, change", VARIANTS, ids=[part for part, _ in VARIANTS])
def test_a_rerun_with_other_work_never_keeps_the_old_result(folder, capsys, part, change):
    """The first run's outputs are refused as this run's (one sentence naming what differs,
    nothing changed), and --overwrite leaves exactly what a fresh run of the new command
    leaves; the same command again then skips every target."""
    extra = tuple(a.format(folder=folder) for a in change.get("extra", ()))
    changed = dict(context=change.get("context", "liver.json"),
                   precision=change.get("precision", "fp32"))
    assert segment(folder, "out") == 0
    before = files(folder / "out")
    capsys.readouterr()
    assert segment(folder, "out", *extra, **changed) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"made with another {part}" in error[0], error
    assert "--overwrite" in error[0] and "(so do 1 more output(s) there)" in error[0]
    assert files(folder / "out") == before
    assert segment(folder, "fresh", *extra, **changed) == 0
    assert segment(folder, "out", *extra, "--overwrite", **changed) == 0
    assert_same_masks(folder / "out", folder / "fresh")
    assert set(statuses(folder / "out").values()) == {"done"}
    assert segment(folder, "out", *extra, **changed) == 0
    assert set(statuses(folder / "out").values()) == {"skipped"}
    assert_same_masks(folder / "out", folder / "fresh")


def test_the_same_work_is_skipped_and_keeps_its_figures(folder, capsys):
    assert segment(folder, "out") == 0
    first = json.loads((folder / "out" / "wsicl-run.json").read_text())
    before = files(folder / "out")
    assert main(["segment", str(folder / "scans"), "--context-set", str(folder / "liver.json"),
                 "--output-dir", str(folder / "out"), "--model", str(folder / "m.pt"),
                 *CPU_FP32]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before with the same model, context and options, "
                         "skipped") == 2
    assert "done: 0 segmented now, 2 done before, 0 failed of 2" in printed
    again = json.loads((folder / "out" / "wsicl-run.json").read_text())
    assert [row["structures"] for row in again["targets"]] == \
        [row["structures"] for row in first["targets"]]
    assert files(folder / "out") == before


def test_a_changed_target_an_edited_output_and_an_unrecorded_file_are_not_kept(folder,
                                                                            capsys):
    assert segment(folder, "out") == 0
    target = folder / "scans" / "case1.nii.gz"
    original = target.read_bytes()
    sitk.WriteImage(blob(7), str(target))                # the same name, another scan
    capsys.readouterr()
    assert segment(folder, "out") == 1
    assert "made from another version of the target" in capsys.readouterr().err
    target.write_bytes(original)
    output = folder / "out" / "case2_liver.nii.gz"
    edited = sitk.ReadImage(str(output))
    edited[0, 0, 0] = 1 - edited[0, 0, 0]                 # a person corrected a voxel
    sitk.WriteImage(edited, str(output))
    assert segment(folder, "out") == 1
    assert "changed after the run that made it" in capsys.readouterr().err
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(output)))[0, 0, 0] == \
        sitk.GetArrayFromImage(edited)[0, 0, 0]          # the correction is kept
    shutil.rmtree(folder / "out" / ".wsicl-records")      # as an older version left it
    assert segment(folder, "out") == 1
    assert "no record says which run made it" in capsys.readouterr().err


def test_outputs_of_an_interrupted_target_are_redone_without_overwrite(folder, monkeypatch):
    """Stopped between a target's outputs and its complete record (the pending record
    says the outputs are this work's): the rerun redoes that target only."""
    from wsicl import resume
    assert segment(folder, "out", "--output-type", "per-structure") == 0
    record = resume.record_path(folder / "out", "case2_liver.nii.gz")
    pending = json.loads(record.read_text())
    pending["outputs"] = None
    record.write_text(json.dumps(pending))
    assert segment(folder, "out") == 0
    assert statuses(folder / "out") == {"case1": "skipped", "case2": "done"}


def test_names_always_carry_the_structure_and_two_structures_live_side_by_side(folder):
    """A one-structure run names its files TARGET_STRUCTURE, so a second structure into the
    same folder is written beside the first, never mistaken for it; a run of both then
    keeps both as done before."""
    (folder / "spleen.json").write_text(json.dumps({"context": [
        {"image": "context0.nii.gz", "boxes": [RIM]}]}))       # named by the file's stem
    assert segment(folder, "out") == 0
    assert segment(folder, "out", context="spleen.json") == 0
    assert results(folder / "out") == ["case1_liver.nii.gz", "case1_spleen.nii.gz",
                                       "case2_liver.nii.gz", "case2_spleen.nii.gz"]
    assert set(statuses(folder / "out").values()) == {"done"}   # the spleen was segmented
    assert main(["segment", str(folder / "scans"), "--context-set", str(folder / "liver.json"),
                 "--context-set", str(folder / "spleen.json"), "--output-dir",
                 str(folder / "out"), "--model", str(folder / "m.pt"), *CPU_FP32,
                 "--quiet"]) == 0
    assert set(statuses(folder / "out").values()) == {"skipped"}
    assert segment(folder, "alone", context="spleen.json") == 0
    for case in ("case1", "case2"):
        assert np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(
            folder / output / f"{case}_spleen.nii.gz"))) for output in ("out", "alone")))


def test_a_structure_added_to_a_run_is_segmented_beside_the_ones_kept(folder):
    (folder / "spleen.json").write_text(json.dumps({"context": [
        {"image": "context0.nii.gz", "boxes": [RIM]}]}))
    assert segment(folder, "out") == 0
    liver = files(folder / "out")
    assert main(["segment", str(folder / "scans"), "--context-set", str(folder / "liver.json"),
                 "--context-set", str(folder / "spleen.json"), "--output-dir",
                 str(folder / "out"), "--model", str(folder / "m.pt"), *CPU_FP32,
                 "--quiet"]) == 0
    assert {name: files(folder / "out")[name] for name in liver} == liver
    report = json.loads((folder / "out" / "wsicl-run.json").read_text())
    assert [sorted(row["structures"]) for row in report["targets"]] == [
        ["liver", "spleen"]] * 2 and {row["status"] for row in report["targets"]} == {"done"}



def test_a_redone_target_is_digested_once(folder, monkeypatch):
    """Deciding to redo an interrupted target (its pending record must be of this work and
    this target) and recording its new work both need the target's digest (a SHA-256 of
    every byte, seconds on a large series): it is computed once."""
    from wsicl import resume
    assert segment(folder, "out") == 0
    record = resume.record_path(folder / "out", "case2_liver.nii.gz")
    record.write_text(json.dumps({**json.loads(record.read_text()), "outputs": None}))
    digested = []
    real = resume.input_digest
    monkeypatch.setattr(resume, "input_digest", lambda path: digested.append(path) or real(path))
    assert segment(folder, "out") == 0
    assert statuses(folder / "out") == {"case1": "skipped", "case2": "done"}
    assert sorted(path.name for path in digested) == ["case1.nii.gz", "case2.nii.gz"]
