"""Slot extraction: hand-written cases, then recall against the NLU++ banking gold spans."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from apps.customer_service.slots import extract_slots, find_slots, merge_slots

TODAY = dt.date(2026, 11, 18)  # a Wednesday


def amount(value: float, currency: str | None) -> dict[str, object]:
    return {"value": value, "currency": currency}


WHOLE_MESSAGES = [
    (
        "I paid £25 at Tesco yesterday",
        {"amount": amount(25, "GBP"), "merchant": "Tesco", "date": "2026-11-17"},
    ),
    (
        "25 GBP to Netflix last Friday",
        {"amount": amount(25, "GBP"), "merchant": "Netflix", "date": "2026-11-13"},
    ),
    (
        "€1,250.50 from Amazon 3 days ago",
        {"amount": amount(1250.5, "EUR"), "merchant": "Amazon", "date": "2026-11-15"},
    ),
    ("I was charged 100 dollars on 12 March", {"amount": amount(100, "USD"), "date": "2026-03-12"}),
    (
        "I want 50 quid back for the payment on 2026-11-02",
        {"amount": amount(50, "GBP"), "date": "2026-11-02"},
    ),
    (
        "my virtual card was declined at Costa Coffee. Then I tried again",
        {"card_type": "virtual", "merchant": "Costa Coffee"},
    ),
    ("why was my Visa charged twice by Uber Eats?", {"card_type": "visa", "merchant": "Uber Eats"}),
    ("I lost my [CARD] and someone paid at [MERCHANT] with it today", {"date": "2026-11-18"}),
]


@pytest.mark.parametrize(("text", "expected"), WHOLE_MESSAGES)
def test_whole_messages(text: str, expected: dict[str, object]) -> None:
    assert extract_slots(text, today=TODAY) == expected


@pytest.mark.parametrize(
    ("text", "value", "currency"),
    [
        ("£25", 25.0, "GBP"),
        ("25 GBP", 25.0, "GBP"),
        ("eur 40", 40.0, "EUR"),
        ("€1,250.50", 1250.5, "EUR"),
        ("100 dollars", 100.0, "USD"),
        ("50 quid", 50.0, "GBP"),
        ("700£", 700.0, "GBP"),
        ("9.56$", 9.56, "USD"),
        ("a fee of 50p", 0.5, "GBP"),
        ("£2k", 2000.0, "GBP"),
        ("3 thousand dollars", 3000.0, "USD"),
        ("a thousand pounds", 1000.0, "GBP"),
        ("twenty five euros", 25.0, "EUR"),
        ("I spent 158.16 at the pharmacy", 158.16, None),
        ("did I spend more than 400 in groceries", 400.0, None),
    ],
)
def test_amounts(text: str, value: float, currency: str | None) -> None:
    assert extract_slots(text, today=TODAY)["amount"] == {"value": value, "currency": currency}


@pytest.mark.parametrize(
    "text",
    [
        "Can I open more than 2 business accounts?",
        "it happened 5 days ago",
        "the branch opens at 10.30 tomorrow",
        "I tried 3 times",
        "my card ends in [CARD]",
        "is it 4pm already",
    ],
)
def test_numbers_that_are_not_money(text: str) -> None:
    assert "amount" not in extract_slots(text, today=TODAY)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("today", "2026-11-18"),
        ("it was yesterday", "2026-11-17"),
        ("last Friday", "2026-11-13"),
        ("on Monday I was charged twice", "2026-11-16"),
        ("I will pay it on Monday", "2026-11-23"),
        ("next Tuesday", "2026-11-24"),
        ("Saturday last week", "2026-11-14"),
        ("3 days ago", "2026-11-15"),
        ("two weeks ago", "2026-11-04"),
        ("a week ago", "2026-11-11"),
        ("in 3 days", "2026-11-21"),
        ("the day after tomorrow", "2026-11-20"),
        ("on 12 March", "2026-03-12"),
        ("can you schedule it for 12 March", "2027-03-12"),
        ("I paid on the 13th", "2026-11-13"),
        ("March the 12th 2024", "2024-03-12"),
        ("Fri, 7 Jan 2022", "2022-01-07"),
        ("2026-11-02", "2026-11-02"),
        ("The date I want is 9/3/2019", "2019-03-09"),
        ("last month", "2026-10-01"),
        ("last week", "2026-11-09"),
        ("by the end of this year", "2026-12-31"),
    ],
)
def test_dates(text: str, iso: str) -> None:
    assert extract_slots(text, today=TODAY)["date"] == iso


@pytest.mark.parametrize(
    "text",
    [
        "I sat down",
        "can I get 2 cards",
        "may I order a card",
        "the 5th time it failed",
        "version 1.2.3",
        "12/31/2026",
    ],
)
def test_not_dates(text: str) -> None:
    assert "date" not in extract_slots(text, today=TODAY)


@pytest.mark.parametrize(
    ("text", "card_type"),
    [
        ("my virtual card does not work", "virtual"),
        ("when will my physical card arrive", "physical"),
        ("I want a plastic card", "physical"),
        ("is this a debit card", "debit"),
        ("Credit cards accepted?", "credit"),
        ("can I get a disposable virtual card", "disposable"),
        ("is it a Visa or a Mastercard", "visa"),
        ("MasterCard please", "mastercard"),
    ],
)
def test_card_types(text: str, card_type: str) -> None:
    assert extract_slots(text, today=TODAY)["card_type"] == card_type


@pytest.mark.parametrize(
    "text",
    ["a direct debit I don't know", "I need a visa for my trip", "the credit on my account", "my card"],
)
def test_not_card_types(text: str) -> None:
    assert "card_type" not in extract_slots(text, today=TODAY)


@pytest.mark.parametrize(
    ("text", "merchant"),
    [
        ("a payment to Netflix I don't recognise", "Netflix"),
        ("refund from Amazon Prime Video is missing", "Amazon Prime Video"),
        ("I was charged twice at McDonald's", "McDonald's"),
        ("At Sainsbury's my card was declined", "Sainsbury's"),
        ("I paid at Tesco I think", "Tesco"),
        ("charged 4 times by H&M", "H&M"),
    ],
)
def test_merchants(text: str, merchant: str) -> None:
    assert extract_slots(text, today=TODAY)["merchant"] == merchant


@pytest.mark.parametrize(
    "text",
    [
        "I sat at a table with Tom",  # no payment context
        "I paid at [CARD] with my card",  # a masked token
        "I sent money to [PERSON] from [IBAN]",
        "a fee from Harbour Bank",  # the bank itself
        "I paid in Spain on Monday",  # a country and a weekday
        "payment to I don't know who",  # a stop-word
        "I paid with Apple Pay",
    ],
)
def test_not_merchants(text: str) -> None:
    assert "merchant" not in extract_slots(text, today=TODAY)


def test_first_of_each_slot_wins_and_spans_point_at_the_phrase() -> None:
    text = "paid £5 at Tesco and then £7 at Boots on 3 March"
    assert extract_slots(text, today=TODAY) == {
        "amount": amount(5, "GBP"),
        "merchant": "Tesco",
        "date": "2026-03-03",
    }
    spans = {(m.name, text[m.start : m.end]) for m in find_slots(text, today=TODAY)}
    assert {("amount", "£5"), ("amount", "£7"), ("merchant", "Boots"), ("date", "3 March")} <= spans


def test_today_defaults_to_the_local_date() -> None:
    assert extract_slots("yesterday")["date"] == (dt.date.today() - dt.timedelta(days=1)).isoformat()
    assert extract_slots("today", today=dt.datetime(2026, 1, 2, 23, 59))["date"] == "2026-01-02"


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="text must be a string"):
        extract_slots(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="today must be a datetime.date"):
        extract_slots("today", today="2026-01-01")  # type: ignore[arg-type]


def test_merge_slots() -> None:
    old = {"amount": amount(5, "GBP"), "merchant": "Tesco"}
    new = {"merchant": "Boots", "date": "2026-11-02", "card_type": None}
    merged = merge_slots(old, new)
    assert merged == {"amount": amount(5, "GBP"), "merchant": "Boots", "date": "2026-11-02"}
    assert old == {"amount": amount(5, "GBP"), "merchant": "Tesco"}  # unchanged
    with pytest.raises(TypeError, match="new slots must be a dict"):
        merge_slots(old, [("merchant", "Boots")])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# NLU++ banking (PolyAI, CC BY 4.0): gold spans of amounts and dates
# ---------------------------------------------------------------------------------------------
NLUPP_TODAY = dt.date(2022, 3, 15)  # the day NLU++ resolved its relative dates against ("today")
DATE_SLOTS = ("date", "date_from", "date_to")
# Expressions whose value does not depend on a past/future convention, for checking resolved values.
UNAMBIGUOUS = re.compile(
    r"\b(?:ago|yesterday|today|tonight|tomorrow|from now|last night|this (?:morning|afternoon|evening))\b"
    r"|^in \d+|\blast (?:mon|tues|wednes|thurs|fri|satur|sun)day\b",
    re.IGNORECASE,
)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.realdata
def test_recall_on_nlupp_banking(shared_data: Path) -> None:
    folder = shared_data / "nlupp-banking"
    if not folder.is_dir():
        pytest.skip(f"needs {folder} (absent)")
    items = [item for path in sorted(folder.glob("fold*.json")) for item in json.loads(path.read_text())]
    assert len(items) > 2000
    found = {"amount": 0, "date": 0}
    gold = {"amount": 0, "date": 0}
    amount_values = amount_found = date_values = date_checked = 0
    for item in items:
        matches = find_slots(item["text"], today=NLUPP_TODAY)
        for name, slot in item.get("slots", {}).items():
            kind = "amount" if name == "amount_of_money" else "date" if name in DATE_SLOTS else None
            if kind is None:
                continue
            gold[kind] += 1
            hits = [m for m in matches if m.name == kind and _overlaps((m.start, m.end), tuple(slot["span"]))]
            if hits:
                found[kind] += 1
            value = slot.get("value")
            if kind == "amount" and hits and isinstance(value, dict):
                amount_found += 1
                currency = None if value["currency"] == "ambiguous" else value["currency"]
                amount_values += hits[0].value == {"value": value["amount"], "currency": currency}
            if kind == "date" and isinstance(value, dict) and UNAMBIGUOUS.search(slot["text"]):
                date_checked += 1
                day = dt.date(value["year"], value["month"], value["day"]).isoformat()
                date_values += bool(hits) and hits[0].value == day
    amount_recall = found["amount"] / gold["amount"]
    date_recall = found["date"] / gold["date"]
    print(
        f"\nNLU++ banking ({len(items)} utterances): amount recall {amount_recall:.3f} "
        f"({found['amount']}/{gold['amount']}), value+currency right {amount_values}/{amount_found}; "
        f"date recall {date_recall:.3f} ({found['date']}/{gold['date']}), "
        f"relative dates resolved right {date_values}/{date_checked}"
    )
    # Measured 0.983 and 0.950 (the misses are month or year names alone and "some days ago").
    assert amount_recall >= 0.95
    assert date_recall >= 0.92
    assert amount_values / amount_found >= 0.97
    assert date_values / date_checked >= 0.97
