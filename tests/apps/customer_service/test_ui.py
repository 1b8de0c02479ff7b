"""The customer-service chat page and the multipage app, with Streamlit's AppTest.

A fake assistant (swapped in through ``ui.assistant_factory``) tests the page's widgets; one
end-to-end test runs the real assistant.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from apps.customer_service import ui
from apps.customer_service.schemas import SESSION_ID, AskResult, HandoffOut, Intent, Source
from apps.ui import main_path, streamlit_command

APP = main_path()


class FakeConfig:
    index = "/srv/fathom/kb-index"


class FakeAssistant:
    """Hands off (urgent) on "stolen", (not urgent) on "human"; rejects "reject"; fails on "crash"."""

    config = FakeConfig()

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def ask(self, question: str, session_id: str | None = None) -> AskResult:
        self.calls.append((question, session_id))
        if "reject" in question:
            raise ValueError("the message has no question in it")
        if "crash" in question:
            raise RuntimeError("index file /srv/secret is corrupt")
        handoff = None
        if "stolen" in question:
            handoff = HandoffOut(reason="a stolen card is urgent", code="urgent")
        elif "human" in question:
            handoff = HandoffOut(reason="you asked for a person", code="requested")
        return AskResult(
            answer="Freeze the card in the app; a replacement costs $5.",
            sources=[
                Source(
                    id="lost#0",
                    title="Lost or stolen card",
                    source="lost-or-stolen-card.md",
                    score=0.8123,
                    text="Freeze your card from the Cards tab.",
                ),
                Source(
                    id="fees#1",
                    title="Card fees",
                    source="card-payment-fees.md",
                    score=0.4,
                    text="Replacement cards cost 5 dollars.",
                ),
            ],
            intent=Intent(label="lost_or_stolen_card", confidence=0.87),
            handoff=handoff,
            session_id=session_id,
        )

    def history(self, session_id: str) -> list[dict[str, Any]]:
        return []


def _page() -> None:
    from apps.customer_service import ui

    ui.render()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAssistant]:
    fake = FakeAssistant()
    monkeypatch.setattr(ui, "assistant_factory", lambda: fake)
    ui.reset_assistant()
    yield fake
    ui.reset_assistant()


def page() -> AppTest:
    return AppTest.from_function(_page, default_timeout=30).run()


def say(at: AppTest, text: str) -> AppTest:
    return at.chat_input(key="cs_question").set_value(text).run()


def test_a_question_shows_answer_intent_and_sources(fake: FakeAssistant) -> None:
    at = say(page(), "I lost my card")
    assert not at.exception
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    user, reply = at.chat_message
    assert user.markdown[0].value == "I lost my card"
    assert reply.markdown[0].value == r"Freeze the card in the app; a replacement costs \$5."
    assert "Intent: lost_or_stolen_card (confidence 87%)" in [c.value for c in reply.caption]
    [sources] = reply.expander
    assert sources.label == "Sources (2)"
    texts = [m.value for m in sources.markdown]
    assert texts[0] == "**1. Lost or stolen card** · `lost-or-stolen-card.md` · score 0.812"
    assert texts[1] == "Freeze your card from the Cards tab."
    assert "**2. Card fees**" in texts[2]
    assert not reply.warning and not reply.error


def test_the_session_id_is_per_browser_and_kept_across_turns(fake: FakeAssistant) -> None:
    at = say(say(page(), "I lost my card"), "and the fee?")
    (_, first), (_, second) = fake.calls
    assert first == second == at.session_state[ui.SESSION_KEY] and SESSION_ID.match(first)
    assert len(at.chat_message) == 4
    other = say(page(), "hello")  # another browser session
    assert fake.calls[-1][1] != first and other.session_state[ui.SESSION_KEY] != first


def test_urgent_handoff_is_a_red_banner_with_the_reason(fake: FakeAssistant) -> None:
    reply = say(page(), "my card was stolen").chat_message[1]
    assert [e.value for e in reply.error] == ["Handed over to a human agent: a stolen card is urgent"]
    assert not reply.warning


def test_other_handoff_is_a_warning_banner(fake: FakeAssistant) -> None:
    reply = say(page(), "let me talk to a human").chat_message[1]
    assert [w.value for w in reply.warning] == ["Handed over to a human agent: you asked for a person"]
    assert reply.markdown[0].value.startswith("Freeze the card")


def test_new_conversation_clears_history_and_changes_the_session(fake: FakeAssistant) -> None:
    at = say(page(), "I lost my card")
    old = at.session_state[ui.SESSION_KEY]
    at = at.sidebar.button(key="cs_new_conversation").click().run()
    assert len(at.chat_message) == 0
    assert at.session_state[ui.MESSAGES_KEY] == [] and at.session_state[ui.SESSION_KEY] != old
    say(at, "hello again")
    assert fake.calls[-1][1] == at.session_state[ui.SESSION_KEY]


def test_sidebar_shows_the_index_in_use(fake: FakeAssistant) -> None:
    captions = [c.value for c in page().sidebar.caption]
    assert "Index: `/srv/fathom/kb-index`" in captions


def test_assistant_errors_are_shown_without_internals(fake: FakeAssistant) -> None:
    at = say(page(), "please reject this")
    assert at.chat_message[1].error[0].value == (
        "The assistant could not take this message: the message has no question in it"
    )
    at = say(at, "crash now")
    assert at.chat_message[3].error[0].value == "Sorry, something went wrong answering. Please try again."
    assert "/srv/secret" not in str([e.value for e in at.error]) and not at.exception


def test_a_blank_message_is_refused_before_the_assistant(fake: FakeAssistant) -> None:
    at = say(page(), "   ")
    assert fake.calls == [] and len(at.chat_message) == 0
    assert at.error[0].value == "Cannot send this message: question is empty"


def test_an_assistant_that_fails_to_load_shows_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> FakeAssistant:
        raise FileNotFoundError("/secret/index")

    monkeypatch.setattr(ui, "assistant_factory", broken)
    ui.reset_assistant()
    at = page()
    assert at.error[0].value.startswith("The assistant could not be loaded (FileNotFoundError)")
    assert "/secret" not in at.error[0].value and len(at.chat_input) == 0
    ui.reset_assistant()


def test_the_assistant_is_built_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    monkeypatch.setattr(ui, "assistant_factory", lambda: builds.append(1) or FakeAssistant())
    ui.reset_assistant()
    say(page(), "one")
    say(page(), "two")
    assert builds == [1]
    ui.reset_assistant()


def test_home_page_says_what_is_loaded(fake: FakeAssistant) -> None:
    home = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not home.exception
    assert home.title[0].value == "Fathom"
    assert home.info[0].value.startswith("Customer-service assistant: not loaded yet")
    page()  # a visit to the customer-service page loads it
    home = AppTest.from_file(str(APP), default_timeout=30).run()
    assert home.success[0].value == "Customer-service assistant: loaded, index `/srv/fathom/kb-index`"


def test_the_ui_command_runs_the_entry_script() -> None:
    command = streamlit_command("0.0.0.0", 8600)
    assert command[1:5] == ["-m", "streamlit", "run", str(APP)] and APP.is_file()
    assert command[command.index("--server.port") + 1] == "8600"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    with pytest.raises(ValueError, match="port must be"):
        streamlit_command(port=0)


@pytest.mark.slow
def test_end_to_end_with_the_real_assistant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        importlib.import_module("apps.customer_service.assistant")
    except ImportError as exc:
        pytest.skip(f"apps.customer_service.assistant not available yet ({exc})")
    from apps.customer_service.intents import default_router_dir

    if not (default_router_dir() / "model.safetensors").is_file():
        pytest.skip("needs the shipped intent router in models/intent-router")
    monkeypatch.setenv("FATHOM_CS_SESSIONS", f"sqlite:///{tmp_path / 'sessions.db'}")
    monkeypatch.setattr(ui, "assistant_factory", ui.default_assistant)
    ui.reset_assistant()
    try:
        at = AppTest.from_function(_page, default_timeout=600).run()
        assert not at.exception and not at.error
        at = at.chat_input(key="cs_question").set_value("I lost my card, what should I do?").run()
        assert not at.exception
        reply = at.chat_message[1]
        assert reply.name == "assistant" and reply.markdown[0].value.strip()
        assert any(c.value.startswith("Intent: ") for c in reply.caption)
        assert reply.expander and reply.expander[0].label.startswith("Sources (")
        assert any("lost" in m.value.lower() for m in reply.expander[0].markdown)
    finally:
        ui.reset_assistant()
