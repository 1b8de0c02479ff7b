from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.fraud.batch import prepare
from apps.fraud.explain import attributions, explain_rows, graph_neighbours, summary
from apps.fraud.features import FEATURE_NAMES, SEQ_LEN, STEP_NAMES
from apps.fraud.graph import TERMINAL_NODE_NAMES
from apps.fraud.model import FraudModelConfig, FraudNet, GraphTensors, load_rows
from apps.fraud.simulate import simulate


def _tiny(**kwargs) -> FraudModelConfig:
    return FraudModelConfig(hidden=8, seq_hidden=4, gnn_hidden=4, gnn_layers=1, gnn_heads=2, **kwargs)


@pytest.fixture(scope="module")
def prepared():
    df = simulate(n_customers=12, n_terminals=15, days=6, seed=3, fraud_rate=0.05)
    return prepare(df, snapshots=True)


def _model(prepared, **kwargs) -> FraudNet:
    torch.manual_seed(0)
    model = FraudNet(_tiny(**kwargs))
    model.fit_normalisation(prepared.features)
    return model


@pytest.fixture(scope="module")
def model(prepared) -> FraudNet:
    return _model(prepared)


def _inputs(model: FraudNet, prepared, rows: np.ndarray):
    """Features, sequences, embeddings and unseen-node baselines of ``rows`` (all in one snapshot)."""
    snap = prepared.snapshots[int(prepared.snapshot[rows[0]])]
    with torch.no_grad():
        cards, terminals = model.embed_graph(GraphTensors.from_snapshot(snap))
    features, sequences = load_rows(prepared, rows)
    card = cards[torch.from_numpy(prepared.card_node[rows])]
    terminal = terminals[torch.from_numpy(prepared.terminal_node[rows])]
    return features, sequences, card, terminal, cards[snap.unseen_card], terminals[snap.unseen_terminal]


def _last_day_rows(prepared, n: int = 6) -> np.ndarray:
    return np.flatnonzero(prepared.snapshot == len(prepared.snapshots) - 1)[:n]


def test_completeness_and_logits(model: FraudNet, prepared) -> None:
    rows = _last_day_rows(prepared)
    features, sequences, card, terminal, card0, terminal0 = _inputs(model, prepared, rows)
    out = attributions(
        model,
        features,
        sequences,
        card,
        terminal,
        n_steps=64,
        card_baseline=card0,
        terminal_baseline=terminal0,
    )
    model.eval()
    with torch.no_grad():
        logits = model(features, sequences, card, terminal)
        zero = torch.zeros(len(rows), SEQ_LEN, len(STEP_NAMES))
        baseline = model(
            torch.zeros_like(features),
            zero,
            card0.expand_as(card),
            terminal0.expand_as(terminal),
            normalised=True,
        )
    assert len(out) == len(rows)
    for i, a in enumerate(out):
        assert a["logit"] == pytest.approx(float(logits[i]), abs=1e-5)
        assert a["baseline_logit"] == pytest.approx(float(baseline[i]), abs=1e-5)
        assert [f["name"] for f in a["features"]] != [] and len(a["features"]) == len(FEATURE_NAMES)
        assert {f["name"] for f in a["features"]} == set(FEATURE_NAMES)
        sizes = [abs(f["attribution"]) for f in a["features"]]
        assert sizes == sorted(sizes, reverse=True)
        np.testing.assert_allclose(
            [f["value"] for f in a["features"] if f["name"] == "amount"], features[i, 0]
        )
        total = sum(f["attribution"] for f in a["features"]) + a["sequence"] + a["card_graph"]
        total += a["terminal_graph"]
        gap = a["logit"] - a["baseline_logit"]
        assert total - gap == pytest.approx(a["convergence_delta"], abs=1e-4)
        assert abs(a["convergence_delta"]) < 1e-2 + 1e-2 * abs(gap)


def test_attribution_goes_to_the_one_feature_the_model_uses(prepared) -> None:
    """logit = relu(standardised terminal_risk_30d): all attribution on it, none elsewhere."""
    model = FraudNet(_tiny(use_sequence=False, use_graph=False, dropout=0.0))  # mean 0, std 1
    k = FEATURE_NAMES.index("terminal_risk_30d")
    hidden = model.config.hidden
    with torch.no_grad():
        for layer in (model.tabular[0], model.tabular[2], model.head[0], model.head[3]):
            layer.weight.zero_()
            layer.bias.zero_()
        model.tabular[0].weight[0, k] = 1.0
        model.tabular[2].weight.copy_(torch.eye(hidden))
        model.head[0].weight.copy_(torch.eye(hidden))
        model.head[3].weight[0, 0] = 1.0
    features = torch.zeros(2, len(FEATURE_NAMES))
    features[:, 0] = 500.0  # a large amount the model ignores
    features[:, k] = torch.tensor([0.8, 0.3])
    out = attributions(model, features, n_steps=16)
    for a, risk in zip(out, (0.8, 0.3), strict=True):
        top = a["features"][0]
        assert top["name"] == "terminal_risk_30d" and top["value"] == pytest.approx(risk)
        assert top["attribution"] == pytest.approx(risk, abs=1e-5)
        assert a["logit"] - a["baseline_logit"] == pytest.approx(risk, abs=1e-5)
        assert all(f["attribution"] == 0.0 for f in a["features"][1:])
        assert a["sequence"] is None and a["card_graph"] is None and a["terminal_graph"] is None


