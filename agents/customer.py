"""The customer actor as a Faust agent: Kafka in and out, tables, ticks.

One logical actor per customer: the agent consumes the customer-keyed event
stream together with ``crm.customers`` (profiles) and ``crm.outcomes``
(delayed labels), all co-partitioned by customer_id, so one worker sees every
record of a customer in order. The logic itself is ``engine.actor``.

Per batch (``stream.take_events``):

1. group records by customer (one customer's records share a partition);
2. per customer: read its state once, apply profiles, outcomes and events,
   fire its due timers, collect actions;
3. send actions (and late events) and wait until Kafka acknowledged them;
4. only then write each customer's state once, so state that says "seen"
   implies its actions were delivered (at least once; a replay repeats an
   action with the same ``action_id`` and never loses one);
5. wait until the state writes are acknowledged too, before Faust may ack the
   batch and commit past it (``agents.faust_fixes.flush_table_writes``).

The customer-event topic has no holes in its offsets (no compaction, no
transactions), so a record that arrives past one means Faust dropped records
before they reached the actor (it has, see ``agents.faust_fixes``). The actor
counts it in ``offset_gaps``, logs it, leaves the records past the hole
unprocessed and unacknowledged, and seeks the partition back to the hole; and
Faust is told never to commit across a hole in that topic.

Faust writes a table key to the changelog partition of the *current event*,
so each customer's state is read and written with one of its own records set
as the current event.

Idle keys: after each batch, the timers due up to the partition's time
(``engine.watermark.PartitionClock``: the ingest watermarks its events carry)
fire; and every worker sends a tick record to each partition it owns once a
second, which also lets a quiet partition's time move with the wall clock, so
a silent device is noticed when its partition is quiet.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import TP

from agents.faust_fixes import flush_table_writes, never_fill_gaps, unprocessed
from engine.actor import ActorOutput
from engine.watermark import PartitionClock, time_headers
from tables.definitions import DAY_S
from tables.state import (
    CustomerState,
    apply_profile,
    decode_state,
    encode_state,
    new_customer_state,
    usage_buckets,
)

log = logging.getLogger(__name__)

TICK_KEY = b"\x00tick"


@dataclass
class ActorStats:
    events: int = 0
    profiles: int = 0
    outcomes: int = 0
    actions: int = 0
    late: int = 0
    duplicates: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    timer_firings: int = 0
    #: records of the customer-event topic skipped before they reached the actor
    offset_gaps: int = 0
    last_batch_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def set_current(event: faust.EventT) -> None:
    """Make ``event`` Faust's current event: table writes go to its partition."""
    _current_event.set(weakref.ref(event))


