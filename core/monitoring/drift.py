"""Distribution drift between a reference sample and a current one: PSI and two-sample KS per feature.

For every feature the current sample is compared with the reference one in two ways:

- **PSI** (population stability index), ``sum((c - r) * ln(c / r))`` over bins, where ``r`` and
  ``c`` are the fractions of reference and current rows in each bin. Bins are the reference's
  quantiles (``bins`` of them, duplicate edges merged, so a discrete or constant feature gets as
  many bins as it has distinct quantiles; a constant reference gives the two bins ``<= value`` and
  ``> value``). Missing values (NaN, and +-inf, which no bin holds) form one more bin, present only
  when either sample has one, so a change in the missing rate counts as drift. Empty bins are
  floored at ``EPSILON`` so the logarithm stays finite.
- **KS**: ``scipy.stats.ks_2samp`` on the finite values of both samples (the largest gap
  between the two empirical CDFs, and its p-value).

The rule behind ``status`` (``DriftThresholds``): each test gives a level, the feature gets the
worse of the two.

- PSI: ``alert`` at ``psi >= psi_alert`` (default 0.25), ``warn`` at ``psi >= psi_warn`` (0.1),
  **and** only when the PSI is beyond sampling noise: with no drift, ``psi / (1/n + 1/m)`` is about
  chi-square with ``bins - 1`` degrees of freedom (``n``, ``m``: the two sample sizes), which gives
  ``psi_p_value``; it must be below ``psi_p_max`` (0.01). Large samples pass this at any PSI worth
  reporting; a window of 100 rows has a noise PSI of about 0.1 with 10 bins and needs ~0.25 to count.
- KS: ``alert`` when ``p < ks_p_value`` (0.01) **and** the statistic ``>= ks_alert_statistic``
  (0.2), ``warn`` when ``p < ks_p_value`` and the statistic ``>= ks_warn_statistic`` (0.1). The
  p-value alone is not enough: with hundreds of thousands of rows a CDF gap of 0.01 is
  "significant" but is no reason to page anyone; the statistic is the effect size.
- A sample with fewer than ``min_count`` finite values is not tested: ``ok``, with the reason.

Shapes: ``reference`` and ``current`` are DataFrames with the feature columns (any number of rows
each; numeric or bool columns only). ``drift_over_time`` cuts a frame into time windows
(``pd.Grouper`` frequencies such as ``"1D"`` or ``"6h"``) and reports each window against the
reference::

    report = drift_report(train_df, today_df, ["amount", "hour"])
    report.alerts                       # [FeatureDrift(feature="amount", status="alert", ...)]
    reports = drift_over_time(scored, "timestamp", window="1D", reference=train_df)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2, ks_2samp

EPSILON = 1e-4  # floor of a bin's fraction in PSI
STATUSES = ("ok", "warn", "alert")  # in order of severity


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature's drift is a warning or an alert (rule in the module docstring).

    Args:
        psi_warn: PSI at or above this warns (0.1: "some shift" in the usual credit-risk reading).
        psi_alert: PSI at or above this alerts (0.25: "major shift").
        psi_p_max: PSI counts only when its chi-square p-value is below this (sampling noise guard).
        ks_p_value: KS counts only below this p-value.
        ks_warn_statistic: ... and at or above this KS statistic (largest CDF gap) warns.
        ks_alert_statistic: ... and at or above this one alerts.
        bins: reference quantile bins for PSI (fewer when quantiles coincide).
        min_count: finite values each sample needs before it is tested.

    Raises:
        ValueError: thresholds out of order or out of range.
    """

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    psi_p_max: float = 0.01
    ks_p_value: float = 0.01
    ks_warn_statistic: float = 0.1
    ks_alert_statistic: float = 0.2
    bins: int = 10
    min_count: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.psi_warn <= self.psi_alert:
            raise ValueError(f"need 0 <= psi_warn <= psi_alert, got {self.psi_warn}, {self.psi_alert}")
        if not 0 < self.psi_p_max <= 1:
            raise ValueError(f"psi_p_max must be in (0, 1], got {self.psi_p_max}")
        if not 0 < self.ks_p_value < 1:
            raise ValueError(f"ks_p_value must be in (0, 1), got {self.ks_p_value}")
        if not 0 <= self.ks_warn_statistic <= self.ks_alert_statistic <= 1:
            raise ValueError(
                "need 0 <= ks_warn_statistic <= ks_alert_statistic <= 1, got "
                f"{self.ks_warn_statistic}, {self.ks_alert_statistic}"
            )
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")


