"""The sink's delivery guarantees, with a scripted consumer and store.

The properties under test: an offset is committed only after its batch was
written; a failing batch is retried (never skipped) while consumption is
paused, so at most one batch is held; a long outage delays writes and loses
none; malformed records are skipped without stalling the sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition

from engine.config import Settings
from engine.store.backoff import Backoff
from engine.store.sink import CassandraSink, action_topics, decode_batch

SETTINGS = Settings()
COUPONS = TopicPartition("crm.actions.coupon", 0)
SUPPORT = TopicPartition("crm.actions.support", 1)
REGISTRY = TopicPartition("iot.registry", 0)
SUMMARIES = TopicPartition("iotcrm.customer360", 2)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def action(n: int, customer: str = "c-1") -> bytes:
    return orjson.dumps(
        {
            "action_id": f"a-{n}",
            "type": "coupon",
            "customer_id": customer,
            "at": 1000.0 + n,
            "rule": {"id": "r", "version": 1},
            "payload": {"n": n},
        }
    )


def summary(customer: str, **profile: Any) -> bytes:
    return orjson.dumps(
        {
            "customer": {"customer_id": customer, **profile},
            "devices": {"d-1": {"last_ts": 1000.0}},
            "counts": {"events": 1, "actions": 0},
            "recent_actions": [],
        }
    )


class FakeConsumer:
    """Partitions as lists of values; honours pause, seek, commit and max_records."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal
        self.logs: dict[TopicPartition, list[tuple[bytes | None, bytes | None]]] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.paused_tps: set[TopicPartition] = set()
        self.assigned: set[TopicPartition] = set()
        self.subscribed: list[str] = []
        self.delivered = 0  # records handed out by getmany
        self.fail_next_getmany: Exception | None = None
        self.arrived = asyncio.Event()
        self.headers: dict[tuple[TopicPartition, int], tuple[tuple[str, bytes], ...]] = {}

    def produce(
        self,
        tp: TopicPartition,
        value: bytes | None,
        key: bytes | None = None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self.headers[tp, len(self.logs.get(tp, []))] = headers
        self.logs.setdefault(tp, []).append((key, value))
        self.assigned.add(tp)
        self.positions.setdefault(tp, 0)
        self.arrived.set()

    async def start(self) -> None:
        self.journal.append(("start", None))

    async def stop(self) -> None:
        self.journal.append(("stop", None))

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self.subscribed = list(topics)
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        if self.fail_next_getmany is not None:
            exc, self.fail_next_getmany = self.fail_next_getmany, None
            raise exc
        batch = self._take(max_records or 10**9)
        if not batch and timeout_ms:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
            batch = self._take(max_records or 10**9)
        return batch

    def _take(self, budget: int) -> dict[TopicPartition, list[Record]]:
        batch: dict[TopicPartition, list[Record]] = {}
        for tp in sorted(self.assigned - self.paused_tps):
            log = self.logs.get(tp, [])
            start = self.positions[tp]
            chunk = log[start : start + budget]
            if chunk:
                batch[tp] = [
                    Record(
                        tp.topic,
                        tp.partition,
                        start + i,
                        key,
                        value,
                        self.headers.get((tp, start + i), ()),
                    )
                    for i, (key, value) in enumerate(chunk)
                ]
                self.positions[tp] = start + len(chunk)
                budget -= len(chunk)
                self.delivered += len(chunk)
            if budget <= 0:
                break
        return batch

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.journal.append(("commit", dict(offsets)))
        self.committed.update(offsets)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.journal.append(("seek", (tp, offset)))
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.logs.get(tp, [])) for tp in tps}


class Unavailable(Exception):
    """Stands in for the driver's NoHostAvailable."""


