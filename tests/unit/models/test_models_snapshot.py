"""snapshot()/restore(): a restored ModelSet continues exactly like an uninterrupted one."""

from __future__ import annotations

import pickle
import random
import subprocess

import pytest
from models_helpers import SHIPPED_MODELS, feed, model_set, synthetic_stream

from engine.models import ModelSet, SnapshotError, load_models
from engine.models.allowlist import ALLOWED, Role
from engine.models.pipeline import parse_pipeline
from engine.models.snapshot import FORMAT_VERSION, dumps, loads


def test_restore_mid_stream_gives_identical_scores_and_metrics() -> None:
    stream = list(synthetic_stream(3000))
    half = len(stream) // 2
    uninterrupted = load_models(SHIPPED_MODELS)
    expected = feed(uninterrupted, stream)

    first = load_models(SHIPPED_MODELS)
    before = feed(first, stream[:half])
    blob = first.snapshot()
    second = load_models(SHIPPED_MODELS)
    assert second.restore(blob) == ["anomaly", "churn", "depletion_days"]
    after = feed(second, stream[half:])

    assert before + after == expected
    assert second.metrics() == uninterrupted.metrics()
    report = second.metrics()
    assert report["churn"]["outcomes_matched"] > 50
    # one detector per washer and compressor (scope: device)
    devices = {
        event["device_id"]
        for what, event, _, _ in stream
        if what == "event"
        and event["device_type"] in ("washer", "compressor")
        and event["kind"] == "telemetry"
    }
    assert report["anomaly"]["instances"] == len(devices) > 2


def test_a_changed_model_starts_fresh_and_the_others_restore() -> None:
    declaration = """
    - name: a
      kind: anomaly
      pipeline: HalfSpaceTrees(n_trees=3, height=3, window_size=5, seed={seed})
      features: [event.x]
    - name: b
      kind: anomaly
      pipeline: HalfSpaceTrees(n_trees=3, height=3, window_size=5, seed=1)
      features: [event.x]
    """
    trained = model_set(declaration.replace("{seed}", "1"))
    for i in range(50):
        trained.process({"id": str(i), "ts": i, "x": random.Random(i).random()})

    changed = model_set(declaration.replace("{seed}", "2"))
    restored = changed.restore(trained.snapshot())

    assert restored == ["b"]
    assert changed.metrics()["a"]["n"] == 0
    assert changed.metrics()["b"]["n"] == 50
    assert changed.stream_time == 49.0


def test_a_model_missing_from_the_snapshot_is_reset() -> None:
    one = model_set("- {name: a, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}")
    two = model_set(
        "- {name: a, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}\n"
        "- {name: b, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}"
    )
    two.process({"id": "1", "ts": 1, "x": 0.5})

    assert two.restore(one.snapshot()) == ["a"]
    assert two.metrics()["b"]["n"] == 0


def _allowlisted_pipelines() -> list[str]:
    texts = []
    for name, allowed in ALLOWED.items():
        if allowed.role is Role.TRANSFORMER:
            texts.append(f"{name} | LogisticRegression")
        elif name == "OneVsRestClassifier":
            texts.append("OneVsRestClassifier(LogisticRegression(optimizer=Adam()))")
        elif name == "TargetStandardScaler":
            texts.append(
                "TargetStandardScaler(LinearRegression(optimizer=RMSProp(), loss=Huber()))"
            )
        elif allowed.role is not Role.COMPONENT:
            texts.append(name)
    texts.append("LogisticRegression(optimizer=FTRLProximal(), initializer=Normal(seed=1))")
    texts.append("LinearRegression(optimizer=AdaGrad(), loss=Absolute(), initializer=Zeros())")
    texts.append("PAClassifier(mode=2)")
    return texts


@pytest.mark.parametrize("text", _allowlisted_pipelines())
def test_every_allowlisted_estimator_survives_the_restricted_unpickler(text: str) -> None:
    model = parse_pipeline(text).build()
    role = parse_pipeline(text).final_role
    rng = random.Random(5)
    samples = [
        {"a": rng.random(), "b": rng.gauss(0, 1), "c": rng.random() * 10} for _ in range(400)
    ]

    def step(m: object, x: dict) -> object:
        if role is Role.ANOMALY:
            out = m.score_one(x)
            m.learn_one(x)
        elif role is Role.REGRESSOR:
            out = m.predict_one(x)
            m.learn_one(x, 3 * x["a"] + x["b"])
        else:
            out = m.predict_proba_one(x)
            m.learn_one(x, x["a"] + 0.2 * x["b"] > 0.5)
        return out

    for x in samples[:300]:
        step(model, x)
    clone = loads(dumps({"model": model}))["model"]

    assert [step(model, x) for x in samples[300:]] == [step(clone, x) for x in samples[300:]]


def _blob(payload: object) -> bytes:
    """Valid header, foreign body."""
    header = dumps({})[: -len(pickle.dumps({}, protocol=pickle.HIGHEST_PROTOCOL))]
    return header + pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


class _RunsCommand:
    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("echo pwned",))


class _ReachesGlobals:
    """An allowed class, then a dunder attribute: the way out to ``__globals__``."""

    def __reduce__(self) -> tuple:
        from river import stats

        return (getattr, (stats.Mean, "__init__"))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_RunsCommand(), "posix.system, which is not allowed"),
        (_ReachesGlobals(), "attribute '__init__'"),
        ({"f": eval}, "builtins.eval, which is not allowed"),
        ({"p": subprocess.Popen}, "subprocess.Popen, which is not allowed"),
    ],
)
def test_a_foreign_pickle_is_refused(payload: object, message: str) -> None:
    with pytest.raises(SnapshotError) as caught:
        loads(_blob(payload))

    assert message in str(caught.value)


def test_wrong_magic_and_version_are_refused() -> None:
    models = model_set("- {name: a, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}")
    blob = models.snapshot()
    newer = blob.replace(
        FORMAT_VERSION.to_bytes(2, "big"), (FORMAT_VERSION + 1).to_bytes(2, "big"), 1
    )

    with pytest.raises(SnapshotError, match="not a model snapshot"):
        models.restore(pickle.dumps({}))
    with pytest.raises(SnapshotError, match="snapshot format"):
        models.restore(newer)
    with pytest.raises(SnapshotError, match="corrupt"):
        models.restore(blob[:-20])


def test_restore_into_an_empty_model_set_is_harmless() -> None:
    models = ModelSet([])
    assert models.restore(load_models(SHIPPED_MODELS).snapshot()) == []
