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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAY = 86_400.0
WINDOWS_DAYS = (1, 7, 30)
NIGHT_HOURS = (0.0, 6.0)  # [start, end) in hours UTC
STATE_FORMAT = "fathom-fraud-feature-state/2"
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


CARD_NODE_NAMES: tuple[str, ...] = (
    "log_n_1d",
    "log_n_7d",
    "log_n_30d",
    "log_mean_amount_7d",
    "log_mean_amount_30d",
    "log_std_amount_30d",
    "log_terminals_30d",
)
TERMINAL_NODE_NAMES: tuple[str, ...] = (
    "log_n_7d",
    "log_n_30d",
    "risk_7d",
    "risk_30d",
    "log_pending",
    "log_cards_30d",
)


@dataclass
class GraphSnapshot:
    """The card-terminal graph as of ``time``, built from the state only (transactions before it).

    Nodes are the cards and terminals active in the last 30 days, plus one "unseen" node of each
    type (all-zero features, no edges) for a card or terminal the snapshot does not know. Edges join
    a card to each terminal it used in the last 30 days; ``edge_attr`` is the age of the last use
    in units of 30 days. Terminal features use matured labels only (``label_delay_days``).

    Shapes: ``x_card (n_cards + 1, len(CARD_NODE_NAMES))``, ``x_terminal (n_terminals + 1,
    len(TERMINAL_NODE_NAMES))``, ``edge_index (2, n_edges)`` int64 ``[card row; terminal row]``,
    ``edge_attr (n_edges, 1)``; all float32 but the index.
    """

    time: float
    card_ids: list[str]
    terminal_ids: list[str]
    x_card: np.ndarray
    x_terminal: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray

    def __post_init__(self) -> None:
        self.card_index = {c: i for i, c in enumerate(self.card_ids)}
        self.terminal_index = {t: i for i, t in enumerate(self.terminal_ids)}

    @property
    def unseen_card(self) -> int:
        return len(self.card_ids)

    @property
    def unseen_terminal(self) -> int:
        return len(self.terminal_ids)


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
        # card -> time of its last transaction; card -> its last SEQ_LEN - 1 step vectors
        self._card_last: dict[str, float] = {}
        self._card_seq: dict[str, deque[tuple[float, ...]]] = {}

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

    # --- the engine on primitives (one code path for score, update and the batch loop) ------------
    def _step_vector(self, t: float, card: str, terminal: str, amount: float) -> tuple[float, ...]:
        """One element of the card's sequence (``STEP_NAMES``), from the past and ``tx`` itself."""
        last = self._card_last.get(card)
        gap_hours = MAX_GAP_HOURS if last is None else min((t - last) / 3600.0, MAX_GAP_HOURS)
        seen = self._card_terminals.get(card, {}).get(terminal)
        new_terminal = 0.0 if seen is not None and seen >= t - WINDOWS_DAYS[-1] * DAY else 1.0
        hour = (t % DAY) / 3600.0
        angle = 2 * math.pi * hour / 24
        return (
            math.log1p(amount),
            math.log1p(gap_hours),
            math.sin(angle),
            math.cos(angle),
            new_terminal,
            1.0,
        )

    def _score_raw(self, t: float, card: str, terminal: str, amount: float) -> list[float]:
        cwin = self._card_windows(card)
        twin = self._terminal_windows(terminal)
        out = [amount]
        for window in cwin:
            out += [float(window.n), window.total / window.n if window.n else 0.0]
        month = cwin[-1]
        if month.n >= 2:
            mean = month.total / month.n
            var = max(month.total_sq / month.n - mean * mean, 0.0)
            z = (amount - mean) / max(math.sqrt(var), self.min_std)
        else:
            z = 0.0
        seen = self._card_terminals[card].get(terminal)
        out += [z, 0.0 if seen is not None and seen >= t - WINDOWS_DAYS[-1] * DAY else 1.0]
        for window in twin:
            out += [float(window.n), window.flags / window.n if window.n else 0.0]
        hour = (t % DAY) / 3600.0
        weekday = (int(t // DAY) + 3) % 7  # 1970-01-01 was a Thursday
        angle = 2 * math.pi * hour / 24
        out += [
            math.sin(angle),
            math.cos(angle),
            float(weekday),
            float(weekday >= 5),
            float(NIGHT_HOURS[0] <= hour < NIGHT_HOURS[1]),
        ]
        return out

    def _update_raw(
        self,
        tid: str,
        t: float,
        card: str,
        terminal: str,
        amount: float,
        label: bool | None,
        step: tuple[float, ...],
        *,
        fresh: bool = False,
    ) -> None:
        """Add a transaction; ``fresh``: the card's and terminal's windows were expired at ``t`` already."""
        cwin = self._cards[card] if fresh else self._card_windows(card)
        for window in cwin:
            window.add([t, amount, 0])
        seen = self._card_terminals[card]
        seen[terminal] = t
        if len(seen) > 64:  # keep the map small: drop terminals not used for 30 days
            horizon = self.now - WINDOWS_DAYS[-1] * DAY
            for key in [k for k, v in seen.items() if v < horizon]:
                del seen[key]
        if not fresh:
            self._terminal_windows(terminal)
        entry = [t, 1.0, int(bool(label)), tid]
        self._pending[terminal].append(entry)
        self._by_id[tid] = (terminal, entry)
        self._card_last[card] = t
        history = self._card_seq.get(card)
        if history is None:
            history = self._card_seq[card] = deque(maxlen=SEQ_LEN - 1)
        history.append(step)

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
        features = self._score_raw(t, card, terminal, amount)
        vector = self._step_vector(t, card, terminal, amount)
        self._update_raw(tid, t, card, terminal, amount, label, vector, fresh=True)
        return features, vector

    def sequence(self, card: str) -> list[tuple[float, ...]]:
        """The step vectors of the card's last ``SEQ_LEN - 1`` transactions, oldest first."""
        return list(self._card_seq.get(str(card), ()))

    def graph_snapshot(self, at: float | None = None) -> GraphSnapshot:
        """The card-terminal graph from everything before ``at`` (seconds; default: now).

        Advances the state's clock to ``at``: later transactions must not be earlier than it.
        """
        at = self.now if at is None else float(at)
        if at < self.now:
            raise ValueError(
                f"graph_snapshot at {_iso(at)} is earlier than the last transaction ({_iso(self.now)})"
            )
        self.now = at
        horizon = at - WINDOWS_DAYS[-1] * DAY
        terminal_ids: list[str] = []
        x_terminal: list[list[float]] = []
        log1p = math.log1p
        for terminal in list(self._terminals):
            windows = self._terminal_windows(terminal)
            pending = len(self._pending[terminal])
            if windows[-1].n == 0 and pending == 0:
                continue
            terminal_ids.append(terminal)
            week, month = windows[1], windows[2]
            x_terminal.append(
                [
                    log1p(week.n),
                    log1p(month.n),
                    week.flags / week.n if week.n else 0.0,
                    month.flags / month.n if month.n else 0.0,
                    log1p(pending),
                    0.0,  # cards, filled below
                ]
            )
        terminal_index = {t: i for i, t in enumerate(terminal_ids)}
        card_ids: list[str] = []
        x_card: list[list[float]] = []
        src: list[int] = []
        dst: list[int] = []
        age: list[float] = []
        degree = [0] * len(terminal_ids)
        for card in list(self._cards):
            windows = self._card_windows(card)
            day, week, month = windows
            if month.n == 0:
                continue
            row = len(card_ids)
            used = 0
            for terminal, last in self._card_terminals[card].items():
                j = terminal_index.get(terminal)
                if j is None or last < horizon:
                    continue
                src.append(row)
                dst.append(j)
                age.append((at - last) / (WINDOWS_DAYS[-1] * DAY))
                degree[j] += 1
                used += 1
            mean = month.total / month.n
            std = math.sqrt(max(month.total_sq / month.n - mean * mean, 0.0))
            card_ids.append(card)
            x_card.append(
                [
                    log1p(day.n),
                    log1p(week.n),
                    log1p(month.n),
                    log1p(week.total / week.n) if week.n else 0.0,
                    log1p(mean),
                    log1p(std),
                    log1p(used),
                ]
            )
        for j, d in enumerate(degree):
            x_terminal[j][-1] = log1p(d)
        zero_card = [[0.0] * len(CARD_NODE_NAMES)]
        zero_terminal = [[0.0] * len(TERMINAL_NODE_NAMES)]
        return GraphSnapshot(
            time=at,
            card_ids=card_ids,
            terminal_ids=terminal_ids,
            x_card=np.asarray(x_card + zero_card, dtype=np.float32),
            x_terminal=np.asarray(x_terminal + zero_terminal, dtype=np.float32),
            edge_index=np.asarray([src, dst], dtype=np.int64).reshape(2, len(src)),
            edge_attr=np.asarray(age, dtype=np.float32).reshape(-1, 1),
        )

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
        return self._score_raw(t.time, t.customer_id, t.terminal_id, t.amount)

    def step_vector(self, tx: Any) -> tuple[float, ...]:
        """The sequence element ``tx`` adds to its card (``STEP_NAMES``); call before ``update``."""
        t = _as_tx(tx)
        return self._step_vector(t.time, t.customer_id, t.terminal_id, t.amount)

    def update(self, tx: Any) -> None:
        """Add ``tx`` (with its label, if it has one) to the state.

        Args:
            tx: as for ``score``; call ``score`` first to get its features.
        """
        t = _as_tx(tx)
        self._advance(t)
        vector = self._step_vector(t.time, t.customer_id, t.terminal_id, t.amount)
        self._update_raw(t.transaction_id, t.time, t.customer_id, t.terminal_id, t.amount, t.label, vector)

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
            "card_last": self._card_last,
            "card_seq": {k: [list(v) for v in q] for k, q in self._card_seq.items()},
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
        state._card_last = {k: float(v) for k, v in data["card_last"].items()}
        state._card_seq = {
            k: deque((tuple(float(x) for x in v) for v in q), maxlen=SEQ_LEN - 1)
            for k, q in data["card_seq"].items()
        }
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


@dataclass
class Prepared:
    """What the engine computed for a batch of transactions, row-aligned with the input frame.

    Args:
        features: ``(n, len(FEATURE_NAMES))`` float64, the tabular features.
        steps: ``(m, len(STEP_NAMES))`` float32 step vectors; row 0 is the zero padding row.
        seq_index: ``(n, SEQ_LEN)`` int32 rows of ``steps``: each transaction's card sequence,
            oldest first, the transaction itself last, left-padded with 0.
        snapshot: ``(n,)`` int32 index into ``snapshots`` (the graph as of the start of the
            transaction's UTC day), or -1 when snapshots were not asked for.
        card_node, terminal_node: ``(n,)`` int64 node rows of the card and terminal in their
            snapshot (the snapshot's "unseen" row when the node is not in it).
        snapshots: the day graphs, oldest first.
        times: ``(n,)`` float64 seconds since the epoch.
    """

    features: np.ndarray
    steps: np.ndarray
    seq_index: np.ndarray
    snapshot: np.ndarray
    card_node: np.ndarray
    terminal_node: np.ndarray
    snapshots: list[GraphSnapshot]
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    def sequences(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``(len(rows), SEQ_LEN, len(STEP_NAMES))`` float32 sequences of those rows (all by default)."""
        index = self.seq_index if rows is None else self.seq_index[rows]
        return self.steps[index]


def _check_columns(df: pd.DataFrame, who: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{who}: missing column(s) {', '.join(missing)}; have {list(df.columns)}")


def prepare(
    df: pd.DataFrame,
    state: FeatureState | None = None,
    *,
    snapshots: bool = False,
    label_delay_days: float = 7.0,
    progress: Callable[[int], None] | None = None,
) -> Prepared:
    """Run the engine over ``df`` in time order: features, card sequences and (optionally) day graphs.

    Args:
        df: canonical transactions (``REQUIRED_COLUMNS``, optional ``label``), any order; ties in
            time keep their order in ``df``.
        state: continue from this state (it is updated: history first, then ``df``); fresh otherwise.
        snapshots: also take a ``GraphSnapshot`` at the start of every UTC day (before that day's
            first transaction is scored; when ``state`` already holds transactions of the first
            day, as of the last of them), for the graph model. The live scorer does the same.
        label_delay_days: for a fresh state, see ``FeatureState``.
        progress: called with the number of rows done, every 10,000 rows.

    Returns:
        ``Prepared``, row-aligned with ``df``.
    """
    _check_columns(df, "prepare")
    state = state if state is not None else FeatureState(label_delay_days=label_delay_days)
    n = len(df)
    stamps = pd.to_datetime(df["timestamp"], utc=True)
    # microseconds / 1e6: exactly what ``datetime.timestamp()`` gives the streaming path
    times = stamps.dt.as_unit("us").astype("int64").to_numpy() / 1e6
    order = np.argsort(times, kind="stable")
    ids = df["transaction_id"].astype(str).to_numpy()
    cards = df["customer_id"].astype(str).to_numpy()
    terminals = df["terminal_id"].astype(str).to_numpy()
    amounts = pd.to_numeric(df["amount"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(amounts) | (amounts < 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"transaction {ids[row]}: amount must be finite and >= 0, got {df['amount'].iat[row]}"
        )
    if "label" in df.columns:
        raw = df["label"].to_numpy(dtype=object)
        labels = [None if pd.isna(v) else bool(v) for v in raw]
    else:
        labels = [None] * n
    # seeds: each card's sequence so far, from the state (empty for a fresh state)
    first_of_card: dict[str, int] = {}
    seeds: list[tuple[float, ...]] = []
    seed_span: dict[str, tuple[int, int]] = {}
    for i in order:
        card = cards[i]
        if card not in first_of_card:
            first_of_card[card] = int(i)
            history = state._card_seq.get(card)
            if history:
                seed_span[card] = (len(seeds), len(history))
                seeds.extend(history)
    feats: list[list[float]] = [[]] * n
    steps: list[tuple[float, ...]] = [()] * n
    snap_of = np.full(n, -1, dtype=np.int32)
    card_node = np.zeros(n, dtype=np.int64)
    terminal_node = np.zeros(n, dtype=np.int64)
    graphs: list[GraphSnapshot] = []
    day_end = -math.inf
    snap: GraphSnapshot | None = None
    step = state.step
    for k, i in enumerate(order):
        t = float(times[i])
        if snapshots and t >= day_end:
            day_start = math.floor(t / DAY) * DAY
            day_end = day_start + DAY
            # the graph as of the day's start; resuming a state mid-day: as of the resume
            snap = state.graph_snapshot(max(day_start, state.now))
            graphs.append(snap)
        feats[i], steps[i] = step(ids[i], t, cards[i], terminals[i], float(amounts[i]), labels[i])
        if snap is not None:
            snap_of[i] = len(graphs) - 1
            card_node[i] = snap.card_index.get(cards[i], snap.unseen_card)
            terminal_node[i] = snap.terminal_index.get(terminals[i], snap.unseen_terminal)
        if progress is not None and (k + 1) % 10_000 == 0:
            progress(k + 1)
    if progress is not None:
        progress(n)
    # sequences: the card's rows in time order, preceded by its seed, in a sliding window
    n_seed = len(seeds)
    table = np.zeros((1 + n_seed + n, len(STEP_NAMES)), dtype=np.float32)
    if n_seed:
        table[1 : 1 + n_seed] = np.asarray(seeds, dtype=np.float32)
    if n:
        table[1 + n_seed :] = np.asarray(steps, dtype=np.float32)
    codes, uniques = pd.factorize(cards[order])
    by_card = np.argsort(codes, kind="stable")  # positions in ``order``, grouped by card, in time order
    rows_sorted = order[by_card]
    group = codes[by_card]
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1] if n else np.zeros(0, dtype=np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n])) if n else starts
    position = np.arange(n) - group_start
    offsets = np.arange(-SEQ_LEN + 1, 1)
    j = position[:, None] + offsets[None, :]  # (n, SEQ_LEN) position within the card's rows
    in_batch = j >= 0
    index = np.zeros((n, SEQ_LEN), dtype=np.int64)
    batch_rows = rows_sorted[np.where(in_batch, group_start[:, None] + j, 0)]
    index[in_batch] = 1 + n_seed + batch_rows[in_batch]
    if seed_span:
        span = np.array([seed_span.get(c, (0, 0)) for c in uniques], dtype=np.int64)
        seed_start, seed_len = span[group, 0], span[group, 1]
        k_seed = seed_len[:, None] + j
        from_seed = ~in_batch & (k_seed >= 0)
        index[from_seed] = (1 + seed_start[:, None] + k_seed)[from_seed]
    seq_index = np.zeros((n, SEQ_LEN), dtype=np.int32)
    seq_index[rows_sorted] = index
    features = np.asarray(feats, dtype=np.float64).reshape(n, len(FEATURE_NAMES))
    return Prepared(features, table, seq_index, snap_of, card_node, terminal_node, graphs, times)


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
    _check_columns(df, "batch_features")
    prepared = prepare(df, state, label_delay_days=label_delay_days)
    return pd.DataFrame(prepared.features.astype(np.float64), columns=list(FEATURE_NAMES), index=df.index)
