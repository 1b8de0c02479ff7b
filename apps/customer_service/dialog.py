"""Multi-turn dialog state of the support assistant: turns, the session state, follow-up condensing.

A ``DialogState`` is one conversation: its turns (texts already PII-masked), the current intent,
the slots gathered so far and the last handoff reason. Turns are append-only and carry an id, so a
store can merge concurrent saves without losing any. The stores that keep states between requests
(SQLite/PostgreSQL through SQLAlchemy, Redis) are in ``apps.customer_service.sessions``.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("user", "assistant")
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_LABEL = 128


def utc_now() -> str:
    """The current time as a UTC ISO 8601 string with microseconds (sorts as text)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _utc_iso(value: object, what: str) -> str:
    """``value`` (ISO string or aware datetime) as ``utc_now``'s format; naive times are refused."""
    moment = value
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError as err:
            raise ValueError(f"{what} is not an ISO 8601 date-time: {value!r}") from err
    if not isinstance(moment, dt.datetime):
        raise ValueError(f"{what} must be an ISO 8601 string, got {type(value).__name__}")
    if moment.tzinfo is None:
        raise ValueError(f"{what} has no time zone: {value!r} (give it in UTC, e.g. ending in +00:00)")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def validate_session_id(session_id: object) -> str:
    """``session_id`` when it is 1-128 characters of ``[A-Za-z0-9_.:-]``.

    Raises:
        ValueError: it is not a string of that shape.
    """
    if not isinstance(session_id, str) or not SESSION_ID_PATTERN.fullmatch(session_id):
        raise ValueError(f"session id must be 1-128 characters of A-Z a-z 0-9 _ . : -, got {session_id!r}")
    return session_id


def _optional_label(value: object, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_LABEL):
        raise ValueError(f"{what} must be None or a string of 1-{MAX_LABEL} characters, got {value!r}")
    return value


def _unknown_keys(data: object, known: set[str], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} fields: {', '.join(map(str, unknown))}")
    return data


