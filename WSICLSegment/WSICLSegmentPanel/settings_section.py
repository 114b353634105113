"""The panel's "Model" section: model, device, precision, scale, context kind, where to
run (this computer or a ``wsicl serve`` server), the connection test and the dependency
check. Kept in Slicer's settings (QSettings) across sessions and in the scene (parameter
node) with each run; the server token only in QSettings."""
import importlib.util
from typing import List, Optional

import qt
import slicer

SETTINGS_PREFIX = "WSICLSegment/"
MODELS = [("Bundled box model (CPU friendly)", "box"),
          ("Bundled point model (CPU friendly)", "point"),
          ("Weights file (.ckpt / .pt)...", "file")]
DEVICES = ["auto", "cuda", "cpu", "mps"]
PRECISION_CHOICES = [("Automatic (bfloat16 where the hardware has it)", "auto"),
                     ("Full precision (fp32)", "fp32"), ("bfloat16", "bf16")]
REFINE_CHOICES = [("As the model was trained", None),
                  ("Refine at the structure's scale", True),
                  ("Whole view", False)]
CONTEXT_KINDS = [("As the file says", None), ("Boxes", ["box"]), ("Points", ["point"]),
                 ("Masks (segments)", ["mask"])]
RUN_ON = ["This computer", "Server"]


def missing_packages() -> List[str]:
    """Python packages the engine needs that this Slicer lacks."""
    return [name for name in ("torch", "scipy") if importlib.util.find_spec(name) is None]


