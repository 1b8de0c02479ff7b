"""Hugging Face interop: build a ``core.moe.MoE`` from a transformers MoE block, or patch a model in place.

Supported families, whichever the installed transformers provides (``adapters()`` lists them):
Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3 and OLMoE. In transformers 5 they share one layout: the
block holds ``gate`` (router, ``weight`` (E, H)) and ``experts`` (``gate_up_proj`` (E, 2I, H), gate
rows first, and ``down_proj`` (E, H, I)), which is exactly ``RoutedExperts``' ``w13``/``w2``.

>>> moe = from_hf_block(hf_model.model.layers[0].mlp, backend="torch")  # a copy
>>> patch_model(hf_model)  # in place
['model.layers.0.mlp', 'model.layers.1.mlp']

Router outputs of a patched model. transformers 5 fills ``router_logits`` (and from them
``aux_loss``) with forward hooks on every module that is an instance of the family's router class
(``_can_record_outputs`` / ``OutputRecorder`` in ``utils/output_capturing.py``), installed lazily on
the first call that asks for them. Fathom's router is not that class and is never called as a
module, so each patched block calls ``router``: a weightless tap whose class subclasses the HF router
class (so the lazy installer hooks it) and whose output is the HF router's ``(logits, weights, ids)``.
Hooks that were already installed on the old router (and any hooks on the old block) are moved onto
the new modules, so capture works whether or not the model had recorded outputs before patching.

Patching is one-way: the HF blocks are gone and the state-dict keys change (``experts.gate_up_proj``
becomes ``experts.w13``), so ``save_pretrained`` before patching, not after. The patched blocks reuse
the HF ``nn.Parameter`` objects (no copy), so an optimizer built before patching stays valid.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.moe.config import MoEConfig
from core.moe.layer import Backend, MoE
from core.moe.router import Router

logger = logging.getLogger(__name__)

__all__ = [
    "Float32Router",
    "HFAdapter",
    "HFMoEBlock",
    "adapters",
    "config_from_hf_block",
    "from_hf_block",
    "is_patched",
    "patch_model",
]


# -- family registry --------------------------------------------------------------------------------
def _always_renormalize(gate: nn.Module) -> dict[str, Any]:
    # MixtralTopKRouter divides the top-k probabilities by their sum unconditionally.
    return {"renormalize": True}


def _norm_topk_prob(gate: nn.Module) -> dict[str, Any]:
    return {"renormalize": bool(gate.norm_topk_prob)}


def _deepseek_v3(gate: nn.Module) -> dict[str, Any]:
    return {
        "scoring": "sigmoid",
        "renormalize": bool(gate.norm_topk_prob),
        "routed_scaling_factor": float(gate.routed_scaling_factor),
        "num_groups": int(gate.num_group or 1),
        "topk_groups": int(gate.topk_group or 1),
        # transformers never updates e_score_correction_bias; mirror that (pass balancing="bias" to train it).
        "balancing": "none",
    }


@dataclass(frozen=True)
class HFAdapter:
    """How one transformers MoE family maps onto ``MoEConfig`` and ``MoE``'s weights.

    Args:
        family: short name, e.g. ``mixtral``.
        block_cls: the HF block class; matched exactly, since a subclass may change the forward.
        router_cls: class of ``block.gate``, the target of transformers' ``router_logits`` recorder.
        routing: ``block.gate -> `` the family's routing fields of ``MoEConfig``.
        shared: attribute of the block's shared SwiGLU MLP, if any.
        shared_gate: attribute of the sigmoid gate scaling the shared MLP's output, if any.
        fp32_router: the router computes its logits in fp32 whatever the model dtype.
    """

    family: str
    block_cls: type[nn.Module]
    router_cls: type[nn.Module]
    routing: Callable[[nn.Module], dict[str, Any]]
    shared: str | None = None
    shared_gate: str | None = None
    fp32_router: bool = False


# family, module, block class, router class, routing fields, extra HFAdapter fields
_FAMILIES: tuple[tuple[str, str, str, str, Callable[[nn.Module], dict[str, Any]], dict[str, Any]], ...] = (
    ("mixtral", "mixtral", "MixtralSparseMoeBlock", "MixtralTopKRouter", _always_renormalize, {}),
    (
        "qwen2_moe",
        "qwen2_moe",
        "Qwen2MoeSparseMoeBlock",
        "Qwen2MoeTopKRouter",
        _norm_topk_prob,
        {"shared": "shared_expert", "shared_gate": "shared_expert_gate"},
    ),
    ("qwen3_moe", "qwen3_moe", "Qwen3MoeSparseMoeBlock", "Qwen3MoeTopKRouter", _norm_topk_prob, {}),
    (
        "deepseek_v3",
        "deepseek_v3",
        "DeepseekV3MoE",
        "DeepseekV3TopkRouter",
        _deepseek_v3,
        {"shared": "shared_experts", "fp32_router": True},
    ),
    ("olmoe", "olmoe", "OlmoeSparseMoeBlock", "OlmoeTopKRouter", _norm_topk_prob, {}),
)


@functools.cache
def adapters() -> dict[str, HFAdapter]:
    """The supported families the installed transformers provides, keyed by family name.

    Each family is imported lazily and on its own, so a transformers without one still serves the rest.
    """
    found: dict[str, HFAdapter] = {}
    for family, module, block, router, routing, extra in _FAMILIES:
        try:
            mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
            found[family] = HFAdapter(family, getattr(mod, block), getattr(mod, router), routing, **extra)
        except (ImportError, AttributeError) as err:
            logger.debug("core.moe.hf: %s unavailable (%s)", family, err)
    return found


def _adapter_or_none(module: nn.Module) -> HFAdapter | None:
    for adapter in adapters().values():
        if type(module) is adapter.block_cls:
            return adapter
    return None


def _supported() -> str:
    return ", ".join(a.block_cls.__name__ for a in adapters().values()) or "none (is transformers installed?)"


def _adapter(block: nn.Module) -> HFAdapter:
    adapter = _adapter_or_none(block)
    if adapter is None:
        name = type(block).__qualname__
        raise TypeError(f"{name} is not a supported Hugging Face MoE block; supported: {_supported()}")
    return adapter


# -- config -----------------------------------------------------------------------------------------
_PROBE = torch.linspace(-8.0, 8.0, 97)


def _check_silu(act: Any, where: str, family: str) -> None:
    """Fathom's experts are SwiGLU: reject any other activation, checked by value, not by class name."""
    try:
        ok = torch.allclose(act(_PROBE.clone()), F.silu(_PROBE), atol=1e-6)
    except Exception:  # anything that cannot run on the probe is not SiLU
        ok = False
    if not ok:
        raise ValueError(
            f"{family} block: {where} is {type(act).__name__}, "
            "but Fathom's MoE supports only SiLU (SwiGLU) experts"
        )


