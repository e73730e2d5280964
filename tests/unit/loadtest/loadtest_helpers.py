"""Shared parameters and a runner for the load-test unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadtest.simulator import SimParams, Simulation

END_TS = 1_763_700_000.0

#: Small but complete: every episode kind occurs, some consent is missing.
#: Three days: a usage fade needs a partial first day and a baseline day before it.
PARAMS = SimParams(
    customers=60,
    devices_per_customer=2,
    seed=11,
    span_s=3 * 86400.0,
    end_ts=END_TS,
    marketing_consent_share=0.6,
    malformed_share=0.01,
    duplicate_share=0.01,
)


@dataclass(frozen=True)
class Run:
    sim: Simulation
    records: list[tuple[str, bytes]]
    truth: dict[str, Any]


def simulate(params: SimParams) -> Run:
    sim = Simulation(params)
    records = list(sim.events())
    return Run(sim=sim, records=records, truth=sim.truth())
