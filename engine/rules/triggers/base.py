"""The interface every trigger implements.

A trigger kind is one class: it compiles its ``when:`` entry
(:meth:`Trigger.compile`), describes it for editors (:attr:`Trigger.schema`, a
JSON-schema fragment), and runs it (``on_event``, ``on_timer``). The kinds are
listed, in order, in ``engine.rules.triggers.registry``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from engine.rules.expr import Expression

if TYPE_CHECKING:
    from engine.rules.checks import Checker
    from engine.rules.model import Rule
    from engine.rules.runtime import Run


class Trigger:
    """A compiled ``when:`` block.

    ``on_event`` sees the events the rule index offers (and, while the trigger
    asked for it with ``run.watch_all``, every event of the key); ``on_timer``
    runs when the rule's timer for the key is due. Both append
    :class:`~engine.rules.runtime.Match` objects to ``run.out`` and keep their
    state in ``run`` as plain data.
    """

    kind: ClassVar[str] = ""
    #: The JSON schema of ``when.<kind>`` (``$ref`` to the rule schema's
    #: shared ``$defs``: ``expression``, ``duration``).
    schema: ClassVar[dict[str, Any]] = {}
    #: True when matches summarise a closed window rather than one event
    #: (a customer-keyed firing then names no device). An instance attribute
    #: with a class default, not a ClassVar: a window trigger decides it per
    #: instance (a sliding window fires on one event).
    aggregates_events: bool = False

    @classmethod
    def compile(cls, check: Checker, when: Any) -> Trigger | None:
        """The trigger ``when[cls.kind]`` describes, or None when it has errors
        (each recorded in ``check``)."""
        raise NotImplementedError

    @classmethod
    def declared_names(cls, spec: Any) -> tuple[frozenset[str], frozenset[str]]:
        """(extra names, window fields) the trigger offers templates, read from
        its YAML ``spec`` even when it does not compile, so that a broken
        trigger does not hide (or invent) errors in the payload."""
        return frozenset(), frozenset()

    def expressions(self) -> list[Expression]:
        """Every expression of the trigger (for usage analysis)."""
        raise NotImplementedError

    def requirement(self) -> dict[str, frozenset[Any]]:
        """Event field values without which ``on_event`` does nothing."""
        raise NotImplementedError

    def window_names(self) -> frozenset[str] | None:
        """Valid ``window.<name>`` fields in templates (None: no window)."""
        return None

    def extra_names(self) -> frozenset[str]:
        """Names besides the root ones that templates may use."""
        return frozenset()

    def on_event(self, rule: Rule, run: Run, event: Mapping[str, Any], ts: float) -> None:
        raise NotImplementedError

    def on_timer(self, rule: Rule, run: Run, due: float) -> None:
        run.clear_due(rule)
