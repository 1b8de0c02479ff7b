"""Whether the Triton kernels in this package can run, and why not.

Layers decide once, in ``__init__``, between a Triton launcher and its ``*_ref`` twin by calling
:func:`triton_status` on the device of their parameters. Everything here is cheap and imports only torch,
triton (optionally) and the standard library.

When triton is missing, ``triton`` and ``tl`` below are small stand-ins so that the kernel modules still
import (their ``@triton.jit`` functions are then never called) and their torch references keep working.
"""

import os
import types

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON: bool = True
except ImportError:
    HAS_TRITON = False
    triton = types.SimpleNamespace(jit=lambda fn=None, **_: fn, cdiv=lambda a, b: -(-a // b))
    tl = types.SimpleNamespace(constexpr=None)

# Triton decides between compiling and interpreting when a kernel is decorated, i.e. at import time, so the
# environment variable has to be set before this package is imported (tests/conftest.py does that).
TRITON_INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"

MIN_CUDA_CAPABILITY = (8, 0)  # tl.dot on bf16 needs Ampere or newer


def triton_status(device: torch.device | str) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors that live on ``device``.

    Args:
        device: a torch device or its string form ("cpu", "cuda", "cuda:1").

    Returns:
        ``(True, "")`` when they can, else ``(False, reason)`` with a reason fit for a log line.
    """
    device = torch.device(device)
    if not HAS_TRITON:
        return False, "triton is not installed"
    if device.type == "cpu":
        if TRITON_INTERPRET:
            return True, ""
        return False, "device cpu needs TRITON_INTERPRET=1 (set before importing triton)"
    if device.type != "cuda":
        return False, f"device type {device.type} is not supported by the Triton kernels"
    if TRITON_INTERPRET:
        # The interpreter copies CUDA tensors to the host and back: slow but correct.
        return True, ""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    if torch.version.hip is not None:
        return False, "ROCm (HIP) builds are untested with these kernels"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < MIN_CUDA_CAPABILITY:
        need = ".".join(map(str, MIN_CUDA_CAPABILITY))
        return False, f"CUDA capability {major}.{minor} < {need}"
    return True, ""


def device_name(device: torch.device | str) -> str:
    """Name of the device as used for keys in ``kernels/configs/*.json``.

    CUDA devices give their marketing name with spaces and dashes turned into underscores
    ("NVIDIA H100 80GB HBM3" -> "NVIDIA_H100_80GB_HBM3"); anything else gives its device type ("cpu").
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    return "_".join(name.replace("-", " ").split())
