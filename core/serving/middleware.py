"""The outermost layer of every Fathom API: request ids, metrics, body-size limit, last-resort 500.

One ASGI middleware (not ``BaseHTTPMiddleware``, which buffers and re-runs tasks) that

- gives each request an id (a sane incoming ``X-Request-ID`` is kept) and returns it as a header;
- times the request and records it in ``HttpMetrics`` with its route template and final status;
- answers 413 for a body over the limit, by ``Content-Length`` or while a chunked body streams in;
- turns an unhandled exception into a 500 JSON body that carries the request id and nothing of
  the exception; the traceback goes to the log, PII-masked.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.privacy import PIIRedactingFilter
from core.serving.auth import UNAUTHENTICATED_SCOPE_KEY
from core.serving.errors import error_response
from core.serving.metrics import UNAUTHENTICATED, UNMATCHED, HttpMetrics

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_log = logging.getLogger("core.serving")
# A traceback can quote a customer's message: mask PII before any handler sees the record.
if not any(isinstance(f, PIIRedactingFilter) for f in _log.filters):
    _log.addFilter(PIIRedactingFilter())


def route_label(scope: Scope, router: Router) -> str:
    """The template of the route ``scope`` went to (``/cs/sessions/{session_id}``).

    Requests stopped by auth before routing are ``<unauthenticated>``; requests that match no
    route (404s, probes) share ``<unmatched>``, so the raw path never becomes a label.
    """
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    if scope.get(UNAUTHENTICATED_SCOPE_KEY):
        return UNAUTHENTICATED
    for candidate in router.routes:  # top-level routes answered before an app route was chosen
        path = getattr(candidate, "path", None)
        if path and candidate.matches(scope)[0] is not Match.NONE:
            return str(path)
    return UNMATCHED


class RequestMiddleware:
    """See the module docstring.

    Args:
        app: the inner ASGI app.
        metrics: where requests are counted.
        router: the app's router, to label requests that auth stopped before routing.
        max_body_bytes: the largest request body accepted.
        body_limits: exact path -> its own limit (e.g. a route that takes file uploads).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        router: Router,
        max_body_bytes: int,
        body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.body_limits = dict(body_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0
        limit = self.body_limits.get(scope.get("path", ""), self.max_body_bytes)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes through FastAPI's body reading and gets the shared error shape.
                    raise HTTPException(413, _too_large(limit))
            return message

        start = time.perf_counter()
        self.metrics.in_progress.inc()
        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                response = error_response(
                    413 if declared.isdigit() else 400,
                    _too_large(limit) if declared.isdigit() else "Content-Length is not a number",
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception:
            _log.exception(
                "unhandled error in %s %s (request %s)",
                scope["method"],
                route_label(scope, self.router),
                request_id,
            )
            if started:  # the client already has a status line; the connection is all we can break
                raise
            response = error_response(
                500, "internal server error; quote the request id when reporting it", request_id=request_id
            )
            await response(scope, receive, send_with_id)
        finally:
            self.metrics.in_progress.dec()
            self.metrics.observe(
                scope["method"], route_label(scope, self.router), status, time.perf_counter() - start
            )


def _too_large(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes"
