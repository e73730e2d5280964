"""deploy/local/services.py keeps its promises: starting twice is harmless, a
server that cannot start is reported with the tail of its log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_local_cassandra_lets_in_only_the_iotcrm_role() -> None:
    """Security by default, locally too: the local Cassandra asks for a login,
    the well-known first superuser's is gone, and iotcrm's role (its password
    random, kept with the server's data, readable by its owner only) may
    create and drop keyspaces."""
    import services  # deploy/local, on the path from conftest
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster, NoHostAvailable

    from engine.config import load_settings
    from engine.store.cassandra import build_cluster

    password_file = services.cassandra_secret_files()["password"]
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert password_file.is_relative_to(services.STATE_DIR)
    password = password_file.read_text().strip()
    assert len(password) >= 24

    settings = load_settings(REPO / "iotcrm.toml")
    port = settings.cassandra.port
    for login in (None, ("cassandra", "cassandra"), ("iotcrm", password + "x")):
        auth = PlainTextAuthProvider(*login) if login else None
        cluster = Cluster(["127.0.0.1"], port=port, auth_provider=auth, connect_timeout=10)
        try:
            with pytest.raises(NoHostAvailable, match=r"(?i)auth|credentials|password"):
                cluster.connect()
        finally:
            cluster.shutdown()

    cluster = build_cluster(settings)  # iotcrm.toml's role, the password from the file
    try:
        session = cluster.connect()
        keyspace = f"auth_{os.getpid()}"
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            timeout=60,
        )
        session.execute(f"DROP KEYSPACE {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


def test_the_local_cassandra_speaks_tls_verified_against_the_local_ca() -> None:
    """With ``cassandra.tls`` the store connects over TLS, the node's
    certificate checked against ``cassandra.ssl_cafile`` and its address; the
    node sees the connection as encrypted. Against the system's CAs (which
    never signed the local one) the connection is refused."""
    import services  # deploy/local, on the path from conftest
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster, NoHostAvailable

    from engine.config import load_settings
    from engine.store.cassandra import build_cluster

    ca = services.kafka_secure_files(services.KAFKA)["ca"]
    tls_env = {"IOTCRM_CASSANDRA_TLS": "true", "IOTCRM_CASSANDRA_SSL_CAFILE": str(ca)}
    cluster = build_cluster(load_settings(REPO / "iotcrm.toml", environ=tls_env))
    try:
        cluster.connect()
        # Who is connected, and how, is the superuser's to see.
        admin = services.cassandra_secret_files()["admin"].read_text().strip()
        observer = Cluster(
            ["127.0.0.1"],
            port=cluster.port,
            auth_provider=PlainTextAuthProvider("cassandra", admin),
        )
        try:
            clients = observer.connect().execute(
                "SELECT username, ssl_enabled FROM system_views.clients"
            )
            assert {(row.username, row.ssl_enabled) for row in clients} >= {("iotcrm", True)}
        finally:
            observer.shutdown()
    finally:
        cluster.shutdown()

    untrusted = load_settings(REPO / "iotcrm.toml", environ={"IOTCRM_CASSANDRA_TLS": "true"})
    cluster = build_cluster(untrusted)
    try:
        with pytest.raises(NoHostAvailable, match=r"(?i)certificate"):
            cluster.connect()
    finally:
        cluster.shutdown()
