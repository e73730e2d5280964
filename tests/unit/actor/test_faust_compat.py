"""The private Faust accesses of ``agents.faust_compat``, against the installed
Faust: the version check, the repairs and the readings the actor makes.

The recovery tests also pin the flaw itself on Faust's own ``Recovery``: when
an upgrade fixes it upstream, that test fails and the repair can go.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.tables.recovery import Recovery
from faust.transport.producer import ProducerBuffer

import agents.faust_compat
from agents.faust_compat import (
    AIOKAFKA_VERSION,
    FAUST_VERSION,
    SeekFirstRecovery,
    SeekFirstTableManager,
    UnsupportedVersion,
    bounded_flush,
    check_versions,
    flush_table_writes,
    never_fill_gaps,
)

STREAM_TP = faust.types.TP("events", 0)
CHANGELOG_TP = faust.types.TP("app-customers-changelog", 0)


def test_the_repairs_were_written_for_the_installed_faust() -> None:
    assert faust.__version__ == FAUST_VERSION, (
        "Faust was upgraded: re-read agents/faust_compat.py against the new "
        "Recovery and ProducerBuffer, then update FAUST_VERSION"
    )


def test_the_releases_it_was_written_for_are_the_ones_pyproject_pins() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    pins = dict(
        requirement.split("==")
        for requirement in pyproject["project"]["dependencies"]
        if "==" in requirement
    )
    assert (pins["faust-streaming"], pins["aiokafka"]) == (FAUST_VERSION, AIOKAFKA_VERSION), (
        "a pin moved: re-read agents/faust_compat.py against the new release, "
        "then update its FAUST_VERSION and AIOKAFKA_VERSION"
    )


def test_the_releases_it_was_written_for_pass_the_check() -> None:
    check_versions({"faust-streaming": FAUST_VERSION, "aiokafka": AIOKAFKA_VERSION})


@pytest.mark.parametrize(
    ("installed", "named"),
    [
        ({"faust-streaming": "0.16.0"}, "faust-streaming 0.16.0 (written for 0.15.3)"),
        ({"aiokafka": "0.13.0"}, "aiokafka 0.13.0 (written for 0.14.0)"),
        ({"faust-streaming": None}, "faust-streaming None (written for 0.15.3)"),
    ],
)
def test_another_release_is_refused_by_name(installed: dict[str, Any], named: str) -> None:
    releases = {"faust-streaming": FAUST_VERSION, "aiokafka": AIOKAFKA_VERSION, **installed}
    found = {name: version for name, version in releases.items() if version is not None}
    with pytest.raises(UnsupportedVersion) as refused:
        check_versions(found)
    message = str(refused.value)
    assert named in message
    assert "faust_compat.py" in message and "FAUST_VERSION" in message  # what to do


def test_importing_it_with_another_faust_installed_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs at import, before any repair can be installed."""
    monkeypatch.setattr(faust, "__version__", "0.16.0")
    path = agents.faust_compat.__file__
    spec = importlib.util.spec_from_file_location("faust_compat_on_another_faust", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(RuntimeError, match=r"faust-streaming 0\.16\.0 \(written for 0\.15\.3\)"):
        spec.loader.exec_module(module)
    assert not hasattr(module, "survive_commit_failures"), "it stopped at the check"


class RecordingConsumer:
    """The consumer calls recovery makes, in order; the seek yields to the loop."""

    def __init__(self, calls: list[str], committed: dict[Any, int] | None = None) -> None:
        self.calls = calls
        self.committed = {STREAM_TP: 7} if committed is None else committed
        self._committed_offset: dict[Any, int] = {}

    def assignment(self) -> set[Any]:
        return {STREAM_TP, CHANGELOG_TP}

    async def perform_seek(self) -> None:
        await asyncio.sleep(0)  # a fetch could run here, as it does on a broker
        self.calls.append("seek")
        self._committed_offset.update(self.committed)

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return dict.fromkeys(tps, 3)

    async def seek(self, tp: Any, offset: int) -> None:
        self.calls.append(f"seek {tp.topic} to {offset}")

    def resume_partitions(self, tps: set[Any]) -> None:
        self.calls.append(f"resume_partitions {sorted(tp.topic for tp in tps)}")

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


def app_recording(
    calls: list[str], recovery_class: type[Recovery], committed: dict[Any, int] | None = None
) -> Any:
    app = faust.App("unit-recovery", TableManager=SeekFirstTableManager)
    app.consumer = RecordingConsumer(calls, committed)
    fetcher = SimpleNamespace(maybe_start=lambda: asyncio.sleep(0))
    app._fetcher = fetcher  # type: ignore[attr-defined]
    resume = app.flow_control.resume

    def flow_control_resume() -> None:
        calls.append("flow_control.resume (clears the stream queues)")
        resume()

    app.flow_control.resume = flow_control_resume  # type: ignore[method-assign]
    recovery = recovery_class(app, app.tables)
    recovery._is_changelog_tp = lambda tp: tp == CHANGELOG_TP  # type: ignore[method-assign]
    return recovery


def test_the_app_recovers_with_the_seek_first_recovery() -> None:
    app = faust.App("unit-recovery-class", TableManager=SeekFirstTableManager)
    assert isinstance(app.tables.recovery, SeekFirstRecovery)


@pytest.mark.parametrize("step", ["on_recovery_completed", "_resume_streams"])
async def test_stream_partitions_are_seeked_before_they_are_resumed(step: str) -> None:
    calls: list[str] = []
    recovery = app_recording(calls, SeekFirstRecovery)
    await getattr(recovery, step)(generation_id=0)
    assert calls == [
        "seek",
        "resume_partitions ['events']",
        "flow_control.resume (clears the stream queues)",
        "resume_flow",
    ]


async def test_a_stream_partition_without_a_commit_is_read_from_its_earliest_record() -> None:
    calls: list[str] = []
    recovery = app_recording(calls, SeekFirstRecovery, committed={})
    await recovery.on_recovery_completed(generation_id=0)
    # Not left at its end: records behind the last checkpoint come again.
    assert calls[:3] == ["seek", "seek events to 3", "resume_partitions ['events']"]


@pytest.mark.parametrize("step", ["on_recovery_completed", "_resume_streams"])
async def test_faust_itself_still_resumes_the_partitions_before_the_seek(step: str) -> None:
    calls: list[str] = []
    recovery = app_recording(calls, Recovery)
    await getattr(recovery, step)(generation_id=0)
    # Records fetched during the seek are cleared from the queues by the flow
    # resume, and never fetched again (faust-streaming/faust#596).
    assert calls.index("resume_partitions ['events']") < calls.index("seek")


class SlowChannel:
    """Publishes a record in 0.3 s: longer than Faust's flush waits for progress."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.published: list[int] = []
        self.all_published = asyncio.Event()

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(0.3)
        self.published.append(fut.number)
        if len(self.published) == self.expected:
            self.all_published.set()


def buffered_record(channel: SlowChannel, number: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(channel=channel), number=number)


async def started_buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


async def test_faust_flush_returns_while_table_writes_are_still_buffered() -> None:
    channel = SlowChannel(expected=3)
    buffer = await started_buffer()
    try:
        for number in range(3):
            buffer.put(buffered_record(channel, number))
        await buffer.flush()
        assert len(channel.published) < 3
        await channel.all_published.wait()
    finally:
        await buffer.stop()


async def test_flush_table_writes_returns_once_every_write_is_handed_over() -> None:
    channel = SlowChannel(expected=3)
    buffer = await started_buffer()
    client_flushes: list[list[int]] = []

    async def client_flush() -> None:
        client_flushes.append(list(channel.published))

    producer = SimpleNamespace(buffer=buffer, _producer=SimpleNamespace(flush=client_flush))
    try:
        for number in range(3):
            buffer.put(buffered_record(channel, number))
        await flush_table_writes(producer)
        assert channel.published == [0, 1, 2]
        # ... and only then the Kafka client is flushed, so it holds them all.
        assert client_flushes == [[0, 1, 2]]
    finally:
        await buffer.stop()


class BusyChannel(SlowChannel):
    """Publishes a record in 20 ms: under a steady load the buffer never empties."""

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(0.02)
        self.published.append(fut.number)


@pytest.mark.parametrize("flush", ["flush_table_writes", "the producer's flush, bounded"])
async def test_flush_table_writes_does_not_wait_for_the_writes_made_after_it(flush: str) -> None:
    channel = BusyChannel(expected=0)
    buffer = await started_buffer()
    client_flushes: list[list[int]] = []

    async def client_flush() -> None:
        client_flushes.append(list(channel.published))

    async def faust_flush() -> None:  # waits until the buffer is empty
        await buffer.flush()
        await client_flush()

    async def keep_writing() -> None:
        for number in itertools.count(3):
            buffer.put(buffered_record(channel, number))
            await asyncio.sleep(0.01)

    producer = SimpleNamespace(
        buffer=buffer, flush=faust_flush, _producer=SimpleNamespace(flush=client_flush)
    )
    for number in range(3):
        buffer.put(buffered_record(channel, number))
    writer = asyncio.create_task(keep_writing())
    try:
        if flush == "flush_table_writes":
            await asyncio.wait_for(flush_table_writes(producer), timeout=5)
        else:
            bounded_flush(producer)
            bounded_flush(producer)  # idempotent
            await asyncio.wait_for(producer.flush(), timeout=5)
        assert client_flushes and client_flushes[0][:3] == [0, 1, 2]
        assert buffer.size > 0, "writes kept coming: the buffer never emptied"
    finally:
        writer.cancel()
        while not buffer.pending.empty():  # a buffer stops only once empty
            buffer.pending.get_nowait()
        await buffer.stop()


class Message(SimpleNamespace):
    def __hash__(self) -> int:
        return id(self)


def stream_message(offset: int, partition: int = 0) -> Any:
    tp = faust.types.TP("events", partition)
    return Message(topic="events", partition=partition, offset=offset, tp=tp, acked=False)


def agent_with_committed(committed: dict[Any, int]) -> Any:
    from agents.customer import CustomerAgent

    consumer = SimpleNamespace(_committed_offset=committed, _unacked_messages=set())
    return CustomerAgent(SimpleNamespace(app=SimpleNamespace(consumer=consumer)))


def test_records_past_a_hole_are_left_unprocessed_and_the_partition_sought_back() -> None:
    agent = agent_with_committed({faust.types.TP("events", 0): 5})
    consumer = agent.rt.app.consumer
    rewinds: dict[int, tuple[int, bool]] = {}
    arrived = [stream_message(offset) for offset in (5, 6, 9, 10)]
    consumer._unacked_messages.update(arrived)

    admitted = [m.offset for m in arrived if agent._in_sequence(m, rewinds)]

    assert admitted == [5, 6]
    assert rewinds == {0: (7, True)}
    assert agent.stats.offset_gaps == 2
    # Never acknowledged, so no commit can pass them; they come again.
    assert [m.acked for m in arrived] == [False, False, True, True]
    assert consumer._unacked_messages == set(arrived[:2])
    # A later batch still bringing records fetched before the seek seeks again.
    stale: dict[int, tuple[int, bool]] = {}
    assert not agent._in_sequence(stream_message(11), stale)
    assert stale == {0: (7, False)}
    assert agent.stats.offset_gaps == 2  # one hole, counted once
    again = [stream_message(offset) for offset in (7, 8, 9, 10)]
    assert [m.offset for m in again if agent._in_sequence(m, {})] == [7, 8, 9, 10]


def test_the_first_record_after_an_assignment_must_be_at_the_committed_offset() -> None:
    agent = agent_with_committed({faust.types.TP("events", 1): 4})
    rewinds: dict[int, tuple[int, bool]] = {}
    assert not agent._in_sequence(stream_message(365, partition=1), rewinds)
    assert rewinds == {1: (4, True)}
    assert agent.stats.offset_gaps == 361


def test_a_partition_without_a_commit_starts_anywhere() -> None:
    agent = agent_with_committed({})
    assert agent._in_sequence(stream_message(12), {})


async def test_faust_is_not_told_to_commit_across_holes_in_the_guarded_topics() -> None:
    filled: list[tuple[str, int, int]] = []

    async def add_gap(tp: Any, offset_from: int, offset_to: int) -> None:
        filled.append((tp.topic, offset_from, offset_to))

    consumer = SimpleNamespace(_add_gap=add_gap)
    never_fill_gaps(consumer, {"events"})
    wrapped = consumer._add_gap
    never_fill_gaps(consumer, {"events"})  # a restarted agent: not wrapped twice
    assert consumer._add_gap is wrapped
    await consumer._add_gap(faust.types.TP("events", 0), 5, 365)
    await consumer._add_gap(faust.types.TP("crm.customers", 0), 3, 9)
    assert filled == [("crm.customers", 3, 9)]


async def test_seeking_back_starts_at_the_logs_start_when_retention_deleted_the_hole() -> None:
    agent = agent_with_committed({})
    sought: list[tuple[Any, int]] = []

    async def earliest_offsets(*tps: Any) -> dict[Any, int]:
        return {tp: 300 for tp in tps}

    async def call_thread(method: Any, *args: Any) -> Any:
        return method(*args)

    def seek(tp: Any, offset: int) -> None:
        sought.append((tp, offset))

    consumer = agent.rt.app.consumer
    consumer.earliest_offsets = earliest_offsets
    # The seek runs in the Kafka client's own thread (faust_compat.seek).
    kafka_client = SimpleNamespace(seek=seek)
    consumer._thread = SimpleNamespace(
        call_thread=call_thread, _ensure_consumer=lambda: kafka_client
    )
    consumer._read_offset = {}
    tp = faust.types.TP("events", 0)
    await agent._seek_back(tp, 4)
    await agent._seek_back(tp, 320)
    assert sought == [(tp, 300), (tp, 320)]
    assert consumer._read_offset == {tp: 320}
    assert agent._in_sequence(stream_message(320), {})


@pytest.mark.parametrize("stopping", [True, False])
async def test_on_a_clean_stop_records_the_actor_never_got_are_given_back(stopping: bool) -> None:
    """Records left in the stream's batch buffer when the worker stops never
    reach the actor; Faust would wait for their acknowledgement until killed."""
    agent = agent_with_committed({})
    agent.rt.app.should_stop = stopping
    consumer = agent.rt.app.consumer
    buffered = [stream_message(offset) for offset in (7, 8)]
    consumer._unacked_messages.update(buffered)
    await agent.checkpoint_before_commit()
    if stopping:
        assert consumer._unacked_messages == set()
        assert all(message.acked for message in buffered), "their own ack changes nothing"
    else:  # a rebalance: the stream goes on and delivers them
        assert consumer._unacked_messages == set(buffered)


class RefusingKafkaConsumer:
    """aiokafka's consumer as Faust's thread holds it: every commit refused."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.asked: list[dict[Any, Any]] = []

    async def commit(self, offsets: dict[Any, Any]) -> None:
        self.asked.append(offsets)
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        "CommitFailedError('generation moved on')",
        "NodeNotReadyError('coordinator')",
        "RequestTimedOutError()",
        "IllegalStateError('not assigned')",
    ],
)
async def test_a_refused_commit_is_counted_not_a_crash(error: str) -> None:
    from aiokafka import errors
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from agents.faust_compat import survive_commit_failures

    exc = eval(error, vars(errors))  # one of aiokafka's own errors
    original = AIOKafkaConsumerThread._commit
    failures: list[BaseException] = []
    try:
        survive_commit_failures(failures.append)
        kafka = RefusingKafkaConsumer(exc)
        crashed: list[BaseException] = []

        async def crash(reason: BaseException) -> None:
            crashed.append(reason)

        thread = SimpleNamespace(
            _ensure_consumer=lambda: kafka,
            assignment=lambda: {STREAM_TP},
            tp_last_committed_at={},
            crash=crash,
        )
        committed = await AIOKafkaConsumerThread._commit(thread, {STREAM_TP: 42})
    finally:
        AIOKafkaConsumerThread._commit = original
    assert committed is False
    assert failures == [exc] and crashed == []
    assert [{tp.partition: meta.offset for tp, meta in asked.items()} for asked in kafka.asked] == [
        {0: 42}
    ]


