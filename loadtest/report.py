"""The benchmark's outputs: ``latest.json``, ``report.md`` and two PNG plots.

Every sentence with a number is built from the results document, so the
report always says what the run measured. ``build_markdown`` and
``summary_lines`` are pure (tested); ``write_report`` writes the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

CONTENDERS = ("engine", "peer", "ceiling")
LABELS = {
    "engine": "engine (iotcrm worker)",
    "peer": "peer (Quix Streams, rules by hand)",
    "ceiling": "ceiling (consume + decode)",
}


def _show(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def _present(results: Mapping[str, Any]) -> list[str]:
    return [name for name in CONTENDERS if isinstance(results.get(name), Mapping)]


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """A short console summary.

    >>> lines = summary_lines({"engine": {"eps": 1200.0, "p50_ms": 40.0, "p99_ms": 180.5,
    ...     "cpu_s_per_million": 410.0, "peak_rss_mb": 300.0}, "ratios": {}})
    >>> lines[1].split()[:3]
    ['engine', '1,200', '40.0']
    """
    lines = [
        f"{'contender':<10} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU s/M':>8} {'RSS MB':>7}"
    ]
    for name in _present(results):
        row = results[name]
        lines.append(
            f"{name:<10} {_show(row.get('eps')):>9} {_show(row.get('p50_ms'), 1):>8} "
            f"{_show(row.get('p99_ms'), 1):>8} {_show(row.get('cpu_s_per_million')):>8} "
            f"{_show(row.get('peak_rss_mb')):>7}"
        )
    ratios = results.get("ratios") or {}
    if ratios:
        lines.append(
            f"engine/ceiling {_show(ratios.get('engine_over_ceiling'), 3)}, "
            f"engine/peer {_show(ratios.get('engine_over_peer'), 3)}"
        )
    return lines


def _results_table(results: Mapping[str, Any]) -> list[str]:
    lines = [
        "| contender | events/s (first→last) | steady events/s (10–90 %) | p50 ms | p99 ms "
        "| CPU s per M events | events per CPU s | CPU busy | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in _present(results):
        row = results[name]
        lines.append(
            f"| {LABELS[name]} | {_show(row.get('eps'))} | {_show(row.get('steady_eps'))} "
            f"| {_show(row.get('p50_ms'), 1)} | {_show(row.get('p99_ms'), 1)} "
            f"| {_show(row.get('cpu_s_per_million'))} | {_show(row.get('events_per_cpu_s'))} "
            f"| {_show(_pct(row.get('cpu_utilisation')), 0, ' %')} "
            f"| {_show(row.get('peak_rss_mb'))} |"
        )
    return lines


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


def _conditions(results: Mapping[str, Any]) -> list[str]:
    lines = ["| contender | backlog events | span s | machine busy | load avg (start→end) "
             "| offered rate /s | latency samples | latency measured |",
             "|---|---:|---:|---:|---|---:|---:|---|"]  # fmt: skip
    for name in _present(results):
        row = results[name]
        load = row.get("load_average") or [None, None]
        lines.append(
            f"| {name} | {_show(row.get('backlog_events'))} "
            f"| {_show(row.get('backlog_seconds'), 1)} "
            f"| {_show(row.get('machine_busy_pct'), 0, ' %')} "
            f"| {_show(load[0], 2)} → {_show(load[1], 2)} | {_show(row.get('offered_rate'))} "
            f"| {_show(row.get('latency_samples'))} | {row.get('latency_kind', '–')} |"
        )
    return lines


def _targets(results: Mapping[str, Any]) -> list[str]:
    ratios = results.get("ratios") or {}
    targets = results.get("targets") or {}
    engine = results.get("engine") or {}
    rows = [
        ("engine ≥ peer throughput (aim 1.5×)", _show(ratios.get("engine_over_peer"), 2, "×"),
         targets.get("engine_at_least_peer")),
        ("engine ≥ 1.5× peer", _show(ratios.get("engine_over_peer"), 2, "×"),
         targets.get("engine_1_5x_peer")),
        ("engine ≥ 35 % of ceiling", _show(_pct(ratios.get("engine_over_ceiling")), 1, " %"),
         targets.get("engine_35pct_of_ceiling")),
        ("(per CPU second: engine / peer)", _show(ratios.get("engine_over_peer_per_cpu_s"), 2, "×"),
         None),
        ("(per CPU second: engine / ceiling)",
         _show(_pct(ratios.get("engine_over_ceiling_per_cpu_s")), 1, " %"), None),
        ("engine p99 < 250 ms at half load", _show(engine.get("p99_ms"), 1, " ms"),
         targets.get("engine_p99_under_250ms")),
        ("maintenance_booking precision and recall ≥ 0.9", "see accuracy",
         targets.get("maintenance_booking_precision_and_recall_0_9")),
        ("coupon precision and recall ≥ 0.9", "see accuracy",
         targets.get("coupon_precision_and_recall_0_9")),
    ]  # fmt: skip
    lines = ["| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {what} | {measured} | {_show(met)} |" for what, measured, met in rows]
    lines += [
        "",
        "Events/s depend on how much CPU the shared machine left each contender while it "
        "ran (see the conditions above); events per CPU second do much less, so both ratios "
        "are given.",
    ]
    return lines


def _accuracy(results: Mapping[str, Any]) -> list[str]:
    accuracy = results.get("accuracy")
    if not accuracy:
        return ["The engine did not run: no accuracy."]
    lines = [
        "| action type | expected | precision | recall | tp | fp | fn |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    expected = accuracy.get("expected_by_type", {})
    for kind, row in accuracy["types"].items():
        lines.append(
            f"| {kind} | {expected.get(kind, 0)} | {_show(row['precision'], 3)} "
            f"| {_show(row['recall'], 3)} | {row['tp']} | {row['fp']} | {row['fn']} |"
        )
    lines += _retention_note(results)
    same = results.get("agreement")
    if same:
        lines += [
            "",
            f"Same work: over the events both saw, the engine took {same['engine_actions']} "
            f"actions and the peer {same['peer_actions']}, {same['common']} of them with the "
            "same `action_id` (the id hashes rule, version, key and trigger events).",
        ]
    lines += ["", "Actions by rule: " + ", ".join(
        f"`{rule}` {count}" for rule, count in accuracy.get("actions_by_rule", {}).items()
    ) + f"; duplicates {accuracy.get('duplicate_actions', 0)}, "
        f"consent violations {accuracy.get('consent_violations', 0)}."]  # fmt: skip
    return lines


def _retention_note(results: Mapping[str, Any]) -> list[str]:
    """Why no retention offer can fire when the simulated span is shorter than
    the usage history a customer's baseline needs."""
    from tables.state import BASELINE_MIN_DAYS

    accuracy = results.get("accuracy") or {}
    row = accuracy.get("types", {}).get("retention_offer") or {}
    span_days = (results.get("params") or {}).get("span_s", 0) / 86400
    # A partial first day (left out), the baseline's full days, then the faded day.
    needed = BASELINE_MIN_DAYS + 2
    if row.get("fn") and not row.get("tp") and span_days < needed:
        return [
            "",
            f"No retention offer could fire: the usage-drop rule compares a whole day with "
            f"the customer's baseline, which the actor builds from at least "
            f"{BASELINE_MIN_DAYS} full day(s) of use after the first, partial one "
            f"(`tables/state.py`), so it needs a span of {needed} days; this workload spans "
            f"{span_days:g}.",
        ]
    return []


