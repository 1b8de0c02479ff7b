"""``create_app``: the FastAPI app every Fathom API is built with.

What each app gets, so that app code only writes its routers:

- API-key auth on every route but ``/healthz``, ``/metrics`` and the docs, when a key is set
  (``core.serving.auth``);
- one JSON error shape: 401, 404, 413, 422 naming the bad field, 503 for a resource that failed to
  load, 500 without internals (``core.serving.errors``); the OpenAPI of every router's route
  declares 400, 401, 413, 422, 500 and 503 (``ERROR_RESPONSES``);
- ``/healthz``: ``{"status", "title", "version", "components": {name: {"loaded", ...}}}`` from the
  callables the app registers; 503 when a component reports an error;
- ``/metrics``: Prometheus request count and latency per route and status, in the app's own registry;
- OpenAPI at ``/openapi.json``, ``/docs`` and ``/redoc``, with the API-key schemes declared.

Usage::

    assistant = LazyResource("customer_service.assistant", build_assistant)
    app = create_app(title="Fathom", routers=[make_router(assistant.get)], api_key="s3cret",
                     components={"customer_service.assistant": assistant.status}, preload=[assistant.get])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from core.serving.auth import API_KEY_HEADER, ApiKeyMiddleware, check_api_key
from core.serving.errors import HANDLERS
from core.serving.metrics import HttpMetrics
from core.serving.middleware import RequestMiddleware

ComponentCheck = Callable[[], "Mapping[str, Any] | bool"]
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
OPEN_PATHS = ("/healthz", "/metrics", *DOCS_PATHS)
DEFAULT_MAX_BODY_BYTES = 1 << 20


class ErrorBody(BaseModel):
    """Every error response: a snake_case code and one sentence a person can act on."""

    error: str
    detail: str
    request_id: str | None = None


class FieldError(BaseModel):
    field: str
    location: str
    message: str


class ValidationErrorBody(ErrorBody):
    """A 422: ``detail`` names every bad field; ``errors`` lists them one by one (when known)."""

    errors: list[FieldError] = []


class Health(BaseModel):
    status: str
    title: str
    version: str
    components: dict[str, dict[str, Any]]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body cannot be read (not UTF-8) or a bad Content-Length"},
    401: {"model": ErrorBody, "description": "Missing or wrong API key"},
    413: {"model": ErrorBody, "description": "The request body is larger than the limit"},
    422: {"model": ValidationErrorBody, "description": "The request names a bad field"},
    500: {"model": ErrorBody, "description": "Internal error (the body carries the request id)"},
    503: {"model": ErrorBody, "description": "A model or index failed to load"},
}


def register_component(app: FastAPI, name: str, check: ComponentCheck) -> None:
    """Add a component to ``/healthz``.

    Args:
        app: an app made by ``create_app``.
        name: the key shown under ``components``.
        check: a cheap callable (it runs on the event loop) returning a bool (loaded or not) or a
            mapping with at least ``"loaded"``; an ``"error"`` that is not None marks the app degraded.

    Raises:
        TypeError: ``check`` is not callable or ``app`` was not made by ``create_app``.
        ValueError: ``name`` is empty or already registered.
    """
    components = getattr(app.state, "components", None)
    if components is None:
        raise TypeError("register_component needs an app made by core.serving.create_app")
    if not callable(check):
        raise TypeError(f"health check for {name!r} must be callable, got {type(check).__name__}")
    if not name or name in components:
        raise ValueError(f"component name {name!r} is empty or already registered")
    components[name] = check


def _component_status(check: ComponentCheck) -> dict[str, Any]:
    try:
        result = check()
    except Exception as exc:  # a broken check must not take /healthz down with it
        return {"loaded": False, "error": type(exc).__name__}
    if isinstance(result, bool):
        return {"loaded": result}
    if isinstance(result, Mapping) and "loaded" in result:
        return dict(result)
    return {"loaded": False, "error": f"health check returned {type(result).__name__}, not bool or mapping"}


def _with_security(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that declares both key schemes and marks the open paths as open."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
            "Bearer": {"type": "http", "scheme": "bearer"},
        }
        schema["security"] = [{"ApiKeyHeader": []}, {"Bearer": []}]
        for path in OPEN_PATHS:
            for operation in schema.get("paths", {}).get(path, {}).values():
                operation["security"] = []
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(
    *,
    title: str,
    routers: Sequence[APIRouter],
    api_key: str | None = None,
    components: Mapping[str, ComponentCheck] | None = None,
    preload: Sequence[Callable[[], object]] = (),
    version: str = "0.1.0",
    description: str = "",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_limits: Mapping[str, int] | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """A FastAPI app serving ``routers`` behind Fathom's auth, errors, health and metrics.

    Args:
        title: the API's name (OpenAPI title, ``/healthz``).
        routers: the app's routers, included in order.
        api_key: the key every non-open route requires; None serves without authentication.
        components: name -> health check for ``/healthz`` (see ``register_component``).
        preload: callables run once at startup, in a worker thread, before the first request is
            served (e.g. a ``LazyResource.get``); one that raises stops the server starting.
        version: the API's version (OpenAPI, ``/healthz``).
        description: OpenAPI description.
        max_body_bytes: the largest request body accepted (413 above).
        body_limits: exact path -> its own body limit (e.g. a file-upload route), instead of
            ``max_body_bytes``.
        registry: the Prometheus registry for ``/metrics``; a fresh one per app when None.

    Returns:
        The app; ``app.state.metrics`` is its ``HttpMetrics`` (register app metrics on
        ``app.state.metrics.registry``).

    Raises:
        ValueError: an empty title, a bad ``api_key``, a non-positive ``max_body_bytes``, a router
            path that collides with an open path.
        TypeError: a router that is not an ``APIRouter``, a preload item that is not callable.
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    if api_key is not None:
        check_api_key(api_key)
    if not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool) or max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    for path, limit in (body_limits or {}).items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError(f"body_limits[{path!r}] must be a positive integer, got {limit!r}")
    for i, router in enumerate(routers):
        if not isinstance(router, APIRouter):
            raise TypeError(f"routers[{i}] is a {type(router).__name__}, not a fastapi.APIRouter")
        taken = sorted({getattr(r, "path", "") for r in router.routes} & set(OPEN_PATHS))
        if taken:
            raise ValueError(f"routers[{i}] defines {', '.join(taken)}, which create_app serves itself")
    for i, load in enumerate(preload):
        if not callable(load):
            raise TypeError(f"preload[{i}] must be callable, got {type(load).__name__}")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for load in preload:
            await run_in_threadpool(load)
        yield

    app = FastAPI(
        title=title,
        version=version,
        description=description,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    app.state.components = {}
    for name, check in (components or {}).items():
        register_component(app, name, check)
    metrics = HttpMetrics(registry)
    app.state.metrics = metrics
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)

    @app.get("/healthz", tags=["ops"], response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Liveness and what is loaded; 503 when a component failed to load."""
        states = {name: _component_status(check) for name, check in app.state.components.items()}
        degraded = any(state.get("error") is not None for state in states.values())
        body = Health(
            status="degraded" if degraded else "ok", title=title, version=version, components=states
        )
        return JSONResponse(body.model_dump(), status_code=503 if degraded else 200)

    app.add_api_route("/metrics", metrics.endpoint, methods=["GET"], tags=["ops"], include_in_schema=False)
    for router in routers:
        app.include_router(router, responses=ERROR_RESPONSES)

    # Added last = outermost: request ids and metrics see every response, auth's 401s included.
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=OPEN_PATHS)
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        router=app.router,
        max_body_bytes=max_body_bytes,
        body_limits=body_limits,
    )
    if api_key is not None:
        app.openapi = _with_security(app)  # type: ignore[method-assign]
    return app
