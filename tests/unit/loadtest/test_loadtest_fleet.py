"""Fleet generation: customers, consent, device mix and reading shapes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from engine.quality.readings import FIELDS
from loadtest.fleet import (
    READING_SHAPES,
    TYPE_READINGS,
    Fleet,
    Shape,
    build_fleet,
    reading_renderer,
)


def _fleet(**overrides: Any) -> Fleet:
    options: dict[str, Any] = {
        "customers": 500,
        "devices_per_customer": 2,
        "seed": 5,
        "start_ts": 1_763_500_000.0,
    }
    options.update(overrides)
    return build_fleet(**options)


def test_the_same_seed_builds_the_same_fleet() -> None:
    assert _fleet() == _fleet()
    assert _fleet() != _fleet(seed=6)


def test_about_a_fifth_of_customers_lack_marketing_consent_and_all_give_service() -> None:
    fleet = _fleet()
    without = sum(1 for c in fleet.customers if not c.marketing_consent)
    assert 0.15 < without / len(fleet.customers) < 0.25
    assert all(c.service_consent for c in fleet.customers)


def test_device_types_are_evenly_represented_and_belong_to_their_customer() -> None:
    fleet = _fleet()
    counts = Counter(d.device_type for d in fleet.devices)
    assert set(counts.values()) == {250}
    for customer in fleet.customers:
        owned = [d for d in fleet.devices if d.customer_id == customer.customer_id]
        assert tuple(d.device_id for d in owned) == customer.devices


def test_registry_records_and_profiles_follow_the_contract() -> None:
    fleet = _fleet(customers=3)
    device = fleet.devices[0]
    assert set(device.registry_record()) == {
        "device_id",
        "customer_id",
        "device_type",
        "model",
        "registered_at",
    }
    assert device.registered_at < 1_763_500_000
    profile = fleet.customers[0].profile()
    assert set(profile) == {"customer_id", "tier", "segment", "region", "consent"}
    assert set(profile["consent"]) == {"marketing", "service"}


def test_every_reading_is_written_in_several_shapes_across_the_fleet() -> None:
    fleet = _fleet()
    for reading in {r for readings in TYPE_READINGS.values() for r in readings}:
        used = Counter(d.shapes[reading] for d in fleet.devices if reading in d.shapes)
        assert set(used) == set(READING_SHAPES[reading]), reading
        canonical_share = used[READING_SHAPES[reading][0]] / sum(used.values())
        assert 0.3 < canonical_share < 0.5, reading


def _canonical_from_wire(reading: str, event: dict[str, Any]) -> float:
    """Undo a shape without the simulator's help: the unit is in the event."""
    for key, value in event.items():
        if key == reading and isinstance(value, dict):
            return _undo(reading, value["value"], value["unit"])
        if key == reading:
            return _undo(reading, value, event.get(f"{reading}_unit"))
        if key.startswith(reading + "_") and key != f"{reading}_unit":
            return _undo(reading, value, key[len(reading) + 1 :])
    raise AssertionError(f"{reading} not in {event}")


_TO_CANONICAL = {
    ("temperature", "f"): lambda v: (v - 32) / 1.8,
    ("temperature", "k"): lambda v: v - 273.15,
    ("vibration", "m/s2"): lambda v: v / 9.80665,
    ("energy", "wh"): lambda v: v / 1000,
    ("energy", "mj"): lambda v: v / 3.6,
    ("power", "kw"): lambda v: v * 1000,
    ("distance", "mi"): lambda v: v * 1.609344,
    ("distance", "m"): lambda v: v / 1000,
    ("level", "ratio"): lambda v: v * 100,
    ("battery", "ratio"): lambda v: v * 100,
    ("usage_min", "s"): lambda v: v / 60,
    ("usage_min", "h"): lambda v: v * 60,
}


def _undo(reading: str, value: float, unit: str | None) -> float:
    convert = _TO_CANONICAL.get((reading, (unit or "").lower()))
    return convert(value) if convert else value


@pytest.mark.parametrize(
    ("reading", "shape"),
    [(reading, shape) for reading, shapes in READING_SHAPES.items() for shape in shapes],
)
def test_each_shape_round_trips_to_the_canonical_value(reading: str, shape: Shape) -> None:
    event: dict[str, Any] = {}
    reading_renderer(reading, shape)(event, 42.125)
    assert _canonical_from_wire(reading, event) == pytest.approx(42.125, abs=1e-4)


@pytest.mark.parametrize(
    ("reading", "shape"),
    [(reading, shape) for reading, shapes in READING_SHAPES.items() for shape in shapes],
)
def test_ingest_converts_every_shape_back_to_the_canonical_value(
    reading: str, shape: Shape
) -> None:
    event: dict[str, Any] = {}
    reading_renderer(reading, shape)(event, 42.125)
    (name,) = [key for key in event if key != f"{reading}_unit"]
    spec, name_unit = FIELDS[name]
    assert spec.name == reading
    value = spec.canonical(name, event[name], name_unit, event.get(spec.unit_field))
    assert value == pytest.approx(42.125, abs=1e-4)
