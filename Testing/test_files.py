"""Writes are verified before the rename, keep the umask's permissions, and leave nothing
behind when they fail."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_image
from wsicl.checkpoints import ModelInfo, build_model, load_model, save_model
from wsicl.files import WriteError, check_writable_folder
from wsicl.imageio import write_atomic


@pytest.fixture
def mask():
    array = np.zeros((6, 7, 8), dtype=np.uint8)
    array[2:4, 2:5, 3:6] = 1
    return make_image(array, (0.5, 0.6, 2.0), (1, 2, 3))


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_written_masks_read_back_equal_with_the_umask_permissions(tmp_path, mask, suffix,
                                                                   umask_022):
    path = tmp_path / f"result{suffix}"
    write_atomic(mask, path)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                          sitk.GetArrayFromImage(mask))
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_write_that_does_not_read_back_is_refused_and_removed(tmp_path, mask, monkeypatch):
    real_write = sitk.WriteImage

    def truncating_write(image, name, compress=False):  # a disk that fills up mid-write
        real_write(image, name, compress)
        data = open(name, "rb").read()
        open(name, "wb").write(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", truncating_write)
    path = tmp_path / "result.nii.gz"
    with pytest.raises(WriteError, match="result.nii.gz"):
        write_atomic(mask, path)
    assert list(tmp_path.iterdir()) == []


def test_a_silently_different_file_is_refused(tmp_path, mask, monkeypatch):
    real_write = sitk.WriteImage
    monkeypatch.setattr(sitk, "WriteImage",
                        lambda image, name, compress=False: real_write(image * 0, name, compress))
    with pytest.raises(WriteError, match="did not read back as written"):
        write_atomic(mask, tmp_path / "result.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_models_are_saved_with_the_umask_permissions(tmp_path, umask_022):
    network = build_model(ModelInfo(channels=[2, 4], input_size=8))
    path = save_model(network, tmp_path / "model.pt", network.metadata, dtype=torch.float16)
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_model(path).metadata.input_size == 8
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_an_unwritable_folder_is_named(tmp_path):
    check_writable_folder(tmp_path / "new" / "sub")
    assert list(tmp_path.iterdir()) == []  # nothing made, nothing left
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(WriteError, match="cannot write there .not a folder"):
        check_writable_folder(blocker / "sub")


@pytest.mark.parametrize("suffix, compress", [(".nii.gz", True), (".nii", False),
                                              (".nrrd", False), (".mha", False)])
def test_truncated_images_are_refused_not_zero_filled(tmp_path, suffix, compress):
    from wsicl.imageio import read_image
    array = np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(make_image(array), str(path), compress)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(path)), array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=f"scan{suffix}.*(truncated|corrupt)"):
        read_image(path)


def test_a_header_claiming_a_huge_image_is_refused_before_reading(tmp_path):
    from wsicl.imageio import read_image
    path = tmp_path / "hostile.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 5000 5000 5000\n"
                     b"encoding: raw\nendian: little\n\n" + bytes(64))
    with pytest.raises(ValueError, match="hostile.nrrd: its header claims 125,000,000,000"):
        read_image(path)
