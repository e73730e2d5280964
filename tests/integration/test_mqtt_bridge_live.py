"""`iotcrm mqtt-bridge` against the local Mosquitto and Kafka: QoS 1 messages
reach the worker at least once, none lost while the bridge is killed and
restarted, each event processed once; a topic without a valid device id is
dead-lettered with its bytes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from loadtest.harness import wait_for
from tests.integration.kit import REPO, Namespace, read_all, register
from tests.integration.live_helpers import wait_processed

MQTT_PORT = int(os.environ.get("IOTCRM_LOCAL_MQTT_PORT", "11883"))


class Publisher:
    """A device side: QoS 1 publishes, each acknowledged by the broker."""

    def __init__(self, name: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.connect("127.0.0.1", MQTT_PORT)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_bridge(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "mqtt-bridge"],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def reading(device_id: str, n: int, start: float) -> bytes:
    return orjson.dumps({"id": f"m{n}", "ts": start + n, "device_id": device_id,
                         "kind": "telemetry", "temperature": 20.0 + n % 7})  # fmt: skip


async def test_mqtt_messages_reach_the_worker_once_each_across_a_bridge_crash(
    namespace: Namespace, producer: Any
) -> None:
    prefix = f"{namespace.id}/devices"
    env = {
        **namespace.env,
        "IOTCRM_MQTT_PORT": str(MQTT_PORT),
        "IOTCRM_MQTT_TOPIC": f"{prefix}/+/telemetry",
        "IOTCRM_MQTT_CLIENT_ID": f"{namespace.id}-bridge",
    }
    k = namespace.settings.kafka
    await register(producer, namespace, {"d1": ("c1", "compressor"), "d2": ("c2", "washer")})
    worker = namespace.worker().start()
    await worker.wait_ready()
    log = namespace.tmp / "bridge.log"
    namespace.tmp.mkdir(parents=True, exist_ok=True)
    bridge = start_bridge(env, log)
    publisher = Publisher(f"{namespace.id}-devices")
    start = time.time() - 600
    try:
        # Subscribed: the session exists from here on, so nothing published is lost.
        await wait_for(lambda: "subscribed to" in log.read_text(), timeout=30, what="bridge up")
        for n in range(100):
            publisher.publish(
                f"{prefix}/d{1 + n % 2}/telemetry", reading(f"d{1 + n % 2}", n, start)
            )
        bridge.send_signal(signal.SIGKILL)  # whatever it had not acknowledged comes again
        bridge.wait(timeout=10)
        for n in range(100, 200):  # queued by the broker for the bridge's session
            publisher.publish(
                f"{prefix}/d{1 + n % 2}/telemetry", reading(f"d{1 + n % 2}", n, start)
            )
        publisher.publish(f"{prefix}/not a device/telemetry", b'{"id": "x"}')
        bridge = start_bridge(env, log)
        await wait_processed(worker, {"c1": 100, "c2": 100}, timeout=90)
    finally:
        publisher.close()
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=30) == 0, log.read_text()[-3000:]

    forwarded = [
        orjson.loads(r.value)["id"] for r in await read_all(k.bootstrap, k.telemetry_topic)
    ]
    assert set(forwarded) == {f"m{n}" for n in range(200)}, "every message, at least once"
    letters = [orjson.loads(r.value) for r in await read_all(k.bootstrap, k.deadletter_topic)]
    (letter,) = [x for x in letters if x["reason_code"] == "mqtt_topic"]
    assert base64.b64decode(letter["original_b64"]) == b'{"id": "x"}'
    assert "not a device" in letter["reason"]
    metrics = worker.metrics() or {}
    assert metrics["actor"]["events"] + metrics["actor"]["in_flight"] >= 200
    assert metrics["ingest"]["accepted"] == len(forwarded)
    stopped = [line for line in log.read_text().splitlines() if "mqtt bridge stopped" in line]
    assert stopped and "'connects': 1" in stopped[-1], "the restarted bridge ran to a clean stop"
