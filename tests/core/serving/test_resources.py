"""LazyResource: built once under concurrency, failures remembered and retried, cycles caught."""

from __future__ import annotations

import threading
import time

import pytest

from core.serving import LazyResource, ResourceUnavailable


def test_concurrent_first_callers_share_one_build() -> None:
    builds = []

    def factory() -> object:
        builds.append(threading.get_ident())
        time.sleep(0.05)  # long enough that every thread arrives while the build runs
        return object()

    holder = LazyResource("model", factory)
    start = threading.Barrier(8)
    got: list[object] = []

    def worker() -> None:
        start.wait()
        got.append(holder.get())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(got) == 8 and all(value is got[0] for value in got)
    assert holder.loaded and holder.status()["loaded"] is True
    assert holder.status()["load_seconds"] >= 0.05


def test_nothing_is_built_before_first_use() -> None:
    holder = LazyResource("model", lambda: pytest.fail("built too early"))
    assert not holder.loaded
    assert holder.status() == {"loaded": False, "load_seconds": None, "error": None}


def test_a_failed_build_is_reported_without_its_message_and_retried() -> None:
    attempts = []

    def factory() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise FileNotFoundError("/secret/path/index.faiss")
        return "index"

    holder = LazyResource("cs.index", factory)
    with pytest.raises(ResourceUnavailable, match="cs.index is unavailable") as info:
        holder.get()
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert holder.status() == {"loaded": False, "load_seconds": None, "error": "FileNotFoundError"}
    assert "/secret" not in str(info.value)
    assert holder.get() == "index" and len(attempts) == 2
    assert holder.status()["error"] is None


def test_reset_builds_a_fresh_value() -> None:
    counter = iter(range(10))
    holder = LazyResource("n", lambda: next(counter))
    assert holder.get() == 0 and holder.get() == 0
    holder.reset()
    assert not holder.loaded
    assert holder.get() == 1


def test_a_factory_that_asks_for_itself_is_an_error_not_a_deadlock() -> None:
    holder: LazyResource[object] = LazyResource("loop", lambda: holder.get())
    with pytest.raises(ResourceUnavailable) as info:
        holder.get()
    assert "asked for the resource it is building" in str(info.value.__cause__)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        LazyResource("x", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty name"):
        LazyResource(" ", object)
