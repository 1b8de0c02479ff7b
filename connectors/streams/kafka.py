"""Kafka backend (confluent-kafka): a consumer-group source with manual commits, and a topic sink.

``KafkaSource`` subscribes as a member of a consumer group with automatic commits off. ``ack``
records that a message's result is written; the acknowledged offsets are committed
synchronously at the next ``read``, before partitions are revoked in a rebalance, and on
``close``. A consumer that dies re-delivers, to the next member of the group, everything after
its last commit: at-least-once, so results must be written idempotently (keyed by transaction
id). The run loop acknowledges messages in the order it reads them, so the committed offset of
a partition is the one after its last acknowledged message.

``KafkaSink`` produces JSON values keyed by the sink key (transaction id for results, message
id for the dead-letter topic) and waits for the broker's acknowledgement before returning, so
the source's commit never runs ahead of the write. Kafka cannot refuse a key it already holds:
a redelivery can append the same key twice, which a compacted topic (``cleanup.policy=compact``)
or a reader keyed by the message key collapses.

Values are JSON objects (UTF-8); message keys are text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from connectors.streams.base import Message, StreamError, to_json

log = logging.getLogger(__name__)


def kafka_available() -> tuple[bool, str]:
    """Whether confluent-kafka is installed."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as err:
        return False, f"Kafka needs confluent-kafka (pip install confluent-kafka): {err}"
    return True, ""


def _require() -> Any:
    ok, why = kafka_available()
    if not ok:
        raise StreamError(why)
    import confluent_kafka

    return confluent_kafka


class KafkaSource:
    """One member of a Kafka consumer group on one topic, committing only acknowledged offsets.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topic: the topic to read.
        group: consumer group id.
        config: extra librdkafka settings (e.g. ``{"session.timeout.ms": 6000}``); they may not
            turn automatic commits back on.

    Raises:
        StreamError: confluent-kafka is missing or the settings are invalid.
    """

    def __init__(
        self, bootstrap: str, topic: str, group: str, config: Mapping[str, Any] | None = None
    ) -> None:
        ck = _require()
        settings = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            **dict(config or {}),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
        self.topic, self.group = topic, group
        self._ck = ck
        try:
            self._consumer = ck.Consumer(settings)
        except ck.KafkaException as err:
            raise StreamError(f"kafka: cannot create a consumer for {bootstrap}: {err}") from None
        self._acked: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to commit
        self._consumer.subscribe([topic], on_revoke=self._on_revoke)

    def available(self) -> tuple[bool, str]:
        return kafka_available()

    @property
    def finished(self) -> bool:
        return False

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.commit()  # finish what this member acknowledged before another takes the partitions

    def commit(self) -> None:
        """Commit the acknowledged offsets now (synchronously); a lost commit only causes redelivery."""
        if not self._acked:
            return
        offsets = [self._ck.TopicPartition(t, p, o) for (t, p), o in self._acked.items()]
        self._acked.clear()
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except self._ck.KafkaException as err:
            # e.g. the partitions were reassigned meanwhile: the new owner re-reads them (at-least-once)
            log.warning("kafka: commit of %d offset(s) failed, to be redelivered: %s", len(offsets), err)

    def read(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        """Commit what was acknowledged, then up to ``max_messages`` messages within ``timeout`` s.

        Raises:
            StreamError: the broker reports an error other than reaching a partition's end.
        """
        self.commit()
        out = []
        for record in self._consumer.consume(num_messages=max_messages, timeout=timeout):
            error = record.error()
            if error is not None:
                if error.code() == self._ck.KafkaError._PARTITION_EOF:
                    continue
                raise StreamError(f"kafka: reading {self.topic!r}: {error.str()}")
            topic, partition, offset = record.topic(), record.partition(), record.offset()
            out.append(
                Message(
                    id=f"{topic}/{partition}/{offset}",
                    payload=record.value() or b"",
                    source=topic,
                    meta={"topic": topic, "partition": partition, "offset": offset},
                )
            )
        return out

    def ack(self, message: Message) -> None:
        key = (message.meta["topic"], message.meta["partition"])
        self._acked[key] = max(self._acked.get(key, 0), message.meta["offset"] + 1)

    def close(self, commit: bool = True) -> None:
        """Leave the group, first committing acknowledged offsets.

        Args:
            commit: False leaves without committing, as a crashed consumer would: the group
                re-delivers everything after the last commit.
        """
        try:
            if commit:
                self.commit()
            else:
                self._acked.clear()  # the revoke callback of close() must not commit them either
        finally:
            self._consumer.close()


class KafkaSink:
    """Produce each value as JSON to a topic, keyed by ``key``, and wait for the broker to have it.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topic: the topic (a dead-letter or result topic).
        config: extra librdkafka producer settings.
        timeout: seconds to wait for the broker's acknowledgement of each write.
    """

    def __init__(
        self, bootstrap: str, topic: str, config: Mapping[str, Any] | None = None, timeout: float = 10.0
    ) -> None:
        ck = _require()
        self.topic, self.timeout = topic, timeout
        settings = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"}
        settings.update(config or {})
        try:
            self._producer = ck.Producer(settings)
        except ck.KafkaException as err:
            raise StreamError(f"kafka: cannot create a producer for {bootstrap}: {err}") from None

    def available(self) -> tuple[bool, str]:
        return kafka_available()

    def write(self, key: str, value: Mapping[str, Any]) -> bool:
        """Produce and wait for delivery.

        Returns:
            True: Kafka cannot tell whether ``key`` was written before (see the module docstring).

        Raises:
            StreamError: the broker did not acknowledge the write within ``timeout``.
        """
        errors: list[Any] = []
        payload = to_json(value).encode()
        self._producer.produce(
            self.topic, key=key.encode(), value=payload, on_delivery=lambda e, _: errors.append(e)
        )
        remaining = self._producer.flush(self.timeout)
        if remaining or not errors or errors[0] is not None:
            why = errors[0] if errors and errors[0] is not None else f"no acknowledgement in {self.timeout}s"
            raise StreamError(f"kafka: writing {key!r} to {self.topic!r} failed: {why}")
        return True

    def close(self) -> None:
        self._producer.flush(self.timeout)
