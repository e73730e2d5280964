"""The door: raw bytes in, a normalised and enriched event or a rejection out.

>>> from engine.quality import DeviceRegistry, SourcePosition
>>> registry = DeviceRegistry()
>>> registry.apply("d1", b'{"device_id": "d1", "customer_id": "c1", "device_type": "washer"}')
>>> inspector = Inspector(QualityOptions(), registry, clock=lambda: 1763700000.0)
>>> where = SourcePosition("iot.device.d1", 0, 17)
>>> inspector.inspect(
...     b'{"id": "e1", "ts": "2025-11-21T04:39:00Z", "device_id": "d1", "kind": "telemetry",'
...     b' "temperature_f": 212, "level": {"value": 0.25, "unit": "ratio"}, "fw": "1.2"}',
...     where,
... ).event
{'id': 'e1', 'ts': 1763699940.0, 'device_id': 'd1', 'kind': 'telemetry', 'temperature': 100.0, \
'level': 25.0, 'fw': '1.2', 'customer_id': 'c1', 'device_type': 'washer'}
>>> inspector.inspect(b'{"id": "e2", "device_id": "d1", "kind": "telemetry"}', where)
Rejection(reason_code='schema', reason="missing required field 'ts'")
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from engine.events import (
    DEVICE_ID_PATTERN,
    ENRICHED_FIELDS,
    EVENT_ID_MAX_LENGTH,
    KINDS,
    REQUIRED_FIELDS,
    SourcePosition,
)
from engine.quality.options import QualityOptions
from engine.quality.readings import FIELDS, TEXT_READINGS, UNIT_FIELDS
from engine.quality.registry import DeviceLookup
from engine.quality.timestamps import event_time
from engine.quality.verdicts import Accepted, RejectedInput, Rejection, describe, json_type, preview

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_BYTE_POSITION = re.compile(r"\(byte (\d+)\)")
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_SKIP = "skip"
_TEXT = "text"
#: Field name -> what the field is: a reading (reading, unit the name implies),
#: a text reading, or a field handled elsewhere; absent: an extra field.
_ROLES: dict[str, Any] = {
    **dict.fromkeys(TEXT_READINGS, _TEXT),
    **FIELDS,
    **dict.fromkeys([*REQUIRED_FIELDS, *ENRICHED_FIELDS, *UNIT_FIELDS], _SKIP),
}
_KIND_LIST = ", ".join(sorted(KINDS))


class Inspector:
    """Decode, validate, normalise and enrich device events.

    ``settings`` are the ``[quality]`` settings (``QualityOptions``);
    ``registry`` anything with ``lookup(device_id)`` and ``topic`` (usually a
    ``DeviceRegistry``); ``clock`` gives the wall-clock epoch seconds the
    future-skew check compares against. An event read from a topic named
    ``device_topic_prefix + <id>`` must carry that device id (set the prefix
    to None to skip the check). ``inspect`` never raises.
    """

    def __init__(
        self,
        settings: QualityOptions,
        registry: DeviceLookup,
        clock: Callable[[], float] = time.time,
        device_topic_prefix: str | None = "iot.device.",
    ) -> None:
        self.options = settings
        self.registry = registry
        self.clock = clock
        self.device_topic_prefix = device_topic_prefix
        self._decoder = msgspec.json.Decoder()
        self._max_skew_s = self.options.max_future_skew_s
        self._max_nesting = self.options.max_nesting

    def inspect(self, raw: bytes, source: SourcePosition) -> Accepted | Rejection:
        """One record's value: ``Accepted(event)`` or ``Rejection(code, reason)``."""
        return self._inspect(raw, source, self.clock())

    def inspect_many(
        self, records: Iterable[tuple[bytes, SourcePosition]]
    ) -> list[Accepted | Rejection]:
        """``inspect`` for a batch of (value, position), reading the clock once."""
        now = self.clock()
        inspect = self._inspect
        return [inspect(raw, source, now) for raw, source in records]

    def _inspect(self, raw: bytes, source: SourcePosition, now: float) -> Accepted | Rejection:
        try:
            return Accepted(self._event(self._decode(raw), source, now))
        except RejectedInput as refused:
            return refused.rejection
        except Exception as exc:  # a bug must not stop the stream; the record is kept
            return Rejection("internal", f"inspector failed: {type(exc).__name__}: {exc}")

    def _decode(self, raw: bytes) -> dict[str, Any]:
        if not raw:
            raise RejectedInput("decode", "empty payload")
        limit = self.options.max_payload_bytes
        if len(raw) > limit:
            raise RejectedInput(
                "decode", f"payload is {len(raw)} bytes, over the {limit}-byte limit"
            )
        try:
            decoded = self._decoder.decode(raw)
        except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
            raise _decode_failure(raw, exc) from None
        except RecursionError:
            raise RejectedInput("decode", "not valid JSON: nested too deeply to decode") from None
        if type(decoded) is not dict:
            raise RejectedInput("decode", f"expected a JSON object, got {json_type(decoded)}")
        return decoded

    def _event(self, fields: dict[str, Any], source: SourcePosition, now: float) -> dict[str, Any]:
        try:
            event_id = fields["id"]
            given_ts = fields["ts"]
            device_id = fields["device_id"]
            kind = fields["kind"]
        except KeyError as missing:  # keys are tried in REQUIRED_FIELDS order
            raise RejectedInput("schema", f"missing required field '{missing.args[0]}'") from None
        if type(event_id) is not str or not 0 < len(event_id) <= EVENT_ID_MAX_LENGTH:
            raise RejectedInput(
                "schema",
                f"field 'id' must be a string of 1 to {EVENT_ID_MAX_LENGTH} characters, "
                f"got {describe(event_id)}",
            )
        if type(device_id) is not str:
            raise RejectedInput(
                "schema",
                f"field 'device_id' must be a string, got {describe(device_id)}",
            )
        # Registered ids were checked on entry to the registry: only strangers
        # need the pattern.
        device = self.registry.lookup(device_id)
        if device is None and not _DEVICE_ID.fullmatch(device_id):
            raise RejectedInput(
                "schema",
                f"field 'device_id' must match {DEVICE_ID_PATTERN}, got {preview(device_id)}",
            )
        prefix = self.device_topic_prefix
        topic = source.topic
        if prefix and topic.startswith(prefix) and topic[len(prefix) :] != device_id:
            raise RejectedInput(
                "schema", f"device_id {preview(device_id)} does not match its topic {topic}"
            )
        if type(kind) is not str or kind not in KINDS:
            raise RejectedInput(
                "schema", f"field 'kind' must be one of {_KIND_LIST}, got {preview(kind)}"
            )
        ts = event_time(given_ts)
        if ts - now > self._max_skew_s:
            raise RejectedInput(
                "future",
                f"ts {_shown_ts(given_ts)} is {ts - now:.0f} s in the future "
                f"(allowed: {self._max_skew_s:g} s)",
            )
        event: dict[str, Any] = {"id": event_id, "ts": ts, "device_id": device_id, "kind": kind}
        for name, value in fields.items():
            role = _ROLES.get(name)
            if role is None:
                if type(value) is dict or type(value) is list:
                    _check_nesting(name, value, self._max_nesting)
                event[name] = value
            elif role is _TEXT:
                event[name] = _text_reading(name, value)
            elif role is not _SKIP:
                reading, name_unit = role
                if reading.name in event:
                    raise _given_twice(reading.name, fields)
                event[reading.name] = reading.canonical(
                    name, value, name_unit, fields.get(reading.unit_field)
                )
        if device is None:
            raise RejectedInput(
                "unregistered",
                f"device {preview(device_id)} is not in the registry ({self.registry.topic})",
            )
        event["customer_id"] = device.customer_id
        event["device_type"] = device.device_type
        return event


