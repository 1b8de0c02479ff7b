"""create_app: validation errors, error shape, /healthz, preload, body limit, request ids, bad arguments."""

from __future__ import annotations

import logging

import pytest
from fastapi import APIRouter, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from core.serving import LazyResource, create_app, register_component


class Order(BaseModel):
    item: str = Field(min_length=1, max_length=10)
    quantity: int = Field(ge=1)


def make_router() -> APIRouter:
    router = APIRouter(prefix="/shop")

    @router.post("/orders")
    def order(body: Order) -> dict[str, object]:
        return {"item": body.item, "quantity": body.quantity}

    @router.get("/fail")
    def fail() -> None:
        raise RuntimeError("database password is hunter2 at /srv/db")

    @router.get("/gone")
    def gone() -> None:
        raise HTTPException(410, "this order was archived")

    return router


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(title="Shop", routers=[make_router()]))


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"item": "", "quantity": 1}, "item", "at least 1 character"),
        ({"item": "x" * 11, "quantity": 1}, "item", "at most 10 characters"),
        ({"item": "tea", "quantity": 0}, "quantity", "greater than or equal to 1"),
        ({"quantity": 1}, "item", "Field required"),
    ],
)
def test_validation_errors_are_422_naming_the_field(
    client: TestClient, body: dict[str, object], field: str, message: str
) -> None:
    response = client.post("/shop/orders", json=body)
    assert response.status_code == 422
    data = response.json()
    assert data["error"] == "validation_error"
    assert data["detail"].startswith(f"invalid request: {field}: ") and message in data["detail"]
    assert data["errors"][0]["field"] == field and data["errors"][0]["location"] == "body"


def test_invalid_json_is_422_on_the_body(client: TestClient) -> None:
    response = client.post("/shop/orders", content=b'{"item": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"
    assert "not valid JSON" in response.json()["detail"]


def test_rejected_input_is_not_echoed(client: TestClient) -> None:
    response = client.post("/shop/orders", json={"item": "card 4111 1111 1111 1111", "quantity": 1})
    assert response.status_code == 422 and "4111" not in response.text


def test_unhandled_error_is_a_500_without_internals(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="core.serving"):
        response = client.get("/shop/fail", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "internal server error; quote the request id when reporting it",
        "request_id": "req-42",
    }
    assert response.headers["x-request-id"] == "req-42"
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    assert any("req-42" in record.getMessage() and record.exc_text for record in caplog.records)


def test_http_errors_share_the_shape(client: TestClient) -> None:
    assert client.get("/shop/gone").json() == {"error": "gone", "detail": "this order was archived"}
    assert client.get("/nowhere").json() == {"error": "not_found", "detail": "Not Found"}
    response = client.delete("/shop/orders")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_request_ids_are_made_when_absent_or_unsafe(client: TestClient) -> None:
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]
    assert client.get("/healthz", headers={"X-Request-ID": "bad id\t<script>"}).headers["x-request-id"] != (
        "bad id\t<script>"
    )


