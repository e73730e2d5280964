"""The actor's checkpoint without a broker: it must not hold the event loop.

A checkpoint writes every customer changed since the last one; with thousands
of them that is seconds of synchronous work, during which heartbeats, fetch
hand-overs and the web views would wait (issue 10.2: never more than 0.5 s).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from agents.prometheus import Latencies


class Anchor:
    """A record of a customer's partition (weak-referenceable, as Faust's events are)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


class Message:
    """A consumed record's message, as Faust tracks it until acknowledged (hashable)."""

    acked = False
    partition = 0


class SlowTable(dict):
    """A table whose every write takes ``write_s`` of synchronous work."""

    def __init__(self, write_s: float) -> None:
        super().__init__()
        self.write_s = write_s

    def __setitem__(self, key: str, value: Any) -> None:
        time.sleep(self.write_s)  # stands for encoding and RocksDB: it blocks the loop
        super().__setitem__(key, value)


async def wait_until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0)


def fake_runtime(customers: dict) -> Any:
    """What the customer agent reads of the worker's runtime, without Faust."""
    return SimpleNamespace(
        settings=SimpleNamespace(
            worker=SimpleNamespace(checkpoint_interval_s=1.0, state_cache_size=1000),
            kafka=SimpleNamespace(customer_events_topic="events"),
        ),
        tables=SimpleNamespace(customers=customers),
        timers={},
        models_by_partition={},
        model_checkpoints={},
        app=SimpleNamespace(
            consumer=SimpleNamespace(_unacked_messages=set(), _committed_offset={}),
            producer=None,
        ),
        actor=SimpleNamespace(next_due=lambda state: None),
        latencies=Latencies(),
    )


async def test_a_checkpoint_of_many_customers_lets_the_loop_breathe() -> None:
    from agents.customer import CustomerAgent
    from engine.loop_lag import WORK_BUDGET_S
    from tables.state import new_customer_state

    customers = SlowTable(write_s=0.01)
    runtime = fake_runtime(customers)
    agent = CustomerAgent(runtime)
    anchor = Anchor(partition=0)
    for n in range(30):  # 30 x 10 ms = 300 ms of writes
        customer_id = f"c{n}"
        agent._states[customer_id] = new_customer_state(customer_id)
        agent._dirty[customer_id] = anchor

    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beating = asyncio.ensure_future(heartbeat())
    await asyncio.sleep(0)
    try:
        await agent.checkpoint()
        # the states are written in the background, in slices
        await asyncio.wait_for(wait_until(lambda: len(customers) == 30), 5)
    finally:
        beating.cancel()
        if agent._releasing is not None:
            agent._releasing.cancel()
        await asyncio.gather(beating, agent._releasing, return_exceptions=True)
    assert max(gaps) < WORK_BUDGET_S + 0.03, f"the loop waited {max(gaps):.3f} s at once"


async def test_a_partitions_time_is_checkpointed_and_a_replay_starts_from_its_own() -> None:
    """Time for idle keys moves with the records processed; a rebalance
    replays the records from the committed offset, so the time must go back
    to what the checkpoint at that offset saw, or timers fire ahead of
    replayed events (the chaos suite saw silences invented that way). The
    committed offset can trail the newest checkpoint, whose clock write may
    have reached its changelog when the states' did not (the broker restart
    closed day windows early that way): the replay takes the clock of the
    checkpoint it starts from."""
    from agents.customer import CustomerAgent
    from engine.watermark import UNKNOWN
    from tables.state import new_customer_state

    runtime = fake_runtime({})
    agent = CustomerAgent(runtime)
    record = Anchor(partition=3)

    async def checkpoint_at(position: int, mark: float, sent: float) -> None:
        agent._clock(3, record).heard("ingest-a", mark, produced_at=sent)
        agent._next_offset["events", 3] = position
        agent._states["c1"] = new_customer_state("c1")
        agent._dirty["c1"] = record
        await agent.checkpoint()
        if agent._releasing is not None:
            agent._releasing.cancel()
            await asyncio.gather(agent._releasing, return_exceptions=True)
            agent._releasing = None

    await checkpoint_at(40, 1000.0, sent=10.0)
    assert orjson.loads(runtime.model_checkpoints["clock-p3"]) == {
        "checkpoints": [[40, {"ingest-a": [1000.0, 10.0, 10.0]}]]
    }
    await checkpoint_at(60, 5000.0, sent=11.0)
    committed = runtime.app.consumer._committed_offset
    for replay_from, expected in ((40, 1000.0), (60, 5000.0), (10, UNKNOWN)):
        agent.drop_uncheckpointed()
        committed[TP("events", 3)] = replay_from
        assert agent._clock(3, record).now() == expected, replay_from


