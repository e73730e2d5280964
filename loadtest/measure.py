"""The benchmark's arithmetic: percentiles, throughput spans, CPU per event, and
which publish a firing answers to. Pure Python, so every figure of
``iotcrm bench`` can be checked in unit tests.

>>> percentile([10.0, 20.0, 30.0, 40.0], 50)
25.0
>>> series = ProgressSeries()
>>> for wall, done, cpu in [(0.0, 0, 1.0), (1.0, 100, 1.5), (3.0, 500, 2.5), (4.0, 500, 2.6)]:
...     series.add(wall, done, cpu)
>>> span = series.span(500)
>>> span.events, span.seconds, round(span.eps, 1), span.cpu_s
(500, 3.0, 166.7, 1.5)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.quality.timestamps import event_time
from engine.quality.verdicts import RejectedInput


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between the
    closest ranks (numpy's default); ``values`` need not be sorted.

    >>> percentile([3.0, 1.0, 2.0], 0), percentile([3.0, 1.0, 2.0], 100)
    (1.0, 3.0)
    >>> round(percentile(list(range(1, 101)), 99), 2)
    99.01
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], not {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max of latencies given in seconds, in milliseconds.

    >>> latency_summary([0.010, 0.020, 0.030])["p50_ms"]
    20.0
    >>> latency_summary([])["p99_ms"] is None
    True
    """
    if not latencies_s:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    in_ms = [value * 1000.0 for value in latencies_s]
    return {
        "n": len(in_ms),
        "p50_ms": round(percentile(in_ms, 50), 2),
        "p90_ms": round(percentile(in_ms, 90), 2),
        "p99_ms": round(percentile(in_ms, 99), 2),
        "max_ms": round(max(in_ms), 2),
    }


