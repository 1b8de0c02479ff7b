import threading
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from apps.fraud.alerts import ALERT_STATUSES, Alert, AlertStore

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make(tid: str, score: float = 0.9, *, customer: str = "c1", minutes: float = 0, **kw) -> Alert:
    values = dict(
        transaction_id=tid,
        customer_id=customer,
        terminal_id="m1",
        amount=42.5,
        timestamp=T0 + timedelta(minutes=minutes),
        score=score,
        threshold=0.8,
        model="lstm-gnn/1",
    )
    return Alert(**{**values, **kw})


@pytest.fixture
def store(tmp_path):
    with AlertStore(f"sqlite:///{tmp_path / 'alerts.db'}") as s:
        yield s


def test_add_is_idempotent_by_transaction_id(store):
    assert store.add(make("t1", 0.9)) is True
    assert store.add(make("t1", 0.1, customer="other")) is False
    assert store.count() == 1
    kept = store.get("t1")
    assert kept.score == 0.9 and kept.customer_id == "c1"
    store.decide("t1", "fraud", "ana")
    assert store.add(make("t1")) is False
    assert store.get("t1").status == "fraud"  # a replayed alert does not reopen a decided one


def test_add_accepts_mapping_and_int_ids(store):
    assert store.add({**make("x").__dict__, "transaction_id": 17, "customer_id": " c9 "})
    got = store.get("17")
    assert got.customer_id == "c9" and got.status == "open" and got.created_at.tzinfo == UTC
    assert store.get("nope") is None


def test_add_many_counts_new_in_one_transaction(store):
    store.add(make("t0"))
    alerts = [make(f"t{i}") for i in range(5)] + [make("t3")]
    assert store.add_many(alerts) == 4
    assert store.count() == 5
    assert store.add_many([]) == 0
    with pytest.raises(ValueError, match=r"alert 1: score"):
        store.add_many([make("new1"), make("new2", score=2.0)])
    assert store.get("new1") is None  # all or nothing
    assert store.add_many(make(f"g{i}") for i in range(501)) == 501  # several INSERT chunks
    assert store.count() == 506


def test_queue_orders_filters_and_pages(store):
    store.add_many(
        [
            make("a", 0.95, minutes=0),
            make("b", 0.85, minutes=30),
            make("c", 0.99, minutes=10, customer="c2"),
            make("d", 0.85, minutes=40),
        ]
    )
    ids = lambda alerts: [a.transaction_id for a in alerts]  # noqa: E731
    assert ids(store.queue()) == ["c", "a", "d", "b"]  # score desc, ties newest first
    assert ids(store.queue(order="time")) == ["d", "b", "c", "a"]
    assert ids(store.queue(limit=2)) == ["c", "a"]
    assert ids(store.queue(limit=2, offset=2)) == ["d", "b"]
    assert ids(store.queue(offset=10)) == []
    assert ids(store.queue(customer_id="c2")) == ["c"]
    assert ids(store.queue(min_score=0.9)) == ["c", "a"]
    store.decide("c", "legitimate", "bo")
    assert ids(store.queue()) == ["a", "d", "b"]
    assert ids(store.queue(status="legitimate")) == ["c"]
    assert ids(store.queue(status=None, order="time")) == ["d", "b", "c", "a"]
    with pytest.raises(ValueError, match="order"):
        store.queue(order="amount")
    with pytest.raises(ValueError, match="status"):
        store.queue(status="closed")
    with pytest.raises(ValueError, match="limit"):
        store.queue(limit=0)
    with pytest.raises(ValueError, match="offset"):
        store.queue(offset=-1)


def test_counts(store):
    assert store.counts() == dict.fromkeys(ALERT_STATUSES, 0)
    store.add_many([make("a"), make("b"), make("c")])
    store.decide("a", "fraud", "ana")
    assert store.counts() == {"open": 2, "fraud": 1, "legitimate": 0}
    assert store.count("open") == 2 and store.count("fraud") == 1 and store.count() == 3


