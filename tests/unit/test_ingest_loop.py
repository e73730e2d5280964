"""Ingest's loop without a broker: what a poll takes, and when offsets are committed.

The librdkafka consumer and producer are replaced by fakes that record what
ingest asks of them; the inspector, registry and packing are the real ones.
"""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from agents.ingest import EndOffsets, Ingest
from engine.config import load_settings
from engine.watermark import IngestWatermark


class Message:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._where = (topic, partition, offset)
        self._value = value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class FakeConsumer:
    """Holds queued messages; ``consume(n, 0)`` and ``poll`` never block."""

    def __init__(self) -> None:
        self.queued: list[Message] = []
        self.calls: list[tuple[str, int, float]] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.committed_at: dict[tuple[str, int], int] = {}
        self.committed_asked: list[tuple[set[tuple[str, int]], float]] = []
        self.rebalancing = False

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self.calls.append(("consume", num_messages, timeout))
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken

    def poll(self, timeout: float) -> Message | None:
        self.calls.append(("poll", 1, timeout))
        return self.queued.pop(0) if self.queued else None

    def commit(self, offsets: list[KafkaPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def get_watermark_offsets(self, tp: KafkaPartition, cached: bool) -> tuple[int, int]:
        return (0, 0)

    def committed(self, partitions: list[KafkaPartition], timeout: float) -> list[KafkaPartition]:
        """``committed_at`` (nothing: -1001); a timeout while ``rebalancing``."""
        self.committed_asked.append(({(tp.topic, tp.partition) for tp in partitions}, timeout))
        if self.rebalancing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        offsets = self.committed_at
        return [
            KafkaPartition(tp.topic, tp.partition, offsets.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]


class FakeAdmin:
    """Answers ListOffsets with the ``ends`` it holds: at once, or once
    ``answer()`` is called after ``waiting`` was set."""

    def __init__(self) -> None:
        self.waiting = False
        self.ends: dict[tuple[str, int], int] = {}
        self.asked: list[set[tuple[str, int]]] = []
        self.unanswered: list[tuple[Future[Any], tuple[str, int]]] = []

    def list_offsets(self, specs: dict[KafkaPartition, Any], **_: Any) -> dict[Any, Future[Any]]:
        self.asked.append({(tp.topic, tp.partition) for tp in specs})
        futures: dict[Any, Future[Any]] = {}
        for tp in specs:
            futures[tp] = Future()
            self.unanswered.append((futures[tp], (tp.topic, tp.partition)))
        if not self.waiting:
            self.answer()
        return futures

    def answer(self) -> None:
        for future, tp in self.unanswered:
            future.set_result(SimpleNamespace(offset=self.ends.get(tp, 0)))
        self.unanswered = []


class FakeProducer:
    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, **_: Any) -> None:
        self.produced.append((topic, value))

    def flush(self, timeout: float) -> int:
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def admin() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def ingest(monkeypatch: pytest.MonkeyPatch, admin: FakeAdmin) -> tuple[Ingest, FakeConsumer, Clock]:
    clock = Clock()
    monkeypatch.setattr("agents.ingest.time.monotonic", clock)
    settings = load_settings(None, environ={})
    ingest = Ingest(settings)
    ingest.consumer.close()
    consumer = FakeConsumer()
    ingest.consumer = consumer  # type: ignore[assignment]
    ingest.producer = FakeProducer()  # type: ignore[assignment]
    ingest.end_offsets = EndOffsets(admin, timeout_s=1.0)
    ingest.watermark = IngestWatermark(
        device_skew_s=settings.quality.device_skew_s,
        idle_allowance_s=settings.worker.idle_allowance_s,
        clock=clock,
    )
    ingest._stream_partitions = 4
    ingest.registry.apply(
        b"d-1",
        orjson.dumps({"device_id": "d-1", "customer_id": "c-1", "device_type": "washer"}),
    )
    return ingest, consumer, clock


def telemetry(offset: int, partition: int = 0) -> Message:
    event = {"id": f"e{offset}", "ts": 1_700_000_000 + offset, "device_id": "d-1",
             "kind": "telemetry", "vibration": 0.1}  # fmt: skip
    return Message("iot.device.d-1", partition, offset, orjson.dumps(event))


def test_a_poll_takes_what_is_queued_without_waiting_for_a_full_batch(ingest) -> None:
    ingest, consumer, _ = ingest
    consumer.queued = [telemetry(n) for n in range(3)]
    taken = ingest._take(wait_s=0.025)
    assert [m.offset() for m in taken] == [0, 1, 2]
    assert consumer.calls == [("consume", ingest.settings.worker.batch_size, 0)]


def test_an_empty_consumer_is_waited_on_for_the_first_record_only(ingest) -> None:
    ingest, consumer, _ = ingest
    assert ingest._take(wait_s=0.025) == []
    assert consumer.calls[-1] == ("poll", 1, 0.025)

    # Queued between the two calls: the first comes by poll, the rest at once.
    class Arriving(FakeConsumer):
        def consume(self, num_messages: int, timeout: float) -> list[Message]:
            if not self.calls:
                self.calls.append(("consume", num_messages, timeout))
                self.queued = [telemetry(n) for n in range(4)]
                return []
            return super().consume(num_messages, timeout)

    arriving = Arriving()
    ingest.consumer = arriving
    taken = ingest._take(wait_s=0.025)
    assert [m.offset() for m in taken] == [0, 1, 2, 3]
    batch = ingest.settings.worker.batch_size
    assert arriving.calls == [("consume", batch, 0), ("poll", 1, 0.025),
                              ("consume", batch - 1, 0)]  # fmt: skip


def test_offsets_are_committed_once_per_interval_after_the_records_are_acknowledged(
    ingest,
) -> None:
    ingest, consumer, clock = ingest
    interval = ingest.settings.worker.commit_interval_s
    ingest.ingest([telemetry(0), telemetry(1)])
    ingest._commit_if_due()
    ingest.ingest([telemetry(2), telemetry(5, partition=1)])
    clock.now += interval / 2
    ingest._commit_if_due()
    assert consumer.commits == []
    assert ingest.producer.produced  # forwarded (and flushed) before any commit

    clock.now += interval / 2
    ingest._commit_if_due()
    assert consumer.commits == [{("iot.device.d-1", 0): 3, ("iot.device.d-1", 1): 6}]
    clock.now += interval
    ingest._commit_if_due()
    assert len(consumer.commits) == 1  # nothing new read: nothing to commit


def test_revoked_partitions_are_committed_at_once_and_lost_ones_never(ingest) -> None:
    ingest, consumer, _ = ingest
    ingest.ingest([telemetry(0), telemetry(7, partition=1)])
    ingest._on_revoke(consumer, [KafkaPartition("iot.device.d-1", 1)])
    assert consumer.commits == [{("iot.device.d-1", 1): 8}]

    ingest._on_lost(consumer, [KafkaPartition("iot.device.d-1", 0)])
    ingest._commit()
    assert consumer.commits == [{("iot.device.d-1", 1): 8}]


def test_checks_of_the_sources_ends_are_spaced_out_by_what_they_cost(ingest) -> None:
    from agents.ingest import (
        WATERMARK_CHECK_SHARE,
        WATERMARK_INTERVAL_MAX_S,
        WATERMARK_INTERVAL_S,
    )

    ingest, _, _ = ingest
    assert ingest.metrics.watermark_interval_s == WATERMARK_INTERVAL_S
    for _ in range(100):  # many sources: 30 ms of the thread per check
        ingest._space_checks(0.03)
    assert ingest.metrics.watermark_interval_s == pytest.approx(0.03 / WATERMARK_CHECK_SHARE)
    for _ in range(100):
        ingest._space_checks(1.0)
    assert ingest.metrics.watermark_interval_s == pytest.approx(WATERMARK_INTERVAL_MAX_S)
    for _ in range(100):  # few sources: as often as the floor allows
        ingest._space_checks(0.0005)
    assert ingest.metrics.watermark_interval_s == pytest.approx(WATERMARK_INTERVAL_S)


def test_ingest_left_out_of_its_group_exits_so_a_fresh_one_joins(ingest) -> None:
    from agents.ingest import REJOIN_LIMIT_SESSIONS, IngestLeftOut

    ingest, consumer, clock = ingest
    limit_s = REJOIN_LIMIT_SESSIONS * ingest.settings.worker.session_timeout_s
    ingest._on_assign(consumer, [KafkaPartition("iot.device.d-1", 0)])
    ingest._on_lost(consumer, [KafkaPartition("iot.device.d-1", 0)])
    clock.now += limit_s - 1
    ingest._check_rejoined()  # still waiting to be taken back

    ingest._on_assign(consumer, [])  # a member again, even with nothing to read
    clock.now += limit_s
    ingest._check_rejoined()

    ingest._on_lost(consumer, [])
    clock.now += limit_s
    with pytest.raises(IngestLeftOut, match="not taken back"):
        ingest._check_rejoined()


def test_a_refused_commit_is_tried_again_for_the_partitions_ingest_keeps(ingest) -> None:
    from confluent_kafka import KafkaError, KafkaException

    ingest, consumer, clock = ingest
    ingest._assigned = {("iot.device.d-1", 0), ("iot.device.d-1", 1)}
    refusals = [KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))]
    committed = consumer.commit

    def refuse_once(offsets: list[KafkaPartition], asynchronous: bool) -> None:
        if refusals:
            raise refusals.pop()
        committed(offsets, asynchronous)

    consumer.commit = refuse_once
    ingest.ingest([telemetry(0), telemetry(4, partition=1)])
    ingest._commit()
    assert consumer.commits == [] and ingest.metrics.commit_failures == 1
    # An incremental rebalance took partition 1 away; partition 0 stays.
    ingest._on_revoke(consumer, [KafkaPartition("iot.device.d-1", 1)])
    clock.now += ingest.settings.worker.commit_interval_s
    ingest._commit_if_due()
    assert consumer.commits == [{("iot.device.d-1", 1): 5}, {("iot.device.d-1", 0): 1}]


