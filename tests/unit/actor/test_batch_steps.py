"""The actor's batch and checkpoint, step by step, without a broker.

Every side effect a batch and a checkpoint have on Faust, Kafka, the tables
and the plain-Python actor is recorded in one journal, which must follow the
order ``agents.customer`` documents: offset guard, process, timers, send,
hold; then actions acknowledged, erasures published, states written, models
and clocks written, those writes acknowledged, records released. A
revocation at any of the batch's awaits gives its records back unprocessed.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import orjson
from faust.types import TP

from engine.actor import ActorOutput
from engine.erasure import ErasureRequest, encode_request
from engine.events import PUBLISHED_HEADER
from engine.watermark import SOURCE_HEADER, TICK_KEY, WATERMARK_HEADER
from tables.state import CustomerState, encode_state, new_customer_state

EVENTS, PROFILES, OUTCOMES, ERASURES = "events", "crm.customers", "crm.outcomes", "crm.erasure"


class Journal(list[tuple[Any, ...]]):
    def note(self, *entry: Any) -> None:
        self.append(entry)


def current_offset() -> tuple[str, int] | None:
    """Which record Faust takes a table write's partition from."""
    event = faust.current_event()
    return None if event is None else (event.message.topic, event.message.offset)


class Table(dict[str, Any]):
    def __init__(self, name: str, journal: Journal, contents: dict[str, Any] | None = None):
        super().__init__(contents or {})
        self.name, self.journal = name, journal

    def __setitem__(self, key: str, value: Any) -> None:
        self.journal.note("write", self.name, key, current_offset())
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.journal.note("delete", self.name, key, current_offset())
        super().__delitem__(key)


class Message:
    def __init__(self, journal: Journal, topic: str, partition: int, offset: int, headers: Any):
        self.journal = journal
        self.topic, self.partition, self.offset = topic, partition, offset
        self.tp = TP(topic, partition)
        self.headers = headers
        self.acked = False

    def incref(self) -> None:
        self.journal.note("hold", self.topic, self.offset)


class Record:
    """A Faust event as the stream hands it over (weak-referenceable)."""

    def __init__(
        self,
        journal: Journal,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: Any,
        headers: Any = (),
    ) -> None:
        self.message = Message(journal, topic, partition, offset, list(headers))
        self.key = key
        self.value = value if value is None or isinstance(value, bytes) else orjson.dumps(value)

    def ack(self) -> None:
        self.message.journal.note("release", self.message.topic, self.message.offset)


def event(event_id: str, customer_id: str, ts: float) -> dict[str, Any]:
    return {"id": event_id, "device_id": f"d-{customer_id}", "customer_id": customer_id, "ts": ts}


