"""Every docstring example in the runtime packages is part of the
documentation: each module's examples must stay true. Modules are found by
walking the packages, so a new module's examples run without being listed."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["engine", "agents", "tables"]


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        root = importlib.import_module(package)
        names += [m.name for m in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")]
    return sorted(names)


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_walk_finds_the_modules_with_examples() -> None:
    expected = {"engine.events", "engine.kafka.clients", "agents.customer", "tables.state"}
    assert expected <= set(modules())
