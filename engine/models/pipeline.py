"""Pipeline text -> River estimator, through an allowlist and nothing else.

The text is parsed with :mod:`ast` in ``eval`` mode and only these shapes
are accepted: a bare allowlisted name (``StandardScaler``), a call of one
with literal arguments (``HalfSpaceTrees(n_trees=25, seed=42)``), ``|``
between steps, and, as an argument, another allowlisted call
(``LogisticRegression(optimizer=SGD(0.05))``). Literals are numbers,
strings, booleans, ``None``, lists, tuples and dicts of literals. Anything
else (attribute access, subscripts, operators, lambdas, comprehensions,
``**kwargs``, unknown names) is refused before anything is built.

>>> recipe = parse_pipeline("StandardScaler | LogisticRegression(l2=0.0)")
>>> [step.name for step in recipe.steps]
['StandardScaler', 'LogisticRegression']
>>> type(recipe.build()).__name__
'Pipeline'
>>> try:
...     parse_pipeline("__import__('os')")
... except PipelineError as error:
...     print(error.message[:30])
unknown estimator '__import__'
"""

from __future__ import annotations

import ast
import copy
import inspect
import io
import tokenize
from dataclasses import dataclass
from typing import Any

from river import anomaly, compose, preprocessing

from engine.models.allowlist import ALLOWED, Role
from engine.models.hst import HalfSpaceTrees
from engine.models.scalers import MinMaxScaler

MAX_PIPELINE_CHARS = 2000


class PipelineError(ValueError):
    """The pipeline text is refused; ``line``/``col`` are 1-based within the text."""

    def __init__(self, message: str, *, line: int = 1, col: int = 1) -> None:
        self.message = message
        self.line = line
        self.col = col
        super().__init__(message)


