"""Windows: sliding (T - size, T], tumbling [s, e) aligned to the epoch,
hopping, session gaps, grace and late events, aggregates."""

from __future__ import annotations

import math

import pytest
from rules_helpers import engine_for, event, feed, summary


def window_rule(
    spec: str, having: str = "window.n >= 3", aggregates: str = "{n: count()}", key: str = "device"
) -> str:
    return f"""
- id: w
  key: {key}
  when:
    window:
      {spec}
      aggregates: {aggregates}
      having: "{having}"
  action: {{type: support_case, payload: {{n: "{{{{ window.n }}}}"}}}}
"""


SLIDING = window_rule("type: sliding\n      size: 10m\n      filter: \"event.kind == 'error'\"")


def errors(*times: float) -> list[dict]:
    return [event(f"e{i}", t, kind="error") for i, t in enumerate(times, start=1)]


def test_sliding_window_holds_t_minus_size_exclusive_to_t_inclusive():
    engine = engine_for(SLIDING)
    assert summary(feed(engine, errors(0, 300, 600))) == []  # 0 left at T=600
    assert summary(feed(engine, errors(0, 300, 599.999))) == [(599.999, ["e1", "e2", "e3"])]


def test_sliding_window_fires_when_having_turns_true_once_per_episode():
    engine = engine_for(SLIDING)
    firings = feed(engine, errors(0, 10, 20, 30, 40, 2000, 2010, 2020))
    assert summary(firings) == [(20.0, ["e1", "e2", "e3"]), (2020.0, ["e6", "e7", "e8"])]
    assert firings[0].payload == {"n": 3}
    assert firings[0].evidence["start"] == 20 - 600 and firings[0].evidence["end"] == 20


def test_sliding_window_ignores_filtered_events_and_stays_armed_while_true():
    engine = engine_for(SLIDING)
    stream = [*errors(0, 10, 20), event("t", 25, kind="telemetry"), *errors(650)]
    firings = feed(engine, stream)
    # At 650 the window holds only e4 (count 1): re-armed but not fired.
    assert summary(firings) == [(20.0, ["e1", "e2", "e3"])]


def test_sliding_window_rejects_an_event_older_than_the_window_as_late():
    engine = engine_for(SLIDING)
    state = engine.new_state()
    feed(engine, errors(1000), state=state)
    assert feed(engine, [event("old", 400, kind="error")], state=state) == []
    late = engine.drain_late()
    assert [(x.rule_id, x.event_id, x.ts) for x in late] == [("w", "old", 400.0)]


def test_sliding_window_accepts_an_out_of_order_event_inside_the_window():
    engine = engine_for(SLIDING)
    firings = feed(engine, [*errors(100, 300), event("x", 200, kind="error")])
    assert summary(firings) == [(300.0, ["e1", "x", "e2"])]


TUMBLING = window_rule("type: tumbling\n      size: 1h", having="window.n >= 2")


def test_tumbling_windows_are_epoch_aligned_half_open_and_checked_at_close():
    engine = engine_for(TUMBLING)
    firings = feed(
        engine,
        [event("a", 3000), event("b", 3599.9), event("c", 3600), event("d", 7100)],
        until=7200,
    )
    assert summary(firings) == [(3600.0, ["a", "b"]), (7200.0, ["c", "d"])]
    assert firings[0].evidence["start"] == 0 and firings[0].evidence["end"] == 3600


def test_tumbling_close_timer_goes_before_an_event_at_the_end_time():
    engine = engine_for(TUMBLING)
    firings = feed(engine, [event("a", 3000), event("b", 3100), event("c", 3600)])
    assert summary(firings) == [(3600.0, ["a", "b"])]


def test_tumbling_window_fires_at_most_once_and_only_if_having_holds():
    engine = engine_for(TUMBLING)
    assert feed(engine, [event("a", 10)], until=10**5) == []
    firings = feed(engine, [event(f"x{i}", i) for i in range(10)], until=3600)
    assert len(firings) == 1 and firings[0].payload == {"n": 10}


GRACE = window_rule("type: tumbling\n      size: 1h\n      grace: 5m", having="window.n >= 1")


def test_grace_delays_the_close_and_accepts_late_events_until_then():
    engine = engine_for(GRACE)
    firings = feed(
        engine,
        [event("a", 3000), event("b", 3700), event("c", 3500), event("d", 3899)],
        until=3900,
    )
    # c arrives after the window's end but within grace; the close is at 3900.
    assert summary(firings) == [(3900.0, ["a", "c"])]


def test_an_event_after_end_plus_grace_is_late_and_changes_nothing():
    engine = engine_for(GRACE)
    state = engine.new_state()
    firings = feed(
        engine, [event("a", 3000), event("b", 3900), event("late", 3599)], state=state, until=8000
    )
    assert summary(firings) == [(3900.0, ["a"]), (7500.0, ["b"])]
    assert [x.event_id for x in engine.drain_late()] == ["late"]


HOPPING = window_rule("type: hopping\n      size: 10m\n      advance: 5m", having="window.n >= 2")


def test_hopping_windows_overlap_every_advance():
    engine = engine_for(HOPPING)
    firings = feed(engine, [event("a", 290), event("b", 310), event("c", 610)], until=2000)
    # Windows [0,600) {a,b}; [300,900) {b,c}; [600,1200) {c}; [-300,300) {a}.
    assert [(f.at, f.event_ids, f.evidence["start"]) for f in firings] == [
        (600.0, ["a", "b"], 0),
        (900.0, ["b", "c"], 300),
    ]


SESSION = window_rule("type: session\n      gap: 5m", having="window.n >= 2")


