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
    sustainable = results.get("sustainable") or {}
    if sustainable:
        lines.append(
            f"sustainable (p99 < {sustainable.get('p99_limit_ms', 250):g} ms): "
            f"engine {_rate(sustainable.get('engine'))}, peer {_rate(sustainable.get('peer'))}, "
            f"engine/peer {_show(sustainable.get('engine_over_peer'), 3)}"
        )
    replicas = results.get("replicas") or {}
    if replicas:
        lines.append(
            f"{replicas.get('count', 2)} replicas / 1: "
            + ", ".join(
                f"{name} {_show((replicas.get(name) or {}).get('over_one_replica'), 2)}"
                for name in ("engine", "peer")
                if name in replicas
            )
        )
    growth = results.get("growth") or {}
    if growth.get("engine"):
        row = growth["engine"]
        lines.append(
            f"growth {growth.get('factor')}x: engine {_show(row.get('eps'))} events/s "
            f"({_show((growth.get('over_base') or {}).get('eps'), 2)}x the main row), p99 "
            f"{_show(row.get('p99_ms'), 1)} ms, peak RSS {_show(row.get('peak_rss_mb'))} MB, "
            f"{_show((growth.get('state_memory') or {}).get('rss_kib_per_customer'), 1)} "
            "KiB per customer"
        )
    elif growth.get("error"):
        lines.append(f"growth: failed ({growth['error'][:120]})")
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
        ("engine p50 < 50 ms at half load", _show(engine.get("p50_ms"), 1, " ms"),
         targets.get("engine_p50_under_50ms")),
        ("engine p99 < 250 ms at half load", _show(engine.get("p99_ms"), 1, " ms"),
         targets.get("engine_p99_under_250ms")),
        ("engine sustainable rate ≥ peer (p99 < 250 ms)", _sustainable_measured(results),
         targets.get("engine_sustainable_at_least_peer")),
        (f"engine with {_replica_count(results)} replicas ≥ 1.6× one",
         _show(ratios.get("engine_replicas_over_one"), 2, "×"),
         targets.get("engine_replicas_1_6x")),
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


def _replica_count(results: Mapping[str, Any]) -> int:
    return int((results.get("replicas") or {}).get("count") or 2)


def _rate(row: Mapping[str, Any] | None) -> str:
    """A sustainable rate as measured: the rate, or below the lowest rate tried."""
    if not row or row.get("error"):
        return "–"
    if row.get("rate") is not None:
        return ("≥ " if row.get("at_ceiling") else "") + f"{row['rate']:,.0f}/s"
    if row.get("below") is not None:
        return f"< {row['below']:,.0f}/s"
    return "–"


def _sustainable_measured(results: Mapping[str, Any]) -> str:
    sustainable = results.get("sustainable") or {}
    if not sustainable:
        return "–"
    text = f"{_rate(sustainable.get('engine'))} vs {_rate(sustainable.get('peer'))}"
    if sustainable.get("engine_over_peer") is not None:
        text += f" ({sustainable['engine_over_peer']:.2f}×)"
    return text


