"""Mixture-of-experts routing: router logits -> top-k experts and weights per token -> slots sorted by expert.

For logits (T, E) each token t picks K experts. Its K choices are the *slots* s = t*K + j, j < K. The experts
kernels want the slots grouped by expert, so routing ends with a counting sort:

    scores        = softmax(logits) or sigmoid(logits)                      # (T, E) fp32
    choice        = scores + correction_bias                                # (T, E), bias only picks experts
    (group limit) = keep the topk_groups groups of E/num_groups experts with the best top-2 sums of choice
    topk_ids      = top-K of choice                                         # (T, K) int32, descending
    topk_weights  = scores[topk_ids], renormalised to sum 1, * scaling      # (T, K) fp32
    sorted_slots, expert_offsets = counting sort of the T*K slots by expert # (T*K,), (E+1,) int32

This covers the Hugging Face routers of Mixtral, Qwen2/3-MoE and OLMoE (softmax, renormalise or not) and
DeepSeek-V3 (sigmoid, e_score_correction_bias, group-limited top-k, routed_scaling_factor).

The Triton path is forward-only (routing is not differentiable through top-k anyway; the layer computes the
weights' gradient with the torch path when training). Benchmark it on a GPU with
``triton.testing.do_bench(lambda: moe_routing(logits, 8, scoring="sigmoid", num_groups=8, topk_groups=4))``
for logits of shape (4096, 256), against ``moe_routing_ref``; ``python -m kernels.tune --op moe_routing``
times its launch parameters.
"""

from typing import NamedTuple

import torch

from kernels.capabilities import tl, triton, triton_status
from kernels.launch_config import get_config, triton_next_power_of_2

SCORINGS = ("softmax", "sigmoid")


class RoutingOutput(NamedTuple):
    topk_weights: torch.Tensor  # (T, K) float32
    topk_ids: torch.Tensor  # (T, K) int32
    # (T*K,) int32: slots s = t*K + j grouped by ascending expert id, ascending slot within an expert;
    # slots whose id is outside [0, E) ("dropped") come last.
    sorted_slots: torch.Tensor
    # (E+1,) int32: expert e owns sorted_slots[offsets[e]:offsets[e+1]]; offsets[E] = number of kept slots.
    expert_offsets: torch.Tensor


