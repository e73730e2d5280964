"""Conversions between actions / registry records / customer-360 summaries
and Cassandra rows.

Plain Python, no driver import: the store binds these tuples to prepared
statements, and the sink uses the same parsing to reject malformed records
before they reach Cassandra.

Times are epoch seconds (float) on the Python side, as everywhere in iotcrm,
and milliseconds since the epoch in Cassandra's ``timestamp`` columns.

>>> row = action_row({"action_id": "a1", "type": "coupon", "customer_id": "c1",
...                   "rule": {"id": "r", "version": 2}, "at": 1763700000.5,
...                   "payload": {"pct": 10}}, written_at_ms=0)
>>> row.at_ms, row.rule_id, row.rule_version, row.payload
(1763700000500, 'r', 2, '{"pct":10}')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import orjson

#: Cassandra's largest TTL (20 years), in seconds.
MAX_TTL_S = 630_720_000

#: Range of CQL ``int`` (32 bits): a larger value would fail when bound, and
#: be retried for ever, so it is refused as invalid instead.
CQL_INT_RANGE = range(-(2**31), 2**31)
#: Range of CQL ``bigint`` (64 bits), for the same reason.
CQL_BIGINT_RANGE = range(-(2**63), 2**63)


class InvalidRecord(ValueError):
    """A record that can never be stored, however often it is retried."""


class ActionRow(NamedTuple):
    """One action as bound to ``action_log`` and ``actions_by_id``: the
    tuple is the statements' parameters in column order."""

    customer_id: str
    at_ms: int
    action_id: str
    type: str
    device_id: str | None
    rule_id: str | None
    rule_version: int | None
    emitted_at_ms: int | None
    payload: str | None
    evidence: str | None
    schema_version: int | None
    topic: str | None
    written_at_ms: int


