"""``iotcrm chaos``: the engine under faults, against an undisturbed run of the same input.

Run: ``make chaos`` (starts the local servers, then ``iotcrm chaos``). Every
scenario is a fresh namespace of topics and a fresh keyspace, two worker
replicas (``iotcrm worker``, one app id), and the same seeded simulation
(``--customers`` x ``--devices-per-customer`` over ``--span``) published at
``--rate`` events/s to the per-device topics:

- ``reference``: nothing happens to it; the others are compared with it;
- ``control``: nothing happens to it either: what differs between two
  undisturbed runs (the order in which ingest interleaves devices) shows here;
- ``kill``: every ``--kill-every`` seconds (drawn from the range, seeded) one
  replica, the two in turn, is killed with SIGKILL (its ingest and sink die
  with it) and started again at once, as a supervisor would;
- ``rolling``: each replica in turn gets SIGTERM, stops cleanly and is
  started again (a rolling deploy);
- ``kafka``: the local Kafka broker is stopped and started again, once;
- ``cassandra``: the local Cassandra node is stopped for ``--cassandra-down``
  seconds, then started again.

Once everything published has gone through (the consumer groups of ingest,
the actor and the Cassandra sink committed to the ends of their topics), the
run is compared with the reference:

- **lost** actions: action ids of the reference the run never delivered;
  **invented**: ids the run delivered that the reference did not;
- **repeated deliveries**: action records beyond one per id (at least once:
  allowed, each repeat carries the same id);
- **Cassandra**: rows of ``actions_by_id`` and ``action_log`` against the
  distinct ids delivered;
- **states**: each customer's checkpointed state (the ``customers`` table's
  changelog) against the reference's, without what differs by design: wall
  clock stamps and the duplicate and late counters a replay raises;
- **recovery**: after each fault, the seconds until the backlog (records the
  ingest and actor groups have not committed) was back to what it was before;
- **self-crashes**: a worker that exited without being told to, or an
  ingest or sink process its worker had to start again;
- **event-loop lag** of every worker (``/metrics.json`` ``event_loop``).

Results go to ``--out`` (default ``loadtest/results``): ``chaos.json`` and
``chaos.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine import cli_args
from engine.durations import DAY_S
from loadtest.bench import BENCH_EPISODES, DEFAULT_OUT, REPO, _device_ids, _prepare
from loadtest.contenders import EngineContender
from loadtest.feed import Feeder, Record, clear_earlier_runs, delete_topics
from loadtest.report import servers_summary
from loadtest.simulator import SimParams, Simulation

SCENARIOS = ("reference", "control", "kill", "rolling", "kafka", "cassandra")
#: How often the runs' backlog, workers and faults are sampled.
SAMPLE_S = 1.0
#: Consecutive samples with everything committed that make a run drained.
DRAINED_SAMPLES = 3
#: State fields that differ by design between runs of the same input.
VOLATILE_DEVICE_FIELDS = frozenset({"last_seen", "counts"})


def _log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ChaosOptions:
    customers: int = 100
    devices_per_customer: int = 2
    span_s: float = 5 * DAY_S
    seed: int = 1
    rate: float = 3000.0
    replicas: int = 2
    partitions: int = 4
    kill_every: tuple[float, float] = (15.0, 30.0)
    cassandra_down_s: float = 60.0
    scenarios: tuple[str, ...] = SCENARIOS
    out: Path = DEFAULT_OUT
    bootstrap: str | None = None
    keep: bool = False


@dataclass
class Fault:
    kind: str
    #: seconds since the run's publishing began
    at: float
    until: float
    detail: str = ""
    #: seconds from the end of the fault until the backlog was back to its level before
    recovered_after_s: float | None = None


@dataclass
class RunRecord:
    """What one scenario's run saw while it ran."""

    scenario: str
    published: int = 0
    publish_s: float = 0.0
    drained_s: float | None = None
    #: what was still not committed when the run gave up waiting (None: drained)
    undrained: str | None = None
    faults: list[Fault] = field(default_factory=list)
    #: (seconds since start, records not yet committed by ingest, by the actor)
    backlog: list[tuple[float, int, int]] = field(default_factory=list)
    self_crashes: list[str] = field(default_factory=list)
    stage_restarts: int = 0
    loop_max_s: float = 0.0
    loop_stalls: int = 0
    #: stalls the loop's thread spent running (the code's), not waiting for a CPU
    loop_busy_stalls: int = 0
    loop_busy_max_s: float = 0.0
    #: the longest full garbage collection a worker reported
    gc_full_max_s: float = 0.0
    worker_starts: int = 0


