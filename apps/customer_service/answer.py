"""Answer backends of the customer-service assistant: a grounded extractive default and any chat LLM.

Every backend takes the customer's (PII-masked) question and the retrieved passages
(``{"id", "title", "source", "section", "score", "text"}``, best first) and returns an ``Answer`` whose
``citations`` are 1-based indexes into those passages.

- ``ExtractiveAnswerer`` needs no LLM: it answers only with verbatim sentences of the passages (after
  ``sanitize_passage``), chosen by embedding similarity to the question with maximal marginal relevance,
  and says it cannot answer when no passage is relevant enough.
- ``LLMAnswerer`` prompts any langchain-core chat model with ``prompts.ANSWER_PROMPT`` and keeps only the
  citations that point at a passage it was given.
- ``llm_condense`` turns a follow-up message into a standalone question through a chat model.

>>> from apps.customer_service.service import search
>>> question = "how do I activate my card"
>>> print(ExtractiveAnswerer().answer(question, search(question)).text)
1. Open the app and go to Cards.
2. Tap the card that shows Waiting for activation.
...
The card status changes to Active. [3]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from apps.customer_service.prompts import (
    ANSWER_PROMPT,
    CONDENSE_PROMPT,
    answer_prompt_values,
    condense_prompt_values,
    format_passages,
    parse_lines,
    sanitize_passage,
    split_sentences,
)
from core.retrieval.documents import DocumentRecord
from core.retrieval.embeddings import Embedder
from core.retrieval.hybrid import index_text

log = logging.getLogger(__name__)

__all__ = [
    "NO_ANSWER",
    "Answer",
    "Answerer",
    "ExtractiveAnswerer",
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


# -- extractive ------------------------------------------------------------------------------------------
# A sentence that starts like this leans on the one before it ("It is free ...", "This is usually ...").
_ANAPHORA = re.compile(
    r"^(?:this|that|these|those|it|its|they|them|their|then|after that|otherwise|if so|if not|also|"
    r"however|but|so|instead|in that case|once (?:it|this|that|they))\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_POINTER = re.compile(r"^(?:if [^,]*,\s*)?(?:please\s+)?(?:see|read)\s+[\"“]", re.IGNORECASE)
_QUOTED = re.compile(r"\"[^\"]{3,}\"|“[^”]{3,}”")


@dataclass
class _Unit:
    """A piece of a passage the extractive answerer can pick: a sentence, a whole list, or a table row.

    ``lines`` are verbatim text; ``header`` (table rows only) the table's header and separator lines.
    """

    passage: int  # 0-based
    block: int  # paragraph, list or table number within the passage
    position: int  # order within the passage
    kind: str  # "sentence" | "list" | "row"
    lines: list[str]
    embed_text: str  # what gets embedded: the text without quoted titles; a table row as its cells
    lead: int | None = None  # unit (index into the unit list) that must come with this one
    header: tuple[str, ...] = ()
    answers_lead: bool = False  # the lead is a question this unit answers: it inherits its relevance

    @property
    def standalone(self) -> bool:
        """Whether the unit may be quoted on its own. A sentence ending in ":" introduces what follows, a
        question ("Still waiting for your card?") answers nothing, and a bare pointer to another article
        ("See "..." for ...") is not an answer: these come only as the lead of another unit."""
        if self.kind != "sentence":
            return True
        sentence = self.lines[0].rstrip()
        return not (sentence.endswith((":", "?")) or _POINTER.match(sentence) or self.words <= 2)

    @property
    def words(self) -> int:
        return sum(len(_WORD.findall(_MARKER.sub("", line))) for line in self.lines)

    @property
    def count(self) -> int:
        """Sentences this unit counts as against the answer's budget."""
        return len(self.lines)


def _cells(row: str) -> str:
    return ", ".join(cell.strip() for cell in row.strip().strip("|").split("|") if cell.strip())


def _unquoted(text: str) -> str:
    # A pointer to another article ('See "How do I ...?"') must not look like an answer to that question.
    return _QUOTED.sub(" ", text)


