"""Fathom's Streamlit app: a home page saying what is loaded, and each app's page.

Run with ``fathom ui`` or ``streamlit run apps/ui/app.py``. Pages are functions of the apps'
``ui`` modules, so each app's page also runs alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from apps.customer_service import ui as cs_ui
from apps.fraud import ui as fraud_ui
from apps.nodule import ui as nodule_ui
from apps.ui import models as models_ui

# --- the home page: models and backends -------------------------------------------------------------------
CHECK_TIMEOUT_S = 2.0  # per backend check
CHECK_TTL_S = 30  # checks are cached this long
# (what, models/ folder, environment variable that points at another folder)
MODELS = (
    ("Customer-service intent router", "intent-router", None),
    ("Fraud model", "fraud-detector", "FATHOM_FRAUD_MODEL"),
    ("Nodule model", "nodule-detector", "FATHOM_NODULE_MODEL"),
)
BACKEND_ENV = {
    "Redis": "FATHOM_REDIS_URL (or FATHOM_CS_SESSIONS=redis://...)",
    "Alert store": "FATHOM_FRAUD_ALERTS",
    "PACS (DIMSE)": "FATHOM_PACS",
    "DICOMweb": "FATHOM_DICOMWEB",
    "API": "FATHOM_API_URL",
}


def model_rows() -> list[dict[str, str]]:
    """One row per model the apps use: its folder, name and the key metrics of its model card."""
    from core.config import models_dir
    from core.monitoring.lineage import read_lineage

    rows = []
    for what, folder_name, env in MODELS:
        chosen = os.environ.get(env, "").strip() if env else ""
        folder = Path(chosen) if chosen else models_dir(folder_name)
        row = {"model": what, "folder": str(folder), "name": "", "metrics": "", "status": "not installed"}
        if (folder / "model_card.json").is_file():
            lineage = read_lineage(folder, hash_weights=False)
            row["name"] = lineage.name
            row["status"] = "card unreadable" if lineage.error else "installed"
            row["metrics"] = ", ".join(f"{k} {v:.3g}" for k, v in lineage.key_metrics.items())
        elif folder.is_dir():
            row["status"] = "no model card"
        rows.append(row)
    return rows


def backend_config() -> tuple[tuple[str, str], ...]:
    """``(backend, address)`` for every backend; the address is "" when it is not configured."""
    sessions = os.environ.get("FATHOM_CS_SESSIONS", "").strip()
    redis_url = os.environ.get("FATHOM_REDIS_URL", "").strip() or (
        sessions if sessions.lower().startswith(("redis://", "rediss://")) else ""
    )
    return (
        ("Redis", redis_url),
        ("Alert store", os.environ.get("FATHOM_FRAUD_ALERTS", "").strip()),
        ("PACS (DIMSE)", os.environ.get("FATHOM_PACS", "").strip()),
        ("DICOMweb", os.environ.get("FATHOM_DICOMWEB", "").strip()),
        ("API", os.environ.get("FATHOM_API_URL", "").strip()),
    )


def _check_redis(url: str, timeout: float) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        return f"PING ok, {client.dbsize()} keys"
    finally:
        client.close()


def _check_alerts(url: str, timeout: float) -> str:
    from apps.fraud.alerts import AlertStore
    from apps.fraud.ui import alert_store_exists

    if not alert_store_exists(url):
        raise FileNotFoundError(f"no alert store at {url}")
    with AlertStore.open(url) as store:
        counts = store.counts()
    return f"{sum(counts.values())} alerts, {counts.get('open', 0)} open"


def _check_pacs(peer: str, timeout: float) -> str:
    from connectors.dicom.pacs import PacsClient

    PacsClient(peer, timeout=timeout).echo()
    return "C-ECHO ok"


def _check_dicomweb(url: str, timeout: float) -> str:
    import requests

    response = requests.get(f"{url.rstrip('/')}/studies", params={"limit": 1}, timeout=timeout)
    if response.status_code >= 400:
        raise ConnectionError(f"QIDO-RS answered HTTP {response.status_code}")
    return f"QIDO-RS ok (HTTP {response.status_code})"


def _check_api(url: str, timeout: float) -> str:
    import requests

    response = requests.get(f"{url.rstrip('/')}/healthz", timeout=timeout)
    if response.status_code >= 400:
        raise ConnectionError(f"/healthz answered HTTP {response.status_code}")
    try:
        status = response.json().get("status", "ok")
    except ValueError:
        status = "ok"
    return f"/healthz {status}"


CHECKS = {
    "Redis": _check_redis,
    "Alert store": _check_alerts,
    "PACS (DIMSE)": _check_pacs,
    "DICOMweb": _check_dicomweb,
    "API": _check_api,
}


def check_backends(config: tuple[tuple[str, str], ...], timeout: float = CHECK_TIMEOUT_S) -> list[dict]:
    """Check every configured backend at once, each within ``timeout`` seconds.

    Returns:
        One row per backend: ``backend``, ``address``, ``status`` ("reachable", "unreachable" or
        "not configured") and ``detail`` (what the check saw, or why it failed; the variable to set).
    """
    import concurrent.futures as cf

    pool = cf.ThreadPoolExecutor(max_workers=len(config), thread_name_prefix="home-check")
    futures = {name: pool.submit(CHECKS[name], address, timeout) for name, address in config if address}
    deadline = time.monotonic() + timeout + 1.0
    rows = []
    for name, address in config:
        row = {"backend": name, "address": address, "status": "not configured", "detail": ""}
        if not address:
            row["detail"] = f"set {BACKEND_ENV[name]}"
        else:
            try:
                row["detail"] = futures[name].result(timeout=max(0.0, deadline - time.monotonic()))
                row["status"] = "reachable"
            except cf.TimeoutError:
                row["status"], row["detail"] = "unreachable", f"no answer within {timeout:g} s"
            except Exception as exc:  # any failure of a check is "unreachable", with its reason
                row["status"] = "unreachable"
                reason = str(exc).splitlines()[0] if str(exc) else ""
                row["detail"] = f"{type(exc).__name__}: {reason}"[:160]
        rows.append(row)
    pool.shutdown(wait=False, cancel_futures=True)  # a check that hangs past its timeout is left behind
    return rows


@st.cache_data(ttl=CHECK_TTL_S, show_spinner="Checking the backends...")
def cached_backends(config: tuple[tuple[str, str], ...]) -> list[dict]:
    """``check_backends``, cached for ``CHECK_TTL_S`` seconds per configuration."""
    return check_backends(config)


def home() -> None:
    """What Fathom offers here, which models are loaded and installed, and which backends answer."""
    st.title("Fathom")
    st.markdown(
        "Domain AI for regulated industries. **Customer service**: a bank's support assistant that "
        "answers from the knowledge base with citations and hands urgent or uncertain cases to a human. "
        "**Fraud alerts**: the risk team's queue of scored card transactions, why each alert fired, "
        "and how the alerts turned out over time. **Lung nodules**: a CT study in, its nodules found, shown "
        "on the slices and written out as DICOM SEG, SR and a report."
    )
    st.subheader("Loaded in this server")
    loaded = cs_ui.loaded_info()
    if loaded:
        st.success(f"Customer-service assistant: loaded, index `{loaded['index']}`")
    else:
        st.info("Customer-service assistant: not loaded yet; it loads when its page is first opened.")
    nodule = nodule_ui.loaded_info()
    if nodule:
        st.success(f"Nodule detector: loaded, model {nodule['model']}")
    elif nodule_ui.model_available():
        st.info("Nodule detector: not loaded yet; it loads when a study is first analysed.")
    else:
        st.info(
            "Nodule detector: no model installed (models/nodule-detector); train one with "
            "`fathom nodule train` or set FATHOM_NODULE_MODEL."
        )
    st.subheader("Models")
    st.dataframe(pd.DataFrame(model_rows()), hide_index=True)
    st.subheader("Backends")
    config = backend_config()
    rows = cached_backends(config)
    left, right = st.columns([4, 1])
    left.caption(f"Each checked within {CHECK_TIMEOUT_S:g} s; results are kept {CHECK_TTL_S} s.")
    if right.button("Check again", key="home_recheck"):
        cached_backends.clear()
        rows = cached_backends(config)
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def main() -> None:
    """Lay out the navigation and run the selected page."""
    st.set_page_config(page_title="Fathom", page_icon=":material/waves:", layout="wide")
    pages = [
        st.Page(home, title="Home", icon=":material/home:", default=True),
        st.Page(
            cs_ui.render,
            title="Customer service",
            icon=":material/support_agent:",
            url_path="customer-service",
        ),
        st.Page(
            fraud_ui.render,
            title="Fraud alerts",
            icon=":material/credit_card_off:",
            url_path="fraud",
        ),
        st.Page(nodule_ui.render, title="Lung nodules", icon=":material/pulmonology:", url_path="nodule"),
        st.Page(models_ui.render, title="Models & drift", icon=":material/monitoring:", url_path="models"),
    ]
    st.navigation(pages).run()


if __name__ == "__main__":
    main()
