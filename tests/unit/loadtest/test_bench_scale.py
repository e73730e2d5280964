"""The benchmark's sustainable-rate search, replica row and growth row: the
pure parts (search steps, step sizing, verdicts, ratios, options) and the
contenders' replica bookkeeping, without Kafka."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import (
    P99_LIMIT_MS,
    BenchOptions,
    _targets,
    add_arguments,
    min_step_samples,
    offered_rate,
    options_from,
    sample_records,
)
from loadtest.contenders import EngineContender, PeerContender, ProcessTree
from loadtest.measure import (
    RateSearch,
    at_least,
    high_water,
    split_by_trigger,
    state_memory_per_customer,
    step_end,
    step_verdict,
    sustainable_summary,
)


def _run(search: RateSearch, sustains: float) -> list[tuple[float, bool]]:
    steps: list[tuple[float, bool]] = []
    while (rate := search.next_rate(steps)) is not None:
        steps.append((rate, rate <= sustains))
    return steps


# RateSearch -----------------------------------------------------------------------------


def test_the_search_steps_up_while_steps_hold_then_bisects() -> None:
    search = RateSearch(start=300.0, ceiling=1000.0, up=1.5, resolution=0.1, max_steps=10)
    steps = _run(search, sustains=600.0)
    assert [rate for rate, _ in steps[:3]] == [300.0, 450.0, 675.0]
    low, high = search.bracket(steps)
    assert low is not None and high is not None
    assert low <= 600.0 < high
    assert high <= low * 1.1  # stopped at the resolution
    assert all(rate <= 1000.0 for rate, _ in steps)


def test_the_search_steps_down_when_the_first_step_fails() -> None:
    search = RateSearch(start=1000.0, ceiling=4000.0, up=2.0, resolution=0.2, max_steps=10)
    steps = _run(search, sustains=300.0)
    assert [rate for rate, _ in steps[:3]] == [1000.0, 500.0, 250.0]
    low, high = search.bracket(steps)
    assert low is not None and low <= 300.0 < (high or 0)


def test_the_search_stops_at_the_ceiling_when_everything_holds() -> None:
    search = RateSearch(start=400.0, ceiling=1000.0, up=2.0, max_steps=10)
    steps = _run(search, sustains=10_000.0)
    assert [rate for rate, _ in steps] == [400.0, 800.0, 1000.0]
    assert search.bracket(steps) == (1000.0, None)


def test_the_search_stops_at_the_floor_and_after_max_steps() -> None:
    search = RateSearch(start=1000.0, ceiling=2000.0, up=2.0, floor=200.0, max_steps=10)
    steps = _run(search, sustains=10.0)
    assert [rate for rate, _ in steps] == [1000.0, 500.0, 250.0]  # 125 is below the floor
    assert search.bracket(steps) == (None, 250.0)
    short = RateSearch(start=100.0, ceiling=10_000.0, up=1.5, max_steps=3)
    assert len(_run(short, sustains=5000.0)) == 3


def test_the_bracket_ignores_failures_below_the_highest_pass() -> None:
    steps = [(100.0, True), (150.0, False), (200.0, True), (300.0, False), (250.0, False)]
    assert RateSearch.bracket(steps) == (200.0, 250.0)


# step sizing and verdicts ---------------------------------------------------------------


def test_high_water_never_moves_back() -> None:
    assert high_water([3.0, 1.0, None, 4.0, 2.0]) == [3.0, 3.0, 3.0, 4.0, 4.0]


def test_a_step_holds_enough_expected_actions_and_lasts_long_enough() -> None:
    clock = [float(t) for t in range(1000)]  # one event per simulated second
    ats = [float(t) + 0.5 for t in range(100, 1000, 100)]  # an action every 100 events
    # 3 actions from event 0: the third is at 300.5, reached by event 301.
    assert step_end(clock, 0, 10.0, ats, min_actions=3, min_s=1.0, max_s=100.0) == (302, 3)
    # At 100/s, 6 s is 600 events: longer than the actions need.
    end, inside = step_end(clock, 0, 100.0, ats, min_actions=3, min_s=6.0, max_s=100.0)
    assert (end, inside) == (600, 5)
    # Capped by max_s: 2 s at 10/s.
    assert step_end(clock, 0, 10.0, ats, min_actions=3, min_s=1.0, max_s=2.0) == (20, 0)
    # A later start counts only the actions after it.
    assert step_end(clock, 250, 10.0, ats, min_actions=2, min_s=1.0, max_s=100.0) == (402, 2)
    # Past the last action: as long as allowed, within the stream.
    assert step_end(clock, 950, 10.0, ats, min_actions=2, min_s=1.0, max_s=100.0) == (1000, 0)
    assert step_end(clock, 1000, 10.0, ats, min_actions=2, min_s=1.0, max_s=100.0) == (1000, 0)


def test_the_verdict_needs_samples_a_low_p99_and_no_lag() -> None:
    fast = [0.05] * 100
    assert step_verdict(fast, limit_ms=250, min_samples=20).passed
    slow_tail = [0.05] * 97 + [0.4] * 3  # 3 % of the actions above the limit
    verdict = step_verdict(slow_tail, limit_ms=250, min_samples=20)
    assert not verdict.passed and verdict.reason == "p99 ≥ 250 ms"
    assert not step_verdict(fast[:19], limit_ms=250, min_samples=20).passed
    few_but_slow = step_verdict([0.05, 0.05, 0.3], limit_ms=250, min_samples=20)
    assert few_but_slow.reason == "p99 ≥ 250 ms"  # one slow action in three is conclusive
    assert not step_verdict(fast, limit_ms=250, min_samples=20, fell_behind=True).passed
    assert step_verdict([0.2] * 30, limit_ms=250, min_samples=20).passed
    assert not step_verdict([0.25] * 30, limit_ms=250, min_samples=20).passed  # strictly under


def test_actions_are_split_into_event_triggered_and_timer_driven() -> None:
    event_ts = [1000.0, 1000.5, None, 1002.25]
    timed = [
        (0.05, {"at": 1000.5, "evidence": {"trigger": "condition"}}),
        (3.0, {"at": 1001.0, "evidence": {"trigger": "silence"}}),  # due between events
        (0.07, {"at": 1002.25, "evidence": {"trigger": "sequence"}}),
        (1.5, {"at": 999.0, "evidence": {"trigger": "absence"}}),
    ]
    by_event, by_time = split_by_trigger(timed, event_ts)
    assert by_event == [0.05, 0.07]
    assert by_time == [3.0, 1.5]


def test_a_step_offers_what_the_publisher_achieved_when_it_fell_short() -> None:
    walls = [i * 0.01 for i in range(101)]  # 100 events/s
    assert offered_rate(100.0, walls) == 100.0
    assert offered_rate(104.0, walls) == 104.0  # within 5 %
    assert offered_rate(200.0, walls) == pytest.approx(100.0)
    assert offered_rate(200.0, []) == 200.0


def test_a_state_sample_keeps_every_record_of_every_nth_customer() -> None:
    owner = {f"d{i}": f"c{i // 2:02d}" for i in range(40)}  # 20 customers, 2 devices each
    records = [(f"d{i % 40}", b"x") for i in range(400)] + [("ghost-1", b"bad")]
    kept, customers = sample_records(records, owner, 5)
    assert customers == 5
    assert {owner[d] for d, _ in kept} == {"c00", "c04", "c08", "c12", "c16"}
    assert len(kept) == 400 // 20 * 5
    assert sample_records(records, owner, 100)[1] == 20


def test_min_step_samples_is_a_quarter_of_the_expected_actions() -> None:
    assert min_step_samples(BenchOptions(search_min_actions=120)) == 30
    assert min_step_samples(BenchOptions(search_min_actions=4)) == 10


# summaries and ratios -------------------------------------------------------------------


def _step(rate: float, passed: bool, samples: int = 30) -> dict[str, Any]:
    return {"offered_rate": rate, "passed": passed, "latency_samples": samples}


def test_the_summary_is_the_highest_rate_that_held() -> None:
    steps = [_step(300, True, 41), _step(450, True, 40), _step(675, False, 12), _step(562, True)]
    summary = sustainable_summary(steps, ceiling=1000.0)
    assert summary["rate"] == 562 and summary["failed_at"] == 675
    assert summary["samples"] == 123 and summary["min_step_samples"] == 12
    assert summary["steps"] == 4 and summary["at_ceiling"] is False and summary["below"] is None
    assert sustainable_summary([_step(1000, True)], ceiling=1000.0)["at_ceiling"] is True
    nothing = sustainable_summary([_step(300, False), _step(200, False)])
    assert nothing["rate"] is None and nothing["below"] == 200


def test_engine_at_least_peer_compares_what_the_searches_can_tell() -> None:
    assert at_least({"rate": 1000.0}, {"rate": 1000.0}) is True
    assert at_least({"rate": 999.0}, {"rate": 1000.0}) is False
    assert at_least({"rate": None, "below": 1200.0}, {"rate": 1000.0}) is None
    assert at_least({"rate": 1300.0}, {"rate": None, "below": 1200.0}) is True
    assert at_least({"rate": None, "below": 100.0}, {"rate": None, "below": 200.0}) is None


def test_state_memory_per_customer_is_the_rss_difference_over_the_customers_added() -> None:
    assert state_memory_per_customer(400.0, 490.0, 100, 1000) == 102.4
    assert state_memory_per_customer(400.0, 390.0, 100, 1000) == pytest.approx(-11.4, abs=0.1)
    assert state_memory_per_customer(400.0, 490.0, 100, 100) is None


def test_the_new_targets_are_judged_from_the_figures() -> None:
    doc: dict[str, Any] = {
        "ratios": {"engine_over_peer": 1.0, "engine_over_ceiling": 0.1},
        "engine": {"p50_ms": 49.9, "p99_ms": 250.0},
        "sustainable": {"engine": {"rate": 900.0}, "peer": {"rate": 800.0}},
        "replicas": {"engine": {"over_one_replica": 1.59}},
    }
    targets = _targets(doc)
    assert targets["engine_p50_under_50ms"] is True
    assert targets["engine_p99_under_250ms"] is False
    assert targets["engine_sustainable_at_least_peer"] is True
    assert targets["engine_replicas_1_6x"] is False
    doc["sustainable"]["engine"] = {"rate": None, "below": 500.0}
    doc["replicas"]["engine"]["over_one_replica"] = 1.6
    targets = _targets(doc)
    assert targets["engine_sustainable_at_least_peer"] is False
    assert targets["engine_replicas_1_6x"] is True
    assert P99_LIMIT_MS == 250.0


# options ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_the_defaults_run_every_part_and_each_can_be_skipped() -> None:
    parser = _parser()
    defaults = options_from(parser.parse_args([]))
    assert defaults.sustainable and defaults.replicas == 2 and defaults.growth_factor == 10
    skipped = options_from(parser.parse_args(["--no-sustainable", "--no-replicas", "--no-growth"]))
    assert not skipped.sustainable and skipped.replicas == 0 and skipped.growth_factor == 0
    tuned = options_from(
        parser.parse_args(
            ["--replicas", "3", "--growth-factor", "4", "--search-span", "6h",
             "--search-steps", "7", "--search-min-actions", "30", "--search-budget", "2m",
             "--search-customers", "50"]
        )
    )  # fmt: skip
    assert (tuned.replicas, tuned.growth_factor, tuned.search_span_s) == (3, 4, 6 * 3600.0)
    assert (tuned.search_max_steps, tuned.search_min_actions) == (7, 30)
    assert (tuned.search_budget_s, tuned.search_customers) == (120.0, 50)
    for wrong in (["--replicas", "1"], ["--growth-factor", "1"]):
        with pytest.raises(ValueError):
            options_from(parser.parse_args(wrong))
    with pytest.raises(SystemExit):  # refused by the parser itself
        parser.parse_args(["--replicas", "-2"])


def test_every_flag_has_help() -> None:
    parser = _parser()
    missing = [
        action.option_strings
        for action in parser._actions
        if action.option_strings and action.option_strings != ["-h", "--help"] and not action.help
    ]
    assert missing == []
    text = parser.format_help()
    for flag in ("--no-sustainable", "--no-replicas", "--no-growth", "--search-span"):
        assert flag in text


# contenders -------------------------------------------------------------------------------


def test_engine_replicas_share_the_app_and_topics_but_not_ports_or_state(tmp_path: Path) -> None:
    engine = EngineContender("r1", "127.0.0.1:1", tmp_path, 4, replicas=2)
    first, second = (worker.env for worker in engine.workers)
    assert first["IOTCRM_WORKER_APP_ID"] == second["IOTCRM_WORKER_APP_ID"] == "r1-engine"
    assert first["IOTCRM_KAFKA_DEVICE_TOPIC_PREFIX"] == second["IOTCRM_KAFKA_DEVICE_TOPIC_PREFIX"]
    assert first["IOTCRM_WORKER_WEB_PORT"] != second["IOTCRM_WORKER_WEB_PORT"]
    assert first["IOTCRM_WORKER_STATE_DIR"] != second["IOTCRM_WORKER_STATE_DIR"]
    assert engine.workers[0].log_path != engine.workers[1].log_path
    with pytest.raises(ValueError):
        EngineContender("r1", "127.0.0.1:1", tmp_path, 4, replicas=0)


def test_engine_progress_is_the_sum_of_every_replica(tmp_path: Path) -> None:
    engine = EngineContender("r2", "127.0.0.1:1", tmp_path, 4, replicas=2)

    def metrics(consumed: int, dead: int, events: int, in_flight: int) -> dict[str, Any]:
        return {
            "ingest": {"consumed": consumed, "deadlettered": dead},
            "actor": {"events": events, "duplicates": 1, "late": 2, "in_flight": in_flight},
        }

    answers = [metrics(100, 3, 80, 10), metrics(50, 1, 40, 0)]
    for worker, answer in zip(engine.workers, answers, strict=True):
        worker.metrics = lambda answer=answer: answer  # type: ignore[method-assign]
    progress = asyncio.run(engine.progress())
    assert progress is not None
    assert progress.started == 150
    # Processed once its actions are sent, checkpointed (events) or not yet (in flight).
    assert progress.done == (3 + 80 + 3 + 10) + (1 + 40 + 3)
    engine.workers[1].metrics = lambda: None  # type: ignore[method-assign]
    assert asyncio.run(engine.progress()) is None  # not every replica answers yet


def test_the_growth_engine_reads_one_keyed_topic_instead_of_device_topics(tmp_path: Path) -> None:
    engine = EngineContender("g1", "127.0.0.1:1", tmp_path, 4, shared_topic=True)
    assert (
        engine.shared_topic == engine.env["IOTCRM_KAFKA_TELEMETRY_TOPIC"] == "g1-engine.telemetry"
    )
    plans = {plan.name: plan.partitions for plan in engine.topic_plans(["d1", "d2"])}
    assert plans["g1-engine.telemetry"] == 4
    assert not any(name.startswith(engine.device_prefix) for name in plans)
    per_device = EngineContender("g2", "127.0.0.1:1", tmp_path, 4)
    assert per_device.shared_topic is None
    names = [plan.name for plan in per_device.topic_plans(["d1", "d2"])]
    assert f"{per_device.device_prefix}d1" in names


def test_peer_replicas_share_the_group_with_their_own_state_and_status(tmp_path: Path) -> None:
    peer = PeerContender("p1", "127.0.0.1:1", tmp_path, 4, replicas=2)

    def option(arguments: list[str], name: str) -> str:
        return arguments[arguments.index(name) + 1]

    first, second = peer.arguments(0), peer.arguments(1)
    assert option(first, "--group") == option(second, "--group") == "p1-peer"
    assert option(first, "--state-dir") != option(second, "--state-dir")
    assert option(first, "--status") != option(second, "--status")
    assert option(first, "--status") == str(peer.status_path)
    for path, status in zip(peer.status_paths, [(10, 2, 8, 5.0), (20, 1, 19, 7.0)], strict=True):
        consumed, dead, processed, last = status
        path.write_text(
            f'{{"consumed": {consumed}, "deadlettered": {dead}, "processed": {processed}, '
            f'"last_at": {last}}}'
        )
    progress = asyncio.run(peer.progress())
    assert progress is not None
    assert (progress.started, progress.done, progress.last_at) == (30, 30, 7.0)
    peer.status_paths[1].unlink()
    assert asyncio.run(peer.progress()) is None


def test_a_process_tree_sums_its_roots() -> None:
    one = ProcessTree(os.getpid())
    both = ProcessTree(os.getpid(), os.getpid())
    assert one.rss_mb() > 0 and one.peak_rss_mb() >= one.rss_mb() * 0.5
    assert both.rss_mb() == pytest.approx(2 * one.rss_mb(), rel=0.2)
    assert both.cpu_s() >= one.cpu_s()


# the report ------------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    def step(rate: float, p99: float, passed: bool, verdict: str) -> dict[str, Any]:
        return {
            "offered_rate": rate, "events": int(rate * 8), "seconds": 8.0,
            "expected_actions": 44, "latency_samples": 41, "p50_ms": 30.0, "p99_ms": p99,
            "max_ms": p99 + 1, "timer_samples": 7, "timer_p99_ms": 1800.0,
            "max_lag_events": 120, "cpu_s_per_million": 333.0,
            "passed": passed, "verdict": verdict,
        }  # fmt: skip

    return {
        "params": {"customers": 100, "devices_per_customer": 2, "span_s": 259200,
                   "load_share": 0.5, "search_start_share": 0.3, "search_up": 1.5},
        "machine": {"cpus": 2},
        "engine": {"eps": 3000.0, "p50_ms": 61.0, "p99_ms": 240.0, "peak_rss_mb": 500.0},
        "peer": {"eps": 5000.0, "p50_ms": 20.0, "p99_ms": 90.0},
        "ratios": {"engine_over_peer": 0.6, "engine_replicas_over_one": 1.12},
        "targets": {"engine_p50_under_50ms": False, "engine_p99_under_250ms": True,
                    "engine_sustainable_at_least_peer": False, "engine_replicas_1_6x": False},
        "sustainable": {
            "engine": {
                "rate": 1350.0, "failed_at": 2025.0, "at_ceiling": False, "steps": 3,
                "samples": 123, "min_step_samples": 41, "share_of_backlog": 0.45,
                "stopped_by": "the time budget (180 s)",
                "step_results": [step(900.0, 120.0, True, "p99 < 250 ms"),
                                 step(1350.0, 200.0, True, "p99 < 250 ms"),
                                 step(2025.0, 2600.0, False, "fell behind (stopped early)")],
            },
            "peer": {"rate": None, "below": 1500.0, "steps": 1, "samples": 41,
                     "min_step_samples": 41, "stopped_by": "the search converged",
                     "step_results": [step(1500.0, 900.0, False, "p99 ≥ 250 ms")]},
            "engine_over_peer": None, "p99_limit_ms": 250.0, "min_step_samples": 20,
            "min_actions": 40, "min_step_s": 6.0, "max_step_s": 25.0, "abort_lag_s": 2.0,
            "workload": {"customers": 300, "devices": 600, "span_s": 43200,
                         "stream_records": 97000, "expected_actions": 401},
            "seconds": 250.0,
        },
        "replicas": {
            "count": 2,
            "engine": {"eps": 3360.0, "one_replica_eps": 3000.0, "over_one_replica": 1.12,
                       "replica_shares": [0.52, 0.48], "cpu_s_per_million": 590.0,
                       "one_replica_cpu_s_per_million": 410.0, "cpu_utilisation": 1.9,
                       "machine_busy_pct": 99.0, "peak_rss_mb": 1100.0},
            "peer": {"error": "TimeoutError: peer did not process the backlog in time"},
        },
        "growth": {
            "factor": 10, "customers": 1000, "devices": 2000, "skipped_s": 25920.0,
            "engine": {"eps": 2700.0, "p50_ms": 80.0, "p99_ms": 400.0, "latency_samples": 77,
                       "peak_rss_mb": 700.0, "rss_after_backlog_mb": 560.0,
                       "offered_rate": 1350.0},
            "base": {"eps": 3000.0, "p50_ms": 61.0, "p99_ms": 240.0, "latency_samples": 60,
                     "peak_rss_mb": 500.0, "rss_after_backlog_mb": 470.0},
            "over_base": {"eps": 0.9, "p99_ms": 1.667, "peak_rss_mb": 1.4},
            "state_memory": {
                "rss_kib_per_customer": 102.4,
                "encoded_base": {"events_per_customer": 1884.0, "mean_bytes": 5123.0,
                                 "p95_bytes": 7000, "max_bytes": 9000},
                "encoded_growth": {"events_per_customer": 82.0, "mean_bytes": 2100.0,
                                   "p95_bytes": 2600},
            },
        },
    }  # fmt: skip


def test_the_report_shows_the_sustainable_rates_and_every_step() -> None:
    from loadtest.report import build_markdown

    markdown = build_markdown(_doc())
    assert "## Sustainable rate" in markdown
    assert "| engine | 1,350/s | 45 % | 2,025/s | 3 | 123 (41) | the time budget (180 s) |" in (
        markdown
    )
    assert "| peer | < 1,500/s |" in markdown
    assert (
        "| engine | 3 | 2,025 | 16,200 | 8.0 | 44 | 41 | 30.0 | 2,600.0 | 2,601.0 | 7, 1,800 |"
        in (markdown)
    )
    assert "fell behind (stopped early) |" in markdown
    short = _doc()
    short["sustainable"]["peer"]["step_results"][0].update(offered_rate=1100.0, asked_rate=1500.0)
    assert "| peer | 1 | 1,100 (asked 1,500) |" in build_markdown(short)
    assert "300 customers × 2 devices over 12 h (97,000 events, 401 expected actions" in markdown
    assert "| engine sustainable rate ≥ peer (p99 < 250 ms) | 1,350/s vs < 1,500/s | no |" in (
        markdown
    )
    assert "| engine p50 < 50 ms at half load | 61.0 ms | no |" in markdown
    assert "| engine p99 < 250 ms at half load | 240.0 ms | yes |" in markdown


def test_the_report_shows_the_replica_row_and_a_failed_part() -> None:
    from loadtest.report import build_markdown

    markdown = build_markdown(_doc())
    assert "## Scaling by replicas" in markdown
    assert (
        "| engine | 3,000 | 3,360 | 1.12× | 410 → 590 | 190 % | 99 % | 52 % / 48 % | 1,100 |"
        in (markdown)
    )
    assert "| peer | failed: TimeoutError: peer did not process the backlog in time |" in markdown
    assert "| engine with 2 replicas ≥ 1.6× one | 1.12× | no |" in markdown
    assert "This machine has 2 CPUs" in markdown


def test_the_report_shows_growth_against_the_main_row_and_memory_per_customer() -> None:
    from loadtest.report import build_markdown

    markdown = build_markdown(_doc())
    assert "## Growth" in markdown
    assert "| main | 100 | per-device topics | 3,000 |" in markdown
    assert "| 10× fleet | 1,000 | shared keyed topic | 2,700 |" in markdown
    assert "| growth / main | 10× | | 0.90× |" in markdown
    assert "**Resident memory: 102.4 KiB per customer**" in markdown
    assert "**5,123 bytes** on average (p95 7,000, max 9,000)" in markdown
    assert "7.2 h into the simulation" in markdown
    failed = _doc()
    failed["growth"] = {"error": "RuntimeError: engine exited"}
    assert "The growth row failed: RuntimeError: engine exited" in build_markdown(failed)


def test_without_the_new_parts_the_report_has_no_such_sections() -> None:
    from loadtest.report import build_markdown

    doc = _doc()
    for part in ("sustainable", "replicas", "growth", "targets"):
        del doc[part]
    markdown = build_markdown(doc)
    for heading in ("## Sustainable rate", "## Scaling by replicas", "## Growth"):
        assert heading not in markdown
    assert "| engine sustainable rate ≥ peer (p99 < 250 ms) | – | – |" in markdown


def test_summary_lines_and_the_search_plot(tmp_path: Path) -> None:
    from loadtest.report import plot_sustainable, summary_lines

    lines = summary_lines(_doc())
    assert "sustainable (p99 < 250 ms): engine 1,350/s, peer < 1,500/s, engine/peer –" in lines
    assert "2 replicas / 1: engine 1.12, peer –" in lines
    assert any(line.startswith("growth 10x: engine 2,700 events/s (0.90x") for line in lines)
    plot_sustainable(_doc(), tmp_path / "sustainable.png")
    assert (tmp_path / "sustainable.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Scripted:
    """A contender whose progress follows a script of ``done`` counts."""

    def __init__(self, done: list[int]) -> None:
        self.done = iter(done)

    async def progress(self) -> Any:
        from loadtest.contenders import Progress

        value = next(self.done, None)
        if value is None:
            return None
        # the worker's event loop, as its /metrics.json says with the counters
        self.metrics = {"event_loop": {"recent_max_s": value / 10_000}}
        return Progress(value, value)


@pytest.mark.parametrize(
    ("done", "reason"),
    [
        ([990, 400, 990, 990], []),  # one spike of lag: carries on
        ([990, 400, 450, 990], ["behind"]),  # behind twice in a row: stops
    ],
)
def test_a_step_stops_once_the_contender_is_behind_twice_in_a_row(
    done: list[int], reason: list[str]
) -> None:
    from loadtest.bench import _watch_lag

    async def run() -> tuple[list[str], list[tuple[float, int]], bool, list[float]]:
        # Everything published, over the last 100 s: a pace of about 10/s,
        # whatever was asked, so 50 s of load behind is about 500 events.
        walls = [time.time() - 100.0] * 1000
        stop, lags, stopped, loop_late = asyncio.Event(), [], [], []
        task = asyncio.create_task(
            _watch_lag(
                _Scripted(done),
                walls,
                0,
                50.0,
                stop,
                lags,
                float("inf"),
                stopped,
                loop_late,  # type: ignore[arg-type]
            )
        )
        await asyncio.sleep(0.5 * len(done) + 0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return stopped, lags, stop.is_set(), loop_late

    stopped, lags, was_stopped, loop_late = asyncio.run(run())
    assert stopped == reason and was_stopped == bool(reason)
    assert [lag for _, lag in lags] == [1000 - d for d in done]
    assert loop_late == [d / 10_000 for d in done]


def test_encoded_states_are_the_codec_sizes_of_the_sampled_customers() -> None:
    from engine.config import load_settings
    from loadtest.bench import BENCH_EPISODES, Workload, encoded_states
    from loadtest.simulator import SimParams, Simulation
    from tables.state import new_customer_state

    sim = Simulation(
        SimParams(customers=6, seed=3, span_s=2 * 3600, end_ts=1_763_700_000.0,
                  episodes=BENCH_EPISODES)
    )  # fmt: skip
    records = list(sim.events())
    work = Workload(sim, records, sim.truth(), [], [], records)
    sizes = encoded_states(work, load_settings(), len(records), customers=3)
    assert sizes["customers"] == 3
    assert 0 < sizes["events"] < len(records)
    assert sizes["events_per_customer"] == round(sizes["events"] / 3, 1)
    # Real encoded states: far more than an empty one, ordered statistics.
    from tables.state import encode_state

    empty = len(encode_state(new_customer_state("c-0001")))
    assert sizes["mean_bytes"] > 2 * empty
    assert sizes["p95_bytes"] <= sizes["max_bytes"]


def test_the_last_remedy_quotes_the_sustainable_rate() -> None:
    from loadtest.report import remedies

    doc = _doc()
    assert remedies(doc)[-1].endswith(
        "the engine held p99 < 250 ms at 1,350/s (45 % of its backlog rate) in the search above."
    )
    doc["sustainable"]["engine"] = {"rate": None, "below": 300.0, "steps": 4}
    assert "held p99 < 250 ms at no rate tried, down to 300/s in the search" in remedies(doc)[-1]
