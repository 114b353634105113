"""The crop rule, the episode engine, its training loop and crop-aware inference."""
import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import cpu_fp32, make_image, sphere_volume
from wsicl import Box, ContextSet, Point
from wsicl.checkpoints import ModelInfo, build_model, read_training_state
from wsicl.crops import crop_region, robust_unit_range, whole_region
from wsicl.training.episode_training import RunConfig, train
from wsicl.training.losses import segmentation_loss
from wsicl.metrics import dice
from wsicl.training.episodes import EngineConfig, EpisodeEngine, Source
from wsicl.geometry import Grid, canonical_grid, model_grid, prepare
from wsicl.network import WSICLNet
from wsicl.training.sources import load_bundle, read_source, save_bundle


# ---- the crop rule ------------------------------------------------------------------------

def test_crop_is_a_cube_in_millimetres_around_the_box():
    low, high = crop_region([10, 20, 20], [10, 40, 30], spacing=[5.0, 1.0, 1.0],
                            shape=[40, 100, 100], margin=2.0, min_side_mm=10)
    side_mm = (high - low) * np.array([5.0, 1.0, 1.0])
    assert np.allclose(side_mm, 40.0)  # 2 x the largest extent (20 voxels of 1 mm)
    assert np.allclose((low + high) / 2, [10, 30, 25])


def test_small_boxes_get_the_minimum_side_and_crops_stay_inside_keeping_their_size():
    low, high = crop_region([1, 1, 1], [2, 2, 2], spacing=[1, 1, 1], shape=[100, 100, 100],
                            margin=1.6, min_side_mm=40)
    assert np.allclose(low, -0.5) and np.allclose(high - low, 40)
    low, high = crop_region([0, 0, 0], [90, 9, 9], spacing=[1, 1, 1], shape=[50, 50, 50])
    assert np.allclose(low, -0.5) and np.allclose(high, 49.5)  # larger than the image


def test_robust_unit_range_clips_outliers_per_volume():
    volume = torch.linspace(0, 1, 1000).reshape(1, 10, 10, 10).repeat(2, 1, 1, 1)
    volume[1] *= 50
    volume[0, 0, 0, 0] = 1e6
    out = robust_unit_range(volume)
    assert out.min() == 0 and out.max() == 1
    assert torch.allclose(out[0, 5], out[1, 5], atol=2e-3)  # the outlier moved one rank


def test_region_grid_matches_the_whole_image_grid(blob_image):
    whole = model_grid(blob_image, 16)
    same = model_grid(blob_image, 16, whole_region(blob_image.GetSize()))
    assert whole == same
    half = model_grid(blob_image, 16, (np.array([-0.5, -0.5, -0.5]), np.array([19.5, 35.5, 23.5])))
    assert np.allclose(half.spacing, np.array(whole.spacing) * [0.5, 1, 1])
    assert np.allclose(half.origin, whole.origin - np.array([whole.spacing[0] / 4, 0, 0]))


# ---- the episode engine -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources():
    """Two small labelled volumes sharing a structure name (ball), one anisotropic."""
    made = []
    for index, spacing in enumerate([(2.0, 1.0, 1.0), (1.5, 1.5, 1.5)]):
        labels = np.zeros((24, 40, 40), dtype=np.int64)
        labels[sphere_volume(labels.shape, (12, 18 + index, 20), 9.0, spacing[::-1])] = 1
        labels[2:6, 4:30, 4:30] = 2
        image = labels * 50.0 + np.random.default_rng(index).normal(0, 4, labels.shape)
        made.append(Source(f"volume {index}", torch.tensor(image, dtype=torch.float32),
                           torch.from_numpy(labels), spacing, {1: "ball", 2: "slab"}))
    return made


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_batches_have_the_network_shapes_and_prompts_on_the_structure(sources, prompt):
    engine = EpisodeEngine(sources, EngineConfig(size=16, prompt=prompt, max_context=3), seed=0)
    for step in range(4):
        batch = engine.batch(step, 3)
        count = batch.context.shape[1]
        assert batch.target.shape == (3, 1, 16, 16, 16)
        assert batch.context.shape == batch.prompts.shape == (3, count, 1, 16, 16, 16)
        assert float(batch.target.min()) >= 0 and float(batch.target.max()) <= 1
        assert all(float(m.sum()) > 0 for m in batch.target_mask)
        assert all(float(p.sum()) > 0 for p in batch.prompts.flatten(0, 1))
        assert float(batch.prompts.max()) == 1.0 and len(batch.tasks) == 3


