"""The fault matrix: every file the command line reads or writes, fed its faults.

Each case arranges one fault in a small workspace (a tiny model, a context image with a box,
a good target) and runs ``wsicl segment`` in-process. Every case must end with a non-zero
exit status and exactly one line on stderr (captured at the file-descriptor level, so
messages printed by ITK or PyTorch count too) that names the faulty file, no traceback,
nothing partial in the output folder, and, when the fault is in one of several targets,
the other targets segmented. The cases are listed in ``Testing/README.md``.
"""
import dataclasses
import gzip
import json
import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CPU_FP32, make_image, results, sphere_volume
from wsicl import save_model
from wsicl.cli import main

BOX = {"min": [10, 12, 8], "max": [26, 28, 8]}


@dataclasses.dataclass
class Arranged:
    """What a case changed: the file the message must name, and the command line."""

    culprit: str
    targets: List[str] = dataclasses.field(default_factory=lambda: ["good.nrrd"])
    context: str = "ctx.json"
    model: str = "tiny.pt"
    good_kept: bool = False            # a faulty target beside a good one


@dataclasses.dataclass
class Fault:
    name: str
    arrange: Callable[[Path], Arranged]
    output: Optional[Callable[[Path], Path]] = None    # the output folder, if not ws/out


def ball_image(seed: int = 0) -> sitk.Image:
    ball = sphere_volume((16, 40, 36), (8, 20, 18), 10.0, (0.9, 0.8, 2.5))
    noise = np.random.default_rng(seed).normal(0, 4, ball.shape)
    return make_image((ball * 80 + noise).astype(np.float32), (0.9, 0.8, 2.5))


@pytest.fixture
def ws(tmp_path, tiny_network):
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    sitk.WriteImage(ball_image(0), str(tmp_path / "context.nii.gz"))
    sitk.WriteImage(ball_image(1), str(tmp_path / "good.nrrd"))
    context_file(tmp_path, [{"image": "context.nii.gz", "boxes": [BOX]}])
    return tmp_path


def context_file(ws: Path, entries, name: str = "ctx.json", **top) -> str:
    (ws / name).write_text(json.dumps({"name": "ball", "context": entries, **top}),
                           encoding="utf-8")
    return name


# Images ------------------------------------------------------------------------------------

FORMATS = {"nii.gz": (".nii.gz", True), "nii": (".nii", False), "nrrd": (".nrrd", False),
           "gzip nrrd": (".nrrd", True), "mha": (".mha", False),
           "compressed mha": (".mha", True)}


def image_file(ws: Path, fmt: str, name: str = "bad") -> Path:
    suffix, compress = FORMATS[fmt]
    path = ws / f"{name}{suffix}"
    sitk.WriteImage(ball_image(2), str(path), compress)
    return path


def emptied(ws, fmt):
    path = image_file(ws, fmt)
    path.write_bytes(b"")
    return path


def truncated(ws, fmt):
    path = image_file(ws, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def garbage(ws, fmt):
    path = image_file(ws, fmt)
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return path


def hostile(ws, fmt):
    """A header claiming 32767^3 voxels (about 140 TB as float32)."""
    path = image_file(ws, fmt)
    data = path.read_bytes()
    if fmt in ("nii", "nii.gz"):
        raw = bytearray(gzip.decompress(data) if fmt == "nii.gz" else data)
        raw[42:48] = struct.pack("<3h", 32767, 32767, 32767)       # dim[1..3]
        data = gzip.compress(bytes(raw)) if fmt == "nii.gz" else bytes(raw)
    elif "nrrd" in fmt:
        data = data.replace(b"sizes: 36 40 16", b"sizes: 32767 32767 32767")
    else:
        data = data.replace(b"DimSize = 36 40 16", b"DimSize = 32767 32767 32767")
    path.write_bytes(data)
    return path


def as_target(make):
    def arrange(ws):
        path = make(ws)
        return Arranged(path.name, targets=[path.name, "good.nrrd"], good_kept=True)
    return arrange


def as_context(make):
    def arrange(ws):
        path = make(ws)
        context_file(ws, [{"image": path.name, "boxes": [BOX]}])
        return Arranged(path.name)
    return arrange


def written(image_or_array, name: str):
    def make(ws):
        path = ws / name
        image = image_or_array if isinstance(image_or_array, sitk.Image) else \
            sitk.GetImageFromArray(image_or_array, isVector=False)
        sitk.WriteImage(image, str(path))
        return path
    return make


def rgb_image() -> sitk.Image:
    return sitk.Compose(*[sitk.GetImageFromArray(np.full((6, 20, 20), v, np.uint8))
                          for v in (10, 20, 30)])


def dicom_folder_without_series(ws):
    folder = ws / "dicom"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"not a DICOM file" * 10)
    return folder


