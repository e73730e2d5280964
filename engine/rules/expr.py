"""The safe expression language of conditions and templates.

An expression is parsed with Python's ``ast`` (``eval`` mode), checked against a
whitelist of node types, and compiled once into a tree of closures: evaluating
it never calls ``eval``, never touches Python attributes (``a.b`` is a mapping
lookup) and can call only the functions in :data:`FUNCTIONS`, so a rule can
never run arbitrary code.

Missing data is ``None`` and never raises: a comparison with ``None`` is false,
arithmetic with ``None`` is ``None``. Other runtime errors (``'a' < 1``, a
division by zero) do raise; the evaluator treats such a condition as false and
counts it.

>>> expr = compile_expression("event.kind == 'telemetry' and event.vibration > 0.8")
>>> expr.evaluate(Scope({"kind": "telemetry", "vibration": 0.9}))
True
>>> expr.evaluate(Scope({"kind": "telemetry"}))
False
>>> expr.requirement
{'kind': frozenset({'telemetry'})}
>>> compile_expression("round(event.v * 100) / 100").evaluate(Scope({"v": 0.12345}))
0.12
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from engine.durations import parse_duration

#: Names every expression may use.
ROOT_NAMES: frozenset[str] = frozenset({"event", "customer", "device", "score", "window", "now"})
#: Root names whose value is always a mapping (never ``None``).
_MAPPING_ROOTS: frozenset[str] = frozenset({"event", "customer", "device", "score", "window"})
#: Longest expression accepted, in characters.
MAX_EXPRESSION_LENGTH = 4000

EMPTY: Mapping[str, Any] = MappingProxyType({})

Evaluator = Callable[["Scope"], Any]


class Scope:
    """What an expression sees: the event, the customer and device state, model
    scores, window aggregates (or sequence steps), the current time, and extra
    names (sequence step names, ``first`` in an absence rule)."""

    __slots__ = ("customer", "device", "event", "names", "now", "score", "window")

    def __init__(
        self,
        event: Mapping[str, Any] = EMPTY,
        customer: Mapping[str, Any] | None = None,
        device: Mapping[str, Any] | None = None,
        score: Mapping[str, Any] | None = None,
        now: float | None = None,
        window: Mapping[str, Any] | None = None,
        names: Mapping[str, Any] | None = None,
    ) -> None:
        self.event = event
        self.customer = EMPTY if customer is None else customer
        self.device = EMPTY if device is None else device
        self.score = EMPTY if score is None else score
        self.now = now
        self.window = EMPTY if window is None else window
        self.names = EMPTY if names is None else names


class ExpressionError(Exception):
    """A compile error at character ``offset`` of the expression text, with
    its rule error ``code`` (``engine.rules.errors.CODES``)."""

    def __init__(self, message: str, offset: int = 0, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.code = code


@dataclass(frozen=True)
class FieldReference:
    """``name.field`` (or ``name['field']``) read by an expression; ``offset``
    is the character offset of the field in the expression's text."""

    name: str
    field: str
    offset: int


@dataclass(frozen=True)
class Expression:
    """A compiled expression.

    ``usage`` maps each name the expression reads to the fields it reads from
    it (``None``: the value is used whole); ``requirement`` maps event fields to
    the values the expression needs (from top-level ``==``/``in`` conjuncts), so
    events that cannot satisfy it are never offered to the rule;
    ``references`` are the fields it reads, where they are written (a
    sequence step read as ``window.<step>.<field>`` is named by its step).
    """

    text: str
    evaluate: Evaluator
    usage: dict[str, frozenset[str] | None] = field(default_factory=dict)
    requirement: dict[str, frozenset[Any]] = field(default_factory=dict)
    is_constant: bool = False
    constant: Any = None
    #: The requirement says everything: an event offered by the rule index
    #: (which checks it) makes the expression true without evaluating it.
    exact: bool = False
    references: tuple[FieldReference, ...] = ()


# --------------------------------------------------------------------------- functions


def _lookup(value: Any, key: Any) -> Any:
    # a dict first: the ABC check of isinstance(..., Mapping) is slow
    if type(value) is dict or isinstance(value, Mapping):
        return value.get(key)
    if isinstance(value, list | tuple | str) and type(key) is int:
        try:
            return value[key]
        except IndexError:
            return None
    return None


