"""The arithmetic behind every figure of ``iotcrm bench``."""

from __future__ import annotations

import doctest
import importlib
import itertools
import random

import numpy as np
import pytest

from loadtest.measure import (
    ProgressSeries,
    PublishClock,
    action_latencies,
    cdf_points,
    latency_breakdown,
    latency_summary,
    per_million,
    percentile,
    ratio,
    wire_ts,
)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_agrees_with_numpy_linear_interpolation(q: float) -> None:
    rng = random.Random(q)
    values = [rng.expovariate(1 / 40) for _ in range(997)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_reports_milliseconds() -> None:
    summary = latency_summary([0.001 * i for i in range(1, 101)])
    assert summary["n"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == pytest.approx(100.0)


def test_cdf_points_are_monotonic_and_end_at_one() -> None:
    values = [random.Random(3).random() for _ in range(5000)]
    points = cdf_points(values, points=100)
    assert len(points) <= 101
    assert points[-1] == (max(values), 1.0)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(points))


def test_span_runs_from_the_last_idle_sample_to_the_first_complete_one() -> None:
    series = ProgressSeries()
    series.add(10.0, 0, 5.0)  # ready, nothing taken in yet
    series.add(10.5, 0, 5.1, started=40)  # first stage took some in
    series.add(12.0, 600, 6.0, started=900)
    series.add(14.5, 1000, 7.5, started=1000)
    series.add(15.0, 1000, 7.6, started=1000)
    span = series.span(1000)
    assert (span.events, span.seconds, span.cpu_s) == (1000, 4.5, 2.5)
    assert span.eps == pytest.approx(1000 / 4.5)
    assert span.cpu_s_per_million == pytest.approx(2500.0)


def test_span_needs_an_idle_start_and_a_complete_end() -> None:
    busy_from_the_start = ProgressSeries()
    busy_from_the_start.add(0.0, 10, 0.0)
    with pytest.raises(ValueError, match="no start"):
        busy_from_the_start.span(10)
    unfinished = ProgressSeries()
    unfinished.add(0.0, 0, 0.0)
    unfinished.add(1.0, 5, 0.0)
    with pytest.raises(ValueError, match="never reached"):
        unfinished.span(10)


def test_steady_rate_ignores_start_up_and_tail() -> None:
    series = ProgressSeries()
    for wall, done in [(0, 0), (10, 50), (11, 100), (12, 500), (13, 900), (30, 1000)]:
        series.add(float(wall), done, 0.0)
    assert series.steady_eps(1000) == pytest.approx(400.0)
    assert series.span(1000).eps == pytest.approx(1000 / 30)
    coarse = ProgressSeries()
    coarse.add(0.0, 0, 0.0)
    coarse.add(1.0, 1000, 0.0)
    assert coarse.steady_eps(1000) is None


def test_publish_clock_answers_with_the_first_event_at_or_after_a_time() -> None:
    clock = PublishClock([50.0, 60.0, None, 55.0, 60.0, 70.0], [1.0, 2.0, 2.5, 3.0, 4.0, 5.0])
    assert clock.first_ts == 50.0
    assert clock.published_at(50.0) == 1.0
    assert clock.published_at(51.0) == 2.0  # the late 55.0 does not count: 60 was out first
    assert clock.published_at(60.0) == 2.0
    assert clock.published_at(65.0) == 5.0
    assert clock.published_at(49.0) is None
    assert clock.published_at(70.5) is None


def test_action_latencies_count_each_action_once_and_skip_outsiders() -> None:
    clock = PublishClock([100.0, 200.0, 300.0], [10.0, 11.0, 12.0])
    received = [
        (10.2, {"action_id": "a", "at": 100.0}),
        (11.9, {"action_id": "b", "at": 150.0}),  # a timer due between two events
        (12.0, {"action_id": "a", "at": 100.0}),  # a replayed duplicate
        (9.0, {"action_id": "c", "at": 20.0}),  # fired before the paced phase
        (20.0, {"action_id": "d", "at": 400.0}),  # fired by time alone, after it
    ]
    timed, outside = action_latencies(received, clock)
    assert [latency for latency, _ in timed] == pytest.approx([0.2, 0.9])
    assert [action["action_id"] for _, action in timed] == ["a", "b"]
    assert outside == 2


def test_latency_breakdown_splits_by_rule_and_into_emit_and_delivery() -> None:
    clock = PublishClock([100.0, 200.0], [10.0, 11.0])
    timed = [
        (0.5, {"at": 100.0, "emitted_at": 10.4, "rule": {"id": "slow"}}),
        (0.7, {"at": 100.0, "emitted_at": 10.6, "rule": {"id": "slow"}}),
        (0.05, {"at": 200.0, "emitted_at": 11.01, "rule": {"id": "fast"}}),
        (0.06, {"at": 200.0, "rule": {"id": "fast"}}),
    ]
    breakdown = latency_breakdown(timed, clock)
    assert list(breakdown) == ["fast", "slow"]
    assert breakdown["slow"]["n"] == 2
    assert breakdown["slow"]["p50_ms"] == pytest.approx(600.0)
    assert breakdown["slow"]["to_emit_p50_ms"] == pytest.approx(500.0)
    assert breakdown["fast"]["to_emit_p50_ms"] == pytest.approx(10.0)


def test_wire_ts_reads_every_accepted_shape() -> None:
    assert wire_ts(b'{"ts": 1763700000}') == 1763700000.0
    assert wire_ts(b'{"ts": 1763700000250}') == 1763700000.25
    assert wire_ts(b'{"ts": "2025-11-21T05:40:00+01:00"}') == 1763700000.0
    assert wire_ts(b'{"ts": "yesterday"}') is None
    assert wire_ts(b'{"id": "e1"}') is None
    assert wire_ts(b"[1, 2]") is None
    assert wire_ts(b"\xff") is None


def test_small_helpers() -> None:
    assert per_million(3.0, 0) is None
    assert per_million(0.5, 250_000) == 2.0
    assert ratio(1.5, 1.0) == 1.5
    assert ratio(1.0, None) is None


@pytest.mark.parametrize("name", ["loadtest.measure", "loadtest.peer_rules"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0


def test_a_cpu_budget_adds_up_to_the_machine_and_never_goes_negative() -> None:
    from loadtest.measure import cpu_budget

    before = {"machine": 10.0, "kafka": 4.0, "engine": 1.0}
    after = {"machine": 13.6, "kafka": 5.8, "engine": 2.2, "bench": 0.4}  # bench: new part
    budget = cpu_budget(before, after, 2.0, 2)
    assert budget == {"kafka": 90.0, "engine": 60.0, "bench": 20.0, "other": 10.0, "idle": 20.0}
    assert sum(budget.values()) == 200.0
    # Readings a moment apart can make the parts exceed the machine's busy time.
    assert cpu_budget({"machine": 0.0}, {"machine": 1.0, "kafka": 1.1}, 1.0, 1) == {
        "kafka": 110.0, "other": 0.0, "idle": 0.0,
    }  # fmt: skip
    with pytest.raises(ValueError):
        cpu_budget(before, after, 0.0, 2)
