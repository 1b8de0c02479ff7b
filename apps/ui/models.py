"""The "Models & drift" page: every shipped model's lineage, and fraud drift between two files.

- **Models**: one row per folder under ``models/`` (``$FATHOM_MODELS_DIR``) that has a model card
  (``core.monitoring.list_lineage``): name, created, code version, training data hashes, weights
  hash, key metrics, config; each model's card in detail below the table.
- **Fraud drift**: two transaction files (a path on the server, or uploaded), run through the
  fraud model's feature engine and scorer (``apps.fraud.drift.fraud_drift``): PSI and KS of each
  feature, of the scores and of the alert rate, overall and per window.

Run alone with ``streamlit run apps/ui/models.py``, or as a page of ``apps/ui/app.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.config import models_dir
from core.monitoring import ModelLineage, lineage_table, list_lineage

WINDOWS = ("1D", "6h", "7D")
RESULT_KEY = "models_drift_result"
FRAUD_MODEL = "fraud-detector"


@st.cache_resource(show_spinner="Loading the fraud model...")
def load_scorer(model_dir: str) -> Any:
    """The fraud scorer of ``model_dir``, once per process (its state is never used: drift copies it)."""
    from apps.fraud.service import FraudScorer

    return FraudScorer.load(model_dir, explain=False)


def _model_details(model: ModelLineage) -> None:
    label = f"{model.name} ({model.folder.name})"
    with st.expander(label, expanded=False):
        if model.error:
            st.error(f"Model card unreadable: {model.error}")
            return
        if model.summary:
            st.markdown(model.summary)
        figures = list(model.key_metrics.items())
        if figures:
            columns = st.columns(min(4, len(figures)))
            for column, (name, value) in zip(columns, figures[:4], strict=False):
                column.metric(name, f"{value:.4g}")
        version = f"Code version `{model.code_version or 'unknown'}`, torch `{model.torch or '?'}`, "
        st.markdown(version + f"created {model.created or '?'}.")
        if model.dirty:
            st.warning("Trained from code with uncommitted changes: the commit alone does not reproduce it.")
        st.markdown("**Training data**")
        if model.data:
            st.dataframe(
                pd.DataFrame({"file": list(model.data), "sha256": list(model.data.values())}),
                hide_index=True,
            )
        else:
            st.info("The card records no training data hashes.")
        if model.weights_sha256:
            st.markdown(
                f"Weights `model.safetensors`: {model.weights_bytes:,} bytes, sha256 `{model.weights_sha256}`"
            )
        st.markdown("**Config**")
        st.json(model.config, expanded=False)
        if model.readme_excerpt:
            st.markdown("**Model card (README excerpt)**")
            st.markdown(model.readme_excerpt)


def models_section() -> None:
    """The lineage table and each model's details."""
    root = models_dir()
    models = list_lineage(root)
    if not models:
        st.info(f"No model folders with a model card in {root}.")
        return
    st.caption(f"{len(models)} model(s) in `{root}`")
    st.dataframe(lineage_table(models), hide_index=True)
    for model in models:
        _model_details(model)


def _source(label: str, key: str) -> tuple[str, Any] | None:
    """(display name, path or uploaded file) of one transactions input, or None when empty."""
    path = st.text_input(f"{label}: path on the server (CSV, CSV.gz, Parquet)", key=f"{key}_path")
    upload = st.file_uploader(
        f"... or upload the {label.lower()} file", type=["csv", "gz", "parquet"], key=f"{key}_upload"
    )
    if upload is not None:
        return upload.name, upload
    if path and path.strip():
        return Path(path.strip()).name, Path(path.strip()).expanduser()
    return None


def _frame(source: Any) -> pd.DataFrame:
    from apps.fraud.data import load_transactions

    if isinstance(source, Path):
        return load_transactions(source)
    name = str(source.name).lower()
    suffix = ".csv.gz" if name.endswith(".csv.gz") else Path(name).suffix or ".csv"
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"upload{suffix}"
        target.write_bytes(source.getvalue())
        return load_transactions(target)


