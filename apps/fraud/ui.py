"""The fraud analysts' dashboard (Streamlit): the alert queue, scores, a card's story, metrics over time.

Reads two stores and computes nothing a model would:

- the alert store (``apps.fraud.alerts.AlertStore``): the queue, decisions, alerts per day;
- the scores the stream scorer writes through ``connectors.streams.base.SqliteSink``: a SQLite
  table ``key TEXT PRIMARY KEY, value TEXT`` whose values are JSON objects with at least
  ``transaction_id, customer_id, terminal_id, amount, timestamp, score, alert, threshold``.

Their locations come from ``FATHOM_FRAUD_ALERTS`` and ``FATHOM_FRAUD_SCORES`` (default: the cache
folder's ``fraud/alerts.db`` and ``fraud/scores.db``) and can be changed in the sidebar. With
auto-refresh on, the page body is an ``st.fragment`` that reruns every few seconds.

Run alone with ``streamlit run apps/fraud/ui.py``, or as a page of ``apps/ui/app.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from apps.fraud.alerts import ALERT_STATUSES, DECISIONS, Alert, AlertStore
from core.config import cache_dir

ALERTS_ENV = "FATHOM_FRAUD_ALERTS"
SCORES_ENV = "FATHOM_FRAUD_SCORES"
SCORE_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "amount", "timestamp", "score", "alert")
QUEUE_LIMIT = 200
SCORES_LIMIT = 50_000
FLASH_KEY = "fraud_flash"

_log = logging.getLogger(__name__)


# --- reading the stores (plain functions: no Streamlit) ----------------------------------------------------
def default_alerts_path() -> str:
    """``$FATHOM_FRAUD_ALERTS``, else the cache folder's ``fraud/alerts.db``."""
    return os.environ.get(ALERTS_ENV) or str(cache_dir("fraud", "alerts.db"))


def default_scores_path() -> str:
    """``$FATHOM_FRAUD_SCORES``, else the cache folder's ``fraud/scores.db``."""
    return os.environ.get(SCORES_ENV) or str(cache_dir("fraud", "scores.db"))


def scores_location(text: str) -> tuple[Path, str]:
    """(file, table) of a scores path, or of a ``sqlite:///...``/``file://...?table=`` sink URL."""
    parts = urlsplit(text)
    if parts.scheme in ("sqlite", "file"):
        return Path(parts.path), dict(parse_qsl(parts.query)).get("table", "results")
    return Path(text).expanduser(), "results"


def sink_url(path: str | Path) -> str:
    """The ``--sink`` URL of ``fathom fraud stream`` that writes to ``path``."""
    return f"sqlite://{Path(path).expanduser().resolve()}"


def alert_store_exists(url_or_path: str) -> bool:
    """False when the store is a SQLite file that does not exist (opening it would create it)."""
    if url_or_path.startswith("sqlite:///"):
        database = url_or_path.removeprefix("sqlite:///").split("?", 1)[0]
        return database in ("", ":memory:") or Path(database).expanduser().is_file()
    if url_or_path in ("sqlite://", ":memory:") or "://" in url_or_path:
        return True
    return Path(url_or_path).expanduser().is_file()


