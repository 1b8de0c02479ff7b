"""Fixture builders: real PDFs made with pypdf itself, text drawn in a standard Type1 font."""

from __future__ import annotations

from pathlib import Path

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(
    path: Path, pages: list[list[str]], *, title: str | None = None, password: str | None = None
) -> Path:
    """Write a PDF with one page per entry, each line drawn with Helvetica; an empty page has no text."""
    writer = PdfWriter()
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        font = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        # BT/ET text object: 12 pt Helvetica, 14 pt leading, start at (72, 720), T* = next line.
        shown = b" T* ".join(b"(" + _escape(line).encode("latin-1") + b") Tj" for line in lines)
        stream = DecodedStreamObject()
        stream.set_data(b"BT /F1 12 Tf 14 TL 72 720 Td " + shown + b" ET" if lines else b"")
        page.replace_contents(stream)
    if title:
        writer.add_metadata({"/Title": title})
    if password:
        writer.encrypt(password)
    with path.open("wb") as out:
        writer.write(out)
    return path


@pytest.fixture
def make_pdf():
    return write_pdf
