"""Tasks, training and evaluation on tiny synthetic data."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CPU_FP32, make_image, sphere_volume
from wsicl import load_model
from wsicl.checkpoints import read_training_state
from wsicl.cli import main
from wsicl.training.losses import weighted_smooth_l1
from wsicl.training.tasks import load_nnunet_dataset, sample_episode, synthetic_task
from wsicl.training.train import TaskSampler, TrainConfig, prompt_channels, train

TINY = dict(channels=[4, 8, 16], size=32, max_context=2, val_every=3, val_episodes=2,
            checkpoint_every=2, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three subjects with a ball (label 1) and a slab (label 2), nnU-Net layout."""
    folder = tmp_path_factory.mktemp("Dataset001_Tiny")
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        labels = np.zeros((20, 30, 30), dtype=np.uint8)
        labels[sphere_volume(labels.shape, (10, 14 + index, 15), 6 + index)] = 1
        labels[3:6, 5:25, 5:25] = 2
        image = labels * 40.0 + rng.normal(0, 3, labels.shape)
        spacing = (1.0, 1.0, 1.5)
        sitk.WriteImage(make_image(image.astype(np.float32), spacing),
                        str(folder / "imagesTr" / f"case{index}_0000.nii.gz"))
        sitk.WriteImage(make_image(labels, spacing),
                        str(folder / "labelsTr" / f"case{index}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "ball": 1, "slab": 2}, "channel_names": {"0": "MR"}}),
        encoding="utf-8")
    return folder


def test_every_label_is_a_task(dataset):
    tasks = load_nnunet_dataset(dataset, 32)
    assert [t.name for t in tasks] == [f"{dataset.name}/ball", f"{dataset.name}/slab"]
    assert all(len(t.subjects) == 3 for t in tasks)
    assert all(s.image.shape == (32, 32, 32) and s.mask.any() for s in tasks[0].subjects)


def test_missing_dataset_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_nnunet_dataset(tmp_path, 32)


def test_episodes_are_deterministic_and_flips_are_shared(dataset):
    task = load_nnunet_dataset(dataset, 32)[0]
    first = sample_episode(task, 3, np.random.default_rng(5))
    second = sample_episode(task, 3, np.random.default_rng(5))
    assert torch.equal(first.context_images, second.context_images)
    assert first.context_images.shape == (3, 1, 32, 32, 32)
    assert 0 <= first.target_image.min() and first.target_image.max() <= 1
    interactive = sample_episode(task, 2, np.random.default_rng(6), interactive=True)
    assert torch.equal(interactive.context_images[0], interactive.target_image)
    centres = [np.argwhere(m[0].numpy() > 0.5).mean(axis=0) for m in first.context_masks]
    assert np.ptp(np.array(centres), axis=0).max() < 8


def test_synthetic_tasks_have_a_structure():
    for seed in range(5):
        task = synthetic_task(np.random.default_rng(seed), 32)
        subject = task.subjects[0]
        assert 0 < subject.mask.sum() < subject.mask.size
        assert subject.image.min() == 0.0 and subject.image.max() == 1.0


def test_loss_falls_on_a_fixed_batch(tiny_network):
    config = TrainConfig(output="unused", synthetic=True, **TINY)
    episode, prompts = TaskSampler(config, []).episode(0)
    network = tiny_network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        raw = network(episode.target_image[None], episode.context_images[None], prompts[None], 2)
        loss = weighted_smooth_l1(raw, episode.target_mask[None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_prompt_channels_render_simulated_prompts():
    masks = torch.zeros(2, 1, 16, 16, 16)
    masks[:, :, 4:10, 4:10, 4:10] = 1
    boxes = prompt_channels(masks, "box", 2, np.random.default_rng(0))
    points = prompt_channels(masks, "point", 2, np.random.default_rng(0))
    assert boxes.shape == points.shape == (2, 1, 16, 16, 16)
    assert set(torch.unique(boxes).tolist()) == {0.0, 1.0}
    assert points.max() == 1.0


def test_resume_continues_bit_exactly(tmp_path, dataset):
    straight = TrainConfig(output=str(tmp_path / "straight"), steps=4, synthetic=True,
                           datasets=[str(dataset)], **TINY)
    train(straight, log=lambda line: None, show_progress=False)
    interrupted = TrainConfig(output=str(tmp_path / "resumed"), steps=2, synthetic=True,
                              datasets=[str(dataset)], **TINY)
    train(interrupted, log=lambda line: None, show_progress=False)
    resumed = TrainConfig(output=str(tmp_path / "resumed"), steps=4, synthetic=True,
                          datasets=[str(dataset)], **TINY)
    train(resumed, log=lambda line: None, show_progress=False)
    a = read_training_state(tmp_path / "straight" / "last.pt")
    b = read_training_state(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert any("val_dice" in record for record in a["history"])


def test_train_command_writes_a_loadable_model(tmp_path, dataset, capsys):
    assert main(["train", "--synthetic", "--steps", "2", "--channels", "4,8,16", "--size", "32",
                 "--output", str(tmp_path / "run"), *CPU_FP32, "--quiet",
                 "--val-dataset", str(dataset), "--val-every", "2",
                 "--prompt", "point"]) == 0
    network = load_model(tmp_path / "run" / "last.pt")
    assert network.metadata.prompt_kinds == ["point"] and network.metadata.input_size == 32
    assert "trained to step 2" in capsys.readouterr().out


def test_train_command_crop_recipe_trains_for_refinement(tmp_path, dataset, capsys):
    common = ["train", "--steps", "2", "--channels", "4,8,16", "--size", "16", "--batch", "1",
              "--max-context", "2", "--output", str(tmp_path / "run"), *CPU_FP32,
              "--quiet"]
    assert main(common + ["--recipe", "crop", "--dataset", str(dataset)]) == 0
    network = load_model(tmp_path / "run" / "last.pt")
    assert network.metadata.input_policy == "crop" and network.metadata.input_size == 16
    assert read_training_state(tmp_path / "run" / "last.pt")["step"] == 2
    assert "trained to step 2" in capsys.readouterr().out
    assert main(common + ["--recipe", "crop", "--synthetic", "--dataset", str(dataset)]) == 1
    assert "drop --synthetic" in capsys.readouterr().err
    assert main(common + ["--recipe", "crop"]) == 1
    assert "--dataset DIR and/or --sources BUNDLE" in capsys.readouterr().err
    assert main(common + ["--minutes", "1", "--synthetic"]) == 1
    assert "add --recipe crop" in capsys.readouterr().err


def test_evaluate_writes_table_json_and_plots(tmp_path, dataset, tiny_network, capsys):
    from wsicl import save_model
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    output = tmp_path / "evaluation"
    assert main(["evaluate", "--dataset", str(dataset), "--model", str(tmp_path / "tiny.pt"),
                 "--context-sizes", "1,2", "--prompts-per-image", "1,2", "--draws", "2",
                 "--output", str(output), *CPU_FP32, "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "average" in table and "baseline" in table and "+/-" in table
    result = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    assert len(result["records"]) == 2 * 3 * 2 * 2 * 2
    assert all(0 <= r["dice"] <= 1 for r in result["records"])
    for name in ("dice_vs_context_size.png", "dice_vs_annotation_time.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", "--dataset", str(dataset), "--model", str(tmp_path / "tiny.pt"),
                 "--mode", "interactive", "--prompts-per-image", "1", "--draws", "1",
                 "--output", str(output), *CPU_FP32, "--quiet"]) == 0


def test_evaluate_under_torchrun_spreads_the_cases_and_gives_the_one_process_result(
        tmp_path, dataset, tiny_network):
    """`torchrun --standalone --nproc-per-node 2 -m wsicl.cli evaluate ...` (2 CPU ranks,
    loopback): each rank runs every other case, rank 0 gathers them, and the records are
    those of one process (fp32; same draws, same Dice)."""
    import subprocess
    import sys
    from wsicl import save_model
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    common = ["evaluate", "--dataset", str(dataset), "--model", str(tmp_path / "tiny.pt"),
              "--context-sizes", "1,2", "--prompts-per-image", "1", "--draws", "2", *CPU_FP32,
              "--quiet"]
    assert main(common + ["--output", str(tmp_path / "one")]) == 0
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "wsicl.cli", *common, "--output", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("wrote ") == 1                    # rank 0 alone writes
    one, two = (json.loads((tmp_path / run / "evaluation.json").read_text(encoding="utf-8"))
                for run in ("one", "two"))
    assert len(one["records"]) == 2 * 3 * 2 * 2
    assert [r["case"] for r in two["records"]] == list(range(len(one["records"])))
    assert two["records"] == one["records"] and two["summary"] == one["summary"]


def test_evaluate_with_dense_mask_context(tmp_path, dataset, tiny_network, capsys):
    from wsicl import save_model
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    common = ["evaluate", "--dataset", str(dataset), "--model", str(tmp_path / "tiny.pt"),
              "--mode", "mask", "--context-sizes", "1,2", "--draws", "1", *CPU_FP32,
              "--quiet"]
    assert main(common + ["--output", str(tmp_path / "refused")]) == 1
    assert "has mask prompts but the model" in capsys.readouterr().err
    assert main(common + ["--output", str(tmp_path / "masks"), "--context-kind",
                          "box,mask"]) == 0
    result = json.loads((tmp_path / "masks" / "evaluation.json").read_text(encoding="utf-8"))
    assert result["kind"] == "mask" and result["mode"] == "mask"
    assert {r["prompts_per_image"] for r in result["records"]} == {1}
    assert all(r["prompts"] == r["context_size"] and "baseline_dice" not in r
               for r in result["records"])


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 1, -1, 0, 0, 0, -1, 0),
                                       (0.866, -0.5, 0, 0.5, 0.866, 0, 0, 0, 1)])
def test_simulated_prompts_land_on_the_same_model_voxels_through_the_full_path(direction):
    """Model-grid prompts given back as voxel prompts on the subject's own image render to
    the same model-grid prompts, up to the one model voxel that snapping to the image's
    coarser voxels can move them (a user can only prompt on the image's own voxels)."""
    from wsicl.geometry import box_to_model, point_to_model, prepare
    from wsicl.training.evaluate import EvalSubject, on_subject_image
    from wsicl.training.simulate import simulate_prompts
    from wsicl.training.tasks import label_on_grid
    labels = np.zeros((18, 30, 26), dtype=np.uint8)
    labels[sphere_volume(labels.shape, (9, 15, 12), 7.0, (0.8, 1.1, 2.0))] = 1
    image = make_image((labels * 50.0).astype(np.float32), (0.8, 1.1, 2.0), (3.0, -4.0, 9.0),
                       direction)
    label = make_image(labels, (0.8, 1.1, 2.0), (3.0, -4.0, 9.0), direction)
    prepared = prepare(image, 32)
    subject = EvalSubject("s", image, prepared, label, label_on_grid(label, prepared))
    rng = np.random.default_rng(0)
    simulated = simulate_prompts(subject.labels_on_grid == 1, "box", 3, rng)
    boxes, _ = on_subject_image(simulated, "box", subject)
    rendered = np.array([box_to_model(b.min, b.max, "voxel", prepared) for b in boxes])
    assert np.abs(rendered - np.array(simulated)).max() <= 1
    assert all(r[0][1] - r[0][0] == 1 for r in rendered)      # still 2D boxes on a slice
    simulated = simulate_prompts(subject.labels_on_grid == 1, "point", 3, rng)
    _, points = on_subject_image(simulated, "point", subject)
    rendered = np.array([point_to_model(p.position, "voxel", prepared) for p in points])
    assert np.abs(rendered - np.array(simulated)).max() <= 1


def test_evaluate_runs_the_full_path_with_refine(tmp_path, dataset, tiny_network, capsys):
    from wsicl import save_model
    save_model(tiny_network, tmp_path / "tiny.pt", tiny_network.metadata)
    for mode, extra in (("icl", []), ("interactive", []), ("mask", ["--context-kind",
                                                                    "box,mask"])):
        output = tmp_path / mode
        assert main(["evaluate", "--dataset", str(dataset), "--model", str(tmp_path / "tiny.pt"),
                     "--refine", "--mode", mode, "--context-sizes", "1", "--prompts-per-image",
                     "1", "--draws", "1", "--output", str(output), *CPU_FP32,
                     "--quiet", *extra]) == 0, capsys.readouterr().err
        records = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))["records"]
        assert len(records) == 2 * 3 and all(0 <= r["dice"] <= 1 for r in records)
