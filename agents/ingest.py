"""Ingest: per-device topics (by pattern) -> validated, enriched, customer-keyed events.

Faust's aiokafka driver subscribes only to named topics, so ingest runs its
own aiokafka consumer with ``subscribe(pattern=...)``: a device topic created
after the worker started is picked up at the next metadata refresh
(``kafka.metadata_max_age_ms``). The shared ``iot.telemetry`` topic matches
the same subscription.

Each batch is inspected (``engine.quality``); accepted events are produced to
``kafka.customer_events_topic`` keyed by customer_id (the repartition that
gives every customer one actor), with the Kafka timestamp set to event time;
rejected ones go to ``iot.deadletter`` with the original bytes and the reason.
Offsets are committed only after every record of the batch is acknowledged:
at least once, and duplicates are dropped by the actor's dedup. Every
forwarded event carries ingest's event-time watermark and instance id as
headers (``engine.watermark``), so the actor knows how far time has certainly
progressed for its idle keys even while ingest works through a backlog.

The device registry is a compacted topic read in full by every worker before
it consumes anything, then followed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service

from engine.config import Settings
from engine.events import SourcePosition
from engine.kafka import behind, client_options, partitions_of
from engine.quality import Accepted, DeviceRegistry, Inspector, deadletter_value
from engine.watermark import SOURCE_HEADER, WATERMARK_HEADER, SourceWatermarks

#: How often the watermark is recomputed (it walks every assigned partition).
WATERMARK_INTERVAL_S = 0.5

log = logging.getLogger(__name__)


class CompactedTopicView:
    """Reads a compacted topic from the beginning into ``apply(key, value)``, then follows it."""

    def __init__(self, settings: Settings, topic: str, apply: Any) -> None:
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.consumer: AIOKafkaConsumer | None = None
        self.loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **client_options(self.settings), enable_auto_commit=False, group_id=None
        )
        await self.consumer.start()
        partitions = await partitions_of(self.consumer, self.topic, timeout_s=30.0)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist; run `iotcrm setup` first")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        end = await self.consumer.end_offsets(tps)
        await self._read_until(end)
        self.loaded.set()
        self._task = asyncio.create_task(self._follow(), name=f"follow {self.topic}")

    async def _read_until(self, end: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        while await behind(self.consumer, end):
            await self._poll(timeout_ms=500)

    async def _follow(self) -> None:
        while True:
            await self._poll(timeout_ms=1000)

    async def _poll(self, timeout_ms: int) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        for records in batches.values():
            for record in records:
                problem = self.apply(record.key, record.value)
                if problem:
                    log.warning(
                        "%s: ignored record at offset %s: %s", self.topic, record.offset, problem
                    )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.consumer:
            await self.consumer.stop()


class IngestMetrics:
    def __init__(self) -> None:
        self.consumed = 0
        self.accepted = 0
        self.deadlettered = 0
        self.batches = 0
        #: commits refused (the group rebalanced under a batch): re-delivered, deduplicated
        self.commit_failures = 0
        self.subscribed_topics = 0
        self.last_batch_at: float | None = None
        self.watermark: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class IngestService(Service):
    """The pattern-subscribed ingest consumer, as a service of the worker."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.registry = DeviceRegistry(settings.kafka.registry_topic)
        self.registry_view = CompactedTopicView(
            settings, settings.kafka.registry_topic, self.registry.apply
        )
        self.inspector = Inspector(
            settings.quality, self.registry, device_topic_prefix=settings.kafka.device_topic_prefix
        )
        self.metrics = IngestMetrics()
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.watermarks = SourceWatermarks()
        self._next_offset: dict[TopicPartition, int] = {}
        self._watermark_at = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        k = self.settings.kafka
        await self.registry_view.start()
        log.info("device registry loaded: %d devices", len(self.registry))
        self.producer = AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=f"{self.settings.worker.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=k.metadata_max_age_ms,
            max_poll_records=self.settings.worker.batch_size,
            # A fetch waits a little for more bytes: under a steady trickle each
            # response otherwise carries a handful of events across hundreds of topics.
            fetch_min_bytes=self.settings.worker.fetch_min_bytes,
            fetch_max_wait_ms=self.settings.worker.fetch_max_wait_ms,
        )
        await self.consumer.start()
        pattern = f"^{re.escape(k.device_topic_prefix)}.+|^{re.escape(k.telemetry_topic)}$"
        self.consumer.subscribe(pattern=pattern)
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self.consumer:
            await self.consumer.stop()
        if self.producer:
            await self.producer.stop()
        await self.registry_view.stop()

    async def _run(self) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            batches = await self.consumer.getmany(
                timeout_ms=200, max_records=self.settings.worker.batch_size
            )
            if batches:
                await self.ingest(batches)
                # Only the partitions this poll read: a commit of every assigned
                # partition lists hundreds of device topics each time.
                await self._commit(
                    {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
                )
            await self._update_watermark()
            self.metrics.subscribed_topics = len(self.consumer.subscription())

    async def ingest(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Inspect and forward one poll's records; returns once all are acknowledged."""
        assert self.producer is not None
        k = self.settings.kafka
        records = [
            (record.value, SourcePosition(tp.topic, tp.partition, record.offset))
            for tp, partition_records in batches.items()
            for record in partition_records
        ]
        verdicts = self.inspector.inspect_many(records)
        received_at = time.time()
        observe = self.watermarks.observe
        for tp, partition_records in batches.items():
            self._next_offset[tp] = partition_records[-1].offset + 1
        for (_, source), verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, Accepted):
                observe((source.topic, source.partition), verdict.event["ts"])
        if self.watermarks.current is None:
            # Until it is known, find it before stamping: an unknown watermark
            # holds the actor's idle-key time back, and a quiet stream would
            # leave it there.
            await self._update_watermark(force=True)
        headers = self._headers()
        sends = []
        send = self.producer.send
        for (raw, source), verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, Accepted):
                event = verdict.event
                sends.append(
                    await send(
                        k.customer_events_topic,
                        orjson.dumps(event),
                        key=event["customer_id"].encode(),
                        timestamp_ms=int(event["ts"] * 1000),
                        headers=headers,
                    )
                )
                self.metrics.accepted += 1
            else:
                sends.append(
                    await send(
                        k.deadletter_topic,
                        deadletter_value(raw, verdict, source, received_at),
                        key=source.topic.encode(),
                    )
                )
                self.metrics.deadlettered += 1
        if sends:
            await asyncio.gather(*sends)
        self.metrics.consumed += len(records)
        self.metrics.batches += 1
        self.metrics.last_batch_at = received_at

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Every record of the batch is already acknowledged downstream; the
            # group moved on (a rebalance), so whoever owns the partitions now
            # reads them again and the actor's dedup drops the repeats.
            self.metrics.commit_failures += 1
            log.warning("ingest offset commit failed, the batch will be re-delivered: %r", exc)

    def _headers(self) -> list[tuple[str, bytes]]:
        # Unknown (a lagging source has yielded no valid event yet) holds time
        # back; leaving the header out would let the actor use the event's own time.
        mark = self.watermarks.current
        return [
            (SOURCE_HEADER, self.instance_id.encode()),
            (WATERMARK_HEADER, repr(float("-inf") if mark is None else mark).encode()),
        ]

    async def _update_watermark(self, force: bool = False) -> None:
        """Recompute the watermark from which source partitions still have unread records.

        Events are stamped with the watermark as of the last recompute, which
        is behind the truth, never ahead of it.
        """
        assert self.consumer is not None
        now = time.monotonic()
        if not force and now - self._watermark_at < WATERMARK_INTERVAL_S:
            return
        self._watermark_at = now
        assignment = list(self.consumer.assignment())
        # Fresh end offsets (one ListOffsets request): highwater() is only as new
        # as the last fetch, and would call a source with unfetched records caught up.
        end_offsets = await self.consumer.end_offsets(assignment) if assignment else {}
        lagging = []
        for tp in assignment:
            position = self._next_offset.get(tp)
            if position is None:
                position = self._next_offset[tp] = await self.consumer.position(tp)
            if position < end_offsets.get(tp, 0):
                lagging.append((tp.topic, tp.partition))
        self.watermarks.advance(lagging)
        self.metrics.watermark = self.watermarks.current
