"""Answer backends of the customer-service assistant: a grounded extractive default and any chat LLM.

Every backend takes the customer's (PII-masked) question and the retrieved passages
(``{"id", "title", "source", "section", "score", "text"}``, best first) and returns an ``Answer`` whose
``citations`` are 1-based indexes into those passages.

- ``ExtractiveAnswerer`` (``apps.customer_service.extractive``) needs no LLM: it answers only with
  verbatim sentences of the passages and says it cannot answer when none is relevant enough.
- ``LLMAnswerer`` prompts any langchain-core chat model with ``prompts.ANSWER_PROMPT`` and keeps only the
  citations that point at a passage it was given.
- ``llm_condense`` turns a follow-up message into a standalone question through a chat model.

"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from apps.customer_service.prompts import (
    ANSWER_PROMPT,
    CONDENSE_PROMPT,
    answer_prompt_values,
    condense_prompt_values,
    format_passages,
)

log = logging.getLogger(__name__)

__all__ = [
    "NO_ANSWER",
    "Answer",
    "Answerer",
    "LLMAnswerer",
    "llm_condense",
    "parse_citations",
]

NO_ANSWER = (
    "I'm sorry, I can't answer that from our help-centre articles. Please rephrase your question, "
    "or ask to speak to a member of our team."
)


@dataclass
class Answer:
    """One answer.

    Args:
        text: the reply shown to the customer, with citation markers like ``[1]``.
        citations: 1-based indexes into the passages the answer was given, in order of first citation.
        grounded: whether the answer rests on the passages (``False``: it says it cannot answer).
        backend: which backend answered (``extractive``, ``openai``, ``hf``, ...).
        removed: injected text ``sanitize_passage`` removed from the passages, ``"[n] ..."`` per piece,
            for the audit log.
    """

    text: str
    citations: list[int]
    grounded: bool
    backend: str
    removed: list[str] = field(default_factory=list)


@runtime_checkable
class Answerer(Protocol):
    """What every answer backend provides."""

    def answer(
        self, question: str, passages: list[dict[str, Any]], *, intent: str | None = None
    ) -> Answer: ...


def _check_inputs(question: Any, passages: Any) -> None:
    if not isinstance(question, str):
        raise TypeError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("the question is empty")
    if isinstance(passages, str | bytes | Mapping) or not isinstance(passages, Sequence):
        raise TypeError(f"passages must be a list of dicts, got {type(passages).__name__}")
    for number, passage in enumerate(passages, start=1):
        if not isinstance(passage, Mapping):
            raise TypeError(
                f"passage {number} must be a dict with a 'text' key, got {type(passage).__name__}"
            )
        if not isinstance(passage.get("text"), str):
            raise ValueError(
                f"passage {number} has no 'text' string (got {type(passage.get('text')).__name__})"
            )


# -- LLM -------------------------------------------------------------------------------------------------
_CITATION = re.compile(r"\s?\[\s*((?:passage\s*)?\d+(?:\s*[,;]\s*(?:passage\s*)?\d+)*)\s*\]", re.IGNORECASE)


def parse_citations(text: str, n_passages: int) -> tuple[str, list[int]]:
    """Find the ``[n]`` / ``[1, 2]`` citation markers in ``text``; drop those to passages that do not exist.

    Args:
        text: the model's reply.
        n_passages: how many passages the model was given (valid citations are 1..n_passages).

    Returns:
        ``(text, citations)``: the text with invalid numbers removed from their markers (a marker left
        empty is removed whole), and the valid 1-based citations in order of first appearance.
    """
    citations: list[int] = []

    def keep(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= n_passages]
        for n in valid:
            if n not in citations:
                citations.append(n)
        if valid == numbers:
            return match.group(0)
        if not valid:
            return ""
        lead = " " if match.group(0).startswith(" ") else ""
        return lead + "".join(f"[{n}]" for n in valid)

    return _CITATION.sub(keep, text).strip(), citations


def _reply_text(reply: Any) -> str:
    """The text of a chat model's reply (a message, or a plain string from a Runnable)."""
    if isinstance(reply, str):
        return reply
    text = getattr(reply, "text", None)
    if isinstance(text, str):
        return text
    content = getattr(reply, "content", None)
    if isinstance(content, str):
        return content
    raise TypeError(f"the chat model returned {type(reply).__name__}, not a message or a string")


