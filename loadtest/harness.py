"""Run real ``iotcrm worker`` processes and wait on conditions, for the demo,
the integration tests and the benchmark.

A worker is configured only through ``IOTCRM_*`` environment variables, so a
test can give each run its own topics, consumer groups, web port and state
folder. ``wait_for`` polls a condition with a deadline: no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


class ConditionTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        last = result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise ConditionTimeout(f"{what} not met within {timeout:.0f}s (last: {last!r})")
        await asyncio.sleep(interval)


class WorkerProcess:
    """One ``iotcrm worker`` subprocess with its own environment and log file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.web_port = int(self.env.get("IOTCRM_WORKER_WEB_PORT", "6066"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "worker"],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def text(self, path: str) -> str | None:
        """GET a text view of the worker (e.g. ``/metrics``); None while it does not answer."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=2.0) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):
            return None

    def get(self, path: str) -> Any:
        """GET a JSON view of the worker; None while it does not answer."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=2.0) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "body": orjson.loads(exc.read() or b"null")}
        except (urllib.error.URLError, OSError, ValueError):
            return None

    async def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Until the worker answers /health and owns actor partitions."""

        def ready() -> Any:
            if not self.alive():
                raise AssertionError(f"worker exited; log tail:\n{self.log_tail()}")
            health = self.get("/health")
            return health if health and health.get("assigned") else None

        try:
            return await wait_for(ready, timeout=timeout, what="worker ready")
        except ConditionTimeout as exc:
            raise ConditionTimeout(f"{exc}; log tail:\n{self.log_tail()}") from None

    def metrics(self) -> dict[str, Any] | None:
        return self.get("/metrics.json")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait (a clean shutdown); SIGKILL if it hangs."""
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL: a crash, no chance to flush or commit."""
        if not self.process or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(30)
