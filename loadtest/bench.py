"""``iotcrm bench``: the engine against a Quix Streams peer and a plain-consumer
ceiling, in one run, on the local broker, over the same simulated events.

Run: ``.venv/bin/python -m loadtest.bench`` (or ``iotcrm bench``; ``make bench``
starts the local servers first). Options: ``--customers``, ``--events``,
``--latency-seconds``, ``--contenders``... (``--help``).

1. The simulator generates the fleet's events once (``--customers`` x
   ``--devices-per-customer`` over ``--span``, seeded); every contender gets
   the same bytes, published into its own namespace of topics
   (``<run>-<contender>.device.<id>``, registry, profiles).
2. Per contender (engine first: its rate sets the others' offered load):
   - warm-up: the first ``--warmup`` events, processed before anything is
     timed (process started, partitions assigned, models loaded);
   - max throughput: the process is frozen (SIGSTOP) while the next
     ``--events`` are published, then resumed; events/s is the backlog over
     the time from its first to its last event fully processed, CPU seconds
     per million events come from the process tree's CPU time over the same
     span, and peak RSS from the kernel's high-water mark (VmHWM);
   - latency: the following events are published at half the engine's
     measured maximum for ``--latency-seconds`` with the simulator's pacer;
     a downstream consumer stamps each action as it arrives, and its latency
     is counted from the publish of the first event whose event time reached
     the action's ``at`` (for a condition, its own event; for a timer, the
     event that moved time past it). The ceiling has no actions: its latency
     is from publish to decode, per event;
   - the engine alone then takes the rest of the stream, and its actions are
     scored against the simulation's ground truth.
3. The sustainable rate (``--no-sustainable`` skips it): for the engine and
   the peer, each in a fresh process on a workload of its own (denser in
   actions: ``--search-customers`` over ``--search-span``), paced steps one
   after another (``RateSearch``: from a share of the slowest contender's
   backlog rate, the same for each, up while steps hold, down while they
   fail, then bisecting), each
   sized to hold enough expected actions for a p99 and drained before the
   next; a step holds when the p99 of the event-to-action latencies of the
   actions its events triggered is under 250 ms (timer-driven actions are
   reported apart). Bounded by ``--search-steps`` and ``--search-budget``.
4. Replicas (``--no-replicas``): the main backlog again through ``--replicas``
   engine workers (one app id, each its own web port and state folder,
   progress summed over their ``/metrics.json``) and as many peer processes in one
   consumer group; events/s against one replica's.
5. Growth (``--no-growth``): the engine on ``--growth-factor`` times the
   customers, its events on the shared keyed telemetry topic instead of
   per-device topics: backlog and latency against the main row, peak RSS,
   and the memory per customer (the RSS difference over the customers added,
   and encoded states of a sample of customers replayed offline).
6. An offline profile of the engine's hot path (the same ingest inspector,
   customer actor, rules and models, in process, under cProfile) shows where
   its CPU time goes.
7. Results go to ``--out`` (default ``loadtest/results``): ``latest.json``,
   ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import logging
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import cli_args
from engine.config import load_settings
from engine.progress import progress as progress_bar
from loadtest.accuracy import score
from loadtest.episodes import EpisodeShares
from loadtest.measure import (
    ProgressSeries,
    PublishClock,
    RateSearch,
    action_latencies,
    at_least,
    cdf_points,
    cpu_budget,
    high_water,
    latency_breakdown,
    latency_summary,
    per_million,
    ratio,
    split_by_trigger,
    stage_split,
    state_memory_per_customer,
    step_end,
    step_verdict,
    sustainable_summary,
    wire_ts,
)
from loadtest.simulator import GHOST_DEVICE_IDS, SimParams, Simulation

if TYPE_CHECKING:
    from loadtest.contenders import CeilingContender, Contender, ProcessTree, Progress

# Kafka clients, psutil and the contenders load only when a benchmark runs,
# so that `iotcrm --help` and the other commands stay light.
Record = tuple[str, bytes]

REPO = Path(__file__).resolve().parents[1]
#: Three times the simulator's default episodes (at most one per device): enough
#: actions inside the paced phase to time, and enough expected ones to score.
BENCH_EPISODES = EpisodeShares(
    degrading=0.3, depletion=0.4, usage_fade=0.3, error_burst=0.4, error_reboot=0.25, silence=0.15
)
DEFAULT_OUT = REPO / "loadtest" / "results"
ORDER = ("engine", "peer", "ceiling")
#: The latency targets: at half load (p50 and p99), and what a sustainable rate holds (p99).
P50_LIMIT_MS = 50.0
P99_LIMIT_MS = 250.0
#: Episodes start after this share of the simulated span (``loadtest.episodes``).
EPISODE_WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class BenchOptions:
    customers: int = 100
    devices_per_customer: int = 2
    #: Three days: a customer's usage baseline needs full days before a faded one.
    span_s: float = 3 * 86400.0
    seed: int = 1
    #: Events in the timed backlog (after the warm-up).
    events: int = 80_000
    warmup: int = 2_000
    latency_seconds: float = 30.0
    #: The offered load of the latency phase as a share of the engine's max.
    load_share: float = 0.5
    #: A fixed offered load instead (events/s; 0: ``load_share`` of the engine's max).
    rate: float = 0.0
    contenders: tuple[str, ...] = ORDER
    partitions: int = 4
    profile_events: int = 20_000
    #: Length of the paced phase of the profiled engine run (0: no live profile).
    live_profile_seconds: float = 15.0
    #: Also time the ceiling with batched fetches over the paced phase.
    fetch_probe: bool = True
    #: The step search for each contender's sustainable rate.
    sustainable: bool = True
    #: Its own workload: denser in actions than the main one (a shorter span,
    #: so the same episodes per device fall in fewer events), and longer (enough
    #: events for steps of several seconds at thousands of events a second; more
    #: devices would mostly load the broker, with a partition each).
    search_customers: int = 200
    search_span_s: float = 24 * 3600.0
    #: The first step's rate, for every contender, as a share of the slowest
    #: contender's backlog rate. Paced steps cost far more per event than a
    #: backlog (each event is a batch of its own), and on per-device topics
    #: the broker and the publisher top out near 600/s on the two cores here:
    #: 0.3 always failed, and took a third of the time budget doing so.
    search_start_share: float = 0.1
    search_up: float = 1.5
    #: Stop bisecting once the highest pass and the lowest fail are this close.
    search_resolution: float = 0.15
    search_max_steps: int = 5
    #: A step lasts at least this long and holds at least this many expected actions...
    search_min_step_s: float = 4.0
    search_min_actions: int = 40
    #: ...but lasts no longer than this.
    search_max_step_s: float = 30.0
    #: A step stops early once the contender is this many seconds of load behind.
    search_abort_lag_s: float = 2.0
    #: Wall-time budget of one contender's steps.
    search_budget_s: float = 120.0
    #: Worker replicas (engine) and processes in one consumer group (peer); < 2: no row.
    replicas: int = 2
    #: The growth row: the engine on ``growth_factor`` times the customers (0: none).
    growth_factor: int = 10
    out: Path = DEFAULT_OUT
    bootstrap: str | None = None
    keep: bool = False


@dataclass
class Workload:
    """The generated events, split into the phases every contender sees."""

    sim: Simulation
    records: list[Record]
    truth: dict[str, Any]
    warmup: list[Record]
    backlog: list[Record]
    rest: list[Record]
    device_ids: list[str] = field(default_factory=list)

    def live(self, rate: float, seconds: float) -> list[Record]:
        return self.rest[: max(1, int(rate * seconds))]


def _params(options: BenchOptions, customers: int, span_s: float) -> SimParams:
    return SimParams(
        customers=customers,
        devices_per_customer=options.devices_per_customer,
        seed=options.seed,
        span_s=span_s,
        episodes=BENCH_EPISODES,
    )


def _device_ids(sim: Simulation) -> list[str]:
    return [d.device_id for d in sim.fleet.devices] + list(GHOST_DEVICE_IDS)


def generate_search(options: BenchOptions) -> Workload:
    """The sustainable-rate search's stream: a warm-up, then the steps' events
    (``rest``), in order; the truth's expected actions size the steps. The
    steps begin where episodes do (a tenth into the span: before, there is no
    action to time), the warm-up is the events just before."""
    sim = Simulation(_params(options, options.search_customers, options.search_span_s))
    records = list(sim.events())
    truth = sim.truth()
    cut = sim.start_ts + EPISODE_WARMUP_SHARE * options.search_span_s
    clock = high_water(wire_ts(value) for _, value in records)
    begin = bisect.bisect_left(clock, cut)
    records = records[max(0, begin - options.warmup) :]
    warm = records[: options.warmup]
    return Workload(sim, records, truth, warm, [], records[options.warmup :], _device_ids(sim))


def generate_growth(options: BenchOptions) -> Workload:
    """The growth row's stream: ``growth_factor`` times the customers, the
    same span, from where episodes begin (the first tenth of the span has
    none, and the latency phase needs actions); as many events as the main
    workload's warm-up and backlog, then as many again for the latency phase."""
    customers = options.customers * options.growth_factor
    sim = Simulation(_params(options, customers, options.span_s))
    cut = sim.start_ts + EPISODE_WARMUP_SHARE * options.span_s
    needed = options.warmup + 2 * options.events
    records: list[Record] = []
    for device_id, value in sim.events():
        if not records:
            ts = wire_ts(value)
            if ts is None or ts < cut:
                continue
        records.append((device_id, value))
        if len(records) >= needed:
            break
    end = options.warmup + options.events
    return Workload(
        sim,
        records,
        {"expected_actions": []},  # the simulation is not run to its end
        records[: options.warmup],
        records[options.warmup : end],
        records[end:],
        _device_ids(sim),
    )


