"""LangChain adapters, so Fathom retrieval drops into LCEL chains.

- ``FathomEmbeddings``: ``langchain_core.embeddings.Embeddings`` over ``Embedder``.
- ``FathomVectorStore``: ``langchain_core.vectorstores.VectorStore`` over a ``VectorIndex`` and a
  ``DocumentStore`` (dense search only; ``.as_retriever()`` works as for any vector store).
- ``FathomHybridRetriever``: ``langchain_core.retrievers.BaseRetriever`` over ``HybridRetriever``.

Every returned ``Document`` carries metadata ``id``, ``score`` and ``source`` (the document's own
``source`` metadata, else its id) besides the document's metadata, so a chain can cite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import Field

from core.retrieval.documents import DocumentRecord, DocumentStore
from core.retrieval.embeddings import Embedder
from core.retrieval.hybrid import HybridRetriever
from core.retrieval.index import IndexKind, VectorIndex


def to_langchain_document(record: DocumentRecord, score: float, **extra: Any) -> Document:
    metadata = {**record.metadata, **extra, "id": record.id, "score": float(score)}
    metadata["source"] = record.metadata.get("source", record.id)
    return Document(page_content=record.text, metadata=metadata, id=record.id)


class FathomEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over an ``Embedder`` (cached, unit-norm vectors).

    Args:
        embedder: default ``Embedder()`` (the packaged MiniLM).
    """

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or Embedder()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text).tolist()


class FathomVectorStore(VectorStore):
    """A LangChain vector store over FAISS (``VectorIndex``) and a ``DocumentStore``.

    Args:
        embedding: any LangChain ``Embeddings``; vectors are L2-normalised, so scores are cosines.
        index_kind: kind of the index created on the first ``add_texts`` (``"auto"`` decides from
            that first batch's size, and the kind then stays: add in one batch for big corpora).
        index: an existing index (its ids must be positions in ``documents``).
        documents: the documents of ``index``.
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        index_kind: IndexKind = "flat",
        index: VectorIndex | None = None,
        documents: DocumentStore | None = None,
    ) -> None:
        self._embedding = embedding
        self.index_kind = index_kind
        self.index = index
        self.documents = documents if documents is not None else DocumentStore()
        if index is not None and len(index) != len(self.documents):
            raise ValueError(
                f"index holds {len(index)} vectors but there are {len(self.documents)} documents"
            )

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def model_id(self) -> str | None:
        embedder = getattr(self._embedding, "embedder", None)
        return getattr(embedder, "model_id", None)

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store texts; returns their ids (new UUIDs where none are given)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
        if not texts:
            return []
        ids = [i if i is not None else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        records = [
            DocumentRecord(id=i, text=t, metadata=dict(m or {}))
            for i, t, m in zip(ids, texts, metadatas or [None] * len(texts), strict=True)
        ]
        # Validate everything (ids unique, texts non-empty) before touching the index.
        pending = DocumentStore(records)
        clash = [r.id for r in pending if r.id in self.documents]
        if clash:
            raise ValueError(f"duplicate document id {clash[0]!r}")
        vectors = _normalise(np.asarray(self._embedding.embed_documents(texts), dtype=np.float32))  # (N, D)
        if self.index is None:
            self.index = VectorIndex(vectors.shape[1], self.index_kind, model_id=self.model_id)
        start = len(self.documents)
        self.index.add(vectors, np.arange(start, start + len(records)))
        self.documents.add(records)
        return ids

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents most similar to ``query`` with their cosine similarity (higher is closer)."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query is empty: give a question or search terms")
        vector = np.asarray(self._embedding.embed_query(query), dtype=np.float32)
        return self._search_vector(vector, k)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self._search_vector(np.asarray(embedding, dtype=np.float32), k)]

    def _search_vector(self, vector: np.ndarray, k: int) -> list[tuple[Document, float]]:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if self.index is None:
            return []
        scores, ids = self.index.search(_normalise(vector.reshape(1, -1)), k)  # (1, k'), (1, k')
        return [
            (to_langchain_document(self.documents.at(int(i)), float(s)), float(s))
            for s, i in zip(scores[0], ids[0], strict=True)
            if i >= 0
        ]

    def _select_relevance_score_fn(self):
        # Scores are cosines in [-1, 1]; LangChain's relevance scores live in [0, 1].
        return lambda score: (score + 1.0) / 2.0

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [to_langchain_document(self.documents.get(i), 1.0) for i in ids if i in self.documents]

    def save_local(self, directory: str | Path) -> Path:
        """Write ``documents.jsonl`` and ``index/`` into ``directory``."""
        if self.index is None:
            raise ValueError("the vector store is empty: nothing to save")
        directory = Path(directory)
        self.documents.save(directory)
        self.index.save(directory / "index")
        return directory

    @classmethod
    def load_local(cls, directory: str | Path, embedding: Embeddings) -> FathomVectorStore:
        """Read a store written by ``save_local``; the embedding model must be the one that built it."""
        directory = Path(directory)
        embedder = getattr(embedding, "embedder", None)
        index = VectorIndex.load(
            directory / "index",
            embedder_model_id=getattr(embedder, "model_id", None),
            dimension=getattr(embedder, "dimension", None),
        )
        return cls(embedding, index_kind=index.kind, index=index, documents=DocumentStore.load(directory))

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        index_kind: IndexKind = "auto",
        **kwargs: Any,
    ) -> FathomVectorStore:
        store = cls(embedding, index_kind=index_kind)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class FathomHybridRetriever(BaseRetriever):
    """A LangChain retriever over ``HybridRetriever`` (dense + BM25, RRF, optional reranking).

    Args:
        retriever: the hybrid retriever.
        k: documents per query.
    """

    retriever: HybridRetriever
    k: int = Field(default=4, ge=1)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = self.retriever.search(query, self.k)
        return [
            to_langchain_document(
                self.retriever.documents.get(hit.doc_id),
                hit.score,
                dense_rank=hit.dense_rank,
                bm25_rank=hit.bm25_rank,
            )
            for hit in hits
        ]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(vectors).astype(np.float32)  # (N, D)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
