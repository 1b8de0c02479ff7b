"""The MoE router: logits, top-k selection, capacity and the balancing terms.

Selection itself (scores -> group limit -> top-k -> renormalise -> sort by expert) is the
``kernels.moe_routing`` op; this module owns the learned parts around it: the gate weight, the
auxiliary-loss-free correction bias and its update, the load-balancing and z losses, and
capacity-based dropping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.moe.config import MoEConfig
from kernels.moe_routing import RoutingOutput, moe_routing, moe_routing_ref, sort_by_expert_ref


@dataclass
class RouterStats:
    """What the last forward routed: slots per expert (after dropping) and dropped slots."""

    tokens_per_expert: torch.Tensor  # (E,) int64
    dropped_slots: int
    num_slots: int

    @property
    def load_imbalance(self) -> float:
        """max / mean load over experts: 1.0 is perfectly balanced."""
        load = self.tokens_per_expert.float()
        mean = load.mean().item()
        return float(load.max().item() / mean) if mean > 0 else float("nan")


def load_balancing_loss(probs: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch-Transformer / Mixtral auxiliary loss ``E * sum_e f_e * P_e``; 1.0 when balanced.

    Shapes:
        probs (T, E) normalised router scores, topk_ids (T, K) -> scalar
    """
    counts = torch.bincount(topk_ids.reshape(-1).long(), minlength=num_experts)[:num_experts]
    fraction = counts.to(probs.dtype) / topk_ids.numel()  # f_e, no gradient (counts)
    mean_prob = probs.mean(dim=0)  # P_e
    return num_experts * torch.sum(fraction * mean_prob)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition, keeps router logits small."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


class Router(nn.Module):
    """Linear gate over the hidden state plus the routing op.

    Shapes:
        weight (E, H); e_score_correction_bias (E,) fp32, present when balancing == "bias".
    """

    def __init__(self, config: MoEConfig):
        super().__init__()
        self.config = config
        self.num_experts = config.num_experts
        self.top_k = config.top_k
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        nn.init.normal_(self.weight, std=config.init_std)
        if config.balancing == "bias" or config.scoring == "sigmoid":
            # DeepSeek-V3 keeps this bias in fp32 whatever the model dtype: it only ranks experts.
            self.register_buffer(
                "e_score_correction_bias", torch.zeros(config.num_experts, dtype=torch.float32)
            )
        else:
            self.e_score_correction_bias = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(T, H) -> (T, E) router logits in the input dtype."""
        return F.linear(x, self.weight)

    def route(self, logits: torch.Tensor, use_triton: bool) -> RoutingOutput:
        cfg = self.config
        fn = moe_routing if use_triton else moe_routing_ref
        routing = fn(
            logits,
            cfg.top_k,
            scoring=cfg.scoring,
            renormalize=cfg.renormalize,
            correction_bias=self.e_score_correction_bias,
            num_groups=cfg.num_groups,
            topk_groups=cfg.topk_groups,
            scaling_factor=cfg.routed_scaling_factor,
        )
        if cfg.capacity_factor is not None:
            routing = self.apply_capacity(routing, logits.shape[0])
        return routing

    def capacity(self, num_tokens: int) -> int:
        assert self.config.capacity_factor is not None
        return max(1, math.ceil(self.config.capacity_factor * num_tokens * self.top_k / self.num_experts))

    def apply_capacity(self, routing: RoutingOutput, num_tokens: int) -> RoutingOutput:
        """Drop the slots beyond each expert's capacity, earliest tokens first (GShard order).

        A dropped slot gets expert id E, so it sorts after every kept slot and no expert
        computes it; its token still receives its other experts and the shared experts.
        """
        cap = self.capacity(num_tokens)
        ids = routing.topk_ids.reshape(-1).long()  # (S,)
        one_hot = F.one_hot(ids.clamp(max=self.num_experts - 1), self.num_experts)  # (S, E)
        position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # rank of the slot in its expert
        dropped = (position >= cap) | (ids >= self.num_experts)
        ids = torch.where(dropped, torch.full_like(ids, self.num_experts), ids)
        topk_ids = ids.view_as(routing.topk_ids).to(routing.topk_ids.dtype)
        topk_weights = routing.topk_weights.masked_fill(dropped.view_as(routing.topk_weights), 0.0)
        sorted_slots, offsets = sort_by_expert_ref(topk_ids, self.num_experts)
        return RoutingOutput(topk_weights, topk_ids, sorted_slots, offsets)

    def balancing_loss(self, logits: torch.Tensor, routing: RoutingOutput) -> torch.Tensor:
        """Weighted sum of the load-balancing loss and z-loss for the configured coefficients."""
        cfg = self.config
        loss = logits.new_zeros((), dtype=torch.float32)
        if cfg.balancing == "aux_loss" and cfg.aux_loss_coef > 0:
            scores = logits.float().softmax(-1) if cfg.scoring == "softmax" else logits.float().sigmoid()
            probs = scores / scores.sum(-1, keepdim=True)
            loss = loss + cfg.aux_loss_coef * load_balancing_loss(probs, routing.topk_ids, self.num_experts)
        if cfg.z_loss_coef > 0:
            loss = loss + cfg.z_loss_coef * router_z_loss(logits)
        return loss

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3): raise the bias of under-loaded experts,
        lower it for over-loaded ones, by a fixed step in the direction of the error."""
        if self.e_score_correction_bias is None or self.config.balancing != "bias":
            return
        load = tokens_per_expert.float().to(self.e_score_correction_bias.device)
        error = load.mean() - load
        self.e_score_correction_bias.add_(self.config.bias_update_rate * torch.sign(error))

    def stats(self, routing: RoutingOutput) -> RouterStats:
        offsets = routing.expert_offsets.long()
        per_expert = torch.diff(offsets)
        total = routing.topk_ids.numel()
        return RouterStats(
            tokens_per_expert=per_expert.detach().cpu(),
            dropped_slots=int(total - offsets[-1].item()),
            num_slots=total,
        )