def _units(passage: int, text: str, max_list_words: int) -> list[_Unit]:
    """Split one sanitised passage into units (see ``_Unit``), in reading order."""
    units: list[_Unit] = []
    lines = parse_lines(text)
    block = 0
    i = 0
    last_paragraph_end: int | None = None  # index of the last sentence unit of the previous paragraph
    while i < len(lines):
        line = lines[i]
        if line.kind == "blank":
            i += 1
            continue
        block += 1
        if line.kind == "heading":
            last_paragraph_end = None
            i += 1
        elif line.kind == "text":
            first = len(units)
            for sentence in split_sentences(line.text):
                previous = units[-1] if len(units) > first else None
                # "Still waiting for your card? Standard delivery takes ...": the answer to a question in
                # the text comes with the question, and is as relevant as it.
                asked = previous is not None and (
                    previous.lines[0].rstrip().endswith("?") or previous.words <= 2  # "No. We do not ..."
                )
                lead = len(units) - 1 if asked or (previous and _ANAPHORA.match(sentence)) else None
                units.append(
                    _Unit(
                        passage,
                        block,
                        len(units),
                        "sentence",
                        [sentence],
                        _unquoted(sentence),
                        lead,
                        (),
                        asked,
                    )
                )
            last_paragraph_end = len(units) - 1 if len(units) > first else None
            i += 1
        elif line.kind == "item":
            items: list[str] = []
            while i < len(lines) and lines[i].kind == "item":
                items.append(lines[i].text.strip())
                i += 1
            # "If both show Completed ...:" introduces the list: it comes with it.
            lead = None
            if last_paragraph_end is not None and units[last_paragraph_end].lines[-1].rstrip().endswith(":"):
                lead = last_paragraph_end
            whole = _Unit(passage, block, len(units), "list", items, _unquoted(" ".join(items)), lead)
            if whole.words <= max_list_words:
                units.append(whole)
            else:  # too long to quote whole: each item on its own, each with the lead
                for item in items:
                    units.append(_Unit(passage, block, len(units), "list", [item], _unquoted(item), lead))
            last_paragraph_end = None
        else:  # table: header, separator, rows
            rows: list[str] = []
            while i < len(lines) and lines[i].kind == "row":
                rows.append(lines[i].text.strip())
                i += 1
            header: tuple[str, ...] = ()
            body = rows
            if len(rows) >= 3 and set(rows[1]) <= set("|:- "):
                header, body = (rows[0], rows[1]), rows[2:]
            for row in body:
                text = _cells(row)
                units.append(_Unit(passage, block, len(units), "row", [row], text, header=header))
            last_paragraph_end = None
    return units


def _passage_text(passage: Mapping[str, Any], clean: str) -> str:
    """The passage as embedded: the retriever's own chunk text (title - section, then the text), so that a
    shared embedder finds it in its cache; ``""`` when nothing is left after sanitising."""
    if not clean.strip():
        return ""
    metadata = {key: passage.get(key) for key in ("title", "section") if isinstance(passage.get(key), str)}
    return index_text(DocumentRecord(id=str(passage.get("id") or "passage"), text=clean, metadata=metadata))


