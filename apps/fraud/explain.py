"""Why an alert fired: integrated-gradients attributions plus the graph neighbours the GNN attended to.

``attributions`` runs captum's ``IntegratedGradients`` on ``FraudNet``'s logit with respect to its
inputs, against a baseline that means "nothing unusual":

- the standardised tabular input against zeros (= the training mean of every feature);
- the card sequence against zero padding (no history);
- the card and terminal embeddings against the embedding of the snapshot's "unseen" node (zeros
  when none is given).

Completeness holds: the attributions of a row add up to ``logit - baseline_logit`` up to captum's
``convergence_delta``. ``graph_neighbours`` reads the last graph layer's attention: which terminals
shaped the card's embedding, and which cards the terminal's. ``explain_rows`` does both for alert
rows of a ``Prepared`` batch (each day graph embedded once) and returns JSON-ready dicts, which
``summary`` turns into one line of text::

    prepared = prepare(df, snapshots=True)
    explanations = explain_rows(model, prepared, alert_rows, top_features=5)
    json.dumps(explanations[0])   # stored in the alert's ``explanation`` column
    print(summary(explanations[0]))
    # logit 1.20 vs baseline -4.10: amount 912.00 (+2.31), terminal_risk_30d 0.67 (+1.10), ...;
    # sequence +0.40, card graph ...; graph: card C00012 used 4 terminal(s) in 30d, ...

Shapes: features ``(B, len(FEATURE_NAMES))`` raw, sequences ``(B, SEQ_LEN, len(STEP_NAMES))``,
embeddings ``(B, gnn_hidden)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients

from apps.fraud.batch import Prepared
from apps.fraud.features import FEATURE_NAMES, SEQ_LEN, STEP_NAMES
from apps.fraud.graph import TERMINAL_NODE_NAMES, GraphSnapshot
from apps.fraud.model import FraudNet, GraphTensors, load_rows

RISK_30D = TERMINAL_NODE_NAMES.index("risk_30d")
EDGE_AGE_DAYS = 30.0  # edge_attr is the age of the card's last use of the terminal in units of 30 days


def _device(model: FraudNet) -> torch.device:
    return next(model.parameters()).device


def _check_inputs(
    model: FraudNet,
    features: torch.Tensor,
    sequences: torch.Tensor | None,
    card_emb: torch.Tensor | None,
    terminal_emb: torch.Tensor | None,
) -> None:
    n = len(FEATURE_NAMES)
    if features.dim() != 2 or features.shape[1] != n:
        raise ValueError(f"features must be (B, {n}) raw features, got {tuple(features.shape)}")
    b = features.shape[0]
    if model.config.use_sequence:
        want = (b, SEQ_LEN, len(STEP_NAMES))
        if sequences is None or tuple(sequences.shape) != want:
            got = None if sequences is None else tuple(sequences.shape)
            raise ValueError(f"sequences must be {want} (B, SEQ_LEN, len(STEP_NAMES)), got {got}")
    if model.config.use_graph:
        want = (b, model.config.gnn_hidden)
        for name, emb in (("card_emb", card_emb), ("terminal_emb", terminal_emb)):
            if emb is None or tuple(emb.shape) != want:
                got = None if emb is None else tuple(emb.shape)
                raise ValueError(f"{name} must be {want} (B, gnn_hidden) for a graph model, got {got}")


def _baseline_emb(baseline: torch.Tensor | None, like: torch.Tensor, name: str) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(like)
    baseline = baseline.to(like)
    if baseline.dim() == 1:
        baseline = baseline.unsqueeze(0)
    if baseline.shape[-1] != like.shape[-1] or baseline.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"{name} must be ({like.shape[-1]},) or {tuple(like.shape)}, got {tuple(baseline.shape)}"
        )
    return baseline.expand_as(like).contiguous()


def attributions(
    model: FraudNet,
    features: torch.Tensor,
    sequences: torch.Tensor | None = None,
    card_emb: torch.Tensor | None = None,
    terminal_emb: torch.Tensor | None = None,
    *,
    n_steps: int = 32,
    card_baseline: torch.Tensor | None = None,
    terminal_baseline: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Integrated-gradients attributions of each row's logit.

    Args:
        model: a ``FraudNet`` (run in eval mode; its training flag is restored).
        features: ``(B, len(FEATURE_NAMES))`` raw features.
        sequences: ``(B, SEQ_LEN, len(STEP_NAMES))``; needed when ``use_sequence``, else ignored.
        card_emb, terminal_emb: ``(B, gnn_hidden)`` rows of ``embed_graph``; needed when
            ``use_graph``, else ignored.
        n_steps: integration steps (more: smaller ``convergence_delta``).
        card_baseline, terminal_baseline: ``(gnn_hidden,)`` or ``(B, gnn_hidden)``, the embedding of
            the snapshot's unseen card / terminal; zeros when not given.

    Returns:
        One dict per row: ``logit``, ``baseline_logit``, ``features`` (all of ``FEATURE_NAMES`` as
        ``{"name", "value", "attribution"}``, largest ``|attribution|`` first), ``sequence``,
        ``card_graph``, ``terminal_graph`` (summed attributions; ``None`` for a branch the model
        lacks) and ``convergence_delta`` (``sum of attributions - (logit - baseline_logit)``).

    Raises:
        ValueError: an input of the wrong shape, or one the model needs is missing.
    """
    features = torch.as_tensor(features)
    _check_inputs(model, features, sequences, card_emb, terminal_emb)
    cfg, device = model.config, _device(model)
    inputs = [model.normalise(features.detach().to(device))]  # (B, F), the training mean is 0
    baselines = [torch.zeros_like(inputs[0])]
    if cfg.use_sequence:
        inputs.append(sequences.detach().to(device=device, dtype=torch.float32))  # (B, L, S)
        baselines.append(torch.zeros_like(inputs[-1]))  # all padding: no history
    if cfg.use_graph:
        card = card_emb.detach().to(device=device, dtype=torch.float32)  # (B, G)
        terminal = terminal_emb.detach().to(device=device, dtype=torch.float32)
        inputs += [card, terminal]
        baselines += [
            _baseline_emb(card_baseline, card, "card_baseline"),
            _baseline_emb(terminal_baseline, terminal, "terminal_baseline"),
        ]

    def logit(*args: torch.Tensor) -> torch.Tensor:
        x, rest = args[0], list(args[1:])
        seq = rest.pop(0) if cfg.use_sequence else None
        c, t = (rest[0], rest[1]) if cfg.use_graph else (None, None)
        return model(x, seq, c, t, normalised=True)

    was_training = model.training
    model.eval()
    try:
        # cuDNN's LSTM backward needs training mode; the gradients are the same without cuDNN
        with torch.backends.cudnn.flags(enabled=False):
            attr, delta = IntegratedGradients(logit).attribute(
                tuple(inputs), baselines=tuple(baselines), n_steps=n_steps, return_convergence_delta=True
            )
        with torch.no_grad():
            logits = logit(*inputs)
            base_logits = logit(*baselines)
    finally:
        model.train(was_training)

    raw = features.detach().cpu().double().numpy()
    tab = attr[0].detach().cpu().double().numpy()  # (B, F)
    rest = [a.detach().cpu().double().flatten(1).sum(1).numpy() for a in attr[1:]]  # each (B,)
    seq_sum = rest.pop(0) if cfg.use_sequence else None
    card_sum, term_sum = (rest[0], rest[1]) if cfg.use_graph else (None, None)
    out = []
    for i in range(len(raw)):
        order = np.argsort(-np.abs(tab[i]), kind="stable")
        out.append(
            {
                "logit": float(logits[i]),
                "baseline_logit": float(base_logits[i]),
                "features": [
                    {"name": FEATURE_NAMES[j], "value": float(raw[i, j]), "attribution": float(tab[i, j])}
                    for j in order
                ],
                "sequence": None if seq_sum is None else float(seq_sum[i]),
                "card_graph": None if card_sum is None else float(card_sum[i]),
                "terminal_graph": None if term_sum is None else float(term_sum[i]),
                "convergence_delta": float(delta[i]),
            }
        )
    return out


