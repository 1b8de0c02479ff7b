"""The "Models & drift" page with Streamlit's AppTest: the real models/ folder, and a drift run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from apps.fraud.simulate import simulate
from apps.ui import main_path
from core.config import models_dir

MODELS = models_dir()


def _page() -> None:
    from apps.ui import models

    models.render()


def page() -> AppTest:
    return AppTest.from_function(_page, default_timeout=60).run()


@pytest.fixture
def one_thread():
    """Tiny per-day graph batches: one torch thread (two spin against each other on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_shipped_model_is_listed_with_its_lineage() -> None:
    at = page()
    assert not at.exception and not at.error
    assert at.title[0].value == "Models & drift"
    assert [t.label for t in at.tabs] == ["Models", "Fraud drift"]
    folders = sorted(p.name for p in MODELS.iterdir() if (p / "model_card.json").is_file())
    table = at.dataframe[0].value
    assert list(table["folder"]) == folders
    assert {"created", "code_version", "data", "key_metrics", "config"} <= set(table.columns)
    labels = [e.label for e in at.expander]
    assert all(any(f"({folder})" in label for label in labels) for folder in folders)
    if "fraud-detector" in folders:
        row = table[table["folder"] == "fraud-detector"].iloc[0]
        assert row["name"] == "fathom-fraud-detector" and "val.average_precision" in row["key_metrics"]
        assert "sha256" not in row["data"] and "transactions_" in row["data"]
        assert any(m.label == "val.auc_roc" for m in at.metric)


def test_an_empty_models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_MODELS_DIR", str(tmp_path))
    at = page()
    assert not at.exception
    infos = [i.value for i in at.info]
    assert any("No model folders" in text for text in infos)
    assert any("No fraud model" in text for text in infos)


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.assign(timestamp=df["timestamp"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return path


@pytest.mark.skipif(not (MODELS / "fraud-detector").is_dir(), reason="no shipped fraud model")
def test_drift_of_two_files_shows_the_alerts(tmp_path: Path, one_thread: None) -> None:
    df = simulate(n_customers=30, n_terminals=40, days=6, seed=2, fraud_rate=0.02)
    cut = df["timestamp"].min().floor("D") + pd.Timedelta(days=3)
    early, late = df[df["timestamp"] < cut], df[df["timestamp"] >= cut]
    reference = _write(early, tmp_path / "reference.csv")
    current = _write(late.assign(amount=late["amount"] * 4), tmp_path / "current.csv")
    at = page()
    at = next(b for b in at.button if b.label == "Run drift").click().run()
    assert "Give both a reference and a current transactions file." in [e.value for e in at.error]
    at.text_input(key="models_drift_reference_path").set_value(str(reference))
    at.text_input(key="models_drift_current_path").set_value(str(tmp_path / "missing.csv"))
    at = next(b for b in at.button if b.label == "Run drift").click().run()
    assert any("does not exist" in e.value for e in at.error) and not at.exception
    at.text_input(key="models_drift_current_path").set_value(str(current))
    at = next(b for b in at.button if b.label == "Run drift").click().run()
    assert not at.exception
    assert at.error[0].value.startswith("Drift status: ALERT") and "amount" in at.error[0].value
    features = at.dataframe[-2].value
    assert features.set_index("feature").loc["amount", "status"] == "alert"
    assert features.set_index("feature").loc["hour_sin", "status"] != "alert"
    days = at.dataframe[-1].value
    assert len(days) == 3 and (days["status"] == "alert").all()
    assert any(m.label == "Alert rate, current" for m in at.metric)
    at = at.run()  # the result stays on the page across reruns
    assert at.error[0].value.startswith("Drift status: ALERT")


def test_the_multipage_app_has_the_models_page() -> None:
    at = AppTest.from_file(str(main_path()), default_timeout=60).run()
    assert not at.exception and at.title[0].value == "Fathom"
    pages = getattr(at, "_registered_pages", None)
    if pages is not None:
        assert "Models & drift" in [p["page_name"] for p in pages.values()]