def test_an_unknown_watermark_survives_the_checkpoint() -> None:
    """An ingest that knows no time yet stamps -inf (it holds time back);
    JSON writes it as null, and the restored clock still holds."""
    from engine.watermark import UNKNOWN, PartitionClock

    clock = PartitionClock()
    clock.heard("ingest-a", 900.0, produced_at=1.0)
    clock.heard("ingest-b", UNKNOWN, produced_at=2.0)
    again = PartitionClock()
    again.restore(orjson.loads(orjson.dumps(clock.snapshot())))
    assert again.now() == UNKNOWN


async def test_a_state_is_written_as_its_checkpoint_found_it_whatever_batches_do_next() -> None:
    """The stream goes on while a checkpoint's writer writes the states: a
    batch that touches a customer not yet written writes the checkpoint's
    state first, and the next checkpoint writes what the last one left."""
    from agents.customer import CustomerAgent
    from tables.state import decode_state, new_customer_state

    customers: dict[str, bytes] = {}
    agent = CustomerAgent(fake_runtime(customers))
    anchor = Anchor(partition=0)
    for customer_id in ("c1", "c2"):
        agent._states[customer_id] = new_customer_state(customer_id)
        agent._dirty[customer_id] = anchor
    await agent.checkpoint()
    assert customers == {}, "the checkpoint left the writes to its writer"

    # A batch takes c1 before the writer got to it, and changes it.
    agent._state("c1", anchor).last_event_at = 5.0
    agent._dirty["c1"] = anchor
    assert decode_state(customers["c1"]).last_event_at is None, "written as checkpointed"

    # The next checkpoint comes before the writer ran: c2 goes first, then c1 again.
    agent._states["c3"] = new_customer_state("c3")
    agent._dirty["c3"] = anchor
    writer = agent._releasing
    await agent.checkpoint()
    assert list(customers) == ["c1", "c2"]
    await asyncio.wait_for(wait_until(lambda: len(customers) == 3), 5)
    assert decode_state(customers["c1"]).last_event_at == 5.0
    for running in (writer, agent._releasing):
        assert running is not None
        running.cancel()  # the release needs Faust's producer
    await asyncio.gather(writer, agent._releasing, return_exceptions=True)


async def test_a_rebalance_stops_the_writer_and_its_records_come_again() -> None:
    from agents.customer import CustomerAgent
    from tables.state import new_customer_state

    customers: dict[str, bytes] = {}
    runtime = fake_runtime(customers)
    agent = CustomerAgent(runtime)
    anchor = Anchor(partition=0)
    record = Anchor(partition=0)
    record.message = Message()
    runtime.app.consumer._unacked_messages.add(record.message)
    agent._held = [record]  # type: ignore[list-item]
    for customer_id in ("c1", "c2"):
        agent._states[customer_id] = new_customer_state(customer_id)
        agent._dirty[customer_id] = anchor
    await agent.checkpoint()
    agent.drop_uncheckpointed()
    await asyncio.wait_for(agent.wait_released(), 5)
    assert customers == {}, "nothing of the revoked partitions' checkpoint is written"
    assert record.message.acked and not runtime.app.consumer._unacked_messages, "given back"


async def test_the_writer_ends_cleanly_when_a_batch_wrote_its_last_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents.customer import CustomerAgent
    from tables.state import new_customer_state

    async def flushed(producer: Any) -> None:
        return None

    monkeypatch.setattr("agents.customer.flush_table_writes", flushed)
    customers = SlowTable(write_s=0.01)  # each write outlasts a slice: the writer yields
    agent = CustomerAgent(fake_runtime(customers))
    anchor = Anchor(partition=0)
    for customer_id in ("c1", "c2"):
        agent._states[customer_id] = new_customer_state(customer_id)
        agent._dirty[customer_id] = anchor
    agent._held = [anchor]  # type: ignore[list-item]
    anchor.ack = lambda: None  # type: ignore[attr-defined]

    async def batch() -> None:  # takes c2 while the writer yields after c1
        while len(customers) < 1:
            await asyncio.sleep(0)
        agent._state("c2", anchor)

    batching = asyncio.ensure_future(batch())
    await agent.checkpoint()
    await asyncio.wait_for(batching, 5)
    await asyncio.wait_for(agent.wait_released(), 5)  # raises if the writer failed
    assert sorted(customers) == ["c1", "c2"]
    assert agent.stats.checkpoints == 1
