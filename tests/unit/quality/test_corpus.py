"""A corpus of bad inputs: each one is refused with a precise reason, and
nothing raises."""

from __future__ import annotations

import pytest

from engine.quality import Inspector, Rejection

from .helpers import DROP, NOW, SHARED, event_bytes

GOOD = event_bytes(temperature=21.5)

# (name, raw bytes, reason code, exact reason)
CORPUS: list[tuple[str, bytes, str, str]] = [
    ("empty", b"", "decode", "empty payload"),
    (
        "not json",
        b"hello",
        "decode",
        "not valid JSON: JSON is malformed: invalid character (byte 0)",
    ),
    ("truncated", GOOD[:30], "decode", "not valid JSON: Input data was truncated"),
    (
        "trailing junk",
        GOOD + b"}",
        "decode",
        "not valid JSON: JSON is malformed: trailing characters...",
    ),
    (
        "not utf-8 outside strings",
        b"\xff" + GOOD,
        "decode",
        "not valid UTF-8: byte 0xff at position 0",
    ),
    (
        "not utf-8 inside a string",
        event_bytes(id="e\u00e9").replace(b"\xc3\xa9", b"\xe9"),
        "decode",
        "not valid UTF-8: byte 0xe9 at position 8",
    ),
    ("array", b"[1, 2]", "decode", "expected a JSON object, got array"),
    ("null", b"null", "decode", "expected a JSON object, got null"),
    ("string", b'"event"', "decode", "expected a JSON object, got string"),
    ("number", b"42", "decode", "expected a JSON object, got integer"),
    ("empty object", b"{}", "schema", "missing required field 'id'"),
    ("missing ts", event_bytes(ts=DROP), "schema", "missing required field 'ts'"),
    ("missing kind", event_bytes(kind=DROP), "schema", "missing required field 'kind'"),
    (
        "numeric id",
        event_bytes(id=17),
        "schema",
        "field 'id' must be a string of 1 to 128 characters, got integer 17",
    ),
    (
        "empty id",
        event_bytes(id=""),
        "schema",
        "field 'id' must be a string of 1 to 128 characters, got string ''",
    ),
    (
        "null device",
        event_bytes(device_id=None),
        "schema",
        "field 'device_id' must be a string, got null",
    ),
    (
        "device id with a space",
        event_bytes(device_id="d 1"),
        "schema",
        "field 'device_id' must match [A-Za-z0-9._-]{1,128}, got 'd 1'",
    ),
    (
        "unknown kind",
        event_bytes(kind="alarm"),
        "schema",
        "field 'kind' must be one of consumable, error, status, telemetry, usage, got 'alarm'",
    ),
    (
        "kind as a list",
        event_bytes(kind=["telemetry"]),
        "schema",
        "field 'kind' must be one of consumable, error, status, telemetry, usage, "
        "got ['telemetry']",
    ),
    (
        "boolean ts",
        event_bytes(ts=True),
        "schema",
        "field 'ts' must be epoch seconds or an RFC 3339 string, got boolean true",
    ),
    (
        "junk ts",
        event_bytes(ts="yesterday"),
        "schema",
        "ts 'yesterday' is not an RFC 3339 timestamp",
    ),
    (
        "ts without offset",
        event_bytes(ts="2025-11-21T04:40:00"),
        "schema",
        "ts '2025-11-21T04:40:00' has no UTC offset (add 'Z' or '+hh:mm')",
    ),
    ("negative ts", event_bytes(ts=-5), "value", "ts -5 is before 1970-01-01"),
    (
        "ts in microseconds",
        event_bytes(ts=int(NOW * 1e6)),
        "value",
        f"ts {int(NOW * 1e6)} is not a plausible epoch time in seconds or milliseconds",
    ),
    (
        "far future",
        event_bytes(ts=NOW + 86400),
        "future",
        f"ts {NOW + 86400} is 86400 s in the future (allowed: 300 s)",
    ),
    (
        "NaN literal",
        GOOD.replace(b"21.5", b"NaN"),
        "value",
        f"NaN and Infinity are not allowed (byte {GOOD.index(b'21.5')})",
    ),
    (
        "Infinity literal",
        GOOD.replace(b"21.5", b"-Infinity"),
        "value",
        f"NaN and Infinity are not allowed (byte {GOOD.index(b'21.5')})",
    ),
    (
        "overflowing number",
        GOOD.replace(b"21.5", b"1e999"),
        "value",
        f"number 1e999 at byte {GOOD.index(b'21.5')} is too large to be finite",
    ),
    (
        "overflowing number in an extra",
        event_bytes(extra={"deep": [7]}).replace(b"[7]", b"[-1e400]"),
        "value",
        f"number -1e400 at byte {event_bytes(extra={'deep': [7]}).index(b'[7]') + 1} "
        "is too large to be finite",
    ),
    (
        "string reading",
        event_bytes(temperature="21.5"),
        "schema",
        "reading 'temperature' must be a number, got string '21.5'",
    ),
    (
        "boolean reading",
        event_bytes(battery=True),
        "schema",
        "reading 'battery' must be a number, got boolean true",
    ),
    (
        "null reading",
        event_bytes(vibration=None),
        "schema",
        "reading 'vibration' must be a number, got null",
    ),
    (
        "reading object without value",
        event_bytes(energy={"unit": "Wh"}),
        "schema",
        "reading 'energy' as an object has no 'value'",
    ),
    (
        "reading object with other keys",
        event_bytes(energy={"value": 1, "unit": "Wh", "quality": "good"}),
        "schema",
        "reading 'energy' as an object may only have 'value' and 'unit', got ['quality']",
    ),
    (
        "numeric unit",
        event_bytes(energy=1, energy_unit=1000),
        "schema",
        "'energy_unit' must be a unit name, got integer 1000",
    ),
    (
        "too hot",
        event_bytes(temperature=5000.0),
        "value",
        "reading 'temperature' = 5000.0 °C is outside the physical range -90..400",
    ),
    (
        "too hot after conversion",
        event_bytes(temperature_f=1000),
        "value",
        "reading 'temperature' = 537.777778 °C (from 1000 f) "
        "is outside the physical range -90..400",
    ),
    (
        "below absolute zero",
        event_bytes(temperature={"value": -5, "unit": "K"}),
        "value",
        "reading 'temperature' = -278.15 °C (from -5 K) is outside the physical range -90..400",
    ),
    (
        "negative energy",
        event_bytes(energy_wh=-1),
        "value",
        "reading 'energy' = -0.001 kWh (from -1 wh) is outside the physical range 0..1000000",
    ),
    (
        "ratio over one",
        event_bytes(level=1.5, level_unit="ratio"),
        "value",
        "reading 'level' = 150.0 % (from 1.5 ratio) is outside the physical range 0..100",
    ),
    (
        "a day and a half of use",
        event_bytes(usage_h=36),
        "value",
        "reading 'usage_min' = 2160.0 min (from 36 h) is outside the physical range 0..1440",
    ),
    (
        "huge integer reading",
        event_bytes(power=10**30),
        "value",
        f"reading 'power' = {10**30} W is outside the physical range 0..1000000",
    ),
    (
        "huge integer converted",
        event_bytes(power_kw=10**400),
        "value",
        "reading 'power' = inf W (from 1000000000000000000000000000000000000... kw) "
        "is outside the physical range 0..1000000",
    ),
    (
        "fractional count",
        event_bytes(cycles=12.5),
        "value",
        "reading 'cycles' must be a whole number, got 12.5",
    ),
    (
        "unknown unit",
        event_bytes(energy=5, energy_unit="X"),
        "unit",
        "unknown unit 'X' for 'energy' (accepted: kWh, Wh, MJ, kJ, J)",
    ),
    (
        "unit on a count",
        event_bytes(cycles={"value": 3, "unit": "dozen"}),
        "unit",
        "unknown unit 'dozen' for 'cycles' (accepted: none, it is a plain count)",
    ),
    (
        "unregistered device",
        event_bytes(device_id="d9"),
        "unregistered",
        "device 'd9' is not in the registry (iot.registry)",
    ),
    (
        "deeply nested junk",
        event_bytes(junk=[[[[[[[[[["x"]]]]]]]]]]),
        "schema",
        "field 'junk' is nested more than 8 levels deep",
    ),
    (
        "nesting beyond the decoder's limit",
        b'{"id": "e1", "junk": ' + b"[" * 1500 + b"]" * 1500 + b"}",
        "decode",
        "not valid JSON: nested too deeply to decode",
    ),
    (
        "huge payload",
        event_bytes(blob="x" * 5000),
        "decode",
        f"payload is {len(event_bytes(blob='x' * 5000))} bytes, over the 4096-byte limit",
    ),
]


@pytest.mark.parametrize(
    ("raw", "code", "reason"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_bad_input_is_refused_with_a_precise_reason(
    inspector: Inspector, raw: bytes, code: str, reason: str
) -> None:
    result = inspector.inspect(raw, SHARED)
    assert isinstance(result, Rejection) and result.reason_code == code, result
    if reason.endswith("..."):  # msgspec's own wording after a fixed prefix
        assert result.reason.startswith(reason[:-3]), result
    else:
        assert result.reason == reason


def test_the_corpus_covers_every_rejection_code_of_the_inspector() -> None:
    codes = {code for _, _, code, _ in CORPUS}
    assert codes == {"decode", "schema", "value", "unit", "future", "unregistered"}