def _decode_failure(raw: bytes, exc: Exception) -> RejectedInput:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return RejectedInput(
            "decode",
            f"not valid UTF-8: byte 0x{raw[bad.start]:02x} at position {bad.start}",
        )
    message = str(exc)
    if message.startswith("Number out of range"):
        return _too_large_number(raw)
    position = _BYTE_POSITION.search(message)
    if position is not None:
        at = int(position.group(1))
        if raw.startswith((b"NaN", b"Infinity"), at):
            if at > 0 and raw[at - 1 : at] in (b"-", b"+"):
                at -= 1
            return RejectedInput("value", f"NaN and Infinity are not allowed (byte {at})")
    return RejectedInput("decode", f"not valid JSON: {message}")


def _too_large_number(raw: bytes) -> RejectedInput:
    for number in _NUMBER.finditer(raw):
        if math.isinf(float(number.group())):
            return RejectedInput(
                "value",
                f"number {preview(number.group().decode())[1:-1]} at byte {number.start()} "
                "is too large to be finite",
            )
    return RejectedInput("value", "a number is too large to be finite")


def _shown_ts(ts: Any) -> str:
    return ts if type(ts) is str else preview(ts)


def _given_twice(reading: str, fields: dict[str, Any]) -> RejectedInput:
    names = [name for name, (spec, _) in FIELDS.items() if spec.name == reading and name in fields]
    return RejectedInput(
        "schema", f"reading '{reading}' is given more than once: {', '.join(names)}"
    )


def _text_reading(name: str, value: Any) -> str:
    if type(value) is not str:
        raise RejectedInput("schema", f"field '{name}' must be a string, got {describe(value)}")
    allowed = TEXT_READINGS[name]
    if allowed is not None and value not in allowed:
        raise RejectedInput(
            "value",
            f"field '{name}' must be one of {', '.join(sorted(allowed))}, got {preview(value)}",
        )
    return value


def _check_nesting(name: str, value: list[Any] | dict[str, Any], limit: int) -> None:
    """Refuse containers nested deeper than ``limit`` (iteratively: no recursion)."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            raise RejectedInput("schema", f"field '{name}' is nested more than {limit} levels deep")
        inner: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            inner.extend(item for item in items if type(item) is dict or type(item) is list)
        level = inner
        depth += 1
