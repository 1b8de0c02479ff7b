"""One Mixture-of-Experts layer for training and serving.

``MoE`` picks its execution path once, at construction (vLLM's ``CustomOp`` dispatch):

* ``triton``: the fused kernels of ``kernels.moe_routing`` and ``kernels.moe_experts``. They are
  forward-only, so whenever autograd is recording (training) the layer runs the torch path.
* ``torch``: ``kernels.moe_routing.moe_routing_ref`` for selection and the grouped torch
  experts of ``core.moe.experts`` (tokens sorted by expert, one GEMM pair per active expert or
  one ``grouped_mm``), the fastest path on a CPU and the one every gradient flows through.

``backend="auto"`` means Triton when CUDA and a usable Triton are present, torch otherwise; on
an input whose device the chosen kernels cannot run on, ``auto`` falls back to torch (logged
once) while an explicit ``backend="triton"`` raises.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from core.moe.config import MoEConfig
from core.moe.experts import RoutedExperts, SwiGLUMLP, swiglu_experts_torch
from core.moe.router import Router, RouterStats
from kernels.capabilities import triton_status
from kernels.moe_experts import moe_experts
from kernels.moe_routing import RoutingOutput

logger = logging.getLogger(__name__)

Backend = Literal["auto", "triton", "torch"]
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_backend(backend: str) -> str:
    """Turn ``auto`` into ``triton`` or ``torch`` from the capability flags of ``kernels``."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown MoE backend {backend!r}: expected 'auto', 'triton' or 'torch'")
    if backend != "auto":
        if backend == "triton":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            ok, why = triton_status(device)
            if not ok:
                raise RuntimeError(f"MoE backend 'triton' is not usable here: {why}")
        return backend
    if torch.cuda.is_available():
        ok, why = triton_status("cuda")
        if ok:
            return "triton"
        logger.info("MoE: Triton kernels unavailable on CUDA (%s); using the torch path", why)
    return "torch"


class MoE(nn.Module):
    """Routed SwiGLU experts with optional shared experts.

    Args:
        config: shapes and routing, see ``MoEConfig``.
        backend: ``auto``, ``triton`` or ``torch`` (see the module docstring).

    Shapes:
        forward: x (..., H) -> (..., H), same dtype as x.

    After each forward, ``aux_loss`` holds the scalar balancing loss to add to the training loss
    (zero unless ``balancing="aux_loss"`` or ``z_loss_coef > 0`` and the module is training),
    ``last_router_logits`` the (T, E) router logits and ``last_stats`` the per-expert load and the
    number of slots dropped by the capacity limit.
    """

    def __init__(self, config: MoEConfig, backend: Backend = "auto"):
        super().__init__()
        self.config = config
        self.backend = resolve_backend(backend)
        self._explicit_backend = backend != "auto"
        self._warned_fallback = False
        self.gate = Router(config)
        self.experts = RoutedExperts(
            config.num_experts, config.hidden_size, config.intermediate_size, init_std=config.init_std
        )
        self.shared_experts = (
            SwiGLUMLP(config.hidden_size, config.shared_width, init_std=config.init_std)
            if config.has_shared_experts
            else None
        )
        self.shared_expert_gate = (
            nn.Linear(config.hidden_size, 1, bias=False) if config.shared_expert_gate else None
        )
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_router_logits: torch.Tensor | None = None
        self._last_routing: RoutingOutput | None = None
        logger.info("MoE(%s experts, top-%s): %s path", config.num_experts, config.top_k, self.backend)

    # -- path selection ---------------------------------------------------------------------------
    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.backend != "triton" or self.training:
            return False
        # The Triton kernels have no backward: whenever autograd records, take the torch path.
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        ok, why = triton_status(x.device)
        if ok:
            return True
        if self._explicit_backend:
            raise RuntimeError(f"MoE backend 'triton' cannot run on {x.device}: {why}")
        if not self._warned_fallback:
            logger.warning(
                "MoE: input on %s, Triton unusable there (%s); using the torch path", x.device, why
            )
            self._warned_fallback = True
        return False

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MoE expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"MoE expects input of shape (..., {self.config.hidden_size}), got {tuple(x.shape)}"
            )
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"MoE expects float32, float16 or bfloat16 input, got {x.dtype}")
        w = self.experts.w13
        if x.device != w.device:
            raise ValueError(f"MoE input is on {x.device} but its weights are on {w.device}")

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (T, H)
        use_triton = self._use_triton(flat)

        logits = self.gate.logits(flat)  # (T, E)
        routing = self.gate.route(logits, use_triton)
        w13, w2 = self.experts.w13, self.experts.w2
        if flat.dtype != w13.dtype:
            flat = flat.to(w13.dtype)
        if use_triton:
            out = moe_experts(
                flat, w13, w2, routing.topk_weights, routing.sorted_slots, routing.expert_offsets
            )
        else:
            out = swiglu_experts_torch(
                flat, w13, w2, routing.topk_weights, routing.sorted_slots, routing.expert_offsets
            )

        if self.shared_experts is not None:
            shared = self.shared_experts(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared

        self.last_router_logits = logits
        self._last_routing = routing
        if self.training:
            self.aux_loss = self.gate.balancing_loss(logits, routing)
            if self.config.balancing == "bias":
                self.gate.update_bias(torch.diff(routing.expert_offsets.long()))
        else:
            self.aux_loss = logits.new_zeros((), dtype=torch.float32)
        return out.to(x.dtype).reshape(shape)

    @property
    def last_stats(self) -> RouterStats | None:
        """Load per expert and dropped slots of the last forward (computed on access: a host sync)."""
        if self._last_routing is None:
            return None
        return self.gate.stats(self._last_routing)

    def extra_repr(self) -> str:
        return f"backend={self.backend}"
