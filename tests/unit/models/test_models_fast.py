"""The faster HalfSpaceTrees and MinMaxScaler give River's results.

The reference is always an unmodified River object fed the same inputs; a
score may differ from River's by at most 1e-9 (in practice the bits are the
same), and the trees' masses must be equal, also across snapshot/restore
and across a restore of a snapshot written with River's own classes.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Iterator

import pytest
from models_helpers import SHIPPED_MODELS, feed, synthetic_stream
from river import anomaly, compose, linear_model, preprocessing

from engine.models import ModelSet, load_models
from engine.models import hst as fast_hst
from engine.models.allowlist import ALLOWED
from engine.models.hst import HalfSpaceTrees
from engine.models.pipeline import Pipeline, upgraded
from engine.models.scalers import MinMaxScaler
from engine.models.snapshot import dumps, loads

TOLERANCE = 1e-9
SHIPPED = {"n_trees": 15, "height": 6, "window_size": 250, "seed": 42}


def telemetry(n: int, seed: int = 7, missing: float = 0.0) -> Iterator[dict[str, float]]:
    """Readings like a washer's, with faults, repeats, ints and (optionally) gaps."""
    rng = random.Random(seed)
    previous: dict[str, float] = {}
    for i in range(n):
        if previous and rng.random() < 0.2:
            x = dict(previous)  # the same reading again: cached cells must stay right
        else:
            x = {
                "vibration": rng.gauss(0.3, 0.05),
                "temperature": round(rng.gauss(45.0, 3.0), 1),
                "power": rng.gauss(800.0, 60.0),
            }
            if rng.random() < 0.02:
                x["vibration"] += rng.choice([0.8, -0.5, 5.0])
            if rng.random() < 0.05:
                x["power"] = int(x["power"])
        for name in list(x):
            if rng.random() < missing:
                del x[name]
        if i == 0:
            x = {"vibration": 0.3, "temperature": 45.0, "power": 800.0}  # the trees' features
        previous = x
        yield x


def masses(model: anomaly.HalfSpaceTrees) -> list[tuple]:
    return [
        (node.l_mass, node.r_mass, getattr(node, "feature", None), getattr(node, "threshold", None))
        for tree in model.trees
        for node in tree.iter_dfs()
    ]


def assert_same_detector(fast: HalfSpaceTrees, river: anomaly.HalfSpaceTrees) -> None:
    assert masses(fast.to_river()) == masses(river)
    assert (fast.counter, fast._first_window) == (river.counter, river._first_window)
    assert fast.rng.getstate() == river.rng.getstate()


def play(pipelines: list, xs: list[dict[str, float]]) -> list[list[float]]:
    """Prequential: score, then learn, for every pipeline on every reading."""
    scores = []
    for x in xs:
        scores.append([model.score_one(x) for model in pipelines])
        for model in pipelines:
            model.learn_one(x)
    return scores


def assert_close(scores: list[list[float]]) -> None:
    worst = max(abs(mine - theirs) for mine, theirs in scores)
    assert worst <= TOLERANCE
    assert any(mine > 0 for mine, _ in scores)  # past the warm-up, real scores


def test_shipped_detector_matches_river_over_thousands_of_events() -> None:
    xs = list(telemetry(6000))
    fast = compose.Pipeline(MinMaxScaler(), HalfSpaceTrees(**SHIPPED))
    river = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(**SHIPPED))

    scores = play([fast, river], xs)

    assert_close(scores)
    assert [a for a, _ in scores] == [b for _, b in scores]  # bit for bit, in fact
    assert_same_detector(fast["HalfSpaceTrees"], river["HalfSpaceTrees"])


