"""The customer-service HTTP routes: ``POST /cs/ask`` and ``GET /cs/sessions/{session_id}``.

The routes are thin: validate (``AskRequest``), call the assistant, shape the answer
(``AskResult.public()``). The assistant comes from the ``get_assistant`` callable given to
``make_router`` (in the suite, a ``core.serving.LazyResource``), so it is built once and a test can
pass a fake. Endpoints are plain ``def``: FastAPI runs them in its threadpool, so a slow model
call never blocks the event loop.

Errors: a ``ValueError`` from the assistant is a 422 with its message (a pydantic
``ValidationError`` is not: that is a bug, a 500); an unknown session is a 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from apps.customer_service.schemas import SESSION_ID, AskRequest, AskResult, Intent
from core.serving import ErrorBody


class AssistantLike(Protocol):
    """What the routes need of ``apps.customer_service.assistant.Assistant``."""

    def ask(self, question: str, session_id: str | None = None) -> AskResult: ...

    def history(self, session_id: str) -> list[dict[str, Any]]: ...


class SourceOut(BaseModel):
    """A cited knowledge-base passage."""

    id: str
    title: str | None = None
    source: str | None = None
    score: float
    text: str


class HandoffPublic(BaseModel):
    """Why a human takes the conversation over."""

    reason: str


class AskResponse(BaseModel):
    """``AskResult.public()``: the answer, its sources, the intent and the hand-off (null if none)."""

    answer: str
    sources: list[SourceOut]
    intent: Intent
    handoff: HandoffPublic | None = None
    session_id: str | None = None


class Turn(BaseModel):
    """One message of a conversation as the assistant stored it."""

    role: str
    text: str
    intent: Any = None
    sources: list[Any] = Field(default_factory=list)
    handoff: Any = None
    created: Any = None


class SessionHistory(BaseModel):
    """A conversation's turns, oldest first."""

    session_id: str
    turns: list[Turn]


def _session_id(value: str) -> str:
    if not SESSION_ID.match(value):
        raise ValueError("session_id must be 1-128 characters of letters, digits and _.:-")
    return value


# The pattern is declared in the OpenAPI only; ``_session_id`` enforces it with a message a person reads.
SessionId = Annotated[
    str,
    PathParam(description="The conversation's id.", json_schema_extra={"pattern": SESSION_ID.pattern}),
    AfterValidator(_session_id),
]


def make_router(get_assistant: Callable[[], AssistantLike]) -> APIRouter:
    """The ``/cs`` routes over the assistant that ``get_assistant`` returns.

    Args:
        get_assistant: returns the assistant; called per request, in the threadpool and only after
            the request validated (a bad request never triggers a model load), so it should be
            cheap after the first call, e.g. ``LazyResource.get``.

    Returns:
        A router with prefix ``/cs``.

    Raises:
        TypeError: ``get_assistant`` is not callable.
    """
    if not callable(get_assistant):
        raise TypeError(f"get_assistant must be callable, got {type(get_assistant).__name__}")

    router = APIRouter(prefix="/cs", tags=["customer service"])

    @router.post("/ask", response_model=AskResponse, summary="Ask the customer-service assistant")
    def ask(request: AskRequest) -> dict[str, Any]:
        """Answer one customer message from the knowledge base, with citations, intent and hand-off.

        Send the ``session_id`` of the previous answer to continue a conversation; without one the
        assistant starts a new conversation and returns its id.
        """
        assistant = get_assistant()
        try:
            result = assistant.ask(request.question, session_id=request.session_id)
        except ValidationError:  # a ValueError too, but a bug of ours, not bad input: a 500
            raise
        except ValueError as exc:
            raise HTTPException(422, str(exc) or "the assistant rejected the question") from exc
        return result.public()

    @router.get(
        "/sessions/{session_id}",
        response_model=SessionHistory,
        summary="A conversation's history",
        responses={404: {"model": ErrorBody, "description": "No conversation has this id"}},
    )
    def session(session_id: SessionId) -> dict[str, Any]:
        """The turns of a conversation, oldest first: role, text, intent, sources and hand-off."""
        assistant = get_assistant()
        try:
            turns = assistant.history(session_id)
        except KeyError as exc:
            raise HTTPException(404, f"no conversation with session_id {session_id!r}") from exc
        except ValidationError:
            raise
        except ValueError as exc:
            raise HTTPException(422, str(exc) or "the assistant rejected the session id") from exc
        if not turns:
            raise HTTPException(404, f"no conversation with session_id {session_id!r}")
        return {"session_id": session_id, "turns": turns}

    return router
