"""Ingest (librdkafka, its own process) must put a customer's events in the
partition of the customer stream where its profile on crm.customers and its
outcomes land (keyed by customer_id, by the Java client's partitioner, as
aiokafka and Faust produce them): they have to meet in one actor. It packs a
partition's events into few records, keeping each device's order."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

from aiokafka import AIOKafkaProducer

from engine.events import unpack_events
from engine.kafka import ensure_topics, partition_for
from engine.watermark import TICK_KEY
from loadtest.harness import wait_for
from tests.integration.kit import REPO, Namespace, read_all, register
from tests.integration.live_helpers import publish

CUSTOMERS = [f"c-{i:04d}" for i in range(32)]
EVENTS_PER_DEVICE = 20


async def test_ingest_puts_a_customers_events_with_its_profile_packed_and_in_order(
    namespace: Namespace, producer: AIOKafkaProducer
) -> None:
    settings = namespace.settings
    k = settings.kafka
    await ensure_topics(settings)
    devices = {f"d-{c}": (c, "washer") for c in CUSTOMERS}
    await register(producer, namespace, devices)
    now = time.time() - 600
    sent = [
        (
            namespace.device_topic(device_id),
            {"id": f"{device_id}-{n}", "ts": now + n, "device_id": device_id, "kind": "telemetry"},
        )
        for n in range(EVENTS_PER_DEVICE)
        for device_id in devices
    ]
    await publish(producer, sent)

    status = namespace.tmp / "ingest.status.json"
    namespace.tmp.mkdir(parents=True, exist_ok=True)
    ingest = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "ingest", "--status", str(status)],
        env=os.environ | namespace.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(namespace.tmp / "ingest.log", "wb"),  # noqa: SIM115
    )
    try:

        async def forwarded() -> list:
            records = await read_all(k.bootstrap, k.customer_events_topic)
            # Ticks carry ingest's watermark to quiet partitions, no event.
            records = [r for r in records if r.key != TICK_KEY]
            events = sum(len(unpack_events(r.value)) for r in records)
            return records if events >= len(sent) else []

        records = await wait_for(forwarded, timeout=60, what="every event forwarded")
    finally:
        ingest.terminate()
        ingest.wait(30)

    profiles = await read_all(k.bootstrap, k.customers_topic)
    profile_partition = {r.key.decode(): r.partition for r in profiles}
    assert len(set(profile_partition.values())) == k.partitions, "customers spread over all"

    by_device: dict[str, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        for event in unpack_events(record.value):
            assert record.partition == profile_partition[event["customer_id"]], event
            assert record.partition == partition_for(event["customer_id"].encode(), k.partitions)
            by_device[event["device_id"]].append(event["id"])
    assert by_device == {
        device_id: [f"{device_id}-{n}" for n in range(EVENTS_PER_DEVICE)] for device_id in devices
    }, "every event once, each device's in the order sent"
    assert len(records) * 4 <= len(sent), f"{len(records)} records for {len(sent)} events"
