"""Event-time watermarks: how far time has certainly progressed, for idle keys.

Rules fire the timers of an active key when its own events arrive. Keys that
have gone quiet (a silent device) need time from elsewhere. Taking the
largest event time seen is wrong whenever reading is uneven: ingest reads
many device topics at different speeds, so one device can be hours of event
time behind another and would look silent, and a silence action would be
invented. So time for idle keys comes from ingest, which knows what it has
not read yet:

- ingest keeps an ``IngestWatermark`` over the source partitions it reads.
  Every check snapshots what has been read (positions, latest event time per
  source) and asks the broker for the sources' end offsets. A source with
  records past its snapshot position holds the watermark at the latest event
  time read from it; a source read to its end does not (its device is quiet
  now, which is what a silence rule must see). The end offsets must be
  fresh: a client's cached high-water mark can be a second old while the
  consumer catches up, long enough to call a device quiet whose events are
  already in Kafka. Devices publish out of event-time order with each other
  by up to ``device_skew_s`` (clocks, networks, producer batching), so the
  stamped watermark stays that far behind. When every source is read to its
  end and nothing has arrived for the idle allowance, time moves on with the
  wall clock, so a silent device is noticed even when the whole fleet is
  quiet: only then, only while ingest is sure it has read everything.
- every record ingest forwards carries its watermark and ingest's id; an
  idle ingest sends tick records with them, so quiet partitions hear it.
- an ingest instance that is given sources another one read (a rebalance,
  or the other one died) vouches for nothing past what it has read of them
  until it has read them to their end: its older sources may be far ahead
  of theirs.
- the customer actor keeps a ``PartitionClock`` per partition: the smallest
  watermark of the ingest instances heard from recently, where *recently*
  is measured in the stream (the records' produce times), not by the
  actor's wall clock. The actor never ages time itself: while an ingest
  instance is down, failing over or behind, its last watermark holds time
  back, so a partition that is being failed over fires nothing early, and
  an actor replaying a backlog after a failover sees time move exactly as
  it did the first time.

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
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

#: What a watermark is kept over: ingest's (topic, partition) pairs.
Source = TypeVar("Source", bound=Hashable)

#: An ingest instance silent for this long while another one kept talking
#: (by the times ingest stamped their records) no longer holds time back.
#: Longer than a dead instance's sources take to reach a new owner (the
#: session timeout, then a rebalance).
SOURCE_SILENCE_S = 30.0
#: A gap this long between two records of one instance (it ticks every
#: partition each second) breaks its run: an outage silenced everyone, so
#: nobody's silence counts until the others have talked for
#: ``SOURCE_SILENCE_S`` again.
RUN_GAP_S = 3.0

#: A source handed to another ingest instance holds this one's time back until
#: the new owner has forwarded past what this one read of it, or a check of
#: its end after the hand-over found nothing past it, and this long more (the
#: new owner's first ticks reach every partition of the customer stream).
HANDOVER_GRACE_S = 2.0
#: The longest a handed-over source holds time back without either, so a
#: source nobody reads any more (its topic deleted) cannot stop time for good.
#: Not shorter: after a broker restart the group can take tens of seconds to
#: settle and the new owner's commits fail meanwhile, and time released
#: before the new owner forwards the source's unread events runs past them.
HANDOVER_HOLD_S = 300.0

#: Record headers ingest stamps on every forwarded event and tick: its
#: watermark, its instance id, and its wall clock when it stamped them (epoch
#: ms; the records' Kafka timestamps are their events' times, not this).
WATERMARK_HEADER = "iotcrm-wm"
SOURCE_HEADER = "iotcrm-src"
SENT_HEADER = "iotcrm-sent"

#: Key of the tick records ingest sends to customer-stream partitions it has
#: nothing else for: they carry its watermark headers and no event.
TICK_KEY = b"\x00tick"

#: The stamp of an ingest that cannot vouch for any time yet (a source it
#: has not read holds anything): it holds its partitions' time back.
UNKNOWN = float("-inf")


class TimeHeaders(NamedTuple):
    source: str | None
    watermark: float | None
    #: when ingest stamped the record (epoch seconds), if it says
    sent_at: float | None


def time_headers(
    headers: Iterable[tuple[str, bytes]] | None,
    source_header: str = SOURCE_HEADER,
    watermark_header: str = WATERMARK_HEADER,
    sent_header: str = SENT_HEADER,
) -> TimeHeaders:
    """The ingest instance id, watermark and stamping time a record carries.

    >>> time_headers([("iotcrm-src", b"ingest-1"), ("iotcrm-wm", b"1700000000.5"),
    ...               ("iotcrm-sent", b"1800000000250")])
    TimeHeaders(source='ingest-1', watermark=1700000000.5, sent_at=1800000000.25)
    """
    source = watermark = sent_at = None
    for name, value in headers or ():
        if name == source_header:
            source = value.decode()
        elif name == watermark_header:
            watermark = float(value)
        elif name == sent_header:
            sent_at = int(value) / 1000
    return TimeHeaders(source, watermark, sent_at)


def sent_header(name: str = SENT_HEADER) -> tuple[str, bytes]:
    """The header that says when a record was stamped: now."""
    return name, str(int(time.time() * 1000)).encode()


class SourceWatermarks(Generic[Source]):
    """The watermark over one consumer's source partitions."""

    def __init__(self) -> None:
        self.latest: dict[Source, float] = {}
        self.current: float | None = None

    def observe(self, source: Source, ts: float) -> None:
        if ts > self.latest.get(source, float("-inf")):
            self.latest[source] = ts

    def advance(
        self, lagging: Iterable[Source], latest: Mapping[Source, float] | None = None
    ) -> float | None:
        """The watermark, given the sources that still have unread records
        and the latest event time read from each (default: as of now).

        A lagging source nothing was read from yet keeps the watermark where
        it is: its next event could be as old as anything.
        """
        latest = self.latest if latest is None else latest
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


