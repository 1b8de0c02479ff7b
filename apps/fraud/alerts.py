"""The fraud app's alert case queue: scored transactions above threshold, worked by analysts.

``AlertStore`` keeps one alert per transaction in a SQL database through SQLAlchemy 2: a SQLite file
(or ``sqlite://`` in memory) by default, PostgreSQL by URL with the same model. Adding is
idempotent, keyed by transaction id, so an at-least-once stream consumer can replay without
duplicating alerts. Analysts' decisions come back out as training labels::

    store = AlertStore.open("alerts.db")          # or "sqlite://", "postgresql+psycopg://..."
    store.add(Alert(transaction_id="t1", customer_id="c1", terminal_id="m1", amount=912.5,
                    timestamp=tx_time, score=0.97, threshold=0.8, model="lstm-gnn/3",
                    explanation={"amount_z": 2.1, "neighbours": ["m7"]}))   # True; False if t1 has one
    for alert in store.queue(order="score", limit=20):                      # open, highest score first
        ...
    store.decide("t1", "fraud", analyst="ana", note="card holder confirmed")
    store.counts()                                   # {"open": 0, "fraud": 1, "legitimate": 0}
    labels = store.labels()                          # transaction_id, label, decided_at, analyst
    for row in labels.itertuples():
        feature_state.add_label(row.transaction_id, row.label)
    store.by_day()                                   # per UTC day: n_alerts, n_fraud, n_legitimate, n_open

Every datetime going in is taken as UTC when naive and converted to UTC otherwise; every datetime
coming out is timezone-aware UTC. Explanations are stored as JSON (never pickled).

Every call is one short transaction, so one writer (the stream consumer) and many
readers (the dashboard) can share a store across threads; on a SQLite file WAL lets readers go on
while the writer commits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Index, MetaData, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import JSON, Date, DateTime, Float, String, Text, TypeDecorator

from core.sql import sql_engine

ALERT_STATUSES = ("open", "fraud", "legitimate")
DECISIONS = ("fraud", "legitimate")
ORDERS = ("score", "time")
MAX_ID = 128
_INSERT_CHUNK = 500  # rows per multi-row INSERT: 15 columns each stays far below SQLite's variable limit


@dataclass(frozen=True)
class Alert:
    """One alert: a transaction whose score reached the model's threshold, and what became of it.

    Args:
        transaction_id: the scored transaction; the store's key (one alert per transaction).
        customer_id: the card or card holder.
        terminal_id: the merchant or terminal.
        amount: the transaction amount, finite and >= 0.
        timestamp: when the transaction happened (naive is taken as UTC).
        score: the model's fraud probability in [0, 1].
        threshold: the alerting threshold in [0, 1] in force when it was scored.
        model: name/version of the model that scored it.
        created_at: when the alert was raised (default: now).
        status: one of ``ALERT_STATUSES``; "open" until an analyst decides.
        decision_by: the analyst who decided, None while open.
        decided_at: when it was decided, None while open.
        note: the analyst's note.
        explanation: JSON-ready dict (feature attributions, graph neighbours), or None.
    """

    transaction_id: str
    customer_id: str
    terminal_id: str
    amount: float
    timestamp: datetime
    score: float
    threshold: float
    model: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "open"
    decision_by: str | None = None
    decided_at: datetime | None = None
    note: str | None = None
    explanation: dict[str, Any] | None = None


_FIELDS = tuple(f.name for f in fields(Alert))


# --- validation -------------------------------------------------------------------------------------------
def _id(name: str, value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # e.g. a pandas column of ids read as float
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_ID:
        raise ValueError(f"{name} must be a non-empty id of at most {MAX_ID} characters, got {value!r}")
    return value.strip()


def _optional_text(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be text or None, got {type(value).__name__}")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return number


def _utc(name: str, value: Any) -> datetime:
    """``value`` as a timezone-aware UTC datetime (naive is taken as UTC; ISO text is parsed)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a datetime or ISO 8601 text, got {value!r}") from None
    if value is pd.NaT or not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {value!r}")
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _explanation(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"explanation must be a JSON object (dict) or None, got {type(value).__name__}")
    try:
        # strict JSON (no NaN: PostgreSQL refuses it), and returned as it will read back
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"explanation is not JSON-serialisable: {err}") from err


