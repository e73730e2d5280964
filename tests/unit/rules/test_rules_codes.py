"""Rule problems carry stable, documented codes and a severity."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from engine.rules import RuleFileError, compile_rules, load_ruleset
from engine.rules.errors import CODES, RuleError

ROOT = Path(__file__).resolve().parents[3]
CODE_LITERAL = re.compile(r"""["']([RW]\d{3})["']""")

MINIMAL = """\
- id: r
  key: device
  when: {condition: "event.kind == 'error'"}
  action: {type: coupon}
"""


def problems(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(RuleFileError) as caught:
        compile_rules(textwrap.dedent(text), "r.yaml")
    return [(e.line, e.col, e.code, e.message) for e in caught.value.errors]


def test_an_error_reads_file_line_col_severity_code_message():
    error = RuleError("rules/a.yaml", 3, 14, "R202", "unknown name 'evnt'")
    assert str(error) == "rules/a.yaml:3:14: error[R202]: unknown name 'evnt'"
    assert error.as_dict() == {
        "file": "rules/a.yaml",
        "line": 3,
        "col": 14,
        "code": "R202",
        "severity": "error",
        "message": "unknown name 'evnt'",
    }


def test_an_undocumented_code_cannot_be_raised():
    with pytest.raises(ValueError, match="undocumented"):
        RuleError("a.yaml", 1, 1, "R999", "?")


def at(text: str, needle: str) -> tuple[int, int]:
    """1-based (line, col) of ``needle`` in ``text``."""
    index = text.index(needle)
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


@pytest.mark.parametrize(
    ("text", "needle", "code"),
    [
        ("- 5\n", "5", "R004"),
        (MINIMAL.replace("type: coupon", "type: coupon, topic: ' '"), "' '", "R105"),
        (MINIMAL + "  tests: [{name: t, events: [{id: e, ts: soon}], expect: []}]\n", "soon",
         "R108"),
        (MINIMAL + "  tests: [{name: t, events: [{id: e, ts: 1}], expect: [], scores: [{}, {}]}]\n",
         "[{}, {}]", "R401"),
        (MINIMAL.replace("type: coupon", "type: coupon, payload: {a: '{{ event.x is 2 }}'}"),
         "event.x is", "R208"),
    ],
)  # fmt: skip
def test_representative_errors_have_their_code_and_position(text, needle, code):
    assert [p[:3] for p in problems(text)] == [(*at(text, needle), code)]


def test_a_duplicate_id_is_reported_at_its_second_definition():
    assert [p[:3] for p in problems(MINIMAL + MINIMAL)] == [(5, 7, "R106")]


def test_a_file_that_is_no_rule_file_says_so_with_codes():
    assert [p[2] for p in problems("rulez: []\n")] == ["R101", "R004"]
    [(line, _col, code, message)] = problems("- id: r\n  key: [device\n")
    assert code == "R003" and message.startswith("YAML:") and line >= 2


def test_file_level_errors_have_codes(tmp_path: Path):
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(tmp_path / "missing.yaml")
    assert [e.code for e in caught.value.errors] == ["R001"]
    unreadable = tmp_path / "latin1.yaml"
    unreadable.write_bytes("- id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(unreadable)
    assert [e.code for e in caught.value.errors] == ["R002"]


def _codes_in(path: Path) -> set[str]:
    return set(CODE_LITERAL.findall(path.read_text()))


def test_every_code_the_engine_raises_is_in_the_table_and_every_one_is_used():
    used: set[str] = set()
    for path in (ROOT / "engine/rules").rglob("*.py"):
        if path.name != "errors.py":
            used |= _codes_in(path)
    assert used <= set(CODES), used - set(CODES)
    assert set(CODES) <= used, set(CODES) - used


def test_every_code_is_documented_with_its_severity():
    docs = (ROOT / "docs/rules.md").read_text()
    table = dict(re.findall(r"^\| `([RW]\d{3})` \| (error|warning) \|", docs, re.MULTILINE))
    assert table == {code: info.severity for code, info in CODES.items()}
