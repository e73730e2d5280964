"""``absence``: an expected follow-up event that did not come."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from engine.rules.checks import MISSING
from engine.rules.expr import (
    EMPTY,
    ROOT_NAMES,
    Expression,
    intersect_requirements,
    union_requirements,
)
from engine.rules.runtime import Match
from engine.rules.triggers.base import Trigger

if TYPE_CHECKING:
    from engine.rules.checks import Checker
    from engine.rules.model import Rule
    from engine.rules.runtime import Run

#: Open watches kept per rule and key; beyond it the oldest is dropped.
MAX_WATCHES = 1000

# A watch is [due, started_at, event, event_id, scores].
_DUE, _START, _EVENT, _ID, _SCORES = range(5)


class AbsenceTrigger(Trigger):
    """``absence: {after, missing, within, correlate?}``.

    Each event matching ``after`` at time t starts its own watch; an event in
    [t, t + within) matching ``missing`` (and ``correlate``, which sees the
    first event as ``first``) ends it; otherwise the rule fires at t + within.
    State: ``{"w": [watch, ...]}`` sorted by due time.
    """

    kind: ClassVar[str] = "absence"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["after", "missing", "within"],
        "properties": {
            "after": {"$ref": "#/$defs/expression"},
            "missing": {"$ref": "#/$defs/expression"},
            "within": {"$ref": "#/$defs/duration"},
            "correlate": {"$ref": "#/$defs/expression"},
        },
    }

    def __init__(
        self,
        after: Expression,
        missing: Expression,
        within: float,
        correlate: Expression | None = None,
    ) -> None:
        self.after = after
        self.missing = missing
        self.within = within
        self.correlate = correlate
        # When neither refers to `first`, one evaluation serves every watch.
        self._per_watch = "first" in missing.usage or (
            correlate is not None and "first" in correlate.usage
        )

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        spec = check.mapping(when, cls.kind, "'when'")
        if spec is MISSING:
            return None
        check.check_keys(spec, ("after", "missing", "within", "correlate"), "'absence'")
        with_first = ROOT_NAMES | {"first"}
        after = check.expression(spec, "after", "'absence'")
        missing = check.expression(spec, "missing", "'absence'", names=with_first)
        correlate = check.expression(
            spec, "correlate", "'absence'", names=with_first, required=False
        )
        within = check.duration(spec, "within", "'absence'", required=True)
        if MISSING in (after, missing, correlate, within):
            return None
        return cls(after, missing, within, correlate)

    @classmethod
    def declared_names(cls, spec: Any) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset({"first"}), frozenset()

    def expressions(self) -> list[Expression]:
        extra = [self.correlate] if self.correlate is not None else []
        return [self.after, self.missing, *extra]

    def requirement(self) -> dict[str, frozenset[Any]]:
        closing = [self.missing.requirement]
        if self.correlate is not None:
            closing.append(self.correlate.requirement)
        return union_requirements([self.after.requirement, intersect_requirements(closing)])

    def extra_names(self) -> frozenset[str]:
        return frozenset({"first"})

    def _closes(self, rule: Rule, run: Run, watch: list[Any]) -> bool:
        scope = run.scope
        scope.names = {"first": watch[_EVENT]}
        try:
            if not run.truth(rule, self.missing.evaluate, scope):
                return False
            return self.correlate is None or run.truth(rule, self.correlate.evaluate, scope)
        finally:
            scope.names = EMPTY

    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        scope = run.scope
        state = run.state(rule)
        watches: list[list[Any]] = state["w"] if state is not None else []
        if watches and (
            self._per_watch
            or (
                run.truth(rule, self.missing.evaluate, scope)
                and (self.correlate is None or run.truth(rule, self.correlate.evaluate, scope))
            )
        ):
            kept = [
                watch
                for watch in watches
                if not (
                    watch[_START] <= ts < watch[_DUE]
                    and (not self._per_watch or self._closes(rule, run, watch))
                )
            ]
            if len(kept) != len(watches):
                watches[:] = kept
        if run.truth(rule, self.after.evaluate, scope):
            watch = [
                ts + self.within,
                ts,
                run.project(rule, event),
                event.get("id"),
                rule.project_scores(scope.score),
            ]
            if state is None:
                state = run.create_state(rule, {"w": watches})
            bisect.insort(watches, watch, key=lambda w: w[_DUE])
            if len(watches) > MAX_WATCHES:
                del watches[0]
        if state is None:
            return
        if watches:
            run.set_due(rule, watches[0][_DUE])
        else:
            run.drop_state(rule)

    def on_timer(self, rule: Rule, run: Run, due: float) -> None:
        state = run.state(rule)
        watches: list[list[Any]] = state["w"] if state is not None else []
        while watches and watches[0][_DUE] <= due:
            watch = watches.pop(0)
            context = watch[_EVENT]
            run.out.append(
                Match(
                    rule,
                    run,
                    watch[_DUE],
                    [watch[_ID]],
                    event=context,
                    score=watch[_SCORES],
                    evidence={"after": watch[_ID], "within": self.within},
                    bounds=[watch[_START], watch[_DUE]],
                    names={"first": context},
                    device_id=context.get("device_id"),
                )
            )
        if watches:
            run.set_due(rule, watches[0][_DUE])
        else:
            run.drop_state(rule)
