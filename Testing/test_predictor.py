"""The predictor on SimpleITK images: grids, context handling, progress, cancel, precision."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import DATA, cpu_fp32, make_image, rotation_direction
from wsicl import Box, Cancelled, ContextError, ContextSet, Point, Predictor, load_model
from wsicl.geometry import Grid


def context_of(image, boxes=None, points=None):
    return ContextSet(name="blob").add(image, boxes or [], points or [], "context image")


BOX = Box((12, 10, 8), (28, 26, 8))


def test_mask_is_uint8_on_the_target_grid(tiny_network, blob_image):
    target = make_image(sitk.GetArrayFromImage(blob_image), (1.2, 0.7, 2.0), (3, 4, 5),
                        rotation_direction(25.0))
    result = cpu_fp32(tiny_network).segment(target, context_of(blob_image, [BOX]))
    assert result.mask.GetPixelID() == sitk.sitkUInt8
    assert Grid.of(result.mask) == Grid.of(target)
    assert Grid.of(result.probability) == Grid.of(target)
    mask, probability = (sitk.GetArrayFromImage(i) for i in (result.mask, result.probability))
    assert np.array_equal(mask, (probability >= 0.5).astype(np.uint8))


def test_segment_equals_the_network_on_prepared_arrays(tiny_network, blob_image):
    predictor = cpu_fp32(tiny_network)
    context = predictor.prepare_context(context_of(blob_image, [BOX]))
    assert context.images.shape == (1, 1, 1, 32, 32, 32)
    assert context.prompts.sum() > 0
    result = predictor.segment(blob_image, context)
    again = predictor.segment(blob_image, context_of(blob_image, [BOX]))
    assert np.array_equal(sitk.GetArrayFromImage(result.probability),
                          sitk.GetArrayFromImage(again.probability))


def test_interactive_equals_own_context(tiny_network, blob_image):
    predictor = cpu_fp32(tiny_network)
    interactive = predictor.segment_interactive(blob_image, boxes=[BOX])
    explicit = predictor.segment(blob_image, context_of(blob_image, [BOX]))
    assert np.allclose(sitk.GetArrayFromImage(interactive.probability),
                       sitk.GetArrayFromImage(explicit.probability), atol=1e-6)


def test_segment_many_reports_progress_and_cancels(tiny_network, blob_image):
    predictor = cpu_fp32(tiny_network)
    context = ContextSet(name="blob").add(blob_image, [BOX]).add(blob_image, [BOX])
    reports = []
    results = list(predictor.segment_many([blob_image] * 3, context,
                                          progress=lambda f, m: reports.append((f, m))))
    assert [index for index, _ in results] == [0, 1, 2]
    assert reports[-1][0] == pytest.approx(1.0)
    assert all(b[0] >= a[0] for a, b in zip(reports, reports[1:]))
    calls = []
    list(predictor.segment_many([blob_image], context, cancel=lambda: calls.append(1)))
    first = len(calls)          # the checks of preparing the context and one target
    calls.clear()

    def cancel_during_second_target():
        calls.append(1)
        return len(calls) > first

    produced = []
    with pytest.raises(Cancelled):
        for item in predictor.segment_many([blob_image] * 3, context,
                                           cancel=cancel_during_second_target):
            produced.append(item)
    assert len(produced) == 1


@pytest.mark.parametrize("build, message", [
    (lambda image: ContextSet(name="liver"), "empty"),
    (lambda image: ContextSet(name="liver").add(image, name="scan 2"), "scan 2: has no prompt"),
    (lambda image: ContextSet().add(image, [BOX], [Point((1, 2, 3))], "scan 3"), "mixes"),
    (lambda image: ContextSet().add(image, [BOX]).add(image, points=[Point((1, 2, 3))]),
     "has point prompts but the model tiny test network was trained for box"),
    (lambda image: ContextSet().add(image, points=[Point((10, 10, 5))]),
     "trained for box prompts; give box prompts"),
])
def test_context_problems_are_named(tiny_network, blob_image, build, message):
    with pytest.raises(ContextError, match=message):
        cpu_fp32(tiny_network).segment(blob_image, build(blob_image))


def test_unavailable_device_is_an_error(tiny_network):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="not available"):
        Predictor(tiny_network, device="cuda")


def test_reduced_precision_keeps_the_mask():
    """bfloat16 on the CPU: same mask as fp32 on the reference fixture; raw outputs differ
    by up to about 0.05 on this random-weight network (documented in the README)."""
    io = np.load(DATA / "tiny_reference_io.npz")
    network = load_model(DATA / "tiny_reference.ckpt")
    inputs = [torch.from_numpy(io[k]) for k in ("target_normalized", "context_normalized",
                                                 "box_prompts")]
    with torch.inference_mode():
        full = network(*inputs, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = network.to(memory_format=torch.channels_last_3d)(*inputs, 1).float()
    assert (reduced - full).abs().max() < 0.1
    assert torch.equal(reduced >= 0.5, full >= 0.5)


def test_out_of_memory_suggests_a_smaller_mini_context(tiny_network, blob_image, monkeypatch):
    from wsicl import OutOfMemory
    predictor = cpu_fp32(tiny_network, mini_context=4)

    def exhausted(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "68719476736 bytes")

    monkeypatch.setattr(predictor.network, "forward", exhausted)
    with pytest.raises(OutOfMemory, match="smaller mini-context \\(now 4\\)"):
        predictor.segment(blob_image, context_of(blob_image, [BOX]))


def test_auto_device_prefers_accelerators(monkeypatch):
    from wsicl import device
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: True)
    assert device.available_devices()[0] == "cuda"
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    assert device.pick_device("auto").type == device.available_devices()[0]
    with pytest.raises(ValueError, match="unknown device"):
        device.pick_device("tpu")


def test_automatic_precision_is_bfloat16_only_where_the_hardware_has_it(monkeypatch, tmp_path):
    from wsicl import device
    cpu, cuda, mps = (torch.device(kind) for kind in ("cpu", "cuda", "mps"))
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: False)
    assert [device.resolve_precision(d, "auto") for d in (cpu, cuda, mps)] == [
        "fp32", "bf16", "fp32"]
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: True)
    assert device.resolve_precision(cpu, "auto") == "bf16"
    assert device.resolve_precision(cuda, "fp32") == "fp32"    # a stated precision wins
    assert isinstance(device.autocast(cuda, "fp32"), type(device.contextlib.nullcontext()))
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        device.resolve_precision(cpu, "fp16")
    flags = tmp_path / "cpuinfo"
    monkeypatch.undo()
    monkeypatch.setattr(device, "open", lambda *a, **k: open(flags, encoding="utf-8"),
                        raising=False)
    flags.write_text("processor : 0\nflags : fpu sse avx2 amx_bf16 amx_tile\n", encoding="utf-8")
    assert device.native_bf16_cpu()
    flags.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n", encoding="utf-8")
    assert not device.native_bf16_cpu()


def test_auto_precision_is_what_this_cpu_computes_natively(tiny_network, blob_image):
    """On the machine the test runs on, ``auto`` is bf16 exactly where the CPU has AMX or
    AVX512-BF16, and its output agrees with fp32: identical where ``auto`` is fp32, within
    1e-2 where it is bf16."""
    from wsicl.device import native_bf16_cpu
    automatic = Predictor(tiny_network, device="cpu")
    assert automatic.precision == ("bf16" if native_bf16_cpu() else "fp32")
    context = context_of(blob_image, [BOX])
    outputs = [sitk.GetArrayFromImage(predictor.segment(blob_image, context).probability)
               for predictor in (automatic, cpu_fp32(tiny_network))]
    if automatic.precision == "fp32":
        assert np.array_equal(*outputs)
    else:
        assert np.abs(outputs[0] - outputs[1]).max() < 1e-2


def test_bfloat16_path_stays_close_to_fp32(tiny_network, blob_image):
    """The bf16 path through the predictor (autocast, channels-last) on a small network:
    outputs within 1e-2 of fp32 (a check of the path; mask agreement of trained models is
    measured by benchmarks/precision_agreement.py on hardware with bfloat16)."""
    context = context_of(blob_image, [BOX])
    full, reduced = (sitk.GetArrayFromImage(Predictor(tiny_network, device="cpu",
                                                      precision=p).segment(blob_image, context)
                                            .probability) for p in ("fp32", "bf16"))
    assert Predictor(tiny_network, device="cpu", precision="bf16").precision == "bf16"
    assert 0 < np.abs(full - reduced).max() < 1e-2


def test_target_features_are_computed_once_per_target(tiny_network, blob_image, monkeypatch):
    """Several context sets on one target, and prompt updates on an unchanged view, reuse
    the target encoder's features; results equal a fresh predictor's, and the cached
    features are not modified by use."""
    predictor = cpu_fp32(tiny_network)
    calls = []
    encode = tiny_network.encode_target
    monkeypatch.setattr(tiny_network, "encode_target",
                        lambda target: calls.append(1) or encode(target))
    first = context_of(blob_image, [BOX])
    second = context_of(blob_image, [Box((5, 5, 10), (30, 30, 10))])
    results = [predictor.segment(blob_image, c).probability for c in (first, second, first)]
    assert len(calls) == 1
    predictor.segment_interactive(blob_image, boxes=[BOX])
    predictor.segment_interactive(blob_image, boxes=[Box((8, 8, 12), (30, 30, 12))])
    assert len(calls) == 1                        # the same whole view: still no new encoding
    other = make_image(np.flip(sitk.GetArrayFromImage(blob_image), 0).copy(), (0.9, 0.9, 1.5))
    predictor.segment(other, first)
    assert len(calls) == 2
    fresh = cpu_fp32(tiny_network).segment(blob_image, second).probability
    assert np.array_equal(sitk.GetArrayFromImage(results[1]), sitk.GetArrayFromImage(fresh))
    assert np.array_equal(sitk.GetArrayFromImage(results[0]), sitk.GetArrayFromImage(results[2]))


def test_a_context_set_used_again_is_not_resampled_again(tiny_network, blob_image,
                                                         monkeypatch):
    import wsicl.predictor as module
    prepared = []
    real = module.prepare
    monkeypatch.setattr(module, "prepare", lambda *a, **k: prepared.append(1) or real(*a, **k))
    predictor = cpu_fp32(tiny_network)
    first = predictor.prepare_context(context_of(blob_image, [BOX]))
    count = len(prepared)
    again = predictor.prepare_context(context_of(blob_image, [BOX]))     # a new, equal set
    assert len(prepared) == count
    assert torch.equal(first.images, again.images) and torch.equal(first.prompts, again.prompts)
    moved = predictor.prepare_context(context_of(blob_image, [Box((12, 10, 9), (28, 26, 9))]))
    assert len(prepared) == count + 1 and not torch.equal(moved.prompts, first.prompts)
    edited = sitk.Image(blob_image)
    edited[5, 5, 5] = 1000.0                                             # one voxel changed
    predictor.prepare_context(context_of(edited, [BOX]))
    assert len(prepared) == count + 2


def test_the_api_takes_images_and_says_how_to_read_a_file(tiny_network, blob_image):
    """A file name where an image belongs is refused where it is given, with the fix."""
    from wsicl import ContextSet, ImageError
    with pytest.raises(ImageError, match="context set 'liver', context 1: expected a "
                                         "SimpleITK image, got str 'ct1.nii.gz'; read files"):
        ContextSet(name="liver").add("ct1.nii.gz", boxes=[BOX])
    with pytest.raises(ImageError, match="mask: expected a SimpleITK image, got str"):
        ContextSet(name="liver").add(blob_image, mask="ct1_seg.nii.gz")
    predictor = cpu_fp32(tiny_network)
    context = context_of(blob_image, [BOX])
    for call in (lambda: predictor.segment("ct3.nii.gz", context),
                 lambda: list(predictor.segment_many(["ct3.nii.gz"], context)),
                 lambda: predictor.segment_interactive("ct3.nii.gz", boxes=[BOX])):
        with pytest.raises(ImageError, match="got str 'ct3.nii.gz'; read files first: "
                                             r"wsicl.read_image\(path\)"):
            call()


def test_auto_device_under_torchrun_takes_the_gpu_of_its_local_rank(monkeypatch):
    from wsicl import device
    monkeypatch.setattr(device, "available_devices", lambda: ["cuda", "cpu"])
    monkeypatch.setattr(device.torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert device.pick_device("auto") == torch.device("cuda", 2)
    monkeypatch.delenv("LOCAL_RANK")
    assert device.pick_device("auto") == torch.device("cuda")


def test_a_cancel_takes_effect_while_the_target_is_prepared(tiny_network, blob_image):
    """On a large volume reorienting and smoothing take seconds: a cancel asked for then
    stops the job before the network runs."""
    predictor = cpu_fp32(tiny_network)
    ran = []
    predictor._run = lambda *args, **kwargs: ran.append(1)
    with pytest.raises(Cancelled):
        predictor.segment_interactive(blob_image, [Box((10, 10, 8), (26, 28, 8))],
                                      cancel=lambda: True)
    assert not ran
