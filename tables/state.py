"""The state one customer actor owns, as typed data, and the views rules see.

A ``CustomerState`` is a ``msgspec.Struct``, stored msgpack-encoded as one
value of the ``customers`` table, written once per batch. Its encoded form is
a msgpack map with one key per field (the field names below), and so is each
Struct inside it, so states written when the state and its device states were
plain dicts decode into it, and what reads the encoded form by key (the chaos
suite's comparison) sees the same keys:

``customer_id``; ``profile`` (from ``crm.customers``: tier, segment, consent, ...);
``devices`` (device_id -> ``DeviceState``: the stream-hygiene fields of
``engine.quality.HygieneState``, then ``device_type``, ``kind``, ``last_ts``,
``events``, the ``last`` readings by name, the ``consumable`` tracking, the
device's own ``models`` and its ``last_action_at`` per action type); ``usage``
(a ``UsageState``: minutes of use per UTC day of event time, the running day,
and a baseline over the last full days); ``rules`` (the rule engine's per-key
state, its own plain data); ``counts`` (a ``Counts``); ``last_event_at``;
``recent_actions`` (``RecentAction``); ``support_case_times``.
A device's own models (``scope: device``, see ``engine.models``) sit in its
state under ``models`` (name -> [fingerprint, estimator]); an estimator is
stored as a msgpack extension holding a model snapshot, and one that cannot
be read back (a snapshot format of another version) starts over.

>>> state = new_customer_state("c-1")
>>> device = state.devices.setdefault("d-1", DeviceState())
>>> record_event(state, device, {"id": "e1", "ts": 86400.0 * 3 + 60, "device_id": "d-1",
...     "device_type": "wearable", "kind": "usage", "usage_min": 42.0})
>>> customer_view(state)["usage_today_min"], device_view(device)["device_type"]
(42.0, 'wearable')
>>> decode_state(encode_state(state)) == state
True
>>> sorted(decode_state_plain(encode_state(state))) == sorted(CustomerState.__struct_fields__)
True
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from engine.durations import DAY_S, HOUR_S
from engine.quality.hygiene import HygieneState

log = logging.getLogger(__name__)

#: Days of daily usage kept, and how many full days make a baseline.
USAGE_DAYS_KEPT = 14
BASELINE_MIN_DAYS = 1
BASELINE_DAYS = 7
RECENT_ACTIONS_KEPT = 20
#: Hourly and daily usage buckets kept in the state (``recent_usage``).
HOURS_KEPT = 48
DAYS_KEPT = 35
SUPPORT_WINDOW_S = 30 * DAY_S
#: Weight of the newest measurement in the smoothed consumption per cycle.
CONSUMABLE_SMOOTHING = 0.3

#: Event fields that are identity or bookkeeping, not readings.
_NOT_READINGS = frozenset({"id", "ts", "device_id", "customer_id", "device_type", "kind"})

#: What counts as a number in a reading (bool too, being an int); a tuple
#: because isinstance checks it faster than the equivalent ``int | float``.
_NUMBER = (int, float)

#: msgpack extension code of a device's model: ``engine.models.snapshot`` bytes.
MODEL_EXT = 1


def _encode_model(model: Any) -> msgspec.msgpack.Ext:
    from engine.models import snapshot  # River comes with it: only when states hold models

    return msgspec.msgpack.Ext(MODEL_EXT, snapshot.dumps({"model": model}))


def _decode_model(code: int, data: memoryview) -> Any:
    from engine.models import snapshot

    if code != MODEL_EXT:
        raise ValueError(f"unknown msgpack extension {code} in a customer state")
    try:
        return snapshot.loads(bytes(data))["model"]
    except snapshot.SnapshotError as exc:
        log.warning("a device model could not be read and starts over: %s", exc)
        return None


class UsageState(msgspec.Struct):
    """Minutes of use per UTC day (of event time): the running ``day`` and its
    ``today_min``, the ``daily`` minutes of the last full days (oldest first),
    and buckets per hour and per day (``repr`` of the bucket's start -> minutes)
    for ``recent_usage``."""

    day: int | None = None
    first_day: int | None = None
    today_min: float = 0.0
    daily: list[float] = msgspec.field(default_factory=list)
    last_use_ts: float | None = None
    hours: dict[str, float] = msgspec.field(default_factory=dict)
    days: dict[str, float] = msgspec.field(default_factory=dict)


class Counts(msgspec.Struct):
    """Events processed and actions taken for the customer, ever."""

    events: int = 0
    actions: int = 0


class RecentAction(msgspec.Struct):
    """One of the customer's latest actions (``RECENT_ACTIONS_KEPT``)."""

    action_id: str
    type: str
    at: float


class Consumable(msgspec.Struct):
    """A device's consumable (detergent, filter ...), from the events with a
    ``level`` (``_track_consumable``): the latest ``level``, ``cycles`` (the
    device's cycle counter, None until one came) and ``ts``; the cycle count
    and time the rates are measured from (``first_cycles``, ``first_ts``); the
    smoothed level drop per cycle and the cycles per day, None until measured."""

    level: float
    cycles: int | float | None
    ts: float
    first_cycles: int | float | None
    first_ts: float
    drop_per_cycle: float | None = None
    cycles_per_day: float | None = None


class DeviceState(HygieneState):
    """One device's state: the stream-hygiene fields (``HygieneState``,
    filled in by ``engine.quality.StreamHygiene``), then what ``record_event``
    keeps (``device_type``, ``kind`` and ``last_ts`` of the latest event,
    ``events`` counted, the ``last`` value of each reading by name, and the
    ``consumable``), the device's own ``models`` (filled in by the actor and
    ``engine.models``) and ``last_action_at`` (action type -> time of the
    latest, by ``note_action``). ``DeviceState()`` is a device before its
    first event.

    Every field has a default, so a state stored before a field existed still
    decodes. The three that a device only gains with their first use are
    ``UNSET`` until then and left out of the encoded map, as the dict-shaped
    state left the key out: ``consumable``, ``models`` (only where models of
    ``scope: device`` are configured) and ``last_action_at``."""

    device_type: str | None = None
    kind: str | None = None
    last_ts: float | None = None
    events: int = 0
    last: dict[str, Any] = msgspec.field(default_factory=dict)
    consumable: Consumable | UnsetType = UNSET
    models: dict[str, list[Any]] | UnsetType = UNSET
    last_action_at: dict[str, float] | UnsetType = UNSET


class CustomerState(msgspec.Struct):
    """One customer's state (see the module's description of the fields).

    Every field but ``customer_id`` has a default, so a state stored before a
    field existed still decodes."""

    customer_id: str
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    devices: dict[str, DeviceState] = msgspec.field(default_factory=dict)
    usage: UsageState = msgspec.field(default_factory=UsageState)
    rules: dict[str, Any] | None = None
    counts: Counts = msgspec.field(default_factory=Counts)
    last_event_at: float | None = None
    recent_actions: list[RecentAction] = msgspec.field(default_factory=list)
    support_case_times: list[float] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_model)