@dataclass(frozen=True)
class EndCheck(Generic[Source]):
    """What had been read when the end offsets were asked for."""

    positions: dict[Source, int]
    latest: dict[Source, float]
    asked_at: float


class IngestWatermark(Generic[Source]):
    """Ingest's watermark over the source partitions it reads, as stamped on
    what it forwards (``stamp``).

    >>> wall = [0.0]
    >>> mark = IngestWatermark(device_skew_s=60.0, idle_allowance_s=5.0, clock=lambda: wall[0])
    >>> mark.stamp()  # nothing known yet: hold time back
    -inf
    >>> mark.observe("d1", 1000.0); mark.observe("d2", 4000.0)
    >>> check = mark.begin_check({"d1": 7, "d2": 3})
    >>> mark.finish_check(check, ends={"d1": 9, "d2": 3})  # d1 has two unread records
    >>> mark.stamp()
    940.0
    >>> mark.finish_check(mark.begin_check({"d1": 9, "d2": 3}), ends={"d1": 9, "d2": 3})
    >>> mark.stamp()  # everything read: the newest event time, less the skew
    3940.0
    >>> wall[0] = 30.0  # nothing read for 30 s, and everything was read to its end
    >>> mark.finish_check(mark.begin_check({"d1": 9, "d2": 3}), ends={"d1": 9, "d2": 3})
    >>> mark.stamp()
    3970.0
    """

    def __init__(
        self,
        device_skew_s: float,
        idle_allowance_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources: SourceWatermarks[Source] = SourceWatermarks()
        self.device_skew_s = device_skew_s
        self.idle_allowance_s = idle_allowance_s
        self._clock = clock
        #: when a record was last read from any source
        self.read_at = clock()
        #: whether the last check found every source read to its end
        self.caught_up = False
        #: sources with unread records at the last check
        self.lagging = 0
        #: sources another instance reads now: the offset this one had read
        #: them to, when it gave them up, when the new owner was seen past it
        self.handed_over: dict[Source, tuple[int, float, float | None]] = {}
        #: sources taken over while this instance vouched for a time, not yet
        #: read to their end: they hold the stamp at what was read of them
        self.joining: set[Source] = set()

    @property
    def current(self) -> float | None:
        """The watermark of what has been read (not aged, no skew)."""
        return self.sources.current

    def observe(self, source: Source, ts: float) -> None:
        self.sources.observe(source, ts)

    def note_read(self) -> None:
        """A poll returned records (accepted or not): the sources are not quiet."""
        self.read_at = self._clock()

    def begin_check(self, positions: Mapping[Source, int]) -> EndCheck[Source]:
        """Snapshot what has been read, before asking for the end offsets."""
        return EndCheck(dict(positions), dict(self.sources.latest), self._clock())

    def finish_check(self, check: EndCheck[Source], ends: Mapping[Source, int]) -> None:
        """Apply end offsets asked for after ``check`` was taken. A source
        without a known end counts as lagging, and so does one handed over."""
        lagging = [
            source
            for source, position in check.positions.items()
            if position < ends.get(source, position + 1)
        ]
        self.lagging = len(lagging)
        for source, (offset, since, passed) in list(self.handed_over.items()):
            end = ends.get(source)
            if passed is None and end is not None and end <= offset and since < check.asked_at:
                # Asked after the hand-over: nothing arrived past what this
                # instance read and forwarded, so no event of it is in flight.
                self.handed_over[source] = (offset, since, self._clock())
        self._release_handed_over()
        self.sources.advance([*lagging, *self.handed_over], check.latest)
        # A source assigned after the snapshot was not judged: it stays joining.
        self.joining.difference_update(set(check.positions).difference(lagging))
        # Caught up only if nothing was read after the snapshot either.
        self.caught_up = not lagging and not self.handed_over and self.read_at <= check.asked_at

    def hand_over(self, read_to: Mapping[Source, int]) -> None:
        """Sources now another ingest instance's (a rebalance), with the offset
        this one had read each to. Until the new owner is heard everywhere,
        this one's watermark would vouch for events only the new owner will
        forward: so they keep holding it back at what this one read of them
        (``settle`` says when they stop)."""
        now = self._clock()
        for source, offset in read_to.items():
            self.handed_over[source] = (offset, now, None)

    def take_back(self, sources: Iterable[Source]) -> None:
        """Sources assigned to this instance (again, or taken over from one
        that gave them up or died). Once this instance vouches for a time,
        its other sources may be far ahead of the ones it is given: until a
        check finds them read to their end, they hold the stamp at the
        latest event time read from them (unknown before the first)."""
        for source in sources:
            self.handed_over.pop(source, None)
            if self.sources.current is not None:
                self.joining.add(source)

    def settle(self, committed: Mapping[Source, int]) -> None:
        """The group's committed offsets of the handed-over sources. A source
        stops holding time back ``HANDOVER_GRACE_S`` after its new owner
        committed past what this instance had read (it forwarded something
        new, and its ticks follow every commit) or a check found nothing past
        it (``finish_check``); without either, ``HANDOVER_HOLD_S`` after the
        hand-over."""
        now = self._clock()
        for source, (offset, since, passed) in list(self.handed_over.items()):
            if passed is None and committed.get(source, -1) > offset:
                self.handed_over[source] = (offset, since, now)
        self._release_handed_over()

    def _release_handed_over(self) -> None:
        now = self._clock()
        for source, (_, since, passed) in list(self.handed_over.items()):
            if now - since >= HANDOVER_HOLD_S or (
                passed is not None and now - passed >= HANDOVER_GRACE_S
            ):
                del self.handed_over[source]

    def stamp(self) -> float:
        """The time ingest vouches for: every record it has not forwarded yet
        is at most ``device_skew_s`` older; ``UNKNOWN`` while it is not sure
        of any time."""
        base = self.sources.current
        if base is None:
            return UNKNOWN
        if self.joining:
            latest = self.sources.latest
            if any(source not in latest for source in self.joining):
                return UNKNOWN
            base = min(base, *(latest[source] for source in self.joining))
        if self.caught_up:
            idle = self._clock() - self.read_at
            if idle > self.idle_allowance_s:
                base += idle
        return base - self.device_skew_s


class PartitionClock:
    """Event time of one actor partition, for the timers of its idle keys:
    the smallest watermark of the ingest instances still talking. An
    instance stops counting once another one has talked without a break for
    ``SOURCE_SILENCE_S`` after its last word, by the times ingest stamped
    the records: so an actor replaying a backlog ages nothing (time moves as
    the stream says, however late the actor reads it), and an outage that
    silences every instance (a broker restart) ages none of them.

    >>> clock = PartitionClock()
    >>> clock.heard("ingest-a", watermark=900.0, produced_at=0.0)
    >>> for second in range(1, 32):  # b ticks on; a is gone
    ...     clock.heard("ingest-b", watermark=950.0 + second, produced_at=float(second))
    ...     if second == 30:
    ...         print(clock.now())
    900.0
    >>> clock.now()
    981.0
    """

    def __init__(self) -> None:
        #: ingest instance -> (its latest watermark, when that record was
        #: stamped, when its current unbroken run of records began)
        self.sources: dict[str, tuple[float, float, float]] = {}

    def heard(self, source: str | None, watermark: float, produced_at: float | None) -> None:
        """An ingest instance vouched for ``watermark`` on a record (an event's
        or a tick) it stamped at ``produced_at`` (None: not said, taken as
        the newest yet). Records of one instance reach a partition in the
        order it produced them, so its latest word counts, also when it takes
        time back (it was given sources that are behind the others it reads)."""
        key = source or ""
        previous = self.sources.get(key)
        if produced_at is None:
            newest = max((sent for _, sent, _ in self.sources.values()), default=UNKNOWN)
            produced_at = newest if previous is None else max(newest, previous[1])
        if previous is None:
            self.sources[key] = (watermark, produced_at, produced_at)
        elif produced_at >= previous[1]:
            unbroken = produced_at - previous[1] <= RUN_GAP_S
            self.sources[key] = (watermark, produced_at, previous[2] if unbroken else produced_at)

    def snapshot(self) -> dict[str, list[float]]:
        """Each ingest instance's latest watermark, its stamping time and the
        start of its run, for a checkpoint (JSON: -inf becomes null)."""
        return {source: list(entry) for source, entry in self.sources.items()}

    def restore(self, marks: Mapping[str, Any]) -> None:
        """Resume from a checkpoint's ``snapshot``; ``None`` is ``UNKNOWN``
        (JSON has no infinity). Older checkpoints hold a bare watermark, or a
        watermark and a stamping time: they count as stamped long ago, or as
        a run that began then.

        >>> clock = PartitionClock()
        >>> clock.restore({"ingest-a": [900.0, 10.0, 2.0], "ingest-b": [950.0, 12.0, 3.0]})
        >>> clock.now(), clock.snapshot()["ingest-a"]
        (900.0, [900.0, 10.0, 2.0])
        >>> clock.restore({"ingest-a": [900.0, 10.0], "ingest-c": None})
        >>> clock.now()
        -inf
        """

        def known(value: float | None) -> float:
            return UNKNOWN if value is None else value

        self.sources = {}
        for source, entry in marks.items():
            fields = entry if isinstance(entry, list) else [entry]
            mark, sent, since = [*fields, None, None][:3]
            sent = known(sent)
            self.sources[source] = (known(mark), sent, sent if since is None else since)

    def hold(self) -> None:
        """Every instance known holds time back (its mark unknown) until it
        talks again, or falls silent for good.

        >>> clock = PartitionClock()
        >>> clock.heard("ingest-a", 900.0, produced_at=1.0)
        >>> clock.hold(); clock.now()
        -inf
        >>> clock.heard("ingest-a", 950.0, produced_at=2.0); clock.now()
        950.0
        """
        self.sources = {
            source: (UNKNOWN, sent, since) for source, (_, sent, since) in self.sources.items()
        }

    def now(self) -> float | None:
        entries = self.sources.values()
        if not entries:
            return None
        talking = [
            mark
            for mark, sent, _ in entries
            if not any(
                other_sent - max(other_since, sent) >= SOURCE_SILENCE_S
                for _, other_sent, other_since in entries
            )
        ]
        return min(talking)


#: Checkpoints of a partition's clock kept, newest last: a replay starts at
#: the committed offset, which trails the latest checkpoint by a commit or two.
CLOCK_CHECKPOINTS_KEPT = 8


class ClockCheckpoints:
    """A partition clock's latest checkpoints, each with the stream position
    (next offset of the customer stream) it was taken at.

    A new owner of the partition replays from the committed offset, which
    can trail the newest checkpoint: the states it recovers may be from an
    older checkpoint than the clock (the changelogs of the states and of the
    clock are separate topics, written without a transaction). A clock
    ahead of the replayed records closes windows before their events come
    again, so the replay takes the newest checkpoint taken at or before
    where it starts; with none, the instances it knew hold time back until
    each talks again (or falls silent for good).

    >>> checkpoints = ClockCheckpoints()
    >>> checkpoints.add(100, {"ingest-a": [500.0, 1.0, 0.0]})
    >>> checkpoints.add(180, {"ingest-a": [900.0, 2.0, 0.0]})
    >>> checkpoints.for_replay(150).now(), checkpoints.for_replay(180).now()
    (500.0, 900.0)
    >>> checkpoints.for_replay(40).now()  # older than every checkpoint: hold
    -inf
    >>> ClockCheckpoints.from_plain(checkpoints.to_plain()).for_replay(200).now()
    900.0
    """

    def __init__(self) -> None:
        #: (position, ``PartitionClock.snapshot``), oldest first
        self.entries: list[tuple[int, dict[str, Any]]] = []

    def add(self, position: int, snapshot: dict[str, Any]) -> None:
        kept = [entry for entry in self.entries if entry[0] < position]
        self.entries = [*kept, (position, snapshot)][-CLOCK_CHECKPOINTS_KEPT:]

    def for_replay(self, replay_from: int | None) -> PartitionClock:
        """The clock for a replay that starts at offset ``replay_from``
        (None: from the log's start)."""
        clock = PartitionClock()
        start = replay_from if replay_from is not None else -1
        usable = [snapshot for position, snapshot in self.entries if position <= start]
        if usable:
            clock.restore(usable[-1])
        elif self.entries:
            clock.restore(self.entries[0][1])
            clock.hold()
        return clock

    def to_plain(self) -> dict[str, Any]:
        return {"checkpoints": [[position, snapshot] for position, snapshot in self.entries]}

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> ClockCheckpoints:
        """Also reads the layout before positions were kept (a bare snapshot):
        of unknown position, it can only hold time back."""
        checkpoints = cls()
        if "checkpoints" in plain:
            checkpoints.entries = [
                (int(position), snapshot) for position, snapshot in plain["checkpoints"]
            ]
        elif plain:
            checkpoints.entries = [(2**63, plain)]
        return checkpoints
