"""API-key authentication: every route except the open ones needs the key when one is configured.

Clients send the key as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. The check runs as
ASGI middleware, before routing and before the body is read, so an unauthenticated client learns
nothing (not even which paths exist) and cannot make the server parse a body. Keys are compared
in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from core.serving.errors import error_response

API_KEY_HEADER = "X-API-Key"
# Set on requests refused here, so metrics label them without routing them.
UNAUTHENTICATED_SCOPE_KEY = "fathom.unauthenticated"


def check_api_key(api_key: str) -> str:
    """``api_key`` if it is usable as a key.

    Raises:
        TypeError: it is not a string.
        ValueError: it is empty, or has surrounding whitespace or characters a header cannot carry.
    """
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a string, got {type(api_key).__name__}")
    if not api_key:
        raise ValueError("api_key is empty: pass None to serve without authentication")
    if api_key != api_key.strip() or not api_key.isprintable() or not api_key.isascii():
        raise ValueError("api_key must be printable ASCII without surrounding whitespace")
    return api_key


def presented_key(headers: Headers) -> str | None:
    """The key a request carries: ``X-API-Key``, else an ``Authorization: Bearer`` token, else None."""
    key = headers.get(API_KEY_HEADER)
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def keys_match(presented: str, expected: str) -> bool:
    """Constant-time comparison (the time does not depend on how many leading characters match)."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


class ApiKeyMiddleware:
    """Answers 401 to any HTTP request outside ``open_paths`` that lacks the right key.

    Args:
        app: the ASGI app to protect.
        api_key: the key clients must present (see ``check_api_key``).
        open_paths: exact paths served without a key (health, metrics, docs).
    """

    def __init__(self, app: ASGIApp, *, api_key: str, open_paths: Iterable[str]) -> None:
        self.app = app
        self.api_key = check_api_key(api_key)
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key is None:
            detail = (
                f"missing API key: send it in the {API_KEY_HEADER} header or as 'Authorization: Bearer <key>'"
            )
        elif not keys_match(key, self.api_key):
            detail = "invalid API key"
        else:
            await self.app(scope, receive, send)
            return
        scope[UNAUTHENTICATED_SCOPE_KEY] = True
        response = error_response(401, detail, headers={"WWW-Authenticate": 'Bearer realm="fathom"'})
        await response(scope, receive, send)
