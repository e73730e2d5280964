"""The state one customer actor owns, as plain data, and the views rules see.

A ``CustomerState`` is a dict of primitives, stored msgpack-encoded as one
value of the ``customers`` table, written once per batch:

``customer_id``; ``profile`` (from ``crm.customers``: tier, segment, consent, ...);
``devices`` (device_id -> device state: the stream-hygiene fields of
``engine.quality.hygiene`` plus ``device_type``, ``last`` readings, ``last_ts``,
``events``, and consumable tracking); ``usage`` (minutes of use per UTC day of
event time, the running day, and a baseline over the last full days);
``rules`` (the rule engine's per-key state); ``counts``; ``recent_actions``.

>>> state = new_customer_state("c-1")
>>> device = state["devices"].setdefault("d-1", {})
>>> record_event(state, device, {"id": "e1", "ts": 86400.0 * 3 + 60, "device_id": "d-1",
...     "device_type": "wearable", "kind": "usage", "usage_min": 42.0})
>>> customer_view(state)["usage_today_min"], device_view(device)["device_type"]
(42.0, 'wearable')
>>> decode_state(encode_state(state)) == state
True
"""

from __future__ import annotations

from typing import Any

import msgspec

CustomerState = dict[str, Any]

#: Days of daily usage kept, and how many full days make a baseline.
USAGE_DAYS_KEPT = 14
BASELINE_MIN_DAYS = 3
BASELINE_DAYS = 7
RECENT_ACTIONS_KEPT = 20
DAY_S = 86400.0

#: Event fields that are identity or bookkeeping, not readings.
_NOT_READINGS = frozenset({"id", "ts", "device_id", "customer_id", "device_type", "kind"})

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def new_customer_state(customer_id: str) -> CustomerState:
    return {
        "customer_id": customer_id,
        "profile": {},
        "devices": {},
        "usage": {"day": None, "today_min": 0.0, "daily": [], "last_use_ts": None},
        "rules": None,
        "counts": {"events": 0, "actions": 0},
        "last_event_at": None,
        "recent_actions": [],
    }


def encode_state(state: CustomerState) -> bytes:
    return _encoder.encode(state)


def decode_state(blob: bytes) -> CustomerState:
    return _decoder.decode(blob)


def apply_profile(state: CustomerState, profile: dict[str, Any] | None) -> None:
    """A ``crm.customers`` record (None: a tombstone, the profile is forgotten)."""
    state["profile"] = dict(profile or {})


def record_event(state: CustomerState, device_state: dict[str, Any], event: dict[str, Any]) -> None:
    """Update device and customer aggregates with an admitted event."""
    ts = event["ts"]
    device_state["device_type"] = event.get("device_type")
    device_state["kind"] = event.get("kind")
    device_state["last_ts"] = ts
    device_state["events"] = device_state.get("events", 0) + 1
    last = device_state.setdefault("last", {})
    for name, value in event.items():
        if name not in _NOT_READINGS:
            last[name] = value
    if "level" in event:
        _track_consumable(device_state, event["level"], ts)
    counts = state["counts"]
    counts["events"] += 1
    state["last_event_at"] = ts
    usage_min = event.get("usage_min")
    if isinstance(usage_min, (int, float)):
        _add_usage(state["usage"], ts, float(usage_min))


def _track_consumable(device_state: dict[str, Any], level: float, ts: float) -> None:
    """Level drop per day between refills, the input of the depletion estimate."""
    track = device_state.setdefault(
        "consumable", {"since_ts": ts, "since_level": level, "drop_per_day": None}
    )
    if level > track["since_level"] + 5.0:  # a refill: start a new stretch
        track.update(since_ts=ts, since_level=level)
        return
    elapsed_days = (ts - track["since_ts"]) / DAY_S
    if elapsed_days >= 0.25:
        track["drop_per_day"] = (track["since_level"] - level) / elapsed_days


def _add_usage(usage: dict[str, Any], ts: float, minutes: float) -> None:
    day = int(ts // DAY_S)
    if usage["day"] is None:
        usage["day"] = day
    elif day > usage["day"]:
        daily: list[float] = usage["daily"]
        daily.append(usage["today_min"])
        # Days without any usage event count as zero use.
        daily.extend([0.0] * min(day - usage["day"] - 1, USAGE_DAYS_KEPT))
        del daily[: max(0, len(daily) - USAGE_DAYS_KEPT)]
        usage["day"], usage["today_min"] = day, 0.0
    if day == usage["day"]:
        usage["today_min"] += minutes
    if minutes > 0:
        usage["last_use_ts"] = max(usage["last_use_ts"] or ts, ts)


def usage_baseline(usage: dict[str, Any]) -> float | None:
    """Mean daily minutes over the last full days (None until there are enough)."""
    daily = usage["daily"][-BASELINE_DAYS:]
    return sum(daily) / len(daily) if len(daily) >= BASELINE_MIN_DAYS else None


def customer_view(state: CustomerState) -> dict[str, Any]:
    """What rules see as ``customer`` and models as ``customer.*``."""
    usage = state["usage"]
    last_use = usage["last_use_ts"]
    last_event = state["last_event_at"]
    return {
        **state["profile"],
        "customer_id": state["customer_id"],
        "devices": len(state["devices"]),
        "usage_today_min": usage["today_min"],
        "usage_yesterday_min": usage["daily"][-1] if usage["daily"] else None,
        "usage_baseline_min": usage_baseline(usage),
        "days_since_use": (
            None if last_use is None or last_event is None else (last_event - last_use) / DAY_S
        ),
        "actions": state["counts"]["actions"],
    }


def device_view(device_state: dict[str, Any]) -> dict[str, Any]:
    """What rules see as ``device`` and models as ``device.*``."""
    consumable = device_state.get("consumable") or {}
    return {
        **device_state.get("last", {}),
        "device_type": device_state.get("device_type"),
        "last_ts": device_state.get("last_ts"),
        "events": device_state.get("events", 0),
        "gap_count": device_state.get("gap_count", 0),
        "level_drop_per_day": consumable.get("drop_per_day"),
    }


def note_action(state: CustomerState, action: dict[str, Any]) -> None:
    state["counts"]["actions"] += 1
    recent: list[dict[str, Any]] = state["recent_actions"]
    recent.append({"action_id": action["action_id"], "type": action["type"], "at": action["at"]})
    del recent[: max(0, len(recent) - RECENT_ACTIONS_KEPT)]


def summary(state: CustomerState) -> dict[str, Any]:
    """The customer-360 snapshot written to Cassandra and served to CRM screens."""
    return {
        "customer": customer_view(state),
        "devices": {
            device_id: {
                **device_view(device),
                "gaps": device.get("gaps", []),
                "counts": device.get("counts", {}),
            }
            for device_id, device in state["devices"].items()
        },
        "counts": state["counts"],
        "recent_actions": state["recent_actions"],
    }