def _profile(results: Mapping[str, Any]) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    lines = [
        f"Offline replay of the first {profile['events']:,} events through the worker's "
        f"hot path in one process (ingest inspector, JSON round trip, state codec, "
        f"customer actor with the shipped models and rules, timers): "
        f"**{profile['us_per_event']} µs per event** of CPU without a profiler "
        f"(at most {1e6 / profile['us_per_event']:,.0f} events/s on one core), "
        f"{profile['actions']} actions. Share of profiled time:",
        "",
        "| component | % |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {pct} |" for name, pct in profile["components_pct"].items()]
    lines += ["", "Top functions by self time:", "", "| function | self % | cumulative % | calls |",
              "|---|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| `{row['function']}` | {row['self_pct']} | {row['cumulative_pct']} | {row['calls']:,} |"
        for row in profile["top_functions"]
    ]
    return lines


def _live_profile(results: Mapping[str, Any]) -> list[str]:
    live = (results.get("profile") or {}).get("live")
    if not live:
        return []
    state = (
        "kept up with it"
        if live.get("caught_up")
        else "fell behind it (the profiler slows every Python call down)"
    )
    lines = [
        "### The live worker at the offered load",
        "",
        f"A second engine, run under cProfile (`loadtest/profiled_worker.py`) while "
        f"{live['events']:,} events were offered at {live['offered_rate']:,.0f}/s: it {state}. "
        f"Share of the worker's wall time over {live['wall_s']} s (a built-in counts for its "
        "caller; `idle` is the event loop waiting for I/O):",
        "",
        "| component | % |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {pct} |" for name, pct in live["components_pct"].items()]
    lines += ["", "Top functions by self time:", "", "| function | self % | cumulative % | calls |",
              "|---|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| `{row['function']}` | {row['self_pct']} | {row['cumulative_pct']} | {row['calls']:,} |"
        for row in live["top_functions"]
    ]
    return lines


