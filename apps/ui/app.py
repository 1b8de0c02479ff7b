"""Fathom's Streamlit app: a home page saying what is loaded, and each app's page.

Run with ``fathom ui`` or ``streamlit run apps/ui/app.py``. Pages are functions of the apps'
``ui`` modules, so each app's page also runs alone.
"""

from __future__ import annotations

import streamlit as st

from apps.customer_service import ui as cs_ui
from apps.fraud import ui as fraud_ui
from apps.nodule import ui as nodule_ui
from apps.ui import models as models_ui


def home() -> None:
    """What Fathom offers here and which models are loaded in this server process."""
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
