"""Reorientation, model-grid resampling and prompt mapping on awkward geometries."""
import threading
from typing import List

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, rotation_direction, sphere_volume
from wsicl import ImageError
from wsicl.geometry import (Grid, box_to_model, image_digest, point_to_model, prepare,
                            threshold, to_source_grid)
from wsicl.metrics import dice
from wsicl.prompts import PromptOutsideError

OBLIQUE = rotation_direction(17.0, axis=2)
FLIPPED = (-1, 0, 0, 0, 1, 0, 0, 0, -1)


def awkward_image(direction, spacing=(0.7, 1.1, 3.0), shape_kji=(20, 44, 50)) -> sitk.Image:
    rng = np.random.default_rng(3)
    array = rng.random(shape_kji).astype(np.float32)
    return make_image(array, spacing, origin=(12.0, -40.0, 7.5), direction=direction)


@pytest.mark.parametrize("orientation", ["RAI", "PIR", "SLA", "LPS"])
def test_storage_order_does_not_change_the_model_array(orientation):
    image = awkward_image(OBLIQUE)
    stored_differently = sitk.DICOMOrient(image, orientation)
    a, b = prepare(image, 16), prepare(stored_differently, 16)
    assert np.allclose(a.array, b.array, atol=1e-5)
    assert np.allclose(a.grid.direction, b.grid.direction)
    assert np.allclose(a.grid.origin, b.grid.origin, atol=1e-6)


def test_model_grid_spans_the_image_extent():
    image = awkward_image((1, 0, 0, 0, 1, 0, 0, 0, 1))
    prepared = prepare(image, 16)
    assert prepared.array.shape == (16, 16, 16)
    assert prepared.array.min() == 0.0 and prepared.array.max() == 1.0
    source, grid = Grid.of(image), prepared.grid
    for axis in range(3):
        assert np.isclose(source.size[axis] * source.spacing[axis],
                          grid.size[axis] * grid.spacing[axis])
    corner = np.array([[-0.5, -0.5, -0.5]])
    assert np.allclose(source.index_to_lps(corner), grid.index_to_lps(corner))


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED, rotation_direction(30.0, axis=0)])
def test_point_in_voxels_lps_and_ras_lands_on_the_same_model_voxel(direction):
    image = awkward_image(direction)
    prepared = prepare(image, 32)
    lps = Grid.of(image).index_to_lps(np.array([[20, 18, 6]]))[0]
    in_voxels = point_to_model((20, 18, 6), "voxel", prepared)
    assert point_to_model(lps, "LPS", prepared) == in_voxels
    assert point_to_model(lps * [-1, -1, 1], "RAS", prepared) == in_voxels


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED])
def test_a_2d_voxel_box_stays_2d_on_the_model_grid(direction):
    prepared = prepare(awkward_image(direction), 32)
    box = box_to_model((10, 12, 6), (30, 25, 6), "voxel", prepared)
    assert [stop - start for start, stop in box].count(1) == 1


def test_box_in_voxels_lps_and_ras_lands_on_the_same_model_voxels():
    image = awkward_image(FLIPPED)
    prepared = prepare(image, 32)
    low, high = np.array([10, 12, 6]), np.array([30, 25, 6])
    in_voxels = box_to_model(low, high, "voxel", prepared)
    extent = Grid.of(image).index_to_lps(np.array([low - [0.5, 0.5, 0], high + [0.5, 0.5, 0]]))
    low_lps, high_lps = extent.min(axis=0), extent.max(axis=0)
    assert box_to_model(low_lps, high_lps, "LPS", prepared) == in_voxels
    ras = extent * [-1, -1, 1]
    assert box_to_model(ras.min(axis=0), ras.max(axis=0), "RAS", prepared) == in_voxels


def test_a_box_on_one_thick_slice_stays_one_model_slice():
    thick = make_image(np.random.default_rng(0).random((6, 40, 40)).astype(np.float32),
                       spacing=(1.0, 1.0, 8.0))
    prepared = prepare(thick, 32)
    box = box_to_model((5, 5, 3), (30, 30, 3), "voxel", prepared)
    assert box[0][1] - box[0][0] == 1
    assert box[0][0] == int(round((3 + 0.5) * 32 / 6 - 0.5))


def test_prompts_outside_the_image_are_errors_partial_ones_are_clipped():
    prepared = prepare(awkward_image(OBLIQUE), 32)
    with pytest.raises(PromptOutsideError, match="outside the image"):
        box_to_model((100, 100, 1), (120, 120, 1), "voxel", prepared)
    with pytest.raises(PromptOutsideError, match="outside the image"):
        point_to_model((0, 0, 500), "voxel", prepared, radius=6)
    clipped = box_to_model((-10, -10, 2), (20, 20, 2), "voxel", prepared)
    assert all(start >= 0 for start, _ in clipped)


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED])
def test_sphere_survives_model_grid_and_back(direction):
    spacing, shape = (0.8, 0.8, 2.5), (40, 110, 110)
    ball = sphere_volume(shape, (20, 55, 55), 30.0, spacing)
    image = make_image(ball.astype(np.float32), spacing, (5, -3, 11), direction)
    prepared = prepare(image, 64)
    back = threshold(to_source_grid(prepared.array, prepared.grid, image))
    assert Grid.of(back) == Grid.of(image)
    assert dice(sitk.GetArrayFromImage(back), ball) > 0.97


