"""Routed SwiGLU experts and the dense SwiGLU MLP used for shared experts.

The routed experts keep their weights in the Hugging Face layout (``w13`` = gate rows then up
rows, ``w2`` = down), so loading from and comparing against Mixtral/Qwen/DeepSeek/OLMoE blocks
is a copy. The torch path below is what the layer runs on the CPU and for training: tokens are
gathered once in expert order, each expert that received tokens runs two GEMMs on its
contiguous segment (or one ``grouped_mm`` call covers all experts when the segments are short),
and the weighted rows are scattered back with one ``index_add_``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Segments shorter than this (rows per active expert, on average) go through one grouped_mm
# call; longer ones through per-expert GEMMs, which MKL runs faster at large M (fathom bench moe).
GROUPED_MM_MAX_AVG_ROWS = 48
_HAS_GROUPED_MM = hasattr(F, "grouped_mm")


def _grouped_mm_aligned(*tensors: torch.Tensor) -> bool:
    """grouped_mm needs 16-byte aligned strides and storage (odd widths fall back to GEMMs)."""
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or any((st * size) % 16 for st in t.stride() if st != 1):
            return False
    return True


def swiglu_experts_torch(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_slots: torch.Tensor,
    expert_offsets: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of each token's routed SwiGLU experts, differentiable.

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
    num_tokens, hidden = x.shape
    top_k = topk_weights.shape[1]
    inter = w2.shape[2]
    counts = torch.diff(expert_offsets).tolist()  # the one host sync of the layer
    kept = int(sum(counts))
    out = torch.zeros_like(x)
    if kept == 0:
        return out
    slots = sorted_slots[:kept].long()  # (S,)
    token_of_row = slots // top_k  # (S,)
    x_sorted = x.index_select(0, token_of_row)  # (S, H)

    active = [c for c in counts if c > 0]
    use_grouped = (
        _HAS_GROUPED_MM
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and kept / len(active) < GROUPED_MM_MAX_AVG_ROWS
        and inter % 4 == 0
        and _grouped_mm_aligned(x_sorted, w13, w2)
    )
    if use_grouped:
        offs = expert_offsets[1:].to(torch.int32)
        gate_up = F.grouped_mm(x_sorted, w13.transpose(1, 2), offs=offs)  # (S, 2I)
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # (S, I)
        y = F.grouped_mm(act, w2.transpose(1, 2), offs=offs)  # (S, H)
    else:
        pieces = []
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            seg = x_sorted[start : start + count]  # (c, H)
            gate_up = F.linear(seg, w13[expert])  # (c, 2I)
            act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # (c, I)
            pieces.append(F.linear(act, w2[expert]))  # (c, H)
            start += count
        y = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # (S, H)

    weights = topk_weights.reshape(-1).index_select(0, slots).to(y.dtype)  # (S,)
    y = y * weights[:, None]
    return out.index_add(0, token_of_row, y.to(out.dtype))


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
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
