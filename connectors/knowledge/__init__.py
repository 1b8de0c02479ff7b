"""Knowledge-base loaders of the customer-service app: Markdown, HTML, PDF, text, CSV, folders.

``load_path`` is what ``fathom cs ingest PATH...`` calls: it reads files and folders with the
loader registered for each suffix, chunks the text, and reports every file it skipped and
every record it rejected, with the reason, alongside the documents::

    result = load_path(["kb/", "faq.csv"], text_column="answer", title_column="question")
    result.documents  # list[DocumentRecord], ids stable across runs
    result.skipped    # [(path, reason)]: unknown suffix, loader unavailable, no text
    result.rejected   # [(where, reason)]: e.g. ("faq.csv row 7", "empty text column 'answer'")

Text files are read as UTF-8, falling back to cp1252 (then ``encoding`` is in the metadata).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from connectors.knowledge.base import Loaded, Loader, LoaderRegistry, LoadError, RawDocument, read_text
from connectors.knowledge.chunking import chunk_documents, document_base_id
from connectors.knowledge.csv import CsvLoader
from connectors.knowledge.folder import walk_folder
from connectors.knowledge.html import HtmlLoader
from connectors.knowledge.markdown import MarkdownLoader
from connectors.knowledge.pdf import PdfLoader
from connectors.knowledge.text import TextLoader
from core.retrieval.documents import DocumentRecord

__all__ = [
    "CsvLoader",
    "HtmlLoader",
    "LoadError",
    "LoadResult",
    "Loaded",
    "Loader",
    "LoaderRegistry",
    "MarkdownLoader",
    "PdfLoader",
    "RawDocument",
    "TextLoader",
    "chunk_documents",
    "default_registry",
    "load_path",
    "read_text",
]


@dataclass
class LoadResult:
    """The outcome of ``load_path``.

    Args:
        documents: the chunks, ready for a ``DocumentStore``.
        skipped: ``(path, reason)`` for each file not loaded.
        rejected: ``(where, reason)`` for each record (CSV row, duplicate id) not loaded.
    """

    documents: list[DocumentRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def default_registry(
    *, text_column: str = "answer", title_column: str | None = None, id_column: str | None = None
) -> LoaderRegistry:
    """All built-in loaders, the CSV one configured with the given columns.

    Args:
        text_column: CSV column with the text.
        title_column: optional CSV column with the title.
        id_column: optional CSV column with a stable id.
    """
    csv_loader = CsvLoader(text_column=text_column, title_column=title_column, id_column=id_column)
    return LoaderRegistry([MarkdownLoader(), HtmlLoader(), PdfLoader(), TextLoader(), csv_loader])


def _files_for(path: Path, registry: LoaderRegistry, result: LoadResult) -> list[tuple[Path, Loader]]:
    if path.is_dir():
        files, skipped = walk_folder(path, registry)
        result.skipped.extend(skipped)
        return files
    # A file named explicitly is loaded even if hidden, and an unusable one is an error:
    # the user asked for it by name.
    loader = registry.for_path(path)
    if loader is None:
        raise LoadError(
            path,
            f"no loader for suffix {path.suffix or '(none)'!r} (supported: {', '.join(registry.suffixes)})",
        )
    ok, why = loader.available()
    if not ok:
        raise LoadError(path, f"{type(loader).__name__} is not available: {why}")
    return [(path, loader)]


def load_path(
    path_or_paths: str | Path | Iterable[str | Path],
    *,
    text_column: str = "answer",
    title_column: str | None = None,
    id_column: str | None = None,
    chunk_size: int = 800,
    chunk_overlap: int = 100,
    strict: bool = True,
    registry: LoaderRegistry | None = None,
) -> LoadResult:
    """Load and chunk files and folders of a knowledge base.

    Args:
        path_or_paths: a file or folder, or several; folders are walked recursively in sorted
            order, hidden files and folders ignored.
        text_column: CSV column with the text (``--text-column``).
        title_column: optional CSV column with the title (``--title-column``).
        id_column: optional CSV column with stable ids.
        chunk_size: the most characters per chunk.
        chunk_overlap: the most characters consecutive chunks share.
        strict: raise on the first file that cannot be loaded (default); when False, list it
            under ``skipped`` with the error and go on.
        registry: loaders to use (default: ``default_registry`` with the CSV columns above).

    Raises:
        FileNotFoundError: a path does not exist (checked for all before any is read).
        LoadError: (``strict``) a file cannot be read, decoded or parsed, or a CSV lacks a column.
    """
    if isinstance(path_or_paths, str | Path):
        path_or_paths = [path_or_paths]
    paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise ValueError("load_path needs at least one file or folder")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
    registry = registry or default_registry(
        text_column=text_column, title_column=title_column, id_column=id_column
    )

    result = LoadResult()
    raw: list[RawDocument] = []
    owner: dict[str, str] = {}  # base id -> where it was first seen, to reject duplicates
    done: set[Path] = set()
    for path in paths:
        for file, loader in _files_for(path, registry, result):
            if file.resolve() in done:  # the same file reached twice (e.g. "kb/" and "kb/a.md")
                continue
            done.add(file.resolve())
            try:
                loaded = loader.load(file)
            except LoadError as err:
                if strict:
                    raise
                result.skipped.append((file.as_posix(), err.reason))
                continue
            result.rejected.extend(loaded.rejected)
            if not loaded.documents and not loaded.rejected:
                result.skipped.append((file.as_posix(), "no text found"))
            for doc in loaded.documents:
                base = document_base_id(doc)
                where = f"{doc.source} {doc.key}".strip()
                if base in owner:
                    result.rejected.append((where, f"id {base!r} already used by {owner[base]}"))
                    continue
                owner[base] = where
                raw.append(doc)
    result.documents = chunk_documents(raw, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return result