def run_drift(reference: Any, current: Any, window: str, warmup_days: float) -> dict[str, Any]:
    """Fraud drift of two inputs (paths or uploads) with the shipped model; ``FraudDrift.to_dict()``."""
    from apps.fraud.drift import fraud_drift

    scorer = load_scorer(str(models_dir(FRAUD_MODEL)))
    result = fraud_drift(
        _frame(reference), _frame(current), scorer=scorer, window=window, warmup_days=warmup_days
    )
    out = result.to_dict()
    out["windows_table"] = (
        result.windows_frame()
        .assign(window_start=lambda f: f["window_start"].astype(str))
        .to_dict(orient="records")
    )
    return out


def _show_drift(result: dict[str, Any]) -> None:
    overall = result["overall"]
    status = result["status"]
    names = ", ".join(overall["alerts"]) or "none over the whole file"
    message = f"Drift status: {status.upper()} (model {result['model']}). Alerting: {names}."
    {"alert": st.error, "warn": st.warning}.get(status, st.success)(message)
    rates = result["alert_rate"]
    left, middle, right = st.columns(3)
    left.metric("Alert rate, reference", f"{(rates['reference'] or 0):.2%}")
    middle.metric("Alert rate, current", f"{(rates['current'] or 0):.2%}")
    right.metric("Columns alerting", str(len(overall["alerts"])))
    table = pd.DataFrame(overall["features"])[
        ["feature", "status", "psi", "ks_statistic", "ks_p_value", "mean_reference", "mean_current", "reason"]
    ]
    st.markdown("**Whole current file against the reference**")
    st.dataframe(table, hide_index=True)
    windows = pd.DataFrame(result["windows_table"])
    st.markdown(f"**Per window ({result['window']})**")
    if windows.empty:
        st.info("No windows to report.")
    else:
        st.dataframe(windows, hide_index=True)
    st.download_button(
        "Download the report (JSON)",
        json.dumps({k: v for k, v in result.items() if k != "windows_table"}),
        file_name="fraud-drift.json",
        mime="application/json",
    )


def drift_section() -> None:
    """Two transaction inputs, the window, and the report of the last run."""
    st.markdown(
        "PSI and KS of the fraud model's features, scores and alert rate: a **current** transactions "
        "file against a **reference** one (a period the model is trusted on). Alert at PSI >= 0.25 or a "
        "KS CDF gap >= 0.2, warn at PSI >= 0.1 or a gap >= 0.1, each only when its p-value is < 0.01 "
        "(beyond sampling noise)."
    )
    if not models_dir(FRAUD_MODEL).is_dir():
        st.info(f"No fraud model in {models_dir(FRAUD_MODEL)}: train one with `fathom fraud train`.")
        return
    left, right = st.columns(2)
    with left:
        reference = _source("Reference", "models_drift_reference")
    with right:
        current = _source("Current", "models_drift_current")
    window = st.selectbox("Window", WINDOWS, key="models_drift_window")
    warmup = st.number_input(
        "Warm-up days (fresh feature state only builds history)",
        min_value=0.0,
        value=0.0,
        key="models_drift_warmup",
    )
    if st.button("Run drift", key="models_drift_run", type="primary"):
        if reference is None or current is None:
            st.error("Give both a reference and a current transactions file.")
        else:
            try:
                with st.spinner("Computing features and scores..."):
                    st.session_state[RESULT_KEY] = run_drift(reference[1], current[1], window, float(warmup))
            except (FileNotFoundError, ValueError) as err:
                st.session_state.pop(RESULT_KEY, None)
                st.error(str(err).splitlines()[0])
    result = st.session_state.get(RESULT_KEY)
    if result is not None:
        _show_drift(result)


def render() -> None:
    """The page: models and their lineage, then fraud drift."""
    st.title("Models & drift")
    models_tab, drift_tab = st.tabs(["Models", "Fraud drift"])
    with models_tab:
        models_section()
    with drift_tab:
        drift_section()


if __name__ == "__main__":
    render()
