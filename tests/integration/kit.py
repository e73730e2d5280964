"""Helpers of the integration tests: namespaces, producers and downstream readers."""

from __future__ import annotations

import asyncio
import os
import secrets
import warnings
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from engine.config import Settings, load_settings
from engine.kafka import behind, partitions_of
from loadtest.harness import WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


class Namespace:
    """One test's private corner of Kafka and Cassandra, as IOTCRM_* variables."""

    def __init__(self, tmp: Path, rules: Path | str = "rules") -> None:
        self.id = f"t{secrets.token_hex(4)}"
        self.tmp = tmp / self.id
        self.env: dict[str, str] = {
            "IOTCRM_CONFIG": str(REPO / "iotcrm.toml"),
            "IOTCRM_KAFKA_DEVICE_TOPIC_PREFIX": f"{self.id}.device.",
            "IOTCRM_KAFKA_TELEMETRY_TOPIC": f"{self.id}.telemetry",
            "IOTCRM_KAFKA_REGISTRY_TOPIC": f"{self.id}.registry",
            "IOTCRM_KAFKA_CUSTOMERS_TOPIC": f"{self.id}.customers",
            "IOTCRM_KAFKA_DEADLETTER_TOPIC": f"{self.id}.deadletter",
            "IOTCRM_KAFKA_LATE_TOPIC": f"{self.id}.late",
            "IOTCRM_KAFKA_CUSTOMER_EVENTS_TOPIC": f"{self.id}.events.by-customer",
            "IOTCRM_KAFKA_OUTCOMES_TOPIC": f"{self.id}.outcomes",
            "IOTCRM_KAFKA_ERASURE_TOPIC": f"{self.id}.erasure-requests",
            "IOTCRM_KAFKA_CUSTOMER360_TOPIC": f"{self.id}.customer360",
            "IOTCRM_KAFKA_ACTION_TOPIC_PREFIX": f"{self.id}.actions.",
            "IOTCRM_KAFKA_PARTITIONS": "2",
            "IOTCRM_CASSANDRA_KEYSPACE": f"iotcrm_{self.id}",
            "IOTCRM_WORKER_APP_ID": self.id,
            "IOTCRM_WORKER_WEB_PORT": str(free_port()),
            "IOTCRM_WORKER_STATE_DIR": str(tmp / "worker"),
            "IOTCRM_WORKER_BATCH_WITHIN_S": "0.02",
            "IOTCRM_WORKER_COMMIT_INTERVAL_S": "0.5",
            "IOTCRM_RULES_PATH": str(rules if Path(rules).is_absolute() else REPO / rules),
            "IOTCRM_RULES_RELOAD_INTERVAL_S": "0.5",
            "IOTCRM_MODELS_PATH": str(REPO / "models" / "models.yaml"),
            "IOTCRM_QUALITY_MAX_FUTURE_SKEW_S": "300",
        }
        self.workers: list[WorkerProcess] = []

    @property
    def settings(self) -> Settings:
        return load_settings(self.env["IOTCRM_CONFIG"], environ=self.env)

    def device_topic(self, device_id: str) -> str:
        return self.env["IOTCRM_KAFKA_DEVICE_TOPIC_PREFIX"] + device_id

    def action_topic(self, action_type: str) -> str:
        return self.settings.action_topic(action_type)

    def worker(self, name: str = "w1", **overrides: str) -> WorkerProcess:
        env = {**self.env, **overrides}
        if self.workers and "IOTCRM_WORKER_WEB_PORT" not in overrides:
            env["IOTCRM_WORKER_WEB_PORT"] = str(free_port())
        if self.workers and "IOTCRM_WORKER_STATE_DIR" not in overrides:
            env["IOTCRM_WORKER_STATE_DIR"] = str(self.tmp / f"worker-{name}")
        worker = WorkerProcess(env, log_path=self.tmp / f"{name}.log", cwd=REPO)
        self.workers.append(worker)
        return worker