@dataclass
class FeatureDrift:
    """One feature's drift (a row of ``DriftReport``).

    Args:
        feature: column name.
        psi: population stability index (NaN when not tested).
        psi_p_value: chance of a PSI this large from sampling noise alone (chi-square approximation).
        ks_statistic: largest gap between the empirical CDFs, in [0, 1] (NaN when not tested).
        ks_p_value: its two-sided p-value (NaN when not tested).
        status: ``"ok"``, ``"warn"`` or ``"alert"``.
        reason: why, in words (which test crossed which threshold, or notes on the data).
        n_reference, n_current: rows compared (missing ones included).
        missing_reference, missing_current: fraction of NaN/inf values.
        mean_reference, mean_current: mean of the finite values (NaN when none).
    """

    feature: str
    psi: float
    psi_p_value: float
    ks_statistic: float
    ks_p_value: float
    status: str
    reason: str
    n_reference: int
    n_current: int
    missing_reference: float = 0.0
    missing_current: float = 0.0
    mean_reference: float = math.nan
    mean_current: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        return {k: _clean(v) for k, v in asdict(self).items()}


@dataclass
class DriftReport:
    """The drift of every feature of one current sample against the reference.

    Args:
        features: one ``FeatureDrift`` per feature, in the order asked.
        thresholds: the rule applied.
        n_reference, n_current: rows of each sample.
        window_start, window_end: the current sample's time window ``[start, end)``, when it is one.
    """

    features: list[FeatureDrift]
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    n_reference: int = 0
    n_current: int = 0
    window_start: pd.Timestamp | None = None
    window_end: pd.Timestamp | None = None

    @property
    def alerts(self) -> list[FeatureDrift]:
        """The features whose status is ``alert``."""
        return [f for f in self.features if f.status == "alert"]

    @property
    def warnings(self) -> list[FeatureDrift]:
        """The features whose status is ``warn``."""
        return [f for f in self.features if f.status == "warn"]

    @property
    def status(self) -> str:
        """The worst status of any feature (``"ok"`` when there are none)."""
        return max((f.status for f in self.features), key=STATUSES.index, default="ok")

    def __getitem__(self, feature: str) -> FeatureDrift:
        for row in self.features:
            if row.feature == feature:
                return row
        raise KeyError(f"no feature {feature!r} in this report; have {[f.feature for f in self.features]}")

    def to_frame(self) -> pd.DataFrame:
        """One row per feature, the ``FeatureDrift`` fields as columns."""
        columns = list(FeatureDrift.__dataclass_fields__)
        return pd.DataFrame([asdict(f) for f in self.features], columns=columns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: status, counts, window, thresholds and the per-feature rows."""
        return {
            "status": self.status,
            "window_start": None if self.window_start is None else self.window_start.isoformat(),
            "window_end": None if self.window_end is None else self.window_end.isoformat(),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "alerts": [f.feature for f in self.alerts],
            "warnings": [f.feature for f in self.warnings],
            "thresholds": asdict(self.thresholds),
            "features": [f.to_dict() for f in self.features],
        }


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = EPSILON) -> float:
    """Population stability index of ``current`` against ``reference`` (see the module docstring).

    Args:
        reference: ``(n,)`` float values (NaN/inf allowed: they form the missing bin).
        current: ``(m,)`` float values, likewise.
        bins: reference quantile bins before duplicate edges are merged.
        eps: floor of each bin's fraction.

    Returns:
        PSI >= 0; 0 for identical binned distributions.

    Raises:
        ValueError: an empty sample, or fewer than 2 bins.
    """
    return _psi(reference, current, bins, eps)[0]


def psi_p_value(value: float, n_reference: int, n_current: int, n_bins: int) -> float:
    """Chance of a PSI of at least ``value`` from sampling noise alone (no drift).

    Under no drift ``psi / (1/n + 1/m)`` is approximately chi-square with ``n_bins - 1`` degrees of
    freedom (PSI is a symmetrised chi-square divergence); 1.0 when there is a single bin.
    """
    if n_bins < 2:
        return 1.0
    return float(chi2.sf(value / (1.0 / n_reference + 1.0 / n_current), n_bins - 1))


def _psi(reference: np.ndarray, current: np.ndarray, bins: int, eps: float) -> tuple[float, int]:
    """PSI and the number of bins it used (the missing bin included)."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"psi needs values in both samples, got {ref.size} and {cur.size}")
    ref_ok, cur_ok = np.isfinite(ref), np.isfinite(cur)
    finite = ref[ref_ok]
    if finite.size:
        # interior edges; bins are (-inf, e1], (e1, e2], ..., (ek, inf)
        edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        n_bins = edges.size + 1
        ref_counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=n_bins)
        cur_counts = np.bincount(np.searchsorted(edges, cur[cur_ok], side="left"), minlength=n_bins)
    else:  # nothing finite in the reference: only the missing bin and "any value"
        ref_counts = np.zeros(1, dtype=np.int64)
        cur_counts = np.array([int(cur_ok.sum())])
    if not (ref_ok.all() and cur_ok.all()):
        ref_counts = np.append(ref_counts, int((~ref_ok).sum()))
        cur_counts = np.append(cur_counts, int((~cur_ok).sum()))
    r = np.maximum(ref_counts / ref.size, eps)
    c = np.maximum(cur_counts / cur.size, eps)
    return float(np.sum((c - r) * np.log(c / r))), int(r.size)


