"""Model declarations: YAML in, checked :class:`ModelSpec` out.

Every error names the file, line and column of the offending node. See
docs/models.md for the full reference.

>>> text = '''
... models:
...   - name: churn
...     kind: binary
...     pipeline: StandardScaler | LogisticRegression
...     features: [customer.days_since_use, {usage_today: customer.usage_today_min}]
...     label: {outcome: {positive: [customer_churned], negative: [offer_accepted],
...                       join: customer, horizon: 30d}}
... '''
>>> [spec] = parse_models(text, file="models.yaml")
>>> spec.name, spec.scope, [f.name for f in spec.features], spec.label.horizon_s
('churn', 'global', ['days_since_use', 'usage_today'], 2592000.0)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from engine.durations import parse_duration
from engine.models.allowlist import Role
from engine.models.errors import ModelConfigError
from engine.models.pipeline import PipelineError, PipelineRecipe, parse_pipeline

KINDS = ("binary", "regression", "anomaly")
SCOPES = ("global", "device_type", "customer_segment", "device")
JOINS = ("customer", "device", "action")
SOURCES = ("event", "customer", "device")
#: Event fields that identify or route an event; never features under ``event.*``.
ENVELOPE_FIELDS = frozenset({"id", "ts", "device_id", "customer_id", "device_type", "kind"})
#: The join key of each ``join`` value, as a field of the outcome record.
JOIN_FIELDS = {"customer": "customer_id", "device": "device_id", "action": "action_id"}
DEFAULT_MAX_PENDING = 100_000

_FINAL_ROLE = {"binary": Role.CLASSIFIER, "regression": Role.REGRESSOR, "anomaly": Role.ANOMALY}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FieldPath:
    """``event.vibration`` -> source ``event``, path ``("vibration",)``."""

    source: str
    path: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join((self.source, *self.path))


@dataclass(frozen=True)
class Feature:
    name: str
    field: FieldPath


@dataclass(frozen=True)
class AppliesTo:
    """Which events a model sees; ``None`` means any."""

    kinds: frozenset[str] | None = None
    device_types: frozenset[str] | None = None
    segments: frozenset[str] | None = None
    require: tuple[FieldPath, ...] = ()


@dataclass(frozen=True)
class FieldLabel:
    """The label travels with the event (or the state) being scored."""

    field: FieldPath


@dataclass(frozen=True)
class OutcomeLabel:
    """The label arrives later as an outcome on ``crm.outcomes``."""

    types: frozenset[str]
    positive: frozenset[str]
    negative: frozenset[str]
    join: str
    horizon_s: float
    max_pending: int = DEFAULT_MAX_PENDING

    @property
    def join_field(self) -> str:
        return JOIN_FIELDS[self.join]


Label = FieldLabel | OutcomeLabel


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    pipeline: PipelineRecipe
    features: tuple[Feature, ...]
    #: ``event.*`` was declared: every numeric non-envelope event field, in event order
    all_event_fields: bool = False
    scope: str = "global"
    applies_to: AppliesTo = field(default_factory=AppliesTo)
    label: Label | None = None
    description: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the learned state changes,
        and only then: the same in every process (a restarted worker must
        recognise the snapshots its predecessor wrote)."""
        identity = _canonical(
            (
                self.name,
                self.kind,
                self.pipeline.canonical,
                self.features,
                self.all_event_fields,
                self.scope,
                self.applies_to,
                self.label,
            )
        )
        return hashlib.sha256(repr(identity).encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """``value`` as nested tuples whose ``repr`` is the same in every process:
    a set's ``repr`` follows its elements' hashes, which Python salts per
    process (``PYTHONHASHSEED``), so sets become sorted tuples.

    >>> _canonical(AppliesTo(kinds=frozenset({"b", "a"})))
    ('AppliesTo', ('set', "'a'", "'b'"), None, None, ())
    """
    if isinstance(value, (set, frozenset)):
        return ("set", *sorted(repr(_canonical(item)) for item in value))
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, *(_canonical(getattr(value, f.name)) for f in fields(value)))
    if isinstance(value, (tuple, list)):
        return tuple(_canonical(item) for item in value)
    if isinstance(value, dict):
        return ("dict", *sorted((repr(key), _canonical(item)) for key, item in value.items()))
    return value


