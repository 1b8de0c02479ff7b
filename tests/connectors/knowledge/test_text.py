from __future__ import annotations

import pytest

from connectors.knowledge import LoadError, TextLoader, read_text


def test_text_file_is_one_document(tmp_path) -> None:
    path = tmp_path / "hours.txt"
    path.write_text("\n  Open 9 to 5.\n\n")
    (doc,) = TextLoader().load(path).documents
    assert (doc.text, doc.title, doc.section, doc.metadata) == ("Open 9 to 5.", "hours", "", {})


def test_empty_text_file_gives_nothing(tmp_path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("  \n")
    assert TextLoader().load(path).documents == []


def test_utf8_bom_is_dropped(tmp_path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffcafé".encode())
    assert read_text(path) == ("café", "utf-8")


def test_cp1252_fallback_is_recorded(tmp_path) -> None:
    path = tmp_path / "win.txt"
    path.write_bytes("Caf\u00e9 \u20ac5".encode("cp1252"))
    assert read_text(path) == ("Café €5", "cp1252")
    assert TextLoader().load(path).documents[0].metadata == {"encoding": "cp1252"}


def test_undecodable_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "odd.txt"
    path.write_bytes(b"ok \xff\x81\x8d")  # invalid UTF-8, and 0x81 is undefined in cp1252
    with pytest.raises(LoadError, match=r"odd\.txt: is neither UTF-8 \(byte 3\) nor cp1252 \(byte 4\)"):
        read_text(path)


def test_binary_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes("hello".encode("utf-16"))
    with pytest.raises(LoadError, match=r"utf16\.txt: contains NUL bytes"):
        TextLoader().load(path)


def test_unreadable_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "folder.txt"
    path.mkdir()  # reading a directory fails for every user, root included
    with pytest.raises(LoadError, match=r"folder\.txt: cannot be read"):
        read_text(path)
