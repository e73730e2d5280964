"""Issue 4.3 on the live worker: the quality corpus of bad inputs, interleaved
with good events, goes through a real worker.

Nothing crashes it (the good event after every bad one is processed), nothing
disappears (every bad record is on the dead-letter topic with its exact bytes,
the reason and the topic/partition/offset it was read from), a duplicate is
dropped and counted, a late event lands on the late topic and changes nothing.

The corpus is the unit tests' (``tests/unit/quality/test_corpus.py``), with
their expected reasons; it was written for a 4096-byte payload limit, which the
worker is given here. Its clock is fixed a while ago, so its "far future" case
is rebuilt from the real clock.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from loadtest.harness import ConditionTimeout, wait_for
from tests.integration.kit import Namespace, TopicReader, read_all, register
from tests.integration.live_helpers import checkpointed_metrics, idempotent_producer
from tests.unit.quality.helpers import event_bytes
from tests.unit.quality.test_corpus import CORPUS

#: The registry of the unit tests' corpus (d9 stays unregistered).
DEVICES = {"d1": ("c1", "washer"), "d2": ("c1", "vehicle"), "d3": ("c2", "wearable")}


def live_corpus(now: float, ns: Namespace) -> list[tuple[str, str | None, bytes | None, str, str]]:
    """(name, topic or None for the shared one, raw value, reason code, reason)."""
    registry = ns.settings.kafka.registry_topic
    cases: list[tuple[str, str | None, bytes | None, str, str]] = [
        (name, None, raw, code, reason.replace("(iot.registry)", f"({registry})"))
        for name, raw, code, reason in CORPUS
        if name != "far future"
    ]
    device_topic = ns.device_topic("d1")
    future = now + 86400
    cases += [
        (
            "far future (real clock)",
            None,
            event_bytes(id="f1", ts=future),
            "future",
            f"ts {future} is ...",
        ),
        ("a Kafka null value", None, None, "decode", "empty payload"),
        (
            "another device's event on a device topic",
            device_topic,
            event_bytes(id="m1", ts=now, device_id="d2"),
            "schema",
            f"device_id 'd2' does not match its topic {device_topic}",
        ),
    ]
    return cases


def good_event(n: int, ts: float) -> dict[str, Any]:
    return {
        "id": f"g{n}",
        "ts": ts,
        "device_id": "d1",
        "kind": "telemetry",
        "temperature": 20.0 + n,
    }


def reason_matches(reason: str, expected: str) -> bool:
    """Exact, or a prefix when the expected text ends with '...' (library wording)."""
    return reason.startswith(expected[:-3]) if expected.endswith("...") else reason == expected


async def test_bad_inputs_are_dead_lettered_and_the_worker_keeps_going(
    namespace: Namespace,
) -> None:
    namespace.env["IOTCRM_QUALITY_MAX_PAYLOAD_BYTES"] = "4096"
    k = namespace.settings.kafka
    producer = await idempotent_producer(k.bootstrap)
    try:
        await register(producer, namespace, DEVICES)
        worker = namespace.worker().start()
        await worker.wait_ready()

        now = time.time()
        cases = live_corpus(now, namespace)
        start = now - 600
        # Bad record, good event, bad record, good event, ... all of d1 in one
        # partition of the shared topic (key d1), so the order is the one sent.
        positions: dict[tuple[str, int, int], tuple[Any, ...]] = {}
        goods = []
        for n, case in enumerate(cases):
            _, topic, raw, _, _ = case
            sent = await producer.send_and_wait(topic or k.telemetry_topic, raw, key=b"d1")
            positions[(sent.topic, sent.partition, sent.offset)] = case
            good = good_event(n, start + n)
            goods.append(good)
            await producer.send_and_wait(k.telemetry_topic, orjson.dumps(good), key=b"d1")
        # A duplicate (the same bytes again), then an event behind its device's
        # stream time by more than the allowed lateness (30 s).
        await producer.send_and_wait(k.telemetry_topic, orjson.dumps(goods[3]), key=b"d1")
        late = good_event(len(cases), goods[-1]["ts"] - 120)
        await producer.send_and_wait(k.telemetry_topic, orjson.dumps(late), key=b"d1")
        last = good_event(len(cases) + 1, goods[-1]["ts"] + 1)
        await producer.send_and_wait(k.telemetry_topic, orjson.dumps(last), key=b"d1")
        goods.append(last)
    finally:
        await producer.stop()

    def settled() -> dict[str, Any] | None:
        assert worker.alive(), f"worker died; log tail:\n{worker.log_tail()}"
        state = worker.get("/customers/c1") or {}
        return state if state.get("counts", {}).get("events") == len(goods) else None

    try:
        state = await wait_for(settled, timeout=60, what=f"{len(goods)} good events of c1")
    except ConditionTimeout as exc:
        seen = (worker.get("/customers/c1") or {}).get("devices")
        raise AssertionError(f"{exc}; metrics {worker.metrics()}; devices {seen}") from None
    device = state["devices"]["d1"]
    assert device["temperature"] == last["temperature"]
    assert device["counts"] == {"ok": len(goods), "duplicate": 1, "late": 1}

    async with TopicReader(k.bootstrap, [k.deadletter_topic]) as reader:

        async def all_letters() -> list[Any] | None:
            records = await reader.poll()
            return records if len(records) >= len(cases) else None

        await wait_for(all_letters, timeout=30, what=f"{len(cases)} dead letters")
    letters = [orjson.loads(record.value) for record in reader.records]
    assert len(letters) == len(cases), "one dead letter per bad record, no more"
    unmatched = []
    for letter in letters:
        source = letter["source"]
        name, _, raw, code, reason = positions.pop(
            (source["topic"], source["partition"], source["offset"])
        )
        assert base64.b64decode(letter["original_b64"]) == (raw or b""), name
        if letter["reason_code"] != code or not reason_matches(letter["reason"], reason):
            unmatched.append((name, letter["reason_code"], letter["reason"], code, reason))
    assert positions == {}, "every bad record is dead-lettered"
    assert unmatched == [], "reasons as in the unit tests' corpus"

    (late_record,) = await read_all(k.bootstrap, k.late_topic)
    envelope = orjson.loads(late_record.value)
    assert envelope["reason_code"] == "late"
    assert envelope["event"]["id"] == late["id"]
    assert envelope["event"]["customer_id"] == "c1"
    assert "behind the stream time" in envelope["reason"]

    metrics = await checkpointed_metrics(worker, len(goods) + 2)
    assert metrics["ingest"]["deadlettered"] == len(cases)
    assert metrics["ingest"]["accepted"] == len(goods) + 2
    assert metrics["actor"]["duplicates"] == 1
    assert metrics["actor"]["late"] == 1
    assert metrics["actor"]["events"] == len(goods)
    assert worker.alive()

    # Nothing left to read, for ingest and for the actor.
    def caught_up() -> bool:
        figures = worker.metrics() or {}
        return (
            (figures.get("ingest") or {}).get("lag") == 0 == (figures.get("actor") or {}).get("lag")
        )

    await wait_for(caught_up, timeout=30, what="no consumer lag")

    # The same counters for Prometheus, in its text format.
    scraped = worker.text("/metrics") or ""
    assert f"iotcrm_ingest_deadlettered_total {float(len(cases))}" in scraped, scraped
    assert f"iotcrm_actor_events_total {float(len(goods))}" in scraped
    assert "# TYPE iotcrm_event_loop_lag_seconds gauge" in scraped
    assert 'iotcrm_consumer_lag_records{stage="ingest"}' in scraped
