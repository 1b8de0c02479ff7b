"""Mixture-of-experts SwiGLU experts as two grouped GEMMs over expert-sorted slots.

Given the routing of T tokens to K experts each (slots s = t*K + j, see ``kernels.moe_routing``):

    out[t] = sum_j w[t, j] * W2[e] @ (silu(W13[e, :I] @ x[t]) * (W13[e, I:] @ x[t])),  e = expert(t*K + j)

over kept slots only. Shapes: x (T, H); w13 (E, 2I, H), gate rows first then up rows (the Hugging Face
``gate_up_proj`` layout); w2 (E, H, I) (``down_proj``); topk_weights (T, K); sorted_slots (T*K,) and
expert_offsets (E+1,) from routing; out (T, H) in x.dtype.

Triton path (forward-only; the layer uses the torch path for training):
  1. ``_moe_gate_up_kernel``: per (block of BLOCK_M sorted rows of one expert, BLOCK_N columns of I), gathers
     the rows of x by ``sorted_slots // K`` inside the kernel (no permuted copy of x), runs the gate and up
     GEMMs together and writes silu(gate) * up -> intermediate (S, I) in x.dtype.
  2. ``_moe_down_kernel``: the same row blocks times w2, scaled by the routing weight, written in fp32 to row
     ``slot`` of a (T*K, H) buffer (dropped slots stay zero); a torch sum over K gives (T, H).
Both accumulate in fp32. The block -> expert map is built with torch on the device from expert_offsets and an
upper bound on the number of blocks, so nothing waits for the GPU.

Benchmark on a GPU: ``triton.testing.do_bench(lambda: moe_experts(x, w13, w2, *routing))`` against
``moe_experts_ref`` for e.g. T=4096, H=4096, I=14336, E=8, K=2 in bf16; ``python -m kernels.tune --op
moe_experts`` times the launch parameters.
"""

import torch
import torch.nn.functional as F

