"""Feeding a benchmark contender: its topics, the reference data, and the events,
as fast as possible or paced, with the wall time each event was published.

Every record's Kafka timestamp is its publish wall time (ms), so a consumer
can tell how long a record waited; ``publish_events`` also returns the
publish times per event, for the event-to-action latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from loadtest.publish import Pacer

Record = tuple[str, bytes]


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    compacted: bool = False


async def create_topics(bootstrap: str, plans: Sequence[TopicPlan]) -> int:
    """Create the topics that do not exist yet (in chunks); returns how many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [plan for plan in plans if plan.name not in existing]
        for start in range(0, len(missing), 250):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            plan.name,
                            plan.partitions,
                            1,
                            topic_configs={"cleanup.policy": "compact"} if plan.compacted else {},
                        )
                        for plan in missing[start : start + 250]
                    ],
                    timeout_ms=60000,
                )
        return len(missing)
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> int:
    """Delete every topic whose name starts with ``prefix``; returns how many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60000)
    await admin.start()
    try:
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        for start in range(0, len(doomed), 250):
            await admin.delete_topics(doomed[start : start + 250], timeout_ms=60000)
        return len(doomed)
    finally:
        await admin.close()


class Feeder:
    """One producer for a contender's namespace; ``topic_of(device_id)`` names
    the per-device topic of an event."""

    def __init__(self, bootstrap: str, device_prefix: str, linger_ms: int = 5) -> None:
        self.bootstrap = bootstrap
        self.device_prefix = device_prefix
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=60000,
        )

    def topic_of(self, device_id: str) -> str:
        return self.device_prefix + device_id

    async def __aenter__(self) -> Feeder:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def wait_for_leaders(self, topics: Sequence[str], timeout_s: float = 120.0) -> None:
        """Metadata for every topic at once, until each partition has a leader
        (otherwise each new topic costs a blocking lookup on its first send)."""
        client = self.producer.client
        client.set_topics(sorted(set(topics)))
        deadline = time.monotonic() + timeout_s
        while True:
            await client.force_metadata_update()
            cluster = client.cluster
            missing = [
                topic
                for topic in topics
                if not cluster.partitions_for_topic(topic)
                or any(
                    cluster.leader_for_partition(TopicPartition(topic, p)) in (None, -1)
                    for p in cluster.partitions_for_topic(topic) or ()
                )
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader for {len(missing)} topics, e.g. {missing[0]}")
            await asyncio.sleep(0.2)

    async def publish_json(self, topic: str, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        send = self.producer.send
        futures = [
            await send(topic, orjson.dumps(value), key=key.encode()) for key, value in records
        ]
        await asyncio.gather(*futures)

    async def publish_events(self, events: Sequence[Record], rate: float = 0.0) -> list[float]:
        """Publish events to their device topics (``rate`` per second, 0: as
        fast as possible); returns each event's publish wall time, once every
        record is acknowledged."""
        pacer = Pacer(rate)
        # Paced: steps of ~20 ms, so bursts stay small next to the latencies measured.
        chunk = max(1, int(rate / 50)) if rate > 0 else 2000
        send = self.producer.send
        topic_of = self.topic_of
        walls: list[float] = []
        previous: list[asyncio.Future[Any]] = []
        in_flight: list[asyncio.Future[Any]] = []
        for sent, (device_id, value) in enumerate(events, start=1):
            wall = time.time()
            walls.append(wall)
            in_flight.append(
                await send(
                    topic_of(device_id),
                    value,
                    key=device_id.encode(),
                    partition=0,
                    timestamp_ms=int(wall * 1000),
                )
            )
            if len(in_flight) >= chunk:
                await asyncio.gather(*previous)
                previous, in_flight = in_flight, []
                wait = pacer.delay(sent)
                if wait > 0:
                    await asyncio.sleep(wait)
        await asyncio.gather(*previous, *in_flight)
        return walls


class ActionReader:
    """A downstream consumer of action topics: every action since the start of
    the topics, with the wall time it was received."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
            metadata_max_age_ms=2000,
        )
        self.topics = list(topics)
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                self.received += [(now, orjson.loads(r.value)) for r in records]

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Until every action written so far has been received."""
        partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        end = await self.consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while not await self._reached(end):
            if time.monotonic() > deadline:
                raise TimeoutError("the action reader did not catch up")
            await asyncio.sleep(0.1)

    async def _reached(self, end: dict[TopicPartition, int]) -> bool:
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        for tp, offset in end.items():
            if tp in assigned and await self.consumer.position(tp) < offset:
                return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
