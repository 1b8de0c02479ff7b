"""Kafka against librdkafka's built-in mock cluster (``test.mock.num.brokers``), no Java broker."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from connectors.streams.base import SqliteSink
from connectors.streams.consumer import open_sink, open_source, run
from connectors.streams.kafka import KafkaSink, KafkaSource
from tests.connectors.streams.streamdata import handbook_rows, invalid_ids, score

pytestmark = pytest.mark.integration
ck = pytest.importorskip(
    "confluent_kafka", reason="Kafka tests need confluent-kafka (pip install confluent-kafka)"
)

PARTITIONS = 4  # the mock cluster's default for auto-created topics
FAST_GROUP = "session.timeout.ms=6000&heartbeat.interval.ms=500"


@pytest.fixture
def bootstrap() -> Iterator[str]:
    """A mock Kafka cluster on 127.0.0.1 that lives as long as the client that hosts it."""
    host = ck.Producer({"test.mock.num.brokers": 1, "log_level": 3})
    brokers = host.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    host.flush(5)


def produce(bootstrap: str, topic: str, values: list[tuple[str, bytes]]) -> None:
    producer = ck.Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def committed(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of the partitions' end offsets)."""
    probe = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [ck.TopicPartition(topic, p) for p in range(PARTITIONS)]
        done = sum(max(tp.offset, 0) for tp in probe.committed(parts, timeout=10))
        end = sum(probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
    finally:
        probe.close()
    return done, end


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the run loop cannot handle it."""


class CrashAfterWrites:
    """A sink that dies right after its ``n``-th write, before the loop acknowledges it."""

    def __init__(self, inner: SqliteSink, n: int) -> None:
        self.inner, self.n, self.writes = inner, n, 0

    def available(self) -> tuple[bool, str]:
        return True, ""

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        stored = self.inner.write(key, value)
        self.writes += 1
        if self.writes == self.n:
            raise Crash
        return stored

    def close(self) -> None:
        pass


def transactions(rows: list[dict[str, str]]) -> list[tuple[str, bytes]]:
    return [(r["TRANSACTION_ID"], json.dumps(r).encode()) for r in rows] + [("junk", b"\x00not json")]


@pytest.mark.slow  # two consumer-group joins; the mock broker delays each initial rebalance by 3 s
def test_crashed_consumer_loses_and_duplicates_nothing(bootstrap: str, tmp_path: Path) -> None:
    rows = handbook_rows(40)
    produce(bootstrap, "tx", transactions(rows))
    total = len(rows) + 1
    results, dead = SqliteSink(tmp_path / "out.db", "results"), SqliteSink(tmp_path / "out.db", "dead")
    url = f"kafka://{bootstrap}?topic=tx&group=fraud&{FAST_GROUP}"

    first = open_source(url)
    assert isinstance(first, KafkaSource)
    with pytest.raises(Crash):
        run(first, score, CrashAfterWrites(results, 15), dead, batch_size=10, poll_timeout=0.5)
    first.close(commit=False)  # died: what it acknowledged since its last commit is redelivered

    done_before, end = committed(bootstrap, "tx", "fraud")
    assert end == total and done_before < len(results) + len(dead)  # some work is not committed

    second = open_source(url)
    stats = run(second, score, results, dead, max_messages=total - done_before, idle_timeout=30)
    second.close()

    assert stats.read == total - done_before and stats.duplicates >= 1  # redelivered, stored once
    bad = invalid_ids(rows)
    assert set(results.keys()) == {r["TRANSACTION_ID"] for r in rows} - bad
    assert total == len(results) + len(dead)  # records in = scored + dead-lettered
    letters = [value for _, value in dead.items()]
    assert sum("payload is not UTF-8" in d["reason"] or "not JSON" in d["reason"] for d in letters) == 1
    assert committed(bootstrap, "tx", "fraud") == (total, total)


def test_dead_letter_topic_round_trip(bootstrap: str) -> None:
    sink = open_sink(f"kafka://{bootstrap}?topic=tx.dead")
    assert isinstance(sink, KafkaSink) and sink.available() == (True, "")
    assert sink.write("tx/0/7", {"reason": "invalid record: amount: ...", "payload": "{}"})
    sink.close()
    reader = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "check", "enable.partition.eof": True})
    reader.assign([ck.TopicPartition("tx.dead", p, ck.OFFSET_BEGINNING) for p in range(PARTITIONS)])
    try:
        got, ends = [], set()
        for _ in range(100):  # bounded; ends when every partition reported its end
            for m in reader.consume(10, 0.2):
                if m.error() is None:
                    got.append(m)
                elif m.error().code() == ck.KafkaError._PARTITION_EOF:
                    ends.add(m.partition())
            if len(ends) == PARTITIONS:
                break
    finally:
        reader.close()
    assert [(m.key(), json.loads(m.value())["reason"]) for m in got] == [
        (b"tx/0/7", "invalid record: amount: ...")
    ]
