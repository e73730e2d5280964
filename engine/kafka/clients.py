"""Connection options shared by every aiokafka client of the project (and
Faust's, through ``ssl_context``)."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2

from engine.config import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` plus SASL/TLS when a username is configured.

    The password is only ever read from ``IOTCRM_KAFKA_SASL_PASSWORD``.
    """
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka.bootstrap}
    if settings.kafka.sasl_username:
        options.update(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=settings.kafka.sasl_username,
            sasl_plain_password=Settings.secret("KAFKA_SASL_PASSWORD") or "",
            ssl_context=ssl_context(settings),
        )
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the brokers, verified against ``kafka.ssl_cafile`` (or the system's CAs)."""
    return create_ssl_context(cafile=settings.kafka.ssl_cafile or None)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the
    Java client, aiokafka and Faust compute it): where a customer's profile and
    outcomes land, so where its events must go too.

    >>> partition_for(b"c-0001", 4)
    2
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """True while the consumer's position is before ``end`` on some partition."""
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


async def partitions_of(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 0.0
) -> list[int]:
    """The partitions of ``topic``, asking the broker (a new client knows none).

    Waits up to ``timeout_s`` for the topic to appear; [] if it does not.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if partitions or time.monotonic() >= deadline:
            return sorted(partitions or [])
        await asyncio.sleep(0.2)