def _check_routing_args(logits, top_k, scoring, correction_bias, num_groups, topk_groups) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (T, E), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    num_experts = logits.shape[1]
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {SCORINGS}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in [1, E={num_experts}]")
    if num_groups < 1 or num_experts % num_groups:
        raise ValueError(f"E={num_experts} experts cannot be split into num_groups={num_groups} equal groups")
    if not 1 <= topk_groups <= num_groups:
        raise ValueError(f"topk_groups={topk_groups} must be in [1, num_groups={num_groups}]")
    if top_k > topk_groups * (num_experts // num_groups):
        raise ValueError(
            f"top_k={top_k} > topk_groups * E/num_groups = {topk_groups * (num_experts // num_groups)} "
            "experts left after the group limit"
        )
    if correction_bias is not None:
        if tuple(correction_bias.shape) != (num_experts,):
            raise ValueError(
                f"correction_bias has shape {tuple(correction_bias.shape)} but expected (E,) = "
                f"({num_experts},)"
            )
        if correction_bias.device != logits.device:
            raise ValueError(f"correction_bias is on {correction_bias.device} but logits on {logits.device}")


def _check_ids(topk_ids: torch.Tensor, num_experts: int) -> None:
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be 2-D (T, K), got shape {tuple(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")


def sort_by_expert_ref(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sort of the slots of ``topk_ids`` by expert (plain torch).

    Args:
        topk_ids: expert of each slot; ids outside [0, num_experts) mark dropped slots.
        num_experts: E.

    Shapes:
        topk_ids (T, K) int -> sorted_slots (T*K,) int32, expert_offsets (E+1,) int32.
    """
    _check_ids(topk_ids, num_experts)
    ids = topk_ids.reshape(-1).long()  # (S,)
    key = torch.where((ids < 0) | (ids >= num_experts), num_experts, ids)  # dropped slots sort last
    sorted_slots = torch.sort(key, stable=True).indices.to(torch.int32)  # stable: ascending slot per expert
    counts = torch.bincount(key, minlength=num_experts + 1)  # (E+1,)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int32, device=ids.device)
    offsets[1:] = counts[:num_experts].cumsum(0)
    return sorted_slots, offsets


def moe_routing_ref(
    logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = True,
    correction_bias: torch.Tensor | None = None,
    num_groups: int = 1,
    topk_groups: int = 1,
    scaling_factor: float = 1.0,
) -> RoutingOutput:
    """Top-k routing in plain torch, matching the Hugging Face routers (see the module docstring).

    Args:
        logits: router logits, any float dtype; computed in fp32.
        top_k: K experts per token.
        scoring: "softmax" (Mixtral, Qwen, OLMoE) or "sigmoid" (DeepSeek-V3).
        renormalize: divide the K weights by their sum (+1e-20).
        correction_bias: added to the scores to choose experts only, not to the weights.
        num_groups, topk_groups: group-limited routing; only experts in the ``topk_groups`` best of
            ``num_groups`` contiguous groups can be chosen (group score: sum of its top-2 choices).
        scaling_factor: multiplies the final weights.

    Shapes:
        logits (T, E), correction_bias (E,) -> RoutingOutput (see its fields).
    """
    _check_routing_args(logits, top_k, scoring, correction_bias, num_groups, topk_groups)
    num_tokens, num_experts = logits.shape
    scores = logits.float().softmax(-1) if scoring == "softmax" else logits.float().sigmoid()  # (T, E)
    choice = scores if correction_bias is None else scores + correction_bias.float()  # (T, E)
    if num_groups > 1:
        group_size = num_experts // num_groups
        grouped = choice.view(num_tokens, num_groups, group_size)  # (T, G, E/G)
        group_scores = grouped.topk(min(2, group_size), dim=-1).values.sum(-1)  # (T, G)
        best_groups = group_scores.topk(topk_groups, dim=-1).indices  # (T, topk_groups)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)  # (T, G)
        choice = choice.masked_fill(~keep.repeat_interleave(group_size, dim=1), float("-inf"))
    topk_ids = choice.topk(top_k, dim=-1).indices  # (T, K)
    topk_weights = scores.gather(1, topk_ids)  # (T, K)
    if renormalize:
        topk_weights = topk_weights / (topk_weights.sum(-1, keepdim=True) + 1e-20)
    topk_weights = topk_weights * scaling_factor
    topk_ids = topk_ids.to(torch.int32)
    return RoutingOutput(topk_weights, topk_ids, *sort_by_expert_ref(topk_ids, num_experts))


@triton.jit
def _moe_routing_kernel(
    logits_ptr, bias_ptr, weights_ptr, ids_ptr,
    num_tokens, stride_logits, scaling_factor,
    GROUP_SIZE: tl.constexpr, NUM_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, TOP_K: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # Experts are laid out as a (group, member) grid so the group limit is a reduction over the last axis.
    # num_groups == 1 is the same code with one group of E experts.
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
    grp = tl.arange(0, BLOCK_G)  # (BG,)
    member = tl.arange(0, BLOCK_GS)  # (BGS,)
    expert = grp[:, None] * GROUP_SIZE + member[None, :]  # (BG, BGS)
    e_mask = (grp[:, None] < NUM_GROUPS) & (member[None, :] < GROUP_SIZE)  # (BG, BGS)
    num_experts = NUM_GROUPS * GROUP_SIZE
    eid = tl.where(e_mask, expert, num_experts)[None, :, :]  # (1, BG, BGS); padding never matches an id
    t_mask = tok < num_tokens  # (BT,)
    ptrs = logits_ptr + tok[:, None, None].to(tl.int64) * stride_logits + expert[None, :, :]
    x = tl.load(ptrs, mask=t_mask[:, None, None] & e_mask[None, :, :], other=0.0).to(tl.float32)
    x = tl.where(e_mask[None, :, :], x, float("-inf"))  # (BT, BG, BGS); padded rows stay finite (no NaN)

    if SIGMOID:
        scores = tl.where(e_mask[None, :, :], tl.sigmoid(x), 0.0)
    else:
        row_max = tl.max(tl.max(x, axis=2), axis=1)  # (BT,)
        p = tl.exp(x - row_max[:, None, None])  # padded experts: exp(-inf) = 0
        scores = p / tl.sum(tl.sum(p, axis=2), axis=1)[:, None, None]  # (BT, BG, BGS)
    choice = scores
    if HAS_BIAS:
        bias = tl.load(bias_ptr + expert, mask=e_mask, other=0.0).to(tl.float32)  # (BG, BGS)
        choice = scores + bias[None, :, :]
    choice = tl.where(e_mask[None, :, :], choice, float("-inf"))

    if NUM_GROUPS > 1:
        top1 = tl.max(choice, axis=2)  # (BT, BG)
        first = tl.min(tl.where(choice == top1[:, :, None], member[None, None, :], BLOCK_GS), axis=2)
        if GROUP_SIZE > 1:
            rest = tl.where(member[None, None, :] == first[:, :, None], float("-inf"), choice)
            group_score = top1 + tl.max(rest, axis=2)  # (BT, BG): sum of the group's top-2
        else:
            group_score = top1
        group_score = tl.where(grp[None, :] < NUM_GROUPS, group_score, float("-inf"))
        keep = tl.zeros((BLOCK_T, BLOCK_G), dtype=tl.int32)
        for _ in tl.static_range(TOPK_GROUPS):
            best = tl.max(group_score, axis=1)  # (BT,)
            best_grp = tl.min(tl.where(group_score == best[:, None], grp[None, :], BLOCK_G), axis=1)  # (BT,)
            hit = grp[None, :] == best_grp[:, None]  # (BT, BG)
            keep += hit.to(tl.int32)
            group_score = tl.where(hit, float("-inf"), group_score)
        choice = tl.where(keep[:, :, None] > 0, choice, float("-inf"))

    # Top-K by repeated arg-max; ties go to the lowest expert id.
    col = tl.arange(0, BLOCK_K)[None, :]  # (1, BK)
    topk_w = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    topk_i = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(tl.max(choice, axis=2), axis=1)  # (BT,)
        best_id = tl.min(tl.min(tl.where(choice == best[:, None, None], eid, num_experts), axis=2), axis=1)
        hit = eid == best_id[:, None, None]  # (BT, BG, BGS)
        w = tl.sum(tl.sum(tl.where(hit, scores, 0.0), axis=2), axis=1)  # (BT,) weight = score, no bias
        choice = tl.where(hit, float("-inf"), choice)
        topk_w = tl.where(col == j, w[:, None], topk_w)
        topk_i = tl.where(col == j, best_id[:, None], topk_i)
    if RENORMALIZE:
        topk_w = topk_w / (tl.sum(topk_w, axis=1)[:, None] + 1e-20)
    topk_w = topk_w * scaling_factor
    out = tok[:, None].to(tl.int64) * TOP_K + col  # (BT, BK)
    out_mask = t_mask[:, None] & (col < TOP_K)
    tl.store(weights_ptr + out, topk_w, mask=out_mask)
    tl.store(ids_ptr + out, topk_i, mask=out_mask)


@triton.jit
def _expert_histogram_kernel(ids_ptr, counts_ptr, num_slots, num_experts, BLOCK: tl.constexpr):
    # counts[b, e] = slots of block b routed to e; column E counts dropped slots.
    pid = tl.program_id(0)
    slot = pid * BLOCK + tl.arange(0, BLOCK)
    mask = slot < num_slots
    e = tl.load(ids_ptr + slot, mask=mask, other=0).to(tl.int32)
    key = tl.where((e < 0) | (e >= num_experts), num_experts, e)
    tl.atomic_add(counts_ptr + pid * (num_experts + 1) + key, 1, mask=mask)


@triton.jit
def _expert_scatter_kernel(ids_ptr, base_ptr, sorted_ptr, num_slots, num_experts, BLOCK: tl.constexpr):
    # A slot's position = base[b, e] (slots of e in earlier experts and earlier blocks) + its rank among the
    # block's slots of e. Ranks come from a (BLOCK, BLOCK) comparison, not atomics, so the order is
    # deterministic: ascending slot within each expert.
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    slot = pid * BLOCK + lane
    mask = slot < num_slots
    e = tl.load(ids_ptr + slot, mask=mask, other=0).to(tl.int32)
    key = tl.where((e < 0) | (e >= num_experts), num_experts, e)  # (B,)
    earlier = (key[:, None] == key[None, :]) & (lane[None, :] < lane[:, None]) & mask[None, :]  # (B, B)
    rank = tl.sum(earlier.to(tl.int32), axis=1)  # (B,)
    base = tl.load(base_ptr + pid * (num_experts + 1) + key, mask=mask, other=0)
    tl.store(sorted_ptr + base + rank, slot.to(tl.int32), mask=mask)


def _require_triton(op: str, device: torch.device) -> None:
    ok, reason = triton_status(device)
    if not ok:
        raise RuntimeError(f"{op} needs Triton on {device}: {reason}; use {op}_ref instead")


def sort_by_expert(
    topk_ids: torch.Tensor, num_experts: int, *, config: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton counting sort of the slots by expert; same result as :func:`sort_by_expert_ref`.

    Three steps: per-block histograms with atomics, prefix sums over experts and blocks (torch, on a tiny
    (blocks, E+1) matrix), a scatter that places each slot at its rank. No host synchronisation.

    Args:
        topk_ids: expert of each slot; ids outside [0, num_experts) mark dropped slots.
        num_experts: E.
        config: launch parameters (key SORT_BLOCK); default from ``launch_config.get_config``.

    Shapes:
        topk_ids (T, K) int -> sorted_slots (T*K,) int32, expert_offsets (E+1,) int32.
    """
    _check_ids(topk_ids, num_experts)
    _require_triton("sort_by_expert", topk_ids.device)
    ids = topk_ids.reshape(-1).contiguous()  # (S,)
    num_slots = ids.numel()
    if config is None:
        config = get_config("moe_routing", ids.device, M=topk_ids.shape[0], E=num_experts)
    block = config["SORT_BLOCK"]
    num_blocks = max(1, triton.cdiv(num_slots, block))
    counts = torch.zeros(num_blocks, num_experts + 1, dtype=torch.int32, device=ids.device)  # (NB, E+1)
    sorted_slots = torch.empty(num_slots, dtype=torch.int32, device=ids.device)
    if num_slots:
        _expert_histogram_kernel[(num_blocks,)](ids, counts, num_slots, num_experts, BLOCK=block)
    total = counts.sum(0)  # (E+1,)
    start = total.cumsum(0) - total  # (E+1,) first position of each expert; start[E] = kept slots
    base = (start[None, :] + counts.cumsum(0) - counts).to(torch.int32).contiguous()  # (NB, E+1)
    if num_slots:
        _expert_scatter_kernel[(num_blocks,)](ids, base, sorted_slots, num_slots, num_experts, BLOCK=block)
    return sorted_slots, start.to(torch.int32)


def moe_routing(
    logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = True,
    correction_bias: torch.Tensor | None = None,
    num_groups: int = 1,
    topk_groups: int = 1,
    scaling_factor: float = 1.0,
    config: dict | None = None,
) -> RoutingOutput:
    """Triton routing: one kernel computes scores -> group limit -> top-k -> weights per block of tokens,
    then :func:`sort_by_expert`. Forward-only. Arguments and result as :func:`moe_routing_ref`; ``config``
    overrides the launch parameters (BLOCK_T, SORT_BLOCK, num_warps), as ``kernels.tune`` does.

    Shapes:
        logits (T, E), correction_bias (E,) -> RoutingOutput.
    """
    _check_routing_args(logits, top_k, scoring, correction_bias, num_groups, topk_groups)
    _require_triton("moe_routing", logits.device)
    num_tokens, num_experts = logits.shape
    if config is None:
        config = get_config("moe_routing", logits.device, M=num_tokens, E=num_experts)
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=logits.device)
    if num_tokens:
        bias = correction_bias.contiguous() if correction_bias is not None else weights  # dummy when unused
        group_size = num_experts // num_groups
        grid = (triton.cdiv(num_tokens, config["BLOCK_T"]),)
        _moe_routing_kernel[grid](
            logits, bias, weights, ids,
            num_tokens, logits.stride(0), float(scaling_factor),
            GROUP_SIZE=group_size, NUM_GROUPS=num_groups, TOPK_GROUPS=topk_groups, TOP_K=top_k,
            SIGMOID=scoring == "sigmoid", HAS_BIAS=correction_bias is not None, RENORMALIZE=renormalize,
            BLOCK_T=config["BLOCK_T"], BLOCK_G=triton_next_power_of_2(num_groups),
            BLOCK_GS=triton_next_power_of_2(group_size), BLOCK_K=triton_next_power_of_2(top_k),
            num_warps=config["num_warps"],
        )  # fmt: skip
    return RoutingOutput(weights, ids, *sort_by_expert(ids, num_experts, config=config))
