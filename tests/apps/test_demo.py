"""``fathom demo`` on tiny settings: real runs of every step (a 3-day simulation, a tiny phantom, a tiny
untrained nodule model), a missing nodule model, and a failing step that does not stop the others."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from apps import demo
from apps.nodule.model import NoduleModel, NoduleNetConfig

TINY = ["--days", "3", "--customers", "10", "--terminals", "12", "--phantom-size", "tiny", "--no-ui"]


@pytest.fixture(autouse=True)
def one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread (the machine is shared), a private cache folder (the assistant's sessions)."""
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FATHOM_NODULE_MODEL", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_nodule_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nodule-model")
    cfg = NoduleNetConfig(**{**NoduleNetConfig.tiny().to_dict(), "report_threshold": 0.01})
    NoduleModel.create(cfg).save(folder, name="tiny-test", metrics={}, summary="test")
    return folder


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("demo")(demo.demo_command)
    return app


def invoke(*args: str):
    return CliRunner().invoke(cli(), list(args), catch_exceptions=False)


def test_every_step_runs_on_tiny_settings(tmp_path: Path, tiny_nodule_model: Path) -> None:
    out = tmp_path / "results"
    result = invoke("--out", str(out), *TINY, "--nodule-model", str(tiny_nodule_model))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "demo.json").read_text())
    assert data["ok"] and [s["name"] for s in data["steps"]] == ["customer_service", "fraud", "nodule"]
    steps = {s["name"]: s for s in data["steps"]}
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in steps.values()), steps

    cs = steps["customer_service"]
    questions = [q for q in demo.SAMPLE_QUESTIONS.read_text().splitlines() if q.strip()]
    assert cs["details"]["n_questions"] == len(questions) and cs["details"]["n_cited"] >= 1
    lines = (out / "cs-answers.jsonl").read_text().splitlines()
    assert [json.loads(line)["question"] for line in lines] == questions

    fraud = steps["fraud"]["details"]
    assert fraud["n_transactions"] > 0 and len(fraud["top_alerts"]) <= demo.TOP_ALERTS
    scores = [a["score"] for a in fraud["top_alerts"]]
    assert scores == sorted(scores, reverse=True)
    assert fraud["new_alerts"] == fraud["n_alerts"] == fraud["open_alerts"]
    for name in ("fraud-transactions.csv", "fraud-scores.csv", "fraud-alerts.db"):
        assert (out / name).is_file()

    nodule = steps["nodule"]
    assert nodule["details"]["size"] == "tiny" and nodule["details"]["model"] == str(tiny_nodule_model)
    assert Path(nodule["outputs"]["study"]).is_dir() and Path(nodule["outputs"]["sr"]).is_file()
    assert Path(nodule["outputs"]["report"]).is_file()
    # the summary table names each step and where its results are
    assert "customer_service" in result.output and "demo.json" in result.output


def test_a_missing_nodule_model_is_reported_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "customer_service_step", lambda out, q: demo.StepResult("customer_service"))
    monkeypatch.setattr(demo, "fraud_step", lambda out, *a, **k: demo.StepResult("fraud"))
    out = tmp_path / "results"
    result = invoke("--out", str(out), *TINY, "--nodule-model", str(tmp_path / "no-model"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    nodule = data["steps"][-1]
    assert nodule["status"] == "model not installed" and data["ok"]
    assert "model not installed" in nodule["summary"] and str(tmp_path / "no-model") in nodule["summary"]
    assert Path(nodule["outputs"]["study"]).is_dir()  # the study is written all the same
    assert json.loads((out / "demo.json").read_text()) == data


def test_a_failing_step_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("index missing\nsecond line")

    monkeypatch.setattr(demo, "customer_service_step", broken)
    monkeypatch.setattr(demo, "nodule_step", lambda out, *a, **k: demo.StepResult("nodule", summary="x"))
    out = tmp_path / "results"
    result = invoke("--out", str(out), *TINY)
    assert result.exit_code == 1
    data = json.loads((out / "demo.json").read_text())
    cs, fraud, nodule = data["steps"]
    assert cs["status"] == "failed" and cs["error"] == "RuntimeError: index missing"
    assert fraud["status"] == "ok" and nodule["status"] == "ok" and not data["ok"]
    assert "customer_service failed" in result.output


def test_the_ui_starts_unless_no_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("customer_service_step", "fraud_step", "nodule_step"):
        monkeypatch.setattr(
            demo, name, lambda out, *a, _n=name, **k: demo.StepResult(_n.removesuffix("_step"))
        )
    calls = []
    monkeypatch.setattr("apps.ui.launch", lambda host, port: calls.append((host, port)) or 0)
    monkeypatch.setenv("FATHOM_FRAUD_ALERTS", "")  # recorded, so the demo's value is undone afterwards
    monkeypatch.delenv("FATHOM_FRAUD_ALERTS")
    result = invoke("--out", str(tmp_path / "r"), "--port", "8765")
    assert result.exit_code == 0, result.output
    assert calls == [("127.0.0.1", 8765)]
    assert os.environ["FATHOM_FRAUD_ALERTS"] == str((tmp_path / "r" / "fraud-alerts.db").resolve())


def test_bad_options_fail_fast(tmp_path: Path) -> None:
    result = invoke("--out", str(tmp_path), "--phantom-size", "huge", "--no-ui")
    assert result.exit_code == 2 and "--phantom-size" in result.output
    result = invoke("--out", str(tmp_path), "--questions", str(tmp_path / "none.txt"), "--no-ui")
    assert result.exit_code == 2 and "does not exist" in result.output
