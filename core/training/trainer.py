"""A small supervised training loop: mixed precision, accumulation, warmup + cosine, early stopping.

The loop is model-agnostic: the caller gives a function that yields the batches of an epoch, a
loss function ``loss_fn(model, batch) -> scalar tensor`` and an evaluation function
``evaluate(model) -> {metric: value}``. The best state by ``config.monitor`` is restored at the end,
so what the caller saves is the early-stopped model, not the last epoch's.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from core.config import ConfigMixin
from core.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig(ConfigMixin):
    """How to train (YAML section ``train``).

    Args:
        epochs: maximum number of epochs.
        lr: peak learning rate of parameter groups that do not set their own.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        warmup_ratio: fraction of all optimiser steps spent in linear warmup.
        min_lr_ratio: the cosine's floor as a fraction of the peak.
        grad_accum: micro-batches per optimiser step.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        precision: "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler).
        patience: epochs without improvement of ``monitor`` before stopping (0: never stop early).
        monitor: the metric of ``evaluate`` that picks the best epoch.
        mode: "max" or "min" for ``monitor``.
        seed: seeds torch before the first epoch.
        device: where the model trains.
    """

    yaml_section: ClassVar[str] = "train"

    epochs: int = 5
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    patience: int = 2
    monitor: str = "accuracy"
    mode: str = "max"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")


class EarlyStopping:
    """Tracks the best value of a metric and says when ``patience`` epochs brought no improvement.

    Args:
        patience: epochs without improvement tolerated; 0 never stops.
        mode: "max" or "min".
        min_delta: an improvement must beat the best by more than this.
    """

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when it is a new best."""
        if math.isnan(value):
            raise ValueError("the monitored metric is NaN")
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


@dataclass
class TrainResult:
    """What ``Trainer.fit`` did.

    Args:
        best_epoch: 0-based epoch whose state was restored.
        best_metrics: that epoch's evaluation.
        history: per epoch ``{"epoch", "train_loss", "seconds", **metrics}``.
        stopped_early: True when patience ran out before ``epochs``.
    """

    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices with weight decay, biases and norms without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Trainer:
    """Runs ``TrainConfig`` on a model.

    Args:
        model: the module to train (moved to ``config.device``).
        config: the run's settings.
        param_groups: AdamW groups (may set their own ``lr``); default ``default_param_groups``.
        on_epoch: called with each epoch's history row (for progress output).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        param_groups: list[dict[str, Any]] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.model = model.to(config.device)
        self.config = config
        groups = (
            param_groups if param_groups is not None else default_param_groups(model, config.weight_decay)
        )
        if not any(p.requires_grad for g in groups for p in g["params"]):
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.on_epoch = on_epoch
        device_type = torch.device(config.device).type
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self._device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type, enabled=config.precision == "fp16")

    def autocast(self) -> torch.autocast:
        """The autocast context of this run's precision (a no-op for fp32)."""
        return torch.autocast(
            self._device_type, dtype=self._autocast_dtype, enabled=self._autocast_dtype is not None
        )

    def fit(
        self,
        train_batches: Callable[[int], Iterable[Any]],
        steps_per_epoch: int,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        evaluate: Callable[[nn.Module], dict[str, float]],
    ) -> TrainResult:
        """Train, evaluate after every epoch, stop early, and restore the best state.

        Args:
            train_batches: ``train_batches(epoch)`` yields that epoch's micro-batches.
            steps_per_epoch: micro-batches per epoch (sizes the schedule).
            loss_fn: ``loss_fn(model, batch)`` -> scalar loss (runs under autocast).
            evaluate: ``evaluate(model)`` -> metrics; must contain ``config.monitor``.

        Raises:
            ValueError: ``evaluate`` does not report the monitored metric, or the loss is not finite.
        """
        cfg = self.config
        torch.manual_seed(cfg.seed)
        optimizer_steps = cfg.epochs * math.ceil(steps_per_epoch / cfg.grad_accum)
        scheduler = warmup_cosine(
            self.optimizer,
            warmup_steps=int(cfg.warmup_ratio * optimizer_steps),
            total_steps=optimizer_steps,
            min_ratio=cfg.min_lr_ratio,
        )
        stopper = EarlyStopping(cfg.patience, cfg.mode)
        history: list[dict[str, float]] = []
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, best_metrics = 0, {}
        stopped_early = False
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            self.model.train()
            total, count = 0.0, 0
            self.optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(train_batches(epoch)):
                with self.autocast():
                    loss = loss_fn(self.model, batch)
                if not torch.isfinite(loss):
                    raise ValueError(f"loss is {loss.item()} at epoch {epoch}, micro-batch {i}")
                self.scaler.scale(loss / cfg.grad_accum).backward()
                total, count = total + loss.item(), count + 1
                if count % cfg.grad_accum == 0:
                    self._optimizer_step(scheduler)
            if count % cfg.grad_accum:
                self._optimizer_step(scheduler)
            self.model.eval()
            with torch.no_grad():
                metrics = dict(evaluate(self.model))
            if cfg.monitor not in metrics:
                raise ValueError(f"evaluate() returned {sorted(metrics)}, not the monitored {cfg.monitor!r}")
            row = {"epoch": epoch, "train_loss": total / max(1, count), **metrics}
            row["seconds"] = round(time.perf_counter() - start, 2)
            history.append(row)
            log.info("epoch %d: %s", epoch, row)
            if self.on_epoch is not None:
                self.on_epoch(row)
            if stopper.step(float(metrics[cfg.monitor])):
                best_epoch, best_metrics = epoch, metrics
                best_state = copy.deepcopy(self.model.state_dict())
            elif stopper.should_stop:
                stopped_early = epoch < cfg.epochs - 1
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return TrainResult(best_epoch, best_metrics, history, stopped_early)

    def _optimizer_step(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        if self.config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        scheduler.step()
