"""Issue 10.1 on the live worker: a worker that stalls past its session timeout.

A worker whose process tree stops (a long GC pause, a starved host, SIGSTOP
here) misses its heartbeats: the broker's group coordinator takes its
partitions away, every consumer group it belongs to rebalances, and the first
commits after it wakes up are refused (the generation moved on). Faust
crashed the worker on such a refusal, and the issue saw exactly that take a
worker down. Here the worker must wake up, rejoin, count what happened in
``/metrics.json``, and give every action once, none lost.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from loadtest.harness import wait_for
from tests.integration.kit import Namespace, register
from tests.integration.live_helpers import (
    hot_events,
    hot_rules_in,
    idempotent_producer,
    publish,
    rows_reach,
    support_actions,
)

BEFORE, DURING, AFTER = 5, 5, 5
SESSION_TIMEOUT_S = 6.0


@pytest.fixture
def hot_rules(tmp_path: Path) -> Path:
    return hot_rules_in(tmp_path)


def group_state(admin: Any, group: str) -> str:
    """A consumer group's state and members as its coordinator sees them."""
    try:
        described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception as exc:
        return f"no answer ({exc})"
    return f"{described.state.name} with {len(described.members)} members"


async def test_a_worker_stalled_past_its_session_timeout_rejoins_and_loses_nothing(
    namespace: Namespace, hot_rules: Path
) -> None:
    namespace.env["IOTCRM_RULES_PATH"] = str(hot_rules)
    namespace.env["IOTCRM_WORKER_SESSION_TIMEOUT_S"] = str(SESSION_TIMEOUT_S)
    bootstrap = namespace.settings.kafka.bootstrap
    start = time.time() - 120
    producer = await idempotent_producer(bootstrap)
    try:
        await register(producer, namespace, {"d1": ("c1", "compressor")})
        worker = namespace.worker().start()
        await worker.wait_ready()
        await publish(producer, hot_events(namespace, 0, BEFORE, start))
        await support_actions(namespace, BEFORE)

        assert worker.process is not None
        group = os.getpgid(worker.process.pid)  # the worker, its ingest and its sink
        os.killpg(group, signal.SIGSTOP)
        try:
            # Published while it is frozen: they wait in Kafka for whoever owns them.
            await publish(producer, hot_events(namespace, BEFORE, DURING, start))
            # Frozen until the coordinator has evicted it from the actor's group.
            admin = AdminClient({"bootstrap.servers": bootstrap})
            app_id = namespace.settings.worker.app_id
            seen: list[str] = []

            def evicted() -> bool:
                seen.append(group_state(admin, app_id))
                return seen[-1].endswith(" 0 members")

            try:
                await wait_for(evicted, timeout=90, interval=1.0, what="the worker evicted")
            except AssertionError:
                raise AssertionError(f"the group, second by second: {seen}") from None
        finally:
            os.killpg(group, signal.SIGCONT)
        await publish(producer, hot_events(namespace, BEFORE + DURING, AFTER, start))
    finally:
        await producer.stop()

    total = BEFORE + DURING + AFTER
    actions = await support_actions(namespace, total)
    ids = [a["action_id"] for a in actions]
    assert len(set(ids)) == total, "every action once, none lost"

    def rejoined() -> dict[str, Any] | None:
        metrics = worker.metrics() or {}
        actor = metrics.get("actor") or {}
        return metrics if actor.get("rebalances", 0) >= 1 and actor.get("lag") == 0 else None

    metrics = await wait_for(rejoined, timeout=120, what="the worker rejoined, lag 0")
    assert worker.alive(), f"the worker stopped itself:\n{worker.log_tail(80)}"
    assert metrics["ingest"]["restarts"] == 0 and metrics["sink"]["restarts"] == 0, metrics
    assert metrics["ingest"]["alive"] and metrics["sink"]["alive"]
    print(
        f"after the stall: actor rebalances {metrics['actor']['rebalances']}, commit failures "
        f"{metrics['actor']['commit_failures']}; ingest rebalances "
        f"{metrics['ingest']['rebalances']}, commit failures {metrics['ingest']['commit_failures']}"
    )
    await wait_for(lambda: (worker.get("/ready") or {}).get("ready"), timeout=120, what="ready")
    counts = await wait_for(
        lambda: rows_reach(namespace, total), timeout=120, what="every row in Cassandra"
    )
    assert counts == {"action_log": total, "actions_by_id": total}