def _level(value: float, warn: float, alert: float) -> str:
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


def feature_drift(
    feature: str, reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds | None = None
) -> FeatureDrift:
    """PSI, KS and status of one feature (values as float arrays; NaN/inf count as missing).

    Args:
        feature: the name to report.
        reference: ``(n,)`` values, n >= 1.
        current: ``(m,)`` values, m >= 1.
        thresholds: the rule (defaults when None).

    Returns:
        The feature's ``FeatureDrift``.
    """
    th = thresholds or DriftThresholds()
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref_f, cur_f = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    notes: list[str] = []
    row = FeatureDrift(
        feature=feature,
        psi=math.nan,
        psi_p_value=math.nan,
        ks_statistic=math.nan,
        ks_p_value=math.nan,
        status="ok",
        reason="",
        n_reference=int(ref.size),
        n_current=int(cur.size),
        missing_reference=float(1 - ref_f.size / ref.size) if ref.size else 0.0,
        missing_current=float(1 - cur_f.size / cur.size) if cur.size else 0.0,
        mean_reference=float(ref_f.mean()) if ref_f.size else math.nan,
        mean_current=float(cur_f.mean()) if cur_f.size else math.nan,
    )
    if row.missing_reference or row.missing_current:
        notes.append(
            f"missing (NaN/inf) {row.missing_reference:.1%} -> {row.missing_current:.1%}, "
            "compared as their own PSI bin, left out of KS"
        )
    if ref_f.size < th.min_count or cur_f.size < th.min_count:
        row.reason = "; ".join(
            [f"not tested: {ref_f.size} and {cur_f.size} finite values, need {th.min_count} each", *notes]
        )
        return row
    if np.ptp(ref_f) == 0:
        notes.append(f"constant in the reference ({ref_f[0]:g}): PSI bins are <= and > that value")
    row.psi, n_bins = _psi(ref, cur, th.bins, EPSILON)
    row.psi_p_value = psi_p_value(row.psi, ref.size, cur.size, n_bins)
    ks = ks_2samp(ref_f, cur_f)
    row.ks_statistic, row.ks_p_value = float(ks.statistic), float(ks.pvalue)
    psi_level = "ok"
    if row.psi_p_value < th.psi_p_max:
        psi_level = _level(row.psi, th.psi_warn, th.psi_alert)
    ks_level = "ok"
    if row.ks_p_value < th.ks_p_value:
        ks_level = _level(row.ks_statistic, th.ks_warn_statistic, th.ks_alert_statistic)
    row.status = max(psi_level, ks_level, key=STATUSES.index)
    reasons = []
    if psi_level != "ok":
        limit = th.psi_alert if psi_level == "alert" else th.psi_warn
        reasons.append(f"PSI {row.psi:.3f} >= {limit:g} at p={row.psi_p_value:.2g}")
    if ks_level != "ok":
        limit = th.ks_alert_statistic if ks_level == "alert" else th.ks_warn_statistic
        reasons.append(f"KS {row.ks_statistic:.3f} >= {limit:g} at p={row.ks_p_value:.2g}")
    if not reasons:
        reasons.append(f"PSI {row.psi:.3f}, KS {row.ks_statistic:.3f} (p={row.ks_p_value:.2g}): in limits")
    row.reason = "; ".join([*reasons, *notes])
    return row