@dataclass
class Turn:
    """One message of a conversation.

    Args:
        role: "user" or "assistant".
        text: the message, already PII-masked.
        created: when it was written, UTC ISO 8601 (aware times in other zones are converted).
        intent: the intent label predicted for a user turn, or None.
        confidence: that prediction's probability (0-1), or None.
        sources: ids of the knowledge-base passages an assistant turn cited.
        handoff: the handoff reason given on this turn, or None.
        id: unique id of the turn (a new random one by default); the stores merge turns by it.

    Raises:
        ValueError: a field has the wrong type or value (the message names it).
    """

    role: str
    text: str
    created: str = field(default_factory=utc_now)
    intent: str | None = None
    confidence: float | None = None
    sources: list[str] = field(default_factory=list)
    handoff: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"turn role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.text, str):
            raise ValueError(f"turn text must be a string, got {type(self.text).__name__}")
        self.created = _utc_iso(self.created, "turn created")
        self.intent = _optional_label(self.intent, "turn intent")
        if self.confidence is not None:
            ok = isinstance(self.confidence, numbers.Real) and not isinstance(self.confidence, bool)
            if not ok or not math.isfinite(self.confidence) or not 0.0 <= self.confidence <= 1.0:
                raise ValueError(
                    f"turn confidence must be None or a number within 0-1, got {self.confidence!r}"
                )
            self.confidence = float(self.confidence)
        if isinstance(self.sources, str) or not all(isinstance(s, str) for s in self.sources):
            raise ValueError(f"turn sources must be a list of passage ids (strings), got {self.sources!r}")
        self.sources = list(self.sources)
        if self.handoff is not None and not isinstance(self.handoff, str):
            raise ValueError(f"turn handoff must be None or a string, got {self.handoff!r}")
        if not isinstance(self.id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.id):
            raise ValueError(f"turn id must be 1-64 characters of A-Z a-z 0-9 _ -, got {self.id!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "text": self.text,
            "created": self.created,
            "intent": self.intent,
            "confidence": self.confidence,
            "sources": list(self.sources),
            "handoff": self.handoff,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        """The turn ``to_dict`` wrote.

        Raises:
            ValueError: unknown or missing fields, or a bad value.
        """
        data = _unknown_keys(
            data, {"id", "role", "text", "created", "intent", "confidence", "sources", "handoff"}, "turn"
        )
        missing = [k for k in ("role", "text") if k not in data]
        if missing:
            raise ValueError(f"turn is missing {', '.join(missing)}")
        return cls(**data)


@dataclass
class DialogState:
    """One conversation: its turns and what the assistant knows so far.

    Args:
        session_id: 1-128 characters of ``[A-Za-z0-9_.:-]``.
        intent: the current intent label, or None.
        slots: slots gathered so far (``slots.extract_slots`` / ``merge_slots``); JSON values only.
        turns: the messages, oldest first.
        handoff: the latest handoff reason, or None.
        updated: when the state last changed, UTC ISO 8601 (``save`` sets it).

    Raises:
        ValueError: a field has the wrong type or value.
    """

    session_id: str
    intent: str | None = None
    slots: dict[str, Any] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)
    handoff: str | None = None
    updated: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        validate_session_id(self.session_id)
        self.intent = _optional_label(self.intent, "session intent")
        if not isinstance(self.slots, dict):
            raise ValueError(f"slots must be a dict, got {type(self.slots).__name__}")
        if not all(isinstance(t, Turn) for t in self.turns):
            raise ValueError("turns must be Turn objects (use DialogState.from_dict for plain dicts)")
        self.turns = list(self.turns)
        if self.handoff is not None and not isinstance(self.handoff, str):
            raise ValueError(f"handoff must be None or a string, got {self.handoff!r}")
        self.updated = _utc_iso(self.updated, "session updated")

    def history(self, n: int | None = None) -> list[tuple[str, str]]:
        """The last ``n`` turns (all when None) as ``(role, text)`` pairs, oldest first.

        Raises:
            ValueError: ``n`` is negative or not an integer.
        """
        if n is None:
            return [(t.role, t.text) for t in self.turns]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return [(t.role, t.text) for t in self.turns[len(self.turns) - n :]] if n else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "intent": self.intent,
            "slots": dict(self.slots),
            "turns": [t.to_dict() for t in self.turns],
            "handoff": self.handoff,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DialogState:
        """The state ``to_dict`` wrote (e.g. after a JSON round trip).

        Raises:
            ValueError: unknown or missing fields, or a bad value.
        """
        data = _unknown_keys(
            data, {"session_id", "intent", "slots", "turns", "handoff", "updated"}, "session"
        )
        if "session_id" not in data:
            raise ValueError("session is missing session_id")
        turns = data.get("turns") or []
        if not isinstance(turns, list):
            raise ValueError(f"session turns must be a list, got {type(turns).__name__}")
        return cls(**{**data, "turns": [Turn.from_dict(t) for t in turns]})


