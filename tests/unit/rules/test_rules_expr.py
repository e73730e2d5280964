"""The safe expression language: semantics, null handling, and safety."""

from __future__ import annotations

import pytest

from engine.rules.expr import ROOT_NAMES, ExpressionError, Scope, compile_expression


def evaluate(text: str, event: dict | None = None, **scope):
    return compile_expression(text, ROOT_NAMES | set(scope.pop("extra", ()))).evaluate(
        Scope(event or {}, **scope)
    )


def error_of(text: str, names=ROOT_NAMES) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, names)
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("2 ** 10", 1024),
        ("-event.x", -4),
        ("event.x / 2", 2.0),
        ("'a' + 'b'", "ab"),
        ("1 < event.x <= 4", True),
        ("1 < event.x < 4", False),
        ("event.x in (1, 4)", True),
        ("event.x not in [1, 4]", False),
        ("'tel' in event.kind", True),
        ("event.kind == 'telemetry' and event.x > 3", True),
        ("event.kind == 'status' or event.x", 4),
        ("not event.x", False),
        ("'big' if event.x > 3 else 'small'", "big"),
        ("event.nested.a", 1),
        ("event['nested']['a']", 1),
        ("event.items[1]", "b"),
        ("event.items[5]", None),
        ("event.items[-1]", "b"),
        ("{'a': 1}['a']", 1),
        ("True and None", None),
        ("event.x is not None", True),
        ("event.missing is None", True),
    ],
)
def test_operators_follow_python_semantics(text, expected):
    event = {"x": 4, "kind": "telemetry", "nested": {"a": 1}, "items": ["a", "b"]}
    assert evaluate(text, event) == expected


@pytest.mark.parametrize(
    "text",
    [
        "event.missing > 1",
        "event.missing < 1",
        "event.missing >= 0",
        "event.missing == 'x'",
        "event.missing != 'x'",
        "event.missing in ('x', 'y')",
        "event.missing not in ('x', 'y')",
        "'x' in event.missing",
        "event.missing == event.other",
        "0 < event.missing < 10",
        "event.missing.deeper.still > 0",
    ],
)
def test_a_comparison_with_null_is_false_not_an_error(text):
    assert evaluate(text, {"x": 1}) is False


@pytest.mark.parametrize(
    "text",
    [
        "event.missing + 1",
        "event.missing * 2",
        "-event.missing",
        "abs(event.missing)",
        "round(event.missing, 2)",
        "lower(event.missing)",
        "event.missing ** 2",
    ],
)
def test_arithmetic_and_functions_with_null_give_null(text):
    assert evaluate(text, {}) is None


def test_attribute_access_is_a_mapping_lookup_never_a_python_attribute():
    assert evaluate("event.kind.upper", {"kind": "x"}) is None
    assert evaluate("customer.consent.marketing", customer={"consent": {"marketing": True}})
    assert evaluate("customer.consent.marketing", customer={"consent": "yes"}) is None
    assert evaluate("(1).real") is None


def test_names_in_scope():
    assert evaluate("now", now=12.5) == 12.5
    assert evaluate("score.churn", score={"churn": 0.9}) == 0.9
    assert evaluate("device.model", device={"model": "WX"}) == "WX"
    assert evaluate("window.total", window={"total": 3}) == 3
    assert evaluate("first.id", names={"first": {"id": "e1"}}, extra={"first"}) == "e1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abs(-2)", 2),
        ("min(3, 1, 2)", 1),
        ("max(event.values)", 9),
        ("min(event.values)", 1),
        ("round(2.345, 2)", 2.35),
        ("round(2.5)", 2),
        ("floor(2.7)", 2),
        ("ceil(2.1)", 3),
        ("len(event.values)", 3),
        ("len('abc')", 3),
        ("lower('AbC')", "abc"),
        ("upper('abc')", "ABC"),
        ("coalesce(event.missing, event.other, 5)", 5),
        ("coalesce(event.missing)", None),
        ("startswith('E42', 'E')", True),
        ("endswith('E42', '42')", True),
        ("contains(event.values, 9)", True),
        ("contains(event.missing, 9)", False),
        ("int('12')", 12),
        ("float('1.5')", 1.5),
        ("str(12)", "12"),
        ("bool(0)", False),
        ("sqrt(16)", 4.0),
        ("log(1)", 0.0),
        ("log(8, 2)", 3.0),
        ("exp(0)", 1.0),
        ("clamp(15, 0, 10)", 10),
        ("duration('10m')", 600.0),
        ("duration('500ms')", 0.5),
        ("hour(3600 * 5 + 59)", 5),
        ("weekday(0)", 3),
    ],
)
def test_allowed_functions(text, expected):
    assert evaluate(text, {"values": [1, None, 9]}) == expected


def test_runtime_type_errors_raise_for_the_engine_to_count():
    expression = compile_expression("event.a < event.b")
    with pytest.raises(TypeError):
        expression.evaluate(Scope({"a": "x", "b": 1}))
    with pytest.raises(ZeroDivisionError):
        compile_expression("1 / event.a").evaluate(Scope({"a": 0}))


def test_sequence_repetition_is_refused_so_memory_stays_bounded():
    with pytest.raises(TypeError):
        compile_expression("event.s * event.n").evaluate(Scope({"s": "x", "n": 10**9}))


