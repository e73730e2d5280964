"""Benchmark of the data-quality door: microseconds per event.

Run: ``.venv/bin/python -m loadtest.bench_quality [--events N] [--repeat R]``

It builds a seeded fleet of washers, vehicles, wearables and compressors
whose events carry their readings in every shape of docs/events.md (plain,
``<name>_unit``, ``{value, unit}``, suffixed names; epoch seconds, epoch
milliseconds and RFC 3339 times), then times, best of R runs:

- the bare untyped msgspec decode (the floor),
- ``Inspector.inspect`` one event at a time and ``inspect_many`` per batch,
- ``inspect`` on a stream where one event in ten is bad,
- ``StreamHygiene.admit`` on the accepted events.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.quality import (
    Accepted,
    DeviceRegistry,
    HygieneState,
    Inspector,
    QualityOptions,
    SourcePosition,
    StreamHygiene,
)

NOW = 1763700000.0
DEVICE_TYPES = ("washer", "vehicle", "wearable", "compressor")


def _temperature(rng: random.Random, celsius: float) -> dict[str, Any]:
    shape = rng.randrange(4)
    if shape == 0:
        return {"temperature": round(celsius, 2)}
    if shape == 1:
        return {"temperature": round(celsius * 9 / 5 + 32, 2), "temperature_unit": "F"}
    if shape == 2:
        return {"temperature": {"value": round(celsius + 273.15, 2), "unit": "K"}}
    return {"temperature_f": round(celsius * 9 / 5 + 32, 2)}


def _energy(rng: random.Random, kwh: float) -> dict[str, Any]:
    return rng.choice(
        [
            {"energy": round(kwh, 4)},
            {"energy_wh": round(kwh * 1000, 1)},
            {"energy": {"value": round(kwh * 3.6, 4), "unit": "MJ"}},
        ]
    )


def _readings(rng: random.Random, device_type: str) -> dict[str, Any]:
    if device_type == "washer":
        level = rng.uniform(0, 100)
        return {
            **_temperature(rng, rng.uniform(20, 90)),
            "vibration": round(rng.uniform(0, 2), 3),
            **rng.choice([{"level": round(level, 1)}, {"level_ratio": round(level / 100, 3)}]),
            "cycles": rng.randrange(5000),
            **_energy(rng, rng.uniform(0, 3)),
        }
    if device_type == "vehicle":
        return {
            **_temperature(rng, rng.uniform(60, 110)),
            **rng.choice([{"distance": rng.uniform(0, 9e4)}, {"distance_mi": rng.uniform(0, 5e4)}]),
            "battery": round(rng.uniform(10, 100), 1),
        }
    if device_type == "wearable":
        return {
            **rng.choice([{"usage_min": rng.randrange(240)}, {"usage_s": rng.randrange(14400)}]),
            "battery": {"value": round(rng.random(), 2), "unit": "ratio"},
        }
    return {
        **rng.choice(
            [
                {"vibration": round(rng.uniform(0, 5), 3)},
                {"vibration": round(rng.uniform(0, 40), 2), "vibration_unit": "m/s2"},
            ]
        ),
        **_temperature(rng, rng.uniform(30, 120)),
        **rng.choice([{"power": rng.uniform(0, 5000)}, {"power_kw": rng.uniform(0, 5)}]),
        **_energy(rng, rng.uniform(0, 50)),
    }


def _timestamp(rng: random.Random, ts: float) -> Any:
    shape = rng.randrange(3)
    if shape == 0:
        return round(ts, 3)
    if shape == 1:
        return int(ts * 1000)
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_fleet(devices: int, rng: random.Random) -> DeviceRegistry:
    registry = DeviceRegistry()
    for n in range(devices):
        record = {
            "device_id": f"d-{n:05d}",
            "customer_id": f"c-{n // 3:05d}",
            "device_type": DEVICE_TYPES[n % len(DEVICE_TYPES)],
            "model": "M-1",
            "registered_at": NOW - rng.uniform(0, 3e7),
        }
        registry.apply(record["device_id"], msgspec.json.encode(record))
    return registry


def build_events(count: int, devices: int, rng: random.Random) -> list[bytes]:
    events = []
    for i in range(count):
        n = rng.randrange(devices)
        device_type = DEVICE_TYPES[n % len(DEVICE_TYPES)]
        event = {
            "id": f"e-{i:08d}",
            "ts": _timestamp(rng, NOW - 600 + i * 0.01),
            "device_id": f"d-{n:05d}",
            "kind": "telemetry",
            **_readings(rng, device_type),
            "fw": "2.4.1",
        }
        events.append(msgspec.json.encode(event))
    return events


def spoil(events: list[bytes], rng: random.Random) -> list[bytes]:
    """One event in ten made bad in one of the ways the door refuses."""
    spoilers: list[Callable[[bytes], bytes]] = [
        lambda raw: raw[: len(raw) // 2],
        lambda raw: raw.replace(b'"kind":"telemetry"', b'"kind":"alarm"'),
        lambda raw: raw.replace(b'"device_id":"d-', b'"device_id":"x-'),
        lambda raw: raw.replace(b'"fw"', b'"battery":"full","fw"'),
        lambda raw: raw.replace(b'"fw"', b'"temperature_c":5000,"fw"'),
        lambda raw: raw.replace(b'"fw":"2.4.1"', b'"fw":NaN'),
    ]
    return [rng.choice(spoilers)(raw) if i % 10 == 0 else raw for i, raw in enumerate(events)]


def best_us(run: Callable[[], object], per: int, repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings) / per * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_quality")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    registry = build_fleet(args.devices, rng)
    events = build_events(args.events, args.devices, rng)
    mixed = spoil(events, rng)
    source = SourcePosition("iot.telemetry", 0, 0)
    inspector = Inspector(QualityOptions(), registry, clock=lambda: NOW)
    hygiene = StreamHygiene(QualityOptions(), clock=lambda: NOW)
    records = [(raw, source) for raw in events]
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]

    results = [inspector.inspect(raw, source) for raw in events]
    rejected = [r for r in results if not isinstance(r, Accepted)]
    if rejected:
        print(f"generator bug: {len(rejected)} valid events rejected, e.g. {rejected[0]}")
        return 1
    accepted = [r.event for r in results if isinstance(r, Accepted)]
    mixed_results = [inspector.inspect(raw, source) for raw in mixed]
    mixed_rejected = sum(not isinstance(r, Accepted) for r in mixed_results)

    decode = msgspec.json.Decoder().decode
    inspect = inspector.inspect

    def admit_all() -> None:
        states: dict[str, HygieneState] = {}
        for event in accepted:
            state = states.get(event["device_id"])
            if state is None:
                state = states[event["device_id"]] = HygieneState()
            hygiene.admit(state, event)

    cases: list[tuple[str, Callable[[], object], int]] = [
        ("msgspec.json decode (untyped, floor)", lambda: [decode(r) for r in events], len(events)),
        (
            "inspect, valid mixed-unit events",
            lambda: [inspect(r, source) for r in events],
            len(events),
        ),
        (
            "inspect_many, batches of 500",
            lambda: [inspector.inspect_many(b) for b in batches],
            len(events),
        ),
        (
            f"inspect, {mixed_rejected / len(mixed):.0%} bad events",
            lambda: [inspect(r, source) for r in mixed],
            len(mixed),
        ),
        ("StreamHygiene.admit", admit_all, len(accepted)),
    ]
    rows = [(name, best_us(run, per, args.repeat)) for name, run, per in cases]
    size = sum(map(len, events)) / len(events)
    print(
        f"bench_quality: {len(events)} events ({size:.0f} B average), {args.devices} devices, "
        f"best of {args.repeat}, Python {sys.version.split()[0]}, msgspec {msgspec.__version__}"
    )
    width = max(len(name) for name, _ in rows)
    for name, micros in rows:
        print(f"  {name:<{width}}  {micros:6.2f} µs/event  {1e6 / micros:>11,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
