"""The benchmark's peer hand-codes the shipped rules: over the same simulated
fleet it must fire exactly what the rule engine fires (same rules, keys,
times and action ids), or the comparison would be between different work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from loadtest_helpers import END_TS

from engine.config import QualitySettings
from engine.quality import StreamHygiene
from engine.rules import RuleEngine, load_ruleset
from engine.rules.testing import matches
from loadtest.bench import BENCH_EPISODES
from loadtest.peer_rules import HandRules
from loadtest.simulator import SimParams, Simulation
from tables.state import (
    CustomerState,
    DeviceState,
    apply_profile,
    customer_view,
    device_view,
    new_customer_state,
    note_action,
    record_event,
)

RULES = Path(__file__).resolve().parents[3] / "rules"
#: Partition time moves every this many events (a worker advances idle keys per batch).
ADVANCE_EVERY = 50

Fired = tuple[str, str, float, str]


def _scores(event: dict[str, Any], customer: dict[str, Any]) -> dict[str, float]:
    """Deterministic stand-ins for model scores, so that the score-driven
    rules (anomaly, churn) fire now and then on both sides."""
    scores: dict[str, float] = {}
    vibration = event.get("vibration")
    if event["kind"] == "telemetry" and isinstance(vibration, float):
        # On half the devices the model flags a drifting machine from 0.65 g, before
        # it passes 0.8 g: both maintenance rules get to book.
        sensitive = event["device_id"][-1] in "02468"
        scores["anomaly"] = 0.9 if sensitive and vibration > 0.65 else vibration
    idle_days = customer.get("days_since_use")
    scores["churn"] = 0.9 if idle_days is not None and idle_days > 0.3 else 0.1
    return scores


def _replay(consent_share: float) -> tuple[list[Fired], list[Fired], int]:
    sim = Simulation(
        SimParams(
            customers=30,
            devices_per_customer=2,
            seed=23,
            span_s=3 * 86400,
            end_ts=END_TS,
            canonical=True,
            marketing_consent_share=consent_share,
            service_consent_share=consent_share,
            episodes=BENCH_EPISODES,
        )
    )
    profiles = dict(sim.profiles())
    engine = RuleEngine(load_ruleset(RULES))
    hand = HandRules()
    hygiene = StreamHygiene(QualitySettings(), clock=lambda: 0.0)
    states: dict[str, CustomerState] = {}
    hands: dict[str, Any] = {}  # the hand-written rules' state per customer
    engine_fired: list[Fired] = []
    hand_fired: list[Fired] = []
    now = 0.0
    for count, (_device_id, payload) in enumerate(sim.events(), start=1):
        event = orjson.loads(payload)
        event.pop("customer", None)
        customer_id = event["customer_id"]
        state = states.get(customer_id)
        if state is None:
            state = states[customer_id] = new_customer_state(customer_id)
            apply_profile(state, profiles[customer_id])
            state.rules = engine.new_state()
            hands[customer_id] = hand.new_state()
        device_state = state.devices.setdefault(event["device_id"], DeviceState())
        if hygiene.admit(device_state, event) != "ok":
            continue
        record_event(state, device_state, event)
        customer, device = customer_view(state), device_view(device_state)
        scores = _scores(event, customer)
        firings = engine.process(state.rules, event, customer=customer, device=device, score=scores)
        _note(state, firings, engine_fired)
        for firing in hand.process(hands[customer_id], event, customer, device, scores):
            hand_fired.append((firing["rule"], firing["key"], firing["at"], firing["action_id"]))
        now = max(now, event["ts"])
        if count % ADVANCE_EVERY == 0:
            _advance(states, hands, engine, hand, now, engine_fired, hand_fired)
    _advance(states, hands, engine, hand, END_TS + 3 * 3600, engine_fired, hand_fired)
    return engine_fired, hand_fired, hand.suppressed


def _note(state: CustomerState, firings: list[Any], fired: list[Fired]) -> None:
    """Record emitted firings as the actor does (rules then see
    ``device.last_action_at``); both sides read the same state."""
    for firing in firings:
        if firing.suppressed is None:
            fired.append((firing.rule_id, firing.key, firing.at, firing.action_id))
            note_action(
                state,
                {"action_id": firing.action_id, "type": firing.action_type, "at": firing.at,
                 "device_id": firing.device_id},
            )  # fmt: skip


def _advance(
    states: dict[str, CustomerState],
    hands: dict[str, Any],
    engine: RuleEngine,
    hand: HandRules,
    now: float,
    engine_fired: list[Fired],
    hand_fired: list[Fired],
) -> None:
    for customer_id, state in states.items():
        customer = customer_view(state)
        due = engine.next_due(state.rules)
        assert due == hand.next_due(hands[customer_id])
        if due is None or due > now:
            continue
        devices = {d: device_view(s) for d, s in state.devices.items()}
        _note(state, engine.advance(state.rules, now, customer=customer, devices=devices),
              engine_fired)  # fmt: skip
        for firing in hand.advance(hands[customer_id], now, customer):
            hand_fired.append((firing["rule"], firing["key"], firing["at"], firing["action_id"]))


@pytest.fixture(scope="module")
def replay() -> tuple[list[Fired], list[Fired], int]:
    return _replay(consent_share=0.7)


def test_hand_coded_rules_fire_exactly_what_the_engine_fires(
    replay: tuple[list[Fired], list[Fired], int],
) -> None:
    engine_fired, hand_fired, _suppressed = replay
    assert hand_fired == engine_fired


def test_every_shipped_rule_is_exercised_by_the_comparison(
    replay: tuple[list[Fired], list[Fired], int],
) -> None:
    engine_fired, _hand_fired, suppressed = replay
    fired_rules = {rule for rule, *_ in engine_fired}
    enabled = {rule.id for rule in load_ruleset(RULES).rules}
    assert fired_rules == enabled
    assert suppressed > 0  # consent and cooldowns were in play too


def _embedded_tests() -> list[Any]:
    return [
        pytest.param(rule, test, id=f"{rule.id}::{test.name}")
        for rule in load_ruleset(RULES).rules
        for test in rule.tests
    ]


@pytest.mark.parametrize(("rule", "test"), _embedded_tests())
def test_hand_coded_rules_pass_the_rule_files_own_tests(rule: Any, test: Any) -> None:
    """The edge cases the rule authors wrote down (exact thresholds, half-open
    windows, late events, context from the CRM) hold for the hand-coded rules."""
    hand = HandRules()
    state = hand.new_state()
    customer = dict(test.customer)
    devices = {str(k): v for k, v in test.devices.items()}
    fired: list[dict[str, Any]] = []
    for index, raw in enumerate(test.events):
        event = dict(raw)
        score = event.pop("score", None)
        if score is None and index < len(test.scores):
            score = test.scores[index]
        customer = event.pop("customer", None) or customer
        event.setdefault("customer_id", customer.get("customer_id", "c1"))
        device = event.pop("device", None)
        if device is not None:
            devices[str(event["device_id"])] = device
        context = devices.get(str(event["device_id"]), {})
        fired += hand.process(state, event, customer, context, score or {})
    if test.until is not None:
        fired += hand.advance(state, test.until, {"customer_id": "c1", **customer})
    mine = [f for f in fired if f["rule"] == rule.id]
    assert len(mine) == len(test.expect), [f["at"] for f in mine]
    for firing, expected in zip(mine, test.expect, strict=True):
        assert matches(
            {k: expected[k] for k in ("at", "events", "key") if k in expected},
            {"at": firing["at"], "events": firing["event_ids"], "key": firing["key"]},
        )
        assert matches(expected.get("payload", {}), firing["payload"])