class SettingsSection:
    """Wires the settings widgets of ``ui`` to QSettings, the scene and ``logic``."""

    def __init__(self, ui, logic) -> None:
        self.ui, self.logic = ui, logic
        for label, _ in MODELS:
            ui.modelSelector.addItem(label)
        ui.deviceSelector.addItems(DEVICES)
        for selector, choices in ((ui.precisionSelector, PRECISION_CHOICES),
                                  (ui.refineSelector, REFINE_CHOICES),
                                  (ui.contextKindSelector, CONTEXT_KINDS)):
            for label, _ in choices:
                selector.addItem(label)
        ui.runOnSelector.addItems(RUN_ON)
        self.restore()
        for selector in (ui.modelSelector, ui.deviceSelector, ui.precisionSelector,
                         ui.refineSelector, ui.contextKindSelector, ui.runOnSelector):
            selector.currentIndexChanged.connect(self.onChanged)
        ui.weightsPathLineEdit.currentPathChanged.connect(self.onChanged)
        ui.miniContextSpinBox.valueChanged.connect(self.onChanged)
        ui.serverUrlLineEdit.editingFinished.connect(self.onChanged)
        ui.serverTokenLineEdit.editingFinished.connect(self.onChanged)
        ui.testConnectionButton.clicked.connect(self.onTestConnection)
        ui.installButton.clicked.connect(self.onInstall)
        self.updateDependencies()

    def restore(self) -> None:
        """The settings of the last session (QSettings)."""
        settings, ui = qt.QSettings(), self.ui
        ui.modelSelector.setCurrentIndex(int(settings.value(SETTINGS_PREFIX + "model", 0)))
        ui.weightsPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "weights", "")
        ui.deviceSelector.setCurrentText(settings.value(SETTINGS_PREFIX + "device", "auto"))
        ui.miniContextSpinBox.value = int(settings.value(SETTINGS_PREFIX + "miniContext", 1))
        for selector, key in ((ui.precisionSelector, "precision"), (ui.refineSelector, "refine"),
                              (ui.contextKindSelector, "contextKind"),
                              (ui.runOnSelector, "runOn")):
            selector.setCurrentIndex(int(settings.value(SETTINGS_PREFIX + key, 0)))
        ui.serverUrlLineEdit.text = settings.value(SETTINGS_PREFIX + "serverUrl", "")
        ui.serverTokenLineEdit.text = settings.value(SETTINGS_PREFIX + "serverToken", "")
        ui.weightsPathLineEdit.setEnabled(ui.modelSelector.currentIndex == 2)
        self.updateRunOn()

    def updateRunOn(self) -> None:
        """Server fields only when running on a server, whose device and precision apply."""
        remote = self.ui.runOnSelector.currentIndex == 1
        for widget in (self.ui.serverUrlLabel, self.ui.serverUrlLineEdit,
                       self.ui.serverTokenLabel, self.ui.serverTokenLineEdit,
                       self.ui.testConnectionButton, self.ui.connectionStatusLabel):
            widget.setVisible(remote)
        for widget in (self.ui.deviceSelector, self.ui.miniContextSpinBox,
                       self.ui.precisionSelector):
            widget.setEnabled(not remote)

    def onChanged(self, *_) -> None:
        settings, ui = qt.QSettings(), self.ui
        for key, value in (("model", ui.modelSelector.currentIndex),
                           ("weights", ui.weightsPathLineEdit.currentPath),
                           ("device", ui.deviceSelector.currentText),
                           ("miniContext", ui.miniContextSpinBox.value),
                           ("precision", ui.precisionSelector.currentIndex),
                           ("refine", ui.refineSelector.currentIndex),
                           ("contextKind", ui.contextKindSelector.currentIndex),
                           ("runOn", ui.runOnSelector.currentIndex),
                           ("serverUrl", ui.serverUrlLineEdit.text.strip()),
                           ("serverToken", ui.serverTokenLineEdit.text.strip())):
            settings.setValue(SETTINGS_PREFIX + key, value)
        self.updateRunOn()
        ui.weightsPathLineEdit.setEnabled(ui.modelSelector.currentIndex == 2)
        self.updateDependencies()
        if not missing_packages():
            from WSICLSegmentLib.settings import save_settings
            with slicer.util.tryWithErrorDisplay("Invalid settings."):
                save_settings(slicer.mrmlScene, self.runSettings())

    def runSettings(self):
        """The panel's settings as the logic's settings object."""
        from WSICLSegmentLib.settings import RunSettings
        ui = self.ui
        return RunSettings(
            model=self.modelSource(), device=ui.deviceSelector.currentText,
            mini_context=ui.miniContextSpinBox.value,
            precision=PRECISION_CHOICES[ui.precisionSelector.currentIndex][1],
            refine=REFINE_CHOICES[ui.refineSelector.currentIndex][1],
            prompt_kinds=CONTEXT_KINDS[ui.contextKindSelector.currentIndex][1],
            server=ui.serverUrlLineEdit.text.strip() if ui.runOnSelector.currentIndex == 1
            else "")

    def serverToken(self) -> Optional[str]:
        """The token typed for the server (Slicer's settings, not the scene), or None."""
        return self.ui.serverTokenLineEdit.text.strip() or None

    def modelSource(self) -> str:
        key = MODELS[self.ui.modelSelector.currentIndex][1]
        return self.ui.weightsPathLineEdit.currentPath if key == "file" else key

    def onTestConnection(self) -> None:
        self.ui.connectionStatusLabel.setText("Connecting...")
        slicer.app.processEvents()
        try:
            summary = self.logic.testConnection(self.ui.serverUrlLineEdit.text.strip(),
                                                self.serverToken())
        except (ValueError, RuntimeError) as error:
            summary = f"Failed: {error}"
        self.ui.connectionStatusLabel.setText(summary)

    def showSceneSettings(self) -> None:
        """Shows the settings a loaded scene was segmented with, if it saved any."""
        if missing_packages():
            return
        from WSICLSegmentLib.settings import load_settings
        settings, ui = load_settings(slicer.mrmlScene), self.ui
        if settings is None:
            return
        keys = [key for _, key in MODELS]
        ui.modelSelector.setCurrentIndex(
            keys.index(settings.model) if settings.model in keys else keys.index("file"))
        if settings.model not in keys:
            ui.weightsPathLineEdit.currentPath = settings.model
        ui.deviceSelector.setCurrentText(settings.device)
        ui.miniContextSpinBox.value = settings.mini_context
        ui.runOnSelector.setCurrentIndex(1 if settings.server else 0)
        if settings.server:
            ui.serverUrlLineEdit.text = settings.server
        for selector, choices, value in (
                (ui.precisionSelector, PRECISION_CHOICES, settings.precision),
                (ui.refineSelector, REFINE_CHOICES, settings.refine),
                (ui.contextKindSelector, CONTEXT_KINDS, settings.prompt_kinds)):
            values = [choice for _, choice in choices]   # a script may have saved others
            selector.setCurrentIndex(values.index(value) if value in values else 0)

    def updateDependencies(self) -> None:
        missing, ui = missing_packages(), self.ui
        ui.installButton.setVisible(bool(missing))
        ui.dependencyLabel.setText(f"Missing: {', '.join(missing)}" if missing else "")
        for button in (ui.segmentButton, ui.segmentAllButton, ui.interactiveButton,
                       ui.newSetButton, ui.importSetButton):   # all need the engine
            button.setEnabled(not missing)
        if missing:
            ui.deviceWarningLabel.setVisible(False)
            return
        from wsicl.device import available_devices, native_bf16_cpu
        detected = available_devices()[0]
        bf16 = "native" if native_bf16_cpu() else "emulated (fp32 is faster)"
        ui.detectedDeviceLabel.setText(
            f"detected: {', '.join(available_devices())}; CPU bfloat16: {bf16}")
        chosen = ui.deviceSelector.currentText
        ui.deviceWarningLabel.setVisible(
            (detected if chosen == "auto" else chosen) == "cpu" and
            ui.runOnSelector.currentIndex == 0)

    def onInstall(self) -> None:
        missing = missing_packages()
        if not slicer.util.confirmOkCancelDisplay(
                f"WSICL needs {', '.join(missing)}. Install now? PyTorch comes through the "
                "PyTorch extension's installer, matched to this computer's GPU; this can take "
                "several minutes and a restart of Slicer.", "Install dependencies"):
            return
        with slicer.util.tryWithErrorDisplay("Installing dependencies failed.", waitCursor=True):
            if "torch" in missing:
                import PyTorchUtils
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    raise RuntimeError("PyTorch was not installed; install the PyTorch "
                                       "extension from the Extensions Manager and retry")
            if "scipy" in missing:
                slicer.util.pip_install("scipy")
        self.updateDependencies()