def test_decide_and_labels_round_trip(store):
    store.add_many([make("a"), make("b"), make("c")])
    decided = store.decide("a", "fraud", "ana", note="confirmed by card holder")
    assert decided.status == "fraud" and decided.decision_by == "ana"
    assert decided.note == "confirmed by card holder" and decided.decided_at.tzinfo == UTC
    assert store.get("a") == decided
    cut = datetime.now(UTC)
    store.decide("b", "legitimate", "bo")

    labels = store.labels()
    assert list(labels.columns) == ["transaction_id", "label", "decided_at", "analyst"]
    assert labels["transaction_id"].tolist() == ["a", "b"]
    assert labels["label"].tolist() == [True, False] and labels["label"].dtype == bool
    assert labels["analyst"].tolist() == ["ana", "bo"]
    assert str(labels["decided_at"].dt.tz) == "UTC"
    assert store.labels(since=cut)["transaction_id"].tolist() == ["b"]
    assert store.labels(since=cut.replace(tzinfo=None))["transaction_id"].tolist() == ["b"]  # naive = UTC

    store.decide("a", "legitimate", "cy")  # re-deciding overwrites
    again = store.get("a")
    assert again.status == "legitimate" and again.decision_by == "cy" and again.note is None
    assert store.labels().set_index("transaction_id").loc["a", "label"] == False  # noqa: E712


def test_labels_empty_has_columns(store):
    store.add(make("a"))
    labels = store.labels()
    assert labels.empty
    assert list(labels.columns) == ["transaction_id", "label", "decided_at", "analyst"]
    assert labels["label"].dtype == bool and str(labels["decided_at"].dt.tz) == "UTC"


def test_decide_errors_name_the_problem(store):
    store.add(make("a"))
    with pytest.raises(KeyError, match="missing-id"):
        store.decide("missing-id", "fraud", "ana")
    with pytest.raises(ValueError, match=r"decision must be one of fraud, legitimate; got 'maybe'"):
        store.decide("a", "maybe", "ana")
    with pytest.raises(ValueError, match="decision"):
        store.decide("a", "open", "ana")
    with pytest.raises(ValueError, match="analyst"):
        store.decide("a", "fraud", "  ")
    assert store.get("a").status == "open"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"score": 1.5}, "score"),
        ({"score": -0.1}, "score"),
        ({"score": float("nan")}, "score"),
        ({"score": float("inf")}, "score"),
        ({"score": "high"}, "score"),
        ({"threshold": 2}, "threshold"),
        ({"amount": float("nan")}, "amount"),
        ({"transaction_id": ""}, "transaction_id"),
        ({"transaction_id": None}, "transaction_id"),
        ({"customer_id": " "}, "customer_id"),
        ({"terminal_id": ""}, "terminal_id"),
        ({"model": ""}, "model"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"status": "closed"}, "status"),
        ({"explanation": {"x": float("nan")}}, "explanation"),
        ({"explanation": {"x": object()}}, "explanation"),
        ({"explanation": [1, 2]}, "explanation"),
    ],
)
def test_bad_alert_names_the_field(store, changes, field):
    with pytest.raises(ValueError, match=field):
        store.add(make("t1", **changes))
    assert store.count() == 0


def test_bad_mapping_names_fields(store):
    with pytest.raises(ValueError, match="colour"):
        store.add({**make("t1").__dict__, "colour": "red"})
    partial = make("t1").__dict__
    del partial["score"]
    with pytest.raises(ValueError, match="score"):
        store.add(partial)


