"""Small transaction streams for the stream tests: handbook-style rows, some of them invalid."""

from __future__ import annotations

import datetime as _dt
from typing import Any

HANDBOOK_COLUMNS = [
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
]
START = _dt.datetime(2018, 4, 1)
# Ways a row can be wrong, and a word that the dead-letter reason must contain.
BREAKAGES = [
    ({"TX_AMOUNT": "abc"}, "amount"),
    ({"CUSTOMER_ID": ""}, "customer_id"),
    ({"TX_DATETIME": "yesterday"}, "timestamp"),
    ({"TX_AMOUNT": "-5"}, "amount"),
    ({"TX_FRAUD": "maybe"}, "label"),
]


def handbook_rows(n: int, invalid_every: int = 7, seconds_apart: int = 10) -> list[dict[str, str]]:
    """``n`` rows as the handbook CSV has them (strings); every ``invalid_every``-th is broken."""
    rows = []
    for i in range(n):
        moment = START + _dt.timedelta(seconds=i * seconds_apart)
        row = {
            "TRANSACTION_ID": str(i),
            "TX_DATETIME": moment.strftime("%Y-%m-%d %H:%M:%S"),
            "CUSTOMER_ID": str(100 + i % 5),
            "TERMINAL_ID": str(2000 + i % 3),
            "TX_AMOUNT": f"{10 + i * 1.5:.2f}",
            "TX_TIME_SECONDS": str(i * seconds_apart),
            "TX_TIME_DAYS": "0",
            "TX_FRAUD": str(int(i % 11 == 0)),
            "TX_FRAUD_SCENARIO": "0",
        }
        if invalid_every and i % invalid_every == invalid_every - 1:
            row.update(BREAKAGES[(i // invalid_every) % len(BREAKAGES)][0])
        rows.append(row)
    return rows


def invalid_ids(rows: list[dict[str, Any]], invalid_every: int = 7) -> set[str]:
    """Transaction ids of the rows ``handbook_rows`` broke."""
    return {
        r["TRANSACTION_ID"]
        for i, r in enumerate(rows)
        if invalid_every and i % invalid_every == invalid_every - 1
    }


def score(tx: Any) -> dict[str, Any]:
    """A stand-in model: the amount scaled, plus the customer (so results can be checked)."""
    return {"score": round(tx.amount / 1000, 6), "customer_id": tx.customer_id}
