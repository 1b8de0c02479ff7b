"""``fathom bench compress``: size, speed and quality of the compressed fraud model and intent router.

For each model, in one run: the shipped fp32 model and its variants (``apps/fraud/compress.py``,
``apps/customer_service/compress.py``): L1-pruned (no fine-tuning), int8 dynamic quantisation, ONNX
run by onnxruntime (parity checked against torch on inputs of other shapes than the export's), and
that ONNX file quantised to int8 by onnxruntime.

Rows (``case`` = model and what is timed, ``impl`` = variant):

- ``median_ms``/``p95_ms``: one batch through the model (fraud: ``fraud_batch`` validation rows through
  the scoring head, their day-graph embeddings given; plus one day graph through the GNN as its own
  case; intent: ``intent_batch`` validation messages, tokenised beforehand), variants timed
  round-robin after warm-up (``time_interleaved``) so a busy machine slows them alike;
- ``ratio``: the variant's median / fp32's (below 1: faster); ``size_bytes`` and ``size_ratio``;
- quality, measured the way the model card was (fraud: ``auc_roc``, ``average_precision``,
  ``card_precision_at_100`` on the card's validation window; intent: ``accuracy``, ``macro_f1`` on the
  card's validation split) and its drop from fp32 (``*_drop``);
- ONNX: ``max_abs_diff`` (logits; the fraud graph part's embeddings in ``details``).

Targets: ONNX parity ``max_abs_diff <= 1e-4``; int8, ONNX int8 and pruned quality drop ``<= 0.01``;
int8, ONNX and ONNX int8 latency ``<=`` fp32's. ``quick`` uses a few simulated fraud days, 64 intent
messages and short timing budgets (smoke runs, tests).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.bench.common import Report, time_interleaved
from core.compress import Variant, onnx_available

MODELS = ("fraud", "intent")
PARITY_TARGET = 1e-4
DROP_TARGET = 0.01
FRAUD_QUALITY = ("auc_roc", "average_precision", "card_precision_at_100")
INTENT_QUALITY = ("accuracy", "macro_f1")


def run(
    models: Sequence[str] = MODELS,
    *,
    quick: bool = False,
    fraud_model: str | Path | None = None,
    fraud_data: str | Path | None = None,
    intent_model: str | Path | None = None,
    intent_csv: str | Path | None = None,
    fraud_batch: int = 1024,
    intent_batch: int = 32,
    prune_amounts: Sequence[float] = (0.3, 0.5),
    budget_s: float | None = None,
    threads: int | None = None,
    json_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return (and write to ``json_path``) the DESIGN.md report.

    Args:
        models: any of ``"fraud"``, ``"intent"``.
        quick: tiny data and timing budgets (see the module docstring).
        fraud_model, intent_model: model folders (default: the shipped ones).
        fraud_data: handbook folder or labelled transactions file (default: the handbook beside the
            checkout, else simulated; ``quick``: simulated).
        intent_csv: ``text,category`` CSV (default: the card's validation split of BANKING77 train.csv).
        fraud_batch, intent_batch: rows / messages per timed batch.
        prune_amounts: pruning fractions, one variant each.
        budget_s: timed seconds per variant and case (default 3, quick 0.2).
        threads: torch (and onnxruntime) intra-op threads; default torch's.

    Raises:
        ValueError: an unknown model name.
    """
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ValueError(f"unknown model(s) {unknown or list(models)}; choose from {', '.join(MODELS)}")
    if threads is not None:
        torch.set_num_threads(threads)  # onnxruntime sessions take the same number
    say = progress or (lambda _msg: None)
    budget = budget_s if budget_s is not None else (0.2 if quick else 3.0)
    report = Report("compress", "cpu")
    report.settings.update({"quick": quick, "prune_amounts": list(prune_amounts), "timing_budget_s": budget})
    ok, why = onnx_available()
    if not ok:
        report.settings["onnx"] = why
    with tempfile.TemporaryDirectory(prefix="fathom-bench-compress-") as tmp:
        if "fraud" in models:
            bench_fraud(
                report,
                Path(tmp) / "fraud",
                model_dir=fraud_model,
                data=fraud_data,
                quick=quick,
                batch=fraud_batch,
                prune_amounts=tuple(prune_amounts),
                budget=budget,
                onnx=ok,
                onnx_reason=why,
                say=say,
            )
        if "intent" in models:
            bench_intent(
                report,
                Path(tmp) / "intent",
                model_dir=intent_model,
                csv_path=intent_csv,
                quick=quick,
                batch=intent_batch,
                prune_amounts=tuple(prune_amounts),
                budget=budget,
                onnx=ok,
                onnx_reason=why,
                say=say,
            )
    data = report.to_dict()
    if json_path is not None:
        report.write(json_path)
    return data