async def send_json(producer: AIOKafkaProducer, topic: str, key: str | None, value: Any) -> None:
    payload = value if isinstance(value, bytes) else orjson.dumps(value)
    await producer.send_and_wait(topic, payload, key=key.encode() if key else None)


async def register(
    producer: AIOKafkaProducer,
    ns: Namespace,
    devices: dict[str, tuple[str, str]],
    consent: dict[str, dict[str, bool]] | None = None,
) -> None:
    """Register devices (device_id -> (customer_id, device_type)) and their customers."""
    k = ns.settings.kafka
    for device_id, (customer_id, device_type) in devices.items():
        await send_json(
            producer,
            k.registry_topic,
            device_id,
            {"device_id": device_id, "customer_id": customer_id, "device_type": device_type},
        )
    for customer_id in {c for c, _ in devices.values()}:
        await send_json(
            producer,
            k.customers_topic,
            customer_id,
            {
                "customer_id": customer_id,
                "tier": "gold",
                "consent": (consent or {}).get(customer_id, {"marketing": True, "service": True}),
            },
        )


class TopicReader:
    """A downstream consumer: reads everything a topic received since the test began."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.records: list[Any] = []
        self.consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self.consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            metadata_max_age_ms=1000,
        )
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.consumer is not None
        await self.consumer.stop()

    async def poll(self) -> list[Any]:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=200)
        for records in batches.values():
            self.records += records
        return self.records

    def values(self) -> list[Any]:
        return [orjson.loads(r.value) for r in self.records]


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record currently in ``topic`` (all partitions)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        while await behind(consumer, end):
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records += batch
        return records
    finally:
        await consumer.stop()


class NamespaceCleaner:
    """Drops each finished namespace's keyspace and topics, in the background.

    The servers may be long-lived (a developer's); a Cassandra node holding
    hundreds of test keyspaces runs out of heap and stops answering in time.
    One thread, so the drops never compete with each other; a failed drop
    (Cassandra stopped by the outage test, say) is a warning, not a failure.
    ``IOTCRM_TEST_KEEP_NAMESPACES=1`` keeps them, for a post-mortem.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="namespace-cleaner")
        self._pending: list[Future[None]] = []
        self._cluster: Any = None

    def drop(self, ns: Namespace) -> None:
        if os.environ.get("IOTCRM_TEST_KEEP_NAMESPACES"):
            return  # kept for a post-mortem
        self._pending.append(self._pool.submit(self._drop, ns.id, ns.settings))

    def _drop(self, prefix: str, settings: Settings) -> None:
        from engine.store.cassandra import build_cluster

        if self._cluster is None:
            self._cluster = build_cluster(settings)
        session = self._cluster.connect()
        session.execute(f'DROP KEYSPACE IF EXISTS "{settings.cassandra.keyspace}"', timeout=60)
        asyncio.run(self._delete_topics(prefix, settings.kafka.bootstrap))

    @staticmethod
    async def _delete_topics(prefix: str, bootstrap: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()

    def close(self) -> None:
        for pending in self._pending:
            error = pending.exception()
            if error is not None:
                warnings.warn(f"a test namespace was not dropped: {error!r}", stacklevel=1)
        self._pool.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()


CLEANER = NamespaceCleaner()


@asynccontextmanager
async def fresh_namespace(name: str, label: str = "namespace") -> AsyncIterator[Namespace]:
    """A namespace with its topics and keyspace created (``iotcrm setup``); its
    workers are killed at the end and their log tails printed (pytest shows
    them when the test failed)."""
    from engine.ops_cli import setup

    ns = Namespace(REPO / ".state" / "test-logs" / name)
    print(f"{label} {ns.id}: logs in {ns.tmp}")
    ns.tmp.mkdir(parents=True, exist_ok=True)
    await setup(ns.settings)
    try:
        yield ns
    finally:
        for worker in ns.workers:
            worker.kill()
            print(f"--- {worker.log_path} (tail) ---\n{worker.log_tail(40)}")
        CLEANER.drop(ns)
