from __future__ import annotations

import datetime as _dt
import json

import pytest

from connectors.streams.schema import InvalidRecord, Transaction, decode_payload, parse_transaction
from tests.connectors.streams.streamdata import BREAKAGES, handbook_rows


def test_handbook_row_maps_to_canonical_fields() -> None:
    row = handbook_rows(1, invalid_every=0)[0]
    tx = parse_transaction(row)
    assert tx.transaction_id == "0"
    assert tx.timestamp == _dt.datetime(2018, 4, 1, tzinfo=_dt.UTC)
    assert (tx.customer_id, tx.terminal_id, tx.amount, tx.label) == ("100", "2000", 10.0, True)
    assert tx.currency == "EUR" and tx.channel is None and tx.merchant_category is None


def test_canonical_form_round_trips_through_json() -> None:
    tx = Transaction(
        transaction_id="t-1",
        timestamp=_dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.timezone(_dt.timedelta(hours=2))),
        customer_id="c",
        terminal_id="m",
        amount=12.5,
        currency="usd",
        channel="ecom",
        merchant_category=5411,
        label=None,
    )
    assert tx.timestamp.tzinfo == _dt.UTC and tx.timestamp.hour == 1
    assert tx.currency == "USD" and tx.merchant_category == "5411"
    assert parse_transaction(json.dumps(tx.to_json_dict()).encode()) == tx


def test_integer_ids_and_aliases() -> None:
    tx = parse_transaction(
        {
            "tx_id": 7,
            "datetime": "2026-01-01T00:00:00Z",
            "card_id": 42,
            "merchant_id": 9.0,
            "amount": 0,
            "mcc": "5999",
        }
    )
    assert (tx.transaction_id, tx.customer_id, tx.terminal_id, tx.merchant_category) == (
        "7",
        "42",
        "9",
        "5999",
    )


@pytest.mark.parametrize(("change", "word"), BREAKAGES)
def test_each_breakage_is_named(change: dict[str, str], word: str) -> None:
    row = handbook_rows(1, invalid_every=0)[0] | change
    with pytest.raises(InvalidRecord) as info:
        parse_transaction(row)
    assert info.value.reason.startswith(word + ":"), info.value.reason


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON list"),
        ({"amount": float("nan"), "transaction_id": "x"}, "finite"),
        ({"TX_DATETIME": "2018-04-01", "timestamp": "2018-04-01"}, "both give 'timestamp'"),
        ({"transaction_id": True}, "not a boolean"),
        ({"currency": "EURO"}, "ISO 4217"),
        ({None: ["surplus"]}, "more value(s) than the header"),
    ],
)
def test_bad_payloads_say_why(payload: object, words: str) -> None:
    with pytest.raises(InvalidRecord, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_transaction(payload)  # type: ignore[arg-type]


def test_unknown_fields_are_ignored_or_named() -> None:
    row = handbook_rows(1, invalid_every=0)[0] | {"colour": "red"}
    assert parse_transaction(row).transaction_id == "0"
    with pytest.raises(InvalidRecord, match="colour: unknown field"):
        parse_transaction(row, unknown="forbid")


def test_single_json_field_is_unwrapped() -> None:
    assert decode_payload({"json": '{"a": 1}'}) == {"a": 1}
    assert decode_payload({b"k": b"v"}) == {"k": "v"}


@pytest.mark.realdata
def test_handbook_file_rows_are_valid(shared_data) -> None:
    import csv
    import gzip
    import itertools

    path = shared_data / "fraud-handbook" / "transactions_2018-04-01_to_2018-07-31.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), 2000))
    txs = [parse_transaction(r) for r in rows]
    assert len({t.transaction_id for t in txs}) == 2000
    assert all(t.label is not None and t.amount >= 0 for t in txs)
    assert txs[0].timestamp == _dt.datetime(2018, 4, 1, 0, 0, 31, tzinfo=_dt.UTC)
