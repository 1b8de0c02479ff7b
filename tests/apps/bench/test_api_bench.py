"""``fathom bench api`` on its quick settings: a real ``fathom serve`` under locust, a valid report."""

from __future__ import annotations

import importlib.util
import json

import pytest

from apps.bench import api
from apps.bench.common import validate_report


def test_quick_load_test_covers_every_route_without_errors(tmp_path) -> None:
    if importlib.util.find_spec("locust") is None:  # not imported here: it monkey-patches the process
        pytest.skip("locust is not installed")
    path = tmp_path / "api.json"
    data = api.run(quick=True, baseline=False, json_path=path)
    validate_report(data)
    assert json.loads(path.read_text())["benchmark"] == "api"
    rows = {(r["case"], r["impl"]): r for r in data["results"]}
    fraud = rows[("POST /fraud/score @ 20/s", "micro-batched")]
    assert fraud["requests"] >= 30 and fraud["error_rate"] == 0.0
    assert 0 < fraud["median_ms"] <= fraud["p95_ms"] <= fraud["p99_ms"]
    assert fraud["mean_batch"] is not None and fraud["mean_batch"] >= 1.0  # read from /metrics
    routes = {case.removesuffix(" (mixed load)") for case, _ in rows if case.endswith("(mixed load)")}
    assert routes == {
        "POST /fraud/score",
        "GET /healthz",
        "GET /fraud/alerts",
        "GET /fraud/alerts/summary",
        "POST /cs/ask",
        "GET /cs/sessions/{id}",
    }
    assert all(r["error_rate"] == 0.0 for r in data["results"])
    names = [t["name"] for t in data["targets"]]
    assert names == ["POST /fraud/score p99 at 20 requests/s (ms)", "errors over every route and phase"]
    assert data["targets"][1]["value"] == 0.0 and data["targets"][1]["met"] is True


def test_route_rows_are_exact_percentiles_with_errors_by_status() -> None:
    samples = [{"route": "GET /x", "ms": float(ms), "status": 200, "ok": True} for ms in range(1, 101)]
    samples.append({"route": "GET /x", "ms": 500.0, "status": 409, "ok": False})
    row = api._route_rows(samples, seconds=10.0)["GET /x"]
    assert row["requests"] == 101 and row["requests_per_s"] == 10.1
    assert row["error_rate"] == pytest.approx(1 / 101) and row["errors_by_status"] == {"409": 1}
    assert row["median_ms"] == 51.0 and row["p99_ms"] >= 100.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate and duration_s"):
        api.run(rate=0)
