#!/usr/bin/env python3
"""Fetch, start, check and stop a local Kafka (KRaft), Cassandra and MQTT broker
(Mosquitto) for iotcrm.

Standard library only, so it runs before any virtual environment exists.

    python3 deploy/local/services.py start [kafka|cassandra|mqtt ...]
    python3 deploy/local/services.py stop  [kafka|cassandra|mqtt ...]
    python3 deploy/local/services.py status
    python3 deploy/local/services.py run -- COMMAND ...   # start what is not running,
                                                          # run COMMAND, stop what it started

Jars come from Maven Central (``mvn dependency:copy-dependencies``) and are cached
outside the repository in ``$IOTCRM_CACHE_DIR`` (default ``~/.cache/iotcrm``).
Server data and logs live under ``$IOTCRM_STATE_DIR`` (default ``.state`` in the
working directory). Ports: ``IOTCRM_LOCAL_KAFKA_PORT`` (19092; the KRaft controller
uses the next port), ``IOTCRM_LOCAL_CASSANDRA_PORT`` (19042; storage and JMX ports
are derived from it), ``IOTCRM_LOCAL_MQTT_PORT`` (11883). Mosquitto is installed
from Debian's packages when missing (as root). Readiness is a real request: a
Kafka Metadata request that lists the broker, a CQL query on ``system.local``,
an MQTT CONNECT answered by an accepting CONNACK.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
KAFKA_VERSION = "3.9.1"
CASSANDRA_VERSION = "5.0.6"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


CACHE_DIR = _env_path("IOTCRM_CACHE_DIR", Path.home() / ".cache" / "iotcrm")
STATE_DIR = _env_path("IOTCRM_STATE_DIR", Path.cwd() / ".state")
KAFKA_PORT = int(os.environ.get("IOTCRM_LOCAL_KAFKA_PORT", "19092"))
CASSANDRA_PORT = int(os.environ.get("IOTCRM_LOCAL_CASSANDRA_PORT", "19042"))
MQTT_PORT = int(os.environ.get("IOTCRM_LOCAL_MQTT_PORT", "11883"))
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A server could not be fetched, started or stopped."""


@dataclass(frozen=True)
class Service:
    name: str
    version: str
    port: int
    ready_timeout_s: float

    @property
    def home(self) -> Path:
        return STATE_DIR / self.name

    @property
    def lib_dir(self) -> Path:
        return CACHE_DIR / f"{self.name}-{self.version}" / "lib"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"


KAFKA = Service("kafka", KAFKA_VERSION, KAFKA_PORT, ready_timeout_s=90)
CASSANDRA = Service("cassandra", CASSANDRA_VERSION, CASSANDRA_PORT, ready_timeout_s=240)
#: Mosquitto from Debian's packages: the devices' MQTT broker for `iotcrm mqtt-bridge`.
MQTT = Service("mqtt", "mosquitto", MQTT_PORT, ready_timeout_s=30)
SERVICES = {s.name: s for s in (KAFKA, CASSANDRA, MQTT)}


