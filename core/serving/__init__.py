"""Serving: the FastAPI app factory of every Fathom API and a load-once holder for heavy resources.

``create_app`` gives an app API-key auth, one JSON error shape, ``/healthz``, Prometheus
``/metrics`` and OpenAPI docs; ``LazyResource`` builds a model or assistant once, on first use or
at startup, and shares it between requests.
"""

from core.serving.app import ERROR_RESPONSES, ErrorBody, ValidationErrorBody, create_app, register_component
from core.serving.auth import API_KEY_HEADER
from core.serving.metrics import HttpMetrics
from core.serving.middleware import REQUEST_ID_HEADER
from core.serving.resources import LazyResource, ResourceUnavailable

__all__ = [
    "API_KEY_HEADER",
    "ERROR_RESPONSES",
    "REQUEST_ID_HEADER",
    "ErrorBody",
    "HttpMetrics",
    "LazyResource",
    "ResourceUnavailable",
    "ValidationErrorBody",
    "create_app",
    "register_component",
]
