"""Fixtures of the fraud tests: simulated data and a tiny model trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from apps.fraud.model import FraudModelConfig
from apps.fraud.simulate import simulate
from apps.fraud.train import FraudTrainConfig, train

TINY_MODEL = FraudModelConfig(hidden=16, seq_hidden=8, gnn_hidden=8, gnn_layers=1, gnn_heads=1)
TINY_TRAIN = FraudTrainConfig(
    epochs=2, warmup_days=7, delay_days=2, val_days=6, neg_rate=0.5, lr=1e-2, baselines=False
)


@pytest.fixture(scope="session")
def fraud_df() -> pd.DataFrame:
    """30 days of 60 cards at 80 terminals, ~3% fraud (all five typologies)."""
    return simulate(n_customers=60, n_terminals=80, days=30, seed=3, fraud_rate=0.03)


@pytest.fixture(scope="session")
def tiny_model_dir(fraud_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LSTM + GNN model trained on ``fraud_df`` (a few seconds), saved like the shipped one."""
    out = tmp_path_factory.mktemp("fraud-model")
    train(fraud_df, TINY_TRAIN, TINY_MODEL, out_dir=out)
    return out
