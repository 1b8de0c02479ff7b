"""apps.api: the suite's app (key from the environment, preload, routes) and ``serve`` over a socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from apps.api import API_KEY_ENV, api_key_from_env, create_api, serve
from apps.customer_service.schemas import AskResult, Intent

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EchoAssistant:
    def ask(self, question: str, session_id: str | None = None) -> AskResult:
        return AskResult(answer=f"echo: {question}", sources=[], intent=Intent(label="other", confidence=0.5))

    def history(self, session_id: str) -> list[dict[str, object]]:
        return []


def test_the_key_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "  from-env  ")
    client = TestClient(create_api(assistant_factory=EchoAssistant))
    assert client.post("/cs/ask", json={"question": "hi"}).status_code == 401
    response = client.post("/cs/ask", json={"question": "hi"}, headers={"X-API-Key": "from-env"})
    assert response.status_code == 200 and response.json()["answer"] == "echo: hi"


def test_an_explicit_key_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    client = TestClient(create_api("explicit", assistant_factory=EchoAssistant))
    assert (
        client.post("/cs/ask", json={"question": "hi"}, headers={"X-API-Key": "from-env"}).status_code == 401
    )
    assert (
        client.post("/cs/ask", json={"question": "hi"}, headers={"X-API-Key": "explicit"}).status_code == 200
    )


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_or_blank_environment_means_no_auth(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(API_KEY_ENV, value)
    assert api_key_from_env() is None
    client = TestClient(create_api(assistant_factory=EchoAssistant))
    assert client.post("/cs/ask", json={"question": "hi"}).status_code == 200


def test_suite_routes_health_and_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    builds = []
    app = create_api(assistant_factory=lambda: builds.append(1) or EchoAssistant(), preload=True)
    paths = {route for route in app.openapi()["paths"]}
    assert {"/cs/ask", "/cs/sessions/{session_id}", "/healthz"} <= paths
    assert app.title == "Fathom API"
    with TestClient(app) as client:
        assert builds == [1]  # built at startup, before any request
        components = client.get("/healthz").json()["components"]
        assert components["customer_service.assistant"]["loaded"] is True
        client.post("/cs/ask", json={"question": "hi"})
    assert builds == [1]


def test_app_options_are_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    client = TestClient(create_api(assistant_factory=EchoAssistant, max_body_bytes=32))
    assert client.post("/cs/ask", json={"question": "x" * 40}).status_code == 413


def test_bad_keys_and_ports_are_refused() -> None:
    with pytest.raises(ValueError, match="api_key is empty"):
        create_api("", assistant_factory=EchoAssistant)
    with pytest.raises(ValueError, match="port must be an integer in 0-65535"):
        serve(port=70000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server() -> Iterator[str]:
    """``serve`` in a child process (without preloading the assistant), on a free loopback port."""
    port = _free_port()
    call = f"serve('127.0.0.1', {port}, 'sock-key', preload=False, log_level='warning')"
    code = f"from apps.api import serve; {call}"
    env = {**os.environ, API_KEY_ENV: ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"serve exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
                )
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("serve did not answer within 60 s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_answers_over_http(server: str) -> None:
    health = httpx.get(f"{server}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["components"]["customer_service.assistant"]["loaded"] is False  # preload=False
    refused = httpx.post(f"{server}/cs/ask", json={"question": "hi"}, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    invalid = httpx.post(
        f"{server}/cs/ask", json={"question": ""}, headers={"X-API-Key": "sock-key"}, timeout=5
    )
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "question"
    assert "fathom_http_requests_total" in httpx.get(f"{server}/metrics", timeout=5).text
