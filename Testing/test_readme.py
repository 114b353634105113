"""The README's examples run as written (on copies of the bundled sample CT), so they
cannot rot."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from conftest import CPU_FP32, results
from wsicl.contextfile import read_context_file
from wsicl.demo import sample

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.fixture
def scans(tmp_path, monkeypatch):
    """The file names the examples use, each a copy of the sample CT (122 x 101 x 30)."""
    for name in ("case1.nii.gz", "case3.nii.gz"):
        shutil.copy(sample("example_ct_sm.nii.gz"), tmp_path / name)
    sitk.WriteImage(sitk.ReadImage(str(sample("example_ct_sm.nii.gz"))),
                    str(tmp_path / "case2.nrrd"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_python_api_example_runs_as_written_after_the_demo(tmp_path, monkeypatch):
    """In a fresh folder: `wsicl demo` (the README's first command), then the example as
    written; its masks follow the liver (Dice against the sample MR's label)."""
    from wsicl.cli import main
    from wsicl.metrics import dice
    monkeypatch.chdir(tmp_path)
    assert main(["demo", *CPU_FP32, "--quiet"]) == 0
    (example,) = [block for block in blocks("python") if "wsicl.Predictor(" in block]
    namespace = {}
    exec(compile(example, "README.md (Python API)", "exec"), namespace)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz")))) == 5
    assert namespace["mask"].GetSize() == (117, 91, 20)
    assert sorted(p.name for p in tmp_path.glob("out*.nii.gz")) == ["out0.nii.gz",
                                                                    "out1.nii.gz"]
    assert dice(sitk.GetArrayFromImage(namespace["own"]), liver) > 0.4


def write_context_example(scans: Path) -> Path:
    """The README's context-set example as ``liver.json`` beside the scans, with the
    markups file it names (an ROI on the sample CT)."""
    (example,) = [block for block in blocks("json") if '"context"' in block]
    (scans / "liver.json").write_text(example, encoding="utf-8")
    image = sitk.ReadImage(str(scans / "case3.nii.gz"))
    centre = image.TransformContinuousIndexToPhysicalPoint([60.0, 70.0, 15.0])
    (scans / "case3.mrk.json").write_text(json.dumps({"markups": [{
        "type": "ROI", "coordinateSystem": "LPS", "center": list(centre),
        "size": [60.0, 45.0, 0.0]}]}), encoding="utf-8")
    return scans / "liver.json"


def test_the_context_set_example_is_a_valid_file(scans):
    context = read_context_file(write_context_example(scans))
    assert context.name == "liver" and len(context) == 3 and context.kinds() == ["box"]


def commands(block: str) -> list:
    """The command lines of a bash block: continuations joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    lines = [line.split("  #")[0].split(" # ")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def every_command() -> list:
    return [line for block in blocks("bash") for line in commands(block)]


def test_every_wsicl_command_of_the_readme_parses():
    """Each ``wsicl`` example uses flags and values the command line accepts; each
    ``torchrun ... -m wsicl.cli ...`` example, those of torchrun and of wsicl."""
    import shlex
    from torch.distributed.run import get_args_parser
    from wsicl.cli import build_parser
    wsicl_lines = [line for line in every_command() if line.startswith("wsicl ")]
    assert len(wsicl_lines) >= 7
    for line in wsicl_lines:
        for part in line.split(" && "):
            build_parser().parse_args(shlex.split(part)[1:])
    launches = [shlex.split(line) for line in every_command() if line.startswith("torchrun ")]
    assert len(launches) >= 2
    for words in launches:
        launcher = get_args_parser().parse_args(words[1:])
        assert launcher.module and launcher.training_script == "wsicl.cli"
        build_parser().parse_args(launcher.training_script_args)


def test_every_script_the_readme_names_exists_and_starts(tmp_path):
    import subprocess
    import sys
    root = README.parent
    tried = set()
    for line in every_command():
        if line.startswith("python scripts/"):
            script = line.split()[1]
            if script not in tried:
                tried.add(script)
                subprocess.run([sys.executable, str(root / script), "--help"], check=True,
                               capture_output=True, timeout=120)
        elif line.startswith("scripts/"):
            assert os.access(root / line.split()[0], os.X_OK), line
        elif line.startswith("python -m wsicl"):
            module = line.split()[2]
            subprocess.run([sys.executable, "-m", module, "--help"], check=True,
                           capture_output=True, timeout=120)
        elif "pip install" in line:
            for extra in re.findall(r'"(?:\.|wsicl)\[(\w+)\]"', line):
                assert f"\n{extra} = " in (root / "pyproject.toml").read_text(encoding="utf-8")
    assert len(tried) >= 4


def test_the_segment_examples_run_on_the_sample_data(scans, capsys):
    """The command-line block's ``segment`` lines, run as written on copies of the sample
    CT (``scans/``, a folder of images for ``dicom_folder/``; ``spleen.json``: the context
    example under another name)."""
    import glob
    import shlex
    from wsicl.cli import main
    liver = json.loads(write_context_example(scans).read_text(encoding="utf-8"))
    (scans / "spleen.json").write_text(json.dumps({**liver, "name": "spleen"}),
                                       encoding="utf-8")
    image = sitk.ReadImage(str(scans / "case3.nii.gz"))
    for folder, name in (("scans", "ct7.nii.gz"), ("dicom_folder", "ct8.nrrd")):
        (scans / folder).mkdir()
        sitk.WriteImage(image, str(scans / folder / name))
    (block,) = [b for b in blocks("bash") if "wsicl segment --context-set liver.json" in b]
    lines = [line for line in commands(block) if line.startswith("wsicl segment")]
    assert len(lines) == 3
    for line in lines:
        argv = [match for part in shlex.split(line)[1:]
                for match in (sorted(glob.glob(part)) if "*" in part else [part])]
        assert main(argv + ["--quiet", *CPU_FP32]) == 0, capsys.readouterr().err
    written = results(scans / "results")
    assert written == ["case1_liver.nii.gz", "case2_liver.nii.gz", "case3_liver.nii.gz",
                       "ct7_liver.nii.gz", "ct7_spleen.nii.gz", "ct8_liver.nii.gz"]


def test_the_dicom_seg_example_runs_as_written_after_the_demo(tmp_path, monkeypatch):
    import shlex
    import highdicom
    from wsicl.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["demo", *CPU_FP32, "--quiet"]) == 0
    (line,) = [line for block in blocks("bash") for line in commands(block)
               if "--format dicom-seg" in line]
    assert main(shlex.split(line)[1:] + ["--quiet", *CPU_FP32]) == 0
    seg = highdicom.seg.segread(str(tmp_path / "seg" / "example_ct_dicom.seg.dcm"))
    assert seg.number_of_segments == 1 and seg.pixel_array.any()
