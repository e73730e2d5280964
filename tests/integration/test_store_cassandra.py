"""The store and the sink against the real local Cassandra and Kafka.

Needs the servers of deploy/local (``python3 deploy/local/services.py start``);
fails, with that hint, when they are not reachable. Every run uses its own
keyspace, topics and consumer group (random suffix) and drops what it made.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cassandra.cluster import Session

from engine.config import Settings, load_settings
from engine.store.backoff import Backoff
from engine.store.cassandra import CassandraStore, build_cluster
from engine.store.migrations import MIGRATIONS, MigrationError, apply_migrations
from engine.store.sink import CassandraSink, action_topics
from tables.state import (
    DeviceState,
    apply_profile,
    new_customer_state,
    note_action,
    record_event,
    summary,
)

pytestmark = pytest.mark.integration

RUN = secrets.token_hex(4)
HINT = "start the local services with: python3 deploy/local/services.py start"


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def settings() -> Settings:
    base = load_settings()
    return msgspec.structs.replace(
        base,
        cassandra=msgspec.structs.replace(base.cassandra, keyspace=f"iotcrm_test_{RUN}"),
    )


@pytest.fixture(scope="module")
def cql(settings: Settings) -> Iterator[Session]:
    """A plain driver session for checks the store does not expose."""
    cluster = build_cluster(settings)
    try:
        session = cluster.connect()
    except Exception as exc:
        cluster.shutdown()
        pytest.fail(
            f"Cassandra is not reachable at {settings.cassandra.contact_points}:"
            f"{settings.cassandra.port} ({exc!r}); {HINT}"
        )
    yield session
    for keyspace in (settings.cassandra.keyspace, f"{settings.cassandra.keyspace}_m"):
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    cluster.shutdown()


@pytest.fixture(scope="module")
async def store(settings: Settings, cql: Session) -> AsyncIterator[CassandraStore]:
    store = CassandraStore(settings, table_ttls={"action_log": 3600, "actions_by_id": 7200})
    await store.connect()
    yield store
    await store.close()


@pytest.fixture(scope="module")
async def kafka(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), timeout=15)
        await admin.list_topics()
    except Exception as exc:
        await admin.close()
        pytest.fail(f"Kafka is not reachable at {settings.kafka.bootstrap} ({exc!r}); {HINT}")
    yield admin
    await admin.close()


@pytest.fixture
async def sink_settings(
    settings: Settings, kafka: AIOKafkaAdminClient, request: pytest.FixtureRequest
) -> AsyncIterator[Settings]:
    """Settings naming action, registry and customer-360 topics of this test
    alone (2 partitions each; the last two compacted, as deployed)."""
    prefix = f"test-{RUN}-{request.node.name[-20:]}".replace("_", "-")
    own = msgspec.structs.replace(
        settings,
        kafka=msgspec.structs.replace(
            settings.kafka,
            action_topic_prefix=f"{prefix}.crm.actions.",
            registry_topic=f"{prefix}.iot.registry",
            customer360_topic=f"{prefix}.customer360",
        ),
    )
    compacted = [own.kafka.registry_topic, own.kafka.customer360_topic]
    names = [*action_topics(own), *compacted]
    await kafka.create_topics(
        [
            NewTopic(
                t,
                num_partitions=2,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if t in compacted else {},
            )
            for t in names
        ]
    )
    yield own
    await kafka.delete_topics(names)


async def eventually(
    probe: Callable[[], Any], expected: Any = True, deadline_s: float = 30.0
) -> None:
    """Await ``probe() == expected`` (probe may be async), polling, failing
    after ``deadline_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value == expected:
            return
        if loop.time() > end:
            raise AssertionError(f"still {value!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


def make_action(n: int, customer: str, at: float | None = None) -> dict[str, Any]:
    return {
        "action_id": f"{RUN}-act-{customer}-{n}",
        "type": "coupon",
        "customer_id": customer,
        "device_id": f"d-{n % 3}",
        "rule": {"id": "coupon-low-detergent", "version": 2},
        "at": 1763700000.0 + n if at is None else at,
        "emitted_at": 1763700001.5 + n,
        "payload": {"discount_pct": 10, "n": n},
        "evidence": {"events": [f"e{n}"], "score": {"depletion": 0.9}},
        "schema_version": 1,
    }


# -- migrations ---------------------------------------------------------------


def test_migrations_apply_once_record_versions_and_refuse_edits(
    cql: Session, settings: Settings
) -> None:
    keyspace = f"{settings.cassandra.keyspace}_m"
    assert apply_migrations(cql, keyspace, 1) == [m.version for m in MIGRATIONS]
    assert apply_migrations(cql, keyspace, 1) == []

    recorded = {
        row["version"]: row
        for row in cql.execute(f"SELECT * FROM {keyspace}.schema_migrations")  # dict rows
    }
    assert {v: r["checksum"] for v, r in recorded.items()} == {
        m.version: m.checksum for m in MIGRATIONS
    }
    assert all(r["applied_at"] is not None and r["name"] for r in recorded.values())
    tables = {
        row["table_name"]
        for row in cql.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)
        )
    }
    assert tables == {
        "schema_migrations",
        "action_log",
        "actions_by_id",
        "customer_360",
        "device_registry",
        "erasures",
    }

    cql.execute(
        f"UPDATE {keyspace}.schema_migrations SET checksum = 'edited' WHERE version = %s",
        (MIGRATIONS[0].version,),
    )
    with pytest.raises(MigrationError, match="must not be edited"):
        apply_migrations(cql, keyspace, 1)


