"""One SQLAlchemy engine factory for the apps' state stores (sessions, alerts): SQLite or PostgreSQL.

SQLite (the embedded default) gets WAL, ``synchronous=NORMAL``, a 30 s busy timeout and
SQLAlchemy's documented recipe that lets SQLAlchemy, not pysqlite, decide where transactions
begin; an in-memory database is shared across threads through one connection. PostgreSQL gets
``pool_pre_ping``. The same ORM models run on both::

    engine = sql_engine("sqlite:///state/alerts.db", store="alert store", owner="AlertStore")
    engine = sql_engine(url, store="session store", owner="SQLSessionStore", begin="BEGIN IMMEDIATE")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool


def sql_engine(url: str, *, store: str, owner: str, begin: str = "BEGIN") -> Engine:
    """An engine for ``url`` (``sqlite:///...``, ``sqlite://``, ``postgresql[+driver]://...``).

    Args:
        url: the database URL; a SQLite file's folder is created.
        store: what the database holds, for error messages ("alert store").
        owner: the class that opens it, for error messages ("AlertStore").
        begin: the statement SQLite transactions start with: ``"BEGIN"`` keeps readers off the write
            lock (a write then waits on the busy timeout); ``"BEGIN IMMEDIATE"`` takes the write lock
            at once, so two read-then-write transactions cannot both read first.

    Raises:
        ValueError: not a database URL, or a backend other than sqlite and postgresql.
        ImportError: the PostgreSQL driver named by the URL is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ValueError(f"not a database URL: {err}") from err
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if not memory:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            **({"poolclass": StaticPool} if memory else {}),
        )

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            if not memory:
                # WAL: readers do not block the writer; synchronous=NORMAL syncs at checkpoints rather
                # than at every commit (a committed write survives a crash of the process; an OS crash
                # can lose the last few), which takes ~15 ms off every write on this machine's disk.
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
                dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql(begin)

        return engine
    if backend == "postgresql":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except ModuleNotFoundError as err:
            raise ImportError(
                f"the PostgreSQL {store} needs the driver {err.name!r}: install it, or name an "
                "installed one in the URL (e.g. postgresql+psycopg://)"
            ) from err
    raise ValueError(f"{owner} supports sqlite and postgresql URLs, got {backend!r}")
