"""WSICLSegmentLib on the real MRML of slicer-core: volumes, markups, segmentations, runs."""
import json
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from conftest import cpu_fp32, make_image, rotation_direction, sphere_volume  # noqa: E402
from WSICLSegmentLib import context_sets as sets  # noqa: E402
from WSICLSegmentLib.logic import SegmentationLogic, non_context_volumes  # noqa: E402
from slicer_scene import new_scene  # noqa: E402
from WSICLSegmentLib.settings import RunSettings, load_settings, save_settings  # noqa: E402
from WSICLSegmentLib.segments import (SEGMENT_ID_PREFIX, segment_array,  # noqa: E402
                                      write_structure)
from WSICLSegmentLib.volumes import image_to_volume, volume_to_image  # noqa: E402
from WSICLSegmentLib.worker import InferenceWorker, State  # noqa: E402
from wsicl import Cancelled  # noqa: E402
from wsicl.contextfile import read_context_file  # noqa: E402
from wsicl.server.client import RemoteError, RemotePredictor  # noqa: E402
from served import TOKEN, ServerProcess, write_served_model, write_token  # noqa: E402

AWKWARD = [rotation_direction(23.0, axis=2), (-1, 0, 0, 0, 1, 0, 0, 0, -1),
           rotation_direction(-35.0, axis=0)]


@pytest.fixture
def logics():
    return new_scene()


def ball_image(direction, spacing=(0.9, 0.8, 2.5), shift=0.0):
    ball = sphere_volume((16, 40, 36), (8, 20 + shift, 18), 10.0, spacing)
    noise = np.random.default_rng(int(shift)).normal(0, 3, ball.shape)
    return make_image((ball * 80 + noise).astype(np.float32), spacing, (12.0, -30.0, 5.0),
                      direction)


def add_volume(logics, image, name="vol"):
    node = logics.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.CreateDefaultDisplayNodes()
    image_to_volume(image, node)
    return node


@pytest.mark.parametrize("direction", AWKWARD)
def test_volume_nodes_convert_to_images_and_back_exactly(logics, direction):
    image = ball_image(direction)
    node = add_volume(logics, image)
    back = volume_to_image(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)


def test_files_loaded_by_slicer_match_simpleitk(logics, tmp_path):
    image = ball_image(AWKWARD[0])
    sitk.WriteImage(image, str(tmp_path / "oblique.nrrd"))
    node = logics.volumes.AddArchetypeVolume(str(tmp_path / "oblique.nrrd"), "oblique")
    back = volume_to_image(node)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_linear_parent_transform_is_included(logics):
    node = add_volume(logics, ball_image(AWKWARD[1]))
    transform = logics.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 15.0)
    transform.SetMatrixTransformToParent(matrix)
    before = np.array(volume_to_image(node).GetOrigin())
    node.SetAndObserveTransformNodeID(transform.GetID())
    after = np.array(volume_to_image(node).GetOrigin())
    assert np.allclose(after - before, [-15.0, 0, 0])


@pytest.mark.parametrize("direction", AWKWARD)
def test_markups_become_the_same_model_prompts_as_the_json(logics, tmp_path, tiny_network,
                                                           direction):
    sitk.WriteImage(ball_image(direction), str(tmp_path / "ctx.nrrd"))
    for kind, prompts in (("box", {"boxes": [{"min": [8, 10, 6], "max": [26, 30, 6]},
                                             {"min": [10, 12, 9], "max": [24, 28, 9]}]}),
                          ("point", {"points": [[18, 20, 8], [12, 25, 7]]})):
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps({"name": kind, "context": [{"image": "ctx.nrrd", **prompts}]}),
                        encoding="utf-8")
        tiny_network.metadata.prompt_kinds = [kind]
        predictor = cpu_fp32(tiny_network)
        from_json = predictor.prepare_context(read_context_file(path))
        set_node = sets.import_json(logics.scene, path)
        from_mrml = predictor.prepare_context(sets.to_engine(set_node))
        assert np.array_equal(from_json.prompts.numpy(), from_mrml.prompts.numpy()), kind
        assert np.allclose(from_json.images.numpy(), from_mrml.images.numpy(), atol=1e-6)


