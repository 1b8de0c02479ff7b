"""Handoff to a human: urgent intents agree with the knowledge base, requests for a person, priorities."""

from __future__ import annotations

import math

import pytest

from apps.customer_service import KNOWLEDGE_BASE
from apps.customer_service.handoff import (
    URGENT_INTENTS,
    Handoff,
    HandoffThresholds,
    asks_for_human,
    decide_handoff,
)
from connectors.knowledge.markdown import split_front_matter


def test_urgent_intents_are_the_urgent_articles_of_the_knowledge_base() -> None:
    # Supporting articles (e.g. freezing a card) may list an urgent intent without being urgent.
    urgent: set[str] = set()
    for path in sorted(KNOWLEDGE_BASE.glob("*.md")):
        meta, _, _ = split_front_matter(path.read_text(), path)
        if meta["urgent"] is True:
            urgent.update(meta["intents"])
    assert urgent == URGENT_INTENTS


@pytest.mark.parametrize(
    "text",
    [
        "can I talk to a person",
        "Can I speak to someone please?",
        "speak to an agent",
        "real human please",
        "call me",
        "Could you ring me back on [PHONE]?",
        "give me a call",
        "I want to talk to a real person",
        "put me through to a human!",
        "Please connect me with customer service",
        "human please",
        "Agent",
        "I need a human",
        "let me chat with an advisor",
        "I want those 30 pounds back, put me through with a bank worker!",
        "I dont want to talk to a bot",
        "is there a human there?",
        "I would like to speak with a representative",
        "can I speak to your manager",
    ],
)
def test_asks_for_human(text: str) -> None:
    assert asks_for_human(text)


@pytest.mark.parametrize(
    "text",
    [
        "a person sent me money",
        "can I get a personal loan",
        "I need to pay a person",
        "someone used my card",
        "I don't need to speak to an agent, just tell me the fee",
        "what do I call my savings pot",
        "my travel agent charged me twice",
        "the person at the shop said my card was declined",
        "Who should I call if my card is stolen?",
        "I paid a real estate agent",
        "I never want to talk to a human",
        "",
    ],
)
def test_does_not_ask_for_human(text: str) -> None:
    assert not asks_for_human(text)


def test_asks_for_human_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="text must be a string"):
        asks_for_human(None)  # type: ignore[arg-type]


LIMITS = HandoffThresholds(min_retrieval_score=0.30, min_intent_confidence=0.50)


def decide(
    text: str = "how do I top up?", intent: str | None = "top_up_failed", **kw: float | None
) -> Handoff | None:
    args = {"intent_confidence": 0.9, "retrieval_score": 0.8, **kw}
    return decide_handoff(text=text, intent=intent, thresholds=LIMITS, **args)  # type: ignore[arg-type]


def test_no_handoff_when_confident() -> None:
    assert decide() is None
    assert decide(intent=None, intent_confidence=None, retrieval_score=None) is None


@pytest.mark.parametrize("intent", sorted(URGENT_INTENTS))
def test_urgent_intents_hand_off_whatever_the_scores(intent: str) -> None:
    handoff = decide("help", intent, intent_confidence=0.05, retrieval_score=0.0)
    assert handoff == Handoff(f"urgent intent: {intent}", "urgent")


def test_low_retrieval_names_the_scores() -> None:
    handoff = decide(retrieval_score=0.12)
    assert handoff == Handoff("low retrieval confidence (0.12 < 0.30)", "low_retrieval")


def test_low_intent_names_the_intent_and_scores() -> None:
    handoff = decide(intent_confidence=0.31)
    assert handoff == Handoff("low intent confidence (top_up_failed: 0.31 < 0.50)", "low_intent")


def test_priority_requested_then_urgent_then_retrieval_then_intent() -> None:
    worst = {"intent_confidence": 0.1, "retrieval_score": 0.1}
    assert decide("let me speak to an agent", "lost_or_stolen_card", **worst).code == "requested"  # type: ignore[union-attr]
    assert decide("I lost it", "lost_or_stolen_card", **worst).code == "urgent"  # type: ignore[union-attr]
    assert decide("my top up failed", "top_up_failed", **worst).code == "low_retrieval"  # type: ignore[union-attr]
    assert decide("my top up failed", "top_up_failed", intent_confidence=0.1).code == "low_intent"  # type: ignore[union-attr]


def test_thresholds_are_inclusive_and_default() -> None:
    assert decide(retrieval_score=0.30, intent_confidence=0.50) is None
    defaults = HandoffThresholds()
    assert 0 < defaults.min_retrieval_score < 1 and 0 < defaults.min_intent_confidence < 1
    below = decide_handoff(
        text="hi", intent="x", intent_confidence=1.0, retrieval_score=defaults.min_retrieval_score - 0.01
    )
    assert below is not None and below.code == "low_retrieval"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retrieval_score": math.nan}, "retrieval_score must be a finite number"),
        ({"intent_confidence": "high"}, "intent_confidence must be a finite number"),
        ({"intent_confidence": 1.5}, "intent_confidence must be within 0-1"),
    ],
)
def test_bad_scores_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(**kwargs)  # type: ignore[arg-type]


def test_bad_thresholds_and_codes_are_named() -> None:
    with pytest.raises(ValueError, match="min_retrieval_score must be a finite number"):
        HandoffThresholds(min_retrieval_score=math.inf)
    with pytest.raises(ValueError, match="min_intent_confidence must be within 0-1"):
        HandoffThresholds(min_intent_confidence=2.0)
    with pytest.raises(ValueError, match="unknown handoff code 'maybe'"):
        Handoff("why not", "maybe")
