"""Ingest and the Cassandra sink as processes of their own.

A worker's customer actors, its ingest consumer and its Cassandra sink each
keep a Python event loop busy, and one event loop runs on one core. By
default (``worker.ingest = "process"``, ``worker.sink = "process"``) the
worker starts ``iotcrm ingest`` and ``iotcrm sink`` as child processes and
supervises them, so a replica uses a core per stage; ``worker.sink =
"inline"`` runs the sink inside the worker's own loop, and ``"off"`` leaves a
stage to a process the operator runs elsewhere (``iotcrm ingest`` / ``iotcrm
sink`` are the same commands, so they can be scaled apart from the actors).

A supervised child writes its counters to a status file (JSON, replaced
atomically) a few times a second; the worker serves them in ``/metrics.json`` and
uses the sink's health in ``/health``. A child that exits is started again
after a backoff, and counted in ``restarts``. Children die with the worker:
they are in its process group, and ask the kernel for SIGTERM when their
parent dies (``PR_SET_PDEATHSIG``), so a killed worker leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import orjson
from mode import Service

from engine.config import Settings
from engine.loop_lag import freeze_startup_objects

log = logging.getLogger(__name__)

Role = Literal["ingest", "sink"]
#: How often a child replaces its status file.
STATUS_INTERVAL_S = 0.2
#: Longest wait before a crashed child is started again.
MAX_BACKOFF_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so a reader never sees half a document."""
    # A name of this process's own: a stage shutting down (its worker killed)
    # and its successor write the same status at the same time.
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(orjson.dumps(status))
    os.replace(partial, path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


class ChildProcess(Service):
    """Runs ``iotcrm <role>`` beside the worker and starts it again when it exits."""

    def __init__(self, settings: Settings, role: Role, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.role = role
        state_dir = Path(settings.worker.state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        self.status_path = state_dir / f"{role}.status.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at: float | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "engine.cli", self.role, "--status", str(self.status_path)]

    def _spawn(self) -> None:
        self.status_path.unlink(missing_ok=True)
        # The same environment, so the child reads the same configuration.
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        self.started_at = time.time()
        log.info("%s: started process %d", self.role, self.process.pid)

    async def on_start(self) -> None:
        self._spawn()

    @Service.task
    async def _supervise(self) -> None:
        backoff = 1.0
        while not self.should_stop:
            await self.sleep(0.5)
            process = self.process
            if process is None or process.poll() is None:
                if self.started_at and time.time() - self.started_at > MAX_BACKOFF_S:
                    backoff = 1.0
                continue
            if self.should_stop:
                break
            self.restarts += 1
            log.error(
                "%s: process %d exited with %s; starting it again in %.0f s",
                self.role,
                process.pid,
                process.returncode,
                backoff,
            )
            await self.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            if not self.should_stop:
                self._spawn()

    async def on_stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            log.warning("%s: process %d did not stop in 30 s; killing it", self.role, process.pid)
            process.kill()
            await asyncio.to_thread(process.wait, 10)

    def status(self) -> dict[str, Any] | None:
        """The child's latest counters, with its pid and restarts."""
        status = read_status(self.status_path)
        if status is None:
            return None
        alive = self.process is not None and self.process.poll() is None
        return {**status, "pid": self.process.pid if self.process else None,
                "alive": alive, "restarts": self.restarts}  # fmt: skip


# ------------------------------------------------------------ the child side


def run_ingest(settings: Settings, status_path: Path | None) -> None:
    """``iotcrm ingest``: the ingest loop until SIGTERM or SIGINT."""
    from agents.ingest import Ingest

    ingest = Ingest(settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: ingest.stop())
    freeze_startup_objects("ingest")
    written_at = 0.0

    def report() -> None:
        nonlocal written_at
        now = time.monotonic()
        if status_path is not None and now - written_at >= STATUS_INTERVAL_S:
            write_status(status_path, ingest.metrics.as_dict())
            written_at = now

    log.info("ingest running")
    try:
        ingest.run(on_idle=report)
    finally:
        if status_path is not None:
            write_status(status_path, ingest.metrics.as_dict())


async def run_sink(settings: Settings, status_path: Path | None) -> None:
    """``iotcrm sink``: the Cassandra sink until SIGTERM or SIGINT."""
    from engine.store.cassandra import CassandraStore
    from engine.store.sink import CassandraSink

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    store = CassandraStore(settings)
    sink = CassandraSink(settings, store, group_id=f"{settings.worker.app_id}-cassandra-sink")
    await sink.start()
    freeze_startup_objects("sink")
    log.info("sink running")
    try:
        while not stopping.is_set():
            if status_path is not None:
                write_status(status_path, sink.metrics.as_dict())
            if not sink.metrics.running:
                raise RuntimeError("the Cassandra sink stopped working")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), STATUS_INTERVAL_S)
    finally:
        await sink.stop()
        await store.close()
        if status_path is not None:
            write_status(status_path, sink.metrics.as_dict())
