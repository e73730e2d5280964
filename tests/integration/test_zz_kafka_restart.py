"""Issue 10.1 on the live worker: the Kafka broker restarts under it.

A worker processes events; the local broker is stopped (every connection of
every stage drops, the group coordinator is gone) and started again. The
worker must not stop itself: it reconnects, and the events sent before and
after the restart give every action once (by ``action_id``), on Kafka and in
Cassandra, with nothing lost.

This stops a shared server, so the file is named to run last; Kafka is
always started again (``finally``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from loadtest.harness import wait_for
from tests.integration.kit import REPO, Namespace, register
from tests.integration.live_helpers import (
    hot_events,
    hot_rules_in,
    idempotent_producer,
    local_service,
    publish,
    rows_reach,
    support_actions,
)

sys.path.insert(0, str(REPO / "deploy" / "local"))
import services

BEFORE, AFTER = 5, 5
#: Long enough for every client's requests to fail and the sessions to lapse.
DOWN_S = 15.0


@pytest.fixture
def hot_rules(tmp_path: Path) -> Path:
    return hot_rules_in(tmp_path)


async def kafka(command: str) -> None:
    await local_service(command, "kafka")


async def test_the_worker_outlives_a_broker_restart_and_loses_nothing(
    namespace: Namespace, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    bootstrap = namespace.settings.kafka.bootstrap
    producer = await idempotent_producer(bootstrap)
    try:
        await register(producer, namespace, {"d1": ("c1", "compressor")})
        worker = namespace.worker().start()
        await worker.wait_ready()
        start = time.time() - 120
        await publish(producer, hot_events(namespace, 0, BEFORE, start))
    finally:
        await producer.stop()
    before = await support_actions(namespace, BEFORE)
    assert len({a["action_id"] for a in before}) == BEFORE

    try:
        await kafka("stop")
        assert not services.is_ready(services.KAFKA)
        await asyncio.sleep(DOWN_S)  # the outage itself: nothing to wait for
        assert worker.alive(), f"the worker stopped itself:\n{worker.log_tail(80)}"
    finally:
        await kafka("start")

    producer = await idempotent_producer(bootstrap)
    try:
        await publish(producer, hot_events(namespace, BEFORE, AFTER, start))
    finally:
        await producer.stop()
    actions = await support_actions(namespace, BEFORE + AFTER)
    ids = [a["action_id"] for a in actions]
    assert len(set(ids)) == BEFORE + AFTER, "every action once, none lost"
    assert {a["action_id"] for a in before} <= set(ids)
    assert worker.alive(), f"the worker stopped itself:\n{worker.log_tail(80)}"
    await wait_for(lambda: (worker.get("/ready") or {}).get("ready"), timeout=120, what="ready")
    counts = await wait_for(
        lambda: rows_reach(namespace, BEFORE + AFTER), timeout=120, what="every row in Cassandra"
    )
    assert counts == {"action_log": BEFORE + AFTER, "actions_by_id": BEFORE + AFTER}
