"""The one feature engine of the fraud app: batch scoring, streaming scoring and training all use it.

``FeatureState`` consumes transactions in time order. For each transaction ``score`` returns its
feature vector computed only from what came before it (no leakage): the card's counts and mean
amounts over 1, 7 and 30 days, the amount's z-score against the card's last 30 days, whether the
card used this terminal in the last 30 days, the terminal's traffic and fraud rate over 1, 7 and 30
days using only labels of transactions older than ``label_delay_days`` (fraud is known only days
later), and the time of day (cyclic), weekday, weekend and night flags. ``update`` then adds the
transaction to the state. ``batch_features`` runs the same engine over a DataFrame, so a model
trained on batch features sees exactly what the stream scorer computes::

    state = FeatureState()
    for tx in stream:                 # connectors.streams.schema.Transaction, in time order
        x = state.score(tx)           # (len(FEATURE_NAMES),) floats
        state.update(tx)
    state.add_label("123", True)      # feedback arrives later; counted once it is old enough
    state.save("state.json")          # JSON, no pickle

Shapes: ``score`` -> list of ``len(FEATURE_NAMES)`` floats; ``batch_features(df)`` -> DataFrame
``(len(df), len(FEATURE_NAMES))`` with ``df``'s index.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DAY = 86_400.0
WINDOWS_DAYS = (1, 7, 30)
NIGHT_HOURS = (0.0, 6.0)  # [start, end) in hours UTC
STATE_FORMAT = "fathom-fraud-feature-state/1"

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "card_n_1d",
    "card_mean_amount_1d",
    "card_n_7d",
    "card_mean_amount_7d",
    "card_n_30d",
    "card_mean_amount_30d",
    "card_amount_z_30d",
    "card_new_terminal_30d",
    "terminal_n_1d",
    "terminal_risk_1d",
    "terminal_n_7d",
    "terminal_risk_7d",
    "terminal_n_30d",
    "terminal_risk_30d",
    "hour_sin",
    "hour_cos",
    "weekday",
    "is_weekend",
    "is_night",
)


@dataclass(frozen=True)
class _Tx:
    transaction_id: str
    time: float  # seconds since the Unix epoch, UTC
    customer_id: str
    terminal_id: str
    amount: float
    label: bool | None


def _as_tx(tx: Any) -> _Tx:
    """A ``Transaction`` (or anything with its attributes) or a mapping with canonical keys -> ``_Tx``."""
    get = tx.get if isinstance(tx, Mapping) else lambda name, default=None: getattr(tx, name, default)
    missing = [
        name
        for name in ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount")
        if get(name) is None
    ]
    if missing:
        raise ValueError(f"transaction lacks {', '.join(missing)}")
    stamp = get("timestamp")
    if not isinstance(stamp, _dt.datetime):
        raise ValueError(f"timestamp must be a datetime, got {type(stamp).__name__}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.UTC)
    amount = float(get("amount"))
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"transaction {get('transaction_id')}: amount must be finite and >= 0, got {amount}")
    label = get("label")
    if label is not None and not isinstance(label, bool):
        label = None if pd.isna(label) else bool(label)
    return _Tx(
        str(get("transaction_id")),
        stamp.timestamp(),
        str(get("customer_id")),
        str(get("terminal_id")),
        amount,
        label,
    )


class _Window:
    """Entries ``[time, value, flag]`` of the last ``span`` seconds, with running sums."""

    __slots__ = ("span", "entries", "n", "total", "total_sq", "flags")

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[list[Any]] = deque()
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.flags = 0

    def add(self, entry: list[Any]) -> None:
        self.entries.append(entry)
        self.n += 1
        self.total += entry[1]
        self.total_sq += entry[1] * entry[1]
        self.flags += entry[2]

    def expire(self, horizon: float) -> None:
        """Drop entries with time < ``horizon - span``."""
        cutoff = horizon - self.span
        while self.entries and self.entries[0][0] < cutoff:
            old = self.entries.popleft()
            self.n -= 1
            self.total -= old[1]
            self.total_sq -= old[1] * old[1]
            self.flags -= old[2]
        if self.n == 0:  # reset so rounding residue never outlives the entries
            self.total = self.total_sq = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": list(self.entries),
            "n": self.n,
            "total": self.total,
            "total_sq": self.total_sq,
            "flags": self.flags,
        }

    @classmethod
    def from_json(cls, span: float, data: Mapping[str, Any]) -> _Window:
        window = cls(span)
        window.entries = deque(list(e) for e in data["entries"])
        window.n, window.total, window.total_sq, window.flags = (
            int(data["n"]),
            float(data["total"]),
            float(data["total_sq"]),
            int(data["flags"]),
        )
        return window


class FeatureState:
    """Incremental per-card and per-terminal state; see the module docstring.

    Args:
        label_delay_days: a transaction's label is used for terminal risk only once the
            transaction is this many days old (default 7: investigations take about a week).
        min_std: floor of the card's amount standard deviation in the z-score, so a card with a
            few equal amounts does not give huge scores.

    Transactions must arrive in non-decreasing time order; one earlier than the last is an error
    (sort first, or drop it to a dead-letter queue).
    """

    def __init__(self, label_delay_days: float = 7.0, min_std: float = 1.0) -> None:
        if not (math.isfinite(label_delay_days) and label_delay_days >= 0):
            raise ValueError(f"label_delay_days must be a finite number >= 0, got {label_delay_days}")
        if not (math.isfinite(min_std) and min_std > 0):
            raise ValueError(f"min_std must be > 0, got {min_std}")
        self.label_delay_days = float(label_delay_days)
        self.min_std = float(min_std)
        self.now = -math.inf
        # card -> 3 windows of [time, amount, 0]; card -> {terminal: last time} (30 days)
        self._cards: dict[str, list[_Window]] = {}
        self._card_terminals: dict[str, dict[str, float]] = {}
        # terminal -> pending entries [time, 1, fraud, transaction_id] younger than the delay,
        # and 3 windows of matured entries (same lists, so a late label can be applied).
        self._pending: dict[str, deque[list[Any]]] = {}
        self._terminals: dict[str, list[_Window]] = {}
        self._by_id: dict[str, tuple[str, list[Any]]] = {}
        self._matured: deque[tuple[float, str]] = deque()  # (time, transaction_id) for pruning _by_id

    @property
    def delay(self) -> float:
        return self.label_delay_days * DAY

    # --- advancing time -------------------------------------------------------------------------
    def _advance(self, tx: _Tx) -> None:
        if tx.time < self.now:
            raise ValueError(
                f"transaction {tx.transaction_id} at {_iso(tx.time)} is earlier than the last one seen "
                f"({_iso(self.now)}); feed transactions in time order"
            )
        self.now = tx.time

    def _card_windows(self, card: str) -> list[_Window]:
        windows = self._cards.get(card)
        if windows is None:
            windows = self._cards[card] = [_Window(d * DAY) for d in WINDOWS_DAYS]
            self._card_terminals[card] = {}
        for window in windows:
            window.expire(self.now)
        return windows

    def _terminal_windows(self, terminal: str) -> list[_Window]:
        windows = self._terminals.get(terminal)
        if windows is None:
            windows = self._terminals[terminal] = [_Window(d * DAY) for d in WINDOWS_DAYS]
            self._pending[terminal] = deque()
        mature_before = self.now - self.delay
        pending = self._pending[terminal]
        while pending and pending[0][0] < mature_before:
            entry = pending.popleft()
            for window in windows:
                window.add(entry)
            self._matured.append((entry[0], entry[3]))
        for window in windows:
            window.expire(mature_before)
        # forget ids whose entries left every window: their late labels can no longer count
        forget_before = mature_before - WINDOWS_DAYS[-1] * DAY
        while self._matured and self._matured[0][0] < forget_before:
            self._by_id.pop(self._matured.popleft()[1], None)
        return windows

    # --- public API ------------------------------------------------------------------------------
    def score(self, tx: Any) -> list[float]:
        """The feature vector of ``tx`` from the past only; ``tx`` itself is not added.

        Args:
            tx: a ``Transaction`` or a mapping with ``transaction_id, timestamp, customer_id,
                terminal_id, amount`` (``label`` is not read here).

        Returns:
            ``len(FEATURE_NAMES)`` floats in ``FEATURE_NAMES`` order.
        """
        t = _as_tx(tx)
        self._advance(t)
        card = self._card_windows(t.customer_id)
        terminal = self._terminal_windows(t.terminal_id)
        out = [t.amount]
        for window in card:
            out += [float(window.n), window.total / window.n if window.n else 0.0]
        month = card[-1]
        if month.n >= 2:
            mean = month.total / month.n
            var = max(month.total_sq / month.n - mean * mean, 0.0)
            z = (t.amount - mean) / max(math.sqrt(var), self.min_std)
        else:
            z = 0.0
        seen = self._card_terminals[t.customer_id].get(t.terminal_id)
        out += [z, 0.0 if seen is not None and seen >= self.now - WINDOWS_DAYS[-1] * DAY else 1.0]
        for window in terminal:
            out += [float(window.n), window.flags / window.n if window.n else 0.0]
        stamp = _dt.datetime.fromtimestamp(t.time, _dt.UTC)
        hour = stamp.hour + stamp.minute / 60 + stamp.second / 3600
        weekday = stamp.weekday()
        out += [
            math.sin(2 * math.pi * hour / 24),
            math.cos(2 * math.pi * hour / 24),
            float(weekday),
            float(weekday >= 5),
            float(NIGHT_HOURS[0] <= hour < NIGHT_HOURS[1]),
        ]
        return out

    def update(self, tx: Any) -> None:
        """Add ``tx`` (with its label, if it has one) to the state.

        Args:
            tx: as for ``score``; call ``score`` first to get its features.
        """
        t = _as_tx(tx)
        self._advance(t)
        for window in self._card_windows(t.customer_id):
            window.add([t.time, t.amount, 0])
        seen = self._card_terminals[t.customer_id]
        seen[t.terminal_id] = t.time
        if len(seen) > 64:  # keep the map small: drop terminals not used for 30 days
            horizon = self.now - WINDOWS_DAYS[-1] * DAY
            for key in [k for k, v in seen.items() if v < horizon]:
                del seen[key]
        self._terminal_windows(t.terminal_id)
        entry = [t.time, 1.0, int(bool(t.label)), t.transaction_id]
        self._pending[t.terminal_id].append(entry)
        self._by_id[t.transaction_id] = (t.terminal_id, entry)

    def score_and_update(self, tx: Any) -> list[float]:
        """``score(tx)`` then ``update(tx)``: the streaming step."""
        features = self.score(tx)
        self.update(tx)
        return features

    def add_label(self, transaction_id: str, label: bool) -> bool:
        """Record a label that arrived after the transaction (investigation feedback).

        It counts in terminal risk from when the transaction is ``label_delay_days`` old, or at once
        if it is already older. Returns False when the transaction is unknown or has left every
        window (then the label can no longer change any feature).
        """
        found = self._by_id.get(str(transaction_id))
        if found is None:
            return False
        terminal, entry = found
        new = int(bool(label))
        delta, entry[2] = new - entry[2], new
        if delta:
            for window in self._terminals[terminal]:
                if any(e is entry for e in window.entries):
                    window.flags += delta
        return True

    # --- persistence -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-ready values (floats round-trip exactly)."""
        return {
            "format": STATE_FORMAT,
            "label_delay_days": self.label_delay_days,
            "min_std": self.min_std,
            "now": None if self.now == -math.inf else self.now,
            "cards": {k: [w.to_json() for w in v] for k, v in self._cards.items()},
            "card_terminals": self._card_terminals,
            "terminals": {k: [w.to_json() for w in v] for k, v in self._terminals.items()},
            "pending": {k: list(v) for k, v in self._pending.items()},
            "matured": [list(m) for m in self._matured],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureState:
        """Rebuild a state from ``to_json`` output; entries shared between windows stay shared."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a feature state: format is {data.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        state = cls(data["label_delay_days"], data["min_std"])
        state.now = -math.inf if data["now"] is None else float(data["now"])
        spans = [d * DAY for d in WINDOWS_DAYS]
        state._cards = {
            k: [_Window.from_json(s, w) for s, w in zip(spans, v, strict=True)]
            for k, v in data["cards"].items()
        }
        state._card_terminals = {k: dict(v) for k, v in data["card_terminals"].items()}
        state._terminals = {
            k: [_Window.from_json(s, w) for s, w in zip(spans, v, strict=True)]
            for k, v in data["terminals"].items()
        }
        state._pending = {k: deque(list(e) for e in v) for k, v in data["pending"].items()}
        state._matured = deque((float(t), str(i)) for t, i in data["matured"])
        # re-link: one list object per transaction across the pending queue and the windows
        for terminal, windows in state._terminals.items():
            canon: dict[str, list[Any]] = {}
            for window in windows:
                window.entries = deque(canon.setdefault(e[3], e) for e in window.entries)
            for entry in state._pending[terminal]:
                canon[entry[3]] = entry
            for tid, entry in canon.items():
                state._by_id[tid] = (terminal, entry)
        return state

    def save(self, path: str | Path) -> Path:
        """Write the state as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureState:
        """Read a state written by ``save``."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg} at position {err.pos})") from None
        return cls.from_json(data)


def _iso(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "the start"
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).isoformat()


REQUIRED_COLUMNS = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount")


def batch_features(
    df: pd.DataFrame, state: FeatureState | None = None, *, label_delay_days: float = 7.0
) -> pd.DataFrame:
    """Features of every row of ``df`` by running ``FeatureState`` over it in time order.

    Args:
        df: canonical transactions (``transaction_id, timestamp, customer_id, terminal_id, amount``,
            optional ``label``), any order; ties in time keep their order in ``df``.
        state: continue from this state (it is updated); a fresh one otherwise.
        label_delay_days: for a fresh state, see ``FeatureState``.

    Returns:
        DataFrame of shape ``(len(df), len(FEATURE_NAMES))``, columns ``FEATURE_NAMES``, ``df``'s index.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"batch_features: missing column(s) {', '.join(missing)}; have {list(df.columns)}")
    state = state if state is not None else FeatureState(label_delay_days=label_delay_days)
    stamps = pd.to_datetime(df["timestamp"], utc=True)
    order = stamps.argsort(kind="stable")
    labels: Iterable[Any] = df["label"] if "label" in df.columns else [None] * len(df)
    columns = zip(
        df["transaction_id"],
        stamps,
        df["customer_id"],
        df["terminal_id"],
        df["amount"],
        labels,
        strict=True,
    )
    rows = list(columns)
    out: list[list[float] | None] = [None] * len(rows)
    for i in order:
        tid, stamp, card, terminal, amount, label = rows[i]
        tx = {
            "transaction_id": tid,
            "timestamp": stamp,
            "customer_id": card,
            "terminal_id": terminal,
            "amount": amount,
            "label": label,
        }
        out[i] = state.score_and_update(tx)
    return pd.DataFrame(out, columns=list(FEATURE_NAMES), index=df.index)
