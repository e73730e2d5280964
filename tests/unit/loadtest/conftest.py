"""Simulations shared by the load-test unit tests, generated once per session."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import orjson
import pytest
from loadtest_helpers import PARAMS, Run, simulate


@pytest.fixture(scope="session")
def wire_run() -> Run:
    return simulate(PARAMS)


@pytest.fixture(scope="session")
def canonical_run() -> Run:
    return simulate(replace(PARAMS, canonical=True))


@pytest.fixture(scope="session")
def canonical_events(canonical_run: Run) -> list[dict[str, Any]]:
    return [orjson.loads(payload) for _, payload in canonical_run.records]


@pytest.fixture(scope="session")
def events_by_device(canonical_events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in canonical_events:
        grouped[event["device_id"]].append(event)
    return dict(grouped)
