"""From (event, customer, device) to the feature dict a River model sees.

Only finite numbers become features: ints and floats pass unchanged (so a
replay gives bit-identical results), booleans become 0.0/1.0, and anything
else (strings, ``None``, NaN, infinity, nested objects) is left out, as is a
missing field: River models take sparse dicts, so a missing reading never
stops a prediction.

>>> from engine.models.spec import parse_field
>>> extract = FeatureExtractor(
...     features=[("usage", parse_field("customer.usage_today_min"))],
...     all_event_fields=True,
...     exclude_event_fields=("is_phishing",),
... )
>>> event = {"id": "e1", "ts": 10.0, "kind": "usage", "https": 1.0, "is_phishing": True,
...          "note": "text", "popup": False}
>>> extract(event, {"usage_today_min": 42}, {})
{'https': 1.0, 'popup': 0.0, 'usage': 42}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.models.spec import ENVELOPE_FIELDS, FieldLabel, FieldPath, ModelSpec

_SOURCE_INDEX = {"event": 0, "customer": 1, "device": 2}


def numeric(value: Any) -> float | int | None:
    """The value as a feature, or ``None`` when it cannot be one."""
    kind = type(value)
    if kind is float:
        # inf - inf and nan - nan are nan, which is != 0.0
        return value if value - value == 0.0 else None
    if kind is int:
        return value
    if kind is bool:
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        converted = float(value)
        return converted if converted - converted == 0.0 else None
    return None


def lookup(sources: tuple[Mapping[str, Any], ...], field: FieldPath) -> Any:
    """The value at ``field`` in (event, customer, device), or ``None``."""
    value: Any = sources[_SOURCE_INDEX[field.source]]
    for key in field.path:
        if type(value) is not dict and not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


class FeatureExtractor:
    """Callable ``(event, customer, device) -> dict`` for one model."""

    def __init__(
        self,
        features: Iterable[tuple[str, FieldPath]],
        *,
        all_event_fields: bool = False,
        exclude_event_fields: Iterable[str] = (),
    ) -> None:
        # (name, source index, first key, the keys below it): most paths have one key
        self._features = [
            (name, _SOURCE_INDEX[field.source], field.path[0], field.path[1:])
            for name, field in features
        ]
        self._all_event_fields = all_event_fields
        self._exclude = ENVELOPE_FIELDS | frozenset(exclude_event_fields)

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> FeatureExtractor:
        exclude: tuple[str, ...] = ()
        label = spec.label
        if isinstance(label, FieldLabel) and label.field.source == "event":
            exclude = (label.field.path[0],)
        return cls(
            [(feature.name, feature.field) for feature in spec.features],
            all_event_fields=spec.all_event_fields,
            exclude_event_fields=exclude,
        )

    def __call__(
        self, event: Mapping[str, Any], customer: Mapping[str, Any], device: Mapping[str, Any]
    ) -> dict[str, float | int]:
        x: dict[str, float | int] = {}
        if self._all_event_fields:
            exclude = self._exclude
            for key, raw in event.items():
                if key in exclude:
                    continue
                value = numeric(raw)
                if value is not None:
                    x[key] = value
        sources = (event, customer, device)
        for name, index, first, rest in self._features:
            raw = sources[index].get(first)
            if rest:
                for key in rest:
                    if type(raw) is not dict and not isinstance(raw, Mapping):
                        raw = None
                        break
                    raw = raw.get(key)
            kind = type(raw)
            if kind is float:
                if raw - raw == 0.0:  # finite
                    x[name] = raw
            elif kind is int:
                x[name] = raw
            elif raw is not None:
                value = numeric(raw)
                if value is not None:
                    x[name] = value
        return x
