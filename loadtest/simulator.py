"""Seeded device fleet simulator with injected episodes and their ground truth.

Each device is a small behaviour (its physics over time, in canonical units)
played by a generator; a heap over the devices merges them into one stream in
global event-time order. Each device writes its readings in its own mix of
units and shapes (docs/events.md); a configurable share of malformed events
and duplicates is added on the way. ``Simulation.truth()`` says which actions
must follow (see docs/simulator.md).

>>> sim = Simulation(SimParams(customers=5, devices_per_customer=2, seed=1, span_s=6 * 3600,
...                            end_ts=1_763_700_000))
>>> records = list(sim.events())
>>> device_id, payload = records[0]
>>> {"id", "ts", "device_id", "kind"} <= set(orjson.loads(payload))
True
>>> sim.truth()["counts"]["records"] == len(records)
True
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from loadtest.episodes import (
    DAILY_WINDOW_GRACE_S,
    DAY,
    FADE_RAMP_S,
    HOUR,
    MINUTE,
    Degrading,
    Depletion,
    DeviceEpisode,
    EpisodeShares,
    ErrorBurst,
    ErrorReboot,
    Silence,
    UsageFade,
    plan_episodes,
)
from loadtest.fleet import (
    DEVICE_TYPES,
    DRIVING_ACTIVITY,
    HOME_ACTIVITY,
    OUT_OF_RANGE,
    SHIFT_LOAD,
    Customer,
    Device,
    Fleet,
    build_fleet,
    reading_renderer,
)
from loadtest.truth import MALFORMED_REASON, TruthBuilder

#: Thresholds of the shipped rules the episodes are built around.
VIBRATION_LIMIT_G = 0.8
NORMAL_VIBRATION_CAP_G = 0.6
DETERGENT_LOW_PCT = 15.0
NORMAL_REFILL_BELOW_PCT = 20.0
SUSTAINED_VIBRATION_S = 10 * MINUTE
SILENCE_WATCHDOG_S = 2 * HOUR
#: Normal devices keep errors this far apart, so no burst happens by chance.
SPORADIC_ERROR_SPACING_S = 3 * HOUR

MALFORMED_KINDS: tuple[str, ...] = tuple(MALFORMED_REASON)
#: Unregistered devices that malformed events claim to come from; a fixed pool
#: so their per-device topics are known before publishing.
GHOST_DEVICE_IDS: tuple[str, ...] = tuple(f"ghost-{i:02d}" for i in range(1, 9))

Fields = dict[str, Any]
Special = tuple[float, str, Fields]


@dataclass(frozen=True, slots=True)
class SimParams:
    """Everything that shapes a simulation; the same params give the same bytes."""

    customers: int = 100
    devices_per_customer: int = 2
    seed: int = 1
    span_s: float = 2 * DAY
    #: Simulated time ends here (epoch seconds); ``None``: now, rounded down.
    end_ts: float | None = None
    device_types: tuple[str, ...] = DEVICE_TYPES
    marketing_consent_share: float = 0.8
    service_consent_share: float = 1.0
    rfc3339_share: float = 0.15
    malformed_share: float = 0.005
    duplicate_share: float = 0.005
    #: Added to each episode's ideal firing time to give its ``due_by``.
    due_slack_s: float = 300.0
    episodes: EpisodeShares = field(default_factory=EpisodeShares)
    #: Write events as rules see them after ingest: canonical units, with
    #: ``customer_id`` and ``device_type``, no malformed events, no duplicates,
    #: and the ``customer`` context objects ``iotcrm rules run`` reads.
    canonical: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["device_types"] = list(self.device_types)
        return data


def _rfc3339(ts: float) -> str:
    millis = round(ts * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _hour_slots(start: float, end: float) -> Iterator[float]:
    slot = math.floor(start / HOUR) * HOUR
    while slot < end:
        yield slot
        slot += HOUR


class _Behaviour:
    """A device's physics: telemetry readings as a function of time, plus
    discrete events (errors, status changes, usage, consumables)."""

    error_codes: tuple[str, ...] = ()

    def __init__(
        self,
        device: Device,
        customer: Customer,
        episode: DeviceEpisode | None,
        fade: UsageFade | None,
        start: float,
        end: float,
        seed: int,
        truth: TruthBuilder,
    ) -> None:
        self.device = device
        self.customer = customer
        self.episode = episode
        self.fade = fade
        self.start = start
        self.end = end
        self.truth = truth
        self.rng = random.Random(f"{seed}/device/{device.device_id}")
        self.utc_offset_s = customer.utc_offset_h * HOUR
        self.last_t = start
        self.high_seen = False

    def local_hour(self, t: float) -> int:
        return int((t + self.utc_offset_s) % DAY // HOUR)

    def interval(self, t: float) -> float:
        del t
        return self.rng.uniform(240.0, 360.0)

    def telemetry(self, t: float) -> Fields:
        raise NotImplementedError

    def discrete(self) -> list[Special]:
        """The device's discrete events, sorted by time, all in [start, end)."""
        events = self.own_events()
        episode = self.episode
        busy: list[tuple[float, float]] = []
        if isinstance(episode, ErrorBurst):
            code = self.rng.choice(self.error_codes)
            events += [(t, "error", {"error_code": code}) for t in episode.error_times]
            busy.append(
                (
                    episode.error_times[0] - SPORADIC_ERROR_SPACING_S,
                    episode.error_times[-1] + SPORADIC_ERROR_SPACING_S,
                )
            )
            self.truth.expect(
                "error_burst",
                self.device.customer_id,
                self.device.device_id,
                start_at=episode.error_times[0],
                expected_at=episode.error_times[3],
                errors=len(episode.error_times),
            )
        elif isinstance(episode, ErrorReboot):
            events.append(
                (episode.error_at, "error", {"error_code": self.rng.choice(self.error_codes)})
            )
            events += self._reboot(episode.reboot_at)
            busy.append(
                (
                    episode.error_at - SPORADIC_ERROR_SPACING_S,
                    episode.reboot_at + SPORADIC_ERROR_SPACING_S,
                )
            )
            self.truth.expect(
                "error_reboot",
                self.device.customer_id,
                self.device.device_id,
                start_at=episode.error_at,
                expected_at=episode.reboot_at,
            )
        elif isinstance(episode, Degrading):
            events.append((episode.failure_at, "status", {"state": "fault"}))
            busy.append((episode.high_since - HOUR, episode.failure_at + HOUR))
        elif episode is None and self.error_codes and self.rng.random() < 0.1:
            # A routine night-time firmware reboot: a negative for the error->reboot rule.
            day = self.rng.randrange(max(1, int((self.end - self.start) // DAY)))
            local_midnight = self.start - (self.start + self.utc_offset_s) % DAY
            reboot_at = round(local_midnight + day * DAY + 3 * HOUR + self.rng.uniform(0, HOUR), 3)
            if self.start < reboot_at < self.end - 5 * MINUTE:
                events += self._reboot(reboot_at)
                busy.append((reboot_at - HOUR, reboot_at + HOUR))
        if self.error_codes:
            events += self._sporadic_errors(busy)
        if isinstance(episode, Silence):
            events = [e for e in events if not episode.silent_from <= e[0] < episode.resume_at]
            events.append((episode.resume_at, "status", {"state": "online"}))
        events = [e for e in events if self.start <= e[0] < self.end]
        events.sort(key=lambda e: e[0])
        return events

    def own_events(self) -> list[Special]:
        return []

    def _reboot(self, at: float) -> list[Special]:
        back = round(at + self.rng.uniform(40.0, 120.0), 3)
        return [(at, "status", {"state": "reboot"}), (back, "status", {"state": "online"})]

    def _sporadic_errors(self, busy: list[tuple[float, float]]) -> list[Special]:
        errors: list[Special] = []
        t, last = self.start, -math.inf
        while True:
            t += self.rng.expovariate(1 / (12 * HOUR))
            if t >= self.end - 5 * MINUTE:
                return errors
            if t - last < SPORADIC_ERROR_SPACING_S or any(a <= t <= b for a, b in busy):
                continue
            last = t
            errors.append((round(t, 3), "error", {"error_code": self.rng.choice(self.error_codes)}))

    # Degrading machines (washers, compressors) share the vibration story.
    def vibration(self, t: float, normal: float) -> float:
        episode = self.episode
        if not isinstance(episode, Degrading) or t < episode.drift_start:
            return normal
        if t < episode.high_since:
            progress = (t - episode.drift_start) / (episode.high_since - episode.drift_start)
            return min(0.78, 0.3 + 0.45 * progress + self.rng.uniform(-0.03, 0.03))
        if t < episode.failure_at:
            if not self.high_seen:
                self.high_seen = True
                self.truth.expect(
                    "degrading",
                    self.device.customer_id,
                    self.device.device_id,
                    start_at=episode.drift_start,
                    expected_at=round(t + SUSTAINED_VIBRATION_S, 3),
                    failure_at=episode.failure_at,
                    high_since=t,
                )
            progress = (t - episode.high_since) / (episode.failure_at - episode.high_since)
            return 0.9 + 0.5 * progress + self.rng.uniform(-0.04, 0.04)
        return self.rng.uniform(0.0, 0.04)  # failed and stopped

    def degrading_interval(self, t: float) -> float | None:
        episode = self.episode
        if (
            isinstance(episode, Degrading)
            and episode.drift_start - MINUTE <= t < episode.failure_at
        ):
            return self.rng.uniform(30.0, 60.0)
        return None

    def failed(self, t: float) -> bool:
        return isinstance(self.episode, Degrading) and t >= self.episode.failure_at


class _Washer(_Behaviour):
    error_codes = ("E21", "E35", "F06", "UE")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        rng = self.rng
        self.ambient = rng.uniform(18.0, 24.0)
        self.energy = rng.uniform(50.0, 2000.0)
        per_day = (
            rng.uniform(2.0, 3.5) if isinstance(self.episode, Depletion) else rng.uniform(0.7, 2.5)
        )
        # (start, end, water temperature, detergent used in points)
        self.cycles = self._plan_cycles(per_day)
        if isinstance(self.episode, Degrading):
            cutoff = self.episode.high_since - 10 * MINUTE
            self.cycles = [c for c in self.cycles if c[1] < cutoff]
        self.cycle_index = 0

    def _plan_cycles(self, per_day: float) -> list[tuple[float, float, float, float]]:
        rng = self.rng
        total = sum(HOME_ACTIVITY)
        cycles: list[tuple[float, float, float, float]] = []
        free_from = self.start
        for slot in _hour_slots(self.start, self.end):
            if rng.random() >= per_day * HOME_ACTIVITY[self.local_hour(slot)] / total:
                continue
            begin = slot + rng.uniform(0.0, HOUR)
            finish = begin + rng.uniform(40 * MINUTE, 90 * MINUTE)
            if begin >= free_from and finish + 2 * MINUTE < self.end:
                cycles.append(self._cycle(begin, finish))
                free_from = finish + 15 * MINUTE
        return cycles

    def _cycle(self, begin: float, finish: float) -> tuple[float, float, float, float]:
        rng = self.rng
        return (begin, finish, rng.choice((30.0, 40.0, 60.0)), round(rng.uniform(2.0, 4.0), 1))

    def _ensure_cycle_in(self, after: float, before: float) -> bool:
        """Add a cycle ending in [after, before) unless one already does."""
        if any(after <= c[1] < before for c in self.cycles):
            return True
        for _ in range(50):
            begin = self.rng.uniform(after, before - 95 * MINUTE)
            finish = begin + self.rng.uniform(40 * MINUTE, 90 * MINUTE)
            if all(finish + 15 * MINUTE < c[0] or begin > c[1] + 15 * MINUTE for c in self.cycles):
                self.cycles.append(self._cycle(begin, finish))
                self.cycles.sort()
                return True
        return False

    def own_events(self) -> list[Special]:
        rng = self.rng
        episode = self.episode
        count = rng.randint(50, 3000)
        placed = isinstance(episode, Depletion) and self._ensure_cycle_in(
            episode.crossing_after, episode.crossing_before
        )
        done_at = [round(c[1] + rng.uniform(5.0, 60.0), 3) for c in self.cycles]
        crossing = -1
        if placed and isinstance(episode, Depletion):
            candidates = [
                i
                for i, at in enumerate(done_at)
                if episode.crossing_after <= at < episode.crossing_before and i <= 20
            ]
            crossing = rng.choice(candidates) if candidates else -1
        if crossing >= 0:
            # Start exactly high enough that cycle `crossing` is the first below 15%.
            margin = round(rng.uniform(0.5, self.cycles[crossing][3] - 0.5), 1)
            level = round(DETERGENT_LOW_PCT + margin + sum(c[3] for c in self.cycles[:crossing]), 1)
        else:
            level = round(rng.uniform(NORMAL_REFILL_BELOW_PCT + 2.0, 100.0), 1)
        events: list[Special] = []
        for i, (begin, _, _, used) in enumerate(self.cycles):
            if crossing < 0 and level - used < NORMAL_REFILL_BELOW_PCT:
                refill_at = round(begin - rng.uniform(60.0, 600.0), 3)
                events.append((refill_at, "consumable", {"level": 100.0, "refill": True}))
                level = 100.0
            level = max(0.0, round(level - used, 1))
            count += 1
            events.append((done_at[i], "consumable", {"level": level, "cycles": count}))
            if i == crossing:
                self.truth.expect(
                    "depletion",
                    self.device.customer_id,
                    self.device.device_id,
                    start_at=done_at[i],
                    expected_at=done_at[i],
                    level=level,
                )
        if isinstance(episode, Depletion) and crossing < 0:
            self.truth.skip("depletion")
        return events

    def interval(self, t: float) -> float:
        fast = self.degrading_interval(t)
        return self.rng.uniform(240.0, 360.0) if fast is None else fast

    def telemetry(self, t: float) -> Fields:
        rng = self.rng
        cycles = self.cycles
        i = self.cycle_index
        while i < len(cycles) and cycles[i][1] <= t:
            i += 1
        self.cycle_index = i
        if i < len(cycles) and cycles[i][0] <= t:
            vibration = rng.uniform(0.15, 0.5)
            temperature = cycles[i][2] + rng.uniform(-1.5, 1.5)
            power = rng.uniform(300.0, 2200.0)
        else:
            vibration = rng.uniform(0.0, 0.05)
            temperature = self.ambient + rng.uniform(-0.5, 0.5)
            power = rng.uniform(1.0, 6.0)
        if self.episode is not None:
            vibration = self.vibration(t, vibration)
            if self.failed(t):
                power = rng.uniform(0.5, 2.0)
        self.energy += power * (t - self.last_t) / 3.6e6
        self.last_t = t
        return {
            "temperature": round(temperature, 2),
            "vibration": round(vibration, 3),
            "power": round(power, 1),
            "energy": round(self.energy, 3),
        }


class _Compressor(_Behaviour):
    error_codes = ("A01", "A07", "H12")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.energy = self.rng.uniform(1000.0, 50000.0)

    def interval(self, t: float) -> float:
        fast = self.degrading_interval(t)
        return self.rng.uniform(240.0, 360.0) if fast is None else fast

    def telemetry(self, t: float) -> Fields:
        rng = self.rng
        if rng.random() < SHIFT_LOAD[self.local_hour(t)] and not self.failed(t):
            vibration = rng.uniform(0.12, 0.45)
            temperature = rng.uniform(55.0, 75.0)
            power = rng.uniform(1500.0, 5500.0)
        else:
            vibration = rng.uniform(0.02, 0.06)
            temperature = rng.uniform(28.0, 35.0)
            power = rng.uniform(5.0, 20.0)
        if self.episode is not None:
            vibration = self.vibration(t, vibration)
        self.energy += power * (t - self.last_t) / 3.6e6
        self.last_t = t
        return {
            "temperature": round(temperature, 2),
            "vibration": round(vibration, 3),
            "power": round(power, 1),
            "energy": round(self.energy, 3),
        }


class _Vehicle(_Behaviour):
    error_codes = ("P0300", "P0420", "P0171", "U0100", "B1318")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        rng = self.rng
        self.odometer = rng.uniform(5000.0, 150000.0)
        self.ambient = rng.uniform(5.0, 25.0)
        per_day = rng.uniform(1.5, 3.5)
        total = sum(DRIVING_ACTIVITY)
        # (start, end, speed km/h)
        self.trips: list[tuple[float, float, float]] = []
        free_from = self.start
        for slot in _hour_slots(self.start, self.end):
            if rng.random() >= per_day * DRIVING_ACTIVITY[self.local_hour(slot)] / total:
                continue
            begin = slot + rng.uniform(0.0, HOUR)
            finish = begin + rng.uniform(10 * MINUTE, 50 * MINUTE)
            if begin >= free_from:
                self.trips.append((begin, finish, rng.uniform(25.0, 95.0)))
                free_from = finish + 10 * MINUTE
        self.trip_index = 0
        self.parked_since = self.start - HOUR

    def telemetry(self, t: float) -> Fields:
        rng = self.rng
        trips = self.trips
        i = self.trip_index
        # Distance driven since the last sample, over the trips it overlaps.
        j = i
        while j < len(trips) and trips[j][0] < t:
            begin, finish, speed = trips[j]
            overlap = min(t, finish) - max(self.last_t, begin)
            if overlap > 0:
                self.odometer += overlap * speed / 3600.0
            j += 1
        while i < len(trips) and trips[i][1] <= t:
            self.parked_since = trips[i][1]
            i += 1
        self.trip_index = i
        self.last_t = t
        if i < len(trips) and trips[i][0] <= t:
            warm = min(1.0, (t - trips[i][0]) / (5 * MINUTE))
            temperature = self.ambient + (90.0 - self.ambient) * warm + rng.uniform(-3.0, 6.0)
            battery = rng.uniform(92.0, 100.0)
        else:
            cooling = math.exp(-(t - self.parked_since) / 1500.0)
            temperature = self.ambient + (90.0 - self.ambient) * cooling + rng.uniform(-0.5, 0.5)
            parked_h = (t - self.parked_since) / HOUR
            battery = max(60.0, 98.0 - 0.4 * parked_h) + rng.uniform(-1.0, 1.0)
        return {
            "temperature": round(temperature, 2),
            "distance": round(self.odometer, 2),
            "battery": round(min(100.0, battery), 1),
        }


class _Wearable(_Behaviour):
    def own_events(self) -> list[Special]:
        rng = self.rng
        total = sum(HOME_ACTIVITY)
        per_hour = self.customer.daily_usage_min / total
        fade = self.fade
        day_factor: dict[int, float] = {}
        events: list[Special] = []
        for slot in _hour_slots(self.start, self.end):
            at = round(slot + rng.uniform(0.0, 300.0), 3)
            day = int((slot + self.utc_offset_s) // DAY)
            factor = day_factor.setdefault(day, rng.uniform(0.85, 1.15))
            minutes = (
                per_hour * HOME_ACTIVITY[self.local_hour(slot)] * factor * rng.uniform(0.8, 1.2)
            )
            if fade is not None and at >= fade.fade_start:
                ramp = min(1.0, (at - fade.fade_start) / FADE_RAMP_S)
                minutes *= 1.0 - (1.0 - fade.factor) * ramp
            events.append((at, "usage", {"usage_min": round(min(60.0, minutes), 1)}))
        return events

    def telemetry(self, t: float) -> Fields:
        # Charged on the nightstand 22:00-23:00 local, then drains about 4%/h.
        local = (t + self.utc_offset_s) % DAY / HOUR
        since_charge = (local - 23.0) % 24.0
        if since_charge >= 23.0:
            battery = 8.0 + 92.0 * (since_charge - 23.0)
        else:
            battery = max(5.0, 100.0 - 4.0 * since_charge)
        noisy = battery + self.rng.uniform(-0.5, 0.5)
        return {"battery": round(min(100.0, max(0.0, noisy)), 1)}


_BEHAVIOURS: dict[str, type[_Behaviour]] = {
    "washer": _Washer,
    "vehicle": _Vehicle,
    "wearable": _Wearable,
    "compressor": _Compressor,
}

Render = Callable[[int, float, str, Fields], dict[str, Any]]


def _wire_renderer(device: Device) -> Render:
    device_id = device.device_id
    # Canonical shapes are written as they are, without a call.
    renderers = {
        name: reading_renderer(name, shape)
        for name, shape in device.shapes.items()
        if shape.kind != "plain"
    }
    as_text = device.rfc3339_ts

    def render(n: int, ts: float, kind: str, fields: Fields) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": f"{device_id}-{n}",
            "ts": _rfc3339(ts) if as_text else ts,
            "device_id": device_id,
            "kind": kind,
        }
        for name, value in fields.items():
            write = renderers.get(name)
            if write is None:
                event[name] = value
            else:
                write(event, value)
        return event

    return render


def _canonical_renderer(device: Device) -> Render:
    device_id, customer_id, device_type = device.device_id, device.customer_id, device.device_type

    def render(n: int, ts: float, kind: str, fields: Fields) -> dict[str, Any]:
        return {
            "id": f"{device_id}-{n}",
            "ts": ts,
            "device_id": device_id,
            "customer_id": customer_id,
            "device_type": device_type,
            "kind": kind,
            **fields,
        }

    return render


class _CustomerContext:
    """Adds the offline rule runner's ``customer`` context object to canonical
    events: the profile on a customer's first event and, for wearable owners,
    again with ``usage_baseline_min`` (their true normal daily use) on their
    first event after their first, partial, UTC day has closed. Like the
    customer actor's rolling baseline, it is unknown before a day of history,
    so the partial first day is never compared with it."""

    def __init__(self, fleet: Fleet, start_ts: float) -> None:
        self.baseline_from = math.floor(start_ts / DAY) * DAY + DAY + DAILY_WINDOW_GRACE_S
        self.profiles = {c.customer_id: c.profile() for c in fleet.customers}
        owners = {d.customer_id for d in fleet.devices if d.device_type == "wearable"}
        self.baselines = {
            c.customer_id: c.daily_usage_min for c in fleet.customers if c.customer_id in owners
        }
        self.complete: set[str] = set()
        self.started: set[str] = set()

    def attach(self, event: dict[str, Any]) -> None:
        customer_id = event["customer_id"]
        if customer_id in self.complete:
            return
        baseline = self.baselines.get(customer_id)
        known = baseline is not None and event["ts"] >= self.baseline_from
        if customer_id in self.started and not known:
            return
        context = dict(self.profiles[customer_id])
        if known:
            context["usage_baseline_min"] = baseline
        event["customer"] = context
        self.started.add(customer_id)
        if known or baseline is None:
            self.complete.add(customer_id)


def _with_nan(event: Any) -> Any:
    if isinstance(event, dict):
        return {key: _with_nan(value) for key, value in event.items()}
    if isinstance(event, float) and math.isnan(event):
        return "__NaN__"
    return event


class _Injector:
    """Adds malformed events and duplicates to one device's stream. ``rng`` is
    shared by all devices' injectors (drawn in the stream's deterministic
    order) and is not the behaviours' source, so the valid events are the
    same with or without injection."""

    def __init__(
        self, device: Device, render: Render, rng: random.Random, params: SimParams
    ) -> None:
        self.device = device
        self.render = render
        self.rng = rng
        self.malformed_share = params.malformed_share
        self.duplicate_share = params.duplicate_share
        self.serial = 0

    def malformed(
        self, ts: float, kind: str, fields: Fields, counts: Counter[str]
    ) -> tuple[str, bytes]:
        """(the device id to route it by, the bad record's bytes)."""
        rng = self.rng
        self.serial += 1
        n = self.serial
        fault = rng.choice(MALFORMED_KINDS)
        readings = [name for name in fields if name in OUT_OF_RANGE]
        if fault in ("nan", "out_of_range", "unknown_unit") and not readings:
            fault = "missing_field"
        counts[fault] += 1
        reading = rng.choice(readings) if readings else ""
        event_id = f"{self.device.device_id}-m{n}"
        route = self.device.device_id
        if fault == "nan":
            event = self.render(0, ts, kind, {**fields, reading: math.nan})
            event["id"] = event_id
            return route, orjson.dumps(_with_nan(event)).replace(b'"__NaN__"', b"NaN")
        if fault == "out_of_range":
            event = self.render(0, ts, kind, {**fields, reading: OUT_OF_RANGE[reading]})
        elif fault == "unknown_unit":
            rest = {name: value for name, value in fields.items() if name != reading}
            event = self.render(0, ts, kind, rest)
            event[reading] = {"value": fields[reading], "unit": "furlong"}
        else:
            event = self.render(0, ts, kind, fields)
        event["id"] = event_id
        if fault == "unknown_device":
            # Sent on the ghost's own topic: ingest checks a device topic's id.
            route = event["device_id"] = rng.choice(GHOST_DEVICE_IDS)
        elif fault == "missing_field":
            del event[rng.choice(("id", "ts", "device_id", "kind"))]
        data = orjson.dumps(event)
        if fault == "bad_json":
            data = data[: rng.randint(len(data) // 3, len(data) - 1)]
        return route, data


def _device_stream(
    behaviour: _Behaviour,
    render: Render,
    injector: _Injector | None,
    counts: Counter[str],
) -> Iterator[tuple[float, dict[str, Any] | tuple[str, bytes]]]:
    """One device's events in time order: telemetry interleaved with its
    discrete events, as (ts, event dict) or, for a malformed record,
    (ts, (device id to route it by, bytes))."""
    specials = behaviour.discrete()
    episode = behaviour.episode
    silent_from, resume_at = (
        (episode.silent_from, episode.resume_at)
        if isinstance(episode, Silence)
        else (math.inf, 0.0)
    )
    end = behaviour.end
    telemetry, interval = behaviour.telemetry, behaviour.interval
    t = round(behaviour.start + behaviour.rng.uniform(0.0, 300.0), 3)
    i, n_specials = 0, len(specials)
    n = 0
    duplicates = 0
    last_telemetry = last_any = -math.inf
    if injector is not None:
        inject, malformed_share = injector.rng.random, injector.malformed_share
        either_share = malformed_share + injector.duplicate_share
    else:
        inject, malformed_share, either_share = None, 0.0, 0.0
    while True:
        if i < n_specials and specials[i][0] <= t:
            ts, kind, fields = specials[i]
            i += 1
        elif t < end:
            if silent_from <= t < resume_at:
                behaviour.truth.expect(
                    "silence",
                    behaviour.device.customer_id,
                    behaviour.device.device_id,
                    start_at=last_telemetry,
                    expected_at=round(last_telemetry + SILENCE_WATCHDOG_S, 3),
                    due_by=round(last_any + SILENCE_WATCHDOG_S, 3),
                    silent_s=round(resume_at - last_any, 3),
                )
                t = round(resume_at + behaviour.rng.uniform(5.0, 60.0), 3)
                silent_from = math.inf
                continue
            ts, kind, fields = t, "telemetry", telemetry(t)
            last_telemetry = t
            t = round(t + interval(t), 3)
        else:
            break
        n += 1
        last_any = ts
        event = render(n, ts, kind, fields)
        yield ts, event
        if inject is not None:
            roll = inject()
            if roll < malformed_share:
                yield ts, injector.malformed(ts, kind, fields, counts)  # type: ignore[union-attr]
            elif roll < either_share:
                duplicates += 1
                yield ts, event
    counts["events"] += n
    counts["duplicates"] += duplicates


class Simulation:
    """One simulated run: the fleet, its event stream and its ground truth.

    ``events()`` may be iterated once; ``truth()`` is complete after that.
    """

    def __init__(self, params: SimParams) -> None:
        if params.end_ts is None:
            params = replace(params, end_ts=float(int(time.time())))
        self.params = params
        self.end_ts = float(params.end_ts)  # type: ignore[arg-type]
        self.start_ts = self.end_ts - params.span_s
        self.fleet: Fleet = build_fleet(
            customers=params.customers,
            devices_per_customer=params.devices_per_customer,
            seed=params.seed,
            start_ts=self.start_ts,
            device_types=params.device_types,
            marketing_consent_share=params.marketing_consent_share,
            service_consent_share=params.service_consent_share,
            rfc3339_share=params.rfc3339_share,
        )
        self.plan = plan_episodes(
            self.fleet,
            params.episodes,
            seed=params.seed,
            start_ts=self.start_ts,
            end_ts=self.end_ts,
        )
        self._truth = TruthBuilder(self.fleet, due_slack_s=params.due_slack_s)
        for kind, count in self.plan.skipped.items():
            self._truth.skip(kind, count)
        self._counts: Counter[str] = Counter()
        self._records = 0
        self._done = False
        self._started = False
        for fade in self.plan.fades.values():
            self._truth.expect(
                "usage_fade",
                fade.customer_id,
                None,
                start_at=fade.fade_start,
                expected_at=fade.detect_at,
                due_by=fade.churn_at,
                churn_at=fade.churn_at,
                usage_factor=fade.factor,
                whole_day_faded=fade.whole_day_faded,
                baseline_daily_min=self.fleet.customer(fade.customer_id).daily_usage_min,
            )
            self._truth.churn_outcome(fade.customer_id, fade.churn_at)

    def registry_records(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, value) for ``iot.registry``."""
        return [(d.device_id, d.registry_record()) for d in self.fleet.devices]

    def profiles(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, value) for ``crm.customers``."""
        return [(c.customer_id, c.profile()) for c in self.fleet.customers]

    def outcomes(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, value) for ``crm.outcomes``: the churn of each fading customer."""
        return [(o["customer_id"], o) for o in self._truth.outcomes]

    def events(self) -> Iterator[tuple[str, bytes]]:
        """(device_id, JSON bytes) in global event-time order (ties by device).

        The device id says where the record goes (``iot.device.<device_id>``,
        or the key on the shared topic); for malformed records it is the
        device that sent them, or one of ``GHOST_DEVICE_IDS``.
        """
        if self._started:
            raise RuntimeError("a Simulation's events can be iterated only once")
        self._started = True
        params = self.params
        inject = not params.canonical and (params.malformed_share > 0 or params.duplicate_share > 0)
        customers = {c.customer_id: c for c in self.fleet.customers}
        counts = self._counts
        injection_rng = random.Random(f"{params.seed}/inject")
        heap: list[tuple[float, int, Any, Iterator[tuple[float, Any]], str]] = []
        for device in self.fleet.devices:
            render = _canonical_renderer(device) if params.canonical else _wire_renderer(device)
            behaviour = _BEHAVIOURS[device.device_type](
                device,
                customers[device.customer_id],
                self.plan.by_device.get(device.device_id),
                self.plan.fades.get(device.customer_id)
                if device.device_type == "wearable"
                else None,
                self.start_ts,
                self.end_ts,
                params.seed,
                self._truth,
            )
            injector = _Injector(device, render, injection_rng, params) if inject else None
            stream = _device_stream(behaviour, render, injector, counts)
            first = next(stream, None)
            if first is not None:
                heap.append((first[0], device.index, first[1], stream, device.device_id))
        heapq.heapify(heap)
        attach = _CustomerContext(self.fleet, self.start_ts).attach if params.canonical else None
        dumps = orjson.dumps
        replace_top, pop = heapq.heapreplace, heapq.heappop
        records = 0
        while heap:
            _, index, event, stream, device_id = heap[0]
            following = next(stream, None)
            if following is None:
                pop(heap)
            else:
                replace_top(heap, (following[0], index, following[1], stream, device_id))
            records += 1
            if type(event) is dict:
                if attach is not None:
                    attach(event)
                yield device_id, dumps(event)
            else:
                yield event
        self._records = records
        self._done = True

    def truth(self) -> dict[str, Any]:
        """The ground truth document; only after ``events()`` was exhausted."""
        if not self._done:
            raise RuntimeError("the truth is known only after all events were generated")
        counts = self._counts
        malformed = {kind: counts[kind] for kind in MALFORMED_KINDS}
        reasons: Counter[str] = Counter()
        for kind, n in malformed.items():
            reasons[MALFORMED_REASON[kind]] += n
        return self._truth.build(
            params=self.params.to_json(),
            window={"start_ts": self.start_ts, "end_ts": self.end_ts},
            counts={
                "records": self._records,
                "events": counts["events"],
                "duplicates": counts["duplicates"],
                "malformed": malformed,
                "expected_deadletters": sum(malformed.values()),
                "deadletter_reason_codes": dict(sorted(reasons.items())),
                "registry_records": len(self.fleet.devices),
                "profiles": len(self.fleet.customers),
            },
        )
