"""GDPR erasure: the request a CRM (or ``iotcrm customer erase``) publishes,
and the report that travels with the customer's last record.

A request is a record of ``kafka.erasure_topic`` keyed by customer_id (so it
reaches the actor that owns the customer, after the customer's earlier events),
its value an :class:`ErasureRequest`. The actor wipes the customer's state,
timers (usage windows included) and pending model predictions, tombstones its changelog
rows, its registry entries, its profile and its customer-360 record; that last
tombstone carries an :class:`ErasureReport` in the ``ERASURE_HEADER`` header,
from which the Cassandra sink deletes the customer's rows and writes the audit
record. The audit record (``erasures`` table) holds the request id, times and
counts, never the customer id or anything else personal.

>>> request = new_request("r-1", requested_at=1700000000.0)
>>> decode_request(encode_request(request))
ErasureRequest(request_id='r-1', requested_at=1700000000.0)
>>> decode_request(b'{"requested_at": 1}')
Traceback (most recent call last):
...
ValueError: not an erasure request: Object missing required field `request_id`
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import msgspec

#: Header of the customer-360 tombstone that completes an erasure in the actor.
ERASURE_HEADER = "iotcrm-erasure"

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ErasureRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The value of an erasure request (key: the customer_id)."""

    request_id: RequestId
    requested_at: float


class ErasureReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the actor erased, for the sink (which deletes the rows) and the audit.

    ``device_ids`` lets the sink delete the device-registry rows; the report
    lives only in the header of a tombstone, which compaction removes.
    """

    request_id: RequestId
    requested_at: float
    erased_at: float
    had_state: bool
    device_ids: list[str] = msgspec.field(default_factory=list)
    pending_predictions: int = 0
    events_dropped: int = 0


def new_request(request_id: str | None = None, requested_at: float | None = None) -> ErasureRequest:
    return ErasureRequest(
        request_id=request_id or str(uuid.uuid4()),
        requested_at=time.time() if requested_at is None else requested_at,
    )


def encode_request(request: ErasureRequest) -> bytes:
    return msgspec.json.encode(request)


def decode_request(value: bytes | None) -> ErasureRequest:
    """The request in a record's value; ValueError when it is not one."""
    try:
        return msgspec.json.decode(value or b"", type=ErasureRequest)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not an erasure request: {exc}") from None


def encode_report(report: ErasureReport) -> bytes:
    return msgspec.json.encode(report)


def decode_report(value: bytes) -> ErasureReport:
    """The report of an ``ERASURE_HEADER`` header; ValueError when it is not one.

    >>> report = ErasureReport(request_id="r", requested_at=1.0, erased_at=2.0, had_state=True)
    >>> decode_report(encode_report(report)) == report
    True
    """
    try:
        return msgspec.json.decode(value, type=ErasureReport)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not an erasure report: {exc}") from None
