"""The extractive answer backend: a grounded answer made only of verbatim knowledge-base sentences.

``ExtractiveAnswerer`` needs no LLM: it answers only with whole sentences of the passages (after
``sanitize_passage``), chosen by embedding similarity to the question with maximal marginal
relevance, keeps step lists with their lead sentence and table rows with their header, ends each
passage's group with its citation marker, and says it cannot answer when no passage is relevant
enough.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from apps.customer_service.answer import NO_ANSWER, Answer, _check_inputs
from apps.customer_service.prompts import (
    parse_lines,
    sanitize_passage,
    split_sentences,
)
from core.retrieval.documents import DocumentRecord
from core.retrieval.embeddings import Embedder
from core.retrieval.hybrid import index_text

log = logging.getLogger(__name__)


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

    def prepare(self, passages: Sequence[Mapping[str, Any]]) -> int:
        """Embed the passages and their sentences ahead of time, into the embedder's on-disk cache.

        Answering from a prepared passage then costs no encoder time (only the question is embedded);
        ``service.ingest`` prepares every chunk it indexes.

        Args:
            passages: dicts with ``text`` (and ``title``, ``section``), as the retriever returns them.

        Returns:
            How many texts were embedded (or found in the cache).
        """
        texts: list[str] = []
        for index, passage in enumerate(passages):
            clean, _ = sanitize_passage(passage["text"])
            texts.append(_passage_text(passage, clean))
            texts.extend(
                u.embed_text for u in _units(index, clean, max_list_words=int(self.max_words * 0.75))
            )
        texts = [t for t in texts if t.strip()]
        if texts:
            self.embedder.embed(texts)
        return len(texts)

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
