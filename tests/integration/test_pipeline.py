"""The end-to-end slice on the real broker and Cassandra: per-device topics by
pattern -> ingest -> customer actor -> actions on Kafka and in Cassandra;
bad input -> dead-letter topic; a device topic created later is picked up."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import jsonschema
import orjson
import pytest

from engine.actions import action_schema
from engine.rules import action_id
from engine.store.cassandra import CassandraStore
from loadtest.harness import wait_for
from tests.integration.kit import Namespace, TopicReader, register, send_json
from tests.integration.live_helpers import checkpointed_metrics

HOT_RULE = """\
- id: hot-device
  version: 3
  key: device
  description: A support case when a device runs hot
  when:
    condition: "event.kind == 'telemetry' and event.temperature > 80"
  action:
    type: support_case
    payload:
      reason: "temperature {{ round(event.temperature, 1) }} C"
      device: "{{ event.device_id }}"
"""


@pytest.fixture
def hot_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    (path / "hot.yaml").write_text(HOT_RULE)
    return path


def telemetry(event_id: str, device_id: str, ts: float, **readings: object) -> dict:
    return {"id": event_id, "ts": ts, "device_id": device_id, "kind": "telemetry", **readings}


async def test_events_become_actions_on_kafka_and_in_cassandra(
    namespace: Namespace, producer, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    k = namespace.settings.kafka
    await register(producer, namespace, {"d1": ("c1", "compressor"), "d2": ("c1", "washer")})
    worker = namespace.worker().start()
    await worker.wait_ready()

    now = time.time() - 60
    first_sent_at = time.time()
    good = [
        telemetry("e1", "d1", now, temperature=25.0),
        # 190 F is 87.8 C: fires only because ingest normalised the unit.
        telemetry("e2", "d1", now + 1, temperature=190.0, temperature_unit="F"),
        telemetry("e3", "d2", now + 2, temperature={"value": 360.15, "unit": "K"}),
    ]
    bad = [
        b"{not json",
        orjson.dumps({"id": "x1", "device_id": "d1", "kind": "telemetry"}),  # no ts
        orjson.dumps(telemetry("x2", "d1", now, temperature="hot")),  # wrong type
        orjson.dumps(telemetry("x3", "ghost", now, temperature=99.0)),  # unregistered
    ]
    for event in good[:1]:
        await send_json(producer, namespace.device_topic(event["device_id"]), None, event)
    for raw in bad[:3]:
        await send_json(producer, namespace.device_topic("d1"), None, raw)
    await send_json(producer, namespace.device_topic("ghost"), None, bad[3])
    for event in good[1:]:
        await send_json(producer, namespace.device_topic(event["device_id"]), None, event)

    async with TopicReader(k.bootstrap, [namespace.action_topic("support_case")]) as actions:
        records = await wait_for(
            lambda: _at_least(actions, 2), timeout=60, what="two support actions"
        )
    by_device = {orjson.loads(r.value)["device_id"]: r for r in records}
    assert set(by_device) == {"d1", "d2"}, "the worker kept processing good events after bad ones"
    record = by_device["d1"]
    assert record.key == b"c1", "actions are keyed by customer_id"
    action = orjson.loads(record.value)
    jsonschema.validate(action, action_schema())
    assert action["type"] == "support_case"
    assert action["customer_id"] == "c1"
    assert action["rule"] == {"id": "hot-device", "version": 3}
    assert action["at"] == pytest.approx(now + 1)
    assert action["payload"] == {"reason": "temperature 87.8 C", "device": "d1"}
    assert action["evidence"]["event_ids"] == ["e2"]
    assert action["action_id"] == action_id("hot-device", 3, "device", "d1", ["e2"], None)

    letters = await _deadletters(namespace, count=4)
    originals = {base64.b64decode(letter["original_b64"]) for letter in letters}
    assert originals == set(bad), "every bad record is dead-lettered with its exact bytes"
    codes = sorted(letter["reason_code"] for letter in letters)
    assert codes == ["decode", "schema", "schema", "unregistered"]
    assert all(letter["source"]["topic"].startswith(k.device_topic_prefix) for letter in letters)
    assert any("'ts'" in letter["reason"] for letter in letters)

    store = CassandraStore(namespace.settings)
    await store.connect()
    try:
        row = await wait_for(
            lambda: store.read_action(action["action_id"]), timeout=60, what="action row"
        )
        assert row["customer_id"] == "c1" and row["device_id"] == "d1"
        assert row["rule"] == {"id": "hot-device", "version": 3}
        assert row["payload"] == action["payload"] and row["evidence"] == action["evidence"]
        assert row["at"] == pytest.approx(action["at"], abs=0.001)
        assert await store.count_actions("c1") == 2
    finally:
        await store.close()

    metrics = await checkpointed_metrics(worker, 3)
    assert metrics["ingest"]["deadlettered"] == 4
    assert metrics["actor"]["events"] == 3

    # Latency from each device record's publication: per customer-stream
    # record processed, and per action an event triggered.
    latency, since_first_sent = metrics["latency"], time.time() - first_sent_at
    assert latency["event"]["count"] == metrics["ingest"]["records_sent"]
    assert latency["action"]["count"] == 2
    for histogram in (latency["event"], latency["action"]):
        assert 0 < histogram["sum_s"] <= histogram["count"] * since_first_sent
    # ... split by stage, per record: ingest, transit and actor add up to it
    stages = latency["stages"]
    assert {stage: stages[stage]["count"] for stage in stages} == dict.fromkeys(
        ("ingest", "transit", "actor"), metrics["ingest"]["records_sent"]
    )
    assert sum(stage["sum_s"] for stage in stages.values()) == pytest.approx(
        latency["event"]["sum_s"], abs=0.001 * latency["event"]["count"]
    )
    assert latency["checkpoint"]["acknowledge"]["count"] >= 1
    scraped = worker.text("/metrics") or ""
    assert "iotcrm_action_latency_seconds_count 2.0" in scraped
    assert 'iotcrm_event_latency_seconds_bucket{le="0.25"}' in scraped


async def test_a_device_topic_created_later_is_picked_up(
    namespace: Namespace, producer, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    namespace.env["IOTCRM_KAFKA_METADATA_MAX_AGE_MS"] = "3000"
    k = namespace.settings.kafka
    await register(producer, namespace, {"early": ("c1", "compressor")})
    await send_json(
        producer, namespace.device_topic("early"), None, telemetry("e0", "early", time.time())
    )
    worker = namespace.worker().start()
    await worker.wait_ready()
    await wait_for(
        lambda: (worker.metrics() or {}).get("actor", {}).get("events") == 1,
        timeout=60,
        what="first device processed",
    )

    # A device that did not exist when the worker started: its topic is new.
    await register(producer, namespace, {"late-device": ("c2", "compressor")})
    published = time.monotonic()
    await send_json(
        producer,
        namespace.device_topic("late-device"),
        None,
        telemetry("n1", "late-device", time.time(), temperature=95.0),
    )
    async with TopicReader(k.bootstrap, [namespace.action_topic("support_case")]) as actions:
        records = await wait_for(lambda: _at_least(actions, 1), timeout=30, what="new topic")
    assert time.monotonic() - published < 30
    assert orjson.loads(records[0].value)["device_id"] == "late-device"


async def _at_least(reader: TopicReader, n: int) -> list | None:
    records = await reader.poll()
    return records if len(records) >= n else None


async def _deadletters(namespace: Namespace, count: int) -> list[dict]:
    topic = namespace.settings.kafka.deadletter_topic
    async with TopicReader(namespace.settings.kafka.bootstrap, [topic]) as reader:
        records = await wait_for(lambda: _at_least(reader, count), timeout=30, what="dead letters")
    return [orjson.loads(r.value) for r in records]


async def test_customer_view_has_live_state_and_windowed_usage(
    namespace: Namespace, producer, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    await register(producer, namespace, {"w1": ("c7", "wearable")})
    worker = namespace.worker().start()
    await worker.wait_ready()
    hour = (time.time() - 7200) // 3600 * 3600
    usage = [(hour + 60, 10.0), (hour + 1800, 15.5), (hour + 3600 + 60, 4.0)]
    for i, (ts, minutes) in enumerate(usage):
        event = {"id": f"u{i}", "ts": ts, "device_id": "w1", "kind": "usage", "usage_min": minutes}
        await send_json(producer, namespace.device_topic("w1"), None, event)
    # A duplicate must not count twice, in the state or in the windows.
    await send_json(producer, namespace.device_topic("w1"), None, {**event, "usage_min": 99.0})

    def processed() -> dict | None:
        view = worker.get("/customers/c7")
        counts = view and view.get("devices", {}).get("w1", {}).get("counts", {})
        return view if counts and counts["ok"] + counts["duplicate"] == 4 else None

    view = await wait_for(processed, timeout=60, what="customer view")
    assert view["customer"]["tier"] == "gold"
    last_day = usage[-1][0] // 86400
    assert view["customer"]["usage_today_min"] == sum(
        m for ts, m in usage if ts // 86400 == last_day
    )
    assert view["devices"]["w1"]["counts"] == {"ok": 3, "duplicate": 1, "late": 0}
    by_hour = {w["start"]: w["minutes"] for w in view["usage_by_hour"]}
    assert by_hour[hour] == 25.5 and by_hour[hour + 3600] == 4.0
    assert sum(by_hour.values()) == 29.5
    day = hour // 86400 * 86400
    assert {w["start"]: w["minutes"] for w in view["usage_by_day"]}[day] == pytest.approx(
        sum(m for ts, m in usage if ts // 86400 * 86400 == day)
    )
    missing = worker.get("/customers/nobody")
    assert missing["status"] == 404
