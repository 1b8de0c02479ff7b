"""Session stores of the support assistant: where ``DialogState``s live between requests.

``open_store(url)`` picks the backend from the URL:

| URL | backend |
|---|---|
| None | SQLite file ``sessions.db`` in Fathom's cache folder (``core.config.cache_dir("cs")``) |
| ``sqlite:///path.db`` | ``SQLSessionStore`` (SQLAlchemy 2) |
| ``postgresql://...``, ``postgresql+psycopg://...`` | ``SQLSessionStore``, same models (needs a driver) |
| ``redis://...``, ``rediss://...`` | ``RedisSessionStore``: one JSON document per session, with expiry |

Turns are append-only and carry an id, and ``save`` adds the turns the store does not have yet
instead of overwriting the list, inside a transaction (SQL: ``BEGIN IMMEDIATE`` on SQLite, a row
lock on PostgreSQL; Redis: ``WATCH``/``MULTI``). So two requests of one session that load, append
and save at the same time lose no turn. The session's own fields (intent, slots, handoff) are last
writer wins.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

import redis
from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from apps.customer_service.dialog import (
    MAX_LABEL,
    DialogState,
    Turn,
    utc_now,
    validate_session_id,
)
from core.config import cache_dir
from core.sql import sql_engine

REDIS_KEY_PREFIX = "fathom:cs:session:"
REDIS_INDEX_KEY = "fathom:cs:sessions"  # sorted set: session id -> time of the last save
DEFAULT_TTL_SECONDS = 7 * 24 * 3600


def _json_slots(state: DialogState) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(state.slots))
    except (TypeError, ValueError) as err:
        raise ValueError(f"slots of session {state.session_id} are not JSON-serialisable: {err}") from err


def _merge_turns(stored: list[Turn], incoming: list[Turn]) -> list[Turn]:
    """The stored turns, then those of ``incoming`` the store does not have yet (by id)."""
    seen = {t.id for t in stored}
    merged = list(stored)
    for turn in incoming:
        if turn.id not in seen:
            seen.add(turn.id)
            merged.append(turn)
    return merged


class SessionStore(Protocol):
    """Where dialog states live between requests."""

    def load(self, session_id: str) -> DialogState:
        """The saved state, or a new empty one when the session is unknown (or expired)."""
        ...

    def save(self, state: DialogState) -> None:
        """Store ``state``: add its new turns and overwrite intent, slots and handoff; sets ``updated``."""
        ...

    def delete(self, session_id: str) -> None:
        """Forget the session (no error when it is unknown)."""
        ...

    def list_sessions(self, limit: int = 100) -> list[str]:
        """Up to ``limit`` session ids, most recently saved first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return limit


# ---------------------------------------------------------------------------------------------
# SQL (SQLite, PostgreSQL)
# ---------------------------------------------------------------------------------------------
class _Base(DeclarativeBase):
    metadata = MetaData()


class _SessionRow(_Base):
    __tablename__ = "cs_sessions"

    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    intent: Mapped[str | None] = mapped_column(String(MAX_LABEL))
    slots: Mapped[dict[str, Any]] = mapped_column(JSON)
    handoff: Mapped[str | None] = mapped_column(Text)
    updated: Mapped[str] = mapped_column(String(40), index=True)


