"""Confidence and review flags: the evidence read off a result, the calibration, the run
report's fields, the closing lines, the review sheet and the cycle check. Exact figures
are float32 on the CPU (the evidence is computed in numpy from the output)."""
import json
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, cpu_fp32, make_image, sphere_volume
from wsicl import Box, ContextSet, Point, save_model
from wsicl import confidence as confidence_module
from wsicl.cli import main
from wsicl.confidence import (Calibration, Evidence, box_side_mm, boxes_from_mask, calibration,
                              evidence, prompt_fit)
from wsicl.context import ContextEntry
from wsicl.review import annotate_next, png_bytes, review_lines, to_review


def test_evidence_of_a_crisp_answer_beats_a_hesitant_one():
    ball = sphere_volume((32, 32, 32), (16, 16, 16), 6.0).astype(np.float32)
    crisp = evidence(ball, (1.0, 1.0, 1.0), 12.0)
    hesitant = evidence(0.35 + 0.3 * ball, (1.0, 1.0, 1.0), 12.0)
    assert crisp.sharpness == pytest.approx(1.0) and crisp.inside == pytest.approx(1.0)
    assert hesitant.sharpness == pytest.approx(0.3, abs=1e-5)
    assert crisp.cut == 0.0 and not crisp.empty
    volume = float(ball.sum())                          # 1 mm voxels: mm^3
    assert crisp.size == pytest.approx(np.log(volume ** (1 / 3) / 12.0))
    edge = np.zeros((32, 32, 32), np.float32)
    edge[:4, 10:20, 10:20] = 1                          # runs out of the view's first face
    assert evidence(edge, (1, 1, 1), None).cut == pytest.approx(0.25)
    assert evidence(edge, (1, 1, 1), None).size is None
    empty = evidence(np.zeros((8, 8, 8), np.float32), (1, 1, 1), 5.0)
    assert empty.empty and calibration().confidence(empty) == 0.0


def entry_with(boxes=(), points=()):
    image = make_image(np.zeros((10, 30, 40), np.float32), spacing=(0.5, 0.5, 2.0))
    return ContextEntry(image, list(boxes), list(points), "image")


def test_prompt_fit_is_the_overlap_of_the_box_with_the_mask_on_its_slice():
    entry = entry_with([Box((10, 5, 4), (19, 14, 4))])         # 10 x 10 voxels on k = 4
    mask = np.zeros((10, 30, 40), np.uint8)
    mask[3:6, 5:15, 10:20] = 1
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(entry.image)
    assert prompt_fit(image, entry) == pytest.approx(1.0)
    mask[:] = 0
    mask[4, 5:15, 15:25] = 1                                   # shifted by half its width
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(entry.image)
    assert prompt_fit(image, entry) == pytest.approx(50 / 150)
    mask[4] = 0                                                # nothing on the box's slice
    mask[5, 5:15, 10:20] = 1
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(entry.image)
    assert prompt_fit(image, entry) == 0.0
    points = entry_with(points=[Point((12, 8, 5)), Point((30, 20, 5))])
    assert prompt_fit(image, points) == pytest.approx(0.5)     # one inside, one outside
    assert prompt_fit(image, entry_with()) is None


def test_boxes_drawn_from_a_mask_and_their_scale():
    mask = np.zeros((10, 30, 40), np.uint8)
    mask[2:8, 5:15, 10:30] = 1
    image = make_image(mask, spacing=(0.5, 0.5, 2.0))
    boxes = boxes_from_mask(image, slices=3)
    assert [(b.min, b.max) for b in boxes] == [((10, 5, k), (29, 14, k)) for k in (2, 4, 7)]
    corners = [np.array([[0, 0, 0], [20, 10, 0], [0, 10, 0], [20, 0, 0]] * 2, float)]
    assert box_side_mm(corners) == pytest.approx(np.sqrt(200.0))
    assert box_side_mm([]) is None


