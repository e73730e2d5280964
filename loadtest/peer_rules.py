"""The shipped rules (``rules/*.yaml``) written by hand in Python, for the
benchmark's peer application: what a team without a rule engine would code.

Each function below is one rule's logic with the semantics of
``engine.rules`` (docs/rules.md): timers due at T fire before an event
stamped T, cooldowns per rule and key, consent, the ``maintenance`` group
where the higher-priority rule wins, and action ids from the same stable hash
of (rule, version, key, event ids, bounds), so the peer and the engine emit
the same ``action_id`` for the same firing (the unit tests hold them to it).

State is plain data (one dict per customer, msgpack-friendly)::

    {"d": {device_id: device rules state}, "c": customer rules state}

>>> rules = HandRules()
>>> state = rules.new_state()
>>> customer = {"customer_id": "c1", "tier": "gold", "consent": {"marketing": True}}
>>> event = {"id": "e1", "ts": 3600.0, "device_id": "w1", "customer_id": "c1",
...          "device_type": "washer", "kind": "consumable", "level": 14.2}
>>> [firing["rule"] for firing in rules.process(state, event, customer, {}, {})]
['coupon-detergent-low']
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

from engine.rules import action_id

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
#: Event ids kept as evidence (the first and the most recent), as the engine keeps.
MAX_EVIDENCE_IDS = 100

Firing = dict[str, Any]

# Rule ids, versions and evaluation order (priority first, then file order).
COUPON = "coupon-detergent-low"
VIBRATION = "maintenance-vibration"
BURST = "support-error-burst"
ANOMALY = "maintenance-anomaly"
RETENTION = "retention-usage-drop"
SILENT = "support-device-silent"
REBOOT = "support-error-then-reboot"
ORDER = {
    rule: rank
    for rank, rule in enumerate((COUPON, VIBRATION, BURST, ANOMALY, RETENTION, SILENT, REBOOT))
}
VERSION = {**dict.fromkeys(ORDER, 1), VIBRATION: 2, ANOMALY: 2}
ACTION_TYPE = {
    COUPON: "coupon",
    VIBRATION: "maintenance_booking",
    ANOMALY: "maintenance_booking",
    RETENTION: "retention_offer",
    BURST: "support_case",
    SILENT: "support_case",
    REBOOT: "support_case",
}
COOLDOWN = {
    COUPON: 7 * DAY,
    VIBRATION: DAY,
    ANOMALY: DAY,
    RETENTION: 14 * DAY,
    BURST: HOUR,
    SILENT: HOUR,
    REBOOT: HOUR,
}
CONSENT = {COUPON: "marketing", VIBRATION: "service", ANOMALY: "service", RETENTION: "marketing"}
GROUP = {COUPON: "detergent-coupon", VIBRATION: "maintenance", ANOMALY: "maintenance"}

VIBRATION_LIMIT_G = 0.8
VIBRATION_FOR_S = 10 * MINUTE
ANOMALY_LIMIT = 0.8
#: The anomaly score needs vibration beyond normal operation to corroborate it.
ANOMALY_VIBRATION_G = 0.6
ANOMALY_FOR_S = 15 * MINUTE
#: No second maintenance booking for a device within a day, whichever rule booked it.
REBOOK_AFTER_S = DAY
ANOMALY_TYPES = ("washer", "compressor")
DETERGENT_LOW_PCT = 15
BURST_WINDOW_S = 10 * MINUTE
BURST_ERRORS = 3
SILENCE_S = 2 * HOUR
REBOOT_WITHIN_S = 5 * MINUTE
RETENTION_GRACE_S = 15 * MINUTE
RETENTION_SHARE = 0.4
CHURN_LIMIT = 0.7


def _append_id(ids: list[Any], event_id: Any) -> None:
    ids.append(event_id)
    if len(ids) > MAX_EVIDENCE_IDS:
        del ids[1]


def _evidence_ids(ids: list[Any]) -> list[Any]:
    if len(ids) <= MAX_EVIDENCE_IDS:
        return list(ids)
    return [ids[0], *ids[len(ids) - MAX_EVIDENCE_IDS + 1 :]]


def _above(value: Any, limit: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > limit


def _below(value: Any, limit: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < limit


def _round(value: Any, digits: int | None = None) -> Any:
    if not isinstance(value, int | float):
        return None
    return round(value, digits) if digits is not None else round(value)


class _Match:
    """A rule that fired, before cooldown, consent and group are applied."""

    __slots__ = (
        "at",
        "bounds",
        "device_id",
        "evidence",
        "ids",
        "key",
        "key_kind",
        "keys",
        "payload",
        "rule",
    )

    def __init__(
        self,
        rule: str,
        keys: dict[str, Any],
        key_kind: str,
        key: str,
        at: float,
        ids: list[Any],
        bounds: list[float] | None,
        payload: dict[str, Any],
        evidence: dict[str, Any],
        device_id: str | None,
    ) -> None:
        self.rule = rule
        self.keys = keys
        self.key_kind = key_kind
        self.key = key
        self.at = at
        self.ids = ids
        self.bounds = bounds
        self.payload = payload
        self.evidence = evidence
        self.device_id = device_id


def _device_state(ts: float) -> dict[str, Any]:
    # t: stream time; vib/ano: sustained runs; q/on: error-burst window;
    # sil: silence watchdog; seq: open error->reboot match; cd: cooldowns.
    return {"t": ts, "vib": None, "ano": None, "q": [], "on": 0, "sil": None, "seq": None, "cd": {}}


def _customer_state(ts: float | None) -> dict[str, Any]:
    # w: open daily windows [start, usage sum, reports, ids, context, churn].
    return {"t": ts, "w": [], "cd": {}}


class HandRules:
    """The seven shipped rules, hand-coded. ``process`` an event, ``advance``
    time for idle keys, ``next_due`` for the timer index; each returns or
    uses the emitted firings as dicts (rule, key, at, ids, action_id, ...);
    suppressed ones are only counted in ``suppressed``."""

    def __init__(self) -> None:
        self.suppressed = 0

    def new_state(self) -> dict[str, Any]:
        return {"d": {}, "c": _customer_state(None)}

    # events ---------------------------------------------------------------------------
    def process(
        self,
        state: dict[str, Any],
        event: Mapping[str, Any],
        customer: Mapping[str, Any],
        device: Mapping[str, Any],
        score: Mapping[str, Any],
    ) -> list[Firing]:
        ts = event["ts"]
        device_id = event["device_id"]
        ds = state["d"].get(device_id)
        if ds is None:
            ds = state["d"][device_id] = _device_state(ts)
        elif ts > ds["t"]:
            ds["t"] = ts
        cs = state["c"]
        # The customer's time: where every one of its devices has reached.
        reached = min(ds["t"] for ds in state["d"].values())
        if cs["t"] is None or reached > cs["t"]:
            cs["t"] = reached
        customer_id = event.get("customer_id") or customer.get("customer_id")
        firings: list[Firing] = []
        self._fire_timers(
            [("device", device_id, ds), ("customer", customer_id, cs)], ts, customer, firings
        )
        matches: list[_Match] = []
        kind = event.get("kind")
        device_type = event.get("device_type")
        if device_type == "washer" and _below(event.get("level"), DETERGENT_LOW_PCT):
            self._coupon(ds, device_id, event, customer, matches)
        last_booked = (device.get("last_action_at") or {}).get("maintenance_booking")
        rebookable = ts - (-1e12 if last_booked is None else last_booked) >= REBOOK_AFTER_S
        vibration = event.get("vibration")
        if kind == "telemetry":
            high = rebookable and _above(vibration, VIBRATION_LIMIT_G)
            self._sustain(VIBRATION, "vib", ds, event, high, VIBRATION_FOR_S, {})
        if kind == "error":
            self._burst(ds, device_id, event, ts, matches)
        if kind == "telemetry" and device_type in ANOMALY_TYPES:
            anomaly = score.get("anomaly")
            unusual = (
                rebookable
                and _above(anomaly, ANOMALY_LIMIT)
                and _above(vibration, ANOMALY_VIBRATION_G)
            )
            scores = {"anomaly": anomaly} if "anomaly" in score else {}
            self._sustain(ANOMALY, "ano", ds, event, unusual, ANOMALY_FOR_S, scores)
        if kind == "usage" and device_type == "wearable":
            self._retention_window(cs, event, ts, score)
        if kind == "telemetry":
            self._watch(ds, event, ts, score)
        self._sequence(ds, device_id, event, ts, matches)
        if matches:
            self._finish(matches, customer, firings)
        return firings

    def _coupon(
        self,
        ds: dict[str, Any],
        device_id: str,
        event: Mapping[str, Any],
        customer: Mapping[str, Any],
        matches: list[_Match],
    ) -> None:
        discount = 20 if customer.get("tier") == "gold" else 15
        level = event["level"]
        payload = {
            "sku": "detergent-refill",
            "discount_pct": discount,
            "valid_days": 14,
            "device_id": device_id,
            "level_pct": level,
            "message": (
                f"Your washer's detergent is at {round(level)}%: refill with {discount}% off"
            ),
        }
        matches.append(
            _Match(
                COUPON,
                ds,
                "device",
                device_id,
                event["ts"],
                [event.get("id")],
                None,
                payload,
                {"trigger": "condition"},
                device_id,
            )
        )

    def _sustain(
        self,
        rule: str,
        slot: str,
        ds: dict[str, Any],
        event: Mapping[str, Any],
        holds: bool,
        duration: float,
        scores: dict[str, Any],
    ) -> None:
        run = ds[slot]
        if not holds:
            ds[slot] = None
            return
        context = {
            "device_id": event["device_id"],
            "device_type": event.get("device_type"),
            "vibration": event.get("vibration"),
        }
        if run is None:
            ds[slot] = {
                "s": event["ts"],
                "due": event["ts"] + duration,
                "ids": [event.get("id")],
                "e": context,
                "sc": scores,
            }
        elif "f" not in run:
            _append_id(run["ids"], event.get("id"))
            run["e"] = context
            run["sc"] = scores

    def _burst(
        self,
        ds: dict[str, Any],
        device_id: str,
        event: Mapping[str, Any],
        ts: float,
        matches: list[_Match],
    ) -> None:
        now = ds["t"]
        low = now - BURST_WINDOW_S
        if ts <= low:
            return  # late for the window
        entries: list[list[Any]] = ds["q"]
        entry = [ts, event.get("id"), event.get("error_code")]
        if not entries or ts >= entries[-1][0]:
            entries.append(entry)
        else:
            bisect.insort(entries, entry, key=lambda e: e[0])
        expired = 0
        while expired < len(entries) and entries[expired][0] <= low:
            expired += 1
        if expired:
            del entries[:expired]
        if len(entries) < BURST_ERRORS:
            ds["on"] = 0
            return
        if ds["on"]:
            return
        ds["on"] = 1
        codes = [e[2] for e in entries if e[2] is not None]
        distinct = len(set(codes))
        last_code = codes[-1] if codes else None
        payload = {
            "reason": f"{len(entries)} errors in 10 min",
            "device_id": device_id,
            "last_error_code": last_code,
            "distinct_codes": distinct,
            "severity": "high" if distinct > 1 else "normal",
        }
        evidence = {
            "trigger": "window",
            "type": "sliding",
            "start": low,
            "end": now,
            "aggregates": {"errors": len(entries), "codes": distinct, "last_code": last_code},
        }
        matches.append(
            _Match(
                BURST,
                ds,
                "device",
                device_id,
                now,
                _evidence_ids([e[1] for e in entries]),
                [low, now],
                payload,
                evidence,
                device_id,
            )
        )

    def _retention_window(
        self, cs: dict[str, Any], event: Mapping[str, Any], ts: float, score: Mapping[str, Any]
    ) -> None:
        horizon = cs["t"] - RETENTION_GRACE_S
        start = math.floor(ts / DAY) * DAY
        if start + DAY <= horizon:
            return  # the day's window already closed
        windows: list[list[Any]] = cs["w"]
        index = bisect.bisect_left(windows, start, key=lambda w: w[0])
        if index == len(windows) or windows[index][0] != start:
            windows.insert(index, [start, 0.0, 0, 0, [], None, None])
        window = windows[index]
        usage = event.get("usage_min")
        if isinstance(usage, int | float) and not isinstance(usage, bool):
            window[1] += usage
            window[2] += 1
        window[3] += 1
        _append_id(window[4], event.get("id"))
        context = window[5]
        if context is None or ts >= context["ts"]:
            window[5] = {"ts": ts, "device_id": event.get("device_id")}
            window[6] = score.get("churn")

    def _watch(
        self, ds: dict[str, Any], event: Mapping[str, Any], ts: float, score: Mapping[str, Any]
    ) -> None:
        watch = ds["sil"]
        if watch is not None and ts < watch["last"]:
            return  # an older event does not move the watchdog back
        ds["sil"] = {
            "last": ts,
            "id": event.get("id"),
            "due": ts + SILENCE_S,
            "type": event.get("device_type"),
        }

    def _sequence(
        self,
        ds: dict[str, Any],
        device_id: str,
        event: Mapping[str, Any],
        ts: float,
        matches: list[_Match],
    ) -> None:
        open_match = ds["seq"]
        if open_match is not None and ts >= open_match["s"] + REBOOT_WITHIN_S:
            open_match = ds["seq"] = None
        if open_match is not None:
            if event.get("kind") == "status" and event.get("state") == "reboot":
                ds["seq"] = None
                payload = {
                    "reason": f"error {open_match['code']} followed by a reboot",
                    "device_id": device_id,
                    "error_code": open_match["code"],
                    "seconds_to_reboot": round(ts - open_match["s"]),
                }
                evidence = {
                    "trigger": "sequence",
                    "started_at": open_match["s"],
                    "steps": {"error": open_match["id"], "reboot": event.get("id")},
                }
                matches.append(
                    _Match(
                        REBOOT,
                        ds,
                        "device",
                        device_id,
                        ts,
                        [open_match["id"], event.get("id")],
                        None,
                        payload,
                        evidence,
                        device_id,
                    )
                )
            return
        if event.get("kind") == "error":
            ds["seq"] = {"s": ts, "id": event.get("id"), "code": event.get("error_code")}

    # time -----------------------------------------------------------------------------
    def advance(
        self, state: dict[str, Any], now: float, customer: Mapping[str, Any]
    ) -> list[Firing]:
        """Move every key of ``state`` to ``now`` and fire the timers due by then."""
        keys: list[tuple[str, str, dict[str, Any]]] = []
        for device_id, ds in state["d"].items():
            ds["t"] = max(ds["t"], now)
            keys.append(("device", device_id, ds))
        cs = state["c"]
        cs["t"] = now if cs["t"] is None else max(cs["t"], now)
        keys.append(("customer", customer.get("customer_id"), cs))
        firings: list[Firing] = []
        self._fire_timers(keys, now, customer, firings)
        return firings

    def next_due(self, state: dict[str, Any]) -> float | None:
        dues = [due for _rule, due in self._dues_of_devices(state)]
        windows = state["c"]["w"]
        if windows:
            dues.append(windows[0][0] + DAY + RETENTION_GRACE_S)
        return min(dues) if dues else None

    def _dues_of_devices(self, state: dict[str, Any]) -> list[tuple[str, float]]:
        dues = []
        for ds in state["d"].values():
            dues += [(rule, due) for rule, due, _k in self._device_dues(ds)]
        return dues

    @staticmethod
    def _device_dues(ds: dict[str, Any]) -> list[tuple[str, float, str]]:
        dues = []
        for rule, slot in ((VIBRATION, "vib"), (ANOMALY, "ano")):
            run = ds[slot]
            if run is not None and "f" not in run:
                dues.append((rule, run["due"], slot))
        if ds["sil"] is not None:
            dues.append((SILENT, ds["sil"]["due"], "sil"))
        return dues

    def _fire_timers(
        self,
        keys: list[tuple[str, Any, dict[str, Any]]],
        upto: float,
        customer: Mapping[str, Any],
        firings: list[Firing],
    ) -> None:
        """Fire due timers in (time, rule order); matches of one instant form
        one step for cooldowns and groups."""
        step: list[_Match] = []
        step_at: float | None = None
        while True:
            best: tuple[float, int, str, Any, dict[str, Any]] | None = None
            for key_kind, key, ks in keys:
                limit = upto if ks["t"] is None or ks["t"] >= upto else ks["t"]
                if key_kind == "device":
                    candidates = [(due, rule) for rule, due, _s in self._device_dues(ks)]
                elif ks["w"]:
                    candidates = [(ks["w"][0][0] + DAY + RETENTION_GRACE_S, RETENTION)]
                else:
                    candidates = []
                for due, rule in candidates:
                    if due <= limit and (best is None or (due, ORDER[rule]) < best[:2]):
                        best = (due, ORDER[rule], rule, key, ks)
            if best is None:
                break
            at, _rank, rule, key, ks = best
            if step_at is not None and at != step_at and step:
                self._finish(step, customer, firings)
                step = []
            step_at = at
            self._on_timer(rule, key, ks, at, customer, step)
        if step:
            self._finish(step, customer, firings)

    def _on_timer(
        self,
        rule: str,
        key: Any,
        ks: dict[str, Any],
        at: float,
        customer: Mapping[str, Any],
        step: list[_Match],
    ) -> None:
        if rule in (VIBRATION, ANOMALY):
            slot = "vib" if rule == VIBRATION else "ano"
            run = ks[slot]
            ks[slot] = {"f": 1}
            context = run["e"]
            if rule == VIBRATION:
                vibration = context["vibration"]
                payload = {
                    "reason": f"vibration above 0.8 g for 10 min (last {_round(vibration, 2)} g)",
                    "device_id": context["device_id"],
                    "device_type": context["device_type"],
                    "vibration_g": vibration,
                    "urgency": "high" if _above(vibration, 1.5) else "normal",
                }
            else:
                anomaly = run["sc"].get("anomaly")
                payload = {
                    "reason": (
                        f"unusual behaviour for 15 min (anomaly score {_round(anomaly, 2)})"
                    ),
                    "device_id": context["device_id"],
                    "anomaly_score": anomaly,
                }
            evidence = {
                "trigger": "sustained",
                "since": run["s"],
                "for": run["due"] - run["s"],
                "scores": run["sc"],
            }
            step.append(
                _Match(
                    rule,
                    ks,
                    "device",
                    key,
                    at,
                    list(run["ids"]),
                    [run["s"], at],
                    payload,
                    evidence,
                    key,
                )
            )
        elif rule == SILENT:
            watch = ks["sil"]
            payload = {
                "reason": "device silent",
                "device_id": key,
                "device_type": watch["type"],
                "last_seen": watch["last"],
            }
            evidence = {"trigger": "silence", "silent_since": watch["last"], "for": SILENCE_S}
            step.append(
                _Match(
                    SILENT,
                    ks,
                    "device",
                    key,
                    at,
                    [watch["id"]],
                    [watch["last"], at],
                    payload,
                    evidence,
                    key,
                )
            )
            watch["due"] = at + SILENCE_S
        else:
            self._close_windows(ks, key, at, customer, step)

    def _close_windows(
        self,
        cs: dict[str, Any],
        key: Any,
        due: float,
        customer: Mapping[str, Any],
        step: list[_Match],
    ) -> None:
        windows = cs["w"]
        while windows and windows[0][0] + DAY + RETENTION_GRACE_S <= due:
            start, usage, used, reports, ids, _context, churn = windows.pop(0)
            usage_min = usage if used else None
            baseline = customer.get("usage_baseline_min")
            dropped = (
                usage_min is not None
                and isinstance(baseline, int | float)
                and usage_min < RETENTION_SHARE * baseline
            )
            risky = _above(churn, CHURN_LIMIT)
            if not (dropped or risky):
                continue
            closes = start + DAY + RETENTION_GRACE_S
            payload = {
                "offer": "wearable-plus-3-months",
                "reason": "churn risk" if risky else "usage drop",
                "usage_min": _round(usage_min, 1),
                "baseline_min": baseline,
                "churn_score": churn,
            }
            evidence = {
                "trigger": "window",
                "type": "tumbling",
                "start": start,
                "end": start + DAY,
                "aggregates": {"usage_min": usage_min, "reports": reports},
            }
            step.append(
                _Match(
                    RETENTION,
                    cs,
                    "customer",
                    key,
                    closes,
                    _evidence_ids(ids),
                    [start, start + DAY],
                    payload,
                    evidence,
                    None,
                )
            )

    # firings --------------------------------------------------------------------------
    def _finish(
        self, matches: list[_Match], customer: Mapping[str, Any], firings: list[Firing]
    ) -> None:
        """Cooldown, consent and groups, in rule order; emit the survivors."""
        taken: set[str] = set()
        # Matches arrive in rule order (events) or (time, rule order) (timers).
        for match in matches:
            rule = match.rule
            cooldowns = match.keys["cd"]
            suppressed = False
            until = cooldowns.get(rule)
            if until is not None:
                if match.at < until:
                    suppressed = True
                else:
                    del cooldowns[rule]
            if not suppressed and rule in CONSENT:
                consent = customer.get("consent")
                suppressed = not (
                    isinstance(consent, Mapping) and consent.get(CONSENT[rule]) is True
                )
            group = GROUP.get(rule)
            if not suppressed and group is not None:
                if group in taken:
                    suppressed = True
                else:
                    taken.add(group)
            if suppressed:
                self.suppressed += 1
                continue
            cooldowns[rule] = match.at + COOLDOWN[rule]
            firings.append(
                {
                    "rule": rule,
                    "version": VERSION[rule],
                    "type": ACTION_TYPE[rule],
                    "key_kind": match.key_kind,
                    "key": match.key,
                    "at": float(match.at),
                    "event_ids": match.ids,
                    "device_id": match.device_id,
                    "payload": match.payload,
                    "evidence": {**match.evidence, "event_ids": match.ids},
                    "action_id": action_id(
                        rule,
                        VERSION[rule],
                        match.key_kind,
                        match.key,
                        [] if rule == RETENTION else match.ids,  # a closed window: its bounds
                        match.bounds,
                    ),
                }
            )
