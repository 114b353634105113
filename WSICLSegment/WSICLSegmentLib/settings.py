"""How the network runs, as one object, saved with the scene.

The settings live as parameters of one ``vtkMRMLScriptedModuleNode`` per scene (attribute
``ModuleName`` = ``WSICLSegment``, singleton tag ``WSICLSegment``), like a Slicer module's
parameter node, so a saved scene reopens with the model and device it was segmented
with. The panel mirrors them; the module logic's ``process()`` takes the same fields.
"""
import dataclasses
from typing import List, Optional, Union

from wsicl.context import check_kinds
from wsicl.options import DEVICE_CHOICES, PRECISIONS

SINGLETON_TAG = "WSICLSegment"


@dataclasses.dataclass
class RunSettings:
    """Attributes:
        model: ``"box"``, ``"point"`` or a weights file path (or a loaded network, in tests
            and scripts; not saved).
        device: one of ``auto``, ``cpu``, ``cuda``, ``mps``.
        mini_context: context images processed at once (>= 1).
        precision: ``auto`` (bfloat16 where native), ``fp32`` or ``bf16``.
        refine: work at the structure's scale; None follows the model.
        prompt_kinds: what the model reads, when its file does not say; None: the file's.
        server: URL of a ``wsicl serve`` server to run on (its device, precision and
            mini-context apply; ``model`` names one of its models), "" for this computer.
            The server's token is not part of the settings: it stays out of the scene.
    """

    model: Union[str, object] = "box"
    device: str = "auto"
    mini_context: int = 1
    precision: str = "auto"
    refine: Optional[bool] = None
    prompt_kinds: Optional[List[str]] = None
    server: str = ""

    def __post_init__(self) -> None:
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got "
                             f"{self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")
        if int(self.mini_context) < 1:
            raise ValueError(f"mini-context must be at least 1, got {self.mini_context}")
        self.mini_context = int(self.mini_context)
        if self.prompt_kinds is not None:
            self.prompt_kinds = check_kinds(self.prompt_kinds, "prompt kinds")

    def key(self) -> tuple:
        """What decides whether loaded weights can be reused."""
        model = self.model if isinstance(self.model, str) else id(self.model)
        return (model, self.device, self.mini_context, self.precision, self.refine,
                tuple(self.prompt_kinds) if self.prompt_kinds is not None else None,
                self.server)


def settings_node(scene):
    """The scene's WSICL settings node (created on first use)."""
    node = scene.GetSingletonNode(SINGLETON_TAG, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(SINGLETON_TAG)
        node.SetName("WSICLSegment settings")
        node.SetAttribute("ModuleName", "WSICLSegment")
        node = scene.AddNode(node)
    return node


def save_settings(scene, settings: RunSettings) -> None:
    """Writes ``settings`` into the scene's settings node (a loaded network is not saved)."""
    node = settings_node(scene)
    if isinstance(settings.model, str):
        node.SetParameter("Model", settings.model)
    node.SetParameter("Device", settings.device)
    node.SetParameter("MiniContext", str(settings.mini_context))
    node.SetParameter("Precision", settings.precision)
    node.SetParameter("Refine", {None: "auto", True: "on", False: "off"}[settings.refine])
    node.SetParameter("PromptKinds", ",".join(settings.prompt_kinds or []))
    node.SetParameter("Server", settings.server)


def load_settings(scene) -> Optional[RunSettings]:
    """The settings saved in the scene, or None if it has none."""
    node = scene.GetSingletonNode(SINGLETON_TAG, "vtkMRMLScriptedModuleNode")
    if node is None or not node.GetParameter("Model"):
        return None
    kinds = node.GetParameter("PromptKinds")
    return RunSettings(
        model=node.GetParameter("Model"), device=node.GetParameter("Device") or "auto",
        mini_context=int(node.GetParameter("MiniContext") or 1),
        precision=node.GetParameter("Precision") or "auto",
        refine={"on": True, "off": False}.get(node.GetParameter("Refine")),
        prompt_kinds=kinds.split(",") if kinds else None,
        server=node.GetParameter("Server") or "")