def test_interactive_batches_prompt_the_target_itself(sources):
    config = EngineConfig(size=16, interactive_fraction=1.0)
    batch = EpisodeEngine(sources, config, seed=3).batch(0, 2)
    assert batch.context.shape[1] == 1
    assert torch.equal(batch.context[:, 0], batch.target)
    overlap = (batch.prompts[:, 0] * batch.target_mask).flatten(1).sum(1)
    assert bool((overlap > 0).all())


def test_point_crops_follow_the_point_as_at_inference_so_large_structures_overflow_them():
    # Inference crops a fixed 96 mm cube around a point, whatever the structure's size;
    # training once sized point crops by the structure, so a point never met a structure
    # larger than its crop and the model learned that a point means a small object.
    labels = np.zeros((80, 160, 160), dtype=np.int64)
    labels[20:60, 30:130, 30:130] = 1                        # 80 x 200 x 200 mm of 160 x 320 x 320
    image = labels * 50.0 + np.random.default_rng(0).normal(0, 4, labels.shape)
    big = Source("big", torch.tensor(image, dtype=torch.float32), torch.from_numpy(labels),
                 (2.0, 2.0, 2.0), {1: "block"})
    config = EngineConfig(size=16, prompt="point", interactive_fraction=1.0,
                          shapes_fraction=0.0, pseudo_fraction=0.0)
    batch = EpisodeEngine([big], config, seed=1).batch(0, 8)
    masks = batch.target_mask[:, 0]
    faces = [masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1], masks[:, :, :, 0],
             masks[:, :, :, -1]]
    touched = sum(face.flatten(1).any(1).int() for face in faces)
    assert bool((touched >= 2).all()) and float(masks.mean()) > 0.3  # sized by it: 0, 0.22
    overlap = (batch.prompts[:, 0] * masks).flatten(1).sum(1)
    assert bool((overlap > 0).all())


def test_batches_depend_only_on_seed_and_step(sources):
    config = EngineConfig(size=16)
    first = EpisodeEngine(sources, config, seed=5).batch(7, 2)
    again = EpisodeEngine(sources, config, seed=5).batch(7, 2)
    other = EpisodeEngine(sources, config, seed=6).batch(7, 2)
    assert torch.equal(first.target, again.target) and torch.equal(first.prompts, again.prompts)
    assert not torch.equal(first.target, other.target)


def test_random_shapes_alone_need_no_source():
    batch = EpisodeEngine([], EngineConfig(size=16, shapes_fraction=1.0), seed=0).batch(0, 2)
    assert all(task.startswith("random shapes") for task in batch.tasks)


# ---- sources and bundles ------------------------------------------------------------------