class CustomerAgent:
    """Owns the table, the timer index and the per-partition models of a worker."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime  # agents.app.Runtime
        self.stats = ActorStats()
        self.clocks: dict[int, PartitionClock] = defaultdict(PartitionClock)
        #: partition -> customer_id -> earliest pending timer.
        self.due: dict[int, dict[str, float]] = defaultdict(dict)
        self.due_index_stale = True
        self._last_checkpoint: dict[int, float] = {}
        self._positions: dict[tuple[str, str], dict[str, Any]] = {}
        #: customers whose windowed usage this worker has rewritten from their state
        self._mirrored: set[str] = set()
        #: (topic, partition) -> offset expected next from the customer-event topic
        self._next_offset: dict[tuple[str, int], int] = {}
        #: partitions sought back after a hole, until its first record comes again
        self._rewinding: set[tuple[str, int]] = set()

    # ----------------------------------------------------------- the stream

    async def run(self, stream: faust.StreamT) -> None:
        settings = self.rt.settings.worker
        never_fill_gaps(self.rt.app.consumer, {self.rt.settings.kafka.customer_events_topic})
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            try:
                await self.handle_batch(batch)
            except Exception:
                log.exception("customer actor failed on a batch of %d records", len(batch))
                raise

    async def handle_batch(self, batch: Iterable[faust.EventT]) -> None:
        k = self.rt.settings.kafka
        if self.due_index_stale:
            self._rebuild_due_index()
        groups: dict[str, list[faust.EventT]] = {}
        ticked: dict[int, faust.EventT] = {}
        #: partition -> (offset to fetch again from, whether the hole is new)
        rewinds: dict[int, tuple[int, bool]] = {}
        for record in batch:
            if record.message.topic == k.customer_events_topic and not self._in_sequence(
                record.message, rewinds
            ):
                continue
            key = record.key
            if key == TICK_KEY:
                ticked[record.message.partition] = record
                continue
            if key is None:
                log.warning(
                    "%s: record without key at offset %s ignored",
                    record.message.topic,
                    record.message.offset,
                )
                continue
            groups.setdefault(key.decode(), []).append(record)

        for partition, (offset, new_hole) in rewinds.items():
            tp = TP(k.customer_events_topic, partition)
            if new_hole:
                await self._seek_back(tp, offset)
            else:
                # Records fetched before the seek still arrive, and Faust's
                # read offset follows them past the seek: seek again.
                await self.rt.app.consumer.seek(tp, offset)

        emitted_at = time.time()
        #: where each event of this batch was read, for the late-event envelope
        self._positions: dict[tuple[str, str], dict[str, Any]] = {}
        written: dict[str, tuple[faust.EventT, CustomerState]] = {}
        usage: dict[str, set[float]] = {}
        out = ActorOutput()
        for customer_id, records in groups.items():
            anchor = records[-1]
            set_current(anchor)
            state = self._load(customer_id)
            events: list[dict[str, Any]] = []
            for record in records:
                topic = record.message.topic
                if topic == k.customer_events_topic:
                    event = orjson.loads(record.value)
                    events.append(event)
                    message = record.message
                    self._positions[event["device_id"], event["id"]] = {
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                    }
                    source, watermark = time_headers(record.message.headers)
                    self.clocks[record.message.partition].on_event(event["ts"], source, watermark)
                elif topic == k.customers_topic:
                    apply_profile(state, orjson.loads(record.value) if record.value else None)
                    self.stats.profiles += 1
                elif topic == k.outcomes_topic:
                    outcome = orjson.loads(record.value)
                    self._models(anchor.message.partition).observe_outcome(outcome)
                    self.stats.outcomes += 1
            if events:
                models = self._models(anchor.message.partition)
                handled = self.rt.actor.handle_events(state, events, models, emitted_at)
                if handled.usage_hours:
                    usage[customer_id] = handled.usage_hours
                out.extend(handled)
            written[customer_id] = (anchor, state)

        # Time moves for idle keys: the partitions' stream time after this batch,
        # and the wall-clock-aged time of ticked partitions.
        partitions = {anchor.message.partition: anchor for anchor, _ in written.values()}
        partitions.update(ticked)
        for partition, anchor in partitions.items():
            now = self.clocks[partition].now(
                self.rt.settings.worker.idle_allowance_s if partition in ticked else float("inf")
            )
            if now is not None:
                out.extend(self._advance_partition(partition, anchor, now, written, emitted_at))

        await self._send(out)
        tables = self.rt.tables
        for customer_id, (anchor, state) in written.items():
            set_current(anchor)
            tables.customers[customer_id] = encode_state(state)
            self._mirror_usage(customer_id, state, usage.get(customer_id))
            self._index_due(anchor.message.partition, customer_id, state)
        self._checkpoint_models(partitions)
        await flush_table_writes(self.rt.app.producer)
        self.stats.batches += 1
        self.stats.last_batch_at = emitted_at
        self.stats.events += out.processed
        self.stats.duplicates += out.duplicates
        for reason, count in out.suppressed.items():
            self.stats.suppressed[reason] = self.stats.suppressed.get(reason, 0) + count
        self.rt.summaries.mark(written)

    def _load(self, customer_id: str) -> CustomerState:
        blob = self.rt.customers.get(customer_id)
        return decode_state(blob) if blob is not None else new_customer_state(customer_id)

    def _advance_partition(
        self,
        partition: int,
        anchor: faust.EventT,
        now: float,
        written: dict[str, tuple[faust.EventT, CustomerState]],
        emitted_at: float,
    ) -> ActorOutput:
        out = ActorOutput()
        due = self.due[partition]
        for customer_id in [c for c, t in due.items() if t <= now]:
            if customer_id in written:
                state = written[customer_id][1]
            else:
                set_current(anchor)
                state = self._load(customer_id)
                written[customer_id] = (anchor, state)
            fired = self.rt.actor.advance(state, now, emitted_at)
            self.stats.timer_firings += len(fired.actions)
            out.extend(fired)
            due.pop(customer_id, None)
        return out

    async def _send(self, out: ActorOutput) -> None:
        producer = self.rt.app.producer
        k = self.rt.settings.kafka
        futures = []
        for topic, action in out.actions:
            futures.append(
                await producer.send(
                    topic,
                    action["customer_id"].encode(),
                    orjson.dumps(action),
                    partition=None,
                    timestamp=None,
                    headers=None,
                )
            )
        for event, reason in out.late:
            encoded = orjson.dumps(event)
            source = self._positions.get((event["device_id"], event["id"]))
            envelope = {
                "reason": reason,
                "reason_code": "late",
                "source": source,
                "received_at": time.time(),
                "original_b64": base64.b64encode(encoded).decode("ascii"),
                "event": event,
            }
            futures.append(
                await producer.send(
                    k.late_topic,
                    event["device_id"].encode(),
                    orjson.dumps(envelope),
                    partition=None,
                    timestamp=None,
                    headers=None,
                )
            )
        if futures:
            await asyncio.gather(*futures)
        self.stats.actions += len(out.actions)
        self.stats.late += len(out.late)
        self.rt.on_actions(out.actions)

    def _in_sequence(self, message: Any, rewinds: dict[int, tuple[int, bool]]) -> bool:
        """Whether a customer-stream record follows the last one processed.

        After a hole (records Faust dropped before they reached the actor) the
        records past it are not processed, nor acknowledged, so no commit can
        pass them; the partition is sought back to the first missing offset
        (``rewinds``) and they come again, in order. The first record after an
        assignment must be at the committed offset the stream resumes from.
        """
        tp = (message.topic, message.partition)
        expected = self._next_offset.get(tp)
        if expected is None:
            expected = self.rt.app.consumer._committed_offset.get(message.tp)
        if expected is None or message.offset <= expected:
            self._rewinding.discard(tp)
            self._next_offset[tp] = message.offset + 1
            return True
        if tp in self._rewinding:
            rewinds.setdefault(message.partition, (expected, False))
        else:
            self._rewinding.add(tp)
            rewinds[message.partition] = (expected, True)
            self.stats.offset_gaps += message.offset - expected
            log.error(
                "%s[%d]: offsets %d..%d never reached the actor; seeking back to %d",
                message.topic,
                message.partition,
                expected,
                message.offset - 1,
                expected,
            )
        unprocessed(self.rt.app.consumer, message)
        return False

    async def _seek_back(self, tp: TP, offset: int) -> None:
        """Fetch ``tp`` again from ``offset``, or from the log's start if
        retention has deleted what lay before it (those records are lost)."""
        consumer = self.rt.app.consumer
        earliest = (await consumer.earliest_offsets(tp)).get(tp, offset)
        if earliest > offset:
            log.error(
                "%s[%d]: offsets %d..%d were deleted by retention before the actor read them",
                tp.topic,
                tp.partition,
                offset,
                earliest - 1,
            )
            offset = earliest
        self._next_offset[tp.topic, tp.partition] = offset
        await consumer.seek(tp, offset)

    def forget_offsets(self) -> None:
        """After a rebalance the stream restarts at the committed offsets."""
        self._next_offset.clear()
        self._rewinding.clear()

    def forget_mirrored(self) -> None:
        """After a rebalance, rewrite each customer's windows from its state once more."""
        self._mirrored.clear()

    def _mirror_usage(
        self, customer_id: str, state: CustomerState, hours: set[float] | None
    ) -> None:
        """Set the windowed tables to the state's own usage buckets.

        Absolute values, not increments: the state and the windows go to
        different changelogs, and a crash may keep one write and lose the
        other. The first time this worker handles a customer it rewrites all
        of that customer's buckets, which repairs a window write lost that way.
        """
        if not hours and customer_id in self._mirrored:
            return
        buckets = usage_buckets(state)
        tables = self.rt.tables
        if customer_id in self._mirrored:
            assert hours is not None
            days = {hour // DAY_S * DAY_S for hour in hours}
            hourly = {h: buckets["hours"][h] for h in hours if h in buckets["hours"]}
            daily = {d: buckets["days"][d] for d in days if d in buckets["days"]}
        else:
            hourly, daily = buckets["hours"], buckets["days"]
            self._mirrored.add(customer_id)
        for start, minutes in hourly.items():
            tables.usage_hourly.relative_to(start)[customer_id] = minutes
        for start, minutes in daily.items():
            tables.usage_daily.relative_to(start)[customer_id] = minutes

    # ----------------------------------------------------------- timers

    def _index_due(self, partition: int, customer_id: str, state: CustomerState) -> None:
        next_due = self.rt.actor.next_due(state)
        previous = self.due[partition].get(customer_id)
        if next_due == previous:
            return
        if next_due is None:
            self.due[partition].pop(customer_id, None)
        else:
            self.due[partition][customer_id] = next_due
        self.rt.timers[customer_id] = orjson.dumps([partition, next_due])

    def _rebuild_due_index(self) -> None:
        """After start or a rebalance: the pending timers of the partitions we own."""
        self.due.clear()
        for customer_id, blob in self.rt.timers.items():
            partition, next_due = orjson.loads(blob)
            if next_due is not None:
                self.due[partition][customer_id] = next_due
        self.due_index_stale = False

    # ----------------------------------------------------------- models

    def _models(self, partition: int) -> Any:
        models = self.rt.models_by_partition.get(partition)
        if models is None:
            models = self.rt.new_models()
            blob = self.rt.model_checkpoints.get(f"p{partition}")
            if blob is not None:
                models.restore(blob)
                log.info("partition %d: models restored from checkpoint", partition)
            self.rt.models_by_partition[partition] = models
            self._last_checkpoint[partition] = time.monotonic()
        return models

    def _checkpoint_models(self, partitions: dict[int, faust.EventT]) -> None:
        interval = self.rt.settings.worker.model_checkpoint_interval_s
        now = time.monotonic()
        for partition, anchor in partitions.items():
            models = self.rt.models_by_partition.get(partition)
            if models is None or now - self._last_checkpoint.get(partition, 0.0) < interval:
                continue
            set_current(anchor)
            self.rt.model_checkpoints[f"p{partition}"] = models.snapshot()
            self._last_checkpoint[partition] = now
