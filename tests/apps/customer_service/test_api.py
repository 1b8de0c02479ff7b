"""POST /cs/ask and GET /cs/sessions/{id}: a fake assistant for the HTTP layer, the real one end to end."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from apps.api import create_api
from apps.customer_service.schemas import MAX_QUESTION_CHARS, AskResult, HandoffOut, Intent, Source

KEY = {"X-API-Key": "test-key"}


class FakeAssistant:
    """Answers from a fixed passage; hands off when the question says "stolen"; rejects "reject"."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.threads: set[int] = set()
        self.turns: dict[str, list[dict[str, Any]]] = {}

    def ask(self, question: str, session_id: str | None = None) -> AskResult:
        self.calls.append((question, session_id))
        self.threads.add(threading.get_ident())
        if "reject" in question:
            raise ValueError("the question names no account or card")
        session_id = session_id or f"new-{len(self.calls)}"
        handoff = (
            HandoffOut(reason="possible fraud: a stolen card", code="urgent")
            if "stolen" in question
            else None
        )
        result = AskResult(
            answer="Freeze your card in the app, then order a replacement.",
            sources=[
                Source(
                    id="lost-or-stolen-card#0",
                    title="Lost or stolen card",
                    source="lost-or-stolen-card.md",
                    section="What to do",
                    score=0.8123,
                    text="If your card is lost or stolen, freeze it in the app.",
                )
            ],
            intent=Intent(label="lost_or_stolen_card", confidence=0.93),
            handoff=handoff,
            session_id=session_id,
        )
        turn = {"role": "assistant", "text": result.answer, "intent": "lost_or_stolen_card"}
        self.turns.setdefault(session_id, []).extend(
            [{"role": "user", "text": question, "intent": None, "sources": [], "handoff": None}, turn]
        )
        return result

    def history(self, session_id: str) -> list[dict[str, Any]]:
        return list(self.turns.get(session_id, []))


@pytest.fixture
def fake() -> FakeAssistant:
    return FakeAssistant()


@pytest.fixture
def client(fake: FakeAssistant) -> Iterator[TestClient]:
    with TestClient(create_api("test-key", assistant_factory=lambda: fake)) as client:
        yield client


def test_ask_returns_the_public_shape(client: TestClient, fake: FakeAssistant) -> None:
    response = client.post("/cs/ask", json={"question": "I lost my card", "session_id": "s-1"}, headers=KEY)
    assert response.status_code == 200
    assert response.json() == {
        "answer": "Freeze your card in the app, then order a replacement.",
        "sources": [
            {
                "id": "lost-or-stolen-card#0",
                "title": "Lost or stolen card",
                "source": "lost-or-stolen-card.md",
                "score": 0.8123,
                "text": "If your card is lost or stolen, freeze it in the app.",
            }
        ],
        "intent": {"label": "lost_or_stolen_card", "confidence": 0.93},
        "handoff": None,
        "session_id": "s-1",
    }
    assert fake.calls == [("I lost my card", "s-1")]
    assert threading.get_ident() not in fake.threads  # a def endpoint: the call ran in the threadpool


def test_handoff_reason_is_returned_without_internal_fields(client: TestClient) -> None:
    body = client.post("/cs/ask", json={"question": "my card was stolen"}, headers=KEY).json()
    assert body["handoff"] == {"reason": "possible fraud: a stolen card"}
    assert body["session_id"] == "new-1"
    assert "section" not in body["sources"][0]


def test_a_conversation_is_continued_and_its_history_read(client: TestClient) -> None:
    first = client.post("/cs/ask", json={"question": "I lost my card"}, headers=KEY).json()
    session_id = first["session_id"]
    client.post("/cs/ask", json={"question": "and my PIN?", "session_id": session_id}, headers=KEY)
    response = client.get(f"/cs/sessions/{session_id}", headers=KEY)
    assert response.status_code == 200
    body = response.json()
    assert body["session_id"] == session_id
    assert [(t["role"], t["text"]) for t in body["turns"]][::2] == [
        ("user", "I lost my card"),
        ("user", "and my PIN?"),
    ]
    assert set(body["turns"][1]) == {"role", "text", "intent", "sources", "handoff", "created"}


def test_unknown_session_is_404(client: TestClient) -> None:
    response = client.get("/cs/sessions/never-seen", headers=KEY)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no conversation with session_id 'never-seen'"}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"question": ""}, "question", "at least 1 character"),
        ({"question": "   "}, "question", "question is empty"),
        (
            {"question": "x" * (MAX_QUESTION_CHARS + 1)},
            "question",
            f"at most {MAX_QUESTION_CHARS} characters",
        ),
        ({"question": "hi", "session_id": "a b"}, "session_id", "session_id must be 1-128 characters"),
        ({"question": "hi", "session_id": "x" * 129}, "session_id", "session_id must be 1-128 characters"),
        ({"session_id": "s-1"}, "question", "Field required"),
        ({"question": 42}, "question", "valid string"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    client: TestClient, fake: FakeAssistant, body: dict[str, Any], field: str, message: str
) -> None:
    response = client.post("/cs/ask", json=body, headers=KEY)
    assert response.status_code == 422
    data = response.json()
    assert data["errors"][0]["field"] == field
    assert data["detail"].startswith(f"invalid request: {field}: ") and message in data["detail"]
    assert fake.calls == []


