"""The customer actor's logic without Faust: hygiene, aggregates, models, rules, actions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from engine.actor import CustomerActor
from engine.config import load_settings
from engine.models import load_models
from engine.quality import StreamHygiene
from engine.rules import RuleEngine, compile_rules, load_ruleset
from tables.state import (
    DAY_S,
    DeviceState,
    apply_profile,
    customer_view,
    decode_state,
    device_view,
    encode_state,
    new_customer_state,
    record_event,
)

RULES = """
- id: hot
  version: 2
  key: device
  when: {condition: "event.temperature > 80"}
  action: {type: support_case, payload: {t: "{{ event.temperature }}"}}
- id: offer
  version: 1
  key: customer
  requires_consent: marketing
  when: {condition: "event.kind == 'usage' and event.usage_min > 100"}
  action: {type: coupon, payload: {sku: x}}
- id: quiet
  version: 1
  key: device
  when: {silence: {for: 60s}}
  action: {type: support_case, topic: ops.custom, payload: {reason: silent}}
"""


def engine_from(tmp_path: Path, text: str = RULES) -> RuleEngine:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return RuleEngine(load_ruleset(path))


@pytest.fixture
def actor(tmp_path: Path) -> CustomerActor:
    settings = load_settings(path=None, environ={"IOTCRM_KAFKA_ACTION_TOPIC_PREFIX": "ns.a."})
    return CustomerActor(
        engine_from(tmp_path), StreamHygiene(settings.quality), settings.action_topic
    )


def event(eid: str, ts: float, device: str = "d1", **fields: object) -> dict:
    return {
        "id": eid, "ts": ts, "device_id": device, "customer_id": "c1",
        "device_type": "compressor", "kind": "telemetry", **fields,
    }  # fmt: skip


def test_actions_follow_the_contract_and_the_configured_topics(actor: CustomerActor) -> None:
    state = new_customer_state("c1")
    out = actor.handle_events(state, [event("e1", 100.0, temperature=90.0)], None, 555.0)
    assert out.processed == 1
    [(topic, action)] = out.actions
    assert topic == "ns.a.support"
    assert action["customer_id"] == "c1" and action["device_id"] == "d1"
    assert action["rule"] == {"id": "hot", "version": 2}
    assert action["at"] == 100.0 and action["emitted_at"] == 555.0
    assert action["evidence"]["event_ids"] == ["e1"]
    assert state.counts.actions == 1
    assert device_view(state.devices["d1"])["last_action_at"] == {"support_case": 100.0}


def test_an_explicit_rule_topic_is_kept(actor: CustomerActor) -> None:
    state = new_customer_state("c1")
    actor.handle_events(state, [event("e1", 100.0, temperature=20.0)], None, 0.0)
    out = actor.advance(state, 160.0, emitted_at=1.0)
    [(topic, action)] = out.actions
    assert topic == "ops.custom"
    assert action["at"] == 160.0, "a timer firing is stamped with its due time"


def test_duplicates_are_dropped_and_late_events_set_aside(actor: CustomerActor) -> None:
    state = new_customer_state("c1")
    batch = [
        event("e1", 1000.0, temperature=90.0),
        event("e1", 1000.0, temperature=90.0),
        event("e2", 1001.0),
    ]
    out = actor.handle_events(state, batch, None, 0.0)
    assert (out.processed, out.duplicates, len(out.actions)) == (2, 1, 1)
    late = actor.handle_events(state, [event("old", 900.0)], None, 0.0)
    assert late.processed == 0 and len(late.late) == 1
    assert "behind the stream time" in late.late[0][1]


def test_a_batch_is_processed_in_event_time_order(actor: CustomerActor) -> None:
    state = new_customer_state("c1")
    batch = [event("b", 20.0, temperature=95.0), event("a", 10.0, temperature=91.0)]
    out = actor.handle_events(state, batch, None, 0.0)
    assert [a["evidence"]["event_ids"] for _, a in out.actions] == [["a"], ["b"]]


def test_marketing_actions_need_consent(actor: CustomerActor) -> None:
    state = new_customer_state("c1")
    usage = event("u1", 50.0, kind="usage", usage_min=150.0)
    apply_profile(state, {"customer_id": "c1", "consent": {"marketing": False}})
    out = actor.handle_events(state, [usage], None, 0.0)
    assert out.actions == [] and out.suppressed == {"consent:marketing": 1}
    apply_profile(state, {"customer_id": "c1", "consent": {"marketing": True}})
    out = actor.handle_events(state, [{**usage, "id": "u2", "ts": 60.0}], None, 0.0)
    assert [a["type"] for _, a in out.actions] == ["coupon"]


def test_models_score_before_rules(tmp_path: Path) -> None:
    rules = engine_from(
        tmp_path,
        """
