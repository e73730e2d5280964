"""Building the benchmark's results document, report and plots from measured figures."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest.bench import BenchOptions, _lag_summary, _targets, accuracy, options_from
from loadtest.report import build_markdown, diagnosis, remedies, summary_lines, write_report
from tables.state import BASELINE_MIN_DAYS


def _results(**engine: Any) -> dict[str, Any]:
    base_engine = {
        "eps": 2000.0,
        "steady_eps": 2500.0,
        "p50_ms": 120.0,
        "p99_ms": 900.0,
        "cpu_s_per_million": 400.0,
        "events_per_cpu_s": 2500.0,
        "cpu_utilisation": 0.5,
        "peak_rss_mb": 300.0,
        "offered_rate": 1000.0,
        "latency_kind": "event to action",
        "live_cpu_s_per_million": 1200.0,
        "live_events": 30000,
        "live_seconds": 61.0,
        "live_lag": {"first_stage_max_events": 12, "last_stage_max_events": 4321},
    }
    return {
        "commit": "abc123",
        "command": ".venv/bin/python -m loadtest.bench --customers 7",
        "params": {"customers": 7, "devices_per_customer": 2, "span_s": 86400, "partitions": 4},
        "engine": {**base_engine, **engine},
        "peer": {"eps": 1600.0, "p50_ms": 80.0, "p99_ms": 300.0, "cpu_s_per_million": 350.0},
        "ceiling": {
            "eps": 100000.0,
            "p50_ms": 5.0,
            "p99_ms": 40.0,
            "cpu_s_per_million": 3.0,
            "live_cpu_s_per_million": 110.0,
        },
        "ratios": {"engine_over_ceiling": 0.02, "engine_over_peer": 1.25},
        "targets": {"engine_at_least_peer": True, "engine_1_5x_peer": False},
        "accuracy": {
            "types": {
                "coupon": {"precision": 1.0, "recall": 0.8, "tp": 4, "fp": 0, "fn": 1},
            },
            "expected_by_type": {"coupon": 5},
            "actions_by_rule": {"coupon-detergent-low": 4},
        },
        "profile": {
            "events": 1000,
            "actions": 3,
            "us_per_event": 250.0,
            "components_pct": {"models (River)": 40.0, "actor: state codec": 10.0},
            "top_functions": [
                {"function": "river/x.py:1(f)", "self_pct": 9.0, "cumulative_pct": 9.0, "calls": 5}
            ],
            "live": {
                "events": 9000,
                "offered_rate": 1000.0,
                "wall_s": 12.0,
                "caught_up": False,
                "components_pct": {
                    "Kafka clients: protocol encode and decode (aiokafka)": 30.0,
                    "Faust tables and streams": 15.0,
                    "models (River)": 5.0,
                    "rules": 2.0,
                },
                "top_functions": [],
            },
        },
        "latency_cdf_ms": {"engine": [[50.0, 0.5], [900.0, 1.0]], "peer": [[20.0, 1.0]]},
    }


def test_the_report_shows_the_measured_figures_and_the_command() -> None:
    markdown = build_markdown(_results())
    assert ".venv/bin/python -m loadtest.bench --customers 7" in markdown
    assert (
        "| engine (iotcrm worker) | 2,000 | 2,500 | 120.0 | 900.0 | 400 | 2,500 | 50 % | 300 |"
        in (markdown)
    )
    assert "| coupon | 5 | 1.000 | 0.800 | 4 | 0 | 1 |" in markdown
    assert "engine ≥ 1.5× peer | 1.25× | no |" in markdown
    assert "**250.0 µs per event**" in markdown
    assert "| Kafka clients: protocol encode and decode (aiokafka) | 30.0 |" in markdown


def test_the_report_says_what_the_broker_held_when_the_run_began() -> None:
    results = _results()
    assert "Servers at the start" not in build_markdown(results)
    results["machine"] = {"cpus": 2, "servers_at_start": {
        "deleted_topics": 3805, "dropped_keyspaces": 15,
        "broker_topics": 2, "broker_partitions": 51}}  # fmt: skip
    assert (
        "Servers at the start: 3805 topics and 15 keyspaces of earlier runs deleted first; "
        "the broker held 2 topics (51 partitions)." in build_markdown(results)
    )


def test_the_diagnosis_follows_the_figures() -> None:
    idle = "\n".join(diagnosis(_results(cpu_utilisation=0.5)))
    assert "idle" in idle and "4,000 events/s at full use" in idle
    assert "7 % of its time on the work itself" in idle
    assert "and 45 % on the machinery around it, 30 % in the pure-Python Kafka" in idle
    assert "1,200 µs of CPU against 400 µs" in idle
    assert "4,321 events behind" in idle
    assert "cost 110 µs of CPU per event in the paced phase against 3.0 µs" in idle
    busy = "\n".join(diagnosis(_results(cpu_utilisation=0.97)))
    assert "CPU-bound" in busy and "idle" not in busy.split("\n")[0]


def test_a_span_too_short_for_a_usage_baseline_is_named_as_the_reason_for_no_offers() -> None:
    results = _results()
    results["accuracy"]["types"]["retention_offer"] = {
        "precision": None, "recall": 0.0, "tp": 0, "fp": 0, "fn": 12,
    }  # fmt: skip
    results["params"]["span_s"] = (BASELINE_MIN_DAYS + 1) * 86400
    assert "No retention offer could fire" in build_markdown(results)
    results["params"]["span_s"] = (BASELINE_MIN_DAYS + 5) * 86400
    assert "No retention offer could fire" not in build_markdown(results)


def test_remedies_are_backed_by_the_run_and_numbered_in_order() -> None:
    results = _results()
    results["machine"] = {"cpus": 2}
    results["engine"]["live_machine"] = {
        "engine": 60.0, "kafka": 95.0, "cassandra": 10.0, "bench": 30.0, "other": 0.0, "idle": 5.0,
    }  # fmt: skip
    items = remedies(results)
    assert [item.split(".")[0] for item in items] == [str(i) for i in range(1, len(items) + 1)]
    assert (
        "the Kafka broker took 95 % of a core and the bench's publisher and reader 30 %"
        in (items[0])
    )
    assert "with 5 % of the 2 × 100 % left idle" in items[0]
    assert any("all 14+ per-device topics" in item for item in items)
    results["engine"]["live_machine"]["idle"] = 60.0  # cores to spare: not the reason
    assert not remedies(results)[0].startswith("1. **Give the broker")


def test_each_search_step_shows_how_late_the_workers_loop_woke_up() -> None:
    results = _results()
    step = {"offered_rate": 378.0, "events": 11_340, "p99_ms": 253.8, "verdict": "p99 ≥ 250 ms",
            "loop_late_max_ms": 281.4, "gc_full_collections": 1}  # fmt: skip
    results["sustainable"] = {
        "engine": {"step_results": [step]},
        "peer": {"step_results": [{"offered_rate": 524.0, "verdict": "p99 < 250 ms"}]},
    }
    rows = [line for line in build_markdown(results).splitlines()
            if line.startswith(("| engine | 1 |", "| peer | 1 |"))]  # fmt: skip
    assert [row.split(" | ")[0] for row in rows] == ["| engine", "| peer"]
    assert "| 281 (1) |" in rows[0]
    assert "| – | – | p99 < 250 ms |" in rows[1]  # the peer has no such loop


def test_the_machine_budget_shows_every_paced_span_of_the_run() -> None:
    results = _results()
    results["machine"] = {"cpus": 2}
    results["engine"]["live_machine"] = {"engine": 60.0, "kafka": 95.0, "idle": 45.0}
    results["sustainable"] = {
        "engine": {"step_results": [{"offered_rate": 900.0, "machine": {"engine": 20.0}}]},
        "peer": {"step_results": [{"offered_rate": 800.0}]},  # an older run: no budget
    }
    markdown = build_markdown(results)
    assert "## The machine's CPU while events were offered" in markdown
    assert "| engine | latency phase | 1,000 | 60 % | 95 % | – | – | – | 45 % |" in markdown
    assert "| engine | search step 1 | 900 | 20 % |" in markdown
    assert "| peer | search step" not in markdown
    del results["engine"]["live_machine"], results["sustainable"]
    assert "The machine's CPU" not in build_markdown(results)


def test_summary_lines_list_every_contender_that_ran() -> None:
    lines = summary_lines(_results())
    assert [line.split()[0] for line in lines[1:4]] == ["engine", "peer", "ceiling"]
    assert lines[-1] == "engine/ceiling 0.020, engine/peer 1.250"


def test_write_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    results = _results()
    write_report(results, None, tmp_path)
    assert orjson.loads((tmp_path / "latest.json").read_bytes()) == orjson.loads(
        orjson.dumps(results)
    )
    assert (tmp_path / "report.md").read_text().startswith("# iotcrm benchmark")
    for plot in ("throughput.png", "latency_cdf.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_are_judged_from_the_figures() -> None:
    doc = {
        "ratios": {"engine_over_peer": 1.6, "engine_over_ceiling": 0.2},
        "engine": {"p99_ms": 249.0},
        "accuracy": {
            "types": {
                "coupon": {"precision": 0.95, "recall": 0.9},
                "maintenance_booking": {"precision": 0.5, "recall": 1.0},
            }
        },
    }
    targets = _targets(doc)
    assert targets["engine_at_least_peer"] and targets["engine_1_5x_peer"]
    assert targets["engine_35pct_of_ceiling"] is False
    assert targets["engine_p99_under_250ms"] is True
    assert targets["coupon_precision_and_recall_0_9"] is True
    assert targets["maintenance_booking_precision_and_recall_0_9"] is False
    assert _targets({"ratios": {"engine_over_peer": None, "engine_over_ceiling": None}}) == {
        "engine_at_least_peer": None,
        "engine_1_5x_peer": None,
        "engine_35pct_of_ceiling": None,
        "engine_p50_under_50ms": None,
        "engine_p99_under_250ms": None,
        "engine_sustainable_at_least_peer": None,
        "engine_replicas_1_6x": None,
        "maintenance_booking_precision_and_recall_0_9": None,
        "coupon_precision_and_recall_0_9": None,
    }


def test_lag_summary_takes_the_worst_moment_of_each_stage() -> None:
    samples = [(1.0, 1000, 990, 800), (2.0, 2000, 2000, 1100), (3.0, 2500, 2500, 2400)]
    summary = _lag_summary(samples)
    assert summary["first_stage_max_events"] == 10
    assert summary["last_stage_max_events"] == 900
    assert _lag_summary([]) == {}


def test_accuracy_counts_actions_by_rule_once_per_action_id() -> None:
    truth = {
        "expected_actions": [
            {"type": "coupon", "customer_id": "c1", "device_id": "d1", "episode": "depletion",
             "start_at": 100.0, "expected_at": 100.0, "due_by": 400.0},
        ]
    }  # fmt: skip
    action = {"action_id": "a1", "type": "coupon", "customer_id": "c1", "device_id": "d1",
              "at": 120.0, "rule": {"id": "coupon-detergent-low", "version": 1}}  # fmt: skip
    result = accuracy(truth, [action, action])
    assert result["types"]["coupon"] == {"precision": 1.0, "recall": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert result["actions_by_rule"] == {"coupon-detergent-low": 1}
    assert result["duplicate_actions"] == 1
    assert result["expected_by_type"] == {"coupon": 1}


def test_options_refuse_unknown_contenders() -> None:
    import argparse

    from loadtest.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from(parser.parse_args(["--contenders", "peer,engine", "--events", "500"]))
    assert options.contenders == ("peer", "engine")
    assert options.events == 500
    assert options == BenchOptions(contenders=("peer", "engine"), events=500)
    with pytest.raises(ValueError, match="flink"):
        options_from(parser.parse_args(["--contenders", "engine,flink"]))


def test_agreement_is_shown_when_both_ran() -> None:
    results = _results()
    results["agreement"] = {"engine_actions": 40, "peer_actions": 41, "common": 39}
    assert "the engine took 40 actions and the peer 41, 39 of them" in build_markdown(results)


@pytest.mark.parametrize("name", ["loadtest.report", "loadtest.hotpath", "loadtest.bench"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0
