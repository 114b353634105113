"""Choices shared by the command line, the Slicer panel's settings and the engine.

Kept free of torch so that ``wsicl --help`` and argument checking stay fast.
"""

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
"""``auto``: CUDA, then MPS, then the CPU."""

PRECISIONS = ("auto", "fp32", "bf16")
"""``auto``: bfloat16 where the hardware computes it natively (CUDA, CPUs with AMX-BF16 or
AVX512-BF16), fp32 elsewhere; ``fp32`` / ``bf16`` force one."""
