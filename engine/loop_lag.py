"""How late an asyncio event loop runs its callbacks: the worker's health in one number.

A loop blocked by a long batch, a slow synchronous call or a starved CPU
delays everything on it: heartbeats, fetches, timers, the web views. The
monitor sleeps ``interval_s`` again and again and records how much later
than asked it woke up.

>>> lag = LoopLag(window_s=10.0)
>>> lag.record(at=100.0, lag_s=0.002)
>>> lag.record(at=101.0, lag_s=0.750)
>>> lag.record(at=115.0, lag_s=0.004)
>>> lag.as_dict()["max_s"], lag.as_dict()["recent_max_s"], lag.as_dict()["stalls"]
(0.75, 0.004, 1)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: A wake-up later than this counts as a stall (and is logged).
STALL_S = 0.5
#: Longest run of work between two chances for the loop to run its other
#: callbacks (heartbeats, fetch hand-overs, the web views).
WORK_BUDGET_S = 0.05


class Pauses:
    """Long work that yields to the event loop once every ``budget_s``.

    >>> import asyncio
    >>> async def work() -> int:
    ...     pauses, yielded = Pauses(budget_s=0.0), 0
    ...     for _ in range(3):
    ...         yielded += await pauses.maybe()
    ...     return yielded
    >>> asyncio.run(work())
    3
    """

    def __init__(self, budget_s: float = WORK_BUDGET_S) -> None:
        self.budget_s = budget_s
        self._since = time.monotonic()

    async def maybe(self) -> bool:
        """Yield if the budget is spent; True if it did (the world may have moved)."""
        if time.monotonic() - self._since < self.budget_s:
            return False
        await asyncio.sleep(0)
        self._since = time.monotonic()
        return True


class LoopLag:
    """Lag samples: the largest ever, the largest of the last ``window_s``, the
    latest, and how many stalls (lag over ``STALL_S``)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.max_s = 0.0
        self.last_s = 0.0
        self.stalls = 0
        self.samples = 0
        self._recent: collections.deque[tuple[float, float]] = collections.deque()

    def record(self, at: float, lag_s: float) -> None:
        self.samples += 1
        self.last_s = lag_s
        self.max_s = max(self.max_s, lag_s)
        if lag_s > STALL_S:
            self.stalls += 1
        recent = self._recent
        recent.append((at, lag_s))
        while recent and recent[0][0] < at - self.window_s:
            recent.popleft()

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_s": round(self.max_s, 4),
            "recent_max_s": round(max((lag for _, lag in self._recent), default=0.0), 4),
            "recent_window_s": self.window_s,
            "last_s": round(self.last_s, 4),
            "stalls": self.stalls,
            "stall_threshold_s": STALL_S,
            "samples": self.samples,
        }


async def watch_loop(lag: LoopLag, interval_s: float = 0.1) -> None:
    """Sample the running loop's lag into ``lag`` until cancelled; log each stall."""
    clock = time.monotonic
    while True:
        asked = clock()
        await asyncio.sleep(interval_s)
        woke = clock()
        late = max(0.0, woke - asked - interval_s)
        lag.record(woke, late)
        if late > STALL_S:
            log.warning("the event loop was blocked for %.2f s", late)
