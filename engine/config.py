"""Configuration: one TOML file, overridable key by key from the environment.

The file is ``iotcrm.toml`` in the working directory, or the path in
``IOTCRM_CONFIG``. Every key can be overridden as ``IOTCRM_<SECTION>_<KEY>``;
values from the environment are converted to the key's type. Secrets are read
only from the environment (see ``Settings.secret``).

>>> s = load_settings(path=None, environ={"IOTCRM_KAFKA_PARTITIONS": "8"})
>>> s.kafka.partitions
8
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec


class KafkaSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    bootstrap: str = "127.0.0.1:19092"
    device_topic_prefix: str = "iot.device."
    telemetry_topic: str = "iot.telemetry"
    registry_topic: str = "iot.registry"
    customers_topic: str = "crm.customers"
    deadletter_topic: str = "iot.deadletter"
    late_topic: str = "iot.late"
    customer_events_topic: str = "iotcrm.events.by-customer"
    outcomes_topic: str = "crm.outcomes"
    #: GDPR erasure requests, keyed by customer_id (``engine.erasure``).
    erasure_topic: str = "crm.erasure-requests"
    customer360_topic: str = "iotcrm.customer360"
    action_topic_prefix: str = "crm.actions."
    partitions: int = 4
    replication_factor: int = 1
    metadata_max_age_ms: int = 5000
    sasl_username: str = ""
    #: CA bundle (PEM) that signed the brokers' certificates; "": the system's.
    ssl_cafile: str = ""


class CassandraSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    contact_points: str = "127.0.0.1"
    port: int = 19042
    keyspace: str = "iotcrm"
    replication_factor: int = 1
    action_ttl_s: int = 0
    customer_360_ttl_s: int = 0
    device_registry_ttl_s: int = 0
    username: str = ""
    #: Connect over TLS, the nodes' certificates verified against ``ssl_cafile``
    #: (a PEM bundle; "": the system's CAs) and their address.
    tls: bool = False
    ssl_cafile: str = ""


StageMode = Literal["process", "inline", "off"]


class WorkerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    app_id: str = "iotcrm"
    web_port: int = 6066
    #: The web server's address: 0.0.0.0 where probes and scrapes come from outside.
    web_host: str = "127.0.0.1"
    state_dir: str = ".state/worker"
    batch_size: int = 500
    batch_within_s: float = 0.005
    #: Ingest lets event time move on with the wall clock only after it has
    #: read every source to its end and nothing arrived for this long.
    idle_allowance_s: float = 5.0
    commit_interval_s: float = 1.0
    #: How often the actor checkpoints: waits for its actions' acknowledgements,
    #: writes each changed customer's state once, then lets Faust commit.
    checkpoint_interval_s: float = 1.0
    #: Ingest's fetch is answered once this many bytes are there, or after
    #: ``fetch_max_wait_ms``: each of its fetches lists every device partition,
    #: so fewer, larger fetches under a steady load, for a bounded delay. (The
    #: actor's consumer, over a few partitions, is answered from the first byte.)
    fetch_min_bytes: int = 32 * 1024
    fetch_max_wait_ms: int = 25
    #: The longest the broker holds a fetch of the actor's consumer (Faust's
    #: own is 1,500 ms): a partition the actor drained waits for the fetch in
    #: flight to return before it is fetched again (``agents.faust_compat``,
    #: repair 6), so this bounds the delay a busy partition can suffer.
    actor_fetch_max_wait_ms: int = 20
    #: Decoded customer states kept in memory between batches (clean ones
    #: beyond this are dropped after a checkpoint, least recently used first).
    state_cache_size: int = 50_000
    session_timeout_s: float = 10.0
    #: How often changed customers' 360 summaries are published (at most once
    #: per customer per interval).
    summary_interval_s: float = 5.0
    #: Where ingest and the Cassandra sink run: a child process of the worker
    #: (a core of their own), elsewhere (``"off"``: ``iotcrm ingest`` /
    #: ``iotcrm sink`` started by the operator), or, for the sink only, the
    #: worker's own event loop (``"inline"``).
    ingest: Literal["process", "off"] = "process"
    sink: StageMode = "process"

    @property
    def heartbeat_interval_s(self) -> float:
        """How often every worker consumer heartbeats: a quarter of the
        session, at least a second (a member learns of a rebalance at its
        next heartbeat)."""
        return max(1.0, self.session_timeout_s / 4)


class RulesSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: str = "rules"
    reload_interval_s: float = 1.0


class ModelsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: str = "models/models.yaml"


class QualitySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The data-quality layer's knobs (``engine.quality`` calls them ``QualityOptions``).

    >>> QualitySettings(expected_interval_s={"washer": 60.0}).expected_interval("vehicle")
    300.0
    """

    #: An event id is remembered until the device's stream time passes ts + this.
    dedup_horizon_s: float = 86400.0
    #: At most this many remembered event ids per device (oldest go first).
    dedup_max_ids: int = 2048
    #: Events up to this far behind the device's stream time are still on time.
    allowed_lateness_s: float = 30.0
    #: Reject events stamped more than this ahead of the wall clock.
    max_future_skew_s: float = 300.0
    #: Events of different devices reach Kafka at most this far out of
    #: event-time order with each other (clocks, networks, batching): the
    #: timers of idle keys wait this much event time past what ingest has
    #: read, so a device is never called silent while its event is on its way.
    device_skew_s: float = 60.0
    #: Reject payloads longer than this, before decoding them.
    max_payload_bytes: int = 65536
    #: Deepest nesting of lists/objects allowed inside an extra field.
    max_nesting: int = 8
    #: Expected time between two events of a device, by device type.
    expected_interval_s: dict[str, float] = msgspec.field(default_factory=dict)
    #: ... and for device types not listed there (0 disables gap detection).
    default_expected_interval_s: float = 300.0
    #: A silence longer than expected interval × this factor is a gap.
    gap_factor: float = 3.0
    #: How many of the latest gaps a device's state keeps.
    gaps_kept: int = 10

    def expected_interval(self, device_type: str) -> float:
        """Seconds expected between two events of a device of this type."""
        return self.expected_interval_s.get(device_type, self.default_expected_interval_s)


class MqttSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The devices' MQTT broker, for ``iotcrm mqtt-bridge``."""

    host: str = "127.0.0.1"
    port: int = 11883
    #: Subscription; the ``+`` level is the device id.
    topic: str = "devices/+/telemetry"
    #: The bridge's session: unacknowledged messages wait in the broker under it.
    client_id: str = "iotcrm-mqtt-bridge"
    keepalive_s: int = 30
    #: With a username, the password comes from IOTCRM_MQTT_PASSWORD.
    username: str = ""


class PrivacySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Actions on the downstream topics (and so the action log) carry keyed
    #: pseudonyms of customer and device ids (``engine.pseudonyms``); the key
    #: only from IOTCRM_PSEUDONYM_KEY (or the file IOTCRM_PSEUDONYM_KEY_FILE names).
    pseudonymise_actions: bool = False


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    cassandra: CassandraSettings = msgspec.field(default_factory=CassandraSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    rules: RulesSettings = msgspec.field(default_factory=RulesSettings)
    models: ModelsSettings = msgspec.field(default_factory=ModelsSettings)
    quality: QualitySettings = msgspec.field(default_factory=QualitySettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    privacy: PrivacySettings = msgspec.field(default_factory=PrivacySettings)

    @staticmethod
    def secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
        """A secret (one of ``SECRETS``) from the environment only: the value of
        ``IOTCRM_<name>``, or the content of the file ``IOTCRM_<name>_FILE``
        names (a mounted Kubernetes secret), without its final newline.

        >>> Settings.secret("KAFKA_SASL_PASSWORD", {"IOTCRM_KAFKA_SASL_PASSWORD": "s3cret"})
        's3cret'
        >>> Settings.secret("CASSANDRA_PASSWORD", {}) is None
        True
        """
        if name.upper() not in SECRETS:
            raise ValueError(f"{name} is not a secret iotcrm reads (one of {sorted(SECRETS)})")
        environ = os.environ if environ is None else environ
        value = environ.get(f"IOTCRM_{name.upper()}")
        if value:
            return value
        path = environ.get(f"IOTCRM_{name.upper()}_FILE")
        if not path:
            return None
        try:
            return Path(path).read_text().removesuffix("\n") or None
        except OSError as exc:
            raise ConfigError(f"IOTCRM_{name.upper()}_FILE: cannot read {path}: {exc}") from exc

    def action_topic(self, action_type: str) -> str:
        return self.kafka.action_topic_prefix + ACTION_TOPIC_SUFFIX.get(action_type, action_type)


#: Default action topic suffix per action type (architecture.md).
ACTION_TOPIC_SUFFIX: dict[str, str] = {
    "coupon": "coupon",
    "maintenance_booking": "maintenance",
    "retention_offer": "retention",
    "support_case": "support",
}


#: Read by ``Settings.secret`` only, never settings: no file or override holds them.
SECRETS = frozenset({"KAFKA_SASL_PASSWORD", "CASSANDRA_PASSWORD", "MQTT_PASSWORD", "PSEUDONYM_KEY"})
_SECRET_VARIABLES = frozenset(
    f"IOTCRM_{name}{suffix}" for name in SECRETS for suffix in ("", "_FILE")
)


class ConfigError(Exception):
    """The configuration file or an override is not valid."""


def _default_path(environ: Mapping[str, str]) -> Path | None:
    explicit = environ.get("IOTCRM_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("iotcrm.toml")
    return local if local.exists() else None


def load_settings(
    path: str | Path | None = "", environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (``""``: the default location; ``None``: none) and
    apply ``IOTCRM_<SECTION>_<KEY>`` overrides from ``environ``."""
    environ = os.environ if environ is None else environ
    resolved = _default_path(environ) if path == "" else (Path(path) if path else None)
    raw: dict[str, Any] = {}
    if resolved is not None:
        try:
            raw = tomllib.loads(resolved.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{resolved}: {exc}") from exc
    for section in Settings.__struct_fields__:
        prefix = f"IOTCRM_{section.upper()}_"
        for key, value in environ.items():
            if key.startswith(prefix) and key not in _SECRET_VARIABLES:
                raw.setdefault(section, {})[key[len(prefix) :].lower()] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        where = f"{resolved}: " if resolved else ""
        raise ConfigError(f"{where}invalid setting: {exc}") from exc
