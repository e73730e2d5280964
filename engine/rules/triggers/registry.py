"""The trigger kinds of ``when:``, by name: each class compiles its entry,
describes it in the rule file schema, and runs it.

The order is the one authors read in errors and the schema lists.

>>> list(TRIGGERS)
['condition', 'sustained', 'window', 'sequence', 'absence', 'silence']
>>> TRIGGERS["silence"].schema["required"]
['for']
"""

from __future__ import annotations

from engine.rules.triggers.absence import AbsenceTrigger
from engine.rules.triggers.base import Trigger
from engine.rules.triggers.sequence import SequenceTrigger
from engine.rules.triggers.simple import ConditionTrigger, SilenceTrigger, SustainedTrigger
from engine.rules.triggers.window import WindowTrigger

#: Trigger kind -> its class (``compile``, ``schema``, ``declared_names``).
TRIGGERS: dict[str, type[Trigger]] = {
    trigger.kind: trigger
    for trigger in (
        ConditionTrigger,
        SustainedTrigger,
        WindowTrigger,
        SequenceTrigger,
        AbsenceTrigger,
        SilenceTrigger,
    )
}