# -- the store ------------------------------------------------------------------


async def test_writing_an_action_twice_leaves_one_row_in_each_table(
    store: CassandraStore,
) -> None:
    customer = f"{RUN}-twice"
    by_id_before = await store.count_rows("actions_by_id")
    action = make_action(1, customer)

    await store.write_actions([action])
    await store.write_actions([action])

    assert await store.count_actions(customer) == 1
    assert await store.count_rows("actions_by_id") == by_id_before + 1
    stored = await store.read_action(action["action_id"])
    assert stored is not None
    for field in (
        "action_id",
        "type",
        "customer_id",
        "device_id",
        "rule",
        "at",
        "emitted_at",
        "payload",
        "evidence",
    ):
        assert stored[field] == action[field], field
    assert stored["schema_version"] == action["schema_version"] == 1


async def test_a_customers_history_reads_newest_first(store: CassandraStore) -> None:
    customer = f"{RUN}-history"
    actions = [make_action(n, customer, at=1763700000.0 + t) for n, t in enumerate([5, 1, 9, 3])]
    await store.write_actions(actions)

    history = await store.read_actions(customer, limit=3)
    assert [a["at"] for a in history] == [1763700009.0, 1763700005.0, 1763700003.0]
    assert history[0] == {
        **actions[2],
        "topic": None,
        "written_at": history[0]["written_at"],
    }
    summary = await store.read_customer_360(customer)
    assert summary is not None and summary["last_action_at"] == 1763700009.0


async def test_ttl_is_applied_per_table(store: CassandraStore, cql: Session) -> None:
    customer = f"{RUN}-ttl"
    action = make_action(1, customer)
    await store.write_actions([action])
    ks = store.keyspace

    (log_row,) = cql.execute(
        f"SELECT TTL(type) AS ttl FROM {ks}.action_log WHERE customer_id = %s", (customer,)
    )
    (by_id_row,) = cql.execute(
        f"SELECT TTL(type) AS ttl FROM {ks}.actions_by_id WHERE action_id = %s",
        (action["action_id"],),
    )
    (summary_row,) = cql.execute(
        f"SELECT TTL(last_action_at) AS ttl FROM {ks}.customer_360 WHERE customer_id = %s",
        (customer,),
    )
    assert 3500 < log_row["ttl"] <= 3600
    assert 7100 < by_id_row["ttl"] <= 7200
    assert summary_row["ttl"] is None  # state tables never expire by default


async def test_customer_360_merges_fields_and_times_only_move_forward(
    store: CassandraStore,
) -> None:
    customer = f"{RUN}-360"
    await store.upsert_customer_360(
        customer,
        tier="gold",
        segment="family",
        consent={"marketing": True},
        counters={"events": 10},
        last_event_at=2000.0,
        summary={"health": "ok"},
    )
    await store.upsert_customer_360(
        customer, consent={"service": False}, counters={"alerts": 1}, last_event_at=1500.0
    )
    await store.write_actions([make_action(1, customer, at=3000.0)])
    await store.write_actions([make_action(2, customer, at=2500.0)])  # arrives late

    summary = await store.read_customer_360(customer)
    assert summary is not None
    assert (summary["tier"], summary["segment"]) == ("gold", "family")
    assert summary["consent"] == {"marketing": True, "service": False}
    assert summary["counters"] == {"events": 10, "alerts": 1}
    assert summary["last_event_at"] == 2000.0
    assert summary["last_action_at"] == 3000.0
    assert summary["summary"] == {"health": "ok"}


