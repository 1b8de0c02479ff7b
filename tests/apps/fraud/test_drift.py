"""Fraud drift with the shipped model: a shifted amount distribution alerts on the amount features
(and the scores), not on unrelated features; the same process later, or the same file, does not."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from apps.cli import app
from apps.fraud.drift import AMOUNT_FEATURES, CALENDAR_FEATURES, MONITORED, fraud_drift, window_features
from apps.fraud.features import FEATURE_NAMES
from apps.fraud.service import FraudScorer
from apps.fraud.simulate import simulate
from apps.fraud.train import default_model_dir

pytestmark = pytest.mark.skipif(
    not (default_model_dir() / "model_card.json").is_file(), reason="no shipped fraud model"
)
# features that a change of amounts cannot move
UNRELATED = (
    "card_n_1d",
    "card_n_7d",
    "card_n_30d",
    "card_new_terminal_30d",
    "terminal_n_1d",
    "terminal_n_7d",
    "terminal_risk_1d",
    "terminal_risk_7d",
    "hour_sin",
    "hour_cos",
    "is_night",
)
WARMUP = 30  # the 30-day counts need 30 days of history


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small per-day graph batches: one torch thread (two spin against each other on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def periods() -> tuple[pd.DataFrame, pd.DataFrame]:
    """65 days of 60 cards: the reference is days 0-43 (0-29 warm-up only: two whole weeks remain),
    the current days 44-64 (three whole weeks, so the weekday mix matches)."""
    df = simulate(n_customers=60, n_terminals=80, days=65, seed=7, fraud_rate=0.02)
    cut = df["timestamp"].min() + pd.Timedelta(days=44)
    return df[df["timestamp"] < cut], df[df["timestamp"] >= cut]


@pytest.fixture(scope="module")
def scorer() -> FraudScorer:
    return FraudScorer.load(explain=False)


@pytest.fixture(scope="module")
def shifted(periods: tuple[pd.DataFrame, pd.DataFrame], scorer: FraudScorer):
    reference, current = periods
    return fraud_drift(
        reference, current.assign(amount=current["amount"] * 3), scorer=scorer, warmup_days=WARMUP
    )


def test_tripled_amounts_alert_on_the_amount_features_and_the_scores(shifted) -> None:
    alerting = {f.feature for f in shifted.overall.alerts}
    assert {"amount", "card_mean_amount_1d", "card_mean_amount_7d", "card_amount_z_30d"} <= alerting
    assert alerting <= {*AMOUNT_FEATURES, "score", "alert"}
    assert all(shifted.overall[f].status != "alert" for f in UNRELATED)
    amount = shifted.overall["amount"]
    assert amount.psi > 1.0 and amount.ks_statistic > 0.4 and amount.ks_p_value < 1e-50
    assert shifted.continued and shifted.n_warmup_current == 0 and shifted.n_warmup_reference > 0
    assert shifted.any_alert and shifted.status == "alert"


def test_every_day_of_the_shift_alerts_on_amount(shifted) -> None:
    assert len(shifted.windows) == 21
    assert all(r["amount"].status == "alert" for r in shifted.windows)
    assert all(r.window_end - r.window_start == pd.Timedelta(days=1) for r in shifted.windows)
    days = shifted.windows_frame()
    assert list(days.columns)[:4] == ["window_start", "n", "status", "alerts"]
    assert days["n"].sum() == shifted.overall.n_current
    assert "weekday" not in {f.feature for f in shifted.windows[0].features}  # one day: one weekday


def test_the_same_process_later_raises_no_alert(periods, scorer: FraudScorer) -> None:
    reference, current = periods
    result = fraud_drift(reference, current, scorer=scorer, warmup_days=WARMUP, window="7D")
    assert not result.overall.alerts, result.overall.to_frame()[["feature", "psi", "ks_statistic"]]
    assert abs(result.current_alert_rate - result.reference_alert_rate) < 0.05
    assert [f.feature for f in result.overall.features] == list(MONITORED)


def test_the_same_file_gives_zero_drift(periods, scorer: FraudScorer) -> None:
    reference, _ = periods
    week = reference[reference["timestamp"] < reference["timestamp"].min() + pd.Timedelta(days=7)]
    result = fraud_drift(week, week, scorer=scorer, window="7D")  # one window: the whole file
    assert not result.continued  # the current file does not follow the reference: fresh state
    assert result.overall.status == "ok" and not result.any_alert
    assert all(
        f.psi == pytest.approx(0.0, abs=1e-12) and f.ks_statistic == 0 for f in result.overall.features
    )
    json.dumps(result.to_dict())


def test_bad_arguments(periods, scorer: FraudScorer) -> None:
    reference, current = periods
    with pytest.raises(ValueError, match="not a pandas frequency"):
        fraud_drift(reference, current, scorer=scorer, window="often")
    with pytest.raises(ValueError, match="current: no transactions"):
        fraud_drift(reference, current.iloc[:0], scorer=scorer)
    with pytest.raises(ValueError, match="before the reference ends"):
        fraud_drift(current, reference, scorer=scorer, continue_state=True)
    day = current[current["timestamp"] < current["timestamp"].min().floor("D") + pd.Timedelta(days=1)]
    with pytest.raises(ValueError, match="no transactions left after 2 warm-up days"):
        fraud_drift(day, day, scorer=scorer, warmup_days=2)
    assert set(window_features("7D")) == set(MONITORED)
    assert set(window_features("1D")) == set(MONITORED) - set(CALENDAR_FEATURES)
    assert set(FEATURE_NAMES) < set(MONITORED)


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.assign(timestamp=df["timestamp"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return path


def test_cli_drift_fails_on_alert_only_when_asked(periods, tmp_path: Path) -> None:
    reference, current = periods
    start = reference["timestamp"].min().floor("D")
    ref = _write(reference[reference["timestamp"] < start + pd.Timedelta(days=3)], tmp_path / "ref.csv")
    later = current[current["timestamp"] < current["timestamp"].min().floor("D") + pd.Timedelta(days=3)]
    cur = _write(later.assign(amount=later["amount"] * 3), tmp_path / "cur.csv")
    runner = CliRunner()
    args = ["fraud", "drift", "--reference", str(ref), "--current", str(cur)]
    result = runner.invoke(app, [*args, "--json", "--fail-on-alert"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "amount" in report["overall"]["alerts"] and len(report["windows"]) == 3
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "amount" in result.stdout and "ALERT" in result.stdout
    missing = runner.invoke(app, [*args[:-1], str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "--current" in missing.output
