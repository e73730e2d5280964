"""``iotcrm demo``: the whole engine on the local Kafka and Cassandra, in about a minute.

1. create topics and the Cassandra schema;
2. start a worker process (``iotcrm worker``);
3. simulate a fleet (customers with a few devices each, realistic telemetry,
   injected episodes, some malformed and duplicate events) over whole UTC days
   up to now and publish it to the per-device topics;
4. wait until the worker has taken in every event and the Cassandra sink has
   written every action, reading the actions back as a downstream CRM would;
5. report: events in, dead-lettered, actions by type with samples, accuracy
   against the simulation's ground truth, Cassandra rows, throughput;
6. stop the worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.config import ACTION_TOPIC_SUFFIX, Settings
from engine.durations import parse_duration
from engine.kafka import behind, client_options, partitions_of
from loadtest.accuracy import format_score, score
from loadtest.episodes import DAILY_WINDOW_GRACE_S, DAY
from loadtest.harness import WorkerProcess, wait_for
from loadtest.publish import PublishOptions, publish
from loadtest.simulator import SimParams, Simulation


@dataclass(frozen=True)
class DemoOptions:
    customers: int = 40
    devices_per_customer: int = 3
    span: str = "3d"
    seconds: float = 50.0
    seed: int = 7
    config: str = ""


def span_from_utc_midnight(span_s: float, now: float) -> float:
    """The simulated span ending at ``now``: at least ``span_s`` of whole UTC
    days before the last daily window closed, begun at a UTC midnight.

    Rules that judge a whole UTC day need the days before it, and a span that
    merely ends at ``now`` starts at whatever hour it is: near midnight its
    whole days are one fewer and the demo would find another set of episodes.

    >>> day, hour = 86400.0, 3600.0
    >>> [span_from_utc_midnight(3 * day, 10 * day + h * hour) / hour for h in (0.2, 0.3, 23)]
    [96.2, 72.3, 95.0]
    """
    last_window_closed = math.floor((now - DAILY_WINDOW_GRACE_S) / DAY) * DAY
    return now - (last_window_closed - math.ceil(span_s / DAY) * DAY)


async def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in await partitions_of(consumer, topic)
        ]
        return await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()


async def read_since(
    settings: Settings, start: dict[TopicPartition, int]
) -> list[tuple[str, bytes]]:
    """Every record after ``start`` up to the current end: (topic, value)."""
    end = await end_offsets(settings, sorted({tp.topic for tp in start}))
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    records: list[tuple[str, bytes]] = []
    try:
        wanted = {tp: offset for tp, offset in end.items() if offset > start.get(tp, 0)}
        if not wanted:
            return records
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, start.get(tp, 0))
        while await behind(consumer, wanted):
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                records += [(tp.topic, m.value) for m in messages if m.offset < wanted[tp]]
        return records
    finally:
        await consumer.stop()


async def run(settings: Settings, options: DemoOptions) -> int:
    from engine.ops_cli import setup

    # New topics elect their leaders while the first records are sent; the
    # producer's retries are expected and need not fill the screen.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    print("iotcrm demo: creating topics and the Cassandra schema")
    await setup(settings)
    k = settings.kafka
    action_topics = [settings.action_topic(t) for t in ACTION_TOPIC_SUFFIX]
    watched = [*action_topics, k.deadletter_topic]
    start = await end_offsets(settings, watched)

    state = Path(settings.worker.state_dir).parent / "demo"
    worker = WorkerProcess(
        {"IOTCRM_WORKER_APP_ID": f"iotcrm-demo-{int(time.time())}"}
        | ({"IOTCRM_CONFIG": options.config} if options.config else {}),
        log_path=state / "worker.log",
    )
    print(f"iotcrm demo: starting a worker (log {worker.log_path})")
    worker.start()
    try:
        await worker.wait_ready()
        params = SimParams(
            customers=options.customers,
            devices_per_customer=options.devices_per_customer,
            seed=options.seed,
            span_s=span_from_utc_midnight(parse_duration(options.span), time.time()),
        )
        sim = Simulation(params)
        planned = _count_events(params)
        rate = max(200.0, planned / options.seconds)
        print(
            f"iotcrm demo: simulating {options.customers} customers x "
            f"{options.devices_per_customer} devices over {options.span} of device time: "
            f"{planned} records at about {rate:,.0f}/s"
        )
        publish_options = PublishOptions(
            bootstrap=k.bootstrap,
            # Provision device topics first, as a fleet's onboarding would.
            create_topics=True,
            partitions=k.partitions,
            registry_topic=k.registry_topic,
            customers_topic=k.customers_topic,
            outcomes_topic=k.outcomes_topic,
            telemetry_topic=k.telemetry_topic,
            rate=rate,
        )
        began = time.monotonic()
        stats = await publish(sim, publish_options)
        truth = sim.truth()

        def drained() -> Any:
            metrics = worker.metrics() or {}
            ingest = metrics.get("ingest") or {}
            sink = metrics.get("sink") or {}
            actor = metrics.get("actor") or {}
            done = (
                ingest.get("consumed", 0) >= stats.records
                and actor.get("events", 0) + actor.get("duplicates", 0) + actor.get("late", 0)
                >= ingest.get("accepted", 0)
                and sink.get("lag", 1) == 0
            )
            return metrics if done else None

        metrics = await wait_for(drained, timeout=180, interval=0.5, what="worker drained")
        elapsed = time.monotonic() - began
        records = await read_since(settings, start)
        actions = [orjson.loads(v) for t, v in records if t in action_topics]
        deadletters = [orjson.loads(v) for t, v in records if t == k.deadletter_topic]
        rows = await _cassandra_rows(settings, {a["action_id"] for a in actions})
        _report(metrics, stats, actions, deadletters, rows, truth, elapsed)
        return 0
    finally:
        worker.stop()
        print(f"iotcrm demo: worker stopped (log {worker.log_path})")


def _count_events(params: SimParams) -> int:
    return sum(1 for _ in Simulation(params).events())


async def _cassandra_rows(settings: Settings, action_ids: set[str]) -> int:
    from engine.store.cassandra import CassandraStore

    store = CassandraStore(settings)
    await store.connect()
    try:
        found = await asyncio.gather(*(store.read_action(a) for a in action_ids))
        return sum(1 for row in found if row is not None)
    finally:
        await store.close()


def _report(
    metrics: dict[str, Any],
    stats: Any,
    actions: list[dict[str, Any]],
    deadletters: list[dict[str, Any]],
    rows: int,
    truth: dict[str, Any],
    elapsed: float,
) -> None:
    ingest, actor = metrics["ingest"], metrics["actor"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for action in actions:
        by_type.setdefault(action["type"], []).append(action)
    reasons: dict[str, int] = {}
    for letter in deadletters:
        reasons[letter["reason_code"]] = reasons.get(letter["reason_code"], 0) + 1
    lines = [
        "",
        "=== iotcrm demo: what happened ===",
        f"events published        {stats.records:>8}  ({stats.rate:,.0f}/s)",
        f"events taken in         {ingest['consumed']:>8}  "
        f"({ingest['consumed'] / elapsed:,.0f}/s end to end, {elapsed:.1f} s)",
        f"dead-lettered           {len(deadletters):>8}  "
        + ", ".join(f"{code}: {n}" for code, n in sorted(reasons.items())),
        f"duplicates dropped      {actor['duplicates']:>8}",
        f"late events             {actor['late']:>8}",
        f"processed by actors     {actor['events']:>8}",
        f"actions out             {len(actions):>8}  "
        + ", ".join(f"{t}: {len(a)}" for t, a in sorted(by_type.items())),
        f"firings suppressed      {sum(actor['suppressed'].values()):>8}  "
        + ", ".join(f"{why}: {n}" for why, n in sorted(actor["suppressed"].items())),
        f"action rows in Cassandra{rows:>8}  (of {len({a['action_id'] for a in actions})})",
        "",
        "sample actions:",
    ]
    for kind, items in sorted(by_type.items()):
        sample = items[0]
        lines.append(
            f"  {kind:20} {sample['customer_id']} {sample.get('device_id') or '-':10} "
            f"rule {sample['rule']['id']} v{sample['rule']['version']}: "
            + orjson.dumps(sample["payload"]).decode()[:100]
        )
    lines += [
        "",
        "accuracy against the simulation's ground truth:",
        format_score(score(truth, actions)),
    ]
    print("\n".join(lines))
    if os.environ.get("IOTCRM_DEMO_JSON"):
        Path(os.environ["IOTCRM_DEMO_JSON"]).write_bytes(
            orjson.dumps({"actions": len(actions), "rows": rows, "deadletters": len(deadletters)})
        )
