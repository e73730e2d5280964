"""Sequences: half-open within, every, contiguity and skip strategies."""

from __future__ import annotations

import pytest
from rules_helpers import engine_for, event, feed, summary


def sequence(options: str = "", steps: str | None = None, key: str = "device") -> str:
    steps = steps or (
        "        - {as: a, condition: \"event.kind == 'a'\"}\n"
        "        - {as: b, condition: \"event.kind == 'b'\"}\n"
    )
    return f"""
- id: s
  key: {key}
  when:
    sequence:
      within: 10m
      {options}
      steps:
{steps}
  action:
    type: support_case
    payload:
      first: "{{{{ a.id }}}}"
      via_window: "{{{{ window.a.id }}}}"
      last: "{{{{ event.id }}}}"
"""


def kinds(*pairs: tuple[str, float]) -> list[dict]:
    return [event(f"{kind}{int(ts)}", ts, kind=kind) for kind, ts in pairs]


def test_relaxed_ignores_events_in_between_and_renders_step_names():
    engine = engine_for(sequence())
    firings = feed(engine, kinds(("a", 0), ("x", 10), ("b", 20)))
    assert summary(firings) == [(20.0, ["a0", "b20"])]
    assert firings[0].payload == {"first": "a0", "via_window": "a0", "last": "b20"}
    assert firings[0].evidence["steps"] == {"a": "a0", "b": "b20"}


def test_within_is_half_open():
    engine = engine_for(sequence())
    assert feed(engine, kinds(("a", 0), ("b", 600))) == []
    assert summary(feed(engine, kinds(("a", 0), ("b", 599.5)))) == [(599.5, ["a0", "b599"])]


def test_every_false_keeps_one_partial_match_open():
    engine = engine_for(sequence())
    assert summary(feed(engine, kinds(("a", 0), ("a", 10), ("b", 20), ("b", 30)))) == [
        (20.0, ["a0", "b20"])
    ]


def test_every_false_starts_again_after_a_timeout():
    engine = engine_for(sequence())
    assert summary(feed(engine, kinds(("a", 0), ("a", 700), ("b", 710)))) == [
        (710.0, ["a700", "b710"])
    ]


def test_every_false_starts_again_after_completion_with_the_next_first_step():
    engine = engine_for(sequence())
    assert summary(feed(engine, kinds(("a", 0), ("b", 10), ("a", 20), ("b", 30)))) == [
        (10.0, ["a0", "b10"]),
        (30.0, ["a20", "b30"]),
    ]


def test_every_true_with_skip_past_last_event_gives_one_match_per_episode():
    engine = engine_for(sequence("every: true"))
    assert summary(feed(engine, kinds(("a", 0), ("a", 10), ("b", 20), ("b", 30)))) == [
        (20.0, ["a0", "b20"])
    ]


def test_every_true_with_skip_none_completes_each_partial_once_oldest_first():
    engine = engine_for(sequence("every: true\n      skip: none"))
    assert summary(feed(engine, kinds(("a", 0), ("a", 10), ("b", 20), ("b", 30)))) == [
        (20.0, ["a0", "b20"]),
        (20.0, ["a10", "b20"]),
    ]


def test_every_true_partial_matches_time_out_independently():
    engine = engine_for(sequence("every: true\n      skip: none"))
    assert summary(feed(engine, kinds(("a", 0), ("a", 100), ("b", 650)))) == [
        (650.0, ["a100", "b650"])
    ]


def test_strict_contiguity_needs_the_very_next_event_of_the_key():
    engine = engine_for(sequence("contiguity: strict"))
    assert feed(engine, kinds(("a", 0), ("x", 10), ("b", 20))) == []
    assert summary(feed(engine, kinds(("a", 0), ("b", 10)))) == [(10.0, ["a0", "b10"])]


def test_strict_contiguity_sees_events_other_rules_would_not():
    # The breaking event matches no step, so only the rule's wish to see
    # every event of the key while a match is open brings it here.
    engine = engine_for(sequence("contiguity: strict"))
    assert feed(engine, [*kinds(("a", 0)), event("t", 5, kind="telemetry"), *kinds(("b", 9))]) == []


