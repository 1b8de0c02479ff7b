from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from apps.fraud.cli import fraud_app

ARGS = ["simulate", "--n-customers", "15", "--n-terminals", "20", "--days", "5", "--seed", "4"]


def test_simulate_csv_deterministic(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("a.csv", "b.csv"):
        result = runner.invoke(fraud_app, [*ARGS, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert f"to {tmp_path / name}" in result.output
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    df = pd.read_csv(tmp_path / "a.csv", dtype={"transaction_id": str})
    assert {"transaction_id", "timestamp", "label", "fraud_type"} <= set(df.columns)
    assert df["label"].any()


def test_simulate_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "tx.parquet"
    result = CliRunner().invoke(fraud_app, [*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(pd.read_parquet(out)["timestamp"].dt.tz) == "UTC"


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--out", "tx.json"], "must end with"), (["--out", "tx.csv", "--days", "1"], "days must be")],
)
def test_simulate_bad_input(tmp_path: Path, extra: list[str], message: str) -> None:
    extra = [str(tmp_path / e) if e.startswith("tx.") else e for e in extra]
    result = CliRunner().invoke(fraud_app, [*ARGS[:-4], *extra])
    assert result.exit_code == 2
    assert message in result.output


def _csv(df: pd.DataFrame, path: Path) -> Path:
    df.assign(timestamp=df["timestamp"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return path


def test_train_evaluate_score_stream(fraud_df: pd.DataFrame, tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import sqlite3

    runner = CliRunner()
    cut = fraud_df["timestamp"].iloc[len(fraud_df) * 2 // 3]
    history = _csv(fraud_df[fraud_df["timestamp"] < cut], tmp_path / "history.csv")
    test = _csv(fraud_df[fraud_df["timestamp"] >= cut], tmp_path / "test.csv")
    everything = _csv(fraud_df, tmp_path / "all.csv")

    config = tmp_path / "cfg.yaml"
    config.write_text(
        "fraud_train: {epochs: 1, warmup_days: 7, delay_days: 2, val_days: 6}\n"
        "model: {hidden: 8, seq_hidden: 4, gnn_hidden: 4, gnn_layers: 1, gnn_heads: 1}\n"
    )
    result = runner.invoke(
        fraud_app,
        ["train", "--transactions", str(everything), "--out", str(tmp_path / "m"), "--config", str(config)]
        + ["--until", "2024-01-29", "--no-baselines", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (tmp_path / "m" / "model.safetensors").exists() and report["val"]["n_transactions"] > 0

    result = runner.invoke(
        fraud_app,
        ["evaluate", "--model", str(tiny_model_dir), "--transactions", str(test), "--history", str(history)]
        + ["--json"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"auc_roc", "average_precision", "card_precision_at_100", "n_transactions"} <= set(metrics)
    assert metrics["n_transactions"] == len(fraud_df[fraud_df["timestamp"] >= cut])

    out = tmp_path / "scores.csv"
    result = runner.invoke(
        fraud_app,
        ["score", "--model", str(tiny_model_dir), "--transactions", str(test), "--history", str(history)]
        + ["--out", str(out), "--alerts", str(tmp_path / "alerts.db"), "--threshold", "0.0"],
    )
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out)
    assert len(scores) == metrics["n_transactions"] and scores["alert"].all()
    assert f"{len(scores)} new in" in result.output

    result = runner.invoke(
        fraud_app,
        ["stream", "--model", str(tiny_model_dir), "--source", f"file://{test}"]
        + ["--sink", f"sqlite:///{tmp_path / 'live.db'}", "--alerts", str(tmp_path / "live-alerts.db")]
        + ["--state", str(tmp_path / "state.json"), "--json"],
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["read"] == counts["scored"] == len(scores) and counts["dead_lettered"] == 0
    with sqlite3.connect(tmp_path / "live.db") as db:
        assert db.execute("select count(*) from results").fetchone()[0] == len(scores)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--transactions", "missing.csv"], "does not exist"),
        (["score", "--transactions", "x.csv", "--out", "o.txt"], "must end with"),
        (["score", "--transactions", "x.csv", "--out", "o.csv", "--engine", "spark"], "local or ray"),
        (["train", "--transactions", "x.csv", "--out", "m", "--until", "July"], "not a date"),
    ],
)
def test_fraud_commands_bad_input(
    args: list[str], message: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FATHOM_MODELS_DIR", str(tiny_model_dir.parent))
    (tmp_path / "x.csv").write_text("transaction_id,timestamp\n1,2024-01-01\n")
    if args[0] in ("evaluate", "score"):
        args = [*args, "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(fraud_app, args)
    assert result.exit_code == 2
    assert message in result.output
