"""The trigger registry: every kind of the DSL contract, each compiling its
own ``when:`` entry."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import engine.rules.triggers
from engine.rules import compile_rules
from engine.rules.triggers.base import Trigger
from engine.rules.triggers.registry import TRIGGERS

#: The triggers of the contract (rules-dsl.md, "Triggers"), in its order of errors.
CONTRACT = ["condition", "sustained", "window", "sequence", "absence", "silence"]

WHEN = {
    "condition": "{condition: 'event.kind == \"error\"'}",
    "sustained": "{sustained: {condition: 'event.vibration > 0.8', for: 10m}}",
    "window": (
        "{window: {type: tumbling, size: 1h, aggregates: {n: count()}, having: 'window.n > 2'}}"
    ),
    "sequence": "{sequence: {within: 5m, steps: [{as: a, condition: 'True'}]}}",
    "absence": "{absence: {after: 'True', missing: 'first.id == event.id', within: 1m}}",
    "silence": "{silence: {for: 2h}}",
}


def test_the_registry_holds_every_kind_of_the_contract_in_order():
    assert list(TRIGGERS) == CONTRACT == list(WHEN)


def test_every_trigger_class_is_registered_under_its_kind():
    for module in pkgutil.iter_modules(engine.rules.triggers.__path__):
        importlib.import_module(f"engine.rules.triggers.{module.name}")
    classes = {cls for cls in _subclasses(Trigger) if cls.kind}
    assert classes == set(TRIGGERS.values())
    for kind, cls in TRIGGERS.items():
        assert cls.kind == kind
        assert cls.compile.__func__ is not Trigger.compile.__func__, kind
        assert cls.schema, kind


@pytest.mark.parametrize("kind", CONTRACT)
def test_each_kind_compiles_through_its_own_class(kind):
    text = f"- id: r\n  key: device\n  when: {WHEN[kind]}\n  action: {{type: coupon}}\n"
    rule = compile_rules(text).get("r")
    assert type(rule.trigger) is TRIGGERS[kind]


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found
