"""Every reach of the worker into Faust's internals, in one place, checked
against the releases it was written for.

Faust (faust-streaming) runs the actor, and at-least-once processing needs
more of it than its public interface gives: repairs of its flaws, hooks into
its commit, and readings of its consumer's bookkeeping. Each is a small named
function or class here, and no other module touches a private attribute of
Faust, or of the aiokafka client Faust drives. (mode, Faust's service
library, is used only through its public interface.)

Repairs
-------

They were found by ``tests/integration/test_actor_state.py`` (a worker killed
mid-stream and restarted must end with the state of a worker that never
stopped), which failed about one run in ten before them.

1. **Recovery resumes the stream partitions before it seeks them**
   (faust-streaming/faust#596). After a rebalance, ``Recovery`` resumes the
   assigned stream partitions, then awaits ``perform_seek()``, then resumes
   flow control, which clears every stream queue. Records fetched while the
   seek is awaited reach the queues and move the consumer's read offsets;
   the clear then drops the ones not yet taken, and the fetcher skips them
   when they come again. The actor never sees them, and Faust's gap
   bookkeeping lets the commit pass over them. ``SeekFirstRecovery`` seeks
   while the partitions are still paused, then resumes partitions and flow
   with no ``await`` in between, so nothing can be fetched before the clear.

2. **``Producer.flush()`` may return with table writes still buffered.**
   Table changelog records wait in Faust's ``ProducerBuffer``; its ``flush``
   gives up after 0.1 s without progress (a busy event loop is enough) and
   cannot see the record its sender task holds. Faust commits right after that
   flush, so a crash can keep a committed offset whose state change never
   reached the changelog. ``flush_table_writes`` waits until every record
   buffered so far has been handed to the Kafka client and acknowledged.

3. **A hole in fetched offsets is committed over.** Faust takes a jump in a
   partition's offsets for records that are not there (compaction,
   transaction markers) and lets the commit pass it, the record that revealed
   the hole included. Where Faust itself dropped the records, that commits
   them unprocessed. ``never_fill_gaps`` turns this off for topics that have
   no holes; the actor then finds the hole itself, leaves the records past it
   ``unprocessed`` and seeks back (``agents.customer``).

4. **A seek runs in the caller's thread.** Faust's aiokafka consumer lives in
   a thread of its own, but ``Consumer.seek`` changes its fetcher from the
   calling thread, racing the fetcher's own walk over its fetched records
   (seen as ``KeyError`` in ``Fetcher.fetched_records``, which crashes the
   worker). ``seek`` does it inside the consumer's thread.

5. **A refused commit crashes the worker.** Faust's aiokafka driver calls
   ``crash`` on any commit error but one ("already rebalanced"): the group
   rebalancing under a slow worker, the coordinator moving, the broker
   restarting. Each takes the whole worker down, though nothing is lost: the
   offsets not committed are committed with the next commit, or the records
   come again to whoever owns them after the rebalance (at least once).
   ``survive_commit_failures`` counts the refusal, logs it, and goes on.

6. **A drained partition waits up to 1.5 s for its next fetch.** Faust
   creates its worker consumer with ``fetch_max_wait_ms=1500``, fixed.
   aiokafka's fetcher has one fetch in flight per broker, and it lists only
   the partitions with nothing buffered: when the busy partitions still hold
   records as a fetch goes out, that fetch lists only idle ones (profiles,
   outcomes, erasures, standby changelogs), and the broker holds it for the
   whole wait. The busy partitions, drained meanwhile, cannot be fetched
   until it returns: the actor stalls with records waiting on the broker
   and the CPU idle (seen as 1-2 s stalls in the bench's latency phases).
   ``bound_fetch_wait`` sets the wait of the consumers Faust creates.

Hooks
-----

``checkpoint_before_wait_empty`` lets the actor make its work durable before
Faust's last commit on a rebalance or a clean stop (Faust waits for every
record to be acked there, and at a stop gives up at once);
``allow_table_write_bursts`` keeps a checkpoint's table writes from stopping
the stream (Faust's conductor stops delivering records while more than 100
table writes wait in its producer buffer, which one checkpoint of a few
hundred customers exceeds); ``bounded_flush`` makes the flush before each of
Faust's commits wait for the table writes made so far, not for an empty
buffer.

Readings and small writes
-------------------------

``committed_offset`` (where a partition's stream resumed), ``unacknowledged``
(the records Faust waits for before it commits), ``unprocessed`` (take a
record out of them: it comes again), ``seek`` (in the Kafka client's
thread), ``set_current_event`` (the record whose partition a table write goes
to) and ``tables_recovered`` (for ``/ready``).

Versions
--------

Everything here is written against ``FAUST_VERSION`` and ``AIOKAFKA_VERSION``,
the releases pyproject.toml pins (a unit test keeps the two in step);
aiokafka too, since the repairs seek, commit and flush Faust's aiokafka
clients directly, and the seek repair rests on how aiokafka's fetcher works.
Importing this module with another release installed raises
``UnsupportedVersion``, naming the package, both versions and this file: a
worker then refuses to start, and the tests fail at once. A warning was the
alternative, and the wrong one: a patch that no longer fits fails silently
(``consumer._add_gap = ...`` on a Faust that renamed the method patches
nothing, and Faust commits across holes again), and the loss would show
only as actions missing, long after a start-up line nobody read. An upgrade
re-reads this module against the new release, updates the two constants,
then runs ``tests/unit/actor/test_faust_compat.py``, whose tests pin each
flaw on Faust itself: one that starts failing marks a repair that can go.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, cast

import aiokafka
import faust
from faust.streams import _current_event
from faust.tables import TableManager
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)

#: The releases whose internals this module was written against (pyproject.toml pins them).
FAUST_VERSION = "0.15.3"
AIOKAFKA_VERSION = "0.14.0"


class UnsupportedVersion(RuntimeError):
    """Faust or aiokafka is another release than this module was written against."""


def check_versions(installed: Mapping[str, str]) -> None:
    """Refuse releases (``installed``: distribution -> version) other than the
    ones this module was written against."""
    written_for = {"faust-streaming": FAUST_VERSION, "aiokafka": AIOKAFKA_VERSION}
    differing = [
        f"{name} {installed.get(name)} (written for {version})"
        for name, version in written_for.items()
        if installed.get(name) != version
    ]
    if differing:
        raise UnsupportedVersion(
            f"{__name__} reaches into Faust's internals, and the installed "
            f"releases are not the ones it was written for: {', '.join(differing)}. "
            f"Its repairs may no longer apply, silently. Re-read {__file__} against "
            "the installed releases, then update FAUST_VERSION and AIOKAFKA_VERSION "
            "(and pyproject.toml's pins)."
        )


check_versions({"faust-streaming": faust.__version__, "aiokafka": aiokafka.__version__})


class SeekFirstRecovery(Recovery):
    """Faust's recovery with the stream partitions seeked before they are resumed."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        app = self.app
        consumer = app.consumer
        await app.on_rebalance_complete.send()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume(consumer.assignment())
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        app = self.app
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        finishing = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if finishing:
            await asyncio.wait(finishing)
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s",
                app.consumer_generation_id,
                generation_id,
            )
            return
        await self._seek_then_resume(app.consumer.assignment())
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _seek_then_resume(self, assignment: set[Any]) -> None:
        app = self.app
        consumer = app.consumer
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            await self._wait(
                self._seek_uncommitted_to_earliest(assignment),
                timeout=app.conf.broker_request_timeout,
            )
        # No await from here until the flow is resumed: nothing can be fetched
        # into the queues before resume() clears them.
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await cast(Any, app)._fetcher.maybe_start()
        self.tables.on_actives_ready()

    async def _seek_uncommitted_to_earliest(self, assignment: set[Any]) -> None:
        """A stream partition that has no committed offset starts at its
        earliest record. aiokafka's ``seek_to_committed`` leaves such a
        partition where the consumer stands, its end: after a crash before the
        first commit, the replacement skipped every record behind the last
        checkpoint (test_models_live, at a 5 s checkpoint interval)."""
        consumer = self.app.consumer
        fresh = [
            tp
            for tp in assignment
            if not self._is_changelog_tp(tp)
            and not tp.topic.endswith("__assignor-__leader")
            and committed_offset(consumer, tp) is None
        ]
        if not fresh:
            return
        earliest = await consumer.earliest_offsets(*fresh)
        for tp in fresh:
            self.log.info("%s[%d]: nothing committed, reading from offset %s", tp.topic,
                          tp.partition, earliest.get(tp, 0))  # fmt: skip
            await consumer.seek(tp, earliest.get(tp, 0))


