"""What every benchmark area shares: timing, the environment block and the JSON shape.

The shape is the one of DESIGN.md ("Benchmarks"): ``benchmark``, ``created``, ``environment``,
``results`` (one row per case and implementation, times in ms, ``ratio`` = Fathom's figure over
that row's) and ``targets`` (every target of the issue with the value measured, or ``None`` and
the reason when it could not be measured here).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def time_fn(
    fn: Callable[[], Any],
    device: str = "cpu",
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 50,
    budget_s: float = 2.0,
) -> Timing:
    """Median-friendly timing: ``warmup`` untimed calls, then repeats until ``min_repeats`` are
    done and ``budget_s`` is spent (or ``max_repeats``)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return Timing(samples)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: str = "cpu",
    warmup: int = 2,
    min_rounds: int = 5,
    max_rounds: int = 50,
    budget_s: float = 2.0,
    before_each: Callable[[], Any] | None = None,
) -> dict[str, Timing]:
    """Time several implementations round-robin (one call of each per round, the order rotating),
    so that a shared, noisy machine slows all of them alike instead of whichever happened to run
    during a burst. ``budget_s`` is per implementation (timed calls only); ``before_each`` runs
    untimed before every timed call (e.g. ``CacheFlusher``)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    order = list(fns)
    for round_ in range(max_rounds):
        # rotate who goes first, so no implementation always runs right after the same neighbour
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            if before_each is not None:
                before_each()
                _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            elapsed = time.perf_counter() - t0
            spent += elapsed
            samples[name].append(elapsed * 1e3)
        if round_ + 1 >= min_rounds and spent > budget_s * len(fns):
            break
    return {name: Timing(values) for name, values in samples.items()}


def last_level_cache_bytes(default: int = 256 << 20) -> int:
    """Size of the CPU's last-level cache (Linux sysfs), or ``default``."""
    for index in (3, 2):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return default


class CacheFlusher:
    """Evicts the CPU caches by reading a buffer twice the last-level cache: a layer's weights then
    come from DRAM, as they do in a model whose other layers ran in between (decoding)."""

    def __init__(self, cache_bytes: int | None = None):
        self.buffer = torch.ones((2 * (cache_bytes or last_level_cache_bytes())) // 4)

    def __call__(self) -> None:
        self.buffer.sum()


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": device,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "git": git_revision(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


@dataclass
class Report:
    """Rows and targets of one benchmark run, serialised to the shared JSON shape."""

    benchmark: str
    device: str
    results: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # reported under "environment"

    def add_result(self, case: str, impl: str, **fields: Any) -> dict[str, Any]:
        row = {"case": case, "impl": impl, **fields}
        self.results.append(row)
        return row

    def add_target(
        self, name: str, value: float | None, target: float, better: str, reason: str | None = None
    ) -> None:
        if better not in ("lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
        met = None if value is None else (value <= target if better == "lower" else value >= target)
        row: dict[str, Any] = {"name": name, "value": value, "target": target, "better": better, "met": met}
        if reason:
            row["reason"] = reason
        self.targets.append(row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "environment": {**environment(self.device), **self.settings},
            "results": self.results,
            "targets": self.targets,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def validate_report(data: dict[str, Any]) -> None:
    """Raise ValueError if ``data`` does not have the benchmark JSON shape of DESIGN.md."""
    for key in ("benchmark", "created", "environment", "results", "targets"):
        if key not in data:
            raise ValueError(f"benchmark report lacks {key!r}")
    for key in ("device", "cpus", "torch", "git"):
        if key not in data["environment"]:
            raise ValueError(f"benchmark environment lacks {key!r}")
    for row in data["results"]:
        for key in ("case", "impl"):
            if key not in row:
                raise ValueError(f"result row lacks {key!r}: {row}")
    for row in data["targets"]:
        for key in ("name", "value", "target", "better", "met"):
            if key not in row:
                raise ValueError(f"target lacks {key!r}: {row}")
        if row["value"] is None and not row.get("reason"):
            raise ValueError(f"target {row['name']!r} has no value and no reason")


def markdown_table(data: dict[str, Any]) -> str:
    """The results and targets of a report as Markdown tables (for the README and notes)."""
    env = data["environment"]
    lines = [
        f"`fathom bench {data['benchmark']}` on {env['device']} ({env.get('cpus')} CPUs, "
        f"torch {env['torch']}, git {env.get('git')}), {data['created']}",
        "",
        "| case | impl | median ms | p95 ms | ratio (fathom/impl) | max abs diff |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in data["results"]:
        if "median_ms" not in row:
            lines.append(f"| {row['case']} | {row['impl']} | skipped: {row.get('skipped', '')} | | | |")
            continue
        ratio = f"{row['ratio']:.3f}" if "ratio" in row else ""
        diff = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else ""
        times = f"{row['median_ms']:.2f} | {row['p95_ms']:.2f}"
        lines.append(f"| {row['case']} | {row['impl']} | {times} | {ratio} | {diff} |")
    lines += ["", "| target | value | goal | met |", "|---|---:|---:|---|"]
    for t in data["targets"]:
        value = f"n/a ({t.get('reason', '')})" if t["value"] is None else f"{t['value']:.3f}"
        goal = ("<= " if t["better"] == "lower" else ">= ") + f"{t['target']:.3f}"
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['name']} | {value} | {goal} | {met} |")
    return "\n".join(lines) + "\n"
