"""Context sets as ordinary MRML nodes, saved and restored with the scene.

A context set is a ``vtkMRMLScriptedModuleNode`` (attribute ``WSICL.ContextSet``) holding
the structure's name, colour and prompt kind as parameters, and node references to its
context volumes (role ``wsiclContextVolume``) and prompt nodes (role ``wsiclPrompt``).
Each prompt node references the volume it annotates (role ``wsiclVolume``): boxes are ROI
nodes (one box each), points are control points of one point-list node per volume, a dense
mask is a segmentation node of the set's own with one segment (a copy: editing the
segment it came from does not change the context). All of it sits under one
subject-hierarchy folder per set, below a ``WSICL context sets`` folder.
"""
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

import slicer
import wsicl
from wsicl.context import PROMPT_KINDS, prompts_from_mask
from wsicl.contextfile import read_context_file, write_context_file
from wsicl.geometry import LPS_RAS_FLIP, Grid, to_lps, voxel_box_faces
from wsicl.imageio import write_atomic

from .prompts import points_to_prompts, roi_to_box
from .segments import oriented_labelmap, result_node, segment_array, structure_segment_id
from .volumes import (ijk_to_world_ras, image_ijk_to_ras, image_to_volume, on_volume_grid,
                      volume_to_image)

SET_ATTRIBUTE = "WSICL.ContextSet"
VOLUME_ROLE = "wsiclContextVolume"
PROMPT_ROLE = "wsiclPrompt"
PROMPT_VOLUME_ROLE = "wsiclVolume"
ROOT_FOLDER = "WSICL context sets"
DEFAULT_COLOUR = (0.90, 0.35, 0.25)


@dataclasses.dataclass
class ContextVolume:
    """One context volume of a set with its prompt nodes (``mask``: the set's segmentation
    node holding the volume's dense mask)."""

    volume: object
    rois: List[object]
    point_list: Optional[object]
    mask: Optional[object] = None

    @property
    def prompt_count(self) -> int:
        points = self.point_list.GetNumberOfControlPoints() if self.point_list else 0
        return len(self.rois) + points + (self.mask is not None)


def _referenced(node, role: str) -> List[object]:
    return [node.GetNthNodeReference(role, i) for i in range(node.GetNumberOfNodeReferences(role))
            if node.GetNthNodeReference(role, i) is not None]


def _folder(scene, parent_item: int, name: str) -> int:
    hierarchy = scene.GetSubjectHierarchyNode()
    item = hierarchy.GetItemChildWithName(parent_item, name)
    return item if item else hierarchy.CreateFolderItem(parent_item, name)


def _put_under(scene, folder: int, node) -> None:
    """Moves ``node``'s subject-hierarchy item under ``folder`` (creating the item if the
    node has none, as non-displayable nodes do)."""
    hierarchy = scene.GetSubjectHierarchyNode()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, folder)
    else:
        hierarchy.CreateItem(folder, node)


def _place_in_folder(scene, set_node, node) -> None:
    hierarchy = scene.GetSubjectHierarchyNode()
    _put_under(scene, hierarchy.GetItemParent(hierarchy.GetItemByDataNode(set_node)), node)


def create_context_set(scene, name: str, prompt_kind: str = "box",
                       colour: Sequence[float] = DEFAULT_COLOUR):
    """A new, empty context set for structure ``name`` whose volumes carry ``prompt_kind``
    prompts (``"box"``, ``"point"`` or ``"mask"``)."""
    if prompt_kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got "
                         f"{prompt_kind!r}")
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", name)
    node.SetAttribute(SET_ATTRIBUTE, "1")
    node.SetAttribute("ModuleName", "WSICLSegment")
    node.SetParameter("PromptKind", prompt_kind)
    set_colour(node, colour)
    hierarchy = scene.GetSubjectHierarchyNode()
    root = _folder(scene, hierarchy.GetSceneItemID(), ROOT_FOLDER)
    _put_under(scene, hierarchy.CreateFolderItem(root, name), node)
    return node


def context_sets(scene) -> List[object]:
    """Every context set of the scene, in creation order."""
    nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())
            if nodes.GetItemAsObject(i).GetAttribute(SET_ATTRIBUTE) == "1"]


def prompt_kind(set_node) -> str:
    return set_node.GetParameter("PromptKind") or "box"


