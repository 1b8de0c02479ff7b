from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apps.fraud.alerts import AlertStore
from apps.fraud.service import FraudScorer, alerts_from_frame
from apps.fraud.streaming import stream
from connectors.streams.schema import parse_transaction


def _records(df: pd.DataFrame) -> list[dict]:
    rows = df.drop(columns=["fraud_type"]).assign(timestamp=df["timestamp"].map(lambda t: t.isoformat()))
    return rows.to_dict("records")


def test_batch_and_stream_give_the_same_scores(fraud_df: pd.DataFrame, tiny_model_dir: Path) -> None:
    """Training, batch and streaming share one engine: same transaction, same score."""
    cut = len(fraud_df) // 2
    history, later = fraud_df.iloc[:cut], fraud_df.iloc[cut:]
    batch = FraudScorer.load(tiny_model_dir, explain=False).score_frame(later, history=history)
    live = FraudScorer.load(tiny_model_dir, explain=False)
    live.prepare(history)  # the same history, then one transaction at a time
    streamed = [live.score_one(parse_transaction(r)).score for r in _records(later)]
    np.testing.assert_allclose(batch["score"].to_numpy(), np.array(streamed), rtol=1e-5, atol=1e-6)
    assert list(batch["transaction_id"]) == list(later["transaction_id"])
    assert batch["alert"].dtype == bool


def test_score_frame_any_order_and_alerts_with_explanations(fraud_df, tiny_model_dir, tmp_path) -> None:
    scorer = FraudScorer.load(tiny_model_dir, threshold=0.0)  # every row alerts
    part = fraud_df.iloc[:300]
    shuffled = part.sample(frac=1.0, random_state=1)
    out = scorer.score_frame(shuffled)
    ordered = FraudScorer.load(tiny_model_dir, explain=False).score_frame(part)
    np.testing.assert_allclose(out.loc[part.index, "score"], ordered["score"], rtol=1e-6)
    assert out["alert"].all()
    explanation = json.loads(out["explanation"].iloc[0])
    assert {"top_features", "neighbours"} <= set(explanation)
    store = AlertStore.open(tmp_path / "alerts.db")
    assert store.add_many(alerts_from_frame(out, scorer)) == len(part)
    assert store.add_many(alerts_from_frame(out, scorer)) == 0  # idempotent


def test_ray_engine_matches_local(fraud_df, tiny_model_dir) -> None:
    pytest.importorskip("ray")
    part = fraud_df.iloc[:400]
    local = FraudScorer.load(tiny_model_dir, explain=False).score_frame(part)
    ray_out = FraudScorer.load(tiny_model_dir, explain=False).score_frame(part, engine="ray", chunk=150)
    np.testing.assert_allclose(local["score"], ray_out["score"], rtol=1e-6)


def test_score_one_repeats_and_order(fraud_df, tiny_model_dir) -> None:
    scorer = FraudScorer.load(tiny_model_dir, explain=False)
    rows = _records(fraud_df.iloc[:50])
    first = scorer.score_one(rows[10])
    again = scorer.score_one(rows[10])
    assert again.repeated and again.score == first.score
    with pytest.raises(ValueError, match="earlier than the last one seen"):
        scorer.score_one(rows[5])
    results = scorer.score_many(list(reversed(rows[20:30])))  # sorted by time internally
    assert [r.transaction_id for r in results] == [str(r["transaction_id"]) for r in reversed(rows[20:30])]
    with pytest.raises(ValueError, match="threshold"):
        FraudScorer.load(tiny_model_dir, threshold=1.5)


def test_stream_file_to_sqlite_with_dead_letters(fraud_df, tiny_model_dir, tmp_path) -> None:
    part = fraud_df.iloc[:200].drop(columns=["fraud_type"]).copy()
    part["timestamp"] = part["timestamp"].map(lambda t: t.isoformat())
    part = part.astype({"amount": object})
    part.loc[part.index[7], "amount"] = "-5"  # invalid: dead letter, not dropped
    part.loc[part.index[9], "customer_id"] = ""
    src = tmp_path / "tx.csv"
    part.to_csv(src, index=False)
    scorer = FraudScorer.load(tiny_model_dir, threshold=0.0)
    stats = stream(
        scorer,
        f"file://{src}",
        f"sqlite:///{tmp_path / 'scores.db'}",
        alerts=tmp_path / "alerts.db",
        idle_timeout=0.5,
        state_path=tmp_path / "state.json",
    )
    assert stats.read == 200 and stats.dead_lettered == 2 and stats.scored == 198
    with sqlite3.connect(tmp_path / "scores.db") as db:
        assert db.execute("select count(*) from results").fetchone()[0] == 198
        assert db.execute("select count(*) from dead_letters").fetchone()[0] == 2
    assert AlertStore.open(tmp_path / "alerts.db").count() == 198
    assert (tmp_path / "state.json").exists()
    resumed = FraudScorer.load(tiny_model_dir, state_path=tmp_path / "state.json")
    assert resumed.state.now == scorer.state.now


