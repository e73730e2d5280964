"""The trigger registry: every kind of the DSL contract, each compiling its
own ``when:`` entry and describing it in the rule file schema."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

import engine.rules.triggers
from engine.rules import compile_rules
from engine.rules.schema import rules_schema, schema_text
from engine.rules.triggers.base import Trigger
from engine.rules.triggers.registry import TRIGGERS

ROOT = Path(__file__).resolve().parents[3]

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


def test_the_shipped_rules_schema_is_the_one_assembled_from_the_fragments():
    shipped = (ROOT / "engine/schemas/rules.schema.json").read_text()
    assert shipped == schema_text(), (
        "regenerate: python -m engine.rules.schema > engine/schemas/rules.schema.json"
    )
    when = json.loads(shipped)["$defs"]["when"]
    assert when["properties"] == {kind: cls.schema for kind, cls in TRIGGERS.items()}
    jsonschema.Draft202012Validator.check_schema(rules_schema())


@pytest.mark.parametrize("kind", CONTRACT)
def test_each_fragment_accepts_what_its_kind_compiles(kind):
    validator = jsonschema.Draft202012Validator(rules_schema())
    text = f"- id: r\n  key: device\n  when: {WHEN[kind]}\n  action: {{type: coupon}}\n"
    assert list(validator.iter_errors(YAML(typ="safe").load(text))) == []
