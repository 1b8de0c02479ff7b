"""Compressed forms of the fraud model and their quality on the model card's validation window.

Variants of ``FraudNet`` (``make_variants``):

``fp32``
    The shipped model as it is.
``pruned-<p>``
    L1 unstructured pruning of ``p`` of every Linear, LSTM and graph-attention projection weight
    (``core.compress.prune``), no fine-tuning.
``int8-dynamic``
    ``torch.ao`` dynamic quantisation of the ``nn.Linear`` and ``nn.LSTM`` layers. The GATConv
    projections are torch-geometric ``Linear`` modules, which the quantiser does not know: they,
    the attention vectors and the layer norms stay fp32.
``onnx``
    The whole model in two ONNX files run by onnxruntime, split where ``score_prepared`` splits it:
    ``graph.onnx`` (the day graph -> card and terminal embedding tables: the two GATConv layers,
    their scatter-softmax and scatter-sum included) and ``head.onnx`` (features, sequence and the two
    embedding rows -> logit: normalisation, tabular MLP, LSTM, head). Nothing is left in torch.
``onnx-int8``
    The two ONNX files through onnxruntime's dynamic int8 quantisation.

Quality is measured exactly as ``fathom fraud train`` validates (``score_prepared`` over the
validation rows, ``apps.fraud.evaluate.metrics``): on the handbook with the card's windows this is
the card's validation window (2018-07-11..07-31), so the fp32 row reproduces the card's figures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from apps.fraud.batch import Prepared, prepare
from apps.fraud.data import load_handbook, load_transactions
from apps.fraud.evaluate import metrics, split_windows
from apps.fraud.features import FeatureState
from apps.fraud.model import FraudNet, GraphTensors, load_rows, score_prepared
from apps.fraud.simulate import simulate
from apps.fraud.train import FraudTrainConfig, load_model
from core.compress import (
    OnnxModule,
    Variant,
    export_onnx,
    onnx_parity,
    prune,
    quantize_dynamic_int8,
    quantize_onnx_int8,
    size_bytes,
)

HANDBOOK = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fraud-handbook"
QUALITY_KEYS = ("auc_roc", "average_precision", "card_precision_at_100")


@dataclass
class FraudEvalData:
    """Prepared transactions and the validation rows to score.

    Attributes:
        prepared: features, sequences and day graphs of every transaction.
        val_rows: row indices of the validation window.
        labels, cards: per transaction (all rows).
        source: where the data came from, and the window.
    """

    prepared: Prepared
    val_rows: np.ndarray
    labels: np.ndarray
    cards: np.ndarray
    source: str


def load_eval_data(
    card: dict[str, Any],
    data: str | Path | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
) -> FraudEvalData:
    """The validation window of the model card's protocol.

    Args:
        card: the model card (its ``config.train`` windows and ``label_delay_days``).
        data: the handbook folder or a labelled transactions file; default the handbook beside the
            checkout when present, else simulated transactions.
        quick: a few simulated days with short windows (tests, smoke runs), whatever ``data`` says.
        seed: of the simulation.

    Raises:
        ValueError: the data has no labels or is too short for the windows.
    """
    cfg = FraudTrainConfig.from_dict(card.get("config", {}).get("train", {}))
    windows = {"warmup_days": cfg.warmup_days, "delay_days": cfg.delay_days, "test_days": cfg.val_days}
    if quick:
        df = simulate(n_customers=60, n_terminals=120, days=8, seed=seed, fraud_rate=0.05)
        windows = {"warmup_days": 3, "delay_days": 1, "test_days": 3}
        source = f"simulate(60 cards, 8 days, seed={seed})"
    else:
        path = Path(data) if data is not None else (HANDBOOK if HANDBOOK.is_dir() else None)
        if path is None:
            df = simulate(n_customers=2_000, n_terminals=4_000, days=60, seed=seed, fraud_rate=0.01)
            source = f"simulate(2000 cards, 60 days, seed={seed})"
        else:
            df = load_handbook(path) if path.is_dir() else load_transactions(path)
            source = str(path)
    if "label" not in df.columns or df["label"].isna().any():
        raise ValueError(f"{source}: every transaction needs a label to measure quality")
    state = FeatureState(label_delay_days=float(card.get("label_delay_days", cfg.label_delay_days)))
    prepared = prepare(df, state, snapshots=True)
    _, val = split_windows(prepared.times, **windows)
    val_rows = np.flatnonzero(val)
    days = pd.to_datetime(prepared.times[val_rows], unit="s", utc=True)
    window = f"{days.min():%Y-%m-%d}..{days.max():%Y-%m-%d}" if len(days) else "empty"
    return FraudEvalData(
        prepared,
        val_rows,
        df["label"].astype(bool).to_numpy(),
        df["customer_id"].astype(str).to_numpy(),
        f"{source}, validation {window}",
    )


def quality(model: Any, data: FraudEvalData) -> dict[str, float]:
    """AUC-ROC, average precision and card precision@100 over the validation rows."""
    rows = data.val_rows
    scores = score_prepared(model, data.prepared, rows)
    m = metrics(data.labels[rows], scores, data.prepared.times[rows], data.cards[rows])
    return {k: float(m[k]) for k in QUALITY_KEYS} | {"n_transactions": len(rows), "n_fraud": m["n_fraud"]}


# --- ONNX -------------------------------------------------------------------------------------------------
class _GraphEncoder(nn.Module):
    """``FraudNet.embed_graph`` with plain tensor inputs (exportable)."""

    def __init__(self, net: FraudNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        x_card: torch.Tensor,
        x_terminal: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.embed_graph(GraphTensors(x_card, x_terminal, edge_index, edge_attr))


class _Head(nn.Module):
    """``FraudNet.forward`` on the inputs the config uses, positionally (exportable)."""

    def __init__(self, net: FraudNet) -> None:
        super().__init__()
        self.net = net
        cfg = net.config
        self.input_names = ["features"] + ["sequences"] * cfg.use_sequence
        self.input_names += ["card_emb", "terminal_emb"] * cfg.use_graph

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        return self.net(
            named["features"], named.get("sequences"), named.get("card_emb"), named.get("terminal_emb")
        )


class OnnxFraudNet:
    """The two ONNX parts behind ``FraudNet``'s interface, so ``score_prepared`` runs them unchanged."""

    def __init__(self, config: Any, head: OnnxModule, graph: OnnxModule | None) -> None:
        self.config = config
        self.head = head
        self.graph = graph

    def eval(self) -> OnnxFraudNet:
        return self

    def embed_graph(self, graph: GraphTensors) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            raise ValueError("this model was built with use_graph=False")
        return self.graph(graph.x_card, graph.x_terminal, graph.edge_index, graph.edge_attr)

    def __call__(
        self,
        features: torch.Tensor,
        sequences: torch.Tensor | None = None,
        card_emb: torch.Tensor | None = None,
        terminal_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = (
            [features]
            + [sequences] * self.config.use_sequence
            + [card_emb, terminal_emb] * self.config.use_graph
        )
        return self.head(*parts)


def _graph_inputs(data: FraudEvalData, index: int) -> tuple[torch.Tensor, ...]:
    g = GraphTensors.from_snapshot(data.prepared.snapshots[index])
    return g.x_card, g.x_terminal, g.edge_index, g.edge_attr


def head_inputs(model: FraudNet, data: FraudEvalData, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The head's positional inputs for ``rows`` (embeddings from ``model``'s day graphs, fp32)."""
    features, sequences = load_rows(data.prepared, rows)
    parts = [features] + [sequences] * model.config.use_sequence
    if model.config.use_graph:
        snaps = data.prepared.snapshot[rows]
        card = torch.empty(len(rows), model.config.gnn_hidden)
        terminal = torch.empty_like(card)
        with torch.no_grad():
            for s in np.unique(snaps):
                where = np.flatnonzero(snaps == s)
                tables = model.embed_graph(GraphTensors.from_snapshot(data.prepared.snapshots[s]))
                card[where] = tables[0][torch.from_numpy(data.prepared.card_node[rows[where]])]
                terminal[where] = tables[1][torch.from_numpy(data.prepared.terminal_node[rows[where]])]
        parts += [card, terminal]
    return tuple(parts)


def export_fraud_onnx(
    model: FraudNet, data: FraudEvalData, out_dir: str | Path, parity_rows: np.ndarray
) -> tuple[OnnxFraudNet, dict[str, Any]]:
    """Export the model as ``head.onnx`` (+ ``graph.onnx``) and check parity with onnxruntime.

    The export traces on the first 8 validation rows and the first validation day's graph; parity is
    checked on other shapes: ``parity_rows`` and the last validation day's graph.

    Returns:
        The runnable ONNX model and details: files, sizes, ``max_abs_diff`` per part (logits; node
        embeddings), and what was exported.
    """
    out_dir = Path(out_dir)
    head = _Head(model).eval()
    example_rows = data.val_rows[:8] if len(data.val_rows) >= 8 else np.arange(min(8, len(data.prepared)))
    axes = {name: {0: "batch"} for name in head.input_names}
    head_path = export_onnx(
        head,
        head_inputs(model, data, example_rows),
        out_dir / "head.onnx",
        head.input_names,
        ["logits"],
        axes,
    )
    details: dict[str, Any] = {
        "exported": "everything: graph.onnx (GATConv x2 both directions, scatter ops) + head.onnx"
        if model.config.use_graph
        else "everything: head.onnx",
        "files": {"head.onnx": size_bytes(head_path)},
    }
    head_runner = OnnxModule(head_path)
    diffs = {
        "head_logits": onnx_parity(
            head, head_path, head_inputs(model, data, parity_rows), head_runner.session
        )
    }
    graph_runner = None
    if model.config.use_graph:
        encoder = _GraphEncoder(model).eval()
        first = int(data.prepared.snapshot[data.val_rows[0]]) if len(data.val_rows) else 0
        last = int(data.prepared.snapshot[data.val_rows[-1]]) if len(data.val_rows) else 0
        graph_path = export_onnx(
            encoder,
            _graph_inputs(data, first),
            out_dir / "graph.onnx",
            ["x_card", "x_terminal", "edge_index", "edge_attr"],
            ["card_table", "terminal_table"],
            {
                "x_card": {0: "cards"},
                "x_terminal": {0: "terminals"},
                "edge_index": {1: "edges"},
                "edge_attr": {0: "edges"},
            },
        )
        graph_runner = OnnxModule(graph_path)
        diffs["graph_embeddings"] = onnx_parity(
            encoder, graph_path, _graph_inputs(data, last), graph_runner.session
        )
        details["files"]["graph.onnx"] = size_bytes(graph_path)
    details["max_abs_diff_parts"] = diffs
    details["max_abs_diff"] = max(diffs.values())
    return OnnxFraudNet(model.config, head_runner, graph_runner), details


# --- variants ---------------------------------------------------------------------------------------------
def prunable_types() -> tuple[type[nn.Module], ...]:
    """Linear, LSTM and torch-geometric's Linear (the GATConv projections)."""
    from torch_geometric.nn.dense.linear import Linear as PygLinear

    return (nn.Linear, nn.LSTM, PygLinear)


def make_variants(
    model: FraudNet,
    data: FraudEvalData,
    work_dir: str | Path,
    *,
    prune_amounts: tuple[float, ...] = (0.3, 0.5),
    onnx: bool = True,
    parity_rows: int = 1024,
) -> list[Variant]:
    """fp32, pruned (one per amount), int8-dynamic and ONNX forms of ``model`` (not changed).

    Args:
        model: the fp32 model.
        data: for the ONNX export's example and parity inputs.
        work_dir: where the ONNX files go.
        prune_amounts: fractions of each weight tensor to prune.
        onnx: export too.
        parity_rows: validation rows of the ONNX parity check.
    """
    model = model.eval()
    variants = [Variant("fp32", model, size_bytes(model))]
    for amount in prune_amounts:
        pruned = copy.deepcopy(model)
        report = prune(pruned, amount, prunable_types())
        variants.append(
            Variant(f"pruned-{round(amount * 100)}", pruned.eval(), size_bytes(pruned), report.to_dict())
        )
    q = quantize_dynamic_int8(model)
    variants.append(
        Variant(
            "int8-dynamic",
            q,
            size_bytes(q),
            {
                "quantised": "nn.Linear, nn.LSTM",
                "fp32": "GATConv projections (torch-geometric Linear), attention, norms",
            },
        )
    )
    if onnx:
        onnx_model, details = export_fraud_onnx(model, data, work_dir, data.val_rows[:parity_rows])
        variants.append(Variant("onnx", onnx_model, sum(details["files"].values()), details))
        variants.append(onnx_int8_variant(onnx_model, work_dir))
    return variants


def onnx_int8_variant(onnx_model: OnnxFraudNet, work_dir: str | Path) -> Variant:
    """``onnx-int8``: both ONNX parts through onnxruntime's dynamic int8 quantisation."""
    head = OnnxModule(quantize_onnx_int8(onnx_model.head.path, Path(work_dir) / "head-int8.onnx"))
    graph = None
    files = {"head-int8.onnx": size_bytes(head.path)}
    if onnx_model.graph is not None:
        graph = OnnxModule(quantize_onnx_int8(onnx_model.graph.path, Path(work_dir) / "graph-int8.onnx"))
        files["graph-int8.onnx"] = size_bytes(graph.path)
    details = {
        "quantised": "onnxruntime quantize_dynamic (QInt8 weights) of head.onnx and graph.onnx",
        "files": files,
    }
    return Variant("onnx-int8", OnnxFraudNet(onnx_model.config, head, graph), sum(files.values()), details)


def load_shipped(model_dir: str | Path | None = None) -> tuple[FraudNet, dict[str, Any]]:
    """The shipped fraud model (or the one in ``model_dir``) and its card."""
    return load_model(model_dir)
