"""The three benchmark contenders as processes: the engine (``iotcrm worker``),
the Quix Streams peer and the plain-consumer ceiling.

Each one lives in its own namespace of topics (``<run>-<name>.…``), runs as
its own process tree (so its CPU and memory are its own), and reports
progress as (taken in by its first stage, fully processed): every record is
fully processed once it was dead-lettered, or went through the last stage
(the customer actor for the engine and the peer, its actions sent, whether
or not a checkpoint has made it durable yet; decoding for the ceiling).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from engine.config import ACTION_TOPIC_SUFFIX, Settings, load_settings
from loadtest.feed import TopicPlan
from loadtest.harness import WorkerProcess, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Progress:
    """Records taken in by the first stage, fully processed, and the wall
    time of the latest full processing when the contender knows it exactly."""

    started: int
    done: int
    last_at: float | None = None


#: The worker's child processes (``agents.services.ChildProcess``), by their command.
CHILD_ROLES = ("ingest", "sink")


def _role(args: list[str]) -> str:
    """``ingest`` or ``sink`` for a worker's child process, else ``main``.

    >>> _role(["python", "-m", "engine.cli", "ingest", "--status", "s.json"])
    'ingest'
    >>> _role(["python", "-m", "engine.cli", "worker"])
    'main'
    """
    if "engine.cli" in args:
        following = args[args.index("engine.cli") + 1 :]
        if following and following[0] in CHILD_ROLES:
            return following[0]
    return "main"


class ProcessTree:
    """CPU, memory and suspension of processes (one or more roots) and their children."""

    def __init__(self, *pids: int) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]

    def _all(self) -> list[psutil.Process]:
        processes: list[psutil.Process] = []
        for root in self.roots:
            try:
                processes += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return processes

    def cpu_s(self) -> float:
        total = 0.0
        for process in self._all():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def cpu_s_by_role(self) -> dict[str, float]:
        """CPU seconds by role: a worker's ingest and sink child processes
        (``engine.cli ingest|sink``) apart, everything else as ``main``."""
        by_role: dict[str, float] = {}
        for process in self._all():
            try:
                args, times = process.cmdline(), process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            role = _role(args)
            by_role[role] = by_role.get(role, 0.0) + times.user + times.system
        return by_role

    def _status_kib(self, field: str) -> int:
        total = 0
        for process in self._all():
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
        return total

    def peak_rss_mb(self) -> float:
        """The largest resident set each process reached (VmHWM), summed."""
        return self._status_kib("VmHWM:") / 1024

    def rss_mb(self) -> float:
        """The resident sets now (VmRSS), summed."""
        return self._status_kib("VmRSS:") / 1024

    def suspend(self) -> None:
        for process in self._all():
            process.suspend()

    def resume(self) -> None:
        for process in reversed(self._all()):
            process.resume()


#: How long the replicas' ownership of sources must stay unchanged to count as settled.
SETTLED_FOR_S = 3.0

#: A word of the local servers' command lines (deploy/local), to find their processes.
SERVER_MARKERS = {"kafka": "kafka.Kafka", "cassandra": "CassandraDaemon"}


class MachineBudget:
    """Readings of where the whole machine's CPU goes (``measure.cpu_budget``
    turns two into shares): the Kafka broker and the Cassandra node when they
    run here, this bench process (its publisher and action reader), the
    contender's process tree, and the machine's busy time in all."""

    def __init__(self, contender: str, tree: ProcessTree) -> None:
        self.contender = contender
        self.tree = tree
        self.cores = psutil.cpu_count() or 1
        self.servers: dict[str, psutil.Process] = {}
        for process in psutil.process_iter(["cmdline"]):
            command = " ".join(process.info["cmdline"] or [])
            for name, marker in SERVER_MARKERS.items():
                if marker in command:
                    self.servers[name] = process
        self.bench = psutil.Process(os.getpid())

    def reading(self) -> dict[str, float]:
        times = psutil.cpu_times()
        busy = times.user + times.system + getattr(times, "nice", 0.0)
        busy += getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
        reading = {"machine": busy}
        for name, process in self.servers.items():
            try:
                cpu = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            reading[name] = cpu.user + cpu.system
        cpu = self.bench.cpu_times()
        reading["bench"] = cpu.user + cpu.system
        reading[self.contender] = self.tree.cpu_s()
        return reading


class Contender:
    """A process (or ``replicas`` processes sharing the work) that consumes one
    namespace's device topics."""

    name: str = ""

    def __init__(
        self, run_id: str, bootstrap: str, work_dir: Path, partitions: int, *, replicas: int = 1
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.prefix = f"{run_id}-{self.name}"
        self.bootstrap = bootstrap
        self.work_dir = work_dir / self.name
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.partitions = partitions
        self.replicas = replicas
        self.tree: ProcessTree | None = None
        #: The one keyed topic (key = device_id) the events go to instead of
        #: per-device topics; None: per-device topics.
        self.shared_topic: str | None = None

    # topics ----------------------------------------------------------------------------
    @property
    def device_prefix(self) -> str:
        return f"{self.prefix}.device."

    @property
    def registry_topic(self) -> str:
        return f"{self.prefix}.registry"

    @property
    def customers_topic(self) -> str:
        return f"{self.prefix}.customers"

    @property
    def action_topics(self) -> list[str]:
        return []

    def topic_plans(self, device_ids: list[str]) -> list[TopicPlan]:
        events = (
            [TopicPlan(self.shared_topic, self.partitions)]
            if self.shared_topic
            else [TopicPlan(self.device_prefix + d, 1) for d in device_ids]
        )
        return [
            TopicPlan(self.registry_topic, self.partitions, compacted=True),
            TopicPlan(self.customers_topic, self.partitions, compacted=True),
            *events,
        ]

    async def prepare(self) -> None:
        """Anything to set up after the topics exist and before the start."""

    async def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until every replica owns part of the work (a no-op where that cannot be seen)."""

    async def wait_settled(self, timeout_s: float = 120.0) -> None:
        """Until the replicas' groups are done rebalancing: each replica owns
        sources (device partitions) where the contender spreads them, none is
        in the middle of a hand-over, and that has not changed for
        ``SETTLED_FOR_S`` (a no-op where it cannot be seen). A rebalance
        inside a timed phase is a stall the phase would charge to the
        contender's speed."""
        deadline = time.monotonic() + timeout_s
        seen, since = None, time.monotonic()
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; log tail:\n{self.log_tail()}")
            owned = await self._calm_ownership()
            if owned == ():
                return
            now = time.monotonic()
            if owned != seen:
                seen, since = owned, now
            elif owned is not None and now - since >= SETTLED_FOR_S:
                return  # unchanged for a while: no second (cooperative) round under way
            if now > deadline:
                raise TimeoutError(f"{self.name}: replicas not settled, ingest owns {seen}")
            await asyncio.sleep(0.2)

    async def _calm_ownership(self) -> tuple[int, ...] | None:
        """The sources each replica owns, if each owns some and none is
        handing any over; else None. ``()``: ownership not seen."""
        return ()

    # process ---------------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    async def progress(self) -> Progress | None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""

    def stop(self) -> None:
        raise NotImplementedError

    async def wait_done(self, total: int, timeout_s: float) -> Progress:
        """Until ``total`` records are fully processed."""

        async def done() -> Progress | None:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; log tail:\n{self.log_tail()}")
            progress = await self.progress()
            return progress if progress is not None and progress.done >= total else None

        return await wait_for(done, timeout=timeout_s, interval=0.1, what=f"{self.name} done")


class EngineContender(Contender):
    """One ``iotcrm worker`` (ingest, customer actor with tables, models,
    rules, actions, Cassandra sink) in its own namespace."""

    name = "engine"

    def __init__(
        self,
        run_id: str,
        bootstrap: str,
        work_dir: Path,
        partitions: int,
        profile_to: Path | None = None,
        *,
        replicas: int = 1,
        shared_topic: bool = False,
    ) -> None:
        super().__init__(run_id, bootstrap, work_dir, partitions, replicas=replicas)
        if shared_topic:
            self.shared_topic = f"{self.prefix}.telemetry"
        #: Run the worker under ``loadtest.profiled_worker``, writing its profile here.
        self.profile_to = profile_to
        p = self.prefix
        self.env = {
            "IOTCRM_CONFIG": str(REPO / "iotcrm.toml"),
            "IOTCRM_KAFKA_BOOTSTRAP": bootstrap,
            "IOTCRM_KAFKA_DEVICE_TOPIC_PREFIX": self.device_prefix,
            "IOTCRM_KAFKA_TELEMETRY_TOPIC": f"{p}.telemetry",
            "IOTCRM_KAFKA_REGISTRY_TOPIC": self.registry_topic,
            "IOTCRM_KAFKA_CUSTOMERS_TOPIC": self.customers_topic,
            "IOTCRM_KAFKA_DEADLETTER_TOPIC": f"{p}.deadletter",
            "IOTCRM_KAFKA_LATE_TOPIC": f"{p}.late",
            "IOTCRM_KAFKA_CUSTOMER_EVENTS_TOPIC": f"{p}.events.by-customer",
            "IOTCRM_KAFKA_OUTCOMES_TOPIC": f"{p}.outcomes",
            "IOTCRM_KAFKA_ERASURE_TOPIC": f"{p}.erasure-requests",
            "IOTCRM_KAFKA_CUSTOMER360_TOPIC": f"{p}.customer360",
            "IOTCRM_KAFKA_ACTION_TOPIC_PREFIX": f"{p}.actions.",
            "IOTCRM_KAFKA_PARTITIONS": str(partitions),
            "IOTCRM_CASSANDRA_KEYSPACE": f"iotcrm_{p.replace('-', '_')}",
            "IOTCRM_WORKER_APP_ID": p,
            "IOTCRM_WORKER_WEB_PORT": str(free_port()),
            "IOTCRM_WORKER_STATE_DIR": str(self.work_dir / "state"),
            "IOTCRM_RULES_PATH": str(REPO / "rules"),
            "IOTCRM_MODELS_PATH": str(REPO / "models" / "models.yaml"),
            # The backlog is published while the process is frozen (SIGSTOP),
            # which can take longer than the default failover time: a frozen
            # worker must not lose its partitions to a rebalance in the middle
            # of a measurement (the peer's librdkafka waits 45 s by default).
            "IOTCRM_WORKER_SESSION_TIMEOUT_S": "60",
        }
        # Replicas: the same app id and topics, each its own web port and state folder.
        self.workers = [self.worker_process(i) for i in range(replicas)]
        self.worker = self.workers[0]
        self.metrics: dict[str, Any] = {}
        #: The latest /metrics.json of every replica.
        self.replica_metrics: list[dict[str, Any]] = []

    def worker_process(self, index: int) -> WorkerProcess:
        if index == 0:
            return WorkerProcess(self.env, self.work_dir / "worker.log", cwd=REPO)
        env = {
            **self.env,
            "IOTCRM_WORKER_WEB_PORT": str(free_port()),
            "IOTCRM_WORKER_STATE_DIR": str(self.work_dir / f"state-{index}"),
        }
        return WorkerProcess(env, self.work_dir / f"worker-{index}.log", cwd=REPO)

    @property
    def settings(self) -> Settings:
        return load_settings(self.env["IOTCRM_CONFIG"], environ=self.env)

    @property
    def action_topics(self) -> list[str]:
        return [self.settings.action_topic(t) for t in ACTION_TOPIC_SUFFIX]

    async def prepare(self) -> None:
        from engine.ops_cli import setup

        await setup(self.settings)

    def start(self) -> None:
        if self.profile_to is None:
            for worker in self.workers:
                worker.start()
        else:
            with self.worker.log_path.open("ab") as log:
                self.worker.process = subprocess.Popen(
                    [sys.executable, "-m", "loadtest.profiled_worker", str(self.profile_to)],
                    env=self.worker.env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        self.tree = ProcessTree(*(w.process.pid for w in self.workers if w.process is not None))

    async def wait_ready(self, timeout_s: float = 180.0) -> None:
        for worker in self.workers:
            await worker.wait_ready(timeout_s)

    def profile(self, on: bool) -> None:
        """Start or stop (and write) the profile of a worker started with ``profile_to``."""
        from loadtest.profiled_worker import START, STOP

        assert self.worker.process is not None and self.profile_to is not None
        self.worker.process.send_signal(START if on else STOP)

    async def progress(self) -> Progress | None:
        """The sum of every replica's counters; None until each one answers."""
        if len(self.workers) == 1:
            every = [await asyncio.to_thread(self.worker.metrics)]
        else:
            every = list(
                await asyncio.gather(*(asyncio.to_thread(w.metrics) for w in self.workers))
            )
        if not all(metrics and metrics.get("ingest") and metrics.get("actor") for metrics in every):
            return None
        self.metrics = every[0]  # type: ignore[assignment]
        self.replica_metrics = every  # type: ignore[assignment]
        started = done = 0
        for metrics in every:
            assert metrics is not None
            ingest, actor = metrics["ingest"], metrics["actor"]
            started += ingest["consumed"]
            # Processed as the peer counts it: once its actions are sent
            # (``in_flight``: not yet made durable by a checkpoint).
            done += ingest["deadlettered"] + actor["events"] + actor["duplicates"] + actor["late"]
            done += actor["in_flight"]
        return Progress(started, done)

    async def _calm_ownership(self) -> tuple[int, ...] | None:
        """The sources each replica's ingest owns, if each owns some and none
        is handing any over; else None."""
        if await self.progress() is None:
            return None
        ingest = [metrics["ingest"] for metrics in self.replica_metrics]
        owned = tuple(i["assigned_sources"] for i in ingest)
        return owned if all(owned) and not any(i["handed_over"] for i in ingest) else None

    def alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {worker.log_path.name}\n{worker.log_tail()}"
            if len(self.workers) > 1
            else worker.log_tail()
            for worker in self.workers
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def drop_keyspace(self) -> None:
        from engine.store.cassandra import build_cluster

        def drop() -> None:
            cluster = build_cluster(self.settings)
            try:
                cluster.connect().execute(
                    f"DROP KEYSPACE IF EXISTS {self.settings.cassandra.keyspace}", timeout=120
                )
            finally:
                cluster.shutdown()

        await asyncio.to_thread(drop)


class _StatusProcess(Contender):
    """A contender of this package that keeps a JSON status file."""

    module = ""

    def __init__(
        self, run_id: str, bootstrap: str, work_dir: Path, partitions: int, *, replicas: int = 1
    ) -> None:
        super().__init__(run_id, bootstrap, work_dir, partitions, replicas=replicas)
        suffixes = [""] + [f"-{i}" for i in range(1, replicas)]
        #: Each replica's status file and log (the first one's names have no suffix).
        self.status_paths = [self.work_dir / f"status{suffix}.json" for suffix in suffixes]
        self.log_paths = [self.work_dir / f"{self.name}{suffix}.log" for suffix in suffixes]
        self.status_path, self.log_path = self.status_paths[0], self.log_paths[0]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {}
        self.statuses: list[dict[str, Any]] = []

    def arguments(self, replica: int = 0) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.processes = []
        for replica, (status, log_path) in enumerate(
            zip(self.status_paths, self.log_paths, strict=True)
        ):
            status.unlink(missing_ok=True)
            with log_path.open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", self.module, *self.arguments(replica)],
                        cwd=REPO,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        self.process = self.processes[0]
        self.tree = ProcessTree(*(process.pid for process in self.processes))

    def read_status(self) -> dict[str, Any] | None:
        """The first replica's status (the only one, usually)."""
        statuses = self.read_statuses()
        return statuses[0] if statuses else None

    def read_statuses(self) -> list[dict[str, Any]] | None:
        """Every replica's status; None until each has written one."""
        statuses = []
        for path in self.status_paths:
            try:
                statuses.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                return None
        self.statuses, self.status = statuses, statuses[0]
        return statuses

    def alive(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes)

    def log_tail(self) -> str:
        tails = []
        for path in self.log_paths:
            try:
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-40:])
            except OSError:
                tail = "(no log)"
            tails.append(f"--- {path.name}\n{tail}" if len(self.log_paths) > 1 else tail)
        return "\n".join(tails)

    def stop(self) -> None:
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)


