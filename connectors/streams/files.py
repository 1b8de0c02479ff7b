"""File replay: a CSV (optionally gzipped) or Parquet file of transactions as a stream.

The embedded default source: no server. Rows come out in file order as ``Message``s with id
``<file name>:<row>`` (row 1 is the first data row). With ``speedup`` the replay follows the
records' own timestamps, ``speedup`` times faster than real time (``speedup=60``: an hour of
transactions in a minute); without it, as fast as the consumer reads. With ``checkpoint`` the
highest row below which every row was acknowledged is saved to that JSON file, and a new replay
of the same file resumes after it (at-least-once across restarts)::

    source = FileReplaySource("tx.csv.gz", speedup=3600, checkpoint="tx.checkpoint.json")
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from connectors.streams.base import Message, StreamError
from connectors.streams.schema import InvalidRecord, canonical_fields

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise StreamError(
        f"file replay: {path} is neither CSV ({', '.join(CSV_SUFFIXES)}) nor Parquet "
        f"({', '.join(PARQUET_SUFFIXES)})"
    )


def parquet_available() -> tuple[bool, str]:
    """Whether Parquet files can be read here (needs pyarrow)."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:
        return False, f"reading Parquet needs pyarrow (pip install pyarrow): {err}"
    return True, ""


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        yield from csv.DictReader(text)


def _parquet_rows(path: Path, batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def _timestamp(row: dict[str, Any]) -> _dt.datetime | None:
    """The row's timestamp for pacing, or None when it has none that parses (it is dead-lettered later)."""
    try:
        value = canonical_fields(row).get("timestamp")
    except InvalidRecord:
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, _dt.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)


class FileReplaySource:
    """Replay a CSV/Parquet file of transactions as a stream of messages.

    Args:
        path: ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq``.
        speedup: replay the records' timestamps this many times faster than real time; None
            replays without waiting.
        checkpoint: JSON file that keeps the acknowledged position; a replay resumes after it.
        checkpoint_every: save the checkpoint after this many acknowledgements (and on close).
        clock: monotonic seconds (tests pass a fake one).
        sleep: how to wait (tests pass a recorder).

    Raises:
        StreamError: the file is missing, of an unknown kind, Parquet without pyarrow, or the
            checkpoint belongs to another file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        speedup: float | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StreamError(f"file replay: {self.path} does not exist or is not a file")
        self.kind = _file_kind(self.path)
        ok, why = self.available()
        if not ok:
            raise StreamError(f"file replay of {self.path}: {why}")
        if speedup is not None and not speedup > 0:
            raise StreamError(f"file replay: speedup must be > 0 (got {speedup})")
        self.speedup = speedup
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.checkpoint_every = max(1, checkpoint_every)
        self._clock, self._sleep = clock, sleep
        self._rows = _csv_rows(self.path) if self.kind == "csv" else _parquet_rows(self.path)
        self._row = 0  # number of the last row taken from the file
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._done = False
        self._acked: set[int] = set()
        self._watermark = self._load_checkpoint()  # every row <= watermark is acknowledged
        self._since_save = 0
        self._origin: tuple[_dt.datetime, float] | None = None  # (first timestamp, wall time then)
        for _ in range(self._watermark):  # resume: skip what was acknowledged before
            if next(self._rows, None) is None:
                break
            self._row += 1

    def available(self) -> tuple[bool, str]:
        return parquet_available() if self.kind == "parquet" else (True, "")

    @property
    def finished(self) -> bool:
        return self._done and self._pending is None

    @property
    def position(self) -> int:
        """The checkpoint: every row up to this one is acknowledged."""
        return self._watermark

    def _load_checkpoint(self) -> int:
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0
        try:
            state = json.loads(self.checkpoint.read_text())
            saved_for, row = state["file"], int(state["row"])
        except (ValueError, KeyError, TypeError) as err:
            raise StreamError(f"file replay: checkpoint {self.checkpoint} is not readable: {err}") from None
        if saved_for != str(self.path.resolve()):
            raise StreamError(
                f"file replay: checkpoint {self.checkpoint} belongs to {saved_for}, not {self.path.resolve()}"
            )
        return row

    def _save_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        tmp = self.checkpoint.with_suffix(self.checkpoint.suffix + ".tmp")
        tmp.write_text(json.dumps({"file": str(self.path.resolve()), "row": self._watermark}))
        tmp.replace(self.checkpoint)  # atomic: a crash leaves the old or the new checkpoint
        self._since_save = 0

    def _peek(self) -> tuple[int, dict[str, Any]] | None:
        if self._pending is None and not self._done:
            row = next(self._rows, None)
            if row is None:
                self._done = True
            else:
                self._row += 1
                self._pending = (self._row, row)
        return self._pending

    def _due(self, row: dict[str, Any]) -> float:
        """Wall-clock time at which ``row`` is released (now when not pacing)."""
        now = self._clock()
        if self.speedup is None:
            return now
        stamp = _timestamp(row)
        if stamp is None:
            return now
        if self._origin is None:
            self._origin = (stamp, now)
        first, started = self._origin
        return started + (stamp - first).total_seconds() / self.speedup

    def read(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        """The next rows that are due, at most ``max_messages``; waits up to ``timeout`` for the first.

        Returns:
            Messages in file order; ``[]`` at the end of the file or when none is due in time.
        """
        deadline = self._clock() + timeout
        out: list[Message] = []
        while len(out) < max_messages:
            pending = self._peek()
            if pending is None:
                break
            number, row = pending
            due, now = self._due(row), self._clock()
            if due > now:
                if out:
                    break
                if due > deadline:
                    self._sleep(max(0.0, deadline - now))
                    break
                self._sleep(due - now)
            self._pending = None
            out.append(Message(id=f"{self.path.name}:{number}", payload=row, source=self.path.name))
        return out

    def ack(self, message: Message) -> None:
        name, _, number = message.id.rpartition(":")
        if name != self.path.name or not number.isdigit():
            raise StreamError(f"file replay of {self.path.name}: cannot acknowledge message {message.id!r}")
        self._acked.add(int(number))
        while self._watermark + 1 in self._acked:
            self._watermark += 1
            self._acked.discard(self._watermark)
        self._since_save += 1
        if self._since_save >= self.checkpoint_every:
            self._save_checkpoint()

    def close(self) -> None:
        """Save the checkpoint and close the file."""
        self._save_checkpoint()
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()
