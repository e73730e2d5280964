"""Seeded fuzzing: whatever arrives, ``inspect`` answers and never raises,
and whatever it accepts keeps the contract."""

from __future__ import annotations

import math
import random
from typing import Any, get_args

import msgspec
import pytest

from engine.events import DeadLetter
from engine.quality import (
    Accepted,
    Inspector,
    ReasonCode,
    Rejection,
    deadletter_value,
    original_bytes,
)
from engine.quality.readings import FIELDS, READINGS, TEXT_READINGS, UNIT_FIELDS

from .helpers import NOW, SHARED, event_bytes

NAMES = [*FIELDS, *UNIT_FIELDS, *TEXT_READINGS, "id", "ts", "device_id", "kind", "extra"]
UNITS = sorted({unit for reading in READINGS for unit in reading.units} | {"X", "", "°"})
READING_BY_NAME = {reading.name: reading for reading in READINGS}
INSPECTOR_CODES = set(get_args(ReasonCode)) - {"late", "internal"}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12 if depth < 12 else 8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.randint(-(10**20), 10**20) if rng.random() < 0.2 else rng.randint(-5, 2000)
    if choice == 3:
        return rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-3, 12)
    if choice == 4:
        return rng.choice(UNITS)
    if choice == 5:
        return rng.choice(["telemetry", "error", "d1", "d9", "2025-11-21T04:40:00Z", "é\u2028"])
    if choice in (6, 7):
        return {"value": random_value(rng, depth + 1), "unit": rng.choice(UNITS)}
    if choice in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(NAMES): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def mutate_fields(rng: random.Random) -> bytes:
    fields: dict[str, Any] = msgspec.json.decode(
        event_bytes(temperature_f=70.7, level={"value": 0.4, "unit": "ratio"}, cycles=3)
    )
    for _ in range(rng.randrange(1, 5)):
        action = rng.randrange(3)
        if action == 0 and fields:
            del fields[rng.choice(list(fields))]
        else:
            fields[rng.choice(NAMES)] = random_value(rng)
    return msgspec.json.encode(fields)


def mutate_bytes(rng: random.Random) -> bytes:
    data = bytearray(event_bytes(temperature=21.5, energy_wh=1200, fw="1.2"))
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(data) + 1)
        action = rng.randrange(5)
        if action == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif action == 1:
            del data[at:]
        elif action == 2:
            data[at:at] = rng.choice(
                [b"NaN", b"-Infinity", b"1e999", b"\xff", b"{", b"]", b",", b'"', b"\\u"]
            )
        elif action == 3:
            del data[at : at + rng.randrange(1, 8)]
        else:
            data[at:at] = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


def check_accepted(event: dict[str, Any]) -> None:
    assert type(event["id"]) is str and 0 < len(event["id"]) <= 128
    assert type(event["ts"]) is float and math.isfinite(event["ts"])
    assert 0 <= event["ts"] <= NOW + 300
    assert event["customer_id"] in ("c1", "c2")
    for name, value in event.items():
        reading = READING_BY_NAME.get(name)
        if reading is not None:
            assert type(value) is (int if reading.whole else float), (name, value)
            assert reading.low <= value <= reading.high, (name, value)
        assert name not in UNIT_FIELDS
        assert name not in FIELDS or FIELDS[name][1] is None, name  # suffixed names are renamed


@pytest.mark.parametrize(
    ("generator", "cases"),
    [(mutate_fields, 8000), (mutate_bytes, 8000), (random_bytes, 3000)],
)
def test_inspect_never_raises_and_accepts_only_valid_events(
    inspector: Inspector, generator: Any, cases: int
) -> None:
    rng = random.Random(f"iotcrm-{generator.__name__}")
    outcomes: dict[str, int] = {}
    for _ in range(cases):
        raw = generator(rng)
        result = inspector.inspect(raw, SHARED)
        if isinstance(result, Accepted):
            check_accepted(result.event)
            outcomes["accepted"] = outcomes.get("accepted", 0) + 1
            continue
        assert isinstance(result, Rejection), result
        assert result.reason_code in INSPECTOR_CODES, (raw, result)
        assert result.reason
        outcomes[result.reason_code] = outcomes.get(result.reason_code, 0) + 1
        envelope = msgspec.json.decode(deadletter_value(raw, result, SHARED, NOW))
        assert original_bytes(msgspec.convert(envelope, type=DeadLetter)) == raw
    # The generators must reach past the decoder, or they test nothing.
    if generator is not random_bytes:
        assert outcomes.get("accepted", 0) > cases // 50, outcomes
        assert len(outcomes) >= 4, outcomes
