"""Detect and mask PII (cards, IBANs, UK accounts, phones, e-mails) before text leaves our hands.

Call :func:`mask` on anything about to be logged, embedded, stored or sent to an LLM::

    >>> mask("card 4111 1111 1111 1111, mail ann@example.com").text
    'card [CARD], mail [EMAIL]'

Kinds and their tags: ``CARD``, ``IBAN``, ``SORT_CODE``, ``ACCOUNT``, ``PHONE``, ``EMAIL``. How each
kind is recognised (and what is deliberately left alone) is documented in
``core.privacy.recognizers``.

Styles:

- ``"tag"``: "[CARD]".
- ``"partial"``: keeps what a support agent needs to tell values apart and no more: the last 4
  digits of cards, accounts and phones ("**** **** **** 1111"), the last 2 of a sort code, the
  country and last 4 characters of an IBAN, the first letter and domain of an e-mail.
- ``"hash"``: "[CARD:qhzkbw]", six letters of an HMAC-SHA256 of the normalised value under
  ``salt``, so the same card gives the same token for the whole session (dialog state can refer
  to "the card" without holding it). The default salt is random per process: card numbers have
  little entropy, so a known salt would let anyone brute-force tokens back to numbers.

Masking is idempotent: masking masked text changes nothing, so a record that passes through
several redacting handlers is not mangled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

import phonenumbers
from stdnum import iban

from core.privacy import recognizers

KINDS = ("CARD", "IBAN", "SORT_CODE", "ACCOUNT", "PHONE", "EMAIL")
STYLES = ("tag", "partial", "hash")

# When two spans overlap, the longer wins; on equal length, the more specific kind (the one
# whose check is stronger) wins: an IBAN contains a sort code and account, a card can parse as a
# phone number, and an e-mail's local part can hold a phone number.
_SPECIFICITY = {"IBAN": 6, "CARD": 5, "EMAIL": 4, "ACCOUNT": 3, "SORT_CODE": 2, "PHONE": 1}

_SESSION_SALT = secrets.token_bytes(16)
# Each pass only adds spans, and real text converges in two; the cap bounds adversarial input.
_MAX_PASSES = 4


@dataclass(frozen=True)
class PIIEntity:
    """One piece of PII found in a text.

    Args:
        kind: one of ``KINDS``.
        start: offset of the first character in the searched text.
        end: offset one past the last character.
        text: the raw value. Left out of ``repr`` so that logging an entity does not leak it.
        confidence: 0-1; 0.99 checksum-validated IBAN, 0.95 Luhn + IIN card and e-mail, 0.9 valid
            phone, 0.8 context-anchored UK account/sort code, 0.6 possible-but-unlisted phone.
    """

    kind: str
    start: int
    end: int
    text: str = field(repr=False)
    confidence: float


@dataclass(frozen=True)
class MaskResult:
    """The masked text and the entities that were replaced (offsets refer to the input text).

    Args:
        text: the masked text.
        entities: what was masked, in order of position.
    """

    text: str
    entities: list[PIIEntity]


def _check_args(text: object, region: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {region!r}: expected an ISO 3166 code such as 'GB'")


def _find_all(text: str, region: str) -> list[recognizers.Span]:
    return (
        recognizers.find_cards(text)
        + recognizers.find_ibans(text)
        + recognizers.find_uk_accounts(text)
        + recognizers.find_phones(text, region)
        + recognizers.find_emails(text)
    )


def _resolve_overlaps(spans: list[recognizers.Span], kept: list[recognizers.Span]) -> list[recognizers.Span]:
    """The spans overlapping nothing in ``kept`` nor each other, longest and most specific first."""
    ranked = sorted(spans, key=lambda s: (-(s[2] - s[1]), -_SPECIFICITY[s[0]], s[1]))
    added: list[recognizers.Span] = []
    for span in ranked:
        if all(span[2] <= k[1] or span[1] >= k[2] for k in kept + added):
            added.append(span)
    return added


def detect(text: str, *, region: str = "GB") -> list[PIIEntity]:
    """Find PII in ``text``; overlapping candidates are resolved so spans never overlap.

    Finding is repeated on the text with what was found blanked out ("[____]", same length so
    offsets hold), until nothing new appears. Matchers judge candidates by their neighbours
    (``phonenumbers`` rejects a phone followed by more digits, a chance Luhn hit can swallow
    part of a phone), so one pass can miss PII that masking its neighbour would expose; the
    repeat finds it now, which is also what makes masking idempotent.

    Args:
        text: the text to search.
        region: ISO 3166 region for phone numbers written without a country code.

    Returns:
        Non-overlapping entities ordered by ``start``.

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: ``region`` is not a region ``phonenumbers`` knows.
    """
    _check_args(text, region)
    kept: list[recognizers.Span] = []
    work = text
    for _ in range(_MAX_PASSES):
        added = _resolve_overlaps(_find_all(work, region), kept)
        if not added:
            break
        kept += added
        for _, start, end, _ in added:
            work = work[:start] + "[" + "_" * (end - start - 2) + "]" + work[end:]
    kept.sort(key=lambda s: s[1])
    return [PIIEntity(k, s, e, text[s:e], c) for k, s, e, c in kept]


def _keep_last(value: str, n: int) -> str:
    """Star every letter/digit except the last ``n``, keeping separators and a leading '+'."""
    positions = [i for i, c in enumerate(value) if c.isalnum()]
    hide = set(positions[:-n] if n else positions)
    return "".join("*" if i in hide else c for i, c in enumerate(value))


def _partial(entity: PIIEntity) -> str:
    value = entity.text
    if entity.kind == "EMAIL":
        local, _, domain = value.rpartition("@")
        return f"{local[0]}***@{domain}"
    if entity.kind == "IBAN":
        return value[:2] + _keep_last(value[2:], 4)
    return _keep_last(value, 2 if entity.kind == "SORT_CODE" else 4)


def _normalise(entity: PIIEntity, region: str) -> str:
    """The canonical value, so "4111-1111-1111-1111" and "4111111111111111" hash alike."""
    if entity.kind == "EMAIL":
        return entity.text.lower()
    if entity.kind == "IBAN":
        return iban.compact(entity.text)
    if entity.kind == "PHONE":
        try:
            number = phonenumbers.parse(entity.text, region)
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        except phonenumbers.NumberParseException:  # matcher found it, so this is a safety net
            pass
    return re.sub(r"[^0-9]", "", entity.text)


def hash_token(entity: PIIEntity, *, salt: bytes | str | None = None, region: str = "GB") -> str:
    """The "hash"-style token for an entity, e.g. "[CARD:qhzkbw]".

    Args:
        entity: a detected entity.
        salt: HMAC key; None uses a random per-process salt (stable within this process).
        region: region used to normalise phone numbers to E.164.
    """
    key = _SESSION_SALT if salt is None else salt.encode() if isinstance(salt, str) else salt
    message = f"{entity.kind}:{_normalise(entity, region)}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    # Letters only: hex digits in a token would join neighbouring digits into new candidates
    # ("[CARD:092683] 0958" reads as a phone), so re-masking would change masked text.
    return f"[{entity.kind}:{''.join(chr(97 + b % 26) for b in digest[:6])}]"


def mask(text: str, *, region: str = "GB", style: str = "tag", salt: bytes | str | None = None) -> MaskResult:
    """Replace PII in ``text`` according to ``style``.

    Args:
        text: the text to mask.
        region: ISO 3166 region for phone numbers written without a country code.
        style: "tag", "partial" or "hash" (see the module docstring).
        salt: HMAC key for the "hash" style; None uses a random per-process salt.

    Returns:
        The masked text and the entities replaced (offsets into the original ``text``).

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: unknown ``style`` or ``region``.
    """
    if style not in STYLES:
        raise ValueError(f"unknown mask style {style!r}: expected one of {STYLES}")
    entities = detect(text, region=region)
    out = text
    # Right to left, so each replacement leaves the offsets of those before it valid.
    for entity in reversed(entities):
        if style == "tag":
            replacement = f"[{entity.kind}]"
        elif style == "partial":
            replacement = _partial(entity)
        else:
            replacement = hash_token(entity, salt=salt, region=region)
        out = out[: entity.start] + replacement + out[entity.end :]
    return MaskResult(out, entities)
