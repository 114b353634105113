"""Engine masks into segmentation nodes: one node per target, one segment per structure.

Writing a structure replaces only that structure's segment (through the segmentation
logic's binary-labelmap path, the one the Segment Editor uses); other segments and the
input volume are never touched. Each write records what it replaced, so it can be undone.
"""
import dataclasses
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

from wsicl.terminology import ANATOMICAL_STRUCTURE, anatomy_code

from .volumes import ijk_to_world_ras

NODE_SUFFIX = " WSICL"
SEGMENT_ID_PREFIX = "WSICL_"

def terminology_entry(name: str) -> Optional[str]:
    """A 3D Slicer terminology string for common anatomical names, else None."""
    found = anatomy_code(name)
    if found is None:
        return None
    code, meaning = found
    category, category_meaning = ANATOMICAL_STRUCTURE
    return ("Segmentation category and type - 3D Slicer General Anatomy list"
            f"~SCT^{category}^{category_meaning}"
            f"~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~^^~^^")


def segmentation_for(scene, volume_node):
    """The segmentation node ``<volume name> WSICL`` of a target (created if needed)."""
    node = result_node(scene, volume_node)
    if node is not None:
        return node
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume_node.GetName() + NODE_SUFFIX)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return node


def _nodes(scene, class_name: str) -> List[object]:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def oriented_labelmap(mask: sitk.Image, volume_node) -> "slicer.vtkOrientedImageData":
    """A uint8 mask on the volume's own voxel grid as vtkOrientedImageData."""
    array = sitk.GetArrayFromImage(mask).astype(np.uint8)
    dimensions = volume_node.GetImageData().GetDimensions()
    if array.shape != tuple(reversed(dimensions)):
        raise ValueError(f"mask shape {array.shape} does not fit volume "
                         f"'{volume_node.GetName()}' {tuple(reversed(dimensions))}")
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(*dimensions)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    labelmap.GetPointData().SetScalars(scalars)
    labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_world_ras(volume_node)))
    return labelmap


@dataclasses.dataclass
class SegmentWrite:
    """What one write replaced: enough to undo it."""

    segmentation_node: object
    segment_id: str
    created_node: bool
    created_segment: bool
    previous: Optional["slicer.vtkOrientedImageData"]


def write_structure(scene, segmentations_logic, volume_node, mask: sitk.Image, name: str,
                    colour: Sequence[float]) -> SegmentWrite:
    """Puts ``mask`` into segment ``name`` of the target's WSICL segmentation node."""
    labelmap = oriented_labelmap(mask, volume_node)
    existing = result_node(scene, volume_node)
    node = segmentation_for(scene, volume_node)
    segmentation = node.GetSegmentation()
    segment_id = structure_segment_id(name)
    previous = None
    created_segment = segmentation.GetSegment(segment_id) is None
    if created_segment:
        segmentation.AddEmptySegment(segment_id, name, list(colour))
        entry = terminology_entry(name)
        if entry:
            segmentation.GetSegment(segment_id).SetTag("TerminologyEntry", entry)
    else:
        previous = slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segment_id, previous)
    if not segmentations_logic.SetBinaryLabelmapToSegment(
            labelmap, node, segment_id, segmentations_logic.MODE_REPLACE,
            labelmap.GetExtent()):
        raise RuntimeError(f"could not write segment '{name}' into '{node.GetName()}'")
    return SegmentWrite(node, segment_id, existing is None, created_segment, previous)


def structure_segment_id(name: str) -> str:
    """The segment ID under which structure ``name``'s results are written."""
    return SEGMENT_ID_PREFIX + "".join(c if c.isalnum() else "_" for c in name)


def result_node(scene, volume_node):
    """The target's WSICL segmentation node, or None if nothing was segmented in it."""
    name = volume_node.GetName() + NODE_SUFFIX
    return next((n for n in _nodes(scene, "vtkMRMLSegmentationNode") if n.GetName() == name
                 and n.GetNodeReferenceID("referenceImageGeometryRef") == volume_node.GetID()),
                None)


def undo(scene, segmentations_logic, write: SegmentWrite) -> None:
    """Restores what ``write`` replaced (removes what it created)."""
    node = write.segmentation_node
    if write.created_node:
        scene.RemoveNode(node)
    elif write.created_segment:
        node.GetSegmentation().RemoveSegment(write.segment_id)
    else:
        segmentations_logic.SetBinaryLabelmapToSegment(
            write.previous, node, write.segment_id, segmentations_logic.MODE_REPLACE,
            write.previous.GetExtent())


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment as a (k, j, i) uint8 0/1 array on the volume's grid."""
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    reference = slicer.vtkOrientedImageData()
    reference.SetDimensions(volume_node.GetImageData().GetDimensions())
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_world_ras(volume_node)))
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, True)
    dimensions = resampled.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    return scalars.reshape(tuple(reversed(dimensions))).astype(np.uint8)
