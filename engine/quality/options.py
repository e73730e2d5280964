"""The knobs of the data-quality layer.

``engine.config.QualitySettings`` carries the ones every deployment sets; the
rest have defaults here. ``QualityOptions.of`` accepts either, so a field
added to ``QualitySettings`` under the same name is picked up with no change
here.

>>> from engine.config import QualitySettings
>>> options = QualityOptions.of(QualitySettings(allowed_lateness_s=5.0))
>>> options.allowed_lateness_s, options.max_payload_bytes
(5.0, 65536)
>>> options.expected_interval("vehicle")
300.0
"""

from __future__ import annotations

from typing import Any

import msgspec


class QualityOptions(msgspec.Struct, kw_only=True, frozen=True):
    #: Reject payloads longer than this, before decoding them.
    max_payload_bytes: int = 65536
    #: Deepest nesting of lists/objects allowed inside an extra field.
    max_nesting: int = 8
    #: Reject events stamped more than this ahead of the wall clock.
    max_future_skew_s: float = 300.0
    #: An event id is remembered until the device's stream time passes ts + this.
    dedup_horizon_s: float = 86400.0
    #: At most this many remembered event ids per device (oldest go first).
    dedup_max_ids: int = 2048
    #: Events up to this far behind the device's stream time are still on time.
    allowed_lateness_s: float = 30.0
    #: Expected time between two events of a device, by device type.
    expected_interval_s: dict[str, float] = msgspec.field(default_factory=dict)
    #: ... and for device types not listed there (0 disables gap detection).
    default_expected_interval_s: float = 300.0
    #: A silence longer than expected interval × this factor is a gap.
    gap_factor: float = 3.0
    #: How many of the latest gaps a device's state keeps.
    gaps_kept: int = 10

    @classmethod
    def of(cls, settings: Any) -> QualityOptions:
        """Options from ``QualitySettings`` (or anything with some of these
        attributes); what it does not set keeps its default."""
        if isinstance(settings, cls):
            return settings
        given = {
            name: getattr(settings, name)
            for name in cls.__struct_fields__
            if getattr(settings, name, None) is not None
        }
        return msgspec.convert(given, cls)

    def expected_interval(self, device_type: str) -> float:
        """Seconds expected between two events of a device of this type."""
        return self.expected_interval_s.get(device_type, self.default_expected_interval_s)