def _status(value: Any, allowed: tuple[str, ...] = ALERT_STATUSES, name: str = "status") -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_alert(alert: Alert | Mapping[str, Any]) -> Alert:
    """``alert`` validated and normalised (ids stripped, datetimes UTC, floats, JSON explanation)."""
    if isinstance(alert, Mapping):
        try:
            alert = Alert(**alert)
        except TypeError as err:  # it names the unknown or missing field
            raise ValueError(f"bad alert fields ({err}); fields are {list(_FIELDS)}") from None
    elif not isinstance(alert, Alert):
        raise TypeError(f"expected an Alert or a mapping, got {type(alert).__name__}")
    return replace(
        alert,
        transaction_id=_id("transaction_id", alert.transaction_id),
        customer_id=_id("customer_id", alert.customer_id),
        terminal_id=_id("terminal_id", alert.terminal_id),
        amount=_number("amount", alert.amount, 0.0, math.inf),
        timestamp=_utc("timestamp", alert.timestamp),
        score=_number("score", alert.score, 0.0, 1.0),
        threshold=_number("threshold", alert.threshold, 0.0, 1.0),
        model=_id("model", alert.model),
        created_at=_utc("created_at", alert.created_at),
        status=_status(alert.status),
        decision_by=None if alert.decision_by is None else _id("decision_by", alert.decision_by),
        decided_at=None if alert.decided_at is None else _utc("decided_at", alert.decided_at),
        note=_optional_text("note", alert.note),
        explanation=_explanation(alert.explanation),
    )


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# --- SQL model --------------------------------------------------------------------------------------------
class _UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out: SQLite keeps no offset, so UTC is stored there without one."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc("datetime", value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Base(DeclarativeBase):
    metadata = MetaData()


class _AlertRow(_Base):
    __tablename__ = "fraud_alerts"
    __table_args__ = (
        Index("ix_fraud_alerts_status_score", "status", "score"),
        Index("ix_fraud_alerts_status_timestamp", "status", "timestamp"),
    )

    transaction_id: Mapped[str] = mapped_column(String(MAX_ID), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(MAX_ID), index=True)
    terminal_id: Mapped[str] = mapped_column(String(MAX_ID))
    amount: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[datetime] = mapped_column(_UTCDateTime)
    day: Mapped[date] = mapped_column(Date)  # UTC day of ``timestamp``: a portable GROUP BY for by_day
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(MAX_ID))
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    decision_by: Mapped[str | None] = mapped_column(String(MAX_ID))
    decided_at: Mapped[datetime | None] = mapped_column(_UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)
    explanation: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


def _row_values(alert: Alert) -> dict[str, Any]:
    return {**{name: getattr(alert, name) for name in _FIELDS}, "day": alert.timestamp.date()}


def _to_alert(row: _AlertRow) -> Alert:
    return Alert(**{name: getattr(row, name) for name in _FIELDS})


def _sql_url(url_or_path: str | Path) -> str:
    text = str(url_or_path)
    if isinstance(url_or_path, Path) or "://" not in text:
        if not text.strip():
            raise ValueError("AlertStore needs a database URL or a file path, got an empty string")
        return "sqlite://" if text == ":memory:" else f"sqlite:///{Path(text).expanduser()}"
    return text