def test_bad_session_id_in_the_path_is_422(client: TestClient) -> None:
    response = client.get("/cs/sessions/bad%20id", headers=KEY)
    assert response.status_code == 422
    assert response.json()["errors"][0] == {
        "field": "session_id",
        "location": "path",
        "message": "session_id must be 1-128 characters of letters, digits and _.:-",
    }


def test_a_value_error_from_the_assistant_is_422_with_its_message(client: TestClient) -> None:
    response = client.post("/cs/ask", json={"question": "please reject this"}, headers=KEY)
    assert response.status_code == 422
    assert response.json() == {"error": "validation_error", "detail": "the question names no account or card"}


def test_a_broken_result_is_a_500_not_a_422(fake: FakeAssistant) -> None:
    def bad_ask(question: str, session_id: str | None = None) -> AskResult:
        return AskResult(answer="x", sources=[], intent=Intent(label="a", confidence=2.0))  # invalid

    fake.ask = bad_ask  # type: ignore[method-assign]
    client = TestClient(create_api("test-key", assistant_factory=lambda: fake))
    response = client.post("/cs/ask", json={"question": "hi"}, headers=KEY)
    assert response.status_code == 500 and response.json()["error"] == "internal_error"


def test_the_assistant_is_built_once_on_first_use(fake: FakeAssistant) -> None:
    builds = []
    app = create_api("test-key", assistant_factory=lambda: builds.append(1) or fake)
    client = TestClient(app)
    assert builds == [] and client.get("/healthz").json()["components"]["customer_service.assistant"] == {
        "loaded": False,
        "load_seconds": None,
        "error": None,
    }
    assert client.post("/cs/ask", json={"question": ""}, headers=KEY).status_code == 422
    assert builds == []  # a bad request is refused before the assistant is asked for
    for question in ("one", "two", "three"):
        assert client.post("/cs/ask", json={"question": question}, headers=KEY).status_code == 200
    assert builds == [1]
    assert client.get("/healthz").json()["components"]["customer_service.assistant"]["loaded"] is True


def test_an_assistant_that_fails_to_load_is_503_and_healthz_degraded() -> None:
    def broken() -> FakeAssistant:
        raise FileNotFoundError("/var/lib/fathom/index/manifest.json")

    client = TestClient(create_api("test-key", assistant_factory=broken))
    response = client.post("/cs/ask", json={"question": "hi"}, headers=KEY)
    assert response.status_code == 503
    assert response.json() == {
        "error": "unavailable",
        "detail": "customer_service.assistant is unavailable: it failed to load (see the server log)",
    }
    assert response.headers["retry-after"] == "30"
    assert "manifest" not in response.text
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["components"]["customer_service.assistant"]["error"] == "FileNotFoundError"


def test_routes_need_the_key(client: TestClient) -> None:
    assert client.post("/cs/ask", json={"question": "hi"}).status_code == 401
    assert client.get("/cs/sessions/s-1", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_openapi_declares_the_response_models(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ok = paths["/cs/ask"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/AskResponse")
    assert paths["/cs/ask"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AskRequest"
    )
    assert paths["/cs/sessions/{session_id}"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]["$ref"].endswith("/SessionHistory")


def test_make_router_needs_a_callable() -> None:
    from apps.customer_service.api import make_router

    with pytest.raises(TypeError, match="get_assistant must be callable"):
        make_router(FakeAssistant())  # type: ignore[arg-type]


def _real_assistant_available() -> None:
    try:
        importlib.import_module("apps.customer_service.assistant")
    except ImportError as exc:
        pytest.skip(f"apps.customer_service.assistant not available yet ({exc})")
    from apps.customer_service.intents import default_router_dir

    if not (default_router_dir() / "model.safetensors").is_file():
        pytest.skip("needs the shipped intent router in models/intent-router")


@pytest.mark.slow
def test_end_to_end_with_the_real_assistant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _real_assistant_available()
    monkeypatch.setenv("FATHOM_CS_SESSIONS", f"sqlite:///{tmp_path / 'sessions.db'}")
    with TestClient(create_api("test-key", preload=True)) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["components"]["customer_service.assistant"]["loaded"]
        response = client.post("/cs/ask", json={"question": "I lost my card, what should I do?"}, headers=KEY)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"answer", "sources", "intent", "handoff", "session_id"}
        assert body["answer"].strip() and body["sources"] and body["session_id"]
        assert any("lost" in (s["title"] or "").lower() for s in body["sources"]), body["sources"]
        assert 0.0 <= body["intent"]["confidence"] <= 1.0 and body["intent"]["label"]
        follow = client.post(
            "/cs/ask",
            json={"question": "How long until the new one arrives?", "session_id": body["session_id"]},
            headers=KEY,
        )
        assert follow.status_code == 200 and follow.json()["session_id"] == body["session_id"]
        history = client.get(f"/cs/sessions/{body['session_id']}", headers=KEY)
        assert history.status_code == 200, history.text
        turns = history.json()["turns"]
        assert len(turns) >= 4 and turns[0]["role"] == "user"
        assert "lost my card" in turns[0]["text"]
