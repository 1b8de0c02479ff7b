"""The customer-service assistant's request and answer shapes, shared by the CLI, the API and the UI.

``AskResult.public()`` is the stable JSON of ``fathom cs ask --json`` and ``POST /cs/ask``::

    {"answer", "sources": [{"id", "title", "source", "score", "text"}],
     "intent": {"label", "confidence"}, "handoff": null | {"reason"}}

plus ``session_id`` (and, in ``AskResult.to_dict()``, the dialog details the UI shows).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_QUESTION_CHARS = 4000
NOT_BLANK = r"\S"  # a non-whitespace character somewhere


class Source(BaseModel):
    """A knowledge-base passage the answer cites (``id`` is the passage id, ``source`` its file)."""

    id: str
    title: str | None = None
    source: str | None = None
    section: str | None = None
    score: float
    text: str


class Intent(BaseModel):
    """The intent router's top label and its probability."""

    label: str
    confidence: float = Field(ge=0.0, le=1.0)


class HandoffOut(BaseModel):
    """Why the conversation goes to a human (``code``: urgent, requested, low_retrieval, low_intent)."""

    reason: str
    code: str | None = None


class AskRequest(BaseModel):
    """One customer message. ``session_id`` ties turns into one conversation."""

    # The patterns only document the validators below in the JSON schema (the API's OpenAPI); the
    # validators enforce them, with messages a person can act on.
    question: str = Field(
        min_length=1, max_length=MAX_QUESTION_CHARS, json_schema_extra={"pattern": NOT_BLANK}
    )
    session_id: str | None = Field(default=None, json_schema_extra={"pattern": SESSION_ID.pattern})

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question is empty")
        return value

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_ID.match(value):
            raise ValueError("session_id must be 1-128 characters of letters, digits and _.:-")
        return value


class AskResult(BaseModel):
    """The assistant's reply to one message."""

    answer: str
    sources: list[Source]
    intent: Intent
    handoff: HandoffOut | None = None
    session_id: str | None = None
    question_masked: str = ""
    standalone_question: str = ""
    slots: dict[str, Any] = Field(default_factory=dict)
    grounded: bool = True
    backend: str = "extractive"

    def public(self) -> dict[str, Any]:
        """The stable CLI/API JSON (see the module docstring)."""
        return {
            "answer": self.answer,
            "sources": [
                {"id": s.id, "title": s.title, "source": s.source, "score": s.score, "text": s.text}
                for s in self.sources
            ],
            "intent": {"label": self.intent.label, "confidence": self.intent.confidence},
            "handoff": None if self.handoff is None else {"reason": self.handoff.reason},
            "session_id": self.session_id,
        }
