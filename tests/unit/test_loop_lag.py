"""The event-loop lag monitor: a blocked loop shows as a stall, a free one does not."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

from engine.loop_lag import STALL_S, LoopLag, freeze_startup_objects, watch_loop


async def watched(hold: Callable[[], None]) -> LoopLag:
    """A monitor sampling every 10 ms while ``hold`` holds the loop once,
    stopped after its next sample."""
    lag = LoopLag(window_s=60.0)
    watcher = asyncio.create_task(watch_loop(lag, interval_s=0.01))
    try:
        while lag.samples < 5:
            await asyncio.sleep(0.01)
        assert lag.stalls == 0
        hold()
        seen = lag.samples
        while lag.samples == seen:
            await asyncio.sleep(0.01)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return lag


async def test_a_blocked_loop_is_a_stall_and_a_free_one_is_not() -> None:
    # a synchronous call holding the loop
    report = (await watched(lambda: time.sleep(STALL_S + 0.2))).as_dict()
    assert report["stalls"] == 1
    assert STALL_S < report["max_s"] < STALL_S + 1.0
    assert report["recent_max_s"] == report["max_s"]
    assert report["busy_stalls"] == 0, "a sleeping call is not work on the loop"


async def test_work_that_does_not_yield_is_a_busy_stall() -> None:
    def spin() -> None:  # CPU-bound work holding the loop
        until = time.monotonic() + STALL_S + 0.3
        while time.monotonic() < until:
            pass

    report = (await watched(spin)).as_dict()
    assert report["stalls"] == report["busy_stalls"] == 1
    assert report["busy_max_s"] == report["max_s"]


def test_recent_forgets_what_left_the_window() -> None:
    lag = LoopLag(window_s=5.0)
    lag.record(at=0.0, lag_s=2.0)
    lag.record(at=10.0, lag_s=0.1)
    assert lag.as_dict()["recent_max_s"] == 0.1
    assert lag.as_dict()["max_s"] == 2.0


async def test_full_garbage_collections_are_timed() -> None:
    since = time.monotonic()
    # a full collection, as Python runs when the heap grew enough
    lag = await watched(gc.collect)
    assert lag.gc_full == 1
    assert 0.0 < lag.gc_within(since) == lag.gc_full_max_s
    assert lag.on_gc not in gc.callbacks, "the hook leaves with the watcher"
    assert lag.as_dict()["gc_full_collections"] == 1


def test_objects_of_a_started_process_are_frozen_out_of_full_collections() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector can free it

    started = [Node() for _ in range(1000)]  # as a process's code and setup
    try:
        frozen = freeze_startup_objects("test")
        made_since = Node()
        assert frozen == gc.get_freeze_count() >= len(started)
        tracked = {id(o) for o in gc.get_objects()}
        assert id(started[0]) not in tracked, "a full collection no longer scans it"
        assert id(made_since) in tracked
        del made_since
        assert gc.collect() >= 1, "what the process makes later is still collected"
    finally:
        gc.unfreeze()
