"""The MQTT bridge (``iotcrm mqtt-bridge``): devices publish to an MQTT
broker (``devices/<device_id>/telemetry``), the bridge forwards every message
to ingest's shared keyed telemetry topic (``kafka.telemetry_topic``, key = the
device id), from where it takes the same path as any device record.

At least once, end to end: the bridge subscribes with QoS 1 in a persistent
session (clean session off, a fixed ``mqtt.client_id``) and acknowledges a
message (PUBACK) only once Kafka acknowledged its record (paho's manual
acks). A message in flight when the bridge, the broker or Kafka fails stays
unacknowledged in the session, and the MQTT broker delivers it again when the
bridge reconnects; the actor drops the duplicates by event id. A message whose
topic carries no valid device id is dead-lettered with the reason (its bytes
kept) and acknowledged.

One thread: paho's network loop and librdkafka's delivery reports are both
driven from :meth:`MqttBridge.run`, so acknowledgements never race.
"""

from __future__ import annotations

import base64
import logging
import re
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from confluent_kafka import Producer

from agents.ingest import producer_options
from engine.config import Settings
from engine.events import DEVICE_ID_PATTERN, DeadLetter, SourcePosition

log = logging.getLogger(__name__)

QOS = 1
#: How often the counters are logged.
REPORT_INTERVAL_S = 10.0
_DEVICE_ID = re.compile(f"^{DEVICE_ID_PATTERN}$")


@dataclass
class BridgeMetrics:
    received: int = 0  # MQTT messages taken (redeliveries included)
    forwarded: int = 0  # acknowledged by Kafka, then by us to the MQTT broker
    deadlettered: int = 0
    send_retries: int = 0
    connects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_id_of(topic: str, pattern: str) -> str | None:
    """The device id at the ``+`` level of ``pattern``, or None when ``topic``
    does not match or the id is not a valid one.

    >>> device_id_of("devices/wm-0001/telemetry", "devices/+/telemetry")
    'wm-0001'
    >>> device_id_of("devices/bad id/telemetry", "devices/+/telemetry") is None
    True
    >>> device_id_of("devices/x/status", "devices/+/telemetry") is None
    True
    """
    levels, wanted = topic.split("/"), pattern.split("/")
    if len(levels) != len(wanted) or "+" not in wanted:
        return None
    device_id = None
    for level, want in zip(levels, wanted, strict=True):
        if want == "+":
            device_id = level
        elif want != level:
            return None
    return device_id if device_id and _DEVICE_ID.match(device_id) else None


class MqttBridge:
    """Forwards one MQTT subscription to Kafka; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics()
        self._stopping = False
        self._connected = False
        self.producer = Producer(producer_options(settings))
        m = settings.mqtt
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=m.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if m.username:
            self.client.username_pw_set(m.username, Settings.secret("MQTT_PASSWORD") or "")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # ------------------------------------------------------------- the loop

    def run(self) -> None:
        """Until :meth:`stop`: MQTT in, Kafka out, acknowledgements back."""
        m = self.settings.mqtt
        self.client.connect(m.host, m.port, keepalive=m.keepalive_s)
        reconnect_at = 0.0
        reported_at = time.monotonic()
        try:
            while not self._stopping:
                result = self.client.loop(timeout=0.05)
                self.producer.poll(0)
                if time.monotonic() - reported_at >= REPORT_INTERVAL_S:
                    reported_at = time.monotonic()
                    log.info("mqtt bridge: %s", self.metrics.as_dict())
                if result != mqtt.MQTT_ERR_SUCCESS and time.monotonic() >= reconnect_at:
                    reconnect_at = time.monotonic() + 1.0
                    try:
                        self.client.reconnect()
                    except OSError as exc:
                        log.warning("mqtt bridge: broker unreachable (%s); retrying", exc)
        finally:
            # Records sent are acknowledged (and their messages acked) before we go;
            # what is left unacknowledged comes again with the session.
            self.producer.flush(30.0)
            self.client.loop(timeout=0.1)
            self.client.disconnect()

    def stop(self) -> None:
        self._stopping = True

    # ------------------------------------------------------------ callbacks

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.error("mqtt bridge: connection refused: %s", reason)
            return
        self._connected = True
        self.metrics.connects += 1
        client.subscribe(self.settings.mqtt.topic, qos=QOS)
        log.info("mqtt bridge: subscribed to %s", self.settings.mqtt.topic)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                       _props: Any) -> None:  # fmt: skip
        if self._connected and not self._stopping:
            log.warning("mqtt bridge: disconnected (%s); reconnecting", reason)
        self._connected = False

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.metrics.received += 1
        k = self.settings.kafka
        device_id = device_id_of(message.topic, self.settings.mqtt.topic)
        if device_id is None:
            letter = DeadLetter(
                reason=f"MQTT topic {message.topic!r} names no valid device id "
                f"(subscription {self.settings.mqtt.topic!r})",
                reason_code="mqtt_topic",
                source=SourcePosition(topic=message.topic, partition=-1, offset=message.mid),
                received_at=time.time(),
                original_b64=base64.b64encode(message.payload).decode(),
            )
            self._send(message, k.deadletter_topic, msgspec.json.encode(letter), None)
            self.metrics.deadlettered += 1
            return
        self._send(message, k.telemetry_topic, message.payload, device_id.encode())

    def _send(self, message: Any, topic: str, value: bytes, key: bytes | None) -> None:
        def delivered(error: Any, _record: Any) -> None:
            if error is not None:
                # Not acknowledged to MQTT: send again rather than wait for a reconnect.
                log.warning("mqtt bridge: Kafka refused a record (%s); sending it again", error)
                self.metrics.send_retries += 1
                self._send(message, topic, value, key)
                return
            self.client.ack(message.mid, message.qos)
            if topic == self.settings.kafka.telemetry_topic:
                self.metrics.forwarded += 1

        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=delivered)
                return
            except BufferError:  # librdkafka's queue is full: let it deliver
                self.producer.poll(0.05)


def run_mqtt_bridge(settings: Settings) -> None:
    """``iotcrm mqtt-bridge``: the bridge until SIGTERM or SIGINT."""
    bridge = MqttBridge(settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: bridge.stop())
    log.info(
        "mqtt bridge: %s:%d %s -> %s",
        settings.mqtt.host,
        settings.mqtt.port,
        settings.mqtt.topic,
        settings.kafka.telemetry_topic,
    )
    bridge.run()
    log.info("mqtt bridge stopped: %s", bridge.metrics.as_dict())
