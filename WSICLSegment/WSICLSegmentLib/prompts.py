"""Markups nodes to engine prompts in the voxel indices of the volume they annotate.

A box is an ROI node; a point is a control point of a point-list node. Both are converted
through world RAS into continuous IJK indices of the context volume, so a box drawn on a
slice of an oblique or anisotropic volume stays on that slice.
"""
from typing import List

import numpy as np

from wsicl import Box, Point
from wsicl.geometry import covered_indices

from .volumes import ijk_to_world_ras


def _world_to_ijk(volume_node, ras: np.ndarray) -> np.ndarray:
    """``[N, 3]`` world RAS millimetres to continuous IJK indices of ``volume_node``."""
    matrix = np.linalg.inv(ijk_to_world_ras(volume_node))
    homogeneous = np.c_[np.asarray(ras, dtype=float), np.ones(len(ras))]
    return (homogeneous @ matrix.T)[:, :3]


def roi_to_box(roi_node, volume_node) -> Box:
    """An ROI node as an inclusive voxel box of ``volume_node``.

    Along an IJK axis where the ROI is thinner than one voxel (an ROI drawn as a 2D box on
    a slice) the box collapses to the nearest slice.
    """
    index = _world_to_ijk(volume_node, roi_world_corners(roi_node))
    low, high = zip(*(covered_indices(index[:, axis].min(), index[:, axis].max())
                      for axis in range(3)))
    return Box(low, high, "voxel")


def flatten_roi(roi_node) -> None:
    """Makes a freshly drawn ROI a 2D box: zero size along its thinnest axis (the normal of
    the slice it was drawn on)."""
    size = list(roi_node.GetSize())
    size[min(range(3), key=lambda axis: size[axis])] = 0.0
    roi_node.SetSize(*size)


def roi_world_corners(roi_node) -> np.ndarray:
    """The 8 corners ``[8, 3]`` of an ROI node in world RAS."""
    object_to_world = np.array([[roi_node.GetObjectToWorldMatrix().GetElement(r, c)
                                 for c in range(4)] for r in range(4)])
    half = np.array(roi_node.GetSize()) / 2
    local = np.array([[sx, sy, sz, 1.0] for sx in (-half[0], half[0])
                      for sy in (-half[1], half[1]) for sz in (-half[2], half[2])])
    return (local @ object_to_world.T)[:, :3]


def points_to_prompts(point_list_node, volume_node) -> List[Point]:
    """Control points of a point-list node as voxel points (nearest voxel) of the volume."""
    positions = []
    for index in range(point_list_node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        point_list_node.GetNthControlPointPositionWorld(index, position)
        positions.append(position)
    if not positions:
        return []
    return [Point(tuple(int(round(v)) for v in ijk), "voxel")
            for ijk in _world_to_ijk(volume_node, np.array(positions))]
