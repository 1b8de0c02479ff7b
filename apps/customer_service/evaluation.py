"""Retrieval quality on question -> answer pairs: recall@k and MRR, and the BANKING77 -> KB pair set.

A pair is a question plus what counts as its answer, in one of two forms (the CSV's answer column):

- ``answer_id``: passage ids or source files (``card-delivery-times.md`` or its stem
  ``card-delivery-times``). A hit matches when its id equals one of them, or its source file's name or
  stem does. Several keys in one cell are separated by ``|``; any of them counts.
- ``answer``: the expected answer text. A hit matches when its passage contains the normalised
  answer (case-folded, punctuation dropped, whitespace collapsed) or the answer contains the passage.

Metrics are article-level in the sense of "first relevant hit": a question's rank is the first rank at
which a matching passage appears (1-based), and recall@k is the share of questions ranked <= k. MRR
averages 1 / rank over all questions (0 when no matching passage is among the hits searched, i.e.
MRR@max(ks)).

``banking77_kb_pairs`` builds the real pair set: each BANKING77 question is answered by the knowledge-base
article(s) whose front matter ``intents`` contain the question's label.

>>> pairs = read_qa_csv("qa.csv")
>>> evaluate_qa(pairs, open_index())
{'recall_at_1': 0.61, 'recall_at_5': 0.89, 'recall_at_10': 0.94, 'mrr': 0.73, 'n': 1000}
"""

from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from apps.customer_service import KNOWLEDGE_BASE
from apps.customer_service.intents import read_intent_csv

AnswerKind = Literal["answer_id", "answer"]
ANSWER_COLUMNS: tuple[AnswerKind, ...] = ("answer_id", "answer")
ID_SEPARATOR = "|"
DEFAULT_KS = (1, 5, 10)
_NOT_WORD = re.compile(r"[^\w£$€%]+")