_WORK = ("ingest:", "actor:", "models", "rules", "JSON")
_FRAMEWORK = ("Kafka clients", "Faust", "asyncio", "Cassandra", "worker glue")


def diagnosis(results: Mapping[str, Any]) -> list[str]:
    """Sentences on where the engine's time goes, from the measured figures.

    >>> doc = {"engine": {"eps": 1000.0, "cpu_utilisation": 0.4, "cpu_s_per_million": 400.0},
    ...        "profile": {"us_per_event": 250.0, "components_pct": {"models (River)": 50.0}}}
    >>> any("idle" in line for line in diagnosis(doc))
    True
    """
    engine = results.get("engine") or {}
    profile = results.get("profile") or {}
    lines: list[str] = []
    busy = engine.get("cpu_utilisation")
    eps = engine.get("eps")
    if busy is not None and eps:
        if busy < 0.8:
            lines.append(
                f"- The worker was busy {busy * 100:.0f} % of one core while it worked through "
                f"the backlog: it spent {100 - busy * 100:.0f} % of the time idle, waiting "
                "(on broker acknowledgements before each batch's state is written, on the "
                "repartition hop, on batch windows) or starved of CPU by the broker, "
                "Cassandra and the machine's other load: the work itself would allow "
                f"{eps / busy:,.0f} events/s at full use of the core."
            )
        else:
            lines.append(
                f"- The worker kept one core {busy * 100:.0f} % busy: it is CPU-bound; "
                "throughput follows the CPU cost per event."
            )
    per_event = engine.get("cpu_s_per_million")
    if per_event and profile.get("us_per_event"):
        offline = profile["us_per_event"]
        lines.append(
            f"- Live, the worker spent {per_event:,.0f} µs of CPU per event; the same work "
            f"in one process offline takes {offline:,.0f} µs, so "
            f"{max(0.0, 100 * (1 - offline / per_event)):.0f} % of the live CPU is the "
            "framework around it (Faust streams and tables, changelog and action producers, "
            "the ingest consumer and producer, the Cassandra sink, the web views)."
        )
    live = profile.get("live") or {}
    shares = live.get("components_pct") or {}
    if shares:
        work = sum(pct for name, pct in shares.items() if name.startswith(_WORK))
        framework = sum(pct for name, pct in shares.items() if name.startswith(_FRAMEWORK))
        kafka = sum(pct for name, pct in shares.items() if name.startswith("Kafka clients"))
        lines.append(
            f"- At the offered load, the live worker spent {work:.0f} % of its time on the "
            f"work itself (ingest checks, state, models, rules) and {framework:.0f} % on the "
            f"machinery around it, {kafka:.0f} % in the pure-Python Kafka clients alone "
            "(every fetch response of the pattern-subscribed device topics, the Faust "
            "consumer, the changelog, action and repartition producers, and the sink's "
            "consumer are decoded and encoded in Python)."
        )
    live_cpu = engine.get("live_cpu_s_per_million")
    if live_cpu and per_event:
        lines.append(
            f"- Per event, the paced phase cost {live_cpu:,.0f} µs of CPU against "
            f"{per_event:,.0f} µs in the backlog: with few records per poll, every fetch, "
            "produce, commit and table write is paid for a handful of events."
        )
    ceiling = results.get("ceiling") or {}
    if ceiling.get("live_cpu_s_per_million") and ceiling.get("cpu_s_per_million"):
        lines.append(
            f"- Consuming the device topics by pattern with aiokafka and nothing else (the "
            f"ceiling) cost {ceiling['live_cpu_s_per_million']:,.0f} µs of CPU per event in "
            f"the paced phase against {ceiling['cpu_s_per_million']:,.1f} µs from the backlog: "
            "each fetch response lists every subscribed partition and is decoded in Python, "
            "and under a steady trickle a fetch carries a handful of events. Ingest pays this "
            "kind of cost inside the worker, before any of the work."
        )
    probe = results.get("fetch_probe") or {}
    if probe.get("live_cpu_s_per_million") and ceiling.get("live_cpu_s_per_million"):
        factor = ceiling["live_cpu_s_per_million"] / probe["live_cpu_s_per_million"]
        lines.append(
            f"- The same consumer fetching at least {probe['fetch_min_bytes'] // 1024} KiB or "
            f"every {probe['fetch_max_wait_ms']} ms cost {probe['live_cpu_s_per_million']:,.0f} "
            f"µs per event over the same paced events ({factor:.1f}× less), with a "
            f"publish-to-decode p50 of {_show(probe.get('p50_ms'), 1)} ms and p99 of "
            f"{_show(probe.get('p99_ms'), 1)} ms (against {_show(ceiling.get('p50_ms'), 1)} "
            f"and {_show(ceiling.get('p99_ms'), 1)} ms)."
        )
    lag = engine.get("live_lag") or {}
    if lag.get("last_stage_max_events"):
        lines.append(
            f"- At {engine.get('offered_rate', 0):,.0f} events/s offered, the customer actor "
            f"fell up to {lag['last_stage_max_events']:,} events behind the offered stream "
            f"(ingest: up to {lag.get('first_stage_max_events', 0):,}); the paced phase took "
            f"{engine.get('live_seconds')} s for {engine.get('live_events', 0):,} events, so "
            "the latency is mostly queueing."
        )
    components = profile.get("components_pct") or {}
    models = sum(pct for name, pct in components.items() if name.startswith("models"))
    if models:
        lines.append(
            f"- Models take {models:.0f} % of the hot path (HalfSpaceTrees anomaly detection "
            "scores and learns on every washer and compressor reading, with 15 trees): "
            "fewer trees, learning on a sample, or scoring in batches would cut it; "
            "the peer runs the same models, so this cost is shared."
        )
    codec = components.get("actor: state codec")
    if codec:
        lines.append(
            f"- The customer-state codec takes {codec:.0f} % (the whole state, dedup ids "
            "included, is decoded and encoded once per customer and batch): a smaller "
            "dedup memory, or keeping hot states decoded between batches, would cut it."
        )
    return lines