def _numeric(frame: pd.DataFrame, features: Sequence[str], who: str) -> dict[str, np.ndarray]:
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"{who}: missing column(s) {', '.join(missing)}; have {list(frame.columns)}")
    out: dict[str, np.ndarray] = {}
    for name in features:
        column = frame[name]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            raise ValueError(f"{who}: feature {name!r} is not numeric (dtype {column.dtype})")
        out[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[str],
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """PSI and KS of each feature of ``current`` against ``reference``.

    Args:
        reference: the baseline sample (e.g. the training data), >= 1 row.
        current: the sample to check, >= 1 row.
        features: numeric or bool columns present in both frames.
        thresholds: the rule (defaults when None).

    Returns:
        ``DriftReport`` with one row per feature, in the order of ``features``.

    Raises:
        ValueError: an empty frame or feature list, a missing column (naming it), a non-numeric
            feature.
    """
    th = thresholds or DriftThresholds()
    features = list(features)
    if not features:
        raise ValueError("drift_report: no features given")
    if len(reference) == 0:
        raise ValueError("drift_report: the reference frame is empty")
    if len(current) == 0:
        raise ValueError("drift_report: the current frame is empty")
    ref = _numeric(reference, features, "reference")
    cur = _numeric(current, features, "current")
    rows = [feature_drift(name, ref[name], cur[name], th) for name in features]
    return DriftReport(rows, th, n_reference=len(reference), n_current=len(current))


def drift_over_time(
    frame: pd.DataFrame,
    time_column: str,
    window: str = "1D",
    reference: pd.DataFrame | None = None,
    features: Sequence[str] | None = None,
    thresholds: DriftThresholds | None = None,
) -> list[DriftReport]:
    """One ``DriftReport`` per time window of ``frame`` against a reference.

    Args:
        frame: rows with a time column and the features.
        time_column: timestamps (datetime or parseable; naive ones are taken as UTC).
        window: a pandas frequency (``"1D"``, ``"6h"``, ``"7D"``); windows start at its boundaries.
        reference: the baseline; None: the first window of ``frame``, which is then not reported.
        features: columns to compare (default: every numeric or bool column but ``time_column``).
        thresholds: the rule (defaults when None).

    Returns:
        Reports of the windows that hold rows, oldest first, each with ``window_start/end``
        (empty windows are skipped; with ``reference=None`` and a single window: no reports).
        Windows with fewer than ``min_count`` rows are still reported, with "not tested" rows.

    Raises:
        ValueError: an empty frame or reference, a missing or unparseable time column, a bad
            window, a missing or non-numeric feature.
    """
    if time_column not in frame.columns:
        raise ValueError(f"drift_over_time: no time column {time_column!r}; have {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError("drift_over_time: the frame is empty")
    try:
        step = pd.tseries.frequencies.to_offset(window)
    except ValueError as err:
        raise ValueError(f"drift_over_time: window {window!r} is not a pandas frequency ({err})") from None
    try:
        times = pd.to_datetime(frame[time_column], utc=True)
    except (ValueError, TypeError) as err:
        raise ValueError(f"drift_over_time: column {time_column!r} is not a time ({err})") from None
    if times.isna().any():
        raise ValueError(f"drift_over_time: column {time_column!r} has missing times")
    if features is None:
        features = [
            c
            for c in frame.columns
            if c != time_column
            and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
        ]
    indexed = frame.set_index(pd.DatetimeIndex(times, name=None))
    groups = [(start, part) for start, part in indexed.groupby(pd.Grouper(freq=step)) if len(part)]
    if reference is None:
        (_, reference), groups = groups[0], groups[1:]
    reports = []
    for start, part in groups:
        report = drift_report(reference, part, features, thresholds)
        report.window_start = pd.Timestamp(start)
        report.window_end = report.window_start + step
        reports.append(report)
    return reports
