"""The examples in the rule engine's docstrings are documentation: they must
stay true. Also: the core never imports the streaming or storage stack."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

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


def test_the_rule_engine_is_plain_python():
    code = (
        "import sys, engine.rules, engine.rules.cli, engine.actions;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('faust', 'aiokafka', 'cassandra', 'mode'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
