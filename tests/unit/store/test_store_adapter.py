"""CassandraStore against a stand-in driver: statements, TTLs, the async
bridge and bounded concurrency. The real server is in tests/integration."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from cassandra.auth import PlainTextAuthProvider
from cassandra.query import UNSET_VALUE, BatchStatement

import engine.store.cassandra as cassandra_module
from engine.config import CassandraSettings, Settings, load_settings
from engine.store.cassandra import (
    CassandraStore,
    StoreConfigError,
    build_cluster,
    default_table_ttls,
)
from engine.store.rows import InvalidRecord


class Prepared:
    def __init__(self, cql: str) -> None:
        self.cql = " ".join(cql.split())
        self.is_idempotent = False


class Response:
    """Mimics ResponseFuture: callbacks fire on the driver's I/O thread."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.registered = threading.Event()
        self.callbacks: tuple[Callable[..., None], tuple[Any, ...]] | None = None
        self.errbacks: tuple[Callable[..., None], tuple[Any, ...]] | None = None

    def add_callbacks(
        self,
        callback: Callable[..., None],
        errback: Callable[..., None],
        callback_args: tuple[Any, ...] = (),
        errback_args: tuple[Any, ...] = (),
    ) -> None:
        self.callbacks, self.errbacks = (callback, callback_args), (errback, errback_args)
        self.registered.set()

    def settle(self) -> None:
        assert self.callbacks is not None and self.errbacks is not None
        if isinstance(self.result, Exception):
            errback, args = self.errbacks
            errback(self.result, *args)
        else:
            callback, args = self.callbacks
            callback(self.result, *args)