def test_a_2d_roi_drawn_on_a_slice_stays_on_that_slice(logics):
    node = add_volume(logics, ball_image(AWKWARD[0]))
    set_node = sets.create_context_set(logics.scene, "ball")
    sets.new_box_at(logics.scene, set_node, node, (10, 12, 7), (12.0, 10.0))
    box = sets.engine_prompts(sets.context_volumes(set_node)[0])[0][0]
    assert box.min[2] == box.max[2] == 7 and box.space == "voxel"


def test_context_sets_survive_save_and_reload(logics, tmp_path):
    node = add_volume(logics, ball_image(AWKWARD[1]), "context one")
    set_node = sets.create_context_set(logics.scene, "ball", "point", (0.1, 0.2, 0.3))
    sets.point_list(logics.scene, set_node, node).AddControlPointWorld([1.0, 2.0, 3.0])
    save_scene(logics.scene, tmp_path / "scene.mrml")
    reloaded = new_scene()
    reloaded.scene.SetURL(str(tmp_path / "scene.mrml"))
    reloaded.scene.Import()
    [restored] = sets.context_sets(reloaded.scene)
    assert restored.GetName() == "ball" and sets.prompt_kind(restored) == "point"
    assert sets.colour(restored) == pytest.approx((0.1, 0.2, 0.3))
    [entry] = sets.context_volumes(restored)
    assert entry.volume.GetName() == "context one" and entry.prompt_count == 1


def save_scene(scene, path):
    """Writes every storable node beside the scene file, then the scene (as Slicer's Save)."""
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
        if storage is None:
            continue
        if storage.GetScene() is None:
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        extension = storage.GetDefaultWriteFileExtension()
        storage.SetFileName(str(path.parent / f"{node.GetID()}.{extension}"))
        assert storage.WriteData(node)
    scene.SetURL(str(path))
    assert scene.Commit()


def test_export_and_import_json_round_trip(logics, tmp_path):
    node = add_volume(logics, ball_image(AWKWARD[2]), "ctx")
    set_node = sets.create_context_set(logics.scene, "ball")
    path = tmp_path / "in.json"
    sitk.WriteImage(volume_to_image(node), str(tmp_path / "ctx.nrrd"))
    path.write_text(json.dumps({"name": "ball", "context": [
        {"image": "ctx.nrrd", "boxes": [{"min": [5, 6, 4], "max": [20, 22, 4]}]}]}))
    imported = sets.import_json(logics.scene, path)
    exported = sets.export_json(imported, tmp_path / "export")
    document = json.loads(exported.read_text(encoding="utf-8"))
    assert document["coordinates"] == "voxel"
    assert document["context"][0]["boxes"] == [{"min": [5, 6, 4], "max": [20, 22, 4]}]
    with pytest.raises(FileExistsError, match="empty folder"):
        sets.export_json(imported, tmp_path / "export")
    assert set_node is not None


def test_mask_lands_in_the_segmentation_on_the_reference_geometry(logics, tmp_path):
    image = ball_image(AWKWARD[0])
    node = add_volume(logics, image, "target")
    mask_array = (sitk.GetArrayFromImage(image) > 40).astype(np.uint8)
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    write = write_structure(logics.scene, logics.segmentations, node, mask, "liver", (1, 0, 0))
    assert write.segmentation_node.GetName() == "target WSICL"
    labelmap = logics.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert logics.segmentations.ExportAllSegmentsToLabelmapNode(
        write.segmentation_node, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    assert np.array_equal(slicer.util.arrayFromVolume(labelmap) > 0, mask_array > 0)
    segment = write.segmentation_node.GetSegmentation().GetSegment(SEGMENT_ID_PREFIX + "liver")
    entry = vtk.reference("")
    assert segment.GetTag("TerminologyEntry", entry) and "Liver" in str(entry)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "target.seg.nrrd"))
    assert storage.WriteData(write.segmentation_node)
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "target.seg.nrrd")))
    assert saved.sum() == mask_array.sum()
    reloaded = logics.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(reloaded)
    assert np.array_equal(segment_array(reloaded, SEGMENT_ID_PREFIX + "liver",
                                        node), mask_array)


