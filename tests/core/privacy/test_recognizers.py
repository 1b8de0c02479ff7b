"""Per-kind finders: real test numbers are found, look-alikes are not."""

from __future__ import annotations

import pytest

from core.privacy import card_brand
from core.privacy.recognizers import find_cards, find_emails, find_ibans, find_phones, find_uk_accounts


def spans_text(text: str, spans: list) -> list[str]:
    return [text[s:e] for _, s, e, _ in spans]


@pytest.mark.parametrize(
    ("digits", "brand"),
    [
        ("4111111111111111", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3530111333300000", "jcb"),
        ("30569309025904", "diners"),
        ("9111111111111111", None),  # no scheme issues under 9
        ("411111111111111", None),  # Visa is never 15 digits
    ],
)
def test_card_brand(digits: str, brand: str | None) -> None:
    assert card_brand(digits) == brand


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "378282246310005",
    ],
)
def test_cards_found(text: str) -> None:
    assert spans_text(f"pay with {text}.", find_cards(f"pay with {text}.")) == [text]


def test_card_inside_longer_digit_run_is_still_found() -> None:
    text = "ref 12 4111 1111 1111 1111 2025"
    assert spans_text(text, find_cards(text)) == ["4111 1111 1111 1111"]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "9111111111111111",  # Luhn-valid pattern but no issuer range (see below)
        "TXN4111111111111111",  # glued to letters: an id
        "ORD-4111111111111111",
        "0.4111111111111111",  # a decimal
        "41111111111111111111111",  # too long
    ],
)
def test_card_look_alikes_ignored(text: str) -> None:
    assert find_cards(text) == []


def test_unknown_iin_is_ignored_even_when_luhn_valid() -> None:
    from stdnum import luhn

    number = "911111111111111" + luhn.calc_check_digit("911111111111111")
    assert luhn.is_valid(number) and find_cards(number) == []


@pytest.mark.parametrize(
    "text",
    [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89 3704 0044 0532 0130 00",
        "gb82west12345698765432",
    ],
)
def test_ibans_found_and_trailing_words_not_swallowed(text: str) -> None:
    sentence = f"to {text} and 2 more"
    assert spans_text(sentence, find_ibans(sentence)) == [text]


def test_adjacent_ibans_both_found() -> None:
    text = "GB82 WEST 1234 5698 7654 32 DE89 3704 0044 0532 0130 00"
    assert spans_text(text, find_ibans(text)) == [
        "GB82 WEST 1234 5698 7654 32",
        "DE89 3704 0044 0532 0130 00",
    ]


@pytest.mark.parametrize(
    "text", ["GB82 WEST 1234 5698 7654 33", "DE89 3704 0044 0532 0130 01", "AB12 CDEF GHIJ KLMN"]
)
def test_iban_bad_checksum_ignored(text: str) -> None:
    assert find_ibans(text) == []


def test_uk_account_needs_context() -> None:
    text = "sort code 12-34-56, account 12345678"
    assert spans_text(text, find_uk_accounts(text)) == ["12-34-56", "12345678"]
    assert find_uk_accounts("paid 12345678 on 12-34-56") == []
    assert find_uk_accounts("account balance £12345678") == []
    assert find_uk_accounts("account total 12345678.50") == []
    assert find_uk_accounts("account opened 2024-05-01") == []


def test_phones() -> None:
    text = "call +44 20 7946 0958 or 07700 900123 (not 1234 or 2024-05-01)"
    assert spans_text(text, find_phones(text, "GB")) == ["+44 20 7946 0958", "07700 900123"]
    assert find_phones("£1,234.56 on 01/05/2024", "GB") == []


def test_emails() -> None:
    text = "write to Ann.O'Neil+bank@mail.example.co.uk, or x@y.io."
    assert spans_text(text, find_emails(text)) == ["Ann.O'Neil+bank@mail.example.co.uk", "x@y.io"]
    assert find_emails("no @ here, user@localhost, @handle") == []
