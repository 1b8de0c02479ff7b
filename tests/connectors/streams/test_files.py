from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from connectors.streams.base import SqliteSink, StreamError
from connectors.streams.consumer import run
from connectors.streams.files import FileReplaySource
from tests.connectors.streams.streamdata import HANDBOOK_COLUMNS, handbook_rows, invalid_ids, score


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HANDBOOK_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, str]]) -> Path:
    pa = pytest.importorskip("pyarrow", reason="Parquet replay needs pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class FakeClock:
    """A clock that only moves when the replay sleeps; records the sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("name", ["tx.csv", "tx.csv.gz", "tx.parquet"])
def test_replay_accounts_for_every_row(tmp_path: Path, name: str) -> None:
    rows = handbook_rows(30)
    path = tmp_path / name
    write_parquet(path, rows) if name.endswith(".parquet") else write_csv(path, rows)
    source = FileReplaySource(path)
    results, dead = SqliteSink(tmp_path / "out.db", "results"), SqliteSink(tmp_path / "out.db", "dead")

    stats = run(source, score, results, dead, batch_size=7)

    bad = invalid_ids(rows)
    assert stats.read == 30 and stats.dead_lettered == len(bad) == 4 and stats.scored == 26
    assert set(results.keys()) == {r["TRANSACTION_ID"] for r in rows} - bad
    assert results.get("3") == {"score": 0.0145, "customer_id": "103", "transaction_id": "3"}
    letters = [value for _, value in dead.items()]
    assert {letter["payload"]["TRANSACTION_ID"] for letter in letters} == bad
    assert all(letter["reason"].startswith("invalid record: ") for letter in letters)
    assert dead.keys()[0] == f"{name}:7"  # row 7 is the first broken one
    assert source.finished and source.position == 30


def test_speedup_paces_by_record_time(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "tx.csv", handbook_rows(5, invalid_every=0, seconds_apart=10))
    clock = FakeClock()
    source = FileReplaySource(path, speedup=5, clock=clock, sleep=clock.sleep)

    got = [m.id for _ in range(10) for m in source.read(10, timeout=60)]

    assert got == [f"tx.csv:{i}" for i in range(1, 6)]
    assert clock.sleeps == pytest.approx([2.0, 2.0, 2.0, 2.0])  # 10 s apart / 5


def test_speedup_read_gives_up_after_timeout(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "tx.csv", handbook_rows(2, invalid_every=0, seconds_apart=100))
    clock = FakeClock()
    source = FileReplaySource(path, speedup=10, clock=clock, sleep=clock.sleep)
    assert [m.id for m in source.read(10, timeout=1)] == ["tx.csv:1"]
    assert source.read(10, timeout=3) == []  # the next row is due 10 s later
    assert clock.sleeps == [3.0]
    assert [m.id for m in source.read(10, timeout=30)] == ["tx.csv:2"]
    assert clock.sleeps == [3.0, pytest.approx(7.0)]


def test_checkpoint_resumes_after_contiguous_acks(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "tx.csv", handbook_rows(10, invalid_every=0))
    state = tmp_path / "state.json"
    first = FileReplaySource(path, checkpoint=state)
    messages = first.read(6)
    for message in messages[:3] + messages[4:]:  # row 4 is never acknowledged
        first.ack(message)
    first.close()  # e.g. a crash after the last checkpoint save would resume even earlier

    second = FileReplaySource(path, checkpoint=state)
    assert second.position == 3
    assert [m.id for m in second.read(100)] == [f"tx.csv:{i}" for i in range(4, 11)]


def test_checkpoint_of_another_file_is_refused(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", handbook_rows(2))
    b = write_csv(tmp_path / "b.csv", handbook_rows(2))
    state = tmp_path / "state.json"
    source = FileReplaySource(a, checkpoint=state)
    source.ack(source.read(1)[0])
    source.close()
    with pytest.raises(StreamError, match="belongs to"):
        FileReplaySource(b, checkpoint=state)


def test_ragged_csv_row_is_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    path.write_text(",".join(HANDBOOK_COLUMNS) + "\n0,2018-04-01 00:00:00,1,2,3.5,0,0,0,0,EXTRA\n")
    dead = SqliteSink(tmp_path / "out.db", "dead")
    stats = run(FileReplaySource(path), score, SqliteSink(tmp_path / "out.db"), dead)
    assert stats.dead_lettered == 1
    assert "more value(s) than the header" in dead.get("tx.csv:1")["reason"]


@pytest.mark.parametrize(("name", "words"), [("missing.csv", "does not exist"), ("tx.json", "neither CSV")])
def test_bad_paths_say_why(tmp_path: Path, name: str, words: str) -> None:
    if name == "tx.json":
        (tmp_path / name).write_text("{}")
    with pytest.raises(StreamError, match=words):
        FileReplaySource(tmp_path / name)
