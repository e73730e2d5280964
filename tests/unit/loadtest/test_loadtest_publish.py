"""The publisher's broker-free parts: pacing, routing and topic lists."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadtest.publish import Pacer, PublishOptions, event_topics, partition_for
from loadtest.simulator import GHOST_DEVICE_IDS, SimParams, Simulation


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_holds_the_target_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=2000, clock=clock)
    clock.now += 0.25
    assert pacer.delay(1000) == pytest.approx(0.25)  # 1000 records are due at 0.5 s
    clock.now += 0.5
    assert pacer.delay(1000) == 0.0  # behind schedule: no wait


def test_a_pacer_held_up_makes_up_no_more_than_a_tenth_of_a_second_at_once() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=1000, clock=clock)
    clock.now += 3.0  # held up 3 s after the first record
    assert pacer.delay(1) == 0.0
    # 0.1 s of the schedule made up in a burst; the next records at the rate,
    # not the 2.9 s of records the schedule owed sent at once
    assert pacer.delay(101) == pytest.approx(0.0, abs=1e-9)
    assert pacer.delay(201) == pytest.approx(0.1)
    assert pacer.delay(1201) == pytest.approx(1.1)


def test_an_unlimited_pacer_never_waits() -> None:
    assert Pacer(rate=0, clock=FakeClock()).delay(10**9) == 0.0


def test_partitioning_is_stable_and_spreads_devices() -> None:
    keys = [f"d-{i:05d}".encode() for i in range(1000)]
    first = [partition_for(key, 4) for key in keys]
    assert first == [partition_for(key, 4) for key in keys]
    assert {p: first.count(p) for p in range(4)} == pytest.approx(
        dict.fromkeys(range(4), 250), abs=60
    )


def test_event_topics_per_device_include_the_ghosts_of_malformed_events() -> None:
    sim = Simulation(SimParams(customers=3, devices_per_customer=2, end_ts=1_763_700_000))
    topics = event_topics(sim, PublishOptions())
    assert topics[:6] == [f"iot.device.{d.device_id}" for d in sim.fleet.devices]
    assert topics[6:] == [f"iot.device.{g}" for g in GHOST_DEVICE_IDS]
    clean = Simulation(replace(sim.params, malformed_share=0.0))
    assert len(event_topics(clean, PublishOptions())) == 6
    assert event_topics(sim, PublishOptions(topic_mode="shared")) == ["iot.telemetry"]
