from __future__ import annotations

import pypdf
import pytest

from connectors.knowledge import LoadError, PdfLoader, load_path


def test_generated_pdf_really_holds_text(tmp_path, make_pdf) -> None:
    path = make_pdf(tmp_path / "kb.pdf", [["Hello world", "second line"]])
    assert pypdf.PdfReader(path).pages[0].extract_text() == "Hello world\nsecond line"


def test_one_section_per_page_with_page_metadata(tmp_path, make_pdf) -> None:
    path = make_pdf(
        tmp_path / "fees.pdf",
        [["Card fees", "Annual fee is 30 EUR."], [], ["Transfers are free."]],
        title="Fee schedule",
    )
    docs = PdfLoader().load(path).documents
    # the blank middle page holds nothing; page numbers stay those of the file
    assert [(d.section, d.metadata["page"]) for d in docs] == [("page 1", 1), ("page 3", 3)]
    assert docs[0].title == "Fee schedule"
    assert docs[0].text == "Card fees\nAnnual fee is 30 EUR."
    chunks = load_path(path).documents
    assert [c.metadata["page"] for c in chunks] == [1, 3]
    assert chunks[1].metadata["title"] == "Fee schedule"


def test_title_falls_back_to_stem(tmp_path, make_pdf) -> None:
    path = make_pdf(tmp_path / "terms.pdf", [["Terms"]])
    assert PdfLoader().load(path).documents[0].title == "terms"


def test_encrypted_pdf_is_a_clear_error(tmp_path, make_pdf) -> None:
    path = make_pdf(tmp_path / "secret.pdf", [["Hidden"]], password="s3cret")
    with pytest.raises(LoadError, match=r"secret\.pdf: is encrypted with a password"):
        PdfLoader().load(path)


def test_image_only_pdf_is_a_clear_error(tmp_path, make_pdf) -> None:
    path = make_pdf(tmp_path / "scan.pdf", [[], []])
    with pytest.raises(LoadError, match=r"scan\.pdf: has no extractable text on any of its 2 page\(s\).*OCR"):
        PdfLoader().load(path)


def test_malformed_pdf_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"this is not a pdf at all")
    with pytest.raises(LoadError, match=r"broken\.pdf: (is not a readable PDF|could not be parsed)"):
        PdfLoader().load(path)


def test_available() -> None:
    assert PdfLoader().available() == (True, "")