async def test_faust_itself_crashes_on_a_refused_commit() -> None:
    # The flaw the repair exists for: when an upgrade fixes it upstream, this
    # test fails and survive_commit_failures can go.
    from aiokafka.errors import CommitFailedError
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    crashed: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashed.append(reason)

    kafka = RefusingKafkaConsumer(CommitFailedError("generation moved on"))
    thread = SimpleNamespace(
        _ensure_consumer=lambda: kafka,
        assignment=lambda: {STREAM_TP},
        tp_last_committed_at={},
        crash=crash,
        log=SimpleNamespace(exception=lambda *a, **k: None),
    )
    commit = AIOKafkaConsumerThread._commit
    faust_commit = getattr(commit, "_iotcrm_original", commit)  # the repair may be in place
    assert await faust_commit(thread, {STREAM_TP: 42}) is False
    assert len(crashed) == 1


async def _worker_consumer_fetch_wait_ms() -> int:
    """The fetch wait of the Kafka consumer Faust's worker would create now."""
    app = faust.App("fetch-wait", broker="kafka://127.0.0.1:1")
    kafka = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        return int(kafka._fetch_max_wait_ms)
    finally:
        await kafka.stop()  # never started: releases its client


async def test_faust_lets_the_broker_hold_a_worker_fetch_for_1_5_s() -> None:
    # The flaw bound_fetch_wait exists for: when an upgrade makes the wait
    # configurable or short, this test fails and the repair can go.
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    patched = AIOKafkaConsumerThread._create_worker_consumer
    AIOKafkaConsumerThread._create_worker_consumer = getattr(  # type: ignore[method-assign]
        patched, "_iotcrm_original", patched
    )
    try:
        assert await _worker_consumer_fetch_wait_ms() == 1500
    finally:
        AIOKafkaConsumerThread._create_worker_consumer = patched  # type: ignore[method-assign]


async def test_the_worker_consumers_fetch_wait_is_bounded_and_rebounded() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from agents.faust_compat import bound_fetch_wait

    original = AIOKafkaConsumerThread._create_worker_consumer
    try:
        bound_fetch_wait(20)
        assert await _worker_consumer_fetch_wait_ms() == 20
        bound_fetch_wait(7)  # replaces the bound, does not wrap the first patch
        assert await _worker_consumer_fetch_wait_ms() == 7
    finally:
        AIOKafkaConsumerThread._create_worker_consumer = original  # type: ignore[method-assign]