def test_calibration_reads_its_file_and_flags_below_its_threshold(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"weights": [0, 0, 0, 0, 2.0], "bias": 0.0,
                                "mean": [0, 0, 0, 0, 0.5], "scale": [1, 1, 1, 1, 0.25],
                                "typical_size": 0.0, "typical_fit": 0.5,
                                "review_below": 0.6, "fitted": "a test", "figures": {}}))
    loaded = Calibration.load(path)
    good = Evidence(0.9, 0.9, 0.1, 0.0, False, fit=1.0)
    poor = Evidence(0.9, 0.9, 0.1, 0.0, False, fit=0.25)
    unknown = Evidence(0.9, 0.9, None, 0.0, False)
    assert loaded.confidence(good) == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert loaded.confidence(poor) == pytest.approx(1 / (1 + np.exp(2.0)))
    assert loaded.confidence(unknown) == pytest.approx(0.5)     # typical fit: the middle
    assert not loaded.review(loaded.confidence(good)) and loaded.review(0.59)


def test_the_bundled_calibration_is_complete():
    bundled = Calibration.load()
    assert len(bundled.weights) == len(confidence_module.FEATURES) == len(bundled.mean)
    assert 0.0 < bundled.review_below < 1.0 and "dev benchmark" in bundled.fitted


def test_results_carry_evidence_and_the_cycle_check_adds_its_fit(tiny_network, blob_image):
    context = ContextSet(name="blob").add(blob_image, boxes=[Box((12, 10, 12), (28, 26, 12))])
    plain = cpu_fp32(tiny_network).segment(blob_image, context)
    checked = cpu_fp32(tiny_network, cycle_check=True).segment(blob_image, context)
    assert plain.evidence is not None and plain.evidence.fit is None
    assert np.array_equal(sitk.GetArrayFromImage(plain.mask),
                          sitk.GetArrayFromImage(checked.mask))     # the result is unchanged
    if checked.evidence.empty:
        assert checked.evidence.fit is None
    else:
        assert 0.0 <= checked.evidence.fit <= 1.0
    interactive = cpu_fp32(tiny_network).segment_interactive(
        blob_image, [Box((12, 10, 12), (28, 26, 12))])
    entry = ContextEntry(blob_image, [Box((12, 10, 12), (28, 26, 12))], [], "blob")
    assert interactive.evidence.fit == prompt_fit(interactive.mask, entry)


def row(name, status, **structures):
    return {"target": name, "input": f"/data/{name}.nii.gz", "status": status, "seconds": 1.0,
            "outputs": [], "structures": structures, "error": ""}


def test_review_lines_list_the_flagged_worst_first_and_what_to_annotate_next():
    targets = [row("a", "done", liver={"confidence": 0.9, "review": False}),
               row("b", "done", liver={"confidence": 0.2, "review": True}),
               row("c", "skipped", liver={"confidence": 0.4, "review": True}),
               row("d", "failed")]
    assert [(f.target["target"], f.confidence) for f in to_review(targets)] == \
        [("b", 0.2), ("c", 0.4)]
    assert annotate_next(targets)["liver"].target["target"] == "b"
    lines = review_lines(targets, interactive=False)
    assert lines[0] == "review: 2 of 3 results flagged, least confident first: " \
        "b liver (0.20), c liver (0.40)"
    assert lines[1].startswith("annotate next for liver: /data/b.nii.gz")
    assert review_lines(targets, interactive=True) == lines[:1]
    assert review_lines([row("d", "failed")], interactive=False) == []


def test_png_bytes_is_a_png_simpleitk_reads(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[1, 2] = (255, 40, 40)
    data = png_bytes(rgb)
    assert data.startswith(b"\x89PNG") and zlib.crc32(data[-8:-4]) is not None
    (tmp_path / "t.png").write_bytes(data)
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "t.png")))
    assert np.array_equal(read, rgb)


