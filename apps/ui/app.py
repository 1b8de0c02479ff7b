"""Fathom's Streamlit app: a home page saying what is loaded, and each app's page.

Run with ``fathom ui`` or ``streamlit run apps/ui/app.py``. Pages are functions of the apps'
``ui`` modules, so each app's page also runs alone.
"""

from __future__ import annotations

import streamlit as st

from apps.customer_service import ui as cs_ui
from apps.fraud import ui as fraud_ui


def home() -> None:
    """What Fathom offers here and which models are loaded in this server process."""
    st.title("Fathom")
    st.markdown(
        "Domain AI for regulated industries. **Customer service**: a bank's support assistant that "
        "answers from the knowledge base with citations and hands urgent or uncertain cases to a human. "
        "**Fraud alerts**: the risk team's queue of scored card transactions, why each alert fired, "
        "and how the alerts turned out over time."
    )
    st.subheader("Loaded in this server")
    loaded = cs_ui.loaded_info()
    if loaded:
        st.success(f"Customer-service assistant: loaded, index `{loaded['index']}`")
    else:
        st.info("Customer-service assistant: not loaded yet; it loads when its page is first opened.")
    st.caption("The lung-nodule page is not part of this build yet.")


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
    ]
    st.navigation(pages).run()


if __name__ == "__main__":
    main()
