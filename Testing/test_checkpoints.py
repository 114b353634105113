"""Checkpoints load from every supported layout, and bad files fail with clear messages."""
import os

import pytest
import torch

from conftest import DATA
from wsicl import CheckpointError, ModelInfo, load_model, save_model
from wsicl.checkpoints import build_model


def test_lightning_checkpoint_architecture_from_hyper_parameters():
    network = load_model(DATA / "tiny_reference.ckpt")
    assert network.metadata.channels == [4, 8, 16]
    assert network.metadata.convs_per_stage == 2
    assert not network.training
    assert "epoch 3" in network.metadata.provenance


def test_project_format_round_trip(tmp_path, tiny_network):
    path = save_model(tiny_network, tmp_path / "model.pt", tiny_network.metadata)
    loaded = load_model(path)
    assert loaded.metadata.prompt_kinds == ["box"] and loaded.metadata.input_size == 32
    for key, value in tiny_network.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bare_state_dict_infers_architecture(tmp_path, tiny_network):
    path = tmp_path / "weights_point.pth"
    torch.save({"net." + k: v for k, v in tiny_network.state_dict().items()}, path)
    loaded = load_model(path)
    assert loaded.metadata.channels == [4, 8, 16]
    assert loaded.metadata.prompt_kinds == ["point"]


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": RunsACommand(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not marker.exists()


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes((DATA / "tiny_reference.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.ckpt.*truncated or corrupt"):
        load_model(path)


def test_missing_file_suggests_bundled_models(tmp_path):
    with pytest.raises(CheckpointError, match="no such file.*box"):
        load_model(tmp_path / "absent.ckpt")


def test_wrong_architecture_lists_the_mismatch(tmp_path, tiny_network):
    info = ModelInfo(channels=[4, 8, 32], input_size=32)
    path = save_model(tiny_network, tmp_path / "liar.pt", info)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_model(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_network):
    state = tiny_network.state_dict()
    state.pop("target_encoder.target_embedding.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"format": "wsicl-model", "format_version": 1,
                "metadata": tiny_network.metadata.to_dict(), "state_dict": state},
               tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match="missing keys: target_encoder.target_embedding."
                                              "bias; unexpected keys: extra.weight"):
        load_model(tmp_path / "keys.pt")


def test_not_a_checkpoint(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_model(tmp_path / "list.pt")


def test_newer_format_version_asks_for_an_update(tmp_path, tiny_network):
    torch.save({"format": "wsicl-model", "format_version": 99, "metadata": {},
                "state_dict": tiny_network.state_dict()}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="update wsicl"):
        load_model(tmp_path / "future.pt")


def test_build_model_is_in_eval_mode_with_metadata():
    network = build_model(ModelInfo(channels=[2, 4]))
    assert not network.training and network.metadata.channels == [2, 4]


@pytest.mark.parametrize("make, expected", [
    (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    (lambda path: path.write_bytes(bytes(range(256)) * 8), "not a PyTorch checkpoint"),
    (lambda path: path.mkdir(), "is a folder"),
])
def test_broken_weights_files_get_one_clear_line(tmp_path, make, expected):
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(CheckpointError) as raised:
        load_model(path)
    message = str(raised.value)
    assert expected in message and str(path) in message
    assert "weights_only" not in message and len(message) < 200 and "\n" not in message
