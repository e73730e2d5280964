"""Ingest: per-device topics (by pattern) -> validated, enriched, customer-keyed events.

Ingest runs as a process of its own (``iotcrm ingest``; a worker starts one
unless ``worker.ingest = "off"``) on librdkafka (confluent-kafka): a pattern
subscription over thousands of per-device topics costs a Python client a
decode of every partition of every fetch response, while librdkafka fetches
and decodes in its own threads, in C. A device topic created after ingest
started is picked up at the next metadata refresh (``kafka.metadata_max_age_ms``).
The shared ``iot.telemetry`` topic matches the same subscription.

One loop, no concurrency to reason about. Each poll is inspected
(``engine.quality``); accepted events are produced to
``kafka.customer_events_topic``, each to the partition its customer_id hashes
to (the repartition that gives every customer one actor), packed: one record
per partition and poll carries up to ``engine.events.EVENTS_PER_RECORD`` of
its events in order (``engine.events.pack_events``), since each record costs
the actor's consumer and Faust's stream the same whatever it carries. The
Kafka timestamp is the event time of the record's last event. Rejected events
go to ``iot.deadletter`` with the original bytes and the reason. A poll takes
what the consumer holds, so batches grow with the load instead of waiting to
fill. Offsets are committed once every record of the poll is acknowledged,
at most every ``worker.commit_interval_s`` and when partitions are revoked:
at least once, and duplicates are dropped by the actor's dedup. A rebalance runs
inside ``poll``, between two polls, so no batch is ever half-way when
partitions move. Every forwarded record carries ingest's event-time
watermark and instance id as headers (``engine.watermark``), so the actor
knows how far time has certainly progressed for its idle keys even while
ingest works through a backlog, and when the oldest device record among its
events was published (``engine.events.PUBLISHED_HEADER``), where the worker's
event-to-action latency starts.

The device registry is a compacted topic read in full before anything is
consumed, then followed between polls.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from engine.config import Settings
from engine.events import EVENTS_PER_RECORD, PUBLISHED_HEADER, SourcePosition, pack_events
from engine.kafka import partition_for
from engine.quality import Accepted, DeviceRegistry, Inspector, deadletter_value
from engine.watermark import (
    SOURCE_HEADER,
    TICK_KEY,
    UNKNOWN,
    WATERMARK_HEADER,
    EndCheck,
    IngestWatermark,
    sent_header,
)

#: How often the sources' end offsets are asked for and the watermark
#: recomputed (one ListOffsets request, answered while the loop goes on): the
#: delay a quiet key's timers add. At least this often ...
WATERMARK_INTERVAL_S = 0.05
#: ... unless a check would take more than this share of ingest's thread: a
#: check's cost grows with the sources (their positions, and one future per
#: partition in confluent-kafka's ListOffsets), and at 400 sources every 50 ms
#: it took a third of a core in ingest and more in the broker, at any load.
WATERMARK_CHECK_SHARE = 0.1
#: The most a check is spaced out to stay within its share.
WATERMARK_INTERVAL_MAX_S = 1.0
#: How often sources handed to another instance are checked for their new
#: owner's progress (``engine.watermark.IngestWatermark.settle``).
SETTLE_INTERVAL_S = 0.5
#: Longest wait for the end offsets; without them time holds.
END_OFFSETS_TIMEOUT_S = 5.0
#: A customer-stream partition that ingest sent nothing to for this long gets
#: a tick record: its watermark, for the timers of idle keys.
TICK_INTERVAL_S = 1.0
#: Customers whose partition of the customer stream ingest remembers.
PARTITION_CACHE_SIZE = 100_000
#: At most one warning this often about events read behind the stamped time.
BEHIND_WARNING_INTERVAL_S = 10.0
#: Longest wait for the broker to acknowledge a poll's records before retrying the flush.
FLUSH_TIMEOUT_S = 30.0
#: After the group moved on without it (its sources lost), the longest ingest
#: waits to be taken back before it exits, so the worker starts a fresh one:
#: after a slow broker restart the chaos suite saw a consumer lose its sources
#: and never rejoin. Several sessions: a broker restart's own wait is shorter.
REJOIN_LIMIT_SESSIONS = 12

log = logging.getLogger(__name__)


def librdkafka_options(settings: Settings) -> dict[str, Any]:
    """The connection options of ``engine.kafka.client_options``, in librdkafka's names."""
    k = settings.kafka
    options: dict[str, Any] = {"bootstrap.servers": k.bootstrap}
    if k.sasl_username:
        options.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": k.sasl_username,
                "sasl.password": Settings.secret("KAFKA_SASL_PASSWORD") or "",
            }
        )
        if k.ssl_cafile:
            options["ssl.ca.location"] = k.ssl_cafile
    return options