def _check_experts(experts: nn.Module, family: str) -> None:
    # use_experts_implementation flags: our w13/w2 copy assumes the default concatenated, bias-free layout.
    for attr, want in (
        ("has_gate", True),
        ("has_bias", False),
        ("is_transposed", False),
        ("is_concatenated", True),
        ("has_post_expert_norm", False),
    ):
        if getattr(experts, attr, want) != want:
            raise ValueError(f"{family} block: experts.{attr}={getattr(experts, attr)!r} is not supported")
    _check_silu(experts.act_fn, "experts.act_fn", family)


def config_from_hf_block(block: nn.Module, **overrides: Any) -> MoEConfig:
    """The ``MoEConfig`` that reproduces a Hugging Face MoE block.

    Args:
        block: an instance of a supported block class (see ``adapters()``).
        **overrides: ``MoEConfig`` fields to set after conversion, e.g. ``balancing="bias"`` to train
            DeepSeek-V3's correction bias, which transformers leaves fixed.

    Raises:
        TypeError: the block's class is not supported.
        ValueError: its activation or expert layout is not one Fathom's MoE computes.
    """
    adapter = _adapter(block)
    gate, experts = block.gate, block.experts
    _check_experts(experts, adapter.family)
    hf_config = getattr(block, "config", None) or getattr(experts, "config", None)
    fields: dict[str, Any] = {
        "hidden_size": int(getattr(gate, "hidden_dim", gate.weight.shape[-1])),
        "intermediate_size": int(getattr(experts, "intermediate_dim", experts.down_proj.shape[-1])),
        "num_experts": int(getattr(gate, "num_experts", gate.weight.shape[0])),
        "top_k": int(gate.top_k),
        # transformers adds coef * load-balancing loss (from the router logits) to the LM loss.
        "balancing": "aux_loss",
        "aux_loss_coef": float(getattr(hf_config, "router_aux_loss_coef", 0.01)),
        "init_std": float(getattr(hf_config, "initializer_range", 0.02)),
    }
    fields.update(adapter.routing(gate))
    if adapter.shared is not None:
        shared = getattr(block, adapter.shared)
        _check_silu(shared.act_fn, f"{adapter.shared}.act_fn", adapter.family)
        fields["num_shared_experts"] = int(getattr(hf_config, "n_shared_experts", None) or 1)
        fields["shared_intermediate_size"] = int(shared.gate_proj.weight.shape[0])
        fields["shared_expert_gate"] = adapter.shared_gate is not None
    # Mixtral's training-time input jitter has no MoEConfig field: HFMoEBlock applies it.
    jitter = float(getattr(block, "jitter_noise", 0.0))
    fields["extra"] = {"hf_family": adapter.family, "router_jitter_noise": jitter}
    fields.update(overrides)
    return MoEConfig(**fields)


