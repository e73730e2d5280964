"""Model files: what is accepted, and refusals with file:line:col."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.models import ModelConfigError, load_models
from engine.models.spec import FieldLabel, OutcomeLabel, parse_models, positive_duration

VALID = """\
models:
  - name: churn
    kind: binary
    pipeline: StandardScaler | LogisticRegression
    scope: customer_segment
    applies_to: {kinds: [usage], device_types: [wearable], require: [customer.usage_today_min]}
    features:
      - customer.days_since_use
      - {usage: customer.usage_today_min}
      - customer.consent.marketing
    label:
      outcome: {positive: [customer_churned], negative: [offer_accepted, customer_retained],
                join: customer, horizon: 30d, max_pending: 10}
"""


def refusal(text: str) -> ModelConfigError:
    with pytest.raises(ModelConfigError) as caught:
        parse_models(textwrap.dedent(text), file="m.yaml")
    return caught.value


def test_a_full_declaration_is_read() -> None:
    [spec] = parse_models(VALID)

    assert (spec.name, spec.kind, spec.scope) == ("churn", "binary", "customer_segment")
    assert [f.name for f in spec.features] == ["days_since_use", "usage", "marketing"]
    assert str(spec.features[2].field) == "customer.consent.marketing"
    assert spec.applies_to.kinds == {"usage"}
    assert spec.applies_to.device_types == {"wearable"}
    assert isinstance(spec.label, OutcomeLabel)
    assert spec.label.types == {"customer_churned", "offer_accepted", "customer_retained"}
    assert spec.label.positive == {"customer_churned"}
    assert (spec.label.join, spec.label.horizon_s, spec.label.max_pending) == (
        "customer",
        30 * 86400.0,
        10,
    )


def test_a_plain_list_is_accepted_too() -> None:
    [spec] = parse_models(
        "- {name: a, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}"
    )

    assert spec.label is None
    assert spec.scope == "global"


def test_error_names_file_line_and_column_of_the_unknown_estimator() -> None:
    error = refusal(
        """\
        models:
          - name: a
            kind: binary
            pipeline: StandardScaler | Foo
            features: [event.x]
            label: {field: event.y}
        """
    )

    assert (error.file, error.line, error.col) == ("m.yaml", 4, 32)
    assert str(error).startswith("m.yaml:4:32: pipeline: unknown estimator 'Foo'")


def test_error_column_accounts_for_quotes() -> None:
    error = refusal(
        """\
        - name: a
          kind: anomaly
          pipeline: "__import__('os')"
          features: [event.x]
        """
    )

    assert (error.line, error.col) == (3, 14)
    assert "unknown estimator '__import__'" in error.message


def test_load_models_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("- name: a\n  kind: anomaly\n  pipeline: os.system\n  features: [event.x]\n")

    with pytest.raises(ModelConfigError) as caught:
        load_models(path)

    assert str(caught.value).startswith(f"{path}:3:13: pipeline: attribute access")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="cannot read model file"):
        load_models(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (
            "- name: a\n  kind: anomaly\n  pipeline: !!python/name:os.system"
            "\n  features: [event.x]",
            "YAML tags are not allowed",
            3,
        ),
        (
            "- name: A-1\n  kind: anomaly\n  pipeline: HalfSpaceTrees\n  features: [event.x]",
            "must match",
            1,
        ),
        (
            "- name: a\n  kind: clustering\n  pipeline: HalfSpaceTrees\n  features: [event.x]",
            "'kind' must be one of binary, regression, anomaly",
            2,
        ),
        (
            "- name: a\n  pipeline: HalfSpaceTrees\n  features: [event.x]",
            "missing required key 'kind'",
            1,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees\n  features: [event.x]\n"
            "  colour: red",
            "unknown key 'colour'",
            5,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: HalfSpaceTrees\n  features: [event.x]\n"
            "  label: {field: event.y}",
            "must end with a classifier",
            3,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees\n  scope: planet\n"
            "  features: [event.x]",
            "'scope' must be one of",
            4,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees\n  features: [sensor.x]",
            "must start with one of event, customer, device",
            4,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees"
            "\n  features: [event.x, device.x]",
            "two features are named 'x'",
            4,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees"
            "\n  features: [event.*, event.x]",
            "event.* already takes every event field",
            4,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees\n  features: []",
            "'features' must be a non-empty list",
            4,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression\n  features: [event.x]",
            "a binary model needs a 'label'",
            1,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression\n  features: [event.x]\n"
            "  label: {field: event.x}",
            "the label cannot also be a feature",
            5,
        ),
        (
            "- name: a\n  kind: anomaly\n  pipeline: HalfSpaceTrees\n  features: [event.x]\n"
            "  label: {outcome: {types: [t], join: device, horizon: 1d}}",
            "an anomaly model learns without labels",
            5,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression\n  features: [event.x]\n"
            "  label: {outcome: {positive: [p], negative: [p], join: customer, horizon: 1d}}",
            "both positive and negative",
            5,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression\n  features: [event.x]\n"
            "  label: {outcome: {positive: [p], negative: [n], join: customer}}",
            "needs a 'horizon'",
            5,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression\n  features: [event.x]\n"
            "  label: {outcome: {positive: [p], negative: [n], join: order, horizon: 1d}}",
            "'join' must be one of customer, device, action",
            5,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression\n  features: [event.x]\n"
            "  label: {outcome: {positive: [p], negative: [n], join: device, horizon: soon}}",
            "invalid duration 'soon'",
            5,
        ),
        (
            "- name: a\n  kind: regression\n  pipeline: LinearRegression\n  features: [event.x]\n"
            "  label: {outcome: {positive: [p], join: device, horizon: 1d}}",
            "use 'types', not positive/negative",
            5,
        ),
        (
            "- name: a\n  kind: binary\n  pipeline: LogisticRegression(optimizer=Log())\n"
            "  features: [event.x]\n  label: {field: event.y}",
            "pipeline fails on a sample event",
            3,
        ),
        (
            "- {name: a, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}\n"
            "- {name: a, kind: anomaly, pipeline: HalfSpaceTrees, features: [event.x]}",
            "duplicate model name 'a'",
            2,
        ),
        ("models: {name: a}", "expected a list of models", 1),
        ("- name: a\n  kind: [anomaly", "invalid YAML", 0),
    ],
)
def test_invalid_declarations_are_refused_at_their_line(text: str, message: str, line: int) -> None:
    error = refusal(text)

    assert message in error.message
    if line:
        assert error.line == line


def test_field_label_and_event_wildcard() -> None:
    [spec] = parse_models(
        "- name: p\n  kind: binary\n  pipeline: StandardScaler | LogisticRegression\n"
        "  features: [event.*, customer.tenure_days]\n  label: {field: event.is_phishing}"
    )

    assert spec.all_event_fields
    assert [f.name for f in spec.features] == ["tenure_days"]
    assert isinstance(spec.label, FieldLabel)


def test_fingerprint_changes_with_the_pipeline_but_not_the_description() -> None:
    base = "- name: a\n  kind: anomaly\n  features: [event.x]\n  pipeline: {}\n  description: {}"
    [a] = parse_models(base.format("HalfSpaceTrees(seed=1)", "one"))
    [b] = parse_models(base.format("HalfSpaceTrees( seed = 1 )", "two"))
    [c] = parse_models(base.format("HalfSpaceTrees(seed=2)", "one"))

    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_fingerprints_are_the_same_in_every_process() -> None:
    """A restarted worker must recognise the model snapshots its predecessor
    wrote: the shipped models (device-type sets among their filters) get the
    same fingerprints under any string-hash salt. They did not, so every
    restart threw the device models away and learned anew (the chaos
    suite's kills and rolling restarts shifted maintenance bookings)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    program = (
        "from engine.models.spec import load_specs;"
        "print([s.fingerprint for s in load_specs('models/models.yaml')])"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", program],
            cwd=repo,
            env=os.environ | {"PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (0, 1, 2, 3)
    }
    assert len(seen) == 1, seen


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("4s", 4.0), ("10m", 600.0), ("2h", 7200.0), ("30d", 2592000.0), (90, 90.0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert positive_duration(value) == seconds


@pytest.mark.parametrize("value", ["0s", "-1d", "1w", True, "d"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        positive_duration(value)
