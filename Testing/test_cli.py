"""The wsicl command line: equivalent inputs agree, outputs fit the target, bad input fails
cleanly with one line naming the culprit."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, make_image, results, rotation_direction, sphere_volume
from wsicl import save_model
from wsicl.cli import main
from wsicl.demo import write_dicom_series
from wsicl.geometry import Grid

FLIPPED = (-1, 0, 0, 0, 1, 0, 0, 0, 1)


@pytest.fixture
def workspace(tmp_path, tiny_network):
    """A tiny model, a context image with a ball, and a target image, all on disk."""
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    spacing = (0.9, 0.8, 2.5)
    ball = sphere_volume((16, 40, 36), (8, 20, 18), 10.0, spacing)
    rng = np.random.default_rng(0)
    context = make_image((ball * 80 + rng.normal(0, 4, ball.shape)).astype(np.float32), spacing,
                         (30.0, -12.0, 4.0), FLIPPED)
    sitk.WriteImage(context, str(tmp_path / "context.nii.gz"))
    target = make_image((ball * 60 + rng.normal(0, 4, ball.shape)).astype(np.float32),
                        (1.1, 0.7, 3.0), (1.0, 2.0, 3.0), rotation_direction(20.0))
    sitk.WriteImage(target, str(tmp_path / "target.nrrd"))
    return tmp_path


def write_context(folder, document, name="ctx.json"):
    path = folder / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


VOXEL_BOX = {"min": [10, 12, 8], "max": [26, 28, 8]}


def physical_box(folder, space):
    image = sitk.ReadImage(str(folder / "context.nii.gz"))
    corners = Grid.of(image).index_to_lps(np.array([[9.5, 11.5, 8], [26.5, 28.5, 8]]))
    if space == "RAS":
        corners = corners * [-1, -1, 1]
    return {"min": corners.min(axis=0).tolist(), "max": corners.max(axis=0).tolist()}


def run(folder, context_path, output, *extra):
    return main(["segment", "--context-set", str(context_path), "--output-dir", str(output),
                 "--model", str(folder / "tiny.pt"), *CPU_FP32, "--quiet", *extra])


def test_voxel_lps_ras_and_markups_give_the_same_result(workspace):
    results = {}
    documents = {
        "voxel": {"coordinates": "voxel", "context": [{"image": "context.nii.gz",
                                                       "boxes": [VOXEL_BOX]}]},
        "LPS": {"coordinates": "LPS", "context": [{"image": "context.nii.gz",
                                                   "boxes": [physical_box(workspace, "LPS")]}]},
        "RAS": {"coordinates": "RAS", "context": [{"image": "context.nii.gz",
                                                   "boxes": [physical_box(workspace, "RAS")]}]},
    }
    box = physical_box(workspace, "RAS")
    centre = (np.array(box["min"]) + np.array(box["max"])) / 2
    size = np.array(box["max"]) - np.array(box["min"])
    (workspace / "roi.mrk.json").write_text(json.dumps({"markups": [{
        "type": "ROI", "coordinateSystem": "RAS", "center": centre.tolist(),
        "size": size.tolist(), "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1]}]}))
    documents["markups"] = {"context": [{"image": "context.nii.gz", "markups": "roi.mrk.json"}]}
    for name, document in documents.items():
        path = write_context(workspace, document, f"{name}.json")
        assert run(workspace, path, workspace / name, str(workspace / "target.nrrd"),
                   "--overwrite") == 0
        results[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(workspace / name /
                                                                   f"target_{name}.nii.gz")))
    for name in ("LPS", "RAS", "markups"):
        assert np.array_equal(results[name], results["voxel"]), name


def test_output_matches_the_target_grid_and_formats(workspace):
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    target = sitk.ReadImage(str(workspace / "target.nrrd"))
    for output_format in ("nii.gz", "nrrd", "seg.nrrd"):
        assert run(workspace, path, workspace / "out", str(workspace / "target.nrrd"),
                   "--format", output_format) == 0
        written = sitk.ReadImage(str(workspace / "out" / f"target_ctx.{output_format}"))
        assert written.GetPixelID() == sitk.sitkUInt8
        assert written.GetSize() == target.GetSize()
        assert np.allclose(written.GetSpacing(), target.GetSpacing())
        assert np.allclose(written.GetOrigin(), target.GetOrigin())
        assert np.allclose(written.GetDirection(), target.GetDirection())
    segmentation = sitk.ReadImage(str(workspace / "out" / "target_ctx.seg.nrrd"))
    assert segmentation.GetMetaData("Segment0_Name") == "ctx"
    hidden = [p.name for p in (workspace / "out").rglob(".*")]   # no temporary file left
    assert hidden == [".wsicl-records"]


def test_interactive_writes_each_context_image(workspace):
    path = write_context(workspace, {"name": "ball", "context": [
        {"image": "context.nii.gz", "boxes": [VOXEL_BOX]}]})
    assert run(workspace, path, workspace / "out", "--interactive") == 0
    written = sitk.ReadImage(str(workspace / "out" / "context_ball.nii.gz"))
    assert written.GetSize() == sitk.ReadImage(str(workspace / "context.nii.gz")).GetSize()


def test_dicom_series_folder_is_a_target(workspace):
    target = sitk.ReadImage(str(workspace / "target.nrrd"))
    write_dicom_series(target, workspace / "series")
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    assert run(workspace, path, workspace / "out", str(workspace / "series")) == 0
    written = sitk.ReadImage(str(workspace / "out" / "series_ctx.nii.gz"))
    assert written.GetSize() == target.GetSize()
    assert np.allclose(written.GetOrigin(), target.GetOrigin(), atol=1e-3)


def test_existing_output_is_kept_without_overwrite(workspace, capsys):
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    (workspace / "out").mkdir()
    (workspace / "out" / "target_ctx.nii.gz").write_bytes(b"precious")
    assert run(workspace, path, workspace / "out", str(workspace / "target.nrrd")) != 0
    assert (workspace / "out" / "target_ctx.nii.gz").read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("document, targets, culprit", [
    ({"context": [{"image": "absent.nii.gz", "boxes": [VOXEL_BOX]}]}, ["target.nrrd"],
     "absent.nii.gz"),
    ({"context": [{"image": "garbage.nii.gz", "boxes": [VOXEL_BOX]}]}, ["target.nrrd"],
     "garbage.nii.gz"),
    ({"context": [{"image": "context.nii.gz", "boxes": [VOXEL_BOX], "colour": 1}]},
     ["target.nrrd"], "colour"),
    ({"context": [{"image": "context.nii.gz", "boxes": [{"min": [200, 200, 1],
                                                         "max": [220, 220, 1]}]}]},
     ["target.nrrd"], "outside"),
    ({"context": [{"image": "context.nii.gz"}]}, ["target.nrrd"], "context[0]"),
    ({"context": []}, ["target.nrrd"], "non-empty"),
    ({"context": [{"image": "context.nii.gz", "boxes": "10 12 8 26 28 8"}]}, ["target.nrrd"],
     "boxes: expected a list, got str"),
    ({"context": [{"image": "context.nii.gz", "boxes": [VOXEL_BOX]}]}, ["missing.nrrd"],
     "missing.nrrd"),
    ({"context": [{"image": "context.nii.gz", "mask": "absent_seg.nii.gz"}]},
     ["target.nrrd"], "absent_seg.nii.gz: no such file"),
])
def test_bad_input_fails_with_one_line_and_no_output(workspace, capsys, document, targets,
                                                     culprit):
    (workspace / "garbage.nii.gz").write_bytes(b"not an image at all")
    path = write_context(workspace, document)
    output = workspace / "out"
    assert run(workspace, path, output, *[str(workspace / t) for t in targets]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and culprit in error, error
    assert not output.exists()


def test_output_folder_that_is_a_file(workspace, capsys):
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    (workspace / "out").write_text("a file", encoding="utf-8")
    assert run(workspace, path, workspace / "out", str(workspace / "target.nrrd")) != 0
    assert "not a folder" in capsys.readouterr().err
    assert (workspace / "out").read_text(encoding="utf-8") == "a file"


def test_console_script_runs():
    completed = subprocess.run([sys.executable, "-m", "wsicl.cli", "--help"],
                               capture_output=True, text=True, check=True)
    for command in ("segment", "demo", "train", "evaluate"):
        assert command in completed.stdout


def test_refine_flags_reach_the_predictor(workspace):
    from wsicl.cli import build_parser, make_predictor
    for flags, expected in (([], False), (["--refine"], True), (["--no-refine"], False)):
        args = build_parser().parse_args(["segment", "--context-set", "c.json",
                                          "--output-dir", "out", "--model",
                                          str(workspace / "tiny.pt"), *CPU_FP32, *flags])
        assert make_predictor(args).refine is expected  # the tiny model is whole-view
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    assert run(workspace, path, workspace / "out", "--interactive", "--refine") == 0
    assert (workspace / "out" / "context_ctx.nii.gz").is_file()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_unwritable_output_folder_fails_before_the_model_loads(workspace, capsys, monkeypatch):
    import wsicl.cli
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    loaded = []
    monkeypatch.setattr(wsicl.cli, "make_predictor", lambda args: loaded.append(1))
    # /proc refuses new files even to root, like a read-only file system
    assert run(workspace, path, Path("/proc/wsicl-results"), str(workspace / "target.nrrd")) == 1
    error = capsys.readouterr().err
    assert "cannot write there" in error and "Traceback" not in error and not loaded


def test_flag_names_in_messages_bom_files_and_interactive_with_targets(workspace, capsys):
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    with pytest.raises(SystemExit):
        run(workspace, path, workspace / "out", "--mini-context", "0")
    assert "--mini-context: must be at least 1" in capsys.readouterr().err
    assert run(workspace, path, workspace / "out", "--interactive",
               str(workspace / "target.nrrd")) == 1
    error = capsys.readouterr().err
    assert "--interactive" in error and "TARGET" in error and not (workspace / "out").exists()
    bom = workspace / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert run(workspace, bom, workspace / "out", "--interactive") == 0


@pytest.fixture
def two_structures(tmp_path):
    """A served tiny model (half of the blob in its mask), a context image, two context
    sets on it with different boxes, and two targets in a folder."""
    from served import blob, write_served_model
    write_served_model(tmp_path / "m.pt")
    sitk.WriteImage(blob(0), str(tmp_path / "context.nii.gz"))
    (tmp_path / "scans").mkdir()
    for seed in (1, 2):
        sitk.WriteImage(blob(seed), str(tmp_path / "scans" / f"case{seed}.nii.gz"))
    sets = []
    for name, low, high in (("core", [12, 10, 12], [28, 26, 12]),
                            ("rim", [6, 6, 12], [34, 30, 12])):
        sets.append(write_context(tmp_path, {"name": name, "context": [
            {"image": "context.nii.gz", "boxes": [{"min": low, "max": high}]}]},
            f"{name}.json"))
    return tmp_path, sets


def segment_with(folder, sets, output, *extra):
    arguments = ["segment", str(folder / "scans"), "--output-dir", str(output), "--model",
                 str(folder / "m.pt"), *CPU_FP32, "--quiet", *extra]
    for path in sets:
        arguments += ["--context-set", str(path)]
    return main(arguments)


def test_several_context_sets_give_one_file_per_structure_or_one_label_image(two_structures):
    folder, sets = two_structures
    for path in sets:                                # one structure per run, as before
        assert segment_with(folder, [path], folder / path.stem) == 0
    single = {(case, path.stem): sitk.GetArrayFromImage(sitk.ReadImage(
        str(folder / path.stem / f"{case}_{path.stem}.nii.gz"))) for case in ("case1", "case2")
        for path in sets}
    assert all(mask.any() for mask in single.values())
    assert segment_with(folder, sets, folder / "both") == 0
    assert results(folder / "both") == [
        "case1_core.nii.gz", "case1_rim.nii.gz", "case2_core.nii.gz", "case2_rim.nii.gz"]
    for (case, structure), mask in single.items():
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(
            str(folder / "both" / f"{case}_{structure}.nii.gz"))), mask)
    assert segment_with(folder, sets, folder / "labels", "--output-type", "multilabel") == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels" / "case1.nii.gz")))
    core, rim = single[("case1", "core")] > 0, single[("case1", "rim")] > 0
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert np.array_equal(labels > 0, core | rim)
    assert np.all(labels[core & ~rim] == 1) and np.all(labels[rim & ~core] == 2)
    assert json.loads((folder / "labels" / "case1.labels.json").read_text()) == {
        "1": "core", "2": "rim"}
    assert segment_with(folder, sets, folder / "seg", "--output-type", "multilabel",
                        "--format", "seg.nrrd") == 0
    written = sitk.ReadImage(str(folder / "seg" / "case2.seg.nrrd"))
    assert [written.GetMetaData(f"Segment{n}_Name") for n in (0, 1)] == ["core", "rim"]
    assert written.GetMetaData("Segment1_LabelValue") == "2"


def test_overlapping_structures_go_to_the_more_probable_one_in_a_label_image(tmp_path):
    from wsicl.segment_run import write_results
    from wsicl.predictor import Segmentation
    first, second = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32)
    first[0], second[:, 0] = 0.9, 0.7          # they overlap on row 0 of slice 0
    second[0, 0, 0] = 0.95

    def result(probability):
        images = [sitk.GetImageFromArray(a) for a in ((probability >= 0.5).astype(np.uint8),
                                                       probability)]
        return Segmentation(*images)

    paths = [tmp_path / "t.nii.gz", tmp_path / "t.labels.json"]
    measures = write_results([result(first), result(second)], paths, ["a", "b"], "multilabel",
                             "nii.gz")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))
    assert labels[0, 0, 0] == 2 and labels[0, 0, 1] == 1 and labels[1, 0, 0] == 2
    assert labels[0, 1, 0] == 1 and labels[1, 1, 0] == 0
    assert measures == {name: {"voxels": int((labels == value).sum()),          # as written
                               "ml": int((labels == value).sum()) / 1000,    # 1 mm voxels
                               "file": "t.nii.gz", "label": value}          # no evidence
                        for name, value in (("a", 1), ("b", 2))}
    assert measures["a"]["voxels"] < int((first >= 0.5).sum())      # not before overlaps


def test_a_folder_target_skips_label_maps_and_the_context_images(two_structures, capsys):
    folder, sets = two_structures
    scans = folder / "scans"
    labels = np.zeros((24, 36, 40), np.uint8)
    labels[5:15, 10:20, 10:30] = 3
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(scans / "case1_seg.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(scans / "atlas.nrrd"))   # by values
    sitk.WriteImage(sitk.ReadImage(str(folder / "context.nii.gz")), str(scans / "ctx.nii.gz"))
    (folder / "in-folder.json").write_text(json.dumps({"name": "core", "context": [
        {"image": "scans/ctx.nii.gz", "boxes": [{"min": [12, 10, 12], "max": [28, 26, 12]}]}]}))
    arguments = ["segment", str(scans), "--context-set", str(folder / "in-folder.json"),
                 "--output-dir", str(folder / "out"), "--model", str(folder / "m.pt"),
                 *CPU_FP32]
    assert main(arguments) == 0
    assert results(folder / "out") == ["case1_core.nii.gz", "case2_core.nii.gz"]
    printed = capsys.readouterr().out
    for name, reason in (("case1_seg.nii.gz", "its name marks a label map"),
                         ("atlas.nrrd", "only 2 distinct values"),
                         ("ctx.nii.gz", "a context image")):
        assert printed.count(f"skipping {scans / name}: ") == 1 and reason in printed


def test_targets_whose_headers_show_a_problem_fail_before_the_model_loads(two_structures,
                                                                          capsys):
    folder, sets = two_structures
    flat = folder / "flat.nrrd"
    sitk.WriteImage(sitk.Image(30, 30, sitk.sitkFloat32), str(flat))
    arguments = ["segment", str(flat), "--context-set", str(sets[0]), "--output-dir",
                 str(folder / "out"), "--model", str(folder / "absent.pt"), *CPU_FP32]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert f"[1/1] {flat}: is 2D" in error and error.count("flat") == 1    # named once
    assert "absent.pt" not in error
    assert not (folder / "out").exists()


def test_context_sets_must_have_distinct_names(two_structures, capsys):
    folder, sets = two_structures
    assert segment_with(folder, [sets[0], sets[0]], folder / "out") == 1
    assert "share a name" in capsys.readouterr().err


def test_a_run_says_its_model_device_and_precision_and_warns_about_the_point_model(
        two_structures, capsys):
    folder, sets = two_structures
    assert main(["segment", str(folder / "scans"), "--context-set", str(sets[0]),
                 "--output-dir", str(folder / "out"), "--model", str(folder / "m.pt"),
                 *CPU_FP32]) == 0
    assert segment_with(folder, sets[:1], folder / "out2") == 0        # --quiet: nothing
    printed = capsys.readouterr().out
    assert printed.count("(box prompts, 32^3 grid) on cpu, fp32") == 1
    assert printed.splitlines()[0].startswith("model ")
    points = write_context(folder, {"name": "p", "context": [
        {"image": "context.nii.gz", "points": [[20, 18, 12]]}]}, "p.json")
    assert main(["segment", str(folder / "scans"), "--context-set", str(points),
                 "--output-dir", str(folder / "points"), "--model", "point", *CPU_FP32]) == 0
    error = capsys.readouterr().err
    assert error.count("wsicl: note: the bundled point model scores below the location-only "
                       "floor") == 1


def test_ctrl_c_while_the_libraries_load_says_interrupted_without_a_traceback(monkeypatch,
                                                                              capsys):
    import sys

    class Interrupting:                       # Ctrl-C arriving while torch is imported
        def find_spec(self, name, path=None, target=None):
            if name == "wsicl.device":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "wsicl.device", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting()] + sys.meta_path)
    assert main(["segment", "t.nii.gz", "--context-set", "c.json", "--output-dir", "o"]) == 130
    assert capsys.readouterr().err == "wsicl: interrupted\n"


def test_a_box_reaching_beyond_its_image_is_noted_once(workspace, capsys):
    beyond = write_context(workspace, {"context": [{"image": "context.nii.gz", "boxes": [
        {"min": [20, 25, 8], "max": [50, 45, 8]}]}]})          # the image is 36 x 40 x 16
    assert run(workspace, beyond, workspace / "out", str(workspace / "target.nrrd")) == 0
    error = capsys.readouterr().err
    assert error.count("reaches beyond the image (size [36, 40, 16]); only the part inside "
                       "is used") == 1 and "wsicl: note:" in error
    inside = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                    "boxes": [VOXEL_BOX]}]}, "inside.json")
    assert run(workspace, inside, workspace / "out2", str(workspace / "target.nrrd")) == 0
    assert "beyond" not in capsys.readouterr().err


def test_a_dicom_series_gives_a_dicom_seg_with_every_structure(two_structures, capsys):
    """DICOM in, DICOM out: one SEG per series, a named, coded segment per structure, each
    frame on the source slice it refers to, pixels as the NIfTI results of the same run."""
    import highdicom
    import pydicom
    from served import blob
    from wsicl.imageio import dicom_series
    folder, sets = two_structures
    write_dicom_series(blob(1), folder / "series")
    common = ["segment", str(folder / "series"), "--model", str(folder / "m.pt"), *CPU_FP32,
              "--quiet", "--context-set", str(sets[0]), "--context-set", str(sets[1])]
    assert main(common + ["--output-dir", str(folder / "nifti")]) == 0
    assert main(common + ["--output-dir", str(folder / "dicom"), "--format", "dicom-seg"]) == 0
    assert results(folder / "dicom") == ["series.seg.dcm"]
    seg = highdicom.seg.segread(str(folder / "dicom" / "series.seg.dcm"))
    assert seg.number_of_segments == 2
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["core", "rim"]
    files = dicom_series(folder / "series")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               segment_numbers=[1, 2])
    for number, structure in enumerate(("core", "rim")):
        expected = sitk.GetArrayFromImage(sitk.ReadImage(
            str(folder / "nifti" / f"series_{structure}.nii.gz")))
        assert expected.any() and np.array_equal(pixels[..., number], expected)
    liver = write_context(folder, {"name": "liver", "context": [{"image": "context.nii.gz",
                                   "boxes": [{"min": [12, 10, 12], "max": [28, 26, 12]}]}]},
                          "liver.json")
    assert main(["segment", str(folder / "series"), "--model", str(folder / "m.pt"),
                 *CPU_FP32, "--quiet", "--context-set", str(liver), "--output-dir",
                 str(folder / "coded"), "--format", "dicom-seg"]) == 0
    coded = highdicom.seg.segread(str(folder / "coded" / "series.seg.dcm"))
    described = coded.get_segment_description(1)
    assert described.segmented_property_type.value == "10200004"         # SNOMED CT: liver
    assert described.segmented_property_category.meaning == "Anatomical Structure"
    capsys.readouterr()
    assert main(["segment", str(folder / "scans" / "case1.nii.gz"), "--model",
                 str(folder / "m.pt"), *CPU_FP32, "--context-set", str(liver),
                 "--output-dir", str(folder / "bad"), "--format", "dicom-seg"]) == 1
    assert "needs a DICOM series folder" in capsys.readouterr().err


def test_a_box_given_max_first_is_used_the_right_way_round_with_a_note(workspace, capsys):
    swapped = {"min": VOXEL_BOX["max"][:2] + [8], "max": VOXEL_BOX["min"][:2] + [8]}
    for name, box in (("plain", VOXEL_BOX), ("swapped", swapped)):
        path = write_context(workspace, {"name": "ball", "context": [
            {"image": "context.nii.gz", "boxes": [box]}]}, f"{name}.json")
        assert run(workspace, path, workspace / name, str(workspace / "target.nrrd")) == 0
    error = capsys.readouterr().err
    assert error.count("wsicl: note: box min [26.0, 28.0, 8.0] max [10.0, 12.0, 8.0] (voxel) "
                       "has min above max; used as min [10.0, 12.0, 8.0] max [26.0, 28.0, "
                       "8.0]") == 1
    assert np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(
        workspace / name / "target_ball.nii.gz"))) for name in ("plain", "swapped")))


def test_an_image_given_as_the_context_set_is_named_as_such(workspace, capsys):
    assert run(workspace, workspace / "context.nii.gz", workspace / "out",
               str(workspace / "target.nrrd")) == 1
    error = capsys.readouterr().err
    assert "is a gzip file (a compressed image such as .nii.gz?), not a context-set file" \
        in error and "codec" not in error
    assert run(workspace, workspace / "target.nrrd", workspace / "out",
               str(workspace / "target.nrrd")) == 1
    assert "is an image (NRRD), not a context-set file" in capsys.readouterr().err


def test_python_dash_m_wsicl_is_the_command_line():
    completed = subprocess.run([sys.executable, "-m", "wsicl", "--version"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and completed.stdout.startswith("wsicl ")


def test_a_label_map_named_as_a_target_is_refused_unless_allowed(workspace, capsys):
    labels = np.zeros((16, 40, 36), np.uint8)
    labels[4:10, 10:30, 10:26] = 2
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(workspace / "atlas.nii.gz"))
    shutil_copy = (workspace / "target_seg.nrrd")
    shutil_copy.write_bytes((workspace / "target.nrrd").read_bytes())
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    for label_map, reason in (("atlas.nii.gz", "only 2 distinct values"),
                              ("target_seg.nrrd", "its name marks a label map")):
        assert run(workspace, path, workspace / "out", str(workspace / label_map)) == 1
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "looks like a label map" in error, error
        assert reason in error and "--allow-label-targets" in error
    assert not (workspace / "out").exists()
    assert run(workspace, path, workspace / "out", str(workspace / "atlas.nii.gz"),
               "--allow-label-targets") == 0
    assert (workspace / "out" / "atlas_ctx.nii.gz").is_file()


def test_ctrl_c_between_targets_reports_every_target(workspace, capsys, monkeypatch):
    """Interrupted while segmenting the second of three targets: exit 130, one line with
    the counts, and a report with a row per target (done, interrupted, not started)."""
    from wsicl.predictor import Predictor
    for copy in (2, 3):
        (workspace / f"target{copy}.nrrd").write_bytes((workspace / "target.nrrd").read_bytes())
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    calls = []
    segment = Predictor.segment

    def interrupted_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return segment(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "segment", interrupted_second)
    targets = [str(workspace / name) for name in ("target.nrrd", "target2.nrrd",
                                                  "target3.nrrd")]
    assert run(workspace, path, workspace / "out", *targets) == 130
    error = capsys.readouterr().err.splitlines()
    assert error[0].startswith("wsicl: 1 segmented now, 0 done before, 0 failed, 1 interrupted, "
                               "1 not started of 3; report ") and error[1] == "wsicl: interrupted"
    report = json.loads((workspace / "out" / "wsicl-run.json").read_text())
    assert [(t["target"], t["status"]) for t in report["targets"]] == [
        ("target", "done"), ("target2", "interrupted"), ("target3", "not started")]


def test_interactive_with_several_context_sets_segments_each_structure_from_its_prompts(
        two_structures):
    """core and rim: two sets with different boxes on the same image; each structure's file
    equals an interactive run of that set alone, and a label image holds both."""
    folder, sets = two_structures
    common = ["segment", "--interactive", "--model", str(folder / "m.pt"), *CPU_FP32,
              "--quiet"]
    both = common + ["--context-set", str(sets[0]), "--context-set", str(sets[1])]
    assert main(both + ["--output-dir", str(folder / "both")]) == 0
    assert results(folder / "both") == ["context_core.nii.gz", "context_rim.nii.gz"]
    masks = {}
    for path in sets:
        assert main(common + ["--context-set", str(path), "--output-dir",
                              str(folder / path.stem)]) == 0
        masks[path.stem] = sitk.GetArrayFromImage(sitk.ReadImage(str(
            folder / path.stem / f"context_{path.stem}.nii.gz")))
        assert np.array_equal(masks[path.stem], sitk.GetArrayFromImage(sitk.ReadImage(str(
            folder / "both" / f"context_{path.stem}.nii.gz"))))
    assert not np.array_equal(masks["core"], masks["rim"])     # each from its own boxes
    assert main(both + ["--output-dir", str(folder / "labels"), "--output-type",
                        "multilabel"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels" / "context.nii.gz")))
    assert np.array_equal(labels > 0, (masks["core"] > 0) | (masks["rim"] > 0))


def series_without(folder, attribute: str):
    """The blob as a DICOM series in ``folder / "series"``, every file without
    ``attribute``."""
    import pydicom
    from served import blob
    write_dicom_series(blob(1), folder / "series")
    for path in (folder / "series").iterdir():
        dataset = pydicom.dcmread(path)
        delattr(dataset, attribute)
        dataset.save_as(path)


def test_a_dicom_seg_takes_a_missing_slice_thickness_from_the_positions(two_structures):
    import highdicom
    folder, sets = two_structures
    series_without(folder, "SliceThickness")
    assert main(["segment", str(folder / "series"), "--model", str(folder / "m.pt"),
                 *CPU_FP32, "--quiet", "--context-set", str(sets[0]), "--output-dir",
                 str(folder / "out"), "--format", "dicom-seg"]) == 0
    seg = highdicom.seg.segread(str(folder / "out" / "series.seg.dcm"))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(1.5, abs=1e-4)   # blob's spacing


def test_a_series_that_cannot_carry_a_dicom_seg_is_said_before_the_model_loads(
        two_structures, capsys, monkeypatch):
    import wsicl.cli
    folder, sets = two_structures
    series_without(folder, "FrameOfReferenceUID")
    loaded = []
    monkeypatch.setattr(wsicl.cli, "make_predictor", lambda args: loaded.append(1))
    assert main(["segment", str(folder / "series"), "--model", str(folder / "m.pt"),
                 *CPU_FP32, "--context-set", str(sets[0]), "--output-dir",
                 str(folder / "out"), "--format", "dicom-seg"]) == 1
    error = capsys.readouterr().err
    assert "Frame Of Reference UID" in error and "another --format" in error and not loaded
    assert "Traceback" not in error


def test_no_progress_bar_is_written_when_stderr_is_not_a_terminal(workspace, capsys):
    """A log file (stderr redirected) gets the result lines, not carriage-return bars."""
    path = write_context(workspace, {"context": [{"image": "context.nii.gz",
                                                  "boxes": [VOXEL_BOX]}]})
    assert main(["segment", "--context-set", str(path), "--output-dir", str(workspace / "out"),
                 "--model", str(workspace / "tiny.pt"), *CPU_FP32,
                 str(workspace / "target.nrrd")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "%|" not in captured.err
    assert re.search(r"voxels \(confidence [0-9.]+(, to review)?\) ->", captured.out)
