"""Rule files to a :class:`RuleSet`: validate everything, collect every error
with its file, line and column, and compile expressions and templates once.

>>> ruleset = compile_rules('''
... - id: hot
...   version: 1
...   key: device
...   when: {condition: "event.temperature > 90"}
...   action: {type: support_case, payload: {reason: "hot: {{ event.temperature }}"}}
... ''')
>>> [rule.id for rule in ruleset], ruleset.get("hot").topic
(['hot'], 'crm.actions.support')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.config import ACTION_TOPIC_SUFFIX
from engine.rules.checks import MISSING, Checker
from engine.rules.errors import RuleError, RuleFileError
from engine.rules.expr import ROOT_NAMES, Expression
from engine.rules.model import BASE_EVENT_FIELDS, Rule, RuleSet, RuleTest
from engine.rules.source import (
    SourceFile,
    item_position,
    load_yaml,
    node_position,
    parse_timestamp,
    parse_yaml,
    to_plain,
    value_position,
)
from engine.rules.template import Payload, PayloadError, compile_payload
from engine.rules.triggers.base import Trigger
from engine.rules.triggers.registry import TRIGGERS

RULE_ID = re.compile(r"^[a-z0-9-]+$")
CONSENT = re.compile(r"^[A-Za-z0-9_-]+$")

#: Default topic of each action type.
DEFAULT_TOPICS: dict[str, str] = {
    action_type: "crm.actions." + suffix for action_type, suffix in ACTION_TOPIC_SUFFIX.items()
}
ACTION_TYPES: tuple[str, ...] = tuple(DEFAULT_TOPICS)
KEYS = ("device", "customer")

RULE_FIELDS = (
    "id",
    "version",
    "description",
    "enabled",
    "key",
    "priority",
    "group",
    "when",
    "cooldown",
    "requires_consent",
    "action",
    "tests",
)
TEST_FIELDS = (
    "name",
    "events",
    "expect",
    "expect_suppressed",
    "until",
    "customer",
    "devices",
    "scores",
)
EXPECT_FIELDS = (
    "at",
    "events",
    "payload",
    "key",
    "evidence",
    "topic",
    "type",
    "device_id",
    "suppressed",
)
#: Fields of a rule that do not change what it does (kept out of its fingerprint).
_NOT_BEHAVIOUR = ("description", "tests", "enabled")


class _FileCompiler(Checker):
    """Compiles the rules of one file, collecting errors instead of stopping."""

    def __init__(self, source: SourceFile) -> None:
        super().__init__(source)
        #: Every rule id seen, with its position, compiled or not.
        self.ids: list[tuple[str, tuple[int, int] | None]] = []

    # file ---------------------------------------------------------------------------
    def compile_document(self, data: Any) -> list[Rule]:
        if data is None:
            return []
        rules_node = data
        if isinstance(data, Mapping):
            self.check_keys(data, ("rules",), "a rule file")
            if "rules" not in data:
                self.error(
                    node_position(data), "R004", "a rule file is a list of rules or 'rules: [...]'"
                )
                return []
            rules_node = data["rules"]
            if rules_node is None:
                return []
        if not isinstance(rules_node, list):
            self.error(
                node_position(data), "R004", "a rule file is a list of rules or 'rules: [...]'"
            )
            return []
        compiled: list[Rule] = []
        for index, node in enumerate(rules_node):
            if not isinstance(node, Mapping):
                self.error(item_position(rules_node, index), "R004", "a rule must be a mapping")
                continue
            rule = self.compile_rule(node, item_position(rules_node, index))
            if rule is not None:
                compiled.append(rule)
        return compiled

    def compile_rule(self, node: Any, position: tuple[int, int] | None) -> Rule | None:
        before = len(self.errors)
        self.check_keys(node, RULE_FIELDS, "a rule")
        rule_id = self.get(node, "id", str, "a rule", required=True)
        if isinstance(rule_id, str):
            self.ids.append((str(rule_id), value_position(node, "id")))
        if isinstance(rule_id, str) and not RULE_ID.match(rule_id):
            self.error(
                value_position(node, "id"),
                "R105",
                f"rule id '{rule_id}' must match [a-z0-9-]+ (lower-case letters, digits, '-')",
            )
        what = f"rule '{rule_id}'" if isinstance(rule_id, str) else "a rule"
        version = self.get(node, "version", int, what, default=1)
        if isinstance(version, int) and version < 0:
            self.error(value_position(node, "version"), "R105", "'version' must be >= 0")
        description = self.get(node, "description", str, what, default="")
        enabled = self.get(node, "enabled", bool, what, default=True)
        key = self.choice(node, "key", KEYS, what, required=True)
        priority = self.get(node, "priority", int, what, default=0)
        group = self.get(node, "group", str, what)
        if isinstance(group, str) and not group.strip():
            self.error(value_position(node, "group"), "R105", "'group' must not be empty")
        cooldown = self.duration(node, "cooldown", what, positive=False)
        consent = self.get(node, "requires_consent", str, what)
        if isinstance(consent, str) and not CONSENT.match(consent):
            self.error(
                value_position(node, "requires_consent"),
                "R105",
                "'requires_consent' must be a consent name such as marketing or service",
            )
        trigger = self.compile_when(node, what)
        action = self.compile_action(node, what, trigger)
        tests = self.compile_tests(node, what)
        if len(self.errors) != before or trigger is None or action is None:
            return None
        action_type, topic, payload = action
        holder: list[Rule] = []
        rule = Rule(
            id=str(rule_id),
            version=int(version),
            key=str(key),
            trigger=trigger,
            action_type=action_type,
            topic=topic,
            payload=payload,
            description=str(description),
            enabled=bool(enabled),
            priority=int(priority),
            group=str(group) if group else None,
            cooldown=cooldown or None,
            requires_consent=str(consent) if consent else None,
            fingerprint=_fingerprint(node),
            file=self.source.path,
            line=(position[0] + 1) if position else 1,
            tests=tests,
        )
        holder.append(rule)
        payload.on_error = lambda: _count_error(holder[0])
        _analyse_usage(rule, payload)
        return rule

    # when ---------------------------------------------------------------------------
    def compile_when(self, rule: Any, what: str) -> Trigger | None:
        when = self.mapping(rule, "when", what, required=True)
        if when is MISSING:
            return None
        present = [key for key in when if key in TRIGGERS]
        self.check_keys(when, tuple(TRIGGERS), "'when'")
        if len(present) != 1:
            found = ", ".join(present) or "none"
            self.error(
                value_position(rule, "when"),
                "R301",
                f"'when' needs exactly one trigger of {', '.join(TRIGGERS)} (found: {found})",
            )
            return None
        return TRIGGERS[present[0]].compile(self, when)

    # action ---------------------------------------------------------------------------
    def compile_action(
        self, rule: Any, what: str, trigger: Trigger | None
    ) -> tuple[str, str, Payload] | None:
        action = self.mapping(rule, "action", what, required=True)
        if action is MISSING:
            return None
        self.check_keys(action, ("type", "topic", "payload"), "'action'")
        action_type = self.choice(action, "type", ACTION_TYPES, "'action'", required=True)
        topic = self.get(action, "topic", str, "'action'")
        if isinstance(topic, str) and not topic.strip():
            self.error(value_position(action, "topic"), "R105", "'topic' must not be empty")
            topic = MISSING
        payload_node = self.get(action, "payload", Mapping, "'action'", default={})
        if payload_node is MISSING:
            return None
        # Names come from the trigger as written, so that a broken trigger
        # does not hide (or invent) errors in the payload.
        extra, window = _declared_names(rule.get("when"))
        try:
            payload = compile_payload(
                to_plain(payload_node),
                ROOT_NAMES | extra,
                window_fields=window,
                step_names=extra,
            )
        except PayloadError as exc:
            for problem in exc.errors:
                container, key = _walk(payload_node, problem.path)
                anchor = _anchor(container, key)
                text = str(container[key])
                self.error(
                    self.source.locate(anchor, text, problem.offset), problem.code, problem.message
                )
            return None
        for expression, (path, start) in zip(payload.expressions, payload.origins, strict=True):
            container, key = _walk(payload_node, path)
            self.check_fields(expression, _anchor(container, key), str(container[key]), start)
        if MISSING in (action_type, topic) or trigger is None:
            return None
        return str(action_type), str(topic or DEFAULT_TOPICS[action_type]), payload

    # tests ---------------------------------------------------------------------------
    def compile_tests(self, rule: Any, what: str) -> list[RuleTest]:
        tests_node = self.get(rule, "tests", list, what, default=[])
        if tests_node is MISSING:
            return []
        tests: list[RuleTest] = []
        for index, node in enumerate(tests_node):
            position = item_position(tests_node, index)
            if not isinstance(node, Mapping):
                self.error(position, "R103", "a test is a mapping with name, events and expect")
                continue
            test = self.compile_test(node, position)
            if test is not None:
                tests.append(test)
        return tests

    def compile_test(self, node: Any, position: tuple[int, int] | None) -> RuleTest | None:
        before = len(self.errors)
        self.check_keys(node, TEST_FIELDS, "a test")
        name = self.get(node, "name", str, "a test", required=True)
        events_node = self.get(node, "events", list, "a test", required=True)
        expect_node = self.get(node, "expect", list, "a test", required=True)
        suppressed_node = self.get(node, "expect_suppressed", list, "a test")
        customer = self.get(node, "customer", Mapping, "a test", default={})
        devices = self.get(node, "devices", Mapping, "a test", default={})
        scores_node = self.get(node, "scores", list, "a test", default=[])
        until = None
        if "until" in node:
            try:
                until = parse_timestamp(to_plain(node["until"]))
            except ValueError as exc:
                self.error(value_position(node, "until"), "R108", str(exc))
        events: list[dict[str, Any]] = []
        if isinstance(events_node, list):
            for index, event in enumerate(events_node):
                if not isinstance(event, Mapping):
                    self.error(
                        item_position(events_node, index), "R103", "an event must be a mapping"
                    )
                    continue
                for required in ("id", "ts"):
                    if required not in event:
                        self.error(
                            item_position(events_node, index),
                            "R102",
                            f"a test event needs '{required}'",
                        )
                plain = to_plain(event)
                if "ts" in plain:
                    try:
                        plain["ts"] = parse_timestamp(plain["ts"])
                    except ValueError as exc:
                        self.error(value_position(event, "ts"), "R108", str(exc))
                events.append(plain)
        expectations = self.compile_expectations(expect_node)
        suppressed = (
            self.compile_expectations(suppressed_node)
            if isinstance(suppressed_node, list)
            else None
        )
        scores = to_plain(scores_node) if isinstance(scores_node, list) else []
        if (
            isinstance(scores_node, list)
            and isinstance(events_node, list)
            and scores
            and len(scores) != len(events_node)
        ):
            self.error(
                value_position(node, "scores"),
                "R401",
                "'scores' needs one entry (a mapping or null) per event",
            )
        if len(self.errors) != before:
            return None
        return RuleTest(
            name=str(name),
            events=events,
            expect=expectations,
            until=until,
            customer=to_plain(customer),
            devices=to_plain(devices),
            scores=scores,
            expect_suppressed=suppressed,
            line=(position[0] + 1) if position else 0,
        )

    def compile_expectations(self, node: Any) -> list[dict[str, Any]]:
        if not isinstance(node, list):
            return []
        expectations: list[dict[str, Any]] = []
        for index, item in enumerate(node):
            if not isinstance(item, Mapping):
                self.error(
                    item_position(node, index), "R103", "an expected firing must be a mapping"
                )
                continue
            self.check_keys(item, EXPECT_FIELDS, "an expected firing")
            plain = to_plain(item)
            if "at" in plain:
                try:
                    plain["at"] = parse_timestamp(plain["at"])
                except ValueError as exc:
                    self.error(value_position(item, "at"), "R108", str(exc))
            expectations.append(plain)
        return expectations


# --------------------------------------------------------------------------- helpers


def _declared_names(when: Any) -> tuple[frozenset[str], frozenset[str]]:
    """(extra names, window fields) the triggers written in ``when`` offer
    templates, read from the YAML even when they do not compile."""
    extra: frozenset[str] = frozenset()
    window: frozenset[str] = frozenset()
    if isinstance(when, Mapping):
        for kind, trigger in TRIGGERS.items():
            if kind in when:
                names, fields = trigger.declared_names(when[kind])
                extra, window = extra | names, window | fields
    return extra, window


def _walk(node: Any, path: tuple[str | int, ...]) -> tuple[Any, Any]:
    """The YAML container and key of the value at ``path``, a key path in the
    payload's plain form (whose mapping keys are strings, as YAML's may not be)."""
    keys = [_yaml_key(node, path[0])]
    for key in path[1:]:
        node = node[keys[-1]]
        keys.append(_yaml_key(node, key))
    return node, keys[-1]


def _yaml_key(node: Any, key: str | int) -> Any:
    if isinstance(node, Mapping) and key not in node:
        return next(k for k in node if str(k) == key)
    return key


def _anchor(container: Any, key: Any) -> tuple[int, int] | None:
    """Where the value ``container[key]`` starts in the file."""
    if isinstance(container, list):
        return item_position(container, key)
    return value_position(container, key)


def _count_error(rule: Rule) -> None:
    rule.errors += 1


def _fingerprint(node: Any) -> str:
    behaviour = {k: v for k, v in to_plain(node).items() if k not in _NOT_BEHAVIOUR}
    encoded = orjson.dumps(behaviour, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _analyse_usage(rule: Rule, payload: Payload) -> None:
    """Which event fields and scores the rule reads, so that stored events
    keep only those fields and evidence names the scores."""
    trigger = rule.trigger
    event_like = {"event", "first", *trigger.extra_names()}
    event_fields: set[str] | None = set(BASE_EVENT_FIELDS)
    score_fields: set[str] | None = set()
    for expression in [*trigger.expressions(), *payload.expressions]:
        for name, fields in expression.usage.items():
            if name in event_like and event_fields is not None:
                if fields is None:
                    event_fields = None
                else:
                    event_fields |= fields
            elif name == "score" and score_fields is not None:
                score_fields = None if fields is None else score_fields | fields
    rule.event_fields = None if event_fields is None else frozenset(event_fields)
    rule.score_fields = None if score_fields is None else frozenset(score_fields)


def _rule_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    return [path]


def compile_sources(sources: list[tuple[Any, SourceFile, list[RuleError]]]) -> RuleSet:
    """Compile parsed files into one rule set; raises :class:`RuleFileError`
    on any error. Warnings do not refuse a file: they are the rule set's
    ``warnings`` (or the error's, with the errors)."""
    errors: list[RuleError] = []
    warnings: list[RuleError] = []
    rules: list[Rule] = []
    files: list[str] = []
    seen: dict[str, RuleError] = {}
    for data, source, load_errors in sources:
        files.append(source.path)
        if load_errors:
            errors.extend(load_errors)
            continue
        compiler = _FileCompiler(source)
        rules.extend(compiler.compile_document(data))
        for rule_id, position in compiler.ids:
            where = source.error(position, "R106", "")
            if rule_id in seen:
                first = seen[rule_id]
                compiler.errors.append(
                    source.error(
                        position,
                        "R106",
                        f"duplicate rule id '{rule_id}' "
                        f"(first defined at {first.file}:{first.line}:{first.col})",
                    )
                )
            else:
                seen[rule_id] = where
        errors.extend(sorted(compiler.errors, key=lambda e: (e.line, e.col)))
        warnings.extend(sorted(compiler.warnings, key=lambda e: (e.line, e.col)))
    if errors:
        raise RuleFileError(errors, warnings, files)
    return RuleSet(
        [rule for rule in rules if rule.enabled],
        disabled=[rule for rule in rules if not rule.enabled],
        files=files,
        warnings=warnings,
    )


def load_ruleset(path: str | Path | Sequence[str | Path]) -> RuleSet:
    """Load and compile rule files: a file, a folder (its ``*.yaml`` and
    ``*.yml``), or a list of them. Raises :class:`RuleFileError` listing every
    error as ``file:line:col: error[CODE]: message``."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    sources: list[tuple[Any, SourceFile, list[RuleError]]] = []
    for item in paths:
        item = Path(item)
        if not item.exists():
            source = SourceFile(str(item), "")
            sources.append((None, source, [source.error(None, "R001", "no such file or folder")]))
            continue
        for file in _rule_files(item):
            sources.append(load_yaml(file))
    return compile_sources(sources)


def compile_rules(text: str, name: str = "<rules>") -> RuleSet:
    """Compile the rule file ``text`` (named ``name`` in errors)."""
    return compile_sources([parse_yaml(text, name)])


__all__ = [
    "ACTION_TYPES",
    "DEFAULT_TOPICS",
    "Expression",
    "compile_rules",
    "compile_sources",
    "load_ruleset",
]
