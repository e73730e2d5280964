"""The model layer's one entry point: a set of declared models and their state.

The live customer actor and ``iotcrm models backtest`` both call exactly
these methods. A ModelSet holds no locks and no I/O; keep one per worker
partition and checkpoint it with :meth:`ModelSet.snapshot`.

>>> from engine.models.spec import parse_models
>>> models = ModelSet(parse_models('''
... - name: phishing
...   kind: binary
...   pipeline: StandardScaler | LogisticRegression
...   features: [event.*]
...   label: {field: event.is_phishing}
... '''))
>>> models.process({"id": "e1", "ts": 1.0, "https": 1.0, "is_phishing": True},
...                customer={}, device={})
{'phishing': 0.5}
>>> models.metrics()["phishing"]["n"]
1
>>> clone = ModelSet(models.specs)
>>> clone.restore(models.snapshot())
['phishing']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.models import snapshot as snapshot_format
from engine.models.errors import ModelConfigError
from engine.models.runtime import OnlineModel
from engine.models.spec import ModelSpec, OutcomeLabel, load_specs

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = {}


def event_time(value: Any) -> float | None:
    """Epoch seconds from a number or an RFC 3339 string; ``None`` if neither.

    >>> event_time(12), event_time("1970-01-01T00:01:00Z"), event_time("soon")
    (12.0, 60.0, None)
    """
    if type(value) is float:
        return value if value - value == 0.0 else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return None


class ModelSet:
    """Declared models, predicting then learning on every event they apply to."""

    def __init__(self, specs: Sequence[ModelSpec]) -> None:
        self._models = [OnlineModel(spec) for spec in specs]
        self._named = [(model, model.spec.name) for model in self._models]
        self._by_name = {model.spec.name: model for model in self._models}
        self._by_outcome: dict[str, list[OnlineModel]] = {}
        for model in self._models:
            label = model.spec.label
            if isinstance(label, OutcomeLabel):
                for outcome_type in label.types:
                    self._by_outcome.setdefault(outcome_type, []).append(model)
        self._delayed = [m for m in self._models if isinstance(m.spec.label, OutcomeLabel)]
        self._actions = [m for m in self._delayed if m.spec.label.join == "action"]  # type: ignore[union-attr]
        self.stream_time: float | None = None

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return tuple(model.spec for model in self._models)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def per_device(self) -> bool:
        """Whether a model has ``scope: device`` (see ``process``'s ``device_models``)."""
        return any(model.spec.scope == "device" for model in self._models)

    # the hot path -------------------------------------------------------------------

    def process(
        self,
        event: Mapping[str, Any],
        *,
        customer: Mapping[str, Any] = _EMPTY,
        device: Mapping[str, Any] = _EMPTY,
        device_models: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Score ``event`` with every model it applies to, then learn from it.

        Returns ``{model name: score}`` for the rules' ``score`` namespace; a
        model that does not apply, or cannot predict yet, has no entry.
        ``device_models`` holds the ``scope: device`` models of the event's
        device (a worker keeps it in the device's state, so they move, are
        checkpointed and erased with it); without it this set keeps them.
        """
        raw_ts = event.get("ts")
        # event_time's first case, inlined: a finite float
        ts = raw_ts if type(raw_ts) is float and raw_ts - raw_ts == 0.0 else event_time(raw_ts)
        if ts is not None and (self.stream_time is None or ts > self.stream_time):
            self._advance(ts)
        elif ts is None:
            ts = self.stream_time
        scores: dict[str, float] = {}
        for model, name in self._named:
            try:
                score = model.process(event, customer, device, ts, device_models)
            except Exception:
                self._failed(model, "event", event.get("id"))
                continue
            if score is not None:
                scores[name] = score
        return scores

    def observe_outcome(self, outcome: Mapping[str, Any]) -> None:
        """Learn from a delayed outcome (see docs/models.md for its shape)."""
        ts = event_time(outcome.get("ts"))
        self._advance(ts)
        for model in self._by_outcome.get(outcome.get("type"), ()):  # type: ignore[arg-type]
            try:
                model.observe_outcome(outcome, ts)
            except Exception:
                self._failed(model, "outcome", outcome.get("outcome_id"))

    def forget(self, keys: Collection[str]) -> int:
        """Drop every model's pending predictions joined by any of ``keys``
        (a GDPR erasure); returns how many. A worker's ``scope: device``
        models live in the device states and go with them; what the wider
        scopes learned is not per customer."""
        return sum(model.forget(keys) for model in self._models)

    def bind_action(self, action_id: str, *, customer_id: str) -> None:
        """Tell ``join: action`` models that ``action_id`` was taken on the
        customer's latest prediction, so its outcome can answer it."""
        for model in self._actions:
            model.bind_action(action_id, customer_id)

    def _advance(self, ts: float | None) -> None:
        if ts is None or (self.stream_time is not None and ts <= self.stream_time):
            return
        self.stream_time = ts
        for model in self._delayed:
            if ts > model._next_expiry:  # expire()'s own first test, without the call
                model.expire(ts)

    def _failed(self, model: OnlineModel, what: str, ident: Any) -> None:
        # One bad input must not stop a partition; count it, and log sparingly.
        model.counts["errors"] += 1
        errors = model.counts["errors"]
        if errors & (errors - 1) == 0:
            log.exception(
                "model %s failed on %s %r (%d errors)", model.spec.name, what, ident, errors
            )

    # reporting and checkpoints ---------------------------------------------------------

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Live prequential metrics: ``{name: {"n": .., "Accuracy": .., ...}}``."""
        return {model.spec.name: model.report() for model in self._models}

    def snapshot(self) -> bytes:
        """All learned state, versioned; see :meth:`restore`."""
        return snapshot_format.dumps(
            {
                "stream_time": self.stream_time,
                "models": {
                    model.spec.name: {"fingerprint": model.spec.fingerprint, "state": model.state()}
                    for model in self._models
                },
            }
        )

    def restore(self, blob: bytes) -> list[str]:
        """Load a snapshot; returns the models restored.

        A model restores only if its declaration is unchanged since the
        snapshot (same fingerprint); a new or changed model starts fresh.
        """
        data = snapshot_format.loads(blob)
        saved = data.get("models", {})
        restored: list[str] = []
        for model in self._models:
            entry = saved.get(model.spec.name)
            if entry is not None and entry.get("fingerprint") == model.spec.fingerprint:
                model.load_state(entry["state"])
                restored.append(model.spec.name)
            else:
                model.reset()
        self.stream_time = data.get("stream_time")
        return restored


def load_models(path: str | Path, *, only: Collection[str] | None = None) -> ModelSet:
    """The models declared in ``path`` (YAML); raises :class:`ModelConfigError`.

    ``only`` keeps the named models (an unknown name is an error).
    """
    specs = load_specs(path)
    if only is not None:
        names = {spec.name for spec in specs}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ModelConfigError(
                f"no model named {', '.join(unknown)} (declared: {', '.join(sorted(names))})",
                file=str(path),
            )
        specs = [spec for spec in specs if spec.name in only]
    return ModelSet(specs)
