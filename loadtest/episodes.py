"""Which devices and customers get an injected episode, and when.

An episode is a stretch of behaviour after which one CRM action is due (see
docs/simulator.md). Planning only fixes who and when; the device behaviours in
``loadtest.simulator`` play the episode out and report the exact event times to
the ground truth.

>>> from loadtest.fleet import build_fleet
>>> fleet = build_fleet(customers=40, devices_per_customer=2, seed=3, start_ts=0)
>>> plan = plan_episodes(fleet, EpisodeShares(), seed=3, start_ts=0, end_ts=2 * 86400)
>>> sorted({type(e).__name__ for e in plan.by_device.values()})
['Degrading', 'Depletion', 'ErrorBurst', 'ErrorReboot', 'Silence']
>>> all(0 < e.churn_at <= 2 * 86400 for e in plan.fades.values())
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.fleet import Device, Fleet
from tables.state import BASELINE_MIN_DAYS

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

#: Silence must outlast the 2 h watchdog once but not twice (it re-arms after firing).
SILENCE_GAP_S = (3 * HOUR + 5 * MINUTE, 3 * HOUR + 50 * MINUTE)
#: Vibration stays above the threshold this long before the failure (>= 20 min).
HIGH_VIBRATION_S = (25 * MINUTE, 60 * MINUTE)
#: Hours of slow drift before the vibration crosses the threshold.
DRIFT_S = (2 * HOUR, 6 * HOUR)
#: Wearable use falls to its faded level over this long.
FADE_RAMP_S = HOUR
#: The retention rule sums use per UTC day and closes a day this late.
DAILY_WINDOW_GRACE_S = 15 * MINUTE


@dataclass(frozen=True, slots=True)
class EpisodeShares:
    """Share of the eligible devices (or customers) that get each episode."""

    degrading: float = 0.1  # of washers and compressors
    depletion: float = 0.15  # of washers
    usage_fade: float = 0.1  # of customers owning a wearable
    error_burst: float = 0.1  # of vehicles
    error_reboot: float = 0.05  # of vehicles, washers and compressors
    silence: float = 0.05  # of all devices


@dataclass(frozen=True, slots=True)
class Degrading:
    """Vibration drifts up from ``drift_start``, is above 0.8 g from
    ``high_since`` and the device fails at ``failure_at``."""

    device_id: str
    drift_start: float
    high_since: float
    failure_at: float


@dataclass(frozen=True, slots=True)
class Depletion:
    """The detergent level crosses below 15% after a washing cycle that ends
    in [``crossing_after``, ``crossing_before``)."""

    device_id: str
    crossing_after: float
    crossing_before: float


@dataclass(frozen=True, slots=True)
class UsageFade:
    """From ``fade_start`` the customer's wearable use falls (over
    ``FADE_RAMP_S``) to ``factor`` of their baseline; they churn at
    ``churn_at``. ``detect_at`` is when a daily-usage rule can first see it:
    the close of the first whole faded UTC day, when one fits in the span."""

    customer_id: str
    fade_start: float
    factor: float
    churn_at: float
    detect_at: float
    whole_day_faded: bool


@dataclass(frozen=True, slots=True)
class ErrorBurst:
    device_id: str
    error_times: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class ErrorReboot:
    device_id: str
    error_at: float
    reboot_at: float


@dataclass(frozen=True, slots=True)
class Silence:
    """No event at all in [``silent_from``, ``resume_at``)."""

    device_id: str
    silent_from: float
    resume_at: float


DeviceEpisode = Degrading | Depletion | ErrorBurst | ErrorReboot | Silence


@dataclass(slots=True)
class EpisodePlan:
    by_device: dict[str, DeviceEpisode] = field(default_factory=dict)
    fades: dict[str, UsageFade] = field(default_factory=dict)
    #: Episodes that were due but did not fit into the simulated span.
    skipped: dict[str, int] = field(default_factory=dict)


def _count(share: float, eligible: int) -> int:
    if share <= 0 or eligible == 0:
        return 0
    return min(eligible, max(1, round(share * eligible)))


def _ms(t: float) -> float:
    return round(t, 3)


def plan_episodes(
    fleet: Fleet, shares: EpisodeShares, *, seed: int, start_ts: float, end_ts: float
) -> EpisodePlan:
    """Pick episode targets and times; at most one episode per device."""
    rng = random.Random(f"{seed}/episodes")
    span = end_ts - start_ts
    warmup = 0.1 * span
    plan = EpisodePlan()
    taken: set[str] = set()

    # Churn is a customer's story: all their wearables fade together.
    wearable_owners = sorted({d.customer_id for d in fleet.devices if d.device_type == "wearable"})
    fade_count = _count(shares.usage_fade, len(wearable_owners))
    # The last UTC day whose daily window closes before the end; the fade
    # starts early enough that this whole day is faded, if the span allows.
    last_day_end = math.floor((end_ts - DAILY_WINDOW_GRACE_S) / DAY) * DAY
    latest_fade = last_day_end - DAY - FADE_RAMP_S
    earliest_fade = start_ts + HOUR
    # The customer actor has a usage baseline only after the first, partial,
    # UTC day and BASELINE_MIN_DAYS whole days; a whole faded day before then
    # is no detectable episode (the rule's "unknown baseline: no offer").
    baseline_known_from = (math.floor(start_ts / DAY) + 1 + BASELINE_MIN_DAYS) * DAY
    for customer_id in rng.sample(wearable_owners, fade_count):
        if span < DAY or (
            earliest_fade <= latest_fade and last_day_end - DAY < baseline_known_from
        ):
            plan.skipped["usage_fade"] = plan.skipped.get("usage_fade", 0) + 1
            continue
        if earliest_fade <= latest_fade:
            fade_start = rng.uniform(max(earliest_fade, latest_fade - 6 * HOUR), latest_fade)
            detect_at, whole_day = last_day_end + DAILY_WINDOW_GRACE_S, True
        else:
            fade_start = start_ts + rng.uniform(0.4, 0.5) * span
            detect_at, whole_day = min(fade_start + DAY, end_ts), False
        plan.fades[customer_id] = UsageFade(
            customer_id=customer_id,
            fade_start=_ms(fade_start),
            factor=round(rng.uniform(0.05, 0.25), 3),
            churn_at=float(end_ts),
            detect_at=_ms(detect_at),
            whole_day_faded=whole_day,
        )
        taken.update(
            d.device_id
            for d in fleet.devices
            if d.customer_id == customer_id and d.device_type == "wearable"
        )

    def assign(
        kind: str,
        types: tuple[str, ...],
        share: float,
        make: Callable[[Device], DeviceEpisode | None],
    ) -> None:
        eligible = [d for d in fleet.devices if d.device_type in types]
        available = [d for d in eligible if d.device_id not in taken]
        count = min(len(available), _count(share, len(eligible)))
        for device in rng.sample(available, count):
            episode = make(device)
            if episode is None:
                plan.skipped[kind] = plan.skipped.get(kind, 0) + 1
                continue
            plan.by_device[device.device_id] = episode
            taken.add(device.device_id)

    def degrading(device: Device) -> Degrading | None:
        high = rng.uniform(*HIGH_VIBRATION_S)
        drift = max(30 * MINUTE, rng.uniform(*DRIFT_S) * min(1.0, span / (2 * DAY)))
        earliest = start_ts + warmup + drift + high
        latest = end_ts - 5 * MINUTE
        if earliest >= latest:
            return None
        failure_at = rng.uniform(earliest, latest)
        return Degrading(
            device_id=device.device_id,
            drift_start=_ms(failure_at - high - drift),
            high_since=_ms(failure_at - high),
            failure_at=_ms(failure_at),
        )

    def depletion(device: Device) -> Depletion | None:
        after, before = start_ts + warmup, end_ts - 10 * MINUTE
        if after >= before:
            return None
        return Depletion(device_id=device.device_id, crossing_after=after, crossing_before=before)

    def error_burst(device: Device) -> ErrorBurst | None:
        latest = end_ts - 30 * MINUTE
        if start_ts + warmup >= latest:
            return None
        first = rng.uniform(start_ts + warmup, latest)
        spread = rng.uniform(2 * MINUTE, 8 * MINUTE)
        count = rng.randint(4, 7)
        later = sorted(first + rng.uniform(1.0, spread) for _ in range(count - 1))
        return ErrorBurst(device_id=device.device_id, error_times=tuple(map(_ms, [first, *later])))

    def error_reboot(device: Device) -> ErrorReboot | None:
        latest = end_ts - 30 * MINUTE
        if start_ts + warmup >= latest:
            return None
        error_at = rng.uniform(start_ts + warmup, latest)
        return ErrorReboot(
            device_id=device.device_id,
            error_at=_ms(error_at),
            reboot_at=_ms(error_at + rng.uniform(30.0, 240.0)),
        )

    def silence(device: Device) -> Silence | None:
        gap = rng.uniform(*SILENCE_GAP_S)
        latest = end_ts - gap - 30 * MINUTE
        if start_ts + warmup >= latest:
            return None
        silent_from = rng.uniform(start_ts + warmup, latest)
        return Silence(
            device_id=device.device_id,
            silent_from=_ms(silent_from),
            resume_at=_ms(silent_from + gap),
        )

    assign("degrading", ("washer", "compressor"), shares.degrading, degrading)
    assign("depletion", ("washer",), shares.depletion, depletion)
    assign("error_burst", ("vehicle",), shares.error_burst, error_burst)
    assign("error_reboot", ("vehicle", "washer", "compressor"), shares.error_reboot, error_reboot)
    assign("silence", ("washer", "vehicle", "wearable", "compressor"), shares.silence, silence)
    return plan
