"""/metrics: requests counted per route template and status, latency histogram, one registry per app."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.serving import create_app


def make_router() -> APIRouter:
    router = APIRouter(prefix="/cs")

    @router.get("/sessions/{session_id}")
    def session(session_id: str) -> dict[str, str]:
        return {"session_id": session_id}

    return router


def samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_requests_are_counted_per_route_template_and_status() -> None:
    client = TestClient(create_app(title="t", routers=[make_router()], api_key="secret"))
    for session_id in ("a", "b", "c"):
        assert client.get(f"/cs/sessions/{session_id}", headers={"X-API-Key": "secret"}).status_code == 200
    client.get("/cs/sessions/a")  # 401, stopped before routing
    client.get("/wp-login.php", headers={"X-API-Key": "secret"})  # 404
    counts = samples(client, "fathom_http_requests_total")
    assert counts[key(method="GET", route="/cs/sessions/{session_id}", status="200")] == 3
    assert counts[key(method="GET", route="<unauthenticated>", status="401")] == 1
    assert counts[key(method="GET", route="<unmatched>", status="404")] == 1
    assert not any("wp-login" in value for labels in counts for _, value in labels)
    latency = samples(client, "fathom_http_request_duration_seconds_count")
    assert latency[key(method="GET", route="/cs/sessions/{session_id}", status="200")] == 3
    buckets = samples(client, "fathom_http_request_duration_seconds_bucket")
    assert buckets[key(method="GET", route="/cs/sessions/{session_id}", status="200", le="+Inf")] == 3


def test_each_app_has_its_own_registry() -> None:
    first = TestClient(create_app(title="a", routers=[make_router()]))
    second = TestClient(create_app(title="b", routers=[make_router()]))
    first.get("/cs/sessions/x")
    first.get("/cs/sessions/x")
    route = key(method="GET", route="/cs/sessions/{session_id}", status="200")
    assert samples(first, "fathom_http_requests_total")[route] == 2
    assert route not in samples(second, "fathom_http_requests_total")


def test_metrics_are_prometheus_text() -> None:
    response = TestClient(create_app(title="t", routers=[])).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE fathom_http_requests_total counter" in response.text
    assert "fathom_http_requests_in_progress" in response.text
