"""The examples in the rule engine's docstrings are documentation: they must
stay true. (That the rule engine imports no Faust, Kafka or Cassandra client
is a layer contract of `make lint`, in pyproject.toml.)"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "engine.actions",
    "engine.rules.aggregates",
    "engine.rules.checks",
    "engine.rules.compiler",
    "engine.rules.engine",
    "engine.rules.errors",
    "engine.rules.expr",
    "engine.rules.runner",
    "engine.rules.schema",
    "engine.rules.source",
    "engine.rules.template",
    "engine.rules.triggers.registry",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
