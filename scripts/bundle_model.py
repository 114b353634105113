"""Copies a training checkpoint into the package as a bundled model.

Usage: ``python scripts/bundle_model.py RUN/last.pt box|point ["how it was trained"]``

Keeps the weights (stored as float16 to halve the file; loaded back as float32) and the
metadata, drops the optimiser state, and records the training step in the provenance.
"""
import sys
from pathlib import Path

import torch

from wsicl.checkpoints import BUNDLED_DIR, FORMAT_NAME, FORMAT_VERSION, read_training_state


def bundle(checkpoint: Path, name: str, history: str = "") -> Path:
    state = read_training_state(checkpoint)
    metadata = dict(state["metadata"])
    metadata["prompt"] = name
    metadata["provenance"] = (history or f"{metadata.get('provenance', '')}; "
                              f"{state.get('step')} steps") + "; weights stored as float16"
    content = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "metadata": metadata,
               "state_dict": {k: v.detach().to(torch.float16).contiguous()
                              for k, v in state["state_dict"].items()},
               "history": state.get("history", []), "config": state.get("config", {})}
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    path = BUNDLED_DIR / f"{name}.pt"
    torch.save(content, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[2] not in ("box", "point"):
        sys.exit(__doc__)
    written = bundle(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "")
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
