"""The customer-service chat page (Streamlit): widgets and calls to the assistant, nothing else.

Each browser session keeps its own conversation in ``st.session_state`` (its messages and a
session id the assistant uses to tie turns together). A reply shows the answer, a hand-off banner
when a human takes over (red when urgent), the intent and its confidence, and the cited passages
in an expander. The assistant is built once per process (``st.cache_resource``) by
``assistant_factory``, which a test or a deployment can replace before the page runs.

Run alone with ``streamlit run apps/customer_service/ui.py``, or as a page of ``apps/ui/app.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import streamlit as st
from pydantic import ValidationError

from apps.customer_service.schemas import MAX_QUESTION_CHARS, AskRequest, AskResult

MESSAGES_KEY = "cs_messages"
SESSION_KEY = "cs_session_id"

_log = logging.getLogger(__name__)


def default_assistant() -> Any:
    """The assistant with its default configuration (the shipped knowledge base)."""
    from apps.customer_service.assistant import Assistant, AssistantConfig

    return Assistant.from_config(AssistantConfig())


# What ``load_assistant`` builds; replace it (then call ``reset_assistant()``) to serve another.
assistant_factory: Callable[[], Any] = default_assistant
# What has been loaded in this process, for the home page: {"index": ...} once the assistant is built.
_loaded: dict[str, str] = {}


@st.cache_resource(show_spinner="Loading the customer-service assistant (index and intent router)...")
def load_assistant() -> Any:
    """The assistant ``assistant_factory`` builds, once per process (a failed build is retried)."""
    _loaded.clear()
    assistant = assistant_factory()
    _loaded["index"] = index_in_use(assistant)
    return assistant


def reset_assistant() -> None:
    """Drop the cached assistant: the next page run builds a fresh one (after a re-index, a new factory)."""
    load_assistant.clear()
    _loaded.clear()


def loaded_info() -> dict[str, str]:
    """``{"index": ...}`` once this process has built the assistant; empty before."""
    return dict(_loaded)


def index_in_use(assistant: Any) -> str:
    """The index folder the assistant searches (``assistant.config.index``; None: the shipped KB)."""
    index = getattr(getattr(assistant, "config", None), "index", None)
    if index:
        return str(index)
    from apps.customer_service.service import default_index_dir

    return f"shipped knowledge base ({default_index_dir()})"


def new_session_id() -> str:
    """A fresh conversation id (matches ``schemas.SESSION_ID``)."""
    return f"ui-{uuid.uuid4().hex}"


def start_new_conversation() -> None:
    """Forget this browser's messages and start a conversation with a new id."""
    st.session_state[SESSION_KEY] = new_session_id()
    st.session_state[MESSAGES_KEY] = []


def _md(text: str) -> str:
    """``text`` for ``st.markdown``: a dollar sign would otherwise start LaTeX ("$5 ... $10")."""
    return text.replace("$", r"\$")


def show_reply(result: AskResult) -> None:
    """One assistant reply: hand-off banner, answer, intent, cited sources."""
    if result.handoff is not None:
        banner = st.error if result.handoff.code == "urgent" else st.warning
        banner(f"Handed over to a human agent: {result.handoff.reason}", icon=":material/support_agent:")
    st.markdown(_md(result.answer))
    st.caption(f"Intent: {result.intent.label} (confidence {result.intent.confidence:.0%})")
    if result.sources:
        with st.expander(f"Sources ({len(result.sources)})"):
            for rank, source in enumerate(result.sources, 1):
                title, where = _md(source.title or source.id), source.source or "unknown file"
                st.markdown(f"**{rank}. {title}** · `{where}` · score {source.score:.3f}")
                st.markdown(_md(source.text))


def _show(message: dict[str, Any]) -> None:
    with st.chat_message(message["role"]):
        if message["role"] == "user":
            st.markdown(_md(message["text"]))
        elif "result" in message:
            show_reply(message["result"])
        else:
            st.error(message["text"])


def _ask(assistant: Any, question: str) -> None:
    """Validate ``question``, show it, ask the assistant and show (and keep) the reply."""
    state = st.session_state
    try:
        request = AskRequest(question=question, session_id=state[SESSION_KEY])
    except ValidationError as exc:
        st.error(f"Cannot send this message: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
        return
    user = {"role": "user", "text": request.question}
    state[MESSAGES_KEY].append(user)
    _show(user)
    try:
        with st.spinner("Looking it up..."):
            result = assistant.ask(request.question, session_id=request.session_id)
    except ValueError as exc:
        reply: dict[str, Any] = {
            "role": "assistant",
            "text": f"The assistant could not take this message: {exc}",
        }
    except Exception:
        _log.exception("the assistant failed to answer")
        reply = {"role": "assistant", "text": "Sorry, something went wrong answering. Please try again."}
    else:
        reply = {"role": "assistant", "result": result}
        if result.session_id:  # the assistant may have assigned or normalised the id
            state[SESSION_KEY] = result.session_id
    state[MESSAGES_KEY].append(reply)
    _show(reply)


def render() -> None:
    """The page: sidebar (new conversation, session, index), the conversation, the chat input."""
    state = st.session_state
    if SESSION_KEY not in state or MESSAGES_KEY not in state:
        start_new_conversation()
    st.title("Customer service")
    st.caption("Answers from the bank's help centre, with the passages they come from.")
    try:
        assistant = load_assistant()
    except Exception as exc:
        _log.exception("loading the customer-service assistant failed")
        st.error(
            f"The assistant could not be loaded ({type(exc).__name__}); see the server log. Reload to retry."
        )
        return
    with st.sidebar:
        st.button("New conversation", key="cs_new_conversation", on_click=start_new_conversation)
        st.caption(f"Conversation: `{state[SESSION_KEY]}`")
        st.caption(f"Index: `{index_in_use(assistant)}`")
    for message in state[MESSAGES_KEY]:
        _show(message)
    question = st.chat_input(
        "Ask about cards, payments, transfers...", key="cs_question", max_chars=MAX_QUESTION_CHARS
    )
    if question:
        _ask(assistant, question)


if __name__ == "__main__":
    render()
