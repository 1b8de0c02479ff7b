from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from apps.fraud.batch import batch_features
from apps.fraud.features import FEATURE_NAMES, FeatureState
from apps.fraud.simulate import simulate
from connectors.streams.schema import parse_transaction

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return simulate(n_customers=25, n_terminals=30, days=25, seed=11, fraud_rate=0.05)


def _stream_rows(df: pd.DataFrame) -> list:
    """Rows as a stream delivers them: JSON-ish dicts parsed by the schema into Transactions."""
    rows = df.assign(timestamp=df["timestamp"].map(lambda t: t.isoformat()), label=df["label"].astype(int))
    return [parse_transaction(r) for r in rows.drop(columns="fraud_type").to_dict("records")]


def test_batch_equals_streaming_row_by_row(df: pd.DataFrame, tmp_path) -> None:
    batch = batch_features(df)
    assert list(batch.columns) == list(FEATURE_NAMES) and batch.shape == (len(df), len(FEATURE_NAMES))
    state = FeatureState()
    stream = []
    for i, tx in enumerate(_stream_rows(df)):
        if i == len(df) // 2:  # a restart mid-stream: save, load, continue
            state = FeatureState.load(state.save(tmp_path / "state.json"))
        stream.append(state.score_and_update(tx))
    np.testing.assert_array_equal(batch.to_numpy(), np.array(stream))


def test_late_labels_via_add_label_match_batch(df: pd.DataFrame) -> None:
    """Labels fed back 1 day after each transaction (within the 7-day delay) give batch's features."""
    state, out, queue = FeatureState(), [], []
    for tx in _stream_rows(df):
        while queue and queue[0][0] <= tx.timestamp - dt.timedelta(days=1):
            _, tid, label = queue.pop(0)
            assert state.add_label(tid, label)
        out.append(state.score_and_update(tx.model_copy(update={"label": None})))
        queue.append((tx.timestamp, tx.transaction_id, tx.label))
    np.testing.assert_array_equal(batch_features(df).to_numpy(), np.array(out))


def test_batch_accepts_any_row_order(df: pd.DataFrame) -> None:
    shuffled = df.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(batch_features(shuffled).loc[df.index], batch_features(df))


def test_no_leakage_from_future_transactions(df: pd.DataFrame) -> None:
    cut = len(df) // 2
    changed = df.copy()
    changed.loc[cut:, "amount"] = changed.loc[cut:, "amount"] * 7 + 1
    changed.loc[cut:, "label"] = ~changed.loc[cut:, "label"]
    a, b = batch_features(df), batch_features(changed)
    pd.testing.assert_frame_equal(a.iloc[:cut], b.iloc[:cut])
    assert not a.iloc[cut:].equals(b.iloc[cut:])


def test_labels_younger_than_delay_unused(df: pd.DataFrame) -> None:
    now = df["timestamp"].iloc[len(df) * 2 // 3]
    young = df["timestamp"] > now - 7 * DAY
    flipped = df.assign(label=np.where(young, ~df["label"], df["label"]))
    upto = df["timestamp"] <= now
    a, b = batch_features(df), batch_features(flipped)
    pd.testing.assert_frame_equal(a[upto], b[upto])
    # control: flipping labels older than the delay does change terminal risk
    old = df.assign(label=np.where(~young, ~df["label"], df["label"]))
    assert not batch_features(old)[upto].equals(a[upto])


def _tx(tid: str, when: str, card: str, terminal: str, amount: float, label: bool | None = None) -> dict:
    return {
        "transaction_id": tid,
        "timestamp": pd.Timestamp(when, tz="UTC"),
        "customer_id": card,
        "terminal_id": terminal,
        "amount": amount,
        "label": label,
    }


def test_known_values() -> None:
    rows = pd.DataFrame(
        [
            _tx("a", "2024-01-01 10:00", "c1", "t1", 10.0, True),
            _tx("b", "2024-01-01 12:00", "c1", "t2", 30.0, False),
            _tx("c", "2024-01-04 03:00", "c1", "t1", 50.0),
            _tx("d", "2024-01-09 11:00", "c2", "t1", 20.0),
        ]
    )
    f = batch_features(rows).set_axis(["a", "b", "c", "d"])
    assert f.loc["a", "card_n_30d"] == 0 and f.loc["a", "card_new_terminal_30d"] == 1
    assert f.loc["b", ["card_n_1d", "card_mean_amount_1d"]].tolist() == [1, 10.0]
    c = f.loc["c"]
    assert c[["card_n_1d", "card_n_7d", "card_mean_amount_7d"]].tolist() == [0, 2, 20.0]
    assert c["card_new_terminal_30d"] == 0 and c["is_night"] == 1 and c["weekday"] == 3
    assert c["card_amount_z_30d"] == pytest.approx((50 - 20) / 10)  # std of {10, 30} is 10
    assert c[["terminal_n_30d", "terminal_risk_30d"]].tolist() == [0, 0]  # label of "a" not yet known
    d = f.loc["d"]  # "a" is 8 days old: its fraud counts; "c" (5 days) does not yet
    assert d[["terminal_n_1d", "terminal_n_7d", "terminal_risk_7d", "terminal_risk_30d"]].tolist() == [
        0,
        1,
        1,
        1,
    ]
    assert d["hour_cos"] == pytest.approx(np.cos(2 * np.pi * 11 / 24))
    assert d["is_weekend"] == 0 and d["is_night"] == 0


def test_label_delay_is_configurable() -> None:
    rows = pd.DataFrame(
        [_tx("a", "2024-01-01", "c1", "t1", 1.0, True), _tx("b", "2024-01-03", "c2", "t1", 1.0)]
    )
    assert batch_features(rows, label_delay_days=1.0)["terminal_risk_7d"].iloc[1] == 1
    assert batch_features(rows)["terminal_risk_7d"].iloc[1] == 0


def test_errors() -> None:
    state = FeatureState()
    state.update(_tx("a", "2024-01-02", "c", "t", 1.0))
    with pytest.raises(ValueError, match="earlier than the last"):
        state.score(_tx("b", "2024-01-01", "c", "t", 1.0))
    with pytest.raises(ValueError, match="amount"):
        state.score(_tx("b", "2024-01-03", "c", "t", -1.0))
    with pytest.raises(ValueError, match="missing column"):
        batch_features(pd.DataFrame({"amount": [1.0]}))
    with pytest.raises(ValueError, match="label_delay_days"):
        FeatureState(label_delay_days=-1)
    assert not state.add_label("unknown", True)
    with pytest.raises(ValueError, match="format"):
        FeatureState.from_json({"format": "other"})
