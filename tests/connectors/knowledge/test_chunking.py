from __future__ import annotations

import pytest

from connectors.knowledge import RawDocument, chunk_documents
from connectors.knowledge.chunking import document_base_id

WORDS = " ".join(f"word{i:03d}" for i in range(300))  # 2,399 characters, 8 per word + space


def _doc(**kw) -> RawDocument:
    defaults = {"text": WORDS, "source": "kb/a.txt", "title": "A", "section": "S", "key": "file"}
    return RawDocument(**(defaults | kw))


def test_chunk_size_and_overlap_are_respected() -> None:
    chunks = chunk_documents([_doc()], chunk_size=200, chunk_overlap=50)
    assert len(chunks) > 10
    assert all(len(c.text) <= 200 for c in chunks)
    for before, after in zip(chunks, chunks[1:], strict=False):
        first = after.text.split()[0]
        # the next chunk starts inside the previous one, at most 50 characters from its end
        assert first in before.text.split()
        shared = before.text[before.text.index(first) :]
        assert 0 < len(shared) <= 50 and after.text.startswith(shared)
    # nothing lost: every word appears in some chunk, in order
    assert " ".join(dict.fromkeys(w for c in chunks for w in c.text.split())) == WORDS


def test_no_overlap() -> None:
    chunks = chunk_documents([_doc()], chunk_size=100, chunk_overlap=0)
    assert " ".join(c.text for c in chunks) == WORDS


def test_metadata_and_ids() -> None:
    doc = _doc(metadata={"page": 3, "lang": "en"}, kind="pdf")
    chunks = chunk_documents([doc], chunk_size=500, chunk_overlap=0)
    base = document_base_id(doc)
    assert len(base) == 16
    assert [c.id for c in chunks] == [f"{base}#{i}" for i in range(len(chunks))]
    assert chunks[1].metadata == {
        "page": 3,
        "lang": "en",
        "source": "kb/a.txt",
        "title": "A",
        "section": "S",
        "position": 1,
        "doc_id": base,
        "format": "pdf",
    }


def test_ids_depend_on_source_and_key_only() -> None:
    assert document_base_id(_doc()) == document_base_id(_doc(text="changed"))
    assert document_base_id(_doc()) != document_base_id(_doc(key="page 2"))
    assert document_base_id(_doc()) != document_base_id(_doc(source="kb/b.txt"))
    assert document_base_id(_doc(doc_id="faq-7")) == "faq-7"
    (chunk,) = chunk_documents([_doc(text="short", doc_id="faq-7")])
    assert chunk.id == "faq-7#0"


def test_markdown_prefers_heading_boundaries() -> None:
    text = "## One\n" + "alpha " * 20 + "\n## Two\n" + "beta " * 20
    chunks = chunk_documents([_doc(text=text, kind="markdown")], chunk_size=150, chunk_overlap=0)
    assert [c.text.split("\n")[0] for c in chunks] == ["## One", "## Two"]


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [
        (0, 0, "chunk_size must be a positive integer, got 0"),
        (100, 100, r"chunk_overlap must be in \[0, chunk_size=100\), got 100"),
        (100, -1, r"chunk_overlap must be in \[0, chunk_size=100\), got -1"),
    ],
)
def test_bad_sizes_are_clear_errors(size, overlap, message) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_documents([_doc()], chunk_size=size, chunk_overlap=overlap)
