"""Conversions between actions / registry records and Cassandra rows.

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

#: Cassandra's largest TTL (20 years), in seconds.
MAX_TTL_S = 630_720_000

#: Range of CQL ``int`` (32 bits): a larger value would fail when bound, and
#: be retried for ever, so it is refused as invalid instead.
CQL_INT_RANGE = range(-(2**31), 2**31)


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
        return round(value * 1000)
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
