"""Event time: epoch seconds, epoch milliseconds or RFC 3339, to float seconds.

A number of 1e11 or more is read as epoch milliseconds. That is unambiguous:
1e11 epoch *seconds* is the year 5138, which the future-skew check refuses
anyway, while 1e11 *milliseconds* is 1973 — no device sends either. Numbers of
1e14 or more (microseconds, nanoseconds) are refused rather than guessed.
Strings must be RFC 3339 with a ``Z`` or ``±hh:mm`` offset; a time without
an offset has no single meaning and is refused.

>>> event_time(1763700000.5)
1763700000.5
>>> event_time(1763700000500)
1763700000.5
>>> event_time("2025-11-21T04:40:00Z")
1763700000.0
>>> event_time("2025-11-21T05:40:00+01:00")
1763700000.0
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from engine.quality.verdicts import RejectedInput, describe, preview

#: From here on a numeric ts is epoch milliseconds.
MILLIS_FROM = 1e11
#: From here on a numeric ts is refused (it would be micro- or nanoseconds).
REFUSED_FROM = 1e14


def event_time(ts: Any) -> float:
    """``ts`` as float epoch seconds, or ``RejectedInput`` saying why not."""
    kind = type(ts)
    if kind is float or kind is int:
        if 0 <= ts < MILLIS_FROM:
            return float(ts)
        if MILLIS_FROM <= ts < REFUSED_FROM:
            return ts / 1000.0
        if ts < 0:
            raise RejectedInput("value", f"ts {preview(ts)} is before 1970-01-01")
        raise RejectedInput(
            "value",
            f"ts {preview(ts)} is not a plausible epoch time in seconds or milliseconds",
        )
    if kind is str:
        try:
            moment = msgspec.convert(ts, datetime)
        except msgspec.ValidationError:
            raise RejectedInput(
                "schema", f"ts {preview(ts)} is not an RFC 3339 timestamp"
            ) from None
        if moment.tzinfo is None:
            raise RejectedInput(
                "schema", f"ts {preview(ts)} has no UTC offset (add 'Z' or '+hh:mm')"
            )
        seconds = moment.timestamp()
        if seconds < 0:
            raise RejectedInput("value", f"ts {preview(ts)} is before 1970-01-01")
        return seconds
    raise RejectedInput(
        "schema",
        f"field 'ts' must be epoch seconds or an RFC 3339 string, got {describe(ts)}",
    )
