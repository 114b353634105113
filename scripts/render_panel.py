"""Renders the Slicer panel for the README after a scripted use of it.

Usage: ``python scripts/render_panel.py OUT.png`` (needs the test dependencies: PySide6,
slicer-core).

The real widget runs in the test harness (``Testing/panel_harness.py``: PySide6 offscreen,
shaped as PythonQt, on a real MRML scene). The script imports the demo's liver context set
(boxes on the sample CT) with the panel's Import button, adds the sample MR, picks it as
target, presses Segment and waits for the bundled box model's result, then saves the
panel. CTK and MRML widgets are drawn by the harness's Qt stand-ins, so the picture shows
the real panel's state and wording, not its exact look.
"""
import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "WSICLSegment")]


def main(output: Path) -> None:
    import SimpleITK as sitk
    from panel_harness import Panel
    from wsicl import load_model
    from wsicl.demo import run_demo
    from wsicl.predictor import Predictor
    from WSICLSegmentLib.volumes import image_to_volume
    work = Path(tempfile.mkdtemp(prefix="wsicl-panel-"))
    run_demo(work / "demo", Predictor(load_model("box"), "cpu", precision="fp32"),
             say=lambda line: None)
    panel = Panel(work / "settings")
    try:
        panel.ui.deviceSelector.setCurrentText("cpu")
        panel.dialogs.answers.append(str(work / "demo" / "context_liver.json"))
        panel.ui.importSetButton.click()
        target = panel.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR case 7")
        target.CreateDefaultDisplayNodes()
        image_to_volume(sitk.ReadImage(str(work / "demo" / "example_mr_sm.nii.gz")), target)
        panel.ui.contextVolumesTable.selectRow(0)
        panel.ui.targetSelector.setCurrentNode(target)
        panel.ui.segmentButton.click()
        panel.pump(lambda: not panel.widget.run.segmentRunning, timeout_s=300)
        if panel.dialogs.errors():
            raise SystemExit(f"the scripted run failed: {panel.dialogs.errors()}")
        view = panel.widget.parent
        view.resize(460, 1000)
        view.show()
        panel.run_events(0.5)
        view.grab().save(str(output))
        print(f"wrote {output} ({panel.ui.statusLabel.text})")
    finally:
        panel.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    main(parser.parse_args().output)