class LLMAnswerer:
    """Answers with a chat model prompted by ``prompts.ANSWER_PROMPT``.

    Args:
        chat_model: any langchain-core chat model (``BaseChatModel``) or Runnable taking a prompt value
            and returning a message or a string.
        backend: the name reported in ``Answer.backend``.
        no_answer_text: the reply when there are no passages (the model is not called then).

    Raises:
        TypeError: ``chat_model`` has no ``invoke``.
    """

    def __init__(self, chat_model: Any, *, backend: str = "llm", no_answer_text: str = NO_ANSWER) -> None:
        if not callable(getattr(chat_model, "invoke", None)):
            raise TypeError(
                f"chat_model must be a langchain-core chat model, got {type(chat_model).__name__}"
            )
        self.chat_model = chat_model
        self.backend = backend
        self.no_answer_text = no_answer_text

    def answer(self, question: str, passages: list[dict[str, Any]], *, intent: str | None = None) -> Answer:
        """Ask the chat model to answer ``question`` from ``passages``, citing them as ``[n]``.

        Args:
            question: the customer's question, PII-masked.
            passages: retrieved passages, best first; numbered from 1 in the prompt.
            intent: the intent router's label, passed to the model as a hint.

        Returns:
            The model's answer with only valid citations; ``grounded=False`` when it cites nothing.

        Raises:
            TypeError, ValueError: the question is not a non-empty string or a passage has no text.
            Whatever the chat model raises (``llm.LLMEndpointError`` for an unreachable endpoint).
        """
        _check_inputs(question, passages)
        _, removed = format_passages(passages)
        if not passages:
            return Answer(self.no_answer_text, [], False, self.backend, removed)
        prompt = ANSWER_PROMPT.invoke(answer_prompt_values(question, passages, intent=intent))
        text, citations = parse_citations(_reply_text(self.chat_model.invoke(prompt)), len(passages))
        if not text:
            return Answer(self.no_answer_text, [], False, self.backend, removed)
        return Answer(text, citations, bool(citations), self.backend, removed)


_PREAMBLE = re.compile(r"^(?:standalone\s+question|rewritten\s+question|question)\s*:\s*", re.IGNORECASE)


def llm_condense(
    chat_model: Any, history: list[tuple[str, str]], question: str, *, max_turns: int = 6
) -> str:
    """Rewrite a follow-up message as a standalone question, through a chat model.

    With no history the question is returned as it is and the model is not called. A reply that is
    empty or far longer than a question (``max(4 * len(question), 500)`` characters) is not trusted:
    the original question is returned.

    Args:
        chat_model: any langchain-core chat model or Runnable (see ``LLMAnswerer``).
        history: ``(role, text)`` pairs, oldest first; role ``customer``/``user``/``human`` or
            ``assistant``/``ai``/``bot``. Only the last ``max_turns`` are sent.
        question: the customer's latest message, PII-masked.
        max_turns: how many of the latest messages of ``history`` to send.

    Returns:
        The standalone question.

    Raises:
        TypeError, ValueError: the question is not a non-empty string or a history item is malformed.
    """
    values = condense_prompt_values(history, question, max_turns=max_turns)
    if not history:
        return question.strip()
    reply = _reply_text(chat_model.invoke(CONDENSE_PROMPT.invoke(values))).strip()
    lines = [line.strip() for line in reply.splitlines() if line.strip() and not line.strip().startswith("<")]
    condensed = _PREAMBLE.sub("", lines[0]).strip().strip("\"'“”") if lines else ""
    if not condensed or len(condensed) > max(4 * len(question), 500):
        log.warning("llm_condense: unusable reply (%d characters); keeping the question", len(reply))
        return question.strip()
    return condensed
