"""Watermarks: a backlog on one source must not make other keys look idle."""

from __future__ import annotations

from engine.watermark import SOURCE_SILENCE_S, PartitionClock, SourceWatermarks


def test_a_lagging_source_holds_time_back_until_it_catches_up() -> None:
    marks = SourceWatermarks()
    marks.observe("a", 1000.0)
    marks.observe("b", 10.0)
    assert marks.advance(lagging=["b"]) == 10.0
    marks.observe("b", 400.0)
    assert marks.advance(lagging=["b"]) == 400.0
    assert marks.advance(lagging=[]) == 1000.0


def test_an_unread_lagging_source_freezes_the_watermark() -> None:
    marks = SourceWatermarks()
    assert marks.advance(lagging=["new"]) is None
    marks.observe("a", 50.0)
    assert marks.advance(lagging=["new"]) is None, "the new source may hold anything"
    assert marks.advance(lagging=[]) == 50.0
    assert marks.advance(lagging=["new"]) == 50.0, "never backwards"


def test_the_slowest_recent_ingest_instance_sets_partition_time() -> None:
    wall = [0.0]
    clock = PartitionClock(clock=lambda: wall[0])
    clock.on_event(ts=500.0, source="fast", watermark=480.0)
    clock.on_event(ts=100.0, source="slow", watermark=90.0)
    assert clock.now(idle_allowance_s=5.0) == 90.0
    wall[0] = 2.0
    clock.on_event(ts=600.0, source="fast", watermark=590.0)
    assert clock.now(idle_allowance_s=5.0) == 90.0
    # The slow instance went away (rebalanced, stopped): it no longer holds time.
    wall[0] = 2.0 + SOURCE_SILENCE_S + 1
    clock.on_event(ts=700.0, source="fast", watermark=690.0)
    assert clock.now(idle_allowance_s=5.0) == 690.0


def test_a_quiet_partition_ages_with_the_wall_clock() -> None:
    wall = [0.0]
    clock = PartitionClock(clock=lambda: wall[0])
    assert clock.now(idle_allowance_s=5.0) is None
    clock.on_event(ts=100.0, source=None, watermark=None)
    wall[0] = 4.0
    assert clock.now(idle_allowance_s=5.0) == 100.0
    wall[0] = 60.0
    assert clock.now(idle_allowance_s=5.0) == 160.0
    assert clock.now(idle_allowance_s=float("inf")) == 100.0


def test_an_unknown_ingest_watermark_holds_partition_time_back() -> None:
    wall = [0.0]
    clock = PartitionClock(clock=lambda: wall[0])
    clock.on_event(ts=5000.0, source="ingest", watermark=float("-inf"))
    assert clock.now(idle_allowance_s=5.0) == float("-inf")
    wall[0] = 60.0
    assert clock.now(idle_allowance_s=5.0) == float("-inf"), "no timer can be due"
    clock.on_event(ts=5001.0, source="ingest", watermark=4990.0)
    assert clock.now(idle_allowance_s=5.0) == 4990.0
