"""Dynamic micro-batching: concurrent requests merged into one call of a batch function.

A request thread calls ``MicroBatcher.submit(items)`` and blocks (an ``async`` route awaits
``asyncio.wrap_future(batcher.submit_nowait(items))`` instead); one worker thread takes the
requests waiting in the queue (up to ``max_batch`` items, waiting at most ``max_wait_ms`` for more
after the first), calls ``process`` once on all their items, and hands each request its own slice
of the results. Under light load a request is processed alone at once (no added latency with the
default ``max_wait_ms=0``); under load the queue fills while a batch runs, and the next batch takes
everything waiting, so the per-call cost (a model forward, a lock, a database commit) is shared.

Errors stay with the request that caused them: when ``process`` raises on a merged batch, each
request in it is processed again on its own, so one bad request fails alone. ``process`` must
therefore be safe to re-run after a failure (leave no partial effect, or be idempotent).

The worker also serialises the calls: ``process`` never runs twice at once. Batch sizes and queue
waits go to Prometheus when a registry is given::

    batcher = MicroBatcher(scorer.score_many, max_batch=64, name="fraud_score")
    results = batcher.submit(transactions)      # from any number of threads
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Histogram

T = TypeVar("T")
R = TypeVar("R")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class _Request(Generic[T, R]):
    items: list[T]
    queued: float = field(default_factory=time.perf_counter)
    future: Future[list[R]] = field(default_factory=Future)


class BatcherClosed(RuntimeError):
    """``submit`` after ``close``."""


def check_batch_settings(max_batch: int, max_wait_ms: float) -> None:
    """Raise ``ValueError`` naming a bad ``max_batch`` (an integer >= 1) or ``max_wait_ms`` (finite, >= 0)."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    if not (isinstance(max_wait_ms, int | float) and 0 <= max_wait_ms < float("inf")):
        raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")


class MicroBatcher(Generic[T, R]):
    """Merges concurrent ``submit`` calls into one ``process`` call (see the module docstring).

    Args:
        process: items -> one result per item, in order. Runs in the worker thread, one call at a time.
        max_batch: the most items merged into one call (a larger single request still runs, alone).
        max_wait_ms: how long the worker waits for more requests after the first of a batch; 0 takes
            only what is already queued.
        name: label of the Prometheus series and of the worker thread.
        registry: where to register ``fathom_batch_size`` and ``fathom_batch_queue_seconds``
            (histograms labelled by ``batcher``); None records nothing.

    Raises:
        TypeError: ``process`` is not callable.
        ValueError: ``max_batch < 1``, a negative or non-finite ``max_wait_ms``, an empty ``name``.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        name: str = "batcher",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not callable(process):
            raise TypeError(f"process must be callable, got {type(process).__name__}")
        check_batch_settings(max_batch, max_wait_ms)
        if not name:
            raise ValueError("name must not be empty")
        self.process = process
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.name = name
        self._queue: queue.SimpleQueue[_Request[T, R] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._sizes = self._waits = None
        if registry is not None:
            self._sizes = _histogram(
                registry, "fathom_batch_size", "Items per micro-batch call", BATCH_BUCKETS
            ).labels(batcher=name)
            self._waits = _histogram(
                registry,
                "fathom_batch_queue_seconds",
                "Seconds a request waited for its micro-batch to start",
                WAIT_BUCKETS,
            ).labels(batcher=name)

    def submit(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Process ``items`` (merged with other requests') and return their results, in order.

        Raises:
            Exception: whatever ``process`` raised for these items.
            TimeoutError: no result within ``timeout`` seconds (the items may still be processed).
            BatcherClosed: the batcher was closed.
        """
        return self.submit_nowait(items).result(timeout)

    def submit_nowait(self, items: Sequence[T]) -> Future[list[R]]:
        """Queue ``items``; the future of their results (``asyncio.wrap_future`` awaits it in a loop).

        Raises:
            BatcherClosed: the batcher was closed.
        """
        request: _Request[T, R] = _Request(list(items))
        if not request.items:
            request.future.set_result([])
            return request.future
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"micro-batcher {self.name!r} is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
                self._worker.start()
            self._queue.put(request)
        return request.future

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish the queued requests, then stop the worker; later ``submit`` calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            self._queue.put(None)
        if worker is not None:
            worker.join(timeout)

    # --- the worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        pending: _Request[T, R] | None = None
        while True:
            first = pending if pending is not None else self._queue.get()
            pending = None
            if first is None:
                return
            batch, size = [first], len(first.items)
            deadline = time.perf_counter() + self.max_wait_s
            stop = False
            while size < self.max_batch:
                try:
                    remaining = deadline - time.perf_counter()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if size + len(nxt.items) > self.max_batch:
                    pending = nxt  # starts the next batch
                    break
                batch.append(nxt)
                size += len(nxt.items)
            self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[_Request[T, R]]) -> None:
        started = time.perf_counter()
        if self._waits is not None:
            for request in batch:
                self._waits.observe(started - request.queued)
        flat = [item for request in batch for item in request.items]
        try:
            results = self._call(flat)
        except BaseException as exc:  # noqa: BLE001 - handed to the requests, never lost
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for request in batch:  # one bad request must not fail the others
                try:
                    request.future.set_result(self._call(request.items))
                except BaseException as own:  # noqa: BLE001
                    request.future.set_exception(own)
            return
        start = 0
        for request in batch:
            request.future.set_result(results[start : start + len(request.items)])
            start += len(request.items)

    def _call(self, items: list[T]) -> list[R]:
        results = list(self.process(items))
        if len(results) != len(items):
            raise RuntimeError(
                f"micro-batcher {self.name!r}: process returned {len(results)} results for {len(items)} items"
            )
        if self._sizes is not None:
            self._sizes.observe(len(items))
        return results


def _histogram(registry: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
    """The registry's histogram ``name`` (labelled by ``batcher``), created on first use."""
    existing = getattr(registry, "_names_to_collectors", {}).get(name)
    if existing is not None:
        return existing
    return Histogram(name, doc, ["batcher"], registry=registry, buckets=buckets)


__all__ = ["BatcherClosed", "MicroBatcher", "check_batch_settings"]
