from __future__ import annotations

import random
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.models import ModelSet
from engine.models.spec import parse_models


def model_set(yaml_text: str) -> ModelSet:
    """A ModelSet from an inline YAML declaration."""
    return ModelSet(parse_models(textwrap.dedent(yaml_text)))


SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "models" / "models.yaml"
DEVICE_TYPES = ("washer", "compressor", "vehicle", "wearable")
SEGMENTS = ("family", "single", "business")


def synthetic_stream(
    n: int, seed: int = 11, customers: int = 40
) -> Iterator[tuple[str, dict, dict, dict]]:
    """Events with customer/device state, and now and then an outcome; each
    customer has one device of every type (``<customer>-<type>``).

    Yields ``("event", event, customer, device)`` or ``("outcome", outcome, {}, {})``.
    """
    rng = random.Random(seed)
    for i in range(n):
        customer_id = f"c{rng.randrange(customers)}"
        device_type = DEVICE_TYPES[rng.randrange(len(DEVICE_TYPES))]
        device_id = f"{customer_id}-{device_type}"
        ts = 1_763_700_000.0 + i * 30.0
        faulty = rng.random() < 0.03
        event = {
            "id": f"e{i}",
            "ts": ts,
            "device_id": device_id,
            "customer_id": customer_id,
            "device_type": device_type,
            "kind": "telemetry" if rng.random() < 0.8 else "usage",
            "vibration": rng.gauss(0.3, 0.05) + (0.6 if faulty else 0.0),
            "temperature": rng.gauss(45.0, 3.0),
            "power": rng.gauss(800.0, 60.0),
            "level": rng.uniform(5.0, 100.0),
            "is_anomaly": faulty,
        }
        customer = {
            "customer_id": customer_id,
            "segment": SEGMENTS[rng.randrange(len(SEGMENTS))],
            "usage_today_min": rng.uniform(0, 120),
            "usage_baseline_min": rng.uniform(30, 90),
            "days_since_use": rng.randrange(10),
            "support_cases_30d": rng.randrange(3),
        }
        device = {
            "level_drop_per_cycle": rng.uniform(0.5, 3.0),
            "cycles_per_day": rng.uniform(0, 4),
        }
        yield "event", event, customer, device
        if rng.random() < 0.1:
            churned = customer["days_since_use"] > 5
            outcome = {
                "outcome_id": f"o{i}",
                "type": "customer_churned" if churned else "offer_accepted",
                "customer_id": customer_id,
                "ts": ts + 10.0,
            }
            yield "outcome", outcome, {}, {}


def feed(models: ModelSet, stream: Iterable[tuple[str, dict, dict, dict]]) -> list[dict]:
    """Play ``stream`` into ``models``; the scores of every event, in order."""
    scores = []
    for what, record, customer, device in stream:
        if what == "outcome":
            models.observe_outcome(record)
        else:
            scores.append(models.process(record, customer=customer, device=device))
    return scores