- id: risky
  version: 1
  key: device
  when: {condition: "score.risk > 0.5"}
  action: {type: support_case, payload: {risk: "{{ score.risk }}"}}
""",
    )
    seen: list[dict] = []

    class Risk:
        per_device = False

        def process(self, ev: dict, *, customer: dict, device: dict) -> dict[str, float]:
            seen.append({"event": ev["id"], "events_before": device["events"]})
            return {"risk": 0.9}

    actor = CustomerActor(rules, StreamHygiene(load_settings(path=None, environ={}).quality))
    out = actor.handle_events(new_customer_state("c1"), [event("e1", 1.0)], Risk(), 0.0)
    assert out.actions[0][1]["payload"] == {"risk": 0.9}
    assert seen == [{"event": "e1", "events_before": 1}], "device state includes the event"


def test_state_survives_encoding_mid_stream(actor: CustomerActor) -> None:
    stream = [event(f"e{i}", 10.0 * i, temperature=70.0 + 3 * (i % 5)) for i in range(40)]
    whole = new_customer_state("c1")
    expected = [a for e in stream for _, a in actor.handle_events(whole, [e], None, 0.0).actions]
    halves = new_customer_state("c1")
    got = [a for e in stream[:17] for _, a in actor.handle_events(halves, [e], None, 0.0).actions]
    halves = decode_state(encode_state(halves))
    got += [a for e in stream[17:] for _, a in actor.handle_events(halves, [e], None, 0.0).actions]
    assert got == expected and len(expected) > 3
    for state in (halves, whole):
        for device in state.devices.values():
            device.last_seen = None  # wall-clock time of arrival
    assert halves == whole


def test_hot_reload_keeps_state_of_unchanged_rules(tmp_path: Path) -> None:
    sustained = """
- id: long-hot
  version: 1
  key: device
  when: {sustained: {condition: "event.temperature > 80", for: 60s}}
  action: {type: maintenance_booking, payload: {}}
"""
    other_v1 = (
        "\n- id: other\n  version: 1\n  key: device\n  when: {condition: 'False'}\n"
        "  action: {type: coupon, payload: {}}\n"
    )
    hygiene = StreamHygiene(load_settings(path=None, environ={}).quality)
    actor = CustomerActor(RuleEngine(compile_rules(sustained + other_v1)), hygiene)
    state = new_customer_state("c1")
    actor.handle_events(state, [event("e1", 0.0, temperature=90.0)], None, 0.0)
    other_v2 = other_v1.replace("version: 1", "version: 2")
    actor.use_rules(RuleEngine(compile_rules(sustained + other_v2)))
    out = actor.handle_events(state, [event("e2", 61.0, temperature=90.0)], None, 0.0)
    assert [(a["rule"]["id"], a["at"]) for _, a in out.actions] == [("long-hot", 60.0)]


def test_usage_baseline_and_days_since_use() -> None:
    state = new_customer_state("c1")
    device = state.devices.setdefault("w1", DeviceState())
    for day in range(4):
        for minutes in (30.0, 30.0):
            record_event(
                state,
                device,
                event(
                    f"u{day}{minutes}",
                    day * DAY_S + 3600 + minutes,
                    "w1",
                    kind="usage",
                    usage_min=minutes,
                ),
            )
    view = customer_view(state)
    assert view["usage_today_min"] == 60.0
    # days 1 and 2 are full days of 60 minutes; day 0 began the history (partial)
    assert view["usage_baseline_min"] == 60.0
    assert state.usage.daily == [60.0, 60.0]
    record_event(state, device, event("t", 5 * DAY_S + 3600, "w1"))
    assert customer_view(state)["days_since_use"] == pytest.approx(2.0, abs=0.01)


def test_consumable_rates_for_the_depletion_model() -> None:
    state = new_customer_state("c1")
    washer = state.devices.setdefault("w1", DeviceState())
    readings = [(0.0, 80.0, 10), (0.2 * DAY_S, 77.0, 11), (0.5 * DAY_S, 71.0, 13)]
    for i, (ts, level, cycles) in enumerate(readings):
        record_event(
            state, washer, event(f"c{i}", ts, "w1", kind="consumable", level=level, cycles=cycles)
        )
    view = device_view(washer)
    assert view["level_drop_per_cycle"] == pytest.approx(3.0)
    assert view["cycles_per_day"] == pytest.approx(6.0)
    record_event(state, washer, event("refill", 0.6 * DAY_S, "w1", kind="consumable", level=100.0))
    assert device_view(washer)["level_drop_per_cycle"] == pytest.approx(3.0)


def test_an_event_too_late_for_a_window_is_reported(tmp_path: Path) -> None:
    rules = engine_from(
        tmp_path,
        """
