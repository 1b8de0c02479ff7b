from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from apps.fraud.batch import prepare
from apps.fraud.evaluate import card_precision_at_k, metrics, split_windows
from apps.fraud.features import FEATURE_NAMES, SEQ_LEN, STEP_NAMES, FeatureState
from apps.fraud.model import FraudModelConfig, FraudNet, GraphTensors, score_prepared
from apps.fraud.train import FraudTrainConfig, alert_threshold, load_model, train
from core.training import read_card
from tests.apps.fraud.conftest import TINY_MODEL, TINY_TRAIN


def test_prepare_sequences_are_the_cards_past(fraud_df: pd.DataFrame) -> None:
    prepared = prepare(fraud_df)
    seqs = prepared.sequences()
    assert seqs.shape == (len(fraud_df), SEQ_LEN, len(STEP_NAMES))
    present = STEP_NAMES.index("present")
    # the last step is the transaction itself; padding only on the left
    np.testing.assert_allclose(seqs[:, -1, 0], np.log1p(fraud_df["amount"].to_numpy()), rtol=1e-6)
    assert (np.diff(seqs[:, :, present], axis=1) >= 0).all()
    # step k of a row's sequence is the card's k-th previous transaction
    for _card, group in fraud_df.groupby("customer_id"):
        rows = group.index.to_numpy()  # fraud_df is sorted by time
        for j, row in enumerate(rows[:20]):
            n_real = int(seqs[row, :, present].sum())
            assert n_real == min(j + 1, SEQ_LEN)
            past = np.log1p(fraud_df.loc[rows[max(0, j + 1 - SEQ_LEN) : j + 1], "amount"].to_numpy())
            np.testing.assert_allclose(seqs[row, SEQ_LEN - n_real :, 0], past, rtol=1e-6)


def test_prepare_continues_a_state_like_one_pass(fraud_df: pd.DataFrame) -> None:
    whole = prepare(fraud_df, snapshots=True)
    cut = len(fraud_df) // 2
    state = FeatureState()
    prepare(fraud_df.iloc[:cut], state)
    second = prepare(fraud_df.iloc[cut:], state, snapshots=True)
    np.testing.assert_array_equal(whole.features[cut:], second.features)
    np.testing.assert_array_equal(whole.sequences(np.arange(cut, len(fraud_df))), second.sequences())
    last_whole, last_second = whole.snapshots[-1], second.snapshots[-1]
    np.testing.assert_array_equal(last_whole.edge_index, last_second.edge_index)
    np.testing.assert_array_equal(last_whole.x_terminal, last_second.x_terminal)


def test_graph_snapshot_has_no_future(fraud_df: pd.DataFrame) -> None:
    """A day's graph is the same whatever happens on and after that day (no leakage)."""
    prepared = prepare(fraud_df, snapshots=True)
    day = 15
    snap = prepared.snapshots[day]
    changed = fraud_df.copy()
    later = pd.to_datetime(changed["timestamp"], utc=True) >= pd.Timestamp(snap.time, unit="s", tz="UTC")
    changed.loc[later, "terminal_id"] = "T-NEW"
    changed.loc[later, "label"] = ~changed.loc[later, "label"].astype(bool)
    other = prepare(changed, snapshots=True).snapshots[day]
    assert other.time == snap.time
    np.testing.assert_array_equal(other.edge_index, snap.edge_index)
    np.testing.assert_array_equal(other.x_card, snap.x_card)
    np.testing.assert_array_equal(other.x_terminal, snap.x_terminal)
    # every edge is a card-terminal pair seen before the snapshot
    before = fraud_df[~later]
    pairs = set(zip(before["customer_id"], before["terminal_id"], strict=True))
    for c, t in snap.edge_index.T:
        assert (snap.card_ids[c], snap.terminal_ids[t]) in pairs
    data = GraphTensors.from_snapshot(snap).to_hetero()
    data.validate()


def test_model_shapes_and_errors() -> None:
    model = FraudNet(TINY_MODEL)
    b = 5
    x = torch.rand(b, len(FEATURE_NAMES))
    seq = torch.rand(b, SEQ_LEN, len(STEP_NAMES))
    emb = torch.rand(b, TINY_MODEL.gnn_hidden)
    assert model(x, seq, emb, emb).shape == (b,)
    with pytest.raises(ValueError, match="features must be"):
        model(x[:, :3], seq, emb, emb)
    with pytest.raises(ValueError, match="sequences must be"):
        model(x, seq[:, :4], emb, emb)
    with pytest.raises(ValueError, match="embeddings"):
        model(x, seq)
    with pytest.raises(ValueError, match="multiple of gnn_heads"):
        FraudModelConfig(gnn_hidden=10, gnn_heads=3)
    plain = FraudNet(FraudModelConfig(use_graph=False, use_sequence=False, hidden=8))
    assert plain(x).shape == (b,)