def test_resampling_is_anti_aliased():
    stripes = np.zeros((16, 64, 64), dtype=np.float32)
    stripes[:, :, ::2] = 1.0
    stripes[0, 0, 1] = 0.5
    prepared = prepare(make_image(stripes), 16)
    assert prepared.array[2:-2, 2:-2, 2:-2].std() < 0.05


def test_two_and_four_dimensional_images_are_refused():
    with pytest.raises(ImageError, match="2D"):
        prepare(sitk.Image([10, 10], sitk.sitkFloat32), 16)
    four = sitk.JoinSeries([awkward_image(OBLIQUE)] * 2)
    with pytest.raises(ImageError, match="4D.*pick one volume"):
        prepare(four, 16)


def test_constant_image_is_refused():
    with pytest.raises(ImageError, match="constant"):
        prepare(make_image(np.full((8, 8, 8), 3.0, dtype=np.float32)), 16)


def test_vector_image_is_refused():
    vector = sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3)
    with pytest.raises(ImageError, match="3 components"):
        prepare(vector, 16)


def test_nan_voxels_take_the_minimum_and_all_nan_is_refused():
    array = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32) + 1.0
    with_nan = array.copy()
    with_nan[0, :4] = np.nan
    with_nan[1, 0, 0] = np.inf
    finite = np.isfinite(with_nan)
    replaced = np.where(finite, with_nan, with_nan[finite].min())
    result = prepare(make_image(with_nan), 8)
    assert np.isfinite(result.array).all()
    assert np.allclose(result.array, prepare(make_image(replaced), 8).array)
    with pytest.raises(ImageError, match="no finite voxel"):
        prepare(make_image(np.full((8, 8, 8), np.nan, dtype=np.float32)), 8)


def test_image_digest_is_safe_while_other_threads_read_the_same_image():
    # Regression: digesting through an array view of the caller's image made it unique in
    # place; four remote clients sharing one context image crashed CI with a segfault.
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((16, 32, 32), np.float32))
    expected = image_digest(image)
    digests: List[bytes] = []

    def digest_repeatedly() -> None:
        for _ in range(200):
            copy = sitk.Image(image)        # a caller's shallow copy shares the voxel buffer
            digests.append(image_digest(copy if len(digests) % 2 else image))

    threads = [threading.Thread(target=digest_repeatedly) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(digests) == 800 and set(digests) == {expected}


def test_canonical_grid_from_the_header_is_the_grid_of_the_reoriented_image():
    """The header-only canonical grid equals the geometry of the image ITK reorients, for
    axis permutations with flips and for oblique, right- and left-handed directions."""
    from wsicl.geometry import canonical, canonical_grid
    rng = np.random.default_rng(0)
    for trial in range(60):
        image = sitk.Image([int(v) for v in rng.integers(2, 9, 3)], sitk.sitkFloat32)
        image.SetSpacing([float(v) for v in rng.uniform(0.5, 3, 3)])
        image.SetOrigin([float(v) for v in rng.uniform(-50, 50, 3)])
        if trial % 3 == 0:
            direction = np.zeros((3, 3))
            direction[rng.permutation(3), range(3)] = rng.choice([-1, 1], 3)
        else:
            direction = np.array(rotation_direction(float(rng.uniform(-180, 180)),
                                                    int(rng.integers(3)))).reshape(3, 3)
            direction = direction @ np.array(rotation_direction(float(rng.uniform(-60, 60)),
                                                                 int(rng.integers(3)))
                                             ).reshape(3, 3)
            direction[:, 0] *= -1 if trial % 2 else 1
        image.SetDirection([float(v) for v in direction.ravel()])
        expected, found = Grid.of(canonical(image)), canonical_grid(image)
        assert found.size == expected.size
        for field in ("spacing", "origin", "direction"):
            assert np.allclose(getattr(found, field), getattr(expected, field), atol=1e-9)


@pytest.mark.parametrize("region", [None, ((4.0, 6.0, 2.0), (20.0, 26.0, 9.0))])
@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED])
def test_the_mask_resampled_slab_by_slab_equals_the_thresholded_probability(
        monkeypatch, region, direction):
    """Whole view and crop, oblique and flipped targets, slabs of 3 slices: the same voxels
    as thresholding the whole probability image (exact: each voxel is interpolated at the
    same point)."""
    import wsicl.geometry as geometry
    from wsicl.geometry import mask_on_grid, threshold, to_source_grid
    voxels = np.random.default_rng(1).normal(0, 1, (12, 30, 26)).astype(np.float32)
    target = make_image(voxels, (1.1, 0.9, 2.5), (3.0, -4.0, 7.0), direction)
    prepared = prepare(target, 16, region=region if region is None else
                       (np.array(region[0]), np.array(region[1])))
    values = np.random.default_rng(0).uniform(0, 1, (16, 16, 16)).astype(np.float32)
    monkeypatch.setattr(geometry, "SLAB_VOXELS", 3 * 26 * 30)
    checks = []
    slabbed = mask_on_grid(values, prepared.grid, target, check=lambda: checks.append(1))
    whole = threshold(to_source_grid(values, prepared.grid, target))
    assert len(checks) == 4                                     # 12 slices, 3 at a time
    assert np.array_equal(sitk.GetArrayFromImage(slabbed), sitk.GetArrayFromImage(whole))
    assert Grid.of(slabbed).matches(Grid.of(whole)) and slabbed.GetPixelID() == sitk.sitkUInt8
