"""The async Cassandra adapter: iotcrm's system of record.

Requests go through the driver's ``execute_async``; each response future is
bridged to an asyncio future by callbacks (no thread per request), and at most
``max_in_flight`` requests are outstanding. The connection is opened lazily
(on :meth:`CassandraStore.connect` or the first request), so a store created
while Cassandra is down simply fails its requests until Cassandra is back:
callers such as :class:`engine.store.sink.CassandraSink` retry.

Every write is an idempotent upsert keyed by natural ids, so retrying a whole
batch after a partial failure is always safe.

Usage::

    store = CassandraStore(load_settings())
    await store.write_actions([action])
    history = await store.read_actions("c-001", limit=20)
    await store.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cassandra import ConsistencyLevel, ProtocolVersion
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    ResponseFuture,
    Session,
)
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement, dict_factory

from engine.config import Settings
from engine.erasure import ErasureReport
from engine.pseudonyms import pseudonyms_for
from engine.store.migrations import apply_migrations, check_identifier
from engine.store.rows import (
    ACTION_COLUMNS,
    action_from_row,
    action_row,
    check_ttl,
    customer_360_row,
    from_json_text,
    from_timestamp,
    to_json_text,
    to_millis,
)

log = logging.getLogger(__name__)

#: Tables whose writes carry a TTL; see ``table_ttls`` of CassandraStore.
TABLES: tuple[str, ...] = ("action_log", "actions_by_id", "customer_360", "device_registry")

_MAX_READ_LIMIT = 5000  # the driver's page size: one request, one page


_Connection = tuple[Cluster, Session, dict[str, PreparedStatement]]


class StoreConfigError(Exception):
    """The store's settings cannot work (e.g. a username without a password)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_table_ttls(settings: Settings) -> dict[str, int]:
    """Each table's TTL in seconds from the ``[cassandra]`` settings (0 = never):
    action tables ``action_ttl_s``, state tables ``customer_360_ttl_s`` and
    ``device_registry_ttl_s`` (by default they are current state and never
    expire)."""
    cfg = settings.cassandra
    return {
        "action_log": cfg.action_ttl_s,
        "actions_by_id": cfg.action_ttl_s,
        "customer_360": cfg.customer_360_ttl_s,
        "device_registry": cfg.device_registry_ttl_s,
    }


def build_cluster(settings: Settings, *, request_timeout_s: float = 10.0) -> Cluster:
    """A driver ``Cluster`` for the settings (not connected yet).

    Credentials: ``cassandra.username`` from the settings, the password only
    from the environment (``IOTCRM_CASSANDRA_PASSWORD``). With
    ``cassandra.tls``, TLS verified against ``cassandra.ssl_cafile``.
    """
    cfg = settings.cassandra
    auth = None
    if cfg.username:
        password = Settings.secret("CASSANDRA_PASSWORD")
        if password is None:
            raise StoreConfigError("cassandra.username is set but IOTCRM_CASSANDRA_PASSWORD is not")
        auth = PlainTextAuthProvider(username=cfg.username, password=password)
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        request_timeout=request_timeout_s,
        row_factory=dict_factory,
    )
    tls = None
    if cfg.tls:
        # check_hostname: the driver names each node's address as the server name
        tls = ssl.create_default_context(cafile=cfg.ssl_cafile or None)
    return Cluster(
        contact_points=[p.strip() for p in cfg.contact_points.split(",") if p.strip()],
        port=cfg.port,
        auth_provider=auth,
        ssl_context=tls,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        # Cassandra 4 and 5 speak v5; saying so skips the driver's downgrade dance.
        protocol_version=ProtocolVersion.V5,
        # Come back quickly after an outage; the sink's own backoff paces retries.
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=10.0),
        # Connecting reads the schema of every keyspace on the node; the
        # driver's 2 s is too short for a busy node with many keyspaces, and a
        # worker that cannot connect at start-up cannot run its migrations.
        control_connection_timeout=10.0,
    )


