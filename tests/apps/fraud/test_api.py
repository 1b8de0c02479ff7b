"""POST /fraud/score and the /fraud/alerts queue: the tiny trained model over HTTP, alerts in SQLite."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from apps.api import create_api
from apps.customer_service.schemas import AskResult, Intent
from apps.fraud.alerts import AlertStore
from apps.fraud.service import FraudScorer

KEY = "test-key"
HEADERS = {"X-API-Key": KEY}
NEVER, ALWAYS = 1.0, 0.0  # thresholds: no transaction alerts / every transaction alerts


class EchoAssistant:
    def ask(self, question: str, session_id: str | None = None) -> AskResult:
        return AskResult(answer=f"echo: {question}", sources=[], intent=Intent(label="other", confidence=0.5))

    def history(self, session_id: str) -> list[dict[str, object]]:
        return []


def payload(df: pd.DataFrame, rows: range | list[int]) -> list[dict[str, Any]]:
    """Rows of the simulated frame as JSON transactions (no label: the API scores unlabelled ones)."""
    out = []
    for row in df.iloc[list(rows)].itertuples(index=False):
        out.append(
            {
                "transaction_id": row.transaction_id,
                "timestamp": row.timestamp.isoformat(),
                "customer_id": row.customer_id,
                "terminal_id": row.terminal_id,
                "amount": row.amount,
                "currency": row.currency,
                "channel": row.channel,
                "merchant_category": row.merchant_category,
            }
        )
    return out


@pytest.fixture
def make_client(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(threshold, api_key=KEY, **create_api_options)``: tiny model, fresh alert store."""
    clients: list[TestClient] = []

    def make(threshold: float, api_key: str | None = KEY, **options: Any) -> TestClient:
        app = create_api(
            api_key,
            assistant_factory=EchoAssistant,
            fraud_scorer_factory=lambda: FraudScorer.load(tiny_model_dir, threshold=threshold),
            fraud_alerts_factory=lambda: AlertStore.open(tmp_path / f"alerts-{len(clients)}.db"),
            **options,
        )
        client = TestClient(app, headers={} if api_key is None else HEADERS)
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_one_transaction_is_scored(make_client: Callable[..., TestClient], fraud_df: pd.DataFrame) -> None:
    client = make_client(NEVER)
    response = client.post("/fraud/score", json=payload(fraud_df, [0])[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["n_alerts"] == 0
    [result] = body["results"]
    assert set(result) == {"transaction_id", "score", "alert", "threshold", "model", "repeated"}
    assert result["transaction_id"] == "0" and 0.0 <= result["score"] <= 1.0
    assert result["alert"] is False and result["repeated"] is False and result["threshold"] == NEVER
    assert "fraud" in result["model"]
    assert client.get("/healthz").json()["components"]["fraud.scorer"]["loaded"] is True


def test_a_batch_is_scored_in_time_order_and_answered_in_input_order(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame, tiny_model_dir: Path
) -> None:
    txs = payload(fraud_df, range(40))
    sent = txs[::-1]  # newest first: the scorer must sort them, the answer must not
    response = make_client(NEVER).post("/fraud/score", json={"transactions": sent})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [tx["transaction_id"] for tx in sent]
    # the same scores as the scorer itself gives, fed in time order
    direct = FraudScorer.load(tiny_model_dir, threshold=NEVER).score_many(
        fraud_df.iloc[:40].drop(columns=["label", "fraud_type"]).to_dict("records")
    )
    expected = {r.transaction_id: r.score for r in direct}
    assert {r["transaction_id"]: r["score"] for r in results} == pytest.approx(expected, abs=1e-6)


def test_alerts_are_queued_and_decided(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame
) -> None:
    client = make_client(ALWAYS)
    txs = payload(fraud_df, range(5))
    body = client.post("/fraud/score", json={"transactions": txs}).json()
    assert body["n_alerts"] == 5
    assert all(r["alert"] and isinstance(r["explanation"], dict) for r in body["results"])

    queue = client.get("/fraud/alerts").json()
    assert sorted(a["transaction_id"] for a in queue) == sorted(tx["transaction_id"] for tx in txs)
    assert [a["score"] for a in queue] == sorted((a["score"] for a in queue), reverse=True)
    first = queue[0]
    assert first["status"] == "open" and first["decision_by"] is None
    assert datetime.fromisoformat(first["timestamp"]).utcoffset() is not None
    assert client.get("/fraud/alerts", params={"limit": 2, "offset": 4}).json() == queue[4:]
    customer = txs[0]["customer_id"]
    mine = client.get("/fraud/alerts", params={"customer_id": customer, "order": "time"}).json()
    assert mine and all(a["customer_id"] == customer for a in mine)
    assert client.get("/fraud/alerts/summary").json() == {"open": 5, "fraud": 0, "legitimate": 0, "total": 5}

    tid = first["transaction_id"]
    assert client.get(f"/fraud/alerts/{tid}").json() == first
    decided = client.post(
        f"/fraud/alerts/{tid}/decision", json={"decision": "fraud", "analyst": "ana", "note": "confirmed"}
    )
    assert decided.status_code == 200, decided.text
    out = decided.json()
    assert out["status"] == "fraud" and out["decision_by"] == "ana" and out["note"] == "confirmed"
    assert out["label_applied"] is True and out["decided_at"] is not None
    assert client.get(f"/fraud/alerts/{tid}").json()["status"] == "fraud"
    assert client.get("/fraud/alerts/summary").json() == {"open": 4, "fraud": 1, "legitimate": 0, "total": 5}
    assert [a["transaction_id"] for a in client.get("/fraud/alerts", params={"status": "fraud"}).json()] == [
        tid
    ]
    assert len(client.get("/fraud/alerts", params={"status": "all"}).json()) == 5


def test_unknown_alerts_are_404(make_client: Callable[..., TestClient]) -> None:
    client = make_client(NEVER)
    response = client.get("/fraud/alerts/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no alert for transaction 'nope'"}
    decision = {"decision": "legitimate", "analyst": "ana"}
    assert client.post("/fraud/alerts/nope/decision", json=decision).status_code == 404


def test_a_repeated_transaction_returns_its_first_result_and_one_alert(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame
) -> None:
    client = make_client(ALWAYS)
    tx = payload(fraud_df, [0])[0]
    first = client.post("/fraud/score", json=tx).json()["results"][0]
    client.post("/fraud/score", json={"transactions": payload(fraud_df, [1, 2])})
    again = client.post("/fraud/score", json=tx).json()["results"][
        0
    ]  # earlier than the last seen: a redelivery
    assert first["repeated"] is False and again["repeated"] is True
    assert again["score"] == first["score"] and again["alert"] is True
    assert client.get("/fraud/alerts/summary").json()["total"] == 3


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda txs: txs[2].update(amount=-5), "transactions.2.amount", "finite number from 0 to"),
        (lambda txs: txs[1].pop("customer_id"), "transactions.1.customer_id", "Field required"),
        (lambda txs: txs[0].update(timestamp="yesterday"), "transactions.0.timestamp", "datetime"),
        (lambda txs: txs[0].update(currency="euro"), "transactions.0.currency", "ISO 4217"),
        (lambda txs: txs[2].update(colour="red"), "transactions.2.colour", "Extra inputs"),
        (lambda txs: txs.clear(), "transactions", "at least 1 item"),
    ],
)
def test_a_bad_item_is_422_naming_its_index_and_field_and_nothing_is_scored(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame, edit: Any, field: str, message: str
) -> None:
    client = make_client(ALWAYS)
    txs = payload(fraud_df, range(3))
    edit(txs)
    response = client.post("/fraud/score", json={"transactions": txs})
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["field"] == field and body["errors"][0]["location"] == "body"
    assert body["detail"].startswith(f"invalid request: {field}: ") and message in body["detail"]
    assert client.get("/healthz").json()["components"]["fraud.scorer"]["loaded"] is False  # never asked for
    assert client.get("/fraud/alerts/summary").json()["total"] == 0


