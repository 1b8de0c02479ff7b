"""The suite's HTTP API: every app's routes on one ``core.serving`` app (customer service, fraud, nodules).

``create_api()`` builds the app; ``serve()`` runs it with uvicorn (``fathom serve``). The heavy
parts are ``LazyResource``s, built once: the customer-service assistant, the fraud scorer (model
and live feature state), the fraud alert store and the lung-nodule detector. With ``preload`` (what
``serve`` does, so the first customer does not wait for the index to load) the assistant, the fraud
scorer and the nodule detector are built at startup, else on the first request; the fraud scorer
and the nodule detector are preloaded only when their model is there to load (a factory given, the
model's environment variable set, or the shipped model present), so a checkout without a trained
model serves the other apps with a healthy ``/healthz``. A model that fails to load does not stop
the server: its routes answer 503 (and retry the load), ``/healthz`` names it, the others work on.

Request bodies are limited to ``max_body_bytes`` (``core.serving``'s default, 1 MiB), except a
``POST /nodule/detect`` upload, which may reach ``apps.nodule.api.MAX_UPLOAD_BYTES``.

Environment: ``FATHOM_API_KEY`` (the key), ``FATHOM_FRAUD_MODEL`` (the fraud model's folder, default
the shipped ``models/fraud-detector``), ``FATHOM_FRAUD_ALERTS`` (the alert store: a SQLite path or a
database URL, default ``alerts.db`` in ``core.config.cache_dir("fraud")``), ``FATHOM_NODULE_MODEL``
(the nodule model's folder, default the shipped ``models/nodule-detector``), ``FATHOM_NODULE_RESULTS``
(where analyses keep their SEG, SR and report, default ``core.config.cache_dir("nodule")/results``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from apps.customer_service.api import AssistantLike
from apps.customer_service.api import make_router as make_cs_router
from apps.fraud.api import DEFAULT_MAX_BATCH, AlertStoreLike, ScorerLike
from apps.fraud.api import make_router as make_fraud_router
from apps.nodule.api import make_router as make_nodule_router
from apps.nodule.uploads import MAX_UPLOAD_BYTES
from core.config import cache_dir, models_dir
from core.serving import LazyResource, ResourceUnavailable, create_app
from core.serving.app import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from apps.nodule.detect import NoduleDetector

API_KEY_ENV = "FATHOM_API_KEY"
FRAUD_MODEL_ENV = "FATHOM_FRAUD_MODEL"
FRAUD_ALERTS_ENV = "FATHOM_FRAUD_ALERTS"
FRAUD_MODEL = "fraud-detector"  # apps.fraud.train.DEFAULT_MODEL, without importing torch here
NODULE_MODEL_ENV = "FATHOM_NODULE_MODEL"
NODULE_RESULTS_ENV = "FATHOM_NODULE_RESULTS"
NODULE_MODEL = "nodule-detector"  # apps.nodule.model.DEFAULT_MODEL, without importing torch here
UPLOAD_PATHS = ("/nodule/detect",)
TITLE = "Fathom API"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_log = logging.getLogger(__name__)


def default_assistant() -> AssistantLike:
    """The customer-service assistant with its default configuration (shipped knowledge base)."""
    from apps.customer_service.assistant import Assistant, AssistantConfig

    return Assistant.from_config(AssistantConfig())


def default_fraud_scorer() -> ScorerLike:
    """The fraud scorer: the model in ``$FATHOM_FRAUD_MODEL`` (default: the shipped one), fresh state."""
    from apps.fraud.service import FraudScorer

    model_dir = os.environ.get(FRAUD_MODEL_ENV, "").strip()
    return FraudScorer.load(model_dir or None)


def fraud_model_configured() -> bool:
    """Whether ``default_fraud_scorer`` has a model to load: ``$FATHOM_FRAUD_MODEL`` or the shipped one."""
    return bool(os.environ.get(FRAUD_MODEL_ENV, "").strip()) or models_dir(FRAUD_MODEL).is_dir()


def default_fraud_alerts() -> AlertStoreLike:
    """The alert store at ``$FATHOM_FRAUD_ALERTS`` (default: ``alerts.db`` in the fraud cache folder)."""
    from apps.fraud.alerts import AlertStore

    where = os.environ.get(FRAUD_ALERTS_ENV, "").strip()
    if not where:
        folder = cache_dir("fraud")
        folder.mkdir(parents=True, exist_ok=True)
        where = str(folder / "alerts.db")
    return AlertStore.open(where)


def default_nodule_detector() -> NoduleDetector:
    """The nodule detector: the model in ``$FATHOM_NODULE_MODEL`` (default: the shipped one)."""
    from apps.nodule.detect import NoduleDetector

    model_dir = os.environ.get(NODULE_MODEL_ENV, "").strip()
    return NoduleDetector.load(model_dir or None)


def nodule_model_configured() -> bool:
    """Whether ``default_nodule_detector`` has a model: ``$FATHOM_NODULE_MODEL`` or the shipped one."""
    return bool(os.environ.get(NODULE_MODEL_ENV, "").strip()) or models_dir(NODULE_MODEL).is_dir()


def default_nodule_results() -> Path:
    """``$FATHOM_NODULE_RESULTS``, else ``results`` in the nodule cache folder."""
    where = os.environ.get(NODULE_RESULTS_ENV, "").strip()
    return Path(where).expanduser() if where else cache_dir("nodule", "results")


def api_key_from_env() -> str | None:
    """``$FATHOM_API_KEY`` with surrounding whitespace removed; None when unset or blank."""
    value = os.environ.get(API_KEY_ENV, "").strip()
    return value or None


def create_api(
    api_key: str | None = None,
    *,
    assistant_factory: Callable[[], AssistantLike] | None = None,
    fraud_scorer_factory: Callable[[], ScorerLike] | None = None,
    fraud_alerts_factory: Callable[[], AlertStoreLike] | None = None,
    nodule_detector_factory: Callable[[], NoduleDetector] | None = None,
    nodule_results_dir: str | Path | None = None,
    preload: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    fraud_max_batch: int = DEFAULT_MAX_BATCH,
    fraud_max_wait_ms: float = 0.0,
    **app_options: Any,
) -> FastAPI:
    """The Fathom API: ``/cs/*``, ``/fraud/*`` and ``/nodule/*`` plus ``/healthz``, ``/metrics``, ``/docs``.

    Args:
        api_key: the key clients must send; None reads ``$FATHOM_API_KEY`` (unset or blank: no auth).
        assistant_factory: builds the customer-service assistant (default: ``default_assistant``).
        fraud_scorer_factory: builds the fraud scorer (default: ``default_fraud_scorer``).
        fraud_alerts_factory: opens the fraud alert store (default: ``default_fraud_alerts``).
        nodule_detector_factory: builds the nodule detector (default: ``default_nodule_detector``).
        nodule_results_dir: where nodule analyses keep their outputs (default: ``default_nodule_results()``).
        preload: build the assistant, and the fraud scorer and nodule detector when they have a model
            (see the module docstring), at startup instead of on first use; a model that fails to
            load is logged and reported by ``/healthz``, not fatal.
        max_body_bytes: the largest request body, except nodule uploads (``MAX_UPLOAD_BYTES``).
        fraud_max_batch: the most transactions one micro-batched fraud scoring call takes (1: no
            micro-batching; see ``apps.fraud.api.make_router``).
        fraud_max_wait_ms: how long a fraud scoring batch waits for more requests (0: none).
        **app_options: passed on to ``core.serving.create_app`` (``registry``, ...).

    Returns:
        The app. ``app.state.assistant``, ``app.state.fraud_scorer``, ``app.state.fraud_alerts`` and
        ``app.state.nodule_detector`` are the ``LazyResource``s.

    Raises:
        ValueError: a bad ``api_key`` (empty, whitespace around it) or ``max_body_bytes``.
    """
    if api_key is None:
        api_key = api_key_from_env()
    assistant = LazyResource("customer_service.assistant", assistant_factory or default_assistant)
    scorer = LazyResource("fraud.scorer", fraud_scorer_factory or default_fraud_scorer)
    alerts = LazyResource("fraud.alerts", fraud_alerts_factory or default_fraud_alerts)
    detector = LazyResource("nodule.detector", nodule_detector_factory or default_nodule_detector)

    def quietly(load: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            # A failure is logged by LazyResource; the app's routes answer 503 and retry the load.
            with contextlib.suppress(ResourceUnavailable):
                load()

        return run

    preload_models = []
    if fraud_scorer_factory is not None or fraud_model_configured():
        preload_models.append(quietly(scorer.get))
    if nodule_detector_factory is not None or nodule_model_configured():
        preload_models.append(quietly(detector.get))
    results = Path(nodule_results_dir) if nodule_results_dir is not None else default_nodule_results()
    app = create_app(
        title=TITLE,
        description=(
            "Customer-service assistant with citations and hand-off; real-time fraud scoring and "
            "the fraud alert queue; lung-nodule detection on CT studies (DICOM in; DICOM SEG, SR "
            "and a report out)."
        ),
        routers=[
            make_cs_router(assistant.get),
            make_fraud_router(
                scorer.get, alerts.get, max_batch=fraud_max_batch, max_wait_ms=fraud_max_wait_ms
            ),
            make_nodule_router(detector.get, results),
        ],
        api_key=api_key,
        components={resource.name: resource.status for resource in (assistant, scorer, alerts, detector)},
        preload=[assistant.get, *preload_models] if preload else [],
        max_body_bytes=max_body_bytes,
        body_limits=dict.fromkeys(UPLOAD_PATHS, MAX_UPLOAD_BYTES),
        **app_options,
    )
    app.state.assistant = assistant
    app.state.fraud_scorer = scorer
    app.state.fraud_alerts = alerts
    app.state.nodule_detector = detector
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    *,
    preload: bool = True,
    log_level: str = "info",
    fraud_max_batch: int = DEFAULT_MAX_BATCH,
    fraud_max_wait_ms: float = 0.0,
) -> None:
    """Run the API with uvicorn until interrupted.

    Args:
        host: interface to bind (``0.0.0.0`` for every interface).
        port: TCP port, 1-65535 (0: any free port).
        api_key: as in ``create_api`` (None: ``$FATHOM_API_KEY``).
        preload: build the assistant and the fraud scorer before accepting requests.
        log_level: uvicorn's log level.
        fraud_max_batch, fraud_max_wait_ms: fraud scoring micro-batching (see ``create_api``).

    Raises:
        ValueError: a port outside 0-65535 or a bad ``api_key``.
    """
    import uvicorn

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0-65535, got {port!r}")
    app = create_api(
        api_key, preload=preload, fraud_max_batch=fraud_max_batch, fraud_max_wait_ms=fraud_max_wait_ms
    )
    if api_key is None and api_key_from_env() is None:
        level = logging.WARNING if host in LOOPBACK else logging.ERROR
        _log.log(
            level, "serving on %s:%s WITHOUT authentication: set %s to require a key", host, port, API_KEY_ENV
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
