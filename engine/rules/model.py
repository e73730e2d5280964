"""Compiled rules and rule sets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.rules.errors import RuleError
from engine.rules.template import Payload
from engine.rules.triggers.base import Trigger

#: Event fields every stored event keeps, whatever the rule reads.
BASE_EVENT_FIELDS: frozenset[str] = frozenset({"id", "ts", "device_id", "customer_id"})


@dataclass(frozen=True)
class RuleTest:
    """One embedded test of a rule (``tests:`` in the rule file)."""

    name: str
    events: list[dict[str, Any]]
    expect: list[dict[str, Any]]
    until: float | None = None
    customer: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: list[dict[str, Any] | None] = field(default_factory=list)
    expect_suppressed: list[dict[str, Any]] | None = None
    line: int = 0


@dataclass(eq=False)
class Rule:
    """A compiled rule. ``errors`` counts runtime evaluation errors (a
    condition or template that raised: treated as false / null)."""

    id: str
    version: int
    key: str
    trigger: Trigger
    action_type: str
    topic: str
    payload: Payload
    description: str = ""
    enabled: bool = True
    priority: int = 0
    group: str | None = None
    cooldown: float | None = None
    requires_consent: str | None = None
    fingerprint: str = ""
    file: str = ""
    line: int = 0
    tests: list[RuleTest] = field(default_factory=list)
    #: Event fields kept when an event is stored (None: the whole event).
    event_fields: frozenset[str] | None = BASE_EVENT_FIELDS
    #: Model scores the rule reads, reported as evidence (None: all of them).
    score_fields: frozenset[str] | None = frozenset()
    order: int = 0
    errors: int = 0
    #: Name of the rule's entries in per-key state: id and definition.
    state_key: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.state_key = f"{self.id}@{self.fingerprint[:12]}"

    def project(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``event`` the rule needs later (stored in its state)."""
        fields = self.event_fields
        if fields is None:
            return dict(event)
        return {name: event[name] for name in fields if name in event}

    def project_scores(self, score: Mapping[str, Any]) -> dict[str, Any]:
        fields = self.score_fields
        if fields is None:
            return dict(score)
        if not fields:
            return {}
        return {name: score.get(name) for name in fields}


@dataclass
class RuleSet:
    """The enabled rules of one or more files, in evaluation order (higher
    ``priority`` first, then file order), plus the disabled ones (kept for
    ``iotcrm rules test``), and the warnings their files gave."""

    rules: list[Rule]
    disabled: list[Rule] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    warnings: list[RuleError] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rules.sort(key=lambda rule: -rule.priority)
        for position, rule in enumerate(self.rules):
            rule.order = position
        self._by_id = {rule.id: rule for rule in self.rules}

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def all_rules(self) -> list[Rule]:
        """Enabled and disabled rules, in file order."""
        return sorted(
            self.rules + self.disabled,
            key=lambda r: (self.files.index(r.file) if r.file in self.files else 0, r.line),
        )
