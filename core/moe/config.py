"""Configuration of one Mixture-of-Experts layer.

A dataclass (validated on construction) plus YAML loading, in the spirit of litgpt's
``config.py``: every field has the meaning used by the Hugging Face MoE families, so a
config can be built from theirs (see ``core.moe.hf``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from core.config import ConfigMixin

Scoring = Literal["softmax", "sigmoid"]
Balancing = Literal["aux_loss", "bias", "none"]


@dataclass
class MoEConfig(ConfigMixin):
    """Shape and routing of one MoE layer.

    Args:
        hidden_size: model width H.
        intermediate_size: width I of each routed SwiGLU expert.
        num_experts: number of routed experts E.
        top_k: experts per token K.
        scoring: ``softmax`` (Mixtral, Qwen, OLMoE) or ``sigmoid`` (DeepSeek-V3) router scores.
        renormalize: divide the K selected weights by their sum.
        routed_scaling_factor: multiplies the routed weights (DeepSeek-V3 uses 2.5).
        num_groups: experts are split into this many groups (group-limited routing, DeepSeek-V3).
        topk_groups: each token picks its experts only from this many best groups.
        balancing: ``aux_loss`` (load-balancing loss, Switch/Mixtral), ``bias`` (auxiliary-loss-free
            balancing: a per-expert bias added to the scores for selection only, updated after
            each training step, DeepSeek-V3), or ``none``.
        aux_loss_coef: weight of the load-balancing loss in ``MoE.aux_loss``.
        z_loss_coef: weight of the router z-loss (ST-MoE) in ``MoE.aux_loss``.
        bias_update_rate: step of the bias update for ``balancing="bias"``.
        num_shared_experts: shared experts applied to every token (DeepSeek-MoE, Qwen-MoE).
        shared_intermediate_size: total width of the shared MLP; default
            ``intermediate_size * num_shared_experts``.
        shared_expert_gate: scale the shared output by a learned sigmoid gate (Qwen2-MoE).
        capacity_factor: if set, each expert takes at most
            ``ceil(capacity_factor * tokens * K / E)`` slots per forward; the rest are dropped
            (they contribute nothing) and counted in ``MoE.last_stats``.
        init_std: standard deviation of the normal initialisation of new weights.
    """

    yaml_section: ClassVar[str] = "moe"

    hidden_size: int
    intermediate_size: int
    num_experts: int
    top_k: int
    scoring: Scoring = "softmax"
    renormalize: bool = True
    routed_scaling_factor: float = 1.0
    num_groups: int = 1
    topk_groups: int = 1
    balancing: Balancing = "aux_loss"
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    bias_update_rate: float = 1e-3
    num_shared_experts: int = 0
    shared_intermediate_size: int | None = None
    shared_expert_gate: bool = False
    capacity_factor: float | None = None
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_experts", "top_k", "num_groups", "topk_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MoEConfig.{name} must be a positive integer, got {value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(
                f"MoEConfig.top_k={self.top_k} is larger than num_experts={self.num_experts}: "
                "a token cannot pick more experts than exist"
            )
        if self.scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"MoEConfig.scoring must be 'softmax' or 'sigmoid', got {self.scoring!r}")
        if self.balancing not in ("aux_loss", "bias", "none"):
            raise ValueError(
                f"MoEConfig.balancing must be 'aux_loss', 'bias' or 'none', got {self.balancing!r}"
            )
        if self.num_experts % self.num_groups:
            raise ValueError(
                f"MoEConfig.num_experts={self.num_experts} is not divisible by num_groups={self.num_groups}"
            )
        if self.topk_groups > self.num_groups:
            raise ValueError(f"MoEConfig.topk_groups={self.topk_groups} exceeds num_groups={self.num_groups}")
        per_group = self.num_experts // self.num_groups
        if self.top_k > self.topk_groups * per_group:
            raise ValueError(
                f"MoEConfig.top_k={self.top_k} exceeds the {self.topk_groups * per_group} experts reachable "
                f"in topk_groups={self.topk_groups} groups of {per_group}"
            )
        if self.num_shared_experts < 0:
            raise ValueError(f"MoEConfig.num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(f"MoEConfig.capacity_factor must be positive, got {self.capacity_factor}")
        if self.shared_expert_gate and not self.has_shared_experts:
            raise ValueError("MoEConfig.shared_expert_gate needs shared experts (num_shared_experts > 0)")

    @property
    def has_shared_experts(self) -> bool:
        return self.num_shared_experts > 0

    @property
    def shared_width(self) -> int:
        if self.shared_intermediate_size is not None:
            return self.shared_intermediate_size
        return self.intermediate_size * self.num_shared_experts

    @classmethod
    def tiny(cls, **overrides: Any) -> MoEConfig:
        """A few-kilobyte layer for unit tests (odd sizes on purpose)."""
        base: dict[str, Any] = dict(hidden_size=32, intermediate_size=37, num_experts=5, top_k=2)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def mixtral_like(cls, **overrides: Any) -> MoEConfig:
        """Mixtral-8x7B's routing at benchmark size: hidden 1024, ffn 2048, 8 experts, top-2."""
        base: dict[str, Any] = dict(hidden_size=1024, intermediate_size=2048, num_experts=8, top_k=2)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def fine_grained(cls, **overrides: Any) -> MoEConfig:
        """DeepSeek-V3-style fine-grained experts: hidden 1024, ffn 512, 64 experts, top-6, 2 shared,
        sigmoid scores with group-limited routing (8 groups, best 4)."""
        base: dict[str, Any] = dict(
            hidden_size=1024,
            intermediate_size=512,
            num_experts=64,
            top_k=6,
            scoring="sigmoid",
            num_groups=8,
            topk_groups=4,
            routed_scaling_factor=2.5,
            balancing="bias",
            num_shared_experts=2,
        )
        base.update(overrides)
        return cls(**base)
