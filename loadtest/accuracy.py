"""Score emitted actions against a simulation's ground truth.

An action matches an expected one when it has the same type and customer (and
device, where the truth names one) and its ``at`` lies in
[``start_at``, ``due_by``]. Each expected action matches at most one action
and each action at most one expected action (earliest deadline first, each
taking the earliest eligible action). Actions with the same ``action_id`` count
once. Unmatched actions are false positives.

>>> truth = {"expected_actions": [{"type": "coupon", "customer_id": "c1", "device_id": "d1",
...     "episode": "depletion", "start_at": 100.0, "expected_at": 100.0, "due_by": 400.0}]}
>>> hit = {"action_id": "a", "type": "coupon", "customer_id": "c1", "device_id": "d1", "at": 130}
>>> miss = {"action_id": "b", "type": "coupon", "customer_id": "c2", "device_id": "d9", "at": 130}
>>> actions = [hit, hit, miss]
>>> result = score(truth, actions)
>>> result["types"]["coupon"]["tp"], result["types"]["coupon"]["fp"], result["duplicate_actions"]
(1, 1, 1)
>>> result["types"]["coupon"]["precision"], result["types"]["coupon"]["recall"]
(0.5, 1.0)
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from loadtest.truth import ACTION_TYPES

#: Expected-action field holding the event whose lead time the action buys.
_LEAD_TIME_FIELDS = ("failure_at", "churn_at")


def _epoch(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def normalise_action(
    record: Mapping[str, Any], devices: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The fields scoring needs, from a downstream action (architecture.md
    "Actions out") or a line of ``iotcrm rules run`` output (``{rule, key, at,
    events, action}``); ``None`` when it has no type, customer or time.

    ``devices`` maps device ids to customers, for actions keyed by device only.

    >>> line = {"rule": "r", "key": "d1", "at": 5, "action": {"type": "coupon"}}
    >>> action = normalise_action(line, devices={"d1": "c1"})
    >>> action["customer_id"], action["device_id"], action["rule"], action["at"]
    ('c1', 'd1', 'r', 5.0)
    """
    devices = devices or {}
    inner = record.get("action")
    action: Mapping[str, Any] = (
        record if "type" in record or not isinstance(inner, Mapping) else inner
    )
    device_id = action.get("device_id") or record.get("device_id")
    customer_id = action.get("customer_id") or record.get("customer_id")
    key = record.get("key")
    if device_id is None and isinstance(key, str) and key in devices:
        device_id = key
    if customer_id is None and isinstance(key, str) and key not in devices:
        customer_id = key
    if customer_id is None and device_id is not None:
        customer_id = devices.get(device_id)
    rule = action.get("rule", record.get("rule"))
    if isinstance(rule, Mapping):
        rule = rule.get("id")
    at = _epoch(action.get("at", record.get("at")))
    action_type = action.get("type")
    if not isinstance(action_type, str) or customer_id is None or at is None:
        return None
    return {
        "action_id": action.get("action_id", record.get("action_id")),
        "type": action_type,
        "customer_id": customer_id,
        "device_id": device_id,
        "rule": rule,
        "at": at,
    }


