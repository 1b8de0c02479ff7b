"""API-key auth: which header carries the key, constant-time comparison, which keys are accepted."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from core.serving import create_app
from core.serving.auth import check_api_key, keys_match, presented_key

KEY = "k-3f9a1c"


@pytest.fixture
def router() -> APIRouter:
    router = APIRouter(prefix="/items")

    @router.get("/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return router


def client(router: APIRouter, api_key: str | None) -> TestClient:
    return TestClient(create_app(title="test", routers=[router], api_key=api_key))


def test_no_key_configured_serves_everyone(router: APIRouter) -> None:
    assert client(router, None).get("/items/3").json() == {"item_id": 3}


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing API key: send it in the X-API-Key header or as 'Authorization: Bearer <key>'"),
        ({"X-API-Key": "wrong"}, "invalid API key"),
        ({"X-API-Key": KEY[:-1]}, "invalid API key"),
        ({"Authorization": f"Basic {KEY}"}, "missing API key"),
        ({"Authorization": "Bearer wrong"}, "invalid API key"),
    ],
)
def test_missing_or_wrong_key_is_401(router: APIRouter, headers: dict[str, str], detail: str) -> None:
    response = client(router, KEY).get("/items/3", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.json()["detail"].startswith(detail)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}]
)
def test_right_key_in_either_header_passes(router: APIRouter, headers: dict[str, str]) -> None:
    response = client(router, KEY).get("/items/3", headers=headers)
    assert response.status_code == 200 and response.json() == {"item_id": 3}


def test_unknown_paths_are_401_too_so_routes_cannot_be_enumerated(router: APIRouter) -> None:
    app = client(router, KEY)
    assert app.get("/admin").status_code == 401
    assert app.get("/admin", headers={"X-API-Key": KEY}).status_code == 404


def test_auth_runs_before_the_body_is_parsed(router: APIRouter) -> None:
    response = client(router, KEY).post(
        "/items/3", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


def test_health_metrics_and_docs_are_open(router: APIRouter) -> None:
    app = client(router, KEY)
    for path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
        assert app.get(path).status_code == 200, path


def test_openapi_declares_both_schemes_and_marks_open_paths(router: APIRouter) -> None:
    schema = client(router, KEY).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert schema["components"]["securitySchemes"]["Bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{"ApiKeyHeader": []}, {"Bearer": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/items/{item_id}"]["get"]


def test_presented_key_prefers_the_api_key_header() -> None:
    assert presented_key(Headers({"x-api-key": " a ", "authorization": "Bearer b"})) == "a"
    assert presented_key(Headers({"authorization": "Bearer  b "})) == "b"
    assert presented_key(Headers({"authorization": "Bearer "})) is None
    assert presented_key(Headers({"authorization": "Token b"})) is None
    assert presented_key(Headers({})) is None


def test_keys_match() -> None:
    assert keys_match("abc", "abc")
    assert not keys_match("abd", "abc")
    assert not keys_match("ab", "abc")
    assert not keys_match("ábc", "abc")


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ("", ValueError, "api_key is empty"),
        (" key", ValueError, "without surrounding whitespace"),
        ("ke\ny", ValueError, "printable ASCII"),
        (123, TypeError, "must be a string"),
    ],
)
def test_unusable_keys_are_refused_at_construction(key: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_api_key(key)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        create_app(title="t", routers=[], api_key=key)  # type: ignore[arg-type]
