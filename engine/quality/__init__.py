"""Data quality at the door: plain Python, no Kafka or Faust import.

- ``Inspector``: raw event bytes -> ``Accepted(event)`` (decoded, validated,
  units normalised, enriched from the registry) or ``Rejection``.
- ``deadletter_value``: the JSON envelope for ``iot.deadletter`` / ``iot.late``.
- ``DeviceRegistry`` / ``CustomerProfiles``: views of the compacted topics.
- ``StreamHygiene``: per-device dedup, lateness and gap tracking on a
  device's ``HygieneState`` (typed plain fields), for the customer actor.

The contract is docs/events.md.
"""

from engine.events import DeviceInfo, SourcePosition
from engine.quality.deadletter import deadletter_value, original_bytes
from engine.quality.hygiene import Admission, HygieneState, StreamHygiene
from engine.quality.inspector import Inspector
from engine.quality.options import QualityOptions
from engine.quality.registry import CustomerProfiles, DeviceLookup, DeviceRegistry
from engine.quality.verdicts import Accepted, ReasonCode, Rejection

__all__ = [
    "Accepted",
    "Admission",
    "CustomerProfiles",
    "DeviceInfo",
    "DeviceLookup",
    "DeviceRegistry",
    "HygieneState",
    "Inspector",
    "QualityOptions",
    "ReasonCode",
    "Rejection",
    "SourcePosition",
    "StreamHygiene",
    "deadletter_value",
    "original_bytes",
]
