"""Dense masks as context: one structure of a label image, on its context image's grid.

A context mask is a uint8 0/1 SimpleITK image on exactly the grid of the context image it
belongs to (same size, spacing, origin and direction; arrays in (k, j, i) order). Label
images come as files or nodes in any integer type; a ``.seg.nrrd`` segment can be named by
its name. A label image on another grid that covers the same physical extent (within half
a voxel, LPS millimetres) is resampled onto the image's grid by nearest neighbour, with a
:class:`MaskResampledWarning`; any other grid is an error.
"""
import warnings
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from .geometry import Grid, box_corners, nonzero_faces

Label = Union[int, str, None]


class MaskError(ValueError):
    """A label image that cannot serve as a context mask, naming the entry and the fix."""


class MaskResampledWarning(UserWarning):
    """A context mask was stored on another grid than its image and was resampled."""


def segment_label(labels: sitk.Image, name: str, where: str) -> (int, Optional[int]):
    """Label value and layer of the ``.seg.nrrd`` segment called ``name`` (the segment
    metadata Slicer writes: ``SegmentN_Name``, ``SegmentN_LabelValue``, ``SegmentN_Layer``)."""
    keys = set(labels.GetMetaDataKeys())
    found = []
    index = 0
    while f"Segment{index}_Name" in keys:
        segment = labels.GetMetaData(f"Segment{index}_Name")
        found.append(segment)
        if segment == name:
            value = int(labels.GetMetaData(f"Segment{index}_LabelValue")) \
                if f"Segment{index}_LabelValue" in keys else 1
            layer = int(labels.GetMetaData(f"Segment{index}_Layer")) \
                if f"Segment{index}_Layer" in keys else None
            return value, layer
        index += 1
    if not found:
        raise MaskError(f"{where}: label {name!r} names a segment, but the mask file has no "
                        "segment names (not a .seg.nrrd); give the label as a number")
    raise MaskError(f"{where}: no segment named {name!r}; the file has "
                    f"{', '.join(repr(n) for n in found)}")


def select_label(labels: sitk.Image, label: Label, where: str) -> sitk.Image:
    """uint8 0/1 image of the voxels equal to ``label`` (any non-zero voxel when None).

    Raises :class:`MaskError` for non-integer label images, a missing label value or an
    empty result.
    """
    layer = None
    if isinstance(label, str):
        label, layer = segment_label(labels, label, where)
    if labels.GetNumberOfComponentsPerPixel() > 1:
        if layer is None:
            raise MaskError(f"{where}: the mask has {labels.GetNumberOfComponentsPerPixel()} "
                            "layers (overlapping segments); name the segment as the label")
        labels = sitk.VectorIndexSelectionCast(labels, layer)
    if labels.GetDimension() != 3:
        raise MaskError(f"{where}: the mask is {labels.GetDimension()}D; a context mask is a "
                        "3D label image")
    array = sitk.GetArrayViewFromImage(labels)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise MaskError(f"{where}: the mask holds non-integer values (a probability map?); "
                        "threshold it into a label image first")
    selected = array != 0 if label is None else array == int(label)
    if not selected.any():
        present = np.unique(array[array != 0])[:8].astype(int).tolist()
        what = "no non-zero voxel" if label is None else (
            f"no voxel with label {label} (labels present: {present or 'none'})")
        raise MaskError(f"{where}: the mask has {what}; an empty mask shows the model nothing")
    mask = sitk.GetImageFromArray(selected.astype(np.uint8))
    mask.CopyInformation(labels)
    return mask


def physical_extent(grid: Grid) -> np.ndarray:
    """``[2, 3]`` LPS lower and upper corners of the box around the grid's outer voxel
    faces."""
    corners = grid.index_to_lps(box_corners(np.full(3, -0.5), np.array(grid.size) - 0.5))
    return np.stack([corners.min(0), corners.max(0)])


def on_image_grid(mask: sitk.Image, image: sitk.Image, where: str) -> sitk.Image:
    """``mask`` on ``image``'s grid: as it is when the grids match, resampled by nearest
    neighbour (with a :class:`MaskResampledWarning`) when it covers the same extent."""
    mask_grid, image_grid = Grid.of(mask), Grid.of(image)
    if mask_grid.matches(image_grid):
        result = sitk.Image(mask)
        result.CopyInformation(image)
        return result
    gap = np.abs(physical_extent(mask_grid) - physical_extent(image_grid)).max()
    if gap > 0.5 * max(image_grid.spacing + mask_grid.spacing):
        raise MaskError(f"{where}: the mask covers another physical extent than its image "
                        f"(corners differ by up to {gap:.1f} mm); give the mask that was drawn "
                        "on this image")
    warnings.warn(f"{where}: the mask's grid differs from its image's (size "
                  f"{list(mask_grid.size)} vs {list(image_grid.size)}); resampled onto the "
                  "image by nearest neighbour", MaskResampledWarning, stacklevel=3)
    return sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                         sitk.sitkUInt8)


def context_mask(labels: sitk.Image, image: sitk.Image, label: Label = None,
                 where: str = "mask") -> sitk.Image:
    """The structure ``label`` of ``labels`` as a uint8 0/1 mask on ``image``'s grid.

    ``label``: a label value, a ``.seg.nrrd`` segment name, or None for any non-zero voxel.
    """
    if not isinstance(labels, sitk.Image):
        raise MaskError(f"{where}: expected a SimpleITK label image, got "
                        f"{type(labels).__name__}")
    mask = on_image_grid(select_label(labels, label, where), image, where)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise MaskError(f"{where}: the mask vanishes on its image's grid (thinner than a "
                        "voxel); give a mask drawn on this image")
    return mask


def mask_corners(mask: sitk.Image) -> np.ndarray:
    """``[8, 3]`` LPS corners of the box around the mask's voxels (their outer faces)."""
    return Grid.of(mask).index_to_lps(box_corners(*nonzero_faces(
        sitk.GetArrayViewFromImage(mask))))