from kernels.capabilities import TRITON_INTERPRET, tl, triton, triton_status
from kernels.launch_config import get_config

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_experts_args(
    x, w13, w2, topk_weights, sorted_slots, expert_offsets
) -> tuple[int, int, int, int, int]:
    """Validate the arguments of moe_experts(_ref); returns (T, H, E, I, K)."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (T, H), got shape {tuple(x.shape)}")
    num_tokens, hidden = x.shape
    if w13.dim() != 3 or w13.shape[2] != hidden or w13.shape[1] % 2:
        raise ValueError(f"w13 has shape {tuple(w13.shape)} but expected (E, 2*I, H) with H={hidden} from x")
    num_experts, inter = w13.shape[0], w13.shape[1] // 2
    if tuple(w2.shape) != (num_experts, hidden, inter):
        raise ValueError(
            f"w2 has shape {tuple(w2.shape)} but expected (E, H, I) = ({num_experts}, {hidden}, {inter}) "
            "from w13 and x"
        )
    if topk_weights.dim() != 2 or topk_weights.shape[0] != num_tokens:
        raise ValueError(
            f"topk_weights has shape {tuple(topk_weights.shape)} but expected (T, K) with T={num_tokens}"
        )
    top_k = topk_weights.shape[1]
    if tuple(sorted_slots.shape) != (num_tokens * top_k,):
        raise ValueError(
            f"sorted_slots has shape {tuple(sorted_slots.shape)} but expected (T*K,) = "
            f"({num_tokens * top_k},)"
        )
    if tuple(expert_offsets.shape) != (num_experts + 1,):
        raise ValueError(
            f"expert_offsets has shape {tuple(expert_offsets.shape)} but expected (E+1,) = "
            f"({num_experts + 1},)"
        )
    if x.dtype not in DTYPES or w13.dtype != x.dtype or w2.dtype != x.dtype:
        raise ValueError(
            f"x, w13 and w2 must share one dtype among {DTYPES}; got {x.dtype}, {w13.dtype}, {w2.dtype}"
        )
    if not topk_weights.is_floating_point():
        raise ValueError(f"topk_weights must be floating point, got {topk_weights.dtype}")
    for name, t in (("sorted_slots", sorted_slots), ("expert_offsets", expert_offsets)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    for name, t in (("w13", w13), ("w2", w2), ("topk_weights", topk_weights), ("sorted_slots", sorted_slots),
                    ("expert_offsets", expert_offsets)):  # fmt: skip
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    return num_tokens, hidden, num_experts, inter, top_k


def moe_experts_ref(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_slots: torch.Tensor,
    expert_offsets: torch.Tensor,
) -> torch.Tensor:
    """SwiGLU experts in plain torch, one dense GEMM pair per expert, computed in fp32.

    Args:
        x: token activations.
        w13: gate (rows [0, I)) and up (rows [I, 2I)) projections per expert.
        w2: down projection per expert.
        topk_weights: routing weight of each slot.
        sorted_slots, expert_offsets: slots grouped by expert, from routing; slots past
            ``expert_offsets[E]`` are dropped.

    Shapes:
        x (T, H), w13 (E, 2I, H), w2 (E, H, I), topk_weights (T, K), sorted_slots (T*K,),
        expert_offsets (E+1,) -> (T, H) in x.dtype.
    """
    num_tokens, hidden, num_experts, inter, top_k = _check_experts_args(
        x, w13, w2, topk_weights, sorted_slots, expert_offsets
    )
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32, device=x.device)  # (T, H)
    flat_weights = topk_weights.reshape(-1).float()  # (T*K,)
    offsets = expert_offsets.tolist()
    for e in range(num_experts):
        if offsets[e] == offsets[e + 1]:
            continue
        slots = sorted_slots[offsets[e] : offsets[e + 1]].long()  # (n,)
        tokens = slots // top_k  # (n,)
        gate_up = x[tokens].float() @ w13[e].float().t()  # (n, 2I)
        h = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # (n, I)
        y = (h @ w2[e].float().t()) * flat_weights[slots, None]  # (n, H)
        out.index_add_(0, tokens, y)
    return out.to(x.dtype)


@triton.jit
def _moe_gate_up_kernel(
    x_ptr, w13_ptr, inter_ptr, sorted_slots_ptr, expert_offsets_ptr, block_expert_ptr, block_row_ptr,
    H, I, stride_x, stride_we, stride_wn, stride_inter,
    TOP_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m)
    if e < 0:  # the grid is an upper bound on the number of row blocks
        return
    row_start = tl.load(block_row_ptr + pid_m)
    row_end = tl.load(expert_offsets_ptr + e + 1)
    rows = row_start + tl.arange(0, BLOCK_M)  # (BM,) positions in sorted order
    row_mask = rows < row_end
    slots = tl.load(sorted_slots_ptr + rows, mask=row_mask, other=0)
    tokens = (slots // TOP_K).to(tl.int64)  # (BM,)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) columns of I
    col_mask = cols < I
    k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + tokens[:, None] * stride_x + k[None, :]  # (BM, BK)
    gate_ptrs = w13_ptr + e.to(tl.int64) * stride_we + cols[None, :] * stride_wn + k[:, None]  # (BK, BN)
    up_ptrs = gate_ptrs + I * stride_wn
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k_mask = k + k0 < H
        a = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & col_mask[None, :]
        b_gate = tl.load(gate_ptrs, mask=w_mask, other=0.0)
        b_up = tl.load(up_ptrs, mask=w_mask, other=0.0)
        if UPCAST:  # the interpreter gets bf16 arithmetic wrong
            a = a.to(tl.float32)
            b_gate = b_gate.to(tl.float32)
            b_up = b_up.to(tl.float32)
        acc_gate = tl.dot(a, b_gate, acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
        up_ptrs += BLOCK_K
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up  # (BM, BN) silu(gate) * up
    out_ptrs = inter_ptr + rows[:, None].to(tl.int64) * stride_inter + cols[None, :]
    tl.store(out_ptrs, h.to(inter_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _moe_down_kernel(
    inter_ptr, w2_ptr, out_ptr, topk_weights_ptr, sorted_slots_ptr, expert_offsets_ptr, block_expert_ptr,
    block_row_ptr, H, I, stride_inter, stride_we, stride_wn, stride_out,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m)
    if e < 0:
        return
    row_start = tl.load(block_row_ptr + pid_m)
    row_end = tl.load(expert_offsets_ptr + e + 1)
    rows = row_start + tl.arange(0, BLOCK_M)  # (BM,)
    row_mask = rows < row_end
    slots = tl.load(sorted_slots_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # (BM,)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) columns of H
    col_mask = cols < H
    k = tl.arange(0, BLOCK_K)
    a_ptrs = inter_ptr + rows[:, None].to(tl.int64) * stride_inter + k[None, :]  # (BM, BK)
    b_ptrs = w2_ptr + e.to(tl.int64) * stride_we + cols[None, :] * stride_wn + k[:, None]  # (BK, BN)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        k_mask = k + k0 < I
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    route_w = tl.load(topk_weights_ptr + slots, mask=row_mask, other=0.0).to(tl.float32)  # (BM,)
    acc = acc * route_w[:, None]
    out_ptrs = out_ptr + slots[:, None] * stride_out + cols[None, :]
    tl.store(out_ptrs, acc, mask=row_mask[:, None] & col_mask[None, :])


def _block_map(
    expert_offsets: torch.Tensor, num_slots: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which expert and first sorted row each program's row block covers; expert -1 marks idle programs.

    Expert e needs ceil(n_e / BLOCK_M) blocks; their sum is at most ceil(S / BLOCK_M) + E - 1 and at most S,
    so that bound sizes the grid without reading the counts back to the host.

    Shapes:
        expert_offsets (E+1,) -> block_expert (NB,) int32, block_row (NB,) int32.
    """
    num_experts = expert_offsets.numel() - 1
    offsets = expert_offsets.long()
    blocks = (offsets[1:] - offsets[:-1] + block_m - 1) // block_m  # (E,)
    block_end = blocks.cumsum(0)  # (E,) inclusive
    max_blocks = max(1, min(num_slots, triton.cdiv(num_slots, block_m) + num_experts - 1))
    b = torch.arange(max_blocks, device=offsets.device)  # (NB,)
    expert = torch.searchsorted(block_end, b, right=True)  # (NB,) num_experts past the last block
    e = expert.clamp(max=num_experts - 1)
    block_row = offsets[e] + (b - (block_end[e] - blocks[e])) * block_m
    block_expert = torch.where(expert < num_experts, expert, -1)
    return block_expert.to(torch.int32), block_row.to(torch.int32)


