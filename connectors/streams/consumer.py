"""The consumer run loop, and sources and sinks opened from URLs.

``run`` does, for each message: validate -> ``process(transaction)`` -> write the result to
the sink keyed by transaction id -> acknowledge. A message that is not a valid transaction,
whose processing raised, or that the stream lost, goes to the dead-letter sink keyed by its
message id with the reason, and is then acknowledged. Nothing is dropped silently: after a
run, ``read == scored + dead_lettered``; across a crash and restart, records in = distinct
result keys + distinct dead-letter keys, because both writes are idempotent::

    source = open_source("redis://127.0.0.1:6379/0?stream=tx&group=fraud&consumer=w1")
    results = open_sink("redis://127.0.0.1:6379/0?hash=fraud:scores")
    dead = open_sink("redis://127.0.0.1:6379/0?stream=tx:dead")
    stats = run(source, lambda tx: {"score": model(tx)}, results, dead, idle_timeout=5)

URLs:

- ``file:///data/tx.csv.gz?speedup=60&checkpoint=/state/tx.json`` (or a plain path): file replay
  (CSV, Parquet). As a sink, ``file:///state/out.db?table=results`` or ``sqlite:///...``: SQLite.
- ``redis://host:port/db?stream=S&group=G&consumer=C&claim_idle_ms=30000``: a consumer group
  source; as a sink ``?hash=H`` (results) or ``?stream=S`` (dead letters).
- ``kafka://host:port[,host:port]?topic=T&group=G``: a consumer group source; as a sink
  ``?topic=T``. Other query parameters are librdkafka settings (``session.timeout.ms=6000``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from connectors.streams.base import Message, Sink, Source, SqliteSink, StreamError, dead_letter
from connectors.streams.schema import InvalidRecord, Transaction, parse_transaction

log = logging.getLogger(__name__)

Processor = Callable[[Transaction], Mapping[str, Any]]


@dataclass
class RunStats:
    """What one ``run`` did.

    Args:
        read: messages read.
        scored: valid messages whose result was written (or found already written).
        dead_lettered: messages sent to the dead-letter sink.
        duplicates: result writes whose transaction id was already stored (redeliveries after
            a crash, or a transaction id that occurs twice in the input).
        reasons: dead-letter count by the first part of the reason (``invalid record``, ...).
    """

    read: int = 0
    scored: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def handle(
    message: Message,
    source: Source,
    process: Processor,
    sink: Sink,
    dead_letters: Sink,
    stats: RunStats,
    *,
    process_errors: str = "dead_letter",
    unknown_fields: str = "ignore",
) -> None:
    """Validate, process, write and acknowledge one message (see ``run``)."""
    stats.read += 1
    if message.meta.get("deleted"):
        kind, detail = "lost", "the entry was deleted from the stream before it was processed"
    else:
        try:
            tx = parse_transaction(message.payload, unknown=unknown_fields)
        except InvalidRecord as err:
            kind, detail = "invalid record", err.reason
        else:
            try:
                result = dict(process(tx))
            except Exception as err:
                if process_errors == "raise":
                    raise
                kind, detail = "processing failed", f"{type(err).__name__}: {err}"
            else:
                stored = sink.write(tx.transaction_id, {**result, "transaction_id": tx.transaction_id})
                source.ack(message)
                stats.scored += 1
                stats.duplicates += not stored
                return
    dead_letters.write(message.id, dead_letter(message, f"{kind}: {detail}"))
    source.ack(message)
    stats.dead_lettered += 1
    stats.reasons[kind] += 1


def run(
    source: Source,
    process: Processor,
    sink: Sink,
    dead_letters: Sink,
    *,
    max_messages: int | None = None,
    batch_size: int = 100,
    poll_timeout: float = 1.0,
    idle_timeout: float | None = None,
    stop: threading.Event | None = None,
    process_errors: str = "dead_letter",
    unknown_fields: str = "ignore",
) -> RunStats:
    """Consume ``source`` until it ends, ``max_messages`` are read, it stays idle, or ``stop`` is set.

    Args:
        source: where messages come from.
        process: transaction -> result fields (JSON-serialisable), e.g. ``{"score": 0.93}``.
        sink: results, keyed by transaction id.
        dead_letters: dead letters, keyed by message id, with the reason and the raw payload.
        max_messages: stop after reading this many; None: no limit.
        batch_size: messages asked for per read.
        poll_timeout: seconds one read waits for messages.
        idle_timeout: stop after this many seconds without a message; None: never.
        stop: set it from another thread to stop after the current message.
        process_errors: ``"dead_letter"`` (default) sends a record whose ``process`` raised to
            the dead letters; ``"raise"`` lets the exception end the run unacknowledged, so the
            record is delivered again (for failures that are not the record's fault).
        unknown_fields: ``"ignore"`` or ``"forbid"`` (dead-letter) fields the schema does not
            know; see ``schema.parse_transaction``.

    Returns:
        The counts; ``read == scored + dead_lettered``.

    Raises:
        ValueError: a bad ``process_errors`` or ``batch_size``.
        StreamError: from the backends (the unacknowledged messages are delivered again).
    """
    if process_errors not in ("dead_letter", "raise"):
        raise ValueError(f"process_errors must be 'dead_letter' or 'raise', not {process_errors!r}")
    if unknown_fields not in ("ignore", "forbid"):
        raise ValueError(f"unknown_fields must be 'ignore' or 'forbid', not {unknown_fields!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    stats = RunStats()
    last_message = time.monotonic()
    while not (stop is not None and stop.is_set()):
        if max_messages is not None and stats.read >= max_messages:
            break
        if source.finished:
            break
        wanted = batch_size if max_messages is None else min(batch_size, max_messages - stats.read)
        messages = source.read(wanted, poll_timeout)
        if not messages:
            if idle_timeout is not None and time.monotonic() - last_message >= idle_timeout:
                break
            continue
        last_message = time.monotonic()
        for message in messages:
            handle(
                message,
                source,
                process,
                sink,
                dead_letters,
                stats,
                process_errors=process_errors,
                unknown_fields=unknown_fields,
            )
            if stop is not None and stop.is_set():
                break  # the rest of the batch stays unacknowledged and is delivered again
    log.info(
        "stream run: read %d, scored %d (%d already written), dead-lettered %d",
        stats.read,
        stats.scored,
        stats.duplicates,
        stats.dead_lettered,
    )
    return stats


def _split(url: str) -> tuple[str, str, dict[str, str], str]:
    """(scheme, path, query parameters, URL without query) of ``url``; a bare path is ``file``."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file", "sqlite") or len(parts.scheme) == 1:  # 1 letter: a Windows drive
        scheme = parts.scheme if parts.scheme in ("file", "sqlite") else "file"
        path = parts.path if parts.scheme in ("file", "sqlite") else url.split("?", 1)[0]
        return scheme, path, dict(parse_qsl(parts.query)), url
    return parts.scheme, parts.path, dict(parse_qsl(parts.query)), urlunsplit(parts._replace(query=""))


