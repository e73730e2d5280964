"""Ground truth of a simulation: which actions must follow, for whom, by when.

The truth is a JSON document (see docs/simulator.md for every field). It is
built while the simulator generates events, because some exact times (the
first high vibration sample, the last message before a device fell silent)
are only known then.

>>> from loadtest.fleet import build_fleet
>>> fleet = build_fleet(customers=1, devices_per_customer=1, seed=1, start_ts=0,
...                     marketing_consent_share=1.0)
>>> builder = TruthBuilder(fleet, due_slack_s=300)
>>> builder.expect("depletion", "c-0001", "d-00001", start_at=100.0, expected_at=100.0)
>>> builder.expected[0]["type"], builder.expected[0]["due_by"]
('coupon', 400.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loadtest.fleet import Fleet

TRUTH_VERSION = 1

ACTION_TYPES: tuple[str, ...] = ("coupon", "maintenance_booking", "retention_offer", "support_case")


@dataclass(frozen=True, slots=True)
class EpisodeRule:
    """The action an episode calls for, the shipped rule expected to take it,
    and the consent that action needs."""

    action_type: str
    rule: str
    consent: str | None


#: Episode kind -> expected action. Rule ids are those of the shipped rules in ``rules/``.
EPISODE_RULES: dict[str, EpisodeRule] = {
    "degrading": EpisodeRule("maintenance_booking", "maintenance-vibration", "service"),
    "depletion": EpisodeRule("coupon", "coupon-detergent-low", "marketing"),
    "usage_fade": EpisodeRule("retention_offer", "retention-usage-drop", "marketing"),
    "error_burst": EpisodeRule("support_case", "support-error-burst", None),
    "error_reboot": EpisodeRule("support_case", "support-error-then-reboot", None),
    "silence": EpisodeRule("support_case", "support-device-silent", None),
}

#: Malformed event kind -> the dead-letter ``reason_code`` ingest should give it.
MALFORMED_REASON: dict[str, str] = {
    "bad_json": "decode",
    "missing_field": "schema",
    "nan": "value",  # a bare NaN is not strict JSON, but ingest decodes it and refuses the value
    "out_of_range": "value",
    "unknown_unit": "unit",
    "unknown_device": "unregistered",
}

#: Which keys could get each action type at all (for the negatives count).
_ELIGIBLE_TYPES: dict[str, tuple[str, ...]] = {
    "maintenance_booking": ("washer", "compressor"),
    "coupon": ("washer",),
    "support_case": ("washer", "vehicle", "wearable", "compressor"),
}


class TruthBuilder:
    """Collects expected actions, consent-suppressed ones, and churn outcomes."""

    def __init__(self, fleet: Fleet, *, due_slack_s: float) -> None:
        self.fleet = fleet
        self.due_slack_s = due_slack_s
        self.expected: list[dict[str, Any]] = []
        self.suppressed: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        #: Episodes that were planned but did not fit into the simulated span.
        self.skipped: dict[str, int] = {}

    def skip(self, episode: str, count: int = 1) -> None:
        self.skipped[episode] = self.skipped.get(episode, 0) + count

    def expect(
        self,
        episode: str,
        customer_id: str,
        device_id: str | None,
        *,
        start_at: float,
        expected_at: float,
        due_by: float | None = None,
        **details: Any,
    ) -> None:
        """Record that ``episode`` calls for its action; it goes to the
        suppressed list instead when the customer lacks the needed consent.

        ``due_by`` defaults to ``expected_at`` plus the slack. ``details`` may
        carry ``failure_at`` / ``churn_at`` (used for lead times) and anything
        that helps a reader (thresholds crossed, counts).
        """
        rule = EPISODE_RULES[episode]
        entry: dict[str, Any] = {
            "type": rule.action_type,
            "customer_id": customer_id,
            "device_id": device_id,
            "rule": rule.rule,
            "episode": episode,
            "start_at": start_at,
            "expected_at": expected_at,
            "due_by": round((expected_at if due_by is None else due_by) + self.due_slack_s, 3),
            **details,
        }
        if self.fleet.customer(customer_id).has_consent(rule.consent):
            self.expected.append(entry)
        else:
            entry["reason"] = f"no {rule.consent} consent"
            self.suppressed.append(entry)

    def churn_outcome(self, customer_id: str, ts: float) -> None:
        self.outcomes.append(
            {
                "outcome_id": f"churn-{customer_id}",
                "type": "customer_churned",
                "customer_id": customer_id,
                "ts": ts,
            }
        )

    def build(
        self,
        *,
        params: Mapping[str, Any],
        window: Mapping[str, float],
        counts: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The truth document (plain JSON types, deterministic order)."""

        def order(entry: Mapping[str, Any]) -> tuple[float, str, str]:
            return (entry["expected_at"], entry["customer_id"], entry["device_id"] or "")

        return {
            "truth_version": TRUTH_VERSION,
            "seed": params["seed"],
            "params": dict(params),
            "window": dict(window),
            "episode_rules": {
                kind: {"type": r.action_type, "rule": r.rule, "consent": r.consent}
                for kind, r in EPISODE_RULES.items()
            },
            "expected_actions": sorted(self.expected, key=order),
            "suppressed": sorted(self.suppressed, key=order),
            "skipped_episodes": dict(sorted(self.skipped.items())),
            "negatives": self._negatives(),
            "outcomes": sorted(self.outcomes, key=lambda o: (o["ts"], o["customer_id"])),
            "counts": dict(counts),
            "consent": {
                "without_marketing": [
                    c.customer_id for c in self.fleet.customers if not c.marketing_consent
                ],
                "without_service": [
                    c.customer_id for c in self.fleet.customers if not c.service_consent
                ],
            },
            "devices": {d.device_id: d.customer_id for d in self.fleet.devices},
        }

    def _negatives(self) -> dict[str, dict[str, Any]]:
        """Per action type, how many keys had no episode calling for it: any
        action for them is a false positive."""
        touched: dict[str, set[str]] = {t: set() for t in ACTION_TYPES}
        for entry in (*self.expected, *self.suppressed):
            touched[entry["type"]].add(entry["device_id"] or entry["customer_id"])
        negatives: dict[str, dict[str, Any]] = {}
        for action_type, device_types in _ELIGIBLE_TYPES.items():
            keys = {d.device_id for d in self.fleet.devices if d.device_type in device_types}
            negatives[action_type] = {"key": "device", "count": len(keys - touched[action_type])}
        owners = {d.customer_id for d in self.fleet.devices if d.device_type == "wearable"}
        negatives["retention_offer"] = {
            "key": "customer",
            "count": len(owners - touched["retention_offer"]),
        }
        return dict(sorted(negatives.items()))


def dump_truth(truth: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(truth, option=orjson.OPT_INDENT_2) + b"\n")


def load_truth(path: str | Path) -> dict[str, Any]:
    truth = orjson.loads(Path(path).read_bytes())
    if not isinstance(truth, dict) or truth.get("truth_version") != TRUTH_VERSION:
        raise ValueError(f"{path}: not a version {TRUTH_VERSION} simulator truth file")
    return truth
