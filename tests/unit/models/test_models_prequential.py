"""process(): predict first, then learn; scopes, filters and sparse features."""

from __future__ import annotations

import math
import random

import pytest
from models_helpers import model_set
from river import anomaly, linear_model, preprocessing

from engine.models.allowlist import ALLOWED

BINARY = """
- name: clf
  kind: binary
  pipeline: StandardScaler | LogisticRegression
  features: [event.a, event.b]
  label: {field: event.y}
"""


def events(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(2, 3)
        out.append({"id": f"e{i}", "ts": float(i), "a": a, "b": b, "y": a + 0.3 * b > 0.5})
    return out


def test_scores_are_predictions_made_before_learning_the_event() -> None:
    models = model_set(BINARY)
    reference = preprocessing.StandardScaler() | linear_model.LogisticRegression()

    for event in events(200):
        x = {"a": event["a"], "b": event["b"]}
        expected = reference.predict_proba_one(x)[True]
        reference.learn_one(x, event["y"])

        assert models.process(event) == {"clf": expected}

    assert models.metrics()["clf"]["n"] == 200


def test_learning_first_would_have_given_other_scores() -> None:
    # Guards the test above: predict-after-learn differs on this stream.
    models = model_set(BINARY)
    learn_first = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    differ = 0
    for event in events(50):
        x = {"a": event["a"], "b": event["b"]}
        learn_first.learn_one(x, event["y"])
        differ += models.process(event)["clf"] != learn_first.predict_proba_one(x)[True]

    assert differ == 50


def test_an_event_without_its_label_is_scored_but_not_learned() -> None:
    models = model_set(BINARY)
    unlabelled = {"id": "u", "ts": 0.0, "a": 3.0, "b": 1.0}

    first = models.process(unlabelled)
    second = models.process(unlabelled)

    assert first == second == {"clf": 0.5}
    report = models.metrics()["clf"]
    assert (report["n"], report["n_labelled"], report["Accuracy"]) == (2, 0, None)


def test_metrics_are_prequential() -> None:
    models = model_set(BINARY)
    stream = events(300)
    reference = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    hits = 0
    for event in stream:
        x = {"a": event["a"], "b": event["b"]}
        proba = reference.predict_proba_one(x)
        hits += max(proba, key=proba.get) == event["y"]
        reference.learn_one(x, event["y"])
        models.process(event)

    assert models.metrics()["clf"]["Accuracy"] == pytest.approx(hits / len(stream), abs=1e-12)
    assert models.metrics()["clf"]["n_labelled"] == 300


REGRESSION = """
- name: reg
  kind: regression
  pipeline: LinearRegression
  features: [event.a]
  label: {field: event.target}
"""


def test_regression_scores_and_mae_rmse() -> None:
    models = model_set(REGRESSION)
    reference = linear_model.LinearRegression()
    errors = []
    for i in range(100):
        event = {"id": str(i), "ts": i, "a": i / 10, "target": 2.0 * i / 10 + 1.0}
        expected = reference.predict_one({"a": event["a"]})
        reference.learn_one({"a": event["a"]}, event["target"])
        errors.append(event["target"] - expected)

        assert models.process(event) == {"reg": expected}

    report = models.metrics()["reg"]
    assert report["MAE"] == pytest.approx(sum(map(abs, errors)) / 100)
    assert report["RMSE"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 100))


ANOMALY = """
- name: anomaly
  kind: anomaly
  pipeline: HalfSpaceTrees(n_trees=5, height=3, window_size=20, seed=42)
  scope: device_type
  applies_to: {kinds: [telemetry], device_types: [washer, compressor]}
  features: [event.vibration]
  label: {field: event.is_anomaly}
"""


def telemetry(i: int, device_type: str, vibration: float, **extra: object) -> dict:
    return {
        "id": f"{device_type}{i}",
        "ts": float(i),
        "kind": "telemetry",
        "device_type": device_type,
        "vibration": vibration,
        **extra,
    }


def test_anomaly_scores_then_learns_and_scores_rocauc_against_the_label() -> None:
    models = model_set(ANOMALY)
    reference = anomaly.HalfSpaceTrees(n_trees=5, height=3, window_size=20, seed=42)
    rng = random.Random(1)
    for i in range(200):
        bad = i > 60 and i % 10 == 0
        vibration = 0.95 if bad else rng.uniform(0.1, 0.3)
        expected = reference.score_one({"vibration": vibration})
        reference.learn_one({"vibration": vibration})

        score = models.process(telemetry(i, "washer", vibration, is_anomaly=bad))

        assert score == {"anomaly": expected}
        assert 0.0 <= score["anomaly"] <= 1.0
    report = models.metrics()["anomaly"]
    assert report["n_labelled"] == 200
    assert report["ROCAUC"] > 0.9


def test_one_instance_per_scope_value_created_lazily() -> None:
    models = model_set(ANOMALY)
    washer_only = model_set(ANOMALY)
    rng = random.Random(2)
    assert models.metrics()["anomaly"]["instances"] == 0

    for i in range(100):
        washer = telemetry(i, "washer", rng.uniform(0.1, 0.3))
        expected = washer_only.process(washer)
        # compressor events must not touch the washer detector
        models.process(telemetry(i, "compressor", rng.uniform(2.0, 5.0)))
        assert models.process(washer) == expected

    assert models.metrics()["anomaly"]["instances"] == 2


