"""deploy/local/services.py keeps its promises: starting twice is harmless, a
server that cannot start is reported with the tail of its log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.integration.kit import REPO

SERVICES = [sys.executable, str(REPO / "deploy" / "local" / "services.py")]


def run_services(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SERVICES, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_starting_running_servers_again_is_harmless() -> None:
    result = run_services("start")
    assert result.returncode == 0, result.stderr
    assert "kafka already running" in result.stderr
    assert "cassandra already running" in result.stderr
    assert "mqtt already running" in result.stderr
    status = run_services("status")
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["kafka", "ready"], ["cassandra", "ready"], ["mqtt", "ready"],
    ]  # fmt: skip


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # Something else holds the storage port Cassandra needs (CQL port + 10).
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        cql_port = squatter.getsockname()[1] - 10
        squatter.listen()
        result = run_services(
            "start",
            "cassandra",
            env={"IOTCRM_STATE_DIR": str(tmp_path), "IOTCRM_LOCAL_CASSANDRA_PORT": str(cql_port)},
        )
    assert result.returncode == 1
    assert "cassandra exited before it was ready" in result.stderr
    assert str(tmp_path / "cassandra" / "server.log") in result.stderr
    assert f"127.0.0.1:{cql_port + 10} is in use by another process" in result.stderr, (
        "the report quotes the server's own error, though the server logged more after it"
    )