def _need(params: dict[str, str], name: str, url: str, what: str) -> str:
    value = params.pop(name, "")
    if not value:
        raise StreamError(f"{url.split('?', 1)[0]}: needs ?{name}=... ({what})")
    return value


def _no_extras(params: dict[str, str], url: str) -> None:
    if params:
        raise StreamError(f"{url.split('?', 1)[0]}: unknown parameter(s) {', '.join(sorted(params))}")


def default_consumer_name() -> str:
    """``host-pid``: unique among live consumers on a network."""
    return f"{socket.gethostname()}-{os.getpid()}"


def open_source(url: str) -> Source:
    """A source for ``url`` (see the module docstring).

    Raises:
        StreamError: unknown scheme, missing or unknown parameters, or the backend cannot start.
    """
    scheme, path, params, bare = _split(url)
    if scheme == "file":
        speedup = params.pop("speedup", None)
        checkpoint = params.pop("checkpoint", None)
        _no_extras(params, url)
        from connectors.streams.files import FileReplaySource

        try:
            factor = float(speedup) if speedup is not None else None
        except ValueError:
            raise StreamError(f"{url}: speedup must be a number (got {speedup!r})") from None
        return FileReplaySource(Path(path), speedup=factor, checkpoint=checkpoint)
    if scheme in ("redis", "rediss"):
        from connectors.streams.redis_streams import RedisStreamSource

        stream = _need(params, "stream", url, "the stream key")
        group = _need(params, "group", url, "the consumer group")
        consumer = params.pop("consumer", "") or default_consumer_name()
        idle = params.pop("claim_idle_ms", "30000")
        _no_extras(params, url)
        claim = None if idle.lower() == "none" else int(idle)
        return RedisStreamSource(bare, stream, group, consumer, claim_idle_ms=claim)
    if scheme == "kafka":
        from connectors.streams.kafka import KafkaSource

        topic = _need(params, "topic", url, "the topic")
        group = _need(params, "group", url, "the consumer group")
        return KafkaSource(urlsplit(url).netloc, topic, group, config=params)
    raise StreamError(f"no stream source for {url!r}: use file://, redis:// or kafka://")


def open_sink(url: str) -> Sink:
    """An idempotent sink for ``url`` (see the module docstring).

    Raises:
        StreamError: unknown scheme or file kind, missing or unknown parameters, or the backend
            cannot start.
    """
    scheme, path, params, bare = _split(url)
    if scheme in ("file", "sqlite"):
        if scheme == "file" and not path.lower().endswith((".db", ".sqlite", ".sqlite3")):
            raise StreamError(f"{url}: a file sink is a SQLite database (.db, .sqlite, .sqlite3)")
        table = params.pop("table", "results")
        _no_extras(params, url)
        return SqliteSink(path, table)
    if scheme in ("redis", "rediss"):
        from connectors.streams.redis_streams import RedisHashSink, RedisStreamSink

        hash_key, stream = params.pop("hash", ""), params.pop("stream", "")
        _no_extras(params, url)
        if bool(hash_key) == bool(stream):
            raise StreamError(f"{bare}: a Redis sink needs exactly one of ?hash=... or ?stream=...")
        return RedisHashSink(bare, hash_key) if hash_key else RedisStreamSink(bare, stream)
    if scheme == "kafka":
        from connectors.streams.kafka import KafkaSink

        topic = _need(params, "topic", url, "the topic")
        return KafkaSink(urlsplit(url).netloc, topic, config=params)
    raise StreamError(f"no stream sink for {url!r}: use file://, sqlite://, redis:// or kafka://")
