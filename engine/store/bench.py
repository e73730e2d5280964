"""Benchmark the Cassandra store and the sink against the local servers.

    .venv/bin/python -m loadtest.bench_store [--actions 20000] [--batch 500]

Measures, in a throw-away keyspace (and topics) that it drops afterwards:

- ``write_actions`` throughput (actions/s; each action is two row upserts plus
  one ``last_action_at`` per customer) and per-batch latency;
- ``read_actions`` latency (a CRM screen: 20 newest actions of a customer);
- ``write_customer_summaries`` throughput (customer-360 snapshots, one
  single-partition batch each) and per-batch latency;
- the sink end to end: actions already on Kafka → rows in Cassandra.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine.config import Settings, load_settings
from engine.store.cassandra import CassandraStore
from engine.store.sink import CassandraSink, action_topics


def make_action(run: str, n: int, customers: int) -> dict[str, Any]:
    customer = f"c-{n % customers:05d}"
    return {
        "action_id": f"{run}-{n}",
        "type": "coupon",
        "customer_id": customer,
        "device_id": f"d-{n % (customers * 2):06d}",
        "rule": {"id": "coupon-low-detergent", "version": 2},
        "at": 1763700000.0 + n,
        "emitted_at": 1763700000.5 + n,
        "payload": {"discount_pct": 10, "sku": "DET-1L", "reason": "detergent below 10%"},
        "evidence": {"events": [f"e{n}", f"e{n + 1}"], "aggregates": {"level_min": 8.5}},
        "schema_version": 1,
    }


def make_summary(customer_id: str, n: int) -> dict[str, Any]:
    """A customer-360 summary shaped as the worker publishes it (3 devices)."""
    devices = {
        f"{customer_id}-d{i}": {
            "device_type": "washer", "last_ts": 1763700000.0 + n + i, "events": 40 + n,
            "temperature_c": 41.5, "level": 0.4, "gap_count": 0, "gaps": [],
            "counts": {"events": 40 + n}, "level_drop_per_cycle": 0.01, "cycles_per_day": 1.5,
        }
        for i in range(3)
    }  # fmt: skip
    customer = {
        "customer_id": customer_id, "tier": "gold", "segment": "family", "region": "EU",
        "consent": {"marketing": True, "service": True}, "devices": 3,
        "usage_today_min": 42.0, "usage_baseline_min": 38.5, "days_since_use": 0.1,
        "actions": 4, "support_cases_30d": 0,
    }  # fmt: skip
    return {
        "customer": customer,
        "devices": devices,
        "counts": {"events": 120 + n, "actions": 4},
        "recent_actions": [
            {"action_id": f"{customer_id}-a{i}", "type": "coupon", "at": 1763690000.0 + i}
            for i in range(4)
        ],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_store(store: CassandraStore, run: str, total: int, batch: int) -> None:
    customers = max(1, total // 10)
    actions = [make_action(run, n, customers) for n in range(total)]
    await store.write_actions(actions[:batch])  # warm up: prepare, connect pools
    latencies = []
    started = time.perf_counter()
    for i in range(0, total, batch):
        t0 = time.perf_counter()
        await store.write_actions(actions[i : i + batch])
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    print(
        f"write_actions: {total} actions in {elapsed:.2f} s = {total / elapsed:,.0f} actions/s "
        f"({3 * total / elapsed:,.0f} upserts/s max); batch of {batch}: "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    reads = []
    for i in range(1000):
        t0 = time.perf_counter()
        await store.read_actions(f"c-{i % customers:05d}", limit=20)
        reads.append(time.perf_counter() - t0)
    print(
        f"read_actions(limit=20), sequential: p50 {statistics.median(reads) * 1000:.2f} ms, "
        f"p99 {percentile(reads, 0.99) * 1000:.2f} ms"
    )


async def bench_summaries(store: CassandraStore, run: str, total: int, batch: int) -> None:
    summaries = {f"{run}-c{n}": make_summary(f"{run}-c{n}", n) for n in range(total)}
    keys = list(summaries)
    latencies = []
    started = time.perf_counter()
    for i in range(0, total, batch):
        t0 = time.perf_counter()
        await store.write_customer_summaries({k: summaries[k] for k in keys[i : i + batch]})
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    print(
        f"write_customer_summaries: {total} summaries in {elapsed:.2f} s = "
        f"{total / elapsed:,.0f} summaries/s; batch of {batch}: "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )


async def bench_sink(settings: Settings, store: CassandraStore, run: str, total: int) -> None:
    topics = action_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in topics])
    try:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5)
        await producer.start()
        customers = max(1, total // 10)
        for n in range(total):
            action = make_action(f"{run}-sink", n, customers)
            await producer.send(
                topics[n % 4], key=action["customer_id"].encode(), value=orjson.dumps(action)
            )
        await producer.flush()
        await producer.stop()

        sink = CassandraSink(
            settings,
            store,
            mirror_registry=False,
            mirror_customer_360=False,
            group_id=f"bench-{run}",
            lag_interval_s=0.2,
        )
        started = time.perf_counter()
        await sink.start()
        while sink.metrics.written < total:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await sink.stop()
        print(
            f"sink end to end: {total} actions from Kafka into Cassandra in {elapsed:.2f} s = "
            f"{total / elapsed:,.0f} actions/s ({sink.metrics.batches} batches)"
        )
    finally:
        await admin.delete_topics(topics)
        await admin.close()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=128)
    parser.add_argument("--skip-sink", action="store_true")
    args = parser.parse_args(argv)

    run = secrets.token_hex(4)
    base = load_settings()
    settings = msgspec.structs.replace(
        base,
        cassandra=msgspec.structs.replace(base.cassandra, keyspace=f"iotcrm_bench_{run}"),
        kafka=msgspec.structs.replace(base.kafka, action_topic_prefix=f"bench-{run}.actions."),
    )
    store = CassandraStore(settings, max_in_flight=args.in_flight)
    t0 = time.perf_counter()
    await store.connect()
    print(f"connect + migrate a new keyspace: {time.perf_counter() - t0:.2f} s")
    try:
        await bench_store(store, run, args.actions, args.batch)
        await bench_summaries(store, run, max(1, args.actions // 4), args.batch)
        if not args.skip_sink:
            await bench_sink(settings, store, run, args.actions)
    finally:
        await store.drop_keyspace()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
