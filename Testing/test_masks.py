"""Dense masks as context: the Neuroverse3D checkpoint, mask geometry, bad masks, files."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, DATA, cpu_fp32, make_image, rotation_direction, sphere_volume
from wsicl import ContextSet, Predictor, load_model, save_model
from wsicl.checkpoints import kinds_from_name
from wsicl.cli import main
from wsicl.context import Box, ContextError
from wsicl.contextfile import ContextFileError, read_context_file
from wsicl.geometry import mask_to_model, prepare
from wsicl.masks import MaskError, MaskResampledWarning, context_mask

NEUROVERSE = DATA / "tiny_neuroverse3d.ckpt"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA / "tiny_neuroverse3d_io.npz"))


def neuroverse_predictor(mini_context: int = 1) -> Predictor:
    network = load_model(NEUROVERSE)
    network.metadata.input_size = 32           # the fixture's grid
    return cpu_fp32(network, mini_context=mini_context)


def test_neuroverse3d_checkpoint_reads_masks_by_its_name():
    assert load_model(NEUROVERSE).metadata.prompt_kinds == ["mask"]
    assert kinds_from_name("Neuroverse3D.ckpt") == ["mask"]
    assert kinds_from_name("weak_ICL_bbox.ckpt") == ["box"]
    assert kinds_from_name("weak_ICL_point.ckpt") == ["point"]
    assert kinds_from_name("model.ckpt") == []


@pytest.mark.parametrize("mini_context", [1, 2, 3])
def test_neuroverse3d_parity_through_the_api(reference, mini_context):
    """Dense-mask context sets through the public API give the authors' raw output."""
    context = ContextSet(name="spheres")
    for index in range(3):
        image = make_image(reference["context_normalized"][0, index, 0])
        context.add(image, mask=make_image(
            reference["context_masks"][0, index, 0].astype(np.uint8)))
    target = make_image(reference["target_normalized"][0, 0])
    result = neuroverse_predictor(mini_context).segment(target, context)
    output = sitk.GetArrayFromImage(result.probability)
    expected = reference[f"out_mask_l{mini_context}"][0, 0]
    assert np.abs(output - expected).max() < 1e-4


def test_mask_lands_on_the_model_voxels_of_the_image_on_oblique_anisotropic_grids():
    """A mask and an image that is bright exactly where the mask is give the same model
    voxels, whatever the grid's orientation and spacing."""
    spacing = (0.8, 1.3, 2.5)
    ball = sphere_volume((14, 24, 26), (7, 11, 13), 8.0, spacing)
    for direction in (rotation_direction(0), rotation_direction(30),
                      (0, 0, 1, -1, 0, 0, 0, -1, 0)):
        image = make_image(ball.astype(np.float32), spacing, (4.0, -7.0, 12.0), direction)
        mask = make_image(ball.astype(np.uint8), spacing, (4.0, -7.0, 12.0), direction)
        prepared = prepare(image, 32)
        channel = mask_to_model(context_mask(mask, image), prepared)
        assert channel.sum() > 100
        np.testing.assert_array_equal(channel, (prepared.array >= 0.5).astype(np.float32))


