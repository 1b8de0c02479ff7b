"""The stream protocol: a ``Source`` of ``Message``s with acknowledgement, and idempotent ``Sink``s.

Delivery is at-least-once: a source hands out messages, and one is acknowledged (``ack``)
only after its result or its dead letter has been written. A message read but not
acknowledged when a consumer dies is delivered again (Redis: reclaimed from the dead
consumer's pending list; Kafka: re-read from the last committed offset; files: resumed from
the checkpoint). Sinks make the repeat harmless: ``write(key, value)`` stores a key once and
ignores later writes of the same key, so results are keyed by transaction id and dead letters
by message id.

Like the knowledge loaders, every backend says whether it can run here and why not
(``available()``), e.g. when ``confluent-kafka`` is not installed.

``SqliteSink`` is the embedded default for results and dead letters (no server needed).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class StreamError(RuntimeError):
    """A stream backend cannot be opened or used; the message names the backend and the reason."""


@dataclass(frozen=True)
class Message:
    """One delivery from a source.

    Args:
        id: unique within the source and stable across redeliveries (Redis entry id,
            ``topic/partition/offset``, ``file.csv:row``); dead letters are keyed by it.
        payload: the raw record: a field mapping or JSON bytes/text (see ``schema.decode_payload``).
        source: where it came from (stream, topic or file name), for dead-letter reports.
        meta: backend details the source needs to acknowledge it (e.g. Kafka partition/offset).
    """

    id: str
    payload: Mapping[str, Any] | bytes | str
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@runtime_checkable
class Source(Protocol):
    """Where messages come from."""

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when this backend can run here, else ``(False, why not)``."""
        ...

    def read(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` seconds for the first."""
        ...

    def ack(self, message: Message) -> None:
        """Mark ``message`` done: it will not be delivered again. Call after writing its result."""
        ...

    @property
    def finished(self) -> bool:
        """True when no message will ever come again (the end of a replayed file)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Where results or dead letters go; writes are idempotent per key."""

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when this backend can run here, else ``(False, why not)``."""
        ...

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        """Store ``value`` under ``key`` unless ``key`` is already stored.

        Returns:
            True when it was stored now, False when ``key`` was already there (nothing changes).
        """
        ...

    def close(self) -> None: ...


def dead_letter(message: Message, reason: str) -> dict[str, Any]:
    """The value written to a dead-letter sink for ``message``: id, source, reason, raw payload."""
    payload = message.payload
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", errors="replace")
    elif isinstance(payload, Mapping):
        payload = {
            str(k): v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in payload.items()
        }
    return {"message_id": message.id, "source": message.source, "reason": reason, "payload": payload}


def to_json(value: Mapping[str, Any]) -> str:
    """JSON text of a sink value; datetimes and other non-JSON values become strings."""
    return json.dumps(value, default=str, sort_keys=True, separators=(",", ":"))


class SqliteSink:
    """An idempotent key -> JSON table in a SQLite file (``INSERT OR IGNORE`` on the primary key).

    Safe for several processes writing the same file (SQLite locking, WAL journal).

    Args:
        path: the database file; its folder is created.
        table: table name (letters, digits, underscore).
    """

    def __init__(self, path: str | Path, table: str = "results") -> None:
        if not table.replace("_", "").isalnum():
            raise StreamError(f"sqlite sink: table name {table!r} must be letters, digits and '_'")
        self.path = Path(path)
        self.table = table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def available(self) -> tuple[bool, str]:
        return True, ""

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        with self._lock:
            cursor = self._db.execute(
                f"INSERT OR IGNORE INTO {self.table} (key, value) VALUES (?, ?)", (key, to_json(value))
            )
            return cursor.rowcount == 1

    def get(self, key: str) -> dict[str, Any] | None:
        """The value stored under ``key``, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT value FROM {self.table} WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def keys(self) -> list[str]:
        """All stored keys, in insertion order."""
        with self._lock:
            return [r[0] for r in self._db.execute(f"SELECT key FROM {self.table} ORDER BY rowid")]

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """All ``(key, value)`` pairs, in insertion order."""
        with self._lock:
            rows = self._db.execute(f"SELECT key, value FROM {self.table} ORDER BY rowid").fetchall()
        return [(key, json.loads(value)) for key, value in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
