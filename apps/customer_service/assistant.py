"""The customer-service assistant: one LangChain LCEL chain per message, plus the dialog around it.

The chain (``Assistant.chain``) runs, in order::

    mask      PII (cards, IBANs, accounts, phones, e-mails) replaced by tags before anything else
    intent    the MoE intent router on the masked message
    condense  history-aware rewrite of a follow-up into a standalone question
    retrieve  hybrid (BM25 + dense, RRF) search of the knowledge base; passages of articles written
              for the predicted intent are moved up when the router is confident
    answer    extractive (default), an OpenAI-compatible endpoint, or a local Hugging Face model,
              with citations; hand-off to a human decided on the way

Only masked text is logged, embedded, stored in the session or sent to an LLM. ``AskResult``
(``apps/customer_service/schemas.py``) is what the CLI, the API and the UI show.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.runnables import Runnable, RunnableLambda

from apps.customer_service.answer import Answer, Answerer
from apps.customer_service.dialog import DialogState, Turn, condense
from apps.customer_service.handoff import Handoff, HandoffThresholds, decide_handoff
from apps.customer_service.intents import IntentPrediction, IntentRouter
from apps.customer_service.llm import LLMConfig, make_answerer, make_chat_model
from apps.customer_service.schemas import AskResult, HandoffOut, Intent, Source
from apps.customer_service.service import open_index
from apps.customer_service.sessions import SessionStore, open_store
from apps.customer_service.slots import extract_slots, merge_slots
from core.config import ConfigMixin
from core.privacy import mask
from core.retrieval.embeddings import Embedder
from core.retrieval.hybrid import HybridRetriever, SearchHit

log = logging.getLogger(__name__)

HANDOFF_MESSAGES = {
    "requested": "Of course. I am passing you to a member of our team, who will pick up this conversation.",
    "low_retrieval": (
        "I could not find an answer to this in our help centre, so I am passing your question to a "
        "member of our team."
    ),
    "urgent": "This needs urgent attention, so I am passing you to a member of our team now. Meanwhile:",
    "low_intent": "I am not sure I understood, so a member of our team will also look at this.",
    "no_answer": "A member of our team will pick this up.",
}


@dataclass
class AssistantConfig(ConfigMixin):
    """Everything the assistant loads (YAML section ``assistant``).

    Args:
        index: index folder from ``fathom cs ingest``; None = the shipped knowledge base.
        intent_model: intent-router checkpoint folder; None = ``models/intent-router``.
        sessions: session store URL (``sqlite:///file.db``, ``postgresql://...``, ``redis://...``);
            None = ``$FATHOM_CS_SESSIONS`` when set, else SQLite in the cache folder.
        llm: ``LLMConfig`` fields (``backend``: extractive, openai or hf; endpoint, model, ...).
        k: passages retrieved per question.
        history_turns: earlier turns used to condense a follow-up.
        min_retrieval_score: hand off when the best passage's cosine similarity is below this.
        min_intent_confidence: hand off when the intent router's top probability is below this.
        intent_boost_confidence: reorder passages by the predicted intent above this confidence.
        region: default region for phone numbers written without a country code.
    """

    yaml_section: ClassVar[str] = "assistant"

    index: str | None = None
    intent_model: str | None = None
    sessions: str | None = None
    llm: dict[str, Any] = field(default_factory=dict)
    k: int = 4
    history_turns: int = 6
    min_retrieval_score: float = 0.35
    min_intent_confidence: float = 0.15
    intent_boost_confidence: float = 0.5
    region: str = "GB"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.history_turns < 0:
            raise ValueError(f"history_turns must be >= 0, got {self.history_turns}")


class Assistant:
    """Answers customer messages in sessions. Build once (``from_config``) and share: it is thread-safe.

    Args:
        retriever: the knowledge-base index.
        router: the intent router.
        store: where sessions live.
        answerer: the answer backend.
        config: thresholds and sizes.
        chat_model: the LLM behind the answerer, used for condensation too (None: rule-based).
    """

    def __init__(
        self,
        retriever: HybridRetriever,
        router: IntentRouter,
        store: SessionStore,
        answerer: Answerer,
        config: AssistantConfig | None = None,
        chat_model: Any = None,
    ) -> None:
        self.retriever = retriever
        self.router = router
        self.store = store
        self.answerer = answerer
        self.config = config or AssistantConfig()
        self.chat_model = chat_model
        self.thresholds = HandoffThresholds(
            min_retrieval_score=self.config.min_retrieval_score,
            min_intent_confidence=self.config.min_intent_confidence,
        )
        self._lock = threading.Lock()  # the router and the session writes are not re-entrant
        self.chain = self._build_chain()

    @classmethod
    def from_config(cls, config: AssistantConfig | None = None) -> Assistant:
        """Load the index, the intent router, the session store and the answer backend once."""
        config = config or AssistantConfig()
        embedder = Embedder()
        retriever = open_index(config.index, embedder=embedder)
        router = IntentRouter.load(config.intent_model)
        llm_config = LLMConfig(**config.llm)
        chat_model = None if llm_config.backend == "extractive" else make_chat_model(llm_config)
        answerer = make_answerer(llm_config, embedder=embedder, chat_model=chat_model)
        store = open_store(config.sessions or os.environ.get("FATHOM_CS_SESSIONS") or None)
        return cls(retriever, router, store, answerer, config, chat_model)

    # -- the chain -------------------------------------------------------------------------------

    def _build_chain(self) -> Runnable:
        return (
            RunnableLambda(self._mask, name="mask")
            | _assign("intent", self._intent)
            | _assign("standalone", self._condense, name="condense")
            | _assign("hits", self._retrieve, name="retrieve")
            | _assign("handoff", self._handoff)
            | _assign("answer", self._answer)
        )

    def _mask(self, inputs: dict[str, Any]) -> dict[str, Any]:
        masked = mask(inputs["question"], region=self.config.region)
        return {
            "question": masked.text,
            "history": inputs.get("history", []),
            "previous_intent": inputs.get("previous_intent"),
        }

    def _intent(self, inputs: dict[str, Any]) -> IntentPrediction:
        return self.router.predict([inputs["question"]], top=3)[0]

    def _condense(self, inputs: dict[str, Any]) -> str:
        history = inputs["history"]
        if not history:
            return inputs["question"]
        if self.chat_model is not None:
            from apps.customer_service.answer import llm_condense

            return llm_condense(self.chat_model, history, inputs["question"])
        return condense(history, inputs["question"])

    def _retrieve(self, inputs: dict[str, Any]) -> list[SearchHit]:
        hits = self.retriever.search(inputs["standalone"], k=max(self.config.k * 2, 8))
        intent: IntentPrediction = inputs["intent"]
        label = intent.label if intent.confidence >= self.config.intent_boost_confidence else None
        if label is None and inputs["standalone"] != inputs["question"]:
            label = inputs["previous_intent"]  # an unclear follow-up stays on the conversation's topic
        if label is not None:
            # Articles written for that intent first (fused order kept within each group); other
            # passages stay only when they are as close to the question as the best of those.
            matching = [h for h in hits if label in (h.metadata.get("intents") or [])]
            if matching:
                bar = max((h.dense_score for h in matching if h.dense_score is not None), default=1.0)
                others = [h for h in hits if h not in matching and (h.dense_score or 0.0) >= bar]
                hits = matching + others
        return hits[: self.config.k]

    def _handoff(self, inputs: dict[str, Any]) -> Handoff | None:
        hits: list[SearchHit] = inputs["hits"]
        best = max((h.dense_score for h in hits if h.dense_score is not None), default=0.0)
        intent: IntentPrediction = inputs["intent"]
        return decide_handoff(
            text=inputs["question"],
            intent=intent.label,
            intent_confidence=intent.confidence,
            retrieval_score=best,
            thresholds=self.thresholds,
        )

    def _answer(self, inputs: dict[str, Any]) -> Answer:
        handoff: Handoff | None = inputs["handoff"]
        if handoff is not None and handoff.code in ("requested", "low_retrieval"):
            return Answer(text=HANDOFF_MESSAGES[handoff.code], citations=[], grounded=True, backend="handoff")
        passages = [_passage(h) for h in inputs["hits"]]
        answer = self.answerer.answer(inputs["standalone"], passages, intent=inputs["intent"].label)
        if handoff is not None:
            answer = dataclasses.replace(answer, text=f"{HANDOFF_MESSAGES[handoff.code]} {answer.text}")
        if answer.removed:
            log.warning("removed %d injected instruction(s) from the passages", len(answer.removed))
        return answer

    # -- sessions --------------------------------------------------------------------------------

    def ask(self, question: str, session_id: str | None = None) -> AskResult:
        """Answer one customer message, in the session ``session_id`` (a new one when None).

        Raises:
            ValueError: the question is empty or the session id is malformed.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        session_id = session_id or uuid.uuid4().hex
        with self._lock:
            state = self.store.load(session_id)
            out = self.chain.invoke(
                {
                    "question": question,
                    "history": state.history(self.config.history_turns),
                    "previous_intent": state.intent,
                }
            )
            result = self._result(out, state)
            self._record(state, out, result)
        log.info(
            "session %s: intent=%s (%.2f) handoff=%s sources=%s",
            session_id,
            result.intent.label,
            result.intent.confidence,
            result.handoff.code if result.handoff else None,
            [s.id for s in result.sources],
        )
        return result

    def ask_many(self, questions: list[str]) -> list[AskResult]:
        """Independent questions (each in its own new session), in order."""
        return [self.ask(q) for q in questions]

    def history(self, session_id: str) -> list[dict[str, Any]]:
        """The turns of a session: ``{"role", "text", "intent", "sources", "handoff", "created"}``."""
        return [
            {
                "role": t.role,
                "text": t.text,
                "intent": t.intent,
                "sources": list(t.sources),
                "handoff": t.handoff,
                "created": t.created,
            }
            for t in self.store.load(session_id).turns
        ]

    def _result(self, out: dict[str, Any], state: DialogState) -> AskResult:
        answer: Answer = out["answer"]
        hits: list[SearchHit] = out["hits"]
        # The backend cites positions among the passages it was given; the customer sees only the
        # cited ones, so markers are renumbered to positions in ``sources`` (order of first citation).
        order = [i for i in dict.fromkeys(answer.citations) if 1 <= i <= len(hits)]
        cited = [hits[i - 1] for i in order]
        text = _renumber(answer.text, {old: new for new, old in enumerate(order, start=1)})
        intent: IntentPrediction = out["intent"]
        handoff: Handoff | None = out["handoff"]
        if handoff is None and not answer.grounded:
            handoff = Handoff(reason="the knowledge base holds no answer to this question", code="no_answer")
        slots = merge_slots(state.slots, extract_slots(out["standalone"]))
        return AskResult(
            answer=text,
            sources=[_source(h) for h in cited],
            intent=Intent(label=intent.label, confidence=intent.confidence),
            handoff=None if handoff is None else HandoffOut(reason=handoff.reason, code=handoff.code),
            session_id=state.session_id,
            question_masked=out["question"],
            standalone_question=out["standalone"],
            slots=slots,
            grounded=answer.grounded,
            backend=answer.backend,
        )

    def _record(self, state: DialogState, out: dict[str, Any], result: AskResult) -> None:
        now = datetime.now(UTC).isoformat()
        handoff = result.handoff.reason if result.handoff else None
        intent = out["intent"]
        state.turns.append(
            Turn(
                role="user",
                text=out["question"],
                created=now,
                intent=intent.label,
                confidence=intent.confidence,
            )
        )
        state.turns.append(
            Turn(
                role="assistant",
                text=result.answer,
                created=now,
                sources=[s.id for s in result.sources],
                handoff=handoff,
            )
        )
        if intent.confidence >= self.config.intent_boost_confidence or state.intent is None:
            state.intent = intent.label
        state.slots = result.slots
        state.handoff = handoff or state.handoff
        self.store.save(state)


def _assign(key: str, step: Any, name: str | None = None) -> Runnable:
    """A chain step that adds ``key: step(inputs)`` to the inputs.

    Like ``RunnablePassthrough.assign``, without its thread-pool hop per step (~3 ms each here).
    """
    return RunnableLambda(lambda inputs: {**inputs, key: step(inputs)}, name=name or key)


_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _renumber(text: str, mapping: dict[int, int]) -> str:
    """Rewrite ``[n]`` / ``[n, m]`` citation markers by ``mapping``; markers it lacks are dropped."""

    def sub(match: re.Match[str]) -> str:
        numbers = [mapping[n] for n in map(int, match.group(1).split(",")) if n in mapping]
        return f"[{', '.join(map(str, dict.fromkeys(numbers)))}]" if numbers else ""

    return _MARKER.sub(sub, text)


def _passage(hit: SearchHit) -> dict[str, Any]:
    return {
        "id": hit.doc_id,
        "title": hit.metadata.get("title"),
        "source": hit.metadata.get("source"),
        "section": hit.metadata.get("section"),
        "score": round(float(hit.score), 6),
        "text": hit.text,
    }


def _source(hit: SearchHit) -> Source:
    source = hit.metadata.get("source")
    return Source(
        id=hit.doc_id,
        title=hit.metadata.get("title"),
        source=Path(source).name if source else None,
        section=hit.metadata.get("section"),
        score=round(float(hit.dense_score if hit.dense_score is not None else hit.score), 6),
        text=hit.text,
    )
