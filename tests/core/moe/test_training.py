"""A tiny MoE classifier learns, and its experts share the load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.moe import MoE, MoEConfig


class TinyMoEClassifier(nn.Module):
    def __init__(self, cfg: MoEConfig, num_classes: int):
        super().__init__()
        self.inp = nn.Linear(2, cfg.hidden_size)
        self.moe = MoE(cfg, backend="torch")
        self.head = nn.Linear(cfg.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return self.head(h + self.moe(h))


def spirals(n: int, classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 2-D spirals: not linearly separable, so the experts have work to do."""
    labels = torch.randint(0, classes, (n,), generator=gen)
    r = torch.rand(n, generator=gen) * 3 + 0.3
    theta = r * 1.6 + labels * (2 * torch.pi / classes) + torch.randn(n, generator=gen) * 0.08
    return torch.stack([r * theta.cos(), r * theta.sin()], dim=1), labels


@pytest.mark.parametrize("balancing", ["aux_loss", "bias"])
def test_tiny_moe_classifier_learns_with_balanced_experts(balancing: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    classes = 4
    x, y = spirals(2048, classes, gen)
    x_val, y_val = spirals(512, classes, gen)
    cfg = MoEConfig(
        hidden_size=32,
        intermediate_size=32,
        num_experts=4,
        top_k=2,
        balancing=balancing,
        aux_loss_coef=0.05,
        bias_update_rate=0.01,
    )
    model = TinyMoEClassifier(cfg, classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _step in range(300):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) + model.moe.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_val).argmax(-1) == y_val).float().mean().item()
    assert acc > 0.85, f"accuracy {acc:.3f} (chance is 0.25)"
    load = model.moe.last_stats.tokens_per_expert.float()
    share = load / load.sum()
    assert share.min() > 0.5 / cfg.num_experts, f"expert load {share.tolist()} is not balanced"
    assert model.moe.last_stats.load_imbalance < 1.6