@dataclass(frozen=True)
class QAPair:
    """One question and what counts as its answer.

    Args:
        question: the question, as a customer would ask it.
        answers: answer keys (``kind="answer_id"``: passage ids or source file names/stems) or expected
            answer texts (``kind="answer"``); a hit matching any of them counts.
        kind: how ``answers`` are matched (see the module docstring).
        label: the question's intent label, when known (used to stratify samples).

    Raises:
        ValueError: the question or every answer is empty, or ``kind`` is unknown.
    """

    question: str
    answers: tuple[str, ...]
    kind: AnswerKind = "answer_id"
    label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ANSWER_COLUMNS:
            raise ValueError(f"QAPair kind must be one of {', '.join(ANSWER_COLUMNS)}, got {self.kind!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("QAPair question is empty")
        if isinstance(self.answers, str) or not all(isinstance(a, str) for a in self.answers):
            raise ValueError(f"QAPair answers must be a tuple of strings, got {self.answers!r}")
        if not any(a.strip() for a in self.answers):
            raise ValueError(f"QAPair for {self.question!r} has no answer")
        if self.kind == "answer" and not any(normalise(a) for a in self.answers):
            raise ValueError(f"QAPair for {self.question!r}: the answer has no letters or digits")


def normalise(text: str) -> str:
    """Case-folded words of ``text`` separated by single spaces (punctuation and markup dropped)."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def _hit_fields(hit: Any) -> tuple[str, str, Mapping[str, Any]]:
    """``(id, text, metadata)`` of a ``SearchHit`` or a LangChain ``Document``."""
    if hasattr(hit, "page_content"):  # a LangChain Document
        metadata = hit.metadata or {}
        return str(metadata.get("id") or hit.id or ""), hit.page_content, metadata
    if hasattr(hit, "doc_id") and hasattr(hit, "text"):
        return hit.doc_id, hit.text, hit.metadata or {}
    raise TypeError(f"a hit must be a SearchHit or a LangChain Document, got {type(hit).__name__}")


def hit_matches(hit: Any, pair: QAPair) -> bool:
    """Whether one retrieved passage answers ``pair`` (see the module docstring for the rules).

    Args:
        hit: a ``core.retrieval.SearchHit`` or a LangChain ``Document``.
        pair: the question and its answers.

    Returns:
        True when the hit matches any of the pair's answers.

    Raises:
        TypeError: ``hit`` is neither kind of object.
    """
    doc_id, text, metadata = _hit_fields(hit)
    if pair.kind == "answer_id":
        keys = {doc_id}
        source = metadata.get("source")
        if isinstance(source, str) and source:
            keys |= {Path(source).name, Path(source).stem}
        return any(answer.strip() in keys for answer in pair.answers)
    passage = normalise(text)
    if not passage:
        return False
    return any(
        (want := normalise(answer)) and (want in passage or passage in want) for answer in pair.answers
    )


def first_match_rank(hits: Sequence[Any], pair: QAPair) -> int | None:
    """1-based rank of the first hit that matches ``pair``, ``None`` when none does."""
    for rank, hit in enumerate(hits, start=1):
        if hit_matches(hit, pair):
            return rank
    return None


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return ks


def metrics_from_ranks(ranks: Sequence[int | None], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k for each k and MRR from each question's first matching rank.

    Args:
        ranks: per question, the 1-based rank of its first matching hit, or ``None`` for no match.
        ks: cut-offs for recall.

    Returns:
        ``{"recall_at_<k>": ..., "mrr": ..., "n": len(ranks)}``.

    Raises:
        ValueError: no ranks, a rank below 1, or a bad ``ks``.
    """
    ks = _check_ks(ks)
    if not ranks:
        raise ValueError("no questions to evaluate")
    bad = [r for r in ranks if r is not None and (not isinstance(r, int) or r < 1)]
    if bad:
        raise ValueError(f"ranks must be integers >= 1 or None, got {bad[0]!r}")
    n = len(ranks)
    out: dict[str, float] = {
        f"recall_at_{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in sorted(set(ks))
    }
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n
    out["n"] = n
    return out


Search = Callable[[str, int], Sequence[Any]]


def evaluate_qa(pairs: Sequence[QAPair], retriever: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k and MRR of ``retriever`` on question -> answer pairs.

    Args:
        pairs: the questions and their answers.
        retriever: a LangChain vector store (``similarity_search(query, k=k)``), an object with
            ``search(query, k)`` (``HybridRetriever``), or a callable ``(query, k) -> hits``; hits are
            ``SearchHit``s or LangChain ``Document``s, best first.
        ks: recall cut-offs; ``max(ks)`` hits are retrieved per question.

    Returns:
        ``{"recall_at_1", "recall_at_5", "recall_at_10", "mrr", "n"}`` for the default ``ks``.

    Raises:
        ValueError: no pairs or a bad ``ks``.
        TypeError: ``retriever`` offers no way to search.
    """
    ks = _check_ks(ks)
    if not pairs:
        raise ValueError("no question/answer pairs to evaluate")
    search = as_search(retriever)
    depth = max(ks)
    embedder = getattr(retriever, "embedder", None)  # HybridRetriever: its Embedder caches every vector
    if callable(getattr(embedder, "embed", None)):
        embedder.embed([p.question for p in pairs])  # one batched call; each search then reads the cache
    return metrics_from_ranks([first_match_rank(search(p.question, depth), p) for p in pairs], ks)


def as_search(retriever: Any) -> Search:
    """A ``(query, k) -> hits`` function over ``retriever`` (see ``evaluate_qa``)."""
    # A LangChain vector store also has search(query, search_type): similarity_search is its k-NN call.
    if callable(getattr(retriever, "similarity_search", None)):
        return lambda query, k: retriever.similarity_search(query, k=k)
    if callable(getattr(retriever, "search", None)):
        return lambda query, k: retriever.search(query, k)
    if callable(retriever):
        return retriever
    raise TypeError(
        f"cannot search with {type(retriever).__name__}: need search(query, k), "
        "similarity_search(query, k=k) or a callable (query, k) -> hits"
    )


# -- CSV ----------------------------------------------------------------------------------------------------
def read_qa_csv(path: str | Path) -> list[QAPair]:
    """Question -> answer pairs from a CSV with a ``question`` column and ONE of ``answer_id``/``answer``.

    ``answer_id`` cells may hold several keys separated by ``|`` (any of them counts).

    Args:
        path: the CSV file (UTF-8, header row first).

    Returns:
        The pairs, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the ``question`` column is missing, neither or both answer columns are there, a row
            has an empty question or answer (the error names the line), or there are no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    pairs: list[QAPair] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "question" not in columns:
            raise ValueError(
                f"{path}: no 'question' column (found {', '.join(columns) or 'none'}); "
                "expected question plus answer_id or answer"
            )
        present = [c for c in ANSWER_COLUMNS if c in columns]
        if len(present) != 1:
            which = "both answer_id and answer" if present else "no answer_id or answer column"
            raise ValueError(f"{path}: {which}; give exactly one answer column (answer_id or answer)")
        kind = present[0]
        reader.fieldnames = columns
        for line, row in enumerate(reader, start=2):
            question = (row.get("question") or "").strip()
            cell = (row.get(kind) or "").strip()
            if not question:
                raise ValueError(f"{path}:{line}: empty question")
            if not cell:
                raise ValueError(f"{path}:{line}: empty {kind}")
            if kind == "answer_id":
                answers = tuple(a.strip() for a in cell.split(ID_SEPARATOR) if a.strip())
            else:
                if not normalise(cell):
                    raise ValueError(f"{path}:{line}: the answer has no letters or digits")
                answers = (cell,)
            if not answers:
                raise ValueError(f"{path}:{line}: empty {kind}")
            pairs.append(QAPair(question, answers, kind))
    if not pairs:
        raise ValueError(f"{path}: no rows")
    return pairs


def write_qa_csv(pairs: Iterable[QAPair], path: str | Path) -> Path:
    """Write pairs in the form ``read_qa_csv`` reads (all pairs must share one kind).

    Args:
        pairs: the pairs.
        path: the CSV to write (its folder is created).

    Returns:
        ``path``.

    Raises:
        ValueError: no pairs, pairs of both kinds, or an ``answer_id`` key containing ``|``.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs to write")
    kinds = {p.kind for p in pairs}
    if len(kinds) != 1:
        raise ValueError("pairs mix answer_id and answer kinds: write them to separate files")
    kind = kinds.pop()
    rows = []
    for p in pairs:
        if kind == "answer_id" and any(ID_SEPARATOR in a for a in p.answers):
            raise ValueError(f"answer id in {p.answers!r} contains the separator {ID_SEPARATOR!r}")
        if kind == "answer" and len(p.answers) != 1:
            raise ValueError(f"an answer-text pair has one answer, got {len(p.answers)} for {p.question!r}")
        rows.append((p.question, ID_SEPARATOR.join(p.answers)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", kind])
        writer.writerows(rows)
    return path


# -- the BANKING77 -> knowledge-base pair set ---------------------------------------------------------------
def articles_by_intent(kb_dir: str | Path = KNOWLEDGE_BASE) -> dict[str, list[str]]:
    """For each intent label, the file names of the Markdown articles whose front matter lists it.

    Raises:
        FileNotFoundError: ``kb_dir`` is not a folder or holds no ``.md`` file.
        ValueError: an article has no front matter or its ``intents`` is not a list of labels.
    """
    kb_dir = Path(kb_dir)
    paths = sorted(kb_dir.glob("*.md")) if kb_dir.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"{kb_dir} holds no Markdown articles")
    by_intent: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if not text.startswith("---\n") or text.count("---\n") < 2:
            raise ValueError(f"{path}: no YAML front matter (--- ... ---)")
        front = yaml.safe_load(text.split("---\n", 2)[1]) or {}
        intents = front.get("intents") if isinstance(front, dict) else None
        if not isinstance(intents, list) or not all(isinstance(i, str) for i in intents):
            raise ValueError(f"{path}: front matter 'intents' must be a list of labels, got {intents!r}")
        for intent in intents:
            by_intent[intent].append(path.name)
    return dict(by_intent)


def banking77_kb_pairs(
    csv_path: str | Path,
    kb_dir: str | Path = KNOWLEDGE_BASE,
    *,
    sample: int | None = None,
    seed: int = 0,
) -> list[QAPair]:
    """BANKING77 questions paired with the knowledge-base article(s) written for their intent.

    Args:
        csv_path: a BANKING77 ``text,category`` CSV (e.g. ``../shared/data/banking77/train.csv``).
        kb_dir: folder of Markdown articles with ``intents`` front matter.
        sample: keep this many questions, stratified over labels (round-robin over each label's
            shuffled questions); ``None``: all.
        seed: seed of the sample's shuffles (the same seed gives the same sample).

    Returns:
        ``answer_id`` pairs whose answers are article file names, with the label set.

    Raises:
        FileNotFoundError: the CSV or the articles are missing.
        ValueError: the CSV lacks ``text``/``category``, has an empty cell, or a label has no article.
    """
    csv_path = Path(csv_path)
    texts, labels = read_intent_csv(csv_path)
    articles = articles_by_intent(kb_dir)
    rows = list(zip(texts, labels, strict=True))
    uncovered = sorted({label for _, label in rows} - set(articles))
    if uncovered:
        raise ValueError(
            f"{len(uncovered)} label(s) of {csv_path.name} have no article in {kb_dir}: "
            + ", ".join(uncovered[:5])
        )
    pairs = [QAPair(text, tuple(articles[label]), "answer_id", label) for text, label in rows]
    return pairs if sample is None else sample_pairs(pairs, sample, seed)


def sample_pairs(pairs: Sequence[QAPair], size: int, seed: int = 0) -> list[QAPair]:
    """A seeded sample stratified over labels: round-robin over each label's shuffled pairs.

    Args:
        pairs: the pairs (those without a label form one group).
        size: how many to keep (all of them when there are fewer).
        seed: seed of the shuffles.

    Returns:
        At most ``size`` pairs; every label is represented once before any is represented twice.

    Raises:
        ValueError: ``size`` < 1.
    """
    if size < 1:
        raise ValueError(f"sample must be >= 1, got {size}")
    by_label: dict[str, list[QAPair]] = defaultdict(list)
    for pair in pairs:
        by_label[pair.label or ""].append(pair)
    rng = random.Random(seed)
    pools = [rng.sample(group, len(group)) for _, group in sorted(by_label.items())]
    out: list[QAPair] = []
    depth = 0
    while len(out) < min(size, len(pairs)):
        for pool in pools:
            if depth < len(pool) and len(out) < size:
                out.append(pool[depth])
        depth += 1
    return out
