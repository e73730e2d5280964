"""Publish a simulation to Kafka: registry and profiles first, then the events.

The only module of the simulator that talks to Kafka (aiokafka). Events keep
their simulated timestamps; the simulated span is played out as fast as the
target rate allows. Sends are pipelined (never awaited one by one): the
producer batches with ``linger_ms`` and each chunk's delivery is checked while
the next chunk is being sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from engine.kafka import partition_for
from loadtest.simulator import GHOST_DEVICE_IDS, Simulation

DEVICE_TOPIC_PREFIX = "iot.device."
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class PublishOptions:
    bootstrap: str = "127.0.0.1:19092"
    #: ``per-device``: ``iot.device.<device_id>``; ``shared``: ``telemetry_topic`` keyed by device.
    topic_mode: str = "per-device"
    telemetry_topic: str = "iot.telemetry"
    registry_topic: str = "iot.registry"
    customers_topic: str = "crm.customers"
    outcomes_topic: str = "crm.outcomes"
    #: Events per second; 0 sends as fast as possible.
    rate: float = 0.0
    #: Create missing topics with the admin client (per-device topics get 1 partition,
    #: the others ``partitions``; registry and customers are compacted).
    create_topics: bool = False
    partitions: int = 4
    replication_factor: int = 1
    #: Publish the churn outcomes to ``outcomes_topic`` after the events.
    send_outcomes: bool = True
    linger_ms: int = 20
    max_batch_size: int = 256 * 1024
    #: Records sent between delivery checks (and token-bucket refills).
    chunk: int = 2000


@dataclass(frozen=True, slots=True)
class PublishStats:
    registry_records: int
    profiles: int
    records: int
    outcomes: int
    bytes: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


#: The most of its schedule a paced publisher that fell behind makes up at
#: once; what it is behind beyond that is not offered later.
MAX_DEBT_S = 0.1


class Pacer:
    """Token bucket: ``delay(sent)`` is how long to wait so that ``sent``
    records went out no faster than ``rate`` per second since the start. A
    publisher held up (a busy broker, a descheduled process) catches up at
    most ``MAX_DEBT_S`` of its schedule in a burst: a steady rate offered is
    never a burst at several times that rate once the hold-up ends, which the
    contender would be judged on as if it were the rate asked for.

    >>> clock = iter([0.0, 0.5, 2.5, 2.5]).__next__
    >>> pacer = Pacer(rate=1000, clock=clock)
    >>> pacer.delay(1000)  # a second's worth sent after half a second
    0.5
    >>> pacer.delay(1500)  # held up: record 1,500 was due at 1.5 s, it is 2.5 s
    0.0
    >>> round(pacer.delay(1700), 3)  # 0.1 s made up at once, then the rate again
    0.1
    """

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, started_with: int = 0
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.started = clock()
        #: records already out when pacing started (not paced)
        self.started_with = started_with

    def delay(self, sent: int) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        due = self.started + (sent - self.started_with) / self.rate
        if due < now - MAX_DEBT_S:
            self.started += now - MAX_DEBT_S - due
            due = now - MAX_DEBT_S
        return max(0.0, due - now)


def device_topic(device_id: str) -> str:
    return DEVICE_TOPIC_PREFIX + device_id


def event_topics(sim: Simulation, options: PublishOptions) -> list[str]:
    if options.topic_mode == "shared":
        return [options.telemetry_topic]
    device_ids = [d.device_id for d in sim.fleet.devices]
    if not sim.params.canonical and sim.params.malformed_share > 0:
        device_ids += GHOST_DEVICE_IDS
    return [device_topic(device_id) for device_id in device_ids]


def _json_records(pairs: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[tuple[bytes, bytes]]:
    for key, value in pairs:
        yield key.encode(), orjson.dumps(value)


async def create_topics(sim: Simulation, options: PublishOptions) -> int:
    """Create the topics the run needs that do not exist yet; returns how many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=options.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        compacted = {"cleanup.policy": "compact"}
        wanted = [
            NewTopic(
                options.registry_topic,
                options.partitions,
                options.replication_factor,
                topic_configs=compacted,
            ),
            NewTopic(
                options.customers_topic,
                options.partitions,
                options.replication_factor,
                topic_configs=compacted,
            ),
            NewTopic(options.outcomes_topic, options.partitions, options.replication_factor),
        ]
        if options.topic_mode == "shared":
            wanted.append(
                NewTopic(options.telemetry_topic, options.partitions, options.replication_factor)
            )
        else:
            wanted += [
                NewTopic(t, 1, options.replication_factor) for t in event_topics(sim, options)
            ]
        missing = [t for t in wanted if t.name not in existing]
        created = 0
        for start in range(0, len(missing), 500):
            response = await admin.create_topics(missing[start : start + 500])
            for name, code, *_ in response.topic_errors:
                if code == 0:
                    created += 1
                elif code != _TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"cannot create topic {name}: error code {code}")
        return created
    finally:
        await admin.close()


