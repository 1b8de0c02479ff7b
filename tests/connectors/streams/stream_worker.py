"""A consumer process for the crash tests: ``python -m tests.connectors.streams.stream_worker``.

It scores transactions from SOURCE into RESULTS, dead letters into DEAD, and appends every
transaction id it processes to the Redis list LOG (so a test can see redeliveries). With
``--hang-after-write ID`` it writes that transaction's result and then hangs before
acknowledging it: the test kills it there, the worst moment for at-least-once delivery.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import redis

from connectors.streams import open_sink, open_source, run
from tests.connectors.streams.streamdata import score


class HangAfterWrite:
    """A sink that stops forever right after writing ``key`` (before the loop can acknowledge)."""

    def __init__(self, inner: Any, key: str | None) -> None:
        self.inner, self.key = inner, key

    def available(self) -> tuple[bool, str]:
        return self.inner.available()

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        stored = self.inner.write(key, value)
        if key == self.key:
            time.sleep(3600)  # killed here
        return stored

    def close(self) -> None:
        self.inner.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("source", "results", "dead", "log_url", "log_key"):
        parser.add_argument(name)
    parser.add_argument("--hang-after-write")
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    log = redis.Redis.from_url(args.log_url)

    def process(tx: Any) -> dict[str, Any]:
        log.rpush(args.log_key, tx.transaction_id)
        return score(tx)

    run(
        open_source(args.source),
        process,
        HangAfterWrite(open_sink(args.results), args.hang_after_write),
        open_sink(args.dead),
        batch_size=args.batch_size,
    )


if __name__ == "__main__":
    main()