@pytest.mark.parametrize(
    ("params", "missing"),
    [
        ({"n_trees": 5, "height": 3, "window_size": 20, "seed": 1}, 0.0),
        ({"n_trees": 15, "height": 6, "window_size": 250, "seed": 42}, 0.05),
        ({"n_trees": 3, "height": 1, "window_size": 1, "seed": 3}, 0.1),
        ({"n_trees": 2, "height": 8, "window_size": 7, "seed": None}, 0.02),
        ({"n_trees": 25, "height": 4, "window_size": 50, "seed": 9}, 0.0),
    ],
)
def test_detector_matches_river_for_other_shapes_and_missing_features(
    params: dict, missing: float
) -> None:
    xs = list(telemetry(3000, seed=params["n_trees"], missing=missing))
    if params["seed"] is None:  # River draws its own seed: give both the same trees
        river_hst = anomaly.HalfSpaceTrees(**params)
        fast_detector = HalfSpaceTrees.from_river(river_hst)
    else:
        river_hst = anomaly.HalfSpaceTrees(**params)
        fast_detector = HalfSpaceTrees(**params)
    fast = compose.Pipeline(MinMaxScaler(), fast_detector)
    river = compose.Pipeline(preprocessing.MinMaxScaler(), river_hst)

    scores = play([fast, river], xs)

    assert_close(scores)
    assert_same_detector(fast_detector, river_hst)


def test_the_walk_without_masks_matches_river(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_hst, "MAX_MASK_ENTRIES", 0)  # a forest too big for masks
    monkeypatch.setattr(fast_hst, "_FORESTS", {})  # not the tables built with masks
    xs = list(telemetry(2000, missing=0.05))
    fast = compose.Pipeline(MinMaxScaler(), HalfSpaceTrees(**SHIPPED))
    river = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(**SHIPPED))

    scores = play([fast, river], xs)

    assert fast["HalfSpaceTrees"]._derived.grid is None
    assert_close(scores)
    assert_same_detector(fast["HalfSpaceTrees"], river["HalfSpaceTrees"])


def test_unscaled_readings_and_custom_limits_match_river() -> None:
    params = {"n_trees": 10, "height": 5, "window_size": 40, "seed": 5}
    limits = {"vibration": (0.0, 2.0), "temperature": (20.0, 80.0), "power": (0.0, 2000.0)}
    xs = list(telemetry(2000))
    fast = HalfSpaceTrees(limits=limits, **params)
    river = anomaly.HalfSpaceTrees(limits=limits, **params)

    scores = play([fast, river], xs)

    assert_close(scores)
    assert_same_detector(fast, river)


def test_pickled_mid_window_the_detector_continues_like_river() -> None:
    xs = list(telemetry(4000, missing=0.01))
    fast = compose.Pipeline(MinMaxScaler(), HalfSpaceTrees(**SHIPPED))
    river = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(**SHIPPED))
    scores = play([fast, river], xs[:2345])  # 2345: inside a window

    blob = dumps({"model": fast})
    restored = loads(blob)["model"]
    assert restored["HalfSpaceTrees"]._derived is None  # tables are rebuilt, not stored
    scores += play([restored, river], xs[2345:])

    assert_close(scores)
    assert_same_detector(restored["HalfSpaceTrees"], river["HalfSpaceTrees"])


def test_river_detectors_convert_both_ways_mid_window() -> None:
    xs = list(telemetry(1300))
    river = anomaly.HalfSpaceTrees(**SHIPPED)
    for x in xs[:777]:
        river.learn_one(x)
    fast = HalfSpaceTrees.from_river(river)
    assert_same_detector(fast, river)

    scores = play([fast, river], xs[777:])

    assert_close(scores)
    assert_same_detector(fast, river)
    back = fast.to_river()
    assert [back.score_one(x) for x in xs[:50]] == [river.score_one(x) for x in xs[:50]]


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal dicts, NaN (an unseen feature, in River too) equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def test_the_scaler_matches_river() -> None:
    rng = random.Random(3)
    pairs = [(MinMaxScaler(), preprocessing.MinMaxScaler())]
    pairs.append((MinMaxScaler(window_size=5), preprocessing.MinMaxScaler(window_size=5)))
    for _ in range(2000):
        x = {"a": rng.gauss(0, 1), "b": rng.choice([1, 2, 3]), "c": 7.0}
        if rng.random() < 0.1:
            del x["a"]
        for fast, river in pairs:
            if river.window_size is None:  # a rolling one cannot scale unseen features
                assert same(fast.transform_one(x), river.transform_one(x))
            fast.learn_one(x)
            river.learn_one(x)
            assert same(fast.transform_one(x), river.transform_one(x))
    for fast, river in pairs:
        assert pickle.loads(pickle.dumps(fast)).transform_one({"a": 0.5}) == river.transform_one(
            {"a": 0.5}
        )


