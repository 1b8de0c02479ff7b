"""Training the fraud model (``fathom fraud train``) and loading the shipped one.

The engine (``apps.fraud.batch.prepare``) runs once over the whole file in time order; the
rows are split by ``evaluate.split_windows`` into a training window and a validation window
after a delay (the handbook's protocol, so validation looks like deployment: the labels of the
last ``delay_days`` before it are not known). Each optimiser step is one training day: that
day's graph snapshot through the GNN, all its frauds and a ``neg_rate`` sample of its genuine
transactions. Early stopping watches validation average precision; the best epoch is kept::

    report = train(df, FraudTrainConfig(epochs=10), out_dir="models/fraud-detector")
    model, card = load_model()              # the shipped model (models/fraud-detector)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from apps.fraud.batch import Prepared, prepare
from apps.fraud.evaluate import BASELINES, fit_baselines, metrics, quality_table, split_windows
from apps.fraud.features import FEATURE_NAMES, SEQ_LEN, STEP_NAMES, FeatureState
from apps.fraud.model import FraudModelConfig, FraudNet, GraphTensors, load_rows, score_prepared
from core.config import ConfigMixin, models_dir
from core.training import TrainConfig, Trainer, distributed, load_checkpoint, read_card, save_checkpoint

log = logging.getLogger(__name__)

MODEL_NAME = "fathom-fraud-detector"
DEFAULT_MODEL = "fraud-detector"


def default_model_dir() -> Path:
    """The shipped model's folder (``$FATHOM_MODELS_DIR/fraud-detector``)."""
    return models_dir(DEFAULT_MODEL)


