"""Choices shared by the command line, the Slicer panel's settings and the engine.

Kept free of torch so that ``wsicl --help`` and argument checking stay fast.
"""

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
"""``auto``: CUDA, then MPS, then the CPU."""

PRECISIONS = ("auto", "fp32", "bf16")
"""``auto``: bfloat16 where the hardware computes it natively (CUDA, CPUs with AMX-BF16 or
AVX512-BF16), fp32 elsewhere; ``fp32`` / ``bf16`` force one."""

OUTPUT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "dicom-seg")
"""File formats of written masks (``dicom-seg``: one DICOM SEG per DICOM series target,
every structure a segment, ``TARGET.seg.dcm``)."""

OUTPUT_TYPES = ("per-structure", "multilabel")
"""With several structures: one file per target and structure, or one label image per
target."""
