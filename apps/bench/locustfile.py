"""The load ``fathom bench api`` puts on ``fathom serve`` (run by locust, in its own process).

Each user class is one route at a fixed mean request rate; ``apps.bench.api`` picks the classes
and their user counts on the locust command line. Each user waits an exponentially distributed
time (mean ``1 / rate``) after each request, so the users' requests together arrive as a Poisson
process, as independent clients' do (``constant_throughput`` would keep users that started
together in step: bursts of every user at once, a load no real traffic has). Every request's latency,
status and route are written to ``$FATHOM_BENCH_SAMPLES`` (JSON lines) when locust quits, so the
percentiles come from every sample rather than locust's rounded ones.

Environment (set by ``apps.bench.api``):
    FATHOM_BENCH_TRANSACTIONS: JSON lines of transactions, in time order, for ``POST /fraud/score``.
    FATHOM_BENCH_QUESTIONS: JSON list of customer questions for ``POST /cs/ask``.
    FATHOM_BENCH_RATES: JSON ``{class name: requests per second per user}``.
    FATHOM_BENCH_USERS: JSON ``{class name: users}`` (each class's ``fixed_count``).
    FATHOM_BENCH_SAMPLES: where to write the samples.
    FATHOM_API_KEY: the server's key, sent as ``X-API-Key``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time

from locust import FastHttpUser, events, task

_RATES: dict[str, float] = json.loads(os.environ.get("FATHOM_BENCH_RATES", "{}"))
_USERS: dict[str, int] = json.loads(os.environ.get("FATHOM_BENCH_USERS", "{}"))
_HEADERS = {"X-API-Key": os.environ.get("FATHOM_API_KEY", "")}
_SAMPLES: list[tuple[str, float, int, bool, float]] = []


def _transactions():
    path = os.environ.get("FATHOM_BENCH_TRANSACTIONS")
    if not path:
        return iter(())
    with open(path) as fh:
        return iter([json.loads(line) for line in fh if line.strip()])


_TRANSACTIONS = _transactions()
_NEXT = threading.Lock()
_QUESTIONS = itertools.cycle(
    json.loads(os.environ.get("FATHOM_BENCH_QUESTIONS", '["How do I block my card?"]'))
)


def _poisson(cls_name: str):
    """A locust ``wait_time``: request starts ``Exp(rate)`` apart on the user's own clock.

    The schedule is kept from request start to request start (not from the end of the last one),
    so a slow response does not lower the rate; a user behind schedule starts at once, without
    catching up in a burst. The first start is drawn too, so the users do not all begin together.
    """
    rate = float(_RATES.get(cls_name, 1.0))

    def wait(user) -> float:
        now = time.monotonic()
        start = max(getattr(user, "_next_start", now) + random.expovariate(rate), now)
        user._next_start = start
        return start - now

    return wait


class _Paced(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        self._next_start = time.monotonic()
        time.sleep(self.wait_time())  # gevent's sleep in locust: the first request waits its turn


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, **_kw) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    _SAMPLES.append((name, float(response_time), status, exception is None, time.time()))


@events.quitting.add_listener
def _dump(environment, **_kw) -> None:
    path = os.environ.get("FATHOM_BENCH_SAMPLES")
    if path:
        with open(path, "w") as fh:
            for name, ms, status, ok, at in _SAMPLES:
                fh.write(json.dumps({"route": name, "ms": ms, "status": status, "ok": ok, "at": at}) + "\n")


class FraudScore(_Paced):
    """``POST /fraud/score``: the next simulated transaction, one per request."""

    wait_time = _poisson("FraudScore")
    fixed_count = _USERS.get("FraudScore", 0)

    @task
    def score(self) -> None:
        with _NEXT:
            tx = next(_TRANSACTIONS, None)
        if tx is None:  # the prepared day ran out: stop this user rather than resend
            self.stop()
            return
        self.client.post("/fraud/score", json=tx, headers=_HEADERS, name="POST /fraud/score")


class Healthz(_Paced):
    wait_time = _poisson("Healthz")
    fixed_count = _USERS.get("Healthz", 0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="GET /healthz")


class FraudAlerts(_Paced):
    """The analysts' queue: a page of open alerts and the per-status counts."""

    wait_time = _poisson("FraudAlerts")
    fixed_count = _USERS.get("FraudAlerts", 0)

    @task
    def alerts(self) -> None:
        self.client.get("/fraud/alerts?limit=50", headers=_HEADERS, name="GET /fraud/alerts")

    @task
    def summary(self) -> None:
        self.client.get("/fraud/alerts/summary", headers=_HEADERS, name="GET /fraud/alerts/summary")


class CsAsk(_Paced):
    """``POST /cs/ask`` with a sample question, then that session's history."""

    wait_time = _poisson("CsAsk")
    fixed_count = _USERS.get("CsAsk", 0)

    @task
    def ask(self) -> None:
        with _NEXT:
            question = next(_QUESTIONS)
        response = self.client.post(
            "/cs/ask", json={"question": question}, headers=_HEADERS, name="POST /cs/ask"
        )
        session = response.json().get("session_id") if response.status_code == 200 else None
        if session:
            self.client.get(f"/cs/sessions/{session}", headers=_HEADERS, name="GET /cs/sessions/{id}")