def remedies(results: Mapping[str, Any]) -> list[str]:
    """What would make the engine faster, each backed by a figure of the run.

    >>> remedies({"engine": {}, "profile": {}})
    []
    """
    engine = results.get("engine") or {}
    profile = results.get("profile") or {}
    live = (profile.get("live") or {}).get("components_pct") or {}
    probe = results.get("fetch_probe") or {}
    ceiling = results.get("ceiling") or {}
    params = results.get("params") or {}
    lines: list[str] = []
    if probe.get("live_cpu_s_per_million") and ceiling.get("live_cpu_s_per_million"):
        lines.append(
            "1. **Batch fetches under a steady load.** A consumer that is answered as soon as "
            "one byte is there pays for each fetch with a handful of events; at "
            f"`fetch_min_bytes={probe['fetch_min_bytes']}`, "
            f"`fetch_max_wait_ms={probe['fetch_max_wait_ms']}` the probe above paid "
            f"{probe['live_cpu_s_per_million']:,.0f} instead of "
            f"{ceiling['live_cpu_s_per_million']:,.0f} µs per event to consume, for at most "
            f"{probe['fetch_max_wait_ms']} ms more latency. Faust's aiokafka driver hard-codes "
            "`fetch_min_bytes=1` for the actor's consumer."
        )
    kafka = sum(pct for name, pct in live.items() if name.startswith("Kafka clients"))
    sink = live.get("Cassandra sink", 0.0)
    if kafka + sink >= 20:
        lines.append(
            f"{len(lines) + 1}. **Move ingest and the Cassandra sink out of the actor's "
            f"process** (`worker.run_ingest`, `worker.run_sink`): Kafka clients took {kafka:.0f} "
            f"% and the sink {sink:.0f} % of the live worker, all on the one event loop that "
            "also runs the actor; the machine's second core would carry them."
        )
    devices = (params.get("customers") or 0) * (params.get("devices_per_customer") or 0)
    if devices and kafka:
        lines.append(
            f"{len(lines) + 1}. **Fewer partitions per fetch for large fleets**: every ingest "
            f"fetch lists all {devices:,}+ per-device topics; the shared keyed telemetry topic "
            f"({params.get('partitions')} partitions) carries the same events."
        )
    codec = (profile.get("components_pct") or {}).get("actor: state codec", 0.0)
    live_codec = live.get("actor: state codec", 0.0)
    if max(codec, live_codec) >= 3:
        lines.append(
            f"{len(lines) + 1}. **Keep hot customer states decoded between batches**: the "
            f"msgpack codec of whole states took {codec:.0f} % of the hot path and "
            f"{live_codec:.0f} % of the live worker, paid per customer and batch — per event "
            "once batches are small."
        )
    models = sum(
        pct for name, pct in (profile.get("components_pct") or {}).items() if "models" in name
    )
    if models >= 20:
        lines.append(
            f"{len(lines) + 1}. **Cheaper models** ({models:.0f} % of the hot path, the same "
            "in the peer): fewer or shallower HalfSpaceTrees, or scoring every reading but "
            "learning on a sample."
        )
    if engine.get("live_lag", {}).get("last_stage_max_events"):
        lines.append(
            f"{len(lines) + 1}. Until then, the engine's sustainable offered load is well below "
            "half its backlog rate: size workers by the paced figures, not by the backlog ones."
        )
    return lines


