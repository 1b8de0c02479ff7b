"""Load-once holders for heavy resources (a model, an index, an assistant) shared by every request.

A ``LazyResource`` builds its value on the first ``get()`` (or at startup, when the app preloads
it) and hands the same object to every caller after that. Concurrent first callers wait for the
one build instead of starting their own. A failed build is remembered for ``/healthz`` and retried
on the next ``get()``, so a transient fault (a file not yet mounted) does not need a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)


class ResourceUnavailable(RuntimeError):
    """A resource could not be built; the API answers 503 and names the resource, not the cause.

    Args:
        name: the resource's name (as in ``/healthz``).
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is unavailable: it failed to load (see the server log)")
        self.name = name


class LazyResource(Generic[T]):
    """Builds ``factory()`` once, lazily and thread-safely, and returns the same object afterwards.

    Args:
        name: what the resource is, for logs, errors and ``/healthz`` (e.g. "customer_service.assistant").
        factory: a callable with no arguments that builds the resource (may take seconds).

    Raises:
        TypeError: ``factory`` is not callable.
        ValueError: ``name`` is empty.
    """

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        if not callable(factory):
            raise TypeError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
        if not name or not name.strip():
            raise ValueError("a LazyResource needs a non-empty name")
        self.name = name
        self._factory = factory
        self._lock = threading.RLock()
        self._value: T | None = None
        self._loaded = False
        self._loading_thread: int | None = None
        self._error: str | None = None
        self._load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        """Whether the resource has been built."""
        return self._loaded

    def get(self) -> T:
        """The resource, built on the first call.

        Returns:
            The object ``factory()`` returned (the same one on every call).

        Raises:
            ResourceUnavailable: ``factory()`` raised; the cause is logged and chained.
            RuntimeError: ``factory()`` itself asked for this resource (a cycle).
        """
        if self._loaded:  # fast path without the lock once built
            return self._value  # type: ignore[return-value]
        with self._lock:
            if self._loaded:
                return self._value  # type: ignore[return-value]
            if self._loading_thread == threading.get_ident():
                raise RuntimeError(f"{self.name}: its factory asked for the resource it is building")
            self._loading_thread = threading.get_ident()
            start = time.perf_counter()
            try:
                value = self._factory()
            except Exception as exc:
                # Only the type: /healthz is open, and a message can carry paths or hostnames.
                self._error = type(exc).__name__
                _log.exception("loading %s failed", self.name)
                raise ResourceUnavailable(self.name) from exc
            finally:
                self._loading_thread = None
            self._value, self._error = value, None
            self._load_seconds = round(time.perf_counter() - start, 3)
            self._loaded = True
            _log.info("loaded %s in %.2f s", self.name, self._load_seconds)
            return value

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` shows: ``{"loaded", "load_seconds", "error"}``.

        ``error`` is the exception type of the last failed build (None after a good one).
        """
        return {"loaded": self._loaded, "load_seconds": self._load_seconds, "error": self._error}

    def reset(self) -> None:
        """Forget the built resource so the next ``get()`` builds a fresh one (e.g. after a re-index)."""
        with self._lock:
            self._value, self._loaded, self._error, self._load_seconds = None, False, None, None

    def __repr__(self) -> str:
        return f"LazyResource({self.name!r}, loaded={self._loaded})"
