"""``wsicl demo``: the bundled model on the bundled sample data, end to end.

Context: the sample CT with 2D boxes drawn on a few axial slices of the liver. Target: the
sample MR (another patient, another modality), segmented in context, then the MR alone
with boxes on itself (interactive mode). Writes the context-set file, both masks and a PNG
overview, and prints Dice against the sample labels.
"""
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

from .contextfile import read_context_file, write_context_file
from .context import Box
from .geometry import canonical
from .files import write_png, write_text
from .imageio import write_atomic
from .metrics import dice
from .predictor import Predictor

DATA_DIR = Path(__file__).resolve().parent / "data"
LIVER = 5


def sample(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled sample missing; reinstall wsicl")
    return path


def boxes_on_slices(label: np.ndarray, slices: int) -> List[Dict[str, List[int]]]:
    """Tight 2D boxes on ``slices`` evenly spaced slices of array axis 0 through the
    structure, in voxel coordinates ``(i, j, k)`` (inclusive), as a user would draw them."""
    filled = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))
    chosen = np.unique(np.rint(np.linspace(filled[0], filled[-1], slices + 2)[1:-1]).astype(int))
    boxes = []
    for k in chosen:
        j, i = np.nonzero(label[k])
        boxes.append({"min": [int(i.min()), int(j.min()), int(k)],
                      "max": [int(i.max()), int(j.max()), int(k)]})
    return boxes


def to_boxes(entries: Sequence[Dict[str, List[int]]]) -> List[Box]:
    return [Box(tuple(b["min"]), tuple(b["max"])) for b in entries]


DEMO_OUTPUTS = ("example_ct_sm.nii.gz", "example_mr_sm.nii.gz", "example_ct_dicom",
                "context_liver.json", "mr_liver_in_context.nii.gz",
                "mr_liver_interactive.nii.gz", "overview.png", "dice.json")
"""What the demo writes into its folder: the sample CT and MR (so that the context-set
file, which names the CT beside it, keeps working wherever the folder goes), the CT as a
DICOM series (to try DICOM in, DICOM SEG out), the context set, the two masks, the picture
and the scores."""


def write_dicom_series(image: sitk.Image, folder: Path, modality: str = "CT",
                       patient: str = "WSICL^Sample") -> Path:
    """Writes a scalar 3D ``image`` as a DICOM series in ``folder`` (one file per slice
    ``k``, int16 voxels as stored, e.g. Hounsfield units; position, orientation and spacing
    from the image's geometry, new UIDs), read back and compared before it replaces any
    earlier ``folder``; returns ``folder``."""
    import os
    import shutil
    import tempfile
    from .files import WriteError, current_umask
    voxels = sitk.Cast(image, sitk.sitkInt16)
    direction = voxels.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125." + ".".join(
        str(int(part)) for part in np.random.default_rng().integers(1, 10 ** 8, 3))
    folder = Path(folder)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for k in range(voxels.GetDepth()):
            plane = voxels[:, :, k]
            position = voxels.TransformIndexToPhysicalPoint((0, 0, k))
            tags = {"0020|000e": uid + ".2", "0020|000d": uid + ".1", "0020|0052": uid + ".3",
                    "0008|0060": modality, "0010|0010": patient, "0010|0020": "WSICL01",
                    "0008|103e": f"WSICL sample {modality}",
                    "0020|0032": "\\".join(f"{p:.6f}" for p in position),
                    "0020|0037": "\\".join(f"{d:.6f}" for d in (
                        direction[0], direction[3], direction[6],
                        direction[1], direction[4], direction[7])),
                    "0020|0013": str(k + 1), "0018|0050": f"{voxels.GetSpacing()[2]:.6f}"}
            for key, value in tags.items():
                plane.SetMetaData(key, value)
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(temporary / f"slice{k:04d}.dcm"))
            writer.Execute(plane)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(temporary)))
        written = reader.Execute()
        if not np.array_equal(sitk.GetArrayViewFromImage(written),
                              sitk.GetArrayViewFromImage(voxels)):
            raise WriteError(f"{folder}: the DICOM series did not read back as written (disk "
                             "full?); nothing was kept")
        os.chmod(temporary, 0o777 & ~current_umask())       # mkdtemp made it private
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    except (OSError, RuntimeError) as error:
        raise WriteError(f"{folder}: could not be written ({error}); check the free disk "
                         "space and the folder's permissions") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def check_demo_outputs(output: Path, overwrite: bool) -> None:
    """A ValueError naming the first demo output already in ``output``, unless
    ``overwrite``."""
    existing = [output / name for name in DEMO_OUTPUTS if (output / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]}: exists ({len(existing)} demo output(s) in all); "
                         "pass --overwrite to replace, or choose another --output-dir")


