"""Every docstring example in the runtime packages is part of the
documentation: each module's examples must stay true. Modules are found by
walking the packages' files, so a new module's examples run without being
listed, also in a directory without ``__init__.py`` (``pkgutil`` skips those,
and any module it cannot import, without a word)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGES = ["engine", "agents", "tables"]


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_walk_finds_the_modules_with_examples() -> None:
    expected = {"engine.events", "engine.kafka.clients", "agents.customer", "tables.state"}
    assert expected <= set(modules())
    # engine/rules/triggers has no __init__.py
    assert "engine.rules.triggers.window" in modules()
