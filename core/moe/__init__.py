"""Mixture-of-Experts: one layer for training and serving, and Hugging Face interop.

>>> from core.moe import MoE, MoEConfig
>>> layer = MoE(MoEConfig.tiny())
"""

from core.moe.config import MoEConfig
from core.moe.experts import RoutedExperts, SwiGLUMLP, swiglu_experts_torch
from core.moe.layer import MoE, resolve_backend
from core.moe.router import Router, RouterStats, load_balancing_loss, router_z_loss

__all__ = [
    "MoE",
    "MoEConfig",
    "RoutedExperts",
    "Router",
    "RouterStats",
    "SwiGLUMLP",
    "load_balancing_loss",
    "resolve_backend",
    "router_z_loss",
    "swiglu_experts_torch",
]
