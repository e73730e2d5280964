"""The examples in the load-test docstrings are documentation: they must stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "loadtest.accuracy",
    "loadtest.demo",
    "loadtest.episodes",
    "loadtest.fleet",
    "loadtest.publish",
    "loadtest.simulator",
    "loadtest.truth",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