def test_a_bad_single_transaction_names_the_field(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame
) -> None:
    client = make_client(NEVER)
    tx = payload(fraud_df, [0])[0]
    del tx["customer_id"]
    response = client.post("/fraud/score", json=tx)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "customer_id"
    assert client.post("/fraud/score", json=[tx]).status_code == 422  # a bare list is not a body


def test_a_transaction_earlier_than_the_last_seen_is_409(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame
) -> None:
    client = make_client(ALWAYS)
    early, late = payload(fraud_df, [0, 10])
    assert client.post("/fraud/score", json=late).status_code == 200
    response = client.post("/fraud/score", json={"transactions": [early]})
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert "earlier than the last one seen" in response.json()["detail"]
    assert client.get("/fraud/alerts/summary").json()["total"] == 1  # the refused one raised no alert


@pytest.mark.parametrize("max_batch", [256, 1])
def test_concurrent_requests_are_micro_batched_each_with_its_own_answer(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame, max_batch: int
) -> None:
    """Concurrent requests share scoring calls (256) or not (1); a refused one fails alone either way."""
    client = make_client(ALWAYS, fraud_max_batch=max_batch, fraud_max_wait_ms=100)
    rows = payload(fraud_df, range(0, 101))
    assert client.post("/fraud/score", json=rows[100]).status_code == 200
    base = fraud_df["timestamp"].iloc[100]
    later = [  # seconds apart: any arrival order is within the scorer's lateness allowance
        {**tx, "timestamp": (base + pd.Timedelta(seconds=i + 1)).isoformat()}
        for i, tx in enumerate(payload(fraud_df, range(101, 109)))
    ]
    bodies = [*later, {"transactions": [rows[0]]}]  # the last is far too early: 409
    start = threading.Barrier(len(bodies))

    def post(body: dict[str, Any]) -> Any:
        start.wait()
        return client.post("/fraud/score", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    assert [r.status_code for r in responses] == [200] * len(later) + [409]
    for body, response in zip(later, responses, strict=False):
        assert [r["transaction_id"] for r in response.json()["results"]] == [body["transaction_id"]]
    assert client.get("/fraud/alerts/summary").json()["total"] == 1 + len(later)
    metrics = client.get("/metrics").text
    calls = [line for line in metrics.splitlines() if line.startswith("fathom_batch_size_count")]
    if max_batch == 1:
        assert not calls  # no micro-batcher at all
    else:
        merged = float(calls[0].rsplit(" ", 1)[1])
        assert merged < len(bodies) + 1  # fewer scoring calls than requests (the 409 is retried alone)


def test_a_bad_decision_is_422(make_client: Callable[..., TestClient], fraud_df: pd.DataFrame) -> None:
    client = make_client(ALWAYS)
    tid = client.post("/fraud/score", json=payload(fraud_df, [0])[0]).json()["results"][0]["transaction_id"]
    for body, field in (
        ({"decision": "maybe", "analyst": "ana"}, "decision"),
        ({"decision": "fraud", "analyst": "  "}, "analyst"),
        ({"decision": "fraud"}, "analyst"),
    ):
        response = client.post(f"/fraud/alerts/{tid}/decision", json=body)
        assert response.status_code == 422 and response.json()["errors"][0]["field"] == field
    assert client.get(f"/fraud/alerts/{tid}").json()["status"] == "open"


def test_the_fraud_routes_need_the_api_key(
    make_client: Callable[..., TestClient], fraud_df: pd.DataFrame
) -> None:
    client = make_client(NEVER)
    tx = payload(fraud_df, [0])[0]
    for method, path in (
        ("post", "/fraud/score"),
        ("get", "/fraud/alerts"),
        ("get", "/fraud/alerts/summary"),
    ):
        assert client.request(method, path, json=tx, headers={"X-API-Key": ""}).status_code == 401
        assert client.request(method, path, json=tx, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/fraud/score", json=tx).status_code == 200
    assert client.post(
        "/fraud/score", json=tx, headers={"X-API-Key": "", "Authorization": f"Bearer {KEY}"}
    ).json()["results"][0]["repeated"]


def test_a_missing_fraud_model_is_503_on_fraud_routes_only(tmp_path: Path, fraud_df: pd.DataFrame) -> None:
    def missing() -> FraudScorer:
        return FraudScorer.load(tmp_path / "no-model")

    app = create_api(
        KEY,
        assistant_factory=EchoAssistant,
        fraud_scorer_factory=missing,
        fraud_alerts_factory=lambda: AlertStore.open(tmp_path / "a.db"),
        preload=True,
    )
    with TestClient(app, headers=HEADERS) as client:  # startup survives the failed preload
        assert client.post("/cs/ask", json={"question": "hi"}).json()["answer"] == "echo: hi"
        response = client.post("/fraud/score", json=payload(fraud_df, [0])[0])
        assert response.status_code == 503 and "fraud.scorer is unavailable" in response.json()["detail"]
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["components"]["fraud.scorer"]["error"] == "FileNotFoundError"
        assert health.json()["components"]["customer_service.assistant"]["loaded"] is True


def test_defaults_come_from_the_environment(
    tmp_path: Path, tiny_model_dir: Path, fraud_df: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FATHOM_MODELS_DIR", str(tmp_path / "models"))  # no shipped fraud model
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FATHOM_FRAUD_MODEL", raising=False)
    monkeypatch.delenv("FATHOM_FRAUD_ALERTS", raising=False)
    with TestClient(
        create_api(KEY, assistant_factory=EchoAssistant, preload=True), headers=HEADERS
    ) as client:
        health = client.get("/healthz")  # no model to preload: healthy, the scorer not loaded
        assert health.status_code == 200 and health.json()["components"]["fraud.scorer"]["loaded"] is False
        assert client.get("/fraud/alerts/summary").json()["total"] == 0
        assert (tmp_path / "cache" / "fraud" / "alerts.db").is_file()
        assert client.post("/fraud/score", json=payload(fraud_df, [0])[0]).status_code == 503

    monkeypatch.setenv("FATHOM_FRAUD_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("FATHOM_FRAUD_ALERTS", f"sqlite:///{tmp_path / 'env-alerts.db'}")
    with TestClient(
        create_api(KEY, assistant_factory=EchoAssistant, preload=True), headers=HEADERS
    ) as client:
        assert client.get("/healthz").json()["components"]["fraud.scorer"]["loaded"] is True  # preloaded
        assert client.post("/fraud/score", json=payload(fraud_df, [0])[0]).status_code == 200
        assert client.get("/fraud/alerts/summary").status_code == 200
    assert (tmp_path / "env-alerts.db").is_file()
