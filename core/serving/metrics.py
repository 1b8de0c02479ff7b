"""Prometheus metrics of an API: requests and latency per route and status, in the app's own registry.

Each app gets its own ``CollectorRegistry`` (two apps in one process, as in tests, do not collide)
that ``/metrics`` exposes in the Prometheus text format. Routes are labelled by their template
(``/cs/sessions/{session_id}``), never the raw path, so label cardinality stays bounded;
requests that match no route share the label ``<unmatched>`` and requests refused for a
missing or wrong API key (before routing) ``<unauthenticated>``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "<unmatched>"
UNAUTHENTICATED = "<unauthenticated>"


class HttpMetrics:
    """The request counter, latency histogram and in-flight gauge of one app.

    Args:
        registry: where the metrics live; a fresh ``CollectorRegistry`` when None.
        namespace: metric name prefix (``fathom_http_requests_total`` ...).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "fathom") -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "http_requests", "HTTP requests answered", labels, namespace=namespace, registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to finishing its response",
            labels,
            namespace=namespace,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being handled",
            namespace=namespace,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request and its duration."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def exposition(self) -> bytes:
        """All metrics of the registry in the Prometheus text format."""
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        """The ``/metrics`` handler."""
        return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)