def producer_options(settings: Settings) -> dict[str, Any]:
    """Ingest's producer: idempotent, acknowledged by all replicas, batched."""
    return {
        **librdkafka_options(settings),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 256 * 1024,
        # The Java client's partitioner (murmur2), which Faust, aiokafka and
        # the producers of crm.customers and crm.outcomes use: a customer's
        # events must land in the partition of its profile and outcomes
        # (librdkafka's default hashes with CRC32).
        "partitioner": "murmur2_random",
    }


class EndOffsets:
    """The end offsets of many partitions, asked for without blocking ingest's
    loop: one ListOffsets request at a time, answered on librdkafka's
    background thread while polls go on. (Under load a synchronous request
    took a third of ingest's wall time, 20 times a second.) End offsets as
    ingest's consumer sees them: up to the last stable offset."""

    def __init__(self, admin: Any, timeout_s: float) -> None:
        self.admin = admin
        self.timeout_s = timeout_s
        self._pending: dict[Any, Any] = {}

    @property
    def asking(self) -> bool:
        return bool(self._pending)

    def ask(self, sources: Iterable[tuple[str, int]]) -> None:
        self._pending = self.admin.list_offsets(
            {KafkaPartition(topic, partition): OffsetSpec.latest() for topic, partition in sources},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self.timeout_s,
        )

    def answered(self) -> bool:
        return all(future.done() for future in self._pending.values())

    def take(self) -> dict[tuple[str, int], int]:
        """The answer (waiting for it if need be); a source whose end is not
        known is left out."""
        ends = {}
        for tp, future in self._pending.items():
            try:
                ends[tp.topic, tp.partition] = future.result(self.timeout_s).offset
            except Exception as exc:  # a partition the broker could not answer for
                log.debug("ingest: end offset of %s[%d] not known: %s", tp.topic, tp.partition, exc)
        self._pending = {}
        return ends

    def drop(self) -> None:
        """Forget the request in flight (the sources it asked about changed)."""
        self._pending = {}


