"""Plain-text files (``.txt``): one document per file, titled by the file stem."""

from __future__ import annotations

from pathlib import Path

from connectors.knowledge.base import Loaded, RawDocument, read_text


class TextLoader:
    """Loads ``.txt`` files as UTF-8, falling back to cp1252 (recorded as ``encoding`` metadata)."""

    suffixes: tuple[str, ...] = (".txt", ".text")

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, path: Path) -> Loaded:
        """Read ``path``.

        Args:
            path: the text file.
        """
        text, encoding = read_text(path)
        if not text.strip():
            return Loaded()
        meta = {"encoding": encoding} if encoding != "utf-8" else {}
        doc = RawDocument(
            text=text.strip(), source=path.as_posix(), title=path.stem, key="file", kind="text", metadata=meta
        )
        return Loaded([doc])