def test_rerun_replaces_only_its_segment_and_undo_restores(logics):
    image = ball_image(AWKWARD[1])
    node = add_volume(logics, image, "target")
    first = (sitk.GetArrayFromImage(image) > 40).astype(np.uint8)
    second = np.zeros_like(first)
    second[4:8, 10:20, 10:20] = 1
    as_image = []
    for array in (first, second, first[::-1].copy()):
        mask = sitk.GetImageFromArray(array)
        mask.CopyInformation(image)
        as_image.append(mask)
    logic = SegmentationLogic(logics.scene, logics.segmentations)
    write = write_structure(logics.scene, logics.segmentations, node, as_image[0], "liver",
                            (1, 0, 0))
    write_structure(logics.scene, logics.segmentations, node, as_image[1], "spleen", (0, 1, 0))
    seg = write.segmentation_node
    from WSICLSegmentLib.logic import Result, Structure
    logic.apply([Result(node.GetID(), Structure("liver", (1, 0, 0), None), as_image[2])])
    assert np.array_equal(segment_array(seg, "WSICL_liver", node),
                          first[::-1])
    assert np.array_equal(segment_array(seg, "WSICL_spleen", node), second)
    assert np.array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    assert logic.undo_last()
    assert np.array_equal(segment_array(seg, "WSICL_liver", node), first)
    assert not logic.undo_last()


@pytest.fixture
def two_context_scene(logics, tiny_network):
    """Two context volumes with boxes and a third target volume."""
    context_nodes = [add_volume(logics, ball_image(AWKWARD[i], shift=i), f"context {i}")
                     for i in range(2)]
    target = add_volume(logics, ball_image(AWKWARD[2], shift=2), "target")
    set_node = sets.create_context_set(logics.scene, "ball")
    for node in context_nodes:
        sets.new_box_at(logics.scene, set_node, node, (18, 20, 8), (14.0, 14.0))
    return logics, set_node, target


def test_full_run_on_mrml_nodes(two_context_scene, tiny_network):
    logics, set_node, target = two_context_scene
    assert non_context_volumes(logics.scene) == [target]
    logic = SegmentationLogic(logics.scene, logics.segmentations)
    reports = []
    nodes = logic.process([set_node], [target], RunSettings(tiny_network, "cpu"),
                          progress=lambda f, m: reports.append(f))
    segmentation = nodes["target"]
    result = segment_array(segmentation, "WSICL_ball", target)
    expected = cpu_fp32(tiny_network).segment(volume_to_image(target),
                                                             sets.to_engine(set_node)).mask
    assert np.array_equal(result, sitk.GetArrayFromImage(expected))
    assert reports[-1] == pytest.approx(1.0)
    refined = logic.process([set_node], [target], RunSettings(tiny_network, "cpu", refine=True))
    assert logic.predictor(RunSettings(tiny_network, "cpu", refine=True)).refine
    expected = cpu_fp32(tiny_network, refine=True).segment(
        volume_to_image(target), sets.to_engine(set_node)).mask
    assert np.array_equal(segment_array(refined["target"], "WSICL_ball",
                                        target), sitk.GetArrayFromImage(expected))


def test_cancel_leaves_the_scene_unchanged(two_context_scene, tiny_network):
    logics, set_node, target = two_context_scene
    logic = SegmentationLogic(logics.scene, logics.segmentations)
    nodes_before = logics.scene.GetNumberOfNodes()
    job = logic.gather([set_node], [target])
    worker = InferenceWorker()
    outcome = {}
    started = threading.Event()

    def work(progress, cancelled):
        started.set()
        while not cancelled():
            time.sleep(0.01)
        return logic.compute(job, cpu_fp32(tiny_network), progress, cancelled)

    worker.submit(work, lambda r: outcome.update(result=r), lambda e: outcome.update(error=e))
    started.wait(5)
    assert worker.state is State.RUNNING
    worker.cancel()
    for _ in range(500):
        if worker.deliver():
            break
        time.sleep(0.01)
    assert isinstance(outcome.get("error"), Cancelled)
    assert logics.scene.GetNumberOfNodes() == nodes_before
    assert worker.state is State.IDLE
    worker.shutdown()