class FakeStore:
    """Records writes in the shared journal; fails while ``down`` says so."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal
        self.down: Callable[[], bool] = lambda: False
        self.rows: dict[str, dict[str, Any]] = {}  # action_id → action (upsert)
        self.devices: dict[str, dict[str, Any] | None] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.attempts = 0

    def _check(self) -> None:
        self.attempts += 1
        if self.down():
            self.journal.append(("write-failed", None))
            raise Unavailable("no host available")

    async def write_actions(self, actions: Sequence[Mapping[str, Any]]) -> int:
        self._check()
        for a in actions:
            self.rows[a["action_id"]] = dict(a)
        self.journal.append(("write", [a["action_id"] for a in actions]))
        return len(actions)

    async def upsert_device(self, device_id: str, **fields: Any) -> None:
        self._check()
        self.devices[device_id] = fields
        self.journal.append(("device", device_id))

    async def delete_device(self, device_id: str) -> None:
        self._check()
        self.devices[device_id] = None
        self.journal.append(("device-deleted", device_id))

    async def erase_customer(self, customer_id: str, device_ids: Sequence[str]) -> dict[str, int]:
        self._check()
        erased = [a for a, row in self.rows.items() if row["customer_id"] == customer_id]
        for action_id in erased:
            del self.rows[action_id]
        self.summaries.pop(customer_id, None)
        self.journal.append(("erase", (customer_id, list(device_ids))))
        return {"action_log": len(erased)}

    async def record_erasure(self, report: Any, deleted: Mapping[str, int]) -> None:
        self._check()
        self.journal.append(("audit", (report.request_id, dict(deleted))))

    async def write_customer_summaries(self, summaries: Mapping[str, Mapping[str, Any]]) -> int:
        self._check()
        self.summaries.update({key: dict(value) for key, value in summaries.items()})
        self.journal.append(("summaries", sorted(summaries)))
        return len(summaries)


FAST = Backoff(base_s=0.001, factor=2.0, max_s=0.004)


def make_sink(**kwargs: Any) -> tuple[CassandraSink, FakeConsumer, FakeStore, list[Any]]:
    journal: list[tuple[str, Any]] = []
    consumer, store = FakeConsumer(journal), FakeStore(journal)
    options: dict[str, Any] = {"backoff": FAST, "poll_timeout_s": 0.01, "lag_interval_s": 0.0}
    options.update(kwargs)
    sink = CassandraSink(SETTINGS, store, consumer=consumer, **options)
    return sink, consumer, store, journal


async def until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.001)


def commits(journal: list[tuple[str, Any]]) -> list[dict[TopicPartition, int]]:
    return [entry for kind, entry in journal if kind == "commit"]


async def test_subscribes_to_the_action_topics_the_registry_and_the_summaries() -> None:
    sink, consumer, _, _ = make_sink()
    await sink.start()
    await sink.stop()
    assert consumer.subscribed == [*action_topics(SETTINGS), "iot.registry", "iotcrm.customer360"]
    assert sorted(action_topics(SETTINGS)) == [
        "crm.actions.coupon",
        "crm.actions.maintenance",
        "crm.actions.retention",
        "crm.actions.support",
    ]
    sink, consumer, _, _ = make_sink(
        topics=["x.actions"], mirror_registry=False, mirror_customer_360=False
    )
    await sink.start()
    await sink.stop()
    assert consumer.subscribed == ["x.actions"]


async def test_summaries_are_not_consumed_when_no_topic_is_configured() -> None:
    journal: list[tuple[str, Any]] = []
    consumer = FakeConsumer(journal)
    unset = msgspec.structs.replace(
        SETTINGS, kafka=msgspec.structs.replace(SETTINGS.kafka, customer360_topic="")
    )
    sink = CassandraSink(unset, FakeStore(journal), consumer=consumer, poll_timeout_s=0.01)
    await sink.start()
    await sink.stop()
    assert consumer.subscribed == [*action_topics(SETTINGS), "iot.registry"]


async def test_commit_follows_the_successful_write_of_its_batch() -> None:
    sink, consumer, store, journal = make_sink()
    for n in range(3):
        consumer.produce(COUPONS, action(n))
    consumer.produce(SUPPORT, action(3, customer="c-2"))
    await sink.start()
    await until(lambda: consumer.committed.get(SUPPORT) == 1)
    await sink.stop()

    kinds = [kind for kind, _ in journal if kind in ("write", "commit")]
    assert kinds == ["write", "commit"]
    assert commits(journal) == [{COUPONS: 3, SUPPORT: 1}]
    assert set(store.rows) == {"a-0", "a-1", "a-2", "a-3"}
    assert store.rows["a-3"]["topic"] == "crm.actions.support"
    assert sink.metrics.written == 4 and sink.metrics.batches == 1


async def test_a_failing_batch_is_retried_until_written_and_only_then_committed() -> None:
    sink, consumer, store, journal = make_sink()
    failures = iter([True, True, True])
    store.down = lambda: next(failures, False)
    for n in range(5):
        consumer.produce(COUPONS, action(n))
    await sink.start()
    await until(lambda: consumer.committed.get(COUPONS) == 5)
    await sink.stop()

    kinds = [kind for kind, _ in journal if kind in ("write", "write-failed", "commit")]
    assert kinds == ["write-failed"] * 3 + ["write", "commit"]
    # The retried batch is the same batch: nothing skipped, nothing reordered.
    assert [ids for kind, ids in journal if kind == "write"] == [[f"a-{n}" for n in range(5)]]
    assert sink.metrics.retries == 3
    assert sink.metrics.written == 5
    assert sink.metrics.last_error == "Unavailable: no host available"
    assert sink.metrics.healthy is False  # stopped
    assert sink.metrics.failing_since is None


async def test_during_an_outage_consumption_pauses_and_only_one_batch_is_held() -> None:
    sink, consumer, store, journal = make_sink(batch_size=4)
    outage = True
    store.down = lambda: outage
    for n in range(4):
        consumer.produce(COUPONS, action(n))
    await sink.start()
    await until(lambda: sink.metrics.retries >= 3)

    # More actions keep arriving while Cassandra is down...
    for n in range(4, 40):
        consumer.produce(COUPONS if n % 2 else SUPPORT, action(n))
    await until(lambda: sink.metrics.retries >= 6)
    # ...but the sink holds the one batch it had and fetches nothing more.
    assert consumer.delivered == 4
    assert consumer.paused_tps == {COUPONS, SUPPORT}
    assert commits(journal) == []
    assert sink.metrics.healthy is False
    assert sink.metrics.failing_since is not None
    assert sink.metrics.lag == 40  # 36 waiting on the topics + the 4 held

    outage = False
    await until(lambda: len(store.rows) == 40)
    await until(lambda: sink.metrics.lag == 0)
    assert sink.metrics.healthy is True
    await sink.stop()

    assert set(store.rows) == {f"a-{n}" for n in range(40)}
    assert consumer.committed == {COUPONS: 22, SUPPORT: 18}
    assert consumer.paused_tps == set()
    # Every commit covers only records already written.
    written: set[str] = set()
    for kind, entry in journal:
        if kind == "write":
            written.update(entry)
        if kind == "commit":
            for tp, offset in entry.items():
                ids = {orjson.loads(v)["action_id"] for _, v in consumer.logs[tp][:offset]}
                assert ids <= written


async def test_stopping_during_an_outage_commits_nothing() -> None:
    sink, consumer, store, journal = make_sink()
    store.down = lambda: True
    consumer.produce(COUPONS, action(1))
    await sink.start()
    await until(lambda: sink.metrics.retries >= 2)
    await sink.stop()

    assert commits(journal) == []
    assert consumer.committed == {}
    assert journal[-1] == ("stop", None)
    assert sink.metrics.running is False


async def test_malformed_records_are_rejected_without_stalling_the_rest() -> None:
    sink, consumer, store, _ = make_sink()
    consumer.produce(COUPONS, b"{not json")
    consumer.produce(COUPONS, orjson.dumps(["a", "list"]))
    consumer.produce(COUPONS, orjson.dumps({"action_id": "no-customer", "type": "coupon", "at": 1}))
    consumer.produce(COUPONS, action(9))
    await sink.start()
    await until(lambda: consumer.committed.get(COUPONS) == 4)
    await sink.stop()

    assert set(store.rows) == {"a-9"}
    assert sink.metrics.rejected == 3
    assert sink.metrics.written == 1


async def test_registry_records_are_mirrored_and_tombstones_mark_deletion() -> None:
    sink, consumer, store, journal = make_sink()
    registration = {
        "device_id": "d-1",
        "customer_id": "c-1",
        "device_type": "washer",
        "model": "WX-200",
        "registered_at": 1763700000,
    }
    consumer.produce(REGISTRY, orjson.dumps(registration), key=b"d-1")
    consumer.produce(REGISTRY, orjson.dumps({**registration, "device_id": "d-2"}), key=b"d-2")
    consumer.produce(REGISTRY, None, key=b"d-2")
    await sink.start()
    await until(lambda: consumer.committed.get(REGISTRY) == 3)
    await sink.stop()

    assert store.devices["d-1"] == {
        "customer_id": "c-1",
        "device_type": "washer",
        "model": "WX-200",
        "registered_at": 1763700000.0,
    }
    assert store.devices["d-2"] is None
    # Within one batch only the latest change per device is applied.
    assert [e for k, e in journal if k.startswith("device")] == ["d-1", "d-2"]
    assert sink.metrics.devices_written == 2


async def test_partitions_revoked_before_commit_are_not_committed() -> None:
    sink, consumer, store, journal = make_sink()
    store.down = lambda: COUPONS in consumer.assigned and SUPPORT in consumer.assigned
    consumer.produce(COUPONS, action(1))
    consumer.produce(SUPPORT, action(2))
    await sink.start()
    await until(lambda: sink.metrics.retries >= 1)
    consumer.assigned.discard(SUPPORT)  # a rebalance gave it to another replica
    await until(lambda: COUPONS in consumer.committed)
    await sink.stop()

    assert commits(journal) == [{COUPONS: 1}]
    assert sink.metrics.commit_failures == 1


async def test_partitions_assigned_while_holding_start_paused() -> None:
    sink, consumer, store, _ = make_sink()
    outage = True
    store.down = lambda: outage
    consumer.produce(COUPONS, action(1))
    await sink.start()
    before = TopicPartition("crm.actions.retention", 1)
    await consumer.listener.on_partitions_assigned({before})
    assert before not in consumer.paused_tps  # nothing held yet: fetch normally

    await until(lambda: sink.metrics.retries >= 1)
    during = TopicPartition("crm.actions.retention", 2)
    await consumer.listener.on_partitions_assigned({during})
    assert during in consumer.paused_tps
    consumer.produce(during, action(2))
    await until(lambda: sink.metrics.retries >= 3)
    assert consumer.delivered == 1

    outage = False
    await until(lambda: consumer.committed.get(during) == 1)
    await sink.stop()
    assert set(store.rows) == {"a-1", "a-2"}


async def test_records_fetched_before_the_pause_are_rewound_not_buffered() -> None:
    sink, consumer, store, journal = make_sink()
    store.down = lambda: True
    consumer.produce(COUPONS, action(1))
    await sink.start()
    await until(lambda: sink.metrics.retries >= 1)
    # A partition the pause did not cover yet (assigned without the listener).
    late = TopicPartition("crm.actions.retention", 3)
    consumer.produce(late, action(2))
    consumer.produce(late, action(3))
    original_pause = consumer.pause
    consumer.pause = lambda *tps: original_pause(*(tp for tp in tps if tp != late))  # type: ignore[method-assign]
    await until(lambda: ("seek", (late, 0)) in journal)
    consumer.pause = original_pause  # type: ignore[method-assign]
    store.down = lambda: False
    await until(lambda: consumer.committed.get(late) == 2)
    await sink.stop()
    assert {"a-1", "a-2", "a-3"} == set(store.rows)


async def test_consumer_errors_are_survived_and_reported() -> None:
    sink, consumer, _, _ = make_sink()
    consumer.fail_next_getmany = RuntimeError("broker gone")
    await sink.start()
    await until(lambda: sink.metrics.last_error == "RuntimeError: broker gone")
    consumer.produce(COUPONS, action(1))
    await until(lambda: consumer.committed.get(COUPONS) == 1)
    assert sink.metrics.healthy is True
    await sink.stop()


def test_decode_batch_collapses_registry_changes_and_counts_records() -> None:
    records = {
        REGISTRY: [
            Record("iot.registry", 0, 0, b"d-1", orjson.dumps({"customer_id": "c-1"})),
            Record("iot.registry", 0, 1, b"d-2", orjson.dumps({"customer_id": "c-2"})),
            Record("iot.registry", 0, 2, b"d-1", None),
            Record("iot.registry", 0, 3, None, None),
        ],
        COUPONS: [Record("crm.actions.coupon", 0, 7, b"c-1", action(1))],
    }
    batch = decode_batch(records, "iot.registry")
    assert [(c.device_id, c.registration) for c in batch.devices] == [
        ("d-2", {"customer_id": "c-2"}),
        ("d-1", None),
    ]
    assert batch.rejected == 1  # the keyless tombstone
    assert batch.records == 5
    assert batch.offsets == {REGISTRY: 4, COUPONS: 8}
    assert [a["action_id"] for a in batch.actions] == ["a-1"]


async def test_the_latest_summary_per_customer_is_written_before_the_commit() -> None:
    sink, consumer, store, journal = make_sink()
    consumer.produce(SUMMARIES, summary("c-1", tier="silver"), key=b"c-1")
    consumer.produce(SUMMARIES, summary("c-2", tier="gold"), key=b"c-2")
    consumer.produce(SUMMARIES, summary("c-1", tier="gold"), key=b"c-1")
    consumer.produce(COUPONS, action(1))
    await sink.start()
    await until(lambda: consumer.committed.get(SUMMARIES) == 3)
    await sink.stop()

    assert [kind for kind, _ in journal if kind in ("write", "summaries", "commit")] == [
        "write",
        "summaries",
        "commit",
    ]
    assert ("summaries", ["c-1", "c-2"]) in journal
    assert store.summaries["c-1"]["customer"]["tier"] == "gold"
    assert store.summaries["c-2"]["customer"]["tier"] == "gold"
    assert commits(journal) == [{COUPONS: 1, SUMMARIES: 3}]
    assert (sink.metrics.summaries_written, sink.metrics.written) == (2, 1)


async def test_a_failing_summary_write_holds_the_batch_and_is_retried() -> None:
    sink, consumer, store, journal = make_sink()
    failures = iter([True, True])
    store.down = lambda: next(failures, False)
    consumer.produce(SUMMARIES, summary("c-1", tier="gold"), key=b"c-1")
    await sink.start()
    await until(lambda: consumer.committed.get(SUMMARIES) == 1)
    await sink.stop()

    kinds = [kind for kind, _ in journal if kind in ("summaries", "write-failed", "commit")]
    assert kinds == ["write-failed", "write-failed", "summaries", "commit"]
    assert sink.metrics.retries == 2 and sink.metrics.summaries_written == 1


async def test_malformed_summaries_are_rejected_without_stalling_the_rest() -> None:
    sink, consumer, store, _ = make_sink()
    consumer.produce(SUMMARIES, b"[]", key=b"c-1")
    consumer.produce(SUMMARIES, summary("c-2"), key=b"c-1")  # key and body disagree
    consumer.produce(SUMMARIES, orjson.dumps({"customer": {}, "counts": {"x": "1"}}), key=b"c-3")
    consumer.produce(SUMMARIES, summary("c-4"), key=b"\xff\xfe")  # not UTF-8
    consumer.produce(SUMMARIES, summary("c-5"), key=b"c-5")
    await sink.start()
    await until(lambda: consumer.committed.get(SUMMARIES) == 5)
    await sink.stop()

    assert set(store.summaries) == {"c-5"}
    assert sink.metrics.rejected == 4


def test_decode_batch_keeps_the_latest_summary_and_a_tombstone_cancels_earlier_ones() -> None:
    records = {
        SUMMARIES: [
            Record(SUMMARIES.topic, 2, 0, b"c-1", summary("c-1", tier="silver")),
            Record(SUMMARIES.topic, 2, 1, b"c-2", summary("c-2")),
            Record(SUMMARIES.topic, 2, 2, b"c-1", summary("c-1", tier="gold")),
            Record(SUMMARIES.topic, 2, 3, b"c-2", None),
            Record(SUMMARIES.topic, 2, 4, None, summary("c-3")),  # id from the body
        ]
    }
    batch = decode_batch(records, "iot.registry", SUMMARIES.topic)
    assert list(batch.summaries) == ["c-1", "c-3"]
    assert batch.summaries["c-1"]["customer"]["tier"] == "gold"
    assert (batch.rejected, batch.records, batch.offsets) == (0, 5, {SUMMARIES: 5})
    # Without a summary topic the same records would be taken for actions.
    assert decode_batch(records, "iot.registry").summaries == {}


def test_metrics_expose_health_as_a_plain_dict() -> None:
    sink, *_ = make_sink()
    health = sink.metrics.as_dict()
    assert {"written", "retries", "lag", "last_error", "healthy"} <= set(health)
    assert health["healthy"] is False  # not started


async def test_start_twice_is_an_error() -> None:
    sink, *_ = make_sink()
    await sink.start()
    with pytest.raises(RuntimeError, match="already started"):
        await sink.start()
    await sink.stop()


async def test_an_erasure_deletes_rows_only_after_the_customers_earlier_actions() -> None:
    from engine.erasure import ERASURE_HEADER, ErasureReport, encode_report
    from engine.kafka import partition_for

    sink, consumer, store, journal = make_sink()
    own = TopicPartition("crm.actions.coupon", partition_for(b"c-1", SETTINGS.kafka.partitions))
    consumer.produce(own, action(1), b"c-1")
    consumer.pause(own)  # fetched late: the tombstone is read first
    report = ErasureReport(
        request_id="r-1", requested_at=1.0, erased_at=2.0, had_state=True, device_ids=["d-1"]
    )
    consumer.produce(SUMMARIES, summary("c-1"), b"c-1")
    consumer.produce(SUMMARIES, None, b"c-1", ((ERASURE_HEADER, encode_report(report)),))
    await sink.start()
    try:
        await until(lambda: SUMMARIES in consumer.committed)
        assert consumer.committed[SUMMARIES] == 1, "not past the tombstone while it waits"
        assert not [entry for entry in journal if entry[0] == "erase"]
        consumer.resume(own)
        consumer.arrived.set()
        await until(lambda: ("audit", ("r-1", {"action_log": 1})) in journal)
        kinds = [kind for kind, _ in journal if kind in ("write", "erase", "audit")]
        assert kinds == ["write", "erase", "audit"], "the late action is written, then erased"
        assert store.rows == {} and "c-1" not in store.summaries
        consumer.produce(COUPONS if own != COUPONS else SUPPORT, action(2, "c-2"), b"c-2")
        await until(lambda: consumer.committed.get(SUMMARIES) == 2)
        assert sink.metrics.erasures == 1
    finally:
        await sink.stop()