def cdf_points(values: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """At most ``points`` (value, fraction of values <= value) pairs, for a plot.

    >>> cdf_points([3.0, 1.0, 2.0, 4.0])
    [(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return []
    step = max(1, n // points)
    picks = list(range(step - 1, n, step))
    if picks[-1] != n - 1:
        picks.append(n - 1)
    return [(ordered[i], (i + 1) / n) for i in picks]


def per_million(amount: float, events: int) -> float | None:
    """``amount`` (e.g. CPU seconds) scaled to one million events.

    >>> per_million(2.5, 100_000)
    25.0
    """
    return amount * 1_000_000 / events if events > 0 else None


def cpu_budget(
    before: Mapping[str, float], after: Mapping[str, float], seconds: float, cores: int
) -> dict[str, float]:
    """Where a machine's CPU went over a span, from two readings of CPU
    seconds (the whole machine's busy time under ``"machine"``, each watched
    part under its own name): each part's share, the rest of the busy time as
    ``other`` and the unused time as ``idle``, in % of one core, so that they
    add up to ``cores`` × 100.

    >>> cpu_budget({"machine": 0.0, "kafka": 0.0}, {"machine": 3.0, "kafka": 1.0}, 2.0, 2)
    {'kafka': 50.0, 'other': 100.0, 'idle': 50.0}
    """
    if seconds <= 0:
        raise ValueError(f"a span of {seconds} s has no CPU budget")
    busy = after["machine"] - before["machine"]
    shares = {
        part: round(100 * (after[part] - before.get(part, 0.0)) / seconds, 1)
        for part in after
        if part != "machine"
    }
    shares["other"] = round(max(0.0, 100 * busy / seconds - sum(shares.values())), 1)
    shares["idle"] = round(max(0.0, 100 * cores - 100 * busy / seconds), 1)
    return shares


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 3 places; None when undefined.

    >>> ratio(3.0, 4.0), ratio(1.0, 0.0), ratio(None, 2.0)
    (0.75, None, None)
    """
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


@dataclass(frozen=True)
class Span:
    """Events processed between the first and the last progress observed."""

    events: int
    seconds: float
    cpu_s: float

    @property
    def eps(self) -> float | None:
        return self.events / self.seconds if self.seconds > 0 else None

    @property
    def cpu_s_per_million(self) -> float | None:
        return per_million(self.cpu_s, self.events)


@dataclass
class ProgressSeries:
    """Samples of one contender working through a backlog: wall time, events
    taken in by its first stage, events fully processed by its last stage,
    and CPU seconds used so far."""

    samples: list[tuple[float, int, int, float]] = field(default_factory=list)

    def add(self, wall: float, done: int, cpu_s: float, started: int | None = None) -> None:
        """One sample; ``started`` defaults to ``done`` (a one-stage contender)."""
        self.samples.append((wall, done if started is None else started, done, cpu_s))

    def span(self, total: int) -> Span:
        """From the last sample at which no stage had taken anything in to the
        first sample with ``total`` events done: the "first to last event
        processed" window, rounded outwards to the sampling interval."""
        start = None
        for sample in self.samples:
            if sample[1] > 0:
                break
            start = sample
        if start is None:
            raise ValueError("the first sample already shows progress: no start is known")
        for sample in self.samples:
            if sample[2] >= total:
                return Span(total - start[2], sample[0] - start[0], sample[3] - start[3])
        raise ValueError(f"the series never reached {total} events")

    def steady_eps(self, total: int, low: float = 0.1, high: float = 0.9) -> float | None:
        """Events per second between the samples where ``low`` and ``high``
        shares of ``total`` were done: the rate without start-up and tail
        effects (None when the samples are too coarse to tell).

        >>> series = ProgressSeries()
        >>> for wall, done in [(0.0, 0), (5.0, 100), (6.0, 900), (9.0, 1000)]:
        ...     series.add(wall, done, 0.0)
        >>> series.steady_eps(1000)
        800.0
        """
        lo = next((s for s in self.samples if s[2] >= low * total), None)
        hi = next((s for s in self.samples if s[2] >= high * total), None)
        if lo is None or hi is None or hi[0] <= lo[0]:
            return None
        return (hi[2] - lo[2]) / (hi[0] - lo[0])


def wire_ts(raw: bytes) -> float | None:
    """The event time of a raw device event, as ingest would read it; None
    when it has none (malformed input).

    >>> wire_ts(b'{"id": "e1", "ts": "2025-11-21T04:40:00Z"}'), wire_ts(b'{"ts": 1763700000500}')
    (1763700000.0, 1763700000.5)
    >>> wire_ts(b'not json') is None
    True
    """
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(decoded) is not dict or "ts" not in decoded:
        return None
    try:
        return event_time(decoded["ts"])
    except RejectedInput:
        return None


class PublishClock:
    """When, in wall time, the stream first reached an event time.

    Built from the events of a paced phase in publish order: their event
    times (None for unreadable ones) and publish wall times. A firing stamped
    ``at`` (a condition's event, or a timer due at ``at``) can only happen
    once an event with ``ts >= at`` was published; its latency is counted
    from that publish. Event times are made non-decreasing (a late duplicate
    never moves the clock back).

    >>> clock = PublishClock([100.0, None, 105.0, 103.0, 110.0], [1.0, 1.1, 1.2, 1.3, 1.4])
    >>> clock.published_at(104.0), clock.published_at(100.0), clock.published_at(111.0)
    (1.2, 1.0, None)
    >>> clock.published_at(99.0) is None  # before the phase began
    True
    """

    def __init__(self, event_ts: Iterable[float | None], walls: Iterable[float]) -> None:
        self.ts: list[float] = []
        self.walls: list[float] = []
        high = -math.inf
        for ts, wall in zip(event_ts, walls, strict=True):
            if ts is None:
                continue
            high = max(high, ts)
            self.ts.append(high)
            self.walls.append(wall)

    @property
    def first_ts(self) -> float | None:
        return self.ts[0] if self.ts else None

    def published_at(self, at: float) -> float | None:
        """The wall time of the first event with ``ts >= at``; None when ``at``
        is before the phase's first event or after its last one."""
        if not self.ts or at < self.ts[0]:
            return None
        index = bisect.bisect_left(self.ts, at)
        return self.walls[index] if index < len(self.walls) else None


def action_latencies(
    received: Iterable[tuple[float, dict[str, Any]]], clock: PublishClock
) -> tuple[list[tuple[float, dict[str, Any]]], int]:
    """(latency in seconds, action) for each action received (wall time,
    action body) whose ``at`` falls inside the paced phase; and how many were
    outside it (fired by earlier events, or by time alone after the last
    publish). Actions seen twice (same ``action_id``) count once, at the
    first receipt.

    >>> clock = PublishClock([100.0, 105.0], [1.0, 2.0])
    >>> got = [(1.25, {"action_id": "a", "at": 100.0}), (2.5, {"action_id": "b", "at": 104.0}),
    ...        (2.6, {"action_id": "b", "at": 104.0}), (0.5, {"action_id": "c", "at": 50.0})]
    >>> timed, outside = action_latencies(got, clock)
    >>> [(latency, action["action_id"]) for latency, action in timed], outside
    ([(0.25, 'a'), (0.5, 'b')], 1)
    """
    timed: list[tuple[float, dict[str, Any]]] = []
    outside = 0
    seen: set[Any] = set()
    for wall, action in received:
        action_id = action.get("action_id")
        if action_id in seen:
            continue
        seen.add(action_id)
        published = clock.published_at(float(action["at"]))
        if published is None:
            outside += 1
            continue
        timed.append((wall - published, action))
    return timed, outside


def latency_breakdown(
    timed: Sequence[tuple[float, dict[str, Any]]], clock: PublishClock
) -> dict[str, dict[str, Any]]:
    """Latency summaries per rule, and the share of each latency spent before
    the action was emitted (its ``emitted_at``) versus delivering it.

    >>> clock = PublishClock([100.0], [10.0])
    >>> timed = [(0.5, {"at": 100.0, "emitted_at": 10.2, "rule": {"id": "r"}})]
    >>> breakdown = latency_breakdown(timed, clock)
    >>> breakdown["r"]["p50_ms"], breakdown["r"]["to_emit_p50_ms"]
    (500.0, 200.0)
    """
    by_rule: dict[str, list[tuple[float, float | None]]] = {}
    for latency, action in timed:
        rule = action.get("rule")
        name = rule.get("id", "?") if isinstance(rule, dict) else str(rule)
        published = clock.published_at(float(action["at"]))
        emitted = action.get("emitted_at")
        to_emit = (
            emitted - published
            if isinstance(emitted, int | float) and published is not None
            else None
        )
        by_rule.setdefault(name, []).append((latency, to_emit))
    result: dict[str, dict[str, Any]] = {}
    for name, rows in sorted(by_rule.items()):
        summary = latency_summary([latency for latency, _ in rows])
        emits = [to_emit for _, to_emit in rows if to_emit is not None]
        summary["to_emit_p50_ms"] = round(percentile(emits, 50) * 1000, 2) if emits else None
        result[name] = summary
    return result


# The sustainable rate: a step search over short paced phases ---------------------------


def high_water(values: Iterable[float | None]) -> list[float]:
    """The running maximum of event times, an unreadable one (None) taking its
    predecessor's; -inf before the first readable one. The clock of a stream
    as the contenders see it: a late event never moves it back.

    >>> high_water([5.0, None, 3.0, 7.0])
    [5.0, 5.0, 5.0, 7.0]
    >>> high_water([None, 1.0])
    [-inf, 1.0]
    """
    high = -math.inf
    out: list[float] = []
    for value in values:
        if value is not None and value > high:
            high = value
        out.append(high)
    return out


def step_end(
    clock: Sequence[float],
    start: int,
    rate: float,
    action_ats: Sequence[float],
    *,
    min_actions: int,
    min_s: float,
    max_s: float,
) -> tuple[int, int]:
    """Where a paced step that begins at event ``start`` ends (exclusive), and
    how many expected actions fall inside its event time: the fewest events
    that last ``min_s`` at ``rate`` and hold ``min_actions`` expected actions
    (sorted ``action_ats``), but no more than ``max_s`` worth, nor past the
    stream's end. ``clock`` is ``high_water`` of the stream's event times.

    >>> clock = [float(t) for t in range(100)]  # one event per simulated second
    >>> ats = [10.5, 20.5, 30.5, 80.5]
    >>> step_end(clock, 0, 10.0, ats, min_actions=2, min_s=1.0, max_s=5.0)  # 2 actions by ts 21
    (22, 2)
    >>> step_end(clock, 0, 10.0, ats, min_actions=1, min_s=2.0, max_s=5.0)  # 2 s at 10/s
    (20, 1)
    >>> step_end(clock, 40, 10.0, ats, min_actions=1, min_s=1.0, max_s=3.0)  # at most 3 s
    (70, 0)
    >>> step_end(clock, 90, 10.0, ats, min_actions=1, min_s=1.0, max_s=3.0)  # the stream ends
    (100, 0)
    """
    total = len(clock)
    if start >= total:
        return total, 0
    shortest = min(total, start + max(1, math.ceil(rate * min_s)))
    longest = min(total, max(shortest, start + int(rate * max_s)))
    end = shortest
    first = bisect.bisect_left(action_ats, clock[start])
    wanted = first + min_actions - 1
    if min_actions > 0 and wanted < len(action_ats):
        # The first event whose time reaches the wanted action's: the step must include it.
        reach = bisect.bisect_left(clock, action_ats[wanted], lo=start)
        end = max(end, min(reach + 1, longest))
    elif min_actions > 0:
        end = longest
    inside = bisect.bisect_right(action_ats, clock[end - 1]) - first
    return end, max(0, inside)


def split_by_trigger(
    timed: Iterable[tuple[float, Mapping[str, Any]]], event_ts: Iterable[float | None]
) -> tuple[list[float], list[float]]:
    """Latencies of the actions an event triggered (their ``at`` is the time
    of one of ``event_ts``: conditions, sequences, sliding windows) and of
    those that time passing triggered (a timer's due time: silence, absence,
    a window closing), whose latency is how long event time took to pass it.

    >>> timed = [(0.1, {"at": 100.0}), (2.0, {"at": 150.0}), (0.2, {"at": 200.0})]
    >>> split_by_trigger(timed, [100.0, None, 200.0, 300.0])
    ([0.1, 0.2], [2.0])
    """
    times = {ts for ts in event_ts if ts is not None}
    by_event: list[float] = []
    by_time: list[float] = []
    for latency, action in timed:
        (by_event if float(action["at"]) in times else by_time).append(latency)
    return by_event, by_time


@dataclass(frozen=True)
class StepVerdict:
    passed: bool
    reason: str


def step_verdict(
    latencies_s: Sequence[float], *, limit_ms: float, min_samples: int, fell_behind: bool = False
) -> StepVerdict:
    """Whether a step held event-to-action p99 under ``limit_ms``. A step
    that fell behind (stopped early) did not; nor did one whose p99 is at or
    over the limit, however few its samples (with fewer than 100, the p99 is
    about the slowest one: one slow action in n is more than 1 %). Holding
    needs at least ``min_samples``.

    >>> step_verdict([0.1] * 50, limit_ms=250, min_samples=20)
    StepVerdict(passed=True, reason='p99 < 250 ms')
    >>> step_verdict([0.1] * 45 + [0.3] * 5, limit_ms=250, min_samples=20).reason
    'p99 ≥ 250 ms'
    >>> step_verdict([0.1] * 4 + [0.4], limit_ms=250, min_samples=20).reason
    'p99 ≥ 250 ms'
    >>> step_verdict([0.1] * 5, limit_ms=250, min_samples=20).reason
    'too few samples (5 < 20)'
    >>> step_verdict([], limit_ms=250, min_samples=20, fell_behind=True).reason
    'fell behind (stopped early)'
    """
    if fell_behind:
        return StepVerdict(False, "fell behind (stopped early)")
    limit = f"{limit_ms:g}"
    if latencies_s and percentile([value * 1000.0 for value in latencies_s], 99) >= limit_ms:
        return StepVerdict(False, f"p99 ≥ {limit} ms")
    if len(latencies_s) < min_samples:
        return StepVerdict(False, f"too few samples ({len(latencies_s)} < {min_samples})")
    return StepVerdict(True, f"p99 < {limit} ms")


@dataclass(frozen=True)
class RateSearch:
    """The offered rates to try, one step after another: from ``start`` up by
    ``up`` while steps pass (at most ``ceiling``, the contender's backlog rate:
    more cannot be sustained), down by ``up`` while they fail (not below
    ``floor``), then bisecting between the highest pass and the lowest fail
    above it until they are within ``resolution`` of each other; at most
    ``max_steps`` steps.

    >>> search = RateSearch(start=1000.0, ceiling=4000.0, up=2.0, resolution=0.05, max_steps=8)
    >>> steps = []
    >>> while (rate := search.next_rate(steps)) is not None:
    ...     steps.append((rate, rate <= 2600))  # a contender that sustains 2,600/s
    >>> [rate for rate, _ in steps]
    [1000.0, 2000.0, 4000.0, 3000.0, 2500.0, 2750.0, 2625.0]
    >>> search.bracket(steps)
    (2500.0, 2625.0)
    """

    start: float
    ceiling: float
    up: float = 1.5
    resolution: float = 0.1
    max_steps: int = 6
    floor: float = 0.0

    @staticmethod
    def bracket(steps: Sequence[tuple[float, bool]]) -> tuple[float | None, float | None]:
        """(highest rate that passed, lowest rate above it that failed); None when there is none."""
        passed = [rate for rate, ok in steps if ok]
        low = max(passed) if passed else None
        failed = [rate for rate, ok in steps if not ok and (low is None or rate > low)]
        return low, (min(failed) if failed else None)

    def next_rate(self, steps: Sequence[tuple[float, bool]]) -> float | None:
        """The next rate to try after ``steps`` ((rate, passed) in order); None: done."""
        if len(steps) >= self.max_steps:
            return None
        if not steps:
            return min(self.start, self.ceiling)
        low, high = self.bracket(steps)
        if low is None:
            assert high is not None
            lower = high / self.up
            return lower if lower >= self.floor and lower > 0 else None
        if high is None:
            return min(low * self.up, self.ceiling) if low < self.ceiling else None
        if high <= low * (1 + self.resolution):
            return None
        return (low + high) / 2


def sustainable_summary(
    steps: Sequence[Mapping[str, Any]], ceiling: float | None = None
) -> dict[str, Any]:
    """The outcome of one contender's search from its steps (each with
    ``offered_rate``, ``passed`` and ``latency_samples``): the highest rate
    that held (``rate``), the lowest above it that did not (``failed_at``),
    whether the search reached the contender's backlog rate, and the samples.

    >>> steps = [{"offered_rate": 900.0, "passed": True, "latency_samples": 40},
    ...          {"offered_rate": 1350.0, "passed": False, "latency_samples": 12}]
    >>> summary = sustainable_summary(steps, ceiling=3000.0)
    >>> summary["rate"], summary["failed_at"], summary["at_ceiling"], summary["samples"]
    (900.0, 1350.0, False, 52)
    >>> none_held = [{"offered_rate": 500.0, "passed": False, "latency_samples": 3}]
    >>> sustainable_summary(none_held)["below"]
    500.0
    """
    pairs = [(float(step["offered_rate"]), bool(step["passed"])) for step in steps]
    low, high = RateSearch.bracket(pairs)
    tried = [rate for rate, _ in pairs]
    return {
        "rate": low,
        "failed_at": high,
        # No step held: the rate is below the lowest one tried.
        "below": min(tried) if low is None and tried else None,
        "at_ceiling": bool(low is not None and ceiling and low >= ceiling * 0.999),
        "steps": len(pairs),
        "samples": sum(int(step.get("latency_samples") or 0) for step in steps),
        "min_step_samples": min((int(s.get("latency_samples") or 0) for s in steps), default=0),
    }


def at_least(engine: Mapping[str, Any], peer: Mapping[str, Any]) -> bool | None:
    """Whether the engine's sustainable rate is at least the peer's, from
    two ``sustainable_summary`` results; None when the searches cannot tell.

    >>> at_least({"rate": 1200.0}, {"rate": 1000.0}), at_least({"rate": 900.0}, {"rate": 1000.0})
    (True, False)
    >>> at_least({"rate": None, "below": 400.0}, {"rate": 1000.0})  # under 400 < 1,000
    False
    >>> at_least({"rate": None, "below": 400.0}, {"rate": None, "below": 800.0}) is None
    True
    >>> at_least({"rate": 900.0}, {"rate": None, "below": 800.0})  # the peer held none
    True
    """
    mine, theirs = engine.get("rate"), peer.get("rate")
    if mine is not None and theirs is not None:
        return mine >= theirs
    if mine is None and theirs is not None and engine.get("below") is not None:
        return False if engine["below"] <= theirs else None
    if mine is not None and theirs is None and peer.get("below") is not None:
        return True if mine >= peer["below"] else None
    return None


def state_memory_per_customer(
    small_mb: float | None, large_mb: float | None, small_customers: int, large_customers: int
) -> float | None:
    """KiB of resident memory per customer added: the difference of two runs'
    resident sets over the difference of their fleets.

    >>> state_memory_per_customer(300.0, 345.0, 100, 1000)
    51.2
    >>> state_memory_per_customer(300.0, None, 100, 1000) is None
    True
    """
    if small_mb is None or large_mb is None or large_customers == small_customers:
        return None
    return round((large_mb - small_mb) * 1024 / (large_customers - small_customers), 1)


def stage_split(
    before: Mapping[str, Mapping[str, Any]] | None, after: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Where a phase's event latency went, per stage: the difference of two
    readings of a worker's stage histograms (``/metrics.json``
    ``latency.stages``: count, sum and cumulative bucket counts), as the
    mean and the bucket bound under which 99 % of the phase's records fell.
    Empty when the worker reports no stages (the peer).

    >>> before = {"transit": {"count": 10, "sum_s": 1.0, "le": {"0.05": 10}}}
    >>> after = {"transit": {"count": 110, "sum_s": 6.0, "le": {"0.05": 60, "0.1": 110}}}
    >>> stage_split(before, after)
    {'transit': {'records': 100, 'mean_ms': 50.0, 'p99_below_ms': 100.0}}
    >>> stage_split(None, None)
    {}
    """
    split: dict[str, dict[str, Any]] = {}
    for stage, now in (after or {}).items():
        then = (before or {}).get(stage) or {"count": 0, "sum_s": 0.0, "le": {}}
        records = int(now["count"]) - int(then["count"])
        if records <= 0:
            continue
        # the bucket counts are cumulative and listed only where they changed
        below = None
        count_now = count_then = 0
        for bound in sorted({*now["le"], *then["le"]}, key=float):
            count_now = now["le"].get(bound, count_now)
            count_then = then["le"].get(bound, count_then)
            if count_now - count_then >= 0.99 * records:
                below = float(bound) * 1000
                break
        split[stage] = {
            "records": records,
            "mean_ms": round((float(now["sum_s"]) - float(then["sum_s"])) / records * 1000, 1),
            "p99_below_ms": below,
        }
    return split
