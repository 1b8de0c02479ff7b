"""``ask`` latency of ``fathom bench retrieval``: the assistant against a plain LangChain pipeline.

For each corpus size (the knowledge-base chunks plus filler passages, ``retrieval_data.corpus``), the
chunks are embedded once through the benchmark's embedding cache (reruns are fast) and indexed once:

``fathom-ask``
    ``Assistant.ask`` with the extractive answerer (mask, intent router, hybrid retrieval with intent
    ordering, hand-off rules, answer, session write in SQLite); needs the trained intent router.
``fathom-retrieve+answer``
    ``HybridRetriever.search`` + the same extractive answer (no router, no session).
``langchain-faiss+answer``
    LangChain's ``FAISS`` store (``IndexFlatL2`` + ``InMemoryDocstore``, built as LangChain's docs show,
    holding the same vectors) ``similarity_search`` + the same extractive answer: only retrieval differs.

Every implementation gets each question once, round-robin (``common.time_interleaved``), as a service
sees it: the question is new (its embedding is computed by the model, as for a real customer), while the
passages and their sentences were embedded before (``service.ingest`` prepares every chunk with
``ExtractiveAnswerer.prepare``). To get there, each implementation has its own embedder cache, a copy of
one filled by ``prepare`` with every passage the timed questions will retrieve (found with a separate
embedder, so the copies never hold a timed question) and with the intent labels.

A per-stage profile (mask, router, query embedding, cache write, FAISS, BM25, hybrid search, answer,
session I/O) follows, on the same questions, so a missed target says where the time goes.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apps.bench.common import Report, Timing, time_interleaved
from apps.bench.retrieval import ASK_P95_TARGET_MS, Progress, RetrievalBenchConfig, load_average
from apps.bench.retrieval_data import corpus
from apps.bench.retrieval_quality import qa_pairs
from apps.customer_service.extractive import ExtractiveAnswerer
from core.retrieval.bm25 import BM25Index
from core.retrieval.documents import DocumentRecord, DocumentStore
from core.retrieval.embeddings import Embedder, EmbeddingCache
from core.retrieval.hybrid import HybridRetriever, SearchHit, index_text
from core.retrieval.index import VectorIndex

IMPLS = ("fathom-ask", "fathom-retrieve+answer", "langchain-faiss+answer")
EMBED_BLOCK = 4096  # texts per embedding call: progress is cached block by block
PROFILE_QUESTIONS = 50
CANDIDATES = 8  # hits the assistant fetches before its intent ordering: max(2k, 8) with k=4


def bench_ask(
    report: Report,
    cfg: RetrievalBenchConfig,
    embedder: Embedder,
    router: Any,
    router_reason: str | None,
    say: Progress,
) -> None:
    """Time ``ask`` and the baselines at each ``cfg.ask_sizes``; adds rows, the profile and the target.

    Args:
        report: where rows and the target go.
        cfg: sizes and inputs.
        embedder: the benchmark's embedder (its on-disk cache holds the corpora).
        router: the trained intent router, or ``None`` (then ``fathom-ask`` is not timed).
        router_reason: why there is no router (the target's reason).
        say: progress callback.
    """
    from connectors.knowledge import load_path

    largest = max(cfg.ask_sizes)
    name = f"ask p95 at {largest} chunks (ms, extractive answers, no LLM)"
    try:
        questions = [
            p.question for p in qa_pairs(cfg, cfg.warmup_questions + cfg.ask_questions, cfg.seed + 1)
        ]
    except FileNotFoundError as exc:
        report.add_target(name, None, ASK_P95_TARGET_MS, "lower", reason=str(exc))
        return
    warm, timed = questions[: cfg.warmup_questions], questions[cfg.warmup_questions :]
    chunks = load_path(cfg.kb_dir).documents
    p95_at_largest = None
    with tempfile.TemporaryDirectory(prefix="fathom-bench-ask-") as tmp:
        folder = Path(tmp)
        embedders = {impl: with_cache(embedder, None) for impl in IMPLS}
        for size in sorted(cfg.ask_sizes):
            records = corpus(size, chunks, cfg.seed)
            p95 = _ask_case(report, records, embedder, embedders, router, warm, timed, folder, say)
            if size == largest:
                p95_at_largest = p95
        for e in embedders.values():
            if e.cache is not None:
                e.cache.close()
                e.cache = None
    if router is None:
        report.add_target(name, None, ASK_P95_TARGET_MS, "lower", reason=router_reason)
    else:
        report.add_target(name, p95_at_largest, ASK_P95_TARGET_MS, "lower")


def with_cache(embedder: Embedder, cache: EmbeddingCache | None) -> Embedder:
    """A shallow copy of ``embedder`` that shares its loaded model but has its own cache.

    Args:
        embedder: the embedder to copy.
        cache: the copy's cache; ``None`` for none (every text goes through the model).

    Returns:
        The copy.
    """
    twin = copy.copy(embedder)
    twin.cache = cache
    return twin


def embed_corpus(embedder: Embedder, texts: Sequence[str], say: Progress, label: str) -> np.ndarray:
    """Embed ``texts`` block by block (each block lands in the cache as soon as it is done).

    Args:
        embedder: the embedder (with a cache, so a rerun reads instead of encoding).
        texts: the texts.
        say: progress callback.
        label: prefix of the progress messages.

    Shapes:
        returns ``(len(texts), D)`` float32.
    """
    out = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    for start in range(0, len(texts), EMBED_BLOCK):
        stop = min(len(texts), start + EMBED_BLOCK)
        say(f"{label}: embedding passages {start}-{stop} of {len(texts)}")
        out[start:stop] = embedder.embed(texts[start:stop])
    return out


def langchain_store(records: Sequence[DocumentRecord], vectors: np.ndarray, embedder: Embedder) -> Any:
    """LangChain's FAISS store (IndexFlatL2 + InMemoryDocstore) holding ``vectors`` for ``records``.

    Args:
        records: the passages (their text is each document's ``page_content``).
        vectors: ``(N, D)`` embeddings of ``records``, row i for record i.
        embedder: embeds the queries of ``similarity_search`` (through ``FathomEmbeddings``).

    Returns:
        A ``langchain_community.vectorstores.FAISS``.
    """
    import faiss
    from langchain_core.documents import Document

    from core.retrieval.langchain import FathomEmbeddings

    with warnings.catch_warnings():  # langchain-community warns on import that it is being sunset
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_community.vectorstores import FAISS

    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    docs = {
        r.id: Document(page_content=r.text, metadata={**r.metadata, "id": r.id}, id=r.id) for r in records
    }
    return FAISS(
        FathomEmbeddings(embedder),
        index,
        InMemoryDocstore(docs),
        {i: r.id for i, r in enumerate(records)},
    )


def passages_of_hits(hits: Sequence[SearchHit]) -> list[dict[str, Any]]:
    """Hybrid hits as the answerer's passages (``{"id", "title", "source", "section", "score", "text"}``)."""
    return [
        {
            "id": h.doc_id,
            "title": h.metadata.get("title"),
            "source": h.metadata.get("source"),
            "section": h.metadata.get("section"),
            "score": float(h.score),
            "text": h.text,
        }
        for h in hits
    ]


def passages_of_documents(docs: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain documents as the answerer's passages (same keys as ``passages_of_hits``)."""
    return [
        {
            "id": d.metadata.get("id"),
            "title": d.metadata.get("title"),
            "source": d.metadata.get("source"),
            "section": d.metadata.get("section"),
            "score": 0.0,
            "text": d.page_content,
        }
        for d in docs
    ]


def _ask_case(
    report: Report,
    records: list[DocumentRecord],
    embedder: Embedder,
    embedders: dict[str, Embedder],
    router: Any,
    warm: list[str],
    timed: list[str],
    folder: Path,
    say: Progress,
) -> float | None:
    from apps.customer_service.assistant import Assistant, AssistantConfig
    from apps.customer_service.sessions import open_store

    size = len(records)
    case = f"ask/chunks={size}"
    texts = [index_text(r) for r in records]
    vectors = embed_corpus(embedder, texts, say, case)  # (N, D)
    say(f"{case}: building the indexes")
    start = time.perf_counter()
    store = DocumentStore(records)
    index = VectorIndex(embedder.dimension, "auto", model_id=embedder.model_id, expected_size=size)
    index.add(vectors, np.arange(size))
    bm25 = BM25Index().build(texts)
    build_s = time.perf_counter() - start
    lc = langchain_store(records, vectors, embedders["langchain-faiss+answer"])
    del vectors

    retrievers = {impl: HybridRetriever(store, embedders[impl], index, bm25) for impl in IMPLS[:2]}
    answerers = {impl: ExtractiveAnswerer(embedders[impl]) for impl in IMPLS}
    finder = HybridRetriever(store, embedder, index, bm25)  # finds what to warm, with its own cache

    say(f"{case}: embedding the sentences of the passages the questions retrieve")
    filled = folder / f"warm-{size}"
    for e in embedders.values():  # the caches of the previous size
        if e.cache is not None:
            e.cache.close()
    embedders[IMPLS[0]].cache = EmbeddingCache(filled)
    warmer = answerers[IMPLS[0]]
    first: list[dict[str, Any]] = []
    for question in [*warm, *timed]:
        passages = passages_of_hits(finder.search(question, CANDIDATES))
        docs = lc.similarity_search_by_vector(embedder.embed_query(question).tolist(), k=4)
        warmer.prepare(passages + passages_of_documents(docs))
        first = first or passages
    for label in getattr(router, "labels", []):  # the intent label is embedded with the question
        warmer.answer("warm-up", first, intent=label)
    embedders[IMPLS[0]].cache.close()
    for impl in IMPLS:
        copy = folder / f"{impl}-{size}"
        copy.mkdir()
        shutil.copy(filled / "embeddings.sqlite", copy / "embeddings.sqlite")
        embedders[impl].cache = EmbeddingCache(copy)

    sessions: list[str] = []
    assistant = None
    if router is not None:
        sessions_url = f"sqlite:///{folder}/sessions-{size}.db"
        assistant = Assistant(
            retrievers["fathom-ask"],
            router,
            open_store(sessions_url),
            answerers["fathom-ask"],
            AssistantConfig(),
        )

    def ask(question: str) -> None:
        assert assistant is not None
        sessions.append(assistant.ask(question).session_id)

    def retrieve_answer(question: str) -> None:
        hits = retrievers["fathom-retrieve+answer"].search(question, 4)
        answerers["fathom-retrieve+answer"].answer(question, passages_of_hits(hits))

    def baseline(question: str) -> None:
        docs = lc.similarity_search(question, k=4)
        answerers["langchain-faiss+answer"].answer(question, passages_of_documents(docs))

    runs: dict[str, Callable[[str], None]] = {
        "fathom-retrieve+answer": retrieve_answer,
        "langchain-faiss+answer": baseline,
    }
    if assistant is not None:
        runs = {"fathom-ask": ask, **runs}
    say(f"{case}: timing {', '.join(runs)} round-robin over {len(timed)} new questions")
    feeds = {impl: iter([*warm, *timed]) for impl in runs}
    load_before = load_average()
    timings = time_interleaved(
        {impl: _feeder(run, feeds[impl]) for impl, run in runs.items()},
        warmup=len(warm),
        min_rounds=len(timed),
        max_rounds=len(timed),
        budget_s=0.0,
    )
    ours = timings.get("fathom-ask")
    for impl, t in timings.items():
        row = report.add_result(case, impl, median_ms=round(t.median_ms, 3), p95_ms=round(t.p95_ms, 3))
        row["questions"] = len(t.samples_ms)
        row["max_ms"] = round(max(t.samples_ms), 3)
        # Calls over 5x the median: on a shared machine, a burst of other work shows up here in every row.
        row["slow_calls"] = sum(1 for ms in t.samples_ms if ms > 5 * t.median_ms)
        row["load_average"] = [load_before, load_average()]
        if impl.startswith("fathom"):
            row["index"] = {"kind": index.kind, **index.params}
            row["build_s"] = round(build_s, 2)
        else:
            row["index"] = "IndexFlatL2 (LangChain default)"
        if ours is not None and impl != "fathom-ask":
            row["ratio"] = round(ours.median_ms / t.median_ms, 4)

    say(f"{case}: profiling the stages of ask")
    plain = "fathom-retrieve+answer"  # ran every timed question: their embeddings are in its cache
    profile = timed[:PROFILE_QUESTIONS]
    scratch = folder / f"profile-{size}"
    _profile(
        report, case, profile, router, retrievers[plain], answerers[plain], lc, assistant, sessions, scratch
    )
    return None if ours is None else round(ours.p95_ms, 3)


def _feeder(run: Callable[[str], None], questions: Iterator[str]) -> Callable[[], None]:
    return lambda: run(next(questions))


def _time_each(fn: Callable[[str], Any], questions: Sequence[str]) -> Timing:
    samples = []
    for question in questions:
        start = time.perf_counter()
        fn(question)
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing(samples)


def _profile(
    report: Report,
    case: str,
    questions: list[str],
    router: Any,
    retriever: HybridRetriever,
    answerer: ExtractiveAnswerer,
    lc: Any,
    assistant: Any,
    sessions: list[str],
    folder: Path,
) -> None:
    """Each stage of ``ask`` timed on its own, cold where a new question is cold (see module docstring)."""
    from core.privacy import mask

    cold = with_cache(retriever.embedder, None)
    scratch = EmbeddingCache(folder)
    vectors = {q: cold.embed([q]) for q in questions}  # (1, D) each
    passages = {q: passages_of_hits(retriever.search(q, 4)) for q in questions}
    labels = {q: router.predict([q], top=1)[0].label if router is not None else None for q in questions}
    stages: dict[str, Callable[[str], Any]] = {
        "mask PII": lambda q: mask(q),
        "query embedding (model)": lambda q: cold.embed([q]),
        "query embedding (cache miss lookup + write)": lambda q: (
            scratch.get_many([EmbeddingCache.key("profile-miss", q)], cold.dimension),
            scratch.put_many({EmbeddingCache.key("profile", q): vectors[q][0]}),
        ),
        "FAISS search (top 20)": lambda q: retriever.index.search(vectors[q], retriever.candidates),
        "BM25 search (top 20)": lambda q: retriever.bm25.search(q, retriever.candidates),
        "hybrid search (query embedding cached)": lambda q: retriever.search(q, CANDIDATES),
        "answer composition (extractive)": lambda q: answerer.answer(q, passages[q], intent=labels[q]),
        "LangChain FAISS search (query embedding cached)": lambda q: lc.similarity_search(q, k=4),
    }
    if router is not None:
        stages["intent router"] = lambda q: router.predict([q], top=3)
    if assistant is not None and sessions:
        ids = iter(sessions * 2)
        stages["session load + save (SQLite)"] = lambda q: assistant.store.save(
            assistant.store.load(next(ids))
        )
    for stage, fn in stages.items():
        t = _time_each(fn, questions)
        row = report.add_result(f"{case}/profile", f"stage: {stage}", median_ms=round(t.median_ms, 3))
        row["p95_ms"] = round(t.p95_ms, 3)
    scratch.close()
