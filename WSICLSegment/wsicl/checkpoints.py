"""Loading and saving network weights without ever executing code from a file.

Three file layouts are read, all with ``torch.load(weights_only=True)``, which refuses any
pickle that would import or call Python objects:

- the authors' PyTorch-Lightning ``.ckpt`` (``state_dict`` with ``net.`` prefixes and the
  architecture in ``hyper_parameters``); no pytorch-lightning needed;
- the project's own format (``format == "wsicl-model"``), which carries a metadata dict;
- a bare ``state_dict`` (architecture inferred from the tensor shapes).
"""
import dataclasses
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from .files import WriteError, atomic_write
from .network import WSICLNet

FORMAT_NAME = "wsicl-model"
FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
BUNDLED_MODELS = ("box", "point")
BUNDLED_NOTES = {
    "point": "the bundled point model scores below the location-only floor on held-out data "
             "(interactive Dice 0.085 against 0.42 for the box itself, see the model card); "
             "prefer box prompts with the bundled models, or the authors' released weights"}
"""What a user of a bundled model must know before relying on it, by model name."""


class CheckpointError(ValueError):
    """A weights file that cannot be used, with the reason and the file named."""


@dataclasses.dataclass
class ModelInfo:
    """What a network needs around it to be used correctly.

    Attributes:
        channels: feature channels per stage.
        convs_per_stage: 3x3x3 convolutions per residual unit.
        prompt_kinds: the context kinds the network was trained for (``"box"``,
            ``"point"``, ``"mask"``, see :data:`wsicl.context.PROMPT_KINDS`); empty when
            the file does not say.
        input_size: edge of the cubic model grid in voxels (128 for the released weights).
        normalisation: intensity normalisation of inputs; ``"minmax"`` maps each volume to
            [0, 1], ``"robust"`` maps its 0.5th / 99.5th percentiles to 0 / 1 and clips.
        input_policy: what the network was trained to see: ``"whole"`` (the whole field of
            view, as the released weights) or ``"crop"`` (a box around the prompts or a
            first-pass mask, :mod:`wsicl.crops`).
        output: ``"raw"`` (threshold the output at 0.5, as the released weights) or
            ``"logit"`` (a probability through the sigmoid).
        point_radius: radius in model-grid voxels of the balls that points become.
        provenance: free text: where the weights come from, how they were trained.
        source: the file or bundled name the weights were read from.
    """

    channels: List[int]
    convs_per_stage: int = 2
    prompt_kinds: List[str] = dataclasses.field(default_factory=list)
    input_size: int = 128
    normalisation: str = "minmax"
    input_policy: str = "whole"
    output: str = "raw"
    point_radius: int = 6
    provenance: str = ""
    source: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in values.items() if k in known}
        if "prompt_kinds" not in fields and values.get("prompt"):   # older files: one kind
            fields["prompt_kinds"] = [values["prompt"]]
        return cls(**fields)


