"""The README's first command: the demo on the bundled model and sample data."""
import json
import re
from pathlib import Path

import SimpleITK as sitk

from conftest import CPU_FP32, cpu_fp32
from wsicl import load_model
from wsicl.cli import main


def test_bundled_box_model_loads():
    network = load_model("box")
    assert network.metadata.prompt_kinds == ["box"]
    assert network.metadata.input_size % network.size_multiple == 0


def test_demo_writes_masks_context_picture_and_dice(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(output), *CPU_FP32]) == 0
    printed = capsys.readouterr().out
    assert "in-context" in printed and "interactive" in printed and "Dice" in printed
    scores = json.loads((output / "dice.json").read_text(encoding="utf-8"))
    assert set(scores) == {"in_context", "interactive"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    # The bundled box model follows the liver from three boxes (v2.1: 0.69, v2 0.63, v1 0.43).
    assert scores["interactive"] > 0.55
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"The demo's liver reaches (\d\.\d+)\s+interactively and (\d\.\d+) in "
                       r"context", readme)
    assert stated, "the README no longer states the demo's figures"
    assert abs(float(stated.group(1)) - scores["interactive"]) <= 0.01     # fp32
    assert abs(float(stated.group(2)) - scores["in_context"]) <= 0.01
    target = sitk.ReadImage(str(output.parent / "demo" / "mr_liver_in_context.nii.gz"))
    assert target.GetSize() == (117, 91, 20)
    written = json.loads((output / "context_liver.json").read_text(encoding="utf-8"))
    assert written["context"][0]["boxes"]
    assert (output / "overview.png").read_bytes()[:4] == b"\x89PNG"


def test_bundled_box_model_follows_the_prompted_structure():
    """Changing the prompted structure changes the answer to that structure (sample MR;
    its organs were seen in training, so this checks use of the prompts, not accuracy)."""
    import numpy as np
    from wsicl.demo import boxes_on_slices, sample, to_boxes
    from wsicl.metrics import dice
    image = sitk.ReadImage(str(sample("example_mr_sm.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz"))))
    organs = {5: "liver", 1: "spleen", 2: "right kidney", 3: "left kidney"}
    predictor = cpu_fp32("box")
    for value, name in organs.items():
        boxes = to_boxes(boxes_on_slices(labels == value, 1))
        mask = sitk.GetArrayFromImage(predictor.segment_interactive(image, boxes=boxes).mask)
        scores = {other: dice(mask, labels == other) for other in organs}
        assert scores[value] > 0.4, (name, scores)
        assert all(scores[value] > score for other, score in scores.items() if other != value)
        assert np.count_nonzero(mask) > 0


def test_bundled_box_model_follows_the_context_structure_across_modalities():
    """In context, boxes on a structure of the sample CT segment that structure in the
    sample MR and not another one: the network uses its context (organs seen in training;
    this checks the use of the context, not accuracy)."""
    from wsicl import ContextSet
    from wsicl.demo import boxes_on_slices, sample, to_boxes
    from wsicl.metrics import dice
    ct = sitk.ReadImage(str(sample("example_ct_sm.nii.gz")))
    ct_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg.nii.gz"))))
    mr = sitk.ReadImage(str(sample("example_mr_sm.nii.gz")))
    mr_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz"))))
    organs = {"liver": 5, "left kidney": 3}        # the same values in both label maps
    predictor = cpu_fp32("box")
    for name, value in organs.items():
        context = ContextSet(name=name).add(ct, to_boxes(boxes_on_slices(ct_labels == value, 5)))
        mask = sitk.GetArrayFromImage(predictor.segment(mr, context).mask)
        scores = {other: dice(mask, mr_labels == other_value)
                  for other, other_value in organs.items()}
        assert scores[name] > 0.3, scores
        assert all(scores[name] > 5 * score for other, score in scores.items() if other != name)


def test_the_demo_folder_is_self_contained_and_never_overwritten_silently(tmp_path, capsys):
    """The demo's context set names the CT copied beside it (not the installed package),
    so it works after the package moves; a second run refuses without --overwrite."""
    import shutil
    output = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(output), *CPU_FP32, "--quiet"]) == 0
    moved = tmp_path / "elsewhere"
    shutil.move(str(output), str(moved))
    assert main(["segment", str(moved / "example_mr_sm.nii.gz"), "--context-set",
                 str(moved / "context_liver.json"), "--output-dir", str(tmp_path / "liver"),
                 *CPU_FP32, "--quiet"]) == 0
    assert (tmp_path / "liver" / "example_mr_sm_liver.nii.gz").is_file()
    before = (moved / "dice.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--output-dir", str(moved), *CPU_FP32, "--quiet"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (moved / "dice.json").stat().st_mtime_ns == before
    assert main(["demo", "--output-dir", str(moved), *CPU_FP32, "--quiet", "--overwrite"]) == 0