def test_worker_delivers_results_on_the_calling_thread():
    worker = InferenceWorker()
    seen = {}

    def work(progress, cancelled):
        progress(0.5, "half")
        seen["worker"] = threading.current_thread().name
        return 42

    worker.submit(work, lambda r: seen.update(result=r, where=threading.current_thread().name),
                  lambda e: seen.update(error=e), lambda f, m: seen.update(progress=(f, m)))
    for _ in range(500):
        worker.deliver()
        if "result" in seen:
            break
        time.sleep(0.01)
    assert seen["result"] == 42 and seen["progress"] == (0.5, "half")
    assert seen["worker"] == "WSICL inference" and seen["where"] == threading.current_thread().name
    worker.shutdown()


@pytest.mark.parametrize("problem, message", [
    ("no set", "no context set"),
    ("no prompt", "has no prompt"),
    ("single slice", "single slice"),
])
def test_errors_a_user_can_act_on(logics, problem, message):
    logic = SegmentationLogic(logics.scene, logics.segmentations)
    target = add_volume(logics, ball_image(AWKWARD[0]), "target")
    set_node = sets.create_context_set(logics.scene, "ball")
    if problem == "no set":
        with pytest.raises(ValueError, match=message):
            logic.gather([], [target])
        return
    context = add_volume(logics, ball_image(AWKWARD[1]), "ctx")
    sets.add_context_volume(set_node, context)
    if problem == "single slice":
        sets.new_box(logics.scene, set_node, context).SetSize(5, 5, 0)
        flat = add_volume(logics, make_image(np.random.rand(1, 20, 20).astype(np.float32)), "f")
        target = flat
    with pytest.raises(ValueError, match=message):
        logic.gather([set_node], [target])


def user_segment(logics, volume, array: np.ndarray, name: str = "ball"):
    """A segmentation node drawn on ``volume`` with one segment holding ``array``."""
    from WSICLSegmentLib.segments import oriented_labelmap
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(volume_to_image(volume))
    node = logics.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = node.AddSegmentFromBinaryLabelmapRepresentation(
        oriented_labelmap(mask, volume), name, [1.0, 0.0, 0.0])
    return node, segment_id


def test_segment_as_context_survives_scene_save_and_json_round_trip(logics, tmp_path):
    image = ball_image(AWKWARD[0])
    volume = add_volume(logics, image, "context one")
    drawn = sitk.GetArrayFromImage(image) > 40
    set_node = sets.create_context_set(logics.scene, "ball", "mask")
    segmentation, segment_id = user_segment(logics, volume, drawn)
    sets.add_segment(logics.scene, set_node, volume, segmentation, segment_id)
    logics.scene.RemoveNode(segmentation)               # the set keeps its own copy
    [entry] = sets.to_engine(set_node).entries
    assert entry.prompt_kind == "mask"
    assert np.array_equal(sitk.GetArrayFromImage(entry.mask), drawn)

    save_scene(logics.scene, tmp_path / "scene.mrml")
    reloaded = new_scene()
    reloaded.scene.SetURL(str(tmp_path / "scene.mrml"))
    reloaded.scene.Import()
    [restored] = sets.context_sets(reloaded.scene)
    assert sets.prompt_kind(restored) == "mask"
    [entry] = sets.to_engine(restored).entries
    assert np.array_equal(sitk.GetArrayFromImage(entry.mask), drawn)

    exported = sets.export_json(restored, tmp_path / "export")
    document = json.loads(exported.read_text(encoding="utf-8"))
    assert document["context"] == [{"image": "context_one.nrrd",
                                    "mask": "context_one_mask.nrrd"}]
    [from_file] = read_context_file(exported).entries
    assert np.array_equal(sitk.GetArrayFromImage(from_file.mask), drawn)
    imported = sets.import_json(logics.scene, exported)
    [entry] = sets.to_engine(imported).entries
    assert sets.prompt_kind(imported) == "mask"
    assert np.array_equal(sitk.GetArrayFromImage(entry.mask), drawn)


