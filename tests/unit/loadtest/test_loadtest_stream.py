"""The event stream: determinism, ordering, time window, shapes, and what
ingest (engine.quality) makes of it."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
import pytest
from loadtest_helpers import END_TS, PARAMS, Run, simulate

from engine.quality import (
    Accepted,
    DeviceRegistry,
    HygieneState,
    Inspector,
    QualityOptions,
    SourcePosition,
    StreamHygiene,
)
from loadtest.publish import DEVICE_TOPIC_PREFIX
from loadtest.simulator import GHOST_DEVICE_IDS, SimParams, Simulation


def _digest(records: list[tuple[str, bytes]]) -> str:
    sha = hashlib.sha256()
    for device_id, payload in records:
        sha.update(device_id.encode() + b"\0" + payload + b"\n")
    return sha.hexdigest()


def _epoch(ts: Any) -> float:
    if isinstance(ts, str):
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return float(ts)


def test_same_seed_gives_identical_bytes_and_truth(wire_run: Run) -> None:
    again = simulate(PARAMS)
    assert _digest(again.records) == _digest(wire_run.records)
    assert orjson.dumps(again.truth) == orjson.dumps(wire_run.truth)


def test_another_seed_gives_another_stream(wire_run: Run) -> None:
    other = simulate(replace(PARAMS, seed=PARAMS.seed + 1))
    assert _digest(other.records) != _digest(wire_run.records)


def test_injection_leaves_the_valid_events_unchanged(wire_run: Run) -> None:
    clean = simulate(replace(PARAMS, malformed_share=0.0, duplicate_share=0.0))
    valid_ids = {orjson.loads(payload)["id"] for _, payload in clean.records}
    assert clean.truth["expected_actions"] == wire_run.truth["expected_actions"]
    injected_valid = set()
    for _, payload in wire_run.records:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if "-m" not in str(event.get("id", "-m")):
            injected_valid.add(event["id"])
    assert injected_valid == valid_ids


def test_valid_events_are_in_global_time_order_within_the_window(
    canonical_events: list[dict[str, Any]],
) -> None:
    times = [event["ts"] for event in canonical_events]
    assert times == sorted(times)
    assert times[0] >= END_TS - PARAMS.span_s
    assert times[-1] < END_TS  # nothing in the future


def test_wire_events_mix_units_shapes_and_timestamp_styles(wire_run: Run) -> None:
    shapes: dict[str, set[str]] = {"temperature": set(), "energy": set(), "level": set()}
    text_ts = numeric_ts = 0
    for _, payload in wire_run.records:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if "ts" in event:
            text_ts += isinstance(event["ts"], str)
            numeric_ts += isinstance(event["ts"], float)
        for reading, seen in shapes.items():
            for key, value in event.items():
                if key == reading:
                    seen.add(value["unit"] if isinstance(value, dict) else "plain")
                elif key == f"{reading}_unit":
                    seen.add(value)
                elif key.startswith(reading + "_") and key != f"{reading}_unit":
                    seen.add(key)
    assert {"plain", "F", "K", "temperature_f"} <= shapes["temperature"]
    assert {"plain", "energy_wh", "Wh", "MJ"} <= shapes["energy"]
    assert {"plain", "ratio", "percent"} <= shapes["level"]
    assert text_ts > 0 and numeric_ts > text_ts


@pytest.fixture(scope="module")
def ingested(wire_run: Run) -> tuple[Counter[str], list[dict[str, Any]], list[str]]:
    """Every wire record through the real ingest inspector: (verdict counts,
    accepted events, reasons for refusing records that were not malformed)."""
    registry = DeviceRegistry()
    for key, value in wire_run.sim.registry_records():
        assert registry.apply(key, orjson.dumps(value)) is None
    inspector = Inspector(QualityOptions(), registry, clock=lambda: END_TS)
    verdicts: Counter[str] = Counter()
    accepted: list[dict[str, Any]] = []
    refused_valid: list[str] = []
    for offset, (device_id, payload) in enumerate(wire_run.records):
        where = SourcePosition(DEVICE_TOPIC_PREFIX + device_id, 0, offset)
        verdict = inspector.inspect(payload, where)
        if isinstance(verdict, Accepted):
            verdicts["accepted"] += 1
            accepted.append(verdict.event)
        else:
            verdicts[verdict.reason_code] += 1
            if b"-m" not in payload and b'"id"' in payload:
                refused_valid.append(verdict.reason)
    return verdicts, accepted, refused_valid


Ingested = tuple[Counter[str], list[dict[str, Any]], list[str]]


def test_ingest_rejects_exactly_the_malformed_events_with_the_expected_codes(
    wire_run: Run, ingested: Ingested
) -> None:
    verdicts, _, refused_valid = ingested
    counts = wire_run.truth["counts"]
    assert refused_valid == []
    assert verdicts["accepted"] == counts["events"] + counts["duplicates"]
    rejected = {code: n for code, n in verdicts.items() if code != "accepted"}
    assert rejected == {c: n for c, n in counts["deadletter_reason_codes"].items() if n}
    assert sum(rejected.values()) == counts["expected_deadletters"]


def test_shares_of_malformed_events_and_duplicates_follow_the_params(wire_run: Run) -> None:
    counts = wire_run.truth["counts"]
    malformed = counts["expected_deadletters"]
    assert counts["records"] == counts["events"] + counts["duplicates"] + malformed
    assert 0.007 < malformed / counts["events"] < 0.013
    assert 0.007 < counts["duplicates"] / counts["events"] < 0.013
    assert all(n > 0 for n in counts["malformed"].values())


def test_duplicates_are_exact_resends_that_dedup_drops_and_nothing_is_late(
    wire_run: Run, ingested: Ingested
) -> None:
    _, accepted, _ = ingested
    hygiene = StreamHygiene(QualityOptions(), clock=lambda: END_TS)
    states: dict[str, HygieneState] = {}
    verdicts = Counter(
        hygiene.admit(states.setdefault(event["device_id"], HygieneState()), event)
        for event in accepted
    )
    assert verdicts == {
        "ok": wire_run.truth["counts"]["events"],
        "duplicate": wire_run.truth["counts"]["duplicates"],
    }


def test_ingest_normalises_wire_events_to_the_canonical_stream(
    ingested: Ingested, canonical_events: list[dict[str, Any]]
) -> None:
    _, accepted, _ = ingested
    seen: set[str] = set()
    normalised = []
    for event in accepted:
        if event["id"] not in seen:
            seen.add(event["id"])
            normalised.append(event)
    assert len(normalised) == len(canonical_events)
    for got, want in zip(normalised, canonical_events, strict=True):
        want = {k: v for k, v in want.items() if k != "customer"}  # runner context only
        assert got.keys() == want.keys(), want["id"]
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, abs=2e-3), (want["id"], key)
            else:
                assert got[key] == value, (want["id"], key)


def test_unknown_device_events_come_from_registered_looking_ghost_topics(wire_run: Run) -> None:
    ghosts = {device_id for device_id, _ in wire_run.records if device_id.startswith("ghost-")}
    assert ghosts and ghosts <= set(GHOST_DEVICE_IDS)
    registered = {d.device_id for d in wire_run.sim.fleet.devices}
    assert not registered & set(GHOST_DEVICE_IDS)


def test_canonical_events_carry_customer_and_device_type(
    canonical_run: Run, canonical_events: list[dict[str, Any]]
) -> None:
    owner = {d.device_id: (d.customer_id, d.device_type) for d in canonical_run.sim.fleet.devices}
    for event in canonical_events:
        assert (event["customer_id"], event["device_type"]) == owner[event["device_id"]]
    assert canonical_run.truth["counts"]["expected_deadletters"] == 0
    assert canonical_run.truth["counts"]["duplicates"] == 0


def test_canonical_events_carry_the_runners_customer_context_once_known(
    canonical_run: Run, canonical_events: list[dict[str, Any]]
) -> None:
    fleet = canonical_run.sim.fleet
    wearable_owners = {d.customer_id for d in fleet.devices if d.device_type == "wearable"}
    # The first UTC day is partial: its window closes at midnight + 15 min.
    baseline_from = canonical_run.sim.start_ts // 86400 * 86400 + 86400 + 900
    contexts: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    first_event: dict[str, float] = {}
    for event in canonical_events:
        first_event.setdefault(event["customer_id"], event["ts"])
        if "customer" in event:
            contexts.setdefault(event["customer_id"], []).append((event["ts"], event["customer"]))
    assert contexts.keys() == {c.customer_id for c in fleet.customers}
    for customer in fleet.customers:
        given = contexts[customer.customer_id]
        assert given[0][0] == first_event[customer.customer_id]
        for _, context in given:
            assert {
                k: v for k, v in context.items() if k != "usage_baseline_min"
            } == customer.profile()
        with_baseline = [(ts, c) for ts, c in given if "usage_baseline_min" in c]
        if customer.customer_id in wearable_owners:
            assert len(with_baseline) == 1 and len(given) <= 2
            ts, context = with_baseline[0]
            assert ts >= baseline_from
            assert context["usage_baseline_min"] == customer.daily_usage_min
        else:
            assert with_baseline == [] and len(given) == 1


def test_ids_are_unique_per_device(canonical_events: list[dict[str, Any]]) -> None:
    ids = Counter((e["device_id"], e["id"]) for e in canonical_events)
    assert max(ids.values()) == 1


def test_the_events_can_be_read_once_and_truth_only_after() -> None:
    sim = Simulation(SimParams(customers=2, devices_per_customer=1, span_s=3600, end_ts=END_TS))
    with pytest.raises(RuntimeError):
        sim.truth()
    stream = sim.events()
    next(stream)
    with pytest.raises(RuntimeError):
        sim.truth()
    list(stream)
    assert sim.truth()["counts"]["records"] > 0
    with pytest.raises(RuntimeError):
        next(sim.events())


def test_a_short_span_skips_episodes_that_do_not_fit() -> None:
    run = simulate(SimParams(customers=20, devices_per_customer=2, span_s=3600, end_ts=END_TS))
    skipped = run.truth["skipped_episodes"]
    assert skipped.get("silence", 0) > 0 and skipped.get("usage_fade", 0) > 0
    assert all(e["episode"] not in ("silence", "usage_fade") for e in run.truth["expected_actions"])
    assert run.truth["counts"]["events"] > 0


def test_end_defaults_to_now_rounded_down() -> None:
    sim = Simulation(SimParams(customers=1, devices_per_customer=1, span_s=600))
    assert sim.end_ts == int(sim.end_ts)
    assert sim.params.end_ts == sim.end_ts