IMAGE_FAULTS = [Fault(f"target {fmt} {how.__name__}", as_target(
    lambda ws, fmt=fmt, how=how: how(ws, fmt))) for fmt in FORMATS
    for how in (emptied, truncated, garbage, hostile)]
IMAGE_FAULTS += [
    Fault("context nii.gz truncated", as_context(lambda ws: truncated(ws, "nii.gz"))),
    Fault("context nrrd garbage", as_context(lambda ws: garbage(ws, "nrrd"))),
    Fault("context mha hostile", as_context(lambda ws: hostile(ws, "mha"))),
    Fault("context image missing", lambda ws: Arranged(context_file(ws, [
        {"image": "absent.nii.gz", "boxes": [BOX]}]) and "absent.nii.gz")),
    Fault("target missing", lambda ws: Arranged("absent.nrrd", targets=["absent.nrrd",
                                                                        "good.nrrd"])),
    Fault("target 2D image", as_target(written(np.ones((30, 30), np.float32), "flat.nrrd"))),
    Fault("target 4D image", as_target(written(np.ones((2, 4, 8, 8), np.float32),
                                               "series.nii.gz"))),
    Fault("target RGB image", as_target(lambda ws: written(rgb_image(), "photo.nrrd")(ws))),
    Fault("target constant image", as_target(written(np.full((8, 8, 8), 7, np.float32),
                                                     "constant.nrrd"))),
    Fault("target all NaN", as_target(written(np.full((8, 8, 8), np.nan, np.float32),
                                              "nan.nrrd"))),
    Fault("target DICOM folder without a series", lambda ws: Arranged(
        dicom_folder_without_series(ws).name, targets=["dicom", "good.nrrd"])),
]


# Context-set and markups files -------------------------------------------------------------

def context_text(text: bytes, name: str = "ctx.json"):
    def arrange(ws):
        (ws / name).write_bytes(text)
        return Arranged(name, context=name)
    return arrange


def context_entries(entries, culprit: str, **top):
    def arrange(ws):
        context_file(ws, entries, **top)
        return Arranged(culprit)
    return arrange


def huge_context(ws):
    with open(ws / "huge.json", "wb") as stream:
        stream.truncate(17 * 1024 * 1024)
    return Arranged("huge.json", context="huge.json")


def with_mask(array: np.ndarray, culprit_text: str, label=None, **geometry):
    def arrange(ws):
        sitk.WriteImage(make_image(array, **geometry), str(ws / "seg.nii.gz"))
        entry = {"image": "context.nii.gz", "mask": "seg.nii.gz"}
        if label is not None:
            entry["label"] = label
        context_file(ws, [entry])
        return Arranged(culprit_text)
    return arrange


def markups(document_bytes: bytes):
    def arrange(ws):
        (ws / "case.mrk.json").write_bytes(document_bytes)
        context_file(ws, [{"image": "context.nii.gz", "markups": "case.mrk.json"}])
        return Arranged("case.mrk.json")
    return arrange


