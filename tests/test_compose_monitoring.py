"""The monitoring part of the deployment: Prometheus scrape and alert rules, Grafana provisioning and
dashboard, checked against the metrics and routes the API really exports (split from test_compose.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_compose import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARDS,
    DEPLOY,
    PROMETHEUS,
    REQUIRED_ENV,
    ROOT,
    as_args,
    dashboard_targets,
    environment,
    exported_metric_names,
    load_compose,
    metric_names_in,
    mounts,
    option,
)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load_compose()["services"]


def test_prometheus_scrapes_the_api_metrics(services):
    config = yaml.safe_load(PROMETHEUS.read_text())
    api_port = option(as_args(services["api"]["command"]), "--port")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_job = next(
        job
        for job in jobs.values()
        if any(
            f"api:{api_port}" in target for sc in job.get("static_configs", []) for target in sc["targets"]
        )
    )
    assert api_job.get("metrics_path", "/metrics") == "/metrics"
    # the rule files it loads are mounted where it looks for them
    targets = {target for _kind, _source, target in mounts(services["prometheus"])}
    assert config["rule_files"] and set(config["rule_files"]) <= targets
    sources = {(ROOT / s).resolve() for kind, s, _t in mounts(services["prometheus"]) if kind == "bind"}
    assert {PROMETHEUS.resolve(), ALERTS.resolve()} <= sources


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_alert_rules_cover_latency_errors_and_a_down_target():
    rules = alert_rules()
    exported = exported_metric_names()
    p99 = [
        r
        for r in rules
        if "histogram_quantile" in r["expr"]
        and re.search(r"histogram_quantile\(\s*0\.99", r["expr"])
        and re.search(r">\s*0\.5\b", r["expr"])
        and r.get("for") == "5m"
    ]
    assert p99, "no alert on p99 > 0.5 s for 5m"
    assert "fathom_http_request_duration_seconds_bucket" in metric_names_in(p99[0]["expr"])
    assert any('status=~"5.."' in r["expr"] for r in rules), "no 5xx error-rate alert"
    assert any(re.search(r"\bup\{[^}]*\}\s*==\s*0", r["expr"]) for r in rules), "no target-down alert"
    for rule in rules:
        used = metric_names_in(rule["expr"])
        assert used <= exported, f"{rule['alert']} reads metrics the API does not export: {used - exported}"
        assert used or re.search(r"\bup\{", rule["expr"]), rule["alert"]
        assert rule.get("labels", {}).get("severity"), rule["alert"]
        assert rule.get("annotations", {}).get("summary"), rule["alert"]


def test_the_alert_unit_tests_feed_the_metrics_the_api_exports():
    exported = exported_metric_names()
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired = {
        test["alertname"]
        for group in tests["tests"]
        for test in group["alert_rule_test"]
        if test["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in alert_rules()}, "every alert has a test in which it fires"
    for group in tests["tests"]:
        for series in group["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in exported or not name.startswith("fathom_"), name


def test_the_p99_alert_reads_the_histogram_the_api_exports():
    from core.serving.metrics import LATENCY_BUCKETS

    assert 0.5 in LATENCY_BUCKETS  # the 500 ms threshold is a bucket edge: the quantile is exact there
    exported = exported_metric_names()
    for name in ("fathom_http_request_duration_seconds_bucket", "fathom_http_requests_total"):
        assert name in exported


# --- Grafana --------------------------------------------------------------------------------------------
def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards(services):
    grafana = services["grafana"]
    binds = {target: (ROOT / source).resolve() for kind, source, target in mounts(grafana) if kind == "bind"}
    provisioning = binds["/etc/grafana/provisioning"]
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    prometheus = next(ds for ds in datasources if ds["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090" and "prometheus" in services
    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    dashboard_path = providers[0]["options"]["path"]
    assert binds[dashboard_path] == DASHBOARDS.resolve()
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert (DASHBOARDS / Path(home).relative_to(dashboard_path)).is_file()


def real_routes() -> set[str]:
    from apps.api import create_api
    from core.serving.metrics import UNAUTHENTICATED, UNMATCHED

    app = create_api(api_key=REQUIRED_ENV["FATHOM_API_KEY"])
    return set(app.openapi()["paths"]) | {"/metrics", UNMATCHED, UNAUTHENTICATED}


def test_dashboard_queries_read_real_metrics_and_routes(services):
    uid = yaml.safe_load(
        next((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.y*ml")).read_text()
    )["datasources"][0]["uid"]
    exported = exported_metric_names()
    routes = real_routes()
    targets = dashboard_targets()
    assert len(targets) >= 6
    for title, target in targets:
        expr = target["expr"]
        assert target["datasource"]["uid"] == uid, title
        used = metric_names_in(expr)
        assert used <= exported, f"{title!r} reads metrics the API does not export: {used - exported}"
        assert used or re.search(r"\bup\{", expr), title
        for route in re.findall(r'route="([^"]*)"', expr):
            assert route in routes, f"{title!r}: no route {route!r} in the API"
        for pattern in re.findall(r'route=~"([^"]*)"', expr):
            assert any(re.fullmatch(pattern, r) for r in routes), f"{title!r}: {pattern!r} matches no route"
    exprs = " ".join(t["expr"] for _title, t in targets)
    assert "sum by (route) (rate(fathom_http_requests_total" in exprs  # request rate per route
    assert "histogram_quantile(0.5, sum by (route, le)" in exprs  # p50 per route
    assert "histogram_quantile(0.99, sum by (route, le)" in exprs  # p99 per route
    assert 'status=~"5.."' in exprs  # error rate
    assert 'route="/fraud/score"' in exprs  # fraud scoring


# --- Orthanc and the nodule worker ----------------------------------------------------------------------
