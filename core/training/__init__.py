"""Training utilities shared by the apps' models: the loop, its schedule, and checkpoints with a card.

- ``Trainer`` / ``TrainConfig``: mixed precision (bf16/fp16 autocast, GradScaler for fp16),
  gradient accumulation and clipping, warmup + cosine schedule, early stopping on a validation
  metric, best-state restore.
- ``save_checkpoint`` / ``load_checkpoint``: weights as safetensors (never pickle) beside a model
  card (``model_card.json`` + ``README.md``) holding the data hashes, config, metrics and code version.
"""

from core.training.checkpoint import (
    CARD_JSON,
    WEIGHTS,
    file_sha256,
    git_version,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from core.training.schedule import warmup_cosine
from core.training.trainer import EarlyStopping, TrainConfig, Trainer, TrainResult

__all__ = [
    "CARD_JSON",
    "WEIGHTS",
    "EarlyStopping",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "file_sha256",
    "git_version",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
    "warmup_cosine",
]
