"""The fraud HTTP routes: real-time scoring and the analysts' alert queue, under ``/fraud``.

- ``POST /fraud/score``: one transaction, or ``{"transactions": [...]}`` (1-10,000), scored from the
  live state in time order; alerting results go to the alert store (idempotent by transaction id).
  Concurrent requests are micro-batched: whatever waits while a batch runs is scored in the next
  one (``core.serving.MicroBatcher``, one ``score_many`` call, one model forward), so the model's
  per-call cost is shared under load while a lone request is not delayed.
- ``GET /fraud/alerts``: a page of the queue; ``GET /fraud/alerts/summary``: counts per status;
  ``GET /fraud/alerts/{transaction_id}``: one alert.
- ``POST /fraud/alerts/{transaction_id}/decision``: an analyst's decision, fed back to the scorer as
  a label.

The routes are thin: validate, call ``FraudScorer`` / ``AlertStore``, shape the JSON. Both come from
the callables given to ``make_router`` (in the suite, ``core.serving.LazyResource.get``), asked for
only after the request validated. ``POST /fraud/score`` is ``async`` (a request costs the event loop
its parsing and an await; scoring runs in the micro-batcher's worker, explanations and the alert
store in the threadpool); the other endpoints are plain ``def``, run in FastAPI's threadpool.

Errors: a bad transaction is a 422 naming the item and field (``transactions.3.amount``) and
nothing of the batch is scored; a transaction earlier than the scorer's last seen time is a 409
with the scorer's message (the real-time state only moves forward); an unknown alert is a 404.
A batch is also bounded by the app's request-body limit (``max_body_bytes``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.streams.schema import DEFAULT_CURRENCY, MAX_AMOUNT, Transaction
from core.serving import ErrorBody, ResourceUnavailable
from core.serving.batching import MicroBatcher, check_batch_settings

if TYPE_CHECKING:
    from apps.fraud.alerts import Alert
    from apps.fraud.service import Scored

MAX_BATCH = 10_000
MAX_ID = 128  # as apps.fraud.alerts.MAX_ID: the alert store's id columns
MAX_PAGE = 1_000
MAX_OFFSET = 2**53  # beyond any queue; SQLite integers are 64-bit
MAX_ERRORS = 50  # validation errors reported for one request; the rest are counted
INLINE_PARSE = 16  # a body of more transactions is validated in the threadpool, off the event loop
DEFAULT_MAX_BATCH = 256  # transactions per micro-batched scoring call

Status = Literal["open", "fraud", "legitimate"]
Decision = Literal["fraud", "legitimate"]


class ScorerLike(Protocol):
    """What the routes need of ``apps.fraud.service.FraudScorer``."""

    def score_many(self, txs: Iterable[Any], *, defer_explanations: bool = False) -> list[Scored]: ...

    def add_label(self, transaction_id: str, label: bool) -> bool: ...


class AlertStoreLike(Protocol):
    """What the routes need of ``apps.fraud.alerts.AlertStore``."""

    def add_many(self, alerts: Iterable[Alert]) -> int: ...

    def get(self, transaction_id: str) -> Alert | None: ...

    def queue(
        self,
        status: str | None = "open",
        limit: int = 100,
        offset: int = 0,
        customer_id: str | None = None,
        min_score: float | None = None,
        order: str = "score",
    ) -> list[Alert]: ...

    def decide(self, transaction_id: str, decision: str, analyst: str, note: str | None = None) -> Alert: ...

    def counts(self) -> dict[str, int]: ...


# --- request and response shapes -------------------------------------------------------------------------
# not blank, no ASCII whitespace around it (spelled out: "\s" differs between regex dialects)
ID_PATTERN = r"^[^ \t\n\r\f\v]([\s\S]*[^ \t\n\r\f\v])?$"


class TransactionIn(Transaction):
    """A transaction to score: ``connectors.streams.Transaction`` as strict JSON.

    The stream connectors read CSV and message fields leniently (integer ids, ``"fraud"``/``0`` labels,
    whitespace trimmed); the API takes exactly what its OpenAPI spec says, so a client learns of a
    wrong type instead of having it coerced: ids are strings of 1-128 characters without whitespace
    around them, ``amount`` a JSON number up to ``MAX_AMOUNT``, ``timestamp`` an ISO 8601 string,
    ``label`` a boolean or null, ``channel`` and ``merchant_category`` strings or null.
    """

    transaction_id: str = Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)
    customer_id: str = Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)
    terminal_id: str = Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)
    amount: float = Field(json_schema_extra={"minimum": 0, "maximum": MAX_AMOUNT})
    currency: str | None = Field(
        default=DEFAULT_CURRENCY,
        description="ISO 4217 code (any case); blank or null: EUR.",
        json_schema_extra={"pattern": r"^\s*([A-Za-z]{3})?\s*$"},
    )

    @field_validator("transaction_id", "customer_id", "terminal_id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:  # replaces Transaction's lenient one
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {type(value).__name__}")
        return value

    @field_validator("channel", "merchant_category", mode="before")
    @classmethod
    def _optional_text(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"must be a string or null, not {type(value).__name__}")
        return value.strip() or None if isinstance(value, str) else None

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"must be true, false or null, not {value!r}")
        return value

    @field_validator("amount", mode="before")
    @classmethod
    def _amount_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"must be an ISO 8601 date-time string, not {type(value).__name__}")
        return value


class ScoreBatch(BaseModel):
    """Several transactions to score in one request; they are scored in time order."""

    model_config = ConfigDict(extra="forbid")

    transactions: list[TransactionIn] = Field(min_length=1, max_length=MAX_BATCH)


class ScoreResult(BaseModel):
    """One transaction's score. ``repeated``: its id was scored before and this is that result."""

    transaction_id: str
    score: float
    alert: bool
    threshold: float
    model: str
    repeated: bool = False
    explanation: dict[str, Any] | None = Field(default=None, description="Why it alerted (alerts only).")


