"""A device's state as the code kept it while it was a plain dict (up to 0616c4e).

``StreamHygiene.admit`` started from ``{}`` and filled in the hygiene fields,
``record_event`` the readings and the consumable tracking, ``note_action`` the
latest action time per type, and the actor the device's own models. This is
that code, copied as it was and cut to what touches a device, as the reference
of ``test_state_compat``: what a state stored by it holds for a history of
events and actions, and what it reads back from a stored state.
"""

from __future__ import annotations

from typing import Any

from engine.durations import DAY_S
from engine.quality.options import QualityOptions

CONSUMABLE_SMOOTHING = 0.3
_NOT_READINGS = frozenset({"id", "ts", "device_id", "customer_id", "device_type", "kind"})
_NUMBER = (int, float)
_NOTHING: dict[str, Any] = {}


def new_device_state() -> dict[str, Any]:
    return {
        "stream_ts": None,
        "last_seen": None,
        "seen": {},
        "gaps": [],
        "gap_count": 0,
        "counts": {"ok": 0, "duplicate": 0, "late": 0},
    }


def admit(
    device_state: dict[str, Any], event: dict[str, Any], options: QualityOptions, now: float
) -> str:
    """``StreamHygiene.admit``, with ``now`` for its clock."""
    horizon, max_ids = options.dedup_horizon_s, options.dedup_max_ids
    if not device_state:
        device_state.update(new_device_state())
    counts = device_state["counts"]
    seen: dict[str, float] = device_state["seen"]
    stream_ts: float | None = device_state["stream_ts"]
    event_id = event["id"]
    ts = event["ts"]
    if stream_ts is None:
        stream_ts = device_state["stream_ts"] = ts
    else:
        remembered = seen.get(event_id)
        if remembered is not None and remembered >= stream_ts - horizon:
            counts["duplicate"] += 1
            return "duplicate"
        if ts < stream_ts - options.allowed_lateness_s:
            counts["late"] += 1
            return "late"
        if ts > stream_ts:
            interval = options.expected_interval(event.get("device_type", ""))
            if not (interval <= 0 or ts - stream_ts <= interval * options.gap_factor):
                gaps: list[dict[str, float]] = device_state["gaps"]
                gaps.append({"start": stream_ts, "end": ts, "seconds": ts - stream_ts})
                if len(gaps) > options.gaps_kept:
                    del gaps[: len(gaps) - options.gaps_kept]
                device_state["gap_count"] += 1
            stream_ts = device_state["stream_ts"] = ts
        if remembered is not None:
            del seen[event_id]
    seen[event_id] = ts
    while seen:
        oldest = next(iter(seen))
        if seen[oldest] >= stream_ts - horizon and len(seen) <= max_ids:
            break
        del seen[oldest]
    device_state["last_seen"] = now
    counts["ok"] += 1
    return "ok"


def record_event(device_state: dict[str, Any], event: dict[str, Any]) -> None:
    """``tables.state.record_event``, its device part."""
    ts = event["ts"]
    device_state["device_type"] = event.get("device_type")
    device_state["kind"] = event.get("kind")
    device_state["last_ts"] = ts
    device_state["events"] = device_state.get("events", 0) + 1
    last = device_state.get("last")
    if last is None:
        last = device_state["last"] = {}
    for name, value in event.items():
        if name not in _NOT_READINGS:
            last[name] = value
    if isinstance(event.get("level"), _NUMBER):
        _track_consumable(device_state, event, ts)


def _track_consumable(device_state: dict[str, Any], event: dict[str, Any], ts: float) -> None:
    level = event["level"]
    cycles = event.get("cycles")
    track = device_state.get("consumable")
    if track is None:
        device_state["consumable"] = {
            "level": level, "cycles": cycles, "ts": ts, "first_cycles": cycles,
            "first_ts": ts, "drop_per_cycle": None, "cycles_per_day": None,
        }  # fmt: skip
        return
    if isinstance(cycles, _NUMBER) and isinstance(track["cycles"], _NUMBER):
        used_cycles = cycles - track["cycles"]
        drop = track["level"] - level
        if used_cycles > 0 and drop > 0:
            per_cycle = drop / used_cycles
            previous = track["drop_per_cycle"]
            track["drop_per_cycle"] = (
                per_cycle
                if previous is None
                else previous + CONSUMABLE_SMOOTHING * (per_cycle - previous)
            )
        if track["first_cycles"] is None:
            track.update(first_cycles=cycles, first_ts=ts)
        elapsed_days = (ts - track["first_ts"]) / DAY_S
        if elapsed_days >= 0.25:
            track["cycles_per_day"] = (cycles - track["first_cycles"]) / elapsed_days
    track.update(level=level, cycles=cycles if cycles is not None else track["cycles"], ts=ts)


def device_models(device_state: dict[str, Any]) -> dict[str, Any]:
    """Where ``CustomerActor.handle_events`` kept the device's own models."""
    held = device_state.get("models")
    if held is None:
        held = device_state["models"] = {}
    return held


def note_action(device_state: dict[str, Any], action: dict[str, Any]) -> None:
    """``tables.state.note_action``, its device part (the action's device)."""
    latest = device_state.setdefault("last_action_at", {})
    previous = latest.get(action["type"])
    if previous is None or action["at"] > previous:
        latest[action["type"]] = action["at"]


def device_view(device_state: dict[str, Any]) -> dict[str, Any]:
    consumable = device_state.get("consumable") or _NOTHING
    view = {**device_state.get("last", _NOTHING)}
    view["device_type"] = device_state.get("device_type")
    view["last_ts"] = device_state.get("last_ts")
    view["events"] = device_state.get("events", 0)
    view["gap_count"] = device_state.get("gap_count", 0)
    view["last_action_at"] = device_state.get("last_action_at", {})
    view["level_drop_per_cycle"] = consumable.get("drop_per_cycle")
    view["cycles_per_day"] = consumable.get("cycles_per_day")
    return view


def summary_entry(device_state: dict[str, Any]) -> dict[str, Any]:
    """The device's entry in ``tables.state.summary``."""
    return {
        **device_view(device_state),
        "gaps": device_state.get("gaps", []),
        "counts": device_state.get("counts", {}),
    }
