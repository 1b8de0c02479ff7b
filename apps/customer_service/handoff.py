"""When the assistant hands a conversation to a human agent, and why.

Four reasons, checked in this order (the first that applies wins):

1. ``requested``: the customer asked for a person ("can I talk to someone", "call me back").
2. ``urgent``: the intent is one where money is at risk right now (lost or stolen card or phone,
   compromised card, a payment, withdrawal or direct debit the customer does not recognise). It
   applies whatever the intent confidence: a possible lost card goes to a person rather than risk
   a wrong self-service answer. These are exactly the knowledge-base articles marked
   ``urgent: true`` (a test keeps the two in step).
3. ``low_retrieval``: the best passage scored below ``min_retrieval_score``, so the knowledge base
   probably does not answer the question.
4. ``low_intent``: the intent router is unsure (confidence below ``min_intent_confidence``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

URGENT_INTENTS: frozenset[str] = frozenset(
    {
        "lost_or_stolen_card",
        "lost_or_stolen_phone",
        "compromised_card",
        "card_payment_not_recognised",
        "cash_withdrawal_not_recognised",
        "direct_debit_payment_not_recognised",
    }
)
CODES = ("requested", "urgent", "low_retrieval", "low_intent", "no_answer")

_HUMAN = (
    r"(?:(?:real|live|actual|proper)\s+)?(?:human(?:\s+being)?|person|people|agent|representative|rep|"
    r"operator|adviser|advisor|consultant|manager|supervisor|someone|somebody|anyone|anybody|bank\s+worker|"
    r"staff(?:\s+member)?|member\s+of\s+staff|employee|customer\s+service|support\s+team|colleague)"
)
_ASK_PATTERNS = [
    # "talk to a person", "speak with an agent", "chat to someone real", "put me through to a human"
    rf"\b(?:talk|speak|chat|get\s+through|put\s+me\s+through|connect\s+me|transfer\s+me|pass\s+me)"
    rf"(?:\s+(?:directly|straight|now|please))?\s+(?:to|with)\s+(?:a|an|the|your|one\s+of\s+your|some)?\s*"
    rf"{_HUMAN}\b",
    # "real human please", "live agent", "an actual person"
    r"\b(?:real|live|actual|proper)\s+(?:human|person|agent|people|representative|operator)\b",
    # "I want a human", "get me an agent", "need a representative"
    r"\b(?:want|need|get\s+me|give\s+me|request|prefer)\s+(?:a|an|to\s+\w+\s+(?:to|with)\s+(?:a|an))\s+"
    r"(?:human|agent|representative|operator|advisor|adviser)\b",
    r"^\W*(?:a\s+)?(?:human|agent|operator|representative)(?:\s+please)?\W*$",
    r"\b(?:human|agent|operator|representative)\s+please\b",
    r"\bis\s+(?:there|this)\s+(?:a\s+)?(?:human|real\s+person|someone\s+real)\b",
    # "call me", "ring me back", "give me a call", "can someone phone me"
    r"\b(?:call|phone|ring)\s+me\b",
    r"\bgive\s+me\s+a\s+(?:call|ring|phone\s+call)\b",
    r"\b(?:request|arrange|book)\s+a\s+(?:call\s*back|callback|phone\s+call)\b",
    r"\bcall\s*back\s+(?:please|request)\b",
    # "not a bot", "stop the robot"
    r"\b(?:not|no\s+more|don'?t\s+want|do\s+not\s+want|stop|hate)"
    r"(?:\s+(?:to\s+)?(?:talk|talking|speak|speaking|chat|chatting)\s+(?:to|with))?"
    r"\s+(?:a|the|this|your|some)?\s*(?:bot|robot|chatbot|machine|automated\s+\w+)\b",
]
_ASKS = [re.compile(p, re.IGNORECASE) for p in _ASK_PATTERNS]
# A request is cancelled by a negation shortly before it in the same clause ("I don't need to
# speak to an agent"). The bot pattern carries its own negation and is exempt.
_NEGATION = re.compile(
    r"\b(?:don't|dont|do\s+not|doesn't|no\s+need\s+to|never|without|won't|not)\b[^.,;!?]{0,30}$",
    re.IGNORECASE,
)


def asks_for_human(text: str) -> bool:
    """Whether the customer asks to be passed to a person.

    Phrases such as "can I talk to a person", "speak to an agent", "real human please", "call me"
    count; "a person sent me money" or "personal loan" do not, and neither does a negated request
    ("I don't need to speak to anyone").

    Args:
        text: one customer message (PII-masked or not).

    Returns:
        True when the message asks for a human.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    for index, pattern in enumerate(_ASKS):
        for match in pattern.finditer(text):
            if index == len(_ASKS) - 1 or not _NEGATION.search(text[: match.start()]):
                return True
    return False


