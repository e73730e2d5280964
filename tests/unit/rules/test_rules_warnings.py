"""Warnings: fields of ``event`` and ``customer`` no contract knows. They are
reported with their position and code, and never refuse a file."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from engine.events import CustomerProfile
from engine.rules import RuleFileError, compile_rules, load_ruleset
from engine.rules.fields import CUSTOMER_FIELDS, CUSTOMER_VIEW_FIELDS, EVENT_FIELDS
from engine.rules_watch import RulesWatcher
from tables.state import customer_view, new_customer_state

ROOT = Path(__file__).resolve().parents[3]


def warnings_of(text: str) -> list[tuple[int, int, str, str]]:
    ruleset = compile_rules(textwrap.dedent(text), "r.yaml")
    return [(w.line, w.col, w.code, w.message) for w in ruleset.warnings]


def at(text: str, needle: str, occurrence: int = 0) -> tuple[int, int]:
    """1-based (line, col) of the ``occurrence``-th ``needle`` in ``text``."""
    text = textwrap.dedent(text)
    index = -1
    for _ in range(occurrence + 1):
        index = text.index(needle, index + 1)
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


TYPO = """\
- id: hot
  key: customer
  when: {condition: "event.temprature > 90 and customer.teir == 'gold'"}
  action: {type: support_case, payload: {reading: "{{ event.temperature_f }}"}}
"""


def test_an_unknown_field_is_a_warning_with_its_position_and_the_file_loads():
    ruleset = compile_rules(TYPO, "r.yaml")
    assert [rule.id for rule in ruleset] == ["hot"]
    assert [str(w) for w in ruleset.warnings] == [
        f"r.yaml:{':'.join(map(str, at(TYPO, 'temprature')))}: warning[W101]: unknown event "
        "field 'temprature' (did you mean 'temperature'?): null unless devices send it",
        f"r.yaml:{':'.join(map(str, at(TYPO, 'teir')))}: warning[W102]: unknown customer "
        "field 'teir' (did you mean 'tier'?): null unless the CRM profile has it",
        f"r.yaml:{':'.join(map(str, at(TYPO, 'temperature_f')))}: warning[W101]: event field "
        "'temperature_f' does not reach rules: ingest converts it to 'temperature' (°C)",
    ]
    assert {w.severity for w in ruleset.warnings} == {"warning"}


def test_known_fields_and_other_names_give_no_warning():
    fields = " and ".join(f"event.{name} is not None" for name in sorted(EVENT_FIELDS))
    customer = " and ".join(f"customer['{name}'] is not None" for name in sorted(CUSTOMER_FIELDS))
    text = f"""\
    - id: r
      key: device
      when: {{condition: "{fields} and {customer}"}}
      action:
        type: coupon
        payload: {{a: "{{{{ device.anything }}}} {{{{ score.whatever }}}} {{{{ now }}}}"}}
    """
    assert warnings_of(text) == []
    assert load_ruleset(ROOT / "rules").warnings == []


def test_events_by_other_names_are_checked_too():
    text = """\
    - id: seq
      key: device
      when:
        sequence:
          within: 5m
          steps:
            - {as: error, condition: "event.kind == 'error'"}
            - {as: reboot, condition: "error.devce_id == event.device_id"}
      action: {type: support_case, payload: {code: "{{ window.error.eror_code }}"}}
    - id: gone
      key: device
      when: {absence: {after: "event.kind == 'status'", missing: "first.stat == 'x'", within: 1m}}
      action: {type: support_case}
    """
    assert warnings_of(text) == [
        (
            *at(text, "devce_id"),
            "W101",
            "unknown event field 'devce_id' (did you mean 'device_id'?): null unless devices "
            "send it (read as error.devce_id)",
        ),
        (
            *at(text, "eror_code"),
            "W101",
            "unknown event field 'eror_code' (did you mean 'error_code'?): null unless devices "
            "send it (read as error.eror_code)",
        ),
        (
            *at(text, "stat "),
            "W101",
            "unknown event field 'stat' (did you mean 'state'?): null unless devices send it "
            "(read as first.stat)",
        ),
    ]


def test_window_aggregates_filters_and_nested_payloads_are_checked():
    text = """\
    - id: w
      key: device
      when:
        window:
          type: tumbling
          size: 1h
          filter: event.knd == 'error'
          aggregates: {worst: max(event.severty)}
          having: window.worst > 3
      action:
        type: support_case
        payload:
          1: "{{ event.fw }}"
          list: ["{{ customer.ltv }}", {nested: "x {{ event.unit_price }}"}]
    """
    found = warnings_of(text)
    assert [(line, col, code) for line, col, code, _m in found] == [
        (*at(text, "knd"), "W101"),
        (*at(text, "severty"), "W101"),
        (*at(text, "fw"), "W101"),
        (*at(text, "ltv"), "W102"),
        (*at(text, "unit_price"), "W101"),
    ]


def test_warnings_come_with_the_errors_when_a_file_is_refused():
    text = TYPO + '- id: broken\n  key: device\n  when: {condition: "evnt.x"}\n'
    with pytest.raises(RuleFileError) as caught:
        compile_rules(text, "r.yaml")
    assert {e.code for e in caught.value.errors} == {"R202", "R102"}
    assert [w.code for w in caught.value.warnings] == ["W101", "W102", "W101"]
    assert caught.value.files == ["r.yaml"]


def test_a_template_with_a_non_string_key_is_located():
    # YAML keys need not be strings; the payload's plain form has them as strings.
    text = """\
    - id: r
      key: device
      when: {condition: "event.kind == 'error'"}
      action: {type: coupon, payload: {1: "{{ evnt }}", 2: ["{{ event.kind }}"]}}
    """
    with pytest.raises(RuleFileError) as caught:
        compile_rules(textwrap.dedent(text), "r.yaml")
    [error] = caught.value.errors
    assert (error.line, error.col, error.code) == (*at(text, "evnt"), "R202")


def test_a_unit_field_is_named_as_consumed_by_ingest():
    [(*_where, message)] = warnings_of(
        "- id: r\n  key: device\n  when: {condition: 'event.temperature_unit == \"F\"'}\n"
        "  action: {type: coupon}\n"
    )
    assert message == (
        "event field 'temperature_unit' does not reach rules: ingest reads it to convert "
        "'temperature'"
    )


def test_the_customer_fields_are_the_profile_and_the_workers_view():
    assert set(customer_view(new_customer_state("c1"))) == CUSTOMER_VIEW_FIELDS
    assert set(CustomerProfile.__struct_fields__) <= CUSTOMER_FIELDS


def test_the_watcher_logs_the_warnings_of_rules_it_loads(tmp_path: Path, caplog):
    (tmp_path / "r.yaml").write_text(TYPO)
    with caplog.at_level(logging.WARNING, logger="engine.rules_watch"):
        ruleset = RulesWatcher(tmp_path).load_initial()
    assert len(ruleset) == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "engine.rules_watch"]
    assert len(logged) == 3 and "warning[W101]" in logged[0]