def _timings(fns: dict[str, Callable[[], Any]], quick: bool, budget: float) -> dict[str, tuple[float, float]]:
    with torch.inference_mode():
        timings = time_interleaved(
            fns, warmup=1 if quick else 3, min_rounds=3 if quick else 10, max_rounds=200, budget_s=budget
        )
    return {name: (t.median_ms, t.p95_ms) for name, t in timings.items()}


def _rows(
    report: Report,
    model: str,
    case: str,
    variants: list[Variant],
    timings: dict[str, tuple[float, float]],
    quality: dict[str, dict[str, float]] | None,
    quality_keys: tuple[str, ...],
    diff_part: str | None = None,
) -> None:
    base_ms = timings["fp32"][0]
    base_size = variants[0].size_bytes
    for v in variants:
        median, p95 = timings[v.name]
        row: dict[str, Any] = {
            "median_ms": round(median, 4),
            "p95_ms": round(p95, 4),
            "ratio": round(median / base_ms, 4),
            "size_bytes": v.size_bytes,
            "size_ratio": round(v.size_bytes / base_size, 4),
        }
        if quality is not None:
            for k in quality_keys:
                row[k] = quality[v.name][k]
                if v.name != "fp32":
                    row[f"{k}_drop"] = round(quality["fp32"][k] - quality[v.name][k], 6)
        if diff_part is not None and diff_part in v.details.get("max_abs_diff_parts", {}):
            row["max_abs_diff"] = v.details["max_abs_diff_parts"][diff_part]
        elif "max_abs_diff" in v.details:
            row["max_abs_diff"] = v.details["max_abs_diff"]
        if v.details:
            row["details"] = {k: val for k, val in v.details.items() if k != "max_abs_diff"}
        report.add_result(f"{model}/{case}", v.name, **row)


def _targets(
    report: Report,
    model: str,
    variants: list[Variant],
    timings: dict[str, tuple[float, float]],
    quality: dict[str, dict[str, float]],
    metric: str,
    onnx_reason: str,
) -> None:
    names = {v.name: v for v in variants}
    onnx = names.get("onnx")
    report.add_target(
        f"{model}: ONNX vs torch max |diff| (logits" + ("; graph embeddings)" if model == "fraud" else ")"),
        None if onnx is None else onnx.details["max_abs_diff"],
        PARITY_TARGET,
        "lower",
        None if onnx is not None else f"not exported: {onnx_reason}",
    )
    for name in [n for n in names if n in ("int8-dynamic", "onnx-int8") or n.startswith("pruned-")]:
        report.add_target(
            f"{model}: {name} {metric} drop vs fp32",
            round(quality["fp32"][metric] - quality[name][metric], 6),
            DROP_TARGET,
            "lower",
        )
    for name in ("int8-dynamic", "onnx", "onnx-int8"):
        if name in timings:
            report.add_target(
                f"{model}: {name} latency / fp32",
                round(timings[name][0] / timings["fp32"][0], 4),
                1.0,
                "lower",
            )