def test_powers_never_yield_complex_numbers():
    with pytest.raises(ValueError):
        compile_expression("event.x ** 0.5").evaluate(Scope({"x": -8}))


def test_large_integer_powers_become_floats():
    assert compile_expression("event.b ** 100").evaluate(Scope({"b": 10})) == pytest.approx(1e100)


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("__import__('os')", "R203", "unknown function '__import__'"),
        ("open('/etc/passwd')", "R203", "unknown function 'open'"),
        ("eval('1')", "R203", "unknown function 'eval'"),
        ("event.__class__", "R205", "dunder name '__class__'"),
        ("event['__class__']", "R205", "dunder name '__class__'"),
        ("__builtins__", "R205", "dunder name '__builtins__'"),
        ("lambda: 1", "R205", "a lambda is not allowed"),
        ("[x for x in event.items]", "R205", "a comprehension is not allowed"),
        ("{x: 1 for x in event.items}", "R205", "a comprehension is not allowed"),
        ("(x for x in event.items)", "R205", "a generator expression is not allowed"),
        ("(y := 1)", "R205", "':=' (assignment) is not allowed"),
        ("f'{event}'", "R205", "an f-string is not allowed"),
        ("event.x.upper()", "R203", "only the built-in functions can be called"),
        ("event.x[1:2]", "R205", "slices are not allowed"),
        ("len(*event.items)", "R204", "'*' arguments are not allowed"),
        ("round(x=1)", "R204", "takes no keyword arguments"),
        ("event.x & 1", "R205", "operator '&' is not allowed"),
        ("~event.x", "R205", "operator '~' is not allowed"),
        ("b'bytes'", "R205", "bytes literals are not allowed"),
        ("evnt.x", "R202", "unknown name 'evnt'"),
        ("foo", "R202", "unknown name 'foo'"),
        ("len", "R202", "'len' is a function"),
        ("now.day", "R206", "'now' is a number"),
        ("event.x == None", "R208", "write 'is None'"),
        ("event.x is 3", "R208", "'is' and 'is not' only test for None"),
        ("round()", "R204", "round() takes 1 to 2 argument(s), got 0"),
        ("duration(event.x)", "R204", "duration() needs a literal argument"),
        ("duration('ten minutes')", "R207", "invalid duration"),
        ("len(3)", "R207", "this constant expression fails"),
        ("1 / 0", "R207", "this constant expression fails"),
        ("", "R201", "empty expression"),
        ("event.x >", "R201", "syntax error"),
        ("import os", "R201", "syntax error"),
        ("x = 1", "R201", "syntax error"),
    ],
)
def test_unsafe_or_wrong_expressions_do_not_compile(text, code, message):
    error = error_of(text)
    assert message in error.message and error.code == code


def test_error_offsets_point_at_the_offending_text():
    assert error_of("event.x > 1 and evnt.y").offset == len("event.x > 1 and ")
    assert error_of("event.x > 1 and open(1)").offset == len("event.x > 1 and ")
    assert error_of("event.x.__class__").offset == len("event.x.")
    assert error_of("  event.x > 1 and foo").offset == len("  event.x > 1 and ")
    assert error_of("'é' + foo").offset == len("'é' + ")


def test_newlines_of_block_scalars_are_spaces_and_keep_offsets():
    text = "event.x > 1\n  and foo\n"
    assert error_of(text).offset == text.index("foo")
    assert compile_expression("event.x > 1\n  and event.y").evaluate(Scope({"x": 2, "y": 1}))


def test_window_fields_are_checked_when_known():
    with pytest.raises(ExpressionError, match="window has no field 'totl'"):
        compile_expression("window.totl > 1", window_fields=frozenset({"total"}))
    assert compile_expression("window.total > 1", window_fields=frozenset({"total"}))


def test_constant_subexpressions_are_folded_once():
    expression = compile_expression("24 * 3600")
    assert expression.is_constant and expression.constant == 86400


def test_requirements_come_from_top_level_equality_conjuncts():
    requirement = compile_expression(
        "event.kind == 'error' and event.device_type in ('washer', 'vehicle') and event.x > 1"
    ).requirement
    assert requirement == {
        "kind": frozenset({"error"}),
        "device_type": frozenset({"washer", "vehicle"}),
    }
    assert compile_expression("'error' == event.kind").requirement == {"kind": frozenset({"error"})}
    either = compile_expression("event.kind == 'a' or event.kind == 'b'").requirement
    assert either == {"kind": frozenset({"a", "b"})}


@pytest.mark.parametrize(
    "text",
    [
        "event.kind != 'error'",
        "event.kind == 'error' or event.x > 1",
        "not event.kind == 'error'",
        "event.kind in 'error'",
        "customer.kind == 'error'",
    ],
)
def test_no_requirement_where_the_condition_could_hold_for_other_values(text):
    assert compile_expression(text).requirement == {}


def test_usage_lists_the_fields_read_or_the_whole_value():
    usage = compile_expression("event.a > 1 and score.churn > 0.5 and len(device) > 0").usage
    assert usage == {"event": frozenset({"a"}), "score": frozenset({"churn"}), "device": None}
