"""Streaming fraud scoring: a source of transactions -> ``FraudScorer.score_one`` -> scores and alerts.

``stream`` runs the live scorer over any ``connectors.streams`` source (file://, redis://, kafka://) into a
sink, alerts into an ``AlertStore``, bad records to a dead-letter sink beside the results::

    stats = stream(FraudScorer.load(), "file:///data/tx.csv", "sqlite:///scores.db", alerts="alerts.db")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from apps.fraud.alerts import AlertStore
from apps.fraud.service import FraudScorer, Scored, alert_from


def stream(
    scorer: FraudScorer,
    source_url: str,
    sink_url: str,
    *,
    alerts: str | Path | AlertStore | None = None,
    dead_letter_url: str | None = None,
    idle_timeout: float | None = 5.0,
    max_messages: int | None = None,
    state_path: str | Path | None = None,
    on_result: Callable[[Scored], None] | None = None,
):
    """Score a stream: ``source_url`` -> scores at ``sink_url``, alerts into ``alerts``.

    URLs as ``connectors.streams.open_source``/``open_sink`` take them (file://, redis://,
    kafka://, sqlite:///). Dead letters go to ``dead_letter_url`` (default: beside the sink).
    The feature state is saved to ``state_path`` at the end, when given.

    Returns:
        ``connectors.streams.RunStats``.
    """
    from connectors.streams import open_sink, open_source, run

    source = open_source(source_url)
    sink = open_sink(sink_url)
    dead = open_sink(dead_letter_url or _dead_letter_url(sink_url))
    store = alerts if isinstance(alerts, AlertStore) or alerts is None else AlertStore.open(alerts)

    def process(tx: Any) -> Mapping[str, Any]:
        result = scorer.score_one(tx)
        if result.alert and store is not None and not result.repeated:
            store.add(alert_from(result, tx))
        if on_result is not None:
            on_result(result)
        out = result.as_dict()
        if "explanation" in out:
            out["explanation"] = json.dumps(out["explanation"])
        return out

    try:
        stats = run(source, process, sink, dead, idle_timeout=idle_timeout, max_messages=max_messages)
    finally:
        for part in (source, sink, dead):
            close = getattr(part, "close", None)
            if close is not None:
                close()
        if state_path is not None:
            scorer.save_state(state_path)
    return stats


def _dead_letter_url(sink_url: str) -> str:
    """Dead letters beside the results: same database/stream server, a sibling table/stream/topic."""
    if sink_url.startswith(("redis://", "rediss://")):
        base = sink_url.split("?", 1)[0]
        return f"{base}?stream=fraud:dead"
    if sink_url.startswith("kafka://"):
        base = sink_url.split("?", 1)[0]
        return f"{base}?topic=fraud-dead"
    base = sink_url.split("?", 1)[0]
    return f"{base}?table=dead_letters"


__all__ = ["stream"]
