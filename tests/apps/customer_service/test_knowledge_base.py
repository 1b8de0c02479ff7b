"""The Harbour Bank knowledge base: front matter, BANKING77 coverage, loading, and retrieval quality."""

from __future__ import annotations

import csv
import random
import re
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest
import yaml

from apps.customer_service import KNOWLEDGE_BASE
from connectors.knowledge import load_path

# The 77 BANKING77 intent labels, copied so the tests run without ../shared/data.
BANKING77_LABELS = frozenset(
    {
        "card_arrival", "card_linking", "exchange_rate", "card_payment_wrong_exchange_rate",
        "extra_charge_on_statement", "pending_cash_withdrawal", "fiat_currency_support",
        "card_delivery_estimate", "automatic_top_up", "card_not_working", "exchange_via_app",
        "lost_or_stolen_card", "age_limit", "pin_blocked", "contactless_not_working",
        "top_up_by_bank_transfer_charge", "pending_top_up", "cancel_transfer", "top_up_limits",
        "wrong_amount_of_cash_received", "card_payment_fee_charged", "transfer_not_received_by_recipient",
        "supported_cards_and_currencies", "getting_virtual_card", "card_acceptance", "top_up_reverted",
        "balance_not_updated_after_cheque_or_cash_deposit", "card_payment_not_recognised",
        "edit_personal_details", "why_verify_identity", "unable_to_verify_identity", "get_physical_card",
        "visa_or_mastercard", "topping_up_by_card", "disposable_card_limits", "compromised_card",
        "atm_support", "direct_debit_payment_not_recognised", "passcode_forgotten",
        "declined_cash_withdrawal", "pending_card_payment", "lost_or_stolen_phone", "request_refund",
        "declined_transfer", "Refund_not_showing_up", "declined_card_payment", "pending_transfer",
        "terminate_account", "card_swallowed", "transaction_charged_twice", "verify_source_of_funds",
        "transfer_timing", "reverted_card_payment?", "change_pin", "beneficiary_not_allowed",
        "transfer_fee_charged", "receiving_money", "failed_transfer", "transfer_into_account",
        "verify_top_up", "getting_spare_card", "top_up_by_cash_or_cheque", "order_physical_card",
        "virtual_card_not_working", "wrong_exchange_rate_for_cash_withdrawal",
        "get_disposable_virtual_card", "top_up_failed", "balance_not_updated_after_bank_transfer",
        "cash_withdrawal_not_recognised", "exchange_charge", "top_up_by_card_charge", "activate_my_card",
        "cash_withdrawal_charge", "card_about_to_expire", "apple_pay_or_google_pay", "verify_my_identity",
        "country_support",
    }
)  # fmt: skip

CATEGORIES = frozenset(
    {
        "cards", "card-delivery", "pin-and-security", "top-ups", "transfers", "exchange", "fees",
        "disputes-and-refunds", "account-security", "identity-verification", "account", "payments", "cash",
    }
)  # fmt: skip
URGENT_INTENTS = frozenset(
    {
        "lost_or_stolen_card", "compromised_card", "lost_or_stolen_phone", "card_payment_not_recognised",
        "cash_withdrawal_not_recognised", "direct_debit_payment_not_recognised",
    }
)  # fmt: skip
HUMAN_PHONE = "+44 20 7946 0000"
REQUIRED_KEYS = ("title", "category", "intents", "urgent", "updated")
BANKING77_TRAIN = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "banking77" / "train.csv"

SAMPLE_SIZE = 300
SAMPLE_SEED = 77
# Measured 2026-11 with seed 77 and the packaged MiniLM: hit@3 = 0.817; the bound keeps a margin.
HIT_AT_3_BOUND = 0.77


def _articles() -> list[Path]:
    return sorted(KNOWLEDGE_BASE.glob("*.md"))


def _split(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path.name}: no front matter"
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def articles() -> dict[str, tuple[dict, str]]:
    return {path.name: _split(path) for path in _articles()}


def test_knowledge_base_constant_points_at_the_articles() -> None:
    assert KNOWLEDGE_BASE.is_dir()
    assert KNOWLEDGE_BASE.name == "knowledge_base"


def test_article_count_and_file_names() -> None:
    paths = _articles()
    assert len(paths) >= 60, f"only {len(paths)} articles"
    assert [p for p in KNOWLEDGE_BASE.iterdir() if p.suffix != ".md"] == []
    for path in paths:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*\.md", path.name), f"not kebab-case: {path.name}"


def test_front_matter_is_complete_and_valid(articles: dict[str, tuple[dict, str]]) -> None:
    titles = set()
    for name, (front, body) in articles.items():
        assert isinstance(front, dict), name
        for key in REQUIRED_KEYS:
            assert key in front, f"{name}: missing {key!r}"
        assert isinstance(front["title"], str) and front["title"].strip(), name
        assert front["title"] not in titles, f"{name}: duplicate title {front['title']!r}"
        titles.add(front["title"])
        assert front["category"] in CATEGORIES, f"{name}: unknown category {front['category']!r}"
        intents = front["intents"]
        assert isinstance(intents, list) and intents, f"{name}: intents must be a non-empty list"
        unknown = set(intents) - BANKING77_LABELS
        assert not unknown, f"{name}: not BANKING77 labels: {sorted(unknown)}"
        assert isinstance(front["urgent"], bool), name
        assert isinstance(front["updated"], date), f"{name}: updated must be a date"
        assert body.lstrip().startswith(f"# {front['title']}\n"), f"{name}: body must start with '# Title'"


