"""The dead-letter envelope of docs/events.md (also used for ``iot.late``).

>>> from engine.events import SourcePosition
>>> value = deadletter_value(
...     b'{"id": 1}',
...     Rejection("schema", "missing required field 'ts'"),
...     SourcePosition("iot.device.d1", 0, 17),
...     received_at=1763700000.123,
... )
>>> envelope = msgspec.json.decode(value, type=DeadLetter)
>>> envelope.reason_code, envelope.source.offset, original_bytes(envelope)
('schema', 17, b'{"id": 1}')
"""

from __future__ import annotations

import base64

import msgspec

from engine.events import DeadLetter, SourcePosition
from engine.quality.verdicts import Rejection

_encode = msgspec.json.Encoder().encode


def deadletter_value(
    raw: bytes, rejection: Rejection, source: SourcePosition, received_at: float
) -> bytes:
    """The JSON value to write to ``iot.deadletter``: the reason, where the
    record was read, when, and its exact bytes (base64)."""
    return _encode(
        DeadLetter(
            reason=rejection.reason,
            reason_code=rejection.reason_code,
            source=source,
            received_at=received_at,
            original_b64=base64.b64encode(raw or b"").decode("ascii"),
        )
    )


def original_bytes(envelope: DeadLetter) -> bytes:
    """The rejected record's value, as it arrived: what a replay sends again."""
    return base64.b64decode(envelope.original_b64)