def build_markdown(results: Mapping[str, Any]) -> str:
    """The report (markdown) for a results document."""
    params = results.get("params", {})
    lines = [
        "# iotcrm benchmark: engine, Quix Streams peer, plain-consumer ceiling",
        "",
        f"Commit `{results.get('commit', '?')}`, {results.get('created_at', '?')}, "
        f"{results.get('machine', {}).get('cpus', '?')} CPUs, Python "
        f"{results.get('machine', {}).get('python', '?')}; the whole run took "
        f"{_show(results.get('elapsed_s'), 0, ' s')}.",
        "",
        "Reproduce with Kafka and Cassandra from `deploy/local` running (`make bench` starts "
        "them and runs `iotcrm bench`):",
        "",
        "```",
        str(results.get("command", ".venv/bin/python -m loadtest.bench")),
        "```",
        "",
        f"Workload: {params.get('customers')} customers × {params.get('devices_per_customer')} "
        f"devices over {(params.get('span_s') or 0) / 3600:g} h of simulated time "
        f"(seed {params.get('seed')}): {_show(params.get('stream_records'))} device events, "
        f"mixed units and shapes, malformed and duplicate events included. Each contender: "
        f"{_show(params.get('warmup'))} warm-up events, then a backlog of "
        f"{_show(params.get('events'))} events published while it is frozen (max throughput), "
        f"then {_show(params.get('latency_seconds'))} s of events offered at "
        + (
            f"a fixed {_show(params.get('rate'))}/s"
            if params.get("rate")
            else f"{_show(params.get('load_share'), 2)} × the engine's max"
        )
        + " (latency). Same bytes for every contender, each in its own topics; "
        "an action-dense mix of episodes (`episode_shares` in `latest.json`).",
        "",
        "## Results",
        "",
        *_results_table(results),
        "",
        "![throughput](throughput.png) ![latency](latency_cdf.png)",
        "",
        "Conditions of each measurement (the machine is shared; `machine busy` is the "
        "whole machine's CPU use during the backlog):",
        "",
        *_conditions(results),
        "",
        "## Targets",
        "",
        *_targets(results),
        "",
        "## Accuracy of the engine's actions against the simulation's ground truth",
        "",
        *_accuracy(results),
        "",
        "## Where the engine's time goes",
        "",
        *diagnosis(results),
        "",
        "### What would fix it",
        "",
        *remedies(results),
        "",
        "### The hot path alone",
        "",
        *_profile(results),
        "",
        *_live_profile(results),
        "",
        "## How it is measured",
        "",
        "- **events/s**: backlog events over the time from the first to the last of them "
        "fully processed (dead-lettered, or through the customer actor / decoded), sampled "
        "every 100 ms; *steady* is the rate between 10 % and 90 % of the backlog.",
        "- **CPU s per M events**: user + system CPU time of the contender's process tree "
        "over the same span, per million events; **CPU busy** the same over wall time "
        "(100 % = one core); **peak RSS**: the kernel's high-water mark (VmHWM).",
        "- **latency**: at the offered rate, the downstream consumer's receive time of an "
        "action minus the publish time of the first event whose event time reached the "
        "action's `at` (its own event for a condition; the event that moved time past a "
        "timer). The ceiling's is publish to decode, per event.",
        "- The engine is one `iotcrm worker` (ingest, registry, customer actor with tables, "
        "shipped models and rules, actions, Cassandra sink) with "
        f"{params.get('partitions')} partitions. The peer is one Quix Streams process doing "
        "the same work (`loadtest/peer_quix.py`), except the engine's Cassandra sink and "
        "customer-360 summaries: the same inspector, stream hygiene, "
        "aggregates and models, per-customer state in Quix's RocksDB store, and the shipped "
        "rules written by hand (`loadtest/peer_rules.py`, held by a unit test to fire "
        "exactly what the rule engine fires). The ceiling (`loadtest/ceiling.py`) consumes "
        "by pattern and decodes with msgspec, nothing else.",
    ]
    return "\n".join(lines) + "\n"