def set_prompt_kind(set_node, kind: str) -> None:
    """Changes the set's prompt kind; only while none of its volumes has prompts."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got {kind!r}")
    if kind != prompt_kind(set_node) and any(e.prompt_count for e in context_volumes(set_node)):
        raise ValueError(f"context set '{set_node.GetName()}' already has "
                         f"{prompt_kind(set_node)} prompts; remove them or make a new set")
    set_node.SetParameter("PromptKind", kind)


def delete_context_set(scene, set_node) -> None:
    """Removes the set, its prompt nodes and its subject-hierarchy folder; its volumes and
    the segmentations of its results stay."""
    hierarchy = scene.GetSubjectHierarchyNode()
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(set_node))
    for entry in context_volumes(set_node):
        remove_context_volume(scene, set_node, entry.volume)
    scene.RemoveNode(set_node)
    if folder and folder != hierarchy.GetSceneItemID():
        hierarchy.RemoveItem(folder, False, True)   # the folder and what is left of its items


def colour(set_node) -> Tuple[float, float, float]:
    return tuple(float(v) for v in set_node.GetParameter("Colour").split(","))


def set_colour(set_node, rgb: Sequence[float]) -> None:
    set_node.SetParameter("Colour", ",".join(f"{float(c):.4f}" for c in rgb))


def add_context_volume(set_node, volume_node) -> None:
    """Adds a volume to the set (no-op if it is there already)."""
    if volume_node is None:
        raise ValueError("no volume selected; load a volume and select it first")
    if not set_node.HasNodeReferenceID(VOLUME_ROLE, volume_node.GetID()):
        set_node.AddNodeReferenceID(VOLUME_ROLE, volume_node.GetID())


def _prompt_nodes(set_node, volume_node) -> List[object]:
    return [p for p in _referenced(set_node, PROMPT_ROLE)
            if p.GetNodeReferenceID(PROMPT_VOLUME_ROLE) == volume_node.GetID()]


def remove_context_volume(scene, set_node, volume_node) -> None:
    """Removes a volume and its prompt nodes from the set (the volume itself stays)."""
    for prompt in _prompt_nodes(set_node, volume_node):
        scene.RemoveNode(prompt)
    for index in reversed(range(set_node.GetNumberOfNodeReferences(VOLUME_ROLE))):
        if set_node.GetNthNodeReferenceID(VOLUME_ROLE, index) == volume_node.GetID():
            set_node.RemoveNthNodeReferenceID(VOLUME_ROLE, index)


def _adopt_prompt(scene, set_node, volume_node, prompt_node) -> None:
    add_context_volume(set_node, volume_node)
    prompt_node.SetNodeReferenceID(PROMPT_VOLUME_ROLE, volume_node.GetID())
    set_node.AddNodeReferenceID(PROMPT_ROLE, prompt_node.GetID())
    display = prompt_node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*colour(set_node))
    _place_in_folder(scene, set_node, prompt_node)


def _require_kind(set_node, kind: str) -> None:
    used = prompt_kind(set_node)
    if used != kind:
        remedy = "add a segment" if used == "mask" else f"place a {used}"
        raise ValueError(f"context set '{set_node.GetName()}' uses {used} prompts; {remedy} "
                         f"or make a {kind} context set")


def new_box(scene, set_node, volume_node):
    """A new ROI node for a box on ``volume_node``, ready for Slicer's placement mode."""
    _require_kind(set_node, "box")
    count = len([p for p in _prompt_nodes(set_node, volume_node)]) + 1
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode",
                                  f"{set_node.GetName()} box {count} ({volume_node.GetName()})")
    roi.CreateDefaultDisplayNodes()
    _adopt_prompt(scene, set_node, volume_node, roi)
    return roi


def new_box_at(scene, set_node, volume_node, ijk: Sequence[float],
               size_mm: Sequence[float]):
    """A 2D box (zero thickness in S) of ``size_mm`` (R, A extents in mm) centred on voxel
    ``ijk`` of ``volume_node``, for scripts and tests."""
    roi = new_box(scene, set_node, volume_node)
    centre = ijk_to_world_ras(volume_node) @ np.r_[np.asarray(ijk, dtype=float), 1.0]
    roi.SetCenter(*centre[:3].tolist())
    roi.SetSize(float(size_mm[0]), float(size_mm[1]), 0.0)
    return roi


def point_list(scene, set_node, volume_node):
    """The set's point-list node for ``volume_node`` (created on first use)."""
    _require_kind(set_node, "point")
    for node in _prompt_nodes(set_node, volume_node):
        if node.IsA("vtkMRMLMarkupsFiducialNode"):
            return node
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                   f"{set_node.GetName()} points ({volume_node.GetName()})")
    node.CreateDefaultDisplayNodes()
    _adopt_prompt(scene, set_node, volume_node, node)
    return node


