"""The one feature engine of the fraud app: batch scoring, streaming scoring and training all use it.

``FeatureState`` consumes transactions in time order. For each transaction ``score`` returns its
feature vector computed only from what came before it (no leakage): the card's counts and mean
amounts over 1, 7 and 30 days, the amount's z-score against the card's last 30 days, whether the
card used this terminal in the last 30 days, the terminal's traffic and fraud rate over 1, 7 and 30
days using only labels of transactions older than ``label_delay_days`` (fraud is known only days
later), and the time of day (cyclic), weekday, weekend and night flags. ``update`` then adds the
transaction to the state. ``apps.fraud.batch.prepare`` runs the same engine over a DataFrame, so a
model trained on batch features sees exactly what the stream scorer computes; ``apps.fraud.graph``
builds the day's card-terminal graph from the state::

    state = FeatureState()
    for tx in stream:                 # connectors.streams.schema.Transaction, in time order
        x = state.score(tx)           # (len(FEATURE_NAMES),) floats
        state.update(tx)
    state.add_label("123", True)      # feedback arrives later; counted once it is old enough
    state.save("state.json")          # JSON, no pickle

Shapes: ``score`` -> list of ``len(FEATURE_NAMES)`` floats.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from apps.fraud.graph import GraphSnapshot, build_snapshot

DAY = 86_400.0
WINDOWS_DAYS = (1, 7, 30)
SPANS = tuple(d * DAY for d in WINDOWS_DAYS)
NIGHT_HOURS = (0.0, 6.0)  # [start, end) in hours UTC
STATE_FORMAT = "fathom-fraud-feature-state/3"
SEQ_LEN = 16  # transactions in a card's sequence, the scored one last
MAX_GAP_HOURS = 30 * 24.0  # the gap before a card's first transaction, and the cap of every gap
STEP_NAMES: tuple[str, ...] = (
    "log_amount",
    "log_gap_hours",
    "hour_sin",
    "hour_cos",
    "new_terminal",
    "present",  # 1 for a real step, 0 for left padding
)

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


class _Card:
    """One card's state: its last 30 days of ``(time, amount)`` and running sums per window.

    ``n[w]``/``total[w]`` cover the newest ``n[w]`` entries, those inside window ``w`` of
    ``WINDOWS_DAYS`` (the 30-day window is the whole deque, expired from the left).
    """

    __slots__ = ("entries", "n", "total", "total_sq", "last", "terminals", "seq", "next_change")

    def __init__(self) -> None:
        self.next_change = math.inf  # no window changes while the clock is at or before this
        self.entries: deque[tuple[float, float]] = deque()
        self.n = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.total_sq = 0.0
        self.last: float | None = None  # time of the card's last transaction
        self.terminals: dict[str, float] = {}  # terminal -> last use (pruned beyond 64 entries)
        self.seq: deque[tuple[float, ...]] = deque(maxlen=SEQ_LEN - 1)

    def reschedule(self) -> None:
        """``next_change``: the earliest clock at which an entry leaves a window."""
        entries, n = self.entries, self.n
        if not entries:
            self.next_change = math.inf
            return
        nearest = entries[0][0] + SPANS[2]
        if n[0]:
            nearest = min(nearest, entries[-n[0]][0] + SPANS[0])
        if n[1]:
            nearest = min(nearest, entries[-n[1]][0] + SPANS[1])
        self.next_change = nearest

    def expire(self, now: float) -> None:
        if now <= self.next_change:
            return
        entries, n, total = self.entries, self.n, self.total
        for w in (0, 1):
            k, cutoff = n[w], now - SPANS[w]
            while k and entries[-k][0] < cutoff:
                total[w] -= entries[-k][1]
                k -= 1
            if k != n[w]:
                n[w] = k
                if k == 0:  # reset so rounding residue never outlives the entries
                    total[w] = 0.0
        cutoff = now - SPANS[2]
        if entries[0][0] < cutoff:
            while entries and entries[0][0] < cutoff:
                amount = entries.popleft()[1]
                total[2] -= amount
                self.total_sq -= amount * amount
                n[2] -= 1
            if n[2] == 0:
                total[2] = self.total_sq = 0.0
        self.reschedule()

    def add(self, t: float, amount: float) -> None:
        if t + SPANS[0] < self.next_change:
            self.next_change = t + SPANS[0]
        self.entries.append((t, amount))
        n, total = self.n, self.total
        n[0] += 1
        n[1] += 1
        n[2] += 1
        total[0] += amount
        total[1] += amount
        total[2] += amount
        self.total_sq += amount * amount

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [list(e) for e in self.entries],
            "n": self.n,
            "total": self.total,
            "total_sq": self.total_sq,
            "last": self.last,
            "terminals": self.terminals,
            "seq": [list(v) for v in self.seq],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Card:
        card = cls()
        card.entries = deque((float(t), float(a)) for t, a in data["entries"])
        card.n = [int(v) for v in data["n"]]
        card.total = [float(v) for v in data["total"]]
        card.total_sq = float(data["total_sq"])
        card.last = None if data["last"] is None else float(data["last"])
        card.terminals = {str(k): float(v) for k, v in data["terminals"].items()}
        card.seq = deque((tuple(float(x) for x in v) for v in data["seq"]), maxlen=SEQ_LEN - 1)
        card.reschedule()
        return card


class _Terminal:
    """One terminal's transactions: ``pending`` (younger than the label delay) and ``matured``.

    Entries are lists ``[time, fraud, transaction_id]`` shared with ``FeatureState._by_id``, so a
    late label can flip ``fraud``. ``n[w]``/``flags[w]`` cover the newest ``n[w]`` matured entries,
    those inside window ``w`` counted back from the maturity horizon (now - delay).
    """

    __slots__ = ("pending", "matured", "n", "flags", "next_change")

    def __init__(self) -> None:
        self.next_change = math.inf  # nothing matures or expires while now - delay is at or before this
        self.pending: deque[list[Any]] = deque()
        self.matured: deque[list[Any]] = deque()
        self.n = [0, 0, 0]
        self.flags = [0, 0, 0]

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": list(self.pending),
            "matured": list(self.matured),
            "n": self.n,
            "flags": self.flags,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Terminal:
        terminal = cls()
        terminal.pending = deque([float(t), int(f), str(i)] for t, f, i in data["pending"])
        terminal.matured = deque([float(t), int(f), str(i)] for t, f, i in data["matured"])
        terminal.n = [int(v) for v in data["n"]]
        terminal.flags = [int(v) for v in data["flags"]]
        terminal.reschedule()
        return terminal

    def reschedule(self) -> None:
        """``next_change`` in maturity-horizon time: the earliest ``now - delay`` that changes anything."""
        matured, n = self.matured, self.n
        nearest = self.pending[0][0] if self.pending else math.inf
        if matured:
            nearest = min(nearest, matured[0][0] + SPANS[2])
            if n[0]:
                nearest = min(nearest, matured[-n[0]][0] + SPANS[0])
            if n[1]:
                nearest = min(nearest, matured[-n[1]][0] + SPANS[1])
        self.next_change = nearest


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
        self._cards: dict[str, _Card] = {}
        self._terminals: dict[str, _Terminal] = {}
        self._by_id: dict[str, tuple[str, list[Any]]] = {}  # transaction id -> (terminal, entry)
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

    def _card(self, card: str) -> _Card:
        state = self._cards.get(card)
        if state is None:
            state = self._cards[card] = _Card()
        else:
            state.expire(self.now)
        return state

    def _terminal(self, terminal: str) -> _Terminal:
        state = self._terminals.get(terminal)
        if state is None:
            state = self._terminals[terminal] = _Terminal()
            return state
        mature_before = self.now - self.delay
        # forget ids whose entries left every window: their late labels can no longer count
        log, cutoff = self._matured, mature_before - SPANS[2]
        while log and log[0][0] < cutoff:
            self._by_id.pop(log.popleft()[1], None)
        if mature_before <= state.next_change:
            return state
        pending, matured, n, flags = state.pending, state.matured, state.n, state.flags
        if pending and pending[0][0] < mature_before:
            log = self._matured
            while pending and pending[0][0] < mature_before:
                entry = pending.popleft()
                matured.append(entry)
                fraud = entry[1]
                n[0] += 1
                n[1] += 1
                n[2] += 1
                flags[0] += fraud
                flags[1] += fraud
                flags[2] += fraud
                log.append((entry[0], entry[2]))
        if matured:
            for w in (0, 1):
                k, cutoff = n[w], mature_before - SPANS[w]
                while k and matured[-k][0] < cutoff:
                    flags[w] -= matured[-k][1]
                    k -= 1
                n[w] = k
            cutoff = mature_before - SPANS[2]
            while matured and matured[0][0] < cutoff:
                flags[2] -= matured.popleft()[1]
                n[2] -= 1
        state.reschedule()
        return state

    # --- the engine on primitives (one code path for score, update and the batch loop) ------------
    @staticmethod
    def _step_vector(t: float, c: _Card, terminal: str, amount: float) -> tuple[float, ...]:
        """One element of the card's sequence (``STEP_NAMES``), from the past and ``tx`` itself."""
        last = c.last
        gap_hours = MAX_GAP_HOURS if last is None else min((t - last) / 3600.0, MAX_GAP_HOURS)
        seen = c.terminals.get(terminal)
        new_terminal = 0.0 if seen is not None and seen >= t - SPANS[2] else 1.0
        angle = 2 * math.pi * ((t % DAY) / 3600.0) / 24
        log_amount, log_gap = math.log1p(amount), math.log1p(gap_hours)
        return (log_amount, log_gap, math.sin(angle), math.cos(angle), new_terminal, 1.0)

    def _score_raw(
        self, t: float, card: str, terminal: str, amount: float
    ) -> tuple[list[float], _Card, _Terminal]:
        """Features of a transaction at ``t`` (the clock is there already); its card and terminal state."""
        c = self._card(card)
        m = self._terminal(terminal)
        n, total = c.n, c.total
        out = [
            amount,
            float(n[0]),
            total[0] / n[0] if n[0] else 0.0,
            float(n[1]),
            total[1] / n[1] if n[1] else 0.0,
            float(n[2]),
            total[2] / n[2] if n[2] else 0.0,
        ]
        if n[2] >= 2:
            mean = total[2] / n[2]
            var = max(c.total_sq / n[2] - mean * mean, 0.0)
            z = (amount - mean) / max(math.sqrt(var), self.min_std)
        else:
            z = 0.0
        seen = c.terminals.get(terminal)
        tn, tf = m.n, m.flags
        hour = (t % DAY) / 3600.0
        weekday = (int(t // DAY) + 3) % 7  # 1970-01-01 was a Thursday
        angle = 2 * math.pi * hour / 24
        out += [
            z,
            0.0 if seen is not None and seen >= t - SPANS[2] else 1.0,
            float(tn[0]),
            tf[0] / tn[0] if tn[0] else 0.0,
            float(tn[1]),
            tf[1] / tn[1] if tn[1] else 0.0,
            float(tn[2]),
            tf[2] / tn[2] if tn[2] else 0.0,
            math.sin(angle),
            math.cos(angle),
            float(weekday),
            float(weekday >= 5),
            float(NIGHT_HOURS[0] <= hour < NIGHT_HOURS[1]),
        ]
        return out, c, m

    def _update_raw(
        self,
        tid: str,
        t: float,
        c: _Card,
        m: _Terminal,
        terminal: str,
        amount: float,
        label: bool | None,
        step: tuple[float, ...],
    ) -> None:
        """Add a transaction to its card's and terminal's state (both brought to ``t`` already)."""
        c.add(t, amount)
        seen = c.terminals
        seen[terminal] = t
        if len(seen) > 64:  # keep the map small: drop terminals not used for 30 days
            horizon = self.now - SPANS[2]
            for key in [k for k, v in seen.items() if v < horizon]:
                del seen[key]
        c.last = t
        c.seq.append(step)
        entry = [t, 1 if label else 0, tid]
        if t < m.next_change:
            m.next_change = t
        m.pending.append(entry)
        self._by_id[tid] = (terminal, entry)

    def step(
        self, tid: str, t: float, card: str, terminal: str, amount: float, label: bool | None = None
    ) -> tuple[list[float], tuple[float, ...]]:
        """``score_and_update`` on primitives, for loops over many rows: ``(features, step vector)``.

        Args:
            tid, card, terminal: string ids; t: seconds since the epoch (UTC); amount: finite >= 0;
            label: the transaction's label when known now (else None).
        """
        if t < self.now:
            self._advance(_Tx(tid, t, card, terminal, amount, label))  # raises, naming the transaction
        self.now = t
        features, c, m = self._score_raw(t, card, terminal, amount)
        vector = self._step_vector(t, c, terminal, amount)
        self._update_raw(tid, t, c, m, terminal, amount, label, vector)
        return features, vector

    def sequence(self, card: str) -> list[tuple[float, ...]]:
        """The step vectors of the card's last ``SEQ_LEN - 1`` transactions, oldest first."""
        state = self._cards.get(str(card))
        return [] if state is None else list(state.seq)

    def graph_snapshot(self, at: float | None = None) -> GraphSnapshot:
        """The card-terminal graph from everything before ``at`` (seconds; default: now).

        Advances the state's clock to ``at``: later transactions must not be earlier than it.
        See ``apps.fraud.graph.build_snapshot``.
        """
        return build_snapshot(self, at)

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
        return self._score_raw(t.time, t.customer_id, t.terminal_id, t.amount)[0]

    def step_vector(self, tx: Any) -> tuple[float, ...]:
        """The sequence element ``tx`` adds to its card (``STEP_NAMES``); call before ``update``."""
        t = _as_tx(tx)
        c = self._cards.get(t.customer_id) or _Card()
        return self._step_vector(t.time, c, t.terminal_id, t.amount)

    def update(self, tx: Any) -> None:
        """Add ``tx`` (with its label, if it has one) to the state.

        Args:
            tx: as for ``score``; call ``score`` first to get its features.
        """
        t = _as_tx(tx)
        self._advance(t)
        c, m = self._card(t.customer_id), self._terminal(t.terminal_id)
        vector = self._step_vector(t.time, c, t.terminal_id, t.amount)
        self._update_raw(t.transaction_id, t.time, c, m, t.terminal_id, t.amount, t.label, vector)

    def score_and_update(self, tx: Any) -> list[float]:
        """``score(tx)`` then ``update(tx)``: the streaming step."""
        t = _as_tx(tx)
        return self.step(t.transaction_id, t.time, t.customer_id, t.terminal_id, t.amount, t.label)[0]

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
        delta, entry[1] = new - entry[1], new
        if delta:
            m = self._terminals[terminal]
            matured = m.matured
            for back in range(1, len(matured) + 1):  # position from the newest end
                if matured[-back] is entry:
                    for w in (0, 1, 2):
                        if back <= m.n[w]:
                            m.flags[w] += delta
                    break
        return True

    # --- persistence -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-ready values (floats round-trip exactly)."""
        return {
            "format": STATE_FORMAT,
            "label_delay_days": self.label_delay_days,
            "min_std": self.min_std,
            "now": None if self.now == -math.inf else self.now,
            "cards": {k: v.to_json() for k, v in self._cards.items()},
            "terminals": {k: v.to_json() for k, v in self._terminals.items()},
            "matured": [list(m) for m in self._matured],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureState:
        """Rebuild a state from ``to_json`` output; entries shared with the id map stay shared."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a feature state: format is {data.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        state = cls(data["label_delay_days"], data["min_std"])
        state.now = -math.inf if data["now"] is None else float(data["now"])
        state._cards = {k: _Card.from_json(v) for k, v in data["cards"].items()}
        state._terminals = {k: _Terminal.from_json(v) for k, v in data["terminals"].items()}
        state._matured = deque((float(t), str(i)) for t, i in data["matured"])
        known = {tid for _, tid in state._matured}  # matured ids not yet forgotten
        for terminal, m in state._terminals.items():
            for entry in m.matured:
                if entry[2] in known:
                    state._by_id[entry[2]] = (terminal, entry)
            for entry in m.pending:
                state._by_id[entry[2]] = (terminal, entry)
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
