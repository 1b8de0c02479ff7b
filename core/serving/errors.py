"""One JSON error shape for every failure the API returns, and the handlers that produce it.

Every error body is ``{"error": <code>, "detail": <one clear sentence>}``; validation errors add
``"errors": [{"field", "location", "message"}]`` and server errors add ``"request_id"`` (the same
as the ``X-Request-ID`` response header and the server log line). Internals (exception text,
tracebacks, file paths) never reach the client.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.serving.resources import ResourceUnavailable

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def error_code(status: int) -> str:
    """The snake_case code of an HTTP status (``CODES``, else the standard phrase)."""
    if status in CODES:
        return CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_response(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A JSON error response ``{"error", "detail", **extra}``.

    Args:
        status: the HTTP status code.
        detail: one sentence saying what is wrong (shown to the client).
        headers: extra response headers (e.g. ``WWW-Authenticate``).
        **extra: more top-level fields (``errors``, ``request_id``).

    Returns:
        The response.
    """
    return JSONResponse({"error": error_code(status), "detail": detail, **extra}, status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    """(field, location) from a pydantic ``loc`` such as ``("body", "question")`` or ``("path", "id")``."""
    parts = list(loc)
    location = (
        str(parts.pop(0)) if parts and parts[0] in ("body", "query", "path", "header", "cookie") else ""
    )
    field = ".".join(str(p) for p in parts) or location or "request"
    return field, location


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    message = str(error.get("msg", "invalid value"))
    # pydantic prefixes a validator's own ValueError with "Value error, "; the validator's words are enough.
    return message.removeprefix("Value error, ")


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """``exc``'s errors as ``{"field", "location", "message"}``; the input values are left out (PII)."""
    out = []
    for error in exc.errors():
        field, location = _field(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            field = "body"
        out.append({"field": field, "location": location, "message": _message(error)})
    return out


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field: ``detail`` is ``"invalid request: question: String should ..."``."""
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc)
    detail = "invalid request: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return error_response(422, detail, errors=errors)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Any ``HTTPException`` (404, 405, an app's own 422 ...) in the shared shape, headers kept."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, detail, headers=dict(exc.headers or {}))


async def unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """503 with ``Retry-After`` when a lazily loaded resource failed to build."""
    assert isinstance(exc, ResourceUnavailable)
    return error_response(503, str(exc), headers={"Retry-After": "30"})


HANDLERS = {
    RequestValidationError: validation_error_handler,
    HTTPException: http_error_handler,
    ResourceUnavailable: unavailable_handler,
}