class SeekFirstTableManager(TableManager):
    """Faust's table manager, recovering with ``SeekFirstRecovery``."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class _FlushMarker:
    """Queued behind the table writes; the buffer reaching it means they all left it.

    The buffer's sender task sends records one at a time, in order, by calling
    ``record.message.channel.publish_message``; the marker answers that call.
    """

    def __init__(self) -> None:
        self.reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.message = self
        self.channel = self

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        if not self.reached.done():
            self.reached.set_result(None)


async def flush_table_writes(producer: Any, *, warn_after_s: float = 10.0) -> None:
    """Return once every table write made so far is acknowledged by Kafka
    (not waiting for writes made meanwhile)."""
    marker = _FlushMarker()
    buffer = producer.buffer
    buffer.put(marker)
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(marker.reached), warn_after_s)
            break
        except TimeoutError:
            log.warning(
                "table writes still buffered after %.0f s (%d records waiting)",
                warn_after_s,
                buffer.size,
            )
    started = time.monotonic()
    # The Kafka client's flush waits for the batches it holds now. Faust's own
    # flush first waits until its buffer is empty, which under a steady load
    # (other checkpoints' writes keep coming) it may never be: every release
    # would then wait, and no record be committed, until the load paused.
    client = producer._producer
    if client is not None:
        await client.flush()
    took = time.monotonic() - started
    if took > warn_after_s:
        log.warning("the Kafka client took %.0f s to deliver the table writes", took)


def bounded_flush(producer: Any) -> None:
    """Faust flushes its producer before every offset commit, and that flush
    returns only once its buffer is empty: under a steady load, commits then
    wait for a pause in the table writes ("Timer commit is overlapping"). The
    records a commit covers were released only after their writes were
    acknowledged, so it is enough to wait for the writes made so far
    (``flush_table_writes``), which is also a full flush once writes stop, as
    at shutdown. Idempotent."""
    if getattr(producer, "_iotcrm_bounded_flush", False):
        return

    async def flush() -> None:
        await flush_table_writes(producer)

    producer.flush = flush
    producer._iotcrm_bounded_flush = True


def never_fill_gaps(consumer: Any, topics: set[str]) -> None:
    """Never let Faust commit across a hole in the offsets of ``topics``.

    Idempotent: a restarted agent calls it again on the same consumer.
    """
    guarded = getattr(consumer, "_iotcrm_gapless_topics", None)
    if guarded is not None:
        guarded.update(topics)
        return
    consumer._iotcrm_gapless_topics = topics = set(topics)
    fill_gap = consumer._add_gap

    async def add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in topics:
            await fill_gap(tp, offset_from, offset_to)

    consumer._add_gap = add_gap


def set_current_event(event: faust.EventT) -> None:
    """Make ``event`` Faust's current event: a table write goes to the
    changelog partition of the current event's record, and Faust offers no
    public way to choose it."""
    _current_event.set(weakref.ref(event))


def tables_recovered(app: faust.App) -> bool:
    """Whether Faust has recovered the tables since the last rebalance."""
    # recovery is the TableManager's, not in Faust's TableManagerT
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return bool(recovery.completed.is_set())


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset Faust last committed for ``tp`` (where its stream resumes)."""
    offset: int | None = consumer._committed_offset.get(tp)
    return offset