def _extreme(pick: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    if len(args) == 1:
        values = [v for v in _iterable(args[0]) if v is not None]
        return pick(values) if values else None
    if any(v is None for v in args):
        return None
    return pick(args)


def _iterable(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return value
    raise TypeError(f"expected a list, got {type(value).__name__}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _number(value: Any) -> float | int:
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return value


def _len(value: Any) -> int:
    if isinstance(value, str | list | tuple | Mapping | set | frozenset):
        return len(value)
    raise TypeError(f"len() of {type(value).__name__}")


def _round(value: Any, digits: int = 0) -> float | int:
    return round(_number(value), int(digits)) if digits else round(_number(value))


def _coalesce(*args: Any) -> Any:
    for value in args:
        if value is not None:
            return value
    return None


def _contains(container: Any, item: Any) -> bool:
    return _membership(item, container)


def _log(value: Any, base: Any = None) -> float:
    return math.log(_number(value)) if base is None else math.log(_number(value), _number(base))


def _clamp(value: Any, low: Any, high: Any) -> Any:
    return max(_number(low), min(_number(high), _number(value)))


def _utc(ts: Any) -> datetime:
    return datetime.fromtimestamp(_number(ts), UTC)


def _to_int(value: Any) -> int:
    if isinstance(value, str | int | float | bool):
        return int(value)
    raise TypeError(f"int() of {type(value).__name__}")


def _to_float(value: Any) -> float:
    if isinstance(value, str | int | float | bool):
        return float(value)
    raise TypeError(f"float() of {type(value).__name__}")


@dataclass(frozen=True)
class Function:
    """An allowed function: its implementation and how many arguments it takes.
    ``nulls`` says what a ``None`` argument does: ``"propagate"`` (result is
    ``None``) or ``"pass"`` (the function handles ``None`` itself)."""

    impl: Callable[..., Any]
    min_args: int
    max_args: int
    nulls: str = "propagate"
    doc: str = ""


#: Every function an expression may call.
FUNCTIONS: dict[str, Function] = {
    "abs": Function(lambda x: abs(_number(x)), 1, 1, doc="absolute value"),
    "min": Function(lambda *a: _extreme(min, a), 1, 16, "pass", "smallest of the arguments"),
    "max": Function(lambda *a: _extreme(max, a), 1, 16, "pass", "largest of the arguments"),
    "round": Function(_round, 1, 2, doc="round(x) or round(x, digits), half to even"),
    "floor": Function(lambda x: math.floor(_number(x)), 1, 1, doc="largest integer <= x"),
    "ceil": Function(lambda x: math.ceil(_number(x)), 1, 1, doc="smallest integer >= x"),
    "sqrt": Function(lambda x: math.sqrt(_number(x)), 1, 1, doc="square root"),
    "log": Function(_log, 1, 2, doc="natural log, or log(x, base)"),
    "exp": Function(lambda x: math.exp(_number(x)), 1, 1, doc="e ** x"),
    "clamp": Function(_clamp, 3, 3, doc="clamp(x, low, high)"),
    "len": Function(_len, 1, 1, doc="length of a string, list or mapping"),
    "lower": Function(lambda s: _text(s).lower(), 1, 1, doc="lower-case string"),
    "upper": Function(lambda s: _text(s).upper(), 1, 1, doc="upper-case string"),
    "startswith": Function(lambda s, p: _text(s).startswith(_text(p)), 2, 2),
    "endswith": Function(lambda s, p: _text(s).endswith(_text(p)), 2, 2),
    "contains": Function(_contains, 2, 2, "pass", "contains(container, item): item in container"),
    "coalesce": Function(_coalesce, 1, 16, "pass", "first argument that is not null"),
    "int": Function(_to_int, 1, 1, doc="integer conversion"),
    "float": Function(_to_float, 1, 1, doc="float conversion"),
    "str": Function(str, 1, 1, doc="string conversion"),
    "bool": Function(bool, 1, 1, doc="truth value"),
    "hour": Function(lambda ts: _utc(ts).hour, 1, 1, doc="UTC hour (0-23) of epoch seconds"),
    "weekday": Function(lambda ts: _utc(ts).weekday(), 1, 1, doc="UTC weekday, Monday = 0"),
    "duration": Function(parse_duration, 1, 1, doc="seconds in a literal duration: '10m'"),
}
#: Functions whose argument must be a literal (folded at compile time).
_LITERAL_ONLY: frozenset[str] = frozenset({"duration"})


# --------------------------------------------------------------------------- operators

_NUMBER_TYPES = (int, float, bool)


def _arith(op: Callable[[Any, Any], Any], name: str) -> Callable[[Any, Any], Any]:
    def apply(left: Any, right: Any) -> Any:
        if left is None or right is None:
            return None
        if isinstance(left, _NUMBER_TYPES) and isinstance(right, _NUMBER_TYPES):
            return op(left, right)
        raise TypeError(f"unsupported operand types for {name}")

    return apply


def _add(left: Any, right: Any) -> Any:
    if left is None or right is None:
        return None
    if isinstance(left, _NUMBER_TYPES) and isinstance(right, _NUMBER_TYPES):
        return left + right
    if isinstance(left, str) and isinstance(right, str):
        return left + right
    raise TypeError("unsupported operand types for +")


def _power(left: Any, right: Any) -> Any:
    # An integer power with a big exponent could take unbounded time and memory.
    if type(left) is int and type(right) is int and abs(right) > 64:
        return float(left) ** right
    result = left**right
    if isinstance(result, complex):
        raise ValueError("a negative number to a fractional power")
    return result


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _add,
    ast.Sub: _arith(operator.sub, "-"),
    ast.Mult: _arith(operator.mul, "*"),
    ast.Div: _arith(operator.truediv, "/"),
    ast.FloorDiv: _arith(operator.floordiv, "//"),
    ast.Mod: _arith(operator.mod, "%"),
    ast.Pow: _arith(_power, "**"),
}


def _membership(item: Any, container: Any) -> bool:
    if item is None or container is None:
        return False
    if isinstance(container, str) and not isinstance(item, str):
        return False
    return item in container


def _null_false(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        if left is None or right is None:
            return False
        return op(left, right)

    return compare


_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: _null_false(operator.eq),
    ast.NotEq: _null_false(operator.ne),
    ast.Lt: _null_false(operator.lt),
    ast.LtE: _null_false(operator.le),
    ast.Gt: _null_false(operator.gt),
    ast.GtE: _null_false(operator.ge),
    ast.In: _membership,
    ast.NotIn: lambda item, container: (
        item is not None and container is not None and not _membership(item, container)
    ),
}


# --------------------------------------------------------------------------- compiler


class _Const:
    """A compile-time constant (folded subexpression)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Compiled = Evaluator | _Const


def _evaluator(compiled: _Compiled) -> Evaluator:
    if isinstance(compiled, _Const):
        value = compiled.value
        return lambda _s: value
    return compiled


class _Compiler:
    def __init__(
        self,
        text: str,
        names: frozenset[str],
        window_fields: frozenset[str] | None,
        step_names: frozenset[str],
    ) -> None:
        self.text = text
        self.names = names
        self.window_fields = window_fields
        self.step_names = step_names
        self.usage: dict[str, set[str] | None] = {}
        self.references: list[FieldReference] = []

    # positions ------------------------------------------------------------
    def offset(self, node: ast.AST) -> int:
        col = getattr(node, "col_offset", 0)
        # ast columns count UTF-8 bytes; authors count characters.
        return len(self.text.encode()[:col].decode(errors="ignore"))

    def fail(self, node: ast.AST, code: str, message: str) -> ExpressionError:
        return ExpressionError(message, self.offset(node), code=code)

    def key_offset(self, node: ast.Attribute | ast.Subscript) -> int:
        """Where the key of one access is written: an attribute's name, a
        subscript's key."""
        if isinstance(node, ast.Attribute):
            end = getattr(node, "end_col_offset", None) or 0
            return len(self.text.encode()[:end].decode(errors="ignore")) - len(node.attr)
        return self.offset(node.slice)

    def use(self, name: str, field_name: str | None) -> None:
        if name in self.usage and self.usage[name] is None:
            return
        if field_name is None:
            self.usage[name] = None
        else:
            self.usage.setdefault(name, set()).add(field_name)  # type: ignore[union-attr]

    # dispatch -------------------------------------------------------------
    def compile(self, node: ast.AST) -> _Compiled:
        method = getattr(self, "c_" + type(node).__name__, None)
        if method is None:
            raise self.fail(node, "R205", f"{_describe(node)} is not allowed in a rule expression")
        return method(node)

    def fold(self, node: ast.AST, evaluate: Evaluator, parts: list[_Compiled]) -> _Compiled:
        if not all(isinstance(part, _Const) for part in parts):
            return evaluate
        try:
            return _Const(evaluate(Scope()))
        except Exception as exc:
            raise self.fail(node, "R207", f"this constant expression fails: {exc}") from None

    # leaves ---------------------------------------------------------------
    def c_Constant(self, node: ast.Constant) -> _Compiled:
        if node.value is not None and not isinstance(node.value, bool | int | float | str):
            raise self.fail(node, "R205", f"{type(node.value).__name__} literals are not allowed")
        return _Const(node.value)

    def c_Name(self, node: ast.Name) -> _Compiled:
        name = node.id
        self.check_name(node, name)
        self.use(name, None)
        return self.root(name)

    def check_name(self, node: ast.AST, name: str) -> None:
        if name.startswith("__"):
            raise self.fail(node, "R205", f"access to dunder name '{name}' is not allowed")
        if name in FUNCTIONS and name not in self.names:
            raise self.fail(node, "R202", f"'{name}' is a function: call it as {name}(...)")
        if name not in self.names:
            allowed = ", ".join(sorted(self.names))
            raise self.fail(node, "R202", f"unknown name '{name}' (names in scope: {allowed})")

    def root(self, name: str) -> Evaluator:
        if name == "event":
            return lambda s: s.event
        if name == "customer":
            return lambda s: s.customer
        if name == "device":
            return lambda s: s.device
        if name == "score":
            return lambda s: s.score
        if name == "window":
            return lambda s: s.window
        if name == "now":
            return lambda s: s.now
        return lambda s: s.names.get(name)

    # containers -----------------------------------------------------------
    def c_List(self, node: ast.List) -> _Compiled:
        parts = [self.compile(elt) for elt in node.elts]
        if all(isinstance(p, _Const) for p in parts):
            return _Const(tuple(p.value for p in parts))  # type: ignore[union-attr]
        fns = [_evaluator(p) for p in parts]
        return lambda s: [fn(s) for fn in fns]

    c_Tuple = c_List

    def c_Set(self, node: ast.Set) -> _Compiled:
        parts = [self.compile(elt) for elt in node.elts]
        if all(isinstance(p, _Const) for p in parts):
            try:
                return _Const(frozenset(p.value for p in parts))  # type: ignore[union-attr]
            except TypeError as exc:
                raise self.fail(node, "R207", f"invalid set literal: {exc}") from None
        fns = [_evaluator(p) for p in parts]
        return lambda s: frozenset(fn(s) for fn in fns)

    def c_Dict(self, node: ast.Dict) -> _Compiled:
        if any(key is None for key in node.keys):
            raise self.fail(node, "R205", "'**' in a mapping literal is not allowed")
        keys = [self.compile(key) for key in node.keys]  # type: ignore[arg-type]
        values = [self.compile(value) for value in node.values]
        key_fns = [_evaluator(k) for k in keys]
        value_fns = [_evaluator(v) for v in values]
        pairs = list(zip(key_fns, value_fns, strict=True))

        def build(s: Scope) -> dict[Any, Any]:
            return {k(s): v(s) for k, v in pairs}

        return self.fold(node, build, keys + values)

    # access ---------------------------------------------------------------
    def chain(self, node: ast.AST) -> tuple[ast.Name, list[Any], list[Any]] | None:
        """``event.a.b`` / ``event['a'][0]`` as (root name, keys, the access
        node of each key), or None."""
        keys: list[Any] = []
        nodes: list[Any] = []
        while True:
            if isinstance(node, ast.Attribute):
                keys.append(node.attr)
                nodes.append(node)
                node = node.value
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str | int)
                and not isinstance(node.slice.value, bool)
            ):
                keys.append(node.slice.value)
                nodes.append(node)
                node = node.value
            elif isinstance(node, ast.Name):
                keys.reverse()
                nodes.reverse()
                return node, keys, nodes
            else:
                return None

    def check_key(self, node: ast.AST, key: Any) -> None:
        if isinstance(key, str) and key.startswith("__"):
            start = self.offset(node)
            found = self.text.find(key, start)
            raise ExpressionError(
                f"access to dunder name '{key}' is not allowed",
                found if found >= 0 else start,
                code="R205",
            )

    def c_Attribute(self, node: ast.Attribute) -> _Compiled:
        return self.access(node)

    def c_Subscript(self, node: ast.Subscript) -> _Compiled:
        if isinstance(node.slice, ast.Slice):
            raise self.fail(node, "R205", "slices are not allowed")
        return self.access(node)

    def access(self, node: ast.Attribute | ast.Subscript) -> _Compiled:
        found = self.chain(node)
        if found is None:
            return self.dynamic_access(node)
        name_node, keys, nodes = found
        for key in keys:
            self.check_key(node, key)
        name = name_node.id
        self.check_name(name_node, name)
        if name == "now":
            raise self.fail(node, "R206", "'now' is a number (epoch seconds), it has no fields")
        self.record_chain(node, name, keys, nodes)
        return self.chain_evaluator(name, keys)

    def record_chain(self, node: ast.AST, name: str, keys: list[Any], nodes: list[Any]) -> None:
        first = keys[0]
        if name == "window" and self.window_fields is not None and first not in self.window_fields:
            known = ", ".join(sorted(self.window_fields)) or "none"
            raise self.fail(node, "R206", f"window has no field '{first}' (known: {known})")
        if name == "window" and first in self.step_names:
            # window.<step>.<field>: a field of the step's event
            name, keys, nodes = first, keys[1:], nodes[1:]
            if not keys:
                self.use(name, None)
                return
            first = keys[0]
        field_name = first if isinstance(first, str) else None
        self.use(name, field_name)
        if field_name is not None:
            self.references.append(FieldReference(name, field_name, self.key_offset(nodes[0])))

    def chain_evaluator(self, name: str, keys: list[Any]) -> Evaluator:
        first = keys[0]
        rest = keys[1:]
        if name in _MAPPING_ROOTS and isinstance(first, str):
            # The scope guarantees these roots are mappings: a direct .get() is safe.
            if name == "event":
                if not rest:
                    return lambda s: s.event.get(first)
                if len(rest) == 1:
                    second = rest[0]
                    return lambda s: _lookup(s.event.get(first), second)
            getter = self.root(name)
            if not rest:
                return lambda s: getter(s).get(first)

            def nested(s: Scope) -> Any:
                value = getter(s).get(first)
                for key in rest:
                    if value is None:
                        return None
                    value = _lookup(value, key)
                return value

            return nested
        getter = self.root(name)

        def walk(s: Scope) -> Any:
            value = getter(s)
            for key in keys:
                if value is None:
                    return None
                value = _lookup(value, key)
            return value

        return walk

    def dynamic_access(self, node: ast.Attribute | ast.Subscript) -> _Compiled:
        if isinstance(node, ast.Attribute):
            self.check_key(node, node.attr)
            base = self.compile(node.value)
            attr = node.attr
            base_fn = _evaluator(base)
            return self.fold(node, lambda s: _lookup(base_fn(s), attr), [base])
        base = self.compile(node.value)
        key = self.compile(node.slice)
        if isinstance(key, _Const):
            self.check_key(node, key.value)
        base_fn, key_fn = _evaluator(base), _evaluator(key)

        def item(s: Scope) -> Any:
            container = base_fn(s)
            index = key_fn(s)
            if container is None or index is None:
                return None
            return _lookup(container, index)

        return self.fold(node, item, [base, key])

    # operators ------------------------------------------------------------
    def c_BoolOp(self, node: ast.BoolOp) -> _Compiled:
        parts = [self.compile(value) for value in node.values]
        fns = [_evaluator(p) for p in parts]
        if isinstance(node.op, ast.And):
            if len(fns) == 2:
                a, b = fns
                evaluate: Evaluator = lambda s: a(s) and b(s)  # noqa: E731
            else:

                def evaluate(s: Scope) -> Any:
                    value = None
                    for fn in fns:
                        value = fn(s)
                        if not value:
                            return value
                    return value

        else:
            if len(fns) == 2:
                a, b = fns
                evaluate = lambda s: a(s) or b(s)  # noqa: E731
            else:

                def evaluate(s: Scope) -> Any:
                    value = None
                    for fn in fns:
                        value = fn(s)
                        if value:
                            return value
                    return value

        return self.fold(node, evaluate, parts)

    def c_UnaryOp(self, node: ast.UnaryOp) -> _Compiled:
        operand = self.compile(node.operand)
        fn = _evaluator(operand)
        if isinstance(node.op, ast.Not):
            return self.fold(node, lambda s: not fn(s), [operand])
        if isinstance(node.op, ast.USub | ast.UAdd):
            sign = -1 if isinstance(node.op, ast.USub) else 1

            def signed(s: Scope) -> Any:
                value = fn(s)
                if value is None:
                    return None
                return sign * _number(value)

            return self.fold(node, signed, [operand])
        raise self.fail(node, "R205", f"operator {_describe(node.op)} is not allowed")

    def c_BinOp(self, node: ast.BinOp) -> _Compiled:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.fail(node, "R205", f"operator {_describe(node.op)} is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        lf, rf = _evaluator(left), _evaluator(right)
        return self.fold(node, lambda s: op(lf(s), rf(s)), [left, right])

    def c_IfExp(self, node: ast.IfExp) -> _Compiled:
        parts = [self.compile(node.test), self.compile(node.body), self.compile(node.orelse)]
        test, body, orelse = (_evaluator(p) for p in parts)
        return self.fold(node, lambda s: body(s) if test(s) else orelse(s), parts)

    def c_Compare(self, node: ast.Compare) -> _Compiled:
        operands = [node.left, *node.comparators]
        for index, op in enumerate(node.ops):
            if isinstance(op, ast.Eq | ast.NotEq) and any(
                isinstance(o, ast.Constant) and o.value is None
                for o in (operands[index], operands[index + 1])
            ):
                spelled = "is None" if isinstance(op, ast.Eq) else "is not None"
                raise self.fail(
                    node, "R208", f"a comparison with None is always false: write '{spelled}'"
                )
        compiled = [self.compile(o) for o in operands]
        fns = [_evaluator(c) for c in compiled]
        steps: list[Callable[[Any, Any], Any]] = []
        for index, op in enumerate(node.ops):
            if isinstance(op, ast.Is | ast.IsNot):
                right = operands[index + 1]
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise self.fail(
                        node, "R208", "'is' and 'is not' only test for None: 'x is None'"
                    )
                steps.append(operator.is_ if isinstance(op, ast.Is) else operator.is_not)
            else:
                steps.append(_COMPARE[type(op)])
        if len(steps) == 1:
            evaluate = self.direct_compare(node.ops[0], operands[0], compiled[1]) or (
                self.single_compare(node.ops[0], compiled[0], compiled[1], steps[0])
            )
        else:

            def evaluate(s: Scope) -> Any:
                left = fns[0](s)
                for step, right_fn in zip(steps, fns[1:], strict=True):
                    right = right_fn(s)
                    if not step(left, right):
                        return False
                    left = right
                return True

        return self.fold(node, evaluate, compiled)

    def direct_compare(self, op: ast.cmpop, left: ast.AST, right: _Compiled) -> Evaluator | None:
        """``event.f <op> constant`` (the commonest test) as one closure."""
        if not (
            isinstance(left, ast.Attribute)
            and isinstance(left.value, ast.Name)
            and left.value.id in ("event", "score")
            and isinstance(right, _Const)
            and right.value is not None
        ):
            return None
        name, constant = left.attr, right.value
        if left.value.id == "event":
            if isinstance(op, ast.Eq):
                return lambda s: s.event.get(name) == constant
            if isinstance(op, ast.Gt):
                return lambda s: (v := s.event.get(name)) is not None and v > constant
            if isinstance(op, ast.Lt):
                return lambda s: (v := s.event.get(name)) is not None and v < constant
            if isinstance(op, ast.GtE):
                return lambda s: (v := s.event.get(name)) is not None and v >= constant
            if isinstance(op, ast.LtE):
                return lambda s: (v := s.event.get(name)) is not None and v <= constant
            return None
        if isinstance(op, ast.Gt):
            return lambda s: (v := s.score.get(name)) is not None and v > constant
        if isinstance(op, ast.Lt):
            return lambda s: (v := s.score.get(name)) is not None and v < constant
        return None

    def single_compare(
        self,
        op: ast.cmpop,
        left: _Compiled,
        right: _Compiled,
        step: Callable[[Any, Any], Any],
    ) -> Evaluator:
        lf, rf = _evaluator(left), _evaluator(right)
        if isinstance(right, _Const) and not isinstance(left, _Const):
            constant = right.value
            if isinstance(op, ast.Eq):
                return lambda s: lf(s) == constant
            if isinstance(op, ast.In | ast.NotIn) and isinstance(constant, tuple):
                try:
                    members: Any = frozenset(constant)
                except TypeError:
                    members = constant
                if isinstance(op, ast.In):
                    return lambda s: (v := lf(s)) is not None and v in members
                return lambda s: (v := lf(s)) is not None and v not in members
            if isinstance(op, ast.Gt):
                return lambda s: (v := lf(s)) is not None and v > constant
            if isinstance(op, ast.GtE):
                return lambda s: (v := lf(s)) is not None and v >= constant
            if isinstance(op, ast.Lt):
                return lambda s: (v := lf(s)) is not None and v < constant
            if isinstance(op, ast.LtE):
                return lambda s: (v := lf(s)) is not None and v <= constant
        return lambda s: step(lf(s), rf(s))

    def c_Call(self, node: ast.Call) -> _Compiled:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "R203", "only the built-in functions can be called")
        name = node.func.id
        function = FUNCTIONS.get(name)
        if function is None or name in self.names:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.fail(node, "R203", f"unknown function '{name}' (functions: {allowed})")
        if node.keywords:
            raise self.fail(node, "R204", f"{name}() takes no keyword arguments")
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(node, "R204", "'*' arguments are not allowed")
        count = len(node.args)
        if not function.min_args <= count <= function.max_args:
            expected = (
                str(function.min_args)
                if function.min_args == function.max_args
                else f"{function.min_args} to {function.max_args}"
            )
            raise self.fail(node, "R204", f"{name}() takes {expected} argument(s), got {count}")
        args = [self.compile(arg) for arg in node.args]
        if name in _LITERAL_ONLY and not all(isinstance(a, _Const) for a in args):
            raise self.fail(node, "R204", f"{name}() needs a literal argument, e.g. {name}('10m')")
        fns = [_evaluator(a) for a in args]
        impl = function.impl
        evaluate: Evaluator
        if function.nulls == "propagate":
            if len(fns) == 1:
                only = fns[0]

                def evaluate(s: Scope) -> Any:
                    value = only(s)
                    return None if value is None else impl(value)

            else:

                def evaluate(s: Scope) -> Any:
                    values = [fn(s) for fn in fns]
                    if None in values:
                        return None
                    return impl(*values)

        else:

            def evaluate(s: Scope) -> Any:
                return impl(*[fn(s) for fn in fns])

        return self.fold(node, evaluate, args)


