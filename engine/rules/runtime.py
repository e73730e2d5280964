"""What triggers work with while the engine processes one step (an event, or
timers due at one instant): the key's state, the scope, and where matches go.

Per-key state is plain data (JSON / msgpack serialisable)::

    {"t": 1200.0,          # stream time: the largest event time seen for the key
     "m": 1800.0,          # lower bound of the earliest timer (None: no timer)
     "due": {rule: t},     # each rule's earliest pending timer
     "r": {rule: {...}},   # each rule's trigger state
     "cd": {rule: t},      # cooldown: no action before t
     "a": {rule: 1}}       # rules that must see every event of the key for now

Rules are named by their ``state_key`` (``<id>@<fingerprint>``), so the state
of a rule whose definition changed is never mistaken for the new rule's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.rules.expr import Evaluator, Scope

if TYPE_CHECKING:
    from engine.rules.model import Rule

#: Event ids kept as evidence of one firing (the first and the most recent).
MAX_EVIDENCE_IDS = 100


def new_key_state(ts: float | None) -> dict[str, Any]:
    # "s": the key's own arrival counter, which orders events of equal time
    # in its windows (a device's counter depends on its events alone).
    return {"t": ts, "m": None, "due": {}, "r": {}, "cd": {}, "a": {}, "s": 0}


def append_id(ids: list[Any], event_id: Any) -> None:
    """Append, keeping the first id and the most recent ones."""
    ids.append(event_id)
    if len(ids) > MAX_EVIDENCE_IDS:
        del ids[1]


class Match:
    """A trigger that fired, before cooldown, consent and group are applied."""

    __slots__ = (
        "at",
        "bounds",
        "device_id",
        "event",
        "event_ids",
        "evidence",
        "names",
        "rule",
        "run",
        "score",
        "window",
    )

    def __init__(
        self,
        rule: Rule,
        run: Run,
        at: float,
        event_ids: list[Any],
        *,
        event: Mapping[str, Any],
        score: Mapping[str, Any] | None,
        evidence: dict[str, Any],
        bounds: list[float] | None = None,
        window: Mapping[str, Any] | None = None,
        names: Mapping[str, Any] | None = None,
        device_id: Any = None,
    ) -> None:
        self.rule = rule
        self.run = run
        self.at = at
        self.event_ids = event_ids
        self.event = event
        self.score = score
        self.evidence = evidence
        self.bounds = bounds
        self.window = window
        self.names = names
        self.device_id = device_id


class LateEvent:
    """An event a window rejected: its window had closed (see ``grace``)."""

    __slots__ = ("event_id", "key", "key_kind", "rule_id", "ts")

    def __init__(self, rule_id: str, key_kind: str, key: str, event_id: Any, ts: float) -> None:
        self.rule_id = rule_id
        self.key_kind = key_kind
        self.key = key
        self.event_id = event_id
        self.ts = ts

    def __repr__(self) -> str:
        return (
            f"LateEvent(rule_id={self.rule_id!r}, key_kind={self.key_kind!r}, "
            f"key={self.key!r}, event_id={self.event_id!r}, ts={self.ts!r})"
        )


class Run:
    """One key during one step: its state, the scope of the current event (or
    the timer instant), and the list the step's matches go to."""

    __slots__ = (
        "customer",
        "device",
        "key",
        "key_kind",
        "ks",
        "late",
        "out",
        "projections",
        "scope",
        "seq",
    )

    def __init__(
        self,
        ks: dict[str, Any],
        key_kind: str,
        key: str,
        customer: Mapping[str, Any],
        device: Mapping[str, Any],
        late: list[LateEvent],
        scope: Scope | None = None,
        out: list[Match] | None = None,
        seq: int = 0,
    ) -> None:
        self.ks = ks
        self.key_kind = key_kind
        self.key = key
        self.customer = customer
        self.device = device
        self.late = late
        # An event's runs get its scope and match list at once: no throwaway Scope().
        self.out: list[Match] = [] if out is None else out
        self.scope: Scope = Scope() if scope is None else scope
        self.seq = seq
        self.projections: dict[frozenset[str] | None, dict[str, Any]] = {}

    # timers -----------------------------------------------------------------
    def set_due(self, rule: Rule, due: float) -> None:
        ks = self.ks
        ks["due"][rule.state_key] = due
        bound = ks["m"]
        if bound is None or due < bound:
            ks["m"] = due

    def clear_due(self, rule: Rule) -> None:
        # The bound "m" may stay low: it is only a hint that a scan is needed.
        self.ks["due"].pop(rule.state_key, None)

    # state ------------------------------------------------------------------
    def state(self, rule: Rule) -> dict[str, Any] | None:
        return self.ks["r"].get(rule.state_key)

    def create_state(self, rule: Rule, initial: dict[str, Any]) -> dict[str, Any]:
        self.ks["r"][rule.state_key] = initial
        return initial

    def drop_state(self, rule: Rule) -> None:
        self.ks["r"].pop(rule.state_key, None)
        self.ks["a"].pop(rule.state_key, None)
        self.ks["due"].pop(rule.state_key, None)

    def watch_all(self, rule: Rule, on: bool) -> None:
        """While on, the rule sees every event of the key, not only those its
        index entry selects (a sustained condition turning false, a strict
        sequence broken by an unrelated event)."""
        if on:
            self.ks["a"][rule.state_key] = 1
        else:
            self.ks["a"].pop(rule.state_key, None)

    def project(self, rule: Rule, event: Mapping[str, Any]) -> dict[str, Any]:
        """``rule.project(event)``, shared by the rules of this step that keep
        the same fields (stored events are never changed, so sharing is safe)."""
        projections = self.projections
        projected = projections.get(rule.event_fields)
        if projected is None or projected.get("id") != event.get("id"):
            projected = projections[rule.event_fields] = rule.project(event)
        return projected

    # evaluation -------------------------------------------------------------
    def truth(self, rule: Rule, condition: Evaluator, scope: Scope) -> bool:
        try:
            return bool(condition(scope))
        except Exception:
            rule.errors += 1
            return False

    def value(self, rule: Rule, expression: Evaluator, scope: Scope) -> Any:
        try:
            return expression(scope)
        except Exception:
            rule.errors += 1
            return None

    def mark_late(self, rule: Rule, event: Mapping[str, Any], ts: float) -> None:
        self.late.append(LateEvent(rule.id, self.key_kind, self.key, event.get("id"), ts))
