"""Writes the development volumes of ``../shared/data`` as nnU-Net-layout datasets.

Usage: ``python scripts/prepare_dev_data.py SHARED_DATA_DIR OUTPUT_DIR``

Creates ``OUTPUT_DIR/{ts_ct, ts_mr, brain, lung, breast}/`` each with ``imagesTr/``,
``labelsTr/`` and ``dataset.json``, the layout ``wsicl train --dataset`` and
``wsicl evaluate --dataset`` read. The TotalSegmentator examples keep their label names
(from ``class_map_total_and_total_mr.json``); the pyradiomics cases have label 1
``tumour``. Nothing is written into the project; the data keep their own licences.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import SimpleITK as sitk

Cases = List[Tuple[str, Path, Path]]


def write_dataset(folder: Path, cases: Cases, labels: Dict[str, int]) -> None:
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case, image, label in cases:
        sitk.WriteImage(sitk.ReadImage(str(image)),
                        str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(label)), str(folder / "labelsTr" / f"{case}.nii.gz"))
    meta = {"name": folder.name, "channel_names": {"0": "image"},
            "labels": {"background": 0, **labels}, "numTraining": len(cases),
            "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def main(shared: Path, output: Path) -> None:
    ts = shared / "totalsegmentator_examples"
    class_map = json.loads((ts / "class_map_total_and_total_mr.json").read_text(encoding="utf-8"))
    for name, image, label, key in (("ts_ct", "example_ct_sm", "example_seg", "total"),
                                    ("ts_mr", "example_mr_sm", "example_seg_mr", "total_mr")):
        present = set(int(v) for v in sitk.GetArrayViewFromImage(
            sitk.ReadImage(str(ts / f"{label}.nii.gz"))).ravel().tolist())
        labels = {n: int(v) for v, n in class_map[key].items() if int(v) in present}
        write_dataset(output / name, [(name, ts / f"{image}.nii.gz", ts / f"{label}.nii.gz")],
                      labels)
    radiomics = shared / "pyradiomics_cases"
    for name, cases in (("brain", ["brain1", "brain2"]), ("lung", ["lung1", "lung2"]),
                        ("breast", ["breast1"])):
        write_dataset(output / name, [(c, radiomics / f"{c}_image.nrrd",
                                       radiomics / f"{c}_label.nrrd") for c in cases],
                      {"tumour": 1})
    print(f"wrote {sorted(p.name for p in output.iterdir())} under {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shared_data", type=Path, help="the development data (../shared/data)")
    parser.add_argument("output", type=Path, help="an empty or new folder for the datasets")
    args = parser.parse_args()
    if args.output.exists() and any(args.output.iterdir()):
        sys.exit(f"{args.output}: not empty; give a new or empty folder (nothing is deleted)")
    main(args.shared_data, args.output)
