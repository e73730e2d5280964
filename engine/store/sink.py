"""The durable sink: Kafka action topics, the registry and the customer-360
summaries → Cassandra.

One consumer in group ``iotcrm-cassandra-sink`` reads the action topics,
``iot.registry`` and the worker's customer-360 summaries (compacted topic
``kafka.customer360_topic``) with ``read_committed`` isolation (only actions
of committed engine transactions) and manual commits. Each batch is written to Cassandra
and its offsets are committed **only after** every write of the batch
succeeded. So a crash between write and commit re-delivers the batch, and the
re-write is a no-op: every write is an upsert keyed by natural ids.

When Cassandra fails, the sink keeps the batch and retries it with
exponential backoff and jitter (bounded delay), pausing all its partitions in
the meantime: it never holds more than that one batch, the engine keeps
emitting actions to Kafka, and the backlog waits there until Cassandra is back.
A downed Cassandra delays writes; it never loses one. A record that can never
be stored (not JSON, no ``action_id``...) is logged, counted as ``rejected``
and skipped, so one bad record cannot stall the sink.

Usage::

    store = CassandraStore(settings)
    sink = CassandraSink(settings, store)
    await sink.start()
    ...
    health = sink.metrics.as_dict()   # written, retries, lag, last_error, healthy, ...
    await sink.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from engine.config import ACTION_TOPIC_SUFFIX, Settings
from engine.erasure import ERASURE_HEADER, ErasureReport, decode_report
from engine.kafka import client_options, partition_for
from engine.store.backoff import Backoff
from engine.store.rows import InvalidRecord, action_row, customer_360_row, device_row

log = logging.getLogger(__name__)

GROUP_ID = "iotcrm-cassandra-sink"


class SinkStore(Protocol):
    """What the sink needs from a store (CassandraStore provides it)."""

    async def write_actions(self, actions: Sequence[Mapping[str, Any]]) -> int: ...

    async def upsert_device(
        self,
        device_id: str,
        *,
        customer_id: str,
        device_type: str | None = None,
        model: str | None = None,
        registered_at: float | str | None = None,
    ) -> None: ...

    async def delete_device(self, device_id: str) -> None: ...

    async def erase_customer(
        self, customer_id: str, device_ids: Sequence[str]
    ) -> dict[str, int]: ...

    async def record_erasure(self, report: ErasureReport, deleted: Mapping[str, int]) -> None: ...

    async def write_customer_summaries(self, summaries: Mapping[str, Mapping[str, Any]]) -> int: ...


@dataclass
class SinkMetrics:
    """Counters and state for the worker's health endpoint."""

    written: int = 0  # actions written (re-writes after a retry count once)
    devices_written: int = 0  # registry records mirrored
    summaries_written: int = 0  # customer-360 summaries upserted
    erasures: int = 0  # customers whose rows an erasure deleted
    batches: int = 0  # batches written and committed
    retries: int = 0  # failed write attempts of a batch that was then retried
    rejected: int = 0  # records that can never be stored (logged, skipped)
    commit_failures: int = 0  # commits lost to a rebalance (batch re-delivered)
    lag: int | None = None  # records on the topics not yet durably written
    last_error: str | None = None
    last_error_at: float | None = None  # epoch seconds
    failing_since: float | None = None  # epoch seconds; None while writes succeed
    running: bool = False

    @property
    def healthy(self) -> bool:
        """Running, and the last write attempt succeeded."""
        return self.running and self.failing_since is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A registry record: a registration, or (``registration is None``) a tombstone."""

    device_id: str
    registration: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Batch:
    """The decoded content of one consumer batch, ready to write."""

    actions: list[dict[str, Any]]
    devices: list[DeviceChange]
    summaries: dict[str, dict[str, Any]]  # customer_id → latest summary
    #: erasures the actor completed: (where the tombstone is, its offset, customer, report)
    erasures: list[tuple[TopicPartition, int, str, ErasureReport]]
    rejected: int
    offsets: dict[TopicPartition, int]  # next offset to commit per partition
    records: int  # how many Kafka records the batch holds


def action_topics(settings: Settings) -> list[str]:
    """The four action topics (crm.actions.coupon, ...) named by the settings."""
    return [settings.action_topic(action_type) for action_type in ACTION_TOPIC_SUFFIX]


def decode_batch(
    records: Mapping[TopicPartition, Sequence[Any]],
    registry_topic: str | None,
    customer360_topic: str | None = None,
) -> Batch:
    """Split a ``getmany`` result into actions, registry changes and
    customer-360 summaries.

    Malformed records are logged and counted, never raised: retrying cannot
    fix them. Of several changes to one device, or summaries of one
    customer, in a batch only the last is kept, as log compaction would; a
    summary tombstone only cancels the customer's earlier summaries of the
    batch (the 360 row also holds the action log's and the registry's fields,
    so it is not deleted).
    """
    actions: list[dict[str, Any]] = []
    devices: dict[str, DeviceChange] = {}
    summaries: dict[str, dict[str, Any]] = {}
    erasures: list[tuple[TopicPartition, int, str, ErasureReport]] = []
    rejected = 0
    offsets: dict[TopicPartition, int] = {}
    for tp, messages in records.items():
        if not messages:
            continue
        offsets[tp] = messages[-1].offset + 1
        for message in messages:
            try:
                if tp.topic == registry_topic:
                    change = _device_change(message)
                    devices.pop(change.device_id, None)  # keep the latest last
                    devices[change.device_id] = change
                elif tp.topic == customer360_topic:
                    customer_id, summary = _customer_summary(message)
                    summaries.pop(customer_id, None)
                    if summary is not None:
                        summaries[customer_id] = summary
                    else:
                        report = _erasure_report(message)
                        if report is not None:
                            erasures.append((tp, message.offset, customer_id, report))
                else:
                    actions.append(_action(message, tp.topic))
            except InvalidRecord as exc:
                rejected += 1
                log.error(
                    "rejected record %s[%d]@%d: %s", tp.topic, tp.partition, message.offset, exc
                )
    total = sum(len(messages) for messages in records.values())
    return Batch(actions, list(devices.values()), summaries, erasures, rejected, offsets, total)


def _json_object(value: bytes | None) -> dict[str, Any]:
    try:
        decoded = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(decoded).__name__}")
    return decoded


def _text_key(message: Any) -> str | None:
    try:
        return message.key.decode() if message.key is not None else None
    except UnicodeDecodeError:
        raise InvalidRecord(f"key is not UTF-8: {message.key!r}") from None


def _action(message: Any, topic: str) -> dict[str, Any]:
    action = _json_object(message.value)
    action["topic"] = topic
    action_row(action, written_at_ms=0)  # validate now: InvalidRecord is not retryable
    return action


def _device_change(message: Any) -> DeviceChange:
    key = _text_key(message)
    if message.value is None:
        if not key:
            raise InvalidRecord("tombstone without a key")
        return DeviceChange(key, None)
    registration = _json_object(message.value)
    device_id = key or registration.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise InvalidRecord("registry record without a device id")
    device_row(device_id, registration)  # validate now
    return DeviceChange(device_id, registration)


def _customer_summary(message: Any) -> tuple[str, dict[str, Any] | None]:
    key = _text_key(message)
    if message.value is None:
        if not key:
            raise InvalidRecord("tombstone without a key")
        return key, None
    summary = _json_object(message.value)
    row = customer_360_row(key, summary)  # validate now
    return row.customer_id, summary


def _erasure_report(message: Any) -> ErasureReport | None:
    for name, value in getattr(message, "headers", None) or ():
        if name == ERASURE_HEADER:
            try:
                return decode_report(value)
            except ValueError as exc:
                raise InvalidRecord(str(exc)) from None
    return None


@dataclass
class PendingErasure:
    """An erasure whose rows are deleted once the sink has written every
    action of the customer sent before it: its action partitions' end offsets
    when the tombstone was read (the actor sends the tombstone only after
    those actions were acknowledged). Until then the tombstone's partition is
    committed no further than the tombstone, so a restart reads it again."""

    source: TopicPartition
    offset: int
    customer_id: str
    report: ErasureReport
    ends: dict[TopicPartition, int]


class Consumer(Protocol):
    """The part of AIOKafkaConsumer the sink uses (a fake one in unit tests)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(
        self, topics: Sequence[str], listener: ConsumerRebalanceListener | None = None
    ) -> None: ...
    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...
    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    async def end_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...


