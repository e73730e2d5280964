"""The examples in the quality docstrings are part of the documentation:
they must stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "engine.events",
    "engine.quality.deadletter",
    "engine.quality.hygiene",
    "engine.quality.inspector",
    "engine.quality.options",
    "engine.quality.readings",
    "engine.quality.registry",
    "engine.quality.timestamps",
    "engine.quality.verdicts",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
