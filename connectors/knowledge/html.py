"""HTML pages: visible text split into sections at ``<h1>``-``<h3>``, navigation and scripts dropped.

Parsed with BeautifulSoup and the standard library's ``html.parser``, so no lxml is needed.
The title is ``<title>``, else the first ``<h1>``, else the file stem.
"""

from __future__ import annotations

import re
from pathlib import Path

from connectors.knowledge.base import Loaded, RawDocument, read_text

try:
    from bs4 import BeautifulSoup, NavigableString

    _MISSING = ""
except ImportError as err:  # pragma: no cover - a dependency of fathom
    _MISSING = f"needs beautifulsoup4 ({err})"

# Not reader-visible content: code, styling, menus, and HTML's non-rendered containers.
DROPPED_TAGS = ("script", "style", "nav", "noscript", "template", "head")
SECTION_TAGS = ("h1", "h2", "h3")
# Blocks that end a line when rendered; without a newline after them, get_text() runs
# neighbouring paragraphs into one another, while a newline after every tag would split
# inline elements (<b>, <a>) out of their sentence.
BLOCK_TAGS = (
    "p", "div", "li", "br", "tr", "td", "th", "h4", "h5", "h6", "pre", "blockquote",
    "section", "article", "table", "ul", "ol", "dd", "dt", "main", "header", "footer",
)  # fmt: skip
_MARK = "\x00H{}\x00"
_MARK_RE = re.compile("\x00H(\\d+)\x00")


def _clean(text: str) -> str:
    """Collapse runs of spaces in each line and drop blank lines."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


class HtmlLoader:
    """Loads ``.html`` / ``.htm`` files, one ``RawDocument`` per heading section."""

    suffixes: tuple[str, ...] = (".html", ".htm")

    def available(self) -> tuple[bool, str]:
        return (not _MISSING), _MISSING

    def load(self, path: Path) -> Loaded:
        """Read ``path`` and split its visible text by headings.

        Args:
            path: the HTML file.
        """
        markup, encoding = read_text(path)
        soup = BeautifulSoup(markup, "html.parser")
        title_tag = soup.find("title")
        title = _clean(title_tag.get_text(" ")) if title_tag else ""
        for tag in soup.find_all(DROPPED_TAGS):
            tag.decompose()
        for tag in soup.find_all(BLOCK_TAGS):
            tag.append(NavigableString("\n"))

        # Replace each heading by a marker, then cut the page's text at the markers: this keeps
        # text that sits outside any element (or in nested wrappers) in the right section.
        headings: list[tuple[int, str]] = []
        for n, tag in enumerate(soup.find_all(SECTION_TAGS)):
            headings.append((int(tag.name[1]), _clean(tag.get_text(" "))))
            tag.replace_with(NavigableString("\n" + _MARK.format(n) + "\n"))
        if not title:
            title = next((name for level, name in headings if level == 1 and name), path.stem)

        meta = {"encoding": encoding} if encoding != "utf-8" else {}
        parts = _MARK_RE.split(soup.get_text())
        docs: list[RawDocument] = []

        def emit(section: str, heading: str, body: str) -> None:
            body = _clean(body)
            if not body:  # a heading with no text of its own
                return
            text = f"{heading}\n{body}" if heading else body
            docs.append(
                RawDocument(
                    text=text,
                    source=path.as_posix(),
                    title=title,
                    section=section,
                    key=f"section {len(docs)}",
                    kind="html",
                    metadata=dict(meta),
                )
            )

        emit("", "", parts[0])
        stack: list[tuple[int, str]] = []
        for i in range(1, len(parts), 2):
            level, name = headings[int(parts[i])]
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, name))
            emit(" > ".join(s for _, s in stack), name, parts[i + 1])
        return Loaded(docs)
