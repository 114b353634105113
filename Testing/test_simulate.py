"""Prompt simulation follows the paper: area-weighted slices, one prompt per component."""
import numpy as np
import pytest

from wsicl.training.simulate import choose_slices, jittered_box, simulate_prompts


def hand_made_mask():
    """Axial slices 2, 5 and 7 hold 10, 30 and 60 voxels; slice 5 has two components."""
    mask = np.zeros((10, 20, 20), dtype=bool)
    mask[2, 0:2, 0:5] = True
    mask[5, 0:3, 0:5] = True
    mask[5, 10:13, 10:15] = True
    mask[7, 5:11, 5:15] = True
    return mask


def test_slice_frequencies_follow_area():
    mask, rng = hand_made_mask(), np.random.default_rng(0)
    counts = np.bincount(np.concatenate([choose_slices(mask, 1, rng) for _ in range(20000)]),
                         minlength=10)
    assert set(np.flatnonzero(counts)) == {2, 5, 7}
    assert np.allclose(counts[[2, 5, 7]] / 20000, [0.1, 0.3, 0.6], atol=0.015)


def test_without_replacement_up_to_the_available_slices():
    chosen = choose_slices(hand_made_mask(), 10, np.random.default_rng(1))
    assert sorted(chosen.tolist()) == [2, 5, 7]


def test_one_prompt_per_connected_component():
    mask = hand_made_mask()
    for kind in ("box", "point"):
        rng = np.random.default_rng(2)
        prompts = simulate_prompts(mask, kind, 3, rng)
        assert len(prompts) == 4
    points = simulate_prompts(mask, "point", 3, np.random.default_rng(3))
    assert all(mask[p] for p in points)
    boxes = simulate_prompts(mask, "box", 3, np.random.default_rng(3))
    assert all(stop - start == 1 for (start, stop), _, _ in boxes)


def test_box_corner_jitter_is_rounded_standard_normal():
    pixels = np.argwhere(np.ones((10, 10), dtype=bool)) + 20
    rng = np.random.default_rng(4)
    shifts = np.array([[b[1][0] - 20, b[2][0] - 20, b[1][1] - 30, b[2][1] - 30]
                       for b in (jittered_box(0, pixels, (1, 64, 64), rng) for _ in range(20000))])
    reference = np.rint(np.random.default_rng(5).standard_normal(200000))
    for column in shifts.T:
        assert set(np.unique(column)) <= set(range(-6, 7))
        assert abs(column.mean()) < 0.03
        assert column.std() == pytest.approx(reference.std(), abs=0.03)
        assert np.mean(column == 0) == pytest.approx(np.mean(reference == 0), abs=0.015)


def test_boxes_stay_inside_and_non_empty_at_the_border():
    pixels = np.array([[0, 0], [0, 1]])
    for seed in range(200):
        box = jittered_box(3, pixels, (8, 8, 8), np.random.default_rng(seed))
        assert all(0 <= start < stop <= 8 for start, stop in box)


def test_deterministic_under_a_seed_and_empty_mask_gives_nothing():
    mask = hand_made_mask()
    first = simulate_prompts(mask, "box", 2, np.random.default_rng(9))
    assert first == simulate_prompts(mask, "box", 2, np.random.default_rng(9))
    assert simulate_prompts(np.zeros((4, 4, 4)), "point", 2, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="prompt kind"):
        simulate_prompts(mask, "scribble", 1, np.random.default_rng(0))
