"""The README's examples run as written (on copies of the bundled sample CT), so they
cannot rot."""
import json
import re
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from wsicl.contextfile import read_context_file
from wsicl.demo import sample

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.fixture
def scans(tmp_path, monkeypatch):
    """The file names the examples use, each a copy of the sample CT (122 x 101 x 30)."""
    for name in [f"ct{index}.nii.gz" for index in range(1, 7)] + ["case1.nii.gz",
                                                                   "case3.nii.gz"]:
        shutil.copy(sample("example_ct_sm.nii.gz"), tmp_path / name)
    sitk.WriteImage(sitk.ReadImage(str(sample("example_ct_sm.nii.gz"))),
                    str(tmp_path / "case2.nrrd"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_python_api_example_runs(scans):
    (example,) = [block for block in blocks("python") if "wsicl.Predictor(" in block]
    namespace = {}
    exec(compile(example, "README.md (Python API)", "exec"), namespace)
    assert namespace["mask"].GetSize() == (122, 101, 30)
    assert sorted(p.name for p in scans.glob("out*.nii.gz")) == ["out0.nii.gz", "out1.nii.gz"]
    assert namespace["own"].GetSize() == (122, 101, 30)


def test_the_context_set_example_is_a_valid_file(scans):
    (example,) = [block for block in blocks("json") if '"context"' in block]
    (scans / "liver.json").write_text(example, encoding="utf-8")
    image = sitk.ReadImage(str(scans / "case3.nii.gz"))
    centre = image.TransformContinuousIndexToPhysicalPoint([60.0, 70.0, 15.0])
    (scans / "case3.mrk.json").write_text(json.dumps({"markups": [{
        "type": "ROI", "coordinateSystem": "LPS", "center": list(centre),
        "size": [60.0, 45.0, 0.0]}]}), encoding="utf-8")
    context = read_context_file(scans / "liver.json")
    assert context.name == "liver" and len(context) == 3 and context.kinds() == ["box"]
