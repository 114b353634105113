"""Scalar volume nodes to and from SimpleITK images, exactly.

MRML stores geometry as an IJK-to-RAS matrix; SimpleITK as LPS spacing, origin and
direction. Arrays are in (k, j, i) order on both sides.
"""
import numpy as np
import SimpleITK as sitk
import vtk

import slicer
from wsicl.geometry import LPS_RAS_FLIP

LPS_FROM_RAS = np.diag(LPS_RAS_FLIP)


def ijk_to_world_ras(volume_node) -> np.ndarray:
    """The 4x4 IJK-to-world-RAS matrix, including a linear parent transform.

    A non-linear parent transform cannot be represented on a regular grid: harden it first.
    """
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise ValueError(f"volume '{volume_node.GetName()}' is under a non-linear transform; "
                             "harden the transform (Data module) before segmenting")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def volume_to_image(volume_node) -> sitk.Image:
    """A float32 SimpleITK copy of a scalar volume node in world LPS geometry."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("the volume has no image data; load or select another volume")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volume_node.GetName()}' has several components per voxel "
                         "(colour or vector); convert it to a scalar volume first")
    return on_volume_grid(slicer.util.arrayFromVolume(volume_node).astype(np.float32),
                          volume_node)


def on_volume_grid(array, volume_node) -> sitk.Image:
    """A SimpleITK image holding ``array`` ((k, j, i) order, the volume's shape) on the
    volume node's grid in world LPS geometry (no voxels of the volume are copied)."""
    ijk_to_ras = ijk_to_world_ras(volume_node)
    axes = LPS_FROM_RAS @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((axes / spacing).ravel().tolist())
    image.SetOrigin((LPS_FROM_RAS @ ijk_to_ras[:3, 3]).tolist())
    return image


def image_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a SimpleITK image."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_FROM_RAS @ np.array(image.GetOrigin())
    return matrix


def image_to_volume(image: sitk.Image, volume_node) -> None:
    """Writes a SimpleITK image (voxels and geometry) into an existing volume node."""
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image_ijk_to_ras(image)))