- id: hourly
  version: 1
  key: device
  when:
    window: {type: tumbling, size: 60s, grace: 5s, aggregates: {n: count()}, having: "window.n > 5"}
  action: {type: support_case, payload: {}}
""",
    )
    actor = CustomerActor(rules, StreamHygiene(load_settings(path=None, environ={}).quality))
    state = new_customer_state("c1")
    actor.handle_events(state, [event("a", 10.0), event("b", 70.0)], None, 0.0)
    out = actor.handle_events(state, [event("c", 50.0)], None, 0.0)
    assert out.processed == 1, "within the device's allowed lateness: processed"
    [(late_event, reason)] = out.late
    assert late_event["id"] == "c" and "rule hourly" in reason


def test_lateness_does_not_depend_on_batch_boundaries(actor: CustomerActor) -> None:
    """An event 120 s behind its device is late whether or not it shares a batch
    with the newer events (allowed lateness: 30 s)."""
    stream = [event("a", 1000.0), event("b", 1200.0), event("old", 1080.0), event("c", 1201.0)]
    one_batch = new_customer_state("c1")
    together = actor.handle_events(one_batch, stream, None, 0.0)
    apart = new_customer_state("c1")
    split = [actor.handle_events(apart, [e], None, 0.0) for e in stream]
    assert [e["id"] for e, _ in together.late] == ["old"]
    assert [e["id"] for out in split for e, _ in out.late] == ["old"]
    assert together.processed == sum(out.processed for out in split) == 3


class RecordingScorer:
    """The shipped models, remembering every event's scores."""

    def __init__(self) -> None:
        self.models = load_models(Path(__file__).resolve().parents[3] / "models" / "models.yaml")
        self.per_device = self.models.per_device
        self.scores: dict[str, dict[str, float]] = {}

    def process(self, ev: dict, **context: Any) -> dict[str, float]:
        scores = self.models.process(ev, **context)
        self.scores[ev["id"]] = scores
        return scores


def test_device_models_travel_in_the_state_and_ignore_interleaving(
    actor: CustomerActor,
) -> None:
    """The shipped anomaly model is a device's own: in its state, through an
    encode/decode (a checkpoint restored elsewhere), and not swayed by how the
    customer's other device's events are interleaved with it."""
    rng = random.Random(8)
    streams = [
        [
            event(f"{device}-{i}", 60.0 * i, device, vibration=rng.gauss(0.3, 0.05),
                  temperature=rng.gauss(45.0, 3.0), power=rng.gauss(800.0, 60.0))
            for i in range(600)
        ]
        for device in ("d1", "d2")
    ]  # fmt: skip
    round_robin = [e for pair in zip(*streams, strict=True) for e in pair]
    shuffled = []
    pending = [list(stream) for stream in streams]
    while any(pending):
        shuffled.append(rng.choice([left for left in pending if left]).pop(0))

    seen = []
    for order, restore_every in ((round_robin, None), (shuffled, 97)):
        scorer, state = RecordingScorer(), new_customer_state("c1")
        for start in range(0, len(order), 13):
            actor.handle_events(state, order[start : start + 13], scorer, 0.0)
            if restore_every and start % restore_every == 0:
                state = decode_state(encode_state(state))
        seen.append(scorer.scores)
        assert set(state.devices["d1"].models) == {"anomaly"}

    assert seen[0] == seen[1]
    assert sum(s.get("anomaly", 0.0) > 0 for s in seen[0].values()) > 500


