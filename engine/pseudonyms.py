"""Keyed pseudonyms for what leaves the engine: the customer and device ids of
the actions on the downstream topics, and the action ids derived from them.

A pseudonym is ``p-`` and 32 hex digits of HMAC-SHA256(key, id): the same for
the same id under one key, so downstream systems can still join and count by
it, and useless without the key: an id cannot be found from its pseudonym by
trying candidate ids (they are short and guessable, a plain hash would not
hide them). Whoever holds the key (the CRM that acts on an action) computes
the pseudonym of a real id to look it up; another key unlinks everything
published before. The key comes only from the environment
(``IOTCRM_PSEUDONYM_KEY``, or the file ``IOTCRM_PSEUDONYM_KEY_FILE`` names).

>>> names = Pseudonyms(b"a key of at least sixteen bytes")
>>> alias = names.of("c-0001")
>>> alias.startswith("p-"), len(alias), alias == names.of("c-0001") != names.of("c-0002")
(True, 34, True)
>>> action = {"action_id": "0" * 32, "customer_id": "c-0001", "device_id": "d-01",
...           "payload": {"device_id": "d-01", "reason": "d-01 is silent"},
...           "evidence": {"event_ids": ["d-01-17"]}}
>>> published = names.action(action)
>>> published["customer_id"] == alias, published["payload"]["device_id"] == names.of("d-01")
(True, True)
>>> "d-01" in repr(published), published["action_id"] != action["action_id"]
(False, True)
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from engine.config import ConfigError, Settings

#: Shortest key accepted: HMAC-SHA256's security rests on it.
MIN_KEY_BYTES = 16
#: Pseudonyms remembered per process (ids repeat: a customer acts many times).
_CACHED = 100_000


class Pseudonyms:
    """Keyed pseudonyms of ids, and actions with their ids replaced by them."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a pseudonym key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._known: dict[str, str] = {}

    def of(self, identifier: str) -> str:
        """The pseudonym of ``identifier``."""
        known = self._known.get(identifier)
        if known is None:
            if len(self._known) >= _CACHED:
                self._known.clear()
            known = self._known[identifier] = "p-" + self._digest(identifier)
        return known

    def action(self, action: dict[str, Any]) -> dict[str, Any]:
        """``action`` as downstream topics get it: its customer and device ids
        replaced by their pseudonyms wherever they appear (within the text of
        its payload and evidence too), its action id by a keyed hash of the
        same shape (still one per trigger: idempotent writes keep working)."""
        ids = [i for i in (action["customer_id"], action.get("device_id")) if i]
        # the longer first: one id may contain another
        pairs = [(real, self.of(real)) for real in sorted(ids, key=len, reverse=True)]
        published = dict(action)
        published["action_id"] = self._digest(action["action_id"])
        published["customer_id"] = self.of(action["customer_id"])
        if action.get("device_id"):
            published["device_id"] = self.of(action["device_id"])
        published["payload"] = _replaced(action["payload"], pairs)
        published["evidence"] = _replaced(action["evidence"], pairs)
        return published

    def _digest(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:32]


def _replaced(value: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for real, alias in pairs:
            value = value.replace(real, alias)
        return value
    if isinstance(value, dict):
        return {key: _replaced(item, pairs) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, pairs) for item in value]
    return value


def pseudonyms_for(settings: Settings) -> Pseudonyms | None:
    """The pseudonyms ``privacy.pseudonymise_actions`` asks for (None: off);
    raises :class:`ConfigError` without a usable key."""
    if not settings.privacy.pseudonymise_actions:
        return None
    key = Settings.secret("PSEUDONYM_KEY")
    if key is None:
        raise ConfigError(
            "privacy.pseudonymise_actions is on but IOTCRM_PSEUDONYM_KEY "
            "(or IOTCRM_PSEUDONYM_KEY_FILE) is not set"
        )
    try:
        return Pseudonyms(key.encode())
    except ValueError as exc:
        raise ConfigError(f"IOTCRM_PSEUDONYM_KEY: {exc}") from exc