def remove_last_prompt(scene, set_node, volume_node) -> bool:
    """Deletes the newest prompt of ``volume_node`` in the set (the last point, else the
    last box, else the mask); False when it had none."""
    entry = next((e for e in context_volumes(set_node) if e.volume is volume_node), None)
    if entry is None:
        return False
    if entry.point_list is not None and entry.point_list.GetNumberOfControlPoints():
        entry.point_list.RemoveNthControlPoint(entry.point_list.GetNumberOfControlPoints() - 1)
    elif entry.rois or entry.mask is not None:
        remove_prompt(scene, set_node, entry.rois[-1] if entry.rois else entry.mask)
    else:
        return False
    return True


def use_result_as_context(scene, set_node, volume_node) -> None:
    """Adds the set's result on ``volume_node`` (its segment in the target's WSICL
    segmentation, as the user corrected it) to the set as context, like
    :func:`add_segment`; the volume then counts as context, not as a target."""
    node = result_node(scene, volume_node) if volume_node is not None else None
    segment_id = structure_segment_id(set_node.GetName())
    if node is None or node.GetSegmentation().GetSegment(segment_id) is None:
        raise ValueError(f"no result of '{set_node.GetName()}' on "
                         f"'{volume_node.GetName() if volume_node else 'no volume'}'; segment "
                         "it first (and correct it in the Segment Editor)")
    add_segment(scene, set_node, volume_node, node, segment_id)


def remove_prompt(scene, set_node, prompt_node) -> None:
    """Deletes one prompt node of the set (an ROI, a point list or a mask)."""
    for index in reversed(range(set_node.GetNumberOfNodeReferences(PROMPT_ROLE))):
        if set_node.GetNthNodeReferenceID(PROMPT_ROLE, index) == prompt_node.GetID():
            set_node.RemoveNthNodeReferenceID(PROMPT_ROLE, index)
    scene.RemoveNode(prompt_node)


def context_volumes(set_node) -> List[ContextVolume]:
    """The set's volumes with their prompt nodes."""
    entries = []
    for volume in _referenced(set_node, VOLUME_ROLE):
        prompts = _prompt_nodes(set_node, volume)
        rois = [p for p in prompts if p.IsA("vtkMRMLMarkupsROINode")]
        points = [p for p in prompts if p.IsA("vtkMRMLMarkupsFiducialNode")]
        masks = [p for p in prompts if p.IsA("vtkMRMLSegmentationNode")]
        entries.append(ContextVolume(volume, rois, points[0] if points else None,
                                     masks[0] if masks else None))
    return entries


def engine_prompts(entry: ContextVolume) -> Tuple[List[wsicl.Box], List[wsicl.Point]]:
    """The boxes and points of one context volume in its voxel indices."""
    boxes = [roi_to_box(roi, entry.volume) for roi in entry.rois]
    points = points_to_prompts(entry.point_list, entry.volume) if entry.point_list else []
    return boxes, points


def engine_mask(entry: ContextVolume) -> Optional[sitk.Image]:
    """The volume's dense mask as a uint8 0/1 image on its grid, or None."""
    if entry.mask is None:
        return None
    segmentation = entry.mask.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        return None
    return on_volume_grid(segment_array(entry.mask, segmentation.GetNthSegmentID(0),
                                        entry.volume), entry.volume)


def to_engine(set_node) -> wsicl.ContextSet:
    """The set as an engine context set (images copied from the volume nodes)."""
    context = wsicl.ContextSet(name=set_node.GetName())
    for entry in context_volumes(set_node):
        boxes, points = engine_prompts(entry)
        context.add(volume_to_image(entry.volume), boxes, points, entry.volume.GetName(),
                    mask=engine_mask(entry))
    return context


def set_mask(scene, set_node, volume_node, mask: sitk.Image):
    """Makes ``mask`` (0/1 on the volume's grid) the dense-mask prompt of ``volume_node``
    in a mask set, replacing the one it had; returns the set's segmentation node."""
    _require_kind(set_node, "mask")
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError(f"the mask for '{volume_node.GetName()}' is empty; segment the "
                         "structure first")
    for node in _prompt_nodes(set_node, volume_node):
        remove_prompt(scene, set_node, node)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   f"{set_node.GetName()} mask ({volume_node.GetName()})")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.AddSegmentFromBinaryLabelmapRepresentation(
        oriented_labelmap(mask, volume_node), set_node.GetName(), list(colour(set_node)))
    _adopt_prompt(scene, set_node, volume_node, node)
    return node


