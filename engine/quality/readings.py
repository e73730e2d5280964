"""Readings: canonical names, units, conversions and physical ranges.

``READINGS`` is the table of docs/events.md; a new reading is one line. Each
unit spelling maps to a factor, or to ``(factor, offset)`` for scales with
another zero (canonical = value × factor + offset). Spellings match
case-insensitively; each one also makes a suffixed field name from the
reading's base name (``temperature_f``, ``energy_wh``, ``vibration_ms2``).

>>> reading, unit = FIELDS["temperature_f"]
>>> reading.name, unit
('temperature', 'f')
>>> round(reading.canonical("temperature_f", 212, unit, None), 6)
100.0
>>> FIELDS["energy"][0].canonical("energy", {"value": 1200, "unit": "Wh"}, None, None)
1.2
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from engine.quality.verdicts import RejectedInput, describe, preview

Conversion = float | tuple[float, float]

_PERCENT: dict[str, Conversion] = {"%|percent|pct": 1.0, "ratio": 100.0}


class Reading:
    """One numeric reading: its canonical name and unit, the units it may
    arrive in, and the range a real device can report."""

    __slots__ = (
        "base",
        "high",
        "label",
        "low",
        "name",
        "spellings",
        "unit_field",
        "units",
        "whole",
    )

    def __init__(
        self,
        name: str,
        label: str,
        low: float,
        high: float,
        units: Mapping[str, Conversion],
        *,
        base: str | None = None,
        whole: bool = False,
    ) -> None:
        self.name = name
        self.label = label
        self.low = float(low)
        self.high = float(high)
        self.base = base or name
        self.whole = whole
        self.unit_field = f"{name}_unit"
        #: lower-cased spelling -> (factor, offset)
        self.units: dict[str, tuple[float, float]] = {}
        #: the spellings as written in the table, for messages
        self.spellings: list[str] = []
        for spellings, conversion in units.items():
            factor, offset = conversion if isinstance(conversion, tuple) else (conversion, 0.0)
            for spelling in spellings.split("|"):
                self.units[spelling.lower()] = (float(factor), float(offset))
                self.spellings.append(spelling)

    def canonical(
        self, field: str, value: Any, name_unit: str | None, sibling_unit: Any
    ) -> float | int:
        """``value`` (a number or a ``{value, unit}`` object, from ``field``)
        in the canonical unit, or ``RejectedInput`` saying what is wrong.

        ``name_unit`` is the unit implied by a suffixed field name,
        ``sibling_unit`` the value of a ``<name>_unit`` field (or None).
        """
        kind = type(value)
        if (
            (kind is float or kind is int)
            and name_unit is None
            and sibling_unit is None
            and self.low <= value <= self.high
        ):
            # the common case: a number in the canonical unit, in range
            if not self.whole:
                return float(value)
            if kind is int or value.is_integer():
                return int(value)
        unit = name_unit
        if type(value) is dict:
            size = len(value)
            if size == 2 and "value" in value and "unit" in value:
                unit = self._merge_units(unit, value["unit"], f"{field}.unit")
            elif size != 1 or "value" not in value:
                raise self._bad_object(field, value)
            value = value["value"]
        if sibling_unit is not None:
            unit = self._merge_units(unit, sibling_unit, self.unit_field)
        kind = type(value)
        if kind is not float and kind is not int:
            raise RejectedInput(
                "schema",
                f"reading '{field}' must be a number, got {describe(value)}",
            )
        if unit is None:
            converted = value
        else:
            factor, offset = self._conversion(unit)
            try:
                converted = value * factor + offset
            except OverflowError:
                converted = math.inf
        if not self.low <= converted <= self.high:
            raise RejectedInput("value", self._out_of_range(converted, value, unit))
        if not self.whole:
            return float(converted)
        if type(converted) is float and not converted.is_integer():
            raise RejectedInput(
                "value", f"reading '{self.name}' must be a whole number, got {preview(value)}"
            )
        return int(converted)

    def _bad_object(self, field: str, obj: dict[str, Any]) -> RejectedInput:
        if "value" not in obj:
            return RejectedInput("schema", f"reading '{field}' as an object has no 'value'")
        unexpected = [key for key in obj if key not in ("value", "unit")]
        return RejectedInput(
            "schema",
            f"reading '{field}' as an object may only have 'value' and 'unit', "
            f"got {preview(unexpected)}",
        )

    def _merge_units(self, unit: str | None, given: Any, where: str) -> str:
        if type(given) is not str:
            raise RejectedInput("schema", f"'{where}' must be a unit name, got {describe(given)}")
        if unit is None:
            return given
        conversion = self._conversion(given)
        if conversion != self._conversion(unit):
            raise RejectedInput(
                "unit",
                f"reading '{self.name}' has conflicting units {preview(unit)} and {preview(given)}",
            )
        return unit

    def _conversion(self, unit: str) -> tuple[float, float]:
        conversion = self.units.get(unit.lower())
        if conversion is None:
            accepted = ", ".join(self.spellings) if self.spellings else "none, it is a plain count"
            raise RejectedInput(
                "unit", f"unknown unit {preview(unit)} for '{self.name}' (accepted: {accepted})"
            )
        return conversion

    def _out_of_range(self, converted: float, value: float, unit: str | None) -> str:
        shown = f"{_number(converted)} {self.label}".rstrip()
        if unit is not None and converted != value:
            shown += f" (from {_number(value)} {unit})"
        return (
            f"reading '{self.name}' = {shown} is outside the physical range "
            f"{_bound(self.low)}..{_bound(self.high)}"
        )


def _bound(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _number(value: float) -> str:
    """A number for a reason text: ``5000.0``, ``-0.001``, ``1000000``, ``inf``."""
    if type(value) is int:
        return preview(value)
    if math.isfinite(value) and value.is_integer() and abs(value) >= 1e6:
        return str(int(value))
    return repr(round(value, 6))


#: The readings of docs/events.md. One line per reading.
READINGS: tuple[Reading, ...] = (
    Reading(
        "temperature",
        "°C",
        -90,
        400,
        {
            "C|°C|celsius|degC": 1.0,
            "F|°F|fahrenheit|degF": (5 / 9, -160 / 9),
            "K|kelvin": (1.0, -273.15),
        },
    ),
    Reading("vibration", "g", 0, 50, {"g": 1.0, "m/s2|m/s^2|mps2": 1 / 9.80665}),
    Reading(
        "energy",
        "kWh",
        0,
        1e6,
        {"kWh": 1.0, "Wh": 1e-3, "MJ": 1 / 3.6, "kJ": 1 / 3600, "J": 1 / 3.6e6},
    ),
    Reading("power", "W", 0, 1e6, {"W": 1.0, "kW": 1e3}),
    Reading("distance", "km", 0, 1e7, {"km": 1.0, "m": 1e-3, "mi": 1.609344}),
    Reading("level", "%", 0, 100, _PERCENT),
    Reading("battery", "%", 0, 100, _PERCENT),
    Reading("humidity", "%", 0, 100, _PERCENT),
    Reading("usage_min", "min", 0, 1440, {"min": 1.0, "s": 1 / 60, "h": 60.0}, base="usage"),
    Reading("cycles", "", 0, 1e9, {}, whole=True),
)

#: Text readings and, where the set is closed, their allowed values.
TEXT_READINGS: dict[str, frozenset[str] | None] = {
    "error_code": None,
    "state": frozenset({"online", "offline", "reboot", "fault"}),
}


def _field_index(readings: tuple[Reading, ...]) -> dict[str, tuple[Reading, str | None]]:
    """Every field name that carries a reading -> (reading, unit the name implies)."""
    index: dict[str, tuple[Reading, str | None]] = {r.name: (r, None) for r in readings}
    for reading in readings:
        for spelling in reading.units:
            suffix = re.sub(r"[^a-z0-9]", "", spelling)
            name = f"{reading.base}_{suffix}"
            if not suffix or name == reading.name:
                continue
            taken = index.get(name)
            if taken is not None and (
                taken[0] is not reading or reading.units[str(taken[1])] != reading.units[spelling]
            ):
                raise ValueError(f"field name {name!r} would mean two readings")
            index.setdefault(name, (reading, spelling))
    clash = index.keys() & ({f"{r.name}_unit" for r in readings} | TEXT_READINGS.keys())
    if clash:
        raise ValueError(f"field names {sorted(clash)} are ambiguous")
    return index


#: Field name -> (reading, unit spelling implied by the name, or None).
FIELDS: dict[str, tuple[Reading, str | None]] = _field_index(READINGS)

#: ``<name>_unit`` field -> its reading.
UNIT_FIELDS: dict[str, Reading] = {r.unit_field: r for r in READINGS}
