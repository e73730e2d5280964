"""Against the local broker's secured listener (SASL_SSL, SCRAM-SHA-512, a
certificate of deploy/local's own CA): the CLI, the worker's actor, ingest and
sink all connect with the password from a file named by the environment, and a
wrong password is refused with a clear error."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from engine.store.cassandra import CassandraStore
from loadtest.harness import wait_for
from tests.integration.kit import REPO, Namespace, register, send_json
from tests.integration.live_helpers import iotcrm

STATE = Path(os.environ.get("IOTCRM_STATE_DIR") or REPO / ".state")
TLS = STATE / "kafka" / "tls"
SECURE_PORT = int(os.environ.get("IOTCRM_LOCAL_KAFKA_PORT", "19092")) + 2


def secured() -> dict[str, str]:
    """The settings of a client of the secured listener (the password from a file)."""
    return {
        "IOTCRM_KAFKA_BOOTSTRAP": f"127.0.0.1:{SECURE_PORT}",
        "IOTCRM_KAFKA_SASL_USERNAME": "iotcrm-local",
        "IOTCRM_KAFKA_SASL_PASSWORD_FILE": str(TLS / "sasl-password"),
        "IOTCRM_KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
    }


async def test_worker_ingest_sink_and_cli_work_over_sasl_ssl(
    namespace: Namespace, producer: Any, hot_rules: Path
) -> None:
    overrides = {**secured(), "IOTCRM_RULES_PATH": str(hot_rules)}
    env = {**namespace.env, **overrides}
    assert (TLS / "sasl-password").exists(), "deploy/local writes the listener's password"

    refused = iotcrm("setup", env={**env, "IOTCRM_KAFKA_SASL_PASSWORD": "not-the-password"})
    assert refused.returncode != 0
    assert "authentication" in refused.stderr.lower(), refused.stderr[-2000:]
    setup = iotcrm("setup", env=env)
    assert setup.returncode == 0, setup.stderr[-2000:]

    await register(producer, namespace, {"d1": ("c1", "compressor")})
    worker = namespace.worker(**overrides).start()
    await worker.wait_ready()
    event = {"id": "s1", "ts": time.time() - 30, "device_id": "d1", "kind": "telemetry",
             "temperature": 95.0}  # fmt: skip
    await send_json(producer, namespace.device_topic("d1"), None, event)

    store = CassandraStore(namespace.settings)
    await store.connect()
    try:
        await wait_for(
            lambda: store.count_actions("c1"), timeout=60, what="the action in Cassandra"
        )
    finally:
        await store.close()

    def counted() -> bool:  # the stages' counters reach the worker a few times a second
        metrics = worker.metrics() or {}
        ingest, actor = metrics.get("ingest") or {}, metrics.get("actor") or {}
        return ingest.get("accepted") == 1 and actor.get("actions") == 1

    await wait_for(counted, timeout=10, what="the event counted by ingest and the actor")

    erased = iotcrm("customer", "erase", "c1", "--timeout", "50", env=env)
    assert erased.returncode == 0, erased.stderr[-2000:]
    assert orjson.loads(erased.stdout)["rows_deleted"]["action_log"] == 1