@dataclass
class FraudTrainConfig(ConfigMixin):
    """Data and optimisation settings (YAML section ``fraud_train``).

    Args:
        warmup_days: first days used only to fill the 30-day feature windows.
        delay_days: gap between the training and the validation window (label delay).
        val_days: the last days of the data, for early stopping and the model card's metrics.
        label_delay_days: the feature engine's label delay (see ``FeatureState``).
        neg_rate: fraction of genuine transactions sampled per day and epoch (class imbalance);
            the model's ``logit_offset`` is set to ``log(neg_rate)`` so scores stay probabilities.
        pos_weight: weight of frauds in the loss, on top of the sampling.
        day_splits: optimiser steps per training day and epoch (the day's sample in that many
            parts, the day graph embedded for each).
        epochs, lr, weight_decay, patience, precision, seed, device: see ``TrainConfig``;
            the monitored metric is validation average precision.
        baselines: also fit ``evaluate.BASELINES`` on the same rows and report them.
    """

    yaml_section: ClassVar[str] = "fraud_train"

    warmup_days: int = 30
    delay_days: int = 7
    val_days: int = 21
    label_delay_days: float = 7.0
    neg_rate: float = 0.2
    pos_weight: float = 1.0
    day_splits: int = 2
    epochs: int = 24
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 3
    precision: str = "fp32"
    seed: int = 0
    device: str = "cpu"
    baselines: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_rate <= 1.0:
            raise ValueError(f"neg_rate must be in (0, 1], got {self.neg_rate}")
        if self.pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {self.pos_weight}")
        for name in ("warmup_days", "delay_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.day_splits < 1:
            raise ValueError(f"day_splits must be >= 1, got {self.day_splits}")
        if self.val_days < 1:
            raise ValueError(f"val_days must be >= 1, got {self.val_days}")


@dataclass
class TrainReport:
    """What ``train`` did: validation metrics of ours and of the baselines, history, timings."""

    out_dir: Path | None
    val: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    n_train: int = 0
    n_val: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    alert_threshold: float = 0.5

    def quality_table(self) -> list[dict[str, object]]:
        return quality_table(self.val, self.baselines)


def _day_batches(
    prepared, train_rows: np.ndarray, labels: np.ndarray, neg_rate: float, seed: int, splits: int = 1
) -> Callable[[int], list[tuple[int, np.ndarray]]]:
    """``batches(epoch)``: ``splits`` ``(snapshot, rows)`` per training day, frauds + sampled genuine."""
    days = (
        prepared.snapshot[train_rows] if prepared.snapshots else np.floor(prepared.times[train_rows] / 86400)
    )
    groups = [(int(d), train_rows[days == d]) for d in np.unique(days)]

    def batches(epoch: int) -> list[tuple[int, np.ndarray]]:
        rng = np.random.default_rng(seed * 1000 + epoch)
        out = []
        for d, rows in groups:
            keep = labels[rows] | (rng.random(len(rows)) < neg_rate)
            if keep.any():
                chosen = rng.permutation(rows[keep])
                out += [(d, part) for part in np.array_split(chosen, splits) if len(part)]
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    return batches


def train(
    df: pd.DataFrame,
    config: FraudTrainConfig | None = None,
    model_config: FraudModelConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    until: str | pd.Timestamp | None = None,
    data_files: Mapping[str, str] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    prepared: Prepared | None = None,
) -> TrainReport:
    """Train ``FraudNet`` on labelled canonical transactions; save it to ``out_dir`` when given.

    Args:
        df: transactions with a boolean ``label`` (``data.load_handbook``, ``simulate``).
        until: ignore transactions after this day (YYYY-MM-DD, inclusive, UTC).
        data_files: file -> sha256 for the model card.
        on_epoch: called with each epoch's history row; progress: with rows prepared.
        prepared: ``batch.prepare(df, snapshots=True)`` already run on ``df`` (after ``until``)
            with a fresh state of ``label_delay_days``, to share one pass between runs.

    Raises:
        ValueError: no labels, one class only, or too few days for the windows.
    """
    cfg = config or FraudTrainConfig()
    mcfg = model_config or FraudModelConfig()
    if "label" not in df.columns or df["label"].isna().any():
        raise ValueError("training needs a label (0/1) for every transaction")
    if until is not None:
        end = pd.Timestamp(until, tz="UTC").normalize() + pd.Timedelta(days=1)
        df = df[pd.to_datetime(df["timestamp"], utc=True) < end]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if prepared is None:
        state = FeatureState(label_delay_days=cfg.label_delay_days)
        prepared = prepare(df, state, snapshots=mcfg.use_graph, progress=progress)
    elif len(prepared) != len(df):
        raise ValueError(f"prepared has {len(prepared)} rows but the data has {len(df)}")
    seconds["prepare"] = round(time.perf_counter() - start, 2)
    labels = df["label"].astype(bool).to_numpy()
    train_mask, val_mask = split_windows(
        prepared.times, warmup_days=cfg.warmup_days, delay_days=cfg.delay_days, test_days=cfg.val_days
    )
    train_rows, val_rows = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
    for name, rows in (("training", train_rows), ("validation", val_rows)):
        n_pos = int(labels[rows].sum())
        if n_pos == 0 or n_pos == len(rows):
            raise ValueError(
                f"the {name} window has {len(rows)} rows and {n_pos} frauds: it needs both classes"
            )
    cards = df["customer_id"].astype(str).to_numpy()

    run = distributed.init_distributed()  # under torchrun (WORLD_SIZE > 1): DDP, else one process
    torch.manual_seed(cfg.seed)
    model = FraudNet(mcfg)
    model.fit_normalisation(prepared.features[train_rows])
    device = torch.device(cfg.device)
    graphs: dict[int, GraphTensors] = {}

    def graph(d: int) -> GraphTensors:
        if d not in graphs:
            graphs[d] = GraphTensors.from_snapshot(prepared.snapshots[d], device)
        return graphs[d]

    pos_weight = torch.tensor(cfg.pos_weight, device=device)

    def loss_fn(net: FraudNet, batch: tuple[int, np.ndarray]) -> torch.Tensor:
        d, rows = batch
        features, sequences = load_rows(prepared, rows, device)
        card = terminal = None
        if mcfg.use_graph:
            card_table, terminal_table = distributed.unwrap(net).embed_graph(graph(d))
            card = card_table[torch.from_numpy(prepared.card_node[rows]).to(device)]
            terminal = terminal_table[torch.from_numpy(prepared.terminal_node[rows]).to(device)]
        logits = net(features, sequences, card, terminal)
        target = torch.from_numpy(labels[rows].astype(np.float32)).to(device)
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight)

    def evaluate(net: FraudNet) -> dict[str, float]:
        scores = score_prepared(distributed.unwrap(net), prepared, val_rows, device=device)
        return metrics(labels[val_rows], scores, prepared.times[val_rows], cards[val_rows])

    batches = _day_batches(prepared, train_rows, labels, cfg.neg_rate, cfg.seed, cfg.day_splits)
    # DDP: each rank its share of every epoch's days, gradients averaged; rank 0 validates and saves
    batches = distributed.shard_epochs(batches)
    trainer = Trainer(
        distributed.wrap_ddp(model.to(device)),
        TrainConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_ratio=0.05,
            min_lr_ratio=0.05,
            precision=cfg.precision,
            patience=cfg.patience,
            monitor="average_precision",
            mode="max",
            seed=cfg.seed,
            device=cfg.device,
        ),
        on_epoch=on_epoch,
    )
    start = time.perf_counter()
    result = trainer.fit(batches, len(batches(0)), loss_fn, distributed.on_main(evaluate))
    seconds["train"] = round(time.perf_counter() - start, 2)
    with torch.no_grad():
        model.logit_offset.fill_(math.log(cfg.neg_rate))
    model.eval()
    val = {k: float(v) for k, v in result.best_metrics.items()}
    threshold = alert_threshold(labels[val_rows], score_prepared(model, prepared, val_rows, device=device))

    baselines: dict[str, dict[str, float]] = {}
    if cfg.baselines and run.is_main:
        start = time.perf_counter()
        fitted = fit_baselines(prepared.features[train_rows], labels[train_rows], seed=cfg.seed)
        for name in BASELINES:
            scores = fitted[name].predict_proba(prepared.features[val_rows])[:, 1]
            baselines[name] = metrics(labels[val_rows], scores, prepared.times[val_rows], cards[val_rows])
        seconds["baselines"] = round(time.perf_counter() - start, 2)

    report = TrainReport(
        out_dir=None,
        val=val,
        baselines=baselines,
        history=result.history,
        best_epoch=result.best_epoch,
        n_train=len(train_rows),
        n_val=len(val_rows),
        seconds=seconds,
        alert_threshold=threshold,
    )
    if out_dir is not None and run.is_main:
        report.out_dir = save_model(model, out_dir, cfg, report, df, data_files or {})
    return report


