"""Shared test data for the quality tests."""

from __future__ import annotations

from typing import Any

import msgspec

from engine.quality import DeviceRegistry, SourcePosition

#: The wall clock of every inspector in these tests.
NOW = 1763700000.0
#: Where test records come from: the shared topic, so no topic/device check.
SHARED = SourcePosition("iot.telemetry", 3, 42)
#: Pass as a field value to leave the field out.
DROP: Any = object()


def event_bytes(**fields: Any) -> bytes:
    """A device event with valid defaults for the required fields."""
    base: dict[str, Any] = {"id": "e1", "ts": NOW - 10, "device_id": "d1", "kind": "telemetry"}
    base.update(fields)
    return msgspec.json.encode({k: v for k, v in base.items() if v is not DROP})


def make_registry() -> DeviceRegistry:
    registry = DeviceRegistry()
    for device_id, customer_id, device_type in [
        ("d1", "c1", "washer"),
        ("d2", "c1", "vehicle"),
        ("d3", "c2", "wearable"),
    ]:
        record = {"device_id": device_id, "customer_id": customer_id, "device_type": device_type}
        assert registry.apply(device_id.encode(), msgspec.json.encode(record)) is None
    return registry
