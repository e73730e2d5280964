"""StreamHygiene: dedup, lateness and gaps on a device's HygieneState."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from engine.config import QualitySettings
from engine.quality import HygieneState, QualityOptions, Rejection, StreamHygiene


def ev(event_id: str, ts: float, device_type: str = "washer") -> dict[str, Any]:
    return {"id": event_id, "ts": ts, "device_id": "d1", "device_type": device_type}


def hygiene(**options: Any) -> StreamHygiene:
    return StreamHygiene(QualityOptions(**options), clock=lambda: 5.0)


def copied(state: HygieneState) -> HygieneState:
    """A copy through JSON, sharing nothing with ``state``."""
    return msgspec.json.decode(msgspec.json.encode(state), type=HygieneState)


def test_a_repeated_id_is_a_duplicate_and_changes_nothing_but_its_count() -> None:
    h = hygiene()
    state = HygieneState()
    assert h.admit(state, ev("a", 100.0)) == "ok"
    before = copied(state)
    assert h.admit(state, ev("a", 100.0)) == "duplicate"
    assert h.admit(state, ev("a", 120.0)) == "duplicate"  # same id, other ts: still the same event
    before.counts["duplicate"] = 2
    assert state == before


def test_states_are_per_device() -> None:
    h = hygiene()
    first = HygieneState()
    second = HygieneState()
    assert h.admit(first, ev("a", 100.0)) == "ok"
    assert h.admit(second, ev("a", 100.0)) == "ok"


def test_lateness_boundary_and_late_events_change_nothing() -> None:
    h = hygiene(allowed_lateness_s=30.0)
    state = HygieneState()
    h.admit(state, ev("a", 1000.0))
    assert h.admit(state, ev("b", 970.0)) == "ok"  # exactly the allowed lateness
    before = copied(state)
    assert h.admit(state, ev("c", 969.9)) == "late"
    before.counts["late"] = 1
    assert state == before
    assert h.late_rejection(state, ev("c", 969.5)) == Rejection(
        "late",
        "ts 969.5 is 30.5 s behind the stream time 1000.0 of its device (allowed lateness: 30 s)",
    )
    # The late event was not remembered: its id is still free.
    assert h.admit(state, ev("c", 990.0)) == "ok"
    with pytest.raises(ValueError, match="no event of the device was admitted yet"):
        h.late_rejection(HygieneState(), ev("c", 969.5))


def test_a_duplicate_of_an_old_event_is_a_duplicate_not_late() -> None:
    h = hygiene(allowed_lateness_s=10.0)
    state = HygieneState()
    h.admit(state, ev("a", 100.0))
    h.admit(state, ev("b", 500.0))
    assert h.admit(state, ev("a", 100.0)) == "duplicate"


def test_ids_are_forgotten_after_the_horizon() -> None:
    h = hygiene(dedup_horizon_s=60.0, allowed_lateness_s=1000.0)
    state = HygieneState()
    h.admit(state, ev("a", 0.0))
    h.admit(state, ev("b", 60.0))
    assert h.admit(state, ev("a", 60.0)) == "duplicate"  # stream time - horizon == its ts
    h.admit(state, ev("c", 61.0))
    assert "a" not in state.seen
    assert h.admit(state, ev("a", 61.0)) == "ok"  # a device reusing ids after the horizon


def test_an_id_kept_past_its_horizon_is_not_a_duplicate() -> None:
    # "late-1" is admitted out of order behind "x", so it is not at the front
    # of the index and outlives its horizon there; it must still not count.
    h = hygiene(dedup_horizon_s=100.0, allowed_lateness_s=1000.0)
    state = HygieneState()
    h.admit(state, ev("x", 50.0))
    h.admit(state, ev("late-1", 10.0))
    h.admit(state, ev("y", 140.0))
    assert state.seen["late-1"] == 10.0  # lingering
    assert h.admit(state, ev("late-1", 140.0)) == "ok"
    assert list(state.seen) == ["x", "y", "late-1"]  # renewed: moved to the back


def test_memory_is_bounded_by_horizon_and_by_count() -> None:
    by_time = hygiene(dedup_horizon_s=100.0, dedup_max_ids=10_000)
    by_count = hygiene(dedup_horizon_s=1e9, dedup_max_ids=50)
    timed = HygieneState()
    counted = HygieneState()
    for i in range(5000):
        by_time.admit(timed, ev(f"e{i}", float(i)))
        by_count.admit(counted, ev(f"e{i}", float(i)))
    assert sorted(timed.seen.values()) == [float(i) for i in range(4899, 5000)]
    assert list(counted.seen) == [f"e{i}" for i in range(4950, 5000)]


def test_gaps_follow_the_device_type_interval_and_keep_the_latest() -> None:
    h = hygiene(
        expected_interval_s={"vehicle": 10.0},
        default_expected_interval_s=300.0,
        gap_factor=3.0,
        gaps_kept=2,
    )
    vehicle = HygieneState()
    for i, ts in enumerate([0.0, 30.0, 61.0, 91.0, 200.0, 400.0]):
        h.admit(vehicle, ev(f"v{i}", ts, "vehicle"))
    assert vehicle.gap_count == 3
    assert vehicle.gaps == [
        {"start": 91.0, "end": 200.0, "seconds": 109.0},
        {"start": 200.0, "end": 400.0, "seconds": 200.0},
    ]
    washer = HygieneState()
    for i, ts in enumerate([0.0, 900.0, 1801.0]):
        h.admit(washer, ev(f"w{i}", ts))
    assert washer.gaps == [{"start": 900.0, "end": 1801.0, "seconds": 901.0}]


def test_out_of_order_events_make_no_gap_and_zero_interval_disables() -> None:
    h = hygiene(default_expected_interval_s=10.0, allowed_lateness_s=100.0)
    state = HygieneState()
    for i, ts in enumerate([100.0, 50.0, 60.0, 70.0]):
        assert h.admit(state, ev(f"e{i}", ts)) == "ok"
    assert state.gap_count == 0 and state.stream_ts == 100.0
    off = hygiene(default_expected_interval_s=0.0)
    quiet = HygieneState()
    off.admit(quiet, ev("a", 0.0))
    off.admit(quiet, ev("b", 1e6))
    assert quiet.gap_count == 0


def test_last_seen_is_the_wall_clock_of_the_latest_admission() -> None:
    clock = iter([10.0, 20.0, 30.0])
    h = StreamHygiene(QualityOptions(), clock=lambda: next(clock))
    state = HygieneState()
    h.admit(state, ev("a", 100.0))
    h.admit(state, ev("a", 100.0))  # a duplicate does not read the clock
    h.admit(state, ev("b", 101.0))
    assert state.last_seen == 20.0


def test_settings_from_the_config_are_honoured() -> None:
    h = StreamHygiene(QualitySettings(allowed_lateness_s=5.0))
    state = HygieneState()
    h.admit(state, ev("a", 100.0))
    assert h.admit(state, ev("b", 94.0)) == "late"


@pytest.mark.parametrize("codec", [msgspec.json, msgspec.msgpack])
def test_state_survives_serialisation_between_every_event(codec: Any) -> None:
    """The actor's table stores the state as bytes; behaviour must not change."""
    rng = random.Random(7)
    events = [ev(f"e{rng.randrange(60)}", 1000.0 + i * 7 + rng.uniform(-40, 0)) for i in range(400)]
    h = hygiene(dedup_horizon_s=200.0, dedup_max_ids=30, allowed_lateness_s=25.0)
    in_memory = HygieneState()
    stored = codec.encode({})  # an empty map: every field takes its default
    for event in events:
        state = codec.decode(stored, type=HygieneState)
        assert h.admit(state, event) == h.admit(in_memory, event)
        stored = codec.encode(state)
    assert codec.decode(stored, type=HygieneState) == in_memory