def test_an_unreadable_device_model_starts_over(caplog: pytest.LogCaptureFixture) -> None:
    scorer, state = RecordingScorer(), new_customer_state("c1")
    device = state.devices.setdefault("d1", DeviceState(models={}))
    scorer.models.process(
        event("e1", 0.0, vibration=0.3, temperature=45.0, power=800.0),
        device_models=device.models,
    )
    blob = encode_state(state)
    # another snapshot format version inside the model's extension
    index = blob.index(b"iotcrm-models\x00") + len(b"iotcrm-models\x00")
    tampered = blob[:index] + b"\xff\xff" + blob[index + 2 :]

    restored = decode_state(tampered)

    assert restored.devices["d1"].models["anomaly"][1] is None
    assert "starts over" in caplog.text
    scores = scorer.models.process(
        event("e2", 60.0, vibration=0.3, temperature=45.0, power=800.0),
        device_models=restored.devices["d1"].models,
    )
    fresh = restored.devices["d1"].models["anomaly"][1]
    assert scores["anomaly"] == 0.0 and fresh["HalfSpaceTrees"].counter == 1


def test_a_days_use_is_the_same_whatever_order_the_devices_events_come_in() -> None:
    """A customer's backlogs after an outage arrive one device after the
    other: the usage of a day the customer's time already left is still added
    to that day (the daily baseline feeds rules and models)."""
    from tables.state import new_customer_state, record_event

    def usage(device: str, hour: int) -> dict[str, Any]:
        return {"id": f"{device}-{hour}", "ts": 3600.0 * hour, "device_id": device,
                "kind": "usage", "usage_min": 10.0 + hour % 7}  # fmt: skip

    watch = [usage("watch", h) for h in range(1, 100, 3)]
    band = [usage("band", h) for h in range(2, 100, 3)]

    def daily(events: list[dict[str, Any]]) -> list[float]:
        state = new_customer_state("c-1")
        for item in events:
            record_event(state, state.devices.setdefault(item["device_id"], DeviceState()), item)
        return [round(day, 6) for day in state.usage.daily]

    in_order = daily(sorted(watch + band, key=lambda e: e["ts"]))
    assert len(in_order) == 3
    assert daily(watch[:2] + band[:2] + watch[2:] + band[2:]) == in_order


def test_recent_actions_are_the_same_whatever_order_they_were_taken_in() -> None:
    from tables.state import RECENT_ACTIONS_KEPT, new_customer_state, note_action

    actions = [{"action_id": f"a{n:02d}", "type": "coupon", "at": float(n % 7 * 10 + n)}
               for n in range(RECENT_ACTIONS_KEPT + 5)]  # fmt: skip

    def recent(order: list[dict[str, Any]]) -> list[str]:
        state = new_customer_state("c-1")
        for action in order:
            note_action(state, action)
        return [kept.action_id for kept in state.recent_actions]

    in_time = recent(sorted(actions, key=lambda a: a["at"]))
    assert len(in_time) == RECENT_ACTIONS_KEPT
    assert recent(actions) == in_time
    assert recent(list(reversed(actions))) == in_time