def moe_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_slots: torch.Tensor,
    expert_offsets: torch.Tensor,
    *,
    config: dict | None = None,
) -> torch.Tensor:
    """Triton SwiGLU experts; forward-only (inference). Same arguments and result as :func:`moe_experts_ref`.

    The intermediate activations are rounded to x.dtype between the two GEMMs (as a bf16 torch layer would);
    fp32 inputs use exact fp32 dots rather than TF32. ``config`` overrides the launch parameters
    (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), as ``kernels.tune`` does.

    Shapes:
        x (T, H), w13 (E, 2I, H), w2 (E, H, I), topk_weights (T, K), sorted_slots (T*K,),
        expert_offsets (E+1,) -> (T, H) in x.dtype.
    """
    num_tokens, hidden, num_experts, inter, top_k = _check_experts_args(
        x, w13, w2, topk_weights, sorted_slots, expert_offsets
    )
    ok, reason = triton_status(x.device)
    if not ok:
        raise RuntimeError(f"moe_experts needs Triton on {x.device}: {reason}; use moe_experts_ref instead")
    num_slots = num_tokens * top_k
    if num_slots == 0:
        return torch.zeros_like(x)
    if config is None:
        config = get_config(
            "moe_experts", x.device, M=num_tokens, E=num_experts, H=hidden, I=inter, topk=top_k, dtype=x.dtype
        )
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    flat_weights = topk_weights.reshape(-1).float().contiguous()  # (T*K,)
    sorted_slots, expert_offsets = sorted_slots.contiguous(), expert_offsets.contiguous()
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    block_expert, block_row = _block_map(expert_offsets, num_slots, bm)
    common = dict(
        UPCAST=TRITON_INTERPRET,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # only fp32 operands look at it
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=config["num_warps"], num_stages=config["num_stages"],
    )  # fmt: skip

    inter_buf = torch.empty(num_slots, inter, dtype=x.dtype, device=x.device)  # (S, I), rows past kept unused
    grid = (block_expert.numel(), triton.cdiv(inter, bn))
    _moe_gate_up_kernel[grid](
        x, w13, inter_buf, sorted_slots, expert_offsets, block_expert, block_row,
        hidden, inter, x.stride(0), w13.stride(0), w13.stride(1), inter_buf.stride(0),
        TOP_K=top_k, **common,
    )  # fmt: skip

    out_buf = torch.zeros(num_slots, hidden, dtype=torch.float32, device=x.device)  # (T*K, H), dropped rows 0
    grid = (block_expert.numel(), triton.cdiv(hidden, bn))
    _moe_down_kernel[grid](
        inter_buf, w2, out_buf, flat_weights, sorted_slots, expert_offsets, block_expert, block_row,
        hidden, inter, inter_buf.stride(0), w2.stride(0), w2.stride(1), out_buf.stride(0),
        **common,
    )  # fmt: skip
    return out_buf.view(num_tokens, top_k, hidden).sum(1).to(x.dtype)  # (T, H)
