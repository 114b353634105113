"""Copies a training checkpoint into the package as a bundled model.

Usage: ``python scripts/bundle_model.py RUN/last.pt box|point ["how it was trained"]``

Keeps the weights (stored as float16 to halve the file; loaded back as float32) and the
metadata, drops the optimiser state, and records the training step in the provenance.
"""
import argparse
from pathlib import Path

import torch

from wsicl.checkpoints import BUNDLED_DIR, ModelInfo, build_model, read_training_state, save_model


def bundle(checkpoint: Path, name: str, history: str = "") -> Path:
    """Writes ``checkpoint``'s weights as bundled model ``name`` (float16, atomically,
    read back before the rename), keeping its training history and configuration."""
    state = read_training_state(checkpoint)
    info = ModelInfo.from_dict(state["metadata"])
    info.prompt_kinds = [name]
    info.provenance = (history or f"{info.provenance}; {state.get('step')} steps") + \
        "; weights stored as float16"
    network = build_model(info, state["state_dict"], str(checkpoint))
    return save_model(network, BUNDLED_DIR / f"{name}.pt", info,
                      extra={"history": state.get("history", []),
                             "config": state.get("config", {})}, dtype=torch.float16)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (last.pt, export)")
    parser.add_argument("name", choices=("box", "point"), help="the bundled model to replace")
    parser.add_argument("history", nargs="?", default="", help="how it was trained (provenance)")
    args = parser.parse_args()
    written = bundle(args.checkpoint, args.name, args.history)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