@pytest.fixture
def run_folder(tmp_path, tiny_network, blob_image):
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    sitk.WriteImage(blob_image, str(tmp_path / "context.nii.gz"))
    for index in range(3):
        moved = sitk.Image(blob_image)
        moved.SetOrigin([o + 3.0 * index for o in blob_image.GetOrigin()])
        sitk.WriteImage(moved, str(tmp_path / f"target{index}.nii.gz"))
    (tmp_path / "ctx.json").write_text(json.dumps({
        "name": "blob", "context": [{"image": "context.nii.gz",
                                     "boxes": [{"min": [12, 10, 12], "max": [28, 26, 12]}]}]}))
    return tmp_path


def segment(folder, *extra):
    return main(["segment", *[str(folder / f"target{i}.nii.gz") for i in range(3)],
                 "--context-set", str(folder / "ctx.json"), "--output-dir",
                 str(folder / "out"), "--model", str(folder / "tiny.pt"), *CPU_FP32, *extra])


def test_the_report_carries_confidence_review_and_the_sheet_shows_the_flagged(
        run_folder, monkeypatch, capsys):
    flag_all = Calibration([0.0] * 5, 0.0, [0.0] * 5, [1.0] * 5, 0.0, 0.5, 0.75, "test")
    monkeypatch.setattr(confidence_module, "calibration", lambda: flag_all)
    assert segment(run_folder, "--review-sheet") == 0
    said = capsys.readouterr().out
    report = json.loads((run_folder / "out" / "wsicl-run.json").read_text())
    measures = [t["structures"]["blob"] for t in report["targets"]]
    non_empty = [m for m in measures if m["voxels"]]
    assert all(m["confidence"] == 0.5 and m["review"] for m in non_empty)
    assert all(m["confidence"] == 0.0 and m["review"] for m in measures if not m["voxels"])
    assert all(m["file"].endswith("_blob.nii.gz") and m["label"] == 1 for m in measures)
    assert [f["target"] for f in report["review"]["flagged"]] == [    # least confident first
        t["target"] for t in sorted(report["targets"], key=lambda t: (
            t["structures"]["blob"]["confidence"], t["target"]))]
    assert report["review"]["annotate_next"]["blob"]["target"] in \
        {t["target"] for t in report["targets"]}
    csv_rows = (run_folder / "out" / "wsicl-run.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[7:9] == ["confidence", "review"]
    assert all(line.split(",")[8] == "true" for line in csv_rows[1:])
    assert "review: 3 of 3 results flagged" in said and "annotate next for blob:" in said
    sheet = (run_folder / "out" / "wsicl-review.html").read_text()
    assert sheet.count("<figure>") == 3 and sheet.count("data:image/png;base64,") == 3
    assert "review sheet: 3 result(s)" in said
    trust_all = Calibration([0.0] * 5, 0.0, [0.0] * 5, [1.0] * 5, 0.0, 0.5, 0.25, "test")
    monkeypatch.setattr(confidence_module, "calibration", lambda: trust_all)
    assert main(["segment", "--report-only", str(run_folder / "out"), "--review-sheet"]) == 0
    said = capsys.readouterr().out                # the records' flags were kept as written
    assert "review: 3 of 3 results flagged" in said


def test_a_servers_evidence_header_is_read_or_refused_in_one_sentence():
    from wsicl.server.wire import evidence_from_json
    found = Evidence(0.7, 0.8, None, 0.0, False, fit=0.9)
    assert evidence_from_json(json.dumps(found.as_dict())) == found
    assert evidence_from_json("null") is None
    for hostile in ('{"sharpness": "x", "inside": 1, "size": null, "cut": 0, "empty": false}',
                    '{"sharpness": NaN, "inside": 1, "size": null, "cut": 0, "empty": false}',
                    '{"sharpness": 1, "inside": 1, "size": null, "cut": 0, "empty": 0}',
                    '{"sharpness": 1, "inside": 1, "size": null, "cut": 0, "empty": false, '
                    '"fit": "1"}', '{"sharpness": 1}', "[1, 2]", "not json"):
        with pytest.raises(ValueError, match="X-WSICL-Evidence header is not evidence"):
            evidence_from_json(hostile)
