"""Walking a folder of knowledge-base files: recursive, sorted, hidden files ignored.

Files whose suffix no loader handles, or whose loader cannot run here, are listed as skipped
with the reason, so a user sees why a file did not make it into the index.
"""

from __future__ import annotations

from pathlib import Path

from connectors.knowledge.base import Loader, LoaderRegistry


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` or a folder between it and ``root`` starts with a dot (``.git``, ``.DS_Store``)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def walk_folder(
    root: Path, registry: LoaderRegistry
) -> tuple[list[tuple[Path, Loader]], list[tuple[str, str]]]:
    """The files under ``root`` that a registered, available loader can read.

    Args:
        root: the folder.
        registry: loaders by suffix.

    Returns:
        ``(files, skipped)``: ``(path, loader)`` pairs sorted by path, and ``(path, reason)``
        for every other non-hidden file.
    """
    files: list[tuple[Path, Loader]] = []
    skipped: list[tuple[str, str]] = []
    # Sorting by the relative POSIX path gives the same order (and so the same output) on every OS.
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if is_hidden(path, root) or not path.is_file():
            continue
        loader = registry.for_path(path)
        if loader is None:
            suffix = path.suffix or "(none)"
            reason = f"no loader for suffix {suffix!r} (supported: {', '.join(registry.suffixes)})"
            skipped.append((path.as_posix(), reason))
            continue
        ok, why = loader.available()
        if not ok:
            skipped.append((path.as_posix(), f"{type(loader).__name__} is not available: {why}"))
            continue
        files.append((path, loader))
    return files, skipped