class CassandraSink:
    """Consume action topics (and mirror the registry and the customer-360
    summaries) into a store.

    ``topics`` defaults to the four action topics of the settings;
    ``mirror_registry`` adds ``kafka.registry_topic``, ``mirror_customer_360``
    adds ``kafka.customer360_topic`` (unless that is empty). ``consumer_options``
    are passed to AIOKafkaConsumer (e.g. SASL/TLS options); ``consumer``
    replaces it altogether (tests). The store stays the caller's: close it
    after :meth:`stop`.
    """

    def __init__(
        self,
        settings: Settings,
        store: SinkStore,
        *,
        topics: Sequence[str] | None = None,
        mirror_registry: bool = True,
        mirror_customer_360: bool = True,
        group_id: str = GROUP_ID,
        batch_size: int | None = None,
        poll_timeout_s: float = 0.5,
        backoff: Backoff | None = None,
        lag_interval_s: float = 5.0,
        consumer_options: Mapping[str, Any] | None = None,
        consumer: Consumer | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry_topic = settings.kafka.registry_topic if mirror_registry else None
        self._customer360_topic = (
            settings.kafka.customer360_topic if mirror_customer_360 else None
        ) or None
        topics = list(topics) if topics is not None else action_topics(settings)
        self._topics = topics + [
            topic for topic in (self._registry_topic, self._customer360_topic) if topic
        ]
        self._group_id = group_id
        self._batch_size = batch_size or settings.worker.batch_size
        self._poll_timeout_ms = int(poll_timeout_s * 1000)
        self._backoff = backoff or Backoff()
        self._lag_interval_s = lag_interval_s
        self._consumer_options = dict(consumer_options or {})
        self._consumer = consumer
        self._task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._holding = False  # a failed batch is held: keep every partition paused
        self._lag_checked_at = float("-inf")
        self._in_hand = 0  # records of the batch being written (fetched, not committed)
        self._pending_erasures: list[PendingErasure] = []
        #: offsets not committed while an erasure on their partition waits
        self._held_commits: dict[TopicPartition, int] = {}
        self.metrics = SinkMetrics()

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    async def start(self) -> None:
        """Start consuming in a background task (returns once subscribed)."""
        if self._task is not None:
            raise RuntimeError("sink already started")
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                **client_options(self._settings),
                group_id=self._group_id,
                client_id=self._group_id,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                max_poll_records=self._batch_size,
                **self._consumer_options,
            )
        self._consumer.subscribe(self._topics, listener=_KeepPausedWhileHolding(self))
        await self._consumer.start()
        self._stop_requested.clear()
        self.metrics.running = True
        self._task = asyncio.create_task(self._run(), name="cassandra-sink")
        log.info("cassandra sink consuming %s as group %s", self._topics, self._group_id)

    async def stop(self) -> None:
        """Finish the batch in hand (a batch that cannot be written stays
        uncommitted and is re-delivered next time), then leave the group."""
        self._stop_requested.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        if self._consumer is not None:
            await self._consumer.stop()
        self.metrics.running = False

    # -- the loop ---------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        attempt = 0
        try:
            while not self._stop_requested.is_set():
                try:
                    records = await self._consumer.getmany(
                        timeout_ms=self._poll_timeout_ms, max_records=self._batch_size
                    )
                    if records:
                        await self._deliver(
                            decode_batch(records, self._registry_topic, self._customer360_topic)
                        )
                    elif self._pending_erasures or self._held_commits:
                        await self._erase_due()
                        await self._commit({})
                    await self._refresh_lag()
                except Exception as exc:
                    # Kafka-side trouble (the write path retries Cassandra's own):
                    # keep the sink alive, and visible as unhealthy, until it passes.
                    attempt += 1
                    self._record_failure(exc)
                    log.exception("cassandra sink: consumer error (attempt %d)", attempt)
                    await self._wait(self._backoff.delay(attempt))
                else:
                    attempt = 0
                    self.metrics.failing_since = None
        finally:
            self.metrics.running = False

    async def _deliver(self, batch: Batch) -> None:
        """Write the batch until it succeeds (or stop), then commit it."""
        self.metrics.rejected += batch.rejected
        self._in_hand = batch.records
        attempt = 0
        while True:
            try:
                written, devices, summaries = await self._write(batch)
                await self._add_erasures(batch)
                await self._erase_due()
                break
            except Exception as exc:
                attempt += 1
                self._record_failure(exc)
                if self._stop_requested.is_set():
                    log.warning(
                        "cassandra sink stopping with an unwritten batch; "
                        "it stays uncommitted and will be re-delivered"
                    )
                    self._release()
                    self._in_hand = 0
                    return
                delay = self._backoff.delay(attempt)
                log.warning(
                    "cassandra write failed (attempt %d, %d actions held, retry in %.1fs): %r",
                    attempt,
                    len(batch.actions),
                    delay,
                    exc,
                )
                self._hold()
                self.metrics.retries += 1
                await self._wait(delay)
        if attempt:
            log.info("cassandra writes recovered after %d failed attempts", attempt)
        self._release()
        self.metrics.failing_since = None
        self.metrics.written += written
        self.metrics.devices_written += devices
        self.metrics.summaries_written += summaries
        await self._commit(batch.offsets)
        self._in_hand = 0
        self.metrics.batches += 1

    async def _write(self, batch: Batch) -> tuple[int, int, int]:
        """Write the whole batch; returns how many actions, registry changes
        and summaries it wrote."""
        written = await self._store.write_actions(batch.actions) if batch.actions else 0
        # Different devices are independent; one device appears once per batch.
        await asyncio.gather(*(self._apply(change) for change in batch.devices))
        summaries = (
            await self._store.write_customer_summaries(batch.summaries) if batch.summaries else 0
        )
        return written, len(batch.devices), summaries

    async def _apply(self, change: DeviceChange) -> None:
        if change.registration is None:
            await self._store.delete_device(change.device_id)
            return
        row = device_row(change.device_id, change.registration)
        await self._store.upsert_device(
            row.device_id,
            customer_id=row.customer_id,
            device_type=row.device_type,
            model=row.model,
            registered_at=None if row.registered_at_ms is None else row.registered_at_ms / 1000,
        )

    async def _add_erasures(self, batch: Batch) -> None:
        assert self._consumer is not None
        known = {(p.source, p.offset) for p in self._pending_erasures}
        for source, offset, customer_id, report in batch.erasures:
            if (source, offset) in known:
                continue  # the same batch written again after a failure
            # Actions are keyed by customer_id, on topics of kafka.partitions partitions.
            partition = partition_for(customer_id.encode(), self._settings.kafka.partitions)
            partitions = [
                TopicPartition(topic, partition)
                for topic in self._topics
                if topic not in (self._registry_topic, self._customer360_topic)
            ]
            ends = await self._consumer.end_offsets(partitions) if partitions else {}
            self._pending_erasures.append(
                PendingErasure(source, offset, customer_id, report, dict(ends))
            )

    async def _erase_due(self) -> None:
        """Delete the rows of every pending erasure the sink has caught up with."""
        assert self._consumer is not None
        owned = self._consumer.assignment()
        for pending in list(self._pending_erasures):
            if pending.source not in owned:
                # Revoked: its new owner reads the tombstone again (not committed past).
                self._pending_erasures.remove(pending)
                continue
            for tp, end in pending.ends.items():
                if tp in owned and await self._consumer.position(tp) < end:
                    break
            else:
                deleted = await self._store.erase_customer(
                    pending.customer_id, pending.report.device_ids
                )
                await self._store.record_erasure(pending.report, deleted)
                self._pending_erasures.remove(pending)
                self.metrics.erasures += 1
                log.info("erasure %s: rows deleted %s", pending.report.request_id, deleted)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        owned = self._consumer.assignment()
        waiting = {p.source for p in self._pending_erasures}
        for tp, offset in list(offsets.items()):
            if tp in waiting:  # what it may commit once the erasure is done
                self._held_commits[tp] = max(self._held_commits.get(tp, 0), offset)
        for tp, offset in list(self._held_commits.items()):
            if tp not in waiting:
                offsets[tp] = max(offsets.get(tp, 0), offset)
                del self._held_commits[tp]
        for pending in self._pending_erasures:
            if pending.source in offsets:
                offsets[pending.source] = min(offsets[pending.source], pending.offset)
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if len(mine) < len(offsets):
            self.metrics.commit_failures += 1
            log.warning(
                "partitions %s were revoked before commit; their records will be "
                "re-delivered and re-written (idempotent)",
                sorted(set(offsets) - owned),
            )
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The data is in Cassandra; a lost commit only means a harmless
            # re-write after the next rebalance or restart.
            self.metrics.commit_failures += 1
            log.warning("offset commit failed, batch will be re-delivered: %r", exc)

    # -- holding a failed batch -------------------------------------------

    def _hold(self) -> None:
        """Pause every assigned partition while a batch is held."""
        assert self._consumer is not None
        self._holding = True
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(*assigned)

    def _release(self) -> None:
        assert self._consumer is not None
        if self._holding:
            self._holding = False
            assigned = self._consumer.assignment()
            if assigned:
                self._consumer.resume(*assigned)

    async def _wait(self, delay_s: float) -> None:
        """Wait ``delay_s`` (or until stop), polling the paused consumer now
        and then: a consumer that stops polling for ``max_poll_interval_ms``
        is thrown out of its group."""
        assert self._consumer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        while not self._stop_requested.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), timeout=min(remaining, 5.0))
            if self._holding:
                self._hold()  # partitions assigned meanwhile start paused too
                stray = await self._consumer.getmany(timeout_ms=0)
                for tp, messages in stray.items():
                    # Fetched before the pause took hold: rewind, so they are
                    # read again after the held batch instead of buffered.
                    if messages:
                        self._consumer.seek(tp, messages[0].offset)
            await self._refresh_lag()

    def _record_failure(self, exc: BaseException) -> None:
        now = time.time()
        self.metrics.last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.last_error_at = now
        if self.metrics.failing_since is None:
            self.metrics.failing_since = now

    async def _refresh_lag(self) -> None:
        """Records on the assigned partitions past our position, refreshed at
        most every ``lag_interval_s`` (it costs a ListOffsets request)."""
        assert self._consumer is not None
        loop = asyncio.get_running_loop()
        if loop.time() - self._lag_checked_at < self._lag_interval_s:
            return
        self._lag_checked_at = loop.time()
        assigned = sorted(self._consumer.assignment())
        if not assigned:
            return
        try:
            async with asyncio.timeout(self._lag_interval_s):
                ends = await self._consumer.end_offsets(assigned)
                positions = [await self._consumer.position(tp) for tp in assigned]
        except (KafkaError, IllegalStateError, TimeoutError) as exc:
            log.debug("lag not refreshed: %r", exc)
            return
        behind = sum(max(0, ends[tp] - pos) for tp, pos in zip(assigned, positions, strict=True))
        self.metrics.lag = behind + self._in_hand


class _KeepPausedWhileHolding(ConsumerRebalanceListener):
    """Partitions assigned while a batch is held start paused."""

    def __init__(self, sink: CassandraSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._sink._holding and assigned and self._sink._consumer is not None:
            self._sink._consumer.pause(*assigned)