def run_demo(output: Path, predictor: Predictor, say=print) -> Dict[str, float]:
    """Runs the demo into ``output`` with a box-prompt predictor; returns the Dice scores."""
    output.mkdir(parents=True, exist_ok=True)
    ct, mr = sitk.ReadImage(str(sample("example_ct_sm.nii.gz"))), sitk.ReadImage(
        str(sample("example_mr_sm.nii.gz")))
    ct_liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg.nii.gz")))) == LIVER
    mr_liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample("example_seg_mr.nii.gz")))) \
        == LIVER
    write_atomic(ct, output / "example_ct_sm.nii.gz")
    write_atomic(mr, output / "example_mr_sm.nii.gz")
    write_dicom_series(ct, output / "example_ct_dicom")
    context_boxes = boxes_on_slices(ct_liver, 5)
    context_file = write_context_file(
        output / "context_liver.json", "liver", "voxel",
        [{"image": "example_ct_sm.nii.gz", "boxes": context_boxes}])
    say(predictor.describe())
    context_set = read_context_file(context_file)
    in_context = predictor.segment(mr, context_set).mask
    interactive_boxes = boxes_on_slices(mr_liver, 3)
    interactive = predictor.segment_interactive(mr, boxes=to_boxes(interactive_boxes)).mask
    results = {}
    for name, mask in (("in_context", in_context), ("interactive", interactive)):
        write_atomic(mask, output / f"mr_liver_{name}.nii.gz")
        results[name] = dice(sitk.GetArrayFromImage(mask), mr_liver)
    say(f"in-context  (5 boxes on the CT liver -> MR): Dice {results['in_context']:.3f}")
    say(f"interactive (3 boxes on the MR liver itself): Dice {results['interactive']:.3f}")
    picture = overview(ct, context_boxes, mr, mr_liver,
                       {"in-context": in_context, "interactive": interactive},
                       results, output / "overview.png")
    say(f"wrote {output} (masks, context_liver.json, the CT as a DICOM series"
        + (", overview.png)" if picture else ")"))
    write_text(output / "dice.json", json.dumps(results, indent=1))
    return results


def _canonical_array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(canonical(image))


def overview(context: sitk.Image, context_boxes, target: sitk.Image, truth: np.ndarray,
             masks: Dict[str, sitk.Image], scores: Dict[str, float],
             path: Path) -> bool:
    """Axial and coronal slices: the context with its boxes, then each result with the
    predicted contour (solid) and the sample label (dashed). False if matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    truth_image = sitk.GetImageFromArray(truth.astype(np.uint8))
    truth_image.CopyInformation(target)
    truth_array = _canonical_array(truth_image)
    axial = int(np.flatnonzero(truth_array.reshape(truth_array.shape[0], -1).any(1)).mean())
    coronal = int(np.flatnonzero(truth_array.any(axis=(0, 2))).mean())
    shape, spacing = truth_array.shape, canonical(target).GetSpacing()
    heights = [shape[1] * spacing[1], shape[0] * spacing[2]]  # axial and coronal, in mm
    width = shape[2] * spacing[0]
    figure, axes = plt.subplots(2, 1 + len(masks), gridspec_kw={"height_ratios": heights},
                                figsize=(4 * (1 + len(masks)),
                                         4 * sum(heights) / width + 1.2))
    oriented = canonical(context)
    corners = [[oriented.TransformPhysicalPointToContinuousIndex(
        context.TransformContinuousIndexToPhysicalPoint([float(v) for v in box[end]]))
        for end in ("min", "max")] for box in context_boxes]
    slices = [int(round(low[2])) for low, _ in corners]
    middle = slices[len(slices) // 2]
    context_array = sitk.GetArrayFromImage(oriented)
    si, sj, sk = oriented.GetSpacing()
    panel = axes[0][0]
    panel.imshow(context_array[middle], cmap="gray", aspect=sj / si)
    for (low, high), k in zip(corners, slices):
        if k == middle:
            (i0, i1), (j0, j1) = sorted([low[0], high[0]]), sorted([low[1], high[1]])
            panel.add_patch(plt.Rectangle((i0 - 0.5, j0 - 0.5), i1 - i0 + 1, j1 - j0 + 1,
                                          fill=False, color="yellow", linewidth=1.5))
    panel.set_title(f"context CT, axial: one of {len(slices)} box prompts", fontsize=9)
    panel = axes[1][0]
    box_rows = [j for low, high in corners for j in (low[1], high[1])]
    row_j = int(round(np.mean(box_rows)))
    panel.imshow(context_array[:, row_j][::-1], cmap="gray", aspect=sk / si)
    top = context_array.shape[0] - 1
    for (low, high), k in zip(corners, slices):  # each 2D box seen edge-on: one line
        i0, i1 = sorted([low[0], high[0]])
        panel.plot([i0 - 0.5, i1 + 0.5], [top - k, top - k], color="yellow", linewidth=1.5)
    panel.set_title(f"context CT, coronal: the {len(slices)} boxes edge-on", fontsize=9)
    for row in range(2):
        axes[row][0].axis("off")
    target_array = _canonical_array(target)
    ti, tj, tk = canonical(target).GetSpacing()
    for column, (name, mask) in enumerate(masks.items(), start=1):
        mask_array = _canonical_array(mask)
        for row, (image_slice, mask_slice, truth_slice) in enumerate((
                (target_array[axial], mask_array[axial], truth_array[axial]),
                (target_array[:, coronal][::-1], mask_array[:, coronal][::-1],
                 truth_array[:, coronal][::-1]))):
            panel = axes[row][column]
            panel.imshow(image_slice, cmap="gray", aspect=(tk if row else tj) / ti)
            if truth_slice.any():
                panel.contour(truth_slice, levels=[0.5], colors="cyan", linestyles="dashed",
                              linewidths=1)
            if mask_slice.any():
                panel.contour(mask_slice, levels=[0.5], colors="red", linewidths=1.5)
            panel.set_title(f"MR target, {name}: Dice {scores[name.replace('-', '_')]:.2f}",
                            fontsize=9)
            panel.axis("off")
    figure.suptitle("WSICL demo: liver (red = prediction, cyan dashed = sample label)")
    figure.tight_layout()
    write_png(figure, path, dpi=110)
    plt.close(figure)
    return True