def test_segment_on_a_box_set_becomes_2d_boxes_around_it(logics):
    image = ball_image(AWKWARD[1])
    volume = add_volume(logics, image)
    drawn = sitk.GetArrayFromImage(image) > 40
    set_node = sets.create_context_set(logics.scene, "ball", "box")
    segmentation, segment_id = user_segment(logics, volume, drawn)
    sets.add_segment(logics.scene, set_node, volume, segmentation, segment_id)
    boxes, points = sets.engine_prompts(sets.context_volumes(set_node)[0])
    assert len(boxes) == 3 and not points
    for box in boxes:
        k = int(box.min[2])
        assert box.max[2] == k
        j, i = np.nonzero(drawn[k])
        assert (box.min[0], box.min[1], box.max[0], box.max[1]) == (
            i.min(), j.min(), i.max(), j.max())
    with pytest.raises(ValueError, match="uses box prompts; place a box"):
        sets.point_list(logics.scene, set_node, volume)


def test_a_corrected_result_becomes_context(logics):
    image = ball_image(AWKWARD[2])
    target = add_volume(logics, image, "target")
    set_node = sets.create_context_set(logics.scene, "ball", "mask")
    with pytest.raises(ValueError, match="no result of 'ball' on 'target'; segment it first"):
        sets.use_result_as_context(logics.scene, set_node, target)
    corrected = sitk.GetArrayFromImage(image) > 40
    mask = sitk.GetImageFromArray(corrected.astype(np.uint8))
    mask.CopyInformation(image)
    write_structure(logics.scene, logics.segmentations, target, mask, "ball", (1, 0, 0))
    assert non_context_volumes(logics.scene) == [target]
    sets.use_result_as_context(logics.scene, set_node, target)
    assert non_context_volumes(logics.scene) == []
    [entry] = sets.to_engine(set_node).entries
    assert np.array_equal(sitk.GetArrayFromImage(entry.mask), corrected)
    with pytest.raises(ValueError, match="uses mask prompts; add a segment"):
        sets.new_box(logics.scene, set_node, target)
    with pytest.raises(ValueError, match="interactive mode needs box or point prompts"):
        SegmentationLogic(logics.scene, logics.segmentations).gather_interactive(set_node,
                                                                                 target)


def test_deleting_a_set_removes_its_prompts_and_folder_and_keeps_volumes(logics):
    volume = add_volume(logics, ball_image(AWKWARD[0]), "kept")
    set_node = sets.create_context_set(logics.scene, "ball")
    sets.new_box_at(logics.scene, set_node, volume, (10, 12, 7), (12.0, 10.0))
    hierarchy = logics.scene.GetSubjectHierarchyNode()
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(set_node))
    assert hierarchy.GetItemName(folder) == "ball"
    sets.delete_context_set(logics.scene, set_node)
    assert sets.context_sets(logics.scene) == []
    assert logics.scene.GetNodesByClass("vtkMRMLMarkupsROINode").GetNumberOfItems() == 0
    assert not hierarchy.GetItemName(folder)            # the folder item is gone
    assert logics.scene.GetNodeByID(volume.GetID()) is volume


def test_prompt_kind_changes_only_while_the_set_is_empty(logics):
    volume = add_volume(logics, ball_image(AWKWARD[1]))
    set_node = sets.create_context_set(logics.scene, "ball")
    sets.set_prompt_kind(set_node, "point")
    sets.set_prompt_kind(set_node, "box")
    sets.new_box_at(logics.scene, set_node, volume, (10, 12, 7), (12.0, 10.0))
    with pytest.raises(ValueError, match="already has box prompts"):
        sets.set_prompt_kind(set_node, "mask")
    with pytest.raises(ValueError, match="one of box, point, mask"):
        sets.set_prompt_kind(set_node, "scribble")


def test_remove_last_prompt_takes_the_newest_first(logics):
    volume = add_volume(logics, ball_image(AWKWARD[0]))
    box_set = sets.create_context_set(logics.scene, "boxes")
    for k in (5, 7):
        sets.new_box_at(logics.scene, box_set, volume, (10, 12, k), (12.0, 10.0))
    assert sets.remove_last_prompt(logics.scene, box_set, volume)
    [box] = sets.engine_prompts(sets.context_volumes(box_set)[0])[0]
    assert box.min[2] == 5
    point_set = sets.create_context_set(logics.scene, "points", "point")
    points = sets.point_list(logics.scene, point_set, volume)
    points.AddControlPointWorld([1.0, 2.0, 3.0])
    assert sets.remove_last_prompt(logics.scene, point_set, volume)
    assert not sets.remove_last_prompt(logics.scene, point_set, volume)


