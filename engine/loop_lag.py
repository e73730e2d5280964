"""How late an asyncio event loop runs its callbacks: the worker's health in one number.

A loop blocked by a long batch, a slow synchronous call or a starved CPU
delays everything on it: heartbeats, fetches, timers, the web views. The
monitor sleeps ``interval_s`` again and again and records how much later
than asked it woke up, and how much CPU the loop's thread used meanwhile: a
stall the thread spent running is work on the loop that did not yield (the
code's fault); one it spent mostly off the CPU is a machine that did not
give it one (or a blocking call waiting on I/O).

>>> lag = LoopLag(window_s=10.0)
>>> lag.record(at=100.0, lag_s=0.002)
False
>>> lag.record(at=101.0, lag_s=0.750, cpu_s=0.05)  # starved
False
>>> lag.record(at=102.0, lag_s=0.600, cpu_s=0.58)  # busy
True
>>> lag.record(at=115.0, lag_s=0.004)
False
>>> summary = lag.as_dict()
>>> summary["max_s"], summary["recent_max_s"], summary["stalls"], summary["busy_stalls"]
(0.75, 0.004, 2, 1)
>>> summary["busy_max_s"]
0.6
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: A wake-up later than this counts as a stall (and is logged).
STALL_S = 0.5
#: A stall during which the loop's thread was on the CPU for at least this
#: share of the time is the loop's own work (a *busy* stall).
BUSY_SHARE = 0.5
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
        #: stalls the loop's thread spent running (work that did not yield)
        self.busy_stalls = 0
        self.busy_max_s = 0.0
        self.samples = 0
        #: full (generation 2) garbage collections: how many, the longest
        self.gc_full = 0
        self.gc_full_max_s = 0.0
        #: objects frozen out of collection once started (``freeze_startup_objects``),
        #: kept as counted then: counting again walks all of them
        self.gc_frozen = 0
        #: monotonic end time and duration of the latest full collection
        self.gc_last: tuple[float, float] = (0.0, 0.0)
        self._gc_started = 0.0
        self._recent: collections.deque[tuple[float, float]] = collections.deque()

    def record(self, at: float, lag_s: float, cpu_s: float | None = None) -> bool:
        """Add a sample (``cpu_s``: the loop thread's CPU time over the
        sample's whole wait, if known); True if it was a busy stall."""
        self.samples += 1
        self.last_s = lag_s
        self.max_s = max(self.max_s, lag_s)
        busy = False
        if lag_s > STALL_S:
            self.stalls += 1
            if cpu_s is not None and cpu_s >= BUSY_SHARE * lag_s:
                busy = True
                self.busy_stalls += 1
                self.busy_max_s = max(self.busy_max_s, lag_s)
        recent = self._recent
        recent.append((at, lag_s))
        while recent and recent[0][0] < at - self.window_s:
            recent.popleft()
        return busy

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` hook: times full collections, which scan every
        live object (decoded states, models) in one go on the loop's thread."""
        if info.get("generation") != 2:
            return
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
            return
        took = now - self._gc_started
        self.gc_full += 1
        self.gc_full_max_s = max(self.gc_full_max_s, took)
        self.gc_last = (time.monotonic(), took)

    def gc_within(self, since: float) -> float:
        """Seconds of the latest full collection if it ended after ``since``."""
        ended, took = self.gc_last
        return took if ended >= since else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_s": round(self.max_s, 4),
            "recent_max_s": round(max((lag for _, lag in self._recent), default=0.0), 4),
            "recent_window_s": self.window_s,
            "last_s": round(self.last_s, 4),
            "stalls": self.stalls,
            "busy_stalls": self.busy_stalls,
            "busy_max_s": round(self.busy_max_s, 4),
            "gc_full_collections": self.gc_full,
            "gc_full_max_s": round(self.gc_full_max_s, 4),
            "gc_frozen_objects": self.gc_frozen,
            "stall_threshold_s": STALL_S,
            "samples": self.samples,
        }


def freeze_startup_objects(process: str) -> int:
    """Move every object alive now out of the garbage collector's reach, once
    ``process`` (worker, ingest, sink) has started: logs and returns how many.

    Nearly all of a started process's objects are its code (modules, classes,
    functions: 110,000-170,000 here, from Faust, aiokafka, River...), and a
    full collection scans them all, on the thread that runs the stream: 60 ms
    when the process has the CPU, 300-450 ms when it shares it, a pause every
    event in flight waits out. They live as long as the process; frozen, a
    full collection scans only what the process made since (states, buffers).
    Frozen objects are still freed when their last reference goes; only a
    cycle among them would be kept.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()  # walks every frozen object: once, here
    log.info("%s: %d objects of its start frozen out of garbage collection", process, frozen)
    return frozen


async def watch_loop(lag: LoopLag, interval_s: float = 0.1) -> None:
    """Sample the running loop's lag into ``lag`` until cancelled; log each
    stall (with the full garbage collection inside it, if one was)."""
    clock, cpu = time.monotonic, time.thread_time
    gc.callbacks.append(lag.on_gc)
    try:
        while True:
            asked, ran = clock(), cpu()
            await asyncio.sleep(interval_s)
            woke = clock()
            late = max(0.0, woke - asked - interval_s)
            # The sleep's own interval may hold work too: count only what could
            # have run during the lateness.
            cpu_s = max(0.0, cpu() - ran - interval_s)
            busy = lag.record(woke, late, cpu_s)
            if late > STALL_S:
                collected = lag.gc_within(asked)
                log.warning(
                    "the event loop was blocked for %.2f s; its thread ran %.2f s of it (%s)%s",
                    late,
                    cpu_s,
                    "work on the loop that did not yield"
                    if busy
                    else "it waited for a CPU, or in a blocking call",
                    f"; a full garbage collection took {collected:.2f} s of it"
                    if collected
                    else "",
                )
    finally:
        gc.callbacks.remove(lag.on_gc)
