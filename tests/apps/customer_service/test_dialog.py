"""Dialog state: turns and states, the session stores (one contract for SQLite and Redis), condensing."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable

from apps.customer_service.dialog import DialogState, Turn, condense, is_follow_up
from apps.customer_service.sessions import (
    REDIS_KEY_PREFIX,
    RedisSessionStore,
    SessionStore,
    SQLSessionStore,
    _Base,
    open_store,
)


def conversation(session_id: str = "s-1") -> DialogState:
    state = DialogState(session_id, intent="lost_or_stolen_card", slots={"card_type": "debit"})
    state.turns.append(Turn("user", "I lost my card", intent="lost_or_stolen_card", confidence=0.93))
    state.turns.append(
        Turn(
            "assistant",
            "Freeze it in the app now.",
            sources=["lost-or-stolen-card#0"],
            handoff="urgent intent",
        )
    )
    return state


# ---------------------------------------------------------------------------------------------
# Turn and DialogState
# ---------------------------------------------------------------------------------------------
def test_state_json_round_trip() -> None:
    state = conversation()
    state.slots["amount"] = {"value": 25.0, "currency": "GBP"}
    again = DialogState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert again.turns[1].sources == ["lost-or-stolen-card#0"]
    assert again.turns[0].created.endswith("+00:00")


def test_history_gives_the_last_n_pairs() -> None:
    state = conversation()
    state.turns.append(Turn("user", "how do I get a new one?"))
    assert state.history(2) == [
        ("assistant", "Freeze it in the app now."),
        ("user", "how do I get a new one?"),
    ]
    assert state.history() == state.history(10) == [(t.role, t.text) for t in state.turns]
    assert state.history(0) == []
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        state.history(-1)


def test_created_is_normalised_to_utc() -> None:
    turn = Turn("user", "hi", created="2026-11-18T12:00:00+01:00")
    assert turn.created == "2026-11-18T11:00:00.000000+00:00"
    with pytest.raises(ValueError, match="has no time zone"):
        Turn("user", "hi", created="2026-11-18T12:00:00")
    with pytest.raises(ValueError, match="not an ISO 8601 date-time"):
        Turn("user", "hi", created="yesterday")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "system"}, "turn role must be one of"),
        ({"text": None}, "turn text must be a string"),
        ({"confidence": 1.2}, "turn confidence must be None or a number within 0-1"),
        ({"confidence": float("nan")}, "turn confidence"),
        ({"sources": "doc-1"}, "turn sources must be a list"),
        ({"intent": ""}, "turn intent must be None or a string"),
        ({"id": "has space"}, "turn id must be"),
    ],
)
def test_bad_turns_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Turn(**{"role": "user", "text": "hi", **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize("session_id", ["", "a" * 129, "has space", "semi;colon", "slash/", None, 7])
def test_bad_session_ids_are_refused(session_id: object) -> None:
    with pytest.raises(ValueError, match="session id must be 1-128 characters"):
        DialogState(session_id)  # type: ignore[arg-type]


def test_good_session_ids() -> None:
    for session_id in ["a", "A" * 128, "web:2026-11-18.abc_DEF-1"]:
        assert DialogState(session_id).session_id == session_id


def test_from_dict_names_unknown_and_missing_fields() -> None:
    with pytest.raises(ValueError, match="unknown session fields: colour"):
        DialogState.from_dict({"session_id": "x", "colour": "blue"})
    with pytest.raises(ValueError, match="session is missing session_id"):
        DialogState.from_dict({"turns": []})
    with pytest.raises(ValueError, match="turn is missing text"):
        DialogState.from_dict({"session_id": "x", "turns": [{"role": "user"}]})


# ---------------------------------------------------------------------------------------------
# The store contract, for every backend
# ---------------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    if request.param == "sqlite":
        backend: SessionStore = SQLSessionStore(f"sqlite:///{tmp_path / 'db' / 'sessions.db'}")
    else:
        backend = RedisSessionStore(request.getfixturevalue("redis_url"), ttl_seconds=600)
    yield backend
    backend.close()


def test_unknown_session_loads_empty_and_is_not_listed(store: SessionStore) -> None:
    state = store.load("never-seen")
    assert (
        state.session_id == "never-seen" and state.turns == [] and state.slots == {} and state.intent is None
    )
    assert store.list_sessions() == []


def test_save_then_load_round_trips(store: SessionStore) -> None:
    state = conversation()
    state.slots["amount"] = {"value": 1250.5, "currency": "EUR"}
    store.save(state)
    loaded = store.load("s-1")
    assert loaded.to_dict() == state.to_dict()
    assert [t.id for t in loaded.turns] == [t.id for t in state.turns]


def test_saving_again_adds_only_new_turns(store: SessionStore) -> None:
    state = conversation()
    store.save(state)
    store.save(state)
    state.turns.append(Turn("user", "how do I get a new one?"))
    store.save(state)
    assert store.load("s-1").history() == state.history()


def test_stale_copies_lose_no_turns_and_fields_are_last_writer_wins(store: SessionStore) -> None:
    store.save(conversation())
    first, second = store.load("s-1"), store.load("s-1")
    first.turns.append(Turn("user", "from the first request"))
    first.intent = "card_arrival"
    second.turns.append(Turn("user", "from the second request"))
    second.slots = {"merchant": "Tesco"}
    store.save(first)
    store.save(second)
    loaded = store.load("s-1")
    assert [text for _, text in loaded.history()][-2:] == [
        "from the first request",
        "from the second request",
    ]
    assert len(loaded.turns) == 4
    assert loaded.intent == "lost_or_stolen_card"  # the second save carried the intent it had loaded
    assert loaded.slots == {"merchant": "Tesco"}


def test_two_threads_appending_to_one_session_lose_nothing(store: SessionStore) -> None:
    per_thread = 20
    errors: list[BaseException] = []

    def chat(name: str) -> None:
        try:
            for i in range(per_thread):
                state = store.load("busy")
                state.turns.append(Turn("user", f"{name}-{i}"))
                store.save(state)
        except BaseException as err:  # surfaced below; a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=chat, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    texts = [text for _, text in store.load("busy").history()]
    assert sorted(texts) == sorted(f"{n}-{i}" for n in ("a", "b") for i in range(per_thread))
    for name in ("a", "b"):  # each thread's turns keep their order
        assert [t for t in texts if t.startswith(name)] == [f"{name}-{i}" for i in range(per_thread)]


def test_delete_and_list_sessions(store: SessionStore) -> None:
    for session_id in ("old", "middle", "new"):
        store.save(conversation(session_id))
    assert store.list_sessions() == ["new", "middle", "old"]
    assert store.list_sessions(limit=2) == ["new", "middle"]
    store.save(store.load("old"))  # saving again makes it the most recent
    assert store.list_sessions(1) == ["old"]
    store.delete("middle")
    store.delete("middle")  # unknown: no error
    assert store.list_sessions() == ["old", "new"]
    assert store.load("middle").turns == []
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        store.list_sessions(0)


def test_store_refuses_bad_ids_and_unserialisable_slots(store: SessionStore) -> None:
    for call in (store.load, store.delete):
        with pytest.raises(ValueError, match="session id must be"):
            call("bad id")
    state = conversation()
    state.slots["when"] = object()
    with pytest.raises(ValueError, match="slots of session s-1 are not JSON-serialisable"):
        store.save(state)
    assert store.list_sessions() == []


# ---------------------------------------------------------------------------------------------
# Backend specifics
# ---------------------------------------------------------------------------------------------
def test_sqlite_persists_across_store_instances(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    first = SQLSessionStore(url)
    first.save(conversation())
    first.close()
    second = SQLSessionStore(url)
    assert second.load("s-1").history() == conversation().history()
    second.close()


def test_models_compile_for_postgresql() -> None:
    ddl = [
        str(CreateTable(table).compile(dialect=postgresql.dialect()))
        for table in _Base.metadata.sorted_tables
    ]
    assert "CREATE TABLE cs_sessions" in ddl[0] and "JSON" in ddl[0]
    assert "UNIQUE (session_id, position)" in ddl[1]


@pytest.mark.integration
def test_redis_keys_have_the_prefix_and_expire(redis_url: str) -> None:
    store = RedisSessionStore(redis_url, ttl_seconds=120)
    store.save(conversation())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key = f"{REDIS_KEY_PREFIX}s-1"
        raw = client.get(key)
        assert isinstance(raw, str) and json.loads(raw)["session_id"] == "s-1"
        assert 0 < client.ttl(key) <= 120
        client.pexpire(key, 1)  # expire it now
        deadline = time.monotonic() + 5
        while client.exists(key) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.load("s-1").turns == []
        assert store.list_sessions() == []  # the index entry of the expired session is pruned
        assert client.zcard("fathom:cs:sessions") == 0
    finally:
        client.close()
        store.close()


def test_redis_store_validates_ttl() -> None:
    with pytest.raises(ValueError, match="ttl_seconds must be a positive integer or None"):
        RedisSessionStore("redis://127.0.0.1:1/0", ttl_seconds=0)


def test_open_store_picks_the_backend_by_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    default = open_store(None)
    assert isinstance(default, SQLSessionStore)
    default.save(conversation())
    assert (tmp_path / "cache" / "cs" / "sessions.db").is_file()
    default.close()
    assert isinstance(open_store(f"sqlite:///{tmp_path / 'x.db'}"), SQLSessionStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisSessionStore)  # connects lazily
    assert isinstance(open_store("rediss://127.0.0.1:1/0"), RedisSessionStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@host/db", "unknown session store URL scheme 'mysql'"),
        ("postgres://u:p@host/db", "SQLAlchemy spells it postgresql://"),
        ("sessions.db", "must look like scheme://"),
        ("", "must look like scheme://"),
    ],
)
def test_open_store_names_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_open_store_postgresql_needs_a_driver() -> None:
    url = "postgresql://user:secret@127.0.0.1:1/fathom"
    driver = make_url(url).get_dialect().driver  # SQLAlchemy's default PostgreSQL driver
    if importlib.util.find_spec(driver) is None:
        with pytest.raises(ImportError, match=f"needs the driver '{driver}'"):
            open_store(url)
    else:  # the engine connects lazily, so with a driver the store is built without a server
        assert isinstance(open_store(url), SQLSessionStore)


# ---------------------------------------------------------------------------------------------
# Condensing follow-up questions
# ---------------------------------------------------------------------------------------------
LOST_CARD = [("user", "I lost my card yesterday"), ("assistant", "Freeze it in the app straight away.")]


@pytest.mark.parametrize(
    ("history", "question", "expected"),
    [
        (LOST_CARD, "how do I get a new one?", "I lost my card yesterday: how do I get a new one?"),
        (LOST_CARD, "how long will it take?", "I lost my card yesterday: how long will it take?"),
        (
            LOST_CARD,
            "Can I still use it with Apple Pay?",
            "I lost my card yesterday: Can I still use it with Apple Pay?",
        ),
        (LOST_CARD, "how long?", "I lost my card yesterday: how long?"),
        (
            [("user", "How do I top up by bank transfer?"), ("assistant", "Use your account number.")],
            "what about Apple Pay?",
            "How do I top up by bank transfer: what about Apple Pay?",
        ),
        (
            [
                ("user", "Hi there. My transfer to my landlord is still pending."),
                ("assistant", "It can take a day."),
            ],
            "why is that?",
            "My transfer to my landlord is still pending: why is that?",
        ),
        (  # the last user message was a follow-up itself: the topic comes from the one before
            [*LOST_CARD, ("user", "how do I get a new one?"), ("assistant", "Order it in the app.")],
            "and how much does that cost?",
            "I lost my card yesterday: and how much does that cost?",
        ),
    ],
)
def test_follow_ups_become_standalone(history: list[tuple[str, str]], question: str, expected: str) -> None:
    assert condense(history, question) == expected


@pytest.mark.parametrize(
    "question",
    [
        "Is it possible to change my PIN?",  # the empty "it", and a topic of its own
        "How do I top up by bank transfer?",
        "When will I get my money back?",
        "thanks!",
        "ok great, thank you",
        "",
    ],
)
def test_standalone_questions_are_unchanged(question: str) -> None:
    assert condense(LOST_CARD, question) == question


def test_nothing_to_lean_on() -> None:
    assert condense([], "how long will it take?") == "how long will it take?"
    assert condense([("assistant", "Hello! How can I help?")], "and that?") == "and that?"
    # The caller may already have appended the question to the history.
    assert condense([*LOST_CARD, ("user", "how long?")], "how long?") == "I lost my card yesterday: how long?"


def test_is_follow_up() -> None:
    assert is_follow_up("what about a virtual one?")
    assert is_follow_up("can you cancel that?")
    assert not is_follow_up("I want to cancel a transfer I made to my sister yesterday")


def test_condense_names_bad_history() -> None:
    with pytest.raises(ValueError, match="history items must be"):
        condense([("system", "x")], "why?")
    with pytest.raises(ValueError, match="history items must be"):
        condense(["just text"], "why?")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="question must be a string"):
        condense([], None)  # type: ignore[arg-type]