def unacknowledged(consumer: Any) -> list[Any]:
    """The messages Faust waits for before it commits (and stops)."""
    return list(consumer._unacked_messages)


def unprocessed(consumer: Any, message: Any) -> None:
    """Take ``message`` out of Faust's acknowledgements: it will come again."""
    message.acked = True  # so the stream's own ack of it does nothing
    consumer._unacked_messages.discard(message)


async def seek(consumer: Any, tp: Any, offset: int) -> None:
    """``consumer.seek(tp, offset)``, run in the thread that owns the Kafka client."""
    thread = consumer._thread
    await thread.call_thread(thread._ensure_consumer().seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None


def checkpoint_before_wait_empty(consumer: Any, checkpoint: Any) -> None:
    """Run ``await checkpoint()`` whenever Faust waits for the streams to be
    acked before it commits (``Consumer.wait_empty``: on every rebalance and
    on a clean stop). Installing it again replaces the callback."""
    wait_empty = getattr(consumer, "_iotcrm_wait_empty", None)
    if wait_empty is None:
        wait_empty = consumer._iotcrm_wait_empty = consumer.wait_empty

    async def checkpoint_then_wait_empty() -> None:
        await checkpoint()
        await wait_empty()

    consumer.wait_empty = checkpoint_then_wait_empty


def bound_fetch_wait(max_wait_ms: int) -> None:
    """Faust's worker consumers (those created from now on) let the broker
    hold a fetch at most ``max_wait_ms``, instead of Faust's fixed 1,500 ms:
    the longest a partition drained by the actor can wait for its next fetch
    while a fetch of idle partitions is in flight. Calling it again replaces
    the bound."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = getattr(
        AIOKafkaConsumerThread._create_worker_consumer,
        "_iotcrm_original",
        AIOKafkaConsumerThread._create_worker_consumer,
    )

    def create_worker_consumer(self: Any, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = create(self, transport)
        # read by the consumer's start() when it builds its fetcher
        consumer._fetch_max_wait_ms = max_wait_ms
        return cast(aiokafka.AIOKafkaConsumer, consumer)

    create_worker_consumer._iotcrm_original = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]  # the patch


def allow_table_write_bursts(max_buffered: int) -> None:
    """Let up to ``max_buffered`` table writes wait in Faust's producer buffer
    before its conductor holds the streams back (Faust's limit is 100)."""
    from faust.transport.producer import ProducerBuffer

    ProducerBuffer.max_messages = max_buffered


def survive_commit_failures(on_failure: Callable[[BaseException], None]) -> None:
    """Faust's worker consumer treats a refused commit as what it is: the
    offsets stay uncommitted (the next commit carries them, or a rebalance
    hands the records to their new owner), ``on_failure`` is told, the
    worker goes on. Idempotent; applies to consumers created before or after."""
    from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
    from faust.transport.drivers.aiokafka import (
        AIOKafkaConsumerThread,
        OffsetAndMetadata,
        ensure_aiokafka_TP,
    )

    async def commit(self: Any, offsets: Mapping[Any, int]) -> bool:
        consumer = self._ensure_consumer()
        committable = {tp: offset for tp, offset in offsets.items() if tp in self.assignment()}
        try:
            self.tp_last_committed_at.update(dict.fromkeys(committable, time.monotonic()))
            await consumer.commit(
                {
                    ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
                    for tp, offset in committable.items()
                }
            )
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            on_failure(exc)
            return False
        return True

    commit._iotcrm_original = getattr(  # type: ignore[attr-defined]
        AIOKafkaConsumerThread._commit, "_iotcrm_original", AIOKafkaConsumerThread._commit
    )
    AIOKafkaConsumerThread._commit = commit  # type: ignore[method-assign]  # the patch
