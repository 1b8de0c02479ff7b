"""Learning-rate schedules."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to each group's lr over ``warmup_steps``, then cosine decay to ``min_ratio``.

    Args:
        optimizer: its param groups' ``lr`` are the peak rates.
        warmup_steps: optimiser steps of linear warmup (0 for none).
        total_steps: optimiser steps in the whole run; the cosine reaches its floor there.
        min_ratio: the floor as a fraction of the peak rate.

    Raises:
        ValueError: negative steps, ``warmup_steps > total_steps`` or ``min_ratio`` outside [0, 1].
    """
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}"
        )
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
