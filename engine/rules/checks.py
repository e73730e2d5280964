"""Typed reads from a rule file's YAML that collect errors instead of stopping.

The compiler of a file and each trigger's compile step share one
:class:`Checker`: every problem found becomes a :class:`RuleError` with its
position, and a read that fails returns :data:`MISSING`, so the caller goes on
and the author sees every error of the file at once. Expressions that compile
are checked for fields no event or customer is known to have: warnings.

>>> from engine.rules.source import parse_yaml
>>> data, source, _ = parse_yaml("for: soon\\nevery: 3\\n", "r.yaml")
>>> check = Checker(source)
>>> check.duration(data, "for", "'sustained'") is MISSING
True
>>> check.get(data, "every", bool, "'sequence'") is MISSING
True
>>> for error in check.errors:
...     print(error)
r.yaml:1:6: error[R107]: 'for': invalid duration 'soon': use a number of seconds or ...
r.yaml:2:8: error[R103]: 'every' must be true or false
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from engine.durations import parse_duration
from engine.rules.errors import RuleError
from engine.rules.expr import ROOT_NAMES, Expression, ExpressionError, compile_expression
from engine.rules.fields import unknown_field_message
from engine.rules.source import (
    Position,
    SourceFile,
    key_position,
    node_position,
    to_plain,
    value_position,
)

#: A name the author gives: an aggregate, a sequence step.
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: What a read that failed returns (its error is already recorded).
MISSING: Any = object()


class Checker:
    """Reads values out of the YAML of one file, recording every problem."""

    def __init__(self, source: SourceFile) -> None:
        self.source = source
        self.errors: list[RuleError] = []
        self.warnings: list[RuleError] = []

    # errors ------------------------------------------------------------------
    def error(self, position: Position | None, code: str, message: str) -> None:
        """Record an error with its code (``engine.rules.errors.CODES``)."""
        self.errors.append(self.source.error(position, code, message))

    def warn(self, position: Position | None, code: str, message: str) -> None:
        """Record a warning: reported, but the file still loads."""
        self.warnings.append(self.source.error(position, code, message))

    def check_fields(
        self, expression: Expression, anchor: Position | None, whole: str, shift: int = 0
    ) -> None:
        """Warn about each field of ``event`` (or of an event by another name:
        ``first``, a sequence step) or of ``customer`` that ``expression``
        reads and no such value is known to have. ``expression`` starts at
        character ``shift`` of the scalar ``whole`` at ``anchor``."""
        for reference in expression.references:
            if reference.name == "customer":
                root, code = "customer", "W102"
            elif reference.name == "event" or reference.name not in ROOT_NAMES:
                root, code = "event", "W101"
            else:
                continue  # device, score, window: no contract to check against
            message = unknown_field_message(root, reference.field)
            if message is not None:
                if reference.name not in ROOT_NAMES:
                    message += f" (read as {reference.name}.{reference.field})"
                position = self.source.locate(anchor, whole, shift + reference.offset)
                self.warn(position, code, message)

    def check_keys(self, mapping: Any, allowed: Sequence[str], what: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.error(
                    key_position(mapping, key),
                    "R101",
                    f"unknown key '{key}' in {what} (allowed: {', '.join(allowed)})",
                )

    # typed fields --------------------------------------------------------------
    def get(
        self,
        mapping: Any,
        key: str,
        kind: type | tuple[type, ...],
        what: str,
        *,
        required: bool = False,
        default: Any = None,
    ) -> Any:
        if key not in mapping:
            if required:
                self.error(node_position(mapping), "R102", f"{what} needs '{key}'")
                return MISSING
            return default
        value = mapping[key]
        bad_bool = isinstance(value, bool) and kind in (int, (int, float))
        if not isinstance(value, kind) or bad_bool:
            self.error(value_position(mapping, key), "R103", f"'{key}' must be {_type_name(kind)}")
            return MISSING
        return value

    def choice(
        self,
        mapping: Any,
        key: str,
        options: Sequence[str],
        what: str,
        *,
        required: bool = False,
        default: str | None = None,
    ) -> Any:
        value = self.get(mapping, key, str, what, required=required, default=default)
        if value is MISSING or value is None:
            return value
        if value not in options:
            self.error(
                value_position(mapping, key),
                "R104",
                f"'{key}' must be one of {', '.join(options)} (got '{value}')",
            )
            return MISSING
        return str(value)

    def duration(
        self, mapping: Any, key: str, what: str, *, required: bool = False, positive: bool = True
    ) -> Any:
        if key not in mapping:
            if required:
                self.error(node_position(mapping), "R102", f"{what} needs '{key}' (a duration)")
                return MISSING
            return None
        try:
            seconds = parse_duration(to_plain(mapping[key]))
        except ValueError as exc:
            self.error(value_position(mapping, key), "R107", f"'{key}': {exc}")
            return MISSING
        if positive and seconds <= 0:
            self.error(value_position(mapping, key), "R107", f"'{key}' must be longer than zero")
            return MISSING
        return seconds

    def mapping(self, parent: Any, key: str, what: str, *, required: bool = False) -> Any:
        return self.get(parent, key, Mapping, what, required=required)

    # expressions -----------------------------------------------------------------
    def expression(
        self,
        mapping: Any,
        key: str,
        what: str,
        *,
        names: frozenset[str] = ROOT_NAMES,
        window_fields: frozenset[str] | None = frozenset(),
        step_names: frozenset[str] = frozenset(),
        required: bool = True,
    ) -> Any:
        if key not in mapping:
            if required:
                self.error(node_position(mapping), "R102", f"{what} needs '{key}' (an expression)")
                return MISSING
            return None
        text = mapping[key]
        if not isinstance(text, str):
            self.error(
                value_position(mapping, key), "R103", f"'{key}' must be an expression (a string)"
            )
            return MISSING
        return self.compile_text(
            str(text),
            value_position(mapping, key),
            names=names,
            window_fields=window_fields,
            step_names=step_names,
        )

    def compile_text(
        self,
        text: str,
        anchor: Position | None,
        *,
        names: frozenset[str] = ROOT_NAMES,
        window_fields: frozenset[str] | None = frozenset(),
        step_names: frozenset[str] = frozenset(),
        shift: int = 0,
        context: str = "",
    ) -> Any:
        """Compile ``text``, which starts at character ``shift`` of the scalar
        ``context`` (``text`` itself when empty) at ``anchor`` in the file."""
        whole = context or text
        try:
            expression = compile_expression(
                text, names, window_fields=window_fields, step_names=step_names
            )
        except ExpressionError as exc:
            position = self.source.locate(anchor, whole, shift + exc.offset)
            self.error(position, exc.code, exc.message)
            return MISSING
        self.check_fields(expression, anchor, whole, shift)
        return expression


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "true or false",
        list: "a list",
        float: "a number",
    }
    if kind is Mapping:
        return "a mapping"
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)
