"""In-memory views of the compacted topics ``iot.registry`` and ``crm.customers``.

Feed every record of the topic, in order, to ``apply``; a ``None`` value (a
tombstone) removes the key. A record that is not valid also removes the key
and ``apply`` returns why: the view then depends only on the latest record
per key, so it is the same whether built from a compacted topic after a
restart or from the live stream.

>>> registry = DeviceRegistry()
>>> registry.apply(b"d1", b'{"device_id": "d1", "customer_id": "c1", "device_type": "washer"}')
>>> registry.lookup("d1").customer_id
'c1'
>>> registry.apply(b"d1", None)
>>> registry.lookup("d1") is None
True
>>> registry.apply("d2", b'{"device_id": "d2"}')
"iot.registry record for 'd2' is not valid: Object missing required field `customer_id`"
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from engine.events import CustomerProfile, DeviceInfo
from engine.quality.verdicts import preview

_DEVICE_INFO = msgspec.json.Decoder(DeviceInfo)
_JSON = msgspec.json.Decoder()


class DeviceLookup(Protocol):
    """What the inspector needs from a registry."""

    topic: str

    def lookup(self, device_id: str) -> DeviceInfo | None: ...


def _text_key(key: bytes | str | None) -> str | None:
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return key


class DeviceRegistry:
    """device_id -> ``DeviceInfo``, built from ``iot.registry``."""

    def __init__(self, topic: str = "iot.registry") -> None:
        self.topic = topic
        self._devices: dict[str, DeviceInfo] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def lookup(self, device_id: str) -> DeviceInfo | None:
        """The device's registration, or None if it is not registered."""
        return self._devices.get(device_id)

    def apply(self, key: bytes | str | None, value: bytes | None) -> str | None:
        """Apply one record; None when it was valid, else the reason it was not."""
        device_id = _text_key(key)
        if device_id is None:
            return f"{self.topic} record has no usable key: {preview(key)}"
        if value is None:
            self._devices.pop(device_id, None)
            return None
        try:
            info = _DEVICE_INFO.decode(value)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
            return self._invalid(device_id, str(exc))
        if info.device_id != device_id:
            return self._invalid(device_id, f"its device_id is {info.device_id!r}")
        self._devices[device_id] = info
        return None

    def _invalid(self, device_id: str, why: str) -> str:
        self._devices.pop(device_id, None)
        return f"{self.topic} record for {device_id!r} is not valid: {why}"


class CustomerProfiles:
    """customer_id -> profile dict (as rules see ``customer``), built from
    ``crm.customers``. Fields beyond ``CustomerProfile`` are kept; ``consent``
    always holds booleans and a missing flag means no consent.

    >>> profiles = CustomerProfiles()
    >>> profiles.apply(b"c1", b'{"customer_id": "c1", "tier": "gold", "ltv": 1200,'
    ...                       b' "consent": {"marketing": true}}')
    >>> profile = profiles.lookup("c1")
    >>> profile["tier"], profile["ltv"], profile["consent"]
    ('gold', 1200, {'marketing': True})
    >>> profiles.consents("c1", "service")
    False
    """

    def __init__(self, topic: str = "crm.customers") -> None:
        self.topic = topic
        self._profiles: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def lookup(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's profile, or None if the CRM has not sent one.
        Treat it as read-only: it is shared, not copied."""
        return self._profiles.get(customer_id)

    def consents(self, customer_id: str, purpose: str) -> bool:
        """Whether the customer agreed to ``purpose`` (``marketing``, ``service``...)."""
        profile = self._profiles.get(customer_id)
        return bool(profile and profile["consent"].get(purpose, False))

    def apply(self, key: bytes | str | None, value: bytes | None) -> str | None:
        """Apply one record; None when it was valid, else the reason it was not."""
        customer_id = _text_key(key)
        if customer_id is None:
            return f"{self.topic} record has no usable key: {preview(key)}"
        if value is None:
            self._profiles.pop(customer_id, None)
            return None
        try:
            fields = _JSON.decode(value)
            known = msgspec.convert(fields, CustomerProfile)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
            return self._invalid(customer_id, str(exc))
        if known.customer_id != customer_id:
            return self._invalid(customer_id, f"its customer_id is {known.customer_id!r}")
        self._profiles[customer_id] = fields | msgspec.structs.asdict(known)
        return None

    def _invalid(self, customer_id: str, why: str) -> str:
        self._profiles.pop(customer_id, None)
        return f"{self.topic} record for {customer_id!r} is not valid: {why}"
