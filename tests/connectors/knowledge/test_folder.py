from __future__ import annotations

import pytest

from connectors.knowledge import LoaderRegistry, LoadError, TextLoader, default_registry, load_path
from connectors.knowledge.folder import walk_folder


def _kb(root):
    (root / "cards").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "cards" / "lost.md").write_text("# Lost card\n\nCall us.\n\n## Abroad\n\nCall +1.\n")
    (root / "faq.csv").write_text("question,answer\nHours?,9 to 5\nFees?,\n")
    (root / "about.txt").write_text("A bank.")
    (root / "help.HTML").write_text("<h1>Help</h1><p>Ask us.</p>")
    (root / "logo.png").write_bytes(b"\x89PNG")
    (root / "README").write_text("no suffix")
    (root / "empty.txt").write_text("\n")
    (root / ".hidden.md").write_text("# secret")
    (root / ".git" / "config.txt").write_text("x")
    return root


def test_walk_is_recursive_sorted_and_lists_skipped(tmp_path) -> None:
    root = _kb(tmp_path / "kb")
    files, skipped = walk_folder(root, default_registry())
    rel = [p.relative_to(root).as_posix() for p, _ in files]
    assert rel == ["about.txt", "cards/lost.md", "empty.txt", "faq.csv", "help.HTML"]
    supported = ".csv, .htm, .html, .markdown, .md, .pdf, .text, .txt"
    assert skipped == [
        (f"{root.as_posix()}/README", f"no loader for suffix '(none)' (supported: {supported})"),
        (f"{root.as_posix()}/logo.png", f"no loader for suffix '.png' (supported: {supported})"),
    ]


def test_load_path_folder(tmp_path) -> None:
    root = _kb(tmp_path / "kb")
    result = load_path(root)
    sources = [(d.metadata["source"], d.metadata["section"]) for d in result.documents]
    assert sources == [
        (f"{root.as_posix()}/about.txt", ""),
        (f"{root.as_posix()}/cards/lost.md", "Lost card"),
        (f"{root.as_posix()}/cards/lost.md", "Lost card > Abroad"),
        (f"{root.as_posix()}/faq.csv", ""),
        (f"{root.as_posix()}/help.HTML", "Help"),
    ]
    assert [p for p, _ in result.skipped] == [
        f"{root.as_posix()}/README",
        f"{root.as_posix()}/logo.png",
        f"{root.as_posix()}/empty.txt",
    ]
    assert result.skipped[-1][1] == "no text found"
    assert result.rejected == [(f"{root.as_posix()}/faq.csv row 3", "empty text column 'answer'")]
    assert len({d.id for d in result.documents}) == len(result.documents)


def test_ids_are_stable_across_loads(tmp_path, make_pdf) -> None:
    root = _kb(tmp_path / "kb")
    make_pdf(root / "fees.pdf", [["Fees page one"], ["Fees page two"]])
    first, second = load_path(root), load_path(root)
    assert [d.id for d in first.documents] == [d.id for d in second.documents]
    assert [d.to_dict() for d in first.documents] == [d.to_dict() for d in second.documents]
    # editing one file leaves the other files' ids alone
    (root / "about.txt").write_text("A different bank.")
    third = load_path(root)
    assert [d.id for d in third.documents] == [d.id for d in first.documents]


def test_several_paths_and_duplicates(tmp_path) -> None:
    root = _kb(tmp_path / "kb")
    (tmp_path / "more.csv").write_text("id,answer\nq1,One\n")
    (tmp_path / "again.csv").write_text("id,answer\nq1,Other\n")
    result = load_path(
        [root / "cards" / "lost.md", root / "cards", tmp_path / "more.csv", tmp_path / "again.csv"],
        id_column="id",
    )
    # lost.md is loaded once although named twice (directly and through its folder)
    sources = [d.metadata["source"] for d in result.documents]
    assert sources == [(root / "cards" / "lost.md").as_posix()] * 2 + [(tmp_path / "more.csv").as_posix()]
    assert [d.id for d in result.documents][-1] == "q1#0"
    assert result.rejected == [
        (
            f"{(tmp_path / 'again.csv').as_posix()} row 2",
            f"id 'q1' already used by {(tmp_path / 'more.csv').as_posix()} row 2",
        )
    ]


def test_missing_path_is_named(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no such file or folder: '.*nope.md'"):
        load_path([tmp_path / "a.txt", tmp_path / "nope.md"])
    with pytest.raises(ValueError, match="at least one file or folder"):
        load_path([])


def test_explicit_file_with_unknown_suffix_is_an_error(tmp_path) -> None:
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(LoadError, match=r"x\.docx: no loader for suffix '\.docx' \(supported: \.csv, "):
        load_path(tmp_path / "x.docx")


def test_strict_raises_and_lenient_skips(tmp_path, make_pdf) -> None:
    (tmp_path / "ok.txt").write_text("fine")
    make_pdf(tmp_path / "locked.pdf", [["x"]], password="pw")
    with pytest.raises(LoadError, match=r"locked\.pdf: is encrypted"):
        load_path(tmp_path)
    result = load_path(tmp_path, strict=False)
    assert [d.text for d in result.documents] == ["fine"]
    assert result.skipped == [
        (
            (tmp_path / "locked.pdf").as_posix(),
            "is encrypted with a password; save a decrypted copy and load that",
        )
    ]


class _Unavailable(TextLoader):
    suffixes = (".rtf",)

    def available(self) -> tuple[bool, str]:
        return False, "needs striprtf (pip install striprtf)"


def test_unavailable_loader_is_reported(tmp_path) -> None:
    (tmp_path / "a.rtf").write_text("{\\rtf1 hi}")
    registry = LoaderRegistry([TextLoader(), _Unavailable()])
    result = load_path(tmp_path, registry=registry)
    assert result.skipped == [
        (
            (tmp_path / "a.rtf").as_posix(),
            "_Unavailable is not available: needs striprtf (pip install striprtf)",
        )
    ]
    with pytest.raises(LoadError, match=r"a\.rtf: _Unavailable is not available: needs striprtf"):
        load_path(tmp_path / "a.rtf", registry=registry)


def test_registry_checks_the_protocol() -> None:
    with pytest.raises(TypeError, match="object does not implement the Loader protocol"):
        LoaderRegistry([object()])
    registry = default_registry()
    assert all(registry.for_path(f"x{s}").available() == (True, "") for s in registry.suffixes)
    assert registry.for_path("X.MD") is registry.for_path("y.md")
