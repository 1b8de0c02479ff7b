"""Transaction streams for the fraud app: a schema, a source/sink protocol, and backends.

- ``schema``: ``Transaction`` and ``parse_transaction`` (canonical fields or the Fraud
  Detection Handbook's columns); invalid records raise ``InvalidRecord`` with the reason.
- ``base``: ``Message``, the ``Source`` (read, ack) and ``Sink`` (idempotent write) protocols,
  ``SqliteSink``.
- backends: ``files`` (CSV/Parquet replay, the default), ``redis_streams`` (consumer groups,
  XACK, XAUTOCLAIM, dead-letter stream), ``kafka`` (confluent-kafka, manual commits).
- ``consumer``: the at-least-once ``run`` loop and ``open_source``/``open_sink`` for URLs.

Backends import their client library only when opened, so this package imports without them.
"""

from __future__ import annotations

from connectors.streams.base import Message, Sink, Source, SqliteSink, StreamError, dead_letter
from connectors.streams.consumer import RunStats, handle, open_sink, open_source, run
from connectors.streams.files import FileReplaySource
from connectors.streams.schema import InvalidRecord, Transaction, decode_payload, parse_transaction

__all__ = [
    "FileReplaySource",
    "InvalidRecord",
    "Message",
    "RunStats",
    "Sink",
    "Source",
    "SqliteSink",
    "StreamError",
    "Transaction",
    "dead_letter",
    "decode_payload",
    "handle",
    "open_sink",
    "open_source",
    "parse_transaction",
    "run",
]
