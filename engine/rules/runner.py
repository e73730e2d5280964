"""Rules over a recorded stream, as one single-partition worker would run them:
the engine behind ``iotcrm rules run`` and ``iotcrm rules test``.

- Events are processed in the order given. State is grouped per customer
  (``customer_id``), or per device when an event has no ``customer_id``.
- Time: the stream time is the largest event time seen. Before each event,
  every group with a timer due at or before the stream time is advanced to it,
  so an idle device is noticed while others keep the stream going.
  ``finish(until)`` advances every group to ``until`` (default: the stream
  time), so pending timers up to it fire.
- Context: an event may carry ``customer``, ``device`` and ``score`` objects;
  they are taken out of the event. ``customer`` and ``device`` are remembered
  (per customer, per device) for later events and timers; ``score`` holds for
  that event only. Without them rules see empty mappings.

>>> from engine.rules.compiler import compile_rules
>>> runner = OfflineRunner(compile_rules('''
... - id: quiet
...   key: device
...   when: {silence: {for: 60}}
...   action: {type: support_case}
... '''))
>>> runner.feed({"id": "e1", "ts": 0, "device_id": "d1"})
[]
>>> [(f.firing.rule_id, f.firing.at) for f in runner.finish(until=130)]
[('quiet', 60.0), ('quiet', 120.0)]
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.rules.engine import Firing, RuleEngine
from engine.rules.model import RuleSet
from engine.rules.source import parse_timestamp

#: Event fields that carry context rather than data.
CONTEXT_FIELDS = ("customer", "device", "score")


class EventError(ValueError):
    """An input event the runner cannot use."""


@dataclass
class Result:
    """A firing with the customer it belongs to (None when unknown)."""

    firing: Firing
    customer_id: str | None


@dataclass
class _Group:
    state: dict[str, Any]
    customer_id: str | None
    customer: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Due time of this group's entry in the runner's timer heap.
    scheduled: float | None = None


def split_event(
    raw: Any,
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """A raw event as (event, customer, device, score): ``ts`` becomes epoch
    seconds and the context objects are taken out."""
    if not isinstance(raw, Mapping):
        raise EventError("an event must be a JSON object")
    event = dict(raw)
    if "ts" not in event:
        raise EventError("event has no 'ts'")
    try:
        event["ts"] = parse_timestamp(event["ts"])
    except ValueError as exc:
        raise EventError(str(exc)) from None
    context: list[dict[str, Any] | None] = []
    for name in CONTEXT_FIELDS:
        value = event.pop(name, None)
        if value is not None and not isinstance(value, Mapping):
            raise EventError(f"'{name}' must be an object")
        context.append(dict(value) if value is not None else None)
    return event, context[0], context[1], context[2]


class OfflineRunner:
    """Feed events, then ``finish``; each call returns the firings it caused
    (suppressed ones included) in order."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.engine = RuleEngine(ruleset)
        self.clock: float | None = None
        self._groups: dict[str, _Group] = {}
        self._timers: list[tuple[float, str]] = []

    def feed(
        self,
        event: Mapping[str, Any],
        *,
        customer: Mapping[str, Any] | None = None,
        device: Mapping[str, Any] | None = None,
        score: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """Process one event (``ts`` already in epoch seconds)."""
        ts = float(event["ts"])
        results: list[Result] = []
        if self.clock is None or ts > self.clock:
            self.clock = ts
            self._advance_idle(ts, results)
        customer_id = event.get("customer_id")
        device_id = event.get("device_id")
        if customer_id is not None:
            name = "c:" + str(customer_id)
        elif device_id is not None:
            name = "d:" + str(device_id)
        else:
            return results
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(
                self.engine.new_state(), None if customer_id is None else str(customer_id)
            )
        if customer is not None:
            group.customer = dict(customer)
        device_context: Mapping[str, Any] | None = None
        if device_id is not None:
            if device is not None:
                group.devices[str(device_id)] = dict(device)
            device_context = group.devices.get(str(device_id))
        firings = self.engine.process(
            group.state, event, customer=group.customer, device=device_context, score=score
        )
        results.extend(Result(f, group.customer_id) for f in firings)
        self._schedule(name, group)
        return results

    def finish(self, until: float | None = None) -> list[Result]:
        """Advance every group to ``until`` (default: the stream time)."""
        end = until if until is not None else self.clock
        if end is None:
            return []
        if self.clock is None or end > self.clock:
            self.clock = end
        results: list[Result] = []
        for name, group in self._groups.items():
            self._advance(name, group, end, results)
        results.sort(key=lambda r: r.firing.at)
        return results

    def _schedule(self, name: str, group: _Group) -> None:
        # One heap entry per group, at its earliest due time or before it: a
        # timer moving later leaves the entry early, which only costs a no-op.
        due = self.engine.next_due(group.state)
        if due is not None and (group.scheduled is None or due < group.scheduled):
            group.scheduled = due
            heapq.heappush(self._timers, (due, name))

    def _advance_idle(self, now: float, results: list[Result]) -> None:
        timers = self._timers
        done: set[str] = set()
        while timers and timers[0][0] <= now:
            due, name = heapq.heappop(timers)
            group = self._groups[name]
            if group.scheduled == due:
                group.scheduled = None
            if name in done:
                continue
            done.add(name)
            self._advance(name, group, now, results)

    def _advance(self, name: str, group: _Group, now: float, results: list[Result]) -> None:
        firings = self.engine.advance(
            group.state, now, customer=group.customer, devices=group.devices
        )
        results.extend(Result(f, group.customer_id) for f in firings)
        self._schedule(name, group)
