"""PDF files via pypdf: one section per page, with the 1-based ``page`` in metadata.

Scanned (image-only) PDFs have no text layer and password-protected ones cannot be read;
both are errors naming the file and what to do, rather than an empty knowledge base.
"""

from __future__ import annotations

from pathlib import Path

from connectors.knowledge.base import Loaded, LoadError, RawDocument

try:
    import pypdf
    from pypdf.errors import PdfReadError

    _MISSING = ""
except ImportError as err:  # pragma: no cover - a dependency of fathom
    _MISSING = f"needs pypdf ({err})"


class PdfLoader:
    """Loads ``.pdf`` files with pypdf, one ``RawDocument`` per page that has text."""

    suffixes: tuple[str, ...] = (".pdf",)

    def available(self) -> tuple[bool, str]:
        return (not _MISSING), _MISSING

    def load(self, path: Path) -> Loaded:
        """Extract the text of every page of ``path``.

        Args:
            path: the PDF file.

        Raises:
            LoadError: unreadable, malformed, password-protected, or without any text layer.
        """
        try:
            reader = pypdf.PdfReader(path)
            if reader.is_encrypted and not reader.decrypt(""):
                # An empty user password (owner-only protection) opens many "encrypted" PDFs;
                # anything else needs the password, which an ingest job does not have.
                raise LoadError(path, "is encrypted with a password; save a decrypted copy and load that")
            pages = [page.extract_text() or "" for page in reader.pages]
            title = (reader.metadata.title if reader.metadata else None) or path.stem
        except LoadError:
            raise
        except OSError as err:
            raise LoadError(path, f"cannot be read ({err.strerror or err})") from err
        except PdfReadError as err:
            raise LoadError(path, f"is not a readable PDF ({err})") from err
        except Exception as err:  # pypdf raises many types on damaged files (e.g. missing crypto)
            raise LoadError(path, f"could not be parsed by pypdf ({type(err).__name__}: {err})") from err

        if not any(text.strip() for text in pages):
            raise LoadError(
                path,
                f"has no extractable text on any of its {len(pages)} page(s): an image-only (scanned) "
                "PDF? Run OCR on it first",
            )
        docs = [
            RawDocument(
                text=text.strip(),
                source=path.as_posix(),
                title=str(title),
                section=f"page {number}",
                key=f"page {number}",
                kind="pdf",
                metadata={"page": number},
            )
            for number, text in enumerate(pages, start=1)
            if text.strip()  # a blank page among text pages (cover, separator) holds nothing to lose
        ]
        return Loaded(docs)