# --- the store --------------------------------------------------------------------------------------------
class AlertStore:
    """The alert queue in a SQL database (table ``fraud_alerts``, created on opening).

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path.db`` (the folder is created), ``sqlite://`` (in
            memory, one shared connection), ``postgresql[+driver]://...``, or a plain file path,
            which means a SQLite file.

    Raises:
        ValueError: not a SQLite or PostgreSQL URL.
        ImportError: the URL's database driver is not installed.
    """

    def __init__(self, url: str | Path = "sqlite:///alerts.db") -> None:
        self.url = _sql_url(url)
        self._engine = sql_engine(self.url, store="alert store", owner="AlertStore")
        _Base.metadata.create_all(self._engine)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    @classmethod
    def open(cls, url_or_path: str | Path) -> AlertStore:
        """The store at a database URL or a SQLite file path."""
        return cls(url_or_path)

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------------
    def _insert(self, session: Any, rows: list[dict[str, Any]]) -> int:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        new = 0
        for start in range(0, len(rows), _INSERT_CHUNK):
            statement = (
                insert(_AlertRow)
                .values(rows[start : start + _INSERT_CHUNK])
                .on_conflict_do_nothing(index_elements=["transaction_id"])
                .returning(_AlertRow.transaction_id)  # rowcount of a multi-row INSERT is -1 on psycopg
            )
            new += len(session.execute(statement).all())
        return new

    def add(self, alert: Alert | Mapping[str, Any]) -> bool:
        """Add one alert; False (and nothing changes) when its transaction already has an alert.

        Raises:
            ValueError: a field is missing or invalid (the message names it).
        """
        return self.add_many([alert]) == 1

    def add_many(self, alerts: Iterable[Alert | Mapping[str, Any]]) -> int:
        """Add alerts in one transaction (all or none on error); returns how many were new.

        Alerts whose transaction already has one, in the store or earlier in ``alerts``, are skipped.

        Raises:
            ValueError: an alert is invalid; the message gives its position and the field.
        """
        rows = []
        for i, alert in enumerate(alerts):
            try:
                rows.append(_row_values(_check_alert(alert)))
            except ValueError as err:
                raise ValueError(f"alert {i}: {err}") from err
        if not rows:
            return 0
        with self._sessions.begin() as session:
            return self._insert(session, rows)

    def decide(self, transaction_id: str, decision: str, analyst: str, note: str | None = None) -> Alert:
        """Record an analyst's decision ("fraud" or "legitimate"); deciding again overwrites it.

        Returns:
            The alert as stored after the decision.

        Raises:
            KeyError: no alert for ``transaction_id``.
            ValueError: a decision other than those above, or an empty analyst.
        """
        tid = _id("transaction_id", transaction_id)
        _status(decision, DECISIONS, "decision")
        analyst, note = _id("analyst", analyst), _optional_text("note", note)
        values = {"status": decision, "decision_by": analyst, "decided_at": datetime.now(UTC), "note": note}
        with self._sessions.begin() as session:
            # the UPDATE comes first so that on SQLite the transaction starts by taking the write lock
            session.execute(update(_AlertRow).where(_AlertRow.transaction_id == tid).values(values))
            row = session.get(_AlertRow, tid)
            if row is None:
                raise KeyError(f"no alert for transaction {tid!r}")
            return _to_alert(row)

    # --- reading -----------------------------------------------------------------------------------
    def get(self, transaction_id: str) -> Alert | None:
        """The alert of a transaction, or None."""
        tid = _id("transaction_id", transaction_id)
        with self._sessions() as session:
            row = session.get(_AlertRow, tid)
            return None if row is None else _to_alert(row)

    def queue(
        self,
        status: str | None = "open",
        limit: int = 100,
        offset: int = 0,
        customer_id: str | None = None,
        min_score: float | None = None,
        order: str = "score",
    ) -> list[Alert]:
        """A page of alerts for the analysts' queue.

        Args:
            status: one of ``ALERT_STATUSES``, or None for all.
            limit: page size (>= 1).
            offset: alerts to skip (>= 0).
            customer_id: only this customer's alerts.
            min_score: only alerts scoring at least this.
            order: "score" (highest first) or "time" (newest transaction first); ties by newest
                transaction, then transaction id.
        """
        query = select(_AlertRow)
        if status is not None:
            query = query.where(_AlertRow.status == _status(status))
        if customer_id is not None:
            query = query.where(_AlertRow.customer_id == _id("customer_id", customer_id))
        if min_score is not None:
            query = query.where(_AlertRow.score >= _number("min_score", min_score, 0.0, 1.0))
        _status(order, ORDERS, "order")
        by_time = (_AlertRow.timestamp.desc(), _AlertRow.transaction_id)
        query = query.order_by(*((_AlertRow.score.desc(), *by_time) if order == "score" else by_time))
        query = query.limit(_check_count("limit", limit, 1)).offset(_check_count("offset", offset, 0))
        with self._sessions() as session:
            return [_to_alert(row) for row in session.scalars(query)]

    def count(self, status: str | None = None) -> int:
        """How many alerts have ``status`` (all alerts when None)."""
        query = select(func.count()).select_from(_AlertRow)
        if status is not None:
            query = query.where(_AlertRow.status == _status(status))
        with self._sessions() as session:
            return int(session.scalar(query) or 0)

    def counts(self) -> dict[str, int]:
        """Alerts per status, every status present (0 when none)."""
        query = select(_AlertRow.status, func.count()).group_by(_AlertRow.status)
        found = dict.fromkeys(ALERT_STATUSES, 0)
        with self._sessions() as session:
            for status, n in session.execute(query):
                found[status] = int(n)
        return found

    def labels(self, since: datetime | None = None) -> pd.DataFrame:
        """Decided alerts as training labels, oldest decision first.

        Args:
            since: only decisions made at or after this time (naive is taken as UTC).

        Returns:
            Columns ``transaction_id`` (str), ``label`` (bool: decided "fraud"), ``decided_at``
            (datetime64, UTC) and ``analyst`` (str); one row per decided alert.
        """
        query = select(
            _AlertRow.transaction_id, _AlertRow.status, _AlertRow.decided_at, _AlertRow.decision_by
        ).where(_AlertRow.status.in_(DECISIONS))
        if since is not None:
            query = query.where(_AlertRow.decided_at >= _utc("since", since))
        query = query.order_by(_AlertRow.decided_at, _AlertRow.transaction_id)
        with self._sessions() as session:
            rows = session.execute(query).all()
        table = pd.DataFrame(rows, columns=["transaction_id", "status", "decided_at", "analyst"])
        table.insert(1, "label", table.pop("status").eq("fraud"))
        table["decided_at"] = pd.to_datetime(table["decided_at"], utc=True).astype("datetime64[us, UTC]")
        return table.astype({"transaction_id": str, "analyst": str})

    def by_day(self) -> pd.DataFrame:
        """Alerts per UTC day of the transaction, for metrics over time.

        Returns:
            Indexed by ``day`` (UTC midnight, timezone-aware, ascending; days without alerts are
            absent), columns ``n_alerts``, ``n_fraud``, ``n_legitimate``, ``n_open`` (int64).
        """
        query = (
            select(_AlertRow.day, _AlertRow.status, func.count())
            .group_by(_AlertRow.day, _AlertRow.status)
            .order_by(_AlertRow.day)
        )
        with self._sessions() as session:
            rows = session.execute(query).all()
        columns = [f"n_{status}" for status in DECISIONS] + ["n_open"]
        per_day: dict[date, dict[str, int]] = {}
        for day, status, n in rows:
            per_day.setdefault(day, dict.fromkeys(columns, 0))[f"n_{status}"] = int(n)
        index = pd.DatetimeIndex([pd.Timestamp(day, tz="UTC") for day in per_day], name="day")
        table = pd.DataFrame(list(per_day.values()), index=index, columns=columns, dtype="int64")
        table.insert(0, "n_alerts", table.sum(axis=1).astype("int64"))
        return table

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()