def _describe(node: ast.AST) -> str:
    names = {
        "Lambda": "a lambda",
        "ListComp": "a comprehension",
        "SetComp": "a comprehension",
        "DictComp": "a comprehension",
        "GeneratorExp": "a generator expression",
        "NamedExpr": "':=' (assignment)",
        "JoinedStr": "an f-string",
        "Await": "'await'",
        "Yield": "'yield'",
        "YieldFrom": "'yield'",
        "Starred": "'*'",
        "BitAnd": "'&'",
        "BitOr": "'|'",
        "BitXor": "'^'",
        "LShift": "'<<'",
        "RShift": "'>>'",
        "MatMult": "'@'",
        "Invert": "'~'",
    }
    return names.get(type(node).__name__, type(node).__name__)


# --------------------------------------------------------------------------- requirements


def _event_field(node: ast.AST) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "event"
    ):
        return node.attr
    return None


def _literal_values(node: ast.AST) -> frozenset[Any] | None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    values = value if isinstance(value, list | tuple | set | frozenset) else None
    if values is None or not all(isinstance(v, str | int | float) for v in values):
        return None
    return frozenset(values)


def _conjunct_requirement(node: ast.AST) -> dict[str, frozenset[Any]]:
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        op, left, right = node.ops[0], node.left, node.comparators[0]
        if isinstance(op, ast.Eq):
            for attr, const in ((left, right), (right, left)):
                field_name = _event_field(attr)
                if (
                    field_name is not None
                    and isinstance(const, ast.Constant)
                    and isinstance(const.value, str | int | float)
                ):
                    return {field_name: frozenset({const.value})}
        if isinstance(op, ast.In):
            field_name = _event_field(left)
            values = _literal_values(right)
            if field_name is not None and values is not None:
                return {field_name: values}
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        alternatives = [_conjunct_requirement(value) for value in node.values]
        return union_requirements(alternatives)
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return intersect_requirements([_conjunct_requirement(v) for v in node.values])
    return {}