def load_specs(path: str | Path) -> list[ModelSpec]:
    """Read and check a model file."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"cannot read model file: {exc.strerror or exc}", file=file) from exc
    return parse_models(text, file=file)


def parse_models(text: str, *, file: str = "<models>") -> list[ModelSpec]:
    """Check the YAML text of a model file; ``file`` is only used in errors."""
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ModelConfigError(
            f"invalid YAML: {exc.problem or exc.context}",
            file=file,
            line=mark.line + 1 if mark else 0,
            col=mark.column + 1 if mark else 0,
        ) from exc
    reader = _Reader(file, text)
    reader.refuse_tags(document)
    if document is None:
        return []
    if isinstance(document, CommentedMap):
        reader.only_keys(document, {"models"})
        models = document.get("models")
        where = reader.value_at(document, "models")
    else:
        models, where = document, (1, 1)
    if not isinstance(models, CommentedSeq):
        raise reader.error("expected a list of models (or a mapping with 'models:')", where)
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, node in enumerate(models):
        spec = reader.model(node, reader.item_at(models, index))
        if spec.name in seen:
            raise reader.error(f"duplicate model name {spec.name!r}", reader.value_at(node, "name"))
        seen.add(spec.name)
        specs.append(spec)
    return specs


def positive_duration(value: Any) -> float:
    """Seconds in a duration (``engine.durations``) that must be more than zero.

    >>> positive_duration("30d"), positive_duration(90), positive_duration("500ms")
    (2592000.0, 90.0, 0.5)
    """
    seconds = parse_duration(value)
    if not seconds > 0:
        raise ValueError("a duration must be positive")
    return seconds


def parse_field(text: Any) -> FieldPath:
    """``customer.consent.marketing`` -> FieldPath("customer", ("consent", "marketing"))."""
    if not isinstance(text, str):
        raise ValueError(f"expected a field like event.vibration, found {text!r}")
    source, *path = text.split(".")
    if source not in SOURCES:
        raise ValueError(f"field {text!r} must start with one of {', '.join(SOURCES)}")
    if not path or not all(_SEGMENT.match(part) for part in path):
        raise ValueError(f"field {text!r} is not a dotted path of names")
    return FieldPath(source, tuple(path))


class _Reader:
    """Validates nodes of the round-trip YAML tree, with positions for errors."""

    _MODEL_KEYS = frozenset(
        {"name", "kind", "pipeline", "features", "scope", "applies_to", "label", "description"}
    )

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines = text.splitlines()

    # positions (1-based) --------------------------------------------------

    def error(self, message: str, where: tuple[int, int]) -> ModelConfigError:
        return ModelConfigError(message, file=self.file, line=where[0], col=where[1])

    @staticmethod
    def value_at(node: Any, key: str) -> tuple[int, int]:
        try:
            line, col = node.lc.value(key)
        except (AttributeError, KeyError, TypeError):
            return _Reader.node_at(node)
        return line + 1, col + 1

    @staticmethod
    def item_at(node: Any, index: int) -> tuple[int, int]:
        try:
            line, col = node.lc.item(index)
        except (AttributeError, KeyError, TypeError, IndexError):
            return _Reader.node_at(node)
        return line + 1, col + 1

    @staticmethod
    def node_at(node: Any) -> tuple[int, int]:
        lc = getattr(node, "lc", None)
        if lc is None or lc.line is None:
            return 0, 0
        return lc.line + 1, lc.col + 1

    # generic checks ----------------------------------------------------------

    def refuse_tags(self, node: Any, where: tuple[int, int] | None = None) -> None:
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag is not None:
            raise self.error(f"YAML tags are not allowed ({tag})", where or self.node_at(node))
        if isinstance(node, CommentedMap):
            for key, value in node.items():
                self.refuse_tags(value, self.value_at(node, key))
        elif isinstance(node, CommentedSeq):
            for index, value in enumerate(node):
                self.refuse_tags(value, self.item_at(node, index))

    def mapping(self, node: Any, where: tuple[int, int], what: str) -> CommentedMap:
        if not isinstance(node, CommentedMap):
            raise self.error(f"{what} must be a mapping", where)
        return node

    def only_keys(self, node: CommentedMap, allowed: set[str] | frozenset[str]) -> None:
        for key in node:
            if key not in allowed:
                line, col = node.lc.key(key)
                raise self.error(
                    f"unknown key {key!r} (expected {', '.join(sorted(allowed))})",
                    (line + 1, col + 1),
                )

    def string(self, node: CommentedMap, key: str, *, required: bool = True) -> str | None:
        if key not in node:
            if required:
                raise self.error(f"missing required key {key!r}", self.node_at(node))
            return None
        value = node[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{key!r} must be a non-empty string", self.value_at(node, key))
        return value

    def choice(self, node: CommentedMap, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(node, key, required=False) or default
        if value not in choices:
            raise self.error(
                f"{key!r} must be one of {', '.join(choices)}, not {value!r}",
                self.value_at(node, key),
            )
        return value

    def strings(self, node: CommentedMap, key: str) -> frozenset[str] | None:
        if key not in node:
            return None
        value = node[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(f"{key!r} must be a list of strings", self.value_at(node, key))
        return frozenset(value)

    def field_path(self, value: Any, where: tuple[int, int]) -> FieldPath:
        try:
            return parse_field(value)
        except ValueError as exc:
            raise self.error(str(exc), where) from exc

    # model parts --------------------------------------------------------------

    def model(self, node: Any, where: tuple[int, int]) -> ModelSpec:
        node = self.mapping(node, where, "a model")
        self.only_keys(node, self._MODEL_KEYS)
        name = self.string(node, "name")
        assert name is not None
        if not _NAME.match(name):
            raise self.error(
                f"model name {name!r} must match [a-z][a-z0-9_]* (it becomes score.<name>)",
                self.value_at(node, "name"),
            )
        if "kind" not in node:
            raise self.error(f"missing required key 'kind' ({', '.join(KINDS)})", where)
        kind = self.choice(node, "kind", KINDS, default="")
        scope = self.choice(node, "scope", SCOPES, default="global")
        pipeline = self.pipeline(node, kind)
        features, all_event_fields = self.features(node)
        label = self.label(node, kind) if "label" in node else None
        if label is None and kind == "binary":
            raise self.error("a binary model needs a 'label'", self.node_at(node))
        if isinstance(label, FieldLabel) and label.field in {f.field for f in features}:
            raise self.error("the label cannot also be a feature", self.value_at(node, "label"))
        applies_to = self.applies_to(node) if "applies_to" in node else AppliesTo()
        spec = ModelSpec(
            name=name,
            kind=kind,
            pipeline=pipeline,
            features=features,
            all_event_fields=all_event_fields,
            scope=scope,
            applies_to=applies_to,
            label=label,
            description=self.string(node, "description", required=False) or "",
        )
        self.smoke_test(spec, self.value_at(node, "pipeline"))
        return spec

    def pipeline(self, node: CommentedMap, kind: str) -> PipelineRecipe:
        text = self.string(node, "pipeline")
        assert text is not None
        line, col = self.value_at(node, "pipeline")
        try:
            recipe = parse_pipeline(text)
        except PipelineError as exc:
            raise self.error(f"pipeline: {exc.message}", self._inside(line, col, exc)) from exc
        expected = _FINAL_ROLE[kind]
        if recipe.final_role is not expected:
            raise self.error(
                f"a {kind} model must end with a {expected.value}, and "
                f"{recipe.steps[-1].name} is a {recipe.final_role.value}",
                (line, col),
            )
        return recipe

    def _inside(self, line: int, col: int, exc: PipelineError) -> tuple[int, int]:
        """Where in the file a position inside the pipeline text is (best effort)."""
        if exc.line > 1:
            return line + exc.line - 1, exc.col
        row = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        quoted = col <= len(row) and row[col - 1 : col] in {"'", '"'}
        return line, col + exc.col - 1 + int(quoted)

    def features(self, node: CommentedMap) -> tuple[tuple[Feature, ...], bool]:
        if "features" not in node:
            raise self.error("missing required key 'features'", self.node_at(node))
        items = node["features"]
        if not isinstance(items, CommentedSeq) or not items:
            raise self.error("'features' must be a non-empty list", self.value_at(node, "features"))
        features: list[Feature] = []
        all_event_fields = False
        for index, item in enumerate(items):
            where = self.item_at(items, index)
            if item == "event.*":
                all_event_fields = True
                continue
            if isinstance(item, CommentedMap) and len(item) == 1:
                [(name, text)] = item.items()
                if not isinstance(name, str) or not _SEGMENT.match(name):
                    raise self.error(f"feature name {name!r} must be a plain name", where)
                feature = Feature(name, self.field_path(text, where))
            elif isinstance(item, str):
                path = self.field_path(item, where)
                feature = Feature(path.path[-1], path)
            else:
                raise self.error(
                    "a feature is a field like event.vibration, event.*, or {name: field}", where
                )
            if any(f.name == feature.name for f in features):
                raise self.error(
                    f"two features are named {feature.name!r}; rename one with {{name: field}}",
                    where,
                )
            features.append(feature)
        if all_event_fields and any(f.field.source == "event" for f in features):
            raise self.error(
                "event.* already takes every event field; list only customer.* or device.* "
                "fields next to it",
                self.value_at(node, "features"),
            )
        return tuple(features), all_event_fields

    def applies_to(self, node: CommentedMap) -> AppliesTo:
        where = self.value_at(node, "applies_to")
        spec = self.mapping(node["applies_to"], where, "'applies_to'")
        self.only_keys(spec, {"kinds", "device_types", "segments", "require"})
        require: list[FieldPath] = []
        if "require" in spec:
            fields = spec["require"]
            if isinstance(fields, str):
                fields = [fields]
            if not isinstance(fields, list):
                raise self.error(
                    "'require' must be a list of fields", self.value_at(spec, "require")
                )
            require = [self.field_path(f, self.value_at(spec, "require")) for f in fields]
        return AppliesTo(
            kinds=self.strings(spec, "kinds"),
            device_types=self.strings(spec, "device_types"),
            segments=self.strings(spec, "segments"),
            require=tuple(require),
        )

    def label(self, node: CommentedMap, kind: str) -> Label:
        where = self.value_at(node, "label")
        spec = self.mapping(node["label"], where, "'label'")
        if len(spec) != 1 or next(iter(spec)) not in {"field", "outcome"}:
            raise self.error("'label' takes exactly one of 'field' or 'outcome'", where)
        if "field" in spec:
            return FieldLabel(self.field_path(spec["field"], self.value_at(spec, "field")))
        if kind == "anomaly":
            raise self.error(
                "an anomaly model learns without labels; its label can only be a field "
                "(used to score ROCAUC)",
                where,
            )
        return self.outcome(spec, kind)

    def outcome(self, label: CommentedMap, kind: str) -> OutcomeLabel:
        where = self.value_at(label, "outcome")
        spec = self.mapping(label["outcome"], where, "'outcome'")
        self.only_keys(spec, {"types", "positive", "negative", "join", "horizon", "max_pending"})
        positive = self.strings(spec, "positive") or frozenset()
        negative = self.strings(spec, "negative") or frozenset()
        types = self.strings(spec, "types")
        if kind == "binary":
            if not positive or not negative:
                raise self.error("a binary outcome label needs 'positive' and 'negative'", where)
            if positive & negative:
                raise self.error(
                    f"outcome types both positive and negative: {sorted(positive & negative)}",
                    where,
                )
            if types is not None and types != positive | negative:
                raise self.error(
                    "'types' of a binary label must be exactly positive + negative (or left out)",
                    self.value_at(spec, "types"),
                )
            types = positive | negative
        else:
            if positive or negative:
                raise self.error(
                    "a regression outcome label learns the outcome's 'value'; use 'types', "
                    "not positive/negative",
                    where,
                )
            if not types:
                raise self.error("a regression outcome label needs 'types'", where)
        if "join" not in spec:
            raise self.error("an outcome label needs 'join' (customer, device or action)", where)
        join = self.choice(spec, "join", JOINS, default="")
        if "horizon" not in spec:
            raise self.error("an outcome label needs a 'horizon', e.g. 30d", where)
        try:
            horizon_s = positive_duration(spec["horizon"])
        except ValueError as exc:
            raise self.error(str(exc), self.value_at(spec, "horizon")) from exc
        max_pending = spec.get("max_pending", DEFAULT_MAX_PENDING)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise self.error(
                "'max_pending' must be a positive integer", self.value_at(spec, "max_pending")
            )
        return OutcomeLabel(
            types=types,
            positive=positive,
            negative=negative,
            join=join,
            horizon_s=horizon_s,
            max_pending=max_pending,
        )

    def smoke_test(self, spec: ModelSpec, where: tuple[int, int]) -> None:
        """Build the pipeline and run one predict/learn, so that a wrong argument
        (say, a loss where an optimizer belongs) fails here, not in a worker."""
        names = [f.name for f in spec.features] or ["x"]
        sample = {name: 0.5 for name in names}
        label = {"binary": True, "regression": 1.0, "anomaly": None}[spec.kind]
        try:
            model = spec.pipeline.build()
            if spec.kind == "anomaly":
                model.score_one(sample)
                model.learn_one(sample)
            else:
                if spec.kind == "binary":
                    model.predict_proba_one(sample)
                else:
                    model.predict_one(sample)
                model.learn_one(sample, label)
        except PipelineError as exc:
            raise self.error(f"pipeline: {exc.message}", where) from exc
        except Exception as exc:
            raise self.error(
                f"pipeline fails on a sample event: {type(exc).__name__}: {exc}", where
            ) from exc
