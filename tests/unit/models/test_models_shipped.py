"""The shipped models/models.yaml: the names rules read, and sensible behaviour."""

from __future__ import annotations

import doctest
import importlib
import random

import pytest
from models_helpers import SHIPPED_MODELS

from engine.models import load_models

WASHER = {"device_id": "d1", "customer_id": "c1", "device_type": "washer", "kind": "telemetry"}


def test_shipped_models_load_with_the_names_rules_use() -> None:
    models = load_models(SHIPPED_MODELS)

    assert models.names == ("anomaly", "churn", "depletion_days")
    kinds = {spec.name: (spec.kind, spec.scope) for spec in models.specs}
    assert kinds == {
        "anomaly": ("anomaly", "device"),
        "churn": ("binary", "global"),
        "depletion_days": ("regression", "device_type"),
    }


def test_anomaly_score_is_in_unit_range_and_higher_for_outliers() -> None:
    models = load_models(SHIPPED_MODELS, only=["anomaly"])
    rng = random.Random(4)

    def reading(i: int, vibration: float, temperature: float) -> dict:
        return {
            **WASHER,
            "id": f"e{i}",
            "ts": float(i),
            "vibration": vibration,
            "temperature": temperature,
        }

    normal_scores, outlier_scores = [], []
    for i in range(1500):
        score = models.process(reading(i, rng.gauss(0.3, 0.03), rng.gauss(45, 2)))["anomaly"]
        assert 0.0 <= score <= 1.0
        if i > 1000:
            normal_scores.append(score)
        if i > 1000 and i % 50 == 0:
            outlier = models.process(reading(i, 0.9, 75.0))["anomaly"]
            outlier_scores.append(outlier)

    assert min(outlier_scores) > max(sorted(normal_scores)[: int(len(normal_scores) * 0.9)])


def test_churn_learns_from_delayed_outcomes() -> None:
    models = load_models(SHIPPED_MODELS, only=["churn"])
    rng = random.Random(8)
    for i in range(3000):
        customer_id = f"c{i}"
        idle = rng.random() < 0.5
        state = {
            "usage_today_min": rng.uniform(0, 5) if idle else rng.uniform(40, 120),
            "usage_baseline_min": 60.0,
            "days_since_use": rng.randrange(7, 20) if idle else 0,
            "support_cases_30d": rng.randrange(3),
        }
        models.process(
            {"id": f"e{i}", "ts": float(i), "customer_id": customer_id, "kind": "usage"},
            customer=state,
        )
        models.observe_outcome(
            {
                "outcome_id": f"o{i}",
                "customer_id": customer_id,
                "type": "customer_churned" if idle else "customer_retained",
                "ts": float(i) + 0.5,
            }
        )

    def risk(state: dict) -> float:
        return models.process(
            {"id": "probe", "ts": 9e3, "customer_id": "p", "kind": "usage"},
            customer={"usage_baseline_min": 60.0, "support_cases_30d": 1, **state},
        )["churn"]

    assert risk({"usage_today_min": 1.0, "days_since_use": 15}) > 0.8
    assert risk({"usage_today_min": 90.0, "days_since_use": 0}) < 0.2
    assert models.metrics()["churn"]["Accuracy"] > 0.9


def test_depletion_days_from_device_rates() -> None:
    models = load_models(SHIPPED_MODELS, only=["depletion_days"])
    event = {**WASHER, "id": "e1", "ts": 0.0, "kind": "consumable", "level": 30.0}

    scores = models.process(event, device={"level_drop_per_cycle": 2.0, "cycles_per_day": 1.5})
    unknown_rate = models.process(event, device={})
    no_level = models.process(
        {**event, "level": None}, device={"level_drop_per_cycle": 2.0, "cycles_per_day": 1.5}
    )
    vehicle = models.process(
        {**event, "device_type": "vehicle"},
        device={"level_drop_per_cycle": 2.0, "cycles_per_day": 1.5},
    )

    assert scores == {"depletion_days": 10.0}
    assert unknown_rate == no_level == vehicle == {}


@pytest.mark.parametrize(
    "module",
    [
        "engine.models",
        "engine.models.errors",
        "engine.models.estimators",
        "engine.models.features",
        "engine.models.hst",
        "engine.models.scalers",
        "engine.models.modelset",
        "engine.models.pipeline",
        "engine.models.spec",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)

    assert result.attempted > 0
    assert result.failed == 0
