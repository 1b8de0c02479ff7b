"""Routed SwiGLU experts and the dense SwiGLU MLP used for shared experts.

The routed experts keep their weights in the Hugging Face layout (``w13`` = gate rows then up
rows, ``w2`` = down), so loading from and comparing against Mixtral/Qwen/DeepSeek/OLMoE blocks
is a copy. ``swiglu_experts_torch`` is what the layer runs on the CPU and for training; it
works on slots already sorted by expert (``kernels.moe_routing``) and picks one of three
schedules, all computing the same sum:

* training (autograd recording): gather the tokens once in expert order, one GEMM pair per
  active expert, one ``index_add`` back;
* inference, short segments (few rows per active expert, e.g. decoding): the fused C kernel of
  ``kernels.moe_experts_cpu`` (fp32 on an AVX-512 CPU: streams each weight row once);
* inference, mid-length segments (or short ones without that kernel): one ``grouped_mm`` call per
  projection instead of a Python loop over dozens of experts;
* inference, long segments (prefill, batch scoring): stream expert by expert (gather its rows,
  GEMM pair, scale, ``index_add_`` into the output) so no (T*K, H) temporaries are allocated;
  on a CPU their page faults cost more than the gather itself (``fathom bench moe``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kernels.moe_experts_cpu import cpu_kernel_status, moe_experts_cpu, swiglu_mlp_cpu

logger = logging.getLogger(__name__)

# Average rows per active expert up to which one grouped_mm call per projection beats streamed
# per-expert GEMMs on a 2-core CPU (fathom bench moe: ~2% at 48 rows, 9% slower at 96).
GROUPED_MM_MAX_AVG_ROWS = 64
# Same for the fused C kernel, which beats torch up to about 16 rows per expert (fathom bench moe).
CPU_KERNEL_MAX_AVG_ROWS = 16
_HAS_GROUPED_MM = hasattr(F, "grouped_mm")
_logged_cpu_kernel = False


def _use_cpu_kernel(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> bool:
    global _logged_cpu_kernel
    if x.device.type != "cpu" or not x.dtype == w13.dtype == w2.dtype == torch.float32:
        return False
    ok, why = cpu_kernel_status()
    if not _logged_cpu_kernel:
        logger.info("MoE CPU decode kernel: %s", "in use" if ok else f"not used ({why})")
        _logged_cpu_kernel = True
    return ok


def _grouped_mm_aligned(*tensors: torch.Tensor) -> bool:
    """grouped_mm needs 16-byte aligned strides and storage (odd widths fall back to GEMMs)."""
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or any((st * size) % 16 for st in t.stride() if st != 1):
            return False
    return True


def _swiglu(gate_up: torch.Tensor, inter: int, inplace: bool) -> torch.Tensor:
    """(rows, 2I) -> (rows, I): silu(gate) * up."""
    gate, up = gate_up[:, :inter], gate_up[:, inter:]
    if inplace:
        return F.silu(gate, inplace=True).mul_(up)
    return F.silu(gate) * up


def swiglu_experts_torch(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_slots: torch.Tensor,
    expert_offsets: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of each token's routed SwiGLU experts (differentiable when autograd records).

    Args:
        x: token activations.
        w13: gate and up projections, gate rows first.
        w2: down projections.
        topk_weights: routing weight of each (token, choice) slot.
        sorted_slots: slot indices ``t * K + j`` grouped by expert (``kernels.moe_routing``).
        expert_offsets: segment bounds of each expert in ``sorted_slots``; the last entry is the
            number of kept slots (dropped slots follow it and contribute nothing).

    Shapes:
        x (T, H), w13 (E, 2I, H), w2 (E, H, I), topk_weights (T, K), sorted_slots (T*K,),
        expert_offsets (E+1,) -> (T, H)
    """
    top_k = topk_weights.shape[1]
    inter = w2.shape[2]
    offsets = expert_offsets.tolist()  # the one host sync of the layer
    kept = offsets[-1]
    out = torch.zeros_like(x)
    if kept == 0:
        return out
    slots = sorted_slots[:kept].long()  # (S,)
    token_of_row = slots // top_k  # (S,)
    weights = topk_weights.reshape(-1)[slots].to(x.dtype)  # (S,)
    segments = [(e, a, b) for e, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)) if b > a]

    grad = torch.is_grad_enabled() and (x.requires_grad or w13.requires_grad or w2.requires_grad)
    if grad:
        x_sorted = x[token_of_row]  # (S, H)
        pieces = []
        for e, a, b in segments:
            act = _swiglu(F.linear(x_sorted[a:b], w13[e]), inter, inplace=False)  # (c, I)
            pieces.append(F.linear(act, w2[e]))  # (c, H)
        y = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # (S, H)
        return out.index_add(0, token_of_row, y * weights[:, None])

    short = kept / len(segments)
    if short <= CPU_KERNEL_MAX_AVG_ROWS and _use_cpu_kernel(x, w13, w2):
        return moe_experts_cpu(x, w13, w2, topk_weights, sorted_slots, expert_offsets)
    if (
        _HAS_GROUPED_MM
        and x.device.type == "cpu"
        and short < GROUPED_MM_MAX_AVG_ROWS
        and inter % 4 == 0  # the SwiGLU output is a strided view of gate_up: its rows must stay aligned
        and _grouped_mm_aligned(x, w13, w2)
    ):
        offs = expert_offsets[1:].to(torch.int32)
        gate_up = F.grouped_mm(x[token_of_row], w13.transpose(1, 2), offs=offs)  # (S, 2I)
        y = F.grouped_mm(_swiglu(gate_up, inter, inplace=True), w2.transpose(1, 2), offs=offs)  # (S, H)
        return out.index_add_(0, token_of_row, y.mul_(weights[:, None]))

    for e, a, b in segments:
        rows = token_of_row[a:b]  # (c,)
        act = _swiglu(torch.mm(x[rows], w13[e].t()), inter, inplace=True)  # (c, I)
        y = torch.mm(act, w2[e].t()).mul_(weights[a:b, None])  # (c, H)
        out.index_add_(0, rows, y)
    return out


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored as two stacked weight tensors.

    Shapes:
        w13 (E, 2I, H): rows [0, I) gate projection, rows [I, 2I) up projection.
        w2 (E, H, I): down projection.
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, init_std: float = 0.02):
        super().__init__()
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.w13, std=self.init_std)
        nn.init.normal_(self.w2, std=self.init_std)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}"


class SwiGLUMLP(nn.Module):
    """Dense SwiGLU MLP (``down(silu(gate(x)) * up(x))``), the shared expert of DeepSeek and Qwen.

    The parameter names follow Hugging Face's ``gate_proj``/``up_proj``/``down_proj``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, init_std: float = 0.02):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        for lin in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(lin.weight, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_gate, w_up, w_down = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
        if (
            x.dim() == 2
            and x.shape[0] <= CPU_KERNEL_MAX_AVG_ROWS
            and not (torch.is_grad_enabled() and (x.requires_grad or w_gate.requires_grad))
            and _use_cpu_kernel(x, w_gate, w_down)
            and w_up.dtype == torch.float32
        ):
            return swiglu_mlp_cpu(x, w_gate, w_up, w_down)  # decode-sized: stream the weights once
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
