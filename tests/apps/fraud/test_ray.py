"""``FraudScorer.score_frame(engine="ray")`` on a local Ray runtime (2 CPUs) against the in-process path.

``test_service.test_ray_engine_matches_local`` compares the scores of rows in time order; here the
rows come shuffled after a history, cut into many small Ray blocks, with alerts and explanations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apps.fraud.service import FraudScorer

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


def _explanations(out: pd.DataFrame) -> list[dict | None]:
    parsed = [json.loads(text) if isinstance(text, str) else None for text in out["explanation"]]
    return [{k: v for k, v in e.items() if k != "transaction_row"} if e else None for e in parsed]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray runtime of 2 CPUs for this module (one started elsewhere is left alone)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


def test_ray_matches_in_process_with_history_shuffle_and_alerts(
    local_ray, fraud_df: pd.DataFrame, tiny_model_dir: Path
) -> None:
    history, part = fraud_df.iloc[:200], fraud_df.iloc[200:500].sample(frac=1.0, random_state=2)
    scores = FraudScorer.load(tiny_model_dir, explain=False).score_frame(part, history=history)["score"]
    threshold = float(np.quantile(scores, 0.9))  # a tenth of the rows alert, with explanations
    local = FraudScorer.load(tiny_model_dir, threshold=threshold).score_frame(part, history=history)
    on_ray = FraudScorer.load(tiny_model_dir, threshold=threshold).score_frame(
        part, history=history, engine="ray", chunk=37
    )
    assert list(on_ray.index) == list(part.index)
    np.testing.assert_allclose(on_ray["score"], local["score"], rtol=1e-5, atol=1e-6)
    pd.testing.assert_series_equal(on_ray["alert"], local["alert"])
    assert on_ray["alert"].any() and not on_ray["alert"].all()  # the threshold splits the rows
    assert on_ray["explanation"].notna().tolist() == on_ray["alert"].tolist()
    # the same explanations (up to float noise); ``transaction_row`` is a row inside each path's Prepared
    for a, b in zip(_explanations(on_ray), _explanations(local), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert set(a) == set(b) and a["logit"] == pytest.approx(b["logit"], abs=1e-4)
            assert {f["name"] for f in a["top_features"]} == {f["name"] for f in b["top_features"]}


def test_ray_engine_on_nothing(local_ray, fraud_df: pd.DataFrame, tiny_model_dir: Path) -> None:
    out = FraudScorer.load(tiny_model_dir, explain=False).score_frame(fraud_df.iloc[:0], engine="ray")
    assert len(out) == 0 and "score" in out.columns