class ScoreResponse(BaseModel):
    """The results in the order the transactions were sent, and how many alerted."""

    results: list[ScoreResult]
    n_alerts: int


class AlertOut(BaseModel):
    """An alert in the analysts' queue (datetimes in ISO 8601, UTC)."""

    transaction_id: str
    customer_id: str
    terminal_id: str
    amount: float
    timestamp: datetime
    score: float
    threshold: float
    model: str
    created_at: datetime
    status: Status
    decision_by: str | None = None
    decided_at: datetime | None = None
    note: str | None = None
    explanation: dict[str, Any] | None = None


class DecisionRequest(BaseModel):
    """An analyst's verdict on an alert; deciding again overwrites the earlier decision."""

    model_config = ConfigDict(extra="forbid")

    decision: Decision
    analyst: str = Field(min_length=1, max_length=MAX_ID)
    note: str | None = Field(default=None, max_length=4000)

    @field_validator("analyst")
    @classmethod
    def _analyst(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("analyst is empty")
        return value.strip()


class DecisionResponse(AlertOut):
    """The alert after the decision; ``label_applied``: the scorer's live state took the label."""

    label_applied: bool


class AlertSummary(BaseModel):
    """Alerts per status."""

    open: int
    fraud: int
    legitimate: int
    total: int


def _score_body_schema() -> dict[str, Any]:
    """OpenAPI of the ``POST /fraud/score`` body, which the route parses itself (``parse_score_body``)."""
    one = TransactionIn.model_json_schema()
    many = {
        "title": "ScoreBatch",
        "type": "object",
        "properties": {"transactions": {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_BATCH}},
        "required": ["transactions"],
        "additionalProperties": False,
    }
    example = {
        "transaction_id": "tx-1",
        "timestamp": "2026-04-01T12:00:00Z",
        "customer_id": "c-17",
        "terminal_id": "m-4",
        "amount": 57.16,
        "currency": "EUR",
        "channel": "pos",
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [one, many]},
                "examples": {
                    "one": {"summary": "One transaction", "value": example},
                    "many": {"summary": "A batch", "value": {"transactions": [example]}},
                },
            }
        },
    }


TransactionId = Annotated[
    str, PathParam(min_length=1, max_length=MAX_ID, description="The alerting transaction's id.")
]


