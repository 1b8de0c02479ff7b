"""Slot extraction for the support assistant: card type, amount, date and merchant from one message.

Rules, not a model: each slot has a few regular expressions written for how customers write to a
bank ("£25", "50 quid", "last Friday", "charged twice at Tesco"), so the result is deterministic and
every decision can be traced to a pattern. ``find_slots`` returns every match with its character
span (used to measure recall against NLU++ gold spans); ``extract_slots`` keeps the first match of
each slot, which is what the dialog state stores.

Dates resolve relative to ``today``. When a phrase does not fix the direction ("on Monday",
"the 13th", "12 March"), the message decides: with a future cue ("will", "by", "schedule", ...) and
no past-tense cue ("was", "paid", "ago", ...) it is the first such day not before today, otherwise
the latest not after today, because customers mostly write about what has already happened.
Numeric dates are read day first (``9/3/2019`` is 9 March), as a UK bank's customers write them.
A period ("last week", "next month") resolves to its first day.

Input is already PII-masked: tokens such as ``[CARD]`` or ``[EMAIL:qhzkbw]`` are never merchants.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from dateutil.relativedelta import relativedelta

SLOT_NAMES = ("card_type", "amount", "date", "merchant")

# ---------------------------------------------------------------------------------------------
# Numbers written as digits or words
# ---------------------------------------------------------------------------------------------
_UNITS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = "|".join(sorted([*_UNITS, *_SCALES], key=len, reverse=True))
_NUM_WORDS = rf"(?:{_WORD})(?:[\s-]+(?:and[\s-]+)?(?:{_WORD}))*"
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"


def _words_to_number(words: str) -> float | None:
    """``"two thousand five hundred"`` -> 2500; None when the words are not a number."""
    total, current = 0, 0
    tokens = [t for t in re.split(r"[\s-]+", words.lower()) if t and t != "and"]
    if tokens and tokens[0] in ("a", "an") and (len(tokens) == 1 or tokens[1] not in _SCALES):
        return None  # "a pound" is fine in speech, but "a" alone is too often just an article
    for token in tokens:
        if token in _UNITS:
            current += _UNITS[token]
        elif token == "hundred":
            current = max(current, 1) * 100
        elif token in _SCALES:
            total += max(current, 1) * _SCALES[token]
            current = 0
        else:
            return None
    return float(total + current)


def _number(digits: str | None, words: str | None) -> float | None:
    if digits:
        return float(digits.replace(",", ""))
    return _words_to_number(words) if words else None


# ---------------------------------------------------------------------------------------------
# Amounts
# ---------------------------------------------------------------------------------------------
_SYMBOLS = {"£": "GBP", "€": "EUR", "$": "USD", "¥": "JPY"}
_CODES = ("GBP", "EUR", "USD", "CHF", "JPY", "CAD", "AUD", "NZD", "PLN", "SEK", "NOK", "DKK", "CZK",
          "HUF", "RON", "BGN", "TRY", "INR", "CNY", "HKD", "SGD", "ZAR", "AED", "MXN", "BRL")  # fmt: skip
_CURRENCY_WORDS = {
    "pound": "GBP", "pounds": "GBP", "quid": "GBP", "sterling": "GBP", "pence": "GBP", "p": "GBP",
    "euro": "EUR", "euros": "EUR", "dollar": "USD", "dollars": "USD", "bucks": "USD", "yen": "JPY",
}  # fmt: skip
_SCALE_SUFFIX = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6, "bn": 1e9, "billion": 1e9}
_SCALE = r"(?:\s?(?P<scale>k|bn|m)\b|\s(?P<scalew>thousand|million|billion)\b)?"
_CODE = "|".join(_CODES)
_CUR_WORD = r"pounds?|quid|sterling|pence|euros?|dollars?|bucks|yen"
_NOT_AFTER_NUMBER = r"(?![\d/:-])"
_AMOUNT_PATTERNS = [
    re.compile(rf"(?P<sym>[£€$¥])\s?(?P<num>{_NUM}){_SCALE}"),
    re.compile(rf"(?<![\w.,])(?P<num>{_NUM}){_SCALE}\s?(?P<sym>[£€$¥])"),
    re.compile(rf"\b(?P<code>{_CODE})\s?(?P<num>{_NUM}){_SCALE}", re.IGNORECASE),
    re.compile(rf"(?<![\w.,])(?P<num>{_NUM}){_SCALE}\s?(?P<code>{_CODE})\b", re.IGNORECASE),
    re.compile(rf"(?<![\w.,])(?P<num>{_NUM}){_SCALE}\s?(?P<word>{_CUR_WORD})\b", re.IGNORECASE),
    re.compile(r"(?<![\w.,])(?P<num>\d+)(?P<word>p)\b(?!\.?m\b)"),
    re.compile(rf"\b(?P<words>{_NUM_WORDS})\s+(?P<word>{_CUR_WORD})\b", re.IGNORECASE),
]
# A bare number is money only right after a money verb or noun, and not followed by a unit.
_MONEY_CONTEXT = (
    r"\b(?:spen[dt]|spending|pa(?:y|id)|transfer(?:red)?|send|sent|charged?|costs?|withdr[ae]w|"
    r"refund(?:ed)?|owes?|owed|(?:more|less|higher|lower)\s+than|limit\s+(?:to|of)|"
    r"(?:payment|transfer|amount|charge|fee|refund|withdrawal|deposit|balance|total)\s+of)\s+"
    r"(?:(?:me|you|him|her|them|the|a|an|only|just|about|around|roughly|approximately|exactly|like)\s+)*"
)
_NOT_A_UNIT = (
    r"(?!\s*(?:%|percent|days?|weeks?|months?|years?|hours?|minutes?|mins?|seconds?|times?|am\b|pm\b|"
    r"a\.m|p\.m|o'?clock|st\b|nd\b|rd\b|th\b|people|persons?|cards?|transactions?|payments?|bills?|"
    r"transfers?|standing|direct|accounts?))"
)
# ... and only when what follows cannot be the noun it counts ("more than 2 business accounts").
_AFTER_BARE = (
    r"(?=\s*(?:$|[.,;:!?)]|(?:in|at|on|to|from|for|during|last|this|yesterday|today|into|and|or|but|"
    r"please|so|because|with|of|via|by|back|then|since|until|till|instead|already|now|ago)\b))"
)
_BARE_AMOUNT = re.compile(
    rf"{_MONEY_CONTEXT}(?P<num>{_NUM}){_NOT_AFTER_NUMBER}{_NOT_A_UNIT}{_AFTER_BARE}", re.IGNORECASE
)
# Two decimals read as money anywhere ("158.16"), but not a time ("at 10.30", "10.30 am").
_DECIMAL_AMOUNT = re.compile(
    r"(?<![\w.,:/£€$¥-])(?<!\bat )(?<!\bby )(?<!\buntil )"
    rf"(?P<num>(?:\d{{1,3}}(?:,\d{{3}})+|\d+)\.\d{{2}}){_NOT_AFTER_NUMBER}(?!\.\d){_NOT_A_UNIT}",
    re.IGNORECASE,
)


def _amount_matches(text: str) -> list[SlotMatch]:
    found: list[SlotMatch] = []
    for pattern in [*_AMOUNT_PATTERNS, _BARE_AMOUNT, _DECIMAL_AMOUNT]:
        for m in pattern.finditer(text):
            groups = m.groupdict()
            value = _number(groups.get("num"), groups.get("words"))
            if value is None:
                continue
            scale = groups.get("scale") or groups.get("scalew")
            if scale:
                value *= _SCALE_SUFFIX[scale.lower()]
            currency = None
            if groups.get("sym"):
                currency = _SYMBOLS[groups["sym"]]
            elif groups.get("code"):
                currency = groups["code"].upper()
            elif groups.get("word"):
                word = groups["word"].lower()
                currency = _CURRENCY_WORDS[word]
                if word in ("p", "pence"):
                    value /= 100
            start = m.start("num") if pattern is _BARE_AMOUNT else m.start()
            amount = {"value": round(value, 2), "currency": currency}
            found.append(SlotMatch("amount", amount, start, m.end()))
    return _non_overlapping(found)


# ---------------------------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------------------------
_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_MONTH = (
    r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?"
)
# Full names in any case; abbreviations only capitalised ("I sat down" is not a Saturday).
_WEEKDAY = r"(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day|(?-i:Mon|Tues?|Wed|Thu(?:rs?)?|Fri|Sat|Sun)\b\.?)"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+(?P<year>(?:19|20)\d\d))?"
_COUNT = rf"(?P<count>\d+|{_NUM_WORDS}|a couple of|couple of)"
_UNIT = r"(?P<unit>day|week|month|year)s?"

_PAST_CUE = re.compile(
    r"\b(?:was|were|did|didn't|had|been|ago|yesterday|last|earlier|since|paid|spent|sent|made|bought|"
    r"got|took|lost|stole|stolen|withdrew|went|came|gave|saw|told|[a-z]{2,}ed)\b",
    re.IGNORECASE,
)
_NOT_PAST = {"need", "feed", "speed", "seed", "bed", "red", "shed", "breed", "proceed", "succeed",
             "exceed", "embed", "indeed", "deed", "weed", "greed", "steed"}  # fmt: skip
_FUTURE_CUE = re.compile(
    r"\b(?:will|shall|going to|gonna|want|wants|need|needs|would like|'d like|schedule|book|plan|"
    r"set up|by|before|until|till|next|tomorrow|coming|upcoming|arrive|appointment|meeting|in \d+)\b",
    re.IGNORECASE,
)


def _tense(text: str) -> str:
    """ "future" when the message has a future cue and no past-tense cue, else "past"."""
    if any(m.group(0).lower() not in _NOT_PAST for m in _PAST_CUE.finditer(text)):
        return "past"
    return "future" if _FUTURE_CUE.search(text) else "past"


def _pick(candidates: list[dt.date], today: dt.date, tense: str, *, strict: bool = False) -> dt.date:
    """The candidate the tense asks for; ``strict`` excludes today itself (for weekdays)."""
    if tense == "future":
        ok = [c for c in candidates if c > today or (c == today and not strict)]
        return min(ok) if ok else max(candidates)
    ok = [c for c in candidates if c < today or (c == today and not strict)]
    return max(ok) if ok else min(candidates)


def _safe_date(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _month_day(m: re.Match[str], today: dt.date, tense: str) -> dt.date | None:
    month, day = _MONTHS[m.group("month")[:3].lower()], int(m.group("day"))
    if m.group("year"):
        return _safe_date(int(m.group("year")), month, day)
    options = [d for y in (today.year - 1, today.year, today.year + 1) if (d := _safe_date(y, month, day))]
    return _pick(options, today, tense) if options else None


def _weekday(name: str) -> int:
    return _WEEKDAYS[name[:3].lower()]


def _monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def _day_of_month(m: re.Match[str], today: dt.date, tense: str) -> dt.date | None:
    day = int(m.group("day"))
    which = (m.group("which") or "").lower()
    if which:
        base = today + relativedelta(months={"last": -1, "next": 1}.get(which.split()[0], 0))
        return _safe_date(base.year, base.month, day)
    options = []
    for shift in (-1, 0, 1):
        base = today + relativedelta(months=shift)
        if candidate := _safe_date(base.year, base.month, day):
            options.append(candidate)
    if m.group("last"):
        tense = "past"
    return _pick(options, today, tense) if options else None


def _relative(m: re.Match[str], today: dt.date, _tense: str) -> dt.date | None:
    raw = m.group("count").lower()
    if raw in ("a", "an"):
        count: float | None = 1
    else:
        count = 2 if "couple" in raw else (int(raw) if raw.isdigit() else _words_to_number(raw))
    if count is None or count > 5000:
        return None
    sign = -1 if m.group(0).lower().endswith("ago") else 1
    unit = m.group("unit").lower() + "s"
    return today + relativedelta(**{unit: sign * int(count)})


def _named_day(m: re.Match[str], today: dt.date, _tense: str) -> dt.date | None:
    phrase = re.sub(r"\s+", " ", m.group(0).lower())
    offsets = {"today": 0, "tonight": 0, "yesterday": -1, "last night": -1, "tomorrow": 1}
    if "after tomorrow" in phrase:
        return today + dt.timedelta(days=2)
    if "before yesterday" in phrase:
        return today - dt.timedelta(days=2)
    if phrase.startswith("this "):
        return today
    return today + dt.timedelta(days=offsets[phrase])


def _period(m: re.Match[str], today: dt.date, _tense: str) -> dt.date | None:
    which, unit = m.group("which").lower(), m.group("unit").lower()
    if which == "end":
        if unit == "month":
            return today + relativedelta(day=31)
        return dt.date(today.year, 12, 31)
    step = -1 if which == "last" else 1
    if unit == "week":
        return _monday(today) + dt.timedelta(weeks=step)
    if unit == "month":
        return (today + relativedelta(months=step)).replace(day=1)
    return dt.date(today.year + step, 1, 1)


def _week_day(m: re.Match[str], today: dt.date, tense: str) -> dt.date | None:
    target = _weekday(m.group("wd"))
    which = " ".join((m.group("which") or "").lower().split())
    week = {"last week": -1, "next week": 1}.get(which)
    if week is None and which in ("next", "this"):
        week = 1 if which == "next" else 0
    if week is not None:
        return _monday(today) + dt.timedelta(weeks=week, days=target)
    if which in ("last", "past", "previous"):
        tense = "past"
    this_week = _monday(today) + dt.timedelta(days=target)
    return _pick([this_week - dt.timedelta(weeks=1), this_week, this_week + dt.timedelta(weeks=1)], today,
                 tense, strict=True)  # fmt: skip


def _iso(m: re.Match[str], _today: dt.date, _tense: str) -> dt.date | None:
    return _safe_date(int(m.group("y")), int(m.group("m")), int(m.group("d")))


def _numeric(m: re.Match[str], _today: dt.date, _tense: str) -> dt.date | None:
    year = int(m.group("y"))
    year += 2000 if year < 100 else 0
    return _safe_date(year, int(m.group("m")), int(m.group("d")))


_ORDINAL_OK_NEXT = (
    r"(?=\s*(?:$|[.,;:!?)]|(?:at|to|and|until|till|then|please|or|this|of\s+(?:this|next|last)\s+month|"
    r"instead|is|was|would|will|for|so|but|because|through|how|what|when|which|who)\b))"
)
_DATE_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"\b(?P<y>(?:19|20)\d\d)-(?P<m>[01]?\d)-(?P<d>[0-3]?\d)\b"), _iso),
    (re.compile(r"(?<![\d.])(?P<d>[0-3]?\d)[/.](?P<m>[01]?\d)[/.](?P<y>(?:19|20)?\d\d)(?![\d.])"), _numeric),
    (re.compile(rf"\b(?:{_WEEKDAY},?\s+)?(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH}{_YEAR}", re.I), _month_day),
    (re.compile(rf"\b(?:{_WEEKDAY},?\s+)?{_MONTH}\s+(?:the\s+)?{_DAY}\b{_YEAR}\b", re.I), _month_day),
    (re.compile(r"\b(?:the\s+)?day\s+(?:after\s+tomorrow|before\s+yesterday)\b", re.I), _named_day),
    (
        re.compile(
            r"\b(?:today|tonight|yesterday|tomorrow|last\s+night|this\s+(?:morning|afternoon|evening))\b",
            re.I,
        ),
        _named_day,
    ),  # fmt: skip
    (re.compile(rf"\b{_COUNT}\s+{_UNIT}\s+ago\b", re.I), _relative),
    (re.compile(rf"\bin\s+{_COUNT}\s+{_UNIT}\b", re.I), _relative),
    (re.compile(rf"\b{_COUNT}\s+{_UNIT}\s+from\s+now\b", re.I), _relative),
    (re.compile(rf"\b(?P<which>last\s+week|next\s+week)\s+(?:on\s+)?(?P<wd>{_WEEKDAY})\b", re.I), _week_day),
    (re.compile(rf"\b(?P<wd>{_WEEKDAY})\s+(?P<which>last\s+week|next\s+week)\b", re.I), _week_day),
    (re.compile(rf"\b(?:(?P<which>last|past|previous|next|this)\s+)?(?P<wd>{_WEEKDAY})\b", re.I), _week_day),
    (re.compile(r"\b(?P<which>last|next)\s+(?P<unit>week|month|year)\b", re.I), _period),
    (re.compile(r"\b(?P<which>end)\s+of\s+(?:this|the)\s+(?P<unit>month|year)\b", re.I), _period),
    (
        re.compile(
            rf"\b(?:(?P<last>last)\s+|the\s+|on\s+(?:the\s+)?){_DAY}(?<=st|nd|rd|th)"
            rf"(?:\s+(?:of\s+)?(?P<which>(?:this|next|last)\s+month))?{_ORDINAL_OK_NEXT}",
            re.I,
        ),
        _day_of_month,
    ),  # fmt: skip
]


def _date_matches(text: str, today: dt.date) -> list[SlotMatch]:
    tense = _tense(text)
    found = []
    for pattern, resolve in _DATE_RULES:
        for m in pattern.finditer(text):
            day = resolve(m, today, tense)
            if day is not None:
                found.append(SlotMatch("date", day.isoformat(), m.start(), m.end()))
    return _non_overlapping(found)


# ---------------------------------------------------------------------------------------------
# Card type and merchant
# ---------------------------------------------------------------------------------------------
_CARD_TYPE = re.compile(
    r"\b(?P<kind>virtual|physical|plastic|debit|credit|disposable|prepaid|visa|master\s?card)"
    r"(?:\s+(?!card)[a-z]+){0,2}\s+cards?\b",
    re.IGNORECASE,
)
_CARD_BRAND = re.compile(r"\b(?P<kind>Visa|VISA|Master[Cc]ard|MASTERCARD)\b")
_MASK = re.compile(r"\[[^\]\s]*\]")
_PAYMENT_CONTEXT = re.compile(
    r"[£€$¥]|\b(?:pa(?:y|id|ying|yments?)|charg\w*|bought|buy\w*|purchas\w*|spen[dt]\w*|transactions?|"
    r"refund\w*|subscri\w*|debit\w*|orders?|ordered|shop\w*|store|merchant|bill\w*|costs?|money|"
    r"transfer\w*|sent|send|withdr\w*|declined|receipt|invoice|fee|fees|payee|recogni[sz]e)\b",
    re.IGNORECASE,
)
_MERCHANT = re.compile(
    r"\b(?i:at|from|to|with|on|in|for|by)\s+(?:(?i:the)\s+)?"
    r"(?P<name>[A-Z][\w&'.-]*(?:\s+(?:&\s+)?[A-Z][\w&'.-]*){0,3})"
)
_NOT_MERCHANT = {
    "i", "i'm", "i've", "i'd", "me", "my", "you", "your", "we", "our", "us", "they", "them", "he", "she",
    "it", "its", "the", "a", "an", "this", "that", "these", "those", "there", "here", "what", "which",
    "who", "why", "how", "when", "where", "please", "thanks", "thank", "hello", "hi", "hey", "yes", "no",
    "ok", "okay", "today", "tomorrow", "yesterday", "tonight", "harbour", "harbour bank", "bank",
    "atm", "pin", "app", "card", "account", "visa", "mastercard", "swift", "sepa", "iban", "bacs", "chaps",
    "uk", "eu", "usa", "gbp", "eur", "usd", "apple pay", "google pay", "apple wallet", "europe",
    "england", "scotland", "wales", "britain", "great britain", "united kingdom", "ireland", "france",
    "spain", "italy", "germany", "poland", "portugal", "netherlands", "belgium", "greece", "austria",
    "switzerland", "sweden", "norway", "denmark", "finland", "croatia", "turkey", "america",
    "united states", "canada", "mexico", "australia", "india", "china", "japan", "thailand", "dubai",
    "london", "paris", "berlin", "madrid", "rome", "dublin", "edinburgh", "manchester", "new york",
    "christmas", "easter", "customer", "customer service", "support",
}  # fmt: skip
_CALENDAR_WORD = re.compile(rf"^(?:{_MONTH}|{_WEEKDAY})$", re.IGNORECASE)


def _card_matches(text: str) -> list[SlotMatch]:
    found = [
        SlotMatch(
            "card_type",
            re.sub(r"\s", "", m.group("kind").lower()).replace("plastic", "physical"),
            m.start(),
            m.end(),
        )  # fmt: skip
        for pattern in (_CARD_TYPE, _CARD_BRAND)
        for m in pattern.finditer(text)
    ]
    return _non_overlapping(found)


def _merchant_matches(text: str, *, has_amount: bool) -> list[SlotMatch]:
    if not has_amount and not _PAYMENT_CONTEXT.search(text):
        return []
    found = []
    for m in _MERCHANT.finditer(_MASK.sub(lambda t: " " * len(t.group(0)), text)):
        tokens = []
        for token in m.group("name").split():
            tokens.append(token)
            if token.endswith((".", "!", "?")) and token.count(".") == 1:
                break  # the name ends with its sentence ("Tesco. Then ...")
        # Trailing calendar words or stop-words are not part of the name ("Tesco Monday").
        while tokens and (tokens[-1].lower() in _NOT_MERCHANT or _CALENDAR_WORD.match(tokens[-1])):
            tokens.pop()
        name = " ".join(tokens).rstrip(".'-,!?")
        first = tokens[0].lower().rstrip(".'-,") if tokens else ""
        if not name or first in _NOT_MERCHANT or name.lower() in _NOT_MERCHANT or _CALENDAR_WORD.match(first):
            continue
        if any(name.lower().startswith(stop + " ") for stop in ("apple pay", "google pay", "harbour bank")):
            continue
        start = m.start("name")
        found.append(SlotMatch("merchant", name, start, start + len(name)))
    return found


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlotMatch:
    """One slot found in a message.

    Args:
        name: one of ``SLOT_NAMES``.
        value: the normalised value (see ``extract_slots``).
        start: offset of the first character of the phrase in the message.
        end: offset just past the phrase.
    """

    name: str
    value: Any
    start: int
    end: int


def _non_overlapping(matches: list[SlotMatch]) -> list[SlotMatch]:
    """Longest match first at each position; a match overlapping a kept one is dropped."""
    kept: list[SlotMatch] = []
    for cand in sorted(matches, key=lambda s: (-(s.end - s.start), s.start)):
        if all(cand.end <= k.start or cand.start >= k.end for k in kept):
            kept.append(cand)
    return sorted(kept, key=lambda s: s.start)


def _check_args(text: object, today: object) -> dt.date:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if today is None:
        return dt.date.today()
    if isinstance(today, dt.datetime):
        return today.date()
    if not isinstance(today, dt.date):
        raise TypeError(f"today must be a datetime.date, got {type(today).__name__}")
    return today


def find_slots(text: str, *, today: dt.date | None = None) -> list[SlotMatch]:
    """Every slot phrase in ``text``, in text order, with spans.

    Args:
        text: one customer message, already PII-masked.
        today: the day relative dates resolve against (default: the local date now).

    Returns:
        The matches; within one slot no two overlap (the longest phrase wins).

    Raises:
        TypeError: ``text`` is not a string or ``today`` is not a date.
    """
    day = _check_args(text, today)
    matches = [*_card_matches(text), *_amount_matches(text), *_date_matches(text, day)]
    matches += _merchant_matches(text, has_amount=any(s.name == "amount" for s in matches))
    # An amount like "£12" or a date like "12 March" can look like a merchant name; keep the first reading.
    claimed = [s for s in matches if s.name in ("amount", "date")]
    matches = [
        s
        for s in matches
        if s.name != "merchant" or all(s.end <= c.start or s.start >= c.end for c in claimed)
    ]
    return sorted(matches, key=lambda s: (s.start, s.name))


def extract_slots(text: str, *, today: dt.date | None = None) -> dict[str, Any]:
    """The slots of one message, only those found.

    Args:
        text: one customer message, already PII-masked.
        today: the day relative dates resolve against (default: the local date now).

    Returns:
        A dict with some of: ``card_type`` (``"virtual"``, ``"physical"``, ``"debit"``, ``"credit"``,
        ``"disposable"``, ``"prepaid"``, ``"visa"``, ``"mastercard"``), ``amount``
        (``{"value": float, "currency": ISO 4217 code or None}``), ``date`` (ISO ``YYYY-MM-DD``) and
        ``merchant`` (the name as written). When a slot occurs twice, the first occurrence wins.

    Raises:
        TypeError: ``text`` is not a string or ``today`` is not a date.
    """
    slots: dict[str, Any] = {}
    for match in find_slots(text, today=today):
        slots.setdefault(match.name, match.value)
    return slots


def merge_slots(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Slots carried over a conversation: ``new`` values win, a ``None`` in ``new`` keeps the old value.

    Args:
        old: the slots so far.
        new: the slots of the latest message.

    Returns:
        A new dict; neither argument is changed.

    Raises:
        TypeError: either argument is not a dict.
    """
    for label, value in (("old", old), ("new", new)):
        if not isinstance(value, dict):
            raise TypeError(f"{label} slots must be a dict, got {type(value).__name__}")
    return {**old, **{k: v for k, v in new.items() if v is not None}}
