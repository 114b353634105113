"""Prompt rendering equals the reference bit for bit."""
import json

import numpy as np
import pytest

from conftest import DATA
from wsicl import PromptOutsideError, render_boxes, render_points


@pytest.fixture(scope="module")
def reference():
    return (json.loads((DATA / "tiny_reference_prompts.json").read_text(encoding="utf-8")),
            np.load(DATA / "tiny_reference_io.npz"))


def test_boxes_equal_reference(reference):
    prompts, io = reference
    for index, box in enumerate(prompts["boxes"]):
        rendered = render_boxes([box], (32, 32, 32))
        assert rendered.dtype == np.uint8
        assert np.array_equal(rendered, io["box_prompts"][0, index, 0])


def test_points_equal_reference(reference):
    prompts, io = reference
    for index, points in enumerate(prompts["points"]):
        rendered = render_points(points, (32, 32, 32))
        assert rendered.dtype == np.float32
        assert np.array_equal(rendered, io["point_prompts"][0, index, 0])


def test_boxes_union_and_points_maximum():
    a, b = ((2, 6), (2, 6), (2, 6)), ((4, 9), (4, 9), (4, 9))
    union = render_boxes([a, b], (12, 12, 12))
    assert np.array_equal(union, np.maximum(render_boxes([a], (12,) * 3),
                                            render_boxes([b], (12,) * 3)))
    points = render_points([(10, 10, 10), (14, 10, 10)], (24, 24, 24))
    single = [render_points([p], (24, 24, 24)) for p in [(10, 10, 10), (14, 10, 10)]]
    assert np.array_equal(points, np.maximum(*single))
    assert points[10, 10, 10] == 1.0 and points[12, 10, 10] < 1.0


def test_thin_box_is_widened_to_three_slices_inside_the_grid():
    assert render_boxes([((5, 6), (0, 4), (0, 4))], (10, 10, 10))[:, 0, 0].nonzero()[0].tolist() \
        == [4, 5, 6]
    assert render_boxes([((9, 10), (0, 4), (0, 4))], (10, 10, 10))[:, 0, 0].nonzero()[0].tolist() \
        == [7, 8, 9]


def test_partly_outside_is_clipped_wholly_outside_is_an_error():
    clipped = render_boxes([((-3, 4), (8, 20), (0, 2))], (10, 10, 10))
    assert clipped.sum() == 4 * 2 * 2
    assert render_points([(-3, 5, 5)], (10, 10, 10)).max() > 0
    with pytest.raises(PromptOutsideError, match="outside"):
        render_boxes([((12, 14), (0, 2), (0, 2))], (10, 10, 10))
    with pytest.raises(PromptOutsideError, match="outside"):
        render_points([(30, 5, 5)], (10, 10, 10))


def test_malformed_boxes_are_rejected():
    with pytest.raises(ValueError, match="half-open"):
        render_boxes([((5, 5), (0, 2), (0, 2))], (10, 10, 10))
