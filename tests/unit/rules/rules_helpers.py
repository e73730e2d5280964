"""Shared helpers of the rule DSL tests."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

from engine.rules import Firing, RuleEngine, compile_rules
from engine.rules.runner import OfflineRunner

CONSENTING = {"customer_id": "c1", "consent": {"marketing": True, "service": True}}


def engine_for(text: str) -> RuleEngine:
    """An engine over the rule file ``text`` (dedented)."""
    return RuleEngine(compile_rules(textwrap.dedent(text)))


def rule(when: str, *, key: str = "device", extra: str = "", payload: str = "{}") -> str:
    """One rule named ``r`` with the given ``when:`` body (YAML, indented by
    the caller as a flow mapping or block) and extra top-level lines."""
    return (
        "- id: r\n"
        f"  key: {key}\n"
        f"  when: {when}\n"
        f"{textwrap.indent(textwrap.dedent(extra), '  ')}"
        f"  action: {{type: support_case, payload: {payload}}}\n"
    )


def event(eid: str, ts: float, **fields: Any) -> dict[str, Any]:
    fields.setdefault("device_id", "d1")
    fields.setdefault("customer_id", "c1")
    return {"id": eid, "ts": float(ts), **fields}


def feed(
    engine: RuleEngine,
    events: Iterable[Mapping[str, Any]],
    *,
    state: dict[str, Any] | None = None,
    until: float | None = None,
    customer: Mapping[str, Any] | None = CONSENTING,
    scores: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Firing]:
    """Process events on one state (then advance to ``until``); every firing."""
    state = engine.new_state() if state is None else state
    firings: list[Firing] = []
    for item in events:
        score = (scores or {}).get(item["id"])
        firings += engine.process(state, item, customer=customer, score=score)
    if until is not None:
        firings += engine.advance(state, until, customer=customer)
    return firings


def emitted(firings: Iterable[Firing]) -> list[Firing]:
    return [f for f in firings if f.suppressed is None]


def summary(firings: Iterable[Firing]) -> list[tuple[float, list[Any]]]:
    """(at, event ids) of emitted firings."""
    return [(f.at, f.event_ids) for f in emitted(firings)]


def run_offline(text: str, events: Iterable[Mapping[str, Any]], until: float | None = None):
    runner = OfflineRunner(compile_rules(textwrap.dedent(text)))
    results = []
    for item in events:
        results += runner.feed(item)
    results += runner.finish(until)
    return [r.firing for r in results]
