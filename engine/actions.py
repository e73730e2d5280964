"""The action contract downstream systems read (architecture.md, "Actions out").

An action is the JSON body published on ``crm.actions.<type>`` (key =
customer_id); its JSON Schema is ``engine/schemas/action.schema.json``. The
topic is where it goes, not part of the body.

>>> from engine.rules.engine import Firing
>>> firing = Firing(rule_id="coupon-detergent-low", rule_version=2, key_kind="device",
...                 key="d-1", at=600.0, event_ids=["e1"], action_type="coupon",
...                 topic="crm.actions.coupon", payload={"sku": "detergent-refill"},
...                 evidence={"event_ids": ["e1"]}, action_id="ab12", device_id="d-1")
>>> action = build_action(firing, customer_id="c-1", device_id="d-1", emitted_at=601.5)
>>> action["type"], action["rule"], action["schema_version"]
('coupon', {'id': 'coupon-detergent-low', 'version': 2}, 1)
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.rules.engine import Firing

#: Version of the action body; bumped on any incompatible change.
ACTION_SCHEMA_VERSION = 1

ACTION_SCHEMA_PATH = Path(__file__).parent / "schemas" / "action.schema.json"


def build_action(
    firing: Firing, *, customer_id: str, device_id: str | None, emitted_at: float
) -> dict[str, Any]:
    """The action body of an emitted firing. Raises ``ValueError`` for a
    suppressed firing: it must not reach downstream systems."""
    if firing.suppressed is not None:
        raise ValueError(f"firing of {firing.rule_id} is suppressed ({firing.suppressed})")
    return {
        "schema_version": ACTION_SCHEMA_VERSION,
        "action_id": firing.action_id,
        "type": firing.action_type,
        "customer_id": customer_id,
        "device_id": device_id,
        "rule": {"id": firing.rule_id, "version": firing.rule_version},
        "at": firing.at,
        "emitted_at": emitted_at,
        "payload": firing.payload,
        "evidence": firing.evidence,
    }


@cache
def action_schema() -> dict[str, Any]:
    """The published JSON Schema of an action body."""
    return json.loads(ACTION_SCHEMA_PATH.read_text(encoding="utf-8"))
