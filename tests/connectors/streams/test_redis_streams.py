"""Redis Streams against a real redis-server (fixture ``redis_url`` from tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest

from connectors.streams.consumer import open_sink, open_source, run
from connectors.streams.redis_streams import RedisHashSink, RedisStreamSink, RedisStreamSource
from tests.conftest import REPO_ROOT
from tests.connectors.streams.streamdata import handbook_rows, invalid_ids, score

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str):
    import redis

    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def produce(client, stream: str, rows: list[dict[str, str]]) -> None:
    for row in rows:
        client.xadd(stream, row)


def test_group_consumer_acks_and_dead_letters(redis_url: str, client) -> None:
    rows = handbook_rows(20)
    produce(client, "tx", rows)
    client.xadd("tx", {"json": "{broken"})
    source = open_source(f"{redis_url}?stream=tx&group=fraud&consumer=w1")
    results, dead = open_sink(f"{redis_url}?hash=scores"), open_sink(f"{redis_url}?stream=tx:dead")
    assert isinstance(source, RedisStreamSource) and isinstance(dead, RedisStreamSink)

    stats = run(source, score, results, dead, max_messages=21, batch_size=8, poll_timeout=0.2)

    assert (stats.read, stats.scored, stats.dead_lettered) == (21, 18, 3)
    assert source.pending() == 0
    assert set(results.keys()) == {r["TRANSACTION_ID"] for r in rows} - invalid_ids(rows)
    reasons = [value["reason"] for _, value in dead.entries()]
    assert any("payload is not JSON" in r for r in reasons) and len(reasons) == 3
    assert source.read(10, timeout=0.1) == []  # everything was delivered once


def test_sinks_are_idempotent(redis_url: str) -> None:
    results, dead = RedisHashSink(redis_url, "h"), RedisStreamSink(redis_url, "d")
    assert results.write("t1", {"score": 1}) and not results.write("t1", {"score": 2})
    assert results.get("t1") == {"score": 1} and len(results) == 1
    assert dead.write("m1", {"reason": "x"}) and not dead.write("m1", {"reason": "y"})
    assert dead.entries() == [("m1", {"reason": "x"})]


def test_entry_deleted_while_pending_is_dead_lettered(redis_url: str, client) -> None:
    produce(client, "tx", handbook_rows(2, invalid_every=0))
    dead_consumer = RedisStreamSource(redis_url, "tx", "fraud", "gone")
    first, second = dead_consumer.read(2)
    client.xdel("tx", first.id)  # trimmed before anyone finished it
    heir = RedisStreamSource(redis_url, "tx", "fraud", "heir", claim_idle_ms=0)
    results, dead = RedisHashSink(redis_url, "h"), RedisStreamSink(redis_url, "d")

    stats = run(heir, score, results, dead, max_messages=2, poll_timeout=0.1)

    assert stats.reasons == {"lost": 1} and stats.scored == 1
    assert [k for k, _ in dead.entries()] == [first.id] and results.keys() == ["1"]
    assert heir.pending() == 0


def test_killed_consumer_loses_and_duplicates_nothing(redis_url: str, client, tmp_path) -> None:
    rows = handbook_rows(60)
    produce(client, "tx", rows)
    hang = "17"  # batch 2 holds 10..19: 10..16 acknowledged, 17 written but not acknowledged, 18, 19 pending
    source_url = f"{redis_url}?stream=tx&group=fraud&claim_idle_ms=100"
    results_url, dead_url = f"{redis_url}?hash=scores", f"{redis_url}?stream=tx:dead"
    command = [sys.executable, "-m", "tests.connectors.streams.stream_worker"]
    args = [f"{source_url}&consumer=A", results_url, dead_url, redis_url, "log", "--hang-after-write", hang]
    stderr = tmp_path / "worker.err"
    with stderr.open("wb") as err:
        worker = subprocess.Popen(command + args, cwd=REPO_ROOT, stderr=err)
    try:
        results = RedisHashSink(redis_url, "scores")
        deadline = time.monotonic() + 60  # generous: only a stuck worker takes this long
        while results.get(hang) is None:
            assert worker.poll() is None, f"worker exited early:\n{stderr.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"worker made no progress:\n{stderr.read_text()[-2000:]}"
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait(10)

    heir = open_source(f"{source_url}&consumer=B")
    assert isinstance(heir, RedisStreamSource) and heir.pending() == 3  # 17, 18, 19 left on dead A
    dead = RedisStreamSink(redis_url, "tx:dead")
    written_before = len(results) + len(dead)
    assert written_before == 18  # rows 0..16 done, plus 17's result

    def logged(tx):
        client.rpush("log", tx.transaction_id)
        return score(tx)

    stats = run(heir, logged, results, dead, max_messages=60 - 17, poll_timeout=0.2, idle_timeout=30)

    bad = invalid_ids(rows)
    assert stats.read == 43 and stats.duplicates == 1  # 17 was scored again, its write ignored
    assert heir.pending() == 0
    assert set(results.keys()) == {r["TRANSACTION_ID"] for r in rows} - bad
    assert {value["payload"]["TRANSACTION_ID"] for _, value in dead.entries()} == bad
    assert len(rows) == len(results) + len(dead)  # records in = scored + dead-lettered
    assert len(dead) == len(client.xrange("tx:dead"))
    processed = Counter(client.lrange("log", 0, -1))
    assert processed[hang] == 2 and max(processed.values()) == 2  # redelivered once, stored once