def _neighbours(
    snapshot: GraphSnapshot,
    alpha: tuple[torch.Tensor, torch.Tensor],
    card_node: int,
    terminal_node: int,
    card_id: str | None,
    terminal_id: str | None,
    top: int,
) -> dict[str, Any]:
    """``graph_neighbours`` from node rows and the last layer's attention ``(E, heads)`` pair."""
    to_card = alpha[0].detach().float().mean(1).cpu().numpy()  # (E,) terminal -> card
    to_terminal = alpha[1].detach().float().mean(1).cpu().numpy()  # (E,) card -> terminal
    cards, terminals = snapshot.edge_index
    days = snapshot.edge_attr[:, 0] * EDGE_AGE_DAYS
    card_known = 0 <= card_node < len(snapshot.card_ids)
    terminal_known = 0 <= terminal_node < len(snapshot.terminal_ids)
    card_edges = np.flatnonzero(cards == card_node) if card_known else np.zeros(0, dtype=np.int64)
    terminal_edges = (
        np.flatnonzero(terminals == terminal_node) if terminal_known else np.zeros(0, dtype=np.int64)
    )
    card_edges = card_edges[np.argsort(-to_card[card_edges], kind="stable")][:top]
    terminal_edges = terminal_edges[np.argsort(-to_terminal[terminal_edges], kind="stable")][:top]
    return {
        "card": card_id,
        "terminal": terminal_id,
        "card_known": bool(card_known),
        "terminal_known": bool(terminal_known),
        "card_degree": int((cards == card_node).sum()) if card_known else 0,
        "terminal_degree": int((terminals == terminal_node).sum()) if terminal_known else 0,
        "card_terminals": [
            {
                "terminal_id": snapshot.terminal_ids[terminals[e]],
                "attention": float(to_card[e]),
                "risk_30d": float(snapshot.x_terminal[terminals[e], RISK_30D]),
                "days_since_use": float(days[e]),
            }
            for e in card_edges
        ],
        "terminal_cards": [
            {
                "card_id": snapshot.card_ids[cards[e]],
                "attention": float(to_terminal[e]),
                "days_since_use": float(days[e]),
            }
            for e in terminal_edges
        ],
    }