class Actor:
    """The plain-Python actor: one action per event, e2 is late, c1 has a timer."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def handle_events(
        self, state: CustomerState, events: list[dict[str, Any]], models: Any, emitted_at: float
    ) -> ActorOutput:
        customer_id = state.customer_id
        self.journal.note("actor", customer_id, [e["id"] for e in events])
        out = ActorOutput()
        for e in events:
            if e["id"] == "e2":
                out.late.append((e, "too late"))
                continue
            action = {
                "customer_id": customer_id,
                "action_id": f"a-{e['id']}",
                "type": "nudge",
                "evidence": {"event_ids": [e["id"]]},
            }
            out.actions.append(("crm.actions", action))
            out.processed += 1
        out.suppressed["cooldown"] = 1
        return out

    def advance(self, state: CustomerState, now: float, emitted_at: float) -> ActorOutput:
        self.journal.note("timer", state.customer_id, now)
        action = {"customer_id": state.customer_id, "action_id": "a-timer", "type": "silence"}
        return ActorOutput(actions=[("crm.actions", action)])

    def next_due(self, state: CustomerState) -> float | None:
        return 150.0 if state.customer_id == "c1" else None


class Models:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def observe_outcome(self, outcome: dict[str, Any]) -> None:
        self.journal.note("outcome", outcome["customer_id"])

    def snapshot(self) -> bytes:
        return b"models"

    def forget(self, keys: set[str]) -> int:
        self.journal.note("forget", sorted(keys))
        return 0


class Producer:
    """Sends are journaled; each acknowledgement resolves when the test says."""

    def __init__(self, journal: Journal, on_send: Any = None) -> None:
        self.journal = journal
        self.on_send = on_send
        self.acks: list[asyncio.Future[None]] = []
        self.buffer = SimpleNamespace(put=self._put, size=0)
        self.flushing: list[asyncio.Future[None]] = []
        self._producer = SimpleNamespace(flush=self._flush)

    async def send(
        self, topic: str, key: bytes, value: Any, partition: Any, timestamp: Any, headers: Any
    ) -> asyncio.Future[None]:
        self.journal.note("send", topic, key.decode(), value is None)
        if self.on_send is not None:
            self.on_send()
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    def acknowledge(self) -> None:
        for ack in self.acks:
            if not ack.done():
                self.journal.note("acknowledged")
                ack.set_result(None)

    def _put(self, marker: Any) -> None:
        self.journal.note("table writes flushed")
        self.flushing.append(asyncio.ensure_future(marker.message.channel.publish_message(None)))

    async def _flush(self) -> None:
        self.journal.note("client flushed")


class Consumer:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._committed_offset = {TP(EVENTS, 0): 10, TP(EVENTS, 1): 10}
        self._unacked_messages: set[Message] = set()
        self._read_offset: dict[TP, int | None] = {}
        self.on_seek: Any = None
        kafka = SimpleNamespace(seek=self._kafka_seek)
        self._thread = SimpleNamespace(
            call_thread=self._call_thread, _ensure_consumer=lambda: kafka
        )

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    async def _call_thread(self, method: Any, *args: Any) -> Any:
        await asyncio.sleep(0)
        if self.on_seek is not None:
            self.on_seek()
        return method(*args)

    def _kafka_seek(self, tp: TP, offset: int) -> None:
        self.journal.note("seek", tp.topic, tp.partition, offset)


class Observed:
    def __init__(self) -> None:
        self.count = 0
        self.stages: dict[str, Observed] = {}

    def observe(self, seconds: float) -> None:
        self.count += 1

    def labels(self, stage: str) -> Observed:
        return self.stages.setdefault(stage, Observed())


class Summaries:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.pending: dict[str, Any] = {}

    def mark(self, written: dict[str, Any]) -> None:
        self.journal.note("summaries", sorted(written))


def runtime(journal: Journal) -> Any:
    customers = Table("customers", journal, {"c3": encode_state(new_customer_state("c3"))})
    timers = Table("timers", journal, {"c9": orjson.dumps([1, 150.0])})
    model_checkpoints = Table("models", journal)
    return SimpleNamespace(
        settings=SimpleNamespace(
            worker=SimpleNamespace(checkpoint_interval_s=1.0, state_cache_size=1000),
            kafka=SimpleNamespace(
                customer_events_topic=EVENTS,
                customers_topic=PROFILES,
                outcomes_topic=OUTCOMES,
                erasure_topic=ERASURES,
                late_topic="iot.late",
                registry_topic="iot.registry",
                customer360_topic="crm.customer360",
            ),
        ),
        tables=SimpleNamespace(customers=customers),
        customers=customers,
        timers=timers,
        model_checkpoints=model_checkpoints,
        models_by_partition={},
        new_models=lambda: Models(journal),
        actor=Actor(journal),
        app=SimpleNamespace(
            consumer=Consumer(journal), producer=Producer(journal), should_stop=False
        ),
        on_actions=lambda actions: journal.note("counted", len(actions)),
        latencies=SimpleNamespace(
            event=Observed(), action=Observed(), stage=Observed(), checkpoint=Observed()
        ),
        summaries=Summaries(journal),
    )


def batch(journal: Journal) -> list[Record]:
    def stamped(watermark: float) -> list[tuple[str, bytes]]:
        mark = str(watermark).encode()
        return [(SOURCE_HEADER, b"ingest-a"), (WATERMARK_HEADER, mark), (PUBLISHED_HEADER, b"1")]

    request = encode_request(ErasureRequest(request_id="r1", requested_at=1.0))
    first, second = event("e1", "c1", 100.0), event("e2", "c2", 101.0)
    return [
        Record(journal, EVENTS, 0, 10, None, [first, second], stamped(100.0)),
        Record(journal, PROFILES, 0, 3, b"c1", {"customer_id": "c1", "tier": "gold"}),
        Record(journal, EVENTS, 0, 11, None, [event("e3", "c3", 102.0)], stamped(102.0)),
        Record(journal, EVENTS, 0, 14, None, [event("e5", "c1", 104.0)], stamped(104.0)),
        Record(journal, EVENTS, 1, 10, TICK_KEY, b"", stamped(200.0)),
        Record(journal, OUTCOMES, 0, 7, b"c2", {"customer_id": "c2", "label": 1}),
        Record(journal, OUTCOMES, 0, 8, None, {"customer_id": "nobody"}),
        Record(journal, ERASURES, 0, 2, b"c3", request),
    ]


async def acknowledging(producer: Producer, work: Any) -> None:
    """Run ``work``, Kafka acknowledging the sends whenever it waits for them."""
    running = asyncio.ensure_future(work)
    while not running.done():
        await asyncio.sleep(0.005)
        if not running.done() and any(not ack.done() for ack in producer.acks):
            journal = producer.journal
            journal.note("-- Kafka acknowledges")
            producer.acknowledge()
    await running


def counters(agent: Any) -> dict[str, Any]:
    figures = agent.stats.as_dict()
    del figures["last_batch_at"]
    return {name: value for name, value in figures.items() if value}


def started() -> tuple[Journal, Any, Any, list[Record]]:
    """A journal, the runtime around it, an actor, and one batch of records
    Faust holds unacknowledged (as it does for what it delivered)."""
    from agents.customer import CustomerAgent

    journal = Journal()
    rt = runtime(journal)
    agent = CustomerAgent(rt)
    records = batch(journal)
    rt.app.consumer._unacked_messages.update(r.message for r in records)
    return journal, rt, agent, records


async def test_a_batch_and_its_checkpoint_keep_their_documented_order() -> None:
    journal, rt, agent, records = started()
    consumer = rt.app.consumer

    await agent.handle_batch(records)
    assert journal == [
        # offset guard: 12 and 13 never came, 14 waits for them
        ("seek", EVENTS, 0, 12),
        # process: each customer in the order its first record came, then timers
        ("actor", "c1", ["e1"]),
        ("outcome", "c2"),
        ("actor", "c2", ["e2"]),
        ("delete", "customers", "c3", (ERASURES, 2)),
        ("forget", ["c3"]),
        ("timer", "c9", 200.0),  # partition 1's tick
        # send: not awaited until the checkpoint
        ("send", "crm.actions", "c1", False),
        ("send", "crm.actions", "c9", False),
        ("send", "iot.late", "d-c2", False),
        ("counted", 2),
        # hold: Faust's ack after the batch must not let it commit them
        ("hold", EVENTS, 10),
        ("hold", PROFILES, 3),
        ("hold", EVENTS, 11),
        ("hold", EVENTS, 10),
        ("hold", OUTCOMES, 7),
        ("hold", OUTCOMES, 8),
        ("hold", ERASURES, 2),
        ("summaries", ["c1", "c2", "c9"]),
    ]
    assert counters(agent) == {
        "profiles": 1,
        "outcomes": 1,
        "actions": 2,
        "suppressed": {"cooldown": 2},
        "batches": 1,
        "cached_states": 3,
        "timer_firings": 1,
        "offset_gaps": 2,
        "in_flight": 2,
        "erasures": 1,
    }
    # the stream records admitted, and the one that carried e1 (a-e1's trigger)
    assert (rt.latencies.event.count, rt.latencies.action.count) == (2, 1)
    assert [r.message.offset for r in records if r.message.acked] == [14]
    assert {m.offset for m in consumer._unacked_messages} == {2, 3, 7, 8, 10, 11}

    journal.clear()
    await asyncio.wait_for(acknowledging(rt.app.producer, agent.checkpoint()), 5)
    await asyncio.wait_for(acknowledging(rt.app.producer, agent.wait_released()), 5)
    assert journal == [
        # the batch's actions and late event acknowledged first
        ("-- Kafka acknowledges",),
        *[("acknowledged",)] * 3,
        # the erasure's tombstones, acknowledged
        ("send", PROFILES, "c3", True),
        ("send", "crm.customer360", "c3", True),
        ("-- Kafka acknowledges",),
        *[("acknowledged",)] * 2,
        # the models and the clocks, while the checkpoint holds the stream
        ("write", "models", "p0", (OUTCOMES, 7)),
        ("write", "models", "clock-p0", (OUTCOMES, 7)),
        ("write", "models", "clock-p1", (EVENTS, 10)),
        # then, in the background, the states (with their timers) once per
        # changed customer, each to its own partition's changelog
        ("write", "customers", "c1", (PROFILES, 3)),
        ("write", "timers", "c1", (PROFILES, 3)),
        ("write", "customers", "c2", (OUTCOMES, 7)),
        ("write", "customers", "c9", (EVENTS, 10)),
        ("write", "timers", "c9", (EVENTS, 10)),
        # those writes acknowledged, and only then the records released
        ("table writes flushed",),
        ("client flushed",),
        ("release", EVENTS, 10),
        ("release", PROFILES, 3),
        ("release", EVENTS, 11),
        ("release", EVENTS, 10),
        ("release", OUTCOMES, 7),
        ("release", OUTCOMES, 8),
        ("release", ERASURES, 2),
    ]
    assert counters(agent) == {
        "events": 1,
        "profiles": 1,
        "outcomes": 1,
        "actions": 2,
        "late": 1,
        "suppressed": {"cooldown": 2},
        "batches": 1,
        "checkpoints": 1,
        "cached_states": 3,
        "timer_firings": 1,
        "offset_gaps": 2,
        "erasures": 1,
    }


async def test_a_revocation_during_the_seek_gives_the_batch_back_unprocessed() -> None:
    journal, rt, agent, records = started()
    consumer = rt.app.consumer
    consumer.on_seek = agent.drop_uncheckpointed

    await agent.handle_batch(records)
    assert journal == [("seek", EVENTS, 0, 12)]
    assert consumer._unacked_messages == set(), "neither committed past nor waited for"
    assert counters(agent) == {"offset_gaps": 2}


async def test_a_revocation_while_actions_are_sent_gives_the_batch_back() -> None:
    journal, rt, agent, records = started()
    consumer = rt.app.consumer
    rt.app.producer.on_send = agent.drop_uncheckpointed

    await agent.handle_batch(records)
    assert [entry[0] for entry in journal if entry[0] in ("hold", "summaries")] == []
    assert consumer._unacked_messages == set()
    # nothing of the dropped batch is left for a checkpoint to write
    assert agent._held == [] and agent._dirty == {} and agent._dirty_partitions == {}
    assert not agent._batch_open and agent.stats.in_flight == 0


async def test_a_revocation_while_actions_are_acknowledged_writes_nothing() -> None:
    journal, rt, agent, records = started()
    consumer = rt.app.consumer
    await agent.handle_batch(records)

    journal.clear()
    checkpoint = asyncio.ensure_future(agent.checkpoint())
    await asyncio.sleep(0.01)
    agent.drop_uncheckpointed()
    rt.app.producer.acknowledge()
    await asyncio.wait_for(checkpoint, 5)
    assert journal == [("acknowledged",)] * 3
    assert consumer._unacked_messages == set()
    assert agent._releasing is None
