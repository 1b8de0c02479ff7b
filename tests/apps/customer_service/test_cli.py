"""`fathom cs ingest` and `fathom cs search` end to end on real files and the real embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apps.cli import app


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def test_ingest_a_folder_and_a_csv_then_search(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "pin.md").write_text(
        "# Changing your PIN\n\n## At an ATM\n\nInsert your card and choose Change PIN.\n"
    )
    (kb / "notes.bin").write_bytes(b"\x00\x01")
    faq = tmp_path / "faq.csv"
    faq.write_text(
        "question,answer,team\n"
        "How long do transfers take?,Transfers within the UK arrive within two hours.,payments\n"
        "Empty row,,payments\n"
    )
    index = tmp_path / "index"
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["cs", "ingest", str(kb), str(faq), "--index", str(index), "--title-column", "question", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["chunks"] == 2 and report["documents"] == 2
    assert any("notes.bin" in where for where, _ in report["skipped"])
    assert any("row 3" in where for where, _ in report["rejected"])
    result = runner.invoke(app, ["cs", "search", "how do I change my pin", "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["sources"][0]
    assert top["title"] == "Changing your PIN" and "Change PIN" in top["text"]
    human = runner.invoke(app, ["cs", "search", "transfer time", "--index", str(index), "--k", "1"])
    assert human.exit_code == 0 and "How long do transfers take?" in human.stdout


def test_search_builds_the_shipped_knowledge_base_on_first_use() -> None:
    result = CliRunner().invoke(app, ["cs", "search", "I lost my card", "--json", "--k", "3"])
    assert result.exit_code == 0, result.output
    titles = [hit["title"] for hit in json.loads(result.stdout)["sources"]]
    assert any("lost" in title.lower() for title in titles), titles


def test_bad_input_is_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["cs", "ingest", str(tmp_path / "missing"), "--index", str(tmp_path / "i")])
    assert result.exit_code == 2 and "missing" in result.stderr and "Traceback" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["cs", "ingest", str(empty), "--index", str(tmp_path / "i")])
    assert result.exit_code == 2 and "no documents to index" in result.stderr
    result = runner.invoke(app, ["cs", "search", "  ", "--index", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
