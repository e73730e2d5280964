"""Embedded rule tests (``tests:`` in a rule), run by ``iotcrm rules test``.

Each test runs its rule alone over its events (see
:mod:`engine.rules.runner`), then compares the emitted firings with
``expect``, in order: every expected firing lists the fields to check
(``at``, ``events``, ``payload``, ``key``, ``evidence``, ``topic``, ``type``,
``device_id``); mappings match when the expected keys match (extra keys are
fine); numbers match within 1e-9. ``expect: []`` expects no firing.
``expect_suppressed`` (optional) checks the suppressed firings the same way,
with their ``suppressed`` reason.

Context: ``customer:`` (its ``customer_id`` is the default for events without
one), ``devices: {device_id: {...}}``, and model scores per event (a
``score:`` object in the event, or a test-level ``scores:`` list with one
entry per event); an event may also carry ``customer:`` / ``device:``
objects, which replace the context from then on. ``until:`` advances time
after the last event.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.rules.engine import Firing
from engine.rules.model import Rule, RuleSet, RuleTest
from engine.rules.runner import OfflineRunner


@dataclass(frozen=True)
class TestOutcome:
    """The result of one embedded test."""

    __test__ = False  # not a pytest test class

    file: str
    rule_id: str
    name: str
    passed: bool
    problems: list[str]

    @property
    def node_id(self) -> str:
        return f"{self.file}::{self.rule_id}::{self.name}"


def view(firing: Firing) -> dict[str, Any]:
    """A firing as test expectations name its fields."""
    return {
        "at": firing.at,
        "events": firing.event_ids,
        "payload": firing.payload,
        "key": firing.key,
        "evidence": firing.evidence,
        "topic": firing.topic,
        "type": firing.action_type,
        "device_id": firing.device_id,
        "suppressed": firing.suppressed,
    }


def matches(expected: Any, actual: Any) -> bool:
    """Subset match: mappings by the expected keys, lists element-wise,
    numbers within 1e-9."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and matches(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list | tuple)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-9)
    return expected == actual


def _show(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()


def compare(label: str, expected: list[dict[str, Any]], firings: list[Firing]) -> list[str]:
    """Human-readable differences between expected and actual firings."""
    problems: list[str] = []
    if len(expected) != len(firings):
        problems.append(f"{label}: expected {len(expected)} firing(s), got {len(firings)}")
    for index in range(max(len(expected), len(firings))):
        want = expected[index] if index < len(expected) else None
        got = view(firings[index]) if index < len(firings) else None
        if want is not None and got is not None and matches(want, got):
            continue
        shown = {k: got[k] for k in want} if want is not None and got is not None else got
        problems.append(f"  #{index + 1} expected {_show(want)}")
        problems.append(f"  #{index + 1}      got {_show(shown)}")
    return problems


def run_test(rule: Rule, test: RuleTest) -> TestOutcome:
    """Run one embedded test of ``rule``, alone."""
    alone = dataclasses.replace(rule, enabled=True)
    runner = OfflineRunner(RuleSet([alone]))
    default_customer = test.customer.get("customer_id")
    customer: dict[str, Any] = dict(test.customer)
    devices = {str(k): v for k, v in test.devices.items()}
    results = []
    for index, raw in enumerate(test.events):
        event = dict(raw)
        score = event.pop("score", None)
        if score is None and index < len(test.scores):
            score = test.scores[index]
        customer = event.pop("customer", None) or customer
        if "customer_id" not in event and default_customer is not None:
            event["customer_id"] = default_customer
        device_id = event.get("device_id")
        device = event.pop("device", None)
        if device_id is not None and device is not None:
            devices[str(device_id)] = device
        device = devices.get(str(device_id)) if device_id is not None else None
        results.extend(runner.feed(event, customer=customer, device=device, score=score))
    results.extend(runner.finish(test.until))
    firings = [r.firing for r in results]
    emitted = [f for f in firings if f.suppressed is None]
    problems = compare("emitted", test.expect, emitted)
    if test.expect_suppressed is not None:
        suppressed = [f for f in firings if f.suppressed is not None]
        problems += compare("suppressed", test.expect_suppressed, suppressed)
    return TestOutcome(rule.file, rule.id, test.name, not problems, problems)


def run_tests(ruleset: RuleSet) -> list[TestOutcome]:
    """Every embedded test of every rule (disabled ones included), in file order."""
    return [run_test(rule, test) for rule in ruleset.all_rules() for test in rule.tests]
