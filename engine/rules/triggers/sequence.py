"""``sequence``: steps that must happen in order within a time bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from engine.rules.checks import MISSING, NAME
from engine.rules.expr import EMPTY, FUNCTIONS, ROOT_NAMES, Expression, union_requirements
from engine.rules.runtime import Match
from engine.rules.source import item_position, value_position
from engine.rules.triggers.base import Trigger

if TYPE_CHECKING:
    from engine.rules.checks import Checker
    from engine.rules.model import Rule
    from engine.rules.runtime import Run

#: Open partial matches kept per rule and key; beyond it the oldest is dropped.
MAX_PARTIALS = 256

CONTIGUITY = ("relaxed", "strict", "any")
SKIP = ("past_last_event", "none")

# A partial match is [started_at, next_step, {step name: event}, [event ids]].
_START, _NEXT, _STEPS, _IDS = range(4)


@dataclass(frozen=True)
class Step:
    name: str
    condition: Expression


class SequenceTrigger(Trigger):
    """``sequence: {steps, within, every, contiguity, skip}``.

    - ``within`` is half-open: a match must complete at ts < t_first + within.
    - ``every: false``: at most one partial match is open; events matching the
      first step start nothing while it is; the next one after it completed
      or timed out starts one. ``every: true``: every event matching the first
      step starts its own partial match; the oldest completes first.
    - ``contiguity``: ``relaxed`` ignores events in between; ``strict`` drops
      a partial match when the key's next event does not match its next step;
      ``any`` keeps a partial match open after an event extends it, so every
      combination completes.
    - ``skip: past_last_event`` discards every other partial match when one
      completes, and the completing event starts nothing; ``skip: none``
      keeps them.

    State: ``{"p": [partial, ...]}``, oldest first; absent when none is open.
    """

    kind: ClassVar[str] = "sequence"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["steps", "within"],
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["as", "condition"],
                    "properties": {
                        "as": {"type": "string", "pattern": NAME.pattern},
                        "condition": {"$ref": "#/$defs/expression"},
                    },
                },
            },
            "within": {"$ref": "#/$defs/duration"},
            "every": {"type": "boolean", "default": False},
            "contiguity": {"enum": list(CONTIGUITY), "default": CONTIGUITY[0]},
            "skip": {"enum": list(SKIP), "default": SKIP[0]},
        },
    }

    def __init__(
        self,
        steps: list[Step],
        within: float,
        every: bool = False,
        contiguity: str = "relaxed",
        skip: str = "past_last_event",
    ) -> None:
        self.steps = steps
        self.within = within
        self.every = every
        self.contiguity = contiguity
        self.skip_past_last = skip == "past_last_event"
        self.names = frozenset(step.name for step in steps)

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        spec = check.mapping(when, cls.kind, "'when'")
        if spec is MISSING:
            return None
        check.check_keys(spec, ("steps", "within", "every", "contiguity", "skip"), "'sequence'")
        within = check.duration(spec, "within", "'sequence'", required=True)
        every = check.get(spec, "every", bool, "'sequence'", default=False)
        contiguity = check.choice(spec, "contiguity", CONTIGUITY, "'sequence'", default="relaxed")
        skip = check.choice(spec, "skip", SKIP, "'sequence'", default="past_last_event")
        steps_node = check.get(spec, "steps", list, "'sequence'", required=True)
        if steps_node is MISSING:
            return None
        if not steps_node:
            check.error(value_position(spec, "steps"), "R304", "'steps' needs at least one step")
            return None
        names: list[str] = []
        for index, step in enumerate(steps_node):
            name = step.get("as") if isinstance(step, Mapping) else None
            names.append(name if isinstance(name, str) else f"step{index}")
        all_names = frozenset(names)
        steps: list[Step] = []
        ok = True
        for index, step in enumerate(steps_node):
            if not isinstance(step, Mapping):
                check.error(
                    item_position(steps_node, index),
                    "R103",
                    "a step is {as: NAME, condition: EXPR}",
                )
                ok = False
                continue
            check.check_keys(step, ("as", "condition"), "a sequence step")
            name = check.get(step, "as", str, "a sequence step", required=True)
            if isinstance(name, str):
                problem = _bad_step_name(name, names[:index])
                if problem:
                    check.error(value_position(step, "as"), "R304", problem)
                    ok = False
            else:
                ok = False
            earlier = frozenset(names[:index])
            condition = check.expression(
                step,
                "condition",
                "a sequence step",
                names=ROOT_NAMES | earlier,
                window_fields=earlier,
                step_names=all_names,
            )
            if condition is MISSING:
                ok = False
                continue
            steps.append(Step(names[index], condition))
        if not ok or MISSING in (within, every, contiguity, skip):
            return None
        return cls(steps, within, every, contiguity, skip)

    @classmethod
    def declared_names(cls, spec: Any) -> tuple[frozenset[str], frozenset[str]]:
        if not isinstance(spec, Mapping):
            return frozenset(), frozenset()
        steps = spec.get("steps")
        names = frozenset(
            str(step["as"])
            for step in (steps if isinstance(steps, list) else [])
            if isinstance(step, Mapping) and isinstance(step.get("as"), str)
        )
        return names, names

    def expressions(self) -> list[Expression]:
        return [step.condition for step in self.steps]

    def requirement(self) -> dict[str, frozenset[Any]]:
        return union_requirements([step.condition.requirement for step in self.steps])

    def window_names(self) -> frozenset[str] | None:
        return self.names

    def extra_names(self) -> frozenset[str]:
        return self.names

    def _complete(self, rule: Rule, run: Run, partial: list[Any], event: Mapping[str, Any]) -> None:
        steps: dict[str, Any] = dict(partial[_STEPS])
        steps[self.steps[-1].name] = event
        ids = [*partial[_IDS], event.get("id")]
        ts = event["ts"]
        run.out.append(
            Match(
                rule,
                run,
                ts,
                ids,
                event=event,
                score=run.scope.score,
                evidence={
                    "steps": {name: step.get("id") for name, step in steps.items()},
                    "started_at": partial[_START],
                },
                window=steps,
                names=steps,
                device_id=event.get("device_id"),
            )
        )

    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        scope = run.scope
        state = run.state(rule)
        partials: list[list[Any]] = state["p"] if state is not None else []
        if partials:
            partials = [p for p in partials if ts < p[_START] + self.within]
        consumed = False
        completed: list[list[Any]] = []
        if partials:
            kept: list[list[Any]] = []
            last = len(self.steps) - 1
            for partial in partials:
                step = self.steps[partial[_NEXT]]
                scope.names = partial[_STEPS]
                matched = run.truth(rule, step.condition.evaluate, scope)
                if not matched:
                    if self.contiguity != "strict":
                        kept.append(partial)
                    continue
                consumed = True
                if self.contiguity == "any":
                    kept.append(partial)
                if partial[_NEXT] == last:
                    completed.append(partial)
                    continue
                grown = partial if self.contiguity != "any" else _copy(partial)
                grown[_STEPS] = {**grown[_STEPS], step.name: run.project(rule, event)}
                grown[_IDS] = [*grown[_IDS], event.get("id")]
                grown[_NEXT] += 1
                kept.append(grown)
            scope.names = EMPTY
            partials = kept
        if completed:
            if self.skip_past_last:
                self._complete(rule, run, completed[0], event)
                partials = []
            else:
                for partial in completed:
                    self._complete(rule, run, partial, event)
        starts = not (completed and self.skip_past_last) and (
            self.every or (not partials and not consumed)
        )
        if starts and run.truth(rule, self.steps[0].condition.evaluate, scope):
            if len(self.steps) == 1:
                self._complete(rule, run, [ts, 0, {}, []], event)
            else:
                partials.append(
                    [ts, 1, {self.steps[0].name: run.project(rule, event)}, [event.get("id")]]
                )
                if len(partials) > MAX_PARTIALS:
                    del partials[0]
        if partials:
            if state is None:
                run.create_state(rule, {"p": partials})
                if self.contiguity == "strict":
                    run.watch_all(rule, True)
            else:
                state["p"] = partials
        elif state is not None:
            run.drop_state(rule)


def _copy(partial: list[Any]) -> list[Any]:
    return [partial[_START], partial[_NEXT], partial[_STEPS], partial[_IDS]]


def _bad_step_name(name: str, earlier: list[str]) -> str | None:
    if not NAME.match(name) or name.startswith("__"):
        return f"step name '{name}' must be an identifier (letters, digits, '_')"
    if name in ROOT_NAMES or name in FUNCTIONS or name == "first":
        return f"step name '{name}' is reserved"
    if name in earlier:
        return f"duplicate step name '{name}'"
    return None
