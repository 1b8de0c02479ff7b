"""``fathom bench api``: a load test of ``fathom serve`` on loopback, per route (locust).

Each variant starts its own ``fathom serve`` (API key on, shipped models preloaded, alert store and
nodule results in a temporary folder, access log off) and waits for ``/healthz``; locust
(``apps/bench/locustfile.py``, in its own process) then sends requests as Poisson arrivals at fixed
mean rates (users with exponential waits), after an unmeasured warm-up. Every request's latency is
kept, so the percentiles are exact.

Phases:

``fraud``
    ``POST /fraud/score``, one transaction per request, at ``rate`` requests/s for ``duration_s``:
    a simulated day of card transactions replayed in time order (re-timed 50 ms apart so that
    requests overtaking each other stay within the scorer's lateness allowance). Run against
    ``micro-batched`` (the default ``fathom serve``: concurrent requests merged into one scoring
    call) and, as the baseline in the same run, ``no-batching`` (``--fraud-max-batch 1``: every
    request scored on its own, under a lock). The mean micro-batch size comes from ``/metrics``.
``routes``
    The other routes together on the default server, at their own modest rates: ``GET /healthz``,
    ``GET /fraud/alerts``, ``GET /fraud/alerts/summary``, ``POST /cs/ask`` (sample questions; the
    assistant's retrieval and intent router on the CPU) and ``GET /cs/sessions/{id}``, with the fraud
    load at half ``rate`` beside them. ``POST /nodule/detect`` is not load-tested: one study is seconds
    of CPU (``fathom bench nodule`` measures it).

Rows: per route ``requests``, ``requests_per_s``, ``error_rate``, ``median_ms``, ``p95_ms``,
``p99_ms``; the micro-batched fraud row's ``ratio`` is its p99 over the baseline's. Targets: zero
errors, ``POST /fraud/score`` p99 <= 50 ms at 200 requests/s. The load generator shares the
machine with the server (2 cores here): its CPU is part of what the server competes with.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from apps.bench.common import Report

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
P99_TARGET_MS = 50.0
RATE_TARGET = 200.0
PER_USER_RATE = 4.0  # mean requests/s per locust user (Poisson): users = rate / 4
ROUTE_RATES = {"Healthz": 20.0, "FraudAlerts": 10.0, "CsAsk": 2.0}  # per class (FraudAlerts: 2 routes)
VARIANTS = {"micro-batched": [], "no-batching": ["--fraud-max-batch", "1"]}
SPACING_S = 0.05


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _transactions(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` simulated transactions in time order, re-timed ``SPACING_S`` apart from today."""
    from apps.fraud.simulate import simulate

    customers = max(200, n // 3)  # 1.5 transactions per card and day over 3 days: ~1.5 n in all
    df = simulate(n_customers=customers, n_terminals=max(400, n // 4), days=3, seed=seed, fraud_rate=0.02)
    df = df.sort_values("timestamp", kind="stable").head(n)
    if len(df) < n:
        raise ValueError(f"the simulation gave {len(df)} transactions, {n} needed")
    start = time.time() - 86_400  # yesterday: a fresh scorer accepts any start time
    out = []
    for i, row in enumerate(df.itertuples(index=False)):
        out.append(
            {
                "transaction_id": f"bench-{i}",
                "timestamp": datetime.fromtimestamp(start + i * SPACING_S, UTC).isoformat(),
                "customer_id": row.customer_id,
                "terminal_id": row.terminal_id,
                "amount": float(row.amount),
                "currency": row.currency,
                "channel": row.channel,
                "merchant_category": row.merchant_category,
            }
        )
    return out


@contextlib.contextmanager
def _server(
    folder: Path, extra: list[str], key: str, startup_timeout_s: float, threads: int | None
) -> Iterator[str]:
    """``fathom serve`` in a subprocess; yields its base URL once ``/healthz`` answers 200."""
    import httpx

    port = _free_port()
    env = {
        **os.environ,
        "FATHOM_API_KEY": key,
        "FATHOM_FRAUD_ALERTS": str(folder / f"alerts-{port}.db"),
        "FATHOM_NODULE_RESULTS": str(folder / "nodule-results"),
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = (folder / f"serve-{port}.log").open("w")
    cmd = [sys.executable, "-m", "apps.cli", "serve", "--port", str(port), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"fathom serve exited with {proc.returncode} before answering; its log: "
                    f"{(folder / f'serve-{port}.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"fathom serve did not answer /healthz within {startup_timeout_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _locust(
    url: str,
    classes: dict[str, int],
    rates: dict[str, float],
    duration_s: float,
    folder: Path,
    env: dict[str, str],
    tag: str,
    warmup_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Run locust headless with ``classes`` (name -> users) for ``warmup_s + duration_s``.

    Returns:
        The samples of requests sent after the first ``warmup_s`` seconds (the warm-up also covers
        locust's own start: its users connecting, its first requests).
    """
    samples = folder / f"samples-{tag}.jsonl"
    users = sum(classes.values())
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(users),  # every user at once: the rate holds from the first second
        "-t",
        f"{max(1, round(warmup_s + duration_s))}s",
        "--stop-timeout",
        "5",
        "--only-summary",
        "--loglevel",
        "WARNING",
        *[f"{name}" for name in classes],
    ]
    full_env = {
        **os.environ,
        **env,
        "FATHOM_BENCH_RATES": json.dumps(rates),
        "FATHOM_BENCH_USERS": json.dumps(classes),  # each class's fixed_count
        "FATHOM_BENCH_SAMPLES": str(samples),
    }
    started = time.time()
    timeout = warmup_s + duration_s + 120
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if not samples.exists():
        raise RuntimeError(f"locust wrote no samples (exit {done.returncode}): {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    if not rows:
        raise RuntimeError(f"locust sent no request (exit {done.returncode}): {done.stderr[-2000:]}")
    first = min(r["at"] - r["ms"] / 1000 for r in rows)  # the first request's start
    measured = [r for r in rows if r["at"] - r["ms"] / 1000 >= first + warmup_s]
    if not measured:
        raise RuntimeError(f"locust ran {time.time() - started:.0f} s but sent nothing after the warm-up")
    return measured


def _route_rows(samples: list[dict[str, Any]], seconds: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for route in sorted({s["route"] for s in samples}):
        mine = [s for s in samples if s["route"] == route]
        ms = np.array([s["ms"] for s in mine], dtype=np.float64)
        errors = [s for s in mine if not s["ok"]]
        statuses: dict[str, int] = {}
        for s in errors:
            statuses[str(s["status"])] = statuses.get(str(s["status"]), 0) + 1
        out[route] = {
            "requests": len(mine),
            "requests_per_s": round(len(mine) / seconds, 1),
            "error_rate": len(errors) / len(mine),
            "errors_by_status": statuses,
            "median_ms": round(float(np.median(ms)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
        }
    return out


def _batch_mean(url: str, key: str) -> float | None:
    import httpx

    text = httpx.get(f"{url}/metrics", headers={"X-API-Key": key}, timeout=5).text
    values = {}
    for line in text.splitlines():
        for name in ("fathom_batch_size_sum", "fathom_batch_size_count"):
            if line.startswith(name + "{") and 'batcher="fraud_score"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    count = values.get("fathom_batch_size_count")
    return round(values["fathom_batch_size_sum"] / count, 2) if count else None


def run(
    *,
    rate: float = RATE_TARGET,
    duration_s: float = 30.0,
    warmup_s: float = 5.0,
    quick: bool = False,
    baseline: bool = True,
    routes: bool = True,
    startup_timeout_s: float = 300.0,
    threads: int | None = None,
    seed: int = 0,
    json_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the load test; return (and write to ``json_path``) the DESIGN.md report.

    Args:
        rate: ``POST /fraud/score`` requests per second.
        duration_s: measured seconds per phase (after ``warmup_s`` unmeasured ones).
        quick: 20 requests/s for 3 s, 1 s warm-up (smoke runs, tests).
        baseline: also run the ``no-batching`` server.
        routes: also run the ``routes`` phase.
        startup_timeout_s: how long a server may take to load its models.
        threads: torch threads in the server (``OMP_NUM_THREADS``); default torch's.

    Raises:
        ValueError: a non-positive rate or duration.
        RuntimeError: the server or locust failed (with their output).
    """
    if quick:
        rate, duration_s, warmup_s = 20.0, 3.0, 1.0
    if rate <= 0 or duration_s <= 0 or warmup_s < 0:
        raise ValueError(
            f"rate and duration_s must be > 0 and warmup_s >= 0, got {rate}, {duration_s}, {warmup_s}"
        )
    say = progress or (lambda _: None)
    report = Report("api", "cpu")
    report.settings.update(
        {
            "rate": rate,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "load_generator": "locust",
            "quick": quick,
        }
    )
    users = max(1, round(rate / PER_USER_RATE))
    per_user = rate / users
    key = secrets.token_urlsafe(16)
    phases = 2 + (1 if routes else 0)
    n_tx = int(rate * (warmup_s + duration_s) * phases * 1.2) + 100
    fraud_p99: float | None = None
    errors_total = 0
    with tempfile.TemporaryDirectory(prefix="fathom-bench-api-") as tmp:
        folder = Path(tmp)
        say("simulating transactions")
        txs = _transactions(n_tx, seed)
        questions = _questions()
        p99s: dict[str, float] = {}
        for variant, extra in VARIANTS.items():
            if variant != "micro-batched" and not baseline:
                continue
            say(f"starting fathom serve ({variant})")
            with _server(folder, extra, key, startup_timeout_s, threads) as url:
                tx_file = folder / f"tx-{variant}.jsonl"
                tx_file.write_text("".join(json.dumps(t) + "\n" for t in txs))
                env = {
                    "FATHOM_API_KEY": key,
                    "FATHOM_BENCH_TRANSACTIONS": str(tx_file),
                    "FATHOM_BENCH_QUESTIONS": json.dumps(questions),
                }
                say(f"{variant}: POST /fraud/score at {rate:g}/s for {warmup_s:g} + {duration_s:g} s")
                fraud = {"FraudScore": users}, {"FraudScore": per_user}
                samples = _locust(url, *fraud, duration_s, folder, env, variant, warmup_s)
                row = _route_rows(samples, duration_s)["POST /fraud/score"]
                row["mean_batch"] = _batch_mean(url, key) if variant == "micro-batched" else 1.0
                report.add_result(f"POST /fraud/score @ {rate:g}/s", variant, **row)
                p99s[variant] = row["p99_ms"]
                errors_total += round(row["error_rate"] * row["requests"])
                if variant == "micro-batched":
                    fraud_p99 = row["p99_ms"]
                if variant == "micro-batched" and routes:
                    say("routes: every other route beside half the fraud load")
                    # a new locust process starts the list again: skip what the first one sent
                    env["FATHOM_BENCH_TRANSACTIONS"] = str(
                        _rest(tx_file, int(rate * (warmup_s + duration_s) * 1.2))
                    )
                    half = max(1, users // 2)
                    classes = {"FraudScore": half, **dict.fromkeys(ROUTE_RATES, 1)}
                    rates = {"FraudScore": per_user, **ROUTE_RATES}
                    samples = _locust(url, classes, rates, duration_s, folder, env, "routes", warmup_s)
                    for route, row in _route_rows(samples, duration_s).items():
                        report.add_result(f"{route} (mixed load)", "micro-batched", **row)
                        errors_total += round(row["error_rate"] * row["requests"])
        if "no-batching" in p99s and p99s["no-batching"] > 0:
            for result in report.results:
                if result["impl"] == "micro-batched" and result["case"].startswith("POST /fraud/score @"):
                    result["ratio"] = round(result["p99_ms"] / p99s["no-batching"], 3)
    report.add_target(f"POST /fraud/score p99 at {rate:g} requests/s (ms)", fraud_p99, P99_TARGET_MS, "lower")
    report.add_target("errors over every route and phase", float(errors_total), 0.0, "lower")
    data = report.to_dict()
    if json_path is not None:
        report.write(json_path)
    return data


def _rest(tx_file: Path, skip: int) -> Path:
    """The transactions after the first ``skip`` (more than a previous locust run sent)."""
    lines = tx_file.read_text().splitlines(keepends=True)
    rest = tx_file.with_name(f"{tx_file.stem}-{skip}.jsonl")
    rest.write_text("".join(lines[skip:]))
    return rest


def _questions() -> list[str]:
    from apps.demo import SAMPLE_QUESTIONS

    lines = [line.strip() for line in SAMPLE_QUESTIONS.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")] or ["How do I block my card?"]


__all__ = ["P99_TARGET_MS", "RATE_TARGET", "run"]
