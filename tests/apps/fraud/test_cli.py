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