def generate(options: BenchOptions) -> Workload:
    params = SimParams(
        customers=options.customers,
        devices_per_customer=options.devices_per_customer,
        seed=options.seed,
        span_s=options.span_s,
        episodes=BENCH_EPISODES,
    )
    sim = Simulation(params)
    records = list(sim.events())
    truth = sim.truth()
    needed = options.warmup + options.events
    if len(records) < needed + 1000:
        raise ValueError(
            f"the simulation has {len(records)} events, too few for a warm-up of "
            f"{options.warmup} and a backlog of {options.events} plus a latency phase: "
            "add --customers or --span, or lower --events"
        )
    warm, backlog = records[: options.warmup], records[options.warmup : needed]
    devices = [d.device_id for d in sim.fleet.devices] + list(GHOST_DEVICE_IDS)
    return Workload(sim, records, truth, warm, backlog, records[needed:], devices)


@dataclass
class PhaseResult:
    """What one contender measured."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _feed(
    contender: Contender, events: list[Record], rate: float = 0.0, linger_ms: int = 20
) -> list[float]:
    """Publish ``events`` to the contender (``rate`` per second, 0: at once),
    to its per-device topics or its shared keyed topic; returns their publish
    wall times."""
    from loadtest.feed import Feeder

    async with Feeder(contender.bootstrap, contender.device_prefix, linger_ms) as feeder:
        return await feeder.publish_events(events, rate, shared_topic=contender.shared_topic)


async def _prepare(contender: Contender, work: Workload, warmup: bool = True) -> None:
    from loadtest.feed import Feeder, create_topics

    plans = contender.topic_plans(work.device_ids)
    await create_topics(contender.bootstrap, plans)
    await contender.prepare()
    async with Feeder(contender.bootstrap, contender.device_prefix) as feeder:
        await feeder.wait_for_leaders([plan.name for plan in plans])
        await feeder.publish_json(contender.registry_topic, work.sim.registry_records())
        await feeder.publish_json(contender.customers_topic, work.sim.profiles())
        if not warmup:
            return
        await feeder.publish_events(work.warmup, shared_topic=contender.shared_topic)


async def _backlog(
    contender: Contender, work: Workload, base: Progress
) -> tuple[float, dict[str, Any]]:
    """Freeze, publish the backlog, resume; sample until it is processed.
    Returns the wall time of the resume and the figures."""
    import psutil

    assert contender.tree is not None
    tree = contender.tree
    tree.suspend()
    try:
        published_in = time.monotonic()
        await _feed(contender, work.backlog)
        published_in = time.monotonic() - published_in
    finally:
        cpu = tree.cpu_s()
        psutil.cpu_percent()  # starts the machine-wide busy share over the span
        load_before = os.getloadavg()[0]
        tree.resume()
    resumed_at = time.time()
    series = ProgressSeries()
    series.add(resumed_at, 0, cpu, started=0)
    total = len(work.backlog)
    deadline = time.monotonic() + max(900.0, total / 50)
    with progress_bar(f"{contender.name}: backlog", total=total) as bar:
        while True:
            progress = await contender.progress()
            now, cpu = time.time(), tree.cpu_s()
            if progress is not None:
                done = progress.done - base.done
                bar.update(min(done, total) - bar.n)
                # The moment the last record was processed, when the contender says it exactly.
                at = progress.last_at if done >= total and progress.last_at else now
                series.add(at, done, cpu, started=progress.started - base.started)
                if done >= total:
                    break
            if not contender.alive():
                raise RuntimeError(f"{contender.name} exited; log tail:\n{contender.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{contender.name} did not process the backlog in time")
            await asyncio.sleep(0.1)
    span = series.span(total)
    return resumed_at, {
        "backlog_events": total,
        "backlog_published_s": round(published_in, 2),
        "eps": round(span.eps or 0.0, 1),
        "steady_eps": _rounded(series.steady_eps(total), 1),
        "backlog_seconds": round(span.seconds, 2),
        "cpu_s": round(span.cpu_s, 2),
        "cpu_s_per_million": _rounded(span.cpu_s_per_million, 1),
        "events_per_cpu_s": _rounded(
            1e6 / span.cpu_s_per_million if span.cpu_s_per_million else None, 0
        ),
        "cpu_utilisation": round(span.cpu_s / span.seconds, 3) if span.seconds else None,
        "machine_busy_pct": psutil.cpu_percent(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def measure(
    contender: Contender,
    work: Workload,
    rate: float | None,
    options: BenchOptions,
    tail: bool = True,
) -> PhaseResult:
    """One contender through warm-up, backlog, latency (and, for the engine
    with ``tail``, the rest, whose actions are scored)."""
    from loadtest.contenders import CeilingContender, EngineContender, MachineBudget
    from loadtest.feed import ActionReader

    result = PhaseResult(contender.name)
    _log(f"{contender.name}: creating topics and publishing reference data and warm-up")
    await _prepare(contender, work)
    contender.start()
    try:
        base = await contender.wait_done(len(work.warmup), timeout_s=300)
        _log(f"{contender.name}: warmed up; publishing a backlog of {len(work.backlog)} frozen")
        resumed_at, figures = await _backlog(contender, work, base)
        result.figures.update(figures)
        assert contender.tree is not None
        # Memory with the same events in the state as any other run of this workload size.
        result.figures["rss_after_backlog_mb"] = round(contender.tree.rss_mb(), 1)
        if contender.name != "ceiling":  # its exact figures come from its own timings, later
            _log(
                f"{contender.name}: {figures['eps']:,.0f} events/s over "
                f"{figures['backlog_seconds']} s (steady {figures['steady_eps']}), "
                f"{figures['cpu_s_per_million']} CPU s/M"
            )
        if rate is None:
            rate = result.figures["eps"] * options.load_share
        reader = (
            ActionReader(contender.bootstrap, contender.action_topics)
            if contender.action_topics
            else None
        )
        if reader is not None:
            await reader.start()
        try:
            live = work.live(rate, options.latency_seconds)
            _log(f"{contender.name}: latency phase, {len(live)} events at {rate:,.0f}/s")
            live_started = time.time()
            assert contender.tree is not None
            live_cpu = contender.tree.cpu_s()
            roles_before = contender.tree.cpu_s_by_role()
            budget = MachineBudget(contender.name, contender.tree)
            machine_before = budget.reading()
            before = len(work.warmup) + len(work.backlog)
            histograms_before = _labelled_reading(contender)
            lag = asyncio.create_task(_sample_lag(contender, before, rate, live_started, len(live)))
            try:
                walls = await _feed(contender, live, rate=rate, linger_ms=1)
                await contender.wait_done(before + len(live), timeout_s=300)
            finally:
                lag.cancel()
                lags = (await asyncio.gather(lag, return_exceptions=True))[0]
            live_cpu = contender.tree.cpu_s() - live_cpu
            live_s = time.time() - live_started
            split = _labelled_split(contender, histograms_before)
            result.figures.update(
                live_machine=cpu_budget(machine_before, budget.reading(), live_s, budget.cores),
                #: The contender's tree by process (% of one core): for the engine the
                #: worker (the actors) apart from its ingest and sink processes.
                live_processes=_process_shares(contender.tree, roles_before, live_s),
                offered_rate=round(rate, 1),
                live_events=len(live),
                live_seconds=round(live_s, 1),
                live_cpu_s_per_million=_rounded(per_million(live_cpu, len(live)), 1),
                live_lag=_lag_summary(lags if isinstance(lags, list) else []),
                #: The engine's event latency by stage over the paced phase, and
                #: how long its checkpoints held the stream (empty for the others).
                live_stages=split["stages"],
                live_checkpoint=split["checkpoint"],
            )
            if isinstance(contender, EngineContender) and tail:
                rest = work.rest[len(live) :]
                _log(f"{contender.name}: the rest of the stream ({len(rest)} events) for accuracy")
                await _feed(contender, rest)
                await contender.wait_done(len(work.records), timeout_s=900)
            if isinstance(contender, EngineContender):
                result.metrics = contender.metrics
            if reader is not None:
                await reader.drain()
                clock = PublishClock([wire_ts(value) for _, value in live], walls)
                timed, outside = action_latencies(reader.received, clock)
                result.latencies_s = [latency for latency, _ in timed]
                result.actions = [action for _, action in reader.received]
                distinct = {a["action_id"]: a for a in result.actions}.values()
                result.figures["actions_by_rule"] = dict(
                    sorted(Counter(a["rule"]["id"] for a in distinct).items())
                )
                result.figures.update(
                    latency_kind="event to action",
                    actions_outside_latency_phase=outside,
                    latency_by_rule=latency_breakdown(timed, clock),
                )
        finally:
            if reader is not None:
                await reader.stop()
        assert contender.tree is not None
        result.figures["peak_rss_mb"] = round(contender.tree.peak_rss_mb(), 1)
    finally:
        contender.stop()
    if isinstance(contender, CeilingContender):
        _ceiling_figures(contender, work, resumed_at, live_started, result)
    result.figures.update(
        {k: v for k, v in latency_summary(result.latencies_s).items() if k != "n"},
        latency_samples=len(result.latencies_s),
    )
    _log(
        f"{contender.name}: p50 {result.figures['p50_ms']} ms, p99 {result.figures['p99_ms']} ms "
        f"over {len(result.latencies_s)} samples, peak RSS {result.figures['peak_rss_mb']} MB"
    )
    return result


async def _sample_lag(
    contender: Contender, before: int, rate: float, started: float, total: int
) -> list[tuple[float, int, int, int]]:
    """Once a second during the paced phase: (seconds in, events offered so
    far, taken in by the first stage, fully processed), until cancelled."""
    samples: list[tuple[float, int, int, int]] = []
    try:
        while True:
            await asyncio.sleep(1.0)
            progress = await contender.progress()
            elapsed = time.time() - started
            if progress is not None:
                samples.append(
                    (
                        elapsed,
                        min(total, int(elapsed * rate)),
                        progress.started - before,
                        progress.done - before,
                    )
                )
    except asyncio.CancelledError:
        return samples


def _lag_summary(samples: list[tuple[float, int, int, int]]) -> dict[str, Any]:
    """How far behind the offered load each stage fell during the paced phase."""
    if not samples:
        return {}
    return {
        "samples": len(samples),
        "first_stage_max_events": max(
            max(0, offered - started) for _, offered, started, _ in samples
        ),
        "last_stage_max_events": max(max(0, offered - done) for _, offered, _, done in samples),
        "series": [list(sample) for sample in samples],
    }


# The sustainable rate ---------------------------------------------------------------


async def sustainable_search(
    contender: Contender,
    work: Workload,
    backlog_eps: float,
    start_eps: float,
    options: BenchOptions,
) -> dict[str, Any]:
    """One contender's step search (``RateSearch``) over the search workload,
    from ``start_eps``: paced steps one after another in one process, each
    drained before the next, each judged by the event-to-action p99 of its
    own events."""
    from loadtest.feed import ActionReader, Feeder

    search = RateSearch(
        start=start_eps,
        ceiling=backlog_eps,
        up=options.search_up,
        resolution=options.search_resolution,
        max_steps=options.search_max_steps,
        # the same for every contender, as the first rate is
        floor=start_eps / 5,
    )
    clock = high_water(wire_ts(value) for _, value in work.rest)
    action_ats = sorted(float(a["expected_at"]) for a in work.truth["expected_actions"])
    steps: list[dict[str, Any]] = []
    stopped = "the search converged"
    _log(f"{contender.name}: sustainable rate, steps from {search.start:,.0f}/s")
    await _prepare(contender, work)
    contender.start()
    reader = ActionReader(contender.bootstrap, contender.action_topics)
    # One producer for every step, once every topic has a leader: a step must
    # not start with records waiting for topics to become writable.
    feeder = Feeder(contender.bootstrap, contender.device_prefix, linger_ms=1)
    began = time.monotonic()
    try:
        await feeder.__aenter__()
        await feeder.wait_for_leaders(
            [contender.shared_topic] if contender.shared_topic else
            [feeder.topic_of(device_id) for device_id in work.device_ids]
        )  # fmt: skip
        await contender.wait_done(len(work.warmup), timeout_s=300)
        await reader.start()
        began = time.monotonic()  # the budget is the steps'
        position = 0
        while True:
            rate = search.next_rate([(step["offered_rate"], step["passed"]) for step in steps])
            if rate is None:
                if len(steps) >= search.max_steps:
                    stopped = f"{search.max_steps} steps (the most allowed)"
                break
            end, expected = step_end(
                clock,
                position,
                rate,
                action_ats,
                min_actions=options.search_min_actions,
                min_s=options.search_min_step_s,
                max_s=options.search_max_step_s,
            )
            if (end - position) < rate * options.search_min_step_s:
                stopped = "the search workload ran out of events"
                break
            if time.monotonic() - began + (end - position) / rate > options.search_budget_s:
                stopped = f"the time budget ({options.search_budget_s:.0f} s)"
                break
            before = len(work.warmup) + position
            try:
                step = await _search_step(
                    contender, feeder, reader, work.rest[position:end], rate, before, options
                )
            except Exception as exc:  # the steps so far stand
                stopped = f"an error at {rate:,.0f}/s: {type(exc).__name__}: {exc}"[:500]
                _log(f"{contender.name}: {stopped}")
                break
            if step["events"] < end - position:  # stopped early: what its events held
                last = clock[position + max(0, step["events"] - 1)]
                first = bisect.bisect_left(action_ats, clock[position])
                expected = max(0, bisect.bisect_right(action_ats, last) - first)
            step["expected_actions"] = expected
            steps.append(step)
            position += step["events"]
            stages = ", ".join(
                f"{stage} {split['mean_ms']}/{split['p99_below_ms']}"
                for stage, split in {**step["stages"], **step["checkpoint"]}.items()
            )
            _log(
                f"{contender.name}: {rate:,.0f}/s for {step['seconds']} s, "
                f"{step['latency_samples']} samples, p99 {step['p99_ms']} ms: {step['verdict']}"
                + (f" (stages, mean/p99 under, ms: {stages})" if stages else "")
                + (
                    f"; worker loop late up to {step['loop_late_max_ms']} ms, "
                    f"{step['gc_full_collections']} full GCs"
                    if "loop_late_max_ms" in step
                    else ""
                )
            )
    finally:
        await reader.stop()
        await feeder.__aexit__()
        contender.stop()
    summary = sustainable_summary(steps, ceiling=backlog_eps)
    return {
        **summary,
        "backlog_eps": round(backlog_eps, 1),
        "share_of_backlog": ratio(summary["rate"], backlog_eps),
        "stopped_by": stopped,
        "seconds": round(time.monotonic() - began, 1),
        "step_results": steps,
    }


async def _search_step(
    contender: Contender,
    feeder: Any,
    reader: Any,
    events: list[Record],
    rate: float,
    before: int,
    options: BenchOptions,
) -> dict[str, Any]:
    """One paced step: publish at ``rate`` (stopping early once the contender
    falls behind), wait until it processed all of them, time the actions."""
    from loadtest.contenders import MachineBudget

    assert contender.tree is not None
    walls: list[float] = []
    stop = asyncio.Event()
    cpu = contender.tree.cpu_s()
    roles_before = contender.tree.cpu_s_by_role()
    budget = MachineBudget(contender.name, contender.tree)
    machine_before = budget.reading()
    histograms_before = _labelled_reading(contender)
    collections_before = _event_loop(contender).get("gc_full_collections", 0)
    started = time.time()
    lags: list[tuple[float, int]] = []
    loop_late: list[float] = []
    # A publisher slowed down by a busy machine must not stretch a step without end.
    deadline = started + 1.5 * options.search_max_step_s
    stopped: list[str] = []
    watch = asyncio.create_task(
        _watch_lag(
            contender,
            walls,
            before,
            options.search_abort_lag_s,
            stop,
            lags,
            deadline,
            stopped,
            loop_late,
        )
    )
    try:
        await feeder.publish_events(
            events, rate, shared_topic=contender.shared_topic, walls=walls, stop=stop
        )
        published_s = time.time() - started
        machine = cpu_budget(machine_before, budget.reading(), published_s, budget.cores)
        processes = _process_shares(contender.tree, roles_before, published_s)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    await contender.wait_done(before + len(walls), timeout_s=300)
    drained_s = time.time() - started - published_s
    cpu = contender.tree.cpu_s() - cpu
    await reader.drain()
    event_ts = [wire_ts(value) for _, value in events[: len(walls)]]
    clock = PublishClock(event_ts, walls)
    timed, _outside = action_latencies(reader.received, clock)
    # Judged on the actions an event triggered; a timer's latency is how long
    # event time took to pass its due time, which grows as the rate falls.
    latencies, timer_latencies = split_by_trigger(timed, event_ts)
    verdict = step_verdict(
        latencies,
        limit_ms=P99_LIMIT_MS,
        min_samples=min_step_samples(options),
        fell_behind="behind" in stopped,
    )
    summary = latency_summary(latencies)
    timers = latency_summary(timer_latencies)
    return {
        # What was offered: the rate asked for, unless the publisher fell short of it.
        "offered_rate": round(offered_rate(rate, walls), 1),
        "asked_rate": round(rate, 1),
        "events": len(walls),
        "planned_events": len(events),
        "seconds": round(published_s, 1),
        "drained_s": round(drained_s, 1),
        "latency_samples": summary["n"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": summary["max_ms"],
        "timer_samples": timers["n"],
        "timer_p50_ms": timers["p50_ms"],
        "timer_p99_ms": timers["p99_ms"],
        "max_lag_events": max((lag for _, lag in lags), default=None),
        #: The engine's event latency by stage (its records, not only the timed
        #: actions') and how long its checkpoints held its stream, by step.
        **_labelled_split(contender, histograms_before),
        #: (seconds into the step, events published but not yet fully processed)
        "lag_series": [[round(at - started, 1), lag] for at, lag in lags],
        #: The engine worker's event loop over the step: the latest it woke up
        #: (the largest of its 10 s windows sampled while the step ran, so a
        #: little before it too), and the full garbage collections in it.
        **(
            {
                "loop_late_max_ms": round(max(loop_late, default=0.0) * 1000, 1),
                "gc_full_collections": loop["gc_full_collections"] - collections_before,
            }
            if (loop := _event_loop(contender))
            else {}
        ),
        "cpu_s_per_million": _rounded(per_million(cpu, len(walls)), 1),
        #: Where the machine's CPU went while the step's events were published,
        #: and the contender's part of it by process.
        "machine": machine,
        "processes": processes,
        "passed": verdict.passed,
        "verdict": verdict.reason,
        #: Publishing ran out of time before the step's events were all out.
        "cut_short": "deadline" in stopped,
    }


def _process_shares(
    tree: ProcessTree, before: dict[str, float], seconds: float
) -> dict[str, float]:
    """The contender's CPU by process since ``before`` (``cpu_s_by_role``), in
    % of one core: for the engine, the worker (the actors) apart from its
    ingest and sink processes."""
    return {
        role: round(100 * (cpu_s - before.get(role, 0.0)) / seconds, 1)
        for role, cpu_s in tree.cpu_s_by_role().items()
    }


#: The engine's labelled latency histograms a phase is split by (``stage_split``).
LABELLED_HISTOGRAMS = ("stages", "checkpoint")


def _labelled_reading(contender: Contender) -> dict[str, dict[str, Any] | None]:
    """The labelled histograms as they stand, to split a phase from."""
    return {name: _labelled(contender, name) for name in LABELLED_HISTOGRAMS}


def _labelled_split(
    contender: Contender, before: dict[str, dict[str, Any] | None]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each labelled histogram over the phase since ``before`` (``stage_split``)."""
    return {name: stage_split(before[name], _labelled(contender, name)) for name in before}


