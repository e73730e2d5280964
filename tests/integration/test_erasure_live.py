"""GDPR erasure against the real broker and Cassandra: `iotcrm customer erase`
removes the customer everywhere, keeps an audit record that names no one,
leaves every other customer as it was, and the customer's devices stop
bringing it back."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from engine.store.cassandra import CassandraStore
from loadtest.harness import wait_for
from tests.integration.kit import Namespace, read_all, register, send_json
from tests.integration.live_helpers import iotcrm


def hot(event_id: str, device_id: str, ts: float) -> dict[str, Any]:
    return {"id": event_id, "ts": ts, "device_id": device_id, "kind": "telemetry",
            "temperature": 90.0, "usage_min": 12.0}  # fmt: skip


def viewable(worker: Any, customer_id: str) -> bool:
    """The worker's view of the customer's checkpointed state answers."""
    view = worker.get(f"/customers/{customer_id}")
    return view is not None and "status" not in view


def latest_by_key(records: Iterable[Any]) -> dict[bytes, Any]:
    """What log compaction would keep: the last value of every key."""
    latest: dict[bytes, Any] = {}
    for record in records:
        latest[record.key] = record.value
    return latest


async def test_an_erased_customer_is_gone_everywhere_and_the_audit_names_no_one(
    namespace: Namespace, producer: Any, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    namespace.env["IOTCRM_WORKER_SUMMARY_INTERVAL_S"] = "0.5"
    k = namespace.settings.kafka
    devices = {"d1": ("c1", "washer"), "d2": ("c1", "compressor"), "d3": ("c2", "washer")}
    await register(producer, namespace, devices)
    worker = namespace.worker().start()
    await worker.wait_ready()
    now = time.time() - 60
    for i, device_id in enumerate(["d1", "d2", "d3"]):
        event = hot(f"e{i}", device_id, now + i)
        await send_json(producer, namespace.device_topic(device_id), None, event)

    store = CassandraStore(namespace.settings)
    await store.connect()
    try:

        async def stored() -> bool:
            counts = [await store.count_actions(c) for c in ("c1", "c2")]
            rows = [await store.read_customer_360(c) for c in ("c1", "c2")]
            return counts == [2, 1] and all(row and row.get("summary") for row in rows)

        await wait_for(stored, timeout=60, what="actions and 360 rows of both customers")
        c1_actions = [a["action_id"] for a in await store.read_actions("c1")]
        await wait_for(lambda: viewable(worker, "c1"), timeout=30, what="c1's checkpointed state")

        erased = iotcrm("customer", "erase", "c1", "--timeout", "50", env=namespace.env)
        assert erased.returncode == 0, erased.stderr
        audit = orjson.loads(erased.stdout)
        assert audit["status"] == "erased"
        assert audit["rows_deleted"] == {
            "action_log": 2, "actions_by_id": 2, "device_registry": 2, "customer_360": 1,
        }  # fmt: skip
        assert (audit["had_state"], audit["devices"]) == (True, 2)
        assert not {"c1", "d1", "d2"} & set(str(audit).replace("'", " ").split()), audit

        # Cassandra: nothing of c1, all of c2.
        assert await store.count_actions("c1") == 0
        assert [await store.read_action(a) for a in c1_actions] == [None, None]
        assert await store.read_customer_360("c1") is None
        assert (
            await store.read_device("d1") is None
            or (await store.read_device("d1")).get("customer_id") is None
        )
        assert await store.count_actions("c2") == 1
        assert (await store.read_customer_360("c2") or {}).get("summary")
        assert (await store.read_device("d3") or {}).get("customer_id") == "c2"
        stored_audit = await store.read_erasure(audit["request_id"])
        assert stored_audit is not None and stored_audit["rows_deleted"]["action_log"] == 2
    finally:
        await store.close()

    # The worker: no state, and no way back through its devices.
    assert worker.get("/customers/c1")["status"] == 404
    await send_json(producer, namespace.device_topic("d1"), None, hot("late1", "d1", now + 10))

    async def unregistered() -> list[Any] | None:
        letters = [orjson.loads(r.value) for r in await read_all(k.bootstrap, k.deadletter_topic)]
        return [x for x in letters if x["reason_code"] == "unregistered"] or None

    await wait_for(unregistered, timeout=30, what="the erased customer's device dead-lettered")
    assert worker.get("/customers/c1")["status"] == 404
    assert viewable(worker, "c2")

    # Kafka: what compaction keeps of c1 is tombstones only.
    for topic in (f"{namespace.id}-customers-changelog", f"{namespace.id}-timers-changelog",
                  k.customer360_topic, k.customers_topic):  # fmt: skip
        latest = latest_by_key(await read_all(k.bootstrap, topic))
        assert latest.get(b"c1", b"absent") in (None, b"absent"), topic
    registry = latest_by_key(await read_all(k.bootstrap, k.registry_topic))
    assert (registry[b"d1"], registry[b"d2"]) == (None, None)
    assert registry[b"d3"] is not None
    metrics = worker.metrics() or {}
    assert metrics["actor"]["erasures"] == 1
    assert metrics["sink"]["erasures"] == 1
    assert worker.alive()
