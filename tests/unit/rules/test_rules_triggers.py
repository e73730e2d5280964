"""condition, sustained, absence and silence: every boundary of the contract."""

from __future__ import annotations

from rules_helpers import emitted, engine_for, event, feed, summary

CONDITION = """
- id: r
  key: device
  when: {condition: "event.kind == 'error' and event.code >= 3"}
  action: {type: support_case, payload: {code: "{{ event.code }}"}}
"""


def test_condition_fires_on_every_matching_event():
    engine = engine_for(CONDITION)
    firings = feed(
        engine,
        [
            event("a", 1, kind="error", code=3),
            event("b", 2, kind="error", code=2),
            event("c", 3, kind="status", code=9),
            event("d", 4, kind="error", code=4),
        ],
    )
    assert summary(firings) == [(1.0, ["a"]), (4.0, ["d"])]
    assert [f.payload for f in firings] == [{"code": 3}, {"code": 4}]
    assert all(f.key == "d1" and f.key_kind == "device" for f in firings)


def test_condition_with_a_runtime_type_error_is_false_and_counted():
    engine = engine_for(CONDITION)
    assert feed(engine, [event("a", 1, kind="error", code="high")]) == []
    assert engine.error_counts() == {"r": 1}


SUSTAINED = """
- id: r
  key: device
  when:
    sustained: {condition: "event.v > 0.8", for: 10m}
  action: {type: maintenance_booking, payload: {v: "{{ event.v }}", at: "{{ now }}"}}
"""


def test_sustained_fires_once_at_t0_plus_for_with_at_equal_to_the_due_time():
    engine = engine_for(SUSTAINED)
    firings = feed(
        engine,
        [
            event("a", 0, v=0.9),
            event("b", 300, v=0.9),
            event("c", 700, v=0.9),
            event("d", 2000, v=0.95),
        ],
    )
    assert summary(firings) == [(600.0, ["a", "b"])]
    assert firings[0].payload == {"v": 0.9, "at": 600.0}
    assert firings[0].evidence["since"] == 0 and firings[0].evidence["for"] == 600


def test_sustained_timer_fires_before_an_event_at_the_same_time():
    engine = engine_for(SUSTAINED)
    # The event at 600 is false, but the timer due at 600 goes first.
    firings = feed(engine, [event("a", 0, v=0.9), event("b", 600, v=0.1)])
    assert summary(firings) == [(600.0, ["a"])]


def test_sustained_false_event_before_due_cancels():
    engine = engine_for(SUSTAINED)
    assert feed(engine, [event("a", 0, v=0.9), event("b", 599.9, v=0.1)], until=5000) == []


def test_sustained_refires_only_after_false_then_true():
    engine = engine_for(SUSTAINED)
    firings = feed(
        engine,
        [
            event("a", 0, v=0.9),
            event("b", 650, v=0.9),
            event("c", 1300, v=0.9),
            event("d", 1400, v=0.5),
            event("e", 1500, v=0.9),
        ],
        until=2100,
    )
    assert summary(firings) == [(600.0, ["a"]), (2100.0, ["e"])]


def test_sustained_without_filter_is_cancelled_by_any_false_event_even_of_another_kind():
    engine = engine_for(
        SUSTAINED.replace('"event.v > 0.8"', "\"event.kind == 'telemetry' and event.v > 0.8\"")
    )
    firings = feed(
        engine,
        [
            event("a", 0, kind="telemetry", v=0.9),
            event("s", 100, kind="status"),
            event("b", 200, kind="telemetry", v=0.9),
        ],
        until=1000,
    )
    assert summary(firings) == [(800.0, ["b"])]


def test_sustained_with_filter_ignores_other_events():
    engine = engine_for(
        SUSTAINED.replace("for: 10m}", "for: 10m, filter: \"event.kind == 'telemetry'\"}")
    )
    firings = feed(
        engine,
        [
            event("a", 0, kind="telemetry", v=0.9),
            event("s", 100, kind="status"),
            event("b", 200, kind="telemetry", v=0.9),
        ],
        until=1000,
    )
    assert summary(firings) == [(600.0, ["a", "b"])]


def test_sustained_keys_are_independent():
    engine = engine_for(SUSTAINED)
    firings = feed(
        engine,
        [
            event("a", 0, v=0.9, device_id="d1"),
            event("b", 100, v=0.9, device_id="d2"),
            event("c", 200, v=0.1, device_id="d1"),
        ],
        until=1000,
    )
    assert [(f.key, f.at) for f in firings] == [("d2", 700.0)]


ABSENCE = """
- id: r
  key: device
  when:
    absence:
      after: "event.kind == 'error'"
      missing: "event.kind == 'status' and event.state == 'online'"
      within: 5m
  action: {type: support_case, payload: {after: "{{ first.id }}"}}
"""


