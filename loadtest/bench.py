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
3. An offline profile of the engine's hot path (the same ingest inspector,
   customer actor, rules and models, in process, under cProfile) shows where
   its CPU time goes.
4. Results go to ``--out`` (default ``loadtest/results``): ``latest.json``,
   ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
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

from engine.config import load_settings
from loadtest.accuracy import score
from loadtest.cli import parse_duration
from loadtest.episodes import EpisodeShares
from loadtest.measure import (
    ProgressSeries,
    PublishClock,
    action_latencies,
    cdf_points,
    latency_breakdown,
    latency_summary,
    per_million,
    ratio,
    wire_ts,
)
from loadtest.simulator import GHOST_DEVICE_IDS, SimParams, Simulation

if TYPE_CHECKING:
    from loadtest.contenders import CeilingContender, Contender, Progress

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
    from loadtest.feed import Feeder

    async with Feeder(contender.bootstrap, contender.device_prefix, linger_ms) as feeder:
        return await feeder.publish_events(events, rate)


async def _prepare(contender: Contender, work: Workload) -> None:
    from loadtest.feed import Feeder, create_topics

    plans = contender.topic_plans(work.device_ids)
    await create_topics(contender.bootstrap, plans)
    await contender.prepare()
    async with Feeder(contender.bootstrap, contender.device_prefix) as feeder:
        await feeder.wait_for_leaders([plan.name for plan in plans])
        await feeder.publish_json(contender.registry_topic, work.sim.registry_records())
        await feeder.publish_json(contender.customers_topic, work.sim.profiles())
        await feeder.publish_events(work.warmup)


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
    while True:
        progress = await contender.progress()
        now, cpu = time.time(), tree.cpu_s()
        if progress is not None:
            done = progress.done - base.done
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
    contender: Contender, work: Workload, rate: float | None, options: BenchOptions
) -> PhaseResult:
    """One contender through warm-up, backlog, latency (and, for the engine, the rest)."""
    from loadtest.contenders import CeilingContender, EngineContender
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
            before = len(work.warmup) + len(work.backlog)
            lag = asyncio.create_task(_sample_lag(contender, before, rate, live_started, len(live)))
            try:
                walls = await _feed(contender, live, rate=rate, linger_ms=1)
                await contender.wait_done(before + len(live), timeout_s=300)
            finally:
                lag.cancel()
                lags = (await asyncio.gather(lag, return_exceptions=True))[0]
            live_cpu = contender.tree.cpu_s() - live_cpu
            result.figures.update(
                offered_rate=round(rate, 1),
                live_events=len(live),
                live_seconds=round(time.time() - live_started, 1),
                live_cpu_s_per_million=_rounded(per_million(live_cpu, len(live)), 1),
                live_lag=_lag_summary(lags if isinstance(lags, list) else []),
            )
            if isinstance(contender, EngineContender):
                tail = work.rest[len(live) :]
                _log(f"{contender.name}: the rest of the stream ({len(tail)} events) for accuracy")
                await _feed(contender, tail)
                await contender.wait_done(len(work.records), timeout_s=900)
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
    from loadtest.feed import delete_topics
    from loadtest.hotpath import profile_hot_path
    from loadtest.report import write_report

    settings = load_settings()
    bootstrap = options.bootstrap or settings.kafka.bootstrap
    started = time.monotonic()
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
        if "ceiling" in names and options.fetch_probe and rate:
            probe = await fetch_probe(run_id, bootstrap, work_dir, work, rate, options)
        if "engine" in names and options.live_profile_seconds > 0 and rate:
            live = await live_profile(run_id, bootstrap, work_dir, work, rate, options)
    finally:
        if not options.keep:
            deleted = await delete_topics(bootstrap, run_id)
            _log(f"deleted {deleted} topics of run {run_id}")
    _log(f"profiling the engine's hot path offline on {options.profile_events} events")
    profile = profile_hot_path(work, settings, options.profile_events)
    results = _document(options, work, phases, {**profile, "live": live}, command)
    results["fetch_probe"] = probe
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write_report(results, phases, options.out)
    if not options.keep:  # logs and stores stay behind only when something failed
        shutil.rmtree(work_dir, ignore_errors=True)
    _log(f"results in {options.out}")
    return results


def _document(
    options: BenchOptions,
    work: Workload,
    phases: dict[str, PhaseResult],
    profile: dict[str, Any],
    command: str,
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
    }
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

    def at_least(value: float | None, floor: float) -> bool | None:
        return None if value is None else value >= floor

    return {
        "engine_at_least_peer": at_least(ratios["engine_over_peer"], 1.0),
        "engine_1_5x_peer": at_least(ratios["engine_over_peer"], 1.5),
        "engine_35pct_of_ceiling": at_least(ratios["engine_over_ceiling"], 0.35),
        "engine_p99_under_250ms": (
            None if engine.get("p99_ms") is None else engine["p99_ms"] < 250.0
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
    defaults = BenchOptions()
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--devices-per-customer", type=int, default=defaults.devices_per_customer)
    parser.add_argument(
        "--span", type=parse_duration, default=defaults.span_s, help="simulated time (default 3d)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--events", type=int, default=defaults.events, help="events in the timed backlog"
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=defaults.latency_seconds,
        help="length of the paced latency phase (default 30)",
    )
    parser.add_argument(
        "--load-share",
        type=float,
        default=defaults.load_share,
        help="offered load of the latency phase, as a share of the engine's max (default 0.5)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        help="offered load of the latency phase in events/s, instead of --load-share",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(defaults.contenders),
        help="comma-separated subset of engine,peer,ceiling (the engine sets the offered load)",
    )
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument(
        "--profile-events",
        type=int,
        default=defaults.profile_events,
        help="events of the offline hot-path profile (default 20000)",
    )
    parser.add_argument(
        "--live-profile-seconds",
        type=float,
        default=defaults.live_profile_seconds,
        help="paced seconds of the engine run under cProfile (default 15; 0: none)",
    )
    parser.add_argument(
        "--no-fetch-probe",
        dest="fetch_probe",
        action="store_false",
        help="skip timing the ceiling with batched fetches",
    )
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's topics and keyspace afterwards"
    )


def options_from(args: argparse.Namespace) -> BenchOptions:
    contenders = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    unknown = set(contenders) - set(ORDER)
    if unknown or not contenders:
        raise ValueError(f"unknown contenders: {', '.join(sorted(unknown)) or '(none)'}")
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
        out=args.out,
        bootstrap=args.bootstrap,
        keep=args.keep,
    )


def run_from_args(args: argparse.Namespace, command: str) -> int:
    # aiokafka warns on every retried send to a topic whose leader is still being elected.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
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
