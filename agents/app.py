"""The worker: one Faust app wired from ``Settings``.

``Runtime(settings)`` builds everything a worker runs:

- the ingest service (pattern-subscribed device topics -> customer-keyed stream);
- the customer actor agent over the customer-keyed stream, ``crm.customers``
  and ``crm.outcomes`` (co-partitioned), with its tables;
- a tick timer (time for idle keys) and the rule hot reload;
- the Cassandra sink (action log, registry mirror, customer 360);
- web views: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics``
  (Prometheus text format), ``/metrics.json`` (the same figures and more, with
  the event loop's lag), ``/customers/{id}``, ``/models/status``.

Start it with ``iotcrm worker``; replicas share the work through Kafka's
consumer groups (Faust's for the actor, ingest's own for the device topics).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust
import orjson
from mode import Service

from agents.customer import CustomerAgent, records_per_batch
from agents.faust_compat import (
    SeekFirstTableManager,
    allow_table_write_bursts,
    bound_fetch_wait,
    survive_commit_failures,
    tables_recovered,
)
from agents.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from agents.prometheus import Latencies, exposition
from agents.services import ChildProcess, Role
from engine.actor import CustomerActor
from engine.config import Settings, StageMode
from engine.durations import DAY_S, HOUR_S
from engine.kafka.clients import ssl_context
from engine.loop_lag import LoopLag, freeze_startup_objects, watch_loop
from engine.models import ModelSet, load_models
from engine.pseudonyms import pseudonyms_for
from engine.quality import StreamHygiene
from engine.rules import RuleEngine
from engine.rules_watch import RulesWatcher
from tables.definitions import define_tables
from tables.state import decode_state, recent_usage, summary

log = logging.getLogger(__name__)

#: The worker producer's largest batch (one per partition per request): many
#: customer states per checkpoint partition per round trip, under the broker's
#: 1 MB message limit.
PRODUCER_MAX_BATCH_BYTES = 512 * 1024


class SummaryPublisher:
    """Publishes changed customers' 360 summaries to a compacted topic, at most
    once per customer per flush; the Cassandra sink upserts them. The summary
    is built at flush time from the latest state, not on every batch."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.pending: dict[str, Any] = {}

    def mark(self, written: dict[str, Any]) -> None:
        for customer_id, (_anchor, state) in written.items():
            self.pending[customer_id] = state

    async def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        producer = self.rt.app.producer
        topic = self.rt.settings.kafka.customer360_topic
        for customer_id, state in pending.items():
            await producer.send(
                topic,
                customer_id.encode(),
                orjson.dumps(summary(state)),
                partition=None,
                timestamp=None,
                headers=None,
            )


