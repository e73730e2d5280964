"""The injected episodes happen in the events exactly as the truth says, and
normal devices stay clear of every rule threshold."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from loadtest_helpers import END_TS, PARAMS, Run

from loadtest.episodes import HOUR, MINUTE

Events = list[dict[str, Any]]


def _expected(run: Run, episode: str, *, suppressed: bool = False) -> list[dict[str, Any]]:
    entries = run.truth["expected_actions"] + (run.truth["suppressed"] if suppressed else [])
    return [e for e in entries if e["episode"] == episode]


def _devices_of(run: Run, device_type: str) -> list[str]:
    return [d.device_id for d in run.sim.fleet.devices if d.device_type == device_type]


def _episode_devices(run: Run, *episodes: str) -> set[str]:
    entries = run.truth["expected_actions"] + run.truth["suppressed"]
    return {e["device_id"] for e in entries if e["episode"] in episodes}


def test_every_episode_kind_occurs_and_consent_suppresses_some(canonical_run: Run) -> None:
    truth = canonical_run.truth
    kinds = {e["episode"] for e in truth["expected_actions"]}
    assert kinds == {
        "degrading",
        "depletion",
        "usage_fade",
        "error_burst",
        "error_reboot",
        "silence",
    }
    assert truth["suppressed"], "the fixture should have customers without marketing consent"
    assert truth["skipped_episodes"] == {}


def test_expected_actions_are_well_formed(canonical_run: Run) -> None:
    truth = canonical_run.truth
    start = truth["window"]["start_ts"]
    for entry in truth["expected_actions"]:
        assert start <= entry["start_at"] <= entry["expected_at"] < entry["due_by"]
        assert entry["due_by"] <= END_TS + PARAMS.due_slack_s
        assert entry["rule"] == truth["episode_rules"][entry["episode"]]["rule"]
        if entry["device_id"] is not None:
            assert truth["devices"][entry["device_id"]] == entry["customer_id"]


def test_marketing_actions_only_for_customers_who_consented(canonical_run: Run) -> None:
    fleet = canonical_run.sim.fleet
    for entry in canonical_run.truth["expected_actions"]:
        if entry["type"] in ("coupon", "retention_offer"):
            assert fleet.customer(entry["customer_id"]).marketing_consent
    for entry in canonical_run.truth["suppressed"]:
        assert entry["type"] in ("coupon", "retention_offer")
        assert not fleet.customer(entry["customer_id"]).marketing_consent
        assert entry["reason"] == "no marketing consent"


def test_degrading_vibration_is_sustained_above_the_limit_until_failure(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    for entry in _expected(canonical_run, "degrading"):
        events = events_by_device[entry["device_id"]]
        high_since, failure_at = entry["high_since"], entry["failure_at"]
        before = [e for e in events if e["ts"] < high_since and "vibration" in e]
        assert max(e["vibration"] for e in before) < 0.8
        assert entry["expected_at"] == pytest.approx(high_since + 600)
        # Only telemetry above the limit between the crossing and the failure,
        # at most a minute apart: nothing can cancel a 10-minute sustained rule.
        during = [e for e in events if high_since <= e["ts"] < failure_at]
        assert all(e["kind"] == "telemetry" and e["vibration"] > 0.8 for e in during)
        times = [high_since] + [e["ts"] for e in during] + [failure_at]
        assert max(b - a for a, b in pairwise(times)) <= 60
        assert failure_at - high_since >= 20 * MINUTE
        fault = [e for e in events if e["kind"] == "status" and e.get("state") == "fault"]
        assert [e["ts"] for e in fault] == [failure_at]
        drift = [e["vibration"] for e in before if e["ts"] >= entry["start_at"]]
        assert drift[-1] > drift[0] + 0.2  # it drifted up, not jumped


def test_normal_machines_vibrate_well_below_the_limit(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    degrading = _episode_devices(canonical_run, "degrading")
    normal = [
        d
        for t in ("washer", "compressor")
        for d in _devices_of(canonical_run, t)
        if d not in degrading
    ]
    assert normal
    for device_id in normal:
        peak = max(e["vibration"] for e in events_by_device[device_id] if "vibration" in e)
        assert peak <= 0.6, device_id


def test_detergent_crosses_below_15_exactly_when_the_truth_says(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    crossings = _expected(canonical_run, "depletion", suppressed=True)
    assert crossings
    for entry in crossings:
        levels = [e for e in events_by_device[entry["device_id"]] if "level" in e]
        first_low = next(e for e in levels if e["level"] < 15)
        assert first_low["ts"] == entry["expected_at"] == entry["start_at"]
        assert first_low["kind"] == "consumable"
        earlier = [e["level"] for e in levels if e["ts"] < first_low["ts"]]
        drops = [a - b for a, b in pairwise([*earlier, first_low["level"]])]
        assert all(2.0 <= d <= 4.0 for d in drops)  # 2-4 points per cycle, no refill


def test_normal_washers_refill_before_running_low(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    depleting = _episode_devices(canonical_run, "depletion")
    refills = 0
    for device_id in _devices_of(canonical_run, "washer"):
        if device_id in depleting:
            continue
        levels = [e for e in events_by_device[device_id] if "level" in e]
        assert all(e["level"] >= 20 for e in levels), device_id
        refills += sum(1 for e in levels if e.get("refill"))
    assert refills > 0


def _usage_last_day(events: Events) -> float:
    return sum(e["usage_min"] for e in events if e["kind"] == "usage" and e["ts"] >= END_TS - 86400)


def test_fading_customers_use_their_wearables_far_less_on_the_last_day(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    fleet = canonical_run.sim.fleet
    wearable_ids = set(_devices_of(canonical_run, "wearable"))
    fading = {e["customer_id"]: e for e in _expected(canonical_run, "usage_fade", suppressed=True)}
    assert fading
    for customer in fleet.customers:
        wearables = [d for d in customer.devices if d in wearable_ids]
        if not wearables:
            continue
        daily = [_usage_last_day(events_by_device[d]) for d in wearables]
        share = sum(daily) / len(daily) / customer.daily_usage_min
        if customer.customer_id in fading:
            assert share < 0.4, customer.customer_id
            entry = fading[customer.customer_id]
            assert entry["churn_at"] == END_TS and entry["due_by"] == END_TS + PARAMS.due_slack_s
        else:
            assert share > 0.6, customer.customer_id


def test_each_fading_customer_has_a_churn_outcome(canonical_run: Run) -> None:
    fading = sorted(
        e["customer_id"] for e in _expected(canonical_run, "usage_fade", suppressed=True)
    )
    outcomes = canonical_run.truth["outcomes"]
    assert sorted(o["customer_id"] for o in outcomes) == fading
    for outcome in outcomes:
        assert outcome == {
            "outcome_id": f"churn-{outcome['customer_id']}",
            "type": "customer_churned",
            "customer_id": outcome["customer_id"],
            "ts": END_TS,
        }


def _errors(events: Events) -> list[float]:
    return [e["ts"] for e in events if e["kind"] == "error"]


def test_error_bursts_have_four_errors_within_ten_minutes(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    for entry in _expected(canonical_run, "error_burst"):
        errors = _errors(events_by_device[entry["device_id"]])
        first = errors.index(entry["start_at"])
        assert errors[first + 3] == entry["expected_at"]
        assert entry["expected_at"] - entry["start_at"] < 10 * MINUTE


def test_other_devices_never_have_four_errors_within_ten_minutes(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    bursting = _episode_devices(canonical_run, "error_burst")
    sporadic = 0
    for device_id, events in events_by_device.items():
        if device_id in bursting:
            continue
        errors = _errors(events)
        sporadic += len(errors)
        assert all(b - a >= 3 * HOUR for a, b in pairwise(errors))
    assert sporadic > 0


def _reboots_after_errors(events: Events) -> list[tuple[float, float]]:
    errors = _errors(events)
    reboots = [e["ts"] for e in events if e["kind"] == "status" and e.get("state") == "reboot"]
    return [(err, rb) for err in errors for rb in reboots if 0 <= rb - err < 5 * MINUTE]


def test_error_then_reboot_only_where_the_truth_says(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    expected = {e["device_id"]: e for e in _expected(canonical_run, "error_reboot")}
    assert expected
    plain_reboots = 0
    for device_id, events in events_by_device.items():
        pairs = _reboots_after_errors(events)
        if device_id in expected:
            entry = expected[device_id]
            assert pairs == [(entry["start_at"], entry["expected_at"])]
        else:
            assert pairs == [], device_id
            plain_reboots += sum(1 for e in events if e.get("state") == "reboot")
    assert plain_reboots > 0  # reboots without a preceding error exist as negatives


def test_silent_devices_send_nothing_for_three_to_four_hours(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    silences = _expected(canonical_run, "silence")
    assert silences
    for entry in silences:
        events = events_by_device[entry["device_id"]]
        last = entry["due_by"] - PARAMS.due_slack_s - 2 * HOUR  # last event before the gap
        later = [e["ts"] for e in events if e["ts"] > last]
        assert 3 * HOUR < later[0] - last == pytest.approx(entry["silent_s"], abs=1e-3)
        telemetry_before = max(
            e["ts"] for e in events if e["kind"] == "telemetry" and e["ts"] <= last
        )
        assert telemetry_before == entry["start_at"]
        assert entry["expected_at"] == pytest.approx(entry["start_at"] + 2 * HOUR)
        next_telemetry = min(e["ts"] for e in events if e["kind"] == "telemetry" and e["ts"] > last)
        # The 2 h watchdog fires once, and not again (it re-arms after firing).
        assert 2 * HOUR < next_telemetry - entry["start_at"] < 4 * HOUR


def test_other_devices_send_telemetry_at_least_every_ten_minutes(
    canonical_run: Run, events_by_device: dict[str, Events]
) -> None:
    silent = _episode_devices(canonical_run, "silence")
    start = canonical_run.truth["window"]["start_ts"]
    for device_id, events in events_by_device.items():
        if device_id in silent:
            continue
        times = [start] + [e["ts"] for e in events if e["kind"] == "telemetry"] + [END_TS]
        assert max(b - a for a, b in pairwise(times)) <= 10 * MINUTE, device_id


@pytest.mark.parametrize(
    ("end_hour", "faded"),
    # A 3-day span ending at 23:00 holds a partial day, a baseline day and a
    # whole faded day closed before the end; ending at 00:10 it does not.
    [(23.0, True), (0.5, True), (0.17, False)],
)
def test_a_whole_faded_day_is_planned_only_after_a_baseline_day(
    end_hour: float, faded: bool
) -> None:
    from loadtest.episodes import DAY, EpisodeShares, plan_episodes
    from loadtest.fleet import build_fleet

    end_ts = 100 * DAY + end_hour * HOUR
    start_ts = end_ts - 3 * DAY
    fleet = build_fleet(customers=40, devices_per_customer=2, seed=3, start_ts=start_ts)
    plan = plan_episodes(fleet, EpisodeShares(), seed=3, start_ts=start_ts, end_ts=end_ts)
    if faded:
        assert plan.fades and "usage_fade" not in plan.skipped
        first_day = start_ts // DAY * DAY
        for fade in plan.fades.values():
            assert fade.whole_day_faded
            # the faded day is judged against at least the whole day before it
            assert fade.detect_at - DAY - 15 * MINUTE >= first_day + 2 * DAY
    else:
        assert not plan.fades and plan.skipped["usage_fade"] > 0
