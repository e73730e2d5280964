"""Scoring maths on hand-made truths and actions."""

from __future__ import annotations

import io
from typing import Any

import pytest

from loadtest.accuracy import format_score, normalise_action, read_actions, score


def _expected(
    action_type: str = "support_case",
    customer_id: str = "c1",
    device_id: str | None = "d1",
    *,
    start_at: float = 100.0,
    expected_at: float = 200.0,
    due_by: float = 500.0,
    episode: str = "silence",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": action_type,
        "customer_id": customer_id,
        "device_id": device_id,
        "episode": episode,
        "start_at": start_at,
        "expected_at": expected_at,
        "due_by": due_by,
        **extra,
    }


def _action(
    at: float,
    action_type: str = "support_case",
    customer_id: str = "c1",
    device_id: str | None = "d1",
    action_id: str | None = None,
) -> dict[str, Any]:
    return {
        "action_id": action_id or f"{action_type}-{customer_id}-{device_id}-{at}",
        "type": action_type,
        "customer_id": customer_id,
        "device_id": device_id,
        "rule": {"id": "r", "version": 1},
        "at": at,
    }


def _truth(*expected: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"expected_actions": list(expected), **more}


def _row(result: dict[str, Any], action_type: str = "support_case") -> dict[str, Any]:
    return result["types"][action_type]


def test_an_action_in_the_window_is_a_true_positive() -> None:
    row = _row(score(_truth(_expected()), [_action(300.0)]))
    assert (row["tp"], row["fp"], row["fn"]) == (1, 0, 0)
    assert (row["precision"], row["recall"]) == (1.0, 1.0)
    assert row["delay_s"] == {"n": 1, "p50": 100.0, "mean": 100.0}


@pytest.mark.parametrize("at", [99.0, 500.5])
def test_an_action_outside_start_and_due_by_is_both_a_miss_and_a_false_alarm(at: float) -> None:
    row = _row(score(_truth(_expected()), [_action(at)]))
    assert (row["tp"], row["fp"], row["fn"]) == (0, 1, 1)
    assert (row["precision"], row["recall"]) == (0.0, 0.0)


def test_the_window_bounds_are_inclusive() -> None:
    result = score(
        _truth(_expected(), _expected(device_id="d2")),
        [_action(100.0), _action(500.0, device_id="d2")],
    )
    assert _row(result)["tp"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "coupon"), ("customer_id", "c2"), ("device_id", "d2")],
)
def test_type_customer_and_device_must_all_match(field: str, value: str) -> None:
    action = _action(300.0)
    action[field] = value
    result = score(_truth(_expected()), [action])
    assert _row(result)["fn"] == 1
    assert result["total"]["fp"] == 1 and result["total"]["tp"] == 0


def test_a_customer_level_expectation_matches_any_of_the_customers_devices() -> None:
    expected = _expected("retention_offer", device_id=None, episode="usage_fade")
    result = score(_truth(expected), [_action(300.0, "retention_offer", device_id="d7")])
    assert _row(result, "retention_offer")["tp"] == 1


def test_duplicates_by_action_id_count_once() -> None:
    same = _action(300.0, action_id="a1")
    result = score(_truth(_expected()), [same, dict(same), dict(same)])
    assert _row(result)["tp"] == 1 and _row(result)["fp"] == 0
    assert result["duplicate_actions"] == 2
    assert result["actions"] == 1


def test_each_expected_action_matches_at_most_one_action() -> None:
    result = score(_truth(_expected()), [_action(300.0), _action(310.0)])
    row = _row(result)
    assert (row["tp"], row["fp"], row["fn"]) == (1, 1, 0)
    assert row["precision"] == 0.5
    assert row["delay_s"]["p50"] == 100.0  # the earliest eligible action is the match


def test_overlapping_windows_are_matched_to_maximise_hits() -> None:
    # The long window must not take the only action the short one can use.
    long_window = _expected(start_at=0.0, expected_at=0.0, due_by=300.0)
    short_window = _expected(start_at=50.0, expected_at=50.0, due_by=100.0)
    result = score(_truth(long_window, short_window), [_action(60.0), _action(200.0)])
    assert _row(result)["tp"] == 2 and _row(result)["fn"] == 0