def test_by_day_counts_per_utc_day(store):
    late = datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2024-03-02 04:30 UTC
    store.add_many(
        [
            make("a", timestamp=datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
            make("b", timestamp=datetime(2024, 3, 1, 23, 59, tzinfo=UTC)),
            make("c", timestamp=late),
            make("d", timestamp=datetime(2024, 3, 4, 9, 0, tzinfo=UTC)),
        ]
    )
    store.decide("a", "fraud", "ana")
    store.decide("c", "legitimate", "ana")
    table = store.by_day()
    assert list(table.columns) == ["n_alerts", "n_fraud", "n_legitimate", "n_open"]
    assert table.index.name == "day" and str(table.index.tz) == "UTC"
    assert [d.strftime("%Y-%m-%d") for d in table.index] == ["2024-03-01", "2024-03-02", "2024-03-04"]
    assert table.to_dict("list") == {
        "n_alerts": [2, 1, 1],
        "n_fraud": [1, 0, 0],
        "n_legitimate": [0, 1, 0],
        "n_open": [1, 0, 1],
    }
    empty = AlertStore("sqlite://").by_day()
    assert empty.empty and list(empty.columns) == list(table.columns)


def test_timezones_are_utc(store):
    paris = timezone(timedelta(hours=1))
    store.add(make("aware", timestamp=datetime(2024, 3, 1, 13, 0, tzinfo=paris)))
    store.add(make("naive", timestamp=datetime(2024, 3, 1, 12, 0)))
    store.add(make("text", timestamp="2024-03-01T12:00:00Z"))
    store.add(make("pandas", timestamp=pd.Timestamp("2024-03-01 07:00", tz="US/Eastern")))
    for tid in ("aware", "naive", "text", "pandas"):
        got = store.get(tid).timestamp
        assert got == T0 and got.tzinfo == UTC and got.utcoffset() == timedelta(0), tid


def test_json_explanation_round_trip(store):
    explanation = {
        "attributions": {"amount_z": 2.5, "terminal_risk_7d": -0.125},
        "neighbours": [{"terminal": "m7", "weight": 0.5}, {"terminal": "m9", "weight": 0.25}],
        "note": "ünïcode ✓",
        "empty": None,
    }
    store.add(make("t1", explanation=explanation))
    store.add(make("t2", explanation={"path": ("c1", "m1")}))
    store.add(make("t3"))
    assert store.get("t1").explanation == explanation
    assert store.get("t2").explanation == {"path": ["c1", "m1"]}  # as JSON reads it back
    assert store.get("t3").explanation is None


def test_persists_across_reopen(tmp_path):
    path = tmp_path / "nested" / "alerts.db"
    with AlertStore.open(path) as first:  # a plain path means SQLite; the folder is created
        first.add(make("t1", explanation={"k": [1, 2]}))
        first.decide("t1", "fraud", "ana", note="n")
        before = first.get("t1")
    with AlertStore.open(f"sqlite:///{path}") as second:
        assert second.get("t1") == before
        assert second.add(make("t1")) is False
        assert second.counts()["fraud"] == 1


def test_in_memory_and_bad_urls():
    with AlertStore("sqlite://") as memory:
        assert memory.add(make("t1")) and memory.count() == 1
    with pytest.raises(ValueError, match="mysql"):
        AlertStore("mysql://u@h/db")
    with pytest.raises(ValueError, match="empty"):
        AlertStore("")


def test_one_writer_many_readers_threads(store):
    errors: list[BaseException] = []
    added: list[int] = []

    def write() -> None:
        try:
            for start in range(0, 200, 20):  # replays overlap: at-least-once delivery
                added.append(store.add_many(make(f"t{i}") for i in range(max(0, start - 10), start + 20)))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def read() -> None:
        try:
            for _ in range(30):
                store.queue(limit=10)
                store.counts()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(added) == 200 == store.count()


def test_model_compiles_for_postgresql():
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    from apps.fraud.alerts import _AlertRow

    ddl = str(CreateTable(_AlertRow.__table__).compile(dialect=postgresql.dialect()))
    assert "TIMESTAMP WITH TIME ZONE" in ddl and "explanation JSON" in ddl
    assert {i.name for i in _AlertRow.__table__.indexes} >= {
        "ix_fraud_alerts_status_score",
        "ix_fraud_alerts_customer_id",
    }
