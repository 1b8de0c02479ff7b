"""PSI and KS drift: known values, the threshold rule, constant and missing values, windows, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.monitoring import DriftThresholds, drift_over_time, drift_report, feature_drift, psi, psi_p_value

RNG = np.random.default_rng(0)


def _frame(n: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(shift, 1.0, n),
            "y": rng.normal(0.0, 1.0, n),
            "day": rng.integers(0, 7, n),
            "flag": rng.random(n) < 0.3,
        }
    )


def test_psi_is_zero_for_identical_samples_and_matches_a_hand_computation() -> None:
    x = RNG.normal(size=1000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    # two bins at the reference median: reference 50/50, current 80/20
    ref = np.array([0.0] * 50 + [1.0] * 50)
    cur = np.array([0.0] * 80 + [1.0] * 20)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected)


def test_empty_bins_are_floored_so_psi_stays_finite() -> None:
    ref = RNG.normal(size=500)
    cur = np.full(100, 50.0)  # everything in the top bin
    value = psi(ref, cur)
    assert math.isfinite(value) and value > 5


def test_a_shifted_feature_alerts_and_the_others_do_not() -> None:
    report = drift_report(_frame(4000), _frame(4000, shift=0.8, seed=1), ["x", "y", "day", "flag"])
    assert [f.feature for f in report.alerts] == ["x"]
    x = report["x"]
    assert x.psi >= 0.25 and x.ks_statistic >= 0.2 and x.ks_p_value < 1e-10
    assert "PSI" in x.reason and "KS" in x.reason
    assert all(report[f].status == "ok" for f in ("y", "day", "flag"))
    assert report.status == "alert"


def test_same_distribution_gives_no_alert_or_warning() -> None:
    report = drift_report(_frame(3000, seed=2), _frame(3000, seed=3), ["x", "y", "day", "flag"])
    assert report.status == "ok" and not report.alerts and not report.warnings


def test_ks_needs_an_effect_size_not_just_a_small_p_value() -> None:
    # 200k rows each, shifted by 0.03 sd: p is tiny, the CDF gap ~0.012 is trivia
    rng = np.random.default_rng(4)
    row = feature_drift("x", rng.normal(0, 1, 200_000), rng.normal(0.03, 1, 200_000))
    assert row.ks_p_value < 1e-6 and row.ks_statistic < 0.05
    assert row.status == "ok"
    strict = DriftThresholds(ks_warn_statistic=0.0, ks_alert_statistic=0.01)
    assert (
        feature_drift("x", rng.normal(0, 1, 200_000), rng.normal(0.03, 1, 200_000), strict).status == "alert"
    )


def test_psi_of_a_small_sample_must_beat_sampling_noise() -> None:
    rng = np.random.default_rng(8)
    reference = rng.normal(size=2000)
    noisy = [feature_drift("x", reference, rng.normal(size=60)) for _ in range(50)]
    assert np.mean([r.psi for r in noisy]) > 0.1  # the noise PSI of 60 rows in 10 bins
    assert sum(r.status != "ok" for r in noisy) <= 2  # but hardly ever beyond noise
    moved = feature_drift("x", reference, rng.normal(1.5, 1.0, 60))
    assert moved.status == "alert" and moved.psi_p_value < 1e-6
    # the null distribution: psi / (1/n + 1/m) ~ chi2(bins - 1); its median is about bins - 1.7
    assert psi_p_value(8.3 * (1 / 2000 + 1 / 60), 2000, 60, 10) == pytest.approx(0.5, abs=0.02)
    assert psi_p_value(5.0, 10, 10, 1) == 1.0


def test_warn_sits_between_the_two_psi_thresholds() -> None:
    rng = np.random.default_rng(5)
    row = feature_drift("x", rng.normal(0, 1, 20_000), rng.normal(0.4, 1, 20_000))
    assert 0.1 <= row.psi < 0.25 and row.ks_statistic < 0.2
    assert row.status == "warn"


def test_constant_features_are_compared_and_noted() -> None:
    same = feature_drift("c", np.ones(100), np.ones(100))
    assert same.psi == 0 and same.ks_statistic == 0 and same.status == "ok"
    assert "constant in the reference" in same.reason
    moved = feature_drift("c", np.ones(100), np.full(100, 2.0))
    assert moved.status == "alert" and moved.psi > 5


def test_missing_values_form_their_own_bin() -> None:
    rng = np.random.default_rng(6)
    values = rng.normal(size=2000)
    holes = values.copy()
    holes[rng.random(2000) < 0.3] = np.nan
    row = feature_drift("x", values, holes)
    assert row.missing_reference == 0 and row.missing_current == pytest.approx(0.3, abs=0.05)
    assert row.status == "alert" and "missing" in row.reason
    assert row.ks_statistic < 0.1  # KS sees only the finite values, which did not move
    inf = values.copy()
    inf[:10] = np.inf
    assert feature_drift("x", values, inf).missing_current == pytest.approx(0.005)


def test_too_few_values_are_not_tested() -> None:
    row = feature_drift("x", np.arange(100.0), np.array([1.0, np.nan, 3.0]))
    assert row.status == "ok" and math.isnan(row.psi) and row.reason.startswith("not tested")


def test_report_serialises_to_json() -> None:
    frame = _frame(500).assign(empty=np.nan)
    report = drift_report(frame, _frame(500, shift=2.0, seed=9).assign(empty=np.nan), ["x", "empty"])
    out = json.loads(json.dumps(report.to_dict()))
    assert out["status"] == "alert" and out["alerts"] == ["x"]
    assert out["features"][1]["psi"] is None  # not tested: NaN -> null
    assert list(report.to_frame()["feature"]) == ["x", "empty"]
    assert out["thresholds"]["psi_alert"] == 0.25


def test_errors_name_what_is_wrong() -> None:
    frame = _frame(50)
    with pytest.raises(ValueError, match="missing column.*nope"):
        drift_report(frame, frame, ["x", "nope"])
    with pytest.raises(ValueError, match="current frame is empty"):
        drift_report(frame, frame.iloc[:0], ["x"])
    with pytest.raises(ValueError, match="reference frame is empty"):
        drift_report(frame.iloc[:0], frame, ["x"])
    with pytest.raises(ValueError, match="'name' is not numeric"):
        drift_report(frame.assign(name="a"), frame.assign(name="b"), ["name"])
    with pytest.raises(ValueError, match="no features"):
        drift_report(frame, frame, [])
    with pytest.raises(ValueError, match="psi_warn"):
        DriftThresholds(psi_warn=0.3, psi_alert=0.2)


def _timed(days: int, per_day: int, shift_from: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    start = pd.Timestamp("2024-03-01", tz="UTC")
    n = days * per_day
    times = start + pd.to_timedelta(np.sort(rng.uniform(0, days * 86_400, n)), unit="s")
    x = rng.normal(size=n)
    if shift_from is not None:
        x = np.where(times >= start + pd.Timedelta(days=shift_from), x + 1.5, x)
    return pd.DataFrame({"time": times, "x": x, "y": rng.normal(size=n)})


def test_drift_over_time_reports_each_day_and_finds_the_shift() -> None:
    frame = _timed(6, 400, shift_from=4)
    reports = drift_over_time(frame, "time", "1D", reference=_timed(3, 400))
    assert len(reports) == 6
    assert [r.window_start.day for r in reports] == [1, 2, 3, 4, 5, 6]
    assert reports[0].window_end - reports[0].window_start == pd.Timedelta(days=1)
    assert [r.status for r in reports] == ["ok"] * 4 + ["alert"] * 2
    assert all(r["y"].status == "ok" for r in reports)
    assert [f.feature for f in reports[0].features] == ["x", "y"]  # numeric columns but the time


def test_drift_over_time_defaults_to_the_first_window_as_reference() -> None:
    reports = drift_over_time(_timed(4, 300, shift_from=3), "time", window="2D")
    assert len(reports) == 1 and reports[0].status == "alert"  # days 3-4 against days 1-2


def test_drift_over_time_errors() -> None:
    frame = _timed(2, 50)
    with pytest.raises(ValueError, match="no time column"):
        drift_over_time(frame, "when")
    with pytest.raises(ValueError, match="empty"):
        drift_over_time(frame.iloc[:0], "time")
    with pytest.raises(ValueError, match="not a pandas frequency"):
        drift_over_time(frame, "time", window="fortnight")
    with pytest.raises(ValueError, match="not a time"):
        drift_over_time(frame.assign(time="yesterday"), "time")
