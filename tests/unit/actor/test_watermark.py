"""Watermarks: time for idle keys moves only as far as what ingest has certainly read.

A key's timers also fire on the partition's time (a silent device's watchdog);
time that runs ahead of unread events invents actions (a silence for a device
whose next event is already in Kafka), so every way time can run ahead is
pinned here: a lagging or never-read source, stale end offsets, devices out of
order with each other, the wall clock while something is unread, an ingest
instance that went away, and sources handed to an instance not heard yet.
"""

from __future__ import annotations

import time

from engine.watermark import (
    HANDOVER_GRACE_S,
    HANDOVER_HOLD_S,
    SOURCE_SILENCE_S,
    UNKNOWN,
    IngestWatermark,
    PartitionClock,
    SourceWatermarks,
    sent_header,
    time_headers,
)


class Wall:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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


def test_ingest_judges_sources_by_what_was_read_when_the_ends_were_asked_for() -> None:
    # d2 looked read to its end when the ends were asked for; records read
    # from d1 after that must not move time past d2's unread events.
    wall = Wall()
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 100.0)
    mark.observe("d2", 100.0)
    mark.note_read()
    check = mark.begin_check({"d1": 1, "d2": 1})
    wall.now = 0.01
    mark.observe("d1", 9000.0)  # read while the answer was on its way
    mark.note_read()
    mark.finish_check(check, ends={"d1": 1, "d2": 1})
    assert mark.stamp() == 100.0
    assert not mark.caught_up, "something was read after the snapshot"


def test_a_source_whose_end_is_unknown_or_ahead_holds_time() -> None:
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=Wall())
    mark.observe("d1", 100.0)
    mark.observe("d2", 500.0)
    mark.finish_check(mark.begin_check({"d1": 4, "d2": 9}), ends={"d2": 9})
    assert mark.stamp() == 100.0, "d1's end was not answered: it may hold anything newer"
    mark.finish_check(mark.begin_check({"d1": 4, "d2": 9}), ends={"d1": 5, "d2": 9})
    assert mark.stamp() == 100.0
    assert mark.lagging == 1


def test_nothing_read_yet_is_unknown_time() -> None:
    mark = IngestWatermark(device_skew_s=60.0, idle_allowance_s=5.0, clock=Wall())
    assert mark.stamp() == UNKNOWN
    mark.finish_check(mark.begin_check({"d1": 0}), ends={"d1": 3})
    assert mark.stamp() == UNKNOWN


def test_the_stamp_stays_the_devices_skew_behind() -> None:
    mark = IngestWatermark(device_skew_s=60.0, idle_allowance_s=5.0, clock=Wall())
    mark.observe("d1", 1000.0)
    mark.finish_check(mark.begin_check({"d1": 3}), ends={"d1": 3})
    assert mark.stamp() == 940.0


def test_the_wall_clock_moves_time_only_when_everything_was_read_and_nothing_comes() -> None:
    wall = Wall()
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 1000.0)
    mark.observe("d2", 400.0)
    mark.note_read()
    wall.now = 1.0
    mark.finish_check(mark.begin_check({"d1": 3, "d2": 2}), ends={"d1": 3, "d2": 5})
    wall.now = 60.0
    assert mark.stamp() == 400.0, "d2 has unread records: no ageing"

    mark.finish_check(mark.begin_check({"d1": 3, "d2": 5}), ends={"d1": 3, "d2": 5})
    wall.now = 64.0
    mark.observe("d2", 900.0)
    assert mark.stamp() == 1064.0, "all read, idle for 64 s > 5 s"
    mark.note_read()
    assert mark.stamp() == 1000.0, "a record came: back to event time"


def talk(clock: PartitionClock, source: str, mark: float, start: float, end: float) -> None:
    """``source`` ticks once a second from ``start`` to ``end``."""
    second = start
    while second <= end:
        clock.heard(source, mark, produced_at=second)
        second += 1.0


def test_the_slowest_talking_ingest_instance_sets_partition_time() -> None:
    clock = PartitionClock()
    clock.heard("fast", 480.0, produced_at=0.0)
    clock.heard("slow", 90.0, produced_at=1.0)
    assert clock.now() == 90.0
    # The slow instance went away (rebalanced, stopped, killed): once the
    # other has talked on without it long enough, it no longer holds time.
    talk(clock, "fast", 590.0, start=2.0, end=SOURCE_SILENCE_S)
    assert clock.now() == 90.0
    talk(clock, "fast", 690.0, start=SOURCE_SILENCE_S + 1, end=SOURCE_SILENCE_S + 1)
    assert clock.now() == 690.0


def test_an_outage_that_silenced_every_instance_ages_none_of_them() -> None:
    """A broker restart stops every ingest instance's records for tens of
    seconds; the first to talk again must not count the others as gone (the
    chaos suite's broker restart closed day windows early that way)."""
    clock = PartitionClock()
    talk(clock, "a", 5000.0, start=0.0, end=10.0)
    talk(clock, "b", 100.0, start=0.5, end=10.5)
    talk(clock, "a", 5100.0, start=60.0, end=80.0)  # after the outage, a first
    assert clock.now() == 100.0, "b is not gone: everyone was silent"
    clock.heard("b", 110.0, produced_at=80.5)
    assert clock.now() == 110.0
    # b really died in the outage: it stops counting once a talked 30 s on.
    talk(clock, "a", 5200.0, start=81.0, end=81.0 + SOURCE_SILENCE_S)
    assert clock.now() == 5200.0