BALL = sphere_volume((16, 40, 36), (8, 20, 18), 10.0, (0.9, 0.8, 2.5)).astype(np.uint8)
SPACING = {"spacing": (0.9, 0.8, 2.5)}
CONTEXT_FAULTS = [
    Fault("context file missing", lambda ws: Arranged("absent.json", context="absent.json")),
    Fault("context file is a folder", lambda ws: (ws / "sets").mkdir() or Arranged(
        "sets", context="sets")),
    Fault("context file empty", context_text(b"")),
    Fault("context file not JSON", context_text(b"{'context': nope")),
    Fault("context file a JSON list", context_text(b"[1, 2, 3]")),
    Fault("context file binary garbage", context_text(bytes(range(256)) * 4)),
    Fault("context file too large", huge_context),
    Fault("context file unknown key", context_entries([{"image": "context.nii.gz",
                                                        "boxes": [BOX], "colour": 1}], "colour")),
    Fault("context file boxes as a string", context_entries(
        [{"image": "context.nii.gz", "boxes": "10 12 8 26 28 8"}], "expected a list")),
    Fault("context file box outside the image", context_entries(
        [{"image": "context.nii.gz", "boxes": [{"min": [200, 200, 1], "max": [220, 220, 1]}]}],
        "outside")),
    Fault("context file is an image", lambda ws: Arranged("a gzip file", context=str(
        ws / "context.nii.gz"))),
    Fault("context file NaN coordinate", context_text(
        b'{"context": [{"image": "context.nii.gz", "boxes": [{"min": [NaN, 1, 1], '
        b'"max": [5, 5, 1]}]}]}')),
    Fault("context file entry without prompts", context_entries(
        [{"image": "context.nii.gz"}], "no prompts")),
    Fault("context file empty list", context_entries([], "non-empty")),
    Fault("context file unknown coordinates", context_entries(
        [{"image": "context.nii.gz", "boxes": [BOX]}], "IJK", coordinates="IJK")),
    Fault("mask file missing", context_entries(
        [{"image": "context.nii.gz", "mask": "absent_seg.nii.gz"}], "absent_seg.nii.gz")),
    Fault("mask empty", with_mask(np.zeros_like(BALL), "no non-zero voxel", **SPACING)),
    Fault("mask label absent", with_mask(BALL * 2, "no voxel with label 5", label=5,
                                         **SPACING)),
    Fault("mask of probabilities", with_mask(BALL * np.float32(0.6), "non-integer",
                                             **SPACING)),
    Fault("mask on another extent", with_mask(BALL, "another physical extent",
                                              spacing=(0.9, 0.8, 2.5),
                                              origin=(50.0, 0.0, 0.0))),
    Fault("mask with boxes", context_entries(
        [{"image": "context.nii.gz", "mask": "x.nii.gz", "boxes": [BOX]}], "not both")),
    Fault("markups missing", context_entries(
        [{"image": "context.nii.gz", "markups": "absent.mrk.json"}], "absent.mrk.json")),
    Fault("markups not JSON", markups(b"<xml/>")),
    Fault("markups a JSON list", markups(b"[]")),
    Fault("markups list is an object", markups(b'{"markups": {"type": "ROI"}}')),
    Fault("markups coordinate system", markups(json.dumps({"markups": [
        {"type": "Fiducial", "coordinateSystem": "IJK",
         "controlPoints": [{"position": [1, 2, 3]}]}]}).encode())),
]


# Weights ------------------------------------------------------------------------------------

class Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def weights(make, name: str = "bad.pt"):
    def arrange(ws):
        path = ws / name
        make(path, ws)
        return Arranged(name, model=name)
    return arrange


def truncated_weights(path, ws):
    path.write_bytes((ws / "tiny.pt").read_bytes()[:3000])


def wrong_architecture(path, ws):
    state = torch.load(str(ws / "tiny.pt"), weights_only=True)
    state["state_dict"] = {k: v for k, v in list(state["state_dict"].items())[:-4]}
    torch.save(state, str(path))


WEIGHT_FAULTS = [
    Fault("weights missing", lambda ws: Arranged("absent.pt", model="absent.pt")),
    Fault("weights empty", weights(lambda path, ws: path.write_bytes(b""))),
    Fault("weights a folder", weights(lambda path, ws: path.mkdir())),
    Fault("weights garbage", weights(lambda path, ws: path.write_bytes(os.urandom(5000)))),
    Fault("weights a saved link", weights(lambda path, ws: path.write_text(
        "https://example.org/releases/box.pt\n"))),
    Fault("weights a JSON file", weights(lambda path, ws: path.write_text('{"model": "box"}'))),
    Fault("weights truncated", weights(truncated_weights)),
    Fault("weights run code", weights(lambda path, ws: path.write_bytes(pickle.dumps(Shell())))),
    Fault("weights wrong architecture", weights(wrong_architecture)),
    Fault("weights a plain list", weights(lambda path, ws: torch.save([1, 2], str(path)))),
]


