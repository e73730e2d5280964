"""Wire schemas of docs/events.md: what devices and the CRM side send, and
what iotcrm writes back when it refuses an event.

The incoming device event is an open JSON object (unknown fields pass
through to rules), so it has no Struct here: its fixed part is described by
the constants below and checked field by field in ``engine.quality``, which
is both faster than a typed second decode and gives plainer reasons. The
records of the compacted topics and the dead-letter envelope are closed, so
they are msgspec Structs.

>>> info = msgspec.json.decode(
...     b'{"device_id": "d-0001", "customer_id": "c-001", "device_type": "washer",'
...     b' "model": "WX-200", "registered_at": 1763700000}',
...     type=DeviceInfo,
... )
>>> info.customer_id, info.registered_at
('c-001', 1763700000.0)
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson

#: Fields every device event must carry.
REQUIRED_FIELDS: tuple[str, ...] = ("id", "ts", "device_id", "kind")

#: Event kinds devices may send.
KINDS: frozenset[str] = frozenset({"telemetry", "error", "status", "usage", "consumable"})

#: Values of the ``state`` reading of a ``status`` event.
DEVICE_STATES: frozenset[str] = frozenset({"online", "offline", "reboot", "fault"})

#: A device id: also a Kafka topic-name suffix, hence the narrow alphabet.
DEVICE_ID_PATTERN = r"[A-Za-z0-9._-]{1,128}"

#: Longest accepted event ``id``, in characters.
EVENT_ID_MAX_LENGTH = 128

#: Fields ingest adds from the registry; a device cannot set them itself.
ENRICHED_FIELDS: tuple[str, ...] = ("customer_id", "device_type")

#: Most events ingest packs into one record of the customer stream.
EVENTS_PER_RECORD = 64


def pack_events(events: list[dict[str, Any]]) -> bytes:
    """The value of one customer-stream record: accepted events of one
    partition (possibly of several customers), in the order ingest read them.

    One record per partition and poll instead of one per event: every record
    costs the actor's Kafka consumer and Faust's stream the same, whatever it
    carries.

    >>> unpack_events(pack_events([{"id": "e1"}, {"id": "e2"}]))
    [{'id': 'e1'}, {'id': 'e2'}]
    """
    return orjson.dumps(events)


def unpack_events(value: bytes) -> list[dict[str, Any]]:
    """The events of a customer-stream record: a packed list, or one event
    alone (as records were before packing, and as tests may write them).

    >>> unpack_events(b'{"id": "e1"}')
    [{'id': 'e1'}]
    """
    decoded = orjson.loads(value)
    return decoded if isinstance(decoded, list) else [decoded]


#: Header of a customer-stream record: when the oldest device record among its
#: events was published (the device records' Kafka timestamps, epoch ms), the
#: start of the event-to-action latency the worker measures.
PUBLISHED_HEADER = "iotcrm-pub"


def published_at(headers: Any) -> float | None:
    """The publication time (epoch seconds) a customer-stream record carries.

    >>> published_at([("iotcrm-src", b"ingest-1"), ("iotcrm-pub", b"1700000000250")])
    1700000000.25
    >>> published_at([]) is None, published_at(None) is None
    (True, True)
    """
    for name, value in headers or ():
        if name == PUBLISHED_HEADER:
            return int(value) / 1000
    return None


DeviceId = Annotated[str, msgspec.Meta(pattern=f"^{DEVICE_ID_PATTERN}$")]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A device's registration: the value of ``iot.registry`` (key = device_id)."""

    device_id: DeviceId
    customer_id: NonEmptyStr
    device_type: NonEmptyStr
    model: str = ""
    registered_at: float | None = None


class CustomerProfile(msgspec.Struct, kw_only=True):
    """The known part of a ``crm.customers`` value (key = customer_id).

    Other fields are kept by ``CustomerProfiles`` and reach rules unchanged;
    consent flags default to no consent.
    """

    customer_id: NonEmptyStr
    tier: str = ""
    segment: str = ""
    region: str = ""
    consent: dict[str, bool] = msgspec.field(default_factory=dict)


class SourcePosition(msgspec.Struct, frozen=True):
    """Where a record was read: enough to find, fix and replay it."""

    topic: str
    partition: int
    offset: int


class DeadLetter(msgspec.Struct, kw_only=True):
    """The value written to ``iot.deadletter`` (and ``iot.late``).

    ``original_b64`` holds the record's bytes exactly as they arrived.
    """

    reason: str
    reason_code: str
    source: SourcePosition
    received_at: float
    original_b64: str