def test_an_actor_far_behind_ages_no_instance_out_by_its_own_wall_clock() -> None:
    """After a failover the new owner replays minutes of records in seconds,
    or reads them long after they were produced: an instance's silence is
    measured in the stream (produce times), so time moves as it did live,
    however late the records are read."""
    clock = PartitionClock()
    clock.heard("dead", 100.0, produced_at=1000.0)  # its last word before a kill
    clock.heard("survivor", 5000.0, produced_at=1001.0)
    # However long the actor takes to get here, the stream says 1 s passed.
    assert clock.now() == 100.0


def test_an_instance_taking_time_back_is_believed() -> None:
    """An ingest instance given sources that are behind its others stamps a
    smaller time from then on (see IngestWatermark.take_back); its records
    come in the order it produced them, so its latest word counts."""
    clock = PartitionClock()
    clock.heard("survivor", 5000.0, produced_at=1.0)
    clock.heard("survivor", 120.0, produced_at=2.0)
    assert clock.now() == 120.0
    clock.heard("survivor", 5000.0, produced_at=1.5)  # an older record, read late
    assert clock.now() == 120.0


def test_instances_are_aged_by_when_ingest_stamped_their_records() -> None:
    """Ingest's records carry their events' times as Kafka timestamps (hours
    or days apart in a replay), so silence is judged by the stamping time
    ingest writes in a header of its own; records without one (not from
    ingest, or an older ingest) count as heard now."""
    first = time_headers([("iotcrm-src", b"a"), ("iotcrm-wm", b"90.0"), sent_header()])
    assert first.source == "a" and first.watermark == 90.0
    assert first.sent_at is not None and abs(first.sent_at - time.time()) < 5.0

    clock = PartitionClock()
    clock.heard("a", 90.0, produced_at=first.sent_at)
    clock.heard("b", 500.0, produced_at=None)
    assert clock.now() == 90.0
    talk(clock, "b", 600.0, start=first.sent_at, end=first.sent_at + SOURCE_SILENCE_S)
    assert clock.now() == 600.0, "a fell silent"
    clock.heard("legacy", 400.0, produced_at=None)
    assert clock.now() == 400.0, "no stamping time: as recent as the newest"


def test_a_quiet_partition_never_ages_by_itself() -> None:
    # While ingest is down or failing over, its partitions hear nothing: the
    # last time it vouched for stays, however long the wall clock runs.
    clock = PartitionClock()
    assert clock.now() is None
    clock.heard("ingest", 90.0, produced_at=0.0)
    assert clock.now() == 90.0


def test_an_unknown_ingest_watermark_holds_partition_time_back() -> None:
    clock = PartitionClock()
    clock.heard("ingest", UNKNOWN, produced_at=0.0)
    assert clock.now() == UNKNOWN, "no timer can be due"
    clock.heard("ingest", 4990.0, produced_at=1.0)
    assert clock.now() == 4990.0


def test_a_checkpoint_of_an_older_layout_still_restores() -> None:
    """Checkpoints written before produce times were kept hold bare
    watermarks: they count as heard long ago, and stop counting once
    another instance has talked on for a while."""
    clock = PartitionClock()
    clock.restore({"ingest-a": 900.0, "ingest-b": None})
    assert clock.now() == UNKNOWN
    talk(clock, "ingest-a", 950.0, start=5.0, end=5.0 + SOURCE_SILENCE_S)
    assert clock.now() == 950.0


def caught_up_check(mark: IngestWatermark, read_to: dict[str, int]) -> None:
    mark.finish_check(mark.begin_check(read_to), ends=read_to)


def handed_d2_over(wall: Wall) -> IngestWatermark[str]:
    """An instance that read d1 and d2 to their ends (to offsets 5 and 7),
    gave d2 to another instance, and read on in d1 far ahead."""
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 100.0)
    mark.observe("d2", 100.0)
    caught_up_check(mark, {"d1": 5, "d2": 7})
    mark.hand_over({"d2": 7})
    mark.observe("d1", 9000.0)
    return mark


def test_a_source_handed_over_holds_time_until_its_new_owner_forwarded_past_it() -> None:
    """A rebalance gives d2 to another ingest instance, which partitions of
    the customer stream may not have heard from yet: this instance's time
    must not run past d2's events on their way through the other one (the
    chaos suite saw silences invented for devices just handed over)."""
    wall = Wall()
    mark = handed_d2_over(wall)
    caught_up_check(mark, {"d1": 9})
    assert mark.stamp() == 100.0 and not mark.caught_up

    wall.now = 1.0
    mark.settle({"d2": 7})  # only what this one had read (its own commit)
    caught_up_check(mark, {"d1": 9})
    assert mark.stamp() == 100.0
    mark.settle({"d2": 8})  # the new owner forwarded a record of its own
    wall.now = 1.0 + HANDOVER_GRACE_S - 0.1
    mark.settle({"d2": 9})
    caught_up_check(mark, {"d1": 9})
    assert mark.stamp() == 100.0, "its ticks may not have reached every partition yet"
    wall.now = 1.0 + HANDOVER_GRACE_S
    mark.settle({"d2": 9})
    caught_up_check(mark, {"d1": 9})
    assert mark.stamp() == 9000.0 and not mark.handed_over