def _unready(cluster: Any, topic: str) -> bool:
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        return True
    return any(
        cluster.leader_for_partition(TopicPartition(topic, p)) in (None, -1) for p in partitions
    )


async def _await_metadata(producer: AIOKafkaProducer, topics: list[str], timeout_s: float) -> None:
    """Fetch metadata for all topics at once (auto-creating them on the broker
    if it allows) and wait until each partition has a leader: otherwise every
    new topic costs a blocking lookup on its first send, and a fresh topic's
    first batch waits for its leader."""
    client = producer.client
    client.set_topics(sorted(set(topics)))
    deadline = time.monotonic() + timeout_s
    while True:
        await client.force_metadata_update()
        missing = [t for t in topics if _unready(client.cluster, t)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no leader for {len(missing)} topics, e.g. {missing[0]}")
        await asyncio.sleep(0.2)


async def publish(
    sim: Simulation,
    options: PublishOptions,
    *,
    progress: Callable[[int, float], None] | None = None,
) -> PublishStats:
    """Publish registry records, profiles, then the events, then the outcomes.

    ``progress(records_sent, elapsed_s)`` is called about once per second.
    Raises if any record could not be delivered.
    """
    if options.create_topics:
        await create_topics(sim, options)
    producer = AIOKafkaProducer(
        bootstrap_servers=options.bootstrap,
        acks="all",
        linger_ms=options.linger_ms,
        max_batch_size=options.max_batch_size,
        request_timeout_ms=60000,
    )
    await producer.start()
    try:
        topics = [options.registry_topic, options.customers_topic, *event_topics(sim, options)]
        if options.send_outcomes:
            topics.append(options.outcomes_topic)
        await _await_metadata(producer, topics, timeout_s=120.0)

        registry = list(_json_records(sim.registry_records()))
        profiles = list(_json_records(sim.profiles()))
        await _send_all(producer, options.registry_topic, registry)
        await _send_all(producer, options.customers_topic, profiles)

        started = time.monotonic()
        records, size = await _send_events(producer, sim, options, progress)
        elapsed = time.monotonic() - started

        outcomes = list(_json_records(sim.outcomes())) if options.send_outcomes else []
        await _send_all(producer, options.outcomes_topic, outcomes)
        return PublishStats(
            registry_records=len(registry),
            profiles=len(profiles),
            records=records,
            outcomes=len(outcomes),
            bytes=size,
            elapsed_s=elapsed,
        )
    finally:
        await producer.stop()


async def _send_all(
    producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    futures = [await producer.send(topic, value, key=key) for key, value in records]
    await asyncio.gather(*futures)


async def _send_events(
    producer: AIOKafkaProducer,
    sim: Simulation,
    options: PublishOptions,
    progress: Callable[[int, float], None] | None,
) -> tuple[int, int]:
    shared = options.topic_mode == "shared"
    count = (
        len(producer.client.cluster.partitions_for_topic(options.telemetry_topic) or ())
        if shared
        else 1
    )
    route: dict[str, tuple[str, bytes, int]] = {}
    for device_id in (*(d.device_id for d in sim.fleet.devices), *GHOST_DEVICE_IDS):
        key = device_id.encode()
        route[device_id] = (
            (options.telemetry_topic, key, partition_for(key, count))
            if shared
            else (device_topic(device_id), key, 0)
        )
    pacer = Pacer(options.rate)
    # Pace in steps of about 0.1 s at low rates, so bursts stay small.
    chunk = (
        min(options.chunk, max(1, int(options.rate / 10))) if options.rate > 0 else options.chunk
    )
    send = producer.send
    in_flight: list[asyncio.Future[Any]] = []
    previous: list[asyncio.Future[Any]] = []
    sent = size = 0
    next_report = time.monotonic() + 1.0
    for device_id, value in sim.events():
        topic, key, partition = route[device_id]
        in_flight.append(await send(topic, value, key=key, partition=partition))
        sent += 1
        size += len(value)
        if len(in_flight) >= chunk:
            # Check the previous chunk while this one is on the wire.
            await asyncio.gather(*previous)
            previous, in_flight = in_flight, []
            wait = pacer.delay(sent)
            if wait > 0:
                await asyncio.sleep(wait)
            if progress is not None and time.monotonic() >= next_report:
                progress(sent, time.monotonic() - pacer.started)
                next_report += 1.0
    await asyncio.gather(*previous, *in_flight)
    return sent, size
