"""Compressed forms of the MoE intent router and their accuracy on the model card's validation split.

Variants (``make_variants``):

``fp32``
    The shipped router (MiniLM encoder + residual ``core.moe.MoE`` head) as it is.
``pruned-<p>``
    L1 unstructured pruning of ``p`` of every ``nn.Linear`` weight (the encoder's attention and
    feed-forward layers, the shared expert, the output layer) and of the routed experts' stacked
    ``w13``/``w2``, no fine-tuning. The word embeddings and the router gate are kept.
``int8-dynamic``
    ``torch.ao`` dynamic quantisation of the ``nn.Linear`` layers. Stay fp32: the routed experts (one
    ``(E, 2I, H)`` parameter, not Linear layers), the shared expert (its forward reads
    ``gate_proj.weight`` as a tensor for its small-batch C kernel), embeddings and layer norms.
``onnx``
    The whole classifier (token ids + attention mask -> logits) in one ONNX file run by onnxruntime;
    the MoE block is exported in its dense form (``core.compress.export_friendly``: every expert on
    every pooled message, weighted by the top-k routing weights; same function).
``onnx-int8``
    ``router.onnx`` through onnxruntime's dynamic int8 quantisation (its MatMul weights and the word
    embeddings included).

Quality is the card's: accuracy and macro F1 on the stratified validation split of BANKING77
``train.csv`` (``stratified_split`` with the card's ``val_fraction`` and seed, 1,003 rows).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apps.customer_service.intents import (
    IntentRouter,
    IntentTrainConfig,
    default_training_csv,
    read_intent_csv,
    stratified_split,
)
from core.compress import (
    OnnxModule,
    Variant,
    export_friendly,
    export_onnx,
    onnx_parity,
    prune,
    quantize_dynamic_int8,
    quantize_onnx_int8,
    size_bytes,
)

SHARED_EXPERT = "moe.shared_experts"


@dataclass
class IntentEvalData:
    """Labelled messages to measure accuracy on, and where they came from."""

    texts: list[str]
    labels: list[str]
    source: str


def load_eval_data(
    router: IntentRouter, csv_path: str | Path | None = None, *, limit: int | None = None
) -> IntentEvalData:
    """The card's validation split of the training CSV (or every row of another ``text,category`` CSV).

    Args:
        router: the loaded router (its card gives the split's fraction and seed).
        csv_path: default BANKING77 ``train.csv`` beside the checkout: its held-out split. Any other
            file is used whole (e.g. the official ``test.csv``).
        limit: first rows of the split only (quick runs).

    Raises:
        FileNotFoundError: the CSV is missing.
    """
    default = default_training_csv()
    path = Path(csv_path) if csv_path is not None else default
    texts, labels = read_intent_csv(path)
    if path.resolve() == default.resolve():
        config = router.card.get("config", {})
        icfg = IntentTrainConfig.from_dict(config.get("intent_train", {}))
        seed = int(config.get("train", {}).get("seed", 0))
        _, val = stratified_split(labels, icfg.val_fraction, seed)
        texts, labels = [texts[i] for i in val], [labels[i] for i in val]
        source = f"{path}: stratified validation split (fraction {icfg.val_fraction}, seed {seed})"
    else:
        source = str(path)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
        source += f", first {limit} rows"
    return IntentEvalData(texts, labels, source)


def quality(router: IntentRouter, model: Any, data: IntentEvalData) -> dict[str, float]:
    """Accuracy and macro F1 of ``model`` (a variant of ``router.model``) on ``data``."""
    variant = IntentRouter(model, router.tokenizer, router.labels, router.config, router.card)
    return variant.evaluate(data.texts, data.labels)


def batch_inputs(router: IntentRouter, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (padded to the longest) as the router tokenises them."""
    enc = router.tokenizer(
        texts, padding=True, truncation=True, max_length=router.config.max_length, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]


def export_router_onnx(
    router: IntentRouter, out_dir: str | Path, parity_texts: list[str]
) -> tuple[OnnxModule, dict[str, Any]]:
    """``router.onnx`` (ids, mask -> logits) and its parity with onnxruntime on ``parity_texts``.

    Traced on two short messages; checked on other batch and sequence sizes.
    """
    model = router.model.eval()
    path = Path(out_dir) / "router.onnx"
    example = batch_inputs(router, ["I lost my card", "how do I top up my account with apple pay?"])
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with export_friendly(model) as n_moe:
        export_onnx(model, example, path, ["input_ids", "attention_mask"], ["logits"], axes)
    runner = OnnxModule(path)
    # parity against the model as it normally runs (routed MoE path), not against the dense form
    diff = onnx_parity(model, path, batch_inputs(router, parity_texts), runner.session)
    details = {
        "exported": f"everything: encoder, mean pooling, MoE block (dense form of {n_moe} layer), classifier",
        "max_abs_diff": diff,
        "parity_messages": len(parity_texts),
    }
    return runner, details


def prune_targets(model: nn.Module) -> list[tuple[str, str]]:
    """The routed experts' stacked weights, as ``prune``'s ``extra``."""
    return [
        (name, p)
        for name, module in model.named_modules()
        if hasattr(module, "w13") and hasattr(module, "w2")
        for p in ("w13", "w2")
    ]


def make_variants(
    router: IntentRouter,
    work_dir: str | Path,
    parity_texts: list[str],
    *,
    prune_amounts: tuple[float, ...] = (0.3,),
    onnx: bool = True,
) -> list[Variant]:
    """fp32, pruned (one per amount), int8-dynamic and ONNX forms of ``router.model`` (not changed)."""
    model = router.model.eval()
    variants = [Variant("fp32", model, size_bytes(model))]
    for amount in prune_amounts:
        pruned = copy.deepcopy(model)
        report = prune(pruned, amount, (nn.Linear,), exclude=("moe.gate",), extra=prune_targets(pruned))
        variants.append(
            Variant(f"pruned-{round(amount * 100)}", pruned.eval(), size_bytes(pruned), report.to_dict())
        )
    q = quantize_dynamic_int8(model, (nn.Linear,), exclude=(SHARED_EXPERT,))
    variants.append(
        Variant(
            "int8-dynamic",
            q,
            size_bytes(q),
            {
                "quantised": "nn.Linear (encoder, output layer)",
                "fp32": "routed experts (stacked parameters), shared expert, embeddings, layer norms",
            },
        )
    )
    if onnx:
        runner, details = export_router_onnx(router, work_dir, parity_texts)
        variants.append(Variant("onnx", runner, size_bytes(runner.path), details))
        q_runner = OnnxModule(quantize_onnx_int8(runner.path, Path(work_dir) / "router-int8.onnx"))
        q_details = {"quantised": "onnxruntime quantize_dynamic (QInt8 weights) of router.onnx"}
        variants.append(Variant("onnx-int8", q_runner, size_bytes(q_runner.path), q_details))
    return variants


def load_shipped(model_dir: str | Path | None = None) -> IntentRouter:
    """The shipped intent router (or the one in ``model_dir``)."""
    return IntentRouter.load(model_dir)
