"""Feeding a benchmark contender: its topics, the reference data, and the events,
as fast as possible or paced, with the wall time each event was published.

Every record's Kafka timestamp is its publish wall time (ms), so a consumer
can tell how long a record waited; ``publish_events`` also returns the
publish times per event, for the event-to-action latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from loadtest.publish import Pacer

Record = tuple[str, bytes]
#: A paced publisher's steps per second.
STEPS_PER_S = 50
#: Steps of a paced publisher that may be unacknowledged at once (100 ms).
#: librdkafka sends each device topic's records in requests of their own, a
#: few at a time: with no bound, a busy broker took some devices' records
#: seconds after others published later, hours apart in a simulation's
#: compressed time, and the engine and the peer called devices silent whose
#: next events were on their way (see ``Feeder._ready``).
STEPS_IN_FLIGHT = 5


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


#: How the topics and keyspaces of ``iotcrm bench`` and ``iotcrm chaos`` runs
#: begin: the run id (``bench1796...``, ``chaos2023...``), Quix's changelogs.
RUN_TOPIC_PREFIXES = ("bench", "chaos", "changelog__bench", "changelog__chaos")
RUN_KEYSPACE_PREFIXES = ("iotcrm_bench", "iotcrm_chaos")


async def clear_earlier_runs(bootstrap: str, settings: Any) -> dict[str, int]:
    """Delete what earlier bench and chaos runs left on the local servers
    (``--keep``, or a run cut short): their topics and keyspaces. Returns how
    many went and what the broker holds then (topics, partitions).

    Left behind, they pile up: after a day of kept runs the broker held 3,800
    topics, a restart took 46 s instead of 27, and three chaos runs of four
    left ingest without its sources after the Kafka restart (none since they
    were cleared). Every run measures the broker it finds, so it starts from
    the same one."""
    deleted = sum([await delete_topics(bootstrap, prefix) for prefix in RUN_TOPIC_PREFIXES])
    keyspaces = await asyncio.to_thread(_drop_run_keyspaces, settings)
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    topics = (await asyncio.to_thread(admin.list_topics, timeout=30)).topics
    return {
        "deleted_topics": deleted,
        "dropped_keyspaces": keyspaces,
        "broker_topics": len(topics),
        "broker_partitions": sum(len(t.partitions) for t in topics.values()),
    }


def _drop_run_keyspaces(settings: Any) -> int:
    from engine.store.cassandra import build_cluster

    cluster = build_cluster(settings)
    try:
        session = cluster.connect()
        names = [row["keyspace_name"]
                 for row in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
                 if row["keyspace_name"].startswith(RUN_KEYSPACE_PREFIXES)]  # fmt: skip
        for name in names:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
        return len(names)
    finally:
        cluster.shutdown()


class Feeder:
    """One producer for a contender's namespace; ``topic_of(device_id)`` names
    the per-device topic of an event.

    It is librdkafka's: aiokafka waits for one produce request per broker at a
    time, so over hundreds of device topics a paced publisher offered no more
    than a few thousand events a second on this machine, well below what the
    contenders take.
    """

    def __init__(self, bootstrap: str, device_prefix: str, linger_ms: int = 5) -> None:
        self.bootstrap = bootstrap
        self.device_prefix = device_prefix
        self.producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": linger_ms,
                "batch.size": 256 * 1024,
                "queue.buffering.max.messages": 1_000_000,
                # The Java client's partitioner, as aiokafka's and Faust's.
                "partitioner": "murmur2_random",
            }
        )
        self._failures: list[Any] = []
        #: paced step -> its records not yet acknowledged
        self._unacknowledged: dict[int, int] = {}

    def topic_of(self, device_id: str) -> str:
        return self.device_prefix + device_id

    async def __aenter__(self) -> Feeder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.producer.flush, 30.0)

    async def wait_for_leaders(self, topics: Sequence[str], timeout_s: float = 120.0) -> None:
        """Until every partition of ``topics`` has a leader (new topics take a moment)."""
        deadline = time.monotonic() + timeout_s
        while True:
            known = (await asyncio.to_thread(self.producer.list_topics, None, 30.0)).topics
            missing = [
                topic
                for topic in topics
                if topic not in known
                or not known[topic].partitions
                or any(p.leader < 0 for p in known[topic].partitions.values())
            ]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader for {len(missing)} topics, e.g. {missing[0]}")
            await asyncio.sleep(0.2)

    async def publish_json(self, topic: str, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for key, value in records:
            await self._produce(topic, orjson.dumps(value), key.encode())
        await self._flush()

    async def publish_events(
        self,
        events: Sequence[Record],
        rate: float = 0.0,
        *,
        shared_topic: str | None = None,
        walls: list[float] | None = None,
        stop: asyncio.Event | None = None,
    ) -> list[float]:
        """Publish events to their device topics, or to ``shared_topic`` keyed
        (partitioned) by device id (``rate`` per second, 0: as fast as
        possible), until ``stop`` is set; returns each event's publish wall
        time (appended to ``walls`` as they go), once every record is
        acknowledged.

        Paced, the records go out in steps of ~20 ms, so bursts stay small next
        to the latencies measured; only once the producer is ready
        (``_ready``); and a step only once the records of the step
        ``STEPS_IN_FLIGHT`` before it are acknowledged, so devices' records
        reach Kafka at most about 100 ms out of the order they were published
        in (when the broker cannot take them that fast, the offered rate
        falls, and the bench reports the rate achieved).
        """
        chunk = max(1, int(rate / STEPS_PER_S)) if rate > 0 else 2000
        topic_of = self.topic_of
        partition = -1 if shared_topic else 0  # -1: the partitioner picks, by key
        walls = [] if walls is None else walls
        pacer: Pacer | None = None
        for sent, (device_id, value) in enumerate(events, start=1):
            wall = time.time()
            walls.append(wall)
            send = self._produce if pacer is not None or rate <= 0 else self._ready
            await send(
                shared_topic or topic_of(device_id),
                value,
                device_id.encode(),
                step=(sent - 1) // chunk if rate > 0 else None,
                partition=partition,
                timestamp=int(wall * 1000),
            )
            if pacer is None:
                pacer = Pacer(rate, started_with=sent)
            if sent % chunk == 0:
                self.producer.poll(0)
                if stop is not None and stop.is_set():
                    break
                await asyncio.sleep(pacer.delay(sent))
                if rate > 0:
                    await self._acknowledged_before(sent // chunk - STEPS_IN_FLIGHT + 1)
        await self._flush()
        return walls

    async def _ready(self, topic: str, value: bytes, key: bytes, **options: Any) -> None:
        """Publish a first record and wait for it: then the producer can send
        at once to every topic.

        A new idempotent producer holds what it is given until the broker has
        issued its producer id, and a record for a topic it has no metadata
        for waits for it (0.05-0.5 s here): records paced meanwhile pile up,
        then go out in a burst, each device topic's share in its own batch,
        in whatever order the batches fill produce requests. Devices' events
        then reach Kafka out of order with each other by as much as the
        burst, which over a simulation's compressed time is hours: far more
        than ``quality.device_skew_s``, and ingest would vouch for times that
        devices not read yet are behind of (an idle device called silent).
        """
        await asyncio.to_thread(self.producer.list_topics, None, 30.0)  # every topic's metadata
        await self._produce(topic, value, key, **options)
        await self._flush()

    async def _produce(
        self, topic: str, value: bytes, key: bytes, step: int | None = None, **options: Any
    ) -> None:
        """Hand a record to the producer; ``step``: the paced step it belongs
        to, counted until it is acknowledged (``_acknowledged_before``)."""
        delivered = self._delivered
        if step is not None:
            self._unacknowledged[step] = self._unacknowledged.get(step, 0) + 1
            delivered = functools.partial(self._step_delivered, step)
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=delivered, **options)
                return
            except BufferError:  # librdkafka's queue is full: let it deliver
                await asyncio.to_thread(self.producer.poll, 0.05)

    async def _acknowledged_before(self, step: int) -> None:
        """Until every record of the paced steps before ``step`` is acknowledged."""
        while min(self._unacknowledged, default=step) < step:
            self.producer.poll(0)  # serves the delivery callbacks
            await asyncio.sleep(0.001)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failures.append(error)

    def _step_delivered(self, step: int, error: Any, message: Any) -> None:
        left = self._unacknowledged[step] - 1
        if left:
            self._unacknowledged[step] = left
        else:
            del self._unacknowledged[step]
        self._delivered(error, message)

    async def _flush(self) -> None:
        """Until every record is acknowledged; a record refused raises."""
        while await asyncio.to_thread(self.producer.flush, 30.0):
            pass
        failures, self._failures = self._failures, []
        if failures:
            raise RuntimeError(f"{len(failures)} records not published, e.g. {failures[0]}")


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
