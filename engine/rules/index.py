"""Which rules can an event concern? An index over the event-field values rules
require (``event.kind == 'error'``, ``event.device_type in ('washer', ...)``),
extracted from their expressions at compile time.

Each rule is filed under one of its required fields (the one whose bucket is
smallest); the candidates of an event are the rules in the buckets of its
values plus the rules that require nothing, filtered by their full
requirements and kept in evaluation order. Results are memoised per
combination of indexed values, so a steady stream costs one tuple and one
dict lookup per event, however many rules there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.rules.model import Rule

#: Distinct value combinations memoised before the memo is reset.
MEMO_LIMIT = 4096


class RuleIndex:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._requirements: list[dict[str, frozenset[Any]]] = [
            rule.trigger.requirement() for rule in self.rules
        ]
        popularity: dict[tuple[str, Any], int] = {}
        for requirement in self._requirements:
            for field_name, values in requirement.items():
                for value in values:
                    popularity[(field_name, value)] = popularity.get((field_name, value), 0) + 1
        self._unconstrained: list[int] = []
        self._buckets: dict[str, dict[Any, list[int]]] = {}
        for position, requirement in enumerate(self._requirements):
            if not requirement:
                self._unconstrained.append(position)
                continue
            field_name = min(
                requirement,
                key=lambda f: (sum(popularity[(f, v)] for v in requirement[f]), f),
            )
            bucket = self._buckets.setdefault(field_name, {})
            for value in requirement[field_name]:
                bucket.setdefault(value, []).append(position)
        self.fields: tuple[str, ...] = tuple(
            sorted({f for requirement in self._requirements for f in requirement})
        )
        self._memo: dict[Any, tuple[Rule, ...]] = {}

    def candidates(self, event: Mapping[str, Any]) -> tuple[Rule, ...]:
        """The rules ``event`` may concern, in evaluation order."""
        fields = self.fields
        if len(fields) == 1:
            key: Any = event.get(fields[0])
        else:
            key = tuple(map(event.get, fields))
        try:
            return self._memo[key]
        except KeyError:
            found = self._compute(event)
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
            return found
        except TypeError:  # an unhashable field value
            return self._compute(event)

    def _compute(self, event: Mapping[str, Any]) -> tuple[Rule, ...]:
        positions = set(self._unconstrained)
        for field_name, bucket in self._buckets.items():
            value = event.get(field_name)
            try:
                positions.update(bucket.get(value, ()))
            except TypeError:
                continue
        chosen = []
        for position in sorted(positions):
            requirement = self._requirements[position]
            if all(_allowed(event.get(f), values) for f, values in requirement.items()):
                chosen.append(self.rules[position])
        return tuple(chosen)


def _allowed(value: Any, values: frozenset[Any]) -> bool:
    try:
        return value in values
    except TypeError:
        return False
