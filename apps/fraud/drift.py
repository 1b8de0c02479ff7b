"""Fraud drift: the model's input features, its scores and its alert rate, reference vs current, per day.

Both transaction files go through the same feature engine and model as batch scoring
(``FraudScorer.prepare`` + ``score_prepared``, chunks of whole days), giving one row per transaction
with the 20 tabular features (``FEATURE_NAMES``), ``score`` and ``alert`` (``score >= threshold``,
0/1). ``core.monitoring.drift_report`` then compares every column of the current file with the
reference one, over the whole file and per time window (``drift_over_time``; windows shorter than a
week leave out ``weekday`` and ``is_weekend``, which a single day cannot match)::

    result = fraud_drift(reference_df, current_df, window="1D")
    result.overall.alerts              # features, score or alert rate that drifted
    result.windows_frame()             # one row per day: status, alerting columns, alert rate

History matters: counts and means over 7 and 30 days start from nothing in a fresh feature state.
The reference's first ``warmup_days`` only build the state and are left out of the comparison. When
the current file starts at or after the reference's end, it continues the reference's state (as a
live scorer would, having seen the past); otherwise it starts fresh and its first ``warmup_days``
are left out too.

Limit: the tests treat rows as independent, but a card's 7- and 30-day aggregates hardly change
within a day, so a day of a small population (tens of cards) is a sample of cards, not of rows, and
short windows can alert on those aggregates by chance. Read per-day alerts on ``card_*_30d`` with
that in mind on small portfolios, or use longer windows (``window="7D"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from apps.fraud.features import DAY, FEATURE_NAMES
from apps.fraud.model import score_prepared
from apps.fraud.service import FraudScorer
from core.monitoring import DriftReport, DriftThresholds, drift_over_time, drift_report

MONITORED = (*FEATURE_NAMES, "score", "alert")  # the columns compared
AMOUNT_FEATURES = tuple(f for f in FEATURE_NAMES if "amount" in f)
# one day holds one weekday: in windows shorter than a week these would always "drift"
CALENDAR_FEATURES = ("weekday", "is_weekend")


def window_features(window: str) -> tuple[str, ...]:
    """The columns compared per window: all of ``MONITORED``, without the calendar features unless
    the window is a whole number of weeks."""
    step = pd.tseries.frequencies.to_offset(window)
    try:
        weeks = pd.Timedelta(step) / pd.Timedelta(days=7)
    except ValueError:  # calendar offsets (months, ...) span whole weeks or more
        weeks = 1.0
    if weeks >= 1 and float(weeks).is_integer():
        return MONITORED
    return tuple(f for f in MONITORED if f not in CALENDAR_FEATURES)


def _day_chunks(times: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Row positions in time order, cut at UTC day boundaries every >= ``chunk`` rows."""
    order = np.argsort(times, kind="stable")
    days = np.floor(times[order] / DAY)
    cuts = [0]
    for start in (np.flatnonzero(np.diff(days)) + 1).tolist():
        if start - cuts[-1] >= chunk:
            cuts.append(start)
    cuts.append(len(times))
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def monitored_frame(
    df: pd.DataFrame,
    scorer: FraudScorer,
    *,
    chunk: int = 32_768,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Features, score and alert of every transaction of ``df``, continuing ``scorer``'s state.

    Args:
        df: canonical transactions (see ``apps.fraud.batch.REQUIRED_COLUMNS``), any order.
        scorer: model, threshold and feature state (the state is updated).
        chunk: rows per feature pass + model call (whole days, so memory stays bounded).
        progress: called with the number of rows done.

    Returns:
        DataFrame row-aligned with ``df`` (its index): ``transaction_id``, ``timestamp`` (UTC),
        the ``FEATURE_NAMES`` columns, ``score`` (float) and ``alert`` (0/1 float).
    """
    times = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("us").astype("int64").to_numpy() / 1e6
    features = np.empty((len(df), len(FEATURE_NAMES)), dtype=np.float64)
    scores = np.empty(len(df), dtype=np.float64)
    done = 0
    for rows in _day_chunks(times, chunk):
        prepared = scorer.prepare(df.iloc[rows])
        features[rows] = prepared.features
        scores[rows] = score_prepared(scorer.model, prepared, chunk=chunk)
        done += len(rows)
        if progress is not None:
            progress(done)
    out = pd.DataFrame(features, columns=list(FEATURE_NAMES), index=df.index)
    out.insert(0, "timestamp", pd.to_datetime(df["timestamp"], utc=True))
    out.insert(0, "transaction_id", df["transaction_id"].astype(str).to_numpy())
    out["score"] = scores
    out["alert"] = (scores >= scorer.threshold).astype(np.float64)
    return out


@dataclass
class FraudDrift:
    """The drift of a current transaction file against a reference one.

    Args:
        model: the scoring model (``name@code_version``).
        threshold: its alert threshold.
        overall: the whole current file (after warm-up) against the reference.
        windows: one report per time window of the current file.
        reference_alert_rate, current_alert_rate: fraction of transactions at or above the threshold.
        window: the window length (a pandas frequency).
        n_warmup_reference, n_warmup_current: rows that only built the feature state.
        continued: the current file continued the reference's feature state.
    """

    model: str
    threshold: float
    overall: DriftReport
    windows: list[DriftReport]
    reference_alert_rate: float
    current_alert_rate: float
    window: str = "1D"
    n_warmup_reference: int = 0
    n_warmup_current: int = 0
    continued: bool = False

    @property
    def any_alert(self) -> bool:
        """Some column alerts, over the whole file or in some window."""
        return bool(self.overall.alerts) or any(r.alerts for r in self.windows)

    @property
    def status(self) -> str:
        """The worst status over the whole file and every window."""
        order = ("ok", "warn", "alert")
        return max([self.overall.status, *(r.status for r in self.windows)], key=order.index)

    def windows_frame(self) -> pd.DataFrame:
        """One row per window: start, rows, status, alerting and warning columns, score PSI, alert rate."""
        rows = []
        for report in self.windows:
            score, alert = report["score"], report["alert"]
            rows.append(
                {
                    "window_start": report.window_start,
                    "n": report.n_current,
                    "status": report.status,
                    "alerts": ", ".join(f.feature for f in report.alerts),
                    "warnings": ", ".join(f.feature for f in report.warnings),
                    "score_psi": score.psi,
                    "alert_rate": alert.mean_current,
                }
            )
        columns = ["window_start", "n", "status", "alerts", "warnings", "score_psi", "alert_rate"]
        return pd.DataFrame(rows, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary, the overall report and every window's report."""
        return {
            "model": self.model,
            "threshold": self.threshold,
            "status": self.status,
            "any_alert": self.any_alert,
            "window": self.window,
            "continued_state": self.continued,
            "n_warmup_reference": self.n_warmup_reference,
            "n_warmup_current": self.n_warmup_current,
            "alert_rate": {
                "reference": _finite(self.reference_alert_rate),
                "current": _finite(self.current_alert_rate),
            },
            "overall": self.overall.to_dict(),
            "windows": [r.to_dict() for r in self.windows],
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _split_warmup(df: pd.DataFrame, warmup_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the first ``warmup_days`` of ``df``, the rest), by timestamp."""
    if warmup_days <= 0:
        return df.iloc[:0], df
    times = pd.to_datetime(df["timestamp"], utc=True)
    early = (times < times.min() + pd.Timedelta(days=warmup_days)).to_numpy()
    return df[early], df[~early]


def fraud_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    scorer: FraudScorer | None = None,
    model_dir: str | Path | None = None,
    window: str = "1D",
    warmup_days: float = 0.0,
    thresholds: DriftThresholds | None = None,
    continue_state: bool | None = None,
    chunk: int = 32_768,
    progress: Callable[[int], None] | None = None,
) -> FraudDrift:
    """Drift of the fraud features, scores and alert rate of ``current`` against ``reference``.

    Args:
        reference: canonical transactions of a period the model behaved well on (e.g. its training
            or validation period).
        current: canonical transactions to check.
        scorer: the model and threshold to use (its state is not touched); default the model in
            ``model_dir`` (default: the shipped ``models/fraud-detector``).
        model_dir: see ``scorer``.
        window: time windows of ``current`` reported one by one (pandas frequency, e.g. "1D", "6h").
        warmup_days: the first days of a file that start a fresh feature state only build it.
        thresholds: the drift rule (``DriftThresholds()`` by default).
        continue_state: the current file continues the reference's state; default: when it starts
            at or after the reference's last transaction.
        chunk: rows per feature pass + model call.
        progress: called with rows done over both files together.

    Returns:
        ``FraudDrift``.

    Raises:
        ValueError: an empty file (or nothing left after the warm-up), missing columns, bad values,
            ``continue_state=True`` with a current file that starts before the reference ends.
    """
    if len(reference) == 0:
        raise ValueError("reference: no transactions")
    if len(current) == 0:
        raise ValueError("current: no transactions")
    if not (math.isfinite(warmup_days) and warmup_days >= 0):
        raise ValueError(f"warmup_days must be a finite number >= 0, got {warmup_days}")
    try:
        per_window = window_features(window)
    except ValueError:
        raise ValueError(f"window {window!r} is not a pandas frequency (e.g. 1D, 6h, 7D)") from None
    base = scorer if scorer is not None else FraudScorer.load(model_dir, explain=False)
    ref_end = pd.to_datetime(reference["timestamp"], utc=True).max()
    cur_start = pd.to_datetime(current["timestamp"], utc=True).min()
    follows = bool(cur_start >= ref_end)
    continued = follows if continue_state is None else continue_state
    if continued and not follows:
        raise ValueError(
            f"continue_state: the current file starts at {cur_start}, before the reference ends ({ref_end})"
        )
    done = 0

    def counted(rows: int) -> None:
        if progress is not None:
            progress(done + rows)

    def run(
        df: pd.DataFrame, state_from: FraudScorer | None, warm: float
    ) -> tuple[pd.DataFrame | None, int, FraudScorer]:
        """Monitored rows of ``df`` after its warm-up (which only builds the state: no scores)."""
        nonlocal done
        scorer_ = state_from or FraudScorer(base.model, base.card, threshold=base.threshold, explain=False)
        early, rest = _split_warmup(df, warm)
        if len(early):
            scorer_.prepare(early)
            done += len(early)
            counted(0)
        rows = monitored_frame(rest, scorer_, chunk=chunk, progress=counted) if len(rest) else None
        done += len(rest)
        return rows, len(early), scorer_

    ref_kept, ref_warm, ref_scorer = run(reference, None, warmup_days)
    if ref_kept is None:
        raise ValueError(f"reference: no transactions left after {warmup_days} warm-up days")
    cur_kept, cur_warm, _ = run(current, ref_scorer if continued else None, 0.0 if continued else warmup_days)
    if cur_kept is None:
        raise ValueError(f"current: no transactions left after {warmup_days} warm-up days")
    th = thresholds or DriftThresholds()
    overall = drift_report(ref_kept, cur_kept, MONITORED, th)
    windows = drift_over_time(
        cur_kept, "timestamp", window, reference=ref_kept, features=per_window, thresholds=th
    )
    return FraudDrift(
        model=ref_scorer.name,
        threshold=ref_scorer.threshold,
        overall=overall,
        windows=windows,
        reference_alert_rate=float(ref_kept["alert"].mean()),
        current_alert_rate=float(cur_kept["alert"].mean()),
        window=window,
        n_warmup_reference=ref_warm,
        n_warmup_current=cur_warm,
        continued=continued,
    )


def fraud_drift_files(reference: str | Path, current: str | Path, **kwargs: Any) -> FraudDrift:
    """``fraud_drift`` of two transaction files (CSV, CSV.gz, Parquet; see ``load_transactions``).

    Args:
        reference: the reference file.
        current: the file to check.
        **kwargs: passed to ``fraud_drift``.

    Raises:
        FileNotFoundError: a missing file. ValueError: see ``load_transactions`` and ``fraud_drift``.
    """
    from apps.fraud.data import load_transactions

    return fraud_drift(load_transactions(reference), load_transactions(current), **kwargs)