_decoder = msgspec.msgpack.Decoder(CustomerState, ext_hook=_decode_model)
_plain_decoder = msgspec.msgpack.Decoder(ext_hook=_decode_model)


def new_customer_state(customer_id: str) -> CustomerState:
    return CustomerState(customer_id=customer_id)


def encode_state(state: CustomerState) -> bytes:
    return _encoder.encode(state)


def decode_state(blob: bytes) -> CustomerState:
    return _decoder.decode(blob)


def decode_state_plain(blob: bytes) -> dict[str, Any]:
    """An encoded state as the plain map it is stored as (for comparisons by key)."""
    result: dict[str, Any] = _plain_decoder.decode(blob)
    return result


def apply_profile(state: CustomerState, profile: dict[str, Any] | None) -> None:
    """A ``crm.customers`` record (None: a tombstone, the profile is forgotten)."""
    state.profile = dict(profile or {})


def record_event(state: CustomerState, device_state: DeviceState, event: dict[str, Any]) -> None:
    """Update device and customer aggregates with an admitted event."""
    ts = event["ts"]
    device_state.device_type = event.get("device_type")
    device_state.kind = event.get("kind")
    device_state.last_ts = ts
    device_state.events += 1
    last = device_state.last
    for name, value in event.items():
        if name not in _NOT_READINGS:
            last[name] = value
    if isinstance(event.get("level"), _NUMBER):
        _track_consumable(device_state, event, ts)
    state.counts.events += 1
    # The latest event time, not the time of the latest event: a customer's
    # devices reach the actor interleaved as ingest read them, and what the
    # views derive from it must not depend on that order.
    last_event_at = state.last_event_at
    if last_event_at is None or ts > last_event_at:
        state.last_event_at = ts
    usage_min = event.get("usage_min")
    if isinstance(usage_min, _NUMBER):
        _add_usage(state.usage, ts, float(usage_min))