def add_segment(scene, set_node, volume_node, segmentation_node, segment_id: str) -> None:
    """Adds a segment drawn on ``volume_node`` to the set: a mask set keeps a copy of it,
    a box or point set gets the boxes or points that mark it on three slices
    (:func:`wsicl.context.prompts_from_mask`), which can be edited like placed ones."""
    if segmentation_node is None or not segment_id or \
            segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise ValueError("no segment selected; pick a segmentation and one of its segments")
    if volume_node is None:
        raise ValueError("no volume selected; pick the volume the segment was drawn on")
    mask = on_volume_grid(segment_array(segmentation_node, segment_id, volume_node),
                          volume_node)
    kind = prompt_kind(set_node)
    if kind == "mask":
        add_context_volume(set_node, volume_node)
        set_mask(scene, set_node, volume_node, mask)
        return
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError(f"segment '{segment_id}' is empty on '{volume_node.GetName()}'")
    boxes, points = prompts_from_mask(mask, kind)
    add_context_volume(set_node, volume_node)
    grid = Grid.of(mask)
    for box in boxes:
        _box_to_roi(new_box(scene, set_node, volume_node), box, grid, mask)
    if points:
        _add_points(point_list(scene, set_node, volume_node), points, grid)


def export_json(set_node, folder: Path) -> Path:
    """Writes the set as a command-line context-set file with its volumes beside it.

    Volumes are written as ``<volume name>.nrrd``, dense masks as
    ``<volume name>_mask.nrrd``, prompts in their voxel indices. An existing file of the
    same name is not overwritten: export into an empty folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in context_volumes(set_node):
        file_name = _safe_name(entry.volume.GetName()) + ".nrrd"
        _write_new(volume_to_image(entry.volume), folder / file_name)
        boxes, points = engine_prompts(entry)
        record: Dict[str, object] = {"image": file_name}
        mask = engine_mask(entry)
        if mask is not None:
            record["mask"] = _safe_name(entry.volume.GetName()) + "_mask.nrrd"
            _write_new(mask, folder / record["mask"])
        if boxes:
            record["boxes"] = [{"min": [int(v) for v in b.min], "max": [int(v) for v in b.max]}
                               for b in boxes]
        if points:
            record["points"] = [[int(v) for v in p.position] for p in points]
        entries.append(record)
    json_path = folder / f"{_safe_name(set_node.GetName())}.json"
    if json_path.exists():
        raise FileExistsError(f"{json_path}: exists; export into an empty folder")
    return write_context_file(json_path, set_node.GetName(), "voxel", entries)


def _write_new(image: sitk.Image, path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"{path}: exists; export into an empty folder")
    write_atomic(image, path)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "volume"


def import_json(scene, path: Path, colour_rgb: Sequence[float] = DEFAULT_COLOUR):
    """Loads a context-set file: its volumes become volume nodes, its boxes ROI nodes
    aligned with each volume's axes, its points a point-list node per volume, its masks a
    segmentation node per volume."""
    context = read_context_file(path)
    kinds = context.kinds()
    if len(kinds) > 1:
        raise ValueError(f"{path}: mixes {' and '.join(kinds)} prompts; a context set in "
                         "Slicer holds one kind: split the file by kind")
    set_node = create_context_set(scene, context.name, kinds[0], colour_rgb)
    for entry in context.entries:
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                         Path(entry.source).name.split(".")[0])
        volume.CreateDefaultDisplayNodes()
        image_to_volume(entry.image, volume)
        add_context_volume(set_node, volume)
        grid = Grid.of(entry.image)
        for box in entry.boxes:
            _box_to_roi(new_box(scene, set_node, volume), box, grid, entry.image)
        if entry.points:
            _add_points(point_list(scene, set_node, volume), entry.points, grid)
        if entry.mask is not None:
            set_mask(scene, set_node, volume, entry.mask)
    return set_node


def _add_points(node, points: Sequence[wsicl.Point], grid: Grid) -> None:
    for point in points:
        ras = to_lps(np.array(point.position), point.space, grid)[0] * LPS_RAS_FLIP
        node.AddControlPointWorld(ras.tolist())


def _box_to_roi(roi, box: wsicl.Box, grid: Grid, image: sitk.Image) -> None:
    """Sets an ROI to a box: voxel boxes follow the volume's axes, physical boxes RAS."""
    low, high = np.array(box.min), np.array(box.max)
    if box.space == "voxel":
        corners = np.array(voxel_box_faces(low, high))
        axes = image_ijk_to_ras(image)[:3, :3]
        size = (corners[1] - corners[0]) * np.array(grid.spacing)
        centre = image_ijk_to_ras(image) @ np.r_[corners.mean(axis=0), 1.0]
        rotation = axes / np.linalg.norm(axes, axis=0)
    else:
        corners = to_lps(np.array([low, high]), box.space, grid) * LPS_RAS_FLIP
        size = np.abs(corners[1] - corners[0])
        centre = np.r_[corners.mean(axis=0), 1.0]
        rotation = np.eye(3)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre[:3]
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(matrix))
    roi.SetSize(*size.tolist())