def test_train_saves_a_loadable_model_with_card(fraud_df: pd.DataFrame, tiny_model_dir) -> None:
    card = read_card(tiny_model_dir)
    assert card["name"] == "fathom-fraud-detector"
    assert card["feature_names"] == list(FEATURE_NAMES)
    assert 0.0 <= card["alert_threshold"] <= 1.0
    assert set(card["metrics"]["val"]) >= {"auc_roc", "average_precision", "card_precision_at_100"}
    model, _ = load_model(tiny_model_dir)
    assert math.isclose(float(model.logit_offset), math.log(TINY_TRAIN.neg_rate), rel_tol=1e-6)
    prepared = prepare(fraud_df, snapshots=True)
    scores = score_prepared(model, prepared)
    assert scores.shape == (len(fraud_df),) and np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    json.dumps(card)


def test_model_learns_simulated_fraud() -> None:
    """Trained a little longer, the model ranks frauds well above chance on held-out days."""
    from apps.fraud.simulate import simulate

    df = simulate(n_customers=150, n_terminals=200, days=45, seed=5, fraud_rate=0.02)
    cfg = FraudTrainConfig(epochs=6, warmup_days=10, delay_days=2, val_days=10, lr=5e-3, baselines=True)
    report = train(df, cfg, FraudModelConfig(hidden=32, seq_hidden=16, gnn_hidden=16))
    base_rate = report.val["n_fraud"] / report.val["n_transactions"]
    assert report.val["auc_roc"] > 0.85
    assert report.val["average_precision"] > 5 * base_rate
    assert set(report.baselines) == {"logistic_regression", "random_forest", "xgboost"}
    assert [r["impl"] for r in report.quality_table()][0] == "fathom"
    assert report.history and report.history[0]["epoch"] == 0


def test_train_refuses_bad_data(fraud_df: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="label"):
        train(fraud_df.assign(label=None), TINY_TRAIN, TINY_MODEL)
    with pytest.raises(ValueError, match="spans"):
        train(fraud_df, FraudTrainConfig(warmup_days=20, val_days=20), TINY_MODEL)
    with pytest.raises(ValueError, match="neg_rate"):
        FraudTrainConfig(neg_rate=0)


def test_load_model_refuses_other_checkpoints(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_card.json").write_text(json.dumps({**card, "feature_names": ["x"]}))
    with pytest.raises(ValueError, match="other features"):
        load_model(other)


def test_metrics_known_values() -> None:
    day = 86_400.0
    times = np.array([0, 10, 20, day, day + 1, day + 2], dtype=float)
    cards = np.array(["a", "a", "b", "a", "b", "c"])
    labels = np.array([0, 1, 0, 0, 0, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.8, 0.7])
    out = metrics(labels, scores, times, cards, k=1)
    # day 0: top card a (max 0.9) had a fraud -> 1; day 1: top card b (0.8) had none -> 0
    assert out["card_precision_at_1"] == 0.5
    assert out["n_transactions"] == 6 and out["n_fraud"] == 2
    assert 0.0 <= out["auc_roc"] <= 1.0
    assert card_precision_at_k(scores, labels.astype(bool), np.floor(times / day), cards, k=2) == 0.5
    assert math.isnan(metrics(np.zeros(3), np.zeros(3), np.zeros(3), np.array(["a"] * 3))["auc_roc"])


def test_split_windows_follow_the_protocol() -> None:
    day = 86_400.0
    times = np.arange(40) * day + 5.0
    train_mask, test_mask = split_windows(times, warmup_days=10, delay_days=7, test_days=5)
    assert np.flatnonzero(train_mask).tolist() == list(range(10, 28))
    assert np.flatnonzero(test_mask).tolist() == list(range(35, 40))
    with pytest.raises(ValueError, match="need at least"):
        split_windows(times[:20], warmup_days=10, delay_days=7, test_days=5)


def test_alert_threshold_maximises_f1() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.9])
    assert alert_threshold(labels, scores) == pytest.approx(0.7)
    assert alert_threshold(np.zeros(3), np.zeros(3)) == 0.5