def test_the_sources_ends_are_asked_for_without_waiting_and_judged_as_of_the_asking(
    ingest, admin: FakeAdmin
) -> None:
    ingest, consumer, clock = ingest
    source = ("iot.device.d-1", 0)
    ingest._on_assign(consumer, [KafkaPartition(*source)])  # type: ignore[arg-type]
    ingest.ingest([telemetry(n) for n in range(3)])  # the first time: asked and waited for
    assert len(admin.asked) == 1
    admin.waiting = True
    admin.ends[source] = 5  # two records not read yet
    clock.now += 1.0
    ingest._update_watermark()
    assert len(admin.asked) == 2
    assert ingest._end_check is not None  # in flight: the loop went on

    # Read to the end while the question travels: the answer is still judged
    # against the 3 records read when it was asked, so the source lags.
    ingest.ingest([telemetry(n) for n in range(3, 5)])
    clock.now += 1.0
    ingest._update_watermark()
    assert len(admin.asked) == 2  # one request at a time
    admin.answer()
    ingest._update_watermark()
    assert ingest.metrics.lagging_sources == 1
    assert ingest.metrics.lag == 2
    assert len(admin.asked) == 3  # the next one, at once (the interval passed)
    admin.answer()
    clock.now += 1.0
    ingest._update_watermark()
    assert (ingest.metrics.lagging_sources, ingest.metrics.lag) == (0, 0)


