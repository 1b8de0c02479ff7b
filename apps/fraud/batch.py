"""The feature engine over a whole DataFrame: features, card sequences and day graphs in one pass.

``prepare`` runs ``features.FeatureState`` over the rows in time order (continuing a state when
given one) and returns a ``Prepared`` row-aligned with the frame; training, batch scoring and the
benchmarks use it, the live scorer calls the same ``FeatureState.step`` one transaction at a time::

    prepared = prepare(df, snapshots=True)     # features (n, 20), sequences, day graphs
    features = batch_features(df)              # just the tabular features, as a DataFrame
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from apps.fraud.features import DAY, FEATURE_NAMES, SEQ_LEN, STEP_NAMES, FeatureState
from apps.fraud.graph import GraphSnapshot

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
        missing = df["label"].isna().to_numpy().tolist()
        known = df["label"].where(df["label"].notna(), False).astype(bool).to_numpy().tolist()
        labels = [None if m else v for m, v in zip(missing, known, strict=True)]
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
            known = state._cards.get(card)
            history = None if known is None else known.seq
            if history:
                seed_span[card] = (len(seeds), len(history))
                seeds.extend(history)
    feature_buffer = array("d")  # rows in processing (time) order
    step_buffer = array("d")
    graphs: list[GraphSnapshot] = []
    day_end = -math.inf
    snap: GraphSnapshot | None = None
    step = state.step
    times_l, ids_l, cards_l, terminals_l = times.tolist(), ids.tolist(), cards.tolist(), terminals.tolist()
    amounts_l = amounts.tolist()
    snap_l, card_l, terminal_l = [-1] * n, [0] * n, [0] * n
    for k, i in enumerate(order.tolist()):
        t = times_l[i]
        if snapshots and t >= day_end:
            day_start = math.floor(t / DAY) * DAY
            day_end = day_start + DAY
            # the graph as of the day's start; resuming a state mid-day: as of the resume
            snap = state.graph_snapshot(max(day_start, state.now))
            graphs.append(snap)
        card, terminal = cards_l[i], terminals_l[i]
        row_features, row_step = step(ids_l[i], t, card, terminal, amounts_l[i], labels[i])
        feature_buffer.extend(row_features)
        step_buffer.extend(row_step)
        if snap is not None:
            snap_l[i] = len(graphs) - 1
            card_l[i] = snap.card_index.get(card, snap.unseen_card)
            terminal_l[i] = snap.terminal_index.get(terminal, snap.unseen_terminal)
        if progress is not None and (k + 1) % 10_000 == 0:
            progress(k + 1)
    snap_of = np.asarray(snap_l, dtype=np.int32)
    card_node = np.asarray(card_l, dtype=np.int64)
    terminal_node = np.asarray(terminal_l, dtype=np.int64)
    if progress is not None:
        progress(n)
    # sequences: the card's rows in time order, preceded by its seed, in a sliding window
    n_seed = len(seeds)
    table = np.zeros((1 + n_seed + n, len(STEP_NAMES)), dtype=np.float32)
    if n_seed:
        table[1 : 1 + n_seed] = np.asarray(seeds, dtype=np.float32)
    if n:
        in_order = np.frombuffer(step_buffer, dtype=np.float64).reshape(n, len(STEP_NAMES))
        table[1 + n_seed + order] = in_order.astype(np.float32)
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
    features = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    features[order] = np.frombuffer(feature_buffer, dtype=np.float64).reshape(n, len(FEATURE_NAMES))
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
