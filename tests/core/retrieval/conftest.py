"""Shared fixtures: the real packaged MiniLM (loaded once per session) and a tiny bank corpus."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from core.retrieval.documents import DocumentRecord  # noqa: E402
from core.retrieval.embeddings import Embedder  # noqa: E402
from core.retrieval.hybrid import HybridRetriever  # noqa: E402

BANK_FAQ = {
    "card-lost": "If your card is lost or stolen, freeze it in the app at once and order a replacement card.",
    "card-pin": "You can change your PIN at any of our cash machines or reset it in the mobile app.",
    "card-declined": "A payment can be declined when you are over your limit or the shop looks suspicious.",
    "swift": "For international transfers use our SWIFT code FTHMGB2L; payments arrive in one to three days.",
    "transfer-limit": "The daily limit for transfers in the app is 10,000 pounds; call us to raise it.",
    "mortgage-rate": "Our fixed-rate mortgages lock your interest rate for two, five or ten years.",
    "mortgage-overpay": "You may overpay up to ten percent of your mortgage balance each year without a fee.",
    "savings-interest": "Interest on easy-access savings accounts is paid monthly into the same account.",
    "isa": "A cash ISA lets you save up to 20,000 pounds a year without paying tax on the interest.",
    "overdraft": "An arranged overdraft costs 39.9 percent EAR; unarranged borrowing is blocked.",
    "fraud-call": "We will never ask for your full PIN or password by phone; hang up and call us back.",
    "statement": "Download monthly statements as PDF from the Documents section of online banking.",
    "address-change": "Update your home address in Settings, then Personal details; we may ask for proof.",
    "joint-account": "Open a joint account with up to three other people; each holder gets their own card.",
    "close-account": "To close your current account, move your direct debits first, then tell us in the app.",
    "abroad": "Tell us before you travel so your card keeps working abroad; no foreign fee on debit.",
    "cheque": "Pay in a cheque by taking a photo of it in the app; money clears within two working days.",
    "loan": "Personal loans from 1,000 to 25,000 pounds, repaid over one to seven years.",
    "branch-hours": "Most branches open from 9am to 5pm on weekdays and until 1pm on Saturday.",
    "complaint": "To make a complaint, use form CF-42 in the app or write to our customer relations team.",
    "contactless": "The contactless payment limit is 100 pounds per transaction.",
    "dispute": "To dispute a card transaction you do not recognise, report it in the app within 120 days.",
}


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(device="cpu", cache_dir=tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture(scope="session")
def bank_docs() -> list[DocumentRecord]:
    return [
        DocumentRecord(id=key, text=text, metadata={"source": f"faq/{key}.md", "topic": key.split("-")[0]})
        for key, text in BANK_FAQ.items()
    ]


@pytest.fixture(scope="session")
def saved_retriever(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, bank_docs: list[DocumentRecord]
) -> tuple[HybridRetriever, Path]:
    directory = tmp_path_factory.mktemp("retriever")
    return HybridRetriever.build(bank_docs, directory, embedder=embedder, index_kind="flat"), directory


@pytest.fixture(scope="session")
def retriever(saved_retriever: tuple[HybridRetriever, Path]) -> HybridRetriever:
    return saved_retriever[0]