def test_a_drawn_roi_is_flattened_along_its_thinnest_axis(logics):
    from WSICLSegmentLib.prompts import flatten_roi
    roi = logics.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetSize(30.0, 2.0, 20.0)
    flatten_roi(roi)
    assert list(roi.GetSize()) == [30.0, 0.0, 20.0]


def test_worker_failures_keep_their_traceback_and_say_what_happened():
    from WSICLSegmentLib.worker import describe_failure
    worker = InferenceWorker()
    errors = []

    def broken_step(progress, cancelled):
        return {}["missing"]

    worker.submit(broken_step, lambda r: None, errors.append)
    for _ in range(500):
        if worker.deliver():
            break
        time.sleep(0.01)
    worker.shutdown()
    sentence, details = describe_failure(errors[0])
    assert "unexpected KeyError" in sentence and "This is a bug" in sentence
    assert "broken_step" in details and "Traceback" in details
    sentence, _ = describe_failure(ValueError("no context set: create one"))
    assert sentence == "no context set: create one"
    sentence, _ = describe_failure(RemoteError("cannot reach the WSICL server at ..."))
    assert sentence == "cannot reach the WSICL server at ..."


def test_weights_load_where_the_predictor_is_asked_for_with_progress(logics, tiny_network):
    logic = SegmentationLogic(logics.scene, logics.segmentations)
    heard = []
    first = logic.predictor(RunSettings(tiny_network, "cpu"), lambda f, m: heard.append(m))
    again = logic.predictor(RunSettings(tiny_network, "cpu"), lambda f, m: heard.append(m))
    assert first is again and len(heard) == 1 and heard[0].startswith("loading weights")


def test_run_settings_are_saved_with_the_scene(logics, tmp_path):
    assert load_settings(logics.scene) is None
    chosen = RunSettings("/models/neuroverse3D.ckpt", "cpu", 2, "bf16", False, ["mask"],
                         "http://gpu-box:8000")
    save_settings(logics.scene, chosen)
    save_settings(logics.scene, chosen)                 # one settings node per scene
    assert logics.scene.GetNodesByClass("vtkMRMLScriptedModuleNode").GetNumberOfItems() == 1
    save_scene(logics.scene, tmp_path / "scene.mrml")
    reloaded = new_scene()
    reloaded.scene.SetURL(str(tmp_path / "scene.mrml"))
    reloaded.scene.Import()
    assert load_settings(reloaded.scene) == chosen
    with pytest.raises(ValueError, match="mini-context must be at least 1"):
        RunSettings(mini_context=0)
    with pytest.raises(ValueError, match="device must be one of"):
        RunSettings(device="tpu")


def test_a_run_on_a_server_writes_what_a_local_run_writes(two_context_scene, tmp_path):
    logics, set_node, target = two_context_scene
    model = write_served_model(tmp_path / "tiny.pt")
    server = ServerProcess("--port", "0", "--model", str(model), "--token-file",
                           str(write_token(tmp_path)))
    try:
        logic = SegmentationLogic(logics.scene, logics.segmentations)
        remote = RunSettings(str(model), server=server.url)
        assert isinstance(logic.predictor(remote, token=TOKEN), RemotePredictor)
        on_server = segment_array(logic.process([set_node], [target], remote, token=TOKEN)
                                  ["target"], "WSICL_ball", target)
        here = segment_array(logic.process([set_node], [target],
                                           RunSettings(str(model), "cpu", precision="fp32"))
                             ["target"], "WSICL_ball", target)
        assert np.array_equal(on_server, here) and 0 < here.sum() < here.size
        job = logic.gather_interactive(set_node, logics.scene.GetNodeByID(
            sets.context_volumes(set_node)[0].volume.GetID()))
        [remote_result] = logic.compute(job, logic.predictor(remote, token=TOKEN))
        [local_result] = logic.compute(job, logic.predictor(
            RunSettings(str(model), "cpu", precision="fp32")))
        assert np.array_equal(sitk.GetArrayFromImage(remote_result.mask),
                              sitk.GetArrayFromImage(local_result.mask))
        with pytest.raises(RemoteError, match="refused the token"):
            logic.predictor(remote, token="wrong")
    finally:
        server.stop()
