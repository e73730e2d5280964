"""The simulated fleet: customers, their devices, and how each device speaks.

Everything here is a pure function of the seed, so a fleet can be rebuilt
anywhere (the publisher, the scorer, a test) and is the same fleet.

>>> fleet = build_fleet(customers=3, devices_per_customer=2, seed=7, start_ts=1_700_000_000)
>>> [d.device_type for d in fleet.devices]
['washer', 'vehicle', 'wearable', 'compressor', 'washer', 'vehicle']
>>> fleet.devices[0].registry_record()["customer_id"]
'c-0001'
>>> sorted(fleet.customers[0].profile()["consent"])
['marketing', 'service']
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEVICE_TYPES: tuple[str, ...] = ("washer", "vehicle", "wearable", "compressor")

#: The canonical readings each device type reports in its telemetry.
TYPE_READINGS: dict[str, tuple[str, ...]] = {
    "washer": ("temperature", "vibration", "power", "energy", "level"),
    "vehicle": ("temperature", "distance", "battery"),
    "wearable": ("battery", "usage_min"),
    "compressor": ("temperature", "vibration", "power", "energy"),
}

MODELS: dict[str, tuple[str, ...]] = {
    "washer": ("WX-200", "WX-350"),
    "vehicle": ("EV-3", "TRK-9"),
    "wearable": ("FIT-2", "FIT-5"),
    "compressor": ("CMP-11", "CMP-40"),
}

TIERS: tuple[tuple[str, float], ...] = (
    ("bronze", 0.5),
    ("silver", 0.3),
    ("gold", 0.15),
    ("platinum", 0.05),
)
SEGMENTS: tuple[str, ...] = ("family", "single", "senior", "small-business")
#: Region and its offset from UTC in hours (drives the daily rhythm).
REGIONS: tuple[tuple[str, int], ...] = (("EU", 1), ("UK", 0), ("US", -5), ("APAC", 8))

#: Relative activity per local hour: quiet nights, a morning bump, busy evenings.
HOME_ACTIVITY: tuple[float, ...] = (
    0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.4, 0.8, 0.9, 0.7, 0.6, 0.6,
    0.7, 0.6, 0.5, 0.5, 0.7, 1.0, 1.4, 1.7, 1.8, 1.5, 0.9, 0.4,
)  # fmt: skip
#: Driving: commute peaks and some evening trips.
DRIVING_ACTIVITY: tuple[float, ...] = (
    0.02, 0.01, 0.01, 0.01, 0.02, 0.1, 0.5, 1.5, 1.4, 0.5, 0.4, 0.5,
    0.6, 0.5, 0.4, 0.5, 0.9, 1.5, 1.4, 0.8, 0.6, 0.4, 0.2, 0.05,
)  # fmt: skip
#: Compressors run a day shift and idle at night.
SHIFT_LOAD: tuple[float, ...] = (
    0.2, 0.2, 0.2, 0.2, 0.2, 0.3, 0.7, 0.85, 0.9, 0.9, 0.9, 0.85,
    0.8, 0.9, 0.9, 0.9, 0.85, 0.7, 0.5, 0.3, 0.25, 0.2, 0.2, 0.2,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Shape:
    """How one device writes one reading on the wire (see docs/events.md).

    ``kind`` is ``plain`` (canonical unit, no unit field), ``sibling`` (a
    ``<name>_unit`` field), ``object`` (``{"value", "unit"}``) or ``suffix``
    (the unit in the field name). The wire value is ``canonical * factor + offset``.
    """

    kind: str
    unit: str = ""
    factor: float = 1.0
    offset: float = 0.0

    def wire_value(self, canonical: float) -> float:
        return round(canonical * self.factor + self.offset, 6)


_PLAIN = Shape("plain")
_KM_PER_MI = 1.609344

#: The shapes a device may use per reading; the first one is the canonical form.
READING_SHAPES: dict[str, tuple[Shape, ...]] = {
    "temperature": (
        _PLAIN,
        Shape("sibling", "F", 1.8, 32.0),
        Shape("object", "K", 1.0, 273.15),
        Shape("suffix", "f", 1.8, 32.0),
        Shape("sibling", "C"),
    ),
    "vibration": (_PLAIN, Shape("object", "m/s2", 9.80665), Shape("sibling", "g")),
    "energy": (
        _PLAIN,
        Shape("suffix", "wh", 1000.0),
        Shape("object", "Wh", 1000.0),
        Shape("sibling", "MJ", 3.6),
    ),
    "power": (_PLAIN, Shape("sibling", "kW", 0.001), Shape("object", "W")),
    "distance": (_PLAIN, Shape("sibling", "mi", 1 / _KM_PER_MI), Shape("object", "m", 1000.0)),
    "level": (_PLAIN, Shape("sibling", "ratio", 0.01), Shape("object", "percent")),
    "battery": (_PLAIN, Shape("sibling", "ratio", 0.01), Shape("object", "%")),
    "usage_min": (_PLAIN, Shape("sibling", "s", 60.0), Shape("object", "h", 1 / 60)),
}

#: Out-of-range canonical values, for malformed events (docs/events.md ranges).
OUT_OF_RANGE: dict[str, float] = {
    "temperature": 950.0,
    "vibration": 75.0,
    "energy": 5e6,
    "power": 5e6,
    "distance": 2e7,
    "level": 180.0,
    "battery": 150.0,
    "usage_min": 2000.0,
}

Renderer = Callable[[dict[str, Any], float], None]


def reading_renderer(name: str, shape: Shape) -> Renderer:
    """A function that writes canonical ``value`` of reading ``name`` into an
    event in ``shape``.

    >>> event = {}
    >>> reading_renderer("temperature", Shape("sibling", "F", 1.8, 32.0))(event, 21.5)
    >>> event
    {'temperature': 70.7, 'temperature_unit': 'F'}
    """
    factor, offset, unit = shape.factor, shape.offset, shape.unit
    if shape.kind == "plain":

        def plain(event: dict[str, Any], value: float) -> None:
            event[name] = value

        return plain
    if shape.kind == "sibling":
        unit_field = name + "_unit"

        def sibling(event: dict[str, Any], value: float) -> None:
            event[name] = round(value * factor + offset, 6)
            event[unit_field] = unit

        return sibling
    if shape.kind == "object":

        def as_object(event: dict[str, Any], value: float) -> None:
            event[name] = {"value": round(value * factor + offset, 6), "unit": unit}

        return as_object
    if shape.kind == "suffix":
        suffixed = f"{name}_{unit}"

        def suffix(event: dict[str, Any], value: float) -> None:
            event[suffixed] = round(value * factor + offset, 6)

        return suffix
    raise ValueError(f"unknown reading shape {shape.kind!r}")


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    tier: str
    segment: str
    region: str
    utc_offset_h: int
    marketing_consent: bool
    service_consent: bool
    #: Minutes a day the customer wears their wearable(s) when engaged.
    daily_usage_min: float
    devices: tuple[str, ...] = ()

    def profile(self) -> dict[str, Any]:
        """The ``crm.customers`` record (docs/events.md)."""
        return {
            "customer_id": self.customer_id,
            "tier": self.tier,
            "segment": self.segment,
            "region": self.region,
            "consent": {"marketing": self.marketing_consent, "service": self.service_consent},
        }

    def has_consent(self, purpose: str | None) -> bool:
        if purpose is None:
            return True
        return self.marketing_consent if purpose == "marketing" else self.service_consent


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    customer_id: str
    device_type: str
    model: str
    registered_at: int
    #: Position in the fleet; breaks event-time ties in the merged stream.
    index: int
    #: Reading name -> how this device writes it.
    shapes: dict[str, Shape] = field(default_factory=dict)
    #: Timestamps as RFC 3339 strings instead of epoch seconds.
    rfc3339_ts: bool = False

    def registry_record(self) -> dict[str, Any]:
        """The ``iot.registry`` record (docs/events.md)."""
        return {
            "device_id": self.device_id,
            "customer_id": self.customer_id,
            "device_type": self.device_type,
            "model": self.model,
            "registered_at": self.registered_at,
        }


@dataclass(frozen=True)
class Fleet:
    customers: tuple[Customer, ...]
    devices: tuple[Device, ...]
    _by_id: dict[str, Customer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {c.customer_id: c for c in self.customers})

    def customer(self, customer_id: str) -> Customer:
        return self._by_id[customer_id]


def _weighted(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    names = [name for name, _ in choices]
    weights = [weight for _, weight in choices]
    return rng.choices(names, weights)[0]


def _pick_shapes(rng: random.Random, device_type: str) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for reading in TYPE_READINGS[device_type]:
        options = READING_SHAPES[reading]
        # About 40% of devices speak canonical units; the rest spread over the others.
        shapes[reading] = options[0] if rng.random() < 0.4 else rng.choice(options[1:])
    return shapes


def build_fleet(
    *,
    customers: int,
    devices_per_customer: int,
    seed: int,
    start_ts: float,
    device_types: Sequence[str] = DEVICE_TYPES,
    marketing_consent_share: float = 0.8,
    service_consent_share: float = 1.0,
    rfc3339_share: float = 0.15,
) -> Fleet:
    """``customers`` x ``devices_per_customer`` devices; device types rotate
    through ``device_types`` so every type is equally represented."""
    unknown = set(device_types) - set(DEVICE_TYPES)
    if unknown:
        raise ValueError(f"unknown device types: {sorted(unknown)}")
    rng = random.Random(f"{seed}/fleet")
    cust_width = max(4, len(str(customers)))
    dev_width = max(5, len(str(customers * devices_per_customer)))
    fleet_customers: list[Customer] = []
    fleet_devices: list[Device] = []
    for c in range(customers):
        customer_id = f"c-{c + 1:0{cust_width}d}"
        region, offset = rng.choice(REGIONS)
        owned: list[str] = []
        for _ in range(devices_per_customer):
            index = len(fleet_devices)
            device_type = device_types[index % len(device_types)]
            device_id = f"d-{index + 1:0{dev_width}d}"
            owned.append(device_id)
            fleet_devices.append(
                Device(
                    device_id=device_id,
                    customer_id=customer_id,
                    device_type=device_type,
                    model=rng.choice(MODELS[device_type]),
                    registered_at=int(start_ts - rng.uniform(86400, 365 * 86400)),
                    index=index,
                    shapes=_pick_shapes(rng, device_type),
                    rfc3339_ts=rng.random() < rfc3339_share,
                )
            )
        fleet_customers.append(
            Customer(
                customer_id=customer_id,
                tier=_weighted(rng, TIERS),
                segment=rng.choice(SEGMENTS),
                region=region,
                utc_offset_h=offset,
                marketing_consent=rng.random() < marketing_consent_share,
                service_consent=rng.random() < service_consent_share,
                daily_usage_min=round(rng.uniform(60.0, 300.0), 1),
                devices=tuple(owned),
            )
        )
    return Fleet(customers=tuple(fleet_customers), devices=tuple(fleet_devices))
