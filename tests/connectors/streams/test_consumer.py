from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from connectors.streams.base import Message, SqliteSink, StreamError
from connectors.streams.consumer import open_sink, open_source, run
from connectors.streams.files import FileReplaySource
from tests.connectors.streams.streamdata import handbook_rows, score


class ListSource:
    """An in-memory source that records acknowledgements."""

    def __init__(self, messages: list[Message]) -> None:
        self.queue = list(messages)
        self.acked: list[str] = []

    def available(self) -> tuple[bool, str]:
        return True, ""

    @property
    def finished(self) -> bool:
        return not self.queue

    def read(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        batch, self.queue = self.queue[:max_messages], self.queue[max_messages:]
        return batch

    def ack(self, message: Message) -> None:
        self.acked.append(message.id)

    def close(self) -> None:
        pass


def messages(rows: list[dict[str, str]]) -> list[Message]:
    return [Message(id=f"m{i}", payload=row, source="test") for i, row in enumerate(rows)]


@pytest.fixture
def sinks(tmp_path: Path) -> tuple[SqliteSink, SqliteSink]:
    return SqliteSink(tmp_path / "out.db", "results"), SqliteSink(tmp_path / "out.db", "dead")


def test_processing_error_is_dead_lettered_with_reason(sinks: tuple[SqliteSink, SqliteSink]) -> None:
    results, dead = sinks
    source = ListSource(messages(handbook_rows(4, invalid_every=0)))

    def flaky(tx):
        if tx.transaction_id == "2":
            raise ZeroDivisionError("model blew up")
        return score(tx)

    stats = run(source, flaky, results, dead)
    assert (stats.read, stats.scored, stats.dead_lettered) == (4, 3, 1)
    assert stats.reasons == {"processing failed": 1}
    assert dead.get("m2")["reason"] == "processing failed: ZeroDivisionError: model blew up"
    assert source.acked == ["m0", "m1", "m2", "m3"]


def test_raise_mode_leaves_the_failing_message_unacknowledged(sinks: tuple[SqliteSink, SqliteSink]) -> None:
    results, dead = sinks
    source = ListSource(messages(handbook_rows(3, invalid_every=0)))

    def down(tx):
        if tx.transaction_id == "1":
            raise ConnectionError("scoring service down")
        return score(tx)

    with pytest.raises(ConnectionError):
        run(source, down, results, dead, process_errors="raise")
    assert source.acked == ["m0"] and len(dead) == 0 and results.keys() == ["0"]


def test_redelivery_and_repeated_ids_write_once(sinks: tuple[SqliteSink, SqliteSink]) -> None:
    results, dead = sinks
    rows = handbook_rows(3, invalid_every=0)
    batch = messages(rows) + [
        Message(id="m0", payload=rows[0]),
        Message(id="m9", payload=rows[1] | {"TX_AMOUNT": "1"}),
    ]
    stats = run(ListSource(batch), score, results, dead)
    assert (stats.scored, stats.duplicates) == (5, 2)
    assert len(results) == 3 and results.get("1")["score"] == pytest.approx(0.0115)  # first write wins


def test_lost_entries_are_dead_lettered(sinks: tuple[SqliteSink, SqliteSink]) -> None:
    results, dead = sinks
    stats = run(ListSource([Message(id="5-0", payload={}, meta={"deleted": True})]), score, results, dead)
    assert stats.reasons == {"lost": 1} and "deleted from the stream" in dead.get("5-0")["reason"]


def test_stop_and_max_messages(sinks: tuple[SqliteSink, SqliteSink]) -> None:
    results, dead = sinks
    source = ListSource(messages(handbook_rows(10, invalid_every=0)))
    assert run(source, score, results, dead, max_messages=4, batch_size=3).read == 4
    stop = threading.Event()

    def stop_after_two(tx):
        if tx.transaction_id == "5":
            stop.set()
        return score(tx)

    stats = run(source, stop_after_two, results, dead, stop=stop, batch_size=5)
    assert stats.read == 2 and source.acked[-1] == "m5"  # m6..m8 of the batch stay unacknowledged


def test_file_urls(tmp_path: Path) -> None:
    from tests.connectors.streams.test_files import write_csv

    path = write_csv(tmp_path / "tx.csv", handbook_rows(3))
    source = open_source(f"file://{path}?speedup=1000&checkpoint={tmp_path / 'c.json'}")
    assert isinstance(source, FileReplaySource) and source.speedup == 1000
    assert isinstance(open_source(str(path)), FileReplaySource)
    sink = open_sink(f"file://{tmp_path / 'out.db'}?table=scores")
    assert isinstance(sink, SqliteSink) and sink.table == "scores"
    assert isinstance(open_sink(f"sqlite://{tmp_path / 'x.sqlite'}"), SqliteSink)


@pytest.mark.parametrize(
    ("opener", "url", "words"),
    [
        (open_source, "ftp://host/x", "use file://"),
        (open_sink, "nats://host", "use file://"),
        (open_source, "file:///nowhere.csv?speed=2", "unknown parameter"),
        (open_sink, "file:///tmp/out.csv", "SQLite database"),
        (open_sink, "sqlite:///tmp/o.db?table=drop table", "table name"),
        (open_source, "redis://127.0.0.1:1/0?group=g", "needs ?stream="),
        (open_source, "kafka://127.0.0.1:1?topic=t", "needs ?group="),
        (open_sink, "redis://127.0.0.1:1/0", "exactly one of"),
    ],
)
def test_bad_urls_say_why(opener, url: str, words: str) -> None:
    with pytest.raises(StreamError, match=re.escape(words)):
        opener(url)


def test_unreachable_redis_names_the_server_without_password() -> None:
    from tests.servers import free_port

    with pytest.raises(StreamError, match=r"cannot reach redis://:\*\*\*@127.0.0.1") as info:
        open_sink(f"redis://:secret@127.0.0.1:{free_port()}/0?hash=h")
    assert "secret" not in str(info.value)
