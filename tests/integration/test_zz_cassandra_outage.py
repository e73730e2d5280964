"""Issue 4.5 on the live worker: Cassandra goes down, actions keep flowing.

With a worker running, the local Cassandra is stopped; events that make
actions still give actions on Kafka (the actor never waits for Cassandra) and
the worker reports its sink as degraded. Cassandra is started again and the
sink catches up: every action is in ``action_log`` and ``actions_by_id``, once.

This stops a shared server, so the file is named to run last; Cassandra is
always started again (``finally``). The sink's own outage behaviour, with a
store that fails on demand, is ``test_store_cassandra.py``; this is the whole
worker against the real server going away.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

from engine.store.cassandra import CassandraStore
from loadtest.harness import WorkerProcess, wait_for
from tests.integration.kit import REPO, Namespace, TopicReader, register
from tests.integration.live_helpers import (
    hot_events,
    local_service,
    publish,
    rows_reach,
)

sys.path.insert(0, str(REPO / "deploy" / "local"))
import services

BEFORE, DURING = 3, 10


async def cassandra(command: str) -> None:
    await local_service(command, "cassandra")


def status(worker: WorkerProcess) -> str | None:
    return (worker.get("/health") or {}).get("status")


def sink_state(worker: WorkerProcess) -> dict[str, Any]:
    return (worker.metrics() or {}).get("sink") or {}


async def test_actions_flow_while_cassandra_is_down_and_land_once_after(
    namespace: Namespace, producer, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    k = namespace.settings.kafka
    await register(producer, namespace, {"d1": ("c1", "compressor")})
    worker = namespace.worker().start()
    await worker.wait_ready()
    start = time.time() - 120

    await publish(producer, hot_events(namespace, 0, BEFORE, start))
    counts = await wait_for(lambda: rows_reach(namespace, BEFORE), timeout=60, what="rows")
    assert counts == {"action_log": BEFORE, "actions_by_id": BEFORE}

    down_since = time.monotonic()
    try:
        await cassandra("stop")
        assert not services.is_ready(services.CASSANDRA)
        await publish(producer, hot_events(namespace, BEFORE, DURING, start))
        async with TopicReader(k.bootstrap, [namespace.action_topic("support_case")]) as reader:

            async def all_actions() -> list[Any] | None:
                records = await reader.poll()
                return records if len(records) >= BEFORE + DURING else None

            await wait_for(all_actions, timeout=60, what="actions on Kafka, Cassandra down")
        await wait_for(
            lambda: status(worker) == "degraded", timeout=60, what="the sink reporting the outage"
        )
        assert not services.is_ready(services.CASSANDRA), "all this while it was down"
        assert worker.alive()
        noticed_after = time.monotonic() - down_since
        sink = sink_state(worker)
        assert sink["healthy"] is False and sink["failing_since"] is not None
        assert sink["written"] == BEFORE
        # Alive (liveness answers 200) but not ready: a probe takes it out of service.
        not_ready = worker.get("/ready")
        assert not_ready is not None and not_ready.get("status") == 503, not_ready
        assert any("Cassandra" in reason for reason in not_ready["body"]["reasons"])
    finally:
        await cassandra("start")
        down_for = time.monotonic() - down_since
    actions = [orjson.loads(record.value) for record in reader.records]
    assert len(actions) == BEFORE + DURING
    assert len({a["action_id"] for a in actions}) == BEFORE + DURING

    recovering = time.monotonic()
    counts = await wait_for(
        lambda: rows_reach(namespace, BEFORE + DURING), timeout=120, what="every row after"
    )
    assert counts == {"action_log": BEFORE + DURING, "actions_by_id": BEFORE + DURING}
    await wait_for(lambda: sink_state(worker).get("healthy"), timeout=60, what="sink healthy")
    await wait_for(lambda: sink_state(worker).get("lag") == 0, timeout=60, what="no sink lag")
    print(
        f"actions on Kafka and the sink degraded {noticed_after:.1f} s after Cassandra stopped; "
        f"down {down_for:.1f} s in all; rows complete {time.monotonic() - recovering:.1f} s "
        f"after it answered again; sink {sink_state(worker)}"
    )

    store = CassandraStore(namespace.settings)
    await store.connect()
    try:
        rows = await store.read_actions("c1", limit=100)
        assert sorted(r["action_id"] for r in rows) == sorted(a["action_id"] for a in actions)
        for action in actions:
            row = await store.read_action(action["action_id"])
            assert row is not None and row["payload"] == action["payload"]
    finally:
        await store.close()
    sink = sink_state(worker)
    assert sink["written"] == BEFORE + DURING, "a retried batch is written (and counted) once"
    assert sink["retries"] >= 1
    assert status(worker) == "ok"
    assert worker.get("/ready") == {"ready": True, "reasons": []}