class CompactedTopicView:
    """Reads a compacted topic from the beginning into ``apply(key, value)``, then follows it."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Callable[[bytes | None, bytes | None], str | None],
    ) -> None:
        self.topic = topic
        self.apply = apply
        self.consumer = Consumer(
            {
                **librdkafka_options(settings),
                "group.id": f"{settings.worker.app_id}-view-{os.getpid()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )

    def load(self, timeout_s: float = 30.0) -> None:
        """Until every record there when it was called has been applied."""
        deadline = time.monotonic() + timeout_s
        metadata = self.consumer.list_topics(self.topic, timeout=timeout_s)
        described = metadata.topics.get(self.topic)
        if described is None or described.error is not None or not described.partitions:
            raise RuntimeError(f"topic {self.topic} does not exist; run `iotcrm setup` first")
        partitions = sorted(described.partitions)
        self.consumer.assign([KafkaPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        ends = {
            p: self.consumer.get_watermark_offsets(
                KafkaPartition(self.topic, p), timeout=timeout_s
            )[1]
            for p in partitions
        }
        positions = dict.fromkeys(partitions, 0)
        while any(positions[p] < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} to its end in {timeout_s} s")
            for message in self.consumer.consume(5000, timeout=0.5):
                if message.error() is None:
                    positions[message.partition()] = message.offset() + 1
                    self._apply(message)

    def follow(self) -> None:
        """Apply whatever arrived since the last call, without waiting."""
        for message in self.consumer.consume(5000, timeout=0):
            if message.error() is None:
                self._apply(message)

    def _apply(self, message: Any) -> None:
        problem = self.apply(message.key(), message.value())
        if problem:
            log.warning(
                "%s: ignored record at offset %s: %s", self.topic, message.offset(), problem
            )

    def close(self) -> None:
        self.consumer.close()


class IngestMetrics:
    def __init__(self) -> None:
        self.consumed = 0
        self.accepted = 0
        self.deadlettered = 0
        #: records of the customer stream, each carrying up to EVENTS_PER_RECORD events
        self.records_sent = 0
        self.batches = 0
        #: commits refused (the group rebalanced under a batch): re-delivered, deduplicated
        self.commit_failures = 0
        #: times device partitions were taken away (revoked) or lost
        self.rebalances = 0
        #: produce attempts the broker refused or timed out, retried
        self.send_retries = 0
        self.subscribed_topics = 0
        #: device partitions (sources) this instance reads now
        self.assigned_sources = 0
        #: sources given up in a rebalance that still hold this instance's
        #: stamped time back until their new owner is heard
        self.handed_over = 0
        #: device records not yet read, at the last check of the sources' ends
        self.lag = 0
        self.last_batch_at: float | None = None
        #: event time read so far, as of the last check of the sources' ends
        self.watermark: float | None = None
        #: sources with unread records at that check
        self.lagging_sources = 0
        #: tick rounds sent to quiet customer-stream partitions
        self.ticks = 0
        #: seconds between checks of the sources' ends, as spaced out by their cost
        self.watermark_interval_s = WATERMARK_INTERVAL_S
        #: events read after ingest had stamped a later time than theirs: their
        #: devices' events reached Kafka more than ``quality.device_skew_s`` out
        #: of order, so timers of idle keys (a silence) may have fired early
        self.behind_watermark = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class IngestLeftOut(RuntimeError):
    """The consumer group moved on without this ingest and has not taken it back."""


class Ingest:
    """The pattern-subscribed ingest loop (``run`` until ``stop``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        k, w = settings.kafka, settings.worker
        self.registry = DeviceRegistry(k.registry_topic)
        self.registry_view = CompactedTopicView(settings, k.registry_topic, self.registry.apply)
        self.inspector = Inspector(
            settings.quality, self.registry, device_topic_prefix=k.device_topic_prefix
        )
        self.metrics = IngestMetrics()
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.watermark: IngestWatermark[tuple[str, int]] = IngestWatermark(
            device_skew_s=settings.quality.device_skew_s, idle_allowance_s=w.idle_allowance_s
        )
        #: committed offset of each assigned source not read yet (-1001: none)
        self._start: dict[tuple[str, int], int] = {}
        #: customer-stream partition -> when ingest last sent it a record
        self._sent_at: dict[int, float] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        #: offsets past records acknowledged downstream, not committed yet
        self._acknowledged: dict[tuple[str, int], int] = {}
        self._committed_at = time.monotonic()
        #: customer_id -> its partition of the customer stream (murmur2 in Python is dear)
        self._partition_of: dict[str, int] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._watermark_at = 0.0
        #: CPU seconds of ingest's thread the check in flight has taken so far
        self._check_cpu_s = 0.0
        #: what had been read when the end offsets in flight were asked for
        self._end_check: EndCheck | None = None
        self._settled_at = 0.0
        self._stopping = False
        self._failed_sends: list[KafkaError] = []
        #: partitions of the customer stream (read at start; they never change under a running app)
        self._stream_partitions = 0
        #: the latest time ingest has stamped: every event read after it should be no older
        self._vouched = UNKNOWN
        self._warned_behind_at = float("-inf")
        #: when the group last moved on without this instance, until it is taken back
        self._lost_at: float | None = None
        options = librdkafka_options(settings)
        self.producer = Producer(producer_options(settings))
        self.end_offsets = EndOffsets(AdminClient(options), END_OFFSETS_TIMEOUT_S)
        self.consumer = Consumer(
            {
                **options,
                "group.id": f"{w.app_id}-ingest",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": k.metadata_max_age_ms,
                # A fetch waits a little for more bytes: under a steady trickle
                # each response otherwise carries a handful of events.
                "fetch.min.bytes": w.fetch_min_bytes,
                "fetch.wait.max.ms": w.fetch_max_wait_ms,
                "session.timeout.ms": int(w.session_timeout_s * 1000),
                # Incremental rebalances: when a replica comes or goes, the
                # others go on reading the partitions they keep.
                "partition.assignment.strategy": "cooperative-sticky",
                "heartbeat.interval.ms": int(w.heartbeat_interval_s * 1000),
            }
        )

    # -------------------------------------------------------------- the loop

    def run(self, on_idle: Callable[[], None] | None = None) -> None:
        """Consume until ``stop()``; ``on_idle`` runs between polls."""
        k = self.settings.kafka
        self.registry_view.load()
        log.info("device registry loaded: %d devices", len(self.registry))
        self._stream_partitions = self._partition_count(k.customer_events_topic)
        self.consumer.subscribe(
            [f"^{_regex(k.device_topic_prefix)}.+", f"^{_regex(k.telemetry_topic)}$"],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        wait_s = self.settings.worker.fetch_max_wait_ms / 1000
        try:
            while not self._stopping:
                messages = self._take(wait_s)
                if messages:
                    self.ingest(messages)
                self._commit_if_due()
                self.registry_view.follow()
                self._update_watermark()
                self._tick_if_due()
                self._check_rejoined()
                if on_idle is not None:
                    on_idle()
            self._commit()
        finally:
            self.consumer.close()
            self.producer.flush(FLUSH_TIMEOUT_S)
            self.registry_view.close()

    def _take(self, wait_s: float) -> list[Any]:
        """What the consumer holds now, up to ``batch_size`` records, waiting at
        most ``wait_s`` for the first one.

        librdkafka's ``consume(n, timeout)`` returns only once n records are
        there or the timeout passed, so under a trickle every poll would wait
        the whole timeout. Taking what is there makes the batch as large as the
        time the last one took to process: small and quick when the load is
        light, large and cheap per event under a backlog.
        """
        batch_size = self.settings.worker.batch_size
        messages = self.consumer.consume(batch_size, timeout=0)
        if messages:
            return messages
        first = self.consumer.poll(wait_s)
        if first is None:
            return []
        return [first, *self.consumer.consume(batch_size - 1, timeout=0)]

    def stop(self) -> None:
        self._stopping = True

    def ingest(self, messages: list[Any]) -> None:
        """Inspect and forward one poll's records; returns once all are acknowledged
        and their offsets committed."""
        k = self.settings.kafka
        records: list[tuple[bytes, SourcePosition]] = []
        #: each record's Kafka timestamp (epoch ms; -1 when it has none)
        published: list[int] = []
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("ingest consumer: %s", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            records.append((message.value() or b"", SourcePosition(topic, partition, offset)))
            published.append(message.timestamp()[1])
            offsets[topic, partition] = offset + 1
        if not records:
            return
        verdicts = self.inspector.inspect_many(records)
        received_at = time.time()
        watermark = self.watermark
        watermark.note_read()
        observe = watermark.observe
        self._next_offset.update(offsets)
        vouched = self._vouched
        furthest_behind: tuple[float, str] | None = None
        for (_, source), verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, Accepted):
                ts = verdict.event["ts"]
                observe((source.topic, source.partition), ts)
                if ts < vouched:
                    self.metrics.behind_watermark += 1
                    if furthest_behind is None or ts < furthest_behind[0]:
                        furthest_behind = (ts, source.topic)
        if furthest_behind is not None:
            self._warn_behind(vouched - furthest_behind[0], furthest_behind[1])
        if watermark.current is None:
            # Until it is known, find it before stamping: an unknown watermark
            # holds the actor's idle-key time back, and a quiet stream would
            # leave it there.
            self._update_watermark(force=True)
        produce = self.producer.produce
        on_delivery = self._on_delivery
        partitions = self._stream_partitions
        partition_of = self._partition_of
        by_partition: dict[int, list[dict[str, Any]]] = {}
        published_by_partition: dict[int, list[int]] = {}
        for (raw, source), verdict, at_ms in zip(records, verdicts, published, strict=True):
            if isinstance(verdict, Accepted):
                event = verdict.event
                customer_id = event["customer_id"]
                partition = partition_of.get(customer_id)
                if partition is None:
                    if len(partition_of) >= PARTITION_CACHE_SIZE:
                        partition_of.clear()
                    partition = partition_of[customer_id] = partition_for(
                        customer_id.encode(), partitions
                    )
                by_partition.setdefault(partition, []).append(event)
                published_by_partition.setdefault(partition, []).append(at_ms)
                self.metrics.accepted += 1
            else:
                self._produce(
                    produce,
                    k.deadletter_topic,
                    deadletter_value(raw, verdict, source, received_at),
                    source.topic.encode(),
                    on_delivery,
                )
                self.metrics.deadlettered += 1
        headers = self._headers()
        sent_at = time.monotonic()
        for partition, events in by_partition.items():
            self._sent_at[partition] = sent_at
            stamps = published_by_partition[partition]
            for start in range(0, len(events), EVENTS_PER_RECORD):
                packed = events[start : start + EVENTS_PER_RECORD]
                oldest = min(stamps[start : start + EVENTS_PER_RECORD])
                self._produce(
                    produce,
                    k.customer_events_topic,
                    pack_events(packed),
                    None,
                    on_delivery,
                    partition=partition,
                    timestamp=int(packed[-1]["ts"] * 1000),
                    headers=headers
                    if oldest < 0
                    else [*headers, (PUBLISHED_HEADER, str(oldest).encode())],
                )
                self.metrics.records_sent += 1
        self._flush()
        self._acknowledged.update(offsets)
        self.metrics.consumed += len(records)
        self.metrics.batches += 1
        self.metrics.last_batch_at = received_at

    def _warn_behind(self, seconds: float, topic: str) -> None:
        now = time.monotonic()
        if now - self._warned_behind_at < BEHIND_WARNING_INTERVAL_S:
            return
        self._warned_behind_at = now
        log.warning(
            "ingest: events read %.0f s of event time behind the time already stamped "
            "(e.g. %s; %d so far): devices reach Kafka further out of order than "
            "quality.device_skew_s, so timers of idle keys may fire early",
            seconds, topic, self.metrics.behind_watermark,
        )  # fmt: skip

    def _partition_count(self, topic: str, timeout_s: float = 30.0) -> int:
        metadata = self.producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            reason = metadata.error if metadata is not None else "unknown topic"
            raise RuntimeError(f"ingest: topic {topic} is unusable ({reason}); run `iotcrm setup`")
        return len(metadata.partitions)

    def _produce(self, produce: Any, topic: str, value: bytes, key: bytes | None, on_delivery: Any,
                 **extra: Any) -> None:  # fmt: skip
        while True:
            try:
                produce(topic, value, key, on_delivery=on_delivery, **extra)
                return
            except BufferError:
                # librdkafka's queue is full: let it deliver, then try again.
                self.producer.poll(0.1)

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failed_sends.append(error)

    def _flush(self) -> None:
        """Until every record of the poll is acknowledged. The idempotent
        producer retries on its own; a record it gave up on means the poll is
        not committed, and the worker's supervisor starts ingest again from
        the committed offsets (at least once)."""
        while self.producer.flush(FLUSH_TIMEOUT_S):
            log.warning("ingest: records still unacknowledged after %.0f s", FLUSH_TIMEOUT_S)
        if self._failed_sends:
            errors, self._failed_sends = self._failed_sends, []
            self.metrics.send_retries += len(errors)
            raise KafkaException(errors[0])

    def _commit_if_due(self) -> None:
        if time.monotonic() - self._committed_at >= self.settings.worker.commit_interval_s:
            self._commit()

    def _commit(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        """Commit the offsets of records acknowledged downstream (all, or those
        of ``partitions``). Once per ``worker.commit_interval_s``, not per
        poll: each commit is a write per partition to the broker's offsets
        log, and a crash replays at most that much, which the actor's dedup
        drops. Only partitions read since the last commit: a commit of every
        assigned partition lists hundreds of device topics each time."""
        self._committed_at = time.monotonic()
        if partitions is None:
            offsets, self._acknowledged = self._acknowledged, {}
        else:
            offsets = {tp: self._acknowledged.pop(tp) for tp in partitions
                       if tp in self._acknowledged}  # fmt: skip
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[KafkaPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # Every record of the batch is already acknowledged downstream; the
            # group moved on (a rebalance). Partitions this ingest keeps (an
            # incremental rebalance keeps most) are committed with the next
            # commit; those it loses are read again by their new owner, and the
            # actor's dedup drops the repeats.
            for tp, offset in offsets.items():
                if tp in self._assigned:
                    self._acknowledged[tp] = max(offset, self._acknowledged.get(tp, offset))
            self.metrics.commit_failures += 1
            log.warning("ingest offset commit failed (%s); committed again next time", exc)

    # ------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        self._lost_at = None  # a member of the group again, whatever it was given
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self.watermark.take_back((tp.topic, tp.partition) for tp in partitions)
        # Sources read by another instance until now may be behind what this
        # one stamped; its stamps vouched only for its own.
        self._vouched = UNKNOWN
        self._count_sources()
        if partitions:
            log.info("ingest: %d sources assigned, %d now", len(partitions), len(self._assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        if partitions:
            self.metrics.rebalances += 1
            log.info("ingest: %d sources revoked", len(partitions))
        # Their records are acknowledged downstream: commit them while they are ours.
        self._commit({(tp.topic, tp.partition) for tp in partitions})
        self._forget(partitions)

    def _forget(self, partitions: list[KafkaPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        # An answer in flight would judge sources no longer this instance's.
        self._end_check = None
        self.end_offsets.drop()
        # Until their new owner is heard, they hold this instance's time back.
        self.watermark.hand_over({tp: self._read_to(tp) for tp in gone})
        self._assigned -= gone
        for tp in gone:
            self._next_offset.pop(tp, None)
            self._start.pop(tp, None)
            self._acknowledged.pop(tp, None)
        self._count_sources()

    def _count_sources(self) -> None:
        self.metrics.subscribed_topics = len({topic for topic, _ in self._assigned})
        self.metrics.assigned_sources = len(self._assigned)
        self.metrics.handed_over = len(self.watermark.handed_over)

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        # Already someone else's: their uncommitted records are read again there.
        self.metrics.rebalances += 1
        log.warning(
            "ingest: %d sources lost (the group moved on without this instance)", len(partitions)
        )
        self._forget(partitions)
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def _check_rejoined(self) -> None:
        """Exit (the worker starts a fresh ingest) if the group has not taken
        this instance back ``REJOIN_LIMIT_SESSIONS`` session timeouts after it
        lost its sources: a consumer left out for good would read nothing and
        hold its sources' time back while looking alive."""
        if self._lost_at is None:
            return
        limit_s = REJOIN_LIMIT_SESSIONS * self.settings.worker.session_timeout_s
        waited_s = time.monotonic() - self._lost_at
        if waited_s >= limit_s:
            raise IngestLeftOut(
                f"ingest: not taken back into its consumer group {waited_s:.0f} s after "
                "losing its sources; exiting so that a fresh consumer joins"
            )

    # ------------------------------------------------------------ watermark

    def _settle_hand_overs(self) -> None:
        """How far the new owners of the sources handed over have committed."""
        try:
            sources = [KafkaPartition(topic, part) for topic, part in self.watermark.handed_over]
            committed = self.consumer.committed(sources, timeout=END_OFFSETS_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("ingest: committed offsets of sources handed over not known (%s)", exc)
            return
        self.watermark.settle(
            {(tp.topic, tp.partition): tp.offset for tp in committed if tp.error is None}
        )

    def _headers(self) -> list[tuple[str, bytes]]:
        # Unknown (a lagging source has yielded no valid event yet) holds time
        # back; leaving the header out would let the actor use the event's own time.
        stamp = self.watermark.stamp()
        self._vouched = max(self._vouched, stamp)
        return [
            (SOURCE_HEADER, self.instance_id.encode()),
            (WATERMARK_HEADER, repr(stamp).encode()),
            sent_header(),
        ]

    def _update_watermark(self, force: bool = False) -> None:
        """Every ``metrics.watermark_interval_s``: ask for the end offsets of
        every assigned source, and judge the answer, once it is there, against
        what had been read when they were asked for
        (``engine.watermark.IngestWatermark``). ``force``: now, waiting for it."""
        if self._end_check is not None and (force or self.end_offsets.answered()):
            began = time.thread_time()
            check, self._end_check = self._end_check, None
            self._judge(check, self.end_offsets.take())
            self._space_checks(self._check_cpu_s + time.thread_time() - began)
        now = time.monotonic()
        if self._end_check is not None or (
            not force and now - self._watermark_at < self.metrics.watermark_interval_s
        ):
            return
        self._watermark_at = now
        if self.watermark.handed_over and now - self._settled_at >= SETTLE_INTERVAL_S:
            # A round trip to the group coordinator, in this loop: the
            # hand-over's grace is seconds, so twice a second is plenty.
            self._settled_at = now
            self._settle_hand_overs()
        if not self._assigned and not self.watermark.handed_over:
            return
        began = time.thread_time()
        positions = self._positions()
        check = self.watermark.begin_check(positions)
        try:
            # Also the ends of the sources handed over: one with nothing past
            # what this instance read stops holding its time back.
            self.end_offsets.ask({*positions, *self.watermark.handed_over})
        except KafkaException as exc:
            log.warning("ingest: end offsets of its sources not known (%s); time holds", exc)
            return
        self._check_cpu_s = time.thread_time() - began
        if force:
            self._judge(check, self.end_offsets.take())
        else:
            self._end_check = check

    def _space_checks(self, cost_s: float) -> None:
        """The next interval between checks, from what the last one cost: no
        more than ``WATERMARK_CHECK_SHARE`` of the thread, smoothed. A longer
        interval only holds time back longer (quiet keys' timers fire later);
        a source is judged read to its end only against ends asked for after
        its position was taken, whenever that was."""
        wanted = min(max(cost_s / WATERMARK_CHECK_SHARE, WATERMARK_INTERVAL_S),
                     WATERMARK_INTERVAL_MAX_S)  # fmt: skip
        interval = self.metrics.watermark_interval_s
        self.metrics.watermark_interval_s = interval + 0.2 * (wanted - interval)

    def _judge(self, check: EndCheck, ends: dict[tuple[str, int], int]) -> None:
        # A source whose end is unknown counts as lagging: it holds time back.
        self.watermark.finish_check(check, ends)
        self.metrics.watermark = self.watermark.current
        self.metrics.lagging_sources = self.watermark.lagging
        self.metrics.handed_over = len(self.watermark.handed_over)
        self.metrics.lag = sum(
            max(0, end - check.positions[tp]) for tp, end in ends.items() if tp in check.positions
        )

    def _positions(self) -> dict[tuple[str, int], int]:
        """Where reading stands in every assigned source: the next offset to
        read, or where reading will start (the committed offset, else the
        log's start as last known)."""
        unknown = [tp for tp in self._assigned
                   if tp not in self._next_offset and tp not in self._start]  # fmt: skip
        if unknown:
            for tp in self.consumer.committed([KafkaPartition(*tp) for tp in unknown], timeout=10):
                self._start[tp.topic, tp.partition] = tp.offset
        return {tp: self._read_to(tp) for tp in self._assigned}

    def _read_to(self, tp: tuple[str, int]) -> int:
        """The next offset this instance would have read of ``tp``, known
        without a round trip (in a rebalance callback): where reading stood,
        else the committed offset, else the log's start as last fetched."""
        position = self._next_offset.get(tp, self._start.get(tp, -1))
        if position < 0:  # nothing committed: reading starts at the log's start
            try:
                low, _ = self.consumer.get_watermark_offsets(KafkaPartition(*tp), cached=True)
            except KafkaException:
                low = 0  # unknown: 0 can only make the source hold time back longer
            position = max(low, 0)
        return position

    def _tick_if_due(self) -> None:
        """A tick record to each partition of the customer stream this ingest
        sent nothing to for ``TICK_INTERVAL_S``: its watermark reaches quiet
        partitions too, so their idle keys' timers fire."""
        if not self._assigned:
            return  # no sources: this ingest vouches for no time
        now = time.monotonic()
        headers = None
        for partition in range(self._stream_partitions):
            if now - self._sent_at.get(partition, 0.0) < TICK_INTERVAL_S:
                continue
            headers = headers or self._headers()
            # A tick that never arrives is made good by the next one: its
            # delivery is not awaited, and a failure of it fails nothing.
            self._produce(
                self.producer.produce,
                self.settings.kafka.customer_events_topic,
                orjson.dumps({"wall": time.time()}),
                TICK_KEY,
                None,
                partition=partition,
                headers=headers,
            )
            self._sent_at[partition] = now
        if headers is not None:
            self.producer.poll(0)
            self.metrics.ticks += 1


def _regex(literal: str) -> str:
    """``literal`` escaped for a librdkafka topic regex (POSIX extended)."""
    return "".join(f"\\{c}" if c in r".^$*+?()[]{}|\\" else c for c in literal)