async def test_registry_mirror_tracks_owner_moves_and_deletions(store: CassandraStore) -> None:
    device, first, second = f"{RUN}-dev", f"{RUN}-owner-1", f"{RUN}-owner-2"
    await store.upsert_device(
        device, customer_id=first, device_type="washer", model="WX-200", registered_at=1763700000
    )
    await store.upsert_device(device, customer_id=second, device_type="washer")

    row = await store.read_device(device)
    assert row is not None
    assert (row["customer_id"], row["deleted"], row["model"]) == (second, False, None)
    assert (await store.read_customer_360(first) or {})["devices"] == []
    assert (await store.read_customer_360(second) or {})["devices"] == [device]

    await store.delete_device(device)
    row = await store.read_device(device)
    assert row is not None and row["deleted"] is True
    assert (await store.read_customer_360(second) or {})["devices"] == []


# -- the sink -----------------------------------------------------------------


async def produce(
    settings: Settings, records: Sequence[tuple[str, bytes, bytes | None]], *, abort: bool = False
) -> None:
    """Send (topic, key, value) records in one transaction (aborted if asked)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        transactional_id=f"test-{RUN}-{secrets.token_hex(3)}",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for topic, key, value in records:
            await producer.send(topic, key=key, value=value)
        if abort:
            await producer.abort_transaction()
        else:
            await producer.commit_transaction()
    finally:
        await producer.stop()


def action_records(
    settings: Settings, customer: str, numbers: range
) -> list[tuple[str, bytes, bytes]]:
    topics = action_topics(settings)
    return [
        (topics[n % len(topics)], customer.encode(), orjson.dumps(make_action(n, customer)))
        for n in numbers
    ]


async def committed_offsets(
    admin: AIOKafkaAdminClient, group: str, topics: Sequence[str]
) -> dict[TopicPartition, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in offsets.items() if tp.topic in topics}


async def records_after(
    settings: Settings, offsets: Mapping[TopicPartition, int], topics: Sequence[str]
) -> int:
    """Committed records a consumer restarting from ``offsets`` would still get."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(2)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, offsets.get(tp, 0))
        ends = await consumer.end_offsets(tps)
        count = 0
        # Positions reach the end offsets (past transaction markers) once all is read.
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=200)
            count += sum(len(records) for records in batch.values())
        return count
    finally:
        await consumer.stop()


async def test_sink_writes_committed_actions_and_mirrors_the_registry(
    sink_settings: Settings, store: CassandraStore, kafka: AIOKafkaAdminClient
) -> None:
    settings = sink_settings
    customer = f"{RUN}-sink"
    group = f"test-{RUN}-sink"
    sink = CassandraSink(settings, store, group_id=group, lag_interval_s=0.2)
    await sink.start()
    try:
        await produce(settings, action_records(settings, customer, range(100, 140)))
        await produce(settings, action_records(settings, customer, range(900, 905)), abort=True)
        registry = settings.kafka.registry_topic
        registration = {
            "device_id": f"{RUN}-d1",
            "customer_id": customer,
            "device_type": "vehicle",
            "model": "EV-1",
            "registered_at": 1763700000,
        }
        await produce(
            settings,
            [
                (registry, f"{RUN}-d1".encode(), orjson.dumps(registration)),
                (
                    registry,
                    f"{RUN}-d2".encode(),
                    orjson.dumps({**registration, "device_id": f"{RUN}-d2"}),
                ),
                (registry, f"{RUN}-d2".encode(), None),
            ],
        )

        await eventually(lambda: store.count_actions(customer), 40)

        async def device_state() -> tuple[Any, Any]:
            d1, d2 = await store.read_device(f"{RUN}-d1"), await store.read_device(f"{RUN}-d2")
            return (d1 or {}).get("deleted"), (d2 or {}).get("deleted")

        await eventually(device_state, (False, True))
        await eventually(lambda: sink.metrics.lag, 0)
    finally:
        await sink.stop()

    # Everything written is committed: a restarted sink would get nothing again.
    topics = [*action_topics(settings), registry]
    assert await records_after(settings, await committed_offsets(kafka, group, topics), topics) == 0

    # Only committed transactions reach the audit trail (read_committed).
    assert await store.count_actions(customer) == 40
    assert await store.read_action(f"{RUN}-act-{customer}-900") is None
    assert sink.metrics.written == 40 and sink.metrics.rejected == 0
    assert (await store.read_customer_360(customer) or {})["devices"] == [f"{RUN}-d1"]