def test_a_revoke_drops_the_answer_in_flight(ingest, admin: FakeAdmin) -> None:
    ingest, consumer, clock = ingest
    source = ("iot.device.d-1", 0)
    ingest._on_assign(consumer, [KafkaPartition(*source)])  # type: ignore[arg-type]
    ingest.ingest([telemetry(0)])
    admin.waiting = True
    clock.now += 1.0
    ingest._update_watermark()
    ingest._on_revoke(consumer, [KafkaPartition(*source)])  # type: ignore[arg-type]
    assert ingest._end_check is None and not ingest.end_offsets.asking
    admin.answer()
    ingest._update_watermark()
    assert len(admin.asked) == 2  # nothing assigned: nothing asked


def test_the_ends_of_sources_handed_over_are_asked_for_until_they_stop_holding(
    ingest, admin: FakeAdmin
) -> None:
    ingest, consumer, clock = ingest
    kept, given = ("iot.device.d-1", 0), ("iot.device.d-1", 1)
    ingest._on_assign(consumer, [KafkaPartition(*kept), KafkaPartition(*given)])  # type: ignore[arg-type]
    ingest.ingest([telemetry(0, partition=0), telemetry(1, partition=1)])
    ingest._on_revoke(consumer, [KafkaPartition(*given)])  # type: ignore[arg-type]
    assert ingest.watermark.handed_over[given][0] == 2  # read to offset 2 of it
    admin.ends = {kept: 1, given: 2}  # nothing past what it read
    clock.now += 1.0
    ingest._update_watermark()
    assert admin.asked[-1] == {kept, given}
    ingest._update_watermark()  # the answer is judged on the next turn of the loop
    assert ingest.watermark.handed_over[given][2] is not None  # no longer waiting for its owner
    clock.now += 3.0
    ingest._update_watermark()
    assert not ingest.watermark.handed_over
    clock.now += 1.0
    ingest._update_watermark()
    assert admin.asked[-1] == {kept}


