"""One finder per kind of PII: each returns ``(kind, start, end, confidence)`` spans over the text.

Finders over-report nothing they cannot justify: every span is either checked by a validating
library (Luhn for cards, ISO 13616 checksums for IBANs, ``phonenumbers`` metadata for phones) or,
where no checksum exists (UK sort codes and account numbers), anchored to a context word. They
may overlap each other; ``core.privacy.pii`` resolves overlaps.

Only ASCII digits are treated as digits here (``[0-9]``, never ``\\d``), so that a regex cannot
silently widen to other scripts' digits; ``phonenumbers`` does its own normalisation.
"""

from __future__ import annotations

import re

import phonenumbers
from stdnum import iban, luhn

Span = tuple[str, int, int, float]  # (kind, start, end, confidence)

# --- cards -------------------------------------------------------------------------------------

# stdnum has Luhn but no card-brand (IIN) table, so brands are checked against these public
# prefix ranges (ISO/IEC 7812 issuer ranges as published by the schemes). A Luhn-valid number
# outside every range is not reported: ~10% of random digit runs pass Luhn, and the range check
# is what keeps transaction ids and references from being masked.
# (brand, inclusive prefix ranges compared on the first len(str(low)) digits, allowed lengths)
_BRANDS: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]], ...] = (
    ("visa", ((4, 4),), (13, 16, 19)),
    ("mastercard", ((51, 55), (2221, 2720)), (16,)),
    ("amex", ((34, 34), (37, 37)), (15,)),
    ("discover", ((6011, 6011), (644, 649), (65, 65), (622126, 622925)), (16, 17, 18, 19)),
    ("diners", ((300, 305), (36, 36), (38, 39)), (14, 15, 16, 17, 18, 19)),
    ("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    ("unionpay", ((62, 62),), (16, 17, 18, 19)),
    ("maestro", ((50, 50), (56, 69)), tuple(range(13, 20))),
)

# A run of digit groups joined by single spaces or dashes. It must not be glued to a word
# ("TXN4111...", "ORD-4111...") or sit inside a decimal ("12.4111..."): those are ids and amounts.
_DIGIT_RUN = re.compile(
    r"(?<![0-9A-Za-z_])(?<![0-9A-Za-z_][-/])(?<![0-9][.,])"
    r"[0-9]+(?:[ -][0-9]+)*"
    r"(?![0-9A-Za-z_])(?![.,][0-9])"
)


def card_brand(digits: str) -> str | None:
    """Name the card scheme whose IIN range and length fit ``digits``, or None.

    Args:
        digits: the card number, digits only.
    """
    for brand, ranges, lengths in _BRANDS:
        if len(digits) not in lengths:
            continue
        for low, high in ranges:
            width = len(str(low))
            if low <= int(digits[:width]) <= high:
                return brand
    return None


def find_cards(text: str) -> list[Span]:
    """Card numbers: 13-19 digits (optionally grouped), Luhn-valid and in a known IIN range.

    A run such as "ref 12 4111 1111 1111 1111" is searched group by group, so a card number
    next to other digits is still found. Every start group reports its longest valid window and
    the overlaps are left to the caller: skipping past a chance Luhn hit (1 in 10) that later
    loses to an IBAN would leave the real card beside it unmasked.

    Args:
        text: the text to search.
    """
    spans: list[Span] = []
    for run in _DIGIT_RUN.finditer(text):
        groups = [
            (g.start() + run.start(), g.end() + run.start()) for g in re.finditer(r"[0-9]+", run.group())
        ]
        for i in range(len(groups)):
            best, digits = None, ""
            for j in range(i, len(groups)):
                digits += text[groups[j][0] : groups[j][1]]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn.is_valid(digits) and card_brand(digits):
                    best = j
            if best is not None:
                spans.append(("CARD", groups[i][0], groups[best][1], 0.95))
    return spans


# --- IBANs -------------------------------------------------------------------------------------

# Country code, check digits, then 11-30 alphanumerics (IBANs are 15-34 long) in optional
# space-separated groups. The greedy candidate may swallow a following word ("... 32 and"), so
# it is shrunk back to each group boundary until the checksum validates.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")


def find_ibans(text: str) -> list[Span]:
    """IBANs validated by ``stdnum.iban`` (country format and mod-97 checksum).

    Args:
        text: the text to search.
    """
    spans: list[Span] = []
    pos = 0
    while (m := _IBAN.search(text, pos)) is not None:
        cand = m.group()
        ends = [k for k in range(len(cand), 14, -1) if k == len(cand) or cand[k] == " "]
        end = next((k for k in ends if iban.is_valid(cand[:k])), None)
        if end is None:
            pos = m.start() + 1  # a later IBAN may start inside this failed candidate
            continue
        spans.append(("IBAN", m.start(), m.start() + end, 0.99))
        pos = m.start() + end
    return spans


# --- UK sort codes and account numbers ----------------------------------------------------------

# No checksum is public for these (modulus checking needs the banks' Vocalink tables), and their
# shapes (6 and 8 digits) collide with dates, amounts and ids. So a number is reported only when
# a context word precedes it, with at most 20 non-digit characters between (no currency sign,
# so "account balance £12345678" stays an amount), and it is not part of a decimal.
# A grouped number must not continue in the same grouping ("account 4111 1111 1111 1111" is
# not account 41111111). Neither a word inside a mask tag ("[ACCOUNT]") nor one separated from
# the number by a masked value ("account [CARD] paid 12345678") is context: re-masking must
# find nothing new.
_FILLER = r"[^0-9\n£$€*\[\]]{0,20}?"
_SORT_CODE = re.compile(
    r"(?<!\[)\b(?:sort[ -]?code|s/c)\b" + _FILLER + r"(?<![0-9])([0-9]{2}([- ]?)[0-9]{2}\2[0-9]{2})"
    r"(?![0-9])(?![-.,][0-9])(?!\2[0-9])",
    re.IGNORECASE,
)
_ACCOUNT = re.compile(
    r"(?<!\[)\b(?:accounts?|acct|acc|a/c)\b"
    + _FILLER
    + r"(?<![0-9])([0-9]{8}|[0-9]{4}[ -][0-9]{4}(?![ -][0-9]))"
    r"(?![0-9])(?![-.,][0-9])",
    re.IGNORECASE,
)


def find_uk_accounts(text: str) -> list[Span]:
    """UK sort codes ("sort code 12-34-56") and account numbers ("account 12345678").

    Args:
        text: the text to search.
    """
    spans: list[Span] = [("SORT_CODE", m.start(1), m.end(1), 0.8) for m in _SORT_CODE.finditer(text)]
    spans += [("ACCOUNT", m.start(1), m.end(1), 0.8) for m in _ACCOUNT.finditer(text)]
    return spans


# --- phone numbers -----------------------------------------------------------------------------

_DATE_LIKE = re.compile(r"[0-9]{1,4}[-/.][0-9]{1,2}[-/.][0-9]{1,4}")


def _glued_to_digits(text: str, start: int, end: int) -> bool:
    """Whether a digit sits next to [start, end), ignoring one space or dash on either side."""
    before = text[max(0, start - 2) : start].rstrip(" -")[-1:]
    after = text[end : end + 2].lstrip(" -")[:1]
    return before.isdigit() or after.isdigit()


def find_phones(text: str, region: str) -> list[Span]:
    """Phone numbers found by ``phonenumbers.PhoneNumberMatcher``.

    Matches at ``Leniency.VALID`` get confidence 0.9. Numbers that are only *possible* are kept
    (0.6) when written like a phone number: international "+" or the region's trunk prefix, at
    least 10 digits, not date- or amount-shaped, and not a fragment of a longer digit sequence
    (those are IBANs, cards or references that failed their own checks). Without this tier,
    stale metadata or reserved ranges (Ofcom's 07700 900xxx, used in our synthetic data) would
    let a real-looking number through unmasked.

    Args:
        text: the text to search.
        region: ISO 3166 region used for numbers written without a country code.
    """
    trunk = phonenumbers.ndd_prefix_for_region(region, True) or "+"
    leniency = phonenumbers.Leniency
    spans: list[Span] = [
        ("PHONE", m.start, m.end, 0.9)
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency.VALID)
    ]
    found = {(s[1], s[2]) for s in spans}
    for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency.POSSIBLE):
        raw = m.raw_string
        if (
            (m.start, m.end) not in found
            and raw.startswith(("+", trunk))
            and sum(c.isdigit() for c in raw) >= 10
            and not any(c in raw for c in ".,/")
            and not _DATE_LIKE.fullmatch(raw)
            and not _glued_to_digits(text, m.start, m.end)
        ):
            spans.append(("PHONE", m.start, m.end, 0.6))
    return spans


# --- e-mail addresses --------------------------------------------------------------------------

# Practical RFC 5322 subset: dot-atom local part, dotted DNS labels, alphabetic TLD. Quantifiers
# are bounded and never nested over the same characters, so there is no catastrophic backtracking.
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])"  # a quote before it is punctuation ('ann@x.com'), not address
    r"[A-Za-z0-9_%+-][A-Za-z0-9._%+'-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9])"
)


def find_emails(text: str) -> list[Span]:
    """E-mail addresses (local@domain.tld).

    Args:
        text: the text to search.
    """
    return [("EMAIL", m.start(), m.end(), 0.95) for m in _EMAIL.finditer(text)]