def plot_throughput(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _present(results)
    eps = [results[n].get("eps") or 0 for n in names]
    steady = [results[n].get("steady_eps") or 0 for n in names]
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], eps, width=0.4, label="first→last")
    axis.bar([p + 0.2 for p in positions], steady, width=0.4, label="steady (10–90 %)")
    for p, value in zip(positions, eps, strict=True):
        axis.annotate(f"{value:,.0f}", (p - 0.2, value), ha="center", va="bottom", fontsize=8)
    axis.set_xticks(list(positions), names)
    axis.set_yscale("log")  # the ceiling is orders of magnitude above the others
    axis.set_ylabel("events / s (log scale)")
    axis.set_title("Max throughput over the same backlog")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_latency_cdf(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for name, points in (results.get("latency_cdf_ms") or {}).items():
        if points:
            label = f"{name} ({(results.get(name) or {}).get('latency_kind', '')})"
            axis.step([p[0] for p in points], [p[1] for p in points], where="post", label=label)
    axis.set_xscale("log")
    axis.set_xlabel("latency, ms (log scale)")
    axis.set_ylabel("share of samples")
    axis.axvline(250, color="grey", linestyle=":", linewidth=1)
    axis.set_title("Latency at the offered load")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def rerender(out: Path) -> None:
    """``report.md`` and the plots again from ``out/latest.json`` (the same run's figures)."""
    write_report(orjson.loads((out / "latest.json").read_bytes()), None, out)


def write_report(results: Mapping[str, Any], phases: Any, out: Path) -> None:
    """``latest.json``, ``report.md``, ``throughput.png`` and ``latency_cdf.png`` in ``out``."""
    del phases
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    (out / "report.md").write_text(build_markdown(results), encoding="utf-8")
    plot_throughput(results, out / "throughput.png")
    plot_latency_cdf(results, out / "latency_cdf.png")


if __name__ == "__main__":
    import sys

    rerender(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results")
