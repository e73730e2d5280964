"""Inspector: what gets through the door, and how it looks afterwards."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from engine.config import QualitySettings
from engine.quality import (
    Accepted,
    DeviceRegistry,
    Inspector,
    QualityOptions,
    Rejection,
    SourcePosition,
)

from .helpers import DROP, NOW, SHARED, event_bytes


def accepted(inspector: Inspector, raw: bytes) -> dict[str, Any]:
    result = inspector.inspect(raw, SHARED)
    assert isinstance(result, Accepted), result
    return result.event


def rejected(inspector: Inspector, raw: bytes, source: SourcePosition = SHARED) -> Rejection:
    result = inspector.inspect(raw, source)
    assert isinstance(result, Rejection), result
    return result


# (reading, value in another unit, that unit, value in the canonical unit)
CONVERSIONS = [
    ("temperature", 70.7, "F", 21.5),
    ("temperature", 294.65, "K", 21.5),
    ("temperature", 21.5, "C", 21.5),
    ("vibration", 9.80665, "m/s2", 1.0),
    ("vibration", 0.7, "g", 0.7),
    ("energy", 1200, "Wh", 1.2),
    ("energy", 36, "MJ", 10.0),
    ("energy", 7.2e6, "J", 2.0),
    ("power", 1.5, "kW", 1500.0),
    ("distance", 1500, "m", 1.5),
    ("distance", 10, "mi", 16.09344),
    ("level", 0.25, "ratio", 25.0),
    ("battery", 80, "%", 80.0),
    ("humidity", 55, "percent", 55.0),
    ("usage_min", 90, "s", 1.5),
    ("usage_min", 0.5, "h", 30.0),
]


@pytest.mark.parametrize(("reading", "value", "unit", "expected"), CONVERSIONS)
def test_every_shape_gives_the_same_canonical_reading(
    inspector: Inspector, reading: str, value: float, unit: str, expected: float
) -> None:
    suffix = "".join(c for c in unit.lower() if c.isalnum())
    base = reading.removesuffix("_min")
    shapes = [
        {reading: value, f"{reading}_unit": unit},
        {reading: {"value": value, "unit": unit}},
        {reading: {"value": value}, f"{reading}_unit": unit.upper()},
    ]
    if suffix:
        shapes.append({f"{base}_{suffix}": value})
    for shape in shapes:
        event = accepted(inspector, event_bytes(**shape))
        assert event[reading] == pytest.approx(expected), shape
        assert not any(name.endswith("_unit") for name in event), event


def test_plain_readings_are_taken_in_the_canonical_unit(inspector: Inspector) -> None:
    event = accepted(inspector, event_bytes(temperature=21, level=0.42, cycles=12, energy=3))
    assert event["temperature"] == 21.0 and type(event["temperature"]) is float
    # A bare 0.42 is 0.42 %, not 42 %: ratios must say so (docs/events.md).
    assert event["level"] == 0.42
    assert event["cycles"] == 12 and type(event["cycles"]) is int


def test_units_are_case_insensitive(inspector: Inspector) -> None:
    raw = event_bytes(energy=5, energy_unit="KWH", power={"value": 2, "unit": "Kw"})
    event = accepted(inspector, raw)
    assert (event["energy"], event["power"]) == (5.0, 2000.0)


def test_field_names_are_case_sensitive(inspector: Inspector) -> None:
    event = accepted(inspector, event_bytes(Temperature_F=70))
    assert event["Temperature_F"] == 70 and "temperature" not in event


def test_whole_float_count_becomes_an_int(inspector: Inspector) -> None:
    assert accepted(inspector, event_bytes(cycles=7.0))["cycles"] == 7


def test_extra_fields_pass_through_and_registry_fields_are_added(inspector: Inspector) -> None:
    event = accepted(
        inspector,
        event_bytes(device_id="d2", fw="1.2.3", tags=["a", {"b": 1}], temperature_setpoint=40),
    )
    assert event == {
        "id": "e1",
        "ts": NOW - 10,
        "device_id": "d2",
        "kind": "telemetry",
        "fw": "1.2.3",
        "tags": ["a", {"b": 1}],
        "temperature_setpoint": 40,
        "customer_id": "c1",
        "device_type": "vehicle",
    }


def test_a_device_cannot_claim_another_customer(inspector: Inspector) -> None:
    event = accepted(inspector, event_bytes(customer_id="c-other", device_type="bank"))
    assert (event["customer_id"], event["device_type"]) == ("c1", "washer")


def test_text_readings(inspector: Inspector) -> None:
    event = accepted(inspector, event_bytes(kind="error", error_code="E42"))
    assert event["error_code"] == "E42"
    assert accepted(inspector, event_bytes(kind="status", state="reboot"))["state"] == "reboot"
    assert rejected(inspector, event_bytes(kind="status", state="asleep")) == Rejection(
        "value", "field 'state' must be one of fault, offline, online, reboot, got 'asleep'"
    )
    assert rejected(inspector, event_bytes(kind="error", error_code=42)) == Rejection(
        "schema", "field 'error_code' must be a string, got integer 42"
    )


@pytest.mark.parametrize(
    ("ts", "seconds"),
    [
        (NOW - 60, NOW - 60),
        (int(NOW), NOW),
        (int(NOW * 1000) - 1500, NOW - 1.5),
        ("2025-11-21T04:40:00Z", NOW),
        ("2025-11-21t04:40:00z", NOW),
        ("2025-11-21T05:40:00.250+01:00", NOW + 0.25),
        ("2025-11-21 04:39:00Z", NOW - 60),
    ],
)
def test_timestamp_forms(inspector: Inspector, ts: Any, seconds: float) -> None:
    event = accepted(inspector, event_bytes(ts=ts))
    assert event["ts"] == pytest.approx(seconds) and type(event["ts"]) is float


def test_future_skew_boundary(inspector: Inspector) -> None:
    assert accepted(inspector, event_bytes(ts=NOW + 300))["ts"] == NOW + 300
    ahead = datetime(2030, 1, 1, tzinfo=UTC).timestamp() - NOW
    assert rejected(inspector, event_bytes(ts="2030-01-01T00:00:00Z")) == Rejection(
        "future", f"ts 2030-01-01T00:00:00Z is {ahead:.0f} s in the future (allowed: 300 s)"
    )
    assert rejected(inspector, event_bytes(ts=NOW + 300.5)).reason_code == "future"


def test_unregistered_device(inspector: Inspector) -> None:
    assert rejected(inspector, event_bytes(device_id="d9")) == Rejection(
        "unregistered", "device 'd9' is not in the registry (iot.registry)"
    )


def test_a_device_topic_must_carry_its_own_device(inspector: Inspector) -> None:
    own = SourcePosition("iot.device.d1", 0, 0)
    assert isinstance(inspector.inspect(event_bytes(), own), Accepted)
    assert rejected(inspector, event_bytes(device_id="d2"), own) == Rejection(
        "schema", "device_id 'd2' does not match its topic iot.device.d1"
    )
    unchecked = Inspector(
        QualityOptions(), inspector.registry, clock=lambda: NOW, device_topic_prefix=None
    )
    assert isinstance(unchecked.inspect(event_bytes(device_id="d2"), own), Accepted)


def test_a_reading_given_twice_is_refused(inspector: Inspector) -> None:
    assert rejected(inspector, event_bytes(temperature=20, temperature_f=68)) == Rejection(
        "schema", "reading 'temperature' is given more than once: temperature, temperature_f"
    )


def test_conflicting_units_are_refused_and_agreeing_ones_accepted(inspector: Inspector) -> None:
    assert rejected(inspector, event_bytes(temperature_f=68, temperature_unit="K")) == Rejection(
        "unit", "reading 'temperature' has conflicting units 'f' and 'K'"
    )
    raw = event_bytes(temperature={"value": 68, "unit": "F"}, temperature_unit="degF")
    assert accepted(inspector, raw)["temperature"] == pytest.approx(20.0)


def test_a_unit_field_without_its_reading_is_dropped(inspector: Inspector) -> None:
    assert "temperature_unit" not in accepted(inspector, event_bytes(temperature_unit="F"))


def test_inspect_many_matches_inspect(inspector: Inspector) -> None:
    batch = [(event_bytes(id=f"e{i}", temperature_f=50 + i), SHARED) for i in range(3)] + [
        (b"[]", SHARED),
        (event_bytes(device_id="d9"), SHARED),
    ]
    assert inspector.inspect_many(batch) == [inspector.inspect(raw, src) for raw, src in batch]


def test_payload_limit_is_configurable(registry: DeviceRegistry) -> None:
    raw = event_bytes(note="x" * 200)
    small = Inspector(QualityOptions(max_payload_bytes=len(raw) - 1), registry, clock=lambda: NOW)
    assert small.inspect(raw, SHARED) == Rejection(
        "decode", f"payload is {len(raw)} bytes, over the {len(raw) - 1}-byte limit"
    )
    exact = Inspector(QualityOptions(max_payload_bytes=len(raw)), registry, clock=lambda: NOW)
    assert isinstance(exact.inspect(raw, SHARED), Accepted)


def test_settings_from_the_config_are_honoured(registry: DeviceRegistry) -> None:
    inspector = Inspector(QualitySettings(max_future_skew_s=5.0), registry, clock=lambda: NOW)
    assert inspector.inspect(event_bytes(ts=NOW + 6), SHARED).reason_code == "future"
    assert isinstance(inspector.inspect(event_bytes(ts=NOW + 4), SHARED), Accepted)


def test_the_clock_is_read_per_call(registry: DeviceRegistry) -> None:
    now = [NOW]
    inspector = Inspector(QualityOptions(), registry, clock=lambda: now[0])
    raw = event_bytes(ts=NOW + 1000)
    assert inspector.inspect(raw, SHARED).reason_code == "future"
    now[0] = NOW + 800
    assert isinstance(inspector.inspect(raw, SHARED), Accepted)


def test_required_fields_are_reported_in_order(inspector: Inspector) -> None:
    raw = event_bytes(ts=DROP, kind=DROP)
    assert rejected(inspector, raw) == Rejection("schema", "missing required field 'ts'")