def _event_loop(contender: Contender) -> dict[str, Any]:
    """The engine worker's event-loop figures of its latest ``/metrics.json``
    (``engine.loop_lag``); empty for the peer."""
    loop: dict[str, Any] = (getattr(contender, "metrics", None) or {}).get("event_loop") or {}
    return loop


def _labelled(contender: Contender, histogram: str) -> dict[str, Any] | None:
    """Labelled latency histograms (``stages`` or ``checkpoint``) of the
    contender's latest ``/metrics.json`` (the engine's)."""
    latency = (getattr(contender, "metrics", None) or {}).get("latency") or {}
    labelled: dict[str, Any] | None = latency.get(histogram)
    return labelled


def offered_rate(asked: float, walls: list[float], slack: float = 0.95) -> float:
    """The rate a paced phase offered: ``asked``, or what the publisher
    achieved (events over their publish span) when that fell below ``slack``
    of it (a busy machine slows the publisher too).

    >>> offered_rate(100.0, [0.0, 0.5, 1.0, 1.5, 2.0])  # 4 intervals in 2 s: 2/s
    2.0
    >>> offered_rate(2.0, [0.0, 0.5, 1.0, 1.5, 2.0]), offered_rate(2.1, [0.0, 0.5, 1.0, 1.5, 2.0])
    (2.0, 2.1)
    >>> offered_rate(50.0, [1.0])
    50.0
    """
    if len(walls) < 2 or walls[-1] <= walls[0]:
        return asked
    achieved = (len(walls) - 1) / (walls[-1] - walls[0])
    return asked if achieved >= slack * asked else achieved