class PeerContender(_StatusProcess):
    """The Quix Streams application of ``loadtest.peer_quix``."""

    name = "peer"
    module = "loadtest.peer_quix"

    @property
    def action_topics(self) -> list[str]:
        return [f"{self.prefix}.actions"]

    def topic_plans(self, device_ids: list[str]) -> list[TopicPlan]:
        return [
            *super().topic_plans(device_ids),
            TopicPlan(f"{self.prefix}.events.by-customer", self.partitions),
            TopicPlan(f"{self.prefix}.actions", self.partitions),
            TopicPlan(f"{self.prefix}.deadletter", 1),
            TopicPlan(f"{self.prefix}.late", 1),
        ]

    def arguments(self, replica: int = 0) -> list[str]:
        p = self.prefix
        suffix = f"-{replica}" if replica else ""
        return [
            "--bootstrap", self.bootstrap,
            "--group", p,
            "--device-topic-prefix", self.device_prefix,
            "--registry-topic", self.registry_topic,
            "--customers-topic", self.customers_topic,
            "--events-topic", f"{p}.events.by-customer",
            "--deadletter-topic", f"{p}.deadletter",
            "--late-topic", f"{p}.late",
            "--actions-topic", f"{p}.actions",
            "--partitions", str(self.partitions),
            "--models", str(REPO / "models" / "models.yaml"),
            "--state-dir", str(self.work_dir / f"state{suffix}"),
            "--status", str(self.status_paths[replica]),
        ]  # fmt: skip

    async def _calm_ownership(self) -> tuple[int, ...] | None:
        statuses = self.read_statuses()
        if statuses is None:
            return None
        # Quix's consumers assign by range: every single-partition device
        # topic goes to the same process, so a replica may own none.
        return tuple(status.get("assigned_sources", 0) for status in statuses)

    async def progress(self) -> Progress | None:
        """The sum of every replica's counters (one consumer group shares the work)."""
        statuses = self.read_statuses()
        if statuses is None:
            return None
        started = sum(status["consumed"] for status in statuses)
        done = sum(status["deadlettered"] + status["processed"] for status in statuses)
        lasts = [status["last_at"] for status in statuses if status.get("last_at")]
        return Progress(started, done, max(lasts) if lasts else None)