def _read(path: Path) -> Any:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the weights file inside it (.ckpt "
                              "or .pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path or use a bundled model "
                              f"({', '.join(BUNDLED_MODELS)})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes); download or copy it again")
    with open(path, "rb") as stream:
        head = stream.read(512)
    if _is_text(head):
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:60]
        raise CheckpointError(f"{path}: is a text file ({first!r}), not weights: a saved "
                              "download link or another document? Download the weights "
                              "themselves") from None
    try:
        with warnings.catch_warnings():      # torch's notes on pickle protocols: noise here
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():  # names an importable Python object
            raise CheckpointError(
                f"{path}: refused: the file contains Python objects beyond tensors and plain "
                "containers, which could run code when loaded. Only use weights from a source "
                "you trust, saved as a state_dict.") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a corrupt download or "
                              "another kind of file); download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as error:
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() \
            else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or "
                              f"corrupt download?): {reason}; download it again") from None


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are plain UTF-8 text (weights are a zip archive or a
    pickle, both binary from their first bytes)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", "ignore") if len(head) == 512 else ""
        if not text:
            return False
    return bool(text.strip()) and all(c.isprintable() or c in "\r\n\t" for c in text)


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Channels and convolutions per stage from the target-encoder tensor shapes."""
    try:
        channels = [int(state_dict["target_encoder.target_embedding.weight"].shape[0])]
    except KeyError:
        raise CheckpointError("no 'target_encoder.target_embedding.weight': "
                              "not a WS-ICL / Neuroverse3D state_dict") from None
    stage = 0
    while f"target_encoder.downsample_blocks.{stage}.target_linear_layer.weight" in state_dict:
        channels.append(int(state_dict[
            f"target_encoder.downsample_blocks.{stage}.target_linear_layer.weight"].shape[0]))
        stage += 1
    pattern = re.compile(r"target_decoder\.output_block\.block\.0\.layers\.(\d+)\.weight$")
    convs = sum(1 for key in state_dict if pattern.match(key))
    return {"channels": channels, "convs_per_stage": max(convs, 1)}


def _split_checkpoint(content: Any, path: Path) -> (Dict[str, torch.Tensor], ModelInfo):
    """The state_dict (without prefixes) and the metadata of a loaded file."""
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a checkpoint dict")
    if content.get("format") == FORMAT_NAME:
        version = content.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: WSICL model format version {version} is newer than "
                                  f"this program reads ({FORMAT_VERSION}); update wsicl")
        return dict(content["state_dict"]), ModelInfo.from_dict(content.get("metadata", {}))
    if "state_dict" in content and "hyper_parameters" in content:
        params = content["hyper_parameters"] or {}
        if params.get("data_slice_only"):
            raise CheckpointError(f"{path}: a 2D (data_slice_only) model; WSICL runs 3D models")
        if "nb_inner_channels" not in params:
            raise CheckpointError(f"{path}: Lightning checkpoint without 'nb_inner_channels' "
                                  "in hyper_parameters; cannot tell its architecture")
        state = {k[len("net."):] if k.startswith("net.") else k: v
                 for k, v in content["state_dict"].items()}
        info = ModelInfo(channels=[int(c) for c in params["nb_inner_channels"]],
                         convs_per_stage=int(params.get("nb_conv_layers_per_stage", 2)),
                         prompt_kinds=kinds_from_name(path.name),
                         provenance=f"PyTorch-Lightning checkpoint {path.name} "
                                    f"(epoch {content.get('epoch')}, step "
                                    f"{content.get('global_step')})")
        return state, info
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        state = {k[len("net."):] if k.startswith("net.") else k: v for k, v in content.items()}
        return state, ModelInfo(**infer_architecture(state),
                                prompt_kinds=kinds_from_name(path.name),
                                provenance=f"bare state_dict {path.name}")
    raise CheckpointError(f"{path}: neither a WSICL model, a Lightning checkpoint nor a "
                          f"state_dict (top-level keys: {sorted(map(str, content))[:8]})")


def kinds_from_name(name: str) -> List[str]:
    """Context kinds told by the authors' file names, which their checkpoints do not record:
    ``weak_ICL_bbox.ckpt`` -> box, ``weak_ICL_point.ckpt`` -> point, a name containing
    ``neuroverse3d`` (any case; trained with dense masks) -> mask; else none."""
    lowered = name.lower()
    if "neuroverse3d" in lowered:
        return ["mask"]
    if "point" in lowered:
        return ["point"]
    if "box" in lowered:
        return ["box"]
    return []


def _describe_mismatch(network: WSICLNet, state: Mapping[str, torch.Tensor]) -> str:
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} != {list(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("wrong shapes", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def build_model(info: ModelInfo, state: Optional[Mapping[str, torch.Tensor]] = None,
                source: str = "") -> WSICLNet:
    """A network for ``info`` with ``state`` loaded, in eval mode, ``metadata`` attached."""
    network = WSICLNet(info.channels, info.convs_per_stage)
    if state is not None:
        problem = _describe_mismatch(network, state)
        if problem:
            raise CheckpointError(f"{source}: weights do not match the architecture "
                                  f"channels={info.channels}, convs_per_stage="
                                  f"{info.convs_per_stage}: {problem}")
        network.load_state_dict({k: v.float() for k, v in state.items()})
    network.metadata = info
    return network.eval()


def resolve_source(source: Union[str, os.PathLike]) -> Path:
    """The file behind a bundled model name or a path."""
    if str(source) in BUNDLED_MODELS:
        path = BUNDLED_DIR / f"{source}.pt"
        if not path.is_file():
            raise CheckpointError(f"bundled model '{source}' is missing from {BUNDLED_DIR}; "
                                  "reinstall wsicl or pass a weights file")
        return path
    return Path(source).expanduser()


def load_model(source: Union[str, os.PathLike] = "box", device: Union[str, torch.device] = "cpu"
               ) -> WSICLNet:
    """Loads a network from a bundled name (``"box"``, ``"point"``) or a weights file.

    Returns the network in eval mode on ``device`` with ``network.metadata`` (a
    :class:`ModelInfo`). Raises :class:`CheckpointError` naming the file and the problem.
    """
    path = resolve_source(source)
    state, info = _split_checkpoint(_read(path), path)
    if str(source) in BUNDLED_MODELS:
        info.prompt_kinds = info.prompt_kinds or [str(source)]
    info.source = str(source) if str(source) in BUNDLED_MODELS else str(path)
    return build_model(info, state, str(path)).to(device)


def save_model(network: WSICLNet, path: Union[str, os.PathLike], info: ModelInfo,
               extra: Optional[Mapping[str, Any]] = None,
               dtype: Optional[torch.dtype] = None) -> Path:
    """Writes ``network`` in the project's format; atomic (temporary file, then rename).

    ``extra`` entries (plain containers and tensors only) are stored beside the weights,
    e.g. optimiser state for resuming training. ``dtype`` (e.g. ``torch.float16``) stores
    the weights in that type; they load back as float32.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
               "metadata": info.to_dict(),
               "state_dict": {k: v.detach().cpu().to(dtype or v.dtype)
                              for k, v in network.state_dict().items()}}
    content.update(extra or {})
    with atomic_write(path) as temporary:
        torch.save(content, str(temporary))
        written = _read(temporary)
        if not isinstance(written, Mapping) or written.get("state_dict", {}).keys() != \
                content["state_dict"].keys():
            raise WriteError(f"{path}: the file did not read back as written (disk full?); "
                             "nothing was kept")
    return path


def read_training_state(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """All entries of a project-format file (weights, metadata and training state)."""
    path = Path(path)
    content = _read(path)
    if not isinstance(content, Mapping) or content.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a WSICL training checkpoint; use --init to start "
                              "from other weights")
    return dict(content)


def restore_training(path: Union[str, os.PathLike], network: WSICLNet,
                     optimiser: torch.optim.Optimizer) -> (int, List[Dict[str, Any]]):
    """Loads a training checkpoint's weights and optimiser state into ``network`` and
    ``optimiser``; returns its step and history."""
    state = read_training_state(path)
    network.load_state_dict(state["state_dict"])
    optimiser.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state.get("history", []))