# --- fraud ------------------------------------------------------------------------------------------------
def bench_fraud(
    report: Report,
    work: Path,
    *,
    model_dir: str | Path | None,
    data: str | Path | None,
    quick: bool,
    batch: int,
    prune_amounts: tuple[float, ...],
    budget: float,
    onnx: bool,
    onnx_reason: str,
    say: Callable[[str], None],
) -> None:
    """Fraud rows and targets (see the module docstring)."""
    from apps.fraud import compress as fc
    from apps.fraud.model import GraphTensors

    say("fraud: loading the model and preparing the validation window")
    start = time.perf_counter()
    model, card = fc.load_shipped(model_dir)
    data_ = fc.load_eval_data(card, data, quick=quick)
    report.settings["fraud"] = {"data": data_.source, "prepare_s": round(time.perf_counter() - start, 1)}
    say("fraud: pruning, quantising, exporting to ONNX")
    variants = fc.make_variants(model, data_, work, prune_amounts=prune_amounts, onnx=onnx)
    say("fraud: quality on the validation window")
    quality = {v.name: fc.quality(v.model, data_) for v in variants}
    say("fraud: timing")
    rows = data_.val_rows[:batch]
    inputs = fc.head_inputs(model, data_, rows)
    timings = _timings({v.name: (lambda m=v.model: m(*inputs)) for v in variants}, quick, budget)
    case = f"score batch={len(rows)}"
    _rows(report, "fraud", case, variants, timings, quality, FRAUD_QUALITY, diff_part="head_logits")
    if model.config.use_graph:
        snap = int(data_.prepared.snapshot[data_.val_rows[-1]])
        graph = GraphTensors.from_snapshot(data_.prepared.snapshots[snap])
        g_timings = _timings(
            {v.name: (lambda m=v.model: m.embed_graph(graph)) for v in variants}, quick, budget
        )
        n_nodes = graph.x_card.shape[0] + graph.x_terminal.shape[0]
        case = f"embed day graph nodes={n_nodes} edges={graph.edge_index.shape[1]}"
        _rows(report, "fraud", case, variants, g_timings, None, (), diff_part="graph_embeddings")
    _targets(report, "fraud", variants, timings, quality, "average_precision", onnx_reason)


# --- intent router ----------------------------------------------------------------------------------------
def bench_intent(
    report: Report,
    work: Path,
    *,
    model_dir: str | Path | None,
    csv_path: str | Path | None,
    quick: bool,
    batch: int,
    prune_amounts: tuple[float, ...],
    budget: float,
    onnx: bool,
    onnx_reason: str,
    say: Callable[[str], None],
) -> None:
    """Intent-router rows and targets (see the module docstring)."""
    from apps.customer_service import compress as cc

    say("intent: loading the router")
    try:
        router = cc.load_shipped(model_dir)
        data = cc.load_eval_data(router, csv_path, limit=64 if quick else None)
    except FileNotFoundError as exc:
        report.add_result("intent", "all", skipped=str(exc).splitlines()[0])
        report.add_target("intent: ONNX vs torch max |logit diff|", None, PARITY_TARGET, "lower", str(exc))
        return
    report.settings["intent"] = {"data": data.source, "n": len(data.texts)}
    rng = np.random.default_rng(0)
    picked = rng.choice(len(data.texts), size=min(batch, len(data.texts)), replace=False)
    texts = [data.texts[i] for i in picked]
    say("intent: pruning, quantising, exporting to ONNX")
    variants = cc.make_variants(router, work, texts, prune_amounts=prune_amounts, onnx=onnx)
    say(f"intent: accuracy on {len(data.texts)} messages")
    quality = {v.name: cc.quality(router, v.model, data) for v in variants}
    say("intent: timing")
    ids, mask = cc.batch_inputs(router, texts)
    timings = _timings({v.name: (lambda m=v.model: m(ids, mask)) for v in variants}, quick, budget)
    case = f"classify batch={ids.shape[0]} tokens={ids.shape[1]}"
    _rows(report, "intent", case, variants, timings, quality, INTENT_QUALITY)
    _targets(report, "intent", variants, timings, quality, "accuracy", onnx_reason)