def test_a_quiet_source_handed_over_holds_time_for_a_while_only() -> None:
    wall = Wall()
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 100.0)
    mark.hand_over({"d2": -1001})  # never read here
    mark.observe("d1", 500.0)
    caught_up_check(mark, {"d1": 3})
    assert mark.stamp() == UNKNOWN, "a source never read may hold anything"
    wall.now = HANDOVER_HOLD_S
    mark.note_read()  # d1 still flowing: no wall-clock ageing
    mark.settle({})
    caught_up_check(mark, {"d1": 3})
    assert mark.stamp() == 500.0


def test_sources_taken_over_hold_time_at_what_was_read_of_them() -> None:
    """An instance given the sources of one that died (no hand-over from a
    SIGKILLed process) is already far ahead on its own sources: until it has
    read the new ones to their end, it vouches for no more than it read of
    them (the chaos suite's kills invented silences for their devices)."""
    wall = Wall()
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 9000.0)
    caught_up_check(mark, {"d1": 5})
    assert mark.stamp() == 9000.0
    mark.take_back(["d2"])  # the other instance died; d2 is ours now
    assert mark.stamp() == UNKNOWN, "d2's next event may be as old as anything"
    mark.observe("d2", 300.0)
    mark.finish_check(mark.begin_check({"d1": 5, "d2": 2}), ends={"d1": 5, "d2": 40})
    assert mark.stamp() == 300.0
    mark.observe("d2", 8000.0)
    caught_up_check(mark, {"d1": 5, "d2": 40})
    assert mark.stamp() == 9000.0 and not mark.joining


def test_the_first_assignment_is_not_a_take_over() -> None:
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0)
    mark.take_back(["d1", "d2"])
    assert not mark.joining
    mark.observe("d1", 10.0)
    mark.observe("d2", 20.0)
    caught_up_check(mark, {"d1": 1, "d2": 1})
    assert mark.stamp() == 20.0


def test_a_source_assigned_back_is_read_here_again() -> None:
    wall = Wall()
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 100.0)
    mark.observe("d2", 50.0)
    mark.hand_over({"d2": 4})
    mark.take_back(["d2"])
    caught_up_check(mark, {"d1": 1, "d2": 4})
    assert mark.stamp() == 100.0 and mark.caught_up


def test_a_source_handed_over_with_nothing_past_what_was_read_stops_holding_at_once() -> None:
    """A check of its end after the hand-over finds nothing this instance had
    not read: no event of it can be on its way through the new owner."""
    wall = Wall()
    mark = IngestWatermark(device_skew_s=0.0, idle_allowance_s=5.0, clock=wall)
    mark.observe("d1", 100.0)
    mark.observe("d2", 100.0)
    before = mark.begin_check({"d1": 5, "d2": 7})
    wall.now = 0.5
    mark.hand_over({"d2": 7})
    mark.observe("d1", 9000.0)
    mark.finish_check(before, ends={"d1": 5, "d2": 7})  # asked before the hand-over
    assert mark.handed_over["d2"][2] is None and mark.stamp() == 100.0
    wall.now = 1.0
    mark.finish_check(mark.begin_check({"d1": 9}), ends={"d1": 9, "d2": 7})
    assert mark.stamp() == 100.0, "the new owner's ticks may not have reached every partition"
    wall.now = 1.0 + HANDOVER_GRACE_S
    caught_up_check(mark, {"d1": 9})
    assert not mark.handed_over and mark.stamp() == 9000.0


def test_a_source_handed_over_with_unread_events_holds_until_its_new_owner_passes() -> None:
    """After a broker restart the ingest group takes tens of seconds to
    settle and the new owner's commits fail meanwhile: a hold released by
    the clock alone could let time run past the source's unread events."""
    wall = Wall()
    mark = handed_d2_over(wall)
    for second in range(1, 120):
        wall.now = float(second)
        mark.settle({"d2": 7})  # the new owner has committed nothing past it
        mark.finish_check(mark.begin_check({"d1": 9}), ends={"d1": 9, "d2": 12})
        assert mark.stamp() == 100.0
    mark.settle({"d2": 12})
    wall.now += HANDOVER_GRACE_S
    mark.settle({"d2": 12})
    assert not mark.handed_over
    wall.now = HANDOVER_HOLD_S  # and a source nobody reads any more, in the end
    mark.hand_over({"d3": 4})
    wall.now += HANDOVER_HOLD_S
    mark.settle({})
    assert not mark.handed_over
