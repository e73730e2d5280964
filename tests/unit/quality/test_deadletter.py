"""The dead-letter envelope keeps the original bytes exactly."""

from __future__ import annotations

import base64

import msgspec

from engine.events import DeadLetter
from engine.quality import Inspector, Rejection, SourcePosition, deadletter_value, original_bytes

from .helpers import SHARED


def test_envelope_fields_match_the_contract() -> None:
    raw = b'{"id": "e1", "device_id": "d1"}'
    value = deadletter_value(
        raw,
        Rejection("schema", "missing required field 'ts'"),
        SourcePosition("iot.device.d1", 0, 17),
        received_at=1763700000.123,
    )
    assert msgspec.json.decode(value) == {
        "reason": "missing required field 'ts'",
        "reason_code": "schema",
        "source": {"topic": "iot.device.d1", "partition": 0, "offset": 17},
        "received_at": 1763700000.123,
        "original_b64": base64.b64encode(raw).decode(),
    }


def test_any_bytes_survive_the_round_trip(inspector: Inspector) -> None:
    for raw in [b"\xff\xfe\x00junk", b"", b'{"a": NaN}', bytes(range(256))]:
        rejection = inspector.inspect(raw, SHARED)
        assert isinstance(rejection, Rejection)
        envelope = msgspec.json.decode(
            deadletter_value(raw, rejection, SHARED, 1.0), type=DeadLetter
        )
        assert original_bytes(envelope) == raw
        assert envelope.reason == rejection.reason