def test_bodies_over_the_limit_are_413() -> None:
    client = TestClient(create_app(title="Shop", routers=[make_router()], max_body_bytes=64))
    ok = client.post("/shop/orders", json={"item": "tea", "quantity": 2})
    assert ok.status_code == 200 and ok.json() == {"item": "tea", "quantity": 2}
    declared = client.post("/shop/orders", content=b"x" * 65, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "limit of 64 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"item": "'
        yield b"y" * 100
        yield b'", "quantity": 1}'

    streamed = client.post("/shop/orders", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "payload_too_large"


def test_a_path_can_have_its_own_body_limit() -> None:
    app = create_app(
        title="Shop", routers=[make_router()], max_body_bytes=16, body_limits={"/shop/orders": 4096}
    )
    client = TestClient(app)
    order = {"item": "tea", "quantity": 2}  # 30 bytes: over the app's 16, under the route's own
    assert client.post("/shop/orders", json=order).status_code == 200
    other = client.request("GET", "/shop/gone", content=b"x" * 30)
    assert other.status_code == 413 and "limit of 16 bytes" in other.json()["detail"]
    over = client.post("/shop/orders", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert over.status_code == 413 and "limit of 4096 bytes" in over.json()["detail"]
    with pytest.raises(ValueError, match="body_limits"):
        create_app(title="Shop", routers=[make_router()], body_limits={"/shop/orders": 0})


def test_healthz_reports_components() -> None:
    model = LazyResource("model", lambda: "weights")
    app = create_app(
        title="Shop", routers=[make_router()], components={"model": model.status}, version="1.2.3"
    )
    register_component(app, "cache", lambda: True)
    client = TestClient(app)
    body = client.get("/healthz").json()
    assert body == {
        "status": "ok",
        "title": "Shop",
        "version": "1.2.3",
        "components": {
            "model": {"loaded": False, "load_seconds": None, "error": None},
            "cache": {"loaded": True},
        },
    }
    model.get()
    assert client.get("/healthz").json()["components"]["model"]["loaded"] is True


def test_healthz_is_503_when_a_component_failed() -> None:
    def broken() -> object:
        raise OSError("disk /mnt/models unavailable")

    model = LazyResource("model", broken)
    app = create_app(title="Shop", routers=[], components={"model": model.status})
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200  # not loaded yet is not a failure
    with pytest.raises(Exception, match="unavailable"):
        model.get()
    register_component(app, "odd", lambda: 42)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["components"]["model"]["error"] == "OSError"
    assert "returned int" in response.json()["components"]["odd"]["error"]
    assert "/mnt/models" not in response.text


def test_a_failing_health_check_does_not_break_healthz() -> None:
    app = create_app(title="Shop", routers=[], components={"flaky": lambda: 1 / 0})
    response = TestClient(app).get("/healthz")
    assert response.status_code == 503
    assert response.json()["components"]["flaky"] == {"loaded": False, "error": "ZeroDivisionError"}


def test_preload_builds_at_startup_once() -> None:
    calls = []
    model = LazyResource("model", lambda: calls.append(1) or "weights")
    app = create_app(title="Shop", routers=[], components={"model": model.status}, preload=[model.get])
    with TestClient(app) as client:
        assert calls == [1]
        assert client.get("/healthz").json()["components"]["model"]["loaded"] is True
    assert calls == [1]


def test_a_failing_preload_stops_startup() -> None:
    model = LazyResource("model", lambda: 1 / 0)
    app = create_app(title="Shop", routers=[], preload=[model.get])
    with pytest.raises(Exception, match="model is unavailable"), TestClient(app):
        pass


def test_openapi_docs_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "Shop"
    assert "/shop/orders" in schema["paths"] and "/healthz" in schema["paths"]
    error_schema = schema["paths"]["/shop/orders"]["post"]["responses"]["422"]["content"]["application/json"]
    assert error_schema["schema"]["$ref"].endswith("/ValidationErrorBody")
    assert client.get("/docs").status_code == 200


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="title"):
        create_app(title=" ", routers=[])
    with pytest.raises(TypeError, match=r"routers\[0\] is a str"):
        create_app(title="t", routers=["/shop"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(title="t", routers=[], max_body_bytes=0)
    with pytest.raises(TypeError, match=r"preload\[0\]"):
        create_app(title="t", routers=[], preload=["model"])  # type: ignore[list-item]
    clash = APIRouter()
    clash.add_api_route("/healthz", lambda: {})
    with pytest.raises(ValueError, match="defines /healthz"):
        create_app(title="t", routers=[clash])
    app = create_app(title="t", routers=[], components={"a": lambda: True})
    with pytest.raises(ValueError, match="already registered"):
        register_component(app, "a", lambda: True)
    with pytest.raises(TypeError, match="callable"):
        register_component(app, "b", True)  # type: ignore[arg-type]
