"""Action, registry and customer-360 records ↔ Cassandra rows."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from engine.store.backoff import Backoff
from engine.store.rows import (
    ACTION_COLUMNS,
    MAX_TTL_S,
    ActionRow,
    InvalidRecord,
    action_from_row,
    action_row,
    check_ttl,
    customer_360_row,
    device_row,
    to_json_text,
    to_millis,
)
from tables.state import (
    DeviceState,
    apply_profile,
    new_customer_state,
    note_action,
    record_event,
    summary,
)


def make_action(**overrides: Any) -> dict[str, Any]:
    action: dict[str, Any] = {
        "action_id": "act-7f3a",
        "type": "maintenance_booking",
        "customer_id": "c-001",
        "device_id": "d-0001",
        "rule": {"id": "maintenance-vibration", "version": 3},
        "at": 1763700000.25,
        "emitted_at": "2025-11-21T04:40:01.5+00:00",
        "payload": {"reason": "vibration 0.91 g for 10 min", "slot": None},
        "evidence": {"events": ["e1", "e2"], "score": {"anomaly": 0.97}},
        "schema_version": 1,
        "topic": "crm.actions.maintenance",
    }
    action.update(overrides)
    return action


def as_read_back(row: ActionRow) -> dict[str, Any]:
    """What Cassandra returns for a row: naive UTC datetimes for timestamps."""
    values = dict(zip(ACTION_COLUMNS, row, strict=True))
    for column in ("at", "emitted_at", "written_at"):
        if values[column] is not None:
            values[column] = datetime.fromtimestamp(values[column] / 1000, UTC).replace(tzinfo=None)
    return values


def test_an_action_survives_the_round_trip_through_a_row() -> None:
    action = make_action()
    back = action_from_row(as_read_back(action_row(action, written_at_ms=1763700002000)))

    assert back["at"] == action["at"]
    assert back["emitted_at"] == datetime.fromisoformat(action["emitted_at"]).timestamp()
    assert back["written_at"] == 1763700002.0
    assert back["schema_version"] == action["schema_version"] == 1
    for field in ("action_id", "type", "customer_id", "device_id", "rule", "payload", "evidence"):
        assert back[field] == action[field], field
    assert back["topic"] == "crm.actions.maintenance"


def test_the_same_action_always_gives_the_same_primary_key_and_text() -> None:
    # Same trigger → same (customer_id, at, action_id): a re-write is an upsert.
    first = action_row(make_action(), written_at_ms=1)
    reordered = make_action(payload={"slot": None, "reason": "vibration 0.91 g for 10 min"})
    second = action_row(reordered, written_at_ms=2)
    assert (first.customer_id, first.at_ms, first.action_id) == (
        second.customer_id,
        second.at_ms,
        second.action_id,
    )
    assert first.payload == second.payload


def test_flat_rule_spelling_is_accepted() -> None:
    row = action_row(make_action(rule="r-1", rule_version=4), written_at_ms=0)
    assert (row.rule_id, row.rule_version) == ("r-1", 4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"action_id": None}, "action_id"),
        ({"action_id": ""}, "action_id"),
        ({"customer_id": 17}, "customer_id"),
        ({"type": None}, "type"),
        ({"at": None}, "at"),
        ({"at": "yesterday"}, "RFC 3339"),
        ({"at": math.nan}, "finite"),
        ({"at": True}, "expected a time"),
        ({"at": 1e300}, "range"),
        ({"device_id": 5}, "device_id"),
        ({"rule": {"id": "r", "version": "3"}}, "version"),
        ({"rule": {"id": 3, "version": 3}}, "rule id"),
        ({"rule": {"id": "r", "version": 2**31}}, "32-bit"),
        ({"schema_version": "1"}, "schema_version"),
        ({"schema_version": True}, "schema_version"),
        ({"schema_version": 1.0}, "schema_version"),
        ({"schema_version": 2**31}, "32-bit"),
        ({"payload": {"handler": object()}}, "JSON"),
    ],
)
def test_actions_that_cannot_be_stored_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        action_row(make_action(**overrides), written_at_ms=0)


def test_missing_optional_fields_become_nulls() -> None:
    minimal = {"action_id": "a", "type": "coupon", "customer_id": "c", "at": 10}
    row = action_row(minimal, written_at_ms=0)
    assert (
        row.device_id,
        row.rule_id,
        row.payload,
        row.emitted_at_ms,
        row.schema_version,
        row.topic,
    ) == (None, None, None, None, None, None)


def test_times_convert_from_seconds_rfc3339_and_datetimes() -> None:
    assert to_millis(1763700000.123) == 1763700000123
    assert to_millis("2025-11-21T04:40:00Z") == to_millis("2025-11-21T05:40:00+01:00")
    assert to_millis(datetime(1970, 1, 1, 0, 0, 2)) == 2000


def test_json_text_is_canonical() -> None:
    assert to_json_text({"b": 1, "a": [1, 2]}) == to_json_text({"a": [1, 2], "b": 1})
    assert to_json_text(None) is None


def test_registry_value_becomes_a_device_row() -> None:
    row = device_row(
        "d-0001",
        {
            "device_id": "d-0001",
            "customer_id": "c-001",
            "device_type": "washer",
            "model": "WX-200",
            "registered_at": 1763700000,
        },
    )
    assert (row.customer_id, row.device_type, row.model, row.registered_at_ms) == (
        "c-001",
        "washer",
        "WX-200",
        1763700000000,
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("d1", {"device_type": "washer"}, "customer_id"),
        ("d1", {"device_id": "d2", "customer_id": "c"}, "differs"),
        ("", {"customer_id": "c"}, "device id"),
    ],
)
def test_bad_registry_values_are_refused(key: str, value: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        device_row(key, value)


@pytest.mark.parametrize("ttl", [-1, MAX_TTL_S + 1, 1.5, True])
def test_ttls_outside_cassandras_range_are_refused(ttl: Any) -> None:
    with pytest.raises(ValueError, match="TTL"):
        check_ttl("action_log", ttl)


def test_ttl_zero_and_max_are_accepted() -> None:
    assert check_ttl("action_log", 0) == 0
    assert check_ttl("action_log", MAX_TTL_S) == MAX_TTL_S


def test_backoff_grows_exponentially_up_to_the_bound() -> None:
    backoff = Backoff(base_s=0.2, factor=3.0, max_s=10.0)
    caps = [backoff.cap(n) for n in range(1, 8)]
    assert caps[:4] == pytest.approx([0.2, 0.6, 1.8, 5.4])
    assert caps[4:] == [10.0, 10.0, 10.0]
    assert backoff.cap(100_000) == 10.0  # a very long outage does not overflow


def test_backoff_jitter_stays_within_half_to_full_cap_and_varies() -> None:
    backoff = Backoff(base_s=1.0, factor=2.0, max_s=8.0, rng=random.Random(1))
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 150


@pytest.mark.parametrize(("base", "factor", "maximum"), [(-1, 2, 5), (2, 2, 1), (1, 0.5, 5)])
def test_backoff_rejects_nonsense(base: float, factor: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base_s=base, factor=factor, max_s=maximum)


def published_summary() -> dict[str, Any]:
    """A summary as the worker publishes it: tables.state.summary, through JSON."""
    state = new_customer_state("c-001")
    apply_profile(
        state,
        {
            "customer_id": "c-001",
            "tier": "gold",
            "segment": "family",
            "region": "EU",
            "consent": {"marketing": True, "service": False},
        },
    )
    for device_id, ts in (("d-1", 1763700000.0), ("d-2", 1763700300.5), ("d-1", 1763700100.0)):
        device = state.devices.setdefault(device_id, DeviceState())
        record_event(
            state,
            device,
            {"id": f"e-{ts}", "ts": ts, "device_id": device_id, "device_type": "washer",
             "kind": "reading", "temperature_c": 40.0},
        )  # fmt: skip
    for n, at in enumerate((1763700050.0, 1763700200.25, 1763700150.0)):
        note_action(state, {"action_id": f"a-{n}", "type": "coupon", "at": at})
    return orjson.loads(orjson.dumps(summary(state)))


def test_a_published_summary_becomes_its_customer_360_row() -> None:
    published = published_summary()
    row = customer_360_row("c-001", published)

    assert (row.customer_id, row.tier, row.segment) == ("c-001", "gold", "family")
    assert row.consent == {"marketing": True, "service": False}
    assert row.devices == {"d-1", "d-2"}
    assert row.counters == {"events": 3, "actions": 3}
    assert row.last_event_at_ms == 1763700300500  # the latest device reading
    assert row.last_action_at_ms == 1763700200250  # the latest recent action
    assert orjson.loads(row.summary) == published


def test_the_summary_text_is_canonical() -> None:
    published = published_summary()
    reordered = dict(reversed(list(published.items())))
    assert customer_360_row(None, reordered).summary == customer_360_row("c-001", published).summary


def test_profile_values_of_the_wrong_type_are_left_out_of_typed_columns() -> None:
    published = published_summary()
    published["customer"].update(
        tier=3, segment=None, consent={"marketing": "yes", "service": True, "sms": 1}
    )
    row = customer_360_row("c-001", published)
    assert (row.tier, row.segment) == (None, None)
    # A flag that is not a boolean reads as no consent, never as consent.
    assert row.consent == {"service": True}
    assert orjson.loads(row.summary)["customer"]["consent"]["marketing"] == "yes"


def test_an_empty_summary_gives_an_empty_row_not_an_error() -> None:
    row = customer_360_row("c-9", {"customer": {"customer_id": "c-9"}})
    assert (row.devices, row.counters, row.consent) == (frozenset(), {}, {})
    assert (row.last_event_at_ms, row.last_action_at_ms, row.tier) == (None, None, None)


@pytest.mark.parametrize(
    ("key", "change", "message"),
    [
        ("c-001", {"customer": None}, "'customer' object"),
        ("c-002", {}, "differs"),
        (None, {"customer": {"tier": "gold"}}, "customer id"),
        ("c-001", {"devices": ["d-1"]}, "'devices' must be an object"),
        ("c-001", {"devices": {"d-1": 5}}, "expected objects"),
        ("c-001", {"devices": {"d-1": {"last_ts": "soon"}}}, "RFC 3339"),
        ("c-001", {"counts": {"events": 1.5}}, "64-bit integer"),
        ("c-001", {"counts": {"events": True}}, "64-bit integer"),
        ("c-001", {"counts": {"events": 2**63}}, "64-bit integer"),
        ("c-001", {"recent_actions": {"a": 1}}, "must be a list"),
        ("c-001", {"recent_actions": [{"at": math.inf}]}, "finite"),
    ],
)
def test_summaries_that_cannot_be_stored_are_refused(
    key: str | None, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRecord, match=message):
        customer_360_row(key, {**published_summary(), **change})