def log(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fetch


def fetch(service: Service) -> None:
    """Copy the server's runtime jars from Maven Central into the cache, once
    (Mosquitto: install Debian's package, once)."""
    if service is MQTT:
        _install_mosquitto()
        return
    marker = service.lib_dir / ".complete"
    if marker.exists():
        return
    pom = HERE / f"{service.name}.pom.xml"
    service.lib_dir.mkdir(parents=True, exist_ok=True)
    log(f"fetching {service.name} {service.version} from Maven Central into {service.lib_dir}")
    command = [
        "mvn",
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={service.lib_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ServiceError(
            f"fetching {service.name} failed (mvn exit {result.returncode}):\n{tail}"
        )
    marker.write_text(service.version)


def _install_mosquitto() -> None:
    if shutil.which("mosquitto"):
        return
    if os.geteuid() != 0:
        raise ServiceError("mosquitto is not installed: `sudo apt-get install mosquitto`")
    log("installing mosquitto from Debian's packages")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "mosquitto"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # no package lists yet on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not shutil.which("mosquitto"):
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ServiceError(
            f"installing mosquitto failed (apt-get exit {result.returncode}):\n{tail}"
        )


# --------------------------------------------------------------------------- probes


def mqtt_accepts(port: int, timeout: float = 3.0) -> bool:
    """An MQTT 3.1.1 CONNECT is answered with a CONNACK that accepts it."""
    client_id = b"iotcrm-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol, level 4, clean session, 10 s
    payload = struct.pack("!H", len(client_id)) + client_id
    body = variable + payload
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        answer = _recv_exact(sock, 4)
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return answer[0] == 0x20 and answer[3] == 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def kafka_broker_count(port: int, timeout: float = 3.0) -> int:
    """Send a Metadata request (v0, no topics) and return how many brokers answered."""
    client_id = b"iotcrm-probe"
    body = struct.pack(">hhih", 3, 0, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)
    correlation_id, brokers = struct.unpack(">ii", response[:8])
    if correlation_id != 7:
        raise ConnectionError("unexpected Kafka response")
    return brokers


def kafka_coordinator_ready(port: int, timeout: float = 3.0) -> bool:
    """A FindCoordinator request (v0) answered without error.

    On a new broker the first one creates ``__consumer_offsets``; until that is
    done, consumer groups cannot work, so this is part of being ready.
    """
    client_id, group = b"iotcrm-probe", b"iotcrm-probe"
    body = (
        struct.pack(">hhih", 10, 0, 8, len(client_id))
        + client_id
        + struct.pack(">h", len(group))
        + group
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)
    correlation_id, error_code = struct.unpack(">ih", response[:6])
    return correlation_id == 8 and error_code == 0


def _cql_frame(opcode: int, body: bytes, stream: int) -> bytes:
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def _cql_read(sock: socket.socket) -> tuple[int, bytes]:
    _version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", _recv_exact(sock, 9))
    return opcode, _recv_exact(sock, length)


class CqlError(ConnectionError):
    """The server answered a CQL request with an error (or a login was refused)."""


def _cql_connect(port: int, login: tuple[str, str] | None, timeout: float) -> socket.socket:
    """A CQL v4 connection, logged in with ``login`` (SASL PLAIN) if the server asks."""
    startup = struct.pack(">H", 1) + b"".join(
        struct.pack(">H", len(s)) + s for s in (b"CQL_VERSION", b"3.0.0")
    )
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.sendall(_cql_frame(0x01, startup, 1))
        opcode, body = _cql_read(sock)
        if opcode == 0x03:  # AUTHENTICATE
            if login is None:
                raise CqlError("the server asks for a login")
            token = b"\0" + login[0].encode() + b"\0" + login[1].encode()
            sock.sendall(_cql_frame(0x0F, struct.pack(">i", len(token)) + token, 2))
            opcode, body = _cql_read(sock)
            if opcode != 0x10:  # AUTH_SUCCESS
                raise CqlError(f"login as {login[0]} refused: {_error_message(opcode, body)}")
        elif opcode != 0x02:  # READY
            raise CqlError(f"CQL STARTUP answered {_error_message(opcode, body)}")
    except BaseException:
        sock.close()
        raise
    return sock


def _cql_query(sock: socket.socket, query: str, stream: int = 3) -> bytes:
    """Run one statement; the RESULT body."""
    text = query.encode()
    sock.sendall(
        _cql_frame(0x07, struct.pack(">i", len(text)) + text + struct.pack(">HB", 1, 0), stream)
    )
    opcode, body = _cql_read(sock)
    if opcode != 0x08:  # RESULT
        raise CqlError(f"{query.split(' WITH ')[0]}: {_error_message(opcode, body)}")
    return body


def _error_message(opcode: int, body: bytes) -> str:
    if opcode != 0x00 or len(body) < 6:  # not an ERROR: [int code][string message]
        return f"opcode {opcode}"
    return body[6 : 6 + struct.unpack(">H", body[4:6])[0]].decode(errors="replace")


def cassandra_release_version(
    port: int, timeout: float = 3.0, login: tuple[str, str] | None = None
) -> str:
    """Run ``SELECT release_version FROM system.local`` over the CQL v4 protocol."""
    with _cql_connect(port, login, timeout) as sock:
        return _first_text_value(_cql_query(sock, "SELECT release_version FROM system.local"))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        length = self.take(">H")
        self.at += length
        return self.data[self.at - length : self.at]


def _first_text_value(body: bytes) -> str:
    """The first cell of a Rows result whose columns are all text (CQL v4 section 4.2.5.2)."""
    reader = _Reader(body)
    if reader.take(">i") != 2:  # Rows
        raise ConnectionError("CQL result is not a Rows result")
    flags, columns = reader.take(">i"), reader.take(">i")
    if flags & 0x0002:  # has_more_pages: [bytes] paging state
        reader.at += max(reader.take(">i"), 0)
    global_spec = bool(flags & 0x0001)
    if global_spec:
        reader.string(), reader.string()
    for _ in range(columns):
        if not global_spec:
            reader.string(), reader.string()
        reader.string()
        if reader.take(">H") != 0x000D:  # varchar
            raise ConnectionError("unexpected CQL column type")
    if reader.take(">i") < 1:
        raise ConnectionError("CQL query returned no row")
    length = reader.take(">i")
    return body[reader.at : reader.at + length].decode()


def is_ready(service: Service) -> bool:
    try:
        if service is KAFKA:
            return kafka_broker_count(service.port) >= 1 and kafka_coordinator_ready(service.port)
        if service is MQTT:
            return mqtt_accepts(service.port)
        return bool(cassandra_release_version(service.port, login=_cassandra_login(service)))
    except (OSError, struct.error):
        return False


# --------------------------------------------------------------------------- configs


#: The role iotcrm logs in to the local Cassandra with (its password:
#: ``cassandra_secret_files``); the server's first superuser ``cassandra``
#: keeps its well-known password only until the role exists.
CASSANDRA_ROLE = "iotcrm"
_CASSANDRA_FIRST_LOGIN = ("cassandra", "cassandra")


def cassandra_secret_files(service: Service = CASSANDRA) -> dict[str, Path]:
    """The local Cassandra's passwords, random, kept with its data: the role
    iotcrm uses (``IOTCRM_CASSANDRA_PASSWORD_FILE``) and the superuser's."""
    auth = service.home / "auth"
    return {"dir": auth, "password": auth / "password", "admin": auth / "admin-password"}


def client_environment() -> dict[str, str]:
    """What a client of these servers needs from the environment: the file
    holding the Cassandra password (the user, ``iotcrm``, is in iotcrm.toml)."""
    return {"IOTCRM_CASSANDRA_PASSWORD_FILE": str(cassandra_secret_files()["password"])}


def _cassandra_login(service: Service) -> tuple[str, str]:
    """The role's login once it has a password, before that the first superuser's."""
    password = cassandra_secret_files(service)["password"]
    if password.exists():
        return CASSANDRA_ROLE, password.read_text().strip()
    return _CASSANDRA_FIRST_LOGIN


def _add_cassandra_role(service: Service) -> None:
    """Once per node: the ``iotcrm`` role with a random password and every
    permission on every keyspace, and a random password for the superuser.
    The passwords are written first, so a run cut short is finished by the next."""
    try:
        _cql_connect(service.port, None, timeout=10.0).close()
    except CqlError:
        pass  # it asks for a login, as configured
    else:
        raise ServiceError(
            f"cassandra on {HOST}:{service.port} lets clients in without a login: it was "
            "started with an earlier configuration; restart it (services.py stop cassandra)"
        )
    files = cassandra_secret_files(service)
    if files["password"].exists():
        try:
            cassandra_release_version(service.port, login=_cassandra_login(service))
            return
        except CqlError:
            pass  # the role was not created yet
    files["dir"].mkdir(parents=True, exist_ok=True)
    for name in ("password", "admin"):
        if not files[name].exists():
            files[name].touch(mode=0o600)
            files[name].write_text(base64.urlsafe_b64encode(os.urandom(24)).decode() + "\n")
    password = files["password"].read_text().strip()
    admin = files["admin"].read_text().strip()
    try:
        sock = _cql_connect(service.port, ("cassandra", admin), timeout=10.0)
    except CqlError:
        sock = _cql_connect(service.port, _CASSANDRA_FIRST_LOGIN, timeout=10.0)
    with sock:
        for statement in (
            f"CREATE ROLE IF NOT EXISTS {CASSANDRA_ROLE} WITH PASSWORD = '{password}' "
            "AND LOGIN = true",
            f"ALTER ROLE {CASSANDRA_ROLE} WITH PASSWORD = '{password}'",
            f"GRANT ALL PERMISSIONS ON ALL KEYSPACES TO {CASSANDRA_ROLE}",
            f"ALTER ROLE cassandra WITH PASSWORD = '{admin}'",
        ):
            _cql_query(sock, statement)


#: The secured listener's SCRAM user (its password: ``kafka_secure_files``).
KAFKA_SASL_USER = "iotcrm-local"


def kafka_secure_files(service: Service) -> dict[str, Path]:
    """Where the secured listener's material lives: the CA bundle clients trust
    (``kafka.ssl_cafile``) and the SCRAM password (``IOTCRM_KAFKA_SASL_PASSWORD_FILE``)."""
    tls = service.home / "tls"
    return {
        "dir": tls,
        "ca": tls / "ca.pem",
        "keystore": tls / "broker-keystore.pem",
        "password": tls / "sasl-password",
    }


def _write_tls_material(service: Service) -> None:
    """A local CA and a broker certificate for 127.0.0.1 (openssl), and a random
    SCRAM password; once, kept with the server's state, never in the repository."""
    files = kafka_secure_files(service)
    tls = files["dir"]
    if files["keystore"].exists() and files["password"].exists():
        return
    tls.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=tls)
        if result.returncode != 0:
            raise ServiceError(f"openssl {args[0]} failed:\n{result.stderr[-2000:]}")

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "3650", "-subj", "/CN=iotcrm local CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
            "-out", "broker.csr", "-subj", f"/CN={HOST}")  # fmt: skip
    (tls / "san.ext").write_text(f"subjectAltName=IP:{HOST},DNS:localhost\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "broker.pem", "-days", "3650",
            "-extfile", "san.ext")  # fmt: skip
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8")
    keystore = (tls / "broker.pk8").read_text() + (tls / "broker.pem").read_text()
    files["keystore"].write_text(keystore)
    files["keystore"].chmod(0o600)
    files["password"].write_text(base64.urlsafe_b64encode(os.urandom(24)).decode())
    files["password"].chmod(0o600)


def _add_scram_user(service: Service) -> None:
    """The SCRAM user of the secured listener, once per cluster (kafka-configs)."""
    marker = service.home / "data" / ".scram-user"
    if marker.exists():
        return
    password = kafka_secure_files(service)["password"].read_text().strip()
    result = subprocess.run(
        ["java", "-cp", f"{service.lib_dir}/*", "kafka.admin.ConfigCommand",
         "--bootstrap-server", f"{HOST}:{service.port}", "--alter",
         "--add-config", f"SCRAM-SHA-512=[password={password}]",
         "--entity-type", "users", "--entity-name", KAFKA_SASL_USER],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise ServiceError(
            f"adding the SCRAM user failed:\n{(result.stdout + result.stderr)[-2000:]}"
        )
    marker.write_text(KAFKA_SASL_USER)


def _write_kafka_config(service: Service) -> Path:
    data = service.home / "data"
    controller_port = service.port + 1
    secure_port = service.port + 2
    _write_tls_material(service)
    keystore = kafka_secure_files(service)["keystore"]
    config = service.home / "server.properties"
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{HOST}:{controller_port}",
                f"listeners=PLAINTEXT://{HOST}:{service.port},CONTROLLER://{HOST}:{controller_port},"
                f"SASL_SSL://{HOST}:{secure_port}",
                f"advertised.listeners=PLAINTEXT://{HOST}:{service.port},"
                f"SASL_SSL://{HOST}:{secure_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
                "SASL_SSL:SASL_SSL",
                # The secured listener: SCRAM-SHA-512 over TLS, as the clients connect
                # with kafka.sasl_username (docs/operations.md, "Secured Kafka").
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                f"listener.name.sasl_ssl.ssl.keystore.location={keystore}",
                f"log.dirs={data}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=8",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "log.segment.bytes=67108864",
                "",
            ]
        )
    )
    (service.home / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=WARN\n"
        "log4j.logger.state.change.logger=WARN\nlog4j.logger.kafka.log.LogCleaner=WARN\n"
    )
    if not (data / "meta.properties").exists():
        data.mkdir(parents=True, exist_ok=True)
        cluster_id = _kafka_cluster_id()
        result = subprocess.run(
            [
                "java",
                "-cp",
                f"{service.lib_dir}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
                "-g",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
    return config


def _kafka_cluster_id() -> str:
    # An id that starts with "-" reads as an option to the storage tool (one in
    # 64); Kafka's own Uuid.randomUuid() draws again for the same reason.
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _mqtt_command(service: Service) -> list[str]:
    config = service.home / "mosquitto.conf"
    lines = [
        f"listener {service.port} {HOST}",
        "allow_anonymous true",
        # Sessions of QoS 1 subscribers (the bridge) outlive a restart of either side.
        "persistence true",
        f"persistence_location {service.home}/",
        "max_queued_messages 1000000",
        "max_inflight_messages 1000",
        "log_dest stdout",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to a `mosquitto` user that cannot write here
    config.write_text("\n".join(lines) + "\n")
    return [shutil.which("mosquitto") or "mosquitto", "-c", str(config)]


def _kafka_command(service: Service) -> list[str]:
    config = _write_kafka_config(service)
    return [
        "java",
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{service.home / 'log4j.properties'}",
        "-cp",
        f"{service.lib_dir}/*",
        "kafka.Kafka",
        str(config),
    ]


def _write_cassandra_config(service: Service) -> Path:
    data = service.home / "data"
    conf = service.home / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    storage_port = service.port + 10
    # TLS with the local CA's certificate for 127.0.0.1 (the Kafka listener's),
    # optional: clients may also speak plain CQL on the same port.
    _write_tls_material(KAFKA)
    keystore = kafka_secure_files(KAFKA)["keystore"]
    (conf / "cassandra.yaml").write_text(
        f"""cluster_name: iotcrm-local
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
commitlog_sync: periodic
commitlog_sync_period: 10000ms
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{HOST}:{storage_port}"
listen_address: {HOST}
rpc_address: {HOST}
storage_port: {storage_port}
native_transport_port: {service.port}
start_native_transport: true
data_file_directories: [{data}/data]
commitlog_directory: {data}/commitlog
saved_caches_directory: {data}/saved_caches
hints_directory: {data}/hints
cdc_raw_directory: {data}/cdc_raw
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
client_encryption_options:
  enabled: true
  optional: true
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: {keystore}
concurrent_compactors: 1
# Test namespaces are dropped after each test; no snapshot of them is wanted.
auto_snapshot: false
"""
    )
    (conf / "logback.xml").write_text(
        """<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{ISO8601} %logger{0} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra.db.compaction" level="WARN"/>
</configuration>
"""
    )
    return conf


def _cassandra_command(service: Service) -> list[str]:
    conf = _write_cassandra_config(service)
    jamm = next(service.lib_dir.glob("jamm-*.jar"), None)
    if jamm is None:
        raise ServiceError(f"no jamm jar in {service.lib_dir}: delete it and fetch again")
    jvm_options = [
        word
        for line in (HERE / "cassandra-jvm17.options").read_text().splitlines()
        if line.strip() and not line.startswith("#")
        for word in line.split()
    ]
    return [
        "java",
        "-Xms1g",
        "-Xmx1g",
        "-Xss512k",
        *jvm_options,
        f"-javaagent:{jamm}",
        f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
        "-Dcassandra-foreground=yes",
        f"-Dlogback.configurationFile={conf / 'logback.xml'}",
        f"-Dcassandra.storagedir={service.home / 'data'}",
        f"-Dcassandra.jmx.local.port={service.port + 11}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.superuser_setup_delay_ms=0",
        "-Dcassandra.ring_delay_ms=0",
        "-cp",
        f"{conf}:{service.lib_dir}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


# --------------------------------------------------------------------------- lifecycle


def _pid(service: Service) -> int | None:
    try:
        pid = int(service.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        # Reap it if it is our child that exited (run mode starts the servers),
        # or kill(pid, 0) would keep seeing its zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    except ChildProcessError:
        pass  # started by an earlier invocation: not ours to reap
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return None if _is_zombie(pid) else pid


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not reaped by its parent (e.g. a server
    started by `run` and stopped by another invocation): dead for our purposes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _log_tail(service: Service, lines: int = 30) -> str:
    """The log's first errors (a server may log a lot after the one that matters),
    then its last lines."""
    try:
        text = service.log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text if line.startswith(("ERROR", "FATAL")) or "Exception:" in line]
    head = ["errors:", *errors[:6], "last lines:"] if errors else []
    return "\n".join(head + text[-lines:])


def start(service: Service) -> bool:
    """Start the server unless it already answers; return True if this call started it."""
    if is_ready(service):
        log(f"{service.name} already running on {HOST}:{service.port}")
        if service is CASSANDRA:
            _add_cassandra_role(service)  # a start cut short may have left it undone
        return False
    process: subprocess.Popen[bytes] | None = None
    if _pid(service) is None:
        fetch(service)
        service.home.mkdir(parents=True, exist_ok=True)
        commands = {KAFKA: _kafka_command, CASSANDRA: _cassandra_command, MQTT: _mqtt_command}
        command = commands[service](service)
        with service.log_file.open("ab") as log_stream:
            process = subprocess.Popen(
                command,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=service.home,
                start_new_session=True,
            )
        service.pid_file.write_text(str(process.pid))
        log(
            f"starting {service.name} {service.version} (pid {process.pid}, log {service.log_file})"
        )
    deadline = time.monotonic() + service.ready_timeout_s
    while time.monotonic() < deadline:
        if is_ready(service):
            if service is KAFKA:
                _add_scram_user(service)
            if service is CASSANDRA:
                _add_cassandra_role(service)
            log(f"{service.name} ready on {HOST}:{service.port}")
            return True
        # poll() reaps a child of ours that died, which kill(pid, 0) would still see as a zombie.
        exited = process.poll() is not None if process else _pid(service) is None
        if exited:
            raise ServiceError(
                f"{service.name} exited before it was ready; from {service.log_file}:\n"
                + _log_tail(service)
            )
        time.sleep(0.5)
    raise ServiceError(
        f"{service.name} did not answer on {HOST}:{service.port} within "
        f"{service.ready_timeout_s:.0f}s; from {service.log_file}:\n" + _log_tail(service)
    )


def stop(service: Service, timeout_s: float = 60.0) -> None:
    pid = _pid(service)
    if pid is None:
        log(f"{service.name} not running")
        service.pid_file.unlink(missing_ok=True)
        return
    log_offset = service.log_file.stat().st_size if service.log_file.exists() else 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid(service) is not None:
        if _finished_shutdown(service, log_offset):
            # Cassandra drains and says so, then its JVM lingers on non-daemon
            # threads; everything is flushed by then, so end it.
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    if _pid(service) is not None:
        log(f"{service.name} did not stop within {timeout_s:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
        while _pid(service) is not None:
            time.sleep(0.1)
    service.pid_file.unlink(missing_ok=True)
    log(f"{service.name} stopped")


#: The line a server logs once it has flushed everything on SIGTERM.
SHUTDOWN_COMPLETE = {"cassandra": b"Cassandra shutdown complete"}


def _finished_shutdown(service: Service, log_offset: int) -> bool:
    marker = SHUTDOWN_COMPLETE.get(service.name)
    if marker is None:
        return False
    try:
        with service.log_file.open("rb") as log_stream:
            log_stream.seek(log_offset)
            return marker in log_stream.read()
    except OSError:
        return False


def status() -> int:
    for service in SERVICES.values():
        pid = _pid(service)
        state = "ready" if is_ready(service) else ("starting or stuck" if pid else "stopped")
        print(f"{service.name:10} {state:18} port {service.port}  pid {pid or '-'}")
    return 0


def _selected(names: list[str]) -> list[Service]:
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service(s): {', '.join(unknown)}; known: kafka, cassandra")
    return [SERVICES[n] for n in names] if names else list(SERVICES.values())


def start_all(services: list[Service]) -> list[Service]:
    """Start the services concurrently-ish: Cassandra is launched first (it is slower)."""
    started: list[Service] = []
    try:
        for service in sorted(services, key=lambda s: s is KAFKA):
            if start(service):
                started.append(service)
    except ServiceError:
        for service in started:
            stop(service)
        raise
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("fetch", "start", "stop"):
        p = sub.add_parser(action)
        p.add_argument("names", nargs="*", help="kafka, cassandra, mqtt (default: all)")
    sub.add_parser("status")
    run = sub.add_parser("run", help="start what is not running, run a command, stop it again")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.action == "status":
            return status()
        if args.action == "fetch":
            for service in _selected(args.names):
                fetch(service)
            return 0
        if args.action == "start":
            start_all(_selected(args.names))
            return 0
        if args.action == "stop":
            for service in _selected(args.names):
                stop(service)
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command")
        started = start_all(list(SERVICES.values()))
        try:
            return subprocess.call(command, env={**client_environment(), **os.environ})
        finally:
            for service in started:
                stop(service)
    except ServiceError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