def test_article_shape_and_length(articles: dict[str, tuple[dict, str]]) -> None:
    for name, (_, body) in articles.items():
        sections = re.findall(r"^## \S", body, flags=re.MULTILINE)
        assert 2 <= len(sections) <= 5, f"{name}: {len(sections)} '##' sections"
        words = len(re.findall(r"[\w£€$%']+", body))
        assert 150 <= words <= 400, f"{name}: {words} words"


def test_every_banking77_intent_is_covered(articles: dict[str, tuple[dict, str]]) -> None:
    assert len(BANKING77_LABELS) == 77
    covered = {intent for front, _ in articles.values() for intent in front["intents"]}
    assert sorted(BANKING77_LABELS - covered) == []


def test_urgent_articles_send_customers_to_freeze_and_a_human(articles: dict[str, tuple[dict, str]]) -> None:
    urgent = {name: (front, body) for name, (front, body) in articles.items() if front["urgent"]}
    covered = {intent for front, _ in urgent.values() for intent in front["intents"]}
    assert covered >= URGENT_INTENTS, f"no urgent article for {sorted(URGENT_INTENTS - covered)}"
    for name, (_, body) in urgent.items():
        assert "freeze" in body.lower(), f"{name}: urgent article must say to freeze the card"
        assert HUMAN_PHONE in body, f"{name}: urgent article must give {HUMAN_PHONE}"
        assert "human agent" in body, f"{name}: urgent article must offer a human agent"


def test_fee_table_is_referenced_and_consistent(articles: dict[str, tuple[dict, str]]) -> None:
    _, fees = articles["fees-and-limits.md"]
    for fact in ("£5.99", "1.5%", "£10,000", "£1,000", "0.5%", "1%", "£200", "2%", "£500", "£25,000"):
        assert fact in fees, f"fee table lacks {fact}"
    referencing = [n for n, (_, body) in articles.items() if '"Harbour Bank fees and limits"' in body]
    assert len(referencing) >= 10
    everything = " ".join(body for _, body in articles.values())
    # Facts that must never contradict the fee table.
    assert "3-5 working days" in everything and "up to 10 working days" in everything
    assert not re.search(r"free up to £(?!200)\d+ (a|each|per) (calendar )?month", everything)


def test_every_article_loads_and_chunks_with_metadata() -> None:
    result = load_path(KNOWLEDGE_BASE)
    assert result.skipped == []
    assert result.rejected == []
    sources = {doc.metadata["source"] for doc in result.documents}
    assert len(sources) == len(_articles())
    for doc in result.documents:
        assert doc.text.strip()
        assert doc.metadata["title"], doc.id
        assert "section" in doc.metadata
        assert set(doc.metadata["intents"]) <= BANKING77_LABELS
    assert sum(1 for doc in result.documents if doc.metadata["section"]) > len(sources)


def _sample_queries(path: Path, size: int, seed: int) -> list[tuple[str, str]]:
    """A seeded sample stratified over intents: round-robin over shuffled per-intent queries."""
    by_intent: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_intent[row["category"]].append(row["text"])
    rng = random.Random(seed)
    pools = {intent: rng.sample(texts, len(texts)) for intent, texts in sorted(by_intent.items())}
    sample: list[tuple[str, str]] = []
    depth = 0
    while len(sample) < size:
        for intent, texts in pools.items():
            if depth < len(texts) and len(sample) < size:
                sample.append((texts[depth], intent))
        depth += 1
    return sample


@pytest.mark.realdata
def test_retrieval_hit_at_3_on_banking77(tmp_path: Path) -> None:
    if not BANKING77_TRAIN.is_file():
        pytest.skip(f"needs {BANKING77_TRAIN}")
    from core.retrieval.embeddings import Embedder
    from core.retrieval.hybrid import HybridRetriever

    start = time.perf_counter()
    chunks = load_path(KNOWLEDGE_BASE).documents
    embedder = Embedder(device="cpu", cache_dir=tmp_path / "cache")
    retriever = HybridRetriever.build(chunks, embedder=embedder, index_kind="flat")
    sample = _sample_queries(BANKING77_TRAIN, SAMPLE_SIZE, SAMPLE_SEED)
    assert len(sample) == SAMPLE_SIZE and len({intent for _, intent in sample}) == 77
    embedder.embed([query for query, _ in sample])  # one batch; search() then reads the embedding cache
    hits = 0
    for query, intent in sample:
        top = retriever.search(query, k=3)
        hits += any(intent in hit.metadata["intents"] for hit in top)
    hit_at_3 = hits / len(sample)
    elapsed = time.perf_counter() - start
    print(f"\nBANKING77 hit@3 over {len(sample)} queries: {hit_at_3:.3f} ({elapsed:.1f} s)")
    assert hit_at_3 >= HIT_AT_3_BOUND  # a quality floor; speed is fathom bench's job, not a test's
