"""The suite's HTTP API: every app's routes on one ``core.serving`` app (customer service so far).

``create_api()`` builds the app; ``serve()`` runs it with uvicorn (``fathom serve``). The
customer-service assistant is built once: at startup when ``preload`` is set (what ``serve`` does,
so the first customer does not wait for the index to load), else on the first request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from apps.customer_service.api import AssistantLike, make_router
from core.serving import LazyResource, create_app

API_KEY_ENV = "FATHOM_API_KEY"
TITLE = "Fathom API"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_log = logging.getLogger(__name__)


def default_assistant() -> AssistantLike:
    """The customer-service assistant with its default configuration (shipped knowledge base)."""
    from apps.customer_service.assistant import Assistant, AssistantConfig

    return Assistant.from_config(AssistantConfig())


def api_key_from_env() -> str | None:
    """``$FATHOM_API_KEY`` with surrounding whitespace removed; None when unset or blank."""
    value = os.environ.get(API_KEY_ENV, "").strip()
    return value or None


def create_api(
    api_key: str | None = None,
    *,
    assistant_factory: Callable[[], AssistantLike] | None = None,
    preload: bool = False,
    **app_options: Any,
) -> FastAPI:
    """The Fathom API: ``/cs/*`` plus ``/healthz``, ``/metrics`` and ``/docs``.

    Args:
        api_key: the key clients must send; None reads ``$FATHOM_API_KEY`` (unset or blank: no auth).
        assistant_factory: builds the customer-service assistant (default: ``default_assistant``).
        preload: build the assistant at startup instead of on the first request.
        **app_options: passed on to ``core.serving.create_app`` (``max_body_bytes``, ``registry``, ...).

    Returns:
        The app. ``app.state.assistant`` is the assistant's ``LazyResource``.

    Raises:
        ValueError: a bad ``api_key`` (empty, whitespace around it).
    """
    if api_key is None:
        api_key = api_key_from_env()
    assistant = LazyResource("customer_service.assistant", assistant_factory or default_assistant)
    app = create_app(
        title=TITLE,
        description="Customer-service assistant with citations and hand-off; more apps to come.",
        routers=[make_router(assistant.get)],
        api_key=api_key,
        components={assistant.name: assistant.status},
        preload=[assistant.get] if preload else [],
        **app_options,
    )
    app.state.assistant = assistant
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    *,
    preload: bool = True,
    log_level: str = "info",
) -> None:
    """Run the API with uvicorn until interrupted.

    Args:
        host: interface to bind (``0.0.0.0`` for every interface).
        port: TCP port, 1-65535 (0: any free port).
        api_key: as in ``create_api`` (None: ``$FATHOM_API_KEY``).
        preload: build the assistant before accepting requests.
        log_level: uvicorn's log level.

    Raises:
        ValueError: a port outside 0-65535 or a bad ``api_key``.
    """
    import uvicorn

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0-65535, got {port!r}")
    app = create_api(api_key, preload=preload)
    if api_key is None and api_key_from_env() is None:
        level = logging.WARNING if host in LOOPBACK else logging.ERROR
        _log.log(
            level, "serving on %s:%s WITHOUT authentication: set %s to require a key", host, port, API_KEY_ENV
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
