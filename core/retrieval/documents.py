"""Documents of a retrieval corpus and their JSONL store.

A ``DocumentRecord`` is one passage: a string id, its text and JSON metadata (source file,
title, URL...). ``DocumentStore`` keeps them in insertion order, so a record's position is the
integer id the vector index and BM25 use, and persists them as ``documents.jsonl`` beside them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCUMENTS_FILE = "documents.jsonl"


@dataclass(frozen=True)
class DocumentRecord:
    """One passage of the corpus.

    Args:
        id: unique, non-empty string id (e.g. ``"faq/card-lost#2"``).
        text: the passage; must contain more than whitespace.
        metadata: JSON-serialisable fields returned with every hit.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"document id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.text, str):
            raise ValueError(f"document {self.id!r}: text must be a string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ValueError(f"document {self.id!r} has empty text")
        if not isinstance(self.metadata, Mapping):
            raise ValueError(
                f"document {self.id!r}: metadata must be a dict, got {type(self.metadata).__name__}"
            )
        try:
            json.dumps(dict(self.metadata))
        except (TypeError, ValueError) as err:
            raise ValueError(f"document {self.id!r}: metadata is not JSON-serialisable ({err})") from err

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DocumentRecord:
        if not isinstance(data, Mapping):
            raise ValueError(f"a document record must be a JSON object, got {type(data).__name__}")
        missing = {"id", "text"} - set(data)
        if missing:
            raise ValueError(f"document record lacks {', '.join(sorted(missing))}: {dict(data)!r:.200}")
        return cls(id=data["id"], text=data["text"], metadata=dict(data.get("metadata") or {}))


class DocumentStore:
    """Documents in insertion order, addressable by id and by position.

    Args:
        documents: initial records (ids must be unique).
    """

    def __init__(self, documents: Iterable[DocumentRecord] = ()) -> None:
        self._docs: list[DocumentRecord] = []
        self._position: dict[str, int] = {}
        self.add(documents)

    def add(self, documents: Iterable[DocumentRecord]) -> list[int]:
        """Append records; returns their positions. All-or-nothing on a duplicate id."""
        batch = list(documents)
        seen: set[str] = set()
        for doc in batch:
            if not isinstance(doc, DocumentRecord):
                raise TypeError(f"expected DocumentRecord, got {type(doc).__name__}")
            if doc.id in self._position or doc.id in seen:
                raise ValueError(f"duplicate document id {doc.id!r}")
            seen.add(doc.id)
        start = len(self._docs)
        for offset, doc in enumerate(batch):
            self._docs.append(doc)
            self._position[doc.id] = start + offset
        return list(range(start, start + len(batch)))

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[DocumentRecord]:
        return iter(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._position

    def at(self, position: int) -> DocumentRecord:
        return self._docs[position]

    def get(self, doc_id: str) -> DocumentRecord:
        if doc_id not in self._position:
            raise KeyError(f"no document with id {doc_id!r}")
        return self._docs[self._position[doc_id]]

    def position(self, doc_id: str) -> int:
        return self._position[doc_id]

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self._docs]

    def save(self, path: str | Path) -> Path:
        """Write one JSON object per line; ``path`` may be a folder (then ``documents.jsonl`` in it)."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / DOCUMENTS_FILE
        with path.open("w", encoding="utf-8") as out:
            for doc in self._docs:
                out.write(json.dumps(doc.to_dict(), ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DocumentStore:
        """Read a store written by ``save``; a bad line is an error naming the file and line."""
        path = Path(path)
        if path.is_dir():
            path = path / DOCUMENTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no document store {str(path)!r}")
        docs = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    docs.append(DocumentRecord.from_dict(json.loads(line)))
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{path}:{number}: {err}") from err
        return cls(docs)