def test_a_hand_over_holds_time_until_the_new_owner_commits_past_it(
    ingest, admin: FakeAdmin
) -> None:
    """A source given up holds this instance's time while the group cannot
    say how far its new owner got (a rebalance, a broker restart); once the
    new owner committed past what this one read, its grace begins."""
    ingest, consumer, clock = ingest
    consumer.rebalancing = True
    kept, given = ("iot.device.d-1", 0), ("iot.device.d-1", 1)
    ingest._on_assign(consumer, [KafkaPartition(*kept), KafkaPartition(*given)])  # type: ignore[arg-type]
    ingest.ingest([telemetry(0, partition=0), telemetry(1, partition=1)])
    ingest._on_revoke(consumer, [KafkaPartition(*given)])  # type: ignore[arg-type]
    admin.ends = {kept: 1, given: 9}  # the new owner's records arrived past what this one read
    clock.now += 1.0
    ingest._update_watermark()
    assert [asked for asked, _ in consumer.committed_asked] == [{given}]
    assert ingest.watermark.handed_over[given][2] is None  # still holding time back
    consumer.rebalancing = False
    consumer.committed_at = {given: 5}  # the new owner forwarded and committed past offset 2
    clock.now += 0.5
    ingest._update_watermark()
    assert len(consumer.committed_asked) == 2
    assert ingest.watermark.handed_over[given][2] is not None  # its grace has begun
    clock.now += 3.0
    ingest._update_watermark()
    assert not ingest.watermark.handed_over


def test_events_older_than_the_time_already_stamped_are_counted(ingest, admin: FakeAdmin) -> None:
    """A device whose events reach Kafka more than ``device_skew_s`` behind
    the others breaks what ingest vouched for (an idle key's timer may have
    fired early): each such event is counted, so operators see it."""
    ingest, consumer, _ = ingest
    ingest.registry.apply(
        b"d-2", orjson.dumps({"device_id": "d-2", "customer_id": "c-2", "device_type": "washer"})
    )
    sources = [("iot.device.d-1", 0), ("iot.device.d-2", 0)]
    ingest._on_assign(consumer, [KafkaPartition(*tp) for tp in sources])  # type: ignore[arg-type]
    admin.ends = {sources[0]: 1, sources[1]: 0}

    def event(device: str, offset: int, ts: float) -> Message:
        value = {"id": f"{device}-{offset}", "ts": ts, "device_id": device, "kind": "telemetry"}
        return Message(f"iot.device.{device}", 0, offset, orjson.dumps(value))

    ingest.ingest([event("d-1", 0, 1_700_001_000)])  # both read to their ends: stamped 1000 - 60
    ingest.ingest([event("d-1", 1, 1_700_001_001)])
    assert ingest.metrics.behind_watermark == 0
    # d-2's events arrive late: one within the skew, one 900 s behind the stamp.
    ingest.ingest([event("d-2", 0, 1_700_000_950), event("d-2", 1, 1_700_000_100)])
    assert ingest.metrics.behind_watermark == 1
    # Sources taken over: what this instance stamped vouched only for its own.
    ingest._on_assign(consumer, [KafkaPartition("iot.device.d-3", 0)])  # type: ignore[arg-type]
    ingest.ingest([event("d-2", 2, 1_700_000_200)])
    assert ingest.metrics.behind_watermark == 1


def test_consumers_heartbeat_a_quarter_of_the_session_apart_at_least_a_second() -> None:
    from engine.config import WorkerSettings

    assert WorkerSettings(session_timeout_s=10.0).heartbeat_interval_s == 2.5
    assert WorkerSettings(session_timeout_s=60.0).heartbeat_interval_s == 15.0
    assert WorkerSettings(session_timeout_s=2.0).heartbeat_interval_s == 1.0
