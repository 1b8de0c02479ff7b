"""The fraud dashboard page with Streamlit's AppTest, over a small alert store and scores database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from apps.fraud import ui
from apps.fraud.alerts import Alert, AlertStore
from apps.ui import main_path
from connectors.streams.base import SqliteSink

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
EXPLANATION = {
    "top_features": [
        {"name": "amount", "value": 912.0, "attribution": 2.31},
        {"name": "terminal_risk_30d", "value": 0.67, "attribution": 1.10},
        {"name": "hour", "value": 3.0, "attribution": -0.20},
    ],
    "sequence": 0.4,
    "card_graph": 0.1,
    "terminal_graph": -0.05,
    "neighbours": {
        "card": "c1",
        "terminal": "m9",
        "card_known": True,
        "terminal_known": True,
        "card_degree": 2,
        "terminal_degree": 3,
        "card_terminals": [
            {"terminal_id": "m9", "attention": 0.7, "risk_30d": 0.67, "days_since_use": 0.0},
            {"terminal_id": "m2", "attention": 0.3, "risk_30d": 0.01, "days_since_use": 4.5},
        ],
        "terminal_cards": [{"card_id": "c7", "attention": 0.9, "days_since_use": 1.0}],
    },
}


def _alert(tid: str, card: str, score: float, days: int, explanation: dict | None = None) -> Alert:
    return Alert(
        transaction_id=tid,
        customer_id=card,
        terminal_id="m9",
        amount=100.0 + score,
        timestamp=T0 + timedelta(days=days),
        score=score,
        threshold=0.8,
        model="lstm-gnn/test",
        explanation=explanation,
    )


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[AlertStore, Path]:
    """Three open alerts (c1's best, with an explanation) and six scored transactions."""
    alerts, scores = tmp_path / "alerts.db", tmp_path / "scores.db"
    store = AlertStore.open(alerts)
    store.add_many(
        [
            _alert("t1", "c2", 0.91, 0),
            _alert("t2", "c1", 0.97, 1, EXPLANATION),
            _alert("t3", "c3", 0.85, 1),
        ]
    )
    sink = SqliteSink(scores)
    for i, (card, score) in enumerate([("c1", 0.02), ("c2", 0.91), ("c1", 0.10), ("c1", 0.97), ("c4", 0.3)]):
        tid = f"s{i}" if score < 0.8 else {0.91: "t1", 0.97: "t2"}[score]
        sink.write(
            tid,
            {
                "transaction_id": tid,
                "customer_id": card,
                "terminal_id": "m9",
                "amount": 10.0 * (i + 1),
                "timestamp": (T0 + timedelta(hours=i)).isoformat(),
                "score": score,
                "alert": score >= 0.8,
                "threshold": 0.8,
                "model": "lstm-gnn/test",
            },
        )
    sink.close()
    monkeypatch.setenv(ui.ALERTS_ENV, str(alerts))
    monkeypatch.setenv(ui.SCORES_ENV, str(scores))
    yield store, scores
    store.close()


def _page() -> None:
    from apps.fraud import ui

    ui.render()


def page() -> AppTest:
    return AppTest.from_function(_page, default_timeout=60).run()


def infos(at: AppTest) -> list[str]:
    return [i.value for i in at.info]


def test_the_page_renders_every_tab(stores: tuple[AlertStore, Path]) -> None:
    at = page()
    assert not at.exception and not at.error
    assert at.title[0].value == "Fraud alerts"
    assert [t.label for t in at.tabs] == ["Queue", "Scores", "Card", "Metrics"]
    assert [m.value for m in at.metric][:3] == ["3", "0", "0"]  # open, fraud, legitimate
    assert "Alert rate" in [m.label for m in at.metric]
    assert any(m.label == "Alert rate" and m.value == "40.00%" for m in at.metric)
    assert at.get("vega_lite_chart")  # score histogram (+ threshold rule) and the card's charts


def test_the_queue_shows_open_alerts_highest_score_first(stores: tuple[AlertStore, Path]) -> None:
    at = page()
    queue = at.dataframe[0].value
    assert queue["transaction_id"].tolist() == ["t2", "t1", "t3"]
    assert at.selectbox(key="fraud_alert").value == "t2"
    at = at.slider(key="fraud_min_score").set_value(0.9).run()
    assert at.dataframe[0].value["transaction_id"].tolist() == ["t2", "t1"]
    at = at.text_input(key="fraud_queue_card").set_value("c2").run()
    assert at.dataframe[0].value["transaction_id"].tolist() == ["t1"]
    at = at.text_input(key="fraud_queue_card").set_value("nobody").run()
    assert "No alerts match these filters." in infos(at) and not at.exception


def test_a_decision_is_recorded_in_the_store(stores: tuple[AlertStore, Path]) -> None:
    store, _ = stores
    at = page()
    at.selectbox(key="fraud_alert").set_value("t1")
    at.radio(key="fraud_decision").set_value("fraud")
    at.text_input(key="fraud_analyst").set_value("ana")
    at.text_area(key="fraud_note").set_value("card holder confirmed")
    at = next(b for b in at.button if b.label == "Record decision").click().run()
    assert not at.exception
    assert at.success[0].value == "Alert t1 marked fraud by ana."
    decided = store.get("t1")
    assert (
        decided.status == "fraud" and decided.decision_by == "ana" and decided.note == "card holder confirmed"
    )
    assert at.dataframe[0].value["transaction_id"].tolist() == ["t2", "t3"]  # off the open queue
    assert [m.value for m in at.metric][:3] == ["2", "1", "0"]


def test_a_decision_needs_an_analyst(stores: tuple[AlertStore, Path]) -> None:
    store, _ = stores
    at = page()
    at = next(b for b in at.button if b.label == "Record decision").click().run()
    assert at.error[0].value == "Enter the analyst's name to record a decision."
    assert store.get("t2").status == "open"


def test_the_card_drill_down_shows_history_explanation_and_neighbours(
    stores: tuple[AlertStore, Path],
) -> None:
    at = page()  # the picked alert is t2, card c1
    assert at.subheader[0].value == "Card c1"
    card_tab = at.tabs[2]
    history, *_ = card_tab.dataframe
    assert history.value["transaction_id"].tolist() == ["s0", "s2", "t2"]
    captions = [c.value for c in card_tab.caption]
    assert any(c.startswith("amount 912.00 (+2.31), terminal_risk_30d 0.67 (+1.10)") for c in captions)
    tables = [d.value for d in card_tab.dataframe]
    assert any("terminal_id" in t and t["terminal_id"].tolist() == ["m9", "m2"] for t in tables)
    assert any("card_id" in t and t["card_id"].tolist() == ["c7"] for t in tables)
    at = at.text_input(key="fraud_card").set_value("c4").run()  # scored, never alerted
    assert at.subheader[0].value == "Card c4" and "Card c4 has no alerts." in infos(at)
    at = at.text_input(key="fraud_card").set_value("c3").run()  # alerted, no explanation
    assert "This alert was stored without an explanation." in infos(at) and not at.exception


def test_metrics_over_time_give_precision_per_day(stores: tuple[AlertStore, Path]) -> None:
    store, _ = stores
    store.decide("t2", "fraud", "ana")
    store.decide("t3", "legitimate", "ana")
    at = page()
    assert any(m.label == "Analyst-confirmed precision" and m.value == "50.0%" for m in at.metric)
    per_day = ui.precision_by_day(store.by_day())
    assert per_day["precision"].tolist() == [pytest.approx(float("nan"), nan_ok=True), 0.5]


def test_empty_states_name_the_command_that_fills_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alerts, scores = tmp_path / "none" / "alerts.db", tmp_path / "none" / "scores.db"
    monkeypatch.setenv(ui.ALERTS_ENV, str(alerts))
    monkeypatch.setenv(ui.SCORES_ENV, str(scores))
    at = page()
    assert not at.exception and not at.error
    messages = infos(at)
    assert any(m.startswith(f"No alert store at `{alerts}` yet") for m in messages)
    assert any(m.startswith(f"No scores database at `{scores}` yet") for m in messages)
    stream = f"fathom fraud stream --source ... --sink sqlite://{scores} --alerts {alerts}"
    assert all(stream in m and "fathom fraud score" in m for m in messages if m.startswith("No "))
    assert not alerts.exists() and not scores.exists()  # the dashboard creates nothing
    AlertStore.open(alerts).close()  # an empty store
    SqliteSink(scores).close()  # an empty scores table
    messages = infos(page())
    assert any(m.startswith(f"No alerts in `{alerts}` yet") and stream in m for m in messages)
    assert any(m.startswith(f"No scores in `{scores}` (table `results`) yet") for m in messages)


def test_the_sidebar_points_the_page_at_other_stores(stores: tuple[AlertStore, Path], tmp_path: Path) -> None:
    at = page()
    assert at.sidebar.text_input(key="fraud_alerts").value == str(tmp_path / "alerts.db")
    at = at.sidebar.text_input(key="fraud_scores").set_value(f"sqlite://{tmp_path / 'other.db'}").run()
    assert any(m.startswith(f"No scores database at `{tmp_path / 'other.db'}`") for m in infos(at))
    at = at.sidebar.toggle(key="fraud_auto").set_value(True).run()
    assert not at.exception and at.dataframe[0].value["transaction_id"].tolist()[0] == "t2"


def test_load_scores_reads_read_only(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no scores database at"):
        ui.load_scores(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    sink = SqliteSink(tmp_path / "s.db", table="other")
    sink.write("k", {"transaction_id": "k", "customer_id": 7, "score": 0.5, "timestamp": T0.isoformat()})
    sink.close()
    assert ui.load_scores(tmp_path / "s.db").empty  # no "results" table
    frame = ui.load_scores(tmp_path / "s.db", table="other")
    assert frame.loc[0, "customer_id"] == "7" and frame.loc[0, "timestamp"] == pd.Timestamp(T0)
    assert frame.loc[0, "alert"] is False or not frame.loc[0, "alert"]
    assert ui.scores_location("sqlite:///srv/s.db?table=other") == (Path("/srv/s.db"), "other")
    with pytest.raises(ValueError, match="table name"):
        ui.load_scores(tmp_path / "s.db", table="x; drop")


def test_the_multipage_app_has_the_fraud_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ui.ALERTS_ENV, str(tmp_path / "alerts.db"))
    monkeypatch.setenv(ui.SCORES_ENV, str(tmp_path / "scores.db"))
    at = AppTest.from_file(str(main_path()), default_timeout=60).run()
    assert not at.exception and at.title[0].value == "Fathom"
    pages = getattr(at, "_registered_pages", None)  # AppTest keeps st.navigation's pages here
    if pages is not None:
        assert "Fraud alerts" in [p["page_name"] for p in pages.values()]