#: Column names in ``ActionRow`` order, for the INSERT statements.
ACTION_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "at",
    "action_id",
    "type",
    "device_id",
    "rule_id",
    "rule_version",
    "emitted_at",
    "payload",
    "evidence",
    "schema_version",
    "topic",
    "written_at",
)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A registration from ``iot.registry`` (see docs/events.md)."""

    device_id: str
    customer_id: str
    device_type: str | None
    model: str | None
    registered_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Customer360Row:
    """A customer-360 summary (as the worker publishes it) as a ``customer_360`` row.

    The summary is a complete snapshot, so its fields replace the row's;
    only ``devices`` is added to (the registry mirror removes devices) and
    the two times only move forward.
    """

    customer_id: str
    tier: str | None
    segment: str | None
    consent: dict[str, bool]
    devices: frozenset[str]
    last_event_at_ms: int | None
    counters: dict[str, int]
    last_action_at_ms: int | None
    summary: str


def to_millis(value: Any, field: str = "time") -> int | None:
    """Epoch seconds, an RFC 3339 string or a datetime → epoch milliseconds.

    >>> to_millis(1.5), to_millis("1970-01-01T00:00:02Z"), to_millis(None)
    (1500, 2000, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRecord(f"{field}: expected a time, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidRecord(f"{field}: not a finite number: {value!r}")
        millis = round(value * 1000)
        if millis not in CQL_BIGINT_RANGE:  # would fail when bound, retried for ever
            raise InvalidRecord(f"{field}: out of a timestamp's range: {value!r}")
        return millis
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRecord(f"{field}: not an RFC 3339 time: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return round(value.timestamp() * 1000)
    raise InvalidRecord(f"{field}: expected a time, got {type(value).__name__}")


def from_timestamp(value: datetime | None) -> float | None:
    """A timestamp read back from Cassandra (naive UTC) → epoch seconds.

    >>> from_timestamp(datetime(1970, 1, 1, 0, 0, 1, 500000))
    1.5
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def to_json_text(value: Any) -> str | None:
    """Compact JSON with sorted keys, so the same value is always the same text."""
    if value is None:
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise InvalidRecord(f"not JSON-serialisable: {exc}") from None


def from_json_text(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _required_text(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"missing or empty string field {field!r}")
    return value


def _optional_text(record: Mapping[str, Any], field: str) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(f"{field!r} must be a string, got {type(value).__name__}")
    return value


def _optional_int(record: Mapping[str, Any], field: str) -> int | None:
    value = record.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in CQL_INT_RANGE:
        raise InvalidRecord(f"{field!r} must be a 32-bit integer, got {value!r}")
    return value


def _rule(action: Mapping[str, Any]) -> tuple[str | None, int | None]:
    rule = action.get("rule")
    if isinstance(rule, Mapping):
        rule_id, version = rule.get("id"), rule.get("version")
    else:
        # Tolerate the flat spelling ``rule: "<id>", rule_version: N``.
        rule_id, version = rule, action.get("rule_version")
    if rule_id is not None and not isinstance(rule_id, str):
        raise InvalidRecord(f"rule id must be a string, got {rule_id!r}")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version not in CQL_INT_RANGE
    ):
        raise InvalidRecord(f"rule version must be a 32-bit integer, got {version!r}")
    return rule_id, version


def action_row(action: Mapping[str, Any], *, written_at_ms: int) -> ActionRow:
    """Validate an action (architecture.md, "Actions out") and make its row.

    ``action_id``, ``type``, ``customer_id`` and ``at`` are required; an
    optional ``topic`` key names the Kafka topic the action was read from.
    Raises InvalidRecord for anything that cannot be stored.
    """
    at_ms = to_millis(action.get("at"), "at")
    if at_ms is None:
        raise InvalidRecord("missing field 'at'")
    rule_id, rule_version = _rule(action)
    return ActionRow(
        customer_id=_required_text(action, "customer_id"),
        at_ms=at_ms,
        action_id=_required_text(action, "action_id"),
        type=_required_text(action, "type"),
        device_id=_optional_text(action, "device_id"),
        rule_id=rule_id,
        rule_version=rule_version,
        emitted_at_ms=to_millis(action.get("emitted_at"), "emitted_at"),
        payload=to_json_text(action.get("payload")),
        evidence=to_json_text(action.get("evidence")),
        schema_version=_optional_int(action, "schema_version"),
        topic=_optional_text(action, "topic"),
        written_at_ms=written_at_ms,
    )


def action_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """An ``action_log`` / ``actions_by_id`` row (dict) → the action's shape.

    >>> action_from_row({"action_id": "a1", "type": "coupon", "customer_id": "c1",
    ...     "device_id": None, "rule_id": "r", "rule_version": 2,
    ...     "at": datetime(1970, 1, 1, 0, 0, 3), "emitted_at": None, "payload": '{"x":1}',
    ...     "evidence": None, "schema_version": 1, "topic": "t", "written_at": None})["payload"]
    {'x': 1}
    """
    return {
        "action_id": row["action_id"],
        "type": row["type"],
        "customer_id": row["customer_id"],
        "device_id": row["device_id"],
        "rule": {"id": row["rule_id"], "version": row["rule_version"]},
        "at": from_timestamp(row["at"]),
        "emitted_at": from_timestamp(row["emitted_at"]),
        "payload": from_json_text(row["payload"]),
        "evidence": from_json_text(row["evidence"]),
        "schema_version": row["schema_version"],
        "topic": row["topic"],
        "written_at": from_timestamp(row["written_at"]),
    }


def device_row(device_id: str, registration: Mapping[str, Any]) -> DeviceRow:
    """Validate a registry value (docs/events.md) for the device keyed ``device_id``.

    >>> device_row("d1", {"customer_id": "c1", "device_type": "washer"}).customer_id
    'c1'
    """
    if not device_id:
        raise InvalidRecord("registry record without a device id")
    inner_id = registration.get("device_id")
    if inner_id is not None and inner_id != device_id:
        raise InvalidRecord(f"registry key {device_id!r} differs from device_id {inner_id!r}")
    return DeviceRow(
        device_id=device_id,
        customer_id=_required_text(registration, "customer_id"),
        device_type=_optional_text(registration, "device_type"),
        model=_optional_text(registration, "model"),
        registered_at_ms=to_millis(registration.get("registered_at"), "registered_at"),
    )


def check_ttl(table: str, ttl_s: int) -> int:
    """Return ``ttl_s`` if Cassandra accepts it as a TTL (0 means none)."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"TTL of {table} must be an integer in [0, {MAX_TTL_S}], got {ttl_s!r}")
    return ttl_s


def customer_360_row(customer_id: str | None, summary: Mapping[str, Any]) -> Customer360Row:
    """Validate a customer-360 summary (``tables.state.summary``) keyed
    ``customer_id`` (``None``: take the summary's own) and make its row.

    Profile fields are free-form (``crm.customers``), so a typed column takes
    a profile value only when it has the column's type: a non-string ``tier``
    or ``segment`` is stored as null, and a consent flag that is not a
    boolean is left out, which reads as no consent (docs/events.md). The
    whole summary, as published, is kept as JSON text in ``summary``.
    ``last_event_at`` is the latest ``last_ts`` of the devices,
    ``last_action_at`` the latest ``at`` of the recent actions.

    >>> row = customer_360_row("c1", {
    ...     "customer": {"customer_id": "c1", "tier": "gold", "consent": {"marketing": True}},
    ...     "devices": {"d1": {"last_ts": 10.0}, "d2": {"last_ts": 12.5}},
    ...     "counts": {"events": 3, "actions": 1},
    ...     "recent_actions": [{"action_id": "a1", "type": "coupon", "at": 11.0}]})
    >>> row.tier, sorted(row.devices), row.last_event_at_ms, row.last_action_at_ms
    ('gold', ['d1', 'd2'], 12500, 11000)
    """
    if not isinstance(summary, Mapping):
        raise InvalidRecord(f"summary must be an object, got {type(summary).__name__}")
    customer = summary.get("customer")
    if not isinstance(customer, Mapping):
        raise InvalidRecord("summary without a 'customer' object")
    inner_id = customer.get("customer_id")
    key = customer_id or inner_id
    if not isinstance(key, str) or not key:
        raise InvalidRecord("summary without a customer id")
    if inner_id is not None and inner_id != key:
        raise InvalidRecord(f"summary key {key!r} differs from customer_id {inner_id!r}")
    devices = _mapping(summary, "devices")
    counts = _mapping(summary, "counts")
    recent_actions = summary.get("recent_actions") or []
    if not isinstance(recent_actions, list):
        raise InvalidRecord("'recent_actions' must be a list")
    consent = customer.get("consent")
    return Customer360Row(
        customer_id=key,
        tier=_text_or_none(customer.get("tier")),
        segment=_text_or_none(customer.get("segment")),
        consent=(
            {flag: value for flag, value in consent.items() if isinstance(value, bool)}
            if isinstance(consent, Mapping)
            else {}
        ),
        devices=frozenset(devices),
        last_event_at_ms=_latest(devices.values(), "last_ts", "devices"),
        counters={name: _counter(name, value) for name, value in counts.items()},
        last_action_at_ms=_latest(recent_actions, "at", "recent_actions"),
        summary=cast(str, to_json_text(summary)),  # an object: never None
    )


def _mapping(record: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    value = record.get(field)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRecord(f"{field!r} must be an object, got {type(value).__name__}")
    return value


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _counter(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in CQL_BIGINT_RANGE:
        raise InvalidRecord(f"count {name!r} must be a 64-bit integer, got {value!r}")
    return value


def _latest(items: Iterable[Any], field: str, where: str) -> int | None:
    """The latest of the ``field`` times of ``items`` (objects), in milliseconds."""
    latest: int | None = None
    for item in items:
        if not isinstance(item, Mapping):
            raise InvalidRecord(f"{where}: expected objects, got {type(item).__name__}")
        at_ms = to_millis(item.get(field), f"{where}.{field}")
        if at_ms is not None and (latest is None or at_ms > latest):
            latest = at_ms
    return latest