def test_strict_contiguity_a_breaking_first_step_event_starts_anew():
    engine = engine_for(sequence("contiguity: strict"))
    assert summary(feed(engine, kinds(("a", 0), ("a", 10), ("b", 20)))) == [(20.0, ["a10", "b20"])]


def test_strict_contiguity_is_per_key():
    engine = engine_for(sequence("contiguity: strict"))
    stream = [
        event("a0", 0, kind="a"),
        event("x", 5, kind="x", device_id="d2"),
        event("b9", 9, kind="b"),
    ]
    assert summary(feed(engine, stream)) == [(9.0, ["a0", "b9"])]


def test_any_contiguity_with_skip_none_completes_every_combination():
    engine = engine_for(sequence("contiguity: any\n      skip: none"))
    assert summary(feed(engine, kinds(("a", 0), ("b", 10), ("b", 20)))) == [
        (10.0, ["a0", "b10"]),
        (20.0, ["a0", "b20"]),
    ]


def test_any_contiguity_with_skip_past_last_event_stops_at_the_first_match():
    engine = engine_for(sequence("contiguity: any"))
    assert summary(feed(engine, kinds(("a", 0), ("b", 10), ("b", 20)))) == [(10.0, ["a0", "b10"])]


def test_relaxed_skip_none_completes_each_partial_at_most_once():
    engine = engine_for(sequence("skip: none"))
    assert summary(feed(engine, kinds(("a", 0), ("b", 10), ("b", 20)))) == [(10.0, ["a0", "b10"])]


SAME_STEP = (
    "        - {as: a, condition: \"event.kind == 'x'\"}\n"
    "        - {as: b, condition: \"event.kind == 'x'\"}\n"
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("every: false", [["x0", "x1"], ["x2", "x3"]]),
        ("every: true", [["x0", "x1"], ["x2", "x3"]]),
        ("every: true\n      skip: none", [["x0", "x1"], ["x1", "x2"], ["x2", "x3"]]),
    ],
)
def test_the_completing_event_starts_nothing_under_skip_past_last_event(options, expected):
    engine = engine_for(sequence(options, SAME_STEP))
    firings = feed(engine, kinds(("x", 0), ("x", 1), ("x", 2), ("x", 3)))
    assert [f.event_ids for f in firings] == expected


def test_a_later_step_refers_to_an_earlier_one_by_name():
    steps = (
        "        - {as: a, condition: \"event.kind == 'error'\"}\n"
        "        - as: b\n"
        "          condition: \"event.kind == 'reboot' and a.device_id == event.device_id\"\n"
    )
    engine = engine_for(sequence("", steps, key="customer"))
    firings = feed(
        engine,
        [
            event("a", 0, kind="error", device_id="d1"),
            event("r2", 5, kind="reboot", device_id="d2"),
            event("r1", 9, kind="reboot", device_id="d1"),
        ],
    )
    assert summary(firings) == [(9.0, ["a", "r1"])]
    assert firings[0].key_kind == "customer" and firings[0].device_id == "d1"


def test_three_steps_and_a_single_step_sequence():
    steps = "".join(
        f"        - {{as: s{i}, condition: \"event.kind == 'k{i}'\"}}\n" for i in range(3)
    )
    rule = sequence("", steps).replace("a.id", "s0.id").replace("window.a.id", "window.s0.id")
    engine = engine_for(rule)
    stream = [
        event("1", 0, kind="k0"),
        event("2", 1, kind="k2"),
        event("3", 2, kind="k1"),
        event("4", 3, kind="k2"),
    ]
    assert summary(feed(engine, stream)) == [(3.0, ["1", "3", "4"])]
    single = sequence("", "        - {as: a, condition: \"event.kind == 'a'\"}\n")
    single = single.replace("window.a.id", "a.id")
    assert summary(feed(engine_for(single), kinds(("a", 0), ("a", 1)))) == [
        (0.0, ["a0"]),
        (1.0, ["a1"]),
    ]


def test_strict_contiguity_with_every_true_keeps_only_unbroken_partials():
    engine = engine_for(sequence("contiguity: strict\n      every: true\n      skip: none"))
    # a0 is broken by a1 (not a b); a1 is extended by b2.
    assert summary(feed(engine, kinds(("a", 0), ("a", 1), ("b", 2)))) == [(2.0, ["a1", "b2"])]
