"""Ingest (librdkafka) must partition the customer-keyed stream as the Java
client, Faust and aiokafka do: a customer's events, its profile on
crm.customers and its outcomes have to meet in one partition, one actor."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Producer

from agents.ingest import producer_options
from engine.kafka import ensure_topics
from tests.integration.kit import Namespace


async def test_ingest_puts_a_customer_where_aiokafka_and_java_clients_put_it(
    namespace: Namespace,
) -> None:
    settings = namespace.settings
    await ensure_topics(settings)
    topic = settings.kafka.customer_events_topic
    partitions = settings.kafka.partitions
    customers = [f"c-{i:04d}" for i in range(64)]

    delivered: dict[str, int] = {}
    producer = Producer(producer_options(settings))
    for customer in customers:
        producer.produce(
            topic,
            b"{}",
            customer.encode(),
            on_delivery=lambda err, msg: delivered.__setitem__(msg.key().decode(), msg.partition()),
        )
    assert await asyncio.to_thread(producer.flush, 30) == 0

    reference = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await reference.start()
    try:
        by_aiokafka = {}
        for customer in customers:
            metadata = await (await reference.send(topic, b"{}", key=customer.encode()))
            by_aiokafka[customer] = metadata.partition
    finally:
        await reference.stop()

    murmur2 = DefaultPartitioner()
    expected = {c: murmur2(c.encode(), list(range(partitions)), []) for c in customers}
    assert delivered == by_aiokafka == expected
    assert len(set(delivered.values())) == partitions, "the keys spread over every partition"
