"""The network reproduces the reference implementation and keeps its parameter names."""
import json

import numpy as np
import pytest
import torch

from conftest import DATA
from wsicl import load_model
from wsicl.network import WSICLNet


@pytest.fixture(scope="module")
def reference_io():
    return np.load(DATA / "tiny_reference_io.npz")


@pytest.mark.parametrize("mini_context", [1, 2, 3])
@pytest.mark.parametrize("prompt_key, output_key", [("box_prompts", "out_box"),
                                                    ("point_prompts", "out_point")])
def test_reference_outputs_reproduced(reference_io, mini_context, prompt_key, output_key):
    network = load_model(DATA / "tiny_reference.ckpt")
    with torch.inference_mode():
        output = network(torch.from_numpy(reference_io["target_normalized"]),
                         torch.from_numpy(reference_io["context_normalized"]),
                         torch.from_numpy(reference_io[prompt_key]), mini_context)
    difference = np.abs(output.numpy() - reference_io[output_key]).max()
    assert difference < 1e-4


def test_released_architecture_matches_manifest():
    manifest = json.loads((DATA / "full_size_state_dict_shapes.json").read_text(encoding="utf-8"))
    expected = {key[len("net."):]: shape for key, shape in manifest.items()}
    actual = {key: list(value.shape) for key, value in WSICLNet().state_dict().items()}
    assert actual == expected
    assert sum(np.prod(s) for s in expected.values()) == 70_854_913


def test_context_order_and_chunking_do_not_matter(tiny_network):
    torch.manual_seed(1)
    target = torch.rand(1, 1, 32, 32, 32)
    images, prompts = torch.rand(1, 5, 1, 32, 32, 32), (torch.rand(1, 5, 1, 32, 32, 32) > 0.8)
    with torch.inference_mode():
        whole = tiny_network(target, images, prompts.float(), 5)
        chunked = tiny_network(target, images, prompts.float(), 2)
        order = torch.tensor([4, 2, 0, 3, 1])
        shuffled = tiny_network(target, images[:, order], prompts[:, order].float(), 3)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert torch.allclose(whole, shuffled, atol=1e-5)


def test_gradients_reach_every_parameter(tiny_network):
    tiny_network.train()
    output = tiny_network(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 2, 1, 32, 32, 32),
                          torch.rand(1, 2, 1, 32, 32, 32), 2)
    output.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_network.parameters())


@pytest.mark.parametrize("shapes, message", [
    (((1, 1, 32, 32, 32), (1, 0, 1, 32, 32, 32)), "empty"),
    (((1, 1, 32, 32, 32), (1, 2, 1, 16, 32, 32)), "disagree"),
    (((1, 1, 30, 30, 30), (1, 2, 1, 30, 30, 30)), "multiple of 4"),
    (((1, 32, 32, 32), (1, 2, 1, 32, 32, 32)), "target must be"),
])
def test_bad_shapes_are_named(tiny_network, shapes, message):
    target_shape, context_shape = shapes
    with pytest.raises(ValueError, match=message):
        tiny_network(torch.rand(target_shape), torch.rand(context_shape),
                     torch.rand(context_shape), 1)


def _step(network: WSICLNet, inputs, precision: str) -> tuple:
    """One training step's output and gradients (forward at ``precision``, loss in fp32)."""
    from wsicl.device import autocast
    network.zero_grad(set_to_none=True)
    with autocast(torch.device("cpu"), precision):
        output = network(*inputs, 2).float()
    output.square().mean().backward()
    return output.detach(), [p.grad.clone() for p in network.parameters()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pointwise_convolutions_compute_what_conv3d_computes(monkeypatch, precision):
    """The 1x1x1 convolutions run as matrix products on the CPU in fp32 (PyTorch's 3D
    1x1x1 kernel there is slow and channels-first): a training step's output and every
    gradient match those of ``F.conv3d`` (fp32: 1e-5 of the output's and each gradient's
    largest magnitude, float rounding of another summation order; bf16 keeps the
    convolution, so it is identical), and no fp32 convolution falls back to the slow kernel."""
    import torch.nn.functional as F
    from wsicl import network as module
    torch.manual_seed(3)
    network = WSICLNet([8, 16, 32]).train().to(memory_format=torch.channels_last_3d)
    inputs = (torch.rand(2, 1, 16, 16, 16), torch.rand(2, 3, 1, 16, 16, 16),
              (torch.rand(2, 3, 1, 16, 16, 16) > 0.7).float())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fast = _step(network, inputs, precision)
    assert not any("slow_conv3d" in event.name for event in profile.events())
    monkeypatch.setattr(module, "pointwise", lambda x, w, b=None: F.conv3d(x, w, b))
    slow = _step(network, inputs, precision)
    tolerance = 1e-5 if precision == "fp32" else 0.0
    for fast_part, slow_part in zip([fast[0], *fast[1]], [slow[0], *slow[1]]):
        scale = float(slow_part.abs().max())
        assert float((fast_part - slow_part).abs().max()) <= tolerance * scale