class ExtractiveAnswerer:
    """A grounded answer made only of verbatim sentences of the passages, with citation markers.

    Each passage (after ``sanitize_passage``) is cut into units: sentences, whole lists (steps stay
    together, with the sentence ending in ":" that introduces them) and table rows (with the table's
    header). A unit's relevance mixes two cosine similarities to the question, with the shipped MiniLM
    embeddings: of the unit itself (``unit_weight``) and of its whole passage (the rest); a sentence that
    answers a question in the text ("Still waiting for your card? Standard delivery takes ...") is as
    relevant as the question. Units are picked by maximal marginal relevance (``diversity``, plus a small
    ``coherence`` bonus for passages already quoted) while they stay within ``relevance_margin`` of the
    best unit and inside the budget (``max_sentences``, ``max_words``); a sentence starting with "It",
    "This", ... brings the sentence before it. Questions, bare pointers to other articles and sentences
    ending in ":" are never quoted alone. The answer
    groups the picked units by passage, most relevant passage first, each in reading order and ending
    with its ``[n]``.

    When the best passage's similarity is below ``min_relevance`` the answer is ``no_answer_text`` with
    ``grounded=False``. The question is only ever used as a search query (after ``sanitize_passage``),
    so instructions inside it cannot change what is answered.

    Args:
        embedder: the ``Embedder`` to use (pass one to share it); default the shipped MiniLM, loaded on
            first use.
        max_sentences: most sentences, list items and table rows in one answer (the best unit, with what
            it needs, is always kept).
        max_words: most words in one answer (same exception).
        min_relevance: least cosine similarity between the question and the best passage.
        relevance_margin: units scoring more than this below the best unit are left out.
        diversity: MMR weight of redundancy with the units already picked (0: pure relevance).
        unit_weight: weight of the unit's own similarity against its passage's.
        coherence: score bonus of units from a passage already quoted.
        intent_weight: weight of the intent label's embedding added to the question's.
        no_answer_text: the reply when nothing is relevant enough.

    Raises:
        ValueError: a parameter is out of range.
    """

    backend = "extractive"

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        max_sentences: int = 5,
        max_words: int = 120,
        min_relevance: float = 0.35,
        relevance_margin: float = 0.1,
        diversity: float = 0.3,
        unit_weight: float = 0.6,
        coherence: float = 0.03,
        intent_weight: float = 0.5,
        no_answer_text: str = NO_ANSWER,
    ) -> None:
        if max_sentences < 1 or max_words < 1:
            raise ValueError(f"max_sentences and max_words must be >= 1, got {max_sentences}, {max_words}")
        if not -1.0 <= min_relevance <= 1.0:
            raise ValueError(f"min_relevance must be a cosine similarity in [-1, 1], got {min_relevance}")
        unit_intervals = {
            "relevance_margin": relevance_margin,
            "diversity": diversity,
            "unit_weight": unit_weight,
            "coherence": coherence,
            "intent_weight": intent_weight,
        }
        for name, value in unit_intervals.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not isinstance(no_answer_text, str) or not no_answer_text.strip():
            raise ValueError("no_answer_text must be a non-empty string")
        self._embedder = embedder
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.min_relevance = min_relevance
        self.relevance_margin = relevance_margin
        self.diversity = diversity
        self.unit_weight = unit_weight
        self.coherence = coherence
        self.intent_weight = intent_weight
        self.no_answer_text = no_answer_text

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # loaded on first use: constructing the answerer stays cheap
            self._embedder = Embedder()
        return self._embedder

    def _no_answer(self, removed: list[str]) -> Answer:
        return Answer(self.no_answer_text, [], False, self.backend, removed)

    def answer(self, question: str, passages: list[dict[str, Any]], *, intent: str | None = None) -> Answer:
        """Answer ``question`` from ``passages`` (best first) with verbatim sentences of them.

        Args:
            question: the customer's question, PII-masked.
            passages: retrieved passages, dicts with ``text`` (and ``title``, ``section``).
            intent: the intent router's label (e.g. ``card_arrival``); it nudges which sentences fit.

        Returns:
            The answer; ``grounded=False`` and no citations when no passage is relevant enough.

        Raises:
            TypeError, ValueError: the question is not a non-empty string or a passage has no text.
        """
        _check_inputs(question, passages)
        # The question is only searched with: drop its injected sentences, keep what the customer asked.
        query, _ = sanitize_passage(question, drop_following=False)
        removed: list[str] = []
        units: list[_Unit] = []
        passage_texts: list[str] = []
        for index, passage in enumerate(passages):
            clean, dropped = sanitize_passage(passage["text"])
            removed.extend(f"[{index + 1}] {piece}" for piece in dropped)
            found = _units(index, clean, max_list_words=int(self.max_words * 0.75))
            offset = len(units)
            for unit in found:
                unit.lead = unit.lead + offset if unit.lead is not None else None
            units.extend(found)
            passage_texts.append(_passage_text(passage, clean))
        if not query.strip() or not units:
            return self._no_answer(removed)

        n_p, n_u = len(passage_texts), len(units)
        texts = [query.strip(), *passage_texts, *(u.embed_text for u in units)]
        if intent:
            texts.append(intent.replace("_", " ").strip(" ?").lower())
        vectors = self.embedder.embed(texts)  # (1 + P + U [+ 1], D)
        q = vectors[0]
        if intent:
            q = q + self.intent_weight * vectors[-1]
            q = q / np.linalg.norm(q)
        passage_sim = vectors[1 : 1 + n_p] @ q  # (P,)
        passage_sim[[not t for t in passage_texts]] = -1.0  # everything in it was injected
        if float(passage_sim.max()) < self.min_relevance:
            log.info("extractive: best passage similarity %.3f < %.3f", passage_sim.max(), self.min_relevance)
            return self._no_answer(removed)
        unit_vecs = vectors[1 + n_p : 1 + n_p + n_u]  # (U, D)
        of_passage = passage_sim[[u.passage for u in units]]  # (U,)
        relevance = self.unit_weight * (unit_vecs @ q) + (1.0 - self.unit_weight) * of_passage  # (U,)
        for i, unit in enumerate(units):
            if unit.answers_lead and unit.lead is not None:
                relevance[i] = max(relevance[i], relevance[unit.lead])
        chosen = self._select(units, relevance, unit_vecs)
        if not chosen:  # only questions, pointers and list leads: nothing that answers
            return self._no_answer(removed)
        text, citations = self._render(units, chosen, relevance)
        return Answer(text, citations, True, self.backend, removed)

    def _select(self, units: list[_Unit], relevance: np.ndarray, unit_vecs: np.ndarray) -> list[int]:
        """Indexes of the picked units, leads included (MMR within the budget)."""
        selectable = [i for i, unit in enumerate(units) if unit.standalone]
        if not selectable:
            return []
        floor = float(relevance[selectable].max()) - self.relevance_margin
        similarity = unit_vecs @ unit_vecs.T  # (U, U)
        passage_of = np.array([u.passage for u in units])  # (U,)
        chosen: list[int] = []
        seen_text: set[str] = set()
        candidates = {i for i in selectable if relevance[i] >= floor}
        sentences = words = 0
        while candidates:
            if chosen:
                redundancy = similarity[:, chosen].max(axis=1)
                score = (1 - self.diversity) * relevance - self.diversity * redundancy
                # Sentences from a passage already quoted read as one answer rather than a collage.
                score = score + self.coherence * np.isin(passage_of, [units[i].passage for i in chosen])
            else:
                score = relevance
            pick = max(candidates, key=lambda i: (score[i], -i))
            candidates.discard(pick)
            # The unit and what it leans on (its lead, the lead's lead, ...), not yet chosen.
            group = [pick]
            while (lead := units[group[-1]].lead) is not None and lead not in chosen and lead not in group:
                group.append(lead)
            if any(" ".join(units[i].lines).casefold() in seen_text for i in group if i not in chosen):
                continue  # the same sentence from another passage is already in
            add_sentences = sum(units[i].count for i in group)
            add_words = sum(units[i].words for i in group)
            if chosen and (
                sentences + add_sentences > self.max_sentences or words + add_words > self.max_words
            ):
                continue
            for i in group:
                chosen.append(i)
                candidates.discard(i)
                seen_text.add(" ".join(units[i].lines).casefold())
            sentences += add_sentences
            words += add_words
            if sentences >= self.max_sentences or words >= self.max_words:
                break
        return chosen

    @staticmethod
    def _render(units: list[_Unit], chosen: list[int], relevance: np.ndarray) -> tuple[str, list[int]]:
        """Group the picked units by passage (most relevant passage first), in reading order, and cite."""
        by_passage: dict[int, list[int]] = {}
        for i in chosen:
            by_passage.setdefault(units[i].passage, []).append(i)
        order = sorted(by_passage, key=lambda p: -max(float(relevance[i]) for i in by_passage[p]))
        groups: list[str] = []
        for passage in order:
            blocks: list[list[str]] = []  # each block: lines
            last_block = None
            for i in sorted(by_passage[passage], key=lambda i: units[i].position):
                unit = units[i]
                if unit.block != last_block:
                    blocks.append(list(unit.header) if unit.kind == "row" else [])
                    last_block = unit.block
                if unit.kind == "sentence" and blocks[-1]:
                    blocks[-1][-1] += " " + unit.lines[0]
                else:
                    blocks[-1].extend(unit.lines)
            marker = f"[{passage + 1}]"
            if blocks[-1][-1].startswith("|"):
                blocks.append([marker])  # a marker after a table row would become a cell
            else:
                blocks[-1][-1] += f" {marker}"
            groups.append("\n\n".join("\n".join(block) for block in blocks))
        return "\n\n".join(groups), [p + 1 for p in order]


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
