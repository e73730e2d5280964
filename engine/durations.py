"""Time spans, one way everywhere (rules, model declarations, command-line
flags): ``500ms``, ``4s``, ``10m``, ``2h``, ``1d``, or a plain number of
seconds; and the time constants the code shares.

>>> parse_duration("10m")
600.0
>>> parse_duration("500ms")
0.5
>>> parse_duration(90)
90.0
"""

from __future__ import annotations

import math
import re

MINUTE_S = 60.0
HOUR_S = 3600.0
DAY_S = 86400.0

_UNIT_SECONDS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": MINUTE_S, "h": HOUR_S, "d": DAY_S}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (zero or more); raises ``ValueError`` with a
    message for authors."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '10m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: use a number of seconds or "
                "<number><unit> with unit ms, s, m, h or d (e.g. '10m')"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as '10m', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds
