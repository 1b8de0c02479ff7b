from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apps.fraud.simulate import COLUMNS, TYPOLOGIES, simulate
from connectors.streams.schema import parse_transaction


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return simulate(n_customers=60, n_terminals=120, days=40, seed=3, fraud_rate=0.03)


def test_deterministic_by_seed() -> None:
    a = simulate(n_customers=20, n_terminals=30, days=10, seed=7, fraud_rate=0.05)
    b = simulate(n_customers=20, n_terminals=30, days=10, seed=7, fraud_rate=0.05)
    pd.testing.assert_frame_equal(a, b)
    c = simulate(n_customers=20, n_terminals=30, days=10, seed=8, fraud_rate=0.05)
    assert not a["amount"].equals(c["amount"])


def test_canonical_schema_sorted(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == COLUMNS
    assert df["timestamp"].is_monotonic_increasing
    assert str(df["timestamp"].dt.tz) == "UTC"
    assert df["transaction_id"].is_unique
    assert (df["label"] == (df["fraud_type"] != "genuine")).all()
    for row in df.sample(40, random_state=0).to_dict("records"):
        tx = parse_transaction({k: v for k, v in row.items() if k != "fraud_type"}, unknown="forbid")
        assert tx.amount == row["amount"]


def test_every_typology_and_rate(df: pd.DataFrame) -> None:
    counts = df["fraud_type"].value_counts()
    for name in TYPOLOGIES:
        assert counts.get(name, 0) > 0, name
    assert 0.015 < df["label"].mean() < 0.08


def test_rhythms(df: pd.DataFrame) -> None:
    genuine = df[~df["label"]]
    hours = genuine["timestamp"].dt.hour
    assert (hours.between(9, 18)).mean() > 0.6  # mostly daytime
    per_day = genuine.groupby(genuine["timestamp"].dt.date).size()
    weekday = pd.to_datetime(pd.Series(per_day.index)).dt.weekday.to_numpy()
    assert per_day.to_numpy()[weekday == 5].mean() > per_day.to_numpy()[weekday == 6].mean()  # Sat > Sun


def _genuine_median(df: pd.DataFrame) -> pd.Series:
    return df[~df["label"]].groupby("customer_id")["amount"].median()


def test_card_testing_pattern(df: pd.DataFrame) -> None:
    ct = df[df["fraud_type"] == "card_testing"]
    tiny = ct["amount"] <= 2.0
    assert tiny.mean() > 0.6
    assert ct["amount"].max() > 250
    assert (ct["channel"] == "ecom").all()
    for card, group in ct.groupby("customer_id"):
        before = df[(df["customer_id"] == card) & ~df["label"]]
        assert not set(group["terminal_id"]) & set(before["terminal_id"])  # terminals new to the card


def test_compromised_terminal_concentrated(df: pd.DataFrame) -> None:
    ct = df[df["fraud_type"] == "compromised_terminal"]
    assert ct["terminal_id"].nunique() <= max(1, len(ct) // 3)
    # while a terminal is compromised, every transaction there is fraud
    for terminal, group in ct.groupby("terminal_id"):
        during = df[
            (df["terminal_id"] == terminal)
            & df["timestamp"].between(group["timestamp"].min(), group["timestamp"].max())
            & (df["fraud_type"] != "unusual_amount")
        ]
        assert during["label"].all()


def test_takeover_unusual_and_mules(df: pd.DataFrame) -> None:
    median = _genuine_median(df)
    ato = df[df["fraud_type"] == "account_takeover"]
    assert (ato["channel"] == "ecom").all()
    assert (ato["amount"] > 3 * ato["customer_id"].map(median)).all()
    unusual = df[df["fraud_type"] == "unusual_amount"]
    assert (unusual["amount"] > 2.5 * unusual["customer_id"].map(median)).all()
    mules = df[df["fraud_type"] == "mule_ring"]
    assert (mules["channel"] == "atm").all()
    assert np.allclose(mules["amount"] % 50, 0)
    assert mules["customer_id"].nunique() >= 4
    assert mules["terminal_id"].nunique() < mules["customer_id"].nunique()  # cards share terminals


def test_no_fraud_when_rate_zero() -> None:
    assert not simulate(n_customers=10, n_terminals=10, days=3, fraud_rate=0.0)["label"].any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_customers": 5}, "n_customers"),
        ({"days": 1}, "days"),
        ({"fraud_rate": 0.7}, "fraud_rate"),
        ({"typology_weights": {"phishing": 1.0}}, "phishing"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate(**kwargs)
