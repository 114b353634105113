"""Choosing where the network runs, at which precision, and what running out of memory means."""
import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import ContextManager, Union

import torch

from .options import DEVICE_CHOICES, PRECISIONS


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says what to change."""


def available_devices() -> list:
    """Devices this machine can use, best first (always ends with ``"cpu"``)."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices + ["cpu"]


def pick_device(choice: Union[str, torch.device] = "auto") -> torch.device:
    """``"auto"`` picks CUDA (under torchrun with several GPUs, the one of ``LOCAL_RANK``),
    then MPS, then the CPU; an unavailable choice is an error."""
    name = str(choice)
    if name == "auto":
        kind = available_devices()[0]
        local = os.environ.get("LOCAL_RANK", "")       # one GPU per process under torchrun
        if kind == "cuda" and local.isdigit() and torch.cuda.device_count() > 1:
            return torch.device("cuda", int(local) % torch.cuda.device_count())
        return torch.device(kind)
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICE_CHOICES)}")
    if kind not in available_devices():
        raise ValueError(f"device {name!r} is not available on this machine "
                         f"(available: {', '.join(available_devices())})")
    return torch.device(name)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16 in the Linux
    kernel's CPU flags). Elsewhere False: bfloat16 is then emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            flags = next((line for line in stream if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision that runs (``"fp32"`` or ``"bf16"``) for ``precision`` on ``device``:
    ``auto`` is bf16 on CUDA and on CPUs with native bfloat16, fp32 elsewhere (MPS too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    native = device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu())
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bfloat16 autocast on CUDA or the CPU for ``precision`` (resolved as by
    :func:`resolve_precision`); a no-op for fp32 and on MPS."""
    if resolve_precision(device, precision) == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text)


def out_of_memory_error(device: torch.device, mini_context: int) -> OutOfMemory:
    advice = [f"use a smaller mini-context (now {mini_context})"] if mini_context > 1 else []
    if device.type != "cpu":
        advice.append("run on the CPU (device 'cpu')")
    advice.append("close other programs using the memory")
    return OutOfMemory(f"ran out of memory on {device.type}: " + ", or ".join(advice))


_FREED_MEMORY_KEPT = False


def keep_freed_memory() -> bool:
    """Asks glibc to keep freed memory in the process instead of returning it.

    The network allocates and frees the same large activations for every stage; by default
    glibc serves each from fresh ``mmap`` pages, and the page faults on them cost as much as
    the convolutions on a CPU. Keeping freed memory roughly halves CPU inference time. It is
    process-wide, so it is opt-in for library users (the command line turns it on). Returns
    whether it took effect (only on Linux with glibc).
    """
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    _FREED_MEMORY_KEPT = bool(mallopt(m_mmap_max, 0)) and bool(
        mallopt(m_trim_threshold, 2 ** 31 - 1))
    return _FREED_MEMORY_KEPT