# -- building the layer -----------------------------------------------------------------------------
class Float32Router(Router):
    """Router whose logits are computed in fp32 whatever the input and weight dtypes (DeepSeek-V3's gate).

    Shapes:
        logits: x (T, H) -> (T, E) float32
    """

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float())


class _RouterTap(nn.Module):
    """Weightless stand-in for a HF router, called once per forward so transformers' hooks see its output.

    Shapes:
        forward: hidden_states (T, H), router_logits (T, E), top_k_weights (T, K), top_k_index (T, K)
            -> the same (router_logits, top_k_weights, top_k_index) tuple a HF router returns.
    """

    def __init__(self) -> None:
        nn.Module.__init__(self)  # not the HF router's __init__: the tap owns no weights
        # transformers' weight init matches routers by class and would look for a `weight`; nothing to init.
        self._is_hf_initialized = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        router_logits: torch.Tensor,
        top_k_weights: torch.Tensor,
        top_k_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return router_logits, top_k_weights, top_k_index


@functools.cache
def _tap_class(router_cls: type[nn.Module]) -> type[_RouterTap]:
    # Subclassing the HF router class is what makes `isinstance(tap, OutputRecorder.target_class)` hold.
    name = f"Fathom{router_cls.__name__}Tap"
    return type(name, (_RouterTap, router_cls), {"__module__": __name__, "__qualname__": name})


def __getattr__(name: str) -> type[_RouterTap]:
    # Resolves the tap classes by name, so a pickled patched model loads in a fresh process.
    for adapter in adapters().values():
        if name == f"Fathom{adapter.router_cls.__name__}Tap":
            return _tap_class(adapter.router_cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HFMoEBlock(MoE):
    """A ``MoE`` standing in for a transformers MoE block inside a patched model (see ``patch_model``).

    Args:
        config: shapes and routing, normally from ``config_from_hf_block``.
        backend: ``auto``, ``triton`` or ``torch`` (see ``core.moe.layer``).
        router_cls: the HF router class whose output recorders must see this block's router logits.

    Shapes:
        forward: hidden_states (B, S, H) -> (B, S, H), like the HF block.

    In training it applies the HF block's router jitter noise (Mixtral's ``router_jitter_noise``),
    drawn the same way, so seeded runs match the unpatched model.
    """

    def __init__(self, config: MoEConfig, backend: Backend = "auto", *, router_cls: type[nn.Module]):
        super().__init__(config, backend)
        self.router = _tap_class(router_cls)()
        self.jitter_noise = float(config.extra.get("router_jitter_noise", 0.0))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training and self.jitter_noise > 0:
            j = self.jitter_noise
            hidden_states = hidden_states * torch.empty_like(hidden_states).uniform_(1.0 - j, 1.0 + j)
        out = super().forward(hidden_states)
        routing = self._last_routing
        assert routing is not None and self.last_router_logits is not None
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])  # (T, H)
        self.router(flat, self.last_router_logits, routing.topk_weights, routing.topk_ids.long())
        return out


