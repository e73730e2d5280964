"""Event-time watermarks: how far time has certainly progressed, for idle keys.

Rules fire the timers of an active key when its own events arrive. Keys that
have gone quiet (a silent device) need time from elsewhere: their partition's.
Taking the largest event time seen in a partition is wrong during a backlog:
ingest reads many device topics at different speeds, so one device can be
hours of event time behind another and would look silent. So:

- ingest keeps a ``SourceWatermarks`` over the source partitions it reads. A
  source that still has unread records (position < high-water mark) holds the
  watermark back at the latest event time read from it; a source that is
  caught up does not (its device is quiet now, which is what a silence rule
  must see). Each forwarded event carries the watermark and ingest's id;
- the customer actor keeps a ``PartitionClock`` per partition: the smallest
  watermark of the ingest instances heard from recently. When nothing has
  arrived for the idle allowance (wall clock), time moves on with the wall
  clock from there, so a quiet partition still ages.

>>> marks = SourceWatermarks()
>>> marks.observe("fast", 500.0); marks.observe("slow", 100.0)
>>> marks.advance(lagging=["slow"])  # slow still has unread records
100.0
>>> marks.advance(lagging=[])  # all caught up: the newest event time counts
500.0
>>> marks.advance(lagging=["slow"])  # a watermark never goes back
500.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable

#: An ingest instance not heard from for this long no longer holds time back.
SOURCE_SILENCE_S = 30.0

#: Record headers ingest stamps on every forwarded event.
WATERMARK_HEADER = "iotcrm-wm"
SOURCE_HEADER = "iotcrm-src"


def time_headers(
    headers: Iterable[tuple[str, bytes]] | None,
    source_header: str = SOURCE_HEADER,
    watermark_header: str = WATERMARK_HEADER,
) -> tuple[str | None, float | None]:
    """The ingest instance id and watermark a record carries.

    >>> time_headers([("iotcrm-src", b"ingest-1"), ("iotcrm-wm", b"1700000000.5")])
    ('ingest-1', 1700000000.5)
    """
    source = watermark = None
    for name, value in headers or ():
        if name == source_header:
            source = value.decode()
        elif name == watermark_header:
            watermark = float(value)
    return source, watermark


class SourceWatermarks:
    """The watermark over one consumer's source partitions."""

    def __init__(self) -> None:
        self.latest: dict[Hashable, float] = {}
        self.current: float | None = None

    def observe(self, source: Hashable, ts: float) -> None:
        if ts > self.latest.get(source, float("-inf")):
            self.latest[source] = ts

    def advance(self, lagging: Iterable[Hashable]) -> float | None:
        """The watermark, given the sources that still have unread records.

        A lagging source nothing was read from yet keeps the watermark where
        it is: its next event could be as old as anything.
        """
        latest = self.latest
        bound: float | None = None
        for source in lagging:
            ts = latest.get(source)
            if ts is None:
                return self.current
            bound = ts if bound is None or ts < bound else bound
        if bound is None:
            bound = max(latest.values(), default=None)
        if bound is not None and (self.current is None or bound > self.current):
            self.current = bound
        return self.current


class PartitionClock:
    """Event time of one actor partition, for the timers of its idle keys.

    >>> wall = iter([0.0, 1.0, 2.0, 20.0]).__next__
    >>> clock = PartitionClock(clock=wall)
    >>> clock.on_event(ts=1000.0, source="ingest-a", watermark=900.0)
    >>> clock.now(idle_allowance_s=5.0)  # wall 2 s: not idle
    900.0
    >>> clock.now(idle_allowance_s=5.0)  # wall 20 s: idle for 19 s
    919.0
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: ingest instance -> (its latest watermark, when it was heard from)
        self.sources: dict[str, tuple[float, float]] = {}
        self.arrived_at = clock()

    def on_event(self, ts: float, source: str | None, watermark: float | None) -> None:
        """An event arrived; without a watermark its own time stands in for one."""
        now = self._clock()
        self.arrived_at = now
        key = source or ""
        mark = ts if watermark is None else watermark
        previous = self.sources.get(key)
        if previous is None or mark > previous[0]:
            self.sources[key] = (mark, now)
        else:
            self.sources[key] = (previous[0], now)

    def now(self, idle_allowance_s: float) -> float | None:
        wall = self._clock()
        heard = [mark for mark, seen in self.sources.values() if wall - seen <= SOURCE_SILENCE_S]
        if not heard:
            heard = [mark for mark, _ in self.sources.values()]
        if not heard:
            return None
        base = min(heard)
        idle = wall - self.arrived_at
        return base + idle if idle > idle_allowance_s else base