def customer_summary(
    customer: str, *, tier: str, consent: dict[str, bool], devices: dict[str, float]
) -> dict[str, Any]:
    """A summary shaped as the worker publishes it (tables.state.summary)."""
    state = new_customer_state(customer)
    apply_profile(state, {"customer_id": customer, "tier": tier, "segment": "family",
                          "consent": consent})  # fmt: skip
    for device_id, ts in devices.items():
        record_event(
            state,
            state.devices.setdefault(device_id, DeviceState()),
            {"id": f"e-{device_id}", "ts": ts, "device_id": device_id, "device_type": "washer",
             "kind": "reading", "temperature_c": 41.5},
        )  # fmt: skip
        note_action(state, {"action_id": f"a-{device_id}", "type": "coupon", "at": ts - 10})
    return orjson.loads(orjson.dumps(summary(state)))


async def test_sink_upserts_the_latest_customer_360_summary(
    sink_settings: Settings, store: CassandraStore, kafka: AIOKafkaAdminClient
) -> None:
    settings = sink_settings
    customer = f"{RUN}-360-sink"
    group = f"test-{RUN}-360-sink"
    topic = settings.kafka.customer360_topic
    first = customer_summary(
        customer,
        tier="silver",
        consent={"marketing": True, "service": True},
        devices={"d-1": 1763700000.0, "d-2": 1763700060.0},
    )
    outdated = customer_summary(customer, tier="bronze", consent={}, devices={"d-1": 1.0})
    latest = customer_summary(
        customer,
        tier="gold",
        consent={"service": True},  # marketing consent revoked
        devices={"d-1": 1763700000.0, "d-2": 1763700060.0, "d-3": 1763700120.5},
    )
    sink = CassandraSink(settings, store, group_id=group, lag_interval_s=0.2)
    await sink.start()
    try:
        await produce(settings, [(topic, customer.encode(), orjson.dumps(first))])

        async def tier() -> Any:
            return ((await store.read_customer_360(customer)) or {}).get("tier")

        await eventually(tier, "silver")
        # Two summaries in one transaction: the later one is what remains.
        await produce(
            settings,
            [
                (topic, customer.encode(), orjson.dumps(outdated)),
                (topic, customer.encode(), orjson.dumps(latest)),
            ],
        )
        await eventually(tier, "gold")
        await eventually(lambda: sink.metrics.lag, 0)
    finally:
        await sink.stop()

    row = await store.read_customer_360(customer)
    assert row is not None
    assert (row["tier"], row["segment"]) == ("gold", "family")
    assert row["consent"] == {"service": True}  # replaced, not merged
    assert row["devices"] == ["d-1", "d-2", "d-3"]
    assert row["counters"] == {"events": 3, "actions": 3}
    assert row["last_event_at"] == 1763700120.5
    assert row["last_action_at"] == 1763700110.5
    assert row["summary"] == latest
    assert row["updated_at"] is not None
    assert sink.metrics.rejected == 0
    committed = await committed_offsets(kafka, group, [topic])
    assert await records_after(settings, committed, [topic]) == 0


class FlakyStore:
    """The real store, but writes fail while ``down`` is set: Cassandra gone."""

    def __init__(self, store: CassandraStore) -> None:
        self.store = store
        self.down = True
        self.failures = 0

    async def write_actions(self, actions: Sequence[Mapping[str, Any]]) -> int:
        if self.down:
            self.failures += 1
            raise ConnectionError("Cassandra is down")
        return await self.store.write_actions(actions)

    async def upsert_device(self, device_id: str, **fields: Any) -> None:
        await self.store.upsert_device(device_id, **fields)

    async def delete_device(self, device_id: str) -> None:
        await self.store.delete_device(device_id)

    async def write_customer_summaries(self, summaries: Mapping[str, Mapping[str, Any]]) -> int:
        return await self.store.write_customer_summaries(summaries)