def broker_credentials(settings: Settings) -> faust.SASLCredentials | None:
    """SASL (SCRAM-SHA-512) over TLS when ``kafka.sasl_username`` is set, as
    every other client of the project connects (``engine.kafka.client_options``)."""
    k = settings.kafka
    if not k.sasl_username:
        return None
    return faust.SASLCredentials(
        username=k.sasl_username,
        password=Settings.secret("KAFKA_SASL_PASSWORD") or "",
        mechanism="SCRAM-SHA-512",
        ssl_context=ssl_context(settings),
    )


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        w, k = settings.worker, settings.kafka
        #: how late the worker's event loop runs (``/metrics`` ``event_loop``)
        self.loop_lag = LoopLag()
        #: event-to-action latency histograms, observed by the customer actor
        self.latencies = Latencies()
        Path(w.state_dir).mkdir(parents=True, exist_ok=True)
        # A checkpoint writes every changed customer (state and timer).
        allow_table_write_bursts(max(10_000, 4 * w.state_cache_size))
        survive_commit_failures(self._on_commit_failure)
        bound_fetch_wait(w.actor_fetch_max_wait_ms)
        self.app = faust.App(
            w.app_id,
            broker=[f"kafka://{host}" for host in k.bootstrap.split(",")],
            store="rocksdb://",
            # Per app: table stores of another app id must never be reopened.
            datadir=str(Path(w.state_dir) / w.app_id),
            topic_partitions=k.partitions,
            topic_replication_factor=k.replication_factor,
            # At least once, with deterministic action ids (docs/operations.md,
            # "Delivery"): actions are sent by the actor itself and acknowledged
            # before the state that produced them is written.
            processing_guarantee="at_least_once",
            broker_credentials=broker_credentials(settings),
            broker_commit_interval=w.commit_interval_s,
            broker_session_timeout=w.session_timeout_s,
            broker_heartbeat_interval=w.heartbeat_interval_s,
            web_port=w.web_port,
            web_host=w.web_host,
            web_in_thread=False,
            key_serializer="raw",
            value_serializer="raw",
            producer_linger_ms=5,
            # aiokafka keeps one produce request in flight per broker, with at
            # most one batch per partition in it: at Faust's 16 KiB a batch held
            # one customer state (about 20 KiB), so a checkpoint's state writes
            # went four per round trip and fell seconds behind under load.
            producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
            # Records, not events: ingest packs up to EVENTS_PER_RECORD in each.
            stream_buffer_maxsize=max(256, records_per_batch(w.batch_size) * 64),
            consumer_auto_offset_reset="earliest",
            table_cleanup_interval=60.0,
            loghandlers=[],
            TableManager=SeekFirstTableManager,
        )
        self.tables = define_tables(self.app, settings)
        self.customers = self.tables.customers
        self.timers = self.tables.timers
        self.model_checkpoints = self.tables.model_checkpoints
        self.rules_watcher = RulesWatcher(settings.rules.path)
        ruleset = self.rules_watcher.load_initial()
        self.actor = CustomerActor(
            RuleEngine(ruleset),
            StreamHygiene(settings.quality),
            settings.action_topic,
            pseudonyms_for(settings),  # refuses to start without its key
        )
        self.models_path = settings.models.path
        load_models(self.models_path)  # refuse to start on a broken model file
        self.models_by_partition: dict[int, ModelSet] = {}
        self.summaries = SummaryPublisher(self)
        self.agent_logic = CustomerAgent(self)
        self.sink: Any = None
        stages: dict[Role, StageMode] = {"ingest": w.ingest, "sink": w.sink}
        #: stages run as supervised child processes (agents.services)
        self.children: dict[str, ChildProcess] = {
            role: ChildProcess(settings, role) for role, mode in stages.items() if mode == "process"
        }
        self.action_counts: dict[str, int] = {}
        self._wire()

    def _on_commit_failure(self, exc: BaseException) -> None:
        self.agent_logic.stats.commit_failures += 1
        log.warning(
            "offset commit failed (%s: %s); the next commit carries it, or the "
            "partition's new owner reads the records again",
            type(exc).__name__,
            exc,
        )

    def new_models(self) -> ModelSet:
        return load_models(self.models_path)

    def on_actions(self, actions: list[tuple[str, dict[str, Any]]]) -> None:
        for _topic, action in actions:
            self.action_counts[action["type"]] = self.action_counts.get(action["type"], 0) + 1

    # ---------------------------------------------------------------- wiring

    def _wire(self) -> None:
        app, k, w = self.app, self.settings.kafka, self.settings.worker
        self.actor_topic = app.topic(
            k.customer_events_topic,
            k.customers_topic,
            k.outcomes_topic,
            k.erasure_topic,
            key_type=bytes,
            value_type=bytes,
            partitions=k.partitions,
        )
        app.agent(self.actor_topic, name="customer-actor")(self.agent_logic.run)

        @app.task
        async def watch_event_loop() -> None:
            # the app is built: its code stays
            self.loop_lag.gc_frozen = freeze_startup_objects("worker")
            await watch_loop(self.loop_lag)

        @app.timer(interval=w.summary_interval_s)
        async def publish_summaries() -> None:
            await self.summaries.flush()

        @app.timer(interval=w.checkpoint_interval_s)
        async def checkpoint() -> None:
            await self.agent_logic.checkpoint_if_due()

        @app.timer(interval=self.settings.rules.reload_interval_s)
        async def reload_rules() -> None:
            ruleset = self.rules_watcher.poll()
            if ruleset is not None:
                self.actor.use_rules(RuleEngine(ruleset))

        # mode's SignalHandlerT admits no function to mypy, not even one of
        # its own shape (sender, *args, signal, **kwargs)
        @app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            # Partitions may move: models are reloaded from their checkpoints and
            # the timer index is rebuilt from the timers table on the next batch.
            self.models_by_partition.clear()
            self.agent_logic.stats.rebalances += 1
            self.agent_logic.drop_uncheckpointed()
            self.agent_logic.due_index_stale = True
            self.agent_logic.forget_offsets()

        # Faust starts service instances too (App._prepare_subservice), though
        # its annotation has only the decorator's use, on a class.
        if w.sink == "inline":
            app.service(SinkService(self.settings, self))  # type: ignore[arg-type]
        for child in self.children.values():
            app.service(child)  # type: ignore[arg-type]
        self._pages()

    def _pages(self) -> None:
        app = self.app

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            return web.json(self.health())

        @app.page("/ready")
        async def ready(web: Any, request: Any) -> Any:
            readiness = self.readiness()
            return web.json(readiness, status=200 if readiness["ready"] else 503)

        @app.page("/metrics")
        async def prometheus_metrics(web: Any, request: Any) -> Any:
            # As a header: aiohttp refuses a content_type argument with a charset.
            headers = {"Content-Type": PROMETHEUS_CONTENT_TYPE}
            return web.bytes(exposition(self.metrics, self.latencies), headers=headers)

        @app.page("/metrics.json")
        async def metrics(web: Any, request: Any) -> Any:
            return web.json(self.metrics())

        @app.page("/customers/{customer_id}")
        async def customer(web: Any, request: Any, customer_id: str) -> Any:
            # The checkpointed state (at most worker.checkpoint_interval_s old).
            blob = self.customers.get(customer_id)
            if blob is None:
                return web.json({"error": f"no state for customer {customer_id!r}"}, status=404)
            state = decode_state(blob)
            view = summary(state)
            now = state.last_event_at
            if now is not None:
                view["usage_by_hour"] = recent_usage(state, now, HOUR_S, 24)
                view["usage_by_day"] = recent_usage(state, now, DAY_S, 7)
            return web.json(view)

        @app.page("/models/status")
        async def models_status(web: Any, request: Any) -> Any:
            return web.json(self.models_status())

    # ---------------------------------------------------------------- views

    def models_status(self) -> dict[str, Any]:
        return {
            f"p{partition}": models.metrics()
            for partition, models in sorted(self.models_by_partition.items())
        }

    def metrics(self) -> dict[str, Any]:
        return {
            "actor": {**self.agent_logic.stats.as_dict(), "lag": self.actor_lag()},
            "actions_by_type": dict(self.action_counts),
            "ingest": self._stage_metrics("ingest", None),
            "sink": self._stage_metrics("sink", self.sink),
            "rules": self.rules_watcher.status(),
            "event_loop": self.loop_lag.as_dict(),
            "latency": self.latencies.as_dict(),
        }

    def actor_lag(self) -> int:
        """Records of the customer stream not yet processed, over the partitions
        this worker owns (end offsets as last fetched; each record carries up to
        64 events)."""
        consumer = self.app.consumer
        k = self.settings.kafka
        lag = 0
        for tp in self.app.assignor.assigned_actives():
            if tp.topic != k.customer_events_topic:
                continue
            end = consumer.highwater(tp)
            position = self.agent_logic.next_offset(tp)
            if end is not None and position is not None:
                lag += max(0, end - position)
        return lag

    def _stage_metrics(self, role: str, inline: Any) -> dict[str, Any] | None:
        if inline is not None:
            return inline.metrics.as_dict()
        child = self.children.get(role)
        return child.status() if child is not None else None

    def readiness(self) -> dict[str, Any]:
        """Ready: the worker owns partitions, has recovered its tables, its
        stage processes run and the Cassandra sink keeps up; otherwise the
        reasons (a degraded worker is alive, so /health still answers 200)."""
        reasons = []
        if not self.app.assignor.assigned_actives():
            reasons.append("no partitions assigned yet")
        if self.app.rebalancing or not tables_recovered(self.app):
            reasons.append("recovering its tables after a rebalance")
        for role, child in self.children.items():
            status = child.status()
            if not (status and status.get("alive")):
                reasons.append(f"{role} process not running (restarted by the worker)")
        if self.health()["status"] != "ok":
            reasons.append("Cassandra sink behind (writes retried, nothing dropped)")
        return {"ready": not reasons, "reasons": reasons}

    def health(self) -> dict[str, Any]:
        if "sink" in self.children:
            status = self.children["sink"].status()
            sink_ok = bool(status and status.get("alive") and status.get("healthy"))
        else:
            sink_ok = self.sink.metrics.healthy if self.sink else True
        return {
            "status": "ok" if sink_ok else "degraded",
            "assigned": sorted(
                f"{tp.topic}:{tp.partition}" for tp in self.app.assignor.assigned_actives()
            ),
            "rules": self.rules_watcher.status(),
            "cassandra_sink": "ok" if sink_ok else "behind (writes retried, nothing dropped)",
        }


class SinkService(Service):
    """Runs the Cassandra sink beside the actor; retries until Cassandra answers."""

    def __init__(self, settings: Settings, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.rt = runtime

    async def on_start(self) -> None:
        from engine.store.cassandra import CassandraStore
        from engine.store.sink import CassandraSink

        self.store = CassandraStore(self.settings)
        store = self.store
        self.rt.sink = CassandraSink(
            self.settings, store, group_id=f"{self.settings.worker.app_id}-cassandra-sink"
        )
        await self.rt.sink.start()

    async def on_stop(self) -> None:
        if self.rt.sink is not None:
            await asyncio.shield(self.rt.sink.stop())
            await self.store.close()
