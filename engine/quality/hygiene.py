"""Per-device stream hygiene: duplicates, late events and gaps.

A device's hygiene state is a ``HygieneState``, a ``msgspec.Struct`` of plain
fields (floats, an id -> ts map, a list of gap maps, counters), so it can live
in a table value serialised as JSON or msgpack; ``admit`` updates it in place.
The customer actor keeps one per device, as the first fields of the device's
``tables.state.DeviceState``, sorts each batch per key by ``ts`` (stably, so
equal times keep their arrival order) and admits the events one by one:

- ``"duplicate"``: the device already sent this event id, and its time is
  still within ``dedup_horizon_s`` of the device's stream time. Drop it.
- ``"late"``: more than ``allowed_lateness_s`` behind the stream time (the
  largest event time admitted). Send it to ``iot.late``; it changes nothing.
- ``"ok"``: process it. If the silence before it was longer than the device
  type's expected interval × ``gap_factor``, a gap is recorded.

Remembered ids are bounded twice: by event time (an id is forgotten once the
stream time passes its ts + horizon) and by count (``dedup_max_ids``, oldest
first), so a chatty device cannot grow its state without limit.

>>> hygiene = StreamHygiene(QualityOptions(allowed_lateness_s=30), clock=lambda: 99.0)
>>> device = HygieneState()
>>> [hygiene.admit(device, {"id": i, "ts": ts, "device_type": "washer"})
...  for i, ts in [("a", 1000.0), ("b", 980.0), ("a", 1000.0), ("c", 960.0)]]
['ok', 'ok', 'duplicate', 'late']
>>> device.stream_ts, device.counts
(1000.0, {'ok': 2, 'duplicate': 1, 'late': 1})
>>> hygiene.late_rejection(device, {"id": "c", "ts": 960.0}).reason
'ts 960.0 is 40.0 s behind the stream time 1000.0 of its device (allowed lateness: 30 s)'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec

from engine.quality.options import QualityOptions
from engine.quality.verdicts import Rejection

Admission = Literal["ok", "duplicate", "late"]
OK: Final = "ok"
DUPLICATE: Final = "duplicate"
LATE: Final = "late"


def _no_counts() -> dict[str, int]:
    return {OK: 0, DUPLICATE: 0, LATE: 0}


class HygieneState(msgspec.Struct):
    """A device's stream-hygiene fields; ``HygieneState()`` is a device before
    its first event. Encoded, a map with these keys, as when it was a plain dict.

    ``stream_ts``: largest event time admitted (None before the first event);
    ``last_seen``: wall clock when the latest event was admitted;
    ``seen``: event id -> ts, oldest first; ``gaps``: the latest gaps as
    ``{"start", "end", "seconds"}``; ``gap_count``: all gaps ever;
    ``counts``: events admitted per verdict.
    """

    stream_ts: float | None = None
    last_seen: float | None = None
    seen: dict[str, float] = msgspec.field(default_factory=dict)
    gaps: list[dict[str, float]] = msgspec.field(default_factory=list)
    gap_count: int = 0
    counts: dict[str, int] = msgspec.field(default_factory=_no_counts)


class StreamHygiene:
    """Dedup, lateness and gap detection over devices' ``HygieneState``."""

    def __init__(self, settings: QualityOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options = settings
        self.clock = clock
        self._horizon = options.dedup_horizon_s
        self._max_ids = options.dedup_max_ids
        self._lateness = options.allowed_lateness_s

    def admit(self, device_state: HygieneState, event: dict[str, Any]) -> Admission:
        """Judge one normalised event (``id``, ``ts``; ``device_type`` for
        gaps) against its device's state, and update the state."""
        counts = device_state.counts
        seen = device_state.seen
        stream_ts = device_state.stream_ts
        event_id = event["id"]
        ts = event["ts"]
        if stream_ts is None:
            stream_ts = device_state.stream_ts = ts
        else:
            remembered = seen.get(event_id)
            if remembered is not None and remembered >= stream_ts - self._horizon:
                counts[DUPLICATE] += 1
                return DUPLICATE
            if ts < stream_ts - self._lateness:
                counts[LATE] += 1
                return LATE
            if ts > stream_ts:
                options = self.options
                interval = options.expected_interval_s.get(
                    event.get("device_type", ""), options.default_expected_interval_s
                )
                # _note_gap only for a silence that may be one (most are not)
                if not (interval <= 0 or ts - stream_ts <= interval * options.gap_factor):
                    self._note_gap(device_state, event, stream_ts, ts)
                stream_ts = device_state.stream_ts = ts
            if remembered is not None:
                del seen[event_id]  # forgotten in time, not yet in memory: renew
        seen[event_id] = ts
        # _forget, inlined for the usual case: the oldest id is still remembered
        oldest = next(iter(seen))
        if not (seen[oldest] >= stream_ts - self._horizon and len(seen) <= self._max_ids):
            self._forget(seen, stream_ts - self._horizon)
        device_state.last_seen = self.clock()
        counts[OK] += 1
        return OK

    def late_rejection(self, device_state: HygieneState, event: dict[str, Any]) -> Rejection:
        """Why ``admit`` called ``event`` late: the reason for its ``iot.late`` record."""
        stream_ts = device_state.stream_ts
        if stream_ts is None:
            raise ValueError("no event of the device was admitted yet: none can be late")
        return Rejection(
            "late",
            f"ts {event['ts']} is {stream_ts - event['ts']:.1f} s behind the stream time "
            f"{stream_ts} of its device (allowed lateness: {self._lateness:g} s)",
        )

    def _note_gap(
        self, device_state: HygieneState, event: dict[str, Any], previous: float, ts: float
    ) -> None:
        interval = self.options.expected_interval(event.get("device_type", ""))
        silence = ts - previous
        if interval <= 0 or silence <= interval * self.options.gap_factor:
            return
        gaps = device_state.gaps
        gaps.append({"start": previous, "end": ts, "seconds": silence})
        if len(gaps) > self.options.gaps_kept:
            del gaps[: len(gaps) - self.options.gaps_kept]
        device_state.gap_count += 1

    def _forget(self, seen: dict[str, float], cutoff: float) -> None:
        # Ids arrive roughly in time order, so the oldest sit at the front; an
        # id admitted out of order may outlive its horizon a little, within
        # the count cap, and is never wrongly called a duplicate meanwhile.
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= cutoff and len(seen) <= self._max_ids:
                return
            del seen[oldest]
