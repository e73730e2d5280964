"""The rule DSL: compile YAML rule files, evaluate them over events and time.

Plain Python (no Faust, Kafka or Cassandra), so the same rules run offline
(``iotcrm rules run``), in ``iotcrm rules test`` and in a live worker::

    from engine.rules import load_ruleset, RuleEngine
    engine = RuleEngine(load_ruleset("rules"))
    state = engine.new_state()                   # one per customer actor
    firings = engine.process(state, event, customer=profile, device=device_state,
                             score=scores)
    firings += engine.advance(state, now, customer=profile, devices=devices)
    engine.next_due(state)                        # earliest pending timer

See docs/rules.md for the language and its exact semantics.
"""

from engine.durations import parse_duration
from engine.rules.compiler import compile_rules, load_ruleset
from engine.rules.engine import Firing, RuleEngine, action_id
from engine.rules.errors import RuleError, RuleFileError
from engine.rules.model import Rule, RuleSet
from engine.rules.runtime import LateEvent

__all__ = [
    "Firing",
    "LateEvent",
    "Rule",
    "RuleEngine",
    "RuleError",
    "RuleFileError",
    "RuleSet",
    "action_id",
    "compile_rules",
    "load_ruleset",
    "parse_duration",
]