# Writers ------------------------------------------------------------------------------------

def a_file(name: str):
    def arrange(ws):
        (ws / name).write_text("not a folder", encoding="utf-8")
        return Arranged(name)
    return arrange


WRITER_FAULTS = [
    Fault("output folder is a file", a_file("out"), output=lambda ws: ws / "out"),
    Fault("output folder on a read-only file system", lambda ws: Arranged("/proc/wsicl"),
          output=lambda ws: Path("/proc/wsicl")),
    Fault("output under a file", a_file("file"), output=lambda ws: ws / "file" / "out"),
]

ALL = IMAGE_FAULTS + CONTEXT_FAULTS + WEIGHT_FAULTS + WRITER_FAULTS


def segment(ws: Path, arranged: Arranged, output: Path) -> int:
    return main(["segment", *[str(ws / t) for t in arranged.targets], "--context-set",
                 str(ws / arranged.context), "--output-dir", str(output), "--model",
                 str(ws / arranged.model), *CPU_FP32, "--quiet"])


def check(capfd, status: int, culprit: str, output: Path, good_kept: bool) -> None:
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status != 0
    assert len(lines) == 1, err
    assert culprit in lines[0] and "Traceback" not in err, err
    assert not out.strip() or good_kept, out
    leftovers = results(output) if output.is_dir() else []
    assert leftovers == (["good_ball.nii.gz"] if good_kept else []), leftovers


@pytest.mark.parametrize("fault", ALL, ids=[f.name for f in ALL])
def test_fault(ws, capfd, fault):
    arranged = fault.arrange(ws)
    output = fault.output(ws) if fault.output else ws / "out"
    capfd.readouterr()
    check(capfd, segment(ws, arranged, output), arranged.culprit, output, arranged.good_kept)


@pytest.mark.parametrize("how", ["disk full", "reads back different"])
def test_a_failed_write_leaves_nothing_and_keeps_the_other_targets(ws, capfd, monkeypatch,
                                                                   how):
    shutil.copy(ws / "good.nrrd", ws / "second.nrrd")
    real_write = sitk.WriteImage
    calls = []

    def failing(image, path, *args):
        calls.append(path)
        if len(calls) == 1:                       # the first target's result
            if how == "disk full":
                Path(path).write_bytes(b"\x1f\x8b partial")
                raise RuntimeError("ITK ERROR: No space left on device")
            image = sitk.Image(image) + 1           # a silently different file
        real_write(image, path, *args)

    monkeypatch.setattr(sitk, "WriteImage", failing)
    arranged = Arranged("good_ball.nii.gz", targets=["good.nrrd", "second.nrrd"])
    capfd.readouterr()
    status = segment(ws, arranged, ws / "out")
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1 and len(lines) == 1 and "good_ball.nii.gz" in lines[0], err
    assert results(ws / "out") == ["second_ball.nii.gz"]


def test_the_matrix_is_listed_in_the_testing_readme():
    table = (Path(__file__).parent / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in ALL if f"| {f.name} |" not in table]
    assert not missing, missing


class HalfPicture:
    """A figure whose PNG is cut short, as on a full disk."""

    def savefig(self, path, dpi, format):
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_json_and_picture_writers_leave_nothing_on_a_full_disk(tmp_path, monkeypatch):
    from wsicl.files import WriteError, write_png, write_text
    with pytest.raises(WriteError, match="overview.png: the picture was cut short"):
        write_png(HalfPicture(), tmp_path / "overview.png", dpi=100)

    def full_disk(self, text, encoding=None):
        with open(self, "w", encoding=encoding) as stream:
            stream.write(text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(WriteError, match="ctx.json: could not be written \\(No space left"):
        write_text(tmp_path / "ctx.json", json.dumps({"context": [1, 2, 3]}))
    assert list(tmp_path.iterdir()) == []