def test_device_type_can_come_from_device_state() -> None:
    models = model_set(ANOMALY)
    event = {"id": "e", "ts": 0, "kind": "telemetry", "vibration": 0.2}

    assert models.process(event, device={"device_type": "washer"}) == {"anomaly": 0.0}
    assert models.process(event) == {}  # no scope value: no model, no score


@pytest.mark.parametrize(
    "event",
    [
        {"id": "e", "ts": 0, "kind": "status", "device_type": "washer", "vibration": 0.2},
        {"id": "e", "ts": 0, "kind": "telemetry", "device_type": "vehicle", "vibration": 0.2},
        {"id": "e", "ts": 0, "kind": "telemetry", "device_type": "washer"},
        {"id": "e", "ts": 0, "kind": "telemetry", "device_type": "washer", "vibration": "high"},
    ],
)
def test_events_outside_applies_to_or_without_features_get_no_score(event: dict) -> None:
    models = model_set(ANOMALY)

    assert models.process(event) == {}
    assert models.metrics()["anomaly"]["n"] == 0


def test_segments_and_required_fields_filter_events() -> None:
    models = model_set(
        """
        - name: m
          kind: anomaly
          pipeline: HalfSpaceTrees(seed=1)
          scope: customer_segment
          applies_to: {segments: [family], require: [device.cycles_per_day]}
          features: [event.x]
        """
    )
    event = {"id": "e", "ts": 0, "x": 0.5}

    assert models.process(event, customer={"segment": "single"}, device={"cycles_per_day": 1}) == {}
    assert models.process(event, customer={"segment": "family"}, device={}) == {}
    assert models.process(event, customer={"segment": "family"}, device={"cycles_per_day": 1}) == {
        "m": 0.0
    }


def test_missing_and_malformed_features_are_skipped_not_fatal() -> None:
    models = model_set(
        """
        - name: clf
          kind: binary
          pipeline: StandardScaler | LogisticRegression
          features: [event.a, event.b, customer.c, customer.profile.age, device.d]
          label: {field: event.y}
        """
    )
    odd_values = [None, "12", float("nan"), float("inf"), {"value": 1}, [1, 2], True, 7]
    for i, value in enumerate(odd_values):
        scores = models.process(
            {"id": str(i), "ts": i, "a": value, "b": 1.5, "y": i % 2 == 0},
            customer={"c": value, "profile": value},
            device={},
        )
        assert set(scores) == {"clf"}
        assert 0.0 <= scores["clf"] <= 1.0

    report = models.metrics()["clf"]
    assert (report["n"], report["errors"]) == (len(odd_values), 0)


def test_a_failing_model_is_counted_and_the_others_still_score(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = model_set(ANOMALY + BINARY)

    def broken(self: object, x: dict) -> float:
        raise RuntimeError("boom")

    # the class the pipeline text builds (River's HalfSpaceTrees or a subclass)
    monkeypatch.setattr(ALLOWED["HalfSpaceTrees"].cls, "score_one", broken)
    scores = models.process(telemetry(0, "washer", 0.2, a=1.0, b=2.0, y=True))

    assert set(scores) == {"clf"}
    assert models.metrics()["anomaly"]["errors"] == 1


PER_DEVICE = ANOMALY.replace("scope: device_type", "scope: device")


def test_a_device_scope_model_depends_on_its_device_alone() -> None:
    """Two devices' events interleaved in any order give each the scores a
    model of its own events alone gives."""
    rng = random.Random(5)
    streams = {
        device: [
            {**telemetry(i, "washer", rng.uniform(0.1, 0.3)), "device_id": device}
            for i in range(120)
        ]
        for device in ("d1", "d2")
    }
    alone = {}
    for device, stream in streams.items():
        solo = model_set(PER_DEVICE)
        alone[device] = [solo.process(event)["anomaly"] for event in stream]
    assert any(score > 0 for scores in alone.values() for score in scores)

    for seed in (1, 2):
        order = random.Random(seed)
        pending = {device: list(stream) for device, stream in streams.items()}
        models = model_set(PER_DEVICE)
        got: dict[str, list[float]] = {"d1": [], "d2": []}
        while any(pending.values()):
            device = order.choice([d for d, left in pending.items() if left])
            got[device].append(models.process(pending[device].pop(0))["anomaly"])
        assert got == alone
        assert models.metrics()["anomaly"]["instances"] == 2


def test_device_models_can_live_with_the_caller() -> None:
    """A worker keeps a device's models in the device's state: [fingerprint, model]."""
    models = model_set(PER_DEVICE)
    held: dict = {}
    event = {**telemetry(0, "washer", 0.2), "device_id": "d1"}

    models.process(event, device_models=held)

    fingerprint, model = held["anomaly"]
    assert fingerprint == models.specs[0].fingerprint
    assert type(model).__name__ == "HalfSpaceTrees" and model.counter == 1
    assert models.metrics()["anomaly"]["instances"] == 0  # none kept in the set
    models.process(event, device_models=held)
    assert held["anomaly"][1] is model and model.counter == 2

    held["anomaly"][0] = "another declaration"
    models.process(event, device_models=held)
    assert held["anomaly"][1] is not model and held["anomaly"][1].counter == 1


def test_forgetting_a_device_drops_the_models_kept_for_it() -> None:
    models = model_set(PER_DEVICE)
    for device in ("d1", "d2"):
        models.process({**telemetry(0, "washer", 0.2), "device_id": device})

    models.forget({"c1", "d1"})

    assert set(models._by_name["anomaly"].instances) == {"d2"}