async def test_sink_holds_back_during_an_outage_and_loses_nothing(
    sink_settings: Settings, store: CassandraStore, kafka: AIOKafkaAdminClient
) -> None:
    settings = sink_settings
    customer = f"{RUN}-outage"
    group = f"test-{RUN}-outage"
    flaky = FlakyStore(store)
    sink = CassandraSink(
        settings,
        flaky,
        group_id=group,
        mirror_registry=False,
        batch_size=10,
        backoff=Backoff(base_s=0.02, max_s=0.1),
        lag_interval_s=0.1,
    )
    topics = action_topics(settings)
    before = await committed_offsets(kafka, group, topics)
    await sink.start()
    try:
        await produce(settings, action_records(settings, customer, range(0, 30)))
        await eventually(lambda: flaky.failures >= 3)
        await produce(settings, action_records(settings, customer, range(30, 80)))
        await eventually(lambda: flaky.failures >= 8)

        assert sink.metrics.healthy is False
        assert "Cassandra is down" in (sink.metrics.last_error or "")
        assert await store.count_actions(customer) == 0
        assert await committed_offsets(kafka, group, topics) == before
        # The backlog (80 actions, plus transaction markers) is counted as lag.
        await eventually(lambda: (sink.metrics.lag or 0) >= 80)

        flaky.down = False
        await eventually(lambda: store.count_actions(customer), 80)
        await eventually(lambda: sink.metrics.lag, 0)
        assert sink.metrics.healthy is True
    finally:
        await sink.stop()
    after = await committed_offsets(kafka, group, topics)
    assert await records_after(settings, after, topics) == 0
    assert sink.metrics.written == 80
    assert sink.metrics.retries == flaky.failures


class CutCable:
    """A TCP relay in front of Cassandra that can be unplugged and plugged in
    again: to the driver it looks exactly like Cassandra going down and
    coming back on the same address, without touching the shared server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def plug(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.transport.abort()
                self._writers.discard(sink)

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.mark.usefixtures("store")  # the keyspace exists before the cable is plugged in
async def test_sink_survives_cassandra_going_away_and_coming_back(
    sink_settings: Settings, cql: Session, kafka: AIOKafkaAdminClient
) -> None:
    """Cassandra unreachable at start, then up, then down again while
    actions keep coming, then back: every action ends up stored once."""
    cable = CutCable(
        sink_settings.cassandra.contact_points.split(",")[0], sink_settings.cassandra.port
    )
    await cable.plug()
    await cable.unplug()  # keep the port, start "down"
    settings = msgspec.structs.replace(
        sink_settings,
        cassandra=msgspec.structs.replace(sink_settings.cassandra, port=cable.port),
    )
    customer = f"{RUN}-cable"
    group = f"test-{RUN}-cable"
    topics = action_topics(settings)
    store = CassandraStore(settings, request_timeout_s=2.0)
    sink = CassandraSink(
        settings,
        store,
        group_id=group,
        mirror_registry=False,
        batch_size=10,
        backoff=Backoff(base_s=0.05, max_s=0.5),
        lag_interval_s=0.1,
    )

    def stored() -> int:  # counted directly, not through the cable
        (row,) = cql.execute(
            f"SELECT COUNT(*) AS n FROM {settings.cassandra.keyspace}.action_log "
            "WHERE customer_id = %s",
            (customer,),
        )
        return int(row["n"])

    await sink.start()
    try:
        await produce(settings, action_records(settings, customer, range(0, 20)))
        await eventually(lambda: sink.metrics.retries >= 2)
        assert not store.connected and sink.metrics.healthy is False

        await cable.plug()
        await eventually(stored, 20, deadline_s=60)
        await eventually(lambda: sink.metrics.healthy)
        retries_before_outage = sink.metrics.retries

        async def committed_total() -> int:
            return sum((await committed_offsets(kafka, group, topics)).values())

        # The sink commits after each write: wait for the last of them.
        await eventually(committed_total, 20)
        committed_before_outage = await committed_offsets(kafka, group, topics)

        await cable.unplug()
        await produce(settings, action_records(settings, customer, range(20, 70)))
        await eventually(lambda: sink.metrics.retries >= retries_before_outage + 2)
        assert sink.metrics.healthy is False
        assert await committed_offsets(kafka, group, topics) == committed_before_outage
        await eventually(lambda: (sink.metrics.lag or 0) >= 50)

        await cable.plug()
        await eventually(stored, 70, deadline_s=60)
        await eventually(lambda: sink.metrics.lag, 0)
        assert sink.metrics.healthy is True
    finally:
        await sink.stop()
        await store.close()
        if cable._server is not None:
            await cable.unplug()
    assert stored() == 70
    assert await records_after(settings, await committed_offsets(kafka, group, topics), topics) == 0
