"""Triggers over single events: ``condition``, ``sustained`` and ``silence``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from engine.rules.checks import MISSING
from engine.rules.expr import Evaluator, Expression
from engine.rules.runtime import Match, append_id
from engine.rules.triggers.base import Trigger

if TYPE_CHECKING:
    from engine.rules.checks import Checker
    from engine.rules.model import Rule
    from engine.rules.runtime import Run


class ConditionTrigger(Trigger):
    """``condition: EXPR``: fires on every event for which EXPR is true."""

    kind: ClassVar[str] = "condition"
    schema: ClassVar[dict[str, Any]] = {"$ref": "#/$defs/expression"}

    def __init__(self, condition: Expression) -> None:
        self.condition = condition
        # The rule index checks an exact condition before offering an event.
        self._test = None if condition.exact else condition.evaluate

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        condition = check.expression(when, cls.kind, "'when'")
        return None if condition is MISSING else cls(condition)

    def expressions(self) -> list[Expression]:
        return [self.condition]

    def requirement(self) -> dict[str, frozenset[Any]]:
        return self.condition.requirement

    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        scope = run.scope
        test = self._test
        if test is not None:
            try:
                if not test(scope):
                    return
            except Exception:
                rule.errors += 1
                return
        run.out.append(
            Match(
                rule,
                run,
                ts,
                [event.get("id")],
                event=event,
                score=scope.score,
                evidence={},
                device_id=event.get("device_id"),
            )
        )


class SustainedTrigger(Trigger):
    """``sustained: {condition, for, filter?}``.

    The first event where the condition is true at t0 starts a timer due at
    t0 + for; an event where it is false cancels it; the timer firing fires the
    rule once, and it fires again only after the condition was false and then
    true again. With ``filter``, events the filter rejects are ignored (they
    neither cancel nor re-arm); without it every event of the key counts.

    State: ``{"s": t0, "ids": [...], "e": event, "sc": scores}`` while
    running, ``{"f": 1}`` once fired; absent when idle.
    """

    kind: ClassVar[str] = "sustained"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["condition", "for"],
        "properties": {
            "condition": {"$ref": "#/$defs/expression"},
            "for": {"$ref": "#/$defs/duration"},
            "filter": {"$ref": "#/$defs/expression"},
        },
    }

    def __init__(
        self, condition: Expression, duration: float, filter: Expression | None = None
    ) -> None:
        self.condition = condition
        self.duration = duration
        self.filter = filter
        self._filter = _residual(filter)
        self._condition = condition.evaluate

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        spec = check.mapping(when, cls.kind, "'when'")
        if spec is MISSING:
            return None
        check.check_keys(spec, ("condition", "for", "filter"), "'sustained'")
        condition = check.expression(spec, "condition", "'sustained'")
        duration = check.duration(spec, "for", "'sustained'", required=True)
        filter_ = check.expression(spec, "filter", "'sustained'", required=False)
        if MISSING in (condition, duration, filter_):
            return None
        return cls(condition, duration, filter_)

    def expressions(self) -> list[Expression]:
        return [self.condition] + ([self.filter] if self.filter is not None else [])

    def requirement(self) -> dict[str, frozenset[Any]]:
        if self.filter is not None:
            return self.filter.requirement
        # Idle, only a true condition matters; busy, the rule asks to see all events.
        return self.condition.requirement

    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        scope = run.scope
        try:
            if self._filter is not None and not self._filter(scope):
                return
            holds = self._condition(scope)
        except Exception:
            rule.errors += 1
            holds = False
        state = run.ks["r"].get(rule.state_key)
        if not holds:
            if state is not None:
                run.drop_state(rule)
            return
        if state is None:
            run.create_state(
                rule,
                {
                    "s": ts,
                    "ids": [event.get("id")],
                    "e": run.project(rule, event),
                    "sc": rule.project_scores(scope.score),
                },
            )
            run.set_due(rule, ts + self.duration)
            if self.filter is None:
                run.watch_all(rule, True)
        elif "f" not in state:
            append_id(state["ids"], event.get("id"))
            state["e"] = run.project(rule, event)
            state["sc"] = rule.project_scores(scope.score)

    def on_timer(self, rule: Rule, run: Run, due: float) -> None:
        run.clear_due(rule)
        state = run.state(rule)
        if state is None or "f" in state:
            return
        context = state["e"]
        run.out.append(
            Match(
                rule,
                run,
                due,
                list(state["ids"]),
                event=context,
                score=state["sc"],
                evidence={"since": state["s"], "for": self.duration},
                bounds=[state["s"], due],
                device_id=context.get("device_id"),
            )
        )
        run.create_state(rule, {"f": 1})


class SilenceTrigger(Trigger):
    """``silence: {for, filter?}``: a watchdog per key that fires when no
    (matching) event arrived for ``for``; re-armed by every event and after
    every firing. State: ``{"last": ts, "id": id, "e": event, "sc": scores}``.
    """

    kind: ClassVar[str] = "silence"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["for"],
        "properties": {
            "for": {"$ref": "#/$defs/duration"},
            "filter": {"$ref": "#/$defs/expression"},
        },
    }

    def __init__(self, duration: float, filter: Expression | None = None) -> None:
        self.duration = duration
        self.filter = filter
        self._filter = _residual(filter)

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        spec = check.mapping(when, cls.kind, "'when'")
        if spec is MISSING:
            return None
        check.check_keys(spec, ("for", "filter"), "'silence'")
        duration = check.duration(spec, "for", "'silence'", required=True)
        filter_ = check.expression(spec, "filter", "'silence'", required=False)
        if MISSING in (duration, filter_):
            return None
        return cls(duration, filter_)

    def expressions(self) -> list[Expression]:
        return [self.filter] if self.filter is not None else []

    def requirement(self) -> dict[str, frozenset[Any]]:
        return self.filter.requirement if self.filter is not None else {}

    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        scope = run.scope
        if self._filter is not None and not run.truth(rule, self._filter, scope):
            return
        state = run.ks["r"].get(rule.state_key)
        if state is None:
            state = run.create_state(rule, {})
        elif ts < state["last"]:
            return  # an older event does not move the watchdog back
        state["last"] = ts
        state["id"] = event.get("id")
        state["e"] = run.project(rule, event)
        fields = rule.score_fields
        # project_scores and set_due, inlined: a watchdog is re-armed by every event
        state["sc"] = {} if fields is not None and not fields else rule.project_scores(scope.score)
        due = ts + self.duration
        ks = run.ks
        ks["due"][rule.state_key] = due
        bound = ks["m"]
        if bound is None or due < bound:
            ks["m"] = due

    def on_timer(self, rule: Rule, run: Run, due: float) -> None:
        state = run.state(rule)
        if state is None:
            run.clear_due(rule)
            return
        context = state["e"]
        run.out.append(
            Match(
                rule,
                run,
                due,
                [state["id"]],
                event=context,
                score=state["sc"],
                evidence={"silent_since": state["last"], "for": self.duration},
                bounds=[state["last"], due],
                device_id=context.get("device_id"),
            )
        )
        run.set_due(rule, due + self.duration)


def _residual(filter: Expression | None) -> Evaluator | None:
    """What is left to evaluate of a filter once the rule index has checked
    its requirement: nothing when the filter is exact."""
    if filter is None or filter.exact:
        return None
    return filter.evaluate