# ----------------------------------------------------------------------------- reading


def _client_options(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "enable.auto.commit": False}


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` as (key, value), in partition order."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**_client_options(bootstrap), "group.id": f"chaos-{uuid.uuid4().hex}"})
    try:
        described = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if described is None or described.error is not None:
            return []
        records: list[tuple[bytes | None, bytes | None]] = []
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            position = low
            while position < high:
                for message in consumer.consume(10_000, timeout=2.0):
                    if message.error() is None:
                        records.append((message.key(), message.value()))
                        position = message.offset() + 1
        return records
    finally:
        consumer.close()


class GroupLag:
    """Records consumer groups have not committed yet, on their own topics."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Consumer

        self.bootstrap = bootstrap
        self._consumers: dict[str, Any] = {}
        self._make = lambda group: Consumer({**_client_options(bootstrap), "group.id": group})

    def lag(self, group: str, partitions: list[tuple[str, int]]) -> int | None:
        """None while the broker does not answer."""
        from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = self._consumers[group] = self._make(group)
        try:
            tps = [TopicPartition(t, p) for t, p in partitions]
            committed = {
                (tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=5)
            }
            ends = consumer.offsets_for_times(
                [TopicPartition(t, p, OFFSET_END) for t, p in partitions], timeout=5
            )
        except KafkaException:
            return None
        total = 0
        for tp in ends:
            if tp.error is not None or tp.offset < 0:
                return None
            total += max(0, tp.offset - max(committed.get((tp.topic, tp.partition), 0), 0))
        return total

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()


# ----------------------------------------------------------------------------- one run


class ChaosRun:
    """One scenario: two replicas, the stream published at the rate, a fault driver."""

    def __init__(
        self,
        scenario: str,
        options: ChaosOptions,
        work: list[Record],
        sim: Simulation,
        device_ids: list[str],
        bootstrap: str,
        work_dir: Path,
    ) -> None:
        self.scenario = scenario
        self.options = options
        self.work = work
        self.sim = sim
        self.device_ids = device_ids
        run_id = f"chaos{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
        self.engine = EngineContender(
            run_id, bootstrap, work_dir / scenario, options.partitions, replicas=options.replicas
        )
        # Failover as operators run it: a dead replica's partitions move after
        # the session timeout, not the bench's minute-long grace for frozen workers.
        self.engine.env.pop("IOTCRM_WORKER_SESSION_TIMEOUT_S", None)
        skew = {"IOTCRM_QUALITY_DEVICE_SKEW_S": str(replay_skew_s(options, len(work)))}
        self.engine.env.update(skew)
        for worker in self.engine.workers:
            worker.env.pop("IOTCRM_WORKER_SESSION_TIMEOUT_S", None)
            worker.env.update(skew)
        self.record = RunRecord(scenario)
        self.started = 0.0
        self.publishing = True
        #: workers told to stop or killed on purpose, until they are started again
        self._expected_down: set[int] = set()
        self._lag = GroupLag(bootstrap)
        #: worker process id -> the most stalls, busy stalls and stage restarts
        #: it reported (its counters start at 0 in every process)
        self._worker_peaks: dict[int, tuple[int, int, int]] = {}
        settings = self.engine.settings
        app = settings.worker.app_id
        self._groups = {
            "ingest": (f"{app}-ingest", [(self.engine.device_prefix + d, 0) for d in device_ids]),
            "actor": (
                app,
                [(settings.kafka.customer_events_topic, p) for p in range(options.partitions)],
            ),
            "sink": (
                f"{app}-cassandra-sink",
                [(t, p) for t in self.engine.action_topics for p in range(options.partitions)],
            ),
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -------------------------------------------------------------------- the run

    async def run(self) -> dict[str, Any]:
        engine = self.engine
        _log(f"{self.scenario}: topics, registry and profiles")
        await _prepare(engine, _Work(self.sim, self.device_ids), warmup=False)
        engine.start()
        self.record.worker_starts = len(engine.workers)
        try:
            await engine.wait_ready()
            self.started = time.monotonic()
            monitor = asyncio.create_task(self._monitor())
            driver = asyncio.create_task(self._drive())
            try:
                _log(
                    f"{self.scenario}: publishing {len(self.work):,} events at "
                    f"{self.options.rate:,.0f}/s"
                )
                async with Feeder(engine.bootstrap, engine.device_prefix) as feeder:
                    await feeder.publish_events(self.work, self.options.rate)
                self.record.published = len(self.work)
                self.record.publish_s = round(self.elapsed(), 1)
                self.publishing = False
                await driver
                await self._wait_drained()
            finally:
                for task in (driver, monitor):
                    task.cancel()
                await asyncio.gather(driver, monitor, return_exceptions=True)
            await self._sample_workers()
        finally:
            engine.stop()
            self._lag.close()
        return await self._collect()

    # -------------------------------------------------------------------- faults

    async def _drive(self) -> None:
        scenario = self.scenario
        total_s = len(self.work) / self.options.rate
        if scenario == "kill":
            await self._kills()
        elif scenario == "rolling":
            await asyncio.sleep(total_s / 4)
            for index in range(len(self.engine.workers)):
                await self._restart(index, "SIGTERM", kill=False)
        elif scenario == "kafka":
            await asyncio.sleep(total_s / 3)
            at = self.elapsed()
            await _services("stop", "kafka")
            await _services("start", "kafka")
            self.record.faults.append(
                Fault("kafka restart", round(at, 1), round(self.elapsed(), 1), "stop, then start")
            )
        elif scenario == "cassandra":
            await asyncio.sleep(total_s / 4)
            at = self.elapsed()
            await _services("stop", "cassandra")
            await asyncio.sleep(self.options.cassandra_down_s)
            await _services("start", "cassandra")
            self.record.faults.append(
                Fault(
                    "cassandra down",
                    round(at, 1),
                    round(self.elapsed(), 1),
                    f"{self.options.cassandra_down_s:g} s and its start",
                )
            )

    async def _kills(self) -> None:
        rng = random.Random(f"{self.options.seed}/kills")
        low, high = self.options.kill_every
        index = 0
        while self.publishing:
            await asyncio.sleep(rng.uniform(low, high))
            if not self.publishing:
                return
            await self._restart(index, "SIGKILL", kill=True)
            index = (index + 1) % len(self.engine.workers)

    async def _restart(self, index: int, what: str, *, kill: bool) -> None:
        worker = self.engine.workers[index]
        at = self.elapsed()
        self._expected_down.add(index)
        if kill:
            await asyncio.to_thread(worker.kill)
        else:
            await asyncio.to_thread(worker.stop)
        worker.start()
        self.record.worker_starts += 1
        await worker.wait_ready(timeout=180)
        self._expected_down.discard(index)
        self.record.faults.append(
            Fault(
                f"{what} replica {index}",
                round(at, 1),
                round(self.elapsed(), 1),
                "until started again and ready",
            )
        )

    # -------------------------------------------------------------------- watching

    async def _monitor(self) -> None:
        while True:
            await self._sample_backlog()
            await self._sample_workers()
            await asyncio.sleep(SAMPLE_S)

    async def _sample_backlog(self) -> tuple[int | None, int | None, int | None]:
        lags = await asyncio.gather(
            *(
                asyncio.to_thread(self._lag.lag, group, partitions)
                for group, partitions in self._groups.values()
            )
        )
        ingest, actor, sink = lags
        if ingest is not None and actor is not None:
            self.record.backlog.append((round(self.elapsed(), 1), ingest, actor))
        return ingest, actor, sink

    async def _sample_workers(self) -> None:
        for index, worker in enumerate(self.engine.workers):
            if index in self._expected_down:
                continue
            if not worker.alive():
                self.record.self_crashes.append(
                    f"replica {index} exited by itself at {self.elapsed():.1f} s "
                    f"(code {worker.process.returncode if worker.process else None})"
                )
                worker.start()
                self.record.worker_starts += 1
                continue
            metrics = await asyncio.to_thread(worker.metrics)
            if not metrics:
                continue
            loop = metrics.get("event_loop") or {}
            self.record.loop_max_s = max(self.record.loop_max_s, loop.get("max_s", 0.0))
            self.record.loop_busy_max_s = max(
                self.record.loop_busy_max_s, loop.get("busy_max_s", 0.0)
            )
            self.record.gc_full_max_s = max(
                self.record.gc_full_max_s, loop.get("gc_full_max_s", 0.0)
            )
            stalls, busy = loop.get("stalls", 0), loop.get("busy_stalls", 0)
            restarts = sum(
                (metrics.get(stage) or {}).get("restarts", 0) or 0 for stage in ("ingest", "sink")
            )
            assert worker.process is not None
            key = worker.process.pid
            seen = self._worker_peaks.get(key, (0, 0, 0))
            self._worker_peaks[key] = (
                max(stalls, seen[0]),
                max(busy, seen[1]),
                max(restarts, seen[2]),
            )
            peaks = self._worker_peaks.values()
            self.record.loop_stalls = sum(p[0] for p in peaks)
            self.record.loop_busy_stalls = sum(p[1] for p in peaks)
            self.record.stage_restarts = sum(p[2] for p in peaks)

    async def _wait_drained(self, timeout_s: float = 300.0) -> None:
        """Until ingest, the actor and the sink committed everything, several
        samples running. A run that never gets there is a finding, not an
        abort: what it delivered is compared all the same."""
        quiet = 0
        deadline = time.monotonic() + timeout_s
        while quiet < DRAINED_SAMPLES:
            ingest, actor, sink = await self._sample_backlog()
            if time.monotonic() > deadline:
                self.record.undrained = (
                    f"after {timeout_s:.0f} s, not committed: {ingest} device records "
                    f"(ingest), {actor} customer-stream records (actor), {sink} actions (sink)"
                )
                _log(f"{self.scenario}: never drained; {self.record.undrained}")
                return
            # Ingest ticks quiet partitions once a second: a few records may
            # stay ahead of the actor's last commit.
            settled = ingest == 0 and sink == 0 and actor is not None
            settled = settled and actor <= 2 * self.options.partitions
            quiet = quiet + 1 if settled else 0
            await asyncio.sleep(SAMPLE_S)
        self.record.drained_s = round(self.elapsed(), 1)
        _log(f"{self.scenario}: drained after {self.record.drained_s} s")

    # -------------------------------------------------------------------- results

    async def _collect(self) -> dict[str, Any]:
        engine = self.engine
        settings = engine.settings
        actions: list[dict[str, Any]] = []
        for topic in engine.action_topics:
            records = await asyncio.to_thread(read_topic, engine.bootstrap, topic)
            actions += [orjson.loads(value) for _, value in records if value]
        changelog = f"{settings.worker.app_id}-customers-changelog"
        states: dict[str, bytes | None] = {}
        for key, value in await asyncio.to_thread(read_topic, engine.bootstrap, changelog):
            if key is not None:
                states[key.decode()] = value
        rows = await asyncio.to_thread(_cassandra_rows, settings)
        _recovery(self.record, self.options.rate)
        return {
            "record": self.record,
            "actions": actions,
            "states": {k: v for k, v in states.items() if v is not None},
            "rows": rows,
        }

    async def cleanup(self) -> None:
        if self.options.keep:
            return
        await self.engine.drop_keyspace()
        await delete_topics(self.engine.bootstrap, self.engine.prefix + ".")
        await delete_topics(self.engine.bootstrap, self.engine.prefix + "-")


@dataclass
class _Work:
    """What ``bench._prepare`` reads of a workload: the simulation and device ids."""

    sim: Simulation
    device_ids: list[str]
    warmup: list[Record] = field(default_factory=list)


async def _services(verb: str, name: str) -> None:
    """``deploy/local/services.py VERB NAME`` (the local servers the run uses)."""
    command = [sys.executable, str(REPO / "deploy" / "local" / "services.py"), verb, name]
    result = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{result.stdout}{result.stderr}")
    _log(f"{verb} {name}: done")


def _cassandra_rows(settings: Any) -> dict[str, Any]:
    """Action ids in ``actions_by_id`` and the number of ``action_log`` rows."""
    from engine.store.cassandra import build_cluster

    cluster = build_cluster(settings)
    try:
        session = cluster.connect(settings.cassandra.keyspace)
        by_id = [row["action_id"] for row in session.execute("SELECT action_id FROM actions_by_id")]
        log_rows = session.execute("SELECT count(*) AS n FROM action_log").one()["n"]
        return {"actions_by_id": by_id, "action_log": int(log_rows)}
    finally:
        cluster.shutdown()


def _recovery(record: RunRecord, rate: float) -> None:
    """For each fault, seconds from its end until the backlog was back to its
    level before it: twice the median of the 10 s before, or two seconds of
    the stream (commits come once a second, so the committed backlog swings
    by that much without anything wrong)."""
    samples = [(t, ingest + actor) for t, ingest, actor in record.backlog]
    floor = 2 * rate
    for fault in record.faults:
        before = [lag for t, lag in samples if fault.at - 10 <= t < fault.at]
        level = max(floor, 2 * statistics.median(before)) if before else floor
        after = [t for t, lag in samples if t >= fault.until and lag <= level]
        fault.recovered_after_s = round(after[0] - fault.until, 1) if after else None


# ----------------------------------------------------------------------------- comparing


def plain(value: Any) -> Any:
    """``value`` as nested plain data, objects as their class and state, so
    that two runs' device models compare by what they learned.

    >>> from engine.models.hst import HalfSpaceTrees
    >>> a, b = HalfSpaceTrees(seed=1), HalfSpaceTrees(seed=1)
    >>> a.learn_one({"x": 0.3}); b.learn_one({"x": 0.3})
    >>> a == b, plain(a) == plain(b)
    (False, True)
    """
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(map(repr, value))
    if isinstance(value, random.Random):
        return plain(value.getstate())
    state = value.__getstate__() if hasattr(value, "__getstate__") else vars(value)
    if not isinstance(state, dict):
        return [type(value).__qualname__, plain(state)]
    return {"__class__": type(value).__qualname__, **plain(state)}


def normalised_state(blob: bytes) -> dict[str, Any]:
    """A customer's state without what differs by design between two runs of
    the same input: wall-clock stamps, and the duplicate and late counters
    (and remembered ids) that a replay after a fault raises."""
    from tables.state import decode_state_plain

    state = decode_state_plain(blob)
    for device in state.get("devices", {}).values():
        for name in VOLATILE_DEVICE_FIELDS:
            device.pop(name, None)
        device.pop("seen", None)
        models = device.get("models")
        if models:  # estimators compare by identity: compare what they learned
            device["models"] = {name: plain(held) for name, held in models.items()}
    for action in state.get("recent_actions", []):
        action.pop("emitted_at", None)
    return state


def compare(reference: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    ref_ids = {a["action_id"] for a in reference["actions"]}
    deliveries = Counter(a["action_id"] for a in run["actions"])
    run_ids = set(deliveries)
    lost = sorted(ref_ids - run_ids)
    invented = sorted(run_ids - ref_ids)
    by_id = {a["action_id"]: a for a in reference["actions"] + run["actions"]}
    ref_states = {k: normalised_state(v) for k, v in reference["states"].items()}
    run_states = {k: normalised_state(v) for k, v in run["states"].items()}
    differing = sorted(
        k for k in ref_states.keys() | run_states.keys() if ref_states.get(k) != run_states.get(k)
    )
    rows = run["rows"]
    return {
        "lost_by_rule": dict(Counter(by_id[i]["rule"]["id"] for i in lost)),
        "invented_by_rule": dict(Counter(by_id[i]["rule"]["id"] for i in invented)),
        "actions": len(run_ids),
        "reference_actions": len(ref_ids),
        "lost": len(lost),
        "invented": len(invented),
        "lost_examples": [_describe(by_id[i]) for i in lost[:5]],
        "invented_examples": [_describe(by_id[i]) for i in invented[:5]],
        "deliveries": sum(deliveries.values()),
        "repeated_deliveries": sum(deliveries.values()) - len(run_ids),
        "cassandra_actions_by_id": len(rows["actions_by_id"]),
        "cassandra_action_log": rows["action_log"],
        "cassandra_missing": len(run_ids - set(rows["actions_by_id"])),
        "cassandra_extra": len(set(rows["actions_by_id"]) - run_ids),
        "customers": len(ref_states),
        "states_equal": len(ref_states) - len(differing),
        "states_differing": differing[:10],
        "state_differences_by_path": dict(
            Counter(
                _path_pattern(_first_difference(ref_states.get(k), run_states.get(k)))
                for k in differing
            ).most_common()
        ),
        "state_difference_example": _first_difference(
            ref_states.get(differing[0]), run_states.get(differing[0])
        )
        if differing
        else None,
    }


def _describe(action: dict[str, Any]) -> str:
    evidence = action.get("evidence") or {}
    return (
        f"{action['rule']['id']} {action.get('device_id') or action['customer_id']} "
        f"at {action['at']} on {evidence.get('event_ids')}"
    )


def _path_pattern(difference: str) -> str:
    """Where a difference lies, without the ids in it: ``.devices.*.last_action_at``."""
    path = difference.split(":", 1)[0]
    return re.sub(r"\[\d+\]", "[*]", re.sub(r"\.(d|c)-[\w-]+", ".*", path))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys(), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path or '(state)'}: {str(a)[:160]} != {str(b)[:160]}"


# ----------------------------------------------------------------------------- the command


#: Wall seconds by which the replay's own publishing may deliver one device's
#: events late next to the others' (librdkafka batches, a busy broker).
REPLAY_JITTER_S = 2.5


def replay_skew_s(options: ChaosOptions, events: int) -> int:
    """``quality.device_skew_s`` for the replay: the stream plays days of event
    time in minutes (5 days in ~100 s, 4,000 times real time), so the default
    allowance of 60 s of event time is 14 ms of wall time here, far tighter
    than any delivery: a device's event delivered a second and a half late
    reads as two hours of silence (the suite invented hundreds of silences so,
    in undisturbed runs, on a busy machine). The allowance the engine
    promises to hold is scaled to the replay instead: ``REPLAY_JITTER_S`` of
    wall time, in event time.

    >>> replay_skew_s(ChaosOptions(), events=308_000)
    10519
    """
    speed = options.span_s / (events / options.rate)
    return max(60, round(REPLAY_JITTER_S * speed))


def generate(options: ChaosOptions) -> tuple[Simulation, list[Record], list[str]]:
    sim = Simulation(
        SimParams(
            customers=options.customers,
            devices_per_customer=options.devices_per_customer,
            seed=options.seed,
            span_s=options.span_s,
            episodes=BENCH_EPISODES,
        )
    )
    records = list(sim.events())
    return sim, records, _device_ids(sim)


async def run_chaos(options: ChaosOptions, command: str) -> dict[str, Any]:
    from engine.config import load_settings

    settings = load_settings()
    bootstrap = options.bootstrap or settings.kafka.bootstrap
    servers = await clear_earlier_runs(bootstrap, settings)
    _log(servers_summary(servers))
    _log(
        f"generating the workload ({options.customers} customers x "
        f"{options.devices_per_customer} over {options.span_s / DAY_S:g} days)"
    )
    sim, records, device_ids = generate(options)
    _log(f"{len(records):,} events")
    work_dir = REPO / ".state" / "chaos"
    results: dict[str, dict[str, Any]] = {}
    scenarios = ("reference", *[s for s in options.scenarios if s != "reference"])
    for scenario in scenarios:
        run = ChaosRun(scenario, options, records, sim, device_ids, bootstrap, work_dir)
        try:
            results[scenario] = await run.run()
        finally:
            await run.cleanup()
        record: RunRecord = results[scenario]["record"]
        _log(
            f"{scenario}: {len(results[scenario]['actions'])} action records, "
            f"{len(record.faults)} faults, {len(record.self_crashes)} self-crashes"
        )
    reference = results["reference"]
    document = {
        "command": command,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(),
        "options": {**asdict(options), "out": str(options.out)},
        "events": len(records),
        "servers_at_start": servers,
        "device_skew_s": replay_skew_s(options, len(records)),
        "scenarios": {
            name: {
                "run": asdict(result["record"]),
                "comparison": compare(reference, result) if name != "reference" else None,
            }
            for name, result in results.items()
        },
    }
    return document


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def _stalls(run: dict[str, Any]) -> str:
    """Stalls of the event loop, and in brackets those its own work caused
    (its thread ran through them) rather than a machine short of CPU."""
    busy = run.get("loop_busy_stalls")
    gc_max = run.get("gc_full_max_s")
    return (
        f"{run['loop_stalls']}"
        + (f" ({busy})" if busy is not None else "")
        + (f"; longest full GC {gc_max:.2f} s" if gc_max else "")
    )


def report(document: dict[str, Any]) -> str:
    options = document["options"]
    lines = [
        "# iotcrm under faults (`iotcrm chaos`)",
        "",
        f"Commit `{document['commit']}`, {document['created_at']}.",
        "",
        "Reproduce with the local Kafka and Cassandra of `deploy/local` (`make chaos` starts "
        "them and runs it):",
        "",
        "```",
        document["command"],
        "```",
        "",
        f"Each scenario: {options['replicas']} worker replicas, {document['events']:,} events of "
        f"{options['customers']} customers x {options['devices_per_customer']} devices over "
        f"{options['span_s'] / DAY_S:g} simulated days (seed {options['seed']}) at "
        f"{options['rate']:,.0f} events/s to per-device topics, `quality.device_skew_s` "
        f"{document.get('device_skew_s', 60):,} s (the replay's {REPLAY_JITTER_S} s of delivery "
        "jitter in its event time, see `replay_skew_s`); compared with the undisturbed "
        "`reference` run of the same input (see `loadtest/chaos.py` for every definition).",
        "",
        *(
            [f"Servers at the start: {servers_summary(document['servers_at_start'])}.", ""]
            if document.get("servers_at_start")
            else []
        ),
        "| scenario | faults | lost | invented | repeated deliveries | Cassandra rows / distinct "
        "actions | states equal | recovery s (max) | self-crashes | loop max s | stalls > 0.5 s "
        "(busy) |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for name, scenario in document["scenarios"].items():
        run, cmp = scenario["run"], scenario["comparison"]
        crashes = len(run["self_crashes"]) + run["stage_restarts"]
        recovered = [f["recovered_after_s"] for f in run["faults"]]
        worst = max((r for r in recovered if r is not None), default=None)
        unrecovered = sum(1 for r in recovered if r is None)
        recovery = (
            "–"
            if not recovered
            else (f"{worst:.1f}" if worst is not None else "–")
            + (f" ({unrecovered} never)" if unrecovered else "")
        )
        if cmp is None:
            lines.append(
                f"| {name} | 0 | – | – | – | – | – | – | {crashes} | "
                f"{run['loop_max_s']:.2f} | {_stalls(run)} |"
            )
            continue
        lines.append(
            f"| {name} | {len(run['faults'])} | {cmp['lost']} | {cmp['invented']} | "
            f"{cmp['repeated_deliveries']} | {cmp['cassandra_actions_by_id']} / {cmp['actions']} "
            f"| {cmp['states_equal']} / {cmp['customers']} | {recovery} | {crashes} | "
            f"{run['loop_max_s']:.2f} | {_stalls(run)} |"
        )
    targets = [
        (
            "0 lost",
            all(
                s["comparison"] is None or s["comparison"]["lost"] == 0
                for s in document["scenarios"].values()
            ),
        ),
        (
            "0 invented",
            all(
                s["comparison"] is None or s["comparison"]["invented"] == 0
                for s in document["scenarios"].values()
            ),
        ),
        (
            "Cassandra rows equal the distinct actions",
            all(
                s["comparison"] is None
                or (
                    s["comparison"]["cassandra_missing"] == 0
                    and s["comparison"]["cassandra_extra"] == 0
                )
                for s in document["scenarios"].values()
            ),
        ),
        (
            "states equal",
            all(
                s["comparison"] is None
                or s["comparison"]["states_equal"] == s["comparison"]["customers"]
                for s in document["scenarios"].values()
            ),
        ),
        (
            "every run drained",
            all(not s["run"]["undrained"] for s in document["scenarios"].values()),
        ),
        (
            "0 self-crashes",
            all(
                not s["run"]["self_crashes"] and s["run"]["stage_restarts"] == 0
                for s in document["scenarios"].values()
            ),
        ),
    ]
    if all("loop_busy_stalls" in s["run"] for s in document["scenarios"].values()):
        targets.append(
            (
                "the loop's own work never held it > 0.5 s (busy stalls)",
                all(s["run"]["loop_busy_stalls"] == 0 for s in document["scenarios"].values()),
            )
        )
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {what} | {'yes' if met else 'no'} |" for what, met in targets]
    lines += ["", "## Faults", ""]
    for name, scenario in document["scenarios"].items():
        run = scenario["run"]
        if not run["faults"] and not run["self_crashes"] and not run["undrained"]:
            continue
        lines.append(
            f"**{name}** (published in {run['publish_s']} s, drained at {run['drained_s']} s):"
        )
        lines.append("")
        for fault in run["faults"]:
            recovered = fault["recovered_after_s"]
            detail = f" ({fault['detail']})" if fault["detail"] else ""
            lines.append(
                f"- {fault['kind']} at {fault['at']} s, over at {fault['until']} s{detail}; "
                "backlog back to its level "
                + (f"{recovered} s later" if recovered is not None else "never")
            )
        lines += [f"- self-crash: {crash}" for crash in run["self_crashes"]]
        if run["undrained"]:
            lines.append(f"- never drained: {run['undrained']}")
        lines.append("")
    differences = [
        (name, s["comparison"])
        for name, s in document["scenarios"].items()
        if s["comparison"]
        and (
            s["comparison"]["lost"]
            or s["comparison"]["invented"]
            or s["comparison"]["state_difference_example"]
        )
    ]
    if differences:
        lines += [
            "## Differences from the reference",
            "",
            "By rule, lost / invented: "
            + "; ".join(
                f"{name}: "
                + ", ".join(
                    f"{rule} {cmp['lost_by_rule'].get(rule, 0)} / "
                    f"{cmp['invented_by_rule'].get(rule, 0)}"
                    for rule in sorted(cmp["lost_by_rule"].keys() | cmp["invented_by_rule"].keys())
                )
                for name, cmp in differences
                if cmp["lost"] or cmp["invented"]
            ),
            "",
        ]
        for name, cmp in differences:
            for example in cmp["lost_examples"]:
                lines.append(f"- {name}, lost: {example}")
            for example in cmp["invented_examples"]:
                lines.append(f"- {name}, invented: {example}")
            for path, count in cmp["state_differences_by_path"].items():
                lines.append(f"- {name}: {count} customers' states differ first at `{path}`")
            if cmp["state_difference_example"]:
                lines.append(
                    f"- {name}, {len(cmp['states_differing'])}+ states differ, e.g. "
                    f"{cmp['states_differing'][0]} at "
                    f"`{cmp['state_difference_example']}`"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ChaosOptions()
    parser.add_argument(
        "--customers",
        type=cli_args.count,
        default=defaults.customers,
        help=f"simulated customers (default {defaults.customers})",
    )
    parser.add_argument(
        "--devices-per-customer",
        type=cli_args.count,
        default=defaults.devices_per_customer,
        help=f"devices per customer (default {defaults.devices_per_customer})",
    )
    parser.add_argument(
        "--span",
        type=cli_args.duration,
        default=defaults.span_s,
        help="simulated time of the stream (default 5d: about 310,000 events)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help=f"simulation seed (default {defaults.seed})"
    )
    parser.add_argument(
        "--rate",
        type=cli_args.non_negative_number,
        default=defaults.rate,
        help=f"events/s offered (default {defaults.rate:g})",
    )
    parser.add_argument(
        "--replicas",
        type=cli_args.count,
        default=defaults.replicas,
        help=f"worker replicas (default {defaults.replicas})",
    )
    parser.add_argument(
        "--kill-every",
        type=cli_args.duration,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=defaults.kill_every,
        help="seconds between kills, drawn from this range (default 15 30)",
    )
    parser.add_argument(
        "--cassandra-down",
        type=cli_args.duration,
        default=defaults.cassandra_down_s,
        help="how long Cassandra stays stopped (default 60 s)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (the reference always runs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=defaults.out,
        help="folder for chaos.json and chaos.md (default loadtest/results)",
    )
    parser.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: the configuration's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep each run's topics and keyspace")


def options_from(args: argparse.Namespace) -> ChaosOptions:
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"iotcrm chaos: unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}"
        )
    if args.rate <= 0:
        raise SystemExit("iotcrm chaos: --rate must be above 0")
    low, high = args.kill_every
    if low > high:
        raise SystemExit("iotcrm chaos: --kill-every MIN must not exceed MAX")
    return ChaosOptions(
        customers=args.customers,
        devices_per_customer=args.devices_per_customer,
        span_s=args.span,
        seed=args.seed,
        rate=args.rate,
        replicas=args.replicas,
        kill_every=(low, high),
        cassandra_down_s=args.cassandra_down,
        scenarios=scenarios,
        out=args.out,
        bootstrap=args.bootstrap,
        keep=args.keep,
    )


def run_from_args(args: argparse.Namespace, command: str) -> int:
    options = options_from(args)
    document = asyncio.run(run_chaos(options, command))
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "chaos.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)
    )
    text = report(document)
    (options.out / "chaos.md").write_text(text)
    print(text)
    return 0