def test_mask_on_another_grid_of_the_same_extent_is_resampled_with_a_note():
    ball = sphere_volume((20, 20, 20), (10, 10, 10), 6.0)
    image = make_image(ball.astype(np.float32))
    coarse = sitk.Resample(make_image(ball.astype(np.uint8)), [10, 10, 10], sitk.Transform(),
                           sitk.sitkNearestNeighbor, (-0.5 + 1.0, -0.5 + 1.0, -0.5 + 1.0),
                           (2.0, 2.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0, sitk.sitkUInt8)
    with pytest.warns(MaskResampledWarning, match="resampled onto the image"):
        mask = context_mask(coarse, image, where="scan 1")
    assert mask.GetSize() == image.GetSize()
    overlap = (sitk.GetArrayFromImage(mask) & ball).sum() / ball.sum()
    assert overlap > 0.8


def labels_image(values: np.ndarray, **geometry) -> sitk.Image:
    return make_image(values, **geometry)


@pytest.mark.parametrize("labels, label, message", [
    (lambda: labels_image(np.zeros((8, 8, 8), np.uint8)), None, "no non-zero voxel"),
    (lambda: labels_image(np.pad(np.ones((2, 2, 2), np.uint8), 3) * 2), 5,
     r"no voxel with label 5 \(labels present: \[2\]\)"),
    (lambda: labels_image(np.full((8, 8, 8), 0.4, np.float32)), None, "non-integer"),
    (lambda: labels_image(np.ones((8, 8, 8), np.uint8), origin=(30.0, 0.0, 0.0)), None,
     "another physical extent"),
    (lambda: labels_image(np.ones((8, 8, 8), np.uint8)), "liver",
     "no segment names"),
])
def test_bad_masks_are_named(labels, label, message):
    image = make_image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    with pytest.raises(MaskError, match=message):
        context_mask(labels(), image, label, where="scan 7")


def test_segment_is_found_by_name_in_a_seg_nrrd(tmp_path):
    image = make_image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:3, 1:3, 1:3], labels[5:7, 5:7, 5:7] = 1, 2
    segmentation = make_image(labels)
    for index, (name, value) in enumerate((("liver", 1), ("spleen", 2))):
        segmentation.SetMetaData(f"Segment{index}_Name", name)
        segmentation.SetMetaData(f"Segment{index}_LabelValue", str(value))
    sitk.WriteImage(segmentation, str(tmp_path / "case.seg.nrrd"))
    read_back = sitk.ReadImage(str(tmp_path / "case.seg.nrrd"))
    spleen = sitk.GetArrayFromImage(context_mask(read_back, image, "spleen"))
    assert spleen.sum() == 8 and spleen[5:7, 5:7, 5:7].all()
    with pytest.raises(MaskError, match="no segment named 'kidney'; the file has 'liver', "
                                        "'spleen'"):
        context_mask(read_back, image, "kidney")


def test_model_kinds_decide_which_context_sets_run(tiny_network, blob_image):
    mask = sitk.Cast(blob_image > 50, sitk.sitkUInt8)
    masked = ContextSet(name="ball").add(blob_image, mask=mask)
    with pytest.raises(ContextError, match="has mask prompts but the model tiny test network "
                                           "was trained for box prompts"):
        cpu_fp32(tiny_network).segment(blob_image, masked)
    mixed = ContextSet(name="ball").add(blob_image, mask=mask).add(
        blob_image, [Box((10, 10, 12), (30, 26, 12))])
    stated = cpu_fp32(tiny_network, prompt_kinds=["box", "mask"])
    assert stated.segment(blob_image, mixed).mask.GetSize() == blob_image.GetSize()
    with pytest.raises(ContextError, match="interactive mode needs boxes or points"):
        stated.segment_interactive(blob_image)


def test_project_format_keeps_the_kinds(tmp_path):
    network = load_model(NEUROVERSE)
    save_model(network, tmp_path / "converted.pt", network.metadata)
    assert load_model(tmp_path / "converted.pt").metadata.prompt_kinds == ["mask"]


def write_case(folder, name: str, array: np.ndarray, **geometry) -> str:
    sitk.WriteImage(make_image(array, **geometry), str(folder / name))
    return name


@pytest.fixture
def mask_context_file(tmp_path):
    """A context-set file whose two entries are images with dense masks (labels 1 and 3)."""
    rng = np.random.default_rng(1)
    entries = []
    for index in range(2):
        ball = sphere_volume((20, 24, 24), (10, 12, 11 + index), 6.0)
        image = (ball * 80 + rng.normal(0, 4, ball.shape)).astype(np.float32)
        write_case(tmp_path, f"case{index}.nii.gz", image)
        write_case(tmp_path, f"case{index}_seg.nii.gz", (ball * (1 + 2 * index)).astype(np.uint8))
        entries.append({"image": f"case{index}.nii.gz", "mask": f"case{index}_seg.nii.gz",
                        "label": 1 + 2 * index})
    path = tmp_path / "ball.json"
    path.write_text(json.dumps({"name": "ball", "context": entries}), encoding="utf-8")
    return path