def test_support_cases_and_latest_actions_are_the_same_whatever_order_they_were_taken_in() -> None:
    from tables.state import SUPPORT_WINDOW_S, new_customer_state, note_action

    day = 86400.0
    actions = [{"action_id": f"s{n}", "type": "support_case", "device_id": "d-1",
                "at": day * n * 7} for n in range(8)]  # fmt: skip

    def kept(order: list[dict[str, Any]]) -> tuple[list[float], float]:
        state = new_customer_state("c-1")
        state.devices["d-1"] = DeviceState()
        for action in order:
            note_action(state, action)
        return state.support_case_times, state.devices["d-1"].last_action_at["support_case"]

    in_time = kept(actions)
    ats = [action["at"] for action in actions]
    assert in_time == ([at for at in ats if at > ats[-1] - SUPPORT_WINDOW_S], ats[-1])
    assert kept(list(reversed(actions))) == in_time
    assert kept(actions[4:] + actions[:4]) == in_time


def test_the_customer_view_counts_the_support_cases_of_the_last_30_days() -> None:
    from tables.state import SUPPORT_WINDOW_S, new_customer_state, note_action

    state = new_customer_state("c-1")
    state.devices["d-1"] = DeviceState()
    for n, at in enumerate((1000.0, 2000.0, 3000.0)):
        note_action(state, {"action_id": f"s{n}", "type": "support_case", "device_id": "d-1",
                            "at": at})  # fmt: skip
    assert customer_view(state)["support_cases_30d"] == 3  # no event yet: every case kept
    # A case exactly 30 days old is out; one a moment younger is in.
    state.last_event_at = 2000.0 + SUPPORT_WINDOW_S
    assert customer_view(state)["support_cases_30d"] == 1
    state.last_event_at = 2000.0 + SUPPORT_WINDOW_S - 0.001
    assert customer_view(state)["support_cases_30d"] == 2
    state.last_event_at = 3000.0 + SUPPORT_WINDOW_S
    assert customer_view(state)["support_cases_30d"] == 0


DAILY_DROP = """
- id: drop
  version: 1
  key: customer
  when:
    window:
      type: tumbling
      size: 1d
      grace: 15m
      filter: "event.kind == 'usage'"
      aggregates: {minutes: sum(event.usage_min)}
      having: "window.minutes < 0.4 * customer.usage_baseline_min"
  action: {type: retention_offer, payload: {baseline: "{{ customer.usage_baseline_min }}"}}
"""


def test_a_day_is_judged_on_the_usage_before_it_when_a_device_ran_days_ahead(
    tmp_path: Path,
) -> None:
    """A backlog arrives one device after another: the wearable's days, then
    the other device's. The customer's windows close as the device
    behind catches up, and each day must be judged against the days before
    it, not against the days the wearable has reported since: the partial
    first day (10 min) is no drop against a later day's 60; the third day
    (5 min, against the mean of the second and itself, 32.5) is."""
    settings = load_settings(path=None, environ={})
    actor = CustomerActor(engine_from(tmp_path, DAILY_DROP), StreamHygiene(settings.quality))
    state = new_customer_state("c1")
    wearable = [
        event(f"w{day}", day * DAY_S + hour * 3600, "w1", kind="usage", usage_min=minutes)
        for day, hour, minutes in [(0, 20, 10.0), (1, 12, 60.0), (2, 12, 5.0), (3, 12, 50.0)]
    ]
    other = [event(f"d{day}", day * DAY_S + (1 if day else 20.5) * 3600, "d2") for day in range(4)]
    # Both devices heard on the first day, then each one's backlog in turn.
    fired = actor.handle_events(state, [wearable[0], other[0]], None, 1.0).actions
    fired += actor.handle_events(state, wearable[1:], None, 2.0).actions
    fired += actor.handle_events(state, other[1:], None, 3.0).actions
    assert [(action["at"], action["payload"]["baseline"]) for _, action in fired] == [
        (3 * DAY_S + 900, 32.5)
    ]
    # In order, the same: one offer, for the third day.
    in_order = new_customer_state("c1")
    replayed = actor.handle_events(
        in_order, sorted(wearable + other, key=lambda e: e["ts"]), None, 1.0
    ).actions
    assert [action["at"] for _, action in replayed] == [3 * DAY_S + 900]