def read_actions(source: str | Path | TextIO) -> Iterator[dict[str, Any]]:
    """JSON objects, one per line, from a path or an open text file; blank
    lines are skipped."""
    if isinstance(source, str | Path):
        with open(source, encoding="utf-8") as handle:
            yield from read_actions(handle)
        return
    for line in source:
        if line.strip():
            yield orjson.loads(line)


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "mean": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def score(truth: Mapping[str, Any], actions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Precision, recall, tp/fp/fn and timing per action type.

    Returns ``{"types": {type: {precision, recall, tp, fp, fn, lead_time_s,
    delay_s}}, "episodes": {episode: {expected, detected, recall}}, "total":
    {...}, "actions", "duplicate_actions", "unreadable_actions",
    "consent_violations"}``. ``lead_time_s`` (``failure_at``/``churn_at``
    minus ``at``) and ``delay_s`` (``at`` minus the ideal ``expected_at``) are
    ``{n, p50, mean}`` over the matched actions. Precision or recall is
    ``None`` when undefined (nothing emitted, nothing expected).
    """
    devices: Mapping[str, str] = truth.get("devices", {})
    seen_ids: set[Any] = set()
    distinct: list[dict[str, Any]] = []
    duplicates = unreadable = 0
    for record in actions:
        action = normalise_action(record, devices)
        if action is None:
            unreadable += 1
            continue
        action_id = action["action_id"]
        if action_id is not None:
            if action_id in seen_ids:
                duplicates += 1
                continue
            seen_ids.add(action_id)
        distinct.append(action)

    by_group: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for action in sorted(distinct, key=lambda a: a["at"]):
        by_group[(action["type"], action["customer_id"])].append(action)

    matched_action_ids: set[int] = set()
    matches: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
    expected: list[Mapping[str, Any]] = list(truth.get("expected_actions", []))
    for entry in sorted(expected, key=lambda e: e["due_by"]):
        for action in by_group.get((entry["type"], entry["customer_id"]), []):
            if id(action) in matched_action_ids:
                continue
            if entry.get("device_id") is not None and action["device_id"] != entry["device_id"]:
                continue
            if entry["start_at"] <= action["at"] <= entry["due_by"]:
                matched_action_ids.add(id(action))
                matches.append((entry, action))
                break

    types = sorted(set(ACTION_TYPES) | {a["type"] for a in distinct})
    tp: dict[str, int] = dict.fromkeys(types, 0)
    lead: dict[str, list[float]] = {t: [] for t in types}
    delay: dict[str, list[float]] = {t: [] for t in types}
    detected: dict[str, int] = defaultdict(int)
    for entry, action in matches:
        tp[entry["type"]] += 1
        detected[entry["episode"]] += 1
        delay[entry["type"]].append(action["at"] - entry["expected_at"])
        for name in _LEAD_TIME_FIELDS:
            if entry.get(name) is not None:
                lead[entry["type"]].append(entry[name] - action["at"])
    emitted: dict[str, int] = defaultdict(int)
    for action in distinct:
        emitted[action["type"]] += 1
    wanted: dict[str, int] = defaultdict(int)
    episodes: dict[str, int] = defaultdict(int)
    for entry in expected:
        wanted[entry["type"]] += 1
        episodes[entry["episode"]] += 1

    result_types: dict[str, Any] = {}
    for action_type in types:
        fp = emitted[action_type] - tp[action_type]
        fn = wanted[action_type] - tp[action_type]
        result_types[action_type] = {
            "precision": _ratio(tp[action_type], emitted[action_type]),
            "recall": _ratio(tp[action_type], wanted[action_type]),
            "tp": tp[action_type],
            "fp": fp,
            "fn": fn,
            "lead_time_s": _summary(lead[action_type]),
            "delay_s": _summary(delay[action_type]),
        }
    total_tp = sum(tp.values())
    return {
        "types": result_types,
        "episodes": {
            kind: {"expected": n, "detected": detected[kind], "recall": _ratio(detected[kind], n)}
            for kind, n in sorted(episodes.items())
        },
        "total": {
            "tp": total_tp,
            "fp": len(distinct) - total_tp,
            "fn": len(expected) - total_tp,
            "precision": _ratio(total_tp, len(distinct)),
            "recall": _ratio(total_tp, len(expected)),
        },
        "actions": len(distinct),
        "duplicate_actions": duplicates,
        "unreadable_actions": unreadable,
        "consent_violations": _consent_violations(truth, distinct),
    }


def _consent_violations(truth: Mapping[str, Any], actions: list[dict[str, Any]]) -> int:
    """Actions that need a consent the customer did not give."""
    needs = {
        rule["type"]: rule["consent"]
        for rule in truth.get("episode_rules", {}).values()
        if rule.get("consent")
    }
    consent = truth.get("consent", {})
    without = {
        "marketing": set(consent.get("without_marketing", [])),
        "service": set(consent.get("without_service", [])),
    }
    return sum(
        1
        for action in actions
        if action["customer_id"] in without.get(needs.get(action["type"], ""), set())
    )


def format_score(result: Mapping[str, Any]) -> str:
    """A plain-text table of a ``score`` result."""

    def show(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    header = f"{'type':<20} {'prec':>6} {'recall':>6} {'tp':>5} {'fp':>5} {'fn':>5} "
    header += f"{'lead p50 s':>10} {'lead mean s':>11} {'delay p50 s':>11}"
    lines = [header]
    for action_type, row in result["types"].items():
        lines.append(
            f"{action_type:<20} {show(row['precision']):>6} {show(row['recall']):>6} "
            f"{row['tp']:>5} {row['fp']:>5} {row['fn']:>5} "
            f"{show(row['lead_time_s']['p50']):>10} {show(row['lead_time_s']['mean']):>11} "
            f"{show(row['delay_s']['p50']):>11}"
        )
    total = result["total"]
    lines.append(
        f"{'total':<20} {show(total['precision']):>6} {show(total['recall']):>6} "
        f"{total['tp']:>5} {total['fp']:>5} {total['fn']:>5}"
    )
    lines.append("")
    for kind, row in result["episodes"].items():
        lines.append(f"episode {kind:<14} detected {row['detected']}/{row['expected']}")
    lines.append(
        f"actions {result['actions']} (duplicates {result['duplicate_actions']}, "
        f"unreadable {result['unreadable_actions']}), "
        f"consent violations {result['consent_violations']}"
    )
    return "\n".join(lines)
