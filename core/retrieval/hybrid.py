"""Hybrid retrieval: dense (embeddings + FAISS) and BM25, fused by reciprocal rank fusion.

RRF (Cormack et al., 2009) scores a document ``sum_r 1 / (rrf_k + rank_r)`` over the rankings
``r`` it appears in (ranks from 1). It needs no score calibration between BM25 and cosine,
which live on unrelated scales. An optional cross-encoder then re-scores the fused candidates.

A saved retriever is one folder::

    retrieval.json      manifest: embedding model id, dimension, counts, rrf_k, created
    documents.jsonl     DocumentStore
    index/              VectorIndex (index.faiss, ids.npy, index.json)
    bm25/               BM25Index
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.retrieval.bm25 import BM25Index
from core.retrieval.documents import DocumentRecord, DocumentStore
from core.retrieval.embeddings import Embedder
from core.retrieval.index import IndexKind, VectorIndex

log = logging.getLogger(__name__)

MANIFEST = "retrieval.json"
DEFAULT_RRF_K = 60


def index_text(record: DocumentRecord) -> str:
    """What gets embedded and BM25-indexed for a chunk: its title and section, then its text.

    A chunk cut from the middle of an article ("1. Open the app and tap Freeze") rarely repeats
    the article's subject ("I have lost my card"); the header puts it back (contextual chunk
    headers). Search results still return the chunk's own text.
    """
    title = str(record.metadata.get("title") or "").strip()
    section = str(record.metadata.get("section") or "").strip()
    if section.startswith(title):  # a heading path that already starts with the title
        title = ""
    header = " - ".join(part for part in (title, section) if part)
    return f"{header}\n{record.text}" if header else record.text


class Reranker(Protocol):
    """What reranking needs: ``sentence_transformers.CrossEncoder`` satisfies it."""

    def predict(self, sentences: list[tuple[str, str]], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class SearchHit:
    """One result of ``HybridRetriever.search``.

    Args:
        doc_id: the document's id.
        score: cross-encoder score when reranked, else the RRF score (higher is better).
        text: the passage.
        metadata: the document's metadata.
        dense_rank: 1-based rank in the dense results, ``None`` if not among them.
        bm25_rank: 1-based rank in the BM25 results, ``None`` if not among them.
        rrf_score: the fused score (kept when ``score`` is the reranker's).
        dense_score: the embedding similarity (cosine for the normalised default embeddings), ``None``
            when the document came from BM25 only; a query-independent scale for confidence checks.
    """

    doc_id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    dense_rank: int | None = None
    bm25_rank: int | None = None
    rrf_score: float = 0.0
    dense_score: float | None = None


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], k: int = DEFAULT_RRF_K
) -> list[tuple[Any, float]]:
    """Fuse rankings (best first) into one list of ``(item, score)``, best first.

    Args:
        rankings: each a sequence of distinct items, best first.
        k: the RRF constant; larger flattens the advantage of top ranks.

    Ties keep the order in which items were first met (earlier rankings, better ranks first).
    """
    if not isinstance(k, int | float) or isinstance(k, bool) or k < 0:
        raise ValueError(f"rrf_k must be a number >= 0, got {k!r}")
    scores: dict[Any, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    # sorted() is stable, so equal scores keep first-seen order.
    return sorted(scores.items(), key=lambda pair: -pair[1])


class HybridRetriever:
    """Dense + BM25 search over one document store, fused by RRF, optionally reranked.

    Args:
        documents: the corpus; a document's position is its id in ``index`` and ``bm25``.
        embedder: embeds queries; must be the model that built ``index``.
        index: vectors of ``documents``.
        bm25: BM25 over ``documents``.
        rrf_k: the RRF constant (60 as in the RRF paper).
        reranker: a local cross-encoder folder (loaded with ``sentence_transformers.CrossEncoder``)
            or any object with ``predict(pairs) -> scores``; ``None`` for no reranking.
        candidates: results taken from each of dense and BM25 before fusion (at least k).
        rerank_top: fused candidates the reranker re-scores (default ``candidates``).
    """

    def __init__(
        self,
        documents: DocumentStore,
        embedder: Embedder,
        index: VectorIndex,
        bm25: BM25Index,
        *,
        rrf_k: int = DEFAULT_RRF_K,
        reranker: str | Path | Reranker | None = None,
        candidates: int = 20,
        rerank_top: int | None = None,
    ) -> None:
        if not isinstance(rrf_k, int) or isinstance(rrf_k, bool) or rrf_k < 0:
            raise ValueError(f"rrf_k must be an integer >= 0, got {rrf_k!r}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if not (len(documents) == len(index) == len(bm25)):
            raise ValueError(
                f"documents ({len(documents)}), vector index ({len(index)}) and BM25 ({len(bm25)}) "
                "must hold the same documents"
            )
        if index.model_id is not None and index.model_id != embedder.model_id:
            raise ValueError(
                f"vector index was built with embedding model {index.model_id!r}, "
                f"but the embedder is {embedder.model_id!r}"
            )
        if index.dim != embedder.dimension:
            raise ValueError(
                f"vector index is {index.dim}-d, but the embedder makes {embedder.dimension}-d vectors"
            )
        self.documents = documents
        self.embedder = embedder
        self.index = index
        self.bm25 = bm25
        self.rrf_k = rrf_k
        self.candidates = candidates
        self.rerank_top = rerank_top or candidates
        self.reranker = load_reranker(reranker)

    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        """The ``k`` best documents for ``query``.

        Args:
            query: a non-empty question or search string.
            k: number of hits, >= 1 (fewer come back if the corpus is smaller).
        """
        if not isinstance(query, str):
            raise ValueError(f"query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty: give a question or search terms")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        n = max(k, self.candidates)
        dense_scores, dense_ids = self.index.search(self.embedder.embed([query]), n)  # (1, n')
        dense = [int(i) for i in dense_ids[0] if i >= 0]
        dense_score = {int(i): float(s) for s, i in zip(dense_scores[0], dense_ids[0], strict=True) if i >= 0}
        _, bm25_ids = self.bm25.search(query, n)  # (n'',)
        keyword = [int(i) for i in bm25_ids]
        fused = reciprocal_rank_fusion([dense, keyword], self.rrf_k)
        dense_rank = {pos: r for r, pos in enumerate(dense, start=1)}
        bm25_rank = {pos: r for r, pos in enumerate(keyword, start=1)}

        if self.reranker is not None:
            top = fused[: max(k, self.rerank_top)]
            pairs = [(query, self.documents.at(pos).text) for pos, _ in top]
            rerank = np.asarray(self.reranker.predict(pairs), dtype=np.float64).reshape(-1)  # (len(top),)
            if rerank.shape[0] != len(top):
                raise ValueError(f"reranker returned {rerank.shape[0]} scores for {len(top)} pairs")
            order = sorted(range(len(top)), key=lambda i: -rerank[i])
            ranked = [(top[i][0], float(rerank[i]), top[i][1]) for i in order]
        else:
            ranked = [(pos, score, score) for pos, score in fused]

        hits = []
        for pos, score, rrf in ranked[:k]:
            doc = self.documents.at(pos)
            hits.append(
                SearchHit(
                    doc_id=doc.id,
                    score=float(score),
                    text=doc.text,
                    metadata=dict(doc.metadata),
                    dense_rank=dense_rank.get(pos),
                    bm25_rank=bm25_rank.get(pos),
                    rrf_score=float(rrf),
                    dense_score=dense_score.get(pos),
                )
            )
        return hits

    @classmethod
    def build(
        cls,
        documents: Iterable[DocumentRecord | Mapping[str, Any]],
        directory: str | Path | None = None,
        *,
        embedder: Embedder | None = None,
        index_kind: IndexKind = "auto",
        **options: Any,
    ) -> HybridRetriever:
        """Embed and index ``documents``; save everything to ``directory`` when given.

        Args:
            documents: ``DocumentRecord``s or mappings with ``id``, ``text``, optional ``metadata``.
            directory: where to save the retriever (see the module docstring); ``None``: memory only.
            embedder: default ``Embedder()`` (the packaged MiniLM).
            index_kind: see ``core.retrieval.index``.
            options: ``rrf_k``, ``reranker``, ``candidates``, ``rerank_top``.
        """
        records = [d if isinstance(d, DocumentRecord) else DocumentRecord.from_dict(d) for d in documents]
        if not records:
            raise ValueError("cannot build a retriever from no documents")
        store = DocumentStore(records)
        embedder = embedder or Embedder()
        texts = [index_text(record) for record in store]
        vectors = embedder.embed(texts)  # (N, D)
        index = VectorIndex(
            embedder.dimension, index_kind, model_id=embedder.model_id, expected_size=len(store)
        )
        index.add(vectors, np.arange(len(store)))
        bm25 = BM25Index().build(texts)
        retriever = cls(store, embedder, index, bm25, **options)
        if directory is not None:
            retriever.save(directory)
        return retriever

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.documents.save(directory)
        self.index.save(directory / "index")
        self.bm25.save(directory / "bm25")
        manifest = {
            "embedding_model_id": self.embedder.model_id,
            "dimension": self.embedder.dimension,
            "document_count": len(self.documents),
            "index_kind": self.index.kind,
            "rrf_k": self.rrf_k,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        log.info("saved retriever over %d documents to %s", len(self.documents), directory)
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, *, embedder: Embedder | None = None, **options: Any
    ) -> HybridRetriever:
        """Load a retriever saved by ``build``/``save``.

        Args:
            directory: the saved folder.
            embedder: must be the model the index was built with (default ``Embedder()``).
            options: ``rrf_k`` (default: the saved one), ``reranker``, ``candidates``, ``rerank_top``.
        """
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise FileNotFoundError(f"no saved retriever in {str(directory)!r} (missing {MANIFEST})")
        manifest = json.loads((directory / MANIFEST).read_text())
        embedder = embedder or Embedder()
        index = VectorIndex.load(
            directory / "index", embedder_model_id=embedder.model_id, dimension=embedder.dimension
        )
        options.setdefault("rrf_k", int(manifest.get("rrf_k", DEFAULT_RRF_K)))
        return cls(
            DocumentStore.load(directory), embedder, index, BM25Index.load(directory / "bm25"), **options
        )


def load_reranker(reranker: str | Path | Reranker | None) -> Reranker | None:
    """A cross-encoder from a local folder, or the given object if it already has ``predict``."""
    if reranker is None:
        return None
    if isinstance(reranker, str | Path):
        path = Path(reranker).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"reranker folder {str(path)!r} does not exist (a local cross-encoder folder is required; "
                "models are never downloaded)"
            )
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(path), local_files_only=True)
    if not callable(getattr(reranker, "predict", None)):
        raise TypeError(
            f"reranker must be a folder path or have predict(pairs), got {type(reranker).__name__}"
        )
    return reranker
