"""Templated action payloads: ``{{ expr }}`` inside strings, compiled once.

A string that is exactly one ``{{ expr }}`` (surrounding spaces allowed) keeps
the value's type; a string that mixes text and expressions renders to a string
(``null`` renders as an empty string, booleans as ``true``/``false``).

>>> from engine.rules.expr import Scope
>>> payload = compile_payload({"level": "{{ event.level }}", "msg": "low: {{ event.level }}%"})
>>> payload.render(Scope({"level": 12.5}))
{'level': 12.5, 'msg': 'low: 12.5%'}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.rules.expr import Expression, ExpressionError, Scope, compile_expression

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

#: Called when a template expression raises while rendering.
ErrorHook = Callable[[], None]


def render_text(value: Any) -> str:
    """How a value appears inside a mixed-text template."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class TemplateError:
    """A template expression that does not compile; ``path`` is the key path
    inside the payload, ``offset`` the character offset in that string and
    ``code`` the rule error code."""

    path: tuple[str | int, ...]
    offset: int
    message: str
    code: str


class PayloadError(Exception):
    """Templates of a payload that do not compile, every one in ``errors``."""

    def __init__(self, errors: list[TemplateError]) -> None:
        super().__init__("; ".join(error.message for error in errors))
        self.errors = errors


class Payload:
    """A compiled payload: templated strings are rendered on each firing.
    Rendering never raises: a failing expression renders as ``None`` and
    calls ``on_error`` (settable after compiling). ``origins`` says where each
    of ``expressions`` is written: the key path of its string and the
    character offset of its text in it."""

    def __init__(
        self,
        build: Callable[[Scope], Any],
        expressions: list[Expression],
        origins: list[tuple[tuple[str | int, ...], int]] | None = None,
    ) -> None:
        self._build = build
        self.expressions = expressions
        self.origins = origins if origins is not None else []
        self.on_error: ErrorHook | None = None

    def render(self, scope: Scope) -> Any:
        return self._build(scope)


def compile_payload(
    value: Any,
    names: frozenset[str] | None = None,
    *,
    window_fields: frozenset[str] | None = None,
    step_names: frozenset[str] = frozenset(),
    on_error: ErrorHook | None = None,
) -> Payload:
    """Compile every string in ``value`` (nested dicts and lists); raises
    :class:`PayloadError` listing every broken template."""
    kwargs: dict[str, Any] = {"window_fields": window_fields, "step_names": step_names}
    if names is not None:
        kwargs["names"] = names
    errors: list[TemplateError] = []
    expressions: list[Expression] = []

    origins: list[tuple[tuple[str | int, ...], int]] = []
    payload = Payload(lambda _s: None, expressions, origins)
    payload.on_error = on_error

    def safe(expression: Expression) -> Callable[[Scope], Any]:
        evaluate = expression.evaluate

        def run(scope: Scope) -> Any:
            try:
                return evaluate(scope)
            except Exception:
                if payload.on_error is not None:
                    payload.on_error()
                return None

        return run

    def build(node: Any, path: tuple[str | int, ...]) -> Callable[[Scope], Any] | None:
        """A renderer for ``node``, or None when it is constant."""
        if isinstance(node, str):
            return build_string(node, path)
        if isinstance(node, dict):
            parts = {key: build(child, (*path, key)) for key, child in node.items()}
            if all(part is None for part in parts.values()):
                return None
            items = [(key, part, node[key]) for key, part in parts.items()]
            return lambda s: {
                key: (part(s) if part is not None else _copy(constant))
                for key, part, constant in items
            }
        if isinstance(node, list):
            parts_list = [build(child, (*path, i)) for i, child in enumerate(node)]
            if all(part is None for part in parts_list):
                return None
            pairs = list(zip(parts_list, node, strict=True))
            return lambda s: [
                part(s) if part is not None else _copy(constant) for part, constant in pairs
            ]
        return None

    def build_string(text: str, path: tuple[str | int, ...]) -> Callable[[Scope], Any] | None:
        matches = list(_PLACEHOLDER.finditer(text))
        if not matches:
            return None
        compiled: list[tuple[int, int, Callable[[Scope], Any]]] = []
        for match in matches:
            try:
                expression = compile_expression(match.group(1), **kwargs)
            except ExpressionError as exc:
                errors.append(
                    TemplateError(path, match.start(1) + exc.offset, exc.message, exc.code)
                )
                continue
            expressions.append(expression)
            origins.append((path, match.start(1)))
            compiled.append((match.start(), match.end(), safe(expression)))
        if len(compiled) != len(matches):
            return None
        if (
            len(compiled) == 1
            and not text[: matches[0].start()].strip()
            and not text[matches[0].end() :].strip()
        ):
            return compiled[0][2]
        pieces: list[str | Callable[[Scope], Any]] = []
        position = 0
        for start, end, run in compiled:
            if start > position:
                pieces.append(text[position:start])
            pieces.append(run)
            position = end
        if position < len(text):
            pieces.append(text[position:])

        def mixed(scope: Scope) -> str:
            return "".join(
                piece if isinstance(piece, str) else render_text(piece(scope)) for piece in pieces
            )

        return mixed

    renderer = build(value, ())
    if errors:
        raise PayloadError(errors)
    if renderer is None:
        constant = value
        payload._build = lambda _s: _copy(constant)
    else:
        payload._build = renderer
    return payload


def _copy(value: Any) -> Any:
    # Firings own their payload: a consumer mutating it must not change the rule.
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
