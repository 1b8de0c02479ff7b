"""The card-transaction record every stream backend yields, and how raw rows become one.

``Transaction`` is the canonical form (snake_case fields, timezone-aware UTC timestamp, ids as
strings). ``parse_transaction`` accepts that form, the Fraud Detection Handbook's columns
(``TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD`` ...), a few
common aliases (``card_id``, ``merchant_id``, ``mcc``), or the same as JSON bytes/text, and
raises ``InvalidRecord`` naming every problem. Callers send such records to a dead-letter
destination with that reason; nothing is dropped silently.

    tx = parse_transaction({"TRANSACTION_ID": "0", "TX_DATETIME": "2018-04-01 00:00:31",
                            "CUSTOMER_ID": "596", "TERMINAL_ID": "3156", "TX_AMOUNT": "57.16",
                            "TX_FRAUD": "0"})
    tx.customer_id, tx.amount, tx.label  # ("596", 57.16, False)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Column names of other sources -> canonical field names. Keys are matched case-insensitively.
ALIASES: dict[str, str] = {
    # Fraud Detection Handbook (simulated-data-raw)
    "transaction_id": "transaction_id",
    "tx_datetime": "timestamp",
    "customer_id": "customer_id",
    "terminal_id": "terminal_id",
    "tx_amount": "amount",
    "tx_fraud": "label",
    # common alternatives
    "tx_id": "transaction_id",
    "id": "transaction_id",
    "datetime": "timestamp",
    "time": "timestamp",
    "card_id": "customer_id",
    "card": "customer_id",
    "merchant_id": "terminal_id",
    "merchant": "terminal_id",
    "mcc": "merchant_category",
    "is_fraud": "label",
    "fraud": "label",
}
# Columns of known sources that carry nothing the record needs (derived from other columns).
IGNORED = frozenset({"tx_time_seconds", "tx_time_days", "tx_fraud_scenario"})

MAX_AMOUNT = 1e12  # beyond any card payment; larger values overflow the features (a NaN score)
DEFAULT_CURRENCY = "EUR"  # the handbook's amounts carry no currency; its generator models euros


class InvalidRecord(ValueError):
    """A record that is not a valid transaction; ``reason`` says what is wrong, field by field.

    Args:
        reason: the problems, e.g. ``"amount: must be a finite number from 0 to 1e+12 (got 'abc')"``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Transaction(BaseModel):
    """One card transaction.

    Args:
        transaction_id: unique id; the key of idempotent writes.
        timestamp: when it happened, timezone-aware (naive input is taken as UTC).
        customer_id: the card or card holder.
        terminal_id: the merchant or terminal.
        amount: a finite amount from 0 to ``MAX_AMOUNT`` in ``currency``.
        currency: ISO 4217 code, upper case (``EUR``).
        channel: e.g. ``pos``, ``ecom``, ``atm`` when the source has it.
        merchant_category: merchant category code when the source has it.
        label: True for fraud, False for genuine, None when unknown.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    transaction_id: str = Field(min_length=1)
    timestamp: _dt.datetime
    customer_id: str = Field(min_length=1)
    terminal_id: str = Field(min_length=1)
    amount: float
    currency: str = DEFAULT_CURRENCY
    channel: str | None = None
    merchant_category: str | None = None
    label: bool | None = None

    @field_validator("transaction_id", "customer_id", "terminal_id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be an id (text or integer), not a boolean")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # e.g. a pandas column of ids read as float
        if isinstance(value, int):
            return str(value)
        return value.strip() if isinstance(value, str) else value

    @field_validator("channel", "merchant_category", mode="before")
    @classmethod
    def _optional_text(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value.strip() if isinstance(value, str) else value

    @field_validator("timestamp", mode="after")
    @classmethod
    def _utc(cls, value: _dt.datetime) -> _dt.datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=_dt.UTC)
        return value.astimezone(_dt.UTC)

    @field_validator("amount", mode="after")
    @classmethod
    def _finite_amount(cls, value: float) -> float:
        if not math.isfinite(value) or not 0 <= value <= MAX_AMOUNT:
            raise ValueError(f"must be a finite number from 0 to {MAX_AMOUNT:.0e} (got {value!r})")
        return value

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return DEFAULT_CURRENCY
        if not isinstance(value, str) or len(value.strip()) != 3 or not value.strip().isalpha():
            raise ValueError(f"must be a 3-letter ISO 4217 code (got {value!r})")
        return value.strip().upper()

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "fraud", "yes"}:
                return True
            if lowered in {"0", "false", "genuine", "no"}:
                return False
            raise ValueError(f"must be 0/1 or true/false (got {value!r})")
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be 0/1 or true/false (got {value!r})")

    def to_json_dict(self) -> dict[str, Any]:
        """The canonical form as JSON-ready values (timestamp in ISO 8601 with offset)."""
        return self.model_dump(mode="json")


def decode_payload(payload: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """Turn a message payload into a field mapping.

    Args:
        payload: a mapping of fields (Redis stream entry, CSV row), or a JSON object as bytes/text
            (Kafka value). A mapping whose only field is ``json`` holds a JSON object in it.

    Returns:
        The fields, keys as given.

    Raises:
        InvalidRecord: bytes that are not UTF-8, text that is not a JSON object.
    """
    if isinstance(payload, Mapping):
        if set(payload) == {"json"}:
            return decode_payload(payload["json"])
        return {_text(k): _text(v) if isinstance(v, bytes) else v for k, v in payload.items()}
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRecord(f"payload is not UTF-8 text: {err}") from None
    if isinstance(payload, str):
        try:
            value = json.loads(payload)
        except json.JSONDecodeError as err:
            raise InvalidRecord(f"payload is not JSON: {err.msg} at position {err.pos}") from None
        if not isinstance(value, dict):
            raise InvalidRecord(f"payload is JSON {type(value).__name__}, expected an object")
        return value
    raise InvalidRecord(f"payload of type {type(payload).__name__} is neither a mapping nor JSON")


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def canonical_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Rename source columns to canonical field names, dropping known derived columns.

    Raises:
        InvalidRecord: two columns map to the same field (e.g. ``TX_DATETIME`` and ``timestamp``).
    """
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in fields.items():
        if key is None:  # csv.DictReader puts surplus values of a ragged row under None
            raise InvalidRecord(f"row has {len(value)} more value(s) than the header has columns")
        lowered = str(key).strip().lower()
        if lowered in IGNORED:
            continue
        name = ALIASES.get(lowered, lowered)
        if name in out:
            raise InvalidRecord(f"columns {origin[name]!r} and {key!r} both give {name!r}")
        out[name] = value
        origin[name] = str(key)
    return out


def parse_transaction(payload: Mapping[str, Any] | bytes | str, *, unknown: str = "ignore") -> Transaction:
    """Validate one raw record into a ``Transaction``.

    Args:
        payload: see ``decode_payload``; column names as in ``ALIASES`` or canonical.
        unknown: ``"ignore"`` drops fields the schema does not know (upstream metadata);
            ``"forbid"`` rejects the record naming them (catches misspelt columns).

    Returns:
        The transaction.

    Raises:
        InvalidRecord: with every problem named, e.g. ``"amount: Input should be a valid number"``.
    """
    if unknown not in ("ignore", "forbid"):
        raise ValueError(f"unknown must be 'ignore' or 'forbid', not {unknown!r}")
    fields = canonical_fields(decode_payload(payload))
    if unknown == "ignore":
        fields = {k: v for k, v in fields.items() if k in Transaction.model_fields}
    try:
        return Transaction.model_validate(fields)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = ".".join(str(part) for part in error["loc"]) or "record"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(f"{where}: {message}")
        raise InvalidRecord("; ".join(problems)) from None
