"""Evaluation of fraud scores the way the Fraud Detection Handbook does it, and the baselines.

Metrics (Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection",
chapter 4): AUC-ROC and average precision over all scored transactions, and card precision@k
per day: each day, a card's score is the highest score of its transactions that day; of the
``k`` cards with the highest scores, the fraction that had at least one fraud that day. The
figure is the mean over days. (The handbook also drops cards already known to be compromised;
we do not track that, so our figure is the plain per-day precision.)

Protocol: a training window, then a gap of ``delay_days`` (labels of the last days before the
test are not known yet when the model is trained), then the test window; features and graphs
of every window are built from everything earlier. ``split_windows`` implements it.

Baselines, trained on the same tabular features and the same rows in the same run: logistic
regression (on log-scaled, standardised features), random forest and gradient-boosted trees
(xgboost)::

    models = fit_baselines(X_train, y_train)
    table = {name: metrics(y, m.predict_proba(X)[:, 1], day, card) for name, m in models.items()}
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

DAY = 86_400.0
BASELINES = ("logistic_regression", "random_forest", "xgboost")


def card_precision_at_k(
    scores: np.ndarray, labels: np.ndarray, day: np.ndarray, card: np.ndarray, k: int = 100
) -> float:
    """Mean over days of the fraud share among the ``k`` top-scored cards of the day (see module).

    Days with fewer than ``k`` cards use all their cards. NaN when there are no rows.
    """
    if len(scores) == 0:
        return math.nan
    frame = pd.DataFrame({"day": day, "card": card, "score": scores, "label": labels.astype(bool)})
    per_card = frame.groupby(["day", "card"], sort=False).agg(score=("score", "max"), label=("label", "max"))
    per_card = per_card.reset_index().sort_values(["day", "score"], ascending=[True, False], kind="stable")
    top = per_card.groupby("day", sort=False).head(k)
    return float(top.groupby("day")["label"].mean().mean())


def metrics(
    labels: np.ndarray, scores: np.ndarray, times: np.ndarray, cards: np.ndarray, k: int = 100
) -> dict[str, float]:
    """``{"auc_roc", "average_precision", "card_precision_at_100", "n_transactions", "n_fraud"}``.

    Args:
        labels: 0/1 per transaction; scores: higher = more suspicious; times: seconds since the
            epoch (for the day); cards: card ids.

    AUC-ROC and average precision are NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    both = 0 < labels.sum() < len(labels)
    day = np.floor(np.asarray(times, dtype=np.float64) / DAY).astype(np.int64)
    return {
        "auc_roc": float(roc_auc_score(labels, scores)) if both else math.nan,
        "average_precision": float(average_precision_score(labels, scores)) if both else math.nan,
        f"card_precision_at_{k}": card_precision_at_k(scores, labels, day, np.asarray(cards), k),
        "n_transactions": len(labels),
        "n_fraud": int(labels.sum()),
    }


def split_windows(
    times: np.ndarray,
    *,
    warmup_days: int,
    delay_days: int,
    test_days: int,
    until: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row masks ``(train, test)`` of the handbook protocol over whole UTC days.

    The first ``warmup_days`` only build features (30-day windows start full); then training
    up to the gap; ``delay_days`` unused; the last ``test_days`` (up to ``until``) are the test.

    Raises:
        ValueError: the data span is too short for the windows, naming the days needed and had.
    """
    day = np.floor(np.asarray(times) / DAY)
    if len(day) == 0:
        raise ValueError("no transactions")
    first, last = day.min(), day.max() if until is None else math.floor(until / DAY)
    test_start = last - test_days + 1
    train_end = test_start - delay_days  # exclusive
    train_start = first + warmup_days
    if train_end - train_start < 1:
        have = int(last - first + 1)
        need = warmup_days + delay_days + test_days + 1
        raise ValueError(
            f"the data spans {have} day(s); warm-up {warmup_days} + training >= 1 + delay {delay_days} "
            f"+ test {test_days} need at least {need}"
        )
    train = (day >= train_start) & (day < train_end)
    test = (day >= test_start) & (day <= last)
    return train, test


def fit_baselines(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    names: tuple[str, ...] = BASELINES,
    n_jobs: int = -1,
    small: bool = False,
) -> dict[str, object]:
    """The baselines fitted on raw ``FEATURE_NAMES`` rows (scikit-learn estimators with predict_proba).

    Args:
        small: fewer trees (tests and tiny benchmarks).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from apps.fraud.model import FraudNet

    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; choose from {BASELINES}")
    y = np.asarray(labels).astype(int)
    if y.min() == y.max():
        raise ValueError("baselines need both classes in the training rows")
    out: dict[str, object] = {}
    for name in names:
        if name == "logistic_regression":
            model = make_pipeline(
                FunctionTransformer(lambda x: FraudNet.transform(x).numpy()),
                StandardScaler(),
                LogisticRegression(max_iter=1000, C=1.0),
            )
        elif name == "random_forest":
            model = RandomForestClassifier(
                n_estimators=30 if small else 200,
                max_depth=20,
                min_samples_leaf=5,
                n_jobs=n_jobs,
                random_state=seed,
            )
        else:
            from xgboost import XGBClassifier

            model = XGBClassifier(
                n_estimators=50 if small else 400,
                max_depth=6,
                learning_rate=0.1,
                subsample=0.8,
                colsample_bytree=0.8,
                tree_method="hist",
                n_jobs=n_jobs,
                random_state=seed,
                eval_metric="aucpr",
            )
        model.fit(features, y)
        out[name] = model
    return out


def quality_table(
    ours: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]
) -> list[dict[str, object]]:
    """Rows ``{"impl", "auc_roc", "average_precision", "card_precision_at_100"}``, ours first."""
    keys = ("auc_roc", "average_precision", "card_precision_at_100")
    rows = [{"impl": "fathom", **{k: ours.get(k) for k in keys}}]
    rows += [{"impl": name, **{k: m.get(k) for k in keys}} for name, m in baselines.items()]
    return rows