def test_absence_fires_at_t_plus_within_when_nothing_follows():
    engine = engine_for(ABSENCE)
    firings = feed(
        engine, [event("e1", 100, kind="error"), event("x", 200, kind="telemetry")], until=1000
    )
    assert summary(firings) == [(400.0, ["e1"])]
    assert firings[0].payload == {"after": "e1"}
    assert firings[0].evidence["after"] == "e1"


def test_absence_is_half_open_an_event_at_t_plus_within_is_too_late():
    engine = engine_for(ABSENCE)
    firings = feed(
        engine,
        [event("e1", 100, kind="error"), event("ok", 400, kind="status", state="online")],
    )
    assert summary(firings) == [(400.0, ["e1"])]


def test_absence_a_matching_event_in_time_cancels_even_at_the_same_timestamp():
    engine = engine_for(ABSENCE)
    firings = feed(
        engine,
        [event("e1", 100, kind="error"), event("ok", 100, kind="status", state="online")],
        until=1000,
    )
    assert firings == []
    firings = feed(
        engine,
        [event("e1", 100, kind="error"), event("ok", 399.5, kind="status", state="online")],
        until=1000,
    )
    assert firings == []


def test_absence_each_after_event_starts_its_own_watch():
    engine = engine_for(ABSENCE)
    firings = feed(
        engine,
        [
            event("e1", 0, kind="error"),
            event("e2", 100, kind="error"),
            event("ok", 250, kind="status", state="online"),
            event("e3", 260, kind="error"),
        ],
        until=2000,
    )
    # "ok" closes both open watches; e3 starts a new one.
    assert summary(firings) == [(560.0, ["e3"])]
    firings = feed(
        engine, [event("e1", 0, kind="error"), event("e2", 100, kind="error")], until=2000
    )
    assert summary(firings) == [(300.0, ["e1"]), (400.0, ["e2"])]


def test_absence_correlate_sees_the_first_event():
    engine = engine_for(
        ABSENCE.replace(
            "within: 5m",
            'within: 5m\n      correlate: "event.ticket == first.ticket"',
        )
    )
    firings = feed(
        engine,
        [
            event("e1", 0, kind="error", ticket="t1"),
            event("e2", 10, kind="error", ticket="t2"),
            event("ok", 50, kind="status", state="online", ticket="t2"),
        ],
        until=2000,
    )
    assert summary(firings) == [(300.0, ["e1"])]


SILENCE = """
- id: r
  key: device
  when: {silence: {for: 2h, filter: "event.kind == 'telemetry'"}}
  action: {type: support_case, payload: {last: "{{ event.id }}"}}
"""


def test_silence_fires_after_for_without_a_matching_event_and_rearms_after_firing():
    engine = engine_for(SILENCE)
    firings = feed(
        engine,
        [event("t1", 0, kind="telemetry"), event("s1", 3600, kind="status")],
        until=4 * 3600 + 1,
    )
    assert summary(firings) == [(7200.0, ["t1"]), (14400.0, ["t1"])]
    assert firings[0].payload == {"last": "t1"}
    assert firings[0].action_id != firings[1].action_id


def test_silence_rearms_on_every_event_and_a_late_one_at_exactly_for_is_too_late():
    engine = engine_for(SILENCE)
    assert (
        feed(
            engine,
            [event("t1", 0, kind="telemetry"), event("t2", 7199, kind="telemetry")],
            until=7200 + 7198,
        )
        == []
    )
    firings = feed(engine, [event("t1", 0, kind="telemetry"), event("t2", 7200, kind="telemetry")])
    assert summary(firings) == [(7200.0, ["t1"])]


def test_silence_ignores_an_older_event_arriving_late():
    engine = engine_for(SILENCE)
    firings = feed(
        engine, [event("t1", 1000, kind="telemetry"), event("t0", 10, kind="telemetry")], until=8200
    )
    assert summary(firings) == [(8200.0, ["t1"])]


def test_silence_is_never_armed_for_a_key_without_events():
    engine = engine_for(SILENCE)
    state = engine.new_state()
    assert engine.advance(state, 10**6) == [] and engine.next_due(state) is None


def test_emitted_helper_drops_suppressed():
    engine = engine_for(CONDITION.replace("key: device", "key: device\n  requires_consent: x"))
    firings = feed(engine, [event("a", 1, kind="error", code=3)])
    assert len(firings) == 1 and emitted(firings) == []


def test_one_call_fires_a_bounded_number_of_timers(monkeypatch):
    import engine.rules.engine as module

    monkeypatch.setattr(module, "MAX_TIMERS_PER_CALL", 3)
    engine = engine_for(SILENCE)
    state = engine.new_state()
    feed(engine, [event("t1", 0, kind="telemetry")], state=state)
    assert [f.at for f in engine.advance(state, 10**6)] == [7200.0, 14400.0, 21600.0]
    assert [f.at for f in engine.advance(state, 10**6)] == [28800.0, 36000.0, 43200.0]