def load_scores(path: str | Path, table: str = "results", limit: int = SCORES_LIMIT) -> pd.DataFrame:
    """The latest ``limit`` scored transactions of a ``SqliteSink`` database, oldest first.

    Opened read-only, so the dashboard never creates or locks the scorer's file.

    Returns:
        One row per stored value, with at least ``SCORE_COLUMNS``: ``timestamp`` as UTC datetimes,
        ``amount`` and ``score`` as floats, ``alert`` as bool; an empty frame when the table is empty
        or absent.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it).
        ValueError: ``table`` is not a plain table name.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no scores database at {path}")
    if not table.replace("_", "").isalnum():
        raise ValueError(f"table name {table!r} must be letters, digits and '_'")
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as db:
        try:
            rows = db.execute(
                f"SELECT value FROM {table} ORDER BY rowid DESC LIMIT ?", (int(limit),)
            ).fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                rows = []
            else:
                raise
    values = []
    for (value,) in reversed(rows):
        try:
            record = json.loads(value)
        except ValueError:
            continue  # a foreign row; the scorer writes JSON objects only
        if isinstance(record, dict):
            values.append(record)
    frame = pd.DataFrame.from_records(values)
    for column in SCORE_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce", format="ISO8601")
    frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    frame["alert"] = frame["alert"].fillna(False).astype(bool)
    frame["customer_id"] = frame["customer_id"].astype(str)
    return frame


def alerts_frame(alerts: list[Alert]) -> pd.DataFrame:
    """The queue as a table, in the given order."""
    columns = ["transaction_id", "score", "customer_id", "terminal_id", "amount", "timestamp", "status"]
    columns += ["decision_by", "note"]
    return pd.DataFrame([{c: getattr(a, c) for c in columns} for a in alerts], columns=columns)


def precision_by_day(by_day: pd.DataFrame) -> pd.DataFrame:
    """``by_day()`` plus ``precision`` = n_fraud / decided (NaN on days with nothing decided)."""
    decided = by_day["n_fraud"] + by_day["n_legitimate"]
    return by_day.assign(precision=(by_day["n_fraud"] / decided.where(decided > 0)).astype(float))


def explanation_summary(explanation: dict[str, Any]) -> str | None:
    """``apps.fraud.explain.summary`` of an explanation, None when it cannot be read."""
    try:
        from apps.fraud.explain import summary

        return summary(explanation)
    except (ImportError, KeyError, TypeError, ValueError, IndexError):
        _log.warning("could not summarise an alert explanation", exc_info=True)
        return None


# --- page pieces -------------------------------------------------------------------------------------------
def _fill_hint(alerts: str, scores: str) -> str:
    return (
        f"`fathom fraud stream --source ... --sink {sink_url(scores_location(scores)[0])} "
        f"--alerts {alerts}` (live), or `fathom fraud score --transactions ... --out ... --alerts {alerts}` "
        "(batch)"
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def open_store(url_or_path: str) -> AlertStore:
    """The alert store at ``url_or_path``, opened once per process."""
    return AlertStore.open(url_or_path)


def _decide(store_url: str) -> None:
    """Form callback (runs before the page): decide the picked alert, keep a message for the page."""
    state = st.session_state
    transaction_id, decision = str(state.get("fraud_alert")), str(state.get("fraud_decision"))
    analyst = (state.get("fraud_analyst") or "").strip()
    note = (state.get("fraud_note") or "").strip() or None
    if not analyst:
        state[FLASH_KEY] = ("error", "Enter the analyst's name to record a decision.")
        return
    try:
        alert = open_store(store_url).decide(transaction_id, decision, analyst, note)
    except (KeyError, ValueError) as exc:
        state[FLASH_KEY] = ("error", f"Decision not recorded: {exc}")
        return
    state[FLASH_KEY] = ("success", f"Alert {alert.transaction_id} marked {alert.status} by {analyst}.")
    state["fraud_note"] = ""


def _queue(store: AlertStore, store_url: str) -> Alert | None:
    """Counts, filters, the queue table, the alert picker and its decision form; the picked alert."""
    counts = store.counts()
    columns = st.columns(len(ALERT_STATUSES))
    for column, status in zip(columns, ALERT_STATUSES, strict=True):
        column.metric(status.capitalize(), counts[status])
    left, middle, right = st.columns(3)
    status = left.selectbox("Status", [*ALERT_STATUSES, "all"], key="fraud_status")
    min_score = middle.slider("Minimum score", 0.0, 1.0, 0.0, 0.01, key="fraud_min_score")
    card = right.text_input("Card", key="fraud_queue_card", placeholder="any card").strip()
    try:
        alerts = store.queue(
            status=None if status == "all" else status,
            limit=QUEUE_LIMIT,
            customer_id=card or None,
            min_score=min_score or None,
            order="score",
        )
    except ValueError as exc:  # e.g. a card id longer than any id
        st.error(f"Cannot filter the queue: {exc}")
        return None
    if not alerts:
        st.info("No alerts match these filters.")
        return None
    st.dataframe(
        alerts_frame(alerts),
        hide_index=True,
        column_config={"score": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0)},
    )
    by_id = {a.transaction_id: a for a in alerts}
    picked = st.selectbox(
        "Alert",
        list(by_id),
        key="fraud_alert",
        format_func=lambda t: f"{t} · card {by_id[t].customer_id} · score {by_id[t].score:.3f}",
    )
    alert = by_id[picked]
    with st.form("fraud_decide_form"):
        st.markdown(f"**Decide alert `{alert.transaction_id}`** (now: {alert.status})")
        st.radio("Decision", DECISIONS, key="fraud_decision", horizontal=True)
        st.text_input("Analyst", key="fraud_analyst")
        st.text_area("Note", key="fraud_note")
        st.form_submit_button("Record decision", on_click=_decide, args=(store_url,))
    return alert


def _score_distribution(scores: pd.DataFrame) -> None:
    scored = scores.dropna(subset=["score"])
    threshold = None
    if "threshold" in scored and scored["threshold"].notna().any():
        threshold = float(pd.to_numeric(scored["threshold"], errors="coerce").dropna().iloc[-1])
    rate = float(scored["alert"].mean()) if len(scored) else 0.0
    n_scored, n_alerts, alert_rate = st.columns(3)
    n_scored.metric("Scored transactions", len(scored))
    n_alerts.metric("Alerts", int(scored["alert"].sum()), help="scores at or above the threshold")
    alert_rate.metric("Alert rate", f"{rate:.2%}")
    counts, edges = np.histogram(scored["score"].clip(0, 1), bins=50, range=(0.0, 1.0))
    bins = pd.DataFrame({"start": edges[:-1], "end": edges[1:], "transactions": counts})
    log = st.checkbox("Log count axis", key="fraud_log_hist", value=True)
    y_scale = alt.Scale(type="symlog") if log else alt.Scale()
    chart = (
        alt.Chart(bins)
        .mark_bar()
        .encode(
            x=alt.X("start:Q", title="score", scale=alt.Scale(domain=[0, 1])),
            x2="end:Q",
            y=alt.Y("transactions:Q", scale=y_scale),
        )
    )
    if threshold is not None:
        rule = alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(color="red", strokeWidth=2)
        chart = chart + rule.encode(x="threshold:Q", tooltip=["threshold:Q"])
        st.caption(f"Threshold (latest): {threshold:.3f}")
    st.altair_chart(chart, width="stretch")


def _card_history(card: str, scores: pd.DataFrame) -> None:
    history = scores[scores["customer_id"] == card].sort_values("timestamp")
    if history.empty:
        st.info(f"No scored transactions of card {card} in the scores database.")
        return
    series = history.set_index("timestamp")
    st.caption("Amount and score of the card's scored transactions over time")
    st.line_chart(series[["amount"]])
    st.line_chart(series[["score"]])
    shown = [c for c in (*SCORE_COLUMNS, "threshold", "model") if c in history]
    st.dataframe(history[shown], hide_index=True)


def _explanation(alert: Alert) -> None:
    st.markdown(f"**Why alert `{alert.transaction_id}` fired** (score {alert.score:.3f})")
    explanation = alert.explanation or {}
    if not explanation:
        st.info("This alert was stored without an explanation.")
        return
    line = explanation_summary(explanation)
    if line:
        st.caption(line)
    features = explanation.get("top_features") or []
    if features:
        st.bar_chart(pd.DataFrame(features).set_index("name")[["attribution"]], horizontal=True)
    branches = {k: explanation.get(k) for k in ("sequence", "card_graph", "terminal_graph")}
    branches = {k: v for k, v in branches.items() if v is not None}
    if branches:
        st.dataframe(pd.DataFrame([branches]), hide_index=True)
    neighbours = explanation.get("neighbours") or {}
    if neighbours:
        left, right = st.columns(2)
        card = neighbours.get("card") or alert.customer_id
        left.markdown(f"Terminals card {card} used ({neighbours.get('card_degree', 0)} in 30 days)")
        left.dataframe(pd.DataFrame(neighbours.get("card_terminals") or []), hide_index=True)
        terminal = neighbours.get("terminal") or alert.terminal_id
        right.markdown(f"Cards at terminal {terminal} ({neighbours.get('terminal_degree', 0)} in 30 days)")
        right.dataframe(pd.DataFrame(neighbours.get("terminal_cards") or []), hide_index=True)


def _card(store: AlertStore | None, scores: pd.DataFrame | None, selected: Alert | None) -> None:
    """A card's scored transactions, and why its alert (the picked one, else its latest) fired."""
    default = selected.customer_id if selected is not None else ""
    card = st.text_input("Card", key="fraud_card", placeholder=default or "a card id").strip() or default
    if not card:
        st.info("Pick an alert in the queue or enter a card id.")
        return
    st.subheader(f"Card {card}")
    if scores is not None:
        _card_history(card, scores)
    if store is None:
        return
    alert = selected if selected is not None and selected.customer_id == card else None
    if alert is None:
        latest = store.queue(status=None, customer_id=card, order="time", limit=1)
        alert = latest[0] if latest else None
    if alert is None:
        st.info(f"Card {card} has no alerts.")
    else:
        _explanation(alert)


