"""Magnitude (L1 unstructured) pruning made permanent, with the sparsity it reached."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM)
_RNN_TYPES = (nn.RNNBase,)


@dataclass
class PruneReport:
    """What ``prune`` did.

    Attributes:
        amount: the fraction asked for per tensor.
        per_tensor: ``"module.param" -> sparsity`` of each pruned tensor after pruning.
        pruned_elements: zeros in the pruned tensors; total_elements: their size.
    """

    amount: float
    per_tensor: dict[str, float] = field(default_factory=dict)
    pruned_elements: int = 0
    total_elements: int = 0

    @property
    def sparsity(self) -> float:
        """Zero fraction over the pruned tensors (0 when none)."""
        return self.pruned_elements / self.total_elements if self.total_elements else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "amount": self.amount,
            "tensors": len(self.per_tensor),
            "sparsity": round(self.sparsity, 6),
            "pruned_elements": self.pruned_elements,
            "total_elements": self.total_elements,
        }


def _weights_of(module: nn.Module) -> list[str]:
    """Names of the weight matrices of ``module`` (RNN: every ``weight_*``; else ``weight``)."""
    if isinstance(module, _RNN_TYPES):
        return [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]
    p = getattr(module, "weight", None)
    return ["weight"] if isinstance(p, nn.Parameter) else []


def prune(
    model: nn.Module,
    amount: float,
    modules: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    *,
    exclude: Sequence[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> PruneReport:
    """Zero the ``amount`` smallest-magnitude weights of each matching tensor, in place, permanently.

    ``torch.nn.utils.prune.l1_unstructured`` per tensor, then ``prune.remove`` so the zeros are in
    the parameters themselves (no mask, no hook; the state dict keeps its keys). Biases are kept.
    Dense storage and dense kernels do not get smaller or faster from unstructured zeros.

    Args:
        model: changed in place.
        amount: fraction in [0, 1) of each tensor to zero.
        modules: module classes whose weights are pruned (``nn.Linear`` ``weight``, every
            ``weight_*`` of an ``nn.LSTM``/GRU/RNN); matched with ``isinstance``.
        exclude: qualified module names (or prefixes, e.g. ``"encoder.embeddings"``) to leave alone.
        extra: further ``(module name, parameter name)`` pairs, e.g. ``("moe.experts", "w13")``.

    Raises:
        ValueError: ``amount`` outside [0, 1), an ``extra`` entry that does not exist, or nothing
            to prune.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    named = dict(model.named_modules())
    targets: list[tuple[str, str]] = []
    for name, module in named.items():
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        if isinstance(module, modules):
            targets += [(name, p) for p in _weights_of(module)]
    for name, param in extra:
        module = named.get(name)
        if module is None or not isinstance(getattr(module, param, None), nn.Parameter):
            raise ValueError(f"{type(model).__name__} has no parameter {name}.{param} to prune")
        if (name, param) not in targets:
            targets.append((name, param))
    if not targets:
        kinds = ", ".join(t.__name__ for t in modules)
        raise ValueError(f"{type(model).__name__} has no {kinds} weights to prune")
    report = PruneReport(amount=amount)
    for name, param in targets:
        module = named[name]
        torch_prune.l1_unstructured(module, param, amount=amount)
        torch_prune.remove(module, param)
        tensor = getattr(module, param)
        zeros = int((tensor == 0).sum())
        report.per_tensor[f"{name}.{param}" if name else param] = zeros / tensor.numel()
        report.pruned_elements += zeros
        report.total_elements += tensor.numel()
    for module in named.values():
        if isinstance(module, _RNN_TYPES):
            module.flatten_parameters()  # the fused RNN weights must see the pruned tensors
    return report


@torch.no_grad()
def sparsity(model: nn.Module, modules: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> float:
    """Zero fraction over the weight matrices of ``modules`` layers in ``model`` (0 when none)."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, modules):
            for p in _weights_of(module):
                t = getattr(module, p)
                zeros += int((t == 0).sum())
                total += t.numel()
    return zeros / total if total else 0.0