def _sustainable(results: Mapping[str, Any]) -> list[str]:
    """The step search: each contender's sustainable rate and every step it took."""
    sustainable = results.get("sustainable")
    if not sustainable:
        return []
    work = sustainable.get("workload") or {}
    limit = sustainable.get("p99_limit_ms", 250.0)
    lines = [
        "## Sustainable rate",
        "",
        f"The highest steady offered rate at which the event-to-action p99 stayed under "
        f"{limit:g} ms. Each contender, in a fresh process, took paced steps one after "
        "another: the first at "
        f"{_show((results.get('params') or {}).get('search_start_share'), 2)} × the "
        "slowest contender's backlog rate (the same first rate for each), up by ×"
        f"{_show((results.get('params') or {}).get('search_up'), 1)} while steps held, down "
        "while they did not, then bisecting between the highest rate that held and the "
        "lowest that did not; each step was drained before the next. The steps ran on a "
        f"workload of their own, denser in actions than the main one: "
        f"{_show(work.get('customers'))} customers × "
        f"{_show((work.get('devices') or 0) / max(1, work.get('customers') or 1), 0)} devices "
        f"over {(work.get('span_s') or 0) / 3600:g} h ({_show(work.get('stream_records'))} "
        f"events, {_show(work.get('expected_actions'))} expected actions; per-device topics, "
        "as in the main row). A step lasts at least "
        f"{_show(sustainable.get('min_step_s'), 0)} s and holds at least "
        f"{_show(sustainable.get('min_actions'))} expected actions (at most "
        f"{_show(sustainable.get('max_step_s'), 0)} s), and is judged on the actions an "
        f"event triggered (their `at` is that event's time), at least "
        f"{_show(sustainable.get('min_step_samples'))} of them; it stops early once "
        f"the contender is {_show(sustainable.get('abort_lag_s'), 0)} s of load behind. "
        "Actions that time passing triggered (a device's silence, an absence, a window "
        "closing) are shown apart and not judged: their latency is how long event time took "
        "to pass their due time, which the watermark over every device's stream holds back "
        "longer the slower the events come, so it grows as the offered rate falls (for the "
        "engine and the peer alike). The "
        f"search took {_show(sustainable.get('seconds'), 0, ' s')}.",
        "",
        "| contender | sustainable rate | share of its backlog rate | lowest rate that failed "
        "| steps | latency samples (fewest in a step) | the search ended on |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("engine", "peer"):
        row = sustainable.get(name)
        if not isinstance(row, Mapping):
            continue
        if row.get("error"):
            lines.append(f"| {name} | failed: {row['error'][:200]} | | | | | |")
            continue
        lines.append(
            f"| {name} | {_rate(row)} | {_show(_pct(row.get('share_of_backlog')), 0, ' %')} "
            f"| {_show(row.get('failed_at'), 0, '/s')} | {row.get('steps', 0)} "
            f"| {_show(row.get('samples'))} ({_show(row.get('min_step_samples'))}) "
            f"| {row.get('stopped_by', '–')} |"
        )
    if sustainable.get("engine_over_peer") is not None:
        lines += ["", f"Engine / peer: **{sustainable['engine_over_peer']:.2f}×**."]
    lines += [
        "",
        "| contender | step | offered /s | events | s | expected actions | latency samples "
        "| p50 ms | p99 ms | max ms | timer-driven: samples, p99 ms | most events behind "
        "| worker loop late, ms (full GCs) | CPU s per M | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("engine", "peer"):
        row = sustainable.get(name)
        if not isinstance(row, Mapping):
            continue
        for number, step in enumerate(row.get("step_results") or [], start=1):
            lines.append(
                f"| {name} | {number} | {_offered(step)} "
                f"| {_show(step.get('events'))} | {_show(step.get('seconds'), 1)} "
                f"| {_show(step.get('expected_actions'))} | {_show(step.get('latency_samples'))} "
                f"| {_show(step.get('p50_ms'), 1)} | {_show(step.get('p99_ms'), 1)} "
                f"| {_show(step.get('max_ms'), 1)} | {_show(step.get('timer_samples'))}, "
                f"{_show(step.get('timer_p99_ms'), 0)} | {_show(step.get('max_lag_events'))} "
                f"| {_loop_late(step)} "
                f"| {_show(step.get('cpu_s_per_million'))} | {step.get('verdict', '–')} |"
            )
    lines += [
        "",
        "Actions are sparse (at most one episode per device), so a step's p99 rests on tens "
        "of samples, not thousands: with fewer than 100 it lies between the step's two "
        "slowest actions, which makes the test stricter, not looser. *most events behind* "
        "is the largest gap between events published and events fully processed, sampled "
        "twice a second. *worker loop late* is how late the engine worker's event loop woke "
        "up at worst around the step (the largest of its 10 s windows sampled during it), "
        "with the full garbage collections of the step: an action's latency includes any "
        "such wait.",
        "",
        "![sustainable](sustainable.png)",
    ]
    return lines


#: The parts of a machine budget (``measure.cpu_budget``), in the order shown.
BUDGET_PARTS = (
    ("contender", "the contender"),
    ("kafka", "Kafka broker"),
    ("cassandra", "Cassandra"),
    ("bench", "bench: publisher, reader"),
    ("other", "other"),
    ("idle", "idle"),
)


def _budget_cells(name: str, budget: Mapping[str, Any]) -> str:
    return " | ".join(
        _show(budget.get(name if part == "contender" else part), 0, " %")
        for part, _ in BUDGET_PARTS
    )


def machine_budget(results: Mapping[str, Any]) -> list[str]:
    """Where the whole machine's CPU went while events were offered at a steady
    rate: the latency phase of each contender, and every step of the search.

    >>> doc = {"machine": {"cpus": 2}, "engine": {"offered_rate": 100.0, "live_machine": {
    ...     "engine": 40.0, "kafka": 90.0, "bench": 30.0, "other": 10.0, "idle": 30.0}}}
    >>> print(machine_budget(doc)[-1])
    | engine | latency phase | 100 | 40 % | 90 % | – | 30 % | 10 % | 30 % | – |
    """
    rows: list[tuple[str, str, Any, Mapping[str, Any], Mapping[str, Any]]] = []
    for name in _present(results):
        phase = results.get(name) or {}
        if phase.get("live_machine"):
            rows.append(
                (
                    name,
                    "latency phase",
                    phase.get("offered_rate"),
                    phase["live_machine"],
                    phase.get("live_processes") or {},
                )
            )
    for name in ("engine", "peer"):
        searched = (results.get("sustainable") or {}).get(name) or {}
        for number, step in enumerate(searched.get("step_results") or [], start=1):
            if step.get("machine"):
                rows.append(
                    (
                        name,
                        f"search step {number}",
                        step.get("offered_rate"),
                        step["machine"],
                        step.get("processes") or {},
                    )
                )
    if not rows:
        return []
    cores = (results.get("machine") or {}).get("cpus", "?")
    lines = [
        "## The machine's CPU while events were offered",
        "",
        f"Each part's CPU over the span the events were published, in % of one core (the {cores} "
        f"cores make {cores} × 100 %): the contender's process tree, the local Kafka broker and "
        "Cassandra node, this bench process (its publisher and action reader), the rest of the "
        "machine, and what was left idle; the engine's tree also by process (its worker, which "
        "runs the actors, its ingest and its Cassandra sink). The targets at a steady rate "
        "assume the contender gets the CPU it needs; where the broker and the publisher take "
        "most of the machine and nothing is idle, the contender falls behind for want of a "
        "core, not of speed.",
        "",
        "| contender | phase | offered /s | "
        + " | ".join(label for _, label in BUDGET_PARTS)
        + " | worker / ingest / sink |",
        "|---|---|---:|" + "---:|" * len(BUDGET_PARTS) + "---:|",
    ]
    lines += [
        f"| {name} | {phase} | {_show(rate)} | {_budget_cells(name, budget)} | "
        f"{_processes_cell(processes)} |"
        for name, phase, rate, budget, processes in rows
    ]
    return lines


def _processes_cell(processes: Mapping[str, Any]) -> str:
    """The engine's CPU by process, in % of one core.

    >>> _processes_cell({"main": 50.3, "ingest": 23.4, "sink": 3.1})
    '50 / 23 / 3 %'
    >>> _processes_cell({"main": 60.0})
    '–'
    """
    if not all(role in processes for role in PROCESS_ROLES):
        return "–"
    return " / ".join(_show(processes[role], 0) for role in PROCESS_ROLES) + " %"


#: The engine's processes, as ``loadtest.contenders.ProcessTree.cpu_s_by_role`` names them.
PROCESS_ROLES = ("main", "ingest", "sink")


def _offered(step: Mapping[str, Any]) -> str:
    """A step's offered rate, and the rate asked for when the publisher fell short."""
    offered, asked = step.get("offered_rate"), step.get("asked_rate")
    if asked is not None and offered is not None and offered < asked:
        return f"{_show(offered)} (asked {_show(asked)})"
    return _show(offered)


def _replicas(results: Mapping[str, Any]) -> list[str]:
    replicas = results.get("replicas")
    if not replicas:
        return []
    n = replicas.get("count", 2)
    cpus = (results.get("machine") or {}).get("cpus", "?")
    lines = [
        "## Scaling by replicas",
        "",
        f"The main workload's backlog again, through {n} engine workers (`iotcrm worker`, the "
        "same app id and topics, each its own web port and state folder; progress is the sum "
        f"of their `/metrics.json`) and {n} peer processes in one consumer group (progress: the "
        "sum of their status counters). The warm-up went out in quarters, each once the last "
        "was processed, after every engine worker owned partitions, so the replicas could "
        "join their groups before the backlog was published, frozen as before; *share per "
        "replica* shows how the backlog was split.",
        "",
        f"| contender | 1 replica events/s | {n} replicas events/s | {n} / 1 "
        "| CPU s per M events (1 → n) | CPU busy | machine busy | share of the backlog per replica "
        "| peak RSS MB |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for name in ("engine", "peer"):
        row = replicas.get(name)
        if not isinstance(row, Mapping):
            continue
        if row.get("error"):
            lines.append(f"| {name} | failed: {row['error'][:200]} | | | | | | | |")
            continue
        shares = " / ".join(f"{share * 100:.0f} %" for share in row.get("replica_shares") or [])
        lines.append(
            f"| {name} | {_show(row.get('one_replica_eps'))} | {_show(row.get('eps'))} "
            f"| {_show(row.get('over_one_replica'), 2, '×')} "
            f"| {_show(row.get('one_replica_cpu_s_per_million'))} → "
            f"{_show(row.get('cpu_s_per_million'))} "
            f"| {_show(_pct(row.get('cpu_utilisation')), 0, ' %')} "
            f"| {_show(row.get('machine_busy_pct'), 0, ' %')} | {shares or '–'} "
            f"| {_show(row.get('peak_rss_mb'))} |"
        )
    lines += [
        "",
        f"This machine has {cpus} CPUs, shared by Kafka, Cassandra and every process of the "
        "replicas (an engine worker runs its ingest and sink as child processes, so one "
        "replica already uses more than one core): the ratio is what more processes gain on "
        f"{cpus} cores, not what more machines would. CPU busy is the replicas' CPU time over "
        f"wall time (100 % = one core). This part took {_show(replicas.get('seconds'), 0, ' s')}.",
    ]
    return lines


def _growth(results: Mapping[str, Any]) -> list[str]:
    growth = results.get("growth")
    if not growth:
        return []
    if growth.get("error"):
        return ["## Growth", "", f"The growth row failed: {growth['error'][:500]}"]
    params = results.get("params") or {}
    base, engine = growth.get("base") or {}, growth.get("engine") or {}
    over = growth.get("over_base") or {}
    memory = growth.get("state_memory") or {}
    lines = [
        "## Growth",
        "",
        f"The engine on {growth.get('factor')}× the fleet: {_show(growth.get('customers'))} "
        f"customers × {params.get('devices_per_customer')} devices "
        f"({_show(growth.get('devices'))} devices), the same span and episode mix, against "
        "the main row. Its events go to the shared keyed topic `<prefix>.telemetry` "
        "(key = device id; `kafka.telemetry_topic`, which ingest also subscribes to) "
        f"instead of {_show(growth.get('devices'))} per-device topics; the main row uses "
        "per-device topics, so part of any difference is the topic layout (fewer partitions "
        "per fetch), not only the fleet. The stream starts "
        f"{(growth.get('skipped_s') or 0) / 3600:g} h into the simulation, where episodes "
        "begin, so its latency phase has actions to time. Warm-up, backlog and latency "
        "phase as in the main row, the latency at "
        f"{_show(params.get('load_share'), 2)} × its own backlog rate. This part took "
        f"{_show(growth.get('seconds'), 0, ' s')}.",
        "",
        "| row | customers | events on | events/s | steady events/s | CPU s per M events "
        "| offered /s | p50 ms | p99 ms | latency samples | peak RSS MB | RSS after backlog MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, customers, topics, row in (
        ("main", params.get("customers"), "per-device topics", base),
        (f"{growth.get('factor')}× fleet", growth.get("customers"), "shared keyed topic", engine),
    ):
        lines.append(
            f"| {label} | {_show(customers)} | {topics} | {_show(row.get('eps'))} "
            f"| {_show(row.get('steady_eps'))} | {_show(row.get('cpu_s_per_million'))} "
            f"| {_show(row.get('offered_rate'))} | {_show(row.get('p50_ms'), 1)} "
            f"| {_show(row.get('p99_ms'), 1)} | {_show(row.get('latency_samples'))} "
            f"| {_show(row.get('peak_rss_mb'))} | {_show(row.get('rss_after_backlog_mb'))} |"
        )
    lines.append(
        f"| growth / main | {growth.get('factor')}× | | {_show(over.get('eps'), 2, '×')} | | "
        f"| | {_show(over.get('p50_ms'), 2, '×')} | {_show(over.get('p99_ms'), 2, '×')} | "
        f"| {_show(over.get('peak_rss_mb'), 2, '×')} "
        f"| {_show(over.get('rss_after_backlog_mb'), 2, '×')} |"
    )
    lines += [
        "",
        "The main row's peak RSS includes its run over the rest of the stream for the "
        "accuracy score; *RSS after backlog* is taken at the same point in both rows.",
        "",
        "State memory per customer:",
        "",
    ]
    per_customer = memory.get("rss_kib_per_customer")
    lines.append(
        f"- **Resident memory: {_show(per_customer, 1, ' KiB')} per customer**: (RSS after "
        f"the backlog at {growth.get('factor')}× − RSS after the backlog in the main row) / "
        f"({_show(growth.get('customers'))} − {_show(params.get('customers'))}) customers, "
        "both after the same number of events (warm-up and backlog), so each customer of "
        "the larger fleet has a tenth of the history; the whole worker's process tree "
        "(actor, ingest, sink), so it also holds the registry and allocator slack."
    )
    small, large = memory.get("encoded_base") or {}, memory.get("encoded_growth") or {}
    if small.get("mean_bytes") is not None:
        lines.append(
            f"- **Encoded customer state** (the `tables/state.py` codec, the value of the "
            "`customers` table, usage windows included; timers are rows of their own table), "
            "from replaying the events of a sample of customers through the worker's hot "
            f"path in process: {_show(small.get('customers'))} customers of the main row over "
            f"its whole stream ({params.get('span_s', 0) / 3600:g} h, "
            f"{_show(small.get('events_per_customer'))} events each) hold "
            f"**{_show(small.get('mean_bytes'))} bytes** on average (p95 "
            f"{_show(small.get('p95_bytes'))}, max {_show(small.get('max_bytes'))}); "
            f"{_show(large.get('customers'))} customers of the growth row after its warm-up and "
            f"backlog ({_show(large.get('events_per_customer'))} events each) "
            f"{_show(large.get('mean_bytes'))} bytes (p95 {_show(large.get('p95_bytes'))})."
        )
    return lines


def _event_loop(results: dict[str, Any]) -> list[str]:
    """The main row's worker: how late its event loop ran over the whole row."""
    lag = (results.get("engine_metrics") or {}).get("event_loop")
    if not lag:
        return []
    return [
        "## The worker's event loop",
        "",
        f"Over the main row (warm-up, backlog, latency phase), the engine worker's event loop "
        f"woke up at most {lag['max_s'] * 1000:,.0f} ms late (sampled every 100 ms; "
        f"{lag['recent_max_s'] * 1000:,.0f} ms at most in its last {lag['recent_window_s']:g} s), "
        f"with {lag['stalls']} stalls of more than {lag['stall_threshold_s'] * 1000:,.0f} ms"
        + (
            f", {lag['busy_stalls']} of them busy (the loop's thread ran through at least "
            "half of it: work that did not yield, not a machine short of CPU). "
            if "busy_stalls" in lag
            else ". "
        )
        + (
            f"Its longest full garbage collection (every live object scanned at once) took "
            f"{lag['gc_full_max_s'] * 1000:,.0f} ms, of {lag['gc_full_collections']}. "
            if "gc_full_max_s" in lag
            else ""
        )
        + "The bench freezes the worker (SIGSTOP) while it publishes the backlog, and the first "
        "wake-up after the thaw counts the freeze as lag: one stall about as long as the "
        "freeze is the bench's own (not busy). A late loop delays heartbeats, fetches and "
        "timers alike (`/metrics.json` `event_loop`).",
    ]


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
            "and under a steady trickle a fetch carries a handful of events. This is why "
            "ingest consumes with librdkafka, in a process of its own."
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
    stages = engine.get("live_stages") or {}
    if stages:
        split = ", ".join(
            f"{name} {figures['mean_ms']:,.1f} ms" for name, figures in stages.items()
        )
        lines.append(
            f"- Where its records' latency went over the paced phase (mean per customer-stream "
            f"record, `iotcrm_stage_latency_seconds`): {split}. *ingest* is publication to "
            "ingest forwarding (the broker taking the devices' records, ingest's fetch); "
            "*transit* the broker, the actor's fetch and buffers; *actor* its batch up to the "
            "actions sent."
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
            f"- The customer-state codec takes {codec:.0f} % (states stay decoded between "
            "batches; each changed one, dedup ids included, is encoded once per checkpoint): "
            "a smaller dedup memory would cut it, and the changelog bytes with it."
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
    params = results.get("params") or {}
    lines: list[str] = []
    budget = engine.get("live_machine") or {}
    cores = (results.get("machine") or {}).get("cpus") or 0
    if budget and cores and budget.get("idle", 100.0) < 25:
        lines.append(
            "1. **Give the broker and the load cores of their own.** At "
            f"{_show(engine.get('offered_rate'))} events/s the Kafka broker took "
            f"{_show(budget.get('kafka'), 0, ' %')} of a core and the bench's publisher and "
            f"reader {_show(budget.get('bench'), 0, ' %')}, the engine "
            f"{_show(budget.get('engine'), 0, ' %')}, with {_show(budget.get('idle'), 0, ' %')} "
            f"of the {cores} × 100 % left idle: on this machine the steady-rate targets are "
            "bound by the cores the servers and the load generator leave, the same for the "
            "peer. A worker on a machine without the broker has the cores the backlog "
            "figures show."
        )
    kafka = sum(pct for name, pct in live.items() if name.startswith("Kafka clients"))
    devices = (params.get("customers") or 0) * (params.get("devices_per_customer") or 0)
    if devices and kafka:
        lines.append(
            f"{len(lines) + 1}. **Fewer partitions per fetch for large fleets**: every ingest "
            f"fetch lists all {devices:,}+ per-device topics, and the broker reads each of them "
            f"per fetch; the shared keyed telemetry topic ({params.get('partitions')} "
            "partitions) carries the same events."
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
    searched = (results.get("sustainable") or {}).get("engine") or {}
    if searched.get("steps") and not searched.get("error"):
        share = searched.get("share_of_backlog")
        held = (
            f"the engine held p99 < 250 ms at {_rate(searched)}"
            + (f" ({share * 100:.0f} % of its backlog rate)" if share else "")
            if searched.get("rate") is not None
            else "the engine held p99 < 250 ms at no rate tried, down to "
            f"{_show(searched.get('below'))}/s"
        )
        lines.append(
            f"{len(lines) + 1}. Until then, size workers by the sustainable rate, not by the "
            f"backlog one: {held} in the search above."
        )
    elif engine.get("live_lag", {}).get("last_stage_max_events"):
        lines.append(
            f"{len(lines) + 1}. Until then, the engine's sustainable offered load is well below "
            "half its backlog rate: size workers by the paced figures, not by the backlog ones."
        )
    return lines


def _measured_scale(results: Mapping[str, Any]) -> list[str]:
    lines = []
    if results.get("sustainable"):
        lines.append(
            "- **sustainable rate**: a step passes when the p99 of its own events' "
            "event-to-action latencies (as above, with each step's publish times) is under "
            "the limit, with enough samples and without falling behind; the rate reported is "
            "the highest step that passed, the search's resolution the gap to the lowest "
            "failed step above it."
        )
    if results.get("replicas"):
        lines.append(
            "- **replicas**: events/s of the same frozen backlog, CPU and peak RSS summed "
            "over every replica's process tree; *share per replica* is each one's part of "
            "the backlog's events."
        )
    if results.get("growth"):
        lines.append(
            "- **growth**: the same phases as the main row on the larger fleet; RSS after "
            "backlog is the resident set (VmRSS) of the worker's process tree right after "
            "the backlog was processed."
        )
    return lines


def servers_summary(servers: dict[str, int]) -> str:
    """One line on what ``clear_earlier_runs`` found and left."""
    return (
        f"{servers['deleted_topics']} topics and {servers['dropped_keyspaces']} keyspaces "
        f"of earlier runs deleted first; the broker held {servers['broker_topics']} "
        f"topics ({servers['broker_partitions']} partitions)"
    )


def _loop_late(step: Mapping[str, Any]) -> str:
    """The worker's worst event-loop wake-up of a search step, and its full collections."""
    if step.get("loop_late_max_ms") is None:
        return "–"
    return f"{_show(step['loop_late_max_ms'], 0)} ({_show(step.get('gc_full_collections'))})"


def _section(lines: list[str]) -> list[str]:
    return [*lines, ""] if lines else []


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
        *(
            ["", f"Servers at the start: {servers_summary(servers)}."]
            if (servers := results.get("machine", {}).get("servers_at_start"))
            else []
        ),
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
        *_section(_sustainable(results)),
        *_section(machine_budget(results)),
        *_section(_replicas(results)),
        *_section(_growth(results)),
        "## Accuracy of the engine's actions against the simulation's ground truth",
        "",
        *_accuracy(results),
        "",
        *_section(_event_loop(results)),
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
        *_measured_scale(results),
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


def plot_sustainable(results: Mapping[str, Any], path: Path) -> None:
    """Each step of the sustainable-rate search: its p99 against its offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sustainable = results.get("sustainable") or {}
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for name in ("engine", "peer"):
        steps = (sustainable.get(name) or {}).get("step_results") or []
        points = sorted(
            (s["offered_rate"], s["p99_ms"], bool(s.get("passed")))
            for s in steps
            if s.get("p99_ms")
        )
        if points:
            (line,) = axis.plot([p[0] for p in points], [p[1] for p in points], label=name)
            for marker, held in (("o", True), ("x", False)):
                chosen = [p for p in points if p[2] is held]
                axis.scatter([p[0] for p in chosen], [p[1] for p in chosen], marker=marker,
                             color=line.get_color(), zorder=3)  # fmt: skip
    axis.axhline(sustainable.get("p99_limit_ms", 250.0), color="grey", linestyle=":", linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("offered events / s")
    axis.set_ylabel("event-to-action p99, ms (log scale)")
    axis.set_title("Sustainable-rate search: one point per step (x: did not hold)")
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def rerender(out: Path) -> None:
    """``report.md`` and the plots again from ``out/latest.json`` (the same run's figures)."""
    write_report(orjson.loads((out / "latest.json").read_bytes()), None, out)


def write_report(results: Mapping[str, Any], phases: Any, out: Path) -> None:
    """``latest.json``, ``report.md``, ``throughput.png``, ``latency_cdf.png`` and
    (with a sustainable-rate search) ``sustainable.png`` in ``out``."""
    del phases
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    (out / "report.md").write_text(build_markdown(results), encoding="utf-8")
    plot_throughput(results, out / "throughput.png")
    plot_latency_cdf(results, out / "latency_cdf.png")
    if results.get("sustainable"):
        plot_sustainable(results, out / "sustainable.png")


if __name__ == "__main__":
    import sys

    rerender(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results")
