"""One declared model at run time: its instances per scope, metrics, pending labels.

The order for every event is River's prequential order: predict, update the
metrics if the label is known, then learn. A delayed (outcome) label keeps
the prediction's features and answer, per join key the latest only, until the
outcome arrives or the horizon passes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from river import metrics as river_metrics

from engine.models.features import FeatureExtractor, lookup, numeric
from engine.models.pipeline import upgraded
from engine.models.spec import AppliesTo, FieldLabel, ModelSpec, OutcomeLabel

#: Counters reported only by models with an outcome label.
_OUTCOME_COUNTS = frozenset({"outcomes_matched", "pending_dropped"})

#: Scope key of a ``scope: global`` model.
GLOBAL_SCOPE = "*"

#: Where a field's source sits in (event, customer, device).
_SOURCES = ("event", "customer", "device")


class Pending(NamedTuple):
    """A prediction waiting for its outcome."""

    ts: float | None
    scope_key: str
    x: dict[str, float | int]
    y_pred: Any  # binary: (label, p); regression: float


#: Pending(...) without NamedTuple's Python-level __new__: the same tuple subclass.
_pending = tuple.__new__


def _new_metrics(kind: str) -> dict[str, river_metrics.base.Metric]:
    if kind == "binary":
        return {"Accuracy": river_metrics.Accuracy(), "ROCAUC": river_metrics.ROCAUC()}
    if kind == "regression":
        return {"MAE": river_metrics.MAE(), "RMSE": river_metrics.RMSE()}
    return {"ROCAUC": river_metrics.ROCAUC()}


def _binary_label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    number = numeric(value)
    return None if number is None else number != 0


class OnlineModel:
    """The live state of one :class:`ModelSpec`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        # the bound method: calling the extractor object itself costs a slot lookup more
        self._extract = FeatureExtractor.for_spec(spec).__call__
        self._field_label = spec.label.field if isinstance(spec.label, FieldLabel) else None
        self._outcome = spec.label if isinstance(spec.label, OutcomeLabel) else None
        self._applies_to_all = spec.applies_to == AppliesTo()
        # The declaration, unpacked once: process() runs for every event.
        self._kind = spec.kind
        self._scope = spec.scope
        self._name = spec.name
        self._fingerprint = spec.fingerprint
        rule = spec.applies_to
        self._kinds, self._device_types, self._segments = (
            rule.kinds,
            rule.device_types,
            rule.segments,
        )
        self._require = tuple((_SOURCES.index(f.source), f.path) for f in rule.require)
        label = self._field_label
        self._label_at = None if label is None else (_SOURCES.index(label.source), label.path)
        self.reset()

    def reset(self) -> None:
        """Forget everything learned."""
        self.instances: dict[str, Any] = {}
        self.metrics: dict[str, river_metrics.base.Metric] = _new_metrics(self.spec.kind)
        self.counts: dict[str, int] = {
            "n": 0,
            "n_labelled": 0,
            "errors": 0,
            "outcomes_matched": 0,
            "pending_dropped": 0,
        }
        # join key -> latest prediction (join: customer/device; join: action by action id)
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        # join: action only: customer id -> latest prediction, until an action binds it
        self.candidates: OrderedDict[str, Pending] = OrderedDict()
        # stream time before which nothing pending can expire (-inf: look)
        self._next_expiry = -math.inf

    # state for snapshots ---------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "metrics": self.metrics,
            "counts": self.counts,
            "pending": self.pending,
            "candidates": self.candidates,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.instances = {key: upgraded(model) for key, model in state["instances"].items()}
        self.metrics = state["metrics"]
        self.counts = state["counts"]
        self.pending = state["pending"]
        self.candidates = state["candidates"]
        self._next_expiry = -math.inf

    # events -----------------------------------------------------------------------

    def scope_key(
        self, event: Mapping[str, Any], customer: Mapping[str, Any], device: Mapping[str, Any]
    ) -> Any:
        scope = self.spec.scope
        if scope == "global":
            return GLOBAL_SCOPE
        if scope == "device_type":
            return event.get("device_type") or device.get("device_type")
        if scope == "device":
            return event.get("device_id")
        return customer.get("segment")

    def applies(
        self, event: Mapping[str, Any], customer: Mapping[str, Any], device: Mapping[str, Any]
    ) -> bool:
        rule = self.spec.applies_to
        if self._applies_to_all:
            return True
        if rule.kinds is not None and event.get("kind") not in rule.kinds:
            return False
        if rule.device_types is not None and (
            (event.get("device_type") or device.get("device_type")) not in rule.device_types
        ):
            return False
        if rule.segments is not None and customer.get("segment") not in rule.segments:
            return False
        if not rule.require:
            return True
        sources = (event, customer, device)
        return all(lookup(sources, field) is not None for field in rule.require)

    def _applies(
        self, event: Mapping[str, Any], customer: Mapping[str, Any], device: Mapping[str, Any]
    ) -> bool:
        """``applies``, with the declaration unpacked (the hot path)."""
        kinds = self._kinds
        if kinds is not None and event.get("kind") not in kinds:
            return False
        device_types = self._device_types
        if device_types is not None and (
            (event.get("device_type") or device.get("device_type")) not in device_types
        ):
            return False
        segments = self._segments
        if segments is not None and customer.get("segment") not in segments:
            return False
        if self._require:
            sources = (event, customer, device)
            for index, path in self._require:
                value: Any = sources[index]
                for key in path:
                    # a dict first: the ABC check of isinstance(..., Mapping) is slow
                    if type(value) is not dict and not isinstance(value, Mapping):
                        return False
                    value = value.get(key)
                if value is None:
                    return False
        return True

    def process(
        self,
        event: Mapping[str, Any],
        customer: Mapping[str, Any],
        device: Mapping[str, Any],
        ts: float | None,
        device_models: dict[str, Any] | None = None,
    ) -> float | None:
        """Predict, then learn what can be learned now; the score or ``None``.

        ``device_models`` is where the event's device keeps its own models
        (``scope: device``; its state in a worker); without it they are kept
        here, by device id."""
        if not self._applies_to_all and not self._applies(event, customer, device):
            return None
        scope = self._scope
        scope_key: Any
        if scope == "global":
            scope_key = GLOBAL_SCOPE
        else:
            if scope == "device_type":
                scope_key = event.get("device_type") or device.get("device_type")
            elif scope == "device":
                scope_key = event.get("device_id")
            else:
                scope_key = customer.get("segment")
            if not isinstance(scope_key, str) or not scope_key:
                return None
        x = self._extract(event, customer, device)
        if not x:
            return None
        if scope == "device" and device_models is not None:
            model = self._device_model(device_models)
        else:
            model = self.instances.get(scope_key)
            if model is None:
                model = self.instances[scope_key] = self.spec.pipeline.build()
        kind = self._kind
        score: float | None
        if kind == "binary":
            proba = model.predict_proba_one(x)
            if proba:
                p_true = proba.get(True, 0.0)
                # the most probable class, the first of equals: max(proba, key=proba.get)
                # without its keyword parsing
                classes = iter(proba.items())
                label, best = next(classes)
                for other, p in classes:
                    if p > best:
                        label, best = other, p
                y_pred: Any = (label, p_true)
                score = float(p_true)
            else:
                y_pred = score = None
        elif kind == "regression":
            prediction = model.predict_one(x)
            y_pred = score = None if prediction is None else float(prediction)
        else:
            y_pred = score = float(model.score_one(x))
        if score is not None:
            self.counts["n"] += 1

        if kind == "anomaly":
            y = self._field_label_value(event, customer, device)
            if y is not None:
                self._update_metrics(y, y_pred)
            model.learn_one(x)
        elif self._field_label is not None:
            y = self._field_label_value(event, customer, device)
            if y is not None:
                self._update_metrics(y, y_pred)
                model.learn_one(x, y)
        elif self._outcome is not None:
            self._remember(event, customer, device, _pending(Pending, (ts, scope_key, x, y_pred)))
        return score

    def _device_model(self, device_models: dict[str, Any]) -> Any:
        """This model's instance among a device's, as ``[fingerprint, model]``:
        one learned under another declaration starts over."""
        held = device_models.get(self._name)
        if held is not None and held[0] == self._fingerprint and held[1] is not None:
            return held[1]
        model = self.spec.pipeline.build()
        device_models[self._name] = [self._fingerprint, model]
        return model

    def _field_label_value(
        self, event: Mapping[str, Any], customer: Mapping[str, Any], device: Mapping[str, Any]
    ) -> Any:
        if self._label_at is None:
            return None
        index, path = self._label_at
        raw: Any = (event, customer, device)[index]
        for key in path:
            if type(raw) is not dict and not isinstance(raw, Mapping):
                raw = None
                break
            raw = raw.get(key)
        if raw is None:
            return None
        return numeric(raw) if self._kind == "regression" else _binary_label(raw)

    def _update_metrics(self, y: Any, y_pred: Any) -> None:
        if y_pred is None:
            return
        self.counts["n_labelled"] += 1
        kind = self.spec.kind
        if kind == "binary":
            label, p_true = y_pred
            self.metrics["Accuracy"].update(y, label)
            self.metrics["ROCAUC"].update(y, p_true)
        elif kind == "regression":
            self.metrics["MAE"].update(y, y_pred)
            self.metrics["RMSE"].update(y, y_pred)
        else:
            self.metrics["ROCAUC"].update(y, y_pred)

    # delayed labels ----------------------------------------------------------------

    def _remember(
        self,
        event: Mapping[str, Any],
        customer: Mapping[str, Any],
        device: Mapping[str, Any],
        pending: Pending,
    ) -> None:
        outcome = self._outcome
        assert outcome is not None
        join = outcome.join
        if join == "device":
            key = event.get("device_id")
            store = self.pending
        else:
            key = event.get("customer_id") or customer.get("customer_id")
            store = self.pending if join == "customer" else self.candidates
        if not isinstance(key, str) or not key:
            return
        store[key] = pending
        store.move_to_end(key)
        if pending.ts is not None:
            expiry = pending.ts + outcome.horizon_s
            if expiry < self._next_expiry:
                self._next_expiry = expiry
        if len(store) > outcome.max_pending:
            while len(store) > outcome.max_pending:
                store.popitem(last=False)
                self.counts["pending_dropped"] += 1

    def forget(self, keys: Collection[str]) -> int:
        """Drop the pending predictions joined by any of ``keys`` (a customer's
        id, its devices' and its actions' ids); returns how many."""
        if self._scope == "device":  # models kept here rather than in device states
            for key in keys:
                self.instances.pop(key, None)
        dropped = 0
        for store in (self.pending, self.candidates):
            for key in [key for key in keys if key in store]:
                del store[key]
                dropped += 1
        return dropped

    def bind_action(self, action_id: str, customer_id: str) -> None:
        """Let an outcome about ``action_id`` answer the customer's latest prediction."""
        if self._outcome is None or self._outcome.join != "action":
            return
        candidate = self.candidates.get(customer_id)
        if candidate is None:
            return
        self.pending[action_id] = candidate
        self.pending.move_to_end(action_id)
        while len(self.pending) > self._outcome.max_pending:
            self.pending.popitem(last=False)
            self.counts["pending_dropped"] += 1

    def observe_outcome(self, outcome: Mapping[str, Any], ts: float | None) -> bool:
        """Learn from an outcome that answers a pending prediction; True if it did."""
        label = self._outcome
        if label is None:
            return False
        outcome_type = outcome.get("type")
        if outcome_type not in label.types:
            return False
        key = outcome.get(label.join_field)
        if not isinstance(key, str):
            return False
        pending = self.pending.get(key)
        if pending is None:
            return False
        if ts is not None and pending.ts is not None:
            if ts < pending.ts:
                return False  # answers an older prediction that was replaced
            if ts - pending.ts > label.horizon_s:
                del self.pending[key]
                self.counts["pending_dropped"] += 1
                return False
        if self.spec.kind == "binary":
            y: Any = outcome_type in label.positive
        else:
            y = numeric(outcome.get("value"))
            if y is None:
                return False
        del self.pending[key]
        self.counts["outcomes_matched"] += 1
        self._update_metrics(y, pending.y_pred)
        model = self.instances.get(pending.scope_key)
        if model is None:  # its instance was never snapshotted with it; start one
            model = self.instances[pending.scope_key] = self.spec.pipeline.build()
        model.learn_one(pending.x, y)
        return True

    def expire(self, now: float) -> None:
        """Drop pending predictions older than the horizon at stream time ``now``."""
        if now <= self._next_expiry:
            return
        horizon = self._outcome.horizon_s if self._outcome is not None else math.inf
        next_expiry = math.inf
        for store, counted in ((self.pending, True), (self.candidates, False)):
            while store:
                oldest = next(iter(store.values()))
                if oldest.ts is None:
                    break
                if now - oldest.ts <= horizon:
                    next_expiry = min(next_expiry, oldest.ts + horizon)
                    break
                store.popitem(last=False)
                if counted:
                    self.counts["pending_dropped"] += 1
        self._next_expiry = next_expiry

    # reporting --------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        labelled = self.counts["n_labelled"]
        report: dict[str, Any] = {"kind": self.spec.kind}
        for name, count in self.counts.items():
            if self._outcome is not None or name not in _OUTCOME_COUNTS:
                report[name] = count
        for name, metric in self.metrics.items():
            report[name] = float(metric.get()) if labelled else None
        report["instances"] = len(self.instances)
        if self._outcome is not None:
            report["pending"] = len(self.pending)
        return report