def test_session_joins_events_less_than_gap_apart_and_closes_at_last_plus_gap():
    engine = engine_for(SESSION)
    firings = feed(engine, [event("a", 0), event("b", 200), event("c", 499)], until=10**4)
    assert summary(firings) == [(799.0, ["a", "b", "c"])]
    assert firings[0].evidence["start"] == 0 and firings[0].evidence["end"] == 799


def test_an_event_exactly_gap_after_the_last_starts_a_new_session():
    engine = engine_for(SESSION)
    firings = feed(
        engine, [event("a", 0), event("b", 100), event("c", 400), event("d", 450)], until=10**4
    )
    assert summary(firings) == [(400.0, ["a", "b"]), (750.0, ["c", "d"])]


def test_session_with_grace_bridging_event_merges_two_sessions():
    engine = engine_for(
        window_rule("type: session\n      gap: 100\n      grace: 1000", having="window.n >= 1")
    )
    firings = feed(engine, [event("a", 0), event("c", 150), event("b", 80)], until=10**4)
    assert [(f.at, sorted(f.event_ids), f.evidence["events"]) for f in firings] == [
        (1250.0, ["a", "b", "c"], 3)
    ]


AGGREGATES = window_rule(
    "type: tumbling\n      size: 1h",
    having="window.n >= 1",
    aggregates=(
        "{n: count(), valued: count(event.v), total: sum(event.v), mean: avg(event.v), "
        "low: min(event.v), high: max(event.v), spread: stddev(event.v), "
        "kinds: distinct(event.kind), first_v: first(event.v), last_v: last(event.v), "
        "per_s: rate(), v_per_s: rate(event.v)}"
    ),
)


def test_aggregates_over_a_closed_window():
    engine = engine_for(AGGREGATES)
    stream = [
        event("a", 10, v=2, kind="x"),
        event("b", 20, kind="y"),
        event("c", 5, v=4, kind="x"),  # earlier event time, later arrival
        event("d", 30, v=6.0, kind="x"),
    ]
    [firing] = feed(engine, stream, until=3600)
    values = firing.evidence["aggregates"]
    assert values["n"] == 4 and values["valued"] == 3
    assert values["total"] == 12 and values["mean"] == 4
    assert (values["low"], values["high"]) == (2, 6.0)
    assert values["spread"] == pytest.approx(math.sqrt(8 / 3))
    assert values["kinds"] == 2
    assert (values["first_v"], values["last_v"]) == (4, 6.0)
    assert values["per_s"] == pytest.approx(4 / 3600)
    assert values["v_per_s"] == pytest.approx(12 / 3600)


def test_aggregates_without_values_are_null_and_having_with_null_is_false():
    engine = engine_for(
        window_rule(
            "type: tumbling\n      size: 1h",
            having="window.s > 0",
            aggregates="{s: sum(event.v), n: count()}",
        )
    )
    assert feed(engine, [event("a", 10)], until=3600) == []


SLIDING_AGGREGATES = AGGREGATES.replace(
    "type: tumbling\n      size: 1h", "type: sliding\n      size: 100"
).replace("window.n >= 1", "window.n >= 3")


def test_sliding_aggregates_follow_events_leaving_the_window():
    engine = engine_for(SLIDING_AGGREGATES)
    stream = [
        event("a", 0, v=100, kind="x"),
        event("b", 50, v=1, kind="y"),
        event("c", 120, v=3, kind="y"),  # a has left: 2 events
        event("d", 130, v=5, kind="y"),
    ]
    [firing] = feed(engine, stream)
    values = firing.evidence["aggregates"]
    assert firing.at == 130 and firing.event_ids == ["b", "c", "d"]
    assert values["n"] == 3 and values["total"] == 9 and values["mean"] == 3
    assert (values["low"], values["high"]) == (1, 5)
    assert values["spread"] == pytest.approx(math.sqrt(8 / 3))
    assert values["kinds"] == 1 and (values["first_v"], values["last_v"]) == (1, 5)
    assert values["per_s"] == pytest.approx(3 / 100)


def test_non_numeric_values_are_skipped_and_counted():
    engine = engine_for(
        window_rule(
            "type: tumbling\n      size: 1h",
            having="window.s > 0",
            aggregates="{s: sum(event.v), n: count()}",
        )
    )
    [firing] = feed(engine, [event("a", 1, v="lots"), event("b", 2, v=2)], until=3600)
    assert firing.evidence["aggregates"] == {"s": 2, "n": 2}
    assert engine.error_counts() == {"w": 1}


def test_customer_window_spans_the_customers_devices_and_names_no_device():
    engine = engine_for(
        window_rule("type: tumbling\n      size: 1h", having="window.n >= 2", key="customer")
    )
    [firing] = feed(
        engine, [event("a", 1, device_id="d1"), event("b", 2, device_id="d2")], until=3600
    )
    assert (firing.key_kind, firing.key, firing.device_id) == ("customer", "c1", None)


def test_hopping_windows_close_at_end_plus_grace_and_reject_later_events():
    engine = engine_for(
        window_rule(
            "type: hopping\n      size: 10m\n      advance: 5m\n      grace: 1m",
            having="window.n >= 1",
        )
    )
    state = engine.new_state()
    firings = feed(engine, [event("a", 310), event("b", 620), event("c", 299)], state=state)
    # [0, 600) closes at 660: at stream time 620 c (299) still joins it, but
    # not [-300, 300), whose end is already past 620 - grace.
    assert firings == []
    firings = feed(engine, [event("d", 960), event("e", 250)], state=state)
    assert [(f.at, f.event_ids) for f in firings] == [(660.0, ["a", "c"]), (960.0, ["a", "b"])]
    assert [x.event_id for x in engine.drain_late()] == ["e"]