@dataclass
class HandoffThresholds:
    """Below these scores the assistant hands off.

    Args:
        min_retrieval_score: the lowest acceptable score of the best retrieved passage. The score is
            on whatever scale the caller passes to ``decide_handoff`` (the customer-service service
            passes the dense cosine of the best passage, normalised to 0-1), so set this to match.
        min_intent_confidence: the lowest acceptable probability of the predicted intent (0-1).

    Raises:
        ValueError: a threshold is not a finite number, or ``min_intent_confidence`` is outside 0-1.
    """

    min_retrieval_score: float = 0.30
    min_intent_confidence: float = 0.40

    def __post_init__(self) -> None:
        for name in ("min_retrieval_score", "min_intent_confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.min_intent_confidence <= 1.0:
            raise ValueError(f"min_intent_confidence must be within 0-1, got {self.min_intent_confidence}")


@dataclass(frozen=True)
class Handoff:
    """A decision to pass the conversation to a human.

    Args:
        reason: for the agent and the customer, e.g. "urgent intent: lost_or_stolen_card".
        code: one of ``CODES``: "requested", "urgent", "low_retrieval", "low_intent" or "no_answer"
            (set by the assistant when the answer backend finds nothing to answer with).
    """

    reason: str
    code: str

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown handoff code {self.code!r}: expected one of {CODES}")


def _score(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


def decide_handoff(
    *,
    text: str,
    intent: str | None,
    intent_confidence: float | None,
    retrieval_score: float | None,
    thresholds: HandoffThresholds | None = None,
) -> Handoff | None:
    """Whether to hand this turn to a human, by the priority in the module docstring.

    Args:
        text: the customer's message.
        intent: the predicted intent label (BANKING77), or None when there is no intent router.
        intent_confidence: its probability (0-1), or None to skip the confidence check.
        retrieval_score: the score of the best retrieved passage on the caller's scale (see
            ``HandoffThresholds``), or None to skip the retrieval check (e.g. nothing retrieved yet).
        thresholds: the limits; default ``HandoffThresholds()``.

    Returns:
        The handoff, or None when the assistant should answer itself.

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: a score is not a finite number, or ``intent_confidence`` is outside 0-1.
    """
    limits = thresholds if thresholds is not None else HandoffThresholds()
    confidence = _score("intent_confidence", intent_confidence)
    retrieval = _score("retrieval_score", retrieval_score)
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise ValueError(f"intent_confidence must be within 0-1, got {confidence}")
    if asks_for_human(text):
        return Handoff("customer asked for a person", "requested")
    if intent in URGENT_INTENTS:
        return Handoff(f"urgent intent: {intent}", "urgent")
    if retrieval is not None and retrieval < limits.min_retrieval_score:
        return Handoff(
            f"low retrieval confidence ({retrieval:.2f} < {limits.min_retrieval_score:.2f})", "low_retrieval"
        )
    if confidence is not None and confidence < limits.min_intent_confidence:
        label = intent or "no intent"
        return Handoff(
            f"low intent confidence ({label}: {confidence:.2f} < {limits.min_intent_confidence:.2f})",
            "low_intent",
        )
    return None