def _track_consumable(device_state: DeviceState, event: dict[str, Any], ts: float) -> None:
    """Consumption per cycle and cycles per day, the inputs of the depletion estimate.

    A level that rises is a refill: the next drop is measured from it.
    """
    level = event["level"]
    cycles = event.get("cycles")
    track = device_state.consumable
    if track is UNSET:
        device_state.consumable = Consumable(level, cycles, ts, cycles, ts)
        return
    if isinstance(cycles, _NUMBER) and isinstance(track.cycles, _NUMBER):
        used_cycles = cycles - track.cycles
        drop = track.level - level
        if used_cycles > 0 and drop > 0:
            per_cycle = drop / used_cycles
            previous = track.drop_per_cycle
            track.drop_per_cycle = (
                per_cycle
                if previous is None
                else previous + CONSUMABLE_SMOOTHING * (per_cycle - previous)
            )
        if track.first_cycles is None:
            track.first_cycles, track.first_ts = cycles, ts
        elapsed_days = (ts - track.first_ts) / DAY_S
        if elapsed_days >= 0.25:
            track.cycles_per_day = (cycles - track.first_cycles) / elapsed_days
    track.level = level
    if cycles is not None:
        track.cycles = cycles
    track.ts = ts


def _add_usage(usage: UsageState, ts: float, minutes: float) -> None:
    day = int(ts // DAY_S)
    if usage.day is None:
        usage.day = usage.first_day = day
    elif day > usage.day:
        daily = usage.daily
        # The first day is partial (the customer's history began during it):
        # it would bias the baseline low.
        if usage.day != usage.first_day:
            daily.append(usage.today_min)
        # Days without any usage event count as zero use.
        daily.extend([0.0] * min(day - usage.day - 1, USAGE_DAYS_KEPT))
        del daily[: max(0, len(daily) - USAGE_DAYS_KEPT)]
        usage.day, usage.today_min = day, 0.0
    if day == usage.day:
        usage.today_min += minutes
    elif usage.first_day is not None and usage.first_day < day < usage.day:
        # An earlier day's use arriving after the day moved on (another device
        # of the customer ran ahead, e.g. backlogs after an outage): into that
        # day's entry, as it would have been in order.
        back = usage.day - day
        daily = usage.daily
        if back <= len(daily):
            daily[-back] += minutes
    if minutes > 0:
        usage.last_use_ts = max(usage.last_use_ts or ts, ts)
        for buckets, size, kept in (
            (usage.hours, HOUR_S, HOURS_KEPT),
            (usage.days, DAY_S, DAYS_KEPT),
        ):
            start = ts // size * size
            key = _bucket_key(start)
            buckets[key] = buckets.get(key, 0.0) + minutes
            if len(buckets) > kept:
                for old in sorted(buckets, key=float)[: len(buckets) - kept]:
                    del buckets[old]


def recent_usage(
    state: CustomerState, now: float, size_s: float, count: int
) -> list[dict[str, float]]:
    """Minutes of use in the last ``count`` tumbling windows of ``size_s``
    (``HOUR_S`` or ``DAY_S``) up to ``now``: ``[{"start", "minutes"}]``, oldest first.

    >>> state = new_customer_state("c-1")
    >>> device = state.devices.setdefault("d-1", DeviceState())
    >>> for ts, minutes in [(7200.0, 10.0), (7300.0, 5.5), (10900.0, 4.0)]:
    ...     record_event(state, device, {"id": str(ts), "ts": ts, "device_id": "d-1",
    ...                                  "kind": "usage", "usage_min": minutes})
    >>> [w["minutes"] for w in recent_usage(state, now=10900.0, size_s=HOUR_S, count=3)]
    [0.0, 15.5, 4.0]
    >>> recent_usage(state, now=10900.0, size_s=HOUR_S, count=1)
    [{'start': 10800.0, 'minutes': 4.0}]
    """
    buckets = state.usage.hours if size_s == HOUR_S else state.usage.days
    first = now // size_s * size_s - (count - 1) * size_s
    # Sums are added event by event, so the last bits are rounded away.
    return [
        {"start": start, "minutes": round(buckets.get(_bucket_key(start), 0.0), 6)}
        for start in (first + i * size_s for i in range(count))
    ]


def _bucket_key(start: float) -> str:
    """The key of the usage bucket (``UsageState.hours``, ``days``) starting at ``start``."""
    return repr(start)


def customer_view(state: CustomerState, at: float | None = None) -> dict[str, Any]:
    """What rules see as ``customer`` and models as ``customer.*``: for an
    event or a timer at ``at``, its usage fields as of ``at``'s UTC day.

    A customer's devices can reach the actor days apart (backlogs after an
    outage arrive one device after another), and the customer's windows wait
    for the device behind; the usage of the days that the device ahead has
    already reported is not part of a day before them: a day's window must
    not be judged against a baseline of the days after it.

    >>> state = new_customer_state("c-1")
    >>> device = state.devices.setdefault("w-1", DeviceState())
    >>> for day, minutes in [(0, 10.0), (1, 60.0), (2, 50.0), (3, 5.0)]:
    ...     record_event(state, device, {"id": str(day), "ts": day * DAY_S + 3600,
    ...                                  "device_id": "w-1", "kind": "usage",
    ...                                  "usage_min": minutes})
    >>> customer_view(state)["usage_baseline_min"]  # days 1 and 2 (day 0 was partial)
    55.0
    >>> view = customer_view(state, at=1 * DAY_S + 900)  # a timer of day 1
    >>> view["usage_baseline_min"], view["usage_yesterday_min"], view["usage_today_min"]
    (None, None, 60.0)
    """
    usage = state.usage
    last_use = usage.last_use_ts
    last_event = state.last_event_at
    daily = usage.daily
    today = usage.today_min
    if at is not None and usage.day is not None:
        day = int(at // DAY_S)
        behind = usage.day - day
        if behind > 0:
            daily = daily[: max(0, len(daily) - behind)]
            today = usage.days.get(_bucket_key(day * DAY_S), 0.0)
    # the baseline and _support_cases_30d, inlined: this runs for every event
    baseline = daily[-BASELINE_DAYS:]
    times = state.support_case_times
    # Key by key rather than {**profile, ...}: that form builds the literal part
    # as a second dict and merges it in. Same keys, order and values.
    view = {**state.profile}
    view["customer_id"] = state.customer_id
    view["devices"] = len(state.devices)
    view["usage_today_min"] = today
    view["usage_yesterday_min"] = daily[-1] if daily else None
    view["usage_baseline_min"] = (
        sum(baseline) / len(baseline) if len(baseline) >= BASELINE_MIN_DAYS else None
    )
    view["days_since_use"] = (
        None if last_use is None or last_event is None else (last_event - last_use) / DAY_S
    )
    view["actions"] = state.counts.actions
    view["support_cases_30d"] = _support_cases_30d(state) if times else 0
    return view


def _support_cases_30d(state: CustomerState) -> int:
    times = state.support_case_times
    now = state.last_event_at
    # The times are kept sorted (record_action): count those in the window by bisection.
    return (
        len(times)
        if now is None
        else len(times) - bisect.bisect_right(times, now - SUPPORT_WINDOW_S)
    )


def device_view(device_state: DeviceState) -> dict[str, Any]:
    """What rules see as ``device`` and models as ``device.*``."""
    # Key by key, as in customer_view: same keys, order and values.
    view = {**device_state.last}
    view["device_type"] = device_state.device_type
    view["last_ts"] = device_state.last_ts
    view["events"] = device_state.events
    view["gap_count"] = device_state.gap_count
    # Time of the device's latest action per type, e.g. last_action_at.maintenance_booking
    latest = device_state.last_action_at
    view["last_action_at"] = {} if latest is UNSET else latest
    consumable = device_state.consumable
    if consumable is UNSET:
        view["level_drop_per_cycle"] = None
        view["cycles_per_day"] = None
    else:
        view["level_drop_per_cycle"] = consumable.drop_per_cycle
        view["cycles_per_day"] = consumable.cycles_per_day
    return view


def note_action(state: CustomerState, action: dict[str, Any]) -> None:
    state.counts.actions += 1
    recent = state.recent_actions
    recent.append(RecentAction(action["action_id"], action["type"], action["at"]))
    # In the order of their time, not of their processing: after a failover a
    # customer's devices' backlogs come one after the other, and the same
    # actions must leave the same list.
    if len(recent) > 1 and (recent[-2].at, recent[-2].action_id) > (
        action["at"],
        action["action_id"],
    ):
        recent.sort(key=lambda kept: (kept.at, kept.action_id))
    del recent[: max(0, len(recent) - RECENT_ACTIONS_KEPT)]
    # Likewise the latest time per type and the support cases' window: by
    # the actions' times, whatever order they were taken in.
    device = state.devices.get(action.get("device_id") or "")
    if device is not None:
        latest = device.last_action_at
        if latest is UNSET:
            latest = device.last_action_at = {}
        previous = latest.get(action["type"])
        if previous is None or action["at"] > previous:
            latest[action["type"]] = action["at"]
    if action["type"] == "support_case":
        times = state.support_case_times
        bisect.insort(times, action["at"])
        cutoff = times[-1] - SUPPORT_WINDOW_S
        times[:] = [t for t in times if t > cutoff]


def summary(state: CustomerState) -> dict[str, Any]:
    """The customer-360 snapshot written to Cassandra and served to CRM screens."""
    return {
        "customer": customer_view(state),
        "devices": {
            device_id: {
                **device_view(device),
                "gaps": device.gaps,
                "counts": device.counts,
            }
            for device_id, device in state.devices.items()
        },
        "counts": {"events": state.counts.events, "actions": state.counts.actions},
        "recent_actions": [
            {"action_id": kept.action_id, "type": kept.type, "at": kept.at}
            for kept in state.recent_actions
        ],
    }
