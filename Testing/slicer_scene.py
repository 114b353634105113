"""Test support: a scene with the module logics WSICLSegment uses, on ``slicer-core``
(no Slicer GUI). Inside Slicer, ``slicer.mrmlScene`` and the application's logics play
this part.
"""
import dataclasses

import slicer


@dataclasses.dataclass
class SceneLogics:
    scene: object
    application: object
    segmentations: object
    markups: object
    volumes: object


def new_scene() -> SceneLogics:
    """A fresh MRML scene with colour, segmentation, markups, subject-hierarchy and volume
    logics registered on an application logic."""
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    logics = {}
    for name, cls in (("Colors", slicer.vtkSlicerColorLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("Volumes", slicer.vtkSlicerVolumesLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
        logics[name] = logic
    return SceneLogics(scene, application, logics["Segmentations"], logics["Markups"],
                       logics["Volumes"])
