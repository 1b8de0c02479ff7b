"""CSV FAQs: one document per row.

``text_column`` (default ``answer``) holds the text; ``title_column`` and ``id_column`` are
optional; every other non-empty cell becomes metadata under its column name. Rows that cannot
become a document (empty text, empty or repeated id, too many cells) are returned as rejected
with their row number, never dropped silently. Rows are numbered as a spreadsheet shows them:
the header is row 1.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from connectors.knowledge.base import Loaded, LoadError, RawDocument, read_text, safe_metadata


class CsvLoader:
    """Loads ``.csv`` files (UTF-8, or cp1252 as a fallback), one ``RawDocument`` per row.

    Args:
        text_column: the column with each row's text.
        title_column: an optional column with each row's title (default: the file stem).
        id_column: an optional column with a stable id per row; otherwise ids are hashed
            from the file and row number.
    """

    suffixes: tuple[str, ...] = (".csv",)

    def __init__(
        self, text_column: str = "answer", title_column: str | None = None, id_column: str | None = None
    ):
        self.text_column = text_column
        self.title_column = title_column
        self.id_column = id_column

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, path: Path) -> Loaded:
        """Read ``path``.

        Args:
            path: the CSV file.

        Raises:
            LoadError: unreadable, undecodable, no header, or a named column is missing.
        """
        text, encoding = read_text(path)
        try:
            # newline="" keeps line breaks inside quoted cells intact, as the csv module requires.
            rows = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as err:
            raise LoadError(path, f"is not valid CSV ({err})") from err
        if not rows:
            raise LoadError(path, "is empty: expected a header row")
        header = [name.strip() for name in rows[0]]
        for role, column in (
            ("text", self.text_column),
            ("title", self.title_column),
            ("id", self.id_column),
        ):
            if column is not None and column not in header:
                present = ", ".join(repr(h) for h in header if h) or "none"
                raise LoadError(path, f"has no {role} column {column!r}; columns present: {present}")

        named = {self.text_column, self.title_column, self.id_column}
        loaded = Loaded()
        seen_ids: dict[str, int] = {}
        for number, cells in enumerate(rows[1:], start=2):
            where = f"{path.as_posix()} row {number}"
            if not any(cell.strip() for cell in cells):
                continue  # a blank line holds no record (the csv module yields it as [] or [""])
            if len(cells) > len(header):
                loaded.rejected.append((where, f"has {len(cells)} cells but the header has {len(header)}"))
                continue
            row = dict(zip(header, (c.strip() for c in cells), strict=False))
            body = row.get(self.text_column, "")
            if not body:
                loaded.rejected.append((where, f"empty text column {self.text_column!r}"))
                continue
            doc_id = None
            if self.id_column is not None:
                doc_id = row.get(self.id_column, "")
                if not doc_id:
                    loaded.rejected.append((where, f"empty id column {self.id_column!r}"))
                    continue
                if doc_id in seen_ids:
                    loaded.rejected.append((where, f"id {doc_id!r} already used on row {seen_ids[doc_id]}"))
                    continue
                seen_ids[doc_id] = number
            title = (row.get(self.title_column) or "") if self.title_column else ""
            extra = {k: v for k, v in row.items() if k and k not in named and v}
            meta = safe_metadata(extra) | {"row": number}
            if encoding != "utf-8":
                meta["encoding"] = encoding
            loaded.documents.append(
                RawDocument(
                    text=body,
                    source=path.as_posix(),
                    title=title or path.stem,
                    section="",
                    key=f"row {number}",
                    kind="csv",
                    metadata=meta,
                    doc_id=doc_id,
                )
            )
        return loaded