def test_bundle_round_trip_and_files(tmp_path, sources):
    path = save_bundle(sources, tmp_path / "sources.pt", ["made in a test"])
    loaded = load_bundle(path)
    assert [s.name for s in loaded] == [s.name for s in sources]
    assert torch.equal(loaded[0].labels, sources[0].labels)
    assert torch.allclose(loaded[0].image, sources[0].image, atol=0.05)
    assert loaded[1].structures == {1: "ball", 2: "slab"}
    labels = sources[0].labels.numpy().astype(np.uint8)
    sitk.WriteImage(make_image(sources[0].image.numpy(), (1, 1, 2)), str(tmp_path / "i.nii.gz"))
    sitk.WriteImage(make_image(labels, (1, 1, 2)), str(tmp_path / "l.nii.gz"))
    read = read_source(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz", "file", {1: "ball"})
    assert read.structures == {1: "ball"} and read.spacing == (2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="not a WSICL sources bundle"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_bundle(tmp_path / "bad.pt")


# ---- training -----------------------------------------------------------------------------

def test_mixed_loss_weighs_a_missed_voxel_ten_not_a_hundred_marked_ones():
    """On a batch of structures of 8 voxels in 4096, at a prediction of 0.5 everywhere: how
    much more a foreground voxel's gradient pulls than a background voxel's (float32, to
    within 25 %): about 100 under ``balanced`` (over-segmenting is nearly free), about 10
    under ``mixed``; both still near 0 loss for confident correct logits."""
    mask = torch.zeros(4, 1, 16, 16, 16)
    mask[:, :, 7:9, 7:9, 7:9] = 1
    pulls = {}
    for kind in ("balanced", "mixed"):
        logits = torch.zeros_like(mask, requires_grad=True)
        segmentation_loss(logits, mask, kind).backward()
        pulls[kind] = float(-logits.grad[0, 0, 7, 7, 7] / logits.grad[0, 0, 0, 0, 0])
        assert float(segmentation_loss((mask - 0.5) * 40, mask, kind)) < 0.01
    assert 75 < pulls["balanced"] < 125 and 7.5 < pulls["mixed"] < 12.5, pulls


def test_loss_is_low_for_confident_correct_logits():
    mask = torch.zeros(2, 1, 8, 8, 8)
    mask[:, :, 2:6, 2:6, 2:6] = 1
    assert float(segmentation_loss((mask - 0.5) * 40, mask)) < 0.01
    assert float(segmentation_loss(-(mask - 0.5) * 40, mask)) > 1.0


def test_balanced_loss_does_not_reward_an_empty_prediction_of_a_small_structure():
    """Per-episode soft Dice with smoothing barely tells "nothing" from a half-right guess on a
    structure of a few voxels; the balanced loss must (float32, a margin of 0.3)."""
    mask = torch.zeros(4, 1, 16, 16, 16)
    mask[:, :, 7:9, 7:9, 7:9] = 1                  # 8 voxels of 4096
    empty = torch.full_like(mask, -8.0)
    half = torch.where(mask > 0, torch.tensor(0.5), torch.tensor(-8.0))
    half[:, :, 7] = -8.0                           # half the structure found, weakly
    assert float(segmentation_loss(empty, mask, "balanced")) > \
        float(segmentation_loss(half, mask, "balanced")) + 0.3
    assert float(segmentation_loss((mask - 0.5) * 40, mask, "balanced")) < 0.01
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(empty, mask, "focal")


def test_training_writes_resumable_checkpoints_and_crop_metadata(tmp_path, sources):
    bundle = save_bundle(sources, tmp_path / "sources.pt", ["test"])
    config = RunConfig(output=str(tmp_path / "run"), sources=str(bundle), channels=[4, 8, 16],
                       size=16, batch=2, steps=3, max_context=2, device="cpu", precision="fp32",
                       validation_batches=1, export=str(tmp_path / "model.pt"))
    summary = train(config, log=lambda message: None)
    assert summary["step"] == 3 and "val_dice" in summary["history"][-1]
    exported = cpu_fp32(str(tmp_path / "model.pt"))
    assert exported.metadata.input_policy == "crop" and exported.metadata.output == "logit"
    assert exported.metadata.normalisation == "robust" and exported.refine
    resumed = train(dataclasses.replace(config, steps=4), log=lambda message: None)
    assert resumed["step"] == 4
    assert read_training_state(tmp_path / "run" / "last.pt")["step"] == 4


def test_training_reports_its_throughput_and_profiles_its_parts(tmp_path, sources):
    """The run says episodes/s, L = 1-equivalent episodes/s, the share of time spent making
    data and the achieved TFLOP/s at its end; --profile measures engine, network and whole
    steps apart and writes nothing. FLOPs per step are counted, so they grow with L."""
    from wsicl.training.episode_training import StepCost
    bundle = save_bundle(sources, tmp_path / "sources.pt", ["test"])
    config = RunConfig(output=str(tmp_path / "run"), sources=str(bundle), channels=[4, 8, 16],
                       size=16, batch=2, steps=2, max_context=2, device="cpu", precision="fp32",
                       validation_batches=1)
    said = []
    train(dataclasses.replace(config, workers=2), log=said.append)    # episodes from workers
    rates = [json.loads(line) for line in said if "episodes_per_s" in line]
    assert rates and rates[-1]["step"] == 2
    assert rates[-1]["episodes_per_s"] > 0 and 0 < rates[-1]["data_wait"] < 1
    assert rates[-1]["l1_episodes_per_s"] >= rates[-1]["episodes_per_s"] * 0.99
    assert rates[-1]["tflops"] > 0
    said.clear()
    profiled = train(dataclasses.replace(config, output=str(tmp_path / "profiled"), profile=2),
                     log=said.append)["profile"]
    for key in ("engine_episodes_per_s", "network_steps_per_s", "network_tflops",
                "run_data_wait", "run_l1_episodes_per_s", "peak_tflops"):
        assert profiled[key] > 0, key
    assert profiled["precision"] == "fp32"
    assert profiled["network_share_of_peak"] == pytest.approx(
        profiled["network_tflops"] / profiled["peak_tflops"], abs=1e-3)   # rounded to 1e-4
    assert 0 <= profiled["run_share_of_peak"] < 1
    assert json.loads(said[-1])["profile"] == profiled
    assert not (tmp_path / "profiled" / "last.pt").exists()
    cost = StepCost(build_model(ModelInfo(channels=[4, 8, 16], input_size=16)), 16,
                    torch.device("cpu"), "fp32")
    assert 0 < cost.context < cost.flops(1, 1) < cost.flops(1, 2) < cost.flops(2, 2)


def test_the_first_interrupt_ends_training_after_the_step_with_a_checkpoint(tmp_path, sources):
    bundle = save_bundle(sources, tmp_path / "sources.pt", ["test"])
    config = RunConfig(output=str(tmp_path / "run"), sources=str(bundle), channels=[4, 8, 16],
                       size=16, batch=1, steps=1000, minutes=30, max_context=2, device="cpu",
                       precision="fp32", validation_batches=1)
    said = []

    def log(message: str) -> None:                  # the rate line comes at step 20
        said.append(message)
        if "planning" in message:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    summary = train(config, log=log)
    assert summary["step"] == 21 and any("stopping after this step" in m for m in said)
    assert read_training_state(tmp_path / "run" / "last.pt")["step"] == 21
    assert signal.getsignal(signal.SIGTERM) is before


# ---- crop-aware inference -----------------------------------------------------------------

@pytest.fixture
def crop_network():
    torch.manual_seed(0)
    return build_model(ModelInfo(channels=[4, 8, 16], input_size=16, prompt_kinds=["box"],
                                 normalisation="robust", input_policy="crop", output="logit"))


@pytest.fixture
def wide_image():
    """A 120 x 100 x 30 (i, j, k) volume at 1 x 1 x 3 mm with a 7 mm ball."""
    ball = sphere_volume((30, 100, 120), (15, 50, 60), 7.0, (1.0, 1.0, 3.0))
    array = (ball * 100.0 + np.random.default_rng(0).normal(0, 5, ball.shape))
    return make_image(array.astype(np.float32), (1.0, 1.0, 3.0))


def test_interactive_crop_is_zero_outside_the_crop_and_sees_finer_voxels(crop_network,
                                                                          wide_image):
    predictor = cpu_fp32(crop_network)
    box = Box((55, 45, 15), (65, 55, 15))
    result = predictor.segment_interactive(wide_image, boxes=[box])
    probability = sitk.GetArrayFromImage(result.probability)
    assert Grid.of(result.mask) == Grid.of(wide_image)
    assert probability.min() >= 0 and probability.max() <= 1  # a sigmoid, not a logit
    inside = np.argwhere(probability > 0)  # a sigmoid is > 0 wherever the network ran
    extent_mm = (inside.max(0) - inside.min(0) + 1) * np.array([3.0, 1.0, 1.0])
    assert np.all(extent_mm <= 40 + 2 * 3.0) and np.all(extent_mm >= 30)  # the 40 mm cube
    whole = cpu_fp32(crop_network, refine=False).segment_interactive(
        wide_image, boxes=[box])
    assert np.count_nonzero(sitk.GetArrayFromImage(whole.probability)) > len(inside)


def test_in_context_the_context_prompts_guide_the_first_crop(crop_network, wide_image):
    """A context box that covers most of its image guides nothing: two passes (whole
    view, then refined); a small one: one pass where it points."""
    calls = []
    predictor = cpu_fp32(crop_network)
    context = ContextSet(name="ball").add(wide_image, [Box((55, 45, 15), (65, 55, 15))])
    prepared = predictor.prepare_context(context)
    assert prepared.crops is not None and prepared.crops.images.shape == prepared.images.shape
    assert not torch.equal(prepared.crops.prompts, prepared.prompts)
    predictor.segment(wide_image, prepared, progress=lambda f, m: calls.append((f, m)))
    assert calls[0][1].startswith("where the context points")
    everything = ContextSet(name="all").add(wide_image, [Box((2, 2, 15), (117, 97, 15))])
    assert predictor.prepare_context(everything).guide.region(canonical_grid(wide_image)) \
        is None
    calls.clear()
    with pytest.warns(Warning):          # the random network finds nothing in the whole view
        predictor.segment(wide_image, everything, progress=lambda f, m: calls.append((f, m)))
    assert calls[0][1].startswith("whole view") and calls[-1][0] <= 0.5


def test_the_guide_maps_each_prompt_box_by_its_place_in_the_image_extent(crop_network):
    """Context boxes as fractions of their own image's extent, their union mapped into a
    target of another size, spacing and orientation, then the crop rule (40 mm at least)."""
    noise = np.random.default_rng(0).normal(size=(20, 80, 100)).astype(np.float32)
    context_image, other = (make_image(noise, (2.0, 2.0, 6.0)) for _ in range(2))
    context = ContextSet(name="s").add(context_image, [Box((27, 29, 10), (33, 35, 10))])
    context.add(other, [Box((30, 30, 12), (40, 36, 12))])
    guide = cpu_fp32(crop_network).prepare_context(context).guide
    # in-plane the boxes' outer voxel faces, through-plane their slices' centres
    assert np.allclose(guide.low, [27 / 100, 29 / 80, 10.5 / 20])
    assert np.allclose(guide.high, [41 / 100, 37 / 80, 12.5 / 20])
    target = Grid((200, 160, 40), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    low, high = guide.region(target)
    centre = (low + high) / 2
    assert np.allclose(centre, ((guide.low + guide.high) / 2) * [200, 160, 40] - 0.5)
    extent_mm = (guide.high - guide.low) * [200, 160, 40] * [1.0, 1.0, 3.0]
    assert np.allclose((high - low) * [1.0, 1.0, 3.0], max(40.0, 1.6 * extent_mm.max()))


def test_an_oracle_in_context_finds_the_structure_where_the_context_points():
    """Two bright balls in the target; the context marks the one at the same place in its
    own (coarser) image: the guided crop segments that one and not the other, where a
    whole-view first pass would have taken both."""
    oracle = Oracle([2, 4])
    oracle.metadata = ModelInfo(channels=[2, 4], input_size=32, prompt_kinds=["box"],
                                normalisation="robust", input_policy="crop", output="logit")
    context_ball = sphere_volume((20, 80, 100), (10, 32, 30), 6.0, (2.0, 2.0, 6.0))
    context_image = make_image(context_ball.astype(np.float32) * 100, (2.0, 2.0, 6.0))
    context = ContextSet(name="ball").add(context_image, [Box((27, 29, 10), (33, 35, 10))])
    marked = sphere_volume((40, 160, 200), (20, 64, 60), 6.0, (1.0, 1.0, 3.0))
    other = sphere_volume((40, 160, 200), (20, 130, 160), 6.0, (1.0, 1.0, 3.0))
    target = make_image((marked | other).astype(np.float32) * 100, (1.0, 1.0, 3.0))
    calls = []
    mask = sitk.GetArrayFromImage(cpu_fp32(oracle).segment(
        target, context, progress=lambda f, m: calls.append(m)).mask)
    assert dice(mask, marked) > 0.9 and not mask[other].any()
    assert all(m.startswith("where the context points") for m in calls)


def test_points_get_the_larger_point_crop(crop_network, wide_image):
    points = ContextSet(name="ball").add(wide_image, points=[Point((60, 50, 15))])
    region = cpu_fp32(crop_network)._prompt_region(points.entries[0],
                                                                   Grid.of(wide_image))
    assert np.allclose((region[1] - region[0]) * np.array([1, 1, 3]), [96, 96, 90])


def test_crop_grows_towards_the_faces_the_answer_runs_into():
    from wsicl.predictor import _grown
    oriented = Grid((200, 200, 50), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    region = (np.array([80.0, 80.0, 10.0]), np.array([120.0, 120.0, 30.0]))  # 40 mm cube
    inside = np.zeros((16, 16, 16), dtype=bool)
    inside[5:10, 5:10, 5:10] = True
    assert _grown(region, inside, oriented) is None
    touching = inside.copy()
    touching[6, 6, 10:] = True                     # runs into the high face of array axis 2 (i)
    low, high = _grown(region, touching, oriented)
    assert np.allclose((high - low) * oriented.spacing, 60.0)   # 1.5 x, still a cube in mm
    assert np.isclose((low[0] + high[0]) / 2, 110.0)            # moved 10 voxels towards +i
    assert np.allclose((low[1:] + high[1:]) / 2, [100.0, 20.0])
    at_border = (np.array([160.0, 80.0, 10.0]), np.array([199.5, 120.0, 30.0]))
    assert _grown(at_border, touching, oriented) is None        # that face is the image's
    # an answer filling its crop (a point inside a large organ) grows on every side
    low, high = _grown(region, np.ones((16, 16, 16), dtype=bool), oriented)
    assert np.allclose((high - low) * oriented.spacing, 60.0)
    assert np.allclose((low + high) / 2, [100.0, 100.0, 20.0])


@pytest.mark.parametrize("direction", [tuple(np.eye(3).ravel()),
                                       (-1, 0, 0, 0, 1, 0, 0, 0, -1),
                                       (0, 0, 1, 1, 0, 0, 0, 1, 0)])  # flipped; permuted axes
def test_crops_land_around_the_prompt_in_physical_space(crop_network, direction):
    spacing = (0.8, 1.1, 2.5)
    array = np.random.default_rng(1).normal(size=(30, 70, 80)).astype(np.float32)
    image = make_image(array, spacing, (12.0, -30.0, 7.0), direction)
    low, high = (20, 25, 14), (36, 45, 14)        # a 2D box on slice k = 14 (voxel i, j, k)
    centre = image.TransformContinuousIndexToPhysicalPoint(
        [(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, 14.0])
    entry = ContextSet(name="s").add(image, [Box(low, high)]).entries[0]
    predictor = cpu_fp32(crop_network)
    region = predictor._prompt_region(entry, canonical_grid(image))
    prepared = prepare(image, 16, "image", region, "robust")
    middle = prepared.grid.index_to_lps(np.array([[7.5, 7.5, 7.5]]))[0]
    assert np.allclose(middle, centre, atol=max(spacing) / 2 + 1e-6)
    # 1.6 x the box's largest side (21 voxels x 1.1 mm = 23.1 mm) is under the 40 mm minimum
    assert np.allclose(np.array(prepared.grid.spacing) * 16, 40.0)


class Oracle(WSICLNet):
    """Answers 'bright' as a logit: what a perfect network would say here."""

    def forward(self, target, context_in, context_out, mini_context=1, after_chunk=None,
                encoded=None):
        return (target - 0.5) * 40


def test_an_oracle_through_the_crop_path_recovers_a_small_sphere():
    oracle = Oracle([2, 4])
    oracle.metadata = ModelInfo(channels=[2, 4], input_size=32, prompt_kinds=["box"],
                                normalisation="robust", input_policy="crop", output="logit")
    spacing = (0.7, 0.7, 3.0)
    ball = sphere_volume((40, 256, 256), (20, 120, 140), 6.0, spacing)  # 12 mm in 180 mm
    image = make_image(ball.astype(np.float32) * 100, spacing)
    box = Box((133, 113, 20), (147, 127, 20))
    crop = cpu_fp32(oracle).segment_interactive(image, boxes=[box]).mask
    whole = cpu_fp32(oracle, refine=False).segment_interactive(image,
                                                                             boxes=[box]).mask
    assert dice(sitk.GetArrayFromImage(crop), ball) > 0.97
    assert dice(sitk.GetArrayFromImage(whole), ball) < dice(sitk.GetArrayFromImage(crop), ball)


class Blind(WSICLNet):
    """Sees nothing anywhere (a logit of -20)."""

    def forward(self, target, context_in, context_out, mini_context=1, after_chunk=None,
                encoded=None):
        return torch.full_like(target, -20.0)


def test_when_refining_cannot_help_the_predictor_says_why(wide_image):
    from wsicl.predictor import RefineNote
    blind = Blind([2, 4])
    blind.metadata = ModelInfo(channels=[2, 4], input_size=16, prompt_kinds=["box"],
                               normalisation="robust", input_policy="crop", output="logit")
    context = ContextSet(name="ball").add(wide_image, [Box((55, 45, 15), (65, 55, 15))])
    with pytest.warns(RefineNote, match="scan.nii: the whole-view pass found nothing"):
        result = cpu_fp32(blind).segment(wide_image, context, name="scan.nii")
    assert not sitk.GetArrayFromImage(result.mask).any()
    everything = Box((0, 0, 15), (119, 99, 15))
    with pytest.warns(RefineNote, match="the prompts span the whole image"):
        cpu_fp32(blind).segment_interactive(wide_image, boxes=[everything])


def test_worker_processes_make_the_same_episodes_as_the_training_process(sources):
    """Batches depend only on (seed, step): two spawned workers give, in step order, the
    batches the engine makes in this process (bit for bit, one CPU thread each)."""
    from wsicl.training.loader import EpisodeLoader
    config = EngineConfig(size=16, prompt="box", max_context=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = [EpisodeEngine(sources, config, 3, "cpu").batch(step, 2)
                    for step in range(5, 10)]
    finally:
        torch.set_num_threads(threads)
    with EpisodeLoader(sources, config, 3, 2, "cpu", workers=2, start=5) as loader:
        made = [loader.next() for _ in range(5)]
    for mine, theirs in zip(made, expected):
        for field in ("target", "target_mask", "context", "prompts"):
            assert torch.equal(getattr(mine, field), getattr(theirs, field)), field
        assert mine.tasks == theirs.tasks
    with EpisodeLoader(sources, config, 3, 2, "cpu", workers=0, start=5) as loader:
        assert torch.equal(loader.next().target, expected[0].target)


def test_the_sampling_grid_reads_each_crop_voxel_where_the_geometry_says(sources):
    """Per voxel, the grid is the crop voxel's centre moved about the crop centre by the
    drawn rotation and scaling (millimetres, axis by axis as drawn) plus the drawn
    deformation, in the source's normalised (x, y, z) coordinates."""
    import math
    from wsicl.training.episodes import _smooth_noise
    source = sources[0]
    engine = EpisodeEngine(sources, EngineConfig(size=8), 0, "cpu")
    spacing, shape = np.array(source.spacing), np.array(source.labels.shape, dtype=float)
    low, high = np.array([2.0, 5.0, 4.0]), np.array([9.0, 19.0, 15.0])
    for strength in (0.0, 0.7):
        grid = engine._sampling_grid(source, (low, high), np.random.default_rng(5),
                                     torch.Generator().manual_seed(9), strength, 2)[0]
        rng, size = np.random.default_rng(5), 16
        matrix = np.eye(3)
        if strength:
            for axis, angle in enumerate(rng.uniform(-1, 1, 3) * math.radians(12) * strength):
                a, b = [x for x in range(3) if x != axis]
                turn = np.eye(3)
                turn[a, a] = turn[b, b] = math.cos(angle)
                turn[a, b], turn[b, a] = -math.sin(angle), math.sin(angle)
                matrix = matrix @ turn
            matrix = matrix @ np.diag(np.exp(rng.uniform(-0.15, 0.15, 3) * strength))
            moved = _smooth_noise((size,) * 3, 3, 5, torch.Generator().manual_seed(9),
                                  torch.device("cpu")).numpy()
            moved *= 0.03 * float(((high - low) * spacing).max()) * strength
        centre = (low + high) / 2
        for voxel in [(0, 0, 0), (15, 15, 15), (3, 11, 7), (8, 0, 14)]:
            index = low + (np.array(voxel) + 0.5) / size * (high - low)
            mm = matrix @ ((index - centre) * spacing)
            if strength:
                mm = mm + moved[(slice(None),) + voxel]
            expected = (2 * (mm / spacing + centre) + 1) / shape - 1
            assert np.allclose(grid[voxel].numpy(), expected[::-1], atol=1e-5), voxel


def test_a_ct_gives_its_body_air_and_bone_as_large_structures():
    """A phantom CT (air around a body at 40 HU with two lungs at -800 HU and a spine
    at 700 HU, 2 mm voxels): body (holes filled), air inside it and bone come back as
    sources of their own, sharing the image; a speck of air below 1 mL is dropped."""
    from wsicl.training.sources import ct_intensity_sources
    shape, spacing = (30, 60, 60), (2.0, 2.0, 2.0)
    body = sphere_volume(shape, (15, 30, 30), 50.0, spacing)
    lungs = sphere_volume(shape, (15, 30, 21), 8.0, spacing) | \
        sphere_volume(shape, (15, 30, 39), 8.0, spacing)
    spine = sphere_volume(shape, (15, 44, 30), 8.0, spacing)
    image = np.where(body, 40.0, -1000.0)
    image[lungs] = -800.0
    image[spine] = 700.0
    image[15, 20, 30] = -900.0                                    # 8 microlitres of air
    ct = Source("phantom CT", torch.from_numpy(image.astype(np.float32)),
                torch.zeros(shape, dtype=torch.int64), spacing, {})
    made = {s.name: s for s in ct_intensity_sources(ct)}
    assert sorted(made) == ["phantom CT air inside the body", "phantom CT body",
                            "phantom CT bone"]
    assert all(s.image is ct.image and s.structures == {1: s.name[len("phantom CT "):]}
               for s in made.values())
    labels = {name: s.labels.numpy() > 0 for name, s in made.items()}
    assert dice(labels["phantom CT body"], body) > 0.99
    assert dice(labels["phantom CT air inside the body"], lungs) > 0.99
    assert dice(labels["phantom CT bone"], spine) > 0.99


def test_random_shapes_include_organs_larger_than_any_crop():
    from wsicl.training.episodes import random_shapes_source
    fills = []
    for seed in range(12):
        source = random_shapes_source(np.random.default_rng(seed),
                                      torch.Generator().manual_seed(seed),
                                      torch.device("cpu"), size=24)
        fills += [float((source.labels == v).float().mean()) for v in source.structures]
    assert max(fills) > 0.3 and min(fills) < 0.1


def test_in_context_targets_are_also_cropped_as_the_context_guided_pass_sees_them():
    """Guided draws put the crop where prompt boxes on a few slices would, moved by a
    misregistration of 3 % of the image per axis: the crop centres scatter about the
    structure far more than around a simulated first pass's box (8 % of the structure)."""
    ball = torch.from_numpy(sphere_volume((40, 100, 100), (20, 50, 50), 6.0)).long()
    source = Source("ball", torch.rand(40, 100, 100), ball, (1.0, 1.0, 1.0), {1: "ball"})
    spreads = {}
    for fraction in (0.0, 1.0):
        engine = EpisodeEngine([source], EngineConfig(size=16, guided_fraction=fraction), 0)
        rng = np.random.default_rng(0)
        centres = [np.mean(engine._region(source, ball, rng, None, False), axis=0)
                   for _ in range(200)]
        spreads[fraction] = np.std(np.array(centres)[:, 1:], axis=0).mean()
    assert spreads[1.0] > 1.5 * spreads[0.0], spreads