class FakeSession:
    """Answers requests from a background thread, one at a time."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.answer: Callable[[Any, Any], Any] = lambda statement, params: []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Response | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def prepare(self, cql: str) -> Prepared:
        return Prepared(cql)

    def execute_async(self, statement: Any, params: Any) -> Response:
        with self._lock:
            self.requests.append((statement, params))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            result = self.answer(statement, params)
        except Exception as exc:
            result = exc
        response = Response(result)
        self._queue.put(response)
        return response

    def _serve(self) -> None:
        while (response := self._queue.get()) is not None:
            # Callbacks are registered right after execute_async returns.
            if not response.registered.wait(timeout=5):
                raise AssertionError("callbacks never registered")
            with self._lock:
                self.in_flight -= 1
            response.settle()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


class FakeCluster:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.shut_down = False

    def connect(self) -> FakeSession:
        return self.session

    def shutdown(self) -> None:
        self.shut_down = True


def cql_of(statement: Any) -> str:
    return statement.cql if isinstance(statement, Prepared) else str(statement)


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSession]:
    fake = FakeSession()
    monkeypatch.setattr(cassandra_module, "build_cluster", lambda *a, **k: FakeCluster(fake))
    yield fake
    fake.close()


def settings_with(**cassandra: Any) -> Settings:
    return msgspec.structs.replace(Settings(), cassandra=CassandraSettings(**cassandra))


def action(n: int, customer: str = "c-1", at: float | None = None) -> dict[str, Any]:
    return {
        "action_id": f"a-{n}",
        "type": "coupon",
        "customer_id": customer,
        "at": 1000.0 + n if at is None else at,
        "rule": {"id": "r", "version": 1},
        "payload": {"n": n},
    }


async def test_write_actions_upserts_both_tables_with_the_action_ttl(session: FakeSession) -> None:
    store = CassandraStore(settings_with(action_ttl_s=3600), migrate=False)
    assert await store.write_actions([action(1), action(2)]) == 2

    inserts = [(cql_of(s), p) for s, p in session.requests if cql_of(s).startswith("INSERT")]
    assert [cql.split()[2] for cql, _ in inserts] == [
        "iotcrm.action_log",
        "iotcrm.actions_by_id",
        "iotcrm.action_log",
        "iotcrm.actions_by_id",
    ]
    assert all(cql.endswith("USING TTL ?") and params[-1] == 3600 for cql, params in inserts)
    first_row = inserts[0][1]
    assert first_row[:4] == ("c-1", 1001000, "a-1", "coupon")
    assert inserts[0][1][:-2] == inserts[1][1][:-2]  # same row in both tables (but written_at)
    await store.close()


async def test_last_action_at_is_written_once_per_customer_as_a_max_wins_cell(
    session: FakeSession,
) -> None:
    store = CassandraStore(Settings(), migrate=False)
    await store.write_actions(
        [action(1, "c-1", at=50.0), action(2, "c-1", at=70.0), action(3, "c-2", at=60.0)]
    )
    touches = {
        params[3]: params for s, params in session.requests if "SET last_action_at" in cql_of(s)
    }
    assert "USING TIMESTAMP ? AND TTL ?" in next(
        cql_of(s) for s, _ in session.requests if "last_action_at" in cql_of(s)
    )
    # write time (µs) = the value (ms) × 1000: the latest instant wins.
    assert touches == {"c-1": (70_000_000, 0, 70_000, "c-1"), "c-2": (60_000_000, 0, 60_000, "c-2")}
    await store.close()


async def test_one_malformed_action_means_nothing_is_written(session: FakeSession) -> None:
    store = CassandraStore(Settings(), migrate=False)
    await store.connect()
    with pytest.raises(InvalidRecord):
        await store.write_actions([action(1), {"action_id": "x"}])
    assert session.requests == []
    await store.close()


async def test_requests_in_flight_never_exceed_the_bound(session: FakeSession) -> None:
    store = CassandraStore(Settings(), migrate=False, max_in_flight=3)
    await store.write_actions([action(n, customer=f"c-{n}") for n in range(40)])
    assert len(session.requests) == 40 * 3
    assert 1 <= session.max_in_flight <= 3
    assert session.in_flight == 0
    await store.close()


async def test_a_failed_request_fails_the_call_after_the_others_finish(
    session: FakeSession,
) -> None:
    store = CassandraStore(Settings(), migrate=False, max_in_flight=4)

    def fail_one(statement: Any, params: Any) -> Any:
        if params and params[2] == "a-5" and "actions_by_id" in cql_of(statement):
            raise TimeoutError("write timeout")
        return []

    session.answer = fail_one
    with pytest.raises(TimeoutError, match="write timeout"):
        await store.write_actions([action(n) for n in range(10)])
    assert session.in_flight == 0
    # Every slot came back: the next call is not starved.
    session.answer = lambda statement, params: []
    assert await store.write_actions([action(n) for n in range(10)]) == 10
    await store.close()


@pytest.fixture
def batched(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[tuple[str, tuple[Any, ...]]]]:
    """The (cql, parameters) added to each BatchStatement, batch by batch."""
    batches: dict[int, list[tuple[str, tuple[Any, ...]]]] = {}

    def add(self: BatchStatement, statement: Any, parameters: Any = None) -> None:
        batches.setdefault(id(self), []).append((cql_of(statement), tuple(parameters)))

    monkeypatch.setattr(BatchStatement, "add", add)
    return batches


async def test_customer_360_is_one_batch_with_max_wins_times_only_when_given(
    session: FakeSession, batched: dict[int, list[tuple[str, tuple[Any, ...]]]]
) -> None:
    store = CassandraStore(Settings(), migrate=False)
    await store.upsert_customer_360("c-1", tier="gold", counters={"events": 12})
    await store.upsert_customer_360("c-1", last_event_at=100.0, last_action_at=90.5)

    assert len(session.requests) == 2
    assert all(isinstance(batch, BatchStatement) for batch, _ in session.requests)
    first, second = (batched[id(batch)] for batch, _ in session.requests)
    assert len(first) == 1
    assert [cql.split(" SET ")[1].split(" =")[0] for cql, _ in second] == [
        "tier",
        "last_event_at",
        "last_action_at",
    ]
    assert all("USING TIMESTAMP ? AND TTL ?" in cql for cql, _ in second[1:])
    assert second[1][1] == (100_000_000, 0, 100_000, "c-1")
    assert second[2][1] == (90_500_000, 0, 90_500, "c-1")
    await store.close()


async def test_customer_360_binds_unset_not_null_for_missing_fields(
    session: FakeSession, batched: dict[int, list[tuple[str, tuple[Any, ...]]]]
) -> None:
    store = CassandraStore(Settings(), migrate=False)
    await store.upsert_customer_360("c-1", segment="family", consent={"marketing": True})

    ((batch, _),) = session.requests
    ((_, params),) = batched[id(batch)]
    ttl, tier, segment, consent, devices, counters, summary, _updated, key = params
    # UNSET leaves a column as it is (and writes no tombstone); None would erase it.
    assert (tier, devices, counters, summary) == (UNSET_VALUE,) * 4
    assert (segment, consent, key, ttl) == ("family", {"marketing": True}, "c-1", 0)
    await store.close()


def customer_summary(customer_id: str, **customer: Any) -> dict[str, Any]:
    return {
        "customer": {"customer_id": customer_id, **customer},
        "devices": {"d-1": {"last_ts": 100.0}, "d-2": {"last_ts": 130.5}},
        "counts": {"events": 7, "actions": 2},
        "recent_actions": [
            {"action_id": "a-1", "type": "coupon", "at": 90.0},
            {"action_id": "a-2", "type": "coupon", "at": 120.0},
        ],
    }


async def test_a_summary_replaces_the_snapshot_fields_in_one_batch_per_customer(
    session: FakeSession, batched: dict[int, list[tuple[str, tuple[Any, ...]]]]
) -> None:
    store = CassandraStore(settings_with(customer_360_ttl_s=600), migrate=False)
    written = await store.write_customer_summaries(
        {
            "c-1": customer_summary("c-1", tier="gold", consent={"marketing": True}),
            "c-2": customer_summary("c-2"),
        }
    )

    assert written == 2
    assert len(session.requests) == 2
    assert all(isinstance(batch, BatchStatement) for batch, _ in session.requests)
    by_customer = {
        statements[0][1][-1]: statements
        for statements in (batched[id(batch)] for batch, _ in session.requests)
    }
    (snapshot_cql, snapshot), (event_cql, event), (action_cql, action_touch) = by_customer["c-1"]
    # Snapshot fields are replaced (a revoked consent flag must not survive a
    # merge); devices are only added to.
    assert "consent = ?," in snapshot_cql and "counters = ?," in snapshot_cql
    assert "devices = devices + ?" in snapshot_cql
    ttl, tier, segment, consent, devices, counters, text, _updated, key = snapshot
    assert (ttl, tier, segment, key) == (600, "gold", None, "c-1")
    assert (consent, devices, counters) == (
        {"marketing": True},
        {"d-1", "d-2"},
        {"events": 7, "actions": 2},
    )
    assert orjson.loads(text)["customer"]["tier"] == "gold"
    # The times are max-wins cells, as when actions are written.
    assert "SET last_event_at" in event_cql and "SET last_action_at" in action_cql
    assert event == (130_500_000, 600, 130_500, "c-1")
    assert action_touch == (120_000_000, 600, 120_000, "c-1")
    await store.close()


async def test_a_summary_without_devices_or_times_touches_neither(
    session: FakeSession, batched: dict[int, list[tuple[str, tuple[Any, ...]]]]
) -> None:
    store = CassandraStore(Settings(), migrate=False)
    await store.write_customer_summaries({"c-1": {"customer": {"customer_id": "c-1"}}})
    ((batch, _),) = session.requests
    ((_, params),) = batched[id(batch)]
    assert params[4] is UNSET_VALUE  # no empty-set append
    await store.close()


async def test_one_malformed_summary_means_no_summary_is_written(session: FakeSession) -> None:
    store = CassandraStore(Settings(), migrate=False)
    await store.connect()
    with pytest.raises(InvalidRecord, match="differs"):
        await store.write_customer_summaries(
            {"c-1": customer_summary("c-1"), "c-2": customer_summary("c-3")}
        )
    assert session.requests == []
    assert await store.write_customer_summaries({}) == 0
    await store.close()


async def test_moving_a_device_removes_it_from_the_previous_owner(session: FakeSession) -> None:
    def answer(statement: Any, params: Any) -> Any:
        if cql_of(statement).startswith("SELECT * FROM iotcrm.device_registry"):
            return [
                {
                    "device_id": "d-1",
                    "customer_id": "c-old",
                    "device_type": "washer",
                    "model": None,
                    "registered_at": None,
                    "deleted": False,
                    "updated_at": None,
                }
            ]
        return []

    session.answer = answer
    store = CassandraStore(Settings(), migrate=False)
    await store.upsert_device("d-1", customer_id="c-new", device_type="washer")

    cqls = [(cql_of(s), p) for s, p in session.requests]
    removes = [p for c, p in cqls if "devices = devices - ?" in c]
    adds = [p for c, p in cqls if "devices = devices + ?" in c]
    assert removes and removes[0][1:][0] == {"d-1"} and removes[0][-1] == "c-old"
    assert adds and adds[0][4] == {"d-1"} and adds[0][-1] == "c-new"
    # The registry row is written last, after the owners' sets.
    assert cqls[-1][0].startswith("INSERT INTO iotcrm.device_registry")
    await store.close()


async def test_a_tombstone_marks_the_device_deleted_and_leaves_its_owner(
    session: FakeSession,
) -> None:
    session.answer = lambda statement, params: (
        [
            {
                "device_id": "d-1",
                "customer_id": "c-1",
                "device_type": None,
                "model": None,
                "registered_at": None,
                "deleted": False,
                "updated_at": None,
            }
        ]
        if cql_of(statement).startswith("SELECT")
        else []
    )
    store = CassandraStore(Settings(), migrate=False)
    await store.delete_device("d-1")
    cqls = [cql_of(s) for s, _ in session.requests]
    assert any("devices = devices - ?" in c for c in cqls)
    assert "SET deleted = true" in cqls[-1]
    await store.close()


async def test_statements_are_prepared_idempotent_and_close_shuts_down(
    session: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    clusters: list[FakeCluster] = []

    def make(*args: Any, **kwargs: Any) -> FakeCluster:
        clusters.append(FakeCluster(session))
        return clusters[-1]

    monkeypatch.setattr(cassandra_module, "build_cluster", make)
    store = CassandraStore(Settings(), migrate=False)
    await store.connect()
    await store.connect()  # idempotent
    assert len(clusters) == 1 and store.connected
    assert all(p.is_idempotent for p in store._statements.values())
    await store.close()
    assert clusters[0].shut_down and not store.connected


def test_ttls_per_table_default_from_settings_and_can_be_overridden() -> None:
    store = CassandraStore(settings_with(action_ttl_s=86400), table_ttls={"customer_360": 60})
    assert store._ttl == {
        "action_log": 86400,
        "actions_by_id": 86400,
        "customer_360": 60,
        "device_registry": 0,
    }
    configured = settings_with(customer_360_ttl_s=7200, device_registry_ttl_s=3600)
    assert default_table_ttls(configured) == {
        "action_log": 0,
        "actions_by_id": 0,
        "customer_360": 7200,
        "device_registry": 3600,
    }
    overridden = CassandraStore(configured, table_ttls={"device_registry": 0})
    assert overridden._ttl["customer_360"] == 7200 and overridden._ttl["device_registry"] == 0
    with pytest.raises(ValueError, match="unknown table"):
        CassandraStore(Settings(), table_ttls={"actions": 1})
    with pytest.raises(ValueError, match="TTL"):
        CassandraStore(settings_with(action_ttl_s=-5))


def test_state_table_ttls_are_settings_keys_overridable_from_the_environment() -> None:
    shipped = load_settings(path=Path(__file__).parents[3] / "iotcrm.toml", environ={})
    assert default_table_ttls(shipped) == dict.fromkeys(cassandra_module.TABLES, 0)
    overridden = load_settings(
        path=None,
        environ={
            "IOTCRM_CASSANDRA_CUSTOMER_360_TTL_S": "86400",
            "IOTCRM_CASSANDRA_DEVICE_REGISTRY_TTL_S": "600",
        },
    )
    assert default_table_ttls(overridden)["customer_360"] == 86400
    assert default_table_ttls(overridden)["device_registry"] == 600
    with pytest.raises(ValueError, match="TTL of device_registry"):
        CassandraStore(settings_with(device_registry_ttl_s=-1))


def test_keyspace_must_be_a_plain_identifier() -> None:
    with pytest.raises(ValueError, match="identifier"):
        CassandraStore(Settings(), keyspace="iotcrm; DROP TABLE x")


def test_password_comes_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTCRM_CASSANDRA_PASSWORD", raising=False)
    monkeypatch.delenv("IOTCRM_CASSANDRA_PASSWORD_FILE", raising=False)
    assert build_cluster(Settings()).auth_provider is None
    with pytest.raises(StoreConfigError, match="IOTCRM_CASSANDRA_PASSWORD"):
        build_cluster(settings_with(username="iotcrm"))

    monkeypatch.setenv("IOTCRM_CASSANDRA_PASSWORD", "s3cret")
    cluster = build_cluster(settings_with(username="iotcrm", contact_points="10.0.0.1, 10.0.0.2"))
    assert isinstance(cluster.auth_provider, PlainTextAuthProvider)
    assert (cluster.auth_provider.username, cluster.auth_provider.password) == ("iotcrm", "s3cret")
    assert cluster.contact_points == ["10.0.0.1", "10.0.0.2"]
    assert cluster.port == 19042


async def test_concurrent_requests_share_one_connection_attempt_and_its_failure(
    session: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[FakeCluster] = []
    down = True

    class Unreachable(Exception):
        pass

    class FlakyCluster(FakeCluster):
        def connect(self) -> FakeSession:
            if down:
                raise Unreachable("no host available")
            return self.session

    def make(*args: Any, **kwargs: Any) -> FakeCluster:
        attempts.append(FlakyCluster(session))
        return attempts[-1]

    monkeypatch.setattr(cassandra_module, "build_cluster", make)
    store = CassandraStore(Settings(), migrate=False)

    outcomes = await asyncio.gather(
        *(store.write_actions([action(n)]) for n in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, Unreachable) for o in outcomes)
    assert len(attempts) == 1 and attempts[0].shut_down  # a failed attempt leaks nothing

    down = False
    assert await asyncio.gather(*(store.write_actions([action(n)]) for n in range(10))) == [1] * 10
    assert len(attempts) == 2 and store.connected
    await store.close()
