"""The fraud functions the CLI, the API, the UI and the benchmark call.

``FraudScorer`` holds the model and the feature engine's state, and scores transactions the
same way in every mode:

- batch (``score_frame``): a DataFrame through ``batch.prepare`` (one pass in time order,
  day graphs included) and the model in chunks; earlier transactions in ``history`` only build
  the state (features, sequences, graph) and are not scored;
- streaming (``score_one`` / ``score_many``): one transaction at a time from the live state; the
  graph is re-embedded when a transaction opens a new UTC day.

Both give the same score for the same transaction (a test checks it). Scores at or above the
threshold become alerts with an explanation (``apps.fraud.explain``) in an ``AlertStore``::

    scorer = FraudScorer.load()                           # shipped model, fresh state
    scores = scorer.score_frame(df, history=earlier)      # DataFrame: transaction_id, score, alert
    result = scorer.score_one(tx)                         # {"transaction_id", "score", "alert", ...}
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from apps.fraud.alerts import Alert
from apps.fraud.batch import Prepared, prepare
from apps.fraud.features import DAY, SEQ_LEN, STEP_NAMES, FeatureState, _as_tx
from apps.fraud.model import FraudNet, GraphTensors, score_prepared
from apps.fraud.train import default_model_dir, load_model

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
RECENT_IDS = 100_000  # transaction ids remembered by the live scorer, so a repeat is not re-counted


@dataclass
class Scored:
    """One streaming result; ``as_dict`` is what sinks and the API store."""

    transaction_id: str
    score: float
    alert: bool
    threshold: float
    model: str
    customer_id: str = ""
    terminal_id: str = ""
    amount: float = 0.0
    timestamp: str = ""  # ISO 8601, UTC
    repeated: bool = False
    explanation: dict[str, Any] | None = None
    # ``score_many(defer_explanations=True)``: computes the explanation (``complete_explanations``)
    pending: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "transaction_id": self.transaction_id,
            "customer_id": self.customer_id,
            "terminal_id": self.terminal_id,
            "amount": self.amount,
            "timestamp": self.timestamp,
            "score": self.score,
            "alert": self.alert,
            "threshold": self.threshold,
            "model": self.model,
        }
        if self.repeated:
            out["repeated"] = True
        if self.explanation is not None:
            out["explanation"] = self.explanation
        return out


@dataclass
class _Live:
    """One transaction on its way through ``FraudScorer.score_many``: the state moved, not yet scored."""

    index: int  # in the caller's batch
    tx: Any  # as placed in time (a slightly late one moved to the last time seen)
    stamp: float  # its own time, reported
    x: torch.Tensor
    seq: torch.Tensor
    card: torch.Tensor | None = None
    terminal: torch.Tensor | None = None
    snapshot: Any = None  # the graph of its day, for the explanation's neighbours
    alpha: Any = None


class FraudScorer:
    """A model and the live feature state (see the module docstring).

    Args:
        model: a trained ``FraudNet`` (eval mode).
        card: its model card (for the name, version and the alert threshold).
        threshold: alert at ``score >= threshold``; default the card's ``alert_threshold`` or 0.5.
        state: the feature engine's state to continue from (a fresh one by default).
        explain: attach explanations to alerts (streaming) and to alert rows (batch).
        max_lateness_s: streaming only: a transaction up to this many seconds older than the last
            one seen (e.g. from another partition) is scored as if it happened at that last time;
            an older one is refused (``ValueError``; the stream consumer dead-letters it).
    """

    def __init__(
        self,
        model: FraudNet,
        card: Mapping[str, Any] | None = None,
        *,
        threshold: float | None = None,
        state: FeatureState | None = None,
        explain: bool = True,
        max_lateness_s: float = 300.0,
    ) -> None:
        if not (math.isfinite(max_lateness_s) and max_lateness_s >= 0):
            raise ValueError(f"max_lateness_s must be a finite number >= 0, got {max_lateness_s}")
        self.max_lateness_s = float(max_lateness_s)
        self.model = model.eval()
        self.card = dict(card or {})
        chosen = threshold if threshold is not None else self.card.get("alert_threshold", DEFAULT_THRESHOLD)
        if not (isinstance(chosen, int | float) and 0.0 <= float(chosen) <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {chosen!r}")
        self.threshold = float(chosen)
        self.state = state or FeatureState(label_delay_days=float(self.card.get("label_delay_days", 7.0)))
        self.explain = explain
        self.name = f"{self.card.get('name', 'fraud-model')}@{self.card.get('code_version', 'unknown')}"
        self._lock = threading.Lock()
        self._day_end = -math.inf
        self._snapshot = None
        self._graph: GraphTensors | None = None
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._alpha: tuple[torch.Tensor, torch.Tensor] | None = None
        self._recent: OrderedDict[str, Scored] = OrderedDict()

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        *,
        threshold: float | None = None,
        state_path: str | Path | None = None,
        explain: bool = True,
        max_lateness_s: float = 300.0,
    ) -> FraudScorer:
        """The model in ``model_dir`` (default: the shipped one) with a fresh or saved state."""
        model, card = load_model(model_dir if model_dir is not None else default_model_dir())
        state = FeatureState.load(state_path) if state_path and Path(state_path).exists() else None
        return cls(
            model, card, threshold=threshold, state=state, explain=explain, max_lateness_s=max_lateness_s
        )

    # --- batch ---------------------------------------------------------------------------------------
    def prepare(
        self,
        df: pd.DataFrame,
        *,
        history: pd.DataFrame | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Prepared:
        """Run ``history`` (not scored) then ``df`` through the state; the ``Prepared`` of ``df``."""
        graph = self.model.config.use_graph
        with self._lock:
            if history is not None and len(history):
                prepare(history, self.state, snapshots=False)
            prepared = prepare(df, self.state, snapshots=graph, progress=progress)
            self._day_end = -math.inf  # the live graph must be rebuilt from the new state
        return prepared

    def score_frame(
        self,
        df: pd.DataFrame,
        *,
        history: pd.DataFrame | None = None,
        progress: Callable[[int], None] | None = None,
        explain_alerts: bool | None = None,
        engine: str = "local",
        chunk: int = 32_768,
    ) -> pd.DataFrame:
        """Scores of every row of ``df`` (any order), row-aligned with ``df``.

        Returns:
            DataFrame with ``transaction_id, timestamp, customer_id, terminal_id, amount, score,
            alert`` (and ``label`` when ``df`` has it), ``df``'s index; with ``explain_alerts``
            (default: the scorer's ``explain``) an ``explanation`` column (JSON text) for alert rows.

        Args:
            engine: ``"local"``: in-process, over chunks of whole days (at least ``chunk`` rows
                each, in time order): the feature pass, then the model, chunk after chunk, so
                memory stays bounded. (Running the model in a worker thread beside the feature pass
                was measured slower: the pure-Python feature pass holds the GIL that every torch
                call needs.) ``"ray"``: one feature pass, then the model over chunks as Ray Data
                tasks (``ray_score``). The feature pass is sequential either way: each row's
                features depend on all rows before it.
        """
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        parts: list[tuple[np.ndarray, Prepared]] = []
        scores = np.empty(len(df), dtype=np.float32)
        if engine == "ray":
            prepared = self.prepare(df, history=history, progress=progress)
            scores[:] = ray_score(self.model, prepared, chunk=chunk)
            parts.append((np.arange(len(df)), prepared))
        else:
            done = 0
            for rows in _day_chunks(df, chunk):
                prepared = self.prepare(df.iloc[rows], history=history if not parts else None)
                parts.append((rows, prepared))
                scores[rows] = score_prepared(self.model, prepared, chunk=chunk)
                done += len(rows)
                if progress is not None:
                    progress(done)
        out = pd.DataFrame(
            {
                "transaction_id": df["transaction_id"].astype(str).to_numpy(),
                "timestamp": pd.to_datetime(df["timestamp"], utc=True).to_numpy(),
                "customer_id": df["customer_id"].astype(str).to_numpy(),
                "terminal_id": df["terminal_id"].astype(str).to_numpy(),
                "amount": pd.to_numeric(df["amount"]).to_numpy(dtype=np.float64),
                "score": scores.astype(np.float64),
            },
            index=df.index,
        )
        out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
        out["alert"] = out["score"] >= self.threshold
        if "label" in df.columns:
            out["label"] = df["label"].to_numpy()
        if self.explain if explain_alerts is None else explain_alerts:
            alert = out["alert"].to_numpy()
            texts: list[str | None] = [None] * len(out)
            for rows, prepared in parts:
                local = np.flatnonzero(alert[rows])
                for i, explanation in zip(local, self._explain_rows(prepared, local), strict=True):
                    texts[rows[i]] = json.dumps(explanation)
            out["explanation"] = texts
        return out

    def _explain_rows(self, prepared: Prepared, rows: np.ndarray) -> list[dict[str, Any]]:
        if len(rows) == 0:
            return []
        from apps.fraud.explain import explain_rows

        return explain_rows(self.model, prepared, rows)

    # --- streaming -----------------------------------------------------------------------------------
    def _refresh_graph(self, t: float) -> None:
        if not self.model.config.use_graph or t < self._day_end:
            return
        day_start = math.floor(t / DAY) * DAY
        self._snapshot = self.state.graph_snapshot(max(day_start, self.state.now))
        self._graph = GraphTensors.from_snapshot(self._snapshot)
        with torch.no_grad():
            card, terminal, self._alpha = self.model.embed_graph(self._graph, attention=True)
        self._tables = (card, terminal)
        self._day_end = day_start + DAY

    def score_one(self, tx: Any) -> Scored:
        """Score one transaction from the live state and add it to the state.

        A transaction id scored before (within the last ``RECENT_IDS``) returns its first result
        with ``repeated=True`` and leaves the state alone (at-least-once redelivery).

        Args:
            tx: a ``connectors.streams.Transaction``, or a mapping of raw fields, which is
                validated by ``parse_transaction`` first (ISO timestamps, aliases).

        Raises:
            ValueError: a transaction earlier than the last one seen, or invalid fields
                (``InvalidRecord`` naming them).
        """
        return self.score_many([tx])[0]

    @torch.no_grad()
    def score_many(self, txs: Iterable[Any], *, defer_explanations: bool = False) -> list[Scored]:
        """``score_one`` for each, in time order (ties keep their order); results in input order.

        The state moves one transaction at a time (each one's features see every earlier one), then
        one forward pass scores them all: a batch costs one model call, which is what the API's
        micro-batching of concurrent requests relies on. A repeated id (scored before, or earlier in
        the batch) gets the first result with ``repeated=True``.

        With ``defer_explanations`` an alert's explanation (integrated gradients, tens of ms) is not
        computed here, under the scorer's lock, but by ``complete_explanations(results)`` afterwards,
        from the inputs captured now: the API computes it in the request's own thread, so the next
        batch is not held up behind it.

        Raises:
            ValueError: invalid fields (before anything is scored), or a transaction earlier than
                the last one seen by more than ``max_lateness_s``: in time order it is the batch's
                first, so the batch is refused before the state changes.
        """
        items = [_as_tx(v) for v in (_validated(tx) for tx in txs)]
        order = sorted(range(len(items)), key=lambda i: items[i].time)
        out: list[Scored | None] = [None] * len(items)
        with self._lock:
            fresh: list[_Live] = []
            firsts: dict[str, int] = {}
            repeats: list[tuple[int, int]] = []
            for i in order:
                t = items[i]
                seen = self._recent.get(t.transaction_id)
                if seen is not None:
                    out[i] = replace(seen, repeated=True)
                elif t.transaction_id in firsts:
                    repeats.append((i, firsts[t.transaction_id]))
                else:
                    firsts[t.transaction_id] = i
                    fresh.append(self._advance(i, t))
            if fresh:
                x = torch.cat([live.x for live in fresh])
                seq = torch.cat([live.seq for live in fresh])
                card = terminal = None
                if fresh[0].card is not None:
                    card = torch.cat([live.card for live in fresh])
                    terminal = torch.cat([live.terminal for live in fresh])
                scores = torch.sigmoid(self.model(x, seq, card, terminal)).tolist()
                for live, score in zip(fresh, scores, strict=True):
                    out[live.index] = self._result(live, float(score), defer_explanations)
            for i, first in repeats:
                out[i] = replace(out[first], repeated=True)
        return [r for r in out if r is not None]

    def _advance(self, index: int, t: Any) -> _Live:
        """Move the state by ``t`` (under the lock); its model inputs, with the graph of its day."""
        stamp = t.time
        if t.time < self.state.now:
            if self.state.now - t.time > self.max_lateness_s:
                self.state._advance(t)  # raises, naming the transaction and the last time seen
            t = replace(t, time=self.state.now)  # slightly late: placed at the last time seen
        self._refresh_graph(t.time)
        previous = self.state.sequence(t.customer_id)
        features, step = self.state.step(
            t.transaction_id, t.time, t.customer_id, t.terminal_id, t.amount, t.label
        )
        steps = [*previous, step]
        padded = [(0.0,) * len(STEP_NAMES)] * (SEQ_LEN - len(steps)) + steps
        live = _Live(
            index,
            t,
            stamp,
            torch.tensor([features], dtype=torch.float32),
            torch.tensor([padded], dtype=torch.float32),
        )
        if self._tables is not None and self._snapshot is not None:
            snap = self._snapshot
            ci = snap.card_index.get(t.customer_id, snap.unseen_card)
            ti = snap.terminal_index.get(t.terminal_id, snap.unseen_terminal)
            live.card, live.terminal = self._tables[0][ci : ci + 1], self._tables[1][ti : ti + 1]
            live.snapshot, live.alpha = snap, self._alpha
        return live

    def _result(self, live: _Live, score: float, defer: bool = False) -> Scored:
        """The ``Scored`` of a scored transaction (explained when it alerts), remembered as recent."""
        t = live.tx
        alert = score >= self.threshold
        explain = alert and self.explain
        explanation = self._explain_live(live) if explain and not defer else None
        result = Scored(
            t.transaction_id,
            score,
            alert,
            self.threshold,
            self.name,
            customer_id=t.customer_id,
            terminal_id=t.terminal_id,
            amount=t.amount,
            timestamp=datetime.fromtimestamp(live.stamp, UTC).isoformat(),
            explanation=explanation,
            pending=partial(self._explain_live, live) if explain and defer else None,
        )
        self._recent[t.transaction_id] = result
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        return result

    def _explain_live(self, live: _Live) -> dict[str, Any]:
        from apps.fraud.explain import attributions, graph_neighbours

        with torch.enable_grad():
            attr = attributions(self.model, live.x, live.seq, live.card, live.terminal)[0]
        out: dict[str, Any] = {
            "top_features": attr["features"][:5],
            "sequence": attr.get("sequence"),
            "card_graph": attr.get("card_graph"),
            "terminal_graph": attr.get("terminal_graph"),
        }
        if live.snapshot is not None:
            out["neighbours"] = graph_neighbours(
                self.model, live.snapshot, live.tx.customer_id, live.tx.terminal_id, alpha=live.alpha
            )
        return json.loads(json.dumps(out))

    def add_label(self, transaction_id: str, label: bool) -> bool:
        """Feed an analyst's decision back into the feature state (terminal risk)."""
        with self._lock:
            return self.state.add_label(transaction_id, label)

    def save_state(self, path: str | Path) -> Path:
        with self._lock:
            return self.state.save(path)


def _day_chunks(df: pd.DataFrame, chunk: int) -> list[np.ndarray]:
    """Row positions of ``df`` in time order (stable), cut at UTC day boundaries every >= ``chunk`` rows."""
    if len(df) == 0:
        return []
    times = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("us").astype("int64").to_numpy() / 1e6
    order = np.argsort(times, kind="stable")
    days = np.floor(times[order] / DAY)
    cuts = [0]
    for start in (np.flatnonzero(np.diff(days)) + 1).tolist():
        if start - cuts[-1] >= chunk:
            cuts.append(start)
    cuts.append(len(df))
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def ray_score(model: FraudNet, prepared: Prepared, *, chunk: int = 32_768) -> np.ndarray:
    """``score_prepared`` on Ray Data: each block of ``chunk`` rows is one ``map_batches`` call.

    The day graphs are embedded once here; the workers get each row's features, sequence and
    node embeddings, and run the model's forward. Starts a local Ray runtime when none is up.
    """
    import ray

    from apps.fraud.model import load_rows

    n = len(prepared)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    card = terminal = None
    if model.config.use_graph:
        g = model.config.gnn_hidden
        card = np.zeros((n, g), dtype=np.float32)
        terminal = np.zeros((n, g), dtype=np.float32)
        with torch.no_grad():
            for s in np.unique(prepared.snapshot):
                rows = np.flatnonzero(prepared.snapshot == s)
                tables = model.embed_graph(GraphTensors.from_snapshot(prepared.snapshots[s]))
                card[rows] = tables[0][torch.from_numpy(prepared.card_node[rows])].numpy()
                terminal[rows] = tables[1][torch.from_numpy(prepared.terminal_node[rows])].numpy()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    inputs = ray.put({"prepared": prepared, "card": card, "terminal": terminal})

    def score_block(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from apps.fraud.model import FraudModelConfig

        data = ray.get(inputs)
        net = FraudNet(FraudModelConfig.from_dict(config))
        net.load_state_dict(state)
        net.eval()
        out = []
        for start, stop in zip(batch["start"], batch["stop"], strict=True):
            rows = np.arange(start, stop)
            features, sequences = load_rows(data["prepared"], rows)
            c = t = None
            if data["card"] is not None:
                c, t = torch.from_numpy(data["card"][rows]), torch.from_numpy(data["terminal"][rows])
            with torch.no_grad():
                out.append(torch.sigmoid(net(features, sequences, c, t)).numpy())
        return {"start": batch["start"], "scores": np.array(out + [None], dtype=object)[:-1]}

    blocks = [{"start": s, "stop": min(s + chunk, n)} for s in range(0, n, chunk)]
    result = ray.data.from_items(blocks).map_batches(score_block, batch_size=1).take_all()
    scores = np.empty(n, dtype=np.float32)
    for row in result:
        start = int(row["start"])
        scores[start : start + len(row["scores"])] = row["scores"]
    return scores


def complete_explanations(results: Iterable[Scored]) -> None:
    """Compute the explanations ``score_many(defer_explanations=True)`` left pending, in place.

    Needs no lock: the inputs were captured when the transaction was scored, and the model is only
    read. The scorer remembers the same ``Scored`` objects, so a repeat later returns them explained.
    """
    for result in results:
        pending = result.pending
        if pending is not None:
            result.explanation = pending()
            result.pending = None


def _validated(tx: Any) -> Any:
    """A raw mapping -> ``Transaction`` (validated); anything else as it is."""
    if isinstance(tx, Mapping):
        from connectors.streams.schema import parse_transaction

        return parse_transaction(tx)
    return tx


def alert_from(result: Scored, tx: Any) -> Alert:
    """The ``Alert`` record of an alerting streaming result."""
    t = _as_tx(_validated(tx))
    return Alert(
        transaction_id=t.transaction_id,
        customer_id=t.customer_id,
        terminal_id=t.terminal_id,
        amount=t.amount,
        timestamp=datetime.fromtimestamp(t.time, UTC),
        score=result.score,
        threshold=result.threshold,
        model=result.model,
        explanation=result.explanation,
    )


def alerts_from_frame(scored: pd.DataFrame, scorer: FraudScorer) -> list[Alert]:
    """``Alert`` records of the alert rows of ``score_frame`` output."""
    rows = scored[scored["alert"]]
    out = []
    for row in rows.itertuples(index=False):
        explanation = getattr(row, "explanation", None)
        out.append(
            Alert(
                transaction_id=row.transaction_id,
                customer_id=row.customer_id,
                terminal_id=row.terminal_id,
                amount=float(row.amount),
                timestamp=row.timestamp.to_pydatetime(),
                score=float(row.score),
                threshold=scorer.threshold,
                model=scorer.name,
                explanation=json.loads(explanation) if isinstance(explanation, str) else None,
            )
        )
    return out
