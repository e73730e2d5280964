"""``iotcrm rules validate|test|run``, the offline runner, the action contract
and the shipped rules."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest
from ruamel.yaml import YAML

from engine.actions import ACTION_SCHEMA_VERSION, action_schema, build_action
from engine.cli import main
from engine.rules import load_ruleset
from engine.rules.runner import EventError, split_event
from engine.rules.testing import run_tests

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "rules"
RULES_SCHEMA = json.loads((ROOT / "engine/schemas/rules.schema.json").read_text())

SILENT = """\
- id: quiet
  key: device
  when: {silence: {for: 60, filter: "event.kind == 'telemetry'"}}
  action: {type: support_case, payload: {device: "{{ event.device_id }}"}}
- id: hot
  key: customer
  requires_consent: service
  when: {condition: "event.temperature > 90"}
  action: {type: support_case, payload: {tier: "{{ customer.tier }}", s: "{{ score.x }}"}}
"""


def lines_of(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line]


# ------------------------------------------------------------------- validate


def test_validate_accepts_the_shipped_rules(capsys):
    assert main(["rules", "validate", str(RULES)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("OK: 4 file(s)")


def test_validate_prints_every_error_as_file_line_col_code_and_exits_1(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        '- id: a\n  key: device\n  when: {condition: "evnt.x > 1"}\n  action: {type: coupon}\n'
        '- id: b\n  key: device\n  when: {condition: "event.x >"}\n  action: {type: cupon}\n'
    )
    assert main(["rules", "validate", str(broken)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{broken}:3:22: error[R202]: unknown name 'evnt' (names in scope: customer, device, "
        "event, now, score, window)",
        f"{broken}:7:31: error[R201]: syntax error: invalid syntax",
        f"{broken}:8:18: error[R104]: 'type' must be one of coupon, maintenance_booking, "
        "retention_offer, support_case (got 'cupon')",
    ]


WARNED = """\
- id: warm
  key: device
  when: {condition: "event.temprature > 30"}
  action: {type: support_case}