@dataclass(frozen=True)
class Construct:
    """One allowlisted constructor call, with literal (or nested) arguments."""

    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    line: int
    col: int

    @property
    def allowed(self) -> Any:
        return ALLOWED[self.name]

    def build(self) -> Any:
        """A fresh instance (arguments are copied, nested constructs rebuilt)."""
        args = [_build_value(value) for value in self.args]
        kwargs = {key: _build_value(value) for key, value in self.kwargs}
        try:
            return self.allowed.cls(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{self.name}: {exc}", line=self.line, col=self.col) from exc


@dataclass(frozen=True)
class PipelineRecipe:
    """A parsed pipeline: ``build()`` makes a new, untrained estimator each call."""

    text: str
    steps: tuple[Construct, ...]

    @property
    def final_role(self) -> Role:
        return self.steps[-1].allowed.role

    @property
    def canonical(self) -> str:
        """The pipeline normalised (spacing, argument spelling), for fingerprints."""
        return " | ".join(_render(step) for step in self.steps)

    def build(self) -> Any:
        built = [step.build() for step in self.steps]
        return built[0] if len(built) == 1 else Pipeline(*built)


class Pipeline(compose.Pipeline):
    """``river.compose.Pipeline``, with its commonest plan run in fewer calls.

    For a plan of unsupervised transformers followed by a final estimator,
    called without extra arguments and outside ``learn_during_predict``, the
    steps are called exactly as River calls them, in the same order, without
    the per-step dispatch; anything else is River's own code.

    >>> from river import linear_model, preprocessing
    >>> model = Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    >>> model.learn_one({"x": 1.0}, True)
    >>> river = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    >>> river.learn_one({"x": 1.0}, True)
    >>> model.predict_proba_one({"x": 2.0}) == river.predict_proba_one({"x": 2.0})
    True
    """

    #: (plan it was made from, transformers, final step, final learns from y);
    #: transformers is None when River's own loop must run the plan.
    _simple: tuple[Any, tuple[Any, ...] | None, Any, bool] | None = None

    def _fast(self, params: dict[str, Any]) -> tuple[Any, tuple[Any, ...] | None, Any, bool]:
        """The simple plan for this call; its transformers are None to defer to River."""
        simple = self._simple
        if params or self._LEARN_UNSUPERVISED_DURING_PREDICT:
            return (None, None, None, False)
        if simple is not None and simple[0] is self._plan and self._plan is not None:
            return simple
        plan = self._build_plan()
        if (
            plan
            and plan[-1][0] == "final"
            and all(item[0] == "transformer" and not item[2] for item in plan[:-1])
        ):
            simple = (plan, tuple(item[1] for item in plan[:-1]), plan[-1][1], plan[-1][2])
        else:
            simple = (plan, None, None, False)
        self._simple = simple
        return simple

    def learn_one(self, x: dict, y: Any = None, **params: Any) -> None:
        simple = self._simple
        if simple is None or simple[0] is not self._plan or params:
            simple = self._fast(params)
        transformers = simple[1]
        if transformers is None or self._LEARN_UNSUPERVISED_DURING_PREDICT:
            super().learn_one(x, y, **params)
            return
        for step in transformers:
            step.learn_one(x)
            x = step.transform_one(x)
        if simple[3]:
            simple[2].learn_one(x=x, y=y)
        else:
            simple[2].learn_one(x=x)

    def score_one(self, x: dict, **params: Any) -> Any:
        simple = self._simple
        if simple is None or simple[0] is not self._plan or params:
            simple = self._fast(params)
        transformers = simple[1]
        if transformers is None or self._LEARN_UNSUPERVISED_DURING_PREDICT:
            return super().score_one(x, **params)
        for step in transformers:
            x = step.transform_one(x)
        return simple[2].score_one(x)

    def predict_one(self, x: dict, **params: Any) -> Any:
        simple = self._simple
        if simple is None or simple[0] is not self._plan or params:
            simple = self._fast(params)
        transformers = simple[1]
        if transformers is None or self._LEARN_UNSUPERVISED_DURING_PREDICT:
            return super().predict_one(x, **params)
        for step in transformers:
            x = step.transform_one(x)
        return simple[2].predict_one(x)

    def predict_proba_one(self, x: dict, **params: Any) -> Any:
        simple = self._simple
        if simple is None or simple[0] is not self._plan or params:
            simple = self._fast(params)
        transformers = simple[1]
        if transformers is None or self._LEARN_UNSUPERVISED_DURING_PREDICT:
            return super().predict_proba_one(x, **params)
        for step in transformers:
            x = step.transform_one(x)
        return simple[2].predict_proba_one(x)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_simple", None)  # derived from the plan
        return state


def upgraded(model: Any) -> Any:
    """A restored estimator with River classes that this version builds as
    exact, faster subclasses (snapshots written before they existed) swapped
    for those; anything else is returned as it is.

    >>> from river import anomaly, preprocessing
    >>> old = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=1))
    >>> new = upgraded(old)
    >>> type(new) is Pipeline, [type(step).__module__ for step in new.steps.values()]
    (True, ['engine.models.scalers', 'engine.models.hst'])
    """
    if isinstance(model, compose.Pipeline):
        steps = [(name, upgraded(step)) for name, step in model.steps.items()]
        if type(model) is Pipeline and all(
            new is old for (_, new), old in zip(steps, model.steps.values(), strict=True)
        ):
            return model
        return Pipeline(*steps)
    if type(model) is anomaly.HalfSpaceTrees:
        return HalfSpaceTrees.from_river(model)
    if type(model) is preprocessing.MinMaxScaler:
        return MinMaxScaler.from_river(model)
    return model


def parse_pipeline(text: str) -> PipelineRecipe:
    """Parse and check ``text``; raises :class:`PipelineError` at the offending spot."""
    if not isinstance(text, str) or not text.strip():
        raise PipelineError("pipeline must be a non-empty string")
    if len(text) > MAX_PIPELINE_CHARS:
        raise PipelineError(f"pipeline longer than {MAX_PIPELINE_CHARS} characters")
    try:
        # Wrapped in parentheses on lines of their own so that leading spaces and
        # line breaks (YAML folded text) parse, and positions stay the text's own.
        tree = ast.parse(f"(\n{text}\n)", mode="eval")
    except SyntaxError as exc:
        line = min(max((exc.lineno or 2) - 1, 1), text.count("\n") + 1)
        raise PipelineError(f"syntax error: {exc.msg}", line=line, col=exc.offset or 1) from exc
    _check_brackets(text)
    steps = tuple(_parse_step(node) for node in _split_steps(tree.body))
    for step in steps[:-1]:
        if step.allowed.role is not Role.TRANSFORMER:
            raise PipelineError(
                f"{step.name} is a {step.allowed.role.value}; only transformers may come "
                "before '|'",
                line=step.line,
                col=step.col,
            )
    last = steps[-1]
    if last.allowed.role is Role.COMPONENT:
        raise PipelineError(
            f"{last.name} can only be an argument, not a pipeline step",
            line=last.line,
            col=last.col,
        )
    return PipelineRecipe(text=text, steps=steps)


def _check_brackets(text: str) -> None:
    """Refuse a closing bracket that would pair with the wrapping parentheses."""
    depth = 0
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth < 0:
                line, col = token.start
                raise PipelineError("unmatched closing bracket", line=line, col=col + 1)


def _split_steps(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*_split_steps(node.left), *_split_steps(node.right)]
    return [node]


def _where(node: ast.AST) -> dict[str, int]:
    # The parsed source has one extra line in front (see parse_pipeline).
    return {"line": getattr(node, "lineno", 2) - 1, "col": getattr(node, "col_offset", 0) + 1}


def _allowed_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        if node.id not in ALLOWED:
            allowed = ", ".join(sorted(ALLOWED))
            raise PipelineError(
                f"unknown estimator {node.id!r} (allowed: {allowed})", **_where(node)
            )
        return node.id
    if isinstance(node, ast.Attribute):
        raise PipelineError(
            "attribute access is not allowed; name the estimator alone, e.g. 'StandardScaler'",
            **_where(node),
        )
    raise PipelineError(f"expected an estimator name, found {_describe(node)}", **_where(node))


def _parse_step(node: ast.expr) -> Construct:
    if isinstance(node, ast.Call):
        return _parse_call(node)
    name = _allowed_name(node)
    return _checked(Construct(name=name, args=(), kwargs=(), **_where(node)))


def _parse_call(node: ast.Call) -> Construct:
    name = _allowed_name(node.func)
    args = tuple(_parse_value(arg) for arg in node.args)
    kwargs: list[tuple[str, Any]] = []
    for keyword in node.keywords:
        if keyword.arg is None:
            raise PipelineError("'**' arguments are not allowed", **_where(keyword.value))
        kwargs.append((keyword.arg, _parse_value(keyword.value)))
    return _checked(Construct(name=name, args=args, kwargs=tuple(kwargs), **_where(node)))


def _parse_value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, bool | int | float | str):
            return node.value
        raise PipelineError(f"literal {node.value!r} is not allowed", **_where(node))
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List):
        return [_parse_value(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_parse_value(item) for item in node.elts)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise PipelineError("'**' in a dict is not allowed", **_where(node))
        return {
            _parse_value(key): _parse_value(value)
            for key, value in zip(node.keys, node.values, strict=True)
            if key is not None
        }
    if isinstance(node, ast.Call):
        return _parse_call(node)
    if isinstance(node, ast.Starred):
        raise PipelineError("'*' arguments are not allowed", **_where(node))
    raise PipelineError(f"{_describe(node)} is not allowed as an argument", **_where(node))


def _checked(construct: Construct) -> Construct:
    """Bind the arguments to the signature and enforce the size limits."""
    allowed = construct.allowed
    try:
        bound = inspect.signature(allowed.cls).bind(*construct.args, **dict(construct.kwargs))
    except TypeError as exc:
        raise PipelineError(
            f"{construct.name}: {exc}", line=construct.line, col=construct.col
        ) from exc
    for param, (low, high) in allowed.limits.items():
        if param not in bound.arguments:
            continue
        value = bound.arguments[param]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise PipelineError(
                f"{construct.name}: {param} must be a number in [{low:g}, {high:g}]",
                line=construct.line,
                col=construct.col,
            )
    return construct


def _build_value(value: Any) -> Any:
    if isinstance(value, Construct):
        return value.build()
    if isinstance(value, list):
        return [_build_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_build_value(item) for item in value)
    if isinstance(value, dict):
        return {key: _build_value(item) for key, item in value.items()}
    return copy.copy(value)


def _render(value: Any) -> str:
    if isinstance(value, Construct):
        parts = [_render(arg) for arg in value.args]
        parts += [f"{key}={_render(arg)}" for key, arg in value.kwargs]
        return f"{value.name}({', '.join(parts)})"
    if isinstance(value, list):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_render(item) for item in value) + ",)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_render(k)}: {_render(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _describe(node: ast.AST) -> str:
    kinds = {
        ast.Lambda: "a lambda",
        ast.Attribute: "attribute access",
        ast.Subscript: "a subscript",
        ast.BinOp: "an operator",
        ast.BoolOp: "a boolean operator",
        ast.Compare: "a comparison",
        ast.ListComp: "a comprehension",
        ast.GeneratorExp: "a generator",
        ast.DictComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.Set: "a set",
        ast.JoinedStr: "an f-string",
        ast.NamedExpr: "an assignment",
        ast.IfExp: "a conditional",
        ast.Name: "a bare name",
    }
    for kind, label in kinds.items():
        if isinstance(node, kind):
            return label
    return type(node).__name__
