"""The rule evaluator: per-key state as plain data, timers, cooldown, consent,
priority and groups, rendered actions.

One :class:`RuleEngine` serves many customers; each customer actor owns one
state (``engine.new_state()``) holding its customer-keyed rule state and the
device-keyed rule state of each of its devices.

>>> from engine.rules.compiler import compile_rules
>>> engine = RuleEngine(compile_rules('''
... - id: hot
...   key: device
...   when: {condition: "event.temperature > 90"}
...   action: {type: support_case, payload: {temp: "{{ event.temperature }}"}}
... '''))
>>> state = engine.new_state()
>>> event = {"id": "e1", "ts": 10.0, "device_id": "d1", "customer_id": "c1", "temperature": 95}
>>> [(f.rule_id, f.key, f.at, f.payload) for f in engine.process(state, event)]
[('hot', 'd1', 10.0, {'temp': 95})]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from engine.rules.expr import EMPTY, Scope
from engine.rules.index import RuleIndex
from engine.rules.model import Rule, RuleSet
from engine.rules.runtime import LateEvent, Match, Run, new_key_state

#: Version of the state layout; a state of another version is started afresh.
STATE_VERSION = 1
#: Timers fired by one process/advance call at most.
MAX_TIMERS_PER_CALL = 100_000


class Firing(msgspec.Struct, kw_only=True):
    """A rule that fired for a key. ``suppressed`` says why it must not be
    emitted (``"cooldown"``, ``"consent:<name>"``, ``"group"``); emitted
    firings have ``suppressed=None``. ``device_id`` is the device a firing is
    about: the key of a device rule; for a customer rule the device of the
    event that triggered it (None for a closed window or session)."""

    rule_id: str
    rule_version: int
    key_kind: str
    key: str
    at: float
    event_ids: list[Any]
    action_type: str
    topic: str
    payload: dict[str, Any]
    evidence: dict[str, Any]
    action_id: str
    device_id: str | None = None
    suppressed: str | None = None


def action_id(
    rule_id: str,
    version: int,
    key_kind: str,
    key: str,
    event_ids: list[Any],
    bounds: list[float] | None,
) -> str:
    """A stable id: the same trigger (rule, version, key, event ids or window
    bounds) always gives the same id, so a replay produces the same actions.

    >>> action_id("r", 1, "device", "d1", ["e1"], None)
    '911d7fc0c830c097cbd0ddc84021e077'

    """
    material = orjson.dumps([rule_id, version, key_kind, key, event_ids, bounds])
    return hashlib.blake2b(material, digest_size=16).hexdigest()


class RuleEngine:
    """Evaluates a :class:`RuleSet` against events and time."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._by_id: dict[str, Rule] = {rule.id: rule for rule in ruleset.rules}
        self._by_state_key: dict[str, Rule] = {rule.state_key: rule for rule in ruleset.rules}
        #: Names the rule set; a state stamped with it needs no adoption.
        self.signature = hashlib.blake2b(
            orjson.dumps(sorted(self._by_state_key)), digest_size=8
        ).hexdigest()
        self._index = RuleIndex(ruleset.rules)
        self._has_device_rules = any(rule.key == "device" for rule in ruleset.rules)
        self._has_customer_rules = any(rule.key == "customer" for rule in ruleset.rules)
        self._late: list[LateEvent] = []

    # state ---------------------------------------------------------------------
    def new_state(self) -> dict[str, Any]:
        """A fresh state for one customer actor (plain, serialisable data)."""
        return {"v": STATE_VERSION, "sig": self.signature, "device": {}, "customer": {}}

    # events -------------------------------------------------------------------
    def process(
        self,
        state: dict[str, Any],
        event: Mapping[str, Any],
        *,
        customer: Mapping[str, Any] | None = None,
        device: Mapping[str, Any] | None = None,
        score: Mapping[str, Any] | None = None,
    ) -> list[Firing]:
        """Process one normalised event (``ts`` in epoch seconds): first the
        timers of its keys due at or before ``event['ts']``, then the event.
        Returns every firing, suppressed ones included, in order."""
        if state.get("sig") != self.signature:
            self.adopt(state)
        ts = event["ts"]
        customer = EMPTY if customer is None else customer
        device = EMPTY if device is None else device
        device_ks = customer_ks = None
        device_key = customer_key = ""
        device_id = event.get("device_id")
        if device_id is not None:
            device_key = device_id if type(device_id) is str else str(device_id)
        # The device's and the customer's key states, inline: this runs per event.
        if self._has_device_rules and device_id is not None:
            keys = state["device"]
            device_ks = keys.get(device_key)
            if device_ks is None:
                device_ks = keys[device_key] = new_key_state(ts)
            elif device_ks["t"] is None or ts > device_ks["t"]:
                device_ks["t"] = ts
        if self._has_customer_rules:
            customer_id = event.get("customer_id")
            if customer_id is not None:
                customer_key = customer_id if type(customer_id) is str else str(customer_id)
                keys = state["customer"]
                customer_ks = keys.get(customer_key)
                if customer_ks is None:
                    customer_ks = keys[customer_key] = new_key_state(ts)
                # A customer's time is where every one of its devices has
                # reached: after an outage their backlogs arrive one device
                # after another, and the largest time seen would close the
                # customer's windows before its other devices' events came.
                reached: dict[str, float] | None = customer_ks.get("dt")
                if reached is None:
                    reached = customer_ks["dt"] = {}
                if device_key:
                    if ts > reached.get(device_key, -math.inf):
                        reached[device_key] = ts
                    now = min(reached.values())
                else:
                    now = min(reached.values()) if reached else ts
                if customer_ks["t"] is None or now > customer_ks["t"]:
                    customer_ks["t"] = now
        firings: list[Firing] = []
        device_run = customer_run = None
        late = self._late
        due_device = device_ks is not None and device_ks["m"] is not None and device_ks["m"] <= ts
        due_customer = (
            customer_ks is not None
            and customer_ks["m"] is not None
            and customer_ks["m"] <= ts
            and customer_ks["m"] <= customer_ks["t"]
        )
        if due_device or due_customer:
            due_runs = []
            # A key is due only when it has a state (the bools hold the checks).
            if due_device:
                assert device_ks is not None
                due_runs.append(Run(device_ks, "device", device_key, customer, device, late))
            if due_customer:
                assert customer_ks is not None
                due_runs.append(Run(customer_ks, "customer", customer_key, customer, device, late))
            self._fire_timers(due_runs, ts, firings)
        candidates = self._index.candidates(event)
        if (device_ks is not None and device_ks["a"]) or (
            customer_ks is not None and customer_ks["a"]
        ):
            candidates = self._with_watchers(candidates, device_ks, customer_ks)
        if not candidates:
            return firings
        scope = Scope(event, customer, device, score, ts)
        out: list[Match] = []
        for rule in candidates:
            if rule.key == "device":
                if device_run is None:
                    if device_ks is None:
                        continue
                    seq = device_ks["s"] = device_ks.get("s", 0) + 1
                    device_run = Run(
                        device_ks, "device", device_key, customer, device, late, scope, out, seq
                    )
                run = device_run
            else:
                if customer_run is None:
                    if customer_ks is None:
                        continue
                    seq = customer_ks["s"] = customer_ks.get("s", 0) + 1
                    customer_run = Run(
                        customer_ks,
                        "customer",
                        customer_key,
                        customer,
                        device,
                        late,
                        scope,
                        out,
                        seq,
                    )
                run = customer_run
            rule.trigger.on_event(rule, run, event, ts)
        if out:
            self._finish(out, firings)
        return firings

    def _with_watchers(
        self,
        candidates: tuple[Rule, ...],
        device_ks: dict[str, Any] | None,
        customer_ks: dict[str, Any] | None,
    ) -> tuple[Rule, ...]:
        chosen = set(candidates)
        for ks, kind in ((device_ks, "device"), (customer_ks, "customer")):
            if ks is None:
                continue
            for state_key in ks["a"]:
                rule = self._by_state_key.get(state_key)
                if rule is not None and rule.key == kind:
                    chosen.add(rule)
        return tuple(sorted(chosen, key=lambda rule: rule.order))

    # time -------------------------------------------------------------------------
    def advance(
        self,
        state: dict[str, Any],
        now: float,
        *,
        customer: Mapping[str, Any] | None = None,
        devices: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[Firing]:
        """Move every key of ``state`` to time ``now`` and fire the timers due
        at or before it (idle devices, closing windows). ``devices`` maps
        device ids to their state, seen as ``device`` by device rules."""
        if state.get("sig") != self.signature:
            self.adopt(state)
        customer = EMPTY if customer is None else customer
        devices = EMPTY if devices is None else devices
        runs: list[Run] = []
        for kind in ("device", "customer"):
            for key, ks in state[kind].items():
                if ks["t"] is None or now > ks["t"]:
                    ks["t"] = now
                if ks["m"] is None or ks["m"] > now:
                    continue
                context = devices.get(key, EMPTY) if kind == "device" else EMPTY
                runs.append(Run(ks, kind, key, customer, context, self._late))
        firings: list[Firing] = []
        if runs:
            self._fire_timers(runs, now, firings)
        return firings

    def next_due(self, state: dict[str, Any]) -> float | None:
        """The earliest pending timer of any key in ``state`` (None: none)."""
        earliest: float | None = None
        for kind in ("device", "customer"):
            for ks in state.get(kind, EMPTY).values():
                due = ks["due"]
                if not due:
                    ks["m"] = None
                    continue
                first = min(due.values())
                ks["m"] = first
                if earliest is None or first < earliest:
                    earliest = first
        return earliest

    def _fire_timers(self, runs: list[Run], upto: float, firings: list[Firing]) -> None:
        """Fire due timers in time order (then rule order); the matches of one
        instant form one step for groups. At most ``MAX_TIMERS_PER_CALL``
        timers fire per call (a 1 s watchdog advanced by a year must not stall
        a worker); the rest stay due for the next call."""
        order = self._by_state_key
        step: list[Match] = []
        step_at: float | None = None
        budget = MAX_TIMERS_PER_CALL
        while budget > 0:
            budget -= 1
            best: tuple[float, int, Run, str] | None = None
            for run in runs:
                ks = run.ks
                # A key's timers fire up to its own time: a customer's can be
                # behind the event's (one of its devices is behind).
                limit = upto if ks["t"] is None or ks["t"] >= upto else ks["t"]
                bound = ks["m"]
                if bound is None or bound > limit:
                    continue
                due = ks["due"]
                if not due:
                    ks["m"] = None
                    continue
                state_key = min(due, key=lambda k: (due[k], order[k].order if k in order else -1))
                at = due[state_key]
                ks["m"] = at
                if at > limit:
                    continue
                rank = order[state_key].order if state_key in order else -1
                if best is None or (at, rank) < (best[0], best[1]):
                    best = (at, rank, run, state_key)
            if best is None:
                break
            at, _rank, run, state_key = best
            rule = order.get(state_key)
            if rule is None or rule.key != run.key_kind:
                run.ks["due"].pop(state_key, None)  # state of a rule that no longer exists
                continue
            if step_at is not None and at != step_at and step:
                self._finish(step, firings)
                step = []
            step_at = at
            run.out = step
            run.scope = Scope(EMPTY, run.customer, run.device, None, at)
            rule.trigger.on_timer(rule, run, at)
            if run.ks["due"].get(state_key, upto + 1) <= at:
                run.ks["due"].pop(state_key, None)  # a trigger must move its timer on
        if step:
            self._finish(step, firings)

    # firings ----------------------------------------------------------------------
    def _finish(self, matches: list[Match], firings: list[Firing]) -> None:
        """Cooldown, consent and groups, in rule order; render the survivors."""
        taken: set[str] = set()
        for match in matches:
            rule = match.rule
            run = match.run
            cooldowns = run.ks["cd"]
            suppressed: str | None = None
            until = cooldowns.get(rule.state_key)
            if until is not None:
                if match.at < until:
                    suppressed = "cooldown"
                else:
                    del cooldowns[rule.state_key]
            if suppressed is None and rule.requires_consent is not None:
                consent = run.customer.get("consent")
                if not (
                    isinstance(consent, Mapping) and consent.get(rule.requires_consent) is True
                ):
                    suppressed = "consent:" + rule.requires_consent
            if suppressed is None and rule.group is not None:
                if rule.group in taken:
                    suppressed = "group"
                else:
                    taken.add(rule.group)
            if suppressed is None and rule.cooldown:
                cooldowns[rule.state_key] = match.at + rule.cooldown
            firings.append(self._firing(match, suppressed))

    def _firing(self, match: Match, suppressed: str | None) -> Firing:
        rule = match.rule
        run = match.run
        scope = Scope(
            match.event,
            run.customer,
            run.device,
            match.score,
            match.at,
            match.window,
            match.names,
        )
        payload = rule.payload.render(scope)
        evidence: dict[str, Any] = {"trigger": rule.trigger.kind, **match.evidence}
        score = match.score if match.score is not None else EMPTY
        evidence["scores"] = rule.project_scores(score)
        event_ids = list(match.event_ids)
        evidence["event_ids"] = event_ids
        if run.key_kind == "device":
            device_id: Any = run.key
        else:
            device_id = match.device_id
        at = float(match.at)
        return Firing(
            rule_id=rule.id,
            rule_version=rule.version,
            key_kind=run.key_kind,
            key=run.key,
            at=at,
            event_ids=event_ids,
            action_type=rule.action_type,
            topic=rule.topic,
            payload=payload if isinstance(payload, dict) else {"value": payload},
            evidence=evidence,
            action_id=action_id(
                rule.id,
                rule.version,
                run.key_kind,
                run.key,
                # A closed window is its bounds: its events arrive in an order
                # that differs between runs (a customer's devices' backlogs).
                [] if rule.trigger.aggregates_events else event_ids,
                match.bounds,
            ),
            device_id=None if device_id is None else str(device_id),
            suppressed=suppressed,
        )

    # reload and diagnostics --------------------------------------------------------
    def adopt(self, state: dict[str, Any], previous: RuleEngine | None = None) -> None:
        """After a reload: keep the state of rules whose definition is
        unchanged (same id, version and compiled content), drop the rest.

        Rule state is filed under ``<id>@<fingerprint>``, so the state itself
        tells which definition wrote it and ``previous`` is not needed (it is
        accepted for symmetry). A state already stamped with this rule set's
        signature returns at once, so calling this per batch is cheap."""
        del previous
        if state.get("sig") == self.signature:
            return
        if state.get("v") != STATE_VERSION:
            state.clear()
            state.update(self.new_state())
            return
        keep = self._by_state_key
        for kind in ("device", "customer"):
            for ks in state[kind].values():
                for part in ("due", "r", "cd", "a"):
                    mapping = ks[part]
                    for state_key in [k for k in mapping if k not in keep]:
                        del mapping[state_key]
                ks["m"] = min(ks["due"].values()) if ks["due"] else None
        state["sig"] = self.signature

    def drain_late(self) -> list[LateEvent]:
        """Events windows rejected as late since the last call."""
        late, self._late = self._late, []
        return late

    def error_counts(self) -> dict[str, int]:
        """Runtime evaluation errors per rule id (conditions or templates that
        raised and were taken as false / null)."""
        return {rule.id: rule.errors for rule in self.ruleset.rules if rule.errors}
