"""Rule files: validation of every field, all errors collected, exact positions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.rules import RuleFileError, compile_rules, load_ruleset, parse_duration
from engine.rules.errors import RuleError


def errors_of(text: str) -> list[RuleError]:
    with pytest.raises(RuleFileError) as caught:
        compile_rules(textwrap.dedent(text), "r.yaml")
    return caught.value.errors


def positions(text: str) -> list[tuple[int, int, str]]:
    return [(e.line, e.col, e.message) for e in errors_of(text)]


def position_of(text: str, needle: str, occurrence: int = 0) -> tuple[int, int]:
    """1-based (line, col) of the ``occurrence``-th ``needle`` in ``text``."""
    text = textwrap.dedent(text)
    index = -1
    for _ in range(occurrence + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


MINIMAL = """\
- id: r
  key: device
  when: {condition: "event.x > 1"}
  action: {type: coupon}
"""


def test_a_minimal_rule_compiles_with_defaults():
    rule = compile_rules(MINIMAL).get("r")
    assert rule is not None
    assert (rule.version, rule.priority, rule.enabled, rule.group) == (1, 0, True, None)
    assert (rule.cooldown, rule.requires_consent, rule.topic) == (
        None,
        None,
        "crm.actions.coupon",
    )


@pytest.mark.parametrize(
    ("action_type", "topic"),
    [
        ("coupon", "crm.actions.coupon"),
        ("maintenance_booking", "crm.actions.maintenance"),
        ("retention_offer", "crm.actions.retention"),
        ("support_case", "crm.actions.support"),
    ],
)
def test_topic_defaults_from_the_action_type(action_type, topic):
    text = MINIMAL.replace("type: coupon", f"type: {action_type}")
    assert compile_rules(text).get("r").topic == topic


def test_an_explicit_topic_wins():
    text = MINIMAL.replace("type: coupon", "type: coupon, topic: crm.actions.vip")
    assert compile_rules(text).get("r").topic == "crm.actions.vip"


def test_a_mapping_with_rules_and_an_empty_file_are_rule_files():
    assert [r.id for r in compile_rules("rules:\n" + textwrap.indent(MINIMAL, "  "))] == ["r"]
    assert len(compile_rules("")) == 0
    assert len(compile_rules("rules:\n")) == 0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("4s", 4.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (90, 90.0),
        (1.5, 1.5),
        ("1.5h", 5400.0),
        ("30", 30.0),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["10 minutes", "m", "-5s", True, None, [], "1w", "nan"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_syntax_error_position_in_a_plain_scalar():
    text = """\
    - id: r
      key: device
      when: {condition: event.x > > 1}
      action: {type: coupon}
    """
    [(line, col, message)] = positions(text)
    assert (line, col) == position_of(text, "> 1")
    assert message.startswith("syntax error")


def test_unknown_name_position_in_a_double_quoted_scalar():
    text = """\
    - id: r
      key: device
      when: {condition: "event.kind == 'x' and evnt.x > 1"}
      action: {type: coupon}
    """
    assert positions(text) == [
        (
            *position_of(text, "evnt"),
            "unknown name 'evnt' (names in scope: customer, device, event, now, score, window)",
        )
    ]


def test_position_in_a_literal_block_scalar():
    text = """\
    - id: r
      key: device
      when:
        condition: |
          event.kind == 'x'
            and event.x > 1
            and open(event.path)
      action: {type: coupon}
    """
    [(line, col, message)] = positions(text)
    assert (line, col) == position_of(text, "open")
    assert "unknown function 'open'" in message


def test_position_in_a_folded_block_scalar_and_repeated_tokens():
    text = """\
    - id: r
      key: device
      when:
        condition: >-
          event.x > 1 and event.y > 1
          and event.__class__
      action: {type: coupon}
    """
    [(line, col, message)] = positions(text)
    assert (line, col) == position_of(text, "__class__")
    assert "dunder" in message


def test_position_of_a_disallowed_call_in_a_payload_template():
    text = """\
    - id: r
      key: device
      when: {condition: "event.x > 1"}
      action:
        type: coupon
        payload:
          ok: "{{ event.x }}"
          nested:
            - "value {{ eval('1') }}"
    """
    [(line, col, message)] = positions(text)
    assert (line, col) == position_of(text, "eval")
    assert "unknown function 'eval'" in message


def test_position_in_a_window_aggregate_argument():
    text = """\
    - id: r
      key: device
      when:
        window:
          type: sliding
          size: 10m
          aggregates: {n: count(), m: avg(evnt.x)}
          having: window.n > 1
      action: {type: coupon}
    """
    [(line, col, message)] = positions(text)
    assert (line, col) == position_of(text, "evnt")
    assert "unknown name 'evnt'" in message


def test_all_errors_of_a_file_are_collected_in_position_order():
    text = """\
    - id: Bad_Id
      version: one
      key: devices
      colour: red
      when: {condition: "foo > 1"}
      cooldown: ten minutes
      requires_consent: "mark eting"
      action: {type: voucher, payload: {a: "{{ bar }}"}}
    - id: ok-rule
      key: customer
      when: {silence: {for: 0}}
      action: {type: coupon}
    - id: ok-rule
      key: device
      when: {condition: "event.x > 1", silence: {for: 1h}}
      action: {type: coupon}
    """
    found = positions(text)
    messages = [message for _l, _c, message in found]
    assert found == sorted(found)
    expected = [
        ("R105", "rule id 'Bad_Id' must match [a-z0-9-]+"),
        ("R103", "'version' must be an integer"),
        ("R104", "'key' must be one of device, customer"),
        ("R101", "unknown key 'colour' in a rule"),
        ("R202", "unknown name 'foo'"),
        ("R107", "'cooldown': invalid duration"),
        ("R105", "'requires_consent' must be a consent name"),
        (
            "R104",
            "'type' must be one of coupon, maintenance_booking, retention_offer, support_case",
        ),
        ("R202", "unknown name 'bar'"),
        ("R107", "'for' must be longer than zero"),
        ("R106", "duplicate rule id 'ok-rule' (first defined at r.yaml:9:7)"),
        ("R301", "'when' needs exactly one trigger"),
    ]
    coded = [(e.code, e.message) for e in errors_of(text)]
    for code, fragment in expected:
        assert any(c == code and fragment in m for c, m in coded), (code, fragment, messages)
    assert len(found) == len(expected)


@pytest.mark.parametrize(
    ("when", "code", "fragment"),
    [
        ("{}", "R301", "'when' needs exactly one trigger"),
        ("{conditon: 'x'}", "R101", "unknown key 'conditon' in 'when'"),
        ("{condition: 5}", "R103", "'condition' must be an expression (a string)"),
        ("{sustained: {condition: 'event.x > 1'}}", "R102", "'sustained' needs 'for'"),
        (
            "{sustained: {condition: 'event.x > 1', for: 1m, filter: 3}}",
            "R103",
            "'filter' must be an",
        ),
        (
            "{window: {type: rolling, size: 1m, aggregates: {n: count()}, having: 'window.n > 1'}}",
            "R104",
            "'type' must be one of sliding, tumbling, hopping, session",
        ),
        (
            "{window: {type: sliding, aggregates: {n: count()}, having: 'window.n > 1'}}",
            "R102",
            "a sliding window needs 'size'",
        ),
        (
            "{window: {type: sliding, size: 1m, grace: 1m, aggregates: {n: count()}, "
            "having: 'window.n > 1'}}",
            "R302",
            "'grace' is for tumbling, hopping and session windows",
        ),
        (
            "{window: {type: session, size: 1m, gap: 1m, aggregates: {n: count()}, "
            "having: 'window.n > 1'}}",
            "R302",
            "a session window has no 'size'",
        ),
        (
            "{window: {type: tumbling, size: 1m, advance: 1m, aggregates: {n: count()}, "
            "having: 'window.n > 1'}}",
            "R302",
            "'advance' is for hopping windows",
        ),
        (
            "{window: {type: hopping, size: 1m, aggregates: {n: count()}, having: 'window.n > 1'}}",
            "R102",
            "a hopping window needs 'advance'",
        ),
        (
            "{window: {type: hopping, size: 1m, advance: 2m, aggregates: {n: count()}, "
            "having: 'window.n > 1'}}",
            "R302",
            "'advance' must not be longer than 'size'",
        ),
        (
            "{window: {type: tumbling, size: 1m, gap: 1m, aggregates: {n: count()}, "
            "having: 'window.n > 1'}}",
            "R302",
            "'gap' is for session windows",
        ),
        (
            "{window: {type: tumbling, size: 1m, aggregates: {}, having: 'true'}}",
            "R303",
            "'aggregates' needs at least one",
        ),
        (
            "{window: {type: tumbling, size: 1m, aggregates: {n: median(event.x)}, "
            "having: 'window.n > 1'}}",
            "R303",
            "unknown aggregate 'median'",
        ),
        (
            "{window: {type: tumbling, size: 1m, aggregates: {n: sum()}, having: 'window.n > 1'}}",
            "R303",
            "sum() takes one argument",
        ),
        (
            "{window: {type: tumbling, size: 1m, aggregates: {n: 'event.x'}, "
            "having: 'window.n > 1'}}",
            "R303",
            "must be an aggregate call",
        ),
        (
            "{window: {type: tumbling, size: 1m, aggregates: {n: count()}, having: 'window.m'}}",
            "R206",
            "window has no field 'm' (known: n)",
        ),
        ("{sequence: {within: 1m, steps: []}}", "R304", "'steps' needs at least one step"),
        (
            "{sequence: {within: 1m, steps: [{as: a, condition: 'b.x'}, "
            "{as: b, condition: 'true'}]}}",
            "R202",
            "unknown name 'b'",
        ),
        (
            "{sequence: {within: 1m, steps: [{as: event, condition: 'true'}]}}",
            "R304",
            "step name 'event' is reserved",
        ),
        (
            "{sequence: {within: 1m, steps: [{as: a, condition: 'True'}, "
            "{as: a, condition: 'True'}]}}",
            "R304",
            "duplicate step name 'a'",
        ),
        (
            "{sequence: {within: 1m, contiguity: loose, steps: [{as: a, condition: 'True'}]}}",
            "R104",
            "'contiguity' must be one of relaxed, strict, any",
        ),
        (
            "{sequence: {within: 1m, skip: all, steps: [{as: a, condition: 'True'}]}}",
            "R104",
            "'skip' must be one of past_last_event, none",
        ),
        ("{sequence: {steps: [{as: a, condition: 'True'}]}}", "R102", "'sequence' needs 'within'"),
        ("{absence: {after: 'True', within: 1m}}", "R102", "'absence' needs 'missing'"),
        (
            "{absence: {after: 'first.x', missing: 'True', within: 1m}}",
            "R202",
            "unknown name 'first'",
        ),
        ("{condition: 'window.x > 1'}", "R206", "window has no field 'x' (known: none)"),
    ],
)
def test_trigger_validation(when, code, fragment):
    text = f"- id: r\n  key: device\n  when: {when}\n  action: {{type: coupon}}\n"
    coded = [(e.code, e.message) for e in errors_of(text)]
    assert any(c == code and fragment in m for c, m in coded), coded


def test_yaml_syntax_and_duplicate_keys_are_reported_with_positions():
    [error] = errors_of("- id: r\n  key: [device\n")
    assert error.message.startswith("YAML:") and error.line >= 2
    [error] = errors_of("- id: r\n  id: s\n  key: device\n")
    assert error.message.startswith("YAML:") and (error.line, error.col) == (2, 3)


def test_a_rule_file_must_be_a_list_of_mappings():
    assert "a rule must be a mapping" in errors_of("- 5\n")[0].message
    assert "a list of rules" in errors_of("rulez: []\n")[-1].message


def test_test_cases_are_validated_too():
    text = (
        MINIMAL + "  tests:\n    - name: t\n      events: [{id: e1}]\n      expect: [{when: 1}]\n"
    )
    messages = [e.message for e in errors_of(text)]
    assert "a test event needs 'ts'" in messages
    assert any("unknown key 'when' in an expected firing" in m for m in messages)


def test_templates_keep_the_type_of_a_single_expression_and_render_mixed_text():
    text = MINIMAL.replace(
        "type: coupon}",
        "type: coupon, payload: {n: '{{ event.x }}', s: 'x={{ event.x }} {{ event.none }}!', "
        "b: '{{ event.x > 1 }}', t: 'is {{ event.x > 1 }}', c: 'plain', "
        "l: ['{{ event.x * 2 }}', 3]}}",
    )
    from engine.rules.expr import Scope

    payload = compile_rules(text).get("r").payload.render(Scope({"x": 2.5}))
    assert payload == {
        "n": 2.5,
        "s": "x=2.5 !",
        "b": True,
        "t": "is true",
        "c": "plain",
        "l": [5.0, 3],
    }


def test_disabled_rules_compile_but_do_not_run():
    ruleset = compile_rules(MINIMAL.replace("key: device", "key: device\n  enabled: false"))
    assert len(ruleset) == 0 and [r.id for r in ruleset.disabled] == ["r"]


def test_priority_orders_evaluation_then_file_order():
    text = "".join(
        MINIMAL.replace("id: r", f"id: r{i}").replace(
            "key: device", f"key: device\n  priority: {p}"
        )
        for i, p in enumerate([0, 5, 0, 9])
    )
    assert [r.id for r in compile_rules(text)] == ["r3", "r1", "r0", "r2"]


def test_load_ruleset_reads_files_folders_and_lists(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "b.yml").write_text(MINIMAL.replace("id: r", "id: s"))
    (tmp_path / "notes.txt").write_text("not a rule file")
    assert sorted(r.id for r in load_ruleset(tmp_path)) == ["r", "s"]
    assert [r.id for r in load_ruleset(tmp_path / "a.yaml")] == ["r"]
    assert len(load_ruleset([tmp_path / "a.yaml", str(tmp_path / "b.yml")])) == 2


def test_duplicate_ids_across_files_and_missing_paths(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "b.yaml").write_text(MINIMAL)
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(tmp_path)
    [error] = caught.value.errors
    assert error.file.endswith("b.yaml") and (error.line, error.col) == (1, 7)
    assert f"first defined at {tmp_path / 'a.yaml'}:1:7" in error.message
    with pytest.raises(RuleFileError, match="no such file or folder"):
        load_ruleset(tmp_path / "missing")


def test_the_fingerprint_ignores_description_and_tests_but_not_behaviour():
    base = compile_rules(MINIMAL).get("r")
    described = compile_rules(MINIMAL.replace("key: device", "key: device\n  description: hi"))
    changed = compile_rules(MINIMAL.replace("event.x > 1", "event.x > 2"))
    assert described.get("r").fingerprint == base.fingerprint
    assert changed.get("r").fingerprint != base.fingerprint


def test_yaml_tags_never_construct_python_objects(tmp_path: Path):
    marker = tmp_path / "pwned"
    text = f'- !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(RuleFileError):
        compile_rules(text)
    assert not marker.exists()