def _is_exact(node: ast.AST) -> bool:
    """True when the requirement extracted from ``node`` says all it tests:
    an event that meets the requirement makes the expression true."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return all(_is_exact(value) for value in node.values)
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return False
    return bool(_conjunct_requirement(node))


def intersect_requirements(parts: list[dict[str, frozenset[Any]]]) -> dict[str, frozenset[Any]]:
    """Requirements that must all hold (``a and b``)."""
    merged: dict[str, frozenset[Any]] = {}
    for part in parts:
        for field_name, values in part.items():
            merged[field_name] = merged[field_name] & values if field_name in merged else values
    return merged


def union_requirements(parts: list[dict[str, frozenset[Any]]]) -> dict[str, frozenset[Any]]:
    """Requirements of which one holds (``a or b``): only fields all of them
    constrain survive, with the union of their values."""
    if not parts:
        return {}
    common = set(parts[0]).intersection(*parts[1:])
    return {name: frozenset().union(*(p[name] for p in parts)) for name in sorted(common)}


# --------------------------------------------------------------------------- entry point


def compile_expression(
    text: str,
    names: frozenset[str] | set[str] = ROOT_NAMES,
    *,
    window_fields: frozenset[str] | None = None,
    step_names: frozenset[str] = frozenset(),
) -> Expression:
    """Compile ``text``; raises :class:`ExpressionError` with the character offset.

    ``names`` are the names in scope; ``window_fields`` (if known) the valid
    ``window.<field>`` names; ``step_names`` the sequence steps reachable
    through ``window.<step>``.

    >>> try:
    ...     compile_expression("event.x > 1 and evnt.y")
    ... except ExpressionError as error:
    ...     print(error.offset, error.message)
    16 unknown name 'evnt' (names in scope: customer, device, event, now, score, window)
    """
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string", code="R103")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"expression longer than {MAX_EXPRESSION_LENGTH} characters", code="R201"
        )
    # Newlines (YAML block scalars) become spaces: same length, so offsets hold.
    flat = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    indent = len(flat) - len(flat.lstrip())
    source = flat[indent:]
    if not source.strip():
        raise ExpressionError("empty expression", 0, code="R201")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        column = (exc.offset or len(source) + 1) - 1
        if column < 0:
            column = len(source)
        raise ExpressionError(f"syntax error: {exc.msg}", indent + column, code="R201") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"cannot parse expression: {exc}", indent, code="R201") from None
    compiler = _Compiler(source, frozenset(names), window_fields, step_names)
    try:
        compiled = compiler.compile(tree.body)
    except ExpressionError as exc:
        exc.offset += indent
        raise
    except RecursionError:
        raise ExpressionError("expression nested too deeply", indent, code="R201") from None
    usage = {
        name: (None if fields is None else frozenset(fields))
        for name, fields in compiler.usage.items()
    }
    references = tuple(
        FieldReference(ref.name, ref.field, ref.offset + indent) for ref in compiler.references
    )
    if isinstance(compiled, _Const):
        value = compiled.value
        return Expression(text, lambda _s: value, usage, {}, True, value, references=references)
    return Expression(
        text,
        compiled,
        usage,
        _conjunct_requirement(tree.body),
        exact=_is_exact(tree.body),
        references=references,
    )
