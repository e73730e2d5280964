"""The worker's latency histograms start at the device record's publication."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agents.customer import CustomerAgent, _Batch, trigger_publications
from agents.prometheus import Latencies, exposition
from engine.events import PUBLISHED_HEADER, published_at
from engine.watermark import SENT_HEADER


def record(published_ms: int | None) -> Any:
    headers = [("iotcrm-src", b"ingest-1")]
    if published_ms is not None:
        headers.append((PUBLISHED_HEADER, str(published_ms).encode()))
    return SimpleNamespace(message=SimpleNamespace(headers=headers))


def action(*event_ids: str) -> tuple[str, dict[str, Any]]:
    return "crm.actions.support", {"evidence": {"event_ids": list(event_ids)}}


def test_an_action_answers_to_the_record_of_the_last_event_of_its_evidence() -> None:
    early, late, unstamped = record(1_000), record(2_500), record(None)
    items = [
        (early, {"id": "e1"}),
        (late, {"id": "e2"}),
        (unstamped, {"id": "e3"}),
        (early, None),  # a profile or an outcome: no event
    ]
    actions = [
        action("e1", "e2"),  # a sequence completed by e2
        action("e1"),
        action("e3"),  # its record has no publication time: not timed
        action("gone"),  # an event of an earlier batch: not timed
        ("crm.actions.support", {"evidence": {}}),  # a timer's firing
    ]
    assert trigger_publications(items, actions) == [2.5, 1.0]


def test_a_record_without_the_header_has_no_publication_time() -> None:
    assert published_at(record(1_700_000_000_123).message.headers) == 1_700_000_000.123
    assert published_at(record(None).message.headers) is None


def test_both_histograms_reach_json_and_the_prometheus_text() -> None:
    latencies = Latencies()
    for seconds in (0.004, 0.02, 0.02, 0.3, 70.0):
        latencies.event.observe(seconds)
    latencies.action.observe(0.1)
    figures = latencies.as_dict()
    assert figures["event"] == {
        "count": 5,
        "sum_s": 70.344,
        "le": {"0.005": 1, "0.025": 3, "0.5": 4},  # 70 s is above the last bound
    }
    assert figures["action"]["count"] == 1
    text = exposition(dict, latencies).decode()
    assert "# TYPE iotcrm_event_latency_seconds histogram" in text
    assert 'iotcrm_event_latency_seconds_bucket{le="+Inf"} 5.0' in text
    assert 'iotcrm_action_latency_seconds_bucket{le="0.1"} 1.0' in text
    assert "iotcrm_action_latency_seconds_count 1.0" in exposition(dict, latencies).decode(), (
        "a scrape does not reset or double the histograms"
    )


def test_the_event_latency_is_split_into_ingest_transit_and_actor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forwarded = record(1_000)
    forwarded.message.headers.append((SENT_HEADER, b"1200"))  # ingest stamped it 0.2 s later
    not_stamped = record(1_000)  # not written by ingest: no stages, only the event latency
    batch = _Batch(packed=[(forwarded, [{"id": "e1"}]), (not_stamped, [{"id": "e2"}])])
    batch.began_at = 1.5
    monkeypatch.setattr("agents.customer.time.time", lambda: 1.6)  # its actions sent
    agent: Any = SimpleNamespace(rt=SimpleNamespace(latencies=Latencies()))
    CustomerAgent._observe_latencies(agent, batch)
    figures = agent.rt.latencies.as_dict()
    assert figures["event"]["count"] == 2
    assert {stage: (f["count"], f["sum_s"]) for stage, f in figures["stages"].items()} == {
        "ingest": (1, 0.2),
        "transit": (1, 0.3),
        "actor": (1, 0.1),
    }
    text = exposition(dict, agent.rt.latencies).decode()
    assert 'iotcrm_stage_latency_seconds_count{stage="transit"} 1.0' in text
