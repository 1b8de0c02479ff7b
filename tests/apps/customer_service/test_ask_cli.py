"""``fathom cs ask / intent / intents / train-intents`` end to end, on the shipped router and KB."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from apps.cli import app
from apps.customer_service.intents import default_router_dir

pytestmark = pytest.mark.skipif(
    not (default_router_dir() / "model.safetensors").is_file(),
    reason="needs the shipped intent router in models/intent-router",
)

runner = CliRunner()


def _ask(*args: str) -> dict:
    result = runner.invoke(app, ["cs", "ask", *args, "--json"], env={})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _sessions(tmp_path) -> list[str]:
    return ["--sessions", f"sqlite:///{tmp_path / 'sessions.db'}"]


def test_ask_prints_the_stable_json(tmp_path):
    out = _ask("How long does a new card take to arrive?", *_sessions(tmp_path))
    assert set(out) >= {"answer", "sources", "intent", "handoff"}
    assert out["handoff"] is None
    assert out["intent"]["label"] == "card_arrival" and 0.5 < out["intent"]["confidence"] <= 1.0
    assert out["sources"], out
    for source in out["sources"]:
        assert set(source) == {"id", "title", "source", "score", "text"}
        assert source["text"].strip()
    # Markers number the listed sources: every source is cited and every marker has a source.
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", out["answer"])}
    assert markers == set(range(1, len(out["sources"]) + 1)), (out["answer"], out["sources"])
    assert out["sources"][0]["source"] == "card-not-arrived.md", out["sources"]


def test_session_carries_the_topic_to_a_follow_up(tmp_path):
    first = _ask("I want to change my PIN", "--session", "t-follow", *_sessions(tmp_path))
    assert first["intent"]["label"] == "change_pin"
    second = _ask("can I do it at an ATM?", "--session", "t-follow", *_sessions(tmp_path))
    assert any("PIN" in s["text"] for s in second["sources"]), second["sources"]


def test_urgent_and_requested_handoffs(tmp_path):
    stolen = _ask("my card was stolen this morning", *_sessions(tmp_path))
    assert stolen["intent"]["label"] == "lost_or_stolen_card"
    assert stolen["handoff"] and "urgent" in stolen["handoff"]["reason"]
    assert stolen["sources"]  # the customer still gets the first steps, with citations
    person = _ask("I want to talk to a real person", *_sessions(tmp_path))
    assert person["handoff"] and "person" in person["handoff"]["reason"]


def test_off_topic_question_is_handed_off_not_invented(tmp_path):
    out = _ask("what's a good recipe for lasagne", *_sessions(tmp_path))
    assert out["handoff"] and "retrieval" in out["handoff"]["reason"]
    assert out["sources"] == []


def test_pii_is_masked_before_anything_is_stored(tmp_path):
    card = "4111 1111 1111 1111"
    out = _ask(f"my card {card} was charged twice at Tesco", "--session", "t-pii", *_sessions(tmp_path))
    assert card not in json.dumps(out)
    db = b"".join(p.read_bytes() for p in tmp_path.glob("sessions.db*"))  # the database and its WAL
    assert card.encode() not in db and b"4111111111111111" not in db and b"[CARD]" in db


def test_batch_answers_each_line_in_order(tmp_path):
    batch = tmp_path / "q.txt"
    batch.write_text("How do I activate my card?\nWhat is your exchange rate?\nI want to talk to a person\n")
    result = runner.invoke(app, ["cs", "ask", "--batch", str(batch), "--json", *_sessions(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["intent"]["label"] for line in lines[:2]] == ["activate_my_card", "exchange_rate"]
    assert lines[2]["handoff"] is not None and len(lines) == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["cs", "ask"], "either a QUESTION or --batch"),
        (["cs", "ask", "hi", "--batch", "x.txt"], "either a QUESTION or --batch"),
        (["cs", "ask", "--batch", "missing.txt"], "does not exist"),
        (["cs", "ask", "   "], "question is empty"),
        (["cs", "ask", "hi", "--session", "bad id!"], "session"),
    ],
)
def test_ask_errors_are_one_line(args, message, tmp_path):
    result = runner.invoke(app, [*args, *_sessions(tmp_path)])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_batch_with_an_empty_line_is_refused(tmp_path):
    batch = tmp_path / "q.txt"
    batch.write_text("How do I activate my card?\n\nWhat is your exchange rate?\n")
    result = runner.invoke(app, ["cs", "ask", "--batch", str(batch), "--json"])
    assert result.exit_code == 2 and "line 2 is empty" in result.stderr


def test_intent_and_intents(tmp_path):
    result = runner.invoke(app, ["cs", "intent", "I lost my card on the bus", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["label"] == "lost_or_stolen_card" and len(out["top"]) == 3
    data = tmp_path / "labelled.csv"
    data.write_text(
        "text,category\n"
        "my new card still has not come,card_arrival\n"
        "what rate do you give for dollars,exchange_rate\n"
        "why was I charged a fee for taking out cash,cash_withdrawal_charge\n"
        "my card was stolen,lost_or_stolen_card\n"
    )
    result = runner.invoke(app, ["cs", "intents", "--csv", str(data), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"accuracy", "macro_f1", "n"} and metrics["n"] == 4
    assert metrics["accuracy"] >= 0.75
    data.write_text("text,category\nhello,not_a_banking77_intent\n")
    result = runner.invoke(app, ["cs", "intents", "--csv", str(data), "--json"])
    assert result.exit_code == 2 and "unknown to the router" in result.stderr