# ---------------------------------------------------------------------------------------------
# Follow-up questions
# ---------------------------------------------------------------------------------------------
_TOPIC = re.compile(
    r"\b(?:cards?|account|accounts|transfers?|transferr?(?:ed|ing)|payments?|pin|passcode|password|top[\s-]?ups?|"
    r"topping|refunds?|fees?|charges?|charged|exchange|rates?|currenc(?:y|ies)|atm|cash|withdraw\w*|"
    r"deposits?|balance|statements?|direct\s+debits?|standing\s+orders?|apple\s+pay|google\s+pay|"
    r"contactless|phone|app|verif\w*|identity|loan|overdraft|limits?|salary|beneficiar\w*|cheques?|"
    r"interest|savings|address|fraud\w*|transactions?|money|deliver\w*|activat\w*|freez\w*|blocked|"
    r"lost|stolen|declined|pending|countr\w*|passport|visa|mastercard)\b",
    re.IGNORECASE,
)
_OPENER = re.compile(
    r"^\W*(?:(?:and|but)\s+)?(?:what|how)\s+about\b|^\W*(?:and|also|what\s+if)\b", re.IGNORECASE
)
# "it" that refers to nothing: "is it possible to ...", "it's free to ..."
_DUMMY_IT = re.compile(
    r"\b(?:is\s+it|it(?:'s|\s+is|\s+was)?)\s+(?:possible|ok|okay|safe|true|normal|free|necessary|allowed|"
    r"worth|likely|too)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(
    r"\b(?:it|its|they|them|their|those|these)\b"
    r"|\b(?:a|an|new|another|other|which|this|that|the|old|replacement|different|second)\s+ones?\b"
    r"|\b(?:this|that)\b(?=\s*(?:$|[.,;:!?]|(?:is|was|will|would|take|takes|cost|costs|mean|means|happen|"
    r"happened|work|works|apply|applies|be|been|also|still|too|again)\b))",
    re.IGNORECASE,
)
_SMALL_TALK = re.compile(
    r"^\W*(?:(?:ok(?:ay)?|thanks?|thank\s+you|cheers|great|cool|perfect|fine|yes|no|yeah|yep|nope|hi|hello|"
    r"hey|bye|goodbye|good\s+(?:morning|afternoon|evening)|got\s+it|understood|brilliant|lovely|"
    r"that'?s?\s+(?:all|it|great|helpful)|much\s+appreciated|very\s+much|so\s+much|a\s+lot)\W*)+$",
    re.IGNORECASE,
)
_SHORT_WORDS = 8
_MAX_TOPIC_WORDS = 40


def _topic_sentence(text: str) -> str | None:
    """The last sentence of ``text`` that names a banking topic, at most 40 words; None when none does."""
    for sentence in reversed(re.split(r"(?<=[.!?])\s+", text.strip())):
        if _TOPIC.search(sentence):
            return " ".join(sentence.rstrip(" .!?").split()[:_MAX_TOPIC_WORDS])
    return None


def is_follow_up(question: str) -> bool:
    """Whether ``question`` leans on an earlier message (the rule ``condense`` documents)."""
    if _SMALL_TALK.match(question):
        return False
    if _OPENER.search(question) or _PRONOUN.search(_DUMMY_IT.sub(" ", question)):
        return True
    return not _TOPIC.search(question) and len(question.split()) <= _SHORT_WORDS


def condense(history: list[tuple[str, str]], question: str) -> str:
    """Rewrite a follow-up question into a standalone query for retrieval, without an LLM.

    The rule, deterministic:

    1. The question is a follow-up when it opens with "what about", "how about", "and", "also" or
       "what if"; or it has a pronoun that points back ("it", "they", "them", "those", "a new one",
       "that" / "this" standing alone, but not the empty "it" of "is it possible ..."); or it is
       short (at most 8 words) and names no banking topic ("how long?", "when will I get the money back?"
       names "money" and stands alone). Small talk ("thanks", "ok great") is never a follow-up.
    2. The topic is the last sentence naming a banking topic (card, transfer, top-up, PIN, fee, ...)
       in the most recent user message that has one; earlier messages are searched when the last
       ones were follow-ups themselves.
    3. The result is ``"<topic>: <question>"``, e.g. "I lost my card: how do I get a new one?". When
       the question is not a follow-up, or no topic is found, the question comes back unchanged.

    Args:
        history: earlier ``(role, text)`` pairs, oldest first (``DialogState.history``), without the
            new question; a trailing user turn equal to the question is ignored.
        question: the new user message.

    Returns:
        The standalone query.

    Raises:
        TypeError: ``question`` is not a string.
        ValueError: ``history`` is not a list of ``(role, text)`` pairs with a known role.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    for item in history:
        if not (
            isinstance(item, tuple | list)
            and len(item) == 2
            and item[0] in ROLES
            and isinstance(item[1], str)
        ):
            raise ValueError(f"history items must be (role, text) pairs with role in {ROLES}, got {item!r}")
    earlier = [text for role, text in history if role == "user"]
    if earlier and earlier[-1].strip() == question.strip():
        earlier.pop()
    if not question.strip() or not is_follow_up(question):
        return question
    for text in reversed(earlier):
        topic = _topic_sentence(text)
        if topic:
            return f"{topic}: {question.strip()}"
    return question