class _TurnRow(_Base):
    __tablename__ = "cs_turns"
    __table_args__ = (UniqueConstraint("session_id", "position"), UniqueConstraint("session_id", "turn_id"))

    row_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("cs_sessions.session_id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    turn_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created: Mapped[str] = mapped_column(String(40))
    intent: Mapped[str | None] = mapped_column(String(MAX_LABEL))
    confidence: Mapped[float | None] = mapped_column(Float)
    sources: Mapped[list[str]] = mapped_column(JSON)
    handoff: Mapped[str | None] = mapped_column(Text)


class SQLSessionStore:
    """Sessions in a SQL database through SQLAlchemy 2: SQLite by default, PostgreSQL by the same models.

    Tables ``cs_sessions`` and ``cs_turns`` (one row per turn, keyed by session id and position)
    are created on first use.

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path.db`` (the folder is created) or ``postgresql://...``.
            An in-memory SQLite URL (``sqlite://``) keeps one connection and is for single-threaded use.

    Raises:
        ValueError: not a SQLite or PostgreSQL URL.
        ImportError: the URL's database driver is not installed.
    """

    def __init__(self, url: str) -> None:
        self._engine = sql_engine(
            url, store="session store", owner="SQLSessionStore", begin="BEGIN IMMEDIATE"
        )
        self._ready = False
        self._ready_lock = threading.Lock()

    def _session(self) -> Session:
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    _Base.metadata.create_all(self._engine)
                    self._ready = True
        return Session(self._engine, expire_on_commit=False)

    def load(self, session_id: str) -> DialogState:
        sid = validate_session_id(session_id)
        with self._session() as s:
            row = s.get(_SessionRow, sid)
            if row is None:
                return DialogState(sid)
            rows = s.scalars(select(_TurnRow).where(_TurnRow.session_id == sid).order_by(_TurnRow.position))
            turns = [
                Turn(
                    role=r.role,
                    text=r.text,
                    created=r.created,
                    intent=r.intent,
                    confidence=r.confidence,
                    sources=list(r.sources or []),
                    handoff=r.handoff,
                    id=r.turn_id,
                )
                for r in rows
            ]
            return DialogState(sid, row.intent, dict(row.slots or {}), turns, row.handoff, row.updated)

    def save(self, state: DialogState) -> None:
        sid = validate_session_id(state.session_id)
        slots = _json_slots(state)
        state.updated = utc_now()
        with self._session() as s, s.begin():
            dialect = s.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            s.execute(
                insert(_SessionRow)
                .values(session_id=sid, slots={}, updated=state.updated)
                .on_conflict_do_nothing(index_elements=["session_id"])
            )
            row = s.get(_SessionRow, sid, with_for_update=True)  # serialises writers of this session
            if row is None:  # only if another writer deleted it between the two statements
                raise RuntimeError(f"session {sid} was deleted while it was being saved")
            have = set(s.scalars(select(_TurnRow.turn_id).where(_TurnRow.session_id == sid)))
            last = s.scalar(select(func.max(_TurnRow.position)).where(_TurnRow.session_id == sid))
            position = -1 if last is None else last
            for turn in _merge_turns([], state.turns):
                if turn.id in have:
                    continue
                position += 1
                s.add(
                    _TurnRow(
                        session_id=sid,
                        position=position,
                        turn_id=turn.id,
                        role=turn.role,
                        text=turn.text,
                        created=turn.created,
                        intent=turn.intent,
                        confidence=turn.confidence,
                        sources=list(turn.sources),
                        handoff=turn.handoff,
                    )
                )
            row.intent, row.slots, row.handoff, row.updated = (
                state.intent,
                slots,
                state.handoff,
                state.updated,
            )

    def delete(self, session_id: str) -> None:
        sid = validate_session_id(session_id)
        with self._session() as s, s.begin():
            s.execute(sql_delete(_TurnRow).where(_TurnRow.session_id == sid))
            s.execute(sql_delete(_SessionRow).where(_SessionRow.session_id == sid))

    def list_sessions(self, limit: int = 100) -> list[str]:
        query = select(_SessionRow.session_id).order_by(_SessionRow.updated.desc(), _SessionRow.session_id)
        with self._session() as s:
            return list(s.scalars(query.limit(_check_limit(limit))))

    def close(self) -> None:
        self._engine.dispose()


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------
class RedisSessionStore:
    """Sessions in Redis: one JSON document per session under ``fathom:cs:session:<id>``, with expiry.

    A sorted set ``fathom:cs:sessions`` (id -> time of the last save) orders ``list_sessions``.

    Args:
        url: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS.
        ttl_seconds: a session expires this long after its last save; None keeps sessions forever.

    Raises:
        ValueError: ``ttl_seconds`` is not a positive integer or None, or the URL is malformed.
    """

    _MAX_RETRIES = 100

    def __init__(self, url: str, *, ttl_seconds: int | None = DEFAULT_TTL_SECONDS) -> None:
        if ttl_seconds is not None and (
            isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1
        ):
            raise ValueError(f"ttl_seconds must be a positive integer or None, got {ttl_seconds!r}")
        self.ttl_seconds = ttl_seconds
        self._client = redis.Redis.from_url(url, decode_responses=True)

    @staticmethod
    def key(session_id: str) -> str:
        return REDIS_KEY_PREFIX + validate_session_id(session_id)

    def load(self, session_id: str) -> DialogState:
        raw = self._client.get(self.key(session_id))
        if raw is None:
            return DialogState(session_id)
        state = DialogState.from_dict(json.loads(raw))
        if state.session_id != session_id:
            raise ValueError(f"key {self.key(session_id)} holds session {state.session_id!r}")
        return state

    def save(self, state: DialogState) -> None:
        key = self.key(state.session_id)
        slots = _json_slots(state)
        state.updated = utc_now()
        with self._client.pipeline() as pipe:
            for _ in range(self._MAX_RETRIES):
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    stored = DialogState.from_dict(json.loads(raw)).turns if raw else []
                    document = {**state.to_dict(), "slots": slots}
                    document["turns"] = [t.to_dict() for t in _merge_turns(stored, state.turns)]
                    pipe.multi()
                    pipe.set(key, json.dumps(document), ex=self.ttl_seconds)
                    pipe.zadd(REDIS_INDEX_KEY, {state.session_id: time.time()})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        raise RuntimeError(
            f"could not save session {state.session_id}: it changed under {self._MAX_RETRIES} retries"
        )

    def delete(self, session_id: str) -> None:
        key = self.key(session_id)
        with self._client.pipeline() as pipe:
            pipe.delete(key)
            pipe.zrem(REDIS_INDEX_KEY, session_id)
            pipe.execute()

    def list_sessions(self, limit: int = 100) -> list[str]:
        _check_limit(limit)
        if self.ttl_seconds is not None:  # index entries of sessions that have expired
            self._client.zremrangebyscore(REDIS_INDEX_KEY, "-inf", time.time() - self.ttl_seconds)
        found: list[str] = []
        start = 0
        while len(found) < limit:
            ids = [str(sid) for sid in self._client.zrevrange(REDIS_INDEX_KEY, start, start + limit - 1)]
            if not ids:
                break
            start += len(ids)
            with self._client.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.exists(self.key(sid))
                alive = pipe.execute()
            gone = [sid for sid, ok in zip(ids, alive, strict=True) if not ok]
            if gone:  # evicted or deleted behind our back
                self._client.zrem(REDIS_INDEX_KEY, *gone)
                start -= len(gone)
            found += [sid for sid, ok in zip(ids, alive, strict=True) if ok]
        return found[:limit]

    def close(self) -> None:
        self._client.close()


def open_store(url: str | None = None, *, ttl_seconds: int | None = DEFAULT_TTL_SECONDS) -> SessionStore:
    """The session store for ``url`` (see the module docstring's table).

    Args:
        url: ``sqlite://``, ``postgresql[+driver]://``, ``redis://`` or ``rediss://`` URL; None for the
            default SQLite file ``core.config.cache_dir("cs") / "sessions.db"``.
        ttl_seconds: session expiry for Redis (ignored by SQL stores, which keep sessions until deleted).

    Returns:
        An ``SQLSessionStore`` or a ``RedisSessionStore``.

    Raises:
        ValueError: the URL is empty or its scheme is not one of those above.
    """
    if url is None:
        return SQLSessionStore(f"sqlite:///{cache_dir('cs') / 'sessions.db'}")
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"session store URL must look like scheme://..., got {url!r}")
    scheme = url.split("://", 1)[0].lower()
    family = scheme.split("+", 1)[0]
    if family in ("sqlite", "postgresql"):
        return SQLSessionStore(url)
    if scheme in ("redis", "rediss"):
        return RedisSessionStore(url, ttl_seconds=ttl_seconds)
    hint = " (SQLAlchemy spells it postgresql://)" if family == "postgres" else ""
    raise ValueError(
        f"unknown session store URL scheme {scheme!r}{hint}: expected sqlite://, postgresql://, redis:// "
        "or rediss://, or None for the default SQLite file"
    )
