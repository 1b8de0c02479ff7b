"""The loader protocol, its registry by file suffix, and helpers every loader shares.

A loader turns one file into ``RawDocument``s: whole sections of text with where they came
from (source, title, section, a key such as ``page 3`` or ``row 12``). Chunking into
``DocumentRecord``s happens later, in ``connectors.knowledge.chunking``, the same way for all
formats. Like pydicom's decoder plugins, each loader says whether it can run here
(``available()``) and, when not, why (e.g. a missing package).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Keys that chunking or a loader write themselves; user-supplied metadata must not shadow them.
RESERVED_KEYS = frozenset(
    {"source", "title", "section", "position", "doc_id", "format", "encoding", "page", "row"}
)


class LoadError(ValueError):
    """A file that cannot be turned into documents; the message names the file and the reason.

    Args:
        path: the offending file.
        reason: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class RawDocument:
    """One un-chunked piece of a source file (a Markdown section, a PDF page, a CSV row).

    Args:
        text: the text; loaders never emit whitespace-only text.
        source: the file it came from, as a POSIX path as given to the loader.
        title: the document's title (front matter, ``<title>``, first H1, PDF title or file stem).
        section: heading path (``"Cards > Lost card"``), ``"page 3"``, or ``""``.
        key: what distinguishes this piece within ``source`` (``"section 2"``, ``"page 3"``,
            ``"row 12"``); with ``source`` it makes the chunk ids stable across runs.
        kind: the format (``markdown``, ``html``, ``pdf``, ``text``, ``csv``); chunking picks
            its separators from it.
        metadata: extra JSON-serialisable fields (front matter, ``page``, ``row``, CSV columns).
        doc_id: an explicit id (a CSV id column); otherwise one is hashed from source and key.
    """

    text: str
    source: str
    title: str
    section: str = ""
    key: str = ""
    kind: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None


@dataclass
class Loaded:
    """What a loader made of one file.

    Args:
        documents: the pieces of text it found.
        rejected: ``(where, reason)`` for each record it could not use (e.g. ``"faq.csv row 7"``),
            so nothing is dropped silently.
    """

    documents: list[RawDocument] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


@runtime_checkable
class Loader(Protocol):
    """A backend for some file suffixes (lower case, with the dot: ``(".md", ".markdown")``)."""

    suffixes: tuple[str, ...]

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when it can run here, else ``(False, why not)``."""
        ...

    def load(self, path: Path) -> Loaded:
        """Read ``path``; raises ``LoadError`` naming the file when it cannot."""
        ...


class LoaderRegistry:
    """Loaders by file suffix; the last one registered for a suffix wins.

    Args:
        loaders: loaders to register, in order.
    """

    def __init__(self, loaders: Iterable[Loader] = ()) -> None:
        self._by_suffix: dict[str, Loader] = {}
        for loader in loaders:
            self.register(loader)

    def register(self, loader: Loader) -> None:
        if not isinstance(loader, Loader):
            raise TypeError(f"{type(loader).__name__} does not implement the Loader protocol")
        for suffix in loader.suffixes:
            self._by_suffix[suffix.lower()] = loader

    def for_path(self, path: str | Path) -> Loader | None:
        """The loader for ``path``'s suffix (case-insensitive), or None."""
        return self._by_suffix.get(Path(path).suffix.lower())

    @property
    def suffixes(self) -> list[str]:
        return sorted(self._by_suffix)


def read_text(path: Path) -> tuple[str, str]:
    """Decode a text file: UTF-8 (a BOM is dropped), else cp1252, the usual Windows export.

    Args:
        path: the file.

    Returns:
        ``(text, encoding)`` with encoding ``"utf-8"`` or ``"cp1252"``.

    Raises:
        LoadError: unreadable, binary (NUL bytes), or neither UTF-8 nor cp1252.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LoadError(path, f"cannot be read ({err.strerror or err})") from err
    if b"\x00" in data:
        # UTF-16 and binaries both hold NULs; neither is a text file we can read correctly.
        raise LoadError(path, "contains NUL bytes: a binary or UTF-16 file, not UTF-8/cp1252 text")
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as utf8_err:
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError as err:
            raise LoadError(
                path,
                f"is neither UTF-8 (byte {utf8_err.start}) nor cp1252 (byte {err.start}); "
                "re-save it as UTF-8",
            ) from err


def jsonable(value: Any) -> Any:
    """``value`` made JSON-serialisable: dates to ISO strings, anything else unknown to ``str``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    return str(value)


def safe_metadata(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Extra metadata whose keys cannot shadow the reserved ones: ``source`` becomes ``source_field``."""
    return {(f"{k}_field" if k in RESERVED_KEYS else str(k)): jsonable(v) for k, v in extra.items()}
