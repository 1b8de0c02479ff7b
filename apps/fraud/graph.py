"""The card-terminal graph of the fraud app, as of a moment, from the feature engine's state only.

``build_snapshot(state, at)`` (also ``FeatureState.graph_snapshot``) reads the cards and terminals
active in the last 30 days of a ``features.FeatureState`` and returns a ``GraphSnapshot``: node
features of both types and an edge for every card-terminal pair used in those 30 days. The batch
pass takes one at the start of every UTC day, the live scorer when a transaction opens a new day::

    snapshot = state.graph_snapshot(day_start)      # before the day's first transaction is scored
    tensors = GraphTensors.from_snapshot(snapshot)  # apps.fraud.model
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from apps.fraud.features import FeatureState

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


def build_snapshot(state: FeatureState, at: float | None = None) -> GraphSnapshot:
    """The card-terminal graph from everything ``state`` holds before ``at`` (seconds; default: its now).

    Advances the state's clock to ``at``: later transactions must not be earlier than it.
    """
    from apps.fraud.features import SPANS, _iso  # features imports this module

    at = state.now if at is None else float(at)
    if at < state.now:
        raise ValueError(
            f"graph_snapshot at {_iso(at)} is earlier than the last transaction ({_iso(state.now)})"
        )
    state.now = at
    horizon = at - SPANS[2]
    terminal_ids: list[str] = []
    x_terminal: list[list[float]] = []
    log1p = math.log1p
    for terminal in list(state._terminals):
        m = state._terminal(terminal)
        pending = len(m.pending)
        n, flags = m.n, m.flags
        if n[2] == 0 and pending == 0:
            continue
        terminal_ids.append(terminal)
        x_terminal.append(
            [
                log1p(n[1]),
                log1p(n[2]),
                flags[1] / n[1] if n[1] else 0.0,
                flags[2] / n[2] if n[2] else 0.0,
                log1p(pending),
                0.0,  # cards, filled below
            ]
        )
    card_ids: list[str] = []
    x_card: list[list[float]] = []
    used_terminals: list[str] = []
    used_last: list[float] = []
    counts: list[int] = []
    for card in list(state._cards):
        c = state._card(card)
        n, total = c.n, c.total
        if n[2] == 0:
            continue
        card_ids.append(card)
        used_terminals.extend(c.terminals.keys())
        used_last.extend(c.terminals.values())
        counts.append(len(c.terminals))
        mean = total[2] / n[2]
        std = math.sqrt(max(c.total_sq / n[2] - mean * mean, 0.0))
        x_card.append(
            [
                log1p(n[0]),
                log1p(n[1]),
                log1p(n[2]),
                log1p(total[1] / n[1]) if n[1] else 0.0,
                log1p(mean),
                log1p(std),
                0.0,  # terminals used, filled below
            ]
        )
    # edges: every (card, terminal) pair used in the last 30 days, in card order
    src = np.repeat(np.arange(len(card_ids), dtype=np.int64), counts)
    dst = pd.Index(terminal_ids, dtype=object).get_indexer(pd.Index(used_terminals, dtype=object))
    last = np.asarray(used_last, dtype=np.float64)
    keep = (dst >= 0) & (last >= horizon)
    src, dst, last = src[keep], dst[keep].astype(np.int64), last[keep]
    for i, used in enumerate(np.bincount(src, minlength=len(card_ids)).tolist()):
        x_card[i][-1] = log1p(used)
    for j, d in enumerate(np.bincount(dst, minlength=len(terminal_ids)).tolist()):
        x_terminal[j][-1] = log1p(d)
    zero_card = [[0.0] * len(CARD_NODE_NAMES)]
    zero_terminal = [[0.0] * len(TERMINAL_NODE_NAMES)]
    return GraphSnapshot(
        time=at,
        card_ids=card_ids,
        terminal_ids=terminal_ids,
        x_card=np.asarray(x_card + zero_card, dtype=np.float32),
        x_terminal=np.asarray(x_terminal + zero_terminal, dtype=np.float32),
        edge_index=np.stack([src, dst]).astype(np.int64).reshape(2, len(src)),
        edge_attr=((at - last) / SPANS[2]).astype(np.float32).reshape(-1, 1),
    )