def min_step_samples(options: BenchOptions) -> int:
    """The fewest event-triggered actions a step must time to hold: a quarter
    of the expected actions each step is sized for (some are timer-driven,
    and a step at a low rate is cut at ``search_max_step_s``), at least 10.

    >>> [min_step_samples(BenchOptions(search_min_actions=n)) for n in (80, 40, 8)]
    [20, 10, 10]
    """
    return max(10, options.search_min_actions // 4)


async def _watch_lag(
    contender: Contender,
    walls: list[float],
    before: int,
    limit_s: float,
    stop: asyncio.Event,
    lags: list[tuple[float, int]],
    deadline: float,
    stopped: list[str],
    loop_late: list[float],
) -> None:
    """Twice a second, until cancelled: how many published events are not
    fully processed yet (appended to ``lags`` with the wall time) and, for
    the engine, its event loop's latest wake-up of the last 10 s (to
    ``loop_late``); sets ``stop`` once that is more than ``limit_s`` seconds
    of load twice in a row (a queue of seconds of load is many times the p99
    limit: ``behind`` in ``stopped``), or at ``deadline`` (``deadline``).
    Seconds at the pace the publisher has kept so far, not the one asked
    for: a publisher that cannot keep the asked pace (the broker is busy too)
    would otherwise let the queue grow for a whole step before it counts."""
    over = 0
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            if now > deadline and not stop.is_set():
                stopped.append("deadline")
                stop.set()
            progress = await contender.progress()
            if progress is None or not walls:
                continue
            lag = max(0, len(walls) - (progress.done - before))
            lags.append((now, lag))
            if loop := _event_loop(contender):
                loop_late.append(float(loop.get("recent_max_s", 0.0)))
            pace = len(walls) / max(now - walls[0], 1.0)
            over = over + 1 if lag > limit_s * pace else 0
            if over >= 2 and not stop.is_set():
                stopped.append("behind")
                stop.set()


# Replicas -------------------------------------------------------------------------------


async def replicas_phase(
    contender: Contender, work: Workload, one_replica: dict[str, Any]
) -> dict[str, Any]:
    """The backlog of the main workload through ``contender.replicas``
    processes sharing one consumer group; events/s against one replica's."""
    n = contender.replicas
    _log(f"{contender.name}: {n} replicas; creating topics and publishing reference data")
    await _prepare(contender, work, warmup=False)
    contender.start()
    try:
        await contender.wait_ready()
        # The warm-up in quarters, each once the last is done: every replica
        # joins its groups and gets partitions before the backlog is timed.
        quarter = max(1, len(work.warmup) // 4)
        for start in range(0, len(work.warmup), quarter):
            await _feed(contender, work.warmup[start : start + quarter])
            base = await contender.wait_done(min(len(work.warmup), start + quarter), timeout_s=300)
            await asyncio.sleep(1.0)
        await contender.wait_settled()
        shares_before = _replica_done(contender)
        if not all(shares_before):
            _log(f"{contender.name}: not every replica took part in the warm-up: {shares_before}")
        _log(f"{contender.name}: {n} replicas warmed up; a backlog of {len(work.backlog)} frozen")
        _, figures = await _backlog(contender, work, base)
        shares_after = _replica_done(contender)
        assert contender.tree is not None
        figures["peak_rss_mb"] = round(contender.tree.peak_rss_mb(), 1)
    finally:
        contender.stop()
    worked = [after - before for before, after in zip(shares_before, shares_after, strict=True)]
    total = sum(worked) or 1
    figures.update(
        replicas=n,
        warmup_done_per_replica=shares_before,
        replica_shares=[round(done / total, 3) for done in worked],
        one_replica_eps=one_replica.get("eps"),
        over_one_replica=ratio(figures.get("eps"), one_replica.get("eps")),
        one_replica_cpu_s_per_million=one_replica.get("cpu_s_per_million"),
    )
    _log(
        f"{contender.name}: {n} replicas {figures['eps']:,.0f} events/s, "
        f"{figures['over_one_replica']}x one replica, shares {figures['replica_shares']}"
    )
    return figures


def _replica_done(contender: Contender) -> list[int]:
    """Events each replica fully processed so far (from its latest counters)."""
    from loadtest.contenders import EngineContender, PeerContender

    if isinstance(contender, EngineContender):
        return [
            m["ingest"]["deadlettered"]
            + m["actor"]["events"]
            + m["actor"]["duplicates"]
            + m["actor"]["late"]
            for m in contender.replica_metrics
        ]
    if isinstance(contender, PeerContender):
        return [s["deadlettered"] + s["processed"] for s in contender.statuses]
    return []


# Growth ---------------------------------------------------------------------------------


async def growth_phase(
    run_id: str,
    bootstrap: str,
    work_dir: Path,
    options: BenchOptions,
    base: PhaseResult,
    base_work: Workload,
) -> dict[str, Any]:
    """The engine on ``growth_factor`` times the fleet, its events on the
    shared keyed telemetry topic: backlog and latency against the main row,
    and the memory each customer's state takes."""
    from loadtest.contenders import EngineContender

    _log(f"growth: generating {options.growth_factor}x the fleet")
    work = generate_growth(options)
    contender = EngineContender(
        f"{run_id}g", bootstrap, work_dir / "growth", options.partitions, shared_topic=True
    )
    try:
        phase = await measure(contender, work, options.rate or None, options, tail=False)
    finally:
        await _cleanup(contender, options)
    settings = load_settings()
    _log("growth: encoded customer states of a sample of each fleet, replayed offline")
    small = encoded_states(base_work, settings, len(base_work.records), STATE_SAMPLE)
    large = encoded_states(work, settings, len(work.warmup) + len(work.backlog), STATE_SAMPLE)
    customers = options.customers * options.growth_factor
    figures = phase.figures
    keep = ("eps", "steady_eps", "cpu_s_per_million", "p50_ms", "p99_ms", "latency_samples",
            "offered_rate", "peak_rss_mb", "rss_after_backlog_mb", "live_events", "live_seconds",
            "backlog_events")  # fmt: skip
    return {
        "factor": options.growth_factor,
        "customers": customers,
        "devices": customers * options.devices_per_customer,
        "topics": "shared keyed topic",
        "stream_records": len(work.records),
        "skipped_s": round(EPISODE_WARMUP_SHARE * options.span_s, 1),
        "engine": {k: figures.get(k) for k in keep},
        "base": {k: base.figures.get(k) for k in keep},
        "over_base": {
            k: ratio(figures.get(k), base.figures.get(k))
            for k in ("eps", "p50_ms", "p99_ms", "peak_rss_mb", "rss_after_backlog_mb")
        },
        "state_memory": {
            "rss_kib_per_customer": state_memory_per_customer(
                base.figures.get("rss_after_backlog_mb"),
                figures.get("rss_after_backlog_mb"),
                options.customers,
                customers,
            ),
            "encoded_base": small,
            "encoded_growth": large,
        },
    }


#: Customers whose states are replayed offline for their encoded size.
STATE_SAMPLE = 10


def sample_records(
    records: list[Record], owner: dict[str, str], customers: int
) -> tuple[list[Record], int]:
    """The records of every n-th customer (by id) so that about ``customers``
    are kept, and how many are; ``owner`` maps device ids to customer ids.

    >>> owner = {"d1": "c1", "d2": "c2", "d3": "c3", "d4": "c4"}
    >>> sample_records([("d1", b"a"), ("d2", b"b"), ("d3", b"c"), ("x", b"d")], owner, 2)
    ([('d1', b'a'), ('d3', b'c')], 2)
    """
    ids = sorted(set(owner.values()))
    step = max(1, len(ids) // max(1, customers))
    kept = set(ids[::step][:customers])
    return [r for r in records if owner.get(r[0]) in kept], len(kept)


def encoded_states(
    work: Workload, settings: Any, events: int, customers: int = STATE_SAMPLE
) -> dict[str, Any]:
    """The encoded customer states (``tables.state`` codec) of a sample of
    ``customers`` customers after the first ``events`` records of ``work``
    (theirs among them) went through the worker's hot path, in process."""
    from loadtest.hotpath import HotPath
    from tables.state import CustomerState, encode_state

    class Capturing(HotPath):
        """Keeps the hot path's own map of (decoded) customer states."""

        states: dict[str, CustomerState] | None = None

        def _load(self, states: dict[str, CustomerState], customer_id: str) -> CustomerState:
            self.states = states
            return super()._load(states, customer_id)

    owner = {d.device_id: d.customer_id for d in work.sim.fleet.devices}
    records, _ = sample_records(work.records[:events], owner, customers)
    path = Capturing(settings, work.sim.registry_records(), work.sim.profiles())
    path.run(records, path.fresh())
    sizes = sorted(len(encode_state(state)) for state in (path.states or {}).values())
    return {
        "events": len(records),
        "customers": len(sizes),
        "events_per_customer": round(len(records) / max(1, len(sizes)), 1),
        "mean_bytes": round(sum(sizes) / len(sizes), 1) if sizes else None,
        "p95_bytes": sizes[int(0.95 * (len(sizes) - 1))] if sizes else None,
        "max_bytes": sizes[-1] if sizes else None,
    }


async def fetch_probe(
    run_id: str, bootstrap: str, work_dir: Path, work: Workload, rate: float, options: BenchOptions
) -> dict[str, Any]:
    """The ceiling again, over the same paced events, with batched fetches."""
    from loadtest.contenders import BatchedCeilingContender

    contender = BatchedCeilingContender(run_id, bootstrap, work_dir, options.partitions)
    live = work.live(rate, options.latency_seconds)
    _log(
        f"fetch probe: the ceiling with fetches of >= {contender.fetch_min_bytes} bytes or "
        f"{contender.fetch_max_wait_ms} ms, {len(live)} events at {rate:,.0f}/s"
    )
    await _prepare(contender, work)
    contender.start()
    try:
        await contender.wait_done(len(work.warmup), timeout_s=300)
        assert contender.tree is not None
        cpu = contender.tree.cpu_s()
        started = time.time()
        await _feed(contender, live, rate=rate, linger_ms=1)
        await contender.wait_done(len(work.warmup) + len(live), timeout_s=300)
        cpu = contender.tree.cpu_s() - cpu
    finally:
        contender.stop()
    latencies = _decode_latencies(contender, started)
    summary = latency_summary(latencies)
    return {
        "fetch_max_wait_ms": contender.fetch_max_wait_ms,
        "fetch_min_bytes": contender.fetch_min_bytes,
        "offered_rate": round(rate, 1),
        "live_events": len(live),
        "live_cpu_s_per_million": _rounded(per_million(cpu, len(live)), 1),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "latency_samples": summary["n"],
    }


async def live_profile(
    run_id: str, bootstrap: str, work_dir: Path, work: Workload, rate: float, options: BenchOptions
) -> dict[str, Any]:
    """A second engine, run under cProfile through the paced phase alone (the
    profiler slows it down, so none of its figures are the benchmark's)."""
    import pstats

    from loadtest.contenders import EngineContender
    from loadtest.harness import ConditionTimeout, wait_for
    from loadtest.hotpath import LIVE_COMPONENTS, summarize_profile

    path = work_dir / "engine-live.prof"
    contender = EngineContender(
        f"{run_id}p", bootstrap, work_dir / "profiled", options.partitions, profile_to=path
    )
    live = work.rest[: max(1, int(rate * options.live_profile_seconds))]
    _log(f"live profile: an engine under cProfile, {len(live)} events at {rate:,.0f}/s")
    await _prepare(contender, work)
    contender.start()
    caught_up = True
    try:
        await contender.wait_done(len(work.warmup), timeout_s=300)
        contender.profile(True)
        started = time.time()
        await _feed(contender, live, rate=rate, linger_ms=1)
        try:
            await contender.wait_done(
                len(work.warmup) + len(live), timeout_s=2 * options.live_profile_seconds
            )
        except ConditionTimeout:
            caught_up = False
        contender.profile(False)
        seconds = time.time() - started
        await wait_for(path.exists, timeout=60, what="the profile file")
    finally:
        contender.stop()
        if not options.keep:
            await contender.drop_keyspace()
    summary = summarize_profile(pstats.Stats(str(path)), LIVE_COMPONENTS)
    return {
        "offered_rate": round(rate, 1),
        "events": len(live),
        "wall_s": round(seconds, 1),
        "caught_up": caught_up,
        **summary,
    }


def _ceiling_figures(
    contender: CeilingContender,
    work: Workload,
    resumed_at: float,
    live_started: float,
    result: PhaseResult,
) -> None:
    """The ceiling's backlog lasts a fraction of a second, too short for
    100 ms samples: its own receive time of every record gives the span, the
    steady rate and the publish-to-decode latencies exactly."""
    from loadtest.ceiling import read_timings

    _published_ms, received = read_timings(contender.status_path)
    first, count = len(work.warmup), len(work.backlog)
    backlog = received[first : first + count]
    if len(backlog) == count:
        seconds = backlog[-1] - resumed_at
        low, high = backlog[int(count * 0.1)], backlog[int(count * 0.9) - 1]
        result.figures.update(
            eps=round(count / seconds, 1),
            backlog_seconds=round(seconds, 3),
            steady_eps=round(0.8 * count / (high - low), 1) if high > low else None,
        )
        _log(
            f"ceiling: {count / seconds:,.0f} events/s over {seconds:.3f} s, "
            f"{result.figures['cpu_s_per_million']} CPU s/M"
        )
    result.latencies_s = _decode_latencies(contender, live_started)
    result.figures["latency_kind"] = "event to decode"


def _decode_latencies(contender: CeilingContender, since: float) -> list[float]:
    """Publish-to-decode latencies of the records a stopped ceiling got that
    were published from ``since`` (wall time) on."""
    from loadtest.ceiling import read_timings

    published_ms, received = read_timings(contender.status_path)
    cutoff = since * 1000 - 1
    return [r - p / 1000 for p, r in zip(published_ms, received, strict=True) if p >= cutoff]


def accuracy(truth: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
    result = score(truth, actions)
    by_rule = Counter(
        (a.get("rule") or {}).get("id", "?") for a in {a["action_id"]: a for a in actions}.values()
    )
    return {
        "types": {
            kind: {k: row[k] for k in ("precision", "recall", "tp", "fp", "fn")}
            for kind, row in result["types"].items()
        },
        "total": result["total"],
        "episodes": result["episodes"],
        "actions": result["actions"],
        "duplicate_actions": result["duplicate_actions"],
        "consent_violations": result["consent_violations"],
        "actions_by_rule": dict(sorted(by_rule.items())),
        "expected_by_type": dict(
            sorted(Counter(e["type"] for e in truth["expected_actions"]).items())
        ),
    }


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head


async def run_bench(options: BenchOptions, command: str) -> dict[str, Any]:
    """The whole benchmark; returns the results document (also written to ``options.out``)."""
    from loadtest.contenders import CONTENDERS, EngineContender
    from loadtest.feed import clear_earlier_runs, delete_topics
    from loadtest.hotpath import profile_hot_path
    from loadtest.report import servers_summary, write_report

    settings = load_settings()
    bootstrap = options.bootstrap or settings.kafka.bootstrap
    started = time.monotonic()
    servers = await clear_earlier_runs(bootstrap, settings)
    _log(servers_summary(servers))
    _log(
        f"generating the workload ({options.customers} customers x {options.devices_per_customer})"
    )
    work = generate(options)
    _log(f"{len(work.records)} events ({len(work.truth['expected_actions'])} expected actions)")
    run_id = f"bench{int(time.time())}{secrets.token_hex(2)}"
    work_dir = REPO / ".state" / "bench" / run_id
    names = [name for name in ORDER if name in options.contenders]
    phases: dict[str, PhaseResult] = {}
    rate: float | None = options.rate or None
    live: dict[str, Any] = {}
    probe: dict[str, Any] = {}
    scale: dict[str, Any] = {}
    try:
        for name in names:
            contender = CONTENDERS[name](run_id, bootstrap, work_dir, options.partitions)
            try:
                phases[name] = await measure(contender, work, rate, options)
            finally:
                if isinstance(contender, EngineContender) and not options.keep:
                    await contender.drop_keyspace()
            if rate is None:
                rate = phases[name].figures["offered_rate"]
        scale = await scale_phases(run_id, bootstrap, work_dir, work, phases, options)
        if "ceiling" in names and options.fetch_probe and rate:
            probe = await fetch_probe(run_id, bootstrap, work_dir, work, rate, options)
        if "engine" in names and options.live_profile_seconds > 0 and rate:
            live = await live_profile(run_id, bootstrap, work_dir, work, rate, options)
    finally:
        if not options.keep:
            deleted = await delete_topics(bootstrap, run_id)
            deleted += await delete_topics(bootstrap, f"changelog__{run_id}")  # Quix's
            _log(f"deleted {deleted} topics of run {run_id}")
    _log(f"profiling the engine's hot path offline on {options.profile_events} events")
    profile = profile_hot_path(work, settings, options.profile_events)
    results = _document(options, work, phases, {**profile, "live": live}, command, scale)
    results["fetch_probe"] = probe
    results["machine"]["servers_at_start"] = servers
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write_report(results, phases, options.out)
    if not options.keep:  # logs and stores stay behind only when something failed
        shutil.rmtree(work_dir, ignore_errors=True)
    _log(f"results in {options.out}")
    return results


async def scale_phases(
    run_id: str,
    bootstrap: str,
    work_dir: Path,
    work: Workload,
    phases: dict[str, PhaseResult],
    options: BenchOptions,
) -> dict[str, Any]:
    """The sustainable rates, the replica row and the growth row (each one
    that is on, for the engine and the peer among the contenders that ran).
    A part that fails is reported as its error: the rest of the run stands."""
    names = [name for name in ("engine", "peer") if name in phases]
    out: dict[str, Any] = {}
    if options.sustainable and names:
        out["sustainable"] = await _sustainable_rates(
            run_id, bootstrap, work_dir, phases, names, options
        )
    if options.replicas >= 2 and names:
        began = time.monotonic()
        rows: dict[str, Any] = {}
        for name in names:
            rows[name] = await _guarded(
                f"{name} replicas",
                _replica_row(name, run_id, bootstrap, work_dir, work, phases, options),
            )
        out["replicas"] = {
            **rows,
            "count": options.replicas,
            "seconds": round(time.monotonic() - began, 1),
        }
    if options.growth_factor > 1 and "engine" in phases:
        began = time.monotonic()
        out["growth"] = await _guarded(
            "growth", growth_phase(run_id, bootstrap, work_dir, options, phases["engine"], work)
        )
        out["growth"]["seconds"] = round(time.monotonic() - began, 1)
    return out


async def _guarded(what: str, job: Any) -> dict[str, Any]:
    try:
        return await job
    except Exception as exc:  # a failed part must not lose the run's other figures
        _log(f"{what} failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


async def _cleanup(contender: Contender, options: BenchOptions) -> None:
    """Drop a finished contender's keyspace and topics (unless ``--keep``)."""
    from loadtest.contenders import EngineContender
    from loadtest.feed import delete_topics

    if options.keep:
        return
    if isinstance(contender, EngineContender):
        await contender.drop_keyspace()
    await delete_topics(contender.bootstrap, contender.prefix + ".")
    # Quix Streams names its state's changelog topics after the consumer group.
    await delete_topics(contender.bootstrap, f"changelog__{contender.prefix}")


async def _sustainable_rates(
    run_id: str,
    bootstrap: str,
    work_dir: Path,
    phases: dict[str, PhaseResult],
    names: list[str],
    options: BenchOptions,
) -> dict[str, Any]:
    from loadtest.contenders import CONTENDERS

    began = time.monotonic()
    _log(
        f"sustainable rate: generating the search workload ({options.search_customers} "
        f"customers over {options.search_span_s / 3600:g} h)"
    )
    search_work = generate_search(options)
    # Every contender starts at the same rate, a share of the slowest one's
    # backlog rate: a faster contender that started higher spent its time
    # budget on a first step the machine could not offer, and ended with
    # fewer steps than the others.
    start_eps = options.search_start_share * min(phases[name].figures["eps"] for name in names)
    results: dict[str, Any] = {}
    for name in names:
        contender = CONTENDERS[name](
            f"{run_id}s", bootstrap, work_dir / "search", options.partitions
        )

        async def search(contender: Contender = contender, name: str = name) -> dict[str, Any]:
            try:
                return await sustainable_search(
                    contender, search_work, phases[name].figures["eps"], start_eps, options
                )
            finally:
                await _cleanup(contender, options)

        results[name] = await _guarded(f"{name} sustainable rate", search())
    return {
        **results,
        "engine_over_peer": ratio(
            (results.get("engine") or {}).get("rate"), (results.get("peer") or {}).get("rate")
        ),
        "p99_limit_ms": P99_LIMIT_MS,
        "min_step_samples": min_step_samples(options),
        "min_actions": options.search_min_actions,
        "min_step_s": options.search_min_step_s,
        "max_step_s": options.search_max_step_s,
        "abort_lag_s": options.search_abort_lag_s,
        "workload": {
            "customers": options.search_customers,
            "devices": options.search_customers * options.devices_per_customer,
            "span_s": options.search_span_s,
            "stream_records": len(search_work.records),
            "expected_actions": len(search_work.truth["expected_actions"]),
        },
        "seconds": round(time.monotonic() - began, 1),
    }


async def _replica_row(
    name: str,
    run_id: str,
    bootstrap: str,
    work_dir: Path,
    work: Workload,
    phases: dict[str, PhaseResult],
    options: BenchOptions,
) -> dict[str, Any]:
    from loadtest.contenders import CONTENDERS

    contender = CONTENDERS[name](
        f"{run_id}r", bootstrap, work_dir / "replicas", options.partitions,
        replicas=options.replicas,
    )  # fmt: skip
    try:
        return await replicas_phase(contender, work, phases[name].figures)
    finally:
        await _cleanup(contender, options)


def _document(
    options: BenchOptions,
    work: Workload,
    phases: dict[str, PhaseResult],
    profile: dict[str, Any],
    command: str,
    scale: dict[str, Any] | None = None,
) -> dict[str, Any]:
    figures = {name: phase.figures for name, phase in phases.items()}
    eps = {name: f.get("eps") for name, f in figures.items()}
    engine = phases.get("engine")
    doc: dict[str, Any] = {
        "commit": _commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": {
            **{k: v for k, v in asdict(options).items() if k not in ("out", "bootstrap")},
            "contenders": list(options.contenders),
            "episode_shares": asdict(BENCH_EPISODES),
            "stream_records": len(work.records),
            "expected_actions": len(work.truth["expected_actions"]),
        },
        **figures,
        "ratios": {
            "engine_over_ceiling": ratio(eps.get("engine"), eps.get("ceiling")),
            "engine_over_peer": ratio(eps.get("engine"), eps.get("peer")),
            "engine_over_ceiling_per_cpu_s": ratio(
                (figures.get("engine") or {}).get("events_per_cpu_s"),
                (figures.get("ceiling") or {}).get("events_per_cpu_s"),
            ),
            "engine_over_peer_per_cpu_s": ratio(
                (figures.get("engine") or {}).get("events_per_cpu_s"),
                (figures.get("peer") or {}).get("events_per_cpu_s"),
            ),
        },
        "latency_cdf_ms": {
            name: [(round(v * 1000, 2), round(q, 4)) for v, q in cdf_points(phase.latencies_s)]
            for name, phase in phases.items()
        },
        "profile": profile,
        **(scale or {}),
    }
    sustainable = doc.get("sustainable") or {}
    replicas = doc.get("replicas") or {}
    doc["ratios"].update(
        engine_sustainable_over_peer=sustainable.get("engine_over_peer"),
        engine_replicas_over_one=(replicas.get("engine") or {}).get("over_one_replica"),
        peer_replicas_over_one=(replicas.get("peer") or {}).get("over_one_replica"),
    )
    if engine is not None:
        doc["accuracy"] = accuracy(work.truth, engine.actions)
        doc["engine_metrics"] = engine.metrics
    peer = phases.get("peer")
    if engine is not None and peer is not None:
        live = work.live(figures["peer"]["offered_rate"], options.latency_seconds)
        doc["agreement"] = agreement(engine.actions, peer.actions, wire_ts(live[-1][1]))
    doc["targets"] = _targets(doc)
    return doc


def agreement(
    engine: list[dict[str, Any]], peer: list[dict[str, Any]], until: float | None
) -> dict[str, Any]:
    """How many actions the engine and the peer took for the events both saw
    (``at`` up to ``until``), matched by ``action_id``: the same rules over the
    same events give the same ids, so this shows both did the same work.

    >>> a = {"action_id": "a", "at": 1.0}
    >>> agreement([a, {"action_id": "b", "at": 2.0}], [a, {"action_id": "c", "at": 9.0}], 5.0)
    {'engine_actions': 2, 'peer_actions': 1, 'common': 1}
    """

    def ids(actions: list[dict[str, Any]]) -> set[str]:
        return {a["action_id"] for a in actions if until is None or a["at"] <= until}

    mine, theirs = ids(engine), ids(peer)
    return {"engine_actions": len(mine), "peer_actions": len(theirs), "common": len(mine & theirs)}


def _targets(doc: dict[str, Any]) -> dict[str, Any]:
    ratios = doc["ratios"]
    engine = doc.get("engine") or {}
    types = (doc.get("accuracy") or {}).get("types", {})

    def minimum(value: float | None, floor: float) -> bool | None:
        return None if value is None else value >= floor

    def under(value: float | None, limit: float) -> bool | None:
        return None if value is None else value < limit

    sustainable = doc.get("sustainable") or {}
    replicas = doc.get("replicas") or {}
    return {
        "engine_at_least_peer": minimum(ratios["engine_over_peer"], 1.0),
        "engine_1_5x_peer": minimum(ratios["engine_over_peer"], 1.5),
        "engine_35pct_of_ceiling": minimum(ratios["engine_over_ceiling"], 0.35),
        "engine_p50_under_50ms": under(engine.get("p50_ms"), P50_LIMIT_MS),
        "engine_p99_under_250ms": under(engine.get("p99_ms"), P99_LIMIT_MS),
        "engine_sustainable_at_least_peer": (
            at_least(sustainable["engine"], sustainable["peer"])
            if sustainable.get("engine") and sustainable.get("peer")
            else None
        ),
        "engine_replicas_1_6x": minimum(
            (replicas.get("engine") or {}).get("over_one_replica"), 1.6
        ),
        **{
            f"{kind}_precision_and_recall_0_9": (
                None
                if types.get(kind, {}).get("precision") is None
                else types[kind]["precision"] >= 0.9 and (types[kind]["recall"] or 0) >= 0.9
            )
            for kind in ("maintenance_booking", "coupon")
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    main = parser.add_argument_group("workload and contenders")
    main.add_argument(
        "--customers",
        type=cli_args.count,
        default=d.customers,
        help=f"simulated customers of the main workload (default {d.customers})",
    )
    main.add_argument(
        "--devices-per-customer",
        type=cli_args.count,
        default=d.devices_per_customer,
        help=f"devices per customer, in every workload (default {d.devices_per_customer})",
    )
    main.add_argument(
        "--span",
        type=cli_args.duration,
        default=d.span_s,
        help="simulated time of the main workload (default 3d)",
    )
    main.add_argument(
        "--seed", type=int, default=d.seed, help=f"simulation seed (default {d.seed})"
    )
    main.add_argument(
        "--events",
        type=cli_args.count,
        default=d.events,
        help=f"events in the timed backlog (default {d.events})",
    )
    main.add_argument(
        "--warmup",
        type=cli_args.non_negative,
        default=d.warmup,
        help=f"events each contender processes before anything is timed (default {d.warmup})",
    )
    main.add_argument(
        "--latency-seconds",
        type=cli_args.non_negative_number,
        default=d.latency_seconds,
        help="length of the paced latency phase (default 30)",
    )
    main.add_argument(
        "--load-share",
        type=cli_args.non_negative_number,
        default=d.load_share,
        help="offered load of the latency phase, as a share of the engine's max (default 0.5)",
    )
    main.add_argument(
        "--rate",
        type=cli_args.non_negative_number,
        default=d.rate,
        help="offered load of the latency phase in events/s, instead of --load-share",
    )
    main.add_argument(
        "--contenders",
        default=",".join(d.contenders),
        help="comma-separated subset of engine,peer,ceiling (the engine sets the offered load)",
    )
    main.add_argument(
        "--partitions",
        type=cli_args.count,
        default=d.partitions,
        help=f"partitions of the customer-keyed topics (default {d.partitions})",
    )
    scale = parser.add_argument_group("sustainable rate, replicas and growth (on by default)")
    scale.add_argument(
        "--no-sustainable",
        dest="sustainable",
        action="store_false",
        help="skip the step search for each contender's sustainable rate",
    )
    scale.add_argument(
        "--search-customers",
        type=cli_args.count,
        default=d.search_customers,
        help=f"customers of the search's own workload (default {d.search_customers})",
    )
    scale.add_argument(
        "--search-span",
        type=cli_args.duration,
        default=d.search_span_s,
        help="simulated time of the search's workload: shorter is denser in actions (default 8h)",
    )
    scale.add_argument(
        "--search-steps",
        type=cli_args.count,
        default=d.search_max_steps,
        help=f"most steps per contender (default {d.search_max_steps})",
    )
    scale.add_argument(
        "--search-min-actions",
        type=cli_args.count,
        default=d.search_min_actions,
        help="expected actions a step holds at least, so its p99 has samples "
        f"(default {d.search_min_actions})",
    )
    scale.add_argument(
        "--search-budget",
        type=cli_args.duration,
        default=d.search_budget_s,
        help="wall time one contender's steps may take (default 120s)",
    )
    scale.add_argument(
        "--replicas",
        type=cli_args.non_negative,
        default=d.replicas,
        help=f"engine workers and peer processes of the replica row (default {d.replicas})",
    )
    scale.add_argument(
        "--no-replicas",
        dest="replicas",
        action="store_const",
        const=0,
        help="skip the replica row",
    )
    scale.add_argument(
        "--growth-factor",
        type=cli_args.non_negative,
        default=d.growth_factor,
        help="customers of the growth row, as a multiple of --customers "
        f"(default {d.growth_factor})",
    )
    scale.add_argument(
        "--no-growth",
        dest="growth_factor",
        action="store_const",
        const=0,
        help="skip the growth row",
    )
    extra = parser.add_argument_group("profiles, probes and output")
    extra.add_argument(
        "--profile-events",
        type=cli_args.count,
        default=d.profile_events,
        help="events of the offline hot-path profile (default 20000)",
    )
    extra.add_argument(
        "--live-profile-seconds",
        type=cli_args.non_negative_number,
        default=d.live_profile_seconds,
        help="paced seconds of the engine run under cProfile (default 15; 0: none)",
    )
    extra.add_argument(
        "--no-fetch-probe",
        dest="fetch_probe",
        action="store_false",
        help="skip timing the ceiling with batched fetches",
    )
    extra.add_argument(
        "--out",
        type=Path,
        default=d.out,
        help="folder for latest.json, report.md and the plots (default loadtest/results)",
    )
    extra.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka bootstrap servers (default: kafka.bootstrap of iotcrm.toml)",
    )
    extra.add_argument(
        "--keep", action="store_true", help="keep the run's topics and keyspaces afterwards"
    )


def options_from(args: argparse.Namespace) -> BenchOptions:
    contenders = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    unknown = set(contenders) - set(ORDER)
    if unknown or not contenders:
        raise ValueError(f"unknown contenders: {', '.join(sorted(unknown)) or '(none)'}")
    if args.replicas == 1 or args.replicas < 0:
        raise ValueError(f"--replicas must be 2 or more (or 0: no row), not {args.replicas}")
    if args.growth_factor == 1 or args.growth_factor < 0:
        raise ValueError(f"--growth-factor must be 2 or more (0: no row), not {args.growth_factor}")
    return BenchOptions(
        customers=args.customers,
        devices_per_customer=args.devices_per_customer,
        span_s=args.span,
        seed=args.seed,
        events=args.events,
        warmup=args.warmup,
        latency_seconds=args.latency_seconds,
        load_share=args.load_share,
        rate=args.rate,
        contenders=contenders,
        partitions=args.partitions,
        profile_events=args.profile_events,
        live_profile_seconds=args.live_profile_seconds,
        fetch_probe=args.fetch_probe,
        sustainable=args.sustainable,
        search_customers=args.search_customers,
        search_span_s=args.search_span,
        search_max_steps=args.search_steps,
        search_min_actions=args.search_min_actions,
        search_budget_s=args.search_budget,
        replicas=args.replicas,
        growth_factor=args.growth_factor,
        out=args.out,
        bootstrap=args.bootstrap,
        keep=args.keep,
    )


def run_from_args(args: argparse.Namespace, command: str) -> int:
    # aiokafka warns on every retried send to a topic whose leader is still being elected,
    # and logs an error for every topic just created that its metadata does not list yet.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"iotcrm bench: {exc}", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(run_bench(options, command))
    except ValueError as exc:
        print(f"iotcrm bench: {exc}", file=sys.stderr)
        return 2
    from loadtest.report import summary_lines

    print("\n".join(summary_lines(results)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "-m", "loadtest.bench", *argv])
    return run_from_args(parser.parse_args(argv), command)


if __name__ == "__main__":
    raise SystemExit(main())