def _metrics(store: AlertStore) -> None:
    per_day = store.by_day()
    if per_day.empty:
        st.info("No alerts yet, so no metrics over time.")
        return
    per_day = precision_by_day(per_day)
    decided = int(per_day["n_fraud"].sum() + per_day["n_legitimate"].sum())
    overall = per_day["n_fraud"].sum() / decided if decided else float("nan")
    st.metric(
        "Analyst-confirmed precision", "n/a" if not decided else f"{overall:.1%}", help="fraud / decided"
    )
    st.caption("Alerts per day, by outcome")
    st.bar_chart(per_day[["n_fraud", "n_legitimate", "n_open"]])
    st.caption("Analyst-confirmed precision per day (fraud / decided)")
    st.line_chart(per_day[["precision"]])


def _dashboard(alerts_url: str, scores_text: str) -> None:
    """The page body: four tabs over the two stores (rerun alone when auto-refresh is on)."""
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash is not None:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    hint = _fill_hint(alerts_url, scores_text)
    queue_tab, scores_tab, card_tab, metrics_tab = st.tabs(["Queue", "Scores", "Card", "Metrics"])
    store = None
    if not alert_store_exists(alerts_url):
        queue_tab.info(f"No alert store at `{alerts_url}` yet. Fill it with {hint}.")
    else:
        try:
            store = open_store(alerts_url)
            empty = store.count() == 0
        except Exception as exc:  # a bad URL, a missing driver, a file that is not a database
            _log.exception("opening the alert store %s failed", alerts_url)
            queue_tab.error(f"Cannot open the alert store `{alerts_url}` ({type(exc).__name__}): {exc}")
            store = None
        else:
            if empty:
                queue_tab.info(f"No alerts in `{alerts_url}` yet. Fill it with {hint}.")
                store = None
    selected = None
    if store is not None:
        with queue_tab:
            selected = _queue(store, alerts_url)

    scores = None
    path, table = scores_location(scores_text)
    try:
        scores = load_scores(path, table)
    except FileNotFoundError:
        scores_tab.info(f"No scores database at `{path}` yet. Fill it with {hint}.")
    except (sqlite3.Error, ValueError) as exc:
        scores_tab.error(f"Cannot read the scores database `{path}`: {exc}")
    if scores is not None and scores["score"].notna().sum() == 0:
        scores_tab.info(f"No scores in `{path}` (table `{table}`) yet. Fill it with {hint}.")
    elif scores is not None:
        with scores_tab:
            _score_distribution(scores)

    with card_tab:
        if store is None and scores is None:
            st.info(f"Nothing to drill into yet. Fill the stores with {hint}.")
        else:
            _card(store, scores, selected)
    with metrics_tab:
        if store is not None:
            _metrics(store)
        else:
            st.info(f"No alerts yet, so no metrics over time. Fill the alert store with {hint}.")


def render() -> None:
    """The page: sidebar (store locations, auto-refresh), then the dashboard."""
    st.title("Fraud alerts")
    st.caption("The analysts' queue, the score distribution, a card's history and why its alert fired.")
    with st.sidebar:
        alerts_url = st.text_input(
            "Alert store (SQLite path or URL)", default_alerts_path(), key="fraud_alerts"
        )
        scores_text = st.text_input(
            "Scores database (SQLite path)", default_scores_path(), key="fraud_scores"
        )
        auto = st.toggle("Auto-refresh", key="fraud_auto")
        every = st.number_input("Every (seconds)", 2, 600, 10, key="fraud_every", disabled=not auto)
    alerts_url, scores_text = alerts_url.strip(), scores_text.strip()
    if hasattr(st, "fragment"):
        st.fragment(run_every=every if auto else None)(_dashboard)(alerts_url, scores_text)
    else:  # an older Streamlit: refresh by hand
        st.button("Refresh", key="fraud_refresh")
        _dashboard(alerts_url, scores_text)


if __name__ == "__main__":
    render()
