"""The customer actor's logic, without Faust: one customer's events in, actions out.

A worker keeps one ``CustomerState`` (typed data, see ``tables.state``) per
customer in a Faust table and hands each customer's share of a batch to
``CustomerActor.handle_events``; ``iotcrm`` offline tools can call the same
code. Order of work for one event, always the same:

1. stream hygiene: duplicates are dropped, events beyond the allowed lateness
   are set aside for ``iot.late``, gaps are recorded;
2. device and customer aggregates are updated (last readings, usage per day);
3. models predict, then learn (prequential), giving ``score.<name>``;
4. rules fire (timers due up to the event's time first), and every emitted
   firing becomes an action in the downstream contract (``engine.actions``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from msgspec import UNSET

from engine.actions import build_action
from engine.pseudonyms import Pseudonyms
from engine.quality import StreamHygiene
from engine.rules.compiler import DEFAULT_TOPICS as DEFAULT_ACTION_TOPICS
from tables.state import (
    CustomerState,
    DeviceState,
    customer_view,
    device_view,
    note_action,
    record_event,
)


class Scorer(Protocol):
    @property
    def per_device(self) -> bool: ...

    def process(
        self,
        event: Mapping[str, Any],
        *,
        customer: Mapping[str, Any],
        device: Mapping[str, Any],
        device_models: dict[str, Any] | None = None,
    ) -> dict[str, float]: ...


@dataclass
class ActorOutput:
    """What handling a batch (or advancing time) produced."""

    #: (topic, action) pairs, in firing order.
    actions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: events beyond the allowed lateness, with the reason, for ``iot.late``.
    late: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    duplicates: int = 0
    processed: int = 0
    #: firings not emitted, by reason: "cooldown", "consent:<name>", "group".
    suppressed: dict[str, int] = field(default_factory=dict)

    def extend(self, other: ActorOutput) -> None:
        self.actions += other.actions
        self.late += other.late
        self.duplicates += other.duplicates
        self.processed += other.processed
        for reason, count in other.suppressed.items():
            self.suppressed[reason] = self.suppressed.get(reason, 0) + count


class CustomerActor:
    """Applies events and time to customer states with one rule engine and models.

    ``rules`` is an ``engine.rules.RuleEngine`` (swapped on hot reload through
    ``use_rules``); ``hygiene`` a ``StreamHygiene``.
    """

    def __init__(
        self,
        rules: Any,
        hygiene: StreamHygiene,
        action_topic: Callable[[str], str] | None = None,
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        self.rules = rules
        self.hygiene = hygiene
        self._action_topic = action_topic
        #: with privacy.pseudonymise_actions: the ids of emitted actions are replaced
        self.pseudonyms = pseudonyms

    def topic_for(self, firing: Any) -> str:
        """Where a firing's action goes: a topic the rule names explicitly, else
        the configured topic for its type (``Settings.action_topic``)."""
        if self._action_topic is None or firing.topic != DEFAULT_ACTION_TOPICS.get(
            firing.action_type
        ):
            return firing.topic
        return self._action_topic(firing.action_type)

    def use_rules(self, rules: Any) -> None:
        self.rules = rules

    def _rules_state(self, state: CustomerState) -> dict[str, Any]:
        rules_state = state.rules
        if rules_state is None:
            rules_state = state.rules = self.rules.new_state()
        else:
            self.rules.adopt(rules_state)
        return rules_state

    def handle_events(
        self,
        state: CustomerState,
        events: Sequence[dict[str, Any]],
        models: Scorer | None,
        emitted_at: float,
    ) -> ActorOutput:
        """Process one customer's events (already in arrival order)."""
        out = ActorOutput()
        rules_state = self._rules_state(state)
        # Duplicates and lateness are judged in arrival order, so the verdict
        # does not depend on where batches were cut; the admitted events are
        # then processed in event-time order (a stable sort: equal times keep
        # their arrival order).
        admitted: list[tuple[dict[str, Any], DeviceState]] = []
        devices = state.devices
        for event in events:
            # setdefault(..., DeviceState()) would build a state per event only to drop it
            device_state = devices.get(event["device_id"])
            if device_state is None:
                device_state = devices[event["device_id"]] = DeviceState()
            verdict = self.hygiene.admit(device_state, event)
            if verdict == "duplicate":
                out.duplicates += 1
            elif verdict == "late":
                out.late.append((event, self.hygiene.late_rejection(device_state, event).reason))
            else:
                admitted.append((event, device_state))
        admitted.sort(key=_admitted_ts)
        rules = self.rules
        per_device = models is not None and models.per_device
        for event, device_state in admitted:
            record_event(state, device_state, event)
            customer = customer_view(state, event["ts"])
            device = device_view(device_state)
            if models is None:
                scores = {}
            elif per_device:
                # a device's own models are part of its state (see tables.state)
                held = device_state.models
                if held is UNSET:
                    held = device_state.models = {}
                scores = models.process(event, customer=customer, device=device, device_models=held)
            else:
                scores = models.process(event, customer=customer, device=device)
            firings = rules.process(
                rules_state, event, customer=customer, device=device, score=scores
            )
            for late in rules.drain_late():
                # Too late for one rule's window (past its grace); other rules saw it.
                out.late.append(
                    (event, f"too late for the window of rule {late.rule_id} "
                            f"({late.key_kind} {late.key}); it changed nothing there")
                )  # fmt: skip
            if firings:
                self._emit(state, firings, out, emitted_at)
        out.processed += len(admitted)
        return out

    def advance(self, state: CustomerState, now: float, emitted_at: float) -> ActorOutput:
        """Fire the customer's timers due up to ``now`` (an idle key's clock moves)."""
        out = ActorOutput()
        rules_state = self._rules_state(state)
        devices = {d: device_view(s) for d, s in state.devices.items()}
        firings = self.rules.advance(
            rules_state, now, customer=customer_view(state, now), devices=devices
        )
        self._emit(state, firings, out, emitted_at)
        return out

    def next_due(self, state: CustomerState) -> float | None:
        rules_state = state.rules
        return None if rules_state is None else self.rules.next_due(rules_state)

    def _emit(
        self, state: CustomerState, firings: Sequence[Any], out: ActorOutput, emitted_at: float
    ) -> None:
        for firing in firings:
            if firing.suppressed:
                out.suppressed[firing.suppressed] = out.suppressed.get(firing.suppressed, 0) + 1
                continue
            action = build_action(
                firing,
                customer_id=state.customer_id,
                device_id=firing.device_id,
                emitted_at=emitted_at,
            )
            note_action(state, action)  # the customer's own state keeps the real ids
            if self.pseudonyms is not None:
                action = self.pseudonyms.action(action)
            out.actions.append((self.topic_for(firing), action))


def _admitted_ts(admitted: tuple[dict[str, Any], DeviceState]) -> float:
    return admitted[0]["ts"]