"""


def test_warnings_are_printed_and_validation_still_passes(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(WARNED)
    assert main(["rules", "validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}:3:28: warning[W101]: unknown event field 'temprature' (did you mean "
        "'temperature'?): null unless devices send it"
    ]
    assert err == "OK: 1 file(s), 1 enabled rule(s), 0 disabled, 0 test(s), 1 warning(s)\n"
    assert main(["rules", "validate", "--strict", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "warning[W101]" in out and err == "FAILED (--strict): 1 warning(s)\n"
    assert main(["rules", "validate", "--strict", str(RULES)]) == 0


def test_validate_json_reports_errors_and_warnings_with_positions(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(WARNED + '- id: b\n  key: device\n  when: {condition: "event.x >"}\n')
    assert main(["rules", "validate", "--format", "json", str(broken)]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)
    assert report == {
        "ok": False,
        "files": [str(broken)],
        "rules": None,
        "disabled": None,
        "tests": None,
        "errors": [
            {
                "file": str(broken),
                "line": 5,
                "col": 3,
                "code": "R102",
                "severity": "error",
                "message": "rule 'b' needs 'action'",
            },
            {
                "file": str(broken),
                "line": 7,
                "col": 31,
                "code": "R201",
                "severity": "error",
                "message": "syntax error: invalid syntax",
            },
        ],
        "warnings": [
            {
                "file": str(broken),
                "line": 3,
                "col": 28,
                "code": "W101",
                "severity": "warning",
                "message": "unknown event field 'temprature' (did you mean 'temperature'?): "
                "null unless devices send it",
            }
        ],
    }


def test_validate_json_counts_what_loaded(tmp_path, capsys):
    assert main(["rules", "validate", "--format", "json", str(RULES)]) == 0
    report = json.loads(capsys.readouterr().out)
    ruleset = load_ruleset(RULES)
    assert report == {
        "ok": True,
        "files": ruleset.files,
        "rules": len(ruleset.rules),
        "disabled": len(ruleset.disabled),
        "tests": sum(len(rule.tests) for rule in ruleset.all_rules()),
        "errors": [],
        "warnings": [],
    }
    assert len(report["files"]) == 4 and report["tests"] > 0
    path = tmp_path / "w.yaml"
    path.write_text(WARNED)
    assert main(["rules", "validate", "--format", "json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [w["code"] for w in report["warnings"]] == ["W101"]
    assert main(["rules", "validate", "--format", "json", "--strict", str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


# ------------------------------------------------------------------- test


def test_test_runs_the_shipped_rules_embedded_tests(capsys):
    assert main(["rules", "test", str(RULES)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("PASSED rules/") or line.startswith("PASSED /") for line in out[:-1])
    assert out[-1] == f"{len(out) - 1} passed, 0 failed"
    tested = {line.split("::")[1] for line in out[:-1]}
    assert {rule.id for rule in load_ruleset(RULES).all_rules()} == tested


def test_every_shipped_rule_has_a_description_and_firing_and_non_firing_tests():
    for rule in load_ruleset(RULES).all_rules():
        assert rule.description, rule.id
        assert any(test.expect for test in rule.tests), rule.id
        assert any(not test.expect for test in rule.tests), rule.id


def test_a_failing_test_is_reported_with_a_diff_and_exit_1(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(
        SILENT
        + "  tests:\n"
        + "    - name: wrong time\n"
        + "      events: [{id: e1, ts: 0, device_id: d1, customer_id: c1, temperature: 95}]\n"
        + "      customer: {consent: {service: true}, tier: gold}\n"
        + "      expect: [{at: 1, payload: {tier: gold}}]\n"
        + "    - name: right\n"
        + "      events: [{id: e1, ts: 0, device_id: d1, customer_id: c1, temperature: 95,\n"
        + "                score: {x: 2}}]\n"
        + "      customer: {consent: {service: true}, tier: gold}\n"
        + "      expect: [{at: 0, key: c1, payload: {tier: gold, s: 2}}]\n"
        + "    - name: nothing\n"
        + "      events: [{id: e1, ts: 0, device_id: d1, customer_id: c1, temperature: 95}]\n"
        + "      expect: []\n"
        + "      expect_suppressed: [{suppressed: 'consent:service'}]\n"
    )
    assert main(["rules", "test", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAILED {path}::hot::wrong time"
    assert out[1].strip() == '#1 expected {"at":1.0,"payload":{"tier":"gold"}}'
    assert out[2].strip() == '#1      got {"at":0.0,"payload":{"s":null,"tier":"gold"}}'
    assert out[3:] == [
        f"PASSED {path}::hot::right",
        f"PASSED {path}::hot::nothing",
        "2 passed, 1 failed",
    ]


def test_no_tests_exits_5_and_broken_files_exit_2(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(SILENT)
    assert main(["rules", "test", str(path)]) == 5
    assert capsys.readouterr().out.splitlines()[-1] == "0 passed, 0 failed"
    path.write_text("- id: x\n")
    assert main(["rules", "test", str(path)]) == 2


# ------------------------------------------------------------------- run


def write_events(path: Path, events: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))


def test_run_writes_one_json_line_per_firing_and_nothing_else(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text(SILENT)
    events = tmp_path / "events.jsonl"
    write_events(
        events,
        [
            {
                "id": "e1",
                "ts": "1970-01-01T00:00:00Z",
                "device_id": "d1",
                "customer_id": "c1",
                "kind": "telemetry",
                "customer": {"tier": "gold", "consent": {"service": True}},
            },
            {
                "id": "e2",
                "ts": 30,
                "device_id": "d2",
                "customer_id": "c1",
                "kind": "telemetry",
                "temperature": 95,
                "score": {"x": 0.5},
            },
            {"id": "e3", "ts": 100, "device_id": "d2", "customer_id": "c1", "kind": "telemetry"},
        ],
    )
    assert main(["rules", "run", str(rules), str(events), "--until", "200"]) == 0
    out, _err = capsys.readouterr()
    lines = lines_of(out)
    assert [(x["rule"], x["key"], x["at"], x["events"]) for x in lines] == [
        ("hot", "c1", 30.0, ["e2"]),
        # Noticed when e3 moves the stream past their due times, before e3 itself.
        ("quiet", "d1", 60.0, ["e1"]),
        ("quiet", "d2", 90.0, ["e2"]),
        # --until: the rest, in time order.
        ("quiet", "d1", 120.0, ["e1"]),
        ("quiet", "d2", 160.0, ["e3"]),
        ("quiet", "d1", 180.0, ["e1"]),
    ]
    hot = lines[0]["action"]
    assert hot["payload"] == {"tier": "gold", "s": 0.5}  # the customer context is remembered
    assert hot["customer_id"] == "c1" and hot["device_id"] == "d2"
    assert hot["at"] == hot["emitted_at"] == 30.0
    validator = jsonschema.Draft202012Validator(action_schema())
    for line in lines:
        validator.validate(line["action"])


def test_run_without_until_ends_at_the_last_event_and_reads_stdin(tmp_path, capsys, monkeypatch):
    rules = tmp_path / "r.yaml"
    rules.write_text(SILENT)
    data = (
        b"".join(
            orjson.dumps({"id": f"e{t}", "ts": t, "device_id": "d1", "kind": "status"}) + b"\n"
            for t in (0, 50)
        )
        + orjson.dumps({"id": "t", "ts": 60, "device_id": "d1", "kind": "telemetry"})
        + b"\n\n"
    )
    data += orjson.dumps({"id": "x", "ts": 130, "device_id": "d2", "kind": "status"}) + b"\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["rules", "run", str(rules), "-"]) == 0
    lines = lines_of(capsys.readouterr().out)
    assert [(x["rule"], x["key"], x["at"]) for x in lines] == [("quiet", "d1", 120.0)]
    assert lines[0]["action"]["customer_id"] == ""  # offline event without customer_id


def test_run_reports_bad_rule_files_and_bad_events(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text("- id: x\n  key: device\n")
    events = tmp_path / "e.jsonl"
    events.write_text('{"id": "a", "ts": 1}\nnot json\n')
    assert main(["rules", "run", str(rules), str(events)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"{rules}:1:3: error[R102]: rule 'x' needs 'when'" in err
    rules.write_text(SILENT)
    assert main(["rules", "run", str(rules), str(events)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{events}:2: ")


def test_run_writes_warnings_to_stderr_only(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text(WARNED)
    events = tmp_path / "e.jsonl"
    write_events(events, [{"id": "a", "ts": 1, "device_id": "d1", "temprature": 40}])
    assert main(["rules", "run", str(rules), str(events)]) == 0
    out, err = capsys.readouterr()
    assert [x["rule"] for x in lines_of(out)] == ["warm"]
    assert f"{rules}:3:28: warning[W101]" in err


def test_run_can_include_suppressed_firings(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text(SILENT)
    events = tmp_path / "e.jsonl"
    write_events(events, [{"id": "a", "ts": 1, "customer_id": "c1", "temperature": 99}])
    assert main(["rules", "run", str(rules), str(events)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["rules", "run", str(rules), str(events), "--include-suppressed"]) == 0
    [line] = lines_of(capsys.readouterr().out)
    assert line["suppressed"] == "consent:service" and "action" not in line


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1], "must be a JSON object"),
        ({"id": "a"}, "no 'ts'"),
        ({"ts": "yesterday"}, "invalid"),
        ({"ts": 1, "customer": 5}, "'customer' must be an object"),
    ],
)
def test_bad_events(raw, message):
    with pytest.raises(EventError, match=message):
        split_event(raw)


def test_split_event_takes_context_out_and_parses_rfc3339():
    event, customer, device, score = split_event(
        {
            "id": "a",
            "ts": "2025-01-01T01:00:00+01:00",
            "customer": {"tier": "gold"},
            "score": {"churn": 1},
        }
    )
    assert event == {"id": "a", "ts": 1735689600.0}
    assert (customer, device, score) == ({"tier": "gold"}, None, {"churn": 1})


# ------------------------------------------------------------------- contracts


def test_built_actions_validate_against_the_published_schema():
    ruleset = load_ruleset(RULES)
    outcomes = run_tests(ruleset)
    assert outcomes and all(o.passed for o in outcomes)
    validator = jsonschema.Draft202012Validator(action_schema())
    jsonschema.Draft202012Validator.check_schema(action_schema())
    from engine.rules.runner import OfflineRunner

    runner = OfflineRunner(ruleset)
    stream = [
        {
            "id": "v1",
            "ts": 0,
            "device_id": "w1",
            "customer_id": "c1",
            "device_type": "washer",
            "kind": "telemetry",
            "vibration": 0.9,
            "level": 10,
        },
        {
            "id": "v2",
            "ts": 700,
            "device_id": "w1",
            "customer_id": "c1",
            "device_type": "washer",
            "kind": "telemetry",
            "vibration": 0.9,
        },
        {
            "id": "e1",
            "ts": 800,
            "device_id": "v1",
            "customer_id": "c1",
            "kind": "error",
            "error_code": "E1",
        },
        {
            "id": "r1",
            "ts": 850,
            "device_id": "v1",
            "customer_id": "c1",
            "kind": "status",
            "state": "reboot",
        },
    ]
    results = []
    profile = {"consent": {"marketing": True, "service": True}, "tier": "silver"}
    for item in stream:
        results += runner.feed(item, customer=profile)
    results += runner.finish(20000)
    types = set()
    for result in results:
        if result.firing.suppressed:
            continue
        action = build_action(
            result.firing, customer_id="c1", device_id=result.firing.device_id, emitted_at=1.0
        )
        validator.validate(action)
        assert action["schema_version"] == ACTION_SCHEMA_VERSION == 1
        assert "topic" not in action
        types.add(action["type"])
    assert types == {"coupon", "maintenance_booking", "support_case"}


def test_the_action_schema_rejects_what_the_contract_forbids():
    validator = jsonschema.Draft202012Validator(action_schema())
    good = {
        "schema_version": 1,
        "action_id": "0" * 32,
        "type": "coupon",
        "customer_id": "c1",
        "device_id": None,
        "rule": {"id": "r", "version": 1},
        "at": 1.0,
        "emitted_at": 2.0,
        "payload": {},
        "evidence": {"trigger": "condition", "event_ids": ["e"], "scores": {}},
    }
    validator.validate(good)
    for broken in (
        {**good, "topic": "crm.actions.coupon"},
        {**good, "type": "voucher"},
        {**good, "customer_id": ""},
        {k: v for k, v in good.items() if k != "action_id"},
        {**good, "schema_version": 2},
    ):
        assert not validator.is_valid(broken)


def test_suppressed_firings_cannot_become_actions():
    from engine.rules import Firing

    firing = Firing(
        rule_id="r",
        rule_version=1,
        key_kind="device",
        key="d",
        at=0.0,
        event_ids=[],
        action_type="coupon",
        topic="t",
        payload={},
        evidence={},
        action_id="x",
        suppressed="cooldown",
    )
    with pytest.raises(ValueError, match="suppressed"):
        build_action(firing, customer_id="c", device_id=None, emitted_at=0.0)


def test_shipped_rule_files_validate_against_the_rules_schema_and_declare_it():
    validator = jsonschema.Draft202012Validator(RULES_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(RULES_SCHEMA)
    yaml = YAML(typ="safe")
    files = sorted(RULES.glob("*.yaml"))
    assert len(files) == 4
    for path in files:
        text = path.read_text()
        assert text.startswith(
            "# yaml-language-server: $schema=../engine/schemas/rules.schema.json"
        )
        errors = [e.message for e in validator.iter_errors(yaml.load(text))]
        assert errors == [], path


@pytest.mark.parametrize(
    "broken",
    [
        [{"id": "Bad", "key": "device", "when": {"condition": "x"}, "action": {"type": "coupon"}}],
        [
            {
                "id": "a",
                "key": "device",
                "when": {"condition": "x", "silence": {"for": 1}},
                "action": {"type": "coupon"},
            }
        ],
        [{"id": "a", "key": "device", "when": {"condition": "x"}, "action": {"type": "gift"}}],
        [
            {
                "id": "a",
                "key": "device",
                "when": {"condition": "x"},
                "action": {"type": "coupon"},
                "colour": "red",
            }
        ],
        [
            {
                "id": "a",
                "key": "device",
                "when": {
                    "window": {
                        "type": "session",
                        "size": "1h",
                        "aggregates": {"n": "count()"},
                        "having": "x",
                    }
                },
                "action": {"type": "coupon"},
            }
        ],
        [
            {
                "id": "a",
                "key": "device",
                "when": {"sustained": {"condition": "x", "for": "soon"}},
                "action": {"type": "coupon"},
            }
        ],
        {"rules": [], "extra": 1},
    ],
)
def test_the_rules_schema_rejects_broken_files(broken):
    assert not jsonschema.Draft202012Validator(RULES_SCHEMA).is_valid(broken)