def parse_score_body(body: Any) -> list[Transaction]:
    """The transactions of a ``POST /fraud/score`` body (one object, or ``{"transactions": [...]}``).

    Raises:
        RequestValidationError: every problem with its place, e.g. ``("body", "transactions", 3,
            "amount")``; the app answers 422 naming them.
    """
    batch = isinstance(body, dict) and "transactions" in body
    try:
        if batch:
            return list(ScoreBatch.model_validate(body).transactions)
        return [TransactionIn.model_validate(body)]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        shown = [{**error, "loc": ("body", *error["loc"])} for error in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            rest = len(errors) - MAX_ERRORS
            shown.append({"loc": ("body",), "msg": f"and {rest} more error(s)", "type": "value_error"})
        raise RequestValidationError(shown) from None


def _alert_json(alert: Alert) -> dict[str, Any]:
    return asdict(alert)


def make_router(
    get_scorer: Callable[[], ScorerLike],
    get_alerts: Callable[[], AlertStoreLike],
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = 0.0,
) -> APIRouter:
    """The ``/fraud`` routes over the scorer and alert store that the callables return.

    Args:
        get_scorer: returns the live ``FraudScorer``; called per request after validation, so it
            should be cheap after the first call (``LazyResource.get``).
        get_alerts: returns the ``AlertStore``, likewise.
        max_batch: dynamic micro-batching of ``POST /fraud/score``: concurrent requests are merged
            into one ``score_many`` call (one model forward) of up to this many transactions
            (``core.serving.MicroBatcher``); 1 scores each request on its own, in its own thread.
        max_wait_ms: how long a batch waits for more requests after its first (0: only those
            already waiting, so a lone request is never delayed).

    Returns:
        A router with prefix ``/fraud``.

    Raises:
        TypeError: a getter is not callable.
        ValueError: ``max_batch < 1`` or a negative ``max_wait_ms``.
    """
    for name, getter in (("get_scorer", get_scorer), ("get_alerts", get_alerts)):
        if not callable(getter):
            raise TypeError(f"{name} must be callable, got {type(getter).__name__}")
    check_batch_settings(max_batch, max_wait_ms)  # now, not at the first request

    router = APIRouter(prefix="/fraud", tags=["fraud"])
    # One batch at a time: the state moves forward only, and a batch interleaved with another could
    # be refused half-way through; in order, a refused batch changes nothing. The micro-batcher's
    # worker serialises the calls; without it, this lock does.
    scoring = threading.Lock()
    batchers: list[MicroBatcher[Transaction, Scored]] = []

    def score_batch(txs: list[Transaction]) -> list[Scored]:
        get_alerts()  # 503 before scoring when the alert store cannot be opened
        # Alerts' explanations are left to the request (finish_alerts): the next batch need not wait.
        return get_scorer().score_many(txs, defer_explanations=True)

    def score_alone(txs: list[Transaction]) -> list[Scored]:
        with scoring:
            return score_batch(txs)

    def finish_alerts(results: list[Scored], txs: list[Transaction]) -> None:
        from apps.fraud.service import alert_from, complete_explanations  # loaded with the scorer

        complete_explanations(results)
        # Repeats too: a request that failed after scoring and is retried still gets its alerts.
        get_alerts().add_many(alert_from(r, tx) for r, tx in zip(results, txs, strict=True) if r.alert)

    def batcher(app: Any) -> MicroBatcher[Transaction, Scored]:
        with scoring:
            if not batchers:
                metrics = getattr(app.state, "metrics", None)
                batchers.append(
                    MicroBatcher(
                        score_batch,
                        max_batch=max_batch,
                        max_wait_ms=max_wait_ms,
                        name="fraud_score",
                        registry=getattr(metrics, "registry", None),
                    )
                )
            return batchers[0]

    @router.post(
        "/score",
        response_model=ScoreResponse,
        response_model_exclude_none=True,
        summary="Score transactions in real time",
        openapi_extra={"requestBody": _score_body_schema()},
        responses={
            409: {
                "model": ErrorBody,
                "description": "A transaction is earlier than the last one the scorer saw",
            }
        },
    )
    async def score(request: Request, body: Annotated[Any, Body()]) -> dict[str, Any]:
        """Score one transaction, or ``{"transactions": [...]}`` (1-10,000), from the live state.

        Transactions are scored in time order and update the state (card sequences, windows, the
        card-merchant graph); results come back in the order sent. A transaction id scored before
        returns its first result with ``repeated: true``. Alerts are added to the alert queue, once
        per transaction. Concurrent requests are scored together (dynamic micro-batching), each
        getting its own results and its own errors.
        """
        # On the event loop: parsing one transaction, queueing, awaiting the batch. Whatever may
        # block (a large batch's validation, loading the model, explanations, the store) runs in
        # the threadpool or the batcher's worker.
        listed = body.get("transactions") if isinstance(body, dict) else None
        many = isinstance(listed, list) and len(listed) > INLINE_PARSE
        txs = await run_in_threadpool(parse_score_body, body) if many else parse_score_body(body)
        try:
            if max_batch == 1:
                results = await run_in_threadpool(score_alone, txs)
            else:
                results = await asyncio.wrap_future(batcher(request.app).submit_nowait(txs))
        except ValidationError:  # a ValueError too, but a bug of ours: a 500
            raise
        except ValueError as exc:  # earlier than the last transaction seen
            raise HTTPException(409, str(exc) or "transaction out of time order") from exc
        if any(r.alert for r in results):
            await run_in_threadpool(finish_alerts, results, txs)
        out = [
            {
                "transaction_id": r.transaction_id,
                "score": r.score,
                "alert": r.alert,
                "threshold": r.threshold,
                "model": r.model,
                "repeated": r.repeated,
                "explanation": r.explanation,
            }
            for r in results
        ]
        return {"results": out, "n_alerts": sum(r.alert for r in results)}

    @router.get("/alerts", response_model=list[AlertOut], summary="The alert queue")
    def alerts(
        status: Annotated[Status | Literal["all"], Query(description="'all' for every status")] = "open",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        customer_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID)] = None,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        order: Annotated[
            Literal["score", "time"], Query(description="score: highest first; time: newest")
        ] = "score",
    ) -> list[dict[str, Any]]:
        """A page of alerts: open ones by default, highest score first."""
        page = get_alerts().queue(
            status=None if status == "all" else status,
            limit=limit,
            offset=offset,
            customer_id=customer_id,
            min_score=min_score,
            order=order,
        )
        return [_alert_json(alert) for alert in page]

    @router.get("/alerts/summary", response_model=AlertSummary, summary="Alerts per status")
    def summary() -> dict[str, int]:
        """How many alerts are open, decided fraud and decided legitimate."""
        counts = get_alerts().counts()
        return {
            "open": counts.get("open", 0),
            "fraud": counts.get("fraud", 0),
            "legitimate": counts.get("legitimate", 0),
            "total": sum(counts.values()),
        }

    @router.get(
        "/alerts/{transaction_id}",
        response_model=AlertOut,
        summary="One alert",
        responses={404: {"model": ErrorBody, "description": "No alert for this transaction"}},
    )
    def alert(transaction_id: TransactionId) -> dict[str, Any]:
        """The alert of a transaction, with its explanation and decision."""
        found = get_alerts().get(transaction_id)
        if found is None:
            raise HTTPException(404, f"no alert for transaction {transaction_id!r}")
        return _alert_json(found)

    @router.post(
        "/alerts/{transaction_id}/decision",
        response_model=DecisionResponse,
        summary="Decide an alert",
        responses={404: {"model": ErrorBody, "description": "No alert for this transaction"}},
    )
    def decide(transaction_id: TransactionId, request: DecisionRequest) -> dict[str, Any]:
        """Record an analyst's decision and feed it to the scorer as a label (terminal risk).

        ``label_applied`` is false when the scorer no longer holds the transaction (it left every
        window, or the scorer restarted) or could not be loaded; the decision is recorded either way.
        """
        store = get_alerts()
        try:
            decided = store.decide(transaction_id, request.decision, request.analyst, request.note)
        except KeyError as exc:
            raise HTTPException(404, f"no alert for transaction {transaction_id!r}") from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc) or "the alert store rejected the decision") from exc
        try:
            scorer = get_scorer()
        except ResourceUnavailable:  # /healthz reports it; the decision stands
            applied = False
        else:
            applied = bool(scorer.add_label(decided.transaction_id, request.decision == "fraud"))
        return {**_alert_json(decided), "label_applied": applied}

    return router
