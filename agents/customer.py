"""The customer actor as a Faust agent: Kafka in and out, tables, ticks.

One logical actor per customer: the agent consumes the customer-keyed event
stream together with ``crm.customers`` (profiles) and ``crm.outcomes``
(delayed labels), all co-partitioned by customer_id, so one worker sees every
record of a customer in order. The logic itself is ``engine.actor``.

A batch (``stream.take_events``, about ``worker.batch_size`` events) goes
through ``CustomerAgent.handle_batch`` in named steps, in this order:

1. ``_admit``, the offset guard and the grouping, in one pass over the
   records (it runs for every record): a customer-stream record that does not follow the last one
   processed (a hole, see below) is left unprocessed; every other record is
   grouped by customer (one customer's records share a partition; a record
   of the event stream carries several events, packed by ingest, maybe of
   several customers, and each event goes to its own);
2. ``_rewind``: the partitions with a hole are sought back to it;
3. ``_place_on_clocks``: every record that carries time (events, ticks) moves
   its partition's clock, in stream order, so that the timers of step 5 see
   the time of the whole batch;
4. ``_process``: per customer, its decoded state (from memory; read from the
   table only the first time) goes with its profiles, outcomes and events
   through the plain-Python actor (``engine.actor``), which also fires the
   customer's timers due up to each event's time; an erasure request wipes
   the customer instead;
5. ``_fire_timers``: the timers due up to each touched partition's time fire,
   those of idle customers too;
6. ``_send``: the actions and late events go to the producer, whose
   acknowledgements are awaited only at the next checkpoint (a batch never
   waits for Kafka's round trip);
7. ``_hold``: the changed customers and models wait for the next checkpoint,
   and so do the batch's records: Faust's own ack after the batch does not
   let it commit them yet.

Steps 2 and 6 await Kafka, and only they: a rebalance can come only while
they wait, so after each the batch checks for one and, if one came, gives
its records back unprocessed (their new owner reads them again). From step 3
to the end of step 6 the batch is open: one cut off there
(``checkpoint_before_commit``) has half-applied states, which are dropped,
never written.

``CustomerAgent.checkpoint``, every ``worker.checkpoint_interval_s`` and
before Faust's commit on a rebalance or a clean stop, runs its own steps;
their order is the delivery guarantee, as in Quix Streams' checkpoint:

1. ``_acknowledge_actions``: wait until Kafka acknowledged every action sent
   since the last checkpoint (a rebalance meanwhile ends the checkpoint);
2. ``_publish_erasures``: the tombstones of the customers erased since, once
   their earlier actions are delivered, acknowledged too;
3. ``_write_states``: only then each changed customer's state, once (and its
   timer; a rebalance meanwhile ends the checkpoint), so state that says
   "seen" implies its actions were delivered (at least once; a replay
   repeats an action with the same ``action_id`` and never loses one). The
   writes run in the background, in slices of ``WRITE_SLICE_S`` between
   which batches run: encoding and handing over a few hundred states takes
   a tenth of a second or more, which every event waiting behind a held
   stream would pay. Each state is written as the checkpoint found it: a
   batch that takes a customer not yet written writes it first
   (``_state``), and the next checkpoint writes what is left first;
4. ``_checkpoint_models``, ``_checkpoint_clocks``: the partitions' models and
   clocks with the states (written while the checkpoint holds the stream), so
   a replay starts all three from the same records;
5. ``_write_then_release``, in the background while the stream goes on: the
   states of step 3, then, after the previous checkpoint's release, wait
   until the table writes are acknowledged too
   (``agents.faust_compat.flush_table_writes``), then release the held
   records, so Faust may commit past them, and count them as done.

A crash between checkpoints loses only work that the records still behind the
committed offset will redo. On a rebalance the uncheckpointed work and the
decoded states are dropped: the new owner replays from the committed offsets
over the states of the last checkpoint.

The customer-event topic has no holes in its offsets (no compaction, no
transactions), so a record that arrives past one means Faust dropped records
before they reached the actor (it has, see ``agents.faust_compat``). The actor
counts it in ``offset_gaps``, logs it, leaves the records past the hole
unprocessed and unacknowledged, and seeks the partition back to the hole; and
Faust is told never to commit across a hole in that topic.

Faust writes a table key to the changelog partition of the *current event*,
so each customer's state is read and written with one of its own records set
as the current event.

Idle keys: after each batch, the timers due up to the partition's time
(``engine.watermark.PartitionClock``: the watermarks that ingest stamps on the
records it forwards, and on the tick records it sends to partitions it has
nothing else for) fire. The actor never moves time with the wall clock
itself: ingest does, once it knows it has read everything
(``engine.watermark.IngestWatermark``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import orjson
from faust.types import TP

from agents.faust_compat import (
    bounded_flush,
    checkpoint_before_wait_empty,
    committed_offset,
    flush_table_writes,
    never_fill_gaps,
    seek,
    set_current_event,
    unacknowledged,
    unprocessed,
)
from agents.prometheus import STAGES
from engine.actor import ActorOutput
from engine.erasure import ERASURE_HEADER, ErasureReport, decode_request, encode_report
from engine.events import EVENTS_PER_RECORD, published_at, unpack_events
from engine.loop_lag import Pauses
from engine.watermark import TICK_KEY, ClockCheckpoints, PartitionClock, time_headers
from tables.state import (
    CustomerState,
    apply_profile,
    decode_state,
    encode_state,
    new_customer_state,
)

log = logging.getLogger(__name__)

#: The longest a checkpoint's writer runs before it lets a batch in.
WRITE_SLICE_S = 0.005


@dataclass
class ActorStats:
    """Counters of the actor. ``events``, ``duplicates`` and ``late`` count
    records whose effects a checkpoint made durable: a record replayed after a
    rebalance or crash is counted once."""

    events: int = 0
    profiles: int = 0
    outcomes: int = 0
    actions: int = 0
    late: int = 0
    duplicates: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    checkpoints: int = 0
    #: decoded states kept in memory between batches
    cached_states: int = 0
    timer_firings: int = 0
    #: records of the customer-event topic skipped before they reached the actor
    offset_gaps: int = 0
    #: events, duplicates and late events processed (their actions sent) that no
    #: checkpoint has made durable yet; a rebalance drops them and they come again
    in_flight: int = 0
    #: customers erased (GDPR), and events of erased customers dropped since
    erasures: int = 0
    erased_events_dropped: int = 0
    #: partitions taken away (a rebalance: a replica came, went or stalled)
    rebalances: int = 0
    #: commits the group refused or the broker did not answer (committed later)
    commit_failures: int = 0
    last_batch_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(slots=True)
class _Batch:
    """One batch on its way through the steps of ``CustomerAgent.handle_batch``."""

    #: records admitted past the offset guard, in stream order (held until a checkpoint)
    held: list[faust.EventT] = field(default_factory=list)
    #: customer -> its records in order, each with the event it carries
    #: (a packed record carries several, maybe of several customers) or None
    groups: dict[str, list[tuple[faust.EventT, dict[str, Any] | None]]] = field(
        default_factory=dict
    )
    #: partition -> its latest tick record
    ticked: dict[int, faust.EventT] = field(default_factory=dict)
    #: records that carry time, in stream order, with their events (a tick: none)
    timed: list[tuple[faust.EventT, list[dict[str, Any]]]] = field(default_factory=list)
    #: packed records of events, with their events
    packed: list[tuple[faust.EventT, list[dict[str, Any]]]] = field(default_factory=list)
    #: customers with an erasure request or a tombstone among their records
    erasing: set[str] = field(default_factory=set)
    #: partition -> (offset to fetch again from, whether the hole is new)
    rewinds: dict[int, tuple[int, bool]] = field(default_factory=dict)
    #: when the batch began (wall clock), its records taken from Faust's stream
    began_at: float = 0.0
    #: when the batch was processed (wall clock): the actions' emission time
    emitted_at: float = 0.0
    #: customer -> (a record of its partition, its state), for every customer processed
    written: dict[str, tuple[faust.EventT, CustomerState]] = field(default_factory=dict)
    #: partitions whose models learned in this batch: a record of each
    learned: dict[int, faust.EventT] = field(default_factory=dict)
    #: the actions, late events and counts of the events and timers
    out: ActorOutput = field(default_factory=ActorOutput)
    #: publication times of the records that carried the events actions answer
    triggered: list[float] = field(default_factory=list)


def _positions(
    packed: list[tuple[faust.EventT, list[dict[str, Any]]]],
) -> dict[tuple[str, str], dict[str, Any]]:
    """Where each event of a batch was read (the record, and its place in it),
    by (device_id, id): the ``source`` of a late-event envelope."""
    return {
        (event["device_id"], event["id"]): {
            "topic": record.message.topic,
            "partition": record.message.partition,
            "offset": record.message.offset,
            "index": index,
        }
        for record, events in packed
        for index, event in enumerate(events)
    }


def records_per_batch(events_per_batch: int) -> int:
    """Records the actor takes per batch so a batch holds about
    ``events_per_batch`` events when ingest's records come full.

    >>> records_per_batch(500)
    7
    """
    return max(1, events_per_batch // EVENTS_PER_RECORD)


class CustomerAgent:
    """Owns the decoded states, the timer index and the per-partition models of a worker."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime  # agents.app.Runtime
        self.stats = ActorStats()
        #: each partition's time for its idle keys, as of the records processed
        #: (checkpointed with the states: a replay starts from the time it had)
        self.clocks: dict[int, PartitionClock] = {}
        #: partitions whose time moved since the last checkpoint: a record of each
        self._moved_clocks: dict[int, faust.EventT] = {}
        #: each partition's latest clock checkpoints, as written to its table
        self._clock_checkpoints: dict[int, ClockCheckpoints] = {}
        #: partition -> customer_id -> earliest pending timer.
        self.due: dict[int, dict[str, float]] = defaultdict(dict)
        self.due_index_stale = True
        #: customer -> next timer as last written to the timers table
        self._written_due: dict[str, float | None] = {}
        #: (topic, partition) -> offset expected next from the customer-event topic
        self._next_offset: dict[tuple[str, int], int] = {}
        #: partitions sought back after a hole, until its first record comes again
        self._rewinding: set[tuple[str, int]] = set()
        #: decoded states, least recently used first; the table holds the checkpointed ones
        self._states: OrderedDict[str, CustomerState] = OrderedDict()
        #: changed since the last checkpoint: customer -> a record of its partition
        #: (Faust writes a table key to the changelog partition of the current event)
        self._dirty: dict[str, faust.EventT] = {}
        #: of the latest checkpoint, the customers whose states its writer has
        #: not written yet (their states are as the checkpoint found them)
        self._unwritten: dict[str, faust.EventT] = {}
        #: partitions whose models moved since the last checkpoint: a record of each
        self._dirty_partitions: dict[int, faust.EventT] = {}
        #: records processed since the last checkpoint, not yet released to Faust
        self._held: list[faust.EventT] = []
        #: acknowledgements of actions sent since the last checkpoint
        self._unacknowledged: list[asyncio.Future[Any]] = []
        #: the latest checkpoint's release (waits for its writes, then for the one before)
        self._releasing: asyncio.Future[None] | None = None
        self._checkpointed_at = time.monotonic()
        #: events, duplicates and late events processed since the last checkpoint
        self._uncounted = ActorOutput()
        #: bumped on every rebalance: work begun before it is never checkpointed
        self._generation = 0
        #: a batch and a checkpoint never interleave (both await Kafka midway)
        self._lock = asyncio.Lock()
        #: true while a batch changes states; still true if it was cancelled midway
        self._batch_open = False
        #: erased since the last checkpoint: (customer, partition, report), to publish
        self._erasures: list[tuple[str, int, ErasureReport]] = []
        #: customers erased by this process, whose events in flight are dropped
        self._erased: set[str] = set()

    # ----------------------------------------------------------- the stream

    async def run(self, stream: faust.StreamT) -> None:
        settings = self.rt.settings.worker
        consumer = self.rt.app.consumer
        never_fill_gaps(consumer, {self.rt.settings.kafka.customer_events_topic})
        bounded_flush(self.rt.app.producer)
        checkpoint_before_wait_empty(consumer, self.checkpoint_before_commit)
        # take_events is Faust's Stream's, not yet in its StreamT interface
        async for batch in stream.take_events(  # type: ignore[attr-defined]
            records_per_batch(settings.batch_size), within=settings.batch_within_s
        ):
            try:
                async with self._lock:
                    await self.handle_batch(batch)
                    if self._checkpoint_due():
                        await self.checkpoint()
            except Exception:
                log.exception("customer actor failed on a batch of %d records", len(batch))
                raise

    def _checkpoint_due(self) -> bool:
        interval = self.rt.settings.worker.checkpoint_interval_s
        return bool(self._held) and time.monotonic() - self._checkpointed_at >= interval

    async def checkpoint_before_commit(self, lock_timeout_s: float = 5.0) -> None:
        """Before Faust's commit on a rebalance or a clean stop: checkpoint now,
        unless a batch was cut off midway (then its half-applied states must
        never be written: everything since the last checkpoint is dropped and
        comes again) or is stuck (it may wait on the rebalance itself)."""
        try:
            await asyncio.wait_for(self._lock.acquire(), lock_timeout_s)
        except TimeoutError:
            log.warning("a batch is still running; its records will be processed again")
            self.drop_uncheckpointed()
            return
        try:
            if self._batch_open:
                self.drop_uncheckpointed()
            elif self._held:
                await self.checkpoint()
            await self.wait_released()
            if self.rt.app.should_stop:
                # Records still in the stream's batch buffer never reach the
                # actor once the worker stops, and Faust would wait for them
                # until killed: they were not processed, so they come again.
                consumer = self.rt.app.consumer
                for message in unacknowledged(consumer):
                    unprocessed(consumer, message)
        finally:
            self._lock.release()

    async def checkpoint_if_due(self) -> None:
        """From a timer: the last batch before a quiet spell is made durable too."""
        async with self._lock:
            if self._checkpoint_due():
                await self.checkpoint()

    async def handle_batch(self, records: Iterable[faust.EventT]) -> None:
        """One batch, in the steps and the order of the module's docstring.

        The only awaits are the rewind and the send; after each, a rebalance
        that came meanwhile gives the batch's records back unprocessed."""
        generation = self._generation
        began_at = time.time()
        if self.due_index_stale:
            self._rebuild_due_index()
        batch = self._admit(records)
        batch.began_at = began_at
        await self._rewind(batch.rewinds)
        if generation != self._generation:
            # Partitions were revoked meanwhile: these records come again.
            self._give_back(batch.held)
            return
        batch.emitted_at = time.time()
        self._batch_open = True
        self._place_on_clocks(batch.timed)
        self._process(batch)
        self._fire_timers(batch)
        await self._send(batch.out, batch.packed)
        self._batch_open = False
        if generation != self._generation:
            self._give_back(batch.held)
            return
        self._observe_latencies(batch)
        self._hold(batch)

    def _admit(self, records: Iterable[faust.EventT]) -> _Batch:
        """Step 1, in one pass over the records: the offset guard (a record of
        the customer stream past a hole is left unprocessed and its partition
        noted for ``_rewind``), then each record admitted is grouped by
        customer; a packed record's events each go to their own customer."""
        k = self.rt.settings.kafka
        batch = _Batch()
        groups, ticked, timed = batch.groups, batch.ticked, batch.timed
        held, packed, erasing, rewinds = batch.held, batch.packed, batch.erasing, batch.rewinds
        for record in records:
            message = record.message
            from_stream = message.topic == k.customer_events_topic
            if from_stream and not self._in_sequence(message, rewinds):
                continue
            held.append(record)
            key = record.key
            if key == TICK_KEY:
                ticked[message.partition] = record
                timed.append((record, []))
            elif from_stream:
                events = unpack_events(record.value)
                packed.append((record, events))
                timed.append((record, events))
                for event in events:
                    groups.setdefault(event["customer_id"], []).append((record, event))
            elif key is None:
                log.warning(
                    "%s: record without key at offset %s ignored", message.topic, message.offset
                )
            else:
                customer_id = key.decode()
                groups.setdefault(customer_id, []).append((record, None))
                if message.topic == k.erasure_topic or record.value is None:
                    erasing.add(customer_id)  # an erasure, or tombstones: see _erasure_in
        return batch

    async def _rewind(self, rewinds: dict[int, tuple[int, bool]]) -> None:
        """Step 2: seek each partition with a hole back to it (awaits the Kafka client)."""
        topic = self.rt.settings.kafka.customer_events_topic
        for partition, (offset, new_hole) in rewinds.items():
            tp = TP(topic, partition)
            if new_hole:
                await self._seek_back(tp, offset)
            else:
                # Records fetched before the seek still arrive, and Faust's
                # read offset follows them past the seek: seek again.
                await seek(self.rt.app.consumer, tp, offset)

    def _place_on_clocks(self, timed: list[tuple[faust.EventT, list[dict[str, Any]]]]) -> None:
        """Step 3: every record that carries time moves its partition's clock,
        in stream order (each ingest instance ticks on its own)."""
        for record, events in timed:
            message = record.message
            # Consumed records carry aiokafka's (name, value) pairs; Faust's
            # Message type admits a mapping too, for the records it builds.
            headers = cast("list[tuple[str, bytes]]", message.headers)
            source, watermark, sent_at = time_headers(headers)
            if watermark is None and events:
                # A record not written by ingest: its latest event time stands in.
                watermark = max(event["ts"] for event in events)
            if watermark is not None:
                self._clock(message.partition, record).heard(source, watermark, sent_at)

    def _process(self, batch: _Batch) -> None:
        """Step 4: each customer's records, in order, through the plain-Python
        actor (``engine.actor``), on its decoded state; an erasure request
        wipes the customer instead."""
        k = self.rt.settings.kafka
        emitted_at, erasing = batch.emitted_at, batch.erasing
        written, learned, out, triggered = batch.written, batch.learned, batch.out, batch.triggered
        for customer_id, items in batch.groups.items():
            anchor = items[-1][0]
            if (customer_id in erasing or customer_id in self._erased) and (
                self._erasure_in(customer_id, items, emitted_at)
                or self._forgotten(customer_id, items)
            ):
                continue
            state = self._state(customer_id, anchor)
            events = []
            for record, carried in items:
                topic = record.message.topic
                if carried is not None:
                    events.append(carried)
                elif topic == k.customers_topic:
                    apply_profile(state, orjson.loads(record.value) if record.value else None)
                    self.stats.profiles += 1
                elif topic == k.outcomes_topic:
                    outcome = orjson.loads(record.value)
                    self._models(anchor.message.partition).observe_outcome(outcome)
                    learned[anchor.message.partition] = anchor
                    self.stats.outcomes += 1
            if events:
                models = self._models(anchor.message.partition)
                learned[anchor.message.partition] = anchor
                handled = self.rt.actor.handle_events(state, events, models, emitted_at)
                if handled.actions:
                    triggered += trigger_publications(items, handled.actions)
                out.extend(handled)
            written[customer_id] = (anchor, state)

    def _fire_timers(self, batch: _Batch) -> None:
        """Step 5: time moves for idle keys. The timers due up to the time of
        each partition the batch touched fire, after its events (which fired
        their own customers' timers up to each event's time)."""
        written = batch.written
        partitions = {anchor.message.partition: anchor for anchor, _ in written.values()}
        partitions.update(batch.ticked)
        for partition, anchor in partitions.items():
            now = self._clock(partition, anchor).now()
            if now is not None:
                batch.out.extend(
                    self._advance_partition(partition, anchor, now, written, batch.emitted_at)
                )

    def _hold(self, batch: _Batch) -> None:
        """Step 7: what the batch changed waits for the next checkpoint, and
        so do its records: Faust acks each record after the batch, and the
        extra reference keeps it uncommitted until the checkpoint that makes
        its effects durable."""
        for customer_id, (anchor, state) in batch.written.items():
            self._dirty[customer_id] = anchor
            self._index_due(anchor.message.partition, customer_id, state)
        self._dirty_partitions.update(batch.learned)
        held = batch.held
        for record in held:
            record.message.incref()
        self._held += held
        out = batch.out
        self.stats.batches += 1
        self.stats.last_batch_at = batch.emitted_at
        self._uncounted.processed += out.processed
        self._uncounted.duplicates += out.duplicates
        self._uncounted.late += out.late
        self.stats.in_flight += out.processed + out.duplicates + len(out.late)
        for reason, count in out.suppressed.items():
            self.stats.suppressed[reason] = self.stats.suppressed.get(reason, 0) + count
        self.rt.summaries.mark(batch.written)

    # ----------------------------------------------------------- erasure

    def _erasure_in(
        self,
        customer_id: str,
        items: list[tuple[faust.EventT, dict[str, Any] | None]],
        erased_at: float,
    ) -> bool:
        """Erase the customer if ``items`` hold an erasure request (its other
        records of the batch go with it); True if it did."""
        topic = self.rt.settings.kafka.erasure_topic
        requests = [record for record, _ in items if record.message.topic == topic]
        if not requests:
            return False
        try:
            request = decode_request(requests[-1].value)
        except ValueError as exc:
            log.error("erasure request for a customer refused: %s", exc)
            return False
        anchor = requests[-1]
        partition = anchor.message.partition
        set_current_event(anchor)
        had_state = customer_id in self._states or self.rt.customers.get(customer_id) is not None
        state = self._state(customer_id, anchor)
        devices = sorted(state.devices)
        for table in (self.rt.customers, self.rt.timers):
            if table.get(customer_id) is not None:
                del table[customer_id]
        for kept in (self._states, self._dirty, self._unwritten, self._written_due):
            kept.pop(customer_id, None)
        self.due[partition].pop(customer_id, None)
        self.rt.summaries.pending.pop(customer_id, None)
        action_ids = [action.action_id for action in state.recent_actions]
        forgotten = self._models(partition).forget({customer_id, *devices, *action_ids})
        self._dirty_partitions[partition] = anchor  # the model snapshot without them
        self._erased.add(customer_id)
        report = ErasureReport(
            request_id=request.request_id,
            requested_at=request.requested_at,
            erased_at=erased_at,
            had_state=had_state,
            device_ids=devices,
            pending_predictions=forgotten,
            events_dropped=sum(1 for _, event in items if event is not None),
        )
        self._erasures.append((customer_id, partition, report))
        self.stats.erasures += 1
        log.info("erasure %s: customer state wiped", request.request_id)
        return True

    def _forgotten(
        self, customer_id: str, items: list[tuple[faust.EventT, dict[str, Any] | None]]
    ) -> bool:
        """Records an erased customer must not bring back: its events still
        in flight, and the tombstones the erasure wrote. A new profile brings
        the customer back (signed up again)."""
        profiles = self.rt.settings.kafka.customers_topic
        returning = any(
            record.message.topic == profiles and record.value is not None for record, _ in items
        )
        if customer_id in self._erased and not returning:
            self.stats.erased_events_dropped += sum(1 for _, event in items if event is not None)
            return True
        self._erased.discard(customer_id)
        if customer_id in self._states or returning:
            return False
        if any(event is not None or record.value is not None for record, event in items):
            return False
        set_current_event(items[-1][0])
        return self.rt.customers.get(customer_id) is None  # tombstones of no one

    async def _publish_erasures(self) -> None:
        """Checkpoint step 2: tombstones of the customers erased since the last
        checkpoint, after their earlier actions were acknowledged: registry
        entries, profile and customer-360 record, the last with the report the
        sink acts on. Acknowledged before the requests are released: a crash
        replays the request."""
        erasures, self._erasures = self._erasures, []
        if not erasures:
            return
        k = self.rt.settings.kafka
        producer = self.rt.app.producer
        sent = []
        for customer_id, partition, report in erasures:
            key = customer_id.encode()
            for device_id in report.device_ids:
                sent.append(await producer.send(k.registry_topic, device_id.encode(), None,
                                                None, None, None))  # fmt: skip
            sent.append(await producer.send(k.customers_topic, key, None, partition, None, None))
            sent.append(
                await producer.send(
                    k.customer360_topic,
                    key,
                    None,
                    None,
                    None,
                    [(ERASURE_HEADER, encode_report(report))],
                )
            )
        await asyncio.gather(*sent)

    def _observe_latencies(self, batch: _Batch) -> None:
        sent_at = time.time()
        latencies = self.rt.latencies
        ingest, transit, actor = (latencies.stage.labels(stage) for stage in STAGES)
        for record, _events in batch.packed:
            headers = cast("list[tuple[str, bytes]]", record.message.headers)
            published = published_at(headers)
            if published is None:
                continue
            latencies.event.observe(max(0.0, sent_at - published))
            forwarded = time_headers(headers).sent_at
            if forwarded is not None:
                ingest.observe(max(0.0, forwarded - published))
                transit.observe(max(0.0, batch.began_at - forwarded))
                actor.observe(max(0.0, sent_at - batch.began_at))
        for published in batch.triggered:
            latencies.action.observe(max(0.0, sent_at - published))

    async def checkpoint(self) -> None:
        """Make everything processed so far durable, in the steps and the
        order of the module's docstring, the order that keeps at-least-once:
        actions acknowledged, then state written and acknowledged, then the
        records released for Faust to commit.

        The stream goes on while the states are written: the writes, their
        acknowledgement and the release run in the background, one
        checkpoint after the other (``wait_released``). What a checkpoint
        writes is each state as it was here, when its actions were
        acknowledged: a batch that touches a customer whose state is not yet
        written writes it first (``_state``)."""
        self._raise_release_failure()
        generation = self._generation
        timed = self.rt.latencies.checkpoint
        began = time.monotonic()
        await self._acknowledge_actions()
        if generation != self._generation:
            return  # revoked while waiting: the new owner replays these records
        await self._publish_erasures()
        acknowledged = time.monotonic()
        timed.labels("acknowledge").observe(acknowledged - began)
        # The previous checkpoint's writer may still be at it: what it has
        # left goes now, so a customer's writes keep the checkpoints' order.
        for customer_id in list(self._unwritten):
            self._write_state(customer_id)
        self._unwritten, self._dirty = self._dirty, {}
        self._trim_states()  # under the lock: no batch holds a state it changed
        dirty_partitions, self._dirty_partitions = self._dirty_partitions, {}
        held, self._held = self._held, []
        self._checkpoint_models(dirty_partitions)
        moved_clocks, self._moved_clocks = self._moved_clocks, {}
        self._checkpoint_clocks(moved_clocks)
        counted, self._uncounted = self._uncounted, ActorOutput()
        self._releasing = asyncio.ensure_future(
            self._write_then_release(self._releasing, self._unwritten, held, counted, generation)
        )
        self._checkpointed_at = time.monotonic()
        timed.labels("write").observe(self._checkpointed_at - acknowledged)

    async def _acknowledge_actions(self) -> None:
        """Checkpoint step 1: until Kafka acknowledged every action and late
        event sent since the last checkpoint."""
        unacknowledged, self._unacknowledged = self._unacknowledged, []
        if unacknowledged:
            await asyncio.gather(*unacknowledged)

    async def _write_then_release(
        self,
        previous: asyncio.Future[None] | None,
        unwritten: dict[str, faust.EventT],
        held: list[faust.EventT],
        counted: ActorOutput,
        generation: int,
    ) -> None:
        """Checkpoint steps 3 and 5, in the background: each changed
        customer's state (``_write_states``); then, after the previous
        checkpoint's release, once this one's table writes are acknowledged,
        release its records to Faust's commit and count them as durable."""
        written = await self._write_states(unwritten, generation)
        if previous is not None:
            await previous
        if not written:
            self._give_back(held)  # revoked meanwhile: the new owner replays them
            return
        await flush_table_writes(self.rt.app.producer)
        if generation != self._generation:
            self._give_back(held)
            return
        for record in held:
            record.ack()
        self._count_durable(counted)

    async def _write_states(self, unwritten: dict[str, faust.EventT], generation: int) -> bool:
        """Checkpoint step 3: each changed customer's state once (``unwritten``:
        this checkpoint's, which ``_write_state`` empties), and its next timer,
        in slices between which batches run (and write the states they touch
        first). False if the partitions were revoked meanwhile."""
        pauses = Pauses(WRITE_SLICE_S)
        while unwritten:
            if await pauses.maybe():
                if generation != self._generation:
                    return False
                if not unwritten:
                    break  # batches and the next checkpoint wrote the rest meanwhile
            self._write_state(next(iter(unwritten)))
        return generation == self._generation

    def _write_state(self, customer_id: str) -> None:
        """Write a customer of the latest checkpoint whose state is not yet
        written, and its next timer, with a record of its partition current."""
        anchor = self._unwritten.pop(customer_id)
        set_current_event(anchor)
        self.rt.tables.customers[customer_id] = encode_state(self._states[customer_id])
        self._write_due(anchor.message.partition, customer_id)

    def _count_durable(self, counted: ActorOutput) -> None:
        self.stats.in_flight -= counted.processed + counted.duplicates + len(counted.late)
        self.stats.events += counted.processed
        self.stats.duplicates += counted.duplicates
        self.stats.late += len(counted.late)
        self.stats.checkpoints += 1

    async def wait_released(self) -> None:
        """Until every checkpoint taken so far has released its records."""
        if self._releasing is not None:
            await self._releasing
        self._raise_release_failure()

    def _raise_release_failure(self) -> None:
        """A checkpoint whose writes failed stops the actor, as a failed batch does."""
        releasing = self._releasing
        if releasing is not None and releasing.done() and releasing.exception() is not None:
            raise RuntimeError("a checkpoint's table writes failed") from releasing.exception()

    def drop_uncheckpointed(self) -> None:
        """On a rebalance: forget the work since the last checkpoint and every
        decoded state; the records behind it were never released, so they come again."""
        self._generation += 1
        self._states.clear()
        # Time too goes back to the checkpoint: the replayed records move it
        # again as they did, and no timer fires ahead of its events.
        self.clocks.clear()
        self._clock_checkpoints.clear()
        self._moved_clocks.clear()
        self._dirty.clear()
        self._unwritten.clear()  # its writer stops and gives its records back
        self._dirty_partitions.clear()
        self._give_back(self._held)
        self._held = []
        self._unacknowledged.clear()
        self._uncounted = ActorOutput()
        self._checkpointed_at = time.monotonic()
        self._batch_open = False
        self.stats.cached_states = 0
        self.stats.in_flight = 0

    def _give_back(self, records: Iterable[faust.EventT]) -> None:
        """Records whose work is dropped: never acknowledged, so Faust can
        neither commit past them nor wait for them; they are fetched again."""
        consumer = self.rt.app.consumer
        for record in records:
            unprocessed(consumer, record.message)

    def _state(self, customer_id: str, anchor: faust.EventT) -> CustomerState:
        """The customer's decoded state, for a batch to change: written first
        if the latest checkpoint has not written it yet."""
        if customer_id in self._unwritten:
            self._write_state(customer_id)
        state = self._states.get(customer_id)
        if state is None:
            set_current_event(anchor)
            blob = self.rt.customers.get(customer_id)
            state = decode_state(blob) if blob is not None else new_customer_state(customer_id)
            self._states[customer_id] = state
            self.stats.cached_states = len(self._states)
        else:
            self._states.move_to_end(customer_id)
        return state

    def _trim_states(self) -> None:
        excess = len(self._states) - self.rt.settings.worker.state_cache_size
        for customer_id in list(itertools.islice(self._states, max(0, excess))):
            if customer_id not in self._dirty and customer_id not in self._unwritten:
                del self._states[customer_id]
        self.stats.cached_states = len(self._states)

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
                state = self._state(customer_id, anchor)
                written[customer_id] = (anchor, state)
            fired = self.rt.actor.advance(state, now, emitted_at)
            self.stats.timer_firings += len(fired.actions)
            out.extend(fired)
            due.pop(customer_id, None)
        return out

    async def _send(
        self, out: ActorOutput, packed: list[tuple[faust.EventT, list[dict[str, Any]]]]
    ) -> None:
        """Step 6: hand the actions and late events (with where ``packed`` read
        them) to the producer; their acknowledgements are awaited at the next
        checkpoint, so a batch never waits for Kafka's round trip."""
        producer = self.rt.app.producer
        k = self.rt.settings.kafka
        pending = self._unacknowledged
        for topic, action in out.actions:
            pending.append(
                await producer.send(
                    topic,
                    action["customer_id"].encode(),
                    orjson.dumps(action),
                    partition=None,
                    timestamp=None,
                    headers=None,
                )
            )
        positions = _positions(packed) if out.late else {}
        for event, reason in out.late:
            encoded = orjson.dumps(event)
            envelope = {
                "reason": reason,
                "reason_code": "late",
                "source": positions.get((event["device_id"], event["id"])),
                "received_at": time.time(),
                "original_b64": base64.b64encode(encoded).decode("ascii"),
                "event": event,
            }
            pending.append(
                await producer.send(
                    k.late_topic,
                    event["device_id"].encode(),
                    orjson.dumps(envelope),
                    partition=None,
                    timestamp=None,
                    headers=None,
                )
            )
        self.stats.actions += len(out.actions)
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
            expected = committed_offset(self.rt.app.consumer, message.tp)
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
        await seek(consumer, tp, offset)

    def next_offset(self, tp: TP) -> int | None:
        """The offset of ``tp`` the actor processes next (None: not known yet)."""
        expected = self._next_offset.get((tp.topic, tp.partition))
        return expected if expected is not None else committed_offset(self.rt.app.consumer, tp)

    def forget_offsets(self) -> None:
        """After a rebalance the stream restarts at the committed offsets."""
        self._next_offset.clear()
        self._rewinding.clear()

    # ----------------------------------------------------------- timers

    def _index_due(self, partition: int, customer_id: str, state: CustomerState) -> None:
        next_due = self.rt.actor.next_due(state)
        if next_due is None:
            self.due[partition].pop(customer_id, None)
        else:
            self.due[partition][customer_id] = next_due

    def _write_due(self, partition: int, customer_id: str) -> None:
        """At a checkpoint: persist the customer's next timer if it changed."""
        next_due = self.due[partition].get(customer_id)
        if self._written_due.get(customer_id) == next_due:
            return
        self.rt.timers[customer_id] = orjson.dumps([partition, next_due])
        self._written_due[customer_id] = next_due

    def _rebuild_due_index(self) -> None:
        """After start or a rebalance: the pending timers of the partitions we own."""
        self.due.clear()
        self._written_due.clear()
        for customer_id, blob in self.rt.timers.items():
            partition, next_due = orjson.loads(blob)
            self._written_due[customer_id] = next_due
            if next_due is not None:
                self.due[partition][customer_id] = next_due
        self.due_index_stale = False

    # ----------------------------------------------------------- time

    def _clock(self, partition: int, record: faust.EventT) -> PartitionClock:
        """The partition's clock, as the last checkpoint left it if this
        process has none (after a start or a rebalance); ``record`` (of that
        partition) marks it for the next checkpoint."""
        clock = self.clocks.get(partition)
        if clock is None:
            checkpoints = self._clock_checkpoints_of(partition)
            # Nothing is committed before this process's first checkpoint of
            # the partition: the committed offset is where the replay began.
            tp = TP(self.rt.settings.kafka.customer_events_topic, partition)
            clock = self.clocks[partition] = checkpoints.for_replay(
                committed_offset(self.rt.app.consumer, tp)
            )
        self._moved_clocks[partition] = record
        return clock

    def _clock_checkpoints_of(self, partition: int) -> ClockCheckpoints:
        checkpoints = self._clock_checkpoints.get(partition)
        if checkpoints is None:
            blob = self.rt.model_checkpoints.get(f"clock-p{partition}")
            checkpoints = ClockCheckpoints.from_plain(orjson.loads(blob) if blob else {})
            self._clock_checkpoints[partition] = checkpoints
        return checkpoints

    def _checkpoint_clocks(self, partitions: dict[int, faust.EventT]) -> None:
        """Checkpoint step 4 too: each moved partition clock, at the offset the
        actor processes next there (a replay from that offset starts from it)."""
        if not partitions:
            return
        topic = self.rt.settings.kafka.customer_events_topic
        for partition, anchor in partitions.items():
            clock = self.clocks.get(partition)
            position = self.next_offset(TP(topic, partition))
            if clock is None or position is None:
                continue
            checkpoints = self._clock_checkpoints_of(partition)
            checkpoints.add(position, clock.snapshot())
            set_current_event(anchor)
            self.rt.model_checkpoints[f"clock-p{partition}"] = orjson.dumps(checkpoints.to_plain())

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
        return models

    def _checkpoint_models(self, partitions: dict[int, faust.EventT]) -> None:
        """Checkpoint step 4: the models of every partition they learned in
        since the last checkpoint, with the states: a replay after a crash
        starts both from the same events, so the models learn each event once
        and in the order an uninterrupted worker did."""
        for partition, anchor in partitions.items():
            models = self.rt.models_by_partition.get(partition)
            if models is None:
                continue
            set_current_event(anchor)
            self.rt.model_checkpoints[f"p{partition}"] = models.snapshot()


def trigger_publications(
    items: list[tuple[faust.EventT, dict[str, Any] | None]],
    actions: list[tuple[str, dict[str, Any]]],
) -> list[float]:
    """For each action an event of ``items`` triggered (the last event of its
    evidence), when the record that carried that event was published."""
    records = {event["id"]: record for record, event in items if event is not None}
    published = []
    for _topic, action in actions:
        event_ids = (action.get("evidence") or {}).get("event_ids") or ()
        record = records.get(event_ids[-1]) if event_ids else None
        at = published_at(record.message.headers) if record is not None else None
        if at is not None:
            published.append(at)
    return published
