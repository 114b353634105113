"""WSICL: weakly supervised in-context segmentation of 3D medical images.

The engine of the WSICLSegment 3D Slicer extension, usable on its own: pure Python on
torch, numpy, scipy and SimpleITK.
"""
from .checkpoints import CheckpointError, ModelInfo, load_model, save_model
from .context import Box, ContextEntry, ContextError, ContextSet, Point
from .device import OutOfMemory, keep_freed_memory
from .geometry import ImageError
from .network import WSICLNet
from .predictor import Cancelled, Predictor, Segmentation
from .prompts import PromptOutsideError, render_boxes, render_points

__version__ = "0.1.0"

__all__ = [
    "Box", "Cancelled", "CheckpointError", "ContextEntry", "ContextError", "ContextSet",
    "ImageError", "ModelInfo", "OutOfMemory", "Point", "Predictor", "PromptOutsideError",
    "Segmentation", "WSICLNet", "keep_freed_memory", "load_model", "render_boxes",
    "render_points", "save_model",
]
