"""States stored while ``CustomerState`` and its device states were plain dicts
decode into the Structs, and what the Structs store reads as those dicts.

The old codec was ``msgspec.msgpack.Encoder(enc_hook=_encode_model)`` over a
dict of primitives; the blobs below are written that way. The device states
are compared with the code that kept them as plain dicts (``dict_device_state``),
over the same history of events and actions.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import dict_device_state
import msgspec
from msgspec import UNSET

from engine.actor import CustomerActor
from engine.durations import DAY_S
from engine.models import ModelSet, load_models
from engine.quality import StreamHygiene
from engine.quality.options import QualityOptions
from engine.rules import RuleEngine, compile_rules
from loadtest.chaos import plain
from tables.state import (
    Consumable,
    Counts,
    CustomerState,
    DeviceState,
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
            },
            # Keys a device gains with their first use are absent until then.
            "d-2": {
                "stream_ts": 259800.0,
                "last_seen": 12.0,
                "seen": {"e3": 259800.0},
                "gaps": [],
                "gap_count": 0,
                "counts": {"ok": 1, "duplicate": 0, "late": 0},
                "device_type": "wearable",
                "kind": "status",
                "last_ts": 259800.0,
                "events": 1,
                "last": {"state": "online", "battery": 81.5},
            },
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
    d1, d2 = old["devices"]["d-1"], old["devices"]["d-2"]
    assert state.devices == {
        "d-1": DeviceState(**{**d1, "consumable": Consumable(**d1["consumable"])}),
        "d-2": DeviceState(**d2),
    }
    assert state.devices["d-2"].consumable is UNSET and state.devices["d-2"].models is UNSET
    assert device_view(state.devices["d-2"])["last_action_at"] == {}
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
        device = state.devices.setdefault("d-1", DeviceState())
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


# ---------------------------------------------------------------- device states

SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "models" / "models.yaml"
OPTIONS = QualityOptions()
#: The hygiene's wall clock (``last_seen``), the same on both sides.
NOW = 1763700000.0


def history() -> list[dict[str, Any]]:
    """Customer c-1's events and actions (those with an ``action_id``), in
    arrival order: a washer's telemetry (its own anomaly model learns from it),
    its consumable readings with a refill, a silence long enough to be a gap,
    a duplicate, a late event and one out of order; a wearable's usage and
    status; actions on the washer (one older than the latest of its type), on
    the customer and on a device the customer does not have."""
    rng = random.Random(11)
    items: list[dict[str, Any]] = []
    ts, level, cycles = 2 * DAY_S, 90.0, 100
    for i in range(160):
        ts += rng.uniform(40.0, 90.0) + (6 * 3600.0 if i == 50 else 0.0)
        washer = {"ts": ts, "device_id": "w-1", "customer_id": "c-1", "device_type": "washer"}
        telemetry = {
            "id": f"w{i}", **washer, "kind": "telemetry", "vibration": rng.gauss(0.3, 0.05),
            "temperature": rng.gauss(45.0, 3.0), "power": rng.gauss(800.0, 60.0),
        }  # fmt: skip
        items.append(telemetry)
        if i == 103:
            level = 100.0
            items.append({"id": f"c{i}", **washer, "kind": "consumable", "level": 100.0,
                          "refill": True})  # fmt: skip
        elif i % 9 == 4:
            level, cycles = level - rng.uniform(0.5, 2.0), cycles + rng.randint(1, 2)
            items.append({"id": f"c{i}", **washer, "kind": "consumable", "level": level,
                          "cycles": cycles})  # fmt: skip
        wearable = {"device_id": "b-1", "customer_id": "c-1", "device_type": "wearable"}
        if i % 5 == 0:
            items.append({
                "id": f"b{i}", "ts": ts + 1, **wearable, "kind": "usage",
                "usage_min": rng.uniform(1.0, 30.0), "battery": rng.uniform(20.0, 100.0),
            })  # fmt: skip
        if i == 20:
            items.append(
                {"id": "b-on", "ts": ts + 2, **wearable, "kind": "status", "state": "online"}
            )
        if i == 30:
            items.append(dict(items[5]))  # a duplicate
        if i == 70:
            items.append({**telemetry, "id": "late", "ts": ts - 600.0})
            items.append({**telemetry, "id": "behind", "ts": ts - 10.0})
        if i in (40, 41, 90):
            kind = "maintenance_booking" if i == 90 else "support_case"
            at = ts - 500.0 if i == 41 else ts
            items.append({"action_id": f"a{i}", "type": kind, "device_id": "w-1", "at": at})
        if i == 95:
            items.append({"action_id": "a95", "type": "coupon", "device_id": None, "at": ts})
            items.append({"action_id": "a96", "type": "coupon", "device_id": "x-9", "at": ts})
    return items


class Scorer:
    """The shipped models, remembering what each event's call saw and gave."""

    per_device = True

    def __init__(self) -> None:
        self.models = load_models(SHIPPED_MODELS)
        self.calls: list[tuple[dict[str, Any], dict[str, Any], dict[str, float]]] = []

    def process(
        self,
        event: dict[str, Any],
        *,
        customer: dict[str, Any],
        device: dict[str, Any],
        device_models: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        scores = self.models.process(
            event, customer=customer, device=device, device_models=device_models
        )
        self.calls.append((customer, copy.deepcopy(device), scores))
        return scores


def replay(
    items: list[dict[str, Any]],
    state: CustomerState,
    devices: dict[str, dict[str, Any]],
    scorer: Scorer,
    models: ModelSet,
) -> None:
    """``items`` through the actor on ``state`` and through the dict code on
    ``devices`` (with its own ``models``): the same verdicts, and every event's
    device view and scores the same."""
    hygiene = StreamHygiene(OPTIONS, clock=lambda: NOW)
    actor = CustomerActor(RuleEngine(compile_rules("[]")), hygiene)
    outcome = {"ok": (1, 0, 0), "duplicate": (0, 1, 0), "late": (0, 0, 1)}
    for item in items:
        if "action_id" in item:
            note_action(state, item)
            device = devices.get(item["device_id"] or "")
            if device is not None:
                dict_device_state.note_action(device, item)
            continue
        out = actor.handle_events(state, [item], scorer, emitted_at=0.0)
        device = devices.setdefault(item["device_id"], {})
        verdict = dict_device_state.admit(device, item, OPTIONS, NOW)
        assert (out.processed, out.duplicates, len(out.late)) == outcome[verdict], item["id"]
        if verdict == "ok":
            dict_device_state.record_event(device, item)
            view = dict_device_state.device_view(device)
            customer, seen, scores = scorer.calls.pop()
            assert seen == view, item["id"]
            assert scores == models.process(
                item,
                customer=customer,
                device=view,
                device_models=dict_device_state.device_models(device),
            ), item["id"]
    for device_id, device in devices.items():
        assert device_view(state.devices[device_id]) == dict_device_state.device_view(device)
    assert summary(state)["devices"] == {
        device_id: dict_device_state.summary_entry(device) for device_id, device in devices.items()
    }


def comparable(devices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plain device states with each model as what it learned (as the chaos
    suite compares them: estimators compare by identity)."""
    return {
        device_id: {**device, "models": plain(device["models"])} if "models" in device else device
        for device_id, device in devices.items()
    }


def test_device_states_of_the_same_history_store_the_same_maps_either_way() -> None:
    """The same events and actions through the actor and through the code of
    the dict-shaped device state (``dict_device_state``): the same device view
    for every event and the same stored map, key for key. Then each goes on
    from what the other stored (a rollout, a rollback), and still both agree."""
    items = history()
    half = len(items) // 2
    state, devices = new_customer_state("c-1"), {}
    scorer, models = Scorer(), load_models(SHIPPED_MODELS)
    replay(items[:half], state, devices, scorer, models)

    stored = decode_state_plain(encode_state(state))
    assert comparable(stored["devices"]) == comparable(devices)
    assert sorted(devices) == ["b-1", "w-1"]
    # Keys added lazily stay absent: the wearable has no consumable and no actions.
    assert "consumable" not in stored["devices"]["b-1"]
    assert "last_action_at" not in stored["devices"]["b-1"]
    assert stored["devices"]["w-1"]["gap_count"] == 1
    consumable = stored["devices"]["w-1"]["consumable"]
    assert consumable["drop_per_cycle"] > 0 and consumable["cycles_per_day"] > 0
    assert stored["devices"]["w-1"]["counts"] == {"ok": 88, "duplicate": 1, "late": 1}
    actions = {item["action_id"]: item for item in items if "action_id" in item}
    # a41 is older than a40: the latest time of a type does not move back
    assert stored["devices"]["w-1"]["last_action_at"] == {"support_case": actions["a40"]["at"]}

    state, devices = (
        decode_state(old_encoder.encode({**stored, "devices": devices})),
        stored["devices"],
    )
    assert isinstance(state.devices["w-1"].consumable, Consumable)
    assert state.devices["b-1"].consumable is UNSET and state.devices["b-1"].last_action_at is UNSET
    replay(items[half:], state, devices, scorer, models)
    assert comparable(decode_state_plain(encode_state(state))["devices"]) == comparable(devices)
