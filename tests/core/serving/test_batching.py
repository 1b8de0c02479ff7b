"""MicroBatcher: concurrent submits merged into one call, each request with its own results and errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from core.serving.batching import BatcherClosed, MicroBatcher


class Recorder:
    """A batch function that records its calls and fails on negative items."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.running = 0
        self.overlapped = False
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.running += 1
            self.overlapped |= self.running > 1
        try:
            time.sleep(self.delay)
            self.calls.append(list(items))
            if any(i < 0 for i in items):
                raise ValueError(f"negative item in {items}")
            return [i * 10 for i in items]
        finally:
            with self._lock:
                self.running -= 1


def submit_all(batcher: MicroBatcher, requests: list[list[int]]) -> list[object]:
    """Submit every request from its own thread at once; each one's results or exception."""
    start = threading.Barrier(len(requests))

    def one(items: list[int]) -> object:
        start.wait()
        try:
            return batcher.submit(items, timeout=10)
        except Exception as exc:  # noqa: BLE001 - returned for the test to look at
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_requests_share_calls_and_get_their_own_results() -> None:
    process = Recorder(delay=0.02)
    registry = CollectorRegistry()
    batcher = MicroBatcher(process, max_batch=64, max_wait_ms=20, name="t", registry=registry)
    requests = [[i, i + 100] for i in range(16)]
    results = submit_all(batcher, requests)
    assert results == [[i * 10, (i + 100) * 10] for i in range(16)]
    assert len(process.calls) < len(requests)  # merged
    assert sorted(x for call in process.calls for x in call) == sorted(x for r in requests for x in r)
    assert not process.overlapped  # one call at a time
    count = registry.get_sample_value("fathom_batch_size_count", {"batcher": "t"})
    total = registry.get_sample_value("fathom_batch_size_sum", {"batcher": "t"})
    assert count == len(process.calls) and total == 32
    assert registry.get_sample_value("fathom_batch_queue_seconds_count", {"batcher": "t"}) == 16
    batcher.close()


def test_a_failing_request_fails_alone() -> None:
    process = Recorder(delay=0.01)
    batcher = MicroBatcher(process, max_batch=64, max_wait_ms=30)
    results = submit_all(batcher, [[1], [2], [-3], [4]])
    assert results[0] == [10] and results[1] == [20] and results[3] == [40]
    assert isinstance(results[2], ValueError) and "negative" in str(results[2])
    assert [-3] in process.calls  # retried alone after the merged call failed


def test_max_batch_bounds_a_call_but_a_bigger_request_still_runs() -> None:
    process = Recorder(delay=0.01)
    batcher = MicroBatcher(process, max_batch=4, max_wait_ms=30)
    results = submit_all(batcher, [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10, 11]])
    assert results == [[10, 20, 30], [40, 50], [60], [70, 80, 90, 100, 110]]
    assert all(len(call) <= 4 for call in process.calls if call != [7, 8, 9, 10, 11])


def test_a_lone_request_is_not_delayed_and_empty_is_free() -> None:
    process = Recorder()
    batcher = MicroBatcher(process)  # max_wait_ms=0: only what is already queued
    assert batcher.submit([]) == [] and process.calls == []
    started = time.perf_counter()
    assert batcher.submit([5]) == [50]
    assert time.perf_counter() - started < 1.0


def test_wrong_result_count_and_closed_batcher_are_errors() -> None:
    batcher = MicroBatcher(lambda items: items[:-1], name="short")
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        batcher.submit([1, 2])
    batcher.close()
    with pytest.raises(BatcherClosed, match="closed"):
        batcher.submit([1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_wait_ms": float("inf")}, "max_wait_ms"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MicroBatcher(lambda items: items, **kwargs)
    with pytest.raises(TypeError, match="callable"):
        MicroBatcher(42)  # type: ignore[arg-type]


def test_two_batchers_share_one_registry() -> None:
    registry = CollectorRegistry()
    a = MicroBatcher(lambda items: items, name="a", registry=registry)
    b = MicroBatcher(lambda items: items, name="b", registry=registry)
    a.submit([1])
    b.submit([1, 2])
    assert registry.get_sample_value("fathom_batch_size_sum", {"batcher": "a"}) == 1
    assert registry.get_sample_value("fathom_batch_size_sum", {"batcher": "b"}) == 2
