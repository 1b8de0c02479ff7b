"""Customer-service functions that the CLI, the UI and the API call.

So far: building a searchable index from knowledge-base files (``ingest``) and searching it
(``search``). The default index is the Harbour Bank knowledge base shipped in
``apps/customer_service/knowledge_base``, built on first use into the cache folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apps.customer_service import KNOWLEDGE_BASE
from apps.customer_service.extractive import ExtractiveAnswerer
from connectors.knowledge import load_path
from core.config import cache_dir
from core.retrieval.embeddings import Embedder
from core.retrieval.hybrid import MANIFEST, HybridRetriever


def default_index_dir() -> Path:
    return cache_dir("cs-index")


@dataclass
class IngestReport:
    """What ``ingest`` built and what it left out (nothing is dropped silently)."""

    index_dir: str
    documents: int
    chunks: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest(
    paths: Sequence[str | Path],
    index_dir: str | Path,
    *,
    text_column: str = "answer",
    title_column: str | None = None,
    id_column: str | None = None,
    embedder: Embedder | None = None,
) -> IngestReport:
    """Load knowledge-base files and folders, chunk them and save a hybrid index in ``index_dir``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: nothing loadable was found (every file skipped or every record rejected).
    """
    result = load_path(list(paths), text_column=text_column, title_column=title_column, id_column=id_column)
    if not result.documents:
        reasons = "; ".join(f"{where}: {why}" for where, why in [*result.skipped, *result.rejected][:5])
        raise ValueError(
            f"no documents to index in {', '.join(map(str, paths))}" + (f" ({reasons})" if reasons else "")
        )
    embedder = embedder or Embedder()
    HybridRetriever.build(result.documents, index_dir, embedder=embedder)
    # The extractive answerer's sentence embeddings, computed now so that answering costs no encoder time.
    ExtractiveAnswerer(embedder).prepare(
        [
            {"id": d.id, "text": d.text, **{k: d.metadata.get(k) for k in ("title", "section")}}
            for d in result.documents
        ]
    )
    sources = {doc.metadata.get("source") for doc in result.documents}
    return IngestReport(
        index_dir=str(index_dir),
        documents=len(sources),
        chunks=len(result.documents),
        skipped=[(str(p), r) for p, r in result.skipped],
        rejected=[(str(w), r) for w, r in result.rejected],
    )


def open_index(index_dir: str | Path | None = None, embedder: Embedder | None = None) -> HybridRetriever:
    """The retriever saved in ``index_dir``; by default the shipped knowledge base, built on first use."""
    if index_dir is None:
        index_dir = default_index_dir()
        if not (index_dir / MANIFEST).is_file():
            ingest([KNOWLEDGE_BASE], index_dir, embedder=embedder)
    return HybridRetriever.load(index_dir, embedder=embedder)


def search(query: str, k: int = 5, index_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Top-``k`` passages for ``query`` as ``{"id", "title", "source", "section", "score", "text"}``."""
    hits = open_index(index_dir).search(query, k=k)
    return [
        {
            "id": hit.doc_id,
            "title": hit.metadata.get("title"),
            "source": hit.metadata.get("source"),
            "section": hit.metadata.get("section"),
            "score": round(float(hit.score), 6),
            "text": hit.text,
        }
        for hit in hits
    ]
