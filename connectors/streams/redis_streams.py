"""Redis Streams backend: a consumer-group source, an idempotent hash sink and a dead-letter stream.

``RedisStreamSource`` reads with ``XREADGROUP`` as one consumer of a group (the group is created
at the start of the stream when missing). A message stays in the group's pending list until
``ack`` (``XACK``), which the run loop calls only after the result is written. Before reading
new entries, a source reclaims with ``XAUTOCLAIM`` entries that another (dead) consumer left
pending for longer than ``claim_idle_ms``; so a restarted or a sibling consumer finishes a dead
one's work. Entries trimmed from the stream while pending come back as messages marked
``meta["deleted"]`` so the loop dead-letters them instead of losing them silently.

``RedisHashSink`` writes results with ``HSETNX`` (first write of a transaction id wins);
``RedisStreamSink`` appends dead letters to a stream, once per key (a Lua script checks a set
of keys written and adds to the stream atomically).

Values in streams are text: a producer ``XADD``s the transaction's fields, or one field ``json``
holding the JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connectors.streams.base import Message, StreamError, to_json


def redis_available() -> tuple[bool, str]:
    """Whether the Redis client library is installed."""
    try:
        import redis  # noqa: F401
    except ImportError as err:
        return False, f"Redis Streams need the redis package (pip install redis): {err}"
    return True, ""


def _redacted(url: str) -> str:
    """``url`` without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _client(url: str) -> Any:
    ok, why = redis_available()
    if not ok:
        raise StreamError(why)
    import redis

    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.ping()
    except (redis.RedisError, ValueError) as err:
        raise StreamError(f"redis: cannot reach {_redacted(url)}: {err}") from None
    return client


class RedisStreamSource:
    """One consumer of a Redis consumer group on one stream.

    Args:
        url: ``redis://host:port/db``.
        stream: the stream key.
        group: consumer group; created at the stream's start (``0``) when missing.
        consumer: this consumer's name, unique among live consumers of the group.
        claim_idle_ms: reclaim entries pending on any consumer for at least this long (ms);
            None never reclaims.

    Raises:
        StreamError: redis is not installed or the server does not answer.
    """

    def __init__(
        self, url: str, stream: str, group: str, consumer: str, *, claim_idle_ms: int | None = 30_000
    ) -> None:
        self.url, self.stream, self.group, self.consumer = url, stream, group, consumer
        self.claim_idle_ms = claim_idle_ms
        self._client = _client(url)
        import redis

        self._claim_cursor = "0-0"
        try:
            self._client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise StreamError(f"redis: cannot create group {group!r} on {stream!r}: {err}") from None

    def available(self) -> tuple[bool, str]:
        return redis_available()

    @property
    def finished(self) -> bool:
        return False  # a stream has no end

    def _message(self, entry_id: str, fields: Mapping[str, Any], **meta: Any) -> Message:
        return Message(id=entry_id, payload=dict(fields), source=self.stream, meta=meta)

    def reclaim(self, max_messages: int = 100) -> list[Message]:
        """Claim entries idle on other (dead) consumers for ``claim_idle_ms`` (``XAUTOCLAIM``).

        Returns:
            The claimed messages; entries deleted from the stream meanwhile come back with
            ``meta["deleted"] = True`` and an empty payload.
        """
        if self.claim_idle_ms is None:
            return []
        claimed: list[Message] = []
        while len(claimed) < max_messages:
            cursor, entries, *rest = self._client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=max_messages - len(claimed),
            )
            deleted = rest[0] if rest else []
            claimed += [self._message(eid, fields, reclaimed=True) for eid, fields in entries]
            claimed += [self._message(eid, {}, deleted=True) for eid in deleted]
            self._claim_cursor = cursor
            if cursor == "0-0":  # scanned the whole pending list
                break
        return claimed

    def read(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        """Reclaimed entries first, else new ones (``XREADGROUP ... >``), waiting up to ``timeout``."""
        claimed = self.reclaim(max_messages)
        if claimed:
            return claimed
        block = int(timeout * 1000) if timeout > 0 else None  # BLOCK 0 would wait forever
        reply = self._client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=max_messages, block=block
        )
        return [self._message(eid, fields) for _, entries in reply or [] for eid, fields in entries]

    def ack(self, message: Message) -> None:
        self._client.xack(self.stream, self.group, message.id)

    def pending(self) -> int:
        """How many entries of the group are delivered but not acknowledged (any consumer)."""
        return int(self._client.xpending(self.stream, self.group)["pending"])

    def close(self) -> None:
        self._client.close()


class RedisHashSink:
    """Results in one Redis hash, field = key, value = JSON; ``HSETNX`` makes writes idempotent.

    Args:
        url: ``redis://host:port/db``.
        key: the hash's key.
    """

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self._client = _client(url)

    def available(self) -> tuple[bool, str]:
        return redis_available()

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        return bool(self._client.hsetnx(self.key, key, to_json(value)))

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._client.hget(self.key, key)
        return None if raw is None else json.loads(raw)

    def keys(self) -> list[str]:
        return list(self._client.hkeys(self.key))

    def __len__(self) -> int:
        return int(self._client.hlen(self.key))

    def close(self) -> None:
        self._client.close()


# KEYS[1] stream, KEYS[2] set of keys written; ARGV[1] key, ARGV[2] JSON value.
_ADD_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[1], '*', 'key', ARGV[1], 'value', ARGV[2])
  return 1
end
return 0
"""


class RedisStreamSink:
    """Append values to a stream (e.g. a dead-letter stream) once per key.

    Entries have fields ``key`` and ``value`` (JSON). The keys written are kept in the set
    ``<stream>:keys``, updated in the same Lua script as the ``XADD``.

    Args:
        url: ``redis://host:port/db``.
        stream: the stream key.
    """

    def __init__(self, url: str, stream: str) -> None:
        self.url, self.stream = url, stream
        self.keys_set = f"{stream}:keys"
        self._client = _client(url)
        self._add_once = self._client.register_script(_ADD_ONCE)

    def available(self) -> tuple[bool, str]:
        return redis_available()

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        return bool(self._add_once(keys=[self.stream, self.keys_set], args=[key, to_json(value)]))

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """All ``(key, value)`` in the stream, oldest first."""
        return [(f["key"], json.loads(f["value"])) for _, f in self._client.xrange(self.stream)]

    def __len__(self) -> int:
        return int(self._client.xlen(self.stream))

    def close(self) -> None:
        self._client.close()
