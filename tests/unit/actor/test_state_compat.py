"""States stored while ``CustomerState`` was a plain dict decode into the Structs.

The old codec was ``msgspec.msgpack.Encoder(enc_hook=_encode_model)`` over a
dict of primitives; the blobs below are written that way.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.quality import StreamHygiene
from engine.quality.options import QualityOptions
from tables.state import (
    Counts,
    CustomerState,
    RecentAction,
    UsageState,
    _encode_model,
    customer_view,
    decode_state,
    decode_state_plain,
    device_view,
    encode_state,
    new_customer_state,
    note_action,
    recent_usage,
    record_event,
    summary,
)

#: The encoder of the dict-shaped state, as it was.
old_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_model)


def old_state() -> dict[str, Any]:
    """A dict state as the old ``new_customer_state``/``record_event``/``note_action`` left it."""
    return {
        "customer_id": "c-1",
        "profile": {"tier": "gold", "consent": {"marketing": True}},
        "devices": {
            "d-1": {
                "stream_ts": 260000.0,
                "last_seen": 12.5,
                "seen": {"e1": 259200.0, "e2": 260000.0},
                "gaps": [{"start": 1.0, "end": 9000.0, "seconds": 8999.0}],
                "gap_count": 1,
                "counts": {"ok": 2, "duplicate": 1, "late": 0},
                "device_type": "washer",
                "kind": "usage",
                "last_ts": 260000.0,
                "events": 2,
                "last": {"usage_min": 30.0, "level": 0.8, "cycles": 12},
                "consumable": {
                    "level": 0.8,
                    "cycles": 12,
                    "ts": 260000.0,
                    "first_cycles": 10,
                    "first_ts": 259200.0,
                    "drop_per_cycle": 0.05,
                    "cycles_per_day": None,
                },
                "last_action_at": {"support_case": 259300.0},
            }
        },
        "usage": {
            "day": 3,
            "first_day": 2,
            "today_min": 30.0,
            "daily": [12.0, 0.0],
            "last_use_ts": 260000.0,
            "hours": {"259200.0": 10.0, "262800.0": 20.0},
            "days": {"259200.0": 30.0},
        },
        "rules": {"v": 1, "sig": "abc", "device": {}, "customer": {}},
        "counts": {"events": 2, "actions": 2},
        "last_event_at": 260000.0,
        "recent_actions": [
            {"action_id": "a-1", "type": "coupon", "at": 259250.0},
            {"action_id": "a-2", "type": "support_case", "at": 259300.0},
        ],
        "support_case_times": [259300.0],
    }


def test_a_state_stored_by_the_dict_encoder_decodes_to_the_same_values() -> None:
    old = old_state()
    state = decode_state(old_encoder.encode(old))

    assert isinstance(state, CustomerState)
    assert state.customer_id == old["customer_id"]
    assert state.profile == old["profile"]
    assert state.devices == old["devices"]
    assert state.usage == UsageState(**old["usage"])
    assert state.rules == old["rules"]
    assert state.counts == Counts(events=2, actions=2)
    assert state.last_event_at == old["last_event_at"]
    assert state.recent_actions == [RecentAction(**kept) for kept in old["recent_actions"]]
    assert state.support_case_times == old["support_case_times"]
    # Written again, it is the same map with the same keys, key for key.
    assert decode_state_plain(encode_state(state)) == old
    assert list(decode_state_plain(encode_state(state))) == list(old)


def test_an_older_dict_state_without_the_later_fields_gets_their_defaults() -> None:
    """States from before the first use (no ``hours``/``days`` buckets yet)
    and before ``support_case_times`` existed."""
    old = old_state()
    del old["support_case_times"]
    del old["usage"]["hours"], old["usage"]["days"]

    state = decode_state(old_encoder.encode(old))

    assert state.support_case_times == []
    assert state.usage.hours == {} and state.usage.days == {}
    assert customer_view(state)["support_cases_30d"] == 0
    assert recent_usage(state, now=260000.0, size_s=3600.0, count=1) == [
        {"start": 259200.0, "minutes": 0.0}
    ]


def test_a_state_built_today_reads_the_same_through_the_dict_codec() -> None:
    """Events and actions through the Structs, encoded, read back as a plain
    map, written by the dict encoder and decoded again: the same state, and the
    views and the customer-360 summary the same whichever way it was stored."""
    hygiene = StreamHygiene(QualityOptions(), clock=lambda: 0.0)
    state = new_customer_state("c-1")
    for n, (ts, minutes) in enumerate([(86400.0 * 2 + 60, 5.0), (86400.0 * 3 + 90, 7.5)]):
        device = state.devices.setdefault("d-1", {})
        event = {
            "id": f"e{n}", "ts": ts, "device_id": "d-1", "device_type": "washer",
            "kind": "usage", "usage_min": minutes, "level": 0.9 - n / 10, "cycles": n,
        }  # fmt: skip
        assert hygiene.admit(device, event) == "ok"
        record_event(state, device, event)
        note_action(
            state, {"action_id": f"a{n}", "type": "support_case", "at": ts, "device_id": "d-1"}
        )

    plain = decode_state_plain(encode_state(state))
    assert set(plain) == set(CustomerState.__struct_fields__)
    assert plain["counts"] == {"events": 2, "actions": 2}
    assert [kept["action_id"] for kept in plain["recent_actions"]] == ["a0", "a1"]

    again = decode_state(old_encoder.encode(plain))
    assert again == state
    assert customer_view(again) == customer_view(state)
    assert device_view(again.devices["d-1"]) == device_view(state.devices["d-1"])
    assert summary(again) == summary(state)
    assert summary(state)["counts"] == plain["counts"]
    assert summary(state)["recent_actions"] == plain["recent_actions"]
