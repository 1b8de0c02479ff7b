from __future__ import annotations

from pathlib import Path

import pytest

from core.retrieval.documents import DocumentRecord, DocumentStore


def test_round_trip(tmp_path: Path, bank_docs: list[DocumentRecord]) -> None:
    store = DocumentStore(bank_docs)
    path = store.save(tmp_path)
    assert path.name == "documents.jsonl" and len(path.read_text().splitlines()) == len(bank_docs)
    loaded = DocumentStore.load(tmp_path)
    assert list(loaded) == bank_docs
    assert loaded.get("swift").metadata["source"] == "faq/swift.md"
    assert loaded.position("swift") == store.position("swift") and loaded.at(0) == bank_docs[0]
    assert "swift" in loaded and "nope" not in loaded


def test_unicode_text_survives(tmp_path: Path) -> None:
    store = DocumentStore([DocumentRecord("é", "Überweisung ins Ausland — 2 Tage", {"lang": "de"})])
    assert list(DocumentStore.load(store.save(tmp_path / "docs.jsonl"))) == list(store)


def test_bad_records() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        DocumentRecord("", "text")
    with pytest.raises(ValueError, match="'a' has empty text"):
        DocumentRecord("a", "   ")
    with pytest.raises(ValueError, match="text must be a string"):
        DocumentRecord("a", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metadata must be a dict"):
        DocumentRecord("a", "t", ["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        DocumentRecord("a", "t", {"when": object()})
    with pytest.raises(ValueError, match="lacks text"):
        DocumentRecord.from_dict({"id": "a"})


def test_duplicate_ids_are_refused_atomically() -> None:
    store = DocumentStore([DocumentRecord("a", "one")])
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        store.add([DocumentRecord("b", "two"), DocumentRecord("a", "again")])
    assert len(store) == 1  # nothing of the failed batch was added
    with pytest.raises(ValueError, match="duplicate document id 'c'"):
        DocumentStore([DocumentRecord("c", "x"), DocumentRecord("c", "y")])
    with pytest.raises(TypeError, match="expected DocumentRecord"):
        store.add([{"id": "d", "text": "t"}])  # type: ignore[list-item]
    with pytest.raises(KeyError, match="no document with id 'zz'"):
        store.get("zz")


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "documents.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"documents.jsonl:3: .*lacks text"):
        DocumentStore.load(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="must be a JSON object"):
        DocumentStore.load(path)
    with pytest.raises(FileNotFoundError, match="no document store"):
        DocumentStore.load(tmp_path / "absent.jsonl")