@torch.no_grad()
def _embed(model: FraudNet, graph: GraphTensors):
    was_training = model.training
    model.eval()
    try:
        return model.embed_graph(graph, attention=True)
    finally:
        model.train(was_training)


def graph_neighbours(
    model: FraudNet,
    snapshot: GraphSnapshot,
    card_id: str,
    terminal_id: str,
    *,
    top: int = 5,
    graph: GraphTensors | None = None,
    alpha: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The card's terminals and the terminal's cards that the last graph layer attended to most.

    Args:
        model: a ``FraudNet`` built with ``use_graph``.
        snapshot: the day graph the transaction was scored against.
        card_id, terminal_id: the transaction's card and terminal.
        top: neighbours kept on each side.
        graph: ``snapshot`` as tensors, when already built.
        alpha: the attention pair of ``model.embed_graph(graph, attention=True)``, when already
            computed (a live scorer embeds each day graph once).

    Returns:
        ``{"card", "terminal", "card_known", "terminal_known", "card_degree", "terminal_degree",
        "card_terminals": [{"terminal_id", "attention", "risk_30d", "days_since_use"}],
        "terminal_cards": [{"card_id", "attention", "days_since_use"}]}``, highest attention (mean
        over heads) first. A card or terminal not in the snapshot has no neighbours and
        ``known=False``; degrees count all its edges, not just the ``top``.
    """
    if not model.config.use_graph:
        raise ValueError("this model was built with use_graph=False: it has no graph neighbours")
    if alpha is None:
        graph = graph if graph is not None else GraphTensors.from_snapshot(snapshot, _device(model))
        _, _, alpha = _embed(model, graph)
    card_node = snapshot.card_index.get(card_id, snapshot.unseen_card)
    terminal_node = snapshot.terminal_index.get(terminal_id, snapshot.unseen_terminal)
    return _neighbours(snapshot, alpha, card_node, terminal_node, card_id, terminal_id, top)


def explain_rows(
    model: FraudNet,
    prepared: Prepared,
    rows: np.ndarray,
    *,
    top_features: int = 5,
    top_neighbours: int = 5,
    n_steps: int = 32,
    chunk: int = 256,
) -> list[dict[str, Any]]:
    """JSON-ready explanations of ``rows`` of ``prepared`` (e.g. the alerts of a batch), in order.

    Args:
        model: a ``FraudNet``.
        prepared: the batch, with snapshots when the model uses the graph.
        rows: ``(n,)`` row indices into ``prepared``.
        top_features: features kept per row (by ``|attribution|``).
        top_neighbours: graph neighbours kept on each side.
        n_steps: integration steps.
        chunk: rows per integrated-gradients call (memory grows with ``chunk * n_steps``).

    Returns:
        Per row ``{"transaction_row", "logit", "baseline_logit", "convergence_delta",
        "top_features": [{"name", "value", "attribution"}], "sequence", "card_graph",
        "terminal_graph", "neighbours"}``; the branches a model lacks are ``None``. A card or
        terminal not in its snapshot has ``None`` as its id in ``neighbours``.

    Raises:
        ValueError: the model uses the graph but ``prepared`` has no snapshots.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    device, use_graph = _device(model), model.config.use_graph
    if use_graph:
        if len(rows) and (prepared.snapshot[rows] < 0).any():
            raise ValueError("the model uses the card-terminal graph: prepare(..., snapshots=True)")
        groups = prepared.snapshot[rows]
    else:
        groups = np.zeros(len(rows), dtype=np.int32)
    out: list[dict[str, Any] | None] = [None] * len(rows)
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        snap = prepared.snapshots[g] if use_graph else None
        if use_graph:
            card_table, terminal_table, alpha = _embed(model, GraphTensors.from_snapshot(snap, device))
        for start in range(0, len(where), chunk):
            pos = where[start : start + chunk]
            r = rows[pos]
            features, sequences = load_rows(prepared, r, device)
            kwargs: dict[str, Any] = {"n_steps": n_steps}
            card = terminal = None
            if use_graph:
                card = card_table[torch.from_numpy(prepared.card_node[r]).to(device)]
                terminal = terminal_table[torch.from_numpy(prepared.terminal_node[r]).to(device)]
                kwargs.update(
                    card_baseline=card_table[snap.unseen_card],
                    terminal_baseline=terminal_table[snap.unseen_terminal],
                )
            for p, row, a in zip(
                pos, r, attributions(model, features, sequences, card, terminal, **kwargs), strict=True
            ):
                neighbours = None
                if use_graph:
                    c, t = int(prepared.card_node[row]), int(prepared.terminal_node[row])
                    card_id = snap.card_ids[c] if c < len(snap.card_ids) else None
                    terminal_id = snap.terminal_ids[t] if t < len(snap.terminal_ids) else None
                    neighbours = _neighbours(snap, alpha, c, t, card_id, terminal_id, top_neighbours)
                out[p] = {
                    "transaction_row": int(row),
                    "logit": a["logit"],
                    "baseline_logit": a["baseline_logit"],
                    "convergence_delta": a["convergence_delta"],
                    "top_features": a["features"][:top_features],
                    "sequence": a["sequence"],
                    "card_graph": a["card_graph"],
                    "terminal_graph": a["terminal_graph"],
                    "neighbours": neighbours,
                }
    return out  # type: ignore[return-value]


def summary(explanation: dict[str, Any], *, top: int = 3) -> str:
    """One line of text for an ``explain_rows`` (or ``attributions``) dict: only what its numbers say."""
    feats = explanation.get("top_features") or explanation.get("features") or []
    parts = [", ".join(f"{f['name']} {f['value']:.2f} ({f['attribution']:+.2f})" for f in feats[:top])]
    if explanation.get("logit") is not None:
        parts[0] = (
            f"logit {explanation['logit']:.2f} vs baseline {explanation['baseline_logit']:.2f}: " + parts[0]
        )
    branches = [
        f"{label} {explanation[key]:+.2f}"
        for key, label in (
            ("sequence", "sequence"),
            ("card_graph", "card graph"),
            ("terminal_graph", "terminal graph"),
        )
        if explanation.get(key) is not None
    ]
    if branches:
        parts.append(", ".join(branches))
    nb = explanation.get("neighbours")
    if nb:
        graph = []
        if nb["card_known"]:
            text = f"card {nb['card']} used {nb['card_degree']} terminal(s) in 30d"
            if nb["card_terminals"]:
                t = nb["card_terminals"][0]
                text += (
                    f", most attended {t['terminal_id']} (attention {t['attention']:.2f}, "
                    f"risk_30d {t['risk_30d']:.2f}, {t['days_since_use']:.1f} days ago)"
                )
            graph.append(text)
        else:
            graph.append("card not in the graph")
        if nb["terminal_known"]:
            graph.append(f"terminal {nb['terminal']} used by {nb['terminal_degree']} card(s) in 30d")
        else:
            graph.append("terminal not in the graph")
        parts.append("graph: " + "; ".join(graph))
    return "; ".join(p for p in parts if p)
