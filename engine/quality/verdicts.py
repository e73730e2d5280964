"""What inspecting an event can give: ``Accepted`` or ``Rejection``.

>>> Rejection("schema", "missing required field 'ts'")
Rejection(reason_code='schema', reason="missing required field 'ts'")
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

#: Why an event was refused. ``decode``: not a JSON object of UTF-8 text
#: within the size limit; ``schema``: a field is missing or has the wrong
#: type or shape; ``value``: a value is impossible (NaN/infinity, out of its
#: physical range, unknown enum value); ``unit``: an unknown or conflicting
#: unit; ``future``: stamped too far ahead of the wall clock;
#: ``unregistered``: the device is not in the registry; ``late``: behind the
#: device's stream time by more than the allowed lateness; ``internal``: a bug
#: in the inspector (never expected; the event is kept in the dead letters).
ReasonCode = Literal[
    "decode", "schema", "value", "unit", "future", "unregistered", "late", "internal"
]


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A valid event, normalised and enriched: the flat mapping rules see."""

    event: dict[str, Any]


class Rejection(msgspec.Struct, frozen=True, gc=False):
    """A refused event: a machine-readable code and a sentence for people."""

    reason_code: ReasonCode
    reason: str


class RejectedInput(Exception):
    """Raised inside the inspector's steps; ``Inspector`` turns it into its
    ``rejection``, so callers of the public API never see it."""

    def __init__(self, reason_code: ReasonCode, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(reason_code, reason)


def preview(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of a JSON value for a reason text.

    >>> preview("x" * 100, limit=10)
    "'xxxxx...'"
    >>> preview(True)
    'true'
    """
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    text = repr(value)
    if len(text) <= limit:
        return text
    closing = text[-1] if text[-1] in "'\"]}" else ""
    return text[: limit - 3 - len(closing)] + "..." + closing


def describe(value: Any) -> str:
    """A JSON value's type and a preview of it, for "got ..." in reasons.

    >>> describe(42), describe("21.5"), describe(None)
    ('integer 42', "string '21.5'", 'null')
    """
    return "null" if value is None else f"{json_type(value)} {preview(value)}"


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type.

    >>> json_type([1]), json_type(1.5), json_type(None)
    ('array', 'number', 'null')
    """
    return _JSON_TYPES.get(type(value), type(value).__name__)


_JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