def test_lead_times_measure_failure_and_churn_minus_action_time() -> None:
    truth = _truth(
        _expected("maintenance_booking", device_id="d1", episode="degrading", failure_at=1000.0),
        _expected("maintenance_booking", device_id="d2", episode="degrading", failure_at=1500.0),
        _expected(
            "retention_offer", device_id=None, episode="usage_fade", due_by=900.0, churn_at=900.0
        ),
    )
    actions = [
        _action(200.0, "maintenance_booking", device_id="d1"),
        _action(400.0, "maintenance_booking", device_id="d2"),
        _action(600.0, "retention_offer", device_id=None),
    ]
    result = score(truth, actions)
    assert _row(result, "maintenance_booking")["lead_time_s"] == {
        "n": 2,
        "p50": 950.0,
        "mean": 950.0,
    }
    assert _row(result, "retention_offer")["lead_time_s"] == {"n": 1, "p50": 300.0, "mean": 300.0}
    assert _row(result)["lead_time_s"] == {"n": 0, "p50": None, "mean": None}


def test_undefined_ratios_are_none_not_zero_or_one() -> None:
    result = score(_truth(), [])
    row = _row(result, "coupon")
    assert (row["precision"], row["recall"]) == (None, None)
    assert result["total"]["precision"] is None


def test_precision_and_recall_per_type_and_in_total() -> None:
    truth = _truth(
        _expected("coupon", "c1", "d1", episode="depletion"),
        _expected("coupon", "c2", "d2", episode="depletion"),
        _expected("support_case", "c3", "d3"),
    )
    actions = [
        _action(150.0, "coupon", "c1", "d1"),
        _action(150.0, "coupon", "c9", "d9"),
        _action(150.0, "coupon", "c8", "d8"),
    ]
    result = score(truth, actions)
    assert (_row(result, "coupon")["precision"], _row(result, "coupon")["recall"]) == (0.3333, 0.5)
    assert _row(result)["recall"] == 0.0
    assert result["total"] == {"tp": 1, "fp": 2, "fn": 2, "precision": 0.3333, "recall": 0.3333}
    assert result["episodes"]["depletion"] == {"expected": 2, "detected": 1, "recall": 0.5}


def test_an_unknown_action_type_is_a_false_positive_of_its_own_type() -> None:
    result = score(_truth(_expected()), [_action(300.0, "free_pizza")])
    assert _row(result, "free_pizza")["fp"] == 1
    assert _row(result)["fn"] == 1


def test_actions_that_need_missing_consent_are_counted_as_violations() -> None:
    truth = _truth(
        episode_rules={
            "depletion": {"type": "coupon", "rule": "x", "consent": "marketing"},
            "silence": {"type": "support_case", "rule": "y", "consent": None},
        },
        consent={"without_marketing": ["c2"], "without_service": []},
    )
    actions = [
        _action(10.0, "coupon", "c2"),
        _action(20.0, "coupon", "c1"),
        _action(30.0, "support_case", "c2"),
    ]
    assert score(truth, actions)["consent_violations"] == 1


def test_offline_runner_lines_are_understood() -> None:
    devices = {"d1": "c1"}
    line = {
        "rule": "coupon-detergent-low",
        "key": "d1",
        "at": "1970-01-01T00:05:00Z",
        "events": ["d1-7"],
        "action": {"type": "coupon", "payload": {}},
    }
    action = normalise_action(line, devices)
    assert action is not None
    assert (action["customer_id"], action["device_id"], action["at"]) == ("c1", "d1", 300.0)
    assert action["rule"] == "coupon-detergent-low"
    customer_keyed = normalise_action({"key": "c5", "at": 1, "action": {"type": "coupon"}}, devices)
    assert customer_keyed is not None and customer_keyed["customer_id"] == "c5"


def test_unreadable_actions_are_counted_and_ignored() -> None:
    result = score(
        _truth(_expected()), [{"type": "coupon"}, {"customer_id": "c1", "at": 1}, _action(300.0)]
    )
    assert result["unreadable_actions"] == 2
    assert result["actions"] == 1 and _row(result)["tp"] == 1


def test_read_actions_skips_blank_lines() -> None:
    source = io.StringIO('{"a": 1}\n\n{"a": 2}\n')
    assert list(read_actions(source)) == [{"a": 1}, {"a": 2}]


def test_the_text_report_shows_each_type_and_the_totals() -> None:
    result = score(_truth(_expected()), [_action(300.0), _action(50.0, "coupon", "c4")])
    text = format_score(result)
    support = next(line for line in text.splitlines() if line.startswith("support_case"))
    assert support.split()[1:6] == ["1.000", "1.000", "1", "0", "0"]
    assert "consent violations 0" in text
