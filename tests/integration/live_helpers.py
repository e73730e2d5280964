"""Shared pieces of the live-worker proofs (actor state, models, bad input, outage).

Kept beside ``kit.py`` rather than in it: these are the helpers of a few test
files, not of the whole integration suite.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from loadtest.harness import ConditionTimeout, WorkerProcess, wait_for
from tests.integration.kit import REPO, Namespace, TopicReader, read_all

#: Action types of the downstream contract, one topic each.
ACTION_TYPES = ("coupon", "maintenance_booking", "retention_offer", "support_case")


async def publish(producer: AIOKafkaProducer, records: Iterable[tuple[str, Any]]) -> int:
    """Send ``(topic, value)`` records pipelined, in order, and wait for every ack.

    One producer keeps the order of records within a partition, which is all the
    order a device topic (one partition per device) needs.
    """
    futures = []
    for topic, value in records:
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        futures.append(await producer.send(topic, payload))
    await asyncio.gather(*futures)
    return len(futures)


async def idempotent_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer whose retries can never reorder or repeat a device's records."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    return producer


def processed_events(worker: WorkerProcess, customer_ids: Iterable[str]) -> dict[str, int]:
    """``counts.events`` of each customer's live state (0 while unknown)."""
    counts = {}
    for customer_id in customer_ids:
        state = worker.get(f"/customers/{customer_id}")
        counts[customer_id] = (state or {}).get("counts", {}).get("events", 0)
    return counts


async def wait_processed(
    worker: WorkerProcess, expected: dict[str, int], timeout: float = 60.0
) -> None:
    """Until every customer's state counts exactly the expected events."""

    seen: dict[str, int] = {}

    def done() -> bool:
        if not worker.alive():
            raise AssertionError(f"worker exited; log tail:\n{worker.log_tail()}")
        seen.update(processed_events(worker, expected))
        return seen == expected

    try:
        await wait_for(done, timeout=timeout, what=f"states counting {expected}")
    except ConditionTimeout as timeout_error:
        metrics = worker.metrics() if worker.alive() else None
        raise ConditionTimeout(
            f"{timeout_error}; counted {seen}; worker metrics {metrics}"
        ) from None


async def checkpointed_metrics(
    worker: WorkerProcess, records: int, timeout: float = 30.0
) -> dict[str, Any]:
    """The worker's metrics once its actor has checkpointed at least ``records``
    records (events, duplicates and late ones count at the checkpoint that
    makes them durable) and holds none in flight (processed, not yet checkpointed)."""

    def counted() -> dict[str, Any] | None:
        metrics = worker.metrics()
        actor = (metrics or {}).get("actor") or {}
        done = actor.get("events", 0) + actor.get("duplicates", 0) + actor.get("late", 0)
        return metrics if done >= records and actor.get("in_flight") == 0 else None

    return await wait_for(counted, timeout=timeout, what=f"{records} records checkpointed")


async def actions_of(ns: Namespace) -> list[dict[str, Any]]:
    """Every action on the namespace's action topics (all types)."""
    bootstrap = ns.settings.kafka.bootstrap
    actions: list[dict[str, Any]] = []
    for action_type in ACTION_TYPES:
        records = await read_all(bootstrap, ns.action_topic(action_type))
        actions += [orjson.loads(record.value) for record in records]
    return actions


def without_emission_time(action: dict[str, Any]) -> dict[str, Any]:
    """The part of an action a replay must repeat exactly (``emitted_at`` is wall clock)."""
    return {name: value for name, value in action.items() if name != "emitted_at"}


def duplicated_ids(actions: Iterable[dict[str, Any]]) -> dict[str, int]:
    """action_id -> copies, for the ids published more than once."""
    copies = Counter(action["action_id"] for action in actions)
    return {action_id: n for action_id, n in copies.items() if n > 1}


def differences(got: Any, expected: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as ``path: got != expected`` lines."""
    if isinstance(got, dict) and isinstance(expected, dict):
        lines = []
        for name in sorted(set(got) | set(expected), key=str):
            where = f"{path}.{name}" if path else str(name)
            if name not in got or name not in expected:
                lines.append(
                    f"{where}: {got.get(name, '<absent>')!r} != {expected.get(name, '<absent>')!r}"
                )
            else:
                lines += differences(got[name], expected[name], where)
        return lines
    if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
        return [
            line
            for i, (a, b) in enumerate(zip(got, expected, strict=True))
            for line in differences(a, b, f"{path}[{i}]")
        ]
    return [] if got == expected else [f"{path}: {got!r} != {expected!r}"]


def iotcrm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``iotcrm`` CLI as a subprocess (with a namespace's ``env``, if given)."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        env={**os.environ, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ------------------------------------------------ the outage tests' workload

#: One action per hot reading: each event of ``hot_events`` gives one.
HOT_RULE = """\
- id: hot-device
  version: 1
  key: device
  when:
    condition: "event.kind == 'telemetry' and event.temperature > 80"
  action:
    type: support_case
    payload:
      reason: "temperature {{ round(event.temperature, 1) }} C"
"""


async def support_actions(ns: Namespace, at_least: int) -> list[dict[str, Any]]:
    """The support-case actions on Kafka, once there are at least ``at_least``."""
    async with TopicReader(ns.settings.kafka.bootstrap, [ns.action_topic("support_case")]) as r:

        async def enough() -> list[Any] | None:
            records = await r.poll()
            return records if len(records) >= at_least else None

        records = await wait_for(enough, timeout=120, what=f"{at_least} actions on Kafka")
    return [orjson.loads(record.value) for record in records]


def hot_rules_in(tmp_path: Path) -> Path:
    """A rule folder holding ``HOT_RULE`` only."""
    path = tmp_path / "rules"
    path.mkdir()
    (path / "hot.yaml").write_text(HOT_RULE)
    return path


def hot_events(ns: Namespace, first: int, count: int, start: float) -> list[tuple[str, Any]]:
    return [
        (
            ns.device_topic("d1"),
            {
                "id": f"h{i}",
                "ts": start + i,
                "device_id": "d1",
                "kind": "telemetry",
                "temperature": 85.0 + i,
            },
        )
        for i in range(first, first + count)
    ]


async def local_service(command: str, name: str) -> None:
    """``services.py stop|start <name>`` (start returns once it answers), off
    the event loop: the test's Kafka clients keep being served meanwhile."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(REPO / "deploy" / "local" / "services.py"), command, name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"services.py {command} {name}:\n{done.stderr}"


async def row_counts(ns: Namespace) -> dict[str, int] | None:
    """Rows of the action tables, or None while Cassandra does not answer."""
    from engine.store.cassandra import CassandraStore

    store = CassandraStore(ns.settings)
    try:
        await store.connect()
        return {t: await store.count_rows(t) for t in ("action_log", "actions_by_id")}
    except Exception as exc:  # the driver's errors while the server starts
        print(f"cassandra not answering yet: {exc!r}")
        return None
    finally:
        await store.close()


async def rows_reach(ns: Namespace, n: int) -> dict[str, int] | None:
    """The row counts once both tables hold at least ``n`` rows."""
    counts = await row_counts(ns)
    return counts if counts and min(counts.values()) >= n else None