def alert_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the best F1 on validation rows (0.5 when there is no fraud)."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels).astype(bool)
    if not labels.any() or labels.all():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def save_model(
    model: FraudNet,
    out_dir: str | Path,
    cfg: FraudTrainConfig,
    report: TrainReport,
    df: pd.DataFrame,
    data_files: Mapping[str, str],
) -> Path:
    """Weights (safetensors) + model card with the configs, metrics, baselines and data hashes."""
    stamps = pd.to_datetime(df["timestamp"], utc=True)
    table = "\n".join(
        "| {impl} | {auc_roc:.4f} | {average_precision:.4f} | {card_precision_at_100:.4f} |".format(**r)
        for r in report.quality_table()
    )
    sections = {
        "Intended use": (
            "Scores card transactions for fraud in real time (`fathom fraud stream`) and in batches "
            "(`fathom fraud score`); alerts go to an analyst queue. Scores rank transactions for "
            "review; they are not a decision."
        ),
        "Validation (handbook protocol)": (
            f"Training window then a {cfg.delay_days}-day gap then the last {cfg.val_days} days; "
            "baselines fitted on the same features and rows in the same run.\n\n"
            "| model | AUC-ROC | average precision | card precision@100 |\n|---|---|---|---|\n" + table
        ),
        "Limits": (
            "Trained on simulated transactions (Fraud Detection Handbook). Card precision@100 does not "
            "drop cards already known to be compromised. Retrain on your own data before use."
        ),
    }
    return save_checkpoint(
        out_dir,
        model.state_dict(),
        name=MODEL_NAME,
        config={"model": model.config.to_dict(), "train": cfg.to_dict()},
        metrics={"val": report.val, "baselines": report.baselines, "best_epoch": report.best_epoch},
        data=dict(data_files),
        summary=(
            "LSTM over each card's last transactions + graph attention network over the card-terminal "
            "graph + tabular features, for card fraud scoring."
        ),
        sections=sections,
        extra={
            "feature_names": list(FEATURE_NAMES),
            "step_names": list(STEP_NAMES),
            "seq_len": SEQ_LEN,
            "label_delay_days": cfg.label_delay_days,
            "alert_threshold": report.alert_threshold,
            "data_window": [stamps.min().isoformat(), stamps.max().isoformat()],
            "n_train": report.n_train,
            "n_val": report.n_val,
            "history": report.history,
            "seconds": report.seconds,
        },
    )


def load_model(directory: str | Path | None = None, device: str = "cpu") -> tuple[FraudNet, dict[str, Any]]:
    """A saved ``FraudNet`` and its card (default: the shipped model).

    Raises:
        FileNotFoundError: no checkpoint there; ValueError: a card from another model or feature set.
    """
    folder = Path(directory) if directory is not None else default_model_dir()
    card = read_card(folder)
    if card.get("name") != MODEL_NAME:
        raise ValueError(f"{folder}: the model card names {card.get('name')!r}, not {MODEL_NAME!r}")
    if card.get("feature_names") != list(FEATURE_NAMES) or card.get("step_names") != list(STEP_NAMES):
        raise ValueError(f"{folder}: trained on other features than this code computes; retrain it")
    tensors, card = load_checkpoint(folder, device=device)
    model = FraudNet(FraudModelConfig.from_dict(card["config"]["model"]))
    model.load_state_dict(tensors)
    return model.to(device).eval(), card
