"""The fields rules can count on in ``event`` and ``customer``, to warn about
the others.

An event reaching rules is normalised by ingest (docs/events.md): the
required fields, the canonical readings, the text readings, and what ingest
adds from the registry. Devices may send more (unknown extra fields pass
through), so a rule reading another field is not wrong for sure, only
suspicious: a warning (W101), often a typo. ``customer`` is the CRM profile
(open too: the CRM may send more) and the view the worker adds to it (W102).

>>> unknown_field_message("event", "temprature")
"unknown event field 'temprature' (did you mean 'temperature'?): null unless devices send it"
>>> unknown_field_message("event", "temperature_f")
"event field 'temperature_f' does not reach rules: ingest converts it to 'temperature' (°C)"
>>> unknown_field_message("customer", "teir")
"unknown customer field 'teir' (did you mean 'tier'?): null unless the CRM profile has it"
"""

from __future__ import annotations

import difflib

from engine.events import ENRICHED_FIELDS, REQUIRED_FIELDS, CustomerProfile
from engine.quality.readings import FIELDS, READINGS, TEXT_READINGS, UNIT_FIELDS

#: Fields of an event as rules see it (after ingest's normalisation).
EVENT_FIELDS: frozenset[str] = frozenset(
    [*REQUIRED_FIELDS, *ENRICHED_FIELDS, *(r.name for r in READINGS), *TEXT_READINGS]
)

#: What the worker adds to the profile in ``customer`` (``tables.state.customer_view``;
#: a unit test keeps the two equal, the rule language does not import the actor's tables).
CUSTOMER_VIEW_FIELDS: frozenset[str] = frozenset(
    {
        "customer_id",
        "devices",
        "usage_today_min",
        "usage_yesterday_min",
        "usage_baseline_min",
        "days_since_use",
        "actions",
        "support_cases_30d",
    }
)

#: Fields of ``customer``: the known part of the CRM profile and the view.
CUSTOMER_FIELDS: frozenset[str] = (
    frozenset(CustomerProfile.__struct_fields__) | CUSTOMER_VIEW_FIELDS
)


def unknown_field_message(root: str, field: str) -> str | None:
    """Why ``root.field`` (``root``: ``event`` or ``customer``) is suspect, or
    None when the field is known."""
    if root == "customer":
        if field in CUSTOMER_FIELDS:
            return None
        return (
            f"unknown customer field '{field}'{_did_you_mean(field, CUSTOMER_FIELDS)}: "
            "null unless the CRM profile has it"
        )
    if field in EVENT_FIELDS:
        return None
    if field in FIELDS:
        reading = FIELDS[field][0]
        unit = f" ({reading.label})" if reading.label else ""
        return (
            f"event field '{field}' does not reach rules: "
            f"ingest converts it to '{reading.name}'{unit}"
        )
    if field in UNIT_FIELDS:
        reading = UNIT_FIELDS[field]
        return (
            f"event field '{field}' does not reach rules: ingest reads it to convert "
            f"'{reading.name}'"
        )
    return (
        f"unknown event field '{field}'{_did_you_mean(field, EVENT_FIELDS)}: "
        "null unless devices send it"
    )


def _did_you_mean(field: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(field, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