def test_the_pipeline_text_builds_the_fast_classes() -> None:
    assert ALLOWED["HalfSpaceTrees"].cls is HalfSpaceTrees
    assert ALLOWED["MinMaxScaler"].cls is MinMaxScaler
    model = load_models(SHIPPED_MODELS)._by_name["anomaly"].spec.pipeline.build()
    assert [type(step) for step in model.steps.values()] == [MinMaxScaler, HalfSpaceTrees]


def _anomaly_inputs(stream: list) -> list[tuple[str, dict[str, float]]]:
    """(device id: the model's scope, features) of the events the shipped
    anomaly model scores."""
    inputs = []
    for what, event, _customer, _device in stream:
        if what != "event" or event["kind"] != "telemetry":
            continue
        if event["device_type"] not in ("washer", "compressor"):
            continue
        x = {name: event[name] for name in ("vibration", "temperature", "power")}
        inputs.append((event["device_id"], x))
    return inputs


def _river_reference(stream: list) -> list[float]:
    """The shipped anomaly model's scores, by unmodified River objects."""
    detectors: dict[str, compose.Pipeline] = {}
    scores = []
    for device_id, x in _anomaly_inputs(stream):
        model = detectors.get(device_id)
        if model is None:
            model = detectors[device_id] = compose.Pipeline(
                preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(**SHIPPED)
            )
        scores.append(float(model.score_one(x)))
        model.learn_one(x)
    return scores


def _anomaly_scores(scores: list[dict[str, float]]) -> list[float]:
    return [s["anomaly"] for s in scores if "anomaly" in s]


#: Customers of the anomaly streams: few enough that each device's detector
#: (``scope: device``) fills several windows.
FEW_CUSTOMERS = 2


def test_shipped_models_across_a_snapshot_match_river() -> None:
    stream = list(synthetic_stream(8000, customers=FEW_CUSTOMERS))
    half = len(stream) // 2
    expected = _river_reference(stream)

    first = load_models(SHIPPED_MODELS)
    before = feed(first, stream[:half])
    second = load_models(SHIPPED_MODELS)
    assert second.restore(first.snapshot()) == ["anomaly", "churn", "depletion_days"]
    after = feed(second, stream[half:])

    got = _anomaly_scores(before + after)
    assert len(got) == len(expected) > 2000
    assert max(map(abs, map(float.__sub__, got, expected))) <= TOLERANCE
    assert any(score > 0 for score in got)


def test_a_snapshot_written_with_river_classes_restores_into_the_fast_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = list(synthetic_stream(6000, customers=FEW_CUSTOMERS))
    half = len(stream) // 2
    expected = _river_reference(stream)
    uninterrupted = load_models(SHIPPED_MODELS)
    feed(uninterrupted, stream)

    with monkeypatch.context() as patch:  # what an earlier version built
        for name, river_cls in (
            ("HalfSpaceTrees", anomaly.HalfSpaceTrees),
            ("MinMaxScaler", preprocessing.MinMaxScaler),
        ):
            patch.setitem(ALLOWED, name, ALLOWED[name].__class__(river_cls, ALLOWED[name].role))
        old = load_models(SHIPPED_MODELS)
        before = feed(old, stream[:half])
        blob = old.snapshot()
    assert type(old._by_name["anomaly"].instances["c0-washer"]["HalfSpaceTrees"]) is (
        anomaly.HalfSpaceTrees
    )

    new = load_models(SHIPPED_MODELS)
    assert new.restore(blob) == ["anomaly", "churn", "depletion_days"]
    instance = new._by_name["anomaly"].instances["c0-washer"]
    assert [type(step) for step in instance.steps.values()] == [MinMaxScaler, HalfSpaceTrees]
    after = feed(new, stream[half:])

    got = _anomaly_scores(before + after)
    assert len(got) == len(expected)
    assert max(map(abs, map(float.__sub__, got, expected))) <= TOLERANCE
    assert new.metrics() == uninterrupted.metrics()