class CeilingContender(_StatusProcess):
    """The plain consumer of ``loadtest.ceiling``: consume and decode only."""

    name = "ceiling"
    module = "loadtest.ceiling"
    #: Answered as soon as one byte is there, or after 20 ms: the lowest latency.
    fetch_max_wait_ms = 20
    fetch_min_bytes = 1

    def arguments(self, replica: int = 0) -> list[str]:
        pattern = "^" + self.device_prefix.replace(".", r"\.") + ".+"
        return [
            "--bootstrap", self.bootstrap,
            "--pattern", pattern,
            "--group", self.prefix,
            "--status", str(self.status_path),
            "--fetch-max-wait-ms", str(self.fetch_max_wait_ms),
            "--fetch-min-bytes", str(self.fetch_min_bytes),
        ]  # fmt: skip

    async def progress(self) -> Progress | None:
        status = self.read_status()
        if status is None:
            return None
        return Progress(status["consumed"], status["consumed"], status["last_at"])


class BatchedCeilingContender(CeilingContender):
    """The ceiling with batched fetches (at least 64 KiB, or 100 ms): what
    ingest's consumer would cost under a steady load with those settings."""

    name = "ceiling-batched"
    fetch_max_wait_ms = 100
    fetch_min_bytes = 64 * 1024


CONTENDERS: dict[str, type[Contender]] = {
    "engine": EngineContender,
    "peer": PeerContender,
    "ceiling": CeilingContender,
}