@pytest.mark.integration
def test_stream_from_redis(fraud_df, tiny_model_dir, redis_url, tmp_path) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for row in _records(fraud_df.iloc[:120]):
        client.xadd("tx", {k: "" if v is None else str(v) for k, v in row.items()})
    scorer = FraudScorer.load(tiny_model_dir, threshold=0.9, explain=False)
    stats = stream(
        scorer,
        f"{redis_url}?stream=tx&group=fraud&consumer=w1",
        f"{redis_url}?hash=fraud:scores",
        alerts=tmp_path / "alerts.db",
        idle_timeout=1.0,
    )
    assert stats.read == stats.scored == 120
    assert client.hlen("fraud:scores") == 120
    value = json.loads(client.hget("fraud:scores", str(fraud_df["transaction_id"].iloc[0])))
    assert 0.0 <= value["score"] <= 1.0 and value["customer_id"] == fraud_df["customer_id"].iloc[0]


def test_score_many_is_one_forward_with_the_sequential_scores(fraud_df, tiny_model_dir) -> None:
    """A batch moves the state one transaction at a time but calls the model once, same scores."""
    rows = _records(fraud_df.iloc[:400])
    one = FraudScorer.load(tiny_model_dir, explain=False)
    expected = [one.score_one(r) for r in rows]
    many = FraudScorer.load(tiny_model_dir, explain=False)
    calls = []
    forward = many.model.forward
    many.model.forward = lambda *a, **k: calls.append(a[0].shape[0]) or forward(*a, **k)
    batch = rows[:150] + [rows[3]]  # a repeat inside the batch
    got = many.score_many(batch) + many.score_many(rows[150:])
    assert calls == [150, 250]  # one forward per batch, the repeat not re-scored
    assert got[150].repeated and got[150].score == got[3].score and not got[3].repeated
    del got[150]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in expected], rtol=1e-5, atol=1e-6)
    assert [r.transaction_id for r in got] == [r.transaction_id for r in expected]
    # alerts in a batch are explained with their own inputs and the graph of their day
    explained = FraudScorer.load(tiny_model_dir, threshold=0.0).score_many(rows[:30])
    alone = FraudScorer.load(tiny_model_dir, threshold=0.0)
    for r in rows[:29]:
        alone.score_one(r)
    last = alone.score_one(rows[29])
    assert explained[-1].explanation["top_features"] == last.explanation["top_features"]
    assert explained[-1].explanation["neighbours"] == last.explanation["neighbours"]
    # a batch with one transaction too late is refused as a whole, before the state moves
    fresh = FraudScorer.load(tiny_model_dir, explain=False, max_lateness_s=60)
    fresh.score_one(rows[200])
    now = fresh.state.now
    with pytest.raises(ValueError, match="earlier than the last one seen"):
        fresh.score_many([rows[300], rows[0], rows[301]])
    assert fresh.state.now == now
    assert not fresh.score_many([rows[300]])[0].repeated  # not scored by the refused batch


def test_slightly_late_transactions_are_scored(fraud_df, tiny_model_dir) -> None:
    """A transaction a little older than the last one (another partition) is scored, not refused."""
    scorer = FraudScorer.load(tiny_model_dir, explain=False, max_lateness_s=120)
    rows = _records(fraud_df.iloc[:20])
    scorer.score_one(rows[10])
    late = dict(rows[11])
    late["timestamp"] = (fraud_df["timestamp"].iloc[10] - pd.Timedelta(seconds=60)).isoformat()
    result = scorer.score_one(late)
    assert result.timestamp == late["timestamp"] and 0.0 <= result.score <= 1.0
    too_late = dict(rows[12])
    too_late["timestamp"] = (fraud_df["timestamp"].iloc[10] - pd.Timedelta(seconds=600)).isoformat()
    with pytest.raises(ValueError, match="earlier than the last one seen"):
        scorer.score_one(too_late)


@pytest.mark.integration
def test_stream_from_kafka(fraud_df, tiny_model_dir, tmp_path) -> None:
    """librdkafka's mock cluster. One key, so one partition: the scorer sees the records in time order."""
    ck = pytest.importorskip("confluent_kafka")

    host = ck.Producer({"test.mock.num.brokers": 1, "log_level": 3})
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in host.list_topics(timeout=10).brokers.values())
    producer = ck.Producer({"bootstrap.servers": bootstrap})
    for row in _records(fraud_df.iloc[:80]):
        producer.produce("tx", key=b"bank-1", value=json.dumps(row, default=str).encode())
    assert producer.flush(10) == 0
    scorer = FraudScorer.load(tiny_model_dir, threshold=0.0, explain=False)
    stats = stream(
        scorer,
        f"kafka://{bootstrap}?topic=tx&group=fraud&session.timeout.ms=6000",
        f"sqlite:///{tmp_path / 'scores.db'}",
        alerts=tmp_path / "alerts.db",
        idle_timeout=30.0,  # joining the consumer group takes seconds
        max_messages=80,
    )
    assert stats.read == stats.scored == 80 and stats.dead_lettered == 0
    assert AlertStore.open(tmp_path / "alerts.db").count() == 80
    host.flush(5)


def test_day_chunks_match_one_pass(fraud_df, tiny_model_dir) -> None:
    """Chunks cut at day boundaries give the one-pass scores (same graphs, same sequences)."""
    one = FraudScorer.load(tiny_model_dir, explain=False).score_frame(fraud_df, chunk=10**6)
    chunked = FraudScorer.load(tiny_model_dir, explain=False).score_frame(fraud_df, chunk=200)
    np.testing.assert_allclose(chunked["score"], one["score"], rtol=1e-6)
