"""Pipeline text: only allowlisted estimators with literal arguments are built."""

from __future__ import annotations

import pytest
from river import anomaly, compose, linear_model, optim, preprocessing

from engine.models.allowlist import ALLOWED, Role
from engine.models.pipeline import PipelineError, parse_pipeline


def test_pipe_composes_a_river_pipeline_with_the_given_arguments() -> None:
    model = parse_pipeline("StandardScaler | LogisticRegression(l2=0.25)").build()

    assert isinstance(model, compose.Pipeline)
    scaler, classifier = model.steps.values()
    assert isinstance(scaler, preprocessing.StandardScaler)
    assert isinstance(classifier, linear_model.LogisticRegression)
    assert classifier.l2 == 0.25


def test_single_estimator_is_not_wrapped_in_a_pipeline() -> None:
    model = parse_pipeline("HalfSpaceTrees(n_trees=25, seed=42)").build()

    assert isinstance(model, anomaly.HalfSpaceTrees)
    assert (model.n_trees, model.seed) == (25, 42)


def test_nested_allowlisted_estimators_and_literals_are_accepted() -> None:
    model = parse_pipeline(
        "LogisticRegression(optimizer=SGD(0.05), loss=Log(weight_pos=2.0), intercept_init=-1.5)"
    ).build()

    assert isinstance(model.optimizer, optim.SGD)
    assert model.optimizer.learning_rate == 0.05
    assert model.loss.weight_pos == 2.0
    assert model.intercept_init == -1.5


def test_every_build_is_a_fresh_untrained_instance() -> None:
    recipe = parse_pipeline("HalfSpaceTrees(limits={'x': [0, 1]}, seed=1)")
    first, second = recipe.build(), recipe.build()

    first.learn_one({"x": 0.5})
    first.limits["x"].append(99)

    assert first is not second
    assert second.limits["x"] == [0, 1]


def test_multiline_text_with_spaces_is_accepted() -> None:
    recipe = parse_pipeline("  StandardScaler |\n  LogisticRegression(\n    l2=0.1)\n")

    assert [step.name for step in recipe.steps] == ["StandardScaler", "LogisticRegression"]


def test_canonical_form_ignores_spacing_but_not_arguments() -> None:
    a = parse_pipeline("StandardScaler|LogisticRegression(l2=0.1)").canonical
    b = parse_pipeline("StandardScaler  |  LogisticRegression( l2 = 0.1 )").canonical
    c = parse_pipeline("StandardScaler | LogisticRegression(l2=0.2)").canonical

    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('echo pwned')", "attribute access"),
        ("__import__('os')", "unknown estimator '__import__'"),
        ("eval('1')", "unknown estimator 'eval'"),
        ("os.system('ls')", "attribute access"),
        ("preprocessing.StandardScaler", "attribute access"),
        ("StandardScaler | Foo", "unknown estimator 'Foo'"),
        ("StandardScaler | (lambda x: x)", "lambda"),
        ("LogisticRegression(l2=(lambda: 0.1)())", "lambda"),
        ("LogisticRegression(l2=x)", "bare name"),
        ("LogisticRegression(l2=[c for c in 'ab'])", "comprehension"),
        ("LogisticRegression(l2=1 + 1)", "operator"),
        ("LogisticRegression(l2=__builtins__)", "bare name"),
        ("LogisticRegression(**{'l2': 0.1})", "'**' arguments"),
        ("LogisticRegression(*[0.1])", "'*' arguments"),
        ("LogisticRegression(l2=f'{1}')", "f-string"),
        ("LogisticRegression(l2=b'x')", "literal b'x'"),
        ("LogisticRegression(optimizer=().__class__)", "attribute access"),
        ("StandardScaler[0]", "subscript"),
        ("LogisticRegression(nope=1)", "unexpected keyword argument 'nope'"),
        ("LogisticRegression | StandardScaler", "only transformers may come before"),
        ("SGD(0.1)", "can only be an argument"),
        ("HalfSpaceTrees(n_trees=100000)", "n_trees must be a number in [1, 100]"),
        ("HalfSpaceTrees(height=1e9)", "height must be a number"),
        ("StandardScaler ) | ( LogisticRegression", "unmatched closing bracket"),
        ("StandardScaler |", "syntax error"),
        ("", "non-empty"),
    ],
)
def test_anything_not_allowlisted_is_refused(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text)

    assert message in caught.value.message


def test_refusal_points_at_the_offending_column() -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline("StandardScaler | Foo(1)")

    assert (caught.value.line, caught.value.col) == (1, 18)


def test_refusal_happens_before_any_class_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    monkeypatch.setattr(
        preprocessing.StandardScaler, "__init__", lambda self, **kw: built.append("scaler")
    )
    with pytest.raises(PipelineError):
        parse_pipeline("StandardScaler | LogisticRegression(l2=print)")

    assert built == []


def test_allowlist_roles_match_river_interfaces() -> None:
    from river import base

    expected = {
        Role.TRANSFORMER: base.Transformer,
        Role.CLASSIFIER: base.Classifier,
        Role.REGRESSOR: base.Regressor,
        Role.ANOMALY: base.AnomalyDetector,
    }
    for name, allowed in ALLOWED.items():
        if allowed.role in expected:
            assert issubclass(allowed.cls, expected[allowed.role]), name