def test_neighbours_of_a_known_card_are_its_edges_by_attention(model: FraudNet, prepared) -> None:
    snap = prepared.snapshots[-1]
    graph = GraphTensors.from_snapshot(snap)
    model.eval()
    with torch.no_grad():
        _, _, (to_card, to_terminal) = model.embed_graph(graph, attention=True)
    cards, terminals = snap.edge_index
    degree = np.bincount(cards, minlength=len(snap.card_ids))
    c = int(np.argmax(degree))
    t = int(terminals[np.flatnonzero(cards == c)[0]])
    nb = graph_neighbours(model, snap, snap.card_ids[c], snap.terminal_ids[t], top=100, graph=graph)
    assert nb["card_known"] and nb["terminal_known"]
    assert (nb["card"], nb["terminal"]) == (snap.card_ids[c], snap.terminal_ids[t])

    edges = np.flatnonzero(cards == c)
    expect = {snap.terminal_ids[terminals[e]]: float(to_card[e].mean()) for e in edges}
    got = {n["terminal_id"]: n["attention"] for n in nb["card_terminals"]}
    assert got == pytest.approx(expect, abs=1e-6) and len(nb["card_terminals"]) == len(edges)
    attention = [n["attention"] for n in nb["card_terminals"]]
    assert attention == sorted(attention, reverse=True)
    assert sum(attention) == pytest.approx(1.0, abs=1e-5)  # softmax over the card's incoming edges
    risk = TERMINAL_NODE_NAMES.index("risk_30d")
    for n in nb["card_terminals"]:
        e = edges[[snap.terminal_ids[terminals[x]] for x in edges].index(n["terminal_id"])]
        assert n["risk_30d"] == pytest.approx(float(snap.x_terminal[terminals[e], risk]))
        assert n["days_since_use"] == pytest.approx(float(snap.edge_attr[e, 0]) * 30.0)

    t_edges = np.flatnonzero(terminals == t)
    got = {n["card_id"]: n["attention"] for n in nb["terminal_cards"]}
    assert got == pytest.approx(
        {snap.card_ids[cards[e]]: float(to_terminal[e].mean()) for e in t_edges}, abs=1e-6
    )
    assert nb["terminal_degree"] == len(t_edges) and nb["card_degree"] == len(edges)

    top2 = graph_neighbours(model, snap, snap.card_ids[c], snap.terminal_ids[t], top=2)
    assert top2["card_terminals"] == nb["card_terminals"][:2]


def test_unknown_card_and_terminal_are_not_errors(model: FraudNet, prepared) -> None:
    snap = prepared.snapshots[-1]
    nb = graph_neighbours(model, snap, "no-such-card", "no-such-terminal")
    assert nb["card_terminals"] == [] and nb["terminal_cards"] == []
    assert not nb["card_known"] and not nb["terminal_known"]
    empty = graph_neighbours(model, prepared.snapshots[0], "no-such-card", "no-such-terminal")  # no edges
    assert empty["card_terminals"] == [] and not empty["card_known"]
    with pytest.raises(ValueError, match="use_graph=False"):
        graph_neighbours(_model(prepared, use_graph=False), snap, "a", "b")


@pytest.mark.parametrize(
    "kwargs", [{}, {"use_graph": False}, {"use_sequence": False}], ids=["full", "no_graph", "no_sequence"]
)
def test_explain_rows_is_json_ready(prepared, kwargs) -> None:
    model = _model(prepared, **kwargs)
    model.train()
    last = len(prepared.snapshots) - 1
    rows = np.r_[np.flatnonzero(prepared.snapshot == last)[:2], np.flatnonzero(prepared.snapshot == 1)[:2]]
    out = explain_rows(model, prepared, rows, top_features=3, top_neighbours=2, n_steps=8)
    assert model.training  # restored
    back = json.loads(json.dumps(out))
    assert back == out and [e["transaction_row"] for e in out] == rows.tolist()
    for e in out:
        assert len(e["top_features"]) == 3
        assert (e["sequence"] is None) == (not model.config.use_sequence)
        assert (e["card_graph"] is None) == (not model.config.use_graph)
        assert (e["neighbours"] is None) == (not model.config.use_graph)
        if e["neighbours"] is not None:
            assert len(e["neighbours"]["card_terminals"]) <= 2
        line = summary(e)
        assert isinstance(line, str) and "\n" not in line and e["top_features"][0]["name"] in line
    if model.config.use_graph:
        one = explain_rows(model, prepared, rows[:1], top_features=3, top_neighbours=2, n_steps=8)
        # grouping by snapshot does not change a row
        assert one[0]["neighbours"] == out[0]["neighbours"]
        assert one[0]["logit"] == pytest.approx(out[0]["logit"], abs=1e-5)
        assert one[0]["card_graph"] == pytest.approx(out[0]["card_graph"], abs=1e-5)


def test_explain_rows_needs_snapshots_for_a_graph_model(model: FraudNet) -> None:
    df = simulate(n_customers=10, n_terminals=10, days=3, seed=1)
    with pytest.raises(ValueError, match="snapshots=True"):
        explain_rows(model, prepare(df), np.arange(2))


def test_shape_errors_are_clear(model: FraudNet, prepared) -> None:
    rows = _last_day_rows(prepared, 3)
    features, sequences, card, terminal, *_ = _inputs(model, prepared, rows)
    with pytest.raises(ValueError, match=r"features must be \(B, 20\)"):
        attributions(model, features[:, :19], sequences, card, terminal)
    with pytest.raises(ValueError, match="sequences must be"):
        attributions(model, features, sequences[:, :5], card, terminal)
    with pytest.raises(ValueError, match="sequences must be"):
        attributions(model, features, None, card, terminal)
    with pytest.raises(ValueError, match="card_emb must be"):
        attributions(model, features, sequences, card[:2], terminal)
    with pytest.raises(ValueError, match="terminal_emb must be"):
        attributions(model, features, sequences, card, None)
    with pytest.raises(ValueError, match="card_baseline must be"):
        attributions(model, features, sequences, card, terminal, card_baseline=torch.zeros(3))