def _expect(family: str, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{family} block: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor


def _hf_tensors(block: nn.Module, adapter: HFAdapter, cfg: MoEConfig) -> dict[str, torch.Tensor | None]:
    """Our parameter/buffer name -> the HF tensor that fills it, all shapes checked before any change."""
    fam, gate, experts = adapter.family, block.gate, block.experts
    h, i, e = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts
    out: dict[str, torch.Tensor | None] = {
        "gate.weight": _expect(fam, "gate.weight", gate.weight, (e, h)),
        "experts.w13": _expect(fam, "experts.gate_up_proj", experts.gate_up_proj, (e, 2 * i, h)),
        "experts.w2": _expect(fam, "experts.down_proj", experts.down_proj, (e, h, i)),
    }
    bias = getattr(gate, "e_score_correction_bias", None)
    if cfg.scoring == "sigmoid" or cfg.balancing == "bias":
        out["gate.e_score_correction_bias"] = (
            None if bias is None else _expect(fam, "gate.e_score_correction_bias", bias, (e,))
        )
    if adapter.shared is not None and cfg.has_shared_experts:
        s = cfg.shared_width
        shared = getattr(block, adapter.shared)
        for proj, shape in (("gate_proj", (s, h)), ("up_proj", (s, h)), ("down_proj", (h, s))):
            lin, where = getattr(shared, proj), f"{adapter.shared}.{proj}"
            if lin.bias is not None:
                raise ValueError(f"{fam} block: {where} has a bias; Fathom's shared MLP has none")
            out[f"shared_experts.{proj}.weight"] = _expect(fam, f"{where}.weight", lin.weight, shape)
    if adapter.shared_gate is not None and cfg.shared_expert_gate:
        lin = getattr(block, adapter.shared_gate)
        if lin.bias is not None:
            raise ValueError(f"{fam} block: {adapter.shared_gate} has a bias; Fathom's shared gate has none")
        out["shared_expert_gate.weight"] = _expect(fam, f"{adapter.shared_gate}.weight", lin.weight, (1, h))
    return out


def _build(block: nn.Module, cls: type[MoE], backend: Backend, share: bool, overrides: dict[str, Any]) -> MoE:
    adapter = _adapter(block)
    cfg = config_from_hf_block(block, **overrides)
    tensors = _hf_tensors(block, adapter, cfg)
    device = block.gate.weight.device
    kwargs = {"router_cls": adapter.router_cls} if issubclass(cls, HFMoEBlock) else {}
    # Built on meta, then every tensor is taken from the HF block: no throw-away random init of big experts.
    with torch.device("meta"):
        moe = cls(cfg, backend, **kwargs)
        if adapter.fp32_router:
            moe.gate = Float32Router(cfg)
    for name, src in tensors.items():
        owner_name, _, attr = name.rpartition(".")
        owner = moe.get_submodule(owner_name)
        if src is None:  # a bias the HF router lacks (a config override asked for one): start at zero
            owner.register_buffer(attr, torch.zeros(cfg.num_experts, dtype=torch.float32, device=device))
        elif isinstance(src, nn.Parameter):
            setattr(owner, attr, src if share else nn.Parameter(src.detach().clone(), src.requires_grad))
        else:
            owner.register_buffer(attr, src if share else src.detach().clone())
    for module in moe.modules():  # plain tensor attributes made in __init__ (e.g. MoE.aux_loss)
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, attr, torch.zeros(value.shape, dtype=value.dtype, device=device))
    left = [n for n, t in [*moe.named_parameters(), *moe.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"core.moe.hf: no HF tensor for {', '.join(left)} ({adapter.family})")
    moe.train(block.training)
    return moe


def from_hf_block(block: nn.Module, backend: Backend = "auto", **overrides: Any) -> MoE:
    """Build a Fathom ``MoE`` equal to a Hugging Face MoE block, with copies of its weights.

    Args:
        block: an instance of a supported block class (see ``adapters()``).
        backend: ``auto``, ``triton`` or ``torch`` (see ``core.moe.layer``).
        **overrides: ``MoEConfig`` fields to change, see ``config_from_hf_block``.

    Shapes:
        the result maps x (..., H) -> (..., H) like the block (which takes (B, S, H)).

    The weights keep their dtype and device (DeepSeek-V3's router runs in fp32, as in transformers).
    Mixtral's training-time jitter noise is applied only by ``patch_model``'s blocks.

    Raises:
        TypeError: the block's class is not supported.
        ValueError: a weight has the wrong shape, or the activation/expert layout is not SwiGLU.
    """
    moe = _build(block, MoE, backend, share=False, overrides=overrides)
    if moe.config.extra.get("router_jitter_noise", 0.0) > 0:
        logger.warning("from_hf_block: the plain MoE ignores router_jitter_noise (patch_model applies it)")
    return moe


# -- patching models --------------------------------------------------------------------------------
def _move_hooks(src: nn.Module, dst: nn.Module, *, pre: bool) -> None:
    if pre:
        for hook_id, hook in list(src._forward_pre_hooks.items()):
            dst.register_forward_pre_hook(hook, with_kwargs=hook_id in src._forward_pre_hooks_with_kwargs)
        return
    for hook_id, hook in list(src._forward_hooks.items()):
        dst.register_forward_hook(
            hook,
            with_kwargs=hook_id in src._forward_hooks_with_kwargs,
            always_call=hook_id in src._forward_hooks_always_called,
        )


def patch_model(model: nn.Module, backend: Backend = "auto", **overrides: Any) -> list[str]:
    """Replace, in place, every supported MoE block of a Hugging Face model with an ``HFMoEBlock``.

    Args:
        model: any module containing supported blocks (e.g. ``MixtralForCausalLM``).
        backend: ``auto``, ``triton`` or ``torch`` for every new block.
        **overrides: ``MoEConfig`` fields to change in every block (see ``config_from_hf_block``).

    Returns:
        The qualified names of the replaced blocks, in module order.

    The model's outputs (logits, generation, ``router_logits``, ``aux_loss``) are unchanged; the new
    blocks reuse the HF parameters. One-way: there is no unpatch (see the module docstring).

    Raises:
        ValueError: the model holds no supported block (or is one: use ``from_hf_block``), a weight has
            the wrong shape, or an activation is not SiLU. Nothing is replaced when it raises.
    """
    targets = [(name, m) for name, m in model.named_modules() if _adapter_or_none(m) is not None]
    if not targets:
        patched = " (it is already patched)" if is_patched(model) else ""
        raise ValueError(
            f"{type(model).__name__} holds no supported MoE block{patched}; supported: {_supported()}"
        )
    if targets[0][0] == "":
        raise ValueError(
            "patch_model needs a model that contains MoE blocks; for a bare block use from_hf_block"
        )
    # Build every replacement first so a bad block leaves the model untouched.
    new_blocks = [_build(block, HFMoEBlock, backend, share=True, overrides=overrides) for _, block in targets]
    for (name, old), new in zip(targets, new_blocks, strict=True):
        assert isinstance(new, HFMoEBlock)
        _move_hooks(old, new, pre=True)
        _move_hooks(old, new, pre=False)
        # Output recorders already installed on the old router (the model was run with output_router_logits).
        _move_hooks(old.gate, new.router, pre=False)
        if old.gate._forward_pre_hooks:
            logger.warning(
                "patch_model: forward pre-hooks on %s.gate are dropped (they cannot steer routing)", name
            )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    names = [name for name, _ in targets]
    logger.info("patch_model: %d MoE blocks replaced with Fathom's (%s)", len(names), new_blocks[0].backend)
    return names


def is_patched(model: nn.Module) -> bool:
    """Whether ``patch_model`` has replaced any block of ``model``."""
    return any(isinstance(m, HFMoEBlock) for m in model.modules())
