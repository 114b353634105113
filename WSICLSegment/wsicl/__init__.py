"""WSICL: weakly supervised in-context segmentation of 3D medical images.

The engine of the WSICLSegment 3D Slicer extension, usable on its own: pure Python on
torch, numpy, scipy and SimpleITK.
"""
import importlib

_EXPORTS = {
    "CheckpointError": "checkpoints", "ModelInfo": "checkpoints", "load_model": "checkpoints",
    "save_model": "checkpoints", "Box": "context", "ContextEntry": "context",
    "ContextError": "context", "ContextSet": "context", "Point": "context",
    "OutOfMemory": "device", "keep_freed_memory": "device", "ImageError": "geometry",
    "read_image": "imageio",
    "MaskError": "masks",
    "WSICLNet": "network", "Cancelled": "predictor", "Predictor": "predictor",
    "Segmentation": "predictor", "PromptOutsideError": "prompts",
    "render_boxes": "prompts", "render_points": "prompts",
}


def __getattr__(name: str):
    """Public names load their module on first use, so that ``wsicl.network`` or the
    training engine can be imported where SimpleITK is not installed."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'wsicl' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "Box", "Cancelled", "CheckpointError", "ContextEntry", "ContextError", "ContextSet",
    "ImageError", "MaskError", "ModelInfo", "OutOfMemory", "Point", "Predictor",
    "PromptOutsideError", "Segmentation", "WSICLNet", "keep_freed_memory", "load_model",
    "read_image", "render_boxes", "render_points", "save_model",
]
