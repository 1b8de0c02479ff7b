"""Fused SwiGLU experts for few rows per expert on a CPU: the decoding-sized case.

Computes exactly ``kernels.moe_experts.moe_experts_ref`` (its torch reference): for each kept slot
``y = w * w2[e] @ (silu(w13[e, :I] @ x) * (w13[e, I:] @ x))``, summed per token. With a handful of
rows per expert those products are matrix-vector products whose cost is reading the expert weights
once; torch's BLAS small-M GEMMs on a 2-core x86 machine reach about half the memory bandwidth
there. The C kernel in ``csrc/moe_experts_cpu.c`` streams each weight row once, prefetching the next,
against up to eight activation rows in AVX-512 registers, OpenMP-parallel over (expert, tile).

It is compiled on first use with the system C compiler (``cc -O3 -march=native -fopenmp``) into
``$FATHOM_CACHE_DIR/kernels`` (default ``~/.cache/fathom/kernels``), keyed by source, compiler, flags
and CPU features, and loaded with ctypes (the call releases the GIL). ``cpu_kernel_status()`` says
whether it is usable and why not (no compiler, a failed build, no AVX-512, ``FATHOM_CPU_KERNEL=0``).

Shapes: x (T, H), w13 (E, 2I, H), w2 (E, H, I), topk_weights (T, K), sorted_slots (T*K,),
expert_offsets (E+1,) -> (T, H), all fp32 on the CPU.

Benchmark: ``fathom bench moe --tokens 16`` (the layer uses this kernel when segments are short).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from kernels.moe_experts import _check_experts_args

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "moe_experts_cpu.c"
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
TILE = 64  # weight rows per OpenMP work item: enough to amortise scheduling, small enough to balance


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("FATHOM_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "fathom") / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """Compile (once per source/compiler/CPU) and load the library; (None, reason) on failure."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None, f"the CPU kernel targets x86-64, this machine is {platform.machine()}"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC or install gcc)"
    key = hashlib.sha256(
        SOURCE.read_bytes() + cc.encode() + " ".join(CFLAGS).encode() + _cpu_features().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"moe_experts_cpu-{key}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run(
                    [cc, *CFLAGS, str(SOURCE), "-o", str(built), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if proc.returncode != 0:
                    return None, f"compiling {SOURCE.name} failed: {proc.stderr.strip()[:300]}"
                os.replace(built, target)  # atomic: concurrent builders never see a partial file
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"building {target} failed: {exc}"
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        return None, f"loading {target} failed: {exc}"
    fn = lib.fathom_moe_experts_cpu
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, i64, i64, i64, p, p, p, p, p, i64, i64]
    fn.restype = None
    mlp = lib.fathom_swiglu_mlp_cpu
    mlp.argtypes = [p, i64, i64, i64, p, p, p, p, p, p, i64, i64]
    mlp.restype = None
    lib.fathom_moe_cpu_simd_width.restype = ctypes.c_int
    return lib, ""


def cpu_kernel_status() -> tuple[bool, str]:
    """Whether the layer should use the C kernel for short segments, and why not."""
    if os.environ.get("FATHOM_CPU_KERNEL", "1") == "0":
        return False, "disabled by FATHOM_CPU_KERNEL=0"
    lib, why = _load()
    if lib is None:
        return False, why
    if lib.fathom_moe_cpu_simd_width() < 16:
        return False, "compiled without AVX-512: torch's BLAS path is faster on this CPU"
    return True, ""


def _check(x, w13, w2, topk_weights, sorted_slots, expert_offsets) -> None:
    for name, t in (("x", x), ("w13", w13), ("w2", w2)):
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(f"moe_experts_cpu needs fp32 CPU tensors, {name} is {t.dtype} on {t.device}")
    _check_experts_args(x, w13, w2, topk_weights, sorted_slots, expert_offsets)  # shapes, as the reference


def moe_experts_cpu(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_slots: torch.Tensor,
    expert_offsets: torch.Tensor,
) -> torch.Tensor:
    """Launcher of the C kernel; same arguments and result as ``moe_experts_ref`` (forward only).

    Raises RuntimeError when the kernel cannot be built or loaded here (``cpu_kernel_status``).
    """
    _check(x, w13, w2, topk_weights, sorted_slots, expert_offsets)
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"moe_experts_cpu is unavailable: {why}")
    top_k = topk_weights.shape[1]
    num_experts, two_i, hidden = w13.shape
    offsets = expert_offsets.to(torch.int64).contiguous()  # (E+1,)
    kept = int(offsets[-1])
    out = torch.zeros_like(x)
    if kept == 0:
        return out
    slots = sorted_slots[:kept].long()
    rows = slots // top_k  # (S,)
    xs = x.index_select(0, rows).contiguous()  # (S, H)
    scale = topk_weights.reshape(-1).index_select(0, slots).float().contiguous()  # (S,)
    w13c, w2c = w13.detach().contiguous(), w2.detach().contiguous()
    act = torch.empty(kept, two_i // 2)  # (S, I)
    y = torch.empty(kept, hidden)  # (S, H)
    lib.fathom_moe_experts_cpu(
        xs.data_ptr(), offsets.data_ptr(), num_experts, hidden, two_i // 2, w13c.data_ptr(), w2c.data_ptr(),
        scale.data_ptr(), act.data_ptr(), y.data_ptr(), TILE, torch.get_num_threads(),
    )  # fmt: skip
    return out.index_add_(0, rows, y)


def swiglu_mlp_cpu(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A dense SwiGLU MLP (a shared expert) over a few rows with the same C kernel, forward only:
    ``scale * (w_down @ (silu(w_gate @ x) * (w_up @ x)))``.

    Shapes:
        x (M, H), w_gate (I, H), w_up (I, H), w_down (H, I), scale (M,) or None -> (M, H)
    """
    tensors = {"x": x, "w_gate": w_gate, "w_up": w_up, "w_down": w_down}
    for name, t in tensors.items():
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 2:
            raise ValueError(
                f"swiglu_mlp_cpu needs 2-D fp32 CPU tensors, {name} is {t.dtype} {tuple(t.shape)}"
            )
    rows, hidden = x.shape
    inter = w_gate.shape[0]
    if w_gate.shape != (inter, hidden) or w_up.shape != (inter, hidden) or w_down.shape != (hidden, inter):
        raise ValueError(
            f"swiglu_mlp_cpu expects w_gate/w_up (I, H) and w_down (H, I) with H={hidden}; got "
            f"{tuple(w_gate.shape)}, {tuple(w_up.shape)}, {tuple(w_down.shape)}"
        )
    if scale is not None and scale.shape != (rows,):
        raise ValueError(f"scale must have shape ({rows},), got {tuple(scale.shape)}")
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"swiglu_mlp_cpu is unavailable: {why}")
    xc = x.contiguous()
    wg, wu, wd = (w.detach().contiguous() for w in (w_gate, w_up, w_down))
    sc = None if scale is None else scale.detach().float().contiguous()
    act = torch.empty(rows, inter)
    y = torch.empty(rows, hidden)
    lib.fathom_swiglu_mlp_cpu(
        xc.data_ptr(), rows, hidden, inter, wg.data_ptr(), wu.data_ptr(), wd.data_ptr(),
        None if sc is None else sc.data_ptr(), act.data_ptr(), y.data_ptr(), TILE, torch.get_num_threads(),
    )  # fmt: skip
    return y