class CassandraStore:
    """Async access to the action log, customer 360 and device registry tables.

    ``keyspace`` defaults to ``settings.cassandra.keyspace``; with ``migrate``
    the schema is created/updated on connect (see engine.store.migrations).
    ``table_ttls`` overrides the TTL in seconds of any of :data:`TABLES`.
    Credentials as in :func:`build_cluster`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        keyspace: str | None = None,
        migrate: bool = True,
        max_in_flight: int = 128,
        table_ttls: Mapping[str, int] | None = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._settings = settings
        #: the ids actions are published, and so logged, under (privacy.pseudonymise_actions)
        self._pseudonyms = pseudonyms_for(settings)
        self._keyspace = check_identifier(keyspace or settings.cassandra.keyspace)
        self._migrate = migrate
        self._request_timeout_s = request_timeout_s
        ttls = default_table_ttls(settings)
        for table, ttl in (table_ttls or {}).items():
            if table not in TABLES:
                raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
            ttls[table] = ttl
        self._ttl = {table: check_ttl(table, ttl) for table, ttl in ttls.items()}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connecting: asyncio.Future[_Connection] | None = None
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._statements: dict[str, PreparedStatement] = {}
        self._completions: _Completions | None = None

    @property
    def keyspace(self) -> str:
        return self._keyspace

    @property
    def connected(self) -> bool:
        return self._session is not None

    # -- connection -------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection (and migrate) if not open yet; raises while
        Cassandra is unreachable. Concurrent callers share one attempt (and
        its failure), so a burst of requests during an outage costs one
        connection attempt, not one each."""
        if self._session is not None:
            return
        if self._connecting is None:
            # Connecting and DDL are blocking, one-off calls: a thread is fine.
            self._connecting = asyncio.ensure_future(asyncio.to_thread(self._connect_blocking))
            self._connecting.add_done_callback(self._connected)
        await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[_Connection]) -> None:
        # Runs before any waiter resumes, and even if every waiter was cancelled.
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._cluster, self._session, self._statements = attempt.result()

    async def close(self) -> None:
        """Shut the connection down (waiting for a connection attempt under way)."""
        if self._connecting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._connecting)
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    def _connect_blocking(self) -> _Connection:
        cluster = build_cluster(self._settings, request_timeout_s=self._request_timeout_s)
        try:
            session = cluster.connect()
            if self._migrate:
                applied = apply_migrations(
                    session, self._keyspace, self._settings.cassandra.replication_factor
                )
                if applied:
                    log.info("keyspace %s migrated to version %d", self._keyspace, applied[-1])
            statements = {name: session.prepare(cql) for name, cql in self._cql().items()}
            for statement in statements.values():
                statement.is_idempotent = True
        except BaseException:
            cluster.shutdown()
            raise
        return cluster, session, statements

    def _cql(self) -> dict[str, str]:
        ks = self._keyspace
        columns = ", ".join(ACTION_COLUMNS)
        markers = ", ".join("?" for _ in ACTION_COLUMNS)
        return {
            "insert_action_log": f"INSERT INTO {ks}.action_log ({columns}) VALUES ({markers}) "
            "USING TTL ?",
            "insert_action_by_id": f"INSERT INTO {ks}.actions_by_id ({columns}) "
            f"VALUES ({markers}) USING TTL ?",
            # Max-wins: the cell's write time is the value itself, so of two
            # writes the later instant survives whatever order they arrive in.
            "touch_last_action": f"UPDATE {ks}.customer_360 USING TIMESTAMP ? AND TTL ? "
            "SET last_action_at = ? WHERE customer_id = ?",
            "touch_last_event": f"UPDATE {ks}.customer_360 USING TIMESTAMP ? AND TTL ? "
            "SET last_event_at = ? WHERE customer_id = ?",
            "upsert_customer_360": f"UPDATE {ks}.customer_360 USING TTL ? SET tier = ?, "
            "segment = ?, consent = consent + ?, devices = devices + ?, "
            "counters = counters + ?, summary = ?, updated_at = ? WHERE customer_id = ?",
            # A published summary is a snapshot: it replaces the profile fields
            # and counters (a revoked consent flag must disappear, not linger
            # from an earlier merge); devices are only added (see upsert_device).
            "write_customer_summary": f"UPDATE {ks}.customer_360 USING TTL ? SET tier = ?, "
            "segment = ?, consent = ?, devices = devices + ?, counters = ?, summary = ?, "
            "updated_at = ? WHERE customer_id = ?",
            "remove_customer_device": f"UPDATE {ks}.customer_360 USING TTL ? "
            "SET devices = devices - ?, updated_at = ? WHERE customer_id = ?",
            "upsert_device": f"INSERT INTO {ks}.device_registry (device_id, customer_id, "
            "device_type, model, registered_at, deleted, updated_at) "
            "VALUES (?, ?, ?, ?, ?, false, ?) USING TTL ?",
            "delete_device": f"UPDATE {ks}.device_registry USING TTL ? "
            "SET deleted = true, updated_at = ? WHERE device_id = ?",
            "read_device": f"SELECT * FROM {ks}.device_registry WHERE device_id = ?",
            "read_actions": f"SELECT * FROM {ks}.action_log WHERE customer_id = ? LIMIT ?",
            "read_action": f"SELECT * FROM {ks}.actions_by_id WHERE action_id = ?",
            "count_actions": f"SELECT COUNT(*) AS n FROM {ks}.action_log WHERE customer_id = ?",
            "read_customer_360": f"SELECT * FROM {ks}.customer_360 WHERE customer_id = ?",
            # Erasure: deletes stamped a little ahead, so that cells written with
            # their event time as timestamp (touch_last_*: up to the allowed
            # future skew ahead) are deleted too.
            "read_action_ids": f"SELECT action_id FROM {ks}.action_log WHERE customer_id = ?",
            "delete_action_by_id": f"DELETE FROM {ks}.actions_by_id USING TIMESTAMP ? "
            "WHERE action_id = ?",
            "delete_action_log": f"DELETE FROM {ks}.action_log USING TIMESTAMP ? "
            "WHERE customer_id = ?",
            "delete_customer_360": f"DELETE FROM {ks}.customer_360 USING TIMESTAMP ? "
            "WHERE customer_id = ?",
            "delete_device_row": f"DELETE FROM {ks}.device_registry USING TIMESTAMP ? "
            "WHERE device_id = ?",
            "insert_erasure": f"INSERT INTO {ks}.erasures (request_id, requested_at, erased_at, "
            "completed_at, had_state, devices, pending_predictions, events_dropped, "
            "rows_deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            "read_erasure": f"SELECT * FROM {ks}.erasures WHERE request_id = ?",
        }

    # -- request plumbing -------------------------------------------------

    async def _ready(self) -> Session:
        if self._session is None:
            await self.connect()
        assert self._session is not None
        return self._session

    async def _execute_all(self, requests: Iterable[tuple[Any, Sequence[Any]]]) -> list[Any]:
        """Run requests concurrently (bounded); raise the first error after all
        have finished, so no request outlives the call."""
        session = await self._ready()
        completions = self._completions_for(asyncio.get_running_loop())
        pending: list[asyncio.Future[list[Any]]] = []
        submit_error: BaseException | None = None
        for statement, params in requests:
            await self._slots.acquire()
            try:
                future = completions.future_of(session.execute_async(statement, params))
            except Exception as exc:
                self._slots.release()
                submit_error = exc
                break
            future.add_done_callback(lambda _: self._slots.release())
            pending.append(future)
        results = await asyncio.gather(*pending, return_exceptions=True)
        if submit_error is not None:
            raise submit_error
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _completions_for(self, loop: asyncio.AbstractEventLoop) -> _Completions:
        if self._completions is None or self._completions.loop is not loop:
            self._completions = _Completions(loop)
        return self._completions

    async def _execute(self, name: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        await self._ready()
        (rows,) = await self._execute_all([(self._statements[name], params)])
        return rows

    # -- writes -------------------------------------------------------------

    async def write_actions(self, actions: Sequence[Mapping[str, Any]]) -> int:
        """Upsert actions into ``action_log`` and ``actions_by_id`` and move
        each customer's ``last_action_at`` forward; returns how many actions.

        Validation happens before any write: one malformed action raises
        :class:`engine.store.rows.InvalidRecord` and nothing is written.
        Writing the same action again replaces its rows (same primary key).
        """
        written_at_ms = _now_ms()
        rows = [action_row(action, written_at_ms=written_at_ms) for action in actions]
        if not rows:
            return 0
        await self._ready()
        log_ttl, by_id_ttl = self._ttl["action_log"], self._ttl["actions_by_id"]
        latest: dict[str, int] = {}
        requests: list[tuple[Any, Sequence[Any]]] = []
        for row in rows:
            requests.append((self._statements["insert_action_log"], (*row, log_ttl)))
            requests.append((self._statements["insert_action_by_id"], (*row, by_id_ttl)))
            latest[row.customer_id] = max(row.at_ms, latest.get(row.customer_id, row.at_ms))
        touch = self._statements["touch_last_action"]
        ttl_360 = self._ttl["customer_360"]
        requests.extend(
            (touch, (at_ms * 1000, ttl_360, at_ms, customer_id))
            for customer_id, at_ms in latest.items()
        )
        await self._execute_all(requests)
        return len(rows)

    async def write_customer_summaries(self, summaries: Mapping[str, Mapping[str, Any]]) -> int:
        """Write customer-360 summaries (customer_id → summary, as the worker
        publishes them; see :func:`engine.store.rows.customer_360_row`) and
        return how many.

        Each customer's row takes the summary's tier, segment, consent,
        counters and JSON text as they are now (replacing the previous
        values), gains its devices, and moves ``last_event_at`` /
        ``last_action_at`` forward (max-wins, as for actions). One unlogged
        single-partition batch per customer, so a customer's row is never
        half updated. All summaries are validated before any write: one
        malformed summary raises InvalidRecord and nothing is written.
        """
        rows = [customer_360_row(key, summary) for key, summary in summaries.items()]
        if not rows:
            return 0
        await self._ready()
        now_ms, ttl = _now_ms(), self._ttl["customer_360"]
        batches = []
        for row in rows:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batch.add(
                self._statements["write_customer_summary"],
                (
                    ttl,
                    row.tier,
                    row.segment,
                    row.consent,
                    set(row.devices) if row.devices else UNSET_VALUE,
                    row.counters,
                    row.summary,
                    now_ms,
                    row.customer_id,
                ),
            )
            for name, at_ms in (
                ("touch_last_event", row.last_event_at_ms),
                ("touch_last_action", row.last_action_at_ms),
            ):
                if at_ms is not None:
                    batch.add(self._statements[name], (at_ms * 1000, ttl, at_ms, row.customer_id))
            batch.is_idempotent = True
            batches.append((batch, ()))
        await self._execute_all(batches)
        return len(rows)

    async def upsert_customer_360(
        self,
        customer_id: str,
        *,
        tier: str | None = None,
        segment: str | None = None,
        consent: Mapping[str, bool] | None = None,
        devices: Iterable[str] | None = None,
        last_event_at: float | None = None,
        counters: Mapping[str, int] | None = None,
        last_action_at: float | None = None,
        summary: Any = None,
    ) -> None:
        """Update a customer's 360 row; ``None`` leaves a field as it is.

        ``consent`` and ``counters`` are merged key by key, ``devices`` are
        added (the registry mirror removes unregistered ones), ``summary`` is
        stored as JSON text. ``last_event_at``/``last_action_at`` (epoch
        seconds) only ever move forward, whatever order updates arrive in.
        The statements share one partition and go in one unlogged batch, which
        Cassandra applies atomically.
        """
        await self._ready()

        def given(value: Any) -> Any:
            return UNSET_VALUE if value is None else value

        ttl = self._ttl["customer_360"]
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        batch.add(
            self._statements["upsert_customer_360"],
            (
                ttl,
                given(tier),
                given(segment),
                given(None if consent is None else dict(consent)),
                given(None if devices is None else set(devices)),
                given(None if counters is None else dict(counters)),
                given(to_json_text(summary)),
                _now_ms(),
                customer_id,
            ),
        )
        for name, value in (
            ("touch_last_event", last_event_at),
            ("touch_last_action", last_action_at),
        ):
            at_ms = to_millis(value, name)
            if at_ms is not None:
                batch.add(self._statements[name], (at_ms * 1000, ttl, at_ms, customer_id))
        batch.is_idempotent = True
        await self._execute_all([(batch, ())])

    async def upsert_device(
        self,
        device_id: str,
        *,
        customer_id: str,
        device_type: str | None = None,
        model: str | None = None,
        registered_at: float | str | None = None,
    ) -> None:
        """Mirror a registration: the ``device_registry`` row (undeleted) and
        the device in its customer's 360 ``devices`` (moved if the device
        changed owner)."""
        previous = await self.read_device(device_id)
        now_ms = _now_ms()
        ttl_360 = self._ttl["customer_360"]
        unset = UNSET_VALUE
        add_device = (ttl_360, unset, unset, unset, {device_id}, unset, unset, now_ms, customer_id)
        requests: list[tuple[Any, Sequence[Any]]] = [
            (self._statements["upsert_customer_360"], add_device)
        ]
        if previous is not None and previous["customer_id"] not in (None, customer_id):
            requests.append(self._remove_device_request(previous["customer_id"], device_id))
        await self._execute_all(requests)
        # The registry row goes last: if anything above failed, a retry still
        # sees the previous owner and fixes its devices set.
        await self._execute(
            "upsert_device",
            (
                device_id,
                customer_id,
                device_type,
                model,
                to_millis(registered_at, "registered_at"),
                now_ms,
                self._ttl["device_registry"],
            ),
        )

    async def delete_device(self, device_id: str) -> None:
        """Mirror a registry tombstone: mark the device deleted and remove it
        from its customer's 360 ``devices``."""
        previous = await self.read_device(device_id)
        if previous is not None and previous["customer_id"] is not None:
            owner = previous["customer_id"]
            await self._execute_all([self._remove_device_request(owner, device_id)])
        await self._execute("delete_device", (self._ttl["device_registry"], _now_ms(), device_id))

    def _remove_device_request(self, customer_id: str, device_id: str) -> tuple[Any, Sequence[Any]]:
        return (
            self._statements["remove_customer_device"],
            (self._ttl["customer_360"], {device_id}, _now_ms(), customer_id),
        )

    async def erase_customer(self, customer_id: str, device_ids: Sequence[str]) -> dict[str, int]:
        """Delete every row of the customer (GDPR): its action log and the
        copies by id, its customer-360 row, its devices' registry rows; returns
        the rows deleted per table."""
        logged_as = self._logged_as(customer_id)
        rows = await self._execute("read_action_ids", (logged_as,))
        action_ids = sorted({row["action_id"] for row in rows})
        stamp = int(_now_ms() + 1000 * (self._settings.quality.max_future_skew_s + 1)) * 1000
        statements = self._statements
        requests: list[tuple[Any, Sequence[Any]]] = [
            (statements["delete_action_by_id"], (stamp, action_id)) for action_id in action_ids
        ]
        requests += [(statements["delete_device_row"], (stamp, d)) for d in device_ids]
        requests.append((statements["delete_action_log"], (stamp, logged_as)))
        requests.append((statements["delete_customer_360"], (stamp, customer_id)))
        await self._execute_all(requests)
        return {
            "action_log": len(action_ids),
            "actions_by_id": len(action_ids),
            "device_registry": len(device_ids),
            "customer_360": 1,
        }

    async def record_erasure(self, report: ErasureReport, deleted: Mapping[str, int]) -> None:
        """The audit record of an erasure: when, and how much; nothing personal."""
        await self._execute(
            "insert_erasure",
            (
                report.request_id,
                to_millis(report.requested_at, "requested_at"),
                to_millis(report.erased_at, "erased_at"),
                _now_ms(),
                report.had_state,
                len(report.device_ids),
                report.pending_predictions,
                report.events_dropped,
                dict(deleted),
            ),
        )

    async def read_erasure(self, request_id: str) -> dict[str, Any] | None:
        rows = await self._execute("read_erasure", (request_id,))
        if not rows:
            return None
        return {
            name: dict(value) if isinstance(value, Mapping) else value
            for name, value in rows[0].items()
        }

    def _logged_as(self, customer_id: str) -> str:
        """The id a customer's actions are logged under: that of the action topics."""
        return customer_id if self._pseudonyms is None else self._pseudonyms.of(customer_id)

    # -- reads --------------------------------------------------------------

    async def read_actions(self, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """A customer's actions, newest first (by event time ``at``), as
        published (with their pseudonyms, if actions carry them)."""
        if not 1 <= limit <= _MAX_READ_LIMIT:
            raise ValueError(f"limit must be in [1, {_MAX_READ_LIMIT}]")
        rows = await self._execute("read_actions", (self._logged_as(customer_id), limit))
        return [action_from_row(row) for row in rows]

    async def read_action(self, action_id: str) -> dict[str, Any] | None:
        rows = await self._execute("read_action", (action_id,))
        return action_from_row(rows[0]) if rows else None

    async def read_customer_360(self, customer_id: str) -> dict[str, Any] | None:
        rows = await self._execute("read_customer_360", (customer_id,))
        if not rows:
            return None
        row = rows[0]
        return {
            "customer_id": row["customer_id"],
            "tier": row["tier"],
            "segment": row["segment"],
            "consent": dict(row["consent"] or {}),
            "devices": sorted(row["devices"] or ()),
            "last_event_at": from_timestamp(row["last_event_at"]),
            "counters": dict(row["counters"] or {}),
            "last_action_at": from_timestamp(row["last_action_at"]),
            "summary": from_json_text(row["summary"]),
            "updated_at": from_timestamp(row["updated_at"]),
        }

    async def read_device(self, device_id: str) -> dict[str, Any] | None:
        rows = await self._execute("read_device", (device_id,))
        if not rows:
            return None
        row = rows[0]
        return {
            "device_id": row["device_id"],
            "customer_id": row["customer_id"],
            "device_type": row["device_type"],
            "model": row["model"],
            "registered_at": from_timestamp(row["registered_at"]),
            "deleted": bool(row["deleted"]),
            "updated_at": from_timestamp(row["updated_at"]),
        }

    async def count_actions(self, customer_id: str) -> int:
        """Rows in one customer's ``action_log`` partition."""
        (row,) = await self._execute("count_actions", (self._logged_as(customer_id),))
        return int(row["n"])

    async def count_rows(self, table: str) -> int:
        """All rows of one of :data:`TABLES`: a full scan, for tests and demos."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        query = f"SELECT COUNT(*) AS n FROM {self._keyspace}.{table}"
        (rows,) = await self._execute_all([(query, ())])
        return int(rows[0]["n"])

    async def drop_keyspace(self) -> None:
        """Drop the whole keyspace (tests and demos with throw-away keyspaces)."""
        await self._execute_all([(f"DROP KEYSPACE IF EXISTS {self._keyspace}", ())])


class _Completions:
    """Hands the driver's completions (from its I/O thread) to one event loop.

    Completions queue up and a single ``call_soon_threadsafe`` drains all that
    arrived meanwhile: under load one loop wake-up settles many requests,
    instead of a self-pipe write and a wake-up per request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[list[Any]], bool, Any]] = []
        self._drain_scheduled = False

    def future_of(self, response: ResponseFuture) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        response.add_callbacks(
            callback=self._complete,
            callback_args=(future, True),
            errback=self._complete,
            errback_args=(future, False),
        )
        return future

    def _complete(self, value: Any, future: asyncio.Future[list[Any]], ok: bool) -> None:
        with self._lock:
            self._done.append((future, ok, value))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._drain_scheduled = False
        for future, ok, value in done:
            if future.done():  # the awaiting task was cancelled
                continue
            if ok:
                future.set_result(list(value or ()))
            else:
                future.set_exception(value)
