"""The fraud benchmark on tiny sizes: JSON shape, a missing redis-server, one real Redis run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from apps.bench import fraud
from apps.bench.common import validate_report
from tests.apps.fraud.conftest import TINY_MODEL, TINY_TRAIN, fraud_df, tiny_model_dir  # noqa: F401


@pytest.fixture
def tx_csv(fraud_df: pd.DataFrame, tmp_path: Path) -> Path:  # noqa: F811
    path = tmp_path / "tx.csv"
    fraud_df.to_csv(path, index=False)
    return path


def test_report_shape_quality_and_missing_redis(
    tx_csv: Path,
    tiny_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "redis-server" else real_which(name)
    )
    out = tmp_path / "bench" / "fraud.json"
    data = fraud.run(
        data=tx_csv,
        n_batch=600,
        n_stream=40,
        stream_warmup=5,
        batch_repeats=1,
        quality=True,
        train_config=TINY_TRAIN,
        model_config=TINY_MODEL,
        model_dir=tiny_model_dir,
        json_path=out,
    )
    validate_report(data)
    assert json.loads(out.read_text())["benchmark"] == data["benchmark"] == "fraud"
    assert data["environment"]["model"] == str(tiny_model_dir)
    batch = {r["impl"]: r for r in data["results"] if r["case"].startswith("batch/transactions=600")}
    assert set(batch) == {"fathom", "stage: load", "stage: features+graph", "stage: model"}
    assert batch["fathom"]["transactions_per_s"] > 0 and batch["fathom"]["runs"] == 1
    quality = {r["impl"]: r for r in data["results"] if r["case"].startswith("quality/")}
    assert set(quality) == {"fathom", "logistic_regression", "random_forest", "xgboost"}
    for row in quality.values():
        assert all(0.0 <= row[k] <= 1.0 for k in ("auc_roc", "average_precision", "card_precision_at_100"))
    pure = [r for r in data["results"] if r["impl"] == "fathom score_one (no broker)"]
    assert pure[0]["n"] == 35 and 0 < pure[0]["median_ms"] <= pure[0]["p99_ms"]
    targets = {t["name"]: t for t in data["targets"]}
    assert set(targets) == {
        fraud.BATCH_TARGET_NAME,
        fraud.STREAM_TARGET_NAME,
        fraud.AP_TARGET_NAME,
        fraud.CP_TARGET_NAME,
    }
    for t in targets.values():
        assert set(t) >= {"name", "value", "target", "better", "met"}
    assert (
        targets[fraud.BATCH_TARGET_NAME]["target"] == 20_000
        and targets[fraud.BATCH_TARGET_NAME]["better"] == "higher"
    )
    stream = targets[fraud.STREAM_TARGET_NAME]
    assert stream["value"] is None and stream["met"] is None and "redis-server" in stream["reason"]
    ap = targets[fraud.AP_TARGET_NAME]
    assert ap["value"] == quality["fathom"]["average_precision"]
    best = max(quality[b]["average_precision"] for b in ("logistic_regression", "random_forest", "xgboost"))
    assert ap["target"] == best and ap["met"] == (ap["value"] > best)


@pytest.mark.integration
def test_stream_through_a_real_redis_server(tx_csv: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    reason = fraud.redis_missing()
    if reason is not None:
        pytest.skip(reason)
    data = fraud.run(
        data=tx_csv,
        n_batch=400,
        n_stream=60,
        stream_rate=1_000,
        stream_warmup=10,
        batch_repeats=1,
        quality=False,
        model_dir=tiny_model_dir,
    )
    validate_report(data)
    rows = {r["impl"]: r for r in data["results"] if r["case"].startswith("stream/")}
    redis_row = rows["fathom via Redis Streams (1000 msg/s)"]
    assert redis_row["scored"] == 60 and redis_row["dead_lettered"] == 0 and redis_row["n"] == 50
    assert 0 < redis_row["median_ms"] <= redis_row["p99_ms"] <= redis_row["max_ms"]
    stream = next(t for t in data["targets"] if t["name"] == fraud.STREAM_TARGET_NAME)
    assert stream["value"] == redis_row["p99_ms"] and stream["met"] == (stream["value"] <= 20.0)
    assert [t["name"] for t in data["targets"]] == [fraud.BATCH_TARGET_NAME, fraud.STREAM_TARGET_NAME]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="n_stream < n_batch"):
        fraud.run(n_batch=100, n_stream=100, quality=False)
    with pytest.raises(ValueError, match="stream_rate"):
        fraud.run(n_batch=100, n_stream=10, stream_rate=0, quality=False)


def test_quality_from_a_training_runs_card(tx_csv: Path, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """``quality_from`` reports the table ``fathom fraud train`` recorded, without training again."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    card = json.loads((folder / "model_card.json").read_text())
    ours = card["metrics"]["val"]
    card["metrics"]["baselines"] = {
        "logistic_regression": {**ours, "average_precision": 0.01, "card_precision_at_100": 0.01},
        "random_forest": {**ours, "average_precision": 0.02, "card_precision_at_100": 2.0},
        "xgboost": {**ours, "average_precision": 0.03, "card_precision_at_100": 0.03},
    }
    (folder / "model_card.json").write_text(json.dumps(card))
    data = fraud.run(data=tx_csv, n_batch=300, n_stream=0, batch_repeats=1, quality_from=folder)
    validate_report(data)
    assert data["environment"]["model"] == str(folder)
    rows = {r["impl"] for r in data["results"] if r["case"].startswith("quality/recorded")}
    assert rows == {"fathom", "logistic_regression", "random_forest", "xgboost"}
    targets = {t["name"]: t for t in data["targets"]}
    ap = next(t for name, t in targets.items() if "average precision" in name)
    cp = next(t for name, t in targets.items() if "card precision" in name)
    assert ap["target"] == 0.03 and ap["met"] == (ours["average_precision"] > 0.03)
    assert cp["target"] == 2.0 and cp["met"] is False
    (folder / "model_card.json").write_text(json.dumps({**card, "metrics": {"val": ours}}))
    with pytest.raises(ValueError, match="no validation or baseline metrics"):
        fraud.run(data=tx_csv, n_batch=300, n_stream=0, batch_repeats=1, quality_from=folder)