def test_context_file_with_masks(mask_context_file):
    context = read_context_file(mask_context_file)
    assert context.kinds() == ["mask"]
    assert all(sitk.GetArrayFromImage(e.mask).sum() > 100 for e in context.entries)


@pytest.mark.parametrize("change, message", [
    ({"boxes": [{"min": [1, 1, 1], "max": [5, 5, 1]}]}, "give a mask or boxes/points, not both"),
    ({"label": True}, "expected a label value"),
    ({"label": 7}, "no voxel with label 7"),
    ({"mask": "missing.nii.gz"}, "missing.nii.gz: no such file"),
])
def test_context_file_mask_problems(mask_context_file, change, message):
    document = json.loads(mask_context_file.read_text(encoding="utf-8"))
    document["context"][0].update(change)
    mask_context_file.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ContextFileError, match=message):
        read_context_file(mask_context_file)


def test_cli_runs_a_mask_context_set_and_refuses_a_box_model(mask_context_file, tmp_path,
                                                              tiny_network, capsys):
    save_model(tiny_network, tmp_path / "tiny_box.pt", tiny_network.metadata)
    target = mask_context_file.parent / "case1.nii.gz"
    common = ["segment", str(target), "--context-set", str(mask_context_file),
              *CPU_FP32, "--quiet"]
    assert main(common + ["--output-dir", str(tmp_path / "a"), "--model",
                          str(tmp_path / "tiny_box.pt")]) == 1
    error = capsys.readouterr().err
    assert "has mask prompts but the model" in error and "--context-kind" in error
    assert "Traceback" not in error
    assert main(common + ["--output-dir", str(tmp_path / "b"), "--model",
                          str(tmp_path / "tiny_box.pt"), "--context-kind", "mask"]) == 0
    assert main(common + ["--output-dir", str(tmp_path / "c"), "--model", str(NEUROVERSE)]) == 0
    (written,) = [sitk.ReadImage(str(path)) for path in (tmp_path / "c").glob("case1_*.nii.gz")]
    assert written.GetSize() == (24, 24, 20)


def test_cli_notes_a_resampled_mask_once_on_stderr(mask_context_file, tmp_path, capsys):
    coarse = sitk.Resample(sitk.ReadImage(str(mask_context_file.parent / "case0_seg.nii.gz")),
                           [12, 12, 10], sitk.Transform(), sitk.sitkNearestNeighbor,
                           (0.5, 0.5, 0.5), (2.0, 2.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0,
                           sitk.sitkUInt8)
    sitk.WriteImage(coarse, str(mask_context_file.parent / "case0_seg.nii.gz"))
    assert main(["segment", str(mask_context_file.parent / "case1.nii.gz"), "--context-set",
                 str(mask_context_file), "--output-dir", str(tmp_path / "out"), "--model",
                 str(NEUROVERSE), *CPU_FP32, "--quiet"]) == 0
    error = capsys.readouterr().err
    assert error.count("wsicl: note:") == 1 and "resampled onto the image" in error


def test_context_kind_option_is_checked(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.nii.gz", "--context-set", "c.json", "--output-dir", "o",
              "--context-kind", "scribble"])
    assert "unknown prompt kind(s) ['scribble']" in capsys.readouterr().err


def test_prompts_derived_from_a_mask_mark_it_on_three_slices():
    from wsicl.context import prompts_from_mask
    ball = sphere_volume((20, 24, 24), (10, 12, 12), 7.0)
    mask = make_image(ball.astype(np.uint8))
    boxes, points = prompts_from_mask(mask, "box")
    assert not points and [b.min[2] for b in boxes] == [7, 10, 13]
    _, points = prompts_from_mask(mask, "point")
    assert [p.position for p in points] == [(12, 12, 7), (12, 12, 10), (12, 12, 13)]
    assert all(ball[int(k), int(j), int(i)] for i, j, k in (p.position for p in points))
