"""Markdown files: split by headings, the heading path as ``section``, front matter as metadata.

Headings are found with markdown-it-py rather than a regex so that a ``#`` line inside a
fenced code block is not taken for a heading. Optional YAML front matter (between ``---``
lines at the top) goes into metadata; a ``title`` key there wins over the first H1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connectors.knowledge.base import Loaded, LoadError, RawDocument, read_text, safe_metadata

try:
    import yaml
    from markdown_it import MarkdownIt

    _MISSING = ""
except ImportError as err:  # pragma: no cover - both are dependencies of fathom
    _MISSING = f"needs markdown-it-py and pyyaml ({err})"


def split_front_matter(text: str, path: Path) -> tuple[dict[str, Any], str, int]:
    """Separate YAML front matter from the body.

    Args:
        text: the whole file.
        path: the file, for error messages.

    Returns:
        ``(front matter, body, number of lines the front matter took)``.
    """
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, text, 0
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        raise LoadError(path, "front matter opened with '---' on line 1 is never closed")
    try:
        data = yaml.safe_load("".join(lines[1:end])) or {}
    except yaml.YAMLError as err:
        raise LoadError(path, f"front matter is not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise LoadError(path, f"front matter must be a YAML mapping, got {type(data).__name__}")
    return data, "".join(lines[end + 1 :]), end + 1


class MarkdownLoader:
    """Loads ``.md`` / ``.markdown`` files, one ``RawDocument`` per heading section."""

    suffixes: tuple[str, ...] = (".md", ".markdown")

    def available(self) -> tuple[bool, str]:
        return (not _MISSING), _MISSING

    def load(self, path: Path) -> Loaded:
        """Read ``path`` and split it into sections.

        Args:
            path: the Markdown file.
        """
        text, encoding = read_text(path)
        front, body, _ = split_front_matter(text, path)
        lines = body.splitlines()
        tokens = MarkdownIt("commonmark").parse(body)
        # (level, first line, line after the heading, heading text), in document order.
        headings = []
        for i, tok in enumerate(tokens):
            if tok.type == "heading_open" and tok.map:
                headings.append((int(tok.tag[1:]), tok.map[0], tok.map[1], tokens[i + 1].content.strip()))

        title = front.get("title") if isinstance(front.get("title"), str) else None
        if not title:
            title = next((h[3] for h in headings if h[0] == 1 and h[3]), path.stem)
        meta = safe_metadata(front)
        if encoding != "utf-8":
            meta["encoding"] = encoding

        docs: list[RawDocument] = []

        def emit(section: str, start: int, body_start: int, end: int) -> None:
            # A heading directly followed by a sub-heading has no text of its own: not a document.
            if not "\n".join(lines[body_start:end]).strip():
                return
            chunk = "\n".join(lines[start:end]).strip()
            docs.append(
                RawDocument(
                    text=chunk,
                    source=path.as_posix(),
                    title=title,
                    section=section,
                    key=f"section {len(docs)}",
                    kind="markdown",
                    metadata=dict(meta),
                )
            )

        first = headings[0][1] if headings else len(lines)
        emit("", 0, 0, first)  # text before the first heading
        stack: list[tuple[int, str]] = []
        for n, (level, start, after, name) in enumerate(headings):
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, name))
            end = headings[n + 1][1] if n + 1 < len(headings) else len(lines)
            emit(" > ".join(s for _, s in stack), start, after, end)
        return Loaded(docs)
