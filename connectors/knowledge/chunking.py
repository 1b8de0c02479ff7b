"""Chunking ``RawDocument``s into ``DocumentRecord``s with LangChain's recursive splitter.

Every chunk keeps ``source``, ``title``, ``section`` and ``position`` (its index within its
document) plus the loader's metadata (``page``, ``row``, front matter, CSV columns). Ids are
``<base>#<position>``, where ``base`` is the document's explicit id (a CSV id column) or the
first 16 hex digits of sha256(source, key): re-ingesting an unchanged file gives the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

from connectors.knowledge.base import RawDocument
from core.retrieval.documents import DocumentRecord


def document_base_id(doc: RawDocument) -> str:
    """The id shared by all chunks of ``doc`` (before ``#position``).

    Args:
        doc: the raw document.
    """
    if doc.doc_id:
        return doc.doc_id
    return hashlib.sha256(f"{doc.source}\x00{doc.key}".encode()).hexdigest()[:16]


def _splitters(chunk_size: int, chunk_overlap: int) -> dict[str, RecursiveCharacterTextSplitter]:
    common = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap}
    return {
        # Markdown separators prefer headings, fences and rules before paragraphs and words.
        "markdown": RecursiveCharacterTextSplitter.from_language(Language.MARKDOWN, **common),
        "default": RecursiveCharacterTextSplitter(**common),
    }


def chunk_documents(
    raw_docs: Iterable[RawDocument], chunk_size: int = 800, chunk_overlap: int = 100
) -> list[DocumentRecord]:
    """Split documents into passages of at most ``chunk_size`` characters.

    Args:
        raw_docs: documents from the loaders.
        chunk_size: the most characters in one chunk.
        chunk_overlap: the most characters shared by consecutive chunks of one document.

    Returns:
        The chunks in document order, with metadata ``source``, ``title``, ``section``,
        ``position``, ``doc_id`` and ``format`` plus the document's own metadata.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be in [0, chunk_size={chunk_size}), got {chunk_overlap!r}")
    splitters = _splitters(chunk_size, chunk_overlap)
    records: list[DocumentRecord] = []
    for doc in raw_docs:
        splitter = splitters.get(doc.kind, splitters["default"])
        base = document_base_id(doc)
        pieces = [p for p in splitter.split_text(doc.text) if p.strip()]
        for position, piece in enumerate(pieces):
            meta = dict(doc.metadata) | {
                "source": doc.source,
                "title": doc.title,
                "section": doc.section,
                "position": position,
                "doc_id": base,
                "format": doc.kind,
            }
            records.append(DocumentRecord(id=f"{base}#{position}", text=piece, metadata=meta))
    return records