def test_matches_a_reference_with_unbounded_memory() -> None:
    """Seeded property test: with a count cap that never bites, the bounded
    index decides exactly like remembering every (id, ts) forever."""
    rng = random.Random(2024)
    horizon, lateness = 300.0, 40.0
    h = hygiene(dedup_horizon_s=horizon, allowed_lateness_s=lateness, dedup_max_ids=100_000)
    state = HygieneState()
    everything: dict[str, float] = {}
    stream_ts: float | None = None
    verdicts = {"ok": 0, "duplicate": 0, "late": 0}
    for i in range(5000):
        ts = i * 2.0 + rng.uniform(-60.0, 0.0)
        event_id = f"e{rng.randrange(400)}"
        if stream_ts is None:
            expected = "ok"
        elif event_id in everything and everything[event_id] >= stream_ts - horizon:
            expected = "duplicate"
        elif ts < stream_ts - lateness:
            expected = "late"
        else:
            expected = "ok"
        if expected == "ok":
            everything[event_id] = ts
            stream_ts = ts if stream_ts is None else max(stream_ts, ts)
        verdict = h.admit(state, ev(event_id, ts))
        assert verdict == expected, (i, event_id, ts)
        verdicts[verdict] += 1
    assert all(count > 100 for count in verdicts.values()), verdicts
    assert state.counts == verdicts
    assert len(state.seen) <= len(everything)