def test_upgraded_leaves_other_estimators_alone() -> None:
    model = compose.Pipeline(preprocessing.StandardScaler(), anomaly.HalfSpaceTrees(seed=1))
    again = upgraded(upgraded(model))
    assert type(again["StandardScaler"]) is preprocessing.StandardScaler
    assert upgraded(again) is again
    assert list(again.steps) == ["StandardScaler", "HalfSpaceTrees"]


def test_scores_stay_in_the_unit_interval() -> None:
    models: ModelSet = load_models(SHIPPED_MODELS)
    scores = _anomaly_scores(feed(models, synthetic_stream(3000)))
    assert all(0.0 <= s <= 1.0 and not math.isnan(s) for s in scores)


def test_the_pipeline_calls_its_steps_as_river_does() -> None:
    rng = random.Random(5)
    classifier = (
        Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(l2=0.001)),
        compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(l2=0.001)),
    )
    detector = (
        Pipeline(MinMaxScaler(), HalfSpaceTrees(n_trees=5, height=3, window_size=20, seed=1)),
        compose.Pipeline(
            preprocessing.MinMaxScaler(),
            anomaly.HalfSpaceTrees(n_trees=5, height=3, window_size=20, seed=1),
        ),
    )
    for i in range(1500):
        x = {"a": rng.gauss(0, 1), "b": rng.random()}
        y = x["a"] + rng.gauss(0, 0.5) > 0
        mine, river = classifier
        assert mine.predict_proba_one(x) == river.predict_proba_one(x)
        assert mine.predict_one(x) == river.predict_one(x)
        mine.learn_one(x, y)
        river.learn_one(x, y)
        mine, river = detector
        if i % 500 == 499:  # River's own path inside learn_during_predict, for both
            with compose.learn_during_predict():
                assert mine.score_one(x) == river.score_one(x)
        assert mine.score_one(x) == river.score_one(x)
        mine.learn_one(x)
        river.learn_one(x)
    restored = pickle.loads(pickle.dumps(classifier[0]))
    probe = {"a": 1.0, "b": 0.5}
    assert restored.predict_proba_one(probe) == classifier[1].predict_proba_one(probe)


def test_a_pickled_detector_names_its_shared_trees_and_continues_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seeded forest is stored by its key (a model per device would
    otherwise store the same trees once per device); unpickled in a process
    that has not grown it, it grows the same trees and random state."""
    xs = [x for _, x in _anomaly_inputs(list(synthetic_stream(3000, customers=1)))]
    fast, river = HalfSpaceTrees(**SHIPPED), anomaly.HalfSpaceTrees(**SHIPPED)
    sibling = HalfSpaceTrees(**SHIPPED)
    for x in xs[:400]:
        fast.learn_one(x)
        river.learn_one(x)
    sibling.learn_one(xs[0])
    assert sibling._split_features is fast._split_features  # one forest, shared

    blob = pickle.dumps(fast)
    assert len(blob) < 6_000
    monkeypatch.setattr(fast_hst, "_FORESTS", {})  # as in another process
    restored = pickle.loads(blob)

    assert restored.rng.getstate() == river.rng.getstate()
    for x in xs[400:]:
        assert restored.score_one(x) == river.score_one(x)
        restored.learn_one(x)
        river.learn_one(x)
    assert_same_detector(restored, river)


def test_a_detector_pickled_before_shared_forests_still_loads() -> None:
    """The layout of earlier snapshots: the trees themselves and a leaf id per
    observation and tree, no forest key."""
    xs = [x for _, x in _anomaly_inputs(list(synthetic_stream(3000, customers=1)))]
    river = anomaly.HalfSpaceTrees(**SHIPPED)
    for x in xs[:300]:
        river.learn_one(x)
    fast = HalfSpaceTrees.from_river(river)  # trees of its own: the old layout
    old_layout = fast.__dict__.copy()
    del old_layout["_forest_key"]
    old_layout["_derived"] = None

    restored = HalfSpaceTrees.__new__(HalfSpaceTrees)
    restored.__setstate__(old_layout)

    for x in xs[300:]:
        assert restored.score_one(x) == river.score_one(x)
        restored.learn_one(x)
        river.learn_one(x)
    assert_same_detector(restored, river)
